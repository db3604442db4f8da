"""Policies: the YAML a user writes, the service exports and replay reads.

A policy must survive the round trip exactly (an exported policy has to reproduce the metrics
it was measured with), hand-written short forms must get the documented defaults, and every
mistake a user can make must come back as a ``UserError`` that names the field and says what
is allowed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from autoprune import criteria
from autoprune.base import save_base
from autoprune.errors import UserError
from autoprune.evaluate import ObjectiveConfig, prune_policy
from autoprune.groups import discover_groups
from autoprune.modelspec import ModelSpec
from autoprune.policy import (
    SCHEMA,
    BaseRef,
    ClassAware,
    Depth,
    GroupPolicy,
    Policy,
    Retrain,
    Schedule,
)

RESNET20_MNIST = ModelSpec("resnet20", 10, (1, 28, 28))
RESNET20_MNIST_YAML = "{name: resnet20, num_classes: 10, input_shape: [1, 28, 28]}"


def conv(model: nn.Module, name: str) -> nn.Conv2d:
    layer = model.get_submodule(name)
    assert isinstance(layer, nn.Conv2d)
    return layer


# The example of DESIGN.md ("Policy"), every section filled in.
DESIGN_EXAMPLE = """\
schema: autoprune.policy/1
model: {name: resnet56, num_classes: 10, input_shape: [3, 32, 32]}
base: {checkpoint: runs/base/resnet56-cifar10.pt, sha256: 9f2c}
target_macs_ratio: 0.45
groups:
  conv1:          {rate: 0.10, criterion: l1}
  layer1.0.conv1: {rate: 0.42, criterion: energy}
  layer2.0.conv1: {rate: 0.55, criterion: class_aware}
