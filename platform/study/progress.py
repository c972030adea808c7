"""What a sweep shows on the console: one progress bar per cell while it runs (one line per ended trial when
the console is a log file), a summary table at the end."""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from avmae.platform.tracking import layout as T
from avmae.platform.tracking.callbacks import trial_status
from avmae.platform.train.reports import DIVERGED, better
from ray import tune
from tqdm import tqdm

if TYPE_CHECKING:
    from ray.tune import ResultGrid
    from ray.tune.experiment import Trial

STATUSES = tuple(s.value for s in T.TrialStatus)


@dataclass
class CellSummary:
    """A finished cell: how its trials ended and its best configuration (by the study metric's mean over the
    seeds it ran with: a single seed's best would be the luckiest draw, not the best configuration)."""

    cell: str
    counts: Counter = field(default_factory=Counter)
    best_loss: float = math.nan  # the study metric, mean over the best configuration's seeds
    best_params: dict[str, Any] = field(default_factory=dict)
    best_scores: dict[str, float] = field(default_factory=dict)  # probe scores, means over the same seeds
    best_seeds: int = 0

    @classmethod
    def from_results(
        cls, cell: str, grid: ResultGrid, metric: str, epochs: int, searched: list[str]
    ) -> CellSummary:
        summary = cls(cell)
        configurations: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
        for result in grid:
            failed = result.error is not None or not result.metrics
            status = T.TrialStatus.FAILED if failed else trial_status(result.metrics, epochs)
            summary.counts[status.value] += 1
            loss = result.metrics.get(metric, math.nan) if result.metrics else math.nan
            if status in (T.TrialStatus.FINISHED, T.TrialStatus.PRUNED) and loss == loss:  # not NaN
                params = tuple((k, result.config[k]) for k in searched if k in result.config)
                configurations[params].append(result.metrics)
        for params, runs in configurations.items():
            loss = statistics.fmean(run[metric] for run in runs)
            if math.isnan(summary.best_loss) or better(loss, summary.best_loss, metric):
                probes = {k for run in runs for k in run if k.startswith(T.PROBE_PREFIX)}
                summary.best_loss, summary.best_params, summary.best_seeds = loss, dict(params), len(runs)
                summary.best_scores = {k: statistics.fmean(run[k] for run in runs if k in run)
                                       for k in sorted(probes)}
        return summary


