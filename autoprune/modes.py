"""A model's mode for a while: train/eval and device switched for a block, then restored.

Tracing, scoring, counting MACs and exporting all need a model in eval mode (BatchNorm reads its
running statistics, dropout is off), often on a given device, and must hand the model back the
way they found it. :func:`model_mode` is that switch; nothing else in autoprune flips a model's
mode and forgets to restore it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def model_mode(
    model: nn.Module, *, training: bool = False, device: torch.device | str | None = None
) -> Iterator[nn.Module]:
    """Within the block, ``model`` is in train (``training=True``) or eval mode, on ``device``.

    Afterwards its previous mode and, when ``device`` was given, its previous device (that of
    its first parameter; CPU for a model without parameters) are restored, also on error.
    """
    was_training = model.training
    home = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.train(training)
    if device is not None:
        model.to(device)
    try:
        yield model
    finally:
        if device is not None:
            model.to(home)
        model.train(was_training)
