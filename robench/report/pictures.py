"""The report's pictures of examples and of training: the adversarial-example grid (the NSL
tutorial's figure, for every defense) and the training-loss curves."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from robench.advexamples import ModelExamples
from robench.report.data import RunData, eps_label
from robench.report.figures import NORM_NAMES, FigureFile, colors, defense_label, save, style
from robench.report.summary import Summary

#: class names of the datasets whose labels are conventionally shown by name
CLASS_NAMES = {
    "cifar10": (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ),
}
_RIGHT, _WRONG = "#1a7f37", "#cf222e"


@dataclass(frozen=True)
class Tile:
    """One watched example on one defense: its adversarial version (None: not attacked), the
    defense's predictions on both, and the attack that made it."""

    adv: np.ndarray | None
    clean_pred: int
    adv_pred: int | None
    attack: str
    dist: float


def strongest(results: pd.DataFrame, defense: str, seed: int, norm: str, eps: float) -> list[str]:
    """The attacks of ``defense`` (training seed ``seed``) at ``norm``/``eps``, strongest
    (lowest robust accuracy) first; sanity attacks are not among them."""
    r = results
    seeds = r["train_seed"].astype("Float64").fillna(-1).astype(int)
    at = r[
        (r["defense"] == defense)
        & (seeds == seed)
        & (r["kind"] == "attack")
        & (r["status"] == "ok")
        & (r["norm"] == norm)
        & np.isclose(r["eps"].astype(float), eps)
    ]
    return list(at.sort_values("accuracy", kind="stable")["attack"])


def tiles(model: ModelExamples, attacks: list[str], norm: str, eps: float) -> list[Tile]:
    """Per watched example: the adversarial example of the first of ``attacks`` (strongest
    first) that attacked it; where that one did not (clean-misclassified examples, or in a
    cascade examples an earlier attack fooled), the strongest attack that fooled it, else any
    that ran on it; else the clean image, not attacked."""
    out = []
    for p in range(len(model.y)):
        y = int(model.y[p])
        found = []
        for a in attacks:
            cell = model.cells.get((a, norm, float(eps)))
            if cell is None:
                continue
            hit = np.flatnonzero(cell.pos == p)
            if len(hit):
                i = int(hit[0])
                found.append((a, cell.x[i], int(cell.pred[i]), float(cell.dist[i])))
        if found and found[0][0] != attacks[0]:
            fooled = [f for f in found if f[2] != y]
            found = fooled or found
        if found:
            a, adv, pred, dist = found[0]
            out.append(Tile(adv, int(model.pred[p]), pred, a, dist))
        else:
            out.append(Tile(None, int(model.pred[p]), None, "", 0.0))
    return out


