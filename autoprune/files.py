"""Files autoprune keeps: where they live, writing them atomically, reading torch files safely.

Every file autoprune writes (policies, front summaries, plots, checkpoints, cached scores, ONNX
exports) goes through :func:`atomic_write`: the content is written under a temporary name
unique to the process and the call, then renamed over the target, so a reader (or a second
writer, e.g. two drivers exporting one shared study) never sees half a file.

Files a user hands us may be broken or hostile. Checkpoints are read by
:func:`read_torch_file` (``weights_only=True``, so pickled code is refused), YAML by
:func:`parse_yaml` (``yaml.safe_load``, so tags that construct Python objects are refused).
Each failure is one line of ours naming the file, the problem and the fix; a library's own
text is never passed on, since torch's advises loading again with ``weights_only=False``.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from autoprune.errors import UserError


def studies_dir() -> Path:
    """Where databases, base checkpoints and caches live: $AUTOPRUNE_HOME or ./studies."""
    return Path(os.environ.get("AUTOPRUNE_HOME", "studies"))


def score_cache_dir() -> Path:
    """The base-model channel scores' cache on this machine (under :func:`studies_dir`)."""
    return studies_dir() / "cache" / "scores"


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


def read_torch_file(path: str | Path, label: str, fix: str) -> Any:
    """``torch.load(weights_only=True)`` of a checkpoint file; any failure is one line of ours.

    A file that is missing, unreadable, truncated, not a torch file at all, or that carries
    pickled Python objects (a whole ``nn.Module``, a custom class, a function such as
    ``os.system``) raises :class:`UserError` with a message that names ``label`` and ``path``,
    says what is wrong, and ends with ``fix`` (how to get a good file, e.g. "train one with
    `autoprune train`"). torch's own exception text is never repeated: it advises loading with
    ``weights_only=False``, which runs whatever code the file carries. It stays chained as
    ``__cause__`` for debugging.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{label} {path} is a folder, not a file: {fix}")
    if not path.is_file():
        raise UserError(f"{label} {path} does not exist: {fix}")
    try:
        with path.open("rb") as stream:
            head = stream.read(_HEAD_BYTES)
    except OSError as exc:
        raise UserError(
            f"{label} {path} cannot be read ({exc.strerror or type(exc).__name__}): {fix}"
        ) from exc
    return _load_torch(path, head, f"{label} {path}", fix)


def read_torch_bytes(data: bytes, label: str, fix: str) -> Any:
    """:func:`read_torch_file` of a checkpoint's content, e.g. sent through Ray's object store.

    The same refusals and the same one-line messages; ``label`` names the content fully
    (e.g. "base checkpoint studies/base/x.pt sent by the driver").
    """
    import io

    return _load_torch(io.BytesIO(data), data[:_HEAD_BYTES], label, fix)


def _load_torch(source: Any, head: bytes, label: str, fix: str) -> Any:
    """``torch.load(weights_only=True)`` of a path or stream; any failure is one line of ours."""
    import torch

    try:
        with warnings.catch_warnings():
            # torch warns about unusual pickle protocols and asks to file an issue upstream.
            warnings.simplefilter("ignore")
            return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"{label} {_torch_load_problem(head, exc)}: {fix}") from exc


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6 is a zip archive
_PICKLE_PROTOCOL = b"\x80"  # the legacy format (and any pickle) starts with the PROTO opcode
_HEAD_BYTES = 64  # enough to tell a zip, a pickle and text apart
# Torch's reader opened the archive but found no checkpoint in it: files outside the one
# folder torch.save writes, or no data.pkl.
_NOT_A_CHECKPOINT_ZIP = ("not in a subdirectory", "data.pkl")
# The qualified name in torch's "Unsupported global: GLOBAL torch.nn.modules.conv.Conv2d ..."
# and "Trying to load unsupported GLOBAL posix.system ...": dotted identifiers only, so
# nothing else of the message (or of a crafted file) can come along.
_REFUSED_GLOBAL = re.compile(r"\bGLOBAL ([A-Za-z_][\w.]{0,200})")
_REDO = "re-download or re-create it"


def _torch_load_problem(head: bytes, exc: Exception) -> str:
    """What is wrong with a file ``torch.load`` refused, in our words (never torch's text).

    ``head`` is the file's first bytes: which format the file claims decides how the failure
    reads, since torch raises the same exception types for damage and for foreign content.
    """
    text = str(exc)
    if not head:
        return f"is empty (0 bytes): it was truncated or damaged; {_REDO}"
    if len(head) < len(_ZIP_MAGIC) and _ZIP_MAGIC.startswith(head):
        size = f"{len(head)} byte{'s' if len(head) > 1 else ''}"
        return f"ends after {size}: it was truncated or damaged; {_REDO}"
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_PROTOCOL)):
        looks = "it holds text, e.g. YAML or JSON" if _is_text(head) else "unknown format"
        return f"is not a torch checkpoint ({looks})"
    if "TorchScript" in text:
        return (
            "is a TorchScript archive (a compiled program), which autoprune refuses to load "
            "because loading it can run code; a checkpoint holds only tensors and plain data"
        )
    if isinstance(exc, pickle.UnpicklingError) and "weights only load failed" in text.lower():
        found = _REFUSED_GLOBAL.search(text)
        named = f" ({found.group(1)})" if found else ""
        return (
            f"holds pickled Python objects{named}, which autoprune refuses to load because "
            "loading them can run code; a checkpoint holds only tensors and plain data "
            "(e.g. a model's state_dict)"
        )
    if head.startswith(_ZIP_MAGIC) and any(s in text for s in _NOT_A_CHECKPOINT_ZIP):
        return f"is a zip archive but not a torch checkpoint, or a damaged one; {_REDO}"
    part = "zip archive" if head.startswith(_ZIP_MAGIC) else "pickled data"
    return f"is truncated or damaged (its {part} ends early or is broken); {_REDO}"


def _is_text(head: bytes) -> bool:
    """Whether a file's first bytes read as UTF-8 text (a character cut at the end is fine)."""
    decoded = head.decode("utf-8", errors="ignore")
    cut = len(head) - len(decoded.encode("utf-8"))
    return cut <= 3 and all(c.isprintable() or c in "\t\r\n" for c in decoded)


def read_text_file(path: str | Path, label: str) -> str:
    """The text of a file the user named; missing, unreadable or binary files are one line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{label} {path} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{label} {path} is not a text file (byte {exc.start} is not UTF-8): give a YAML file"
        ) from exc
    except OSError as exc:
        raise UserError(
            f"{label} {path} cannot be read ({exc.strerror or type(exc).__name__})"
        ) from exc


# pyyaml names a constructor it lacks as "... for the tag 'tag:yaml.org,2002:python/name:os.system'".
_YAML_TAG = re.compile(r"for the tag '([^'\s]{1,200})'")


def parse_yaml(text: str, source: str, kind: str) -> Any:
    """``yaml.safe_load`` of ``text``, with any problem as one line naming ``source``.

    Args:
        text: the YAML document.
        source: what the text is, for messages (e.g. "policy policies/a.yaml").
        kind: what such files are, plural (e.g. "policies"), for "policies are plain data".

    Raises:
        UserError: the text is not valid YAML, or uses a tag that would construct a Python
            object (``!!python/object/apply:os.system``, ``!!python/name:...``, ``!custom``),
            which ``safe_load`` refuses and autoprune never allows.
    """
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        where = _yaml_line(exc)
        found = _YAML_TAG.search(str(exc.problem))
        if found is None:  # a known tag with a bad value, e.g. !!binary that is not base64
            raise UserError(
                f"{source}{where}: not valid YAML ({_one_line(exc.problem)}): fix the value"
            ) from exc
        tag = found.group(1).replace("tag:yaml.org,2002:", "!!")
        raise UserError(
            f"{source}{where}: the YAML tag {tag} would construct a Python object, and {kind} "
            "are plain data: remove the tag"
        ) from exc
    except yaml.MarkedYAMLError as exc:
        raise UserError(
            f"{source}{_yaml_line(exc)}: not valid YAML ({_one_line(exc.problem)}): fix the syntax"
        ) from exc
    except yaml.YAMLError as exc:
        raise UserError(f"{source}: not valid YAML ({_one_line(exc)}): fix the syntax") from exc
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. `!!int foo` or `!!float x`
        raise UserError(
            f"{source}: not valid YAML (a tagged value cannot be read: {_one_line(exc)}): fix the value"
        ) from exc
    except RecursionError as exc:
        raise UserError(f"{source}: not valid YAML (nested too deeply): fix the file") from exc


def _yaml_line(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    return f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _one_line(value: object, limit: int = 200) -> str:
    """A library's short problem phrase, flattened to one line and capped."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
