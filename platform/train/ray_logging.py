"""Set-up of every Ray worker process of a sweep (runtime_env `worker_process_setup_hook`).

When a trial's function returns, Tune ends the trial's process and with it the Train controller that process
owns; Train's placement-group cleaner then removes the run's placement group, as designed, and says so at
WARNING ("Detected that the Ray Train controller actor ... is dead"), once per trial, into the sweep's
progress output. That one routine message is dropped; the cleaner's other messages (a failed clean-up) stay.
"""

from __future__ import annotations

import logging

from avmae.platform.train.ray_compat import CLEANER_LOGGER, ROUTINE_CLEANUP


def drop_routine_cleanup(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(ROUTINE_CLEANUP)


def setup_worker() -> None:
    logging.getLogger(CLEANER_LOGGER).addFilter(drop_routine_cleanup)
