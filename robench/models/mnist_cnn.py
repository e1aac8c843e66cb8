"""The CNN of TensorFlow's Neural Structured Learning adversarial-regularisation MNIST tutorial."""

from __future__ import annotations

from torch import nn

from robench.dataset import DatasetInfo
from robench.model import Model, input_layers
from robench.models.bases import MnistCNNBase


class MnistCNN(MnistCNNBase, Model):
    """Three-conv MNIST CNN of the TensorFlow NSL tutorial (93,322 parameters, 1×28×28 inputs)."""

    def build(self, info: DatasetInfo) -> nn.Module:
        # Keras: Conv2D(32, 3, relu) → MaxPool(2) → Conv2D(64, 3, relu) → MaxPool(2)
        #        → Conv2D(64, 3, relu) → Flatten → Dense(64, relu) → Dense(10)
        return nn.Sequential(
            *input_layers(info, self.params.normalize),
            nn.Conv2d(1, 32, 3),  # 28 → 26
            nn.ReLU(),
            nn.MaxPool2d(2),  # → 13
            nn.Conv2d(32, 64, 3),  # → 11
            nn.ReLU(),
            nn.MaxPool2d(2),  # → 5
            nn.Conv2d(64, 64, 3),  # → 3
            nn.ReLU(),
            nn.Flatten(),  # 64·3·3 = 576
            nn.Linear(576, 64),
            nn.ReLU(),
            nn.Linear(64, info.num_classes),
        )
