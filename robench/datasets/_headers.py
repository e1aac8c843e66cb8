"""Cheap inspection of image arrays in ``.npz`` files: their headers and small entries, never
their images (numpy only, no torch: what validating a benchmark reads)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from robench.errors import ConfigError


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
