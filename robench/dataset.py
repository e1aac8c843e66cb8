"""The dataset contract: train and test splits as float images in [0, 1] plus labels, held in
memory (:class:`Data`) or read from disk as they are used (:class:`~robench.streamed.StreamedData`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias

import torch

from robench.bases import DatasetBase, DatasetInfo, unwritable_dir
from robench.streamed import StreamedData

__all__ = ["Data", "Dataset", "DatasetInfo", "Split", "SplitData", "unwritable_dir"]

Split = Literal["train", "test"]


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


class Dataset(DatasetBase):
    """Base class of dataset plugins. Subclasses implement :meth:`info` and :meth:`load`.

    :meth:`info` and :meth:`check` (the data's presence, before anything trains) come from
    :class:`robench.bases.DatasetBase`.
    """

    @abstractmethod
    def load(self, split: Split, root: Path) -> SplitData:
        """Load one split. ``root`` is the data root (``--data-root`` / ``ROBENCH_DATA``).

        Return a :class:`Data` (in memory) or, for data that need not or cannot be held in
        memory, a :class:`~robench.streamed.StreamedData` (read from disk as it is used)."""

    def prepare(self, root: Path) -> None:
        """Fetch what :meth:`load` needs (e.g. download the files) under ``root``; raise
        :class:`~robench.errors.ConfigError` if that fails. Called by ``robench run`` after
        :meth:`check`, before loading. The default does nothing."""
