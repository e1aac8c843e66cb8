"""The model contract: build an ``nn.Module`` mapping [0, 1] images to logits."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import torch
from torch import nn

from robench.bases import DatasetInfo, ModelBase


class Normalize(nn.Module):
    """Per-channel ``(x − mean) / std``: the first layer of every built-in model."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def input_layers(info: DatasetInfo, normalize: bool) -> list[nn.Module]:
    """``[Normalize(info.mean, info.std)]`` when ``normalize`` is set, else no layer."""
    return [Normalize(info.mean, info.std)] if normalize else []


class Model(ModelBase):
    """Base class of model plugins. Subclasses implement :meth:`build`.

    ``input_shapes`` and :meth:`check` (the dataset's inputs against the model, before
    anything trains) come from :class:`robench.bases.ModelBase`.
    """

    @abstractmethod
    def build(self, info: DatasetInfo) -> nn.Module:
        """Return a fresh module for ``info``: [0, 1] images in, logits out.

        Put the input normalisation inside (e.g. with :class:`Normalize`).
        """


def model_device_dtype(model: nn.Module, x: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype of the model's first floating parameter or buffer (for a
    model without one: ``x``'s device, and its dtype if floating, else float32)."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return x.device, x.dtype if x.is_floating_point() else torch.float32
