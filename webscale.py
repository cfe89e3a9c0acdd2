"""Web-scale I/O of omnisource (support module: a reader of the method does not need it).

How the method's data steps run on millions of web samples, many processes and crashes:
1. Annotation lists held compact (`SampleList`: the paths of all samples in one bytes buffer plus flat numpy arrays, no
   Python object per sample, so forked DataLoader workers share the parent's pages) and parsed vectorised
   (`read_list`: numpy over the file's bytes for the dominant 'PATH LABEL' lines, the per-line reference parser
   `read_list_samples` for every other form); the list line forms are described in data.py. The frame-score sidecar
   of untrimmed videos (Sec. 3.5) is read streaming, one video at a time.
2. Decoding only what sampled frames need (`decode_video`, behind data.read_frames): keyframe seeking, frames no index
   needs dropped by the decoder, a per-process cache of each file's pts scan; `reformat`, the one frame conversion
   of the project (fork-safe); `VideoWriter`, the one H.264 writer (data.cut_video's pieces, prepare.py's videos).
3. Files written atomically (`write_atomic`): a reader or a rerun after a kill finds the old file or the new one.
4. Sharded, resumable work folders of filter.py (`Work`, `Shard`, decoding in workers, `Seen` columns, the outputs).
Global state, per process, by necessity: the pts cache (`PTS_CACHE`, long-lived DataLoader workers re-read the same
files) and one swscale context per process (`_REFORMATTERS`, see `reformat`).
"""
from __future__ import annotations

import argparse
import array
import bisect
import collections
import contextlib
import ctypes
import dataclasses
import datetime
import json
import math
import os
import posixpath
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Sequence

import av
import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".3gp", ".ts")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
KINDS = ("video", "untrimmed", "frames", "image", "raw", "windows")   # codes 0..5 of `SampleList.kinds`
PART_TMPL = "part_{}.mp4"       # MMAction2 RawVideoDataset clipname_tmpl, 0-based
FRAME_SCORES_TMPL = "{stem}_frame_scores.json"   # sidecar of list STEM.txt: 1-FPS teacher scores (Sec. 3.5)
FRAME_SCORES_FORMAT = "omnisource-frame-scores-1"
TMP_TAG = ".tmp-"   # .NAME.tmp-PID: a file (`write_atomic`) or prepared output being written; never a finished one
_SCAN_BLOCK, _LINE_BLOCK = 1 << 24, 1 << 18   # list parsing in blocks of bytes / lines: small temporaries

# FFmpeg decoder threads inside DataLoader workers: the workers already are the parallelism, so one thread each
# keeps them from oversubscribing the cores (2 workers on 2 cores: +11-14 % TSN, +16-24 % SlowOnly clips/s; see
# `python benchmark.py --what loader`). 0 = FFmpeg's automatic frame + slice threading, always used outside workers.
WORKER_CODEC_THREADS = 1
# Frames no index needs are sent to the decoder with skip_frame 'NONREF': it drops those no other frame refers
# to (H.264/HEVC nal_ref_idc 0, MPEG-4/MPEG-2 B-frames) and decodes the rest bit-exactly; see `decode_video`.
SKIP_NONREF = True
# Per-process LRU of the pts scan of `decode_video` (workers are long-lived): at most this many frames' pts in
# all (8 bytes each: 2M frames = 16 MiB, ~6,600 10-s clips at 30 fps); keyed by (path, size, mtime, inode).
PTS_CACHE_FRAMES = 2_000_000
# codecs whose FFmpeg decoders drop only frames the bitstream marks as unreferenced under skip_frame 'NONREF'
# and keep every frame's pts (tests/test_decode.py checks each against a whole-file decode). Left out: MPEG-4
# Part 2 (packed B-frames), AV1 (libdav1d then loses frames: the checks catch it, at the cost of a fallback),
# VP9 (libvpx marks no frame unreferenced but with temporal layers; nothing to gain, untested).
_SKIP_CODECS = ("h264", "hevc", "mpeg1video", "mpeg2video")
_UNUSABLE = "unusable pts"   # `_scan_pts` result: seeking by pts is not possible for this file


# ----------------------------------------------------------------------------------------------------------------------
# 1. Compact annotation lists and their parsers
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class Sample:
    """One line of an annotation list, paths joined with the data prefix. kind: 'video' | 'untrimmed' | 'frames' |
    'image' | 'raw' | 'windows' (the list line forms: data.py); num_frames: a 'frames' folder's count (from the list);
    'raw': num_parts pieces part_0.mp4 ..., pos_clips the 0-based positive ones (teacher filtered); 'windows':
    ((start, end), ...) seconds of the untrimmed video to sample from; frame_scores: a video's 1-FPS teacher scores
    from the list's sidecar (Sec. 3.5)."""
    path: Path
    label: int
    kind: str
    num_frames: int | None = None
    pos_clips: tuple = ()
    num_parts: int | None = None
    frame_scores: FrameScores | None = None
    windows: tuple = ()


def read_list(list_file: str | Path, prefix: str | Path, num_classes: int) -> SampleList:
    """Parse an MMAction2 annotation list (.txt lines or .json dicts) into a compact `SampleList`: the samples and
    one-line errors of `read_list_samples`, but a .txt list is one bytes buffer (the paths stay in it) whose dominant
    'PATH LABEL' lines (printable ASCII, one space, a media extension, a decimal label) are split and checked with
    numpy; every other line goes through the per-line parser. A frame-score sidecar is attached streaming."""
    list_file, prefix = Path(list_file), Path(prefix)
    if not list_file.is_file():
        raise FileNotFoundError(f"annotation list {list_file} not found")
    if list_file.suffix.lower() == ".json":
        samples = SampleList.from_samples(read_list_samples(list_file, prefix, num_classes), prefix)
    else:
        samples = _read_text_list(list_file, prefix, num_classes)
        if frame_scores_path(list_file).is_file():
            samples = samples.with_frame_scores(_stream_frame_scores(frame_scores_path(list_file)))
    _trim_heap()   # the parsing temporaries are freed; give their pages back
    return samples


def read_list_samples(list_file: str | Path, prefix: str | Path, num_classes: int) -> list[Sample]:
    """Reference parser: an MMAction2 annotation list (.txt lines or .json dicts) -> list of `Sample`s (one Python
    object per sample: `read_list` for real lists). Errors are one line naming the file and line (entry) and what was
    expected. Labels must lie in [0, num_classes); blank and '#' lines are skipped, and raw videos without positive
    pieces (MMAction2 RawVideoDataset, sampling_strategy='positive')."""
    list_file, prefix = Path(list_file), Path(prefix)
    if not list_file.is_file():
        raise FileNotFoundError(f"annotation list {list_file} not found")
    if list_file.suffix.lower() == ".json":
        samples = _read_json_list(list_file, prefix, num_classes)
    else:
        samples = [_parse_line(line.split(), f"{list_file}:{n}", prefix, num_classes)
                   for n, line in enumerate(list_file.read_text().splitlines(), start=1)
                   if line.strip() and not line.lstrip().startswith("#")]
    samples = [s for s in samples if s is not None]
    if not samples:
        raise ValueError(f"{list_file}: no samples (empty annotation list)")
    if frame_scores_path(list_file).is_file():   # the sidecar's entries, by the path the list writes (Sec. 3.5)
        table = read_frame_scores(frame_scores_path(list_file))
        for s in samples:
            s.frame_scores = table.get(_list_key(s.path, prefix), s.frame_scores)
    return samples


