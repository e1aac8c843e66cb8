"""Turning validation failures into one-line :class:`~robench.errors.ConfigError` messages, and
validating plugin references (names, parameters, nested attack specs) against the registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from robench.errors import ConfigError
from robench.plugin import Params
from robench.registry import Entry, Kind, Registry, did_you_mean
from robench.specs import AttackSpec
from robench.training import TrainingConfig


def _loc(parts: tuple[Any, ...]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _message(err: dict[str, Any]) -> str:
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if err["type"] == "missing":
        return "required but missing"
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if "input" in err and err["type"] not in ("model_type", "dict_type"):
        msg += f" (got {err['input']!r})"
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


class Validator:
    def __init__(self, registry: Registry, source: str | None, base_dir: Path) -> None:
        self.registry = registry
        self.source = source
        self.context = {"base_dir": base_dir, "registry": registry}

    def entry(self, kind: Kind, name: str, where: str) -> Entry:
        try:
            return self.registry.get(kind, name)
        except ConfigError as exc:
            raise ConfigError(exc.detail, field=f"{where}.name", source=self.source) from None

    def params(self, entry: Entry, raw: dict[str, Any], where: str) -> Params:
        cls = entry.cls.Params
        try:
            params = cls.model_validate(raw, context=self.context)
        except ValidationError as exc:
            owner = f"{entry.kind} {entry.name!r}"
            raise_one_line(exc, where, self.source, owner, list(cls.model_fields))
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
        try:
            return TrainingConfig.model_validate({**base, **override})
        except ValidationError as exc:
            loc = exc.errors()[0]["loc"]
            in_override = bool(loc) and loc[0] in override
            prefix = where if in_override else "training"
            known = list(TrainingConfig.model_fields)
            raise_one_line(exc, prefix, self.source, "[training]", known)


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
