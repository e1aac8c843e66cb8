"""ART's evasion attacks as robench attacks: one generated ``Attack`` subclass per ART class.

``art.<ClassName>`` takes ART's keyword parameters by name (``robench list --params``), less
those the adapter sets: the estimator, ``eps`` and ``norm`` (from the threat model),
``targeted`` (robench attacks are untargeted), ``verbose`` and ``summary_writer``. Two defaults
differ from ART's:

- ``batch_size`` defaults to the whole batch robench passes (ART's default of 32 is needlessly
  slow);
- ``eps_step`` (budgeted attacks) defaults to ε times ART's default ratio ``eps_step / eps``
  (1/3), so that the step scales with the budget instead of being a fixed 0.1.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import sys
import weakref
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field, create_model
from torch import nn

from robench.adapt import iteration_cost, params_from_signature
from robench.api import Attack, Params, ThreatModel
from robench_art.catalogue import BUDGETED, EXCLUDED, LINF_L2, MINIMISING, AttackSpec
from robench_art.estimator import classifier_for

ART_NORMS = {"linf": np.inf, "l2": 2}
_NORM_TEXT = {"linf": "L∞", "l2": "L2"}
#: set by the adapter, never a robench parameter
_ADAPTER_SET = ("eps", "norm", "targeted", "verbose", "summary_writer")
#: small values for the iteration counts of an attack found outside the catalogue
_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
_EMPTY = inspect.Parameter.empty
_SMALL = {
    "max_iter": 2,
    "nb_random_init": 1,
    "nb_restarts": 1,
    "steps": 2,
    "binary_search_steps": 1,
    "max_eval": 3,
    "init_eval": 2,
    "init_size": 3,
    "num_trial": 2,
    "query_limit": 3,
}


class ArtAttack(Attack):
    """Base of the generated ART attacks (not registered itself)."""

    #: the ART class adapted and its catalogue entry
    art_class: ClassVar[type]
    spec: ClassVar[AttackSpec]
    #: the parameters of ``art_class.__init__`` (read once, when the class is generated)
    art_signature: ClassVar[dict[str, inspect.Parameter]]

    def __init__(self, threat: ThreatModel, params: Params | None = None, /, **kwargs) -> None:
        super().__init__(threat, params, **kwargs)
        # model -> {id(classifier): (batch size it was built for, ART attack)}; built once per
        # robench attack instance and model, reused across batches
        self._built: weakref.WeakKeyDictionary[nn.Module, dict[int, tuple[int, Any]]] = (
            weakref.WeakKeyDictionary()
        )

    def cost(self) -> float:
        return iteration_cost(
            self.params, single_step=self.single_step, gradient_free=self.gradient_free
        )

    def art_kwargs(self, batch_size: int) -> dict[str, Any]:
        """ART's keyword arguments for this threat model and these parameters."""
        sig = self.art_signature
        kwargs = {name: getattr(self.params, name) for name in type(self.params).model_fields}
        if "batch_size" in kwargs and kwargs["batch_size"] is None:
            kwargs["batch_size"] = batch_size
        kwargs.update(self.spec.fixed)
        if "verbose" in sig:
            kwargs["verbose"] = False
        if "summary_writer" in sig:
            kwargs["summary_writer"] = False
        if "targeted" in sig and not self.spec.keep_targeted:
            kwargs["targeted"] = False
        if "norm" in sig:
            kwargs["norm"] = ART_NORMS[self.threat.norm]
        if not self.minimizes:
            kwargs["eps"] = self.threat.eps
            if "eps_step" in kwargs and kwargs["eps_step"] is None:
                kwargs["eps_step"] = self.threat.eps * _default_step_ratio(sig)
        if self.spec.adjust is not None:
            self.spec.adjust(kwargs)
        return kwargs

    def art_attack(self, model: nn.Module, x: torch.Tensor) -> Any:
        """The ART attack object for ``model``: built on first use, then reused."""
        classifier = classifier_for(model, x, self.threat.bounds, self.spec.probabilities)
        per_model = self._built.setdefault(model, {})
        built = per_model.get(id(classifier))
        # rebuilt only if a later batch is larger than the one it was built for (batch_size
        # None means "the whole batch")
        if built is None or (self._whole_batch() and len(x) > built[0]):
            attack = self.art_class(classifier, **self.art_kwargs(len(x)))
            if self.spec.built is not None:
                self.spec.built(attack)
            built = (len(x), attack)
            per_model[id(classifier)] = built
        return built[1]

    def _whole_batch(self) -> bool:
        """``batch_size`` is left to mean "the whole batch robench passes"."""
        fields = type(self.params).model_fields
        return "batch_size" in fields and self.params.batch_size is None

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        attack = self.art_attack(model, x)
        nb_classes = attack.estimator.nb_classes
        x32 = x.detach().to(torch.float32)
        labels = np.eye(nb_classes, dtype=np.float32)[y.detach().cpu().numpy()]
        with self.spec.context() if self.spec.context else contextlib.nullcontext():
            adv = attack.generate(x=x32.cpu().numpy(), y=labels)
        adv = torch.from_numpy(np.asarray(adv, dtype=np.float32)).to(x.device)
        # ART works in float32: keep the caller's exact values where ART changed nothing
        return torch.where(adv == x32, x, adv.to(x.dtype))


def _default_step_ratio(sig: dict[str, inspect.Parameter]) -> float:
    eps, step = sig["eps"].default, sig["eps_step"].default
    if isinstance(eps, int | float) and isinstance(step, int | float) and eps > 0 and step > 0:
        return float(step) / float(eps)
    return 1 / 3  # pragma: no cover


