"""Adversarial training à la Madry et al. (2018): train on adversarial examples only."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from robench.attack import craft
from robench.dataset import Data
from robench.defense import Defense, TrainContext
from robench.defenses._inner import InnerAttack
from robench.defenses.bases import AdversarialBase, InnerAttackParams


class AdversarialTraining(AdversarialBase, Defense):
    """Adversarial training (Madry et al. 2018): minimise the loss on attacked examples only.

    The inner attack is any registered attack, e.g. PGD-AT::

        [[defenses]]
        name = "adversarial"
        attack = { name = "pgd", norm = "linf", eps = 0.3, steps = 10 }

    or Fast AT (Wong et al. 2020): ``attack = { name = "fgsm", eps = 0.031, random_start = true }``
    with ``training.schedule = "cyclic"`` (the presets ``fast-at`` and ``pgd-at`` spell these two
    recipes with their published defaults). ``eps_warmup`` ramps ε up from 0 over the first part
    of training (small models trained at a large ε from the start can stall at chance: with
    MNIST's 93k-parameter NSL CNN at ε = 0.3 they do). Examples are crafted with the model in
    eval mode and without weight gradients (the attack contract), then the model trains on them.
    """

    example_params: ClassVar[dict[str, Any]] = {"attack": {"name": "fgsm", "eps": 0.1}}

    params: AdversarialBase.Params

    def fit(self, model: nn.Module, train: Data, ctx: TrainContext) -> nn.Module:
        return train_adversarially(model, train, ctx, self.params)


def train_adversarially(
    model: nn.Module, train: Data, ctx: TrainContext, inner: InnerAttackParams
) -> nn.Module:
    """Train on ``inner``'s attacked examples only (``adversarial`` and its presets)."""
    attacks = InnerAttack(inner, ctx, train)

    def loss(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ctx.cross_entropy(m(craft(next(attacks), m, x, y).x_adv), y)

    return ctx.train(model, train, loss)
