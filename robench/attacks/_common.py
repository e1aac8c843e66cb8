"""Helpers shared by the native gradient attacks: losses, input gradients and the ε-ball."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robench import chunks
from robench.attacks.bases import LossName
from robench.precision import gradient_autocast
from robench.threat import ThreatModel

#: Guards the per-example L2 normalisation against zero gradients.
_TINY = 1e-12


def per_example_loss(logits: torch.Tensor, y: torch.Tensor, loss: LossName) -> torch.Tensor:
    """The loss to maximise, one value per example."""
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return other - true


def input_gradient(
    model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, loss: LossName
) -> torch.Tensor:
    """∇ₓ of the summed per-example loss: each row is that example's own input gradient.

    Only the input gradient is computed (``torch.autograd.grad``), never weight gradients.
    """
    return gradient_and_logits(model, x_adv, y, loss)[0]


def gradient_and_logits(
    model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, loss: LossName
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`input_gradient` and the (detached) logits at ``x_adv``, from one forward pass.

    The pass runs in the evaluation's attack precision (:func:`robench.precision.
    gradient_autocast`); the gradient comes back in ``x_adv``'s dtype, the logits in the
    precision they were computed in. On a CPU, in chunks (:mod:`robench.chunks`).
    """

    def one(rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        x_rows = x_adv[rows].detach().requires_grad_(True)
        with gradient_autocast(x_rows.device.type):
            logits = model(x_rows)
            total = per_example_loss(logits, y[rows], loss).sum()
        (grad,) = torch.autograd.grad(total, x_rows)
        return grad, logits.detach()

    grad, logits = chunks.gradient_passes(model, x_adv, one)
    return grad, logits


def _per_example(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-example vector to broadcast against a batch shaped like ``like``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def _l2(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).norm(p=2, dim=1)


class Ball:
    """The ε-ball of ``threat`` around a clean batch ``x``, intersected with the bounds.

    Precomputes what every step needs, so a step allocates one batch-sized tensor.
    Clamping to the bounds after the ball projection only moves coordinates towards ``x``
    (which lies inside the bounds), so the result stays in the ball.
    """

    def __init__(self, x: torch.Tensor, threat: ThreatModel) -> None:
        self.x = x
        self.norm = threat.norm
        self.eps = threat.eps
        self.lo, self.hi = threat.bounds
        if self.norm == "linf":
            # per-coordinate box: the ball and the bounds at once
            self.low = (x - self.eps).clamp_(min=self.lo)
            self.high = (x + self.eps).clamp_(max=self.hi)

    def select(self, index: torch.Tensor) -> Ball:
        """The balls of the examples at ``index`` (a batch of fewer examples)."""
        sub = object.__new__(Ball)
        sub.x, sub.norm, sub.eps, sub.lo, sub.hi = (
            self.x[index],
            self.norm,
            self.eps,
            self.lo,
            self.hi,
        )
        if self.norm == "linf":
            sub.low, sub.high = self.low[index], self.high[index]
        return sub

    def project_(self, x_adv: torch.Tensor) -> torch.Tensor:
        """Project ``x_adv`` (detached) onto the ball and the bounds, in place."""
        if self.norm == "linf":
            return x_adv.clamp_(self.low, self.high)
        delta = x_adv.sub_(self.x)
        factor = (self.eps / _l2(delta).clamp_(min=_TINY)).clamp_(max=1.0)
        return delta.mul_(_per_example(factor, delta)).add_(self.x).clamp_(self.lo, self.hi)

    def random_point(self) -> torch.Tensor:
        """A uniform random point of the ball (then clamped to the bounds); global torch RNG.

        L∞: uniform in the cube. L2: a Gaussian direction with radius ``eps·u^(1/d)``.
        """
        x = self.x
        if self.norm == "linf":
            return (
                torch.empty_like(x).uniform_(-self.eps, self.eps).add_(x).clamp_(self.lo, self.hi)
            )
        direction = torch.randn_like(x)
        d = direction[0].numel()
        radius = torch.rand(x.shape[0], device=x.device, dtype=x.dtype).pow_(1.0 / d)
        scale = radius.mul_(self.eps).div_(_l2(direction).clamp_(min=_TINY))
        return direction.mul_(_per_example(scale, x)).add_(x).clamp_(self.lo, self.hi)

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, alpha: float) -> torch.Tensor:
        """One ascent step of size ``alpha`` from ``x_adv``, projected; ``grad`` is consumed.

        L∞: ``alpha·sign(∇)``. L2: ``alpha·∇/‖∇‖₂`` per example (no move where ∇ = 0).
        """
        with torch.no_grad():
            if self.norm == "linf":
                direction = grad.sign_()
            else:
                direction = grad.div_(_per_example(_l2(grad).clamp_(min=_TINY), grad))
            return self.project_(x_adv.detach().add(direction, alpha=alpha))
