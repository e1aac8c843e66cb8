"""The testing kit's tiny data and model: scikit-learn's bundled 8×8 digits (no download) and a
small CNN with batch norm and dropout trained on them in about a second, on the CPU.

Nothing here touches the caller's random generators: training runs under
:func:`torch.random.fork_rng` with a fixed seed, so a model is the same in every process.
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from robench.dataset import Data, DatasetInfo
from robench.model import Normalize

#: the channel counts :func:`tiny_data` offers: 1 (grey digits) and 3 (an RGB rendering)
CHANNELS = (1, 3)


@functools.cache
def _digits(channels: int) -> tuple[DatasetInfo, Data, Data]:
    from robench.datasets.digits import Digits

    ds = Digits()
    train, test = ds.load("train", None), ds.load("test", None)
    if channels == 3:  # a fixed colouring of each digit: three different, [0, 1]-valued channels
        train, test = (Data(_rgb(d.x), d.y) for d in (train, test))
    x = train.x
    info = DatasetInfo(
        name="digits" if channels == 1 else "digits-rgb",
        shape=(channels, 8, 8),
        num_classes=10,
        mean=tuple(float(m) for m in x.mean(dim=(0, 2, 3))),
        std=tuple(float(s) for s in x.std(dim=(0, 2, 3))),
        note="robench.testing: scikit-learn load_digits, robench's 'digits' split"
        + (", rendered in RGB" if channels == 3 else ""),
        test_size=len(test),
    )
    return info, train, test


def _rgb(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, 1.0 - x, 0.5 * x + 0.25], dim=1)


def tiny_data(channels: int = 1) -> tuple[DatasetInfo, Data, Data]:
    """``(info, train, test)``: the 1,347 training and 450 test digits of robench's ``digits``
    dataset (1×8×8 in [0, 1], 10 classes), or with ``channels=3`` the same digits in RGB.

    The tensors are copies: modify them freely."""
    if channels not in CHANNELS:
        raise ValueError(f"channels must be one of {CHANNELS}, got {channels!r}")
    info, train, test = _digits(channels)
    return info, Data(train.x.clone(), train.y.clone()), Data(test.x.clone(), test.y.clone())


class TinyNet(nn.Module):
    """A small CNN for C×8×8 images in [0, 1]: normalisation, conv, batch norm, ReLU, max pool,
    dropout, linear (about 1,400 parameters)."""

    def __init__(self, info: DatasetInfo) -> None:
        super().__init__()
        c, h, w = info.shape
        self.normalize = Normalize(info.mean, info.std)
        self.features = nn.Sequential(
            nn.Conv2d(c, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.25), nn.Linear(8 * (h // 2) * (w // 2), info.num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.normalize(x)))


@functools.cache
def _trained(channels: int) -> TinyNet:
    info, train, _ = _digits(channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TinyNet(info)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        order = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(6):
            for idx in torch.randperm(len(train), generator=order).split(64):
                opt.zero_grad()
                nn.functional.cross_entropy(model(train.x[idx]), train.y[idx]).backward()
                opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model


def tiny_model(channels: int = 1) -> nn.Module:
    """A fresh copy of :class:`TinyNet` trained on :func:`tiny_data` (``channels`` 1 or 3): about
    95 % test accuracy, in eval mode, on the CPU. Trained once per process (about a second)."""
    if channels not in CHANNELS:
        raise ValueError(f"channels must be one of {CHANNELS}, got {channels!r}")
    return copy.deepcopy(_trained(channels))
