"""Feature relevance score: layer-wise relevance propagation (Aketi et al. 2020).

The relevance of the true class (unit relevance on its logit) is propagated back to every
feature map with the LRP alpha-beta rule (alpha 2, beta 1) on convolutions and linear layers,
passed through BatchNorm and activations unchanged, split between the operands of a residual
addition in proportion to their contributions, and spread evenly by average pooling. A
channel's relevance for one image is the spatial mean of the relevance at its post-activation
feature map; it is averaged per class over the calibration set, the classes are combined with
weights that favour poorly learned classes, and the result's absolute value is L2-normalised
per group so scores of different layers compare globally.

Propagation uses zennit's rules. zennit hooks *modules*; a functional ``a + b`` inside a
block's ``forward`` keeps autograd's gradient, which hands the full upper relevance to *both*
operands, doubling the total at every residual addition. zennit ships a fix only for
torchvision's ResNet blocks (``ResNetCanonizer``); here every tensor addition is rewritten
generically with ``torch.fx`` into zennit's ``Sum`` module, which the ``Norm`` rule splits
proportionally. Models that ``torch.fx`` cannot trace are explained without the rewrite (a
warning says so); their residual additions then duplicate relevance. The trace keeps every
layer, normalisation and activation module whole, subclasses included (timm's
``BatchNormAct2d`` is a ``BatchNorm2d`` with its activation inside): ``torch.fx`` would
otherwise inline such modules from other libraries into functional calls, where neither
zennit's rules nor the channel taps' hooks see them, and their channels would get no relevance.

What was verified (``tests/test_criteria_papers.py``): with the rewrite, the total relevance
at every map of ResNet-20's residual stream stays 1 per image to within 4e-3 (without it, the
stem receives 2**9); on a plain conv/BN/ReLU/max-pool chain it stays 1 to within 3e-3.
BatchNorm and activations get zennit's ``Pass`` rule (from ``layer_map_base``), so BatchNorm's
scale does not leak into the relevance. Alpha-beta conserves only where a neuron has both
positive and negative contributions; depthwise 3x3 convolutions (MobileNetV2, 9 inputs per
neuron on small maps) often have one sign only, so totals drift there: on a random-init
MobileNetV2 they range from about -5 to 5 in the early blocks. That is the rule, not the wiring.
"""

from __future__ import annotations

import contextlib
import operator
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from autoprune.criteria import Context, Criterion, register
from autoprune.criteria.taps import ACTIVATIONS, ChannelTaps
from autoprune.groups import BATCH_NORMS, GroupView
from autoprune.modes import model_mode

ALPHA, BETA = 2.0, 1.0
_ADDS = (operator.add, operator.iadd, torch.add)
# Modules the trace must keep whole (see the module docstring): what zennit's rules and the
# channel taps hook.
_WHOLE: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Linear,
    *BATCH_NORMS,
    *ACTIVATIONS,
)


class _WholeModuleTracer(fx.Tracer):
    """``torch.fx`` tracer that does not trace into layers, norms and activations (subclasses too)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _WHOLE) or super().is_leaf_module(m, module_qualified_name)


def lrp_composite() -> Any:
    """zennit composite: alpha2-beta1 on conv/linear (biases ignored), pass-through BN/activations.

    Biases are left out of the alpha-beta rule so relevance is redistributed over the inputs
    only (conserved up to the stabiliser), rather than partly absorbed by the bias.
    """
    from zennit.composites import LayerMapComposite, layer_map_base
    from zennit.rules import AlphaBeta
    from zennit.types import Convolution

    rule = AlphaBeta(alpha=ALPHA, beta=BETA, zero_params=["bias"])
    return LayerMapComposite(layer_map=[*layer_map_base(), (Convolution, rule), (nn.Linear, rule)])


def canonize_residual_adds(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, int]:
    """A traced copy of ``model`` whose tensor additions go through zennit ``Sum`` modules.

    The copy shares every submodule (and so every parameter and hook) with ``model``; only the
    wiring differs. Returns the model to explain and the number of additions rewritten.
    """
    from torch.fx.passes.shape_prop import ShapeProp
    from zennit.layer import Sum

    try:
        tracer = _WholeModuleTracer()
        graph = tracer.trace(model)
        traced = fx.GraphModule(tracer.root, graph, type(model).__name__)
        with torch.no_grad():
            ShapeProp(traced).propagate(example)
    except Exception as exc:  # tracing user models can fail in many ways
        warnings.warn(
            f"relevance: {type(model).__name__} cannot be traced by torch.fx ({exc}); residual "
            "additions are not canonised and pass the full relevance to both operands",
            RuntimeWarning,
            stacklevel=2,
        )
        return model, 0
    rewritten = 0
    for node in list(traced.graph.nodes):
        if node.op != "call_function" or node.target not in _ADDS or node.kwargs:
            continue
        if len(node.args) != 2 or not all(isinstance(a, fx.Node) for a in node.args):
            continue
        metas = [a.meta.get("tensor_meta") for a in node.args]
        if (
            any(getattr(m, "shape", None) is None for m in metas)
            or metas[0].shape != metas[1].shape
        ):
            continue  # scalar or broadcasting additions are not residual merges
        name = f"lrp_sum_{rewritten}"
        traced.add_submodule(name, Sum(dim=-1))
        with traced.graph.inserting_before(node):
            stacked = traced.graph.call_function(torch.stack, (list(node.args),), {"dim": -1})
            summed = traced.graph.call_module(name, (stacked,))
        node.replace_all_uses_with(summed)
        traced.graph.erase_node(node)
        rewritten += 1
    traced.recompile()
    return traced, rewritten


def class_weights(losses: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Weights of the classes: half uniform, half proportional to the class's mean loss.

    Poorly learned classes (high cross-entropy) weigh more; well learned ones keep half the
    uniform weight, so a near-perfect model still uses every class. Classes without
    calibration images get weight 0.
    """
    present = counts > 0
    mean_loss = torch.where(present, losses / counts.clamp(min=1), torch.zeros_like(losses))
    k = int(present.sum())
    if k == 0:
        return torch.zeros_like(losses)
    uniform = present.double() / k
    total = float(mean_loss.sum())
    by_loss = mean_loss / total if total > 0 else uniform
    return 0.5 * uniform + 0.5 * by_loss


