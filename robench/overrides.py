"""Command-line overrides of a benchmark file: ``--set KEY=VALUE``.

``KEY`` is a path of TOML keys separated by dots; the arrays of tables ``defenses`` and
``attacks`` take a selector in brackets — an entry's label (its ``name`` when it has no
label), its index from 0, or ``*`` for every entry::

    --set training.epochs=1
    --set evaluation.n_examples=200
    --set 'defenses[preact18-fast-at].training.epochs=2'
    --set 'attacks[*].eps=["8/255"]'
    --set 'attacks[art-square-300].max_iter=10'

``VALUE`` is a TOML value (``2``, ``0.5``, ``true``, ``"8/255"``, ``[0.1, 0.2]``, ``{ name =
"pgd", eps = 0.3 }``); a word that is not one (``cifar10``, ``8/255``) is taken as a string.
Missing tables on the way are created. ``--defenses LABEL,...`` and ``--attacks LABEL,...``
(:func:`keep`) run a subset of the file's entries. The overridden benchmark is then
validated exactly like a file, so a wrong key, type or range fails with the file's one-line
errors; only what the path itself gets wrong (a label no entry has, an index out of range, a
key under a value that is not a table, no ``=``) is reported here, naming the override.
"""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from robench.errors import ConfigError
from robench.registry import unknown_name_message

#: the arrays of tables whose entries a selector picks, and what an entry is called
ARRAYS = {"defenses": "defense", "attacks": "attack"}

_SEGMENT = re.compile(r"^(?P<key>[A-Za-z0-9_-]+)(?:\[(?P<sel>[^\]]*)\])?$")


@dataclass(frozen=True)
class Override:
    """One parsed ``--set``: the key path (a selector after each array key) and the value."""

    text: str
    path: tuple[tuple[str, str | None], ...]
    value: Any


def parse(text: str) -> Override:
    """Parse ``KEY=VALUE`` (see the module docstring); a one-line :class:`ConfigError` else."""
    key, eq, raw_value = text.partition("=")
    key = key.strip()
    if not eq or not key:
        raise _error(text, "expected KEY=VALUE, e.g. training.epochs=1")
    path = []
    for part in _split(key, text):
        m = _SEGMENT.match(part)
        if m is None:
            raise _error(text, f"{part!r} is not a key (letters, digits, _ and -, then [selector])")
        sel = m["sel"]
        if sel is not None and m["key"] not in ARRAYS:
            raise _error(text, f"only {' and '.join(ARRAYS)} take a [selector], not {m['key']!r}")
        if sel is not None and not sel.strip():
            raise _error(text, f"{m['key']}[] needs a label, an index or *")
        path.append((m["key"], None if sel is None else sel.strip()))
    return Override(text, tuple(path), _value(raw_value.strip()))


def apply(raw: dict[str, Any], overrides: Iterable[str | Override]) -> dict[str, Any]:
    """A copy of the benchmark's tables ``raw`` with each override set, in order."""
    out = copy.deepcopy(raw)
    for o in overrides:
        o = o if isinstance(o, Override) else parse(o)
        _set(out, o)
    return out


def keep(raw: dict[str, Any], table: str, labels: Sequence[str]) -> dict[str, Any]:
    """A copy of ``raw`` whose array ``table`` (``defenses`` or ``attacks``) keeps only the
    entries labelled ``labels`` (a label, else the entry's name), in the file's order;
    ``--defenses`` / ``--attacks`` on the command line. A label no entry has is a one-line
    :class:`ConfigError` naming the option."""
    out = copy.deepcopy(raw)
    entries = out.get(table)
    entries = entries if isinstance(entries, list) else []
    have = [_label(e) for e in entries]
    for label in labels:
        if label not in have:
            message = unknown_name_message(f"{ARRAYS[table]} label", label, have)
            raise ConfigError(message, field=f"--{table}")
    out[table] = [e for e, label in zip(entries, have, strict=True) if label in set(labels)]
    return out


def _split(key: str, text: str) -> list[str]:
    """The dot-separated parts of ``key``; dots inside brackets (labels like ``pgd-0.3``) kept."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(key):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "." and depth == 0:
            parts.append(key[start:i])
            start = i + 1
    parts.append(key[start:])
    if depth or any(not p.strip() for p in parts):
        raise _error(text, "malformed key path (empty part or unbalanced brackets)")
    return [p.strip() for p in parts]


def _value(text: str) -> Any:
    """A TOML value, else the text itself (a bare word)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _set(root: dict[str, Any], o: Override) -> None:
    """Set ``o.value`` at ``o.path`` under ``root`` (every entry a ``*`` selects)."""
    targets: list[tuple[dict[str, Any], str]] = []
    tables = [(root, "")]
    for depth, (key, sel) in enumerate(o.path):
        last = depth == len(o.path) - 1
        nxt = []
        for table, where in tables:
            here = f"{where}.{key}" if where else key
            if sel is None:
                if last:
                    targets.append((table, key))
                    continue
                child = table.setdefault(key, {})
                if not isinstance(child, dict):
                    raise _error(o.text, f"{here} is {child!r}, not a table")
                nxt.append((child, here))
                continue
            entries = table.get(key)
            if not isinstance(entries, list) or not entries:
                raise _error(o.text, f"the benchmark has no [[{key}]] entries to select from")
            for i in _select(entries, sel, key, o.text):
                if last:
                    raise _error(o.text, f"give a key of {here}[{sel}], e.g. {key}[{sel}].label")
                if not isinstance(entries[i], dict):
                    raise _error(o.text, f"{here}[{i}] is not a table")
                nxt.append((entries[i], f"{here}[{i}]"))
        tables = nxt
    for table, key in targets:
        table[key] = copy.deepcopy(o.value)


def _select(entries: list[Any], sel: str, key: str, text: str) -> list[int]:
    """The indices of the entries ``sel`` picks: ``*``, an index, or a label (else a name)."""
    if sel == "*":
        return list(range(len(entries)))
    if re.fullmatch(r"-?\d+", sel):
        i = int(sel)
        if not 0 <= i < len(entries):
            raise _error(text, f"index {i} out of range (the benchmark has {len(entries)} {key})")
        return [i]
    labels = [_label(e) for e in entries]
    hits = [i for i, label in enumerate(labels) if label == sel]
    if not hits:
        raise _error(text, unknown_name_message(f"{ARRAYS[key]} label", sel, labels))
    return hits


def _label(entry: Any) -> str:
    if not isinstance(entry, dict):
        return ""
    label = entry.get("label", entry.get("name", ""))
    return label if isinstance(label, str) else ""


def _error(text: str, message: str) -> ConfigError:
    return ConfigError(message, field=f"--set {text}")
