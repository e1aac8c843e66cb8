"""A run's output folder: one run at a time, and nothing an earlier run left is lost.

A run stores every cell as it finishes (:mod:`robench.cellstore`), holds its provenance in
``results.partial.json`` while it goes (status ``running``, with its pid), and replaces
``results.csv``, ``results.json`` and ``outcomes.npz`` only when it finishes; stopped by Ctrl-C
or a signal, it writes the rows it finished to ``results.partial.csv`` (and
``outcomes.partial.npz``). Partial files found when a run starts belong to a run that did not
finish: to a live process (then the folder is in use and the new run is refused), to one killed
outright (only its provenance, still ``running``: it is dropped, and the new run goes on from
the cells stored), or to one that was interrupted; the tables of an interrupted run are kept,
renamed ``results.interrupted-<start time>.csv`` (and ``.json``, ``outcomes…npz``).
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
from robench.store import MODELS_DIR

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


def _check_not_in_use(out_dir: Path, partial_json: Path, field: str) -> None:
    """Refuse a folder that a live robench process (on this host) is writing."""
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


def _sweep(out_dir: Path) -> None:
    """Delete the temporary files of writes that a killed run left (``.<name>.<pid>.tmp``,
    :func:`robench.results.atomic_write`): never read, and no live run writes here."""
    for folder in (out_dir, out_dir / MODELS_DIR):
        for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():
            tmp.unlink(missing_ok=True)


def claim(out_dir: Path, field: str = "output_dir") -> list[str]:
    """Prepare ``out_dir`` for a new run; return a line for each earlier unfinished run kept.

    Raises :class:`ConfigError` if a live robench process (on this host) is writing there.
    """
    partial_json = out_dir / partial_name(RESULTS_JSON)
    _check_not_in_use(out_dir, partial_json, field)
    _sweep(out_dir)
    if not any((out_dir / partial_name(n)).exists() for n in _PARTIALS):
        return []
    prov = _read_json(partial_json)
    if prov.get("status") == "running" and not any(
        (out_dir / partial_name(n)).exists() for n in _PARTIALS if n != RESULTS_JSON
    ):  # killed (kill -9, power loss) before it could write its table: every cell it
        # finished is in the cell store, where this run goes on from
        partial_json.unlink()
        return [
            f"resuming the run of {prov.get('started', '?')} that ended without finishing: "
            "its finished cells are reused"
        ]
    if prov.get("status") == "running":  # killed while it wrote its table
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
