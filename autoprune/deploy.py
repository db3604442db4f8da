"""Deployment check: export a (pruned) checkpoint to ONNX and verify it under ONNX Runtime.

Edge toolchains start from ONNX, so the last step before shipping a pruned model is to make
sure the exported graph computes what the PyTorch model computes, and to see what the pruning
bought in latency. :func:`check_onnx` exports with ``torch.onnx.export(dynamo=True)`` (a
dynamic batch dimension), validates the file with ``onnx.checker``, runs it with ONNX Runtime
on a fixed batch and compares logits with PyTorch, then times both at batch 1.

Needs the ``onnx`` extra (``onnx``, ``onnxruntime``, ``onnxscript``).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.errors import UserError
from autoprune.files import atomic_write, read_torch_file
from autoprune.modes import model_mode
from autoprune.onnx_export import export_onnx, require_onnx

# Export and runtime reorder float sums; differences beyond this are a broken export.
ABS_TOLERANCE = 1e-4
REL_TOLERANCE = 1e-4


@dataclass
class OnnxReport:
    """What :func:`check_onnx` measured."""

    path: Path
    size_bytes: int
    batch: int  # images compared
    max_abs_diff: float  # max |logit_onnx - logit_torch| over the batch
    max_abs_logit: float  # scale of the logits, for the relative tolerance
    top1_agreement: float  # share of images whose arg-max class matches
    torch_ms: float  # median latency at batch 1, PyTorch eager on CPU
    onnxruntime_ms: float  # median latency at batch 1, ONNX Runtime CPU provider
    threads: int

    @property
    def matches(self) -> bool:
        return self.max_abs_diff <= ABS_TOLERANCE + REL_TOLERANCE * self.max_abs_logit


def load_any_checkpoint(path: str | Path) -> tuple[nn.Module, torch.Tensor, str]:
    """(model in eval mode, one example input, a description) from a pruned or base checkpoint."""
    from autoprune.base import BASE_FORMAT, load_base
    from autoprune.checkpoint import CHECKPOINT_FORMAT, load_checkpoint

    path = Path(path)
    payload = read_torch_file(
        path, "checkpoint", "give a file written by `autoprune replay` or `autoprune train`"
    )  # read once; the loaders below take the payload
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if fmt == CHECKPOINT_FORMAT:
        loaded = load_checkpoint(path, payload)
        return loaded.model, loaded.policy.model.example_inputs(), "pruned"
    if fmt == BASE_FORMAT:
        base = load_base(path, payload)
        return base.build(), base.spec.example_inputs(), "base"
    raise UserError(
        f"{path} is neither a pruned checkpoint ({CHECKPOINT_FORMAT}) nor a base checkpoint "
        f"({BASE_FORMAT}): give a file written by `autoprune replay` or `autoprune train`"
    )


def checkpoint_dataset(path: str | Path) -> tuple[str | None, int | None]:
    """The dataset a checkpoint's base was trained on, and the image size to load it at:
    ``(None, None)`` when the checkpoint does not say (a pruned one whose base file moved)."""
    from autoprune.base import BASE_FORMAT, load_base
    from autoprune.checkpoint import CHECKPOINT_FORMAT, load_checkpoint

    payload = read_torch_file(
        path, "checkpoint", "give a file written by `autoprune replay` or `autoprune train`"
    )
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if fmt == BASE_FORMAT:
        base = load_base(path, payload)
    elif fmt == CHECKPOINT_FORMAT:
        source = load_checkpoint(path, payload).policy.base.checkpoint
        if not source or not Path(source).is_file():
            return None, None
        base = load_base(source)
    else:
        return None, None
    name = base.dataset.get("name")
    return (str(name), base.image_size(str(name))) if name else (None, None)


class OnnxCheckError(Exception):
    """The exported file is not a usable ONNX model (checker or runtime rejected it)."""


def _median_ms(run: Any, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def check_onnx(
    model: nn.Module,
    example_inputs: torch.Tensor,
    out: str | Path,
    *,
    batch: int = 8,
    repeats: int = 30,
    seed: int = 0,
) -> OnnxReport:
    """Export ``model`` to ONNX, compare ONNX Runtime's logits with PyTorch's, time both.

    The export is checked under a temporary name and moved to ``out`` only when its logits
    match (``report.matches``): a rejected export never sits where a pipeline would ship it.

    Args:
        model: the model to ship (a pruned checkpoint's model, or any ``nn.Module``).
        example_inputs: one input of the model's shape (its batch size is ignored).
        out: where the ``.onnx`` file goes.
        batch: images in the comparison batch (seeded standard-normal inputs).
        repeats: timed runs per runtime at batch 1 (the median is reported).

    Raises:
        UserError: the model cannot be exported, or the onnx extra is missing.
        OnnxCheckError: ``onnx.checker`` or ONNX Runtime rejected the exported file.
    """
    onnx, onnxruntime = require_onnx()
    out = Path(out)
    with atomic_write(out) as candidate:
        export_onnx(model, example_inputs, candidate)
        report = _compare(onnx, onnxruntime, model, candidate, example_inputs, batch, repeats, seed)
        if report.matches:
            report.path = out
        else:
            candidate.unlink()  # a rejected export is never published
    return report


def _compare(
    onnx: Any,
    onnxruntime: Any,
    model: nn.Module,
    path: Path,
    example_inputs: torch.Tensor,
    batch: int,
    repeats: int,
    seed: int,
) -> OnnxReport:
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise OnnxCheckError(f"onnx.checker rejected the export: {exc}") from exc
    threads = torch.get_num_threads()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    try:
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise OnnxCheckError(f"ONNX Runtime cannot load the export: {exc}") from exc
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *example_inputs.shape[1:]), generator=generator)
    with model_mode(model, device="cpu"):
        with torch.no_grad():
            expected = model(x)
        try:
            got = torch.from_numpy(session.run(["logits"], {"input": x.numpy()})[0])
        except Exception as exc:
            raise OnnxCheckError(f"ONNX Runtime failed to run the export: {exc}") from exc
        if got.shape != expected.shape:
            raise OnnxCheckError(
                f"the export returns logits of shape {tuple(got.shape)}, PyTorch {tuple(expected.shape)}"
            )
        one = x[:1]
        one_np = one.numpy()
        with torch.no_grad():
            torch_ms = _median_ms(lambda: model(one), repeats)
        ort_ms = _median_ms(lambda: session.run(["logits"], {"input": one_np}), repeats)
    return OnnxReport(
        path=path,
        size_bytes=path.stat().st_size,
        batch=batch,
        max_abs_diff=float((got - expected).abs().max()),
        max_abs_logit=float(expected.abs().max()),
        top1_agreement=float((got.argmax(1) == expected.argmax(1)).float().mean()),
        torch_ms=torch_ms,
        onnxruntime_ms=ort_ms,
        threads=threads,
    )
