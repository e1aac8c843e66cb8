"""What the ``robench`` commands share: exit statuses, one-line errors, the registry."""

from __future__ import annotations

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
