"""Every MLflow write of a study's trials goes through a durable queue, so MLflow never stops training.

The driver's Tune callback only appends entries to a `journal.Journal` on the study's storage (a small file
write) and returns; a background thread sends them to MLflow in order, retrying with backoff while the server
is down, and removes each once MLflow has it. Entries left at exit (the server still down, the driver killed)
are sent by the next `--resume` or by `avmae mlflow flush STUDY_DIR`.

Entries name trials, not MLflow runs: a trial's run is found by its tags or created when its first entry is
sent (`tracking.start_trial_run` finds before it creates), so a trial starts while the server is down and its
run appears once the server is back. Sending an entry twice (a crash between MLflow's answer and the entry's
removal) changes nothing: runs are found again, tags and statuses are set again, an epoch already in the run
is skipped (`tracking.log_epochs`), and a metric sent again with its timestamp is stored once.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from avmae.platform import tracking as T
from avmae.platform.journal import Journal
from avmae.platform.uris import redact

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

JOURNAL_DIR = "mlflow_journal"  # in the study's folder
FLUSH_WAIT_S = 120.0  # at the end of a sweep, how long the queue may take to drain
BACKOFF_S = (1.0, 60.0)  # first and longest wait between tries while MLflow fails
# MLflow's answers that no retry changes (the request itself is wrong): the entry is dropped, and said so.
PERMANENT_ERRORS = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
                    "BAD_REQUEST", "INVALID_STATE"}


def trial_run_entry(study_run: str, trial_id: str, cell: Mapping[str, Any], params: Mapping[str, Any],
                    repeat: int) -> dict[str, Any]:
    """Find or create the trial's run under the study run (and reopen it: a resumed trial runs again)."""
    return {"op": "trial_run", "study_run": study_run, "trial": trial_id, "cell": dict(cell),
            "params": dict(params), "repeat": repeat}


def epochs_entry(study_run: str, trial_id: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Log the epoch records (`EpochReport.record`) the trial's run does not hold yet."""
    return {"op": "epochs", "study_run": study_run, "trial": trial_id, "records": records}


def tags_entry(study_run: str, trial_id: str, tags: Mapping[str, str]) -> dict[str, Any]:
    return {"op": "tags", "study_run": study_run, "trial": trial_id, "tags": dict(tags)}


def end_entry(
    study_run: str, trial_id: str, status: T.TrialStatus, tags: Mapping[str, str]
) -> dict[str, Any]:
    """Set `tags`, then close the trial's run with `status`, as of now."""
    return {"op": "end", "study_run": study_run, "trial": trial_id, "status": status.value,
            "tags": dict(tags), "time_ms": int(time.time() * 1000)}


class Writer:
    """Sends entries to MLflow, remembering each trial's run and the epochs it holds."""

    def __init__(self, client: MlflowClient) -> None:
        self.client = client
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._epochs: dict[str, set[int]] = {}  # run id -> epochs it holds

    def apply(self, entry: dict[str, Any]) -> None:
        op = entry["op"]
        if op == "trial_run":
            self._runs[entry["trial"]] = T.start_trial_run(
                self.client, entry["study_run"], entry["trial"], entry["cell"], entry["params"],
                repeat=entry["repeat"])
            return
        run = self.run_id(entry["study_run"], entry["trial"])
        if op == "epochs":
            if run not in self._epochs:
                self._epochs[run] = T.logged_epochs(self.client, run)
            T.log_epochs(self.client, run, entry["records"], self._epochs[run])
            return
        if entry["tags"]:
            from mlflow.entities import RunTag

            self.client.log_batch(run, tags=[RunTag(k, v) for k, v in entry["tags"].items()])
        if op == "end":
            T.end_trial_run(self.client, run, T.TrialStatus(entry["status"]), end_time_ms=entry["time_ms"])

    def run_id(self, study_run: str, trial_id: str) -> str:
        if trial_id not in self._runs:
            from mlflow.exceptions import MlflowException

            found = T.find_trial_run(self.client, study_run, trial_id)
            if found is None:
                raise MlflowException(f"trial {trial_id} has no run", error_code="RESOURCE_DOES_NOT_EXIST")
            self._runs[trial_id] = found
        return self._runs[trial_id]


def permanent(err: BaseException) -> bool:
    """Whether MLflow refused the request itself (a retry gets the same answer), not just failed to answer."""
    return getattr(err, "error_code", None) in PERMANENT_ERRORS


class MlflowQueue:
    """The journal at `journal_uri`, sent to MLflow at `tracking_uri` by a background thread: entries left by
    an earlier process first, then each `put`, in order."""

    def __init__(self, journal_uri: str, tracking_uri: str) -> None:
        from mlflow.tracking import MlflowClient

        self.journal = Journal(journal_uri)
        self.tracking_uri = tracking_uri
        self._writer = Writer(MlflowClient(tracking_uri))
        self._names = deque(self.journal.pending())
        self._changed = threading.Condition()
        self._closed = False
        threading.Thread(target=self._send, name="avmae-mlflow-queue", daemon=True).start()

    def put(self, entry: dict[str, Any]) -> None:
        """Queue `entry` durably; returns at once, whatever MLflow does."""
        name = self.journal.put(entry)
        with self._changed:
            self._names.append(name)
            self._changed.notify_all()

    def wait(self, timeout: float) -> int:
        """Wait up to `timeout` seconds for the queue to drain; the number of entries still queued."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._names and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)
            return len(self._names)

    def close(self, timeout: float) -> int:
        """`wait`, then stop sending (what is left stays in the journal); the number of entries left."""
        left = self.wait(timeout)
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        return left

    def _send(self) -> None:
        delay, down_since = BACKOFF_S[0], None
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._names or self._closed)
                if self._closed:
                    return
                name = self._names[0]
            try:
                entry = self.journal.read(name)
                try:
                    self._writer.apply(entry)
                except Exception as err:
                    if not permanent(err):
                        raise
                    self._say(f"MLflow refused a {entry['op']} write of trial {entry.get('trial')} "
                              f"({_first_line(err)}); it is dropped")
                self.journal.done(name)
            except Exception as err:  # noqa: BLE001 (MLflow's, the network's, the storage's: all retried)
                if down_since is None:
                    down_since = time.monotonic()
                    self._say(f"MLflow at {redact(self.tracking_uri)} failed ({_first_line(err)}); training "
                              f"goes on, its writes wait in {self.journal.uri} and are retried")
                with self._changed:
                    self._changed.wait_for(lambda: self._closed, timeout=delay)
                delay = min(2 * delay, BACKOFF_S[1])
                continue
            if down_since is not None:
                self._say(f"MLflow answers again after {time.monotonic() - down_since:.0f} s; sending the "
                          f"{len(self._names) - 1} writes queued behind")
                delay, down_since = BACKOFF_S[0], None
            with self._changed:
                self._names.popleft()
                self._changed.notify_all()

    @staticmethod
    def _say(line: str) -> None:
        print(f"warning: {line}", file=sys.stderr, flush=True)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]
