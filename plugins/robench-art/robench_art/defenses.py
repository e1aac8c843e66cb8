"""ART's image preprocessing defences as robench defenses.

``art.<ClassName>`` trains the model through the preprocessor and returns a module that applies
the preprocessor to its input, then the model. What an attack differentiating through it sees
is chosen by ``gradient``:

- ``"true"`` (default): the operation's true input gradient. Where ART has a differentiable
  operation robench computes it in PyTorch (spatial smoothing: a median filter identical to
  ART's SciPy one, by autograd); where the operation is piecewise constant (JPEG quantisation,
  bit-depth reduction) it is exactly zero. That zero gradient is the defence's real gradient
  masking, for robustness checks to catch, not something the adapter hides.
- ``"bpda"``: ART's ``estimate_gradient`` in the backward pass, the straight-through (BPDA)
  estimate of Athalye et al. 2018: the adaptive-attack variant of the same defence. Its forward
  pass is the same.
"""

from __future__ import annotations

import functools
import inspect
import sys
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, create_model
from torch import nn

from robench.adapt import params_from_signature
from robench.api import Data, Defense, Params, TrainContext
from robench_art.catalogue import DEFENCES, DefenceSpec

Gradient = Literal["true", "bpda"]
#: set by the adapter, never a robench parameter
_ADAPTER_SET = ("clip_values", "apply_fit", "apply_predict", "verbose")


class _NumpyPreprocess(torch.autograd.Function):
    """ART's numpy preprocessor in forward; zero or ART's gradient estimate in backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, preprocessor: Any, bpda: bool) -> torch.Tensor:
        x_np = x.detach().cpu().numpy()
        out, _ = preprocessor(x_np)
        ctx.preprocessor, ctx.bpda = preprocessor, bpda
        if bpda:
            ctx.save_for_backward(x)
        return torch.from_numpy(np.ascontiguousarray(out)).to(device=x.device, dtype=x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        if not ctx.bpda:  # the true gradient of a piecewise-constant operation
            return torch.zeros_like(grad), None, None
        (x,) = ctx.saved_tensors
        estimate = ctx.preprocessor.estimate_gradient(
            x.detach().cpu().numpy(), grad.detach().cpu().numpy()
        )
        return torch.from_numpy(np.ascontiguousarray(estimate)).to(grad), None, None


def _reflect_index(n: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Indices of SciPy's ``mode="reflect"`` padding (d c b a | a b c d | d c b a)."""
    i = torch.arange(-before, n + after, device=device) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def median_filter(x: torch.Tensor, window: int) -> torch.Tensor:
    """Per-channel ``window``×``window`` median of N×C×H×W ``x``, differentiable.

    The same as ``scipy.ndimage.median_filter(x, size=(1, 1, window, window), mode="reflect")``
    (what ART's ``SpatialSmoothing`` computes): for an even window the centre is the lower right
    of the middle and the median the larger of the two middle values.
    """
    n, c, h, w = x.shape
    before = window // 2
    after = window - 1 - before
    rows = _reflect_index(h, before, after, x.device)
    cols = _reflect_index(w, before, after, x.device)
    padded = x.index_select(2, rows).index_select(3, cols)
    patches = padded.unfold(2, window, 1).unfold(3, window, 1).reshape(n, c, h, w, -1)
    return patches.kthvalue(window * window // 2 + 1, dim=-1).values


class Preprocessed(nn.Module):
    """``model(preprocess(x))``: an ART preprocessor in front of a model."""

    def __init__(
        self,
        model: nn.Module,
        preprocessor: Any,
        gradient: Gradient,
        exact: str,
        clip: tuple[float, float] | None,
    ) -> None:
        super().__init__()
        self.model = model
        self.preprocessor = preprocessor  # an ART object: no parameters, no state to move
        self.gradient = gradient
        self.exact = exact
        self.clip = clip

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        if self.gradient == "true" and self.exact == "median":
            out = median_filter(x, self.preprocessor.window_size)
            return out.clamp(*self.clip) if self.clip is not None else out
        return _NumpyPreprocess.apply(x, self.preprocessor, self.gradient == "bpda")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(x))

    def extra_repr(self) -> str:
        return f"preprocessor={type(self.preprocessor).__name__}, gradient={self.gradient!r}"


