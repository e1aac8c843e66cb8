"""scikit-learn's bundled 8×8 handwritten digits: tiny, offline, for quick starts and tests."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from robench.dataset import Data, Dataset, DatasetInfo, Split
from robench.plugin import Params


@cache
def _split(test_fraction: float, split_seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The stratified train/test split of the 1,797 digits: x float32 N×1×8×8 in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=split_seed, stratify=y
    )
    return {"train": (x_tr, y_tr), "test": (x_te, y_te)}


class Digits(Dataset):
    """scikit-learn's 8×8 digits (1,797 images, 10 classes; bundled, no download)."""

    name = "digits"

    class Params(Params):
        test_fraction: float = Field(
            0.25, gt=0, lt=1, description="fraction of the images held out as the test split"
        )
        split_seed: int = Field(
            0, ge=0, lt=2**32, description="seed of the stratified train/test split"
        )

    def _arrays(self, split: Split) -> tuple[np.ndarray, np.ndarray]:
        return _split(self.params.test_fraction, self.params.split_seed)[split]

    def info(self, root: Path) -> DatasetInfo:
        x, _ = self._arrays("train")
        _, y_test = self._arrays("test")
        return DatasetInfo(
            name=self.name,
            shape=(1, 8, 8),
            num_classes=10,
            mean=(float(x.mean()),),
            std=(float(x.std()),),
            note="scikit-learn load_digits (UCI optdigits test set), exact; "
            f"stratified split test_fraction={self.params.test_fraction}, "
            f"seed={self.params.split_seed}",
            test_size=len(y_test),
        )

    def load(self, split: Split, root: Path) -> Data:
        x, y = self._arrays(split)
        # copies, so that callers may modify the tensors without touching the cache
        return Data(torch.tensor(x), torch.tensor(y))
