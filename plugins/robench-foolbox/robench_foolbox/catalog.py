"""Which Foolbox attacks robench can use, in which norms and modes, and why the others are not.

Every class exported by :mod:`foolbox.attacks` is looked at. One that is a fixed-ε or a
minimisation attack, measures its perturbation in L∞ or L2 (or lets the caller choose through a
``distance`` or ``constraint`` argument) and needs no constructor argument the plugin cannot
provide becomes a :class:`Spec`; the rest are in :data:`EXCLUDED` (known attacks, with a reason)
or :data:`SKIPPED` (attacks this plugin does not know, skipped automatically).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Literal

import foolbox.attacks as fa
from foolbox.attacks import brendel_bethge
from foolbox.attacks.base import FixedEpsilonAttack, MinimizationAttack
from foolbox.distances import LpDistance

from robench.threat import Norm

Mode = Literal["fixed", "minimization"]

_L0_L1 = "L0/L1 attack: robench threat models are L∞ or L2"

#: Exported names of :mod:`foolbox.attacks` that are deliberately not registered.
EXCLUDED: dict[str, str] = {
    "EADAttack": "elastic-net (L1) attack: robench threat models are L∞ or L2",
    "L0BrendelBethgeAttack": _L0_L1,
    "L1BrendelBethgeAttack": _L0_L1,
    "L0FMNAttack": _L0_L1,
    "L1FMNAttack": _L0_L1,
    "L1FastGradientAttack": _L0_L1,
    "L1BasicIterativeAttack": _L0_L1,
    "L1AdamBasicIterativeAttack": _L0_L1,
    "L1ProjectedGradientDescentAttack": _L0_L1,
    "L1PGD": _L0_L1,
    "L1AdamProjectedGradientDescentAttack": _L0_L1,
    "L1AdamPGD": _L0_L1,
    "L1MomentumIterativeFastGradientMethod": _L0_L1,
    "SparseL1DescentAttack": _L0_L1,
    "PointwiseAttack": "minimises the number of changed pixels (L0): no L∞ or L2 threat model",
    "SpatialAttack": "rotations and translations: not an Lp threat model",
    "GenAttack": "supports targeted attacks only (needs target classes)",
    "DatasetAttack": "needs a dataset of candidate adversarials fed to it beforehand",
    "BinarizationRefinementAttack": "needs adversarial starting points from another attack",
}
if brendel_bethge.NUMBA_IMPORT_ERROR is not None:  # foolbox's own check that numba imports
    _NO_NUMBA = "needs numba, which is not importable here (pip install numba to enable)"
    EXCLUDED["L2BrendelBethgeAttack"] = _NO_NUMBA
    EXCLUDED["LinfinityBrendelBethgeAttack"] = _NO_NUMBA

#: Foolbox attacks this plugin does not know and could not adapt (name → why); filled by
#: :func:`specs`.
SKIPPED: dict[str, str] = {}

#: Constructor arguments set by the adapter from the threat model, not by the benchmark.
FROM_THREAT = ("distance", "constraint")
#: Constructor arguments never exposed (Foolbox's TensorBoard logging).
HIDDEN = ("tensorboard",)

#: Small values for iteration counts: the attacks' ``example_params`` (fast contract tests),
#: and the values a required argument of an unknown attack may be given.
SMALL: dict[str, int] = {
    "steps": 3,
    "binary_search_steps": 2,
    "initial_gradient_eval_steps": 2,
    "max_gradient_eval_steps": 3,
    "repeats": 2,
    "directions": 3,
    "lr_num_decay": 2,
}

#: Minimisation attacks that need an adversarial starting point (from ``init_attack``) and
#: raise when it fails for any example: the adapter runs the initial attack itself.
NEEDS_START: tuple[type, ...] = (fa.BoundaryAttack, fa.HopSkipJumpAttack)
if brendel_bethge.NUMBA_IMPORT_ERROR is None:
    NEEDS_START += (
        brendel_bethge.L2BrendelBethgeAttack,
        brendel_bethge.LinfinityBrendelBethgeAttack,
    )

#: Attacks whose result is NaN where their update divides by a vanishing gradient norm: Foolbox's
#: NewtonFool divides by ‖∇‖⁴, which underflows for confidently classified examples. There the
#: attack cannot make progress; the adapter returns those examples unchanged (and logs it).
NAN_IS_FAILURE = (fa.NewtonFoolAttack,)

_NORM_OF_P: dict[float, Norm] = {math.inf: "linf", 2.0: "l2"}
_NORM_SYMBOL: dict[str, str] = {"linf": "L∞", "l2": "L2"}


@dataclass(frozen=True)
class Spec:
    """How one exported Foolbox attack is adapted."""

    #: the name under which :mod:`foolbox.attacks` exports it (an alias or the class name)
    exported: str
    fb_cls: type
    norms: tuple[Norm, ...]
    mode: Mode
    #: the ``__init__`` argument set from the threat model's norm (``distance``/``constraint``)
    norm_arg: str | None
    #: small iteration counts for :attr:`robench.api.Attack.example_params`
    example_params: dict[str, Any]

    @property
    def name(self) -> str:
        return f"foolbox.{self.exported}"

    @property
    def is_alias(self) -> bool:
        return self.exported != self.fb_cls.__name__

    def summary(self) -> str:
        """The first line of the robench class's docstring (shown by ``robench list``)."""
        norms = " or ".join(_NORM_SYMBOL[n] for n in self.norms)
        mode = "fixed ε" if self.mode == "fixed" else "minimisation"
        what = self.exported
        if self.is_alias:
            what += f", alias of {self.fb_cls.__name__}"
        return f"Foolbox's {what} ({norms}, {mode})"


