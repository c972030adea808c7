"""The probe protocol (platform/evaluation/probe.py) on a tiny real AV-Digits: the reference rows every
study measures beside its trials, and the online probe's schedule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from avmae.platform.evaluation.probe import baseline_scores, pool, raw_features
from avmae.platform.study.prepare import absolute, prepare_data
from avmae.platform.study.spec import EvalSpec, SpecError, parse_spec
from avmae.platform.tracking import layout as T
from conftest import TINY_STUDY


@pytest.mark.slow
def test_the_reference_rows_are_scored_for_every_modality_and_seed(tiny_av_digits: Path, one_torch_thread):
    spec = absolute(parse_spec({
        **TINY_STUDY, "axes": {}, "search": {},
        "data": {"kind": "av-digits", "root": str(tiny_av_digits), "cache_dir": str(tiny_av_digits / "cache"),
                 "av_digits": {"clips_per_digit": 4}},
    }))
    prepare_data(spec)
    rows = baseline_scores(spec, seeds=[0, 1])
    assert set(rows) == set(T.BASELINES)
    assert set(rows["random_init"]) == {0, 1} and set(rows["raw_input"]) == {0}
    names = {T.probe_metric(m, "acc") for m in ("av", "audio", "video")}
    for per_seed in rows.values():
        for scores in per_seed.values():
            assert set(scores) == names and all(0.0 <= v <= 1.0 for v in scores.values())
    assert rows["random_init"][0] != rows["random_init"][1]  # another seed, another random encoder


def test_pooling_keeps_or_averages_token_positions_and_puts_modalities_side_by_side():
    tokens = {"audio": torch.arange(24.0).reshape(2, 3, 4), "video": torch.ones(2, 5, 6)}
    assert pool(tokens, "mean").shape == (2, 4 + 6) and pool(tokens, "tokens").shape == (2, 3 * 4 + 5 * 6)
    assert pool(tokens, "mean")[0, :4].tolist() == [4.0, 5.0, 6.0, 7.0]
    assert pool(tokens, "tokens")[1, :12].tolist() == list(range(12, 24))  # every token, in order
    # The raw input is pooled as the encoder's tokens are: its patches, the model's own patchify.
    spec = parse_spec(TINY_STUDY)
    clips = {"audio": torch.randn(2, 64, 128), "video": torch.zeros(2, 3, 4, 64, 64, dtype=torch.uint8),
             "label": torch.tensor([1, 2])}
    for pooling, (audio, video) in {"mean": (256, 1536), "tokens": (32 * 256, 32 * 1536)}.items():
        feats, labels = raw_features(spec.resolve_model({}))([clips], ["av", "audio", "video"], pooling)
        assert (feats["audio"].shape[1], feats["video"].shape[1], feats["av"].shape[1]) == (audio, video,
                                                                                             audio + video)
        assert labels.tolist() == [1, 2]


def test_the_online_probe_runs_every_probe_every_epochs_and_after_the_last():
    every = EvalSpec(probe_every=2)
    assert [every.probes_after(e, last=e == 5) for e in range(1, 6)] == [False, True, False, True, True]
    assert [EvalSpec().probes_after(e, last=e == 3) for e in (1, 2, 3)] == [False, False, True]
    assert not EvalSpec(probe=[], probe_every=1).probes_after(1, last=True)


def test_a_probe_score_can_be_the_metric_and_is_maximised():
    spec = parse_spec({**TINY_STUDY, "metric": "probe/av_acc", "evaluation": {"probe_every": 1}})
    assert spec.mode == "max" and parse_spec(TINY_STUDY).mode == "min"
    with pytest.raises(SpecError, match="probe_every"):
        parse_spec({**TINY_STUDY, "metric": "probe/av_acc"})
    with pytest.raises(SpecError, match="'audio' in evaluation.probe"):
        evaluation = {"probe": ["av"], "probe_every": 1}
        parse_spec({**TINY_STUDY, "metric": "probe/audio_acc", "evaluation": evaluation})
    with pytest.raises(SpecError, match="metric"):
        parse_spec({**TINY_STUDY, "metric": "probe/av_top5"})
