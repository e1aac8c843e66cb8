"""Projected gradient descent (Madry et al. 2018) in L∞ or L2, with random restarts."""

from __future__ import annotations

import torch
from torch import nn

from robench import chunks, precision
from robench.attack import Attack
from robench.attacks._common import (
    Ball,
    gradient_and_logits,
    input_gradient,
    per_example_loss,
)
from robench.attacks.bases import PGDBase


class PGD(PGDBase, Attack):
    """Projected gradient descent (Madry et al. 2018): iterated gradient steps, L∞ or L2.

    Each step moves by ``α·sign(∇)`` (L∞) or ``α·∇/‖∇‖₂`` (L2) and projects back onto the ε-ball
    and the bounds. The step is ``step_size`` (absolute) or ``rel_step·ε`` (default
    ``2.5/steps``, Madry's heuristic: enough to cross the ball from any start). With
    ``restarts > 1`` each example keeps its worst case over restarts: a point that fools the
    model if any restart found one, else the point with the highest loss. Restarts need
    ``random_start`` (they would all be identical), so without it one run is made.

    With ``early_stop`` (the default) an example stops costing steps once misclassified and
    keeps that adversarial point, and restarts only run on examples not yet fooled. That never
    finds fewer adversarial examples than running every step: a full run may step off an
    adversarial point it reached midway; the early-stopped run keeps it.
    """

    params: PGDBase.Params

    @property
    def alpha(self) -> float:
        """The absolute step used for this threat model."""
        p = self.params
        if p.step_size is not None:
            return p.step_size
        rel = p.rel_step if p.rel_step is not None else 2.5 / p.steps
        return rel * self.threat.eps

    def cost(self) -> float:
        p = self.params
        return float(p.steps * (p.restarts if p.random_start else 1))

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.threat.eps == 0:
            return x
        p = self.params
        ball = Ball(x, self.threat)
        restarts = p.restarts if p.random_start else 1
        if restarts == 1:
            return self._descend(model, ball, ball.random_point() if p.random_start else x, y)
        best = best_loss = best_fooled = None
        for _ in range(restarts):
            start = ball.random_point()  # drawn for every example: the same draws either way
            if best_fooled is not None and p.early_stop:
                todo = (~best_fooled).nonzero().flatten()  # fooled ones need no more restarts
                if not len(todo):
                    break
                x_adv = best.clone()
                x_adv[todo] = self._descend(model, ball.select(todo), start[todo], y[todo])
            else:
                x_adv = self._descend(model, ball, start, y)
            with torch.no_grad():
                logits = chunks.forward(model, x_adv)
                loss = per_example_loss(logits, y, p.loss)
                fooled = logits.argmax(dim=1) != y
            if best is None:
                best, best_loss, best_fooled = x_adv, loss, fooled
                continue
            # rank (fooled, loss) lexicographically: fooling beats any loss
            better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (loss > best_loss))
            best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), x_adv, best)
            best_loss = torch.where(better, loss, best_loss)
            best_fooled |= fooled
        return best

    def _descend(
        self, model: nn.Module, ball: Ball, x_adv: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """``steps`` projected gradient steps from ``x_adv``.

        With ``early_stop``, an example stops at the first point the model misclassifies (it
        is adversarial there: later steps could only lose it) and leaves the batch, so the
        remaining steps cost only what is still robust. The check reuses the logits of the
        gradient's forward pass; dropping the fooled examples costs one device sync per step.
        When the gradient pass runs in reduced precision (bf16), its logits only nominate: every
        example they put past or near the decision boundary (:data:`MARGIN_SLACK`) goes through
        a forward pass in full precision, and leaves if that pass misclassifies it. So bf16
        neither stops an example the model still classifies correctly nor misses one the model
        misclassifies by a hair, at the price of a small full-precision pass per step.
        """
        p, alpha = self.params, self.alpha
        if not p.early_stop:
            for _ in range(p.steps):
                x_adv = ball.step(x_adv, input_gradient(model, x_adv, y, p.loss), alpha)
            return x_adv
        out = x_adv.clone()
        index = torch.arange(len(x_adv), device=x_adv.device)
        confirm = precision.reduced(x_adv.device.type)
        for _ in range(p.steps):
            grad, logits = gradient_and_logits(model, x_adv, y, p.loss)
            if confirm:  # reduced-precision logits: the model's own verdict decides
                near = _near_boundary(logits, y)
                hit = _confirmed(model, x_adv, y, near) if near.any() else near
            else:
                hit = logits.argmax(dim=1) != y
            if hit.any():
                out[index[hit]] = x_adv[hit]
                keep = (~hit).nonzero().flatten()
                if not len(keep):
                    return out
                index, x_adv, grad, y, ball = (
                    index[keep],
                    x_adv[keep],
                    grad[keep],
                    y[keep],
                    ball.select(keep),
                )
            x_adv = ball.step(x_adv, grad, alpha)
        out[index] = x_adv
        return out


#: Reduced-precision logits put an example "near the boundary" when its margin (true logit minus
#: the largest other) is below this fraction of its largest absolute logit. bfloat16 keeps 8
#: significant bits (relative error 2⁻⁹ per rounding); through a network its logits differ from
#: fp32 by about 1 % of their scale, so 1/32 leaves a margin of safety.
MARGIN_SLACK = 1 / 32


def _near_boundary(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Examples that ``logits`` misclassify or classify correctly by less than the slack."""
    logits = logits.float()
    margin = -per_example_loss(logits, y, "margin")
    return margin < MARGIN_SLACK * logits.abs().amax(dim=1)


def _confirmed(
    model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, hit: torch.Tensor
) -> torch.Tensor:
    """``hit`` where the model, in its own precision, misclassifies ``x_adv``."""
    rows = hit.nonzero().flatten()
    with torch.no_grad(), precision.full_precision(x_adv.device.type):
        wrong = chunks.forward(model, x_adv[rows]).argmax(dim=1) != y[rows]
    hit = torch.zeros_like(hit)
    hit[rows[wrong]] = True
    return hit
