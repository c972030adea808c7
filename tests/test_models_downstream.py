"""Downstream: a classifier loaded from a pretraining state_dict, frozen features, and the linear probe."""

import pytest
import torch
from avmae.models import AVClassifier, create_model, extract_features, linear_probe

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def batch(model, b=3):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(b, *model.input_shapes["audio"], generator=g),
            torch.rand(b, *model.input_shapes["video"], generator=g) * 2 - 1)


@pytest.mark.parametrize("modality", ["av", "audio", "video"])
def test_classifier_from_pretraining_checkpoint_reuses_the_encoder(modality):
    pretrained = create_model("tiny", fusion="mid").eval()
    checkpoint = {"config": pretrained.config.to_dict(), "state_dict": pretrained.state_dict()}
    clf = AVClassifier.from_pretrained(checkpoint, num_classes=5, modality=modality).eval()
    audio, video = batch(pretrained)
    with torch.no_grad():
        ref = pretrained.forward_features(audio, video) if modality == "av" else \
            pretrained.forward_features(**{modality: audio if modality == "audio" else video})
        assert all(torch.equal(ref[m], f) for m, f in clf.forward_features(**{
            m: x for m, x in (("audio", audio), ("video", video)) if m in ref}).items())
        logits = clf(audio, video)  # the unused modality is ignored
    assert logits.shape == (3, 5)
    assert clf.loss(logits, torch.tensor([0, 1, 4])).ndim == 0
    features = clf.forward_features(**{m: x for m, x in (("audio", audio), ("video", video)) if m in ref})
    assert torch.equal(clf.forward_head(features), logits)
    assert clf.forward_head(features, pre_logits=True).shape == (3, 64)


def test_from_pretrained_accepts_a_raw_compiled_state_dict_file_and_geometry_overrides(tmp_path):
    pretrained = create_model("tiny")
    state = {f"_orig_mod.{k}": v for k, v in pretrained.state_dict().items()}
    torch.save({"config": pretrained.config.to_dict(), "state_dict": state}, tmp_path / "ckpt.pt")
    clf = AVClassifier.from_pretrained(tmp_path / "ckpt.pt", 3, num_frames=8)  # finetune on longer clips
    assert clf.config.num_frames == 8 and clf.tokenizers["video"].num_tokens == 64
    norm = pretrained.encoder.stacks["audio"].norm.weight
    assert torch.equal(clf.encoder.stacks["audio"].norm.weight, norm)
    with pytest.raises(ValueError, match="config"):
        AVClassifier.from_pretrained(pretrained.state_dict(), 3)
    with pytest.raises(ValueError, match="encoder weights"):  # another fusion: keys do not match
        AVClassifier.from_pretrained(pretrained.state_dict(), 3, config={**pretrained.config.to_dict(),
                                                                         "fusion": "early"})


def test_multilabel_classifier_uses_bce():
    clf = AVClassifier(create_model("tiny").config, num_classes=4, modality="audio", multilabel=True)
    audio, _ = batch(clf)
    logits = clf(audio=audio)
    target = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1], [1, 1, 0, 0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, target.float())
    assert torch.allclose(clf.loss(logits, target), expected)
    clf.loss(logits, target).backward()
    with pytest.raises(ValueError, match="av, audio, video"):
        AVClassifier(clf.config, 4, modality="text")


def test_extract_features_from_tensors_and_loaders_restores_train_mode():
    model = create_model("tiny")
    audio, video = batch(model, b=5)
    labels = torch.arange(5)
    feats = extract_features(model, (audio, video), "av", batch_size=2)
    assert feats.shape == (5, 64) and not feats.requires_grad and model.training
    loader = [{"audio": audio[:3], "video": video[:3], "label": labels[:3]},
              {"audio": audio[3:], "video": video[3:], "label": labels[3:]}]
    same, got = extract_features(model, loader, "av", return_labels=True)
    assert torch.allclose(same, feats, atol=1e-5) and torch.equal(got, labels)
    audio_only = extract_features(model, {"audio": audio, "video": video}, "audio")
    expected = model.eval().forward_features(audio=audio)["audio"].mean(1)
    assert torch.allclose(audio_only, expected.detach(), atol=1e-5)


def test_linear_probe_is_accurate():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(10, 64, generator=g)
    y = torch.randint(0, 10, (4000,), generator=g)
    x = centres[y] + torch.randn(4000, 64, generator=g)
    train_x, train_y, test_x, test_y = x[:3000], y[:3000], x[3000:], y[3000:]
    result = linear_probe(train_x, train_y, test_x, test_y)
    assert set(result) == {"accuracy"} and result["accuracy"] > 0.9


def test_linear_probe_multilabel_reports_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1200, 32, generator=g)
    y = (x[:, :6] > 0.5).long()  # label j present when feature j is large
    result = linear_probe(x[:800], y[:800], x[800:], y[800:], multilabel=True)
    assert set(result) == {"mAP"} and result["mAP"] > 0.9


class CountingLoader:
    """A loader over fixed batches that counts its passes (`__iter__` calls)."""

    def __init__(self, batches):
        self.batches, self.passes = batches, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.batches)


def test_extract_features_for_several_modalities_matches_one_call_per_modality():
    model = create_model("tiny", fusion="mid")
    audio, video = batch(model, b=5)
    labels = torch.tensor([2, 0, 1, 1, 0])
    loader = [{"audio": audio[i : i + 2], "video": video[i : i + 2], "label": labels[i : i + 2]}
              for i in range(0, 5, 2)]
    feats, got = extract_features(model, loader, ["av", "audio", "video"], return_labels=True)
    assert list(feats) == ["av", "audio", "video"] and torch.equal(got, labels) and model.training
    for modality, f in feats.items():
        single, single_labels = extract_features(model, loader, modality, return_labels=True)
        assert f.shape == (5, 64) and torch.equal(f, single) and torch.equal(single_labels, labels)
    assert not torch.allclose(feats["audio"], feats["video"])  # each modality really got its own inputs
    assert set(extract_features(model, (audio, video), ("video",), batch_size=2)) == {"video"}


def test_extract_features_reads_the_data_once_for_all_modalities():
    model = create_model("tiny")
    audio, video = batch(model, b=4)
    loader = CountingLoader([(audio[:2], video[:2], torch.tensor([0, 1])),
                             (audio[2:], video[2:], torch.tensor([1, 0]))])
    feats, labels = extract_features(model, loader, ["av", "audio", "video"], return_labels=True)
    assert loader.passes == 1 and all(f.shape == (4, 64) for f in feats.values()) and len(labels) == 4
    with pytest.raises(ValueError, match="av, audio, video"):  # a bad modality fails before any pass
        extract_features(model, loader, ["av", "text"])
    assert loader.passes == 1
