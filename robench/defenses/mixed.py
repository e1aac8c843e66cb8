"""Mixed clean + adversarial training (Goodfellow et al. 2015; TensorFlow NSL; Kurakin et al.)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from robench.attack import craft
from robench.dataset import Data
from robench.defense import Defense, TrainContext
from robench.defenses._inner import InnerAttack
from robench.defenses.bases import MixedBase


class MixedTraining(MixedBase, Defense):
    """Clean + adversarial loss with explicit weights (CIFAR-tutorial, NSL and batch-replace forms).

    Per batch of m examples, adversarial examples are crafted for the first k = ⌈adv_fraction·m⌉
    (in shuffled order) and the loss is::

        clean_weight · CE(clean part) + adv_weight · CE(adversarial part)

    where each CE is a mean over its own examples. The clean part is the whole batch, or, with
    ``replace = true``, only the m − k examples that were not replaced. The published forms:

    - PyTorch CIFAR tutorial / Goodfellow et al. (α = 0.5): ``clean_weight = 0.5,
      adv_weight = 0.5`` (adv_fraction 1, replace false).
    - TensorFlow NSL adversarial regularization, CE(clean) + multiplier · CE(adv):
      ``clean_weight = 1.0, adv_weight = multiplier`` (NSL's tutorial: 0.2, with FGSM ε = 0.2).
    - Kurakin et al. (2017), k of m examples replaced, loss (Σ_clean CE + λ Σ_adv CE)/(m − k + λk):
      ``replace = true, adv_fraction = k/m, clean_weight = (m − k)/(m − k + λk),
      adv_weight = λk/(m − k + λk)`` — with λ = 1 simply ``clean_weight = 1 − f,
      adv_weight = f`` for f = adv_fraction.
    - ``clean_weight = 0, adv_weight = 1`` is plain adversarial training (``adversarial``).
    """

    example_params: ClassVar[dict[str, Any]] = {"attack": {"name": "fgsm", "eps": 0.1}}

    params: MixedBase.Params

    def fit(self, model: nn.Module, train: Data, ctx: TrainContext) -> nn.Module:
        p = self.params
        attacks = InnerAttack(p, ctx, train)

        def loss(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            k = math.ceil(p.adv_fraction * len(y))
            x_adv = craft(next(attacks), m, x[:k], y[:k]).x_adv
            x_clean, y_clean = (x[k:], y[k:]) if p.replace else (x, y)
            n_clean = len(y_clean) if p.clean_weight > 0 else 0
            logits = m(torch.cat([x_clean[:n_clean], x_adv]))
            adv_loss = ctx.cross_entropy(logits[n_clean:], y[:k])
            if n_clean == 0:
                return p.adv_weight * adv_loss
            clean_loss = ctx.cross_entropy(logits[:n_clean], y_clean)
            return p.clean_weight * clean_loss + p.adv_weight * adv_loss

        return ctx.train(model, train, loss)
