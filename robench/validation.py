"""Turning validation failures into one-line :class:`~robench.errors.ConfigError` messages, and
validating plugin references (names, parameters, nested attack specs) against the registry."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from robench.errors import ConfigError
from robench.plugin import Params
from robench.registry import Entry, Kind, Registry, did_you_mean
from robench.specs import AttackSpec
from robench.training_config import TrainingConfig


def _loc(parts: tuple[Any, ...]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def shown(value: Any, limit: int = 80) -> str:
    """A value as an error message shows it: TOML's spelling of booleans, else its repr, cut
    short where long."""
    text = str(value).lower() if isinstance(value, bool) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _message(err: dict[str, Any]) -> str:
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if err["type"] == "missing":
        return "required but missing"
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] in ("model_type", "model_attributes_type", "dict_type"):
        msg = "expected a table"
    if "input" in err:
        msg += f" (got {shown(err['input'])})"
    return msg


def raise_one_line(
    exc: ValidationError, prefix: str, source: str | None, owner: str, known: list[str]
) -> None:
    errors = exc.errors()
    err = errors[0]
    loc = _loc(err["loc"])
    where = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
    msg = _message(err)
    if err["type"] == "extra_forbidden":
        key = err["loc"][-1]
        accepted = ", ".join(known) if known else "none"
        msg = f"{owner} has no key {key!r}{did_you_mean(key, known)} (accepted: {accepted})"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    raise ConfigError(msg + more, field=where, source=source) from None


#: integers in a benchmark file must fit in a signed 64-bit integer (torch's and the results'
#: integer type); tomllib reads integers of any size
INT_LIMIT = 2**63


def check_numbers(
    raw: Any, source: str | None, *, ints: bool = True, loc: tuple[Any, ...] = ()
) -> None:
    """Refuse a non-finite float (TOML's ``inf``, ``nan``) or, with ``ints``, an integer beyond
    64 bits anywhere in a benchmark file: no setting of robench or its plugins takes one."""
    if isinstance(raw, dict):
        for key, value in raw.items():
            check_numbers(value, source, ints=ints, loc=(*loc, key))
    elif isinstance(raw, list | tuple):
        for i, value in enumerate(raw):
            check_numbers(value, source, ints=ints, loc=(*loc, i))
    elif isinstance(raw, float) and not math.isfinite(raw):
        raise ConfigError(f"expected a finite number (got {raw})", field=_loc(loc), source=source)
    elif ints and type(raw) is int and not -INT_LIMIT <= raw < INT_LIMIT:
        raise ConfigError(
            f"integer out of range: expected one from -2**63 to 2**63 - 1 (got {raw})",
            field=_loc(loc),
            source=source,
        )


def _coerced_bool(raw: Any, value: Any, loc: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """Where pydantic turned a boolean of ``raw`` into a number of ``value`` (its lax mode
    reads ``true`` as 1 for an int or float field), or None."""
    if not isinstance(raw, dict | list | tuple) and isinstance(value, list | tuple):
        return _coerced_bool(raw, value[0], loc) if len(value) == 1 else None  # one → [one]
    if isinstance(raw, bool):
        return loc if isinstance(value, int | float) and not isinstance(value, bool) else None
    if isinstance(raw, dict):
        if isinstance(value, BaseModel):
            fields = {(f.alias or name): name for name, f in type(value).model_fields.items()}
            pairs = [(k, r, getattr(value, fields[k])) for k, r in raw.items() if k in fields]
        elif isinstance(value, dict):
            pairs = [(k, r, value[k]) for k, r in raw.items() if k in value]
        else:
            return None
        for key, r, v in pairs:
            found = _coerced_bool(r, v, (*loc, key))
            if found is not None:
                return found
    elif isinstance(raw, list | tuple) and isinstance(value, list | tuple):
        if len(raw) != len(value):
            return None
        for i, (r, v) in enumerate(zip(raw, value, strict=True)):
            found = _coerced_bool(r, v, (*loc, i))
            if found is not None:
                return found
    return None


def check_no_bool_numbers(
    raw: Any, value: Any, prefix: str, source: str | None, prefix_of=None
) -> None:
    """Refuse a boolean given where a number is expected: booleans are not numbers, though
    pydantic's lax mode reads ``true`` as 1. Compares the raw input with the validated model,
    so a parameter that is a boolean (or takes any value) keeps its boolean.
    ``prefix_of(key)`` gives the prefix for a top-level key (default: ``prefix``)."""
    loc = _coerced_bool(raw, value, ())
    if loc is None:
        return
    head = prefix_of(loc[0]) if prefix_of is not None and loc else prefix
    rest = _loc(loc)
    where = f"{head}.{rest}" if head and rest else (head or rest)
    got = shown(_dig(raw, loc))
    raise ConfigError(f"expected a number, not a boolean (got {got})", field=where, source=source)


def _dig(raw: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        if isinstance(raw, dict | list | tuple):
            raw = raw[part]
    return raw


class Validator:
    """Validates a benchmark's plugin references against ``registry``; with ``build`` False, a
    built-in's entry is its torch-free base (:meth:`~robench.registry.Registry.get_base`)."""

    def __init__(
        self, registry: Registry, source: str | None, base_dir: Path, build: bool = True
    ) -> None:
        self.registry = registry
        self.source = source
        self.context = {"base_dir": base_dir, "registry": registry}
        self.get = registry.get if build else registry.get_base

    def entry(self, kind: Kind, name: str, where: str) -> Entry:
        try:
            return self.get(kind, name)
        except ConfigError as exc:
            raise ConfigError(exc.detail, field=f"{where}.name", source=self.source) from None

    def params(self, entry: Entry, raw: dict[str, Any], where: str) -> Params:
        cls = entry.cls.Params
        try:
            params = cls.model_validate(raw, context=self.context)
        except ValidationError as exc:
            owner = f"{entry.kind} {entry.name!r}"
            raise_one_line(exc, where, self.source, owner, list(cls.model_fields))
        check_no_bool_numbers(raw, params, where, self.source)
        for fname in cls.model_fields:
            value = getattr(params, fname)
            if isinstance(value, AttackSpec):
                self.attack_spec(value, f"{where}.{fname}")
        return params

    def attack_spec(self, spec: AttackSpec, where: str) -> None:
        entry = self.entry("attack", spec.name, where)
        self.norm(entry, spec.norm, where)
        self.params(entry, spec.params, where)

    def norm(self, entry: Entry, norm: str, where: str) -> None:
        if norm not in entry.cls.norms:
            raise ConfigError(
                f"attack {entry.name!r} does not support norm {norm!r} "
                f"(supports {', '.join(entry.cls.norms)})",
                field=f"{where}.norm",
                source=self.source,
            )

    def training(self, base: dict[str, Any], override: dict[str, Any], where: str):
        def prefix_of(key: Any) -> str:
            # a key of the entry's own table, or one of [training] that only the entry's
            # settings make wrong (schedule = "multi-step" there, no milestone_epochs): the entry
            if key in override or (override and _valid(base)):
                return where
            return "training"

        raw = {**base, **override}
        try:
            config = TrainingConfig.model_validate(raw)
        except ValidationError as exc:
            loc = exc.errors()[0]["loc"]
            prefix = prefix_of(loc[0]) if loc else "training"
            known = list(TrainingConfig.model_fields)
            raise_one_line(exc, prefix, self.source, "[training]", known)
        check_no_bool_numbers(raw, config, "training", self.source, prefix_of)
        return config


def _valid(training: dict[str, Any]) -> bool:
    """Whether ``training`` is a valid ``[training]`` table on its own."""
    try:
        TrainingConfig.model_validate(training)
    except ValidationError:
        return False
    return True


def check_unique(labels: list[str], what: str, source: str | None) -> None:
    seen: set[str] = set()
    for i, label in enumerate(labels):
        if label in seen:
            raise ConfigError(
                f"label {label!r} is used twice; give each entry a distinct label",
                field=f"{what}[{i}].label",
                source=source,
            )
        seen.add(label)
