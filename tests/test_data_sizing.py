"""The data feed in the dry run: measured per-format costs, the sizing arithmetic, and the printed lines."""

from __future__ import annotations

import pytest
from avmae.platform.data import sizing
from avmae.platform.data.config import DataConfig
from avmae.platform.data.geometry import ClipGeometry
from avmae.platform.study.plan import data_feed_lines
from avmae.platform.study.spec import load_spec
from conftest import REPO

PAPER = ClipGeometry(audio_frames=1024, num_frames=16, img_size=224)


def test_measured_costs_and_the_arithmetic():
    cost, measured = sizing.format_cost("h264", PAPER)
    assert measured
    assert (cost.disk_mb_per_s, cost.read_mb, cost.cpu_ms) == pytest.approx((0.083, 0.41, 1000 / 72))
    size = sizing.Sizing(clips=200_000, clip_seconds=10, cost=cost, clips_per_s=1000)
    assert size.prepared_gb == pytest.approx(166)  # 200k clips x 0.83 MB
    assert size.read_mb_per_s == pytest.approx(410)
    assert size.cores == pytest.approx(1000 / 72)
    denser, measured = sizing.format_cost("jpeg", ClipGeometry(1024, 16, 224, frame_stride=2))
    paper_jpeg = sizing.MEASURED[256]["jpeg"]  # stride 2 stores twice the frames; a sample reads as many
    assert not measured and denser.disk_mb_per_s == pytest.approx(2 * paper_jpeg.disk_mb_per_s)
    assert denser.read_mb == pytest.approx(paper_jpeg.read_mb)
    small, _ = sizing.format_cost("jpeg", ClipGeometry(1024, 16, 112))  # short side 128: nearer 73 than 256
    digits_jpeg = sizing.MEASURED[73]["jpeg"]
    assert small.read_mb == pytest.approx(digits_jpeg.read_mb * (128 / 73) ** 2)
    with pytest.raises(ValueError, match="webp"):
        sizing.format_cost("webp", PAPER)


def test_clip_counts_from_the_index_else_published(tmp_path):
    (tmp_path / "vggsound.csv").write_text("a,1,dog,train\nb,2,cat,train\nc,3,dog,test\n")
    found = DataConfig(kind="vggsound", root=tmp_path)
    assert sizing.dataset_clips(found) == (3, 10.0, "index")
    missing = DataConfig(kind="vggsound", root=tmp_path / "absent")
    assert sizing.dataset_clips(missing)[:2] == (199_176, 10.0)


def test_the_dry_run_prints_size_rate_and_cores(tmp_path):
    spec = load_spec(REPO / "experiments" / "paper" / "fusion_ablation.yaml")
    data = spec.data.model_copy(update={"cache_format": "h264", "root": tmp_path})
    lines = data_feed_lines(spec.model_copy(update={"data": data}))
    assert lines[0].startswith("Data feed (h264 cache")
    assert lines[1] == "  prepared (short side 256): 199,176 clips x 10 s x 0.083 MB/s = 165.3 GB"
    assert lines[2] == "    clips: vggsound's published count: the index is not readable here"
    # 8 workers x 1,066 clips/s x 0.41 MB; 8 x 1,066 x 13.9 ms of CPU, against 8 x 8 reserved CPUs
    assert "reads 3,496 MB/s, decodes on 118.4 of its 64 CPU cores (too few" in lines[3]
    assert lines[4] == "  at peak (8 trials): reads 27.97 GB/s"
    slower = data_feed_lines(spec.model_copy(update={"data": data}), clips_per_s=100)
    assert "decodes on 11.1 of its 64 CPU cores (enough)" in slower[3]
