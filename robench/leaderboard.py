"""Leaderboards: one row per defense, ranked by worst-case robust accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robench.results import RESULTS_CSV, partial_name, read_results
from robench.stats import seed_interval


def load_results(path: str | Path) -> pd.DataFrame:
    """A results table from a ``results.csv`` file or a folder holding one."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.csv"
    if not p.is_file():
        partial = p.with_name(partial_name(RESULTS_CSV))
        unfinished = (
            f" (an unfinished run's results are in {partial}: pass that file)"
            if partial.is_file()
            else ""
        )
        raise ValueError(f"{path}: no results.csv found{unfinished}")
    return read_results(p)


#: how a leaderboard treats flagged defenses (a trust check failed): ranked after every
#: unflagged one (``last``, the default: a number the checks distrust does not win), left out
#: (``hide``), or ranked by their numbers alone (``keep``)
FLAGGED = ("last", "hide", "keep")
#: the mark of a flagged defense in tables and figures
FLAG_MARK = "⚑"


def check_flagged(flagged: str) -> str:
    """``flagged`` if it is one of :data:`FLAGGED`; else ValueError (one line)."""
    if flagged not in FLAGGED:
        raise ValueError(f"--flagged: expected last, hide or keep, got {flagged!r}")
    return flagged


def _budget(norm: str, eps: float) -> str:
    return f"{norm} {eps:g}"


