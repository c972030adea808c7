"""The training recipe: parameter groups, lr scaling, schedule, and a TrainStep that overfits one batch."""

import math

import pytest
import torch
import torch.nn.functional as F
from avmae.models import TrainStep, build_optimizer, create_model, param_groups, warmup_cosine

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def structured_batch(model, b=4, seed=0):
    """Coarse random images upsampled to constant patches: learnable by a tiny decoder (white noise is not:
    a 64-wide decoder spans only 64 of a tubelet's 1536 values)."""
    g = torch.Generator().manual_seed(seed)
    t_a, mel = model.input_shapes["audio"]
    _, t_v, h, w = model.input_shapes["video"]
    audio = torch.randn(b, 1, t_a // 16, mel // 16, generator=g)
    video = torch.rand(b, 3, t_v // 2, h // 16, w // 16, generator=g) * 2 - 1
    return (F.interpolate(audio, scale_factor=16, mode="nearest")[:, 0],
            F.interpolate(video, scale_factor=(2, 16, 16), mode="nearest"))


def test_param_groups_decay_only_weight_matrices():
    model = create_model("tiny", modality_embed=True)
    decay, no_decay = param_groups(model, weight_decay=0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert all(n.endswith("weight") for n in decayed)
    assert not any("norm" in n or "mask_token" in n or "modality_embed" in n for n in decayed)
    assert "decoder.head.video.weight" in decayed and "tokenizers.video.proj.weight" in decayed
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_build_optimizer_scales_lr_with_batch():
    model = create_model("tiny")
    opt = build_optimizer(model, base_lr=1.5e-4, batch_size=512)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["lr"] == pytest.approx(3e-4)
    assert opt.param_groups[0]["betas"] == (0.9, 0.95) and opt.defaults["foreach"]


def test_warmup_cosine_rises_linearly_then_decays_to_zero():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=10, total_steps=110)
    lrs = []
    for _ in range(110):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert lrs[10] == pytest.approx(1.0) and lrs[60] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False)) and lrs[-1] < 1e-3


def test_train_step_returns_detached_metrics_and_updates():
    model = create_model("tiny")
    opt = build_optimizer(model, base_lr=1e-3, batch_size=256)
    sched = warmup_cosine(opt, 2, 10)
    step = TrainStep(model, opt, sched)
    assert step.amp_dtype is None  # CPU: fp32
    before = model.decoder.head["audio"].weight.clone()
    metrics = step(*structured_batch(model))
    assert all(not t.requires_grad and t.ndim == 0 and torch.isfinite(t) for t in metrics)
    assert metrics.grad_norm > 0 and sched.last_epoch == 1
    assert not torch.equal(before, model.decoder.head["audio"].weight)
    assert all(p.grad is None for p in model.parameters())
    out = step.evaluate(*structured_batch(model), generator=3)
    assert torch.equal(out.loss, step.evaluate(*structured_batch(model), generator=3).loss)
    assert model.training


def test_train_step_clips_when_asked():
    model = create_model("tiny")
    step = TrainStep(model, build_optimizer(model, 1e-3, 256), max_grad_norm=1e-4)
    assert step(*structured_batch(model)).grad_norm > 1e-4  # the norm before clipping is reported


@pytest.mark.parametrize(("objective", "fusion", "decoder"), [
    ("joint", "mid", "shared"), ("inpainting", "late", "joint"),
])
def test_tiny_model_overfits_one_batch(objective, fusion, decoder):
    """One fixed batch with fixed masks (the global seed is reset before each step) is memorised."""
    torch.manual_seed(0)
    model = create_model("tiny", objective=objective, fusion=fusion, decoder=decoder)
    audio, video = structured_batch(model)
    steps = 100
    opt = build_optimizer(model, base_lr=3e-3 * 256 / 4, batch_size=4)  # lr 3e-3
    step = TrainStep(model, opt, warmup_cosine(opt, 10, steps))
    history = []
    for _ in range(steps):
        torch.manual_seed(1)
        history.append(step(audio, video))
    first, last = history[0], history[-1]
    assert last.loss < 0.2 * first.loss, (first, last)
    assert last.loss_audio < 0.5 * first.loss_audio and last.loss_video < 0.5 * first.loss_video
    assert math.isfinite(last.grad_norm.item())
