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
WINDOW_TOL = 1e-3   # s: a frame time within 1 ms of a window bound counts as on it (lists write milliseconds)


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


def read_frames(path: str | Path, indices: Sequence[int]) -> np.ndarray:
    """Frames `indices` (0-based, any order, repeats allowed) as uint8 `(len(indices), H, W, 3)` RGB.

    Videos are decoded with PyAV doing only the work the indices need:
    1. one demux pass (packets only, no decoding; ~2-5 ms for a 10-s clip) gives every frame's pts
       and the keyframes; the presentation index of a frame is the rank of its pts. At a constant
       frame rate that is round((pts - start_time) * time_base * average_rate); the rank stays
       right for variable-frame-rate (phone / web) videos, where that formula does not. The scan
       is cached per process (LRU of webscale.PTS_CACHE_FRAMES frames, keyed by path, size, mtime, inode);
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
    if path.suffix.lower() in webscale.IMAGE_EXTS:
        return _read_still(path, wanted)
    with webscale.open_video(path) as (container, stream):
        return webscale.decode_video(container, stream, path, wanted)


def read_frames_lenient(path: str | Path, count: int, indices_for: Callable[[int], Sequence[int]],
                        max_missing: int | None = None, read: Callable[[np.ndarray], np.ndarray] | None = None
                        ) -> tuple[np.ndarray, int]:
    """Frames `indices_for(count)` of a video whose frame count `count` came from its container (or a list);
    read again at the true count when the video decodes to fewer frames than that (an optimistic count).

    1. read `indices_for(count)` with `read` (default `read_frames(path, ...)`; e.g. an already open container);
    2. the video decodes to n < count frames (webscale.VideoTooShortError): no frame at all, or more than `max_missing`
       frames short (None: any shortfall is a miscount), is a truncated file (Sec. 3.3) and the error is raised;
    3. otherwise read `indices_for(n)` with `read_frames`.
    Returns the frames and the count they were read at (`count`, or n after a retry: the caller may cache it).
    Used by VideoDataset (training and test sampling) and filter.py (teacher scoring).
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
    """Reference reader: decode AND convert every frame of the video, then pick `indices`.

    Default PyAV settings, no seeking, no early stop: the benchmark baseline and the test reference
    for `read_frames`. Frame folders and images have nothing to skip and use `read_frames`.
    """
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
    """Number of frames of a video, frame folder (img_*.jpg files) or image (1).

    Videos: the container's frame count (`stream.frames`) when it is present and agrees with
    duration x average frame rate to within one frame; otherwise every frame is decoded and
    counted (exact, slower; e.g. Matroska/WebM carry no frame count).
    """
    path = Path(path)
    if path.is_dir():
        return _count_folder_frames(path)
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
    webscale.check_file(path)
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
        with webscale.open_video(path) as (container, stream):
            rate = webscale.stream_rate(path, stream)
            per_piece = max(1, round(seconds * float(rate)))
            num_pieces = max(1, int(total / per_piece + 0.5))
            out_dir.mkdir(parents=True, exist_ok=True)
            for i, frame in enumerate(container.decode(stream)):
                # frame i goes to piece i // n; the last piece takes the tail
                if min(i // per_piece, num_pieces - 1) != len(written) - 1:
                    if writer is not None:
                        writer.close()
                    written.append(out_dir / webscale.PART_TMPL.format(len(written)))
                    writer = webscale.PieceWriter(written[-1], rate, frame, crf)
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


def motion_path(dataset: DatasetSpec) -> Path:
    """Where a dataset's camera-motion Gaussian of Eq. 2 lives: DATA_ROOT/<its folder>/motion.json (a plain
    dataset's NAME/, a layout's 'root': kinetics400/ for k400, OmniSource/ for k200). `omnisource.py
    --estimate-motion` writes it there and `train.py --image-to-clip warp-*` reads it from there, without --motion."""
    return Path(dataset.root) / "motion.json"


def map_labels(samples: webscale.SampleList, source_classes: Sequence[str], target_classes: Sequence[str], source: str
               ) -> tuple[webscale.SampleList, int]:
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

    def __init__(self, samples: Sequence[webscale.Sample], sampling: Sampling, transform: Callable | None = None,
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
    def samples(self) -> webscale.SampleList:
        """The samples as a compact `SampleList` (a list of `Sample`s assigned here is converted)."""
        return self._samples

    @samples.setter
    def samples(self, samples: webscale.SampleList | Sequence[webscale.Sample]) -> None:
        self._samples = samples if isinstance(samples, webscale.SampleList) else webscale.SampleList.from_samples(samples)
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

    def _load_sample(self, s: webscale.Sample, rng: np.random.Generator) -> np.ndarray:
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
            path = s.path / webscale.PART_TMPL.format(part)
        elif s.kind == "windows":   # Sec. 3.5, 3D students: one positive window of the untrimmed video
            window = s.windows[0] if self.test_mode else s.windows[int(rng.integers(len(s.windows)))]
        return self._load_video(path, rng, window)

    def _load_video(self, path: Path, rng: np.random.Generator, window: tuple | None = None) -> np.ndarray:
        """Count (cached per path), sample and decode a video with one open container.

        window (start, end) seconds: sample over the frames k with start <= k / fps < end (`window_frames`)
        only, decoded from the whole file with seeking (absolute frame indices).
        """
        key = str(path)
        with webscale.open_video(path) as (container, stream):
            # a window needs only an upper bound: the container's count or duration x rate (counting an untrimmed
            # .webm / .mkv by decoding would cost minutes per worker); decoding corrects an optimistic one below
            total = self._counts.get(key) or (webscale.metadata_frames(container, stream) if window is not None else None)
            if total is None:
                total = self._counts[key] = webscale.count_video_frames(container, stream)
            fps = float(webscale.stream_rate(path, stream)) if window is not None else 0.0

            def indices_for(num_frames: int) -> np.ndarray:     # this item's frames of a video of num_frames
                first, stop = (0, num_frames) if window is None else window_frames(window, fps, num_frames, path)
                return first + self._sample(stop - first, rng)

            frames, count = read_frames_lenient(path, total, indices_for,
                                                read=lambda indices: webscale.decode_video(container, stream, path, indices))
        if count != total:                                       # the container's frame count was optimistic
            self._counts[key] = count
        return frames

    def _sample(self, num_frames: int, rng: np.random.Generator) -> np.ndarray:
        sp = self.sampling
        return sample_frames(num_frames, sp.clip_len, sp.frame_interval, sp.num_clips,
                             self.test_mode, rng)


# ----------------------------------------------------------------------------------------------------------------------
# 7. Preparing a dataset for fast training: `python prepare.py`
# ----------------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------------
# Machinery: the compact annotation list. A reader of the method may stop here: what follows is how a list of
# millions of web samples is held (flat arrays shared by forked workers, Sec. 4 at web scale), then private helpers.
# ----------------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------------
# Machinery: what every command reads of any list (labels, kinds), and its one atomic file writer
# ----------------------------------------------------------------------------------------------------------------------


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
    webscale.check_file(path)
    with Image.open(path) as im:
        if min(im.size) < MIN_IMAGE_SIDE:      # tracking pixels and broken thumbnails of a web crawl: no content
            raise ValueError(f"{path}: {im.size[0]}x{im.size[1]} image, smaller than {MIN_IMAGE_SIDE} pixels a side")
        im = ImageOps.exif_transpose(im)
        return np.asarray(im.convert("RGB"), dtype=np.uint8)   # convert() forces a full decode


def _read_still(path: Path, indices: np.ndarray) -> np.ndarray:
    if int(indices.max()) > 0:
        raise webscale.VideoTooShortError(path, int(indices.max()), 1)
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
