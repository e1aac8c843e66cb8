"""Scoring a trained model: the one engine behind ``robench run`` and :func:`robench.api.evaluate`.

A *cell* is one attack at one budget (norm, ε) with its seed. :class:`Scorer` runs the cells of
one model on its evaluation set ``(x, y)`` under the ``[evaluation]`` settings
(:class:`~robench.schema.EvaluationConfig`; the same defaults for both entry points):

- every attack runs on the examples classified correctly without attack; an example
  misclassified clean counts as not robust (as in AutoAttack and RobustBench), so robust
  accuracy can never exceed clean accuracy;
- ``cascade``: per budget, the attacks run cheapest first (:func:`cascade_cost`), each only on
  the examples every earlier one of its budget left robust; each outcome is then cumulative
  (robust to it and every attack before it). Transfer and sanity attacks stay outside it;
- ``attack_misclassified``: per budget, ONE attack also attacks the clean-misclassified
  examples, for the robust ≤ clean check (its ``adv_correct``, the ``adv_accuracy`` column):
  in a cascade the first (it runs on every clean-correct example anyway), otherwise the most
  expensive by :func:`cascade_cost`, the first of them in run order on a tie (the strongest
  attack, whose number the worst case rests on). The other attacks of that budget run on the
  clean-correct examples only and have no ``adv_correct`` (None). Transfer and sanity attacks
  attack the misclassified examples too, each (they have a protocol of their own). That part
  runs apart from the attack on the clean-correct examples, after it and with a seed of its own
  (:func:`misclassified_seed`), so an attack's robust accuracy never depends on whether it had
  the part (adding a stronger attack to a budget leaves the others' outcomes as they were);
- minimisation attacks (:attr:`Attack.minimizes`) run once per model with ε = ∞, on every
  clean-correct example, seeded with the seed of their first cell in run order (and once on
  the misclassified examples, if one of their cells has that part); every budget projects that
  result into its ε-ball;
- before each attack runs, the global generators are seeded with the cell's seed
  (:func:`robench.reproducibility.seed_everything`); the runner derives it as
  ``cell_seed(training seed, defense label, attack label, norm, ε)``, and so does
  :func:`robench.api.evaluate` from its ``seed`` and ``defense`` arguments.

So ``evaluate()`` on a model gives the same per-example outcomes as a benchmark run of that
model, given the same attacks (labels, order, parameters), settings and seeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from robench.attack import Attack, craft
from robench.precision import Precision, attack_precision
from robench.reproducibility import cell_seed, seed_everything
from robench.schema import EvaluationConfig
from robench.threat import ThreatModel


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Predicted labels, in eval mode, batch by batch (``x`` already on the model's device)."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(xb).argmax(1) for xb in x.split(batch_size)])
    finally:
        model.train(was_training)


#: a few adversarial examples of a cell: (positions in the evaluation set, adversarial
#: examples, the model's predicted labels on them), on the model's device
Kept = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def join_kept(parts: Sequence[Kept | None]) -> Kept | None:
    """The watched examples of several parts (or chunks) of a cell, in one :data:`Kept`."""
    found = [p for p in parts if p is not None]
    if not found:
        return None
    return tuple(torch.cat([p[i] for p in found]) for i in range(3))  # type: ignore[return-value]


@dataclass(frozen=True)
class AttackOutcome:
    """What one attack at one budget did to the evaluation set."""

    #: per example: still classified correctly after the attack (False where clean was wrong);
    #: in a cascade: after it and every earlier attack of its budget (``chain``)
    robust: torch.Tensor
    #: examples whose raw attack output left the ε-ball or the bounds, and the largest excess
    n_violations: int
    max_violation: float
    #: per example: the adversarial example is classified correctly, the clean-misclassified
    #: examples attacked too (the robust ≤ clean check); None where this attack ran on the
    #: clean-correct examples only
    adv_correct: torch.Tensor | None = None
    #: examples the attack was run on (a minimisation attack: at its one run, else 0)
    n_attacked: int = 0
    #: in a cascade: the labels of the attacks ``robust`` is robust to, in run order (this one
    #: last); empty outside a cascade
    chain: tuple[str, ...] = ()
    #: an ensemble attack (:meth:`Attack.fooled_by`): per component, the examples it fooled
    fooled_by: tuple[tuple[str, int], ...] = ()
    #: the watched examples (the first ``watch`` of the evaluation set) this attack ran on:
    #: their positions, adversarial examples and predicted labels (None: none watched)
    examples: Kept | None = None


def no_kept(x: torch.Tensor) -> Kept:
    """No watched example: empty positions, examples shaped like ``x``'s, predictions."""
    empty = torch.zeros(0, dtype=torch.int64, device=x.device)
    return empty, x[:0], empty.clone()


