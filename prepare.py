"""Preparing a dataset for fast training: `python prepare.py` (support module: the method does not need it).

Videos as downloaded cost about 100 ms of CPU per training sample (keyframes seconds apart, B-frames), ten times what
one core can spend when 16 cores feed a GPU. `prepare_dataset` writes a dataset again in the same layout (lists,
classes, folders), every source decoded once into MMAction2 frame folders (--format frames, the least CPU per sample)
or densely keyed H.264 (--format video, the least disk) at the short side the recipes read, in parallel, resumable
after a kill, broken files reported (DIR2/NAME/prepare_report.json) and left out; `worker_cpu_ms` measures what a
DataLoader worker pays per training sample, before and after.

    python prepare.py --data-root DIR --dataset k400 --out DIR2 [--format video --gop 16]
    python train.py --data-root DIR2 --target k400 ...
"""
from __future__ import annotations

import argparse
import ctypes
import functools
import json
import multiprocessing
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np
import torch
from PIL import Image

import data
import transforms
import webscale

PREPARE_FORMATS = ("frames", "video")
PREPARE_REPORT = "prepare_report.json"   # DIR2/NAME/: the settings, the broken files and why, the figures
PREPARE_CRF = 18            # x264 CRF of re-encoded videos (cut_video's); --quality replaces it with --format video
PREPARE_JPEG_QUALITY = 90   # JPEG quality of frames and web images; --quality replaces it with --format frames
# the training pipelines `prepare` measures (models.ARCHS tsn_r50 / slowonly_r50_4x16)
PREPARE_PIPELINES = {"TSN 3 seg": ("tsn", data.Sampling(1, 1, 3)), "SlowOnly 4x16": ("3d", data.Sampling(4, 16, 1))}


