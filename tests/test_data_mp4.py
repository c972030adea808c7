"""write_mp4 is a pure function of its input: the same frames and samples give the same bytes, whatever the
process did before and whatever the clock says (AV-Digits' promise "a seed gives the same benchmark")."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
from pathlib import Path

import numpy as np
import pytest
from avmae.platform.data.mp4 import write_mp4


def dirty_heap(rng: np.random.Generator) -> None:
    """Leave the C heap full of non-zero garbage, as the rendering of a clip does before it is encoded."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    blocks = []
    for size in rng.integers(1_000, 400_000, 60):
        block = libc.malloc(int(size))
        ctypes.memset(block, int(rng.integers(1, 256)), int(size))
        blocks.append(block)
    for block in blocks:
        libc.free(ctypes.c_void_p(block))


def clip(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 2 s, 96x96, 32 fps noisy clip with moving content and a noise track."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 60, (64, 96, 96, 3), np.uint8)
    for t in range(64):
        frames[t, 20 + t // 2 : 50 + t // 2, 10 + t : 40 + t] += 150
    return frames, (0.1 * rng.standard_normal(32000)).astype(np.float32)


def test_same_input_same_bytes_on_a_dirty_heap(tmp_path: Path):
    """With its mbtree on, x264 read memory it never initialised and most encodes of a clip came out
    different (AV-Digits builds then differed at random, issue 17); garbage on the heap shows it at once."""
    rng = np.random.default_rng(0)
    for seed in range(4):
        frames, audio = clip(seed)
        digests = set()
        for _ in range(4):
            dirty_heap(rng)
            write_mp4(tmp_path / "clip.mp4", frames, 32, audio, 16000)
            digests.add(hashlib.sha256((tmp_path / "clip.mp4").read_bytes()).hexdigest())
        assert len(digests) == 1, f"clip {seed}: {len(digests)} different encodings of the same input"


@pytest.mark.parametrize("box", [b"mvhd", b"tkhd", b"mdhd"])
def test_no_wall_clock_in_the_headers(tmp_path: Path, box: bytes):
    """Creation and modification times are 0 (1904-01-01), never the time of writing."""
    frames, audio = clip(0)
    write_mp4(tmp_path / "clip.mp4", frames[:4], 32, audio[:4000], 16000)
    data = (tmp_path / "clip.mp4").read_bytes()
    at = data.index(box) + 4  # version (1 byte) and flags (3), then creation and modification time
    width = 8 if data[at] == 1 else 4
    assert data[at + 4 : at + 4 + 2 * width] == bytes(2 * width)
