"""The statistics behind every comparison a dashboard makes: intervals over seeds, paired differences between
cells, Holm's correction, the "best cell" decision and the learning-rate stability verdict.

Pure numbers in, numbers and sentences out: nothing here knows MLflow or plotly, so each rule is tested on
planted data (tests/test_stats.py) and the figures only draw what it returns.

Choices, and why:
- Interval of a mean: a Student t interval below `MIN_BOOTSTRAP_N` values, a seeded expanded-percentile
  bootstrap (Hesterberg 2015) from there on. Studies run 2-5 seeds; a percentile bootstrap of 3 values
  cannot reach outside their range and covers the true mean ~73% of the time at a nominal 95% (~90% at
  10), while the t interval is exact for normal noise. From 10 values on, the bootstrap needs no
  normality and the expansion brings it back to ~95%.
- Paired difference: a paired t-test with its t interval, so the interval excludes 0 exactly when the test
  says p < alpha. Not Wilcoxon: its smallest two-sided p-value is 2 / 2**n (0.25 at 3 seeds, 0.0625 at
  5), so it can never find a difference below 6 seeds. Where every seed gives the same difference the t
  statistic is undefined; the exact sign test decides then (p = 2 / 2**n), so two identical seeds of a
  coarse accuracy are not called certain.
- Between studies (`avmae dashboard A B`), whose seeds need not share data or init: Welch's unpaired t-test.
- Multiple comparisons: Holm's step-down correction over all pairwise comparisons of a family (the cells
  of one objective): it keeps the family-wise error rate at alpha, and is never weaker than Bonferroni.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import combinations

import numpy as np
from avmae.platform.tracking.layout import PROBE_PREFIX
from scipy import stats as sps

CONFIDENCE = 0.95
ALPHA = 0.05
MIN_BOOTSTRAP_N = 10
N_BOOTSTRAP = 4000
BOOTSTRAP_SEED = 0  # the same page every time it is rebuilt
# The stable LR window: LRs whose mean score is within 5% of the best LR's (relative, so it means the same
# for an accuracy and a loss). 5% is about the seed-to-seed spread of a linear probe on a few hundred test
# clips: LRs inside it cannot be told apart from the best at the usual 2-5 seeds.
LR_TOLERANCE = 0.05
# A grad-norm spike: a step whose norm exceeds SPIKE_FACTOR x the median of the SPIKE_WINDOW steps before it
# (once SPIKE_MIN_HISTORY steps exist). The median ignores earlier spikes, and 10x is far beyond the
# normal step-to-step wobble of a clipped AdamW run, so only real blow-ups count.
SPIKE_FACTOR, SPIKE_WINDOW, SPIKE_MIN_HISTORY = 10.0, 20, 5
OBJECTIVE_LABEL = {"joint": "joint reconstruction", "inpainting": "modality inpainting"}


@dataclass(frozen=True)
class Interval:
    """A mean over n values and its confidence interval (NaN bounds where n < 2)."""

    mean: float
    lo: float
    hi: float
    n: int
    method: str  # "t", "bootstrap", or "none" (n < 2)

    @property
    def has_interval(self) -> bool:
        return self.n >= 2 and math.isfinite(self.lo) and math.isfinite(self.hi)

    def text(self, digits: int = 3) -> str:
        """'0.812 [0.790, 0.834]'; 'n = 1: no interval' says why a single value has no bounds."""
        if self.n == 0:
            return "—"
        if not self.has_interval:
            return f"{self.mean:.{digits}f} (n = {self.n}: no interval)"
        return f"{self.mean:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


def score_bounds(metric: str) -> tuple[float, float] | None:
    """The range a metric's mean lies in: [0, 1] for a probe score (accuracy, mAP), none for a loss."""
    return (0.0, 1.0) if metric.startswith(PROBE_PREFIX) else None


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE,
            seed: int = BOOTSTRAP_SEED, bounds: tuple[float, float] | None = None) -> Interval:
    """Mean of the finite `values` and its `confidence` interval (t below MIN_BOOTSTRAP_N values, else a
    seeded expanded-percentile bootstrap; see the module's docstring), within `bounds` where the metric has
    them (a t interval of two accuracies can reach past 1; the mean cannot)."""
    interval = _mean_ci(values, confidence, seed)
    if bounds is None or not interval.has_interval:
        return interval
    low, high = bounds
    return dataclasses.replace(interval, lo=max(interval.lo, low), hi=min(interval.hi, high))


