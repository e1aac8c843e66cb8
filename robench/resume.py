"""Per-epoch training checkpoints: an interrupted training resumes at its last finished epoch.

:func:`robench.training.train_loop` given an :class:`EpochCheckpoints` writes, after every
finished epoch, everything the rest of the training depends on to one file: the model's
``state_dict``, the optimizer's and the learning-rate scheduler's state, the state of the loop's
generators (shuffles, augmentation), of torch's global generators (the CPU's and, when CUDA is
in use, every CUDA device's: an inner attack's random starts draw from them), of Python's
``random`` and NumPy's global generator, the mean loss of each finished epoch, the training
seconds so far, the next epoch, and the state of any object a defense asked to keep
(:meth:`robench.defense.TrainContext.keep_state`, e.g. an ε warm-up's step counter). A later
training of the same training cell restores all of it after building the model, optimizer and
scheduler (and after the compile warm-up) and continues with the next epoch, so that on the CPU
it ends with the same weights, bit for bit, as a training that was never interrupted (on a
GPU, as close as the GPU's own run-to-run determinism allows).

The file is ``models/<key20>.resume.pt`` next to the stored model of the training cell
(:meth:`robench.store.ModelStore.resume_path`). It is written atomically
(:func:`robench.results.atomic_write`: a kill at any instant leaves the previous epoch's file or
the new one) and read with ``torch.load(weights_only=True)``, which never runs pickled code. A
file that is unreadable, corrupt, of another training cell (its full key is inside), of another
device type or that does not fit the model, optimizer or scheduler is ignored, with a one-line
note, and training starts from epoch 0. :class:`robench.trained.TrainedModels` deletes the file
once the final model is stored.

What resumes: a defense that trains through :func:`~robench.training.train_loop`
(``TrainContext.train``: every built-in defense that trains). A defense with a loop of its own
gets no per-epoch resume (it trains from the start again after an interruption), and a defense
that calls ``train_loop`` more than once resumes within its first call only: the later calls of
a session train without checkpoints.
"""

from __future__ import annotations

import copy
import io
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from robench.errors import error_line
from robench.results import atomic_write

#: the layout of a resume file; a file of another format is ignored
FORMAT = 1


