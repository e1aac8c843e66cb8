"""``check_attack``: the attack contract robench holds every registered attack to."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from robench.attack import Attack, Crafted, craft
from robench.dataset import DatasetInfo
from robench.errors import ConfigError, ContractError
from robench.reproducibility import seed_everything
from robench.testing._common import check_params, check_registration, fail, raised
from robench.testing._tiny import CHANNELS, tiny_data, tiny_model
from robench.threat import NORMS, TOLERANCE, ThreatModel

#: the budgets of the contract cases (ε = 0 must return the input) and of the strength check
EPS = {"linf": (0.0, 0.1), "l2": (0.0, 1.0)}
STRONG_EPS = {"linf": 0.3, "l2": 2.0}
_SYMBOL = {"linf": "L∞", "l2": "L2"}
#: examples in the contract's second, smaller batch, and in the strength check
SMALL_BATCH, STRENGTH_EXAMPLES = 4, 16


def _snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "modes": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "state": copy.deepcopy(model.state_dict()),
    }


def _changed(model: nn.Module, before: dict[str, Any]) -> str | None:
    """What differs from ``before`` (modes, ``requires_grad``, values, gradients), or None."""
    after = _snapshot(model)
    for key in ("modes", "requires_grad"):
        diff = [k for k in before[key] if before[key][k] != after[key].get(k)]
        if diff:
            return f"changed the {key.replace('_', ' ')} of {diff[0] or 'the model'!r}"
    for key, value in before["state"].items():
        if not torch.equal(after["state"][key], value):
            return f"changed the model's {key!r}"
    grads = [n for n, p in model.named_parameters() if p.grad is not None]
    return f"left a gradient on {grads[0]!r}" if grads else None


def _mixed(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``model`` in ``dtype`` in a mixed state: train mode but for dropout, one frozen weight.
    An attack must give every module its mode and every parameter its flag back."""
    model = model.to(dtype).train()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    next(model.parameters()).requires_grad_(False)
    return model


def _rng() -> tuple[torch.Tensor, bytes, object]:
    return torch.random.get_rng_state(), np.random.get_state()[1].tobytes(), random.getstate()


class _Case:
    """One attack of the class under test, run by :func:`craft` with named failures."""

    def __init__(self, subject: str, cls: type[Attack], params: Any, info: DatasetInfo) -> None:
        self.subject, self.cls, self.params, self.info = subject, cls, params, info

    def build(self, norm: str, eps: float) -> Attack:
        threat = ThreatModel(norm, eps, self.info.bounds)  # type: ignore[arg-type]
        try:
            return self.cls(threat, self.params)
        except Exception as exc:
            raise raised(self.subject, f"when built for {_SYMBOL[norm]} ε = {eps:g}", exc) from exc

    def craft(
        self, attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, where: str
    ) -> Crafted:
        try:
            return craft(attack, model, x, y)
        except ContractError as exc:
            raise fail(self.subject, f"broke the contract ({where}): {exc}", exc) from exc
        except Exception as exc:
            raise raised(self.subject, f"({where})", exc) from exc


def _where(norm: str, eps: float, dtype: torch.dtype, n: int, info: DatasetInfo) -> str:
    shape = "×".join(map(str, info.shape))
    return f"{_SYMBOL[norm]} ε = {eps:g}, {str(dtype).removeprefix('torch.')}, {n}×{shape}"


def _data_for(case_of: Callable[[DatasetInfo], _Case], subject: str) -> int:
    """The channel count of the first tiny dataset the attack's ``check`` accepts."""
    refusals = []
    for channels in CHANNELS:
        info = tiny_data(channels)[0]
        case = case_of(info)
        try:
            case.cls.check(case.params, info)
        except ConfigError as exc:
            refusals.append(f"{info.name}: {exc}")
            continue
        except Exception as exc:
            raise raised(subject, f"in check() for dataset {info.name!r}", exc) from exc
        return channels
    raise fail(subject, f"refuses every tiny dataset of the kit ({'; '.join(refusals)})")


