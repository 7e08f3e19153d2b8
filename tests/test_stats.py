"""The seed-interval rule of the comparison verdicts (stats.decide), checked against scipy's t-test interval."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from hypersphere import stats


@pytest.mark.parametrize("seed, n", [(0, 2), (1, 3), (2, 5), (3, 12)])
def test_mean_interval_equals_scipys_one_sample_t_interval(seed, n):
    x = np.random.default_rng(seed).normal(0.3, 2.0, n)
    mean, low, high = stats.mean_interval(x, level=0.9)
    ci = scipy_stats.ttest_1samp(x, 0.0).confidence_interval(0.9)
    assert mean == pytest.approx(x.mean()) and low == pytest.approx(ci.low) and high == pytest.approx(ci.high)


def test_a_claim_holds_fails_or_is_undecided_by_where_the_interval_lies():
    above = stats.decide([0.4, 0.6, 0.5], bound=-1.0, above=True)  # interval well above -1
    assert above["holds"] is True and above["more_seeds"] == 0 and above["low"] > -1
    below = stats.decide([-3.1, -2.9, -3.0], bound=-1.0, above=True)  # wholly below: excluded
    assert below["holds"] is False and below["more_seeds"] == 0 and below["high"] < -1
    straddles = stats.decide([2.39, -2.56, -0.33], bound=-1.0, above=True)
    assert straddles["holds"] is None and straddles["low"] < -1 < straddles["high"] and straddles["more_seeds"] > 0
    assert stats.decide([0.4, 0.6, 0.5], bound=1.0, above=False)["holds"] is True  # the same numbers, a "below" claim
    one = stats.decide([5.0], bound=0.0, above=True)
    assert one["holds"] is None and one["more_seeds"] == 1 and "no interval" in stats.describe(one)


def test_the_projected_number_of_seeds_decides_the_claim_at_that_mean_and_spread():
    d = np.array([1.0, -0.4, 0.9, 0.2])  # mean +0.425 against a bound of 0: undecided
    r = stats.decide(d, bound=0.0, above=True)
    assert r["holds"] is None and r["more_seeds"] > 0
    n = r["n"] + r["more_seeds"]

    def like_d(k):  # k values with exactly d's mean and standard deviation
        w = np.resize(d, k) - np.resize(d, k).mean()
        return d.mean() + d.std(ddof=1) * w / w.std(ddof=1)

    assert stats.decide(like_d(n), 0.0, True)["holds"] is True
    assert stats.decide(like_d(n - 1), 0.0, True)["holds"] is None
    assert stats.decide([0.5, -0.5], bound=0.0, above=True)["more_seeds"] is None  # the mean sits on the bound


@pytest.mark.parametrize("effect, n", [(0.0, 5), (0.4, 10), (1.0, 4), (2.5, 3), (6.0, 9), (20.0, 4)])
def test_decision_power_equals_statsmodels_two_sided_t_test_power(effect, n):
    from statsmodels.stats.power import TTestPower

    expected = TTestPower().power(effect_size=effect, nobs=n, alpha=0.05, alternative="two-sided")
    assert stats.decision_power(effect, n) == pytest.approx(expected, abs=1e-9)


def test_decision_power_stays_a_probability_for_large_effects():
    """Where scipy's noncentral t (and statsmodels with it) returns NaN for the far tail, e.g. effect 6 at n 2 or
    effect 3 at n 20, the power is still finite and grows with n; a NaN there once planned needless seeds."""
    from scipy.stats import nct, t

    powers = stats.decision_power(6.0, np.arange(2, 41))
    assert np.isfinite(powers).all() and (np.diff(powers) >= 0).all() and powers[-1] == pytest.approx(1.0)
    assert stats.decision_power(6.0, 2) == pytest.approx(nct.sf(t.ppf(0.975, 1), 1, 6 * np.sqrt(2)), rel=1e-12)
    assert stats.decision_power(3.0, 20) == pytest.approx(1.0)
    assert stats.second_stage([5.0, 6.0, 7.0], 0.0)["seeds"] == 3


def test_second_stage_plans_the_fewest_seeds_reaching_the_power_and_caps_them():
    plan = stats.second_stage([1.0, 2.0, 3.0], bound=0.0)  # effect 2 sd: 2 seeds fall short, 3 reach 80%
    n = plan["seeds"]
    assert stats.decision_power(2.0, n) >= 0.8 > stats.decision_power(2.0, n - 1) and plan["power"] >= 0.8
    capped = stats.second_stage([-1.0, 0.0, 1.2], bound=0.0, most=6)  # effect 0.09 sd: no number near 6 suffices
    assert capped["seeds"] == 6 and capped["power"] < 0.1
    assert stats.second_stage([0.5, 0.5, 0.5], bound=0.0)["seeds"] == 2  # no spread: 2 seeds decide it


def test_the_two_stage_design_covers_exactly_and_pooling_the_first_stage_would_not():
    """Simulated claims (normal differences, 3 first-stage seeds that plan the second): the second stage's own
    interval covers the true mean 95% of the time whatever the mean; pooling all seeds undercovers where the mean
    sits on the bound, because a small first-stage spread plans few seeds and also narrows the pooled interval."""
    rng = np.random.default_rng(0)
    reps = 6000
    for mean in (0.0, 1.0):
        covered = {"staged": 0, "pooled": 0}
        for _ in range(reps):
            first = rng.normal(mean, 1.0, 3)
            second = rng.normal(mean, 1.0, stats.second_stage(first, bound=0.0)["seeds"])
            for name, x in (("staged", second), ("pooled", np.r_[first, second])):
                _, low, high = stats.mean_interval(x)
                covered[name] += low <= mean <= high
        staged, pooled, se = covered["staged"] / reps, covered["pooled"] / reps, np.sqrt(0.95 * 0.05 / reps)
        assert abs(staged - 0.95) < 3.5 * se, (mean, staged)
        if mean == 0.0:
            assert pooled < 0.95 - 3.5 * se, pooled
