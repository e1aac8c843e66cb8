"""Benchmark validation: every mistake is one clear line naming the field, before training."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from robench.cli import main
from robench.config import load_benchmark
from robench.errors import ConfigError

BASE = """
name = "tiny"
seed = 0
output_dir = "out"

[dataset]
name = "digits"

[model]
name = "small-cnn"

[training]
epochs = 1

[evaluation]
n_examples = 50

[[defenses]]
name = "standard"

[[defenses]]
name = "mixed"
label = "mixed"
attack = { name = "fgsm", eps = 0.1 }

[[attacks]]
name = "pgd"
eps = [0.1, "8/255"]
steps = 3
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bench.toml"
    path.write_text(text)
    return path


def test_valid_benchmark_resolves_defaults_and_relative_paths(tmp_path):
    bench = load_benchmark(write(tmp_path, BASE))
    assert [d.label for d in bench.defenses] == ["standard", "mixed"]
    assert bench.attacks[0].eps == (0.1, 8 / 255)
    assert bench.attacks[0].params.steps == 3
    assert bench.defenses[1].params.clean_weight == 0.5
    assert bench.defenses[1].training.epochs == 1
    assert bench.output_dir == tmp_path / "out"
    resolved = bench.resolved()
    assert resolved["training"]["batch_size"] == 64  # defaults filled in for provenance
    assert resolved["defenses"][1]["attack"]["name"] == "fgsm"


CASES = [
    (
        'name = "digits"',
        'name = "digitz"',
        "dataset.name: unknown dataset 'digitz'; did you mean 'digits'?",
    ),
    (
        'name = "small-cnn"',
        'name = "small_cnn"',
        "model.name: unknown model 'small_cnn'; did you mean 'small-cnn'?",
    ),
    (
        'name = "pgd"',
        'name = "pgdd"',
        "attacks[0].name: unknown attack 'pgdd'; did you mean 'pgd'?",
    ),
    (
        "epochs = 1",
        "epochs = 0",
        "training.epochs: Input should be greater than or equal to 1 (got 0)",
    ),
    ("epochs = 1", 'epochs = "ten"', "training.epochs: Input should be a valid integer"),
    (
        "epochs = 1",
        'epochs = 1\noptimizer = "adamm"',
        "training.optimizer: Input should be 'adam', 'adamw' or 'sgd'",
    ),
    (
        'eps = [0.1, "8/255"]',
        "eps = [-0.1]",
        "attacks[0].eps[0]: Input should be greater than or equal to 0",
    ),
    (
        'eps = [0.1, "8/255"]',
        'eps = ["8/2x5"]',
        "attacks[0].eps[0]: expected a number or a fraction like '8/255'",
    ),
    ('eps = [0.1, "8/255"]', "eps = []", "attacks[0].eps: List should have at least 1 item"),
    (
        "steps = 3",
        "steps = 0",
        "attacks[0].steps: Input should be greater than or equal to 1 (got 0)",
    ),
    (
        "steps = 3",
        "stepz = 3",
        "attacks[0].stepz: attack 'pgd' has no key 'stepz'; did you mean 'steps'?",
    ),
    ("steps = 3", 'steps = 3\nnorm = "l3"', "attacks[0].norm: Input should be 'linf' or 'l2'"),
    ('attack = { name = "fgsm", eps = 0.1 }', "", "defenses[1].attack: required but missing"),
    (
        'attack = { name = "fgsm", eps = 0.1 }',
        'attack = { name = "fgsn", eps = 0.1 }',
        "defenses[1].attack.name: unknown attack 'fgsn'; did you mean 'fgsm'?",
    ),
    (
        'attack = { name = "fgsm", eps = 0.1 }',
        'attack = { name = "pgd", eps = 0.1, steps = -2 }',
        "defenses[1].attack.steps: Input should be greater than or equal to 1",
    ),
    (
        'attack = { name = "fgsm", eps = 0.1 }',
        'attack = { name = "fgsm" }',
        "defenses[1].attack.eps: required but missing",
    ),
    ('label = "mixed"', 'label = "standard"', "defenses[1].label: label 'standard' is used twice"),
    (
        'label = "mixed"',
        'label = "mixed"\nadv_weight = -1',
        "defenses[1].adv_weight: Input should be greater than or equal to 0",
    ),
    (
        'label = "mixed"',
        'label = "mixed"\ntraining = { epochs = 0 }',
        "defenses[1].training.epochs: Input should be greater than or equal to 1",
    ),
    (
        'label = "mixed"',
        'label = "mixed"\ntraining = { epoch = 2 }',
        "defenses[1].training.epoch: [training] has no key 'epoch'; did you mean 'epochs'?",
    ),
    ("seed = 0", "seeed = 0", "seeed: a benchmark file has no key 'seeed'; did you mean 'seed'?"),
    ("seed = 0", 'seed = "zero"', "seed: Input should be a valid integer"),
    (
        "n_examples = 50",
        "n_examples = 0",
        "evaluation.n_examples: Input should be greater than or equal to 1",
    ),
    (
        'name = "small-cnn"',
        'name = "mnist-cnn"',
        "model: model 'mnist-cnn' takes 1×28×28 inputs, but dataset 'digits' has 1×8×8",
    ),
    ('name = "digits"', 'name = "npz"\ntrain = "missing.npz"\ntest = "missing.npz"', "dataset"),
    ('[[defenses]]\nname = "standard"\n', "", None),  # still valid: one defense left
]


