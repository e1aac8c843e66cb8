"""One scoring engine: ``evaluate()`` gives the runner's per-example outcomes, and the
clean-misclassified examples are attacked once per budget."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import robench
from robench.api import Attack, ThreatModel, evaluate
from robench.attacks.fgsm import FGSM
from robench.attacks.pgd import PGD
from robench.defenses.standard import StandardTraining
from robench.outcomes import read_outcomes
from robench.registry import build_registry

from .helpers import plugin_module, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


class Stashing(StandardTraining):
    """Standard training that keeps the trained model (a test plugin)."""

    name = "stashing"
    models: ClassVar[list[nn.Module]] = []

    def fit(self, model, train, ctx):
        model = super().fit(model, train, ctx)
        type(self).models.append(model)
        return model


class Walking(Attack):
    """A minimisation attack: walks each example towards its inverted image and returns the
    first misclassified point on the way, at any distance, from a random offset (a test
    plugin: its result depends on the seed)."""

    name = "walking"
    minimizes = True

    def run(self, model, x, y):
        assert self.threat.eps == float("inf")
        x_adv, found = x.clone(), torch.zeros(len(x), dtype=torch.bool)
        offset = 0.05 * torch.rand(len(x), 1, 1, 1)
        for t in torch.linspace(0.05, 1.0, 10):
            point = (x + (t - offset) * (1 - 2 * x)).clamp(0, 1)
            fooled = (model(point).argmax(1) != y) & ~found
            x_adv[fooled] = point[fooled]
            found |= fooled
        return x_adv


@robench.hookimpl
def robench_register_attacks(register):
    register(Walking)


@robench.hookimpl
def robench_register_defenses(register):
    register(Stashing)


EPS = [0.1, 0.2]
#: as [[attacks]] tables; PGD with a random start, so that the seeds matter
ATTACKS = [
    {"name": "pgd", "label": "pgd-5", "eps": EPS, "steps": 5},
    {"name": "fgsm", "eps": EPS},
    {"name": "walking", "eps": EPS},
]


def _as_instances(bounds) -> list[tuple[str, Attack]]:
    """The same attacks for evaluate(), in the runner's order (table by table, ε by ε)."""
    made = []
    for eps in EPS:
        made.append(("pgd-5", PGD(ThreatModel("linf", eps, bounds), steps=5)))
    made += [("fgsm", FGSM(ThreatModel("linf", eps, bounds))) for eps in EPS]
    made += [("walking", Walking(ThreatModel("linf", eps, bounds))) for eps in EPS]
    return made


@pytest.mark.parametrize("cascade", [False, True])
def test_evaluate_gives_the_runners_outcomes(tmp_path, cascade):
    registry = build_registry(
        entry_points=False,
        plugins=[
            plugin_module(
                "engine_plugins",
                robench_register_attacks=robench_register_attacks,
                robench_register_defenses=robench_register_defenses,
            )
        ],
    )
    config = tiny_config(tmp_path, defenses=[{"name": "stashing"}], attacks=ATTACKS, seed=3)
    config["training"]["epochs"] = 1  # a weak model: clean-misclassified examples to attack
    config["evaluation"] |= {"sanity": False, "cascade": cascade, "batch_size": 50}
    Stashing.models.clear()
    df = robench.run(config, registry=registry, quiet=True)
    assert (df["status"] == "ok").all()
    (model,) = Stashing.models
    out = read_outcomes(tmp_path / "out")
    assert out.cascade is cascade
    digits = registry.get("dataset", "digits").cls()
    test = digits.load("test", None)
    x, y = test.x[out.example_index], test.y[out.example_index]

    ours = evaluate(
        model,
        x,
        y,
        _as_instances(digits.info(None).bounds),
        batch_size=50,
        cascade=cascade,
        seed=3,
        defense="stashing",
    )
    assert np.array_equal(ours.clean.numpy(), out.get("stashing", "clean"))
    assert (~ours.clean).any()  # misclassified examples: the check has work
    rows = df.query("kind == 'attack'")
    # the same cells, in the same order
    assert list(ours.outcomes) == list(zip(rows["attack"], rows["norm"], rows["eps"], strict=True))
    for (label, norm, eps), got in ours.outcomes.items():
        assert np.array_equal(got.robust.numpy(), out.get("stashing", label, norm, eps)), label
        row = rows[(rows["attack"] == label) & (rows["eps"] == eps)].iloc[0]
        assert got.n_attacked == row["n_attacked"]
        assert "+".join(got.chain) == row["attacks"]
        if got.adv_correct is None:
            assert pd.isna(row["adv_accuracy"])
        else:
            assert got.adv_correct.float().mean().item() == pytest.approx(row["adv_accuracy"])
    # per budget one attack took the misclassified examples: the first of a cascade, else the
    # most expensive (the minimisation attack)
    for eps in EPS:
        with_adv = [
            k[0] for k, o in ours.outcomes.items() if k[2] == eps and o.adv_correct is not None
        ]
        assert with_adv == (["fgsm"] if cascade else ["walking"])


