"""Interop views of exported policies: NNI config lists, Torch-Pruning ratio dicts, timm shapes.

The policies are applied policies made the way a search makes them: a raw policy with a MACs
target goes through :func:`autoprune.evaluate.prune_policy` (budget projection, then the
surgery replay runs) on a ResNet-20 base, so residual groups (coupled convolutions), iterative
steps and dropped blocks are all exercised. The base is untrained: which channels go and how
well the model does are not what these tests check, only how many channels each layer loses.
Each view is then handed to the tool it is for (NNI's ``L1NormPruner``, Torch-Pruning's
``MetaPruner``, timm's ``adapt_model_from_string``) and what that tool does is compared with the
model autoprune's replay surgery produced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

from autoprune import interop
from autoprune.base import save_base
from autoprune.cli import main
from autoprune.cli.parser import build_parser
from autoprune.depth import drop_blocks
from autoprune.errors import UserError
from autoprune.evaluate import ObjectiveConfig, prune_policy
from autoprune.groups import classifier_layers
from autoprune.modelspec import ModelSpec
from autoprune.policy import Policy
from autoprune.study import BASELINE_ATTR, DIRECTIONS

SPEC = ModelSpec.from_dict({"name": "resnet20", "num_classes": 10, "input_shape": [1, 28, 28]})

# Raw policies as a search samples them; prune_policy projects their rates onto the target.
RAW_POLICIES = {
    "residual-and-steps": {
        "model": SPEC.to_dict(),
        "target_macs_ratio": 0.6,
        "groups": {
            "conv1": {"rate": 0.3, "criterion": "l1"},  # the layer1 residual stream
            "layer2.0.shortcut.0": {"rate": 0.4, "criterion": "fpgm"},  # layer2's stream
            "layer1.1.conv1": {"rate": 0.5, "criterion": "l1"},
            "layer2.2.conv1": {"rate": 0.3, "criterion": "fpgm"},
            "layer3.0.conv1": {"rate": 0.6, "criterion": "l1"},
            "layer3.2.conv1": {"rate": 0.5, "criterion": "l1"},
        },
        "schedule": {"iterative_steps": 2},
    },
    "blocks-dropped": {
        "model": SPEC.to_dict(),
        "target_macs_ratio": 0.45,
        "groups": {
            "layer3.0.shortcut.0": {"rate": 0.3, "criterion": "l1"},  # layer3's stream
            "layer1.0.conv1": {"rate": 0.5, "criterion": "l1"},
            "layer2.0.conv1": {"rate": 0.4, "criterion": "fpgm"},
            "layer3.1.conv1": {"rate": 0.5, "criterion": "l1"},
        },
        "depth": {"drop_blocks": ["layer1.1", "layer3.2"]},
    },
}


@dataclass
class Applied:
    """An applied policy and the model the replay surgery pruned with it."""

    policy: Policy
    pruned: nn.Module


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> dict[str, Applied]:
    folder = tmp_path_factory.mktemp("interop")
    base_path = folder / "resnet20-mnist5k.pt"
    torch.manual_seed(0)
    save_base(base_path, SPEC.build(), SPEC, {"name": "mnist5k", "seed": 0}, {})
    config = ObjectiveConfig(
        base_checkpoint=str(base_path),
        dataset="mnist5k",
        device="cpu",
        score_cache=str(folder / "scores"),
    )
    out = {}
    for name, raw in RAW_POLICIES.items():
        pruned = prune_policy(config, Policy.from_dict(raw, source=name))
        out[name] = Applied(pruned.policy, pruned.model.eval())
    return out


def _view(policy: Policy, folder: Path, fmt: str) -> Path:
    """Save ``policy`` as an exported trial would be, then write its ``fmt`` view."""
    folder.mkdir(parents=True, exist_ok=True)
    yaml_path = folder / "trial-0001.yaml"
    policy.save(yaml_path)
    (view,) = interop.write_views([yaml_path], fmt)
    assert view == folder / f"trial-0001{interop.SUFFIXES[fmt]}"
    return view


def _weight_shapes(model: nn.Module) -> dict[str, list[int]]:
    return {
        name: list(module.get_parameter("weight").shape)
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))
    }


def _out_channels(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


@pytest.mark.parametrize("name", list(RAW_POLICIES))
def test_nni_l1_pruner_masks_as_many_channels_per_layer_as_autoprune_removed(
    applied: dict[str, Applied], tmp_path: Path, name: str
) -> None:
    pruning = pytest.importorskip(
        "nni.compression.pruning", reason="the nni extra is not installed"
    )
    case = applied[name]
    config_list = json.loads(_view(case.policy, tmp_path, "nni").read_text())
    base = SPEC.build()
    base_modules = dict(base.named_modules())
    layers = [entry["op_names"][0] for entry in config_list]
    assert all(len(entry["op_names"]) == 1 for entry in config_list)
    assert all(isinstance(base_modules.get(layer), nn.Conv2d) for layer in layers), layers

    # Exactly the layers whose output channels the replay surgery removed are named.
    base_out, pruned_out = _out_channels(base), _out_channels(case.pruned)
    shrunk = {n for n, c in pruned_out.items() if c < base_out[n]}
    assert set(layers) == shrunk
    assert len(layers) > len(case.policy.groups) - 2, "coupled layers of residual groups listed"

    _, masks = pruning.L1NormPruner(base, config_list).compress()
    for entry in config_list:
        layer = entry["op_names"][0]
        mask = masks[layer]["weight"]
        zeroed = int((mask.flatten(1).sum(dim=1) == 0).sum())
        removed = base_out[layer] - pruned_out[layer]
        assert zeroed == removed, (layer, entry["sparse_ratio"])
        assert entry["sparse_ratio"] == pytest.approx(removed / base_out[layer], abs=1e-12)


@pytest.mark.parametrize("name", list(RAW_POLICIES))
def test_torch_pruning_metapruner_gives_the_replayed_widths(
    applied: dict[str, Applied], tmp_path: Path, name: str
) -> None:
    import torch_pruning as tp

    case = applied[name]
    view = _view(case.policy, tmp_path, "torch-pruning")
    ratios = json.loads(view.read_text())
    model = SPEC.build().eval()
    inputs = SPEC.example_inputs()
    assert set(ratios) <= set(dict(model.named_modules()))
    pruner = tp.pruner.MetaPruner(
        model,
        inputs,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=0.0,
        pruning_ratio_dict=interop.torch_pruning_ratio_dict(model, view),
        ignored_layers=classifier_layers(model),
    )
    pruner.step()
    with torch.no_grad():
        assert model(inputs).shape == (1, SPEC.num_classes)
    # Every layer the policy keeps has the replayed width: torch-pruning honours each group's
    # count (layers of dropped blocks stay in its model; they are not in autoprune's).
    theirs, ours = _weight_shapes(model), _weight_shapes(case.pruned)
    kept = {n: s for n, s in theirs.items() if n in ours}
    assert kept == ours
    assert set(theirs) - set(ours) == {
        n for n in theirs for block in case.policy.depth.drop_blocks if n.startswith(block + ".")
    }


@pytest.mark.parametrize("name", list(RAW_POLICIES))
def test_channels_view_is_the_replayed_models_layer_shapes(
    applied: dict[str, Applied], tmp_path: Path, name: str
) -> None:
    case = applied[name]
    text = _view(case.policy, tmp_path, "channels").read_text()
    entries = [entry.split(":") for entry in text.split(interop.TIMM_SEPARATOR)]
    assert all(key.endswith(".weight") for key, _ in entries)
    listed = {key.removesuffix(".weight"): json.loads(shape) for key, shape in entries}
    assert listed == _weight_shapes(case.pruned)


def test_timm_adapts_the_block_dropped_base_to_the_replayed_model(
    applied: dict[str, Applied], tmp_path: Path
) -> None:
    prune_mod = pytest.importorskip("timm.models._prune", reason="the timm extra is not installed")
    case = applied["blocks-dropped"]
    text = _view(case.policy, tmp_path, "channels").read_text()
    inputs = SPEC.example_inputs()
    base = drop_blocks(SPEC.build(), case.policy.depth.drop_blocks, inputs)
    adapted = prune_mod.adapt_model_from_string(base, text)
    assert _weight_shapes(adapted) == _weight_shapes(case.pruned)
    with torch.no_grad():
        assert adapted(inputs).shape == (1, SPEC.num_classes)


def test_exported_ratios_round_to_exactly_the_removed_channels() -> None:
    for channels in range(1, 300):
        for removed in range(channels):
            nni_ratio = interop.nni_sparse_ratio(removed, channels)
            tp_ratio = interop.torch_pruning_ratio(removed, channels)
            assert int(channels * nni_ratio) == removed  # NNI's count
            assert channels - int(channels * (1 - tp_ratio)) == removed  # MetaPruner's count
            assert abs(nni_ratio - removed / channels) < 1e-12
            assert abs(tp_ratio - removed / channels) < 1e-12


def test_views_refuse_what_they_cannot_state(tmp_path: Path) -> None:
    # A class threshold without a MACs target: how many channels go depends on data.
    thresholded = Policy.from_dict(
        {
            "model": SPEC.to_dict(),
            "groups": {"layer1.0.conv1": {"rate": 0.5, "criterion": "class_aware"}},
            "class_aware": {"min_classes": 2},
        }
    )
    path = tmp_path / "trial-0007.yaml"
    thresholded.save(path)
    with pytest.raises(UserError, match=r"trial-0007\.yaml.*class_aware.*target_macs_ratio"):
        interop.write_views([path], "nni")
    with pytest.raises(UserError, match="no such group"):
        interop.nni_config_list(
            Policy.from_dict({"model": SPEC.to_dict(), "groups": {"layer9.conv1": 0.5}})
        )
    with pytest.raises(UserError, match=r"'layer4\.0\.conv1'.*another model"):
        interop.torch_pruning_ratio_dict(SPEC.build(), {"layer4.0.conv1": 0.5})


def test_cli_export_writes_each_view_next_to_the_yaml(
    applied: dict[str, Applied], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="t", storage=url, directions=DIRECTIONS)
    # Values are made up: export reads them only to find the front (both points are on it).
    for accuracy, case in ((0.95, "residual-and-steps"), (0.9, "blocks-dropped")):
        policy = applied[case].policy
        study.add_trial(
            optuna.trial.create_trial(
                values=[accuracy, policy.target_macs_ratio],
                user_attrs={"policy": policy.to_dict(), "params_ratio": 0.5},
            )
        )
    study.add_trial(  # a dominated baseline: exported as a baseline, not on the front
        optuna.trial.create_trial(
            values=[0.5, 0.6],
            user_attrs={
                "policy": applied["residual-and-steps"].policy.to_dict(),
                BASELINE_ATTR: "uniform-l1",
            },
        )
    )
    out = tmp_path / "policies"
    out.mkdir()
    stale = out / "trial-0042.nni.json"  # left by an earlier export; its point left the front
    stale.write_text("[]")
    stems = ["trial-0000", "trial-0001", "baseline-uniform-l1"]
    for fmt in ("nni", "torch-pruning", "channels"):
        args = ["export", "t", "--storage", url, "--out", str(out), "--format", fmt]
        assert main(args) == 0
        printed = capsys.readouterr().out
        for stem in stems:
            assert (out / f"{stem}.yaml").is_file()  # the source of truth is still written
            view = out / f"{stem}{interop.SUFFIXES[fmt]}"
            assert view.is_file() and view.stat().st_size > 0
            assert str(view) in printed
        assert f"3 policies, 3 {fmt} views" in printed
    assert not stale.exists()
    assert (out / "front.yaml").is_file()

    with pytest.raises(SystemExit) as exc:
        main(["export", "t", "--storage", url, "--format", "onnx"])
    assert exc.value.code == 2
    assert "invalid choice: 'onnx'" in capsys.readouterr().err


def test_cli_format_choices_are_the_views_interop_knows() -> None:
    parser = build_parser()
    assert parser.parse_args(["export", "t"]).format == "yaml"
    for fmt in interop.FORMATS:
        assert parser.parse_args(["export", "t", "--format", fmt]).format == fmt
    assert set(interop.FORMATS) - {"yaml"} == set(interop.SUFFIXES)
