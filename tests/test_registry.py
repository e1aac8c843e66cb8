"""The plugin registry: built-ins, entry-point discovery, duplicates and broken plugins."""

from __future__ import annotations

import inspect
import json
import re
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

import robench
from robench import hookspecs
from robench.api import Attack
from robench.cli import main
from robench.registry import KINDS, build_registry, get_registry
from tests.helpers import install_plugin

PLUGIN_SOURCE = '''
"""A tiny third-party robench plugin: one attack."""
import torch
import robench
from robench.api import Attack


class SignNoise(Attack):
    """Random ±ε sign noise (a test plugin)."""

    name = "tiny-sign-noise"

    def run(self, model, x, y):
        return x + self.threat.eps * torch.randn_like(x).sign()


@robench.hookimpl
def robench_register_attacks(register):
    register(SignNoise)
'''


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """A real distribution, 'robench-tiny-plugin', built and installed into a folder."""
    root = tmp_path_factory.mktemp("plugin")
    return install_plugin(root, "robench_tiny_plugin", PLUGIN_SOURCE, "robench-tiny-plugin", "tiny")


@pytest.fixture
def installed(plugin_site, monkeypatch):
    """Make the tiny plugin importable and discoverable for one test."""
    monkeypatch.syspath_prepend(str(plugin_site))
    get_registry.cache_clear()
    yield plugin_site
    sys.modules.pop("robench_tiny_plugin", None)
    get_registry.cache_clear()


def test_builtins_are_registered_through_the_hooks():
    reg = build_registry(entry_points=False)
    assert {"fgsm", "pgd"} <= set(reg.names("attack"))
    assert {"standard", "adversarial", "mixed"} <= set(reg.names("defense"))
    assert {"small-cnn", "mnist-cnn", "cifar-cnn", "preact-resnet18"} <= set(reg.names("model"))
    assert {"digits", "mnist", "cifar10", "npz"} <= set(reg.names("dataset"))
    for e in reg.entries():
        assert e.distribution == "robench" and e.version == robench.__version__
        assert e.plugin.startswith("robench.") and e.description


def test_every_hookspec_is_documented_and_used_by_the_builtins():
    specs = [f for name, f in inspect.getmembers(hookspecs) if name.startswith("robench_")]
    assert len(specs) == len(KINDS) + 1  # a registration hook per kind, and the exclusions
    reg = build_registry(entry_points=False)
    for spec in specs:
        assert inspect.getdoc(spec)
    for kind in KINDS:
        assert reg.names(kind), kind


def test_entry_point_plugin_is_discovered_and_attributed(installed):
    reg = build_registry()
    entry = reg.get("attack", "tiny-sign-noise")
    assert (entry.plugin, entry.distribution, entry.version) == (
        "tiny",
        "robench-tiny-plugin",
        "0.0.1",
    )
    assert issubclass(entry.cls, Attack)


def test_robench_list_shows_plugin_and_distribution(installed):
    result = CliRunner().invoke(main, ["list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {(r["kind"], r["name"]): r for r in json.loads(result.output)}
    assert rows[("attack", "tiny-sign-noise")]["distribution"] == "robench-tiny-plugin"
    assert rows[("attack", "pgd")]["distribution"] == "robench"
    text = CliRunner().invoke(main, ["list", "--kind", "attack"]).output
    assert "tiny-sign-noise" in text and "robench-tiny-plugin 0.0.1" in text
    assert "standard" not in text


def test_escape_hatches_skip_installed_plugins(installed, monkeypatch):
    monkeypatch.setenv("ROBENCH_DISABLE_PLUGINS", "1")
    assert "tiny-sign-noise" not in build_registry().names("attack")
    monkeypatch.delenv("ROBENCH_DISABLE_PLUGINS")
    monkeypatch.setenv("ROBENCH_BLOCK_PLUGINS", "tiny")
    assert "tiny-sign-noise" not in build_registry().names("attack")
    monkeypatch.delenv("ROBENCH_BLOCK_PLUGINS")
    monkeypatch.setenv("ROBENCH_PLUGINS", "tiny")
    assert "tiny-sign-noise" in build_registry().names("attack")


def _module(name: str, **functions) -> types.ModuleType:
    mod = types.ModuleType(name)
    for fname, f in functions.items():
        setattr(mod, fname, f)
    return mod


def test_duplicate_name_fails_the_later_plugin_naming_both():
    class AnotherFGSM(Attack):
        """Clashes with the built-in."""

        name = "fgsm"

        def run(self, model, x, y):
            return x

    class Harmless(Attack):
        """Registered by the same plugin: dropped with it (a failed plugin adds nothing)."""

        name = "harmless"

        def run(self, model, x, y):
            return x

    @robench.hookimpl
    def robench_register_attacks(register):
        register(Harmless)
        register(AnotherFGSM)

    plugin = _module("clashing_plugin", robench_register_attacks=robench_register_attacks)
    reg = build_registry(entry_points=False, plugins=[plugin])
    assert reg.get("attack", "fgsm").plugin == "robench.attacks"  # the first one wins
    assert "harmless" not in reg.names("attack")
    [failure] = reg.failures
    assert failure.plugin == "clashing_plugin"
    assert "duplicate attack name 'fgsm'" in failure.message
    assert "'robench.attacks'" in failure.message and "clashing_plugin" in failure.message


def test_misspelled_hook_fails_that_plugin_loudly():
    @robench.hookimpl
    def robench_register_atacks(register):  # typo
        pass

    plugin = _module("typo_plugin", robench_register_atacks=robench_register_atacks)
    reg = build_registry(entry_points=False, plugins=[plugin])
    [failure] = reg.failures
    assert "unknown hook 'robench_register_atacks'" in failure.message
    assert "did you mean 'robench_register_attacks'" in failure.message
    assert "pgd" in reg.names("attack")


def test_registering_something_that_is_not_a_plugin_class_fails():
    @robench.hookimpl
    def robench_register_defenses(register):
        register(object)

    plugin = _module("bad_plugin", robench_register_defenses=robench_register_defenses)
    [failure] = build_registry(entry_points=False, plugins=[plugin]).failures
    assert re.search(r"bad_plugin.*is no Defense", failure.message)


def test_unknown_name_suggests_the_closest():
    from robench.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean 'pgd'"):
        build_registry(entry_points=False).get("attack", "pdg")
