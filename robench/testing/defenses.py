"""``check_defense``: the defense contract (a fresh model and a training set in, a trained
module that returns logits out, rebuilt untrained by ``restore``)."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from robench.dataset import Data, DatasetInfo
from robench.defense import Defense, TrainContext
from robench.reproducibility import eval_subset
from robench.testing._common import check_params, check_registration, fail, raised, seeded
from robench.testing._tiny import tiny_data
from robench.threat import ThreatModel
from robench.training import TrainingConfig

#: training examples, epochs and learning rate of the main fit (robench's own test settings)
TRAIN_EXAMPLES, EPOCHS, LR = 400, 6, 3e-3
#: the accuracy on 64 test digits a training defense must reach after those epochs
MIN_ACCURACY = 0.5
#: training examples of the two one-epoch fits that must give the same weights
REPEAT_EXAMPLES = 128


@functools.cache
def _registry() -> Any:
    from robench.registry import get_registry

    return get_registry()


def context(info: DatasetInfo, *, seed: int = 0, **training: Any) -> TrainContext:
    """A CPU :class:`TrainContext` for ``info`` whose inner attacks come from the registry of
    this process (built-ins and installed plugins), as in a benchmark."""

    def make_attack(spec: Any) -> Any:
        entry = _registry().get("attack", spec.name)
        return entry.cls(ThreatModel(spec.norm, spec.eps, info.bounds), **spec.params)

    cfg = TrainingConfig(**{"epochs": EPOCHS, "lr": LR, **training})
    return TrainContext(cfg, torch.device("cpu"), seed, info, make_attack)


def small_cnn(info: DatasetInfo) -> nn.Module:
    """robench's ``small-cnn`` for ``info``, initialised from the global generator."""
    return _registry().get("model", "small-cnn").cls().build(info)


def check_defense(cls: type[Defense], /, **params: Any) -> None:
    """Hold the defense class ``cls`` to robench's defense contract; raise
    :class:`ContractViolation` (an ``AssertionError``) naming the defense and what broke.

    ``params`` are the defense's parameters, on top of ``cls.example_params``; an inner attack
    (``attack = {name = ...}``) is any registered attack. robench's ``small-cnn`` is trained on
    400 of the kit's digits for 6 epochs (learning rate 3e-3) on the CPU. The checks:

    - robench's registry accepts the class, it has a docstring, its parameters validate;
    - ``fit`` returns an ``nn.Module`` that maps [0, 1] images to finite logits (not
      probabilities) of the dataset's classes on the context's device;
    - a defense that trains (``trains = True``): it reports a finite loss after every epoch
      (through :meth:`TrainContext.train` or its own calls to ``ctx.progress``), changes the
      weights, leaves them trainable, reaches 50 % accuracy on 64 test digits, and trains
      the same weights twice from the same seed (one epoch on 128 digits, twice; seeded as
      robench seeds a training: Python's, NumPy's and torch's generators, then the model is
      built, then ``fit`` runs);
    - ``restore`` returns the module ``fit`` returns, untrained: the trained ``state_dict``
      loads into it exactly (same keys and shapes) and gives the same logits.
    """
    subject = check_registration("defense", cls, Defense)
    p = check_params(subject, cls, params)
    info, train, test = tiny_data()
    train = eval_subset(train, TRAIN_EXAMPLES, seed=0)
    x, y = test.x[:64], test.y[:64]

    losses: list[float] = []
    ctx = context(info)
    ctx = TrainContext(**{**ctx.__dict__, "progress": lambda e, n, loss: losses.append(loss)})
    with seeded(0):  # as robench trains: seeded, then the model built, then fit
        model = small_cnn(info)
        before = [q.detach().clone() for q in model.parameters()]
        trained = _fit(subject, cls, p, model, train, ctx)
    logits = _check_logits(subject, trained, x, info)
    if cls.trains:
        if len(losses) != EPOCHS or not all(loss == loss for loss in losses):
            raise fail(
                subject,
                f"reported {len(losses)} epoch losses {losses!r} for {EPOCHS} epochs: one "
                "finite loss per epoch expected (train through ctx.train)",
            )
        if all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)):
            raise fail(subject, "left the weights of the model it was given unchanged")
        if not all(q.requires_grad for q in model.parameters()):
            raise fail(subject, "left parameters of the model with requires_grad off")
        accuracy = (logits.argmax(dim=1) == y).float().mean().item()
        if accuracy < MIN_ACCURACY:
            raise fail(
                subject,
                f"reached {accuracy:.0%} accuracy on 64 test digits after {EPOCHS} epochs on "
                f"{TRAIN_EXAMPLES} (at least {MIN_ACCURACY:.0%} expected)",
            )
        _check_seeded(subject, cls, p, info, train)
    _check_restore(subject, cls, p, trained, info, ctx, x, logits)


