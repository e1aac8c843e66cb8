"""Seeds and subsets: what makes two runs of a benchmark score the same examples alike."""

from __future__ import annotations

import random
import zlib
from typing import Any

import numpy as np
import torch

from robench.dataset import Data


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (torch's on every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cell_seed(seed: int, *parts: Any) -> int:
    """A stable per-cell seed derived from the benchmark seed and the cell's identity."""
    return (seed * 1_000_003 + zlib.crc32("|".join(map(str, parts)).encode())) % 2**31


def eval_indices(n_test: int, n: int | None, seed: int) -> torch.Tensor:
    """Positions in the test split of a seeded random subset of ``n`` examples (all if None)."""
    if n is None or n >= n_test:
        return torch.arange(n_test)
    return torch.randperm(n_test, generator=torch.Generator().manual_seed(seed))[:n]


def eval_subset(test: Data, n: int | None, seed: int) -> Data:
    """A seeded random subset of ``n`` test examples (all of them when ``n`` is None)."""
    if n is None or n >= len(test):
        return test
    idx = eval_indices(len(test), n, seed)
    return Data(test.x[idx], test.y[idx])
