"""Registration hooks are called the pluggy way (wrappers work), and excluded names answer with
their reason."""

from __future__ import annotations

import json

import pytest

import robench
from robench.attacks.fgsm import FGSM
from robench.errors import ConfigError
from robench.registry import build_registry, get_registry
from tests.helpers import plugin_module


class Renamed(FGSM):
    """FGSM under another name."""

    name = "wrapped-fgsm"


def test_a_wrapper_hookimpl_runs_around_the_plugins_own_hook():
    calls: list[str] = []

    @robench.hookimpl(wrapper=True)
    def robench_register_attacks(register):
        calls.append("before")
        result = yield
        register(Renamed)
        calls.append("after")
        return result

    class Plain:
        @robench.hookimpl
        def robench_register_attacks(self, register):
            calls.append("plain")

    wrapper = plugin_module("wrapper_plugin", robench_register_attacks=robench_register_attacks)
    reg = build_registry(entry_points=False, plugins=[wrapper, Plain()])
    assert not reg.failures, reg.failures
    assert reg.get("attack", "wrapped-fgsm").cls is Renamed
    # each plugin's hooks are called on their own: the wrapper wraps nothing of Plain's
    assert calls == ["before", "after", "plain"]


def test_an_old_style_hookwrapper_works_too():
    @robench.hookimpl(hookwrapper=True)
    def robench_register_attacks(register):
        register(Renamed)
        yield

    mod = plugin_module("old_wrapper", robench_register_attacks=robench_register_attacks)
    reg = build_registry(entry_points=False, plugins=[mod])
    assert not reg.failures and ("attack", "wrapped-fgsm") in reg


def test_an_excluded_name_answers_with_its_reason():
    @robench.hookimpl
    def robench_register_exclusions(exclude):
        exclude("attack", "mine.PixelAttack", "an L0 attack: no L∞ or L2 threat model")

    mod = plugin_module("mine", robench_register_exclusions=robench_register_exclusions)
    reg = build_registry(entry_points=False, plugins=[mod])
    [x] = reg.excluded.values()
    assert (x.kind, x.name, x.plugin) == ("attack", "mine.PixelAttack", "mine")
    with pytest.raises(ConfigError) as err:
        reg.get("attack", "mine.PixelAttack")
    assert str(err.value) == (
        "attack 'mine.PixelAttack' is excluded by plugin 'mine': an L0 attack: no L∞ or L2 "
        "threat model"
    )
    with pytest.raises(ConfigError, match="unknown defense"):  # not excluded as a defense
        reg.get("defense", "mine.PixelAttack")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("weapon", "x", "why"), "expected a kind among"),
        (("attack", "bad name", "why"), "expected a kind among"),
        (("attack", "x", " "), "without a reason"),
    ],
)
def test_a_bad_exclusion_fails_its_plugin_in_one_line(args, expected):
    @robench.hookimpl
    def robench_register_exclusions(exclude):
        exclude(*args)

    mod = plugin_module("bad_excl", robench_register_exclusions=robench_register_exclusions)
    reg = build_registry(entry_points=False, plugins=[mod])
    [f] = reg.failures
    assert expected in f.message and "\n" not in f.message and not reg.excluded


def test_the_adapters_say_why_a_library_class_is_left_out():
    pytest.importorskip("robench_art")
    pytest.importorskip("robench_foolbox")
    from robench_art.catalogue import EXCLUDED, EXCLUDED_DEFENCES
    from robench_foolbox.catalog import EXCLUDED as FOOLBOX_EXCLUDED

    reg = build_registry()
    with pytest.raises(ConfigError) as err:
        reg.get("attack", "art.PixelAttack")
    assert str(err.value) == (
        f"attack 'art.PixelAttack' is excluded by plugin 'art' (robench-art 0.1.0): "
        f"{EXCLUDED['PixelAttack']}"
    )
    with pytest.raises(ConfigError, match=r"excluded by plugin 'foolbox' .*L∞ or L2"):
        reg.get("attack", "foolbox.EADAttack")
    defence = next(iter(EXCLUDED_DEFENCES))
    with pytest.raises(ConfigError, match="excluded by plugin 'art'"):
        reg.get("defense", f"art.{defence}")
    names = {name for _, name in reg.excluded}
    assert {f"foolbox.{n}" for n in FOOLBOX_EXCLUDED} <= names
    assert not {name for _, name in reg.excluded} & set(reg.names("attack"))


def test_list_excluded_shows_every_excluded_name_with_its_reason():
    pytest.importorskip("robench_art")
    from click.testing import CliRunner
    from robench_art.catalogue import EXCLUDED_DEFENCES

    from robench.cli import main

    get_registry.cache_clear()  # a registry of the ART plugin alone (and the built-ins)
    runner = CliRunner(env={"ROBENCH_PLUGINS": "art"})
    out = runner.invoke(main, ["list", "--excluded", "--kind", "defense"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0] == "robench-art 0.1.0 (art):"
    for name, reason in EXCLUDED_DEFENCES.items():
        assert f"  defense art.{name}: {reason}" in lines
    js = runner.invoke(main, ["list", "--excluded", "--json", "--kind", "attack", "art.Pixel*"])
    get_registry.cache_clear()
    assert [r["name"] for r in json.loads(js.output)] == ["art.PixelAttack"]
