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
