"""The paper's fine-tuning model and recipe: the MBT classifier, what it copies from a pretrained encoder, the
resized temporal positional table, layer-wise lr decay, stochastic depth, mixup with mixmod, one step."""

import math

import pytest
import torch
from avmae.models import (
    FUSIONS,
    FinetuneConfig,
    MBTClassifier,
    build_finetune_optimizer,
    create_model,
    finetune_step,
    resolve_finetune_config,
)
from avmae.models.encoder import vit_block
from avmae.models.finetune import finetune_loss, mix_weights, mixup_modalities
from avmae.models.mbt import pretrained_sources, pretrained_weights
from avmae.models.tokenizers import sincos_1d

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# tiny: depth 4, width 64; pretraining 4 frames (2 tubelet steps), fine-tuning 8 (4 steps).
TINY = dict(num_classes=5, fusion_layer=2, num_frames=8)


def tiny_config(**overrides):
    return resolve_finetune_config("vggsound", **{**TINY, **overrides})


def checkpoint(fusion="mid", **overrides):
    torch.manual_seed(1)
    pretrained = create_model("tiny", fusion=fusion, **overrides)
    return pretrained, {"config": pretrained.config.to_dict(), "state_dict": pretrained.state_dict()}


def batch(model, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = model.input_shapes
    audio = torch.randn(b, *shapes["audio"], generator=g) if "audio" in shapes else None
    video = torch.rand(b, *shapes["video"], generator=g) * 2 - 1 if "video" in shapes else None
    return audio, video


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("modality", ["av", "audio", "video"])
def test_shapes_and_streams_per_setting(modality):
    clf = MBTClassifier(create_model("tiny").config, tiny_config(modality=modality)).eval()
    streams = ("audio", "video") if modality == "av" else (modality,)
    assert tuple(clf.tokenizers) == streams and all(tuple(layer) == streams for layer in clf.blocks)
    assert (clf.bottleneck is not None) == (modality == "av")
    audio, video = batch(clf, b=3)
    features = clf.forward_features(audio, video)
    tokens = {"audio": 32, "video": 64}  # the video stream sees twice pretraining's tubelet steps
    assert {m: f.shape for m, f in features.items()} == {m: (3, tokens[m], 64) for m in streams}
    logits = clf(audio, video, per_modality=True)
    assert set(logits) == set(streams) and all(z.shape == (3, 5) for z in logits.values())
    mean = torch.stack(list(logits.values())).mean(0)
    assert torch.equal(clf(audio, video), mean)
    assert all(p.shape == (3, 64) for p in clf.forward_head(features, pre_logits=True).values())


def test_parameter_counts():
    config = create_model("tiny").config
    d, block = config.embed_dim, count(vit_block(64, 2))
    tok = {"audio": 16 * 16 * d + d, "video": 3 * 2 * 16 * 16 * d + d}
    head, norm = d * 5 + 5, 2 * d
    av = MBTClassifier(config, tiny_config())
    assert count(av) == 2 * 4 * block + tok["audio"] + tok["video"] + 4 * d + norm + head
    audio = MBTClassifier(config, tiny_config(modality="audio"))
    assert count(audio) == 4 * block + tok["audio"] + norm + head
    with torch.device("meta"):  # ViT-L/16: 303.3M per stream without its head
        large = MBTClassifier(create_model("large").config, resolve_finetune_config("vggsound"))
    per_stream = (count(large) - count(large.head) - count(large.norm) - large.bottleneck.numel()) / 2
    assert abs(per_stream - 303.3e6) / 303.3e6 < 0.01


@pytest.mark.parametrize("fusion", FUSIONS)
def test_from_pretrained_copies_exactly_the_mapped_weights(fusion):
    pretrained, ckpt = checkpoint(fusion)
    source = pretrained.state_dict()
    torch.manual_seed(0)
    fresh = MBTClassifier(pretrained.config, tiny_config()).state_dict()
    torch.manual_seed(0)
    clf = MBTClassifier.from_pretrained(ckpt, tiny_config())
    copied = pretrained_weights(source, pretrained.config)
    expected = {f"blocks.{i}.{m}." for i in range(4) for m in ("audio", "video")}
    expected |= {"tokenizers.audio.", "tokenizers.video."} | ({"norm."} if fusion != "late" else set())
    assert set(pretrained_sources(pretrained.config)) == expected
    for name, value in clf.state_dict().items():
        if name in copied:
            assert torch.equal(value, copied[name]), name
        else:  # bottleneck, head, and the final norm under late fusion keep their init
            assert torch.equal(value, fresh[name]) and not name.startswith(("blocks.", "tokenizers.")), name
    assert set(copied) == {n for n in clf.state_dict() if n.startswith(tuple(expected))}
    top = {"late": "encoder.stacks.{m}.blocks.3", "shared": "encoder.stack.blocks.3",
           "early": "encoder.stack.blocks.3", "mid": "encoder.joint.blocks.1"}[fusion]
    for m in ("audio", "video"):  # the top layer of each stream
        assert torch.equal(clf.blocks[3][m].mlp.fc1.weight, source[top.format(m=m) + ".mlp.fc1.weight"])


def test_mid_fusion_joint_layers_go_into_both_streams_and_its_norm_into_the_classifier():
    pretrained, ckpt = checkpoint("mid")
    clf = MBTClassifier.from_pretrained(ckpt, tiny_config())
    for i, j in ((2, 0), (3, 1)):
        joint = pretrained.encoder.joint.blocks[j].state_dict()
        for m in ("audio", "video"):
            assert all(torch.equal(v, joint[k]) for k, v in clf.blocks[i][m].state_dict().items())
    for i in (0, 1):
        unimodal = pretrained.encoder.stacks["video"].blocks[i].attn.qkv.weight
        assert torch.equal(clf.blocks[i]["video"].attn.qkv.weight, unimodal)
    assert torch.equal(clf.norm.weight, pretrained.encoder.joint.norm.weight)


def test_single_modality_loads_one_stream_and_a_mismatch_raises():
    pretrained, ckpt = checkpoint("late")
    clf = MBTClassifier.from_pretrained(ckpt, tiny_config(modality="video"))
    assert not any("audio" in n for n in clf.state_dict())
    assert torch.equal(clf.blocks[0]["video"].attn.proj.weight,
                       pretrained.encoder.stacks["video"].blocks[0].attn.proj.weight)
    with pytest.raises(ValueError, match="encoder.joint"):  # a late-fusion checkpoint read as mid fusion
        MBTClassifier.from_pretrained(ckpt["state_dict"], tiny_config(),
                                      config={**ckpt["config"], "fusion": "mid"})


def test_temporal_positional_table_is_resized_from_pretraining():
    pretrained, ckpt = checkpoint()
    table = sincos_1d(32, 64).reshape(2, 16, 64)  # pretraining video: 2 time steps x 4x4
    tables = {}
    for mode in ("interpolate", "repeat", "extend"):
        clf = MBTClassifier.from_pretrained(ckpt, tiny_config(pos_embed_resize=mode))
        tables[mode] = clf.tokenizers["video"].pos_embed.reshape(4, 16, 64)
        assert torch.equal(clf.tokenizers["audio"].pos_embed, pretrained.tokenizers["audio"].pos_embed)
    a, b = table
    linear = torch.stack([a, 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b, b])  # align_corners=False
    assert torch.allclose(tables["interpolate"], linear)
    assert torch.equal(tables["repeat"], torch.stack([a, a, b, b]))
    assert torch.equal(tables["extend"], sincos_1d(64, 64).reshape(4, 16, 64))


def test_layer_decay_groups_scale_lr_by_depth():
    clf = MBTClassifier(create_model("tiny").config, tiny_config())
    optimizer, _ = build_finetune_optimizer(clf, tiny_config(), steps_per_epoch=10)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    names = {id(p): n for n, p in clf.named_parameters()}
    lr = {names[id(p)]: g["initial_lr"] / 0.8 for g in optimizer.param_groups for p in g["params"]}
    assert set(lr) == set(names.values())
    for name, scale in lr.items():
        if name.startswith("blocks."):
            assert scale == pytest.approx(0.75 ** (4 - int(name.split(".")[1]))), name
        elif name.startswith("tokenizers."):
            assert scale == pytest.approx(0.75**5), name
        else:  # bottleneck, final norm, head: the full lr (authors' optimizer)
            assert scale == 1.0, name
    assert all(g["weight_decay"] == 0.0 for g in optimizer.param_groups)


def test_drop_path_rises_to_its_rate_and_is_off_in_eval():
    clf = MBTClassifier(create_model("tiny").config, tiny_config(drop_path=0.6))
    rates = [getattr(layer["audio"].drop_path1, "drop_prob", 0.0) for layer in clf.blocks]
    assert rates == pytest.approx([0.0, 0.2, 0.4, 0.6])
    audio, video = batch(clf)
    torch.manual_seed(0)
    train = [clf.forward_features(audio, video)["audio"] for _ in range(2)]
    assert not torch.equal(*train)
    clf.eval()
    with torch.no_grad():
        assert torch.equal(*(clf.forward_features(audio, video)["audio"] for _ in range(2)))


def test_bottlenecks_carry_the_other_modality_only_from_the_fusion_layer():
    config = create_model("tiny").config
    for fusion_layer, crosses in ((2, True), (4, False)):
        clf = MBTClassifier(config, tiny_config(fusion_layer=fusion_layer)).eval()
        assert (clf.bottleneck is not None) == crosses
        audio, video = batch(clf)
        with torch.no_grad():
            ref, moved = (clf.forward_features(audio, v)["audio"] for v in (video, video + 0.5))
        assert (not torch.allclose(ref, moved)) == crosses


def test_mixmod_targets_sum_to_one_and_mix_each_modality_at_its_weight():
    labels = torch.tensor([0, 1, 2, 3])
    audio, video = torch.randn(4, 8, 16), torch.randint(0, 256, (4, 3, 2, 4, 4), dtype=torch.uint8)
    mixed = mixup_modalities({"audio": audio, "video": video}, labels, {"audio": 0.3, "video": 0.8},
                             num_classes=5, smoothing=0.3)
    smooth = torch.full((4, 5), 0.3 / 5)
    smooth[torch.arange(4), labels] += 0.7
    for m, lam in (("audio", 0.3), ("video", 0.8)):
        target = mixed.targets[m]
        assert torch.allclose(target.sum(-1), torch.ones(4))
        assert torch.allclose(target, lam * smooth + (1 - lam) * smooth.flip(0))
    assert torch.allclose(mixed.inputs["audio"], 0.3 * audio + 0.7 * audio.flip(0))
    unit = video.float() / 127.5 - 1
    assert torch.allclose(mixed.inputs["video"], 0.8 * unit + 0.2 * unit.flip(0))
    multi = mixup_modalities({"audio": audio}, torch.eye(4, 5), {"audio": 0.5}, 5, 0.3, multilabel=True)
    assert torch.allclose(multi.targets["audio"][0], 0.5 * (torch.eye(5)[0] * 0.7 + 0.15)
                          + 0.5 * (torch.eye(4, 5)[3] * 0.7 + 0.15))
    torch.manual_seed(0)
    per_modality = mix_weights(0.5, ("audio", "video"), mixmod=True)
    shared = mix_weights(0.5, ("audio", "video"), mixmod=False)
    assert per_modality["audio"] != per_modality["video"] and shared["audio"] == shared["video"]
    assert mix_weights(0.0, ("audio",), mixmod=False) == {"audio": 1.0}


def test_loss_averages_the_modalities():
    logits = {"audio": torch.randn(3, 5), "video": torch.randn(3, 5)}
    targets = {m: torch.softmax(torch.randn(3, 5), -1) for m in logits}
    expected = sum(-(t * torch.log_softmax(logits[m], -1)).sum(-1).mean() for m, t in targets.items()) / 2
    assert torch.allclose(finetune_loss(logits, targets), expected)
    multi = finetune_loss({"audio": logits["audio"]}, {"audio": targets["audio"]}, multilabel=True)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits["audio"], targets["audio"])
    assert torch.allclose(multi, bce * 5)  # summed over classes, mean over the batch


