"""The base of the adversarial-training presets: ``adversarial`` with one fixed inner attack."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

from torch import nn

from robench.dataset import Data
from robench.defense import Defense, TrainContext
from robench.defenses.adversarial import train_adversarially
from robench.defenses.bases import InnerAttackParams, PresetParams
from robench.specs import AttackSpec


class AdversarialPreset(Defense):
    """Adversarial training (``adversarial``) on the examples of a preset's own inner attack.

    Subclasses give :meth:`attack_spec`, and may set ``training_defaults``.
    """

    example_params: ClassVar[dict[str, Any]] = {"eps": 0.1}

    params: PresetParams

    @abstractmethod
    def attack_spec(self) -> AttackSpec:
        """The inner attack, built from the preset's parameters."""

    def fit(self, model: nn.Module, train: Data, ctx: TrainContext) -> nn.Module:
        ctx = ctx.with_training_defaults(self.training_defaults)
        inner = InnerAttackParams(attack=self.attack_spec(), eps_warmup=self.params.eps_warmup)
        return train_adversarially(model, train, ctx, inner)
