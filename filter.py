"""Teacher filtering of crawled web data (OmniSource Sec. 3.3-3.5): step 2 of the procedure in Table 1.

    python filter.py --data-root data --source synth-web-img --teacher work_dirs/tsn/final.pth --out web-img-f
    python filter.py --data-root data --source synth-web-vid --teacher tsn.pth slowonly.pth --out web-vid-f
    python filter.py --data-root data --source synth-web-untrimmed --teacher tsn.pth --student 2d --out untr-2d
    python filter.py --data-root data --source synth-web-untrimmed --teacher slowonly.pth --student 3d --out untr-3d
    torchrun --nnodes N --nproc_per_node G filter.py ...      (the same command, split over N x G processes)
    python train.py --data-root data --target synth --aux web-img-f,untr-2d

What happens to a web source, in order:

  Sec. 3.3  Invalid or corrupted files (zero-byte, truncated, an HTML page named .jpg or .mp4, a file that
            disappears mid-run) are found while decoding, recorded and left out; nothing crashes.
            De-duplication against the target's val split (--dedup-against): frame features of an
            ImageNet-style ResNet-50, PCA whitening fitted on the val frames and a fixed, evenly spaced subset
            of at most 10,000 web samples (so every rank and every rerun agree) and reduced to at most 256
            dimensions, cosine similarity in float32 on the device, web x val in chunks keeping only each web
            frame's best match (memory: the val features plus one chunk); the threshold is the mean similarity
            between different crops of the same val frame; web samples above it are suspicious duplicates,
            removed and listed in duplicates.txt (`Whitening`, `dedup_threshold`, `best_match`,
            `find_duplicates`, `deduplicate`).
  Sec. 3.4  Teacher filtering (`keep_decision`): mode 'query' keeps a sample when the teacher's probability of
            its query class is >= T and labels it with that class; mode 'pseudo' keeps it when the top
            probability is >= T and labels it with the argmax (Sec. 3.2's PseudoLabel). Several teachers:
            their probabilities are averaged (`ensemble`; Fig. 6, better teachers give better students). Web
            images are scored by 2D (TSN) teachers only ("deflating 3D teachers" hurts); short videos by 2D
            or 3D teachers. Query classes are matched to the teachers' classes BY NAME; in query mode samples
            whose query class is not a teacher class are left out and counted.
  Sec. 3.5  Untrimmed videos (Fig. 2 right), decoded and scored in bounded chunks of units, never a whole
            video in one tensor. --student 2d: frames at 1 FPS scored one by one by 2D teachers, positive
            when p(label) >= T; a video with at least one positive frame is kept, its frame indices and
            scores go to the sidecar train_frame_scores.json, from which data.VideoDataset(snippet=...)
            builds the snippets of Table 14 (1 positive + 2 negative frames by default).
            --student 3d: the video's 10-s windows (the frames data.cut_video would put in each piece) are
            scored like short videos; a kept video's line names its positive windows BY TIME, decoded with
            seeking at training time (data.py's 'windows' kind):
                PATH LABEL START:END [START:END ...]      (seconds, 3 decimals; frame k is shown at k / fps)
            --cut-pieces instead cuts kept videos into re-encoded pieces (MMAction2 RawVideoDataset lines
            'raw/NAME LABEL NUM_PIECES POS_IDX...' over OUT/raw/NAME/part_N.mp4; same windows, same scores).
            A video's decision uses its most confident unit (frame / window): `untrimmed_decision`.
  Fig. 3    report.json (small) counts every class before and after filtering; samples.jsonl holds one
            record per sample (query-class and top-5 probabilities, decision, units of untrimmed videos).

At web scale (millions of samples, many GPUs, crashes):
  - Sharding: under torchrun (RANK / WORLD_SIZE / LOCAL_RANK) the samples are cut into blocks of --batch-size
    (untrimmed videos: one video per block); block b goes to rank b % WORLD_SIZE, which runs on
    cuda:LOCAL_RANK (or the CPU). A block is one decoding batch and one teacher forward whatever the number
    of ranks, so every number, and the output byte for byte, is the same as one process gives. Processes
    only meet at barriers (gloo); DATA_ROOT must be shared by all nodes.
  - Resume: each rank appends its records (JSON lines, one write + flush per block) to its own file in the
    work folder DATA_ROOT/.OUT.filter-work/; the same command again after a crash, Ctrl-C or SIGKILL
    (with any number of ranks) skips the blocks already recorded (a torn last line is ignored) and ends with
    the output an uninterrupted run gives. A failure deletes nothing written; the work folder is removed
    only after the output is in place. Another command with different settings refuses to touch it.
  - Memory: per sample only the record of its block is held (query-class probability, top-5, decision);
    rank 0 merges the records by sample index into the outputs, streaming.
  - Speed: workers return whole collated uint8 batches (`_Blocks`), normalised on the device; teachers run
    per batch under --amp.

Outputs in DATA_ROOT/OUT/ (built in a hidden sibling folder from the work folder's records and renamed into
place at the end, so a crash or Ctrl-C leaves any earlier output untouched): classes.txt (the teacher's
classes), train.txt (paths relative to DATA_ROOT/OUT/; `train.py --aux OUT` reads it), train_frame_scores.json
(2D untrimmed), raw/ (--cut-pieces), report.json (summary: counts, Fig. 3 per class), samples.jsonl (one
record per sample, in list order) and duplicates.txt. Then rank 0 draws the step's figures beside them
(omnisource.filter_figures: contact_sheet.png, class_histogram.png, filter_quality.png, timeline.png).

Scoring protocol (a cheap version of each teacher's test protocol): resize the short side to
round(crop * 256 / 224), one centre crop of the teacher's crop size; images: one frame (a TSN's average
consensus over identical frames is that frame's output, so this equals the image repeated to the segment
count); videos and windows: the teacher's test sampling with 8 segments (TSN) or 3 clips (3D) (--clips);
untrimmed frames: one frame each. Teachers are plain objects here: any nn.Module with `.spec`
(models.ArchSpec) and `.classes` works with `filter_source` and the scoring functions, so tests can use a stub.
"""
from __future__ import annotations

import argparse
import array
import contextlib
import datetime
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

import data
import models
import omnisource
import transforms

MODES = ("query", "pseudo")
STUDENTS = ("2d", "3d")
AMPS = ("none", "bf16", "fp16")
DEFAULT_CLIPS = {"tsn": 8, "3d": 3}   # video scoring: TSN segments / 3D clips (cheap test protocol)
DEDUP_CROPS = 5                       # crops per val frame for the de-duplication threshold (Sec. 3.3)
DEDUP_DIMS = 256                      # Sec. 3.3: whitened features reduced to at most this many dimensions
TOP_K = 5                             # classes (and probabilities) kept per sample in samples.jsonl
WORK_FORMAT = "omnisource-filter-work-1"
# how a sample is scored (`_route_codes`): images; short videos and frame folders; untrimmed videos as 1-FPS frames
# (2D student) or as 10-s windows (3D student); raw videos already cut into pieces
ROUTES = ("images", "videos", "one_fps", "windows", "raw")
# the signatures' types: a web source's samples (a list, or the compact list of millions, data.SampleList);
# per group of teachers, how its input is decoded (data.Sampling) and transformed into uint8 views
Samples = list[data.Sample] | data.SampleList
Loads = list[tuple[data.Sampling, Callable]]
ArrayLike = np.ndarray | Sequence


