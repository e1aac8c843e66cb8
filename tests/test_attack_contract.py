"""The attack contract, for every registered attack, and the framework's guarantees around it.

Every attack in the registry is run with its default parameters on a tiny model that is left
in train mode (dropout, batch norm): the result must lie in the ε-ball and the bounds with no
violation, and the model must come back exactly as it was. Deliberately broken attacks check
that :func:`robench.attack.craft` catches or repairs what a plugin gets wrong.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from robench.attack import Attack, craft
from robench.errors import ContractError
from robench.registry import Entry, build_registry
from robench.threat import NORMS, TOLERANCE, ThreatModel

EPS = {"linf": (0.0, 0.1), "l2": (0.0, 1.0)}


pytestmark = pytest.mark.usefixtures("one_thread")


#: every registered attack: the built-ins and those of installed plugins
ATTACKS: list[Entry] = build_registry().entries("attack")
CASES = [(e, norm, eps) for e in ATTACKS for norm in e.cls.norms for eps in EPS[norm]]


def _case_id(case: tuple[Entry, str, float]) -> str:
    entry, norm, eps = case
    return f"{entry.name}-{norm}-{eps:g}"


class TinyNet(nn.Module):
    """A small CNN with batch norm and dropout, for 1×8×8 inputs in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _model(*, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    model = TinyNet().to(dtype)
    with torch.no_grad():  # non-trivial running stats, so a change would show
        model.features[1].running_mean.uniform_(-0.1, 0.1)
    model.train()
    model.head[1].eval()  # a mixed state: every submodule's own mode must come back
    model.features[0].weight.requires_grad_(False)  # and every parameter's requires_grad
    return model


def _batch(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 1, 8, 8, generator=g, dtype=dtype)
    x[0] = 0.0  # examples at the bounds
    x[1] = 1.0
    return x, torch.randint(0, 10, (6,), generator=g)


def _snapshot(model: nn.Module) -> dict:
    return {
        "modes": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "state": copy.deepcopy(model.state_dict()),
    }


def _assert_unchanged(model: nn.Module, before: dict) -> None:
    after = _snapshot(model)
    assert after["modes"] == before["modes"]
    assert after["requires_grad"] == before["requires_grad"]
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key
    assert all(p.grad is None for p in model.parameters())


def test_registry_has_the_native_attacks() -> None:
    assert {"fgsm", "pgd"} <= {e.name for e in ATTACKS}


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_attack_obeys_the_contract(case: tuple[Entry, str, float], dtype: torch.dtype) -> None:
    entry, norm, eps = case
    threat = ThreatModel(norm, eps)
    attack = entry.cls(threat, **entry.cls.example_params)
    model = _model(dtype=dtype)
    x, y = _batch(dtype)
    x_orig = x.clone()
    before = _snapshot(model)

    torch.manual_seed(0)
    crafted = craft(attack, model, x, y)

    x_adv = crafted.x_adv
    assert (x_adv.shape, x_adv.dtype, x_adv.device) == (x.shape, x.dtype, x.device)
    assert crafted.n_violations == 0 and crafted.max_excess == 0.0
    assert torch.isfinite(x_adv).all()
    assert (threat.distance(x_adv, x) <= eps + TOLERANCE).all()
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    if eps == 0:
        assert torch.equal(x_adv, x)
    assert torch.equal(x, x_orig), "the caller's batch was modified"
    _assert_unchanged(model, before)


# --- framework guarantees, checked with deliberately broken attacks ---------------------------


class OutOfBudget(Attack):
    """Broken: steps 10·ε in every coordinate and leaves the bounds."""

    name = "out-of-budget"

    def run(self, model, x, y):
        return x + 10 * self.threat.eps * torch.sign(torch.randn_like(x)) + 2.0


class NaNs(Attack):
    """Broken: returns NaN for half of the batch."""

    name = "nans"

    def run(self, model, x, y):
        x[::2] = float("nan")
        return x


class ChangesWeights(Attack):
    """Broken: modifies a weight."""

    name = "changes-weights"

    def run(self, model, x, y):
        with torch.no_grad():
            next(model.parameters()).add_(1.0)
        return x


class ChangesBuffers(Attack):
    """Broken: runs a forward pass in train mode, so batch norm updates its running stats."""

    name = "changes-buffers"

    def run(self, model, x, y):
        model.train()
        model(x)
        model.eval()
        return x


class SwitchesToTrain(Attack):
    """Broken: leaves the model in train mode."""

    name = "switches-to-train"

    def run(self, model, x, y):
        model.train()
        return x


class WrongShape(Attack):
    """Broken: drops an example."""

    name = "wrong-shape"

    def run(self, model, x, y):
        return x[1:]


class CallsBackward(Attack):
    """Careless: uses ``loss.backward()`` instead of ``torch.autograd.grad``."""

    name = "calls-backward"

    def run(self, model, x, y):
        x.requires_grad_(True)
        nn.functional.cross_entropy(model(x), y).backward()
        return (x + self.threat.eps * x.grad.sign()).detach()


class LinfOnly(Attack):
    """Supports L∞ only."""

    name = "linf-only"
    norms = ("linf",)

    def run(self, model, x, y):
        return x


@pytest.mark.parametrize("norm", NORMS)
def test_out_of_budget_result_is_projected_and_counted(norm: str) -> None:
    threat = ThreatModel(norm, 0.1)
    model, (x, y) = _model(), _batch()
    crafted = craft(OutOfBudget(threat), model, x, y)
    assert crafted.n_violations == len(x)
    assert crafted.max_excess > 1.0
    assert (threat.distance(crafted.x_adv, x) <= 0.1 + TOLERANCE).all()
    assert crafted.x_adv.min() >= 0.0 and crafted.x_adv.max() <= 1.0


def test_nan_result_is_replaced_and_counted() -> None:
    model, (x, y) = _model(), _batch()
    crafted = craft(NaNs(ThreatModel("linf", 0.1)), model, x, y)
    assert crafted.n_violations == 3 and crafted.max_excess == float("inf")
    assert torch.isfinite(crafted.x_adv).all()
    assert torch.equal(crafted.x_adv[::2], x[::2])


@pytest.mark.parametrize("broken", [ChangesWeights, ChangesBuffers], ids=lambda c: c.name)
def test_modifying_the_model_is_a_contract_error(broken: type[Attack]) -> None:
    model, (x, y) = _model(), _batch()
    with pytest.raises(ContractError, match="modified the model"):
        craft(broken(ThreatModel("linf", 0.1)), model, x, y)


def test_switching_to_train_mode_is_a_contract_error_and_modes_come_back() -> None:
    model, (x, y) = _model(), _batch()
    before = _snapshot(model)
    with pytest.raises(ContractError, match="train mode"):
        craft(SwitchesToTrain(ThreatModel("linf", 0.1)), model, x, y)
    _assert_unchanged(model, before)


def test_wrong_shape_is_a_contract_error() -> None:
    model, (x, y) = _model(), _batch()
    with pytest.raises(ContractError, match="expected a tensor of shape"):
        craft(WrongShape(ThreatModel("linf", 0.1)), model, x, y)


def test_backward_in_an_attack_leaves_no_weight_gradients() -> None:
    model, (x, y) = _model(), _batch()
    before = _snapshot(model)
    craft(CallsBackward(ThreatModel("linf", 0.1)), model, x, y)
    _assert_unchanged(model, before)


def test_unsupported_norm_is_refused_at_construction() -> None:
    LinfOnly(ThreatModel("linf", 0.1))
    with pytest.raises(ValueError, match="does not support norm 'l2'"):
        LinfOnly(ThreatModel("l2", 0.1))
