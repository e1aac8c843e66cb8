"""The robench attack classes generated from Foolbox attacks, and how they run.

:func:`make_attack` turns one :class:`~robench_foolbox.catalog.Spec` into a subclass of
:class:`FoolboxAttack` (itself a :class:`robench.api.Attack`): its ``Params`` come from the
Foolbox class's ``__init__``, the Foolbox attack object is built once per robench attack, and
``run`` calls it on torch tensors (eagerpy, no numpy round-trip) with the model wrapped once.
"""

from __future__ import annotations

import inspect
import logging
import typing
import warnings
from typing import Any, ClassVar

import foolbox
import torch
from foolbox.attacks.base import MinimizationAttack
from foolbox.attacks.blended_noise import LinearSearchBlendedUniformNoiseAttack
from foolbox.criteria import Misclassification
from pydantic import TypeAdapter, create_model, field_validator
from torch import nn

from robench.adapt import iteration_cost, model_device_dtype, params_from_signature
from robench.api import Attack, Params
from robench.threat import Norm
from robench_foolbox.catalog import FROM_THREAT, HIDDEN, NAN_IS_FAILURE, NEEDS_START, Spec
from robench_foolbox.fmodel import foolbox_model

log = logging.getLogger(__name__)

_DISTANCES = {"linf": foolbox.distances.linf, "l2": foolbox.distances.l2}
#: the warning Foolbox's blended-noise attack gives when random noise fooled the model on only
#: some examples: an expected outcome (the attack failed there), reported through logging
_NOISE_FAILED = r".*failed to draw sufficient random inputs that are adversarial"


