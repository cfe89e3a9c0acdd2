"""Data loading for OmniSource: annotation lists, decoding, frame sampling, datasets.

What this file implements (paper: Sec. 3.5 forms of web data, Sec. 4 datasets, appendix Table 11):

1. Frame sampling: `sample_frames` is MMAction2 1.x `SampleFrames` (out_of_bound_opt='loop',
   keep_tail_frames=False, twice_sample=False, no temporal jitter): TSN segments (2D, Sec. 5.1) and
   dense clips (3D SlowOnly), train and test mode, including videos shorter than a clip.
2. Decoding: `read_frames` decodes only what the sampled indices need with PyAV (keyframe seeking,
   unreferenced frames no index needs dropped by the decoder, early stop, RGB conversion of the needed
   frames only, the per-file pts scan cached in each process); `read_frames_naive` decodes and converts
   every frame (reference and benchmark); `count_frames`; `read_frames_lenient` reads again at the true
   count when a video decodes to fewer frames than its container claims (the one such retry: datasets and
   filter.py). Frame folders (`img_00001.jpg`, 1-based) and still images are read with Pillow; `read_image`
   decodes crawled JPEGs reduced (draft mode) to the short side the pipeline needs.
3. Annotation lists in MMAction2's formats -> a compact `SampleList` (`read_list`: flat arrays, no Python
   object per sample, so forked DataLoader workers share it; `read_list_samples` is the per-line reference
   parser giving `Sample`s). One list may mix kinds; the kind is read from each line (extension, field
   count; paths relative to the list's data prefix):
       videos/x.mp4 LABEL          'video'      trimmed clip (K400-tr, IG-vid)
       untrimmed/x.mp4 LABEL       'untrimmed'  long video; first path component 'untrimmed' (K400-untr)
       frames/x 300 LABEL          'frames'     frame folder and its frame count (img_00001.jpg ...)
       images/x.jpg LABEL          'image'      still web image (GG-k400, IG-img)
       dir LABEL NUM_PARTS POS...  'raw'        untrimmed video cut in 10-s pieces dir/part_0.mp4 ...
                                                and the teacher's positive pieces (RawVideoDataset)
       x.mp4 LABEL 10.000:20.000 40.000:50.000
                                   'windows'    untrimmed video and the teacher's positive windows
                                                START:END in seconds (one or more; Sec. 3.5, 3D students,
                                                written by filter.py): decoded with seeking at training
                                                time, frames k with START <= k / fps < END (`window_frames`)
   A `.json` list holds MMAction2's dicts (raw: video_dir/label/num_clips/positive_clip_inds;
   video or image: filename/label; windows: filename/label/windows [[START, END], ...];
   frames: frame_dir/total_frames/label).
   `map_labels` translates a source's labels into a target's label space by class name.
4. Datasets by name (`resolve_dataset`, `load_split`, `LAYOUTS`): a plain folder DATA_ROOT/NAME/
   (classes.txt, train.txt, val.txt) or the released layouts of the paper's datasets (Table 11).
5. `VideoDataset`: a torch Dataset over samples of any kind; reproducible per-item randomness from
   (seed, epoch, index); a sample that fails to load is replaced by another one and counted. Images become
   clips through `transforms.image_to_clip` (Sec. 3.5; still clips by default).
6. Untrimmed web videos (Sec. 3.5, Fig. 2 right; written by filter.py):
   - 3D students: the 'windows' list kind above (positive windows by time, no copy of the video); or
     `cut_video` cuts a long video into 10-s pieces dir/part_N.mp4 with PyAV (re-encoded, exact cuts),
     the 'raw' list kind above (MMAction2's RawVideoDataset layout); `video_fps`.
   - 2D students (TSN snippets, Table 14): a sidecar `<list stem>_frame_scores.json` next to a list
     (`frame_scores_path`) holds, per video line, the 1-FPS frame indices and the teacher's probability
     of the line's label at each (`FrameScores`, `read_frame_scores` / `write_frame_scores`).
     `read_list` attaches them to the samples (`Sample.frame_scores`) and `VideoDataset(snippet=...)`
     builds the TSN input from those frames with a chooser such as `transforms.select_snippet`.
7. Preparing a dataset for fast training (`prepare_dataset`, `python data.py prepare --data-root DIR --dataset NAME
   --out DIR2`): the same lists, classes and folders under DIR2, every source decoded once into MMAction2 frame
   folders or densely keyed H.264 at the short side the recipes read, in parallel, resumable after a kill, broken
   files reported (DIR2/NAME/prepare_report.json) and left out; `worker_cpu_ms` measures what a DataLoader worker
   pays per training sample (before and after).

After the machinery banner: `SampleList`; `labels_of`, `kinds_of` and `kind_names` of any list; `write_atomic`,
the one writer of every command's single files (flushed to disk, then renamed). Helpers are at the bottom.
"""
from __future__ import annotations

import argparse
import array
import bisect
import collections
import contextlib
import ctypes
import dataclasses
import inspect
import json
import logging
import math
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Sequence

import av
import numpy as np
import torch
from PIL import Image, ImageOps

import transforms

logger = logging.getLogger(__name__)

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".3gp", ".ts")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
FRAME_TMPL = "img_{:05d}.jpg"   # MMAction2 RawframeDataset filename_tmpl, 1-based (start_index=1)
PART_TMPL = "part_{}.mp4"       # MMAction2 RawVideoDataset clipname_tmpl, 0-based
FRAME_SCORES_TMPL = "{stem}_frame_scores.json"   # sidecar of list STEM.txt: 1-FPS teacher scores (Sec. 3.5)
FRAME_SCORES_FORMAT = "omnisource-frame-scores-1"
MIN_IMAGE_SIDE = 8   # px: a smaller web image (a 1x1 tracking pixel) fails to load, is replaced and counted
KINDS = ("video", "untrimmed", "frames", "image", "raw", "windows")   # codes 0..5 of `SampleList.kinds`
WINDOW_TOL = 1e-3   # s: a frame time within 1 ms of a window bound counts as on it (lists write milliseconds)
_SCAN_BLOCK, _LINE_BLOCK = 1 << 24, 1 << 18   # list parsing in blocks of bytes / lines: small temporaries
# FFmpeg decoder threads inside DataLoader workers: the workers already are the parallelism, so one thread each
# keeps them from oversubscribing the cores (2 workers on 2 cores: +11-14 % TSN, +16-24 % SlowOnly clips/s; see
# `python benchmark.py --what loader`). 0 = FFmpeg's automatic frame + slice threading, always used outside workers.
WORKER_CODEC_THREADS = 1
# Frames no index needs are sent to the decoder with skip_frame 'NONREF': it drops those no other frame refers
# to (H.264/HEVC nal_ref_idc 0, MPEG-4/MPEG-2 B-frames) and decodes the rest bit-exactly; see `read_frames`.
SKIP_NONREF = True
# Per-process LRU of the pts scan of `read_frames` (workers are long-lived): at most this many frames' pts in
# all (8 bytes each: 2M frames = 16 MiB, ~6,600 10-s clips at 30 fps); keyed by (path, size, mtime, inode).
PTS_CACHE_FRAMES = 2_000_000


# ----------------------------------------------------------------------------------------------------------------------
# 1. Frame sampling: MMAction2 SampleFrames
# ----------------------------------------------------------------------------------------------------------------------

def sample_frames(num_frames: int, clip_len: int, frame_interval: int, num_clips: int,
                  test_mode: bool, rng: np.random.Generator | None = None) -> np.ndarray:
    """0-based frame indices `(num_clips * clip_len,)`, clip-major, exactly MMAction2 1.x SampleFrames.

    TSN (clip_len=1): one frame per segment of `num_frames / num_clips` frames, a random offset
    inside the segment in training, the segment centre in testing. 3D (clip_len>1): clips of
    `clip_len` frames `frame_interval` apart; training draws the start at random, testing spreads
    `num_clips` starts evenly from the first to the last possible start (PySlowFast's rule).
    Indices past the end loop around (`np.mod`), so a short video repeats itself.
    `rng` (numpy Generator) replaces MMAction2's global `np.random` in training.
    """
    if num_frames < 1:
        raise ValueError(f"sample_frames: num_frames must be >= 1, got {num_frames}")
    if min(clip_len, frame_interval, num_clips) < 1:
        raise ValueError(f"sample_frames: clip_len, frame_interval, num_clips must be >= 1, "
                         f"got {clip_len}, {frame_interval}, {num_clips}")
    # 1. one start offset per clip (floats in the TSN test rule, truncated at the end as MMAction2 does)
    if test_mode:
        offsets = _test_offsets(num_frames, clip_len, frame_interval, num_clips)
    else:
        rng = np.random.default_rng() if rng is None else rng
        offsets = _train_offsets(num_frames, clip_len, frame_interval, num_clips, rng)
    # 2. every clip covers clip_len frames frame_interval apart: (num_clips, clip_len)
    inds = offsets[:, None] + np.arange(clip_len)[None, :] * frame_interval
    # 3. out_of_bound_opt='loop': wrap indices past the end back to the start
    inds = np.mod(inds, num_frames)
    # 4. flatten clip-major; the integer cast truncates the TSN test floats like MMAction2's int32 cast
    return inds.reshape(-1).astype(np.int64)


# ----------------------------------------------------------------------------------------------------------------------
# 2. Decoding: videos (PyAV), frame folders and still images (Pillow)
# ----------------------------------------------------------------------------------------------------------------------

class VideoTooShortError(ValueError):
    """A frame past the last decodable frame was asked for; `num_frames` is the true count."""

    def __init__(self, path: Path, wanted: int, num_frames: int):
        super().__init__(f"{path}: frame {wanted} requested but the video decodes to only "
                         f"{num_frames} frames")
        self.num_frames = num_frames


def reformat(frame: av.VideoFrame, format: str = "rgb24", width: int | None = None, height: int | None = None
             ) -> av.VideoFrame:
    """`frame.reformat(...)` through this process's own swscale context: every frame conversion of the project.

    PyAV's default conversion (`frame.to_ndarray(format=...)`, `frame.reformat(...)`) reuses one context per
    thread, and a forked child inherits it: with PyAV 18.1.1 the child's first default conversion then waits
    forever for the parent's swscale slice threads, which do not exist in the child. A context keyed by the
    process id is never shared across a fork (the parent's stays referenced, never freed, in the child).
    """
    own = _REFORMATTERS.get(os.getpid())
    if own is None:
        own = _REFORMATTERS[os.getpid()] = av.video.reformatter.VideoReformatter()
    return own.reformat(frame, format=format, width=width, height=height)


def to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """A decoded frame -> uint8 `(H, W, 3)` RGB (`reformat`, fork-safe)."""
    return reformat(frame).to_ndarray()


def read_frames(path: str | Path, indices: Sequence[int]) -> np.ndarray:
    """Frames `indices` (0-based, any order, repeats allowed) as uint8 `(len(indices), H, W, 3)` RGB.

    Videos are decoded with PyAV doing only the work the indices need:
    1. one demux pass (packets only, no decoding; ~2-5 ms for a 10-s clip) gives every frame's pts
       and the keyframes; the presentation index of a frame is the rank of its pts. At a constant
       frame rate that is round((pts - start_time) * time_base * average_rate); the rank stays
       right for variable-frame-rate (phone / web) videos, where that formula does not. The scan
       is cached per process (LRU of PTS_CACHE_FRAMES frames, keyed by path, size, mtime, inode);
    2. before each needed frame, seek to the nearest keyframe before it when that keyframe lies
       beyond the current decoding position (it skips decoding work); codec threading is on;
    3. the packet of a frame no index needs goes to the decoder with skip_frame 'NONREF' (H.264,
       HEVC, MPEG-1/2; not in AVI): FFmpeg drops it if no other frame refers to it (x264's B-frames
       but the pyramid's middle ones: 40-47 % of the frames of the real clips in ../shared, 25-45 %
       less CPU per training clip), so every frame it decodes is bit-exact;
    4. only the needed frames are converted to RGB; once every packet up to the last needed frame of
       a run (the frames decoded from one keyframe) is sent, the decoder is drained, not fed on.
    Every decoded frame's index is checked to follow its predecessor, across dropped frames only
    where none is wanted; when pts disagree with the decoding order (e.g. AVI with packed B-frames)
    the video is decoded again without skipping, else from the start counting frames, which is by
    definition what whole-file decoding gives. What failed is remembered with the cached scan.
    A directory is a frame folder (`img_00001.jpg` is index 0); an image file is a 1-frame video.
    """
    path = Path(path)
    wanted = _check_indices(indices, path)
    if path.is_dir():
        return _read_frame_folder(path, wanted)
    if path.suffix.lower() in IMAGE_EXTS:
        return _read_still(path, wanted)
    with _open_video(path) as (container, stream):
        return _decode_video(container, stream, path, wanted)


def read_frames_lenient(path: str | Path, count: int, indices_for: Callable[[int], Sequence[int]],
                        max_missing: int | None = None, read: Callable[[np.ndarray], np.ndarray] | None = None
                        ) -> tuple[np.ndarray, int]:
    """Frames `indices_for(count)` of a video whose frame count `count` came from its container (or a list);
    read again at the true count when the video decodes to fewer frames than that (an optimistic count).

    1. read `indices_for(count)` with `read` (default `read_frames(path, ...)`; e.g. an already open container);
    2. the video decodes to n < count frames (VideoTooShortError): no frame at all, or more than `max_missing`
       frames short (None: any shortfall is a miscount), is a truncated file (Sec. 3.3) and the error is raised;
    3. otherwise read `indices_for(n)` with `read_frames`.
    Returns the frames and the count they were read at (`count`, or n after a retry: the caller may cache it).
    Used by VideoDataset (training and test sampling) and filter.py (teacher scoring).
    """
    read = read or (lambda indices: read_frames(path, indices))
    try:
        return read(np.asarray(indices_for(count))), count
    except VideoTooShortError as err:
        n = err.num_frames
        if n < 1 or (max_missing is not None and count - n > max_missing):
            raise
    return read_frames(path, indices_for(n)), n


def read_frames_naive(path: str | Path, indices: Sequence[int]) -> np.ndarray:
    """Reference reader: decode AND convert every frame of the video, then pick `indices`.

    Default PyAV settings, no seeking, no early stop: the benchmark baseline and the test reference
    for `read_frames`. Frame folders and images have nothing to skip and use `read_frames`.
    """
    path = Path(path)
    wanted = _check_indices(indices, path)
    if path.is_dir() or path.suffix.lower() in IMAGE_EXTS:
        return read_frames(path, wanted)
    _check_file(path)
    with av.open(str(path)) as container:
        frames = [to_rgb(f) for f in container.decode(video=0)]
    if int(wanted.max()) >= len(frames):
        raise VideoTooShortError(path, int(wanted.max()), len(frames))
    return np.stack([frames[i] for i in wanted])


def count_frames(path: str | Path) -> int:
    """Number of frames of a video, frame folder (img_*.jpg files) or image (1).

    Videos: the container's frame count (`stream.frames`) when it is present and agrees with
    duration x average frame rate to within one frame; otherwise every frame is decoded and
    counted (exact, slower; e.g. Matroska/WebM carry no frame count).
    """
    path = Path(path)
    if path.is_dir():
        return _count_folder_frames(path)
    if path.suffix.lower() in IMAGE_EXTS:
        _check_file(path)
        return 1
    with _open_video(path) as (container, stream):
        return _count_video_frames(container, stream)


def video_fps(path: str | Path) -> float:
    """Frame rate of a video (average rate; else the guessed rate; else frames / duration)."""
    path = Path(path)
    with _open_video(path) as (container, stream):
        return float(_stream_rate(path, stream))


def read_image(path: str | Path, short_side: int | None = None) -> np.ndarray:
    """A still (web) image -> uint8 `(H, W, 3)` RGB, EXIF orientation applied; images under MIN_IMAGE_SIDE fail.

    short_side: the short side the pipeline resizes the image to next (Sec. 3.5: before replication or
    warping). A JPEG at least twice that size is decoded reduced in the DCT domain (Pillow's draft mode: 1/2,
    1/4 or 1/8 scale, the smallest that keeps the short side >= `short_side`), so a 12-megapixel crawl
    image costs a fraction of a full decode; the caller's resize still makes the exact size. The result
    differs from a full decode + resize only by draft mode's DCT averaging (an area-like filter).
    """
    path = Path(path)
    if short_side is None:
        return _load_image(path)
    _check_file(path)
    with Image.open(path) as im:
        w, h = im.size
        if min(w, h) < MIN_IMAGE_SIDE:
            raise ValueError(f"{path}: {w}x{h} image, smaller than {MIN_IMAGE_SIDE} pixels a side")
        if im.format == "JPEG" and min(w, h) >= 2 * short_side:
            scale = short_side / min(w, h)
            im.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
        im = ImageOps.exif_transpose(im)
        return np.asarray(im.convert("RGB"), dtype=np.uint8)   # convert() forces the (reduced) decode


