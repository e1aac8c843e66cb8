"""``robench validate`` checks a benchmark of built-ins with their torch-free bases
(``robench/*/bases.py``, :meth:`robench.registry.Registry.get_base`), not their classes: the
same checks, the same one-line errors and the same resolved configuration as ``robench run``,
which validates with the classes themselves."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from robench.config import check_data_and_model, default_data_root, load_benchmark
from robench.errors import ConfigError
from robench.registry import Registry, build_registry

from .test_bad_inputs import BASE, CASES, ONE_ATTACK, edit

DEFENSE = '[[defenses]]\nname = "standard"\n'


def attack(body: str) -> str:
    return BASE.replace(ONE_ATTACK, f"[[attacks]]\neps = [0.1]\n{body}\n")


def defense(body: str) -> str:
    return BASE.replace(DEFENSE, f"[[defenses]]\n{body}\n")


#: beyond test_bad_inputs' cases: every built-in's parameters and checks, valid and not
MORE = [
    ("valid", BASE),
    ("fgsm-l2", attack('name = "fgsm"\nnorm = "l2"\nrandom_start = true')),
    ("fgsm-bad-loss", attack('name = "fgsm"\nloss = "dlr"')),
    ("pgd-both-steps", attack('name = "pgd"\nstep_size = 0.01\nrel_step = 0.5')),
    ("pgd-unknown-key", attack('name = "pgd"\nstep = 3')),
    ("noise-zero-samples", attack('name = "noise"\nsamples = 0')),
    ("apgd-dlr", attack('name = "apgd"\nloss = "dlr"\nrho = 0.5')),
    ("apgd-margin", attack('name = "apgd"\nloss = "margin"')),
    ("apgd-t-targets", attack('name = "apgd-t"\nn_target_classes = 10')),
    ("apgd-t-nine", attack('name = "apgd-t"\nn_target_classes = 9\neot_iter = 2')),
    ("fab-targeted-targets", attack('name = "fab"\ntargeted = true\nn_target_classes = 12')),
    ("fab-untargeted", attack('name = "fab"\nn_target_classes = 12\neta = 1.1')),
    ("fab-eta", attack('name = "fab"\neta = 0.5')),
    ("square-p-init", attack('name = "square"\np_init = 2')),
    ("square-l2", attack('name = "square"\nnorm = "l2"\nn_queries = 10')),
    ("aa-components", attack('name = "autoattack"\ncomponents = ["apgd-ce", "square"]')),
    ("aa-unknown-component", attack('name = "autoattack"\ncomponents = ["fab"]')),
    ("aa-rand", attack('name = "autoattack"\nversion = "rand"\nn_target_classes = 20')),
    ("aa-targets", attack('name = "autoattack"\nn_target_classes = 10')),
    ("attack-norm", attack('name = "pgd"\nnorm = "l1"')),
    ("attack-unknown", attack('name = "pgdd"')),
    ("adversarial", defense('name = "adversarial"\nattack = { name = "pgd", eps = 0.1 }')),
    (
        "adversarial-inner",
        defense('name = "adversarial"\nattack = { name = "pgd", eps = 0.1, steps = 0 }'),
    ),
    ("adversarial-no-attack", defense('name = "adversarial"')),
    (
        "adversarial-inner-unknown",
        defense('name = "adversarial"\nattack = { name = "x", eps = 0.1 }'),
    ),
    ("mixed", defense('name = "mixed"\nattack = { name = "fgsm", eps = 0.1 }\nadv_fraction = 0.5')),
    (
        "mixed-weights",
        defense(
            'name = "mixed"\nattack = { name = "fgsm", eps = 0.1 }\n'
            "clean_weight = 0\nadv_weight = 0"
        ),
    ),
    ("fast-at", defense('name = "fast-at"\neps = "8/255"')),
    (
        "fast-at-own-schedule",
        defense('name = "fast-at"\neps = 0.1\ntraining = { schedule = "cosine" }'),
    ),
    ("fast-at-no-eps", defense('name = "fast-at"')),
    ("pgd-at", defense('name = "pgd-at"\neps = 0.1\nstep_size = "2/255"')),
    ("pgd-at-both-steps", defense('name = "pgd-at"\neps = 0.1\nstep_size = 0.01\nrel_step = 0.2')),
    ("trades", defense('name = "trades"\neps = 0.1\nbeta = 1.0\neps_warmup = 0.4')),
    ("trades-beta", defense('name = "trades"\neps = 0.1\nbeta = -1')),
    ("mart", defense('name = "mart"\neps = 0.1\nnorm = "l2"')),
    ("checkpoint-missing", defense('name = "checkpoint"\npath = "missing.safetensors"')),
    ("defense-model", defense('name = "standard"\nmodel = { name = "mlp", hidden = [8, 4] }')),
    ("defense-model-shape", defense('name = "standard"\nmodel = { name = "mnist-cnn" }')),
    ("mlp-zero", edit('name = "small-cnn"', 'name = "mlp"\nhidden = [0]')),
    ("small-cnn-channels", edit('name = "small-cnn"', 'name = "small-cnn"\nchannels = [8]')),
    ("mnist-cnn-on-digits", edit('name = "small-cnn"', 'name = "mnist-cnn"')),
    ("cifar-cnn-on-digits", edit('name = "small-cnn"', 'name = "cifar-cnn"\nnormalize = false')),
    ("resnet-on-digits", edit('name = "small-cnn"', 'name = "preact-resnet18"')),
    ("digits-other-split", edit('name = "digits"', 'name = "digits"\ntest_fraction = 0.1')),
    ("digits-seed", edit('name = "digits"', 'name = "digits"\nsplit_seed = 7')),
    ("digits-fraction", edit('name = "digits"', 'name = "digits"\ntest_fraction = 1.5')),
    ("mnist", edit('name = "digits"', 'name = "mnist"\ndownload = false')),
    ("mnist-too-many", edit('name = "digits"', 'name = "mnist"').replace("= 100", "= 20000")),
    ("mnist-model", edit('name = "digits"', 'name = "mnist"').replace("small-cnn", "mnist-cnn")),
    ("cifar10", edit('name = "digits"', 'name = "cifar10"').replace("small-cnn", "cifar-cnn")),
    ("cifar10-n-examples", edit('name = "digits"', 'name = "cifar10"').replace("= 100", "= 9999")),
    ("npz-missing", edit('name = "digits"', 'name = "npz"\ntrain = "a.npz"\ntest = "b.npz"')),
    ("dataset-unknown", edit('name = "digits"', 'name = "digit"')),
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A catalogue cache listing the built-ins."""
    path = tmp_path_factory.mktemp("catalogue") / "catalogue.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROBENCH_CATALOGUE", str(path))
        build_registry(entry_points=False)
    return path