class FoolboxAttack(Attack):
    """Base of the generated Foolbox adapters; subclasses set the class attributes below."""

    #: the Foolbox attack class adapted
    foolbox_class: ClassVar[type]
    #: the ``__init__`` argument set from the threat model's norm, if any
    norm_arg: ClassVar[str | None] = None

    def __init__(self, threat, params: Params | None = None, /, **kwargs: Any) -> None:
        super().__init__(threat, params, **kwargs)
        self.fb_attack = self.foolbox_class(**self.foolbox_kwargs())

    def cost(self) -> float:
        return iteration_cost(
            self.params, single_step=self.single_step, gradient_free=self.gradient_free
        )

    def foolbox_kwargs(self) -> dict[str, Any]:
        """The keyword arguments the Foolbox attack is built with."""
        kwargs = {name: getattr(self.params, name) for name in type(self.params).model_fields}
        norm: Norm = self.threat.norm
        if self.norm_arg == "distance":
            kwargs["distance"] = _DISTANCES[norm]
        elif self.norm_arg == "constraint":
            kwargs["constraint"] = norm
        return kwargs

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        device, _ = model_device_dtype(model, x)
        fmodel = foolbox_model(model, self.threat.bounds, device)
        xs, ys = x.to(device), y.to(device=device, dtype=torch.long)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_NOISE_FAILED, category=UserWarning)
            if not self.minimizes:
                _, clipped, _ = self.fb_attack(
                    fmodel, xs, Misclassification(ys), epsilons=self.threat.eps
                )
                x_adv = clipped
            elif isinstance(self.fb_attack, NEEDS_START):
                x_adv = self._from_starting_points(fmodel, xs, ys)
            else:
                x_adv, _, _ = self.fb_attack(fmodel, xs, Misclassification(ys), epsilons=None)
        if isinstance(self.fb_attack, NAN_IS_FAILURE):
            x_adv = self._nan_to_clean(x_adv, xs)
        return x_adv.to(x.device)

    def _nan_to_clean(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Examples with NaN where the attack broke down numerically come back unchanged."""
        bad = ~torch.isfinite(x_adv.reshape(len(x_adv), -1)).all(dim=1)
        if not bad.any():
            return x_adv
        log.warning(
            "%s: numerical breakdown (vanishing gradient) on %d of %d examples; left unchanged",
            self.name,
            int(bad.sum()),
            len(x),
        )
        return torch.where(bad.view(-1, *([1] * (x.dim() - 1))), x, x_adv)

    def _from_starting_points(self, fmodel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Run a decision-based attack (Boundary, HopSkipJump, Brendel-Bethge) on the examples
        its initial attack found an adversarial for; the others come back unchanged.

        Foolbox itself raises for the whole batch when the initial attack fails on one example.
        """
        init = getattr(self.fb_attack, "init_attack", None) or (
            LinearSearchBlendedUniformNoiseAttack(steps=50)  # Foolbox's default for these
        )
        start = init.run(fmodel, x, Misclassification(y))
        with torch.no_grad():
            found = fmodel(start).argmax(dim=1) != y
        x_adv = x.clone()
        if not found.all():
            log.info(
                "%s: no adversarial starting point for %d of %d examples; left unchanged",
                self.name,
                int((~found).sum()),
                len(x),
            )
        if found.any():
            raw, _, _ = self.fb_attack(
                fmodel,
                x[found],
                Misclassification(y[found]),
                epsilons=None,
                starting_points=start[found],
            )
            x_adv[found] = raw
        return x_adv


def _check_init_attack(cls: type, value: Any) -> Any:
    if value is not None and not isinstance(value, MinimizationAttack):
        raise ValueError(
            "must be a Foolbox minimisation attack object (from Python), or left out "
            f"(got {value!r})"
        )
    return value


def _merge_literals(annotation: Any) -> Any:
    """``Union[Literal['a'], Literal['b']]`` → ``Literal['a', 'b']``: one clear error message
    ("Input should be 'a' or 'b'") instead of one per member of the union."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Union and all(
        typing.get_origin(a) is typing.Literal for a in args
    ):
        return typing.Literal[tuple(v for a in args for v in typing.get_args(a))]
    return annotation


def _foolbox_types(base: type[Params], init: Any) -> dict[str, Any]:
    """Field overrides that type each parameter by Foolbox's own annotation where pydantic
    understands it: robench's helper infers types from defaults only, so it leaves required
    arguments, ``Literal`` choices and ``Optional[...]`` as ``Any`` or too narrow (``int`` for
    ``candidates: Optional[int] = 10``). Arguments taking objects (``init_attack``) stay ``Any``.
    """
    signature = inspect.signature(init).parameters
    out = {}
    for name, field in base.model_fields.items():
        annotation = signature[name].annotation
        if annotation is inspect.Parameter.empty or annotation == field.annotation:
            continue
        annotation = _merge_literals(annotation)
        try:
            TypeAdapter(annotation)
        except Exception:  # an arbitrary class, a string annotation...: left to Foolbox
            continue
        out[name] = (annotation, ... if field.is_required() else field.default)
    return out


def _params(spec: Spec) -> type[Params]:
    """The Params model: the Foolbox ``__init__``'s keywords, less those set by the adapter."""
    name = f"{spec.exported}Params"
    doc = f"Keyword arguments of foolbox.attacks.{spec.fb_cls.__name__}."
    init = spec.fb_cls.__init__
    base = params_from_signature(name, init, skip=(*FROM_THREAT, *HIDDEN), doc=doc)
    validators = {}
    if "init_attack" in base.model_fields:
        validators["_init_attack"] = field_validator("init_attack")(_check_init_attack)
    typed = _foolbox_types(base, init)
    if not (typed or validators):
        return base
    model = create_model(name, __base__=base, __validators__=validators, **typed)
    model.__doc__ = doc
    return model


def _docstring(spec: Spec) -> str:
    doc = inspect.getdoc(spec.fb_cls) or ""
    first = doc.split("\n\n")[0].replace("\n", " ").strip()
    lines = [spec.summary(), ""]
    if first:
        lines += [first, ""]
    if spec.mode == "fixed":
        lines.append("Called with epsilons = ε; returns Foolbox's result clipped to the ε-ball.")
    else:
        lines.append(
            "Minimises the perturbation (epsilons = None); robench projects it into each ε-ball."
        )
    if spec.norm_arg:
        lines.append(f"Foolbox's `{spec.norm_arg}` is set from the benchmark's norm.")
    return "\n".join(lines)


#: Foolbox attack classes that take one gradient step
SINGLE_STEP = frozenset({"LinfFastGradientAttack", "L2FastGradientAttack"})
#: Foolbox attack classes that use no gradients (besides the noise attacks)
GRADIENT_FREE = frozenset(
    {
        "BoundaryAttack",
        "HopSkipJumpAttack",
        "GaussianBlurAttack",
        "InversionAttack",
        "L2ContrastReductionAttack",
        "BinarySearchContrastReductionAttack",
        "LinearSearchContrastReductionAttack",
    }
)


def make_attack(spec: Spec) -> type[FoolboxAttack]:
    """A robench attack class for one exported Foolbox attack."""
    qualname = spec.name.replace(".", "_")
    cls = type(
        qualname,
        (FoolboxAttack,),
        {
            "__doc__": _docstring(spec),
            "__module__": "robench_foolbox.attacks",
            "__qualname__": qualname,
            "name": spec.name,
            "norms": spec.norms,
            "minimizes": spec.mode == "minimization",
            "single_step": spec.fb_cls.__name__ in SINGLE_STEP,
            "gradient_free": spec.fb_cls.__name__ in GRADIENT_FREE
            or "Noise" in spec.fb_cls.__name__,
            "Params": _params(spec),
            "example_params": dict(spec.example_params),
            "foolbox_class": spec.fb_cls,
            "norm_arg": spec.norm_arg,
        },
    )
    return cls
