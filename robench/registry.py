"""Plugin discovery and the registry of attacks, defenses, models and datasets.

Built-in plugins register through the same hooks as third-party ones. Installed plugins are
found through the ``robench`` entry-point group. Environment variables give an escape hatch
from a broken plugin:

- ``ROBENCH_DISABLE_PLUGINS=1``: load no installed plugin, only the built-ins;
- ``ROBENCH_PLUGINS=a,b``: load only these entry points;
- ``ROBENCH_BLOCK_PLUGINS=a,b``: load every entry point except these.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import pluggy

import robench
from robench import hookspecs
from robench.errors import ConfigError, PluginError

ENTRY_POINT_GROUP = "robench"
Kind = Literal["attack", "defense", "model", "dataset"]
KINDS: tuple[Kind, ...] = ("dataset", "model", "defense", "attack")
_HOOKS: dict[Kind, str] = {
    "attack": "robench_register_attacks",
    "defense": "robench_register_defenses",
    "model": "robench_register_models",
    "dataset": "robench_register_datasets",
}
_BASES: dict[Kind, tuple[str, str]] = {
    "attack": ("robench.attack", "Attack"),
    "defense": ("robench.defense", "Defense"),
    "model": ("robench.model", "Model"),
    "dataset": ("robench.dataset", "Dataset"),
}
#: The modules holding the built-in plugins.
BUILTINS = ("robench.datasets", "robench.models", "robench.defenses", "robench.attacks")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class Entry:
    """One registered class and where it came from."""

    kind: Kind
    name: str
    cls: type
    plugin: str
    distribution: str
    version: str

    @property
    def description(self) -> str:
        return self.cls.description()


class Registry:
    """The registered plugins, by kind and name. Build it with :func:`get_registry`."""

    def __init__(self, entries: Iterable[Entry]) -> None:
        self._by_kind: dict[Kind, dict[str, Entry]] = {k: {} for k in KINDS}
        for e in entries:
            self._by_kind[e.kind][e.name] = e

    def names(self, kind: Kind) -> list[str]:
        return sorted(self._by_kind[kind])

    def entries(self, kind: Kind | None = None) -> list[Entry]:
        kinds = KINDS if kind is None else (kind,)
        return [self._by_kind[k][n] for k in kinds for n in sorted(self._by_kind[k])]

    def get(self, kind: Kind, name: str) -> Entry:
        """The entry for ``name``; a :class:`ConfigError` with a did-you-mean if unknown."""
        try:
            return self._by_kind[kind][name]
        except KeyError:
            raise ConfigError(unknown_name_message(kind, name, self.names(kind))) from None

    def __contains__(self, item: tuple[Kind, str]) -> bool:
        kind, name = item
        return name in self._by_kind[kind]


def did_you_mean(name: object, known: list[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``known``, or ``""``."""
    lowered = [k for k in known if k.lower() == str(name).lower()]
    close = lowered or difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def unknown_name_message(kind: str, name: object, known: list[str]) -> str:
    listing = ", ".join(known) if len(known) <= 12 else f"{len(known)} names (robench list)"
    return f"unknown {kind} {name!r}{did_you_mean(name, known)} (known: {listing})"


def _plugin_manager(entry_points: bool, plugins: Iterable[object]) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("robench")
    pm.add_hookspecs(hookspecs)
    for modname in BUILTINS:
        pm.register(importlib.import_module(modname), name=modname)
    for plugin in plugins:
        pm.register(plugin)
    if entry_points and os.environ.get("ROBENCH_DISABLE_PLUGINS", "") not in ("1", "true"):
        blocked = _env_list("ROBENCH_BLOCK_PLUGINS")
        for name in blocked:
            pm.set_blocked(name)
        allowed = _env_list("ROBENCH_PLUGINS")
        try:
            if allowed:
                for name in allowed:
                    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)
            else:
                pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:  # an entry point that fails to import
            raise PluginError(
                f"a robench plugin failed to load: {type(exc).__name__}: {exc} "
                "(set ROBENCH_BLOCK_PLUGINS=<name> or ROBENCH_DISABLE_PLUGINS=1 to skip it)"
            ) from exc
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(
            f"plugin {exc.plugin!r} implements an unknown hook: {exc} "
            f"(known hooks: {', '.join(sorted(_HOOKS.values()))})"
        ) from exc
    return pm


def _env_list(var: str) -> list[str]:
    return [s.strip() for s in os.environ.get(var, "").split(",") if s.strip()]


def _distributions(pm: pluggy.PluginManager) -> dict[int, tuple[str, str]]:
    found = {id(pm.get_plugin(m)): ("robench", robench.__version__) for m in BUILTINS}
    for plugin, dist in pm.list_plugin_distinfo():
        found[id(plugin)] = (dist.metadata["name"], dist.version)
    return found


def collect(pm: pluggy.PluginManager) -> Registry:
    """Call every registration hook and build the registry, refusing duplicates."""
    dists = _distributions(pm)
    entries: dict[tuple[Kind, str], Entry] = {}
    for kind, hook_name in _HOOKS.items():
        module, attr = _BASES[kind]
        base = getattr(importlib.import_module(module), attr)
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            dist, version = dists.get(id(impl.plugin), ("(unknown)", ""))

            def register(cls: Any, *, _impl=impl, _kind=kind, _base=base, _d=(dist, version)):
                _add(entries, _kind, _base, cls, _impl.plugin_name, *_d)

            impl.function(**{arg: register for arg in impl.argnames})
    return Registry(entries.values())


def _add(entries, kind: Kind, base: type, cls: Any, plugin: str, dist: str, version: str) -> None:
    where = f"plugin {plugin!r} ({dist} {version})".rstrip()
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginError(f"{where} registered {cls!r} as a {kind}, but it is no {base.__name__}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise PluginError(
            f"{where} registered {cls.__name__} without a valid name (got {name!r}; expected "
            "letters, digits, '.', '_' or '-', starting with a letter)"
        )
    key = (kind, name)
    if key in entries:
        first = entries[key]
        raise PluginError(
            f"duplicate {kind} name {name!r}: registered by plugin {first.plugin!r} "
            f"({first.distribution} {first.version}) and by {where}"
        )
    entries[key] = Entry(kind, name, cls, plugin, dist, version)


def build_registry(*, entry_points: bool = True, plugins: Iterable[object] = ()) -> Registry:
    """Build a fresh registry: the built-ins, installed plugins (unless ``entry_points`` is
    False) and ``plugins`` (modules or objects with hook implementations, e.g. in a notebook).
    """
    return collect(_plugin_manager(entry_points, plugins))


@functools.cache
def get_registry() -> Registry:
    """The registry of this process, built once on first use."""
    return build_registry()
