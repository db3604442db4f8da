"""Loss-aware selection of the pruning criterion per group (LAASP, Ghimire et al. 2023).

``auto`` is not a score but a *selection rule*: for each group it lets every criterion of a
pool (default ``l1, l2, fpgm, cos``; ``loss_aware.pool`` in the policy) propose the channels it
would remove at the group's rate, measures the cross-entropy of the network with those channels
removed on a small subset of the calibration data (``loss_aware.images``, the first images of
the calibration set), and keeps the criterion with the lowest loss. The choice is written into
the applied policy (``criterion``, with ``chosen_from`` = the pool).

As in the paper, the choice is made again at every iterative step, on the network as pruned
(and fine-tuned) so far, among the groups that step prunes; where the steps' choices differ, the
applied policy lists them (``step_criteria``), so a replay scores each step as the search did.

Removal is emulated instead of performed: the proposed channels are zeroed at the inputs of
every layer that reads them (the group's input-side conv/linear layers), which is exactly what
the network computes after the channels are cut, since a removed channel contributes nothing
to any consumer. This costs one forward pass of the subset per distinct proposal and group, and
no copies of the model. Proposals that coincide are evaluated once; ties keep the earlier
criterion of the pool.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.criteria import Context, Criterion, get, register
from autoprune.groups import GroupView, channels_to_remove, removal_schedule
from autoprune.modes import model_mode

DEFAULT_POOL = ("l1", "l2", "fpgm", "cos")
DEFAULT_IMAGES = 64


@register("auto")
class LossAwareSelection(Criterion):
    """Per group, the pool criterion whose removal proposal hurts the calibration loss least."""

    needs = frozenset({"weights", "activations", "labels"})
    description = "loss-aware choice among l1/l2/fpgm/cos per group (LAASP, Ghimire et al. 2023)"
    is_selection_rule: ClassVar[bool] = True
    pool: ClassVar[tuple[str, ...]] = DEFAULT_POOL

    @staticmethod
    def pool_for(policy: Any) -> list[str]:
        """The candidate criteria for ``policy`` (its ``loss_aware.pool``, else the default)."""
        section = getattr(policy, "loss_aware", None)
        return list(getattr(section, "pool", None) or DEFAULT_POOL)

    @staticmethod
    def images_for(policy: Any) -> int:
        section = getattr(policy, "loss_aware", None)
        return int(getattr(section, "images", None) or DEFAULT_IMAGES)

    def select(self, groups: list[GroupView], ctx: Context) -> dict[str, str]:
        pool = self.pool_for(ctx.policy)
        bad = [c for c in pool if get(c).is_selection_rule]
        if bad:
            raise ValueError(f"loss_aware.pool may hold only scoring criteria, not {bad}")
        proposals = {name: ctx.scores(name, groups) for name in pool}
        subset = _subset(ctx.calibration_batches(), self.images_for(ctx.policy))
        chosen: dict[str, str] = {}
        with model_mode(ctx.model, device=ctx.device) as model:
            for view in groups:
                # The proposals are compared at the size of the step being chosen for (LAASP
                # prunes a step, then measures); without it, at the group's first step that
                # removes any channels.
                n = ctx.removal_counts.get(view.name, 0)
                if n <= 0:
                    rate = ctx.policy.groups[view.name].rate
                    steps = removal_schedule(
                        channels_to_remove(rate, view.channels),
                        ctx.policy.schedule.iterative_steps,
                    )
                    n = next((k for k in steps if k > 0), 0)
                losses: dict[tuple[int, ...], float] = {}
                best, best_loss = pool[0], float("inf")
                for name in pool:
                    scores = proposals[name][view.name].detach().float().cpu()
                    drop = tuple(sorted(int(i) for i in torch.argsort(scores, stable=True)[:n]))
                    if drop not in losses:
                        with masked_channels(view, drop):
                            losses[drop] = _loss(model, subset, ctx.device)
                    if losses[drop] < best_loss:
                        best, best_loss = name, losses[drop]
                chosen[view.name] = best
        return chosen


def _subset(
    batches: list[tuple[torch.Tensor, torch.Tensor]], images: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out, taken = [], 0
    for x, y in batches:
        if taken >= images:
            break
        out.append((x[: images - taken], y[: images - taken]))
        taken += len(out[-1][1])
    return out


@torch.no_grad()
def _loss(
    model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> float:
    total, seen = 0.0, 0
    for images, labels in batches:
        logits = model(images.to(device))
        total += float(F.cross_entropy(logits.float(), labels.to(device), reduction="sum"))
        seen += len(labels)
    return total / max(seen, 1)


@contextlib.contextmanager
def masked_channels(view: GroupView, channels: tuple[int, ...]) -> Iterator[None]:
    """Within the block, group channels ``channels`` read as zero by every layer consuming them.

    That is the network the group computes once those channels are removed: their filters,
    BatchNorm entries and outputs are gone, so no consumer sees anything of them.
    """
    drop = set(channels)
    handles = []
    for member in view.in_layers():
        idx = [i for i, r in zip(member.idxs, member.root_idxs, strict=True) if r in drop]
        if not idx:
            continue
        index = torch.as_tensor(idx)

        def zero_inputs(module: nn.Module, inputs: Any, index: torch.Tensor = index) -> Any:
            x = inputs[0].clone()
            x[:, index.to(x.device)] = 0
            return (x, *inputs[1:])

        handles.append(member.module.register_forward_pre_hook(zero_inputs))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
