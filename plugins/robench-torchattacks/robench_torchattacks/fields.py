"""The types, constraints and descriptions of torchattacks' keyword parameters, shared by the
attacks of :mod:`robench_torchattacks.catalogue` (pydantic ``Field`` keywords)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Fld:
    """A parameter's type, constraints (pydantic ``Field`` keywords) and description."""

    annotation: Any
    description: str
    constraints: dict[str, Any] = field(default_factory=dict)


def fld(annotation: Any, description: str, **constraints: Any) -> Fld:
    return Fld(annotation, description, constraints)


STEPS = fld(int, "iterations", ge=1)
ALPHA = fld(float, "step size per iteration", gt=0, allow_inf_nan=False)
RANDOM_START = fld(bool, "start from a uniformly random point of the ε-ball")
DECAY = fld(float, "momentum decay factor μ (0: no momentum)", ge=0, allow_inf_nan=False)
EOT = fld(int, "gradients averaged per step (expectation over transformation)", ge=1)
RESTARTS = fld(int, "random restarts", ge=1)
SEED = fld(
    int | None,
    "the seed torchattacks reseeds with before attacking; default (None): drawn from robench's "
    "seeded generator, so each cell and batch gets its own, reproducibly",
    ge=0,
)
RHO = fld(float, "APGD's step-size halving threshold", gt=0, lt=1)
RESIZE = fld(float, "input diversity: resize factor", gt=0, allow_inf_nan=False)
DIVERSITY = fld(float, "input diversity: probability of transforming an input", ge=0, le=1)
SAMPLES_N = fld(int, "neighbourhood samples per step for the gradient variance", ge=1)
BETA_BOUND = fld(float, "neighbourhood radius, as a multiple of ε", ge=0, allow_inf_nan=False)
NOISE_TYPE = fld(Literal["guassian", "uniform"], "smoothing noise ('guassian' sic: torchattacks')")
NOISE_SD = fld(float, "standard deviation of the smoothing noise", ge=0, allow_inf_nan=False)
NOISE_BATCH = fld(int, "noise draws per example and step", ge=1)
BATCH_MAX = fld(int, "largest batch of noisy copies run at once", ge=1)
DIVISION = fld(float, "guards the L2 normalisation against division by zero", gt=0)
KAPPA = fld(float, "confidence margin κ of the CW loss", ge=0, allow_inf_nan=False)
LR = fld(float, "learning rate of the optimisation", gt=0, allow_inf_nan=False)
