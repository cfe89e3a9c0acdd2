"""Teacher filtering of crawled web data (OmniSource Sec. 3.3-3.5): step 2 of the procedure in Table 1.

    python filter.py --data-root data --source synth-web-img --teacher work_dirs/tsn/best.pth --out web-img-f
    python filter.py --data-root data --source synth-web-vid --teacher tsn.pth slowonly.pth --out web-vid-f
    python filter.py --data-root data --source synth-web-untrimmed --teacher tsn.pth --student 2d --out untr-2d
    python filter.py --data-root data --source synth-web-untrimmed --teacher slowonly.pth --student 3d --out untr-3d
    python train.py --data-root data --target synth --aux web-img-f,untr-2d

What happens to a web source, in order:

  Sec. 3.3  Invalid or corrupted files (zero-byte, truncated, an HTML page named .jpg or .mp4, a file that
            disappears mid-run) are found while decoding, listed in report.json and left out; nothing crashes.
            De-duplication against the target's val split (--dedup-against): frame features of an
            ImageNet-style ResNet-50, PCA whitening fitted on the union of web and val features, cosine
            similarity; the threshold is the mean similarity between different crops of the same val frame;
            web samples above it are suspicious duplicates, removed and listed in duplicates.txt
            (`Whitening`, `dedup_threshold`, `find_duplicates`, `deduplicate`, `build_extractor`).
  Sec. 3.4  Teacher filtering (`keep_decision`): mode 'query' keeps a sample when the teacher's probability of
            its query class is >= T and labels it with that class; mode 'pseudo' keeps it when the top
            probability is >= T and labels it with the argmax (Sec. 3.2's PseudoLabel). Several teachers:
            their probabilities are averaged (`ensemble`; Fig. 6, better teachers give better students). Web
            images are scored by 2D (TSN) teachers only ("deflating 3D teachers" hurts); short videos by 2D
            or 3D teachers.
  Sec. 3.5  Untrimmed videos (Fig. 2 right). --student 2d: frames at 1 FPS scored one by one by 2D teachers,
            positive when p(label) >= T; a video with at least one positive frame is kept, its frame indices
            and scores go to the sidecar train_frame_scores.json, from which data.VideoDataset(snippet=...)
            builds the snippets of Table 14 (1 positive + 2 negative frames by default).
            --student 3d: videos cut into 10-s pieces (data.cut_video, re-encoded), each piece scored like a
            short video, videos with a positive piece kept as MMAction2 RawVideoDataset lines
            'raw/NAME LABEL NUM_PIECES POS_IDX...' over OUT/raw/NAME/part_N.mp4.
            A video's decision uses its most confident unit (frame / piece): `untrimmed_decision`.
  Fig. 3    report.json counts every class before and after filtering, and holds every sample's scores.

Outputs in DATA_ROOT/OUT/ (built in a hidden sibling folder and renamed into place at the end, so a crash or
Ctrl-C leaves any earlier output untouched): classes.txt (the teacher's classes), train.txt (paths relative to
DATA_ROOT/OUT/; `train.py --aux OUT` reads it), train_frame_scores.json (2D untrimmed), raw/ (3D pieces),
report.json and duplicates.txt.

Scoring protocol (a cheap version of each teacher's test protocol): resize the short side to
round(crop * 256 / 224), one centre crop of the teacher's crop size; images: one frame (a TSN's average
consensus over identical frames is that frame's output, so this equals the image repeated to the segment
count); videos and pieces: the teacher's test sampling with 8 segments (TSN) or 3 clips (3D) (--clips);
untrimmed frames: one frame each. Decoding runs in DataLoader workers, teachers in the main process in eval
and inference mode. Teachers are plain objects here: any nn.Module with `.spec` (models.ArchSpec) and
`.classes` works with `filter_source` and the scoring functions, so tests can use a stub.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

import data
import models
import train
import transforms

MODES = ('query', 'pseudo')
STUDENTS = ('2d', '3d')
DEFAULT_CLIPS = {'tsn': 8, '3d': 3}   # video scoring: TSN segments / 3D clips (cheap test protocol)
DEDUP_CROPS = 5                       # crops per val frame for the de-duplication threshold (Sec. 3.3)


@dataclass
class FilterConfig:
    """Knobs of one filtering run (the CLI flags of the same names)."""
    mode: str = 'query'            # 'query' | 'pseudo' (Sec. 3.4)
    threshold: float = 0.5         # T: kept when the deciding probability >= T
    student: str = '2d'            # untrimmed videos: '2d' 1-FPS frame scores, '3d' 10-s pieces (Sec. 3.5)
    clips: int | None = None       # video scoring: TSN segments / 3D clips (None: DEFAULT_CLIPS)
    fps: float = 1.0               # rate of the scored frames of untrimmed videos (2d)
    piece_seconds: float = 10.0    # piece length of untrimmed videos (3d)
    dedup_frames: int = 3          # frames per video compared in de-duplication
    batch_size: int = 16           # samples per DataLoader batch and units per teacher forward
    workers: int = 2               # DataLoader decoding workers
    device: str = 'cpu'
    progress: bool = True          # progress lines on stderr

    def __post_init__(self):
        if self.mode not in MODES or self.student not in STUDENTS:
            raise ValueError(f'filter: --mode must be one of {MODES} and --student one of {STUDENTS}, '
                             f'got {self.mode!r}, {self.student!r}')
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f'filter: --threshold must lie in [0, 1], got {self.threshold}')
        if min(self.batch_size, self.dedup_frames, self.clips or 1) < 1 or self.workers < 0:
            raise ValueError('filter: --batch-size, --clips and --dedup-frames must be >= 1, --workers >= 0')
        if not (self.fps > 0 and self.piece_seconds > 0):
            raise ValueError(f'filter: --fps and --piece-seconds must be > 0, got {self.fps}, {self.piece_seconds}')


# =====================================================================================================
# 1. Decisions (Sec. 3.4; Sec. 3.5 for untrimmed videos)
# =====================================================================================================

def ensemble(prob_list) -> np.ndarray:
    """Fig. 6: the average of several teachers' class probabilities, each (..., K) -> (..., K)."""
    arrays = [np.asarray(p, dtype=np.float64) for p in prob_list]
    if not arrays or any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError(f'filter.ensemble: expected >= 1 probability arrays of one shape, got '
                         f'{[a.shape for a in arrays]}')
    return np.mean(arrays, axis=0)


