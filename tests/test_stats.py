"""The Wilson interval against values computed by hand and its edge cases."""

from __future__ import annotations

import math

import pytest

from robench.stats import wilson_interval


def test_known_values():
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.40383, abs=1e-5) and high == pytest.approx(0.59617, abs=1e-5)
    low, high = wilson_interval(95, 100)
    assert low == pytest.approx(0.88825, abs=1e-5) and high == pytest.approx(0.97846, abs=1e-5)


def test_edges_stay_in_the_unit_interval():
    assert wilson_interval(0, 50)[0] == 0.0 and 0 < wilson_interval(0, 50)[1] < 0.1
    assert wilson_interval(50, 50)[1] == 1.0 and 0.9 < wilson_interval(50, 50)[0] < 1
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_more_examples_narrow_the_interval():
    widths = [hi - lo for lo, hi in (wilson_interval(n // 2, n) for n in (10, 100, 1000))]
    assert widths == sorted(widths, reverse=True)
