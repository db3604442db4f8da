"""Model registry: every name a user can type builds a network that trains, or a clear UserError.

The three name forms of ``autoprune.models.create`` are covered: registered CIFAR networks,
``tv:NAME`` for torchvision, and ``package.module:factory`` for a user's own model.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from autoprune import models
from autoprune.errors import UserError
from autoprune.groups import build_graph, current_groups
from autoprune.modelspec import ModelSpec

CIFAR_MODELS = {"resnet20", "resnet32", "resnet56", "resnet110", "vgg16_bn", "mobilenetv2"}

# 1 channel: MNIST-sized digits; 3 channels: CIFAR-sized images.
INPUT_SIDE = {1: 28, 3: 32}


def forward_backward(model: nn.Module, in_channels: int, num_classes: int) -> torch.Tensor:
    """One training step's worth of autograd on a batch of 2; returns the logits."""
    torch.manual_seed(0)
    side = INPUT_SIDE[in_channels]
    model.train()
    logits = model(torch.randn(2, in_channels, side, side))
    assert logits.shape == (2, num_classes)
    nn.functional.cross_entropy(logits, torch.tensor([0, num_classes - 1])).backward()
    return logits


def assert_grads_finite(model: nn.Module) -> None:
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert params, "model has no trainable parameters"
    missing = [n for n, p in params if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    bad = [n for n, p in params if not torch.isfinite(p.grad).all()]  # type: ignore[arg-type]
    assert not bad, f"non-finite gradients in {bad[:5]}"


def test_registry_lists_the_six_cifar_networks() -> None:
    assert set(models.available()) == CIFAR_MODELS
    described = dict(models.describe())
    assert set(described) >= CIFAR_MODELS
    assert "tv:NAME" in described and "package.module:factory" in described
    assert all(text.strip() for text in described.values())


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", sorted(CIFAR_MODELS))
def test_registered_model_trains_on_1_and_3_channel_inputs(name: str, in_channels: int) -> None:
    model = models.create(name, num_classes=7, in_channels=in_channels)
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == in_channels
    logits = forward_backward(model, in_channels, num_classes=7)
    assert torch.isfinite(logits).all()
    assert_grads_finite(model)


def test_none_arguments_keep_the_model_defaults() -> None:
    model = models.create("resnet20", num_classes=None, in_channels=None)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize(("name", "expected_groups"), [("resnet20", 12), ("resnet56", 30)])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_torch_pruning_finds_the_expected_groups(
    name: str, expected_groups: int, in_channels: int
) -> None:
    """3 stages x n blocks (one group per block's inner conv) + stem/residual streams = 3n + 3."""
    side = INPUT_SIDE[in_channels]
    model = models.create(name, num_classes=10, in_channels=in_channels).eval()
    groups = current_groups(model, build_graph(model, torch.zeros(1, in_channels, side, side)))
    assert len(groups) == expected_groups
    assert "fc" not in groups, "the classifier's outputs are the classes and must not be pruned"
    assert {"conv1", "layer1.0.conv1", "layer3.0.conv1"} <= set(groups)


# --------------------------------------------------------------------------- torchvision


def test_torchvision_model_by_name_without_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch_home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    model = models.create("tv:resnet18", num_classes=5)
    assert isinstance(model, nn.Module) and type(model).__module__.startswith("torchvision")
    assert model.fc.out_features == 5
    forward_backward(model, 3, num_classes=5)
    assert_grads_finite(model)
    assert not torch_home.exists(), "tv: models must be built without downloading weights"


def test_torchvision_model_adapts_its_first_conv_to_grayscale() -> None:
    model = models.create("tv:resnet18", num_classes=10, in_channels=1)
    assert model.conv1.in_channels == 1
    assert model.conv1.out_channels == 64 and model.conv1.stride == (2, 2)
    forward_backward(model, 1, num_classes=10)
    assert_grads_finite(model)


def test_unknown_torchvision_model_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"tv:nosuchnet.*resnet18"):
        models.create("tv:nosuchnet")


# --------------------------------------------------------------------------- user models

USER_MODULE = """
    import torch
    from torch import nn


    def build(num_classes=10, in_channels=3):
        return nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, num_classes),
        )


    def only_classes(num_classes):
        return build(num_classes=num_classes)


    def any_kwargs(**kwargs):
        return build(**kwargs)


    def needs_width(width, num_classes=10):
        return build(num_classes=num_classes)


    def not_a_model(num_classes=10):
        return "a string"
"""


