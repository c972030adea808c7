"""Tokenisation and masking match the authors' code: token counts, raster order, visible counts."""

import pytest
import torch
from avmae.models import create_model
from avmae.models.masking import gather_tokens, random_masking, unshuffle
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


def test_linear_embedding_is_the_authors_conv_and_unpatchify_inverts_patchify():
    """The kernel=stride conv of the authors' code, with the linear map's weights laid out as a kernel, gives
    the same tokens: patches and tokens share the (t, h, w) / time-major raster order, (t, h, w, c) inside."""
    video = torch.randn(2, 3, 4, 32, 48)
    tok = VideoTokenizer(4, 32, embed_dim=5)
    tok.grid, tok.num_tokens = (2, 2, 3), 12  # non-square frame: exercises h/w order
    tok.pos_embed = torch.zeros(1, 12, 5)
    conv = torch.nn.Conv3d(3, 5, (2, 16, 16), stride=(2, 16, 16))
    with torch.no_grad():
        conv.weight.copy_(tok.proj.weight.reshape(5, 2, 16, 16, 3).permute(0, 4, 1, 2, 3))
        conv.bias.copy_(tok.proj.bias)
    expected = conv(video).flatten(2).transpose(1, 2)
    torch.testing.assert_close(tok(video), expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(tok.unpatchify(tok.patchify(video)), video)

    audio = torch.randn(2, 70, 128)  # 70 -> 4 full time patches
    atok = AudioTokenizer(70, 128, embed_dim=5)
    atok.pos_embed = torch.zeros(1, atok.num_tokens, 5)
    conv2 = torch.nn.Conv2d(1, 5, 16, stride=16)
    with torch.no_grad():
        conv2.weight.copy_(atok.proj.weight.reshape(5, 1, 16, 16))
        conv2.bias.copy_(atok.proj.bias)
    expected = conv2(atok.crop(audio).unsqueeze(1)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(atok(audio), expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(atok.unpatchify(atok.patchify(audio)), audio[:, :64])


def test_embedding_the_kept_patches_equals_embedding_all_then_gathering():
    tok = VideoTokenizer(4, 32, embed_dim=8, modality_embed=True)
    patches = tok.patchify(torch.randn(3, 3, 4, 32, 32))
    kept = random_masking(3, tok.num_tokens, 0.75, patches.device, torch.Generator().manual_seed(0)).ids_keep
    torch.testing.assert_close(tok.embed(patches, kept), gather_tokens(tok.embed(patches), kept))


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
    out = random_masking(3, n, ratio, torch.device("cpu"))
    assert out.ids_keep.shape == (3, visible)
    assert torch.equal(out.mask.sum(1), torch.full((3,), float(n - visible)))
    for b in range(3):  # the kept positions are exactly the mask == 0 positions
        assert torch.equal(out.ids_keep[b].sort().values, (out.mask[b] == 0).nonzero().squeeze(1))
    assert not torch.equal(out.mask[0], out.mask[1])  # independent per sample


def test_masking_is_reproducible_with_a_generator_and_unshuffle_restores_order():
    tokens = torch.randn(2, 64, 4)
    a = random_masking(2, 64, 0.75, tokens.device, torch.Generator().manual_seed(3))
    b = random_masking(2, 64, 0.75, tokens.device, torch.Generator().manual_seed(3))
    assert torch.equal(a.mask, b.mask) and torch.equal(a.ids_keep, b.ids_keep)
    full = unshuffle(gather_tokens(tokens, a.ids_keep), torch.full((1, 1, 4), float("nan")), a.ids_restore)
    visible = a.mask == 0
    assert torch.equal(full[visible], tokens[visible])
    assert full[~visible].isnan().all()


def test_model_masks_are_reproducible_with_a_seed():
    model = create_model("tiny").eval()
    audio, video = torch.randn(2, *model.input_shapes["audio"]), torch.rand(2, *model.input_shapes["video"])
    a, b = model(audio, video, generator=7), model(audio, video, generator=7)
    assert torch.equal(a.mask_video, b.mask_video) and torch.equal(a.loss, b.loss)
    assert a.mask_video.sum(1).eq(int(0.9 * 32)).all()  # 1 = masked


def test_uint8_pixels_are_the_same_input_as_their_unit_range_floats():
    """Loaders ship uint8 video; the model maps it to [-1, 1] itself, exactly as the loaders used to."""
    model = create_model("tiny").eval()
    audio = torch.randn(2, *model.input_shapes["audio"])
    pixels = torch.randint(0, 256, (2, *model.input_shapes["video"]), dtype=torch.uint8)
    as_uint8 = model(audio, pixels, generator=0)
    as_float = model(audio, pixels.float() / 127.5 - 1, generator=0)
    assert torch.equal(as_uint8.loss, as_float.loss)
