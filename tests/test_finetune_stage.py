"""The fine-tuning stage without Ray: the `finetune:` section's validation, the plan (`--dry-run`), the jobs a
study's best configurations make, and the worker core on a tiny AV-Digits (seeded, from the pretrained
weights, resumable)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from avmae import models
from avmae.dashboards.collect import FINETUNE_COLUMNS
from avmae.dashboards.finetune import best_lr_rows, kendall_tau, rank_agreement
from avmae.platform.study.finetune_stage import plan_jobs
from avmae.platform.study.plan import describe
from avmae.platform.study.spec import SpecError, StudySpec, load_spec, parse_spec
from avmae.platform.tracking import layout as T
from avmae.platform.train.finetune_worker import FinetuneJob, build_finetuner, mean_over_ranks, run_finetune
from avmae.platform.train.reports import BACKLOG
from avmae.platform.train.trainer import CHECKPOINT_FILE, CheckpointState
from conftest import REPO, TINY_STUDY

FINETUNE = {"recipe": "miniature", "settings": ["av", "audio"], "lrs": [0.1, 0.3], "epochs": 2,
            "batch_size": 8}


@pytest.mark.parametrize(("section", "message"), [
    ({"recipe": "imagenet"}, "finetune.recipe"),
    ({"overrides": {"dropout": 0.1}}, "overrides.dropout: not a FinetuneConfig field"),
    ({"overrides": {"lr": 0.1}}, "overrides.lr: set it with finetune"),
    ({"overrides": {"drop_path": 1.5}}, "drop_path must be in [0, 1)"),
    ({"settings": ["av", "av"]}, "settings repeats a setting"),
    ({"settings": ["speech"]}, "finetune.settings.0"),
    ({"lrs": [0.1, 0.1]}, "lrs must be distinct numbers > 0"),
    ({"batch_size": 9}, "finetune.batch_size: 9 does not split over 2 workers"),
    ({}, "finetune.overrides.fusion_layer: 16 is past the encoder's 4 layers"),
])
def test_a_bad_finetune_section_is_refused_naming_its_field(section: dict, message: str):
    with pytest.raises(SpecError, match=re.escape(message)):
        parse_spec({**TINY_STUDY, "resources": {"workers": 2}, "finetune": section})


def test_the_section_resolves_each_run_and_is_optional():
    assert parse_spec(TINY_STUDY).finetune is None  # the quickstart's way: no stage
    ft = parse_spec({**TINY_STUDY, "finetune": FINETUNE}).finetune
    recipe = ft.resolve("audio", 0.3)
    assert (recipe.modality, recipe.lr, recipe.epochs, recipe.batch_size, recipe.num_classes) == \
        ("audio", 0.3, 2, 8, 10)
    assert recipe.warmup_epochs < 2  # the recipe's warmup, scaled to the shorter run
    paper = {"overrides": {"fusion_layer": 2}}  # the tiny encoder has 4 layers
    assert parse_spec({**TINY_STUDY, "finetune": paper}).finetune.grid() == [0.8]  # vggsound's LR alone


def test_jobs_are_every_best_repeat_by_setting_and_lr_plus_the_scratch_row():
    spec = parse_spec({**TINY_STUDY, "finetune": FINETUNE})
    best = {"fusion=early,objective=joint": [(1, 1, "t1", "/c/1"), (0, 0, "t0", "/c/0")],
            "fusion=mid,objective=joint": [(0, 0, "t2", "/c/2")]}
    jobs = plan_jobs(spec, best, {"t0": "run0"})
    assert len(jobs) == 3 * 2 * 2 + 2 * 2 * 2  # (3 pretrained + 2 scratch seeds) x 2 settings x 2 LRs
    first = jobs[0]
    assert (first.repeat, first.checkpoint, first.pretrained_trial, first.pretrained_run) == \
        (0, "/c/0", "t0", "run0")
    scratch = [j for j in jobs if j.scratch]
    assert {j.cell for j in scratch} == {T.SCRATCH_CELL} and {j.seed for j in scratch} == {0, 1}
    assert scratch[0].model == spec.resolve_model(spec.cells()[0]).to_dict()
    assert not parse_spec({**TINY_STUDY, "finetune": {**FINETUNE, "scratch": False}}).finetune.scratch


def test_the_paper_file_prints_its_finetuning_plan():
    spec = load_spec(REPO / "experiments/paper/finetune_vggsound.yaml")
    text = describe(spec, "/s", "sqlite:///m.db", None, cluster_gpus=64)
    assert "Fine-tuning:" in text and "waves" in text.split("Fine-tuning:")[1]
    assert load_spec(REPO / "experiments/paper/finetune_audioset.yaml").finetune.resolve("av", 1.6).multilabel


def tiny_spec(data: Path) -> StudySpec:
    return parse_spec({**TINY_STUDY, "data": {"kind": "av-digits", "root": str(data)}, "axes": {},
                       "search": {}, "finetune": {**FINETUNE, "settings": ["av"], "lrs": [0.3]}})


def test_the_worker_core_is_seeded_starts_from_the_pretrained_weights_and_resumes(
        tmp_path: Path, tiny_av_digits: Path, one_torch_thread):
    spec = tiny_spec(tiny_av_digits)
    config = spec.resolve_model({})
    torch.manual_seed(7)
    pretrained = models.AVMAE(config)
    state = CheckpointState(config.to_dict(), pretrained.state_dict(), 1, 1, 0.0, {}, {})
    (tmp_path / CHECKPOINT_FILE).write_bytes(state.dumps())
    job = FinetuneJob("c", "av", 0, 3, 0.3, {}, str(tmp_path), "t0")
    sent: list[tuple[dict, bytes | None]] = []
    worker = build_finetuner(spec, job, 0, 1)
    key = "tokenizers.audio.proj.weight"  # the encoder's patch embedding, not the seed's init
    mapped = models.MBTClassifier.from_pretrained(pretrained.state_dict(), worker.recipe, config=config)
    assert torch.equal(worker.model.state_dict()[key], mapped.state_dict()[key])
    run_finetune(worker, lambda result, ckpt: sent.append((result, ckpt)), clock=lambda: 1.0)
    assert [r[T.EPOCH] for r, _ in sent] == [1.0, 2.0]
    assert all(0.0 <= r[T.FT_TEST_ACC] <= 1.0 and r[T.FT_TRAIN_LOSS] > 0 for r, _ in sent)
    assert [rec["epoch"] for rec in sent[-1][0][BACKLOG]] == [2]  # each epoch's record once, as it comes
    again: list[tuple[dict, bytes | None]] = []
    run_finetune(build_finetuner(spec, job, 0, 1), lambda r, c: again.append((r, c)), clock=lambda: 1.0)
    assert [r for r, _ in again] == [r for r, _ in sent]  # deterministic per seed
    resumed: list[tuple[dict, bytes | None]] = []
    restored = build_finetuner(spec, job, 0, 1, checkpoint=sent[0][1])
    run_finetune(restored, lambda r, c: resumed.append((r, c)), clock=lambda: 1.0)
    assert resumed[0][0][T.FT_TEST_ACC] == sent[1][0][T.FT_TEST_ACC]  # epoch 2 as an uninterrupted run's
    assert [rec["epoch"] for rec in resumed[0][0][BACKLOG]] == [1, 2]  # the checkpoint's epochs come along
    scratch = build_finetuner(spec, FinetuneJob(T.SCRATCH_CELL, "av", 0, 3, 0.3, config.to_dict()), 0, 1)
    assert not torch.equal(scratch.model.state_dict()[key], worker.model.state_dict()[key])


def test_kendall_tau_and_its_bootstrap_over_seeds():
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == 1.0 and kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert math.isnan(kendall_tau([1, 1], [1, 2])) and math.isnan(kendall_tau([1], [1]))
    probe = {"a": {0: 0.1, 1: 0.2}, "b": {0: 0.5, 1: 0.6}, "c": {0: 0.9, 1: 0.8}}
    agree = rank_agreement(probe, {c: {k: v + 1 for k, v in s.items()} for c, s in probe.items()})
    assert (agree.tau, agree.lo, agree.hi, agree.n_cells, agree.n_seeds) == (1.0, 1.0, 1.0, 3, 2)
    flipped = rank_agreement(probe, {c: {k: -v for k, v in s.items()} for c, s in probe.items()})
    assert flipped.tau == -1.0 and "τ = -1.00" in flipped.text()
    assert math.isnan(rank_agreement({"a": {0: 1.0}}, {"a": {0: 1.0}}).tau)  # one cell ranks nothing


def test_each_cell_is_judged_at_its_own_best_lr_and_paired_with_scratch():
    rows = [("a", 0.1, 0, 0.5), ("a", 0.1, 1, 0.6), ("a", 0.3, 0, 0.7), ("a", 0.3, 1, 0.8),
            (T.SCRATCH_CELL, 0.1, 0, 0.4), (T.SCRATCH_CELL, 0.1, 1, 0.45), (T.SCRATCH_CELL, 0.3, 0, 0.1),
            (T.SCRATCH_CELL, 0.3, 1, 0.1)]
    frame = pd.DataFrame([("r", cell, "av", k, lr, "finished", score, T.FT_TEST_ACC)
                          for cell, lr, k, score in rows], columns=FINETUNE_COLUMNS)
    a, scratch = best_lr_rows(frame)
    assert (a.cell, a.lr, a.by_repeat) == ("a", 0.3, {0: 0.7, 1: 0.8})
    assert (scratch.lr, scratch.gain) == (0.1, None)
    assert a.gain.diff.mean == pytest.approx(0.325) and a.gain.n == 2


def test_the_probe_is_judged_only_where_at_least_three_cells_make_a_ranking():
    from avmae.dashboards.finetune import Agreement, _agreement_verdict

    assert "too few cells" in _agreement_verdict(Agreement(1.0, 1.0, 1.0, 2, 3))  # two cells: tau is +-1
    assert _agreement_verdict(Agreement(0.8, 0.2, 1.0, 4, 5)) == " — the probe can stand in"
    assert "cannot be trusted" in _agreement_verdict(Agreement(0.3, -0.4, 1.0, 4, 5))
    assert _agreement_verdict(Agreement(0.5, math.nan, math.nan, 4, 1)) == ""  # one seed: no interval


def rank_mean(rank: int, init: str, out: str) -> None:
    """One of 2 gloo ranks: its step losses' mean over both ranks, written to out/<rank>."""
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    losses = [torch.tensor(1.0), torch.tensor(2.0)] if rank == 0 else [torch.tensor(6.0), torch.tensor(7.0)]
    Path(out, str(rank)).write_text(str(mean_over_ranks(losses, torch.device("cpu"))))
    torch.distributed.destroy_process_group()


def test_the_fine_tuning_loss_is_the_mean_over_every_ranks_steps(tmp_path: Path):
    torch.multiprocessing.spawn(rank_mean, args=(f"file://{tmp_path / 'group'}", str(tmp_path)), nprocs=2)
    assert [float((tmp_path / rank).read_text()) for rank in "01"] == [4.0, 4.0]  # not rank 0's own 1.5
    assert mean_over_ranks([torch.tensor(1.0), torch.tensor(2.0)], torch.device("cpu")) == 1.5  # no group
    assert math.isnan(mean_over_ranks([], torch.device("cpu")))