def attack_outcome(
    model: nn.Module,
    attack: Attack,
    x: torch.Tensor,
    y: torch.Tensor,
    clean_correct: torch.Tensor,
    batch_size: int,
    keep: torch.Tensor | None = None,
    source: nn.Module | None = None,
    misclassified: bool = False,
    precision: Precision = "fp32",
    watch: int = 0,
) -> AttackOutcome:
    """Attack the clean-correct examples (``clean_correct``: or any subset to attack, such as
    those still robust in a cascade) and report which stay correct.

    With ``misclassified``, every example is attacked (the clean-misclassified ones too) and
    ``adv_correct`` tells, for every example, whether its adversarial example is classified
    correctly: the raw accuracy under attack, which a sound attack keeps at or below clean
    accuracy (the robust ≤ clean check). With ``keep`` (a tensor shaped like ``x``), the
    adversarial examples are written into it. With ``source``, a transfer attack: the examples
    are crafted on ``source`` and scored on ``model``. ``precision`` is the precision of the
    attack's gradient passes (:mod:`robench.precision`); the scoring is in the model's own.
    ``watch``: the adversarial examples of the first ``watch`` examples of ``x`` that are
    attacked, and the model's predictions on them, are kept (``examples``).
    """
    adv_correct = torch.zeros_like(clean_correct)
    idx = torch.arange(len(x), device=x.device) if misclassified else clean_correct.nonzero()
    n_bad, worst = 0, 0.0
    before = attack.fooled_by()
    kept: list[Kept] = []
    for chunk in idx.flatten().split(batch_size):
        with attack_precision(precision):
            crafted = craft(attack, source if source is not None else model, x[chunk], y[chunk])
        n_bad += crafted.n_violations
        worst = max(worst, crafted.max_excess)
        pred = predict(model, crafted.x_adv, batch_size)
        adv_correct[chunk] = pred == y[chunk]
        if keep is not None:
            keep[chunk] = crafted.x_adv
        watched = chunk < watch
        if watched.any():
            kept.append((chunk[watched], crafted.x_adv[watched].detach(), pred[watched]))
    after = attack.fooled_by()
    return AttackOutcome(
        clean_correct & adv_correct,
        n_bad,
        worst,
        adv_correct if misclassified else None,
        len(idx),
        fooled_by=tuple((name, n - before.get(name, 0)) for name, n in after.items()),
        examples=(join_kept(kept) or no_kept(x)) if watch else None,
    )


#: the two parts of a cell: its attack on its targets, and on the clean-misclassified examples
MAIN, MISCLASSIFIED = "main", "misclassified"


def misclassified_seed(seed: int) -> int:
    """The seed of a cell's part on the clean-misclassified examples (from the cell's seed)."""
    return cell_seed(seed, MISCLASSIFIED)


def cascade_cost(attack: Attack) -> float:
    """Where ``attack`` goes in a cascade: by :meth:`Attack.cost`, minimisation attacks last
    (their one run at ε = ∞ covers every budget, on every clean-correct example, so nothing is
    saved by running them earlier)."""
    return math.inf if attack.minimizes else attack.cost()


