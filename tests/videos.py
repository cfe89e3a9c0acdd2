"""The one writer of the tests' videos: uint8 frames (T, H, W, 3) RGB -> a video file, encoded with PyAV.

    import videos                    # tests/ is on sys.path when pytest runs a test file from it
    videos.write_video(path, frames, fps=8)                                   # H.264 as downloads are (B-frames)
    videos.write_video(path, frames, gop=8, bframes=2)                        # a keyframe every 8 frames
    videos.write_video(path, frames, codec="mpeg4", gop=12, bframes=2, bit_rate=4_000_000)
    videos.write_video(path, frames, x264="keyint=12:open-gop=1", times_ms=[0, 20, 60, ...])   # open GOP, VFR
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np


def write_video(path: str | Path, frames: np.ndarray, fps: int | Fraction = 25, codec: str = "libx264",
                gop: int | None = None, bframes: int | None = None, x264: str | None = None,
                options: dict | None = None, pix_fmt: str = "yuv420p", bit_rate: int | None = None,
                faststart: bool = False, times_ms: Sequence[int] | None = None) -> Path:
    """Encode `frames` (T, H, W, 3) uint8 RGB at `fps` (int, Fraction or float: 29.97 -> 2997/100) into `path` (the
    container follows the suffix).

    gop: a keyframe every `gop` frames (libx264: keyint=min-keyint=gop, no scene-cut keyframes; other encoders:
    gop_size); None: the encoder's default. bframes: B-frames between references (libx264: x264's bframes, 0 = off;
    other encoders: max_b_frames); None: the encoder's default (x264: 3, with a pyramid). x264: more x264-params
    ('open-gop=1:b-pyramid=normal'), after those. options: other encoder options ({'crf': '8'},
    {'x265-params': ...}). bit_rate: bits per second (e.g. a fine quantiser for mpeg2video / mpeg4).
    faststart: the mp4 index before the data (a file cut mid-stream then still opens and claims its frame count).
    times_ms: each frame's presentation time in milliseconds (variable frame rate; time base 1/1000).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.asarray(frames, dtype=np.uint8)
    with av.open(str(path), mode="w", options={"movflags": "faststart"} if faststart else {}) as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        opts = dict(options or {})
        if codec == "libx264":
            params = ([f"keyint={gop}:min-keyint={gop}:scenecut=0"] if gop is not None else []) + \
                ([f"bframes={bframes}"] if bframes is not None else []) + ([x264] if x264 else [])
            if params:
                opts["x264-params"] = ":".join(params)
        else:
            if gop is not None:
                stream.codec_context.gop_size = gop
            if bframes is not None:
                stream.codec_context.max_b_frames = bframes
        if opts:
            stream.options = opts
        if bit_rate is not None:
            stream.codec_context.bit_rate = bit_rate
        if times_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            if times_ms is not None:
                frame.pts, frame.time_base = int(times_ms[i]), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def level_frames(num_frames: int, width: int, height: int, step: int = 5, split: bool = True) -> np.ndarray:
    """(T, H, W, 3) frames whose pixels say their number: frame i is grey level 20 + step * i (split: the top half;
    the bottom half 255 minus it), which decodes back to i whatever the encoder's rounding (`frame_number`)."""
    levels = 20 + step * np.arange(num_frames)
    frames = np.repeat(levels[:, None, None, None], height, axis=1).repeat(width, axis=2).repeat(3, axis=3)
    if split:
        frames[:, height // 2:] = 255 - frames[:, height // 2:]
    return frames.astype(np.uint8)


def frame_number(frame: np.ndarray, step: int = 5) -> int:
    """The number a `level_frames` frame shows (its top quarter's mean grey level)."""
    return int(round((frame[:max(1, frame.shape[0] // 4)].mean() - 20) / step))
