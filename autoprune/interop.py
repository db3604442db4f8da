"""Views of a policy for other pruning tools: NNI, Torch-Pruning and timm's pruned-model specs.

The YAML policy stays the source of truth; these are read-only *views* of it, for people who
prune with another tool. ``autoprune export NAME --format FORMAT`` writes one view file next to
each exported policy (``trial-0003.yaml`` gets ``trial-0003.nni.json``, ...):

* ``nni`` (``*.nni.json``): an NNI 3.0 ``config_list``, one ``{"op_names": [layer],
  "sparse_ratio": r}`` entry per layer whose output channels the policy removes, named as in the
  unpruned base model, for ``nni.compression.pruning.L1NormPruner(model, config_list)`` (or any
  NNI pruner taking a config list). ``r`` is the share of the layer's channels autoprune removed,
  nudged by at most a few float ulps so NNI's ``int(channels * r)`` masks exactly that many.
* ``torch-pruning`` (``*.torch-pruning.json``): Torch-Pruning's ``pruning_ratio_dict`` keyed by
  module name: the root layer of each DepGraph group the policy prunes in the base model, with
  the group's rate as applied (again nudged so that ``MetaPruner`` removes exactly as many
  channels). :func:`torch_pruning_ratio_dict` turns it into the ``{module: ratio}`` dict
  ``tp.pruner.MetaPruner`` takes; pass ``pruning_ratio=0.0`` too, or MetaPruner prunes every
  group the file does not name at its default 50%.
* ``channels`` (``*.channels.txt``): the weight shape of every layer of the pruned model in
  timm's pruned-model format (``timm/models/_pruned/*.txt``): ``name.weight:[out, in, kh, kw]``
  entries joined by ``***`` on one line, which
  ``timm.models._prune.adapt_model_from_string(model, text)`` reads. Exact: the shapes come from
  autoprune's own surgery on the base architecture.

What the views do NOT reproduce:

* **Which channels go.** NNI and Torch-Pruning choose channels by their own importance (L1 norm,
  ...), not by the policy's criterion, its calibration data or loss-aware selection; only how
  many channels each layer or group loses is carried over. Replaying the YAML (``autoprune
  replay``) is the only way to remove the channels the trial removed.
* **DepGraph coupling (NNI).** NNI's config prunes every layer on its own: the convolutions that
  write into one residual stream get the same ratio but may mask different channels, so the
  masked model cannot be shrunk the way autoprune's can. Torch-Pruning keeps the coupling (its
  groups are autoprune's groups).
* **Block removal.** Residual blocks in the policy's ``depth.drop_blocks`` are not removed by
  NNI or Torch-Pruning; their layers are not named in the NNI view, and under Torch-Pruning they
  stay and lose channels with the residual group they write into. timm's format can only change
  widths, not remove modules, so the ``channels`` view describes the model *after* those blocks
  are replaced by ``nn.Identity`` (``autoprune.depth.drop_blocks``); adapt that model, not the
  unpruned one.
* **Iterative steps and fine-tuning.** The views give the final widths; the policy's
  ``schedule`` (pruning in steps, fine-tuning between them) and its ``retrain`` recipe are not
  expressed, so a model pruned by another tool needs its own fine-tune.

Every count is read off autoprune's own surgery (:func:`autoprune.prune.apply`) run on the
base architecture rebuilt from the policy's ``model`` section, with the policy's rates (in an
exported policy, the rates that went): no weights and no data are needed, and every rule of how
many channels a group loses is the surgery's own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from autoprune import depth, prune
from autoprune.errors import UserError
from autoprune.files import read_text_file, write_text
from autoprune.groups import build_graph, current_views
from autoprune.policy import ClassAware, GroupPolicy, Policy

FORMATS = ("yaml", "nni", "torch-pruning", "channels")  # `autoprune export --format` choices
# What each view's file name ends with, in place of the policy's ``.yaml``.
SUFFIXES = {"nni": ".nni.json", "torch-pruning": ".torch-pruning.json", "channels": ".channels.txt"}
TIMM_SEPARATOR = "***"  # between entries of a timm pruned-model spec


@dataclass
class GroupCut:
    """How many channels a policy removes from one DepGraph group."""

    name: str  # root module name in the model the policy prunes (its blocks dropped)
    channels: int  # the group's channels before pruning
    removed: int  # channels the policy removes from it
    out_layers: list[str]  # conv/linear layers whose output channels the group sets


def group_cuts(policy: Policy) -> list[GroupCut]:
    """Every group the policy removes channels from, in DepGraph order.

    The groups are those :func:`autoprune.prune.apply` prunes (of the base architecture after
    the policy's blocks are dropped), and what each loses is read off the model that surgery
    produces (:func:`pruned_architecture`), so every rule of how many channels go (rounding,
    ``channel_multiple``, iterative steps) is the surgery's own.

    Raises:
        UserError: the policy does not fit its model, or its counts depend on data (see
            :func:`check_counts_exact`).
    """
    pruned = pruned_architecture(policy)
    model, inputs = _architecture(policy)
    cuts = []
    for view in current_views(model, build_graph(model, inputs)):
        removed = _width(model, view.name) - _width(pruned, view.name)
        if removed:
            cuts.append(
                GroupCut(view.name, view.channels, removed, [m.name for m in view.out_layers()])
            )
    return cuts


def check_counts_exact(policy: Policy) -> None:
    """Refuse a policy whose rates are only upper bounds of what pruning removes.

    A group scored by ``class_aware`` with ``class_aware.min_classes`` and no MACs target loses
    only the channels below the class threshold, which depends on the calibration data; a policy
    with a target (every policy a search stores) records the rates that actually went.
    """
    if policy.target_macs_ratio is not None or policy.class_aware.min_classes is None:
        return
    thresholded = [
        name
        for name, g in policy.groups.items()
        if g.rate > 0
        and (
            g.criterion == "class_aware"
            or "class_aware" in (g.step_criteria or [])
            or (g.criterion == "auto" and "class_aware" in policy.loss_aware.pool)
        )
    ]
    if thresholded:
        raise UserError(
            f"groups {', '.join(thresholded)} are pruned by class_aware with "
            "class_aware.min_classes and no target_macs_ratio, so how many channels they lose "
            "depends on the calibration data and their rates are only upper bounds: export the "
            "applied policy a search or replay stored (its rates are what went), or give the "
            "policy a target_macs_ratio"
        )


# --------------------------------------------------------------------------- NNI


def nni_config_list(policy: Policy) -> list[dict[str, object]]:
    """An NNI 3.0 ``config_list``: one entry per layer whose output channels the policy removes.

    Layer names are those of the unpruned base model (``model.named_modules()``); each layer of
    a group gets the group's share. NNI prunes each entry on its own (see the module docstring).
    """
    return [
        {"op_names": [layer], "sparse_ratio": nni_sparse_ratio(cut.removed, cut.channels)}
        for cut in group_cuts(policy)
        for layer in cut.out_layers
    ]


def nni_sparse_ratio(removed: int, channels: int) -> float:
    """``removed / channels``, raised by float ulps until NNI's ``int(channels * r)`` is ``removed``."""
    ratio = removed / channels
    while int(channels * ratio) < removed:
        ratio = math.nextafter(ratio, 1.0)
    return ratio


# --------------------------------------------------------------------------- Torch-Pruning


def torch_pruning_ratios(policy: Policy) -> dict[str, float]:
    """Torch-Pruning's ``pruning_ratio_dict`` by module name, for the unpruned base model.

    Keys are the root layers of the base model's DepGraph groups (as ``MetaPruner`` finds them
    with the classifier ignored) that the policy prunes; a group of the policy (traced with its
    blocks dropped) is found in the base model by its root layer, which it keeps.
    """
    cuts = group_cuts(policy)
    roots = {cut.name: cut.name for cut in cuts}
    if policy.depth.drop_blocks:
        model, inputs = _architecture(policy, drop_blocks=False)
        base_roots = {
            layer.name: view.name
            for view in current_views(model, build_graph(model, inputs))
            for layer in view.out_layers()
        }
        roots = {cut.name: base_roots[cut.name] for cut in cuts}
    return {roots[cut.name]: torch_pruning_ratio(cut.removed, cut.channels) for cut in cuts}


def torch_pruning_ratio(removed: int, channels: int) -> float:
    """``removed / channels``, moved by float ulps until MetaPruner removes exactly ``removed``.

    MetaPruner removes ``channels - int(channels * (1 - ratio))`` channels of a group.
    """
    ratio = removed / channels
    while channels - int(channels * (1 - ratio)) > removed:
        ratio = math.nextafter(ratio, 0.0)
    while channels - int(channels * (1 - ratio)) < removed:
        ratio = math.nextafter(ratio, 1.0)
    return ratio


def torch_pruning_ratio_dict(
    model: nn.Module, ratios: Mapping[str, float] | str | Path
) -> dict[nn.Module, float]:
    """Turn a ``*.torch-pruning.json`` view (or its dict) into MetaPruner's ``{module: ratio}``.

    ``model`` is the unpruned base model the view was exported for. Use it as::

        import torch_pruning as tp
        from autoprune.groups import classifier_layers
        from autoprune.interop import torch_pruning_ratio_dict

        pruner = tp.pruner.MetaPruner(
            model, example_inputs, importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=0.0,  # groups the file does not name keep all their channels
            pruning_ratio_dict=torch_pruning_ratio_dict(model, "trial-0003.torch-pruning.json"),
            ignored_layers=classifier_layers(model),  # the classes are never pruned
        )
        pruner.step()

    Raises:
        UserError: the file is not such a view, or names a module ``model`` does not have.
    """
    source = str(ratios) if isinstance(ratios, (str, Path)) else "pruning_ratio_dict"
    if isinstance(ratios, (str, Path)):
        try:
            ratios = json.loads(read_text_file(ratios, "torch-pruning view"))
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{source} is not JSON ({exc}): give a *.torch-pruning.json file written by "
                "`autoprune export --format torch-pruning`"
            ) from exc
    if not isinstance(ratios, Mapping):
        raise UserError(f'{source} must map module names to pruning ratios, e.g. {{"conv1": 0.25}}')
    modules = dict(model.named_modules())
    out: dict[nn.Module, float] = {}
    for name, ratio in ratios.items():
        if name not in modules:
            raise UserError(
                f"{source} names module '{name}', which {type(model).__name__} does not have: "
                "the file was exported for another model; use the unpruned base model it was "
                "exported for"
            )
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
            raise UserError(f"{source}: the ratio of '{name}' is {ratio!r}; it must be in [0, 1)")
        out[modules[name]] = float(ratio)
    return out


