"""scikit-learn's bundled 8×8 handwritten digits: tiny, offline, for quick starts and tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from robench.dataset import Data, Dataset, Split
from robench.datasets.bases import DigitsBase, digits_split


class Digits(DigitsBase, Dataset):
    """scikit-learn's 8×8 digits (1,797 images, 10 classes; bundled, no download)."""

    params: DigitsBase.Params

    def _arrays(self, split: Split) -> tuple[np.ndarray, np.ndarray]:
        return digits_split(self.params.test_fraction, self.params.split_seed)[split]

    def load(self, split: Split, root: Path) -> Data:
        x, y = self._arrays(split)
        # copies, so that callers may modify the tensors without touching the cache
        return Data(torch.tensor(x), torch.tensor(y))
