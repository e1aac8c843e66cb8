"""Behaviour of the native Square Attack on a small MLP trained on scikit-learn's digits."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from robench import precision
from robench.attack import Attack, craft
from robench.attacks import robench_register_attacks
from robench.attacks.pgd import PGD
from robench.attacks.square import Square, square_fraction
from robench.threat import NORMS, TOLERANCE, ThreatModel

from .helpers import trained_digits_mlp

#: budgets at which the undefended MLP is hurt but not broken (clean ≈ 97 %)
EPS = {"linf": 0.1, "l2": 0.5}
#: budgets at which it breaks
LARGE = {"linf": 0.3, "l2": 2.0}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """An MLP trained for about a second on 1500 digits; 200 held-out examples (1×8×8)."""
    return trained_digits_mlp(200)


def _attack(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int = 0):
    torch.manual_seed(seed)
    crafted = craft(attack, model, x, y)
    assert crafted.n_violations == 0, "a native attack must stay inside the threat model"
    return crafted.x_adv


def _fooled(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(dim=1) != y


def _acc(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    return 1.0 - _fooled(model, x_adv, y).float().mean().item()


class _Recording(nn.Module):
    """Records each forward pass: its batch size, the margins ``z_y − max_{j≠y} z_j`` (for one
    label ``label`` shared by every example), whether autocast was on, the logits' dtype."""

    def __init__(self, model: nn.Module, label: int = 0) -> None:
        super().__init__()
        self.model, self.label = model, label
        self.sizes: list[int] = []
        self.margins: list[torch.Tensor] = []
        self.autocast: list[bool] = []
        self.dtypes: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        self.sizes.append(len(x))
        true = logits[:, self.label]
        other = torch.cat([logits[:, : self.label], logits[:, self.label + 1 :]], 1).amax(1)
        self.margins.append((true - other).detach())
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        self.dtypes.append(logits.dtype)
        return logits


class _Unfoolable(nn.Module):
    """Always says class 0, by a wide margin, whatever the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), 10, dtype=x.dtype)
        logits[:, 0] = 10.0
        return logits + 0.0 * x.flatten(1).sum(1, keepdim=True)


class _Wobble(nn.Module):
    """The MLP behind a tiny high-frequency wobble of its input: ``x + 0.02·sin(1000·x)``.

    It hardly changes what the model computes, but its input gradient is dominated by the
    wobble's derivative ``20·cos(1000·x)``, whose sign is unrelated to the model's: a
    classic way of masking gradients."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x + 0.02 * torch.sin(1000 * x))


# --- metadata and validation ---------------------------------------------------------------


def test_metadata_and_defaults() -> None:
    assert Square.gradient_free is True
    assert Square.name == "square" and set(Square.norms) == {"linf", "l2"}
    assert Square.description()
    assert all(f.description for f in Square.Params.model_fields.values())
    assert Square.Params().model_dump() == {"n_queries": 5000, "p_init": 0.8, "restarts": 1}
    registered: list[type] = []
    robench_register_attacks(registered.append)
    assert Square in registered
    # forward passes only: cheaper per query than a forward-backward pass
    assert 0 < Square(ThreatModel("linf", 0.1)).cost() < 5000


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"n_queries": 0}, "n_queries"),
        ({"n_queries": -5}, "n_queries"),
        ({"p_init": 0}, "p_init"),
        ({"p_init": 1.5}, "p_init"),
        ({"p_init": float("nan")}, "p_init"),
        ({"restarts": 0}, "restarts"),
        ({"queries": 10}, "queries"),
    ],
)
def test_invalid_params_are_refused(params: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Square(ThreatModel("linf", 0.1), **params)


def test_the_schedule_halves_p_and_rescales_to_the_budget() -> None:
    assert [square_fraction(0.8, i, 10000) for i in (0, 10, 11, 50, 51, 9999)] == [
        0.8,
        0.8,
        0.4,
        0.4,
        0.2,
        0.8 / 512,
    ]
    # on 1000 queries the same halvings come ten times sooner
    assert square_fraction(0.8, 1, 1000) == 0.8 and square_fraction(0.8, 2, 1000) == 0.4
    assert square_fraction(0.8, 999, 1000) == 0.8 / 512


# --- the threat model ------------------------------------------------------------------------


def test_linf_perturbation_sits_on_the_corners(digits) -> None:
    model, x, y = digits
    eps = EPS["linf"]
    x_adv = _attack(Square(ThreatModel("linf", eps), n_queries=100), model, x, y)
    delta = x_adv - x
    assert delta.abs().max() <= eps + TOLERANCE
    attacked = ~_fooled(model, x, y)  # the clean misclassified come back unchanged
    assert torch.equal(x_adv[~attacked], x[~attacked])
    # every coordinate at ±ε, except where the bounds clip it (there it sits on the bound)
    corner = (delta.abs() - eps).abs() < 1e-6
    clipped = (x_adv == 0.0) | (x_adv == 1.0)
    assert (corner | clipped)[attacked].all()
    assert corner[attacked].float().mean() > 0.5


@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-10.0, 10.0)], ids=["clipped", "unclipped"])
def test_l2_perturbation_stays_in_the_ball(digits, bounds) -> None:
    model, x, y = digits
    eps = EPS["l2"]
    x_adv = _attack(Square(ThreatModel("l2", eps, bounds), n_queries=100), model, x, y)
    norms = (x_adv - x).flatten(1).norm(dim=1)
    assert (norms <= eps + TOLERANCE).all()
    assert x_adv.min() >= bounds[0] and x_adv.max() <= bounds[1]
    attacked = ~_fooled(model, x, y)
    if bounds == (-10.0, 10.0):  # nothing clips: the whole budget is used, ‖δ‖₂ = ε
        assert torch.allclose(norms[attacked], torch.full_like(norms[attacked], eps), atol=1e-5)
    else:
        assert norms[attacked].min() > 0.5 * eps


