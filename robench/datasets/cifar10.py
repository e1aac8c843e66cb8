"""CIFAR-10 through torchvision, or from an offline npz mirror where torchvision's is absent."""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field

from robench.dataset import Data, Dataset, DatasetInfo, Split, unwritable_dir
from robench.datasets._arrays import FIX_HINT, check_npz, load_npz, npz_entry, quiet_download
from robench.errors import ConfigError
from robench.plugin import Params

_FOLDER = "cifar-10-batches-py"
_NOT_EXACT = "(not exact: not comparable to published CIFAR-10 results)"
_TEST_SIZE = 10_000


def _mirror(root: Path) -> dict[str, Path] | None:
    """``{split: file}`` of the npz mirror ``root/npz/cifar10-{train,test}*.npz``, if complete."""
    files = {s: sorted((root / "npz").glob(f"cifar10-{s}*.npz")) for s in ("train", "test")}
    return {s: f[0] for s, f in files.items()} if all(files.values()) else None


def _mirror_note(split: str, path: Path) -> str:
    note = npz_entry(path, "note") or str(path)
    exact = npz_entry(path, "exact")
    return f"{split}: {note}" + ("" if exact else f" {_NOT_EXACT}")


class CIFAR10(Dataset):
    """CIFAR-10 (50,000 train / 10,000 test, 3×32×32) via torchvision or an offline npz mirror."""

    name = "cifar10"

    class Params(Params):
        download: bool = Field(True, description="download the files if they are not under root")

    def _source(self, root: Path) -> dict[str, Path] | None:
        """None to use torchvision (its folder is present, or downloading is allowed), else the
        mirror's files; ConfigError when neither is available."""
        if (root / _FOLDER).is_dir():
            return None
        mirror = _mirror(root)
        if mirror is not None:
            return mirror
        if self.params.download:
            return None
        raise ConfigError(
            f"CIFAR-10 not found: expected {root / _FOLDER} "
            f"(or {root / 'npz'}/cifar10-{{train,test}}*.npz); {FIX_HINT}"
        )

    def check(self, root: Path) -> None:
        root = Path(root).expanduser()
        mirror = self._source(root)
        for path in (mirror or {}).values():
            chw, _ = check_npz(path)
            if chw != (3, 32, 32):
                raise ConfigError(f"{path}: CIFAR-10 images are 3×32×32, found {chw}")
        if mirror is None and not (root / _FOLDER).is_dir():
            problem = unwritable_dir(root)
            if problem is not None:
                raise ConfigError(
                    f"CIFAR-10 is not under {root} and cannot be downloaded there: {problem}; "
                    "point --data-root (or ROBENCH_DATA) at a writable folder"
                )

    def prepare(self, root: Path) -> None:
        """Download CIFAR-10 with torchvision if neither its folder nor the mirror is there."""
        root = Path(root).expanduser()
        if self._source(root) is not None or (root / _FOLDER).is_dir():
            return
        from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10

        with quiet_download(f"CIFAR-10 into {root / _FOLDER}"):
            TorchvisionCIFAR10(str(root), train=True, download=True)

    def info(self, root: Path) -> DatasetInfo:
        root = Path(root).expanduser()
        mirror = self._source(root)
        test_size = _TEST_SIZE
        if mirror is None:
            where = root / _FOLDER
            where_s = str(where) if where.is_dir() else f"download to {where}"
            note = f"CIFAR-10 via torchvision ({where_s}), exact"
        else:
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