def _image(ax, x: np.ndarray, faded: bool = False) -> None:
    ax.grid(False)
    ax.set_frame_on(False)
    ax.set_xticks([])
    ax.set_yticks([])
    alpha = 0.35 if faded else 1.0
    if x.shape[0] == 1:
        ax.imshow(x[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest", alpha=alpha)
    else:
        ax.imshow(np.clip(x.transpose(1, 2, 0), 0, 1), interpolation="nearest", alpha=alpha)


def example_grid(
    run: RunData, summary: Summary, folder: Path | None, dataset: str
) -> tuple[list[FigureFile], str]:
    """The adversarial-example grid at the ranking budget: the watched clean examples with
    their labels, then per defense their adversarial versions under its strongest attack with
    its predictions on both. Returns the figure (or none) and a note on what is missing."""
    if summary.ranked_at is None or not run.examples:
        return [], run.examples_note or "no budget to show adversarial examples at"
    norm, eps = summary.ranked_at
    names = CLASS_NAMES.get(dataset)

    def name(c: int) -> str:
        return names[c] if names and 0 <= c < len(names) else str(c)

    rows: list[tuple[str, int, list[Tile], str]] = []
    missing = []
    for d in summary.defenses:
        seeds = sorted(s for dd, s in run.examples if dd == d)
        model = run.examples[(d, seeds[0])] if seeds else None
        attacks = strongest(run.results, d, seeds[0], norm, eps) if seeds else []
        if model is None or not attacks:
            missing.append(d)
            continue
        row = tiles(model, attacks, norm, eps)
        if all(t.adv is None for t in row) and not any(
            (a, norm, float(eps)) in model.cells for a in attacks
        ):
            missing.append(d)
            continue
        rows.append((d, seeds[0], row, attacks[0]))
    note = run.examples_note
    if missing:
        note = (note + "; " if note else "") + (
            f"not in the grid (no kept examples at this budget): {', '.join(missing)}"
        )
    if not rows:
        return [], note
    first = run.examples[(rows[0][0], rows[0][1])]
    k, label = len(first.y), eps_label(eps, summary.k255.get(norm, False))
    several = any(len([s for dd, s in run.examples if dd == d]) > 1 for d, *_ in rows)
    with style():
        fig = Figure(figsize=(1.15 * k + 1.9, 1.45 * (len(rows) + 1) + 0.5), layout="constrained")
        axes = fig.subplots(len(rows) + 1, k, squeeze=False)
        for p in range(k):
            _image(axes[0, p], first.x[p])
            axes[0, p].set_title(f"label {name(int(first.y[p]))}", fontsize=8)
        axes[0, 0].set_ylabel("clean", fontsize=9)
        for i, (d, seed, row, strongest_attack) in enumerate(rows, start=1):
            for p, t in enumerate(row):
                ax = axes[i, p]
                y = int(first.y[p])
                if t.adv is None:
                    _image(ax, first.x[p], faded=True)
                    ax.set_title(f"{name(t.clean_pred)} (not attacked)", fontsize=7, color=_WRONG)
                    continue
                _image(ax, t.adv)
                color = _RIGHT if t.adv_pred == y else _WRONG
                ax.set_title(f"{name(t.clean_pred)} → {name(t.adv_pred)}", fontsize=8, color=color)
                size = f"{t.dist * 255:.3g}/255" if summary.k255.get(norm) else f"{t.dist:.3g}"
                sub = f"‖δ‖{'∞' if norm == 'linf' else '₂'} {size}"
                if t.attack != strongest_attack:
                    sub += f"\n{t.attack}"
                ax.set_xlabel(sub, fontsize=6.5)
            seed_note = f", seed {seed}" if several else ""
            axes[i, 0].set_ylabel(
                f"{defense_label(summary, d)}\n{strongest_attack}{seed_note}", fontsize=8
            )
        fig.suptitle(
            f"Adversarial examples at {NORM_NAMES.get(norm, norm)} ε = {label}: prediction on "
            "the clean image → on its adversarial version",
            fontsize=10,
        )
    caption = (
        f"Top row: {k} fixed evaluation examples (the first of the seeded evaluation subset) "
        "with their labels. Below, for each defense, their adversarial versions under the "
        f"attack strongest against it at ε = {label} (named on the left) and the defense's "
        "prediction on the clean image → on the adversarial one (green: correct, red: wrong); "
        "‖δ‖ is the perturbation's size. An example that attack did not run on (misclassified "
        "clean, or in a cascade fooled earlier) shows another attack's example, named under it."
    )
    name_ = f"examples-{norm}-{label.replace('/', '-')}"
    return [save(fig, folder, name_, "Adversarial examples", caption)], note


def training_curves(run: RunData, summary: Summary, folder: Path | None) -> list[FigureFile]:
    """Per defense, the mean training loss of every epoch, one line per training seed (with
    ``best_checkpoint``: the held-out robust accuracy on a second axis, the epoch kept
    marked)."""
    defenses = [d for d in summary.defenses if any(dd == d for dd, _ in run.training)]
    if not defenses:
        return []
    palette = colors(summary)
    ncols = min(3, len(defenses))
    nrows = math.ceil(len(defenses) / ncols)
    with style():
        fig = Figure(figsize=(3.8 * ncols + 0.6, 2.9 * nrows + 0.5), layout="constrained")
        axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
        for ax, d in zip(axes, defenses, strict=False):
            seeds = sorted(s for dd, s in run.training if dd == d)
            for j, s in enumerate(seeds):
                rec = run.training[(d, s)]
                epochs = np.arange(1, len(rec.losses) + 1)
                label = f"seed {s}" if s >= 0 else "loss"
                style_ = ["-", "--", ":", "-."][j % 4]
                ax.plot(
                    epochs,
                    rec.losses,
                    marker="o",
                    markersize=3,
                    linestyle=style_,
                    color=palette[d],
                    label=label,
                )
                if rec.held_out:
                    twin = ax.twinx()
                    held = [100 * r for r, _ in rec.held_out]
                    twin.plot(
                        range(1, len(held) + 1), held, color="grey", linestyle=style_, linewidth=1
                    )
                    twin.set_ylabel("held-out robust acc. (%)", fontsize=8, color="grey")
                    twin.set_ylim(0, 100)
                    if rec.best_epoch:
                        ax.axvline(rec.best_epoch, color="grey", linewidth=0.8, linestyle=":")
            ax.set_title(defense_label(summary, d))
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("training loss (epoch mean)")
            if len(seeds) > 1:
                ax.legend(frameon=False, fontsize=8)
        for ax in axes[len(defenses) :]:
            ax.set_visible(False)
        fig.suptitle("Training loss per epoch")
    caption = (
        "The mean training loss of each epoch (the defense's own loss: cross-entropy, or its "
        "adversarial or regularised objective, so levels differ between defenses), one line "
        "per training seed; where the training kept its best epoch by held-out robust accuracy "
        "(best_checkpoint), that accuracy is grey on the right axis and the epoch kept dotted."
    )
    return [save(fig, folder, "training", "Training curves", caption)]
