"""A broken plugin is one line and is left out; every other plugin keeps working.

In-process through ``build_registry(plugins=[...])``, and through real entry points: fake
distributions (a ``*.dist-info`` with ``entry_points.txt``) on ``PYTHONPATH`` of a ``robench``
subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import robench
from robench.api import Attack
from robench.cli import main
from robench.errors import ConfigError
from robench.registry import build_registry

from .helpers import plugin_module, validate_with_attack

REPO = Path(__file__).resolve().parents[1]


class Good(Attack):
    """A working attack of a working plugin."""

    name = "good-noop"

    def run(self, model, x, y):
        return x


@robench.hookimpl
def _register_good(register):
    register(Good)


def _good_plugin():
    return plugin_module("good_plugin", robench_register_attacks=_register_good)


def _raising_plugin():
    class Early(Attack):
        """Registered before the hook fails: must not stay registered."""

        name = "raiser.early"

        def run(self, model, x, y):
            return x

    @robench.hookimpl
    def robench_register_attacks(register):
        register(Early)
        import robench_no_such_module_xyz  # noqa: F401  (like ART missing 'packaging')

    return plugin_module("raiser", robench_register_attacks=robench_register_attacks)


def test_a_hook_that_raises_fails_only_its_plugin_and_registers_nothing():
    reg = build_registry(entry_points=False, plugins=[_raising_plugin(), _good_plugin()])
    assert "good-noop" in reg.names("attack") and "pgd" in reg.names("attack")
    assert "raiser.early" not in reg.names("attack")  # atomic: nothing half-registered
    [f] = reg.failures
    assert (f.plugin, f.distribution, f.version) == ("raiser", "(unknown)", "")
    assert f.message == (
        "plugin 'raiser' failed to load: "
        "ModuleNotFoundError: No module named 'robench_no_such_module_xyz'"
    )
    assert str(f).endswith("(skip it with ROBENCH_BLOCK_PLUGINS=raiser)")
    assert "\n" not in str(f)
    assert f.traceback.startswith("Traceback") and "robench_no_such_module_xyz" in f.traceback


def test_an_unknown_name_names_the_plugins_that_failed():
    reg = build_registry(entry_points=False, plugins=[_raising_plugin()])
    with pytest.raises(ConfigError) as info:
        reg.get("attack", "raiser.pgd")
    message = str(info.value)
    assert message.startswith("unknown attack 'raiser.pgd'")
    assert "plugin 'raiser' failed to load and might have provided it" in message
    assert "ModuleNotFoundError: No module named 'robench_no_such_module_xyz'" in message
    assert "ROBENCH_BLOCK_PLUGINS=raiser" in message and "\n" not in message
    assert reg.get("attack", "pgd").name == "pgd"  # known names are unaffected


@pytest.mark.parametrize(
    "name, expected",
    [
        ("bad name!", "without a valid name (got 'bad name!'"),
        (None, "without a valid name (got None"),
    ],
)
def test_an_invalid_name_fails_the_plugin(name, expected):
    cls = type("Bad", (Attack,), {"__doc__": "Bad.", "run": lambda self, m, x, y: x})
    if name is not None:
        cls.name = name

    @robench.hookimpl
    def robench_register_attacks(register):
        register(cls)

    plugin = plugin_module("badname", robench_register_attacks=robench_register_attacks)
    [f] = build_registry(entry_points=False, plugins=[plugin]).failures
    assert f.plugin == "badname" and expected in f.message


def test_a_bad_hook_signature_fails_the_plugin():
    @robench.hookimpl
    def robench_register_attacks(register, extra):
        pass

    plugin = plugin_module("badsig", robench_register_attacks=robench_register_attacks)
    reg = build_registry(entry_points=False, plugins=[plugin, _good_plugin()])
    [f] = reg.failures
    assert f.message.startswith("plugin 'badsig' failed to load: bad hook signature: ")
    assert "extra" in f.message and "\n" not in f.message
    assert "good-noop" in reg.names("attack")


def test_registering_twice_within_one_plugin_and_late_registration_fail():
    @robench.hookimpl
    def robench_register_attacks(register):
        register(Good)
        register(Good)

    twice = plugin_module("twice", robench_register_attacks=robench_register_attacks)
    kept = []

    @robench.hookimpl
    def robench_register_defenses(register):
        kept.append(register)

    late = plugin_module("late", robench_register_defenses=robench_register_defenses)
    reg = build_registry(entry_points=False, plugins=[twice, late])
    [f] = reg.failures
    assert "registered the attack name 'good-noop' twice" in f.message
    with pytest.raises(Exception, match="after its hook returned"):
        kept[0](Good)


def test_a_broken_builtin_is_reported_not_raised(monkeypatch):
    monkeypatch.setattr(
        "robench.registry.BUILTINS", ("robench.attacks", "robench._no_such_builtin")
    )
    reg = build_registry(entry_points=False)
    [f] = reg.failures
    assert f.builtin and (f.plugin, f.distribution) == ("robench._no_such_builtin", "robench")
    assert f.message == (
        f"plugin 'robench._no_such_builtin' (robench {robench.__version__}) failed to load: "
        "ModuleNotFoundError: No module named 'robench._no_such_builtin' "
        "(a bug in robench: please report it)"
    )
    assert "pgd" in reg.names("attack")


def test_validate_with_a_broken_plugin_warns_or_fails_in_one_line(tmp_path, monkeypatch):
    reg = build_registry(entry_points=False, plugins=[_raising_plugin()])
    monkeypatch.setattr("robench.config.get_registry", lambda: reg)

    unused = validate_with_attack(tmp_path, 'name = "fgsm"\neps = [0.1]\n')
    assert unused.exit_code == 0, unused.output
    assert unused.stderr.splitlines() == [
        "Warning: plugin 'raiser' failed to load: ModuleNotFoundError: No module named "
        "'robench_no_such_module_xyz' (skip it with ROBENCH_BLOCK_PLUGINS=raiser; "
        "--debug shows the traceback)"
    ]
    assert "ok (1 defenses" in unused.stdout

    used = validate_with_attack(tmp_path, 'name = "raiser.pgd"\neps = [0.1]\n')
    assert used.exit_code == 2
    [line] = used.stderr.splitlines()
    assert line.startswith("Error: ") and "attacks[0].name: unknown attack 'raiser.pgd'" in line
    assert "plugin 'raiser' failed to load and might have provided it" in line
    assert "ROBENCH_BLOCK_PLUGINS=raiser" in line


# -- real entry points, in a subprocess ------------------------------------------------------

DISTRIBUTIONS = {
    # entry-point name: (distribution, module source)
    "brokenimport": (
        "robench-brokenimport",
        "import robench_no_such_module_xyz  # the module itself fails to import\n",
    ),
    "raiser": (
        "robench-raiser",
        """
        import robench

        @robench.hookimpl
        def robench_register_attacks(register):
            import packaging_missing_xyz  # like ART without 'packaging'
        """,
    ),
    "dup": (
        "robench-dup",
        """
        import robench
        from robench.api import Attack

        class PGD(Attack):
            '''Clashes with the built-in pgd.'''
            name = "pgd"
            def run(self, model, x, y):
                return x

        @robench.hookimpl
        def robench_register_attacks(register):
            register(PGD)
        """,
    ),
    "typo": (
        "robench-typo",
        """
        import robench

        @robench.hookimpl
        def robench_register_atacks(register):
            pass
        """,
    ),
    "fine": (
        "robench-fine",
        """
        import robench
        from robench.api import Attack

        class Fine(Attack):
            '''A working third-party attack.'''
            name = "fine-noop"
            def run(self, model, x, y):
                return x

        @robench.hookimpl
        def robench_register_attacks(register):
            register(Fine)
        """,
    ),
}
BROKEN = ["brokenimport", "raiser", "dup", "typo"]


@pytest.fixture(scope="module")
def fake_site(tmp_path_factory) -> Path:
    """A folder of fake installed distributions, one robench entry point each."""
    site = tmp_path_factory.mktemp("site")
    for ep, (dist, source) in DISTRIBUTIONS.items():
        module = f"robench_fake_{ep}"
        info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[robench]\n{ep} = {module}\n")
        (site / f"{module}.py").write_text(textwrap.dedent(source))
    return site


def _robench(site: Path, *args: str, block: str = "art,foolbox") -> subprocess.CompletedProcess:
    """``robench ARGS`` in a subprocess seeing the fake distributions (the ART and Foolbox
    plugins blocked: they are slow to import and not what is tested here)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO), env.get("PYTHONPATH", "")])
    env["ROBENCH_BLOCK_PLUGINS"] = block
    env["COLUMNS"] = "100"
    env.pop("ROBENCH_PLUGINS", None)
    env.pop("ROBENCH_DISABLE_PLUGINS", None)
    code = "import sys; from robench.cli import main; sys.argv[0] = 'robench'; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _expected_lines(label: str, hint: str = "; --debug shows the traceback") -> list[str]:
    def line(ep, reason):
        dist = DISTRIBUTIONS[ep][0]
        return (
            f"{label}: plugin '{ep}' ({dist} 0.1) failed to load: {reason} "
            f"(skip it with ROBENCH_BLOCK_PLUGINS={ep}{hint})"
        )

    known = (
        "robench_register_attacks, robench_register_datasets, robench_register_defenses, "
        "robench_register_exclusions, robench_register_models"
    )
    return [
        line("brokenimport", "ModuleNotFoundError: No module named 'robench_no_such_module_xyz'"),
        line(
            "typo",
            "unknown hook 'robench_register_atacks'; did you mean 'robench_register_attacks'? "
            f"(known hooks: {known})",
        ),
        line("raiser", "ModuleNotFoundError: No module named 'packaging_missing_xyz'"),
        line(
            "dup",
            "duplicate attack name 'pgd': already registered by plugin 'robench.attacks' "
            f"(robench {robench.__version__})",
        ),
    ]


