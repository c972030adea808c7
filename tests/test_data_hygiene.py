"""Index hygiene: a clip under two labels or in two splits is an error that refuses the study, a duplicate row
a warning; every finding names each row's file:line. Fixtures are in the datasets' published formats."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from avmae.platform.data.cli import data
from avmae.platform.data.config import DataConfig
from avmae.platform.data.hygiene import IndexHygieneError, Row, check_splits
from avmae.platform.data.indexes import IndexFormatError, read_audioset, read_epic, read_vggsound_splits
from avmae.platform.data.loader import check_index, load_splits, preflight_index
from click.testing import CliRunner

FIXTURES = Path(__file__).parent / "fixtures"
AUDIOSET_HEADER = (
    "# Segments csv created Sun Mar  5 10:54:31 2017\n"
    "# num_ytids=3, num_segs=3, num_unique_labels=2, num_positive_labels=3\n"
    "# YTID, start_seconds, end_seconds, positive_labels\n"
)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def labels_csv(tmp_path: Path) -> Path:
    return write(tmp_path / "class_labels_indices.csv", 'index,mid,display_name\n0,/m/a,"A"\n1,/m/b,"B, b"\n')


def summary(report) -> list[tuple[str, str, tuple[Row, ...]]]:
    return [(f.kind, f.severity, f.rows) for f in report.findings]


def test_vggsound_duplicate_conflict_and_overlap(tmp_path: Path):
    index = write(tmp_path / "vggsound.csv", (
        "a,5,dog,train\n"
        "b,0,cat,train\n"
        "a,5,dog,train\n"  # duplicate of line 1
        "c,0,dog,train\n"
        "c,0,cat,train\n"  # conflicts with line 4
        "d,0,cat,test\n"
        "b,0,cat,test\n"  # line 2 again, in test
        "a,6,dog,test\n"  # another clip of video a: fine
    ))
    report = check_splits(read_vggsound_splits(index, tmp_path))
    at = f"{index}:"
    assert summary(report) == [
        ("duplicate", "warning", (Row(f"{at}1", "train", "dog"), Row(f"{at}3", "train", "dog"))),
        ("overlap", "error", (Row(f"{at}2", "train", "cat"), Row(f"{at}7", "test", "cat"))),
        ("conflict", "error", (Row(f"{at}4", "train", "dog"), Row(f"{at}5", "train", "cat"))),
    ]
    assert report.findings[0].clip == str(tmp_path / "a_000005.mp4")
    assert [f.kind for f in report.errors] == ["overlap", "conflict"] and len(report.warnings) == 1
    text = report.describe()
    assert f"{at}4 (train: dog), {at}5 (train: cat)" in text
    assert "keep the row with the right label and delete the others" in text
    with pytest.raises(IndexHygieneError, match="refusing to use this index") as caught:
        report.check()
    assert f"{at}2 (train: cat), {at}7 (test: cat)" in str(caught.value)


def test_audioset_overlap_between_train_and_eval_files(tmp_path: Path):
    labels = labels_csv(tmp_path)
    train = write(tmp_path / "balanced_train_segments.csv", AUDIOSET_HEADER
                  + '--4gqARaEJE, 0.000, 10.000, "/m/b,/m/a"\n'
                  + '--BfvyPmVMo, 20.000, 30.000, "/m/b"\n'
                  + '--BfvyPmVMo, 20.000, 30.000, "/m/a"\n')  # line 6: the same segment, other labels
    evaluation = write(tmp_path / "eval_segments.csv", AUDIOSET_HEADER
                       + '--4gqARaEJE, 0.000, 10.000, "/m/a,/m/b"\n'  # line 4: train's line 4, same labels
                       + '--4gqARaEJE, 10.000, 20.000, "/m/a"\n')  # another segment of the same video
    report = check_splits({"train": read_audioset(train, tmp_path, labels),
                           "eval": read_audioset(evaluation, tmp_path, labels)})
    both = "/m/a+/m/b"
    assert summary(report) == [
        ("overlap", "error", (Row(f"{train}:4", "train", both), Row(f"{evaluation}:4", "eval", both))),
        ("conflict", "error", (Row(f"{train}:5", "train", "/m/b"), Row(f"{train}:6", "train", "/m/a"))),
    ]


def test_epic_segments_are_clips_by_their_span(tmp_path: Path):
    lines = (FIXTURES / "epic_segments.csv").read_text().splitlines()
    same_span_other_verb = lines[1].replace(",open,3,", ",close,4,")
    index = write(tmp_path / "EPIC_100_train.csv", "\n".join([*lines, same_span_other_verb]) + "\n")
    report = check_splits({"train": read_epic(index, tmp_path)})  # segments 2 and 3 share the video: fine
    assert summary(report) == [
        ("conflict", "error", (Row(f"{index}:2", "train", "verb_3"), Row(f"{index}:5", "train", "verb_4"))),
    ]
    assert report.findings[0].clip == f"{tmp_path / 'P01_01.MP4'} [1.0, 3.0] s"


def test_a_clean_index_has_no_findings(tmp_path: Path):
    report = check_splits(read_vggsound_splits(FIXTURES / "vggsound_real.csv", tmp_path))
    assert report.findings == () and report.check() is report
    assert report.describe() == "index check: 0 error(s), 0 warning(s)"


def test_preflight_refuses_overlap_and_only_warns_on_duplicates(tmp_path: Path, caplog):
    index = write(tmp_path / "vggsound.csv", "a,0,dog,train\nb,0,cat,train\nb,0,cat,test\n")
    config = DataConfig(kind="vggsound", root=tmp_path, index=index)
    with pytest.raises(IndexHygieneError) as caught:
        preflight_index(config)
    assert isinstance(caught.value, IndexFormatError)  # a study's data error, like a malformed row
    assert f"{index}:2 (train: cat), {index}:3 (test: cat)" in str(caught.value)
    assert "delete the clip's rows from all but one split" in str(caught.value)

    write(index, "a,0,dog,train\na,0,dog,train\nb,0,cat,test\n")
    with caplog.at_level(logging.WARNING, logger="avmae.platform.data.loader"):
        report = preflight_index(config)
    assert [f.kind for f in report.findings] == ["duplicate"]
    assert f"{index}:1 (train: dog), {index}:2 (train: dog)" in caplog.text


def test_check_index_reads_every_split_of_the_config(tmp_path: Path):
    labels = labels_csv(tmp_path)
    train = write(tmp_path / "train.csv", AUDIOSET_HEADER + 'x, 0.000, 10.000, "/m/a"\n')
    evaluation = write(tmp_path / "eval.csv", AUDIOSET_HEADER + 'x, 0.000, 10.000, "/m/a"\n')
    config = DataConfig(kind="audioset", root=tmp_path, labels=labels,
                        index={"train": train, "eval": evaluation})
    assert list(load_splits(config)) == ["train", "eval"]
    assert [f.kind for f in check_index(config).findings] == ["overlap"]
    single = config.model_copy(update={"index": train})  # one AudioSet file: no split to overlap with
    assert list(load_splits(single)) == ["all"] and check_index(single).findings == ()
    with pytest.raises(ValueError, match="no file for split 'test'; it maps: train, eval"):
        config.index_file("test")


def test_scan_reports_the_index_and_fails_on_its_errors(tmp_path: Path):
    labels = labels_csv(tmp_path)
    rows = 'x, 0.000, 10.000, "/m/a"\ny, 0.000, 10.000, "/m/a"\n'
    train = write(tmp_path / "train.csv", AUDIOSET_HEADER + rows)
    evaluation = write(tmp_path / "eval.csv", AUDIOSET_HEADER + 'x, 0.000, 10.000, "/m/a"\n')
    args = ["scan", "--kind", "audioset", "--root", str(tmp_path), "--labels", str(labels), "--workers", "1",
            "--max-broken", "1.0"]
    result = CliRunner().invoke(data, [*args, "--index", f"train={train}", "--index", f"eval={evaluation}"])
    assert result.exit_code == 1, result.output
    assert "in more than one split (error): 1 clip(s)" in result.output
    assert f"{train}:4 (train: /m/a), {evaluation}:4 (eval: /m/a)" in result.output
    assert "3 of 3 clips broken" in result.output and "the index has errors" in result.output

    vggsound = write(tmp_path / "vggsound.csv", "a,0,dog,train\na,0,dog,train\nb,0,cat,test\n")
    result = CliRunner().invoke(data, ["scan", "--root", str(tmp_path), "--index", str(vggsound),
                                       "--workers", "1", "--max-broken", "1.0"])
    assert result.exit_code == 0, result.output  # a duplicate row is a warning
    assert "duplicate rows (warning): 1 clip(s)" in result.output
    assert f"{vggsound}:1 (train: dog), {vggsound}:2 (train: dog)" in result.output
    help_text = CliRunner().invoke(data, ["scan", "--help"]).output
    assert "Errors" in help_text and "Warning" in help_text
