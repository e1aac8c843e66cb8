"""The CIFAR-10 benchmark end to end on the CPU: ``benchmarks/cifar.toml`` shrunk by overrides.

Every defense and every attack of the file is kept (the file's models, training recipes with
their memory format, the cascade, AutoAttack, Foolbox's FMN); only sizes shrink — training
images, epochs, evaluation images, attack iterations, the budgets to the recipes' 8/255 — the
PreActResNets train in fp32 instead of bfloat16, which CPUs without native support emulate very
slowly, and the sanity attacks are off (minutes per PreActResNet-18 on a CPU).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from robench.cli import main
from robench.config import load_benchmark, read_toml
from robench.results import read_results

CIFAR = Path(__file__).resolve().parents[1] / "benchmarks" / "cifar.toml"

#: the smoke-sized run: what a user passes to try the benchmark on a laptop first
SMOKE = (
    "training.train_examples=1000",  # the CIFAR CNN: enough to beat chance in 2 epochs
    "training.epochs=2",
    "defenses[preact18-fast-at].training.train_examples=32",  # PreActResNet-18: the path only
    "defenses[preact18-fast-at].training.epochs=1",
    "defenses[preact18-pgd10-at].training.train_examples=32",
    "defenses[preact18-pgd10-at].training.epochs=1",
    "defenses[preact18-pgd10-at].steps=2",
    "defenses[preact18-trades].training.train_examples=32",
    "defenses[preact18-trades].training.epochs=1",
    "defenses[preact18-trades].steps=2",
    "defenses[preact18-mart].training.train_examples=32",
    "defenses[preact18-mart].training.epochs=1",
    "defenses[preact18-mart].steps=2",
    # bfloat16 is emulated on CPUs without native support: PreActResNet-18 trained 10-16× slower
    # than in fp32 on this project's CPUs (robench warns); the smoke run trains in fp32
    'defenses[*].training.precision="fp32"',
    "evaluation.n_examples=24",
    # the trust checks' sanity attacks (Square at 500 queries and APGD with 3 × 100 steps at
    # every budget) cost minutes per PreActResNet-18 on a CPU: off for the smoke run
    "evaluation.sanity=false",
    'attacks[*].eps=["8/255"]',  # every attack at the budget the recipes train for
    "attacks[autoattack].steps=5",
    "attacks[autoattack].n_queries=50",
    "attacks[foolbox-fmn-linf].steps=10",
)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, data_root):
    if not (data_root / "npz" / "cifar10-train-first4000.npz").is_file():
        pytest.skip(f"no CIFAR-10 pieces under {data_root}")
    out = tmp_path_factory.mktemp("cifar-smoke")
    args = ["run", str(CIFAR), "--data-root", str(data_root), "-o", str(out), "--device", "cpu"]
    result = CliRunner().invoke(main, [*args, *(x for s in SMOKE for x in ("--set", s))])
    assert result.exit_code == 0, result.output
    return out, read_results(out / "results.csv")


def test_every_defense_attack_and_budget_of_the_file_runs_and_finishes_ok(smoke, data_root):
    out, df = smoke
    failed = df.loc[df["status"] != "ok", ["defense", "attack", "error"]]
    assert failed.empty, failed.to_string()
    file = read_toml(CIFAR)
    labels = {d.get("label", d["name"]) for d in file["defenses"]}
    assert set(df["defense"]) == labels
    bench = load_benchmark(CIFAR, data_root=data_root, overrides=SMOKE)
    assert {a.label for a in bench.attacks} == {
        a["label"] if "label" in a else a["name"] for a in file["attacks"]
    }
    for a in bench.attacks:
        for eps in a.eps:
            cells = df[(df["attack"] == a.label) & np.isclose(df["eps"], eps)]
            assert set(cells["defense"]) == labels, (a.label, eps)
    prov = json.loads((out / "results.json").read_text())
    assert prov["overrides"] == list(SMOKE)
    assert prov["config"]["evaluation"]["cascade"] is True


def test_numbers_are_sane(smoke):
    _, df = smoke
    clean = df[df["attack"] == "clean"].set_index("defense")["accuracy"]
    assert clean["cnn-standard"] > 0.2  # chance is 0.1
    assert clean["cnn-fgsm-mixed"] > 0.15
    for defense, rows in df[df["kind"] != "clean"].groupby("defense"):
        assert (rows["accuracy"] <= clean[defense] + 1e-9).all(), defense
    worst = df[df["attack"] == "worst-case"]
    aa = df[df["attack"] == "autoattack"]
    for (defense, eps), w in worst.groupby(["defense", "eps"]):
        a = aa[(aa["defense"] == defense) & (aa["eps"] == eps)]
        assert w["accuracy"].item() <= a["accuracy"].item() + 1e-9
