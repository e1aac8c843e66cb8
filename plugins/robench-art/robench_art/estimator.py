"""Wrapping a robench model in ART's ``PyTorchClassifier``, once per model.

ART feeds float32 arrays and expects float32 outputs, so the classifier wraps the model in
:class:`Float32Logits`, which casts the input to the model's dtype and returns float32 logits
(gradients flow through both casts). The wrapper holds the model through a weak reference:

- the cache (a :class:`weakref.WeakKeyDictionary` keyed by the model) never keeps a model alive;
- ART's calls to ``train()``/``eval()``/``to()`` on its wrapper cannot reach the model, whose
  mode robench's attack contract controls.

There is no preprocessing: normalisation lives inside robench models.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

import torch
from torch import nn

from robench.adapt import model_device_dtype


class Float32Logits(nn.Module):
    """Calls ``model`` (held weakly) on its input cast to ``dtype``; returns float32 logits
    (or their softmax, for ART attacks that require probabilities)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, probabilities: bool = False) -> None:
        super().__init__()
        self._model = weakref.ref(model)
        self.dtype = dtype
        self.probabilities = probabilities

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        model = self._model()
        if model is None:  # pragma: no cover - the cache drops entries of dead models
            raise RuntimeError("the model wrapped for ART no longer exists")
        logits = model(x.to(self.dtype)).to(torch.float32)
        return logits.softmax(dim=1) if self.probabilities else logits


#: model -> {(bounds, input shape, device, dtype, probabilities): PyTorchClassifier}
_CLASSIFIERS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, Any]] = weakref.WeakKeyDictionary()


def classifier_for(
    model: nn.Module, x: torch.Tensor, bounds: tuple[float, float], probabilities: bool = False
) -> Any:
    """ART's ``PyTorchClassifier`` for ``model`` with inputs shaped like ``x[0]`` in ``bounds``.

    Built once per model (and bounds, input shape, device, dtype, output kind) and reused: by
    every batch and every robench attack instance.
    """
    device, dtype = model_device_dtype(model, x)
    bounds = (float(bounds[0]), float(bounds[1]))
    key = (bounds, tuple(x.shape[1:]), str(device), dtype, probabilities)
    per_model = _CLASSIFIERS.setdefault(model, {})
    if key not in per_model:
        per_model[key] = _build(model, x, bounds, device, dtype, probabilities)
    return per_model[key]


def _build(
    model: nn.Module,
    x: torch.Tensor,
    bounds: tuple[float, float],
    device: torch.device,
    dtype: torch.dtype,
    probabilities: bool,
) -> Any:
    from art.estimators.classification import PyTorchClassifier

    wrapper = Float32Logits(model, dtype, probabilities)
    with torch.no_grad():
        nb_classes = int(wrapper(x[:1].to(device)).shape[1])
    gpu = device.type == "cuda"
    # ART puts a "gpu" classifier on torch.cuda.current_device(): make that the model's
    where = torch.cuda.device(device) if gpu else contextlib.nullcontext()
    with where:
        return PyTorchClassifier(
            model=wrapper,
            loss=nn.CrossEntropyLoss(),
            input_shape=tuple(x.shape[1:]),
            nb_classes=nb_classes,
            clip_values=bounds,
            channels_first=True,
            device_type="gpu" if gpu else "cpu",
        )
