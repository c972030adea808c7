"""The AV-MAE model: every fusion x decoder x objective, cross-modal attention, loss masking, validation."""

import itertools
import json

import pytest
import torch
from avmae.models import DECODERS, DIRECTIONS, FUSIONS, SIZES, create_model, resolve_config
from avmae.models.objectives import masked_mse

COMBOS = list(itertools.product(FUSIONS, DECODERS))
OBJECTIVES = [("joint", "both"), *(("inpainting", d) for d in DIRECTIONS)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def batch(model, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(b, *model.input_shapes["audio"], generator=g)
    video = torch.rand(b, *model.input_shapes["video"], generator=g) * 2 - 1
    return audio, video


def randomise_heads(model):
    """Heads start at zero (predictions 0 whatever the input); make predictions depend on the network."""
    torch.manual_seed(0)
    for head in model.decoder.head.values():
        torch.nn.init.normal_(head.weight, std=0.2)
    return model


@pytest.mark.parametrize(("fusion", "decoder"), COMBOS)
def test_tiny_all_combinations_forward_backward(fusion, decoder):
    for objective, direction in OBJECTIVES:
        model = create_model("tiny", fusion=fusion, decoder=decoder, objective=objective,
                             inpainting_direction=direction)
        out = model(*batch(model))
        assert all(torch.isfinite(t) and t.ndim == 0 for t in (out.loss, out.loss_audio, out.loss_video))
        out.loss.backward()
        targets = ("audio", "video") if objective == "joint" else {"a2v": ("video",), "v2a": ("audio",),
                                                                     "both": ("audio", "video")}[direction]
        for m in ("audio", "video"):
            loss, pred = getattr(out, f"loss_{m}"), getattr(out, f"pred_{m}")
            if m in targets:
                assert loss > 0 and pred.shape == (2, model.num_tokens[m], model.tokenizers[m].patch_dim)
                assert model.decoder.head[m].weight.grad.abs().sum() > 0
            else:
                assert loss == 0 and pred is None
        weighted = 0.5 * out.loss_audio + 0.5 * out.loss_video
        assert torch.allclose(out.loss, weighted)


@pytest.mark.parametrize(("fusion", "decoder"), COMBOS)
def test_base_builds_for_all_combinations(fusion, decoder):
    for objective in ("joint", "inpainting"):
        with torch.device("meta"):
            model = create_model("base", fusion=fusion, decoder=decoder, objective=objective)
        assert model.config.embed_dim == 768 and model.decoder.proj["audio"].out_features == 384


def test_every_preset_accepts_every_combination():
    for preset, (fusion, decoder), (objective, direction) in itertools.product(SIZES, COMBOS, OBJECTIVES):
        c = resolve_config(preset, fusion=fusion, decoder=decoder, objective=objective,
                           inpainting_direction=direction)  # raises on a combination it rejects
        assert (c.preset, c.fusion, c.decoder, c.objective, c.inpainting_direction) == (
            preset, fusion, decoder, objective, direction)
    for preset in SIZES:
        with torch.device("meta"):
            model = create_model(preset, fusion="mid", decoder="joint", objective="inpainting")
        assert model.config.embed_dim == SIZES[preset]["embed_dim"]


def test_base_forward_on_small_inputs():
    model = create_model("base", input="tiny", fusion="shared", objective="inpainting")
    out = model(*batch(model, b=1))
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize(("preset", "reference"), [("base", 85.8e6), ("large", 303.3e6)])
def test_one_modality_stack_has_vit_parameter_count(preset, reference):
    """ViT-B/16 and ViT-L/16 without their classifier heads: 85.8M and 303.3M."""
    with torch.device("meta"):
        late = create_model(preset, fusion="late")
        mid = create_model(preset, fusion="mid")

    def count(*modules):
        return sum(p.numel() for m in modules for p in m.parameters())

    n_late = count(late.encoder.stacks["audio"])
    assert abs(n_late - reference) / reference < 0.03
    extra_norm = 2 * mid.config.embed_dim  # the per-modality stack's own final LayerNorm
    assert count(mid.encoder.stacks["video"], mid.encoder.joint) == n_late + extra_norm


def test_early_and_mid_attend_across_modalities_late_and_shared_do_not():
    for fusion in FUSIONS:
        model = create_model("tiny", fusion=fusion).eval()
        audio, video = batch(model)
        with torch.no_grad():
            ref = model.forward_features(audio, video)
            other = model.forward_features(audio, video + 0.5)
        assert ref["audio"].shape == (2, 32, 64) and ref["video"].shape == (2, 32, 64)
        crosses = not torch.allclose(ref["audio"], other["audio"])
        assert crosses == (fusion in ("early", "mid")), fusion


ISOLATED = [("late", "both"), ("shared", "both"), *((f, "source") for f in FUSIONS)]


@pytest.mark.parametrize(("fusion", "context"), ISOLATED)
@pytest.mark.parametrize("decoder", DECODERS)
def test_inpainting_never_sees_the_target_modality(fusion, context, decoder):
    """Perturbing modality k's input leaves k's prediction unchanged (no k token but mask tokens): always
    under `source` context, and under the paper's `both` where the encoder has no cross-modal attention."""
    model = randomise_heads(create_model("tiny", fusion=fusion, decoder=decoder, objective="inpainting",
                                         inpainting_context=context))
    audio, video = batch(model)
    with torch.no_grad():
        ref = model(audio, video, generator=1)
        new_video = model(audio, video.flip(0), generator=1)
        new_audio = model(audio.flip(0), video, generator=1)
    assert torch.equal(ref.pred_video, new_video.pred_video)
    assert not torch.equal(ref.pred_audio, new_video.pred_audio)  # ...but it drives the other modality
    assert torch.equal(ref.pred_audio, new_audio.pred_audio)
    assert not torch.equal(ref.pred_video, new_audio.pred_video)


@pytest.mark.parametrize("fusion", ["early", "mid"])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_both_context_under_early_and_mid_fusion_sees_the_target(fusion, direction):
    """The paper's `both`: the context tokens attended to the target's visible tokens, so the target's input
    moves its own prediction; `source` is not a no-op."""
    model = randomise_heads(create_model("tiny", fusion=fusion, objective="inpainting",
                                         inpainting_direction=direction))
    audio, video = batch(model)
    with torch.no_grad():
        ref = model(audio, video, generator=1)
        new_video = model(audio, video.flip(0), generator=1)
        new_audio = model(audio.flip(0), video, generator=1)
    for target, new in (("video", new_video), ("audio", new_audio)):
        if target in model.config.inpainting_targets:
            assert not torch.equal(getattr(ref, f"pred_{target}"), getattr(new, f"pred_{target}"))


def test_source_context_draws_the_same_masks_as_both():
    """Only the encoder's input differs: the masks, the loss positions and the random stream are shared."""
    outs = []
    for context in ("both", "source"):
        model = create_model("tiny", fusion="early", objective="inpainting", inpainting_direction="a2v",
                             inpainting_context=context)
        outs.append(model(*batch(model), generator=3))
    assert torch.equal(outs[0].mask_audio, outs[1].mask_audio)
    assert torch.equal(outs[0].mask_video, outs[1].mask_video)


def test_inpainting_placement_and_loss_positions():
    model = randomise_heads(create_model("tiny", objective="inpainting", mask_ratio_audio=0.75))
    out = model(*batch(model))
    visible = {"audio": 32 - 24, "video": 32 - 28}
    # target video: the first v_audio positions hold audio context and are excluded from the loss
    assert torch.equal(out.mask_video[0], (torch.arange(32) >= visible["audio"]).float())
    assert torch.equal(out.mask_audio[0], (torch.arange(32) >= visible["video"]).float())


def test_loss_ignores_visible_positions():
    pred, target = torch.randn(2, 10, 6), torch.randn(2, 10, 6)
    mask = (torch.rand(2, 10) > 0.5).float()
    changed = torch.where(mask[..., None].bool(), target, target + 10.0)
    assert torch.equal(masked_mse(pred, target, mask), masked_mse(pred, changed, mask))
    expected = ((pred - target) ** 2).sum(-1)[mask.bool()].sum() / (mask.sum() * 6)
    assert torch.allclose(masked_mse(pred, target, mask), expected)

    model = randomise_heads(create_model("tiny"))
    audio, video = batch(model)
    out = model(audio, video)
    target = model.tokenizers["video"].patchify(video)
    keep = out.mask_video.bool()[..., None]
    assert torch.allclose(out.loss_video, masked_mse(out.pred_video, torch.where(keep, target, 5.0),
                                                     out.mask_video))


def test_norm_targets_standardise_each_patch():
    model = create_model("tiny", norm_targets=True)
    out = model(*batch(model))
    # zero predictions against unit-variance targets
    assert torch.allclose(out.loss_video, torch.tensor(1.0), atol=1e-3)


def test_bf16_autocast_matches_fp32_and_fused_attention_matches_naive():
    model = randomise_heads(create_model("tiny", fusion="mid", decoder="joint")).eval()
    audio, video = batch(model, b=4)
    with torch.no_grad():
        ref = model(audio, video, generator=0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(audio, video, generator=0)
        for module in model.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = False
        naive = model(audio, video, generator=0)
    assert low.loss.dtype == torch.float32 and low.pred_video.dtype == torch.bfloat16
    assert torch.allclose(low.loss, ref.loss, rtol=3e-2)
    assert torch.allclose(naive.loss, ref.loss, rtol=1e-5)


@pytest.mark.parametrize("context", ["both", "source"])
def test_forward_traces_as_one_graph(context):
    model = create_model("tiny", fusion="mid", objective="inpainting", depth=2, fusion_layers=1,
                         inpainting_context=context)
    torch._dynamo.reset()
    out = torch.compile(model, backend="eager", fullgraph=True)(*batch(model))
    assert torch.isfinite(out.loss)


def test_input_shapes_config_and_forward_features():
    model = create_model("tiny", fusion="early", audio_frames=160, num_frames=6, img_size=48)
    assert model.input_shapes == {"audio": (160, 128), "video": (3, 6, 48, 48)}
    assert model.num_tokens == {"audio": 80, "video": 27}
    config = json.loads(json.dumps(model.config.to_dict()))
    assert config["fusion"] == "early" and config["preset"] == "tiny" and config["mask_ratio_video"] == 0.9
    audio, video = batch(model)
    assert model.forward_features(audio=audio)["audio"].shape == (2, 80, 64)
    assert set(model.forward_features(video=video)) == {"video"}
    with pytest.raises(ValueError):
        model.forward_features()


def test_overrides_reach_the_modules():
    model = create_model("tiny", depth=2, embed_dim=64, num_heads=4, decoder_embed_dim=32, decoder_depth=1,
                         decoder_num_heads=4, decoder="separate")
    stack = model.encoder.stacks["audio"]
    assert len(stack.blocks) == 2 and stack.norm.weight.numel() == 64
    assert len(model.decoder.stacks["video"].blocks) == 1 and model.decoder.proj["video"].out_features == 32
    with torch.device("meta"):
        assert create_model("large", input="audioset").num_tokens["audio"] == 496


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"fusion": "cross"}, "fusion"), ({"decoder": "tied"}, "decoder"),
    ({"objective": "contrastive"}, "objective"),
    ({"inpainting_direction": "v2v"}, "inpainting_direction"), ({"input": "kinetics"}, "input"),
    ({"inpainting_context": "target"}, "inpainting_context"),
    ({"mask_ratio_audio": 0.0}, "mask_ratio_audio"), ({"mask_ratio_video": 1.0}, "mask_ratio_video"),
    ({"mask_ratio_audio": 1.2}, "mask_ratio_audio"), ({"mask_ratio_video": 0.01}, "mask_ratio_video"),
    ({"fusion": "mid", "fusion_layers": 4}, "fusion_layers"), ({"embed_dim": 65}, "embed_dim"),
    ({"patch": 8}, "patch"),
])
def test_bad_values_raise_value_errors_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        create_model("tiny", **kwargs)


def test_unknown_names_list_the_allowed_ones():
    with pytest.raises(ValueError, match="early, late, shared, mid"):
        create_model("tiny", fusion="cross")
    with pytest.raises(ValueError, match="tiny, small, base, large"):
        create_model("huge")


@pytest.mark.parametrize("ratio", [0.05, 0.3, 0.99])
def test_extreme_mask_ratios_work_for_both_objectives(ratio):
    for objective in ("joint", "inpainting"):
        model = create_model("tiny", objective=objective, mask_ratio_audio=ratio, mask_ratio_video=ratio)
        out = model(*batch(model))
        assert torch.isfinite(out.loss)


def test_inpainting_needs_fewer_context_tokens_than_target_tokens():
    """vggsound: 400 audio tokens cannot host 1568 - int(0.5 * 1568) = 784 visible video tokens."""
    with pytest.raises(ValueError, match="mask_ratio_video"):
        resolve_config("base", objective="inpainting", inpainting_direction="v2a", mask_ratio_video=0.5)
    resolve_config("base", objective="inpainting", inpainting_direction="a2v", mask_ratio_video=0.5)
