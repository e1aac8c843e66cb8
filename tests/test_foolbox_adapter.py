"""The robench-foolbox plugin: Foolbox 3's attacks registered through the entry-point group,
validated like any robench attack, and run on real (tiny) models and data."""

from __future__ import annotations

import gc
import json
import warnings

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import robench
from robench.attack import craft
from robench.cli import main
from robench.config import load_benchmark
from robench.errors import ConfigError
from robench.registry import build_registry
from robench.threat import TOLERANCE, ThreatModel

from .helpers import tiny_config, trained_digits_mlp, validate_with_attack

foolbox = pytest.importorskip("foolbox")
robench_foolbox = pytest.importorskip("robench_foolbox")

from foolbox.attacks.base import FixedEpsilonAttack  # noqa: E402
from foolbox.distances import l1, l2, linf  # noqa: E402
from robench_foolbox import fmodel  # noqa: E402
from robench_foolbox.adapter import FoolboxAttack  # noqa: E402
from robench_foolbox.catalog import EXCLUDED, SKIPPED, adapt, exported_attacks  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

BOTH = ("linf", "l2")
#: robench name → (norms, minimisation attack?)
EXPECTED = {
    "foolbox.LinfPGD": (("linf",), False),
    "foolbox.PGD": (("linf",), False),
    "foolbox.LinfProjectedGradientDescentAttack": (("linf",), False),
    "foolbox.FGSM": (("linf",), False),
    "foolbox.FGM": (("l2",), False),
    "foolbox.L2PGD": (("l2",), False),
    "foolbox.MIFGSM": (("linf",), False),
    "foolbox.VirtualAdversarialAttack": (("l2",), False),
    "foolbox.L2AdditiveGaussianNoiseAttack": (("l2",), False),
    "foolbox.LinfRepeatedAdditiveUniformNoiseAttack": (("linf",), False),
    "foolbox.L2ContrastReductionAttack": (("l2",), False),
    "foolbox.L2CarliniWagnerAttack": (("l2",), True),
    "foolbox.LinfDeepFoolAttack": (("linf",), True),
    "foolbox.L2DeepFoolAttack": (("l2",), True),
    "foolbox.BoundaryAttack": (("l2",), True),
    "foolbox.HopSkipJumpAttack": (BOTH, True),
    "foolbox.DDNAttack": (("l2",), True),
    "foolbox.L2FMNAttack": (("l2",), True),
    "foolbox.LInfFMNAttack": (("linf",), True),
    "foolbox.NewtonFoolAttack": (("l2",), True),
    "foolbox.SaltAndPepperNoiseAttack": (("l2",), True),
    "foolbox.GaussianBlurAttack": (BOTH, True),
    "foolbox.InversionAttack": (BOTH, True),
    "foolbox.LinearSearchBlendedUniformNoiseAttack": (BOTH, True),
    "foolbox.BinarySearchContrastReductionAttack": (BOTH, True),
    "foolbox.LinearSearchContrastReductionAttack": (BOTH, True),
}
NOT_REGISTERED = [
    "EADAttack",
    "L1PGD",
    "L1FastGradientAttack",
    "L0FMNAttack",
    "L1FMNAttack",
    "SparseL1DescentAttack",
    "PointwiseAttack",
    "SpatialAttack",
    "GenAttack",
    "DatasetAttack",
    "BinarizationRefinementAttack",
    "L0BrendelBethgeAttack",
    "L1BrendelBethgeAttack",
]


@pytest.fixture(scope="module")
def registry():
    return build_registry()


@pytest.fixture(scope="module")
def digits() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """An MLP trained for about a second on 1500 digits; 128 held-out examples (1×8×8)."""
    return trained_digits_mlp(128)


def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


def _attack(registry, name: str, norm: str, eps: float, **params) -> FoolboxAttack:
    cls = registry.get("attack", name).cls
    return cls(ThreatModel(norm, eps), **{**cls.example_params, **params})


