"""Your own data: train and test splits from two ``.npz`` files holding arrays ``x`` and ``y``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationInfo, field_validator

from robench.dataset import Data, Dataset, DatasetInfo, Split
from robench.datasets._arrays import load_npz
from robench.datasets._headers import check_npz, npz_entry
from robench.errors import ConfigError
from robench.plugin import Params, benchmark_path

PosFloat = Annotated[float, Field(gt=0)]


class Npz(Dataset):
    """Your own images from two .npz files (arrays x: uint8 or [0, 1] floats, y: int labels)."""

    name = "npz"
    example_params = {"train": "my-train.npz", "test": "my-test.npz"}  # noqa: RUF012

    class Params(Params):
        train: Path = Field(description="npz of the training split (relative: to the benchmark)")
        test: Path = Field(description="npz of the test split (relative: to the benchmark)")
        num_classes: int | None = Field(
            None, ge=2, description="number of classes (default: largest label + 1)"
        )
        mean: tuple[float, ...] | None = Field(
            None, min_length=1, description="per-channel mean (default: of the training x)"
        )
        std: tuple[PosFloat, ...] | None = Field(
            None, min_length=1, description="per-channel std (default: of the training x)"
        )

        @field_validator("train", "test", mode="after")
        @classmethod
        def _resolve(cls, path: Path, info: ValidationInfo) -> Path:
            return benchmark_path(path, info)

    def _paths(self) -> dict[str, Path]:
        return {"train": self.params.train, "test": self.params.test}

    def check(self, root: Path) -> None:
        """Cheap: reads only the array headers of both files."""
        shapes = {}
        for split, path in self._paths().items():
            if not path.is_file():
                raise ConfigError(
                    f"npz {split} file not found: {path} (a relative path is taken from the "
                    "benchmark file's folder)"
                )
            shapes[split], _ = check_npz(path)
        if shapes["train"] != shapes["test"]:
            raise ConfigError(
                f"train and test images differ in shape: {shapes['train']} in "
                f"{self.params.train} vs {shapes['test']} in {self.params.test}"
            )

    def load(self, split: Split, root: Path) -> Data:
        self.check(root)
        x, y = load_npz(self._paths()[split])
        n = self.params.num_classes
        if n is not None and len(y) and int(y.max()) >= n:
            raise ConfigError(
                f"{self._paths()[split]}: label {int(y.max())} is out of range for "
                f"num_classes = {n}"
            )
        return Data(x, y)

    def info(self, root: Path) -> DatasetInfo:
        """Loads both splits: their values and labels are checked before anything trains."""
        train, test = self.load("train", root), self.load("test", root)
        c = train.x.shape[1]
        num_classes = self.params.num_classes
        if num_classes is None:
            top = max((int(d.y.max()) for d in (train, test) if len(d)), default=0)
            num_classes = top + 1
        mean, std = self.params.mean, self.params.std
        if mean is None:
            mean = tuple(train.x.mean(dim=(0, 2, 3)).tolist())
        if std is None:
            std = tuple(max(s, 1e-6) for s in train.x.std(dim=(0, 2, 3)).tolist())
        for key, stats in (("mean", mean), ("std", std)):
            if len(stats) != c:
                raise ConfigError(
                    f"{key} has {len(stats)} values, but the images have {c} channels"
                )
        notes = [f"{s}: {npz_entry(p, 'note') or p}" for s, p in self._paths().items()]
        return DatasetInfo(
            name=self.name,
            shape=tuple(train.x.shape[1:]),  # type: ignore[arg-type]
            num_classes=num_classes,
            mean=tuple(mean),
            std=tuple(std),
            note="; ".join(notes),
            test_size=len(test),
        )