def keep_decision(probs, query_labels, mode: str = 'query', threshold: float = 0.5):
    """Sec. 3.4: which samples are kept and with which label.

    probs: (N, K) class probabilities; query_labels: (N,) the crawl query's class (-1: not a teacher class).
    'query':  keep when probs[i, q_i] >= T, label q_i (a sample with q_i = -1 is never kept);
    'pseudo': keep when max_k probs[i, k] >= T, label argmax_k (Sec. 3.2's PseudoLabel).
    Returns (keep bool (N,), labels int64 (N,)); dropped samples get the label they would have had.
    """
    probs = np.asarray(probs, dtype=np.float64)
    query = np.asarray(query_labels, dtype=np.int64)
    if probs.ndim != 2 or query.shape != (len(probs),):
        raise ValueError(f'filter.keep_decision: expected probs (N, K) and query_labels (N,), got '
                         f'{probs.shape} and {query.shape}')
    if mode == 'query':
        known = query >= 0
        score = np.where(known, probs[np.arange(len(probs)), np.maximum(query, 0)], -np.inf)
        return known & (score >= threshold), query.copy()
    if mode == 'pseudo':
        labels = np.nan_to_num(probs, nan=-1.0).argmax(axis=1).astype(np.int64)
        return probs.max(axis=1) >= threshold, labels
    raise ValueError(f'filter.keep_decision: mode must be one of {MODES}, got {mode!r}')


