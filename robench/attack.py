"""The attack contract.

An attack is built for one threat model (``Attack(threat, **params)``) and called with
``(model, x, y)``; it returns ``x_adv``. Plugin authors implement :meth:`Attack.run`. The
framework's :func:`craft` (behind ``Attack.__call__``) guarantees, whatever ``run`` does:

- the model is in eval mode during the attack and every module's mode is restored afterwards;
- model parameters do not require grad during the attack (so no weight gradients are computed
  or left behind) and are restored afterwards; an attack that modifies weights or buffers is a
  :class:`~robench.errors.ContractError`;
- the result is projected into the ε-ball and the bounds, NaN replaced by the clean input; a
  plugin result that had to be projected is counted in :attr:`Crafted.n_violations`.

Most attacks work to a fixed budget. A *minimisation* attack (``minimizes = True``: Carlini-
Wagner, DeepFool, decision-based attacks) looks for the smallest adversarial perturbation and
ignores ε; its result may leave the ε-ball without that being a violation (only the bounds and
NaN count), and it is projected like any other. The runner runs such an attack once per defense
with ε = ∞ and scores the result at every ε of the benchmark by projecting it into each ball.

An evaluation may allow gradients in bfloat16 (:mod:`robench.precision`): an attack opts in by
running its gradient passes under :func:`robench.precision.gradient_autocast`, and confirms in
full precision any decision it takes on those logits. Results are always scored in the model's
own precision.
"""

from __future__ import annotations

import contextlib
import math
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, final

import torch
from torch import nn

from robench.errors import ContractError
from robench.plugin import Params, Plugin
from robench.threat import NORMS, TOLERANCE, Norm, ThreatModel


@dataclass(frozen=True)
class Crafted:
    """The outcome of one attack call on a batch."""

    x_adv: torch.Tensor
    #: examples whose raw attack output left the ε-ball or the bounds, or had NaN
    n_violations: int
    #: the largest such excess (0.0 when none; inf for NaN)
    max_excess: float


class Attack(Plugin):
    """Base class of attack plugins. Subclasses implement :meth:`run`."""

    kind: ClassVar[str] = "attack"
    #: the norms this attack can work in
    norms: ClassVar[tuple[Norm, ...]] = NORMS
    #: a minimisation attack: ignores ε and returns the smallest adversarial it finds
    minimizes: ClassVar[bool] = False
    #: one gradient step (FGSM and the like): an iterative attack should be at least as strong
    single_step: ClassVar[bool] = False
    #: uses no gradients (random noise, score- or decision-based black-box attacks): it should
    #: not beat the white-box attacks; when it does, the gradients are masked
    gradient_free: ClassVar[bool] = False

    def cost(self) -> float:
        """Rough cost per example, in forward-backward passes (FGSM: 1, PGD-k: k).

        In a cascade (``[evaluation] cascade = true``) the attacks of one budget run cheapest
        first, each only on the examples the earlier ones did not fool. The default, 1000,
        puts an attack that does not say after the native ones.
        """
        return 1000.0

    def __init__(self, threat: ThreatModel, params: Params | None = None, /, **kwargs) -> None:
        super().__init__(params, **kwargs)
        if threat.norm not in self.norms:
            raise ValueError(
                f"attack {self.name!r} does not support norm {threat.norm!r} "
                f"(supports {', '.join(self.norms)})"
            )
        self.threat = threat

    @abstractmethod
    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Return adversarial examples for ``x`` (labels ``y``) within ``self.threat``.

        ``model`` is in eval mode and its parameters do not require grad; compute input
        gradients with ``torch.autograd.grad``. ``x`` is a detached copy you may modify.
        """

    @final
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return craft(self, model, x, y).x_adv


@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters for the duration of the block; everything restored after.

    Raises :class:`ContractError` if a parameter or buffer was modified inside the block.
    """
    modes = [(m, m.training) for m in model.modules()]
    params = list(model.parameters())
    requires = [p.requires_grad for p in params]
    tensors = params + list(model.buffers())
    versions = [t._version for t in tensors]
    model.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, r in zip(params, requires, strict=True):
            p.requires_grad_(r)
    if any(t._version != v for t, v in zip(tensors, versions, strict=True)):
        raise ContractError("the attack modified the model's weights or buffers")


def craft(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Crafted:
    """Run ``attack`` under the contract and return the projected result with its violations."""
    x = x.detach()
    threat = attack.threat
    if threat.eps == 0:  # nothing can change: skip the plugin (some libraries reject ε = 0)
        return Crafted(x.clone(), 0, 0.0)
    with attack_mode(model):
        with torch.enable_grad():
            x_adv = attack.run(model, x.clone(), y)
        left_train = any(m.training for m in model.modules())
    if left_train:
        raise ContractError(f"attack {attack.name!r} switched the model to train mode")
    if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x.shape:
        got = tuple(x_adv.shape) if isinstance(x_adv, torch.Tensor) else type(x_adv).__name__
        raise ContractError(
            f"attack {attack.name!r} returned {got}, expected a tensor of shape {tuple(x.shape)}"
        )
    x_adv = x_adv.detach().to(device=x.device, dtype=x.dtype)
    # a minimisation attack's result is only checked against the bounds and for NaN
    checked = ThreatModel(threat.norm, math.inf, threat.bounds) if attack.minimizes else threat
    excess = checked.excess(x_adv, x)
    bad = excess > TOLERANCE
    n_bad = int(bad.sum())
    # Always project: it is cheap and makes the guarantee exact rather than within tolerance.
    x_adv = threat.project(x_adv, x)
    return Crafted(x_adv, n_bad, float(excess.max()) if n_bad else 0.0)