@pytest.mark.parametrize("modality", ["av", "audio", "video"])
def test_finetune_step_updates_clips_and_schedules(modality):
    config = tiny_config(modality=modality, max_grad_norm=1e-3)
    _, ckpt = checkpoint()
    clf = MBTClassifier.from_pretrained(ckpt, config)
    optim = build_finetune_optimizer(clf, config, steps_per_epoch=4)  # warmup 10 steps, 200 in all
    audio, video = batch(clf)
    before = {n: p.detach().clone() for n, p in clf.named_parameters()}
    metrics = finetune_step(clf, optim, config, audio, video, torch.tensor([0, 1, 2, 4]))
    assert math.isfinite(metrics.loss.item()) and metrics.grad_norm > 1e-3 and not metrics.loss.requires_grad
    assert metrics.lr == pytest.approx(0.8 / 10) and optim.scheduler.last_epoch == 1
    assert not torch.equal(before["head.weight"], clf.head.weight)
    assert all(p.grad is None for p in clf.parameters())


def test_a_zero_weight_step_on_a_dummy_clip_sends_no_gradient():
    """A data-parallel rank whose every clip was broken steps on one all-zero clip at weight 0: a zero
    gradient into the all-reduce and finite weights, where its empty batch would send NaN to every rank."""
    config = tiny_config(modality="av")
    _, ckpt = checkpoint()
    clf = MBTClassifier.from_pretrained(ckpt, config)
    optim = build_finetune_optimizer(clf, config, steps_per_epoch=4)
    audio, video = batch(clf, b=1)
    empty = finetune_step(clf, optim, config, audio[:0], video[:0], torch.zeros(0, dtype=torch.int64))
    assert math.isnan(empty.loss.item())  # the hazard: mean over no clip
    clf = MBTClassifier.from_pretrained(ckpt, config)
    optim = build_finetune_optimizer(clf, config, steps_per_epoch=4)
    dummy = finetune_step(clf, optim, config, torch.zeros_like(audio), torch.zeros_like(video),
                          torch.zeros(1, dtype=torch.int64), weight=0.0)
    assert dummy.grad_norm.item() == 0.0
    assert all(torch.isfinite(p).all() for p in clf.parameters())