def untrimmed_decision(unit_probs, query: int, mode: str = 'query', threshold: float = 0.5):
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
        raise ValueError(f'filter.one_fps_indices: need num_frames >= 1 and rates > 0, got {num_frames}, '
                         f'{video_fps}, {fps}')
    step = video_fps / fps
    idx = np.floor((np.arange(int(num_frames / step + 0.5) + 1) + 0.5) * step).astype(np.int64)
    idx = idx[idx < num_frames]
    return idx if len(idx) else np.array([num_frames // 2], dtype=np.int64)


# =====================================================================================================
# 2. Teachers
# =====================================================================================================

def load_teachers(paths, device: str = 'cpu', arch: str | None = None, classes=None) -> list[nn.Module]:
    """Checkpoints -> teachers in eval mode on `device` (same classes required).

    train.py checkpoints describe themselves. Any other format models.load_weights reads (MMAction2 0.x / 1.x,
    e.g. the released OmniSource models, or a bare state dict) needs `arch` (--teacher-arch) and takes the
    source's class names `classes`.
    """
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f'--teacher {p}: no such file (give train.py checkpoints, e.g. '
                                    f'WORK_DIR/best.pth)')
    teachers = []
    for p in paths:
        try:
            t = models.from_checkpoint(p) if arch is None else _foreign_teacher(p, arch, classes)
        except Exception as err:   # unpickling, zip, key and shape errors all mean "not a checkpoint"
            hint = '' if arch else '; for an MMAction2 or other checkpoint give --teacher-arch'
            raise ValueError(f'--teacher {p}: not a usable checkpoint ({_first_line(err)}){hint}') from None
        t.source = str(p)
        teachers.append(t.to(device).eval())
    check_teachers(teachers)
    return teachers


def check_teachers(teachers, kinds=(), student: str = '2d') -> None:
    """One class list for all teachers; 2D teachers only for images and for 2D-student untrimmed frames."""
    if not teachers:
        raise ValueError('filter: at least one --teacher is needed')
    for t in teachers:
        if not hasattr(t, 'spec') or not hasattr(t, 'classes'):
            raise ValueError(f'filter: teacher {_name(t)} needs .spec (models.ArchSpec) and .classes')
        if list(t.classes) != list(teachers[0].classes):
            raise ValueError(f'--teacher {_name(t)}: its {len(t.classes)} classes differ from those of '
                             f'--teacher {_name(teachers[0])}; an ensemble needs one class list')
    three_d = [_name(t) for t in teachers if t.spec.family != 'tsn']
    if three_d and 'image' in kinds:
        raise ValueError(f'--teacher {three_d[0]} is a 3D teacher but the source has web images: images are '
                         f'scored by 2D (TSN) teachers only (Sec. 3.4); give only TSN teachers')
    if three_d and 'untrimmed' in kinds and student == '2d':
        raise ValueError(f'--teacher {three_d[0]} is a 3D teacher but --student 2d scores untrimmed videos '
                         f'frame by frame at 1 FPS with 2D teachers (Sec. 3.5); give TSN teachers or --student 3d')


# =====================================================================================================
# 3. Scoring (Sec. 3.4, 3.5): decode in DataLoader workers, teachers in the main process
# =====================================================================================================

def score_clips(samples, teachers, cfg: FilterConfig, what: str = 'samples'):
    """Ensemble class probabilities of images, short videos, frame folders or pieces.

    A list should hold one kind (an image and a video give inputs of different lengths).
    Returns (probs (N, K) float64 with NaN rows for samples that failed, errors {index: message}).
    """
    per_teacher, _, errors = _score_passes(samples, teachers, cfg, what, frames=False)
    probs = np.full((len(samples), len(teachers[0].classes)), np.nan)
    for i in range(len(samples)):
        if i not in errors:
            probs[i] = ensemble([pt[i][0] for pt in per_teacher])
    return probs, errors


def score_frames(samples, teachers, cfg: FilterConfig, what: str = 'untrimmed frames'):
    """Sec. 3.5 (2D student): the frames of each untrimmed video at cfg.fps, scored one by one.

    Returns ({index: (frame indices (F,), ensemble probs (F, K))}, errors {index: message}).
    """
    per_teacher, extras, errors = _score_passes(samples, teachers, cfg, what, frames=True)
    out = {i: (extras[i], ensemble([pt[i] for pt in per_teacher])) for i in range(len(samples))
           if i not in errors}
    return out, errors


def cut_pieces(samples, names, raw_dir: Path, cfg: FilterConfig):
    """Sec. 3.5 (3D student): cut each video into cfg.piece_seconds pieces raw_dir/NAME/part_N.mp4.

    Returns ({index: number of pieces}, errors {index: message}); a failed video leaves no pieces.
    """
    counts = {}

    def consume(ids, payloads):
        counts.update({i: n for i, n in zip(ids, payloads)})

    load = partial(_cut_one, raw_dir=Path(raw_dir), seconds=cfg.piece_seconds)
    items = list(zip(samples, names))
    errors = _run_loader(items, list(range(len(items))), load, consume, cfg, 'cutting untrimmed videos',
                         batch_size=1)
    return counts, errors


def _score_passes(samples, teachers, cfg, what, frames):
    """One decoding pass per group of teachers that take the same input; per-teacher {index: (U, K)}."""
    per_teacher, extras, errors = [dict() for _ in teachers], {}, {}
    for key, members in _teacher_groups(teachers, cfg, frames).items():
        load = _make_load(key, frames)

        def consume(ids, payloads, members=members):
            views = torch.cat([p[1] for p in payloads])                    # (sum U, V, C, T, H, W)
            bounds = np.cumsum([len(p[1]) for p in payloads])[:-1]
            for t in members:
                probs = _predict(teachers[t], views, cfg)                  # (sum U, K)
                per_teacher[t].update(zip(ids, np.split(probs, bounds)))
            extras.update((i, p[0]) for i, p in zip(ids, payloads))

        todo = [i for i in range(len(samples)) if i not in errors]
        names = '+'.join(_name(teachers[t]) for t in members)
        per_batch = 1 if frames else None   # all frames of a long video are one item: one video per batch
        errors.update(_run_loader([samples[i] for i in todo], todo, load, consume, cfg,
                                  f'scoring {what} with {names}', batch_size=per_batch))
    return per_teacher, extras, errors


def _teacher_groups(teachers, cfg, frames) -> dict[tuple, list[int]]:
    """Teachers that take the same input (family, sampling, crop size) share one decoding pass."""
    groups: dict[tuple, list[int]] = {}
    for t, teacher in enumerate(teachers):
        s = teacher.spec
        if frames:
            key = ('frames', cfg.fps, s.crop_size)
        else:
            key = ('clip', s.family, s.clip_len, s.frame_interval, cfg.clips or DEFAULT_CLIPS[s.family],
                   s.crop_size)
        groups.setdefault(key, []).append(t)
    return groups


def _make_load(key, frames):
    """The worker-side loader of a teacher group (a picklable partial)."""
    if frames:
        _, fps, crop = key
        return partial(_load_frames, fps=fps, transform=transforms.test_transform('tsn', crop, 'center'))
    _, family, clip_len, interval, clips, crop = key
    sampling = data.Sampling(clip_len=clip_len, frame_interval=interval, num_clips=clips)
    return partial(_load_clip, sampling=sampling, transform=transforms.test_transform(family, crop, 'center'))


def _predict(teacher, views, cfg) -> np.ndarray:
    """views (U, V, C, T, H, W) -> class probabilities (U, K), cfg.batch_size units per forward."""
    out = []
    with torch.inference_mode():
        for s in range(0, len(views), cfg.batch_size):
            chunk = views[s:s + cfg.batch_size].to(cfg.device, non_blocking=True)
            out.append(train.predict(teacher, chunk, teacher.spec).float().cpu())
    return torch.cat(out).double().numpy()


# =====================================================================================================
# 4. De-duplication against the target's val split (Sec. 3.3)
# =====================================================================================================

@dataclass
class Whitening:
    """PCA whitening x -> (x - mean) @ proj, then L2-normalised (for cosine similarity).

    proj = U diag(1 / sqrt(lambda + shrink * mean(lambda))) over the principal directions with
    lambda > 1e-6 * max(lambda). With fewer samples than dimensions the smallest directions would be
    amplified without bound; the shrinkage keeps them at most 1/sqrt(shrink) times the average.
    """
    mean: np.ndarray     # (D,)
    proj: np.ndarray     # (D, k)

    @classmethod
    def fit(cls, feats, shrink: float = 0.1, max_samples: int = 20000, seed: int = 0) -> Whitening:
        x = np.asarray(feats, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f'filter.Whitening.fit: expected >= 2 feature rows (N, D), got {x.shape}')
        if len(x) > max_samples:   # the covariance of a random subset is enough
            x = x[np.random.default_rng(seed).choice(len(x), max_samples, replace=False)]
        mean = x.mean(axis=0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        lam = s ** 2 / (len(x) - 1)
        keep = lam > 1e-6 * max(lam.max(), 1e-30)
        lam, vt = lam[keep], vt[keep]
        return cls(mean, vt.T / np.sqrt(lam + shrink * lam.mean()))

    def __call__(self, feats) -> np.ndarray:
        return _l2(((np.asarray(feats, dtype=np.float64) - self.mean) @ self.proj))


def dedup_threshold(crop_feats) -> float:
    """Sec. 3.3: the mean cosine similarity between different crops of the same frame.

    crop_feats: (M, V, D) features of V >= 2 crops of each of M frames (whitened or not).
    """
    f = np.asarray(crop_feats, dtype=np.float64)
    if f.ndim != 3 or f.shape[1] < 2 or len(f) == 0:
        raise ValueError(f'filter.dedup_threshold: expected (M >= 1, V >= 2, D) crop features, got {f.shape}')
    f = _l2(f)
    sims = np.einsum('mvd,mwd->mvw', f, f)                         # (M, V, V)
    iu = np.triu_indices(f.shape[1], k=1)
    return float(sims[:, iu[0], iu[1]].mean())


def find_duplicates(web_feats, val_feats, threshold: float, chunk: int = 4096):
    """Sec. 3.3: web rows whose best cosine similarity to any val row is above `threshold`.

    web_feats (N, D), val_feats (M, D) (whiten them first). Returns [(web row, val row, similarity)].
    """
    w, v = _l2(np.asarray(web_feats, np.float64)), _l2(np.asarray(val_feats, np.float64))
    if w.ndim != 2 or v.ndim != 2 or w.shape[1] != v.shape[1]:
        raise ValueError(f'filter.find_duplicates: expected (N, D) and (M, D), got {w.shape}, {v.shape}')
    found = []
    for s in range(0, len(w), chunk):
        sims = w[s:s + chunk] @ v.T                                   # (chunk, M)
        best = sims.argmax(axis=1)
        top = sims[np.arange(len(sims)), best]
        found += [(s + int(i), int(best[i]), float(top[i])) for i in np.flatnonzero(top > threshold)]
    return found


class FrameFeatures(nn.Module):
    """Frame features (N, C, H, W) -> (N, D) of a 2D ResNet, a TSN's backbone or a 3D net on 1-frame clips."""

    def __init__(self, net: nn.Module, crop_size: int, name: str):
        super().__init__()
        self.net, self.crop_size, self.name = net, crop_size, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.net, models.ResNet):
            return self.net.features(x)
        if hasattr(self.net, 'backbone'):
            return self.net.backbone.features(x)
        return self.net.features(x[:, :, None])                     # (N, C, 1, H, W)


def build_extractor(teachers, checkpoint: str | None = None, device: str = 'cpu') -> FrameFeatures:
    """Sec. 3.3's ImageNet ResNet-50 (`--dedup-checkpoint`: torchvision state dict or our checkpoint).

    Without a checkpoint (nothing can be downloaded here) the first 2D teacher's backbone (else the first
    teacher) gives the features: trained on the target, it is a reasonable stand-in.
    """
    if checkpoint is None:
        t = next((t for t in teachers if t.spec.family == 'tsn'), teachers[0])
        return FrameFeatures(t, t.spec.crop_size, f'teacher {_name(t)} backbone').to(device).eval()
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f'--dedup-checkpoint {path}: no such file')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:   # pickle / zip errors of many kinds
        raise ValueError(f'--dedup-checkpoint {path}: not a torch checkpoint ({type(err).__name__})') from None
    if isinstance(state, dict) and {'arch', 'model', 'classes'} <= set(state):
        net = models.from_checkpoint(path)
        return FrameFeatures(net, net.spec.crop_size, f'{net.arch} from {path}').to(device).eval()
    net = models.resnet50(num_classes=None)
    report = models.load_pretrained(net, models.load_state_dict_file(path))
    if report.num_loaded_weights == 0:
        raise ValueError(f'--dedup-checkpoint {path}: no ResNet-50 weights in it (torchvision layout expected)')
    return FrameFeatures(net, 224, f'resnet50 from {path}').to(device).eval()