@register("relevance")
class FeatureRelevance(Criterion):
    """Class-weighted LRP relevance of each channel, ``|.|`` and L2-normalised per group."""

    needs = frozenset({"weights", "activations", "labels", "gradients"})
    description = "feature relevance by LRP alpha2-beta1 from the true class (Aketi et al. 2020)"

    def score(self, group: GroupView, ctx: Context) -> torch.Tensor:
        return self.score_all([group], ctx)[group.name]

    def score_all(self, groups: list[GroupView], ctx: Context) -> dict[str, torch.Tensor]:
        per_class, counts, losses, taps = channel_relevance(groups, ctx)
        weights = class_weights(losses, counts)
        mean = {t: r / counts.clamp(min=1).unsqueeze(1) for t, r in per_class.items()}
        per_tap = {t: (weights.unsqueeze(1) * r).sum(0).abs() for t, r in mean.items()}
        scores = taps.reduce(per_tap)
        return {name: s / s.norm() if s.norm() > 0 else s for name, s in scores.items()}


def channel_relevance(
    groups: list[GroupView], ctx: Context, *, canonize: bool = True
) -> tuple[dict[int, torch.Tensor], torch.Tensor, torch.Tensor, ChannelTaps]:
    """One LRP pass over the calibration set.

    Returns:
        per tap, the (classes, channels) sum over images of each class of the channel's
        spatially averaged relevance; the number of images per class; the summed cross-entropy
        per class; and the taps (which tell how taps map to groups).
    """
    batches = ctx.calibration_batches()
    num_classes = ctx.num_classes
    per_class: dict[int, torch.Tensor] = {}
    counts = torch.zeros(num_classes, dtype=torch.float64)
    losses = torch.zeros(num_classes, dtype=torch.float64)
    with model_mode(ctx.model, device=ctx.device) as model:
        probe = batches[0][0][:2].to(ctx.device)
        taps = ChannelTaps(model, groups, probe)
        with explainer(model, taps, probe, canonize=canonize) as explain:
            for images, labels in batches:
                labels = labels.to(ctx.device)
                logits, relevance = explain(images.to(ctx.device), labels)
                onehot = F.one_hot(labels.cpu(), num_classes).double()
                for tap, rel in relevance.items():
                    spatial = rel.double().reshape(rel.shape[0], rel.shape[1], -1)
                    summed = onehot.t() @ spatial.mean(2).cpu()
                    per_class[tap] = per_class[tap] + summed if tap in per_class else summed
                ce = F.cross_entropy(logits.float(), labels, reduction="none")
                counts += onehot.sum(0)
                losses += onehot.t() @ ce.double().cpu()
    return per_class, counts, losses, taps


@contextlib.contextmanager
def explainer(
    model: nn.Module, taps: ChannelTaps, probe: torch.Tensor, *, canonize: bool = True
) -> Iterator[Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[int, torch.Tensor]]]]:
    """A function ``explain(images, labels) -> (logits, {tap: relevance map})`` for the block.

    Relevance starts as 1 on each image's true-class logit (0 elsewhere) and is propagated with
    :func:`lrp_composite`; the map of a tap has the shape of the tap's output, so its sum over
    channels and positions is the relevance that reached that point. Taps the logits do not
    depend on are left out. ``model`` must be in eval mode.
    """
    explained = canonize_residual_adds(model, probe)[0] if canonize else model
    kept: dict[int, torch.Tensor] = {}

    def on_tap(tap: int, output: torch.Tensor) -> torch.Tensor:
        kept[tap] = output
        # Downstream gets a copy, so in-place operations of the model cannot alter the tensor
        # whose relevance is read.
        return output.clone()

    def explain(
        images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        kept.clear()
        logits = explained(images.detach().clone().requires_grad_(True))
        start = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
        order = list(kept)
        relevance = torch.autograd.grad(
            logits, [kept[t] for t in order], grad_outputs=start, allow_unused=True
        )
        maps = {t: r.detach() for t, r in zip(order, relevance, strict=True) if r is not None}
        kept.clear()
        return logits.detach(), maps

    # zennit's hooks first, ours after them, so ours see the outputs zennit tracks.
    with lrp_composite().context(explained), taps.observe(on_tap), torch.enable_grad():
        yield explain
