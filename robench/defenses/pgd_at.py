"""Madry et al. (2018) PGD adversarial training with its usual settings."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from robench.defenses._preset import AdversarialPreset, PresetParams
from robench.specs import AttackSpec, parse_eps


class PGDAT(AdversarialPreset):
    """PGD-AT (Madry et al. 2018): PGD-k from a random start, step 2.5·ε/k unless given.

    Each batch is attacked with ``steps`` projected gradient steps from a uniform random point
    of the ε-ball, and the model trains on those examples only. The step is ``step_size``
    (absolute) or ``rel_step``·ε, by default 2.5·ε/steps (Madry's rule: enough to cross the
    ball from any start; 2/255 for PGD-10 at 8/255)::

        [[defenses]]
        name = "pgd-at"
        eps = "8/255"
        steps = 10

    The same as ``adversarial`` with ``attack = { name = "pgd", eps = …, steps = 10 }``.
    """

    name = "pgd-at"

    class Params(PresetParams):
        steps: int = Field(10, ge=1, description="PGD steps per training batch")
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
        def _one_step_rule(self) -> PGDAT.Params:
            if self.step_size is not None and self.rel_step is not None:
                raise ValueError("give either step_size or rel_step, not both")
            return self

    params: Params

    def attack_spec(self) -> AttackSpec:
        p = self.params
        spec: dict[str, Any] = {"name": "pgd", "norm": p.norm, "eps": p.eps, "steps": p.steps}
        spec["random_start"] = True
        if p.step_size is not None:
            spec["step_size"] = p.step_size
        if p.rel_step is not None:
            spec["rel_step"] = p.rel_step
        return AttackSpec.model_validate(spec)
