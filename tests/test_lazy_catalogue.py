"""The catalogue cache: robench lists plugins without importing them, and imports a plugin
(its library too) only when one of its names is used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import install_plugin

PLUGIN = '''
"""A plugin whose import fails while $BREAK_TINY_LAZY is set."""
import os

import robench
from robench.attacks.fgsm import FGSM

if os.environ.get("BREAK_TINY_LAZY"):
    raise RuntimeError("broken on purpose")


class Lazy(FGSM):
    """DESCRIPTION"""

    name = "tiny-lazy"


@robench.hookimpl
def robench_register_attacks(register):
    register(Lazy)


@robench.hookimpl
def robench_register_exclusions(exclude):
    exclude("attack", "tiny-excluded", "left out on purpose")
'''

PROBE = """
import json, sys
from robench.registry import get_registry
reg = get_registry()
listed = {x.name: x.description for x in reg.listings("attack")}
out = {
    "listed": listed.get("tiny-lazy"),
    "art_listed": any(n.startswith("art.") for n in listed),
    "imported_before": sorted(
        m for m in ("torch", "art", "foolbox", "robench_art", "robench_foolbox", "tiny_lazy")
        if m in sys.modules
    ),
    "failures": [f.message for f in reg.failures],
}
try:
    out["cls"] = reg.get("attack", "tiny-lazy").cls.__module__
except Exception as exc:
    out["error"] = str(exc)
try:
    reg.get("attack", "tiny-excluded")
except Exception as exc:
    out["excluded"] = str(exc)
out["imported_after"] = sorted(m for m in ("torch", "tiny_lazy") if m in sys.modules)
print(json.dumps(out))
"""


def _install(root: Path, description: str) -> Path:
    source = PLUGIN.replace("DESCRIPTION", description)
    return install_plugin(root, "tiny_lazy", source, "robench-tiny-lazy", "tinylazy")


def _probe(site: Path, cache: Path, **env: str) -> dict:
    environ = {**os.environ, "PYTHONPATH": str(site), "ROBENCH_CATALOGUE": str(cache), **env}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=environ, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_plugins_are_listed_from_the_cache_and_imported_on_use(tmp_path):
    site, cache = _install(tmp_path, "A tiny lazy FGSM."), tmp_path / "catalogue.json"
    first = _probe(site, cache)  # no cache yet: everything is imported, the cache written
    assert first["listed"] == "A tiny lazy FGSM." and "tiny_lazy" in first["imported_before"]
    assert cache.is_file()
    second = _probe(site, cache)
    # listed without importing any plugin, library or torch; the used plugin imported on get
    assert second["imported_before"] == [] and second["listed"] == "A tiny lazy FGSM."
    assert second["cls"] == "tiny_lazy" and second["imported_after"] == ["tiny_lazy", "torch"]
    assert second["excluded"] == (
        "attack 'tiny-excluded' is excluded by plugin 'tinylazy' (robench-tiny-lazy 0.0.1): "
        "left out on purpose"
    )
    assert second["art_listed"] == first["art_listed"]
    assert not second["failures"]


@pytest.mark.slow
def test_a_cached_plugin_that_fails_when_built_is_one_line_naming_it(tmp_path):
    site, cache = _install(tmp_path, "A tiny lazy FGSM."), tmp_path / "catalogue.json"
    _probe(site, cache)
    broken = _probe(site, cache, BREAK_TINY_LAZY="1")
    assert broken["listed"] == "A tiny lazy FGSM."  # still listed from the cache ...
    message = broken["error"]  # ... and its use fails in one line naming the plugin
    assert message == (
        "attack 'tiny-lazy' of plugin 'tinylazy' (robench-tiny-lazy 0.0.1) could not be built: "
        "RuntimeError: broken on purpose (skip it with ROBENCH_BLOCK_PLUGINS=tinylazy)"
    )
    assert broken["failures"] == []  # nothing failed until the plugin was needed


@pytest.mark.slow
def test_an_edited_plugin_is_imported_again(tmp_path):
    cache = tmp_path / "catalogue.json"
    site = _install(tmp_path, "First description.")
    assert _probe(site, cache)["listed"] == "First description."
    site = _install(tmp_path, "Second, longer description.")  # new file: a new cache key
    again = _probe(site, cache)
    assert again["listed"] == "Second, longer description."
    assert "tiny_lazy" in again["imported_before"]


def test_list_prints_the_same_from_the_cache_as_from_the_plugins(tmp_path):
    env = {**os.environ, "ROBENCH_CATALOGUE": str(tmp_path / "c.json")}

    def listing(**extra: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "robench.cli", "list", "--params"],
            env={**env, **extra},
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    fresh = listing(ROBENCH_CATALOGUE="off")
    assert listing() == fresh  # writes the cache
    assert listing() == fresh  # reads it