@pytest.mark.slow
def test_list_shows_the_working_plugins_and_one_line_per_failure(fake_site):
    result = _robench(fake_site, "list", "--kind", "attack")
    assert result.returncode == 2, result.stderr
    assert sorted(result.stderr.splitlines()) == sorted(_expected_lines("Error"))
    assert "Traceback" not in result.stderr + result.stdout
    names = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("    ")]
    assert {"fgsm", "pgd", "noise", "fine-noop"} <= set(names)
    assert "  robench-fine 0.1 (fine):" in result.stdout.splitlines()
    assert all(len(line) <= 100 for line in result.stdout.splitlines())

    debug = _robench(fake_site, "--debug", "list", "--kind", "attack")
    assert debug.returncode == 2
    assert debug.stderr.count("Traceback (most recent call last)") == len(BROKEN)
    assert "import packaging_missing_xyz" in debug.stderr
    error_lines = [x for x in debug.stderr.splitlines() if x.startswith("Error: ")]
    assert sorted(error_lines) == sorted(_expected_lines("Error", hint=""))

    skipped = _robench(fake_site, "list", "--kind", "attack", block=",".join(["art", *BROKEN]))
    assert skipped.returncode == 0 and skipped.stderr == ""


@pytest.mark.slow
def test_validate_goes_on_past_plugins_the_benchmark_does_not_use(fake_site, tmp_path):
    result = _robench(fake_site, "validate", "benchmarks/quickstart.toml")
    assert result.returncode == 0, result.stderr
    assert "benchmarks/quickstart.toml: ok" in result.stdout
    assert sorted(result.stderr.splitlines()) == sorted(_expected_lines("Warning"))

    bench = tmp_path / "uses-raiser.toml"
    bench.write_text(
        'name = "b"\n[dataset]\nname = "digits"\n[model]\nname = "small-cnn"\n'
        '[[defenses]]\nname = "standard"\n[[attacks]]\nname = "raiser.pgd"\neps = [0.1]\n'
    )
    only_raiser = "art,foolbox,torchattacks,brokenimport,dup,typo"
    used = _robench(fake_site, "validate", str(bench), block=only_raiser)
    assert used.returncode == 2
    assert used.stdout == ""
    assert used.stderr.splitlines() == [
        f"Error: {bench}: attacks[0].name: unknown attack 'raiser.pgd' (known: apgd, apgd-t, "
        "autoattack, fab, fgsm, fine-noop, noise, pgd, square); plugin 'raiser' (robench-raiser "
        "0.1) failed to load and might have provided it: ModuleNotFoundError: No module named "
        "'packaging_missing_xyz' (skip it with ROBENCH_BLOCK_PLUGINS=raiser)"
    ]
    debug = _robench(fake_site, "--debug", "validate", str(bench), block=only_raiser)
    assert debug.returncode == 2
    assert debug.stderr.count("Traceback (most recent call last)") == 2  # plugin, ConfigError
    assert debug.stderr.splitlines()[-1] == used.stderr.splitlines()[0]


def test_list_fits_a_100_column_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    for args in (["list"], ["list", "--params"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert len(lines) > 20 and max(len(line) for line in lines) <= 100
    monkeypatch.setenv("COLUMNS", "20")  # never narrower than 60
    lines = CliRunner().invoke(main, ["list", "pgd"]).output.splitlines()
    assert max(len(line) for line in lines) <= 60
    assert any(line.startswith("    pgd  ") for line in lines)