# --- registration ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_attack_is_registered_by_the_distribution(registry, name: str) -> None:
    entry = registry.get("attack", name)
    norms, minimizes = EXPECTED[name]
    assert (entry.distribution, entry.plugin) == ("robench-foolbox", "foolbox")
    assert entry.cls.norms == norms
    assert entry.cls.minimizes is minimizes
    assert issubclass(entry.cls, FoolboxAttack)
    assert entry.description.startswith("Foolbox's ")
    assert ("fixed ε" in entry.description) is not minimizes


def test_every_exported_attack_is_registered_excluded_or_skipped(registry) -> None:
    exported = set(exported_attacks())
    registered = {n.removeprefix("foolbox.") for n in registry.names("attack")} & exported
    assert registered | set(EXCLUDED) | set(SKIPPED) == exported
    assert not registered & (set(EXCLUDED) | set(SKIPPED))
    assert not SKIPPED, "Foolbox 3.3 has no attack this plugin does not know"
    for name, reason in EXCLUDED.items():
        assert ("attack", f"foolbox.{name}") not in registry
        assert reason and "\n" not in reason
    assert set(NOT_REGISTERED) <= set(EXCLUDED)
    assert "L1" in EXCLUDED["L1PGD"] and "targeted" in EXCLUDED["GenAttack"]


def test_brendel_bethge_depends_on_numba(registry) -> None:
    from foolbox.attacks.brendel_bethge import NUMBA_IMPORT_ERROR

    for name in ("L2BrendelBethgeAttack", "LinfinityBrendelBethgeAttack"):
        if NUMBA_IMPORT_ERROR is None:
            assert ("attack", f"foolbox.{name}") in registry
        else:
            assert "numba" in EXCLUDED[name]


def test_list_shows_the_plugin_and_aliases() -> None:
    rows = json.loads(CliRunner().invoke(main, ["list", "--kind", "attack", "--json"]).output)
    pgd = next(r for r in rows if r["name"] == "foolbox.LinfPGD")
    assert pgd["distribution"] == "robench-foolbox"
    assert pgd["description"] == (
        "Foolbox's LinfPGD, alias of LinfProjectedGradientDescentAttack (L∞, fixed ε)"
    )
    cw = next(r for r in rows if r["name"] == "foolbox.L2CarliniWagnerAttack")
    assert cw["description"] == "Foolbox's L2CarliniWagnerAttack (L2, minimisation)"


def test_an_unknown_foolbox_attack_is_adapted_when_it_can_be() -> None:
    class NewLinf(FixedEpsilonAttack):
        distance = linf

        def __init__(self, *, steps: int = 100, alpha: float = 0.1):
            self.steps, self.alpha = steps, alpha

        def run(self, model, inputs, criterion, *, epsilon, **kwargs):
            return inputs

    class NewL1(NewLinf):
        distance = l1

    class NeedsData(NewLinf):
        def __init__(self, data):
            self.data = data

    spec = adapt("NewLinf", NewLinf)
    assert (spec.norms, spec.mode, spec.example_params) == (("linf",), "fixed", {"steps": 3})
    assert "L1" in adapt("NewL1", NewL1)
    assert "data" in adapt("NeedsData", NeedsData)


# --- parameters and validation ---------------------------------------------------------------