def extract_features(samples, extractor: FrameFeatures, cfg: FilterConfig, crops: int = 1, what='frames'):
    """Frame features for de-duplication: an image is one frame, a video cfg.dedup_frames frames.

    crops=1: the centre crop; crops=5: the four corners and the centre (centre last).
    Returns ({index: (F, crops, D) float64}, errors {index: message}).
    """
    feats = {}

    def consume(ids, payloads):
        views = torch.cat([p[1] for p in payloads])                  # (sum F, crops, C, H, W)
        n, v = views.shape[:2]
        with torch.inference_mode():
            out = torch.cat([extractor(views[s:s + cfg.batch_size].flatten(0, 1).to(cfg.device)).cpu()
                             for s in range(0, n, cfg.batch_size)])
        out = out.double().numpy().reshape(n, v, -1)
        feats.update(zip(ids, np.split(out, np.cumsum([len(p[1]) for p in payloads])[:-1])))

    load = partial(_load_dedup_frames, num_frames=cfg.dedup_frames, crop=extractor.crop_size, crops=crops)
    errors = _run_loader(samples, list(range(len(samples))), load, consume, cfg, what)
    return feats, errors


def deduplicate(samples, val_samples, extractor: FrameFeatures, cfg: FilterConfig):
    """Sec. 3.3: web samples with a frame too similar to a val frame (whitened cosine > crop threshold).

    Returns (duplicates {web index: (val index, similarity)}, info dict for the report, web read errors).
    """
    web, errors = extract_features(samples, extractor, cfg, crops=1, what='de-duplication: web frames')
    val, val_errors = extract_features(val_samples, extractor, cfg, crops=DEDUP_CROPS,
                                       what='de-duplication: val frames')
    if not val:
        raise ValueError(f'--dedup-against: none of the {len(val_samples)} val videos could be read')
    info = dict(extractor=extractor.name, crops=DEDUP_CROPS, frames_per_video=cfg.dedup_frames,
                val_videos=len(val), val_unreadable=len(val_errors), web_frames=0, val_frames=0)
    if not web:
        return {}, dict(info, threshold=None), errors
    web_ids, val_ids = sorted(web), sorted(val)
    web_rows = np.concatenate([web[i][:, 0] for i in web_ids])                   # (N, D) centre crops
    web_owner = np.concatenate([[i] * len(web[i]) for i in web_ids])
    val_crops = np.concatenate([val[i] for i in val_ids])                        # (M, 5, D)
    val_owner = np.concatenate([[i] * len(val[i]) for i in val_ids])
    # 1. whitening fitted on the union of web and val frame features
    white = Whitening.fit(np.concatenate([web_rows, val_crops[:, -1]]))
    m, v, d = val_crops.shape
    # 2. threshold: mean similarity between different crops of the same val frame
    threshold = dedup_threshold(white(val_crops.reshape(m * v, d)).reshape(m, v, -1))
    # 3. every web frame against every val frame (centre crops); a sample's best frame decides
    dups = {}
    for row, col, sim in find_duplicates(white(web_rows), white(val_crops[:, -1]), threshold):
        i = int(web_owner[row])
        if i not in dups or sim > dups[i][1]:
            dups[i] = (int(val_owner[col]), sim)
    return dups, dict(info, threshold=threshold, web_frames=len(web_rows), val_frames=m), errors


# =====================================================================================================
# 5. The whole filter on one source
# =====================================================================================================

@dataclass
class FilterResult:
    """What `filter_source` decided: the output list, its sidecar, the report and duplicates.txt lines."""
    lines: list                # train.txt lines, in source order
    frame_scores: dict         # list path -> data.FrameScores (2D untrimmed videos)
    report: dict
    duplicates: list           # duplicates.txt lines


