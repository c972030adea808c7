"""Set-up of every Ray worker process of a sweep (runtime_env `worker_process_setup_hook`).

When a trial's function returns, Tune ends the trial's process and with it the Train controller that process
owns; Train's placement-group cleaner then removes the run's placement group, as designed, and says so at
WARNING ("Detected that the Ray Train controller actor ... is dead"), once per trial, into the sweep's
progress output. That one routine message is dropped; the cleaner's other messages (a failed clean-up) stay.

When Ray ends a worker process it sends SIGTERM, which the worker's handler answers by raising `SystemExit`.
Should the signal land while the process runs a weakref or `__del__` callback (garbage collection), Python
cannot raise there: it prints "Exception ignored in ... Traceback ... SystemExit" into the sweep's output and
the process runs on until Ray kills it. `redeliver_swallowed_exit` sends the signal again instead, so the exit
happens a moment later in ordinary code, quietly.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from avmae.platform.train.ray_compat import CLEANER_LOGGER, ROUTINE_CLEANUP

RESEND_THREAD = "avmae-resend-sigterm"


def drop_routine_cleanup(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(ROUTINE_CLEANUP)


def redeliver_swallowed_exit(unraisable: Any) -> None:
    """`sys.unraisablehook`: a `SystemExit` raised where it could not propagate is SIGTERM's; it is sent
    again, once, 50 ms later, so the handler raises it in ordinary code. (Once, not until the process is
    gone: a signal during the exit itself would raise inside Ray's atexit shutdown.)"""
    if unraisable.exc_type is None or not issubclass(unraisable.exc_type, SystemExit):
        sys.__unraisablehook__(unraisable)
    elif not any(thread.name == RESEND_THREAD for thread in threading.enumerate()):
        threading.Thread(target=resend_sigterm, name=RESEND_THREAD, daemon=True).start()


def resend_sigterm() -> None:
    time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)


def setup_worker() -> None:
    logging.getLogger(CLEANER_LOGGER).addFilter(drop_routine_cleanup)
    sys.unraisablehook = redeliver_swallowed_exit
