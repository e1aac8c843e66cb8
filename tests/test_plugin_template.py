"""`robench plugin new`: the template plugin installs, passes its own contract test and runs in a
benchmark."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
from click.testing import CliRunner

from robench.cli import main
from tests.helpers import pip_install


@pytest.mark.slow
def test_a_new_plugin_installs_passes_its_tests_and_runs(tmp_path):
    out = CliRunner().invoke(main, ["plugin", "new", "my-attacks", "--dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    folder = tmp_path / "my-attacks"
    lines = sum(len(p.read_text().splitlines()) for p in folder.rglob("*") if p.is_file())
    assert lines < 150  # small enough to read in a minute
    site = pip_install(folder, tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": str(site), "ROBENCH_CATALOGUE": str(tmp_path / "c.json")}
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
    )
    assert tests.returncode == 0, tests.stdout[-2000:] + tests.stderr[-2000:]
    assert "2 passed" in tests.stdout
    run = subprocess.run(
        [sys.executable, "-m", "robench.cli", "run", "benchmark.toml", "-q", "--no-report"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    df = pd.read_csv(folder / "results" / "results.csv")
    assert set(df["status"]) == {"ok"}
    mine = df[df["attack"] == "my_attacks.random-step"].set_index("eps")["accuracy"]
    pgd = df[df["attack"] == "pgd"].set_index("eps")["accuracy"]
    clean = float(df[df["attack"] == "clean"]["accuracy"].iloc[0])
    assert list(mine.index) == [0.1, 0.2]
    assert (mine < clean).all() and (mine >= pgd).all()  # it attacks, and PGD is stronger


@pytest.mark.parametrize(
    ("name", "expected"),
    [("9lives", "expected letters and digits"), ("class", "is a Python keyword")],
)
def test_bad_plugin_names_are_one_line(tmp_path, name, expected):
    out = CliRunner().invoke(main, ["plugin", "new", name, "--dir", str(tmp_path)])
    assert out.exit_code == 2 and expected in out.output and out.output.count("\n") == 1


def test_an_existing_folder_is_not_overwritten(tmp_path):
    (tmp_path / "mine").mkdir()
    out = CliRunner().invoke(main, ["plugin", "new", "mine", "--dir", str(tmp_path)])
    assert out.exit_code == 2 and "exists already" in out.output
