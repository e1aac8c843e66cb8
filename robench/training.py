"""Training settings and the shared training loop that built-in defenses use.

Third-party defenses may reuse :func:`train_loop` with a loss of their own.

What a paper's recipe sets is here: the learning-rate schedule, from torch's schedulers and
stepped per batch (:mod:`robench.schedules`: constant, cosine, step, cyclic, one-cycle,
multi-step), weight decay that spares normalisation layers and biases (``no_decay``), and the
best epoch on held-out training examples against robust overfitting (``best_checkpoint``,
:mod:`robench.heldout`).

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
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from robench import faults, precision
from robench.dataset import Data, SplitData
from robench.heldout import BestEpoch, held_out_accuracy, split_held_out
from robench.model import model_device_dtype
from robench.schedules import lr_factor, make_scheduler
from robench.streamed import StreamedData, batches
from robench.training_config import TrainingConfig

__all__ = [
    "LossFn",
    "ProgressFn",
    "TrainingConfig",
    "crop_flip",
    "lr_factor",
    "make_optimizer",
    "make_scheduler",
    "param_groups",
    "train_loop",
]

if TYPE_CHECKING:  # pragma: no cover
    from robench.resume import EpochCheckpoints

#: ``loss_fn(model, x, y)``: the loss of one training batch. With ``compile`` it is also called
#: once per batch size in the warm-up, whose effects on the model and the RNGs are undone.
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
#: ``progress(epoch, epochs, mean loss)`` after each epoch trained. With ``best_checkpoint``, a
#: progress callable that has an attribute :data:`BEST_EPOCH` gets ``progress.best_epoch(
#: summary)`` once training ends (:meth:`robench.heldout.BestEpoch.summary`: the best epoch,
#: its held-out accuracies, the epochs trained), restored epochs included
ProgressFn = Callable[[int, int, float], None]
#: the attribute of a progress callable that receives the best-epoch summary
BEST_EPOCH = "best_epoch"


#: the normalisation layers whose parameters ``no_decay = ["norm"]`` leaves undecayed
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.GroupNorm,
    nn.LayerNorm,
    nn.RMSNorm,
)


def param_groups(model: nn.Module, cfg: TrainingConfig) -> list[Any]:
    """The trainable parameters of ``model`` for :func:`make_optimizer`: a plain list (one
    group, decayed by ``weight_decay``), or with ``no_decay`` two groups, the second with no
    weight decay: the parameters of normalisation layers (``"norm"``) and every parameter
    named ``bias`` (``"bias"``). A parameter shared between modules is listed once."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not cfg.no_decay:
        return params
    exempt: set[int] = set()
    for module in model.modules():
        is_norm = "norm" in cfg.no_decay and isinstance(module, NORM_LAYERS)
        for name, p in module.named_parameters(recurse=False):
            if is_norm or ("bias" in cfg.no_decay and name == "bias"):
                exempt.add(id(p))
    return [
        {"params": [p for p in params if id(p) not in exempt]},
        {"params": [p for p in params if id(p) in exempt], "weight_decay": 0.0},
    ]


def make_optimizer(params, cfg: TrainingConfig) -> torch.optim.Optimizer:
    """The optimizer of ``cfg`` over ``params``: parameters or param groups
    (:func:`param_groups`)."""
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
        return as_input(xb, self.dtype, self.memory_format)


