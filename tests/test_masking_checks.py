"""The trust checks catch partially shattered gradients (a gradient that is non-zero but
misleading) through Square, alone and inside AutoAttack, and through the convergence check,
without flagging standard or adversarially trained models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import robench
from robench.api import Defense
from robench.checks import SANITY_CONVERGE, Score, result_checks
from robench.registry import build_registry

from .helpers import plugin_module, tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


class _Wobble(nn.Module):
    """``t + a·sin(w·t)``: a change of at most ``a`` per pixel, whose derivative ``1 + a·w·cos``
    swings between −19 and 21: gradients stay non-zero, and point nowhere useful."""

    def forward(self, t):
        return t + 0.02 * torch.sin(1000 * t)


class Wobble(Defense):
    """Standard training behind a high-frequency input wobble (a test plugin that shatters
    gradients)."""

    name = "wobble"

    def fit(self, model, train, ctx):
        wrapped = nn.Sequential(_Wobble(), model)
        return ctx.train(wrapped, train, lambda m, x, y: ctx.cross_entropy(m(x), y))


@robench.hookimpl
def robench_register_defenses(register):
    register(Wobble)


def test_shattered_gradients_are_flagged_and_honest_models_are_not(tmp_path):
    registry = build_registry(
        entry_points=False,
        plugins=[
            plugin_module("wobble_plugin", robench_register_defenses=robench_register_defenses)
        ],
    )
    config = tiny_config(
        tmp_path,
        training={"epochs": 8, "lr": 3e-3},
        evaluation={"n_examples": 200, "batch_size": 200},
        defenses=[
            {"name": "standard"},
            {
                "name": "adversarial",
                "label": "pgd-at",
                "attack": {"name": "pgd", "eps": 0.1, "steps": 5},
            },
            {"name": "wobble"},
        ],
        attacks=[
            {"name": "pgd", "label": "pgd-20", "eps": [0.1], "steps": 20},
            {"name": "autoattack", "eps": [0.1], "steps": 25, "n_queries": 500},
        ],
    )
    df = robench.run(config, registry=registry, quiet=True)
    assert (df["status"] == "ok").all(), df.loc[df["status"] != "ok", "error"].tolist()
    flags = df[df["kind"] == "clean"].set_index("defense")["flags"]
    assert flags["standard"] == ""
    assert flags["pgd-at"] == ""
    assert (
        "gradient-free beats white-box at linf 0.1: in autoattack, square fooled"
        in (flags["wobble"])
    )
    rows = df[df["defense"] == "wobble"].set_index("attack")
    # AutoAttack's own number is honest: its Square catches what its gradient attacks miss
    assert rows.loc["autoattack", "accuracy"] < rows.loc["pgd-20", "accuracy"] - 0.1
    assert "square" in rows.loc["autoattack", "fooled_by"]
    # without AutoAttack in the benchmark, the sanity Square beats the white-box attacks
    scores = [
        Score(
            a, "linf", 0.1, r["accuracy"], 200, gradient_free=a in ("sanity:square", "sanity:noise")
        )
        for a, r in rows.iterrows()
        if r["kind"] in ("attack", "sanity") and r["eps"] == 0.1 and a != "autoattack"
    ]
    assert any(
        f.startswith("gradient-free beats white-box at linf 0.1: sanity:square")
        for f in result_checks(scores)
    )


def _score(attack: str, accuracy: float, **kw) -> Score:
    return Score(attack, "linf", 0.1, accuracy, 1000, **kw)


def test_the_convergence_check_flags_only_a_marked_gap():
    own = _score("pgd-20", 0.50)
    assert result_checks([own, _score(SANITY_CONVERGE, 0.49)]) == []
    (flag,) = result_checks([own, _score(SANITY_CONVERGE, 0.45)])
    assert flag.startswith("not converged at linf 0.1: APGD-CE with 3 restarts of 100 steps")
    assert "45.0% < pgd-20 50.0%" in flag


def test_a_gradient_free_component_of_an_ensemble_is_masking_evidence():
    honest = _score(
        "autoattack",
        0.40,
        fooled_by=(("apgd-ce", 500), ("apgd-t", 12), ("fab-t", 0), ("square", 3)),
        free_components=("square",),
    )
    assert result_checks([honest]) == []
    masked = _score(
        "autoattack",
        0.10,
        fooled_by=(("apgd-ce", 100), ("apgd-t", 10), ("fab-t", 0), ("square", 300)),
        free_components=("square",),
    )
    (flag,) = result_checks([masked])
    assert "in autoattack, square fooled 300 examples (30.0%)" in flag
