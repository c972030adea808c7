"""Frame codecs of the compressed cache: a clip's stored frames <-> one blob per frame.

`Codec.encode` turns uint8 [N, H, W, 3] into N blobs; `Codec.decode` turns the blobs (writable uint8 arrays,
e.g. views of a copy-on-write shard map) of stored frames
`keyframe(lo) .. hi` back into uint8 [n, H, W, 3] (the frames from `keyframe(lo)` on), so a window of stored
frames lo..hi is one contiguous byte range of a shard. JPEG blobs are independent images (`keyframe(i) = i`;
torchvision's libjpeg-turbo on the CPU, nvjpeg batched on CUDA); H.264 blobs are the packets of a stream with
a keyframe (and its parameter sets) every `gop` frames, no B-frames, decoded by PyAV from the keyframe on.
The codec libraries are imported on first use: importing the data loader stays as cheap as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch


@dataclass(frozen=True)
class JpegCodec:
    """Baseline JPEG, 4:2:0, `quality` 1-100."""

    quality: int = 90

    @property
    def settings(self) -> dict[str, int | str]:
        return {"codec": "jpeg", "quality": self.quality}

    def keyframe(self, index: int) -> int:
        return index

    def encode(self, frames: np.ndarray) -> list[bytes]:
        from torchvision.io import encode_jpeg

        chw = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
        return [encode_jpeg(frame.contiguous(), quality=self.quality).numpy().tobytes() for frame in chw]

    def decode(self, blobs: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
        return torch.stack(decode_jpeg_batch(blobs, "cpu")).permute(0, 2, 3, 1).numpy()


def decode_jpeg_batch(blobs: Sequence[np.ndarray], device: str | torch.device) -> list[torch.Tensor]:
    """uint8 [3, H, W] images of JPEG blobs, decoded in one call on `device` (nvjpeg batched on CUDA)."""
    from torchvision.io import decode_jpeg

    return decode_jpeg([torch.from_numpy(b) for b in blobs], device=device)


@dataclass(frozen=True)
class H264Codec:
    """libx264 at constant quality `crf`, a keyframe every `gop` frames, tuned for fast decoding (no CABAC,
    no deblocking). Frames are padded to even sizes (4:2:0) with their last row/column, cropped on decode."""

    gop: int = 8
    crf: int = 20

    @property
    def settings(self) -> dict[str, int | str]:
        return {"codec": "h264", "gop": self.gop, "crf": self.crf}

    def keyframe(self, index: int) -> int:
        return index - index % self.gop

    def encode(self, frames: np.ndarray) -> list[bytes]:
        packets = encode_video(frames, "libx264", {
            "crf": str(self.crf),
            "tune": "fastdecode",
            "x264-params": f"keyint={self.gop}:min-keyint={self.gop}:scenecut=0:bframes=0:repeat-headers=1",
        })
        if len(packets) != len(frames):
            raise RuntimeError(f"libx264 gave {len(packets)} packets for {len(frames)} frames")
        return packets

    def decode(self, blobs: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
        return decode_video(blobs, "h264", height, width)


def encode_video(frames: np.ndarray, encoder_name: str, options: dict[str, str], gop: int | None = None
                 ) -> list[bytes]:
    """[T, H, W, 3] uint8 frames as one packet each from PyAV's `encoder_name` (4:2:0, one thread), padded to
    even sizes with their last row/column."""
    import av

    height, width = frames.shape[1:3]
    padded = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    encoder = av.CodecContext.create(encoder_name, "w")
    encoder.width, encoder.height, encoder.pix_fmt = padded.shape[2], padded.shape[1], "yuv420p"
    encoder.time_base, encoder.thread_count = Fraction(1, 25), 1
    if gop is not None:
        encoder.gop_size = gop
    encoder.options = options
    packets: list[bytes] = []
    for i, picture in enumerate(padded):
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        packets += [bytes(p) for p in encoder.encode(frame)]
    return packets + [bytes(p) for p in encoder.encode(None)]


def decode_video(blobs: Sequence[np.ndarray], decoder_name: str, height: int, width: int) -> np.ndarray:
    """The [T, height, width, 3] uint8 frames of `blobs` (consecutive packets from a keyframe on)."""
    import av

    decoder = av.CodecContext.create(decoder_name, "r")
    decoder.thread_count = 1
    frames = [f for blob in blobs for f in decoder.decode(av.Packet(blob))] + decoder.decode(None)
    return np.stack([f.to_ndarray(format="rgb24")[:height, :width] for f in frames])


Codec = JpegCodec | H264Codec


def codec_from_settings(settings: dict[str, int | str]) -> Codec:
    """The codec a cache header's settings describe."""
    kind, rest = settings["codec"], {k: v for k, v in settings.items() if k != "codec"}
    if kind == "jpeg":
        return JpegCodec(**rest)
    if kind == "h264":
        return H264Codec(**rest)
    raise ValueError(f"unknown frame codec {kind!r}; choose from jpeg, h264")


def default_codec(fmt: str) -> Codec:
    """The codec a `cache_format` names, at its measured default settings (docs/benchmarks.md)."""
    return codec_from_settings({"codec": fmt})
