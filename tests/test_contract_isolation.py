"""An attack cannot corrupt the model for the cells after it.

A tiny digits benchmark (a CNN with batch norm) is run once with the attacks [fgsm, pgd] and
once with a hostile attack between them, for several ways of damaging the model: the hostile
cell must fail with a message naming the change, and every other row (clean, FGSM, PGD, the
worst case, the sanity attacks) must carry exactly the numbers of the run without it.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

import robench
from robench.api import Attack, Model
from robench.registry import build_registry

from .helpers import plugin_module

pytestmark = pytest.mark.usefixtures("one_thread")

NUMBERS = ["accuracy", "n_correct", "n_examples", "ci_low", "ci_high", "n_violations"]


class BNNet(Model):
    """A small CNN with batch norm, for 1×8×8 digits (a test plugin)."""

    name = "bn-cnn"

    def build(self, info):
        c, h, w = info.shape
        return nn.Sequential(
            nn.Conv2d(c, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * (h // 2) * (w // 2), info.num_classes),
        )


def _zero_under_no_grad(model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        model[0].weight.zero_()


def _write_through_data(model: nn.Module, x: torch.Tensor) -> None:
    model[-1].weight.data.zero_()


def _train_mode_forward(model: nn.Module, x: torch.Tensor) -> None:
    model.train()
    with torch.no_grad():
        model(torch.rand_like(x))  # shifts batch norm's running statistics
    model.eval()


def _swap_submodule(model: nn.Module, x: torch.Tensor) -> None:
    last = model[-1]
    model[len(model) - 1] = nn.Linear(last.in_features, last.out_features)


#: kind: (what the attack does, what the error says it changed)
HOSTILE = {
    "zero-under-no-grad": (_zero_under_no_grad, "changed the model's parameter '0.weight'"),
    "data-write": (_write_through_data, "changed the model's parameter '5.weight'"),
    "bn-train-mode": (
        _train_mode_forward,
        "changed the model's buffer '1.running_mean' (did it run the model in train mode?)",
    ),
    "submodule-swap": (_swap_submodule, "replaced submodule '5'"),
}


def _hostile(kind: str) -> type[Attack]:
    act = HOSTILE[kind][0]

    class Hostile(Attack):
        name = f"hostile-{kind}"

        def cost(self) -> float:
            return 1.0

        def run(self, model, x, y):
            act(model, x)
            return x

    return Hostile


@robench.hookimpl
def robench_register_models(register):
    register(BNNet)


@robench.hookimpl
def robench_register_attacks(register):
    for kind in HOSTILE:
        register(_hostile(kind))


@pytest.fixture(scope="module")
def registry():
    plugin = plugin_module(
        "hostile_plugins",
        robench_register_models=robench_register_models,
        robench_register_attacks=robench_register_attacks,
    )
    return build_registry(entry_points=False, plugins=[plugin])


def _config(attacks: list[str]) -> dict:
    eps = [0.1, 0.2]
    specs = {
        "fgsm": {"name": "fgsm", "eps": eps},
        "pgd": {"name": "pgd", "eps": eps, "steps": 3},
    }
    return {
        "name": "isolation",
        "seed": 0,
        "dataset": {"name": "digits"},
        "model": {"name": "bn-cnn"},
        "training": {"epochs": 2, "lr": 1e-2, "train_examples": 600},
        "evaluation": {"n_examples": 60, "batch_size": 32},
        "defenses": [{"name": "standard"}],
        "attacks": [specs.get(a, {"name": a, "eps": eps}) for a in attacks],
    }


def _run(registry, attacks: list[str], out) -> pd.DataFrame:
    return robench.run(_config(attacks), registry=registry, output_dir=out, quiet=True)


def _numbers(df: pd.DataFrame) -> pd.DataFrame:
    rows = df[~df["attack"].str.startswith("hostile")]
    return rows.set_index(["kind", "attack", "eps"])[NUMBERS].sort_index()


@pytest.fixture(scope="module")
def baseline(registry, tmp_path_factory) -> pd.DataFrame:
    df = _run(registry, ["fgsm", "pgd"], tmp_path_factory.mktemp("baseline"))
    assert (df["status"] == "ok").all()
    assert df[df["kind"] == "clean"]["accuracy"].item() > 0.5  # a model worth damaging
    return df


@pytest.mark.parametrize("kind", HOSTILE)
def test_a_hostile_attack_fails_its_cell_and_the_others_are_unaffected(
    kind: str, registry, baseline: pd.DataFrame, tmp_path
) -> None:
    df = _run(registry, ["fgsm", f"hostile-{kind}", "pgd"], tmp_path)

    hostile = df[df["attack"] == f"hostile-{kind}"]
    assert len(hostile) == 2 and (hostile["status"] == "error").all()
    message = f"attack 'hostile-{kind}' {HOSTILE[kind][1]} (restored)"
    assert all(message in error for error in hostile["error"]), list(hostile["error"])
    others = df[df["attack"] != f"hostile-{kind}"]
    assert (others[others["kind"] != "worst-case"]["status"] == "ok").all()
    worst = df[df["kind"] == "worst-case"]
    assert (worst["attacks"] == "fgsm+pgd").all()
    pd.testing.assert_frame_equal(_numbers(df), _numbers(baseline))