def cut_video(path: str | Path, out_dir: str | Path, seconds: float = 10.0, crf: int = 18) -> int:
    """Sec. 3.5 (3D students): cut a video into `seconds`-long pieces out_dir/part_0.mp4, part_1.mp4, ...

    Piece i holds frames [i * n, (i + 1) * n), n = round(seconds * fps); a tail shorter than n / 2 joins
    the last piece, a video shorter than one piece is one piece. Returns the number of pieces written:
    the layout of MMAction2's RawVideoDataset (list line 'DIR LABEL NUM_PARTS POS_IDX...').
    The pieces are RE-ENCODED (H.264 yuv420p, libx264 `crf`, same frame rate, each piece starts with a
    keyframe): the cuts fall on exact frame boundaries whatever the source's keyframe spacing, and every
    piece decodes on its own. Remuxing packets (no re-encoding, faster) could only cut at keyframes,
    which web videos place every 2-10 s, so pieces would have uneven lengths. Odd frame sizes are
    scaled to the next even size below (yuv420p). Frames are decoded and encoded one at a time, so long
    videos need little memory. On any error, and when the video decodes to fewer frames than its
    container claims (a truncated download: `VideoTooShortError`), the pieces written are removed and
    the error raised.
    """
    path, out_dir = Path(path), Path(out_dir)
    if not seconds > 0:
        raise ValueError(f"cut_video: seconds must be > 0, got {seconds}")
    total = count_frames(path)
    created, written, writer = not out_dir.exists(), [], None
    try:
        with _open_video(path) as (container, stream):
            rate = _stream_rate(path, stream)
            per_piece = max(1, round(seconds * float(rate)))
            num_pieces = max(1, int(total / per_piece + 0.5))
            out_dir.mkdir(parents=True, exist_ok=True)
            for i, frame in enumerate(container.decode(stream)):
                # frame i goes to piece i // n; the last piece takes the tail
                if min(i // per_piece, num_pieces - 1) != len(written) - 1:
                    if writer is not None:
                        writer.close()
                    written.append(out_dir / PART_TMPL.format(len(written)))
                    writer = _PieceWriter(written[-1], rate, frame, crf)
                writer.write(frame)
            if writer is None:
                raise ValueError(f"{path}: no decodable video frames")
            writer.close()
            if writer.count + (len(written) - 1) * per_piece < total:   # cut short: a truncated file
                raise VideoTooShortError(path, total - 1, writer.count + (len(written) - 1) * per_piece)
    except BaseException:
        if writer is not None:
            writer.close(flush=False)
        for part in written:   # leave nothing half-written behind
            part.unlink(missing_ok=True)
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return len(written)


def window_frames(window: tuple[float, float], fps: float, num_frames: int, path: str | Path = "video"
                  ) -> tuple[int, int]:
    """Sec. 3.5 windows: (start, end) seconds -> frame range [first, stop) of the frames k with
    start <= k / fps < end (frame k is shown at k / fps, the frame numbering `cut_video` cuts by), clipped to
    the video's `num_frames`; a bound within WINDOW_TOL of a frame time counts as on it. A window that holds
    no frame is a one-line ValueError naming `path`.
    """
    start, end = window
    first = max(0, math.ceil((start - WINDOW_TOL) * fps))
    stop = min(int(num_frames), math.ceil((end - WINDOW_TOL) * fps))
    if stop <= first:
        raise ValueError(f"{path}: window {start:.3f}:{end:.3f} s holds no frame ({num_frames} frames at "
                         f"{fps:.3f} fps)")
    return first, stop


# ----------------------------------------------------------------------------------------------------------------------
# 3. Annotation lists (MMAction2 formats)
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class Sample:
    """One line of an annotation list, paths joined with the data prefix.

    kind: 'video' | 'untrimmed' | 'frames' | 'image' | 'raw' | 'windows' (see the module docstring).
    num_frames: frame count of a 'frames' folder (from the list), else None.
    pos_clips: 'raw' only: 0-based indices of the positive pieces part_{i}.mp4 (teacher filtered).
    num_parts: 'raw' only: number of pieces part_0.mp4 ... part_{num_parts-1}.mp4.
    frame_scores: a video's 1-FPS teacher scores from the list's sidecar file (Sec. 3.5), else None.
    windows: 'windows' only: ((start, end), ...) seconds of the untrimmed video to sample from (Sec. 3.5).
    """
    path: Path
    label: int
    kind: str
    num_frames: int | None = None
    pos_clips: tuple = ()
    num_parts: int | None = None
    frame_scores: FrameScores | None = None
    windows: tuple = ()


@dataclass(frozen=True)
class FrameScores:
    """Sec. 3.5 / Table 14: teacher scores of the frames of an untrimmed video extracted at a low rate (1 FPS).

    frames: 0-based frame indices (as `read_frames` takes them) of the scored frames, F >= 1.
    scores: (F,) the teacher's probability of the sample's label at each frame, in [0, 1].
    threshold: a frame is positive when its score >= threshold (the filter's threshold).
    """
    frames: tuple
    scores: tuple
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if not self.frames or len(self.frames) != len(self.scores):
            raise ValueError(f"FrameScores: expected as many scores as frames (>= 1), got {len(self.frames)} "
                             f"frames and {len(self.scores)} scores")


def read_list(list_file: str | Path, prefix: str | Path, num_classes: int) -> SampleList:
    """Parse an MMAction2 annotation list (.txt lines or .json dicts) into a compact `SampleList`.

    Same samples, errors and rules as `read_list_samples` (the reference per-line parser), but a .txt list
    is parsed as one bytes buffer: the dominant 'PATH LABEL' lines (printable ASCII, one space, a media
    extension, a decimal label) are split and checked with numpy, vectorised; every other line (frame
    folders, raw pieces, windows, comments, tabs, non-ASCII, anything malformed) goes through the per-line
    parser, which raises the one-line 'FILE:LINE: ...' errors. The paths stay in the file's buffer.
    """
    list_file, prefix = Path(list_file), Path(prefix)
    if not list_file.is_file():
        raise FileNotFoundError(f"annotation list {list_file} not found")
    if list_file.suffix.lower() == ".json":
        samples = SampleList.from_samples(read_list_samples(list_file, prefix, num_classes), prefix)
    else:
        samples = _read_text_list(list_file, prefix, num_classes)
    side = frame_scores_path(list_file)
    if side.is_file() and list_file.suffix.lower() != ".json":
        samples = samples.with_frame_scores(_stream_frame_scores(side))
    _trim_heap()   # the parsing temporaries are freed; give their pages back
    return samples


def read_list_samples(list_file: str | Path, prefix: str | Path, num_classes: int) -> list[Sample]:
    """Reference parser: an MMAction2 annotation list (.txt lines or .json dicts) -> list of `Sample`s.

    Errors are one line naming the file and line (entry) and what was expected. Labels must lie in
    [0, num_classes). Blank lines and lines starting with '#' are skipped. Raw videos without
    positive pieces are skipped (MMAction2 RawVideoDataset, sampling_strategy='positive').
    One Python object per sample: use `read_list` (same samples, compact) for real lists.
    """
    list_file, prefix = Path(list_file), Path(prefix)
    if not list_file.is_file():
        raise FileNotFoundError(f"annotation list {list_file} not found")
    if list_file.suffix.lower() == ".json":
        samples = _read_json_list(list_file, prefix, num_classes)
    else:
        samples = []
        for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
            if line.strip() and not line.lstrip().startswith("#"):
                samples.append(_parse_line(line.split(), f"{list_file}:{lineno}", prefix, num_classes))
    samples = [s for s in samples if s is not None]
    if not samples:
        raise ValueError(f"{list_file}: no samples (empty annotation list)")
    _attach_frame_scores(samples, list_file, prefix)
    return samples


def read_classes(path: str | Path) -> list[str]:
    """Class names, line i = name of label i. `INDEX NAME` lines (UCF101 classInd.txt) also work."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class list {path} not found")
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"{path}: no class names (empty file)")
    heads = [ln.split(maxsplit=1) for ln in lines]
    if all(len(h) == 2 and h[0].isdigit() for h in heads):   # "1 ApplyEyeMakeup" style
        first = int(heads[0][0])
        if [int(h[0]) for h in heads] == list(range(first, first + len(heads))) and first in (0, 1):
            lines = [h[1] for h in heads]
    _check_class_names(lines, path, file=True)
    return lines


def frame_scores_path(list_file: str | Path) -> Path:
    """The sidecar of an annotation list: DIR/train.txt -> DIR/train_frame_scores.json (Sec. 3.5)."""
    list_file = Path(list_file)
    return list_file.with_name(FRAME_SCORES_TMPL.format(stem=list_file.stem))


def write_frame_scores(path: str | Path, videos: dict[str, FrameScores], fps: float = 1.0) -> None:
    """Write a frame-score sidecar (atomically, `write_atomic`): {format, fps, videos: {LIST PATH: {frames, scores,
    threshold}}}.

    LIST PATH is a video's path exactly as its list line writes it (relative to the data prefix).
    """
    head = json.dumps({"format": FRAME_SCORES_FORMAT, "fps": fps, "about": "Sec. 3.5 untrimmed videos: "
                       "teacher probability of the line label at each low-rate frame"})
    rows = [f"  {json.dumps(k)}: " + json.dumps({"frames": [int(f) for f in v.frames], "threshold": float(v.threshold),
                                                "scores": [round(float(x), 6) for x in v.scores]})
            for k, v in videos.items()]   # one line per video
    write_atomic(path, head[:-1] + ', "videos": {\n' + ",\n".join(rows) + "\n}}\n")


def read_frame_scores(path: str | Path) -> dict[str, FrameScores]:
    """Read a sidecar written by `write_frame_scores` -> {list path: FrameScores}; one-line errors."""
    path = Path(path)
    try:
        body = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a valid frame-score JSON file ({err})") from None
    if not isinstance(body, dict) or body.get("format") != FRAME_SCORES_FORMAT or \
            not isinstance(body.get("videos"), dict):
        raise ValueError(f'{path}: expected a JSON object with "format": "{FRAME_SCORES_FORMAT}" and a '
                         f'"videos" object (written by filter.py)')
    return {key: _frame_scores_entry(path, key, e) for key, e in body["videos"].items()}


def _frame_scores_entry(path: Path, key: str, e: object) -> FrameScores:
    """One video of a sidecar -> FrameScores, else a one-line ValueError."""
    try:
        frames = tuple(_parse_int(f, f"{path}: video {key}", "frame index", 0) for f in e["frames"])
        return FrameScores(frames, tuple(float(x) for x in e["scores"]), float(e["threshold"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: video {key!r}: expected frames (ints >= 0), as many scores and a "
                         f"threshold ({err})") from None


def _stream_frame_scores(path: Path) -> Iterator[tuple[str, FrameScores]]:
    """(list path, FrameScores) of a sidecar one video at a time, in the one-video-per-line layout that
    `write_frame_scores` writes (peak memory: one video); any other layout is read whole (`read_frame_scores`)."""
    tail = ', "videos": {'
    with path.open("rb") as f:
        head = f.readline().decode("utf-8", errors="replace").rstrip("\n")
        try:
            ok = head.endswith(tail) and json.loads(head[:-len(tail)] + "}").get("format") == FRAME_SCORES_FORMAT
        except (json.JSONDecodeError, AttributeError):
            ok = False
        if ok:
            for raw in f:
                line = raw.decode("utf-8", errors="replace").strip()
                if line == "}}":
                    return
                if line:
                    try:
                        (key, e), = json.loads("{" + line.rstrip(",") + "}").items()
                    except (json.JSONDecodeError, ValueError):
                        break   # not this layout after all: the whole-file reader decides (a consumer that
                    yield key, _frame_scores_entry(path, key, e)   # builds a dict sees repeats harmlessly)
    yield from read_frame_scores(path).items()


# ----------------------------------------------------------------------------------------------------------------------
# 4. Datasets by name (paper Sec. 4, appendix Table 11)
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class SplitSpec:
    """One split: an annotation list and the folder its paths are relative to."""
    list_file: Path
    prefix: Path


@dataclass
class DatasetSpec:
    """A resolved dataset: class names and, per split ('train', 'val', ...), list file + data prefix."""
    name: str
    root: Path
    classes: list[str]
    splits: dict[str, SplitSpec] = field(default_factory=dict)
    layout: str = "plain"    # 'plain' or the LAYOUTS key
    filtered: bool = False   # the teacher-filtered list of a web source was selected


# LAYOUTS: the released layouts of the paper's datasets (Sec. 4, Table 11); every path is relative to
# DATA_ROOT. Keys: 'root' (the dataset's folder), 'about', 'classes' (candidate class-name files, the
# first found wins), 'classes_from' (else: sorted sub-folders of this folder, MMAction2's label order),
# 'splits' (split -> (list file, data prefix)), 'filtered' (the teacher-filtered train list, Sec. 3.4;
# the released `*_wodup.txt` lists are also de-duplicated against k200_val), 'folder' (web source
# folder). A data prefix of None means OmniSource/ when the list's first path starts with `folder`
# (as in MMAction2's webimage_200 union list), else OmniSource/<folder>/.
_ANN = "OmniSource/annotations"
_K200_CLASSES = (f"{_ANN}/k200_actions.txt", "OmniSource/classes.txt")
_K400_CLASSES = ("kinetics400/classes.txt", "kinetics400/label_map_k400.txt",
                 f"{_ANN}/label_map_k400.txt")
LAYOUTS: dict[str, dict] = {
    "k400": dict(
        root="kinetics400",
        about="Kinetics-400 trimmed 10-s clips, K400-tr (Sec. 4.1); MMAction2 data/kinetics400; "
              "class names: MMAction2 tools/data/kinetics/label_map_k400.txt copied in",
        classes=_K400_CLASSES,
        splits={"train": ("kinetics400/kinetics400_train_list_videos.txt", "kinetics400/videos_train"),
                "val": ("kinetics400/kinetics400_val_list_videos.txt", "kinetics400/videos_val")}),
    "k200": dict(
        root="OmniSource",
        about="Mini-Kinetics (200 classes), target of the released OmniSource subset",
        classes=_K200_CLASSES,
        splits={"train": (f"{_ANN}/kinetics_200/k200_train.txt", "OmniSource/kinetics_200_train"),
                "val": (f"{_ANN}/kinetics_200/k200_val.txt", "OmniSource/kinetics_200_val")}),
    "ucf101": dict(
        root="ucf101",
        about="UCF101 split 1 (Table 11, transfer); MMAction2 data/ucf101",
        classes=("ucf101/classes.txt", "ucf101/annotations/classInd.txt"),
        classes_from="ucf101/videos",
        splits={"train": ("ucf101/ucf101_train_split_1_videos.txt", "ucf101/videos"),
                "val": ("ucf101/ucf101_val_split_1_videos.txt", "ucf101/videos")}),
    "hmdb51": dict(
        root="hmdb51",
        about="HMDB51 split 1 (transfer); MMAction2 data/hmdb51",
        classes=("hmdb51/classes.txt",),
        classes_from="hmdb51/videos",
        splits={"train": ("hmdb51/hmdb51_train_split_1_videos.txt", "hmdb51/videos"),
                "val": ("hmdb51/hmdb51_val_split_1_videos.txt", "hmdb51/videos")}),
    "gg": dict(
        root="OmniSource", folder="googleimage_200",
        about="GoogleImage web images, GG-k400 (Sec. 4.2); released googleimage_200",
        classes=_K200_CLASSES,
        splits={"train": (f"{_ANN}/googleimage_200/googleimage_200.txt", None)},
        filtered=f"{_ANN}/googleimage_200/tsn_8seg_googleimage_200_wodup.txt"),
    "ig-img": dict(
        root="OmniSource", folder="insimage_200",
        about="Instagram images, IG-img (Sec. 4.2); released insimage_200",
        classes=_K200_CLASSES,
        splits={"train": (f"{_ANN}/insimage_200/insimage_200.txt", None)},
        filtered=f"{_ANN}/insimage_200/tsn_8seg_insimage_200_wodup.txt"),
    "web-img": dict(
        root="OmniSource",
        about="GG + IG-img union (MMAction2 webimage_200); only the filtered list is released, "
              "its paths start with 'googleimage_200/' or 'insimage_200/'",
        classes=_K200_CLASSES,
        splits={"train": (f"{_ANN}/webimage_200/tsn_8seg_webimage_200_wodup.txt", "OmniSource")},
        filtered=f"{_ANN}/webimage_200/tsn_8seg_webimage_200_wodup.txt"),
    "ig-vid": dict(
        root="OmniSource", folder="insvideo_200",
        about="Instagram trimmed videos, IG-vid (Sec. 4.2); released insvideo_200",
        classes=_K200_CLASSES,
        splits={"train": (f"{_ANN}/insvideo_200/insvideo_200.txt", None)},
        filtered=f"{_ANN}/insvideo_200/slowonly_8x8_insvideo_200_wodup.txt"),
    "k200-raw": dict(
        root="OmniSource",
        about="Kinetics-200 untrimmed videos in 10-s pieces (Sec. 3.5, RawVideoDataset); only the "
              "filtered JSON is released; the unfiltered list is yours to write (all pieces positive)",
        classes=_K200_CLASSES,
        splits={"train": (f"{_ANN}/kinetics_raw_200/kinetics_raw_200.txt",
                          "OmniSource/kinetics_raw_200_train")},
        filtered=f"{_ANN}/kinetics_raw_200/slowonly_8x8_kinetics_raw_200.json"),
    "k400-untr": dict(
        root="OmniSource",
        about="K400-untr, the rest of the K400 training videos (Sec. 4.1); not released: mirrors "
              "k200-raw; lines 'untrimmed/ID.mp4 LABEL' (whole video) or 'DIR LABEL NUM_PARTS POS...'",
        classes=_K400_CLASSES,
        splits={"train": (f"{_ANN}/kinetics_raw_400/kinetics_raw_400.txt",
                          "OmniSource/kinetics_raw_400_train")},
        filtered=f"{_ANN}/kinetics_raw_400/slowonly_8x8_kinetics_raw_400.json"),
}
PLAIN_LAYOUT = "DATA_ROOT/NAME/ with classes.txt (line i = name of label i), train.txt and val.txt"


def resolve_dataset(data_root: str | Path, name: str, filtered: bool = False) -> DatasetSpec:
    """Find dataset `name` under `data_root` -> DatasetSpec (class names read, lists not yet read).

    A plain folder DATA_ROOT/NAME/ with classes.txt wins over a layout name. `filtered=True` or the
    name suffix ':filtered' ('gg:filtered') selects a web source's teacher-filtered train list.

    name       list files (A = DATA_ROOT/OmniSource/annotations)        data prefix (under DATA_ROOT)
    NAME       NAME/{train,val,test}.txt (+ NAME/classes.txt)           NAME/
    k400       kinetics400/kinetics400_{train,val}_list_videos.txt      kinetics400/videos_{train,val}/
    k200       A/kinetics_200/k200_{train,val}.txt                      OmniSource/kinetics_200_{train,val}/
    ucf101     ucf101/ucf101_{train,val}_split_1_videos.txt             ucf101/videos/
    hmdb51     hmdb51/hmdb51_{train,val}_split_1_videos.txt             hmdb51/videos/
    gg         A/googleimage_200/googleimage_200.txt                    OmniSource/[googleimage_200/]
      filtered A/googleimage_200/tsn_8seg_googleimage_200_wodup.txt
    ig-img     A/insimage_200/insimage_200.txt                          OmniSource/[insimage_200/]
      filtered A/insimage_200/tsn_8seg_insimage_200_wodup.txt
    web-img    A/webimage_200/tsn_8seg_webimage_200_wodup.txt           OmniSource/
    ig-vid     A/insvideo_200/insvideo_200.txt                          OmniSource/[insvideo_200/]
      filtered A/insvideo_200/slowonly_8x8_insvideo_200_wodup.txt
    k200-raw   A/kinetics_raw_200/kinetics_raw_200.txt                  OmniSource/kinetics_raw_200_train/
      filtered A/kinetics_raw_200/slowonly_8x8_kinetics_raw_200.json
    k400-untr  A/kinetics_raw_400/kinetics_raw_400.txt                  OmniSource/kinetics_raw_400_train/
      filtered A/kinetics_raw_400/slowonly_8x8_kinetics_raw_400.json
    Class names: k400 / k400-untr kinetics400/classes.txt or label_map_k400.txt; k200 and the web
    sources OmniSource/annotations/k200_actions.txt; ucf101 annotations/classInd.txt or the sorted
    class folders of videos/ (hmdb51 likewise). See LAYOUTS for every candidate.
    """
    data_root = Path(data_root)
    if name.endswith(":filtered"):
        name, filtered = name[:-len(":filtered")], True
    plain = data_root / name
    if name and (plain / "classes.txt").is_file():
        return _resolve_plain(plain, name, filtered)
    if name not in LAYOUTS and name and plain.is_dir():
        raise FileNotFoundError(f"dataset {name}: {plain}/classes.txt not found (a plain dataset "
                                f"folder needs classes.txt, train.txt and val.txt)")
    if name not in LAYOUTS:
        raise ValueError(f"unknown dataset {name!r} under {data_root}: known names are "
                         f'{", ".join(LAYOUTS)} (a web source\'s teacher-filtered list: NAME:filtered), '
                         f"or make a plain folder {PLAIN_LAYOUT}")
    return _resolve_layout(data_root, name, filtered)


def load_split(dataset: DatasetSpec, split: str) -> SampleList:
    """Read split `split` of a resolved dataset -> compact `SampleList` (labels checked against classes)."""
    if split not in dataset.splits:
        if dataset.layout == "plain":
            raise FileNotFoundError(f'dataset {dataset.name}: list file {Path(dataset.root) / (split + ".txt")} '
                                    f"not found (expected {PLAIN_LAYOUT})")
        raise ValueError(f"dataset {dataset.name}: no split {split!r}; available: "
                         f'{", ".join(dataset.splits) or "none"}')
    s = dataset.splits[split]
    return read_list(s.list_file, s.prefix, len(dataset.classes))


def motion_path(dataset: DatasetSpec) -> Path:
    """Where a dataset's camera-motion Gaussian of Eq. 2 lives: DATA_ROOT/<its folder>/motion.json (a plain
    dataset's NAME/, a layout's 'root': kinetics400/ for k400, OmniSource/ for k200). `omnisource.py
    --estimate-motion` writes it there and `train.py --image-to-clip warp-*` reads it from there, without --motion."""
    return Path(dataset.root) / "motion.json"


def map_labels(samples: SampleList, source_classes: Sequence[str], target_classes: Sequence[str], source: str
               ) -> tuple[SampleList, int]:
    """Translate a source's labels into the target's label space by class name -> (samples, num_left_out).

    Label l of the source (class `source_classes[l]`) becomes the target label of the class with the same
    name, ignoring case, '_' and spaces (`_class_key`: 'air drumming' = 'air_drumming' = 'airdrumming' =
    'Air Drumming'), so K200's 200 web classes land on their places among K400's 400. Two names of one list
    that are the same class under that rule are a one-line ValueError. Samples whose class is not a class of
    the target are left out; their number is returned. `samples`: a `SampleList` (what `load_split` gives;
    the result is one too, sharing nothing per sample) or a list of `Sample`s. `source` names the source
    in the one-line ValueError raised when no class name is shared (e.g. '--aux gg').
    """
    _check_class_names(source_classes, source)
    _check_class_names(target_classes, "the target")
    index = {_class_key(name): i for i, name in enumerate(target_classes)}
    table = np.array([index.get(_class_key(n), -1) for n in source_classes], dtype=np.int64)
    if not (table >= 0).any():
        raise ValueError(f"{source}: none of its {len(source_classes)} classes ({_preview(source_classes)}) "
                         f"is a class of the target ({_preview(target_classes)})")
    labels = labels_of(samples)
    if labels.size and not (0 <= labels.min() and labels.max() < len(source_classes)):
        bad = int(labels[(labels < 0) | (labels >= len(source_classes))][0])
        raise ValueError(f"{source}: label {bad} is outside its {len(source_classes)} classes")
    mapped = table[labels]
    keep = np.flatnonzero(mapped >= 0)
    if isinstance(samples, SampleList):
        return samples.subset(keep, labels=mapped[keep]), len(labels) - len(keep)
    return [dataclasses.replace(samples[i], label=int(mapped[i])) for i in keep], len(labels) - len(keep)


def class_order(checkpoint_classes: Sequence[str], dataset_classes: Sequence[str], where: str) -> np.ndarray:
    """Where each of the dataset's classes is among a checkpoint's, by name -> order (K,) int64.

    order[i] is the checkpoint's output index of class `dataset_classes[i]`: a model's outputs `(N, K)` read
    as `outputs[:, order]` (or its classifier rows `fc.weight[order]`) are in the dataset's order. Names are
    compared as `map_labels` compares them (`_class_key`). The same names in another order are permuted;
    names that differ, or that repeat after normalisation, are a one-line ValueError starting with `where`
    (e.g. the checkpoint's path) naming what differs.
    """
    _check_class_names(checkpoint_classes, f"{where}: the checkpoint")
    _check_class_names(dataset_classes, f"{where}: the dataset")
    ours, theirs = [_class_key(n) for n in checkpoint_classes], [_class_key(n) for n in dataset_classes]
    if set(ours) != set(theirs):                  # named as written, not as compared
        only_ckpt = [n for n, k in zip(checkpoint_classes, ours) if k not in set(theirs)]
        only_data = [n for n, k in zip(dataset_classes, theirs) if k not in set(ours)]
        raise ValueError(f"{where}: its {len(ours)} classes are not the dataset's {len(theirs)}: only in the "
                         f"checkpoint: {_preview(only_ckpt) or '-'}; only in the dataset: {_preview(only_data) or '-'}")
    index = {name: i for i, name in enumerate(ours)}
    return np.array([index[name] for name in theirs], dtype=np.int64)


# ----------------------------------------------------------------------------------------------------------------------
# 5. Dataset
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class Sampling:
    """Frame sampling of one item: `num_clips` clips of `clip_len` frames `frame_interval` apart.

    TSN: clip_len=1, frame_interval=1, num_clips=segments (3 train / 25 test). SlowOnly 4x16:
    clip_len=4, frame_interval=16, num_clips=1 train / 10 test.
    """
    clip_len: int = 1
    frame_interval: int = 1
    num_clips: int = 3

    @property
    def num_frames(self) -> int:
        return self.clip_len * self.num_clips


class VideoDataset(torch.utils.data.Dataset):
    """Samples of any kind -> `(clip tensor, label, index)` through `transform`.

    Each item gets its own numpy Generator from (seed, epoch, index): frame sampling, the raw piece
    choice and (when they take an `rng` keyword) `transform` / `image_to_clip` draw from it, so
    items do not depend on DataLoader workers or on the order they are read in; `set_epoch`
    changes them per epoch. Train: random sampling; test: MMAction2's deterministic test sampling.
    Kinds: video / untrimmed (sampled over the whole video), frames (folder, count from the list),
    image (`image_to_clip(image, clip_len * num_clips)`; default `transforms.image_to_clip`, the still clip of
    Sec. 3.5: the image repeated), raw (a random positive piece in training,
    the first positive piece in testing; MMAction2 RawVideoDataset), windows (a random window in
    training, the first in testing; sampled like a video over that window's frames only, decoded from
    the untrimmed file with seeking). `samples`: a `SampleList` (kept as is: workers share it) or
    `Sample`s (converted to one).
    image_short_side: the short side the pipeline resizes images to (`transforms.short_side_for(crop)`):
    large JPEGs are then decoded reduced (`read_image`, draft mode), many times faster for crawled photos.
    Sec. 3.5 / Table 14: `snippet(scores (F,), label, rng=..., threshold=...) -> positions (num_clips,)`
    (e.g. `functools.partial(transforms.select_snippet, mode='1p2n')`) builds the TSN input of a
    sample that carries `frame_scores` (1-FPS frames of an untrimmed video, scored by filter.py's
    teacher) from those frames: the frames at the chosen positions are decoded, in that order. It
    applies to TSN sampling (clip_len == 1) only; without it such samples are sampled like videos.
    A sample that fails to load (missing, empty, truncated, not a video, corrupt image) is replaced
    by another sample, chosen deterministically from the index; the returned index and label are
    the replacement's. With replace_failed=False (evaluation: nothing is scored under another video's
    label) it is not: the item is `(None, label, index)`, and the caller leaves it out and counts it.
    Failures are logged once per path (`failed_paths`, `num_replaced`: this process)
    and counted in `num_failed`: one byte per sample in shared memory that any process (DataLoader
    workers included) sets when the sample fails, so each bad sample counts once, exactly, and the
    other workers skip it without a second attempt or log line.
    """

    def __init__(self, samples: Sequence[Sample], sampling: Sampling, transform: Callable | None = None,
                 test_mode: bool = False, image_to_clip: Callable = transforms.image_to_clip, seed: int = 0,
                 snippet: Callable | None = None, image_short_side: int | None = None, replace_failed: bool = True):
        if not samples:
            raise ValueError("VideoDataset: no samples")
        if seed < 0:
            raise ValueError(f"VideoDataset: seed must be >= 0, got {seed}")
        self.snippet = snippet if sampling.clip_len == 1 else None
        if self.snippet is not None:
            _check_snippet(self.snippet, sampling.num_clips)
        self.samples, self.sampling, self.test_mode = samples, sampling, test_mode
        self.transform, self.image_to_clip, self.seed = transform, image_to_clip, seed
        self.replace_failed = replace_failed
        self.image_short_side = image_short_side   # JPEGs decoded reduced to about this short side (`read_image`)
        # the epoch lives in shared memory too: persistent DataLoader workers see set_epoch's value
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._transform_rng = transform is not None and _takes_rng(transform)
        self._image_rng = _takes_rng(image_to_clip)
        self._image_label = _takes(image_to_clip, "label")   # class-specific camera motion (Table 8)
        self.failed_paths: list[str] = []
        self.num_replaced = 0
        self._bad: dict[int, str] = {}         # index -> error message, this process
        self._counts: dict[str, int] = {}      # video path -> frame count cache

    @property
    def samples(self) -> SampleList:
        """The samples as a compact `SampleList` (a list of `Sample`s assigned here is converted)."""
        return self._samples

    @samples.setter
    def samples(self, samples: SampleList | Sequence[Sample]) -> None:
        self._samples = samples if isinstance(samples, SampleList) else SampleList.from_samples(samples)
        # one byte per sample in shared memory, set (never incremented) by whichever process fails to read it:
        # a plain store, so DataLoader workers cannot lose each other's updates, and a sample counts once
        if getattr(self, "_failed", None) is None or len(self._failed) != len(self._samples):
            self._failed = torch.zeros(len(self._samples), dtype=torch.uint8).share_memory_()

    @property
    def num_failed(self) -> int:
        """Samples that failed to load in this process or any of its DataLoader workers, each counted once."""
        return int(torch.count_nonzero(self._failed))

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's randomness (call before each epoch, in the main process; workers,
        persistent ones included, read it from shared memory)."""
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, int]:
        frames, label, used, rng = self._load_with_replacement(index)
        if frames is None:                  # unreadable, and replace_failed=False
            return None, label, used
        if self.transform is None:
            clip = torch.from_numpy(np.ascontiguousarray(frames))
        else:
            clip = self.transform(frames, rng=rng) if self._transform_rng else self.transform(frames)
        return clip, label, used

    def load(self, index: int) -> tuple[np.ndarray | None, int, int]:
        """Frames uint8 `(T, H, W, 3)` of item `index` before the transform, its label and the
        index actually used (differs when the sample failed and was replaced; frames None when it failed
        and replace_failed is False)."""
        frames, label, used, _ = self._load_with_replacement(index)
        return frames, label, used

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def _load_with_replacement(self, index: int) -> tuple[np.ndarray, int, int, np.random.Generator]:
        """Load `index`; on failure try others in a fixed order (index + k*stride mod n), or with
        replace_failed=False none: frames None, `index`'s label."""
        n = len(self.samples)
        if not 0 <= index < n:
            raise IndexError(f"VideoDataset: index {index} out of range [0, {n})")
        stride = _coprime_stride(n)
        for k in range(n if self.replace_failed else 1):
            j = (index + k * stride) % n
            if j in self._bad or self._failed[j]:   # known bad here, or in another worker
                continue
            rng, sample = self._rng(j), self.samples[j]
            try:   # only reading is guarded: errors of image_to_clip / transform are bugs, raised
                frames = self._load_sample(sample, rng)
            except Exception as err:   # PyAV, Pillow and the OS raise many unrelated types
                self._record_failure(j, err)
                continue
            if sample.kind == "image":   # Sec. 3.5: image (H, W, 3) -> clip (T, H, W, 3)
                kw = {"rng": rng} if self._image_rng else {}
                if self._image_label:
                    kw["label"] = sample.label
                frames = np.asarray(self.image_to_clip(frames, self.sampling.num_frames, **kw),
                                    dtype=np.uint8)
            self.num_replaced += int(j != index)
            return frames, sample.label, j, rng
        if not self.replace_failed:
            return None, int(self.samples.labels[index]), index, self._rng(index)
        first = self.failed_paths[0] if self.failed_paths else "?"
        raise RuntimeError(f"VideoDataset: all {n} samples failed to load (first: {first}: "
                           f'{next(iter(self._bad.values()), "?")})')

    def _record_failure(self, j: int, err: Exception) -> None:
        path = str(self.samples.path(j))
        self._bad[j] = f"{type(err).__name__}: {err}"
        self.failed_paths.append(path)
        self._failed[j] = 1
        logger.warning("failed to load %s (%s); it is %s (%d failed so far)", path, self._bad[j],
                       "replaced by another sample" if self.replace_failed else "left out", self.num_failed)

    def _load_sample(self, s: Sample, rng: np.random.Generator) -> np.ndarray:
        """Decode one sample: frames uint8 `(clip_len * num_clips, H, W, 3)`, an image `(H, W, 3)`."""
        if s.kind == "image":
            return read_image(s.path, self.image_short_side)
        if s.kind == "frames":
            idx = self._sample(s.num_frames, rng)
            return read_frames(s.path, idx)
        if s.frame_scores is not None and self.snippet is not None:   # Sec. 3.5, Table 14 snippet
            fs = s.frame_scores
            pos = self.snippet(np.asarray(fs.scores), s.label, rng=rng, threshold=fs.threshold)
            return read_frames(s.path, np.asarray(fs.frames)[np.asarray(pos, dtype=np.int64)])
        path, window = s.path, None
        if s.kind == "raw":
            part = s.pos_clips[0] if self.test_mode else int(rng.choice(s.pos_clips))
            path = s.path / PART_TMPL.format(part)
        elif s.kind == "windows":   # Sec. 3.5, 3D students: one positive window of the untrimmed video
            window = s.windows[0] if self.test_mode else s.windows[int(rng.integers(len(s.windows)))]
        return self._load_video(path, rng, window)

    def _load_video(self, path: Path, rng: np.random.Generator, window: tuple | None = None) -> np.ndarray:
        """Count (cached per path), sample and decode a video with one open container.

        window (start, end) seconds: sample over the frames k with start <= k / fps < end (`window_frames`)
        only, decoded from the whole file with seeking (absolute frame indices).
        """
        key = str(path)
        with _open_video(path) as (container, stream):
            # a window needs only an upper bound: the container's count or duration x rate (counting an untrimmed
            # .webm / .mkv by decoding would cost minutes per worker); decoding corrects an optimistic one below
            total = self._counts.get(key) or (_metadata_frames(container, stream) if window is not None else None)
            if total is None:
                total = self._counts[key] = _count_video_frames(container, stream)
            fps = float(_stream_rate(path, stream)) if window is not None else 0.0

            def indices_for(num_frames: int) -> np.ndarray:     # this item's frames of a video of num_frames
                first, stop = (0, num_frames) if window is None else window_frames(window, fps, num_frames, path)
                return first + self._sample(stop - first, rng)

            frames, count = read_frames_lenient(path, total, indices_for,
                                                read=lambda indices: _decode_video(container, stream, path, indices))
        if count != total:                                       # the container's frame count was optimistic
            self._counts[key] = count
        return frames

    def _sample(self, num_frames: int, rng: np.random.Generator) -> np.ndarray:
        sp = self.sampling
        return sample_frames(num_frames, sp.clip_len, sp.frame_interval, sp.num_clips,
                             self.test_mode, rng)


