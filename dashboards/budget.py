"""Expected best score against budget (Dodge et al. 2019, "Show Your Work: Improved Reporting of
Experimental Results"): what a cell's search would have found with k trials, or h GPU-hours, instead of all
it ran, and which cell is ahead when the cells are given the same compute.

- Expected maximum of k trials, from a cell's N trial scores sorted v_(1) <= ... <= v_(N). Dodge et al.
  2019 draw the k trials from the empirical distribution, with replacement:
  E[max] = sum_i v_(i) ((i/N)**k - ((i-1)/N)**k). Their follow-up (Dodge et al. 2021, "Expected Validation
  Performance and Estimation of a Random Variable's Maximum") draws without replacement, the exact
  expectation over the k-subsets of the trials that ran: E[max] = sum_i v_(i) C(i-1, k-1) / C(N, k). The
  spread is the max's own sd over those draws (sum_i w_i v_(i)**2 - E[max]**2), the band of Dodge's plots.
- Against compute: a budget of h GPU-hours buys k(h) = floor(h / c) trials, c the cell's cost per scored
  trial (its total cost, failed trials included, over its scored trials): the mean-cost treatment, which
  ignores any tie between a trial's cost and its score (a pruned trial is cheap and poor); budgets past the
  cell's own spend stop at its N trials (no extrapolation).
- Compute-matched verdict: the cells at the budget the cheapest one spent, and each at its whole spend. As
  in `stats.best_group`, a cell is ahead only where it beats every other one after Holm's correction over
  all pairs. The test, for want of a t-test of an expected maximum, is a two-sided permutation test of the
  difference: the two cells' trials (score and cost together) are pooled and split at random, and each
  part's expected best taken at the trials the budget buys it. It is exact where the cells do not differ
  (a bootstrap of the difference was not: it called ~12% of equal pairs different at alpha = 0.05, the
  bootstrap of a near-maximum being too narrow). Its null is "the cells' trials are alike", so at the whole
  budget a cell whose best is higher only because it ran more trials of the same kind is not called ahead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import replace as replace_field
from itertools import combinations

import numpy as np
from avmae.dashboards.stats import ALPHA, BOOTSTRAP_SEED, N_BOOTSTRAP, holm


@dataclass(frozen=True)
class ExpectedBest:
    """Expected best score after k[j] trials (hours[j] GPU-hours where drawn against compute), with the
    sd of that best over the draws; NaN where a budget buys no trial."""

    k: tuple[int, ...]
    mean: tuple[float, ...]
    sd: tuple[float, ...]
    n_trials: int  # scored trials the expectation draws from
    replace: bool  # with replacement (Dodge et al. 2019) or without (their 2021 follow-up)
    hours: tuple[float, ...] | None = None


def max_weights(n: int, k: np.ndarray, replace: bool = True) -> np.ndarray:
    """P(the best of k draws is the i-th smallest of n values), as a (len(k), n) array: with replacement
    (i/n)**k - ((i-1)/n)**k, without C(i-1, k-1) / C(n, k) (k <= n). Rows with k = 0 are all zero."""
    k = np.atleast_1d(np.asarray(k, dtype=int))
    i = np.arange(1, n + 1)
    if replace:
        weights = (i / n) ** k[:, None] - ((i - 1) / n) ** k[:, None]
    else:
        if (k > n).any():
            raise ValueError(f"without replacement at most {n} trials can be drawn, not {k.max()}")
        weights = np.array([[math.comb(j - 1, m - 1) / math.comb(n, m) if m else 0.0 for j in i] for m in k])
    weights[k == 0] = 0.0
    return weights


def expected_best(scores: Sequence[float] | np.ndarray, k: Sequence[int] | None = None, replace: bool = True,
                  higher_is_better: bool = True) -> ExpectedBest:
    """Expected best of k = 1..N (or the given k) of the cell's finite `scores`, and its sd; for a loss
    (`higher_is_better=False`) the expected lowest."""
    sign = 1.0 if higher_is_better else -1.0
    v = np.sort(_finite(scores) * sign)
    ks = np.arange(1, len(v) + 1) if k is None else np.asarray(k, dtype=int)
    mean, sd = _moments(v, ks, replace)
    return ExpectedBest(tuple(int(m) for m in ks), tuple(float(sign * m) for m in mean),
                        tuple(float(x) for x in sd), len(v), replace)


def expected_best_at_budget(scores: Sequence[float] | np.ndarray, costs: Sequence[float] | np.ndarray,
                            hours: Sequence[float] | np.ndarray, replace: bool = True,
                            higher_is_better: bool = True) -> ExpectedBest:
    """Expected best after each budget in `hours`, k(h) = floor(h / cost per scored trial) trials, at most
    the N scored ones. `scores[j]` (NaN for a trial without one: diverged, failed) cost `costs[j]` hours."""
    n, cost = _cost_per_scored_trial(scores, costs)
    h = np.asarray(hours, dtype=float)
    k = np.array([_trials_bought(n, cost, x) for x in h], dtype=int)
    curve = expected_best(scores, k, replace, higher_is_better)
    return replace_field(curve, hours=tuple(float(x) for x in h))


def _moments(sorted_values: np.ndarray, k: np.ndarray, replace: bool) -> tuple[np.ndarray, np.ndarray]:
    if not len(sorted_values):
        return np.full(len(k), math.nan), np.full(len(k), math.nan)
    weights = max_weights(len(sorted_values), k, replace)
    mean = np.where(k > 0, weights @ sorted_values, math.nan)
    var = weights @ sorted_values**2 - mean**2
    return mean, np.sqrt(np.maximum(var, 0.0))


def _cost_per_scored_trial(scores: Sequence[float] | np.ndarray, costs: Sequence[float] | np.ndarray
                           ) -> tuple[int, float]:
    s, c = np.asarray(scores, dtype=float), np.asarray(costs, dtype=float)
    if s.shape != c.shape:
        raise ValueError(f"{len(s)} scores but {len(c)} costs: one cost per trial")
    if not np.isfinite(c).all() or (c < 0).any():
        raise ValueError("every trial needs a finite, non-negative cost (GPU-hours)")
    n = int(np.isfinite(s).sum())
    return n, (float(c.sum()) / n if n else math.inf)


def _trials_bought(n: int, cost: float, hours: float | None) -> int:
    """Scored trials `hours` buy at `cost` each, at most the n there are (all n where hours is None)."""
    if hours is None or cost == 0:
        return n
    return min(n, math.floor(hours / cost)) if n else 0


@dataclass(frozen=True)
class BudgetVerdict:
    """The cells at one budget: each one's trials bought, expected best and its sd over draws (NaN where the
    budget buys none), Holm-adjusted permutation p-values per pair, and the cell ahead of every other."""

    hours: float | None  # the matched budget; None: each cell at its own whole spend
    trials: dict[str, int]
    best: dict[str, float]
    sd: dict[str, float]
    p_holm: dict[tuple[str, str], float]
    winner: str | None
    text: str


@dataclass(frozen=True)
class ComputeMatched:
    matched: BudgetVerdict  # at the budget the cheapest cell spent
    whole: BudgetVerdict  # each cell at everything it spent

    def text(self) -> str:
        return f"{self.matched.text}; {self.whole.text}"


def compute_matched(scores: Mapping[str, Sequence[float]], costs: Mapping[str, Sequence[float]],
                    higher_is_better: bool = True, replace: bool = True, alpha: float = ALPHA,
                    seed: int = BOOTSTRAP_SEED, n_permutations: int = N_BOOTSTRAP, unit: str = "GPU-hours"
                    ) -> ComputeMatched:
    """Which cell is ahead at the budget the cheapest cell spent and at each cell's whole spend:
    `scores[cell][j]` is trial j's score (NaN where it has none), `costs[cell][j]` its cost in `unit`
    (GPU-hours; CPU-hours for a study without GPUs)."""
    trials = {cell: (np.asarray(scores[cell], dtype=float) * (1.0 if higher_is_better else -1.0),
                     np.asarray(costs[cell], dtype=float)) for cell in scores}
    matched = min((float(c.sum()) for _, c in trials.values()), default=math.nan)
    return ComputeMatched(*(_verdict(trials, hours, higher_is_better, replace, alpha, seed, n_permutations,
                                     unit) for hours in (matched, None)))


def _verdict(trials: Mapping[str, tuple[np.ndarray, np.ndarray]], hours: float | None, higher_is_better: bool,
             replace: bool, alpha: float, seed: int, n_permutations: int, unit: str) -> BudgetVerdict:
    """`trials[cell]`: (scores, higher is better, NaN where none; costs)."""
    sign = 1.0 if higher_is_better else -1.0
    where = f"at {hours:.3g} {unit}" if hours is not None else "at each cell's whole budget"
    bought, best, sd = {}, {}, {}
    for cell, (s, c) in trials.items():
        n, cost = _cost_per_scored_trial(s, c)
        bought[cell] = _trials_bought(n, cost, hours)
        mean, spread = _moments(np.sort(_finite(s)), np.array([bought[cell]]), replace)
        best[cell], sd[cell] = sign * float(mean[0]), float(spread[0])
    ranked = [cell for cell in trials if math.isfinite(best[cell])]
    pairs = list(combinations(ranked, 2))
    rng = np.random.default_rng(seed)
    p = [_permutation_p(trials[a], trials[b], hours, replace, rng, n_permutations) for a, b in pairs]
    p_holm = {pair: float(q) for pair, q in zip(pairs, holm(p), strict=True)}
    if len(ranked) < 2:
        return BudgetVerdict(hours, bought, best, sd, p_holm, None,
                             f"{where}: nothing to compare (fewer than 2 cells afford a scored trial)")
    top = max(ranked, key=lambda cell: sign * best[cell])
    against = [q for pair, q in p_holm.items() if top in pair]
    if all(q < alpha for q in against):
        return BudgetVerdict(hours, bought, best, sd, p_holm, top,
                             f"{where}: {top} ahead of every other (Holm-adjusted p ≤ {max(against):.2g})")
    counts = ", ".join(f"{cell} {k}" for cell, k in bought.items())
    return BudgetVerdict(hours, bought, best, sd, p_holm, None,
                         f"{where}: no significant difference (trials: {counts})")


def _permutation_p(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], hours: float | None,
                   replace: bool, rng: np.random.Generator, n_permutations: int) -> float:
    """Two-sided permutation p-value of the difference in expected best between two cells' trials."""
    scores, costs = np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]])
    split = len(a[0])
    order = np.vstack([np.arange(len(scores)), rng.permuted(np.tile(np.arange(len(scores)),
                                                                    (n_permutations, 1)), axis=1)])
    first = _expected_best_rows(scores[order[:, :split]], costs[order[:, :split]], hours, replace)
    second = _expected_best_rows(scores[order[:, split:]], costs[order[:, split:]], hours, replace)
    d = first - second  # row 0: the cells as they are
    d = np.abs(d[np.isfinite(d)][1:]) if math.isfinite(d[0]) else np.array([])
    observed = abs(first[0] - second[0])
    return float(((d >= observed * (1 - 1e-12)).sum() + 1) / (len(d) + 1)) if len(d) else math.nan


def _expected_best_rows(scores: np.ndarray, costs: np.ndarray, hours: float | None, replace: bool
                        ) -> np.ndarray:
    """Expected best of each row's trials (scores NaN where none, with their costs), at the trials the budget
    buys that row (all of them where hours is None); NaN where it buys none."""
    v = np.sort(scores, axis=1)  # NaN sort last: row r's n[r] scores come first
    n = np.isfinite(v).sum(axis=1)
    if hours is None:
        k = n
    else:
        spent = costs.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            k = np.where(n > 0, np.minimum(n, np.floor(hours * n / spent)), 0).astype(int)
    out = np.full(len(v), math.nan)
    for size in np.unique(n[n > 0]):  # rows with the same number of scored trials share their weights
        rows = np.flatnonzero((n == size) & (k > 0))
        if len(rows):
            weights = max_weights(int(size), k[rows], replace)
            out[rows] = np.einsum("rj,rj->r", weights, v[rows, :size])
    return out


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    return x[np.isfinite(x)]