# --------------------------------------------------------------------------- channels (timm)


def pruned_architecture(policy: Policy) -> nn.Module:
    """The model ``policy`` prunes its base to, with fresh weights (only its shapes are meant).

    Made by :func:`autoprune.prune.apply`, the surgery replay runs, on the base architecture
    with every group scored by ``l1``: which channels go never changes a layer's shape, so no
    base weights or data are needed.

    Raises:
        UserError: the policy does not fit its model, or its counts depend on data (see
            :func:`check_counts_exact`).
    """
    check_counts_exact(policy)
    model, inputs = _architecture(policy, drop_blocks=False)
    shape_only = replace(
        policy,
        groups={
            name: GroupPolicy(rate=g.rate, criterion="l1") for name, g in policy.groups.items()
        },
        class_aware=ClassAware(),
    )
    prune.apply(model, shape_only, example_inputs=inputs)
    return model


def pruned_layer_shapes(policy: Policy) -> list[tuple[str, list[int]]]:
    """(layer name, weight shape) of every layer with weights in the model the policy prunes to.

    Norm layers without affine weights are listed with their channel count, as timm expects.
    """
    shapes = []
    for name, module in pruned_architecture(policy).named_modules():
        weight = dict(module.named_parameters(recurse=False)).get("weight")
        if weight is not None:
            shapes.append((name, list(weight.shape)))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            shapes.append((name, [module.num_features]))
    return shapes


