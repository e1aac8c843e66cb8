"""What a report is made of: a run's results table, its provenance, the adversarial examples
kept per cell and the training records of its models, found and checked.

A report reads a *run folder* (``results.csv`` with ``results.json``, ``examples.npz`` and
``models/`` beside it) or a results CSV on its own: a run folder's ``results.csv``, or a curated
copy ``PREFIX-results.csv`` whose provenance is ``PREFIX-provenance.json`` (``PREFIX-results.json``
also works) and whose kept examples, if copied too, are ``PREFIX-examples.npz``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robench.advexamples import ModelExamples, read_examples
from robench.results import RESULTS_CSV, RESULTS_JSON, partial_name, read_results
from robench.store import MODELS_DIR

#: the columns a report needs; a table without one is of an older format
REQUIRED = (
    "benchmark",
    "defense",
    "kind",
    "attack",
    "norm",
    "eps",
    "n_examples",
    "accuracy",
    "status",
    "flags",
)


class ReportError(ValueError):
    """A report cannot be made from what was given (one line saying why)."""


@dataclass(frozen=True)
class TrainingRecord:
    """What a trained model's sidecar (``models/<key>.json``) says about its training."""

    #: the mean training loss of every epoch
    losses: list[float]
    #: ``best_checkpoint``: every epoch's held-out robust and clean accuracy (fractions) and
    #: the epoch kept (1-based; 0: none)
    held_out: list[tuple[float, float]] = field(default_factory=list)
    best_epoch: int = 0
    train_seconds: float | None = None


@dataclass
class RunData:
    """Everything a report shows, read from disk."""

    #: the results table (robench's typed columns), its file and the run's folder
    results: pd.DataFrame
    results_path: Path
    #: the provenance (``results.json``; {} when there is none) and its file
    provenance: dict[str, Any]
    provenance_path: Path | None
    #: the kept adversarial examples, by (defense, training seed), of the models in
    #: ``results`` (entries of other models of the folder are left out)
    examples: dict[tuple[str, int], ModelExamples]
    #: why there are none, or which are missing ("" when every model has them)
    examples_note: str
    #: training records by (defense, training seed)
    training: dict[tuple[str, int], TrainingRecord]
    training_note: str


def _siblings(csv_path: Path) -> tuple[str, Path]:
    """(prefix, folder) of a results CSV: ``X-results.csv`` → ``X-``; ``results.csv`` → ``""``;
    any other ``name.csv`` → ``name-``."""
    name = csv_path.name
    if name == RESULTS_CSV:
        return "", csv_path.parent
    if name.endswith("-" + RESULTS_CSV):
        return name[: -len(RESULTS_CSV)], csv_path.parent
    return csv_path.stem + "-", csv_path.parent


def locate(path: str | Path) -> tuple[Path, Path | None]:
    """The results CSV of ``path`` (a run folder or a results CSV) and its provenance JSON
    (None when there is none). ReportError when there are no results."""
    p = Path(path)
    if not p.exists():
        raise ReportError(
            f"{path}: no such file or folder (expected a run folder or its results.csv)"
        )
    if p.is_dir():
        csv_path = p / RESULTS_CSV
        if not csv_path.is_file():
            partial = p / partial_name(RESULTS_CSV)
            hint = (
                f" (an unfinished run's results are in {partial.name}: pass that file)"
                if partial.is_file()
                else " (a run folder holds one once a run has finished)"
            )
            raise ReportError(f"{path}: no results.csv found{hint}")
    else:
        csv_path = p
    prefix, folder = _siblings(csv_path)
    stem = csv_path.name[: -len(".csv")] if csv_path.name.endswith(".csv") else csv_path.name
    candidates = [folder / RESULTS_JSON] if not prefix else []
    candidates += [folder / f"{prefix}provenance.json", folder / f"{stem}.json"]
    if csv_path.name == partial_name(RESULTS_CSV):
        candidates.insert(0, folder / partial_name(RESULTS_JSON))
    found = next((c for c in candidates if c.is_file()), None)
    return csv_path, found


