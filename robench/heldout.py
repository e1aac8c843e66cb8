"""The best epoch on held-out examples: early stopping against robust overfitting.

Rice, Wong & Kolter (ICML 2020, "Overfitting in adversarially robust deep learning") show that
the robust test accuracy of adversarial training peaks soon after the first learning-rate decay
and then falls while the training loss keeps falling; they keep the checkpoint with the best
PGD accuracy on held-out data. ``[training] best_checkpoint`` does that:
:func:`robench.training.train_loop` holds ``held_out`` examples of the training split out of
training, measures their PGD accuracy after every epoch (:func:`held_out_accuracy`) and returns
the weights of the best epoch (:class:`BestEpoch`), optionally stopping once ``patience`` epochs
brought no better one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from robench.threat import ThreatModel
from robench.training_config import BestCheckpoint


def split_held_out(
    n: int, held_out: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, held out)`` of ``n`` examples, ``held_out`` of them held out at
    random (``generator``: CPU). One-line ValueError when none would be left to train on."""
    if held_out >= n:
        raise ValueError(
            f"training.best_checkpoint.held_out: {held_out} held-out examples leave none of the "
            f"{n} training examples to train on; hold out fewer"
        )
    order = torch.randperm(n, generator=generator)
    return order[held_out:].sort().values, order[:held_out].sort().values


def _random_start(x: torch.Tensor, threat: ThreatModel, generator: torch.Generator) -> torch.Tensor:
    """A uniform random point of the ε-ball around ``x`` (clamped to the bounds), drawn from
    ``generator`` (on x's device) and not from torch's global generator."""
    lo, hi = threat.bounds
    if threat.norm == "linf":
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (x + noise.mul_(2).sub_(1).mul_(threat.eps)).clamp_(lo, hi)
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    flat = direction.reshape(len(x), -1)
    radius = torch.rand(len(x), generator=generator, device=x.device, dtype=x.dtype)
    radius = radius.pow_(1.0 / flat.shape[1]).mul_(threat.eps)
    scale = radius / flat.norm(dim=1).clamp_(min=1e-12)
    return (x + direction * scale.view(-1, *([1] * (x.dim() - 1)))).clamp_(lo, hi)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    spec: BestCheckpoint,
    generator: torch.Generator,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """PGD (cross-entropy, ``spec.steps`` steps of ``spec.alpha``) against ``model`` as it is
    (call it in eval mode); only input gradients are computed, the model's own are untouched."""
    from robench.attacks._common import Ball, input_gradient

    threat = ThreatModel(spec.norm, spec.eps, bounds)
    if spec.eps == 0:
        return x
    ball = Ball(x, threat)
    x_adv = _random_start(x, threat, generator) if spec.random_start else x.clone()
    with torch.enable_grad():
        for _ in range(spec.steps):
            x_adv = ball.step(x_adv, input_gradient(model, x_adv, y, "ce"), spec.alpha)
    return x_adv


def held_out_accuracy(
    model: nn.Module,
    batches: Callable[[], Any],
    spec: BestCheckpoint,
    seed: int,
    device: torch.device,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> tuple[float, float]:
    """``(robust, clean)`` accuracy of ``model`` on the held-out examples: ``batches()``
    yields ``(x, y)`` on ``device``. Robust counts the examples classified correctly both
    clean and after PGD, as robench's results do. The model is evaluated in eval mode and put
    back in the mode it was in; the PGD starts come from a generator seeded with ``seed`` (the
    same points every epoch), never from torch's global generators."""
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    robust = clean = total = 0
    try:
        for x, y in batches():
            with torch.no_grad():
                right = model(x).argmax(dim=1) == y
            x_adv = pgd(model, x, y, spec, generator, bounds)
            with torch.no_grad():
                held = right & (model(x_adv).argmax(dim=1) == y)
            clean += int(right.sum())
            robust += int(held.sum())
            total += len(y)
    finally:
        model.train(was_training)
    return robust / max(total, 1), clean / max(total, 1)


class BestEpoch:
    """The best epoch so far and its weights: a :class:`robench.resume.Stateful`, kept in the
    per-epoch checkpoints, so that a resumed training still returns the best epoch's weights.

    The best epoch has the highest robust held-out accuracy; of equal ones, the earliest.
    """

    def __init__(self, spec: BestCheckpoint) -> None:
        self.spec = spec
        #: the best epoch (1-based; 0: none measured yet)
        self.epoch = 0
        self.robust = -1.0
        self.clean = -1.0
        #: ``[robust, clean]`` held-out accuracy of every finished epoch
        self.history: list[list[float]] = []
        self.weights: dict[str, torch.Tensor] = {}

    def update(self, epoch: int, robust: float, clean: float, model: nn.Module) -> bool:
        """Record epoch ``epoch`` (1-based); keep the model's weights if it is the best so
        far. True when it is."""
        self.history.append([robust, clean])
        if robust <= self.robust:
            return False
        self.epoch, self.robust, self.clean = epoch, robust, clean
        self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return True

    def exhausted(self, finished: int) -> bool:
        """Whether training stops with ``finished`` epochs done: ``patience`` epochs have
        passed since the best one."""
        p = self.spec.patience
        return p is not None and self.epoch > 0 and finished - self.epoch >= p

    def restore(self, model: nn.Module) -> None:
        """Load the best epoch's weights into ``model``."""
        if self.weights:
            model.load_state_dict(self.weights)

    def summary(self, epochs: int) -> dict[str, Any]:
        """What the model's sidecar records: the best epoch, its held-out accuracies, the
        epochs trained (``epochs`` planned) and every epoch's held-out accuracies."""
        return {
            "epoch": self.epoch,
            "robust_accuracy": self.robust,
            "clean_accuracy": self.clean,
            "held_out": self.spec.held_out,
            "attack": f"pgd({self.spec.norm}, eps={self.spec.eps:g}, steps={self.spec.steps}, "
            f"step_size={self.spec.alpha:g})",
            "epochs_trained": len(self.history),
            "epochs": epochs,
            "history": [{"robust": r, "clean": c} for r, c in self.history],
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "robust": self.robust,
            "clean": self.clean,
            "history": [list(h) for h in self.history],
            "weights": self.weights,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.robust, self.clean = float(state["robust"]), float(state["clean"])
        self.history = [[float(r), float(c)] for r, c in state["history"]]
        self.weights = dict(state["weights"])
