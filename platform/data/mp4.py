"""Write H.264 + AAC .mp4 files with PyAV (there is no ffmpeg binary), with audio and video aligned at t=0."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_mp4(
    path: str | Path,
    frames: np.ndarray | None,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    crf: int = 23,
    frame_times: np.ndarray | None = None,
) -> None:
    """frames: uint8 [T, H, W, 3] (H, W even), None for audio only; audio: float [n] or [C, n] in [-1, 1];
    frame_times: when each frame is shown, in s from 0, for a variable frame rate (None: frame i at i / fps).

    Frames and audio carry explicit pts from 0, so the muxer writes an edit list that hides the AAC encoder's
    priming samples and the decoded audio lines up with the video.
    """
    with av.open(str(path), "w", format="mp4") as container:
        video = None
        if frames is not None:
            rate = Fraction(fps).limit_denominator(1001)
            video = container.add_stream("libx264", rate=rate)
            video.width, video.height = frames.shape[2], frames.shape[1]
            video.pix_fmt = "yuv420p"
            # mbtree off: with it, x264's SIMD code depends on memory it never initialised, and the same
            # frames encoded to different bytes from one call to the next, so an AV-Digits seed gave a
            # different benchmark (tests/test_data_mp4.py). Files are larger at the same crf.
            video.options = {"preset": "veryfast", "crf": str(crf), "threads": "1", "x264-params": "mbtree=0"}
        sound = None
        if audio is not None:
            audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))
            sound = container.add_stream("aac", rate=sample_rate)
            sound.layout = "mono" if audio.shape[0] == 1 else "stereo"
            sound.options = {"aac_coder": "fast"}  # half the CPU of the default two-loop search
        if video is not None:
            time_base = 1 / rate if frame_times is None else Fraction(1, 90000)  # MPEG's clock: any time fits
            video.codec_context.time_base = time_base
            pts = range(len(frames)) if frame_times is None else np.round(np.asarray(frame_times) * 90000)
            for image, stamp in zip(frames, pts, strict=True):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                frame.pts, frame.time_base = int(stamp), time_base
                container.mux(video.encode(frame))
            container.mux(video.encode())
        if sound is not None:
            frame = av.AudioFrame.from_ndarray(np.clip(audio, -1, 1), format="fltp", layout=sound.layout.name)
            frame.sample_rate, frame.pts, frame.time_base = sample_rate, 0, Fraction(1, sample_rate)
            container.mux(sound.encode(frame))
            container.mux(sound.encode())
