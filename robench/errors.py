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


#: lines of torch.load's error text that advise rather than say what is wrong
_ADVICE = ("Weights only load failed", "Check the documentation", "Please file an issue")


def error_line(err: BaseException, *, with_type: bool = True) -> str:
    """The line of an exception's message that says what is wrong (``Type: line``): the first
    non-empty one, skipping the advice ``torch.load(weights_only=True)`` adds to its errors."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(_ADVICE)]
    text = (useful or lines or [""])[0].removeprefix("WeightsUnpickler error: ")
    if not with_type:
        return text or type(err).__name__
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
