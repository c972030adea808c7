"""Every use of Ray's private modules and undocumented behaviour, in one place (tests/test_ray_compat.py fails
loudly when a Ray upgrade moves one of them). Checked against ray 2.60.

- The Train V2 worker logs each report in full at INFO from a logger named after its module's *file*.
- The placement-group cleaner says at WARNING, once per trial, that the Train controller it watched is dead.
- The stock `TorchTrainer` starts a `DatasetManager` actor for every run, Ray Dataset or not.
- A worker process answers SIGTERM by raising `SystemExit` (printed as ignored inside a gc callback).
- Tune answers the first Ctrl-C of a `Tuner.fit()` by saving, stopping the trials and returning as if done.
- Tune marks an experiment's search finished when a stopper ends it, in the search state it saves
  (`search_gen_state-*.json`, a cloudpickled dict), so a restored experiment would start no new trial.

Importing this module imports nothing of Ray: every Ray worker process runs `ray_logging.setup_worker`, which
reads the names below, and importing Ray Train costs seconds. `TorchTrainer` is built on first use (PEP 562).
"""

from __future__ import annotations

import importlib
import os
import signal
import threading
from typing import Any

TRAIN_CONTEXT_MODULE = "ray.train.v2._internal.execution.context"
DATASETS_CALLBACK = ("ray.train.v2._internal.callbacks.datasets", "DatasetsCallback")
CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
ROUTINE_CLEANUP = "Detected that the Ray Train controller actor"  # the cleaner's routine message
AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
TOKEN_AUTH_NOTICE = "Token authentication is enabled for this Ray cluster"  # at WARNING, on every local start


def train_context_logger() -> str:
    """Name of the logger through which each Train worker logs every report in full at INFO."""
    return importlib.import_module(TRAIN_CONTEXT_MODULE).__file__


def _torch_trainer() -> type:
    import ray.train.torch

    datasets_callback = getattr(importlib.import_module(DATASETS_CALLBACK[0]), DATASETS_CALLBACK[1])

    class TorchTrainer(ray.train.torch.TorchTrainer):
        """Ray Train's `TorchTrainer`, less the Ray Data plumbing when the run has no Ray Dataset (ours read
        their clips with a torch DataLoader): the stock trainer starts a `DatasetManager` actor for every run
        regardless, one more Python process competing for the cores while the trial starts."""

        def _create_default_callbacks(self) -> list:
            callbacks = super()._create_default_callbacks()
            if self.datasets:
                return callbacks
            return [cb for cb in callbacks if not isinstance(cb, datasets_callback)]

    TorchTrainer.__module__, TorchTrainer.__qualname__ = __name__, "TorchTrainer"  # pickled by reference
    return TorchTrainer


def __getattr__(name: str) -> Any:
    if name == "TorchTrainer":
        globals()[name] = cls = _torch_trainer()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


SEARCH_STATE = "search_gen_state-*.json"  # SearchGenerator.CKPT_FILE_TMPL


def reopen_search(experiment: str, total_trials: int | None = None) -> bool:
    """Clear the `finished` mark of the newest saved search state of the Tune experiment at `experiment` (a
    path or URI), and raise its trial count to `total_trials`, so that a restored experiment asks its searcher
    for trials again (a study whose budget a stopper enforced, resumed with a larger one; a study resumed with
    more seeds). Returns whether the state changed."""
    import fnmatch

    import pyarrow.fs
    import ray.cloudpickle as cloudpickle

    fs, folder = pyarrow.fs.FileSystem.from_uri(experiment)
    files = [f.path for f in fs.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
             if fnmatch.fnmatch(f.base_name, SEARCH_STATE)]
    if not files:
        return False
    newest = max(files)
    with fs.open_input_stream(newest) as f:
        state = cloudpickle.loads(f.read())
    total = max(state["total_samples"], total_trials or 0)
    if not state.get("finished") and total == state["total_samples"]:
        return False
    state["finished"], state["total_samples"] = False, total
    with fs.open_output_stream(newest) as f:
        f.write(cloudpickle.dumps(state))
    return True


def interrupted_fit(handler: Any) -> bool:
    """Whether Ctrl-C ended the `Tuner.fit()` that just returned, which started with SIGINT `handler`.

    Tune answers the first Ctrl-C of a fit by saving the experiment, putting back the handler it found and
    stopping the trials; `fit()` then returns as usual. After a normal fit its own handler stays installed
    (and would swallow a later Ctrl-C), so it is put back here too.
    """
    if threading.current_thread() is not threading.main_thread():
        return False  # Tune catches signals only in the main thread
    if int(os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0")):
        return False  # nor when told not to: Ctrl-C then raises KeyboardInterrupt
    interrupted = signal.getsignal(signal.SIGINT) is handler
    signal.signal(signal.SIGINT, handler)
    return interrupted
