"""The built-in datasets: shapes, value ranges, splits, provenance notes and error messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from robench.bases import DatasetInfo
from robench.datasets.bases import DIGITS, DIGITS_STATS, DigitsBase, digits_split
from robench.datasets.cifar10 import CIFAR10
from robench.datasets.digits import Digits
from robench.datasets.mnist import MNIST
from robench.datasets.npz import Npz
from robench.errors import ConfigError


def one_line(err: pytest.ExceptionInfo[ConfigError]) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


# --- digits -------------------------------------------------------------------------------


def test_digits_shapes_range_and_info():
    ds = Digits()
    info = ds.info(None)
    train, test = ds.load("train", None), ds.load("test", None)
    assert (len(train), len(test)) == (1347, 450)
    assert info.shape == (1, 8, 8) and info.num_classes == 10 and info.test_size == 450
    assert "load_digits" in info.note
    for d in (train, test):
        assert d.x.dtype == torch.float32 and d.y.dtype == torch.int64
        assert d.x.shape[1:] == (1, 8, 8)
        assert d.x.min() >= 0 and d.x.max() == 1
    assert info.mean[0] == pytest.approx(train.x.mean().item(), abs=1e-4)
    assert info.std[0] == pytest.approx(train.x.std().item(), abs=1e-3)


@pytest.mark.parametrize(("test_fraction", "split_seed"), sorted(DIGITS_STATS))
def test_digits_known_info_is_what_the_data_gives(test_fraction, split_seed):
    # validate describes these splits without scikit-learn: the same description, exactly, as
    # measuring the split gives (the statistics normalise every model's inputs)
    split = digits_split(test_fraction, split_seed)
    x, y_test = split["train"][0], split["test"][1]
    measured = DatasetInfo(
        name="digits",
        shape=tuple(x.shape[1:]),
        num_classes=len(np.unique(np.concatenate([split["train"][1], y_test]))),
        mean=(float(x.mean()),),
        std=(float(x.std()),),
        note="scikit-learn load_digits (UCI optdigits test set), exact; "
        f"stratified split test_fraction={test_fraction}, seed={split_seed}",
        test_size=len(y_test),
    )
    assert len(x) + len(y_test) == DIGITS
    assert DigitsBase(test_fraction=test_fraction, split_seed=split_seed).info(None) == measured
    assert Digits(test_fraction=test_fraction, split_seed=split_seed).info(None) == measured
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0  # the bounds DatasetInfo gives


def test_digits_other_splits_are_measured():
    info = Digits(test_fraction=0.1, split_seed=3).info(None)
    split = digits_split(0.1, 3)
    assert info.test_size == len(split["test"][1]) == 180
    assert info.mean == (float(split["train"][0].mean()),)


def test_digits_split_is_deterministic_stratified_and_seeded():
    a, b = Digits().load("test", None), Digits().load("test", None)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    other = Digits(split_seed=1).load("test", None)
    assert not torch.equal(a.y, other.y)
    counts = torch.bincount(a.y, minlength=10)
    assert counts.min() >= 43 and counts.max() <= 47  # ~45 of each of the 10 classes
    small = Digits(test_fraction=0.1)
    assert len(small.load("test", None)) == 180
    with pytest.raises(ValueError):
        Digits(test_fraction=1.0)


def test_digits_load_returns_copies():
    a = Digits().load("train", None)
    a.x.zero_()
    assert Digits().load("train", None).x.max() == 1


# --- mnist --------------------------------------------------------------------------------


def test_mnist_real_data(data_root: Path):
    ds = MNIST(download=False)
    ds.check(data_root)
    info = ds.info(data_root)
    assert info.shape == (1, 28, 28) and info.num_classes == 10
    assert info.mean == (0.1307,) and info.std == (0.3081,) and info.test_size == 10_000
    train, test = ds.load("train", data_root), ds.load("test", data_root)
    assert (len(train), len(test)) == (60_000, 10_000)
    assert test.x.shape == (10_000, 1, 28, 28) and test.x.dtype == torch.float32
    assert test.x.min() == 0 and test.x.max() == 1
    assert test.y.dtype == torch.int64 and test.y[0] == 7
    assert test.x[:1000].mean().item() == pytest.approx(0.13, abs=0.01)


def test_mnist_missing_files_without_download(tmp_path: Path):
    ds = MNIST(download=False)
    with pytest.raises(ConfigError) as err:
        ds.check(tmp_path)
    msg = one_line(err)
    assert str(tmp_path) in msg and "--data-root" in msg and "download" in msg
    with pytest.raises(ConfigError):
        ds.load("test", tmp_path)


def test_mnist_check_passes_when_download_is_allowed(tmp_path: Path):
    MNIST(download=True).check(tmp_path)  # the download happens at run (prepare) or load time
    (tmp_path / "file").touch()
    with pytest.raises(ConfigError, match=r"cannot be downloaded there: .* is a file"):
        MNIST(download=True).check(tmp_path / "file" / "data")


def _idx(path: Path, array: np.ndarray) -> None:
    header = np.array([0x0800 + array.ndim, *array.shape], dtype=">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_reads_the_idx_files_and_torchvisions_legacy_cache_alike(tmp_path: Path):
    rng = np.random.default_rng(0)
    arrays = {
        s: (rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n))
        for s, n in (("train", 6), ("t10k", 3))
    }
    raw, processed = tmp_path / "a" / "MNIST" / "raw", tmp_path / "b" / "MNIST" / "processed"
    raw.mkdir(parents=True)
    processed.mkdir(parents=True)
    for s, (x, y) in arrays.items():
        _idx(raw / f"{s}-images-idx3-ubyte", x)
        _idx(raw / f"{s}-labels-idx1-ubyte", y)
        pair = (torch.tensor(x, dtype=torch.uint8), torch.tensor(y))
        torch.save(pair, processed / ("training.pt" if s == "train" else "test.pt"))
    ds = MNIST(download=False)
    for root in (tmp_path / "a", tmp_path / "b"):
        ds.check(root)
        assert ds.info(root).test_size == 3
        test = ds.load("test", root)
        assert test.x.shape == (3, 1, 28, 28) and test.y.dtype == torch.int64
        assert torch.equal(test.x[:, 0], torch.tensor(arrays["t10k"][0]).float() / 255)
        assert torch.equal(test.y, torch.tensor(arrays["t10k"][1]))


def test_a_failed_download_is_one_quiet_line(tmp_path: Path, monkeypatch, capfd):
    import urllib.error

    def fail(url, *args, **kwargs):
        print(f"Downloading {url}")
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr("torchvision.datasets.mnist.download_and_extract_archive", fail)
    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", fail)
    for ds, folder in ((MNIST(), "MNIST"), (CIFAR10(), "cifar-10-batches-py")):
        with pytest.raises(ConfigError) as err:
            ds.load("test", tmp_path / "data")
        msg = one_line(err)
        assert f"could not download {ds.name.upper().replace('CIFAR10', 'CIFAR-10')}" in msg
        assert str(tmp_path / "data" / folder) in msg and "no network in tests" in msg
    assert capfd.readouterr().out == ""  # torchvision's messages are not printed


# --- cifar10 ------------------------------------------------------------------------------


def test_cifar10_from_the_npz_mirror(data_root: Path):
    if not (data_root / "npz" / "cifar10-test-jpeg75.npz").is_file():
        pytest.skip("no CIFAR-10 mirror in the data root")
    ds = CIFAR10(download=False)
    ds.check(data_root)
    info = ds.info(data_root)
    assert info.shape == (3, 32, 32) and info.num_classes == 10 and info.test_size == 10_000
    assert "not exact" in info.note and "not comparable" in info.note
    test = ds.load("test", data_root)
    assert test.x.shape == (10_000, 3, 32, 32) and test.x.dtype == torch.float32
    assert test.x.min() >= 0 and test.x.max() <= 1
    assert torch.equal(torch.bincount(test.y), torch.full((10,), 1000))


def test_cifar10_missing_everything_without_download(tmp_path: Path):
    with pytest.raises(ConfigError) as err:
        CIFAR10(download=False).check(tmp_path)
    msg = one_line(err)
    assert str(tmp_path / "cifar-10-batches-py") in msg and "ROBENCH_DATA" in msg


def test_cifar10_mirror_note_for_exact_files(tmp_path: Path):
    (tmp_path / "npz").mkdir()
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    for split in ("train", "test"):
        np.savez(tmp_path / "npz" / f"cifar10-{split}-x.npz", x=x, y=np.arange(4), exact=True)
    ds = CIFAR10(download=False)
    assert "not exact" not in ds.info(tmp_path).note
    data = ds.load("train", tmp_path)
    assert torch.equal(data.x[0, :, 1, 2], torch.from_numpy(x[0, 1, 2]).float() / 255)


# --- npz ----------------------------------------------------------------------------------


def _save(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("layout", ["nhwc-uint8", "nhw-float", "nchw-float"])
def test_npz_round_trip(tmp_path: Path, layout: str):
    rng = np.random.default_rng(0)
    images = rng.random((10, 3, 6, 5), dtype=np.float32)  # the expected N×C×H×W
    if layout == "nhwc-uint8":
        images = np.round(images * 255).astype(np.uint8) / np.float32(255)
        stored = np.round(images * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    elif layout == "nhw-float":
        images = images[:, :1]
        stored = images[:, 0]
    else:
        stored = images
    y = np.arange(10) % 4
    train = _save(tmp_path / "train.npz", x=stored, y=y, note=np.array("my data v1"))
    test = _save(tmp_path / "test.npz", x=stored[:4], y=y[:4].astype(np.int32))
    ds = Npz(train=train, test=test)
    ds.check(tmp_path)
    data = ds.load("train", tmp_path)
    assert data.x.dtype == torch.float32 and data.y.dtype == torch.int64
    assert torch.allclose(data.x, torch.from_numpy(images), atol=1e-6)
    assert torch.equal(data.y, torch.from_numpy(y))
    assert len(ds.load("test", tmp_path)) == 4
    info = ds.info(tmp_path)
    assert info.shape == images.shape[1:] and info.num_classes == 4 and info.test_size == 4
    assert info.mean == pytest.approx(images.mean(axis=(0, 2, 3)).tolist(), abs=1e-5)
    assert "my data v1" in info.note and str(test) in info.note


def test_npz_explicit_classes_and_stats(tmp_path: Path):
    x = np.zeros((3, 4, 4), dtype=np.uint8)
    path = _save(tmp_path / "d.npz", x=x, y=np.array([0, 1, 1]))
    info = Npz(train=path, test=path, num_classes=5, mean=(0.5,), std=(0.25,)).info(tmp_path)
    assert (info.num_classes, info.mean, info.std) == (5, (0.5,), (0.25,))
    with pytest.raises(ConfigError) as err:
        Npz(train=path, test=path, mean=(0.1, 0.2, 0.3)).info(tmp_path)
    assert "channels" in one_line(err)


def test_npz_relative_paths_resolve_against_the_benchmark_folder(tmp_path: Path):
    _save(tmp_path / "a.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.array([0, 1]))
    raw = {"train": "a.npz", "test": "a.npz"}
    params = Npz.Params.model_validate(raw, context={"base_dir": tmp_path})
    assert params.train == tmp_path / "a.npz"
    Npz(params).check(Path("unused"))
    assert Npz.Params.model_validate(raw).train == Path("a.npz")  # no context: left as given
    absolute = Npz.Params.model_validate(
        {"train": str(tmp_path / "a.npz"), "test": "a.npz"}, context={"base_dir": Path("/else")}
    )
    assert absolute.train == tmp_path / "a.npz" and absolute.test == Path("/else/a.npz")


def test_npz_missing_file(tmp_path: Path):
    good = _save(tmp_path / "good.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.array([0, 1]))
    with pytest.raises(ConfigError) as err:
        Npz(train=good, test=tmp_path / "nope.npz").check(tmp_path)
    assert str(tmp_path / "nope.npz") in one_line(err)


def test_npz_missing_array(tmp_path: Path):
    path = _save(tmp_path / "nolabels.npz", x=np.zeros((2, 4, 4), np.uint8), labels=np.ones(2))
    with pytest.raises(ConfigError) as err:
        Npz(train=path, test=path).check(tmp_path)
    msg = one_line(err)
    assert str(path) in msg and "'y'" in msg


def test_npz_float_values_outside_unit_range(tmp_path: Path):
    path = _save(tmp_path / "raw.npz", x=np.full((2, 4, 4), 255.0), y=np.array([0, 1]))
    ds = Npz(train=path, test=path)
    ds.check(tmp_path)  # only headers are read: the values are checked at load time
    with pytest.raises(ConfigError) as err:
        ds.load("train", tmp_path)
    msg = one_line(err)
    assert str(path) in msg and "[0, 1]" in msg and "255" in msg


def test_npz_bad_shapes(tmp_path: Path):
    x = np.zeros((3, 4, 4), np.uint8)
    wrong_y = _save(tmp_path / "wy.npz", x=x, y=np.array([0, 1]))
    other = _save(tmp_path / "other.npz", x=np.zeros((3, 5, 5), np.uint8), y=np.zeros(3, int))
    good = _save(tmp_path / "good.npz", x=x, y=np.zeros(3, int))
    for train, test, expected in [
        (wrong_y, good, "one label per image"),
        (good, other, "differ in shape"),
    ]:
        with pytest.raises(ConfigError) as err:
            Npz(train=train, test=test).check(tmp_path)
        assert expected in one_line(err)


def test_builtin_datasets_are_registered_with_names_and_descriptions():
    from robench.datasets import robench_register_datasets

    found: list[type] = []
    robench_register_datasets(found.append)
    assert {cls.name for cls in found} == {"digits", "mnist", "cifar10", "npz", "imagefolder"}
    assert all(cls.description() for cls in found)
