"""MNIST handwritten digits through torchvision (the idx files under ``<root>/MNIST``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from robench.dataset import Data, Dataset, DatasetInfo, Split
from robench.datasets._arrays import FIX_HINT
from robench.errors import ConfigError
from robench.plugin import Params

_RAW = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
_RAW += ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_PROCESSED = ("training.pt", "test.pt")  # torchvision's legacy cache


def _present(root: Path) -> bool:
    folder = root / "MNIST"
    return all((folder / "raw" / f).is_file() for f in _RAW) or all(
        (folder / "processed" / f).is_file() for f in _PROCESSED
    )


class MNIST(Dataset):
    """MNIST handwritten digits (60,000 train / 10,000 test, 1×28×28) via torchvision."""

    name = "mnist"

    class Params(Params):
        download: bool = Field(True, description="download the files if they are not under root")

    def check(self, root: Path) -> None:
        root = Path(root).expanduser()
        if not self.params.download and not _present(root):
            raise ConfigError(
                f"MNIST not found: expected {root / 'MNIST' / 'raw'}/*-ubyte; {FIX_HINT}"
            )

    def info(self, root: Path) -> DatasetInfo:
        root = Path(root).expanduser()
        where = f"{root / 'MNIST'}" if _present(root) else f"download to {root / 'MNIST'}"
        return DatasetInfo(
            name=self.name,
            shape=(1, 28, 28),
            num_classes=10,
            mean=(0.1307,),
            std=(0.3081,),
            note=f"MNIST via torchvision ({where}), exact",
        )

    def load(self, split: Split, root: Path) -> Data:
        from torchvision.datasets import MNIST as TorchvisionMNIST

        root = Path(root).expanduser()
        self.check(root)
        try:
            ds = TorchvisionMNIST(str(root), train=split == "train", download=self.params.download)
        except (RuntimeError, OSError) as err:
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ConfigError(f"could not read MNIST under {root}: {msg}; {FIX_HINT}") from err
        return Data(ds.data.unsqueeze(1).float().div_(255.0), ds.targets.long())