def test_params_come_from_the_foolbox_signature(registry) -> None:
    cls = registry.get("attack", "foolbox.LinfPGD").cls
    assert set(cls.Params.model_fields) == {"rel_stepsize", "abs_stepsize", "steps", "random_start"}
    assert cls.Params().steps == 40  # Foolbox's default
    assert cls.example_params == {"steps": 3}

    def fields(name: str) -> set[str]:
        return set(registry.get("attack", f"foolbox.{name}").cls.Params.model_fields)

    # set from the threat model, or hidden
    assert "distance" not in fields("GaussianBlurAttack")
    assert "constraint" not in fields("HopSkipJumpAttack")
    assert "tensorboard" not in fields("BoundaryAttack")
    # __init__(*args, **kwargs): no parameters
    assert not fields("L2AdditiveGaussianNoiseAttack")
    # a required constructor argument stays required
    vat = registry.get("attack", "foolbox.VirtualAdversarialAttack").cls
    with pytest.raises(ValueError, match="steps"):
        vat(ThreatModel("l2", 1.0))
    assert vat(ThreatModel("l2", 1.0), steps=1).fb_attack.steps == 1
    # a Foolbox attack object can be passed from Python, nothing else
    boundary = registry.get("attack", "foolbox.BoundaryAttack").cls
    init = foolbox.attacks.LinearSearchBlendedUniformNoiseAttack(directions=10)
    assert boundary(ThreatModel("l2", 1.0), init_attack=init).fb_attack.init_attack is init
    with pytest.raises(ValueError, match="init_attack"):
        boundary(ThreatModel("l2", 1.0), init_attack="LinearSearchBlendedUniformNoiseAttack")


def test_the_norm_sets_distance_and_constraint(registry) -> None:
    for norm, distance in (("linf", linf), ("l2", l2)):
        blur = _attack(registry, "foolbox.GaussianBlurAttack", norm, 0.1)
        assert blur.fb_attack.distance is distance
        hsj = _attack(registry, "foolbox.HopSkipJumpAttack", norm, 0.1)
        assert hsj.fb_attack.constraint == norm and hsj.fb_attack.distance is distance


def _bench(tmp_path, attack: dict) -> dict:
    return tiny_config(tmp_path, attacks=[attack])


def test_unknown_param_is_refused_when_the_benchmark_is_loaded(tmp_path) -> None:
    attack = {"name": "foolbox.LinfPGD", "eps": 0.1, "stepz": 5}
    with pytest.raises(ConfigError) as info:
        load_benchmark(_bench(tmp_path, attack), check_data=False)
    assert info.value.field == "attacks[0].stepz"
    assert "did you mean 'steps'" in str(info.value)


def test_wrong_type_and_unsupported_norm_are_refused(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"attacks\[0\]\.steps"):
        load_benchmark(
            _bench(tmp_path, {"name": "foolbox.LinfPGD", "eps": 0.1, "steps": "many"}),
            check_data=False,
        )
    # typed by Foolbox's own annotations: choices, optional and required arguments
    deepfool = {"name": "foolbox.L2DeepFoolAttack", "norm": "l2", "eps": 0.5}
    with pytest.raises(ConfigError, match=r"attacks\[0\]\.loss.*'logits'"):
        load_benchmark(_bench(tmp_path, {**deepfool, "loss": "ce"}), check_data=False)
    bench = load_benchmark(_bench(tmp_path, {**deepfool, "candidates": None}), check_data=False)
    assert bench.attacks[0].params.candidates is None
    vat = {"name": "foolbox.VirtualAdversarialAttack", "norm": "l2", "eps": 0.5}
    with pytest.raises(ConfigError, match=r"attacks\[0\]\.steps: required"):
        load_benchmark(_bench(tmp_path, vat), check_data=False)
    with pytest.raises(ConfigError, match=r"attacks\[0\]\.steps"):
        load_benchmark(_bench(tmp_path, {**vat, "steps": "many"}), check_data=False)
    with pytest.raises(ConfigError, match="does not support norm 'l2'") as info:
        load_benchmark(
            _bench(tmp_path, {"name": "foolbox.LinfPGD", "norm": "l2", "eps": 0.5}),
            check_data=False,
        )
    assert info.value.field == "attacks[0].norm"