@pytest.fixture
def listed(cache, monkeypatch) -> Callable[[], Registry]:
    """New registries with the built-ins listed from the cache, none imported: as a new
    ``robench validate`` process has them."""
    monkeypatch.setenv("ROBENCH_CATALOGUE", str(cache))
    return lambda: build_registry(entry_points=False)


def outcome(path: Path, registry: Registry, build: bool):
    """The one-line error, or the resolved benchmark and its dataset's description."""
    try:
        bench = load_benchmark(path, registry=registry, build=build)
        return bench.resolved(), check_data_and_model(bench, default_data_root(), prepare=False)
    except ConfigError as exc:
        return str(exc)


@pytest.mark.parametrize(
    "text", [c[1] for c in CASES] + [c[1] for c in MORE], ids=[c[0] for c in CASES + MORE]
)
def test_validating_with_the_bases_is_validating_with_the_classes(tmp_path, listed, text):
    path = tmp_path / "bench.toml"
    path.write_text(text)
    built = build_registry(entry_points=False, lazy=False)
    assert outcome(path, listed(), build=False) == outcome(path, built, build=True)


def test_missing_data_is_the_same_error(tmp_path, listed, monkeypatch):
    monkeypatch.setenv("ROBENCH_DATA", str(tmp_path / "nothing"))
    built = build_registry(entry_points=False, lazy=False)
    for dataset in ("mnist", "cifar10"):
        path = tmp_path / f"{dataset}.toml"
        path.write_text(edit('name = "digits"', f'name = "{dataset}"\ndownload = false'))
        got = outcome(path, listed(), build=False)
        assert isinstance(got, str) and "not found" in got
        assert got == outcome(path, built, build=True)


def test_each_builtin_extends_its_base(listed):
    built = build_registry(entry_points=False, lazy=False)
    for entry in built.entries():
        base = listed().get_base(entry.kind, entry.name)
        where = (base.kind, base.name, base.plugin, base.distribution, base.version)
        assert where == (entry.kind, entry.name, entry.plugin, entry.distribution, entry.version)
        if entry.name in ("npz", "imagefolder"):  # they read their data to describe it
            assert base.cls is entry.cls
            continue
        assert base.cls.__module__ == f"{entry.plugin}.bases", entry.name
        assert issubclass(entry.cls, base.cls) and entry.cls.Params is base.cls.Params


def test_an_imported_builtin_is_its_own_base(listed):
    registry = listed()
    pgd = registry.get("attack", "pgd")  # imports the built-in attacks
    assert registry.get_base("attack", "pgd") == pgd


def test_the_bases_import_no_torch():
    modules = ["robench.config", "robench.cli"]
    modules += [f"robench.{kind}.bases" for kind in ("attacks", "defenses", "models", "datasets")]
    code = f"import sys\nfor m in {modules!r}:\n    __import__(m)\n"
    code += "print([m for m in ('torch', 'numpy', 'sklearn') if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stderr
