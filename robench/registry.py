"""Plugin discovery and the registry of attacks, defenses, models and datasets.

Built-in plugins register through the same hooks as third-party ones. Installed plugins are
found through the ``robench`` entry-point group. Environment variables give an escape hatch
from a broken plugin:

- ``ROBENCH_DISABLE_PLUGINS=1``: load no installed plugin, only the built-ins;
- ``ROBENCH_PLUGINS=a,b``: load only these entry points;
- ``ROBENCH_BLOCK_PLUGINS=a,b``: load every entry point except these (a built-in module's
  name, e.g. ``robench.attacks``, blocks that built-in).

A plugin that fails (import error, exception in a hook, unknown hook, invalid or duplicate
registration) does not stop the others: it is recorded in :attr:`Registry.failures`.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.metadata
import os
import re
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import pluggy

import robench
from robench import hookspecs
from robench.errors import ConfigError, PluginError, error_line

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
_EXCLUSIONS = "robench_register_exclusions"
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


@dataclass(frozen=True)
class Exclusion:
    """A name a plugin deliberately does not provide, and why (``robench_register_exclusions``)."""

    kind: Kind
    name: str
    reason: str
    plugin: str
    distribution: str
    version: str

    @property
    def source(self) -> str:
        return _describe(self.plugin, self.distribution, self.version)


class Registry:
    """The registered plugins, by kind and name. Build it with :func:`get_registry`."""

    def __init__(
        self,
        entries: Iterable[Entry],
        failures: Iterable[PluginFailure] = (),
        excluded: Iterable[Exclusion] = (),
    ) -> None:
        self._by_kind: dict[Kind, dict[str, Entry]] = {k: {} for k in KINDS}
        for e in entries:
            self._by_kind[e.kind][e.name] = e
        #: the plugins that failed to load and contribute nothing, in loading order
        self.failures: list[PluginFailure] = list(failures)
        #: the names plugins exclude, with their reasons, by ``(kind, name)``
        self.excluded: dict[tuple[Kind, str], Exclusion] = {(x.kind, x.name): x for x in excluded}

    def names(self, kind: Kind) -> list[str]:
        return sorted(self._by_kind[kind])

    def entries(self, kind: Kind | None = None) -> list[Entry]:
        kinds = KINDS if kind is None else (kind,)
        return [self._by_kind[k][n] for k in kinds for n in sorted(self._by_kind[k])]

    def get(self, kind: Kind, name: str) -> Entry:
        """The entry for ``name``; a :class:`ConfigError` with a did-you-mean if unknown, naming
        the plugins that failed to load (any of them might have provided it)."""
        try:
            return self._by_kind[kind][name]
        except KeyError:
            excluded = self.excluded.get((kind, name))
            if excluded is not None:
                raise ConfigError(
                    f"{kind} {name!r} is excluded by {excluded.source}: {excluded.reason}"
                ) from None
            message = unknown_name_message(kind, name, self.names(kind))
            for f in self.failures:
                message += (
                    f"; {f.source} failed to load and might have provided it: {f.reason} ({f.hint})"
                )
            raise ConfigError(message) from None

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


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded or registered; it contributes no entries at all.

    ``message`` is one line naming the plugin, its distribution and version and what went
    wrong (``reason``: the exception's type and the first line of its message);
    ``traceback`` is the full traceback text (``robench --debug`` shows it).
    """

    plugin: str
    distribution: str
    version: str
    message: str
    traceback: str
    reason: str = ""
    builtin: bool = False

    @property
    def source(self) -> str:
        """``plugin 'art' (robench-art 0.1.0)``."""
        return _describe(self.plugin, self.distribution, self.version)

    @property
    def hint(self) -> str:
        return f"skip it with ROBENCH_BLOCK_PLUGINS={self.plugin}"

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})"


_UNKNOWN_DIST = "(unknown)"


def _describe(plugin: str, dist: str, version: str) -> str:
    if dist == _UNKNOWN_DIST:
        return f"plugin {plugin!r}"
    return f"plugin {plugin!r} ({dist} {version})".replace(" )", ")")