def _mean_ci(values: Sequence[float] | np.ndarray, confidence: float, seed: int) -> Interval:
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "none")
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, "none")
    if n < MIN_BOOTSTRAP_N:
        lo, hi = _t_interval(x, confidence)
        return Interval(mean, lo, hi, n, "t")
    # Expanded percentile: widen the percentile levels so that the interval has the t interval's width
    # factor sqrt(n / (n - 1)) * t, which fixes the plain bootstrap's narrowness for small n.
    tail = (1 - confidence) / 2
    expanded = float(sps.norm.cdf(-math.sqrt(n / (n - 1)) * sps.t.ppf(1 - tail, n - 1)))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, n, size=(N_BOOTSTRAP, n))].mean(axis=1)
    lo, hi = np.quantile(means, [expanded, 1 - expanded])
    return Interval(mean, float(lo), float(hi), n, "bootstrap")


def _t_interval(x: np.ndarray, confidence: float) -> tuple[float, float]:
    half = _t_quantile(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


@lru_cache(maxsize=256)
def _t_quantile(q: float, df: int) -> float:
    """Cached: scipy's quantile costs ~100 us a call, and tests draw thousands of intervals."""
    return float(sps.t.ppf(q, df))


@dataclass(frozen=True)
class Comparison:
    """a - b over the repeats both have, paired by repeat index k."""

    a: str
    b: str
    diff: Interval  # of the per-repeat differences a_k - b_k (t interval)
    p: float  # two-sided, uncorrected; NaN below 2 pairs
    test: str  # "paired t", "sign" (every difference equal) or "none" (fewer than 2 pairs)
    p_holm: float = math.nan  # Holm-adjusted within its family; set by `compare_all`

    @property
    def n(self) -> int:
        return self.diff.n

    def significant(self, alpha: float = ALPHA) -> bool:
        """Significant after Holm's correction (a comparison outside a family has no adjusted p)."""
        return math.isfinite(self.p_holm) and self.p_holm < alpha


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], name_a: str = "a", name_b: str = "b",
                      confidence: float = CONFIDENCE) -> Comparison:
    """Compare two groups by their repeats: a[k] is paired with b[k] (same seed: init, data order, masks).
    Repeats that only one group has, or where either value is not finite, are left out."""
    keys = sorted(k for k in set(a) & set(b) if math.isfinite(a[k]) and math.isfinite(b[k]))
    d = np.array([a[k] - b[k] for k in keys], dtype=float)
    n = len(d)
    if n < 2:
        mean = float(d.mean()) if n else math.nan
        return Comparison(name_a, name_b, Interval(mean, math.nan, math.nan, n, "none"), math.nan, "none")
    mean = float(d.mean())
    if np.ptp(d) <= 1e-12 * max(1.0, abs(mean)):  # every seed gives the same difference
        p = 1.0 if mean == 0 else min(1.0, 2 * 0.5**n)
        return Comparison(name_a, name_b, Interval(mean, mean, mean, n, "t"), p, "sign")
    lo, hi = _t_interval(d, confidence)
    t = mean / (d.std(ddof=1) / math.sqrt(n))  # the one-sample t-test of the differences, by hand: 50x faster
    p = float(2 * sps.t.sf(abs(t), n - 1))
    return Comparison(name_a, name_b, Interval(mean, lo, hi, n, "t"), p, "paired t")


