"""Per-trial overhead: from the moment Tune may start a trial to that trial's first optimiser step.

Runs N one-step trials one after another (tiny model, AV-Digits) twice, each on a fresh local Ray runtime:
  baseline  the plain pattern (stack.md): a Tune function that builds a TorchTrainer, the spec object in the
            Train config, the training module imported by the trial process, no actor reuse, Ray defaults;
  platform  `avmae sweep`'s own path (study.run_study).
Overhead of trial i = its first step - the end of trial i-1 (for the first: the Tuner's start). The first
trial pays cold caches; the mean of the others is the steady state.

`--timeline` (platform mode) also prints where the last trial's overhead went, from Ray's own task events
(State API): when each Ray Train process was asked for, started running and finished its `__init__`, and the
worker's set-up calls, in seconds after the previous trial ended.

    .venv/bin/python bench/trial_overhead.py [--trials 4] [--mode both|baseline|platform] [--timeline]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import ray.train
from avmae.platform.study.prepare import absolute, prepare_data
from avmae.platform.study.record import Launch
from avmae.platform.study.runner import run_study
from avmae.platform.study.spec import StudySpec, parse_spec
from avmae.platform.train.reports import FIRST_STEP_AT
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

REPO = Path(__file__).resolve().parents[1]


def bench_spec(trials: int, data: Path) -> StudySpec:
    """One cell, `trials` one-step trials (an LR grid), nothing else: only the start-up is left to time."""
    return parse_spec({
        "name": "trial_overhead",
        "data": {"kind": "av-digits", "root": str(data), "cache_dir": str(data / "cache"),
                 "av_digits": {"clips_per_digit": 4}},
        "model": {"preset": "tiny"},
        "search": {"lr": {"dist": "grid", "values": [1e-4 * (i + 1) for i in range(trials)]}},
        "train": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 8},
        "scheduler": {"name": "fifo"},
        "resources": {"max_concurrent_trials": 1},
        "evaluation": {"probe": []},
    })


class Timer(tune.Callback):
    """When the Tuner started, and when each trial ended and took its first step."""

    def __init__(self) -> None:
        self.began = math.nan
        self.ends: list[float] = []
        self.first_steps: list[float] = []

    def setup(self, **info: Any) -> None:
        self.began = time.time()  # the Tuner starts: Ray is up, the trainable registered

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if FIRST_STEP_AT in result:
            self.first_steps.append(result[FIRST_STEP_AT])

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ends.append(time.time())

    def overheads(self) -> list[float]:
        starts = [self.began, *self.ends[:-1]]
        return [first - start for first, start in zip(sorted(self.first_steps), starts, strict=False)]


class TaskEvents(tune.Callback):
    """Ray's task events for the whole run, read while the runtime is still up."""

    def __init__(self) -> None:
        self.tasks: list[Any] = []

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        from ray.util.state import list_tasks

        self.tasks = list_tasks(detail=True, limit=10_000, raise_on_missing_output=False)


TIMELINE_METHODS = ("TrainController.run", "RayTrainWorker.init_train_context", "RayTrainWorker.run_train_fn")


def timeline(tasks: list[Any], start: float, first_step: float) -> list[str]:
    """One line per Train process started between `start` and `first_step` (asked for -> running ->
    `__init__` done) and per worker set-up call, in seconds after `start`."""
    rows = [(first_step - start, first_step - start, math.nan, "first optimiser step")]
    for task in tasks:
        at = {e["state"]: e["created_ms"] / 1000 - start for e in task.events or []}
        name = task.func_or_class_name
        asked = at.get("PENDING_NODE_ASSIGNMENT", at.get("PENDING_ARGS_AVAIL"))
        if asked is None or not 0 <= asked <= first_step - start:
            continue
        running, done = at.get("RUNNING", math.nan), at.get("FINISHED", math.nan)
        if task.type == "ACTOR_CREATION_TASK":
            what = f"{name.removesuffix('.__init__')}: process start {running - asked:.2f} s, " \
                   f"__init__ {done - running:.2f} s"
            rows.append((asked, running, done, what))
        elif name in TIMELINE_METHODS:
            rows.append((running, running, done, f"{name}: {done - running:.2f} s"))
    lines = [f"{a:6.2f} {r:7.2f} {d:6.2f}  {what}" for a, r, d, what in sorted(rows)]
    return [" asked running   done  (seconds after the previous trial ended)", *lines]


def baseline_trial(config: dict[str, Any], spec: StudySpec, storage: str) -> None:
    """stack.md's working pattern, nothing more."""
    from avmae.platform.train.ray_worker import train  # the training module, imported by the trial process

    TorchTrainer(
        train,
        train_loop_config={"spec": spec, "trial": spec.resolve_trial(config)},  # their imports follow
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.99}),
        run_config=ray.train.RunConfig(name=tune.get_context().get_trial_id(), storage_path=storage,
                                       callbacks=[TuneReportCallback()]),
    ).fit()


def run_baseline(spec: StudySpec, folder: Path) -> list[float]:
    ray.init(include_dashboard=True, dashboard_host="127.0.0.1", object_store_memory=256 * 1024**2,
             logging_level="WARNING")
    try:
        timer = Timer()
        trainable = tune.with_parameters(baseline_trial, spec=spec, storage=str(folder / "train"))
        tune.Tuner(
            tune.with_resources(trainable, {"cpu": 0.01}),
            param_space={"lr": tune.grid_search(spec.search["lr"].values)},
            tune_config=tune.TuneConfig(metric=spec.metric, mode="min", max_concurrent_trials=1),
            run_config=tune.RunConfig(storage_path=str(folder), name="base", callbacks=[timer], verbose=0),
        ).fit()
        return timer.overheads()
    finally:
        ray.shutdown()


def run_platform(spec: StudySpec, folder: Path, show_timeline: bool = False) -> list[float]:
    timer, events = Timer(), TaskEvents()
    launch = Launch("trial_overhead", str(folder / "platform"), f"sqlite:///{folder / 'mlflow.db'}")
    run_study(spec, None, launch, callbacks=(timer, events) if show_timeline else (timer,))
    if show_timeline and len(timer.ends) > 1:
        print("\nlast trial's start-up, from Ray's task events:")
        print("\n".join(timeline(events.tasks, timer.ends[-2], sorted(timer.first_steps)[-1])))
    return timer.overheads()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--mode", choices=("both", "baseline", "platform"), default="both")
    parser.add_argument("--data", type=Path, default=REPO / "data_cache" / "bench_av_digits")
    parser.add_argument("--timeline", action="store_true",
                        help="platform mode: where the last trial's start-up time went")
    args = parser.parse_args()
    spec = absolute(bench_spec(args.trials, args.data))
    prepare_data(spec)  # built once, outside the timings
    modes = ("baseline", "platform") if args.mode == "both" else (args.mode,)
    results = {}
    for mode in modes:
        load = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as folder:
            if mode == "baseline":
                results[mode] = run_baseline(spec, Path(folder))
            else:
                results[mode] = run_platform(spec, Path(folder), args.timeline)
        results[mode] = (results[mode], load)
    print(f"\nper-trial overhead, trial start -> first training step ({os.cpu_count()} CPUs)")
    for mode, (seconds, load) in results.items():
        steady = statistics.mean(seconds[1:]) if len(seconds) > 1 else float("nan")
        each = " ".join(f"{s:.1f}" for s in seconds)
        print(f"  {mode:<9} first {seconds[0]:5.1f} s, then mean {steady:5.1f} s  [{each}] (load {load:.1f})")


if __name__ == "__main__":
    main()
