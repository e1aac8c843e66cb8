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

Plugins are imported lazily: what a plugin registered is kept in the catalogue cache
(:mod:`robench.catalogue`), and a later registry lists it from there and imports the plugin
only when one of its names is used (:meth:`Registry.get`, :meth:`Registry.entries`).
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
from robench.catalogue import Cache, Listing, cache_path, param_docs, source_key
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
#: Each built-in plugin's module of torch-free base classes (:mod:`robench.bases`), whose
#: ``BASES`` maps a name to the class that the registered one extends.
_BUILTIN_BASES = {module: f"{module}.bases" for module in BUILTINS}
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
        entries: Iterable[Entry | Listing],
        failures: Iterable[PluginFailure] = (),
        excluded: Iterable[Exclusion] = (),
        loader: _Loader | None = None,
    ) -> None:
        self._by_kind: dict[Kind, dict[str, Entry | Listing]] = {k: {} for k in KINDS}
        for e in entries:
            self._by_kind[e.kind][e.name] = e  # type: ignore[index]
        #: the plugins that failed to load and contribute nothing, in loading order
        self.failures: list[PluginFailure] = list(failures)
        #: the names plugins exclude, with their reasons, by ``(kind, name)``
        self.excluded: dict[tuple[Kind, str], Exclusion] = {(x.kind, x.name): x for x in excluded}
        self._loader = loader

    def names(self, kind: Kind) -> list[str]:
        return sorted(self._by_kind[kind])

    def entries(self, kind: Kind | None = None) -> list[Entry]:
        """The registered classes (of one kind): every plugin that supplies one is imported."""
        kinds = KINDS if kind is None else (kind,)
        lazy = {e.plugin for k in kinds for e in self._by_kind[k].values() if _is_lazy(e)}
        for plugin in lazy:
            self._import(plugin)
        return [self._by_kind[k][n] for k in kinds for n in sorted(self._by_kind[k])]  # type: ignore[misc]

    def listings(self, kind: Kind | None = None) -> list[Listing]:
        """What is registered (of one kind), with descriptions and parameters, without
        importing a plugin the catalogue cache knows (:mod:`robench.catalogue`)."""
        kinds = KINDS if kind is None else (kind,)
        return [_listing(self._by_kind[k][n]) for k in kinds for n in sorted(self._by_kind[k])]

    def _import(self, plugin: str) -> None:
        """Import a plugin known from the cache and put its classes in place of its listings;
        a plugin that fails now is a failure and its names are gone."""
        assert self._loader is not None
        real = self._loader.load_deferred(plugin, self._others(plugin))
        for k in KINDS:
            for name in [n for n, e in self._by_kind[k].items() if e.plugin == plugin]:
                del self._by_kind[k][name]
        self.failures = list(self._loader.failures)
        if real is None:
            return
        entries, excluded = real
        for e in entries:
            self._by_kind[e.kind][e.name] = e
        self.excluded = {at: x for at, x in self.excluded.items() if x.plugin != plugin}
        self.excluded |= {(x.kind, x.name): x for x in excluded}

    def _others(self, plugin: str) -> dict[tuple[Kind, str], Entry | Listing]:
        return {(k, n): e for k in KINDS for n, e in self._by_kind[k].items() if e.plugin != plugin}

    def get(self, kind: Kind, name: str) -> Entry:
        """The entry for ``name`` (its plugin imported now if the cache listed it); a
        :class:`ConfigError` with a did-you-mean if unknown, naming the plugins that failed to
        load (any of them might have provided it)."""
        found = self._by_kind[kind].get(name)
        if found is not None and _is_lazy(found):
            self._import(found.plugin)
            if name not in self._by_kind[kind]:
                failed = [f for f in self.failures if f.plugin == found.plugin]
                why = (
                    f"could not be built: {failed[-1].reason} ({failed[-1].hint})"
                    if failed
                    else "is no longer registered by it"
                )
                source = _describe(found.plugin, found.distribution, found.version)
                raise ConfigError(f"{kind} {name!r} of {source} {why}")
        try:
            return self._by_kind[kind][name]  # type: ignore[return-value]
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

    def get_base(self, kind: Kind, name: str) -> Entry:
        """The entry to validate ``name`` with, importing no more than validation needs.

        A built-in plugin the catalogue cache lists, not imported yet, gives its torch-free base
        class (:mod:`robench.bases`: the name, parameters and configuration checks that the
        registered class inherits, so validating with it checks the same): the entry of
        ``robench validate``, which then imports neither the plugin nor torch. Anything else
        (an installed plugin, a built-in without a base, one imported already) is :meth:`get`'s
        entry. Enough to validate a benchmark and describe it, not to run it.
        """
        found = self._by_kind[kind].get(name)
        if found is not None and _is_lazy(found) and found.distribution == "robench":
            module = _BUILTIN_BASES.get(found.plugin)
            base = importlib.import_module(module).BASES.get(name) if module else None
            if base is not None:
                return Entry(kind, name, base, found.plugin, found.distribution, found.version)
        return self.get(kind, name)

    def __contains__(self, item: tuple[Kind, str]) -> bool:
        kind, name = item
        return name in self._by_kind[kind]


