"""The base of the adversarial-training presets: ``adversarial`` with one fixed inner attack."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator
from torch import nn

from robench.dataset import Data
from robench.defense import Defense, TrainContext
from robench.defenses._inner import InnerAttackParams
from robench.defenses.adversarial import train_adversarially
from robench.plugin import Params
from robench.specs import AttackSpec, Epsilon, NormName, parse_eps


class PresetParams(Params):
    """The budget every preset trains against."""

    eps: Epsilon = Field(description="the training budget ε: a number or a fraction like '8/255'")
    norm: NormName = Field("linf", description="the training budget's norm: linf or l2")
    eps_warmup: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="fraction of training over which ε ramps up linearly from 0 (0: off)",
    )


class StepParams(PresetParams):
    """A preset's budget and its iterative inner attack: ``steps`` steps of ``step_size`` (or
    ``rel_step``·ε, by default 2.5·ε/steps) — PGD-AT's, TRADES's and MART's."""

    steps: int = Field(10, ge=1, description="gradient-ascent steps of the inner attack per batch")
    step_size: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="absolute step: a number or a fraction like '2/255'; excludes rel_step",
    )
    rel_step: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="step as a multiple of ε (default 2.5/steps); excludes step_size",
    )

    @field_validator("step_size", mode="before")
    @classmethod
    def _fraction(cls, value: Any) -> Any:
        return parse_eps(value)

    @model_validator(mode="after")
    def _one_step_rule(self) -> StepParams:
        if self.step_size is not None and self.rel_step is not None:
            raise ValueError("give either step_size or rel_step, not both")
        return self

    def alpha(self, eps: float) -> float:
        """The step at budget ``eps`` (during an ε warm-up a relative step follows ε)."""
        if self.step_size is not None:
            return self.step_size
        return (self.rel_step if self.rel_step is not None else 2.5 / self.steps) * eps


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
