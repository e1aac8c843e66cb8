"""MNIST handwritten digits: the idx files under ``<root>/MNIST/raw`` (downloaded by torchvision),
or torchvision's legacy cache ``<root>/MNIST/processed/{training,test}.pt``.

Both are read by robench itself, checked before use: the idx files by their headers and sizes,
the legacy cache with ``torch.load(weights_only=True)``, which refuses a file that carries any
object but tensors (a pickle payload is never executed).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from robench.dataset import Data, Dataset, DatasetInfo, Split, unwritable_dir
from robench.datasets._arrays import FIX_HINT, quiet_download
from robench.errors import ConfigError, error_line
from robench.plugin import Params

_RAW = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_PROCESSED = {"train": "training.pt", "test": "test.pt"}  # torchvision's legacy cache
_TEST_SIZE = 10_000
_SIZE = (28, 28)


def _raw_files(root: Path) -> list[Path]:
    return [root / "MNIST" / "raw" / f for pair in _RAW.values() for f in pair]


def _legacy(root: Path) -> bool:
    """torchvision reads its legacy cache first where both files exist; so does robench."""
    return all((root / "MNIST" / "processed" / f).is_file() for f in _PROCESSED.values())


def _present(root: Path) -> bool:
    return _legacy(root) or all(f.is_file() for f in _raw_files(root))


def _not_loadable(path: Path, why: str) -> ConfigError:
    return ConfigError(f"{path} is not a loadable MNIST file: {why}; {_REPLACE}")


_REPLACE = "delete it (and download again) or point --data-root (or ROBENCH_DATA) elsewhere"


def _idx_header(path: Path, ndim: int) -> tuple[int, ...]:
    """The shape in the header of an idx file of unsigned bytes with ``ndim`` dimensions,
    checked against the file's size."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4 + 4 * ndim)
        size = path.stat().st_size
    except OSError as err:
        raise _not_loadable(path, err.strerror or str(err)) from None
    if len(head) < 4 + 4 * ndim or head[:2] != b"\0\0" or head[2] != 0x08 or head[3] != ndim:
        raise _not_loadable(path, f"no idx header of {ndim}-D unsigned bytes")
    shape = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if size != len(head) + int(np.prod(shape)):
        raise _not_loadable(path, f"{size} bytes, but its header says {shape}")
    if ndim == 3 and shape[1:] != _SIZE:
        raise _not_loadable(path, f"images of {shape[1]}×{shape[2]}, not 28×28")
    return shape


def _check_raw(root: Path, split: Split) -> int:
    """Check one split's idx files by their headers; return its number of examples."""
    images, labels = (root / "MNIST" / "raw" / f for f in _RAW[split])
    n = _idx_header(images, 3)[0]
    m = _idx_header(labels, 1)[0]
    if n != m:
        raise _not_loadable(labels, f"{m} labels for the {n} images of {images.name}")
    return n


def _read_raw(root: Path, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    _check_raw(root, split)
    images, labels = (root / "MNIST" / "raw" / f for f in _RAW[split])
    x = np.fromfile(images, dtype=np.uint8, offset=16).reshape(-1, *_SIZE)
    y = np.fromfile(labels, dtype=np.uint8, offset=8)
    if len(y) and y.max() > 9:
        raise _not_loadable(labels, f"label {int(y.max())} is not a digit")
    return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))


def _read_legacy(path: Path, *, mmap: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A legacy cache file: a pair (uint8 N×28×28 images, integer N labels), loaded with
    ``weights_only=True`` (tensors only, never arbitrary objects)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        why = "torch.load(weights_only=True) refused it, as robench unpickles tensors only"
        raise _not_loadable(path, f"{why} ({error_line(err, with_type=False)})") from None
    except Exception as err:  # any failure means the file is unusable
        if mmap and "mmap" in str(err):  # torch's pre-1.6 format cannot be mapped
            return _read_legacy(path)
        raise _not_loadable(path, error_line(err)) from None
    ok = (
        isinstance(obj, tuple | list)
        and len(obj) == 2
        and all(isinstance(t, torch.Tensor) for t in obj)
    )
    if not ok or obj[0].dtype != torch.uint8 or tuple(obj[0].shape[1:]) != _SIZE:
        raise _not_loadable(path, "expected a pair (uint8 N×28×28 images, N labels)")
    x, y = obj
    if y.dim() != 1 or len(y) != len(x) or y.dtype.is_floating_point:
        raise _not_loadable(path, "expected a pair (uint8 N×28×28 images, N labels)")
    return x, y.long()


class MNIST(Dataset):
    """MNIST handwritten digits (60,000 train / 10,000 test, 1×28×28), downloaded by torchvision."""

    name = "mnist"

    class Params(Params):
        download: bool = Field(True, description="download the files if they are not under root")

    def _download_problem(self, root: Path) -> str | None:
        return unwritable_dir(root / "MNIST" / "raw")

    def check(self, root: Path) -> None:
        """Cheap: reads the idx files' headers (or loads the legacy cache's test file)."""
        root = Path(root).expanduser()
        if _legacy(root):
            for f in _PROCESSED.values():
                _read_legacy(root / "MNIST" / "processed" / f, mmap=True)
        elif all(f.is_file() for f in _raw_files(root)):
            for split in _RAW:
                _check_raw(root, split)
        elif not self.params.download:
            raise ConfigError(
                f"MNIST not found: expected {root / 'MNIST' / 'raw'}/*-ubyte; {FIX_HINT}"
            )
        elif (problem := self._download_problem(root)) is not None:
            raise ConfigError(
                f"MNIST is not under {root / 'MNIST'} and cannot be downloaded there: "
                f"{problem}; point --data-root (or ROBENCH_DATA) at a writable folder"
            )

    def prepare(self, root: Path) -> None:
        """Download the idx files with torchvision if they are not under ``root``."""
        root = Path(root).expanduser()
        if _present(root) or not self.params.download:
            return
        from torchvision.datasets import MNIST as TorchvisionMNIST

        with quiet_download(f"MNIST into {root / 'MNIST'}"):
            TorchvisionMNIST(str(root), train=True, download=True)

    def info(self, root: Path) -> DatasetInfo:
        root = Path(root).expanduser()
        where = f"{root / 'MNIST'}" if _present(root) else f"download to {root / 'MNIST'}"
        test_size = _TEST_SIZE
        if _legacy(root):
            test_size = len(_read_legacy(root / "MNIST" / "processed" / "test.pt", mmap=True)[1])
        elif all(f.is_file() for f in _raw_files(root)):
            test_size = _check_raw(root, "test")
        return DatasetInfo(
            name=self.name,
            shape=(1, *_SIZE),
            num_classes=10,
            mean=(0.1307,),
            std=(0.3081,),
            note=f"MNIST, torchvision's files ({where}), exact",
            test_size=test_size,
        )

    def load(self, split: Split, root: Path) -> Data:
        root = Path(root).expanduser()
        self.check(root)
        self.prepare(root)
        if _legacy(root):
            x, y = _read_legacy(root / "MNIST" / "processed" / _PROCESSED[split])
        else:
            x, y = _read_raw(root, split)
        return Data(x.unsqueeze(1).float().div_(255.0), y)
