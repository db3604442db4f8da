"""Magnitude criteria: filter norms, BN scales, first-order Taylor, and a seeded random baseline.

For a coupled group (e.g. a residual stream written by several convolutions) the score of a
channel is summed over every conv/linear layer whose output channel is removed with it, so a
channel that is strong in any coupled layer is kept.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.criteria import Criterion, ScoringContext, register, scatter_to_root, weight_matrix


def _sum_over_out_layers(group: Any, per_layer: Any) -> torch.Tensor:
    total = torch.zeros(group.channels)
    layers = group.out_layers()
    if not layers:  # a group rooted at a layer we cannot read: score by its BN, else flat
        layers = group.out_layers((nn.modules.batchnorm._BatchNorm,))
    for member in layers:
        total += scatter_to_root(per_layer(member), member, group.channels)
    return total


@register("l1")
class L1Norm(Criterion):
    """Sum of absolute filter weights (Li et al. 2017)."""

    needs = frozenset({"weights"})
    description = "L1 norm of each output filter (summed over coupled layers)"

    def score(self, group: Any, ctx: ScoringContext) -> torch.Tensor:
        return _sum_over_out_layers(group, lambda m: weight_matrix(m).abs().sum(1))


@register("l2")
class L2Norm(Criterion):
    """Euclidean norm of each filter."""

    needs = frozenset({"weights"})
    description = "L2 norm of each output filter (summed over coupled layers)"

    def score(self, group: Any, ctx: ScoringContext) -> torch.Tensor:
        return _sum_over_out_layers(group, lambda m: weight_matrix(m).norm(dim=1))


@register("bn_scale")
class BatchNormScale(Criterion):
    """|gamma| of the BatchNorm layers that follow the group's convolutions (network slimming)."""

    needs = frozenset({"weights"})
    description = "absolute BatchNorm scale (gamma) of each channel"

    def score(self, group: Any, ctx: ScoringContext) -> torch.Tensor:
        total = torch.zeros(group.channels)
        bns = [
            m
            for m in group.members
            if isinstance(m.module, nn.modules.batchnorm._BatchNorm) and m.module.affine
        ]
        if not bns:
            return L1Norm().score(group, ctx)
        for member in bns:
            total += scatter_to_root(
                member.module.weight.detach()[member.idxs].abs(), member, group.channels
            )
        return total


@register("taylor")
class Taylor(Criterion):
    """First-order Taylor estimate of the loss change: sum |w * dL/dw| over each filter (Molchanov 2019)."""

    needs = frozenset({"weights", "labels", "gradients"})
    description = "first-order Taylor |w * grad| on calibration data (one backward pass)"

    def score_all(self, groups: list[Any], ctx: ScoringContext) -> dict[str, torch.Tensor]:
        model = ctx.model
        was_training = model.training
        model.eval()
        model.zero_grad(set_to_none=True)
        model.to(ctx.device)
        batches = ctx.calibration_batches()
        for images, labels in batches:
            loss = F.cross_entropy(
                model(images.to(ctx.device)), labels.to(ctx.device), reduction="sum"
            )
            (loss / sum(len(y) for _, y in batches)).backward()

        def per_layer(member: Any) -> torch.Tensor:
            w = member.module.weight
            grad = w.grad if w.grad is not None else torch.zeros_like(w)
            prod = (w.detach() * grad).abs()
            return (
                prod[member.idxs].flatten(1).sum(1)
                if member.is_out
                else prod.transpose(0, 1)[member.idxs].flatten(1).sum(1)
            )

        scores = {g.name: _sum_over_out_layers(g, per_layer) for g in groups}
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        return scores


@register("random")
class RandomScore(Criterion):
    """Uniform random scores, seeded by (policy seed, group name): a baseline for the others."""

    needs = frozenset({"weights"})
    description = "random scores (seeded baseline)"

    def score(self, group: Any, ctx: ScoringContext) -> torch.Tensor:
        digest = hashlib.sha256(f"{ctx.seed}/{group.name}/{ctx.step}".encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
        return torch.rand(group.channels, generator=generator)
