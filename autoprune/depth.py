"""Depth pruning: score residual blocks (PLS-VIP) and remove those whose shapes match.

A block with an identity shortcut computes ``relu(F(x) + x)``; replacing it by the identity
keeps every shape downstream, so the rest of the network (and channel pruning after it) is
unaffected. Blocks that change shape (stride or width) are never removed.

Block scores follow discriminative layer pruning (Jordao et al. 2020): the globally pooled
output of every residual block over the calibration set is projected by a PLS regression onto
the one-hot labels (4 components per block); the latent scores of all blocks are then
concatenated and one more PLS regression (4 components) is fitted on them, and a block's score
is the mean VIP (variable importance in projection) of its latent features. Fitting the VIP on
all blocks together makes scores comparable between blocks: VIP values of one regression
average to about one, so a per-block regression alone would score every block alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.errors import UserError
from autoprune.macs import count_macs_params
from autoprune.modes import model_mode


def _get(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as exc:
        raise UserError(
            f"depth.drop_blocks names '{name}', which is not a module of the model"
        ) from exc


# The attribute by which a block declares whether it adds its input to its output: our CIFAR
# ResNets, our MobileNetV2, and timm's MobileNet/EfficientNet family (InvertedResidual,
# DepthwiseSeparableConv, EdgeResidual, ...).
_SHORTCUT_FLAGS = ("has_identity_shortcut", "use_residual", "has_skip")


def _is_block(module: nn.Module) -> bool:
    """Blocks that declare their shortcut, and ResNet blocks (torchvision's, timm's) by type."""
    return any(hasattr(module, flag) for flag in _SHORTCUT_FLAGS) or type(module).__name__ in (
        "BasicBlock",
        "Bottleneck",
    )


def _has_identity_shortcut(block: nn.Module) -> bool:
    for flag in _SHORTCUT_FLAGS:
        if hasattr(block, flag):
            return bool(getattr(block, flag))
    # torchvision's and timm's BasicBlock / Bottleneck: identity when there is no downsample.
    return getattr(block, "downsample", "x") is None


def residual_blocks(model: nn.Module) -> list[str]:
    """Names of the model's residual blocks, removable or not, in module order."""
    return [name for name, module in model.named_modules() if _is_block(module)]


