"""Auto-PGD (``apgd``) and targeted Auto-PGD (``apgd-t``) on a small MLP trained on digits."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from robench import precision
from robench.attack import Attack, craft
from robench.attacks import _apgd
from robench.attacks.apgd import APGD
from robench.attacks.apgd_t import APGDT
from robench.attacks.pgd import PGD
from robench.evaluation import evaluate
from robench.threat import NORMS, TOLERANCE, ThreatModel

from .helpers import accuracy_under as _acc
from .helpers import counting_model, trained_digits_mlp
from .helpers import craft_in_budget as _attack
from .helpers import fooled as _fooled

#: budgets at which the undefended MLP is hurt but not broken (robust accuracy 30-70 %)
EPS = {"linf": 0.08, "l2": 0.5}
#: budgets that break it
LARGE = {"linf": 0.3, "l2": 2.0}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """An MLP trained for about a second on 1500 digits; 200 held-out examples (1×8×8)."""
    return trained_digits_mlp(200)


# --- the schedule and the losses --------------------------------------------------------------


def _paper_checkpoints(n: int) -> list[int]:
    """w_j = ⌈p_j·N⌉, p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06), in
    whole hundredths (so the ceiling sees no rounding error), up to N."""
    p_prev, p, out = 0, 22, [0]
    while -(-p * n // 100) < n:
        w = -(-p * n // 100)
        if w > out[-1]:
            out.append(w)
        p_prev, p = p, p + max(p - p_prev - 3, 6)
    return out


def test_checkpoints_follow_the_papers_formula() -> None:
    assert _apgd.checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    for n in (1, 5, 10, 20, 50, 100, 250, 1000):
        assert _apgd.checkpoints(n) == _paper_checkpoints(n), n


@pytest.mark.parametrize("loss", ["ce", "dlr", "dlr-targeted"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_closed_form_logit_gradient_matches_autograd(loss: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(64, 10, generator=g, dtype=dtype)
    y = torch.randint(0, 10, (64,), generator=g)
    target = (y + torch.randint(1, 10, (64,), generator=g)) % 10 if loss == "dlr-targeted" else None
    logits[:8].scatter_(1, y[:8, None], 50.0)  # the true class on top
    leaf = logits.clone().requires_grad_(True)
    value = _apgd.apgd_loss(leaf, y, loss, target)
    (grad,) = torch.autograd.grad(value.sum(), leaf)
    value2, grad2 = _apgd.loss_and_logit_grad(logits, y, loss, target)
    torch.testing.assert_close(value2, value.detach())
    torch.testing.assert_close(grad2, grad)


def test_dlr_losses_are_scale_invariant_and_signal_misclassification() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(100, 10, generator=g)
    y = torch.randint(0, 10, (100,), generator=g)
    target = (y + 1) % 10
    dlr = _apgd.dlr_loss(logits, y)
    torch.testing.assert_close(_apgd.dlr_loss(7 * logits - 3, y), dlr)
    assert torch.equal(dlr > 0, logits.argmax(dim=1) != y)
    tdlr = _apgd.targeted_dlr_loss(logits, y, target)
    torch.testing.assert_close(_apgd.targeted_dlr_loss(0.5 * logits + 2, y, target), tdlr)
    z = logits.gather(1, torch.stack((y, target), dim=1))
    assert torch.equal(tdlr > 0, z[:, 1] > z[:, 0])


# --- behaviour --------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize(
    "attack",
    [
        lambda t: APGD(t, steps=10, restarts=2),
        lambda t: APGD(t, steps=10, loss="dlr", early_stop=False),
        lambda t: APGDT(t, steps=5, n_target_classes=3),
    ],
    ids=["apgd-ce", "apgd-dlr", "apgd-t"],
)
def test_results_stay_in_the_ball_and_the_bounds(digits, norm: str, attack) -> None:
    model, x, _ = digits
    for bounds in ((0.0, 1.0), (0.2, 0.8)):  # tight bounds: the clamp does bite
        threat = ThreatModel(norm, 3 * EPS[norm], bounds)
        xb = x.clamp(*bounds)
        x_adv = _attack(attack(threat), (model, xb, digits[2]))
        assert (threat.distance(x_adv, xb) <= threat.eps + TOLERANCE).all()
        assert x_adv.min() >= bounds[0] and x_adv.max() <= bounds[1]


@pytest.mark.parametrize("norm", NORMS)
def test_apgd_ce_is_at_least_as_strong_as_pgd_20(digits, norm: str) -> None:
    threat = ThreatModel(norm, EPS[norm])
    pgd = _acc(digits, _attack(PGD(threat, steps=20), digits))
    apgd = _acc(digits, _attack(APGD(threat), digits))
    assert 0.2 < apgd <= pgd + 0.01


@pytest.mark.parametrize("norm", NORMS)
def test_dlr_and_targeted_fool_an_undefended_model_at_a_large_eps(digits, norm: str) -> None:
    threat = ThreatModel(norm, LARGE[norm])
    assert _acc(digits, _attack(APGD(threat, steps=20, loss="dlr"), digits)) <= 0.02
    assert _acc(digits, _attack(APGDT(threat, steps=20, n_target_classes=3), digits)) <= 0.02


def test_restarts_and_more_targets_only_add_adversarial_examples(digits) -> None:
    threat = ThreatModel("linf", EPS["linf"])
    one = _fooled(digits, _attack(APGD(threat, steps=10), digits, seed=3))
    three = _fooled(digits, _attack(APGD(threat, steps=10, restarts=3), digits, seed=3))
    assert (three | ~one).all() and three.sum() > one.sum()
    one = _fooled(digits, _attack(APGDT(threat, steps=10, n_target_classes=1), digits, seed=3))
    four = _fooled(digits, _attack(APGDT(threat, steps=10, n_target_classes=4), digits, seed=3))
    assert (four | ~one).all() and four.sum() > one.sum()


def test_misclassified_examples_come_back_clean(digits) -> None:
    model, x, y = digits
    wrong = (y + 1) % 10  # every label wrong: nothing to attack
    for attack in (APGD(ThreatModel("linf", 0.1)), APGDT(ThreatModel("l2", 1.0))):
        model = counting_model(digits[0])
        torch.manual_seed(0)
        assert torch.equal(craft(attack, model, x, wrong).x_adv, x)
        assert model.seen == len(x)  # one clean pass, no steps


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("cls", [APGD, APGDT])
def test_early_stop_finds_the_same_examples_for_less(digits, norm: str, cls) -> None:
    model, x, y = digits
    model = counting_model(copy.deepcopy(model)).double()
    x = x.double()
    threat = ThreatModel(norm, EPS[norm])
    kw = {"steps": 20} | ({"n_target_classes": 2} if cls is APGDT else {})
    fooled, seen = {}, {}
    for early in (True, False):
        model.seen = 0
        x_adv = _attack(cls(threat, early_stop=early, **kw), (model, x, y), seed=5)
        seen[early] = model.seen
        fooled[early] = _fooled((model, x, y), x_adv)
    # each example's run is its own: dropping the fooled ones changes nothing for the others
    assert torch.equal(fooled[True], fooled[False])
    assert 0.3 < fooled[True].float().mean() < 0.9
    assert seen[True] < 0.8 * seen[False]  # the fooled examples stop costing steps


class _Noisy(nn.Module):
    """A randomised defense: Gaussian noise on the input of every forward pass."""

    def __init__(self, inner: nn.Module, sigma: float) -> None:
        super().__init__()
        self.inner, self.sigma = inner, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x + self.sigma * torch.randn_like(x))


def test_eot_averages_gradients_over_draws(digits) -> None:
    model, x, y = digits
    noisy = counting_model(_Noisy(model, 0.1))
    threat = ThreatModel("linf", EPS["linf"])
    noisy.seen = 0
    x_adv = _attack(APGD(threat, steps=10, eot_iter=5, early_stop=False), (noisy, x, y))
    # the clean pass, then for each example it classifies correctly: 10 steps of 5 draws and
    # the last point's pass
    attacked, rest = divmod(noisy.seen - len(x), 10 * 5 + 1)
    assert rest == 0 and attacked > 0.8 * len(x)
    # averaged gradients of the noisy model still find adversarial examples of the model
    assert _acc(digits, x_adv) < _acc(digits, x) - 0.2
    # a deterministic model: the average of identical draws is the single draw
    one = _attack(APGD(threat, steps=10), digits, seed=1)
    three = _attack(APGD(threat, steps=10, eot_iter=3), digits, seed=1)
    assert torch.equal(_fooled(digits, one), _fooled(digits, three))


# --- agreement with torchattacks --------------------------------------------------------------


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ({"loss": "ce"}, {"loss": "ce"}),
        ({"loss": "dlr"}, {"loss": "dlr"}),
        ({"n_target_classes": 9}, {"n_classes": 10}),
    ],
    ids=["apgd-ce", "apgd-dlr", "apgd-t"],
)
@pytest.mark.parametrize("norm", NORMS)
def test_agrees_with_torchattacks(digits, norm: str, ours: dict, theirs: dict) -> None:
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = digits
    eps, steps = EPS[norm], 100 if "loss" in ours else 30
    cls, ref = (APGDT, torchattacks.APGDT) if "n_classes" in theirs else (APGD, torchattacks.APGD)
    norm_name = {"linf": "Linf", "l2": "L2"}[norm]
    mine = _acc(digits, _attack(cls(ThreatModel(norm, eps), steps=steps, **ours), digits))
    attack = ref(model, norm=norm_name, eps=eps, steps=steps, n_restarts=1, **theirs)
    reference = _acc(digits, attack(x, y))
    assert 0.2 < reference < 0.8
    assert abs(mine - reference) <= 0.02


# --- precision --------------------------------------------------------------------------------


class _Recording(nn.Module):
    """``inner``, noting for each forward pass whether it ran under CPU autocast and with
    gradients; with ``lie``, a pass under autocast claims class 0 for every example."""

    def __init__(self, inner: nn.Module, lie: bool = False) -> None:
        super().__init__()
        self.inner, self.lie = inner, lie
        self.passes: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        autocast = torch.is_autocast_enabled("cpu")
        self.passes.append((autocast, torch.is_grad_enabled()))
        logits = self.inner(x)
        if self.lie and autocast:
            logits = logits + torch.tensor([100.0] + [0.0] * 9)
        return logits


@pytest.mark.parametrize("cls", [APGD, APGDT])
def test_bf16_gradients_with_full_precision_verdicts(digits, cls) -> None:
    model, x, y = digits
    kw = {"steps": 20} | ({"n_target_classes": 3} if cls is APGDT else {})
    threat = ThreatModel("linf", EPS["linf"])
    spy = _Recording(model)
    bf16 = evaluate(spy, x, y, [cls(threat, **kw)], batch_size=100, precision="bf16")
    assert all(autocast for autocast, grad in spy.passes if grad)  # gradients in bf16
    assert not any(autocast for autocast, grad in spy.passes if not grad)  # verdicts in fp32
    fp32 = evaluate(model, x, y, [cls(threat, **kw)], batch_size=100)
    assert fp32.robust_accuracy < fp32.clean_accuracy - 0.2  # the attack bites
    assert abs(bf16.robust_accuracy - fp32.robust_accuracy) <= 0.05


def test_a_bf16_verdict_alone_stops_nothing(monkeypatch, digits) -> None:
    """bf16 logits that call every example misclassified must not stop APGD (it would return
    its random starts: robust ≈ clean); only the model's full-precision verdict does."""
    model, x, y = digits
    keep = y != 0  # examples of class 0 would really be "correct" under the lie
    x, y = x[keep], y[keep]
    attack = [APGD(ThreatModel("linf", EPS["linf"]), steps=20)]
    lying = evaluate(_Recording(model, lie=True), x, y, attack, batch_size=100, precision="bf16")
    assert lying.robust_accuracy < lying.clean_accuracy - 0.2
    # without the confirmation the lie would stop APGD at once
    monkeypatch.setattr(precision, "reduced", lambda device_type: False)
    fooled = evaluate(_Recording(model, lie=True), x, y, attack, batch_size=100, precision="bf16")
    assert fooled.robust_accuracy > lying.clean_accuracy - 0.1