class SampleList:
    """An annotation list as a few flat numpy arrays: no Python object per sample (Sec. 4 at web scale).

    Forked DataLoader workers copy every page whose Python objects they read (reading writes the reference count);
    here all paths live in ONE bytes object (`buf`; for a .txt list, the file's own bytes) and every per-sample field
    in numpy arrays, so workers share the parent's pages: 60 bytes per sample of the released image lists (44-byte
    lines); raw positive pieces, windows and sidecar frame scores are flat arrays + offsets (`_Ragged`).
    API: len(sl), sl[i] -> `Sample` (built on demand), iter(sl), sl[a:b] / sl[index array or bool mask] /
    sl.subset(indices, labels=None) -> SampleList (sharing the buffers; relabelled for `map_labels`); sl.labels int64
    (N,), sl.kinds uint8 (N,) codes into KINDS; sl.path(i); sl.rel_path(i) as the list wrote it (relative to
    sl.prefix), sl.rel_path_bytes(indices) as UTF-8 bytes; sl.nbytes; SampleList.from_samples(samples, prefix='').
    """

    def __init__(self, prefix: str, buf: bytes, start: np.ndarray, length: np.ndarray, labels: np.ndarray,
                 kinds: np.ndarray, extra: np.ndarray | None = None, pos: _Ragged | None = None,
                 windows: _Ragged | None = None, scores: _Ragged | None = None):
        self.prefix, self.buf = prefix, buf
        self._start, self._length = start, length        # path i = buf[start[i]:start[i] + length[i]]
        self.labels, self.kinds = labels, kinds          # int64 (N,), uint8 (N,)
        self._extra = extra                              # int32 (N,): num_frames ('frames'), num_parts ('raw')
        self._pos, self._windows, self._scores = pos, windows, scores   # ragged per-sample data, or None

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
        got = None if self._scores is None else self._scores.get(i)
        if got is not None:
            frames, scores, threshold = got
            s.frame_scores = FrameScores(tuple(int(f) for f in frames), tuple(float(x) for x in scores),
                                         float(threshold))
        return s

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"SampleList({len(self)} samples under {self.prefix!r}, {self.nbytes} bytes)"

    @classmethod
    def from_samples(cls, samples: Sequence[Sample], prefix: str | Path = "") -> SampleList:
        """Compact copy of `Sample`s; paths under `prefix` are stored relative to it (all others: whole)."""
        samples = list(samples)
        prefix = str(prefix) if str(prefix) not in ("", ".") else ""
        rels = []
        for s in samples:
            full = str(s.path)
            if prefix and not full.startswith(prefix + "/") and not Path(full).is_absolute():
                return cls.from_samples(samples, "")   # a path outside the prefix: keep whole paths
            rels.append(full[len(prefix) + 1:] if prefix and full.startswith(prefix + "/") else full)
        enc = [r.encode("utf-8") for r in rels]
        lengths = np.array([len(e) for e in enc], dtype=np.int64)
        start = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64) if enc else lengths
        extra = np.array([(s.num_frames if s.kind == "frames" else s.num_parts if s.kind == "raw" else 0) or 0
                          for s in samples], dtype=np.int64)
        rows = lambda pred: [i for i, s in enumerate(samples) if pred(s)]
        raw, win, sc = rows(lambda s: s.kind == "raw"), rows(lambda s: s.kind == "windows"), \
            rows(lambda s: s.frame_scores is not None)
        return cls(prefix, b"".join(enc), *_narrow(start, lengths),
                   np.array([s.label for s in samples], dtype=np.int64),
                   np.array([KINDS.index(s.kind) for s in samples], dtype=np.uint8),
                   extra.astype(np.int32) if extra.any() else None,
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
        rows, ptr = [], []
        for i in range(len(self)):
            key = _list_key(self.path(i), Path(self.prefix))
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
        off = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(v[0]) for v in seqs], out=off[1:])
        values = tuple(np.array([x for v in seqs for x in v[j]], dtype=dt).reshape(-1) for j, dt in enumerate(dtypes))
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


def labels_of(samples: SampleList | Sequence[Sample]) -> np.ndarray:
    """int64 labels (N,) of a SampleList (its array) or a list of Samples."""
    return samples.labels if isinstance(samples, SampleList) else np.array([s.label for s in samples], np.int64)


def kinds_of(samples: SampleList | Sequence[Sample]) -> np.ndarray:
    """int64 kind codes (N,) into KINDS of a SampleList (its array) or a list of Samples."""
    return samples.kinds.astype(np.int64) if isinstance(samples, SampleList) else \
        np.array([KINDS.index(s.kind) for s in samples], dtype=np.int64)


def kind_names(samples: SampleList | Sequence[Sample]) -> set[str]:
    """The kinds a list holds, e.g. {'image', 'untrimmed'}."""
    return {KINDS[k] for k in np.unique(kinds_of(samples))}


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
    content_ends = ends - ((ends > starts) & (a[np.maximum(ends - 1, 0)] == 13))
    other = other[~((a[other] == 13) & (a[np.minimum(other + 1, len(a) - 1)] == 10))]
    # 2. the dominant form, in blocks of lines: one space, printable ASCII, a media extension, a decimal label
    blocks = [_fast_lines(a, starts[b0:b0 + _LINE_BLOCK], content_ends[b0:b0 + _LINE_BLOCK], spaces, other,
                          num_classes, b0) for b0 in range(0, len(ends), _LINE_BLOCK)]
    fast_lines, fast_sp, fast_label, fast_kind = (np.concatenate(col) for col in zip(*blocks))
    # 3. every other line through the per-line parser (errors: FILE:LINE); blank and '#' lines skipped
    slow_mask = np.ones(len(ends), dtype=bool)
    slow_mask[fast_lines] = False
    slow_lines, slow = [], []
    for ln in np.flatnonzero(slow_mask):
        try:
            line = buf[starts[ln]:ends[ln]].decode("utf-8")
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
    ex = None if extra._extra is None else \
        np.concatenate((np.zeros(nf, dtype=np.int64), extra._extra))[order].astype(np.int32)
    # ragged data of the slow samples: their rows move from k (in `extra`) to inv[nf + k]
    inv = np.empty(len(order), dtype=np.int64)
    inv[order] = np.arange(len(order))
    shift = (lambda r: None if r is None else _Ragged(inv[nf + r.rows], r.ptr, r.off, r.values, r.scalar))
    return SampleList(str(prefix), buf + b"".join(rel),
                      *_narrow(np.concatenate((start, rel_start))[order], np.concatenate((length, rel_len))[order]),
                      np.concatenate((fast_label, extra.labels))[order],
                      np.concatenate((fast_kind, extra.kinds))[order], ex, shift(extra._pos), shift(extra._windows))


