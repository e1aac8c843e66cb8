"""PreAct ResNet-18, the standard architecture of CIFAR-10 adversarial-training papers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robench.dataset import DatasetInfo
from robench.model import Model, input_layers
from robench.models.bases import PreActResNet18Base


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN → ReLU → conv → BN → ReLU → conv, plus the shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            # a Sequential, so parameter names match published checkpoints ("shortcut.0.weight")
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """PreAct ResNet (He et al. 2016) as in Wong et al. (2020) and Madry-style CIFAR code."""

    def __init__(self, num_blocks: tuple[int, ...], num_classes: int, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        in_planes = 64
        for i, blocks in enumerate(num_blocks):  # layer1 … layer4: 64, 128, 256, 512 channels
            planes = 64 * 2**i
            strides = [1 if i == 0 else 2] + [1] * (blocks - 1)
            stage = []
            for stride in strides:
                stage.append(PreActBlock(in_planes, planes, stride))
                in_planes = planes
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.num_stages = len(num_blocks)
        self.bn = nn.BatchNorm2d(in_planes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        for i in range(self.num_stages):
            out = getattr(self, f"layer{i + 1}")(out)
        out = F.relu(self.bn(out))
        return self.linear(torch.flatten(self.pool(out), 1))


class PreActResNet18(PreActResNet18Base, Model):
    """PreAct ResNet-18 (11.2M parameters) for 3-channel images of at least 16×16, e.g. CIFAR-10."""

    def build(self, info: DatasetInfo) -> nn.Module:
        net = PreActResNet((2, 2, 2, 2), info.num_classes, in_channels=info.shape[0])
        return nn.Sequential(*input_layers(info, self.params.normalize), net)
