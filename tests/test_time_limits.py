"""``[execution] cell_timeout`` and ``train_timeout``: a hung plugin's cells become errors and
the rest of the grid goes on."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

import robench
from robench.api import Attack, Defense
from robench.cli import main
from robench.errors import ConfigError
from robench.registry import build_registry
from robench.timelimit import CellTimeout, time_limit

from .helpers import plugin_module, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


class Hangs(Attack):
    """An attack that never returns (a plugin stuck in a Python loop)."""

    name = "test.hangs"

    def run(self, model, x, y):
        while True:
            time.sleep(0.01)


class SlowTraining(Defense):
    """A defense whose training never finishes."""

    name = "test.slow-training"

    def fit(self, model, train, ctx):
        while True:
            time.sleep(0.01)


@robench.hookimpl
def _attacks(register):
    register(Hangs)


@robench.hookimpl
def _defenses(register):
    register(SlowTraining)


def _registry():
    plugin = plugin_module(
        "hung_plugins", robench_register_attacks=_attacks, robench_register_defenses=_defenses
    )
    return build_registry(entry_points=False, plugins=[plugin])


def _config(tmp_path, **execution):
    return tiny_config(
        tmp_path,
        training={"epochs": 1, "lr": 3e-3, "train_examples": 300},
        evaluation={"n_examples": 60, "batch_size": 60, "sanity": False},
        execution=execution,
        defenses=[{"name": "standard"}, {"name": "test.slow-training", "label": "slow"}],
        attacks=[
            {"name": "fgsm", "eps": [0.1]},
            {"name": "test.hangs", "label": "hangs", "eps": [0.1, 0.2]},
        ],
    )


def test_a_hung_attack_and_a_hung_training_lose_only_their_cells(tmp_path):
    config = _config(tmp_path, cell_timeout=1.0, train_timeout=10)
    t0 = time.perf_counter()
    df = robench.run(config, registry=_registry(), quiet=True)
    assert time.perf_counter() - t0 < 60
    ok = df[(df["defense"] == "standard") & (df["attack"].isin(["clean", "fgsm"]))]
    assert (ok["status"] == "ok").all() and len(ok) == 2
    hung = df[(df["defense"] == "standard") & (df["attack"] == "hangs")]
    assert list(hung["status"]) == ["error", "error"]
    assert (
        hung["error"]
        .str.contains(
            r"standard: hangs linf eps=0\.[12] took more than 1 s \(\[execution\] cell_timeout\)"
        )
        .all()
    )
    slow = df[df["defense"] == "slow"]
    assert (slow["status"] == "error").all()
    clean = slow[slow["attack"] == "clean"]["error"].item()
    assert "training slow took more than 10 s ([execution] train_timeout)" in clean
    assert df.attrs["failed"] == len(hung) + len(slow)


def test_the_limits_come_from_the_command_line_too(tmp_path):
    path = tmp_path / "bench.toml"
    path.write_text(
        'name = "t"\n[dataset]\nname = "digits"\n[model]\nname = "small-cnn"\n'
        "[training]\nepochs = 1\n[evaluation]\nn_examples = 60\nsanity = false\n"
        '[[defenses]]\nname = "standard"\n[[attacks]]\nname = "fgsm"\neps = [0.1]\n'
    )
    runner = CliRunner()
    bad = runner.invoke(main, ["validate", str(path), "--set", "execution.cell_timeout=0"])
    assert bad.exit_code == 2
    assert "execution.cell_timeout: Input should be greater than 0" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    typo = runner.invoke(main, ["validate", str(path), "--set", "execution.cell_timout=5"])
    assert typo.exit_code == 2 and "cell_timout" in typo.output
    out = tmp_path / "out"
    ran = runner.invoke(main, ["run", str(path), "-q", "-o", str(out), "--cell-timeout", "600"])
    assert ran.exit_code == 0, ran.output
    provenance = json.loads((out / "results.json").read_text())
    assert provenance["config"]["execution"]["cell_timeout"] == 600
    assert "execution.cell_timeout=600.0" in provenance["overrides"]
    assert runner.invoke(main, ["run", str(path), "--train-timeout", "0"]).exit_code == 2


def test_an_invalid_limit_in_the_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"execution\.train_timeout: Input should be a valid"):
        robench.run(_config(tmp_path, train_timeout="soon"), registry=_registry(), quiet=True)


def test_limits_nest_and_the_outer_one_still_fires():
    with pytest.raises(CellTimeout, match=r"outer took more than 0\.3 s"):  # noqa: SIM117
        with time_limit(0.3, "outer", "test"):
            with time_limit(5, "inner", "test"):
                time.sleep(0.1)
            time.sleep(2)
    with time_limit(None, "nothing", "test"):  # no limit: nothing fires
        time.sleep(0.05)