def welch_difference(a: Sequence[float], b: Sequence[float], name_a: str = "a", name_b: str = "b",
                     confidence: float = CONFIDENCE) -> Comparison:
    """mean(a) - mean(b) for groups that are not paired (two studies: their seeds need not share data,
    init or masks): Welch's t-test and interval, which do not assume equal variances."""
    x, y = (np.asarray(v, dtype=float) for v in (a, b))
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    n = min(len(x), len(y))
    mean = float(x.mean() - y.mean()) if n else math.nan
    if n < 2:
        return Comparison(name_a, name_b, Interval(mean, math.nan, math.nan, n, "none"), math.nan, "none")
    if x.std() == 0 and y.std() == 0:  # no spread at all: Welch's t is undefined
        p = 1.0 if mean == 0 else math.nan
        return Comparison(name_a, name_b, Interval(mean, mean, mean, n, "t"), p, "none")
    result = sps.ttest_ind(x, y, equal_var=False)
    low, high = result.confidence_interval(confidence)
    return Comparison(name_a, name_b, Interval(mean, float(low), float(high), n, "t"), float(result.pvalue),
                      "Welch t")


def with_holm(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """The same comparisons with Holm-adjusted p-values over them as one family."""
    adjusted = holm([c.p for c in comparisons])
    return [Comparison(c.a, c.b, c.diff, c.p, c.test, float(q))
            for c, q in zip(comparisons, adjusted, strict=True)]


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count towards the family size)."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, math.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = len(finite)
    running = 0.0
    for rank, i in enumerate(finite[np.argsort(p[finite], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def compare_all(groups: Mapping[str, Mapping[int, float]]) -> list[Comparison]:
    """Every pair of groups (in the given order), paired by repeat, with Holm-adjusted p-values over the
    whole family."""
    return with_holm([paired_difference(groups[a], groups[b], a, b) for a, b in combinations(groups, 2)])


@dataclass(frozen=True)
class Best:
    """The best group where it beats every other one significantly; otherwise None, and `text` says why."""

    winner: str | None
    text: str
    comparisons: tuple[Comparison, ...] = field(default_factory=tuple)


def best_group(groups: Mapping[str, Mapping[int, float]], higher_is_better: bool = True,
               alpha: float = ALPHA) -> Best:
    """The group with the best mean, crowned only if it beats every other group significantly (Holm over all
    pairwise comparisons); otherwise 'no significant difference at n = ...'."""
    means = {g: float(np.nanmean(list(v.values()))) for g, v in groups.items()
             if any(math.isfinite(x) for x in v.values())}
    if len(means) < 2:
        return Best(None, "nothing to compare: fewer than 2 groups have a score")
    sign = 1.0 if higher_is_better else -1.0
    top = max(means, key=lambda g: sign * means[g])
    scored = {g: groups[g] for g in groups if g in means}
    comparisons = compare_all(scored)
    against = [c for c in comparisons if top in (c.a, c.b)]
    ns = sorted({c.n for c in against})
    n_text = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
    beats = all(c.significant(alpha) and sign * (c.diff.mean if c.a == top else -c.diff.mean) > 0
                for c in against)
    if not beats:
        return Best(None, f"no significant difference at n = {n_text}", tuple(comparisons))
    worst_p = max(c.p_holm for c in against)
    return Best(top, f"{top} beats every other (Holm-adjusted p ≤ {worst_p:.2g}, n = {n_text})",
                tuple(comparisons))


def grad_norm_spikes(norms: Sequence[float] | np.ndarray, factor: float = SPIKE_FACTOR,
                     window: int = SPIKE_WINDOW, min_history: int = SPIKE_MIN_HISTORY) -> int:
    """Steps whose grad norm exceeds `factor` x the median of the `window` finite steps before them."""
    x = np.asarray(norms, dtype=float)
    x = x[np.isfinite(x)]
    return sum(1 for i in range(min_history, len(x)) if x[i] > factor * np.median(x[max(0, i - window):i]))


@dataclass(frozen=True)
class LrPoint:
    """One learning rate: the score of the trials that finished there, and how many diverged."""

    lr: float
    score: Interval
    n_trials: int  # that ended (finished, pruned or diverged)
    n_diverged: int
    spikes: int


@dataclass(frozen=True)
class LrVerdict:
    label: str  # "joint reconstruction", or a cell
    metric: str
    points: tuple[LrPoint, ...]  # by lr
    window: tuple[float, float] | None  # the stable LR window, None where no LR qualifies
    best: LrPoint | None

    @property
    def n_trials(self) -> int:
        return sum(p.n_trials for p in self.points)

    @property
    def n_diverged(self) -> int:
        return sum(p.n_diverged for p in self.points)

    @property
    def spikes(self) -> int:
        return sum(p.spikes for p in self.points)

    @property
    def octaves(self) -> float:
        return math.log2(self.window[1] / self.window[0]) if self.window else math.nan

    def sentence(self) -> str:
        """'joint reconstruction: stable over 8e-5 to 1.3e-3 (4 octaves, 0/12 diverged, ...)'."""
        counts = (f"{self.n_diverged}/{self.n_trials} diverged, {self.spikes} grad-norm "
                  f"spike{'' if self.spikes == 1 else 's'}")
        if self.window is None or self.best is None:
            return f"{self.label}: no stable learning rate ({counts})"
        lo, hi = self.window
        where = f"stable over {lr_text(lo)} to {lr_text(hi)}" if hi > lo else f"stable only at {lr_text(lo)}"
        octaves = round(self.octaves, 1)
        span = f"{octaves:g} octave{'' if octaves == 1 else 's'}"
        score = self.best.score
        n = f", n = {score.n}" if score.has_interval else ""  # else the text already says n = 1
        best = f"best {self.metric} {score.text()} at {lr_text(self.best.lr)}{n}"
        return f"{self.label}: {where} ({span}, {counts}; {best})"


def lr_verdict(label: str, metric: str, lrs: Sequence[float], scores: Sequence[float],
               diverged: Sequence[bool], spikes: Sequence[int] | None = None, higher_is_better: bool = True,
               tolerance: float = LR_TOLERANCE) -> LrVerdict:
    """The LR-stability verdict over trials given as parallel sequences (score NaN where a trial has none,
    e.g. diverged or pruned). The stable window is the widest run of adjacent LRs around the best one whose
    mean score is within `tolerance` (relative) of the best and where no trial diverged."""
    lr = np.asarray(lrs, dtype=float)
    score = np.asarray(scores, dtype=float)
    div = np.asarray(diverged, dtype=bool)
    spike = np.zeros(len(lr), dtype=int) if spikes is None else np.asarray(spikes, dtype=int)
    keep = np.isfinite(lr) & (lr > 0)
    lr, score, div, spike = lr[keep], score[keep], div[keep], spike[keep]
    bins = lr_bins(lr)
    points = []
    for b in np.unique(bins):
        at = bins == b
        points.append(LrPoint(float(np.exp(np.log(lr[at]).mean())),
                              mean_ci(score[at & ~div], bounds=score_bounds(metric)),
                              int(at.sum()), int(div[at].sum()), int(spike[at].sum())))
    points.sort(key=lambda p: p.lr)
    sign = 1.0 if higher_is_better else -1.0
    scored = [i for i, p in enumerate(points) if p.score.n]
    if not scored:
        return LrVerdict(label, metric, tuple(points), None, None)
    top = max(scored, key=lambda i: sign * points[i].score.mean)
    best = points[top].score.mean
    margin = tolerance * abs(best)

    def stable(p: LrPoint) -> bool:
        return p.score.n > 0 and p.n_diverged == 0 and sign * (p.score.mean - best) >= -margin

    if not stable(points[top]):
        return LrVerdict(label, metric, tuple(points), None, points[top])
    lo = hi = top
    while lo > 0 and stable(points[lo - 1]):
        lo -= 1
    while hi < len(points) - 1 and stable(points[hi + 1]):
        hi += 1
    return LrVerdict(label, metric, tuple(points), (points[lo].lr, points[hi].lr), points[top])


def lr_bins(lrs: np.ndarray) -> np.ndarray:
    """Which LRs count as one: the values themselves where they repeat (a grid, or repeats of a
    configuration: at most half as many values as trials), else quarter-decade bins (a continuous search)."""
    if len(np.unique(lrs)) <= len(lrs) / 2:
        return lrs
    return np.round(np.log10(lrs) * 4) / 4


def lr_text(lr: float) -> str:
    """8e-5, 1.3e-3: as short as a learning rate can be written without losing its second digit."""
    mantissa, exponent = f"{lr:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def stability_sentence(verdicts: Sequence[LrVerdict]) -> str:
    """The verdicts of several objectives as the one sentence the dashboard states."""
    return "; ".join(v.sentence() for v in verdicts)
