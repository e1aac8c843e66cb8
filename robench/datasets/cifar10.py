"""CIFAR-10 through torchvision, or from an offline npz mirror where torchvision's is absent."""

from __future__ import annotations

from pathlib import Path

import torch

from robench.dataset import Data, Dataset, Split
from robench.datasets._arrays import load_npz, quiet_download
from robench.datasets.bases import CIFAR10_FOLDER, FIX_HINT, CIFAR10Base
from robench.errors import ConfigError


class CIFAR10(CIFAR10Base, Dataset):
    """CIFAR-10 (50,000 train / 10,000 test, 3×32×32) via torchvision or an offline npz mirror."""

    params: CIFAR10Base.Params

    def prepare(self, root: Path) -> None:
        """Download CIFAR-10 with torchvision if neither its folder nor the mirror is there."""
        root = Path(root).expanduser()
        if self._source(root) is not None or (root / CIFAR10_FOLDER).is_dir():
            return
        from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10

        with quiet_download(f"CIFAR-10 into {root / CIFAR10_FOLDER}"):
            TorchvisionCIFAR10(str(root), train=True, download=True)

    def load(self, split: Split, root: Path) -> Data:
        root = Path(root).expanduser()
        mirror = self._source(root)
        if mirror is not None:
            x, y = load_npz(mirror[split])
            return Data(x, y)
        self.prepare(root)
        from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10

        try:  # torchvision checks each file's MD5 before it unpickles it
            ds = TorchvisionCIFAR10(str(root), train=split == "train", download=False)
        except (RuntimeError, OSError) as err:
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ConfigError(f"could not read CIFAR-10 under {root}: {msg}; {FIX_HINT}") from err
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float().div_(255.0)
        return Data(x.contiguous(), torch.tensor(ds.targets, dtype=torch.int64))
