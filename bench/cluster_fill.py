"""How full a study keeps a cluster: the real runner (`study.run_study`, Ray Tune + Train, tiny AV-MAE trials
on AV-Digits) on a simulated cluster, every cell in one experiment against the cells one after another.

The cluster is a local Ray runtime (`ray start --head`) declaring `--slots` logical CPUs: each trial takes
one slot (one Train worker of 1 CPU), whatever the machine's real cores. A study shaped like
`fusion_ablation` (`--cells` cells x `--trials` trials, ASHA on, Optuna on the LR) runs twice on it:
  concurrent   one `run_study` over every cell (the platform's design);
  sequential   one `run_study` per cell, one after another (the design it replaced: one Tuner per cell).
Slot utilisation = the trials' busy slot-seconds / (slots x wall time from the first trial's start to the
last trial's end), from the trials' start and end times seen by a Tune callback.

    .venv/bin/python bench/cluster_fill.py [--cells 12] [--trials 3] [--slots 6] [--concurrent 6]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from avmae.platform.study.prepare import absolute, prepare_data
from avmae.platform.study.record import Launch
from avmae.platform.study.runner import run_study
from avmae.platform.study.runtime import free_port
from avmae.platform.study.spec import StudySpec, parse_spec
from ray import tune

BIN = Path(sys.executable).parent  # the venv's `ray`

FUSIONS, DECODERS, OBJECTIVES = ("early", "late", "shared", "mid"), ("separate", "shared", "joint"), (
    "joint", "inpainting")


def bench_spec(name: str, data: Path, cells: int, trials: int, concurrent: int) -> StudySpec:
    """`cells` distinct fusion x decoder x objective cells (none the same network), tiny 2-epoch trials."""
    combos = [(f, d, o) for f in FUSIONS for d in DECODERS for o in OBJECTIVES
              if not (d == "joint" and o == "inpainting")][:cells]
    fusions, decoders, objectives = (sorted({c[i] for c in combos}) for i in range(3))
    exclude = [{"fusion": f, "decoder": d, "objective": o}
               for f in fusions for d in decoders for o in objectives if (f, d, o) not in combos]
    return parse_spec({
        "name": name,
        "data": {"kind": "av-digits", "root": str(data), "cache_dir": str(data / "cache"),
                 "av_digits": {"clips_per_digit": 4}},
        "model": {"preset": "tiny"},
        "axes": {"fusion": fusions, "decoder": decoders, "objective": objectives},
        "exclude": exclude,
        "search": {"lr": {"dist": "loguniform", "low": 1e-4, "high": 1e-2}},
        "trials_per_cell": trials,
        "optuna": {"startup_trials": 1},
        "train": {"epochs": 2, "steps_per_epoch": 2, "batch_size": 8},
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
        "resources": {"workers": 1, "cpus_per_worker": 1, "max_concurrent_trials": concurrent},
        "evaluation": {"probe": [], "baselines": False, "log_models": "none"},
    })


class Busy(tune.Callback):
    """When each trial started and ended (wall clock)."""

    def __init__(self, spans: dict[str, list[float]]) -> None:
        self.spans = spans

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.spans[trial.trial_id] = [time.time(), time.time()]

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.spans[trial.trial_id][1] = time.time()

    on_trial_error = on_trial_complete


def utilisation(spans: dict[str, list[float]], slots: int) -> tuple[float, float]:
    """(busy slot-seconds / (slots x wall), wall seconds from the first start to the last end)."""
    wall = max(end for _, end in spans.values()) - min(start for start, _ in spans.values())
    busy = sum(end - start for start, end in spans.values())
    return busy / (slots * wall), wall


def run(spec: StudySpec, folder: Path, address: str, per_cell: bool) -> dict[str, list[float]]:
    spans: dict[str, list[float]] = {}
    studies = [spec] if not per_cell else [
        spec.model_copy(update={"name": f"{spec.name}-{i}", "exclude": [],
                                "axes": {axis: [value] for axis, value in cell.items()}})
        for i, cell in enumerate(spec.cells())]
    for study in studies:
        launch = Launch(study.name, str(folder / "runs" / study.name), f"sqlite:///{folder / 'mlflow.db'}",
                        address=address)
        run_study(study, None, launch, callbacks=(Busy(spans),))
    return spans


def start_cluster(slots: int, folder: Path) -> tuple[subprocess.Popen, str]:
    """A private one-node Ray cluster declaring `slots` CPUs, in its own process group (stopped alone)."""
    port, dashboard = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled",
           "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard}"}  # Train's cleaner: this cluster's API
    ports = [arg for name in ("node-manager-port", "object-manager-port", "ray-client-server-port",
                              "dashboard-agent-listen-port", "metrics-export-port", "runtime-env-agent-port")
             for arg in (f"--{name}", str(free_port()))]
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--port", str(port), "--num-cpus", str(slots),
         "--temp-dir", str(folder / "ray"), "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
         "--dashboard-port", str(dashboard), *ports],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while subprocess.run([str(BIN / "ray"), "status", "--address", address], env=env,
                         capture_output=True).returncode:
        if head.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the simulated cluster did not start")
        time.sleep(1)
    os.environ.update({"RAY_AUTH_MODE": "disabled"})
    return head, address


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=12)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--slots", type=int, default=6, help="logical CPUs the simulated cluster declares")
    parser.add_argument("--concurrent", type=int, default=6, help="the study's max_concurrent_trials")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fill-", dir="/tmp") as tmp:
        folder = Path(tmp)
        head, address = start_cluster(args.slots, folder)
        try:
            spec = bench_spec("fill", folder / "av_digits", args.cells, args.trials, args.concurrent)
            spec = absolute(spec)
            prepare_data(spec)
            for design, per_cell in (("concurrent", False), ("sequential", True)):
                began = time.monotonic()
                spans = run(spec, folder / design, address, per_cell)
                share, wall = utilisation(spans, args.slots)
                rows.append((design, len(spans), share, wall, time.monotonic() - began))
                print(f"{design}: {len(spans)} trials, slot use {share:.1%}, wall {wall:.0f} s", flush=True)
        finally:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(60)
    print(f"\n{args.cells} cells x {args.trials} trials, {args.slots} slots, max_concurrent_trials "
          f"{args.concurrent}, ASHA on")
    print(f"{'design':<11} {'trials':>6} {'slot use':>8} {'wall s':>7} {'total s':>7}")
    for design, n, share, wall, total in rows:
        print(f"{design:<11} {n:>6} {share:>8.1%} {wall:>7.0f} {total:>7.0f}")
    print(f"concurrent / sequential wall time: {rows[0][3] / rows[1][3]:.2f}")


if __name__ == "__main__":
    main()
