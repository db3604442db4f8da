"""Depth pruning: remove whole residual blocks whose input and output shapes match.

A block with an identity shortcut computes ``relu(F(x) + x)``; replacing it by the identity
keeps every shape downstream, so the rest of the network (and channel pruning after it) is
unaffected. Blocks that change shape (stride or width) are never removed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from autoprune.errors import UserError


def _get(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as exc:
        raise UserError(
            f"depth.drop_blocks names '{name}', which is not a module of the model"
        ) from exc


def _has_residual(block: nn.Module) -> bool:
    if hasattr(block, "has_identity_shortcut"):
        return bool(block.has_identity_shortcut)
    return bool(getattr(block, "use_residual", False))


def removable_blocks(model: nn.Module, example_inputs: torch.Tensor) -> list[str]:
    """Names of residual blocks with identity shortcuts whose input and output shapes match.

    A block is residual when it declares ``has_identity_shortcut`` (CIFAR ResNets) or
    ``use_residual`` (MobileNetV2), or is a torchvision ``BasicBlock``/``Bottleneck`` without
    a downsample branch.
    """
    candidates: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        kind = type(module).__name__
        if _has_residual(module) or (
            kind in ("BasicBlock", "Bottleneck") and getattr(module, "downsample", "x") is None
        ):
            candidates[name] = module
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    hooks = [
        m.register_forward_hook(
            lambda mod, inp, out, n=n: shapes.__setitem__(
                n, (tuple(inp[0].shape), tuple(out.shape))
            )
        )
        for n, m in candidates.items()
    ]
    try:
        with torch.no_grad():
            was_training = model.training
            model.eval()
            model(example_inputs)
            model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    return [n for n in candidates if n in shapes and shapes[n][0] == shapes[n][1]]


def drop_blocks(model: nn.Module, names: Sequence[str], example_inputs: torch.Tensor) -> nn.Module:
    """Replace the named residual blocks by ``nn.Identity`` (in place).

    Raises:
        UserError: a name is not a module, or names a block whose shape changes.
    """
    allowed = removable_blocks(model, example_inputs)
    for name in names:
        _get(model, name)
        if name not in allowed:
            raise UserError(
                f"depth.drop_blocks: '{name}' is not a removable block (it changes shape or has no identity shortcut); "
                f"removable: {', '.join(allowed) or 'none'}"
            )
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, nn.Identity())
    return model
