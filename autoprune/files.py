"""Files autoprune keeps: where they live, writing them atomically, reading torch files safely.

Every file autoprune writes (policies, front summaries, plots, checkpoints, cached scores, ONNX
exports) goes through :func:`atomic_write`: the content is written under a temporary name
unique to the process and the call, then renamed over the target, so a reader (or a second
writer, e.g. two drivers exporting one shared study) never sees half a file. Checkpoints are
read by :func:`read_torch_file`, which loads with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from autoprune.errors import UserError


def studies_dir() -> Path:
    """Where databases, base checkpoints and caches live: $AUTOPRUNE_HOME or ./studies."""
    return Path(os.environ.get("AUTOPRUNE_HOME", "studies"))


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, rename it onto ``path``.

    The temporary name is unique per process and call (``.NAME.PID.RANDOM.tmp``), so writers
    in several processes or threads never share one. If the block raises, the temporary file
    is removed and ``path`` is left as it was; a block that leaves no file at the temporary
    path (it removed it, e.g. because a check failed) publishes nothing either. The parent
    folder is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        if tmp.exists():
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def save_torch(path: str | Path, payload: Any) -> Path:
    """``torch.save`` ``payload`` to ``path`` atomically (see :func:`atomic_write`)."""
    import torch

    with atomic_write(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_torch_file(path: Path, label: str, missing_hint: str) -> Any:
    """``torch.load(weights_only=True)`` of a checkpoint file, with one-line errors naming ``label``."""
    import torch

    if not path.is_file():
        raise UserError(f"{label} {path} does not exist: {missing_hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(
            f"{label} {path} cannot be read ({exc}); it is not a torch file or is damaged"
        ) from exc
