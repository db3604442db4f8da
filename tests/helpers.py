"""What several test modules share that is not a fixture: the small search space real searches use.

Fixtures (``workdir``, ``trained_base``, ...) are in ``conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).parent / "data"
# The search space real searches in tests use: 0.1-epoch fine-tunes, three criteria.
FAST_SPACE = str(DATA / "fast_space.yaml")