# ----------------------------------------------------------------------------------------------------------------------
# 7. Preparing a dataset for fast training: `python data.py prepare`
# ----------------------------------------------------------------------------------------------------------------------

PREPARE_FORMATS = ("frames", "video")
PREPARE_REPORT = "prepare_report.json"   # DIR2/NAME/: the settings, the broken files and why, the figures
PREPARE_CRF = 18            # x264 CRF of re-encoded videos (cut_video's); --quality replaces it with --format video
PREPARE_JPEG_QUALITY = 90   # JPEG quality of frames and web images; --quality replaces it with --format frames
# the training pipelines `prepare` measures (models.ARCHS tsn_r50 / slowonly_r50_4x16; data.py does not import models)
PREPARE_PIPELINES = {"TSN 3 seg": ("tsn", Sampling(1, 1, 3)), "SlowOnly 4x16": ("3d", Sampling(4, 16, 1))}
_TMP_TAG = ".tmp-"   # .NAME.tmp-PID: a file (`write_atomic`) or prepared output being written; never a finished one


@dataclass
class PrepareConfig:
    """How `prepare_dataset` writes a dataset (MMAction2's advice: resize, re-encode densely or extract frames).

    format: 'frames' (MMAction2 frame folders img_00001.jpg ..., JPEG `jpeg_quality`; the least CPU per training
    sample) or 'video' (H.264 yuv420p, libx264 CRF `crf`, a keyframe every `gop` frames, 0 = every frame, no
    B-frames, x264's fastdecode tuning: no CABAC, no deblocking; the least disk).
    short_side: frames larger than this are resized to it (transforms.Resize, the training pipeline's first step,
    which then has nothing left to do); smaller ones keep their size (videos: cropped to even sides).
    quality: CRF with format 'video', JPEG quality with format 'frames' (None: PREPARE_CRF / PREPARE_JPEG_QUALITY).
    workers: processes; measure: training samples timed before and after (0: none).
    """
    format: str = "frames"
    short_side: int = 256
    gop: int = 16
    quality: int | None = None
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    measure: int = 8

    @property
    def crf(self) -> int:
        return self.quality if self.format == "video" and self.quality is not None else PREPARE_CRF

    @property
    def jpeg_quality(self) -> int:
        return self.quality if self.format == "frames" and self.quality is not None else PREPARE_JPEG_QUALITY

    def settings(self) -> dict:
        """What the outputs depend on: a rerun into the same --out must have the same."""
        return {"format": self.format, "short_side": self.short_side, "gop": self.gop, "crf": self.crf,
                "jpeg_quality": self.jpeg_quality}


