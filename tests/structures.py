"""Small networks, one per structure that couples channels across layers, for contract tests.

Each factory takes ``(num_classes, in_channels)`` like a registered model, so the CLI reaches
them as ``--model structures:NAME`` with this folder on ``PYTHONPATH``. :data:`STRUCTURES`
lists them. Channel counts are multiples of 8 so every budget stays reachable with
``channel_multiple`` 8.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def conv_bn(
    cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Head(nn.Module):
    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))


# --------------------------------------------------------------------------- concat of branches


class ConcatBranches(nn.Module):
    """Two branches of unequal cost per channel (3x3 and 1x1) concatenated along channels."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = conv_bn(in_channels, 32)
        self.wide = conv_bn(32, 24, kernel=3)
        self.narrow = conv_bn(32, 40, kernel=1)
        self.merge = conv_bn(64, 48, stride=2)
        self.head = Head(48, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(self.merge(torch.cat([self.wide(x), self.narrow(x)], 1)))


# --------------------------------------------------------------------------- squeeze-excite


class ConvGate(nn.Module):
    """Squeeze-excite made of 1x1 convolutions: mean, conv, ReLU, conv, sigmoid, multiply."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.expand = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(torch.relu(self.reduce(s))))


class LinearGate(nn.Module):
    """Squeeze-excite made of linear layers."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.reduce = nn.Linear(channels, hidden)
        self.expand = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.expand(torch.relu(self.reduce(x.mean((2, 3))))))
        return x * s[:, :, None, None]


class SeparableGated(nn.Module):
    """Depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU, then a squeeze-excite gate."""

    def __init__(self, cin: int, cout: int, stride: int, gate: type[nn.Module]) -> None:
        super().__init__()
        self.depthwise = conv_bn(cin, cin, stride=stride, groups=cin)
        self.pointwise = conv_bn(cin, cout, kernel=1)
        self.gate = gate(cout, max(cout // 4, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.pointwise(self.depthwise(x)))


class SeparableSEConcat(nn.Module):
    """The issue-18 network: two gated separable branches concatenated, one more block, a head.

    A 3x3 stem; two parallel depthwise-separable blocks with 1x1-conv squeeze-excite gates
    from its output; their outputs concatenated; one more such block; pooling and a linear head.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = conv_bn(in_channels, 32)
        self.left = SeparableGated(32, 48, 2, ConvGate)
        self.right = SeparableGated(32, 64, 2, ConvGate)
        self.merged = SeparableGated(112, 96, 2, ConvGate)
        self.head = Head(96, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(self.merged(torch.cat([self.left(x), self.right(x)], 1)))


class LinearSEResidual(nn.Module):
    """Blocks gated by linear-layer squeeze-excite, added to their input."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = conv_bn(in_channels, 32)
        self.block1 = nn.Sequential(conv_bn(32, 32), LinearGate(32, 8))
        self.down = conv_bn(32, 64, stride=2)
        self.block2 = nn.Sequential(conv_bn(64, 64), LinearGate(64, 16))
        self.head = Head(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.block1(x)
        x = self.down(x)
        return self.head(x + self.block2(x))


# --------------------------------------------------------------------------- grouped convolutions


class DepthwiseGrouped(nn.Module):
    """A depthwise convolution, a grouped one (4 groups) and a pointwise one."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = conv_bn(in_channels, 32)
        self.depthwise = conv_bn(32, 32, groups=32)
        self.grouped = conv_bn(32, 64, stride=2, groups=4)
        self.pointwise = conv_bn(64, 64, kernel=1)
        self.head = Head(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pointwise(self.grouped(self.depthwise(self.stem(x)))))


# --------------------------------------------------------------------------- residual adds


class ResidualAdds(nn.Module):
    """Identity shortcuts on a shared stream, then a downsampling block with a 1x1 projection."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = conv_bn(in_channels, 32)
        self.block1 = nn.Sequential(conv_bn(32, 24), nn.Conv2d(24, 32, 3, 1, 1, bias=False))
        self.block2 = nn.Sequential(conv_bn(32, 40), nn.Conv2d(40, 32, 3, 1, 1, bias=False))
        self.down = nn.Sequential(conv_bn(32, 64, stride=2), nn.Conv2d(64, 64, 3, 1, 1))
        self.project = nn.Conv2d(32, 64, 1, 2)
        self.head = Head(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block1(x))
        x = torch.relu(x + self.block2(x))
        return self.head(torch.relu(self.project(x) + self.down(x)))


# --------------------------------------------------------------------------- split and concat


class SplitUnit(nn.Module):
    """A ShuffleNet-V2 unit without the shuffle: half the channels pass, half are transformed."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = conv_bn(in_channels, 64)
        self.branch = nn.Sequential(
            conv_bn(32, 32, kernel=1), conv_bn(32, 32, groups=32), conv_bn(32, 32, kernel=1)
        )
        self.merge = conv_bn(64, 64, stride=2)
        self.head = Head(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        passed, transformed = x.chunk(2, dim=1)
        return self.head(self.merge(torch.cat([passed, self.branch(transformed)], 1)))


STRUCTURES: dict[str, Callable[..., nn.Module]] = {
    "concat_branches": ConcatBranches,
    "separable_se_concat": SeparableSEConcat,
    "linear_se_residual": LinearSEResidual,
    "depthwise_grouped": DepthwiseGrouped,
    "residual_adds": ResidualAdds,
    "split_unit": SplitUnit,
}


def concat_branches(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return ConcatBranches(num_classes, in_channels)


def separable_se_concat(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return SeparableSEConcat(num_classes, in_channels)
