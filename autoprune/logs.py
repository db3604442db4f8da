"""Log: how the package reports progress, as a callable that takes one line (``print`` by default).

Engine functions take ``log: Log`` instead of writing to a stream, so the CLI prints, the
search's progress display reroutes, and a script or test collects or silences the lines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Log = Callable[[str], Any]
