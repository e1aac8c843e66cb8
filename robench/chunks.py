"""Attack passes in chunks on the CPU, where a smaller batch runs faster per example.

On a CPU a convolutional network's forward pass slows down per example once a batch's
activations outgrow the caches and the allocator's reuse (measured on this project's 2-core
AMD EPYC, one thread, the NSL CNN of ``benchmarks/mnist.toml``: 540 µs per example at 500
examples against 335 at 128–256; the CIFAR CNN of ``benchmarks/cifar.toml``: 1,920 against 844
at 64). An evaluation batch is sized for the device's memory, so the native attacks run each
pass, on a CPU, in chunks whose activations stay within :data:`CPU_BUDGET_BYTES`:

- the chunk size is a rule, not a timing (so a run is reproducible): the activations per
  example are measured once per model and input shape (hooks on the model's leaf modules
  count their outputs during its first pass, which runs on the whole batch), and a chunk
  holds the largest power of two of examples within the budget, at least :data:`MIN_CHUNK`;
  a batch splits into equal chunks, none larger (so no small remainder);
- each example's logits and input gradient are its own (a model in eval mode computes every
  example independently), so chunking changes no result beyond the float rounding a
  different batch size may bring (none on this project's CPUs for chunks of 64 and more);
- on other devices (GPUs want large batches), for batches of at most one chunk and for a
  model in training mode (a defense's inner attack, where batch norm's statistics depend on
  the batch), a pass runs on the whole batch, as before.

``ROBENCH_CPU_CHUNK_MB`` sets the budget in MiB; ``0`` turns chunking off.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Callable, Iterator

import torch
from torch import nn

#: Activation bytes a chunk may hold on the CPU (``ROBENCH_CPU_CHUNK_MB`` overrides it).
CPU_BUDGET_BYTES = 64 * 2**20
#: Smallest chunk: below it, per-pass overhead outweighs the cache's gain.
MIN_CHUNK = 64

_footprints: weakref.WeakKeyDictionary[nn.Module, dict[tuple, int]] = weakref.WeakKeyDictionary()


def budget_bytes() -> int:
    """The chunk budget: ``ROBENCH_CPU_CHUNK_MB`` MiB when set (0: no chunking), else the
    default."""
    raw = os.environ.get("ROBENCH_CPU_CHUNK_MB", "").strip()
    if not raw:
        return CPU_BUDGET_BYTES
    try:
        mib = float(raw)
    except ValueError:
        message = f"ROBENCH_CPU_CHUNK_MB={raw!r}: expected a number of MiB (0: off)"
        raise ValueError(message) from None
    return max(int(mib * 2**20), 0)


def footprint(model: nn.Module, x: torch.Tensor) -> int | None:
    """Activation bytes per example of ``model`` on inputs like ``x`` (the outputs of its leaf
    modules, at ``x``'s element size): None until a pass of :func:`forward` or
    :func:`gradient_passes` has measured it (0 for a model without leaf modules)."""
    return _footprints.get(model, {}).get(_key(x))


def _key(x: torch.Tensor) -> tuple:
    return tuple(x.shape[1:]), x.dtype


@contextlib.contextmanager
def _measuring(model: nn.Module, x: torch.Tensor) -> Iterator[None]:
    """Record :func:`footprint` from the pass on the whole batch ``x`` run inside."""
    elements = 0

    def count(_module, _inputs, output) -> None:
        nonlocal elements
        if isinstance(output, torch.Tensor):
            elements += output.numel()

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
    _footprints.setdefault(model, {})[_key(x)] = elements * x.element_size() // max(len(x), 1)


def chunk_size(model: nn.Module, x: torch.Tensor) -> int | None:
    """Examples per chunk for passes of ``model`` on batches like ``x``: None for the whole
    batch (not on a CPU, chunking off, a model in training mode, whose batch statistics a
    chunk would change, a footprint not measured yet, or a model without leaf modules)."""
    if x.device.type != "cpu" or len(x) <= MIN_CHUNK or model.training:
        return None
    budget = budget_bytes()
    per_example = footprint(model, x)
    if not budget or not per_example:
        return None
    fits = max(budget // per_example, 1)
    return max(1 << (fits.bit_length() - 1), MIN_CHUNK)


def _parts(
    model: nn.Module, x: torch.Tensor
) -> tuple[list[slice], contextlib.AbstractContextManager]:
    """The chunks of ``x``'s rows, and the context the pass runs in: the first pass of a model
    on the CPU runs on the whole batch and measures the model's footprint."""
    if x.device.type == "cpu" and footprint(model, x) is None and len(x):
        return [slice(None)], _measuring(model, x)
    return list(pieces(len(x), chunk_size(model, x))), contextlib.nullcontext()


def pieces(n: int, chunk: int | None) -> Iterator[slice]:
    """``n`` rows as consecutive slices of equal size (±1), none above ``chunk``."""
    count = 1 if chunk is None or n <= chunk else -(-n // chunk)
    size, extra = divmod(n, count)
    start = 0
    for i in range(count):
        stop = start + size + (i < extra)
        yield slice(start, stop)
        start = stop


def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)``, in chunks on the CPU (:func:`chunk_size`); call under ``torch.no_grad()``."""
    parts, context = _parts(model, x)
    with context:
        if len(parts) == 1:
            return model(x)
        return torch.cat([model(x[s]) for s in parts])


def gradient_passes(
    model: nn.Module,
    x: torch.Tensor,
    one: Callable[[slice], tuple[torch.Tensor, ...]],
) -> tuple[torch.Tensor, ...]:
    """``one(rows)`` on each chunk of ``x``'s rows (:func:`chunk_size`), its outputs (tensors
    with one row per example) concatenated: a gradient pass, chunked."""
    parts, context = _parts(model, x)
    with context:
        if len(parts) == 1:
            return one(slice(None))
        results = [one(s) for s in parts]
    return tuple(torch.cat(col) for col in zip(*results, strict=True))