@pytest.fixture
def user_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A package ``apuser_nets`` with a module ``zoo`` of factories, importable for one test."""
    package = tmp_path / "src" / "apuser_nets"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "zoo.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    yield "apuser_nets.zoo"
    for name in [m for m in sys.modules if m == "apuser_nets" or m.startswith("apuser_nets.")]:
        del sys.modules[name]


@pytest.mark.parametrize("in_channels", [1, 3])
def test_user_factory_receives_classes_and_channels(user_package: str, in_channels: int) -> None:
    model = models.create(f"{user_package}:build", num_classes=4, in_channels=in_channels)
    assert model[0].in_channels == in_channels
    forward_backward(model, in_channels, num_classes=4)
    assert_grads_finite(model)


def test_user_factory_gets_only_the_arguments_it_declares(user_package: str) -> None:
    model = models.create(f"{user_package}:only_classes", num_classes=4, in_channels=3)
    assert model[-1].out_features == 4
    model = models.create(f"{user_package}:any_kwargs", num_classes=6, in_channels=1)
    assert model[0].in_channels == 1 and model[-1].out_features == 6


def test_model_spec_rebuilds_a_user_model(user_package: str) -> None:
    spec = ModelSpec(f"{user_package}:build", num_classes=3, input_shape=(1, 28, 28))
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    model = spec.build()
    assert model(spec.example_inputs(batch=2)).shape == (2, 3)


@pytest.mark.parametrize(
    ("suffix", "needle"),
    [
        ("needs_width", r"cannot be called with num_classes alone.*'width'"),
        ("not_a_model", r"returned str, not a torch.nn.Module"),
        ("nothing_here", r"has no callable named 'nothing_here'"),
    ],
)
def test_broken_user_factory_is_a_user_error(user_package: str, suffix: str, needle: str) -> None:
    with pytest.raises(UserError, match=needle):
        models.create(f"{user_package}:{suffix}", num_classes=10, in_channels=3)


# --------------------------------------------------------------------------- bad names


@pytest.mark.parametrize(
    ("name", "needles"),
    [
        ("resnet21", ["unknown model 'resnet21'", "resnet20", "tv:NAME", "package.module:factory"]),
        ("nosuchpkg.mod:fn", ["cannot import module 'nosuchpkg.mod'", "PYTHONPATH"]),
        ("os:nonexistent", ["module 'os' has no callable named 'nonexistent'"]),
        ("os:sep", ["no callable named 'sep'"]),
        (":fn", ["not of the form 'package.module:factory'"]),
        ("os:", ["not of the form 'package.module:factory'"]),
    ],
)
def test_bad_model_name_is_a_user_error_that_names_it(name: str, needles: list[str]) -> None:
    with pytest.raises(UserError) as info:
        models.create(name, num_classes=10)
    for needle in needles:
        assert needle in str(info.value)


@pytest.mark.parametrize("name", ["resnet21", "tv:resnet19", "os:nonexistent"])
def test_check_name_agrees_with_create_without_building(name: str) -> None:
    with pytest.raises(UserError) as created:
        models.create(name, num_classes=10)
    with pytest.raises(UserError) as checked:
        models.check_name(name)
    assert str(checked.value) == str(created.value)
    for good in ("resnet20", "tv:resnet18", "collections:OrderedDict"):
        models.check_name(good)


def test_training_a_misspelled_model_fails_before_loading_data(tmp_path: Path) -> None:
    from autoprune.base import train_base

    # The dataset folder does not exist either: the model error must come first, and fast.
    with pytest.raises(UserError, match="unknown model 'resnet21'"):
        train_base("resnet21", f"imagefolder:{tmp_path / 'missing'}", 1, tmp_path / "out.pt")


def test_model_spec_round_trips_and_rejects_bad_dicts() -> None:
    spec = ModelSpec("resnet20", num_classes=10, input_shape=(1, 28, 28))
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert spec.example_inputs(batch=3).shape == (3, 1, 28, 28)
    assert spec.build()(spec.example_inputs()).shape == (1, 10)
    with pytest.raises(UserError, match="input_shape"):
        ModelSpec.from_dict({"name": "resnet20", "num_classes": 10, "input_shape": [28, 28]})
    with pytest.raises(UserError, match="num_classes"):
        ModelSpec.from_dict({"name": "resnet20", "input_shape": [1, 28, 28]})
