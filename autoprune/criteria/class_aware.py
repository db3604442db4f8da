"""Class-aware pruning: for how many classes does a filter matter? (Jiang et al., DATE 2024)

For every class ``c`` a few training images of that class are passed forward and the
cross-entropy is back-propagated. At every position of a channel's convolution output (before
normalisation and activation, where the paper's reference code reads it) ``|activation x
gradient|`` is binarised (``> 0``: the position contributed to the loss of that image) and
averaged over the class's images, giving the share of the class's images for which the position
mattered. These shares are summed over classes and the maximum over positions is the channel's
score: a soft count in ``[0, num_classes]`` of the classes the filter matters for. A coupled
group (a residual stream written by several convolutions) averages the counts of its
convolutions, so its score stays in the same range.

Reading the convolution output rather than the post-activation map matters for a filter that
is zero (or pruned to zero): its output is zero, so it counts for no class, whereas after
BatchNorm its map would be the constant ``relu(beta)``, which still carries gradient.

With ``class_aware.min_classes`` set in a policy, channels whose count is below it are the
removal candidates and the MACs target decides how many channels go: what the threshold spares
is taken from the policy's other groups (see ``autoprune.prune._keep_budget``), and
``schedule.iterative_steps`` repeats prune -> fine-tune -> rescore, offering spared channels again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from autoprune.criteria import Context, Criterion, register
from autoprune.criteria.taps import ChannelTaps
from autoprune.groups import GroupView
from autoprune.modes import model_mode


@register("class_aware")
class ClassAwareCount(Criterion):
    """Soft count of the classes each channel is important for, in ``[0, num_classes]``.

    Images of one class are processed together (``Calibration.class_balanced``), so the memory
    held is one map per tap, whatever the number of classes. BatchNorm runs in eval mode, so
    the summed loss of a batch gives every image its own gradient.
    """

    needs = frozenset({"weights", "activations", "labels", "gradients"})
    description = "number of classes each filter matters for (class-aware, Jiang et al. 2024)"

    def cache_tag(self, ctx: Context) -> str:
        return f"/per-class{self._samples_per_class(ctx)}/conv-out"

    @staticmethod
    def _samples_per_class(ctx: Context) -> int:
        section = getattr(ctx.policy, "class_aware", None)
        return int(getattr(section, "samples_per_class", 10))

    def score(self, group: GroupView, ctx: Context) -> torch.Tensor:
        return self.score_all([group], ctx)[group.name]

    def score_all(self, groups: list[GroupView], ctx: Context) -> dict[str, torch.Tensor]:
        batches = ctx.class_balanced_batches(self._samples_per_class(ctx))
        total: dict[int, torch.Tensor] = {}  # tap -> sum over finished classes of shares
        current: dict[int, torch.Tensor] = {}  # tap -> counts of the class being processed
        state = {"class": -1, "images": 0}

        def finish_class() -> None:
            if state["images"]:
                for tap, counts in current.items():
                    share = counts / state["images"]
                    total[tap] = total[tap] + share if tap in total else share
            current.clear()
            state["images"] = 0

        with model_mode(ctx.model, device=ctx.device) as model:
            taps = ChannelTaps(model, groups, batches[0][0][:2].to(ctx.device), point="layer")
            kept: dict[int, torch.Tensor] = {}

            def on_tap(tap: int, output: torch.Tensor) -> torch.Tensor:
                kept[tap] = output
                # Downstream code gets a copy: in-place ops of the model (an in-place BN or
                # ``out += identity``) then cannot touch the tensor whose gradient is read below.
                return output.clone()

            with torch.enable_grad(), taps.observe(on_tap):
                for images, labels in batches:
                    cls = int(labels[0])
                    if cls != state["class"]:
                        finish_class()
                        state["class"] = cls
                    kept.clear()
                    logits = model(images.to(ctx.device))
                    loss = F.cross_entropy(logits, labels.to(ctx.device), reduction="sum")
                    order = list(kept)
                    grads = torch.autograd.grad(loss, [kept[t] for t in order], allow_unused=True)
                    for tap, grad in zip(order, grads, strict=True):
                        act = kept[tap].detach()
                        fired = (
                            (act * grad).abs() > 0 if grad is not None else torch.zeros_like(act)
                        )
                        counts = fired.float().sum(0)
                        current[tap] = current[tap] + counts if tap in current else counts
                    state["images"] += len(labels)
                finish_class()
        # Sum over classes is done; the count of a channel is its best position.
        per_tap = {tap: share.reshape(len(share), -1).amax(1) for tap, share in total.items()}
        return taps.reduce(per_tap)