@dataclass
class FilterConfig:
    """Knobs of one filtering run (the CLI flags of the same names)."""
    mode: str = "query"            # 'query' | 'pseudo' (Sec. 3.4)
    threshold: float = 0.5         # T: kept when the deciding probability >= T
    student: str = "2d"            # untrimmed videos: '2d' 1-FPS frame scores, '3d' 10-s windows (Sec. 3.5)
    clips: int | None = None       # video scoring: TSN segments / 3D clips (None: DEFAULT_CLIPS)
    fps: float = 1.0               # rate of the scored frames of untrimmed videos (2d)
    piece_seconds: float = 10.0    # window / piece length of untrimmed videos (3d)
    cut_pieces: bool = False       # 3d: cut kept videos into re-encoded pieces (RawVideoDataset) instead of windows
    dedup_frames: int = 3          # frames per video compared in de-duplication
    batch_size: int = 16           # samples per block (one decoding batch, one teacher forward)
    workers: int = 2               # DataLoader decoding workers
    chunk_frames: int = 64         # untrimmed videos: decoded frames per chunk (bounds the memory per video)
    device: str = "cpu"
    amp: str = "none"              # teachers' inference precision: 'none' (fp32), 'bf16', 'fp16' (autocast)
    progress: bool = True          # progress lines on stderr

    def __post_init__(self) -> None:
        if self.mode not in MODES or self.student not in STUDENTS or self.amp not in AMPS:
            raise ValueError(f"filter: --mode must be one of {MODES}, --student one of {STUDENTS} and --amp one "
                             f"of {AMPS}, got {self.mode!r}, {self.student!r}, {self.amp!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"filter: --threshold must lie in [0, 1], got {self.threshold}")
        if min(self.batch_size, self.dedup_frames, self.clips or 1, self.chunk_frames) < 1 or self.workers < 0:
            raise ValueError("filter: --batch-size, --clips, --dedup-frames and --chunk-frames must be >= 1, "
                             "--workers >= 0")
        if not (self.fps > 0 and self.piece_seconds > 0):
            raise ValueError(f"filter: --fps and --piece-seconds must be > 0, got {self.fps}, {self.piece_seconds}")


@dataclass
class Shard:
    """This process's part of a run: block b belongs to rank b % world (torchrun's RANK / WORLD_SIZE)."""
    rank: int = 0
    world: int = 1

    def mine(self, num_blocks: int) -> range:
        return range(self.rank, num_blocks, self.world)



# ----------------------------------------------------------------------------------------------------------------------
# 1. Decisions (Sec. 3.4; Sec. 3.5 for untrimmed videos)
# ----------------------------------------------------------------------------------------------------------------------

def ensemble(prob_list: Sequence[ArrayLike]) -> np.ndarray:
    """Fig. 6: the average of several teachers' class probabilities, each (..., K) -> (..., K)."""
    arrays = [np.asarray(p, dtype=np.float64) for p in prob_list]
    if not arrays or any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError(f"filter.ensemble: expected >= 1 probability arrays of one shape, got "
                         f"{[a.shape for a in arrays]}")
    return np.mean(arrays, axis=0)


def keep_decision(probs: ArrayLike, query_labels: ArrayLike, mode: str = "query",
                  threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Sec. 3.4: which samples are kept and with which label.

    probs: (N, K) class probabilities; query_labels: (N,) the crawl query's class (-1: not a teacher class).
    'query':  keep when probs[i, q_i] >= T, label q_i (a sample with q_i = -1 is never kept);
    'pseudo': keep when max_k probs[i, k] >= T, label argmax_k (Sec. 3.2's PseudoLabel).
    Returns (keep bool (N,), labels int64 (N,)); dropped samples get the label they would have had.
    """
    probs = np.asarray(probs, dtype=np.float64)
    query = np.asarray(query_labels, dtype=np.int64)
    if probs.ndim != 2 or query.shape != (len(probs),):
        raise ValueError(f"filter.keep_decision: expected probs (N, K) and query_labels (N,), got "
                         f"{probs.shape} and {query.shape}")
    if mode == "query":
        known = query >= 0
        score = np.where(known, probs[np.arange(len(probs)), np.maximum(query, 0)], -np.inf)
        return known & (score >= threshold), query.copy()
    if mode == "pseudo":
        labels = np.nan_to_num(probs, nan=-1.0).argmax(axis=1).astype(np.int64)
        return probs.max(axis=1) >= threshold, labels
    raise ValueError(f"filter.keep_decision: mode must be one of {MODES}, got {mode!r}")


def untrimmed_decision(unit_probs: ArrayLike, query: int, mode: str = "query",
                       threshold: float = 0.5) -> tuple[bool, int, np.ndarray]:
    """Sec. 3.5: decide a video from its units (1-FPS frames or 10-s pieces), unit_probs (U, K).

    The video's score of each class is its most confident unit's (max over units), so `keep_decision`
    keeps it exactly when at least one unit is positive; positive units: probs[u, label] >= T.
    Returns (keep bool, label int, positive bool (U,)).
    """
    p = np.asarray(unit_probs, dtype=np.float64)
    keep, labels = keep_decision(p.max(axis=0, keepdims=True), [query], mode, threshold)
    label = int(labels[0])
    positive = p[:, label] >= threshold if label >= 0 else np.zeros(len(p), dtype=bool)
    return bool(keep[0]), label, positive


def one_fps_indices(num_frames: int, video_fps: float, fps: float = 1.0) -> np.ndarray:
    """Sec. 3.5: frames "extracted at a low frame rate": the centre frame of each 1/fps-second window.

    Window k covers [k, k + 1) / fps seconds; its frame is floor((k + 0.5) * video_fps / fps). Windows whose
    centre lies past the end are left out; a video shorter than half a window gives its middle frame.
    """
    if num_frames < 1 or not video_fps > 0 or not fps > 0:
        raise ValueError(f"filter.one_fps_indices: need num_frames >= 1 and rates > 0, got {num_frames}, "
                         f"{video_fps}, {fps}")
    step = video_fps / fps
    idx = np.floor((np.arange(int(num_frames / step + 0.5) + 1) + 0.5) * step).astype(np.int64)
    idx = idx[idx < num_frames]
    return idx if len(idx) else np.array([num_frames // 2], dtype=np.int64)


# ----------------------------------------------------------------------------------------------------------------------
# 2. Teachers
# ----------------------------------------------------------------------------------------------------------------------

def load_teachers(paths: Sequence[str | Path], device: str = "cpu", arch: str | None = None,
                  classes: list[str] | None = None) -> list[nn.Module]:
    """Checkpoints -> teachers in eval mode on `device` (same classes required).

    train.py checkpoints describe themselves. Any other format models.load_weights reads (MMAction2 0.x / 1.x,
    e.g. the released OmniSource models, or a bare state dict) needs `arch` (--teacher-arch) and takes the
    source's class names `classes`.
    """
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"--teacher {p}: no such file (give train.py checkpoints, e.g. "
                                    f"WORK_DIR/final.pth)")
    teachers = []
    for p in paths:
        try:
            t = models.from_checkpoint(p) if arch is None else _foreign_teacher(p, arch, classes)
        except Exception as err:   # unpickling, zip, key and shape errors all mean "not a checkpoint"
            hint = "" if arch else "; for an MMAction2 or other checkpoint give --teacher-arch"
            raise ValueError(f"--teacher {p}: not a usable checkpoint ({_first_line(err)}){hint}") from None
        t.source = str(p)
        teachers.append(t.to(device).eval())
    check_teachers(teachers)
    return teachers


def check_teachers(teachers: Sequence[nn.Module], kinds: Collection[str] = (), student: str = "2d") -> None:
    """One class list for all teachers; 2D teachers only for images and for 2D-student untrimmed frames."""
    if not teachers:
        raise ValueError("filter: at least one --teacher is needed")
    for t in teachers:
        if not hasattr(t, "spec") or not hasattr(t, "classes"):
            raise ValueError(f"filter: teacher {_name(t)} needs .spec (models.ArchSpec) and .classes")
        if list(t.classes) != list(teachers[0].classes):
            raise ValueError(f"--teacher {_name(t)}: its {len(t.classes)} classes differ from those of "
                             f"--teacher {_name(teachers[0])}; an ensemble needs one class list")
    three_d = [_name(t) for t in teachers if t.spec.family != "tsn"]
    if three_d and "image" in kinds:
        raise ValueError(f"--teacher {three_d[0]} is a 3D teacher but the source has web images: images are "
                         f"scored by 2D (TSN) teachers only (Sec. 3.4); give only TSN teachers")
    if three_d and "untrimmed" in kinds and student == "2d":
        raise ValueError(f"--teacher {three_d[0]} is a 3D teacher but --student 2d scores untrimmed videos "
                         f"frame by frame at 1 FPS with 2D teachers (Sec. 3.5); give TSN teachers or --student 3d")


# ----------------------------------------------------------------------------------------------------------------------
# 3. Scoring (Sec. 3.4, 3.5): workers decode whole uint8 batches, teachers run per batch on the device
# ----------------------------------------------------------------------------------------------------------------------

class Scorer:
    """Ensemble probabilities of decoded batches: the teachers grouped by input (one decode per group).

    Teachers that take the same input (family, sampling, crop size) form a group; workers decode each sample
    once per group (`loads`) into uint8 views, the main process normalises them on the device and runs the
    group's teachers under cfg.amp's autocast, cfg.batch_size units per forward.
    """

    def __init__(self, teachers: list[nn.Module], cfg: FilterConfig, single_frames: bool = False):
        self.teachers, self.cfg = teachers, cfg
        self.device = torch.device(cfg.device)
        groups: dict[tuple, list[int]] = {}
        for t, teacher in enumerate(teachers):
            s = teacher.spec
            if single_frames:   # Sec. 3.5, 2D student: single 1-FPS frames
                key = (s.family, 1, 1, 1, s.crop_size)
            else:
                key = (s.family, s.clip_len, s.frame_interval, cfg.clips or DEFAULT_CLIPS[s.family], s.crop_size)
            groups.setdefault(key, []).append(t)
        self.groups = list(groups.items())
        # worker side, one per group: (sampling, uint8 centre-crop pipeline); workers are forked (Linux)
        self.loads = [(data.Sampling(clip_len=k[1], frame_interval=k[2], num_clips=k[3]),
                       transforms.test_transform(k[0], k[4], "center", uint8=True)) for k, _ in self.groups]
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)

    def probs(self, views: list[torch.Tensor]) -> torch.Tensor:
        """views: one uint8 (U, V, C, T, H, W) per group -> (U, K) float32 ensemble probabilities (Fig. 6)."""
        n, total = len(views[0]), None
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                                                    enabled=self.dtype is not None):
            for (_, members), v in zip(self.groups, views):
                for s in range(0, n, self.cfg.batch_size):
                    x = transforms.normalize(v[s:s + self.cfg.batch_size].to(self.device, non_blocking=True))
                    for t in members:
                        p = models.predict(self.teachers[t], x, self.teachers[t].spec).float()   # (u, K)
                        if total is None:
                            total = torch.zeros(n, p.shape[1], device=p.device)
                        total[s:s + len(p)] += p
        return (total / len(self.teachers)).cpu()


def score_clips(samples: Samples, teachers: list[nn.Module], cfg: FilterConfig,
                what: str = "samples") -> tuple[np.ndarray, dict[int, str]]:
    """Ensemble class probabilities of images, short videos or frame folders (in memory: small lists).

    A list should hold one kind (an image and a video give inputs of different lengths).
    Returns (probs (N, K) float32 with NaN rows for samples that failed, errors {index: message}).
    """
    scorer = Scorer(teachers, cfg)
    probs = np.full((len(samples), len(teachers[0].classes)), np.nan, dtype=np.float32)
    errors = {}
    blocks = [np.arange(s, min(s + cfg.batch_size, len(samples))) for s in range(0, len(samples), cfg.batch_size)]
    for _, ids, _, views, errs in _run_blocks(samples, blocks, _Load(_load_clip, scorer.loads), cfg,
                                             f"scoring {what}"):
        errors.update(errs)
        if len(ids):
            probs[ids] = scorer.probs(views).numpy()
    return probs, errors


class _Blocks(torch.utils.data.Dataset):
    """Worker side: block k (sample indices) -> (k, good ids, units per id, one collated uint8 tensor per
    load, {id: message} of the samples that could not be read). Nothing per sample crosses the queue."""

    def __init__(self, samples: Samples, blocks: list[np.ndarray], load: Callable):
        self.samples, self.blocks, self.load = samples, blocks, load

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, k: int) -> tuple:
        ids, counts, parts, errors = [], [], [], {}
        for i in self.blocks[k]:
            i = int(i)
            try:
                views = self.load(self.samples[i])                  # one (U, ...) uint8 tensor per group
            except Exception as err:   # PyAV, Pillow and the OS raise many unrelated types: all mean "unreadable"
                errors[i] = f"{type(err).__name__}: {_first_line(err)}"
                continue
            ids.append(i)
            counts.append(len(views[0]))
            parts.append(views)
        cat = [torch.cat([p[g] for p in parts]) for g in range(len(parts[0]))] if parts else []
        return k, np.asarray(ids, dtype=np.int64), np.asarray(counts, dtype=np.int64), cat, errors


def _run_blocks(samples: Samples, blocks: list[np.ndarray], load: Callable, cfg: FilterConfig, what: str,
                todo: Iterable[int] | None = None) -> Iterator[tuple]:
    """Decode the blocks `todo` (default all) in DataLoader workers; yields `_Blocks` items in order."""
    todo = list(range(len(blocks))) if todo is None else list(todo)
    if not todo:   # nothing to decode: no worker processes
        return
    ds = torch.utils.data.Subset(_Blocks(samples, blocks, load), todo)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=cfg.workers, collate_fn=_as_is,
                                         pin_memory=torch.device(cfg.device).type == "cuda")
    progress, failed = _Progress(what, sum(len(blocks[k]) for k in todo), cfg.progress), 0
    for item in loader:
        yield item
        failed += len(item[4])
        progress.update(len(blocks[item[0]]), failed)
    progress.close()


class _UnitStream(torch.utils.data.IterableDataset):
    """Worker side, Sec. 3.5: untrimmed videos -> chunks of at most `per_chunk` units (1-FPS frames, 10-s
    windows, or the pieces of a raw sample), so a long video is never one tensor. Yields
    (index, first unit, number of units, one uint8 (u, 1, C, T, h, w) tensor per load, (unit info, frame rate),
    error);
    the videos are split over the workers (video k -> worker k % workers)."""

    def __init__(self, samples: Samples, todo: np.ndarray, route: str, cfg: FilterConfig, loads: Loads):
        self.samples, self.todo, self.route, self.loads = samples, todo, route, loads
        self.fps, self.seconds = cfg.fps, cfg.piece_seconds
        self.per_chunk = max(1, cfg.chunk_frames // max(s.num_frames for s, _ in loads))

    def __iter__(self) -> Iterator[tuple]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for k in range(worker, len(self.todo), workers):
            i = int(self.todo[k])
            try:
                plan, unit_info, rate = _unit_plan(self.samples[i], self.route, self.fps, self.seconds, self.loads)
                for s in range(0, len(unit_info), self.per_chunk):
                    views = [_load_units(plan[g][s:s + self.per_chunk], transform)
                             for g, (_, transform) in enumerate(self.loads)]
                    yield i, s, len(unit_info), views, (unit_info[s:s + self.per_chunk], rate), None
            except Exception as err:   # unreadable at any chunk: the video is corrupt (Sec. 3.3)
                yield i, -1, 0, None, None, f"{type(err).__name__}: {_first_line(err)}"


def _unit_plan(sample: data.Sample, route: str, fps: float, seconds: float,
               loads: Loads) -> tuple[list[list[tuple]], np.ndarray, float | None]:
    """Units of an untrimmed / raw video: per load a list of (path, frame indices (T,), frame count), the
    units' info ('frames' (F,) 1-FPS frame indices; 'windows' (P, 2) frame ranges [first, stop); 'raw' (P,)
    piece numbers) and the video's frame rate (None for raw pieces)."""
    path = Path(sample.path)
    if route == "raw":
        parts = [path / data.PART_TMPL.format(j) for j in range(sample.num_parts)]
        counts = [data.count_frames(p) for p in parts]
        plan = [[(p, _test_indices(n, sampling), n) for p, n in zip(parts, counts)] for sampling, _ in loads]
        return plan, np.arange(len(parts)), None
    n = data.count_frames(path)
    rate = data.video_fps(path)
    if route == "one_fps":
        idx = one_fps_indices(n, rate, fps)
        return [[(path, np.array([f]), n) for f in idx] for _ in loads], idx, rate
    ranges = window_ranges(n, rate, seconds)
    plan = [[(path, a + _test_indices(b - a, sampling), n) for a, b in ranges] for sampling, _ in loads]
    return plan, ranges, rate


def window_ranges(num_frames: int, video_fps: float, seconds: float = 10.0) -> np.ndarray:
    """Sec. 3.5: the 10-s windows of an untrimmed video as frame ranges [first, stop) (P, 2), exactly the frames
    data.cut_video puts in each piece: n = round(seconds * fps) frames each, a tail shorter than n / 2 joins
    the last window, a video shorter than one window is one window."""
    per = max(1, round(seconds * float(video_fps)))
    num = max(1, int(num_frames / per + 0.5))
    first = np.arange(num, dtype=np.int64) * per
    stop = np.append(first[1:], num_frames)
    return np.stack([first, stop], axis=1)


def _load_units(units: list[tuple], transform: Callable) -> torch.Tensor:
    """Worker: units [(path, indices (T,), frame count)] -> uint8 (u, 1, C, T, h, w); one read per file."""
    out, s = [], 0
    while s < len(units):
        e = s
        while e < len(units) and units[e][0] == units[s][0]:
            e += 1
        path, count = units[s][0], units[s][2]
        idx = np.concatenate([u[1] for u in units[s:e]])
        # (u * T, H, W, 3); a container count one frame too high repeats the last frame, more is a truncated file
        frames, _ = data.read_frames_lenient(path, count, lambda n: np.minimum(idx, n - 1), max_missing=1)
        views = transform(frames)                                               # (1, C, u * T, h, w)
        c, t = views.shape[1], len(units[s][1])
        out.append(views.reshape(c, e - s, t, *views.shape[-2:]).transpose(0, 1).unsqueeze(1))
        s = e
    return torch.cat(out).contiguous()


def _load_clip(sample: data.Sample, loads: Loads) -> list[torch.Tensor]:
    """Worker: image (one frame) or video (test sampling of each group) -> [uint8 (1, 1, C, T, h, w)] per group."""
    out = []
    for sampling, transform in loads:
        if sample.kind == "image":
            frames = data.read_frames(sample.path, [0])                       # (1, H, W, 3)
        else:
            frames = _read_sampled(sample, sampling)                          # (clips * L, H, W, 3)
        out.append(transform(frames)[None])
    return out


def _read_sampled(sample: data.Sample, sampling: data.Sampling) -> np.ndarray:
    """Test-mode sampled frames (L, H, W, 3); a frame count one too high is corrected, a file that decodes to
    fewer frames than that is truncated: an error (Sec. 3.3)."""
    n = sample.num_frames or data.count_frames(sample.path)
    return data.read_frames_lenient(sample.path, n, lambda m: _test_indices(m, sampling), max_missing=1)[0]


def _test_indices(n: int, sampling: data.Sampling) -> np.ndarray:
    return data.sample_frames(n, sampling.clip_len, sampling.frame_interval, sampling.num_clips, test_mode=True)


# ----------------------------------------------------------------------------------------------------------------------
# 4. De-duplication against the target's val split (Sec. 3.3)
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class Whitening:
    """PCA whitening x -> (x - mean) @ proj, then L2-normalised (for cosine similarity), at most `dims` dims.

    proj = U diag(1 / sqrt(lambda + shrink * mean(lambda))) over the leading principal directions with
    lambda > 1e-6 * max(lambda). With fewer samples than dimensions the smallest directions would be
    amplified without bound; the shrinkage keeps them at most 1/sqrt(shrink) times the average.
    Fitted from the moments (mean, covariance) accumulated in float64 chunks: memory D x D, not N x D.
    """
    mean: np.ndarray     # (D,) float64
    proj: np.ndarray     # (D, k) float64, k <= dims

    @classmethod
    def fit(cls, feats: ArrayLike | torch.Tensor, shrink: float = 0.1, dims: int = DEDUP_DIMS,
            chunk: int = 8192) -> Whitening:
        x = feats if torch.is_tensor(feats) else torch.as_tensor(np.asarray(feats))
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"filter.Whitening.fit: expected >= 2 feature rows (N, D), got {tuple(x.shape)}")
        n, d = x.shape
        total, outer = torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64)
        for s in range(0, n, chunk):
            c = x[s:s + chunk].to("cpu", torch.float64)
            total += c.sum(0)
            outer += c.T @ c
        mean = total / n
        cov = (outer - n * torch.outer(mean, mean)) / (n - 1)                # (D, D)
        lam, vec = torch.linalg.eigh(cov)                                    # ascending
        lam, vec = lam.flip(0), vec.flip(1)
        keep = lam > 1e-6 * max(float(lam[0]), 1e-30)
        lam, vec = lam[keep], vec[:, keep]
        scale = 1.0 / torch.sqrt(lam + shrink * lam.mean())
        return cls(mean.numpy(), (vec * scale)[:, :dims].numpy())

    def __call__(self, feats: ArrayLike) -> np.ndarray:
        return _l2(((np.asarray(feats, dtype=np.float64) - self.mean) @ self.proj))

    def apply(self, feats: torch.Tensor) -> torch.Tensor:
        """On the features' device in float32: (N, D) -> whitened, reduced, L2-normalised (N, k)."""
        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=feats.device)
        proj = torch.as_tensor(self.proj, dtype=torch.float32, device=feats.device)
        return torch.nn.functional.normalize((feats.float() - mean) @ proj, dim=1, eps=1e-12)


