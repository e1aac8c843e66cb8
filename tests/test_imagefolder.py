"""The streamed `imagefolder` dataset: a small image folder written here, read from disk by the
training loop (DataLoader with workers) and by the evaluation (its subset by index)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import robench
from robench.dataset import Data
from robench.datasets.imagefolder import ImageFolder
from robench.errors import ConfigError
from robench.streamed import StreamedData
from robench.training import TrainingConfig, train_loop

CLASSES = ("cat", "dog", "fish")
COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]])


def write_folder(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """``root/images/{split}/{class}/NNN.png``: 12×10 RGB images, each class its own colour
    plus noise (a small CNN learns them in a few epochs)."""
    rng = np.random.default_rng(seed)
    folder = root / "images"
    for split, n in per_class.items():
        for k, name in enumerate(CLASSES):
            (folder / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = COLOURS[k] + rng.integers(-40, 41, size=(10, 12, 3))
                img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
                img.save(folder / split / name / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("data"), {"train": 24, "val": 10})


def small(folder: Path, **params) -> ImageFolder:
    return ImageFolder(folder=folder, size=8, resize=8, workers=0, **params)


def test_info_and_splits_are_read_lazily_and_cropped(folder):
    ds = small(folder)
    info = ds.info(folder.parent)
    assert info.shape == (3, 8, 8) and info.num_classes == 3 and info.test_size == 30
    assert info.mean == (0.485, 0.456, 0.406) and "center crop 8" in info.note
    train = ds.load("train", folder.parent)
    assert isinstance(train, StreamedData) and len(train) == 72
    assert torch.equal(train.y, torch.arange(3).repeat_interleave(24))
    some = train.take([0, 30, 71])
    assert isinstance(some, Data) and some.x.shape == (3, 3, 8, 8)
    assert some.x.dtype == torch.float32 and some.x.min() >= 0 and some.x.max() <= 1
    assert torch.equal(some.y, torch.tensor([0, 1, 2]))
    # the image's own colour survives resize + crop: red, green, blue channels dominate
    assert [int(x.mean(dim=(1, 2)).argmax()) for x in some.x] == [0, 1, 2]
    # a relative folder is taken inside the data root; grayscale gives one channel
    gray = ImageFolder(folder="images", size=6, channels=1, workers=0)
    assert gray.info(folder.parent).shape == (1, 6, 6)
    assert gray.load("test", folder.parent).take([0]).x.shape == (1, 1, 6, 6)


def test_worker_processes_read_the_same_images(folder):
    one = small(folder).load("train", folder.parent).take(range(0, 72, 5))
    two = ImageFolder(folder=folder, size=8, resize=8, workers=2)
    again = two.load("train", folder.parent).take(range(0, 72, 5))
    assert torch.equal(one.x, again.x) and torch.equal(one.y, again.y)


def test_digest_follows_files_labels_and_settings(folder, tmp_path):
    root = folder.parent
    a = small(folder).load("train", root).digest
    assert a == small(folder).load("train", root).digest
    assert a != ImageFolder(folder=folder, size=8, resize=9, workers=0).load("train", root).digest
    other = write_folder(tmp_path, {"train": 23, "val": 10})
    assert a != small(other).load("train", tmp_path).digest


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_training_equals_in_memory_training(folder, workers):
    """On the CPU the loop draws the same order and augmentation for both kinds of split, and
    a uint8 image reads as the same float: the models end bitwise equal."""
    ds = ImageFolder(folder=folder, size=8, resize=8, workers=workers)
    streamed = ds.load("train", folder.parent)
    in_memory = streamed.take()
    info = ds.info(folder.parent)
    cfg = TrainingConfig(
        epochs=2,
        batch_size=16,
        lr=3e-3,
        augment="crop-flip",
        train_examples=60,
        best_checkpoint={"held_out": 12, "steps": 2, "eps": 0.03},
    )
    weights = []
    for data in (streamed, in_memory):
        torch.manual_seed(0)
        model = _cnn(info)
        train_loop(
            model,
            data,
            cfg,
            lambda m, x, y: torch.nn.functional.cross_entropy(m(x), y),
            device=torch.device("cpu"),
            seed=3,
        )
        weights.append(model.state_dict())
    for k, v in weights[0].items():
        assert torch.equal(v, weights[1][k]), k


def _cnn(info):
    from robench.models.small import SmallCNN

    return SmallCNN(channels=(4, 8), hidden=16).build(info)


def _bench(folder: Path, out: Path, **dataset) -> dict:
    return {
        "name": "folder",
        "seed": 0,
        "output_dir": str(out),
        "dataset": {
            "name": "imagefolder",
            "folder": str(folder),
            "size": 8,
            "resize": 8,
            "workers": 1,
            **dataset,
        },
        "model": {"name": "small-cnn", "channels": [8, 16], "hidden": 32},
        "training": {"epochs": 4, "lr": 3e-3, "batch_size": 16},
        "evaluation": {"n_examples": 24, "batch_size": 10},
        "defenses": [
            {"name": "standard"},
            {"name": "adversarial", "attack": {"name": "pgd", "eps": 0.03, "steps": 3}},
        ],
        "attacks": [{"name": "pgd", "eps": [0.03], "steps": 5}],
    }


def test_a_benchmark_trains_and_scores_on_a_streamed_folder(folder, tmp_path):
    bench = _bench(folder, tmp_path / "out")
    df = robench.run(bench, quiet=True)
    assert set(df["status"]) == {"ok"}
    clean = df[df["attack"] == "clean"].set_index("defense")["accuracy"]
    assert (clean > 0.9).all(), clean  # three colours: every model learns them
    # the evaluation set is the seeded subset, read by index; the model is reused on a rerun
    again = robench.run(bench, quiet=True)
    assert list(again["accuracy"]) == list(df["accuracy"])
    import json

    prov = json.loads((tmp_path / "out" / "results.json").read_text())
    assert prov["cells"]["computed"] == 0 and prov["dataset"]["eval_examples"] == 24
    assert prov["dataset"]["train_examples"] == 72 and "imagefolder" in prov["dataset"]["note"]


def test_bad_folders_are_one_line_errors(folder, tmp_path):
    with pytest.raises(ConfigError, match=r"imagefolder train folder not found: .*nowhere"):
        small(tmp_path / "nowhere").check(tmp_path)
    odd = write_folder(tmp_path / "odd", {"train": 2, "val": 2})
    (odd / "val" / "dog").rename(odd / "val" / "horse")
    with pytest.raises(ConfigError) as err:
        small(odd).check(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "different classes" in msg and "dog" in msg and "horse" in msg
    with pytest.raises(ValueError, match="mean has 1 values, but channels = 3"):
        ImageFolder(folder=folder, mean=(0.5,))
    with pytest.raises(ValueError, match=r"resize .* must be at least size"):
        ImageFolder(folder=folder, size=8, resize=4)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_image_names_its_file(folder, tmp_path, workers):
    broken = write_folder(tmp_path, {"train": 3, "val": 3})
    (broken / "val" / "fish" / "001.png").write_bytes(b"not a png")
    test = ImageFolder(folder=broken, size=8, resize=8, workers=workers).load("test", tmp_path)
    with pytest.raises(OSError) as err:
        test.take()
    msg = str(err.value)
    assert "\n" not in msg and "fish/001.png" in msg, msg
    bench = _bench(broken, tmp_path / "out")
    bench["evaluation"]["n_examples"] = 9
    with pytest.raises(ConfigError, match=r"dataset: reading the evaluation examples: .*001\.png"):
        robench.run(bench, quiet=True)