def timm_channel_spec(policy: Policy) -> str:
    """The pruned model's layer shapes as a timm pruned-model spec (``adapt_model_from_string``)."""
    return TIMM_SEPARATOR.join(
        f"{name}.weight:{shape}" for name, shape in pruned_layer_shapes(policy)
    )


# --------------------------------------------------------------------------- files


def render(policy: Policy, fmt: str) -> str:
    """The text of one view (``fmt`` in :data:`SUFFIXES`) of ``policy``."""
    if fmt == "nni":
        return json.dumps(nni_config_list(policy), indent=2) + "\n"
    if fmt == "torch-pruning":
        return json.dumps(torch_pruning_ratios(policy), indent=2) + "\n"
    if fmt == "channels":
        return timm_channel_spec(policy)  # no newline: timm's reader takes the text as it is
    raise UserError(f"export format '{fmt}' is unknown; allowed: {', '.join(FORMATS)}")


def view_path(policy_path: Path, fmt: str) -> Path:
    """Where the ``fmt`` view of the policy file ``policy_path`` goes (next to it)."""
    return policy_path.with_name(policy_path.stem + SUFFIXES[fmt])


def write_views(policy_paths: Sequence[Path], fmt: str) -> list[Path]:
    """Write the ``fmt`` view of each policy YAML file next to it; return the files written.

    ``fmt == "yaml"`` writes nothing (the policies are the YAML).

    Raises:
        UserError: ``fmt`` is unknown, or a policy cannot be viewed (the message names its file).
    """
    if fmt not in FORMATS:
        raise UserError(f"export format '{fmt}' is unknown; allowed: {', '.join(FORMATS)}")
    if fmt == "yaml":
        return []
    written = []
    for path in policy_paths:
        policy = Policy.load(path)
        try:
            text = render(policy, fmt)
        except UserError as exc:
            raise UserError(f"{path}: cannot write its {fmt} view: {exc}") from exc
        out = view_path(path, fmt)
        write_text(out, text)
        written.append(out)
    return written


