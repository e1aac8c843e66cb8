"""Leaderboards: one row per defense, ranked by worst-case robust accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from robench.results import read_results


def load_results(path: str | Path) -> pd.DataFrame:
    """A results table from a ``results.csv`` file or a folder holding one."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.csv"
    if not p.is_file():
        raise ValueError(f"{path}: no results.csv found")
    return read_results(p)


def _budget(norm: str, eps: float) -> str:
    return f"{norm} {eps:g}"


def build_leaderboard(
    frames: list[pd.DataFrame], *, norm: str | None = None, eps: float | None = None
) -> pd.DataFrame:
    """Rank every (benchmark, defense) of ``frames``.

    The ranking budget is ``norm``/``eps``; by default L∞ if present (else L2) at the largest ε
    present. Columns: rank, benchmark, defense, clean accuracy, the worst-case robust accuracy
    at the ranking budget with its 95 % Wilson interval and the attack that was strongest
    there, then the worst-case robust accuracy at every budget (one column each), the
    defense's trust-check flags, the number of examples and the run's status. Accuracies are
    percentages.
    """
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
        clean = g[(g["kind"] == "clean") & (g["status"] == "ok")]
        row = {
            "benchmark": bench,
            "defense": defense,
            "defense_plugin": g["defense_plugin"].iloc[0],
            "model": g["model"].iloc[0],
            "clean_accuracy": 100 * clean["accuracy"].iloc[0] if len(clean) else np.nan,
        }
        at = g[(g["norm"] == norm) & np.isclose(g["eps"].astype(float), eps)]
        w = at[(at["kind"] == "worst-case") & (at["status"] == "ok")]
        row["robust_accuracy"] = 100 * w["accuracy"].iloc[0] if len(w) else np.nan
        row["robust_ci95"] = (
            f"{100 * w['ci_low'].iloc[0]:.1f}–{100 * w['ci_high'].iloc[0]:.1f}" if len(w) else ""
        )
        singles = at[(at["kind"] == "attack") & (at["status"] == "ok")]
        row["strongest_attack"] = (
            singles.sort_values("accuracy")["attack"].iloc[0] if len(singles) else ""
        )
        for n, e in budgets:
            sel = g[(g["kind"] == "worst-case") & (g["norm"] == n) & np.isclose(g["eps"], e)]
            sel = sel[sel["status"] == "ok"]
            row[f"robust {_budget(n, e)}"] = 100 * sel["accuracy"].iloc[0] if len(sel) else np.nan
        row["flags"] = "; ".join(f for f in clean["flags"] if f) if "flags" in g else ""
        counts = g["n_examples"].dropna()
        row["n_examples"] = int(counts.max()) if len(counts) else 0
        failed = int((g["status"] == "error").sum())
        row["status"] = f"{failed} failed cells" if failed else "complete"
        rows.append(row)
    board = pd.DataFrame(rows)
    board = board.sort_values(
        ["robust_accuracy", "clean_accuracy"], ascending=False, na_position="last", kind="stable"
    ).reset_index(drop=True)
    board.insert(0, "rank", range(1, len(board) + 1))
    board.insert(6, "ranked_at", _budget(norm, eps))
    return board.round(2)


def summary_table(df: pd.DataFrame) -> str:
    """A compact text table of a results frame: defenses down, attack × budget across (in %)."""
    if df.empty:
        return "(no results)"
    t = df[df["kind"] != "sanity"].copy()
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
    """The leaderboard as a GitHub markdown table (accuracies in %), ready for a README."""
    columns = [c for c in board.columns if c not in ("benchmark", "defense_plugin", "status")]

    def cell(value: object) -> str:
        if isinstance(value, float):
            return "" if np.isnan(value) else f"{value:.2f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [
        "| " + " | ".join(cell(v) for v in row) + " |"
        for row in board[columns].itertuples(index=False)
    ]
    return "\n".join(lines) + "\n"
