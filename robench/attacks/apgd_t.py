"""Targeted Auto-PGD (APGD-T, Croce & Hein, ICML 2020), AutoAttack's second attack."""

from __future__ import annotations

import torch
from torch import nn

from robench.attack import Attack
from robench.attacks._apgd import apgdt_outcome
from robench.attacks.bases import APGDTBase


class APGDT(APGDTBase, Attack):
    """Targeted Auto-PGD (Croce & Hein 2020): APGD towards each of the top other classes.

    AutoAttack's APGD-T. The classes are ranked by the model's clean logits; for each target
    rank ``k = 2, …, n_target_classes + 1`` in turn (the ``k``-th highest clean logit), a full
    APGD (see ``apgd``: random start on the ball's boundary, step 2ε, momentum 0.75, the
    checkpoint schedule; L∞ or L2) maximises the targeted DLR loss ``−(z_y − z_t)/(z_π1 −
    (z_π3 + z_π4)/2 + 1e-12)``, on the examples no earlier target fooled. ``steps`` (default
    100) iterations and ``restarts`` (default 1) runs per target; ``rho`` (0.75) as in
    ``apgd``, and so is ``eot_iter`` (default 1: gradient passes averaged per step). An
    example keeps the first point that fools the model (any wrong class counts, not only the
    target), else its point of highest targeted loss over all targets. With ``early_stop``
    (the default) fooled examples leave the batch. The model needs at least 4 classes and
    ``n_target_classes`` at most the number of classes minus one (checked when the attack
    runs). Cost: up to ``n_target_classes·restarts·steps·eot_iter`` gradient passes per
    example.
    """

    params: APGDTBase.Params

    def cost(self) -> float:
        p = self.params
        return float(p.n_target_classes * p.restarts * (p.steps * p.eot_iter + 1))

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p = self.params
        n = p.n_target_classes
        return apgdt_outcome(model, x, y, self.threat, n_target_classes=n, **p.run_settings()).x_adv
