"""Plain training on clean examples: the undefended baseline."""

from __future__ import annotations

from torch import nn

from robench.dataset import Data
from robench.defense import Defense, TrainContext
from robench.defenses.bases import StandardBase


class StandardTraining(StandardBase, Defense):
    """Plain training on clean examples (no defense): the baseline every defense is compared to."""

    def fit(self, model: nn.Module, train: Data, ctx: TrainContext) -> nn.Module:
        return ctx.train(model, train, lambda m, x, y: ctx.cross_entropy(m(x), y))
