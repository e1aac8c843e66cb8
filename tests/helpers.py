"""Small builders shared by tests."""

from __future__ import annotations

import types
from typing import Any


def tiny_config(tmp_path, **overrides: Any) -> dict[str, Any]:
    """A benchmark as a dict: digits, small CNN, one quick epoch, FGSM and PGD-3."""
    config: dict[str, Any] = {
        "name": "tiny",
        "seed": 0,
        "output_dir": str(tmp_path / "out"),
        "dataset": {"name": "digits"},
        "model": {"name": "small-cnn"},
        "training": {"epochs": 3, "lr": 3e-3},
        "evaluation": {"n_examples": 120, "batch_size": 64},
        "defenses": [{"name": "standard"}],
        "attacks": [
            {"name": "fgsm", "eps": [0.1, 0.2]},
            {"name": "pgd", "eps": [0.1, 0.2], "steps": 3},
        ],
    }
    config.update(overrides)
    return config


def plugin_module(name: str, **hooks: Any) -> types.ModuleType:
    """A throwaway plugin module holding the given hook implementations."""
    mod = types.ModuleType(name)
    for hook_name, f in hooks.items():
        setattr(mod, hook_name, f)
    return mod
