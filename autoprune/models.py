"""Model registry.

Models are created by a self-explaining name::

    >>> from autoprune import models
    >>> net = models.create("resnet56", num_classes=10)
    >>> "resnet20" in models.available()
    True

Three kinds of names are understood:

* registered CIFAR-style networks (``resnet20/32/56/110``, ``vgg16_bn``, ``mobilenetv2``),
  built here because torchvision has no CIFAR variants;
* ``tv:NAME`` for any torchvision classification model (``tv:resnet18``), built without weights;
* ``package.module:factory`` for a user model: the factory is called with the keyword
  arguments ``num_classes`` and ``in_channels`` it accepts.

All CIFAR networks keep every ReLU a separate module and every residual addition inside the
block's ``forward``, so hooks (criteria, relevance propagation) and torch-pruning's dependency
tracing see a plain graph.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autoprune.errors import UserError


@dataclass(frozen=True)
class ModelInfo:
    """Registry entry: how to build a model and what it is."""

    name: str  # registry key, e.g. "resnet56"
    factory: Callable[..., nn.Module]  # called with num_classes= and in_channels=
    description: str  # one line for `autoprune models`


_REGISTRY: dict[str, ModelInfo] = {}


def register(
    name: str, description: str
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model factory under ``name`` (decorator)."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = ModelInfo(name, factory, description)
        return factory

    return wrap


# --------------------------------------------------------------------------- CIFAR ResNets


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 conv + BN shortcut where the shape changes (option B)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        else:
            self.shortcut = nn.Identity()

    @property
    def has_identity_shortcut(self) -> bool:
        """True when input and output shapes match, so the block may be removed whole."""
        return isinstance(self.shortcut, nn.Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs (He et al. 2016, sec. 4.2): 3 stages of 16/32/64 channels."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise UserError(
                f"CIFAR ResNet depth {depth} is invalid: it must be 6n+2 (20, 32, 56, 110)"
            )
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        planes = 16
        stages = []
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(planes, width, stride if i == 0 else 1))
                planes = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _resnet_factory(depth: int) -> Callable[..., nn.Module]:
    def factory(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return CifarResNet(depth, num_classes=num_classes, in_channels=in_channels)

    factory.__name__ = f"resnet{depth}"
    return factory


for _depth in (20, 32, 56, 110):
    register(f"resnet{_depth}", f"CIFAR ResNet-{_depth} (3 stages of 16/32/64 channels)")(
        _resnet_factory(_depth)
    )


# --------------------------------------------------------------------------- VGG-16-BN (CIFAR)

_VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


class CifarVGG(nn.Module):
    """VGG-16 with batch norm for small inputs: global pooling and one linear classifier."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                assert isinstance(v, int)
                layers += [
                    nn.Conv2d(channels, v, 3, padding=1, bias=False),
                    nn.BatchNorm2d(v),
                    nn.ReLU(),
                ]
                channels = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register("vgg16_bn", "VGG-16 with batch norm, CIFAR variant (global pooling, one linear layer)")
def vgg16_bn(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarVGG(num_classes=num_classes, in_channels=in_channels)


# --------------------------------------------------------------------------- MobileNetV2 (CIFAR)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project; residual when shapes match."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_planes * expansion
        self.use_residual = stride == 1 and in_planes == out_planes
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [
                nn.Conv2d(in_planes, hidden, 1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU6(),
            ]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, out_planes, 1, bias=False),
            nn.BatchNorm2d(out_planes),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


# (expansion, out channels, repeats, first stride); strides of the first two stages are 1 for 32x32
_MBV2_CFG = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) with the stem stride and first strides set for 32x32."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()
        )
        blocks: list[nn.Module] = []
        planes = 32
        for expansion, out_planes, repeats, stride in _MBV2_CFG:
            for i in range(repeats):
                blocks.append(
                    InvertedResidual(planes, out_planes, stride if i == 0 else 1, expansion)
                )
                planes = out_planes
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Conv2d(planes, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6()
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.avgpool(x), 1))