@dataclass(frozen=True)
class _Job:
    """One source file (or frame folder) -> one output: form 'video' (an .mp4), 'frames' (a frame folder decoded
    from a video), 'image' (a JPEG) or 'folder' (a frame folder copied, resized when larger; num_frames frames)."""
    form: str
    src: str
    dst: str
    num_frames: int = 0


def prepare_dataset(data_root: str | Path, name: str, out: str | Path, cfg: PrepareConfig) -> dict:
    """Write dataset `name` of `data_root` under `out` in the same layout, ready to train from fast -> the report.

    1. every split's list (as `resolve_dataset` finds it) is read; each sample becomes one output per source file,
       at the same path relative to the data root (videos .mp4, frame folders without the extension, images .jpg):
       videos and untrimmed videos become frame folders ('frames'; a video with frame scores stays a video, Sec. 3.5
       snippets read video frames) or re-encoded videos ('video'); untrimmed videos with windows and raw pieces
       (part_N.mp4) are always re-encoded whole, their windows kept (frame k stays at k / fps); web images are
       resized JPEGs; frame folders are copied (resized when larger);
    2. every source is decoded once, in `cfg.workers` processes with a progress line; an output is written under a
       temporary name, flushed to disk (fsync) and renamed, so after a kill (SIGKILL included) the same call skips
       the finished outputs and writes the rest: the result equals an uninterrupted run's;
    3. a source that fails (unreadable, truncated: fewer frames than its container claims) is listed with the reason
       in OUT/NAME/prepare_report.json and its samples are left out of the lists; nothing under data_root changes;
    4. the lists (same lines, new paths; frame folders 'PATH COUNT LABEL'), class names, sidecars are written;
    5. the CPU ms per training sample (`worker_cpu_ms`, TSN 3 seg and SlowOnly 4x16 at crop short_side * 224 / 256)
       on the first `cfg.measure` training samples before and after, and the disk per hour of video, are printed.
    """
    data_root, out = Path(data_root), Path(out)
    _check_prepare(data_root, out, cfg)
    spec = resolve_dataset(data_root, name)
    report_path = out / spec.name / PREPARE_REPORT
    _claim_out(report_path, cfg)
    lists, jobs, failed = _prepare_plan(spec, data_root, out, cfg)
    print(f"prepare {name}: {len(jobs)} source files of {sum(len(x['samples']) for x in lists)} samples in "
          f"{len(lists)} lists -> {out} ({cfg.format}, short side {cfg.short_side}"
          + (f", keyframe every {cfg.gop or 1} frames, CRF {cfg.crf}" if cfg.format == "video" else
             f", JPEG quality {cfg.jpeg_quality}") + f"), {cfg.workers} workers", flush=True)
    results = _run_jobs(list(jobs.values()), cfg)
    failed.update({job.src: r["error"] for job, r in zip(jobs.values(), results) if "error" in r})
    done = {job.dst: r for job, r in zip(jobs.values(), results) if "error" not in r}
    splits = {x["split"]: _write_prepared_list(x, done, failed, out) for x in lists}
    kept = {split: s.pop("kept") for split, s in splits.items()}   # source indices of the samples written
    _copy_dataset_files(spec, data_root, out, lists)
    report = {"dataset": name, "data_root": str(data_root), "out": str(out), "settings": cfg.settings(),
              "splits": splits, "failed": [{"path": _rel(p, data_root), "reason": failed[p]} for p in sorted(failed)],
              "disk": _disk_figures(jobs, done)}
    report["cpu_ms_per_sample"] = _measure_prepared(spec, resolve_dataset(out, name), cfg, kept.get("train", []))
    write_atomic(report_path, json.dumps(report, indent=1) + "\n")
    _print_prepare_summary(report, report_path)
    return report


def worker_cpu_ms(dataset: torch.utils.data.Dataset, count: int) -> list[float]:
    """CPU milliseconds (process time) of reading each of items 0..count-1 of `dataset` in ONE DataLoader worker, as
    a training worker reads them (one torch thread, WORKER_CODEC_THREADS decoder threads), after one untimed read
    of item 0 (imports, first file open)."""
    loader = torch.utils.data.DataLoader(_CpuTimed(dataset, count), batch_size=None, num_workers=1)
    return [1000.0 * t for t in list(loader)[1:]]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python data.py", description="Dataset tools of omnisource (README 'Data layouts').")
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("prepare", help="write a dataset again so that training reads it fast (frame folders or "
                       "dense H.264)", description="Write a dataset again under --out in the same layout (lists, "
                       "classes, folders), as frame folders or densely keyed H.264 at the recipes' short side, so "
                       "that training reads it fast; broken files are reported in OUT/NAME/prepare_report.json.")
    q.add_argument("--data-root", required=True, help="folder holding the dataset (as train.py's --data-root)")
    q.add_argument("--dataset", required=True, help="dataset name under --data-root: a plain folder NAME/ or a "
                   "layout (k400, k200, ucf101, hmdb51, gg, ig-img, web-img, ig-vid, k200-raw, k400-untr; 'NAME:filtered' "
                   "for a web source's filtered list)")
    q.add_argument("--out", required=True, help="folder to write to (then train with --data-root OUT); the same "
                   "command continues an interrupted run")
    q.add_argument("--format", choices=PREPARE_FORMATS, default="frames", help="frames (default): JPEG frame folders, "
                   "the least CPU per sample, ~2.1 GB per hour of 340x256 video; video: H.264 re-encoded, ~0.5 GB/h "
                   "with --gop 16, ~0.8 all-intra (README 'Feeding the GPU')")
    q.add_argument("--short-side", type=int, default=256, help="resize frames larger than this to this short side "
                   "(default %(default)s: crop 224; 320 for the --crop-size 280 models)")
    q.add_argument("--gop", type=int, default=16, help="--format video: a keyframe every N frames, 0: every frame "
                   "(all-intra) (default %(default)s)")
    q.add_argument("--quality", type=int, default=None, help=f"x264 CRF with --format video (default {PREPARE_CRF}; "
                   f"lower = better), JPEG quality with --format frames (default {PREPARE_JPEG_QUALITY})")
    q.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: the number of "
                   "cores)")
    q.add_argument("--measure", type=int, default=8, help="training samples whose CPU time is measured before and "
                   "after (default %(default)s; 0: none)")
    return p


def cli(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    cfg = PrepareConfig(args.format, args.short_side, args.gop, args.quality, args.workers, args.measure)
    try:
        prepare_dataset(args.data_root, args.dataset, args.out, cfg)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")


# ----------------------------------------------------------------------------------------------------------------------
# Machinery: the compact annotation list. A reader of the method may stop here: what follows is how a list of
# millions of web samples is held (flat arrays shared by forked workers, Sec. 4 at web scale), then private helpers.
# ----------------------------------------------------------------------------------------------------------------------

class SampleList:
    """An annotation list as a few flat numpy arrays: no Python object per sample (Sec. 4 at web scale).

    DataLoader workers are forked copies of the main process; reading a Python object writes its reference
    count, so a list of per-sample objects is copied page by page into every worker that touches it. Here
    the paths of all samples live in ONE bytes object (`buf`; for a .txt list, the file's own bytes) and
    every per-sample field is an element of a numpy array, so reading samples writes nothing and the
    workers share the parent's pages. Per sample: its line's bytes (a .txt list keeps the file's own buffer:
    path, label and newline) + 4-8 (start) + 2-4 (length) + 8 (label) + 1 (kind) [+ 4 (frame count / pieces)
    when a frames or raw sample is present]: 60 bytes for the released image lists' 44-byte lines; raw positive
    pieces, windows and sidecar frame scores are flat arrays + offsets over the samples that have them.

    API (what the rest of the code may use):
        len(sl), sl[i] -> `Sample` (built on demand), iter(sl) -> Samples, bool(sl)
        sl[a:b], sl[index array or bool mask] -> SampleList (subset, shares the buffers)
        sl.subset(indices, labels=None) -> SampleList (optionally with new labels, `map_labels`)
        sl.labels   int64 (N,)    sl.kinds  uint8 (N,) codes into KINDS (`kinds_of`, `kind_names`)
        sl.path(i) -> Path        sl.rel_path(i) -> str (relative to sl.prefix, as the list wrote it)
        sl.rel_path_bytes(indices) -> list of bytes (those rel_paths, UTF-8)
        sl.nbytes  bytes held (buffers shared by subsets counted in full)
        SampleList.from_samples(samples, prefix='') -> SampleList (any Samples; paths under prefix kept short)
    """

    def __init__(self, prefix: str, buf: bytes, start: np.ndarray, length: np.ndarray, labels: np.ndarray,
                 kinds: np.ndarray, extra: np.ndarray | None = None, pos: _Ragged | None = None,
                 windows: _Ragged | None = None, scores: _Ragged | None = None):
        self.prefix, self.buf = prefix, buf
        self._start, self._length = start, length        # path i = buf[start[i]:start[i] + length[i]]
        self.labels, self.kinds = labels, kinds          # int64 (N,), uint8 (N,)
        self._extra = extra                              # int32 (N,): num_frames ('frames'), num_parts ('raw')
        self._pos, self._windows, self._scores = pos, windows, scores   # ragged per-sample data, or None

    # 1. sizes and subsets
    def __len__(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        arrays = [self._start, self._length, self.labels, self.kinds, self._extra]
        return len(self.buf) + sum(a.nbytes for a in arrays if a is not None) + \
            sum(r.nbytes for r in (self._pos, self._windows, self._scores) if r is not None)

    def subset(self, indices: np.ndarray | Sequence[int], labels: np.ndarray | None = None) -> SampleList:
        """Samples `indices` (int array, any order, repeats allowed; or a bool mask), optionally relabelled."""
        idx = np.asarray(indices)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"SampleList: index out of range [0, {n})")
        idx = np.where(idx < 0, idx + n, idx)
        new = self.labels[idx] if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(new) != len(idx):
            raise ValueError(f"SampleList.subset: {len(new)} labels for {len(idx)} samples")
        take = (lambda r: None if r is None else r.take(idx))
        return SampleList(self.prefix, self.buf, self._start[idx], self._length[idx], new, self.kinds[idx],
                          None if self._extra is None else self._extra[idx], take(self._pos),
                          take(self._windows), take(self._scores))

    # 2. one sample, built on demand
    def rel_path(self, i: int) -> str:
        a = int(self._start[i])
        return self.buf[a:a + int(self._length[i])].decode("utf-8")

    def path(self, i: int) -> Path:
        return Path(self.prefix, self.rel_path(i)) if self.prefix else Path(self.rel_path(i))

    def rel_path_bytes(self, indices: np.ndarray) -> list[bytes]:
        """rel_path of samples `indices` as UTF-8 bytes, slices of the one buffer (no Sample, no str built)."""
        buf, idx = self.buf, np.asarray(indices, dtype=np.int64)
        return [buf[a:a + n] for a, n in zip(self._start[idx].tolist(), self._length[idx].tolist())]

    def __getitem__(self, i: int | slice) -> Sample | SampleList:
        if isinstance(i, slice):
            return self.subset(np.arange(len(self))[i])
        if not isinstance(i, (int, np.integer)):
            return self.subset(i)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"SampleList: index {i} out of range [0, {n})")
        i = int(i) % n
        kind = KINDS[self.kinds[i]]
        s = Sample(self.path(i), int(self.labels[i]), kind)
        if kind == "frames":
            s.num_frames = int(self._extra[i])
        elif kind == "raw":
            s.num_parts = int(self._extra[i])
            s.pos_clips = tuple(int(p) for p in self._pos.get(i)[0])
        elif kind == "windows":
            flat = self._windows.get(i)[0]
            s.windows = tuple((float(flat[k]), float(flat[k + 1])) for k in range(0, len(flat), 2))
        if self._scores is not None:
            got = self._scores.get(i)
            if got is not None:
                frames, scores, threshold = got
                s.frame_scores = FrameScores(tuple(int(f) for f in frames), tuple(float(x) for x in scores),
                                             float(threshold))
        return s

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"SampleList({len(self)} samples under {self.prefix!r}, {self.nbytes} bytes)"

    # 3. building
    @classmethod
    def from_samples(cls, samples: Sequence[Sample], prefix: str | Path = "") -> SampleList:
        """Compact copy of `Sample`s; paths under `prefix` are stored relative to it (all others: whole)."""
        samples = list(samples)
        prefix = str(prefix) if str(prefix) not in ("", ".") else ""
        rels = []
        for s in samples:
            full = str(s.path)
            rel = full[len(prefix) + 1:] if prefix and full.startswith(prefix + "/") else full
            if prefix and not full.startswith(prefix + "/") and not Path(full).is_absolute():
                return cls.from_samples(samples, "")   # a path outside the prefix: keep whole paths
            rels.append(rel)
        enc = [r.encode("utf-8") for r in rels]
        lengths = np.array([len(e) for e in enc], dtype=np.int64)
        start = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64) if enc else lengths
        kinds = np.array([KINDS.index(s.kind) for s in samples], dtype=np.uint8)
        extra = np.array([(s.num_frames if s.kind == "frames" else s.num_parts if s.kind == "raw" else 0) or 0
                          for s in samples], dtype=np.int64)
        rows = lambda pred: [i for i, s in enumerate(samples) if pred(s)]
        raw, win = rows(lambda s: s.kind == "raw"), rows(lambda s: s.kind == "windows")
        sc = rows(lambda s: s.frame_scores is not None)
        return cls(prefix, b"".join(enc), *_narrow(start, lengths),
                   np.array([s.label for s in samples], dtype=np.int64), kinds,
                   _int32(extra) if extra.any() else None,
                   _Ragged.build(raw, [[samples[i].pos_clips] for i in raw], (np.int32,)),
                   _Ragged.build(win, [[[x for w in samples[i].windows for x in w]] for i in win], (np.float64,)),
                   _Ragged.build(sc, [[samples[i].frame_scores.frames, samples[i].frame_scores.scores]
                                      for i in sc], (np.int32, np.float32),
                                 [samples[i].frame_scores.threshold for i in sc]))

    def with_frame_scores(self, entries: Iterable[tuple[str, FrameScores]]) -> SampleList:
        """Attach a sidecar's entries ((list path relative to the prefix, FrameScores) pairs, or a dict; Sec. 3.5)
        to their samples. The scores are kept flat (int32 frames, float32 scores), one entry per video."""
        entries = entries.items() if isinstance(entries, dict) else entries
        index, off, frames, scores, thresholds = {}, [0], array.array("i"), array.array("f"), array.array("d")
        for key, fs in entries:   # flat arrays as they stream in; a repeated key: the last one wins
            index[key] = len(thresholds)
            frames.extend(fs.frames), scores.extend(fs.scores), thresholds.append(fs.threshold)
            off.append(len(frames))
        if not index:
            return self
        base, rows, ptr = Path(self.prefix), [], []
        for i in range(len(self)):
            p = self.path(i)
            try:
                key = p.relative_to(base).as_posix()
            except ValueError:
                key = Path(os.path.relpath(p, base)).as_posix()
            if key in index:
                rows.append(i), ptr.append(index[key])
        scores = None if not rows else _Ragged(
            np.array(rows, dtype=np.int64), np.array(ptr, dtype=np.int64), np.array(off, dtype=np.int64),
            (np.frombuffer(frames, dtype=np.int32).copy(), np.frombuffer(scores, dtype=np.float32).copy()),
            np.frombuffer(thresholds, dtype=np.float64).copy())
        return SampleList(self.prefix, self.buf, self._start, self._length, self.labels, self.kinds, self._extra,
                          self._pos, self._windows, scores)