class StudyProgress(tune.Callback):
    """The whole study in place: a bar of trials ended of the study's total (with its ETA), and under it one
    bar per cell with how its trials ended and its best score so far. Counts are recomputed from Tune's
    trial list on every event, so a restored study shows the right numbers.

    Where the console is not a terminal (Slurm's output file, CI, `| tee`), bars redrawn in place would fill
    it with cursor codes: each ended trial prints one line instead, the study's count and ETA and the cell's
    counts. `live` forces either (default: whether stderr is a terminal)."""

    def __init__(self, cells: list[str], per_cell: int, metric: str, epochs: int, axes: list[str],
                 live: bool | None = None) -> None:
        self.cells, self.per_cell, self.metric, self.epochs, self.axes = cells, per_cell, metric, epochs, axes
        self.live = sys.stderr.isatty() if live is None else live
        self._bars: dict[str, tqdm] | None = None
        self._began = time.monotonic()
        self._ended_at_start: int | None = None  # trials a restored study had ended before this run

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_bars": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.live = sys.stderr.isatty()  # the console of the process that restored the study
        self._began, self._ended_at_start = time.monotonic(), None

    def setup(self, **info: Any) -> None:
        total = len(self.cells) * self.per_cell
        if not self.live:
            self._bars = {}
            cells = ", ".join(cell or "all" for cell in self.cells)
            print(f"[{time.strftime('%H:%M:%S')}] study: {total} trials in {len(self.cells)} cells "
                  f"({cells}); a line per ended trial follows", file=sys.stderr, flush=True)
            return
        self._bars = {"": tqdm(total=total, desc="study", unit="trial", dynamic_ncols=True, position=0)}
        width = max(len(cell) for cell in self.cells)
        for i, cell in enumerate(self.cells, 1):
            self._bars[cell] = tqdm(total=self.per_cell, desc=f"  {cell or 'all':<{width}}", unit="trial",
                                    dynamic_ncols=True, position=i, bar_format="{desc} {n}/{total} {postfix}")

    def _show(self, trials: list[Trial], ended_trial: Trial | None = None) -> None:
        if self._bars is None:  # restored with the experiment: setup() ran in the original process
            self.setup()
        by_cell: dict[str, list[Trial]] = {cell: [] for cell in self.cells}
        for trial in trials:
            by_cell.setdefault(self._cell(trial), []).append(trial)
        ended, lines = 0, {}
        for cell, group in by_cell.items():
            counts, best = self._counts(group, ended_trial)
            done = sum(n for status, n in counts.items() if status != T.TrialStatus.RUNNING.value)
            ended += done
            parts = [f"{status} {counts[status]}" for status in STATUSES if counts[status]]
            parts.append(f"best {self.metric} {best:.4g}" if math.isfinite(best) else "best -")
            lines[cell] = ", ".join(parts)
            if cell in self._bars:
                self._bars[cell].set_postfix_str(lines[cell], refresh=False)
                self._bars[cell].update(done - self._bars[cell].n)
        if self.live:
            self._bars[""].update(ended - self._bars[""].n)
        elif ended_trial is not None:
            cell = self._cell(ended_trial)
            print(f"[{time.strftime('%H:%M:%S')}] study {ended}/{len(self.cells) * self.per_cell} trials "
                  f"ended{self._eta(ended)}; {cell or 'all'}: {lines[cell]}", file=sys.stderr, flush=True)

    def _cell(self, trial: Trial) -> str:
        return T.cell_key({a: trial.config.get(a) for a in self.axes})

    def _eta(self, ended: int) -> str:
        """From this run's pace (a restored study's earlier trials do not count)."""
        if self._ended_at_start is None:
            self._ended_at_start = ended - 1
        here, left = ended - self._ended_at_start, len(self.cells) * self.per_cell - ended
        if here <= 0 or left <= 0:
            return ""
        return f", ETA {tqdm.format_interval((time.monotonic() - self._began) / here * left)}"

    def _counts(self, trials: list[Trial], ended_trial: Trial | None = None) -> tuple[Counter, float]:
        """How the trials ended so far, and the best score. Tune calls `on_trial_complete` before it marks
        the trial TERMINATED: `ended_trial` counts as ended already."""
        counts: Counter = Counter()
        best = math.nan
        for trial in trials:
            if trial is ended_trial and trial.status == "RUNNING":
                counts[trial_status(trial.last_result, self.epochs).value] += 1
            elif trial.status == "ERROR":
                counts[T.TrialStatus.FAILED.value] += 1
            elif trial.status == "TERMINATED":
                counts[trial_status(trial.last_result, self.epochs).value] += 1
            elif trial.status == "RUNNING":
                counts[T.TrialStatus.RUNNING.value] += 1
            score = trial.last_result.get(self.metric, math.nan)
            if not trial.last_result.get(DIVERGED) and (math.isnan(best) or better(score, best, self.metric)):
                best = score
        return counts, best

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._show(trials)

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any
    ) -> None:
        self._show(trials)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._show(trials, ended_trial=trial)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._show(trials, ended_trial=trial)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self._show(trials)
        for bar in self._bars.values():
            bar.close()
        self._bars = None


def summary_table(summaries: list[CellSummary], metric: str) -> str:
    """Best configuration per cell: its searched values, and over its seeds (n) the mean loss and probe
    scores; then how the trials ended."""
    scores = sorted({k for s in summaries for k in s.best_scores})
    params = sorted({k for s in summaries for k in s.best_params})
    # How the trials of a finished study ended (none is still running, none interrupted: the table is printed
    # only when every cell is done).
    ended = [s for s in STATUSES if s not in (T.TrialStatus.RUNNING.value, T.TrialStatus.INTERRUPTED.value)]
    header = ["cell", f"best {metric}", *params, "seeds", *scores, *ended]
    rows = [
        [s.cell or "(single cell)", _fmt(s.best_loss), *(_fmt(s.best_params.get(p)) for p in params),
         str(s.best_seeds), *(_fmt(s.best_scores.get(k)) for k in scores),
         *(str(s.counts[st]) for st in ended)]
        for s in summaries
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in [header, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