def _fast_lines(a: np.ndarray, st: np.ndarray, en: np.ndarray, spaces: np.ndarray, other: np.ndarray,
                num_classes: int, first_line: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lines [st, en) of buffer `a` (numbered from `first_line`) in the form 'PATH LABEL' -> (their line numbers,
    space position, label int64, kind code uint8); the other lines are left to the per-line parser."""
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
    return cand[ok] + first_line, sp[ok], label[ok], kind[ok]


def _exotic_breaks(buf: bytes, a: np.ndarray, other: np.ndarray) -> bool:
    """Whether str.splitlines() breaks lines where b'\n' does not (lone CR, VT, FF, FS/GS/RS, NEL, LS, PS)."""
    o = a[other]
    if np.isin(o, (11, 12, 28, 29, 30)).any():
        return True
    cr = other[o == 13]
    if cr.size and (a[np.minimum(cr + 1, len(a) - 1)] != 10).any():
        return True
    return bool((o > 127).any()) and any(c in buf.decode("utf-8", errors="replace") for c in "\x85\u2028\u2029")


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
        kind = "image" if suffix in IMAGE_EXTS else "untrimmed" if Path(fields[0]).parts[0] == "untrimmed" else "video"
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
    """MMAction2 JSON annotations: a list of dicts (raw video, video/image/windows or frame folder)."""
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
            pos = tuple(_parse_int(p, where, "positive_clip_inds", 0) for p in e.get("positive_clip_inds", ()))
            raw = _raw_sample(prefix / e["video_dir"], label, _parse_int(e.get("num_clips"), where, "num_clips", 1),
                              pos, where)
            samples.append(raw if pos else None)   # no positive piece: skipped, like MMAction2
        elif "frame_dir" in e:
            total = _parse_int(e.get("total_frames"), where, "total_frames", 1)
            samples.append(Sample(prefix / e["frame_dir"], label, "frames", num_frames=total))
        elif "filename" in e:
            wins = e.get("windows", [])
            if "windows" in e and not (isinstance(wins, list) and wins and
                                       all(isinstance(w, list) and len(w) == 2 for w in wins)):
                raise ValueError(f'{where}: "windows" must be a non-empty list of [START, END] pairs in seconds')
            samples.append(_parse_line([str(e["filename"]), str(label), *(f"{a}:{b}" for a, b in wins)], where,
                                       prefix, num_classes))
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


def _narrow(start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Path starts as uint32 (buffers < 4 GiB) and lengths as uint16 (< 64 KiB) when they fit."""
    start = start.astype(np.uint32) if not len(start) or start.max() < 2 ** 32 else start.astype(np.int64)
    length = length.astype(np.uint16) if not len(length) or length.max() < 2 ** 16 else length.astype(np.int32)
    return start, length


def _trim_heap() -> None:
    """Return freed heap pages to the OS (glibc `malloc_trim`): after freeing a large block glibc raises its
    mmap threshold, so the next temporaries come from the heap and stay resident once freed; no-op elsewhere."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass


# ----------------------------------------------------------------------------------------------------------------------
# 2. The frame-score sidecar of a list (Sec. 3.5, Table 14: TSN snippets of untrimmed videos)
# ----------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FrameScores:
    """Sec. 3.5 / Table 14: teacher scores of an untrimmed video's 1-FPS frames (the policy: filter.py's docstring).

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


def frame_scores_path(list_file: str | Path) -> Path:
    """The sidecar of an annotation list: DIR/train.txt -> DIR/train_frame_scores.json (Sec. 3.5)."""
    list_file = Path(list_file)
    return list_file.with_name(FRAME_SCORES_TMPL.format(stem=list_file.stem))


def write_frame_scores(path: str | Path, videos: dict[str, FrameScores], fps: float = 1.0) -> None:
    """Write a frame-score sidecar (atomically, `write_atomic`), one line per video: {format, fps, videos: {LIST
    PATH: {frames, threshold, scores}}}; LIST PATH is a video's path exactly as its list line writes it."""
    head = json.dumps({"format": FRAME_SCORES_FORMAT, "fps": fps, "about": "Sec. 3.5 untrimmed videos: "
                       "teacher probability of the line label at each low-rate frame"})
    rows = [f"  {json.dumps(k)}: " + json.dumps({"frames": [int(f) for f in v.frames], "threshold": float(v.threshold),
                                                "scores": [round(float(x), 6) for x in v.scores]})
            for k, v in videos.items()]
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


def _list_key(path: Path, prefix: Path) -> str:
    """A sample's path as its list line writes it (relative to the data prefix): its key in the sidecar."""
    try:
        return path.relative_to(prefix).as_posix()
    except ValueError:
        return Path(os.path.relpath(path, prefix)).as_posix()


# ----------------------------------------------------------------------------------------------------------------------
# 3. Decoding only the frames sampled (behind data.read_frames), and the one H.264 writer
# ----------------------------------------------------------------------------------------------------------------------

class VideoTooShortError(ValueError):
    """A frame past the last decodable frame was asked for; `num_frames` is the true count."""

    def __init__(self, path: Path, wanted: int, num_frames: int):
        super().__init__(f"{path}: frame {wanted} requested but the video decodes to only {num_frames} frames")
        self.num_frames = num_frames


def check_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file")


@contextlib.contextmanager
def open_video(path: Path) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """Open a video file with PyAV -> (container, first video stream); codec threads: WORKER_CODEC_THREADS."""
    check_file(path)
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


def decode_video(container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: Path,
                 indices: np.ndarray, stats: dict | None = None) -> np.ndarray:
    """Frames `indices` of an open video as uint8 `(len(indices), H, W, 3)` RGB, decoding only what they need.

    1. one demux pass (packets only, ~2-5 ms for a 10-s clip; cached per process, `PTS_CACHE`) gives every frame's
       pts and the keyframes: a frame's presentation index is the rank of its pts (right at variable frame rates);
    2. before a needed frame, seek to the keyframe before it when that lies beyond the decoding position;
    3. a frame no index needs goes to the decoder with skip_frame 'NONREF' (`_SKIP_CODECS`, not in AVI): FFmpeg drops
       it if no frame refers to it (x264's B-frames but the pyramid's middle ones: 40-47 % of the frames of the real
       clips in ../shared), so every frame it decodes is bit-exact;
    4. only needed frames are converted to RGB; a run (the frames decoded from one keyframe) drains the decoder once
       the packet of its last needed frame is sent.
    Each decoded frame's index must follow its predecessor (across dropped frames only where none is wanted); else
    the video is decoded again without skipping, else from the start counting frames (whole-file semantics); what
    failed is remembered with the cached scan. `stats` gets the frames decoded, skipped, seeks and packets sent.
    """
    wanted = np.unique(indices)
    stats = {} if stats is None else stats
    stats.update(decoded=0, skipped=0, seeks=0, sent=0, sequential=False)
    index, frames = _pts_index(container, stream), None
    # 1. seek and skip; 2. seek only (skipping lost a frame); 3. count frames from the start. A frame past the
    #    demuxed ones goes to 3 directly: only decoding tells the true length.
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


def count_video_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    """`stream.frames` when consistent with duration x rate, else decode and count."""
    n = stream.frames
    if n > 0 and stream.duration and stream.average_rate and stream.time_base:
        if abs(n - float(stream.duration * stream.time_base * stream.average_rate)) <= 1.0:
            return int(n)
    count = sum(1 for _ in container.decode(stream))
    if count == 0:
        raise ValueError(f"{container.name}: no decodable video frames")
    container.seek(0)   # rewind for a caller that decodes next
    return count


