"""The trust checks: honest defenses raise no flag; masking, probabilities, randomness and
inconsistent scores do."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

import robench
from robench.api import Attack, Defense
from robench.checks import Score, model_checks, result_checks
from robench.leaderboard import build_leaderboard
from robench.registry import build_registry

from .helpers import plugin_module, tiny_config, trained_digits_mlp

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return trained_digits_mlp(128)


def test_an_honest_model_raises_no_flag(digits):
    model, x, y = digits
    assert model_checks(model, x, y) == []


def test_softmax_outputs_are_flagged(digits):
    model, x, y = digits
    flags = model_checks(nn.Sequential(model, nn.Softmax(dim=1)), x, y)
    assert any("probabilities" in f for f in flags)


def test_a_random_forward_pass_is_flagged(digits):
    model, x, y = digits

    class Noisy(nn.Module):
        def forward(self, t):
            return model(t + 0.1 * torch.randn_like(t))

    assert any("non-deterministic" in f for f in model_checks(Noisy(), x, y))


def test_a_non_differentiable_input_step_is_masked_gradients(digits):
    model, x, y = digits

    class Quantised(nn.Module):  # rounding: the true gradient is zero almost everywhere
        def forward(self, t):
            return model(torch.round(t * 4) / 4)

    flags = model_checks(Quantised(), x, y)
    assert any("masked gradients" in f and "100%" in f for f in flags)


def _s(attack, eps, acc, **kw):
    return Score(attack, "linf", eps, acc, 500, **kw)


def test_result_checks():
    honest = [_s("fgsm", 0.1, 0.6, single_step=True), _s("pgd", 0.1, 0.5), _s("pgd", 0.2, 0.1)]
    honest += [_s("noise", 0.1, 0.9, gradient_free=True)]
    assert result_checks(honest) == []
    flags = result_checks(
        [
            _s("pgd", 0.1, 0.5),
            _s("pgd", 0.2, 0.7),  # grows with ε
            _s("fgsm", 0.2, 0.3, single_step=True),  # beats PGD at 0.2
            _s("square", 0.2, 0.2, gradient_free=True),  # beats every gradient attack
            _s("from-base", 0.2, 0.0, transfer=True),  # transfer attacks are not compared
        ]
    )
    assert len(flags) == 3
    assert "non-monotonic" in flags[0] and "single-step beats iterative" in flags[1]
    assert flags[2] == "gradient-free beats white-box at linf 0.2: square 20.0% < fgsm 30.0%"
    # within one point (or one example) is noise, not a flag
    assert result_checks([_s("pgd", 0.1, 0.5), _s("pgd", 0.2, 0.505)]) == []


def test_robust_above_clean_is_flagged_when_misclassified_examples_were_attacked():
    above = _s("pgd", 0.1, 0.5, adv_accuracy=0.95, clean_accuracy=0.9)
    (flag,) = result_checks([above])
    assert flag.startswith("robust above clean: pgd at linf 0.1 leaves 95.0% correct")
    assert result_checks([_s("pgd", 0.1, 0.5, adv_accuracy=0.5, clean_accuracy=0.9)]) == []
    # not attacked (adv_accuracy None), random search or transfer: no comparison
    assert result_checks([_s("pgd", 0.1, 0.5, clean_accuracy=0.9)]) == []
    noise = _s("noise", 0.1, 0.9, adv_accuracy=0.95, clean_accuracy=0.9, gradient_free=True)
    assert result_checks([noise]) == []


class Helpful(Attack):
    """Gradient DEScent on the loss: moves examples towards their label (a broken attack)."""

    name = "helpful"

    def run(self, model, x, y):
        x_adv = x.clone().requires_grad_(True)
        for _ in range(10):
            loss = nn.functional.cross_entropy(model(x_adv), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = self.threat.project(x_adv.detach() - 0.05 * grad.sign(), x)
            x_adv.requires_grad_(True)
        return x_adv.detach()


@robench.hookimpl
def robench_register_attacks(register):
    register(Helpful)


def test_the_runner_flags_an_attack_that_makes_the_model_more_accurate(tmp_path):
    registry = build_registry(
        entry_points=False,
        plugins=[plugin_module("helpful", robench_register_attacks=robench_register_attacks)],
    )
    config = tiny_config(
        tmp_path,
        training={"epochs": 1, "lr": 1e-3},  # a weak model: many misclassified examples
        attacks=[
            {"name": "helpful", "eps": [0.2]},
            {"name": "pgd", "eps": [0.1, 0.2], "steps": 3},
        ],
    )
    df = robench.run(config, registry=registry, quiet=True)
    clean = df[df["kind"] == "clean"].iloc[0]
    # per budget the misclassified examples are attacked once, by the most expensive attack:
    # at 0.2 the helpful one (Attack.cost's default, 1000, above PGD-3's 3)
    helpful = df[df["attack"] == "helpful"].iloc[0]
    assert helpful["adv_accuracy"] > clean["accuracy"] >= helpful["accuracy"]
    assert "robust above clean: helpful at linf 0.2" in clean["flags"]
    pgd = df[df["attack"] == "pgd"].set_index("eps")
    assert pd.isna(pgd.loc[0.2, "adv_accuracy"])  # not run on the misclassified examples
    assert pgd.loc[0.1, "adv_accuracy"] <= clean["accuracy"]  # the only attack at 0.1
    assert "robust above clean: pgd" not in clean["flags"]
    # not attacking the misclassified examples leaves the check out
    config["evaluation"]["attack_misclassified"] = False
    df = robench.run(config, registry=registry, quiet=True)
    assert df["adv_accuracy"].isna().all()
    assert "robust above clean" not in df[df["kind"] == "clean"].iloc[0]["flags"]


class Rounding(Defense):
    """Standard training behind an input quantiser (a test plugin that masks gradients)."""

    name = "rounding"

    def fit(self, model, train, ctx):
        wrapped = nn.Sequential(_Round(), model)
        return ctx.train(wrapped, train, lambda m, x, y: ctx.cross_entropy(m(x), y))


class _Round(nn.Module):
    def forward(self, t):
        return torch.round(t * 4) / 4


@robench.hookimpl
def robench_register_defenses(register):
    register(Rounding)


def test_the_runner_flags_a_masking_defense_and_not_standard_training(tmp_path):
    registry = build_registry(
        entry_points=False,
        plugins=[
            plugin_module("checks_plugins", robench_register_defenses=robench_register_defenses)
        ],
    )
    config = tiny_config(
        tmp_path,
        defenses=[{"name": "standard"}, {"name": "rounding"}],
        attacks=[
            {"name": "pgd", "eps": [0.1, 0.2], "steps": 5},
            {"name": "noise", "eps": [0.1, 0.2], "samples": 20},
        ],
    )
    df = robench.run(config, registry=registry, quiet=True)
    flags = df[df["kind"] == "clean"].set_index("defense")["flags"]
    assert flags["standard"] == ""
    assert "masked gradients" in flags["rounding"]
    assert "gradient-free beats white-box" in flags["rounding"]
    board = build_leaderboard([df]).set_index("defense")
    assert "masked gradients" in board.loc["rounding", "flags"]
    assert board.loc["standard", "flags"] == ""


def test_chance_check_flags_a_defense_a_huge_budget_does_not_break():
    from robench.checks import chance_check

    broken = Score("sanity:pgd-0.5", "linf", 0.5, 0.0, 500)
    assert chance_check([broken], num_classes=10) == []
    unbroken = Score("sanity:pgd-0.5", "linf", 0.5, 0.4, 500)
    (flag,) = chance_check([unbroken], num_classes=10)
    assert "leaves 40.0% (chance is 10.0%)" in flag


def test_sanity_attacks_run_by_default_and_can_be_switched_off(tmp_path):
    df = robench.run(tiny_config(tmp_path), quiet=True)
    sanity = df[df["kind"] == "sanity"]
    assert set(sanity["attack"]) == {
        "sanity:pgd-0.5",
        "sanity:noise",
        "sanity:square",
        "sanity:apgd-converge",
    }
    assert sanity.loc[sanity["attack"] == "sanity:pgd-0.5", "accuracy"].item() <= 0.1
    # the worst case stays over the benchmark's own attacks
    assert set(df.loc[df["kind"] == "worst-case", "attacks"]) == {"fgsm+pgd"}
    config = tiny_config(tmp_path)
    config["evaluation"]["sanity"] = False
    assert "sanity" not in set(robench.run(config, quiet=True)["kind"])
