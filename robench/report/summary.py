"""The numbers a report draws: the leaderboard, each defense's flags, and every cell's accuracy
averaged over training seeds with its 95 % interval."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from robench.leaderboard import build_leaderboard, row_count
from robench.report.data import ReportError, uses_255
from robench.stats import seed_interval


@dataclass
class Summary:
    """A run's numbers, as the report's tables and figures show them."""

    #: the leaderboard (:func:`robench.leaderboard.build_leaderboard`); None when the run has
    #: no worst-case result to rank by (``board_note`` says why)
    board: pd.DataFrame | None
    board_note: str
    #: the defenses shown, in leaderboard order (flagged ones last unless ``--flagged keep``;
    #: ``--flagged hide`` leaves them out: ``hidden``)
    defenses: list[str]
    hidden: list[str]
    #: each defense's flags: (training seed, reason), seed -1 where the table has none
    flags: dict[str, list[tuple[int, str]]]
    #: per (defense, kind, attack, source, norm, eps): accuracy in % (mean over seeds), its 95 %
    #: interval (``low``, ``high``), the seeds scored (``seeds``) and failed (``failed``)
    cells: pd.DataFrame
    #: the benchmark's budgets (norm, ε), sanity-only budgets aside, sorted
    budgets: list[tuple[str, float]]
    #: per norm: whether its budgets are written as k/255
    k255: dict[str, bool]
    #: the ranking budget (also the adversarial-example grid's)
    ranked_at: tuple[str, float] | None

    def is_flagged(self, defense: str) -> bool:
        return bool(self.flags.get(defense))

    def cell(self, defense: str, attack: str, norm: str, eps: float) -> pd.Series | None:
        """The summary row of ``attack`` at ``norm``/``eps`` on ``defense`` (None if absent)."""
        c = self.cells
        hit = c[
            (c["defense"] == defense)
            & (c["attack"] == attack)
            & (c["norm"] == norm)
            & np.isclose(c["eps"], eps)
        ]
        return None if hit.empty else hit.iloc[0]

    def clean(self, defense: str) -> pd.Series | None:
        hit = self.cells[(self.cells["defense"] == defense) & (self.cells["kind"] == "clean")]
        return None if hit.empty else hit.iloc[0]


def _counts(g: pd.DataFrame) -> list[tuple[int, int]]:
    """(correct, examples) of each ok row of ``g`` (from the accuracy where a table has no
    ``n_correct``)."""
    rows = zip(g["n_correct"], g["n_examples"], g["accuracy"], strict=True)
    counts = [row_count(k, n, acc) for k, n, acc in rows if not pd.isna(acc)]
    return [c for c in counts if c is not None]


def aggregate(results: pd.DataFrame) -> pd.DataFrame:
    """Every cell of ``results`` averaged over training seeds (accuracies in %)."""
    rows = []
    keys = ["defense", "kind", "attack", "source", "norm", "eps"]
    df = results.copy()
    df["eps"] = df["eps"].astype(float).fillna(0.0)
    for (defense, kind, attack, source, norm, eps), g in df.groupby(keys, sort=False):
        ok = g[g["status"] == "ok"]
        counts = _counts(ok)
        failed = int((g["status"] != "ok").sum())
        acc = low = high = np.nan
        if counts:
            acc = 100 * float(np.mean([k / n for k, n in counts]))
            ci = seed_interval([k for k, _ in counts], [n for _, n in counts])
            low, high = 100 * ci.low, 100 * ci.high
        errors = "; ".join(dict.fromkeys(e for e in g["error"] if e))
        rows.append(
            {
                "defense": defense,
                "kind": kind,
                "attack": attack,
                "source": source,
                "norm": norm,
                "eps": float(eps),
                "accuracy": acc,
                "low": low,
                "high": high,
                "seeds": len(counts),
                "failed": failed,
                "error": errors,
            }
        )
    return pd.DataFrame(rows)


def flags_of(results: pd.DataFrame) -> dict[str, list[tuple[int, str]]]:
    """Each defense's trust-check flags from its clean rows: (training seed, reason)."""
    out: dict[str, list[tuple[int, str]]] = {}
    clean = results[results["kind"] == "clean"]
    seeds = clean["train_seed"].astype("Float64").fillna(-1).astype(int)
    for defense, seed, flags in zip(clean["defense"], seeds, clean["flags"], strict=True):
        out.setdefault(defense, [])
        out[defense] += [(int(seed), f) for f in str(flags).split("; ") if f]
    return out


def summarize(
    results: pd.DataFrame,
    *,
    norm: str | None = None,
    eps: float | None = None,
    flagged: str = "last",
) -> Summary:
    """The report's numbers for ``results``; ``norm``/``eps`` choose the ranking budget
    (default: the leaderboard's), ``flagged`` how flagged defenses are ranked."""
    board, note = None, ""
    try:
        board = build_leaderboard([results], norm=norm, eps=eps, flagged=flagged)
    except ValueError as exc:
        if norm is not None or eps is not None or str(exc).startswith("--flagged"):
            raise ReportError(str(exc)) from None
        note = f"no leaderboard: {exc} (every attack failed?)"
    flags = flags_of(results)
    every = list(dict.fromkeys(results.loc[results["kind"] == "clean", "defense"]))
    hidden = list(board.attrs.get("hidden", [])) if board is not None else []
    if board is not None:
        order = list(board["defense"])
    else:
        order = [d for d in every if not flags.get(d)] + [d for d in every if flags.get(d)]
        if flagged == "keep":
            order = every
        elif flagged == "hide":
            hidden = [d for d in every if flags.get(d)]
            order = [d for d in every if d not in hidden]
    order += [d for d in every if d not in order and d not in hidden]  # failed to rank
    cells = aggregate(results)
    own = cells[cells["kind"].isin(["attack", "worst-case"])]
    budgets = sorted({(n, float(e)) for n, e in zip(own["norm"], own["eps"], strict=True)})
    k255 = {n: uses_255([e for m, e in budgets if m == n], n) for n, _ in budgets}
    ranked_at = None
    if board is not None and len(board):
        n, e = str(board["ranked_at"].iloc[0]).split(" ")
        ranked_at = next((b for b in budgets if b[0] == n and np.isclose(b[1], float(e))), None)
    elif budgets:
        linf = [b for b in budgets if b[0] == "linf"] or budgets
        ranked_at = linf[-1]
    return Summary(board, note, order, hidden, flags, cells, budgets, k255, ranked_at)