def test_grad_checkpointing_gives_the_same_gradients():
    config = create_model("tiny").config
    grads = []
    for enable in (False, True):
        torch.manual_seed(0)
        clf = MBTClassifier(config, tiny_config(drop_path=0.0))
        torch.nn.init.normal_(clf.head.weight)
        clf.set_grad_checkpointing(enable)
        clf(*batch(clf)).sum().backward()
        grads.append(clf.blocks[0]["video"].attn.qkv.weight.grad)
    assert torch.allclose(*grads, atol=1e-6)


@pytest.mark.parametrize(("overrides", "field"), [
    ({"modality": "text"}, "modality"), ({"pos_embed_resize": "crop"}, "pos_embed_resize"),
    ({"drop_path": 1.0}, "drop_path"), ({"num_bottlenecks": 0}, "num_bottlenecks"),
    ({"warmup_epochs": 50}, "warmup_epochs"), ({"layer_decay": 0.0}, "layer_decay"),
    ({"label_smoothing": -0.1}, "label_smoothing"), ({"mixup_alpha": 0.0}, "mixmod"),
    ({"max_grad_norm": 0.0}, "max_grad_norm"), ({"momentum": 1.0}, "momentum"),
])
def test_bad_recipe_values_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        FinetuneConfig(**overrides)


def test_presets_and_depth_check():
    audioset = resolve_finetune_config("audioset")
    assert (audioset.fusion_layer, audioset.lr, audioset.batch_size) == (18, 1.6, 128)
    assert audioset.multilabel and audioset.num_classes == 527
    vgg = resolve_finetune_config()
    assert (vgg.fusion_layer, vgg.num_bottlenecks, vgg.num_frames, vgg.frame_stride) == (16, 4, 32, 2)
    assert (vgg.momentum, vgg.layer_decay, vgg.label_smoothing, vgg.mixup_alpha, vgg.mixmod) == (
        0.9, 0.75, 0.3, 0.5, True)
    assert vgg.schedule_steps(100) == (250, 5000)
    with pytest.raises(ValueError, match="dataset"):
        resolve_finetune_config("kinetics")
    with pytest.raises(ValueError, match="fusion_layer"):
        MBTClassifier(create_model("tiny").config, tiny_config(fusion_layer=5))