@dataclass(frozen=True)
class Cell:
    """One attack at one budget, with the seed it runs under."""

    #: the attack's label: with ``norm`` it names one attack configuration (a benchmark's
    #: ``[[attacks]]`` table), which may be scored at several ε
    label: str
    norm: str
    eps: float
    seed: int
    #: the attack built for a budget ε of ``norm`` (``math.inf`` for a minimisation attack)
    build: Callable[[float], Attack]
    minimizes: bool = False
    #: the data's bounds (a minimisation attack's result is projected into each ε-ball)
    bounds: tuple[float, float] = (0.0, 1.0)
    #: a transfer attack: the label of the defense whose model it crafts on ("" white-box)
    source: str = ""
    #: a sanity attack of the trust checks (:func:`robench.checks.sanity_attacks`)
    sanity: bool = False

    @property
    def budget(self) -> tuple[str, float]:
        return self.norm, self.eps

    @property
    def key(self) -> tuple[str, str, float]:
        return self.label, self.norm, self.eps

    @classmethod
    def of(cls, attack: Attack, label: str, seed: int) -> Cell:
        """``attack`` (built for its budget) as a cell; at another ε (a minimisation attack's
        run at ε = ∞) the same class with the same parameters."""
        threat = attack.threat

        def build(eps: float) -> Attack:
            if eps == threat.eps:
                return attack
            return type(attack)(ThreatModel(threat.norm, eps, threat.bounds), attack.params)

        return cls(label, threat.norm, threat.eps, seed, build, attack.minimizes, threat.bounds)


def _cost(cell: Cell) -> float | None:
    """:func:`cascade_cost` of the cell's attack; None if it cannot be built."""
    try:
        return cascade_cost(cell.build(cell.eps))
    except Exception:
        return None


def _or_inf(cost: float | None) -> float:
    return math.inf if cost is None else cost


class Plan:
    """The order in which a model's cells run and who attacks what, decided from the cells and
    the ``[evaluation]`` settings alone (no model needed: the runner keys cells with it before
    it loads the model)."""

    def __init__(self, evaluation: EvaluationConfig, cells: Sequence[Cell]) -> None:
        self.evaluation = evaluation
        own = [c for c in cells if not c.sanity]
        # the attack's cost; None where it cannot be built (it fails when scored, recorded)
        cost = {c.key: _cost(c) for c in own}
        if evaluation.cascade:
            own.sort(key=lambda c: (c.norm, c.eps, _or_inf(cost[c.key])))
        #: the cells in the order to run: the benchmark's own (in a cascade by budget, then
        #: by cost), then the sanity attacks
        self.order: list[Cell] = own + [c for c in cells if c.sanity]
        #: per budget: the attack that also attacks the clean-misclassified examples
        self.misclassified_by: dict[tuple[str, float], tuple[str, str, float]] = {}
        best: dict[tuple[str, float], float] = {}
        for c in own if evaluation.attack_misclassified else ():
            here = cost[c.key]
            if c.source or here is None:
                continue  # a transfer attack attacks them itself
            if c.budget not in best or (not evaluation.cascade and here > best[c.budget]):
                self.misclassified_by[c.budget], best[c.budget] = c.key, here
        #: per minimisation attack (label, norm): its first cell in run order, whose seed its
        #: one run at ε = ∞ uses
        self.first_minimal: dict[tuple[str, str], Cell] = {}
        for c in self.order:
            if c.minimizes:
                self.first_minimal.setdefault((c.label, c.norm), c)

    def in_cascade(self, cell: Cell) -> bool:
        """Whether ``cell`` runs on what the earlier attacks of its budget left robust."""
        return self.evaluation.cascade and not cell.sanity and not cell.source

    def attacks_misclassified(self, cell: Cell) -> bool:
        """Whether ``cell`` also attacks the clean-misclassified examples (``adv_correct``)."""
        if not self.evaluation.attack_misclassified:
            return False
        if cell.sanity or cell.source:
            return True
        return self.misclassified_by.get(cell.budget) == cell.key

    def minimal_first(self, cell: Cell, part: str) -> Cell:
        """A minimisation attack's cell: the first cell of its attack in run order that needs
        ``part`` (``MAIN``: every cell; ``MISCLASSIFIED``: those that attack the
        misclassified examples), whose seed that part's one run uses."""
        if part == MAIN:
            return self.first_minimal[(cell.label, cell.norm)]
        return next(
            c
            for c in self.order
            if (c.label, c.norm) == (cell.label, cell.norm) and self.attacks_misclassified(c)
        )


