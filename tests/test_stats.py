"""The statistics module on planted data: differences that are there are found, differences that are not are
found no more often than alpha, and intervals cover the true mean at their stated rate."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from avmae.dashboards import stats

DRAWS = 2000


def binomial_band(p: float, draws: int) -> float:
    """Four binomial standard errors: a rate measured over `draws` draws falls outside this band around
    its true value p about once in 16,000 runs of the test."""
    return 4 * math.sqrt(p * (1 - p) / draws)


# --- intervals -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 3, 5])
def test_t_interval_of_few_seeds_covers_the_true_mean_at_95_percent(n: int) -> None:
    rng = np.random.default_rng(n)
    hits = 0
    for _ in range(DRAWS):
        ci = stats.mean_ci(rng.normal(0.8, 0.03, n))
        assert ci.method == "t" and ci.n == n
        hits += ci.lo <= 0.8 <= ci.hi
    assert abs(hits / DRAWS - 0.95) < binomial_band(0.95, DRAWS)


@pytest.mark.parametrize("draw", ["normal", "exponential"])
def test_bootstrap_interval_covers_the_true_mean_at_about_95_percent(draw: str) -> None:
    """From MIN_BOOTSTRAP_N values on the bootstrap takes over; the expanded percentile keeps it near 95%,
    also for skewed scores (a plain percentile bootstrap covers ~90% at n = 10)."""
    rng = np.random.default_rng(1)
    n, draws = 12, 1000
    hits = 0
    for i in range(draws):
        x = rng.normal(0.5, 0.1, n) if draw == "normal" else rng.exponential(0.5, n)
        ci = stats.mean_ci(x, seed=i)
        assert ci.method == "bootstrap"
        hits += ci.lo <= 0.5 <= ci.hi
    assert 0.95 - binomial_band(0.95, draws) - 0.02 < hits / draws < 0.95 + binomial_band(0.95, draws)


def test_bootstrap_is_reproducible_and_t_and_bootstrap_agree_on_normal_data() -> None:
    x = np.random.default_rng(3).normal(0.7, 0.05, 40)
    assert stats.mean_ci(x) == stats.mean_ci(x)  # seeded: the page is the same each time it is rebuilt
    boot, (lo, hi) = stats.mean_ci(x), stats._t_interval(x, 0.95)
    assert boot.lo == pytest.approx(lo, abs=0.006) and boot.hi == pytest.approx(hi, abs=0.006)


def test_one_value_has_no_interval_and_says_so() -> None:
    one = stats.mean_ci([0.81, math.nan])  # a missing score does not count
    assert (one.n, one.method, one.has_interval) == (1, "none", False)
    assert one.text() == "0.810 (n = 1: no interval)"
    assert stats.mean_ci([]).text() == "—"
    assert stats.mean_ci([0.8, 0.82, 0.84]).text() == "0.820 [0.770, 0.870]"


# --- paired differences ----------------------------------------------------------------------------------

def seeds(rng: np.random.Generator, n: int, means: list[float], seed_sd: float = 0.05, noise: float = 0.01
          ) -> dict[str, dict[int, float]]:
    """Groups of n repeats: repeat k shares a seed effect across groups (what pairing removes) plus noise."""
    shared = rng.normal(0, seed_sd, n)
    return {f"g{i}": {k: m + shared[k] + rng.normal(0, noise) for k in range(n)} for i, m in enumerate(means)}


def test_a_large_planted_difference_is_significant() -> None:
    rng = np.random.default_rng(0)
    found = 0
    for _ in range(200):
        groups = seeds(rng, 3, [0.85, 0.75])
        c = stats.paired_difference(groups["g0"], groups["g1"])
        assert c.test == "paired t" and c.n == 3
        found += c.p < stats.ALPHA and c.diff.lo > 0
    assert found / 200 > 0.95


def test_paired_p_and_interval_are_scipys_paired_t_test() -> None:
    a, b = {0: 0.81, 1: 0.86, 2: 0.79, 3: 0.9}, {0: 0.8, 1: 0.82, 2: 0.8, 3: 0.85}
    c = stats.paired_difference(a, b)
    reference = stats.sps.ttest_rel(list(a.values()), list(b.values()))
    low, high = reference.confidence_interval(0.95)
    assert c.p == pytest.approx(reference.pvalue) and (c.diff.lo, c.diff.hi) == pytest.approx((low, high))


def test_pairing_removes_the_shared_seed_effect() -> None:
    """A 0.03 difference under 0.05 seed-to-seed noise: paired by seed it is found, unpaired it is not."""
    rng = np.random.default_rng(1)
    paired = unpaired = 0
    for _ in range(200):
        groups = seeds(rng, 5, [0.83, 0.80])
        a, b = list(groups["g0"].values()), list(groups["g1"].values())
        paired += stats.paired_difference(groups["g0"], groups["g1"]).p < stats.ALPHA
        unpaired += stats.sps.ttest_ind(a, b).pvalue < stats.ALPHA
    assert paired / 200 > 0.9 and unpaired / 200 < 0.5


@pytest.mark.parametrize("n", [3, 5, 10])
def test_no_difference_is_found_at_most_alpha_of_the_time(n: int) -> None:
    rng = np.random.default_rng(n)
    false = sum(stats.paired_difference(*seeds(rng, n, [0.8, 0.8]).values()).p < stats.ALPHA
                for _ in range(DRAWS))
    assert false / DRAWS < stats.ALPHA + binomial_band(stats.ALPHA, DRAWS)


def test_repeats_are_paired_by_index_and_unmatched_ones_left_out() -> None:
    a = {0: 0.9, 1: 0.8, 2: 0.85, 3: 0.7}
    b = {0: 0.8, 1: 0.75, 2: 0.80, 4: 0.1}  # repeat 3 only in a, 4 only in b
    c = stats.paired_difference(a, b, "a", "b")
    assert c.n == 3 and c.diff.mean == pytest.approx((0.1 + 0.05 + 0.05) / 3)


def test_identical_differences_use_the_sign_test_not_an_infinite_t() -> None:
    """Two seeds both +0.025 on a 40-clip probe: t would be infinite; the sign test says p = 0.5."""
    c = stats.paired_difference({0: 0.85, 1: 0.875}, {0: 0.825, 1: 0.85})
    assert (c.test, c.p) == ("sign", pytest.approx(0.5))
    c6 = stats.paired_difference({k: 0.9 for k in range(6)}, {k: 0.8 for k in range(6)})
    assert c6.p == pytest.approx(2 / 64) and c6.p < stats.ALPHA  # six seeds agreeing is evidence
    assert stats.paired_difference({0: 0.8, 1: 0.8}, {0: 0.8, 1: 0.8}).p == 1.0
    single = stats.paired_difference({0: 0.9}, {0: 0.8})
    assert (single.test, single.n, math.isnan(single.p)) == ("none", 1, True)


def test_welch_difference_is_scipys_and_finds_a_planted_difference_between_unpaired_groups() -> None:
    rng = np.random.default_rng(6)
    a, b = rng.normal(0.85, 0.02, 4), rng.normal(0.75, 0.03, 3)
    c = stats.welch_difference(a, b)
    reference = stats.sps.ttest_ind(a, b, equal_var=False)
    assert (c.test, c.p, c.n) == ("Welch t", pytest.approx(reference.pvalue), 3)
    assert (c.diff.lo, c.diff.hi) == pytest.approx(tuple(reference.confidence_interval(0.95)))
    assert c.p < stats.ALPHA and c.diff.lo > 0
    false = sum(stats.welch_difference(rng.normal(0.8, 0.02, 3), rng.normal(0.8, 0.02, 3)).p < stats.ALPHA
                for _ in range(DRAWS))
    assert false / DRAWS < stats.ALPHA + binomial_band(stats.ALPHA, DRAWS)
    assert stats.welch_difference([0.8], [0.7, 0.75]).test == "none"  # one value: no test
    assert stats.welch_difference([0.8, 0.8], [0.8, 0.8]).p == 1.0


# --- multiple comparisons --------------------------------------------------------------------------------

def test_holm_matches_the_step_down_by_hand() -> None:
    adjusted = stats.holm([0.01, 0.04, 0.03, math.nan, 0.005])
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> max with previous: 0.06
    assert adjusted[[4, 0, 2, 1]] == pytest.approx([0.02, 0.03, 0.06, 0.06])
    assert math.isnan(adjusted[3])


def test_holm_keeps_the_family_wise_error_rate_over_all_pairs() -> None:
    """Five equal cells, ten pairwise tests: uncorrected, some pair is 'significant' in ~30% of studies;
    with Holm, in at most alpha of them."""
    rng = np.random.default_rng(2)
    draws = 1000
    corrected = uncorrected = 0
    for _ in range(draws):
        family = stats.compare_all(seeds(rng, 4, [0.8] * 5))
        assert len(family) == 10
        corrected += any(c.significant() for c in family)
        uncorrected += any(c.p < stats.ALPHA for c in family)
    assert corrected / draws < stats.ALPHA + binomial_band(stats.ALPHA, draws)
    assert uncorrected / draws > 0.15


def test_best_is_crowned_only_where_it_beats_every_other_cell() -> None:
    rng = np.random.default_rng(4)
    clear = stats.best_group(seeds(rng, 4, [0.9, 0.7, 0.72, 0.71]))
    assert clear.winner == "g0" and clear.text.startswith("g0 beats every other (Holm-adjusted p ≤ ")
    assert clear.text.endswith("n = 4)") and len(clear.comparisons) == 6
    tied = stats.best_group(seeds(rng, 4, [0.9, 0.9, 0.7]))  # two at the top: neither beats the other
    assert tied.winner is None and tied.text == "no significant difference at n = 4"
    none = stats.best_group(seeds(rng, 3, [0.8, 0.8, 0.8]))
    assert none.winner is None and none.text == "no significant difference at n = 3"
    lower = stats.best_group(seeds(rng, 4, [0.3, 0.5, 0.5]), higher_is_better=False)  # a loss
    assert lower.winner == "g0"
    single = stats.best_group({"a": {0: 0.9}, "b": {0: 0.5}})  # old studies: one seed per cell
    assert single.winner is None and single.text == "no significant difference at n = 1"
    assert stats.best_group({"a": {0: 0.9}}).winner is None
    mixed = stats.best_group({"a": {0: 0.9, 1: 0.91, 2: 0.92}, "b": {0: 0.5, 1: 0.52}, "c": {0: 0.4}})
    assert mixed.text == "no significant difference at n = 1–2"


def test_the_false_crowning_rate_stays_below_alpha() -> None:
    rng = np.random.default_rng(5)
    crowned = sum(stats.best_group(seeds(rng, 5, [0.8] * 4)).winner is not None for _ in range(DRAWS // 2))
    assert crowned / (DRAWS // 2) < stats.ALPHA + binomial_band(stats.ALPHA, DRAWS // 2)


# --- LR stability ----------------------------------------------------------------------------------------

def test_grad_norm_spikes_counts_blow_ups_not_wobble() -> None:
    rng = np.random.default_rng(0)
    norms = rng.lognormal(0, 0.3, 200)
    assert stats.grad_norm_spikes(norms) == 0
    norms[[50, 51, 120]] = 40.0  # two adjacent spikes count twice; the median ignores the first
    assert stats.grad_norm_spikes(norms) == 3
    assert stats.grad_norm_spikes([50.0, 1, 1, 1, 1, 1]) == 0  # no history yet for the first steps
    assert stats.grad_norm_spikes([1, 1, 1, 1, 1, math.nan, 30]) == 1  # a NaN is divergence, not a spike


def planted_lr_study(rng: np.random.Generator, repeats: int = 3):
    """Joint: flat over 8e-5..1.3e-3 and worse beyond; inpainting: good only at 1.6e-4..3.2e-4 and diverges
    above. Returns per objective the parallel lists lr_verdict takes."""
    grid = [8e-5, 1.6e-4, 3.2e-4, 6.4e-4, 1.3e-3, 2.6e-3]
    joint = {8e-5: 0.85, 1.6e-4: 0.86, 3.2e-4: 0.87, 6.4e-4: 0.86, 1.3e-3: 0.84, 2.6e-3: 0.70}
    inpaint = {8e-5: 0.70, 1.6e-4: 0.84, 3.2e-4: 0.85, 6.4e-4: math.nan, 1.3e-3: math.nan, 2.6e-3: math.nan}
    out = {}
    for name, truth in (("joint", joint), ("inpainting", inpaint)):
        lrs, scores, diverged = [], [], []
        for lr in grid:
            for _ in range(repeats):
                lrs.append(lr)
                diverged.append(math.isnan(truth[lr]))
                scores.append(truth[lr] + rng.normal(0, 0.003))
        out[name] = (lrs, scores, diverged)
    return out


def test_lr_verdict_finds_the_planted_windows_and_says_them_in_one_sentence() -> None:
    study = planted_lr_study(np.random.default_rng(0))
    verdicts = []
    for objective, (lrs, scores, diverged) in study.items():
        spikes = [int(d) for d in diverged]  # each diverged run spiked once before it went NaN
        verdicts.append(stats.lr_verdict(stats.OBJECTIVE_LABEL[objective], "probe/av_acc", lrs, scores,
                                         diverged, spikes))
    joint, inpainting = verdicts
    assert joint.window == pytest.approx((8e-5, 1.3e-3)) and round(joint.octaves) == 4
    assert inpainting.window == pytest.approx((1.6e-4, 3.2e-4)) and inpainting.octaves == pytest.approx(1)
    assert [p.n_diverged for p in inpainting.points] == [0, 0, 0, 3, 3, 3]
    assert joint.best.lr == pytest.approx(3.2e-4) and joint.best.score.n == 3
    sentence = stats.stability_sentence(verdicts)
    number, interval = r"0\.8\d\d", r"\[0\.8\d\d, 0\.8\d\d\]"
    assert re.fullmatch(
        rf"joint reconstruction: stable over 8e-5 to 1\.3e-3 \(4 octaves, 0/18 diverged, 0 grad-norm spikes; "
        rf"best probe/av_acc {number} {interval} at 3\.2e-4, n = 3\); "
        rf"modality inpainting: stable over 1\.6e-4 to 3\.2e-4 \(1 octave, 9/18 diverged, 9 grad-norm "
        rf"spikes; best probe/av_acc {number} {interval} at 3\.2e-4, n = 3\)", sentence), sentence
    assert joint.best.score.text() in sentence and joint.best.score.has_interval


def test_lr_window_is_contiguous_and_a_loss_is_minimised() -> None:
    lrs = [1e-4, 2e-4, 4e-4, 8e-4]
    # 4e-4 is out of tolerance: 8e-4 is good again but not adjacent to the best, so not in the window
    v = stats.lr_verdict("x", "val/loss", lrs, [0.30, 0.31, 0.5, 0.30], [False] * 4, higher_is_better=False)
    assert v.window == pytest.approx((1e-4, 2e-4))
    worst = stats.lr_verdict("x", "m", lrs, [math.nan] * 4, [True] * 4)
    assert worst.window is None
    assert worst.sentence() == "x: no stable learning rate (4/4 diverged, 0 grad-norm spikes)"
    one = stats.lr_verdict("x", "m", [3e-4], [0.8], [False])
    assert one.sentence() == "x: stable only at 3e-4 (0 octaves, 0/1 diverged, 0 grad-norm spikes; " \
                             "best m 0.800 (n = 1: no interval) at 3e-4)"


def test_continuous_lrs_are_binned_by_quarter_decade() -> None:
    lrs = np.array([1.0e-4, 1.1e-4, 3e-4, 1e-3, 1.05e-3])
    assert len(np.unique(stats.lr_bins(lrs))) == 3
    grid = np.array([1e-4, 1e-4, 1.2e-4, 1.2e-4])  # repeats: the values themselves, however close
    assert len(np.unique(stats.lr_bins(grid))) == 2
    assert stats.lr_text(8e-5) == "8e-5" and stats.lr_text(1.3e-3) == "1.3e-3"


def test_an_interval_of_a_probe_score_stays_within_its_range():
    wide = stats.mean_ci([0.9, 1.0])  # two accuracies: the t interval reaches past 1
    assert 0 < wide.lo and wide.hi > 1
    bounded = stats.mean_ci([0.9, 1.0], bounds=stats.score_bounds("probe/av_acc"))
    assert (bounded.mean, bounded.lo, bounded.hi) == (wide.mean, wide.lo, 1.0)
    assert stats.mean_ci([0.0, 0.6], bounds=(0.0, 1.0)).lo == 0.0
    assert stats.score_bounds("val/loss") is None