def dedup_threshold(crop_feats: ArrayLike) -> float:
    """Sec. 3.3: the mean cosine similarity between different crops of the same frame.

    crop_feats: (M, V, D) features of V >= 2 crops of each of M frames (whitened or not).
    """
    f = np.asarray(crop_feats, dtype=np.float64)
    if f.ndim != 3 or f.shape[1] < 2 or len(f) == 0:
        raise ValueError(f"filter.dedup_threshold: expected (M >= 1, V >= 2, D) crop features, got {f.shape}")
    f = _l2(f)
    sims = np.einsum("mvd,mwd->mvw", f, f)                         # (M, V, V)
    iu = np.triu_indices(f.shape[1], k=1)
    return float(sims[:, iu[0], iu[1]].mean())


def best_match(web: torch.Tensor, val: torch.Tensor,
               chunk_bytes: int = 128 << 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Sec. 3.3 at scale: each web row's most similar val row, (N, d) x (M, d) L2-normalised float tensors on
    one device -> (similarity (N,), val row (N,)). The (rows, M) similarities of one chunk of web rows at a
    time (at most chunk_bytes): memory is the val features plus one chunk."""
    rows = max(1, chunk_bytes // (4 * max(1, len(val))))
    sims, best = torch.empty(len(web), device=web.device), torch.empty(len(web), dtype=torch.long,
                                                                        device=web.device)
    for s in range(0, len(web), rows):
        sims[s:s + rows], best[s:s + rows] = (web[s:s + rows] @ val.T).max(dim=1)     # (rows, M) -> (rows,)
    return sims, best


def find_duplicates(web_feats: ArrayLike, val_feats: ArrayLike, threshold: float,
                    device: str = "cpu") -> list[tuple[int, int, float]]:
    """Sec. 3.3: web rows whose best cosine similarity to any val row is above `threshold`.

    web_feats (N, D), val_feats (M, D) (whiten them first). Returns [(web row, val row, similarity)].
    """
    w, v = (torch.as_tensor(np.asarray(f, dtype=np.float32), device=device) for f in (web_feats, val_feats))
    if w.ndim != 2 or v.ndim != 2 or w.shape[1] != v.shape[1]:
        raise ValueError(f"filter.find_duplicates: expected (N, D) and (M, D), got {tuple(w.shape)}, "
                         f"{tuple(v.shape)}")
    sims, best = best_match(torch.nn.functional.normalize(w, dim=1), torch.nn.functional.normalize(v, dim=1))
    return [(int(i), int(best[i]), float(sims[i])) for i in torch.nonzero(sims > threshold).flatten()]


class FrameFeatures(nn.Module):
    """Frame features (N, C, H, W) -> (N, D) of a 2D ResNet, a TSN's backbone or a 3D net on 1-frame clips."""

    def __init__(self, net: nn.Module, crop_size: int, name: str):
        super().__init__()
        self.net, self.crop_size, self.name = net, crop_size, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.net, models.ResNet):
            return self.net.features(x)
        if hasattr(self.net, "backbone"):
            return self.net.backbone.features(x)
        return self.net.features(x[:, :, None])                     # (N, C, 1, H, W)