@pytest.mark.parametrize("norm", NORMS)
def test_other_input_shapes(digits, norm) -> None:
    model, x, y = digits
    flat = x[:20].flatten(1)  # the MLP flattens anyway: N×64 and N×8×8 inputs work too
    for inputs in (flat, x[:20, 0]):
        x_adv = _attack(Square(ThreatModel(norm, EPS[norm]), n_queries=30), model, inputs, y[:20])
        assert x_adv.shape == inputs.shape


@pytest.mark.parametrize("norm", NORMS)
def test_channels_last_inputs_give_the_same_result(norm) -> None:
    """Batches in channels_last (as [evaluation] channels_last = true gives them) are attacked
    as contiguous ones are, and the model is queried in the layout it was given."""
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    layouts = []

    class Recording(nn.Module):
        def forward(self, x):
            layouts.append(x.is_contiguous(memory_format=torch.channels_last))
            return conv(x)

    model = Recording().eval()
    x, y = torch.rand(6, 3, 8, 8), torch.randint(0, 5, (6,))
    attack = Square(ThreatModel(norm, EPS[norm]), n_queries=20)
    plain = _attack(attack, model, x, y)
    assert not any(layouts)
    layouts.clear()
    cl = _attack(attack, model, x.contiguous(memory_format=torch.channels_last), y)
    assert layouts and all(layouts)
    assert torch.equal(cl, plain)


# --- strength --------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", NORMS)
def test_fools_an_undefended_model_at_a_large_eps(digits, norm) -> None:
    model, x, y = digits
    x_adv = _attack(Square(ThreatModel(norm, LARGE[norm]), n_queries=200), model, x, y)
    assert _acc(model, x_adv, y) <= 0.02


def test_restarts_only_add_fooled_examples(digits) -> None:
    model, x, y = digits
    threat = ThreatModel("linf", EPS["linf"])
    once = _fooled(model, _attack(Square(threat, n_queries=50), model, x, y, seed=3), y)
    thrice = _fooled(model, _attack(Square(threat, n_queries=50, restarts=3), model, x, y, 3), y)
    assert (thrice | ~once).all()  # the first run is the same; later ones only add
    assert thrice.sum() > once.sum()


def test_masked_gradients_do_not_stop_it(digits) -> None:
    """Square needs no gradients: masking them leaves it about as strong, while PGD collapses."""
    model, x, y = digits
    masked = _Wobble(model)
    threat = ThreatModel("linf", EPS["linf"])
    assert _acc(masked, x, y) >= 0.95
    square, pgd = {}, {}
    for name, m in (("plain", model), ("masked", masked)):
        square[name] = _acc(m, _attack(Square(threat, n_queries=300), m, x, y), y)
        pgd[name] = _acc(m, _attack(PGD(threat, steps=20), m, x, y), y)
    assert abs(square["masked"] - square["plain"]) <= 0.12
    assert pgd["masked"] >= pgd["plain"] + 0.3
    assert pgd["masked"] >= square["masked"] + 0.25  # the gradient-free attack is stronger


