"""Expected best score against budget (Dodge et al. 2019): the closed forms against brute-force draws, the
GPU-hour budget, and the compute-matched verdict's error rate and power by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from avmae.dashboards import budget

DRAWS = 200_000


def brute_force(values: np.ndarray, k: int, replace: bool, rng: np.random.Generator) -> np.ndarray:
    """The best of k trials drawn from `values`, DRAWS times."""
    if replace:
        return values[rng.integers(0, len(values), size=(DRAWS, k))].max(axis=1)
    return values[rng.random((DRAWS, len(values))).argsort(axis=1)[:, :k]].max(axis=1)


@pytest.mark.parametrize("replace", [True, False])
def test_expected_best_and_its_sd_match_brute_force_draws(replace: bool) -> None:
    rng = np.random.default_rng(0)
    values = np.round(rng.normal(0.8, 0.03, 9), 2)  # rounded: ties, as a coarse accuracy has
    curve = budget.expected_best(values, replace=replace)
    assert curve.k == tuple(range(1, 10)) and curve.n_trials == 9 and curve.replace == replace
    for k in (1, 2, 4, 9):
        best = brute_force(values, k, replace, rng)
        assert curve.mean[k - 1] == pytest.approx(best.mean(), abs=4 * best.std() / math.sqrt(DRAWS) + 1e-12)
        assert curve.sd[k - 1] == pytest.approx(best.std(), rel=0.02, abs=1e-9)
    assert curve.mean[0] == pytest.approx(values.mean())  # one trial: its mean
    if not replace:
        assert (curve.mean[-1], curve.sd[-1]) == (pytest.approx(values.max()), pytest.approx(0, abs=1e-9))
    assert all(np.diff(curve.mean) >= -1e-12)  # more trials never hurt


def test_a_loss_is_minimised_and_missing_scores_are_left_out() -> None:
    rng = np.random.default_rng(1)
    losses = rng.lognormal(0, 0.3, 6)
    curve = budget.expected_best([*losses, math.nan], k=[3], higher_is_better=False)
    lowest = losses[rng.integers(0, 6, size=(DRAWS, 3))].min(axis=1)
    assert curve.n_trials == 6
    assert curve.mean[0] == pytest.approx(lowest.mean(), abs=4 * lowest.std() / math.sqrt(DRAWS))
    with pytest.raises(ValueError, match="at most 6 trials"):
        budget.expected_best(losses, k=[7], replace=False)


def test_a_budget_buys_trials_at_the_cost_of_a_scored_trial() -> None:
    """Four scored trials and a diverged one, 1 GPU-hour each: a scored trial costs 5/4 hours."""
    scores, costs = [0.7, 0.8, math.nan, 0.75, 0.9], [1.0] * 5
    curve = budget.expected_best_at_budget(scores, costs, [1.0, 2.5, 3.9, 100.0])
    assert curve.k == (0, 2, 3, 4) and curve.hours == (1.0, 2.5, 3.9, 100.0)
    assert math.isnan(curve.mean[0]) and math.isnan(curve.sd[0])  # an hour buys no scored trial
    assert curve.mean[1:] == pytest.approx(budget.expected_best(scores, [2, 3, 4]).mean)
    with pytest.raises(ValueError, match="5 scores but 4 costs"):
        budget.expected_best_at_budget(scores, costs[:4], [1.0])
    with pytest.raises(ValueError, match="finite, non-negative cost"):
        budget.expected_best_at_budget(scores, [1.0, -1, 1, 1, 1], [1.0])


def test_compute_matched_verdict_states_both_budgets() -> None:
    """A cell that ran 12 cheap trials against one that ran 4 dearer ones: matched at the 8 hours the
    cheaper cell spent, the first buys 8 trials; at the whole budget, all 12."""
    rng = np.random.default_rng(2)
    scores = {"joint": rng.normal(0.85, 0.01, 12), "inpainting": rng.normal(0.70, 0.01, 4)}
    costs = {"joint": np.full(12, 1.0), "inpainting": np.full(4, 2.0)}
    verdict = budget.compute_matched(scores, costs, n_permutations=1000)
    matched, whole = verdict.matched, verdict.whole
    assert (matched.hours, matched.trials) == (8.0, {"joint": 8, "inpainting": 4})
    assert (whole.hours, whole.trials) == (None, {"joint": 12, "inpainting": 4})
    assert matched.best["joint"] == pytest.approx(budget.expected_best(scores["joint"], [8]).mean[0])
    assert matched.winner == whole.winner == "joint"
    assert verdict.text().startswith("at 8 GPU-hours: joint ahead of every other (Holm-adjusted p ≤ ")
    assert "; at each cell's whole budget: joint ahead of every other" in verdict.text()
    losses = {"a": [0.3, 0.31, 0.29], "b": [0.5, 0.52, 0.49]}
    lower = budget.compute_matched(losses, {"a": [1] * 3, "b": [1] * 3}, higher_is_better=False)
    assert lower.whole.best["a"] == pytest.approx(budget.expected_best([0.3, 0.31, 0.29], [3],
                                                                       higher_is_better=False).mean[0])


def test_a_cell_the_matched_budget_cannot_buy_a_trial_of_is_left_out_and_said() -> None:
    scores = {"cheap": [0.8, 0.81], "dear": [0.9, 0.95]}
    verdict = budget.compute_matched(scores, {"cheap": [0.5, 0.5], "dear": [4.0, 4.0]}, n_permutations=200)
    assert verdict.matched.trials == {"cheap": 2, "dear": 0} and math.isnan(verdict.matched.best["dear"])
    assert verdict.matched.text == ("at 1 GPU-hours: nothing to compare (fewer than 2 cells afford a scored "
                                    "trial)")
    assert verdict.whole.trials == {"cheap": 2, "dear": 2}


def test_equal_cells_are_called_different_at_most_alpha_of_the_time() -> None:
    """The permutation test is exact where the cells do not differ (measured 4.0% over both budgets; a
    bootstrap of the difference was not: ~12% at alpha 0.05)."""
    rng = np.random.default_rng(3)
    studies, n = 400, 6
    called = 0
    for i in range(studies):
        scores = {"a": rng.normal(0.8, 0.02, n), "b": rng.normal(0.8, 0.02, n)}
        costs = {"a": rng.uniform(0.5, 1.5, n), "b": rng.uniform(0.5, 1.5, n)}
        verdict = budget.compute_matched(scores, costs, seed=i, n_permutations=400)
        called += (verdict.matched.winner is not None) + (verdict.whole.winner is not None)
    assert called / (2 * studies) < 0.05 + 4 * math.sqrt(0.05 * 0.95 / studies)


def test_a_planted_better_cell_is_found() -> None:
    """A cell two trial-sds better, 10 trials each: ahead at the whole budget in most studies (95.5%)."""
    rng = np.random.default_rng(4)
    studies, n = 200, 10
    found = sum(budget.compute_matched({"a": rng.normal(0.84, 0.02, n), "b": rng.normal(0.8, 0.02, n)},
                                       {"a": np.ones(n), "b": np.ones(n)}, seed=i, n_permutations=400
                                       ).whole.winner == "a" for i in range(studies))
    assert found / studies > 0.8
