"""TRADES (Zhang et al., ICML 2019): clean cross-entropy plus β·KL(clean ‖ adversarial)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robench.attack import attack_mode
from robench.attacks._common import Ball
from robench.dataset import Data
from robench.defense import Defense, TrainContext
from robench.defenses.bases import TRADESBase
from robench.threat import ThreatModel

#: The standard deviation of the Gaussian start of the inner attack (both papers' code: 0.001).
START_STD = 1e-3

#: ``make_loss(model, x)``: called once per batch, with the model in eval mode and frozen, before
#: the first step; returns the function of the adversarial logits that the inner attack
#: maximises (a scalar: summed over the batch, so each example's gradient is its own).
MakeLoss = Callable[[nn.Module, torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


class EpsRamp:
    """The budget of each training batch in turn (``next(ramp)``): ε·k/K for batch k of the
    first K = ``warmup``·(all batches of the training), then ε.

    The same ramp as ``adversarial``'s ``eps_warmup``; its batch counter is kept in the
    per-epoch checkpoints, so a resumed training goes on where it was.
    """

    def __init__(self, eps: float, warmup: float, ctx: TrainContext, train: Data) -> None:
        cfg = ctx.training
        n = len(train) if cfg.train_examples is None else min(len(train), cfg.train_examples)
        self.ramp_steps = warmup * cfg.epochs * math.ceil(n / cfg.batch_size)
        self.eps = eps
        self.step = 0
        ctx.keep_state("eps_warmup", self)

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])

    def __iter__(self) -> EpsRamp:
        return self

    def __next__(self) -> float:
        self.step += 1
        if self.step >= self.ramp_steps:
            return self.eps
        return self.eps * self.step / self.ramp_steps


def ascend(
    model: nn.Module,
    x: torch.Tensor,
    make_loss: MakeLoss,
    threat: ThreatModel,
    steps: int,
    alpha: float,
    who: str = "the inner attack",
) -> torch.Tensor:
    """Points of ``threat``'s ball around ``x`` that maximise ``make_loss``'s loss: start at
    x + 0.001·N(0, I), then ``steps`` steps of ``alpha``·sign(∇) (L∞) or ``alpha``·∇/‖∇‖₂ (L2,
    per example; no move where ∇ = 0), each projected onto the ε-ball ∩ the bounds. In L∞ this
    is the released TRADES and MART code's loop step for step (the start, as there, is not
    projected: only the first gradient is taken at it); their L2 variant clamps to the bounds
    before the ball projection and moves a zero-gradient example in a random direction.

    Runs under the attack contract (:func:`robench.attack.attack_mode`): the model in eval mode
    with its parameters frozen (no weight gradients; batch-norm statistics not updated), and
    checked by value afterwards: weights, buffers, modes and ``requires_grad`` come back as they
    were. The Gaussian start draws from torch's global generator. Returns a detached tensor.
    """
    x = x.detach()
    if threat.eps == 0:
        return x.clone()
    ball = Ball(x, threat)
    with attack_mode(model, who=who), torch.enable_grad():
        loss_of = make_loss(model, x)
        x_adv = x + START_STD * torch.randn_like(x)  # unprojected, as in the released code
        for _ in range(steps):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(loss_of(model(x_adv)), x_adv)
            x_adv = ball.step(x_adv, grad, alpha)
    return x_adv.detach()


def kl_to(model: nn.Module, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """TRADES' inner loss: Σ KL(p(x) ‖ p(x_adv)) over the batch, p(x) fixed (computed once)."""
    with torch.no_grad():
        p_clean = F.softmax(model(x).float(), dim=1)
    return lambda logits: F.kl_div(F.log_softmax(logits.float(), dim=1), p_clean, reduction="sum")


