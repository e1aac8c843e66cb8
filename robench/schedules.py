"""Learning-rate schedules of the ``[training]`` table, built from ``torch.optim.lr_scheduler``.

Every schedule is stepped once per optimizer step (per batch); :func:`make_scheduler` builds
it for ``steps_per_epoch × epochs`` steps. The lr of step ``s`` (0-based) is the optimizer's
lr while step ``s`` runs. ``warmup`` (a fraction ``w`` of training) ramps the lr up linearly
over the steps ``s`` with ``s / T < w`` (``W`` of them; ``T`` steps in all) before the schedule
proper starts; schedules:

- ``constant``: the lr throughout (``ConstantLR``; after a warm-up, the ramp's ``LinearLR``
  holding at 1).
- ``cosine``: cosine annealing from the lr to 0 over the steps after the warm-up
  (``CosineAnnealingLR``, ``T_max = T − W``).
- ``step``: ``lr × gamma^k`` once ``k`` of ``milestones`` (fractions of training) are passed
  (``MultiStepLR``, the fractions turned into steps).
- ``cyclic``: robench's triangle, linear up over a warm-up (2/5 of training unless ``warmup``
  is set) and linear down, reaching 0 at the end of training (``LinearLR`` twice).
- ``multi-step``: the papers' schedule, ``lr × gamma^k`` once ``k`` of ``milestone_epochs``
  (whole epochs: PGD-AT on CIFAR-10, ``[100, 150]`` of 200; TRADES, ``[75]`` of 100) are
  finished (``MultiStepLR``; the lr changes at the start of those epochs only, so stepping per
  batch gives exactly the per-epoch stepping of the papers' code).
- ``one-cycle``: torch's ``OneCycleLR``, per batch as Fast AT and super-convergence step it:
  from ``lr / div_factor`` up to ``lr`` over the first ``warmup`` of training (0.3, torch's
  ``pct_start``, unless set), then down to ``lr / (div_factor × final_div_factor)``, annealed
  as ``one_cycle_anneal`` says (``cos``, torch's default, or ``linear``). Momentum is not
  cycled. Fast AT's CIFAR-10 schedule (a linear triangle from 0 to ``lr`` at half of training
  and back to 0) is ``warmup = 0.5, one_cycle_anneal = "linear"`` with a large ``div_factor``.

Why ``one-cycle`` is not an alias of ``cyclic``: ``cyclic`` predates it and stored models were
trained with it, so it must keep its learning rates, which are not ``OneCycleLR``'s: its ramp
starts at ``lr / (wT)`` rather than ``lr / div_factor``, and its descent reaches 0 one step after
the last one instead of at it.

The four schedules that predate this module (``constant``, ``cosine``, ``step``, ``cyclic``)
give, step for step, the learning rates of their closed form :func:`lr_factor` (to within
float rounding: torch updates most factors recursively). Where the warm-up ends between two
steps (``w·T`` not a whole number, above 1), that closed form ramps past the peak on its last
warm-up step (``(s + 1) / (w·T)`` up to ``⌈wT⌉ / (wT)``) and starts ``cosine`` part of a step
into its descent; no torch scheduler draws either, so those configurations keep
``LambdaLR(lr_factor)``: models stored under their keys stay what training them gives.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch.optim import lr_scheduler

if TYPE_CHECKING:  # pragma: no cover
    from robench.training import TrainingConfig

#: the schedules whose learning rates :func:`lr_factor` defines (they predate torch's here)
LEGACY = ("constant", "cosine", "step", "cyclic")
#: relative slack under which a warm-up of ``w·T`` steps counts as a whole number of steps
_WHOLE = 1e-9


def lr_factor(cfg: TrainingConfig, step: int, total: int) -> float:
    """The learning-rate multiplier at optimizer step ``step`` of ``total`` for the schedules
    that predate :func:`make_scheduler` (``constant``, ``cosine``, ``step``, ``cyclic``): their
    definition, which the torch schedulers reproduce."""
    if cfg.schedule not in LEGACY:
        raise ValueError(f"lr_factor defines {', '.join(LEGACY)}, not {cfg.schedule!r}")
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


def _first_step(fraction: float, total: int) -> int:
    """The first step ``s`` of ``0 … total`` with ``s / total >= fraction`` (as the closed form
    compares them, in floats); ``total + 1`` when there is none."""
    s = max(0, min(total + 1, math.ceil(fraction * total)))
    while s > 0 and (s - 1) / total >= fraction:
        s -= 1
    while s <= total and s / total < fraction:
        s += 1
    return s


def warmup_steps(cfg: TrainingConfig, total: int) -> int:
    """``W``: how many of the ``total`` steps the warm-up ramp takes (0 without a warm-up)."""
    w = cfg.effective_warmup
    return min(_first_step(w, max(total, 1)), total) if w > 0 else 0


def _ramp(opt: torch.optim.Optimizer, steps: int) -> lr_scheduler.LRScheduler:
    """Factor ``(s + 1) / steps`` at steps ``s < steps``, 1 after."""
    return lr_scheduler.LinearLR(opt, 1.0 / steps, 1.0, total_iters=steps - 1)


def _is_whole(value: float, whole: int) -> bool:
    return abs(value - whole) <= _WHOLE * max(whole, 1)


def make_scheduler(
    opt: torch.optim.Optimizer, cfg: TrainingConfig, steps_per_epoch: int
) -> lr_scheduler.LRScheduler:
    """The learning-rate scheduler of ``cfg`` for ``opt``, to be stepped once per batch over
    ``steps_per_epoch × cfg.epochs`` batches (see the module's documentation)."""
    total = steps_per_epoch * cfg.epochs
    if cfg.schedule == "one-cycle":
        pct = cfg.effective_warmup
        if pct * total == 1.0:  # OneCycleLR divides 0 by 0 at a one-step ramp: no ramp at all
            pct = (1.0 - 1e-9) / total
        return lr_scheduler.OneCycleLR(
            opt,
            max_lr=cfg.lr,
            total_steps=total,
            pct_start=float(pct),
            anneal_strategy=cfg.one_cycle_anneal,
            cycle_momentum=False,
            div_factor=cfg.div_factor,
            final_div_factor=cfg.final_div_factor,
        )
    w = cfg.effective_warmup
    ramp = warmup_steps(cfg, total)
    if cfg.schedule in LEGACY:
        # the closed form ramps as (s + 1) / max(wT, 1): a LinearLR ramp of W steps only when
        # W is that denominator; cosine also needs its descent to start at step W exactly
        exact = ramp == 0 or _is_whole(max(w * total, 1.0), ramp)
        if cfg.schedule == "cosine" and ramp:
            exact = exact and _is_whole(w * total, ramp)
        if not exact:
            return lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s, total))
    main = _after_warmup(opt, cfg, total, ramp, steps_per_epoch)
    if not ramp:
        return main if main is not None else lr_scheduler.ConstantLR(opt, 1.0, total_iters=0)
    if main is None:
        return _ramp(opt, ramp)
    return lr_scheduler.SequentialLR(opt, [_ramp(opt, ramp), main], milestones=[ramp])


def _after_warmup(
    opt: torch.optim.Optimizer, cfg: TrainingConfig, total: int, ramp: int, steps_per_epoch: int
) -> lr_scheduler.LRScheduler | None:
    """The schedule from step ``ramp`` on (its own step 0), or None: factor 1 throughout."""
    left = total - ramp
    if cfg.schedule == "constant" or left <= 0:
        return None
    if cfg.schedule == "cosine":
        return lr_scheduler.CosineAnnealingLR(opt, T_max=left)
    if cfg.schedule == "cyclic":
        # (T − s) / (T − wT): from its value at step W down to 0 at step T
        start = min(1.0, left / (total - cfg.effective_warmup * total))
        return lr_scheduler.LinearLR(opt, start, 0.0, total_iters=left)
    if cfg.schedule == "step":
        steps = [_first_step(m, total) for m in cfg.milestones]
    else:  # multi-step
        steps = [e * steps_per_epoch for e in cfg.milestone_epochs]
    # a milestone inside the warm-up applies once it ends (its step 0)
    return lr_scheduler.MultiStepLR(opt, [max(0, s - ramp) for s in steps], gamma=cfg.gamma)
