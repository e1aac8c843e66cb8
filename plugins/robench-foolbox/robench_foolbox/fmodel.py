"""Wrapping a PyTorch model for Foolbox: once per model, bounds and device, held weakly.

``foolbox.PyTorchModel`` keeps the module in a closure. Cached in a
:class:`weakref.WeakKeyDictionary` keyed on that very module, such a value would keep its key
alive forever; so after wrapping, the closure is replaced by one that reaches the module through
a weak reference, and a model that is no longer used elsewhere is freed with its wrapper.
"""

from __future__ import annotations

import weakref
from typing import Any

import foolbox
import torch
from torch import nn

_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], Any]] = (
    weakref.WeakKeyDictionary()
)


def _weak_forward(model: nn.Module):
    ref = weakref.ref(model)

    def forward(x: torch.Tensor) -> torch.Tensor:
        module = ref()
        if module is None:  # pragma: no cover - the cache entry goes with the model
            raise ReferenceError("the wrapped PyTorch model no longer exists")
        # as foolbox's own closure: the output needs a graph only if the input has one
        with torch.set_grad_enabled(x.requires_grad):
            return module(x)

    return forward


def foolbox_model(
    model: nn.Module, bounds: tuple[float, float], device: torch.device
) -> foolbox.PyTorchModel:
    """The ``foolbox.PyTorchModel`` for ``model`` with ``bounds`` on ``device`` (cached)."""
    per_model = _CACHE.get(model)
    if per_model is None:
        per_model = _CACHE[model] = {}
    key = (float(bounds[0]), float(bounds[1]), str(device))
    fmodel = per_model.get(key)
    if fmodel is None:
        fmodel = foolbox.PyTorchModel(model, bounds=(key[0], key[1]), device=device)
        if callable(getattr(fmodel, "_model", None)):  # foolbox 3.x: the forward callable
            fmodel._model = _weak_forward(model)
        per_model[key] = fmodel
    return fmodel


def cached_models() -> int:
    """How many PyTorch models currently have a cached Foolbox wrapper (for tests)."""
    return len(_CACHE)
