"""Training settings and the shared training loop that built-in defenses use.

Third-party defenses may reuse :func:`train_loop` with a loss of their own.

The loop is written for GPUs and runs unchanged on the CPU: the training set moves to the device
once (as uint8 when its images are 8-bit), shuffling and augmentation draw random numbers on the
device, and the loop never waits for the device between steps. Three options speed it up on a
GPU: ``precision = "bf16"`` (autocast; also fast on CPUs with native bfloat16),
``channels_last`` and ``compile`` (falls back to eager mode where torch.compile fails).

Given an :class:`robench.resume.EpochCheckpoints`, the loop saves its whole state after every
finished epoch and, when a saved state of the same training cell exists, resumes after its last
finished epoch: on the CPU the model ends bitwise equal to one trained without interruption. A
defense with a training loop of its own gets no per-epoch resume.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from robench import faults, precision
from robench.dataset import Data
from robench.model import model_device_dtype
from robench.precision import Precision

if TYPE_CHECKING:  # pragma: no cover
    from robench.resume import EpochCheckpoints

#: ``loss_fn(model, x, y)``: the loss of one training batch. With ``compile`` it is also called
#: once per batch size in the warm-up, whose effects on the model and the RNGs are undone.
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
ProgressFn = Callable[[int, int, float], None]


class TrainingConfig(BaseModel):
    """How a defense trains its model (the ``[training]`` table, overridable per defense)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(5, ge=1, description="passes over the training set")
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0, description="(peak) learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "cosine", "step", "cyclic"] = "constant"
    warmup: float = Field(
        0.0, ge=0, lt=1, description="fraction of training spent ramping the lr up from 0"
    )
    milestones: tuple[float, ...] = Field(
        (0.5, 0.75), description="'step' schedule: fractions of training where lr *= gamma"
    )
    gamma: float = Field(0.1, gt=0, le=1)
    augment: Literal["none", "crop-flip"] = "none"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    train_examples: int | None = Field(
        None, ge=1, description="train on the first N examples of a seeded shuffle (all: unset)"
    )
    precision: Precision = Field(
        "fp32",
        description="'bf16': bfloat16 autocast around each training batch's forward and loss, "
        "the inner attack's crafting included (fast on GPUs and on CPUs with native bf16; "
        "elsewhere emulated and slow, with a warning)",
    )
    channels_last: bool = Field(
        False,
        description="model and batches in channels_last memory format (faster convolutions on "
        "GPUs; the trained model keeps it)",
    )
    compile: bool = Field(
        False,
        description="train through torch.compile(model), compiled by a warm-up step before the "
        "first epoch (not counted in any epoch); falls back to eager training, with a warning, "
        "where compiling fails",
    )

    @model_validator(mode="after")
    def _check(self) -> TrainingConfig:
        if any(not 0 < m < 1 for m in self.milestones):
            raise ValueError("milestones must be fractions of training strictly between 0 and 1")
        return self

    @property
    def effective_warmup(self) -> float:
        """``warmup``, except that 'cyclic' ramps up for 2/5 of training when it is unset."""
        if self.schedule == "cyclic" and self.warmup == 0.0:
            return 0.4  # Fast AT's one-cycle schedule (Wong et al. 2020)
        return self.warmup


def lr_factor(cfg: TrainingConfig, step: int, total: int) -> float:
    """The learning-rate multiplier at optimizer step ``step`` of ``total``."""
    t = step / max(total, 1)
    warmup = cfg.effective_warmup
    if warmup > 0 and t < warmup:
        return (step + 1) / max(warmup * total, 1)
    rest = (t - warmup) / max(1 - warmup, 1e-12)
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * rest))
    if cfg.schedule == "cyclic":
        return max(0.0, 1 - rest)
    return cfg.gamma ** sum(t >= m for m in cfg.milestones)