# ----------------------------------------------------------------------------------------------------------------------
# 1. Preparing a dataset, and the command line
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class PrepareConfig:
    """How `prepare_dataset` writes a dataset (MMAction2's advice: resize, re-encode densely or extract frames).

    format: 'frames' (frame folders img_00001.jpg ..., JPEG `jpeg_quality`) or 'video' (H.264 yuv420p, libx264 CRF
    `crf`, a keyframe every `gop` frames, 0 = every frame, no B-frames, x264's fastdecode tuning: no CABAC, no
    deblocking). short_side: larger frames are resized to it (transforms.Resize, the training pipeline's first step,
    which then has nothing left to do). quality: CRF with format 'video', JPEG quality with format 'frames' (None:
    PREPARE_CRF / PREPARE_JPEG_QUALITY). workers: processes; measure: training samples timed before and after.
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


def prepare_dataset(data_root: str | Path, name: str, out: str | Path, cfg: PrepareConfig) -> dict:
    """Write dataset `name` of `data_root` under `out` in the same layout, ready to train from fast -> the report.

    1. each sample of every split's list becomes one output per source file at the same path under `out`: videos
       become frame folders (--format frames, the path without its extension; a video with frame scores stays a
       video: Sec. 3.5 snippets read video frames) or .mp4 videos; windows' videos and raw pieces are always
       re-encoded whole (frame k stays at k / fps); images become resized .jpg; frame folders are copied (resized);
    2. every source is decoded once, in `cfg.workers` processes; an output is written under a temporary name, fsynced
       and renamed, so after a kill (SIGKILL included) the same call writes only the rest: an uninterrupted run's;
    3. a source that fails (unreadable, truncated) is listed with the reason in OUT/NAME/prepare_report.json and its
       samples are left out of the lists; nothing under data_root changes;
    4. the lists (same lines, new paths; frame folders 'PATH COUNT LABEL'), class names, sidecars are written;
    5. CPU ms per training sample (`worker_cpu_ms`, PREPARE_PIPELINES at crop short_side * 224 / 256) on the first
       `cfg.measure` training samples before and after, and the disk per hour of video, are printed.
    """
    data_root, out = Path(data_root), Path(out)
    _check_prepare(data_root, out, cfg)
    spec = data.resolve_dataset(data_root, name)
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
    report["cpu_ms_per_sample"] = _measure_prepared(spec, data.resolve_dataset(out, name), cfg, kept.get("train", []))
    webscale.write_atomic(report_path, json.dumps(report, indent=1) + "\n")
    _print_prepare_summary(report, report_path)
    return report


def worker_cpu_ms(dataset: torch.utils.data.Dataset, count: int) -> list[float]:
    """CPU milliseconds (process time) of reading each of items 0..count-1 of `dataset` in ONE DataLoader worker, as
    a training worker reads them (one torch thread, webscale.WORKER_CODEC_THREADS decoder threads), after one
    untimed read of item 0 (imports, first file open)."""
    loader = torch.utils.data.DataLoader(range(count + 1), batch_size=None, num_workers=1,   # collate_fn: in the worker
                                         collate_fn=functools.partial(_cpu_seconds, dataset))
    return [1000.0 * t for t in list(loader)[1:]]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("prepare.py", formatter_class=webscale.HelpFormatter, description="Write a dataset "
                                "again under --out in the same layout (lists, classes, folders), as frame folders or "
                                "densely keyed H.264 at the recipes' short side, so that training reads it fast; "
                                "broken files are reported in OUT/NAME/prepare_report.json.")
    g = p.add_argument_group("what")
    g.add_argument("--data-root", required=True, help="folder holding the dataset (as train.py's --data-root)")
    g.add_argument("--dataset", required=True, help="dataset name under --data-root: a plain folder NAME/ or a "
                   "layout (k400, k200, ucf101, hmdb51, gg, ig-img, web-img, ig-vid, k200-raw, k400-untr; "
                   "NAME:filtered for a web source's filtered list)")
    g.add_argument("--out", required=True, help="folder to write to (then train with --data-root OUT); the same "
                   "command continues an interrupted run")
    g = p.add_argument_group("how")
    g.add_argument("--format", choices=PREPARE_FORMATS, default="frames", help="frames: JPEG frame folders, the "
                   "least CPU per sample, ~2.1 GB per hour of 340x256 video; video: H.264 re-encoded, ~0.5 GB/h "
                   "with --gop 16, ~0.8 all-intra (RESULTS.md 'Feeding the GPU')")
    g.add_argument("--short-side", type=int, default=256, help="resize frames larger than this to this short side "
                   "(256: crop 224; 320 for the --crop-size 280 models)")
    g.add_argument("--gop", type=int, default=16, help="--format video: a keyframe every N frames, 0: every frame "
                   "(all-intra)")
    g.add_argument("--quality", type=int, default=None, help=f"x264 CRF with --format video (default {PREPARE_CRF}; "
                   f"lower = better), JPEG quality with --format frames (default {PREPARE_JPEG_QUALITY})")
    g.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: the number of "
                   "cores)")
    g.add_argument("--measure", type=int, default=8, help="training samples whose CPU time is measured before and "
                   "after (0: none)")
    return p


def main(args: argparse.Namespace) -> dict:
    cfg = PrepareConfig(args.format, args.short_side, args.gop, args.quality, args.workers, args.measure)
    return prepare_dataset(args.data_root, args.dataset, args.out, cfg)


# ----------------------------------------------------------------------------------------------------------------------
# 2. Helpers: the plan, the pool of workers and what each writes, the lists and the report
# ----------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Job:
    """One source file (or frame folder) -> one output: form 'video' (an .mp4), 'frames' (a frame folder decoded
    from a video), 'image' (a JPEG) or 'folder' (a frame folder copied, resized when larger; num_frames frames)."""
    form: str
    src: str
    dst: str
    num_frames: int = 0


def _check_prepare(data_root: Path, out: Path, cfg: PrepareConfig) -> None:
    """The flags of `prepare`, each with a one-line error naming it."""
    if cfg.format not in PREPARE_FORMATS:
        raise ValueError(f"--format must be one of {', '.join(PREPARE_FORMATS)}, got {cfg.format!r}")
    video = cfg.format == "video"
    checks = (("--short-side", cfg.short_side, data.MIN_IMAGE_SIDE, None), ("--gop", cfg.gop, 0, None),
              ("--workers", cfg.workers, 1, None), ("--measure", cfg.measure, 0, None),
              ("--quality", cfg.crf if video else cfg.jpeg_quality, int(not video), 51 if video else 100))
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
    if not report_path.is_file():
        webscale.write_atomic(report_path, json.dumps({"settings": cfg.settings(), "complete": False}) + "\n")
        return
    try:
        old = json.loads(report_path.read_text()).get("settings")
    except (json.JSONDecodeError, AttributeError):
        old = None
    if old != cfg.settings():
        raise ValueError(f"{report_path}: this --out was prepared with other settings ({old}); run with "
                         f"those or choose another --out")


def _prepare_plan(spec: data.DatasetSpec, data_root: Path, out: Path, cfg: PrepareConfig
                  ) -> tuple[list[dict], dict[str, _Job], dict[str, str]]:
    """Per split: its list, samples and their jobs; the jobs by output path; sources that cannot be written."""
    lists, jobs, failed = [], {}, {}
    for split, s in spec.splits.items():
        if not s.list_file.is_file():
            print(f"prepare: split {split}: {s.list_file} not found, skipped")
            continue
        dst_prefix = out / s.prefix.relative_to(data_root)
        blank = s.list_file.suffix.lower() != ".json" and not s.list_file.read_bytes().strip()
        samples = webscale.SampleList.from_samples([]) if blank else \
            webscale.read_list(s.list_file, s.prefix, len(spec.classes))
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


def _sample_jobs(s: webscale.Sample, rel: str, dst_prefix: Path, cfg: PrepareConfig) -> tuple[str, list[_Job]]:
    """A sample's path in the prepared list and the outputs it needs (see `prepare_dataset`, step 1)."""
    p = Path(rel)
    if s.kind == "image":
        new = p if p.suffix.lower() in (".jpg", ".jpeg") else p.with_suffix(".jpg")
        return new.as_posix(), [_Job("image", str(s.path), str(dst_prefix / new))]
    if s.kind == "frames":
        return rel, [_Job("folder", str(s.path), str(dst_prefix / p), s.num_frames)]
    if s.kind == "raw":
        parts = [webscale.PART_TMPL.format(k) for k in range(s.num_parts)]
        return rel, [_Job("video", str(s.path / part), str(dst_prefix / p / part)) for part in parts]
    if cfg.format == "frames" and s.kind in ("video", "untrimmed") and s.frame_scores is None:
        return p.with_suffix("").as_posix(), [_Job("frames", str(s.path), str(dst_prefix / p.with_suffix("")))]
    return p.with_suffix(".mp4").as_posix(), [_Job("video", str(s.path), str(dst_prefix / p.with_suffix(".mp4")))]


