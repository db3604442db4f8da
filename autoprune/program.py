"""The pruned network as a ``torch.export`` program (``.pt2``): loadable with stock PyTorch.

Users of pruning tools ask the same thing again and again: the pruned model will not load
without the tool that pruned it (its classes, its surgery). A ``torch.export`` program holds
the traced ATen graph and the weights, so ``torch.export.load(path).module()`` rebuilds the
network in a process that has no autoprune installed. ``replay`` writes one beside every
pruned checkpoint.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

from autoprune.errors import UserError
from autoprune.files import atomic_write
from autoprune.modes import model_mode


def export_program(model: nn.Module, example_inputs: torch.Tensor, out: str | Path) -> Path:
    """Write ``model`` as a ``torch.export`` program (``.pt2``) that stock PyTorch loads.

    ``torch.export.load(path).module()`` rebuilds the network in a process without autoprune
    (the file holds the traced ATen graph and the weights, not our classes). The batch
    dimension is dynamic (1 and up); everything else is fixed at ``example_inputs``' shape,
    the network runs in eval mode (BatchNorm with its running statistics), and only the
    forward pass is kept: fine-tuning the loaded module again needs the ``.pt`` checkpoint.

    Raises:
        UserError: ``torch.export`` cannot trace the model (data-dependent control flow, say),
            with the exporter's first line.
    """
    batch = torch.export.Dim("batch", min=1)
    example = example_inputs[:1].expand(2, *example_inputs.shape[1:]).contiguous()
    with model_mode(model, training=False, device="cpu"), torch.no_grad():
        try:
            program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        except Exception as exc:  # the exporter raises many types; all mean "cannot trace"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise UserError(
                f"torch.export cannot trace this model ({type(exc).__name__}: {first}); the "
                ".pt checkpoint and `autoprune onnx` still work"
            ) from exc
    buffer = io.BytesIO()  # torch.export.save wants a .pt2 name; the temporary file has none
    torch.export.save(program, buffer)
    with atomic_write(out) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return Path(out)
