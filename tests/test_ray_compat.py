"""The Ray internals the platform leans on (platform/train/ray_compat.py), and the alpha APIs it relies on,
are still where it expects them: a Ray upgrade that moves one fails here, by name, instead of silently in a
sweep."""

from __future__ import annotations

import importlib
import inspect
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import ray.train.torch
from avmae.platform.train import ray_compat


def test_the_private_modules_and_names_still_exist():
    assert Path(ray_compat.train_context_logger()).is_file()
    module, name = ray_compat.DATASETS_CALLBACK
    assert isinstance(getattr(importlib.import_module(module), name), type)
    importlib.import_module(ray_compat.CLEANER_LOGGER)  # the cleaner's logger is named after its module
    notice = importlib.import_module(ray_compat.AUTH_LOGGER)  # so is the token-auth notice's
    assert ray_compat.TOKEN_AUTH_NOTICE in inspect.getsource(notice)
    assert hasattr(ray.train.torch.TorchTrainer, "_create_default_callbacks")


def test_the_wait_for_a_registered_report_is_still_there():
    """`ray_worker.report` waits with Train's alpha `get_all_reported_checkpoints` in COMMITTED mode, which
    blocks until the controller has registered every report this worker made (tests/test_report_commit.py
    shows what it guards against)."""
    import inspect

    assert ray.train.CheckpointConsistencyMode("COMMITTED") is ray.train.CheckpointConsistencyMode.COMMITTED
    assert "consistency_mode" in inspect.signature(ray.train.get_all_reported_checkpoints).parameters


def test_our_trainer_drops_only_the_datasets_callback_and_pickles_by_reference():
    cls = ray_compat.TorchTrainer
    assert issubclass(cls, ray.train.torch.TorchTrainer)
    assert pickle.loads(pickle.dumps(cls)) is cls
    trainer = cls(lambda: None, scaling_config=ray.train.ScalingConfig(num_workers=1))
    stock = ray.train.torch.TorchTrainer(lambda: None, scaling_config=ray.train.ScalingConfig(num_workers=1))
    ours = {type(cb).__name__ for cb in trainer._create_default_callbacks()}
    theirs = {type(cb).__name__ for cb in stock._create_default_callbacks()}
    assert theirs - ours == {ray_compat.DATASETS_CALLBACK[1]}


def test_the_worker_setup_hook_imports_no_ray_train():
    """Every Ray worker process runs it (tests/test_platform_study.py checks what it filters): it must not
    import Ray Train or torch, seconds on 2 cores."""
    code = "import sys, avmae.platform.train.ray_logging as m; m.setup_worker(); print(sorted(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'ray.train" not in loaded and "'torch'" not in loaded


SIGTERM_IN_A_CALLBACK = """
import os, signal, sys, time, weakref
from ray._raylet import raise_sys_exit_with_custom_error_message
import avmae.platform.train.ray_logging as m

def ray_sigterm_handler(signum, frame):  # as Ray's worker main loop installs it
    raise_sys_exit_with_custom_error_message("The process receives a SIGTERM.", exit_code=1)

signal.signal(signal.SIGTERM, ray_sigterm_handler)
if sys.argv[1] == "hooked":
    m.setup_worker()

class Thing:
    pass

def collected(ref):  # the signal arrives while a weakref callback runs
    os.kill(os.getpid(), signal.SIGTERM)
    sum(range(1000))

thing = Thing()
ref = weakref.ref(thing, collected)
del thing
while sys.argv[1] == "hooked":  # only the signal sent again ends it (the test's timeout fails it otherwise)
    time.sleep(0.01)
print("ran on after SIGTERM")
"""


@pytest.mark.parametrize("hooked", [True, False])
def test_a_sigterm_inside_a_callback_still_ends_the_worker_quietly(hooked: bool):
    """Ray's worker answers SIGTERM with SystemExit; raised inside a weakref callback it is printed as an
    ignored exception (a traceback in the sweep's output) and the process runs on. The setup hook sends the
    signal again, so the worker exits with Ray's code and prints nothing."""
    arg = "hooked" if hooked else "stock"
    done = subprocess.run([sys.executable, "-c", SIGTERM_IN_A_CALLBACK, arg], capture_output=True, text=True,
                          timeout=60)
    if hooked:
        assert (done.returncode, done.stdout, done.stderr) == (1, "", "")
    else:  # the failure the hook exists for: if Ray stops raising there, the hook can go
        assert "Exception ignored" in done.stderr and "ran on after SIGTERM" in done.stdout


def test_a_saved_search_state_can_be_reopened(tmp_path: Path):
    """The format `reopen_search` edits is Tune's own: the file SearchGenerator saves, the key it reads."""
    from ray.tune.search import Searcher, SearchGenerator

    assert ray_compat.SEARCH_STATE == SearchGenerator.CKPT_FILE_TMPL.format("*")

    class Nothing(Searcher):
        def suggest(self, trial_id: str) -> None:
            return None

        def save(self, checkpoint_path: str) -> None:
            Path(checkpoint_path).write_bytes(b"")

        def restore(self, checkpoint_path: str) -> None:
            pass

    generator = SearchGenerator(Nothing())
    generator.set_finished()
    generator.save_to_dir(str(tmp_path), session_str="2026")
    assert ray_compat.reopen_search(str(tmp_path)) and not ray_compat.reopen_search(str(tmp_path))
    restored = SearchGenerator(Nothing())
    restored.restore_from_dir(str(tmp_path))
    assert restored.get_state()["finished"] is False
    assert ray_compat.reopen_search(str(tmp_path), total_trials=12)  # more seeds: more trials to ask for
    restored.restore_from_dir(str(tmp_path))
    assert restored.total_samples == 12 and not restored.is_finished()
