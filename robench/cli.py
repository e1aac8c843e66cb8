"""The ``robench`` command line. Heavy imports stay inside commands so ``--help`` is instant."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from robench.cli_common import (
    EXIT_FAILED_CELLS,
    _config_error,
    _debug,
    _registry_or_exit,
    _report_failures,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="robench")
@click.option(
    "--debug",
    is_flag=True,
    help="Show full tracebacks: of plugins that failed to load and of errors otherwise "
    "reported in one line.",
)
def main(debug: bool) -> None:
    """robench: benchmark adversarial attacks and defenses on image classifiers.

    A plugin that fails to load is reported in one line and left out; the others work
    (ROBENCH_BLOCK_PLUGINS=name skips a plugin, ROBENCH_DISABLE_PLUGINS=1 all installed ones).
    """


_data_root = click.option(
    "--data-root",
    type=click.Path(path_type=Path),
    envvar="ROBENCH_DATA",
    help="Folder holding the datasets (env ROBENCH_DATA; default ~/.cache/robench/data).",
)
_overrides = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a setting of the file, e.g. training.epochs=1, evaluation.n_examples=200, "
    "'defenses[LABEL].training.epochs=2', 'attacks[*].eps=[0.1]' (a TOML value; repeatable).",
)


def _labels(value: str | None) -> tuple[str, ...]:
    return tuple(x.strip() for x in (value or "").split(",") if x.strip())


def _only(f):
    """``--defenses`` and ``--attacks``: run a subset of the file's entries."""
    f = click.option(
        "--attacks",
        "only_attacks",
        metavar="LABEL,...",
        help="Keep only these attacks of the file (labels, comma-separated).",
    )(f)
    return click.option(
        "--defenses",
        "only_defenses",
        metavar="LABEL,...",
        help="Keep only these defenses of the file (labels, comma-separated).",
    )(f)