def metadata_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int | None:
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


def stream_rate(path: Path, stream: av.video.stream.VideoStream) -> Fraction:
    """Frame rate of an open video stream: average rate, else guessed rate, else frames / duration."""
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate and rate > 0:
            return Fraction(rate)
    if stream.frames and stream.duration and stream.time_base:
        return Fraction(stream.frames) / (stream.duration * stream.time_base)
    raise ValueError(f"{path}: the video has no frame rate")


def reformat(frame: av.VideoFrame, format: str = "rgb24", width: int | None = None, height: int | None = None
             ) -> av.VideoFrame:
    """`frame.reformat(...)` through this process's own swscale context: every frame conversion of the project.
    PyAV's default conversion reuses one context per thread, which a forked child inherits: with PyAV 18.1.1 its first
    conversion then waits forever for the parent's swscale slice threads. A context per process id is never shared
    across a fork (the parent's stays referenced, never freed, in the child)."""
    own = _REFORMATTERS.get(os.getpid())
    if own is None:
        own = _REFORMATTERS[os.getpid()] = av.video.reformatter.VideoReformatter()
    return own.reformat(frame, format=format, width=width, height=height)


def to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """A decoded frame -> uint8 `(H, W, 3)` RGB (`reformat`, fork-safe)."""
    return reformat(frame).to_ndarray()