def _init_parameters(cls: type) -> dict[str, inspect.Parameter]:
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):  # pragma: no cover - C-implemented or odd signatures
        return {}
    return {
        n: p
        for n, p in params.items()
        if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def _required(params: dict[str, inspect.Parameter]) -> list[str]:
    return [n for n, p in params.items() if p.default is p.empty and n not in FROM_THREAT + HIDDEN]


def _fixed_norm(cls: type, params: dict[str, inspect.Parameter]) -> Norm | str:
    """The norm of an attack with a fixed distance, or a reason why there is none usable."""
    distance = inspect.getattr_static(cls, "distance", None)
    if isinstance(distance, property | type(None)):  # decided per instance (noise mixins)
        try:
            distance = cls(**{n: SMALL[n] for n in _required(params) if n in SMALL}).distance
        except Exception as exc:
            return f"its distance could not be determined ({type(exc).__name__}: {exc})"
    if not isinstance(distance, LpDistance):
        return f"its distance {distance!r} is not an Lp distance"
    norm = _NORM_OF_P.get(float(distance.p))
    return norm if norm else f"measures perturbations in L{distance.p:g}, not L∞ or L2"


def adapt(exported: str, cls: type) -> Spec | str:
    """The :class:`Spec` for an exported Foolbox class, or the reason it cannot be adapted."""
    if issubclass(cls, FixedEpsilonAttack):
        mode: Mode = "fixed"
    elif issubclass(cls, MinimizationAttack):
        mode = "minimization"
    else:
        return "neither a fixed-ε nor a minimisation attack"
    params = _init_parameters(cls)
    missing = [n for n in _required(params) if n not in SMALL]
    if missing:
        return f"required constructor argument(s) the plugin cannot set: {', '.join(missing)}"
    norm_arg = next((n for n in FROM_THREAT if n in params), None)
    if norm_arg is not None:
        norms: tuple[Norm, ...] = ("linf", "l2")
    else:
        norm = _fixed_norm(cls, params)
        if norm not in _NORM_OF_P.values():
            return norm
        norms = (norm,)  # type: ignore[assignment]
    example = {n: v for n, v in SMALL.items() if n in params}
    return Spec(exported, cls, norms, mode, norm_arg, example)


def exported_attacks() -> dict[str, type]:
    """Every concrete attack class :mod:`foolbox.attacks` exports, by exported name."""
    out = {}
    for name in dir(fa):
        obj = getattr(fa, name)
        if (
            not name.startswith("_")
            and isinstance(obj, type)
            and issubclass(obj, fa.Attack)
            and not inspect.isabstract(obj)
        ):
            out[name] = obj
    return out


def specs() -> list[Spec]:
    """The adaptable attacks, sorted by exported name; records the rest in :data:`SKIPPED`."""
    out = []
    for exported, cls in sorted(exported_attacks().items()):
        if exported in EXCLUDED:
            continue
        spec = adapt(exported, cls)
        if isinstance(spec, str):
            SKIPPED[exported] = spec
        else:
            out.append(spec)
    return out


__all__ = ["EXCLUDED", "SKIPPED", "Spec", "adapt", "exported_attacks", "specs"]
