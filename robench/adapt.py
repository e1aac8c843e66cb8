"""Helpers for plugins that adapt another library's classes (ART, Foolbox) into robench plugins.

:func:`model_device_dtype` (from :mod:`robench.model`) says where and in what precision a model
runs, so that the library runs there too. :func:`params_from_signature` turns a library class's
keyword parameters into a robench :class:`~robench.plugin.Params` model, so that a benchmark can
pass them by name and a misspelled or unknown key is caught when the benchmark is validated,
before anything trains.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Mapping
from typing import Any

from pydantic import create_model

from robench.model import model_device_dtype
from robench.plugin import Params

__all__ = ["iteration_cost", "model_device_dtype", "params_from_signature"]


_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def _field_type(param: inspect.Parameter, default: Any) -> Any:
    """A lenient type for a library parameter, inferred from its default and annotation.

    Values the type cannot tell apart (arrays, callables, None) are left to the library to
    check when the attack is built.
    """
    text = str(param.annotation) if param.annotation is not inspect.Parameter.empty else ""
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return float if "float" in text else int
    if isinstance(default, float):
        return float
    if isinstance(default, str) and "str" in text and "|" not in text and "Union" not in text:
        return str
    return Any


def params_from_signature(
    model_name: str,
    func: Callable[..., Any],
    *,
    skip: Collection[str] = (),
    defaults: Mapping[str, Any] | None = None,
    doc: str = "",
) -> type[Params]:
    """A :class:`Params` model with one field per keyword parameter of ``func``.

    ``skip`` names parameters the adapter sets itself (the estimator, ε, the norm...). Each
    field keeps the library's default unless ``defaults`` overrides it; a parameter without a
    default is required. Unknown keys are rejected, like every robench plugin's parameters.
    """
    defaults = dict(defaults or {})
    fields: dict[str, Any] = {}
    for name, param in inspect.signature(func).parameters.items():
        if name == "self" or name in skip or param.kind in _VARIADIC:
            continue
        default = defaults.get(name, param.default)
        if default is inspect.Parameter.empty:
            fields[name] = (_field_type(param, None), ...)
        else:
            fields[name] = (_field_type(param, default), default)
    model = create_model(model_name, __base__=Params, **fields)
    model.__doc__ = doc or f"Keyword parameters of {getattr(func, '__qualname__', func)}."
    return model


#: parameter names that count iterations, and restarts, in ART's and Foolbox's attacks
_ITERATIONS = ("steps", "max_iter", "nb_iter", "num_iter", "iterations", "max_iterations")
_RESTARTS = ("num_random_init", "nb_random_init", "restarts", "nb_restarts", "random_restarts")


def iteration_cost(params: Params, *, single_step: bool, gradient_free: bool) -> float:
    """:meth:`robench.attack.Attack.cost` for a library attack, read from its parameters:
    iterations × restarts (1 for a single-step attack, 1000 if no iteration count is found),
    a third of that for gradient-free attacks (forward passes only)."""
    values = params.model_dump()
    if single_step:
        cost = 1.0
    else:
        steps = [values[k] for k in _ITERATIONS if isinstance(values.get(k), int)]
        cost = float(steps[0]) if steps else 1000.0
        # restarts: ART's num_random_init = 0 is one run without a random start, not none
        cost *= max([1] + [values[k] for k in _RESTARTS if isinstance(values.get(k), int)])
    return cost / 3 if gradient_free else cost
