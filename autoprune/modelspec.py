"""ModelSpec: what rebuilds a base architecture (name, classes, input shape), as plain data.

Checkpoints and policies store it; importing this module loads no torch (policies are read
without it), and :meth:`ModelSpec.build` reaches the model registry only when called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from autoprune.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model's base architecture (stored in checkpoints/policies)."""

    name: str  # registry name, tv:NAME, timm:NAME or package.module:factory
    num_classes: int
    input_shape: tuple[int, int, int]  # (channels, height, width)

    def build(self) -> nn.Module:
        from autoprune.models import create

        return create(self.name, num_classes=self.num_classes, in_channels=self.input_shape[0])

    def example_inputs(self, batch: int = 1) -> torch.Tensor:
        import torch

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
