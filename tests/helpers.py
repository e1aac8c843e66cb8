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


def validate_with_attack(tmp_path, attack_table: str):
    """``robench validate`` (click's test runner) on a tiny digits benchmark whose one
    ``[[attacks]]`` table is ``attack_table`` (TOML lines); returns the click result."""
    from click.testing import CliRunner

    from robench.cli import main

    path = tmp_path / "bench.toml"
    path.write_text(
        'name = "b"\n[dataset]\nname = "digits"\n[model]\nname = "small-cnn"\n'
        '[[defenses]]\nname = "standard"\n[[attacks]]\n' + attack_table
    )
    return CliRunner().invoke(main, ["validate", str(path)])


def plugin_module(name: str, **hooks: Any) -> types.ModuleType:
    """A throwaway plugin module holding the given hook implementations."""
    mod = types.ModuleType(name)
    for hook_name, f in hooks.items():
        setattr(mod, hook_name, f)
    return mod


def trained_digits_mlp(n_test: int):
    """An MLP trained for about a second on 1500 of scikit-learn's digits (1×8×8, in [0, 1]),
    with ``n_test`` held-out examples: ``(model in eval mode, x_test, y_test)``."""
    import torch
    from sklearn.datasets import load_digits
    from torch import nn

    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(data.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1500], perm[1500 : 1500 + n_test]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[train]), y[train]).backward()
        opt.step()
    model.eval()
    return model, x[test], y[test]


def craft_in_budget(attack, digits, *, seed: int = 0, x=None):
    """``attack``'s adversarial examples for ``digits`` = ``(model, x_test, y)`` (or for ``x``),
    from ``seed``, asserting that the raw result stayed inside the threat model."""
    import torch

    from robench.attack import craft

    model, x_test, y = digits
    x = x_test if x is None else x
    torch.manual_seed(seed)
    crafted = craft(attack, model, x, y)
    assert crafted.n_violations == 0, "a native attack must stay inside the threat model"
    return crafted.x_adv


def fooled(digits, x_adv):
    """Per example: the model of ``digits`` misclassifies ``x_adv``."""
    import torch

    model, _, y = digits
    with torch.no_grad():
        return model(x_adv).argmax(dim=1) != y


def accuracy_under(digits, x_adv) -> float:
    """The accuracy of the model of ``digits`` on ``x_adv``."""
    return 1.0 - fooled(digits, x_adv).float().mean().item()


def counting_model(model):
    """``model`` wrapped to count the examples that go through its forward pass (``.seen``)."""
    from torch import nn

    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model, self.seen = model, 0

        def forward(self, x):
            self.seen += len(x)
            return self.model(x)

    return Counting()


def install_plugin(root, package: str, source: str, distribution: str, entry_point: str):
    """Build and install a one-module plugin distribution (version 0.0.1, entry point
    ``entry_point = package`` in the ``robench`` group) into ``root/site``; returns that folder
    (put it on ``sys.path`` / ``PYTHONPATH`` to install it). Installing again replaces it."""
    import textwrap

    pkg = root / "src"
    (pkg / package).mkdir(parents=True, exist_ok=True)
    (pkg / package / "__init__.py").write_text(source)
    (pkg / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [build-system]
            requires = ["setuptools"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{distribution}"
            version = "0.0.1"

            [project.entry-points.robench]
            {entry_point} = "{package}"
            """
        )
    )
    return pip_install(pkg, root / "site")


def pip_install(project, site):
    """``pip install`` the project folder into ``site`` (``--target``: no venv touched, no
    index, no build isolation); returns ``site``."""
    import subprocess
    import sys

    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--upgrade",
            "--target",
            str(site),
            str(project),
        ],
        check=True,
        capture_output=True,
    )
    return site