def _seed_of(g: pd.DataFrame) -> pd.Series:
    """The training seed of each row (tables from before seeds were recorded: one run, -1)."""
    if "train_seed" not in g:
        return pd.Series(-1, index=g.index)
    return g["train_seed"].astype("Float64").fillna(-1).astype(int)


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN with fewer than two values)."""
    v = np.array([x for x in values if not np.isnan(x)], dtype=float)
    if not len(v):
        return np.nan, np.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else np.nan


def row_count(n_correct: Any, n_examples: Any, accuracy: Any) -> tuple[int, int] | None:
    """(examples robust, examples scored) of one results row (None without examples). Tables
    without ``n_correct`` get it from the accuracy."""
    if pd.isna(n_examples) or int(n_examples) <= 0:
        return None
    n = int(n_examples)
    if pd.isna(n_correct):
        return round(float(accuracy) * n), n
    return int(n_correct), n


def _count(w: pd.DataFrame) -> tuple[int, int] | None:
    """:func:`row_count` of a worst-case row (None without one)."""
    if not len(w):
        return None
    k = w["n_correct"].iloc[0] if "n_correct" in w else np.nan
    return row_count(k, w["n_examples"].iloc[0], w["accuracy"].iloc[0])


def _interval(runs: list[dict]) -> dict[str, object]:
    """The leaderboard's interval columns for the seeds' worst cases at the ranking budget
    (:func:`robench.stats.seed_interval`: Wilson for one seed, Student's t over several)."""
    counts = [r["count"] for r in runs if r["count"] is not None]
    if not counts:
        return {
            "robust_ci95": "",
            "ci_method": "",
            "robust_ci_low": np.nan,
            "robust_ci_high": np.nan,
        }
    ci = seed_interval([k for k, _ in counts], [n for _, n in counts])
    low, high = 100 * ci.low, 100 * ci.high
    return {
        "robust_ci95": f"{low:.1f}–{high:.1f}",
        "ci_method": ci.method,
        "robust_ci_low": low,
        "robust_ci_high": high,
    }


def _one_seed(g: pd.DataFrame, norm: str, eps: float, budgets: list[tuple[str, float]]):
    """One training seed's clean accuracy, worst cases, worst-case count at the ranking budget,
    strongest attack, flags."""
    ok = g[g["status"] == "ok"]
    clean = ok[ok["kind"] == "clean"]
    worst = ok[ok["kind"] == "worst-case"]

    def worst_at(n: str, e: float) -> pd.DataFrame:
        return worst[(worst["norm"] == n) & np.isclose(worst["eps"].astype(float), e)]

    w = worst_at(norm, eps)
    at = ok[(ok["kind"] == "attack") & (ok["norm"] == norm) & np.isclose(ok["eps"], eps)]
    return {
        "clean": 100 * clean["accuracy"].iloc[0] if len(clean) else np.nan,
        "robust": 100 * w["accuracy"].iloc[0] if len(w) else np.nan,
        "count": _count(w),
        "strongest": at.sort_values("accuracy")["attack"].iloc[0] if len(at) else "",
        "budgets": [
            100 * worst_at(n, e)["accuracy"].iloc[0] if len(worst_at(n, e)) else np.nan
            for n, e in budgets
        ],
        "flags": [f for f in g.loc[g["kind"] == "clean", "flags"] if f],
        "failed": int((g["status"] == "error").sum()),
    }


def build_leaderboard(
    frames: list[pd.DataFrame],
    *,
    norm: str | None = None,
    eps: float | None = None,
    flagged: str = "last",
) -> pd.DataFrame:
    """Rank every (benchmark, defense) of ``frames``.

    The ranking budget is ``norm``/``eps``; by default L∞ if present (else L2) at the largest ε
    present. Columns: rank, benchmark, defense, the training seeds, clean accuracy, the
    worst-case robust accuracy at the ranking budget with its 95 % interval (``robust_ci95``,
    "low–high"; ``robust_ci_low`` and ``robust_ci_high`` as numbers) and how that interval was
    computed (``ci_method``), the attack that was strongest there, then the worst-case robust
    accuracy at every budget (one column each), the defense's trust-check flags, the number of
    examples and the run's status. Accuracies are percentages.

    A defense trained with several seeds gets the mean over its seeds, with the sample
    standard deviation in ``clean_std`` and ``robust_std`` (empty for one seed), its strongest
    attack the one strongest for most seeds, and a flag raised for only some seeds names them.
    Its interval is Student's t interval over the seeds' robust accuracies (``ci_method``
    ``"t (3 seeds)"``; clipped to 0–100): the seed-to-seed variance from training, which
    dominates. One seed's interval is the Wilson interval over the examples scored
    (``"wilson"``), and so is that of seeds whose accuracies agree exactly (``"wilson (3
    seeds agree)"``), where the t interval would have zero width. See
    :func:`robench.stats.seed_interval`.

    A defense with any trust-check flag (``flagged`` column True) is ranked after every
    unflagged one by default (``flagged="last"``): its number is one the checks distrust, so
    it must not top the board. ``"hide"`` leaves flagged defenses out (their labels in
    ``board.attrs["hidden"]``), ``"keep"`` ranks every defense by its numbers alone.
    """
    check_flagged(flagged)
    df = pd.concat(frames, ignore_index=True)
    worst = df[(df["kind"] == "worst-case") & (df["status"] == "ok")]
    norms = list(dict.fromkeys(worst["norm"]))
    if norm is None:
        norm = "linf" if "linf" in norms else (norms[0] if norms else "linf")
    if eps is None:
        candidates = worst.loc[worst["norm"] == norm, "eps"]
        eps = float(candidates.max()) if len(candidates) else float("nan")
    budgets = sorted({(n, float(e)) for n, e in zip(worst["norm"], worst["eps"], strict=True)})
    if not any(n == norm and np.isclose(e, eps) for n, e in budgets):
        known = ", ".join(_budget(n, e) for n, e in budgets) or "none"
        raise ValueError(f"no worst-case results at {_budget(norm, eps)} (present: {known})")

    rows = []
    for (bench, defense), g in df.groupby(["benchmark", "defense"], sort=False):
        seeds = _seed_of(g)
        per = {s: _one_seed(g[seeds == s], norm, eps, budgets) for s in dict.fromkeys(seeds)}
        runs = list(per.values())
        clean, clean_std = _mean_std([r["clean"] for r in runs])
        robust, robust_std = _mean_std([r["robust"] for r in runs])
        strongest = [r["strongest"] for r in runs if r["strongest"]]
        row = {
            "benchmark": bench,
            "defense": defense,
            "defense_name": g["defense_name"].iloc[0],
            "model": g["model"].iloc[0],
            "seeds": ",".join(str(s) for s in per if s >= 0) or "",
            "clean_accuracy": clean,
            "clean_std": clean_std,
            "robust_accuracy": robust,
            "robust_std": robust_std,
            **_interval(runs),
            "strongest_attack": max(strongest, key=strongest.count) if strongest else "",
        }
        for i, (n, e) in enumerate(budgets):
            row[f"robust {_budget(n, e)}"] = _mean_std([r["budgets"][i] for r in runs])[0]
        flags = [(s, f) for s, r in per.items() for f in r["flags"]]
        row["flags"] = "; ".join(f if len(per) == 1 else f"seed {s}: {f}" for s, f in flags)
        row["flagged"] = bool(flags)
        counts = g["n_examples"].dropna()
        row["n_examples"] = int(counts.max()) if len(counts) else 0
        failed = sum(r["failed"] for r in runs)
        row["status"] = f"{failed} failed cells" if failed else "complete"
        rows.append(row)
    board = pd.DataFrame(rows)
    hidden = list(board.loc[board["flagged"], "defense"]) if flagged == "hide" else []
    if hidden:
        board = board[~board["flagged"]]
    board = board.sort_values(
        ["robust_accuracy", "clean_accuracy"], ascending=False, na_position="last", kind="stable"
    )
    if flagged == "last":
        board = board.sort_values("flagged", kind="stable")  # False first, order kept within
    board = board.reset_index(drop=True)
    board.insert(0, "rank", range(1, len(board) + 1))
    board.insert(board.columns.get_loc("robust_accuracy"), "ranked_at", _budget(norm, eps))
    board = board.round(2)
    board.attrs["hidden"] = hidden
    board.attrs["flagged"] = flagged
    return board


def marked(board: pd.DataFrame) -> pd.DataFrame:
    """``board`` with each flagged defense's label marked (``"jpeg ⚑"``), for display."""
    out = board.copy()
    if "flagged" in out:
        out["defense"] = [
            f"{d} {FLAG_MARK}" if f else d
            for d, f in zip(out["defense"], out["flagged"], strict=True)
        ]
    return out


def summary_table(df: pd.DataFrame) -> str:
    """A compact text table of a results frame: defenses down, attack × budget across (in %)."""
    if df.empty:
        return "(no results)"
    t = df[df["kind"] != "sanity"].copy()
    seeds = _seed_of(t)
    several = seeds.groupby(t["defense"]).transform("nunique") > 1
    t["defense"] = [
        f"{d} (seed {s})" if many else d
        for d, s, many in zip(t["defense"], seeds, several, strict=True)
    ]
    t["column"] = [
        "clean" if k == "clean" else f"{a}{'←' + src if src else ''} {n} {e:g}"
        for k, a, src, n, e in zip(
            t["kind"], t["attack"], t["source"], t["norm"], t["eps"], strict=True
        )
    ]
    t["value"] = [
        f"{100 * acc:.1f}" if s == "ok" and pd.notna(acc) else "failed"
        for s, acc in zip(t["status"], t["accuracy"], strict=True)
    ]
    table = t.pivot_table(
        index="defense", columns="column", values="value", aggfunc="first", sort=False
    )
    table = table.reindex(index=list(dict.fromkeys(t["defense"])))
    table = table[list(dict.fromkeys(t["column"]))]
    table.columns.name = None
    table.index.name = None
    return table.to_string()


def to_markdown(board: pd.DataFrame) -> str:
    """The leaderboard as a GitHub markdown table (accuracies in %), ready for a README;
    a mean over several seeds is shown as mean ± standard deviation, ``ci_method`` says
    which interval ``robust_ci95`` is, and a flagged defense's label is marked ⚑."""
    board = marked(board)
    hidden = (
        "benchmark",
        "defense_name",
        "flagged",
        "status",
        "clean_std",
        "robust_std",
        "robust_ci_low",
        "robust_ci_high",
    )
    columns = [c for c in board.columns if c not in hidden]

    def cell(row: pd.Series, column: str) -> str:
        value = row[column]
        if isinstance(value, float):
            if np.isnan(value):
                return ""
            std = row.get(column.replace("_accuracy", "_std"), np.nan)
            spread = column.endswith("_accuracy") and not pd.isna(std)
            return f"{value:.2f} ± {std:.2f}" if spread else f"{value:.2f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [
        "| " + " | ".join(cell(row, c) for c in columns) + " |" for _, row in board.iterrows()
    ]
    return "\n".join(lines) + "\n"