def _reason(exc: BaseException) -> str:
    """``Type: first line of the message`` (robench's own plugin errors without the type)."""
    if isinstance(exc, pluggy.PluginValidationError):  # a bad hook signature: several lines
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        return "bad hook signature: " + "; ".join(lines[1:] or lines)
    return error_line(exc, with_type=not isinstance(exc, PluginError))


@dataclass
class _Loaded:
    """A plugin object registered with the plugin manager, and where it came from."""

    obj: object
    name: str
    distribution: str
    version: str
    builtin: bool


class _Loader:
    """Loads plugins one by one; a plugin that fails becomes a :class:`PluginFailure`."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("robench")
        self.pm.add_hookspecs(hookspecs)
        self.loaded: list[_Loaded] = []
        self.failures: list[PluginFailure] = []

    def fail(self, name: str, dist: str, version: str, exc: BaseException, builtin: bool):
        reason = _reason(exc)
        if builtin:
            reason += " (a bug in robench: please report it)"
        message = f"{_describe(name, dist, version)} failed to load: {reason}"
        tb = "".join(traceback.format_exception(exc))
        self.failures.append(PluginFailure(name, dist, version, message, tb, reason, builtin))

    def add(self, load, name: str | None, dist: str, version: str, builtin: bool = False):
        """Import (``load()``) and register one plugin; record a failure instead of raising."""
        shown = name or "?"
        try:
            obj = load()
            shown = name or getattr(obj, "__name__", None) or repr(obj)
            registered = self.pm.register(obj, name=name)
            if registered is None:  # None, or a blocked name
                return
            shown = registered
            self._check_known_hooks(obj)
        except Exception as exc:
            self.fail(shown, dist, version, exc, builtin)
            return
        self.loaded.append(_Loaded(obj, registered, dist, version, builtin))

    def _check_known_hooks(self, obj: object) -> None:
        for caller in self.pm.get_hookcallers(obj) or []:
            mine = [i for i in caller.get_hookimpls() if i.plugin is obj]
            if not caller.has_spec() and not all(i.optionalhook for i in mine):
                self.pm.unregister(obj)
                known = sorted([*_HOOKS.values(), _EXCLUSIONS])
                raise PluginError(
                    f"unknown hook {caller.name!r}{did_you_mean(caller.name, known)} "
                    f"(known hooks: {', '.join(known)})"
                )

    def entry_points(self) -> None:
        """The installed plugins of the ``robench`` entry-point group, each on its own."""
        if os.environ.get("ROBENCH_DISABLE_PLUGINS", "").strip().lower() in ("1", "true", "yes"):
            return
        blocked = set(_env_list("ROBENCH_BLOCK_PLUGINS"))
        allowed = set(_env_list("ROBENCH_PLUGINS"))
        seen: dict[str, str] = {}
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in blocked or (allowed and ep.name not in allowed):
                continue
            dist, version = _UNKNOWN_DIST, ""
            if ep.dist is not None:
                dist = ep.dist.metadata["Name"] or ep.dist.name
                version = ep.dist.version
            if ep.name in seen:
                if seen[ep.name] != dist:
                    exc = PluginError(
                        f"entry point name {ep.name!r} is already used by distribution "
                        f"{seen[ep.name]}"
                    )
                    self.fail(ep.name, dist, version, exc, builtin=False)
                continue
            seen[ep.name] = dist
            self.add(ep.load, ep.name, dist, version)

    def collect(self) -> Registry:
        """Call each plugin's registration hooks; a plugin whose hooks raise, or that
        registers anything invalid, is a failure and contributes nothing."""
        bases = {}
        for kind, (module, attr) in _BASES.items():
            bases[kind] = getattr(importlib.import_module(module), attr)
        entries: dict[tuple[Kind, str], Entry] = {}
        excluded: list[Exclusion] = []
        for p in self.loaded:
            staged: dict[tuple[Kind, str], Entry] = {}
            staged_out: list[Exclusion] = []
            try:
                self._call_hooks(p, bases, entries, staged, staged_out)
            except Exception as exc:
                self.fail(p.name, p.distribution, p.version, exc, p.builtin)
                continue
            entries.update(staged)
            excluded += staged_out
        return Registry(entries.values(), self.failures, excluded)

    def _call_hooks(
        self, p: _Loaded, bases: dict, entries: dict, staged: dict, excluded: list[Exclusion]
    ) -> None:
        """Call ``p``'s registration hooks through pluggy (its own implementations only, so
        wrappers work), collecting what it registers into ``staged`` and ``excluded``."""
        open_ = True  # a plugin that keeps ``register`` and calls it later gets an error
        who = _describe(p.name, p.distribution, p.version)
        others = [q.obj for q in self.loaded if q.obj is not p.obj]

        def still_open() -> None:
            if not open_:
                raise PluginError(f"{who} called register after its hook returned")

        def exclude(kind: Any, name: Any, reason: Any) -> None:
            still_open()
            if kind not in KINDS or not isinstance(name, str) or not _NAME.match(name):
                raise PluginError(
                    f"it excluded {kind!r} {name!r}: expected a kind among {', '.join(KINDS)} "
                    "and a valid name"
                )
            if not isinstance(reason, str) or not reason.strip():
                raise PluginError(f"it excluded {kind} {name!r} without a reason")
            excluded.append(Exclusion(kind, name, reason.strip(), *_where(p)))

        try:
            for kind, hook_name in _HOOKS.items():

                def register(cls: Any, *, _kind: Kind = kind) -> None:
                    still_open()
                    _add(entries, staged, _kind, bases[_kind], cls, p)

                self.pm.subset_hook_caller(hook_name, others)(register=register)
            self.pm.subset_hook_caller(_EXCLUSIONS, others)(exclude=exclude)
        finally:
            open_ = False


def _where(p: _Loaded) -> tuple[str, str, str]:
    return p.name, p.distribution, p.version


def _env_list(var: str) -> list[str]:
    return [s.strip() for s in os.environ.get(var, "").split(",") if s.strip()]


def _add(entries, staged, kind: Kind, base: type, cls: Any, p: _Loaded) -> None:
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginError(f"it registered {cls!r} as a {kind}, but that is no {base.__name__}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise PluginError(
            f"it registered {cls.__name__} without a valid name (got {name!r}; expected "
            "letters, digits, '.', '_' or '-', starting with a letter)"
        )
    key = (kind, name)
    if key in staged:
        raise PluginError(f"it registered the {kind} name {name!r} twice")
    if key in entries:
        first = entries[key]
        raise PluginError(
            f"duplicate {kind} name {name!r}: already registered by "
            f"{_describe(first.plugin, first.distribution, first.version)}"
        )
    staged[key] = Entry(kind, name, cls, p.name, p.distribution, p.version)


def build_registry(*, entry_points: bool = True, plugins: Iterable[object] = ()) -> Registry:
    """Build a fresh registry: the built-ins, installed plugins (unless ``entry_points`` is
    False) and ``plugins`` (modules or objects with hook implementations, e.g. in a notebook).

    Never raises for a broken plugin: a plugin that fails to import, implements an unknown
    hook, raises in a hook or registers something invalid (including a name already taken: the
    first registration wins) is left out entirely and listed in ``registry.failures``.
    """
    loader = _Loader()
    blocked = set(_env_list("ROBENCH_BLOCK_PLUGINS"))
    for modname in BUILTINS:
        if modname not in blocked:
            load = functools.partial(importlib.import_module, modname)
            loader.add(load, modname, "robench", robench.__version__, builtin=True)
    for plugin in plugins:
        loader.add(lambda plugin=plugin: plugin, None, _UNKNOWN_DIST, "")
    if entry_points:
        loader.entry_points()
    return loader.collect()


@functools.cache
def get_registry() -> Registry:
    """The registry of this process, built once on first use."""
    return build_registry()
