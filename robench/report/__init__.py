"""Reports people look at: ``robench report RUN`` (and every ``robench run``) writes one
self-contained HTML page, with its figures as PNG and SVG files beside it.

The page holds the leaderboard (flagged defenses marked ⚑ and ranked last by default), the
trust checks' flags with their reasons, robustness curves (worst case against ε with its 95 %
interval as a band; and per attack), an attack × defense heatmap at each budget, the
adversarial-example grid (a few fixed evaluation examples, their adversarial versions under each
defense's strongest attack, and each defense's predictions on both: drawn from the examples
kept per cell, :mod:`robench.advexamples`, without attacking again), the training-loss curves of
every defense and seed, every result with its interval, and the provenance.

Layout, for a run folder ``RUN``::

    RUN/report.html                 # the page (figures inline as PNG)
    RUN/figures/robustness-linf.png .svg
    RUN/figures/attacks-linf.png .svg
    RUN/figures/heatmap-linf-0.1.png .svg   # one per budget (8-255 for ε = 8/255)
    RUN/figures/examples-linf-0.3.png .svg  # the grid, at the ranking budget
    RUN/figures/training.png .svg

A report named ``PREFIX-report.html`` puts its figures in ``PREFIX-figures/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from pathlib import Path

from robench.leaderboard import check_flagged
from robench.report.data import ReportError, RunData, load_run
from robench.report.figures import FigureFile, attack_curves, heatmaps, robustness_curves
from robench.report.html import (
    SCRIPT,
    STYLE_SHEET,
    all_results,
    figure_html,
    lead,
    leaderboard,
    provenance,
    trust,
)
from robench.report.pictures import example_grid, training_curves
from robench.report.summary import Summary, summarize
from robench.results import atomic_write

__all__ = ["Report", "ReportError", "default_paths", "write_report"]


@dataclass(frozen=True)
class Report:
    """What :func:`write_report` wrote."""

    html: Path
    figures: tuple[Path, ...]
    #: the page's size in bytes
    size: int


def default_paths(run: str | Path, output: str | Path | None = None) -> tuple[Path, Path]:
    """Where the page and its figures go: ``RUN/report.html`` and ``RUN/figures`` for a run
    folder; beside a results CSV ``PREFIX-results.csv``, ``PREFIX-report.html`` and
    ``PREFIX-figures``; for ``output`` ``…/NAME.html``, ``…/figures`` when NAME is ``report``,
    else ``…/NAME-figures`` (``…/PREFIX-figures`` for ``PREFIX-report``)."""
    run = Path(run)
    if output is None:
        if run.is_dir():
            output = run / "report.html"
        else:
            stem = run.name[: -len(".csv")] if run.name.endswith(".csv") else run.name
            prefix = stem[: -len("results")] if stem.endswith("results") else f"{stem}-"
            output = run.parent / f"{prefix}report.html"
    output = Path(output)
    stem = output.stem
    if stem.endswith("report"):
        figures = output.parent / f"{stem[: -len('report')]}figures"
    else:
        figures = output.parent / f"{stem}-figures"
    return output, figures


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>{body}</section>'


def _figures(figs: list[FigureFile], base: Path, empty: str) -> str:
    if not figs:
        return f'<p class="note">{escape(empty)}</p>'
    return "".join(figure_html(f, base) for f in figs)


def page(
    run: RunData,
    summary: Summary,
    figs: dict[str, list[FigureFile]],
    notes: dict[str, str],
    base: Path,
) -> str:
    """The HTML page."""
    p = run.provenance
    config = p.get("config") or {}
    name = str(p.get("benchmark") or (run.results["benchmark"].iloc[0] if len(run.results) else ""))
    dataset = (config.get("dataset") or {}).get("name", "")
    model = (config.get("model") or {}).get("name", "")
    n = int(run.results["n_examples"].max()) if run.results["n_examples"].notna().any() else 0
    facts = [
        f"dataset {dataset}" if dataset else "",
        f"model {model}" if model else "",
        f"{n} evaluation examples" if n else "",
        f"{len(summary.defenses) + len(summary.hidden)} defenses",
        f"{len(summary.budgets)} budgets",
        f"status {p['status']}" if p.get("status") else "",
        f"finished {p['finished']}" if p.get("finished") else "",
    ]
    described = f"<p>{escape(str(config['description']))}</p>" if config.get("description") else ""
    nav = [
        ("leaderboard", "Leaderboard"),
        ("trust", "Trust checks"),
        ("curves", "Robustness curves"),
        ("heatmaps", "Attacks × defenses"),
        ("examples", "Adversarial examples"),
        ("training", "Training"),
        ("results", "All results"),
        ("provenance", "Provenance"),
    ]
    grid_note = notes.get("examples", "")
    sections = [
        _section("leaderboard", "Leaderboard", lead(summary) + leaderboard(summary)),
        _section("trust", "Trust checks", trust(summary)),
        _section(
            "curves",
            "Robustness curves",
            _figures(figs["curves"] + figs["attacks"], base, "No attack results to draw."),
        ),
        _section(
            "heatmaps",
            "Attacks × defenses at each budget",
            _figures(figs["heatmaps"], base, "No attack results to draw."),
        ),
        _section(
            "examples",
            "Adversarial examples",
            _figures(figs["examples"], base, grid_note or "No adversarial examples were kept.")
            + (
                f'<p class="note">{escape(grid_note)}</p>' if figs["examples"] and grid_note else ""
            ),
        ),
        _section(
            "training",
            "Training",
            _figures(figs["training"], base, run.training_note or "No training records."),
        ),
        _section(
            "results",
            "All results",
            "<details><summary>Every cell of the results table (accuracies in %, click a "
            "heading to sort)</summary>" + all_results(run, summary) + "</details>",
        ),
        _section("provenance", "Provenance", provenance(run)),
    ]
    links = "".join(f'<a href="#{a}">{escape(t)}</a>' for a, t in nav)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>robench report: {escape(name)}</title><style>{STYLE_SHEET}</style></head><body>"
        f"<header><h1>robench report: {escape(name)}</h1>{described}"
        f"<p>{escape(' · '.join(f for f in facts if f))}</p></header>"
        f"<nav>{links}</nav><main>{''.join(sections)}</main>"
        f"<script>{SCRIPT}</script></body></html>\n"
    )


def write_report(
    run: str | Path,
    output: str | Path | None = None,
    *,
    figures: str | Path | None = None,
    flagged: str = "last",
    norm: str | None = None,
    eps: float | None = None,
) -> Report:
    """Write the report of ``run`` (a run folder or a results CSV) to ``output`` (default:
    :func:`default_paths`) and its figures, PNG and SVG, into ``figures``. ``flagged`` is the
    leaderboard's policy for flagged defenses (``last``, ``hide``, ``keep``); ``norm``/``eps``
    the ranking budget, which the adversarial-example grid shows too (default: the largest L∞
    ε). Raises :class:`ReportError` (one line) when ``run`` has no results a report can show."""
    check_flagged(flagged)
    data = load_run(run)
    html_path, default_figures = default_paths(run, output)
    folder = Path(figures) if figures is not None else default_figures
    summary = summarize(data.results, norm=norm, eps=eps, flagged=flagged)
    config = data.provenance.get("config") or {}
    dataset = str((config.get("dataset") or {}).get("name", "")) or str(
        data.results["benchmark"].iloc[0]
    )
    cascade = bool((config.get("evaluation") or {}).get("cascade"))
    grid, grid_note = example_grid(data, summary, folder, dataset)
    figs = {
        "curves": robustness_curves(summary, folder, dataset),
        "attacks": attack_curves(summary, folder, cascade),
        "heatmaps": heatmaps(summary, folder, cascade),
        "examples": grid,
        "training": training_curves(data, summary, folder),
    }
    text = page(data, summary, figs, {"examples": grid_note}, html_path.parent)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(html_path, text)
    files = tuple(f for group in figs.values() for fig in group for f in fig.files)
    return Report(html_path, files, len(text.encode()))