def build_extractor(teachers: list[nn.Module], checkpoint: str | None = None, device: str = "cpu") -> FrameFeatures:
    """Sec. 3.3's ImageNet ResNet-50 (`--dedup-checkpoint`: torchvision state dict or our checkpoint).

    Without a checkpoint (nothing can be downloaded here) the first 2D teacher's backbone (else the first
    teacher) gives the features: trained on the target, it is a reasonable stand-in.
    """
    if checkpoint is None:
        t = next((t for t in teachers if t.spec.family == "tsn"), teachers[0])
        return FrameFeatures(t, t.spec.crop_size, f"teacher {_name(t)} backbone").to(device).eval()
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"--dedup-checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:   # pickle / zip errors of many kinds
        raise ValueError(f"--dedup-checkpoint {path}: not a torch checkpoint ({type(err).__name__})") from None
    if isinstance(state, dict) and {"arch", "model", "classes"} <= set(state):
        net = models.from_checkpoint(path)
        return FrameFeatures(net, net.spec.crop_size, f"{net.arch} from {path}").to(device).eval()
    net = models.resnet50(num_classes=None)
    report = models.load_pretrained(net, models.load_state_dict_file(path))
    if report.num_loaded_weights == 0:
        raise ValueError(f"--dedup-checkpoint {path}: no ResNet-50 weights in it (torchvision layout expected)")
    return FrameFeatures(net, 224, f"resnet50 from {path}").to(device).eval()


