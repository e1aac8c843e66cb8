"""Training settings and the shared training loop that built-in defenses use.

Third-party defenses may reuse :func:`train_loop` with a loss of their own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from robench.dataset import Data

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
    """Random crop with zero padding ``pad`` and random horizontal flip, on x's device."""
    n, _, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
    rows = (dy.view(n, 1) + torch.arange(h, device=dev).view(1, h)).view(n, 1, h, 1)
    cols = (dx.view(n, 1) + torch.arange(w, device=dev).view(1, w)).view(n, 1, 1, w)
    batch = torch.arange(n, device=dev).view(n, 1, 1, 1)
    chan = torch.arange(x.shape[1], device=dev).view(1, -1, 1, 1)
    out = padded[batch, chan, rows, cols]
    flip = (torch.rand(n, generator=generator) < 0.5).to(dev)
    return torch.where(flip.view(n, 1, 1, 1), out.flip(3), out)


def train_loop(
    model: nn.Module,
    data: Data,
    cfg: TrainingConfig,
    loss_fn: LossFn,
    *,
    device: torch.device,
    seed: int,
    progress: ProgressFn | None = None,
) -> nn.Module:
    """Train ``model`` in place on ``data`` with ``loss_fn(model, x, y)``; return it in eval mode.

    Shuffling and augmentation draw from a generator seeded with ``seed``.
    """
    gen = torch.Generator().manual_seed(seed)
    x, y = data.x, data.y
    if cfg.train_examples is not None and cfg.train_examples < len(y):
        keep = torch.randperm(len(y), generator=gen)[: cfg.train_examples]
        x, y = x[keep], y[keep]
    x, y = x.to(device), y.to(device)
    model.to(device).train()
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    per_epoch = math.ceil(len(y) / cfg.batch_size)
    total = per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s, total))
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(y), generator=gen).to(device)
        running, seen = torch.zeros((), device=device), 0
        for i in range(per_epoch):
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            xb, yb = x[idx], y[idx]
            if cfg.augment == "crop-flip":
                xb = crop_flip(xb, gen)
            loss = loss_fn(model, xb, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.detach() * len(yb)
            seen += len(yb)
        if progress is not None:
            progress(epoch + 1, cfg.epochs, float(running) / max(seen, 1))
    model.eval()
    return model
