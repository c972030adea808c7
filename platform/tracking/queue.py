"""Every MLflow write of a study after its run's creation goes through a durable queue, so MLflow never
stops training and an outage loses nothing; only the provenance artifacts and the trained encoders, which
need MLflow's answer at once, and the driver's heartbeat (`heartbeat`) go directly.

Writers (the trials' Tune callback, the study's driver) only append entries (`entries`) to a
`journal.Journal` on the study's storage (a small file write) and return; a background thread sends them to
MLflow in order, retrying with backoff while the server is down, and removes each once MLflow has it. Entries
left at exit (the server still down, the driver killed) are sent by the next `--resume` or by
`avmae mlflow flush STUDY_DIR`. A process has one queue per journal (`open_queue`), which its writers share.

Entries name trials, not MLflow runs: a trial's run is found by its tags or created when its first entry is
sent (`layout.start_trial_run` finds before it creates), so a trial starts while the server is down and its
run appears once the server is back. Sending an entry twice (a crash between MLflow's answer and the entry's
removal) changes nothing: runs are found again, tags and statuses are set again, an epoch already in the run
is skipped (`layout.log_epochs`), a metric sent again with its timestamp is stored once, and a dataset input
already logged is not logged again.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from avmae.platform.tracking import entries as E
from avmae.platform.tracking import layout as T
from avmae.platform.tracking.journal import Journal
from avmae.platform.tracking.uris import redact

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

JOURNAL_DIR = "mlflow_journal"  # in the study's folder
FLUSH_WAIT_S = 120.0  # at the end of a sweep, how long the queue may take to drain
BACKOFF_S = (1.0, 60.0)  # first and longest wait between tries while MLflow fails
# MLflow's answers that no retry changes (the request itself is wrong): the entry is dropped, and said so.
PERMANENT_ERRORS = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
                    "BAD_REQUEST", "INVALID_STATE"}


class Writer:
    """Sends entries to MLflow, remembering each trial's run and the epochs it holds."""

    def __init__(self, client: MlflowClient) -> None:
        self.client = client
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._epochs: dict[str, set[int]] = {}  # run id -> epochs it holds

    def apply(self, entry: E.Entry) -> None:
        client = self.client
        match entry:
            case E.TrialRun():
                self._runs[entry.trial] = T.start_trial_run(client, entry.study_run, entry.trial, entry.cell,
                                                            entry.params, repeat=entry.repeat,
                                                            role=entry.role, tags=entry.tags,
                                                            start_time_ms=entry.time_ms)
            case E.Epochs():
                run = self.run_id(entry.study_run, entry.trial)
                if run not in self._epochs:
                    self._epochs[run] = T.logged_epochs(client, run)
                T.log_epochs(client, run, entry.records, self._epochs[run])
            case E.Tags():
                self._tags(self.run_id(entry.study_run, entry.trial), entry.tags)
            case E.End():
                run = self.run_id(entry.study_run, entry.trial)
                self._tags(run, entry.tags)
                T.end_trial_run(client, run, entry.status, end_time_ms=entry.time_ms)
            case E.TrialDataset():
                T.log_dataset(client, self.run_id(entry.study_run, entry.trial), entry.name, entry.digest,
                              entry.source, entry.split, entry.profile)
            case E.StudyParams():
                T.log_params(client, entry.study_run, entry.params)
            case E.StudyMetrics():
                T.log_history(client, entry.study_run, [{"step": entry.step, **entry.metrics}], entry.time_ms)
            case E.StudyTags():
                self._tags(entry.study_run, entry.tags)
            case E.InterruptTrials():
                T.interrupt_trial_runs(client, entry.study_run, end_time_ms=entry.time_ms)
            case E.EndStudy():
                T.end_study_run(client, entry.study_run, entry.status, end_time_ms=entry.time_ms)

    def run_id(self, study_run: str, trial_id: str) -> str:
        if trial_id not in self._runs:
            from mlflow.exceptions import MlflowException

            found = T.find_trial_run(self.client, study_run, trial_id)
            if found is None:
                raise MlflowException(f"trial {trial_id} has no run", error_code="RESOURCE_DOES_NOT_EXIST")
            self._runs[trial_id] = found
        return self._runs[trial_id]

    def _tags(self, run: str, tags: dict[str, str]) -> None:
        if tags:
            from mlflow.entities import RunTag

            self.client.log_batch(run, tags=[RunTag(k, v) for k, v in tags.items()])


