"""`avmae data cache --address` on a two-node Ray cluster (two `ray start` nodes of 1 CPU each on this
machine): shards are decoded on both nodes, every clip is written once, the broken clip reported once."""

from __future__ import annotations

import csv
import json
import os
from contextlib import ExitStack
from pathlib import Path

import pytest
from avmae.platform.data import AVDigitsBuild, build_av_digits
from conftest import run_cli
from test_sweep_multinode import BIN, alive_nodes, free_port, launch, node_ports, short_dir, wait_until

__all__ = ["short_dir"]  # the fixture, used by name


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_cache_is_prepared_on_both_nodes(tmp_path: Path, short_dir: Path):
    media = tmp_path / "media"
    build_av_digits(media, AVDigitsBuild(clips_per_digit=3, duration=1.0), workers=2, progress=False)
    with (media / "vggsound.csv").open("a") as index:  # one broken clip: its file is missing
        index.write("gone,0,zero,train\n")
    port, head_dir, worker_dir = free_port(), short_dir / "h", short_dir / "w"
    env = {"RAY_AUTH_MODE": "disabled"}
    head = [str(BIN / "ray"), "start", "--head", "--block", "--port", str(port), "--num-cpus", "1",
            "--temp-dir", str(head_dir), "--include-dashboard", "false", *node_ports()]
    worker = [str(BIN / "ray"), "start", "--block", "--address", f"127.0.0.1:{port}", "--num-cpus", "1",
              "--temp-dir", str(worker_dir), *node_ports()]
    with ExitStack() as stack:
        full_env = {**os.environ, **env}
        head_node = launch(head, full_env, tmp_path / "head.log", stack)
        wait_until(head_node, tmp_path / "head.log", lambda: alive_nodes(head_dir) >= 1)
        worker_node = launch(worker, full_env, tmp_path / "worker.log", stack)
        wait_until(worker_node, tmp_path / "worker.log", lambda: alive_nodes(head_dir) >= 2)
        args = ["data", "cache", "--kind", "av-digits", "--root", str(media), "--split", "train",
                "--out", str(tmp_path / "cache"), "--img-size", "32", "--shard-size", "2", "--format", "h264",
                "--address", f"127.0.0.1:{port}"]
        out = run_cli(args, timeout=240, env=env)
        assert out.returncode == 0, out.stdout[-4000:]
    assert "decoded on 2 node(s)" in out.stdout, out.stdout[-2000:]
    folder = next((tmp_path / "cache").iterdir())
    header = json.loads((folder / "cache.json").read_text())
    entries = [e for shard in sorted(folder.glob("shard_*.json")) for e in json.loads(shard.read_text())]
    assert sorted(e["i"] for e in entries) == list(range(header["num_clips"]))  # each clip written once
    assert len({e["node"] for e in entries}) == 2
    with (folder / "broken.csv").open() as f:
        broken = list(csv.DictReader(f))
    assert [(row["reason"], row["index_line"]) for row in broken] == [("missing", f"{media}/vggsound.csv:31")]