class ArtDefense(Defense):
    """Base of the generated ART preprocessing defenses (not registered itself)."""

    art_class: ClassVar[type]
    spec: ClassVar[DefenceSpec]

    def preprocessor(self, bounds: tuple[float, float]) -> Any:
        """ART's preprocessor with these parameters, clipping to ``bounds``."""
        sig = inspect.signature(self.art_class.__init__).parameters
        kwargs = {n: getattr(self.params, n) for n in type(self.params).model_fields}
        kwargs.pop("gradient")
        kwargs.update(self.spec.fixed)
        if "clip_values" in sig:
            kwargs["clip_values"] = (float(bounds[0]), float(bounds[1]))
        return self.art_class(**kwargs)

    def wrap(self, model: nn.Module, bounds: tuple[float, float]) -> Preprocessed:
        """``model`` behind this defense's preprocessor (untrained)."""
        bounds = (float(bounds[0]), float(bounds[1]))
        return Preprocessed(
            model, self.preprocessor(bounds), self.params.gradient, self.spec.gradient, bounds
        )

    def fit(self, model: nn.Module, train: Data, ctx: TrainContext) -> nn.Module:
        wrapped = self.wrap(model, ctx.info.bounds)
        return ctx.train(wrapped, train, lambda m, x, y: ctx.cross_entropy(m(x), y))

    def restore(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        return self.wrap(model, ctx.info.bounds)


def make_params(name: str, art_class: type, spec: DefenceSpec) -> type[Params]:
    skip = {*_ADAPTER_SET, *spec.fixed}
    doc = f"Keyword parameters of ART's {name}, and the gradient attacks see."
    base = params_from_signature(f"{name}Params", art_class.__init__, skip=skip, doc=doc)
    model = create_model(
        f"{name}Params",
        __base__=base,
        gradient=(
            Gradient,
            Field(
                "true",
                description="input gradient: 'true' (exact; zero where piecewise constant) or "
                "'bpda' (ART's straight-through estimate, for adaptive attacks)",
            ),
        ),
    )
    model.__doc__ = doc
    return model


def make_defense_class(name: str, art_class: type, spec: DefenceSpec) -> type[ArtDefense]:
    true = {"zero": "zero: piecewise constant", "median": "by autograd through a median filter"}
    art_doc = " ".join((inspect.getdoc(art_class) or "").strip().split("\n\n")[0].split())
    doc = (
        f"ART's {name} preprocessing, trained through; true input gradient "
        f"({true[spec.gradient]}) or BPDA\n\n{art_doc}\n\nAdapted by robench-art."
    )
    return type(
        f"Art{name}",
        (ArtDefense,),
        {
            "__doc__": doc,
            "__module__": __name__,
            "name": f"art.{name}",
            "art_class": art_class,
            "spec": spec,
            "Params": make_params(name, art_class, spec),
            "example_params": dict(spec.example),
        },
    )


@functools.cache
def defense_classes() -> tuple[type[ArtDefense], ...]:
    """One robench defense class per catalogued ART preprocessing defence (imports ART)."""
    import art.defences.preprocessor as preprocessor

    module = sys.modules[__name__]
    classes = []
    for name, spec in sorted(DEFENCES.items()):
        art_class = getattr(preprocessor, name, None)
        if art_class is None:  # pragma: no cover - not in this ART version
            continue
        cls = make_defense_class(name, art_class, spec)
        setattr(module, cls.__name__, cls)
        classes.append(cls)
    return tuple(classes)