# --- queries ---------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", NORMS)
def test_fooled_examples_stop_querying(digits, norm) -> None:
    """After the clean pass, each forward pass holds exactly the examples no earlier pass
    fooled: every example the model misclassifies leaves at once with that point."""
    model, x, y = digits
    label = 3
    x = x[y == label]
    recording = _Recording(model, label)
    n_queries = 300
    x_adv = _attack(
        Square(ThreatModel(norm, EPS[norm] * 1.5), n_queries=n_queries),
        recording,
        x,
        torch.full((len(x),), label),
    )
    sizes, margins = recording.sizes, recording.margins
    assert sizes[0] == len(x)  # the clean pass
    for k in range(1, len(sizes)):
        assert sizes[k] == sizes[k - 1] - int((margins[k - 1] < 0).sum())
    fooled = _fooled(model, x_adv, torch.full((len(x),), label))
    assert fooled.sum() == sum(int((m < 0).sum()) for m in margins)
    assert fooled.any() and sum(sizes) < 0.8 * len(x) * (n_queries + 1)


@pytest.mark.parametrize("norm", NORMS)
def test_query_budget(norm) -> None:
    recording = _Recording(_Unfoolable())
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    threat = ThreatModel(norm, 0.5)
    _attack(Square(threat, n_queries=40, restarts=2), recording, x, torch.zeros(5, dtype=int))
    assert recording.sizes == [5] * (1 + 2 * 40)  # the clean pass, then n_queries per restart


@pytest.mark.parametrize("norm", NORMS)
def test_runs_in_full_precision_under_bf16(digits, norm) -> None:
    """Square has no gradient passes: under a bf16 evaluation, or inside an enclosing autocast,
    it queries the model in full precision and finds exactly what it finds in fp32."""
    model, x, y = digits
    x, y = x[:40], y[:40]
    attack = Square(ThreatModel(norm, EPS[norm]), n_queries=50)
    reference = _attack(attack, model, x, y, seed=1)
    for context in (precision.attack_precision("bf16"), torch.autocast("cpu", torch.bfloat16)):
        recording = _Recording(model)
        with context:
            x_adv = _attack(attack, recording, x, y, seed=1)
        assert not any(recording.autocast)
        assert set(recording.dtypes) == {torch.float32}
        assert torch.equal(x_adv, reference)


# --- agreement with torchattacks ---------------------------------------------------------------


class _TopLeft(nn.Module):
    """The MLP on the top-left 8×8 of a 9×9 input."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x[:, :, :8, :8])


@pytest.mark.slow
@pytest.mark.parametrize("norm", NORMS)
def test_agrees_with_torchattacks(digits, norm) -> None:
    """Robust accuracy at n_queries = 1000 matches ``torchattacks.Square`` (seed-averaged).

    torchattacks (a port of the AutoAttack code) draws a window's corner from ``{0..h−s−1}``,
    never ``h−s``, so it never perturbs an image's last row and column after the first query:
    on 8×8 digits it is clearly weaker (robust accuracy ≈ 0.52 against our 0.37 in L∞ at
    ε = 0.1; ≈ 0.62 against 0.57 in L2 at ε = 0.5). To compare the algorithms, torchattacks
    attacks the same model on the digits padded to 9×9 (the model reads the top-left 8×8), with
    ``p_init`` scaled so that its squares have our sides: its windows then cover every real
    pixel. In L2 its initial point still puts some of the budget on the dead pixels, where it
    stays, so there it remains slightly weaker (≈ 2 points over 8 seeds).
    """
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = digits
    eps = EPS[norm]
    padded = nn.functional.pad(x, (0, 1, 0, 1))
    ours, theirs = [], []
    for seed in (0, 1):
        ours.append(
            _acc(
                model, _attack(Square(ThreatModel(norm, eps), n_queries=1000), model, x, y, seed), y
            )
        )
        reference = torchattacks.Square(
            _TopLeft(model),
            norm={"linf": "Linf", "l2": "L2"}[norm],
            eps=eps,
            n_queries=1000,
            n_restarts=1,
            p_init=0.8 * 64 / 81,
            seed=seed,
        )
        theirs.append(_acc(model, reference(padded, y)[:, :, :8, :8], y))
    gap = sum(ours) / 2 - sum(theirs) / 2
    assert 0.2 < sum(ours) / 2 < 0.8  # a budget where the comparison means something
    if norm == "linf":
        assert abs(gap) <= 0.04
    else:
        assert -0.06 <= gap <= 0.03
