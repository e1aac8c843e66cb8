"""The report's figures (matplotlib, no pyplot): robustness curves and attack × defense
heatmaps, each saved as PNG and SVG. The adversarial-example grid and the training curves are in
:mod:`robench.report.pictures`."""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure

from robench.checks import SANITY_PREFIX
from robench.leaderboard import FLAG_MARK
from robench.report.data import eps_label
from robench.report.summary import Summary
from robench.results import atomic_write

#: what every figure is drawn with: readable at a paper's column width, reproducible files
STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.hashsalt": "robench",
    "svg.fonttype": "none",
}
NORM_NAMES = {"linf": "L∞", "l2": "L2"}
#: what a cascade run's per-attack numbers mean
CASCADE_NOTE = (
    " This run was a cascade ([evaluation] cascade): each attack ran on what the cheaper "
    "attacks before it left robust, so its accuracy is cumulative (robust to it and to them)."
)
_PALETTE = mpl.colormaps["tab10"].colors


@dataclass(frozen=True)
class FigureFile:
    """A figure: its name, caption, PNG bytes (what the HTML embeds) and the files written."""

    name: str
    title: str
    caption: str
    png: bytes
    files: tuple[Path, ...]


@contextlib.contextmanager
def style() -> Iterator[None]:
    with mpl.rc_context(STYLE):
        yield


def save(fig: Figure, folder: Path | None, name: str, title: str, caption: str) -> FigureFile:
    """``fig`` as PNG (embedded in the report) and, under ``folder``, as ``name.png`` and
    ``name.svg``."""
    with style():  # the same files every time: the SVG's ids are salted, dates left out
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
        png = buffer.getvalue()
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            svg = io.BytesIO()
            fig.savefig(svg, format="svg", bbox_inches="tight", metadata={"Date": None})
    files: tuple[Path, ...] = ()
    if folder is not None:
        atomic_write(folder / f"{name}.svg", svg.getvalue())
        atomic_write(folder / f"{name}.png", png)
        files = (folder / f"{name}.png", folder / f"{name}.svg")
    return FigureFile(name, title, caption, png, files)


def colors(summary: Summary) -> dict[str, tuple[float, float, float]]:
    """One colour per defense, the same in every figure."""
    names = [*summary.defenses, *summary.hidden]
    return {d: _PALETTE[i % len(_PALETTE)] for i, d in enumerate(names)}


def defense_label(summary: Summary, defense: str) -> str:
    """A defense's label in figures: marked ⚑ when flagged."""
    return f"{defense} {FLAG_MARK}" if summary.is_flagged(defense) else defense


def eps_axis(ax, summary: Summary, norm: str, eps: list[float]) -> None:
    """ε on the x axis: in the data's scale (images in [0, 1]); as k/255 along the top where
    that is the convention."""
    ax.set_xlabel(f"ε ({NORM_NAMES.get(norm, norm)} norm, images in [0, 1])")
    ax.set_xticks(eps)
    ax.set_xticklabels([f"{e:.3g}" for e in eps])
    if summary.k255.get(norm):
        top = ax.secondary_xaxis("top")
        top.set_xticks(eps)
        top.set_xticklabels([eps_label(e, True) for e in eps])
        top.set_xlabel("ε as k/255")


def _series(summary: Summary, defense: str, attack: str, norm: str, eps: list[float]):
    """(ε, accuracy, low, high) of ``attack`` on ``defense``, clean accuracy at ε = 0 first
    (for the worst case)."""
    points: list[tuple[float, float, float, float]] = []
    if attack == "worst-case":
        c = summary.clean(defense)
        if c is not None and not math.isnan(c["accuracy"]):
            points.append((0.0, c["accuracy"], c["low"], c["high"]))
    for e in eps:
        r = summary.cell(defense, attack, norm, e)
        if r is not None and not math.isnan(r["accuracy"]):
            points.append((e, r["accuracy"], r["low"], r["high"]))
    a = np.array(points, dtype=float).reshape(-1, 4)
    return a[:, 0], a[:, 1], a[:, 2], a[:, 3]


