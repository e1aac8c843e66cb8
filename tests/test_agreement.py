"""Native PGD, ART's and Foolbox's agree on the same trained model and examples (real MNIST)."""

from __future__ import annotations

import pytest

import robench
from robench.registry import get_registry

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

MATCHED = {  # L∞ PGD, 20 steps of 0.01 from the clean input, cross-entropy
    "native": {
        "name": "pgd",
        "steps": 20,
        "step_size": 0.01,
        "random_start": False,
        "early_stop": False,
    },
    "art": {"name": "art.ProjectedGradientDescent", "max_iter": 20, "eps_step": 0.01},
    "foolbox": {"name": "foolbox.LinfPGD", "steps": 20, "abs_stepsize": 0.01},
}
MATCHED["art"]["num_random_init"] = 0
MATCHED["foolbox"]["random_start"] = False


def test_native_art_and_foolbox_pgd_agree_within_1_5_points(tmp_path, data_root) -> None:
    names = set(get_registry().names("attack"))
    missing = [a["name"] for a in MATCHED.values() if a["name"] not in names]
    assert not missing, f"adapter plugins not installed: {missing} (README's install command)"
    eps = [0.1, 0.15]
    config = {
        "name": "agreement-test",
        "seed": 0,
        "output_dir": str(tmp_path / "out"),
        "dataset": {"name": "mnist", "download": False},
        "model": {"name": "small-cnn"},
        "training": {"epochs": 1, "batch_size": 64, "lr": 2e-3, "train_examples": 6000},
        "evaluation": {"n_examples": 600, "batch_size": 300},
        "defenses": [{"name": "standard"}],
        "attacks": [{"label": k, "eps": eps, **v} for k, v in MATCHED.items()],
    }
    df = robench.run(config, data_root=data_root, quiet=True)
    assert (df["status"] == "ok").all(), df.loc[df["status"] != "ok", "error"].tolist()
    clean = df.loc[df["kind"] == "clean", "accuracy"].item()
    assert clean > 0.9
    attacks = df[df["kind"] == "attack"].pivot(index="eps", columns="attack", values="accuracy")
    print("\n" + (100 * attacks).round(2).to_string())
    for e in eps:
        accs = attacks.loc[e]
        assert accs.max() < clean - 0.1, "the attacks should bite at this budget"
        assert accs.max() - accs.min() <= 0.015, f"disagreement at ε={e}: {dict(accs)}"