def permanent(err: BaseException) -> bool:
    """Whether MLflow refused the request itself (a retry gets the same answer), not just failed to answer."""
    return getattr(err, "error_code", None) in PERMANENT_ERRORS


_OPEN: dict[str, MlflowQueue] = {}  # journal folder (`Journal.key`) -> this process's queue of it
_OPEN_LOCK = threading.Lock()


def open_queue(journal_uri: str, tracking_uri: str) -> MlflowQueue:
    """This process's queue of the journal at `journal_uri`, started (sending to `tracking_uri`) by its first
    opener and shared by the others: one sender, and one numbering of entries, per journal folder however
    its URI is spelled. Each `open_queue` is paired with a `close`."""
    key = Journal.key(journal_uri)
    with _OPEN_LOCK:
        queue = _OPEN.get(key)
        if queue is None:
            queue = _OPEN[key] = MlflowQueue(journal_uri, tracking_uri)
        queue._holders += 1
        return queue


@contextmanager
def held_queue(journal_uri: str, tracking_uri: str, wait_s: float = FLUSH_WAIT_S) -> Iterator[MlflowQueue]:
    """`open_queue` for the block; at its end (however it ends) wait up to `wait_s` for MLflow to take what is
    queued, let go of the queue, and say what is left."""
    queue = open_queue(journal_uri, tracking_uri)
    try:
        yield queue
    finally:
        left = queue.wait(wait_s)
        queue.close(0)
        if left:
            warn_left(left, journal_uri, tracking_uri, wait_s)


def warn_left(left: int, journal_uri: str, tracking_uri: str, waited_s: float) -> None:
    """Say that `left` queued writes were not sent within `waited_s`, where they are, and how to send them."""
    study = journal_uri.rsplit("/", 1)[0]
    print(f"warning: MLflow at {redact(tracking_uri)} did not take {left} queued writes within "
          f"{waited_s:.0f} s. Nothing is lost: they are kept in {journal_uri}, and "
          f"`avmae mlflow flush {study}` (or the sweep's --resume) sends them.", flush=True)


class MlflowQueue:
    """The journal at `journal_uri`, sent to MLflow at `tracking_uri` by a background thread: entries left by
    an earlier process first, then each `put`, in order. Made by `open_queue`."""

    def __init__(self, journal_uri: str, tracking_uri: str) -> None:
        from mlflow.tracking import MlflowClient

        self.journal = Journal(journal_uri)
        self.tracking_uri = tracking_uri
        self._writer = Writer(MlflowClient(tracking_uri))
        self._names = deque(self.journal.pending())
        self._changed = threading.Condition()
        self._closed = False
        self._holders = 0  # the `open_queue`s not closed yet
        threading.Thread(target=self._send, name="avmae-mlflow-queue", daemon=True).start()

    def put(self, entry: E.Entry) -> None:
        """Queue `entry` durably; returns at once, whatever MLflow does."""
        name = self.journal.put(E.encode(entry))
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

    def close(self, timeout: float) -> int | None:
        """Let go of the queue. The last holder waits (`wait`) and stops the sender (what is left stays in
        the journal) and gets the number of entries left; the others get None at once."""
        with _OPEN_LOCK:
            self._holders -= 1
            if self._holders > 0:
                return None
            key = Journal.key(self.journal.uri)
            if _OPEN.get(key) is self:
                del _OPEN[key]
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
                try:
                    entry = E.decode(self.journal.read(name))
                except ValueError as err:  # not JSON, or not an entry this avmae knows (E.UnreadableEntry)
                    kept = self.journal.set_aside(name)
                    self._say(f"{self.journal.uri}/{name} is unreadable ({_first_line(err)}): it is kept as "
                              f"{kept}, unsent")
                else:
                    self._send_one(entry)
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

    def _send_one(self, entry: E.Entry) -> None:
        try:
            self._writer.apply(entry)
        except Exception as err:
            if not permanent(err):
                raise
            self._say(f"MLflow refused a {entry.op.value} write of {E.subject(entry)} ({_first_line(err)}); "
                      "it is dropped")

    @staticmethod
    def _say(line: str) -> None:
        print(f"warning: {line}", file=sys.stderr, flush=True)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]
