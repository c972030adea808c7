"""Seeds needed for the next run: every predicted n is checked by simulating thousands of studies at that n
with the planted difference and counting how often the house's test finds it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from avmae.dashboards import power, stats
from scipy import stats as sps

DRAWS = 2000


def binomial_band(p: float, draws: int) -> float:
    """Four binomial standard errors (as in test_stats.py)."""
    return 4 * math.sqrt(p * (1 - p) / draws)


@pytest.mark.parametrize(("delta", "sd", "comparisons"), [(0.05, 0.04, 1), (0.03, 0.05, 1), (0.02, 0.01, 1),
                                                          (0.05, 0.04, 3)])
def test_the_predicted_pairs_find_the_planted_difference_at_the_wanted_power(delta: float, sd: float,
                                                                              comparisons: int) -> None:
    plan = power.seeds_needed_paired(delta, sd, comparisons=comparisons)
    n = plan.n
    assert plan.design == "paired t" and not plan.capped and plan.achieved >= power.POWER
    assert power.power_paired(n - 1, delta, sd, plan.alpha) < power.POWER  # the smallest such n
    rng = np.random.default_rng(n)
    shared = rng.normal(0.8, 0.05, (DRAWS, n))  # the seed effect both cells share, which pairing removes
    noise = sd / math.sqrt(2)  # each cell's own noise: their difference has sd `sd`
    a, b = shared + delta + rng.normal(0, noise, (DRAWS, n)), shared + rng.normal(0, noise, (DRAWS, n))
    found = sum(stats.paired_difference(dict(enumerate(x)), dict(enumerate(y))).p < plan.alpha
                for x, y in zip(a, b, strict=True))
    observed = found / DRAWS
    assert abs(observed - plan.achieved) < binomial_band(plan.achieved, DRAWS)
    assert abs(observed - power.POWER) < 0.05 + (plan.achieved - power.POWER)


@pytest.mark.parametrize(("delta", "sd_a", "sd_b"),
                         [(0.05, 0.04, 0.04), (0.04, 0.02, 0.05), (0.1, 0.03, 0.12)])
def test_the_predicted_seeds_per_group_find_the_difference_with_welchs_test(delta: float, sd_a: float,
                                                                            sd_b: float) -> None:
    plan = power.seeds_needed_welch(delta, sd_a, sd_b)
    n = plan.n
    assert plan.design == "Welch t" and not plan.capped
    rng = np.random.default_rng(n)
    a, b = rng.normal(0.8 + delta, sd_a, (DRAWS, n)), rng.normal(0.8, sd_b, (DRAWS, n))
    observed = float((sps.ttest_ind(a, b, axis=1, equal_var=False).pvalue < plan.alpha).mean())
    assert abs(observed - plan.achieved) < 0.05  # the noncentral t with Welch's df is an approximation
    assert observed > power.POWER - 0.05


def test_sample_sizes_match_the_textbook_tables() -> None:
    """Cohen's d = 0.5 at alpha 0.05, power 0.8: 34 pairs for a paired test, 64 per group for two samples
    (G*Power); at 90% power 44 pairs."""
    assert power.seeds_needed_paired(0.5, 1.0).n == 34
    assert power.seeds_needed_welch(0.5, 1.0).n == 64
    assert power.seeds_needed_paired(0.5, 1.0, power=0.9).n == 44


def test_the_measured_spread_and_difference_plan_the_next_run() -> None:
    a = {0: 0.81, 1: 0.86, 2: 0.79, 3: 0.90}
    b = {0: 0.80, 1: 0.82, 2: 0.80, 3: 0.85, 4: 0.7}  # seed 4 has no partner: left out
    d = np.array([0.01, 0.04, -0.01, 0.05])
    plan = power.next_run_paired(a, b)
    expected = power.seeds_needed_paired(float(d.mean()), float(d.std(ddof=1)))
    assert (plan.n, plan.delta) == (expected.n, pytest.approx(d.mean()))
    assert plan.sds == pytest.approx(expected.sds)
    assert power.next_run_paired(a, b, delta=0.05).delta == 0.05
    assert not stats.paired_difference(a, b).p < stats.ALPHA and plan.n > 4  # not found at 4: more needed
    x, y = [0.81, 0.86, 0.79, math.nan], [0.80, 0.82, 0.80]
    unpaired = power.next_run_welch(x, y)
    sds = (float(np.std(x[:3], ddof=1)), float(np.std(y, ddof=1)))
    assert unpaired.sds == pytest.approx(sds) and unpaired.delta == pytest.approx(0.82 - 2.42 / 3)
    assert unpaired.n == power.seeds_needed_welch(0.82 - 2.42 / 3, *sds).n


def test_edge_cases_answer_in_words_instead_of_crashing_or_looping() -> None:
    none = power.seeds_needed_paired(0.0, 0.04)
    assert none.n is None and none.text() == ("no number of seeds finds a difference of 0 with 80% power: "
                                              "a difference of 0 is none to find")
    one_seed = power.next_run_paired({0: 0.9}, {0: 0.8})
    assert one_seed.n is None and "measure it over at least 2 seeds" in one_seed.text()
    assert power.next_run_welch([0.9], [0.8, 0.7]).n is None
    capped = power.seeds_needed_paired(0.001, 0.04)
    assert capped.capped and capped.n == power.MAX_SEEDS and capped.achieved < 0.1
    assert capped.text().startswith("more than 100 seeds per cell would be needed to find a difference of "
                                    "0.001 with 80% power")
    assert power.seeds_needed_paired(0.001, 0.04, max_n=20_000).n == 12561  # a higher cap finds it
    flat = power.seeds_needed_welch(0.02, 0.0, 0.0)
    assert flat.n is None and "assume an sd" in flat.reason


def test_no_spread_in_the_differences_plans_for_the_houses_sign_test() -> None:
    plan = power.seeds_needed_paired(0.02, 0.0)
    assert plan.n == 6 and plan.reason == "no spread: the sign test decides"
    same = {k: 0.9 for k in range(6)}, {k: 0.88 for k in range(6)}
    assert stats.paired_difference(*same).p < stats.ALPHA  # six seeds agreeing: found
    five = {k: 0.9 for k in range(5)}, {k: 0.88 for k in range(5)}
    assert not stats.paired_difference(*five).p < stats.ALPHA  # five: not yet


def test_the_one_line_wording_states_the_assumptions() -> None:
    assert power.seeds_needed_paired(0.05, 0.04).text() == (
        "8 seeds per cell would find a difference of 0.05 with 80% power (paired t, sd 0.04, alpha 0.05)")
    assert power.seeds_needed_welch(-0.05, 0.02, 0.06, comparisons=3).text() == (
        "20 seeds per cell would find a difference of 0.05 with 80% power (Welch t, sd 0.02, 0.06, "
        "alpha 0.0167)")
