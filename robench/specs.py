"""Small typed values shared by the benchmark format and plugins' parameters (no torch: what
``robench validate`` imports)."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)

#: a threat model's norm (:class:`robench.threat.ThreatModel`)
Norm = Literal["linf", "l2"]
NORMS: tuple[Norm, ...] = ("linf", "l2")
#: how an evaluation or a training computes: ``fp32``, the model's own precision; ``bf16``,
#: bfloat16 autocast (:mod:`robench.precision`)
Precision = Literal["fp32", "bf16"]

_FRACTION = re.compile(r"^\s*([0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)\s*$")
_NORM_ALIASES = {"linf": "linf", "inf": "linf", "l_inf": "linf", "l2": "l2", "2": "l2"}


def parse_eps(value: Any) -> Any:
    """Accept a number or a fraction string such as ``"8/255"`` (not a boolean).

    The one-line error that reports a ValueError raised here adds the value given.
    """
    if isinstance(value, bool):
        raise ValueError("expected a number or a fraction like '8/255', not a boolean")
    if isinstance(value, str):
        m = _FRACTION.match(value)
        try:
            num, den = float(m.group(1)), float(m.group(2))  # type: ignore[union-attr]
        except (AttributeError, ValueError):
            raise ValueError("expected a number or a fraction like '8/255'") from None
        if not (math.isfinite(num) and math.isfinite(den)):
            raise ValueError("a fraction's numerator and denominator must be finite numbers")
        if den == 0:
            raise ValueError("a fraction's denominator must not be zero")
        return num / den
    return value


def parse_norm(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in _NORM_ALIASES:
        return _NORM_ALIASES[value.strip().lower()]
    return value


#: what a budget may be written as, for the JSON Schema of a benchmark file
EPS_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": r"^\s*[0-9.eE+-]+\s*/\s*[0-9.eE+-]+\s*$"},
    ],
    "description": "a budget: a number, or a fraction such as '8/255'",
}
#: A perturbation budget: a non-negative number, or a fraction string like "8/255".
Epsilon = Annotated[
    float,
    BeforeValidator(parse_eps),
    Field(ge=0, allow_inf_nan=False),
    WithJsonSchema(EPS_SCHEMA),
]
#: "linf" or "l2" (also accepted: "inf", "Linf", "L2").
NormName = Annotated[
    Norm,
    BeforeValidator(parse_norm),
    WithJsonSchema(
        {
            "enum": sorted({*_NORM_ALIASES, *(k.upper() for k in _NORM_ALIASES), "Linf"}),
            "description": "the norm: linf or l2",
        }
    ),
]


def _spec_schema(schema: dict[str, Any]) -> None:
    """An attack spec's other keys are the attack's parameters (checked once it is known)."""
    schema["properties"].pop("params", None)
    schema["additionalProperties"] = True


class AttackSpec(BaseModel):
    """A registered attack with one budget, e.g. a defense's inner attack::

        attack = { name = "pgd", norm = "linf", eps = 0.3, steps = 10 }

    Every key besides ``name``, ``norm`` and ``eps`` is a parameter of the attack.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_spec_schema)

    name: str
    norm: NormName = "linf"
    eps: Epsilon
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _collect_params(cls, data: Any) -> Any:
        if isinstance(data, dict) and "params" not in data:
            known = {"name", "norm", "eps"}
            params = {k: v for k, v in data.items() if k not in known}
            data = {k: v for k, v in data.items() if k in known} | {"params": params}
        return data

    def describe(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.params.items())
        return f"{self.name}({self.norm}, eps={self.eps:g}{extra})"
