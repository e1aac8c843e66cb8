"""The ``robench`` command line. Heavy imports stay inside commands so ``--help`` is instant."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

EXIT_FAILED_CELLS = 1
EXIT_CONFIG = 2


def _debug() -> bool:
    """Whether ``robench --debug`` was given."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().params.get("debug"))


def _config_error(exc: Exception) -> click.ClickException:
    """The one-line error (exit 2) for ``exc``; with --debug its traceback is printed first."""
    if _debug():
        import traceback

        click.echo("".join(traceback.format_exception(exc)).rstrip(), err=True)
    err = click.ClickException(str(exc))
    err.exit_code = EXIT_CONFIG
    return err


def _report_failures(registry, label: str, mentioned: str = "") -> None:
    """Each plugin that failed to load as one line on stderr (with --debug: its traceback
    first). Failures already named in ``mentioned`` (an error line) get only the traceback."""
    debug = _debug()
    hint = "" if debug else "; --debug shows the traceback"
    for f in registry.failures:
        if debug:
            click.echo(f.traceback.rstrip(), err=True)
        if f.source not in mentioned:
            click.echo(f"{label}: {f.message} ({f.hint}{hint})", err=True)


def _registry_or_exit(for_benchmarks: bool = False):
    """The registry of this process (for ``run``/``validate``: the one
    :func:`robench.config.load_benchmark` resolves names in, looked up there at call time)."""
    from robench import registry
    from robench.errors import PluginError

    try:
        if for_benchmarks:  # robench.config imports torch: not for ``list``
            from robench import config

            return config.get_registry()
        return registry.get_registry()
    except PluginError as exc:  # not raised for plugin failures; kept for safety
        raise _config_error(exc) from None


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


@main.command(name="list")
@click.argument("patterns", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--params", "-p", "with_params", is_flag=True, help="Show each one's parameters.")
@click.option(
    "--kind",
    type=click.Choice(["attack", "defense", "model", "dataset"]),
    help="Only this kind.",
)
@click.option(
    "--excluded", is_flag=True, help="The names plugins leave out on purpose, with the reason."
)
def list_(
    patterns: tuple[str, ...], as_json: bool, with_params: bool, kind: str | None, excluded: bool
) -> None:
    """List every registered attack, defense, model and dataset, and who supplied it.

    PATTERNS (names or shell-style patterns such as 'art.*') narrow the list. A plugin that
    failed to load is reported on stderr, one line each, and the exit status is 2.
    """
    import fnmatch

    registry = _registry_or_exit()
    if excluded:
        _list_excluded(registry, patterns, kind, as_json)
        return
    entries = registry.listings(kind)  # type: ignore[arg-type]
    if patterns:
        entries = [e for e in entries if any(fnmatch.fnmatchcase(e.name, p) for p in patterns)]
        if not entries:
            _report_failures(registry, "Error")
            raise click.UsageError(f"nothing registered matches {' '.join(patterns)}")
    if as_json:
        rows = [
            {
                "kind": e.kind,
                "name": e.name,
                "plugin": e.plugin,
                "distribution": e.distribution,
                "version": e.version,
                "description": e.description,
                "params": e.params,
            }
            for e in entries
        ]
        click.echo(json.dumps(rows, indent=2, default=str))
    else:
        for line in _list_lines(entries, with_params, _terminal_width()):
            click.echo(line)
    if registry.failures:
        _report_failures(registry, "Error")
        sys.exit(EXIT_CONFIG)


def _list_excluded(registry, patterns: tuple[str, ...], kind: str | None, as_json: bool) -> None:
    """``robench list --excluded``: each excluded name, its plugin and the reason."""
    import fnmatch

    rows = [
        x
        for (k, name), x in sorted(registry.excluded.items())
        if (kind is None or k == kind)
        and (not patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns))
    ]
    if as_json:
        keys = ("kind", "name", "plugin", "distribution", "version", "reason")
        click.echo(json.dumps([{k: getattr(x, k) for k in keys} for x in rows], indent=2))
    else:  # grouped by plugin, the reasons in full (they are the point)
        heading = None
        for x in sorted(rows, key=lambda x: (x.distribution, x.plugin, x.kind, x.name)):
            if (x.distribution, x.plugin) != heading:
                heading = (x.distribution, x.plugin)
                click.echo(f"{x.distribution} {x.version} ({x.plugin}):")
            click.echo(f"  {x.kind} {x.name}: {x.reason}")
    if registry.failures:
        _report_failures(registry, "Error")
        sys.exit(EXIT_CONFIG)