def filter_source(samples, query_labels, teachers, cfg: FilterConfig, out_dir, list_dir=None, prefix=None,
                  val_samples=None, extractor=None) -> FilterResult:
    """Sec. 3.3-3.5 on one web source: drop corrupt files and duplicates, score, keep, label.

    samples: data.Sample list; query_labels (N,): each sample's query class as a TEACHER class index (-1:
    none); teachers: nn.Modules with .spec and .classes; out_dir: where 3D pieces go (out_dir/raw/);
    list_dir: the folder the output list's paths are relative to (default out_dir; filter.py's main
    stages its output in a temporary folder and passes the final one); prefix: the source's data prefix
    (report paths and piece names are relative to it; default the samples' common folder);
    val_samples + extractor: de-duplicate against these (Sec. 3.3).
    """
    out_dir = Path(out_dir)
    list_dir = Path(list_dir) if list_dir is not None else out_dir
    prefix = Path(prefix) if prefix is not None else _common_folder(samples)
    query = np.asarray(query_labels, dtype=np.int64)
    if len(query) != len(samples) or not samples:
        raise ValueError(f'filter: expected one query label per sample (>= 1), got {len(query)} for {len(samples)}')
    check_teachers(teachers, {s.kind for s in samples}, cfg.student)
    records = [dict(path=_rel(s.path, prefix), kind=s.kind, query=int(q), status='pending')
               for s, q in zip(samples, query)]
    dedup_info, dup_lines = None, []
    if val_samples is not None:
        dups, dedup_info, errors = deduplicate(samples, val_samples, extractor or build_extractor(teachers),
                                               cfg)
        _mark_corrupt(records, errors)
        dup_lines = _mark_duplicates(records, dups, samples, val_samples, list_dir)
    by_kind: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        if records[i]['status'] == 'pending':
            by_kind.setdefault(_route(s.kind, cfg.student), []).append(i)
    lines, sidecar = {}, {}
    ctx = dict(samples=samples, query=query, teachers=teachers, cfg=cfg, records=records, list_dir=list_dir)
    for kind in ('images', 'videos'):
        if kind in by_kind:
            lines.update(_filter_clips(by_kind[kind], kind, **ctx))
    if 'frames' in by_kind:
        lines.update(_filter_frames(by_kind['frames'], sidecar, **ctx))
    if 'pieces' in by_kind:
        lines.update(_filter_pieces(by_kind['pieces'], out_dir, prefix, **ctx))
    report = make_report(records, teachers[0].classes, cfg, dedup_info)
    return FilterResult([lines[i] for i in sorted(lines)], sidecar, report, dup_lines)


def _filter_clips(idx, kind, samples, query, teachers, cfg, records, list_dir):
    """Images or short videos: one score vector each, `keep_decision`."""
    probs, errors = score_clips([samples[i] for i in idx], teachers, cfg, kind)
    keep, labels = keep_decision(probs, query[idx], cfg.mode, cfg.threshold)
    lines = {}
    for k, i in enumerate(idx):
        if k in errors:
            records[i].update(status='corrupt', error=errors[k])
            continue
        _score_record(records[i], probs[k], int(query[i]), cfg)
        records[i].update(status='kept' if keep[k] else 'dropped', label=int(labels[k]) if keep[k] else None)
        if keep[k]:
            lines[i] = f'{_rel(samples[i].path, list_dir)} {labels[k]}'
    return lines


def _filter_frames(idx, sidecar, samples, query, teachers, cfg, records, list_dir):
    """Sec. 3.5, 2D student: 1-FPS frame scores; kept videos go to the list and the sidecar."""
    scored, errors = score_frames([samples[i] for i in idx], teachers, cfg)
    lines = {}
    for k, i in enumerate(idx):
        if k in errors:
            records[i].update(status='corrupt', error=errors[k])
            continue
        frames, probs = scored[k]
        keep, label, positive = untrimmed_decision(probs, int(query[i]), cfg.mode, cfg.threshold)
        _score_record(records[i], probs.max(axis=0), int(query[i]), cfg)
        records[i].update(status='kept' if keep else 'dropped', label=label if keep else None,
                          frames=[int(f) for f in frames], positive_units=int(positive.sum()),
                          unit_scores=[round(float(p), 4) for p in probs[:, max(label, 0)]])
        if keep:
            key = _rel(samples[i].path, list_dir)
            lines[i] = f'{key} {label}'
            sidecar[key] = data.FrameScores(tuple(int(f) for f in frames),
                                            tuple(float(p) for p in probs[:, label]), cfg.threshold)
    return lines


def _filter_pieces(idx, out_dir, prefix, samples, query, teachers, cfg, records, list_dir):
    """Sec. 3.5, 3D student: cut into pieces (raw samples are cut already), score, keep positive pieces."""
    cut = [i for i in idx if samples[i].kind != 'raw']
    names = {i: _piece_name(samples[i].path, prefix, i) for i in cut}
    counts, errors = cut_pieces([samples[i] for i in cut], [names[i] for i in cut], out_dir / 'raw', cfg)
    _mark_corrupt(records, {cut[k]: e for k, e in errors.items()})
    dirs = {i: out_dir / 'raw' / names[i] for k, i in enumerate(cut) if k in counts}
    counts = {cut[k]: n for k, n in counts.items()}
    for i in idx:
        if samples[i].kind == 'raw':
            dirs[i], counts[i] = samples[i].path, samples[i].num_parts
    videos = sorted(dirs)
    pieces = [data.Sample(dirs[i] / data.PART_TMPL.format(j), samples[i].label, 'video')
              for i in videos for j in range(counts[i])]
    if not pieces:
        return {}
    probs, errors = score_clips(pieces, teachers, cfg, '10-s pieces')
    owner = np.repeat(videos, [counts[i] for i in videos])
    lines = {}
    for i in videos:
        rows = np.flatnonzero(owner == i)
        bad = [errors[r] for r in rows if r in errors]
        keep = False
        if bad:
            records[i].update(status='corrupt', error=f'piece unreadable: {bad[0]}')
        else:
            keep, label, positive = untrimmed_decision(probs[rows], int(query[i]), cfg.mode, cfg.threshold)
            _score_record(records[i], probs[rows].max(axis=0), int(query[i]), cfg)
            records[i].update(status='kept' if keep else 'dropped', label=label if keep else None,
                              positive_units=int(positive.sum()),
                              unit_scores=[round(float(p), 4) for p in probs[rows, max(label, 0)]])
        if keep:   # cut pieces live in OUT/raw/; pieces of a raw source stay where they are
            where = _rel(dirs[i], list_dir if samples[i].kind == 'raw' else out_dir)
            lines[i] = f'{where} {label} {len(rows)} ' + ' '.join(str(int(j)) for j in np.flatnonzero(positive))
        elif samples[i].kind != 'raw':
            shutil.rmtree(dirs[i], ignore_errors=True)   # pieces of dropped videos are not kept
    _remove_empty_folders(out_dir / 'raw')
    return lines


