"""Scoring a trained model: clean accuracy and robust accuracy under one attack."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from robench.attack import Attack, craft


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


def attack_outcome(
    model: nn.Module,
    attack: Attack,
    x: torch.Tensor,
    y: torch.Tensor,
    clean_correct: torch.Tensor,
    batch_size: int,
    keep: torch.Tensor | None = None,
    source: nn.Module | None = None,
) -> AttackOutcome:
    """Attack the clean-correct examples and report which stay correct.

    With ``keep`` (a tensor shaped like ``x``), the adversarial examples are written into it.
    With ``source``, a transfer attack: the examples are crafted on ``source`` and scored on
    ``model``.

    An example misclassified without attack counts as not robust (as in AutoAttack and
    RobustBench), so robust accuracy can never exceed clean accuracy by construction.
    """
    robust = torch.zeros_like(clean_correct)
    idx = clean_correct.nonzero().flatten()
    n_bad, worst = 0, 0.0
    for chunk in idx.split(batch_size):
        crafted = craft(attack, source if source is not None else model, x[chunk], y[chunk])
        n_bad += crafted.n_violations
        worst = max(worst, crafted.max_excess)
        robust[chunk] = predict(model, crafted.x_adv, batch_size) == y[chunk]
        if keep is not None:
            keep[chunk] = crafted.x_adv
    return AttackOutcome(robust, n_bad, worst)
