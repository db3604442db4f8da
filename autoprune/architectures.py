"""CIFAR-style networks torchvision does not have: ResNet-20/32/56/110, VGG-16-BN, MobileNetV2.

Every ReLU is a separate module and every residual addition happens inside the block's
``forward``, so hooks (criteria, relevance propagation) and torch-pruning's dependency tracing
see a plain graph. Blocks declare their shortcut (``has_identity_shortcut``, ``use_residual``),
which is how depth pruning finds the blocks it may remove. :mod:`autoprune.models` registers
the factories below by name.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from autoprune.errors import UserError

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


def resnet_factory(depth: int) -> Callable[..., nn.Module]:
    """``factory(num_classes, in_channels)`` building the CIFAR ResNet of ``depth`` layers."""

    def factory(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return CifarResNet(depth, num_classes=num_classes, in_channels=in_channels)

    factory.__name__ = f"resnet{depth}"
    return factory


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


def mobilenetv2(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarMobileNetV2(num_classes=num_classes, in_channels=in_channels)
