"""Every cell of a study in one Tune experiment, so that its trials share the cluster: one `Searcher` that
deals trials round-robin from a search per cell, and one `TrialScheduler` that keeps an ASHA per cell.

Running the cells one `Tuner.fit()` after another left most of a cluster idle (at most
`max_concurrent_trials` of one cell, fewer at the tail of each cell when ASHA has stopped all but one). Both
classes are Ray Tune's public extension points; what stays per cell is what must: Optuna's model (each cell
has its own TPE sampler, seeded from the cell) and ASHA's rungs (a trial is compared with its cell's trials
only). The study's budget stops new trials once spent; running trials finish.
"""

from __future__ import annotations

import itertools
import json
import math
import pickle
from collections import Counter
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow.fs
from avmae.platform.study.spec import REPEAT_KEY, BudgetSpec, Grid, ResourceSpec, StudySpec
from avmae.platform.tracking import layout as T
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Repeater, Searcher
from ray.tune.search.optuna import OptunaSearch

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial


def cell_of(spec: StudySpec, config: dict[str, Any]) -> str:
    """The key of the cell a trial's config belongs to."""
    return T.cell_key({axis: config[axis] for axis in spec.axes})


def search_space(spec: StudySpec) -> dict[str, Any]:
    """The searched dimensions as Tune domains."""
    domains = {
        "uniform": lambda d: tune.uniform(d.low, d.high),
        "loguniform": lambda d: tune.loguniform(d.low, d.high),
        "choice": lambda d: tune.choice(d.values),
        "grid": lambda d: tune.grid_search(d.values),
    }
    return {name: domains[dim.dist](dim) for name, dim in spec.search.items()}


class GridPoints(Searcher):
    """A cell's trials without Optuna: every grid point x `trials_per_cell` x repeats, in order, with the
    other dimensions drawn at random from a generator seeded by the cell (the same on every run)."""

    def __init__(self, spec: StudySpec, seed: int) -> None:
        super().__init__(metric=spec.metric, mode=spec.mode)
        grids = {n: d.values for n, d in spec.search.items() if isinstance(d, Grid)}
        self._random = {n: d for n, d in search_space(spec).items() if n not in grids}
        points = [dict(zip(grids, combo, strict=True)) for combo in itertools.product(*grids.values())]
        self._points = [{**p, REPEAT_KEY: k} for _ in range(spec.trials_per_cell) for p in points
                        for k in range(spec.repeats)]
        self._rng = np.random.default_rng(seed)
        self._drawn: dict[str, Any] = {}

    def suggest(self, trial_id: str) -> dict[str, Any] | str:
        if not self._points:
            return Searcher.FINISHED
        point = self._points.pop(0)
        if point[REPEAT_KEY] == 0:  # repeats share their random draws: they are one configuration
            self._drawn = {n: d.sample(random_state=self._rng) for n, d in self._random.items()}
        return {**point, **self._drawn}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass

    def grow_repeats(self, old: int, new: int) -> None:
        """Run every configuration not yet begun with `new` seeds instead of `old` (the ones begun get their
        missing seeds from `StudySearch.grow_repeats`). A configuration's seeds are consecutive points, the
        first with repeat index 0: one whose first point is still here has not begun."""
        grown: list[dict[str, Any]] = []
        for point in self._points:
            grown.append(point)
            if point[REPEAT_KEY] == old - 1 and len(grown) >= old and grown[-old][REPEAT_KEY] == 0:
                grown += [{**point, REPEAT_KEY: k} for k in range(old, new)]
        self._points = grown


def cell_search(spec: StudySpec, seed: int) -> Searcher:
    """One cell's search: Optuna (TPE, seeded) wrapped in a `Repeater` when configurations repeat, or the
    grid's points."""
    if not spec.searched_by_optuna:
        return GridPoints(spec, seed)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kwargs = {"n_startup_trials": spec.optuna.startup_trials} if spec.optuna.startup_trials else {}
    space = OptunaSearch.convert_search_space(search_space(spec))
    search: Searcher = OptunaSearch(space=space, metric=spec.metric, mode=spec.mode,
                                    sampler=optuna.samplers.TPESampler(seed=seed, **kwargs))
    if spec.repeats > 1:  # each sampled point runs with every seed; Optuna learns from their mean
        search = Repeater(search, repeat=spec.repeats, set_index=True)
    return search


