"""Model registry: build a network by name (`autoprune.modelspec` names one in files).

Models are created by a self-explaining name::

    >>> from autoprune import models
    >>> net = models.create("resnet56", num_classes=10)
    >>> "resnet20" in models.available()
    True

Four kinds of names are understood:

* registered CIFAR-style networks (``resnet20/32/56/110``, ``vgg16_bn``, ``mobilenetv2``),
  defined in :mod:`autoprune.architectures` because torchvision has no CIFAR variants;
* ``tv:NAME`` for any torchvision classification model (``tv:resnet18``), built without weights;
* ``timm:NAME`` for a timm architecture (``timm:resnet18``, ``timm:mobilenetv3_small_050``),
  built without weights by ``timm.create_model``; timm is the optional extra ``timm``;
* ``package.module:factory`` for a user model: the factory is called with the keyword
  arguments ``num_classes`` and ``in_channels`` it accepts.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from autoprune import architectures
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


# --------------------------------------------------------------------------- registered networks

for _depth in (20, 32, 56, 110):
    register(f"resnet{_depth}", f"CIFAR ResNet-{_depth} (3 stages of 16/32/64 channels)")(
        architectures.resnet_factory(_depth)
    )
register("vgg16_bn", "VGG-16 with batch norm, CIFAR variant (global pooling, one linear layer)")(
    architectures.vgg16_bn
)
register("mobilenetv2", "MobileNetV2, CIFAR variant (stride-1 stem for 32x32 inputs)")(
    architectures.mobilenetv2
)


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
        (
            "timm:NAME",
            "a timm architecture, e.g. timm:resnet18 or timm:mobilenetv3_small_050 "
            f"(no weights; needs the timm extra: {TIMM_INSTALL})",
        )
    )
    rows.append(
        ("package.module:factory", "your own model: factory(num_classes=..., in_channels=...)")
    )
    return rows


def create(name: str, num_classes: int | None = None, in_channels: int | None = None) -> nn.Module:
    """Build a model by name.

    Args:
        name: a registered name, ``tv:NAME``, ``timm:NAME`` or ``package.module:factory``.
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
    if name.startswith(TIMM_PREFIX):
        return _create_timm(name[len(TIMM_PREFIX) :], kwargs)
    return _create_user(name, kwargs)


def check_name(name: str) -> None:
    """Raise ``UserError`` unless ``name`` names a model ``create`` can build (builds nothing)."""
    if name in _REGISTRY:
        return
    if name.startswith("tv:"):
        _check_torchvision(name[3:])
    elif name.startswith(TIMM_PREFIX):
        _check_timm(name[len(TIMM_PREFIX) :])
    elif ":" in name:
        _user_factory(name)
    else:
        raise UserError(
            f"unknown model '{name}': choose one of {', '.join(available())}, "
            "a torchvision model as 'tv:NAME', a timm model as 'timm:NAME', "
            "or your own as 'package.module:factory'"
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


TIMM_PREFIX = "timm:"
TIMM_INSTALL = "pip install 'autoprune[timm]'"


def _import_timm(arch: str) -> Any:
    try:
        import timm
    except ImportError as exc:
        raise UserError(
            f"model 'timm:{arch}' needs the timm package, which is not installed: {TIMM_INSTALL}"
        ) from exc
    return timm


def _check_timm(arch: str) -> None:
    """Accept a bare timm architecture name; pretrained tags and hub names would imply weights."""
    timm = _import_timm(arch)
    names = timm.list_models()
    if arch in names:
        return
    base, dot, tag = arch.partition(".")
    if dot and base in names:
        raise UserError(
            f"model 'timm:{arch}': '.{tag}' names pretrained weights, which autoprune never "
            f"loads (models are trained by `autoprune train`); use 'timm:{base}'"
        )
    if ":" in arch or "/" in arch:
        raise UserError(
            f"model 'timm:{arch}' is not a timm architecture name: hub models would be "
            "downloaded; use a name from timm.list_models(), e.g. 'timm:resnet18'"
        )
    close = _close_timm_names(timm, arch, names) or ["resnet18", "mobilenetv3_small_050"]
    raise UserError(
        f"unknown timm model 'timm:{arch}': choose an architecture of timm.list_models(), "
        f"e.g. {', '.join(f'timm:{n}' for n in close)}"
    )


def _close_timm_names(timm: Any, arch: str, names: list[str]) -> list[str]:
    """Up to five timm names close to ``arch``: same family first, then by spelling."""
    family = arch.rstrip("0123456789_").split("_")[0]
    same_family = timm.list_models(f"*{family}*") if len(family) >= 3 else []
    close = difflib.get_close_matches(arch, same_family, n=5, cutoff=0.5)
    close += [n for n in difflib.get_close_matches(arch, names, n=5) if n not in close]
    return close[:5]


def _create_timm(arch: str, kwargs: dict[str, int]) -> nn.Module:
    _check_timm(arch)
    timm = _import_timm(arch)
    in_channels = kwargs.pop("in_channels", None)
    if in_channels is not None:
        kwargs["in_chans"] = in_channels  # timm's name for the input channels
    model: nn.Module = timm.create_model(arch, pretrained=False, **kwargs)
    return model


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