depth: {drop_blocks: [layer3.7, layer3.8]}
class_aware: {min_classes: 3.0}
schedule: {iterative_steps: 2}
retrain: {epochs: 3, lr: 0.02, optimizer: sgd, schedule: cosine, regularizer: none}
seed: 0
measured: {macs_ratio: 0.449, params_ratio: 0.41, val_accuracy: 0.9312}
"""


def full_policy() -> Policy:
    """A policy with no section at its default."""
    return Policy(
        model=ModelSpec("tv:resnet18", 100, (3, 64, 64)),
        groups={
            "conv1": GroupPolicy(rate=0.1 + 0.2, criterion="fpgm"),  # 0.30000000000000004
            "layer1.0.conv1": GroupPolicy(rate=0.0, criterion="l2"),
            "layer2.0.conv1": GroupPolicy(rate=0.999999, criterion="l1", chosen_from=["l1", "cos"]),
        },
        target_macs_ratio=1 / 3,
        base=BaseRef(checkpoint="studies/base/r18 #1: copy.pt", sha256="0123" + "ab" * 30),
        depth=Depth(drop_blocks=["layer1.1", "layer3.1"]),
        class_aware=ClassAware(min_classes=2.5, samples_per_class=4),
        schedule=Schedule(iterative_steps=3, finetune_between_steps=0.25),
        retrain=Retrain(
            epochs=2.5,
            lr=1e-4,
            optimizer="adam",
            schedule="step",
            regularizer="orthogonal",
            regularizer_weight=0.05,
        ),
        seed=123456789,
        measured={"macs_ratio": 0.333, "params_ratio": 0.25, "val_accuracy": 0.9},
    )


# --------------------------------------------------------------------------- round trip


def test_yaml_round_trip_is_lossless_for_every_section(tmp_path: Path) -> None:
    policy = full_policy()
    text = policy.to_yaml()
    assert text.startswith(f"schema: {SCHEMA}\n")
    assert yaml.safe_load(text)["schema"] == "autoprune.policy/1"
    again = Policy.from_yaml(text)
    assert again == policy
    assert again.groups["conv1"].rate == 0.1 + 0.2  # not rounded on the way
    assert again.target_macs_ratio == 1 / 3
    assert again.to_yaml() == text  # dumping is stable
    # Through a file as well (what `export` writes and `replay` reads).
    path = tmp_path / "policies" / "p00.yaml"
    policy.save(path)
    assert Policy.load(path) == policy


def test_design_example_loads_and_round_trips() -> None:
    policy = Policy.from_yaml(DESIGN_EXAMPLE)
    assert policy.model == ModelSpec("resnet56", 10, (3, 32, 32))
    assert policy.groups["layer1.0.conv1"] == GroupPolicy(rate=0.42, criterion="energy")
    assert policy.depth.drop_blocks == ["layer3.7", "layer3.8"]
    assert policy.class_aware.min_classes == 3.0
    assert policy.schedule.iterative_steps == 2
    assert policy.retrain.epochs == 3.0
    assert policy.measured["val_accuracy"] == 0.9312
    assert Policy.from_yaml(policy.to_yaml()) == policy


_NAMES = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=12
)
_CRITERIA = st.sampled_from(["l1", "l2", "fpgm", "cos", "bn_scale", "random", "taylor", "auto"])


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    groups = draw(
        st.dictionaries(
            _NAMES,
            st.builds(
                GroupPolicy,
                rate=st.floats(0.0, 1.0, exclude_max=True),
                criterion=_CRITERIA,
                chosen_from=st.none() | st.lists(_CRITERIA, max_size=4),
            ),
            max_size=6,
        )
    )
    finite = st.floats(allow_nan=False, allow_infinity=False)
    return Policy(
        model=ModelSpec(
            draw(st.sampled_from(["resnet20", "tv:resnet18", "my.pkg:factory"])),
            draw(st.integers(2, 1000)),
            (draw(st.integers(1, 4)), draw(st.integers(8, 256)), draw(st.integers(8, 256))),
        ),
        groups=groups,
        target_macs_ratio=draw(st.none() | st.floats(0.0, 1.0, exclude_min=True)),
        base=BaseRef(
            checkpoint=draw(st.none() | _NAMES),
            sha256=draw(st.none() | st.text("0123456789abcdef", min_size=1, max_size=64)),
        ),
        depth=Depth(drop_blocks=draw(st.lists(_NAMES, max_size=3))),
        class_aware=ClassAware(
            min_classes=draw(st.none() | st.floats(0.0, 2.0)),
            samples_per_class=draw(st.integers(1, 50)),
        ),
        schedule=Schedule(
            iterative_steps=draw(st.integers(1, 10)),
            finetune_between_steps=draw(st.floats(0.0, 5.0)),
        ),
        retrain=Retrain(
            epochs=draw(st.floats(0.0, 100.0)),
            lr=draw(st.floats(1e-8, 1.0)),
            optimizer=draw(st.sampled_from(["sgd", "adam"])),
            schedule=draw(st.sampled_from(["cosine", "step", "constant"])),
            regularizer=draw(st.sampled_from(["none", "orthogonal"])),
            regularizer_weight=draw(finite),
        ),
        seed=draw(st.integers(0, 2**63 - 1)),
        measured=draw(st.dictionaries(_NAMES, finite, max_size=3)),
    )


@settings(max_examples=100, deadline=None)
@given(policy=policies())
def test_yaml_round_trip_property(policy: Policy) -> None:
    text = policy.to_yaml()
    assert Policy.from_yaml(text) == policy
    assert Policy.from_dict(policy.to_dict()) == policy


# --------------------------------------------------------------------------- defaults


def test_short_hand_written_policy_gets_defaults() -> None:
    policy = Policy.from_yaml(
        f"""
        model: {RESNET20_MNIST_YAML}
        groups:
          layer1.0.conv1: 0.25
          layer2.0.conv1: {{rate: 0.5}}
          conv1: {{criterion: fpgm}}
        """
    )
    assert policy.model == RESNET20_MNIST
    assert policy.groups == {
        "layer1.0.conv1": GroupPolicy(rate=0.25, criterion="l1"),
        "layer2.0.conv1": GroupPolicy(rate=0.5, criterion="l1"),
        "conv1": GroupPolicy(rate=0.0, criterion="fpgm"),
    }
    assert policy.target_macs_ratio is None  # rates applied as written
    assert policy.base == BaseRef()
    assert policy.depth.drop_blocks == []
    assert policy.class_aware == ClassAware(min_classes=None, samples_per_class=10)
    assert policy.schedule == Schedule(iterative_steps=1, finetune_between_steps=0.0)
    assert policy.retrain == Retrain(
        epochs=1.0,
        lr=0.02,
        optimizer="sgd",
        schedule="cosine",
        regularizer="none",
        regularizer_weight=0.01,
    )
    assert policy.seed == 0 and policy.measured == {}
    # The defaults are written out, so an exported file documents what was run.
    dumped = yaml.safe_load(policy.to_yaml())
    assert dumped["schema"] == SCHEMA
    assert dumped["retrain"]["epochs"] == 1.0 and dumped["schedule"]["iterative_steps"] == 1


def test_empty_groups_is_a_valid_policy() -> None:
    policy = Policy.from_yaml(f"model: {RESNET20_MNIST_YAML}\ngroups:\n")
    assert policy.groups == {}


# --------------------------------------------------------------------------- structural errors


@pytest.mark.parametrize(
    ("yaml_text", "needles"),
    [
        ("groups: {conv1: {rate: 1.0}}", ["groups.conv1.rate", "[0, 1)"]),
        ("groups: {conv1: {rate: -0.1}}", ["groups.conv1.rate", "[0, 1)"]),
        ("groups: {conv1: 1.5}", ["groups.conv1.rate", "[0, 1)"]),
        ("groups: {conv1: {rate: half}}", ["groups.conv1.rate", "finite number"]),
        ("groups: {conv1: {rate: .nan}}", ["groups.conv1.rate", "finite number"]),
        ("groups: {conv1: {rate: 0.5, method: l1}}", ["groups.conv1", "method", "criterion"]),
        ("groups: {conv1: {rate: 0.5, chosen_from: l1}}", ["groups.conv1.chosen_from", "list"]),
        ("groups: [conv1]", ["'groups'", "rate, criterion"]),
        ("groups: {}\ntarget_macs_ratio: 0", ["target_macs_ratio", "(0, 1]"]),
        ("groups: {}\ntarget_macs_ratio: 1.5", ["target_macs_ratio", "(0, 1]"]),
        ("groups: {}\nschedule: {iterative_steps: 0}", ["schedule.iterative_steps", ">= 1"]),
        ("groups: {}\nschedule: {iterative_steps: 2.5}", ["schedule.iterative_steps", "whole"]),
        ("groups: {}\nschedule: {steps: 2}", ["schedule", "steps", "iterative_steps"]),
        ("groups: {}\nseed: 1.5", ["seed", "whole"]),
        ("groups: {}\nretrain: {epochs: -1}", ["retrain.epochs", ">= 0"]),
        ("groups: {}\nretrain: {optimizer: rmsprop}", ["retrain.optimizer", "sgd, adam"]),
        ("groups: {}\nretrain: {schedule: linear}", ["retrain.schedule", "cosine, step, constant"]),
        ("groups: {}\nretrain: {regularizer: l2}", ["retrain.regularizer", "none, orthogonal"]),
        ("groups: {}\nclass_aware: {min_classes: 11}", ["class_aware.min_classes", "[0, 10]"]),
        ("groups: {}\ndepth: {drop_blocks: layer1.0}", ["depth.drop_blocks", "list"]),
        ("groups: {}\nmeasured: {macs_ratio: low}", ["measured.macs_ratio", "number"]),
        ("groups: {}\nmeasured: 0.5", ["measured", "metric names"]),
        ("groups: {}\nbudget: 0.5", ["budget", "allowed", "target_macs_ratio"]),
        ("groups: {}\nschema: autoprune.policy/2", ["autoprune.policy/2", "autoprune.policy/1"]),
    ],
)
def test_structural_mistakes_name_the_field_and_what_is_allowed(
    yaml_text: str, needles: list[str]
) -> None:
    with pytest.raises(UserError) as info:
        Policy.from_yaml(f"model: {RESNET20_MNIST_YAML}\n{yaml_text}\n", source="p03.yaml")
    message = str(info.value)
    assert message.startswith("p03.yaml")
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("groups: {conv1: 0.5}\n", "'model' is missing"),
        ("model: resnet20\ngroups: {}\n", "field 'model'"),
        (
            "model: {name: resnet20, num_classes: 10, input_shape: [28, 28]}\ngroups: {}\n",
            "[C, H, W]",
        ),
        ("- just\n- a list\n", "must be a mapping"),
        ("", "must be a mapping"),
        ("model: {name: [unclosed\n", "not valid YAML"),
    ],
)
def test_unreadable_policies_are_user_errors(text: str, needle: str) -> None:
    with pytest.raises(UserError, match=r"p03\.yaml") as info:
        Policy.from_yaml(text, source="p03.yaml")
    assert needle in str(info.value)


def test_missing_policy_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nope\.yaml does not exist"):
        Policy.load(tmp_path / "nope.yaml")


# --------------------------------------------------------------------------- validation against a model


@pytest.fixture(scope="module")
def resnet20_groups() -> list[str]:
    return [
        g.name for g in discover_groups(RESNET20_MNIST.build(), RESNET20_MNIST.example_inputs())
    ]


def policy_with(groups: dict[str, GroupPolicy], **kwargs: object) -> Policy:
    return Policy(model=RESNET20_MNIST, groups=groups, **kwargs)  # type: ignore[arg-type]


def test_a_valid_policy_passes_validation(resnet20_groups: list[str]) -> None:
    policy = policy_with(
        {
            name: GroupPolicy(0.5, crit)
            for name, crit in zip(resnet20_groups, criteria.available(), strict=False)
        },
        base=BaseRef(sha256="ab" * 32),
    )
    policy.validate_against(RESNET20_MNIST, resnet20_groups, base_sha256="ab" * 32)


def test_unknown_group_names_the_group_and_the_allowed_ones(resnet20_groups: list[str]) -> None:
    policy = policy_with({"conv1": GroupPolicy(0.2), "layer4.0.conv1": GroupPolicy(0.3)})
    with pytest.raises(UserError) as info:
        policy.validate_against(RESNET20_MNIST, resnet20_groups)
    message = str(info.value)
    assert "groups" in message and "layer4.0.conv1" in message
    assert "allowed groups: " + ", ".join(resnet20_groups) in message
    assert "autoprune inspect --model resnet20" in message
    # Before block removal the group list is unknown: only the other checks run.
    policy.validate_against(RESNET20_MNIST, None)


def test_unknown_criterion_names_the_field_and_the_registry(resnet20_groups: list[str]) -> None:
    policy = policy_with({"conv1": GroupPolicy(0.2, "l3")})
    policy.validate_against(RESNET20_MNIST, resnet20_groups)  # the data class knows no registry
    with pytest.raises(UserError) as info:
        criteria.check_policy(policy)  # where the policy meets the registry
    message = str(info.value)
    assert "groups.conv1.criterion 'l3' is unknown" in message
    allowed = message.split("allowed: ")[1].split(", ")
    assert set(allowed) == set(criteria.available()) | {"auto"}
    assert {"l1", "l2", "fpgm", "cos", "bn_scale", "random", "taylor"} <= set(allowed)


@pytest.mark.parametrize(
    "other",
    [
        ModelSpec("resnet56", 10, (1, 28, 28)),  # another architecture
        ModelSpec("resnet20", 100, (1, 28, 28)),  # another head
        ModelSpec("resnet20", 10, (3, 32, 32)),  # another input
    ],
)
def test_policy_for_another_model_is_rejected(other: ModelSpec) -> None:
    policy = policy_with({"conv1": GroupPolicy(0.2)})
    with pytest.raises(UserError) as info:
        policy.validate_against(other)
    message = str(info.value)
    assert "policy model" in message and "another model" in message
    assert str(RESNET20_MNIST.to_dict()) in message  # what the policy says
    assert str(other.to_dict()) in message  # what would be allowed


def test_base_sha256_mismatch_is_detected_only_when_both_are_known() -> None:
    policy = policy_with({"conv1": GroupPolicy(0.2)}, base=BaseRef(sha256="a" * 64))
    with pytest.raises(
        UserError, match=r"base\.sha256 aaaaaaaaaaaa\.\.\. does not match .* bbbbbbbbbbbb"
    ):
        policy.validate_against(RESNET20_MNIST, base_sha256="b" * 64)
    policy.validate_against(RESNET20_MNIST, base_sha256="a" * 64)
    policy.validate_against(RESNET20_MNIST, base_sha256=None)  # nothing to compare with
    policy_with({"conv1": GroupPolicy(0.2)}).validate_against(RESNET20_MNIST, base_sha256="b" * 64)


# --------------------------------------------------------------------------- through the objective


@pytest.fixture(scope="module")
def random_base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An untrained ResNet-20/MNIST base checkpoint: enough to check what is validated."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("base") / "resnet20-random.pt"
    sha = save_base(
        path, RESNET20_MNIST.build(), RESNET20_MNIST, {"name": "mnist5k", "seed": 0}, {}
    )
    return path, sha


@pytest.mark.parametrize(
    ("policy_yaml", "needle"),
    [
        (
            "model: {name: resnet56, num_classes: 10, input_shape: [1, 28, 28]}\ngroups: {conv1: 0.5}",
            "another model",
        ),
        (
            f"model: {RESNET20_MNIST_YAML}\ngroups: {{conv1: {{rate: 0.5, criterion: l7}}}}",
            "'l7' is unknown",
        ),
        (
            f"model: {RESNET20_MNIST_YAML}\nbase: {{sha256: {'c' * 64}}}\ngroups: {{conv1: 0.5}}",
            "base.sha256",
        ),
        (f"model: {RESNET20_MNIST_YAML}\ngroups: {{layer9.conv1: 0.5}}", "layer9.conv1"),
        (
            f"model: {RESNET20_MNIST_YAML}\ntarget_macs_ratio: 0.5\ngroups: {{layer9.conv1: 0.5}}",
            "layer9.conv1",
        ),
    ],
)
def test_objective_refuses_policies_that_do_not_fit_the_base(
    random_base: tuple[Path, str], policy_yaml: str, needle: str
) -> None:
    path, _ = random_base
    policy = Policy.from_yaml(policy_yaml)
    config = ObjectiveConfig(base_checkpoint=str(path), dataset="mnist5k")
    with pytest.raises(UserError, match=r"allowed|another model|does not match") as info:
        prune_policy(config, policy)
    assert needle in str(info.value)


def test_objective_records_the_base_it_pruned(random_base: tuple[Path, str]) -> None:
    path, sha = random_base
    policy = Policy.from_yaml(
        f"model: {RESNET20_MNIST_YAML}\nbase: {{sha256: {sha}}}\ngroups: {{layer1.0.conv1: 0.5}}"
    )
    pruned = prune_policy(ObjectiveConfig(base_checkpoint=str(path), dataset="mnist5k"), policy)
    assert pruned.policy.base == BaseRef(checkpoint=str(path), sha256=sha)
    assert conv(pruned.model, "layer1.0.conv1").out_channels == 8


# --------------------------------------------------------------------------- loss-aware section


def test_loss_aware_section_round_trips_and_steers_auto() -> None:
    from autoprune import prune
    from autoprune.criteria.calibration import Calibration
    from autoprune.criteria.context import ScoringInputs
    from autoprune.data import TensorSplit

    spec = ModelSpec("resnet20", 10, (1, 28, 28))
    raw = {
        "schema": "autoprune.policy/1",
        "model": spec.to_dict(),
        "groups": {"layer2.0.conv1": {"rate": 0.5, "criterion": "auto"}},
        "loss_aware": {"pool": ["l2", "energy"], "images": 16},
    }
    policy = Policy.from_dict(raw)
    assert policy.loss_aware.pool == ["l2", "energy"] and policy.loss_aware.images == 16
    assert Policy.from_dict(yaml.safe_load(policy.to_yaml())) == policy
    torch.manual_seed(0)
    model = spec.build()
    calibration = Calibration(
        TensorSplit(torch.randn(32, 1, 28, 28), torch.arange(32) % 10), "rand", num_images=32
    )
    result = prune.apply(model, policy, ScoringInputs(calibration=calibration, num_classes=10))
    chosen = result.policy.groups["layer2.0.conv1"]
    assert chosen.criterion in ("l2", "energy") and chosen.chosen_from == ["l2", "energy"]


@pytest.mark.parametrize(
    ("section", "needle"),
    [
        ({"pool": []}, "non-empty list"),
        ({"pool": "l1"}, "must be a list"),
        ({"images": 0}, "integer >= 1"),
        ({"size": 3}, "size"),
    ],
)
def test_bad_loss_aware_section_is_a_user_error(section: dict, needle: str) -> None:
    raw = {
        "model": ModelSpec("resnet20", 10, (1, 28, 28)).to_dict(),
        "groups": {},
        "loss_aware": section,
    }
    with pytest.raises(UserError, match="loss_aware") as info:
        Policy.from_dict(raw, source="p.yaml")
    assert needle in str(info.value)


def test_a_selection_rule_in_the_pool_is_rejected_against_the_model() -> None:
    spec = ModelSpec("resnet20", 10, (1, 28, 28))
    policy = Policy.from_dict(
        {
            "model": spec.to_dict(),
            "groups": {"conv1": {"rate": 0.3, "criterion": "auto"}},
            "loss_aware": {"pool": ["auto", "l1"]},
        }
    )
    policy.validate_against(spec)
    with pytest.raises(UserError, match="not scoring criteria"):
        criteria.check_policy(policy)
