"""The small CNN of the PyTorch CIFAR-10 FGSM tutorial."""

from __future__ import annotations

from torch import nn

from robench.dataset import DatasetInfo
from robench.model import Model, input_layers
from robench.models.bases import CifarCNNBase


class CifarCNN(CifarCNNBase, Model):
    """Two-conv CIFAR CNN with dropout from the PyTorch FGSM tutorial (3×32×32 inputs)."""

    def build(self, info: DatasetInfo) -> nn.Module:
        return nn.Sequential(
            *input_layers(info, self.params.normalize),
            nn.Conv2d(3, 32, 3),  # 32 → 30
            nn.ReLU(),
            nn.Conv2d(32, 64, 3),  # → 28
            nn.ReLU(),
            nn.MaxPool2d(2),  # → 14
            nn.Dropout(0.25),
            nn.Flatten(),  # 64·14·14 = 12,544
            nn.Linear(64 * 14 * 14, 128),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(128, info.num_classes),
        )