def make_report(records, classes, cfg: FilterConfig, dedup_info=None) -> dict:
    """report.json's body: counts overall and per class before / after filtering (Fig. 3), every sample."""
    k = len(classes)
    per = {name: np.zeros(k, dtype=np.int64) for name in ('before', 'corrupt', 'duplicate', 'kept', 'after')}
    status = {}
    for r in records:
        status[r['status']] = status.get(r['status'], 0) + 1
        if r['query'] >= 0:
            per['before'][r['query']] += 1
            if r['status'] in ('corrupt', 'duplicate', 'kept'):
                per[r['status']][r['query']] += 1
        if r['status'] == 'kept':
            per['after'][r['label']] += 1
    per_class = [dict(index=c, name=classes[c], before=int(per['before'][c]), kept=int(per['kept'][c]),
                      dropped=int(per['before'][c] - per['kept'][c]), corrupt=int(per['corrupt'][c]),
                      duplicate=int(per['duplicate'][c]), after=int(per['after'][c])) for c in range(k)]
    counts = dict(total=len(records), kept=status.get('kept', 0), dropped=status.get('dropped', 0),
                  corrupt=status.get('corrupt', 0), duplicate=status.get('duplicate', 0),
                  unknown_query=sum(r['query'] < 0 for r in records))
    return dict(mode=cfg.mode, threshold=cfg.threshold, student=cfg.student, classes=list(classes),
                counts=counts, per_class=per_class,
                about_per_class='before: samples crawled for the class (query label); kept / dropped / corrupt / '
                                'duplicate: of those; after: kept samples labelled with the class (= kept in '
                                'query mode; pseudo-labels in pseudo mode)',
                corrupt=[dict(path=r['path'], error=r['error']) for r in records if r['status'] == 'corrupt'],
                duplicates=[dict(path=r['path'], val=r['duplicate_of'], similarity=r['similarity'])
                            for r in records if r['status'] == 'duplicate'],
                dedup=dedup_info, samples=records)


# =====================================================================================================
# 6. Outputs, written atomically
# =====================================================================================================

def write_output(folder, result: FilterResult, classes) -> None:
    """classes.txt, train.txt (+ train_frame_scores.json), report.json, duplicates.txt into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / 'classes.txt').write_text(''.join(f'{c}\n' for c in classes))
    (folder / 'train.txt').write_text(''.join(f'{line}\n' for line in result.lines))
    if result.frame_scores:
        data.write_frame_scores(data.frame_scores_path(folder / 'train.txt'), result.frame_scores)
    (folder / 'report.json').write_text(json.dumps(result.report, indent=1) + '\n')
    head = ('# web sample (relative to this folder)  val sample it duplicates  whitened cosine similarity'
            if result.report.get('dedup') else '# de-duplication was not run (no --dedup-against)')
    (folder / 'duplicates.txt').write_text('\n'.join([head] + result.duplicates) + '\n')


@contextlib.contextmanager
def staged_output(final):
    """Yield a hidden temporary sibling of `final`; on success it replaces `final` by renames, on error
    (or Ctrl-C) it is removed and `final` is left as it was."""
    final = Path(final)
    tmp = final.parent / f'.{final.name}.tmp-{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.parent / f'.{final.name}.old-{os.getpid()}'
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


# =====================================================================================================
# 7. Command line
# =====================================================================================================

def get_args_parser():
    p = argparse.ArgumentParser('omnisource filter', formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description='Teacher filtering of a web source (OmniSource Sec. 3.3-3.5): '
                                            'writes DATA_ROOT/OUT/ for train.py --aux OUT.')
    p.add_argument('--data-root', default='data', help='folder holding the datasets (DATA_ROOT/NAME/ or the '
                   "paper's released layouts, see data.resolve_dataset)")
    p.add_argument('--source', required=True, help='web source to filter: a folder under --data-root with '
                   'classes.txt and train.txt (QUERY labels), or gg, ig-img, ig-vid, k200-raw, k400-untr')
    p.add_argument('--split', default='train', help='split of --source to filter')
    p.add_argument('--teacher', nargs='+', required=True, help='train.py checkpoint(s) of the teacher(s); '
                   'several are ensembled by averaging probabilities (Fig. 6); images need TSN teachers')
    p.add_argument('--teacher-arch', default=None, help='architecture of --teacher files that are not train.py '
                   'checkpoints (MMAction2 0.x / 1.x, bare state dicts), e.g. tsn_r50; their classes are the '
                   "source's classes.txt")
    p.add_argument('--out', required=True, help='output dataset name: DATA_ROOT/OUT/ (replaced if it is an '
                   'earlier filter.py output)')
    p.add_argument('--threshold', type=float, default=0.5, help='T: keep when the deciding probability >= T')
    p.add_argument('--mode', choices=MODES, default='query', help="'query': keep when p(query class) >= T, "
                   "label = query; 'pseudo': keep when max p >= T, label = argmax (Sec. 3.4)")
    p.add_argument('--student', choices=STUDENTS, default='2d', help='untrimmed videos: 2d = 1-FPS frames '
                   'scored by 2D teachers + snippet sidecar; 3d = 10-s pieces scored as clips (Sec. 3.5)')
    p.add_argument('--clips', type=int, default=None, help='video scoring: TSN segments / 3D clips per '
                   f'video, centre crop (default {DEFAULT_CLIPS["tsn"]} / {DEFAULT_CLIPS["3d"]})')
    p.add_argument('--fps', type=float, default=1.0, help='--student 2d: rate of the scored frames')
    p.add_argument('--piece-seconds', type=float, default=10.0, help='--student 3d: piece length in seconds')
    p.add_argument('--dedup-against', default=None, help="target dataset whose val split web samples are "
                   'de-duplicated against (Sec. 3.3); off when not given')
    p.add_argument('--dedup-checkpoint', default=None, help='ImageNet ResNet-50 weights for de-duplication '
                   "(torchvision state dict or a train.py checkpoint); default: the teacher's backbone")
    p.add_argument('--dedup-frames', type=int, default=3, help='frames per video compared in de-duplication')
    p.add_argument('--batch-size', type=int, default=16, help='samples per decoding batch and per teacher forward')
    p.add_argument('--workers', type=int, default=2, help='DataLoader worker processes that decode')
    p.add_argument('--device', default=None, help='cuda or cpu (default: cuda when available)')
    p.add_argument('--quiet', action='store_true', help='no progress lines on stderr')
    return p


def main(args) -> FilterResult:
    cfg = FilterConfig(mode=args.mode, threshold=args.threshold, student=args.student, clips=args.clips,
                       fps=args.fps, piece_seconds=args.piece_seconds, dedup_frames=args.dedup_frames,
                       batch_size=args.batch_size, workers=args.workers, progress=not args.quiet,
                       device=args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    data_root = Path(args.data_root)
    spec = data.resolve_dataset(data_root, args.source)
    samples = data.load_split(spec, args.split)
    final = _check_out(data_root, args.out, spec)
    teachers = load_teachers(args.teacher, cfg.device, args.teacher_arch, spec.classes)
    check_teachers(teachers, {s.kind for s in samples}, cfg.student)
    query = map_query_labels(samples, spec.classes, teachers[0].classes, args.source, cfg.mode)
    val = extractor = None
    if args.dedup_against:
        val = data.load_split(data.resolve_dataset(data_root, args.dedup_against), 'val')
        extractor = build_extractor(teachers, args.dedup_checkpoint, cfg.device)
    start = time.time()
    with staged_output(final) as tmp:
        result = filter_source(samples, query, teachers, cfg, tmp, list_dir=final,
                               prefix=spec.splits[args.split].prefix, val_samples=val, extractor=extractor)
        result.report.update(source=args.source, split=args.split, out=args.out, data_root=str(data_root),
                             teachers=[dict(path=t.source, arch=t.arch) for t in teachers],
                             dedup_against=args.dedup_against, seconds=round(time.time() - start, 1))
        write_output(tmp, result, teachers[0].classes)
    c = result.report['counts']
    print(f'{args.source} -> {final}: kept {c["kept"]} of {c["total"]} (dropped {c["dropped"]}, corrupt '
          f'{c["corrupt"]}, duplicates {c["duplicate"]}) at T={cfg.threshold} ({cfg.mode} mode)')
    if c['kept'] == 0:
        print(f'warning: nothing was kept; train.py --aux {args.out} needs samples (lower --threshold)',
              file=sys.stderr)
    if c['duplicate'] > 0.05 * c['total']:   # the paper flags 0.1% (Sec. 3.3)
        print(f'warning: {c["duplicate"]} of {c["total"]} samples look like duplicates of {args.dedup_against} '
              f'val frames; the features ({result.report["dedup"]["extractor"]}) may not be crop-invariant '
              f'enough: pass --dedup-checkpoint with ImageNet ResNet-50 weights', file=sys.stderr)
    return result


def map_query_labels(samples, source_classes, teacher_classes, source: str = 'source',
                     mode: str = 'query') -> np.ndarray:
    """Each sample's query class as a teacher class index, matched by class name (-1: not a teacher class)."""
    index = {name: k for k, name in enumerate(teacher_classes)}
    table = np.array([index.get(name, -1) for name in source_classes], dtype=np.int64)
    if mode == 'query' and (table < 0).all():
        raise ValueError(f'--source {source}: none of its classes ({", ".join(source_classes[:3])}, ...) is a '
                         f'teacher class; query mode matches class names (or use --mode pseudo)')
    return table[[s.label for s in samples]]