def _features(extractor: FrameFeatures, views: torch.Tensor, cfg: FilterConfig) -> torch.Tensor:
    """uint8 frames (N, V, C, H, W) -> float32 features (N, V, D) on the device, cfg.batch_size frames a forward."""
    n, v = views.shape[:2]
    out = []
    with torch.inference_mode():
        for s in range(0, n, cfg.batch_size):
            x = views[s:s + cfg.batch_size].flatten(0, 1).to(cfg.device, non_blocking=True)       # (b*V, C, H, W)
            x = transforms.normalize(x[:, :, None])[:, :, 0]
            out.append(extractor(x).float().reshape(len(x) // v, v, -1))
    return torch.cat(out) if out else torch.zeros(0, v, 0)


def extract_features(samples: Samples, extractor: FrameFeatures, cfg: FilterConfig, crops: int = 1,
                     what: str = "frames") -> tuple[torch.Tensor, np.ndarray, dict[int, str]]:
    """Frame features for de-duplication: an image is one frame, a video cfg.dedup_frames frames.

    crops=1: the centre crop; crops=5: the four corners and the centre (centre last).
    Returns (features (R, crops, D) float32 on the device, owner (R,) sample index of each frame row,
    errors {index: message}).
    """
    load = _DedupLoad(cfg.dedup_frames, extractor.crop_size, crops)
    blocks = [np.arange(s, min(s + cfg.batch_size, len(samples))) for s in range(0, len(samples), cfg.batch_size)]
    feats, owner, errors = [], [], {}
    for _, ids, counts, views, errs in _run_blocks(samples, blocks, load, cfg, what):
        errors.update(errs)
        if len(ids):
            feats.append(_features(extractor, views[0], cfg))
            owner.append(np.repeat(ids, counts))
    if not feats:
        return torch.zeros(0, crops, 0), np.zeros(0, np.int64), errors
    return torch.cat(feats), np.concatenate(owner), errors


def fit_dedup_reference(val_samples: Samples, extractor: FrameFeatures, cfg: FilterConfig,
                        web_samples: Samples = ()) -> dict:
    """Sec. 3.3, the val side: whitening fitted on the union of the val frames and `web_samples` (a fixed,
    evenly spaced subset of the web source, so every rank and every rerun agree), the crop threshold, and the
    whitened val centre crops (M, d) float32 against which web frames are compared."""
    val, owner, errors = extract_features(val_samples, extractor, cfg, crops=DEDUP_CROPS,
                                          what="de-duplication: val frames")
    if not len(val):
        raise ValueError(f"--dedup-against: none of the {len(val_samples)} val videos could be read")
    web = extract_features(web_samples, extractor, cfg, what="de-duplication: web frames for the whitening")[0] \
        if len(web_samples) else val[:0]
    m, v, d = val.shape
    # 1. whitening fitted on the centre crops of the val frames and of the web subset's frames
    white = Whitening.fit(torch.cat([web[:, -1].to(val.device), val[:, -1]]))
    crops = white.apply(val.reshape(m * v, d)).reshape(m, v, -1)
    # 2. threshold: mean similarity between different crops of the same val frame
    iu = torch.triu_indices(v, v, offset=1)
    threshold = float(torch.einsum("mvd,mwd->mvw", crops, crops)[:, iu[0], iu[1]].double().mean())
    info = dict(extractor=extractor.name, crops=DEDUP_CROPS, frames_per_video=cfg.dedup_frames,
                dims=int(white.proj.shape[1]), whitening_web_frames=len(web), val_videos=len(set(owner.tolist())),
                val_unreadable=len(errors), val_frames=m, threshold=threshold)
    return dict(white=white, threshold=threshold, val=crops[:, -1].contiguous(), owner=owner, info=info)


def _whitening_subset(idx: np.ndarray, size: int = 10000) -> np.ndarray:
    """Evenly spaced web samples (at most `size`) whose frames join the val frames in the whitening fit."""
    return idx if len(idx) <= size else idx[np.linspace(0, len(idx) - 1, size).round().astype(np.int64)]


def match_web(extractor: FrameFeatures, views: torch.Tensor, counts: np.ndarray, reference: dict,
              cfg: FilterConfig) -> list[tuple[float, int]]:
    """Web frames (R, 1, C, H, W) uint8 of samples with `counts` frames each -> per sample (best similarity,
    val sample index): a sample's most similar frame decides (Sec. 3.3)."""
    feats = _features(extractor, views, cfg)[:, 0]                                 # (R, D)
    sims, best = best_match(reference["white"].apply(feats), reference["val"].to(feats.device))
    sims, best = sims.cpu().numpy(), best.cpu().numpy()
    out, s = [], 0
    for c in counts:
        k = s + int(np.argmax(sims[s:s + c]))
        out.append((float(sims[k]), int(reference["owner"][best[k]])))
        s += c
    return out


def deduplicate(samples: Samples, val_samples: Samples, extractor: FrameFeatures,
                cfg: FilterConfig) -> tuple[dict[int, tuple[int, float]], dict, dict[int, str]]:
    """Sec. 3.3 in memory (small lists): web samples with a frame too similar to a val frame.

    Returns (duplicates {web index: (val index, similarity)}, info dict for the report, web read errors).
    """
    reference = fit_dedup_reference(val_samples, extractor, cfg,
                                    [samples[i] for i in _whitening_subset(np.arange(len(samples)))])
    load = _DedupLoad(cfg.dedup_frames, extractor.crop_size, 1)
    blocks = [np.arange(s, min(s + cfg.batch_size, len(samples))) for s in range(0, len(samples), cfg.batch_size)]
    dups, errors, frames = {}, {}, 0
    for _, ids, counts, views, errs in _run_blocks(samples, blocks, load, cfg, "de-duplication: web frames"):
        errors.update(errs)
        if len(ids):
            frames += int(counts.sum())
            for i, (sim, j) in zip(ids, match_web(extractor, views[0], counts, reference, cfg)):
                if sim > reference["threshold"]:
                    dups[int(i)] = (j, sim)
    return dups, dict(reference["info"], web_frames=frames), errors


class _DedupLoad:
    """Worker: frames of a sample for de-duplication -> [uint8 views (F, crops, C, H, W)]."""

    def __init__(self, num_frames: int, crop: int, crops: int):
        self.num_frames, self.crop, self.crops = num_frames, crop, crops

    def __call__(self, sample: data.Sample) -> list[torch.Tensor]:
        if sample.kind == "image":
            frames = data.read_frames(sample.path, [0])
        elif sample.kind == "raw":
            piece = Path(sample.path) / data.PART_TMPL.format(sample.pos_clips[0] if sample.pos_clips else 0)
            frames = _read_sampled(data.Sample(piece, sample.label, "video"), data.Sampling(1, 1, self.num_frames))
        else:
            frames = _read_sampled(sample, data.Sampling(1, 1, self.num_frames))
        frames = transforms.Resize(short_side=transforms.short_side_for(self.crop))(frames)
        views = transforms.TenCrop(self.crop)(frames)[::2]                     # UL, UR, LL, LR, centre
        views = views[-1:] if self.crops == 1 else views
        return [transforms.ToUint8Tensor()(views).permute(2, 0, 1, 3, 4)]     # (F, crops, C, H, W)


# ----------------------------------------------------------------------------------------------------------------------
# 5. The whole filter on one source: sharded over ranks, resumable, streaming
# ----------------------------------------------------------------------------------------------------------------------

class Work:
    """The work folder of a run (DATA_ROOT/.OUT.filter-work/), which survives crashes:

    config.json            the settings; another command refuses to reuse the folder
    records-RANK.jsonl     one JSON object per sample ({"i": index, ...}), appended one block at a time
    dedup-RANK.jsonl       finished de-duplication blocks {"b": block, "removed": [indices]}
    cut-RANK.jsonl         --cut-pieces: {"i": index, "pieces": n} or {"i": index, "error": message}
    progress-RANK.json     samples scored by the rank's last run;  dedup-val.pt  the val side of Sec. 3.3
    raw/                   --cut-pieces: the pieces of kept videos
    Every rank appends to its own files only; every rank reads all of them (any earlier number of ranks).
    """

    def __init__(self, folder: str | Path, shard: Shard | None = None):
        self.folder, self.shard = Path(folder), shard or Shard()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.scored, self._files = 0, {}

    def claim(self, settings: dict, what: str) -> None:
        """Start or continue the run of `settings`; a run of other settings is a one-line error."""
        path = self.folder / "config.json"
        settings = json.loads(json.dumps(dict(format=WORK_FORMAT, **settings)))
        if path.is_file():
            old = json.loads(path.read_text())
            if old != settings:
                key = next((k for k in settings if old.get(k) != settings[k]), "format")
                raise ValueError(f"{what}: {self.folder} holds an unfinished run with other settings ({key}: "
                                 f"{old.get(key)!r} there, {settings[key]!r} now); run that command again to "
                                 f"finish it, or delete the folder to start over")
        elif self.shard.rank == 0:
            _write_atomic(path, json.dumps(settings, indent=1) + "\n")
        _barrier()

    def append(self, kind: str, records: Iterable[dict]) -> None:
        """Append records (dicts, 'i' first) to this rank's KIND file: one write, flushed (survives SIGKILL)."""
        f = self._files.get(kind)
        if f is None:
            path = self.folder / f"{kind}-{self.shard.rank:05d}.jsonl"
            _drop_torn_tail(path)
            f = self._files[kind] = open(path, "ab")
        f.write(b"".join(_dump(r) for r in records))
        f.flush()

    def lines(self, kind: str) -> Iterator[tuple[int, int, bytes]]:
        """(file number, byte offset, line) of every complete line of every rank's KIND file."""
        for number, path in enumerate(sorted(self.folder.glob(f"{kind}-*.jsonl"))):
            with open(path, "rb") as f:
                offset = 0
                for line in f:
                    if line.endswith(b"\n"):   # a torn last line (killed mid-write) is ignored
                        yield number, offset, line
                    offset += len(line)

    def files(self, kind: str) -> list[Path]:
        return sorted(self.folder.glob(f"{kind}-*.jsonl"))

    def done(self, num_samples: int) -> np.ndarray:
        """bool (N,): samples with a record (from any rank, any earlier run)."""
        done = np.zeros(num_samples, dtype=bool)
        for _, _, line in self.lines("records"):
            done[_record_index(line)] = True
        return done

    def close(self) -> None:
        for f in self._files.values():
            os.fsync(f.fileno())
            f.close()
        self._files = {}
        _write_atomic(self.folder / f"progress-{self.shard.rank:05d}.json",
                      json.dumps(dict(rank=self.shard.rank, world=self.shard.world, scored=self.scored)))

    def scored_now(self) -> int:
        """Samples scored by the ranks of the last run (their progress files)."""
        total = 0
        for p in self.folder.glob("progress-*.json"):
            r = json.loads(p.read_text())
            total += r["scored"] if r["world"] == self.shard.world else 0
        return total


def filter_source(samples: Samples, query_labels: ArrayLike, teachers: list[nn.Module], cfg: FilterConfig,
                  out_dir: str | Path, list_dir: str | Path | None = None, prefix: str | Path | None = None,
                  val_samples: Samples | None = None, extractor: FrameFeatures | None = None,
                  work_dir: str | Path | None = None) -> FilterResult:
    """Sec. 3.3-3.5 on one web source in one process, outputs written into out_dir (tests, small lists).

    samples: data.Sample list or data.SampleList; query_labels (N,): each sample's query class as a TEACHER
    class index (-1: none); teachers: nn.Modules with .spec and .classes; list_dir: the folder the output
    list's paths are relative to (default out_dir); prefix: the source's data prefix (report paths and
    piece names are relative to it; default the samples' common folder); val_samples + extractor:
    de-duplicate against these (Sec. 3.3). work_dir (default out_dir's hidden sibling) is kept on failure
    and resumed by the same call. Returns the outputs read back (`FilterResult.read`).
    """
    out_dir = Path(out_dir)
    list_dir = Path(list_dir) if list_dir is not None else out_dir
    prefix = Path(prefix) if prefix is not None else _common_folder(samples)
    query = np.asarray(query_labels, dtype=np.int64)
    if len(query) != len(samples) or not len(samples):
        raise ValueError(f"filter: expected one query label per sample (>= 1), got {len(query)} for {len(samples)}")
    check_teachers(teachers, _kind_names(samples), cfg.student)
    work = Work(work_dir or out_dir.parent / f".{out_dir.name}.filter-work")
    work.claim(dict(samples=len(samples), config={k: v for k, v in vars(cfg).items()
                                                  if k not in ("workers", "device", "progress")}), "filter")
    extractor = extractor or (build_extractor(teachers, device=cfg.device) if val_samples is not None else None)
    try:
        info = run_filter(samples, query, teachers, cfg, work, prefix, list_dir, val_samples, extractor)
    finally:
        work.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    merge_outputs(work, out_dir, samples, query, teachers[0].classes, cfg, list_dir, prefix, val_samples, info)
    _move_pieces(work, out_dir)
    shutil.rmtree(work.folder)
    return FilterResult.read(out_dir)


def run_filter(samples: Samples, query: np.ndarray, teachers: list[nn.Module], cfg: FilterConfig, work: Work,
               prefix: Path, list_dir: Path, val_samples: Samples | None = None,
               extractor: FrameFeatures | None = None) -> dict | None:
    """This rank's share of Sec. 3.3-3.5, appended to the work folder's records; resumes where they stop.

    Returns the de-duplication info (None without val_samples). Ends at a barrier.
    """
    n, shard = len(samples), work.shard
    routes = _route_codes(samples, cfg.student)
    active = np.ones(n, dtype=bool) if cfg.mode == "pseudo" else query >= 0   # query mode: needs a teacher class
    info = None
    # 1. Sec. 3.3: duplicates and unreadable files found here are recorded and left out of scoring
    if val_samples is not None:
        removed, info = _dedup_pass(samples, np.flatnonzero(active), query, extractor, val_samples, cfg, work,
                                    prefix)
        active[removed] = False
    done = work.done(n)
    # 2. images and short videos: blocks of cfg.batch_size, one forward each (Sec. 3.4)
    scorer = Scorer(teachers, cfg)
    for code in (ROUTES.index("images"), ROUTES.index("videos")):
        idx = np.flatnonzero(active & (routes == code))
        blocks = [idx[s:s + cfg.batch_size] for s in range(0, len(idx), cfg.batch_size)]
        todo = [k for k in shard.mine(len(blocks)) if not done[blocks[k]].all()]
        load = _Load(_load_clip, scorer.loads)
        for k, ids, _, views, errors in _run_blocks(samples, blocks, load, cfg, f"scoring {ROUTES[code]}"
                                                    f"{_rank_tag(shard)}", todo):
            records = [_corrupt(i, samples[i], query[i], prefix, m) for i, m in errors.items()]
            if len(ids):
                records += _clip_records(ids, scorer.probs(views), samples, query, cfg, prefix, list_dir)
            work.append("records", sorted(records, key=lambda r: r["i"]))
            work.scored += len(blocks[k])
    # 3. untrimmed videos (Sec. 3.5) and raw pieces: one video per block, units decoded in chunks
    for route in ("one_fps", "windows", "raw"):
        idx = np.flatnonzero(active & (routes == ROUTES.index(route)))
        mine = idx[shard.rank::shard.world]
        todo = mine[~done[mine]]
        if len(todo):
            _score_untrimmed(samples, todo, route, query, teachers, cfg, work, prefix, list_dir)
        if route == "windows" and cfg.cut_pieces and len(mine):
            _cut_kept(samples, mine, prefix, cfg, work)
    _barrier()
    return info


def _clip_records(ids: np.ndarray, probs: torch.Tensor, samples: Samples, query: np.ndarray, cfg: FilterConfig,
                  prefix: Path, list_dir: Path) -> list[dict]:
    """Sec. 3.4: decisions and report records of a block of images or short videos, probs (B, K)."""
    keep, labels = keep_decision(probs.numpy(), query[ids], cfg.mode, cfg.threshold)
    top_p, top_c = probs.topk(min(TOP_K, probs.shape[1]), dim=1)
    records = []
    for b, i in enumerate(ids.tolist()):
        s = samples[i]
        r = _score_record(_base_record(i, s, query[i], prefix), probs[b], top_c[b], top_p[b], int(query[i]), cfg)
        r.update(status="kept" if keep[b] else "dropped", label=int(labels[b]) if keep[b] else None)
        if keep[b]:
            r["line"] = f"{_rel(s.path, list_dir)} {labels[b]}"
        records.append(r)
    return records


def _score_untrimmed(samples: Samples, todo: np.ndarray, route: str, query: np.ndarray, teachers: list[nn.Module],
                     cfg: FilterConfig, work: Work, prefix: Path, list_dir: Path) -> None:
    """Sec. 3.5: score the units of untrimmed (or raw) videos chunk by chunk; one record per video."""
    scorer = Scorer(teachers, cfg, single_frames=route == "one_fps")
    stream = _UnitStream(samples, todo, route, cfg, scorer.loads)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=min(cfg.workers, len(todo)),
                                         collate_fn=_as_is, pin_memory=torch.device(cfg.device).type == "cuda")
    what = {"one_fps": "untrimmed 1-FPS frames", "windows": f"untrimmed {cfg.piece_seconds:g}-s windows",
            "raw": "raw pieces"}[route]
    progress, failed, pending = _Progress(f"scoring {what}{_rank_tag(work.shard)}", len(todo), cfg.progress), 0, {}
    for i, first, total, views, info, error in loader:
        if error is None:
            pending.setdefault(i, []).append((scorer.probs(views), info))   # (u, K) per chunk
            if first + len(views[0]) < total:
                continue
            record = _untrimmed_record(i, pending.pop(i), route, samples, query, cfg, prefix, list_dir)
        else:
            pending.pop(i, None)
            record = _corrupt(i, samples[i], query[i], prefix, error)
            failed += 1
        work.append("records", [record])
        work.scored += 1
        progress.update(1, failed)
    progress.close()


def _untrimmed_record(i: int, chunks: list[tuple], route: str, samples: Samples, query: np.ndarray,
                      cfg: FilterConfig, prefix: Path, list_dir: Path) -> dict:
    """Sec. 3.5: a video's decision from its units (most confident unit), its record and its list line."""
    s, q = samples[i], int(query[i])
    probs = torch.cat([c[0] for c in chunks])                                          # (U, K)
    keep, label, positive = untrimmed_decision(probs.numpy(), q, cfg.mode, cfg.threshold)
    best = probs.max(dim=0).values
    top_p, top_c = best.topk(min(TOP_K, len(best)))
    r = _score_record(_base_record(i, s, q, prefix), best, top_c, top_p, q, cfg)
    r.update(status="kept" if keep else "dropped", label=label if keep else None, units=len(probs),
             positive_units=int(positive.sum()),
             unit_scores=[round(float(p), 6) for p in probs[:, max(label, 0)].tolist()])
    pos = np.flatnonzero(positive)
    if route == "one_fps":
        r["frames"] = np.concatenate([c[1][0] for c in chunks]).tolist()
        line = f"{_rel(s.path, list_dir)} {label}"
    elif route == "windows":
        ranges, rate = np.concatenate([c[1][0] for c in chunks]), chunks[0][1][1]
        r.update(windows=ranges.tolist(), fps=rate)
        if cfg.cut_pieces:
            r["piece_dir"] = _piece_name(s.path, prefix, i)
            line = f'raw/{r["piece_dir"]} {label} {len(ranges)} ' + " ".join(str(int(j)) for j in pos)
        else:   # data.py 'windows' kind: PATH LABEL START:END ... in seconds
            line = f"{_rel(s.path, list_dir)} {label} " + " ".join(f"{a / rate:.3f}:{b / rate:.3f}"
                                                                   for a, b in ranges[pos].tolist())
    else:
        line = f"{_rel(s.path, list_dir)} {label} {len(probs)} " + " ".join(str(int(j)) for j in pos)
    if keep:
        r["line"] = line
    return r


def _cut_kept(samples: Samples, mine: np.ndarray, prefix: Path, cfg: FilterConfig, work: Work) -> None:
    """--cut-pieces: cut this rank's kept untrimmed videos into WORK/raw/NAME/part_N.mp4 (resumable)."""
    mine_set = set(mine.tolist())
    kept = {}
    for number, offset, line in work.lines("records"):
        i = _record_index(line)
        if i in mine_set:
            r = json.loads(line)
            if r["status"] == "kept":
                kept[i] = r["piece_dir"]
    for _, _, line in work.lines("cut"):
        kept.pop(json.loads(line)["i"], None)
    todo = sorted(kept)
    if not todo:
        return
    items = _CutItems(samples, todo, [kept[i] for i in todo], work.folder / "raw", cfg.piece_seconds)
    loader = torch.utils.data.DataLoader(items, batch_size=None, num_workers=cfg.workers, collate_fn=_as_is)
    progress = _Progress(f"cutting kept untrimmed videos{_rank_tag(work.shard)}", len(todo), cfg.progress)
    failed = 0
    for i, pieces, error in loader:
        work.append("cut", [dict(i=i, pieces=pieces) if error is None else dict(i=i, error=error)])
        failed += error is not None
        progress.update(1, failed)
    progress.close()


class _CutItems(torch.utils.data.Dataset):
    """Worker: cut one untrimmed video into RAW/NAME/part_N.mp4 -> (index, pieces, None) or (index, None, error)."""

    def __init__(self, samples: Samples, ids: list[int], names: list[str], raw_dir: Path, seconds: float):
        self.samples, self.ids, self.names, self.raw_dir, self.seconds = samples, ids, names, raw_dir, seconds

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k: int) -> tuple:
        i = self.ids[k]
        try:
            return i, data.cut_video(self.samples[i].path, self.raw_dir / self.names[k], self.seconds), None
        except Exception as err:   # PyAV and the OS raise many types: all mean "could not be cut"
            return i, None, f"{type(err).__name__}: {_first_line(err)}"


