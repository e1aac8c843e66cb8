"""The plugin guide's (docs/plugins.md) "Writing a plugin" example is complete: it builds,
installs an entry point and runs under robench without leaving the ε-ball or the bounds."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import robench
from robench.config import load_benchmark
from robench.errors import ConfigError
from robench.registry import build_registry

from .helpers import tiny_config

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
PY_HEADER = "# my-robench-plugin/my_robench_plugin/__init__.py"
TOML_HEADER = "# my-robench-plugin/pyproject.toml"


def _section() -> str:
    text = GUIDE.read_text()
    start = text.index("## Writing a plugin\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def _block(header: str) -> str:
    """The fenced code block of the section whose first line is ``header``."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", _section(), flags=re.M | re.S)
    [block] = [b for b in blocks if b.startswith(header + "\n")]
    return block


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """The README's plugin written out as the layout it describes."""
    root = tmp_path_factory.mktemp("readme") / "my-robench-plugin"
    (root / "my_robench_plugin").mkdir(parents=True)
    (root / "my_robench_plugin" / "__init__.py").write_text(_block(PY_HEADER))
    (root / "pyproject.toml").write_text(_block(TOML_HEADER))
    return root


def test_the_section_says_how_to_install_and_check_it():
    section = _section()
    assert "pip install -e my-robench-plugin/" in section
    assert "robench list sign-noise" in section


def test_pyproject_is_complete(package):
    meta = tomllib.loads((package / "pyproject.toml").read_text())
    assert meta["build-system"]["build-backend"] == "setuptools.build_meta"
    assert any(r.startswith("setuptools") for r in meta["build-system"]["requires"])
    project = meta["project"]
    assert project["name"] == "my-robench-plugin" and project["version"]
    assert project["dependencies"] == ["robench"]
    assert project["entry-points"]["robench"] == {"my_plugin": "my_robench_plugin"}
    assert meta["tool"]["setuptools"]["packages"] == ["my_robench_plugin"]


@pytest.mark.slow
def test_it_builds_a_wheel_with_the_entry_point(package, tmp_path):
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index"),
            *("--no-build-isolation", "-w", str(tmp_path), str(package)),
        ],
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("my_robench_plugin-0.1.0-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert "my_robench_plugin/__init__.py" in names
        [ep] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_points = z.read(ep).decode()
    assert re.search(r"^\[robench\]\s*\nmy_plugin = my_robench_plugin\s*$", entry_points, re.M)


@pytest.mark.slow
def test_its_attack_runs_inside_the_budget_and_the_bounds(package, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(package))
    module = importlib.import_module("my_robench_plugin")
    try:
        registry = build_registry(entry_points=False, plugins=[module])
        assert registry.failures == []
        entry = registry.get("attack", "sign-noise")
        assert entry.description == "Random ±ε sign noise, kept inside the image bounds."
        config = tiny_config(
            tmp_path,
            training={"epochs": 1, "lr": 3e-3},
            evaluation={"n_examples": 64, "batch_size": 64, "sanity": False},
            attacks=[
                {"name": "sign-noise", "eps": [0.1, 0.3]},
                {"name": "sign-noise", "label": "half", "eps": [0.3], "scale": 0.5},
            ],
        )
        df = robench.run(config, registry=registry, output_dir=tmp_path / "out", quiet=True)
        too_big = {**config, "attacks": [{"name": "sign-noise", "eps": [0.1], "scale": 2.0}]}
        with pytest.raises(ConfigError, match=r"attacks\[0\]\.scale"):
            load_benchmark(too_big, registry=registry, check_data=False)
    finally:
        sys.modules.pop("my_robench_plugin", None)
    rows = df[df["attack_name"] == "sign-noise"]
    assert len(rows) == 3
    assert (rows["status"] == "ok").all()
    assert (rows["n_violations"] == 0).all(), rows[["attack", "eps", "n_violations"]]
