"""torch-pruning as autoprune loads it: without timm, which it never needs to import.

When it is imported, torch-pruning's op counter (``torch_pruning.utils.op_counter``) tries
``import timm``, only to add MAC hooks for timm's two attention classes to its table. timm imports
torchvision and with it ``torch._dynamo``: measured on 2 cores, ``import autoprune.cli,
autoprune.evaluate`` takes 4.5 s with timm installed and 1.9 s without it, in every process that
counts MACs (the driver, each Ray worker, each CLI call). So the package imports torch-pruning
with ``timm`` hidden unless timm is loaded already, and :func:`count_ops_and_params` adds
torch-pruning's own timm hooks when a model needs them, i.e. once whoever builds a timm model
has imported timm. Counts are torch-pruning's in either order of imports (``tests/test_timm.py``).

Every module of the package imports torch-pruning from here.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


@contextmanager
def _timm_hidden() -> Iterator[None]:
    """``import timm`` raises ImportError inside, unless timm is loaded already."""
    if "timm" in sys.modules:
        yield
        return
    sys.modules["timm"] = None  # type: ignore[assignment]  # the import system's "not found"
    try:
        yield
    finally:
        if sys.modules.get("timm", 0) is None:
            del sys.modules["timm"]


with _timm_hidden():
    import torch_pruning as tp

# timm's attention classes, by the module that defines them, as torch-pruning's op counter
# registers them when it finds timm at its import.
_TIMM_ATTENTION = (
    ("timm.models.vision_transformer", "Attention"),
    ("timm.models.swin_transformer", "WindowAttention"),
)


def _add_timm_hooks() -> None:
    """Give timm's attention classes torch-pruning's hook, once their modules are loaded.

    A model holding one of these classes has had its module imported, so looking in
    ``sys.modules`` finds every class a model can hold, without importing timm.
    """
    counter = tp.utils.op_counter
    hook = getattr(counter, "timm_multihead_attention_counter_hook", None)
    if hook is None:  # a torch-pruning without timm hooks: nothing to add
        return
    for module_name, class_name in _TIMM_ATTENTION:
        cls = getattr(sys.modules.get(module_name), class_name, None)
        if cls is not None:
            counter.MODULES_MAPPING.setdefault(cls, hook)


def count_ops_and_params(
    model: nn.Module, example_inputs: torch.Tensor, layer_wise: bool = False
) -> Any:
    """``torch_pruning.utils.count_ops_and_params``, with timm's hooks when timm is loaded."""
    _add_timm_hooks()
    return tp.utils.count_ops_and_params(model, example_inputs, layer_wise=layer_wise)


__all__ = ["count_ops_and_params", "tp"]