class VideoWriter:
    """An H.264 yuv420p mp4 written a frame at a time: libx264 with encoder `options` at `rate`, the frame size of
    `first` (odd sides scaled to the even size below), frame n at pts n. data.cut_video's pieces, prepare's videos."""

    def __init__(self, path: Path, rate: Fraction, first: av.VideoFrame, options: dict[str, str]):
        self.container = av.open(str(path), mode="w", format="mp4")
        self.stream = self.container.add_stream("libx264", rate=rate)
        self.width, self.height = max(2, first.width // 2 * 2), max(2, first.height // 2 * 2)
        self.stream.width, self.stream.height, self.stream.pix_fmt = self.width, self.height, "yuv420p"
        self.stream.codec_context.options = options
        self.time_base, self.count = 1 / Fraction(rate), 0

    def write(self, frame: av.VideoFrame) -> None:
        out = reformat(frame, "yuv420p", self.width, self.height)
        out.pts, out.time_base = self.count, self.time_base   # timestamps from 0
        self.count += 1
        self.container.mux(self.stream.encode(out))

    def close(self, flush: bool = True) -> None:
        try:
            if flush:
                self.container.mux(self.stream.encode())
        finally:
            self.container.close()


@dataclass
class _Scan:
    """What the demux pass keeps per file (the cached form): int64 arrays, 8 bytes a frame."""
    pts: np.ndarray          # every frame's pts, sorted: the presentation order
    keys: np.ndarray         # presentation indices of the keyframes, sorted
    skip_ok: bool = True     # False once skipping lost a wanted frame of this file
    seek_ok: bool = True     # False once the decoder's output contradicted the pts (seek + check failed)


class _PtsIndex:
    """A cached `_Scan` (kept as `scan`: it records what failed on the file) as `_decode_seeking` reads it: `rank`
    pts -> 0-based presentation index, `keys` / `key_set` the keyframes' indices, `key_pts` their pts (the seek
    targets: FFmpeg lands exactly on them)."""

    def __init__(self, scan: _Scan):
        order, self.keys, self.scan = scan.pts.tolist(), scan.keys.tolist(), scan
        self.rank, self.num_frames = dict(zip(order, range(len(order)))), len(order)
        self.key_pts, self.key_set = [order[k] for k in self.keys], frozenset(self.keys)


def _pts_index(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> _PtsIndex | None:
    """The `_PtsIndex` of an open video, None if its pts are unusable: one demux pass (`_scan_pts`), or
    the per-process cache when the same file (path, size, mtime, inode unchanged) was scanned before."""
    key = _file_key(container.name)
    entry = PTS_CACHE.get(key)
    if entry is None:
        entry = _scan_pts(container, stream)
        PTS_CACHE.put(key, entry)   # an unusable result is remembered too: no second scan
    return None if entry is _UNUSABLE else _PtsIndex(entry)


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
                    index: _PtsIndex, stats: dict, skip: bool = True) -> dict[int, np.ndarray] | None:
    """Decode the sorted unique `wanted` frames with keyframe seeks; None if pts prove unreliable. skip: frames no
    index needs go to the decoder with skip_frame 'NONREF' (`_decoded_frames`); the frames it drops leave gaps in its
    output, allowed only where no wanted frame lies."""
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
    """Frames decoded from the packets after the current position, the decoder drained once the packets of every
    frame in `run` (presentation indices) are sent. With `want`, the packet of a frame not in it (and of known pts)
    is sent with skip_frame 'NONREF' (frame threads copy the setting per packet). stats['sent'] counts packets."""
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


def _decode_sequential(path: Path, wanted: np.ndarray, stats: dict) -> dict[int, np.ndarray]:
    """Decode from the start counting frames (whole-file semantics); stop after the last wanted."""
    want, out, last, count = set(int(i) for i in wanted), {}, int(wanted[-1]), 0
    with open_video(path) as (container, stream):
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


def _can_skip(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> bool:
    """Whether `_decoded_frames` may drop unneeded frames: SKIP_NONREF, a codec in `_SKIP_CODECS`, and not AVI (its
    packets are numbered in storage order, so with B-frames a frame's pts is not its own; decoding every frame shows
    that as out-of-order ranks, which gaps from dropped frames would hide)."""
    return (SKIP_NONREF and stream.codec_context.codec.canonical_name in _SKIP_CODECS
            and "avi" not in container.format.name.split(","))


def _file_key(name: str) -> tuple[str, int, int, int] | None:
    """(path, size, mtime, inode) of a file: a changed or replaced file gets a new key; None if no stat."""
    try:
        st = os.stat(name)
    except (OSError, ValueError):
        return None
    return os.path.abspath(name), st.st_size, st.st_mtime_ns, st.st_ino


class _PtsCache:
    """LRU of `_scan_pts` results keyed by `_file_key`, holding at most `PTS_CACHE_FRAMES` frames' pts.
    One per process; a lock keeps it whole when threads of one process read videos."""

    def __init__(self):
        self.entries, self.frames, self.lock = collections.OrderedDict(), 0, threading.Lock()

    def get(self, key: tuple | None) -> _Scan | str | None:
        with self.lock:
            if key in self.entries:
                self.entries.move_to_end(key)
            return self.entries.get(key)

    def put(self, key: tuple | None, entry: _Scan | str) -> None:
        if key is None:
            return
        size = (lambda e: 1 if e is _UNUSABLE else len(e.pts))
        with self.lock:
            if key in self.entries:   # scanned twice at once by two threads
                self.frames -= size(self.entries.pop(key))
            self.entries[key] = entry
            self.frames += size(entry)
            while self.frames > PTS_CACHE_FRAMES and self.entries:
                self.frames -= size(self.entries.popitem(last=False)[1])

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()
            self.frames = 0


PTS_CACHE = _PtsCache()
_REFORMATTERS: dict[int, av.video.reformatter.VideoReformatter] = {}   # `reformat`: one swscale context per process


# ----------------------------------------------------------------------------------------------------------------------
# 4. Files written atomically
# ----------------------------------------------------------------------------------------------------------------------

def write_atomic(path: str | Path, content: str | bytes | Callable[[BinaryIO], object]) -> None:
    """Write `path` under a temporary name in its folder (.NAME.tmp-PID), flush it to disk (fsync) and rename it over
    `path`: a reader, or a rerun after a kill (SIGKILL included), finds the old file or the new one, never a part.
    content: text (UTF-8), bytes, or a function writing to the open binary file (`lambda f: torch.save(obj, f)`).
    Every command's single files (lists, reports, checkpoints, work-folder state) go through here."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_TAG}{os.getpid()}")
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


def fsync(path: Path) -> None:
    """Flush a file or a folder (its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------------------------------
# Work folders of a sharded, resumable command (filter.py): records per rank, blocks decoded in workers, outputs
# ----------------------------------------------------------------------------------------------------------------------

WORK_FORMAT = "omnisource-filter-work-2"
SEEN = ("scored", "corrupt", "duplicate")        # a record's state: what the teachers saw (scores.npz 'state')
SCORES_FORMAT = "omnisource-filter-scores-1"
SEEN_FILES = ("samples.jsonl", "scores.npz", "duplicates.txt")   # `gather_records`: written once, linked to outputs
LINES_AT_ONCE = 1 << 18          # list lines built and written at once (`write_output`)


# what reading a broken file raises (Sec. 3.3): the OS (missing, unreadable; Pillow's UnidentifiedImageError and
# truncated images are OSErrors), PyAV / FFmpeg, data.py's ValueErrors for bad files (empty, no video stream, no
# frame, too short: VideoTooShortError, image too small) and Pillow's EOFError / DecompressionBombError. Only the
# readers' calls are guarded (`decode`), so a ValueError of a transform is not mistaken for a broken file.
DECODE_ERRORS = (OSError, av.FFmpegError, ValueError, EOFError, Image.DecompressionBombError)


class Work:
    """The work folder of a run (DATA_ROOT/.OUT.filter-work/), which survives crashes:

    config.json            the scoring settings; another command refuses to reuse the folder
    records-RANK.jsonl     one JSON object per sample ({"i": index, ...}): what the teachers saw (no decision),
                           corrupt or duplicate; appended one block at a time
    dedup-RANK.jsonl       finished de-duplication blocks {"b": block, "removed": [indices]}
    dedup-feats-RANK-of-WORLD.pt  the rank's share of the val and whitening-subset features (`share`)
    dedup-val.pt           the val side of Sec. 3.3 (whitening, threshold, whitened val centre crops)
    samples.jsonl, scores.npz, duplicates.txt   the records in sample order and their columns (`gather_records`),
                           written when scoring ends; they move into the output
    cut-RANK.jsonl         --cut-pieces: {"i": index, "pieces": n}, {"i": index, "error": message} or
                           {"i": index, "removed": true} (the last line of a video counts)
    progress-RANK.json     samples scored by the rank's last run
    raw/                   --cut-pieces: the pieces of kept videos
    Every rank appends to its own files only; every rank reads all of them (any earlier number of ranks).
    """

    def __init__(self, folder: str | Path, shard: Shard):
        self.folder, self.shard = Path(folder), shard
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
            write_atomic(path, json.dumps(settings, indent=1) + "\n")
        barrier()

    def append(self, kind: str, records: Iterable[dict]) -> None:
        """Append records (dicts, 'i' first) to this rank's KIND file: one write, flushed (survives SIGKILL)."""
        f = self._files.get(kind)
        if f is None:
            path = self.folder / f"{kind}-{self.shard.rank:05d}.jsonl"
            drop_torn_tail(path)
            f = self._files[kind] = open(path, "ab")
        f.write(b"".join(dump(r) for r in records))
        f.flush()

    def lines(self, kind: str) -> Iterator[tuple[int, int, bytes]]:
        """(file number, byte offset, line) of every complete line of every rank's KIND file."""
        for number, path in enumerate(self.files(kind)):
            with open(path, "rb") as f:
                offset = 0
                for line in f:
                    if line.endswith(b"\n"):   # a torn last line (killed mid-write) is ignored
                        yield number, offset, line
                    offset += len(line)

    def files(self, kind: str) -> list[Path]:
        return sorted(self.folder.glob(f"{kind}-*.jsonl"))

    def latest(self, kind: str, key: str = "i") -> dict[int, dict]:
        """The last record of every value of `key` in the KIND files (e.g. a video's cut state, a finished block)."""
        return {r[key]: r for r in (json.loads(line) for _, _, line in self.lines(kind))}

    def done(self, num_samples: int) -> np.ndarray:
        """bool (N,): samples with a record (from any rank, any earlier run)."""
        done = np.zeros(num_samples, dtype=bool)
        for _, _, line in self.lines("records"):
            done[record_index(line)] = True
        return done

    def share(self, name: str, part_name: str, part: Callable[[], dict], join: Callable[[list[dict]], dict]) -> dict:
        """One result from every rank's part, computed once into WORK/NAME and read by every rank (resumable): each
        rank saves part() to WORK/PART_NAME-RANK-of-WORLD.pt (another rank count starts afresh), rank 0 saves
        join(the parts in rank order)."""
        path, world = self.folder / name, self.shard.world
        mine = self.folder / f"{part_name}-{self.shard.rank:05d}-of-{world:05d}.pt"
        if not path.is_file() and not mine.is_file():
            result = part()
            write_atomic(mine, lambda f: torch.save(result, f))
        barrier()
        if self.shard.rank == 0 and not path.is_file():
            parts = [torch.load(p, map_location="cpu", weights_only=True)
                     for p in sorted(self.folder.glob(f"{part_name}-*-of-{world:05d}.pt"))]
            result = join(parts)
            write_atomic(path, lambda f: torch.save(result, f))
        barrier()
        return torch.load(path, map_location="cpu", weights_only=True)

    def close(self) -> None:
        for f in self._files.values():
            os.fsync(f.fileno())
            f.close()
        self._files = {}
        write_atomic(self.folder / f"progress-{self.shard.rank:05d}.json",
                     json.dumps(dict(rank=self.shard.rank, world=self.shard.world, scored=self.scored)))

    def scored_now(self) -> int:
        """Samples scored by the ranks of the last run (their progress files)."""
        total = 0
        for p in self.folder.glob("progress-*.json"):
            r = json.loads(p.read_text())
            total += r["scored"] if r["world"] == self.shard.world else 0
        return total


@dataclass
class Seen:
    """What the teachers saw of a filter.py run's N samples as columns (OUT/scores.npz, written once by
    `gather_records`): all filter.decide and the list lines need, so a finished run is re-decided without reading a
    record. Units: the 1-FPS frames, 10-s windows or raw pieces of untrimmed videos (Sec. 3.5), M in all."""
    query: np.ndarray          # (N,) int64: the query class as a teacher class (-1: not a teacher class)
    query_p: np.ndarray        # (N,) float32: p(query class) (NaN: not scored)
    top_class: np.ndarray      # (N,) int64: the argmax class (-1: not scored)
    top_p: np.ndarray          # (N,) float32: its probability (NaN: not scored)
    state: np.ndarray          # (N,) uint8 into SEEN: scored, corrupt or duplicate
    unit_offset: np.ndarray    # (N + 1,) int64: sample i's units are rows unit_offset[i]:unit_offset[i + 1]
    unit_query: np.ndarray     # (M,) float32: each unit's p(query class) (NaN: no query class)
    unit_top: np.ndarray       # (M,) float32: each unit's p(its video's argmax class)
    unit_frames: np.ndarray    # (M, 2) int64: frames [first, stop) of each unit (1-FPS frame f: [f, f + 1); piece: -1)
    fps: np.ndarray            # (N,) float64: the rate the frames of a 3D student's windows count at (else NaN)
    line_offset: np.ndarray    # (N + 1,) int64: samples.jsonl's record i is bytes line_offset[i]:line_offset[i + 1]

    def save(self, path: Path) -> None:
        columns = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        write_atomic(path, lambda f: np.savez(f, format=np.array(SCORES_FORMAT), seen=np.array(SEEN), **columns))

    @classmethod
    def load(cls, path: Path) -> Seen:
        with np.load(path) as f:
            if str(f["format"]) != SCORES_FORMAT:
                raise ValueError(f"{path}: expected format {SCORES_FORMAT}, got {f['format']}")
            return cls(**{c.name: f[c.name] for c in dataclasses.fields(cls)})


def gather_records(work: Work, n: int, base: str, list_dir: Path, val_samples: SampleList | list[Sample] | None
                   ) -> None:
    """Rank 0, once when scoring ends: every rank's records in sample order (a block redone after a crash: its last
    record) -> WORK/samples.jsonl (the records as written), scores.npz (`Seen`) and duplicates.txt (list paths: base
    / the record's path; val paths relative to list_dir). Streams: memory is columns of N numbers + the units."""
    columns = [array.array("q") for _ in range(3)]    # (sample index, file number, byte offset) of every record line
    for f, o, line in work.lines("records"):
        columns[0].append(record_index(line))
        columns[1].append(f)
        columns[2].append(o)
    index, number, offset = (np.frombuffer(c, np.int64) for c in columns)
    order = np.lexsort((np.arange(len(index)), index))
    last = np.append(index[order][1:] != index[order][:-1], True) if len(order) else np.zeros(0, bool)
    pick = np.full(n, -1, dtype=np.int64)
    pick[index[order][last]] = order[last]            # pick[i]: sample i's last record (-1: none)
    if (pick < 0).any():
        raise RuntimeError(f"filter: {int((pick < 0).sum())} samples have no record in {work.folder} (a rank "
                           f"did not finish); run the same command again")
    query, top_class, units, line_offset = (np.full(n, -1, np.int64), np.full(n, -1, np.int64), np.zeros(n, np.int64),
                                            np.zeros(n + 1, np.int64))
    query_p, top_p, state, fps = (np.full(n, np.nan, np.float32), np.full(n, np.nan, np.float32),
                                  np.zeros(n, np.uint8), np.full(n, np.nan))
    unit_query, unit_top, unit_frames = array.array("f"), array.array("f"), array.array("q")
    handles = [open(p, "rb") for p in work.files("records")]
    try:
        with open(work.folder / "samples.jsonl", "wb") as rec_out, \
                open(work.folder / "duplicates.txt", "w") as dup_out:
            dup_out.write("# web sample (relative to this folder)  val sample it duplicates  whitened cosine "
                          "similarity\n" if val_samples is not None else
                          "# de-duplication was not run (no --dedup-against)\n")
            for i in range(n):
                handles[number[pick[i]]].seek(offset[pick[i]])
                line = handles[number[pick[i]]].readline()
                r = json.loads(line)
                rec_out.write(line)
                line_offset[i + 1] = line_offset[i] + len(line)
                query[i] = r["query"]
                if "top_class" not in r:   # corrupt or a duplicate
                    state[i] = SEEN.index(r["status"])
                    if r["status"] == "duplicate":
                        dup_out.write(f'{list_path(base, r["path"])} '
                                      f'{rel_path(val_samples[r["val_index"]].path, list_dir)} {r["similarity"]:.4f}\n')
                    continue
                top_class[i], top_p[i] = r["top_class"], r["top_score"]
                query_p[i] = np.nan if r["query_score"] is None else r["query_score"]
                if "units" in r:   # Sec. 3.5: an untrimmed video's units
                    units[i] = r["units"]
                    unit_query.extend([np.nan] * r["units"] if r["unit_query"] is None else r["unit_query"])
                    unit_top.extend(r["unit_top"])
                    unit_frames.extend([x for f in r["frames"] for x in (f, f + 1)] if "frames" in r else
                                       [x for w in r["windows"] for x in w] if "windows" in r else
                                       [-1, -1] * r["units"])
                    fps[i] = r.get("fps", np.nan)
    finally:
        for h in handles:
            h.close()
    Seen(query, query_p, top_class, top_p, state, np.concatenate(([0], np.cumsum(units))),
         np.frombuffer(unit_query, np.float32), np.frombuffer(unit_top, np.float32),
         np.frombuffer(unit_frames, np.int64).reshape(-1, 2), fps, line_offset).save(work.folder / "scores.npz")


def write_output(folder: Path, seen_dir: Path, seen: Seen, samples: SampleList | list[Sample], prefix: Path,
                 base: str, lines: Callable, decision: dict[str, np.ndarray], statuses: Sequence[str],
                 classes: list[str], header: dict, report: dict, fps: float) -> dict:
    """Rank 0: filter.py's output folder from its decision; no record is read. train.txt, LINES_AT_ONCE kept samples
    at a time: lines(kept, their list paths) -> (list lines, {list path: FrameScores} of the frame-score sidecar),
    the paths slices of the source list's buffer (`list_paths`: base / the path under `prefix`); decision.npz (the
    columns but unit_positive, `statuses` naming the status codes), classes.txt, report.json (header, the counts per
    status and per class (Fig. 3), then `report`) and SEEN_FILES linked from seen_dir. Returns the report."""
    kept_all, frame_scores = np.flatnonzero(decision["status"] == statuses.index("kept")), {}
    with open(folder / "train.txt", "wb") as out:
        for s in range(0, len(kept_all), LINES_AT_ONCE):   # memory: the lines of one chunk
            kept = kept_all[s:s + LINES_AT_ONCE]
            chunk, scores = lines(kept, list_paths(samples, kept, prefix, base))
            out.write(b"".join(chunk))
            frame_scores.update(scores)
    if frame_scores:
        write_frame_scores(frame_scores_path(folder / "train.txt"), frame_scores, fps=fps)
    np.savez(folder / "decision.npz", statuses=np.array(statuses),
             **{k: v for k, v in decision.items() if k != "unit_positive"})
    for name in SEEN_FILES:
        link(seen_dir / name, folder / name)
    (folder / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    k, status, query = len(classes), decision["status"], seen.query
    code = {name: status == statuses.index(name) for name in statuses}
    per = {name: np.bincount(query[(query >= 0) & code[name]], minlength=k)
           for name in ("kept", "dropped", "corrupt", "duplicate")}
    before = np.bincount(query[query >= 0], minlength=k)
    after = np.bincount(decision["label"][code["kept"]], minlength=k)
    report = dict(header, classes=list(classes), counts=dict(total=len(status), **{
        name: int(code[name].sum()) for name in ("kept", "dropped", "corrupt", "duplicate", "unknown_query")}),
        per_class=[dict(index=c, name=classes[c], before=int(before[c]), **{n: int(per[n][c]) for n in per},
                        after=int(after[c])) for c in range(k)],
        about_per_class="before: samples crawled for the class (query label); kept / dropped / corrupt / duplicate: "
                        "of those; after: kept samples labelled with the class (= kept in query mode; pseudo-labels "
                        "in pseudo mode)",
        about_samples="samples.jsonl: what the teachers saw, one record per sample in list order (query-class and "
                      "top-5 probabilities, units of untrimmed videos), scores.npz the same as columns; decision.npz: "
                      "each sample's status, label, deciding score and threshold", **report)
    (folder / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def run_cuts(work: Work, jobs: dict[int, tuple[Path, str]], kept: list[int], cut: Callable, cfg: Any,
             what: str) -> None:
    """--cut-pieces (filter.main), resumable: of this rank's videos `jobs` {i: (path, NAME)}, those kept and not
    cut yet are cut into WORK/raw/NAME (cut(path, folder) -> number of pieces, in cfg.workers workers; the result or
    the error goes to WORK/cut-RANK.jsonl), and the pieces of those cut earlier but not kept now are removed."""
    state, kept = work.latest("cut"), set(kept)
    for i in sorted(set(state) & set(jobs) - kept):
        if "removed" not in state[i]:
            shutil.rmtree(work.folder / "raw" / jobs[i][1], ignore_errors=True)
            work.append("cut", [dict(i=i, removed=True)])
    todo = sorted(i for i in kept if i not in state or "removed" in state[i])
    calls = _Calls(cut, [(jobs[i][0], work.folder / "raw" / jobs[i][1]) for i in todo])
    progress, failed = Progress(what, len(todo), cfg.progress), 0
    for k, pieces, error in torch.utils.data.DataLoader(calls, batch_size=None, num_workers=cfg.workers,
                                                        collate_fn=as_is) if todo else []:
        work.append("cut", [dict(i=todo[k], pieces=pieces) if error is None else dict(i=todo[k], error=error)])
        failed += error is not None
        progress.update(1, failed)
    progress.close()
    barrier()


def finished_report(final: Path, work: Work, settings: dict) -> dict | None:
    """The report of the finished output `final` (report.json and SEEN_FILES) when its scoring settings are
    `settings` (a teacher file that is gone is matched by its path) and no scoring run of its own is unfinished in
    the work folder; else None."""
    config = work.folder / "config.json"
    if not all((final / name).is_file() for name in ("report.json", *SEEN_FILES)) or \
            (config.is_file() and "records" not in json.loads(config.read_text())):
        return None
    report = json.loads((final / "report.json").read_text())
    old, new = json.loads(json.dumps(report.get("settings"))), json.loads(json.dumps(settings))
    if not isinstance(old, dict) or len(old.get("teachers", [])) != len(new["teachers"]):
        return None
    old["teachers"] = [{k: t[k] for k in n if k in t} for t, n in zip(old["teachers"], new["teachers"])]
    return report if old == new else None


def rows_in_sample_order(parts: list[tuple[torch.Tensor, torch.Tensor]], empty: tuple
                         ) -> tuple[torch.Tensor, np.ndarray]:
    """Feature rows of every rank's blocks, (rows, owner sample index (R,)) each -> all rows ordered by sample (a
    sample's rows in their order): the rows one process extracts; a tensor of shape `empty` when there are none."""
    parts = [(f, o) for f, o in parts if len(o)]
    if not parts:
        return torch.zeros(empty), np.zeros(0, np.int64)
    owner = torch.cat([o for _, o in parts]).numpy()
    order = np.argsort(owner, kind="stable")
    return torch.cat([f for f, _ in parts])[torch.from_numpy(order)], owner[order]


def file_identity(path: str | Path) -> dict:
    """A file named in settings: its resolved path and, while it exists, its size and mtime."""
    p = Path(path)
    return dict(path=str(p.resolve()), **(dict(bytes=p.stat().st_size, mtime_ns=p.stat().st_mtime_ns)
                                          if p.is_file() else {}))


def output_folder(data_root: str | Path, out: str, source_root: str | Path) -> Path:
    """--out: DATA_ROOT/OUT for a plain folder name, not the source, and not a folder filter.py did not write."""
    if not out or Path(out).name != out or out in (".", ".."):
        raise ValueError(f"--out {out!r}: expected a dataset folder name (created under --data-root)")
    final = Path(data_root) / out
    if final.resolve() in (Path(source_root).resolve(), Path(data_root).resolve()):
        raise ValueError(f"--out {out}: that is the source folder itself; choose a new name")
    if final.exists() and not (final / "report.json").is_file():
        raise ValueError(f"--out {out}: {final} exists and is not an earlier filter.py output (no "
                         f"report.json); choose a new name")
    return final


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


def move_folder(src: Path, dst: Path) -> None:
    """Move the files under `src` (one rename; folders holding no file are dropped) to `dst`, if there are any."""
    remove_empty_folders(src)
    if src.is_dir():
        os.rename(src, dst)


def link(src: Path, dst: Path) -> None:
    """dst: the same file as src (a hard link; a copy where the file system has none)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def rel_path(path: str | Path, base: str | Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def list_path(base: str, rel: str) -> str:
    """A sample's path in an output list: base (the data prefix relative to the list's folder) / rel (its path under
    the prefix), normalised as os.path.relpath gives it."""
    return posixpath.normpath(posixpath.join(base, rel))


def list_paths(samples: SampleList | Sequence[Sample], idx: np.ndarray, prefix: Path, base: str) -> list[bytes]:
    """`list_path` of samples idx, UTF-8: slices of a SampleList's path buffer when its paths are plain (relative,
    no empty part, no part starting with '.'), else one by one."""
    if isinstance(samples, SampleList) and Path(samples.prefix) == Path(prefix):
        rels = samples.rel_path_bytes(idx)
        joined = b"\n" + b"\n".join(rels)
        if not any(x in joined for x in (b"\n/", b"\n.", b"/.", b"//")):
            head = b"" if base == "." else base.encode() + b"/"
            return [head + r for r in rels] if head else rels
    return [list_path(base, rel_path(samples[i].path, prefix)).encode() for i in idx.tolist()]


def dump(record: dict) -> bytes:
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()


def record_index(line: bytes) -> int:
    """The sample index of a record line b'{"i":123,...}' (written by dump, 'i' first)."""
    return int(line[5:line.index(b",", 5)])


def drop_torn_tail(path: Path) -> None:
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


@dataclass
class Shard:
    """This process's part of a run: block b belongs to rank b % world (torchrun's RANK / WORLD_SIZE)."""
    rank: int = 0
    world: int = 1

    def mine(self, num_blocks: int) -> range:
        return range(self.rank, num_blocks, self.world)

    @property
    def tag(self) -> str:
        """' [rank r/w]' for progress lines under torchrun, '' in one process."""
        return f" [rank {self.rank}/{self.world}]" if self.world > 1 else ""


def distributed(device: str | None) -> tuple[Shard, str]:
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


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def end_distributed() -> None:
    """Tear the group down on every rank after the last barrier, while the interpreter is fully alive (gloo's
    threads outliving it can abort the process at exit)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def blocks(idx: np.ndarray, size: int) -> list[np.ndarray]:
    """Sample indices idx (N,) in blocks of `size` (the last one shorter): block b goes to rank b % world."""
    return [idx[s:s + size] for s in range(0, len(idx), size)]


class Blocks(torch.utils.data.Dataset):
    """Worker side: block k (sample indices) -> (k, good ids, units per id, one collated uint8 tensor per
    load, {id: message} of the samples that could not be read). Nothing per sample crosses the queue."""

    def __init__(self, samples: SampleList | list[Sample], blocks: list[np.ndarray], load: Callable):
        self.samples, self.blocks, self.load = samples, blocks, load

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, k: int) -> tuple:
        ids, counts, parts, errors = [], [], [], {}
        for i in self.blocks[k]:
            i = int(i)
            try:
                views = self.load(self.samples[i])                  # one (U, ...) uint8 tensor per group
            except Unreadable as err:   # the file failed to decode (Sec. 3.3); any other error is a bug: raised
                errors[i] = str(err)
                continue
            ids.append(i)
            counts.append(len(views[0]))
            parts.append(views)
        cat = [torch.cat([p[g] for p in parts]) for g in range(len(parts[0]))] if parts else []
        return k, np.asarray(ids, dtype=np.int64), np.asarray(counts, dtype=np.int64), cat, errors


def run_blocks(samples: SampleList | list[Sample], blocks: list[np.ndarray], load: Callable, cfg: Any, what: str,
               todo: Iterable[int]) -> Iterator[tuple]:
    """Decode the blocks `todo` in cfg.workers DataLoader workers; yields `Blocks` items in order (a progress line
    when cfg.progress; pinned memory when cfg.device is a GPU). cfg: filter.FilterConfig."""
    todo = list(todo)
    if not todo:   # nothing to decode: no worker processes
        return
    ds = torch.utils.data.Subset(Blocks(samples, blocks, load), todo)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=cfg.workers, collate_fn=as_is,
                                         pin_memory=torch.device(cfg.device).type == "cuda")
    progress, failed = Progress(what, sum(len(blocks[k]) for k in todo), cfg.progress), 0
    for item in loader:
        yield item
        failed += len(item[4])
        progress.update(len(blocks[item[0]]), failed)
    progress.close()


