"""MNIST handwritten digits: the idx files under ``<root>/MNIST/raw`` (downloaded by torchvision),
or torchvision's legacy cache ``<root>/MNIST/processed/{training,test}.pt``.

Both are read by robench itself, checked before use: the idx files by their headers and sizes,
the legacy cache with ``torch.load(weights_only=True)``, which refuses a file that carries any
object but tensors (a pickle payload is never executed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from robench.dataset import Data, Dataset, Split
from robench.datasets._arrays import quiet_download
from robench.datasets.bases import (
    MNIST_PROCESSED,
    MNIST_RAW,
    MNIST_SIZE,
    MNISTBase,
    check_mnist_raw,
    mnist_legacy,
    mnist_not_loadable,
    mnist_present,
    read_mnist_legacy,
)


def _read_raw(root: Path, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    check_mnist_raw(root, split)
    images, labels = (root / "MNIST" / "raw" / f for f in MNIST_RAW[split])
    x = np.fromfile(images, dtype=np.uint8, offset=16).reshape(-1, *MNIST_SIZE)
    y = np.fromfile(labels, dtype=np.uint8, offset=8)
    if len(y) and y.max() > 9:
        raise mnist_not_loadable(labels, f"label {int(y.max())} is not a digit")
    return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))


class MNIST(MNISTBase, Dataset):
    """MNIST handwritten digits (60,000 train / 10,000 test, 1×28×28), downloaded by torchvision."""

    params: MNISTBase.Params

    def prepare(self, root: Path) -> None:
        """Download the idx files with torchvision if they are not under ``root``."""
        root = Path(root).expanduser()
        if mnist_present(root) or not self.params.download:
            return
        from torchvision.datasets import MNIST as TorchvisionMNIST

        with quiet_download(f"MNIST into {root / 'MNIST'}"):
            TorchvisionMNIST(str(root), train=True, download=True)

    def load(self, split: Split, root: Path) -> Data:
        root = Path(root).expanduser()
        self.check(root)
        self.prepare(root)
        if mnist_legacy(root):
            x, y = read_mnist_legacy(root / "MNIST" / "processed" / MNIST_PROCESSED[split])
        else:
            x, y = _read_raw(root, split)
        return Data(x.unsqueeze(1).float().div_(255.0), y)
