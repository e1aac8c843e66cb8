"""Helpers shared by the dataset plugins: downloads and image-array conversion (the cheap npz
inspection is in :mod:`robench.datasets._headers`)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from robench.datasets._headers import layout
from robench.errors import ConfigError


@contextlib.contextmanager
def quiet_download(what: str) -> Iterator[None]:
    """Around a torchvision download: its progress and retry messages are not printed, and any
    failure (no network, a mirror gone, a checksum that does not match, a full disk) becomes a
    one-line :class:`ConfigError` saying "could not download ``what``: <reason>"."""
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(
            f"could not download {what}: {_download_reason(err)}; point --data-root "
            "(or ROBENCH_DATA) at a folder holding it, or download it there yourself"
        ) from err


def _download_reason(err: Exception) -> str:
    """One line from a download error: torchvision's 'Error downloading f:' and the last
    mirror's reason below it."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    if len(lines) == 1:
        return lines[0]
    return f"{lines[0].rstrip(':')}: {lines[-1]}"


def to_nchw(x: np.ndarray, source: str) -> torch.Tensor:
    """Convert an image array to float32 N×C×H×W in [0, 1]; uint8 values are divided by 255."""
    kind = layout(x.shape)
    if kind is None:
        raise ConfigError(
            f"{source}: x must be N×H×W, N×H×W×C or N×C×H×W, got shape {tuple(x.shape)}"
        )
    if kind == "NHW":
        x = x[:, None]
    elif kind == "NHWC":
        x = x.transpose(0, 3, 1, 2)
    if x.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0)
    if not np.issubdtype(x.dtype, np.floating):
        raise ConfigError(f"{source}: x must be uint8 or float in [0, 1], got dtype {x.dtype}")
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if not (lo >= 0.0 and hi <= 1.0):  # also rejects NaN
        raise ConfigError(f"{source}: float x must lie in [0, 1], found values in [{lo}, {hi}]")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def to_labels(y: np.ndarray, n: int, source: str) -> torch.Tensor:
    """Check that ``y`` is a 1-D array of ``n`` non-negative integers; return it as int64."""
    if y.ndim != 1 or len(y) != n or not np.issubdtype(y.dtype, np.integer):
        raise ConfigError(
            f"{source}: y must be a 1-D integer array of {n} labels (one per image), "
            f"got {y.dtype} of shape {tuple(y.shape)}"
        )
    if n and y.min() < 0:
        raise ConfigError(f"{source}: labels must be non-negative, found {int(y.min())}")
    return torch.from_numpy(y.astype(np.int64))


def load_npz(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read ``x`` and ``y`` from an npz as (float32 N×C×H×W in [0, 1], int64 N)."""
    with np.load(path, allow_pickle=False) as f:
        x, y = f["x"], f["y"]
    images = to_nchw(x, str(path))
    return images, to_labels(y, len(images), str(path))