def cli(argv=None):
    args = get_args_parser().parse_args(argv)
    try:
        main(args)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f'error: {_first_line(err) or type(err).__name__}')


# =====================================================================================================
# Helpers
# =====================================================================================================

class _Items(torch.utils.data.Dataset):
    """Items decoded in DataLoader workers: (k, payload, None) or, when loading fails, (k, None, message)."""

    def __init__(self, items, load):
        self.items, self.load = items, load

    def __len__(self):
        return len(self.items)

    def __getitem__(self, k):
        try:
            return k, self.load(self.items[k]), None
        except Exception as err:   # PyAV, Pillow and the OS raise many unrelated types: all mean "unreadable"
            return k, None, f'{type(err).__name__}: {_first_line(err)}'


def _run_loader(items, ids, load, consume, cfg, what, batch_size=None) -> dict:
    """Decode `items` in workers; `consume(ids, payloads)` the good ones in order; {id: message} of the rest."""
    loader = torch.utils.data.DataLoader(_Items(items, load), batch_size=batch_size or cfg.batch_size,
                                         num_workers=cfg.workers, collate_fn=list)
    progress, errors = _Progress(what, len(items), cfg.progress), {}
    for batch in loader:
        good = [(ids[k], payload) for k, payload, err in batch if err is None]
        errors.update((ids[k], err) for k, _, err in batch if err is not None)
        if good:
            consume([g[0] for g in good], [g[1] for g in good])
        progress.update(len(batch), len(errors))
    progress.close()
    return errors


class _Progress:
    """'filter: WHAT: done/total (n unreadable) rate/s ETA' on stderr, redrawn in place on a terminal."""

    def __init__(self, what, total, enabled=True, every=2.0):
        self.what, self.total, self.enabled, self.every = what, total, enabled and total > 0, every
        self.done, self.start, self.last, self.tty = 0, time.time(), 0.0, sys.stderr.isatty()

    def update(self, n, failed):
        self.done += n
        now = time.time()
        if not self.enabled or (now - self.last < self.every and self.done < self.total):
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-6)
        eta = time.strftime('%H:%M:%S', time.gmtime((self.total - self.done) / max(rate, 1e-6)))
        print(f'filter: {self.what}: {self.done}/{self.total} ({failed} unreadable) {rate:.1f}/s ETA {eta}',
              end='\r' if self.tty else '\n', file=sys.stderr, flush=True)

    def close(self):
        if self.enabled and self.tty:
            print(file=sys.stderr)