class StudySearch(Searcher):
    """Deals every cell's trials round-robin (a study stopped halfway has covered every cell alike), each from
    its cell's own search; at most `max_concurrent_per_cell` running in one cell; none after the budget."""

    # The searcher Tune is using, by study record: Tune pickles its stopper apart from its searcher (and
    # restores them apart), so `BudgetStopper` finds the live one here.
    live: ClassVar[dict[str | None, StudySearch]] = {}

    def __init__(self, spec: StudySpec, seeds: dict[str, int], record: str | None = None) -> None:
        """`seeds`: each cell's sampler seed by cell key; `record`: the study's `study.json`, whose budget is
        read again on restore (`--resume` may raise it)."""
        super().__init__(metric=spec.metric, mode=spec.mode)
        self.spec, self.record = spec, record
        self.cells = {T.cell_key(cell): cell for cell in spec.cells()}
        self.searches = {key: cell_search(spec, seeds[key]) for key in self.cells}
        self.dealt: Counter = Counter()  # trials suggested per cell
        self.trial_cell: dict[str, str] = {}
        self.done: set[str] = set()  # trials that ended (a restored study resumes the others)
        self.resumed: set[str] = set()  # trials that failed, and that `--resume` restarted from a checkpoint
        self.params: dict[str, dict[str, Any]] = {}  # each trial's sampled values
        self.hours: dict[str, float] = {}  # each trial's time so far (Tune's time_total_s)
        self.finished_cells: set[str] = set()
        self.turn = 0
        self.stopped: str | None = None  # why no new trial starts (a spent budget), once it happened
        self.extra: dict[str, list[dict[str, Any]]] = {}  # seeds added on resume to configurations begun
        self.extra_trials: set[str] = set()  # their trials: no cell search knows them
        StudySearch.live[record] = self

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # the study's metric and mode, fixed at construction; the cells' spaces are their own

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        # A spent budget suggests nothing (not FINISHED, which Tune would remember on `--resume`);
        # `BudgetStopper` ends the experiment once the running trials are done.
        self.stopped = self.budget_spent()
        if self.stopped:
            return None
        keys, cap = list(self.cells), self.spec.resources.max_concurrent_per_cell
        for i in range(len(keys)):
            key = keys[(self.turn + i) % len(keys)]
            if self.dealt[key] >= self.spec.trials_in_cell:
                self.finished_cells.add(key)
            if key in self.finished_cells or (cap is not None and self.running()[key] >= cap):
                continue
            config = self.next_config(key, trial_id)
            if config == Searcher.FINISHED:
                self.finished_cells.add(key)
                continue
            if config is None:
                continue
            self.turn = (keys.index(key) + 1) % len(keys)
            self.dealt[key] += 1
            self.trial_cell[trial_id] = key
            self.params[trial_id] = config
            return {**self.cells[key], **config}
        return Searcher.FINISHED if len(self.finished_cells) == len(keys) else None

    def next_config(self, key: str, trial_id: str) -> dict[str, Any] | str | None:
        """The cell's next trial: an added seed of a configuration already begun, else its search's."""
        if self.extra.get(key):
            self.extra_trials.add(trial_id)
            return self.extra[key].pop(0)
        return self.searches[key].suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.hours[trial_id] = result.get("time_total_s", 0.0) / 3600
        if trial_id in self.done:  # a failed trial that `--resume` restarted: running again
            self.done.discard(trial_id)
            self.resumed.add(trial_id)
        if trial_id in self.extra_trials:
            return
        if self.metric in result and trial_id not in self.resumed:  # Optuna records the metric only
            self.searches[self.trial_cell[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        key = self.trial_cell.get(trial_id)
        if key is None or trial_id in self.done:
            return
        self.done.add(trial_id)
        if result is not None and "time_total_s" in result:
            self.hours[trial_id] = result["time_total_s"] / 3600
        if trial_id in self.extra_trials:
            return  # a seed added on resume: its configuration's score was told with the seeds it had
        if trial_id in self.resumed:
            self.tell_late(key, trial_id, result, error)
        else:
            self.searches[key].on_trial_complete(trial_id, result=result, error=error)

    def tell_late(self, key: str, trial_id: str, result: dict | None, error: bool) -> None:
        """What a resumed trial ended with, as one more evaluated point of its cell's Optuna study: Optuna
        closed the trial's own record (failed) when it first ended, and a closed Optuna trial takes nothing
        more. With repeats, the point is this seed's score (its configuration's mean was told already)."""
        search = self.searches[key]
        optuna = search.searcher if isinstance(search, Repeater) else search
        if not isinstance(optuna, OptunaSearch):
            return  # a grid learns nothing from scores
        value = (result or {}).get(self.metric)
        failed = error or value is None or not math.isfinite(value)
        params = {name: self.params[trial_id][name] for name in self.spec.search}
        optuna.add_evaluated_point(params, math.nan if failed else float(value), error=failed)

    def running(self) -> Counter:
        """Trials dealt and not ended, per cell."""
        return Counter(key for trial, key in self.trial_cell.items() if trial not in self.done)

    def budget_spent(self) -> str | None:
        """Why no new trial may start, or None."""
        return spent(read_budget(self.record, self.spec), self.spec.resources, sum(self.hours.values()))

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
        self.__dict__.setdefault("extra", {})  # a search saved before seeds could be added
        self.__dict__.setdefault("extra_trials", set())
        self.stopped = None  # a raised budget is read at the next suggestion
        self.grow_repeats(read_repeats(self.record, self.spec))
        StudySearch.live[self.record] = self

    def grow_repeats(self, repeats: int) -> None:
        """Run every configuration with `repeats` seeds (a `--resume` that raised `repeats`): the seeds that
        ran are kept, the configurations already begun get only their missing seeds, the cell searches run
        the ones not yet begun with all of them."""
        old = self.spec.repeats
        if repeats <= old:
            return
        for key, search in self.searches.items():
            begun = [{n: v for n, v in self.params[t].items() if n != REPEAT_KEY}
                     for t, cell in self.trial_cell.items()
                     if cell == key and self.params[t].get(REPEAT_KEY, 0) == 0 and t not in self.extra_trials]
            self.extra[key] = self.extra.get(key, []) + [
                {**config, REPEAT_KEY: k} for config in begun for k in range(old, repeats)]
            if isinstance(search, GridPoints):
                search.grow_repeats(old, repeats)
            elif isinstance(search, Repeater):
                search.repeat = repeats
        self.spec = self.spec.model_copy(update={"repeats": repeats})
        self.finished_cells.clear()


class BudgetStopper(tune.Stopper):
    """Ends the experiment once the budget is spent and the trials that were running have finished."""

    def __init__(self, record: str | None) -> None:
        self.record = record  # the live searcher's key in `StudySearch.live`

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        search = StudySearch.live.get(self.record)
        return search is not None and bool(search.stopped) and not search.running()


def spent(budget: BudgetSpec, resources: ResourceSpec, trial_hours: float) -> str | None:
    """Why a study with `trial_hours` behind it may start no new trial, or None."""
    gpu_hours = trial_hours * resources.workers * resources.gpus_per_worker
    if budget.trial_hours is not None and trial_hours >= budget.trial_hours:
        return f"budget spent: {trial_hours:.3g} of {budget.trial_hours:g} trial hours"
    if budget.gpu_hours is not None and gpu_hours >= budget.gpu_hours:
        return f"budget spent: {gpu_hours:.3g} of {budget.gpu_hours:g} GPU hours"
    return None


def read_repeats(record: str | None, spec: StudySpec) -> int:
    """Seeds per configuration in the study's record (`--resume` may have raised them), else the spec's."""
    recorded = _recorded_spec(record)
    return spec.repeats if recorded is None else int(recorded.get("repeats", 1))


def _recorded_spec(record: str | None) -> dict[str, Any] | None:
    """The spec as the study's record `study.json` holds it, or None where there is no record."""
    if record is None:
        return None
    fs, path = pyarrow.fs.FileSystem.from_uri(record)
    if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())["spec"]


def read_budget(record: str | None, spec: StudySpec) -> BudgetSpec:
    """The budget in the study's record `study.json` (a `--resume` may have raised it), else the spec's."""
    recorded = _recorded_spec(record)
    return spec.budget if recorded is None else BudgetSpec.model_validate(recorded.get("budget") or {})


class CellScheduler(FIFOScheduler):
    """ASHA inside each cell: a trial is stopped only by comparison with its own cell's trials. Trials start
    in the order the searcher dealt them (FIFO)."""

    def __init__(self, spec: StudySpec) -> None:
        super().__init__()
        self.spec = spec
        self.cells: dict[str, ASHAScheduler] = {}

    def _asha(self, trial: Trial) -> ASHAScheduler:
        key = cell_of(self.spec, trial.config)
        if key not in self.cells:
            s = self.spec.scheduler
            self.cells[key] = ASHAScheduler(
                time_attr=T.EPOCH, metric=self.spec.metric, mode=self.spec.mode, max_t=self.spec.train.epochs,
                grace_period=min(s.grace_period, self.spec.train.epochs), reduction_factor=s.reduction_factor,
            )
        return self.cells[key]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # each cell's ASHA has the study's metric and mode

    def on_trial_add(self, tune_controller: TuneController, trial: Trial) -> None:
        self._asha(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: TuneController, trial: Trial, result: dict) -> str:
        return self._asha(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: TuneController, trial: Trial, result: dict) -> None:
        self._asha(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller: TuneController, trial: Trial) -> None:
        self._asha(trial).on_trial_error(tune_controller, trial)

    def on_trial_remove(self, tune_controller: TuneController, trial: Trial) -> None:
        self._asha(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return f"ASHA per cell ({len(self.cells)} cells so far)"


def study_scheduler(spec: StudySpec) -> TrialScheduler:
    return CellScheduler(spec) if spec.scheduler.name == "asha" else FIFOScheduler()
