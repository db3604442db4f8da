"""A group's filters as matrices: one row per channel, aligned to the group's channel order.

Weight-based criteria (norms, similarity) read the filters of every layer a group touches and
combine them per group channel; these two functions do the alignment once for all of them.
"""

from __future__ import annotations

import torch

from autoprune.groups import GroupMember


def weight_matrix(member: GroupMember) -> torch.Tensor:
    """A layer's filters for the member's channels as rows (out side) or columns (in side).

    Rows are ordered by the member's ``root_idxs`` so all members of a group line up.
    """
    w = member.weight.detach()
    if member.is_out:
        rows = w[member.idxs].flatten(1)
    else:
        rows = (
            w.transpose(0, 1)[member.idxs].flatten(1)
            if w.dim() > 1
            else w[member.idxs].unsqueeze(1)
        )
    return rows


def scatter_to_root(values: torch.Tensor, member: GroupMember, channels: int) -> torch.Tensor:
    """Place per-layer-channel values at the group's channel positions."""
    out = torch.zeros(channels, dtype=values.dtype)
    out[torch.as_tensor(member.root_idxs)] = values.cpu()
    return out