def check_format(csv_path: Path) -> None:
    """ReportError unless ``csv_path`` is a results table of a format a report can show."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ReportError(f"{csv_path}: not a robench results table ({exc})") from None
    if not header:
        raise ReportError(f"{csv_path}: not a robench results table (it is empty)")
    if not {"defense", "kind", "accuracy"} <= set(header):
        raise ReportError(
            f"{csv_path}: not a robench results table (no defense, kind and accuracy columns)"
        )
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ReportError(
            f"{csv_path}: results of an older format (no {', '.join(missing)} column"
            f"{'s' if len(missing) > 1 else ''}, which the report needs); run the benchmark "
            "again with this robench to report it"
        )


def _provenance(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: unreadable provenance ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: not a robench provenance file (expected a JSON object)")
    return data


def models_of(results: pd.DataFrame) -> list[tuple[str, int, str]]:
    """Every (defense, training seed, model key) of ``results`` in table order (seed -1 and
    key "" where the table does not say)."""
    clean = results[results["kind"] == "clean"]
    seeds = clean["train_seed"].astype("Float64").fillna(-1).astype(int)
    keys = clean["model_key"] if "model_key" in clean else pd.Series("", index=clean.index)
    out = zip(clean["defense"], seeds, keys.fillna("").astype(str), strict=True)
    return list(dict.fromkeys((d, int(s), k) for d, s, k in out))


def _examples(
    csv_path: Path, results: pd.DataFrame
) -> tuple[dict[tuple[str, int], ModelExamples], str]:
    prefix, folder = _siblings(csv_path)
    path = folder / f"{prefix}examples.npz"
    if not path.is_file():
        return {}, (
            f"no {path.name} beside {csv_path.name}: the run kept no adversarial examples "
            "(runs before robench kept them, or a results file copied without them)"
        )
    found = read_examples(path)
    kept: dict[tuple[str, int], ModelExamples] = {}
    missing = []
    for defense, seed, key in models_of(results):
        entry = found.get((defense, seed))
        if entry is not None and (not key or entry.model_key == key):
            kept[(defense, seed)] = entry
        else:
            missing.append(defense if seed < 0 else f"{defense} (seed {seed})")
    note = ""
    if missing:
        note = (
            f"no kept examples for {', '.join(missing)} (its cells were scored before robench "
            "kept examples, or its scoring failed; `robench run --fresh` scores them again)"
        )
    return kept, note


def _training(
    csv_path: Path, results: pd.DataFrame
) -> tuple[dict[tuple[str, int], TrainingRecord], str]:
    prefix, folder = _siblings(csv_path)
    store = folder / MODELS_DIR
    if prefix or not store.is_dir():
        return {}, (
            f"no {MODELS_DIR}/ folder beside {csv_path.name}: the trained models' sidecars, which "
            "record the training losses, are in the run's folder"
        )
    out: dict[tuple[str, int], TrainingRecord] = {}
    for defense, seed, key in models_of(results):
        sidecar = store / f"{key}.json"
        if not key or not sidecar.is_file():
            continue
        try:
            record = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            continue
        losses = [float(v) for v in record.get("epoch_losses") or []]
        best = record.get("best_epoch") or {}
        held = [(float(h["robust"]), float(h["clean"])) for h in best.get("history", [])]
        seconds = record.get("train_seconds")
        out[(defense, seed)] = TrainingRecord(
            losses, held, int(best.get("epoch", 0)), float(seconds) if seconds else None
        )
    note = "" if out else f"no sidecars of this run's models in {store}"
    return out, note


def load_run(path: str | Path) -> RunData:
    """Read the run at ``path`` (a run folder or a results CSV) for a report."""
    csv_path, json_path = locate(path)
    check_format(csv_path)
    try:
        results = read_results(csv_path)
    except ValueError as exc:
        raise ReportError(str(exc)) from None
    if results.empty:
        raise ReportError(f"{csv_path}: the results table has no rows")
    if not (results["kind"] == "clean").any():
        raise ReportError(f"{csv_path}: no clean rows (one per defense): not a run's results")
    provenance = _provenance(json_path)
    examples, examples_note = _examples(csv_path, results)
    training, training_note = _training(csv_path, results)
    return RunData(
        results,
        csv_path,
        provenance,
        json_path,
        examples,
        examples_note,
        training,
        training_note,
    )


def uses_255(eps: list[float], norm: str) -> bool:
    """Whether the budgets of ``norm`` are conventionally written as k/255 (L∞ budgets that are
    all whole multiples of 1/255 up to 32/255, as on CIFAR-10 and ImageNet)."""
    if norm != "linf":
        return False
    levels = [e * 255 for e in eps if e > 0]
    return bool(levels) and all(abs(v - round(v)) < 1e-4 and v <= 32.5 for v in levels)


def eps_label(eps: float, k255: bool) -> str:
    """``0.1`` or, where that is the convention, ``8/255``."""
    if k255 and eps > 0:
        return f"{round(eps * 255)}/255"
    return f"{eps:g}"


def finite(values: Any) -> np.ndarray:
    """``values`` as a float array (missing values NaN)."""
    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
