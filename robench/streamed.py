"""Splits read from disk as they are used, for datasets that do not fit in memory.

A dataset plugin's :meth:`~robench.dataset.Dataset.load` returns either a
:class:`~robench.dataset.Data` (the whole split as tensors) or a :class:`StreamedData`: the labels
in memory, the images decoded on demand from any map-style ``torch.utils.data.Dataset`` whose
items are ``(image, label)`` with the image a C×H×W tensor, uint8 (0…255, read as ``x / 255``)
or float in the dataset's bounds. What robench does with one:

- **training** (:func:`robench.training.train_loop`) reads each epoch through a ``DataLoader``
  with ``workers`` worker processes (kept alive between epochs, pinned memory on CUDA), in an
  order drawn from the loop's seeded CPU generator; augmentation runs on the device as for an
  in-memory split. The ``train_examples`` subset and the ``best_checkpoint`` held-out examples
  are drawn by index, as in memory (the held-out ones are then loaded into memory);
- **evaluation** loads only the seeded evaluation subset, by index (:meth:`StreamedData.take`),
  through the same workers: the scorer then works on it as on any in-memory split.

Defenses see a streamed split through ``len(train)`` and :meth:`robench.defense.TrainContext.train`
(every built-in one); a defense that reads ``train.x`` itself works on in-memory splits only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Subset
from torch.utils.data import Dataset as TorchDataset

if TYPE_CHECKING:  # pragma: no cover
    from robench.dataset import Data

#: examples per batch when :meth:`StreamedData.take` loads an evaluation subset
TAKE_BATCH = 256


class _Order:
    """A DataLoader's batch sampler whose order is set before each epoch (the sampler runs in
    the main process, so workers kept alive between epochs read each epoch's new order)."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.order: list[int] = []

    def __iter__(self) -> Iterator[list[int]]:
        for i in range(0, len(self.order), self.batch_size):
            yield self.order[i : i + self.batch_size]

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)


class StreamedData:
    """One split read from disk: ``y`` (int64 N) in memory, the images decoded on demand from
    ``source`` (a map-style torch dataset of ``(image, label)``; see the module docstring).

    ``digest`` identifies the split's content for the trained-model store (a model is reused
    only for the same training data): derive it from what is cheap and decisive, e.g. the file
    names, labels and decoding settings. ``workers`` is the number of DataLoader worker
    processes that decode images (0: in the main process).
    """

    def __init__(
        self,
        source: TorchDataset,
        y: torch.Tensor | Sequence[int],
        *,
        digest: str,
        workers: int = 0,
    ) -> None:
        self.source = source
        self.y = torch.as_tensor(y, dtype=torch.int64)
        if self.y.dim() != 1:
            raise ValueError(f"expected labels of shape N, got {tuple(self.y.shape)}")
        self.digest = digest
        self.workers = workers

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, indices: torch.Tensor | Sequence[int]) -> StreamedData:
        """The examples at ``indices``, still on disk."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        h = hashlib.sha256(self.digest.encode())
        h.update(idx.numpy().tobytes())
        return StreamedData(
            Subset(self.source, idx.tolist()),
            self.y[idx],
            digest=h.hexdigest(),
            workers=self.workers,
        )

    def loader(self, batch_size: int, *, pin_memory: bool = False) -> tuple[DataLoader, _Order]:
        """A DataLoader over this split, and the batch sampler whose ``order`` (a list of
        indices) decides what the next pass over the loader reads."""
        order = _Order(batch_size)
        loader = DataLoader(
            self.source,
            batch_sampler=order,
            num_workers=self.workers,
            pin_memory=pin_memory,
            persistent_workers=self.workers > 0,
            collate_fn=_collate,
        )
        return loader, order

    def take(self, indices: torch.Tensor | Sequence[int] | None = None) -> Data:
        """The examples at ``indices`` (all: None) loaded into memory, as float32 images."""
        from robench.dataset import Data

        idx = torch.arange(len(self)) if indices is None else torch.as_tensor(indices)
        loader, order = self.loader(TAKE_BATCH)
        order.order = idx.tolist()
        xs, ys = [], []
        for xb, yb in batches(loader):
            xs.append(as_float(xb))
            ys.append(yb)
        if not xs:
            raise ValueError("no examples to load")
        x, y = torch.cat(xs), torch.cat(ys)
        if not torch.equal(y, self.y[idx]):
            raise ValueError("the source's labels differ from the split's labels")
        return Data(x, y)


def batches(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The loader's batches; an error reading one (in a worker process, too) as a one-line
    OSError that keeps the original error's last line (e.g. the file that could not be read)."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except Exception as exc:
            lines = [line for line in str(exc).strip().splitlines() if line.strip()]
            if "Original Traceback" in str(exc):  # re-raised from a worker: its last line
                why = lines[-1]
            else:
                why = f"{type(exc).__name__}: {lines[0] if lines else ''}"
            raise OSError(f"reading images: {why}") from None
        yield batch


def as_float(xb: torch.Tensor) -> torch.Tensor:
    """A batch of images as float32: uint8 as ``x / 255``, floats as they are."""
    return xb.float().div_(255) if xb.dtype == torch.uint8 else xb.float()


def _collate(items: list[tuple[Any, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    images = [torch.as_tensor(x) for x, _ in items]
    shapes = {tuple(x.shape) for x in images}
    if len(shapes) != 1:
        raise ValueError(f"images of different shapes in one batch: {sorted(shapes)}")
    return torch.stack(images), torch.as_tensor([int(label) for _, label in items])


def files_digest(names: Sequence[str], labels: Sequence[int], settings: str) -> str:
    """SHA-256 of a split's file names, labels and decoding settings."""
    h = hashlib.sha256(settings.encode())
    for name, label in zip(names, labels, strict=True):
        h.update(f"{name}\0{label}\n".encode())
    return h.hexdigest()
