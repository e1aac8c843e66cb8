"""FAB and FAB-T (Croce & Hein 2020), the native minimisation attack, on the digits MLP."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from robench.attack import attack_mode, craft
from robench.attacks import robench_register_attacks
from robench.attacks.fab import FAB
from robench.attacks.pgd import PGD
from robench.dataset import DatasetInfo
from robench.errors import ConfigError
from robench.precision import attack_precision
from robench.threat import NORMS, ThreatModel

from .helpers import counting_model, trained_digits_mlp

#: mid budgets: the undefended MLP keeps 30-40 % (clean ≈ 98 %)
EPS = {"linf": 0.1, "l2": 0.5}
#: ε grids on which PGD looks for each example's smallest breaking budget
GRID = {"linf": torch.linspace(0.02, 0.3, 15), "l2": torch.linspace(0.1, 1.5, 15)}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The MLP trained on 1500 digits and 200 held-out examples (1×8×8 in [0, 1])."""
    return trained_digits_mlp(200)


def _craft(attack: FAB, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int = 0):
    torch.manual_seed(seed)
    crafted = craft(attack, model, x, y)
    assert crafted.n_violations == 0, "FAB must stay inside the bounds"
    return crafted.x_adv


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1) == y


def _minimal(norm: str, **params) -> FAB:
    """FAB as robench runs a minimisation attack: at ε = ∞."""
    return FAB(ThreatModel(norm, math.inf), **params)


def _robust_at(model, x_adv, x, y, norm: str, eps: float) -> float:
    """Robust accuracy at ε of a minimisation result: projected into the ε-ball, as scored."""
    return _correct(model, ThreatModel(norm, eps).project(x_adv, x), y).float().mean().item()


@pytest.fixture(scope="module")
def pgd_needs(digits) -> dict[str, float]:
    """Per norm: the median over examples of the smallest ε of the grid where PGD-20 fools."""
    model, x, y = digits
    out = {}
    for norm, grid in GRID.items():
        need = torch.full((len(x),), math.inf)
        for eps in grid.flip(0):
            torch.manual_seed(0)
            fooled = ~_correct(
                model, craft(PGD(ThreatModel(norm, float(eps)), steps=20), model, x, y).x_adv, y
            )
            need[fooled] = float(eps)
        out[norm] = need.median().item()
    return out


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("targeted", [False, True])
def test_results_stay_in_the_bounds(digits, norm: str, targeted: bool) -> None:
    model, x, y = digits
    lo, hi = 0.2, 0.8  # bounds the clean points lie in, tight enough to bind
    x = lo + (hi - lo) * x[:64]
    threat = ThreatModel(norm, math.inf, bounds=(lo, hi))
    attack = FAB(threat, steps=10, restarts=2, targeted=targeted, n_target_classes=2)
    torch.manual_seed(0)
    with attack_mode(model), torch.enable_grad():
        raw = attack.run(model, x.clone(), y[:64])  # the attack's own output, before craft
    assert raw.min() >= lo and raw.max() <= hi
    assert torch.isfinite(raw).all()
    changed = (raw != x).flatten(1).any(dim=1)
    assert changed[_correct(model, x, y[:64])].float().mean() > 0.9  # it did attack
    assert craft(attack, model, x, y[:64]).n_violations == 0
    # with a finite ε too (the result may leave the ball: only the bounds count)
    crafted = craft(FAB(ThreatModel(norm, EPS[norm], (lo, hi)), steps=10), model, x, y[:64])
    assert crafted.n_violations == 0


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("targeted", [False, True])
def test_fools_nearly_everything_with_no_more_than_pgd_needs(
    digits, pgd_needs, norm: str, targeted: bool
) -> None:
    model, x, y = digits
    x_adv = _craft(_minimal(norm, steps=10, targeted=targeted), model, x, y)
    clean = _correct(model, x, y)
    fooled = ~_correct(model, x_adv, y)
    assert fooled[clean].float().mean() >= 0.97
    distance = ThreatModel(norm, 1.0).distance(x_adv, x)
    assert distance[clean & fooled].median() <= 1.05 * pgd_needs[norm]
    # the examples misclassified without attack come back as they are
    assert torch.equal(x_adv[~clean], x[~clean])
    # and an example the attack changed is one it fooled
    changed = (x_adv != x).flatten(1).any(dim=1)
    assert (fooled | ~changed).all()


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("targeted", [False, True])
def test_agrees_with_torchattacks(digits, norm: str, targeted: bool) -> None:
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = digits
    eps, steps = EPS[norm], 10
    ours = _robust_at(
        model, _craft(_minimal(norm, steps=steps, targeted=targeted), model, x, y), x, y, norm, eps
    )
    theirs_attack = torchattacks.FAB(
        model,
        norm={"linf": "Linf", "l2": "L2"}[norm],
        eps=eps,
        steps=steps,
        n_restarts=1,
        multi_targeted=targeted,
        n_classes=10,
    )
    theirs = _robust_at(model, theirs_attack(x, y), x, y, norm, eps)  # within ε already
    assert abs(ours - theirs) <= 0.03, (ours, theirs)