class _Calls(torch.utils.data.Dataset):
    """Worker side of `run_cuts`: k -> (k, fn(*calls[k]), None), or (k, None, 'Error: message') on DECODE_ERRORS."""

    def __init__(self, fn: Callable, calls: list[tuple]):
        self.fn, self.calls = fn, calls

    def __len__(self) -> int:
        return len(self.calls)

    def __getitem__(self, k: int) -> tuple:
        try:
            return k, self.fn(*self.calls[k]), None
        except DECODE_ERRORS as err:   # a file that cannot be read or written
            return k, None, f"{type(err).__name__}: {first_line(err)}"


class _Chunks(torch.utils.data.IterableDataset):
    """Worker side of `run_chunks`: item k goes to worker k % workers, which yields (i, first unit, number of units,
    load(state, s, e), None) per chunk, or (i, -1, 0, None, message) once the item proves unreadable (any chunk)."""

    def __init__(self, todo: np.ndarray, plan: Callable, load: Callable, size: int):
        self.todo, self.plan, self.load, self.size = todo, plan, load, size

    def __iter__(self) -> Iterator[tuple]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for k in range(worker, len(self.todo), workers):
            i = int(self.todo[k])
            try:
                units, state = self.plan(i)
                for s in range(0, units, self.size):
                    yield i, s, units, self.load(state, s, min(s + self.size, units)), None
            except Unreadable as err:
                yield i, -1, 0, None, str(err)


