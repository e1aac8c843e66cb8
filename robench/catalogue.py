"""The catalogue cache: what each plugin registered, so that robench starts without importing it.

Building the registry imports every plugin and calls its hooks, and a plugin that adapts a
library (ART, Foolbox) imports that library and builds its classes: seconds before anything
happens. So the first time a plugin is loaded, what it registered is written to a cache file —
each entry's kind, name, description and parameters, and the names it excludes with their
reasons — under a key computed **without importing it**: its distribution and version, the
installed versions of the distributions it requires, and the size and modification time of
every ``.py`` file of its package (an edited plugin, an upgraded library or a reinstall changes
the key). Later processes list the plugin from the cache (``robench list``, ``--help``) and
import it only when one of its classes is used (:meth:`robench.registry.Registry.get`).

The cache lives in ``$ROBENCH_CATALOGUE`` if set (``off``: no cache), else
``~/.cache/robench/catalogue.json``; it is written atomically and never trusted when unreadable.
A plugin that fails to load is never cached (it fails, and is reported, every time).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: the cache file's format; another value is ignored (and overwritten)
FORMAT = 1
CACHE_ENV = "ROBENCH_CATALOGUE"


@dataclass(frozen=True)
class Listing:
    """One registered name as the cache knows it: enough to list it, not to use it."""

    kind: str
    name: str
    plugin: str
    distribution: str
    version: str
    description: str
    params: list[dict[str, Any]] = field(default_factory=list)


def cache_path() -> Path | None:
    """The cache file (None: caching is off)."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env.lower() in ("off", "0", "no", "false"):
        return None
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "robench" / "catalogue.json"


def _files_signature(module: str) -> str | None:
    """Size and mtime of every .py file of ``module``'s top-level package, found without
    importing it (None: not found)."""
    try:
        spec = importlib.util.find_spec(module.split(".")[0])
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [spec.origin]
    h = hashlib.sha256()
    for root in roots:
        if os.path.isfile(root):
            st = os.stat(root)
            h.update(f"{root}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            continue
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    st = os.stat(path)
                    h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._\-]*)")


def source_key(
    module: str, distribution: str, version: str, requires: list[str] | None = None
) -> str | None:
    """The cache key of a plugin module (None: it cannot be keyed, so it is not cached)."""
    files = _files_signature(module)
    if files is None:
        return None
    deps = []
    for req in requires or []:
        if ";" in req and "extra ==" in req.split(";", 1)[1]:
            continue  # an optional extra's requirement
        m = _REQ.match(req)
        if m:
            try:
                deps.append(f"{m.group(1)}=={importlib.metadata.version(m.group(1))}")
            except importlib.metadata.PackageNotFoundError:
                deps.append(f"{m.group(1)} missing")
    text = json.dumps([FORMAT, module, distribution, version, sorted(deps), files])
    return hashlib.sha256(text.encode()).hexdigest()


class Cache:
    """The cache file's records, by plugin name: ``{"key", "entries", "excluded"}``."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        self.dirty = False
        if path is None:
            return
        try:
            data = json.loads(path.read_text())
            if data.get("format") == FORMAT and isinstance(data.get("plugins"), dict):
                self.records = data["plugins"]
        except (OSError, ValueError, AttributeError):
            pass  # missing or unreadable: start afresh

    def get(self, plugin: str, key: str | None) -> dict[str, Any] | None:
        record = self.records.get(plugin)
        if key is None or record is None or record.get("key") != key:
            return None
        return record

    def put(
        self,
        plugin: str,
        key: str,
        listings: list[Listing],
        excluded: list[tuple[str, str, str]],
    ) -> None:
        self.records[plugin] = {
            "key": key,
            "entries": [asdict(x) for x in listings],
            "excluded": [list(x) for x in excluded],
        }
        self.dirty = True

    def save(self) -> None:
        """Write the file atomically if anything changed (errors ignored: it is a cache)."""
        if self.path is None or not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".catalogue-")
            with os.fdopen(fd, "w") as f:
                json.dump({"format": FORMAT, "plugins": self.records}, f, default=str)
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError:
            pass


def param_docs(cls: type) -> list[dict[str, Any]]:
    """Each parameter of a plugin class: name, type, default (None if required), description;
    JSON-ready (a default that JSON cannot hold is shown as its repr)."""
    from pydantic_core import PydanticUndefined

    out = []
    for name, f in cls.Params.model_fields.items():  # type: ignore[attr-defined]
        required = f.default is PydanticUndefined and f.default_factory is None
        ann = f.annotation
        annotation = ann.__name__ if isinstance(ann, type) else str(ann)
        default = None if required or f.default is PydanticUndefined else f.default
        try:  # as the cache gives it back: tuples as lists
            default = json.loads(json.dumps(default))
        except (TypeError, ValueError):
            default = repr(default)
        out.append(
            {
                "name": name,
                "type": annotation.replace("typing.", ""),
                "required": required,
                "default": default,
                "description": f.description or "",
            }
        )
    return out
