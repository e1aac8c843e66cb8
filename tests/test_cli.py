"""Every command through click's test runner."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from robench.cli import main

from .helpers import tiny_config

COMMANDS = ["run", "validate", "list", "leaderboard"]


@pytest.mark.parametrize("command", [[], *[[c] for c in COMMANDS]])
def test_help(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_help_does_not_import_torch():
    code = "import sys; from robench.cli import main; sys.argv=['robench','--help']\n"
    code += "try:\n    main()\nexcept SystemExit:\n    pass\n"
    code += "assert 'torch' not in sys.modules and 'pandas' not in sys.modules, 'heavy import'"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


VALIDATE_PROBE = """
import json, sys
from robench.cli import main
sys.argv = ["robench", "validate", "benchmarks/quickstart.toml"]
try:
    main()
except SystemExit as exc:
    status = exc.code
heavy = [m for m in ("torch", "sklearn", "scipy", "numpy", "pandas") if m in sys.modules]
print(json.dumps({"status": status, "heavy": heavy}))
"""


def test_validate_imports_neither_torch_nor_sklearn(tmp_path, monkeypatch):
    # a new process with the catalogue cache warm (every plugin listed from it): the
    # quickstart's built-ins validate with their torch-free bases (robench/*/bases.py)
    from robench.registry import build_registry

    monkeypatch.setenv("ROBENCH_CATALOGUE", str(tmp_path / "catalogue.json"))
    build_registry()
    done = subprocess.run(
        [sys.executable, "-c", VALIDATE_PROBE],
        cwd=Path(__file__).resolve().parents[1],
        env=os.environ,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "benchmarks/quickstart.toml: ok (" in done.stdout, done.stdout + done.stderr
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert probe == {"status": 0, "heavy": []}, done.stderr


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and "0.1.0" in result.output


def test_list_plain_and_json():
    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 0
    for heading in ("datasets:", "models:", "defenses:", "attacks:"):
        assert heading in result.output
    rows = json.loads(CliRunner().invoke(main, ["list", "--json"]).output)
    assert {"kind", "name", "plugin", "distribution", "version", "description"} <= set(rows[0])
    pgd = next(r for r in rows if (r["kind"], r["name"]) == ("attack", "pgd"))
    steps = next(p for p in pgd["params"] if p["name"] == "steps")
    assert steps["type"] == "int" and steps["default"] == 10 and not steps["required"]
    mixed = next(r for r in rows if (r["kind"], r["name"]) == ("defense", "mixed"))
    assert next(p for p in mixed["params"] if p["name"] == "attack")["required"]
    verbose = CliRunner().invoke(main, ["list", "--params", "--kind", "attack"]).output
    assert "loss: Literal['ce', 'margin'], default 'ce'" in verbose


def test_list_narrows_to_names_and_patterns():
    result = CliRunner().invoke(main, ["list", "pgd", "fgs*"])
    assert result.exit_code == 0
    names = [line.split()[0] for line in result.output.splitlines() if line.startswith("    ")]
    assert names == ["fgsm", "pgd"]
    missing = CliRunner().invoke(main, ["list", "no-such-attack"])
    assert missing.exit_code == 2 and "nothing registered matches no-such-attack" in missing.output


def _toml(tmp_path, **overrides) -> str:
    """Write tiny_config as TOML (tomllib has no writer; the structure is simple)."""
    c = tiny_config(tmp_path, **overrides)

    def value(v):
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, bool):
            return str(v).lower()
        return repr(v)

    lines = [f"{k} = {value(c[k])}" for k in ("name", "seed", "output_dir")]
    for table in ("dataset", "model", "training", "evaluation"):
        lines.append(f"[{table}]")
        lines += [f"{k} = {value(v)}" for k, v in c[table].items()]
    for array in ("defenses", "attacks"):
        for item in c[array]:
            lines.append(f"[[{array}]]")
            lines += [f"{k} = {value(v)}" for k, v in item.items()]
    path = tmp_path / "tiny.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_validate_run_and_leaderboard(tmp_path):
    path = _toml(
        tmp_path,
        defenses=[
            {"name": "standard"},
            {"name": "adversarial", "label": "fgsm-at", "attack": {"name": "fgsm", "eps": 0.2}},
        ],
    )

    result = CliRunner().invoke(main, ["validate", path])
    assert result.exit_code == 0, result.output
    assert "ok (2 defenses × 4 attack budgets" in result.output

    out = tmp_path / "elsewhere"
    result = CliRunner().invoke(main, ["run", path, "--output-dir", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "fgsm linf 0.1" in result.output and "fgsm-at" in result.output
    assert (out / "results.csv").is_file() and (out / "results.json").is_file()

    board_csv = tmp_path / "board.csv"
    result = CliRunner().invoke(main, ["leaderboard", str(out), "-o", str(board_csv)])
    assert result.exit_code == 0, result.output
    board = pd.read_csv(board_csv)
    assert list(board["rank"]) == [1, 2]
    assert set(board["defense"]) == {"standard", "fgsm-at"}
    assert list(board["flagged"]) == sorted(board["flagged"])  # flagged defenses last
    for _, same in board.groupby("flagged"):
        assert same["robust_accuracy"].is_monotonic_decreasing
    assert (board["ranked_at"] == "linf 0.2").all()
    assert {"clean_accuracy", "robust linf 0.1", "robust_ci95", "strongest_attack"} <= set(
        board.columns
    )

    board_md = tmp_path / "board.md"
    result = CliRunner().invoke(main, ["leaderboard", str(out), "-o", str(board_md)])
    assert result.exit_code == 0, result.output
    lines = board_md.read_text().splitlines()
    assert lines[0].startswith("| rank | defense |") and lines[1].startswith("|---|")
    assert len(lines) == 2 + 2 and "robust_ci95" in lines[0] and "flags" in lines[0]

    result = CliRunner().invoke(main, ["leaderboard", str(out), "--eps", "0.1"])
    assert result.exit_code == 0 and "linf 0.1" in result.output
    result = CliRunner().invoke(main, ["leaderboard", str(out), "--eps", "0.3"])
    assert result.exit_code == 2 and "no worst-case results at linf 0.3" in result.output
    result = CliRunner().invoke(main, ["leaderboard", str(tmp_path)])
    assert result.exit_code == 2 and "no results.csv" in result.output


def _stored_cells(out) -> int:
    """The cells a run has stored so far (its cell store, robench.cellstore)."""
    import sqlite3

    if not (out / "cells.sqlite").exists():
        return 0
    with contextlib.closing(sqlite3.connect(out / "cells.sqlite", timeout=10)) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
        except sqlite3.OperationalError:  # the table is being created
            return 0


@pytest.mark.slow
def test_kill_stops_a_run_with_its_finished_cells_and_status_interrupted(tmp_path):
    """`kill` (SIGTERM) on `robench run`: exit 143, one line, the cells finished so far in
    results.partial.csv and its provenance's status "interrupted"."""
    import signal
    import time

    bench = tmp_path / "bench.toml"
    bench.write_text(
        'name = "long"\noutput_dir = "out"\n[dataset]\nname = "digits"\n[model]\n'
        'name = "small-cnn"\n[training]\nepochs = 1\n[evaluation]\nn_examples = 64\n'
        "sanity = false\n"
        + "".join(f'[[defenses]]\nname = "standard"\nlabel = "s{i}"\n' for i in range(50))
        + '[[attacks]]\nname = "pgd"\neps = [0.1]\nsteps = 50\n'
    )
    out = tmp_path / "out"
    code = "from robench.cli import main; main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "run", str(bench), "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            # the first defense's three cells (clean, PGD, PGD's part on the misclassified
            # examples) and one of the next: the first defense's rows are all done
            if _stored_cells(out) >= 4:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    (line,) = [x for x in stderr.splitlines() if x.startswith("Error:")]
    assert line.startswith("Error: stopped by SIGTERM: the finished cells are in ")
    prov = json.loads((out / "results.partial.json").read_text())
    assert prov["status"] == "interrupted" and "SIGTERM" in prov["interrupted"]
    rows = pd.read_csv(out / "results.partial.csv")
    assert len(rows) >= 3 and (rows["status"] == "ok").all()
    assert not (out / "results.csv").exists()


def test_leaderboard_of_a_file_that_is_no_csv_is_one_line(tmp_path):
    for name, data in (("binary.csv", bytes(range(256)) * 4), ("empty.csv", b"")):
        path = tmp_path / name
        path.write_bytes(data)
        result = CliRunner().invoke(main, ["leaderboard", str(path)])
        assert result.exit_code == 2, result.output
        (line,) = result.output.strip().splitlines()
        assert line.startswith(f"Error: {path}: not a robench results table")
