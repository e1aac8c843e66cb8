"""The built-in datasets' names, parameters, checks and descriptions, without torch.

What validating a benchmark reads of a dataset (:mod:`robench.bases`): ``digits``, ``mnist`` and
``cifar10`` extend their class here with their loading (``digits.py``, ...), so
``robench.datasets.mnist.MNIST.Params`` is :class:`MNISTBase.Params`, and ``robench validate``
checks a benchmark's data without importing torch (nor scikit-learn for the digits, whose
description is known without loading them). ``npz`` and ``imagefolder`` describe their data by
reading it, so they have no such class.
"""

from __future__ import annotations

import math
import pickle
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from robench.bases import DatasetBase, DatasetInfo, unwritable_dir
from robench.errors import ConfigError, error_line
from robench.plugin import Params

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

#: how a missing-data message ends: what the user can change
FIX_HINT = "point --data-root (or ROBENCH_DATA) at a folder holding it, or set download = true"

# --- digits ------------------------------------------------------------------------------------

#: scikit-learn's digits: 1,797 images of 1×8×8 in 10 classes
DIGITS = 1797
#: the training split's pixel mean and std by ``(test_fraction, split_seed)``, as
#: :func:`digits_split` gives them (``tests/test_datasets.py`` measures them again): the
#: digits' description without scikit-learn; other splits are measured
DIGITS_STATS: dict[tuple[float, int], tuple[float, float]] = {
    (0.25, 0): (0.3052247166633606, 0.376005619764328),
}


@cache
def digits_split(test_fraction: float, split_seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The stratified train/test split of the 1,797 digits: x float32 N×1×8×8 in [0, 1]."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=split_seed, stratify=y
    )
    return {"train": (x_tr, y_tr), "test": (x_te, y_te)}


class DigitsBase(DatasetBase):
    """The digits' name, parameters and description (:class:`robench.datasets.digits.Digits`)."""

    name = "digits"

    class Params(Params):
        test_fraction: float = Field(
            0.25, gt=0, lt=1, description="fraction of the images held out as the test split"
        )
        split_seed: int = Field(
            0, ge=0, lt=2**32, description="seed of the stratified train/test split"
        )

    def info(self, root: Path) -> DatasetInfo:
        p = self.params
        known = DIGITS_STATS.get((p.test_fraction, p.split_seed))
        if known is not None:  # scikit-learn's split: ⌈test_fraction · N⌉ test images
            (mean, std), test_size = known, math.ceil(p.test_fraction * DIGITS)
        else:
            split = digits_split(p.test_fraction, p.split_seed)
            x, y_test = split["train"][0], split["test"][1]
            mean, std, test_size = float(x.mean()), float(x.std()), len(y_test)
        return DatasetInfo(
            name=self.name,
            shape=(1, 8, 8),
            num_classes=10,
            mean=(mean,),
            std=(std,),
            note="scikit-learn load_digits (UCI optdigits test set), exact; "
            f"stratified split test_fraction={p.test_fraction}, seed={p.split_seed}",
            test_size=test_size,
        )


# --- MNIST -------------------------------------------------------------------------------------

MNIST_RAW = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_PROCESSED = {"train": "training.pt", "test": "test.pt"}  # torchvision's legacy cache
_MNIST_TEST_SIZE = 10_000
MNIST_SIZE = (28, 28)
_REPLACE = "delete it (and download again) or point --data-root (or ROBENCH_DATA) elsewhere"


def mnist_raw_files(root: Path) -> list[Path]:
    return [root / "MNIST" / "raw" / f for pair in MNIST_RAW.values() for f in pair]


def mnist_legacy(root: Path) -> bool:
    """torchvision reads its legacy cache first where both files exist; so does robench."""
    return all((root / "MNIST" / "processed" / f).is_file() for f in MNIST_PROCESSED.values())


def mnist_present(root: Path) -> bool:
    return mnist_legacy(root) or all(f.is_file() for f in mnist_raw_files(root))


def mnist_not_loadable(path: Path, why: str) -> ConfigError:
    return ConfigError(f"{path} is not a loadable MNIST file: {why}; {_REPLACE}")