def test_validate_cli_gives_one_line_and_exit_2(tmp_path) -> None:
    result = validate_with_attack(tmp_path, 'name = "foolbox.LinfPGD"\neps = [0.1]\nstepz = 5\n')
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "attacks[0].stepz" in lines[0] and "Traceback" not in lines[0]
    result = validate_with_attack(tmp_path, 'name = "foolbox.LinfPGD"\neps = [0.1]\nsteps = 5\n')
    assert result.exit_code == 0, result.output


# --- running ---------------------------------------------------------------------------------


def test_pytorch_model_is_wrapped_once_per_model(registry, digits, monkeypatch) -> None:
    made: list[nn.Module] = []

    class Counting(foolbox.PyTorchModel):
        def __init__(self, model, *args, **kwargs):
            made.append(model)
            super().__init__(model, *args, **kwargs)

    monkeypatch.setattr(foolbox, "PyTorchModel", Counting)
    model, x, y = digits
    model = nn.Sequential(*model)  # a model of its own, not wrapped by another test
    attacks = [_attack(registry, n, "linf", 0.1) for n in ("foolbox.FGSM", "foolbox.LinfPGD")]
    for attack in attacks:
        for batch in (slice(0, 32), slice(32, 64)):
            craft(attack, model, x[batch], y[batch])
    assert made == [model]
    # the foolbox attack object is built once per robench attack
    fb = attacks[1].fb_attack
    craft(attacks[1], model, x[:8], y[:8])
    assert attacks[1].fb_attack is fb
    # other bounds: another wrapper; another model: another wrapper
    wide = registry.get("attack", "foolbox.FGSM").cls(ThreatModel("linf", 0.1, (-1.0, 2.0)))
    craft(wide, model, x[:8], y[:8])
    other = nn.Sequential(*digits[0])
    craft(attacks[0], other, x[:8], y[:8])
    assert made == [model, model, other]
    # the cache holds models weakly: a model nobody uses any more is freed with its wrapper
    before = fmodel.cached_models()
    del other, made[:]
    gc.collect()
    assert fmodel.cached_models() == before - 1


def test_linf_pgd_lowers_accuracy(registry, digits) -> None:
    model, x, y = digits
    clean = _acc(model, x, y)
    torch.manual_seed(0)
    attack = _attack(registry, "foolbox.LinfPGD", "linf", 0.1, steps=10, rel_stepsize=0.25)
    crafted = craft(attack, model, x, y)
    assert crafted.n_violations == 0
    assert (ThreatModel("linf", 0.1).distance(crafted.x_adv, x) <= 0.1 + TOLERANCE).all()
    acc = _acc(model, crafted.x_adv, y)
    assert clean > 0.95 and acc < clean - 0.4
    # about as strong as robench's own PGD with the same steps (2.5·ε/steps each)
    native = registry.get("attack", "pgd").cls(ThreatModel("linf", 0.1), steps=10)
    torch.manual_seed(0)
    assert abs(_acc(model, craft(native, model, x, y).x_adv, y) - acc) < 0.1


def test_deepfool_finds_small_adversarials(registry, digits) -> None:
    model, x, y = digits
    attack = _attack(registry, "foolbox.L2DeepFoolAttack", "l2", float("inf"), steps=50)
    crafted = craft(attack, model, x, y)
    assert crafted.n_violations == 0 and torch.isfinite(crafted.x_adv).all()
    assert _acc(model, crafted.x_adv, y) < 0.05
    assert ThreatModel("l2", 1.0).distance(crafted.x_adv, x).median() < 1.0


def test_boundary_attack_improves_on_its_starting_points(registry, digits) -> None:
    model, x, y = digits
    torch.manual_seed(0)
    start = foolbox.attacks.LinearSearchBlendedUniformNoiseAttack(steps=50).run(
        foolbox.PyTorchModel(model, bounds=(0, 1)), x, y
    )
    torch.manual_seed(0)  # the same starting points inside the attack
    attack = _attack(registry, "foolbox.BoundaryAttack", "l2", float("inf"), steps=50)
    crafted = craft(attack, model, x, y)
    assert crafted.n_violations == 0 and _acc(model, crafted.x_adv, y) == 0.0
    l2 = ThreatModel("l2", 1.0)
    d_start, d_adv = l2.distance(start, x), l2.distance(crafted.x_adv, x)
    assert (d_adv <= d_start + 1e-5).all() and d_adv.median() < d_start.median() - 0.05


