"""Hook specifications: the whole plugin API of robench.

A plugin is any module or object with functions marked ``@robench.hookimpl`` whose names are
among these. Each hook receives a ``register`` callable; call it once per class you provide::

    import robench
    from robench.api import Attack

    class MyAttack(Attack):
        name = "my-attack"
        ...

    @robench.hookimpl
    def robench_register_attacks(register):
        register(MyAttack)

Installed plugins are found through the ``robench`` entry-point group
(``[project.entry-points.robench] my_plugin = "my_package.plugin"``). Names must be unique
across all plugins: on a clash the later plugin is left out and reported in one line naming
both (as is a plugin whose import or hooks raise: it fails alone, the others keep working).
Hooks are always called with keyword arguments, so new arguments may be added to a spec
without breaking implementations that take fewer. robench calls each plugin's hooks through
pluggy, one plugin at a time (a ``wrapper=True`` or ``hookwrapper=True`` implementation wraps
that plugin's own implementations of the hook).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from robench.api import Attack, Dataset, Defense, Model

hookspec = pluggy.HookspecMarker("robench")


@hookspec
def robench_register_attacks(register: Callable[[type[Attack]], None]) -> None:
    """Register attack classes (subclasses of :class:`robench.api.Attack`).

    An attack crafts adversarial examples for a model inside a threat model (norm, ε, bounds).
    The framework enforces the contract around it (eval mode, no weight gradients, projection
    into the ε-ball and bounds), so an attack only implements ``run``.
    """


@hookspec
def robench_register_defenses(register: Callable[[type[Defense]], None]) -> None:
    """Register defense classes (subclasses of :class:`robench.api.Defense`).

    A defense turns a freshly built model and a training set into a trained (possibly wrapped)
    model, e.g. by adversarial training. Training settings come from the benchmark file.
    """


@hookspec
def robench_register_models(register: Callable[[type[Model]], None]) -> None:
    """Register model classes (subclasses of :class:`robench.api.Model`).

    A model plugin builds a ``torch.nn.Module`` for a dataset's input shape and number of
    classes. The module takes images in [0, 1] and returns logits; any input normalisation
    lives inside it.
    """


@hookspec
def robench_register_exclusions(exclude: Callable[[str, str, str], None]) -> None:
    """Say which names a plugin deliberately does not provide, and why.

    Call ``exclude(kind, name, reason)`` for each, e.g. ``exclude("attack", "art.PixelAttack",
    "an L0 attack: no L∞ or L2 threat model")``: a benchmark that asks for the name gets the
    reason instead of a bare "unknown attack", and ``robench list --excluded`` lists them all.
    """


@hookspec
def robench_register_datasets(register: Callable[[type[Dataset]], None]) -> None:
    """Register dataset classes (subclasses of :class:`robench.api.Dataset`).

    A dataset plugin loads a train and a test split as float images in [0, 1] (N×C×H×W) and
    integer labels, and describes its shape, classes and normalisation statistics.
    """
