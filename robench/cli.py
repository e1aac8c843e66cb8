"""The ``robench`` command line. Heavy imports stay inside commands so ``--help`` is instant."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

EXIT_FAILED_CELLS = 1
EXIT_CONFIG = 2


def _config_error(exc: Exception) -> click.ClickException:
    err = click.ClickException(str(exc))
    err.exit_code = EXIT_CONFIG
    return err


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="robench")
def main() -> None:
    """robench: benchmark adversarial attacks and defenses on image classifiers."""


_data_root = click.option(
    "--data-root",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="ROBENCH_DATA",
    help="Folder holding the datasets (env ROBENCH_DATA; default ~/.cache/robench/data).",
)


@main.command()
@click.argument("benchmark", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@_data_root
@click.option(
    "--output-dir",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where results.csv and results.json go (default: the file's output_dir).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def run(
    benchmark: Path, device: str, data_root: Path | None, output_dir: Path | None, quiet: bool
) -> None:
    """Train every defense of BENCHMARK (a TOML file) and score it against every attack.

    Exit status: 0 all cells succeeded, 1 some cell failed (recorded in its row),
    2 invalid benchmark.
    """
    from robench.errors import ConfigError, PluginError
    from robench.runner import run as run_benchmark

    try:
        df = run_benchmark(
            benchmark, device=device, data_root=data_root, output_dir=output_dir, quiet=quiet
        )
    except (ConfigError, PluginError) as exc:
        raise _config_error(exc) from None
    _print_table(df)
    if df.attrs.get("failed"):
        click.echo(f"{df.attrs['failed']} cell(s) failed; see the 'error' column.", err=True)
        sys.exit(EXIT_FAILED_CELLS)


def _print_table(df) -> None:
    from robench.leaderboard import summary_table

    click.echo(summary_table(df))


@main.command()
@click.argument("benchmark", type=click.Path(dir_okay=False, path_type=Path))
@_data_root
def validate(benchmark: Path, data_root: Path | None) -> None:
    """Check BENCHMARK completely without training anything."""
    from robench.config import load_benchmark
    from robench.errors import ConfigError, PluginError

    try:
        bench = load_benchmark(benchmark, data_root=data_root)
    except (ConfigError, PluginError) as exc:
        raise _config_error(exc) from None
    cells = sum(len(a.eps) for a in bench.attacks)
    models = sum(len(d.seeds) for d in bench.defenses)
    trained = f" ({models} trained models with their seeds)" if models > len(bench.defenses) else ""
    click.echo(
        f"{benchmark}: ok ({len(bench.defenses)} defenses{trained} × {cells} attack budgets, "
        f"dataset {bench.dataset.entry.name}, model {bench.model.entry.name})"
    )


def _param_docs(cls) -> list[dict[str, object]]:
    """Each parameter of a plugin class: name, type, default (None if required), description."""
    from pydantic_core import PydanticUndefined

    out = []
    for name, f in cls.Params.model_fields.items():
        required = f.default is PydanticUndefined and f.default_factory is None
        ann = f.annotation
        annotation = ann.__name__ if isinstance(ann, type) else str(ann)
        out.append(
            {
                "name": name,
                "type": annotation.replace("typing.", ""),
                "required": required,
                "default": None if required or f.default is PydanticUndefined else f.default,
                "description": f.description or "",
            }
        )
    return out


@main.command(name="list")
@click.argument("patterns", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--params", "-p", "with_params", is_flag=True, help="Show each one's parameters.")
@click.option(
    "--kind",
    type=click.Choice(["attack", "defense", "model", "dataset"]),
    help="Only this kind.",
)
def list_(patterns: tuple[str, ...], as_json: bool, with_params: bool, kind: str | None) -> None:
    """List every registered attack, defense, model and dataset, and who supplied it.

    PATTERNS (names or shell-style patterns such as 'art.*') narrow the list.
    """
    import fnmatch

    from robench.errors import PluginError
    from robench.registry import get_registry

    try:
        entries = get_registry().entries(kind)  # type: ignore[arg-type]
    except PluginError as exc:
        raise _config_error(exc) from None
    if patterns:
        entries = [e for e in entries if any(fnmatch.fnmatchcase(e.name, p) for p in patterns)]
        if not entries:
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
                "params": _param_docs(e.cls),
            }
            for e in entries
        ]
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    current = None
    width = max(20, *(len(e.name) for e in entries))
    for e in entries:
        if e.kind != current:
            current = e.kind
            click.echo(f"{e.kind}s:")
        click.echo(
            f"  {e.name:<{width}} {e.distribution} {e.version} ({e.plugin})  {e.description}"
        )
        if with_params:
            for p in _param_docs(e.cls):
                default = "required" if p["required"] else f"default {p['default']!r}"
                click.echo(f"      {p['name']}: {p['type']}, {default}  {p['description']}")


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
def leaderboard(
    results: tuple[Path, ...], output: Path | None, norm: str | None, eps: float | None
) -> None:
    """Rank the defenses in RESULTS (results.csv files or folders holding one).

    One row per defense, ranked by worst-case robust accuracy (the per-example minimum over
    every attack) at the ranking budget, with its 95 % interval, clean accuracy, each budget
    and the defense's trust-check flags beside it. -o writes CSV, or markdown for a .md file.
    """
    from robench.leaderboard import build_leaderboard, load_results, to_markdown

    try:
        frames = [load_results(p) for p in results]
        board = build_leaderboard(frames, norm=norm, eps=eps)
    except ValueError as exc:
        raise _config_error(exc) from None
    click.echo(board.to_string(index=False))
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        if output.suffix.lower() == ".md":
            output.write_text(to_markdown(board))
        else:
            board.to_csv(output, index=False)
        click.echo(f"wrote {output}", err=True)