def trades_loss(
    logits: torch.Tensor,
    logits_adv: torch.Tensor,
    y: torch.Tensor,
    beta: float,
    cross_entropy: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> torch.Tensor:
    """TRADES' training loss from the clean and adversarial logits of a batch::

        CE(f(x), y) + β · (1/m) Σᵢ KL(p(xᵢ) ‖ p(x_advᵢ)),   p = softmax(f)

    (``KLDivLoss(log_softmax(f(x_adv)), softmax(f(x)))`` summed, over the batch size, as the
    released code computes it), with gradients through both distributions.
    """
    robust = F.kl_div(
        F.log_softmax(logits_adv.float(), dim=1),
        F.softmax(logits.float(), dim=1),
        reduction="batchmean",
    )
    return cross_entropy(logits, y) + beta * robust


class TRADES(TRADESBase, Defense):
    """TRADES (Zhang et al. 2019): CE(f(x), y) + β·KL(f(x) ‖ f(x_adv)), x_adv maximising the KL.

    Per batch, the inner attack looks for the point x_adv of the ε-ball (∩ the bounds) whose
    prediction is furthest from the clean one: from x + 0.001·N(0, I), ``steps`` ascent steps
    on Σ KL(p(x) ‖ p(x_adv)) — signed gradient (L∞) or normalised gradient (L2) — each projected
    back, with the model in eval mode and without weight gradients (the attack contract; batch
    norm statistics are not touched). The model then trains, in train mode, on::

        CE(f(x), y) + β · (1/m) Σᵢ KL(p(xᵢ) ‖ p(x_advᵢ))

    where p = softmax(f) and the KL is ``F.kl_div(log_softmax(f(x_adv)), softmax(f(x)),
    reduction="batchmean")``: the released code's ``KLDivLoss(log_softmax(model(x_adv)),
    softmax(model(x_natural)))``, i.e. KL(clean ‖ adversarial), with gradients through both
    distributions as that code gets them in current PyTorch. (The paper's formula writes the
    regulariser as L(f(X), f(X′)).) The clean logits are computed once per batch and serve
    both terms (the released code runs the clean batch through the model twice; only batch
    norm's running statistics see the difference). Larger β trades clean accuracy for
    robustness; the authors suggest β ∈ [1, 10]; β = 0 is plain training (nothing is crafted).

    The step is ``step_size`` (absolute) or ``rel_step``·ε, by default 2.5·ε/steps (2/255 for 10
    steps at 8/255; the paper's CIFAR-10 code uses 0.007 at ε = 0.031 — set ``step_size =
    0.007`` to match it exactly — and 0.01 with 40 steps on MNIST at ε = 0.3). ``eps_warmup``
    ramps ε up linearly from 0 over that fraction of training (a small MNIST CNN at ε = 0.3
    from the first step can stall at chance, as with PGD-AT).

    Published (the authors' repository README, ε = 8/255 ≈ 0.031 L∞): CIFAR-10 WRN-34-10,
    β = 6, 76 epochs SGD lr 0.1 (×0.1 at epoch 75), weight decay 2e-4, batch 128, 10 steps
    of 0.007: 84.92 % clean, 56.61 % under PGD-20 (their "FGSM-20"), 53.08 % under AutoAttack
    (RobustBench's ``Zhang2019Theoretically``). MNIST, ε = 0.3, their SmallCNN (4 conv + 3 fc),
    40 steps of 0.01, 100 epochs SGD lr 0.01: 99.48 % clean, 96.07 % under PGD-40 (about 92.5 %
    under the strongest later attacks on their leaderboard); the paper's comparison table
    lists both models with β = 6, while the released MNIST script defaults to β = 1.

    A CIFAR-10 recipe (PreActResNet-18)::

        [[defenses]]
        name = "trades"
        eps = "8/255"
        beta = 6.0
        model = { name = "preact-resnet18" }
        training = { epochs = 30, batch_size = 128, optimizer = "sgd", lr = 0.1,
                     weight_decay = 5e-4, schedule = "cosine", augment = "crop-flip" }
    """

    example_params: ClassVar[dict[str, Any]] = {"eps": 0.1, "steps": 3}

    params: TRADESBase.Params

    def fit(self, model: nn.Module, train: Data, ctx: TrainContext) -> nn.Module:
        p = self.params
        ramp = EpsRamp(p.eps, p.eps_warmup, ctx, train)
        bounds = ctx.info.bounds

        def loss(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            eps = next(ramp)
            if p.beta == 0:  # no KL term: plain training, nothing to craft
                return ctx.cross_entropy(m(x), y)
            threat = ThreatModel(p.norm, eps, bounds)
            x_adv = ascend(m, x, kl_to, threat, p.steps, p.alpha(eps), who="TRADES' inner attack")
            return trades_loss(m(x), m(x_adv), y, p.beta, ctx.cross_entropy)

        return ctx.train(model, train, loss)