def _run_jobs(jobs: list[_Job], cfg: PrepareConfig) -> list[dict]:
    """Every job in a pool of cfg.workers processes (results in job order), a progress line at most every second."""
    results: list[dict] = [{} for _ in jobs]
    if not jobs:
        return results
    start, last = time.perf_counter(), 0.0
    with multiprocessing.get_context("fork").Pool(min(cfg.workers, len(jobs)), initializer=_die_with_parent) as pool:
        items = [(k, job, cfg) for k, job in enumerate(jobs)]
        for n, (k, result) in enumerate(pool.imap_unordered(_prepare_file, items), start=1):
            results[k] = result
            now = time.perf_counter()
            if now - last >= 1.0 or n == len(jobs):
                rate = n / max(now - start, 1e-9)
                print(f"  {n}/{len(jobs)} files, {rate:.1f} files/s, ETA {(len(jobs) - n) / rate:.0f} s", flush=True)
                last = now
    return results


def _write_prepared_list(x: dict, done: dict[str, dict], failed: dict[str, str], out: Path) -> dict:
    """The list of one split with the samples whose outputs all exist (same order and fields, new paths; frame
    folders with their counts) and its frame-score sidecar; -> {list, samples, written, kept (source indices)}."""
    rows, kept, scores = [], [], {}
    as_json = x["dst_list"].suffix.lower() == ".json"
    for i, s, rel, jobs in x["entries"]:
        if any(j.src in failed or j.dst not in done for j in jobs):
            continue
        rows.append(_entry(s, rel, done[jobs[0].dst]["frames"] if jobs[0].form in ("frames", "folder") else None,
                           as_json))
        kept.append(i)
        if s.frame_scores is not None:
            scores[rel] = s.frame_scores
    webscale.write_atomic(x["dst_list"], json.dumps(rows, indent=1) + "\n" if as_json else
                          "".join(r + "\n" for r in rows))
    side = webscale.frame_scores_path(x["spec"].list_file)
    if side.is_file():
        webscale.write_frame_scores(webscale.frame_scores_path(x["dst_list"]), scores,
                                    fps=json.loads(side.read_text()).get("fps", 1.0))
    return {"list": _rel(x["dst_list"], out), "samples": len(x["samples"]), "written": len(rows), "kept": kept}