def robustness_curves(summary: Summary, folder: Path | None, dataset: str) -> list[FigureFile]:
    """Per norm: each defense's worst-case robust accuracy against ε (clean accuracy at ε = 0)
    with its 95 % interval as a band; flagged defenses dashed and marked ⚑."""
    out = []
    palette = colors(summary)
    for norm in dict.fromkeys(n for n, _ in summary.budgets):
        eps = [e for n, e in summary.budgets if n == norm]
        if not summary.defenses:
            continue
        with style():
            fig = Figure(figsize=(7.0, 4.4), layout="constrained")
            ax = fig.subplots()
            for d in summary.defenses:
                xs, acc, low, high = _series(summary, d, "worst-case", norm, eps)
                if not len(xs):
                    continue
                flagged = summary.is_flagged(d)
                ax.fill_between(xs, low, high, color=palette[d], alpha=0.15, linewidth=0)
                ax.plot(
                    xs,
                    acc,
                    marker="x" if flagged else "o",
                    linestyle="--" if flagged else "-",
                    color=palette[d],
                    label=defense_label(summary, d),
                )
            eps_axis(ax, summary, norm, [0.0, *eps])
            ax.set_ylim(0, 100)
            ax.set_ylabel("worst-case robust accuracy (%)")
            ax.set_title(f"{dataset}: robustness against {NORM_NAMES.get(norm, norm)} attacks")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best", frameon=False)
            caption = (
                "Worst-case robust accuracy (per example, over every attack of the benchmark at "
                "that budget) against ε; ε = 0 is clean accuracy. Bands: 95 % intervals (Wilson "
                "over the examples for one training seed, Student's t over the seeds for several). "
                f"Dashed and marked {FLAG_MARK}: a trust check failed (see Trust checks)."
            )
            out.append(save(fig, folder, f"robustness-{norm}", "Robustness curves", caption))
    return out


def attack_curves(summary: Summary, folder: Path | None, cascade: bool = False) -> list[FigureFile]:
    """Per norm: one panel per defense, robust accuracy against ε under each attack (sanity
    attacks dotted), the worst case in black. ``cascade``: the run was a cascade, whose
    attacks' accuracies are cumulative (the caption says so)."""
    out = []
    for norm in dict.fromkeys(n for n, _ in summary.budgets):
        eps = [e for n, e in summary.budgets if n == norm]
        cells = summary.cells[(summary.cells["norm"] == norm) & summary.cells["eps"].isin(eps)]
        attacks = list(dict.fromkeys(cells.loc[cells["kind"] == "attack", "attack"]))
        sanity = list(dict.fromkeys(cells.loc[cells["kind"] == "sanity", "attack"]))
        style_of = {a: _PALETTE[i % len(_PALETTE)] for i, a in enumerate(attacks + sanity)}
        defenses = summary.defenses
        if not defenses or not attacks:
            continue
        ncols = min(3, len(defenses))
        nrows = math.ceil(len(defenses) / ncols)
        with style():
            fig = Figure(figsize=(3.6 * ncols + 1.6, 3.0 * nrows + 0.6), layout="constrained")
            axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False, sharey=True)).ravel()
            for ax, d in zip(axes, defenses, strict=False):
                for a in attacks + sanity:
                    xs, acc, _, _ = _series(summary, d, a, norm, eps)
                    if len(xs):
                        dotted = a.startswith(SANITY_PREFIX)
                        ax.plot(
                            xs,
                            acc,
                            marker=".",
                            linestyle=":" if dotted else "-",
                            linewidth=1.0 if dotted else 1.5,
                            color=style_of[a],
                            label=a,
                        )
                xs, acc, _, _ = _series(summary, d, "worst-case", norm, eps)
                xs, acc = xs[xs > 0], acc[xs > 0]
                if len(xs):  # under the attacks' lines: the strongest one runs along it
                    ax.plot(xs, acc, color="black", linewidth=5, alpha=0.25, label="worst case")
                ax.set_title(defense_label(summary, d))
                ax.set_ylim(0, 100)
                eps_axis(ax, summary, norm, eps)
                ax.set_ylabel("robust accuracy (%)")
                if not ax.get_subplotspec().is_first_col():
                    ax.set_ylabel("")
                if not ax.get_subplotspec().is_last_row():
                    ax.set_xlabel("")
            for ax in axes[len(defenses) :]:
                ax.set_visible(False)
            handles, labels = {}, []
            for ax in axes[: len(defenses)]:
                for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                    if lab not in handles:
                        handles[lab] = h
                        labels.append(lab)
            fig.legend([handles[lab] for lab in labels], labels, loc="outside right upper")
            fig.suptitle(f"Robust accuracy per attack ({NORM_NAMES.get(norm, norm)})")
            caption = (
                "Each attack's robust accuracy against ε, one panel per defense; black: the worst "
                "case over the benchmark's attacks; dotted: the trust checks' sanity attacks "
                "(left out of the worst case). An attack far above the worst case adds nothing; "
                "a sanity attack below it means the benchmark's attacks missed something."
            )
            if cascade:
                caption += CASCADE_NOTE
            out.append(save(fig, folder, f"attacks-{norm}", "Robustness per attack", caption))
    return out


