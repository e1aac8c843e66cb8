"""The base class shared by every plugin kind: a name, a description and typed parameters."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationInfo


class Params(BaseModel):
    """Base for a plugin's parameters: unknown keys are rejected, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def benchmark_path(path: Path, info: ValidationInfo) -> Path:
    """A path parameter as a benchmark file means it: ``~`` expanded, a relative path taken from
    the benchmark file's folder (the validation context's ``base_dir``; as given without one).
    For a ``field_validator(..., mode="after")`` of a plugin's :class:`Params`."""
    path = Path(path).expanduser()
    base = (info.context or {}).get("base_dir")
    return Path(base) / path if base is not None and not path.is_absolute() else path


class NoParams(Params):
    """A plugin that takes no parameters."""


class Plugin:
    """Common base of attacks, defenses, models and datasets.

    Subclasses set ``name`` (unique within their kind) and, if they take parameters, a
    ``Params`` subclass of :class:`Params`. The first line of the class docstring is shown by
    ``robench list``.
    """

    name: ClassVar[str]
    kind: ClassVar[str] = "plugin"
    Params: ClassVar[type[Params]] = NoParams
    #: parameters that make a working instance, for plugins with required parameters: used by
    #: robench's contract tests (which run every registered plugin) and shown as an example
    example_params: ClassVar[dict[str, Any]] = {}

    def __init__(self, params: Params | None = None, /, **kwargs: Any) -> None:
        if params is not None and kwargs:
            raise TypeError("pass either a Params instance or keyword parameters, not both")
        self.params = params if params is not None else self.Params(**kwargs)

    @classmethod
    def description(cls) -> str:
        doc = inspect.getdoc(cls) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.model_dump().items())
        return f"{type(self).__name__}({args})"