@main.command()
@click.argument("benchmark", type=click.Path(path_type=Path))
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@_data_root
@_overrides
@_only
@click.option(
    "--output-dir",
    "-o",
    type=click.Path(path_type=Path),
    help="Where results.csv and results.json go (default: the file's output_dir).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="CPU threads for torch (default: the file's threads, else one per core).",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    help="Where the cells run: in this process (local, the default) or as Ray tasks "
    "([execution] executor; pip install -e '.[ray]').",
)
@click.option(
    "--address",
    metavar="auto|HOST:PORT",
    help="The Ray cluster to join (default: start a local one); implies --executor ray.",
)
@click.option(
    "--cell-timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Stop an evaluation cell after SECONDS and record it as an error (the file's "
    "[execution] cell_timeout; --set execution.cell_timeout=SECONDS).",
)
@click.option(
    "--train-timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Stop a training after SECONDS: its model's cells become errors ([execution] "
    "train_timeout).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.option(
    "--no-report",
    is_flag=True,
    help="Do not write report.html (and figures/) beside the results (robench report does "
    "it later).",
)
@click.option(
    "--fresh",
    is_flag=True,
    help="Train and score everything again instead of reusing the models and cells stored "
    "under the output folder (models/, cells.sqlite), replacing them.",
)
def run(
    benchmark: Path,
    device: str,
    data_root: Path | None,
    output_dir: Path | None,
    threads: int | None,
    executor: str | None,
    address: str | None,
    cell_timeout: float | None,
    train_timeout: float | None,
    quiet: bool,
    no_report: bool,
    fresh: bool,
    overrides: tuple[str, ...],
    only_defenses: str | None,
    only_attacks: str | None,
) -> None:
    """Train every defense of BENCHMARK (a TOML file) and score it against every attack.

    Every finished cell is stored under the output folder (cells.sqlite) and every trained model
    (models/<key>.safetensors): running it again, or after adding an attack, computes only what
    is not stored, and a run killed at any moment goes on where it stopped (a training from its
    last finished epoch). --fresh computes everything again. The run's report, report.html
    with its figures in figures/, is written beside the results (--no-report: not).

    Exit status: 0 all cells succeeded, 1 some cell failed (recorded in its row),
    2 invalid benchmark, 128 + N stopped by signal N (130: Ctrl-C, 143: SIGTERM).
    """
    from robench.config import load_benchmark
    from robench.errors import ConfigError, PluginError
    from robench.runner import run as run_benchmark

    registry = _registry_or_exit(for_benchmarks=True)
    if address is not None:
        executor = executor or "ray"
    for key, value in (
        ("executor", executor),
        ("address", address),
        ("cell_timeout", cell_timeout),
        ("train_timeout", train_timeout),
    ):
        if value is not None:
            overrides = (*overrides, f"execution.{key}={value!r}")
    try:
        # validated first, so that a plugin failure the benchmark depends on is one line
        bench = load_benchmark(
            benchmark,
            registry=registry,
            output_dir=output_dir,
            check_data=False,
            overrides=overrides,
            only={"defenses": _labels(only_defenses), "attacks": _labels(only_attacks)},
        )
    except (ConfigError, PluginError) as exc:
        _report_failures(registry, "Warning", mentioned=str(exc))
        raise _config_error(exc) from None
    _report_failures(registry, "Warning")
    try:
        df = run_benchmark(
            bench,
            device=device,
            data_root=data_root,
            registry=registry,
            quiet=quiet,
            threads=threads,
            fresh=fresh,
        )
    except (ConfigError, PluginError) as exc:
        raise _config_error(exc) from None
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP (robench.runner.Interrupted)
        import signal

        name = getattr(exc, "signal", "SIGINT")
        from robench.results import RESULTS_CSV, partial_name

        partial = bench.output_dir / partial_name(RESULTS_CSV)
        click.echo(
            f"Error: stopped by {name}: the finished cells are in {partial}; "
            "results.csv keeps the last finished run",
            err=True,
        )
        sys.exit(128 + signal.Signals[name].value)
    _print_table(df)
    if not no_report:
        _write_run_report(bench.output_dir, quiet)
    if df.attrs.get("failed"):
        click.echo(f"{df.attrs['failed']} cell(s) failed; see the 'error' column.", err=True)
        sys.exit(EXIT_FAILED_CELLS)


def _print_table(df) -> None:
    from robench.leaderboard import summary_table

    click.echo(summary_table(df))


def _write_run_report(folder: Path, quiet: bool) -> None:
    """The report of the run just finished; a failure is a warning, never the run's."""
    from robench.errors import error_line
    from robench.report import write_report

    try:
        report = write_report(folder)
    except Exception as exc:
        if _debug():
            import traceback

            click.echo("".join(traceback.format_exception(exc)).rstrip(), err=True)
        click.echo(f"Warning: report not written: {error_line(exc)}", err=True)
        return
    if not quiet:
        click.echo(f"report: {report.html} ({report.size / 1024:.0f} KiB)", err=True)


@main.command()
@click.argument("benchmark", type=click.Path(path_type=Path))
@_data_root
@_overrides
@_only
def validate(
    benchmark: Path,
    data_root: Path | None,
    overrides: tuple[str, ...],
    only_defenses: str | None,
    only_attacks: str | None,
) -> None:
    """Check BENCHMARK completely without training anything."""
    from robench.config import load_benchmark
    from robench.errors import ConfigError, PluginError

    registry = _registry_or_exit(for_benchmarks=True)
    try:
        bench = load_benchmark(
            benchmark,
            registry=registry,
            data_root=data_root,
            overrides=overrides,
            only={"defenses": _labels(only_defenses), "attacks": _labels(only_attacks)},
            build=False,  # the built-ins' torch-free bases: validate imports no torch
        )
    except (ConfigError, PluginError) as exc:
        _report_failures(registry, "Warning", mentioned=str(exc))
        raise _config_error(exc) from None
    _report_failures(registry, "Warning")
    cells = sum(len(a.eps) for a in bench.attacks)
    models = sum(len(d.seeds) for d in bench.defenses)
    trained = f" ({models} trained models with their seeds)" if models > len(bench.defenses) else ""
    click.echo(
        f"{benchmark}: ok ({len(bench.defenses)} defenses{trained} × {cells} attack budgets, "
        f"dataset {bench.dataset.entry.name}, model {bench.model.entry.name})"
    )


_flagged = click.option(
    "--flagged",
    default="last",
    show_default=True,
    metavar="last|hide|keep",
    help="Flagged defenses (a trust check failed): ranked after the unflagged ones (last), "
    "left out (hide), or ranked by their numbers alone (keep).",
)


@main.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the leaderboard here: CSV, or a markdown table for a .md file.",
)
@click.option("--norm", type=click.Choice(["linf", "l2"]), help="Norm of the ranking budget.")
@click.option("--eps", type=float, help="Rank at this ε (default: the largest ε present).")
@_flagged
def leaderboard(
    results: tuple[Path, ...],
    output: Path | None,
    norm: str | None,
    eps: float | None,
    flagged: str,
) -> None:
    """Rank the defenses in RESULTS (results.csv files or folders holding one).

    One row per defense, ranked by worst-case robust accuracy (the per-example minimum over
    every attack) at the ranking budget, with its 95 % interval, clean accuracy, each budget
    and the defense's trust-check flags beside it. A flagged defense (a trust check failed,
    marked ⚑) is ranked after every unflagged one (--flagged last), left out (hide) or ranked
    by its numbers alone (keep). -o writes CSV, or markdown for a .md file.
    """
    from robench.leaderboard import build_leaderboard, load_results, marked, to_markdown

    try:
        frames = [load_results(p) for p in results]
        board = build_leaderboard(frames, norm=norm, eps=eps, flagged=flagged)
    except ValueError as exc:
        raise _config_error(exc) from None
    click.echo(marked(board).to_string(index=False))
    if board.attrs.get("hidden"):
        hidden = ", ".join(board.attrs["hidden"])
        click.echo(f"hidden (flagged; --flagged last shows them): {hidden}", err=True)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        if output.suffix.lower() == ".md":
            output.write_text(to_markdown(board))
        else:
            board.to_csv(output, index=False)
        click.echo(f"wrote {output}", err=True)