@register("mobilenetv2", "MobileNetV2, CIFAR variant (stride-1 stem for 32x32 inputs)")
def mobilenetv2(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarMobileNetV2(num_classes=num_classes, in_channels=in_channels)


# --------------------------------------------------------------------------- lookup


def available() -> list[str]:
    """Registered model names (torchvision and user models are accepted too, see ``create``)."""
    return sorted(_REGISTRY)


def describe() -> list[tuple[str, str]]:
    """(name, description) rows for the CLI, including the two open-ended name forms."""
    rows = [
        (info.name, info.description) for info in sorted(_REGISTRY.values(), key=lambda i: i.name)
    ]
    rows.append(("tv:NAME", "any torchvision classification model, e.g. tv:resnet18 (no weights)"))
    rows.append(
        ("package.module:factory", "your own model: factory(num_classes=..., in_channels=...)")
    )
    return rows


def create(name: str, num_classes: int | None = None, in_channels: int | None = None) -> nn.Module:
    """Build a model by name.

    Args:
        name: a registered name, ``tv:NAME`` or ``package.module:factory``.
        num_classes: classifier outputs; ``None`` keeps the model's default.
        in_channels: input channels; ``None`` keeps the model's default (3).

    Raises:
        UserError: the name is unknown or the factory cannot be imported or called.
    """
    kwargs = {
        k: v
        for k, v in (("num_classes", num_classes), ("in_channels", in_channels))
        if v is not None
    }
    check_name(name)
    if name in _REGISTRY:
        return _REGISTRY[name].factory(**kwargs)
    if name.startswith("tv:"):
        return _create_torchvision(name[3:], kwargs)
    return _create_user(name, kwargs)


def check_name(name: str) -> None:
    """Raise ``UserError`` unless ``name`` names a model ``create`` can build (builds nothing)."""
    if name in _REGISTRY:
        return
    if name.startswith("tv:"):
        _check_torchvision(name[3:])
    elif ":" in name:
        _user_factory(name)
    else:
        raise UserError(
            f"unknown model '{name}': choose one of {', '.join(available())}, "
            "a torchvision model as 'tv:NAME', or your own as 'package.module:factory'"
        )


def _check_torchvision(arch: str) -> None:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if arch not in names:
        raise UserError(
            f"unknown torchvision model 'tv:{arch}': choose a classification model such as "
            f"{', '.join(n for n in ('resnet18', 'resnet50', 'mobilenet_v2', 'vgg16_bn') if n in names)} "
            "(see torchvision.models.list_models())"
        )


def _user_factory(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserError(f"model '{spec}' is not of the form 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"model '{spec}': cannot import module '{module_name}' ({exc}); "
            "make sure it is installed or on PYTHONPATH"
        ) from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise UserError(f"model '{spec}': module '{module_name}' has no callable named '{attr}'")
    return factory


def _create_torchvision(arch: str, kwargs: dict[str, int]) -> nn.Module:
    import torchvision

    _check_torchvision(arch)
    in_channels = kwargs.pop("in_channels", 3)
    model = torchvision.models.get_model(arch, weights=None, **kwargs)
    if in_channels != 3:
        _replace_first_conv(model, in_channels, arch)
    return model


def _replace_first_conv(model: nn.Module, in_channels: int, arch: str) -> None:
    """Swap the first 3-channel conv of a torchvision model for one with ``in_channels`` inputs."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                setattr(
                    parent,
                    child_name,
                    nn.Conv2d(
                        in_channels,
                        child.out_channels,
                        child.kernel_size,  # type: ignore[arg-type]
                        child.stride,  # type: ignore[arg-type]
                        child.padding,  # type: ignore[arg-type]
                        child.dilation,  # type: ignore[arg-type]
                        child.groups,
                        child.bias is not None,
                    ),
                )
                return
    raise UserError(
        f"tv:{arch} has no 3-channel input convolution to adapt to in_channels={in_channels}"
    )


def _create_user(spec: str, kwargs: dict[str, int]) -> nn.Module:
    factory = _user_factory(spec)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins and C extensions may have no signature
        usable = kwargs
    else:
        params = signature.parameters
        accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        usable = {k: v for k, v in kwargs.items() if accepts_any or k in params}
        try:
            signature.bind(**usable)
        except TypeError as exc:
            raise UserError(
                f"model '{spec}': the factory cannot be called with "
                f"{' and '.join(usable) or 'no arguments'} alone ({exc}); give it "
                "defaults for its other arguments or wrap it in a function that takes "
                "num_classes and in_channels"
            ) from exc
    model = factory(**usable)
    if not isinstance(model, nn.Module):
        raise UserError(
            f"model '{spec}': the factory returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model's base architecture (stored in checkpoints/policies)."""

    name: str  # registry name, tv:NAME or package.module:factory
    num_classes: int
    input_shape: tuple[int, int, int]  # (channels, height, width)

    def build(self) -> nn.Module:
        return create(self.name, num_classes=self.num_classes, in_channels=self.input_shape[0])

    def example_inputs(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, *self.input_shape)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
        }

    @classmethod
    def from_dict(cls, raw: dict) -> ModelSpec:
        try:
            shape = tuple(int(v) for v in raw["input_shape"])
            if len(shape) != 3:
                raise ValueError("input_shape must have 3 entries")
            return cls(
                name=str(raw["name"]), num_classes=int(raw["num_classes"]), input_shape=shape
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(
                f"model spec {raw!r} is invalid ({exc}): it needs name, num_classes and input_shape [C, H, W]"
            ) from exc
