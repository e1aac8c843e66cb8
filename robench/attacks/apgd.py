"""Auto-PGD (Croce & Hein, ICML 2020): PGD with momentum and a self-tuning step size."""

from __future__ import annotations

import torch
from torch import nn

from robench.attack import Attack
from robench.attacks._apgd import apgd_outcome
from robench.attacks.bases import APGDBase


class APGD(APGDBase, Attack):
    """Auto-PGD (Croce & Hein 2020): momentum PGD with a step size that halves when stuck.

    The first of AutoAttack's attacks (APGD-CE; APGD-DLR in its "rand" version), following the
    paper's Algorithm 1, in L∞ or L2. The paper leaves the first iterate open; each run here
    starts, as the reference implementation (``autoattack``, and torchattacks' port) does, from
    a random point on the boundary of the ε-ball: ``x + ε·t/‖t‖`` with ``t`` uniform in ``[−1,
    1]^d`` for L∞ (one coordinate at ±ε, the others uniformly inside), Gaussian for L2, then
    clamped to the bounds. The first step size is ``η = 2ε`` (the paper's value for L∞) in L2
    too, unscaled, as the reference implementation that produced the published numbers does;
    this departs from a reading of the paper that scales the L2 step. The first step is a
    projected gradient step ``P(x + η·step(∇))`` (``step`` = sign for L∞, ``∇/‖∇‖₂`` for L2;
    ``P`` the projection onto the ε-ball ∩ the bounds); later ones add momentum::

        z = P(x_k + η·step(∇f(x_k)))
        x_{k+1} = P(x_k + 0.75·(z − x_k) + 0.25·(x_k − x_{k−1}))

    At the checkpoints ``w_j = ⌈p_j·steps⌉`` (``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j +
    max(p_j − p_{j−1} − 0.03, 0.06)``: iterations 22, 41, 57, 70, 80, 87, 93, 99 of 100) an
    example's step size halves, and its iterate goes back to its best (highest-loss) point,
    when (1) its loss increased in fewer than ``rho·(w_j − w_{j−1})`` of the steps since the
    last checkpoint (the paper's strict "fewer than"; the reference code reduces at "no more
    than"), or (2) its step size was not halved at the last checkpoint and its best loss has
    not improved since. The state (step size, counters, best point) is per example.

    ``loss`` is cross-entropy (``"ce"``) or the difference of logits ratio (``"dlr"``, ``−(z_y −
    max_{i≠y} z_i)/(z_π1 − z_π3)``, invariant to the logits' scale; needs ≥ 3 classes).
    ``steps`` (default 100) iterations per run, ``restarts`` (default 1) runs, each after the
    first only on the examples not fooled yet; ``rho`` (0.75) the threshold of condition (1).
    An example keeps the first point that fools the model, else its highest-loss point; one
    the model misclassifies already is returned clean. With ``early_stop`` (the default) a
    fooled example leaves the batch and costs no more passes; this does not change which
    examples are fooled (the per-example runs are independent). ``eot_iter`` (default 1) > 1
    averages each step's gradient and loss over that many gradient passes (expectation over
    transformation, for randomised defenses: AutoAttack's "rand" version uses 20). Cost: one
    forward pass on the clean batch, then per run ``steps·eot_iter`` gradient passes and one
    forward pass per example.
    """

    params: APGDBase.Params

    def cost(self) -> float:
        p = self.params
        return float(p.restarts * (p.steps * p.eot_iter + 1))

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p = self.params
        settings = p.run_settings()
        return apgd_outcome(model, x, y, self.threat, loss=p.loss, **settings).x_adv