def test_the_bf16_path_runs_directly(digits) -> None:
    model, x, y = digits
    threat = ThreatModel("l2", EPS["l2"])
    with precision.attack_precision("bf16"):
        torch.manual_seed(0)
        out = _apgd.apgdt_outcome(model, x, y, threat, n_target_classes=2, steps=10)
    assert torch.equal(out.fooled, _fooled(digits, out.x_adv))  # the verdicts are the model's
    assert (threat.distance(out.x_adv, x) <= threat.eps + TOLERANCE).all()


# --- parameters and errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "params"),
    [
        (APGD, {"steps": 0}),
        (APGD, {"restarts": 0}),
        (APGD, {"loss": "margin"}),
        (APGD, {"rho": 0}),
        (APGD, {"rho": 1.5}),
        (APGD, {"n_target_classes": 3}),
        (APGDT, {"n_target_classes": 0}),
        (APGDT, {"steps": 0}),
        (APGDT, {"restarts": 0}),
        (APGDT, {"loss": "ce"}),
        (APGD, {"eot_iter": 0}),
    ],
)
def test_invalid_params_are_refused(cls: type[Attack], params: dict) -> None:
    with pytest.raises(ValidationError):
        cls(ThreatModel("linf", 0.1), **params)


def test_too_many_target_classes_fail_when_the_attack_runs(digits) -> None:
    attack = APGDT(ThreatModel("linf", 0.1), n_target_classes=10)
    with pytest.raises(ValueError) as err:
        _attack(attack, digits)
    assert str(err.value) == (
        "apgd-t: n_target_classes = 10 exceeds the number of classes minus one (9)"
    )
    three = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(ValueError, match="apgd-t: the targeted DLR loss needs at least 4 classes"):
        _attack(APGDT(ThreatModel("linf", 0.1), n_target_classes=2), (three, *digits[1:]))
    two = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    with pytest.raises(ValueError, match="apgd: the DLR loss needs at least 3 classes"):
        _attack(APGD(ThreatModel("linf", 0.1), loss="dlr"), (two, *digits[1:]))


def test_params_and_metadata() -> None:
    assert APGD.name == "apgd" and APGDT.name == "apgd-t"
    for cls in (APGD, APGDT):
        assert set(cls.norms) == {"linf", "l2"}
        assert cls.description()
        assert all(f.description for f in cls.Params.model_fields.values())
    assert APGD.Params().model_dump() == {
        "steps": 100,
        "restarts": 1,
        "loss": "ce",
        "rho": 0.75,
        "early_stop": True,
        "eot_iter": 1,
    }
    assert APGDT.Params().model_dump() == {
        "n_target_classes": 9,
        "steps": 100,
        "restarts": 1,
        "rho": 0.75,
        "early_stop": True,
        "eot_iter": 1,
    }
    threat = ThreatModel("linf", 0.1)
    assert APGD(threat).cost() == 101
    assert APGDT(threat).cost() == 9 * 101
    assert math.isclose(APGD(threat, steps=10, restarts=2).cost(), 22)
    assert math.isclose(APGD(threat, steps=10, eot_iter=20).cost(), 201)
