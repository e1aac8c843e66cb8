"""The defense contract: turn a fresh model and a training set into a trained model."""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from robench.bases import DefenseBase
from robench.dataset import Data, DatasetInfo
from robench.training import LossFn, ProgressFn, TrainingConfig, train_loop

if TYPE_CHECKING:  # pragma: no cover
    from robench.attack import Attack
    from robench.resume import EpochCheckpoints, Stateful
    from robench.specs import AttackSpec


@dataclass(frozen=True)
class TrainContext:
    """Everything a defense gets besides the model and the data.

    ``checkpoints``: where :meth:`train` saves the training's state after every epoch and
    resumes it from (:mod:`robench.resume`), so that an interrupted training goes on at its
    last finished epoch; None: no per-epoch checkpoints. Only training through :meth:`train`
    (:func:`robench.training.train_loop`) resumes: a defense with a loop of its own trains from
    the start again after an interruption.
    """

    training: TrainingConfig
    device: torch.device
    seed: int
    info: DatasetInfo
    #: build a registered attack from a spec (e.g. a defense's inner ``attack`` parameter)
    make_attack: Callable[[AttackSpec], Attack]
    #: called after each epoch with (epoch, epochs, mean loss)
    progress: ProgressFn | None = None
    #: per-epoch checkpoints of this training (None: none are kept)
    checkpoints: EpochCheckpoints | None = None

    def train(self, model: nn.Module, data: Data, loss: LossFn) -> nn.Module:
        """Run :func:`robench.training.train_loop` with this context's settings (and its
        per-epoch checkpoints)."""
        return train_loop(
            model,
            data,
            self.training,
            loss,
            device=self.device,
            seed=self.seed,
            progress=self.progress,
            checkpoints=self.checkpoints,
            bounds=self.info.bounds,
        )

    def keep_state(self, name: str, obj: Stateful) -> None:
        """Keep ``obj``'s state (``state_dict``/``load_state_dict``) in the per-epoch
        checkpoints: for state of a defense's loss that outlives an epoch, e.g. an ε warm-up's
        step counter, which a resumed training must not start from 0. Call it before
        :meth:`train`; without checkpoints it does nothing."""
        if self.checkpoints is not None:
            self.checkpoints.track(name, obj)

    def with_training_defaults(self, defaults: Mapping[str, Any]) -> TrainContext:
        """This context with ``defaults`` for the training settings nobody set explicitly.

        A setting counts as set when the benchmark's ``[training]`` table or the defense's own
        ``training`` table (or whoever built the :class:`TrainingConfig`) gave it.
        """
        cfg = self.training
        unset = {k: v for k, v in defaults.items() if k not in cfg.model_fields_set}
        if not unset:
            return self
        merged = TrainingConfig.model_validate({**cfg.model_dump(), **unset})
        return dataclasses.replace(self, training=merged)

    def cross_entropy(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy with the configured label smoothing."""
        return F.cross_entropy(logits, y, label_smoothing=self.training.label_smoothing)


class Defense(DefenseBase):
    """Base class of defense plugins. Subclasses implement :meth:`fit`.

    ``trains`` and ``training_defaults`` come from :class:`robench.bases.DefenseBase`.
    """

    @abstractmethod
    def fit(self, model: nn.Module, train: Data, ctx: TrainContext) -> nn.Module:
        """Train ``model`` (freshly built, on the CPU) on ``train``; return the model to score.

        The returned module may wrap ``model`` (e.g. with an input transformation). It must map
        [0, 1] images to logits on ``ctx.device``. A defense whose returned module is not
        ``model`` itself overrides :meth:`restore` too.
        """

    def restore(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        """The module :meth:`fit` would return for ``model``, untrained: what a stored model's
        weights (the ``state_dict`` of ``fit``'s module, :mod:`robench.store`) are loaded into
        when a run reuses it instead of training.

        The default is ``model`` itself; a defense whose ``fit`` wraps the model (an input
        transformation in front of it) returns the same wrapper here, without training. If the
        stored weights do not fit the module returned (keys or shapes differ) the runner trains
        instead; it never scores a module whose weights did not all load.
        """
        return model
