"""The robust accuracy of a model of one's own: :func:`evaluate`, a thin wrapper over the
benchmark's scoring engine (:mod:`robench.scoring`)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from robench.attack import Attack
from robench.model import model_device_dtype
from robench.precision import Precision, fastest, memory_format
from robench.reproducibility import cell_seed
from robench.schema import EvaluationConfig
from robench.scoring import AttackOutcome, Cell, Scorer, attack_outcome, cascade_cost, predict

__all__ = [
    "AttackOutcome",
    "Evaluation",
    "attack_outcome",
    "cascade_cost",
    "evaluate",
    "predict",
]

#: ``[evaluation]``'s defaults, which are :func:`evaluate`'s too
_DEFAULTS = EvaluationConfig()


@dataclass(frozen=True)
class Evaluation:
    """Robust accuracy of one model under a list of attacks at one budget each."""

    #: per example: classified correctly without attack
    clean: torch.Tensor
    #: per example: robust to every attack (the per-example worst case, over every budget)
    robust: torch.Tensor
    #: per attack, in the order run: robust to it (cascade: to it and every earlier attack of
    #: its budget); keyed by label, with ' appended to a label seen before (at another budget)
    per_attack: dict[str, torch.Tensor]
    #: per attack (keyed as ``per_attack``): the examples it ran on
    n_attacked: dict[str, int]
    #: per cell (label, norm, ε), in the order run: its whole outcome, as the runner records it
    #: (``robust`` is the per-example vector of ``outcomes.npz``, ``adv_correct`` gives the
    #: ``adv_accuracy`` column)
    outcomes: dict[tuple[str, str, float], AttackOutcome]

    @property
    def clean_accuracy(self) -> float:
        return self.clean.float().mean().item()

    @property
    def robust_accuracy(self) -> float:
        return self.robust.float().mean().item()


def _cells(attacks: Sequence[Attack | tuple[str, Attack]], seed: int, defense: str) -> list[Cell]:
    """The attacks as cells: labelled (by name unless given), seeded as the runner seeds."""
    cells: list[Cell] = []
    config: dict[tuple[str, str], str] = {}  # (label, norm) → the attack's class and parameters
    for item in attacks:
        label, attack = item if isinstance(item, tuple) else (item.name, item)
        norm, eps = attack.threat.norm, attack.threat.eps
        # a label names one attack configuration per norm, once per budget
        while (label, norm, eps) in {c.key for c in cells} or config.get(
            (label, norm), repr(attack)
        ) != repr(attack):
            label += "'"
        config[(label, norm)] = repr(attack)
        cells.append(Cell.of(attack, label, cell_seed(seed, defense, label, norm, eps)))
    return cells


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence[Attack | tuple[str, Attack]],
    *,
    batch_size: int = _DEFAULTS.batch_size,
    cascade: bool = _DEFAULTS.cascade,
    attack_misclassified: bool = _DEFAULTS.attack_misclassified,
    precision: Precision = _DEFAULTS.precision,
    channels_last: bool | None = None,
    seed: int = 0,
    defense: str = "",
) -> Evaluation:
    """Robust accuracy of ``model`` on ``(x, y)`` (on the model's device) under ``attacks``,
    scored exactly as ``robench run`` scores a defense (:mod:`robench.scoring`).

    Each attack must be built for its budget: ``PGD(ThreatModel("linf", 8 / 255), steps=20)``;
    give it a label with ``("pgd-20", PGD(...))`` (default: its name). The settings are
    ``[evaluation]``'s, with its defaults:

    - ``cascade`` (default False): per budget, the attacks run cheapest first
      (:meth:`Attack.cost`), each only on the examples every earlier one left robust: the
      worst case at a fraction of the cost, but each attack's ``per_attack`` vector is then
      cumulative. Without it, each attack runs on every clean-correct example;
    - ``attack_misclassified`` (default True): per budget, one attack (a cascade's first,
      else the most expensive) also attacks the clean-misclassified examples, for the
      robust ≤ clean check (``outcomes[...].adv_correct``); robust accuracy counts clean-correct
      examples either way;
    - ``precision="bf16"``: the native attacks compute their gradients in bfloat16
      (:mod:`robench.precision`); every example is still scored in the model's own precision.
      On a device without native bfloat16 (emulated bf16 is slower) it runs in fp32, with a
      RuntimeWarning saying so.
    - ``channels_last`` (default None: robench decides, :func:`robench.precision.
      channels_last_pays`: on a CPU, convolutional models on 4-d images; with bf16, always):
      the evaluation runs the model and ``x`` in channels_last memory format, and leaves the
      model's parameters and buffers in their own layout afterwards; False keeps the layout
      given;
    - minimisation attacks run once at ε = ∞ and are projected into each budget's ball.

    Before each attack the global generators (Python's, NumPy's, torch's) are seeded with
    ``robench.reproducibility.cell_seed(seed, defense, label, norm, ε)``: the runner's seed
    for that cell when ``seed`` is the training seed and ``defense`` the defense's label. With
    those, the attacks in the runner's order (each ``[[attacks]]`` table's budgets in turn) and
    the same settings, the outcomes are the runner's, example for example.
    """
    evaluation = EvaluationConfig(
        batch_size=batch_size,
        cascade=cascade,
        attack_misclassified=attack_misclassified,
        precision=precision,
        channels_last=channels_last,
    )
    evaluation, changed = fastest(evaluation, model_device_dtype(model, x)[0])
    if changed:
        warnings.warn(f"evaluate: {changed}", RuntimeWarning, stacklevel=2)
    with memory_format(model, x, evaluation.channels_last) as x:
        return _scored(Scorer(evaluation, model, x, y, _cells(attacks, seed, defense)))


def _scored(scorer: Scorer) -> Evaluation:
    """Every cell of ``scorer``, in its order."""
    robust = scorer.clean
    outcomes: dict[tuple[str, str, float], AttackOutcome] = {}
    per_attack: dict[str, torch.Tensor] = {}
    n_attacked: dict[str, int] = {}
    for cell in scorer.order:
        out = outcomes[cell.key] = scorer.score(cell)
        name = cell.label
        while name in per_attack:
            name += "'"
        per_attack[name], n_attacked[name] = out.robust, out.n_attacked
        robust = robust & out.robust
    return Evaluation(scorer.clean, robust, per_attack, n_attacked, outcomes)