class Stateful(Protocol):
    """An object whose state a resume file keeps (:meth:`EpochCheckpoints.track`)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ResumeError(Exception):
    """A resume file that cannot be used (one line saying why)."""


class EpochCheckpoints:
    """The resume file of one training cell: ``path``, holding a state of key ``key``.

    Give it to :func:`robench.training.train_loop` (``TrainContext.checkpoints``). After the
    training, :attr:`resumed_epoch`, :attr:`restored_losses` and :attr:`prior_seconds` say what
    came from the file: the caller adds ``restored_losses`` in front of the losses its progress
    callback saw and ``prior_seconds`` to the time it measured. ``note`` gets a line when a
    training resumes or a file found is not used.
    """

    def __init__(self, path: Path, key: str, note: Callable[[str], None] | None = None) -> None:
        self.path, self.key, self.note = Path(path), key, note
        #: the epoch training resumed after (0: it started from scratch)
        self.resumed_epoch = 0
        #: the mean losses of the epochs restored from the file (``resumed_epoch`` of them)
        self.restored_losses: list[float] = []
        #: training seconds of the restored epochs, measured by the sessions that trained them
        self.prior_seconds = 0.0
        self._tracked: dict[str, Stateful] = {}
        self._used = False
        self._save_failed = False

    # --- the file ---------------------------------------------------------------------------

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` (tagged with this file's key and format) atomically."""
        buf = io.BytesIO()
        torch.save({**state, "format": FORMAT, "key": self.key}, buf)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, buf.getvalue())

    def load(self) -> tuple[dict[str, Any] | None, str]:
        """The saved state, or None with why a file found is not usable ("": there is none)."""
        if not self.path.is_file():
            return None, ""
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:
            return None, f"it is unreadable ({error_line(exc)})"
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            return None, "it is not a resume file of this robench version"
        if state.get("key") != self.key:
            return None, "it is of another training cell"
        return state, ""

    def discard(self) -> None:
        """Delete the file (and what a write killed half-way left of a new one)."""
        self.path.unlink(missing_ok=True)
        for tmp in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            tmp.unlink(missing_ok=True)

    # --- what train_loop calls --------------------------------------------------------------

    def track(self, name: str, obj: Stateful) -> None:
        """Keep ``obj``'s state (``state_dict``/``load_state_dict``) in every checkpoint and
        restore it on resume: for state of a defense's loss that the epoch after it depends on
        (a step counter, a running statistic). Call it before training starts."""
        self._tracked[name] = obj

    def claim(self) -> bool:
        """True the first time (the ``train_loop`` call that checkpoints), then False."""
        used, self._used = self._used, True
        return not used

    def resume(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        generators: Sequence[torch.Generator],
        device: torch.device,
        epochs: int,
    ) -> tuple[int, list[float], float]:
        """Restore the saved state into the freshly built training objects: ``(next epoch,
        losses of the finished epochs, their training seconds)``; ``(0, [], 0.0)`` when there is
        no usable file (everything is then left as it was, and ``note`` says why a file found
        was not used)."""
        state, why = self.load()
        if state is not None:
            before = self._snapshot(model, optimizer, scheduler, generators, device)
            try:
                self._restore(state, model, optimizer, scheduler, generators, device, epochs)
            except Exception as exc:
                self._apply(before, model, optimizer, scheduler, generators, device)
                why = error_line(exc, with_type=not isinstance(exc, ResumeError))
            else:
                k = int(state["next_epoch"])
                self.resumed_epoch = k
                self.restored_losses = [float(v) for v in state["losses"]]
                self.prior_seconds = float(state["seconds"])
                self._say(f"resumed at epoch {k}/{epochs} from {self.path.name}")
                return k, list(self.restored_losses), self.prior_seconds
        if why:
            self._say(f"resume file {self.path.name} not used: {why}; training from epoch 0")
        return 0, [], 0.0

    def checkpoint(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        generators: Sequence[torch.Generator],
        device: torch.device,
        *,
        epochs: int,
        next_epoch: int,
        losses: list[float],
        seconds: float,
    ) -> None:
        """Save the state after a finished epoch. A failed write is a note (once), never an
        error: the training goes on, it just cannot resume from this epoch."""
        state = self._snapshot(model, optimizer, scheduler, generators, device, copy_=False)
        state.update(epochs=epochs, next_epoch=next_epoch, losses=list(losses), seconds=seconds)
        try:
            self.save(state)
        except Exception as exc:
            if not self._save_failed:
                self._save_failed = True
                self._say(f"resume file {self.path.name} not written: {error_line(exc)}")

    # --- internals --------------------------------------------------------------------------

    def _say(self, text: str) -> None:
        if self.note is not None:
            self.note(text)

    def _snapshot(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        generators: Sequence[torch.Generator],
        device: torch.device,
        copy_: bool = True,
    ) -> dict[str, Any]:
        """Everything :meth:`_apply` restores (deep copies with ``copy_``, else references to
        live state, good for saving at once)."""
        np_state = np.random.get_state(legacy=True)
        assert isinstance(np_state, tuple)
        _, keys, pos, has_gauss, gauss = np_state
        state = {
            "device": device.type,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "generators": [g.get_state() for g in generators],
            "torch_cpu": torch.get_rng_state(),
            "torch_cuda": _cuda_states(device),
            "python": random.getstate(),
            "numpy": {
                "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "gauss": float(gauss),
            },
            "tracked": {name: obj.state_dict() for name, obj in self._tracked.items()},
        }
        return copy.deepcopy(state) if copy_ else state

    def _restore(
        self,
        state: dict[str, Any],
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        generators: Sequence[torch.Generator],
        device: torch.device,
        epochs: int,
    ) -> None:
        if state.get("device") != device.type:
            raise ResumeError(f"it was made on {state.get('device')}, training is on {device.type}")
        k, losses = state.get("next_epoch"), state.get("losses")
        if state.get("epochs") != epochs or not isinstance(k, int) or not 0 < k <= epochs:
            raise ResumeError(f"its epoch {k!r} of {state.get('epochs')!r} does not fit")
        if not isinstance(losses, list) or len(losses) != k:
            raise ResumeError("its epoch losses do not fit its epoch")
        if not isinstance(state.get("seconds"), int | float):
            raise ResumeError("it has no training seconds")
        if len(state.get("generators") or ()) != len(generators):
            raise ResumeError("its generators do not fit the training loop's")
        tracked = state.get("tracked")
        if not isinstance(tracked, dict) or set(tracked) != set(self._tracked):
            raise ResumeError(
                f"it keeps the state of {sorted(tracked or {})}, the defense "
                f"of {sorted(self._tracked)}"
            )
        self._apply(state, model, optimizer, scheduler, generators, device)

    def _apply(
        self,
        state: dict[str, Any],
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        generators: Sequence[torch.Generator],
        device: torch.device,
    ) -> None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        for name, obj in self._tracked.items():
            obj.load_state_dict(state["tracked"][name])
        for g, s in zip(generators, state["generators"], strict=True):
            g.set_state(s)
        torch.set_rng_state(state["torch_cpu"])
        if device.type == "cuda":
            for i, s in enumerate(state["torch_cuda"][: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
        n = state["numpy"]
        keys = n["keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["gauss"]))


def _cuda_states(device: torch.device) -> list[torch.Tensor]:
    """Every CUDA device's global RNG state when training is on CUDA (else none)."""
    if device.type != "cuda":
        return []
    return list(torch.cuda.get_rng_state_all())
