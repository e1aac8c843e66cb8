"""Several training seeds per defense: one run per seed, mean ± std in the leaderboard."""

from __future__ import annotations

import numpy as np
import pytest

import robench
from robench.config import load_benchmark
from robench.errors import ConfigError
from robench.leaderboard import build_leaderboard, summary_table, to_markdown
from robench.outcomes import read_outcomes

from .helpers import tiny_config


@pytest.fixture(scope="module")
def seeded_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seeds")
    config = tiny_config(
        tmp,
        seeds=[0, 1, 2],
        defenses=[{"name": "standard"}, {"name": "standard", "label": "one-seed", "seeds": [0]}],
        attacks=[{"name": "pgd", "eps": [0.1, 0.2], "steps": 3}],
    )
    return tmp, robench.run(config, quiet=True)


def test_each_defense_is_trained_and_scored_once_per_seed(seeded_run):
    tmp, df = seeded_run
    clean = df[df["kind"] == "clean"]
    assert sorted(clean.loc[clean["defense"] == "standard", "train_seed"]) == [0, 1, 2]
    assert list(clean.loc[clean["defense"] == "one-seed", "train_seed"]) == [0]
    for _, g in df.groupby(["defense", "train_seed"]):
        assert set(g["kind"]) == {"clean", "attack", "worst-case", "sanity"}
    # seeds change the trained model (weights initialised and batches drawn differently)...
    std = clean[clean["defense"] == "standard"].set_index("train_seed")
    models = {s: read_outcomes(tmp / "out").get("standard", "clean", seed=s) for s in (0, 1, 2)}
    assert any(not np.array_equal(models[0], models[s]) for s in (1, 2))
    # ...and the same seed gives the same model whatever else the benchmark trains
    one_attack = [{"name": "fgsm", "eps": [0.1]}]
    alone = robench.run(tiny_config(tmp / "alone", attacks=one_attack), quiet=True)
    assert alone.loc[alone["kind"] == "clean", "accuracy"].item() == std.loc[0, "accuracy"]
    same = clean.set_index(["defense", "train_seed"])["accuracy"]
    assert same[("one-seed", 0)] == same[("standard", 0)]


def test_outcomes_need_a_seed_only_when_there_are_several(seeded_run):
    tmp, df = seeded_run
    out = read_outcomes(tmp / "out")
    assert out.seeds("standard") == [0, 1, 2] and out.seeds("one-seed") == [0]
    with pytest.raises(KeyError, match="seeds \\[0, 1, 2\\]: pass seed="):
        out.get("standard", "clean")
    row = df.query("defense == 'standard' and train_seed == 2 and kind == 'worst-case'").iloc[-1]
    vector = out.worst_case("standard", row["norm"], row["eps"], seed=2)
    assert vector.sum() == row["n_correct"]
    assert (
        out.get("one-seed", "clean").sum()
        == df.query("defense == 'one-seed' and kind == 'clean'")["n_correct"].item()
    )


def test_the_leaderboard_reports_mean_and_std_over_seeds(seeded_run):
    _, df = seeded_run
    board = build_leaderboard([df]).set_index("defense")
    runs = df[(df["defense"] == "standard") & (df["kind"] == "worst-case") & (df["eps"] == 0.2)]
    acc = 100 * runs["accuracy"].to_numpy()
    assert board.loc["standard", "seeds"] == "0,1,2"
    assert board.loc["standard", "robust_accuracy"] == pytest.approx(acc.mean(), abs=0.01)
    assert board.loc["standard", "robust_std"] == pytest.approx(acc.std(ddof=1), abs=0.01)
    assert board.loc["standard", "robust linf 0.2"] == pytest.approx(acc.mean(), abs=0.01)
    assert board.loc["one-seed", "seeds"] == "0" and np.isnan(board.loc["one-seed", "robust_std"])
    md = to_markdown(build_leaderboard([df]))
    mean, std = board.loc["standard", ["robust_accuracy", "robust_std"]]
    assert f"{mean:.2f} ± {std:.2f}" in md
    assert "| 0 |" in md  # the one-seed defense: its seed, no spread
    text = summary_table(df)
    assert "standard (seed 2)" in text and "one-seed (seed" not in text


def test_a_transfer_source_must_have_every_seed(tmp_path):
    config = tiny_config(
        tmp_path,
        defenses=[
            {"name": "standard", "label": "base", "seeds": [0]},
            {"name": "standard", "label": "target", "seeds": [0, 1]},
        ],
        attacks=[{"name": "fgsm", "source": "base", "eps": [0.1]}],
    )
    with pytest.raises(ConfigError, match=r"attacks\[0\]\.source: defense 'target' .*seeds \[1\]"):
        load_benchmark(config, check_data=False)
    config["defenses"][0]["seeds"] = [0, 1]
    load_benchmark(config, check_data=False)


@pytest.mark.parametrize(
    ("seeds", "message"),
    [([], "seeds: List should have at least 1 item"), ([1, 1], "seeds must be distinct")],
)
def test_bad_seeds_are_config_errors(tmp_path, seeds, message):
    with pytest.raises(ConfigError, match=message):
        load_benchmark(tiny_config(tmp_path, seeds=seeds), check_data=False)
