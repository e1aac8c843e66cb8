"""Every bad benchmark file is one line naming the file and the field, exit status 2: caught by
``robench validate`` where it can be checked without training, else by ``robench run`` before
anything trains. No test here reaches the network or trains a model."""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from robench.cli import main
from robench.config import load_benchmark
from robench.errors import ConfigError

BASE = """\
name = "bad"
seed = 0
output_dir = "out"

[dataset]
name = "digits"

[model]
name = "small-cnn"

[training]
epochs = 1
lr = 1e-3

[evaluation]
n_examples = 100
batch_size = 50

[[defenses]]
name = "standard"

[[attacks]]
name = "pgd"
eps = [0.1]
steps = 3
"""

ONE_ATTACK = '[[attacks]]\nname = "pgd"\neps = [0.1]\nsteps = 3\n'
NO_ATTACKS = BASE.replace(ONE_ATTACK, "")
TRAINING = "[training]\nepochs = 1\nlr = 1e-3\n"


def edit(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


# (id, the benchmark file's text, the field the message names, a piece of the message)
CASES = [
    # ε: fractions that are not numbers, booleans, non-finite numbers
    ("eps-zero-denominator", edit("[0.1]", '["8/0"]'), "attacks[0].eps[0]", "denominator"),
    ("eps-two-slashes", edit("[0.1]", '["1/2/3"]'), "attacks[0].eps[0]", "a fraction like"),
    ("eps-inf-fraction", edit("[0.1]", '["inf/1"]'), "attacks[0].eps[0]", "a fraction like"),
    ("eps-huge-fraction", edit("[0.1]", '["1e999/1"]'), "attacks[0].eps[0]", "finite"),
    (
        "eps-negative-fraction",
        edit("[0.1]", '["-8/255"]'),
        "attacks[0].eps[0]",
        "greater than or equal to 0",
    ),
    ("eps-nan-string", edit("[0.1]", '["nan"]'), "attacks[0].eps[0]", "a fraction like"),
    ("eps-nan", edit("[0.1]", "[nan]"), "attacks[0].eps[0]", "finite number (got nan)"),
    ("eps-inf", edit("[0.1]", "[0.1, inf]"), "attacks[0].eps[1]", "finite number (got inf)"),
    ("eps-true", edit("[0.1]", "true"), "attacks[0].eps[0]", "not a boolean (got true)"),
    (
        "inner-eps-true",
        edit('name = "standard"', 'name = "adversarial"\nattack = { name = "fgsm", eps = true }'),
        "defenses[0].attack.eps",
        "not a boolean",
    ),
    # booleans where numbers go
    ("seed-true", edit("seed = 0", "seed = true"), "seed", "not a boolean (got true)"),
    ("seeds-true", edit("seed = 0", "seeds = [0, true]"), "seeds[1]", "not a boolean"),
    (
        "n-examples-true",
        edit("n_examples = 100", "n_examples = true"),
        "evaluation.n_examples",
        "not a boolean",
    ),
    (
        "batch-size-true",
        edit("batch_size = 50", "batch_size = true"),
        "evaluation.batch_size",
        "not a boolean",
    ),
    ("lr-true", edit("lr = 1e-3", "lr = true"), "training.lr", "not a boolean (got true)"),
    ("epochs-true", edit("epochs = 1", "epochs = true"), "training.epochs", "not a boolean"),
    (
        "defense-epochs-true",
        edit('name = "standard"', 'name = "standard"\ntraining = { epochs = true }'),
        "defenses[0].training.epochs",
        "not a boolean",
    ),
    ("steps-true", edit("steps = 3", "steps = true"), "attacks[0].steps", "not a boolean"),
    # seeds beyond what torch and the results' int64 columns take, and negative ones
    ("seed-2**64", edit("seed = 0", "seed = 18446744073709551616"), "seed", "2**63 - 1"),
    ("seed-2**63", edit("seed = 0", "seed = 9223372036854775808"), "seed", "2**63 - 1"),
    ("seed-negative", edit("seed = 0", "seed = -1"), "seed", "from 0 to 2**63 - 1 (got -1)"),
    ("seeds-2**64", edit("seed = 0", "seeds = [0, 18446744073709551615]"), "seeds[1]", "2**63"),
    (
        "defense-seed-negative",
        edit('name = "standard"', 'name = "standard"\nseeds = [1, -3]'),
        "defenses[0].seeds[1]",
        "(got -3)",
    ),
    (
        "split-seed-2**32",
        edit('name = "digits"', 'name = "digits"\nsplit_seed = 4294967296'),
        "dataset.split_seed",
        "less than 4294967296",
    ),
    # other numbers
    (
        "n-examples-above-test-split",
        edit("n_examples = 100", "n_examples = 1000"),
        "evaluation.n_examples",
        "1000 but dataset 'digits' has 450 test examples; leave it unset or ≤ 450",
    ),
    (
        "n-examples-zero",
        edit("n_examples = 100", "n_examples = 0"),
        "evaluation.n_examples",
        "greater than or equal to 1 (got 0)",
    ),
    (
        "batch-size-zero",
        edit("batch_size = 50", "batch_size = 0"),
        "evaluation.batch_size",
        "greater than or equal to 1 (got 0)",
    ),
    (
        "epochs-negative",
        edit("epochs = 1", "epochs = -1"),
        "training.epochs",
        "greater than or equal to 1 (got -1)",
    ),
    ("lr-inf", edit("lr = 1e-3", "lr = inf"), "training.lr", "finite number (got inf)"),
    ("lr-nan", edit("lr = 1e-3", "lr = nan"), "training.lr", "finite number (got nan)"),
    (
        "batch-size-2**64",
        edit("epochs = 1", "epochs = 1\nbatch_size = 18446744073709551616"),
        "training.batch_size",
        "out of range",
    ),
    # tables and names
    ("no-attacks", NO_ATTACKS, "attacks", "at least one [[attacks]] table"),
    ("empty-attacks", "attacks = []\n" + NO_ATTACKS, "attacks", "at least one [[attacks]] table"),
    (
        "no-defenses",
        BASE.replace('[[defenses]]\nname = "standard"\n', ""),
        "defenses",
        "at least one [[defenses]] table",
    ),
    ("name-not-a-string", edit('name = "bad"', "name = 1"), "name", "valid string (got 1)"),
    (
        "dataset-without-name",
        edit('name = "digits"', "test_fraction = 0.2"),
        "dataset.name",
        "required but missing",
    ),
    (
        "dataset-not-a-table",
        edit('[dataset]\nname = "digits"', 'dataset = "digits"'),
        "dataset",
        "expected a table (got 'digits')",
    ),
    (
        "defenses-not-a-list",
        'defenses = "standard"\n' + BASE.split("[[defenses]]")[0],
        "defenses",
        "valid list",
    ),
    (
        "training-not-a-table",
        "training = 5\n" + BASE.replace(TRAINING, ""),
        "training",
        "expected a table (got 5)",
    ),
    (
        "defense-label-clash",
        BASE + '[[defenses]]\nname = "standard"\n',
        "defenses[1].label",
        "used twice",
    ),
    (
        "attack-label-reserved",
        edit("steps = 3", 'steps = 3\nlabel = "clean"'),
        "attacks[0].label",
        "reserved",
    ),
    (
        "attack-label-sanity",
        edit("steps = 3", 'steps = 3\nlabel = "sanity:pgd"'),
        "attacks[0].label",
        "reserved",
    ),
    # the output folder
    (
        "output-dir-is-a-file",
        edit('output_dir = "out"', 'output_dir = "bench.toml"'),
        "output_dir",
        "is not a directory",
    ),
    (
        "output-dir-under-a-file",
        edit('output_dir = "out"', 'output_dir = "bench.toml/out"'),
        "output_dir",
        "is a file",
    ),
]


def _invoke(args: list[str]):
    result = CliRunner().invoke(main, args)
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), repr(result.exception)
    return result


