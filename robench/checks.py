"""Automatic checks that a defense's robustness numbers can be trusted.

Two kinds, both run for every defense by the runner and reported as flags (a short reason
each) in the ``flags`` column of the defense's clean row and in the leaderboard:

- :func:`model_checks` looks at the trained model: input gradients that are exactly zero
  (gradient masking by a non-differentiable step), outputs that are probabilities rather than
  logits (saturated softmax hides gradients), a forward pass that is not deterministic;
- :func:`result_checks` looks at the scores: accuracy under attack above clean accuracy (with
  the clean-misclassified examples attacked too: robust accuracy itself counts only examples
  that are correct clean, so it cannot exceed clean accuracy by construction), robust accuracy
  growing with ε, a single-step attack beating the iterative ones, a gradient-free attack
  beating the white-box ones (also inside an ensemble: Square fooling examples that
  AutoAttack's gradient attacks left robust), and an attack that has not converged (the
  convergence sanity attack, with more steps and restarts, lower than every attack of the
  benchmark at that budget).

A flag is a reason to distrust a number, not proof of a bug; an honest defense raises none.

Unless ``[evaluation] sanity = false``, every defense is also scored by the sanity attacks of
:func:`sanity_attacks`, whatever the benchmark lists: PGD at L∞ ε = 0.5 (half the data range),
which must bring accuracy to chance (:func:`chance_check`); and at each of the benchmark's
budgets random noise and Square (:data:`SQUARE_QUERIES` queries), gradient-free attacks that
must not beat the white-box ones, and APGD-CE with :data:`CONVERGE_RESTARTS` restarts of
:data:`CONVERGE_STEPS` steps, which must not beat them markedly (:data:`CONVERGE_MARGIN`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from robench.attack import attack_mode
from robench.schema import SANITY_PREFIX

if TYPE_CHECKING:  # pragma: no cover
    from robench.config import AttackUse, Benchmark
    from robench.dataset import DatasetInfo
    from robench.registry import Registry

#: the large budget, as a share of the data range, at which PGD must reach chance
LARGE_EPS = 0.5
#: the label of the sanity PGD at that budget
SANITY_PGD = f"{SANITY_PREFIX}pgd-{LARGE_EPS:g}"

#: the gradient-free sanity attack: Square with this many queries at every budget
SANITY_SQUARE = f"{SANITY_PREFIX}square"
SQUARE_QUERIES = 500
#: the convergence sanity attack: APGD-CE, more steps and restarts than a benchmark's attacks
SANITY_CONVERGE = f"{SANITY_PREFIX}apgd-converge"
CONVERGE_STEPS = 100
CONVERGE_RESTARTS = 3
#: how far the convergence attack may go below every attack of the benchmark at its budget
#: before the benchmark's attacks count as not converged: two points (in accuracy) and
#: :data:`CONVERGE_EXAMPLES` examples, whichever is more (a few examples are noise)
CONVERGE_MARGIN = 0.02
CONVERGE_EXAMPLES = 5

#: examples used by the model checks
N_CHECK = 256
#: share of examples whose input gradient is exactly zero above which gradients count as masked
ZERO_GRADIENT_SHARE = 0.5


def model_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[str]:
    """Flags about the trained model, from up to :data:`N_CHECK` examples."""
    x, y = x[:N_CHECK], y[:N_CHECK]
    flags = []
    with attack_mode(model), torch.enable_grad():
        x_in = x.detach().clone().requires_grad_(True)
        out = model(x_in)
        try:
            (grad,) = torch.autograd.grad(F.cross_entropy(out, y, reduction="sum"), x_in)
        except RuntimeError:  # the output does not depend on the input through autograd
            grad = torch.zeros_like(x)
        with torch.no_grad():
            again = model(x)
    zero = (grad.reshape(len(x), -1) == 0).all(dim=1).float().mean().item()
    if zero > ZERO_GRADIENT_SHARE:
        flags.append(
            f"masked gradients: the input gradient is exactly zero for {100 * zero:.0f}% of "
            "examples"
        )
    out = out.detach()
    if (out >= 0).all() and torch.allclose(out.sum(dim=1), torch.ones(len(out)).to(out), atol=1e-3):
        flags.append("outputs are probabilities (non-negative, summing to 1), not logits")
    if not torch.allclose(out, again, rtol=1e-4, atol=1e-5):
        diff = (out - again).abs().max().item()
        flags.append(f"non-deterministic forward pass (two passes differ by up to {diff:.3g})")
    return flags


@dataclass(frozen=True)
class Score:
    """One attack's robust accuracy at one budget, with what the checks need to know of it."""

    attack: str
    norm: str
    eps: float
    accuracy: float
    n_examples: int
    single_step: bool = False
    gradient_free: bool = False
    #: transfer attacks (crafted on another model) are left out of the comparisons
    transfer: bool = False
    #: accuracy on the adversarial examples of every example (clean-misclassified ones
    #: attacked too), None if they were not attacked; and the clean accuracy
    adv_accuracy: float | None = None
    clean_accuracy: float | None = None
    #: an ensemble (autoattack): per component, the examples it fooled first
    fooled_by: tuple[tuple[str, int], ...] = ()
    #: a gradient-free component of that ensemble (its fooled examples are masking evidence)
    free_components: tuple[str, ...] = ()