def _terminal_width() -> int:
    """The terminal's width (100 when unknown; at least 60)."""
    import shutil

    return max(60, shutil.get_terminal_size(fallback=(100, 24)).columns)


def _fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, ending in '…' when cut."""
    return text if len(text) <= width else text[: max(0, width - 1)].rstrip() + "…"


def _list_lines(entries, with_params: bool, width: int) -> list[str]:
    """Entries grouped by kind, then by the plugin that supplied them (its distribution and
    version shown once, in the group's heading): ``name  description``, each line cut to
    ``width``. Built-ins first, then the other plugins by distribution name."""
    lines: list[str] = []
    by_kind: dict[str, list] = {}
    for e in entries:
        by_kind.setdefault(e.kind, []).append(e)
    for kind, kind_entries in by_kind.items():
        lines.append(f"{kind}s:")
        groups: dict[tuple[str, str, str], list] = {}
        for e in kind_entries:
            groups.setdefault((e.distribution, e.version, e.plugin), []).append(e)
        order = sorted(groups, key=lambda g: (g[0] != "robench", g[0].lower(), g[2]))
        for dist, version, plugin in order:
            group = groups[(dist, version, plugin)]
            lines.append(_fit(f"  {dist} {version} ({plugin}):", width))
            column = min(max(len(e.name) for e in group), max(16, width // 3))
            for e in group:
                head = f"    {e.name:<{column}}  "
                lines.append(
                    _fit(head + e.description, width).rstrip() if e.description else head.rstrip()
                )
                if with_params:
                    for p in e.params:
                        default = "required" if p["required"] else f"default {p['default']!r}"
                        text = f"        {p['name']}: {p['type']}, {default}  {p['description']}"
                        lines.append(_fit(text.rstrip(), width))
    return lines


_flagged = click.option(
    "--flagged",
    default="last",
    show_default=True,
    metavar="last|hide|keep",
    help="Flagged defenses (a trust check failed): ranked after the unflagged ones (last), "
    "left out (hide), or ranked by their numbers alone (keep).",
)


@main.group()
def plugin() -> None:
    """Tools for plugin authors."""


@plugin.command(name="new")
@click.argument("name")
@click.option(
    "--dir",
    "parent",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    help="Where to create it (default: here).",
)
def plugin_new(name: str, parent: Path) -> None:
    """Write a working plugin distribution NAME/: one attack, its contract test (robench.testing),
    pyproject.toml with the robench entry point, and a benchmark that uses it."""
    from robench.errors import ConfigError
    from robench.template import new_plugin

    try:
        folder = new_plugin(name, parent)
    except ConfigError as exc:
        raise _config_error(exc) from None
    module = folder.name.replace("-", "_").lower()
    click.echo(f"wrote {folder}: pip install -e {folder} && robench list '{module}.*'")


@main.command()
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write it to a file."
)
def schema(output: Path | None) -> None:
    """Print the JSON Schema of a benchmark file, with every registered plugin's parameters.

    For editors that complete and check TOML from a schema (e.g. Taplo / Even Better TOML:
    put '#:schema ./robench.schema.json' on a benchmark's first line).
    """
    from robench.jsonschema import benchmark_schema

    registry = _registry_or_exit(for_benchmarks=True)
    text = json.dumps(benchmark_schema(registry), indent=1, ensure_ascii=False)
    if output is None:
        click.echo(text)
    else:
        output.write_text(text + "\n")
    if registry.failures:
        _report_failures(registry, "Warning")


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


if __name__ == "__main__":  # python -m robench.cli
    main()