def assert_one_line(result, path: Path, field: str | None, piece: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.splitlines()
    assert len(lines) == 1, result.output
    line = lines[0]
    named = f"Error: {path}: {field}: " if field else f"Error: {path}: "
    assert line.startswith(named), line
    assert piece in line, line
    return line


@pytest.mark.parametrize(
    ("text", "field", "piece"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_validate_gives_one_line(tmp_path, text, field, piece):
    path = tmp_path / "bench.toml"
    path.write_text(text)
    assert_one_line(_invoke(["validate", str(path)]), path, field, piece)
    assert not (tmp_path / "out").exists()


def test_the_base_benchmark_is_valid(tmp_path):
    path = tmp_path / "bench.toml"
    path.write_text(BASE)
    result = _invoke(["validate", str(path)])
    assert result.exit_code == 0, result.output
    # unset, n_examples (1000) takes the whole test split where that is smaller
    path.write_text(BASE.replace("n_examples = 100\n", ""))
    assert _invoke(["validate", str(path)]).exit_code == 0


def test_plugin_booleans_stay_booleans(tmp_path):
    text = edit("steps = 3", "steps = 3\nrandom_start = false\nearly_stop = true")
    bench = load_benchmark(
        _write(tmp_path, text.replace("[training]", "[training]\nnesterov = true"))
    )
    assert bench.attacks[0].params.random_start is False and bench.training.nesterov is True


def _write(tmp_path: Path, text: str | bytes, name: str = "bench.toml") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize(
    ("content", "piece"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "not a TOML file (binary data"),
        (b'name = "b"\n\xff\xfe\xfa', "not a TOML file (not UTF-8 text"),
        (b"name = \n[[", "invalid TOML"),
    ],
    ids=["binary", "not-utf8", "bad-syntax"],
)
def test_a_file_that_is_not_toml(tmp_path, content, piece):
    path = _write(tmp_path, content)
    assert_one_line(_invoke(["validate", str(path)]), path, None, piece)


def test_an_unreadable_file(tmp_path, monkeypatch):
    path = _write(tmp_path, BASE)
    read_bytes = Path.read_bytes

    def refuse(self: Path) -> bytes:
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    line = assert_one_line(_invoke(["validate", str(path)]), path, None, "cannot read")
    assert line.endswith("Permission denied")


def test_a_directory_as_the_benchmark(tmp_path):
    with pytest.raises(ConfigError, match=r"^\S+: not a TOML file but a directory"):
        load_benchmark(tmp_path)


def test_a_directory_as_the_benchmark_on_the_command_line(tmp_path):
    assert_one_line(_invoke(["validate", str(tmp_path)]), tmp_path, None, "a directory")


def test_an_output_dir_override_names_the_option(tmp_path):
    path = _write(tmp_path, BASE)
    with pytest.raises(ConfigError, match=r": --output-dir: cannot write the results to .*bench"):
        load_benchmark(path, output_dir=path, check_data=False)


# --- datasets --------------------------------------------------------------------------------


def _mnist_bench(tmp_path: Path, dataset: str = "mnist") -> Path:
    model = "mnist-cnn" if dataset == "mnist" else "cifar-cnn"
    text = edit('name = "digits"', f'name = "{dataset}"\ndownload = true')
    return _write(tmp_path, text.replace('name = "small-cnn"', f'name = "{model}"'))


@pytest.fixture
def no_network(monkeypatch):
    """torchvision's downloads fail at once, as without a network (and print as they do)."""

    def fail(url, *args, **kwargs):
        print(f"Downloading {url}")
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr("torchvision.datasets.mnist.download_and_extract_archive", fail)
    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", fail)


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_a_failed_download_is_one_line_at_run(tmp_path, no_network, dataset):
    path = _mnist_bench(tmp_path, dataset)
    root = tmp_path / "absent" / "data"
    args = [str(path), "--data-root", str(root)]
    assert _invoke(["validate", *args]).exit_code == 0  # the folder can be made: may download
    line = assert_one_line(_invoke(["run", *args]), path, "dataset", "could not download")
    assert str(root) in line and "no network in tests" in line and "--data-root" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_a_data_root_that_cannot_be_made(tmp_path, dataset):
    path = _mnist_bench(tmp_path, dataset)
    root = path / "data"  # under a file
    for command in ("validate", "run"):
        result = _invoke([command, str(path), "--data-root", str(root)])
        line = assert_one_line(result, path, "dataset", "cannot be downloaded there")
        assert f"{path} is a file" in line


def _legacy_mnist(root: Path, test_payload: object) -> Path:
    folder = root / "MNIST" / "processed"
    folder.mkdir(parents=True)
    pair = (torch.zeros(5, 28, 28, dtype=torch.uint8), torch.zeros(5, dtype=torch.int64))
    torch.save(pair, folder / "training.pt")
    torch.save(test_payload, folder / "test.pt")
    return folder / "test.pt"


class _Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_payload_in_mnist_is_refused_not_run(tmp_path):
    marker = tmp_path / "EXECUTED"
    root = tmp_path / "data"
    test_pt = _legacy_mnist(root, (_Payload(marker), torch.zeros(5, dtype=torch.int64)))
    path = _mnist_bench(tmp_path)
    for command in ("validate", "run"):
        result = _invoke([command, str(path), "--data-root", str(root)])
        line = assert_one_line(result, path, "dataset", f"{test_pt} is not a loadable MNIST file")
        assert "weights_only" in line
    assert not marker.exists()


@pytest.mark.parametrize(
    "content",
    [b"\x00" * 100, b"PK\x03\x04 truncated zip", {"not": "a pair"}],
    ids=["zeros", "truncated", "wrong-object"],
)
def test_a_corrupt_mnist_cache_file(tmp_path, content):
    root = tmp_path / "data"
    test_pt = _legacy_mnist(root, 0)
    if isinstance(content, bytes):
        test_pt.write_bytes(content)
    else:
        torch.save(content, test_pt)
    path = _mnist_bench(tmp_path)
    result = _invoke(["validate", str(path), "--data-root", str(root)])
    assert_one_line(result, path, "dataset", f"{test_pt} is not a loadable MNIST file")


def _raw_mnist(root: Path, n_test: int = 4) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 6), ("t10k", n_test)):
        header = np.array([0x0803, n, 28, 28], dtype=">i4").tobytes()
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + bytes(n * 28 * 28))
        header = np.array([0x0801, n], dtype=">i4").tobytes()
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(header + bytes(n))
    return raw


