"""Magnitude criteria: filter norms, LAMP, BN scales, first-order Taylor, a seeded random baseline.

For a coupled group (e.g. a residual stream written by several convolutions) the score of a
channel is summed over every conv/linear layer whose output channel is removed with it, so a
channel that is strong in any coupled layer is kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
import torch.nn.functional as F

from autoprune.criteria import Context, Criterion, register
from autoprune.criteria.filters import scatter_to_root, weight_matrix
from autoprune.groups import BATCH_NORMS, GroupMember, GroupView
from autoprune.modes import model_mode


def _sum_over_out_layers(
    group: GroupView, per_layer: Callable[[GroupMember], torch.Tensor]
) -> torch.Tensor:
    total = torch.zeros(group.channels)
    layers = group.out_layers()
    if not layers:  # a group rooted at a layer we cannot read: score by its BN, else flat
        layers = group.out_layers(BATCH_NORMS)
    for member in layers:
        total += scatter_to_root(per_layer(member), member, group.channels)
    return total


@register("l1")
class L1Norm(Criterion):
    """Sum of absolute filter weights (Li et al. 2017)."""

    needs = frozenset({"weights"})
    description = "L1 norm of each output filter (summed over coupled layers)"

    def score(self, group: GroupView, ctx: Context) -> torch.Tensor:
        return _sum_over_out_layers(group, lambda m: weight_matrix(m).abs().sum(1))


@register("l2")
class L2Norm(Criterion):
    """Euclidean norm of each filter."""

    needs = frozenset({"weights"})
    description = "L2 norm of each output filter (summed over coupled layers)"

    def score(self, group: GroupView, ctx: Context) -> torch.Tensor:
        return _sum_over_out_layers(group, lambda m: weight_matrix(m).norm(dim=1))


@register("lamp")
class LayerAdaptiveMagnitude(Criterion):
    """LAMP (Lee et al. 2021): a filter's squared norm over the squared norms of all filters at
    least as large as it in its group.

    Within a group the order is that of ``l2``; the scores are rescaled into ``(0, 1]`` (the
    largest filter scores 1) so that groups of different size and scale compare.
    """

    needs = frozenset({"weights"})
    description = "layer-adaptive magnitude (LAMP): squared norm over the larger filters' total"

    def score(self, group: GroupView, ctx: Context) -> torch.Tensor:
        squared = _sum_over_out_layers(
            group, lambda m: weight_matrix(m).double().pow(2).sum(1)
        ).double()
        return lamp_normalise(squared).float()


def lamp_normalise(squared: torch.Tensor) -> torch.Tensor:
    """``s_i / sum(s_j for s_j >= s_i)``; ties are ordered by index, all-zero tails score 0."""
    ordered, order = torch.sort(squared, stable=True)
    tail = ordered.flip(0).cumsum(0).flip(0)  # tail[k] = sum of ordered[k:]
    out = torch.zeros_like(squared)
    out[order] = torch.where(tail > 0, ordered / tail.clamp(min=1e-300), torch.zeros_like(tail))
    return out


@register("bn_scale")
class BatchNormScale(Criterion):
    """|gamma| of the BatchNorm layers that follow the group's convolutions (network slimming)."""

    needs = frozenset({"weights"})
    description = "absolute BatchNorm scale (gamma) of each channel"

    def score(self, group: GroupView, ctx: Context) -> torch.Tensor:
        total = torch.zeros(group.channels)
        bns = [m for m in group.members if isinstance(m.module, BATCH_NORMS) and m.module.affine]
        if not bns:
            return L1Norm().score(group, ctx)
        for member in bns:
            total += scatter_to_root(
                member.weight.detach()[member.idxs].abs(), member, group.channels
            )
        return total


@register("taylor")
class Taylor(Criterion):
    """First-order Taylor estimate of the loss change: sum |w * dL/dw| over each filter (Molchanov 2019)."""

    needs = frozenset({"weights", "labels", "gradients"})
    description = "first-order Taylor |w * grad| on calibration data (one backward pass)"

    def score_all(self, groups: list[GroupView], ctx: Context) -> dict[str, torch.Tensor]:
        batches = ctx.calibration_batches()
        images_total = sum(len(y) for _, y in batches)

        def per_layer(member: GroupMember) -> torch.Tensor:
            w = member.weight
            grad = w.grad if w.grad is not None else torch.zeros_like(w)
            prod = (w.detach() * grad).abs()
            return (
                prod[member.idxs].flatten(1).sum(1)
                if member.is_out
                else prod.transpose(0, 1)[member.idxs].flatten(1).sum(1)
            )

        with model_mode(ctx.model, device=ctx.device) as model, torch.enable_grad():
            model.zero_grad(set_to_none=True)
            try:
                for images, labels in batches:
                    loss = F.cross_entropy(
                        model(images.to(ctx.device)), labels.to(ctx.device), reduction="sum"
                    )
                    (loss / images_total).backward()
                return {g.name: _sum_over_out_layers(g, per_layer) for g in groups}
            finally:
                model.zero_grad(set_to_none=True)


@register("random")
class RandomScore(Criterion):
    """Uniform random scores, seeded by (policy seed, group name): a baseline for the others."""

    needs = frozenset({"weights"})
    description = "random scores (seeded baseline)"

    def score(self, group: GroupView, ctx: Context) -> torch.Tensor:
        digest = hashlib.sha256(f"{ctx.seed}/{group.name}/{ctx.step}".encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
        return torch.rand(group.channels, generator=generator)