class Constant(nn.Module):
    """Predicts class 0 whatever the input: no example of class 0 can be fooled."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.copy_(torch.arange(10, 0, -1).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


@pytest.mark.parametrize("name", ["foolbox.BoundaryAttack", "foolbox.HopSkipJumpAttack"])
def test_decision_based_attack_without_a_starting_point(registry, name: str) -> None:
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 0, 0, 4, 5, 6])  # the first three cannot be fooled
    attack = _attack(registry, name, "l2", float("inf"))
    model = Constant().eval()
    with warnings.catch_warnings(), pytest.raises(ValueError, match="init_attack failed"):
        warnings.simplefilter("ignore")  # Foolbox on its own fails for the whole batch
        attack.fb_attack(foolbox.PyTorchModel(model, bounds=(0, 1)), x, y, epsilons=None)
    crafted = craft(attack, model, x, y)
    assert crafted.n_violations == 0 and torch.isfinite(crafted.x_adv).all()
    assert torch.equal(crafted.x_adv[:3], x[:3])


def test_newtonfool_breakdown_leaves_examples_unchanged(registry, digits, caplog) -> None:
    model, x, y = digits
    attack = _attack(registry, "foolbox.NewtonFoolAttack", "l2", float("inf"))
    crafted = craft(attack, model, x, y)
    assert crafted.n_violations == 0 and torch.isfinite(crafted.x_adv).all()
    assert "numerical breakdown" in caplog.text  # confidently classified digits


def test_foolbox_attacks_through_robench_run(tmp_path, monkeypatch) -> None:
    calls = []
    run = FoolboxAttack.run

    def counting(self, model, x, y):
        calls.append((self.name, self.threat.eps, len(x)))
        return run(self, model, x, y)

    monkeypatch.setattr(FoolboxAttack, "run", counting)
    eps = [0.25, 0.5, 1.0]
    config = tiny_config(
        tmp_path,
        attacks=[
            {"name": "foolbox.L2DeepFoolAttack", "norm": "l2", "eps": eps},
            {"name": "foolbox.LinfPGD", "eps": [0.1], "steps": 5, "rel_stepsize": 0.5},
        ],
    )
    config["evaluation"] = {"n_examples": 100, "batch_size": 100}
    df = robench.run(config, quiet=True)
    assert (df["status"] == "ok").all(), df["error"].dropna().tolist()
    # the minimisation attack ran once (one batch) on the clean-correct examples and once on
    # the misclassified ones (a part of its own, robench.scoring), at ε = ∞, and was scored at
    # every ε
    deepfool = [c for c in calls if c[0] == "foolbox.L2DeepFoolAttack"]
    assert len(deepfool) == 2 and {c[1] for c in deepfool} == {float("inf")}
    assert sum(c[2] for c in deepfool) == 100
    rows = df[(df["kind"] == "attack") & (df["attack"] == "foolbox.L2DeepFoolAttack")]
    rows = rows.sort_values("eps")
    assert list(rows["eps"]) == eps and (rows["n_violations"] == 0).all()
    acc = list(rows["accuracy"])
    clean = df[df["kind"] == "clean"]["accuracy"].item()
    assert acc == sorted(acc, reverse=True), "robust accuracy must not grow with ε"
    assert acc[-1] < acc[0] <= clean and acc[-1] < 0.5 * clean
    pgd = df[(df["kind"] == "attack") & (df["attack"] == "foolbox.LinfPGD")]
    assert pgd["accuracy"].item() < clean - 0.2
