"""Reduced precision for the gradient passes of attacks, and where bfloat16 is fast.

An evaluation may let attacks compute their gradients in bfloat16 (``[evaluation] precision =
"bf16"``, or ``evaluate(..., precision="bf16")``): each gradient pass of the native attacks
then runs under :func:`torch.autocast`, several times cheaper on hardware with native bfloat16
(GPUs with bf16 tensor cores; CPUs with AVX-512 BF16 or AMX). Nothing is decided in bfloat16:
robench scores every adversarial example with the model in its own precision, and PGD's early
stop only takes the reduced-precision logits as a nomination, which a full-precision pass over
the nominated examples decides (:func:`reduced`, :func:`full_precision`). A less exact gradient
can only make an attack weaker, never make robust accuracy look lower than it is;
``benchmarks/speed.py`` measures how much weaker.

Third-party gradient attacks honour the setting by running their gradient passes under
:func:`gradient_autocast`; attacks that do not (the ART and Foolbox adapters) run in full
precision."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from contextvars import ContextVar

import torch
from torch import nn

from robench.specs import Precision  # ``fp32``: the model's own precision; ``bf16``: autocast

_ATTACK_DTYPE: ContextVar[torch.dtype | None] = ContextVar("robench_attack_dtype", default=None)


def bf16_native(device: torch.device | str) -> bool:
    """Whether ``device`` computes in bfloat16 natively (else autocast emulates it, slowly)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def warn_if_slow(precision: Precision, device: torch.device | str, what: str) -> None:
    """Warn when bfloat16 was asked for on a device without native support."""
    if precision == "bf16" and not bf16_native(device):
        warnings.warn(
            f"{what}: precision 'bf16' on {torch.device(device).type} without native bfloat16 "
            "support is emulated and slower than fp32",
            RuntimeWarning,
            stacklevel=3,
        )


def fastest(evaluation, device: torch.device | str):
    """The evaluation settings that run ``evaluation`` fast on ``device``, and a note saying
    what changed (None: nothing), for an ``[evaluation]`` table (:class:`robench.schema.
    EvaluationConfig`):

    - ``precision = "bf16"`` on a device without native bfloat16 runs in fp32: emulated bf16 is
      slower than fp32, and the outcome of an fp32 run is at least as strong;
    - ``precision = "bf16"`` brings ``channels_last`` with it (unless the table sets it): bf16
      convolutions pay in that memory format; without it they can be slower than fp32.

    ``channels_last`` left unset otherwise is decided per model (:func:`uses_channels_last`).
    """
    if evaluation.precision != "bf16":
        return evaluation, None
    if not bf16_native(device):
        used = evaluation.model_copy(update={"precision": "fp32"})
        kind = torch.device(device).type
        return used, f"precision 'bf16' asked, fp32 used: no native bfloat16 on this {kind}"
    if evaluation.channels_last is None:
        used = evaluation.model_copy(update={"channels_last": True})
        return used, "precision 'bf16' with channels_last (the table left it unset)"
    return evaluation, None


def channels_last_pays(model: nn.Module, x: torch.Tensor) -> bool:
    """The rule for ``channels_last`` left unset: on a CPU, a model with 2-d convolutions on
    4-d images is evaluated in channels_last memory format, where oneDNN's convolutions and
    max-pooling are faster (``benchmarks/chunking.py --compare layout``: native attacks 1.1–1.35×
    faster on the NSL and CIFAR CNNs, one thread of a busy 2-core AMD EPYC). On other devices
    the layout stays as given (fp32 there is not measured; ``precision = "bf16"`` brings
    channels_last with it, :func:`fastest`).

    Memory format changes the order of floating-point sums, not what is computed: outcomes
    may differ in the last bits, as with another thread count, so it is not part of a cell's
    key; the provenance records the layout each model was evaluated in."""
    return (
        x.dim() == 4
        and x.device.type == "cpu"
        and any(isinstance(m, nn.Conv2d) for m in model.modules())
    )


def uses_channels_last(channels_last: bool | None, model: nn.Module, x: torch.Tensor) -> bool:
    """Whether an evaluation with the setting ``channels_last`` (None: unset) runs ``model`` on
    ``x`` in channels_last memory format (4-d ``x`` only)."""
    use = channels_last if channels_last is not None else channels_last_pays(model, x)
    return bool(use) and x.dim() == 4


@contextlib.contextmanager
def memory_format(
    model: nn.Module, x: torch.Tensor, channels_last: bool | None
) -> Iterator[torch.Tensor]:
    """Inside the block, ``model`` is in the memory format the evaluation runs in, and the
    block gets ``x`` in it: channels_last when ``channels_last`` is True (4-d ``x`` only), the
    given layout when False, and by :func:`channels_last_pays` when None. On leaving, every
    parameter and buffer of ``model`` is back in its own layout (values are never changed)."""
    if not uses_channels_last(channels_last, model, x):
        yield x
        return
    saved = [
        (module, kind, name, t.stride())
        for module in model.modules()
        for kind in ("_parameters", "_buffers")
        for name, t in getattr(module, kind).items()
        if t is not None
    ]
    model.to(memory_format=torch.channels_last)
    try:
        yield x.contiguous(memory_format=torch.channels_last)
    finally:
        for module, kind, name, stride in saved:
            t = getattr(module, kind)[name]
            if t.stride() != stride:
                back = torch.empty_strided(t.shape, stride, dtype=t.dtype, device=t.device)
                back.copy_(t.detach())
                if kind == "_parameters":
                    t.data = back
                else:
                    module._buffers[name] = back


@contextlib.contextmanager
def attack_precision(precision: Precision) -> Iterator[None]:
    """Inside the block, native attacks compute their gradients in ``precision``."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    token = _ATTACK_DTYPE.set(torch.bfloat16 if precision == "bf16" else None)
    try:
        yield
    finally:
        _ATTACK_DTYPE.reset(token)


def gradient_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """The autocast an attack's gradient pass on ``device_type`` runs under: bfloat16 inside
    :func:`attack_precision` ``("bf16")``, else none (an enclosing autocast, such as mixed-
    precision adversarial training's, still applies)."""
    dtype = _ATTACK_DTYPE.get()
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def reduced(device_type: str) -> bool:
    """Whether gradient passes on ``device_type`` run in reduced precision here (this module's
    setting or an enclosing autocast): decisions then need a full-precision check."""
    return _ATTACK_DTYPE.get() is not None or torch.is_autocast_enabled(device_type)


def full_precision(device_type: str) -> contextlib.AbstractContextManager:
    """Suspends any autocast on ``device_type``: the model runs in its own precision."""
    return torch.autocast(device_type, enabled=False)
