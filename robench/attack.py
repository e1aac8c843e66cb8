"""The attack contract.

An attack is built for one threat model (``Attack(threat, **params)``) and called with
``(model, x, y)``; it returns ``x_adv``. Plugin authors implement :meth:`Attack.run`. The
framework's :func:`craft` (behind ``Attack.__call__``) guarantees, whatever ``run`` does:

- the model is in eval mode during the attack and every module's mode is restored afterwards;
- model parameters do not require grad during the attack (so no weight gradients are computed
  or left behind) and are restored afterwards;
- the model comes back exactly as it was, checked by value: before the call :func:`attack_mode`
  copies every parameter and buffer and records the module structure (each module's class,
  submodules, parameter and buffer objects, hooks and any instance-level ``forward``; each
  parameter's ``requires_grad``, ``.grad`` and gradient hooks). An attack that changed any of
  it, by an in-place write under ``no_grad``, through ``.data``, by running the model in train
  mode (batch-norm statistics), by swapping a submodule, parameter or buffer, by changing a
  dtype or device, or by adding a hook, has the model restored (the same objects, the values
  copied back, hooks removed, also when the attack raised) and fails with a
  :class:`~robench.errors.ContractError` naming what it changed, so the cells after it see the
  model the defense trained. Values are compared bit for bit: NaN weights are no change. A
  gradient set to None (``model.zero_grad()``, which many attacks call) is put back silently;
- the result is projected into the ε-ball and the bounds, NaN replaced by the clean input; a
  plugin result that had to be projected is counted in :attr:`Crafted.n_violations`.

The check costs one copy of the weights and buffers, and one comparison, per attack call (per
batch); ``benchmarks/speed.py --sections contract`` measures it.

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

from robench.bases import AttackBase
from robench.errors import ContractError
from robench.plugin import Params
from robench.snapshot import ModelSnapshot
from robench.threat import TOLERANCE, ThreatModel


@dataclass(frozen=True)
class Crafted:
    """The outcome of one attack call on a batch."""

    x_adv: torch.Tensor
    #: examples whose raw attack output left the ε-ball or the bounds, or had NaN
    n_violations: int
    #: the largest such excess (0.0 when none; inf for NaN)
    max_excess: float


class Attack(AttackBase):
    """Base class of attack plugins. Subclasses implement :meth:`run`.

    ``norms`` (the norms it can work in, default both) and :meth:`check` (its parameters
    against the dataset, before anything runs) come from :class:`robench.bases.AttackBase`.
    """

    #: a minimisation attack: ignores ε and returns the smallest adversarial it finds
    minimizes: ClassVar[bool] = False
    #: one gradient step (FGSM and the like): an iterative attack should be at least as strong
    single_step: ClassVar[bool] = False
    #: uses no gradients (random noise, score- or decision-based black-box attacks): it should
    #: not beat the white-box attacks; when it does, the gradients are masked
    gradient_free: ClassVar[bool] = False
    #: an ensemble (:meth:`fooled_by`): its gradient-free components. When they fool examples
    #: its gradient attacks left robust, the gradients are masked (a trust check flags it)
    gradient_free_components: ClassVar[tuple[str, ...]] = ()

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

    def fooled_by(self) -> dict[str, int]:
        """An ensemble (such as ``autoattack``): for each of its components, how many examples it
        fooled first, summed over every call of this instance; empty for a single attack.

        The scorer reads it before and after a cell and reports the difference in the results'
        ``fooled_by`` column. The counts are the ensemble's own full-precision verdicts on its
        projected results.
        """
        return {}

    @abstractmethod
    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Return adversarial examples for ``x`` (labels ``y``) within ``self.threat``.

        ``model`` is in eval mode and its parameters do not require grad; compute input
        gradients with ``torch.autograd.grad``. ``x`` is a detached copy you may modify.

        Leave the model as you found it: :func:`craft` compares it by value afterwards, and
        any change (a weight written in place, under ``no_grad`` or through ``.data``; batch
        norm statistics moved by a forward pass in train mode; a module, parameter or buffer
        swapped; a dtype or device changed; a hook or a ``forward`` added; a gradient left on
        a parameter) is undone and fails the call with a :class:`ContractError` naming it.
        Temporary changes you undo yourself, bit for bit, before returning are fine.
        """

    @final
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return craft(self, model, x, y).x_adv


@contextlib.contextmanager
def attack_mode(model: nn.Module, who: str = "the attack") -> Iterator[None]:
    """Eval mode and frozen parameters for the duration of the block; everything restored after.

    The model is checked by value: its parameters and buffers are copied and its structure
    recorded on entry and compared on exit (bitwise, so NaN weights compare equal). If the
    block changed anything, or left a module in train mode, the model is restored exactly
    and :class:`ContractError` is raised with a one-line message, starting with ``who``,
    naming what changed. If the block raised, the model is restored too; the error is then a
    ContractError caused by the block's exception when the model had changed, else the block's
    own exception.
    """
    snapshot = ModelSnapshot(model)
    model.eval()
    for p in snapshot.params:
        p.requires_grad_(False)
    try:
        yield
    except Exception as exc:
        reason = snapshot.check_and_restore(who)
        if reason is not None:
            raise ContractError(reason) from exc
        raise
    except BaseException:  # KeyboardInterrupt and the like: restore and let it through
        snapshot.check_and_restore(who)
        raise
    reason = snapshot.check_and_restore(who)
    if reason is not None:
        raise ContractError(reason)


def craft(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Crafted:
    """Run ``attack`` under the contract and return the projected result with its violations."""
    x = x.detach()
    threat = attack.threat
    if threat.eps == 0 or not len(x):  # nothing to change: skip the plugin (some libraries
        return Crafted(x.clone(), 0, 0.0)  # reject ε = 0 or an empty batch)
    with attack_mode(model, who=f"attack {attack.name!r}"), torch.enable_grad():
        x_adv = attack.run(model, x.clone(), y)
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
