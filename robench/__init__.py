"""robench: a plugin-based benchmark for adversarial attacks and defenses on image classifiers.

Importing this package is cheap: torch and the plugins load only when something needs them.

Public API
----------
- :data:`hookimpl` marks a plugin's hook implementations (see :mod:`robench.hookspecs`).
- :func:`run` runs a TOML benchmark and returns its results as a pandas DataFrame.
- The plugin base classes live in :mod:`robench.api`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

__version__ = "0.1.0"

#: Marks hook implementations: ``@robench.hookimpl def robench_register_attacks(register): ...``
hookimpl = pluggy.HookimplMarker("robench")

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


def run(config: Any, **kwargs: Any) -> pd.DataFrame:
    """Run a benchmark (a TOML path or an already-parsed dict); see :func:`robench.runner.run`."""
    from robench.runner import run as _run

    return _run(config, **kwargs)


__all__ = ["__version__", "hookimpl", "run"]