def _tolerance(n: int) -> float:
    """Slack for comparing two accuracies on ``n`` examples: one point, or one example."""
    return max(0.01, 1.0 / max(n, 1))


def _beats(weaker: list[Score], stronger: list[Score], what: str) -> list[str]:
    """A flag if the strongest of ``weaker`` (a kind of attack that should be the weaker)
    beats the strongest of ``stronger`` by more than the tolerance."""
    if not (weaker and stronger):
        return []
    w = min(weaker, key=lambda s: s.accuracy)
    st = min(stronger, key=lambda s: s.accuracy)
    if w.accuracy >= st.accuracy - _tolerance(st.n_examples):
        return []
    return [f"{what}: {w.attack} {100 * w.accuracy:.1f}% < {st.attack} {100 * st.accuracy:.1f}%"]


def result_checks(scores: Iterable[Score]) -> list[str]:
    """Flags about one defense's scores."""
    scores = [s for s in scores if not s.transfer]
    flags = []
    by_attack: dict[tuple[str, str], list[Score]] = defaultdict(list)
    by_budget: dict[tuple[str, float], list[Score]] = defaultdict(list)
    for s in scores:
        by_attack[(s.attack, s.norm)].append(s)
        by_budget[(s.norm, s.eps)].append(s)
    for s in scores:
        if s.gradient_free or s.adv_accuracy is None or s.clean_accuracy is None:
            continue  # random search may land a misclassified example on the right class
        if s.adv_accuracy > s.clean_accuracy + _tolerance(s.n_examples):
            flags.append(
                f"robust above clean: {s.attack} at {s.norm} {s.eps:g} leaves "
                f"{100 * s.adv_accuracy:.1f}% correct (clean-misclassified examples attacked "
                f"too), clean accuracy is {100 * s.clean_accuracy:.1f}%"
            )
    for (attack, norm), group in by_attack.items():
        group.sort(key=lambda s: s.eps)
        for a, b in pairwise(group):
            if b.accuracy > a.accuracy + _tolerance(b.n_examples):
                flags.append(
                    f"non-monotonic in ε: {attack} leaves {100 * b.accuracy:.1f}% at {norm} "
                    f"{b.eps:g} but {100 * a.accuracy:.1f}% at {a.eps:g}"
                )
    for (norm, eps), group in sorted(by_budget.items()):
        gradient = [s for s in group if not s.gradient_free]
        iterative = [s for s in gradient if not s.single_step]
        single = [s for s in gradient if s.single_step]
        free = [s for s in group if s.gradient_free]
        flags += _beats(single, iterative, f"single-step beats iterative at {norm} {eps:g}")
        flags += _beats(free, gradient, f"gradient-free beats white-box at {norm} {eps:g}")
        flags += _not_converged(group, norm, eps)
    for s in scores:
        flags += _ensemble_free(s)
    return flags