def run_chunks(todo: np.ndarray, plan: Callable, load: Callable, size: int, reduce: Callable, cfg: Any,
               what: str) -> Iterator[tuple]:
    """Items too long for one tensor (untrimmed videos, Sec. 3.5) in chunks of at most `size` units, decoded in
    cfg.workers DataLoader workers: plan(i) -> (number of units, state) and load(state, s, e) -> units s:e run in a
    worker, reduce(chunk) -> what is kept of a chunk here. Yields (i, [reduce(chunk), ...], None) once all chunks of
    item i are in, or (i, None, message) for an unreadable item; a progress line when cfg.progress."""
    loader = torch.utils.data.DataLoader(_Chunks(todo, plan, load, size), batch_size=None,
                                         num_workers=min(cfg.workers, len(todo)), collate_fn=as_is,
                                         pin_memory=torch.device(cfg.device).type == "cuda")
    progress, failed, pending = Progress(what, len(todo), cfg.progress), 0, {}
    for i, first, units, chunk, error in loader:
        if error is None:
            pending.setdefault(i, []).append(reduce(chunk))
            if first + size < units:
                continue
        chunks, failed = pending.pop(i, None), failed + (error is not None)
        yield i, chunks if error is None else None, error
        progress.update(1, failed)
    progress.close()