def check_attack(
    cls: type[Attack], /, *, fools: bool = True, reproducible: bool = True, **params: Any
) -> None:
    """Hold the attack class ``cls`` to robench's attack contract; raise
    :class:`ContractViolation` (an ``AssertionError``) naming the attack and what broke.

    ``params`` are the attack's parameters, on top of ``cls.example_params``. The checks:

    - robench's registry accepts the class (a valid name, free among the built-ins), it has a
      docstring of its own, its ``norms`` are robench norms, its parameters validate, and it
      refuses a norm it does not list (ValueError);
    - the contract, in each of its norms, at ε = 0 and a small ε, in float32 and float64, on a
      trained tiny CNN left in a mixed state (train mode but for dropout, one frozen weight;
      batch norm statistics that a train-mode forward would move) and a batch with examples
      at both bounds: :func:`robench.api.craft` raises no :class:`ContractError`, the raw
      result needed no projection (within ε, or only the bounds for a minimisation attack;
      no NaN), ε = 0 returns the input, and the model and the caller's batch come back
      exactly as they were, with no gradient left on a parameter;
    - with ``reproducible`` (the default): the same seed (robench seeds Python's, NumPy's and
      torch's global generators before every cell) gives the same result, the attack does
      not reseed those generators itself, and an instance reused on another model and a
      smaller batch gives what a fresh instance gives there (nothing of an earlier call
      cached that should not be). ``reproducible=False`` skips these, for an attack wrapping a
      library that draws from generators of its own, unseeded: its results then differ from
      run to run, which its documentation should say;
    - with ``fools`` (the default), strength: at a large budget (L∞ 0.3, L2 2.0) it fools at
      least one of 16 test digits the tiny model classifies correctly (FGSM fools all 16).
      ``fools=False`` is for an attack not meant to fool anything on its own, or parameters
      too weak to;
    - ``cost()`` is a positive number (checked last).

    The contract batch holds a black and a white image and two digits the tiny model
    classifies correctly but barely (labels: its predictions), and two digits labelled with
    a class it does not predict (robench also attacks misclassified examples). The tiny
    dataset is 1×8×8 grey digits; an attack whose ``check`` refuses it (a ConfigError, e.g. it
    needs RGB images) runs on the same digits in RGB (3×8×8).
    """
    subject = check_registration("attack", cls, Attack)
    norms = getattr(cls, "norms", ())
    if not norms or not isinstance(norms, tuple) or not set(norms) <= set(NORMS):
        raise fail(subject, f"has norms {norms!r}: a non-empty tuple of {NORMS} expected")
    p = check_params(subject, cls, params)
    channels = _data_for(lambda info: _Case(subject, cls, p, info), subject)
    info, _, test = tiny_data(channels)
    case = _Case(subject, cls, p, info)

    for norm in NORMS:
        if norm not in norms:
            try:
                case.build(norm, EPS[norm][1])
            except AssertionError as exc:
                if isinstance(exc.__cause__, ValueError):
                    continue
                raise
            raise fail(subject, f"does not list {norm!r} in its norms but accepts it")
    x, y = contract_batch(tiny_model(channels), test.x, test.y, info)
    runs: dict[tuple[str, float, torch.dtype], _Run] = {}
    for norm in norms:
        for dtype in (torch.float32, torch.float64):
            for eps in EPS[norm]:
                runs[norm, eps, dtype] = _contract_case(case, channels, norm, eps, dtype, x, y)
    if reproducible:
        first = runs[norms[0], EPS[norms[0]][1], torch.float32]
        _reproducibility(case, channels, norms[0], x, y, first)
    if fools:
        for norm in norms:
            _strength(case, channels, norm, test.x, test.y)
    try:
        cost = case.build(norms[0], EPS[norms[0]][1]).cost()
    except Exception as exc:
        raise raised(subject, "in cost()", exc) from exc
    if not (isinstance(cost, int | float) and 0 < cost < float("inf")):
        raise fail(subject, f"has cost() {cost!r}: a positive number of passes expected")


def contract_batch(
    model: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor, info: DatasetInfo
) -> tuple[torch.Tensor, torch.Tensor]:
    """The contract cases' batch of 6 for ``model`` (see :func:`check_attack`)."""
    barely, sure = _barely(model, x_test, y_test, 2), _barely(model, x_test, y_test, -2)
    low, high = info.bounds
    x = torch.cat([torch.full_like(x_test[:2], low), x_test[barely], x_test[sure]])
    x[1] = high
    with torch.no_grad():
        bounds_pred = model(x[:2]).argmax(dim=1)
    y = torch.cat([bounds_pred, y_test[barely], (y_test[sure] + 1) % info.num_classes])
    return x, y


@dataclass(frozen=True)
class _Run:
    """One seeded contract run: its result and the global generators' states around it."""

    x_adv: torch.Tensor
    rng_before: tuple[torch.Tensor, bytes, object]
    rng_after: tuple[torch.Tensor, bytes, object]


def _seeded_run(
    case: _Case, attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int
) -> tuple[Crafted, _Run]:
    where = _where(attack.threat.norm, attack.threat.eps, x.dtype, len(x), case.info)
    seed_everything(seed)
    before = _rng()
    crafted = case.craft(attack, model, x, y, where)
    return crafted, _Run(crafted.x_adv, before, _rng())


