"""``--set KEY=VALUE``: a benchmark reshaped from the command line, validated like the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from robench.cli import main
from robench.config import load_benchmark
from robench.errors import ConfigError
from robench.overrides import apply, parse

BASE = """
name = "tiny"
seed = 0
output_dir = "out"

[dataset]
name = "digits"

[model]
name = "small-cnn"

[training]
epochs = 3

[evaluation]
n_examples = 60

[[defenses]]
name = "standard"

[[defenses]]
name = "mixed"
label = "fgsm-mixed"
attack = { name = "fgsm", eps = 0.1 }

[[attacks]]
name = "fgsm"
eps = [0.1, 0.2]

[[attacks]]
name = "pgd"
label = "pgd-0.2"
eps = [0.2]
steps = 7
"""


@pytest.fixture
def bench_file(tmp_path: Path) -> Path:
    path = tmp_path / "bench.toml"
    path.write_text(BASE)
    return path


def test_overrides_reach_tables_labelled_entries_indices_and_every_entry(bench_file):
    bench = load_benchmark(
        bench_file,
        overrides=[
            "training.epochs=1",
            "evaluation.n_examples=30",
            "training.train_examples=100",  # a key the file does not have
            "defenses[fgsm-mixed].training.epochs=2",  # a table the entry does not have
            "defenses[fgsm-mixed].attack.eps=0.2",  # inside an inline table
            "attacks[pgd-0.2].steps=2",  # a label with a dot in it
            "attacks[0].eps=[0.05]",
            'attacks[*].norm="linf"',
            "dataset.name=digits",  # a bare word is a string
        ],
    )
    assert bench.training.epochs == 1 and bench.training.train_examples == 100
    assert bench.evaluation.n_examples == 30
    standard, mixed = bench.defenses
    assert standard.training.epochs == 1 and mixed.training.epochs == 2
    assert mixed.params.attack.eps == 0.2
    fgsm, pgd = bench.attacks
    assert fgsm.eps == (0.05,) and pgd.params.steps == 2 and pgd.eps == (0.2,)
    assert bench.overrides[0] == "training.epochs=1"
    assert bench.resolved()["training"]["epochs"] == 1


def test_overrides_leave_the_file_and_the_given_tables_untouched(bench_file):
    raw = {"training": {"epochs": 3}, "attacks": [{"name": "fgsm", "eps": [0.1]}]}
    out = apply(raw, ["training.epochs=1", "attacks[fgsm].eps=[0.3]"])
    assert raw == {"training": {"epochs": 3}, "attacks": [{"name": "fgsm", "eps": [0.1]}]}
    assert out == {"training": {"epochs": 1}, "attacks": [{"name": "fgsm", "eps": [0.3]}]}
    assert load_benchmark(bench_file).training.epochs == 3


def test_values_are_toml_with_bare_words_as_strings():
    assert parse("a=2").value == 2
    assert parse("a=0.5").value == 0.5
    assert parse("a=true").value is True
    assert parse('a=["8/255", 0.1]').value == ["8/255", 0.1]
    assert parse('a={ name = "pgd", eps = 0.3 }').value == {"name": "pgd", "eps": 0.3}
    assert parse("a=8/255").value == "8/255"
    assert parse("a = cifar10 ").value == "cifar10"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "training.epochz=1",
            "bench.toml (with --set): training.epochz: [training] has no key 'epochz'; "
            "did you mean 'epochs'?",
        ),
        ("training.epochs=0", "bench.toml (with --set): training.epochs: Input should be greater"),
        ("training.epochs=abc", "(with --set): training.epochs: Input should be a valid"),
        (
            "defenses[fgsm-mixd].training.epochs=2",
            "--set defenses[fgsm-mixd].training.epochs=2: unknown defense label 'fgsm-mixd'; "
            "did you mean 'fgsm-mixed'?",
        ),
        ("attacks[5].eps=[0.1]", "--set attacks[5].eps=[0.1]: index 5 out of range"),
        ("evaluation.n_examples.x=1", "evaluation.n_examples is 60, not a table"),
        ("model[x].name=mlp", "only defenses and attacks take a [selector], not 'model'"),
        ("training.epochs", "--set training.epochs: expected KEY=VALUE"),
        ("defenses[standard]=1", "give a key of defenses[standard]"),
        ("training..epochs=1", "malformed key path"),
    ],
)
def test_bad_overrides_fail_in_one_line_naming_them_with_exit_2(bench_file, override, message):
    with pytest.raises(ConfigError, match=None) as err:
        load_benchmark(bench_file, overrides=[override])
    assert message in str(err.value) and "\n" not in str(err.value)
    for command in ("validate", "run"):
        result = CliRunner().invoke(main, [command, str(bench_file), "--set", override])
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], result.output
    assert not (bench_file.parent / "out").exists()  # nothing ran, nothing written


def test_run_applies_overrides_and_records_them_in_the_provenance(bench_file, tmp_path):
    out = tmp_path / "smoke"
    sets = ["training.epochs=1", "evaluation.n_examples=20", "attacks[*].eps=[0.1]"]
    sets.append("evaluation.sanity=false")
    args = ["run", str(bench_file), "-o", str(out), "--quiet"]
    result = CliRunner().invoke(main, [*args, *(x for s in sets for x in ("--set", s))])
    assert result.exit_code == 0, result.output
    prov = json.loads((out / "results.json").read_text())
    assert prov["overrides"] == sets
    assert prov["config"]["training"]["epochs"] == 1
    assert prov["dataset"]["eval_examples"] == 20
    attacks = {a["label"]: a["eps"] for a in prov["config"]["attacks"]}
    assert attacks == {"fgsm": [0.1], "pgd-0.2": [0.1]}


def test_defenses_and_attacks_options_keep_a_subset_in_the_file_order(bench_file, tmp_path):
    bench = load_benchmark(
        bench_file, only={"defenses": ["fgsm-mixed"], "attacks": ["pgd-0.2", "fgsm"]}
    )
    assert [d.label for d in bench.defenses] == ["fgsm-mixed"]
    assert [a.label for a in bench.attacks] == ["fgsm", "pgd-0.2"]
    result = CliRunner().invoke(main, ["validate", str(bench_file), "--defenses", "fgsm-mixd"])
    assert result.exit_code == 2
    assert result.output.strip().startswith(
        "Error: --defenses: unknown defense label 'fgsm-mixd'; did you mean 'fgsm-mixed'?"
    )
    # an override naming an attack that --attacks dropped fails like any unknown label
    args = ["validate", str(bench_file), "--attacks", "fgsm", "--set", "attacks[pgd-0.2].steps=2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "unknown attack label 'pgd-0.2'" in result.output
    out = tmp_path / "subset"
    args = ["run", str(bench_file), "-o", str(out), "--quiet", "--defenses", "standard"]
    args += ["--attacks", "fgsm", "--set", "evaluation.sanity=false", "--set", "training.epochs=1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    prov = json.loads((out / "results.json").read_text())
    assert prov["only"] == {"defenses": ["standard"], "attacks": ["fgsm"]}
    assert [d["label"] for d in prov["config"]["defenses"]] == ["standard"]
