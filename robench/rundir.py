"""A run's output folder: one run at a time, and nothing an earlier run left is lost.

A run writes ``results.partial.*`` and ``outcomes.partial.npz`` while it goes
(:class:`robench.results.ResultsWriter`) and replaces ``results.csv``, ``results.json`` and
``outcomes.npz`` only when it finishes. Partial files found when a run starts belong to a run
that did not finish: to a live process (then the folder is in use and the new run is refused)
or to one that was interrupted or killed; those are kept, renamed
``results.interrupted-<start time>.csv`` (and ``.json``, ``outcomes…npz``), their provenance's
``status`` set to ``interrupted`` if the process died before it could say so.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from robench.errors import ConfigError
from robench.outcomes import FILENAME as OUTCOMES
from robench.results import RESULTS_CSV, RESULTS_JSON, atomic_write, partial_name

_PARTIALS = (RESULTS_CSV, RESULTS_JSON, OUTCOMES)


def owner() -> dict[str, Any]:
    """Who is running: recorded in the provenance so a later run can tell a live run from a
    killed one."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return False
    return True


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def claim(out_dir: Path, field: str = "output_dir") -> list[str]:
    """Prepare ``out_dir`` for a new run; return a line for each earlier unfinished run kept.

    Raises :class:`ConfigError` if a live robench process (on this host) is writing there.
    """
    partial_json = out_dir / partial_name(RESULTS_JSON)
    if not any((out_dir / partial_name(n)).exists() for n in _PARTIALS):
        return []
    prov = _read_json(partial_json)
    pid, host = prov.get("pid"), prov.get("host")
    if (
        prov.get("status") == "running"
        and isinstance(pid, int)
        and host == socket.gethostname()
        and pid != os.getpid()
        and _alive(pid)
    ):
        raise ConfigError(
            f"{out_dir} is in use by a robench run still going (pid {pid}, started "
            f"{prov.get('started', '?')}); wait for it, stop it, or pass another --output-dir",
            field=field,
        )
    if prov.get("status") == "running":  # killed before it could record it
        prov["status"] = "interrupted"
        prov["interrupted"] = "the process ended without finishing (found by a later run)"
        atomic_write(partial_json, json.dumps(prov, indent=2, default=str) + "\n")
    stamp = str(prov.get("started") or "unknown").replace(":", "").replace("+0000", "Z")
    kept = []
    for name in _PARTIALS:
        src = out_dir / partial_name(name)
        if not src.exists():
            continue
        stem, _, suffix = name.rpartition(".")
        dest = out_dir / f"{stem}.interrupted-{stamp}.{suffix}"
        n = 1
        while dest.exists():
            n += 1
            dest = out_dir / f"{stem}.interrupted-{stamp}-{n}.{suffix}"
        os.replace(src, dest)
        kept.append(dest.name)
    return [f"kept the unfinished run of {stamp} found in {out_dir}: {', '.join(kept)}"]