def _entry(s: webscale.Sample, rel: str, count: int | None, as_json: bool) -> str | dict:
    """Sample s at path rel as a .txt list line or an MMAction2 .json entry (count: a frame folder's frame count)."""
    if count is not None:
        return {"frame_dir": rel, "total_frames": count, "label": s.label} if as_json else f"{rel} {count} {s.label}"
    if s.kind == "raw":
        return {"video_dir": rel, "label": s.label, "num_clips": s.num_parts, "positive_clip_inds": list(s.pos_clips)} \
            if as_json else f"{rel} {s.label} {s.num_parts} " + " ".join(str(p) for p in s.pos_clips)
    if s.kind == "windows":
        return {"filename": rel, "label": s.label, "windows": [list(w) for w in s.windows]} if as_json else \
            f"{rel} {s.label} " + " ".join(f"{a!r}:{b!r}" for a, b in s.windows)
    return {"filename": rel, "label": s.label} if as_json else f"{rel} {s.label}"


def _copy_dataset_files(spec: data.DatasetSpec, data_root: Path, out: Path, lists: list[dict]) -> None:
    """The class names (the file the dataset's were read from, else the layout's first candidate) and, for a plain
    folder, its other top-level files (motion.json ...) that are not lists written here."""
    if spec.layout == "plain":
        written = {x["dst_list"].name for x in lists} | {webscale.frame_scores_path(x["dst_list"]).name for x in lists}
        for f in sorted(Path(spec.root).iterdir()):
            if f.is_file() and f.name not in written and f.name != PREPARE_REPORT and webscale.TMP_TAG not in f.name:
                webscale.write_atomic(out / spec.name / f.name, f.read_bytes())
        return
    rels = data.LAYOUTS[spec.layout]["classes"]
    found = next((r for r in rels if (data_root / r).is_file()), None)
    text = (data_root / found).read_bytes() if found else "".join(c + "\n" for c in spec.classes).encode()
    webscale.write_atomic(out / (found or rels[0]), text)


def _disk_figures(jobs: dict[str, _Job], done: dict[str, dict]) -> dict:
    """Files and bytes written; hours of video and GB per hour of video, prepared and as the sources are."""
    video = [r for dst, r in done.items() if jobs[dst].form in ("video", "frames")]
    hours = sum(r["seconds"] for r in video) / 3600
    per_hour = (lambda key: round(sum(r[key] for r in video) / 1e9 / hours, 3) if hours else None)
    return {"files": len(done), "bytes": sum(r["bytes"] for r in done.values()), "video_hours": round(hours, 4),
            "gb_per_video_hour": per_hour("bytes"), "source_gb_per_video_hour": per_hour("src_bytes")}


