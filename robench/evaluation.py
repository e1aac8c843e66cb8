"""Scoring a trained model: clean accuracy and robust accuracy under one attack."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from robench.attack import Attack, craft
from robench.precision import Precision, attack_precision


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Predicted labels, in eval mode, batch by batch (``x`` already on the model's device)."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(xb).argmax(1) for xb in x.split(batch_size)])
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class AttackOutcome:
    #: per example: still classified correctly after the attack (False where clean was wrong)
    robust: torch.Tensor
    n_violations: int
    max_violation: float
    #: per example: the adversarial example is classified correctly, clean-misclassified
    #: examples attacked too (None where only the clean-correct ones were attacked)
    adv_correct: torch.Tensor | None = None
    #: examples the attack was run on
    n_attacked: int = 0


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
) -> AttackOutcome:
    """Attack the clean-correct examples (``clean_correct``: or any subset to attack, such as
    those still robust in a cascade) and report which stay correct.

    With ``misclassified``, the clean-misclassified examples are attacked too and
    ``adv_correct`` tells, for every example, whether its adversarial example is classified
    correctly: the raw accuracy under attack, which a sound attack keeps at or below clean
    accuracy (the robust ≤ clean check). With ``keep`` (a tensor shaped like ``x``), the
    adversarial examples are written into it. With ``source``, a transfer attack: the examples
    are crafted on ``source`` and scored on ``model``. ``precision`` is the precision of the
    attack's gradient passes (:mod:`robench.precision`); the scoring is in the model's own.

    An example misclassified without attack counts as not robust (as in AutoAttack and
    RobustBench), so robust accuracy can never exceed clean accuracy by construction.
    """
    adv_correct = torch.zeros_like(clean_correct)
    idx = torch.arange(len(x), device=x.device) if misclassified else clean_correct.nonzero()
    n_bad, worst = 0, 0.0
    for chunk in idx.flatten().split(batch_size):
        with attack_precision(precision):
            crafted = craft(attack, source if source is not None else model, x[chunk], y[chunk])
        n_bad += crafted.n_violations
        worst = max(worst, crafted.max_excess)
        adv_correct[chunk] = predict(model, crafted.x_adv, batch_size) == y[chunk]
        if keep is not None:
            keep[chunk] = crafted.x_adv
    return AttackOutcome(
        clean_correct & adv_correct,
        n_bad,
        worst,
        adv_correct if misclassified else None,
        len(idx),
    )


@dataclass(frozen=True)
class Evaluation:
    """Robust accuracy of one model under a list of attacks at one budget each."""

    #: per example: classified correctly without attack
    clean: torch.Tensor
    #: per example: robust to every attack (the per-example worst case)
    robust: torch.Tensor
    #: per attack, in the order run: robust to it (cascade: to it and every attack before it)
    per_attack: dict[str, torch.Tensor]
    #: per attack: the examples it ran on
    n_attacked: dict[str, int]

    @property
    def clean_accuracy(self) -> float:
        return self.clean.float().mean().item()

    @property
    def robust_accuracy(self) -> float:
        return self.robust.float().mean().item()


def cascade_cost(attack: Attack) -> float:
    """Where ``attack`` goes in a cascade: by :meth:`Attack.cost`, minimisation attacks last
    (in a benchmark their one run at ε = ∞ covers every budget, on every clean-correct
    example, so nothing is saved by running them earlier)."""
    return math.inf if attack.minimizes else attack.cost()


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: list[Attack],
    *,
    batch_size: int = 500,
    cascade: bool = True,
    precision: Precision = "fp32",
) -> Evaluation:
    """Robust accuracy of ``model`` on ``(x, y)`` (on the model's device) under ``attacks``.

    With ``cascade`` the attacks run cheapest first (:meth:`Attack.cost`), each only on the
    examples every earlier attack left robust; the per-example worst case is never higher
    than running every attack on every example (for deterministic attacks it is the same or
    lower: an early-stopped PGD keeps adversarial points a full run may step off). Without it,
    each attack runs on every clean-correct example and ``per_attack`` holds its own result.
    Each attack must be built for its budget: ``PGD(ThreatModel("linf", 8 / 255), steps=20)``.
    With ``precision="bf16"`` the native attacks compute their gradients in bfloat16
    (:mod:`robench.precision`); every example is still scored in the model's own precision.
    For a convolutional model, ``model.to(memory_format=torch.channels_last)`` and the same for
    ``x`` often help as much again.
    """
    clean = predict(model, x, batch_size) == y
    order = sorted(attacks, key=cascade_cost) if cascade else list(attacks)
    robust = clean
    per_attack: dict[str, torch.Tensor] = {}
    n_attacked: dict[str, int] = {}
    for attack in order:
        name = attack.name
        while name in per_attack:
            name += "'"
        targets = robust if cascade else clean
        out = attack_outcome(model, attack, x, y, targets, batch_size, precision=precision)
        per_attack[name], n_attacked[name] = out.robust, out.n_attacked
        robust = out.robust if cascade else robust & out.robust
    return Evaluation(clean, robust, per_attack, n_attacked)