def _idx_header(path: Path, ndim: int) -> tuple[int, ...]:
    """The shape in the header of an idx file of unsigned bytes with ``ndim`` dimensions,
    checked against the file's size."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4 + 4 * ndim)
        size = path.stat().st_size
    except OSError as err:
        raise mnist_not_loadable(path, err.strerror or str(err)) from None
    if len(head) < 4 + 4 * ndim or head[:2] != b"\0\0" or head[2] != 0x08 or head[3] != ndim:
        raise mnist_not_loadable(path, f"no idx header of {ndim}-D unsigned bytes")
    shape = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if size != len(head) + math.prod(shape):
        raise mnist_not_loadable(path, f"{size} bytes, but its header says {shape}")
    if ndim == 3 and shape[1:] != MNIST_SIZE:
        raise mnist_not_loadable(path, f"images of {shape[1]}×{shape[2]}, not 28×28")
    return shape


def check_mnist_raw(root: Path, split: str) -> int:
    """Check one split's idx files by their headers; return its number of examples."""
    images, labels = (root / "MNIST" / "raw" / f for f in MNIST_RAW[split])
    n = _idx_header(images, 3)[0]
    m = _idx_header(labels, 1)[0]
    if n != m:
        raise mnist_not_loadable(labels, f"{m} labels for the {n} images of {images.name}")
    return n


