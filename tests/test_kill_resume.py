"""kill -9 at any moment, then the same command: the final table equals an uninterrupted run's,
and no finished cell (nor a finished training epoch) is computed again.

Each test runs the benchmark in a child process that sends itself SIGKILL at a crash point
(:mod:`robench.faults`: inside a cell's SQLite transaction, between a file's write and its
rename, between a model's weights and its sidecar, after an epoch's checkpoint) or is killed
from outside between cells; then runs it again to the end.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import robench
from robench.results import read_results
from robench.store import ModelStore

from .helpers import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

#: columns that measure time, not results
TIMING = ["seconds", "train_seconds"]


def _config(out: Path) -> dict:
    """Two defenses (one adversarially trained, ε warm-up included), three epochs each, two
    attacks at two budgets, the sanity attacks: every kind of cell, quick."""
    config = tiny_config(
        out.parent,
        defenses=[
            {"name": "standard", "label": "plain"},
            {
                "name": "adversarial",
                "label": "at",
                "attack": {"name": "pgd", "eps": 0.1, "steps": 2},
                "eps_warmup": 0.5,
            },
        ],
        evaluation={"n_examples": 60, "batch_size": 32},
        threads=1,
    )
    config["output_dir"] = str(out)
    return config


def _child(config: dict, kill_at: str | None = None) -> subprocess.Popen:
    """The benchmark in a child process (built-in plugins only: a quick start), which kills
    itself at ``kill_at`` (``"point:n"``) if given."""
    code = (
        "import json, sys\n"
        "import robench\n"
        "from robench.registry import build_registry\n"
        "robench.run(json.loads(sys.argv[1]), registry=build_registry(entry_points=False),"
        " quiet=True)\n"
    )
    env = dict(os.environ)
    env.pop("ROBENCH_KILL_AT", None)
    if kill_at:
        env["ROBENCH_KILL_AT"] = kill_at
    return subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stored(out: Path) -> dict[str, str]:
    """The cells stored so far: key → when it was stored."""
    path = out / "cells.sqlite"
    if not path.exists():
        return {}
    db = sqlite3.connect(path, timeout=30)
    try:
        return dict(db.execute("SELECT key, created FROM cells").fetchall())
    except sqlite3.OperationalError:  # being created
        return {}
    finally:
        db.close()


def _results(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=TIMING).reset_index(drop=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "out"
    child = _child(_config(out))
    _, err = child.communicate(timeout=600)
    assert child.returncode == 0, err
    return read_results(out / "results.csv")


def _killed_then_resumed(tmp_path, uninterrupted, kill_at: str) -> tuple[dict, dict, dict]:
    """Kill a run at ``kill_at``, run it again to the end; return the cells stored when it
    was killed, those after, and the resumed run's provenance."""
    out = tmp_path / "out"
    child = _child(_config(out), kill_at)
    _, err = child.communicate(timeout=600)
    assert child.returncode == -signal.SIGKILL, f"not killed at {kill_at}: {err}"
    assert not (out / "results.csv").exists()
    before = _stored(out)
    again = _child(_config(out))
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    final = read_results(out / "results.csv")
    pd.testing.assert_frame_equal(_results(final), _results(uninterrupted))
    after = _stored(out)
    # no finished cell was computed again: each is stored as it was
    assert {k: after[k] for k in before} == before
    assert not list(out.glob("*.partial.*")) and not list(out.glob("results.interrupted-*"))
    assert not list(out.rglob(".*.tmp"))  # no temporary file of a write left behind
    prov = json.loads((out / "results.json").read_text())
    assert prov["status"] == "complete"
    return before, after, prov


def test_killed_during_training_resumes_at_the_last_finished_epoch(tmp_path, uninterrupted):
    # the 5th epoch checkpoint: the adversarial defense's 2nd epoch (the plain one is done)
    before, after, prov = _killed_then_resumed(tmp_path, uninterrupted, "epoch:5")
    assert prov["models"]["resumed"] == [{"key": prov["models"]["stored"][0], "epoch": 2}]
    assert len(prov["models"]["reused"]) == 0  # the plain model's cells were all stored
    assert 0 < len(before) < len(after)
    assert not list((tmp_path / "out" / "models").glob("*.resume.pt"))


def test_killed_inside_a_cell_write_loses_that_cell_alone(tmp_path, uninterrupted):
    before, _, prov = _killed_then_resumed(tmp_path, uninterrupted, "cell-write:4")
    assert len(before) == 3  # the 4th cell's transaction never committed
    assert prov["cells"]["reused"] >= 2 and prov["cells"]["computed"] > 0


def test_killed_between_a_models_weights_and_its_sidecar_trains_it_again(tmp_path, uninterrupted):
    before, _, prov = _killed_then_resumed(tmp_path, uninterrupted, "model-write:1")
    assert before == {}  # killed before the first model was stored: nothing scored yet
    models = ModelStore(tmp_path / "out").dir
    assert len(list(models.glob("*.json"))) == 2 and len(list(models.glob("*.safetensors"))) == 2
    # its training had checkpointed every epoch: it resumed after the last, training nothing
    assert {r["epoch"] for r in prov["models"]["resumed"]} == {3}


def test_killed_inside_a_file_write_leaves_the_old_file(tmp_path, uninterrupted):
    # the first atomic file write of the run is the provenance's: killed before its rename
    before, _, _ = _killed_then_resumed(tmp_path, uninterrupted, "atomic-write:1")
    assert before == {}


def test_killed_between_cells_from_outside(tmp_path, uninterrupted):
    out = tmp_path / "out"
    child = _child(_config(out))
    try:
        deadline = time.monotonic() + 300
        while len(_stored(out)) < 6 and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.poll() is None, child.communicate()
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
    finally:
        child.kill()
    before = _stored(out)
    again = _child(_config(out))
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert "resuming the run of" not in err  # quiet
    pd.testing.assert_frame_equal(
        _results(read_results(out / "results.csv")), _results(uninterrupted)
    )
    after = _stored(out)
    assert len(before) >= 6 and {k: after[k] for k in before} == before


def test_a_finished_run_again_computes_nothing(tmp_path, uninterrupted):
    out = tmp_path / "out"
    for _ in range(2):
        df = robench.run(_config(out), quiet=True)
    pd.testing.assert_frame_equal(_results(df), _results(uninterrupted))
    cells = json.loads((out / "results.json").read_text())["cells"]
    assert cells["computed"] == 0 and cells["reused"] == int((df["kind"] != "worst-case").sum())