class _Ragged:
    """Variable-length data of some samples of a SampleList, flat: sample rows[k] (sorted) owns entry ptr[k],
    whose values are values[j][off[e]:off[e + 1]] (parallel arrays) and scalar[e]. Subsets share off/values."""

    def __init__(self, rows: np.ndarray, ptr: np.ndarray, off: np.ndarray, values: tuple,
                 scalar: np.ndarray | None = None):
        self.rows, self.ptr, self.off, self.values, self.scalar = rows, ptr, off, values, scalar

    @classmethod
    def build(cls, rows: list[int], seqs: list[list], dtypes: tuple, scalars: list | None = None) -> _Ragged | None:
        if not rows:
            return None
        lengths = np.array([len(v[0]) for v in seqs], dtype=np.int64)
        off = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=off[1:])
        values = tuple(np.array([x for v in seqs for x in v[j]], dtype=dt).reshape(-1)
                       for j, dt in enumerate(dtypes))
        return cls(np.array(rows, dtype=np.int64), np.arange(len(rows), dtype=np.int64), off, values,
                   None if scalars is None else np.array(scalars, dtype=np.float64))

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.rows, self.ptr, self.off, *self.values) if a is not None) + \
            (0 if self.scalar is None else self.scalar.nbytes)

    def get(self, i: int) -> tuple | None:
        """(values..., [scalar]) of sample i, or None."""
        k = int(np.searchsorted(self.rows, i))
        if k >= len(self.rows) or self.rows[k] != i:
            return None
        e = int(self.ptr[k])
        a, b = int(self.off[e]), int(self.off[e + 1])
        got = tuple(v[a:b] for v in self.values)
        return got if self.scalar is None else (*got, self.scalar[e])

    def take(self, idx: np.ndarray) -> _Ragged | None:
        """The ragged data of the subset idx (new sample k = old sample idx[k])."""
        if not len(self.rows) or not len(idx):
            return None
        k = np.minimum(np.searchsorted(self.rows, idx), len(self.rows) - 1)
        has = self.rows[k] == idx
        if not has.any():
            return None
        return _Ragged(np.flatnonzero(has), self.ptr[k[has]], self.off, self.values, self.scalar)


# ----------------------------------------------------------------------------------------------------------------------
# Machinery: what every command reads of any list (labels, kinds), and its one atomic file writer
# ----------------------------------------------------------------------------------------------------------------------

def labels_of(samples: SampleList | Sequence[Sample]) -> np.ndarray:
    """int64 labels (N,) of a SampleList (its array) or a list of Samples."""
    if isinstance(samples, SampleList):
        return samples.labels
    return np.array([s.label for s in samples], dtype=np.int64)


def kinds_of(samples: SampleList | Sequence[Sample]) -> np.ndarray:
    """int64 kind codes (N,) into KINDS of a SampleList (its array) or a list of Samples."""
    if isinstance(samples, SampleList):
        return samples.kinds.astype(np.int64)
    return np.array([KINDS.index(s.kind) for s in samples], dtype=np.int64)


def kind_names(samples: SampleList | Sequence[Sample]) -> set[str]:
    """The kinds a list holds, e.g. {'image', 'untrimmed'}."""
    return {KINDS[k] for k in np.unique(kinds_of(samples))}


def write_atomic(path: str | Path, content: str | bytes | Callable[[BinaryIO], object]) -> None:
    """Write `path` under a temporary name in its folder (.NAME.tmp-PID), flush it to disk (fsync) and rename it
    over `path`: a reader, or a rerun after a kill (SIGKILL included), finds the old file or the new one, never a
    part. content: text (UTF-8), bytes, or a function that writes to the open binary file (`lambda f:
    torch.save(obj, f)`). Every command's single files (lists, reports, checkpoints, work-folder state) go through
    here."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{_TMP_TAG}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)



# ----------------------------------------------------------------------------------------------------------------------
# Helpers: frame sampling
# ----------------------------------------------------------------------------------------------------------------------

def _train_offsets(num_frames: int, clip_len: int, frame_interval: int, num_clips: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Training clip starts: MMAction2 `SampleFrames._get_train_clips` (keep_tail_frames=False)."""
    ori_clip_len = clip_len * frame_interval   # frames spanned by one clip in training
    # 1. split the usable starts [0, num_frames - ori_clip_len] in num_clips equal segments
    avg_interval = (num_frames - ori_clip_len + 1) // num_clips
    if avg_interval > 0:
        # 2a. TSN: a uniformly random start inside each segment (3D with 1 clip: a random start)
        base = np.arange(num_clips) * avg_interval
        return base + rng.integers(avg_interval, size=num_clips)
    if num_frames > max(num_clips, ori_clip_len):
        # 2b. fewer usable starts than clips: sorted random starts (some may repeat)
        return np.sort(rng.integers(num_frames - ori_clip_len + 1, size=num_clips))
    if avg_interval == 0:
        # 2c. evenly spread starts over the few usable ones
        ratio = (num_frames - ori_clip_len + 1.0) / num_clips
        return np.around(np.arange(num_clips) * ratio)
    # 2d. the video is shorter than a clip: start at 0 (looping fills the clip)
    return np.zeros((num_clips,), dtype=np.int64)


