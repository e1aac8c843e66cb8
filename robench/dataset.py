"""The dataset contract: train and test splits as float images in [0, 1] plus labels, held in
memory (:class:`Data`) or read from disk as they are used (:class:`~robench.streamed.StreamedData`).
"""

from __future__ import annotations

import os
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, TypeAlias

import torch

from robench.plugin import Plugin
from robench.streamed import StreamedData

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
    #: the number of test examples, where known without loading the split (None: unknown);
    #: a benchmark's explicit ``[evaluation] n_examples`` is checked against it
    test_size: int | None = None


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

    def subset(self, indices: torch.Tensor | Sequence[int]) -> Data:
        """The examples at ``indices``."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return Data(self.x[idx], self.y[idx])

    def take(self, indices: torch.Tensor | Sequence[int] | None = None) -> Data:
        """The examples at ``indices`` (all: None) in memory: :meth:`subset`, as for a
        :class:`~robench.streamed.StreamedData` split."""
        return self if indices is None else self.subset(indices)


#: what :meth:`Dataset.load` returns: a split in memory or streamed from disk
SplitData: TypeAlias = Data | StreamedData


class Dataset(Plugin):
    """Base class of dataset plugins. Subclasses implement :meth:`info` and :meth:`load`."""

    kind: ClassVar[str] = "dataset"

    @abstractmethod
    def info(self, root: Path) -> DatasetInfo:
        """Describe the data (cheaply: without loading every example if possible)."""

    @abstractmethod
    def load(self, split: Split, root: Path) -> SplitData:
        """Load one split. ``root`` is the data root (``--data-root`` / ``ROBENCH_DATA``).

        Return a :class:`Data` (in memory) or, for data that need not or cannot be held in
        memory, a :class:`~robench.streamed.StreamedData` (read from disk as it is used)."""

    def check(self, root: Path) -> None:
        """Raise :class:`~robench.errors.ConfigError` if the data cannot be read from ``root``.

        Called while a benchmark is validated, before anything trains, and without downloading
        anything. The default calls :meth:`info`.
        """
        self.info(root)

    def prepare(self, root: Path) -> None:
        """Fetch what :meth:`load` needs (e.g. download the files) under ``root``; raise
        :class:`~robench.errors.ConfigError` if that fails. Called by ``robench run`` after
        :meth:`check`, before loading. The default does nothing."""


def unwritable_dir(path: Path) -> str | None:
    """Why a folder cannot be made or written at ``path`` (None if it can): ``path`` is a
    writable directory, or the nearest of its ancestors that exists is one (checked without
    creating anything)."""
    path = Path(path).expanduser().absolute()
    probe = path
    while not probe.exists():
        if probe.is_symlink():
            return f"{probe} is a broken symbolic link"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a directory" if probe == path else f"{probe} is a file"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None
