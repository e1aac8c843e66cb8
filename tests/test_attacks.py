"""Behaviour of the native attacks (FGSM, PGD) on a small MLP trained on scikit-learn's digits."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from robench.attack import Attack, craft
from robench.attacks.fgsm import FGSM
from robench.attacks.pgd import PGD
from robench.threat import NORMS, TOLERANCE, ThreatModel

from .helpers import accuracy_under as _acc
from .helpers import counting_model, trained_digits_mlp
from .helpers import craft_in_budget as _attack
from .helpers import fooled as _fooled

#: budgets at which the undefended MLP is hurt but not broken (clean ≈ 97 %)
EPS = {"linf": 0.1, "l2": 0.5}
#: bounds so wide that clamping never interferes, to observe the raw step
WIDE = (-10.0, 10.0)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """An MLP trained for about a second on 1500 digits; 256 held-out examples (1×8×8)."""
    return trained_digits_mlp(256)


def _input_grad(digits) -> torch.Tensor:
    model, x, y = digits
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(x), y, reduction="sum"), x)
    return grad


def test_the_model_is_accurate(digits) -> None:
    assert _acc(digits, digits[1]) >= 0.95


@pytest.mark.parametrize("norm", NORMS)
def test_fgsm_reduces_accuracy_and_pgd_is_at_least_as_strong(digits, norm: str) -> None:
    threat = ThreatModel(norm, EPS[norm])
    clean = _acc(digits, digits[1])
    fgsm = _acc(digits, _attack(FGSM(threat), digits))
    pgd = _acc(digits, _attack(PGD(threat), digits))
    assert fgsm < clean - 0.2
    assert pgd <= fgsm


@pytest.mark.parametrize("norm", NORMS)
def test_more_eps_means_lower_accuracy(digits, norm: str) -> None:
    scale = EPS[norm]
    accs = [
        _acc(digits, _attack(PGD(ThreatModel(norm, f * scale)), digits)) for f in (0, 0.5, 1, 2)
    ]
    assert accs == sorted(accs, reverse=True)
    assert accs[0] > 0.95 and accs[-1] < 0.1


def test_l2_pgd_uses_the_budget_and_beats_chance(digits) -> None:
    threat = ThreatModel("l2", 1.0)
    x_adv = _attack(PGD(threat), digits)
    dist = threat.distance(x_adv, digits[1])
    assert (dist <= 1.0 + TOLERANCE).all() and dist.median() > 0.9
    assert _acc(digits, x_adv) < 0.1


@pytest.mark.parametrize("norm", NORMS)
def test_restarts_keep_each_examples_worst_case(digits, norm: str) -> None:
    # same seed: the first of three restarts is exactly the single run
    threat = ThreatModel(norm, EPS[norm])
    one = _attack(PGD(threat, steps=3), digits, seed=3)
    three = _attack(PGD(threat, steps=3, restarts=3), digits, seed=3)
    fooled_one, fooled_three = _fooled(digits, one), _fooled(digits, three)
    assert not (fooled_one & ~fooled_three).any(), "restarts lost a fooling example"
    assert fooled_three.sum() >= fooled_one.sum()
    model, _, y = digits
    with torch.no_grad():
        loss_one = nn.functional.cross_entropy(model(one), y, reduction="none")
        loss_three = nn.functional.cross_entropy(model(three), y, reduction="none")
    kept = ~fooled_three
    assert (loss_three[kept] >= loss_one[kept] - 1e-6).all()


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize(
    "attack",
    [
        lambda t: FGSM(t),
        lambda t: FGSM(t, random_start=True),
        lambda t: PGD(t),
        lambda t: PGD(t, random_start=True, restarts=2, loss="margin"),
    ],
    ids=["fgsm", "fgsm-rs", "pgd", "pgd-restarts-margin"],
)
def test_eps_zero_returns_x(digits, norm: str, attack) -> None:
    x_adv = _attack(attack(ThreatModel(norm, 0.0)), digits)
    assert torch.equal(x_adv, digits[1])


@pytest.mark.parametrize("norm", NORMS)
def test_fgsm_random_start_stays_in_the_ball_and_attacks(digits, norm: str) -> None:
    threat = ThreatModel(norm, EPS[norm])
    rs = _attack(FGSM(threat, random_start=True), digits)
    assert (threat.distance(rs, digits[1]) <= threat.eps + TOLERANCE).all()
    assert not torch.equal(rs, _attack(FGSM(threat), digits))
    assert torch.equal(rs, _attack(FGSM(threat, random_start=True), digits))  # same seed
    assert _acc(digits, rs) < _acc(digits, digits[1]) - 0.1


def test_fgsm_rs_default_step_ends_on_the_gradient_side() -> None:
    # the default 1.25·ε step crosses the ball from any start (Wong et al. 2020), so every
    # coordinate ends on the side of its gradient's sign; a 0.5·ε step does not. A linear
    # two-class model has the same gradient sign (that of w_other − w_true) everywhere.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    x, y = torch.rand(32, 1, 8, 8), torch.zeros(32, dtype=torch.long)
    w = model[1].weight.detach()
    sign = (w[1] - w[0]).sign().view(1, 1, 8, 8)
    threat = ThreatModel("linf", 0.1, bounds=WIDE)
    moved = (craft(FGSM(threat, random_start=True), model, x, y).x_adv - x) * sign
    assert (moved > 0).all()
    half = (craft(FGSM(threat, random_start=True, rel_step=0.5), model, x, y).x_adv - x) * sign
    assert (half < 0).any()


def test_step_sizes(digits) -> None:
    x = digits[1]
    linf, l2 = ThreatModel("linf", 0.1, bounds=WIDE), ThreatModel("l2", 0.5, bounds=WIDE)
    moves = _input_grad(digits) != 0
    delta = _attack(FGSM(linf), digits) - x
    assert torch.allclose(delta[moves].abs(), torch.tensor(0.1), atol=1e-6)
    assert (delta[~moves] == 0).all()
    delta = _attack(FGSM(linf, rel_step=0.5), digits) - x
    assert torch.allclose(delta[moves].abs(), torch.tensor(0.05), atol=1e-6)
    assert torch.allclose(l2.distance(_attack(FGSM(l2), digits), x), torch.tensor(0.5))
    one_step = {"steps": 1, "random_start": False, "early_stop": False}
    assert torch.allclose(
        linf.distance(_attack(PGD(linf, step_size=0.03, **one_step), digits), x),
        torch.tensor(0.03),
    )
    assert torch.allclose(
        l2.distance(_attack(PGD(l2, rel_step=0.4, **one_step), digits), x), torch.tensor(0.2)
    )


def test_l2_step_is_normalised_per_example(digits) -> None:
    threat = ThreatModel("l2", 0.5)
    batch = _attack(FGSM(threat), digits)
    model, x, y = digits
    for i in range(0, len(x), 37):
        alone = craft(FGSM(threat), model, x[i : i + 1], y[i : i + 1]).x_adv
        assert torch.allclose(alone, batch[i : i + 1], atol=1e-5)


@pytest.mark.parametrize("attack_cls", [FGSM, PGD])
def test_margin_loss_attacks(digits, attack_cls: type[Attack]) -> None:
    threat = ThreatModel("linf", EPS["linf"])
    margin = _acc(digits, _attack(attack_cls(threat, loss="margin"), digits))
    ce = _acc(digits, _attack(attack_cls(threat), digits))
    assert margin < _acc(digits, digits[1]) - 0.2
    assert abs(margin - ce) < 0.15


@pytest.mark.parametrize("norm", NORMS)
def test_zero_gradient_is_safe(norm: str) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    nn.init.zeros_(model[1].weight)  # the output does not depend on the input
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    threat = ThreatModel(norm, 0.3)
    for attack in (FGSM(threat), PGD(threat, random_start=False)):
        assert torch.equal(craft(attack, model, x, y).x_adv, x)
    crafted = craft(PGD(threat, restarts=2), model, x, y)
    assert crafted.n_violations == 0 and torch.isfinite(crafted.x_adv).all()


def test_random_start_follows_the_global_seed(digits) -> None:
    threat = ThreatModel("linf", EPS["linf"])
    a = _attack(PGD(threat, steps=2), digits, seed=1)
    assert torch.equal(a, _attack(PGD(threat, steps=2), digits, seed=1))
    assert not torch.equal(a, _attack(PGD(threat, steps=2), digits, seed=2))


@pytest.mark.parametrize(
    ("cls", "params"),
    [
        (PGD, {"steps": 0}),
        (PGD, {"restarts": 0}),
        (PGD, {"rel_step": -0.1}),
        (PGD, {"rel_step": 0}),
        (PGD, {"rel_step": float("nan")}),
        (PGD, {"step_size": -1.0}),
        (PGD, {"step_size": 0.01, "rel_step": 0.1}),
        (PGD, {"loss": "hinge"}),
        (PGD, {"stepz": 3}),
        (FGSM, {"rel_step": -1.0}),
        (FGSM, {"loss": "hinge"}),
        (FGSM, {"steps": 3}),
    ],
)
def test_invalid_params_are_refused(cls: type[Attack], params: dict) -> None:
    with pytest.raises(ValidationError):
        cls(ThreatModel("linf", 0.1), **params)


def test_params_and_metadata() -> None:
    for cls in (FGSM, PGD):
        assert set(cls.norms) == {"linf", "l2"}
        assert cls.description()
        assert all(f.description for f in cls.Params.model_fields.values())
    assert PGD.Params().model_dump() == {
        "steps": 10,
        "rel_step": None,
        "step_size": None,
        "random_start": True,
        "restarts": 1,
        "loss": "ce",
        "early_stop": True,
    }
    assert FGSM.Params().model_dump() == {"random_start": False, "rel_step": None, "loss": "ce"}


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize(("random_start", "restarts"), [(False, 1), (True, 1), (True, 3)])
def test_early_stop_never_raises_robust_accuracy_and_costs_less(
    digits, norm, random_start, restarts
):
    model, x, y = digits
    model = counting_model(model.double())
    x = x.double()
    threat = ThreatModel(norm, 2 * EPS[norm])
    kw = {"steps": 10, "random_start": random_start, "restarts": restarts}
    fooled, seen = {}, {}
    for early in (True, False):
        model.seen = 0
        x_adv = _attack(PGD(threat, early_stop=early, **kw), (model, x, y), seed=5)
        seen[early] = model.seen
        fooled[early] = _fooled((model, x, y), x_adv)
    model.model.float()
    # every example the full run fools, the early-stopped run fools too (same start points)
    assert (fooled[True] | ~fooled[False]).all()
    assert fooled[True].sum() >= fooled[False].sum() > 0
    assert seen[True] < 0.7 * seen[False]  # the fooled examples stop costing steps
