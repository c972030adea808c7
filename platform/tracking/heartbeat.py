"""The study driver's heartbeat: while a study runs, its run's `layout.HEARTBEAT_TAG` is set to the time every
`layout.HEARTBEAT_INTERVAL_S`, so readers (`avmae status`, the dashboard, a person in the MLflow UI) tell a
study whose driver is gone from one still running (`layout.driver_lost`).

A beat goes to MLflow directly, not through the study's queue: it says the driver is alive now, which a beat
sent late does not, and a journal would gain a file per beat while MLflow is down. A beat MLflow does not
take is skipped; the next one follows an interval later.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType

from avmae.platform.tracking import layout as T


class Heartbeat:
    """`with Heartbeat(tracking_uri, study_run):` beats from a daemon thread until the block ends."""

    def __init__(self, tracking_uri: str, run_id: str, interval_s: float = T.HEARTBEAT_INTERVAL_S) -> None:
        self.tracking_uri, self.run_id, self.interval_s = tracking_uri, run_id, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="avmae-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stop.set()  # a beat still in flight ends on its own: the study's end is not held up

    def _beat(self) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.tracking_uri)
        while not self._stop.is_set():
            try:
                client.set_tag(self.run_id, T.HEARTBEAT_TAG, T.heartbeat_text(int(time.time() * 1000)))
            except Exception:  # noqa: BLE001, S110 (MLflow down: this beat is missed, the next one is tried)
                pass
            self._stop.wait(self.interval_s)
