"""The robench-torchattacks plugin (plugins/robench-torchattacks): a third-party adapter built on
robench.api alone, its catalogue against the installed torchattacks, every attack through
robench.testing.check_attack, and torchattacks' PGD against robench's own."""

from __future__ import annotations

import ast
import inspect
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import robench
from robench.api import ThreatModel, craft
from robench.cli import main
from robench.registry import build_registry
from robench.reproducibility import seed_everything
from robench.testing import check_attack, tiny_data, tiny_model

from .helpers import tiny_config, validate_with_attack

torchattacks = pytest.importorskip("torchattacks")
robench_torchattacks = pytest.importorskip("robench_torchattacks")

from robench_torchattacks import ATTACKS, EXCLUDED, SPECS  # noqa: E402
from robench_torchattacks.adapter import SET_BY_ADAPTER  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

PLUGIN = Path(robench_torchattacks.__file__).parent
REGISTRY = build_registry()


def test_every_exposed_attack_is_registered_by_the_distribution() -> None:
    names = {e.name: e for e in REGISTRY.entries("attack") if e.name.startswith("torchattacks.")}
    assert set(names) == set(ATTACKS) and len(names) == len(SPECS) == 29
    assert {e.distribution for e in names.values()} == {"robench-torchattacks"}
    assert {e.plugin for e in names.values()} == {"torchattacks"}
    minimising = {n for n, e in names.items() if e.cls.minimizes}
    assert minimising == {"torchattacks.CW", "torchattacks.DeepFool"}
    both = {n for n, e in names.items() if e.cls.norms == ("linf", "l2")}
    assert both == {f"torchattacks.{n}" for n in ("APGD", "APGDT", "FAB", "Square", "AutoAttack")}


def test_every_torchattacks_attack_is_exposed_or_excluded_with_a_reason() -> None:
    exported = {
        n
        for n in torchattacks.__all__
        if isinstance(getattr(torchattacks, n), type)
        and issubclass(getattr(torchattacks, n), torchattacks.attack.Attack)
    }
    exposed = {s.name for s in SPECS}
    assert exported == exposed | set(EXCLUDED) and not exposed & set(EXCLUDED)
    for name, reason in EXCLUDED.items():
        assert reason and "\n" not in reason, name
        assert ("attack", f"torchattacks.{name}") not in REGISTRY
    assert torchattacks.__version__.startswith("3.5.")


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_the_catalogue_matches_the_installed_signature(spec) -> None:
    """The parameters written out in the catalogue are torchattacks' own, with its defaults."""
    signature = inspect.signature(getattr(torchattacks, spec.name).__init__).parameters
    library = {n: p.default for n, p in signature.items() if n not in ("self", *SET_BY_ADAPTER)}
    assert library == {name: default for name, (_, default) in spec.params.items()}
    assert (
        (spec.eps_arg in signature) if spec.eps_arg else not {"eps", "max_epsilon"} & set(signature)
    )
    assert ("norm" in signature) == spec.norm_arg
    assert ("n_classes" in signature) == spec.n_classes
    assert ("seed" in signature) == spec.seeded
    if spec.eps_arg:  # the default step keeps torchattacks' ratio to its default ε
        default_eps = signature[spec.eps_arg].default
        if spec.step_ratio is not None:
            assert spec.step_ratio == pytest.approx(signature["alpha"].default / default_eps)


def test_the_plugin_imports_nothing_from_robench_but_the_public_api() -> None:
    for path in PLUGIN.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = []
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            for module in modules:
                if module == "robench" or module.startswith("robench."):
                    assert module in ("robench.api", "robench.testing"), (path.name, module)


