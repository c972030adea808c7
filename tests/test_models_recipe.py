"""The training recipe: parameter groups, lr scaling, schedule, and a TrainStep that overfits one batch."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from avmae.models import (
    DECODERS,
    FUSIONS,
    TrainStep,
    build_optimizer,
    create_model,
    decay_split,
    param_groups,
    warmup_cosine,
)
from timm.models import group_parameters

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


def substring_rule_decayed(model):
    """The rule `param_groups` had before the models named their exempt tokens: no decay for 1-D parameters
    or names containing one of these substrings."""
    exempt = ("mask_token", "modality_embed", "pos_embed")
    return [n for n, p in model.named_parameters() if not (p.ndim < 2 or any(k in n for k in exempt))]


@pytest.mark.parametrize(("fusion", "decoder"), list(itertools.product(FUSIONS, DECODERS)))
def test_param_groups_are_those_of_the_substring_rule(fusion, decoder):
    """timm's rule over the models' `no_weight_decay()` decays the same tensors, in the same order."""
    for objective, modality_embed in itertools.product(("joint", "inpainting"), (False, True)):
        model = create_model("tiny", fusion=fusion, decoder=decoder, objective=objective,
                             modality_embed=modality_embed)
        names = {id(p): n for n, p in model.named_parameters()}
        old_decay = substring_rule_decayed(model)
        old_rest = [n for n in names.values() if n not in old_decay]
        assert decay_split(model) == (old_decay, old_rest)
        decay, rest = param_groups(model, weight_decay=0.05)
        assert [names[id(p)] for p in decay["params"]] == old_decay and decay["weight_decay"] == 0.05
        assert [names[id(p)] for p in rest["params"]] == old_rest and rest["weight_decay"] == 0.0
        assert set(decay) == set(rest) == {"params", "weight_decay"}


def test_group_matcher_orders_stem_layers_then_decoder():
    """timm's `group_parameters` over `group_matcher()`: tokenizers, layer i of every modality together (a
    stack's final norm with its last block), mid fusion's joint layers after the unimodal ones, the decoder
    last."""
    model = create_model("tiny", fusion="mid", fusion_layers=1)
    layer = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert layer["tokenizers.video.proj.weight"] == 0
    assert layer["encoder.stacks.audio.blocks.0.attn.qkv.weight"] == 1
    assert layer["encoder.stacks.video.blocks.2.mlp.fc1.bias"] == 3
    assert layer["encoder.stacks.video.norm.weight"] == 3
    assert layer["encoder.joint.blocks.0.norm1.weight"] == layer["encoder.joint.norm.bias"] == 4
    assert layer["decoder.head.audio.weight"] == layer["decoder.mask_token.video"] == 5
    late = create_model("tiny", fusion="shared")
    assert group_parameters(late, late.group_matcher(), reverse=True)["encoder.stack.norm.weight"] == 4


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
@pytest.mark.slow
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