def remove_orphan_views(folder: Path) -> list[Path]:
    """Remove the views in ``folder`` whose policy file is gone (a point that left the front).

    ``export_front`` replaces a folder's policies; calling this after it means no view outlives
    its policy. Returns the files removed.
    """
    removed = []
    for suffix in SUFFIXES.values():
        for pattern in (f"trial-*{suffix}", f"baseline-*{suffix}"):
            for view in folder.glob(pattern):
                policy = view.with_name(view.name[: -len(suffix)] + ".yaml")
                if not policy.exists():
                    view.unlink(missing_ok=True)  # another export may remove it at once
                    removed.append(view)
    return removed


def _width(model: nn.Module, layer: str) -> int:
    """Output channels of a conv/linear layer (its weight's first dimension)."""
    return int(model.get_submodule(layer).get_parameter("weight").shape[0])


def _architecture(policy: Policy, drop_blocks: bool = True) -> tuple[nn.Module, torch.Tensor]:
    """The policy's base architecture (fresh weights) and example inputs, blocks dropped or not."""
    with torch.random.fork_rng(devices=[]):  # fresh weights must not move the caller's RNG
        model = policy.model.build().eval()
    inputs = policy.model.example_inputs()
    if drop_blocks and policy.depth.drop_blocks:
        depth.drop_blocks(model, policy.depth.drop_blocks, inputs)
    return model, inputs
