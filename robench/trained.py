"""The model of each training cell in a run: reused from the store, or built, trained and stored.

:class:`TrainedModels` is what the runner asks for a defense's model with one training seed. A
defense that trains has a key (:func:`robench.store.cell_key` of its training cell); unless the
run is ``fresh``, a model stored under that key is rebuilt (``Defense.restore``) and loaded
instead of training, and a model trained here is stored under it. A stored model that cannot be
used is one progress line, and the defense trains again. A defense that trains nothing
(``checkpoint``) is neither looked up nor stored.

While a model trains, its training saves a resume file after every epoch
(:mod:`robench.resume`, ``models/<key20>.resume.pt``); a training of the same cell interrupted
before its model was stored resumes there (``fresh`` deletes the file first and starts over).
The stored sidecar's ``epoch_losses`` and ``train_seconds`` then cover every session, and the
file is deleted once the model is stored (or when a stored model is reused). With
``best_checkpoint`` the sidecar's ``best_epoch`` records the epoch whose weights were kept and its
held-out accuracies (:meth:`robench.heldout.BestEpoch.summary`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robench import provenance, store
from robench.config import Benchmark, DefenseUse
from robench.dataset import Data, DatasetInfo
from robench.defense import TrainContext
from robench.defenses.checkpoint import load_weights
from robench.errors import ConfigError, error_line
from robench.progress import Reporter
from robench.registry import Registry
from robench.reproducibility import seed_everything
from robench.resume import EpochCheckpoints


class TrainedModels:
    """The trained models of one run, and what it did with the store (:attr:`record`)."""

    def __init__(
        self,
        bench: Benchmark,
        registry: Registry,
        info: DatasetInfo,
        device: torch.device,
        report: Reporter,
        make_attack: Callable,
        fresh: bool = False,
        train_digest: str = "",
    ) -> None:
        self.bench, self.registry, self.info, self.device = bench, registry, info, device
        self.report, self.make_attack = report, make_attack
        #: the training split's SHA-256 (by value), part of every training cell's key
        self.train_digest = train_digest
        #: the models stored under the output folder; ``fresh``: train every model again (and
        #: replace those stored) instead of reusing them
        self.store, self.fresh = store.ModelStore(bench.output_dir), fresh
        #: what the run did with the store (the provenance's ``models``)
        self.record: dict[str, Any] = {
            "dir": str(self.store.dir),
            "fresh": fresh,
            "reused": [],
            "stored": [],
            "not_used": [],
            "not_stored": [],
            #: trainings that resumed from a resume file: ``{"key", "epoch"}``
            "resumed": [],
        }
        self._git: dict[str, Any] | None = None

    def cell(self, d: DefenseUse, seed: int) -> tuple[dict[str, Any] | None, str]:
        """The training cell of ``d`` with ``seed`` and its key (None and "" for a defense
        that trains nothing: its model is not stored)."""
        if not d.entry.cls.trains:
            return None, ""
        record = store.training_cell(
            self.bench, d, seed, self.info, self.registry, self.train_digest
        )
        return record, store.cell_key(record)

    def get(
        self,
        d: DefenseUse,
        seed: int,
        train: Data,
        name: str,
        cell: dict[str, Any] | None,
        key: str,
    ) -> tuple[nn.Module, store.Stored | None]:
        """The model of ``d`` with ``seed`` (``cell``, ``key``: from :meth:`cell`), and the
        stored model it was reused from (None: trained or loaded here)."""
        losses: list[float] = []

        def progress(epoch: int, epochs: int, loss: float) -> None:
            losses.append(loss)
            self.report.epoch(d.label, epoch, epochs, loss)

        best: dict[str, Any] = {}  # with best_checkpoint: the best epoch (training.BEST_EPOCH)
        progress.best_epoch = best.update  # type: ignore[attr-defined]

        checkpoints = None
        if key:
            checkpoints = EpochCheckpoints(
                self.store.resume_path(key), key, note=lambda text: self.report.note(f"  {text}")
            )
        ctx = TrainContext(
            training=d.training,
            device=self.device,
            seed=seed,
            info=self.info,
            make_attack=self.make_attack,
            progress=progress,
            checkpoints=checkpoints,
        )
        why_not = ""
        if key and not self.fresh:
            model, found, why_not = self._reuse(d, ctx, seed, key, name)
            if model is not None:
                self._discard(checkpoints)  # left by a run killed right after storing it
                return model, found
        self.report.training(name, d.entry.cls.trains)
        if why_not:
            self.report.note(f"  stored model {store.short(key)} not used: {why_not}")
        if self.fresh and not self._discard(checkpoints):  # it would resume: none at all
            checkpoints = None
            ctx = dataclasses.replace(ctx, checkpoints=None)
        t0 = time.perf_counter()
        model = d.instantiate().fit(self._build(d, seed), train, ctx)
        seconds = time.perf_counter() - t0
        if checkpoints is not None:
            k = checkpoints.resumed_epoch
            if k:
                self.record["resumed"].append({"key": key, "epoch": k})
                if not losses:  # every epoch was restored: the reporter's last loss is the file's
                    self.report.epoch(d.label, k, k, checkpoints.restored_losses[-1])
            # the epochs trained before an interruption, and the time they took
            losses = checkpoints.restored_losses + losses
            seconds += checkpoints.prior_seconds
        if best:
            self.report.note(
                f"  best epoch {best['epoch']} of {best['epochs']} ({best['epochs_trained']} "
                f"trained): held-out robust accuracy {best['robust_accuracy']:.1%} "
                f"({best['attack']}, {best['held_out']} examples)"
            )
        if cell is not None and self._save(d, cell, key, model, seconds, losses, best):
            self._discard(checkpoints)
        return model, None

    def _discard(self, checkpoints: EpochCheckpoints | None) -> bool:
        """Delete a resume file; a failure is a note (a stale file is harmless: it resumes a
        training at its end, or is deleted by the next training of its cell that finishes).
        True when no file is left."""
        if checkpoints is None:
            return True
        try:
            checkpoints.discard()
        except OSError as exc:
            self.report.note(
                f"  resume file {checkpoints.path.name} not deleted: {error_line(exc)}"
            )
            return False
        return True

    def _build(self, d: DefenseUse, seed: int) -> nn.Module:
        """A fresh model for ``d``, built after seeding with ``seed`` (as training starts)."""
        seed_everything(seed)
        return (d.model or self.bench.model).instantiate().build(self.info)

    def _reuse(
        self, d: DefenseUse, ctx: TrainContext, seed: int, key: str, name: str
    ) -> tuple[nn.Module | None, store.Stored | None, str]:
        """The stored model of ``key`` rebuilt (``defense.restore``) with its weights loaded,
        or None with why a model found in the store was not usable ("": none was stored)."""
        found, why = self.store.lookup(key)
        if found is not None:
            try:
                weights = self.store.load(found)
                model = d.instantiate().restore(self._build(d, seed), ctx)
                load_weights(model, weights, found.weights)
                if ctx.training.channels_last:  # as training leaves it
                    model.to(memory_format=torch.channels_last)
            except Exception as exc:
                why = error_line(exc, with_type=not isinstance(exc, store.StoreError | ConfigError))
            else:
                self.record["reused"].append(key)
                self.report.reused(name, store.short(key), found.created, found.train_seconds)
                return model, found, ""
        if why:
            why += "; training again"
            self.record["not_used"].append({"key": key, "why": why})
        return None, None, why

    def _save(
        self,
        d: DefenseUse,
        cell: dict[str, Any],
        key: str,
        model: nn.Module,
        seconds: float,
        losses: list[float],
        best: dict[str, Any] | None = None,
    ) -> bool:
        """Store a freshly trained model under ``key``; a failure is a note, never an error.
        True when it was stored."""
        if self._git is None:
            import robench

            self._git = provenance.git_state(Path(robench.__file__).resolve().parent)
        try:
            dists = {e.distribution for e in store.cell_entries(self.bench, d, self.registry)}
            self.store.save(
                key,
                store.weights_of(model),
                {
                    "cell": cell,
                    "trained_as": {"benchmark": self.bench.name, "defense": d.label},
                    "train_seconds": seconds,
                    "epoch_losses": list(losses),
                    **({"best_epoch": best} if best else {}),
                    "created": provenance.now(),
                    "device": provenance.device_info(self.device),
                    "versions": provenance.versions(tuple(sorted(dists))),
                    "git": self._git,
                },
            )
        except Exception as exc:
            why = error_line(exc)
            self.record["not_stored"].append({"key": key, "why": why})
            self.report.note(f"  model {store.short(key)} not stored: {why}")
            return False
        self.record["stored"].append(key)
        return True