@pytest.mark.parametrize(("old", "new", "expected"), CASES)
def test_errors_name_the_field(tmp_path, old, new, expected):
    assert old in BASE
    path = write(tmp_path, BASE.replace(old, new, 1))
    if expected is None:
        load_benchmark(path)
        return
    with pytest.raises(ConfigError) as info:
        load_benchmark(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert expected in message
    assert "\n" not in message


def test_missing_npz_names_the_file(tmp_path):
    text = BASE.replace('name = "digits"', 'name = "npz"\ntrain = "nope.npz"\ntest = "nope.npz"')
    with pytest.raises(ConfigError, match=r"dataset.*nope\.npz"):
        load_benchmark(write(tmp_path, text))


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_benchmark(write(tmp_path, BASE + "\n[[attacks]\n"))
    with pytest.raises(ConfigError, match="benchmark file not found"):
        load_benchmark(tmp_path / "nothing.toml")


def test_no_defense_is_an_error(tmp_path):
    text = BASE.split("[[defenses]]")[0]
    with pytest.raises(ConfigError, match=r"defenses: a benchmark needs at least one \[\[defenses"):
        load_benchmark(write(tmp_path, text))


def test_cli_reports_config_errors_in_one_line_with_exit_code_2(tmp_path):
    path = write(tmp_path, BASE.replace("steps = 3", "steps = 0"))
    for command in (["validate", str(path)], ["run", str(path)]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert lines == [
            f"Error: {path}: attacks[0].steps: Input should be greater than or equal to 1 (got 0)"
        ]
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written


def test_every_shipped_benchmark_validates(data_root):
    root = Path(__file__).resolve().parents[1] / "benchmarks"
    files = sorted(root.glob("*.toml"))
    assert {f.name for f in files} >= {"quickstart.toml", "mnist.toml", "cifar.toml"}
    for f in files:
        load_benchmark(f, data_root=data_root)


#: files that compare one attack across libraries and rank no defense: no AutoAttack there
LIBRARY_AGREEMENT = {"agreement.toml"}
#: the GPU-scale leaderboards, which report AutoAttack exactly as the paper defines it
PAPER_AUTOATTACK = {"mnist.toml", "cifar.toml"}


def test_every_shipped_leaderboard_scores_with_autoattack_at_every_budget(data_root):
    root = Path(__file__).resolve().parents[1] / "benchmarks"
    for f in sorted(root.glob("*.toml")):
        if f.name in LIBRARY_AGREEMENT:
            continue
        bench = load_benchmark(f, data_root=data_root)
        white_box = {(a.norm, e) for a in bench.attacks if not a.source for e in a.eps}
        aa = [a for a in bench.attacks if a.entry.name == "autoattack"]
        assert aa, f"{f.name} does not score with autoattack"
        covered = {(a.norm, e) for a in aa for e in a.eps}
        assert covered == white_box, f"{f.name}: autoattack misses {white_box - covered}"
        if f.name in PAPER_AUTOATTACK:
            (p,) = [a.params for a in aa]
            assert p == type(p)(), f"{f.name}: autoattack is not the paper's standard version"
