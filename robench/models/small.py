"""Small models for quick experiments: a two-layer CNN and a multilayer perceptron."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from torch import nn

from robench.dataset import DatasetInfo
from robench.errors import ConfigError
from robench.model import Model, input_layers
from robench.plugin import Params

PosInt = Annotated[int, Field(ge=1)]


class SmallCNN(Model):
    """Two-layer CNN for small images (any C×H×W with H, W ≥ 4); trains in seconds on CPU."""

    name = "small-cnn"

    class Params(Params):
        channels: tuple[PosInt, PosInt] = Field(
            (16, 32), description="output channels of the two 3×3 convolutions"
        )
        hidden: PosInt = Field(64, description="width of the hidden fully connected layer")
        normalize: bool = Field(True, description="standardise inputs with the dataset's mean/std")

    def check(self, info: DatasetInfo) -> None:
        _, h, w = info.shape
        if h < 4 or w < 4:
            got = "×".join(map(str, info.shape))
            raise ConfigError(
                f"model {self.name!r} needs images of at least 4×4, but dataset {info.name!r} "
                f"has {got}"
            )

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


class MLP(Model):
    """Multilayer perceptron on flattened pixels (any input shape)."""

    name = "mlp"

    class Params(Params):
        hidden: tuple[PosInt, ...] = Field(
            (128,), description="widths of the hidden layers, each followed by a ReLU"
        )
        normalize: bool = Field(True, description="standardise inputs with the dataset's mean/std")

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
