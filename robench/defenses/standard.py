"""Plain training on clean examples: the undefended baseline."""

from __future__ import annotations

from torch import nn

from robench.dataset import Data
from robench.defense import Defense, TrainContext


class StandardTraining(Defense):
    """Plain training on clean examples (no defense): the baseline every defense is compared to."""

    name = "standard"

    def fit(self, model: nn.Module, train: Data, ctx: TrainContext) -> nn.Module:
        return ctx.train(model, train, lambda m, x, y: ctx.cross_entropy(m(x), y))
