"""Random noise at the full budget: the baseline every gradient attack must beat."""

from __future__ import annotations

import torch
from torch import nn

from robench import chunks
from robench.attack import Attack
from robench.attacks._common import Ball
from robench.attacks.bases import NoiseBase


class RandomNoise(NoiseBase, Attack):
    """Random noise on the ε-sphere (L∞: random ±ε signs; L2: a random direction of length ε).

    Draws ``samples`` noise vectors per example and keeps the first that fools the model. It
    uses no gradients, so a defense against which it beats the white-box attacks is masking
    its gradients.
    """

    gradient_free = True

    params: NoiseBase.Params

    def cost(self) -> float:
        return self.params.samples / 3  # forward passes only

    @torch.no_grad()
    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ball = Ball(x, self.threat)
        x_adv = x.clone()
        fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for _ in range(self.params.samples):
            noise = torch.randn_like(x)
            if self.threat.norm == "linf":
                point = x + self.threat.eps * noise.sign()
            else:
                flat = noise.reshape(len(x), -1).norm(dim=1).clamp(min=1e-12)
                point = x + noise * (self.threat.eps / flat).view(-1, *([1] * (x.dim() - 1)))
            point = ball.project_(point)
            new = (chunks.forward(model, point).argmax(1) != y) & ~fooled
            x_adv[new] = point[new]
            fooled |= new
            if fooled.all():
                break
        return x_adv
