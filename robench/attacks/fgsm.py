"""The fast gradient (sign) method, optionally from a random start (FGSM-RS)."""

from __future__ import annotations

import torch
from torch import nn

from robench.attack import Attack
from robench.attacks._common import Ball, input_gradient
from robench.attacks.bases import FGSMBase


class FGSM(FGSMBase, Attack):
    """Fast gradient sign method (Goodfellow et al. 2015): one gradient step, L∞ or L2.

    L∞: ``x + α·sign(∇ₓ loss)``; L2: ``x + α·∇ₓ loss / ‖∇ₓ loss‖₂`` (per example); then the
    result is projected onto the ε-ball and clamped to the bounds. With ``random_start`` the
    step starts from a uniform random point of the ε-ball (FGSM-RS, Wong et al. 2020, the
    attack behind "Fast AT"), and the default step grows from ``α = ε`` to ``α = 1.25·ε``.
    """

    single_step = True

    params: FGSMBase.Params

    @property
    def step_size(self) -> float:
        """The absolute step α used for this threat model."""
        p = self.params
        rel = p.rel_step if p.rel_step is not None else (1.25 if p.random_start else 1.0)
        return rel * self.threat.eps

    def cost(self) -> float:
        return 1.0

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.threat.eps == 0:
            return x
        ball = Ball(x, self.threat)
        start = ball.random_point() if self.params.random_start else x
        grad = input_gradient(model, start, y, self.params.loss)
        return ball.step(start, grad, self.step_size)