def _is_lazy(e: Entry | Listing) -> bool:
    return isinstance(e, Listing)


def _listing(e: Entry | Listing) -> Listing:
    if isinstance(e, Listing):
        return e
    return Listing(
        e.kind, e.name, e.plugin, e.distribution, e.version, e.description, param_docs(e.cls)
    )


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
    #: its catalogue cache key (None: not cached)
    key: str | None = None


@dataclass
class _Deferred:
    """A plugin listed from the catalogue cache, not imported yet."""

    load: Any
    name: str
    distribution: str
    version: str
    builtin: bool
    record: dict[str, Any]
    key: str


class _Loader:
    """Loads plugins one by one; a plugin that fails becomes a :class:`PluginFailure`."""

    def __init__(self, lazy: bool = True) -> None:
        self.pm = pluggy.PluginManager("robench")
        self.pm.add_hookspecs(hookspecs)
        self.loaded: list[_Loaded] = []
        #: every plugin in loading order, imported or listed from the cache
        self.sources: list[_Loaded | _Deferred] = []
        self.deferred: dict[str, _Deferred] = {}
        self.failures: list[PluginFailure] = []
        self.cache = Cache(cache_path() if lazy else None)
        self.bases: dict[Kind, type] = {}

    def fail(self, name: str, dist: str, version: str, exc: BaseException, builtin: bool):
        reason = _reason(exc)
        if builtin:
            reason += " (a bug in robench: please report it)"
        message = f"{_describe(name, dist, version)} failed to load: {reason}"
        tb = "".join(traceback.format_exception(exc))
        self.failures.append(PluginFailure(name, dist, version, message, tb, reason, builtin))

    def add(
        self,
        load,
        name: str | None,
        dist: str,
        version: str,
        builtin: bool = False,
        key: str | None = None,
    ):
        """Import (``load()``) and register one plugin; record a failure instead of raising.
        A plugin whose ``key`` the catalogue cache holds is listed from it, not imported."""
        record = self.cache.get(name, key) if name is not None else None  # None: key None
        if record is not None:
            assert name is not None and key is not None
            deferred = _Deferred(load, name, dist, version, builtin, record, key)
            self.deferred[name] = deferred
            self.sources.append(deferred)
            return
        self._import(load, name, dist, version, builtin, key)

    def _import(self, load, name, dist, version, builtin, key) -> _Loaded | None:
        shown = name or "?"
        try:
            obj = load()
            shown = name or getattr(obj, "__name__", None) or repr(obj)
            registered = self.pm.register(obj, name=name)
            if registered is None:  # None, or a blocked name
                return None
            shown = registered
            self._check_known_hooks(obj)
        except Exception as exc:
            self.fail(shown, dist, version, exc, builtin)
            return None
        loaded = _Loaded(obj, registered, dist, version, builtin, key)
        self.loaded.append(loaded)
        self.sources.append(loaded)
        return loaded

    def _bases(self) -> dict[Kind, type]:
        """The plugin base classes (imported on first need: they import torch)."""
        if not self.bases:
            for kind, (module, attr) in _BASES.items():
                self.bases[kind] = getattr(importlib.import_module(module), attr)
        return self.bases

    def load_deferred(
        self, plugin: str, others: dict[tuple[Kind, str], Any]
    ) -> tuple[list[Entry], list[Exclusion]] | None:
        """Import a plugin listed from the cache and call its hooks: its entries and
        exclusions, or None when it fails (recorded in :attr:`failures`)."""
        d = self.deferred.pop(plugin)
        loaded = self._import(d.load, d.name, d.distribution, d.version, d.builtin, d.key)
        if loaded is None:
            return None
        staged: dict[tuple[Kind, str], Entry] = {}
        excluded: list[Exclusion] = []
        try:
            self._call_hooks(loaded, self._bases(), others, staged, excluded)
        except Exception as exc:
            self.fail(loaded.name, loaded.distribution, loaded.version, exc, loaded.builtin)
            return None
        self._remember(loaded, staged, excluded)
        self.cache.save()
        return list(staged.values()), excluded

    def _remember(self, p: _Loaded, staged: dict, excluded: list[Exclusion]) -> None:
        if p.key is not None:
            listings = [_listing(e) for e in staged.values()]
            self.cache.put(p.name, p.key, listings, [(x.kind, x.name, x.reason) for x in excluded])

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
            requires = (ep.dist.requires or []) if ep.dist is not None else []
            key = source_key(ep.module, dist, version, requires) if dist != _UNKNOWN_DIST else None
            self.add(ep.load, ep.name, dist, version, key=key)

    def collect(self) -> Registry:
        """Call each plugin's registration hooks; a plugin whose hooks raise, or that
        registers anything invalid, is a failure and contributes nothing."""
        entries: dict[tuple[Kind, str], Any] = {}
        excluded: list[Exclusion] = []
        for p in list(self.sources):
            staged: dict[tuple[Kind, str], Any] = {}
            staged_out: list[Exclusion] = []
            try:
                if isinstance(p, _Deferred):
                    self._replay(p, entries, staged, staged_out)
                else:
                    self._call_hooks(p, self._bases(), entries, staged, staged_out)
                    self._remember(p, staged, staged_out)
            except Exception as exc:
                self.fail(p.name, p.distribution, p.version, exc, p.builtin)
                self.deferred.pop(p.name, None)
                continue
            entries.update(staged)
            excluded += staged_out
        self.cache.save()
        return Registry(entries.values(), self.failures, excluded, loader=self)

    def _replay(self, p: _Deferred, entries: dict, staged: dict, excluded: list) -> None:
        """What a cached plugin registered, as listings (checked for clashes as on import)."""
        for item in p.record["entries"]:
            listing = Listing(**{**item, "plugin": p.name})
            key = (listing.kind, listing.name)
            if key in entries:
                first = entries[key]
                raise PluginError(
                    f"duplicate {listing.kind} name {listing.name!r}: already registered by "
                    f"{_describe(first.plugin, first.distribution, first.version)}"
                )
            staged[key] = listing
        for kind, name, reason in p.record["excluded"]:
            excluded.append(Exclusion(kind, name, reason, p.name, p.distribution, p.version))

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