def _test_offsets(num_frames: int, clip_len: int, frame_interval: int, num_clips: int) -> np.ndarray:
    """Testing clip starts: MMAction2 1.x `SampleFrames._get_test_clips` (target_fps=None)."""
    if clip_len == 1:
        # 2D: centre of each of num_clips equal segments (floats; truncated by the caller)
        avg_interval = num_frames / float(num_clips)
        base = np.arange(num_clips) * avg_interval
        return base + avg_interval / 2.0
    # 3D: num_clips starts spread evenly over [0, max_offset]; one clip sits in the middle
    ori_clip_len = (clip_len - 1) * frame_interval + 1   # frames spanned by one test clip
    max_offset = max(num_frames - ori_clip_len, 0)
    if num_clips > 1:
        offset_between = max_offset / float(num_clips - 1)
        return np.round(np.arange(num_clips) * offset_between)   # round half to even, as numpy
    return np.array([max_offset // 2])


# ----------------------------------------------------------------------------------------------------------------------
# Helpers: decoding
# ----------------------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _open_video(path: Path) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """Open a video file with PyAV -> (container, first video stream); codec threads: WORKER_CODEC_THREADS."""
    _check_file(path)
    container = av.open(str(path))
    try:
        if not container.streams.video:
            raise ValueError(f"{path}: no video stream")
        stream = container.streams.video[0]
        if WORKER_CODEC_THREADS > 0 and torch.utils.data.get_worker_info() is not None:
            stream.codec_context.thread_count = WORKER_CODEC_THREADS
        else:
            stream.codec_context.thread_type = "AUTO"   # frame + slice threads
        yield container, stream
    finally:
        container.close()


def _decode_video(container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: Path,
                  indices: np.ndarray,
                  stats: dict | None = None) -> np.ndarray:
    """Decode `indices` from an open container (see `read_frames`); `stats` gets the counts of frames
    decoded (given by the decoder), skipped (dropped by it), seeks and packets sent while seeking."""
    wanted = np.unique(indices)
    stats = {} if stats is None else stats
    stats.update(decoded=0, skipped=0, seeks=0, sent=0, sequential=False)
    index, frames = _pts_index(container, stream), None
    # 1. seek and skip; 2. seek only (skipping lost a frame); 3. count frames from the start. What failed
    #    is remembered with the cached scan, so a long-lived worker tries it once per file. A frame past
    #    the demuxed ones goes to 3 directly: only decoding tells the true length.
    if index is not None and index.scan.seek_ok and int(wanted[-1]) < index.num_frames:
        if index.scan.skip_ok and _can_skip(container, stream):
            frames = _decode_seeking(container, stream, wanted, index, stats, skip=True)
            index.scan.skip_ok = frames is not None
        if frames is None:
            frames = _decode_seeking(container, stream, wanted, index, stats, skip=False)
            index.scan.seek_ok = frames is not None
    if frames is None:   # pts unusable or inconsistent: count frames in decoding order instead
        stats.update(sequential=True)
        frames = _decode_sequential(path, wanted, stats)
    return np.stack([frames[int(i)] for i in indices])


@dataclass
class _PtsIndex:
    """Result of the demux pass: presentation index of each pts, keyframe positions."""
    rank: dict[int, int]     # pts -> 0-based presentation index
    keys: list[int]          # sorted presentation indices of keyframes
    key_pts: list[int]       # their pts: the seek target (FFmpeg lands exactly on it)
    key_set: frozenset = frozenset()
    scan: _Scan | None = None   # the cached scan it was built from (records what failed on this file)

    @property
    def num_frames(self) -> int:
        return len(self.rank)

    @classmethod
    def from_scan(cls, scan: _Scan) -> _PtsIndex:
        order, keys = scan.pts.tolist(), scan.keys.tolist()
        return cls(rank=dict(zip(order, range(len(order)))), keys=keys, key_pts=[order[k] for k in keys],
                   key_set=frozenset(keys), scan=scan)


@dataclass
class _Scan:
    """What the demux pass keeps per file (the cached form): int64 arrays, 8 bytes a frame."""
    pts: np.ndarray          # every frame's pts, sorted: the presentation order
    keys: np.ndarray         # presentation indices of the keyframes, sorted
    skip_ok: bool = True     # False once skipping lost a wanted frame of this file
    seek_ok: bool = True     # False once the decoder's output contradicted the pts (seek + check failed)


def _pts_index(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> _PtsIndex | None:
    """The `_PtsIndex` of an open video, None if its pts are unusable: one demux pass (`_scan_pts`), or
    the per-process cache when the same file (path, size, mtime, inode unchanged) was scanned before."""
    key = _file_key(container.name)
    entry = _PTS_CACHE.get(key)
    if entry is None:
        entry = _scan_pts(container, stream)
        _PTS_CACHE.put(key, entry)   # an unusable result is remembered too: no second scan
    return None if entry is _UNUSABLE else _PtsIndex.from_scan(entry)


def _scan_pts(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> _Scan | str:
    """Demux every packet of the video stream (no decoding) -> `_Scan`, or `_UNUSABLE` (a packet without
    pts, repeated pts, damaged file)."""
    pts, key_pts = [], []
    try:
        for packet in container.demux(stream):
            if packet.size == 0 or getattr(packet, "is_discard", False):   # flush / edit-list cut
                continue
            if packet.pts is None:
                return _UNUSABLE
            pts.append(packet.pts)
            if packet.is_keyframe:
                key_pts.append(packet.pts)
    except av.error.FFmpegError:   # damaged file: let sequential decoding decide
        return _UNUSABLE
    order = np.sort(np.asarray(pts, dtype=np.int64))
    if order.size == 0 or np.any(order[1:] == order[:-1]):
        return _UNUSABLE
    return _Scan(order, np.searchsorted(order, np.sort(np.asarray(key_pts, dtype=np.int64))))


def _decode_seeking(container: av.container.InputContainer, stream: av.video.stream.VideoStream, wanted: np.ndarray,
                    index: _PtsIndex,
                    stats: dict, skip: bool = True) -> dict[int, np.ndarray] | None:
    """Decode the sorted unique `wanted` frames with keyframe seeks; None if pts prove unreliable.

    skip: packets of frames no index needs go to the decoder with skip_frame 'NONREF' (`_decoded_frames`);
    the frames the decoder drops leave gaps in its output, allowed only where no wanted frame lies.
    A run of wanted frames decoded from one keyframe ends by draining the decoder once every packet up to
    its last frame is sent, instead of decoding the frames the decoder's reordering delay holds back.
    """
    want, out, order = set(int(i) for i in wanted), {}, [int(i) for i in wanted]
    frames, pos, end = None, -1, -1   # decoder iterator; index of the last frame taken; last frame of the run
    try:
        for j, n in enumerate(order):
            if n >= index.num_frames:
                return None   # past the demuxed frames: sequential decoding reports the truth
            k = bisect.bisect_right(index.keys, n) - 1   # nearest keyframe at or before n
            if k < 0:
                return None
            # 1. seek when the keyframe lies beyond the next frame the decoder would give, or the last run
            #    drained the decoder; the run lasts while no keyframe lies between two wanted frames
            if frames is None or index.keys[k] > pos + 1:
                end = _run_end(order, j, index.keys)
                container.seek(index.key_pts[k], backward=True, any_frame=False, stream=stream)
                frames, pos = _decoded_frames(container, stream, index.rank, want if skip else None,
                                              range(index.keys[k], end + 1), stats), None
                stats["seeks"] += 1
            # 2. decode up to n, checking that indices follow each other (across skipped frames only
            #    when none of them is wanted); convert only wanted frames
            while pos is None or pos < n:
                frame = next(frames, None)
                i = None if frame is None else index.rank.get(frame.pts)
                if i is None:
                    return None
                stats["decoded"] += 1
                if pos is None:   # right after a seek
                    if i > n:
                        return None   # landed past n
                    if i not in index.key_set:
                        continue      # open-GOP leading frame shown before the keyframe: skip it
                elif i != pos + 1:
                    if not skip or i <= pos or bisect.bisect_right(order, pos) != bisect.bisect_left(order, i):
                        return None   # decoding order disagrees with the pts ranks, or a wanted frame is missing
                    stats["skipped"] += i - pos - 1
                pos = i
                if i in want:
                    out[i] = to_rgb(frame)
            if n == end:
                frames = None   # the run drained its decoder: the next wanted frame seeks
        return out
    finally:
        stream.codec_context.skip_frame = "DEFAULT"   # the container may decode on (e.g. a retry without skip)


def _decoded_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream, rank: dict[int, int],
                    want: set[int] | None, run: range, stats: dict) -> Iterator[av.VideoFrame]:
    """Frames decoded from the packets after the current position, until the decoder is drained once the
    packets of every frame in `run` (presentation indices) have been sent. With `want`, the packet of a
    frame no index needs (its pts' presentation index not in `want`) is sent with skip_frame 'NONREF':
    the decoder drops it when the bitstream marks it as a frame no other frame refers to (H.264/HEVC
    nal_ref_idc 0, MPEG-1/2 B-frames), so every frame it does decode is bit-exact. A wanted frame's packet, and any
    packet of unknown pts, is decoded as usual.
    Frame threads copy the setting when each packet is submitted. stats['sent'] counts the packets."""
    codec, mode, pending = stream.codec_context, None, set(run)
    for packet in container.demux(stream):
        i = rank.get(packet.pts)
        if want is not None:
            m = "NONREF" if i is not None and i not in want else "DEFAULT"
            if m != mode:
                codec.skip_frame = mode = m
        stats["sent"] += 1
        yield from codec.decode(packet)
        pending.discard(i)
        if not pending:   # every frame of the run is in the decoder: drain it rather than decode on
            yield from codec.decode(None)
            return


def _run_end(order: list[int], j: int, keys: list[int]) -> int:
    """Last wanted frame decoded in one pass from order[j]'s keyframe: the run stops before a wanted frame
    with a keyframe after its predecessor + 1 (seeking there skips the frames in between)."""
    while j + 1 < len(order) and keys[bisect.bisect_right(keys, order[j + 1]) - 1] <= order[j] + 1:
        j += 1
    return order[j]


class _PtsCache:
    """LRU of `_scan_pts` results keyed by `_file_key`, holding at most `PTS_CACHE_FRAMES` frames' pts.
    One per process; a lock keeps it whole when threads of one process read videos."""

    def __init__(self):
        self.entries: collections.OrderedDict = collections.OrderedDict()
        self.frames = 0
        self.lock = threading.Lock()

    def get(self, key: tuple | None) -> _Scan | str | None:
        with self.lock:
            if key is None or key not in self.entries:
                return None
            self.entries.move_to_end(key)
            return self.entries[key]

    def put(self, key: tuple | None, entry: _Scan | str) -> None:
        if key is None:
            return
        with self.lock:
            if key in self.entries:   # scanned twice at once by two threads
                self.frames -= self._size(self.entries.pop(key))
            self.entries[key] = entry
            self.frames += self._size(entry)
            while self.frames > PTS_CACHE_FRAMES and self.entries:
                self.frames -= self._size(self.entries.popitem(last=False)[1])

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()
            self.frames = 0

    @staticmethod
    def _size(entry: _Scan | str) -> int:
        return 1 if entry is _UNUSABLE else len(entry.pts)


def _can_skip(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> bool:
    """Whether `_decoded_frames` may drop unneeded frames: SKIP_NONREF, a codec in `_SKIP_CODECS` and a
    container with presentation timestamps. AVI has none: FFmpeg numbers its packets in storage order,
    so with MPEG-4 Part 2 B-frames (packed or with placeholder packets) a frame's pts is not its own;
    decoding every frame exposes that as out-of-order ranks, but gaps from dropped frames would hide it."""
    return (SKIP_NONREF and stream.codec_context.codec.canonical_name in _SKIP_CODECS
            and "avi" not in container.format.name.split(","))


# codecs whose FFmpeg decoders drop only frames the bitstream marks as unreferenced under skip_frame 'NONREF'
# and keep every frame's pts (tests/test_decode.py checks each against a whole-file decode). Left out: MPEG-4
# Part 2 (packed B-frames), AV1 (libdav1d then loses frames: the checks catch it, at the cost of a fallback),
# VP9 (libvpx marks no frame unreferenced but with temporal layers; nothing to gain, untested).
_SKIP_CODECS = ("h264", "hevc", "mpeg1video", "mpeg2video")
_UNUSABLE = "unusable pts"   # `_scan_pts` result: seeking by pts is not possible for this file
_PTS_CACHE = _PtsCache()
_REFORMATTERS: dict[int, av.video.reformatter.VideoReformatter] = {}   # `reformat`: one swscale context per process


def _file_key(name: str) -> tuple[str, int, int, int] | None:
    """(path, size, mtime, inode) of a file: a changed or replaced file gets a new key; None if no stat."""
    try:
        st = os.stat(name)
    except (OSError, ValueError):
        return None
    return os.path.abspath(name), st.st_size, st.st_mtime_ns, st.st_ino


def _decode_sequential(path: Path, wanted: np.ndarray, stats: dict) -> dict[int, np.ndarray]:
    """Decode from the start counting frames (whole-file semantics); stop after the last wanted."""
    want, out, last, count = set(int(i) for i in wanted), {}, int(wanted[-1]), 0
    with _open_video(path) as (container, stream):
        for i, frame in enumerate(container.decode(stream)):
            count = i + 1
            if i in want:
                out[i] = to_rgb(frame)
            if i >= last:
                break
    stats["decoded"] += count
    if count <= last:
        raise VideoTooShortError(path, last, count)
    return out


def _count_video_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    """`stream.frames` when consistent with duration x rate, else decode and count."""
    n = stream.frames
    if n > 0 and stream.duration and stream.average_rate and stream.time_base:
        expected = float(stream.duration * stream.time_base * stream.average_rate)
        if abs(n - expected) <= 1.0:
            return int(n)
    count = sum(1 for _ in container.decode(stream))
    if count == 0:
        raise ValueError(f"{container.name}: no decodable video frames")
    container.seek(0)   # rewind for a caller that decodes next
    return count


def _stream_rate(path: Path, stream: av.video.stream.VideoStream) -> Fraction:
    """Frame rate of an open video stream: average rate, else guessed rate, else frames / duration."""
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate and rate > 0:
            return Fraction(rate)
    if stream.frames and stream.duration and stream.time_base:
        return Fraction(stream.frames) / (stream.duration * stream.time_base)
    raise ValueError(f"{path}: the video has no frame rate")


class _PieceWriter:
    """One piece of `cut_video`: an H.264 mp4 at `rate`, frame size of `first` rounded down to even."""

    def __init__(self, path: Path, rate: Fraction, first: av.VideoFrame, crf: int):
        self.container = av.open(str(path), mode="w")
        self.stream = self.container.add_stream("libx264", rate=rate)
        self.width, self.height = max(2, first.width // 2 * 2), max(2, first.height // 2 * 2)
        self.stream.width, self.stream.height, self.stream.pix_fmt = self.width, self.height, "yuv420p"
        self.stream.codec_context.options = {"crf": str(crf), "preset": "veryfast"}
        self.time_base, self.count = 1 / Fraction(rate), 0

    def write(self, frame: av.VideoFrame) -> None:
        out = reformat(frame, "yuv420p", self.width, self.height)
        out.pts, out.time_base = self.count, self.time_base   # piece-local timestamps from 0
        self.count += 1
        for packet in self.stream.encode(out):
            self.container.mux(packet)

    def close(self, flush: bool = True) -> None:
        try:
            if flush:
                for packet in self.stream.encode():
                    self.container.mux(packet)
        finally:
            self.container.close()


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file")


def _check_indices(indices: Sequence[int], path: Path) -> np.ndarray:
    """Indices -> int64 array; must be non-empty, integral and >= 0."""
    idx = np.asarray(indices)
    if idx.ndim != 1 or idx.size == 0:
        raise ValueError(f"{path}: indices must be a non-empty 1-D sequence, got shape {idx.shape}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{path}: indices must be integers, got dtype {idx.dtype}")
    if idx.min() < 0:
        raise ValueError(f"{path}: frame indices must be >= 0, got {int(idx.min())}")
    return idx.astype(np.int64)


def _load_image(path: Path) -> np.ndarray:
    """Image file -> uint8 `(H, W, 3)` RGB; EXIF orientation applied (as OpenCV/mmcv do)."""
    _check_file(path)
    with Image.open(path) as im:
        if min(im.size) < MIN_IMAGE_SIDE:      # tracking pixels and broken thumbnails of a web crawl: no content
            raise ValueError(f"{path}: {im.size[0]}x{im.size[1]} image, smaller than {MIN_IMAGE_SIDE} pixels a side")
        im = ImageOps.exif_transpose(im)
        return np.asarray(im.convert("RGB"), dtype=np.uint8)   # convert() forces a full decode


def _read_still(path: Path, indices: np.ndarray) -> np.ndarray:
    if int(indices.max()) > 0:
        raise VideoTooShortError(path, int(indices.max()), 1)
    image = _load_image(path)
    return np.repeat(image[None], len(indices), axis=0)


def _read_frame_folder(folder: Path, indices: np.ndarray) -> np.ndarray:
    """Frame folder: index i is FRAME_TMPL.format(i + 1); each distinct frame read once."""
    cache = {int(i): _load_image(folder / FRAME_TMPL.format(int(i) + 1)) for i in np.unique(indices)}
    return np.stack([cache[int(i)] for i in indices])


def _count_folder_frames(folder: Path) -> int:
    n = sum(1 for _ in folder.glob("img_*.jpg"))
    if n == 0:
        raise ValueError(f"{folder}: frame folder without img_*.jpg frames")
    return n


# ----------------------------------------------------------------------------------------------------------------------
# Helpers: annotation lists and layouts
# ----------------------------------------------------------------------------------------------------------------------

def _read_text_list(list_file: Path, prefix: Path, num_classes: int) -> SampleList:
    """A .txt list -> SampleList: numpy fast path for 'PATH LABEL' lines, `_parse_line` for the rest."""
    buf = list_file.read_bytes()
    if not buf.strip():
        raise ValueError(f"{list_file}: no samples (empty annotation list)")
    if not buf.endswith(b"\n"):
        buf += b"\n"
    a = np.frombuffer(buf, dtype=np.uint8)
    # 1. one scan (in blocks) for the bytes outside '!'..'~': newlines, spaces and the rest (tabs, CR, non-ASCII)
    pos = np.concatenate([np.flatnonzero((a[o:o + _SCAN_BLOCK] - np.uint8(33)) > 93) + o
                          for o in range(0, len(a), _SCAN_BLOCK)])
    byte = a[pos]
    ends, spaces, other = pos[byte == 10], pos[byte == 32], pos[(byte != 10) & (byte != 32)]
    del pos, byte
    if other.size and _exotic_breaks(buf, a, other):   # str.splitlines() would number the lines otherwise
        return SampleList.from_samples(read_list_samples(list_file, prefix, num_classes), prefix)
    starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64)
    # Windows line ends: a CR right before the newline ends the line's content (str.splitlines() agrees)
    crlf = (ends > starts) & (a[np.maximum(ends - 1, 0)] == 13)
    content_ends = ends - crlf
    other = other[~((a[other] == 13) & (a[np.minimum(other + 1, len(a) - 1)] == 10))]
    # 2. the dominant form, in blocks of lines: one space, printable ASCII, a media extension, a decimal label
    fast_lines, fast_sp, fast_label, fast_kind = [], [], [], []
    for b0 in range(0, len(ends), _LINE_BLOCK):
        st, en = starts[b0:b0 + _LINE_BLOCK], content_ends[b0:b0 + _LINE_BLOCK]
        got = _fast_lines(a, st, en, spaces, other, num_classes)
        fast_lines.append(got[0] + b0)
        fast_sp.append(got[1]), fast_label.append(got[2]), fast_kind.append(got[3])
    fast_lines, fast_sp = np.concatenate(fast_lines), np.concatenate(fast_sp)
    fast_label, fast_kind = np.concatenate(fast_label), np.concatenate(fast_kind)
    # 3. every other line through the per-line parser (errors: FILE:LINE); blank and '#' lines skipped
    slow_mask = np.ones(len(ends), dtype=bool)
    slow_mask[fast_lines] = False
    slow_lines, slow = [], []
    for ln in np.flatnonzero(slow_mask):
        raw = buf[starts[ln]:ends[ln]]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{list_file}:{ln + 1}: not UTF-8 text ({err.reason})") from None
        if line.strip() and not line.lstrip().startswith("#"):
            fields = line.split()
            slow.append((fields[0], _parse_line(fields, f"{list_file}:{ln + 1}", prefix, num_classes)))
            slow_lines.append(ln)
    if not len(fast_lines) and not slow:
        raise ValueError(f"{list_file}: no samples (empty annotation list)")
    # 4. merge both in line order; the slow lines' paths are appended to the buffer
    nf = len(fast_lines)
    start, length = starts[fast_lines], fast_sp - starts[fast_lines]
    if not slow:   # the common case: no copy, no reordering
        return SampleList(str(prefix), buf, *_narrow(start, length), fast_label, fast_kind)
    extra = SampleList.from_samples([smp for _, smp in slow], "")
    rel = [r.encode("utf-8") for r, _ in slow]
    rel_len = np.array([len(r) for r in rel], dtype=np.int64)
    rel_start = len(buf) + np.concatenate(([0], np.cumsum(rel_len)[:-1])).astype(np.int64)
    order = np.argsort(np.concatenate((fast_lines, np.array(slow_lines, dtype=np.int64))), kind="stable")
    ex = None
    if extra._extra is not None:
        ex = _int32(np.concatenate((np.zeros(nf, dtype=np.int64), extra._extra))[order])
    # ragged data of the slow samples: their rows move from k (in `extra`) to inv[nf + k]
    inv = np.empty(len(order), dtype=np.int64)
    inv[order] = np.arange(len(order))
    shift = (lambda r: None if r is None else _Ragged(inv[nf + r.rows], r.ptr, r.off, r.values, r.scalar))
    return SampleList(str(prefix), buf + b"".join(rel),
                      *_narrow(np.concatenate((start, rel_start))[order], np.concatenate((length, rel_len))[order]),
                      np.concatenate((fast_label, extra.labels))[order],
                      np.concatenate((fast_kind, extra.kinds))[order], ex, shift(extra._pos), shift(extra._windows))


def _fast_lines(a: np.ndarray, st: np.ndarray, en: np.ndarray, spaces: np.ndarray, other: np.ndarray,
                num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lines [st, en) of buffer `a` in the form 'PATH LABEL' -> (line numbers in the block, space position,
    label int64, kind code uint8) of those that are; the others are left to the per-line parser."""
    k0 = np.searchsorted(spaces, st)
    one_space = (np.searchsorted(spaces, en) - k0) == 1
    plain = np.searchsorted(other, en) == np.searchsorted(other, st)   # no tab, CR, non-ASCII byte
    sp = spaces[np.minimum(k0, max(len(spaces) - 1, 0))] if len(spaces) else st
    # a '#' comment or a path starting with '.' goes the careful way ('./x' is 'x' to Path), but not '../': filter.py's
    # outputs list their crawl as '../SOURCE/...', millions of lines that Path keeps as written
    lead, nxt = a[st], a[np.minimum(st + 1, len(a) - 1)]
    up = (nxt == 46) & (a[np.minimum(st + 2, len(a) - 1)] == 47) & (st + 2 < en)
    lab_len = en - sp - 1
    cand = np.flatnonzero(one_space & plain & (lead != 35) & ((lead != 46) | up) & (sp > st) & (lab_len >= 1) &
                          (lab_len <= 9))
    st, sp, en, lab_len = st[cand], sp[cand], en[cand], lab_len[cand]
    # 1. the label: 1-9 decimal digits after the space, below num_classes
    label, ok = np.zeros(len(cand), dtype=np.int64), np.ones(len(cand), dtype=bool)
    for k in range(int(lab_len.max()) if len(cand) else 0):
        inside = k < lab_len
        d = a[np.minimum(sp + 1 + k, en - 1)].astype(np.int64) - 48
        ok &= ~inside | ((d >= 0) & (d <= 9))
        label = np.where(inside, label * 10 + d, label)
    ok &= label < num_classes
    # 2. the kind from the extension (the path's last 5 bytes in ASCII lower case, last byte lowest)
    tail = np.zeros(len(cand), dtype=np.uint64)
    for j in range(1, 6):
        b = a[np.maximum(sp - j, 0)]
        b = np.where((b >= 65) & (b <= 90), b + np.uint8(32), b).astype(np.uint64)
        tail |= np.where(sp - j >= st, b, np.uint64(0)) << np.uint64(8 * (j - 1))
    kind = np.full(len(cand), 255, dtype=np.uint8)
    for m in (3, 4, 5):
        codes = {e: int.from_bytes(e.encode()[::-1], "little") for e in VIDEO_EXTS + IMAGE_EXTS if len(e) == m}
        img = np.array([c for e, c in codes.items() if e in IMAGE_EXTS], dtype=np.uint64)
        vid = np.array([c for e, c in codes.items() if e in VIDEO_EXTS], dtype=np.uint64)
        key = tail & np.uint64((1 << 8 * m) - 1)
        before = a[np.maximum(sp - m - 1, 0)]   # the name before the extension: not empty, not hidden
        named = (sp - m - 1 >= st) & (before != 47) & (before != 46) & (kind == 255)
        kind[named & np.isin(key, img)] = KINDS.index("image")
        kind[named & np.isin(key, vid)] = KINDS.index("video")
    video = np.flatnonzero(kind == 0)
    if len(video):   # first path component 'untrimmed'
        head = a[np.minimum(st[video, None] + np.arange(10), len(a) - 1)]
        untr = (head == np.frombuffer(b"untrimmed/", dtype=np.uint8)).all(axis=1) & (sp[video] - st[video] > 10)
        kind[video[untr]] = KINDS.index("untrimmed")
    ok &= kind != 255
    return cand[ok], sp[ok], label[ok], kind[ok]


def _exotic_breaks(buf: bytes, a: np.ndarray, other: np.ndarray) -> bool:
    """Whether str.splitlines() breaks lines where b'\n' does not (lone CR, VT, FF, FS/GS/RS, NEL, LS, PS)."""
    o = a[other]
    if np.isin(o, (11, 12, 28, 29, 30)).any():
        return True
    cr = other[o == 13]
    if cr.size and (a[np.minimum(cr + 1, len(a) - 1)] != 10).any():
        return True
    if (o > 127).any():
        text = buf.decode("utf-8", errors="replace")
        return any(c in text for c in "\x85\u2028\u2029")
    return False


def _trim_heap() -> None:
    """Return freed heap pages to the OS (glibc `malloc_trim`): after freeing a large block glibc raises its
    mmap threshold, so the next temporaries come from the heap and stay resident once freed; no-op elsewhere."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass


def _narrow(start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Path starts as uint32 (buffers < 4 GiB) and lengths as uint16 (< 64 KiB) when they fit."""
    start = start.astype(np.uint32) if not len(start) or start.max() < 2 ** 32 else start.astype(np.int64)
    length = length.astype(np.uint16) if not len(length) or length.max() < 2 ** 16 else length.astype(np.int32)
    return start, length


def _int32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.int32)


def _parse_line(fields: list[str], where: str, prefix: Path, num_classes: int) -> Sample:
    """One list line -> Sample; the kind follows from the extension and the field count."""
    suffix = Path(fields[0]).suffix.lower()
    if suffix in VIDEO_EXTS and len(fields) >= 3 and all(":" in f for f in fields[2:]):
        # 1a. windows of an untrimmed video: 'PATH LABEL START:END [START:END ...]' (seconds, Sec. 3.5)
        windows = tuple(_parse_window(f, where) for f in fields[2:])
        return Sample(prefix / fields[0], _parse_label(fields[1], where, num_classes), "windows", windows=windows)
    if suffix in VIDEO_EXTS or suffix in IMAGE_EXTS:
        # 1b. media file: 'PATH LABEL'
        if len(fields) != 2:
            raise ValueError(f"{where}: expected 'PATH LABEL' for a {suffix} file, got {len(fields)} fields "
                             f"(multi-label lines are not supported"
                             + ("; windows: 'PATH LABEL START:END...' in seconds)" if suffix in VIDEO_EXTS else ")"))
        label = _parse_label(fields[1], where, num_classes)
        if suffix in IMAGE_EXTS:
            kind = "image"
        else:
            kind = "untrimmed" if Path(fields[0]).parts[0] == "untrimmed" else "video"
        return Sample(prefix / fields[0], label, kind)
    if len(fields) == 3:
        # 2. frame folder: 'DIR NUM_FRAMES LABEL'. MMAction2's raw form 'DIR LABEL NUM_PARTS' without a positive
        #    piece has the same shape: a folder of pieces part_*.mp4 on disk tells them apart
        if (prefix / fields[0] / PART_TMPL.format(0)).is_file():
            raise ValueError(f"{where}: {' '.join(fields)!r}: {fields[0]} holds part_*.mp4 pieces, so this is a raw "
                             f"video 'DIR LABEL NUM_PARTS' with no positive piece; list its positive pieces after "
                             f"NUM_PARTS ('DIR LABEL NUM_PARTS POS_IDX...'), or leave the line out")
        num_frames = _parse_int(fields[1], where, "NUM_FRAMES", minimum=1)
        return Sample(prefix / fields[0], _parse_label(fields[2], where, num_classes), "frames",
                      num_frames=num_frames)
    if len(fields) >= 4:
        # 3. raw video in pieces: 'DIR LABEL NUM_PARTS POS_IDX...'
        label = _parse_label(fields[1], where, num_classes)
        num_parts = _parse_int(fields[2], where, "NUM_PARTS", minimum=1)
        pos = tuple(_parse_int(f, where, "POS_IDX", minimum=0) for f in fields[3:])
        return _raw_sample(prefix / fields[0], label, num_parts, pos, where)
    raise ValueError(f"{where}: expected 'PATH LABEL' (video {'/'.join(VIDEO_EXTS[:3])}... or image), "
                     f"'DIR NUM_FRAMES LABEL' (frame folder) or 'DIR LABEL NUM_PARTS POS_IDX...' "
                     f"(raw video), got {' '.join(fields)!r}")


def _read_json_list(list_file: Path, prefix: Path, num_classes: int) -> list[Sample | None]:
    """MMAction2 JSON annotations: a list of dicts (raw video, video/image or frame folder)."""
    try:
        entries = json.loads(list_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{list_file}: not valid JSON ({err})") from None
    if not isinstance(entries, list):
        raise ValueError(f"{list_file}: expected a JSON list of dicts")
    samples = []
    for n, e in enumerate(entries):
        where = f"{list_file}: entry {n}"
        if not isinstance(e, dict) or "label" not in e:
            raise ValueError(f'{where}: expected a dict with "label" and one of "video_dir", '
                             f'"filename", "frame_dir"')
        label = _parse_label(e["label"], where, num_classes)
        if "video_dir" in e:
            pos = tuple(_parse_int(p, where, "positive_clip_inds", 0)
                        for p in e.get("positive_clip_inds", ()))
            num_parts = _parse_int(e.get("num_clips"), where, "num_clips", 1)
            raw = _raw_sample(prefix / e["video_dir"], label, num_parts, pos, where)
            samples.append(raw if pos else None)   # no positive piece: skipped, like MMAction2
        elif "frame_dir" in e:
            total = _parse_int(e.get("total_frames"), where, "total_frames", 1)
            samples.append(Sample(prefix / e["frame_dir"], label, "frames", num_frames=total))
        elif "filename" in e and "windows" in e:
            wins = e["windows"]
            if not isinstance(wins, list) or not wins or not all(isinstance(w, list) and len(w) == 2 for w in wins):
                raise ValueError(f'{where}: "windows" must be a non-empty list of [START, END] pairs in seconds')
            samples.append(_parse_line([str(e["filename"]), str(label), *(f"{a}:{b}" for a, b in wins)], where,
                                       prefix, num_classes))
        elif "filename" in e:
            samples.append(_parse_line([str(e["filename"]), str(label)], where, prefix, num_classes))
        else:
            raise ValueError(f'{where}: expected one of the keys "video_dir", "filename", "frame_dir"')
    return samples


def _parse_window(text: str, where: str) -> tuple[float, float]:
    """'START:END' seconds -> (start, end) floats with 0 <= start < end, else a one-line ValueError."""
    try:
        start, end = (float(x) for x in str(text).split(":"))
    except ValueError:
        start = end = math.nan
    if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
        raise ValueError(f"{where}: window {text!r}: expected START:END in seconds with 0 <= START < END")
    return start, end


def _parse_int(value: object, where: str, what: str, minimum: int) -> int:
    """An integer field of a list line / JSON entry, >= minimum, else a one-line ValueError."""
    try:
        if isinstance(value, (bool, float)) or value is None:
            raise ValueError
        number = int(value)
    except ValueError:
        raise ValueError(f"{where}: {what} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{where}: {what} must be an integer >= {minimum}, got {value!r}")
    return number


def _parse_label(value: object, where: str, num_classes: int) -> int:
    label = _parse_int(value, where, "LABEL", minimum=-(10 ** 9))
    if not 0 <= label < num_classes:
        raise ValueError(f"{where}: label {label} out of range: expected 0..{num_classes - 1} "
                         f"({num_classes} classes)")
    return label


def _raw_sample(path: Path, label: int, num_parts: int, pos: tuple, where: str) -> Sample:
    bad = [p for p in pos if p >= num_parts]
    if bad:
        raise ValueError(f"{where}: positive piece {bad[0]} out of range: expected 0..{num_parts - 1} "
                         f"({num_parts} pieces part_0.mp4 ...)")
    return Sample(path, label, "raw", pos_clips=tuple(pos), num_parts=num_parts)


def _attach_frame_scores(samples: list[Sample], list_file: Path, prefix: Path) -> None:
    """Give each sample its entry of the list's frame-score sidecar, if there is one (Sec. 3.5)."""
    side = frame_scores_path(list_file)
    if not side.is_file():
        return
    table = read_frame_scores(side)
    for s in samples:
        try:
            key = s.path.relative_to(prefix).as_posix()
        except ValueError:
            key = Path(os.path.relpath(s.path, prefix)).as_posix()
        if key in table:
            s.frame_scores = table[key]


def _class_key(name: str) -> str:
    """Class name as `map_labels` compares it: lower case, without '_' and whitespace ('Air_Drumming' ->
    'airdrumming'). No two of Kinetics-400's class names (and so of Mini-Kinetics') are equal under it."""
    return "".join(str(name).replace("_", " ").split()).lower()


def _check_class_names(names: Sequence[str], where: object, file: bool = False) -> None:
    """A one-line ValueError naming `where` and both names (their lines of a `file`, else their labels) when two
    class names are one class under `_class_key`."""
    seen, at = {}, (lambda i: f"line {i + 1}" if file else f"label {i}")
    for i, name in enumerate(names):
        first = seen.setdefault(_class_key(name), i)
        if first != i:
            raise ValueError(f"{where}: class names {names[first]!r} ({at(first)}) and {name!r} ({at(i)}) are the "
                             f"same class when case, '_' and spaces are ignored; rename one")


def _preview(names: Sequence[str], n: int = 4) -> str:
    return ", ".join(list(names)[:n]) + (", ..." if len(names) > n else "")


def _resolve_plain(plain: Path, name: str, filtered: bool) -> DatasetSpec:
    """A plain folder NAME/ with classes.txt and {train,val,test}.txt -> DatasetSpec."""
    if filtered:
        raise ValueError(f"dataset {name}: filtered lists exist only for the web sources "
                         f'{", ".join(k for k, v in LAYOUTS.items() if "filtered" in v)}')
    splits = {s: SplitSpec(plain / f"{s}.txt", plain) for s in ("train", "val", "test")
              if (plain / f"{s}.txt").is_file()}
    if not splits:
        raise FileNotFoundError(f"dataset {name}: no train.txt or val.txt in {plain}")
    return DatasetSpec(name, plain, read_classes(plain / "classes.txt"), splits)


def _resolve_layout(data_root: Path, name: str, filtered: bool) -> DatasetSpec:
    """A LAYOUTS entry -> DatasetSpec with class names read and prefixes resolved."""
    layout = LAYOUTS[name]
    splits = {s: (lst, pre) for s, (lst, pre) in layout["splits"].items()}
    if filtered:
        if "filtered" not in layout:
            raise ValueError(f"dataset {name}: no teacher-filtered list; filtered lists exist for "
                             f'{", ".join(k for k, v in LAYOUTS.items() if "filtered" in v)}')
        prefix = layout["splits"]["train"][1] if layout["splits"] else None
        splits = {"train": (layout["filtered"], prefix)}
    resolved = {}
    for split, (lst, pre) in splits.items():
        lst = data_root / lst
        resolved[split] = SplitSpec(lst, data_root / pre if pre else _web_prefix(data_root, layout, lst))
    classes = _layout_classes(data_root, name, layout)
    return DatasetSpec(name, data_root / layout["root"], classes, resolved, layout=name,
                       filtered=filtered)


def _layout_classes(data_root: Path, name: str, layout: dict) -> list[str]:
    """First existing class file of a layout, else sorted sub-folders of `classes_from`."""
    for rel in layout["classes"]:
        if (data_root / rel).is_file():
            return read_classes(data_root / rel)
    folder = data_root / layout["classes_from"] if "classes_from" in layout else None
    if folder is not None and folder.is_dir():
        names = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if names:
            _check_class_names(names, f"{folder}/*/ (class folders)")
            return names
    looked = [str(data_root / r) for r in layout["classes"]] + ([f"{folder}/*/"] if folder else [])
    raise FileNotFoundError(f'dataset {name}: class names not found; looked for {", ".join(looked)}')


def _web_prefix(data_root: Path, layout: dict, list_file: Path) -> Path:
    """OmniSource/ if the list's first path starts with the source folder, else OmniSource/<folder>/."""
    base, folder = data_root / "OmniSource", layout.get("folder")
    if not folder:
        return base
    first = ""
    if list_file.is_file():
        with list_file.open() as f:
            first = next((ln.split()[0] for ln in f if ln.strip()), "")
    return base if Path(first).parts[:1] == (folder,) else base / folder


# ----------------------------------------------------------------------------------------------------------------------
# Helpers: dataset
# ----------------------------------------------------------------------------------------------------------------------

def _check_snippet(snippet: Callable, num_clips: int) -> None:
    """The snippet chooser must give one frame per TSN segment (probed on made-up scores)."""
    probe = np.asarray(snippet(np.array([0.9, 0.1, 0.2, 0.8, 0.3]), 0, rng=np.random.default_rng(0),
                               threshold=0.5))
    if probe.shape != (num_clips,):
        raise ValueError(f"VideoDataset: the snippet chooser returns {probe.shape} frame positions but the "
                         f"sampling takes num_clips={num_clips} segments")


def _metadata_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int | None:
    """Frame count from metadata alone: `stream.frames`, else duration x average rate; None without either."""
    if stream.frames and stream.frames > 0:
        return int(stream.frames)
    rate = stream.average_rate or stream.guessed_rate
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration:
        seconds = container.duration / av.time_base
    else:
        return None
    return max(1, round(seconds * float(rate))) if rate else None


def _coprime_stride(n: int) -> int:
    """A stride near n * 0.618 coprime with n: index + k*stride (mod n) visits every index once."""
    stride = max(1, int(n * 0.6180339887))
    while math.gcd(stride, n) != 1:
        stride += 1
    return stride


def _takes_rng(fn: Callable) -> bool:
    """Whether callable `fn` accepts an `rng` keyword argument."""
    return _takes(fn, "rng")


def _takes(fn: Callable, name: str) -> bool:
    """Whether callable `fn` accepts a keyword argument `name`."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params


# ----------------------------------------------------------------------------------------------------------------------
# Helpers: preparing
# ----------------------------------------------------------------------------------------------------------------------

def _check_prepare(data_root: Path, out: Path, cfg: PrepareConfig) -> None:
    """The flags of `prepare`, each with a one-line error naming it."""
    if cfg.format not in PREPARE_FORMATS:
        raise ValueError(f"--format must be one of {', '.join(PREPARE_FORMATS)}, got {cfg.format!r}")
    top = 51 if cfg.format == "video" else 100
    checks = (("--short-side", cfg.short_side, MIN_IMAGE_SIDE, None), ("--gop", cfg.gop, 0, None),
              ("--workers", cfg.workers, 1, None), ("--measure", cfg.measure, 0, None),
              ("--quality", cfg.crf if cfg.format == "video" else cfg.jpeg_quality, int(cfg.format != "video"), top))
    for flag, value, low, high in checks:
        if value < low or (high is not None and value > high):
            raise ValueError(f"{flag} must be an integer >= {low}" + (f" and <= {high}" if high else "")
                             + f", got {value}")
    if not data_root.is_dir():
        raise FileNotFoundError(f"--data-root {data_root}: no such folder")
    if out.resolve() == data_root.resolve():
        raise ValueError(f"--out {out} is --data-root: prepare writes a copy and never changes the source")


def _claim_out(report_path: Path, cfg: PrepareConfig) -> None:
    """Record the settings before writing; an --out prepared with other settings is refused (outputs would mix)."""
    if report_path.is_file():
        try:
            old = json.loads(report_path.read_text()).get("settings")
        except (json.JSONDecodeError, AttributeError):
            old = None
        if old != cfg.settings():
            raise ValueError(f"{report_path}: this --out was prepared with other settings ({old}); run with "
                             f"those or choose another --out")
        return
    write_atomic(report_path, json.dumps({"settings": cfg.settings(), "complete": False}) + "\n")


def _prepare_plan(spec: DatasetSpec, data_root: Path, out: Path, cfg: PrepareConfig
                  ) -> tuple[list[dict], dict[str, _Job], dict[str, str]]:
    """Per split: its list, samples and their jobs; the jobs by output path; sources that cannot be written."""
    lists, jobs, failed = [], {}, {}
    for split, s in spec.splits.items():
        if not s.list_file.is_file():
            print(f"prepare: split {split}: {s.list_file} not found, skipped")
            continue
        dst_prefix = out / s.prefix.relative_to(data_root)
        blank = s.list_file.suffix.lower() != ".json" and not s.list_file.read_bytes().strip()
        samples = SampleList.from_samples([]) if blank else read_list(s.list_file, s.prefix, len(spec.classes))
        entries = []
        for i in range(len(samples)):
            sample, rel = samples[i], samples.rel_path(i)
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                failed[str(sample.path)] = "path outside its data prefix (absolute or '..'): not copied under --out"
                continue
            new_rel, sample_jobs = _sample_jobs(sample, rel, dst_prefix, cfg)
            for job in sample_jobs:
                other = jobs.setdefault(job.dst, job)
                if other.src != job.src:
                    failed[job.src] = f"its output {job.dst} is also the output of {other.src}"
            entries.append((i, sample, new_rel, sample_jobs))
        lists.append({"split": split, "spec": s, "samples": samples, "entries": entries,
                      "dst_list": out / s.list_file.relative_to(data_root)})
    return lists, jobs, failed


def _sample_jobs(s: Sample, rel: str, dst_prefix: Path, cfg: PrepareConfig) -> tuple[str, list[_Job]]:
    """A sample's path in the prepared list and the outputs it needs (see `prepare_dataset`, step 1)."""
    p = Path(rel)
    if s.kind == "image":
        new = p if p.suffix.lower() in (".jpg", ".jpeg") else p.with_suffix(".jpg")
        return new.as_posix(), [_Job("image", str(s.path), str(dst_prefix / new))]
    if s.kind == "frames":
        return rel, [_Job("folder", str(s.path), str(dst_prefix / p), s.num_frames)]
    if s.kind == "raw":
        return rel, [_Job("video", str(s.path / PART_TMPL.format(k)), str(dst_prefix / p / PART_TMPL.format(k)))
                     for k in range(s.num_parts)]
    if cfg.format == "frames" and s.kind in ("video", "untrimmed") and s.frame_scores is None:
        return p.with_suffix("").as_posix(), [_Job("frames", str(s.path), str(dst_prefix / p.with_suffix("")))]
    return p.with_suffix(".mp4").as_posix(), [_Job("video", str(s.path), str(dst_prefix / p.with_suffix(".mp4")))]


def _run_jobs(jobs: list[_Job], cfg: PrepareConfig) -> list[dict]:
    """Every job in a pool of cfg.workers processes (results in job order), a progress line at most every second."""
    results: list[dict] = [{} for _ in jobs]
    if not jobs:
        return results
    start, last = time.perf_counter(), 0.0
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(min(cfg.workers, len(jobs)), initializer=_die_with_parent) as pool:
        items = [(k, job, cfg) for k, job in enumerate(jobs)]
        for n, (k, result) in enumerate(pool.imap_unordered(_prepare_file, items), start=1):
            results[k] = result
            now = time.perf_counter()
            if now - last >= 1.0 or n == len(jobs):
                rate = n / max(now - start, 1e-9)
                print(f"  {n}/{len(jobs)} files, {rate:.1f} files/s, ETA {(len(jobs) - n) / rate:.0f} s", flush=True)
                last = now
    return results


def _prepare_file(item: tuple[int, _Job, PrepareConfig]) -> tuple[int, dict]:
    """Pool task: write one output unless it exists -> (k, its figures) or (k, {"error": one line})."""
    k, job, cfg = item
    try:
        if not Path(job.dst).exists():
            _write_output(job, cfg)
        return k, _output_figures(job)
    except Exception as err:   # PyAV, Pillow and the OS raise many unrelated types: every one is a broken source
        return k, {"error": f"{type(err).__name__}: {err}".splitlines()[0]}


def _write_output(job: _Job, cfg: PrepareConfig) -> None:
    """Write job.dst under a temporary name in its folder, fsync, rename; leftovers of killed runs are removed."""
    dst = Path(job.dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    stale = f".{dst.name}{_TMP_TAG}"
    for name in os.listdir(dst.parent):
        if name.startswith(stale):
            _remove(dst.parent / name)
    tmp = dst.parent / f"{stale}{os.getpid()}"
    try:
        if job.form == "video":
            _encode_video(Path(job.src), tmp, cfg)
        elif job.form == "image":
            _write_image(read_image(job.src, cfg.short_side), Path(job.src), tmp, cfg)
        else:
            tmp.mkdir()
            if job.form == "frames":
                _transcode(Path(job.src), cfg.short_side,
                           lambda rgb, n, rate: _write_image(rgb, None, tmp / FRAME_TMPL.format(n + 1), cfg))
            else:
                for n in range(1, job.num_frames + 1):
                    src = Path(job.src) / FRAME_TMPL.format(n)
                    _write_image(_load_image(src), src, tmp / FRAME_TMPL.format(n), cfg)
        _fsync(tmp)
        try:
            os.rename(tmp, dst)
        except OSError:   # a folder another writer (a worker of a killed run) finished first: same content
            if not dst.is_dir():
                raise
        _fsync(dst.parent)
    finally:
        _remove(tmp)


def _transcode(src: Path, short_side: int, write: Callable[[np.ndarray, int, Fraction], None]) -> int:
    """Decode every frame of video `src` once (one decoder thread) -> write(rgb (H, W, 3), n, rate) for n = 0, 1, ...,
    frames larger than short_side resized to it; returns the count. A video that decodes to fewer frames than its
    container claims (more than one frame less; 2 % without a frame count) is truncated: a ValueError."""
    with _open_video(src) as (container, stream):
        stream.codec_context.thread_count = 1
        rate = _stream_rate(src, stream)
        claimed = _metadata_frames(container, stream) or 0
        slack = 1 if stream.frames else max(1, claimed // 50)
        n = 0
        for frame in container.decode(stream):
            write(_fit_short_side(to_rgb(frame), short_side), n, rate)
            n += 1
    if n == 0:
        raise ValueError(f"{src}: no decodable video frames")
    if n < claimed - slack:
        raise ValueError(f"{src}: truncated: decodes to {n} of the {claimed} frames its container claims")
    return n


def _encode_video(src: Path, dst: Path, cfg: PrepareConfig) -> None:
    """Re-encode `src` as H.264 yuv420p in an mp4 at dst: libx264 in one thread without mbtree (reproducible bytes,
    see synthetic._encode_mp4), CRF cfg.crf, fastdecode, a keyframe every cfg.gop frames (0: all-intra), no
    B-frames, no scene-cut keyframes, same frame rate; frame n at pts n (frame numbers and k / fps times kept)."""
    keyint = cfg.gop or 1
    with av.open(str(dst), mode="w", format="mp4") as container:
        box: dict = {}

        def write(rgb: np.ndarray, n: int, rate: Fraction) -> None:
            rgb = rgb[:max(2, rgb.shape[0] // 2 * 2), :max(2, rgb.shape[1] // 2 * 2)]   # yuv420p: even sides
            if "stream" not in box:
                box["stream"] = stream = container.add_stream("libx264", rate=rate)
                stream.width, stream.height, stream.pix_fmt = rgb.shape[1], rgb.shape[0], "yuv420p"
                stream.codec_context.options = {
                    "crf": str(cfg.crf), "preset": "veryfast", "tune": "fastdecode", "threads": "1",
                    "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes=0:threads=1:no-mbtree=1"}
            frame = reformat(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24"), "yuv420p")
            frame.pts, frame.time_base = n, 1 / Fraction(rate)
            for packet in box["stream"].encode(frame):
                container.mux(packet)

        _transcode(src, cfg.short_side, write)
        for packet in box["stream"].encode():
            container.mux(packet)


def _fit_short_side(rgb: np.ndarray, short_side: int) -> np.ndarray:
    """(H, W, 3) resized to `short_side` with the training pipeline's transforms.Resize when larger, else as is."""
    if min(rgb.shape[:2]) <= short_side:
        return rgb
    return transforms.Resize(short_side=short_side)(rgb[None])[0]


def _write_image(rgb: np.ndarray, src: Path | None, dst: Path, cfg: PrepareConfig) -> None:
    """A JPEG at dst, fsynced: the source's bytes when it is a JPEG that needs no resizing, else rgb fitted to the
    short side and encoded at cfg.jpeg_quality."""
    fitted = _fit_short_side(rgb, cfg.short_side)
    if src is not None and fitted is rgb and src.suffix.lower() in (".jpg", ".jpeg"):
        shutil.copyfile(src, dst)
    else:
        Image.fromarray(fitted).save(dst, format="JPEG", quality=cfg.jpeg_quality)
    _fsync(dst)


def _output_figures(job: _Job) -> dict:
    """Frames, seconds of video, bytes of a finished output and bytes of its source."""
    dst, src = Path(job.dst), Path(job.src)
    sizes = (lambda p: sum(f.stat().st_size for f in p.iterdir()) if p.is_dir() else p.stat().st_size)
    if job.form == "video":
        with _open_video(dst) as (container, stream):
            frames = _metadata_frames(container, stream) or 0
            seconds = frames / float(_stream_rate(dst, stream))
    elif job.form == "frames":
        frames = _count_folder_frames(dst)
        seconds = frames / video_fps(src)
    else:
        frames, seconds = (1 if job.form == "image" else job.num_frames), 0.0
    return {"frames": frames, "seconds": seconds, "bytes": sizes(dst), "src_bytes": sizes(src)}


def _write_prepared_list(x: dict, done: dict[str, dict], failed: dict[str, str], out: Path) -> dict:
    """The list of one split with the samples whose outputs all exist (same order and fields, new paths; frame
    folders with their counts) and its frame-score sidecar; -> {list, samples, written, kept (source indices)}."""
    rows, kept, scores = [], [], {}
    is_json = x["dst_list"].suffix.lower() == ".json"
    for i, s, rel, jobs in x["entries"]:
        if any(j.src in failed or j.dst not in done for j in jobs):
            continue
        count = done[jobs[0].dst]["frames"] if jobs[0].form in ("frames", "folder") else None
        rows.append(_json_entry(s, rel, count) if is_json else _list_line(s, rel, count))
        kept.append(i)
        if s.frame_scores is not None:
            scores[rel] = s.frame_scores
    text = json.dumps(rows, indent=1) + "\n" if is_json else "".join(r + "\n" for r in rows)
    write_atomic(x["dst_list"], text)
    side = frame_scores_path(x["spec"].list_file)
    if side.is_file():
        write_frame_scores(frame_scores_path(x["dst_list"]), scores, fps=json.loads(side.read_text()).get("fps", 1.0))
    return {"list": _rel(x["dst_list"], out), "samples": len(x["samples"]), "written": len(rows), "kept": kept}


def _list_line(s: Sample, rel: str, count: int | None) -> str:
    """A .txt list line of sample s at path rel (count: the frame folder's frame count)."""
    if count is not None:
        return f"{rel} {count} {s.label}"
    if s.kind == "raw":
        return f"{rel} {s.label} {s.num_parts} " + " ".join(str(p) for p in s.pos_clips)
    if s.kind == "windows":
        return f"{rel} {s.label} " + " ".join(f"{a!r}:{b!r}" for a, b in s.windows)
    return f"{rel} {s.label}"


def _json_entry(s: Sample, rel: str, count: int | None) -> dict:
    """An MMAction2 .json list entry of sample s at path rel (count: the frame folder's frame count)."""
    if count is not None:
        return {"frame_dir": rel, "total_frames": count, "label": s.label}
    if s.kind == "raw":
        return {"video_dir": rel, "label": s.label, "num_clips": s.num_parts, "positive_clip_inds": list(s.pos_clips)}
    if s.kind == "windows":
        return {"filename": rel, "label": s.label, "windows": [list(w) for w in s.windows]}
    return {"filename": rel, "label": s.label}


def _copy_dataset_files(spec: DatasetSpec, data_root: Path, out: Path, lists: list[dict]) -> None:
    """The class names (the file the dataset's were read from, else the layout's first candidate) and, for a plain
    folder, its other top-level files (motion.json ...) that are not lists written here."""
    if spec.layout == "plain":
        written = {x["dst_list"].name for x in lists} | {frame_scores_path(x["dst_list"]).name for x in lists}
        for f in sorted(Path(spec.root).iterdir()):
            if f.is_file() and f.name not in written and f.name != PREPARE_REPORT and _TMP_TAG not in f.name:
                write_atomic(out / spec.name / f.name, f.read_bytes())
        return
    rels = LAYOUTS[spec.layout]["classes"]
    found = next((r for r in rels if (data_root / r).is_file()), None)
    text = (data_root / found).read_bytes() if found else "".join(c + "\n" for c in spec.classes).encode()
    write_atomic(out / (found or rels[0]), text)


def _disk_figures(jobs: dict[str, _Job], done: dict[str, dict]) -> dict:
    """Files and bytes written; hours of video and GB per hour of video, prepared and as the sources are."""
    video = [r for dst, r in done.items() if jobs[dst].form in ("video", "frames")]
    hours = sum(r["seconds"] for r in video) / 3600
    per_hour = (lambda key: round(sum(r[key] for r in video) / 1e9 / hours, 3) if hours else None)
    return {"files": len(done), "bytes": sum(r["bytes"] for r in done.values()), "video_hours": round(hours, 4),
            "gb_per_video_hour": per_hour("bytes"), "source_gb_per_video_hour": per_hour("src_bytes")}


def _measure_prepared(src: DatasetSpec, dst: DatasetSpec, cfg: PrepareConfig, kept: list[int]) -> dict:
    """Mean CPU ms per training sample (`worker_cpu_ms`) of PREPARE_PIPELINES on the first cfg.measure kept training
    samples, as they were (before) and prepared (after); the same items, frames and crops (same seeds)."""
    if not cfg.measure or not kept or "train" not in dst.splits:
        return {}
    crop = round(cfg.short_side * 224 / 256)
    side = transforms.short_side_for(crop)
    before = load_split(src, "train").subset(kept[:cfg.measure])
    after = load_split(dst, "train")[:cfg.measure]
    figures = {}
    for label, (family, sampling) in PREPARE_PIPELINES.items():
        for when, samples in (("before", before), ("after", after)):
            ds = VideoDataset(samples, sampling, transform=transforms.train_transform(family, crop, uint8=True),
                              image_to_clip=transforms.build_image_to_clip("still", short_side=side),
                              image_short_side=side)
            figures.setdefault(label, {})[when] = round(float(np.mean(worker_cpu_ms(ds, len(samples)))), 1)
    return figures


def _print_prepare_summary(report: dict, report_path: Path) -> None:
    disk, failed = report["disk"], report["failed"]
    print(f"prepared {report['dataset']}: {disk['files']} files, {disk['bytes'] / 1e6:.1f} MB under {report['out']}; "
          f"{len(failed)} source(s) failed and left out" + (f" (reasons in {report_path})" if failed else ""))
    for split, s in report["splits"].items():
        print(f"  {split}: {s['written']} of {s['samples']} samples -> {s['list']}")
    if disk["gb_per_video_hour"] is not None:
        print(f"  disk: {disk['gb_per_video_hour']:.2f} GB per hour of video (as downloaded "
              f"{disk['source_gb_per_video_hour']:.2f} GB/h; {disk['video_hours'] * 60:.1f} min of video)")
    for label, f in report["cpu_ms_per_sample"].items():
        print(f"  CPU per training sample, {label} (one DataLoader worker, current transforms): "
              f"{f['before']:.1f} ms before -> {f['after']:.1f} ms prepared")
    print(f"  train from it: python train.py --data-root {report['out']} --target {report['dataset']}")


class _CpuTimed(torch.utils.data.Dataset):
    """Item 0: an untimed read of item 0 of `dataset`; item k >= 1: the process CPU seconds of reading item k - 1."""

    def __init__(self, dataset: torch.utils.data.Dataset, count: int):
        self.dataset, self.count = dataset, count

    def __len__(self) -> int:
        return self.count + 1

    def __getitem__(self, k: int) -> float:
        start = time.process_time()
        self.dataset[max(k - 1, 0)]
        return time.process_time() - start


def _die_with_parent() -> None:
    """Pool initializer: the kernel kills this worker when its parent dies (Linux PR_SET_PDEATHSIG), so a killed
    prepare leaves no worker writing on; elsewhere a no-op (the temporary names keep writers apart anyway)."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError, TypeError):
        pass


def _fsync(path: Path) -> None:
    """Flush a file or a folder (its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _rel(path: str | Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


if __name__ == "__main__":
    cli()