def _block_io(
    model: nn.Module, names: Sequence[str], example_inputs: torch.Tensor
) -> dict[str, tuple[torch.Tensor, tuple[int, ...]]]:
    """Each named block's input tensor and output shape, from one forward pass (eval mode)."""
    seen: dict[str, tuple[torch.Tensor, tuple[int, ...]]] = {}
    hooks = [
        model.get_submodule(n).register_forward_hook(
            lambda mod, inp, out, n=n: seen.__setitem__(n, (inp[0], tuple(out.shape)))
        )
        for n in names
    ]
    try:
        with model_mode(model), torch.no_grad():
            model(example_inputs.to(next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return seen


def removable_blocks(model: nn.Module, example_inputs: torch.Tensor) -> list[str]:
    """Names of residual blocks with identity shortcuts whose input and output shapes match.

    A block is residual when it declares ``has_identity_shortcut`` (CIFAR ResNets),
    ``use_residual`` (MobileNetV2) or ``has_skip`` (timm's MobileNets and EfficientNets), or is
    a torchvision or timm ``BasicBlock``/``Bottleneck`` (identity when it has no downsample
    branch). A model may have none: the list is then empty.
    """
    candidates = [
        n for n in residual_blocks(model) if _has_identity_shortcut(model.get_submodule(n))
    ]
    io = _block_io(model, candidates, example_inputs)
    return [n for n in candidates if n in io and tuple(io[n][0].shape) == io[n][1]]


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


PLS_COMPONENTS = 4


@dataclass
class BlockScore:
    """A row of ``autoprune inspect --blocks``."""

    name: str  # module name of the block
    score: float  # mean VIP of the block's latent features; low = little class information
    removable: bool  # identity shortcut with matching shapes
    macs_share: float  # share of the model's MACs spent in the block


def block_scores(
    model: nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    num_classes: int,
    components: int = PLS_COMPONENTS,
) -> list[BlockScore]:
    """Score every residual block of ``model`` by PLS-VIP on labelled calibration batches.

    Raises:
        UserError: the model has no residual blocks, or there are too few images to fit.
    """
    from sklearn.cross_decomposition import PLSRegression

    names = residual_blocks(model)
    if not names:
        raise UserError(
            f"{type(model).__name__} has no residual blocks to score: depth pruning needs a ResNet- "
            "or MobileNet-style model (ours, torchvision's or timm's); search this model with "
            "depth.max_blocks_per_stage: 0"
        )
    pooled, inputs, labels = _pooled_block_outputs(model, names, batches)
    n = len(labels)
    if n <= components + 1:
        raise UserError(
            f"block scoring needs more than {components + 1} calibration images, got {n}: raise --calibration-images"
        )
    onehot = np.eye(num_classes, dtype=np.float64)[labels]
    latent = []
    for name in names:
        x = pooled[name]
        k = max(1, min(components, x.shape[1], n - 1))
        latent.append(PLSRegression(n_components=k, scale=True).fit(x, onehot).transform(x))
    widths = [z.shape[1] for z in latent]
    features = np.concatenate(latent, axis=1)
    k = max(1, min(components, features.shape[1], n - 1))
    vip = vip_scores(PLSRegression(n_components=k, scale=True).fit(features, onehot))
    example = inputs[:1]
    total_macs = float(count_macs_params(model, example)[0])
    removable = set(removable_blocks(model, example))
    io = _block_io(model, names, example)
    rows = []
    start = 0
    for name, width in zip(names, widths, strict=True):
        macs = float(count_macs_params(model.get_submodule(name), io[name][0])[0])
        rows.append(
            BlockScore(
                name=name,
                score=float(vip[start : start + width].mean()),
                removable=name in removable,
                macs_share=macs / total_macs if total_macs else 0.0,
            )
        )
        start += width
    return rows


def vip_scores(pls: object) -> np.ndarray:
    """VIP of every input feature of a fitted ``PLSRegression`` (mean of squares = 1)."""
    t = pls.x_scores_  # type: ignore[attr-defined]
    w = pls.x_weights_  # type: ignore[attr-defined]
    q = pls.y_loadings_  # type: ignore[attr-defined]
    explained = (t**2).sum(axis=0) * (q**2).sum(axis=0)  # y variance explained per component
    w_norm = w / np.linalg.norm(w, axis=0, keepdims=True)
    p = w.shape[0]
    total = explained.sum()
    if total <= 0:
        return np.zeros(p)
    return np.sqrt(p * (w_norm**2 @ explained) / total)


def _pooled_block_outputs(
    model: nn.Module,
    names: list[str],
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[dict[str, np.ndarray], torch.Tensor, np.ndarray]:
    """Global-average-pooled outputs of the named blocks over all batches (eval mode)."""
    outputs: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    def hook(name: str) -> Any:
        def record(module: nn.Module, inp: object, out: torch.Tensor) -> None:
            pooled = out.float().mean(dim=(2, 3)) if out.dim() == 4 else out.float().flatten(1)
            outputs[name].append(pooled.detach().cpu())

        return record

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    device = next(model.parameters()).device
    labels = []
    try:
        with model_mode(model), torch.no_grad():
            for images, targets in batches:
                model(images.to(device))
                labels.append(targets.cpu())
    finally:
        for h in handles:
            h.remove()
    if not labels:
        raise UserError("block scoring got no calibration images")
    pooled = {n: torch.cat(v).double().numpy() for n, v in outputs.items()}
    return pooled, batches[0][0].cpu(), torch.cat(labels).numpy()