def _load_clip(sample, sampling, transform):
    """Worker: image (one frame) or video (test sampling) -> (None, views (1, V, C, T, H, W))."""
    if sample.kind == 'image':
        frames = data.read_frames(sample.path, [0])                            # (1, H, W, 3)
    else:
        frames = _read_sampled(sample, sampling)                              # (clips * L, H, W, 3)
    return None, transform(frames)[None]


def _read_sampled(sample, sampling):
    """Test-mode sampled frames; a frame count off by one is corrected, a truncated file is an error."""
    n = sample.num_frames or data.count_frames(sample.path)
    try:
        return data.read_frames(sample.path, _test_indices(n, sampling))
    except data.VideoTooShortError as err:
        if err.num_frames < n - 1:   # far fewer frames than the container claims: truncated (Sec. 3.3)
            raise
        return data.read_frames(sample.path, _test_indices(err.num_frames, sampling))


def _test_indices(n, sampling):
    return data.sample_frames(n, sampling.clip_len, sampling.frame_interval, sampling.num_clips, test_mode=True)


def _load_frames(sample, fps, transform):
    """Worker: the 1-FPS frames of an untrimmed video -> (frame indices (F,), views (F, 1, C, 1, H, W))."""
    idx = one_fps_indices(data.count_frames(sample.path), data.video_fps(sample.path), fps)
    views = transform(data.read_frames(sample.path, idx))                     # (1, C, F, H, W)
    return idx, views.permute(2, 0, 1, 3, 4).unsqueeze(3)


def _cut_one(item, raw_dir, seconds):
    """Worker: cut one untrimmed video into raw_dir/NAME/part_N.mp4 -> number of pieces."""
    sample, name = item
    return data.cut_video(sample.path, raw_dir / name, seconds)


def _load_dedup_frames(sample, num_frames, crop, crops):
    """Worker: frames of a sample for de-duplication -> (None, views (F, crops, C, H, W))."""
    if sample.kind == 'image':
        frames = data.read_frames(sample.path, [0])
    elif sample.kind == 'raw':
        frames = _read_sampled(data.Sample(sample.path / data.PART_TMPL.format(sample.pos_clips[0] if
                               sample.pos_clips else 0), sample.label, 'video'),
                               data.Sampling(1, 1, num_frames))
    else:
        frames = _read_sampled(sample, data.Sampling(1, 1, num_frames))
    frames = transforms.Resize(short_side=round(crop * 256 / 224))(frames)
    views = transforms.TenCrop(crop)(frames)[::2]                               # UL, UR, LL, LR, centre
    views = views[-1:] if crops == 1 else views
    return None, transforms.Normalize()(views).permute(2, 0, 1, 3, 4)         # (F, crops, C, H, W)


def _score_record(record, probs, query, cfg):
    """Put a sample's scores into its report entry: query-class and top probabilities, deciding score."""
    top = int(np.argmax(probs))
    q = float(probs[query]) if query >= 0 else None
    record.update(query_score=None if q is None else round(q, 4), top_class=top,
                  top_score=round(float(probs[top]), 4),
                  score=round(q if cfg.mode == 'query' and q is not None else
                              float(probs[top]) if cfg.mode == 'pseudo' else 0.0, 4))


def _route(kind, student) -> str:
    """How a sample kind is scored: 'images', 'videos' (short videos, frame folders), 'frames' (untrimmed
    videos for a 2D student), 'pieces' (untrimmed videos for a 3D student, and raw videos cut already)."""
    if kind == 'raw' or (kind == 'untrimmed' and student == '3d'):
        return 'pieces'
    return {'untrimmed': 'frames', 'image': 'images'}.get(kind, 'videos')


def _mark_corrupt(records, errors):
    for i, message in errors.items():
        records[i].update(status='corrupt', error=message)


def _mark_duplicates(records, dups, samples, val_samples, list_dir) -> list:
    """Records of duplicates get status 'duplicate'; returns the duplicates.txt lines."""
    val_base = _common_folder(val_samples)
    lines = []
    for i, (j, sim) in sorted(dups.items()):
        records[i].update(status='duplicate', duplicate_of=_rel(val_samples[j].path, val_base),
                          similarity=round(sim, 4))
        lines.append(f'{_rel(samples[i].path, list_dir)} {_rel(val_samples[j].path, list_dir)} {sim:.4f}')
    return lines


def _check_out(data_root, out, spec) -> Path:
    """--out: a plain folder name, not the source, and not a folder filter.py did not write."""
    if not out or Path(out).name != out or out in ('.', '..'):
        raise ValueError(f'--out {out!r}: expected a dataset folder name (created under --data-root)')
    final = Path(data_root) / out
    if final.resolve() in (Path(spec.root).resolve(), Path(data_root).resolve()):
        raise ValueError(f'--out {out}: that is the source folder itself; choose a new name')
    if final.exists() and not (final / 'report.json').is_file():
        raise ValueError(f'--out {out}: {final} exists and is not an earlier filter.py output (no '
                         f'report.json); choose a new name')
    return final


def _remove_empty_folders(root: Path) -> None:
    """Remove the folders under (and including) `root` that hold no file, deepest first."""
    if root.is_dir():
        for folder in sorted((p for p in root.rglob('*') if p.is_dir()), key=lambda p: -len(p.parts)) + [root]:
            if not any(folder.iterdir()):
                folder.rmdir()


def _piece_name(path, prefix, index) -> str:
    """Folder of a video's pieces under raw/: its path under the data prefix without the extension."""
    rel = Path(_rel(path, prefix)).with_suffix('')
    return rel.as_posix() if '..' not in rel.parts else f'{index:06d}_{rel.name}'


def _common_folder(samples) -> Path:
    return Path(os.path.commonpath([str(Path(s.path).parent) for s in samples]))


def _rel(path, base) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def _first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [''])[0]


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _name(teacher) -> str:
    return str(getattr(teacher, 'source', None) or getattr(teacher, 'arch', None) or type(teacher).__name__)


def _foreign_teacher(path, arch: str, classes) -> nn.Module:
    """A teacher from a checkpoint that does not describe itself: build `arch`, load strictly, attach classes."""
    model = models.build_model(arch, len(classes))
    models.load_weights(model, path)
    model.classes = list(classes)
    return model.eval()


if __name__ == '__main__':
    cli()
