"""Uncertainty of accuracies: one run's, over its finite sample of examples, and the mean of
several training seeds', over the seeds.

The intervals are scipy's: :func:`wilson_interval` is :func:`scipy.stats.binomtest`'s Wilson
score interval, :func:`t_interval` is Student's t interval of :data:`scipy.stats.t`.
:func:`seed_interval` chooses between them for the leaderboard.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import stats as _st

#: the confidence level of every interval robench reports
CONFIDENCE = 0.95


@lru_cache(maxsize=4096)  # a results table repeats (k, n) pairs often; binomtest is ~2 ms
def _wilson(k: int, n: int, confidence: float) -> tuple[float, float]:
    ci = _st.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def wilson_interval(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes out of ``n`` (95 % by default).

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0 % and 100 %,
    which robust accuracies often reach (``k = 0`` gives a lower bound of exactly 0, ``k = n``
    an upper bound of exactly 1). ``n = 0`` gives (nan, nan).
    """
    if n <= 0:
        return math.nan, math.nan
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: need a level between 0 and 1, got {confidence}")
    return _wilson(int(k), int(n), float(confidence))


def t_interval(
    values: Sequence[float],
    confidence: float = CONFIDENCE,
    bounds: tuple[float, float] | None = None,
) -> tuple[float, float]:
    """Student's t interval for the mean of ``values`` (at least two, finite).

    mean ± t(1 − α/2; m − 1) · s / √m, with s the sample standard deviation of the m values;
    clipped to ``bounds`` (e.g. (0, 100) for accuracies in %) where given. Values that agree
    exactly give the zero-width interval (mean, mean).
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or len(v) < 2:
        raise ValueError(f"values: need at least two values, got {len(np.atleast_1d(v))}")
    if not np.isfinite(v).all():
        raise ValueError("values: need finite values (drop the missing ones first)")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: need a level between 0 and 1, got {confidence}")
    mean = float(v.mean())
    sem = float(_st.sem(v))  # s / √m, s with ddof = 1
    if sem == 0:
        low, high = mean, mean
    else:
        low, high = (float(x) for x in _st.t.interval(confidence, len(v) - 1, mean, sem))
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return low, high


@dataclass(frozen=True)
class SeedInterval:
    """An interval for a mean accuracy over training seeds (fractions), and how it was made.

    ``method`` is ``"wilson"`` (one seed: the Wilson interval over its examples),
    ``"t (m seeds)"`` (Student's t over the m seeds' accuracies) or ``"wilson (m seeds
    agree)"`` (m seeds with exactly the same accuracy: the t interval would have zero width,
    so the Wilson interval of that accuracy over the examples).
    """

    low: float
    high: float
    method: str


def seed_interval(
    n_correct: Sequence[int], n_examples: Sequence[int], confidence: float = CONFIDENCE
) -> SeedInterval:
    """The interval for the mean over seeds of the accuracies ``n_correct[i] / n_examples[i]``
    (one pair per training seed, at least one).

    Several seeds: Student's t interval over the per-seed accuracies, clipped to [0, 1]. It
    measures the seed-to-seed (training) variance, the dominant one in robustness benchmarks;
    every seed is scored on the same examples, so it is an interval for the mean accuracy over
    training runs on those examples. It is wide with few seeds (with 3, t = 4.30: the
    half-width is 2.5 standard deviations). One seed: the Wilson interval over its examples.
    """
    if len(n_correct) != len(n_examples):
        raise ValueError(
            f"n_correct and n_examples: need one pair per seed, got {len(n_correct)} "
            f"and {len(n_examples)} values"
        )
    if not len(n_correct):
        raise ValueError("n_correct: need at least one seed")
    if min(int(n) for n in n_examples) <= 0:
        raise ValueError(f"n_examples: need at least one example per seed, got {list(n_examples)}")
    pairs = [(int(k), int(n)) for k, n in zip(n_correct, n_examples, strict=True)]
    wilsons = [wilson_interval(k, n, confidence) for k, n in pairs]
    if len(n_correct) == 1:
        return SeedInterval(*wilsons[0], "wilson")
    m = len(n_correct)
    accuracies = [k / n for k, n in pairs]
    if len(set(accuracies)) == 1:
        low, high = max(wilsons, key=lambda lh: lh[1] - lh[0])  # the fewest examples
        return SeedInterval(low, high, f"wilson ({m} seeds agree)")
    low, high = t_interval(accuracies, confidence, bounds=(0.0, 1.0))
    return SeedInterval(low, high, f"t ({m} seeds)")
