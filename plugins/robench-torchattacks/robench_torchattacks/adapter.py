"""The robench attack classes generated from the catalogue, and how they run torchattacks.

:func:`make_attack` turns one :class:`~robench_torchattacks.catalogue.Spec` into a subclass of
:class:`TorchattacksAttack` (a :class:`robench.api.Attack`) without importing torchattacks.
``run`` builds the torchattacks object for the model at hand and calls it:

- torchattacks works on float32 images in [0, 1]: a model in another precision or a dataset
  with other bounds is attacked through :class:`LibraryView`, which maps [0, 1] onto the
  bounds and casts to the model's dtype (ε, the step and the parameters in image units are
  converted alike); the result is mapped back, and pixels torchattacks left unchanged keep
  the caller's exact values;
- the model already carries its normalisation, so torchattacks' own is never set;
- attacks that reseed torch's generator with their ``seed`` (APGD, APGD-T, FAB, Square,
  AutoAttack) run inside :func:`torch.random.fork_rng`, with a seed drawn from robench's
  seeded generator unless the benchmark sets one: results are reproducible per cell and the
  generator robench seeded is left alone;
- ``n_classes`` (APGD-T, FAB, AutoAttack) comes from the model's output.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
from typing import Any, ClassVar

import torch
from pydantic import Field, create_model
from torch import nn

from robench.api import Attack, ConfigError, DatasetInfo, Params, model_device_dtype
from robench_torchattacks.catalogue import Spec

_NORM_ARG = {"linf": "Linf", "l2": "L2"}
_SYMBOL = {"linf": "L∞", "l2": "L2"}
#: parameters the adapter sets itself, never taken from a benchmark
SET_BY_ADAPTER = ("model", "eps", "max_epsilon", "norm", "n_classes", "verbose")


@functools.cache
def torchattacks_module() -> Any:
    """torchattacks, imported on first use (about a second)."""
    return importlib.import_module("torchattacks")


class LibraryView(nn.Module):
    """``model`` as torchattacks expects it: float32 images in [0, 1] in, float32 logits out.

    ``u ∈ [0, 1]`` is mapped to ``low + (high − low)·u`` in the model's dtype. In eval mode
    from the start, so that torchattacks, which restores a model's train mode after an attack
    if it found it in train mode, finds it in eval mode.
    """

    def __init__(self, model: nn.Module, bounds: tuple[float, float], dtype: torch.dtype):
        super().__init__()
        self.model = model
        self.low, self.span = float(bounds[0]), float(bounds[1] - bounds[0])
        self.dtype = dtype
        self.train(False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        x = u.to(self.dtype)
        if (self.low, self.span) != (0.0, 1.0):
            x = x * self.span + self.low
        return self.model(x).float()


class TorchattacksAttack(Attack):
    """Base of the generated torchattacks adapters (not registered itself)."""

    #: the catalogue entry adapted
    spec: ClassVar[Spec]

    def cost(self) -> float:
        passes = self.spec.cost(self.params.model_dump())
        return passes / 2 if self.gradient_free else passes  # queries: forward passes only

    @classmethod
    def check(cls, params: Params, info: DatasetInfo) -> None:
        """Refuse a dataset the attack cannot work on: grey images for an RGB-only attack,
        too few classes for a DLR loss (3; 4 for the targeted one)."""
        if cls.spec.rgb_only and info.shape[0] != 3:
            raise ConfigError(
                f"{cls.name} works on RGB images only (its kernels are built for 3 channels); "
                f"dataset {info.name!r} has {info.shape[0]}"
            )
        fewest = cls.spec.min_classes(params.model_dump())
        if info.num_classes < fewest:
            raise ConfigError(
                f"{cls.name} needs at least {fewest} classes with these parameters (torchattacks' "
                f"DLR losses); dataset {info.name!r} has {info.num_classes}"
            )

    def library_kwargs(self, n_classes: int) -> dict[str, Any]:
        """The torchattacks constructor's keyword arguments (but the model), on [0, 1]."""
        spec, values = self.spec, self.params.model_dump()
        span = self.threat.bounds[1] - self.threat.bounds[0]
        if spec.step_ratio is not None and values["alpha"] is None:
            values["alpha"] = spec.step_ratio * self.threat.eps
        for name in (*spec.image_units, "alpha"):
            if name in values:
                values[name] /= span
        if spec.seeded and values.get("seed") is None:
            values["seed"] = int(torch.randint(0, 2**31 - 1, ()))  # robench's seeded generator
        if spec.eps_arg is not None:
            values[spec.eps_arg] = self.threat.eps / span
        if spec.norm_arg:
            values["norm"] = _NORM_ARG[self.threat.norm]
        if spec.n_classes:
            values["n_classes"] = n_classes
        return values

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.spec.rgb_only and x.shape[1] != 3:
            raise ValueError(f"{self.name} works on RGB images only, got {x.shape[1]} channel(s)")
        device, dtype = model_device_dtype(model, x)
        low, high = self.threat.bounds
        view: nn.Module = model
        if dtype != torch.float32 or (low, high) != (0.0, 1.0):
            view = LibraryView(model, (low, high), dtype)
        u = ((x.to(device) - low) / (high - low)).to(torch.float32)
        labels = y.to(device=device, dtype=torch.long)
        n_classes = 0
        if self.spec.n_classes:
            with torch.no_grad():
                n_classes = int(view(u[:1]).shape[1])
        kwargs = self.library_kwargs(n_classes)
        library_class = getattr(torchattacks_module(), self.spec.name)
        seeded = torch.random.fork_rng(devices=_cuda_devices()) if self.spec.seeded else None
        with seeded or contextlib.nullcontext():
            with contextlib.redirect_stdout(io.StringIO()):  # its notices (no model parameters)
                attack = library_class(view, **kwargs)
            attack.set_device(device)
            u_adv = attack(u, labels).detach()
        u_adv = u_adv.to(device=x.device, dtype=torch.float32)
        x_adv = (u_adv.to(x.dtype) * (high - low) + low) if view is not model else u_adv
        return torch.where(u_adv == u.to(x.device), x, x_adv.to(x.dtype))