def read_mnist_legacy(path: Path, *, mmap: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A legacy cache file: a pair (uint8 N×28×28 images, integer N labels), loaded with
    ``weights_only=True`` (tensors only, never arbitrary objects). Imports torch: only a data
    root holding the legacy cache needs it."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        why = "torch.load(weights_only=True) refused it, as robench unpickles tensors only"
        raise mnist_not_loadable(path, f"{why} ({error_line(err, with_type=False)})") from None
    except Exception as err:  # any failure means the file is unusable
        if mmap and "mmap" in str(err):  # torch's pre-1.6 format cannot be mapped
            return read_mnist_legacy(path)
        raise mnist_not_loadable(path, error_line(err)) from None
    ok = (
        isinstance(obj, tuple | list)
        and len(obj) == 2
        and all(isinstance(t, torch.Tensor) for t in obj)
    )
    if not ok or obj[0].dtype != torch.uint8 or tuple(obj[0].shape[1:]) != MNIST_SIZE:
        raise mnist_not_loadable(path, "expected a pair (uint8 N×28×28 images, N labels)")
    x, y = obj
    if y.dim() != 1 or len(y) != len(x) or y.dtype.is_floating_point:
        raise mnist_not_loadable(path, "expected a pair (uint8 N×28×28 images, N labels)")
    return x, y.long()


class MNISTBase(DatasetBase):
    """MNIST's name, parameters, check and description (:class:`robench.datasets.mnist.MNIST`)."""

    name = "mnist"

    class Params(Params):
        download: bool = Field(True, description="download the files if they are not under root")

    def _download_problem(self, root: Path) -> str | None:
        return unwritable_dir(root / "MNIST" / "raw")

    def check(self, root: Path) -> None:
        """Cheap: reads the idx files' headers (or loads the legacy cache's test file)."""
        root = Path(root).expanduser()
        if mnist_legacy(root):
            for f in MNIST_PROCESSED.values():
                read_mnist_legacy(root / "MNIST" / "processed" / f, mmap=True)
        elif all(f.is_file() for f in mnist_raw_files(root)):
            for split in MNIST_RAW:
                check_mnist_raw(root, split)
        elif not self.params.download:
            raise ConfigError(
                f"MNIST not found: expected {root / 'MNIST' / 'raw'}/*-ubyte; {FIX_HINT}"
            )
        elif (problem := self._download_problem(root)) is not None:
            raise ConfigError(
                f"MNIST is not under {root / 'MNIST'} and cannot be downloaded there: "
                f"{problem}; point --data-root (or ROBENCH_DATA) at a writable folder"
            )

    def info(self, root: Path) -> DatasetInfo:
        root = Path(root).expanduser()
        where = f"{root / 'MNIST'}" if mnist_present(root) else f"download to {root / 'MNIST'}"
        test_size = _MNIST_TEST_SIZE
        if mnist_legacy(root):
            test = read_mnist_legacy(root / "MNIST" / "processed" / "test.pt", mmap=True)
            test_size = len(test[1])
        elif all(f.is_file() for f in mnist_raw_files(root)):
            test_size = check_mnist_raw(root, "test")
        return DatasetInfo(
            name=self.name,
            shape=(1, *MNIST_SIZE),
            num_classes=10,
            mean=(0.1307,),
            std=(0.3081,),
            note=f"MNIST, torchvision's files ({where}), exact",
            test_size=test_size,
        )


# --- CIFAR-10 ----------------------------------------------------------------------------------

CIFAR10_FOLDER = "cifar-10-batches-py"
_NOT_EXACT = "(not exact: not comparable to published CIFAR-10 results)"
_CIFAR10_TEST_SIZE = 10_000


def cifar10_mirror(root: Path) -> dict[str, Path] | None:
    """``{split: file}`` of the npz mirror ``root/npz/cifar10-{train,test}*.npz``, if complete."""
    files = {s: sorted((root / "npz").glob(f"cifar10-{s}*.npz")) for s in ("train", "test")}
    return {s: f[0] for s, f in files.items()} if all(files.values()) else None


def _mirror_note(split: str, path: Path) -> str:
    from robench.datasets._headers import npz_entry

    note = npz_entry(path, "note") or str(path)
    exact = npz_entry(path, "exact")
    return f"{split}: {note}" + ("" if exact else f" {_NOT_EXACT}")


class CIFAR10Base(DatasetBase):
    """CIFAR-10's name, parameters, check and description (:class:`robench.datasets.cifar10.
    CIFAR10`). The npz mirror's headers are read with numpy (imported when one is there)."""

    name = "cifar10"

    class Params(Params):
        download: bool = Field(True, description="download the files if they are not under root")

    def _source(self, root: Path) -> dict[str, Path] | None:
        """None to use torchvision (its folder is present, or downloading is allowed), else the
        mirror's files; ConfigError when neither is available."""
        if (root / CIFAR10_FOLDER).is_dir():
            return None
        mirror = cifar10_mirror(root)
        if mirror is not None:
            return mirror
        if self.params.download:
            return None
        raise ConfigError(
            f"CIFAR-10 not found: expected {root / CIFAR10_FOLDER} "
            f"(or {root / 'npz'}/cifar10-{{train,test}}*.npz); {FIX_HINT}"
        )

    def check(self, root: Path) -> None:
        root = Path(root).expanduser()
        mirror = self._source(root)
        if mirror:
            from robench.datasets._headers import check_npz

            for path in mirror.values():
                chw, _ = check_npz(path)
                if chw != (3, 32, 32):
                    raise ConfigError(f"{path}: CIFAR-10 images are 3×32×32, found {chw}")
        if mirror is None and not (root / CIFAR10_FOLDER).is_dir():
            problem = unwritable_dir(root)
            if problem is not None:
                raise ConfigError(
                    f"CIFAR-10 is not under {root} and cannot be downloaded there: {problem}; "
                    "point --data-root (or ROBENCH_DATA) at a writable folder"
                )

    def info(self, root: Path) -> DatasetInfo:
        root = Path(root).expanduser()
        mirror = self._source(root)
        test_size = _CIFAR10_TEST_SIZE
        if mirror is None:
            where = root / CIFAR10_FOLDER
            where_s = str(where) if where.is_dir() else f"download to {where}"
            note = f"CIFAR-10 via torchvision ({where_s}), exact"
        else:
            from robench.datasets._headers import check_npz

            note = "; ".join(_mirror_note(s, p) for s, p in mirror.items())
            _, test_size = check_npz(mirror["test"])
        return DatasetInfo(
            name=self.name,
            shape=(3, 32, 32),
            num_classes=10,
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2471, 0.2435, 0.2616),
            note=note,
            test_size=test_size,
        )


#: the base of each built-in dataset that has one, by name
#: (:meth:`robench.registry.Registry.get_base`)
BASES: dict[str, type[DatasetBase]] = {
    cls.name: cls for cls in (DigitsBase, MNISTBase, CIFAR10Base)
}
