"""Teacher filtering of crawled web data (OmniSource Sec. 3.3-3.5): step 2 of the procedure in Table 1.

    python filter.py --source gg --teacher tsn.pth --out gg-filtered --dedup-against k400 --dedup-checkpoint r50.pth
    python filter.py --source k400-untr --teacher slowonly.pth --student 3d --out untr-3d   # 10-s windows
    torchrun --nnodes N --nproc_per_node G filter.py ...      (the same command, split over N x G processes)

Sec. 3.3  Invalid or corrupted files (found while decoding: webscale.DECODE_ERRORS) are recorded and left out.
          --dedup-against: web samples with a frame too similar to a val frame of the target are removed and listed
          in duplicates.txt (`deduplicate`: whitened ResNet-50 features, cosine similarity, a crop-based threshold).
Sec. 3.4  Teacher filtering, decided once over the whole crawl (`decide` -> `keep_decision`) from what the teachers
          saw (webscale.Seen): 'query' mode keeps a sample when p(query class) >= T_c, labelled with its query class;
          'pseudo' mode when the top probability >= T_c, labelled with the argmax. T_c: --rule (`RULES`). Several
          teachers are averaged (`ensemble`, Fig. 6); web images get 2D (TSN) teachers only; query classes are
          matched to the teachers' classes by name.
Sec. 3.5  Untrimmed videos (Fig. 2 right), the whole policy (data.py, transforms.py and webscale.py point here):
          units     --student 2d: frames at 1 FPS (--fps; `one_fps_indices`: the centre frame of each second);
                    --student 3d: 10-s windows (--piece-seconds; `window_ranges`: the frames data.cut_video puts in
                    each piece); a 'raw' source (RawVideoDataset pieces, cut already): its pieces.
          scoring   a frame: one frame through 2D teachers; a window or piece: like a short video (the teachers'
                    test sampling over its frames). Decoded in chunks (--chunk-frames), never a whole video at once.
          decision  a video's class probabilities are its most confident unit's (`untrimmed_scores`), so
                    `keep_decision` keeps it when at least one unit reaches T_c (default T = 0.5) for its label; its
                    positive units are those with p(label) >= the threshold it was held to (`untrimmed_decision`).
          training  2D student: the line 'PATH LABEL' and, in the sidecar train_frame_scores.json
                    (webscale.FrameScores), its 1-FPS frame indices, their p(label) and the threshold, from which
                    data.VideoDataset(snippet=...) with transforms.select_snippet builds Table 14's TSN snippets
                    (1 positive + 2 negative frames by default). 3D student: data.py's 'windows' line 'PATH LABEL
                    START:END [START:END ...]' naming the positive windows by time (seconds, 3 decimals; frame k is
                    shown at k / fps: data.window_frames), decoded with seeking, a random positive window per
                    training item; or, with --cut-pieces, kept videos cut into re-encoded pieces OUT/raw/NAME/
                    part_N.mp4 listed as MMAction2 RawVideoDataset lines 'raw/NAME LABEL NUM_PIECES POS_IDX...'.

Outputs in DATA_ROOT/OUT/: train.txt (train.py --aux OUT) and its sidecar, raw/, classes.txt, report.json (Fig. 3 per
class), decision.npz (each sample's status, label, deciding score, threshold), what the teachers saw (samples.jsonl,
scores.npz, duplicates.txt) and figures. The same command with another --threshold, --mode, --rule or --cut-pieces
re-decides a finished output from its scores.npz without a teacher; after a crash or SIGKILL it resumes; under
torchrun the samples are split over the processes, byte for byte the output of one (webscale.py, "Work folders").
Global state: torchrun's process group, torn down at the end of `main`.
"""
from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Callable, Collection, Iterator, Sequence

import numpy as np
import torch
from torch import nn

import checkpoints
import data
import figures
import models
import synthetic
import transforms
import webscale

MODES = ("query", "pseudo")
STUDENTS = ("2d", "3d")
AMPS = ("none", *models.AMP_DTYPES)
DEFAULT_CLIPS = {"tsn": 8, "3d": 3}   # video scoring: TSN segments / 3D clips (cheap test protocol)
DEDUP_CROPS = 5                       # crops per val frame for the de-duplication threshold (Sec. 3.3)
DEDUP_DIMS = 256                      # Sec. 3.3: whitened features reduced to at most this many dimensions
DEDUP_WHITENING = 10000               # web samples (evenly spaced) whose frames join the val frames in the whitening
TOP_K = 5                             # classes (and probabilities) kept per sample in samples.jsonl
# how a sample is scored (`_route_codes`): images, videos / frame folders, untrimmed (1-FPS frames / 10-s windows), raw
ROUTES = ("images", "videos", "one_fps", "windows", "raw")
DECISION_KEYS = ("mode", "threshold", "rule", "cut_pieces")   # another value re-decides a finished run
STATUSES = ("kept", "dropped", "unknown_query", "corrupt", "duplicate")  # the decision (decision.npz 'status')
Samples = list[webscale.Sample] | webscale.SampleList   # a web source: a list, or the compact list of millions
Loads = list[tuple[data.Sampling, Callable, int]]       # per teacher group: sampling, uint8 transform, short side
ArrayLike = np.ndarray | Sequence


# ----------------------------------------------------------------------------------------------------------------------
# 1. Decisions (Sec. 3.4; Sec. 3.5 for untrimmed videos), taken once over the whole crawl from what the teachers saw
# ----------------------------------------------------------------------------------------------------------------------

def ensemble(prob_list: Sequence[ArrayLike | torch.Tensor]) -> torch.Tensor:
    """Fig. 6: the average of several teachers' class probabilities, each (..., K) -> (..., K) float32."""
    tensors = [torch.as_tensor(p, dtype=torch.float32) for p in prob_list]
    if not tensors or any(t.shape != tensors[0].shape for t in tensors):
        raise ValueError(f"filter.ensemble: expected >= 1 probability arrays of one shape, got "
                         f"{[tuple(t.shape) for t in tensors]}")
    return torch.stack(tensors).mean(dim=0)


def fixed_thresholds(labels: np.ndarray, p: np.ndarray, num_classes: int, threshold: float) -> np.ndarray:
    """Sec. 3.4 (the paper's rule): every class is held to T. Returns (K,) per-class thresholds."""
    return np.full(num_classes, float(threshold))


def class_adaptive_thresholds(labels: np.ndarray, p: np.ndarray, num_classes: int, threshold: float) -> np.ndarray:
    """Class-adaptive thresholds (beyond the paper; after FlexMatch, NeurIPS 2021): T_c = T * beta_c, beta_c = (mean
    deciding probability of the samples labelled c) / (the largest class mean): hard classes get a lower bar (FlexMatch
    counts confident predictions in training; the crawl is scored once); a class with no scored sample keeps T."""
    ok = ~np.isnan(p) & (labels >= 0)
    counts = np.bincount(labels[ok], minlength=num_classes)
    sums = np.bincount(labels[ok], weights=p[ok].astype(np.float64), minlength=num_classes)
    mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    if not (counts > 0).any() or np.nanmax(mean) <= 0:
        return np.full(num_classes, float(threshold))
    return float(threshold) * np.where(counts > 0, mean / np.nanmax(mean), 1.0)


