"""``check_dataset``: the dataset contract (``info``, ``check`` and two splits of float images
in the bounds with int64 labels, in memory or streamed)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import torch

from robench.dataset import Data, Dataset, DatasetInfo
from robench.errors import ConfigError
from robench.streamed import StreamedData
from robench.testing._common import check_params, check_registration, fail, raised

#: examples of a streamed split that are loaded and checked (in memory: all of them)
STREAMED_EXAMPLES = 64
#: examples whose per-channel mean and std are compared with ``info``
STATS_EXAMPLES = 2000
#: how far ``info.mean`` may be from the images' mean, as a fraction of the bounds' range, and
#: ``info.std`` from their std, as a factor: loose enough for published statistics on a small
#: piece of the data, tight enough for statistics in other units (0–255) or mixed up
MEAN_TOLERANCE, STD_FACTOR = 0.25, 3.0


def check_dataset(cls: type[Dataset], /, *, root: str | Path | None = None, **params: Any) -> None:
    """Hold the dataset class ``cls`` to robench's dataset contract; raise
    :class:`ContractViolation` (an ``AssertionError``) naming the dataset and what broke.

    ``root`` is the data root robench would pass (``--data-root``): a folder holding the data
    (for a test, a small piece of it); None: a new empty folder. ``params`` go to the
    constructor. Nothing is downloaded (``prepare`` is not called). The checks:

    - robench's registry accepts the class, it has a docstring, its parameters validate;
    - ``check(root)`` passes; on an empty folder it passes or raises a one-line ConfigError;
    - ``info(root)`` is a :class:`DatasetInfo`: a C×H×W shape, at least 2 classes, one mean
      and one positive std per channel, bounds low < high, ``test_size`` None or the test
      split's size; its mean is within a quarter of the bounds' range of the training
      images' mean (the first 2,000), its std within a factor of 3 (models normalise with
      them: this catches statistics in other units or mixed up, not published statistics
      that differ a little from a small piece of the data);
    - ``load("train")`` and ``load("test")`` return a :class:`Data` or a
      :class:`StreamedData` (its first 64 examples are read): float32 N×C×H×W images of
      ``info.shape`` within the bounds, finite, int64 labels in [0, classes), at least one
      example; two loads are equal, and an in-memory split is a fresh copy each time
      (changing one must not change the next).
    """
    subject = check_registration("dataset", cls, Dataset)
    p = check_params(subject, cls, params)
    with tempfile.TemporaryDirectory(prefix="robench-testing-") as empty:
        _check_empty_root(subject, cls, p, Path(empty))
        data_root = Path(empty) if root is None else Path(root)
        ds = cls(p)
        try:
            ds.check(data_root)
        except Exception as exc:
            raise raised(subject, f"in check({str(data_root)!r})", exc) from exc
        try:
            info = ds.info(data_root)
        except Exception as exc:
            raise raised(subject, f"in info({str(data_root)!r})", exc) from exc
        _check_info(subject, info)
        splits = {split: _load(subject, ds, split, data_root, info) for split in ("train", "test")}
        if info.test_size is not None and info.test_size != len(splits["test"][0]):
            raise fail(
                subject,
                f"says test_size = {info.test_size}, but its test split has "
                f"{len(splits['test'][0])} examples",
            )
        _check_stats(subject, info, splits["train"][1])
        _check_copies(subject, ds, data_root, splits["test"])


def _check_empty_root(subject: str, cls: type[Dataset], p: Any, empty: Path) -> None:
    try:
        cls(p).check(empty)
    except ConfigError as exc:
        if "\n" in str(exc) or not str(exc):
            raise fail(
                subject, f"check() on an empty data root raised a multi-line error {exc!r}", exc
            ) from exc
    except Exception as exc:
        raise fail(
            subject,
            f"check() on a data root without its data raised {type(exc).__name__} ({exc}): "
            "raise robench.api.ConfigError with one line naming what is missing",
            exc,
        ) from exc


def _check_info(subject: str, info: Any) -> None:
    if not isinstance(info, DatasetInfo):
        raise fail(subject, f"info() returned {type(info).__name__}, not a DatasetInfo")
    shape = info.shape
    if not (len(shape) == 3 and all(isinstance(n, int) and n > 0 for n in shape)):
        raise fail(subject, f"has info.shape {shape!r}: (channels, height, width) expected")
    if not (isinstance(info.num_classes, int) and info.num_classes >= 2):
        raise fail(subject, f"has info.num_classes {info.num_classes!r}: at least 2 expected")
    c = shape[0]
    if len(info.mean) != c or len(info.std) != c:
        raise fail(subject, f"has {len(info.mean)} means and {len(info.std)} stds for {c} channels")
    if not all(math.isfinite(s) and s > 0 for s in info.std):
        raise fail(subject, f"has info.std {info.std!r}: positive, finite values expected")
    low, high = info.bounds
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise fail(subject, f"has info.bounds {info.bounds!r}: finite (low, high) expected")
    if info.test_size is not None and not (isinstance(info.test_size, int) and info.test_size > 0):
        raise fail(subject, f"has info.test_size {info.test_size!r}: None or a count expected")


def _load(
    subject: str, ds: Dataset, split: str, root: Path, info: DatasetInfo
) -> tuple[Data | StreamedData, Data]:
    """The split as returned, and the examples of it that are checked, in memory."""
    try:
        data = ds.load(split, root)  # type: ignore[arg-type]
    except Exception as exc:
        raise raised(subject, f"in load({split!r})", exc) from exc
    if isinstance(data, StreamedData):
        if not len(data):
            raise fail(subject, f"returned an empty {split} split")
        try:
            checked = data.take(torch.arange(min(len(data), STREAMED_EXAMPLES)))
        except Exception as exc:
            raise raised(subject, f"reading its streamed {split} split", exc) from exc
    elif isinstance(data, Data):
        checked = data
    else:
        raise fail(subject, f"load({split!r}) returned {type(data).__name__}: Data expected")
    x, y, where = checked.x, checked.y, f"{split} split"
    if not len(y):
        raise fail(subject, f"returned an empty {where}")
    if x.dtype != torch.float32 or tuple(x.shape[1:]) != info.shape:
        raise fail(
            subject,
            f"returned {where} images {x.dtype} {tuple(x.shape)}: float32 N×"
            f"{'×'.join(map(str, info.shape))} expected (info.shape)",
        )
    low, high = info.bounds
    if not torch.isfinite(x).all() or x.min() < low or x.max() > high:
        raise fail(
            subject,
            f"returned {where} images in [{x.min().item():g}, {x.max().item():g}], outside "
            f"its bounds [{low:g}, {high:g}] (or not finite)",
        )
    if y.dtype != torch.int64 or y.min() < 0 or y.max() >= info.num_classes:
        raise fail(
            subject,
            f"returned {where} labels {y.dtype} in [{y.min().item()}, {y.max().item()}]: "
            f"int64 in [0, {info.num_classes - 1}] expected",
        )
    return data, checked


def _check_stats(subject: str, info: DatasetInfo, train: Data) -> None:
    x = train.x[:STATS_EXAMPLES].double()
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    span = info.bounds[1] - info.bounds[0]
    for i in range(info.shape[0]):
        if abs(info.mean[i] - mean[i].item()) > MEAN_TOLERANCE * span:
            raise fail(
                subject,
                f"has info.mean[{i}] = {info.mean[i]:g}, but its training images' mean is "
                f"{mean[i].item():.4g}: models normalise with info.mean and info.std",
            )
        ratio = info.std[i] / max(std[i].item(), 1e-12)
        if not 1 / STD_FACTOR <= ratio <= STD_FACTOR:
            raise fail(
                subject,
                f"has info.std[{i}] = {info.std[i]:g}, but its training images' std is "
                f"{std[i].item():.4g}: models normalise with info.mean and info.std",
            )


def _check_copies(
    subject: str, ds: Dataset, root: Path, first: tuple[Data | StreamedData, Data]
) -> None:
    data, checked = first
    again = _load(subject, ds, "test", root, ds.info(root))[1]
    if not (torch.equal(checked.x, again.x) and torch.equal(checked.y, again.y)):
        raise fail(subject, "returned different test splits from two loads")
    if isinstance(data, Data):
        kept = data.x.clone()
        data.x.zero_()
        try:
            third = _load(subject, ds, "test", root, ds.info(root))[1]
            shared = not torch.equal(third.x, kept)
        finally:
            data.x.copy_(kept)  # a dataset that caches its tensors gets them back intact
        if shared:
            raise fail(
                subject,
                "returned a test split that shares memory with its next load: changing one "
                "changed the other (return copies, as robench's digits do)",
            )


__all__ = ["check_dataset"]
