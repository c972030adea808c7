"""Fine-tuning in miniature (platform/evaluation/finetune.py) on synthetic clips of the tiny geometry: it runs
and is deterministic per seed, a pretrained classifier starts from the encoder's weights (a scratch one of
the same seed does not), and audio-only / video-only classifiers read only their own stream."""

from __future__ import annotations

import pytest
import torch
from avmae import models
from avmae.platform.evaluation.finetune import FinetuneResult, build_classifier, finetune
from avmae.platform.evaluation.learning import Clips, Miniature
from avmae.platform.evaluation.recipes import miniature_recipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CONFIG = Miniature().config()  # tiny, mid fusion: 2 per-modality layers, then 2 joint ones


def clips(n: int, seed: int) -> Clips:
    """n random clips of the tiny geometry (uint8 video, as decoded), labels 0-9."""
    g = torch.Generator().manual_seed(seed)
    shapes = CONFIG.input_shapes
    return {"audio": torch.randn(n, *shapes["audio"], generator=g),
            "video": torch.randint(0, 256, (n, *shapes["video"]), generator=g, dtype=torch.uint8),
            "label": torch.randint(0, 10, (n,), generator=g)}


def recipe(modality: str = "av") -> models.FinetuneConfig:
    return miniature_recipe(modality, epochs=2, warmup_epochs=0.5, batch_size=8)


def encoder() -> dict[str, torch.Tensor]:
    torch.manual_seed(7)
    return models.AVMAE(CONFIG).state_dict()


def run(modality: str, seed: int, train: Clips, test: Clips, weights=None) -> FinetuneResult:
    return finetune(CONFIG, recipe(modality), train, test, seed, weights)


def test_finetuning_runs_and_is_deterministic_per_seed():
    train, test, weights = clips(24, 0), clips(16, 1), encoder()
    first, again, other = (run("av", seed, train, test, weights) for seed in (0, 0, 1))
    assert first.pretrained and first.modality == "av" and len(first.losses) == 2 and 0 <= first.accuracy <= 1
    assert all(torch.isfinite(torch.tensor(first.losses)))
    assert (first.losses, first.accuracy) == (again.losses, again.accuracy)
    assert first.losses != other.losses  # the seed drives order, mixup and stochastic depth
    assert not run("av", 0, train, test).pretrained


def test_pretrained_classifier_starts_from_the_encoder_and_scratch_does_not():
    weights = encoder()
    pretrained, scratch = (build_classifier(CONFIG, recipe(), 3, w) for w in (weights, None))
    for m in ("audio", "video"):  # layer 0 from its own stack, layer 3 from the joint stack's top block
        source = weights[f"encoder.stacks.{m}.blocks.0.attn.qkv.weight"]
        assert torch.equal(pretrained.blocks[0][m].attn.qkv.weight, source)
        assert not torch.equal(scratch.blocks[0][m].attn.qkv.weight, source)
        top = weights["encoder.joint.blocks.1.mlp.fc1.weight"]
        assert torch.equal(pretrained.blocks[3][m].mlp.fc1.weight, top)
    assert torch.equal(pretrained.bottleneck, scratch.bottleneck)  # not in the encoder: the seed's init
    batch = clips(4, 2)
    features = [c.eval().forward_features(batch["audio"], batch["video"]) for c in (pretrained, scratch)]
    assert all(not torch.allclose(features[0][m], features[1][m]) for m in ("audio", "video"))


@pytest.mark.parametrize("modality, other", [("audio", "video"), ("video", "audio")])
def test_single_modality_reads_only_its_stream(modality: str, other: str):
    train, test, weights = clips(16, 0), clips(8, 1), encoder()
    swapped = [{**c, other: noise[other]} for c, noise in ((train, clips(16, 5)), (test, clips(8, 6)))]
    result, result_swapped = run(modality, 0, train, test, weights), run(modality, 0, *swapped, weights)
    assert (result.losses, result.accuracy) == (result_swapped.losses, result_swapped.accuracy)
    clf = build_classifier(CONFIG, recipe(modality), 0, weights)
    assert tuple(clf.tokenizers) == (modality,) and clf.bottleneck is None
    assert not any(f".{other}." in name for name, _ in clf.named_parameters())
