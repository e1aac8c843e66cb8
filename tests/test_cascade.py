"""The cascade: attacks cheapest first, each on the examples still robust; never a higher
robust accuracy than every attack on every example."""

from __future__ import annotations

import pytest

import robench
from robench.outcomes import read_outcomes

from .helpers import tiny_config

#: deterministic attacks (no random start), listed most expensive first
ATTACKS = [
    {"name": "pgd", "label": "pgd-10", "eps": [0.1, 0.2], "steps": 10, "random_start": False},
    {"name": "pgd", "label": "pgd-3", "eps": [0.1, 0.2], "steps": 3, "random_start": False},
    {"name": "fgsm", "eps": [0.1, 0.2]},
]


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    runs = {}
    for cascade in (False, True):
        tmp = tmp_path_factory.mktemp(f"cascade-{cascade}")
        config = tiny_config(tmp, attacks=ATTACKS)
        config["evaluation"] |= {"cascade": cascade, "sanity": False}
        runs[cascade] = (tmp / "out", robench.run(config, quiet=True))
    return runs


def test_the_cascade_never_raises_robust_accuracy(both):
    (full_dir, full), (cascade_dir, cascade) = both[False], both[True]
    worst = {
        k: df[df["kind"] == "worst-case"].set_index("eps")["accuracy"]
        for k, df in ((False, full), (True, cascade))
    }
    assert (worst[True] <= worst[False]).all()
    # per example: every example robust in the cascade is robust to every attack run in full
    full_out, cascade_out = read_outcomes(full_dir), read_outcomes(cascade_dir)
    for eps in (0.1, 0.2):
        robust = cascade_out.worst_case("standard", "linf", eps)
        assert not (robust & ~full_out.worst_case("standard", "linf", eps)).any()


def test_attacks_run_cheapest_first_on_what_is_still_robust(both):
    _, full = both[False]
    _, df = both[True]
    clean = df[df["kind"] == "clean"].iloc[0]
    for eps in (0.1, 0.2):
        rows = df[(df["kind"] == "attack") & (df["eps"] == eps)]
        assert list(rows["attack"]) == ["fgsm", "pgd-3", "pgd-10"]
        assert list(rows["attacks"]) == ["fgsm", "fgsm+pgd-3", "fgsm+pgd-3+pgd-10"]
        # the first attack sees every example (the misclassified ones for the robust ≤ clean
        # check); each later one only those every earlier attack left robust
        attacked, correct = list(rows["n_attacked"]), list(rows["n_correct"])
        assert attacked[0] == clean["n_examples"]
        assert attacked[1:] == correct[:-1]
        assert correct == sorted(correct, reverse=True)
        assert sum(attacked) < full.query("kind == 'attack' and eps == @eps")["n_attacked"].sum()
    # the first attack's row is its own number: the same as without the cascade
    first = df.query("attack == 'fgsm'").set_index("eps")["accuracy"]
    assert first.equals(full.query("attack == 'fgsm'").set_index("eps")["accuracy"])


def test_a_cascade_run_refuses_worst_cases_over_subsets(both):
    cascade_dir, _ = both[True]
    out = read_outcomes(cascade_dir)
    assert out.cascade
    with pytest.raises(ValueError, match="cumulative"):
        out.worst_case("standard", "linf", 0.1, attacks=["fgsm"])


def test_evaluate_a_model_of_ones_own():
    from robench.api import ThreatModel, evaluate
    from robench.attacks.fgsm import FGSM
    from robench.attacks.pgd import PGD

    from .helpers import trained_digits_mlp

    model, x, y = trained_digits_mlp(200)
    threat = ThreatModel("linf", 0.15)
    attacks = [PGD(threat, steps=10, random_start=False), FGSM(threat)]
    fast = evaluate(model, x, y, attacks, batch_size=64, cascade=True)
    full = evaluate(model, x, y, attacks, batch_size=64)  # the default, as in a benchmark
    assert list(fast.per_attack) == ["fgsm", "pgd"]  # cheapest first
    assert fast.n_attacked["pgd"] == int(fast.per_attack["fgsm"].sum()) < full.n_attacked["pgd"]
    assert not (fast.robust & ~full.robust).any()
    assert fast.robust_accuracy <= full.robust_accuracy < full.clean_accuracy
    assert full.per_attack["pgd"].sum() <= full.per_attack["fgsm"].sum()


def test_a_transfer_attack_keeps_its_own_number_in_a_cascade(tmp_path):
    config = tiny_config(
        tmp_path,
        defenses=[{"name": "standard", "label": "base"}, {"name": "standard", "label": "other"}],
        attacks=[
            {"name": "fgsm", "eps": [0.2]},
            {"name": "fgsm", "label": "from-base", "source": "base", "eps": [0.2]},
        ],
    )
    config["training"]["epochs"] = 1
    config["evaluation"] |= {"cascade": True, "sanity": False}
    df = robench.run(config, quiet=True).set_index(["defense", "attack"])
    # every example, as without a cascade: not only those FGSM left robust
    assert df.loc[("other", "from-base"), "n_attacked"] == df.loc[("other", "clean"), "n_examples"]
    assert df.loc[("other", "from-base"), "attacks"] == ""
    worst = df.loc[("other", "worst-case"), "n_correct"]
    assert worst <= min(
        df.loc[("other", "from-base"), "n_correct"], df.loc[("other", "fgsm"), "n_correct"]
    )