def _estimator_parameter(art_class: type) -> str:
    names = [n for n in inspect.signature(art_class.__init__).parameters if n != "self"]
    return names[0]


def applies_to_pytorch(art_class: type) -> bool:
    """Whether ``art_class``'s estimator requirements are met by ART's ``PyTorchClassifier``."""
    from art.estimators.classification import PyTorchClassifier

    reqs = getattr(art_class, "_estimator_requirements", None)
    if reqs is None:
        return False
    mro = PyTorchClassifier.__mro__
    for req in reqs:
        options = req if isinstance(req, tuple) else (req,)
        if not any(option in mro for option in options):
            return False
    return True


def classify(name: str, art_class: type) -> AttackSpec | None:
    """The catalogue entry for an ART attack class, one inferred for a class the catalogue
    does not know (it takes ``eps`` and needs nothing but the estimator), or None: skipped."""
    if name in EXCLUDED or not applies_to_pytorch(art_class):
        return None
    if name in BUDGETED or name in MINIMISING:
        spec = BUDGETED.get(name) or MINIMISING[name]
        return spec if all(importlib.util.find_spec(m) for m in spec.requires) else None
    if "TensorFlow" in name:
        return None
    params = [
        p
        for n, p in inspect.signature(art_class.__init__).parameters.items()
        if n != "self" and p.kind not in _VARIADIC
    ][1:]  # after the estimator
    names = {p.name for p in params}
    required = [p.name for p in params if p.default is _EMPTY and p.name not in _ADAPTER_SET]
    if "eps" not in names or required:
        return None
    defaults = {p.name: p.default for p in params}
    example = {k: v for k, v in _SMALL.items() if isinstance(defaults.get(k), int)}
    return AttackSpec(norms=LINF_L2 if "norm" in names else ("linf",), example=example)


def make_params(name: str, art_class: type, spec: AttackSpec) -> type[Params]:
    """The robench ``Params`` model for an ART attack class."""
    sig = inspect.signature(art_class.__init__).parameters
    skip = {_estimator_parameter(art_class), *_ADAPTER_SET, *spec.skip, *spec.fixed}
    if spec.keep_targeted:
        skip.discard("targeted")
    doc = f"Keyword parameters of ART's {name} (see ART's documentation)."
    base = params_from_signature(f"{name}Params", art_class.__init__, skip=skip, doc=doc)
    overrides: dict[str, Any] = {}
    if "batch_size" in sig and "batch_size" not in skip and spec.whole_batch:
        overrides["batch_size"] = (
            int | None,
            Field(None, ge=1, description="examples per ART batch; default: the whole batch"),
        )
    if not spec.minimizes and "eps_step" in sig:
        ratio = _default_step_ratio(dict(sig))
        overrides["eps_step"] = (
            float | None,
            Field(
                None,
                gt=0,
                allow_inf_nan=False,
                description=f"step size; default: ε × {ratio:.3g} (ART's eps_step / eps)",
            ),
        )
    if not overrides:
        return base
    model = create_model(f"{name}Params", __base__=base, **overrides)
    model.__doc__ = doc
    return model


#: ART attacks that take one gradient step
SINGLE_STEP = frozenset({"FastGradientMethod"})
#: ART attacks that use no gradients (score- and decision-based black-box attacks)
GRADIENT_FREE = frozenset(
    {"SquareAttack", "HopSkipJump", "BoundaryAttack", "GeoDA", "SignOPTAttack", "SimBA"}
    | {"ZooAttack"}
)


def make_attack_class(name: str, art_class: type, spec: AttackSpec) -> type[ArtAttack]:
    """A robench attack class named ``art.<name>`` running ART's ``art_class``."""
    norms = "/".join(_NORM_TEXT[n] for n in spec.norms)
    mode = "minimal perturbation, no fixed ε" if spec.minimizes else "fixed ε"
    art_doc = (inspect.getdoc(art_class) or "").strip().split("\n\n")[0]
    art_doc = " ".join(art_doc.split())
    doc = f"ART's {name} ({norms}, {mode})\n\n{art_doc}\n\nAdapted by robench-art."
    Params_ = make_params(name, art_class, spec)
    example = {k: v for k, v in spec.example.items() if k in Params_.model_fields}
    cls = type(
        f"Art{name}",
        (ArtAttack,),
        {
            "__doc__": doc,
            "__module__": __name__,
            "name": f"art.{name}",
            "norms": spec.norms,
            "minimizes": spec.minimizes,
            "single_step": name in SINGLE_STEP,
            "gradient_free": name in GRADIENT_FREE,
            "art_class": art_class,
            "art_signature": dict(inspect.signature(art_class.__init__).parameters),
            "spec": spec,
            "Params": Params_,
            "example_params": example,
        },
    )
    return cls


@functools.cache
def attack_classes() -> tuple[type[ArtAttack], ...]:
    """One robench attack class per applicable ART evasion attack (imports ART)."""
    import art.attacks.evasion as evasion
    from art.attacks.attack import EvasionAttack

    module = sys.modules[__name__]
    classes = []
    for name in sorted(dir(evasion)):
        art_class = getattr(evasion, name)
        if not (inspect.isclass(art_class) and issubclass(art_class, EvasionAttack)):
            continue
        spec = classify(name, art_class)
        if spec is None:
            continue
        cls = make_attack_class(name, art_class, spec)
        setattr(module, cls.__name__, cls)
        classes.append(cls)
    return tuple(classes)
