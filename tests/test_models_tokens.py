"""Tokenisation and masking match the authors' code: token counts, raster order, visible counts."""

import pytest
import torch
from avmae.models import create_model
from avmae.models.masking import random_masking, unshuffle
from avmae.models.tokenizers import AudioTokenizer, VideoTokenizer, sincos_1d

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(("frames", "expected"), [(800, 400), (1000, 496)])
def test_audio_token_counts_drop_trailing_time_bins(frames, expected):
    tok = AudioTokenizer(frames, 128, embed_dim=8)
    assert tok.num_tokens == expected
    assert tok(torch.randn(1, frames, 128)).shape == (1, expected, 8)
    assert tok.patchify(torch.randn(2, frames, 128)).shape == (2, expected, 256)


def test_video_token_count_16_frames_224():
    tok = VideoTokenizer(16, 224, embed_dim=8)
    assert tok(torch.randn(1, 3, 16, 224, 224)).shape == (1, 1568, 8)
    assert tok.patchify(torch.randn(1, 3, 16, 224, 224)).shape == (1, 1568, 1536)


@pytest.mark.parametrize("input", ["vggsound", "audioset"])
def test_paper_inputs_token_counts_and_shapes(input):
    with torch.device("meta"):
        model = create_model("base", input=input)
    frames = {"vggsound": 800, "audioset": 1000}[input]
    assert model.num_tokens == {"audio": {800: 400, 1000: 496}[frames], "video": 1568}
    assert model.input_shapes == {"audio": (frames, 128), "video": (3, 16, 224, 224)}


def test_patchify_is_the_conv_token_order_and_unpatchify_inverts_it():
    """A conv whose kernel picks one input value reproduces that value of the target patch at each token,
    so patches and tokens share the (t, h, w) / time-major raster order; (t, h, w, c) inside a tubelet."""
    video = torch.randn(2, 3, 4, 32, 48)
    tok = VideoTokenizer(4, 32, embed_dim=1)
    tok.grid = (2, 2, 3)  # non-square frame: exercises h/w order
    with torch.no_grad():
        tok.proj.weight.zero_()
        tok.proj.bias.zero_()
        tok.proj.weight[0, 2, 1, 5, 7] = 1.0  # channel c=2, t=1, h=5, w=7
    tokens = tok.proj(video).flatten(2).transpose(1, 2)[..., 0]
    patches = tok.patchify(video)
    assert torch.equal(tokens, patches[..., ((1 * 16 + 5) * 16 + 7) * 3 + 2])
    assert torch.equal(tok.unpatchify(patches), video)

    audio = torch.randn(2, 70, 128)  # 70 -> 4 full time patches
    atok = AudioTokenizer(70, 128, embed_dim=1)
    with torch.no_grad():
        atok.proj.weight.zero_()
        atok.proj.bias.zero_()
        atok.proj.weight[0, 0, 3, 9] = 1.0
    atokens = atok.proj(atok.crop(audio).unsqueeze(1)).flatten(2).transpose(1, 2)[..., 0]
    apatches = atok.patchify(audio)
    assert torch.equal(atokens, apatches[..., 3 * 16 + 9])
    assert torch.equal(atok.unpatchify(apatches), audio[:, :64])


def test_sincos_positional_embedding_is_fixed_and_not_in_state_dict():
    pe = sincos_1d(10, 8)
    assert pe.shape == (1, 10, 8)
    assert torch.allclose(pe[0, 0], torch.tensor([0.0] * 4 + [1.0] * 4))
    model = create_model("tiny")
    assert not any("pos_embed" in k for k in model.state_dict())
    assert not any("modality_embed" in n for n, _ in model.named_parameters())
    assert any("modality_embed" in n for n, _ in create_model("tiny", modality_embed=True).named_parameters())


@pytest.mark.parametrize(("n", "ratio", "visible"), [(1568, 0.9, 157), (400, 0.5, 200), (496, 0.7, 149)])
def test_masking_keeps_exactly_n_minus_int_rn_per_sample(n, ratio, visible):
    tokens = torch.arange(n, dtype=torch.float32)[None, :, None].expand(3, n, 2)
    out = random_masking(tokens, ratio)
    assert out.visible.shape == (3, visible, 2)
    assert torch.equal(out.mask.sum(1), torch.full((3,), float(n - visible)))
    for b in range(3):  # the visible tokens are exactly the mask == 0 positions
        kept = out.visible[b, :, 0].long().sort().values
        assert torch.equal(kept, (out.mask[b] == 0).nonzero().squeeze(1))
    assert not torch.equal(out.mask[0], out.mask[1])  # independent per sample


def test_masking_is_reproducible_with_a_generator_and_unshuffle_restores_order():
    tokens = torch.randn(2, 64, 4)
    a = random_masking(tokens, 0.75, torch.Generator().manual_seed(3))
    b = random_masking(tokens, 0.75, torch.Generator().manual_seed(3))
    assert torch.equal(a.mask, b.mask) and torch.equal(a.visible, b.visible)
    full = unshuffle(a.visible, torch.full((1, 1, 4), float("nan")), a.ids_restore)
    visible = a.mask == 0
    assert torch.equal(full[visible], tokens[visible])
    assert full[~visible].isnan().all()


def test_model_masks_are_reproducible_with_a_seed():
    model = create_model("tiny").eval()
    audio, video = torch.randn(2, *model.input_shapes["audio"]), torch.rand(2, *model.input_shapes["video"])
    a, b = model(audio, video, generator=7), model(audio, video, generator=7)
    assert torch.equal(a.mask_video, b.mask_video) and torch.equal(a.loss, b.loss)
    assert a.mask_video.sum(1).eq(int(0.9 * 32)).all()  # 1 = masked
