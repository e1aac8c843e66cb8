"""The torch-free half of each plugin contract: what a benchmark's validation reads.

Validating a benchmark (``robench validate``, and ``robench run`` before it starts) needs of
each plugin it names only its ``name``, its :class:`~robench.plugin.Params` and its
configuration checks: an attack's ``norms`` and :meth:`AttackBase.check`, a defense's
``training_defaults``, a model's :meth:`ModelBase.check`, a dataset's :meth:`DatasetBase.check`
and :meth:`DatasetBase.info`. Those live here, in classes that import no torch; the contracts
(:class:`robench.attack.Attack`, :class:`robench.defense.Defense`, :class:`robench.model.Model`,
:class:`robench.dataset.Dataset`) extend them with what runs. robench's built-in plugins put
their own validation half in such a class too (``robench/attacks/bases.py`` and its siblings),
which their contract class extends, so that a benchmark of built-ins validates without torch
(:meth:`robench.registry.Registry.get_base`). Plugins derive from the contracts in
:mod:`robench.api`, never from these.
"""

from __future__ import annotations

import os
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from robench.errors import ConfigError
from robench.plugin import Params, Plugin
from robench.specs import NORMS, Norm


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset."""

    name: str
    #: (channels, height, width)
    shape: tuple[int, int, int]
    num_classes: int
    #: per-channel statistics for the model's input normalisation
    mean: tuple[float, ...]
    std: tuple[float, ...]
    bounds: tuple[float, float] = (0.0, 1.0)
    #: provenance of the data actually read (recorded with every result)
    note: str = ""
    #: the number of test examples, where known without loading the split (None: unknown);
    #: a benchmark's explicit ``[evaluation] n_examples`` is checked against it
    test_size: int | None = None


class AttackBase(Plugin):
    """An attack's name, norms, parameters and configuration check (:class:`robench.attack.
    Attack` adds the attack)."""

    kind: ClassVar[str] = "attack"
    #: the norms this attack can work in
    norms: ClassVar[tuple[Norm, ...]] = NORMS

    @classmethod
    def check(cls, params: Params, info: DatasetInfo) -> None:
        """Raise :class:`~robench.errors.ConfigError` (``field``: the parameter at fault) if
        ``params`` cannot work on the dataset ``info`` describes, e.g. more target classes than
        it has. ``robench run`` and ``robench validate`` call it before anything runs; the
        default accepts everything."""


class DefenseBase(Plugin):
    """A defense's name, parameters and training defaults (:class:`robench.defense.Defense`
    adds the training)."""

    kind: ClassVar[str] = "defense"
    #: False for a defense that loads a model trained elsewhere (``checkpoint``): ``fit`` then
    #: trains nothing, and the training settings do not apply to it
    trains: ClassVar[bool] = True
    #: training settings this defense uses unless the benchmark sets them (e.g. Fast AT's
    #: ``{"schedule": "cyclic"}``); applied when a benchmark is loaded (so results record them)
    #: and by :meth:`TrainContext.with_training_defaults` in the defense's own ``fit``
    training_defaults: ClassVar[dict[str, Any]] = {}


class ModelBase(Plugin):
    """A model's name, parameters and input check (:class:`robench.model.Model` adds the
    network)."""

    kind: ClassVar[str] = "model"
    #: input shapes (C, H, W) this model accepts; None means any
    input_shapes: ClassVar[tuple[tuple[int, int, int], ...] | None] = None

    def check(self, info: DatasetInfo) -> None:
        """Raise :class:`ConfigError` if this model cannot take the dataset's inputs."""
        if self.input_shapes is not None and info.shape not in self.input_shapes:
            shapes = " or ".join("×".join(map(str, s)) for s in self.input_shapes)
            got = "×".join(map(str, info.shape))
            raise ConfigError(
                f"model {self.name!r} takes {shapes} inputs, but dataset {info.name!r} has {got}"
            )


class DatasetBase(Plugin):
    """A dataset's name, parameters, description and check (:class:`robench.dataset.Dataset`
    adds the loading)."""

    kind: ClassVar[str] = "dataset"

    @abstractmethod
    def info(self, root: Path) -> DatasetInfo:
        """Describe the data (cheaply: without loading every example if possible)."""

    def check(self, root: Path) -> None:
        """Raise :class:`~robench.errors.ConfigError` if the data cannot be read from ``root``.

        Called while a benchmark is validated, before anything trains, and without downloading
        anything. The default calls :meth:`info`.
        """
        self.info(root)


def unwritable_dir(path: Path) -> str | None:
    """Why a folder cannot be made or written at ``path`` (None if it can): ``path`` is a
    writable directory, or the nearest of its ancestors that exists is one (checked without
    creating anything)."""
    path = Path(path).expanduser().absolute()
    probe = path
    while not probe.exists():
        if probe.is_symlink():
            return f"{probe} is a broken symbolic link"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a directory" if probe == path else f"{probe} is a file"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None
