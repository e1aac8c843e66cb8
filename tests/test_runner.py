"""The runner: tidy results, provenance, failures confined to their cell, determinism."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import robench
from robench.api import Attack, Defense
from robench.outcomes import read_outcomes
from robench.registry import build_registry
from robench.results import COLUMNS, read_results

from .helpers import plugin_module, tiny_config


class Exploding(Attack):
    """Fails at ε = 0.2 (a test plugin)."""

    name = "exploding"

    def run(self, model, x, y):
        if self.threat.eps > 0.15:
            raise RuntimeError("kaboom")
        return x


class BrokenDefense(Defense):
    """Fails while training (a test plugin)."""

    name = "broken"

    def fit(self, model, train, ctx):
        raise ValueError("no training today")


class Interrupting(Attack):
    """Simulates Ctrl-C (a test plugin)."""

    name = "interrupting"

    def run(self, model, x, y):
        raise KeyboardInterrupt


class Overshooting(Attack):
    """Returns 3ε steps and a NaN (a test plugin that breaks the budget)."""

    name = "overshooting"

    def run(self, model, x, y):
        x_adv = x + 3 * self.threat.eps * torch.randn_like(x).sign()
        x_adv[0, 0, 0, 0] = float("nan")
        return x_adv


class Inverting(Attack):
    """A minimisation attack in the manner of a decision-based one: walks each example
    towards its inverted image (1 − x) and returns the first point on the way that is
    misclassified, at any distance (a test plugin)."""

    name = "inverting"
    minimizes = True
    calls: int = 0

    def run(self, model, x, y):
        type(self).calls += 1
        assert self.threat.eps == float("inf")
        x_adv = x.clone()
        found = torch.zeros(len(x), dtype=torch.bool)
        for t in torch.linspace(0.05, 1.0, 20):
            point = x + t * (1 - 2 * x)
            fooled = (model(point).argmax(1) != y) & ~found
            x_adv[fooled] = point[fooled]
            found |= fooled
        return x_adv


@robench.hookimpl
def robench_register_attacks(register):
    register(Exploding)
    register(Interrupting)
    register(Overshooting)
    register(Inverting)
    register(Terminating)


@robench.hookimpl
def robench_register_defenses(register):
    register(BrokenDefense)


@pytest.fixture(scope="module")
def registry():
    plugin = plugin_module(
        "test_plugins",
        robench_register_attacks=robench_register_attacks,
        robench_register_defenses=robench_register_defenses,
    )
    return build_registry(entry_points=False, plugins=[plugin])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    df = robench.run(tiny_config(tmp), quiet=True)
    return tmp, df


def test_results_are_a_tidy_typed_table(tiny_run):
    _, df = tiny_run
    assert list(df.columns) == list(COLUMNS)
    # clean, 2 attacks × 2 eps, worst case per eps, sanity: PGD at 0.5, and noise, Square and
    # the convergence APGD at both eps
    assert len(df) == 1 + 4 + 2 + 1 + 3 * 2
    assert list(df.loc[df["kind"] == "sanity", "attack"]) == ["sanity:pgd-0.5"] + [
        a for a in ("sanity:noise", "sanity:square", "sanity:apgd-converge") for _ in range(2)
    ]
    assert (df["status"] == "ok").all()
    assert df["accuracy"].dtype == "float64" and df["eps"].dtype == "float64"
    assert str(df["n_examples"].dtype) == "Int64"
    assert (df["n_examples"] == 120).all()
    attacks = df[df["kind"] == "attack"]
    assert set(zip(attacks["attack"], attacks["eps"], strict=True)) == {
        ("fgsm", 0.1),
        ("fgsm", 0.2),
        ("pgd", 0.1),
        ("pgd", 0.2),
    }
    assert (attacks["seconds"] > 0).all() and (attacks["n_violations"] == 0).all()
    # the registered names, and who supplied them: distribution, version and plugin
    assert set(attacks["attack_name"]) == {"fgsm", "pgd"}
    version = robench.__version__
    assert set(attacks["attack_plugin"]) == {f"robench {version} (robench.attacks)"}
    assert set(df["defense_name"]) == {"standard"}
    assert set(df["defense_plugin"]) == {f"robench {version} (robench.defenses)"}
    clean_row = df[df["kind"] == "clean"]
    clean, n_clean = clean_row["accuracy"].item(), clean_row["n_correct"].item()
    assert clean > 0.8
    assert (df["accuracy"] <= clean).all()
    for eps in (0.1, 0.2):
        at = df[df["eps"] == eps]
        worst = at[at["kind"] == "worst-case"]
        singles = at[at["kind"] == "attack"]["n_correct"]
        assert worst["attacks"].item() == "fgsm+pgd"
        # per example minimum: at most the best single attack's count, and at least what is
        # left when the attacks fool disjoint sets of examples
        assert worst["n_correct"].item() <= singles.min()
        assert worst["n_correct"].item() >= singles.sum() - (len(singles) - 1) * n_clean


def test_csv_round_trips_and_provenance_is_complete(tiny_run):
    tmp, df = tiny_run
    out = tmp / "out"
    again = read_results(out / "results.csv")
    pd.testing.assert_frame_equal(again, df, check_like=False)
    prov = json.loads((out / "results.json").read_text())
    assert prov["status"] == "complete"
    assert prov["config"]["training"]["epochs"] == 3
    assert prov["config"]["attacks"][1]["steps"] == 3
    assert prov["seeds"]["benchmark"] == 0
    assert prov["versions"]["torch"] == torch.__version__
    assert {"python", "robench", "pandas", "pluggy"} <= set(prov["versions"])
    assert prov["device"]["device"] == "cpu"
    assert "commit" in prov["git"] and "dirty" in prov["git"]
    assert prov["dataset"]["name"] == "digits" and prov["dataset"]["eval_examples"] == 120
    assert {p["name"] for p in prov["plugins"]} >= {"digits", "small-cnn", "standard", "pgd"}


def test_same_seed_gives_the_same_numbers(tiny_run, tmp_path):
    _, df = tiny_run
    again = robench.run(tiny_config(tmp_path), quiet=True)
    assert again["accuracy"].tolist() == df["accuracy"].tolist()


def test_a_failing_cell_is_recorded_and_the_rest_still_runs(tmp_path, registry):
    config = tiny_config(
        tmp_path,
        defenses=[{"name": "broken"}, {"name": "standard"}],
        attacks=[{"name": "exploding", "eps": [0.1, 0.2]}, {"name": "fgsm", "eps": [0.2]}],
    )
    df = robench.run(config, registry=registry, quiet=True)
    assert df.attrs["failed"] == 1 + 3 + 1
    broken = df[df["defense"] == "broken"]
    assert (broken["status"] == "error").all()
    assert "no training today" in broken[broken["kind"] == "clean"]["error"].item()
    std = df[df["defense"] == "standard"].set_index(["attack", "eps"])
    assert std.loc[("exploding", 0.2), "status"] == "error"
    assert "kaboom" in std.loc[("exploding", 0.2), "error"]
    assert std.loc[("exploding", 0.1), "status"] == "ok"
    assert std.loc[("fgsm", 0.2), "status"] == "ok"
    worst = std.loc[("worst-case", 0.2)]
    assert worst["attacks"] == "fgsm" and "exploding" in worst["error"]
    prov = json.loads((tmp_path / "out" / "results.json").read_text())
    assert prov["status"] == "failed cells"
    assert any("kaboom" in e["traceback"] for e in prov["errors"])


class Terminating(Attack):
    """Sends its own process SIGTERM, as `kill` would (a test plugin)."""

    name = "terminating"

    def run(self, model, x, y):
        import os
        import signal

        os.kill(os.getpid(), signal.SIGTERM)
        return x


def test_an_interrupted_run_keeps_what_it_computed(tmp_path, registry):
    config = tiny_config(
        tmp_path,
        attacks=[{"name": "fgsm", "eps": [0.1]}, {"name": "interrupting", "eps": [0.1]}],
    )
    with pytest.raises(KeyboardInterrupt):
        robench.run(config, registry=registry, quiet=True)
    out = tmp_path / "out"
    kept = read_results(out / "results.partial.csv")
    assert list(kept["attack"]) == ["clean", "fgsm"]
    prov = json.loads((out / "results.partial.json").read_text())
    assert prov["status"] == "interrupted" and prov["interrupted"].startswith("KeyboardInterrupt")
    assert not (out / "results.csv").exists()  # no run of this folder ever finished


def test_a_rerun_that_fails_early_leaves_the_finished_results_as_they_were(tmp_path, registry):
    out = tmp_path / "out"
    first = robench.run(tiny_config(tmp_path), registry=registry, quiet=True)
    before = (out / "results.csv").read_bytes(), (out / "outcomes.npz").read_bytes()
    assert not (out / "results.partial.csv").exists()
    assert json.loads((out / "results.json").read_text())["status"] == "complete"
    rerun = tiny_config(tmp_path, attacks=[{"name": "terminating", "eps": [0.1]}])
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        robench.run(rerun, registry=registry, quiet=True)
    assert ((out / "results.csv").read_bytes(), (out / "outcomes.npz").read_bytes()) == before
    assert len(read_results(out / "results.csv")) == len(first)
    prov = json.loads((out / "results.partial.json").read_text())
    assert prov["status"] == "interrupted" and "SIGTERM" in prov["interrupted"]
    assert list(read_results(out / "results.partial.csv")["attack"]) == ["clean"]

    # the next run keeps that unfinished run's files beside its own, then replaces results.csv
    again = robench.run(tiny_config(tmp_path), registry=registry, quiet=True)
    pd.testing.assert_frame_equal(
        again.drop(columns=["seconds", "train_seconds"]),
        first.drop(columns=["seconds", "train_seconds"]),
    )
    (interrupted,) = out.glob("results.interrupted-*.csv")
    assert list(read_results(interrupted)["attack"]) == ["clean"]
    assert len(list(out.glob("results.interrupted-*.json"))) == 1
    assert not list(out.glob("*.partial.*"))


def _fake_partial(out, pid: int) -> None:
    out.mkdir(parents=True)
    (out / "results.partial.csv").write_text("benchmark,defense\n")
    prov = {"status": "running", "started": "2026-01-02T03:04:05+00:00", "pid": pid}
    import socket

    prov["host"] = socket.gethostname()
    (out / "results.partial.json").write_text(json.dumps(prov))


def test_a_killed_run_is_recorded_as_interrupted_and_kept(tmp_path, registry):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _fake_partial(tmp_path / "out", dead.pid)  # a run killed with SIGKILL: still "running"
    robench.run(tiny_config(tmp_path), registry=registry, quiet=True)
    kept = tmp_path / "out" / "results.interrupted-2026-01-02T030405Z.json"
    prov = json.loads(kept.read_text())
    assert prov["status"] == "interrupted" and "ended without finishing" in prov["interrupted"]
    assert (tmp_path / "out" / "results.interrupted-2026-01-02T030405Z.csv").exists()


def test_a_folder_in_use_by_a_live_run_is_refused(tmp_path, registry):
    import subprocess
    import sys

    from robench.errors import ConfigError

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _fake_partial(tmp_path / "out", live.pid)
        with pytest.raises(ConfigError, match=r"output_dir: .* in use by a robench run"):
            robench.run(tiny_config(tmp_path), registry=registry, quiet=True)
    finally:
        live.kill()
        live.wait()
    assert (tmp_path / "out" / "results.partial.csv").exists()  # untouched


def test_device_option_is_checked(tmp_path):
    from robench.errors import ConfigError

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ConfigError, match="device: CUDA was requested"):
        robench.run(tiny_config(tmp_path), device="cuda", quiet=True)


def test_out_of_budget_results_are_projected_and_recorded(tmp_path, registry):
    config = tiny_config(tmp_path, attacks=[{"name": "overshooting", "eps": [0.1]}])
    df = robench.run(config, registry=registry, quiet=True)
    row = df[df["kind"] == "attack"].iloc[0]
    assert row["status"] == "ok"
    assert row["n_violations"] == row["n_examples"]  # every one, misclassified ones attacked too
    assert row["max_violation"] == float("inf")  # the NaN counts as an infinite excess
    assert 0 <= row["accuracy"] <= df[df["kind"] == "clean"]["accuracy"].item()


def test_cli_exit_status_is_1_when_a_cell_failed(tmp_path, registry, monkeypatch):
    from click.testing import CliRunner

    from robench.cli import main

    monkeypatch.setattr("robench.config.get_registry", lambda: registry)
    monkeypatch.setattr("robench.runner.get_registry", lambda: registry)
    path = tmp_path / "b.toml"
    path.write_text(
        f'name = "t"\noutput_dir = "{tmp_path / "o"}"\n[dataset]\nname = "digits"\n'
        '[model]\nname = "mlp"\n[training]\nepochs = 1\n[evaluation]\nn_examples = 40\n'
        "sanity = false\n"
        '[[defenses]]\nname = "standard"\n[[attacks]]\nname = "exploding"\neps = [0.1, 0.2]\n'
    )
    result = CliRunner().invoke(main, ["run", str(path), "-q"])
    assert result.exit_code == 1
    assert "1 cell(s) failed" in result.output
    assert "Traceback" not in result.output
    assert len(read_results(tmp_path / "o" / "results.csv")) == 4


def test_a_minimisation_attack_runs_once_and_is_scored_at_every_eps(tmp_path, registry):
    Inverting.calls = 0
    eps = [0.05, 0.1, 0.3, 1.0]
    config = tiny_config(tmp_path, attacks=[{"name": "inverting", "eps": eps}])
    config["evaluation"]["batch_size"] = 1000  # one batch: one call per run of the attack
    df = robench.run(config, registry=registry, quiet=True)
    rows = df[df["kind"] == "attack"].sort_values("eps")
    # once on the clean-correct examples, once on the misclassified ones (if any)
    assert Inverting.calls == 1 + (df[df["kind"] == "clean"]["accuracy"].item() < 1)
    assert list(rows["eps"]) == eps and (rows["status"] == "ok").all()
    # far beyond ε is how a minimisation attack works, not a violation
    assert (rows["n_violations"] == 0).all()
    acc = list(rows["accuracy"])
    assert acc == sorted(acc, reverse=True), "robust accuracy must not grow with ε"
    assert acc[-1] < acc[0] <= df[df["kind"] == "clean"]["accuracy"].item()


def test_per_example_outcomes_recompute_every_row(tiny_run):
    tmp, df = tiny_run
    out = read_outcomes(tmp / "out")
    n = int(df["n_examples"].iloc[0])
    assert len(out.example_index) == n == len(set(out.example_index.tolist()))
    for _, row in df.iterrows():
        if row["kind"] == "clean":
            vector = out.get(row["defense"], "clean")
        elif row["kind"] in ("attack", "sanity"):
            vector = out.get(row["defense"], row["attack"], row["norm"], row["eps"])
            assert not (vector & ~out.get(row["defense"], "clean")).any()
        else:
            vector = out.worst_case(row["defense"], row["norm"], row["eps"])
        assert int(vector.sum()) == row["n_correct"]
    # the worst case over a subset of the attacks, after the run, without attacking again
    fgsm_only = out.worst_case("standard", "linf", 0.2, attacks=["fgsm"])
    both = out.worst_case("standard", "linf", 0.2)
    assert (both <= fgsm_only).all()
    assert fgsm_only.sum() == df.query("attack == 'fgsm' and eps == 0.2")["n_correct"].item()


def test_every_accuracy_has_a_wilson_interval(tiny_run):
    _, df = tiny_run
    assert (df["ci_low"] <= df["accuracy"]).all() and (df["accuracy"] <= df["ci_high"]).all()
    assert ((df["ci_high"] - df["ci_low"]) > 0).all()
    assert (df["ci_low"] >= 0).all() and (df["ci_high"] <= 1).all()


def test_transfer_attacks_craft_on_the_source_and_are_labelled(tmp_path):
    config = tiny_config(
        tmp_path,
        defenses=[
            {"name": "mixed", "label": "target", "attack": {"name": "fgsm", "eps": 0.1}},
            {"name": "standard", "label": "base"},
        ],
        attacks=[
            {"name": "fgsm", "eps": [0.2]},
            {"name": "fgsm", "label": "fgsm-from-base", "source": "base", "eps": [0.2]},
        ],
    )
    df = robench.run(config, quiet=True)
    assert list(dict.fromkeys(df["defense"])) == ["base", "target"]  # the source trains first
    rows = df[df["kind"] == "attack"].set_index(["defense", "attack"])
    assert rows.loc[("base", "fgsm-from-base"), "source"] == "base"
    assert rows.loc[("target", "fgsm"), "source"] == ""
    # on the source itself the transfer attack is the white-box one
    assert (
        rows.loc[("base", "fgsm-from-base"), "n_correct"] == rows.loc[("base", "fgsm"), "n_correct"]
    )
    # on the target, examples crafted on another model: a weaker attack than white-box FGSM here
    assert (
        rows.loc[("target", "fgsm-from-base"), "accuracy"]
        >= rows.loc[("target", "fgsm"), "accuracy"]
    )
    assert (df["status"] == "ok").all()
    with open(df.attrs["json"]) as fh:
        assert json.load(fh)["config"]["attacks"][1]["source"] == "base"


def test_an_unknown_transfer_source_is_a_config_error(tmp_path):
    from robench.config import load_benchmark
    from robench.errors import ConfigError

    config = tiny_config(tmp_path, attacks=[{"name": "fgsm", "eps": 0.1, "source": "standrd"}])
    with pytest.raises(ConfigError, match=r"attacks\[0\]\.source: .*'standrd'.*did you mean"):
        load_benchmark(config)


def test_results_from_before_the_name_columns_still_read():
    from pathlib import Path

    old = Path(__file__).resolve().parents[1] / "results" / "mnist-nsl-results.csv"
    df = read_results(old)
    assert list(df.columns) == list(COLUMNS)
    attacks = df[df["kind"] == "attack"]
    assert "fgsm" in set(attacks["attack_name"]) and set(attacks["attack_plugin"]) == {""}
    assert "standard" in set(df["defense_name"])


def test_threads_setting_is_applied_recorded_and_restored(tmp_path):
    """``threads = 1``: the run uses one CPU thread whatever torch had (so its numbers do not
    depend on the machine's core count), records it, and gives torch its setting back."""
    before = torch.get_num_threads()
    runs = []
    try:
        for outer in (2, 1):
            torch.set_num_threads(outer)
            out = tmp_path / f"t{outer}"
            df = robench.run(tiny_config(tmp_path, threads=1, output_dir=str(out)), quiet=True)
            assert torch.get_num_threads() == outer
            prov = json.loads((out / "results.json").read_text())
            assert prov["device"]["torch_threads"] == 1 and prov["config"]["threads"] == 1
            runs.append(df.drop(columns=["seconds", "train_seconds"]))
    finally:
        torch.set_num_threads(before)
    pd.testing.assert_frame_equal(*runs)