class Unreadable(Exception):
    """A web file that does not decode (Sec. 3.3: invalid or corrupted): recorded as corrupt and left out."""


def decode(fn: Callable, *args: object) -> object:
    """fn(*args), a reader of a file (data.py / PyAV / Pillow); the errors that mean the file is broken become
    Unreadable. Anything else (a bug in a transform, a teacher, our code) is raised as it is."""
    try:
        return fn(*args)
    except DECODE_ERRORS as err:
        raise Unreadable(f"{type(err).__name__}: {first_line(err)}") from None


class Progress:
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


def as_is(item: object) -> object:
    """DataLoader collate_fn: items pass unchanged (numpy arrays stay numpy)."""
    return item


def remove_empty_folders(root: Path) -> None:
    """Remove the folders under (and including) `root` that hold no file, deepest first."""
    if root.is_dir():
        for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [root]:
            if not any(folder.iterdir()):
                folder.rmdir()


def first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [""])[0]


# ----------------------------------------------------------------------------------------------------------------------
# Command lines: every command's help formatter and one-line errors
# ----------------------------------------------------------------------------------------------------------------------

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every command's --help gives each flag's default once: the parser's value, unless the help text says the
    default itself (a default of None is explained there: the recipe's, the arch's, ...) or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, "") or "default" in (action.help or "").lower():
            return action.help
        return super()._get_help_string(action)


class Renamed(argparse.Action):
    """A flag that was renamed: refused in one line naming the new one (`new`) and why (`why`)."""

    def __init__(self, option_strings: list[str], dest: str, new: str, why: str = "", **kwargs: object):
        super().__init__(option_strings, dest, nargs="?", **kwargs)
        self.new, self.why = new, why

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        parser.error(f"{'/'.join(self.option_strings)} is now {self.new}" + (f" ({self.why})" if self.why else ""))


def run_command(main: Callable[[argparse.Namespace], object], parser: argparse.ArgumentParser,
                argv: Sequence[str] | None = None) -> object:
    """`main(parser.parse_args(argv))`; bad input (ValueError, FileNotFoundError, FloatingPointError: a non-finite
    loss) ends the process with one line 'error: ...' and exit status 1."""
    args = parser.parse_args(argv)
    try:
        return main(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        sys.exit(f"error: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
