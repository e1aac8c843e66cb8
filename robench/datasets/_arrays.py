"""Helpers shared by the dataset plugins: cheap npz inspection and image-array conversion."""

from __future__ import annotations

import contextlib
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from robench.errors import ConfigError

#: how a missing-data message ends: what the user can change
FIX_HINT = "point --data-root (or ROBENCH_DATA) at a folder holding it, or set download = true"


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


def npz_header(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype of array ``key`` in the npz at ``path`` (None if absent), reading only
    the array's header."""
    with zipfile.ZipFile(path) as zf:
        if f"{key}.npy" not in zf.namelist():
            return None
        with zf.open(f"{key}.npy") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    return tuple(shape), dtype


def check_npz(path: Path) -> tuple[tuple[int, int, int], int]:
    """Check an npz of images ``x`` and labels ``y`` by its array headers (cheap); return the
    per-image (C, H, W) and the number of examples. Raises :class:`ConfigError`."""
    try:
        x, y = npz_header(path, "x"), npz_header(path, "y")
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise ConfigError(f"{path} is not a readable .npz file: {err}") from err
    if x is None or y is None:
        key = "x" if x is None else "y"
        raise ConfigError(f"{path} has no array {key!r} (expected arrays 'x' and 'y')")
    (x_shape, x_dtype), (y_shape, y_dtype) = x, y
    chw = chw_shape(x_shape)
    if chw is None:
        raise ConfigError(f"{path}: x must be N×H×W, N×H×W×C or N×C×H×W, got shape {x_shape}")
    if x_dtype != np.uint8 and not np.issubdtype(x_dtype, np.floating):
        raise ConfigError(f"{path}: x must be uint8 or float in [0, 1], got {x_dtype}")
    if y_shape != x_shape[:1] or not np.issubdtype(y_dtype, np.integer):
        raise ConfigError(
            f"{path}: y must be 1-D integers, one label per image, got {y_dtype} of "
            f"shape {y_shape} for {x_shape[0]} images"
        )
    return chw, x_shape[0]


def npz_entry(path: Path, key: str) -> object | None:
    """A small (e.g. scalar) entry of an npz as a Python value, or None if absent."""
    with np.load(path, allow_pickle=False) as f:
        return f[key].item() if key in f.files else None


def layout(shape: tuple[int, ...]) -> str | None:
    """The layout of an image array: "NHW", "NHWC" (C in 1, 3, 4), "NCHW", or None.

    Where both 4-D readings fit (e.g. N×3×4×4) the channel axis is the smaller of axes 1 and 3,
    NCHW on a tie.
    """
    if len(shape) == 3:
        return "NHW"
    if len(shape) != 4:
        return None
    if shape[3] in (1, 3, 4) and (shape[1] not in (1, 3, 4) or shape[3] < shape[1]):
        return "NHWC"
    return "NCHW"


def chw_shape(shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """Per-image (C, H, W) of an image array of ``shape`` (see :func:`layout`), or None."""
    kind = layout(shape)
    if kind == "NHW":
        return (1, shape[1], shape[2])
    if kind == "NHWC":
        return (shape[3], shape[1], shape[2])
    return (shape[1], shape[2], shape[3]) if kind == "NCHW" else None


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
