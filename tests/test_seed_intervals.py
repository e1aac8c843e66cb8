"""The leaderboard's 95 % interval: Wilson over the examples for one training seed, Student's
t over the seeds' accuracies for several; the board says which each row has."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from click.testing import CliRunner

import robench
from robench.cli import main
from robench.leaderboard import build_leaderboard, to_markdown
from robench.results import to_frame
from robench.stats import seed_interval, t_interval, wilson_interval

from .helpers import tiny_config

#: the 0.975 quantile of Student's t with 1, 2 and 4 degrees of freedom, from their closed
#: forms (Hill 1970), so that the intervals below are computed without scipy
_A = 4 * 0.975 * 0.025
T975 = {
    1: math.tan(math.pi * 0.475),
    2: 0.95 / math.sqrt(2 * 0.975 * 0.025),
    4: 2 * math.sqrt(math.cos(math.acos(math.sqrt(_A)) / 3) / math.sqrt(_A) - 1),
}


def t_by_hand(accuracies: list[float]) -> tuple[float, float]:
    """mean ± t(0.975; m − 1) · s / √m, s the sample standard deviation."""
    m = len(accuracies)
    mean = sum(accuracies) / m
    s = math.sqrt(sum((a - mean) ** 2 for a in accuracies) / (m - 1))
    half = T975[m - 1] * s / math.sqrt(m)
    return mean - half, mean + half


# --- robench.stats ---------------------------------------------------------------------------


def test_one_seed_gets_the_wilson_interval():
    ci = seed_interval([50], [100])
    assert ci.method == "wilson"
    assert (ci.low, ci.high) == pytest.approx((0.40383, 0.59617), abs=1e-5)
    assert (ci.low, ci.high) == wilson_interval(50, 100)


@pytest.mark.parametrize(
    ("counts", "n"), [([60, 70, 80], 100), ([412, 437, 398], 500), ([40, 41], 50)]
)
def test_several_seeds_get_the_t_interval_of_their_accuracies(counts, n):
    ci = seed_interval(counts, [n] * len(counts))
    accuracies = [k / n for k in counts]
    assert ci.method == f"t ({len(counts)} seeds)"
    assert (ci.low, ci.high) == pytest.approx(t_by_hand(accuracies), abs=1e-12)
    assert T975[2] == pytest.approx(4.3027, abs=1e-4)  # the closed form against a printed table
    assert ci.low < sum(accuracies) / len(accuracies) < ci.high


def test_five_seeds_use_four_degrees_of_freedom():
    ci = seed_interval([60, 65, 70, 75, 80], [100] * 5)
    assert (ci.low, ci.high) == pytest.approx(t_by_hand([0.6, 0.65, 0.7, 0.75, 0.8]), abs=1e-12)
    assert ci.method == "t (5 seeds)"


def test_seeds_that_disagree_more_give_a_wider_interval():
    widths = []
    for spread in (1, 3, 6, 10):
        ci = seed_interval([70 - spread, 70, 70 + spread], [100] * 3)
        assert ci.low < 0.7 < ci.high
        widths.append(ci.high - ci.low)
    assert widths == sorted(widths) and len(set(widths)) == 4
    # with three seeds the t interval is wide: 2.5 standard deviations either side
    assert widths[-1] / 2 == pytest.approx(T975[2] * 0.1 / math.sqrt(3), abs=1e-12)


def test_the_t_interval_stays_within_0_and_1():
    ci = seed_interval([0, 0, 3], [100] * 3)
    assert ci.low == 0.0 and ci.high == pytest.approx(t_by_hand([0, 0, 0.03])[1], abs=1e-12)
    ci = seed_interval([100, 100, 97], [100] * 3)
    assert ci.high == 1.0 and ci.low == pytest.approx(t_by_hand([1, 1, 0.97])[0], abs=1e-12)
    assert t_interval([-1.0, 1.0, 3.0], bounds=(0.0, 2.0)) == (0.0, 2.0)


def test_seeds_that_agree_exactly_fall_back_to_wilson():
    # a zero-width t interval would claim certainty; the examples' uncertainty remains
    ci = seed_interval([0, 0, 0], [1000] * 3)
    assert ci.method == "wilson (3 seeds agree)"
    assert (ci.low, ci.high) == wilson_interval(0, 1000)
    assert ci.low == 0.0 and 0.003 < ci.high < 0.004
    assert t_interval([0.25, 0.25]) == (0.25, 0.25)


def test_bad_input_is_one_clear_error():
    with pytest.raises(ValueError, match="n_correct: need at least one seed"):
        seed_interval([], [])
    with pytest.raises(ValueError, match="one pair per seed, got 2 and 1"):
        seed_interval([1, 2], [10])
    with pytest.raises(ValueError, match="n_examples: need at least one example"):
        seed_interval([0, 0], [10, 0])
    with pytest.raises(ValueError, match="need 0 <= k <= n"):
        seed_interval([11], [10])
    with pytest.raises(ValueError, match="values: need at least two values, got 1"):
        t_interval([0.5])
    with pytest.raises(ValueError, match="values: need finite values"):
        t_interval([0.5, float("nan")])
    with pytest.raises(ValueError, match="confidence: need a level between 0 and 1"):
        t_interval([0.5, 0.6], confidence=95)


# --- the leaderboard -------------------------------------------------------------------------


def _rows(defense: str, counts: dict[int | None, int | None], n: int = 100, acc=None):
    """A defense's clean, attack and worst-case rows at L∞ 0.3, one set per training seed
    (``counts``: seed → examples robust; a ``None`` seed: a table from before seeds)."""
    for seed, k in counts.items():
        base = {
            "benchmark": "b",
            "defense": defense,
            "train_seed": seed,
            "defense_name": "standard",
            "model": "m",
            "n_examples": n,
            "status": "ok",
        }
        robust = {"n_correct": k, "accuracy": k / n if k is not None else acc}
        yield {**base, "kind": "clean", "attack": "clean", "n_correct": n, "accuracy": 1.0}
        at = {"norm": "linf", "eps": 0.3, **robust}
        yield {**base, "kind": "attack", "attack": "pgd", **at}
        yield {**base, "kind": "worst-case", "attack": "worst-case", **at}


@pytest.fixture(scope="module")
def board() -> pd.DataFrame:
    rows = [
        *_rows("three", {0: 60, 1: 70, 2: 80}),
        *_rows("close", {0: 69, 1: 70, 2: 71}),
        *_rows("one", {0: 50}),
        *_rows("agree", {0: 0, 1: 0, 2: 0}, n=1000),
        *_rows("old", {None: None}, acc=0.5),  # no train_seed, no n_correct
    ]
    return build_leaderboard([to_frame(rows)]).set_index("defense")


def test_the_board_shows_the_t_interval_over_seeds(board):
    row = board.loc["three"]
    low, high = (100 * b for b in t_by_hand([0.6, 0.7, 0.8]))
    assert row["ci_method"] == "t (3 seeds)"
    assert (row["robust_ci_low"], row["robust_ci_high"]) == pytest.approx((low, high), abs=0.006)
    assert row["robust_ci95"] == f"{low:.1f}–{high:.1f}" == "45.2–94.8"
    # the spread, not the examples, sets it: 2.48 standard deviations either side
    half = (row["robust_ci_high"] - row["robust_ci_low"]) / 2
    assert half == pytest.approx(T975[2] / math.sqrt(3) * row["robust_std"], abs=0.01)
    close = board.loc["close"]
    assert close["robust_ci_low"] < 70 < close["robust_ci_high"]
    assert close["robust_ci_high"] - close["robust_ci_low"] < half


def test_the_board_shows_wilson_for_one_seed_and_for_agreeing_seeds(board):
    one = board.loc["one"]
    assert one["ci_method"] == "wilson" and one["robust_ci95"] == "40.4–59.6"
    assert (one["robust_ci_low"], one["robust_ci_high"]) == pytest.approx((40.38, 59.62))
    old = board.loc["old"]  # its count from the accuracy
    assert old["ci_method"] == "wilson" and old["robust_ci95"] == "40.4–59.6"
    agree = board.loc["agree"]
    assert agree["ci_method"] == "wilson (3 seeds agree)" and agree["robust_ci95"] == "0.0–0.4"


def test_the_markdown_says_which_interval_each_row_has(board):
    md = to_markdown(board.reset_index())
    header, _, *lines = (line.strip("|").split("|") for line in md.splitlines())
    header = [h.strip() for h in header]
    assert header[header.index("robust_ci95") + 1] == "ci_method"
    assert "robust_ci_low" not in header and "robust_ci_high" not in header
    rows = {
        r["defense"]: r for r in (dict(zip(header, map(str.strip, c), strict=True)) for c in lines)
    }
    assert (rows["three"]["robust_ci95"], rows["three"]["ci_method"]) == (
        "45.2–94.8",
        "t (3 seeds)",
    )
    assert (rows["one"]["robust_ci95"], rows["one"]["ci_method"]) == ("40.4–59.6", "wilson")
    assert rows["agree"]["ci_method"] == "wilson (3 seeds agree)"


# --- a real run, through the command line ---------------------------------------------------


@pytest.fixture(scope="module")
def seeded_out(tmp_path_factory, one_thread):
    tmp = tmp_path_factory.mktemp("seed-intervals")
    config = tiny_config(
        tmp,
        seeds=[0, 1, 2],
        training={"epochs": 2, "lr": 3e-3},
        evaluation={"n_examples": 120, "batch_size": 64, "sanity": False},
        defenses=[{"name": "standard"}, {"name": "standard", "label": "one-seed", "seeds": [0]}],
        attacks=[{"name": "fgsm", "eps": [0.05, 0.1, 0.2]}],
    )
    return tmp, robench.run(config, quiet=True)


def test_a_real_leaderboard_csv_and_markdown_carry_the_method(seeded_out):
    tmp, df = seeded_out
    worst = df[(df["kind"] == "worst-case") & (df["status"] == "ok")]
    standard = worst[worst["defense"] == "standard"]
    # a budget at which the three trained models differ (the t interval's case)
    spread = standard.groupby("eps")["n_correct"].nunique()
    eps = float(spread[spread > 1].index[0])
    result = CliRunner().invoke(
        main, ["leaderboard", str(tmp / "out"), "--eps", f"{eps}", "-o", str(tmp / "b.csv")]
    )
    assert result.exit_code == 0, result.output
    board = pd.read_csv(tmp / "b.csv").set_index("defense")
    assert {"robust_ci95", "ci_method", "robust_ci_low", "robust_ci_high"} <= set(board.columns)

    seeds = standard[standard["eps"] == eps].sort_values("train_seed")
    assert list(seeds["train_seed"]) == [0, 1, 2]
    low, high = (100 * b for b in t_by_hand(list(seeds["accuracy"])))
    row = board.loc["standard"]
    assert row["ci_method"] == "t (3 seeds)"
    assert (row["robust_ci_low"], row["robust_ci_high"]) == pytest.approx(
        (max(low, 0), min(high, 100)), abs=0.006
    )
    assert row["robust_ci_low"] <= row["robust_accuracy"] <= row["robust_ci_high"]

    single = worst[(worst["defense"] == "one-seed") & (worst["eps"] == eps)].iloc[0]
    row = board.loc["one-seed"]
    assert row["ci_method"] == "wilson"
    wilson = wilson_interval(int(single["n_correct"]), int(single["n_examples"]))
    assert (row["robust_ci_low"], row["robust_ci_high"]) == pytest.approx(
        (100 * wilson[0], 100 * wilson[1]), abs=0.006
    )
    # the run's own per-row interval is that same Wilson interval
    assert (single["ci_low"], single["ci_high"]) == pytest.approx(wilson, abs=1e-12)

    md = tmp / "b.md"
    result = CliRunner().invoke(
        main, ["leaderboard", str(tmp / "out"), "--eps", f"{eps}", "-o", str(md)]
    )
    assert result.exit_code == 0, result.output
    text = md.read_text()
    assert "| ci_method |" in text.splitlines()[0]
    assert "| t (3 seeds) |" in text and "| wilson |" in text
