"""A study under load, measured: one soak study of many tiny trials through a real `mlflow server
--workers 1` on PostgreSQL, with MLflow taken away for a while in the middle.

The study (`study.run_study`, in this process, so the driver's RSS is this process's): 2 cells (objective
joint / inpainting) x an LR grid, `--trials` trials in all, tiny preset, `--epochs` 1-step epochs, a 40-clip
AV-Digits build, no probe, FIFO, `--concurrent` trials at a time (actors reused). The MLflow server runs on a
fresh PostgreSQL database `soak_<time>` on 127.0.0.1:5432 (trust auth), dropped at the end unless --keep.
Once `--outage-after` of the trials have ended, the server is stopped for `--outage` seconds and started
again on the same port (held by this process meanwhile).

Recorded every `--every` seconds, to `--out` (JSON) and printed as a table: the driver's RSS, the journal's
backlog (pending entries in `<storage>/<study>/mlflow_journal`), the entries written so far, trials ended,
the 1-minute load average. Then from MLflow and its database:
  - the backlog's peak and its drain rate after the server came back (entries sent per second, from the
    restart until the backlog is back to its level before the outage);
  - per-trial overhead: the study's wall time / trials, and each trial run's MLflow wall time (start to
    end) against its own training time (`time/train_s`);
  - that every trial is recorded once: N trial runs, each FINISHED, `train/loss` and `val/loss` at steps
    1..E exactly once each, none RUNNING, the study run FINISHED.
The MLflow client gives up on a refused request after one retry (as tests/test_faults.py), so the queue, not
the client's retries, rides out the outage. Nothing leaves 127.0.0.1.

    .venv/bin/python bench/soak.py --trials 20 --outage 20          # a small try first
    .venv/bin/python bench/soak.py --trials 300 --outage 60 --out soak.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from avmae.platform.tracking.local_server import LocalMlflowServer

REPO = Path(__file__).resolve().parents[1]
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test"}  # trust auth
NAME = "soak"
CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
MAX_HOURS = 3.0  # every wait and loop here ends by then
FAST_S = 0.5  # seconds between samples from the outage until the backlog has drained


# ---------------------------------------------------------------- PostgreSQL and the MLflow server

def pg_connect(dbname: str = PG["dbname"]) -> Any:
    import psycopg2

    conn = psycopg2.connect(connect_timeout=5, **{**PG, "dbname": dbname})
    conn.autocommit = True
    return conn


def create_database() -> str:
    """A fresh database `soak_<time>`; its name."""
    name = f"soak_{time.strftime('%Y%m%d_%H%M%S')}"
    with closing(pg_connect()) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    return name


def drop_database(name: str) -> None:
    with closing(pg_connect()) as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# ---------------------------------------------------------------- the study

def bench_spec(trials: int, epochs: int, data: Path, concurrent: int = 2) -> Any:
    """2 cells x an LR grid of ceil(trials / 2) points: tiny, 1-step epochs, no probe, FIFO, `concurrent`
    trials at a time (one core each)."""
    from avmae.platform.study.spec import parse_spec

    points = math.ceil(trials / 2)
    return parse_spec({
        "name": NAME,
        "data": {"kind": "av-digits", "root": str(data), "cache_dir": str(data / "cache"),
                 "val_split": "val", "av_digits": {"clips_per_digit": 4}},
        "model": {"preset": "tiny"},
        "axes": {"objective": ["joint", "inpainting"]},
        "search": {"lr": {"dist": "grid", "values": [1e-4 * (1 + i) for i in range(points)]}},
        "train": {"epochs": epochs, "steps_per_epoch": 1, "batch_size": 4, "log_every_steps": 1},
        "metric": "val/loss",
        "scheduler": {"name": "fifo"},
        "resources": {"workers": 1, "cpus_per_worker": 1, "max_concurrent_trials": concurrent},
        "evaluation": {"probe": [], "baselines": False, "log_models": "none"},
    })


def rss_mb() -> float:
    """This process's resident set size (VmRSS), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def backlog(journal: Path) -> int:
    """Entries pending in the journal folder (`<sequence>.json`)."""
    try:
        return sum(1 for e in os.scandir(journal) if e.name.endswith(".json") and e.name[0].isdigit())
    except FileNotFoundError:
        return 0


def entries_written(journal: Path) -> int | None:
    """How many entries this process's queue of `journal` has written (its journal's next number)."""
    from avmae.platform.tracking import queue as Q
    from avmae.platform.tracking.journal import Journal

    found = Q._OPEN.get(Journal.key(str(journal)))
    return None if found is None else found.journal._next