def _dedup_pass(samples: Samples, idx: np.ndarray, query: np.ndarray, extractor: FrameFeatures,
                val_samples: Samples, cfg: FilterConfig, work: Work, prefix: Path) -> tuple[np.ndarray, dict]:
    """Sec. 3.3 over this rank's blocks of `idx`; returns (removed indices of ALL ranks, info). Resumable."""
    reference = _dedup_reference(val_samples, [samples[i] for i in _whitening_subset(idx)], extractor, cfg, work)
    blocks = [idx[s:s + cfg.batch_size] for s in range(0, len(idx), cfg.batch_size)]
    finished = {json.loads(line)["b"] for _, _, line in work.lines("dedup")}
    todo = [k for k in work.shard.mine(len(blocks)) if k not in finished]
    load = _DedupLoad(cfg.dedup_frames, extractor.crop_size, 1)
    val_base, frames = _common_folder(val_samples), 0
    for k, ids, counts, views, errors in _run_blocks(samples, blocks, load, cfg, "de-duplication: web frames"
                                                     f"{_rank_tag(work.shard)}", todo):
        records = [_corrupt(i, samples[i], query[i], prefix, m) for i, m in errors.items()]
        if len(ids):
            frames += int(counts.sum())
            for i, (sim, j) in zip(ids.tolist(), match_web(extractor, views[0], counts, reference, cfg)):
                if sim > reference["threshold"]:
                    records.append(dict(_base_record(i, samples[i], query[i], prefix), status="duplicate",
                                        duplicate_of=_rel(val_samples[j].path, val_base), val_index=j,
                                        similarity=round(sim, 4)))
        records.sort(key=lambda r: r["i"])
        work.append("records", records)
        work.append("dedup", [dict(b=k, removed=[r["i"] for r in records])])
    _barrier()
    removed, seen = [], set()
    for _, _, line in work.lines("dedup"):
        r = json.loads(line)
        if r["b"] not in seen:
            seen.add(r["b"])
            removed += r["removed"]
    if len(seen) < len(blocks):
        raise RuntimeError(f"filter: de-duplication finished {len(seen)} of {len(blocks)} blocks in {work.folder}")
    return np.asarray(removed, dtype=np.int64), reference["info"]


def _dedup_reference(val_samples: Samples, web_subset: Samples, extractor: FrameFeatures, cfg: FilterConfig,
                     work: Work) -> dict:
    """The val side of Sec. 3.3, computed once by rank 0 into WORK/dedup-val.pt and read by every rank."""
    path = work.folder / "dedup-val.pt"
    if work.shard.rank == 0 and not path.is_file():
        ref = fit_dedup_reference(val_samples, extractor, cfg, web_subset)
        tmp = path.with_suffix(".tmp")
        torch.save(dict(mean=torch.from_numpy(ref["white"].mean), proj=torch.from_numpy(ref["white"].proj),
                        threshold=ref["threshold"], val=ref["val"].cpu(), owner=torch.from_numpy(ref["owner"]),
                        info=ref["info"]), tmp)
        os.replace(tmp, path)
    _barrier()
    saved = torch.load(path, map_location="cpu", weights_only=True)
    return dict(white=Whitening(saved["mean"].numpy(), saved["proj"].numpy()), threshold=saved["threshold"],
                val=saved["val"].to(cfg.device), owner=saved["owner"].numpy(), info=saved["info"])


# ----------------------------------------------------------------------------------------------------------------------
# 6. Outputs: merged by sample index from the records, streamed, put in place atomically
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class FilterResult:
    """A filter output read back (small outputs: tests): list lines, sidecar, report with its samples,
    duplicates.txt lines."""
    lines: list                # train.txt lines, in source order
    frame_scores: dict         # list path -> data.FrameScores (2D untrimmed videos)
    report: dict               # report.json + samples (samples.jsonl), corrupt, duplicates
    duplicates: list           # duplicates.txt lines

    @classmethod
    def read(cls, folder: str | Path) -> FilterResult:
        folder = Path(folder)
        report = json.loads((folder / "report.json").read_text())
        samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
        sidecar = data.frame_scores_path(folder / "train.txt")
        report.update(samples=samples,
                      corrupt=[dict(path=r["path"], error=r["error"]) for r in samples if r["status"] == "corrupt"],
                      duplicates=[dict(path=r["path"], val=r["duplicate_of"], similarity=r["similarity"])
                                  for r in samples if r["status"] == "duplicate"])
        return cls((folder / "train.txt").read_text().splitlines(),
                   data.read_frame_scores(sidecar) if sidecar.is_file() else {}, report,
                   (folder / "duplicates.txt").read_text().splitlines()[1:])


