"""Seed k is the same experiment in every cell: two cells' trials of repeat k start from the same weights
(where their networks share them), read the clips in the same order and draw the same augmentations and
masks, so that cells are compared pair by pair. Shown on the trainer's own `build_worker` and `begin_epoch`,
without Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from avmae.platform.study.prepare import absolute, prepare_data
from avmae.platform.study.spec import REPEAT_KEY, StudySpec, parse_spec
from avmae.platform.train import trainer

WORLD = 2


@pytest.fixture(scope="module")
def spec(tiny_av_digits: Path) -> StudySpec:
    spec = absolute(parse_spec({
        "name": "seeds",
        "data": {"kind": "av-digits", "root": str(tiny_av_digits), "cache_dir": str(tiny_av_digits / "cache"),
                 "av_digits": {"clips_per_digit": 4}},
        "model": {"preset": "tiny"},
        "axes": {"decoder": ["separate", "shared"]},
        "repeats": 2,
        "train": {"epochs": 2, "batch_size": 4},
        "evaluation": {"probe": []},
    }))
    prepare_data(spec)
    return spec


def trial_start(spec: StudySpec, cell: dict, repeat: int, rank: int = 0, epoch: int = 0):
    """What rank `rank` of a 2-worker trial holds when its first step of `epoch` begins: the initial encoder
    weights, the epoch's clip order, its first batch (augmented) and the masks its first forward draws."""
    worker = trainer.build_worker(spec, spec.resolve_trial({**cell, REPEAT_KEY: repeat}), rank, WORLD)
    trainer.begin_epoch(worker, epoch)
    order = list(worker.sampler)
    batch = next(iter(worker.loader))  # as train_epoch iterates it: the loader's own draws included
    with torch.no_grad():
        out = worker.model(batch["audio"], batch["video"])
    encoder = {k: v for k, v in worker.model.state_dict().items()
               if k.startswith(("tokenizers.", "encoder."))}
    return encoder, order, batch["video"], (out.mask_audio, out.mask_video)


def test_repeat_k_is_the_same_experiment_in_every_cell(spec: StudySpec, one_torch_thread):
    separate, shared = ({"decoder": d} for d in ("separate", "shared"))
    (enc_a, order_a, video_a, masks_a) = trial_start(spec, separate, 1)
    (enc_b, order_b, video_b, masks_b) = trial_start(spec, shared, 1)
    assert enc_a.keys() == enc_b.keys() and all(torch.equal(enc_a[k], enc_b[k]) for k in enc_a)
    assert order_a == order_b and torch.equal(video_a, video_b)
    assert all(torch.equal(a, b) for a, b in zip(masks_a, masks_b, strict=True))


def test_another_repeat_rank_or_epoch_draws_otherwise(spec: StudySpec, one_torch_thread):
    cell = {"decoder": "shared"}
    enc, order, _, masks = trial_start(spec, cell, 0)
    other_enc, other_order, _, other_masks = trial_start(spec, cell, 1)
    assert not all(torch.equal(enc[k], other_enc[k]) for k in enc) and order != other_order
    assert not torch.equal(masks[1], other_masks[1])
    rank1_enc, rank1_order, _, rank1_masks = trial_start(spec, cell, 0, rank=1)
    assert all(torch.equal(enc[k], rank1_enc[k]) for k in enc)  # one init: DDP would broadcast it anyway
    assert not set(order) & set(rank1_order) and not torch.equal(masks[1], rank1_masks[1])
    _, epoch1_order, _, epoch1_masks = trial_start(spec, cell, 0, epoch=1)
    assert epoch1_order != order and not torch.equal(masks[1], epoch1_masks[1])
