"""Exceptions with messages meant for users: one line, naming what is at fault."""

from __future__ import annotations


class RobenchError(Exception):
    """Base class of robench's own errors."""


class ConfigError(RobenchError):
    """A benchmark file or parameter is invalid. ``str(err)`` is a single line for the user."""

    def __init__(self, message: str, *, field: str | None = None, source: str | None = None):
        self.field = field
        self.source = source
        self.detail = message
        prefix = ""
        if source:
            prefix += f"{source}: "
        if field:
            prefix += f"{field}: "
        super().__init__(prefix + message)


class PluginError(RobenchError):
    """A plugin is broken: a duplicate name, a malformed entry or a bad hook implementation."""


class ContractError(RobenchError):
    """A plugin broke the attack or defense contract at run time (e.g. it changed model weights)."""
