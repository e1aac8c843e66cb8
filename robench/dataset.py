"""The dataset contract: train and test splits as float images in [0, 1] plus labels."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch

from robench.plugin import Plugin

Split = Literal["train", "test"]


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset."""

    name: str
    #: (channels, height, width)
    shape: tuple[int, int, int]
    num_classes: int
    #: per-channel statistics for the model's input normalisation
    mean: tuple[float, ...]
    std: tuple[float, ...]
    bounds: tuple[float, float] = (0.0, 1.0)
    #: provenance of the data actually read (recorded with every result)
    note: str = ""


@dataclass(frozen=True)
class Data:
    """One split: ``x`` float32 N×C×H×W in ``bounds``, ``y`` int64 N."""

    x: torch.Tensor
    y: torch.Tensor
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.x.dim() != 4 or self.y.dim() != 1 or len(self.x) != len(self.y):
            raise ValueError(
                f"expected x of shape N×C×H×W and y of shape N, got {tuple(self.x.shape)} "
                f"and {tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        return len(self.y)


class Dataset(Plugin):
    """Base class of dataset plugins. Subclasses implement :meth:`info` and :meth:`load`."""

    kind: ClassVar[str] = "dataset"

    @abstractmethod
    def info(self, root: Path) -> DatasetInfo:
        """Describe the data (cheaply: without loading every example if possible)."""

    @abstractmethod
    def load(self, split: Split, root: Path) -> Data:
        """Load one split. ``root`` is the data root (``--data-root`` / ``ROBENCH_DATA``)."""

    def check(self, root: Path) -> None:
        """Raise :class:`~robench.errors.ConfigError` if the data cannot be read from ``root``.

        Called while a benchmark is validated, before anything trains. The default calls
        :meth:`info`.
        """
        self.info(root)
