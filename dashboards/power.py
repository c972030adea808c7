"""Planning the next run: how many seeds per cell would resolve a difference that a study did not find.

A comparison that is not significant says "not at this n", not "no difference". Given the spread the study
measured and the difference worth finding (e.g. 0.05 accuracy, or the measured one), this is the number of
seeds per cell at which the house's own test (`stats`: a two-sided t-test at alpha) finds it with the wanted
power:

- paired cells (same seed k in both): the paired t-test on the differences a_k - b_k. Its statistic follows
  a noncentral t with n - 1 degrees of freedom and noncentrality delta / (sd_diff / sqrt(n)).
- unpaired groups (two studies): Welch's t-test with n per group, approximated as a noncentral t with the
  Welch-Satterthwaite degrees of freedom and noncentrality delta / sqrt((sd_a**2 + sd_b**2) / n); with equal
  sds this is the pooled two-sample t-test's exact power (2n - 2 degrees of freedom).

Power is P(|T| > t_(1-alpha/2)) under the noncentral t (scipy.stats.nct); tests/test_stats_power.py checks
each prediction by simulating thousands of studies at the predicted n. The search stops at `max_n` seeds
and says so; a difference of 0, or an unmeasured spread, has no answer and the result says why. Power from
the *measured* difference of a non-significant comparison is optimistic and noisy (that difference is as
uncertain as its interval): prefer the smallest difference that matters.

For a family of comparisons (the cells of one objective, under Holm), pass `comparisons=m`: the test is
planned at alpha / m, Holm's first step, so the plan holds for whichever pair is hardest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from avmae.dashboards.stats import ALPHA
from scipy import stats as sps

POWER = 0.8
MAX_SEEDS = 100  # seeds per cell beyond which a plan is no plan: the search stops there and says so


@dataclass(frozen=True)
class SeedsNeeded:
    """Seeds per cell at which a two-sided t-test at `alpha` finds a true difference `delta` with probability
    `power`, under the spreads `sds`. `n` is None where no number of seeds can (`reason` says why) and is
    `max_n` with `capped` set where the search stopped before reaching the power."""

    n: int | None
    design: str  # "paired t" or "Welch t"
    delta: float
    sds: tuple[float, ...]  # (sd of the paired differences,) or (sd_a, sd_b) for Welch's t
    alpha: float  # per test: the family's alpha / comparisons
    power: float  # wanted
    achieved: float  # the power at n (NaN where n is None)
    capped: bool = False
    reason: str = ""

    def text(self) -> str:
        """One line: '8 seeds per cell would find a difference of 0.05 with 80% power (paired t, sd 0.04,
        alpha 0.05)', 'more than 100 seeds ...' where capped, or why no number of seeds is given."""
        sds = ", ".join(f"{sd:.3g}" for sd in self.sds)
        assumptions = f"{self.design}, sd {sds}, alpha {self.alpha:.3g}"
        wanted = f"a difference of {abs(self.delta):.3g} with {self.power:.0%} power"
        if self.n is None:
            return f"no number of seeds finds {wanted}: {self.reason}"
        if self.capped:
            return (f"more than {self.n} seeds per cell would be needed to find {wanted} ({assumptions}; "
                    f"{self.n} give {self.achieved:.0%})")
        note = f"; {self.reason}" if self.reason else ""
        return f"{self.n} seeds per cell would find {wanted} ({assumptions}{note})"


def power_paired(n: int | np.ndarray, delta: float, sd: float, alpha: float = ALPHA) -> np.ndarray:
    """Power of the two-sided paired t-test over n pairs whose differences have mean `delta`, sd `sd` > 0."""
    n = np.asarray(n, dtype=float)
    return _t_power(n - 1, delta / (sd / np.sqrt(n)), alpha)


def power_welch(n: int | np.ndarray, delta: float, sd_a: float, sd_b: float, alpha: float = ALPHA
                ) -> np.ndarray:
    """Power of the two-sided Welch t-test with n values per group (noncentral t approximation, exact for the
    pooled t-test where sd_a == sd_b); at least one sd > 0."""
    n = np.asarray(n, dtype=float)
    va, vb = sd_a**2, sd_b**2
    df = (va + vb) ** 2 / ((va**2 + vb**2) / (n - 1))
    return _t_power(df, delta / np.sqrt((va + vb) / n), alpha)


def _t_power(df: np.ndarray, noncentrality: np.ndarray, alpha: float) -> np.ndarray:
    critical = sps.t.ppf(1 - alpha / 2, df)
    return sps.nct.sf(critical, df, noncentrality) + sps.nct.cdf(-critical, df, noncentrality)


