"""Scoring one trained model cell by cell: each attack at each budget, in a cascade or not."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from robench.config import AttackUse
from robench.dataset import DatasetInfo
from robench.evaluation import AttackOutcome, attack_outcome, cascade_cost, predict
from robench.reproducibility import seed_everything
from robench.schema import EvaluationConfig
from robench.threat import ThreatModel

Cell = tuple[AttackUse, float]


class ModelScorer:
    """The attack cells of one trained model on the evaluation set ``(x, y)``.

    It keeps what the cells share: in a cascade, per budget the examples still robust and the
    attacks run so far; per minimisation attack, its one run at ε = ∞ (every budget projects
    it). ``source_of(a)`` is the model a transfer attack crafts on (None: the model itself).
    """

    def __init__(
        self,
        evaluation: EvaluationConfig,
        info: DatasetInfo,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        clean: torch.Tensor,
        source_of: Callable[[AttackUse], nn.Module | None],
    ) -> None:
        self.evaluation, self.info = evaluation, info
        self.model, self.x, self.y, self.clean = model, x, y, clean
        self.source_of = source_of
        #: cascade: per budget, the examples robust to every attack so far, and those attacks
        self.alive: dict[tuple[str, float], tuple[torch.Tensor, list[str]]] = {}
        #: per minimisation attack: its adversarial examples at ε = ∞ and that run's outcome
        self.minimal: dict[str, tuple[torch.Tensor, AttackOutcome]] = {}

    def order(self, cells: list[Cell]) -> list[Cell]:
        """The cells in the order to run: as given, or in a cascade by budget, then by the
        attack's cost (minimisation attacks last: they run once for every budget, on every
        clean-correct example)."""
        if not self.evaluation.cascade:
            return list(cells)

        def cost(cell: Cell) -> float:
            a, eps = cell
            return cascade_cost(a.instantiate(ThreatModel(a.norm, eps, self.info.bounds)))

        return sorted(cells, key=lambda c: (c[0].norm, c[1], cost(c)))

    def score(
        self, a: AttackUse, eps: float, seed: int, sanity: bool = False
    ) -> tuple[AttackOutcome, list[str]]:
        """Run attack ``a`` at ``eps`` (seeded with the cell's ``seed``) and return its outcome
        with, in a cascade, the attacks it and every earlier one of its budget make up
        (empty outside a cascade). Sanity and transfer attacks stay outside the cascade: a
        transfer attack keeps its own number (a protocol of its own, like NSL's)."""
        in_cascade = self.evaluation.cascade and not sanity and not a.source
        key = (a.norm, eps)
        targets, before = self.alive.get(key, (self.clean, [])) if in_cascade else (self.clean, [])
        # the misclassified examples are attacked by the first attack of a cascade only
        everything = self.evaluation.attack_misclassified and not before
        source = self.source_of(a)
        if a.entry.cls.minimizes:
            out = self._minimal(a, eps, seed, targets, everything, source)
        else:
            seed_everything(seed)
            out = attack_outcome(
                self.model,
                a.instantiate(ThreatModel(a.norm, eps, self.info.bounds)),
                self.x,
                self.y,
                targets,
                self.evaluation.batch_size,
                source=source,
                misclassified=everything,
                precision=self.evaluation.precision,
            )
        if not in_cascade:
            return out, []
        chain = [*before, a.label]
        self.alive[key] = (out.robust, chain)
        return out, chain

    def _minimal(
        self,
        a: AttackUse,
        eps: float,
        seed: int,
        targets: torch.Tensor,
        everything: bool,
        source: nn.Module | None,
    ) -> AttackOutcome:
        """Score a minimisation attack at ``eps`` on ``targets`` (the clean-correct examples,
        or in a cascade those still robust). It runs once per model (with ε = ∞ and the
        cell seed of its first budget, on every clean-correct example); its result is
        projected into each ε-ball, which keeps every adversarial example that fits the budget
        and may find more."""
        batch, x, y = self.evaluation.batch_size, self.x, self.y
        ran = a.label not in self.minimal
        if ran:
            seed_everything(seed)
            x_adv = x.clone()
            out = attack_outcome(
                self.model,
                a.instantiate(ThreatModel(a.norm, math.inf, self.info.bounds)),
                x,
                y,
                self.clean,
                batch,
                keep=x_adv,
                source=source,
                misclassified=everything,
                precision=self.evaluation.precision,
            )
            self.minimal[a.label] = (x_adv, out)
        x_adv, out = self.minimal[a.label]
        x_eps = ThreatModel(a.norm, eps, self.info.bounds).project(x_adv, x)
        correct = predict(self.model, x_eps, batch) == y
        adv_correct = correct if out.adv_correct is not None and everything else None
        n_attacked = out.n_attacked if ran else 0  # later budgets reuse the first run
        return AttackOutcome(
            targets & correct, out.n_violations, out.max_violation, adv_correct, n_attacked
        )
