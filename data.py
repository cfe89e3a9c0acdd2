"""Data of OmniSource: frame sampling, decoding, annotation lists, datasets (Sec. 3.5 forms of web data, Sec. 4).

An annotation list (MMAction2's formats) holds one sample per line, its paths relative to the list's data prefix. The
kind of a line follows from its extension and field count, so one list may mix kinds (Sec. 3.5):
    videos/x.mp4 LABEL                       video      trimmed clip (K400-tr, IG-vid)
    untrimmed/x.mp4 LABEL                    untrimmed  long video, first path component 'untrimmed' (K400-untr)
    frames/x 300 LABEL                       frames     frame folder img_00001.jpg ... and its frame count
    images/x.jpg LABEL                       image      still web image (GG-k400, IG-img)
    dir LABEL NUM_PARTS POS...               raw        untrimmed video cut in 10-s pieces dir/part_0.mp4 ... and the
                                                        teacher's positive pieces (MMAction2 RawVideoDataset)
    x.mp4 LABEL 10.000:20.000 40.000:50.000  windows    untrimmed video and the teacher's positive windows START:END
                                                        in seconds (3D students; written by filter.py)
Blank lines and '#' comments are skipped. A .json list holds MMAction2's dicts: {video_dir, label, num_clips,
positive_clip_inds} (raw), {filename, label} (video or image), {filename, label, windows: [[START, END], ...]},
{frame_dir, total_frames, label}. Beside a list STEM.txt, a sidecar STEM_frame_scores.json (written by filter.py)
holds the teacher's scores of each untrimmed video's 1-FPS frames. The untrimmed-video policy: filter.py's docstring.

Datasets by name (`resolve_dataset`): a plain folder DATA_ROOT/NAME/ (classes.txt, train.txt, val.txt), or the
released layouts of the paper's datasets (`LAYOUTS`, Sec. 4 and appendix Table 11): k400, k200, ucf101, hmdb51, the
web sources gg, ig-img, web-img, ig-vid, and the untrimmed k200-raw, k400-untr (NAME:filtered: the teacher-filtered
list of a web source).

`read_frames` is the one decoding entry point; webscale.py (support module) holds the compact lists and their
parsers, the frame-skipping decoder behind `read_frames` and the atomic file writer.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import av
import numpy as np
import torch
from PIL import Image, ImageOps

import transforms
import webscale

logger = logging.getLogger(__name__)

FRAME_TMPL = "img_{:05d}.jpg"   # MMAction2 RawframeDataset filename_tmpl, 1-based (start_index=1)
MIN_IMAGE_SIDE = 8   # px: a smaller web image (a 1x1 tracking pixel) fails to load, is replaced and counted
WINDOW_TOL = 1e-3    # s: a frame time within 1 ms of a window bound counts as on it (lists write milliseconds)


# ----------------------------------------------------------------------------------------------------------------------
# 1. Frame sampling: MMAction2 SampleFrames
# ----------------------------------------------------------------------------------------------------------------------

def sample_frames(num_frames: int, clip_len: int, frame_interval: int, num_clips: int,
                  test_mode: bool, rng: np.random.Generator | None = None) -> np.ndarray:
    """0-based frame indices `(num_clips * clip_len,)`, clip-major: exactly MMAction2 1.x SampleFrames
    (out_of_bound_opt='loop', keep_tail_frames=False, twice_sample=False, no temporal jitter).

    TSN (clip_len=1, Sec. 5.1): one frame per segment of `num_frames / num_clips` frames, a random offset inside
    the segment in training, the segment centre in testing. 3D (clip_len>1, SlowOnly): clips of `clip_len` frames
    `frame_interval` apart; training draws the start at random, testing spreads `num_clips` starts evenly from the
    first to the last possible start (PySlowFast's rule). Indices past the end loop around, so a video shorter than
    a clip repeats itself. `rng` (numpy Generator) replaces MMAction2's global `np.random` in training.
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
# 2. Decoding entry points: videos (PyAV), frame folders and still images (Pillow)
# ----------------------------------------------------------------------------------------------------------------------

def read_frames(path: str | Path, indices: Sequence[int]) -> np.ndarray:
    """Frames `indices` (0-based, any order, repeats allowed) as uint8 `(len(indices), H, W, 3)` RGB.

    A video is decoded with PyAV doing only the work the indices need (webscale.decode_video): one demux pass gives
    every frame's pts and the keyframes (the presentation index of a frame is the rank of its pts, right for
    variable-frame-rate web videos too; cached per process); the decoder seeks to the keyframe before each needed
    frame when that skips work, drops the frames no index needs and no other frame refers to (H.264 / HEVC / MPEG-2
    B-frames: 25-45 % less CPU per training clip), converts only the needed frames and stops after the last one.
    Every frame is bit-exact: the frame order is checked, and a file whose pts contradict its decoder is decoded
    again without skipping, else from the start counting frames (what whole-file decoding gives, by definition).
    A directory is a frame folder (img_00001.jpg is index 0); an image file is a 1-frame video.
    """
    path = Path(path)
    wanted = _check_indices(indices, path)
    if path.is_dir():    # each distinct frame read once
        images = {i: read_image(path / FRAME_TMPL.format(i + 1)) for i in np.unique(wanted).tolist()}
        return np.stack([images[i] for i in wanted.tolist()])
    if path.suffix.lower() in webscale.IMAGE_EXTS:
        if int(wanted.max()) > 0:
            raise webscale.VideoTooShortError(path, int(wanted.max()), 1)
        return np.repeat(read_image(path)[None], len(wanted), axis=0)
    with webscale.open_video(path) as (container, stream):
        return webscale.decode_video(container, stream, path, wanted)


def read_frames_lenient(path: str | Path, count: int, indices_for: Callable[[int], Sequence[int]],
                        max_missing: int | None = None, read: Callable[[np.ndarray], np.ndarray] | None = None
                        ) -> tuple[np.ndarray, int]:
    """Frames `indices_for(count)` of a video whose frame count `count` came from its container (or a list), read
    again at the true count n when the video decodes to fewer frames -> (frames, the count they were read at).

    `read` (default `read_frames(path, ...)`, e.g. an already open container) makes the first try. No frame at all,
    or more than `max_missing` frames short (None: any shortfall is a miscount), is a truncated file (Sec. 3.3): the
    webscale.VideoTooShortError is raised. The one such retry of VideoDataset and filter.py (teacher scoring).
    """
    read = read or (lambda indices: read_frames(path, indices))
    try:
        return read(np.asarray(indices_for(count))), count
    except webscale.VideoTooShortError as err:
        n = err.num_frames
        if n < 1 or (max_missing is not None and count - n > max_missing):
            raise
    return read_frames(path, indices_for(n)), n


def read_frames_naive(path: str | Path, indices: Sequence[int]) -> np.ndarray:
    """Reference reader: decode AND convert every frame of the video (default PyAV settings, no seeking, no early
    stop), then pick `indices`: the benchmark baseline and the tests' reference for `read_frames`."""
    path = Path(path)
    wanted = _check_indices(indices, path)
    if path.is_dir() or path.suffix.lower() in webscale.IMAGE_EXTS:
        return read_frames(path, wanted)
    webscale.check_file(path)
    with av.open(str(path)) as container:
        frames = [webscale.to_rgb(f) for f in container.decode(video=0)]
    if int(wanted.max()) >= len(frames):
        raise webscale.VideoTooShortError(path, int(wanted.max()), len(frames))
    return np.stack([frames[i] for i in wanted])


def count_frames(path: str | Path) -> int:
    """Number of frames of a video, frame folder (img_*.jpg files) or image (1). Videos: the container's count when
    it agrees with duration x frame rate to within one frame, else every frame decoded and counted (Matroska and
    WebM carry no count)."""
    path = Path(path)
    if path.is_dir():
        n = sum(1 for _ in path.glob("img_*.jpg"))
        if n == 0:
            raise ValueError(f"{path}: frame folder without img_*.jpg frames")
        return n
    if path.suffix.lower() in webscale.IMAGE_EXTS:
        webscale.check_file(path)
        return 1
    with webscale.open_video(path) as (container, stream):
        return webscale.count_video_frames(container, stream)


def video_fps(path: str | Path) -> float:
    """Frame rate of a video (average rate; else the guessed rate; else frames / duration)."""
    path = Path(path)
    with webscale.open_video(path) as (container, stream):
        return float(webscale.stream_rate(path, stream))


def read_image(path: str | Path, short_side: int | None = None) -> np.ndarray:
    """An image file -> uint8 `(H, W, 3)` RGB, EXIF orientation applied (as OpenCV / mmcv do); an image smaller than
    MIN_IMAGE_SIDE a side (tracking pixels, broken thumbnails of a web crawl) is a ValueError.

    short_side: the short side the pipeline resizes the image to next (Sec. 3.5, before replication or warping). A
    JPEG at least twice that size is decoded reduced in the DCT domain (Pillow's draft mode: 1/2, 1/4 or 1/8 scale,
    the smallest keeping the short side >= `short_side`), a fraction of a full decode of a 12-megapixel crawl image;
    it differs from a full decode + resize only by draft mode's DCT averaging (an area-like filter).
    """
    path = Path(path)
    webscale.check_file(path)
    with Image.open(path) as im:
        w, h = im.size
        if min(w, h) < MIN_IMAGE_SIDE:
            raise ValueError(f"{path}: {w}x{h} image, smaller than {MIN_IMAGE_SIDE} pixels a side")
        if short_side is not None and im.format == "JPEG" and min(w, h) >= 2 * short_side:
            scale = short_side / min(w, h)
            im.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
        im = ImageOps.exif_transpose(im)
        return np.asarray(im.convert("RGB"), dtype=np.uint8)   # convert() forces the (reduced) decode


def cut_video(path: str | Path, out_dir: str | Path, seconds: float = 10.0, crf: int = 18) -> int:
    """Sec. 3.5 (3D students): cut a video into `seconds`-long pieces out_dir/part_0.mp4, part_1.mp4, ... -> their
    number: the layout of MMAction2's RawVideoDataset (list line 'DIR LABEL NUM_PARTS POS_IDX...').

    Piece i holds frames [i * n, (i + 1) * n), n = round(seconds * fps); a tail shorter than n / 2 joins the last
    piece, a video shorter than one piece is one piece. The pieces are re-encoded (H.264 yuv420p, libx264 `crf`,
    same frame rate, odd frame sizes scaled to the even size below), so the cuts fall on exact frame boundaries
    whatever the source's keyframe spacing (web videos: every 2-10 s) and every piece decodes on its own. Frames
    are decoded and encoded one at a time. On any error, and when the video decodes to fewer frames than its
    container claims (a truncated download: VideoTooShortError), the pieces written are removed.
    """
    path, out_dir = Path(path), Path(out_dir)
    if not seconds > 0:
        raise ValueError(f"cut_video: seconds must be > 0, got {seconds}")
    total = count_frames(path)
    created, written, writer = not out_dir.exists(), [], None
    try:
        with webscale.open_video(path) as (container, stream):
            rate = webscale.stream_rate(path, stream)
            per_piece = max(1, round(seconds * float(rate)))
            num_pieces = max(1, int(total / per_piece + 0.5))
            out_dir.mkdir(parents=True, exist_ok=True)
            for i, frame in enumerate(container.decode(stream)):
                if min(i // per_piece, num_pieces - 1) != len(written) - 1:   # frame i opens the next piece
                    if writer is not None:
                        writer.close()
                    written.append(out_dir / webscale.PART_TMPL.format(len(written)))
                    writer = webscale.VideoWriter(written[-1], rate, frame, {"crf": str(crf), "preset": "veryfast"})
                writer.write(frame)
            if writer is None:
                raise ValueError(f"{path}: no decodable video frames")
            writer.close()
            if writer.count + (len(written) - 1) * per_piece < total:   # cut short: a truncated file
                raise webscale.VideoTooShortError(path, total - 1, writer.count + (len(written) - 1) * per_piece)
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
    """Sec. 3.5 windows: (start, end) seconds -> the frame range [first, stop) of the frames k with start <= k / fps
    < end (the numbering `cut_video` cuts by), clipped to `num_frames`; a bound within WINDOW_TOL of a frame time
    counts as on it. A window without a frame is a one-line ValueError naming `path`."""
    start, end = window
    first = max(0, math.ceil((start - WINDOW_TOL) * fps))
    stop = min(int(num_frames), math.ceil((end - WINDOW_TOL) * fps))
    if stop <= first:
        raise ValueError(f"{path}: window {start:.3f}:{end:.3f} s holds no frame ({num_frames} frames at "
                         f"{fps:.3f} fps)")
    return first, stop


# ----------------------------------------------------------------------------------------------------------------------
# 3. Lists and layouts: datasets by name (Sec. 4, appendix Table 11), labels by class name
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


# The released layouts of the paper's datasets, every path relative to DATA_ROOT (A = OmniSource/annotations below).
# 'root': the dataset's folder; 'classes': candidate class-name files (the first found wins); 'classes_from': else
# the sorted sub-folders of this folder (MMAction2's label order); 'splits': split -> (list file, data prefix);
# 'filtered': the teacher-filtered train list (Sec. 3.4; the released `*_wodup.txt` lists are also de-duplicated
# against k200_val); 'folder': a web source's folder. A data prefix None is OmniSource/ when the list's first path
# starts with `folder` (as in MMAction2's webimage_200 union list), else OmniSource/<folder>/.
_ANN = "OmniSource/annotations"
_K200_CLASSES = (f"{_ANN}/k200_actions.txt", "OmniSource/classes.txt")
_K400_CLASSES = ("kinetics400/classes.txt", "kinetics400/label_map_k400.txt", f"{_ANN}/label_map_k400.txt")
LAYOUTS: dict[str, dict] = {
    "k400": dict(
        root="kinetics400",
        about="Kinetics-400 trimmed 10-s clips, K400-tr (Sec. 4.1); MMAction2 data/kinetics400; "
              "class names: MMAction2 tools/data/kinetics/label_map_k400.txt copied in",
        classes=_K400_CLASSES,
        splits={"train": ("kinetics400/kinetics400_train_list_videos.txt", "kinetics400/videos_train"),
                "val": ("kinetics400/kinetics400_val_list_videos.txt", "kinetics400/videos_val")}),
    "k200": dict(
        root="OmniSource", about="Mini-Kinetics (200 classes), target of the released OmniSource subset",
        classes=_K200_CLASSES,
        splits={"train": (f"{_ANN}/kinetics_200/k200_train.txt", "OmniSource/kinetics_200_train"),
                "val": (f"{_ANN}/kinetics_200/k200_val.txt", "OmniSource/kinetics_200_val")}),
    "ucf101": dict(
        root="ucf101", about="UCF101 split 1 (Table 11, transfer); MMAction2 data/ucf101",
        classes=("ucf101/classes.txt", "ucf101/annotations/classInd.txt"), classes_from="ucf101/videos",
        splits={"train": ("ucf101/ucf101_train_split_1_videos.txt", "ucf101/videos"),
                "val": ("ucf101/ucf101_val_split_1_videos.txt", "ucf101/videos")}),
    "hmdb51": dict(
        root="hmdb51", about="HMDB51 split 1 (transfer); MMAction2 data/hmdb51",
        classes=("hmdb51/classes.txt",), classes_from="hmdb51/videos",
        splits={"train": ("hmdb51/hmdb51_train_split_1_videos.txt", "hmdb51/videos"),
                "val": ("hmdb51/hmdb51_val_split_1_videos.txt", "hmdb51/videos")}),
    "gg": dict(
        root="OmniSource", folder="googleimage_200",
        about="GoogleImage web images, GG-k400 (Sec. 4.2); released googleimage_200", classes=_K200_CLASSES,
        splits={"train": (f"{_ANN}/googleimage_200/googleimage_200.txt", None)},
        filtered=f"{_ANN}/googleimage_200/tsn_8seg_googleimage_200_wodup.txt"),
    "ig-img": dict(
        root="OmniSource", folder="insimage_200",
        about="Instagram images, IG-img (Sec. 4.2); released insimage_200", classes=_K200_CLASSES,
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
        about="Instagram trimmed videos, IG-vid (Sec. 4.2); released insvideo_200", classes=_K200_CLASSES,
        splits={"train": (f"{_ANN}/insvideo_200/insvideo_200.txt", None)},
        filtered=f"{_ANN}/insvideo_200/slowonly_8x8_insvideo_200_wodup.txt"),
    "k200-raw": dict(
        root="OmniSource",
        about="Kinetics-200 untrimmed videos in 10-s pieces (Sec. 3.5, RawVideoDataset); only the "
              "filtered JSON is released; the unfiltered list is yours to write (all pieces positive)",
        classes=_K200_CLASSES,
        splits={"train": (f"{_ANN}/kinetics_raw_200/kinetics_raw_200.txt", "OmniSource/kinetics_raw_200_train")},
        filtered=f"{_ANN}/kinetics_raw_200/slowonly_8x8_kinetics_raw_200.json"),
    "k400-untr": dict(
        root="OmniSource",
        about="K400-untr, the rest of the K400 training videos (Sec. 4.1); not released: mirrors "
              "k200-raw; lines 'untrimmed/ID.mp4 LABEL' (whole video) or 'DIR LABEL NUM_PARTS POS...'",
        classes=_K400_CLASSES,
        splits={"train": (f"{_ANN}/kinetics_raw_400/kinetics_raw_400.txt", "OmniSource/kinetics_raw_400_train")},
        filtered=f"{_ANN}/kinetics_raw_400/slowonly_8x8_kinetics_raw_400.json"),
}
PLAIN_LAYOUT = "DATA_ROOT/NAME/ with classes.txt (line i = name of label i), train.txt and val.txt"


def resolve_dataset(data_root: str | Path, name: str, filtered: bool = False) -> DatasetSpec:
    """Find dataset `name` under `data_root` -> DatasetSpec (class names read, lists not yet read).

    A plain folder DATA_ROOT/NAME/ with classes.txt (lists NAME/{train,val,test}.txt, data prefix NAME/) wins over a
    layout name (`LAYOUTS`: e.g. k400 reads kinetics400/kinetics400_{train,val}_list_videos.txt with data prefix
    kinetics400/videos_{train,val}/). `filtered=True` or the suffix ':filtered' ('gg:filtered') selects a web
    source's teacher-filtered train list.
    """
    data_root = Path(data_root)
    if name.endswith(":filtered"):
        name, filtered = name[:-len(":filtered")], True
    plain, web = data_root / name, ", ".join(k for k, v in LAYOUTS.items() if "filtered" in v)
    if name and (plain / "classes.txt").is_file():
        if filtered:
            raise ValueError(f"dataset {name}: filtered lists exist only for the web sources {web}")
        splits = {s: SplitSpec(plain / f"{s}.txt", plain) for s in ("train", "val", "test")
                  if (plain / f"{s}.txt").is_file()}
        if not splits:
            raise FileNotFoundError(f"dataset {name}: no train.txt or val.txt in {plain}")
        return DatasetSpec(name, plain, read_classes(plain / "classes.txt"), splits)
    if name not in LAYOUTS and name and plain.is_dir():
        raise FileNotFoundError(f"dataset {name}: {plain}/classes.txt not found (a plain dataset "
                                f"folder needs classes.txt, train.txt and val.txt)")
    if name not in LAYOUTS:
        raise ValueError(f"unknown dataset {name!r} under {data_root}: known names are "
                         f'{", ".join(LAYOUTS)} (a web source\'s teacher-filtered list: NAME:filtered), '
                         f"or make a plain folder {PLAIN_LAYOUT}")
    layout = LAYOUTS[name]
    lists = layout["splits"]
    if filtered:
        if "filtered" not in layout:
            raise ValueError(f"dataset {name}: no teacher-filtered list; filtered lists exist for {web}")
        lists = {"train": (layout["filtered"], layout["splits"]["train"][1])}
    splits = {s: SplitSpec(data_root / lst, data_root / pre if pre else _web_prefix(data_root, layout, data_root / lst))
              for s, (lst, pre) in lists.items()}
    return DatasetSpec(name, data_root / layout["root"], _layout_classes(data_root, name, layout), splits,
                       layout=name, filtered=filtered)


def load_split(dataset: DatasetSpec, split: str) -> webscale.SampleList:
    """Read split `split` of a resolved dataset -> compact `SampleList` (labels checked against classes)."""
    if split not in dataset.splits:
        if dataset.layout == "plain":
            raise FileNotFoundError(f'dataset {dataset.name}: list file {Path(dataset.root) / (split + ".txt")} '
                                    f"not found (expected {PLAIN_LAYOUT})")
        raise ValueError(f"dataset {dataset.name}: no split {split!r}; available: "
                         f'{", ".join(dataset.splits) or "none"}')
    s = dataset.splits[split]
    return webscale.read_list(s.list_file, s.prefix, len(dataset.classes))


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


def motion_path(dataset: DatasetSpec) -> Path:
    """Where a dataset's camera-motion Gaussian of Eq. 2 lives: DATA_ROOT/<its folder>/motion.json (a plain dataset's
    NAME/, a layout's 'root': kinetics400/ for k400). `omnisource.py --estimate-motion` writes it there and
    `train.py --image-to-clip warp-*` reads it from there, without --motion."""
    return Path(dataset.root) / "motion.json"


def map_labels(samples: webscale.SampleList, source_classes: Sequence[str], target_classes: Sequence[str], source: str
               ) -> tuple[webscale.SampleList, int]:
    """Translate a source's labels into the target's label space by class name -> (samples, num_left_out).

    Label l of the source (class `source_classes[l]`) becomes the target label of the class with the same name,
    ignoring case, '_' and spaces (`_class_key`: 'air drumming' = 'Air_Drumming'), so K200's 200 web classes land on
    their places among K400's 400. Samples whose class the target lacks are left out and counted. `samples`: a
    `SampleList` (the result is one too) or a list of `Sample`s. One-line ValueErrors, naming `source` (e.g. '--aux
    gg'): two names of one list that are one class, a label outside the classes, no class name shared.
    """
    _check_class_names(source_classes, source)
    _check_class_names(target_classes, "the target")
    index = {_class_key(name): i for i, name in enumerate(target_classes)}
    table = np.array([index.get(_class_key(n), -1) for n in source_classes], dtype=np.int64)
    if not (table >= 0).any():
        raise ValueError(f"{source}: none of its {len(source_classes)} classes ({_preview(source_classes)}) "
                         f"is a class of the target ({_preview(target_classes)})")
    labels = webscale.labels_of(samples)
    if labels.size and not (0 <= labels.min() and labels.max() < len(source_classes)):
        bad = int(labels[(labels < 0) | (labels >= len(source_classes))][0])
        raise ValueError(f"{source}: label {bad} is outside its {len(source_classes)} classes")
    mapped = table[labels]
    keep = np.flatnonzero(mapped >= 0)
    if isinstance(samples, webscale.SampleList):
        return samples.subset(keep, labels=mapped[keep]), len(labels) - len(keep)
    return [dataclasses.replace(samples[i], label=int(mapped[i])) for i in keep], len(labels) - len(keep)


def class_order(checkpoint_classes: Sequence[str], dataset_classes: Sequence[str], where: str) -> np.ndarray:
    """Where each of the dataset's classes is among a checkpoint's, by name (as `map_labels` compares them) -> order
    (K,) int64: a model's outputs `(N, K)` read as `outputs[:, order]` (or `fc.weight[order]`) are in the dataset's
    order. Names that differ, or repeat after normalisation, are a one-line ValueError starting with `where`."""
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
# 4. The dataset: every sample kind becomes a clip (Sec. 3.5)
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class Sampling:
    """Frame sampling of one item: `num_clips` clips of `clip_len` frames `frame_interval` apart. TSN: clip_len=1,
    frame_interval=1, num_clips=segments (3 train / 25 test); SlowOnly 4x16: 4, 16, 1 train / 10 test."""
    clip_len: int = 1
    frame_interval: int = 1
    num_clips: int = 3

    @property
    def num_frames(self) -> int:
        return self.clip_len * self.num_clips


class VideoDataset(torch.utils.data.Dataset):
    """Samples of any kind -> `(clip, label, index)`: frames uint8 `(T, H, W, 3)` through `transform` (a tensor
    when there is none). Train: random sampling; test_mode: MMAction2's deterministic test sampling.

    How each kind becomes a clip (Sec. 3.5; the untrimmed-video policy as a whole: filter.py's docstring):
    - video, untrimmed: sampled over the whole video; frames: a frame folder, its frame count from the list;
    - image: `image_to_clip(image, clip_len * num_clips)`, default `transforms.image_to_clip`, the still clip (the
      image repeated); it may take `rng` and `label` (class-specific camera motion, Table 8). `image_short_side`:
      the short side the pipeline resizes images to, so large JPEGs decode reduced (`read_image`);
    - untrimmed videos as 3D clips: raw (a random positive piece in training, the first in testing; MMAction2
      RawVideoDataset) or windows (a random window in training, the first in testing; sampled like a video over
      that window's frames, decoded from the untrimmed file with seeking);
    - untrimmed videos as TSN snippets (Table 14): with `snippet(scores (F,), label, rng=, threshold=) -> positions
      (num_clips,)` (e.g. `functools.partial(transforms.select_snippet, mode='1p2n')`) a sample carrying
      `frame_scores` (its 1-FPS frames scored by filter.py's teacher) is the frames at the chosen positions, in that
      order (clip_len == 1 only; without it such samples are sampled like videos).
    Each item draws from its own numpy Generator seeded by (seed, epoch, index), handed to `transform` and
    `image_to_clip` when they take `rng`: items do not depend on workers or reading order; `set_epoch` changes them.
    A sample that fails to load (missing, empty, truncated, not a video, corrupt image) is replaced by another one
    chosen deterministically from the index (the returned index and label are the replacement's); with
    replace_failed=False (evaluation) the item is `(None, label, index)`. Failures are logged once per path
    (`failed_paths`, `num_replaced`: this process) and counted in `num_failed`: one byte per sample in shared memory,
    set by whichever process (DataLoader workers included) fails, so each counts once and other workers skip it.
    `samples`: a `SampleList` (kept: forked workers share it) or `Sample`s (converted to one).
    """

    def __init__(self, samples: Sequence[webscale.Sample], sampling: Sampling, transform: Callable | None = None,
                 test_mode: bool = False, image_to_clip: Callable = transforms.image_to_clip, seed: int = 0,
                 snippet: Callable | None = None, image_short_side: int | None = None, replace_failed: bool = True):
        if not samples:
            raise ValueError("VideoDataset: no samples")
        if seed < 0:
            raise ValueError(f"VideoDataset: seed must be >= 0, got {seed}")
        self.snippet = snippet if sampling.clip_len == 1 else None
        if self.snippet is not None:   # one frame per TSN segment, probed on made-up scores
            probe = np.asarray(self.snippet(np.array([0.9, 0.1, 0.2, 0.8, 0.3]), 0, rng=np.random.default_rng(0),
                                            threshold=0.5))
            if probe.shape != (sampling.num_clips,):
                raise ValueError(f"VideoDataset: the snippet chooser returns {probe.shape} frame positions but the "
                                 f"sampling takes num_clips={sampling.num_clips} segments")
        self.samples, self.sampling, self.test_mode = samples, sampling, test_mode
        self.transform, self.image_to_clip, self.seed = transform, image_to_clip, seed
        self.replace_failed, self.image_short_side = replace_failed, image_short_side
        # the epoch lives in shared memory too: persistent DataLoader workers see set_epoch's value
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._transform_rng = transform is not None and _takes(transform, "rng")
        self._image_rng, self._image_label = _takes(image_to_clip, "rng"), _takes(image_to_clip, "label")
        self.failed_paths: list[str] = []
        self.num_replaced = 0
        self._bad: dict[int, str] = {}         # index -> error message, this process
        self._counts: dict[str, int] = {}      # video path -> frame count cache

    @property
    def samples(self) -> webscale.SampleList:
        """The samples as a compact `SampleList` (a list of `Sample`s assigned here is converted)."""
        return self._samples

    @samples.setter
    def samples(self, samples: webscale.SampleList | Sequence[webscale.Sample]) -> None:
        self._samples = samples if isinstance(samples, webscale.SampleList) else \
            webscale.SampleList.from_samples(samples)
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
        """Select the epoch's randomness (call in the main process; workers, persistent ones too, read it)."""
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, int]:
        frames, label, used, rng = self._load_with_replacement(index)
        if frames is None:                  # unreadable, and replace_failed=False
            return None, label, used
        if self.transform is None:
            return torch.from_numpy(np.ascontiguousarray(frames)), label, used
        return (self.transform(frames, rng=rng) if self._transform_rng else self.transform(frames)), label, used

    def load(self, index: int) -> tuple[np.ndarray | None, int, int]:
        """Frames uint8 `(T, H, W, 3)` of item `index` before the transform, its label and the index used (another
        one when the sample failed and was replaced; frames None when it failed and replace_failed is False)."""
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
                self._bad[j] = f"{type(err).__name__}: {err}"
                self.failed_paths.append(str(sample.path))
                self._failed[j] = 1
                logger.warning("failed to load %s (%s); it is %s (%d failed so far)", sample.path, self._bad[j],
                               "replaced by another sample" if self.replace_failed else "left out", self.num_failed)
                continue
            if sample.kind == "image":   # Sec. 3.5: image (H, W, 3) -> clip (T, H, W, 3)
                kw = {"rng": rng} if self._image_rng else {}
                if self._image_label:
                    kw["label"] = sample.label
                frames = np.asarray(self.image_to_clip(frames, self.sampling.num_frames, **kw), dtype=np.uint8)
            self.num_replaced += int(j != index)
            return frames, sample.label, j, rng
        if not self.replace_failed:
            return None, int(self.samples.labels[index]), index, self._rng(index)
        first = self.failed_paths[0] if self.failed_paths else "?"
        raise RuntimeError(f"VideoDataset: all {n} samples failed to load (first: {first}: "
                           f'{next(iter(self._bad.values()), "?")})')

    def _load_sample(self, s: webscale.Sample, rng: np.random.Generator) -> np.ndarray:
        """Decode one sample: frames uint8 `(clip_len * num_clips, H, W, 3)`, an image `(H, W, 3)`."""
        if s.kind == "image":
            return read_image(s.path, self.image_short_side)
        if s.kind == "frames":
            return read_frames(s.path, self._sample(s.num_frames, rng))
        if s.frame_scores is not None and self.snippet is not None:   # Sec. 3.5, Table 14 snippet
            fs = s.frame_scores
            pos = self.snippet(np.asarray(fs.scores), s.label, rng=rng, threshold=fs.threshold)
            return read_frames(s.path, np.asarray(fs.frames)[np.asarray(pos, dtype=np.int64)])
        if s.kind == "raw":
            part = s.pos_clips[0] if self.test_mode else int(rng.choice(s.pos_clips))
            return self._load_video(s.path / webscale.PART_TMPL.format(part), rng)
        if s.kind == "windows":   # Sec. 3.5, 3D students: one positive window of the untrimmed video
            window = s.windows[0] if self.test_mode else s.windows[int(rng.integers(len(s.windows)))]
            return self._load_video(s.path, rng, window)
        return self._load_video(s.path, rng)

    def _load_video(self, path: Path, rng: np.random.Generator, window: tuple | None = None) -> np.ndarray:
        """Count (cached per path), sample and decode a video with one open container; a window (start, end) seconds
        samples over its frames only (`window_frames`, absolute indices into the whole file)."""
        key = str(path)
        with webscale.open_video(path) as (container, stream):
            # a window needs only an upper bound: the container's count or duration x rate (counting an untrimmed
            # .webm / .mkv by decoding would cost minutes per worker); decoding corrects an optimistic one below
            total = self._counts.get(key) or \
                (webscale.metadata_frames(container, stream) if window is not None else None)
            if total is None:
                total = self._counts[key] = webscale.count_video_frames(container, stream)
            fps = float(webscale.stream_rate(path, stream)) if window is not None else 0.0

            def indices_for(num_frames: int) -> np.ndarray:     # this item's frames of a video of num_frames
                first, stop = (0, num_frames) if window is None else window_frames(window, fps, num_frames, path)
                return first + self._sample(stop - first, rng)

            frames, count = read_frames_lenient(
                path, total, indices_for, read=lambda indices: webscale.decode_video(container, stream, path, indices))
        if count != total:                                       # the container's frame count was optimistic
            self._counts[key] = count
        return frames

    def _sample(self, num_frames: int, rng: np.random.Generator) -> np.ndarray:
        sp = self.sampling
        return sample_frames(num_frames, sp.clip_len, sp.frame_interval, sp.num_clips, self.test_mode, rng)


# ----------------------------------------------------------------------------------------------------------------------
# 5. Helpers
# ----------------------------------------------------------------------------------------------------------------------

def _train_offsets(num_frames: int, clip_len: int, frame_interval: int, num_clips: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Training clip starts: MMAction2 `SampleFrames._get_train_clips` (keep_tail_frames=False)."""
    ori_clip_len = clip_len * frame_interval   # frames spanned by one clip in training
    # 1. split the usable starts [0, num_frames - ori_clip_len] in num_clips equal segments
    avg_interval = (num_frames - ori_clip_len + 1) // num_clips
    if avg_interval > 0:
        # 2a. TSN: a uniformly random start inside each segment (3D with 1 clip: a random start)
        return np.arange(num_clips) * avg_interval + rng.integers(avg_interval, size=num_clips)
    if num_frames > max(num_clips, ori_clip_len):
        # 2b. fewer usable starts than clips: sorted random starts (some may repeat)
        return np.sort(rng.integers(num_frames - ori_clip_len + 1, size=num_clips))
    if avg_interval == 0:
        # 2c. evenly spread starts over the few usable ones
        return np.around(np.arange(num_clips) * ((num_frames - ori_clip_len + 1.0) / num_clips))
    # 2d. the video is shorter than a clip: start at 0 (looping fills the clip)
    return np.zeros((num_clips,), dtype=np.int64)


def _test_offsets(num_frames: int, clip_len: int, frame_interval: int, num_clips: int) -> np.ndarray:
    """Testing clip starts: MMAction2 1.x `SampleFrames._get_test_clips` (target_fps=None)."""
    if clip_len == 1:
        # 2D: centre of each of num_clips equal segments (floats; truncated by the caller)
        avg_interval = num_frames / float(num_clips)
        return np.arange(num_clips) * avg_interval + avg_interval / 2.0
    # 3D: num_clips starts spread evenly over [0, max_offset]; one clip sits in the middle
    ori_clip_len = (clip_len - 1) * frame_interval + 1   # frames spanned by one test clip
    max_offset = max(num_frames - ori_clip_len, 0)
    if num_clips > 1:
        return np.round(np.arange(num_clips) * (max_offset / float(num_clips - 1)))   # half to even, as numpy
    return np.array([max_offset // 2])


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


def _coprime_stride(n: int) -> int:
    """A stride near n * 0.618 coprime with n: index + k*stride (mod n) visits every index once."""
    stride = max(1, int(n * 0.6180339887))
    while math.gcd(stride, n) != 1:
        stride += 1
    return stride


def _takes(fn: Callable, name: str) -> bool:
    """Whether callable `fn` accepts a keyword argument `name`."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
