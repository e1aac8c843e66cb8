"""What every check shares: the failure type, and the checks every plugin kind must pass (it
registers under its name, describes itself, and its parameters validate)."""

from __future__ import annotations

import contextlib
import random
import types
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

import robench
from robench.errors import error_line
from robench.plugin import Params, Plugin


class ContractViolation(AssertionError):
    """A plugin broke robench's contract for its kind. ``str(err)`` is one line naming the
    plugin and what broke; it is an :class:`AssertionError`, so pytest reports it as a failed
    assertion."""


def who(kind: str, cls: type) -> str:
    """``attack 'my-attack'`` (or the class name when the name is missing)."""
    name = getattr(cls, "name", None)
    return f"{kind} {name!r}" if isinstance(name, str) else f"{kind} class {cls.__name__}"


def fail(subject: str, what: str, cause: BaseException | None = None) -> ContractViolation:
    """The violation to raise: ``subject what`` on one line."""
    err = ContractViolation(" ".join(f"{subject} {what}".split()))
    err.__cause__ = cause
    return err


def check_registration(kind: str, cls: Any, base: type[Plugin]) -> str:
    """Fail unless ``cls`` is a ``base`` subclass that robench's registry accepts as ``kind``
    (a valid, free name: the same checks ``robench list`` makes) and that has a description;
    returns the plugin's subject line (``attack 'x'``)."""
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise fail(f"{cls!r}", f"is not a subclass of robench.api.{base.__name__}")
    subject = who(kind, cls)
    from robench.registry import build_registry

    hook = f"robench_register_{kind}s"

    def register_it(register: Any) -> None:
        register(cls)

    plugin = types.ModuleType(f"robench_testing_{cls.__name__}")
    setattr(plugin, hook, robench.hookimpl(register_it, specname=hook))
    registry = build_registry(entry_points=False, plugins=[plugin])
    registered = {e.name: e for e in registry.entries(kind)}  # type: ignore[arg-type]
    entry = registered.get(getattr(cls, "name", None))  # type: ignore[arg-type]
    if entry is None or entry.cls is not cls:
        reasons = [f.reason for f in registry.failures if f.plugin == plugin.__name__]
        raise fail(subject, f"is refused by robench's registry: {'; '.join(reasons) or '?'}")
    if not cls.description() or cls.description() == base.description():
        raise fail(
            subject,
            "has no docstring of its own: `robench list` shows its first line (else robench's "
            f"{base.__name__} base class's)",
        )
    return subject


def check_params(subject: str, cls: type[Plugin], given: Mapping[str, Any]) -> Params:
    """``cls.Params`` built from ``cls.example_params`` updated with ``given``."""
    if not (isinstance(cls.Params, type) and issubclass(cls.Params, Params)):
        raise fail(subject, "has a Params that is not a subclass of robench.api.Params")
    values = {**cls.example_params, **given}
    try:
        return cls.Params(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "(all)"
        raise fail(
            subject, f"parameters {values!r} do not validate: {where}: {first['msg']}", exc
        ) from exc


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Python's, NumPy's and torch's (CPU) global generators seeded with ``seed`` as robench
    seeds them before training and every cell, and put back as they were afterwards."""
    from robench.reproducibility import seed_everything

    states = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        seed_everything(seed)
        try:
            yield
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])


def raised(subject: str, action: str, exc: BaseException) -> ContractViolation:
    """The violation for a plugin that raised ``exc`` while doing ``action``."""
    return fail(subject, f"raised {error_line(exc)} {action}", exc)
