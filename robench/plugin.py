"""The base class shared by every plugin kind: a name, a description and typed parameters."""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    """Base for a plugin's parameters: unknown keys are rejected, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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