def _ensemble_free(s: Score) -> list[str]:
    """A flag if a gradient-free component of an ensemble fooled more than the tolerance's share
    of the examples: its gradient attacks, which ran first, left those robust."""
    free = sum(n for name, n in s.fooled_by if name in s.free_components)
    if not s.n_examples or free / s.n_examples <= _tolerance(s.n_examples):
        return []
    names = "+".join(name for name, _ in s.fooled_by if name in s.free_components)
    return [
        f"gradient-free beats white-box at {s.norm} {s.eps:g}: in {s.attack}, {names} fooled "
        f"{free} examples ({100 * free / s.n_examples:.1f}%) its gradient attacks left robust"
    ]


def _not_converged(group: list[Score], norm: str, eps: float) -> list[str]:
    """A flag if the convergence sanity attack beats every attack of the benchmark at this
    budget by more than :data:`CONVERGE_MARGIN`."""
    converge = [s for s in group if s.attack == SANITY_CONVERGE]
    own = [s for s in group if not s.attack.startswith(SANITY_PREFIX)]
    if not (converge and own):
        return []
    c = converge[0]
    best = min(own, key=lambda s: s.accuracy)
    margin = max(CONVERGE_MARGIN, CONVERGE_EXAMPLES / max(c.n_examples, 1))
    if c.accuracy >= best.accuracy - margin:
        return []
    return [
        f"not converged at {norm} {eps:g}: APGD-CE with {CONVERGE_RESTARTS} restarts of "
        f"{CONVERGE_STEPS} steps leaves {100 * c.accuracy:.1f}% < {best.attack} "
        f"{100 * best.accuracy:.1f}%"
    ]


def sanity_attacks(bench: Benchmark, registry: Registry, info: DatasetInfo) -> list[AttackUse]:
    """The sanity attacks for ``bench``: PGD-20 at L∞ ε = 0.5 (of the data range), and at every
    budget of the benchmark's attacks random noise (the native ``noise`` attack), Square
    (:data:`SQUARE_QUERIES` queries) and the convergence attack (:data:`SANITY_CONVERGE`)."""
    from robench.config import AttackUse

    lo, hi = info.bounds
    pgd = registry.get("attack", "pgd")
    noise = registry.get("attack", "noise")
    square = registry.get("attack", "square")
    apgd = registry.get("attack", "apgd")
    uses = [
        AttackUse(
            pgd,
            pgd.cls.Params(steps=20),
            label=SANITY_PGD,
            norm="linf",
            eps=(LARGE_EPS * (hi - lo),),
        )
    ]
    for norm in ("linf", "l2"):
        budgets = sorted({e for a in bench.attacks if a.norm == norm for e in a.eps if e > 0})
        if not budgets:
            continue
        for entry, params, label in (
            (noise, noise.cls.Params(), f"{SANITY_PREFIX}noise"),
            (square, square.cls.Params(n_queries=SQUARE_QUERIES), SANITY_SQUARE),
            (
                apgd,
                apgd.cls.Params(steps=CONVERGE_STEPS, restarts=CONVERGE_RESTARTS),
                SANITY_CONVERGE,
            ),
        ):
            uses.append(AttackUse(entry, params, label=label, norm=norm, eps=tuple(budgets)))
    return uses


def chance_check(scores: Iterable[Score], num_classes: int) -> list[str]:
    """Flag a defense that the large-budget sanity PGD does not bring to chance."""
    chance = 1.0 / num_classes
    flags = []
    for s in scores:
        if s.attack == SANITY_PGD and s.accuracy > chance + _tolerance(s.n_examples):
            flags.append(
                f"not broken by a huge budget: PGD at L∞ {s.eps:g} leaves "
                f"{100 * s.accuracy:.1f}% (chance is {100 * chance:.1f}%)"
            )
    return flags
