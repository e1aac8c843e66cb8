"""The results table: its columns, and writing it (CSV plus JSON provenance) as it grows."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from robench import faults
from robench.stats import wilson_interval

#: Columns of a results table, in order. One row per defense × attack × ε, plus for each
#: defense a ``clean`` row and, per norm and ε, a ``worst-case`` row (per-example minimum over
#: every attack at that budget).
COLUMNS = (
    "benchmark",
    "defense",
    "train_seed",  # the seed the defense was trained with (one run per seed)
    "defense_name",  # the registered defense ("adversarial"); "defense" is its label
    "defense_plugin",  # who supplied it: "distribution version (plugin)"
    "model",
    "model_key",  # the model's key (20 hex digits): a trained model's in the output folder's
    # store (models/<key>.*); a loaded one's (checkpoint) from its weights (robench.cellkeys)
    "kind",  # "clean" | "attack" | "sanity" | "worst-case"
    "attack",
    "attack_name",  # the registered attack ("pgd", "art.SquareAttack"); "attack" is its label
    "attack_plugin",  # who supplied it: "distribution version (plugin)"
    "source",  # transfer attacks: the defense whose model crafted the examples ("": white-box)
    "norm",
    "eps",
    "n_examples",
    "n_correct",
    "accuracy",
    "ci_low",  # 95 % Wilson interval of the accuracy over the n_examples scored
    "ci_high",
    "adv_accuracy",  # attack rows: accuracy on the adversarial examples of every example,
    # clean-misclassified ones attacked too (the robust ≤ clean check); "" if not run
    "clean_accuracy",
    "n_attacked",  # attack rows: examples the attack ran on (cascade: those still robust)
    "n_violations",
    "max_violation",
    "seconds",
    "train_seconds",
    "seed",
    "attacks",  # worst-case rows: the attacks combined; cascade attack rows: the cascade so far
    "fooled_by",  # ensemble attack rows (autoattack): the examples each component fooled first,
    # "apgd-ce 412, apgd-t 3, fab-t 0, square 0"
    "flags",  # clean rows: the defense's failed trust checks, "; "-separated (robench.checks)
    "status",  # "ok" | "error"
    "error",
)


#: whole-number columns (nullable) and float columns; ci_low/ci_high are computed, not read
INT_COLUMNS = ("train_seed", "n_examples", "n_correct", "n_attacked", "n_violations", "seed")
FLOAT_COLUMNS = (
    "eps",
    "accuracy",
    "adv_accuracy",
    "clean_accuracy",
    "max_violation",
    "seconds",
    "train_seconds",
)
NUMERIC_COLUMNS = (*INT_COLUMNS, *FLOAT_COLUMNS, "ci_low", "ci_high")
TEXT_COLUMNS = tuple(c for c in COLUMNS if c not in NUMERIC_COLUMNS)


def to_frame(rows: Sequence[Any]) -> pd.DataFrame:
    """The results table of ``rows``: :class:`robench.rows.Row` records or dicts by column."""
    records = [dataclasses.asdict(r) if dataclasses.is_dataclass(r) else r for r in rows]
    df = pd.DataFrame([{c: r.get(c) for c in COLUMNS} for r in records], columns=list(COLUMNS))
    for c in INT_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    for c in FLOAT_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    bounds = [
        wilson_interval(int(k), int(n)) if pd.notna(k) and pd.notna(n) else (math.nan, math.nan)
        for k, n in zip(df["n_correct"], df["n_examples"], strict=True)
    ]
    df["ci_low"] = pd.Series([lo for lo, _ in bounds], index=df.index, dtype="float64")
    df["ci_high"] = pd.Series([hi for _, hi in bounds], index=df.index, dtype="float64")
    for c in TEXT_COLUMNS:
        df[c] = df[c].where(df[c].notna(), "").astype(str)
    return df


def read_results(path: str | Path) -> pd.DataFrame:
    """Read a results CSV written by robench, with numeric columns typed."""
    try:
        df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        msg = f"{path}: not a robench results table (unreadable as CSV: {why})"
        raise ValueError(msg) from None
    missing = [c for c in ("defense", "kind", "norm", "eps", "accuracy") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not a robench results table (missing {', '.join(missing)})")
    for kind in ("defense", "attack"):  # before 0.2 the *_plugin columns held the names
        if f"{kind}_name" not in df.columns and f"{kind}_plugin" in df.columns:
            df[f"{kind}_name"] = df[f"{kind}_plugin"]
            df[f"{kind}_plugin"] = ""
    return to_frame(df.to_dict("records"))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: str | bytes) -> None:
    """Replace ``path`` with ``data``, durably: a temporary file in the same folder, fsync,
    ``os.replace``, fsync of the folder. A reader never sees a half-written file, and a kill
    at any instant leaves the old file or the new one."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        faults.point("atomic-write")  # a test's kill between the write and the rename
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


#: the files of a finished run, and where a run in progress writes them
RESULTS_CSV, RESULTS_JSON = "results.csv", "results.json"


def partial_name(name: str) -> str:
    """``results.csv`` → ``results.partial.csv``: where a run in progress writes a file."""
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}.partial{dot}{suffix}"


class ResultsWriter:
    """Writes the results table and its provenance.

    The finished cells themselves are stored one by one as they finish
    (:mod:`robench.cellstore`); this writes the table of a run. While the run goes,
    ``results.partial.json`` holds its provenance (status ``running``, written when it starts)
    and, if it is interrupted, ``results.partial.csv`` the rows it finished: the previous run's
    ``results.csv`` stays untouched, so a rerun that fails or is killed early never leaves
    fewer results than before. :meth:`finish` replaces ``results.csv`` and ``results.json``
    with the finished run's at once.
    """

    def __init__(self, out_dir: Path, provenance: dict[str, Any]) -> None:
        self.dir = out_dir
        self.csv = out_dir / RESULTS_CSV
        self.json = out_dir / RESULTS_JSON
        self.partial_csv = out_dir / partial_name(RESULTS_CSV)
        self.partial_json = out_dir / partial_name(RESULTS_JSON)
        self.provenance = provenance
        self.dir.mkdir(parents=True, exist_ok=True)

    def _write(self, rows: Sequence[Any], csv: Path, js: Path) -> pd.DataFrame:
        df = to_frame(rows)
        atomic_write(csv, df.to_csv(index=False))
        atomic_write(js, json.dumps(self.provenance, indent=2, default=str) + "\n")
        return df

    def start(self) -> None:
        """The run starts: its provenance (status ``running``) into the partial JSON."""
        atomic_write(self.partial_json, json.dumps(self.provenance, indent=2, default=str) + "\n")

    def write(self, rows: Sequence[Any]) -> pd.DataFrame:
        """Record the provenance and the rows so far (into the partial files)."""
        return self._write(rows, self.partial_csv, self.partial_json)

    def finish(self, rows: Sequence[Any]) -> pd.DataFrame:
        """The run finished: replace ``results.csv``/``results.json``, drop the partial files."""
        df = self._write(rows, self.csv, self.json)
        for p in (self.partial_csv, self.partial_json):
            p.unlink(missing_ok=True)
        return df