def build_registry(
    *, entry_points: bool = True, plugins: Iterable[object] = (), lazy: bool = True
) -> Registry:
    """Build a fresh registry: the built-ins, installed plugins (unless ``entry_points`` is
    False) and ``plugins`` (modules or objects with hook implementations, e.g. in a notebook).

    Never raises for a broken plugin: a plugin that fails to import, implements an unknown
    hook, raises in a hook or registers something invalid (including a name already taken: the
    first registration wins) is left out entirely and listed in ``registry.failures``.

    With ``lazy`` (the default), the built-ins and installed plugins that the catalogue cache
    knows (:mod:`robench.catalogue`) are listed from it and imported on first use; ``plugins``
    given here are always imported.
    """
    loader = _Loader(lazy)
    blocked = set(_env_list("ROBENCH_BLOCK_PLUGINS"))
    for modname in BUILTINS:
        if modname not in blocked:
            load = functools.partial(importlib.import_module, modname)
            key = source_key(modname, "robench", robench.__version__) if lazy else None
            loader.add(load, modname, "robench", robench.__version__, builtin=True, key=key)
    for plugin in plugins:
        loader.add(lambda plugin=plugin: plugin, None, _UNKNOWN_DIST, "")
    if entry_points:
        loader.entry_points()
    return loader.collect()


@functools.cache
def get_registry() -> Registry:
    """The registry of this process, built once on first use."""
    return build_registry()