# --rule NAME or NAME:VALUE: NAME -> (rule, the type of its VALUE, None for none). A rule maps every sample's deciding
# label and probability (N,) over the whole crawl, K, T (and VALUE) to the threshold of each class (K,). A new rule is
# one function and one entry here; its VALUE is part of the decision (another value re-decides without a teacher).
RULES: dict[str, tuple[Callable[..., np.ndarray], type | None]] = {
    "fixed": (fixed_thresholds, None), "class-adaptive": (class_adaptive_thresholds, None)}


def parse_rule(text: str) -> tuple[Callable[..., np.ndarray], tuple]:
    """--rule NAME[:VALUE] -> (the rule, its extra arguments: () or (VALUE,)), or a one-line ValueError. The rule
    runs once on an empty crawl, so a VALUE it refuses is refused here (omnisource.py checks its --rule with this)."""
    name, colon, value = str(text).partition(":")
    rule, kind = RULES.get(name, (None, None))
    problem = ""
    try:
        if rule is not None and (kind is None) != bool(colon):
            extra = () if kind is None else (kind(value),)
            rule(np.zeros(0, np.int64), np.zeros(0, np.float32), 1, 0.5, *extra)
            return rule, extra
    except ValueError as err:
        problem = f" ({webscale.first_line(err)})"
    names = ", ".join(n if k is None else f"{n}:{k.__name__.upper()}" for n, (_, k) in RULES.items())
    raise ValueError(f"--rule {text}: expected one of {names}{problem}")