def _fit(
    subject: str, cls: type[Defense], p: Any, model: nn.Module, train: Data, ctx: TrainContext
) -> nn.Module:
    try:
        trained = cls(p).fit(model, train, ctx)
    except Exception as exc:
        raise raised(subject, "in fit()", exc) from exc
    if not isinstance(trained, nn.Module):
        raise fail(subject, f"fit() returned {type(trained).__name__}, not a torch.nn.Module")
    return trained


def _check_logits(
    subject: str, trained: nn.Module, x: torch.Tensor, info: DatasetInfo
) -> torch.Tensor:
    try:
        with torch.no_grad():
            logits = trained.eval()(x)
    except Exception as exc:
        raise raised(subject, "when its trained module ran on [0, 1] images", exc) from exc
    if not isinstance(logits, torch.Tensor) or logits.shape != (len(x), info.num_classes):
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise fail(subject, f"trained a module that returns {got} for {len(x)} images")
    if logits.device != torch.device("cpu"):
        raise fail(subject, f"trained a module that returns logits on {logits.device}, not cpu")
    if not torch.isfinite(logits).all():
        raise fail(subject, "trained a module that returns non-finite logits")
    if torch.allclose(logits.sum(dim=1), torch.ones(len(x))) and (logits >= 0).all():
        raise fail(subject, "trained a module that returns probabilities, not logits")
    return logits


def _check_seeded(subject: str, cls: type[Defense], p: Any, info: DatasetInfo, train: Data) -> None:
    part = eval_subset(train, REPEAT_EXAMPLES, seed=1)
    states = []
    for _ in range(2):
        with seeded(0):
            trained = _fit(subject, cls, p, small_cnn(info), part, context(info, epochs=1))
        states.append(trained.state_dict())
    for key, value in states[0].items():
        if not torch.equal(value, states[1][key]):
            raise fail(
                subject,
                f"trained different weights twice from the same seed ({key!r} differs): draw "
                "random numbers from torch's global generator, which robench seeds",
            )


def _check_restore(
    subject: str,
    cls: type[Defense],
    p: Any,
    trained: nn.Module,
    info: DatasetInfo,
    ctx: TrainContext,
    x: torch.Tensor,
    logits: torch.Tensor,
) -> None:
    try:
        with seeded(1):
            restored = cls(p).restore(small_cnn(info), ctx)
    except Exception as exc:
        raise raised(subject, "in restore()", exc) from exc
    shapes = {k: tuple(v.shape) for k, v in trained.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in restored.state_dict().items()}
    if got != shapes:
        diff = sorted(set(shapes.items()) ^ set(got.items()))[0]
        raise fail(
            subject,
            f"restore() returns a module whose state_dict differs from fit()'s ({diff[0]!r}): "
            "a defense whose fit wraps the model returns the same wrapper from restore",
        )
    restored.load_state_dict(trained.state_dict(), strict=True)
    with torch.no_grad():
        if not torch.equal(restored.eval()(x), logits):
            raise fail(subject, "restore()'s module gives other logits with fit()'s weights loaded")


__all__ = ["check_defense", "context", "small_cnn"]
