"""Threat models: the norm, the budget ε and the data bounds, with projection and checks."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robench.specs import NORMS, Norm

#: Slack allowed on the ε-ball before a perturbation counts as a violation.
TOLERANCE = 1e-6


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1)  # (N, rest), also for N = 0


@dataclass(frozen=True)
class ThreatModel:
    """Perturbations of at most ``eps`` in ``norm``, images kept within ``bounds``."""

    norm: Norm
    eps: float
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if not self.eps >= 0:
            raise ValueError(f"eps must be >= 0, got {self.eps!r}")
        if not self.bounds[0] < self.bounds[1]:
            raise ValueError(f"bounds must be (low, high) with low < high, got {self.bounds!r}")

    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-example distance ‖x_adv − x‖ in this threat model's norm."""
        d = _flat(x_adv - x)
        if self.norm == "linf":
            return d.abs().amax(dim=1)
        return d.norm(p=2, dim=1)

    def excess(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-example amount by which ``x_adv`` leaves the ε-ball or the bounds (0 if inside).

        NaN or infinite values count as an infinite excess.
        """
        lo, hi = self.bounds
        out_of_ball = (self.distance(x_adv, x) - self.eps).clamp(min=0)
        below = _flat(lo - x_adv).clamp(min=0).amax(dim=1)
        above = _flat(x_adv - hi).clamp(min=0).amax(dim=1)
        excess = torch.maximum(out_of_ball, torch.maximum(below, above))
        not_finite = ~torch.isfinite(_flat(x_adv)).all(dim=1)
        return torch.where(not_finite, torch.full_like(excess, float("inf")), excess)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Project ``x_adv`` onto the ε-ball around ``x`` intersected with the bounds.

        Non-finite values are replaced by the clean value first.
        """
        x_adv = torch.where(torch.isfinite(x_adv), x_adv, x)
        delta = x_adv - x
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            norms = _flat(delta).norm(p=2, dim=1).clamp(min=1e-12)
            factor = (self.eps / norms).clamp(max=1.0)
            delta = delta * factor.view(-1, *([1] * (delta.dim() - 1)))
        return (x + delta).clamp(*self.bounds)