def keep_decision(scores: webscale.Seen, num_classes: int, mode: str = "query", threshold: float = 0.5,
                  rule: str = "fixed") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sec. 3.4: which samples are kept and with which label, decided over the whole crawl at once from what the
    teachers saw (`scores`' (N,) columns: query, the query class as a teacher class, -1: none; query_p, p(query class),
    NaN: not scored; top_class, the argmax; top_p, its probability). 'query': the deciding probability is p(query
    class), the label the query class; 'pseudo': the top probability and the argmax (Sec. 3.2's PseudoLabel). Kept
    when >= its class's threshold (--rule). Returns (keep bool (N,), labels int64 (N,), thresholds float64 (N,))."""
    if mode not in MODES:
        raise ValueError(f"filter.keep_decision: mode must be one of {MODES}, got {mode!r}")
    thresholds, extra = parse_rule(rule)
    labels, p = (scores.query, scores.query_p) if mode == "query" else (scores.top_class, scores.top_p)
    per_class = thresholds(labels, p, num_classes, threshold, *extra)                          # (K,)
    held = np.where(labels >= 0, per_class[np.clip(labels, 0, num_classes - 1)], np.inf)
    return (labels >= 0) & (p >= held), labels.copy(), held


def untrimmed_scores(unit_probs: ArrayLike | torch.Tensor, query: int) -> tuple[np.ndarray, np.ndarray | None,
                                                                                  np.ndarray]:
    """Sec. 3.5 (policy: the module docstring): a video's units (U, K) -> (its probabilities (K,): its most confident
    unit's; the units' p(query class) (U,), None without one; the units' p(the video's argmax class) (U,))."""
    p = np.asarray(unit_probs, dtype=np.float32)
    video = p.max(axis=0)
    return video, (p[:, query] if query >= 0 else None), p[:, int(np.nan_to_num(video, nan=-1.0).argmax())]


def untrimmed_decision(unit_scores: ArrayLike, keep: bool | ArrayLike, threshold: float | ArrayLike) -> np.ndarray:
    """Sec. 3.5: the positive units of a video: p(its label) >= the threshold it was held to; none when dropped.
    unit_scores (U,); keep and threshold: the video's, or (U,) those of each unit's video -> bool (U,)."""
    return (np.asarray(unit_scores, dtype=np.float32) >= np.asarray(threshold)) & np.asarray(keep, dtype=bool)


def one_fps_indices(num_frames: int, video_fps: float, fps: float = 1.0) -> np.ndarray:
    """Sec. 3.5: frames "extracted at a low frame rate": floor((k + 0.5) * video_fps / fps), the centre of second k
    (fps = 1), for the seconds centred before the end; a video shorter than half a second gives its middle frame."""
    if num_frames < 1 or not video_fps > 0 or not fps > 0:
        raise ValueError(f"filter.one_fps_indices: need num_frames >= 1 and rates > 0, got {num_frames}, "
                         f"{video_fps}, {fps}")
    step = video_fps / fps
    idx = np.floor((np.arange(int(num_frames / step + 0.5) + 1) + 0.5) * step).astype(np.int64)
    idx = idx[idx < num_frames]
    return idx if len(idx) else np.array([num_frames // 2], dtype=np.int64)


def window_ranges(num_frames: int, video_fps: float, seconds: float = 10.0) -> np.ndarray:
    """Sec. 3.5: the 10-s windows of a video as frame ranges [first, stop) (P, 2), the frames data.cut_video puts in
    each piece: round(seconds * fps) each, a tail shorter than half joins the last, a short video is one window."""
    per = max(1, round(seconds * float(video_fps)))
    first = np.arange(max(1, int(num_frames / per + 0.5)), dtype=np.int64) * per
    return np.stack([first, np.append(first[1:], num_frames)], axis=1)


def decide(seen: webscale.Seen, num_classes: int, cfg: FilterConfig) -> dict[str, np.ndarray]:
    """Sec. 3.4-3.5 once over the whole crawl, the one place a rule is applied: what the teachers saw (the records'
    columns) -> `keep_decision` and the positive units (`untrimmed_decision`). Returns decision.npz's columns: status
    uint8 (N,) into STATUSES, label int64 (N,) (-1 unless kept), score float32 (N,) and threshold float64 (N,) (NaN
    unless decided), positive_units int64 (N,) (-1 unless a decided video), unit_positive bool (M,)."""
    n = len(seen.state)
    keep, label, held = keep_decision(seen, num_classes, cfg.mode, cfg.threshold, cfg.rule)
    scored = seen.state == webscale.SEEN.index("scored")
    decided = scored & (label >= 0)          # query mode, the query class is not a teacher class: left out
    keep &= decided
    status = np.select([keep, decided, scored, seen.state == webscale.SEEN.index("corrupt")],
                       [STATUSES.index(x) for x in ("kept", "dropped", "unknown_query", "corrupt")],
                       STATUSES.index("duplicate")).astype(np.uint8)
    p = seen.query_p if cfg.mode == "query" else seen.top_p
    units = np.diff(seen.unit_offset)                                              # (N,)
    owner = np.repeat(np.arange(n), units)                                         # (M,) each unit's video
    unit_p = seen.unit_query if cfg.mode == "query" else seen.unit_top
    unit_positive = untrimmed_decision(unit_p, keep[owner], held[owner])           # (M,)
    count = np.concatenate(([0], np.cumsum(unit_positive)))
    positive = count[seen.unit_offset[1:]] - count[seen.unit_offset[:-1]]
    return dict(status=status, label=np.where(keep, label, -1), score=np.where(decided, p, np.float32(np.nan)),
                threshold=np.where(decided, held, np.nan), positive_units=np.where(decided & (units > 0), positive, -1),
                unit_positive=unit_positive)


@dataclass
class FilterConfig:
    """Knobs of one run; a field with a help string is a flag (`get_args_parser`; 'cli_default': resolved in main)."""
    mode: str = field(default="query", metadata=dict(group="decision", choices=MODES, help="'query': keep when "
                      "p(query class) >= T, label = query; 'pseudo': keep when max p >= T, label = argmax (Sec. 3.4)"))
    threshold: float = field(default=0.5, metadata=dict(group="decision", help="T: keep when the deciding "
                             "probability >= the threshold of its class (--rule)"))
    rule: str = field(default="fixed", metadata=dict(group="decision", help="NAME or NAME:VALUE of filter.RULES: the "
                      "threshold each class is held to: 'fixed' = T for every class (the paper's); 'class-adaptive' = "
                      "T * (the class's mean deciding probability / the largest class mean), after FlexMatch"))
    cut_pieces: bool = field(default=False, metadata=dict(group="decision", help="--student 3d: cut kept videos "
                             "into re-encoded pieces OUT/raw/NAME/part_N.mp4 (MMAction2 RawVideoDataset lines) "
                             "instead of listing their positive windows by time"))
    student: str = field(default="2d", metadata=dict(group="scoring", choices=STUDENTS, help="untrimmed videos: 2d = "
                         "1-FPS frames scored by 2D teachers + snippet sidecar; 3d = 10-s windows scored as clips "
                         "(Sec. 3.5)"))
    clips: int | None = field(default=None, metadata=dict(group="scoring", type=int, help="video scoring: TSN "
                              f'segments / 3D clips per video, centre crop (default: {DEFAULT_CLIPS["tsn"]} / '
                              f'{DEFAULT_CLIPS["3d"]})'))
    fps: float = field(default=1.0, metadata=dict(group="scoring", help="--student 2d: rate of the scored frames"))
    piece_seconds: float = field(default=10.0, metadata=dict(group="scoring", help="--student 3d: window / piece "
                                 "length in seconds"))
    chunk_frames: int = field(default=64, metadata=dict(group="scoring", help="untrimmed videos: frames decoded at "
                              "once (full resolution: 64 frames of 1080p are 400 MB), whatever the video's length"))
    amp: str = field(default="none", metadata=dict(group="scoring", choices=AMPS, cli_default=None, help="teachers' "
                     "inference precision (torch.autocast; default: bf16 on CUDA GPUs that support it, else none)"))
    dedup_frames: int = field(default=3, metadata=dict(group="dedup", help="frames per video compared"))
    batch_size: int = field(default=16, metadata=dict(group="run", help="samples per block: one decoding batch and "
                            "one teacher forward (changing it between a crash and the rerun starts over)"))
    workers: int = field(default=2, metadata=dict(group="run", help="decoding DataLoader workers (per rank)"))
    device: str = field(default="cpu", metadata=dict(group="run", cli_default=None, help="cuda or cpu (default: cuda "
                        "when available; under torchrun cuda:LOCAL_RANK)"))
    progress: bool = True          # progress lines on stderr (--quiet turns them off)

    def __post_init__(self) -> None:
        if self.mode not in MODES or self.student not in STUDENTS or self.amp not in AMPS:
            raise ValueError(f"filter: --mode must be one of {MODES}, --student one of {STUDENTS} and --amp one of "
                             f"{AMPS}, got {self.mode!r}, {self.student!r}, {self.amp!r}")
        parse_rule(self.rule)
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"filter: --threshold must lie in [0, 1], got {self.threshold}")
        if min(self.batch_size, self.dedup_frames, self.clips or 1, self.chunk_frames) < 1 or self.workers < 0:
            raise ValueError("filter: --batch-size, --clips, --dedup-frames and --chunk-frames must be >= 1, "
                             "--workers >= 0")
        if not (self.fps > 0 and self.piece_seconds > 0):
            raise ValueError(f"filter: --fps and --piece-seconds must be > 0, got {self.fps}, {self.piece_seconds}")


# ----------------------------------------------------------------------------------------------------------------------
# 2. Teachers
# ----------------------------------------------------------------------------------------------------------------------

def load_teachers(paths: Sequence[str | Path], device: str = "cpu", arch: str | None = None,
                  classes: list[str] | None = None, classes_from: str = "the source") -> list[nn.Module]:
    """Checkpoints -> teachers in eval mode (the same class names, any order). train.py checkpoints carry their class
    names; other formats models.load_weights reads (MMAction2, e.g. the released OmniSource models; a bare state dict)
    need `arch` (--teacher-arch) and are read against the source's class names `classes`, in their order."""
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"--teacher {p}: no such file (give train.py checkpoints, e.g. "
                                    f"WORK_DIR/final.pth)")
    teachers = []
    for p in paths:
        try:
            if arch is None:
                t = models.from_checkpoint(p)
            else:
                t = models.build_model(arch, len(classes))
                models.load_weights(t, p)
                t.classes = list(classes)
        except Exception as err:   # unpickling, zip, key and shape errors all mean "not a checkpoint"
            hint = "" if arch else "; for an MMAction2 or other checkpoint give --teacher-arch"
            raise ValueError(f"--teacher {p}: not a usable checkpoint ({webscale.first_line(err)}){hint}") from None
        t.source = str(p)
        if arch is not None:
            print(f"--teacher {p}: no class names in the file; its {len(classes)} outputs are read against the "
                  f"class list of {classes_from}, in its order ({', '.join(classes[:3])}"
                  f"{', ...' if len(classes) > 3 else ''})", file=sys.stderr)
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
        if sorted(t.classes) != sorted(teachers[0].classes) or len(set(t.classes)) != len(t.classes):
            raise ValueError(f"--teacher {_name(t)}: its {len(t.classes)} class names differ from those of "
                             f"--teacher {_name(teachers[0])}; an ensemble needs the same classes (any order)")
    three_d = [_name(t) for t in teachers if t.spec.family != "tsn"]
    if three_d and ("image" in kinds or ("untrimmed" in kinds and student == "2d")):
        raise ValueError(f"--teacher {three_d[0]} is a 3D teacher but " + (
            "the source has web images: images are scored by 2D (TSN) teachers only (Sec. 3.4); give only TSN "
            "teachers" if "image" in kinds else "--student 2d scores untrimmed videos frame by frame at 1 FPS with 2D "
            "teachers (Sec. 3.5); give TSN teachers or --student 3d"))


def map_query_labels(samples: Samples, source_classes: list[str], teacher_classes: list[str],
                     source: str = "source", mode: str = "query", teacher: str = "the teacher") -> np.ndarray:
    """Each sample's query class as a teacher class (-1: none), matched by name (data.map_labels); no shared name is
    an error in query mode (pseudo mode needs no query class)."""
    probe = [webscale.Sample(Path(str(k)), k, "image") for k in range(len(source_classes))]   # one per class
    try:
        mapped, _ = data.map_labels(probe, source_classes, teacher_classes, f"--source {source}")
    except ValueError as err:
        if mode == "query":
            raise ValueError(f"{webscale.first_line(err)} (the classes of --teacher {teacher}); query mode matches "
                             f"class names (or use --mode pseudo)") from None
        mapped = []
    table = np.full(len(source_classes), -1, dtype=np.int64)
    for s in mapped:
        table[int(s.path.name)] = s.label
    return table[webscale.labels_of(samples)]


# ----------------------------------------------------------------------------------------------------------------------
# 3. Scoring (Sec. 3.4, 3.5): workers decode whole uint8 batches, teachers run per batch on the device
# ----------------------------------------------------------------------------------------------------------------------

class Scorer:
    """Ensemble probabilities of decoded batches. The scoring protocol is a cheap version of each teacher's test
    protocol: short side resized to round(crop * 256 / 224), one centre crop; an image is one frame (a TSN averages
    identical frames to that frame's output); a video, window or piece: 8 segments (TSN) or 3 clips (3D) (--clips).
    Teachers of one input (family, sampling, crop size) form a group: workers decode a sample once per group (`loads`)
    into uint8 views; models.predict normalises them and runs the teachers in cfg.amp, cfg.batch_size per forward. A
    teacher is any nn.Module with `.spec` (models.ArchSpec), `.classes` and `.source` (tests use stubs)."""

    def __init__(self, teachers: list[nn.Module], cfg: FilterConfig, single_frames: bool = False):
        self.teachers, self.cfg, self.device = teachers, cfg, torch.device(cfg.device)
        groups: dict[tuple, list[int]] = {}
        for t, teacher in enumerate(teachers):
            s = teacher.spec   # (family, clip_len, frame_interval, clips, crop); Sec. 3.5, 2D student: single frames
            key = (s.family, s.clip_len, s.frame_interval, cfg.clips or DEFAULT_CLIPS[s.family], s.crop_size)
            groups.setdefault((s.family, 1, 1, 1, s.crop_size) if single_frames else key, []).append(t)
        self.groups = list(groups.items())
        # every teacher's outputs in the first teacher's class order, matched by name (Fig. 6 averages classes)
        self.order = [torch.tensor([list(t.classes).index(c) for c in teachers[0].classes]) for t in teachers]
        # worker side, one per group: (sampling, uint8 centre-crop pipeline, short side); workers are forked (Linux)
        self.loads = [(data.Sampling(clip_len=k[1], frame_interval=k[2], num_clips=k[3]),
                       transforms.test_transform(k[0], k[4], "center", uint8=True), transforms.short_side_for(k[4]))
                      for k, _ in self.groups]

    def probs(self, views: list[torch.Tensor]) -> torch.Tensor:
        """views: one uint8 (U, V, C, T, H, W) per group -> (U, K) float32 ensemble probabilities (Fig. 6)."""
        n, per_teacher = len(views[0]), [[] for _ in self.teachers]
        with torch.inference_mode():
            for (_, members), v in zip(self.groups, views):
                for s in range(0, n, self.cfg.batch_size):
                    x = v[s:s + self.cfg.batch_size].to(self.device, non_blocking=True)
                    for t in members:
                        net = self.teachers[t]
                        p = models.predict(net, x, net.spec, self.cfg.amp)                       # (u, K)
                        per_teacher[t].append(p[:, self.order[t].to(p.device)])
        return ensemble([torch.cat(p) for p in per_teacher]).cpu()                          # (U, K)


def run_filter(samples: Samples, query: np.ndarray, teachers: list[nn.Module], cfg: FilterConfig, work: webscale.Work,
               prefix: Path, val_samples: Samples | None = None, extractor: FrameFeatures | None = None) -> dict | None:
    """This rank's share of Sec. 3.3-3.5's scoring: corrupted files and duplicates are recorded and left out, every
    other sample gets a record of what the teachers saw, appended to the work folder (resumable); nothing is decided
    here (`decide`). Returns the de-duplication info (None without val_samples)."""
    n, shard, routes = len(samples), work.shard, _route_codes(samples, cfg.student)
    active, dedup = np.ones(n, dtype=bool), dict(removed=np.zeros(0, np.int64), info=None)
    if val_samples is not None:   # Sec. 3.3: duplicates (and unreadable files found there) are left out of scoring
        dedup = deduplicate(samples, query, val_samples, extractor, cfg, work, prefix)
    active[dedup["removed"]] = False
    done = work.done(n)
    scorer = Scorer(teachers, cfg)
    for code in (ROUTES.index("images"), ROUTES.index("videos")):   # blocks of cfg.batch_size, one forward each
        blocks = webscale.blocks(np.flatnonzero(active & (routes == code)), cfg.batch_size)
        todo = [k for k in shard.mine(len(blocks)) if not done[blocks[k]].all()]
        for k, ids, _, views, errors in webscale.run_blocks(samples, blocks, partial(_load_clip, loads=scorer.loads),
                                                            cfg, f"scoring {ROUTES[code]}{shard.tag}", todo):
            records = [_record(i, samples[i], query[i], prefix, status="corrupt", error=m) for i, m in errors.items()]
            if len(ids):
                records += [_score_record(_record(i, samples[i], query[i], prefix), p, int(query[i]))
                            for i, p in zip(ids.tolist(), scorer.probs(views).numpy())]
            work.append("records", sorted(records, key=lambda r: r["i"]))
            work.scored += len(blocks[k])
    for route in ("one_fps", "windows", "raw"):   # Sec. 3.5: one video per block, in chunks of units
        todo = np.flatnonzero(active & (routes == ROUTES.index(route)))[shard.rank::shard.world]
        todo = todo[~done[todo]]
        if not len(todo):
            continue
        scorer = Scorer(teachers, cfg, single_frames=route == "one_fps")
        plan = partial(_unit_plan, samples=samples, route=route, fps=cfg.fps, seconds=cfg.piece_seconds,
                       loads=scorer.loads)
        size = max(1, cfg.chunk_frames // max(s.num_frames for s, _, _ in scorer.loads))   # cfg.chunk_frames frames
        what = {"one_fps": "untrimmed 1-FPS frames", "windows": f"untrimmed {cfg.piece_seconds:g}-s windows",
                "raw": "raw pieces"}[route]
        for i, chunks, error in webscale.run_chunks(todo, plan, partial(_load_units, loads=scorer.loads), size,
                                                    lambda c: (scorer.probs(c[0]), c[1]), cfg,
                                                    f"scoring {what}{shard.tag}"):
            if error is not None:
                record = _record(i, samples[i], query[i], prefix, status="corrupt", error=error)
            else:   # the video's most confident unit, each unit's p(query class) and p(argmax), where the units are
                video, unit_query, unit_top = untrimmed_scores(torch.cat([p for p, _ in chunks]), int(query[i]))
                record = _score_record(_record(i, samples[i], query[i], prefix), video, int(query[i]))
                record.update(units=len(unit_top), unit_query=None if unit_query is None else _floats(unit_query),
                              unit_top=_floats(unit_top))
                unit_info = [u for _, (u, _) in chunks]   # 1-FPS frames / frame ranges [first, stop)
                if route == "one_fps":
                    record["frames"] = np.concatenate(unit_info).tolist()
                elif route == "windows":
                    record.update(windows=np.concatenate(unit_info).tolist(), fps=chunks[0][1][1])
            work.append("records", [record])
            work.scored += 1
    webscale.barrier()
    return dedup["info"]


def _load_clip(sample: webscale.Sample, loads: Loads) -> list[torch.Tensor]:
    """Worker: an image (one frame) or a video (each group's test sampling) -> [uint8 (1, 1, C, T, h, w)] per group."""
    return [transform(_frames(sample, sampling, short_side))[None] for sampling, transform, short_side in loads]


def _frames(sample: webscale.Sample, sampling: data.Sampling, short_side: int) -> np.ndarray:
    """Worker: an image (1, H, W, 3), a large JPEG decoded reduced down to short_side (data.read_image), or a video's
    test-mode sampled frames (L, H, W, 3) (raw: its first positive piece; a count one too high is corrected)."""
    if sample.kind == "image":
        return webscale.decode(data.read_image, sample.path, short_side)[None]
    path = Path(sample.path) / webscale.PART_TMPL.format(sample.pos_clips[0] if sample.pos_clips else 0) \
        if sample.kind == "raw" else sample.path
    n = sample.num_frames or webscale.decode(data.count_frames, path)
    return webscale.decode(data.read_frames_lenient, path, n, lambda m: _test_indices(m, sampling), 1)[0]


def _unit_plan(i: int, samples: Samples, route: str, fps: float, seconds: float, loads: Loads) -> tuple[int, tuple]:
    """Worker: the units of untrimmed / raw video i -> (their number, (per load [(path, frame indices (T,), frame
    count)] per unit, the units' 1-FPS frames (F,), frame ranges (P, 2) or piece numbers (P,), the frame rate))."""
    sample = samples[i]
    path = Path(sample.path)
    if route == "raw":
        parts = [path / webscale.PART_TMPL.format(j) for j in range(sample.num_parts)]
        counts = [webscale.decode(data.count_frames, p) for p in parts]
        plan = [[(p, _test_indices(n, sampling), n) for p, n in zip(parts, counts)] for sampling, _, _ in loads]
        return len(parts), (plan, np.arange(len(parts)), None)
    n, rate = webscale.decode(data.count_frames, path), webscale.decode(data.video_fps, path)
    if route == "one_fps":
        idx = one_fps_indices(n, rate, fps)
        return len(idx), ([[(path, np.array([f]), n) for f in idx] for _ in loads], idx, rate)
    ranges = window_ranges(n, rate, seconds)
    plan = [[(path, a + _test_indices(b - a, sampling), n) for a, b in ranges] for sampling, _, _ in loads]
    return len(ranges), (plan, ranges, rate)


def _load_units(state: tuple, s: int, e: int, loads: Loads) -> tuple[list[torch.Tensor], tuple]:
    """Worker: units s:e of a video's plan -> (per load uint8 (u, 1, C, T, h, w), (their info, the frame rate)); one
    read per file (a container count one too high repeats the last frame, more is a truncated file)."""
    plan, info, rate = state
    views = []
    for units, (_, transform, _) in zip(plan, loads):
        out = []
        for (path, count), run in itertools.groupby(units[s:e], key=lambda u: (u[0], u[2])):
            idx = np.stack([u[1] for u in run])                                    # (u, T)
            frames, _ = webscale.decode(data.read_frames_lenient, path, count, lambda m: np.minimum(idx, m - 1).ravel(),
                                        1)                                          # (u * T, H, W, 3)
            x = transform(frames)                                                   # (1, C, u * T, h, w)
            out.append(x.reshape(x.shape[1], *idx.shape, *x.shape[-2:]).transpose(0, 1).unsqueeze(1))
        views.append(torch.cat(out).contiguous())
    return views, (info[s:e], rate)


def _test_indices(n: int, sampling: data.Sampling) -> np.ndarray:
    return data.sample_frames(n, sampling.clip_len, sampling.frame_interval, sampling.num_clips, test_mode=True)


# ----------------------------------------------------------------------------------------------------------------------
# 4. De-duplication against the target's val split (Sec. 3.3)
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class Whitening:
    """Sec. 3.3's PCA whitening x -> (x - mean) @ proj, L2-normalised, at most `dims` dims: proj = U diag(1 / sqrt(
    lambda + shrink * mean(lambda))) over the directions with lambda > 1e-6 max(lambda) (the shrinkage bounds the
    smallest ones when samples are fewer than dimensions), fitted from moments in float64 chunks (memory D x D)."""
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
        lam, vec = torch.linalg.eigh((outer - n * torch.outer(mean, mean)) / (n - 1))   # covariance (D, D), ascending
        lam, vec = lam.flip(0), vec.flip(1)
        keep = lam > 1e-6 * max(float(lam[0]), 1e-30)
        lam, vec = lam[keep], vec[:, keep]
        return cls(mean.numpy(), (vec * (1.0 / torch.sqrt(lam + shrink * lam.mean())))[:, :dims].numpy())

    def apply(self, feats: torch.Tensor) -> torch.Tensor:
        """On the features' device in float32: (N, D) -> whitened, reduced, L2-normalised (N, k)."""
        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=feats.device)
        proj = torch.as_tensor(self.proj, dtype=torch.float32, device=feats.device)
        return torch.nn.functional.normalize((feats.float() - mean) @ proj, dim=1, eps=1e-12)


def dedup_threshold(crop_feats: ArrayLike | torch.Tensor) -> float:
    """Sec. 3.3: the mean cosine similarity between different crops of the same frame; crop_feats (M, V, D): V >= 2
    crops of each of M frames (whitened or not), on any device."""
    f = crop_feats if torch.is_tensor(crop_feats) else torch.as_tensor(np.asarray(crop_feats, dtype=np.float32))
    if f.ndim != 3 or f.shape[1] < 2 or len(f) == 0:
        raise ValueError(f"filter.dedup_threshold: expected (M >= 1, V >= 2, D) crop features, got "
                         f"{tuple(f.shape)}")
    f = torch.nn.functional.normalize(f.float(), dim=2, eps=1e-12)
    iu = torch.triu_indices(f.shape[1], f.shape[1], offset=1)
    return float(torch.einsum("mvd,mwd->mvw", f, f)[:, iu[0], iu[1]].double().mean())   # (M, V, V) -> pairs


def best_match(web: torch.Tensor, val: torch.Tensor,
               chunk_bytes: int = 128 << 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Sec. 3.3 at scale: each web row's most similar val row, web (N, d) on any device x val (M, d) L2-normalised ->
    (cosine similarity (N,), val row (N,)) on val's device, a chunk of web rows ((rows, M) <= chunk_bytes) at a time."""
    rows = max(1, chunk_bytes // (4 * max(1, len(val))))
    sims = torch.empty(len(web), device=val.device)
    best = torch.empty(len(web), dtype=torch.long, device=val.device)
    for s in range(0, len(web), rows):
        w = torch.nn.functional.normalize(web[s:s + rows].to(val.device, torch.float32), dim=1, eps=1e-12)
        sims[s:s + rows], best[s:s + rows] = (w @ val.T).max(dim=1)                  # (rows, M) -> (rows,)
    return sims, best


def find_duplicates(web_feats: ArrayLike | torch.Tensor, val_feats: ArrayLike | torch.Tensor, threshold: float,
                    device: str | torch.device | None = None) -> list[tuple[int, int, float]]:
    """Sec. 3.3: web rows (N, D) whose best cosine similarity to a val row (M, D) (whitened: `Whitening.apply`) is
    above `threshold`, compared on `device` (default: the val features') -> [(web row, val row, similarity)]."""
    w, v = (f if torch.is_tensor(f) else torch.as_tensor(np.asarray(f, dtype=np.float32))
            for f in (web_feats, val_feats))
    if w.ndim != 2 or v.ndim != 2 or w.shape[1] != v.shape[1]:
        raise ValueError(f"filter.find_duplicates: expected (N, D) and (M, D), got {tuple(w.shape)}, "
                         f"{tuple(v.shape)}")
    sims, best = best_match(w, torch.nn.functional.normalize(v.to(device or v.device, torch.float32), dim=1, eps=1e-12))
    return [(int(i), int(best[i]), float(sims[i])) for i in torch.nonzero(sims > threshold).flatten().cpu()]


def deduplicate(samples: Samples, query: np.ndarray, val_samples: Samples, extractor: FrameFeatures,
                cfg: FilterConfig, work: webscale.Work, prefix: Path) -> dict:
    """Sec. 3.3 over this rank's blocks: samples with a frame too similar to a val frame (`find_duplicates` on
    whitened features) and unreadable samples are recorded and left out of scoring. The val side, computed once
    (WORK/dedup-val.pt): the whitening fitted on the val frames and a fixed web subset (extracted in shares by every
    rank), the crop threshold (`dedup_threshold`), the whitened val centre crops. Returns the indices removed by all
    ranks and the report's info."""
    n = len(samples)
    subset = np.arange(n) if n <= DEDUP_WHITENING else np.linspace(0, n - 1, DEDUP_WHITENING).round().astype(np.int64)

    def extract() -> dict:   # this rank's share of the val frames and of the whitening subset
        part = {}
        for name, subset_samples, crops, what in (("val", val_samples, DEDUP_CROPS, "val frames"), (
                "web", [samples[i] for i in subset], 1, "web frames for the whitening")):
            blocks = webscale.blocks(np.arange(len(subset_samples)), cfg.batch_size)
            got = [(own, f.cpu(), len(errs)) for _, own, f, errs in extract_features(
                subset_samples, blocks, work.shard.mine(len(blocks)), extractor, cfg, crops,
                f"de-duplication: {what}{work.shard.tag}")]
            part.update({name: [(f, torch.from_numpy(own)) for own, f, _ in got if len(own)],
                         f"{name}_errors": sum(e for *_, e in got)})
        return part

    def fit(parts: list[dict]) -> dict:   # rank 0
        val, owner = webscale.rows_in_sample_order([r for p in parts for r in p["val"]], (0, DEDUP_CROPS, 0))
        web, _ = webscale.rows_in_sample_order([r for p in parts for r in p["web"]], (0, 1, 0))
        if not len(val):
            raise ValueError(f"--dedup-against: none of the {len(val_samples)} val videos could be read")
        m, v, d = val.shape
        white = Whitening.fit(torch.cat([web[:, -1], val[:, -1]]))     # centre crops of the web subset and val
        crops = white.apply(val.reshape(m * v, d)).reshape(m, v, -1)
        threshold = dedup_threshold(crops)
        info = dict(extractor=extractor.name, crops=DEDUP_CROPS, frames_per_video=cfg.dedup_frames,
                    dims=int(white.proj.shape[1]), whitening_web_frames=len(web),
                    val_videos=len(set(owner.tolist())), val_unreadable=sum(int(p["val_errors"]) for p in parts),
                    val_frames=m, threshold=threshold)
        return dict(mean=torch.from_numpy(white.mean), proj=torch.from_numpy(white.proj), threshold=threshold,
                    val=crops[:, -1].contiguous(), owner=torch.from_numpy(owner), info=info)

    ref = work.share("dedup-val.pt", "dedup-feats", extract, fit)
    white, val_feats = Whitening(ref["mean"].numpy(), ref["proj"].numpy()), ref["val"].to(cfg.device)
    blocks, finished = webscale.blocks(np.arange(n), cfg.batch_size), work.latest("dedup", "b")
    todo = [k for k in work.shard.mine(len(blocks)) if k not in finished]
    val_base = Path(os.path.commonpath([str(Path(s.path).parent) for s in val_samples]))
    for k, owner, feats, errors in extract_features(samples, blocks, todo, extractor, cfg, 1,
                                                    f"de-duplication: web frames{work.shard.tag}"):
        records = [_record(i, samples[i], query[i], prefix, status="corrupt", error=m) for i, m in errors.items()]
        best = {}                                                    # sample -> (val sample, similarity) of its frames
        for row, j, sim in find_duplicates(white.apply(feats[:, 0]), val_feats, ref["threshold"]) if len(owner) else []:
            if sim > best.get(owner[row], (0, -np.inf))[1]:
                best[owner[row]] = (int(ref["owner"][j]), sim)
        for i, (j, sim) in sorted((int(i), m) for i, m in best.items()):
            records.append(_record(i, samples[i], query[i], prefix, status="duplicate", duplicate_of=webscale.rel_path(
                val_samples[j].path, val_base), val_index=j, similarity=round(sim, 4)))
        work.append("records", sorted(records, key=lambda r: r["i"]))
        work.append("dedup", [dict(b=k, removed=sorted(r["i"] for r in records))])
    webscale.barrier()
    finished = work.latest("dedup", "b")
    if len(finished) < len(blocks):
        raise RuntimeError(f"filter: de-duplication finished {len(finished)} of {len(blocks)} blocks in {work.folder}")
    return dict(removed=np.asarray([i for r in finished.values() for i in r["removed"]], dtype=np.int64),
                info=ref["info"])


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
    """Sec. 3.3's ImageNet ResNet-50 (--dedup-checkpoint), else the first 2D teacher's backbone (or the first's)."""
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
    if models.load_pretrained(net, checkpoints.load_state_dict_file(path)).num_loaded_weights == 0:
        raise ValueError(f"--dedup-checkpoint {path}: no ResNet-50 weights in it (torchvision layout expected)")
    return FrameFeatures(net, 224, f"resnet50 from {path}").to(device).eval()


def extract_features(samples: Samples, blocks: list[np.ndarray], todo: Sequence[int], extractor: FrameFeatures,
                     cfg: FilterConfig, crops: int, what: str) -> Iterator[tuple]:
    """Frame features of the blocks `todo` (an image: one frame, a video: cfg.dedup_frames; `crops` 1: the centre, 5:
    the corners and the centre) -> per block (block, owner (R,), features (R, crops, D) on the device, errors)."""
    load = partial(_dedup_views, num_frames=cfg.dedup_frames, crop=extractor.crop_size, crops=crops)
    for k, ids, counts, views, errors in webscale.run_blocks(samples, blocks, load, cfg, what, todo):
        feats = []
        with torch.inference_mode():   # cfg.batch_size frames a forward
            for s in range(0, len(views[0]) if len(ids) else 0, cfg.batch_size):
                x = views[0][s:s + cfg.batch_size].flatten(0, 1).to(cfg.device, non_blocking=True)   # (b*V, C, H, W)
                x = transforms.normalize(x[:, :, None])[:, :, 0]
                feats.append(extractor(x).float().reshape(len(x) // crops, crops, -1))
        yield k, np.repeat(ids, counts), torch.cat(feats) if feats else torch.zeros(0, crops, 0), errors


def _dedup_views(sample: webscale.Sample, num_frames: int, crop: int, crops: int) -> list[torch.Tensor]:
    """Worker: the frames of a sample for de-duplication -> [uint8 views (F, crops, C, H, W)]."""
    frames = _frames(sample, data.Sampling(1, 1, num_frames), transforms.short_side_for(crop))
    views = transforms.TenCrop(crop)(transforms.Resize(short_side=transforms.short_side_for(crop))(frames))[::2]
    views = views[-1:] if crops == 1 else views                       # UL, UR, LL, LR, centre
    return [transforms.ToUint8Tensor()(views).permute(2, 0, 1, 3, 4)]     # (F, crops, C, H, W)


# ----------------------------------------------------------------------------------------------------------------------
# 5. The run: score (or re-decide a finished run), decide, cut what is kept, write the decision's list
# ----------------------------------------------------------------------------------------------------------------------

def main(args: argparse.Namespace) -> dict | None:
    """Score (or re-decide a finished output of the same scoring settings), decide, write; rank 0 returns the report."""
    shard, device = webscale.distributed(args.device)
    knobs = {f.name: getattr(args, f.name) for f in fields(FilterConfig) if "help" in f.metadata}
    cfg = FilterConfig(**dict(knobs, device=device, amp=args.amp or models.default_amp(device),
                              progress=not args.quiet))
    data_root, source = Path(args.data_root), f"--source {args.source}"
    spec = data.resolve_dataset(data_root, args.source)
    samples, prefix = data.load_split(spec, args.split), spec.splits[args.split].prefix
    final = webscale.output_folder(data_root, args.out, spec.root)
    val = data.load_split(data.resolve_dataset(data_root, args.dedup_against), "val") if args.dedup_against else None
    work = webscale.Work(data_root / f".{args.out}.filter-work", shard)
    settings = scoring_settings(args, cfg, len(samples))
    earlier, start = webscale.finished_report(final, work, settings), time.time()
    say = partial(print, file=sys.stderr) if shard.rank == 0 else lambda *a: None
    if earlier is None:
        teachers = load_teachers(args.teacher, cfg.device, args.teacher_arch, spec.classes, source)
        check_teachers(teachers, webscale.kind_names(samples), cfg.student)
        classes = teachers[0].classes
        query = map_query_labels(samples, spec.classes, classes, args.source, cfg.mode, teachers[0].source)
        if (query < 0).any() and cfg.mode == "query":
            say(f"{source}: {int((query < 0).sum())} of {len(query)} samples have a query class that is not a "
                f"teacher class; left out (query mode matches class names)")
        extractor = build_extractor(teachers, args.dedup_checkpoint, cfg.device) if val is not None else None
        if extractor is not None and args.dedup_checkpoint is None:
            say(f"de-duplication features: {extractor.name}" + (
                ", fine on the generated demo" if args.dedup_against == synthetic.DEMO_TARGET else
                ", not the paper's ImageNet ResNet-50 (Sec. 3.3): pass --dedup-checkpoint with its weights"))
        work.claim(settings, f"--out {args.out}")
        try:
            info = run_filter(samples, query, teachers, cfg, work, prefix, val, extractor)
        finally:
            work.close()
        teachers_info, seen_dir = [dict(path=t.source, arch=t.arch) for t in teachers], work.folder
        if shard.rank == 0:
            webscale.gather_records(work, len(samples), webscale.rel_path(prefix, final), final, val)
        webscale.barrier()
    else:   # Sec. 3.4 again on what the teachers saw: the columns of the finished run
        classes, info, teachers_info = data.read_classes(final / "classes.txt"), earlier["dedup"], earlier["teachers"]
        seen_dir = final
        work.claim(dict(settings, records="scores.npz of the finished output"), f"--out {args.out}")
        say(f"filter: re-deciding the {len(samples)} samples of {final} from its columns (scores.npz), no teacher "
            f"is run")
    seen = webscale.Seen.load(seen_dir / "scores.npz")
    decision = decide(seen, len(classes), cfg)
    if cfg.cut_pieces:   # Sec. 3.5: this rank's kept videos cut into WORK/raw/NAME/part_N.mp4 (resumable)
        idx = np.flatnonzero(_route_codes(samples, cfg.student) == ROUTES.index("windows"))[shard.rank::shard.world]
        webscale.run_cuts(work, {i: (samples[i].path, _piece_name(samples, i, prefix)) for i in idx.tolist()},
                          idx[decision["status"][idx] == STATUSES.index("kept")].tolist(),
                          partial(data.cut_video, seconds=cfg.piece_seconds), cfg,
                          f"cutting kept untrimmed videos{shard.tag}")
    report = None
    if shard.rank == 0:
        extra = dict(dedup=info, source=args.source, split=args.split, out=args.out, data_root=str(data_root),
                     amp=cfg.amp, teachers=teachers_info, dedup_against=args.dedup_against, settings=settings,
                     run=dict(ranks=shard.world, scored=work.scored_now(), redecided=earlier is not None,
                              seconds=round(time.time() - start, 1)))
        report = write_outputs(args, cfg, samples, prefix, decision, seen, seen_dir, classes, work, final, extra)
    webscale.barrier()
    webscale.end_distributed()
    return report


def write_outputs(args: argparse.Namespace, cfg: FilterConfig, samples: Samples, prefix: Path, decision: dict,
                  seen: webscale.Seen, seen_dir: Path, classes: list[str], work: webscale.Work, final: Path,
                  extra: dict) -> dict:
    """Rank 0: the decision's list train.txt (+ sidecar), decision.npz, report.json and what the teachers saw,
    staged and renamed into DATA_ROOT/OUT (a failed --cut-pieces cut counts as corrupt); then the figures."""
    routes, cut = _route_codes(samples, cfg.student), work.latest("cut")   # --cut-pieces: a failed cut is corrupt
    videos = np.flatnonzero((decision["status"] == STATUSES.index("kept")) & (routes == ROUTES.index("windows")) &
                            cfg.cut_pieces).tolist()
    if any(i not in cut for i in videos):
        raise RuntimeError(f"filter: kept video {samples[next(i for i in videos if i not in cut)].path} was not "
                           f"cut; run the same command again")
    failed = [i for i in videos if "error" in cut[i]]
    decision = dict(decision, status=decision["status"].copy(), label=decision["label"].copy(),
                    cut_failed=np.array(failed, dtype=np.int64),
                    cut_error=np.array([f'cutting failed: {cut[i]["error"]}' for i in failed], dtype=str))
    decision["status"][failed], decision["label"][failed] = STATUSES.index("corrupt"), -1
    lines = partial(_list_lines, samples=samples, routes=routes, decision=decision, seen=seen, cfg=cfg,
                    prefix=prefix)
    with webscale.staged_output(final) as tmp:   # train.txt (+ sidecar), decision.npz, report.json, ...
        head = dict(mode=cfg.mode, threshold=cfg.threshold, rule=cfg.rule, student=cfg.student)
        report = webscale.write_output(tmp, seen_dir, seen, samples, prefix, webscale.rel_path(prefix, final),
                                       lines, decision, STATUSES, classes, head, extra, cfg.fps)
        webscale.move_folder(work.folder / "raw", tmp / "raw")   # --cut-pieces: the pieces of kept videos
    shutil.rmtree(work.folder)
    c = report["counts"]
    print(f'{args.source} -> {final}: kept {c["kept"]} of {c["total"]} (dropped {c["dropped"]}, corrupt '
          f'{c["corrupt"]}, duplicates {c["duplicate"]}, query class not a teacher class {c["unknown_query"]}) '
          f'at T={cfg.threshold} ({cfg.mode} mode, {cfg.rule} rule); scored {report["run"]["scored"]} in this '
          f'run on {extra["run"]["ranks"]} process(es)')
    if c["kept"] == 0:
        print(f"warning: nothing was kept; train.py --aux {args.out} needs samples (lower --threshold)",
              file=sys.stderr)
    if c["duplicate"] > 0.05 * c["total"]:   # the paper flags 0.1% (Sec. 3.3)
        print(f'warning: {c["duplicate"]} of {c["total"]} samples look like duplicates of {args.dedup_against} val '
              f'frames; the features ({report["dedup"]["extractor"]}) may not be crop-invariant enough: pass '
              f"--dedup-checkpoint with ImageNet ResNet-50 weights", file=sys.stderr)
    figures.filter_figures(final)           # contact sheet, Fig. 3 histogram, ... beside the outputs
    return report


def scoring_settings(args: argparse.Namespace, cfg: FilterConfig, num_samples: int) -> dict:
    """What the records depend on (not DECISION_KEYS, --workers, --device, --quiet or the rank count): a resumed run
    must share it with the crashed one; a finished run with these settings is re-decided."""
    config = {k: v for k, v in vars(cfg).items() if k not in ("workers", "device", "progress") + DECISION_KEYS}
    return dict({k: getattr(args, k) for k in ("source", "split", "teacher_arch", "dedup_against", "dedup_checkpoint")},
                teachers=[webscale.file_identity(p) for p in args.teacher], samples=num_samples, config=config)


def _list_lines(kept: np.ndarray, paths: list[bytes], samples: Samples, routes: np.ndarray,
                decision: dict[str, np.ndarray], seen: webscale.Seen, cfg: FilterConfig,
                prefix: Path) -> tuple[list[bytes], dict[str, webscale.FrameScores]]:
    """The list lines of kept samples (paths: their list paths), in order: 'PATH LABEL' (images, videos, 2D
    students' untrimmed videos, whose 1-FPS frames go to the sidecar, returned as {path: FrameScores}); raw pieces and
    --cut-pieces 'PATH LABEL NUM_PIECES POS_IDX...'; a 3D student's windows by time 'PATH LABEL START:END ...'."""
    labels = decision["label"][kept].tolist()
    lines, frame_scores = [b"%s %d\n" % (p, label) for p, label in zip(paths, labels)], {}
    unit_p = seen.unit_query if cfg.mode == "query" else seen.unit_top
    for k in np.flatnonzero(np.isin(routes[kept], [ROUTES.index(r) for r in ("one_fps", "windows", "raw")])).tolist():
        i = int(kept[k])
        a, b = seen.unit_offset[i], seen.unit_offset[i + 1]
        pos = np.flatnonzero(decision["unit_positive"][a:b])
        if routes[i] == ROUTES.index("one_fps"):
            frame_scores[paths[k].decode()] = webscale.FrameScores(
                tuple(seen.unit_frames[a:b, 0].tolist()), tuple(unit_p[a:b].tolist()), float(decision["threshold"][i]))
        elif routes[i] == ROUTES.index("raw") or cfg.cut_pieces:   # MMAction2 RawVideoDataset lines
            head = paths[k].decode() if routes[i] == ROUTES.index("raw") else f"raw/{_piece_name(samples, i, prefix)}"
            lines[k] = f"{head} {labels[k]} {b - a} {' '.join(map(str, pos.tolist()))}\n".encode()
        else:
            rate = seen.fps[i]
            lines[k] = (f"{paths[k].decode()} {labels[k]} " + " ".join(
                f"{x / rate:.3f}:{y / rate:.3f}" for x, y in seen.unit_frames[a:b][pos].tolist()) + "\n").encode()
    return lines, frame_scores


# ----------------------------------------------------------------------------------------------------------------------
# 6. Command line
# ----------------------------------------------------------------------------------------------------------------------

def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("omnisource filter", formatter_class=webscale.HelpFormatter, description="Teacher "
                                "filtering of a web source (OmniSource Sec. 3.3-3.5) into DATA_ROOT/OUT/ for train.py "
                                "--aux OUT; resumes after a crash, re-decides a finished OUT, splits under torchrun.")
    groups = {k: p.add_argument_group(t) for k, t in (
        ("source", "source, teachers and output"), ("decision", "decision (Sec. 3.4-3.5; another value re-decides "
         "without teachers)"), ("scoring", "scoring (Sec. 3.4-3.5)"),
        ("dedup", "de-duplication against the target's val split (Sec. 3.3)"), ("run", "run"))}
    g = groups["source"]
    g.add_argument("--data-root", default="data", help="folder holding the datasets (DATA_ROOT/NAME/ or the "
                   "paper's released layouts, see data.resolve_dataset)")
    g.add_argument("--source", required=True, help="web source to filter: a folder under --data-root with "
                   "classes.txt and train.txt (QUERY labels), or gg, ig-img, web-img, ig-vid, k200-raw, k400-untr")
    g.add_argument("--split", default="train", help="split of --source to filter")
    g.add_argument("--teacher", nargs="+", required=True, help="train.py checkpoint(s) of the teacher(s); "
                   "several are ensembled by averaging probabilities (Fig. 6); images need TSN teachers")
    g.add_argument("--teacher-arch", default=None, help="architecture of --teacher files that are not train.py "
                   "checkpoints (MMAction2 0.x / 1.x, bare state dicts), e.g. tsn_r50; they carry no class names: "
                   "their outputs are read against the source's class list, in its order")
    g.add_argument("--out", required=True, help="output dataset name: DATA_ROOT/OUT/ (replaced if it is an "
                   "earlier filter.py output); work folder DATA_ROOT/.OUT.filter-work/ until it is done")
    groups["dedup"].add_argument("--dedup-against", default=None, help="target dataset whose val split web samples "
                                 "are de-duplicated against; off without it")
    groups["dedup"].add_argument("--dedup-checkpoint", default=None, help="ImageNet ResNet-50 weights (torchvision "
                                 "state dict or a train.py checkpoint); without it: the teacher's backbone")
    for f in fields(FilterConfig):   # the run's knobs, declared once (FilterConfig)
        if "help" in f.metadata:
            kw = dict(action="store_true") if isinstance(f.default, bool) else dict(
                type=f.metadata.get("type", type(f.default)), choices=f.metadata.get("choices"),
                default=f.metadata.get("cli_default", f.default))
            groups[f.metadata["group"]].add_argument("--" + f.name.replace("_", "-"), help=f.metadata["help"], **kw)
    groups["run"].add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


# ----------------------------------------------------------------------------------------------------------------------
# 7. Helpers
# ----------------------------------------------------------------------------------------------------------------------

def _route_codes(samples: Samples, student: str) -> np.ndarray:   # index into ROUTES of every sample
    table = np.array([ROUTES.index({"image": "images", "untrimmed": "one_fps" if student == "2d" else "windows",
                                    "raw": "raw"}.get(k, "videos")) for k in webscale.KINDS], dtype=np.int8)
    return table[webscale.kinds_of(samples)]


def _record(i: int, sample: webscale.Sample, query: int, prefix: Path, **what: object) -> dict:
    """A record of the work folder: the sample ('i' first) and what was found (status="corrupt", error=...; ...)."""
    return dict(i=int(i), path=webscale.rel_path(sample.path, prefix), kind=sample.kind, query=int(query), **what)


def _score_record(record: dict, probs: ArrayLike, query: int) -> dict:
    """What the teachers saw, probs (K,): p(query class), the argmax and its probability, the top-5 (as float32)."""
    p = np.asarray(probs, dtype=np.float32)
    top = np.argsort(-np.nan_to_num(p, nan=-1.0), kind="stable")[:TOP_K]
    record.update(query_score=_floats(p[query]) if query >= 0 else None, top_class=int(top[0]),
                  top_score=_floats(p[top[0]]), top5=[[int(c), _floats(p[c])] for c in top])
    return record


def _floats(x: ArrayLike) -> float | list[float]:
    """float32 number(s) -> JSON floats in the shortest form that reads back as the same float32."""
    a = np.asarray(x, dtype=np.float32)
    return float(str(a)) if a.ndim == 0 else [float(str(v)) for v in a]


def _piece_name(samples: Samples, i: int, prefix: Path) -> str:
    """Folder of a video's pieces under raw/: its path under the data prefix without the extension."""
    rel = Path(webscale.rel_path(samples[i].path, prefix)).with_suffix("")
    return rel.as_posix() if ".." not in rel.parts else f"{i:06d}_{rel.name}"


def _name(teacher: nn.Module) -> str:
    return str(getattr(teacher, "source", None) or getattr(teacher, "arch", None) or type(teacher).__name__)


if __name__ == "__main__":
    webscale.run_command(main, get_args_parser())