def as_input(xb: torch.Tensor, dtype: torch.dtype, memory_format: torch.memory_format):
    """A batch of images as a model's input: ``dtype`` (uint8 as ``x / 255``), ``memory_format``."""
    if xb.dtype == torch.uint8:
        return xb.to(dtype=dtype, memory_format=memory_format).div_(255)
    return xb.to(dtype=dtype, memory_format=memory_format)


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
    data: SplitData,
    cfg: TrainingConfig,
    loss_fn: LossFn,
    *,
    device: torch.device,
    seed: int,
    progress: ProgressFn | None = None,
    checkpoints: EpochCheckpoints | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> nn.Module:
    """Train ``model`` in place on ``data`` with ``loss_fn(model, x, y)``; return it in eval mode.

    An in-memory training set moves to ``device`` once (uint8 when it is 8-bit, see
    :class:`DeviceImages`); a streamed one (:class:`robench.streamed.StreamedData`) is read
    through a DataLoader with its workers, each epoch in an order drawn from the CPU generator,
    and its batches move to the device as they come (the held-out examples of
    ``best_checkpoint`` are loaded into memory). The subset of ``train_examples`` is drawn on
    the CPU from a generator seeded with ``seed``, the in-memory shuffles and the augmentation
    on the device from a device generator seeded with ``seed`` (on the CPU that is the same
    generator). The loop
    does not synchronise with the device between steps: the running loss stays there until an
    epoch ends. ``loss_fn`` runs under the configured precision (the inner attack of an
    adversarial defense included) and gets the compiled model when ``compile`` is set; the
    model returned is ``model`` itself (channels_last if asked), never the compiled wrapper.
    The learning rate follows ``schedule`` (:func:`robench.schedules.make_scheduler`), stepped
    after every batch.

    With ``best_checkpoint`` (:mod:`robench.heldout`), its ``held_out`` examples are drawn out
    of the training examples (from the same CPU generator, after the ``train_examples``
    subset) and never trained on; after every epoch their PGD accuracy is measured (the images
    in ``bounds``), and the model returned carries the weights of the epoch where it was best;
    with ``patience``, training stops once that many epochs brought no better one.

    With ``checkpoints`` (:mod:`robench.resume`), the state of the training (model, optimizer,
    scheduler, the loop's and the global generators, the epoch losses, the training seconds,
    the best epoch and its weights) is saved after every finished epoch, after ``progress``;
    and a saved state of the same training cell is restored once the model, optimizer and
    scheduler are built (after the compile warm-up), training then going on with the epoch
    after it (``progress`` is called for the epochs trained here only). Only the first call
    given a checkpoints object uses it.
    """
    started = time.perf_counter()
    if checkpoints is not None and not checkpoints.claim():
        checkpoints = None
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    if cfg.train_examples is not None and cfg.train_examples < len(data):
        data = data.subset(torch.randperm(len(data), generator=gen)[: cfg.train_examples])
    best: BestEpoch | None = None
    held: Data | None = None
    if cfg.best_checkpoint is not None:
        train_idx, held_idx = split_held_out(len(data), cfg.best_checkpoint.held_out, gen)
        held = data.take(held_idx)
        data = data.subset(train_idx)
        best = BestEpoch(cfg.best_checkpoint)
        if checkpoints is not None:
            checkpoints.track("robench.best_epoch", best)
    dev_gen = gen if device.type == "cpu" else torch.Generator(device=device).manual_seed(seed)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    _, dtype = model_device_dtype(model, torch.empty(0))
    memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
    streamed = isinstance(data, StreamedData)
    if isinstance(data, StreamedData):
        loader, sampler = data.loader(cfg.batch_size, pin_memory=device.type == "cuda")
    else:
        images = DeviceImages(data.x, device, dtype, cfg.channels_last)
    y = data.y.to(device)
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
                xb = data.take(range(size)).x.to(device) if streamed else images.take(idx)
                xb = as_input(xb, dtype, memory_format)
                batch_loss(compiled, xb, y.index_select(0, idx)).backward()

        net = _compile(model, warm_up, device)

    opt = make_optimizer(param_groups(model, cfg), cfg)
    per_epoch = math.ceil(n / cfg.batch_size)
    sched = make_scheduler(opt, cfg, per_epoch)
    generators = [gen] if dev_gen is gen else [gen, dev_gen]
    start, losses, prior_seconds = 0, [], 0.0
    if checkpoints is not None:
        start, losses, prior_seconds = checkpoints.resume(
            model, opt, sched, generators, device, cfg.epochs
        )
    if held is not None:
        held_images = DeviceImages(held.x, device, dtype, cfg.channels_last)
        held_y = held.y.to(device)

    def held_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(held_y), cfg.batch_size):
            idx = torch.arange(i, min(i + cfg.batch_size, len(held_y)), device=device)
            yield held_images.as_input(held_images.take(idx)), held_y.index_select(0, idx)

    def epoch_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch's batches, shuffled, in their stored format (uint8 or ``dtype``)."""
        if streamed:  # the order from the CPU generator; the workers decode, the device waits
            sampler.order = torch.randperm(n, generator=gen).tolist()
            for xb, yb in batches(loader):
                yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            return
        order = torch.randperm(n, generator=dev_gen, device=device)
        for i in range(per_epoch):
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            yield images.take(idx), y.index_select(0, idx)

    for epoch in range(start, cfg.epochs):
        if best is not None and best.exhausted(epoch):
            break  # patience: no better epoch for that long (also when resumed there)
        running, seen = torch.zeros((), device=device), 0
        for xb, yb in epoch_batches():
            if cfg.augment == "crop-flip":
                xb = crop_flip(xb, dev_gen)
            loss = batch_loss(net, as_input(xb, dtype, memory_format), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.detach() * len(yb)
            seen += len(yb)
        mean_loss = float(running) / max(seen, 1)
        losses.append(mean_loss)
        if best is not None:
            assert cfg.best_checkpoint is not None
            robust, clean = held_out_accuracy(
                model, held_batches, cfg.best_checkpoint, seed, device, bounds
            )
            best.update(epoch + 1, robust, clean, model)
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
    if best is not None:
        best.restore(model)
        report = getattr(progress, BEST_EPOCH, None)
        if report is not None:
            report(best.summary(cfg.epochs))
    model.eval()
    return model
