"""Energy-aware pruning: nuclear norm of each channel's feature map (Yeom et al. 2021).

A channel whose post-activation feature maps have a small nuclear norm (sum of singular values
of the HxW map) carries little energy and few independent components; it goes first. The score
is the average over the calibration images. Forward passes only, no labels.
"""

from __future__ import annotations

import torch

from autoprune.criteria import Context, Criterion, register
from autoprune.criteria.taps import ChannelTaps
from autoprune.groups import GroupView
from autoprune.modes import model_mode


def channel_energy(features: torch.Tensor) -> torch.Tensor:
    """Nuclear norm of every (image, channel) map: (N, C, H, W) -> (N, C).

    Feature vectors without spatial extent, (N, C), are 1x1 maps whose nuclear norm is |x|;
    1-D maps (N, C, L) are 1xL matrices whose nuclear norm is their L2 norm.
    """
    x = features.detach().float()
    if x.dim() == 4:
        # The sum of singular values is the nuclear norm; svdvals skips the singular vectors.
        return torch.linalg.svdvals(x).sum(-1)
    if x.dim() == 2:
        return x.abs()
    return x.flatten(2).norm(dim=2)


@register("energy")
class NuclearNormEnergy(Criterion):
    """Mean nuclear norm of each channel's post-activation feature map over the calibration set.

    For a coupled group the channel's score is the mean over the maps it appears in (see
    :class:`autoprune.criteria.taps.ChannelTaps`). One forward pass over the calibration set scores
    every group.
    """

    needs = frozenset({"weights", "activations"})
    description = "nuclear-norm energy of each channel's feature maps (Yeom et al. 2021)"

    def score(self, group: GroupView, ctx: Context) -> torch.Tensor:
        return self.score_all([group], ctx)[group.name]

    def score_all(self, groups: list[GroupView], ctx: Context) -> dict[str, torch.Tensor]:
        batches = ctx.calibration_batches()
        sums: dict[int, torch.Tensor] = {}
        seen = 0
        with model_mode(ctx.model, device=ctx.device) as model:
            taps = ChannelTaps(model, groups, batches[0][0][:2].to(ctx.device))

            def on_tap(tap: int, output: torch.Tensor) -> None:
                energy = channel_energy(output).sum(0).double()
                sums[tap] = sums[tap] + energy if tap in sums else energy

            with torch.no_grad(), taps.observe(on_tap):
                for images, _ in batches:
                    model(images.to(ctx.device))
                    seen += len(images)
        return taps.reduce({tap: total / max(seen, 1) for tap, total in sums.items()})