def test_corrupt_mnist_idx_files(tmp_path):
    root = tmp_path / "data"
    raw = _raw_mnist(root)
    path = _mnist_bench(tmp_path)
    args = ["validate", str(path), "--data-root", str(root)]
    images = raw / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-10])  # truncated
    assert_one_line(_invoke(args), path, "dataset", f"{images} is not a loadable MNIST file")
    images.write_bytes(b"<html>404</html>")  # a mirror's error page
    assert_one_line(_invoke(args), path, "dataset", "no idx header")


def test_n_examples_above_mnists_test_split_from_its_header(tmp_path):
    root = tmp_path / "data"
    _raw_mnist(root, n_test=4)
    path = _mnist_bench(tmp_path)
    result = _invoke(["validate", str(path), "--data-root", str(root)])
    assert_one_line(result, path, "evaluation.n_examples", "has 4 test examples")


def test_bad_values_in_an_npz_test_split(tmp_path):
    x = np.zeros((4, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "train.npz", x=x, y=np.arange(4))
    np.savez(tmp_path / "test.npz", x=x + 2, y=np.arange(4))  # floats beyond [0, 1]
    text = edit('name = "digits"', 'name = "npz"\ntrain = "train.npz"\ntest = "test.npz"')
    path = _write(tmp_path, text.replace("n_examples = 100", "n_examples = 4"))
    line = assert_one_line(_invoke(["validate", str(path)]), path, "dataset", "must lie in [0, 1]")
    assert str(tmp_path / "test.npz") in line
