"""Small models for quick experiments: a two-layer CNN and a multilayer perceptron."""

from __future__ import annotations

from torch import nn

from robench.dataset import DatasetInfo
from robench.model import Model, input_layers
from robench.models.bases import MLPBase, SmallCNNBase


class SmallCNN(SmallCNNBase, Model):
    """Two-layer CNN for small images (any C×H×W with H, W ≥ 4); trains in seconds on CPU."""

    params: SmallCNNBase.Params

    def build(self, info: DatasetInfo) -> nn.Module:
        p = self.params
        c, h, w = info.shape
        c1, c2 = p.channels
        flat = c2 * ((h + 1) // 2) * ((w + 1) // 2)  # the stride-2 conv halves H, W (rounding up)
        return nn.Sequential(
            *input_layers(info, p.normalize),
            nn.Conv2d(c, c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(flat, p.hidden),
            nn.ReLU(),
            nn.Linear(p.hidden, info.num_classes),
        )


class MLP(MLPBase, Model):
    """Multilayer perceptron on flattened pixels (any input shape)."""

    params: MLPBase.Params

    def build(self, info: DatasetInfo) -> nn.Module:
        p = self.params
        c, h, w = info.shape
        layers: list[nn.Module] = [*input_layers(info, p.normalize), nn.Flatten()]
        width = c * h * w
        for size in p.hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, info.num_classes))
        return nn.Sequential(*layers)