def test_registering_imports_neither_torchattacks_nor_anything_heavy() -> None:
    """The plugin's hooks run without importing torchattacks (or scipy, which it imports):
    the catalogue is written out, the library loads when an attack first runs."""
    code = (
        "import sys, robench_torchattacks as plugin; found, left = [], []; "
        "plugin.robench_register_attacks(found.append); "
        "plugin.robench_register_exclusions(lambda *a: left.append(a)); "
        "assert len(found) == 29 and len(left) == 10, (len(found), len(left)); "
        "heavy = {'torchattacks', 'scipy'} & set(sys.modules); "
        "assert not heavy, f'{heavy} imported to register'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_excluded_attack_answers_with_its_reason(tmp_path) -> None:
    result = validate_with_attack(tmp_path, 'name = "torchattacks.JSMA"\neps = [0.1]\n')
    assert result.exit_code == 2
    assert "an L0 attack" in result.output and "targeted only" in result.output
    listed = CliRunner().invoke(main, ["list", "--excluded", "--json"])
    rows = [r for r in json.loads(listed.output) if r["name"].startswith("torchattacks.")]
    assert {r["name"] for r in rows} == {f"torchattacks.{n}" for n in EXCLUDED}


def test_list_attributes_the_attacks_to_the_plugin() -> None:
    rows = json.loads(CliRunner().invoke(main, ["list", "--kind", "attack", "--json"]).output)
    rows = {r["name"]: r for r in rows if r["name"].startswith("torchattacks.")}
    assert len(rows) == len(ATTACKS)
    assert {r["distribution"] for r in rows.values()} == {"robench-torchattacks"}
    assert rows["torchattacks.PGD"]["description"] == (
        "PGD (Madry et al. 2018) on the cross-entropy (L∞, ε-bounded)"
    )
    assert rows["torchattacks.CW"]["description"].endswith("(L2, minimisation)")


def test_an_attack_pickles_and_runs_after_a_round_trip() -> None:
    """The classes live in robench_torchattacks.attacks under their Python names (a process
    pool or Ray sends attacks by pickle)."""
    attack = ATTACKS["torchattacks.PGD"](ThreatModel("linf", 0.1), steps=3)
    copy = pickle.loads(pickle.dumps(attack))
    assert type(copy) is type(attack) and copy.params == attack.params
    model, (_, _, test) = tiny_model(), tiny_data()
    for a in (attack, copy):
        seed_everything(0)
        a.result = craft(a, model, test.x[:8], test.y[:8]).x_adv
    assert torch.equal(attack.result, copy.result)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_exposed_attack_passes_check_attack(name: str) -> None:
    check_attack(ATTACKS[name])


# --- agreement with robench's native PGD ----------------------------------------------------


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


def _pgds(norm: str, eps: float, step: float, random_start: bool, seed: int = 0):
    """robench's pgd (every step taken, as torchattacks does) and torchattacks' PGD / PGDL2,
    20 steps of ``step``, on the kit's tiny CNN and its 450 test digits, from ``seed``."""
    model, (_, _, test) = tiny_model(), tiny_data()
    threat = ThreatModel(norm, eps)
    native = REGISTRY.get("attack", "pgd").cls(
        threat, steps=20, step_size=step, random_start=random_start, early_stop=False
    )
    library = ATTACKS["torchattacks.PGD" if norm == "linf" else "torchattacks.PGDL2"](
        threat, steps=20, alpha=step, random_start=random_start
    )
    results = []
    for attack in (native, library):
        seed_everything(seed)
        results.append(craft(attack, model, test.x, test.y).x_adv)
    return model, test, results


def _same_examples(model: nn.Module, a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    """``a`` and ``b`` are the same adversarial examples up to float32 rounding, ``tol``, with
    the same predictions. In L∞ the two projections round alike but for the last bit of a few
    pixels; in L2 the normalisations round differently, and 20 steps add up to about 4e-5."""
    assert (a - b).abs().max() <= tol
    with torch.no_grad():
        assert torch.equal(model(a).argmax(dim=1), model(b).argmax(dim=1))


@pytest.mark.parametrize("random_start", [False, True], ids=["from-x", "random-start"])
@pytest.mark.parametrize(("eps", "step"), [(0.1, 0.01), (0.2, 0.02)])
def test_linf_pgd_is_robenchs_pgd(eps: float, step: float, random_start: bool) -> None:
    """The same algorithm: signed steps, projection, and the random start drawn alike from the
    seeded generator, so the adversarial examples are the same and so is robust accuracy."""
    model, test, (native, library) = _pgds("linf", eps, step, random_start)
    _same_examples(model, native, library, 1e-7)
    assert _accuracy(model, library, test.y) < _accuracy(model, test.x, test.y) - 0.3


def test_l2_pgd_agrees_with_robenchs_pgd() -> None:
    """From the clean input, the same; from random starts (drawn differently by the two),
    robust accuracy within 2 points on each of three seeds."""
    model, test, (native, library) = _pgds("l2", 1.0, 0.1, random_start=False)
    _same_examples(model, native, library, 1e-4)
    for seed in range(3):
        _, _, (native, library) = _pgds("l2", 1.0, 0.1, random_start=True, seed=seed)
        a, b = _accuracy(model, native, test.y), _accuracy(model, library, test.y)
        assert abs(a - b) <= 0.02, (seed, a, b)


def test_robenchs_early_stopping_pgd_finds_at_least_as_many() -> None:
    model, (_, _, test) = tiny_model(), tiny_data()
    threat = ThreatModel("linf", 0.1)
    native = REGISTRY.get("attack", "pgd").cls(threat, steps=20, step_size=0.01)
    library = ATTACKS["torchattacks.PGD"](threat, steps=20, alpha=0.01)
    accuracy = []
    for attack in (native, library):
        seed_everything(0)
        accuracy.append(_accuracy(model, craft(attack, model, test.x, test.y).x_adv, test.y))
    assert accuracy[0] <= accuracy[1] <= accuracy[0] + 0.02


# --- the adapter: bounds, precision, seeds, classes, parameters -------------------------------


class Shifted(nn.Module):
    """The tiny CNN for images in [-1, 1] (it maps them back to [0, 1] first)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_model()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x + 1) / 2)


def test_other_bounds_and_float64_are_mapped_onto_torchattacks_unit_range() -> None:
    """torchattacks clamps to [0, 1]: in [-1, 1], ε and the step are scaled with the images,
    and the attack is robench's PGD's (up to float32 rounding); a float64 model the same."""
    _, _, test = tiny_data()
    x, y = test.x[:64] * 2 - 1, test.y[:64]
    threat = ThreatModel("linf", 0.2, (-1.0, 1.0))
    native = REGISTRY.get("attack", "pgd").cls(
        threat, steps=10, step_size=0.02, random_start=False, early_stop=False
    )
    library = ATTACKS["torchattacks.PGD"](threat, steps=10, alpha=0.02, random_start=False)
    for dtype in (torch.float32, torch.float64):
        model = Shifted().to(dtype)
        a = craft(native, model, x.to(dtype), y).x_adv
        crafted = craft(library, model, x.to(dtype), y)
        assert crafted.n_violations == 0 and crafted.x_adv.dtype == dtype
        assert (crafted.x_adv - a).abs().max() < 1e-5
        assert crafted.x_adv.min() >= -1 and (crafted.x_adv - x).abs().max() <= 0.2 + 1e-6


def test_the_default_step_scales_with_eps_and_an_explicit_one_is_kept() -> None:
    pgd = ATTACKS["torchattacks.PGD"]
    assert pgd(ThreatModel("linf", 0.2)).library_kwargs(10)["alpha"] == pytest.approx(0.05)
    assert pgd(ThreatModel("linf", 0.2), alpha=0.01).library_kwargs(10)["alpha"] == 0.01
    ffgsm = ATTACKS["torchattacks.FFGSM"](ThreatModel("linf", 8 / 255)).library_kwargs(10)
    assert ffgsm["alpha"] == pytest.approx(10 / 255)  # Fast AT's 1.25·ε
    apgd = ATTACKS["torchattacks.APGD"](ThreatModel("l2", 0.5)).library_kwargs(10)
    assert (apgd["norm"], apgd["eps"]) == ("L2", 0.5)


def test_seeded_attacks_follow_robenchs_seed_and_leave_its_generator_alone() -> None:
    """APGD reseeds torch with its ``seed``: by default one drawn from the generator robench
    seeded (so the same cell seed gives the same result, another seed another), inside
    fork_rng (so the generator after the attack is as if APGD had drawn one number)."""
    model, (_, _, test) = tiny_model(), tiny_data()
    x, y = test.x[:48], test.y[:48]
    apgd = ATTACKS["torchattacks.APGD"](ThreatModel("linf", 0.1), steps=5)
    runs, after = [], []
    for seed in (0, 0, 1):
        seed_everything(seed)
        runs.append(craft(apgd, model, x, y).x_adv)
        after.append(torch.rand(1).item())
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    seed_everything(0)
    torch.randint(0, 2**31 - 1, ())  # the one number the adapter draws
    assert after[0] == torch.rand(1).item()
    fixed = ATTACKS["torchattacks.APGD"](ThreatModel("linf", 0.1), steps=5, seed=3)
    seed_everything(5)
    a = craft(fixed, model, x, y).x_adv
    seed_everything(6)
    assert torch.equal(a, craft(fixed, model, x, y).x_adv)


def test_the_number_of_classes_comes_from_the_model() -> None:
    """torchattacks' APGD-T, FAB-T and AutoAttack assume 10 classes unless told; robench tells
    them the model's, so a 4-class model works."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4)).eval()
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % 4
    for name, params in [
        ("torchattacks.APGDT", {"steps": 3}),
        ("torchattacks.FAB", {"steps": 3, "multi_targeted": True}),
        ("torchattacks.AutoAttack", {"version": "standard"}),
    ]:
        attack = ATTACKS[name](ThreatModel("linf", 0.1), **params)
        assert attack.library_kwargs(4)["n_classes"] == 4
        crafted = craft(attack, model, x, y)
        assert crafted.n_violations == 0
        assert not torch.equal(crafted.x_adv, x), name


def test_too_few_classes_for_a_dlr_loss_is_refused_before_anything_runs() -> None:
    from robench.api import ConfigError, DatasetInfo

    three = DatasetInfo("three", (1, 8, 8), 3, (0.5,), (0.2,))
    apgdt = ATTACKS["torchattacks.APGDT"]
    with pytest.raises(ConfigError, match=r"needs at least 4 classes .* 'three' has 3"):
        apgdt.check(apgdt.Params(), three)
    apgd = ATTACKS["torchattacks.APGD"]
    apgd.check(apgd.Params(loss="dlr"), three)  # the untargeted DLR loss needs 3
    aa = ATTACKS["torchattacks.AutoAttack"]
    aa.check(aa.Params(version="rand"), three)
    with pytest.raises(ConfigError, match="at least 4 classes"):
        aa.check(aa.Params(), three)


def test_rgb_only_attacks_are_refused_on_grey_datasets_in_one_line(tmp_path) -> None:
    result = validate_with_attack(tmp_path, 'name = "torchattacks.TIFGSM"\neps = [0.1]\n')
    assert result.exit_code == 2
    line = result.output.strip().splitlines()[-1]
    assert "RGB images only" in line and "'digits' has 1" in line


def test_an_unknown_or_bad_parameter_is_refused_when_validated(tmp_path) -> None:
    typo = validate_with_attack(tmp_path, 'name = "torchattacks.PGD"\neps = [0.1]\nstep = 3\n')
    assert typo.exit_code == 2 and "step" in typo.output
    bad = validate_with_attack(tmp_path, 'name = "torchattacks.APGD"\neps = [0.1]\nloss = "cw"\n')
    assert bad.exit_code == 2 and "loss" in bad.output and "'ce' or 'dlr'" in bad.output
    norm = validate_with_attack(tmp_path, 'name = "torchattacks.CW"\nnorm = "linf"\neps = [0.1]\n')
    assert norm.exit_code == 2 and "norm" in norm.output


def test_torchattacks_attacks_through_robench_run(tmp_path) -> None:
    """A benchmark: ε-bounded PGD and AutoAttack, and CW, a minimisation attack run once and
    scored at every ε."""
    eps = [0.5, 1.0, 2.0]
    config = tiny_config(
        tmp_path,
        attacks=[
            {"name": "torchattacks.PGD", "eps": [0.1], "steps": 10},
            {"name": "torchattacks.AutoAttack", "eps": [0.1], "version": "rand"},
            {"name": "torchattacks.CW", "norm": "l2", "eps": eps, "steps": 30, "c": 10},
        ],
        evaluation={"n_examples": 100, "batch_size": 100},
    )
    df = robench.run(config, quiet=True)
    assert (df["status"] == "ok").all(), df["error"].dropna().tolist()
    attacks = df[df["kind"] == "attack"]
    assert (attacks["n_violations"] == 0).all()
    clean = df[df["kind"] == "clean"]["accuracy"].item()
    for name in ("torchattacks.PGD", "torchattacks.AutoAttack"):
        assert attacks[attacks["attack"] == name]["accuracy"].item() < clean - 0.2
    cw = attacks[attacks["attack"] == "torchattacks.CW"].sort_values("eps")
    assert list(cw["eps"]) == eps
    acc = list(cw["accuracy"])
    assert acc == sorted(acc, reverse=True) and acc[-1] < clean - 0.2
