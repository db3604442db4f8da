"""Exporting a model to ONNX: what ``autoprune onnx`` checks and ``--latency-runtime
onnxruntime`` times.

Its own module, below :mod:`autoprune.evaluate`, so trials can export without importing the
deployment check (which loads checkpoints, and so the objective itself).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.errors import UserError
from autoprune.files import atomic_write
from autoprune.modes import model_mode


def require_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (torch's dynamo exporter imports it)
    except ImportError as exc:
        raise UserError(
            f"ONNX export needs the onnx extra ({exc.name} is missing): "
            "pip install 'autoprune[onnx]'"
        ) from exc
    return onnx, onnxruntime


def export_onnx(model: nn.Module, example_inputs: torch.Tensor, out: str | Path) -> Path:
    """Export ``model`` to ``out`` with a dynamic batch dimension (input ``input``, output ``logits``).

    The model is exported on the CPU in eval mode; its device and mode are restored afterwards.
    """
    require_onnx()
    out = Path(out)
    batch = torch.export.Dim("batch", min=1, max=4096)
    # A batch of 2 so the exporter does not specialise the batch dimension to 1.
    inputs = example_inputs[:1].cpu().expand(2, *example_inputs.shape[1:]).contiguous()
    chatter = io.StringIO()  # the exporter reports its progress (and diagnoses) on stdout
    try:
        with (
            model_mode(model, device="cpu"),
            warnings.catch_warnings(),
            contextlib.redirect_stdout(chatter),
        ):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (inputs,),
                dynamo=True,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
                verbose=False,
            )
        if program is None:  # pragma: no cover - dynamo=True always returns the program
            raise RuntimeError("torch.onnx.export returned no program")
        with atomic_write(out) as tmp:
            program.save(str(tmp))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        said = [line for line in chatter.getvalue().splitlines() if line.strip()][-3:]
        raise UserError(
            f"torch.onnx.export (torch {torch.__version__}) cannot export this model "
            f"({type(exc).__name__}: {first})"
            + (f"; the exporter said: {' | '.join(said)}" if said else "")
            + "; an operation in it may have no ONNX translation or not be traceable by torch.export"
        ) from exc
    return out
