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
    """
    if evaluation.precision != "bf16":
        return evaluation, None
    if not bf16_native(device):
        used = evaluation.model_copy(update={"precision": "fp32"})
        kind = torch.device(device).type
        return used, f"precision 'bf16' asked, fp32 used: no native bfloat16 on this {kind}"
    if "channels_last" not in evaluation.model_fields_set and not evaluation.channels_last:
        used = evaluation.model_copy(update={"channels_last": True})
        return used, "precision 'bf16' with channels_last (the table left it unset)"
    return evaluation, None


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