def merge_outputs(work: Work, folder: str | Path, samples: Samples, query: np.ndarray, classes: list[str],
                  cfg: FilterConfig, list_dir: Path, prefix: Path, val_samples: Samples | None = None,
                  dedup_info: dict | None = None, extra: dict | None = None) -> dict:
    """Rank 0: every rank's records, in sample order, -> train.txt (+ sidecar), samples.jsonl, duplicates.txt,
    classes.txt and report.json (summary with the Fig. 3 counts) in `folder`. Streams: memory is a few arrays
    of N numbers. A sample recorded twice (a block redone after a crash) takes its last record."""
    folder, n = Path(folder), len(samples)
    # 1. index: where the last record of every sample is (file number, offset); -1 = no record
    files = work.files("records")
    pick, number, offset = _last_records(work, n)
    expected = np.ones(n, dtype=bool) if cfg.mode == "pseudo" else query >= 0
    if (expected & (pick < 0)).any():
        raise RuntimeError(f"filter: {int((expected & (pick < 0)).sum())} samples have no record in "
                           f"{work.folder} (a rank did not finish); run the same command again")
    cut = {}
    for _, _, line in work.lines("cut"):
        r = json.loads(line)
        cut[r["i"]] = r
    # 2. stream the records in sample order into the outputs and count (Fig. 3)
    k = len(classes)
    per = {name: np.zeros(k, dtype=np.int64) for name in ("before", "corrupt", "duplicate", "kept", "dropped",
                                                          "after")}
    status: dict[str, int] = {}
    handles = [open(p, "rb") for p in files]
    sidecar = _SidecarWriter(data.frame_scores_path(folder / "train.txt"), cfg.fps)
    try:
        with open(folder / "train.txt", "w") as out, open(folder / "samples.jsonl", "w") as rec_out, \
                open(folder / "duplicates.txt", "w") as dup_out:
            dup_out.write("# web sample (relative to this folder)  val sample it duplicates  whitened cosine "
                          "similarity\n" if val_samples is not None else
                          "# de-duplication was not run (no --dedup-against)\n")
            for i in range(n):
                if pick[i] < 0:   # query mode, query class not a teacher class: left out (Sec. 3.4)
                    r = dict(_base_record(i, samples[i], int(query[i]), prefix), status="unknown_query")
                else:
                    f = handles[number[pick[i]]]
                    f.seek(offset[pick[i]])
                    r = json.loads(f.readline())
                line = r.pop("line", None)
                if r["status"] == "kept" and cfg.cut_pieces and "piece_dir" in r:
                    c = cut.get(i)
                    if c is None or "error" in c:
                        if c is None:
                            raise RuntimeError(f'filter: kept video {r["path"]} was not cut; run the same '
                                               f"command again")
                        r.update(status="corrupt", label=None, error=f'cutting failed: {c["error"]}')
                        line = None
                if r["status"] == "kept":
                    out.write(line + "\n")
                    if "frames" in r:
                        sidecar.add(line.rsplit(" ", 1)[0], r["frames"], r["unit_scores"], cfg.threshold)
                    per["after"][r["label"]] += 1
                if r["status"] == "duplicate":
                    j = r.pop("val_index")
                    dup_out.write(f"{_rel(samples[i].path, list_dir)} {_rel(val_samples[j].path, list_dir)} "
                                  f'{r["similarity"]:.4f}\n')
                status[r["status"]] = status.get(r["status"], 0) + 1
                if r["query"] >= 0:
                    per["before"][r["query"]] += 1
                    if r["status"] in per:
                        per[r["status"]][r["query"]] += 1
                rec_out.write(json.dumps(r) + "\n")
    finally:
        for f in handles:
            f.close()
        sidecar.close()
    # 3. the summary: counts and the Fig. 3 counts per class
    (folder / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    report = _summary(per, status, n, query, classes, cfg, dedup_info, extra)
    (folder / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def _last_records(work: Work, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pick (n,), file number, offset) of the records in the work folder: pick[i] indexes the last record of
    sample i (a block redone after a crash), -1 when it has none. Three int64 columns, no object per record."""
    columns = [array.array("q") for _ in range(3)]
    for f, o, line in work.lines("records"):
        columns[0].append(_record_index(line))
        columns[1].append(f)
        columns[2].append(o)
    index, number, offset = (np.frombuffer(c, dtype=np.int64) if len(c) else np.zeros(0, np.int64) for c in columns)
    order = np.lexsort((np.arange(len(index)), index))
    last = np.append(index[order][1:] != index[order][:-1], True) if len(order) else np.zeros(0, bool)
    pick = np.full(n, -1, dtype=np.int64)
    pick[index[order][last]] = order[last]
    return pick, number, offset


def _summary(per: dict[str, np.ndarray], status: dict[str, int], n: int, query: np.ndarray, classes: list[str],
             cfg: FilterConfig, dedup_info: dict | None, extra: dict | None) -> dict:
    """report.json: the counts per status and, per class, before / kept / dropped / corrupt / duplicate / after."""
    per_class = [dict(index=c, name=classes[c], before=int(per["before"][c]), kept=int(per["kept"][c]),
                      dropped=int(per["dropped"][c]),
                      corrupt=int(per["corrupt"][c]), duplicate=int(per["duplicate"][c]), after=int(per["after"][c]))
                 for c in range(len(classes))]
    counts = dict(total=n, kept=status.get("kept", 0), dropped=status.get("dropped", 0),
                  corrupt=status.get("corrupt", 0), duplicate=status.get("duplicate", 0),
                  unknown_query=int((query < 0).sum()))
    return dict(mode=cfg.mode, threshold=cfg.threshold, student=cfg.student, classes=list(classes),
                counts=counts, per_class=per_class,
                about_per_class="before: samples crawled for the class (query label); kept / dropped / corrupt / "
                                "duplicate: of those; after: kept samples labelled with the class (= kept in "
                                "query mode; pseudo-labels in pseudo mode)",
                about_samples="samples.jsonl: one record per sample in list order (status, label, query-class "
                              "and top-5 probabilities, units of untrimmed videos)",
                dedup=dedup_info, **(extra or {}))


class _SidecarWriter:
    """Streams data.write_frame_scores's format (one line per video); no file when no video was added."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps, self.f = Path(path), fps, None

    def add(self, key: str, frames: Sequence[int], scores: Sequence[float], threshold: float) -> None:
        if self.f is None:
            self.f = open(self.path, "w")
            head = json.dumps({"format": data.FRAME_SCORES_FORMAT, "fps": self.fps, "about": "Sec. 3.5 untrimmed "
                               "videos: teacher probability of the line label at each low-rate frame"})
            self.f.write(head[:-1] + ', "videos": {\n')
        else:
            self.f.write(",\n")
        self.f.write(f"  {json.dumps(key)}: " + json.dumps({"frames": [int(f) for f in frames],
                     "threshold": float(threshold), "scores": [round(float(x), 6) for x in scores]}))

    def close(self) -> None:
        if self.f is not None:
            self.f.write("\n}}\n")
            self.f.close()
            self.f = None


def write_output(folder: str | Path, result: FilterResult, classes: list[str]) -> None:
    """A FilterResult -> classes.txt, train.txt (+ sidecar), report.json, samples.jsonl, duplicates.txt."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    (folder / "train.txt").write_text("".join(f"{line}\n" for line in result.lines))
    if result.frame_scores:
        data.write_frame_scores(data.frame_scores_path(folder / "train.txt"), result.frame_scores)
    summary = {k: v for k, v in result.report.items() if k not in ("samples", "corrupt", "duplicates")}
    (folder / "report.json").write_text(json.dumps(summary, indent=1) + "\n")
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in result.report.get("samples", [])))
    head = ("# web sample (relative to this folder)  val sample it duplicates  whitened cosine similarity"
            if result.report.get("dedup") else "# de-duplication was not run (no --dedup-against)")
    (folder / "duplicates.txt").write_text("\n".join([head] + result.duplicates) + "\n")


@contextlib.contextmanager
def staged_output(final: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary sibling of `final`; on success it replaces `final` by renames, on error
    (or Ctrl-C) it is removed and `final` is left as it was (the run's records stay in its work folder)."""
    final = Path(final)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------------
# 7. Command line
# ----------------------------------------------------------------------------------------------------------------------

def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("omnisource filter", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="Teacher filtering of a web source (OmniSource Sec. 3.3-3.5): "
                                            "writes DATA_ROOT/OUT/ for train.py --aux OUT. Under torchrun the "
                                            "samples are split over the processes; rerun the same command "
                                            "after a crash to resume.")
    p.add_argument("--data-root", default="data", help="folder holding the datasets (DATA_ROOT/NAME/ or the "
                   "paper's released layouts, see data.resolve_dataset)")
    p.add_argument("--source", required=True, help="web source to filter: a folder under --data-root with "
                   "classes.txt and train.txt (QUERY labels), or gg, ig-img, ig-vid, k200-raw, k400-untr")
    p.add_argument("--split", default="train", help="split of --source to filter")
    p.add_argument("--teacher", nargs="+", required=True, help="train.py checkpoint(s) of the teacher(s); "
                   "several are ensembled by averaging probabilities (Fig. 6); images need TSN teachers")
    p.add_argument("--teacher-arch", default=None, help="architecture of --teacher files that are not train.py "
                   "checkpoints (MMAction2 0.x / 1.x, bare state dicts), e.g. tsn_r50; their classes are the "
                   "source's classes.txt")
    p.add_argument("--out", required=True, help="output dataset name: DATA_ROOT/OUT/ (replaced if it is an "
                   "earlier filter.py output); work folder DATA_ROOT/.OUT.filter-work/ until it is done")
    p.add_argument("--threshold", type=float, default=0.5, help="T: keep when the deciding probability >= T")
    p.add_argument("--mode", choices=MODES, default="query", help="'query': keep when p(query class) >= T, "
                   "label = query; 'pseudo': keep when max p >= T, label = argmax (Sec. 3.4)")
    p.add_argument("--student", choices=STUDENTS, default="2d", help="untrimmed videos: 2d = 1-FPS frames "
                   "scored by 2D teachers + snippet sidecar; 3d = 10-s windows scored as clips (Sec. 3.5)")
    p.add_argument("--cut-pieces", action="store_true", help="--student 3d: cut kept videos into re-encoded "
                   "10-s pieces OUT/raw/NAME/part_N.mp4 (MMAction2 RawVideoDataset lines) instead of listing "
                   "their positive windows by time")
    p.add_argument("--clips", type=int, default=None, help="video scoring: TSN segments / 3D clips per "
                   f'video, centre crop (default {DEFAULT_CLIPS["tsn"]} / {DEFAULT_CLIPS["3d"]})')
    p.add_argument("--fps", type=float, default=1.0, help="--student 2d: rate of the scored frames")
    p.add_argument("--piece-seconds", type=float, default=10.0, help="--student 3d: window / piece length in "
                   "seconds")
    p.add_argument("--chunk-frames", type=int, default=64, help="untrimmed videos: frames decoded at once "
                   "(full resolution: 64 frames of 1080p are 400 MB), whatever the length of the video")
    p.add_argument("--dedup-against", default=None, help="target dataset whose val split web samples are "
                   "de-duplicated against (Sec. 3.3); off when not given")
    p.add_argument("--dedup-checkpoint", default=None, help="ImageNet ResNet-50 weights for de-duplication "
                   "(torchvision state dict or a train.py checkpoint); default: the teacher's backbone")
    p.add_argument("--dedup-frames", type=int, default=3, help="frames per video compared in de-duplication")
    p.add_argument("--batch-size", type=int, default=16, help="samples per block: one decoding batch and one "
                   "teacher forward (changing it between a crash and the rerun starts over)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes that decode (per rank)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available; under torchrun "
                   "cuda:LOCAL_RANK)")
    p.add_argument("--amp", choices=AMPS, default=None, help="teachers' inference precision (torch.autocast); "
                   "default: bf16 on CUDA GPUs that support it, none (fp32) on the CPU")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def main(args: argparse.Namespace) -> dict | None:
    """The command: returns the report (report.json's summary) on rank 0, None on the other ranks."""
    shard, device = _distributed(args.device)
    amp = args.amp or ("bf16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "none")
    cfg = FilterConfig(mode=args.mode, threshold=args.threshold, student=args.student, clips=args.clips,
                       fps=args.fps, piece_seconds=args.piece_seconds, cut_pieces=args.cut_pieces,
                       dedup_frames=args.dedup_frames, batch_size=args.batch_size, workers=args.workers,
                       chunk_frames=args.chunk_frames, progress=not args.quiet, device=device, amp=amp)
    data_root = Path(args.data_root)
    spec = data.resolve_dataset(data_root, args.source)
    samples = data.load_split(spec, args.split)
    final = _check_out(data_root, args.out, spec)
    teachers = load_teachers(args.teacher, cfg.device, args.teacher_arch, spec.classes)
    check_teachers(teachers, _kind_names(samples), cfg.student)
    query = map_query_labels(samples, spec.classes, teachers[0].classes, args.source, cfg.mode)
    unknown = int((query < 0).sum())
    if unknown and cfg.mode == "query" and shard.rank == 0:
        print(f"--source {args.source}: {unknown} of {len(query)} samples have a query class that is not a "
              f"teacher class; left out (query mode matches class names)", file=sys.stderr)
    val = extractor = None
    if args.dedup_against:
        val = data.load_split(data.resolve_dataset(data_root, args.dedup_against), "val")
        extractor = build_extractor(teachers, args.dedup_checkpoint, cfg.device)
    work = Work(data_root / f".{args.out}.filter-work", shard)
    work.claim(_settings(args, cfg, len(samples)), f"--out {args.out}")
    start = time.time()
    try:
        info = run_filter(samples, query, teachers, cfg, work, spec.splits[args.split].prefix, final, val,
                          extractor)
    finally:
        work.close()
    _barrier()   # every rank's records and progress are on disk
    report = None
    if shard.rank == 0:
        extra = dict(source=args.source, split=args.split, out=args.out, data_root=str(data_root), amp=cfg.amp,
                     teachers=[dict(path=t.source, arch=t.arch) for t in teachers], dedup_against=args.dedup_against,
                     run=dict(ranks=shard.world, scored=work.scored_now(), seconds=round(time.time() - start, 1)))
        with staged_output(final) as tmp:
            report = merge_outputs(work, tmp, samples, query, teachers[0].classes, cfg, final,
                                   spec.splits[args.split].prefix, val, info, extra)
            _move_pieces(work, tmp)
        shutil.rmtree(work.folder)
        c = report["counts"]
        print(f'{args.source} -> {final}: kept {c["kept"]} of {c["total"]} (dropped {c["dropped"]}, corrupt '
              f'{c["corrupt"]}, duplicates {c["duplicate"]}, query class not a teacher class '
              f'{c["unknown_query"]}) at T={cfg.threshold} ({cfg.mode} mode); scored {report["run"]["scored"]} '
              f"in this run on {shard.world} process(es)")
        if c["kept"] == 0:
            print(f"warning: nothing was kept; train.py --aux {args.out} needs samples (lower --threshold)",
                  file=sys.stderr)
        if c["duplicate"] > 0.05 * c["total"]:   # the paper flags 0.1% (Sec. 3.3)
            print(f'warning: {c["duplicate"]} of {c["total"]} samples look like duplicates of {args.dedup_against} '
                  f'val frames; the features ({report["dedup"]["extractor"]}) may not be crop-invariant '
                  f"enough: pass --dedup-checkpoint with ImageNet ResNet-50 weights", file=sys.stderr)
        omnisource.filter_figures(final)           # contact sheet, Fig. 3 histogram, ... beside the outputs
    _barrier()
    return report


def map_query_labels(samples: Samples, source_classes: list[str], teacher_classes: list[str],
                     source: str = "source", mode: str = "query") -> np.ndarray:
    """Each sample's query class as a teacher class index (-1: not a teacher class), matched by class name
    exactly as data.map_labels matches an auxiliary source's classes to the target's.

    No shared class name at all is a one-line error in query mode (pseudo mode needs no query class).
    """
    probe = [data.Sample(Path(str(k)), k, "image") for k in range(len(source_classes))]   # one per class
    try:
        mapped, _ = data.map_labels(probe, source_classes, teacher_classes, f"--source {source}")
    except ValueError as err:
        if mode == "query":
            raise ValueError(f"{_first_line(err)}; query mode matches class names (or use --mode pseudo)") from None
        mapped = []
    table = np.full(len(source_classes), -1, dtype=np.int64)
    for s in mapped:
        table[int(s.path.name)] = s.label
    return table[_labels(samples)]


def cli(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    try:
        main(args)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {_first_line(err) or type(err).__name__}")
    if dist.is_available() and dist.is_initialized():
        # tear the group down on every rank after the last barrier, while the interpreter is fully alive (gloo's
        # threads outliving it can abort the process at exit)
        dist.barrier()
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------

class _Load:
    """A picklable worker-side loader: sample -> fn(sample, loads) (one uint8 tensor per teacher group)."""

    def __init__(self, fn: Callable, loads: Loads):
        self.fn, self.loads = fn, loads

    def __call__(self, sample: data.Sample) -> list[torch.Tensor]:
        return self.fn(sample, self.loads)


class _Progress:
    """'filter: WHAT: done/total (n unreadable) rate/s ETA' on stderr, redrawn in place on a terminal."""

    def __init__(self, what: str, total: int, enabled: bool = True, every: float = 2.0):
        self.what, self.total, self.enabled, self.every = what, total, enabled and total > 0, every
        self.done, self.start, self.last, self.tty = 0, time.time(), 0.0, sys.stderr.isatty()

    def update(self, n: int, failed: int) -> None:
        self.done += n
        now = time.time()
        if not self.enabled or (now - self.last < self.every and self.done < self.total):
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-6)
        eta = time.strftime("%H:%M:%S", time.gmtime((self.total - self.done) / max(rate, 1e-6)))
        print(f"filter: {self.what}: {self.done}/{self.total} ({failed} unreadable) {rate:.1f}/s ETA {eta}",
              end="\r" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr)


def _as_is(item: object) -> object:
    """DataLoader collate_fn: items pass unchanged (numpy arrays stay numpy)."""
    return item


def _distributed(device: str | None) -> tuple[Shard, str]:
    """torchrun's RANK / WORLD_SIZE / LOCAL_RANK -> (Shard, device); a gloo group only for the barriers."""
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))   # rank 0 merges while others wait
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        device = f"cuda:{local}"
        torch.cuda.set_device(device)
    return Shard(rank, world), device


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _settings(args: argparse.Namespace, cfg: FilterConfig, num_samples: int) -> dict:
    """What a resumed run must share with the crashed one (not --workers, --device, --quiet or the rank count)."""
    teachers = [dict(path=str(Path(p).resolve()), bytes=Path(p).stat().st_size, mtime_ns=Path(p).stat().st_mtime_ns)
                for p in args.teacher]
    keep = ("source", "split", "teacher_arch", "dedup_against", "dedup_checkpoint")
    config = {k: v for k, v in vars(cfg).items() if k not in ("workers", "device", "progress")}
    return dict({k: getattr(args, k) for k in keep}, teachers=teachers, samples=num_samples, config=config)


def _route_codes(samples: Samples, student: str) -> np.ndarray:
    """Route (index into ROUTES) of every sample: images; short videos and frame folders; untrimmed videos as
    1-FPS frames (2d) or 10-s windows (3d); raw videos cut already."""
    kinds = list(data.KINDS)
    table = np.array([ROUTES.index({"image": "images", "untrimmed": "one_fps" if student == "2d" else "windows",
                                    "raw": "raw"}.get(k, "videos")) for k in kinds], dtype=np.int8)
    codes = getattr(samples, "kinds", None)
    if codes is None:
        codes = np.fromiter((kinds.index(s.kind) for s in samples), dtype=np.int64, count=len(samples))
    return table[np.asarray(codes, dtype=np.int64)]


def _labels(samples: Samples) -> np.ndarray:
    labels = getattr(samples, "labels", None)
    if labels is None:
        labels = np.fromiter((s.label for s in samples), dtype=np.int64, count=len(samples))
    return np.asarray(labels, dtype=np.int64)


def _kind_names(samples: Samples) -> set[str]:
    codes = getattr(samples, "kinds", None)
    if codes is None:
        return {s.kind for s in samples}
    return {data.KINDS[c] for c in np.unique(codes)}


def _base_record(i: int, sample: data.Sample, query: int, prefix: Path) -> dict:
    return dict(i=int(i), path=_rel(sample.path, prefix), kind=sample.kind, query=int(query))


def _corrupt(i: int, sample: data.Sample, query: int, prefix: Path, message: str) -> dict:
    return dict(_base_record(i, sample, query, prefix), status="corrupt", error=message)


def _score_record(record: dict, probs: torch.Tensor, top_c: torch.Tensor, top_p: torch.Tensor, query: int,
                  cfg: FilterConfig) -> dict:
    """A sample's scores in its record: query-class and top probabilities (top-5), deciding score (Sec. 3.4)."""
    q = float(probs[query]) if query >= 0 else None
    top = [[int(c), round(float(p), 4)] for c, p in zip(top_c.tolist(), top_p.tolist())]
    record.update(query_score=None if q is None else round(q, 4), top_class=top[0][0], top_score=top[0][1],
                  score=round(q if cfg.mode == "query" and q is not None else
                              top[0][1] if cfg.mode == "pseudo" else 0.0, 4), top5=top)
    return record


def _dump(record: dict) -> bytes:
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()


def _record_index(line: bytes) -> int:
    """The sample index of a record line b'{"i":123,...}' (written by _dump, 'i' first)."""
    return int(line[5:line.index(b",", 5)])


def _drop_torn_tail(path: Path) -> None:
    """Cut a file back to its last complete line (a write torn by SIGKILL or a crash)."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        pos = size
        while pos > 0:
            step = min(65536, pos)
            f.seek(pos - step)
            chunk = f.read(step)
            k = chunk.rfind(b"\n")
            if k >= 0:
                pos = pos - step + k + 1
                break
            pos -= step
        if pos != size:
            f.truncate(pos)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _move_pieces(work: Work, folder: Path) -> None:
    """--cut-pieces: the pieces of kept videos move from the work folder into the output (one rename)."""
    raw = work.folder / "raw"
    if raw.is_dir():
        _remove_empty_folders(raw)
        if raw.is_dir():
            os.rename(raw, Path(folder) / "raw")


def _rank_tag(shard: Shard) -> str:
    return f" [rank {shard.rank}/{shard.world}]" if shard.world > 1 else ""


def _check_out(data_root: str | Path, out: str, spec: data.DatasetSpec) -> Path:
    """--out: a plain folder name, not the source, and not a folder filter.py did not write."""
    if not out or Path(out).name != out or out in (".", ".."):
        raise ValueError(f"--out {out!r}: expected a dataset folder name (created under --data-root)")
    final = Path(data_root) / out
    if final.resolve() in (Path(spec.root).resolve(), Path(data_root).resolve()):
        raise ValueError(f"--out {out}: that is the source folder itself; choose a new name")
    if final.exists() and not (final / "report.json").is_file():
        raise ValueError(f"--out {out}: {final} exists and is not an earlier filter.py output (no "
                         f"report.json); choose a new name")
    return final


def _remove_empty_folders(root: Path) -> None:
    """Remove the folders under (and including) `root` that hold no file, deepest first."""
    if root.is_dir():
        for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [root]:
            if not any(folder.iterdir()):
                folder.rmdir()


def _piece_name(path: str | Path, prefix: Path, index: int) -> str:
    """Folder of a video's pieces under raw/: its path under the data prefix without the extension."""
    rel = Path(_rel(path, prefix)).with_suffix("")
    return rel.as_posix() if ".." not in rel.parts else f"{index:06d}_{rel.name}"


def _common_folder(samples: Samples) -> Path:
    return Path(os.path.commonpath([str(Path(s.path).parent) for s in samples]))


def _rel(path: str | Path, base: str | Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def _first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [""])[0]


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _name(teacher: nn.Module) -> str:
    return str(getattr(teacher, "source", None) or getattr(teacher, "arch", None) or type(teacher).__name__)


def _foreign_teacher(path: str | Path, arch: str, classes: list[str]) -> nn.Module:
    """A teacher from a checkpoint that does not describe itself: build `arch`, load strictly, attach classes."""
    model = models.build_model(arch, len(classes))
    models.load_weights(model, path)
    model.classes = list(classes)
    return model.eval()


if __name__ == "__main__":
    cli()
