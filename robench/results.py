"""The results table: its columns, and writing it (CSV plus JSON provenance) as it grows."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from robench.stats import wilson_interval

#: Columns of a results table, in order. One row per defense × attack × ε, plus for each
#: defense a ``clean`` row and, per norm and ε, a ``worst-case`` row (per-example minimum over
#: every attack at that budget).
COLUMNS = (
    "benchmark",
    "defense",
    "train_seed",  # the seed the defense was trained with (one run per seed)
    "defense_plugin",
    "model",
    "kind",  # "clean" | "attack" | "worst-case"
    "attack",
    "attack_plugin",
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


def to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame([{c: r.get(c) for c in COLUMNS} for r in rows], columns=list(COLUMNS))
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
    df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    missing = [c for c in ("defense", "kind", "norm", "eps", "accuracy") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not a robench results table (missing {', '.join(missing)})")
    return to_frame(df.to_dict("records"))


def atomic_write(path: Path, data: str | bytes) -> None:
    """Replace ``path`` with ``data`` at once: a reader never sees a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data)
    os.replace(tmp, path)


class ResultsWriter:
    """Writes ``results.csv`` and ``results.json`` into a folder after every change."""

    def __init__(self, out_dir: Path, provenance: dict[str, Any]) -> None:
        self.dir = out_dir
        self.csv = out_dir / "results.csv"
        self.json = out_dir / "results.json"
        self.provenance = provenance
        self.dir.mkdir(parents=True, exist_ok=True)

    def write(self, rows: list[dict[str, Any]]) -> pd.DataFrame:
        df = to_frame(rows)
        atomic_write(self.csv, df.to_csv(index=False))
        atomic_write(self.json, json.dumps(self.provenance, indent=2, default=str) + "\n")
        return df