def make_optimizer(params, cfg: TrainingConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding ``pad`` and random horizontal flip of a batch N×C×H×W.

    The offsets and flips are drawn from ``generator``, which must be on x's device (e.g.
    ``torch.Generator(device=x.device).manual_seed(seed)``), so nothing crosses between host and
    device. Float and uint8 images alike (zero padding commutes with the ``/255`` conversion).
    """
    dev = x.device
    if generator.device.type != dev.type:
        raise ValueError(
            f"crop_flip: the generator is on {generator.device} but the images are on {dev}; "
            "pass a torch.Generator(device=x.device)"
        )
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)
    rows = (dy.view(n, 1) + torch.arange(h, device=dev).view(1, h)).view(n, 1, h, 1)
    cols = (dx.view(n, 1) + torch.arange(w, device=dev).view(1, w)).view(n, 1, 1, w)
    batch = torch.arange(n, device=dev).view(n, 1, 1, 1)
    chan = torch.arange(x.shape[1], device=dev).view(1, -1, 1, 1)
    out = padded[batch, chan, rows, cols]
    flip = torch.rand(n, generator=generator, device=dev) < 0.5
    return torch.where(flip.view(n, 1, 1, 1), out.flip(3), out)


#: how many values :func:`as_uint8` checks at a time (16 MiB of float32)
_CHUNK = 1 << 22


def as_uint8(x: torch.Tensor, tol: float = 1e-6) -> torch.Tensor | None:
    """``round(255·x)`` as uint8 when every value of ``x`` is within ``tol`` of some k/255,
    k = 0 … 255 (8-bit images in [0, 1]); else None.

    One pass over ``x`` in chunks, on x's own device (the CPU, for a dataset as loaded). The
    tolerance is in pixel units: float32 holds k/255 only to about 3·10⁻⁸, so ``255·x`` itself
    can be up to 8·10⁻⁶ away from k.
    """
    if not x.is_floating_point():
        return None
    flat = x.detach().reshape(-1)
    out = torch.empty(flat.shape, dtype=torch.uint8, device=x.device)
    for start in range(0, flat.numel(), _CHUNK):
        chunk = flat[start : start + _CHUNK].float()
        q = chunk.mul(255).round_()
        lo, hi = torch.aminmax(q)
        if lo < 0 or hi > 255 or q.div(255).sub_(chunk).abs_().max() > tol:
            return None
        out[start : start + _CHUNK] = q
    return out.view(x.shape)


class DeviceImages:
    """A training set's images, moved once to the training device: as uint8 when they are 8-bit
    (a quarter of float32's memory and bandwidth), else in the model's ``dtype``.

    :meth:`take` gathers a batch in the stored format (augment it there); :meth:`as_input`
    turns it into the model's input: ``dtype`` (``x.float() / 255`` for uint8, which gives the
    same float32 values a loader's ``uint8 / 255`` gives), channels_last if asked.
    """

    def __init__(
        self, x: torch.Tensor, device: torch.device, dtype: torch.dtype, channels_last: bool
    ) -> None:
        q = as_uint8(x)
        self.data = q.to(device) if q is not None else x.to(device=device, dtype=dtype)
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.preserve_format

    @property
    def is_uint8(self) -> bool:
        return self.data.dtype == torch.uint8

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """The examples at ``idx`` (a tensor on the device), in the stored format."""
        return self.data.index_select(0, idx)

    def as_input(self, xb: torch.Tensor) -> torch.Tensor:
        """A stored-format batch as the model's input."""
        if self.is_uint8:
            return xb.to(dtype=self.dtype, memory_format=self.memory_format).div_(255)
        return xb.to(memory_format=self.memory_format)


def _rng_devices(device: torch.device) -> list[int]:
    """The CUDA devices whose RNG :func:`torch.random.fork_rng` must save for ``device``."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _compile(model: nn.Module, warm_up: Callable[[nn.Module], None], device: torch.device):
    """``torch.compile(model)``, compiled by ``warm_up(compiled)`` before training starts.

    The warm-up's effects are undone: the model's parameters and buffers (batch-norm
    statistics), its gradients and the global RNGs are restored, so a compiled run draws the
    same random numbers as an eager one. If compiling fails (no compiler, an unsupported
    platform) it warns and returns ``model`` itself: training then runs eagerly.
    """
    state = {
        k: v.detach().clone() if isinstance(v, torch.Tensor) else v
        for k, v in model.state_dict().items()
    }
    try:
        with torch.random.fork_rng(devices=_rng_devices(device)):
            compiled = torch.compile(model)
            warm_up(compiled)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [""])[0]
        warnings.warn(
            f"training without torch.compile, which failed: {type(exc).__name__}: {reason}",
            RuntimeWarning,
            stacklevel=3,
        )
        compiled = model
    finally:
        model.load_state_dict(state)
        for p in model.parameters():
            p.grad = None
    return compiled


def train_loop(
    model: nn.Module,
    data: Data,
    cfg: TrainingConfig,
    loss_fn: LossFn,
    *,
    device: torch.device,
    seed: int,
    progress: ProgressFn | None = None,
    checkpoints: EpochCheckpoints | None = None,
) -> nn.Module:
    """Train ``model`` in place on ``data`` with ``loss_fn(model, x, y)``; return it in eval mode.

    The training set moves to ``device`` once (uint8 when it is 8-bit, see
    :class:`DeviceImages`); the subset of ``train_examples`` is drawn on the CPU from a
    generator seeded with ``seed``, the shuffles and the augmentation on the device from a
    device generator seeded with ``seed`` (on the CPU that is the same generator). The loop
    does not synchronise with the device between steps: the running loss stays there until an
    epoch ends. ``loss_fn`` runs under the configured precision (the inner attack of an
    adversarial defense included) and gets the compiled model when ``compile`` is set; the
    model returned is ``model`` itself (channels_last if asked), never the compiled wrapper.

    With ``checkpoints`` (:mod:`robench.resume`), the state of the training (model, optimizer,
    scheduler, the loop's and the global generators, the epoch losses, the training seconds) is
    saved after every finished epoch, after ``progress``; and a saved state of the same training
    cell is restored once the model, optimizer and scheduler are built (after the compile
    warm-up), training then going on with the epoch after it (``progress`` is called for the
    epochs trained here only). Only the first call given a checkpoints object uses it.
    """
    started = time.perf_counter()
    if checkpoints is not None and not checkpoints.claim():
        checkpoints = None
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    x, y = data.x, data.y
    if cfg.train_examples is not None and cfg.train_examples < len(y):
        keep = torch.randperm(len(y), generator=gen)[: cfg.train_examples]
        x, y = x[keep], y[keep]
    dev_gen = gen if device.type == "cpu" else torch.Generator(device=device).manual_seed(seed)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    _, dtype = model_device_dtype(model, x)
    images = DeviceImages(x, device, dtype, cfg.channels_last)
    y = y.to(device)
    n = len(y)
    use_bf16 = cfg.precision == "bf16"
    precision.warn_if_slow(cfg.precision, device, "[training]")

    def batch_loss(net: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        if not use_bf16:
            return loss_fn(net, xb, yb)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return loss_fn(net, xb, yb)

    model.train()
    net = model
    if cfg.compile:
        # one step per batch size (a full batch and the last, smaller one) compiles every graph
        sizes = sorted({min(cfg.batch_size, n), n % cfg.batch_size} - {0})

        def warm_up(compiled: nn.Module) -> None:
            for size in sizes:
                idx = torch.arange(size, device=device)
                xb = images.as_input(images.take(idx))
                batch_loss(compiled, xb, y.index_select(0, idx)).backward()

        net = _compile(model, warm_up, device)

    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    per_epoch = math.ceil(n / cfg.batch_size)
    total = per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s, total))
    generators = [gen] if dev_gen is gen else [gen, dev_gen]
    start, losses, prior_seconds = 0, [], 0.0
    if checkpoints is not None:
        start, losses, prior_seconds = checkpoints.resume(
            model, opt, sched, generators, device, cfg.epochs
        )
    for epoch in range(start, cfg.epochs):
        order = torch.randperm(n, generator=dev_gen, device=device)
        running, seen = torch.zeros((), device=device), 0
        for i in range(per_epoch):
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            xb = images.take(idx)
            if cfg.augment == "crop-flip":
                xb = crop_flip(xb, dev_gen)
            yb = y.index_select(0, idx)
            loss = batch_loss(net, images.as_input(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.detach() * len(yb)
            seen += len(yb)
        mean_loss = float(running) / max(seen, 1)
        losses.append(mean_loss)
        if progress is not None:
            progress(epoch + 1, cfg.epochs, mean_loss)
        if checkpoints is not None:
            checkpoints.checkpoint(
                model,
                opt,
                sched,
                generators,
                device,
                epochs=cfg.epochs,
                next_epoch=epoch + 1,
                losses=losses,
                seconds=prior_seconds + time.perf_counter() - started,
            )
            faults.point("epoch")  # a test's kill after an epoch's checkpoint
    model.eval()
    return model
