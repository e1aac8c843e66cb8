"""`robench schema`: the JSON Schema of a benchmark file, checked with a real validator."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from robench.cli import main

jsonschema = pytest.importorskip("jsonschema")
BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.toml"))


@pytest.fixture(scope="module")
def validator():
    out = CliRunner().invoke(main, ["schema"])
    schema = json.loads(out.output[out.output.index("{") :])
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_every_committed_benchmark_is_valid(validator, path):
    errors = [e.message for e in validator.iter_errors(tomllib.loads(path.read_text()))]
    assert not errors, errors[:3]


def _quickstart() -> dict:
    return tomllib.loads(next(p for p in BENCHMARKS if p.name == "quickstart.toml").read_text())


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda d: d["attacks"][0].update(steps="many"), ["attacks", 0]),  # fgsm has no steps
        (lambda d: d["attacks"].append({"name": "no-such-attack", "eps": 0.1}), ["attacks", 3]),
        (lambda d: d["attacks"][1].update(eps=-0.1), ["attacks", 1]),
        (lambda d: d["attacks"][1].update(eps="8 of 255"), ["attacks", 1]),
        (lambda d: d["evaluation"].update(n_exampels=10), ["evaluation"]),
        (lambda d: d["model"].update(channels="wide"), ["model"]),
        (lambda d: d["training"].update(optimizer="adagrad"), ["training", "optimizer"]),
    ],
)
def test_bad_tables_are_caught(validator, change, where):
    data = _quickstart()
    change(data)
    errors = list(validator.iter_errors(data))
    best = jsonschema.exceptions.best_match(errors)
    assert errors and list(best.absolute_path)[: len(where)] == where


def test_the_schema_knows_each_plugins_parameters(validator):
    data = _quickstart()
    data["attacks"][1].update(steps=40, rel_step=0.1, restarts=2)  # pgd's own parameters
    data["attacks"].append({"name": "pgd", "eps": ["2/255", 0.1], "norm": "Linf"})
    assert not list(validator.iter_errors(data))


def test_schema_writes_a_file(tmp_path):
    out = CliRunner().invoke(main, ["schema", "-o", str(tmp_path / "s.json")])
    assert out.exit_code == 0, out.output
    schema = json.loads((tmp_path / "s.json").read_text())
    names = {v["title"] for v in schema["$defs"]["AttackTable"]["oneOf"]}
    assert {"fgsm", "pgd", "autoattack"} <= names