class Ended:
    """A Tune callback counting the trials that ended (made a `tune.Callback` in `ended_callback`)."""

    def __init__(self) -> None:
        self.count = 0


def ended_callback(counter: Ended) -> Any:
    from ray import tune

    class Counter(tune.Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            counter.count += 1

        on_trial_error = on_trial_complete

    return Counter()


class Monitor:
    """Samples the driver every `every` s; takes the server away once `outage_after` trials ended."""

    def __init__(self, journal: Path, server: LocalMlflowServer, ended: Ended, every: float,
                 outage_after: int, outage_s: float) -> None:
        self.journal, self.server, self.ended, self.every = journal, server, ended, every
        self.outage_after, self.outage_s = outage_after, outage_s
        self.began = time.time()
        self.samples: list[dict[str, Any]] = []
        self.outage: dict[str, float] = {}
        self.stop = threading.Event()

    def sample(self) -> None:
        self.samples.append({"t": round(time.time() - self.began, 1), "rss_mb": round(rss_mb(), 1),
                             "backlog": backlog(self.journal), "written": entries_written(self.journal),
                             "ended": self.ended.count, "load1": os.getloadavg()[0]})

    def run(self) -> None:
        deadline = time.monotonic() + MAX_HOURS * 3600
        while not self.stop.is_set() and time.monotonic() < deadline:
            self.sample()
            if not self.outage and self.ended.count >= self.outage_after:
                threading.Thread(target=self.take_down, daemon=True).start()
                self.outage["pending"] = 1
            self.stop.wait(FAST_S if self.draining() else self.every)
        self.sample()

    def draining(self) -> bool:
        """From the outage until the backlog is back to its level before it (or 10 min after the restart):
        sampled every FAST_S, for the drain rate."""
        if "down_at" not in self.outage:
            return False
        if "healthy_at" not in self.outage:
            return True
        before = max((s["backlog"] for s in self.samples if s["t"] < self.outage["down_at"]), default=0)
        last = self.samples[-1]
        return last["backlog"] > before + 2 and last["t"] - self.outage["healthy_at"] < 600

    def take_down(self) -> None:
        """Stop the server, wait `outage_s`, start it again on the same port."""
        self.outage["down_at"] = time.time() - self.began
        self.server.stop()
        self.stop.wait(self.outage_s)
        self.outage["up_at"] = time.time() - self.began
        self.outage["restart_s"] = self.server.start()
        self.outage["healthy_at"] = time.time() - self.began


def run_soak(spec: Any, folder: Path, server: LocalMlflowServer, args: argparse.Namespace
             ) -> tuple[Monitor, float]:
    """The study, sampled by a `Monitor` thread; (the monitor, the study's wall seconds)."""
    from avmae.platform.study.record import Launch
    from avmae.platform.study.runner import run_study
    from avmae.platform.tracking.queue import JOURNAL_DIR

    storage = folder / "runs" / NAME
    ended = Ended()
    outage_after = max(1, round(args.outage_after * args.trials))
    monitor = Monitor(storage / JOURNAL_DIR, server, ended, args.every, outage_after, args.outage)
    thread = threading.Thread(target=monitor.run, name="soak-monitor", daemon=True)
    thread.start()
    began = time.monotonic()
    try:
        run_study(spec, None, Launch(NAME, str(storage), server.url), callbacks=(ended_callback(ended),))
    finally:
        wall = time.monotonic() - began
        monitor.stop.set()
        thread.join(timeout=60)
    return monitor, wall


# ---------------------------------------------------------------- what MLflow holds

def query(database: str, sql: str, *params: Any) -> list[tuple]:
    with closing(pg_connect(database)) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def trial_runs(database: str, experiment: str) -> list[dict[str, Any]]:
    """Every run of the study's experiment: id, status, start/end (ms) and its avmae role and status tags."""
    rows = query(database, """
        SELECT r.run_uuid, r.status, r.start_time, r.end_time,
               max(CASE WHEN t.key = 'avmae.role' THEN t.value END),
               max(CASE WHEN t.key = 'avmae.status' THEN t.value END)
        FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id
        LEFT JOIN tags t ON t.run_uuid = r.run_uuid
        WHERE e.name = %s GROUP BY r.run_uuid, r.status, r.start_time, r.end_time""", experiment)
    keys = ("run", "status", "start_ms", "end_ms", "role", "avmae_status")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def metric_steps(database: str, runs: list[str], key: str) -> dict[str, list[int]]:
    """Each run's steps of metric `key`, one entry per stored value (a duplicate step shows twice)."""
    rows = query(database, "SELECT run_uuid, step FROM metrics WHERE key = %s AND run_uuid = ANY(%s)",
                 key, runs)
    steps: dict[str, list[int]] = {run: [] for run in runs}
    for run, step in rows:
        steps[run].append(int(step))
    return steps


def train_seconds(database: str, runs: list[str]) -> dict[str, float]:
    rows = query(database, "SELECT run_uuid, sum(value) FROM metrics WHERE key = 'time/train_s' "
                 "AND run_uuid = ANY(%s) GROUP BY run_uuid", runs)
    return {run: float(total) for run, total in rows}


def check_records(database: str, trials: int, epochs: int) -> dict[str, Any]:
    """Whether every trial is recorded once (see the module's docstring), with what differs."""
    runs = trial_runs(database, NAME)
    trial = [r for r in runs if r["role"] == "trial"]
    study = [r for r in runs if r["role"] == "study"]
    ids = [r["run"] for r in trial]
    expected = list(range(1, epochs + 1))
    bad_steps = {key: {run: sorted(steps) for run, steps in metric_steps(database, ids, key).items()
                       if sorted(steps) != expected} for key in ("train/loss", "val/loss")}
    return {
        "trial_runs": len(trial), "expected": trials,
        "finished": sum(r["status"] == "FINISHED" and r["avmae_status"] == "finished" for r in trial),
        "running": sum(r["status"] == "RUNNING" for r in runs),
        "study_status": [r["status"] for r in study],
        "steps_wrong": {key: len(bad) for key, bad in bad_steps.items()},
        "steps_wrong_examples": {key: dict(list(bad.items())[:3]) for key, bad in bad_steps.items()},
        "runs": trial,
    }


def records_ok(records: dict[str, Any]) -> bool:
    return (records["trial_runs"] == records["expected"] == records["finished"] and records["running"] == 0
            and records["study_status"] == ["FINISHED"] and not any(records["steps_wrong"].values()))


# ---------------------------------------------------------------- figures

def drain(monitor: Monitor) -> dict[str, Any]:
    """The backlog's peak; once the server is healthy again, how long the queue took to try again (its
    backoff) and the entries it then sent per second until the backlog was back to its level before the
    outage (sent = written - pending)."""
    samples, outage = monitor.samples, monitor.outage
    peak = max(samples, key=lambda s: s["backlog"], default={"backlog": 0, "t": 0})
    result: dict[str, Any] = {"backlog_peak": peak["backlog"], "backlog_peak_t": peak["t"], "outage": outage}
    if "healthy_at" not in outage:
        return result
    settled = max([s["backlog"] for s in samples if s["t"] < outage["down_at"]] or [0]) + 2
    after = [s for s in samples if s["t"] >= outage["healthy_at"] and s["written"] is not None]
    start = next((a for a, b in zip(after, after[1:], strict=False) if _sent(b) > _sent(a)), None)
    done = next((s for s in after if start and s["t"] > start["t"] and s["backlog"] <= settled), None)
    result.update(backlog_before_max=settled - 2, drained=done is not None)
    if start is not None and done is not None:
        sent, seconds = _sent(done) - _sent(start), done["t"] - start["t"]
        result.update(resumed_after_healthy_s=round(start["t"] - outage["healthy_at"], 1),
                      drained_at=done["t"], drain_s=round(seconds, 1), drain_sent=sent,
                      drain_rate=round(sent / seconds, 1))
    return result


def _sent(sample: dict[str, Any]) -> int:
    return sample["written"] - sample["backlog"]


def overheads(records: dict[str, Any], database: str, wall: float, trials: int) -> dict[str, Any]:
    """Wall time per trial, and each run's MLflow wall (start to end) against its own training time."""
    runs = [r for r in records["runs"] if r["end_ms"] and r["start_ms"]]
    own = train_seconds(database, [r["run"] for r in runs])
    spans = [(r["end_ms"] - r["start_ms"]) / 1000 for r in runs]
    trained = [own.get(r["run"], math.nan) for r in runs]
    gaps = [s - t for s, t in zip(spans, trained, strict=True) if not math.isnan(t)]
    return {"wall_s": round(wall, 1), "wall_per_trial_s": round(wall / trials, 2),
            "mlflow_span_median_s": _median(spans),
            "mlflow_span_max_s": round(max(spans, default=math.nan), 1),
            "mlflow_span_min_s": round(min(spans, default=math.nan), 1),
            "negative_spans": sum(s < 0 for s in spans),
            "train_s_median": _median(trained), "span_minus_train_median_s": _median(gaps)}


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def _median(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return round(statistics.median(finite), 2) if finite else math.nan


def rss_figures(samples: list[dict[str, Any]]) -> dict[str, float]:
    rss = [s["rss_mb"] for s in samples]
    tail = rss[len(rss) * 3 // 4:] or rss
    return {"rss_start_mb": rss[0], "rss_peak_mb": max(rss), "rss_end_mb": rss[-1],
            "rss_last_quarter_mean_mb": round(statistics.mean(tail), 1),
            "load1_mean": round(statistics.mean(s["load1"] for s in samples), 2),
            "load1_max": round(max(s["load1"] for s in samples), 2)}


def print_report(report: dict[str, Any], rows: int = 30) -> None:
    """The samples (thinned to about `rows`), then the figures."""
    samples = report["samples"]
    step = max(1, len(samples) // rows)
    print(f"\n{'t s':>7} {'RSS MB':>7} {'backlog':>7} {'written':>7} {'ended':>5} {'load1':>5}")
    for s in samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else []):
        print(f"{s['t']:>7.0f} {s['rss_mb']:>7.0f} {s['backlog']:>7} {_text(s['written']):>7} "
              f"{s['ended']:>5} {s['load1']:>5.2f}")
    print(f"\noutage: {json.dumps(report['drain']['outage'])}")
    for section in ("rss", "drain", "overhead"):
        for key, value in report[section].items():
            if key != "outage":
                print(f"  {key:<28} {value}")
    records = report["records"]
    print(f"  {'records':<28} {records['finished']}/{records['expected']} FINISHED, {records['trial_runs']} "
          f"trial runs, {records['running']} RUNNING, study {records['study_status']}, steps wrong "
          f"{records['steps_wrong']} -> {'OK' if report['records_ok'] else 'NOT OK'}")


# ---------------------------------------------------------------- main

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=300, help="trials in the study (rounded up to even)")
    parser.add_argument("--epochs", type=int, default=1, choices=(1, 2), help="1-step epochs per trial")
    parser.add_argument("--concurrent", type=int, default=2,
                        help="trials at a time, a core each (up to the machine's cores)")
    parser.add_argument("--outage", type=float, default=60.0, help="seconds the MLflow server is down")
    parser.add_argument("--outage-after", type=float, default=0.4,
                        help="the outage starts once this share of the trials has ended")
    parser.add_argument("--every", type=float, default=3.0, help="seconds between samples")
    parser.add_argument("--data", type=Path, default=REPO / "data_cache" / "soak_av_digits",
                        help="the AV-Digits build (40 clips; built on first use)")
    parser.add_argument("--out", type=Path, default=Path("soak.json"), help="the JSON report")
    parser.add_argument("--keep", action="store_true", help="keep the database and the study's folder")
    args = parser.parse_args()
    args.trials += args.trials % 2
    return args


def with_database(args: argparse.Namespace, body: Callable[[str, Path], dict[str, Any]]) -> dict[str, Any]:
    """`body(database, folder)` with a fresh database and folder, dropped afterwards unless --keep."""
    database = create_database()
    folder = Path(tempfile.mkdtemp(prefix="soak-", dir="/tmp"))
    try:
        return body(database, folder)
    finally:
        if args.keep:
            print(f"kept: database {database}, folder {folder}", flush=True)
        else:
            import shutil

            drop_database(database)
            shutil.rmtree(folder, ignore_errors=True)


def soak(args: argparse.Namespace, database: str, folder: Path) -> dict[str, Any]:
    from avmae.platform.study.prepare import absolute, prepare_data
    from avmae.platform.study.runtime import reserved_port

    spec = absolute(bench_spec(args.trials, args.epochs, args.data, args.concurrent))
    prepare_data(spec)  # built once, outside the timings
    os.environ.update(CLIENT_ENV)
    with reserved_port() as port:
        backend = f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{database}"
        server = LocalMlflowServer(folder, port, backend)
        server.start()
        try:
            monitor, wall = run_soak(spec, folder, server, args)
        finally:
            server.stop()
    records = check_records(database, args.trials, args.epochs)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{os.uname().nodename}, "
              f"{os.cpu_count()} CPUs", "command": " ".join(sys.argv), "trials": args.trials,
              "epochs": args.epochs, "outage_s": args.outage, "database": database,
              "rss": rss_figures(monitor.samples), "drain": drain(monitor),
              "overhead": overheads(records, database, wall, args.trials),
              "records_ok": records_ok(records), "samples": monitor.samples}
    report["records"] = {k: v for k, v in records.items() if k != "runs"}
    return report


def main() -> None:
    args = parse_args()
    report = with_database(args, lambda database, folder: soak(args, database, folder))
    args.out.write_text(json.dumps(report, indent=1, default=str))
    print_report(report)
    print(f"\nreport: {args.out}")
    sys.exit(0 if report["records_ok"] else 1)


if __name__ == "__main__":
    main()
