"""Similarity criteria: a filter that others already express is redundant.

Filters of every coupled output layer are concatenated per channel, so a residual-stream
channel is compared through all the convolutions that write it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from autoprune.criteria import Context, Criterion, register
from autoprune.criteria.filters import weight_matrix
from autoprune.groups import GroupView


def _coupled_filters(group: GroupView) -> torch.Tensor:
    """(channels, features) matrix: each row one channel's filters across coupled layers."""
    parts = []
    for member in group.out_layers():
        rows = weight_matrix(member).float()
        aligned = torch.zeros(group.channels, rows.shape[1])
        aligned[torch.as_tensor(member.root_idxs)] = rows.cpu()
        parts.append(aligned)
    if not parts:
        raise RuntimeError(
            f"group {group.name} has no conv/linear output layer to compare filters of"
        )
    return torch.cat(parts, dim=1)


@register("fpgm")
class GeometricMedian(Criterion):
    """Filter pruning via geometric median (He et al. 2019): sum of distances to the other filters.

    Filters close to the geometric median of their layer are the most replaceable and go first.
    """

    needs = frozenset({"weights"})
    description = "distance to the other filters (geometric median, FPGM)"

    def score(self, group: GroupView, ctx: Context) -> torch.Tensor:
        w = _coupled_filters(group).double()
        return torch.cdist(w, w).sum(1).float()


@register("cos")
class CosineRedundancy(Criterion):
    """Sum over the other filters of (1 - cosine similarity): low = similar to many = redundant."""

    needs = frozenset({"weights"})
    description = "sum of (1 - cosine similarity) to the other filters"

    def score(self, group: GroupView, ctx: Context) -> torch.Tensor:
        w = F.normalize(_coupled_filters(group).double(), dim=1)
        return (1.0 - w @ w.t()).sum(1).float()
