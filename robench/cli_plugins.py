"""The ``robench`` commands for plugin authors and users of the catalogue: ``list``, ``plugin
new`` and ``schema`` (added to :func:`robench.cli.main`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from robench.cli_common import EXIT_CONFIG, _config_error, _registry_or_exit, _report_failures


@click.command(name="list")
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


@click.group()
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


@click.command()
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