def heatmaps(summary: Summary, folder: Path | None, cascade: bool = False) -> list[FigureFile]:
    """One heatmap per budget: attacks down, defenses across, robust accuracy in each cell
    (the worst case and the sanity attacks below the benchmark's attacks)."""
    out = []
    cmap = mpl.colormaps["viridis"]
    for norm, e in summary.budgets:
        cells = summary.cells[(summary.cells["norm"] == norm) & np.isclose(summary.cells["eps"], e)]
        rows = list(dict.fromkeys(cells.loc[cells["kind"] == "attack", "attack"]))
        sanity = dict.fromkeys(cells.loc[cells["kind"] == "sanity", "attack"])
        rows += ["worst-case", *sanity]
        defenses = summary.defenses
        if not defenses:
            continue
        values = np.full((len(rows), len(defenses)), np.nan)
        failed = np.zeros_like(values, dtype=bool)
        for i, a in enumerate(rows):
            for j, d in enumerate(defenses):
                r = summary.cell(d, a, norm, e)
                if r is not None:
                    values[i, j] = r["accuracy"]
                    failed[i, j] = bool(r["failed"]) and math.isnan(r["accuracy"])
        label = eps_label(e, summary.k255.get(norm, False))
        with style():
            width = max(4.8, 1.05 * len(defenses) + 2.6)
            fig = Figure(figsize=(width, 0.42 * len(rows) + 1.9), layout="constrained")
            ax = fig.subplots()
            ax.grid(False)
            image = ax.imshow(
                np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=100, aspect="auto"
            )
            for i in range(len(rows)):
                for j in range(len(defenses)):
                    v = values[i, j]
                    text = "failed" if failed[i, j] else ("" if math.isnan(v) else f"{v:.1f}")
                    shade = "white" if not math.isnan(v) and v < 55 else "black"
                    weight = "bold" if rows[i] == "worst-case" else "normal"
                    ax.text(
                        j,
                        i,
                        text,
                        ha="center",
                        va="center",
                        color=shade,
                        fontsize=8.5,
                        weight=weight,
                    )
            ax.set_xticks(range(len(defenses)))
            ax.set_xticklabels(
                [defense_label(summary, d) for d in defenses], rotation=30, ha="right"
            )
            ax.set_yticks(range(len(rows)))
            ax.set_yticklabels(["worst case" if r == "worst-case" else r for r in rows])
            worst = rows.index("worst-case")
            ax.axhline(worst - 0.5, color="white", linewidth=2)
            ax.axhline(worst + 0.5, color="white", linewidth=2)
            ax.set_title(f"Robust accuracy (%) at {NORM_NAMES.get(norm, norm)} ε = {label}")
            fig.colorbar(image, ax=ax, label="robust accuracy (%)", shrink=0.9)
            name = f"heatmap-{norm}-{label.replace('/', '-')}"
            caption = (
                f"Robust accuracy (%) of each defense (columns, {FLAG_MARK}: flagged) under "
                f"each attack (rows) at {NORM_NAMES.get(norm, norm)} ε = {label}; the worst case "
                "is over the benchmark's attacks above it; below it, the trust checks' sanity "
                "attacks. Empty: not run; several training seeds: their mean."
            )
            if cascade:
                caption += CASCADE_NOTE
            out.append(save(fig, folder, name, f"Attacks × defenses at ε = {label}", caption))
    return out
