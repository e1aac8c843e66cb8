"""The Ray executor: the same table as the local one, from tasks on a local Ray cluster (two
worker CPUs on 127.0.0.1, started by the first run and stopped at the end); bad input is one
line."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

import robench
from robench.advexamples import read_examples
from robench.errors import ConfigError

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")

pytestmark = pytest.mark.slow

#: columns that time the run, or say where it ran
TIMING = ["seconds", "train_seconds"]


def _config(out, **execution):
    return {
        "name": "ray-tiny",
        "seed": 0,
        "threads": 1,  # the same float reductions in every process
        "output_dir": str(out),
        "dataset": {"name": "digits"},
        "model": {"name": "small-cnn"},
        "training": {"epochs": 1, "lr": 3e-3, "train_examples": 400},
        "evaluation": {"n_examples": 90, "batch_size": 64, "sanity": False},
        "execution": execution,
        "defenses": [
            {"name": "standard"},
            {"name": "mixed", "label": "fgsm-mixed", "attack": {"name": "fgsm", "eps": 0.1}},
            {"name": "adversarial", "label": "pgd-at", "attack": {"name": "pgd", "eps": 0.1}},
        ],
        "attacks": [
            {"name": "fgsm", "eps": [0.1, 0.2]},
            {"name": "pgd", "eps": [0.1], "steps": 5},
            {"name": "fgsm", "label": "fgsm-from-standard", "source": "standard", "eps": [0.1]},
        ],
    }


@pytest.fixture(scope="module", autouse=True)
def _stop_the_cluster():
    yield
    if ray.is_initialized():
        ray.shutdown()


def test_the_ray_table_is_the_local_table(tmp_path):
    local = robench.run(_config(tmp_path / "local"), quiet=True)
    distributed = robench.run(_config(tmp_path / "ray", executor="ray", workers=2), quiet=True)
    assert distributed.attrs["failed"] == local.attrs["failed"] == 0
    pd.testing.assert_frame_equal(
        distributed.drop(columns=TIMING).reset_index(drop=True),
        local.drop(columns=TIMING).reset_index(drop=True),
    )
    provenance = pd.read_json(tmp_path / "ray" / "results.json", typ="series")
    assert provenance["executor"]["name"] == "ray"
    assert provenance["executor"]["tasks"] == 6  # 3 trainings, 3 evaluations
    assert provenance["cells"]["computed"] == 0  # the driver's pass only reads the tasks' cells
    assert not (tmp_path / "ray" / ".tasks").exists() or not any(
        (tmp_path / "ray" / ".tasks").iterdir()
    )
    # the kept adversarial examples come back from the tasks too (the report's grid)
    kept = {where: sorted(m.cells) for where, m in read_examples(tmp_path / "ray").items()}
    assert kept and kept == {
        where: sorted(m.cells) for where, m in read_examples(tmp_path / "local").items()
    }

    # run again: every cell is reused, and the tasks find the trained models
    again = robench.run(_config(tmp_path / "ray", executor="ray", workers=2), quiet=True)
    pd.testing.assert_frame_equal(
        again.drop(columns=TIMING).reset_index(drop=True),
        local.drop(columns=TIMING).reset_index(drop=True),
    )


def test_a_worker_killed_mid_task_loses_its_cells_and_a_rerun_completes_them(tmp_path, monkeypatch):
    """The evaluation task's worker is killed (SIGKILL) at its second cell write (no retry):
    the model's other cells become errors naming the failed task, the cell written before the
    kill is kept, and a rerun without the fault gives the local table."""
    config = _config(tmp_path / "out", executor="ray", workers=2, max_retries=0)
    config["defenses"] = config["defenses"][:1]
    if ray.is_initialized():
        ray.shutdown()  # the workers of a new local cluster inherit the driver's environment
    monkeypatch.setenv("ROBENCH_KILL_AT", "cell-write:2")
    try:
        broken = robench.run(config, quiet=True)
    finally:
        ray.shutdown()
    monkeypatch.delenv("ROBENCH_KILL_AT")
    assert broken.attrs["failed"] > 0
    errors = broken.loc[broken["status"] == "error", "error"]
    assert errors.str.contains("not computed by the executor's task: its eval task failed").all()
    kept = broken[(broken["status"] == "ok") & (broken["attack"] != "worst-case")]
    assert list(kept["attack"]) == ["clean"]  # written before the worker died: recovered

    fixed = robench.run(config, quiet=True)
    local = robench.run(_config(tmp_path / "local") | {"defenses": config["defenses"]}, quiet=True)
    assert fixed.attrs["failed"] == 0
    pd.testing.assert_frame_equal(
        fixed.drop(columns=TIMING).reset_index(drop=True),
        local.drop(columns=TIMING).reset_index(drop=True),
    )


def test_a_request_no_node_can_satisfy_is_one_line_before_anything_trains(tmp_path):
    config = _config(tmp_path / "out", executor="ray", workers=2, train_gpus=1)
    with pytest.raises(ConfigError, match=r"no node of the cluster has 1 CPUs and 1 GPUs"):
        robench.run(config, quiet=True)
    assert not (tmp_path / "out" / "models").exists()


def test_unreachable_address_and_missing_ray_are_one_line(tmp_path):
    path = tmp_path / "bench.toml"
    path.write_text(
        'name = "t"\n[dataset]\nname = "digits"\n[model]\nname = "small-cnn"\n'
        '[[defenses]]\nname = "standard"\n[[attacks]]\nname = "fgsm"\neps = [0.1]\n'
    )
    cli = [sys.executable, "-m", "robench.cli", "run", str(path), "-q", "-o", str(tmp_path)]
    unreachable = subprocess.run([*cli, "--address", "127.0.0.1:1"], capture_output=True, text=True)
    assert unreachable.returncode == 2
    assert unreachable.stderr.strip().splitlines() == [
        "Error: execution.address: cannot reach the Ray cluster at 127.0.0.1:1: Connection refused"
    ]
    no_ray = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['ray'] = None; from robench.cli import main; main()",
            *cli[3:],
            "--executor",
            "ray",
        ],
        capture_output=True,
        text=True,
    )
    assert no_ray.returncode == 2
    assert no_ray.stderr.strip().splitlines() == [
        'Error: execution.executor: the ray executor needs Ray: pip install -e ".[ray]" '
        "(or pip install 'ray>=2.9')"
    ]