def seeds_needed_paired(delta: float, sd: float, alpha: float = ALPHA, power: float = POWER,
                        comparisons: int = 1, max_n: int = MAX_SEEDS) -> SeedsNeeded:
    """Pairs (seeds per cell) for a paired t-test to find a mean difference `delta` whose per-seed
    differences have sd `sd`. With sd = 0 every seed gives the same difference and the house's exact sign
    test decides (`stats.paired_difference`: p = 2 / 2**n), so n is the smallest with 2 / 2**n < alpha."""
    plan = SeedsNeeded(None, "paired t", delta, (sd,), alpha / comparisons, power, math.nan)
    if problem := _unanswerable(delta, sd):
        return replace(plan, reason=problem)
    if sd == 0:
        n = max(2, math.floor(1 - math.log2(plan.alpha)) + 1)  # the smallest n with 2 ** (1 - n) < alpha
        return replace(plan, n=min(n, max_n), achieved=float(n <= max_n), capped=n > max_n,
                       reason="no spread: the sign test decides")
    return _search(plan, lambda n: power_paired(n, delta, sd, plan.alpha), max_n)


def seeds_needed_welch(delta: float, sd_a: float, sd_b: float | None = None, alpha: float = ALPHA,
                       power: float = POWER, comparisons: int = 1, max_n: int = MAX_SEEDS) -> SeedsNeeded:
    """Seeds per group for Welch's t-test to find `delta` between unpaired groups of sds `sd_a`, `sd_b`
    (`sd_b` defaults to `sd_a`: the pooled two-sample t-test)."""
    sd_b = sd_a if sd_b is None else sd_b
    plan = SeedsNeeded(None, "Welch t", delta, (sd_a, sd_b), alpha / comparisons, power, math.nan)
    if problem := _unanswerable(delta, sd_a) or _unanswerable(delta, sd_b):
        return replace(plan, reason=problem)
    if sd_a == sd_b == 0:
        return replace(plan, reason="no spread in either group, so Welch's t is undefined: assume an sd")
    return _search(plan, lambda n: power_welch(n, delta, sd_a, sd_b, plan.alpha), max_n)


def _unanswerable(delta: float, sd: float) -> str:
    if not math.isfinite(sd) or sd < 0:
        return f"the spread is unknown (sd = {sd:g}): measure it over at least 2 seeds, or assume one"
    if not math.isfinite(delta):
        return "the difference is unknown: give the one worth finding"
    if delta == 0:
        return "a difference of 0 is none to find"
    return ""


def _search(plan: SeedsNeeded, power_at: Callable[[np.ndarray], np.ndarray], max_n: int) -> SeedsNeeded:
    """The smallest n in 2..max_n whose power reaches the plan's (power grows with n: all evaluated at once),
    else max_n, capped."""
    ns = np.arange(2, max(max_n, 2) + 1)
    powers = power_at(ns)
    reached = np.flatnonzero(powers >= plan.power)
    if not len(reached):
        return replace(plan, n=int(ns[-1]), achieved=float(powers[-1]), capped=True)
    return replace(plan, n=int(ns[reached[0]]), achieved=float(powers[reached[0]]))


def next_run_paired(a: Mapping[int, float], b: Mapping[int, float], delta: float | None = None,
                    alpha: float = ALPHA, power: float = POWER, comparisons: int = 1,
                    max_n: int = MAX_SEEDS) -> SeedsNeeded:
    """`seeds_needed_paired` at the spread of the measured per-seed differences a[k] - b[k] (the seeds both
    have, finite), for `delta` (default: the measured mean difference)."""
    keys = [k for k in set(a) & set(b) if math.isfinite(a[k]) and math.isfinite(b[k])]
    d = np.array([a[k] - b[k] for k in keys], dtype=float)
    sd = float(d.std(ddof=1)) if len(d) >= 2 else math.nan
    delta = (float(d.mean()) if len(d) else math.nan) if delta is None else delta
    return seeds_needed_paired(delta, sd, alpha, power, comparisons, max_n)


def next_run_welch(a: Sequence[float], b: Sequence[float], delta: float | None = None, alpha: float = ALPHA,
                   power: float = POWER, comparisons: int = 1, max_n: int = MAX_SEEDS) -> SeedsNeeded:
    """`seeds_needed_welch` at the two groups' measured sds (finite values), for `delta` (default: the
    measured difference of means)."""
    x, y = (np.asarray(v, dtype=float) for v in (a, b))
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    enough = len(x) >= 2 and len(y) >= 2
    sd_a, sd_b = (float(x.std(ddof=1)), float(y.std(ddof=1))) if enough else (math.nan, math.nan)
    if delta is None:
        delta = float(x.mean() - y.mean()) if len(x) and len(y) else math.nan
    return seeds_needed_welch(delta, sd_a, sd_b, alpha, power, comparisons, max_n)