class Scorer:
    """The attack cells of one trained model on the evaluation set ``(x, y)`` (on the model's
    device), under the ``[evaluation]`` settings ``evaluation`` (batch_size, cascade,
    attack_misclassified, precision; the caller puts model and ``x`` in channels_last).

    ``order`` holds the cells in the order to run them (:class:`Plan`; the module docstring
    says which); :meth:`score` runs one, and must be called in that order (a cell that raised
    may be skipped; a cell whose outcome is known already, e.g. stored by an earlier run, is
    given with :meth:`known` instead). ``clean`` (computed if not given) says which examples
    are classified correctly without attack. ``source_of(label)`` is the model a transfer
    attack crafts on. ``watch``: each outcome keeps the adversarial examples of the first
    ``watch`` examples of ``x`` that its attack ran on (:attr:`AttackOutcome.examples`).
    """

    def __init__(
        self,
        evaluation: EvaluationConfig,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        cells: Sequence[Cell],
        *,
        clean: torch.Tensor | None = None,
        source_of: Callable[[str], nn.Module] | None = None,
        plan: Plan | None = None,
        watch: int = 0,
    ) -> None:
        self.evaluation = evaluation
        self.watch = watch
        self.model, self.x, self.y = model, x, y
        self.clean = predict(model, x, evaluation.batch_size) == y if clean is None else clean
        self.source_of = source_of
        self.plan = plan or Plan(evaluation, cells)
        self.order = self.plan.order
        #: cascade: per budget, the examples robust to every attack so far, and those attacks
        self.alive: dict[tuple[str, float], tuple[torch.Tensor, tuple[str, ...]]] = {}
        #: per minimisation attack (label, norm): its adversarial examples at ε = ∞ and that
        #: run's outcome
        self.minimal: dict[tuple[str, str], tuple[torch.Tensor, AttackOutcome]] = {}

    def chain(self, cell: Cell) -> tuple[str, ...]:
        """In a cascade, the labels of the earlier attacks of ``cell``'s budget that ran (its
        targets are what they left robust); empty otherwise."""
        if not self.plan.in_cascade(cell):
            return ()
        return self.alive.get(cell.budget, (self.clean, ()))[1]

    def known(self, cell: Cell, outcome: AttackOutcome) -> AttackOutcome:
        """Take ``outcome`` as ``cell``'s without running it (in run order, as :meth:`score`):
        a cascade goes on from it. Returns it, its chain filled in as :meth:`score` would."""
        return self._after(cell, outcome)

    def _after(self, cell: Cell, out: AttackOutcome) -> AttackOutcome:
        if not self.plan.in_cascade(cell):
            return out
        before = self.alive.get(cell.budget, (self.clean, ()))[1]
        chain = (*before, cell.label)
        self.alive[cell.budget] = (out.robust, chain)
        return replace(out, chain=chain)

    def attacks_misclassified(self, cell: Cell) -> bool:
        """Whether ``cell`` also attacks the clean-misclassified examples (``adv_correct``)."""
        return self.plan.attacks_misclassified(cell)

    def score(self, cell: Cell) -> AttackOutcome:
        """Run ``cell`` whole and return its outcome: :meth:`score_main`, then, if the cell
        attacks the clean-misclassified examples, :meth:`score_misclassified` (its
        ``adv_correct`` then covers every example)."""
        main = self.score_main(cell)
        if not self.attacks_misclassified(cell):
            return main
        return combine(main, self.score_misclassified(cell))

    def score_main(self, cell: Cell) -> AttackOutcome:
        """Run ``cell`` on its targets (the clean-correct examples; in a cascade those every
        earlier attack of its budget left robust), seeded with the cell's seed."""
        targets = self.clean
        if self.plan.in_cascade(cell):
            targets = self.alive.get(cell.budget, (self.clean, ()))[0]
        source = self._source(cell)
        if cell.minimizes:
            out = self._minimal(cell, targets, source, MAIN)
        else:
            seed_everything(cell.seed)
            out = attack_outcome(
                self.model,
                cell.build(cell.eps),
                self.x,
                self.y,
                targets,
                self.evaluation.batch_size,
                source=source,
                precision=self.evaluation.precision,
                watch=self.watch,
            )
        return self._after(cell, out)

    def score_misclassified(self, cell: Cell) -> AttackOutcome:
        """Run ``cell``'s attack on the clean-misclassified examples alone, for the robust ≤
        clean check, seeded with :func:`misclassified_seed` of the cell's seed (so the main
        part's outcome is the same whether or not this part runs). Its ``robust`` says, per
        example, whether the adversarial example of a misclassified example is classified
        correctly (False on the clean-correct ones)."""
        wrong = ~self.clean
        source = self._source(cell)
        if cell.minimizes:
            return self._minimal(cell, wrong, source, MISCLASSIFIED)
        seed_everything(misclassified_seed(cell.seed))
        return attack_outcome(
            self.model,
            cell.build(cell.eps),
            self.x,
            self.y,
            wrong,
            self.evaluation.batch_size,
            source=source,
            precision=self.evaluation.precision,
            watch=self.watch,
        )

    def _source(self, cell: Cell) -> nn.Module | None:
        if not cell.source:
            return None
        if self.source_of is None:
            raise ValueError(f"no model to craft transfer attack {cell.label!r} on")
        return self.source_of(cell.source)

    def _minimal(
        self, cell: Cell, targets: torch.Tensor, source: nn.Module | None, part: str
    ) -> AttackOutcome:
        """Score a minimisation attack at the cell's ε on ``targets``. Each part (``MAIN``:
        the clean-correct examples; ``MISCLASSIFIED``: the others) runs once per model, at
        ε = ∞, seeded from the first cell in run order that needs it
        (:meth:`Plan.minimal_first`), even when that cell's outcome was :meth:`known`; its
        result is projected into each ε-ball, which keeps every adversarial example that fits
        the budget. Its ``n_attacked`` is counted at that first cell."""
        batch, x, y = self.evaluation.batch_size, self.x, self.y
        first = self.plan.minimal_first(cell, part)
        name = (cell.label, cell.norm, part)
        if name not in self.minimal:
            seed = first.seed if part == MAIN else misclassified_seed(first.seed)
            seed_everything(seed)
            x_adv = x.clone()
            attacked = self.clean if part == MAIN else ~self.clean
            out = attack_outcome(
                self.model,
                cell.build(math.inf),
                x,
                y,
                attacked,
                batch,
                keep=x_adv,
                source=source,
                precision=self.evaluation.precision,
            )
            self.minimal[name] = (x_adv, out)
        x_adv, out = self.minimal[name]
        x_eps = ThreatModel(cell.norm, cell.eps, cell.bounds).project(x_adv, x)
        pred = predict(self.model, x_eps, batch)
        n_attacked = out.n_attacked if cell is first else 0  # later budgets reuse its run
        kept = None
        if self.watch:
            at = targets[: self.watch].nonzero().flatten()
            kept = (at, x_eps[at], pred[at])
        return AttackOutcome(
            targets & (pred == y),
            out.n_violations,
            out.max_violation,
            None,
            n_attacked,
            examples=kept,
        )


def combine(main: AttackOutcome, misclassified: AttackOutcome) -> AttackOutcome:
    """A cell's outcome from its two parts (:meth:`Scorer.score_main` on the clean-correct
    examples, :meth:`Scorer.score_misclassified` on the others)."""
    return AttackOutcome(
        main.robust,
        main.n_violations + misclassified.n_violations,
        max(main.max_violation, misclassified.max_violation),
        main.robust | misclassified.robust,
        main.n_attacked + misclassified.n_attacked,
        main.chain,
        main.fooled_by,
        join_kept([main.examples, misclassified.examples]),
    )