def _contract_case(
    case: _Case,
    channels: int,
    norm: str,
    eps: float,
    dtype: torch.dtype,
    x: torch.Tensor,
    y: torch.Tensor,
) -> _Run:
    x = x.to(dtype)
    where = _where(norm, eps, dtype, len(x), case.info)
    model = _mixed(tiny_model(channels), dtype)
    before, x_orig = _snapshot(model), x.clone()
    attack = case.build(norm, eps)
    crafted, run = _seeded_run(case, attack, model, x, y, seed=0)
    threat, x_adv, subject = attack.threat, crafted.x_adv, case.subject
    if (x_adv.shape, x_adv.dtype, x_adv.device) != (x.shape, x.dtype, x.device):
        raise fail(subject, f"returned {tuple(x_adv.shape)} {x_adv.dtype} ({where})")
    if crafted.n_violations:
        what = "the bounds or had NaN" if attack.minimizes else "the ε-ball or the bounds"
        raise fail(
            subject,
            f"left {what} on {crafted.n_violations} of {len(x)} examples, by up to "
            f"{crafted.max_excess:.3g} ({where}): robench projected them back and counts "
            "them in n_violations",
        )
    inside = (threat.distance(x_adv, x) <= eps + TOLERANCE).all()
    if not (torch.isfinite(x_adv).all() and inside and x_adv.min() >= threat.bounds[0]):
        raise fail(subject, f"result is not inside the threat model ({where})")
    if x_adv.max() > threat.bounds[1] or (eps == 0 and not torch.equal(x_adv, x)):
        raise fail(subject, f"result is not inside the threat model ({where})")
    if not torch.equal(x, x_orig):
        raise fail(subject, f"modified the caller's batch ({where})")
    change = _changed(model, before)
    if change is not None:
        raise fail(subject, f"{change} ({where})")
    return run


def _barely(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n: int) -> torch.Tensor:
    """The indices of the ``n`` examples ``model`` classifies correctly with the smallest
    margin (for ``n`` < 0: the ``-n`` with the largest)."""
    with torch.no_grad():
        logits = model(x)
    top = logits.topk(2, dim=1).values
    correct = (logits.argmax(dim=1) == y).nonzero().flatten()
    order = (top[correct, 0] - top[correct, 1]).argsort(descending=n < 0)
    return correct[order[: abs(n)]]


def _reproducibility(
    case: _Case, channels: int, norm: str, x: torch.Tensor, y: torch.Tensor, first: _Run
) -> None:
    """Seed 0 again (a second instance, then reused on another model and a smaller batch, and
    a fresh one there) and seed 1, compared with ``first``, the contract case from seed 0."""
    eps, subject = EPS[norm][1], case.subject
    where = _where(norm, eps, torch.float32, len(x), case.info)
    model = _mixed(tiny_model(channels), torch.float32)
    reused = case.build(norm, eps)
    again = _seeded_run(case, reused, model, x, y, seed=0)[1]
    if not torch.equal(first.x_adv, again.x_adv):
        raise fail(
            subject,
            f"is not reproducible: two runs from the same seed differ ({where}); draw random "
            "numbers from the global generators robench seeds (no time-based seeds)",
        )
    other_seed = _seeded_run(case, case.build(norm, eps), model, x, y, seed=1)[1]
    for i, name in enumerate(("torch's", "NumPy's", "Python's")):
        if _same(first.rng_after[i], other_seed.rng_after[i]) and not _same(
            first.rng_before[i], other_seed.rng_before[i]
        ):
            raise fail(
                subject,
                f"reseeds {name} global random generator ({where}): robench seeds it before "
                "every cell; leave it as seeded (torch.random.fork_rng around a library that "
                "calls manual_seed)",
            )
    other = tiny_model(channels)
    with torch.no_grad():  # another model: the same network with other weights
        for param in other.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=torch.Generator().manual_seed(1)))
    _, _, test = tiny_data(channels)
    barely = _barely(other, test.x, test.y, SMALL_BATCH)  # quickly fooled: a cheap check
    xs, ys = test.x[barely], test.y[barely]
    small = _where(norm, eps, torch.float32, SMALL_BATCH, case.info)
    fresh = case.build(norm, eps)
    results = [_seeded_run(case, a, other, xs, ys, seed=2)[1] for a in (reused, fresh)]
    if not torch.equal(results[0].x_adv, results[1].x_adv):
        raise fail(
            subject,
            f"instance used on one model, then on another with a smaller batch, gives "
            f"another result there than a fresh instance ({small}): is something of the first "
            "call (the model, the batch size) cached?",
        )


def _same(a: object, b: object) -> bool:
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def _strength(
    case: _Case, channels: int, norm: str, x_test: torch.Tensor, y_test: torch.Tensor
) -> None:
    model, eps = tiny_model(channels), STRONG_EPS[norm]
    with torch.no_grad():
        correct = model(x_test).argmax(dim=1) == y_test
    x, y = x_test[correct][:STRENGTH_EXAMPLES], y_test[correct][:STRENGTH_EXAMPLES]
    where = _where(norm, eps, torch.float32, len(x), case.info)
    attack = case.build(norm, eps)
    seed_everything(0)
    x_adv = case.craft(attack, model, x, y, where).x_adv
    with torch.no_grad():
        fooled = int((model(x_adv).argmax(dim=1) != y).sum())
    if fooled == 0:
        raise fail(
            case.subject,
            f"fooled none of the {len(x)} test digits the kit's tiny model classifies "
            f"correctly ({where}; FGSM fools them all): is the attack doing anything? "
            "(check_attack(..., fools=False) for an attack not meant to, or stronger parameters)",
        )


__all__ = ["EPS", "STRONG_EPS", "check_attack", "contract_batch"]
