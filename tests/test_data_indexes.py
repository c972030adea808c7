"""Index adapters read the published formats unchanged; bad rows name file and line; EPIC cuts by time."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from avmae.platform.data import DataConfig, build_from_config
from avmae.platform.data.dataset import AVDataset
from avmae.platform.data.geometry import AUDIOSET_STATS, ClipGeometry
from avmae.platform.data.indexes import (
    IndexFormatError,
    parse_timestamp,
    read_audioset,
    read_epic,
    read_vggsound,
)
from avmae.platform.data.mp4 import write_mp4

FIXTURES = Path(__file__).parent / "fixtures"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def labels_csv(tmp_path: Path) -> Path:
    return write(tmp_path / "class_labels_indices.csv", 'index,mid,display_name\n0,/m/a,"A"\n1,/m/b,"B, b"\n')


def test_vggsound_rows_map_to_files_and_sorted_classes(tmp_path: Path):
    rows = "abc,5,dog barking,train\nxyz,30,cat meowing,test\nq,0,dog barking,test\n"
    index = write(tmp_path / "vggsound.csv", rows)
    table = read_vggsound(index, tmp_path / "media", split="test")
    assert table.classes == ["cat meowing", "dog barking"]
    assert [(c.path.name, c.label, c.source) for c in table.clips] == [
        ("xyz_000030.mp4", 0, f"{index}:2"), ("q_000000.mp4", 1, f"{index}:3"),
    ]
    custom = read_vggsound(index, tmp_path, "train", pattern="{label}/{youtube_id}_{start}.mp4")
    assert custom.clips[0].path == tmp_path / "dog barking" / "abc_5.mp4"
    assert len(read_vggsound(index, tmp_path).clips) == 3  # no split: every row


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("a,1,x,train\nb,one,x,train\n", 2, "bad start_seconds 'one'"),
        ("a,1,x,train\nb,-4,x,train\n", 2, "negative start_seconds"),
        ("a,1,x\n", 1, "expected 4 columns"),
        ("a,1,x,train\nb,2,,test\n", 2, "empty youtube_id or label"),
    ],
)
def test_vggsound_bad_rows_name_file_and_line(tmp_path: Path, text: str, line: int, message: str):
    index = write(tmp_path / "vggsound.csv", text)
    with pytest.raises(IndexFormatError, match=rf"vggsound\.csv:{line}: {message}"):
        read_vggsound(index, tmp_path)


def test_vggsound_unknown_label_with_fixed_classes(tmp_path: Path):
    index = write(tmp_path / "vggsound.csv", "a,0,one,train\nb,0,eleven,train\n")
    with pytest.raises(IndexFormatError, match=r"vggsound\.csv:2: unknown label 'eleven'"):
        read_vggsound(index, tmp_path, classes=["zero", "one"])


def test_audioset_published_format(tmp_path: Path):
    index = write(
        tmp_path / "balanced_train_segments.csv",
        "# Segments csv created Sun Mar  5 10:54:31 2017\n# num_ytids=2\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        '--4gqARaEJE, 0.000, 10.000, "/m/b,/m/a"\n--BfvyPmVMo, 20.000, 30.000, "/m/b"\n',
    )
    table = read_audioset(index, tmp_path, labels_csv(tmp_path))
    assert table.multi_label and table.classes == ["/m/a", "/m/b"]
    assert [(c.path.name, c.label) for c in table.clips] == [
        ("--4gqARaEJE_0.000.mp4", (0, 1)), ("--BfvyPmVMo_20.000.mp4", (1,)),
    ]


def test_audioset_comment_with_a_quote_swallows_no_row(tmp_path: Path):
    index = write(
        tmp_path / "balanced_train_segments.csv",
        '# Segments csv created "Sun Mar  5 10:54:31 2017\n'
        '# num_ytids=2, num_segs=3, "num_unique_labels=2\n'
        "a, 0.000, 10.000, \"/m/a\"\n"
        "# YTID, start_seconds, end_seconds, positive_labels \"\n"
        "b, 10.000, 20.000, \"/m/b\"\n"
        "\n"
        "c, 20.000, 30.000, \"/m/a,/m/b\"\n",
    )
    table = read_audioset(index, tmp_path, labels_csv(tmp_path))
    assert [(c.path.name, c.label, c.source) for c in table.clips] == [
        ("a_0.000.mp4", (0,), f"{index}:3"), ("b_10.000.mp4", (1,), f"{index}:5"),
        ("c_20.000.mp4", (0, 1), f"{index}:7"),
    ]


def test_an_open_quote_is_an_error_on_its_own_line(tmp_path: Path):
    index = write(tmp_path / "vggsound.csv", 'a,1,"dog,train\nb,2,cat,train\n')
    with pytest.raises(IndexFormatError, match=r"vggsound\.csv:1: not CSV: .*check its quotes"):
        read_vggsound(index, tmp_path)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ('x, 0.000, 10.000, "/m/zzz"', r"unknown label\(s\) \['/m/zzz'\]"),
        ('x, ten, 10.000, "/m/a"', "bad start_seconds 'ten'"),
        ('x, 10.000, 5.000, "/m/a"', "end_seconds 5.000 is not after start_seconds 10.000"),
    ],
)
def test_audioset_bad_rows_name_file_and_line(tmp_path: Path, row: str, message: str):
    index = write(tmp_path / "eval_segments.csv", f'# YTID, start_seconds, end_seconds, positive_labels\n'
                  f'ok, 0.000, 10.000, "/m/a"\n{row}\n')
    with pytest.raises(IndexFormatError, match=rf"eval_segments\.csv:3: {message}"):
        read_audioset(index, tmp_path, labels_csv(tmp_path))


def test_epic_timestamps_and_bad_rows(tmp_path: Path):
    assert parse_timestamp("01:02:03.50") == pytest.approx(3723.5)
    header = (FIXTURES / "epic_segments.csv").read_text().splitlines()[0]
    good = "P01_01_0,P01,P01_01,00:00:01.00,00:00:01.00,00:00:03.00,1,2,open door,open,3,door,8,[],[]"
    cases = {
        good.replace("00:00:03.00", "00:00:3.x"): "bad timestamp",
        good.replace("00:00:01.00,00:00:03.00", "00:00:05.00,00:00:03.00"): "stop_timestamp is not after",
        good.replace(",3,door", ",97,door"): r"unknown verb_class 97 \(>= 97\)",
    }
    for row, message in cases.items():
        index = write(tmp_path / "EPIC_100_train.csv", f"{header}\n{good}\n{row}\n")
        with pytest.raises(IndexFormatError, match=rf"EPIC_100_train\.csv:3: {message}"):
            read_epic(index, tmp_path)


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 30 s 'long video' P01_01.MP4: frame brightness = 8 x second; a 1 kHz tone only during 12-14 s."""
    root = tmp_path_factory.mktemp("epic")
    fps, seconds = 10, 30
    frames = np.stack([np.full((48, 64, 3), 8 * (k // fps), np.uint8) for k in range(fps * seconds)])
    t = np.arange(seconds * 16000) / 16000
    audio = np.where((t >= 12) & (t < 14), 0.5 * np.sin(2 * np.pi * 1000 * t), 0.0)
    write_mp4(root / "P01_01.MP4", frames, fps, audio, 16000)
    return root


def test_epic_segments_cut_from_a_long_video(kitchen: Path):
    table = read_epic(FIXTURES / "epic_segments.csv", kitchen)
    assert [(c.path.name, c.label, c.start, c.end) for c in table.clips] == [
        ("P01_01.MP4", 3, 1.0, 3.0), ("P01_01.MP4", 0, 12.0, 14.0), ("P01_01.MP4", 2, 21.5, 22.0),
    ]
    geometry = ClipGeometry(audio_frames=100, num_frames=4, img_size=32, frame_stride=2)
    dataset = AVDataset(table.clips, geometry, train=False, num_classes=97)
    brightness = [dataset[i]["video"][0, :, 16, 16].float() for i in range(3)]
    # eval window: middle stride-aligned start inside each segment
    assert torch.allclose(brightness[0], torch.tensor([8.0, 8, 16, 16]), atol=3)  # 1.6 s .. 2.2 s
    assert torch.allclose(brightness[1], torch.tensor([96.0, 96, 104, 104]), atol=3)  # 12.6 s .. 13.2 s
    assert torch.allclose(brightness[2], torch.full((4,), 168.0), atol=3)  # 0.5 s segment: edge-padded
    log_mel = [dataset[i]["audio"] * AUDIOSET_STATS.std + AUDIOSET_STATS.mean for i in range(2)]
    peak = [m.amax(dim=1).mean().item() for m in log_mel]
    assert peak[1] > peak[0] + 10  # the tone lives in segment 2 only (audio seeks past 2 s)
    short = dataset[2]["audio"] * AUDIOSET_STATS.std + AUDIOSET_STATS.mean
    assert torch.all(short[50:].abs() < 1e-5)  # 0.5 s of audio, then zero padding


def test_data_config_builds_per_split_files(kitchen: Path):
    config = DataConfig(kind="epic", root=kitchen, index={"train": FIXTURES / "epic_segments.csv"},
                        target="noun", max_broken_fraction=0.0)
    dataset = build_from_config(config, "train", ClipGeometry(100, 4, 32, 2), train=True)
    assert [c.label for c in dataset.clips] == [8, 13, 13] and dataset.num_classes == 300
    with pytest.raises(ValueError, match="Extra inputs"):
        DataConfig(kind="epic", root=kitchen, bogus=1)
    with pytest.raises(ValueError, match="together"):
        DataConfig(kind="epic", root=kitchen, audio_mean=-4.0)


def test_vggsound_split_without_clips_names_file_split_and_the_splits_it_has(tmp_path: Path):
    index = write(tmp_path / "vggsound.csv", "a,0,x,train\nb,0,y,test\nc,0,x,train\n")
    with pytest.raises(
        IndexFormatError,
        match=re.escape(f"{index}: no clips in split 'val' (the file has splits: test, train); set "),
    ):
        read_vggsound(index, tmp_path, split="val")
    assert len(read_vggsound(index, tmp_path).clips) == 3  # split=None still reads every row


@pytest.mark.parametrize("split", [None, "train"])
def test_vggsound_empty_index_is_an_error(tmp_path: Path, split: str | None):
    index = write(tmp_path / "vggsound.csv", "\n")
    with pytest.raises(IndexFormatError, match=re.escape(f"{index}: no rows; expected ")):
        read_vggsound(index, tmp_path, split=split)
