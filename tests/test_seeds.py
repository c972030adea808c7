"""Seed k is the same experiment in every cell: two cells' trials of repeat k start from the same weights
(where their networks share them), read the clips in the same order and draw the same masks, so that cells
are compared pair by pair. Built the way `trainer.setup` and `trainer.train_epoch` seed, without Ray."""

from __future__ import annotations

import torch
from avmae import models
from avmae.platform.spec import REPEAT_KEY, parse_spec, rank_seed
from conftest import TINY_STUDY
from torch.utils.data import DistributedSampler

SPEC = parse_spec({**TINY_STUDY, "axes": {"decoder": ["separate", "shared"]}, "repeats": 2})


def trial_start(cell: dict, repeat: int, rank: int = 0, epoch: int = 0):
    """What a rank holds when its first step begins: the initial weights, the epoch's clip order and the
    masks its first forward draws."""
    trial = SPEC.resolve_trial({**cell, "lr": 1e-3, REPEAT_KEY: repeat})
    torch.manual_seed(trial.seed)  # setup: the initialisation
    model = models.AVMAE(trial.model)
    sampler = DistributedSampler(range(40), num_replicas=2, rank=rank, shuffle=True, seed=trial.seed)
    sampler.set_epoch(epoch)
    torch.manual_seed(rank_seed(trial.seed, rank, epoch))  # train_epoch: this rank's masks
    audio = torch.zeros(2, *model.input_shapes["audio"])
    video = torch.zeros(2, *model.input_shapes["video"], dtype=torch.uint8)
    out = model(audio, video)
    encoder = {k: v for k, v in model.state_dict().items() if k.startswith(("tokenizers.", "encoder."))}
    return encoder, list(sampler), (out.mask_audio, out.mask_video)


def test_repeat_k_is_the_same_experiment_in_every_cell():
    separate, shared = ({"decoder": d} for d in ("separate", "shared"))
    (enc_a, order_a, masks_a), (enc_b, order_b, masks_b) = trial_start(separate, 1), trial_start(shared, 1)
    assert enc_a.keys() == enc_b.keys() and all(torch.equal(enc_a[k], enc_b[k]) for k in enc_a)
    assert order_a == order_b
    assert all(torch.equal(a, b) for a, b in zip(masks_a, masks_b, strict=True))


def test_another_repeat_rank_or_epoch_draws_otherwise():
    cell = {"decoder": "shared"}
    enc, order, masks = trial_start(cell, 0)
    other_enc, other_order, other_masks = trial_start(cell, 1)
    assert not all(torch.equal(enc[k], other_enc[k]) for k in enc) and order != other_order
    assert not torch.equal(masks[1], other_masks[1])
    _, rank1_order, rank1_masks = trial_start(cell, 0, rank=1)
    assert not set(order) & set(rank1_order) and not torch.equal(masks[1], rank1_masks[1])
    _, epoch1_order, epoch1_masks = trial_start(cell, 0, epoch=1)
    assert epoch1_order != order and not torch.equal(masks[1], epoch1_masks[1])
