"""Images in torchvision's ``ImageFolder`` layout, streamed from disk (e.g. ImageNet).

``FOLDER/train/CLASS/*.jpg`` and ``FOLDER/val/CLASS/*.jpg`` (the split folders' names are
parameters): each class is a sub-folder, its images any format PIL reads. Every image is resized
(shorter side to ``resize``) and center-cropped to ``size`` × ``size``, the evaluation
convention of ImageNet papers (256 then 224), and kept as 8-bit. Nothing is held in memory but
the file list and labels: training reads through a ``DataLoader`` with ``workers`` processes and
evaluation loads its seeded subset by index (:mod:`robench.streamed`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator
from torch.utils.data import Dataset as TorchDataset

from robench.dataset import Dataset, DatasetInfo, Split
from robench.errors import ConfigError
from robench.plugin import Params
from robench.streamed import StreamedData, files_digest

PosFloat = Annotated[float, Field(gt=0)]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def _load_gray(path: str):
    """PIL image in mode L (a module-level function: DataLoader workers pickle it)."""
    from PIL import Image

    with open(path, "rb") as f:
        return Image.open(f).convert("L")


class _Images(TorchDataset):
    """A torchvision ImageFolder whose read errors name the file."""

    def __init__(self, folder) -> None:
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int):
        try:
            return self.folder[i]
        except Exception as exc:
            raise OSError(f"{self.folder.samples[i][0]}: {type(exc).__name__}: {exc}") from None


class ImageFolder(Dataset):
    """Images in class sub-folders (torchvision's ImageFolder layout), streamed from disk."""

    name = "imagefolder"
    example_params = {"folder": "imagenette2-320", "test": "val"}  # noqa: RUF012

    class Params(Params):
        folder: Path = Field(
            description="the folder holding the split folders (relative: inside the data root, "
            "--data-root / ROBENCH_DATA)"
        )
        train: str = Field("train", min_length=1, description="the training split's folder")
        test: str = Field("val", min_length=1, description="the test split's folder")
        size: int = Field(224, ge=1, description="images are center-cropped to size × size")
        resize: int | None = Field(
            None,
            ge=1,
            description="the shorter side is resized to this before the crop (default: "
            "round(size / 0.875), 256 for 224; equal to size: no margin cropped)",
        )
        channels: Literal[1, 3] = Field(3, description="3: RGB; 1: grayscale")
        mean: tuple[float, ...] | None = Field(
            None,
            min_length=1,
            description="per-channel mean for the model's input normalisation (default: "
            "ImageNet's for RGB, 0.5 for grayscale)",
        )
        std: tuple[PosFloat, ...] | None = Field(
            None,
            min_length=1,
            description="per-channel std (default: ImageNet's for RGB, 0.5 for grayscale)",
        )
        workers: int = Field(
            default_factory=_default_workers,
            ge=0,
            description="DataLoader worker processes decoding images (default: min(8, CPUs))",
        )

        @model_validator(mode="after")
        def _stats_match_channels(self) -> ImageFolder.Params:
            for key in ("mean", "std"):
                stats = getattr(self, key)
                if stats is not None and len(stats) != self.channels:
                    raise ValueError(
                        f"{key} has {len(stats)} values, but channels = {self.channels}"
                    )
            if self.resize is not None and self.resize < self.size:
                raise ValueError(
                    f"resize ({self.resize}) must be at least size ({self.size}): the crop is "
                    "taken from the resized image"
                )
            return self

        @property
        def resize_to(self) -> int:
            return self.resize if self.resize is not None else round(self.size / 0.875)

    def _dir(self, root: Path, split: Split) -> Path:
        folder = Path(self.params.folder).expanduser()
        if not folder.is_absolute():
            folder = Path(root).expanduser() / folder
        return folder / (self.params.train if split == "train" else self.params.test)

    def _classes(self, root: Path, split: Split) -> list[str]:
        path = self._dir(root, split)
        if not path.is_dir():
            raise ConfigError(
                f"imagefolder {split} folder not found: {path} (expected FOLDER/{path.name}/"
                "CLASS/IMAGE; a relative folder is taken inside the data root)"
            )
        classes = sorted(e.name for e in os.scandir(path) if e.is_dir())
        if not classes:
            raise ConfigError(f"imagefolder {split} folder {path} has no class sub-folders")
        return classes

    def check(self, root: Path) -> None:
        """Cheap: lists the class folders of both splits (no image is read)."""
        self._checked_classes(root)

    def _checked_classes(self, root: Path) -> list[str]:
        """The class folders, the same in both splits (else ConfigError)."""
        train, test = self._classes(root, "train"), self._classes(root, "test")
        if train != test:
            only = sorted(set(train) ^ set(test))
            raise ConfigError(
                f"imagefolder: the train and test folders hold different classes "
                f"({', '.join(only[:5])}{' …' if len(only) > 5 else ''} in one only): "
                f"{self._dir(root, 'train')} vs {self._dir(root, 'test')}"
            )
        return train

    def _settings(self) -> str:
        p = self.params
        return f"resize {p.resize_to}, center crop {p.size}, {'RGB' if p.channels == 3 else 'L'}"

    def load(self, split: Split, root: Path) -> StreamedData:
        """The split's file list and labels; images are decoded when read."""
        self.check(root)
        return self._split(root, split)

    def _split(self, root: Path, split: Split) -> StreamedData:
        """The split's file list (one walk of its folder), its folders checked already."""
        from torchvision import transforms
        from torchvision.datasets import ImageFolder as TorchvisionImageFolder
        from torchvision.datasets.folder import default_loader

        p, path = self.params, self._dir(root, split)
        transform = transforms.Compose(
            [
                transforms.Resize(p.resize_to),
                transforms.CenterCrop(p.size),
                transforms.PILToTensor(),
            ]
        )
        loader = default_loader if p.channels == 3 else _load_gray
        try:
            source = TorchvisionImageFolder(str(path), transform=transform, loader=loader)
        except (FileNotFoundError, OSError) as exc:
            raise ConfigError(f"imagefolder {split} folder {path}: {exc}") from None
        names = [os.path.relpath(f, path) for f, _ in source.samples]
        digest = files_digest(names, source.targets, self._settings())
        return StreamedData(_Images(source), source.targets, digest=digest, workers=p.workers)

    def info(self, root: Path) -> DatasetInfo:
        """Lists both splits' files (no image is decoded)."""
        p = self.params
        classes = self._checked_classes(root)
        test = self._split(root, "test")
        gray = p.channels == 1
        mean = p.mean or ((0.5,) if gray else IMAGENET_MEAN)
        std = p.std or ((0.5,) if gray else IMAGENET_STD)
        folder = self._dir(root, "train").parent
        return DatasetInfo(
            name=self.name,
            shape=(p.channels, p.size, p.size),
            num_classes=len(classes),
            mean=tuple(mean),
            std=tuple(std),
            note=f"imagefolder {folder} ({len(classes)} classes; {self._settings()})",
            test_size=len(test),
        )