class Counting(Attack):
    """Returns its input and notes how many examples it was given (a test plugin)."""

    name = "counting"
    seen: ClassVar[list[tuple[str, float, int]]] = []
    price: ClassVar[float] = 1.0

    def cost(self) -> float:
        return self.price

    def run(self, model, x, y):
        type(self).seen.append((type(self).__name__, self.threat.eps, len(x)))
        return x


class Cheap(Counting):
    name = "cheap"
    price = 1.0


class Dear(Counting):
    name = "dear"
    price = 50.0


@pytest.fixture
def guesser():
    """An untrained linear model on 100 random 1×8×8 images: mostly misclassified."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    x, y = torch.rand(100, 1, 8, 8), torch.randint(0, 10, (100,))
    return model, x, y


@pytest.mark.parametrize("cascade", [False, True])
def test_later_attacks_of_a_budget_skip_the_misclassified(guesser, cascade):
    model, x, y = guesser
    a, b = ThreatModel("linf", 0.1), ThreatModel("linf", 0.2)
    Counting.seen.clear()
    res = evaluate(model, x, y, [Cheap(a), Dear(a), Cheap(b)], batch_size=1000, cascade=cascade)
    n_clean = int(res.clean.sum())
    assert 0 < n_clean < len(y)
    # at 0.1: a cascade's first (the cheap one) or else the most expensive takes every example
    # once; the other only the clean-correct ones; at 0.2 the one attack takes every example
    full = "Cheap" if cascade else "Dear"
    expected = {("Cheap", 0.1): n_clean, ("Dear", 0.1): n_clean, ("Cheap", 0.2): len(y)}
    expected[(full, 0.1)] = len(y)
    attacked: dict[tuple[str, float], int] = {}
    for kind, eps, n in Counting.seen:  # the misclassified examples: a pass of their own
        attacked[(kind, eps)] = attacked.get((kind, eps), 0) + n
    assert attacked == expected
    assert len(Counting.seen) == 5  # two passes for each attack that takes every example
    for (label, _, eps), out in res.outcomes.items():
        assert (out.adv_correct is not None) == (eps == 0.2 or label == full.lower())
        assert out.n_attacked == expected[(label.capitalize(), eps)]
    # without attack_misclassified, no attack sees a misclassified example
    Counting.seen.clear()
    evaluate(model, x, y, [Cheap(a), Dear(a), Cheap(b)], attack_misclassified=False)
    assert {n for *_, n in Counting.seen} == {n_clean}


def test_evaluate_defaults_are_the_benchmarks():
    import inspect

    from robench.schema import EvaluationConfig

    defaults = EvaluationConfig()
    params = inspect.signature(evaluate).parameters
    for name in ("batch_size", "cascade", "attack_misclassified", "precision"):
        assert params[name].default == getattr(defaults, name), name
