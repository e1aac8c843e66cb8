"""The built-in defenses' names, parameters and training defaults, without torch.

What validating a benchmark reads of a defense (:mod:`robench.bases`): each defense in its own
module (``trades.py``, ...) extends its class here, so ``robench.defenses.trades.TRADES.Params``
is :class:`TRADESBase.Params`, and ``robench validate`` checks a benchmark's defenses without
importing torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, ValidationInfo, field_validator, model_validator

from robench.bases import DefenseBase
from robench.plugin import Params, benchmark_path
from robench.specs import AttackSpec, Epsilon, NormName, parse_eps

#: where a training script commonly keeps the state_dict inside a saved dict (``checkpoint``)
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")


class InnerAttackParams(Params):
    """Parameters shared by defenses that train on attacked examples."""

    attack: AttackSpec
    eps_warmup: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="fraction of training over which the attack's ε ramps up linearly from 0 "
        "(helps small models that stall at chance under a full budget from the start)",
    )


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


class StandardBase(DefenseBase):
    """Plain training's name (:class:`robench.defenses.standard.StandardTraining`)."""

    name = "standard"


class AdversarialBase(DefenseBase):
    """Adversarial training's name and parameters
    (:class:`robench.defenses.adversarial.AdversarialTraining`)."""

    name = "adversarial"

    class Params(InnerAttackParams):
        pass


class MixedBase(DefenseBase):
    """Mixed training's name and parameters (:class:`robench.defenses.mixed.MixedTraining`)."""

    name = "mixed"

    class Params(InnerAttackParams):
        clean_weight: float = Field(0.5, ge=0, description="weight of the clean loss")
        adv_weight: float = Field(0.5, ge=0, description="weight of the adversarial loss")
        adv_fraction: float = Field(
            1.0, gt=0, le=1, description="fraction of each batch that gets adversarial examples"
        )
        replace: bool = Field(
            False, description="adversarial examples replace their clean counterparts"
        )

        @model_validator(mode="after")
        def _check(self):
            if self.clean_weight + self.adv_weight <= 0:
                raise ValueError("clean_weight + adv_weight must be > 0")
            if self.replace and self.adv_fraction == 1.0 and self.clean_weight > 0:
                raise ValueError(
                    "replace = true with adv_fraction = 1 leaves no clean examples; "
                    "set clean_weight = 0 or adv_fraction < 1"
                )
            return self


class FastATBase(DefenseBase):
    """Fast AT's name, parameters and training defaults (:class:`robench.defenses.fast_at.
    FastAT`)."""

    name = "fast-at"
    training_defaults: ClassVar[dict[str, Any]] = {"schedule": "cyclic"}

    class Params(PresetParams):
        rel_step: float = Field(
            1.25,
            gt=0,
            allow_inf_nan=False,
            description="the FGSM step α as a multiple of ε (Wong et al.: 1.25)",
        )


class PGDATBase(DefenseBase):
    """PGD-AT's name and parameters (:class:`robench.defenses.pgd_at.PGDAT`)."""

    name = "pgd-at"

    class Params(StepParams):
        pass


class TRADESBase(DefenseBase):
    """TRADES' name and parameters (:class:`robench.defenses.trades.TRADES`)."""

    name = "trades"

    class Params(StepParams):
        beta: float = Field(
            6.0,
            ge=0,
            allow_inf_nan=False,
            description="weight β of the KL term (1/λ in the paper; larger: more robust, less "
            "accurate)",
        )


class MARTBase(DefenseBase):
    """MART's name and parameters (:class:`robench.defenses.mart.MART`)."""

    name = "mart"

    class Params(StepParams):
        beta: float = Field(
            5.0,
            ge=0,
            allow_inf_nan=False,
            description="weight β of the misclassification-weighted KL term (the paper's λ)",
        )


class CheckpointBase(DefenseBase):
    """The checkpoint defense's name and parameters (:class:`robench.defenses.checkpoint.
    Checkpoint`)."""

    name = "checkpoint"
    trains = False

    class Params(Params):
        path: Path = Field(
            description="the weights: .safetensors, or a state_dict saved with torch.save "
            "(relative: to the benchmark file)"
        )
        key: str | None = Field(
            None,
            description="the entry of a saved dict that holds the state_dict (default: the "
            f"file itself, or the first of {', '.join(WRAPPER_KEYS)} it has)",
        )

        @field_validator("path", mode="after")
        @classmethod
        def _resolve(cls, path: Path, info: ValidationInfo) -> Path:
            path = benchmark_path(path, info)
            if not path.is_file():
                what = "is a folder, not a file" if path.is_dir() else "not found"
                raise ValueError(
                    f"checkpoint file {what}: {path} (a relative path is taken from the "
                    "benchmark file's folder)"
                )
            return path


#: the base of each built-in defense, by name (:meth:`robench.registry.Registry.get_base`)
BASES: dict[str, type[DefenseBase]] = {
    cls.name: cls
    for cls in (
        StandardBase,
        AdversarialBase,
        MixedBase,
        FastATBase,
        PGDATBase,
        TRADESBase,
        MARTBase,
        CheckpointBase,
    )
}
