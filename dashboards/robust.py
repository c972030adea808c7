"""rliable's aggregates over seeds (Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge of the
Statistical Precipice"): the interquartile mean with its stratified bootstrap interval, and the probability
of improvement P(A > B).

- IQM: the mean of the middle 50% of a cell's seeds, `scipy.stats.trim_mean(x, 0.25)` exactly as rliable's
  `aggregate_iqm` (int(0.25 n) values cut from each end). Below `MIN_IQM_N` = 5 seeds it is refused: at 4 it
  is the median of the middle two, at 2-3 it cuts nothing and is the plain mean, so a column labelled IQM
  would claim a robustness it does not have.
- Intervals: rliable's stratified percentile bootstrap, where a stratum is a task; here one task per cell,
  so a cell's seeds are resampled (a paired comparison resamples seed indices, keeping pairs). Measured
  coverage of the IQM interval (tests/test_stats_robust.py, normal and lognormal scores): ~90% at 5-6
  seeds, ~93% at 8, 94-95% from 10 on; the percentile bootstrap cannot reach past the few values it has.
- P(A > B): over paired seeds the fraction of seeds k with a_k > b_k, ties counting 1/2; over unpaired
  groups the Mann-Whitney form U / (n_a n_b), the fraction of all pairs (i, j) with a_i > b_j, ties 1/2
  (rliable's `probability_of_improvement` for one task). Both are unbiased for P(A > B). The paired wins
  are a binomial count, so their interval is Wilson's score interval: over true P(A > B) from 0.5 to 0.93
  it covers ~96% on average at 10 seeds (a count of 10 cannot cover 95% at every P; a percentile bootstrap
  of it covered 84%). The unpaired interval is rliable's stratified bootstrap, ~95% at 10 seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from avmae.dashboards.stats import BOOTSTRAP_SEED, CONFIDENCE, N_BOOTSTRAP, Interval, mean_ci
from scipy import stats as sps

MIN_IQM_N = 5
IQM_TRIM = 0.25


class TooFewSeeds(ValueError):
    """An aggregate that needs more seeds than a cell has; the message says how many, and why."""


def iqm(values: Sequence[float] | np.ndarray) -> float:
    """The interquartile mean of the finite `values` (rliable's `aggregate_iqm`); refuses below 5."""
    x = _finite(values)
    _need_iqm_seeds(len(x))
    return float(sps.trim_mean(x, IQM_TRIM))


def iqm_ci(values: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE, seed: int = BOOTSTRAP_SEED,
           n_bootstrap: int = N_BOOTSTRAP) -> Interval:
    """The IQM of the finite `values` (in `Interval.mean`) with rliable's percentile bootstrap interval over
    the seeds (method "iqm bootstrap"); raises TooFewSeeds below 5 values."""
    x = _finite(values)
    n = len(x)
    _need_iqm_seeds(n)
    rng = np.random.default_rng(seed)
    replicates = sps.trim_mean(x[rng.integers(0, n, size=(n_bootstrap, n))], IQM_TRIM, axis=1)
    lo, hi = _percentile(replicates, confidence)
    return Interval(float(sps.trim_mean(x, IQM_TRIM)), lo, hi, n, "iqm bootstrap")


def aggregate_ci(values: Sequence[float] | np.ndarray, statistic: str = "mean",
                 confidence: float = CONFIDENCE, bounds: tuple[float, float] | None = None) -> Interval:
    """A cell's score over its seeds as `statistic`: "mean" (`stats.mean_ci`, the house's default) or "iqm"
    (`iqm_ci`, which refuses below 5 seeds)."""
    if statistic == "mean":
        return mean_ci(values, confidence, bounds=bounds)
    if statistic == "iqm":  # a bootstrap of values inside `bounds` stays inside them
        return iqm_ci(values, confidence)
    raise ValueError(f"unknown statistic {statistic!r}: 'mean' or 'iqm'")


def _need_iqm_seeds(n: int) -> None:
    if n < MIN_IQM_N:
        cut = int(IQM_TRIM * n)
        raise TooFewSeeds(f"the IQM needs at least {MIN_IQM_N} seeds, this cell has {n}: trimming 25% from "
                          f"each end cuts {cut} of them, so it would be "
                          f"{'the plain mean' if cut == 0 else 'the median'}; use the mean")


@dataclass(frozen=True)
class Improvement:
    """P(a > b) with its bootstrap interval (in `probability`: mean = the estimate, n = pairs or the smaller
    group)."""

    a: str
    b: str
    probability: Interval
    paired: bool

    def text(self, digits: int = 2) -> str:
        """'P(a > b) = 0.80 [0.60, 1.00] (paired, n = 5)'."""
        how = "paired" if self.paired else "unpaired"
        return f"P({self.a} > {self.b}) = {self.probability.text(digits)} ({how}, n = {self.probability.n})"


def improvement_paired(a: Mapping[int, float], b: Mapping[int, float], name_a: str = "a", name_b: str = "b",
                       confidence: float = CONFIDENCE) -> Improvement:
    """P(A > B) over the seeds both have (finite): the fraction with a[k] > b[k], ties 1/2, and its Wilson
    score interval (the wins of n paired seeds are a binomial count)."""
    keys = sorted(k for k in set(a) & set(b) if math.isfinite(a[k]) and math.isfinite(b[k]))
    wins = np.array([_win(a[k], b[k]) for k in keys], dtype=float)
    n = len(wins)
    if n < 2:
        estimate = float(wins.mean()) if n else math.nan
        return Improvement(name_a, name_b, Interval(estimate, math.nan, math.nan, n, "none"), True)
    lo, hi = _wilson(float(wins.mean()), n, confidence)
    return Improvement(name_a, name_b, Interval(float(wins.mean()), lo, hi, n, "wilson"), True)


def _wilson(p: float, n: int, confidence: float) -> tuple[float, float]:
    """Wilson's score interval of a proportion p observed over n trials."""
    z = float(sps.norm.ppf((1 + confidence) / 2))
    centre, scale = (p + z * z / (2 * n)) / (1 + z * z / n), 1 + z * z / n
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / scale
    return max(0.0, centre - half), min(1.0, centre + half)


def improvement_unpaired(a: Sequence[float], b: Sequence[float], name_a: str = "a", name_b: str = "b",
                         confidence: float = CONFIDENCE, seed: int = BOOTSTRAP_SEED,
                         n_bootstrap: int = N_BOOTSTRAP) -> Improvement:
    """P(A > B) between unpaired groups: U / (n_a n_b) over the finite values, and its stratified percentile
    bootstrap interval (each group resampled on its own, as rliable's independent bootstrap)."""
    x, y = _finite(a), _finite(b)
    n = min(len(x), len(y))
    wins = _win(x[:, None], y[None, :])  # wins[i, j]: a_i against b_j
    if n < 2:
        estimate = float(wins.mean()) if n else math.nan
        return Improvement(name_a, name_b, Interval(estimate, math.nan, math.nan, n, "none"), False)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(x), size=(n_bootstrap, len(x), 1))
    cols = rng.integers(0, len(y), size=(n_bootstrap, 1, len(y)))
    lo, hi = _percentile(wins[rows, cols].mean(axis=(1, 2)), confidence)
    return Improvement(name_a, name_b, Interval(float(wins.mean()), lo, hi, n, "bootstrap"), False)


def _win(a: float | np.ndarray, b: float | np.ndarray) -> np.ndarray:
    return (a > b) + 0.5 * (a == b)


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    return x[np.isfinite(x)]


def _percentile(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    lo, hi = np.quantile(replicates, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)