@main.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The HTML file (default: RUN/report.html; PREFIX-report.html beside a "
    "PREFIX-results.csv).",
)
@click.option(
    "--figures",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the figures go as PNG and SVG (default: figures/ beside the report; "
    "PREFIX-figures/ for PREFIX-report.html).",
)
@_flagged
@click.option("--norm", type=click.Choice(["linf", "l2"]), help="Norm of the ranking budget.")
@click.option(
    "--eps",
    type=float,
    help="Rank, and show adversarial examples, at this ε (default: the largest ε present).",
)
def report(
    run_dir: Path,
    output: Path | None,
    figures: Path | None,
    flagged: str,
    norm: str | None,
    eps: float | None,
) -> None:
    """Write the report of RUN (a run's output folder, or a results CSV): one self-contained
    HTML page, with its figures as PNG and SVG files beside it.

    The page: the leaderboard with intervals and flags, the trust checks' reasons, robustness
    curves (worst case against ε with its 95 % interval; per attack), an attack × defense
    heatmap per budget, adversarial examples of a few fixed evaluation examples under each
    defense's strongest attack with its predictions, training-loss curves, every result, and
    the provenance. It needs no network access to view.
    """
    from robench.leaderboard import check_flagged
    from robench.report import ReportError, write_report

    try:
        check_flagged(flagged)
        written = write_report(
            run_dir, output, figures=figures, flagged=flagged, norm=norm, eps=eps
        )
    except (ReportError, ValueError) as exc:
        raise _config_error(exc) from None
    where = f" and {len(written.figures)} figure files in {written.figures[0].parent}"
    click.echo(
        f"wrote {written.html} ({written.size / 1024:.0f} KiB)" + (where if written.figures else "")
    )


def _add_commands() -> None:
    """The plugin-author commands live in :mod:`robench.cli_plugins` (list, plugin, schema)."""
    from robench import cli_plugins

    for command in (cli_plugins.list_, cli_plugins.plugin, cli_plugins.schema):
        main.add_command(command)


_add_commands()

if __name__ == "__main__":  # python -m robench.cli
    main()