def _measure_prepared(src: data.DatasetSpec, dst: data.DatasetSpec, cfg: PrepareConfig, kept: list[int]) -> dict:
    """Mean CPU ms per training sample (`worker_cpu_ms`) of PREPARE_PIPELINES on the first cfg.measure kept training
    samples, as they were (before) and prepared (after); the same items, frames and crops (same seeds)."""
    if not cfg.measure or not kept or "train" not in dst.splits:
        return {}
    crop = round(cfg.short_side * 224 / 256)
    side = transforms.short_side_for(crop)
    before = data.load_split(src, "train").subset(kept[:cfg.measure])
    after = data.load_split(dst, "train")[:cfg.measure]
    figures = {}
    for label, (family, sampling) in PREPARE_PIPELINES.items():
        for when, samples in (("before", before), ("after", after)):
            ds = data.VideoDataset(samples, sampling, transform=transforms.train_transform(family, crop, uint8=True),
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


def _cpu_seconds(dataset: torch.utils.data.Dataset, k: int) -> float:
    """k = 0: an untimed read of item 0 of `dataset`; k >= 1: the process CPU seconds of reading item k - 1."""
    start = time.process_time()
    dataset[max(k - 1, 0)]
    return time.process_time() - start


def _die_with_parent() -> None:
    """Pool initializer: the kernel kills this worker when its parent dies (Linux PR_SET_PDEATHSIG), so a killed
    prepare leaves no worker writing on; elsewhere a no-op (the temporary names keep writers apart anyway)."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError, TypeError):
        pass


def _rel(path: str | Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()

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
    dst, src = Path(job.dst), Path(job.src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    stale = f".{dst.name}{webscale.TMP_TAG}"
    for name in os.listdir(dst.parent):
        if name.startswith(stale):
            _remove(dst.parent / name)
    tmp = dst.parent / f"{stale}{os.getpid()}"
    try:
        if job.form == "video":
            _encode_video(src, tmp, cfg)
        elif job.form == "image":
            _write_image(data.read_image(src, cfg.short_side), src, tmp, cfg)
        elif job.form == "frames":
            tmp.mkdir()
            _transcode(src, cfg.short_side,
                       lambda rgb, n, rate: _write_image(rgb, None, tmp / data.FRAME_TMPL.format(n + 1), cfg))
        else:
            tmp.mkdir()
            for name in (data.FRAME_TMPL.format(n) for n in range(1, job.num_frames + 1)):
                _write_image(data.read_image(src / name), src / name, tmp / name, cfg)
        webscale.fsync(tmp)
        try:
            os.rename(tmp, dst)
        except OSError:   # a folder another writer (a worker of a killed run) finished first: same content
            if not dst.is_dir():
                raise
        webscale.fsync(dst.parent)
    finally:
        _remove(tmp)


def _transcode(src: Path, short_side: int, write: Callable[[np.ndarray, int, Fraction], None]) -> int:
    """Decode every frame of video `src` once (one decoder thread) -> write(rgb (H, W, 3), n, rate) for n = 0, 1, ...,
    frames larger than short_side resized to it; returns the count. A video that decodes to fewer frames than its
    container claims (more than one frame less; 2 % without a frame count) is truncated: a ValueError."""
    with webscale.open_video(src) as (container, stream):
        stream.codec_context.thread_count = 1
        rate = webscale.stream_rate(src, stream)
        claimed = webscale.metadata_frames(container, stream) or 0
        slack = 1 if stream.frames else max(1, claimed // 50)
        n = 0
        for frame in container.decode(stream):
            write(_fit_short_side(webscale.to_rgb(frame), short_side), n, rate)
            n += 1
    if n == 0:
        raise ValueError(f"{src}: no decodable video frames")
    if n < claimed - slack:
        raise ValueError(f"{src}: truncated: decodes to {n} of the {claimed} frames its container claims")
    return n


def _encode_video(src: Path, dst: Path, cfg: PrepareConfig) -> None:
    """Re-encode `src` as H.264 yuv420p in an mp4 at dst (webscale.VideoWriter): libx264 in one thread without mbtree
    (reproducible bytes), CRF cfg.crf, fastdecode, a keyframe every cfg.gop frames (0: all-intra), no B-frames, no
    scene-cut keyframes, same frame rate, sides cropped to even; frame n at pts n (frame numbers and k / fps kept)."""
    keyint, writer = cfg.gop or 1, None
    options = {"crf": str(cfg.crf), "preset": "veryfast", "tune": "fastdecode", "threads": "1",
               "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes=0:threads=1:no-mbtree=1"}

    def write(rgb: np.ndarray, n: int, rate: Fraction) -> None:
        nonlocal writer
        rgb = rgb[:max(2, rgb.shape[0] // 2 * 2), :max(2, rgb.shape[1] // 2 * 2)]   # yuv420p: even sides
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        writer = writer or webscale.VideoWriter(dst, rate, frame, options)
        writer.write(frame)

    try:
        _transcode(src, cfg.short_side, write)
    except BaseException:
        if writer is not None:
            writer.close(flush=False)
        raise
    writer.close()


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
    webscale.fsync(dst)


def _output_figures(job: _Job) -> dict:
    """Frames, seconds of video, bytes of a finished output and bytes of its source."""
    dst, src = Path(job.dst), Path(job.src)
    sizes = (lambda p: sum(f.stat().st_size for f in p.iterdir()) if p.is_dir() else p.stat().st_size)
    if job.form == "video":
        with webscale.open_video(dst) as (container, stream):
            frames = webscale.metadata_frames(container, stream) or 0
            seconds = frames / float(webscale.stream_rate(dst, stream))
    elif job.form == "frames":
        frames = data.count_frames(dst)
        seconds = frames / data.video_fps(src)
    else:
        frames, seconds = (1 if job.form == "image" else job.num_frames), 0.0
    return {"frames": frames, "seconds": seconds, "bytes": sizes(dst), "src_bytes": sizes(src)}


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


if __name__ == "__main__":
    webscale.run_command(main, get_args_parser())