def _cuda_devices() -> list[int]:
    """Every CUDA device: torchattacks reseeds the current one, whichever the model is on."""
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def make_params(spec: Spec) -> type[Params]:
    """The robench ``Params`` model: the torchattacks keywords of ``spec``, with constraints.
    A step ``alpha`` defaults to ε times torchattacks' ratio; a ``seed`` to one drawn per call."""
    fields: dict[str, Any] = {}
    for name, (fld, default) in spec.params.items():
        annotation, description = fld.annotation, fld.description
        if name == "alpha":
            annotation, default = float | None, None
            description += f" (default: ε × {spec.step_ratio:.4g}, torchattacks' ratio)"
        elif name == "seed":
            annotation, default = int | None, None
        fields[name] = (annotation, Field(default, description=description, **fld.constraints))
    model = create_model(
        "Params", __base__=Params, __module__="robench_torchattacks.attacks", **fields
    )
    model.__qualname__ = f"torchattacks_{spec.name}.Params"  # found by pickle, as the class is
    model.__doc__ = f"Keyword parameters of torchattacks.{spec.name}."
    return model


def _docstring(spec: Spec) -> str:
    norms = " or ".join(_SYMBOL[n] for n in spec.norms)
    if spec.kind == "budget":
        mode = "ε-bounded"
        how = f"torchattacks' {spec.eps_arg} is the benchmark's ε."
    else:
        mode = "minimisation"
        how = "Finds the smallest adversarial it can; robench scores it at every ε by projection."
    lines = [f"{spec.summary} ({norms}, {mode})", "", how]
    if spec.rgb_only:
        lines.append("RGB images only.")
    return "\n".join(lines) + "\n\nAdapted by robench-torchattacks."


def make_attack(spec: Spec) -> type[TorchattacksAttack]:
    """The robench attack class ``torchattacks.<name>`` for one catalogue entry."""
    params = make_params(spec)
    qualname = f"torchattacks_{spec.name}"
    return type(
        qualname,
        (TorchattacksAttack,),
        {
            "__doc__": _docstring(spec),
            "__module__": "robench_torchattacks.attacks",
            "__qualname__": qualname,
            "name": f"torchattacks.{spec.name}",
            "norms": spec.norms,
            "minimizes": spec.kind == "minimisation",
            "single_step": spec.single_step,
            "gradient_free": spec.gradient_free,
            "spec": spec,
            "Params": params,
            "example_params": dict(spec.example),
        },
    )


__all__ = ["LibraryView", "TorchattacksAttack", "make_attack", "make_params"]