@pytest.mark.parametrize("norm", NORMS)
def test_early_stop_within_the_budget(digits, norm: str) -> None:
    model, x, y = digits
    counting = counting_model(model)
    eps = EPS[norm]
    params = {"steps": 10, "targeted": True, "n_target_classes": 3}
    robust, seen = {}, {}
    for early in (True, False):
        counting.seen = 0
        x_adv = _craft(FAB(ThreatModel(norm, eps), early_stop=early, **params), counting, x, y)
        seen[early] = counting.seen
        robust[early] = _robust_at(model, x_adv, x, y, norm, eps)
    # done examples (an adversarial within ε) stop costing passes, and stay broken
    assert seen[True] < 0.6 * seen[False]
    assert robust[True] <= robust[False] + 1 / len(x)
    # at ε = ∞ nothing is ever done: every example takes every step
    runs = [_craft(_minimal(norm, early_stop=e, **params), model, x, y) for e in (True, False)]
    assert torch.equal(*runs)


@pytest.mark.parametrize("norm", NORMS)
def test_restarts_keep_each_examples_smallest_adversarial(digits, norm: str) -> None:
    model, x, y = digits
    one = _craft(_minimal(norm, steps=10), model, x, y)
    three = _craft(_minimal(norm, steps=10, restarts=3), model, x, y, seed=1)
    dist = ThreatModel(norm, 1.0).distance
    fooled = ~_correct(model, one, y)
    assert (~_correct(model, three, y) | ~fooled).all()  # the first run starts at x both times
    assert (dist(three, x)[fooled] <= dist(one, x)[fooled] + 1e-6).all()
    assert dist(three, x)[fooled].mean() < dist(one, x)[fooled].mean()


@pytest.mark.parametrize("targeted", [False, True])
def test_bf16_gradients_are_scored_in_full_precision(digits, targeted: bool) -> None:
    model, x, y = digits
    results = {}
    for prec in ("fp32", "bf16"):
        with attack_precision(prec):
            attack = _minimal("linf", steps=10, targeted=targeted, n_target_classes=2)
            results[prec] = _craft(attack, model, x, y)
    x_adv = results["bf16"]
    fooled = ~_correct(model, x_adv, y)
    changed = (x_adv != x).flatten(1).any(dim=1)
    assert (fooled | ~changed).all()  # kept only where the fp32 model is fooled
    assert fooled[_correct(model, x, y)].float().mean() >= 0.95
    bf16, fp32 = (_robust_at(model, results[p], x, y, "linf", EPS["linf"]) for p in results)
    assert abs(bf16 - fp32) <= 0.05


class _NumpyReLU(torch.autograd.Function):
    """A ReLU whose backward goes through NumPy, which vmap cannot batch."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return torch.from_numpy(grad.numpy() * (x.numpy() > 0))


class _Net(nn.Module):
    def __init__(self, numpy_relu: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.numpy_relu = nn.Linear(64, 32), nn.Linear(32, 10), numpy_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x.flatten(1))
        return self.b(_NumpyReLU.apply(h) if self.numpy_relu else torch.relu(h))


def test_models_vmap_cannot_batch_get_one_backward_per_class() -> None:
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(16) % 10
    out = {}
    for numpy_relu in (False, True):
        attack = _minimal("l2", steps=5)
        out[numpy_relu] = _craft(attack, _Net(numpy_relu), x, y)
        assert attack._vectorized is not numpy_relu
    torch.testing.assert_close(out[True], out[False])


def test_too_many_target_classes_are_refused(digits) -> None:
    model, x, y = digits
    attack = _minimal("linf", targeted=True, n_target_classes=10)
    with pytest.raises(ValueError, match=r"^fab: n_target_classes = 10 exceeds the number of "):
        craft(attack, model, x[:4], y[:4])
    info = DatasetInfo("digits", (1, 8, 8), 10, (0.0,), (1.0,))
    with pytest.raises(ConfigError, match="n_target_classes"):
        FAB.check(FAB.Params(targeted=True, n_target_classes=10), info)
    FAB.check(FAB.Params(targeted=True, n_target_classes=9), info)
    FAB.check(FAB.Params(n_target_classes=10), info)  # untargeted: no targets to pick


@pytest.mark.parametrize(
    "params",
    [
        {"steps": 0},
        {"restarts": 0},
        {"n_target_classes": 0},
        {"eta": 0.9},
        {"alpha_max": 1.5},
        {"beta": 0.0},
        {"beta": 1.2},
    ],
)
def test_invalid_params_are_refused(params: dict) -> None:
    with pytest.raises(ValidationError):
        FAB(ThreatModel("linf", 0.1), **params)


def test_metadata_and_defaults() -> None:
    registered: list[type] = []
    robench_register_attacks(registered.append)
    assert FAB in registered and FAB.name == "fab"
    assert FAB.minimizes and set(FAB.norms) == {"linf", "l2"}
    assert FAB.Params().model_dump() == {
        "steps": 100,
        "restarts": 1,
        "targeted": False,
        "n_target_classes": 9,
        "eta": 1.05,
        "alpha_max": 0.1,
        "beta": 0.9,
        "early_stop": True,
    }
    fab_t = FAB(ThreatModel("linf", 8 / 255), targeted=True)
    assert fab_t.cost() < FAB(ThreatModel("linf", 8 / 255)).cost() * 9
