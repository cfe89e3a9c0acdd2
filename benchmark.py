"""Throughput benchmark of the data pipeline and the models (a command, not a test).

    python benchmark.py                                   # data + model on this machine
    python benchmark.py --what data --compare-venv /work/venvs/bench --repeats 5
    python benchmark.py --video gen --what data           # the generated K400-like clip instead of the demo
    python benchmark.py --what model --threads 2
    python benchmark.py --what loader                     # 2-worker training loaders, decoder threads per worker
    python benchmark.py --what transforms --samples 50    # training augmentation alone, ms per frame, 1 thread
    python benchmark.py --what model --precisions fp32,bf16 --models tsn_r50,slowonly_r50_4x16
    python benchmark.py --what scale                      # web-scale figures; minutes
    python benchmark.py --what scale --scale-lines 20000 --scale-images 400 --scale-images-small 100 \
        --dedup-web 10000 --dedup-val 1000 --scale-redecide 20000   # the same figures in seconds
    python benchmark.py --what scale --scale-parts redecide   # filter.py re-deciding 3.7M records; a minute
    python benchmark.py --what soak                       # 10,000 clips through DataLoader workers; < 10 min
    python benchmark.py --what soak --soak-clips 1000 --soak-every 100
    python benchmark.py --what gpu                        # the one command on a GPU machine, < 5 min
    python benchmark.py --what small-data                 # plain CNN vs ours on 8 clips per class; ~30 min
    python benchmark.py --what small-data --quick         # the same table from short runs, a few minutes
    python benchmark.py --what feed                       # CPU per training sample, downloaded vs prepared; minutes

What it measures (paper context: the training recipes of the appendix "Implementation Details", TSN with
3 segments, Sec. 5.1, and SlowOnly 4x16, Sec. 5.2; Table 11 K400-format clips, 340x256, 10 s):

1. Data: the TRAINING pipelines exactly as train.py's `make_dataset` builds them (data.VideoDataset,
   data.Sampling from the architecture's spec, transforms.train_transform) -> clips/s in one process,
   against the same pipeline with the naive reader (data.read_frames_naive: decode and convert every
   frame) on THE SAME sampled indices and the same crops (checked: identical tensors). Decode + RGB only
   (no transform) is timed too, for our reader, the naive one and, with --compare-venv, decord
   (VideoReader + get_batch) and MMAction2 1.2's PyAVInit + PyAVDecode, run by a small script in that
   virtualenv's python (third-party readers are never imported by the project). Their frames are checked
   to be the same frames as ours (nearest frame index and mean |difference|).
   Transforms (only with --what transforms): the training augmentation alone (no decoding) on the video's
   first frames, one torch thread: CPU ms per output frame of train_transform(uint8=True) (TSN 3 frames,
   SlowOnly 4x16 and 8x8) against the cv2-exact crop resize it replaced, same seeds, alternated.
2. Loader: the same training pipelines behind a DataLoader with --workers (2) persistent workers, as train.py
   runs them: clips/s with one FFmpeg decoder thread per worker (webscale.WORKER_CODEC_THREADS, the default)
   against automatic decoder threading in every worker, alternated round by round.
3. Model: training samples/s (forward + backward + SGD step) at --batch (2) for every --precisions entry
   (fp32; bf16 and fp16 under torch.autocast, fp16 with a GradScaler; a precision the device cannot run, or
   runs without fast kernels (fp16 on most CPUs: its matmul under a quarter of fp32's), is reported and
   skipped), each with contiguous and channels_last weights (channels_last_3d and a channels_last_3d input
   for 3D models), on the CPU and on CUDA when a GPU is visible; FLOPs per sample counted analytically
   (conv/linear MACs from forward hooks, x2 FLOPs per MAC, x3 for forward + backward), and the fraction of
   the measured matmul FLOP/s IN THE SAME DTYPE (torch.mm fp32 / bf16 / fp16) that training reaches.
4. Scale (only with --what scale): a synthetic crawl that costs little disk (hard links) --
   a) data.load_split of a --scale-lines (2M) image list in a forked child: lines per CPU second and
      resident bytes per sample (VmRSS before/after); then --readers (4) processes forked from it, as
      DataLoader workers are, read every sample; each reports the private memory it gained per sample
      (/proc/self/smaps_rollup Private_Clean + Private_Dirty) after reading label and path, and after also
      turning the path into a string (what opening the file does);
   b) filter.py run as a user runs it (subprocess, --workers, --device cpu, OMP_NUM_THREADS=1: one
      thread per process) on --scale-images (20k) and --scale-images-small (5k) 96x128 JPEGs (hard links
      of 64 generated photos-like images) with an untrained tsn_tiny teacher over 400 classes: CPU per image
      of the whole process tree (resource.getrusage(RUSAGE_CHILDREN) in a wrapper process), against decode
      + the filter's test transform alone and the teacher's forward alone (batch 16), both one thread in
      this process; the marginal CPU per image (difference of the two runs, no start-up); peak RSS
      (ru_maxrss of the largest process) at the two sizes and their ratio;
   c) de-duplication: filter.find_duplicates on random float32 web (--dedup-web, 1M) x val (--dedup-val,
      50k) features of --dedup-dim (256) with planted duplicates: wall and CPU time, ns per pair, the time
      scaled to 1M x 50k, and the peak RSS above the inputs;
   d) re-deciding: a finished filter.py output of --scale-redecide (3.7M, the paper's GG-k400 crawl) image
      records is written directly (its scores.npz columns and samples.jsonl, random probabilities, as a
      scoring run leaves them; the teacher file does not exist), then `filter.py --threshold 0.3` on it as a
      user runs it (subprocess, OMP_NUM_THREADS=1): wall and CPU seconds of the whole command (start-up, the
      source list, the decision, the outputs, the figures), seconds per million records, extrapolated to
      3.7M, and its peak RSS.
5. Soak (only with --what soak): --soak-clips (10,000) training clips of --soak-arch (tsn_r50)
   through train.make_dataset (the sampling and transforms train.py uses) and a DataLoader with --workers
   persistent workers, from 3 generated videos (one of them 640x360, so resizing runs) under --soak-files
   (1000) distinct hard-linked names read in order, pass after pass (as epochs revisit files); every
   --soak-every clips the RSS, PSS and anonymous PSS (/proc/PID/smaps_rollup Pss_Anon: heap, arrays, decoder
   buffers, each page shared by main and workers counted once) of the main process and its workers; the
   verdict fits a line to the anonymous PSS after the warm-up (two passes over the files, so every worker has every
   file in its caches, and at least half the run) and calls it flat when the growth it predicts over the
   rest is at most max(5 %, 16 MiB) (the allocators' working size moves by a few %). Not PSS itself: its
   file-backed part (the shared libraries' pages, tens of MiB) moves whenever OTHER processes of the machine map
   or unmap the same libraries, which on a shared machine read as growth or shrinkage of ours. With
   --soak-files >= --soak-clips every clip is a new file: the curve then shows how memory grows with the
   number of distinct files.
6. GPU (only with --what gpu; on a machine without a CUDA device it says so in one line and exits 0): each part
   runs on its own (one that fails prints one line, the others still run, the exit code is 1):
   a) the bf16 peak: NVIDIA's dense bf16 tensor-core figure for the device's name (BF16_PEAKS: A100, H100, H200)
      and the measured torch.mm bf16 (the figure used when the name is not in the table);
   b) TSN-R50 and SlowOnly-R50 4x16 training samples/s (as in 3, bf16 autocast, channels_last /
      channels_last_3d, cudnn.benchmark, the README's videos per GPU: 32 and 16) and their model FLOP utilisation
      (analytic training FLOPs x samples/s over the peak of a);
   c) the same training pipelines behind a DataLoader with a worker on every core and pinned batches, on a
      prepared clip (340x256, 30 fps, 10 s, a keyframe every 16 frames, generated with PyAV): samples/s against
      the model's, and the cores that feed the GPU;
   d) `train.py --epochs 1 --amp bf16` on generated demo data (tsn_tiny, a subprocess): the CUDA path end to end;
   e) whether PyAV's FFmpeg decodes H.264 on the GPU (av.codec.hwaccel.HWAccel("cuda"), no software fallback):
      frames/s and CPU ms per frame to RGB against the CPU decoder (1 thread, auto threads), on the prepared clip
      and the demo video, and the frames' mean difference;
   f) NCCL: torch.distributed.is_nccl_available() and a one-rank all_reduce.
7. Small data (only with --what small-data): does the demo recipe learn few labelled clips as well as a plain
   CNN? It generates the dataset of the small-data comparison (synthetic.py --width 64 --height 64
   --train-per-class 8 --val-per-class 25: 8 classes, 64 labelled clips, 200 val clips; or reuses --small-dir),
   runs `omnisource.py --sources synth-web-img` as a user types it (baseline = teacher with train.py's defaults,
   filter.py, the Table 1 student with the filtered web images at 2:1) and trains the plain CNN it is compared
   with (`PlainCNN`: four 3x3 conv layers on 48x48 frames, AdamW, --small-steps steps of 8 target clips, and
   + 4 clips of the same filtered web images per step in the "with web" run). One table: top-1 on the 200 val
   clips, target only and with filtered web images, and the minutes each run took. The accuracies are
   measured figures of one seed (--seed): they move by a few points from seed to seed.
8. Feed (only with --what feed): the training pipelines of TSN-R50 3 segments, SlowOnly-R50 4x16 and 8x8, built by
   train.make_dataset, on the Kinetics clips of ../shared/data/real_videos/ (mmaction2_demo.mp4, mmaction2_test.mp4;
   --video: that clip instead) as downloaded and after each `prepare.prepare_dataset` format (video with a keyframe
   every 16 frames, all-intra video, frame folders): CPU ms per sample in one DataLoader worker
   (`prepare.worker_cpu_ms`: process time, one torch thread, one decoder thread), the same samples decoded without the
   transform (decode) and the transform alone on decoded frames (augment), whole-DataLoader samples/s with 1 and 2
   workers, the disk per hour of video, and the cores one GPU needs at the samples/s it trains (FEED_RATE_SOURCE)
   against the goals (FEED_GOALS: 16 cores per GPU).

Timing: time.perf_counter (wall) and time.process_time (CPU of every thread of the process), one warm-up,
then --repeats rounds; the figure is the median over rounds. In the data part the methods are
interleaved round by round (other processes load all of them alike) and torch uses 1 thread, as in a
DataLoader worker (PyAV/FFmpeg codec threads are not torch's: ours and decord's auto threading stay on).
The model part uses --threads torch threads (default: every core). The 1-, 5- and 15-minute load
averages are printed with the figures: on a shared machine, read the CPU-time columns too.
Helpers are at the bottom of the file.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import gc
import io
import json
import math
import os
import pstats
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import data
import filter as filter_mod
import models
import prepare
import synthetic
import train
import transforms
import webscale

ROOT = Path(__file__).resolve().parent
DEMO_VIDEO = ROOT.parent / "shared" / "data" / "real_videos" / "mmaction2_demo.mp4"
# the two training pipelines of the paper's target models: (label, architecture name in models.ARCHS)
PIPELINES = (("TSN 3 seg", "tsn_r50"), ("SlowOnly 4x16", "slowonly_r50_4x16"))
BIG_MODELS = ("tsn_r50", "slowonly_r50_4x16")
TINY_MODELS = ("tsn_tiny", "slowonly_tiny")
NUM_CLASSES = 400   # Kinetics-400 head for every model timed
GOAL_VS_NAIVE = 2.0
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}   # model: autocast dtypes
# small-data: the dataset of the comparison (synthetic.py --width 64 --height 64 --train-per-class 8 --val-per-class 25)
SMALL_DATA = synthetic.SynthConfig(width=64, height=64, train_per_class=8, val_per_class=25)
# feed: the real Kinetics-400 clips, the prepare formats, what one GPU trains per second and the CPU goals
REAL_VIDEOS = (DEMO_VIDEO, DEMO_VIDEO.with_name("mmaction2_test.mp4"))
FEED_FORMATS = (("video, keyframe every 16", prepare.PrepareConfig("video", gop=16)),
                ("video, all-intra", prepare.PrepareConfig("video", gop=0)),
                ("frames", prepare.PrepareConfig("frames")))
FEED_RATE_SOURCE = ("an A100 trains ResNet-50 at ~2,600 images/s with AMP and channels-last (timm's GitHub thread "
                    "#1491), an H100/H200 about twice that: TSN-R50 with 3 segments (3 images per sample) ~1,700 "
                    "samples/s, SlowOnly-R50 4x16 (2.2x TSN's FLOPs per sample) ~770, 8x8 (twice 4x16's frames) ~385")
FEED_PIPELINES = (("TSN 3 seg", "tsn_r50", 1700), ("SlowOnly 4x16", "slowonly_r50_4x16", 770),
                  ("SlowOnly 8x8", "slowonly_r50_8x8", 385))   # (label, models.ARCHS name, samples/s of one GPU)
FEED_CORES_PER_GPU = 16
FEED_GOALS = {"TSN 3 seg": 9.0, "SlowOnly 4x16": 20.0}   # ms of CPU per sample: 16 cores feed one GPU
# gpu: the paper's models and their videos per GPU (the README's 8-GPU commands: TSN 32, SlowOnly 16)
GPU_MODELS = (("tsn_r50", 32), ("slowonly_r50_4x16", 16))
# gpu: dense (no sparsity) bf16 tensor-core peaks of NVIDIA's data sheets, TFLOP/s; the first name part found in
# torch.cuda.get_device_name wins (so the NVL and PCIe boards before their SXM namesakes)
BF16_PEAKS = (("H200 NVL", 835.0), ("H200", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0),
              ("A100", 312.0))
# gpu: the demo data of the one-epoch train.py run (the test suite's reduced demo: 4 classes, 32 train videos)
GPU_DEMO = synthetic.SynthConfig(seed=1, num_classes=4, train_per_class=8, val_per_class=6, web_images_per_class=10,
                                 web_videos_per_class=3, untrimmed_per_class=1)
SCALE_CLASSES = 400   # scale: classes of the synthetic lists and of the tiny teacher (a K400 teacher)
RAW_FEATURE_DIM = 2048   # scale: ResNet-50 frame features before the de-duplication's whitening (Sec. 3.3)
# scale: runs a command and prints the CPU seconds and largest ru_maxrss of its whole process tree
RUSAGE_WRAPPER = r"""
import json, resource, subprocess, sys
rc = subprocess.run(sys.argv[1:]).returncode
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print('RUSAGE ' + json.dumps({'rc': rc, 'cpu': ru.ru_utime + ru.ru_stime, 'maxrss': ru.ru_maxrss * 1024}))
"""


@dataclass
class Timing:
    """Per-round measurements of one method: wall and CPU seconds for `units` clips or samples."""
    units: int
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, wall: float, cpu: float) -> None:
        self.wall.append(wall)
        self.cpu.append(cpu)

    @property
    def rate(self) -> float:   # units per wall second (median round)
        return self.units / statistics.median(self.wall)

    @property
    def cpu_ms(self) -> float:   # CPU milliseconds per unit (median round)
        return 1000.0 * statistics.median(self.cpu) / self.units

    @property
    def spread(self) -> float:   # (max - min) / median of the round times, in percent
        w = self.wall
        return 100.0 * (max(w) - min(w)) / statistics.median(w)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("benchmark.py", formatter_class=webscale.HelpFormatter, description="Speed and memory "
                                "figures of this machine (RESULTS.md holds one machine's).")
    g = p.add_argument_group("what")
    g.add_argument("--what", choices=("data", "loader", "model", "transforms", "scale", "soak", "small-data", "feed",
                                      "gpu", "all"),
                   default="all", help="part to run; 'all' is data + loader + model (the others run only when asked)")
    g.add_argument("--compare-venv", default=None, help="virtualenv with decord and mmaction2==1.2.0 "
                   "(e.g. /work/venvs/bench): their readers run there, in a subprocess")
    g.add_argument("--seed", type=int, default=0, help="seed of the generated inputs")
    g = p.add_argument_group("data, loader, transforms, model")
    g.add_argument("--video", default=None, help="H.264 clip to read (default: ../shared/data/real_videos/"
                   "mmaction2_demo.mp4 when present, else a generated one); 'gen' forces the generated "
                   "340x256, 30 fps, 10 s, GOP 250 clip")
    g.add_argument("--repeats", type=int, default=5, help="timed rounds per figure (the median is shown)")
    g.add_argument("--samples", type=int, default=8, help="data: distinct sampled clips per round; transforms: "
                   "clips per round")
    g.add_argument("--workers", type=int, default=2, help="loader: DataLoader worker processes")
    g.add_argument("--batch", type=int, default=2, help="model: batch size (videos per step)")
    g.add_argument("--threads", type=int, default=os.cpu_count(), help="model: torch.set_num_threads")
    g.add_argument("--big-steps", type=int, default=2, help="model: timed units for the R50 models instead of "
                   "--repeats (each of their steps takes seconds on a small CPU)")
    g.add_argument("--models", default=",".join(BIG_MODELS + TINY_MODELS), help="model: comma list of "
                   "architectures (models.ARCHS) to time")
    g.add_argument("--precisions", default="fp32,bf16,fp16", help="model: comma list of fp32, bf16, fp16 "
                   "(autocast; a precision the device cannot run is skipped)")
    g = p.add_argument_group("scale, soak")
    g.add_argument("--scale-parts", default="list,filter,dedup,redecide", help="scale: comma list of the parts to "
                   "run (list: parsing and readers, filter: filter.py CPU and peak RSS, dedup: de-duplication time, "
                   "redecide: filter.py re-deciding a finished run at another threshold)")
    g.add_argument("--scale-redecide", type=int, default=3_700_000, help="scale: records of the finished filter "
                   "run that is re-decided")
    g.add_argument("--scale-lines", type=int, default=2_000_000, help="scale: lines of the synthetic image list")
    g.add_argument("--readers", type=int, default=4, help="scale: forked readers touching every sample")
    g.add_argument("--scale-images", type=int, default=20_000, help="scale: images of the large filter run")
    g.add_argument("--scale-images-small", type=int, default=5_000, help="scale: images of the small filter "
                   "run (peak RSS compared with the large one)")
    g.add_argument("--dedup-web", type=int, default=1_000_000, help="scale: web feature rows to de-duplicate")
    g.add_argument("--dedup-val", type=int, default=50_000, help="scale: val feature rows")
    g.add_argument("--dedup-dim", type=int, default=256, help="scale: feature dimension given to "
                   "filter.find_duplicates")
    g.add_argument("--soak-clips", type=int, default=10_000, help="soak: training clips to decode")
    g.add_argument("--soak-every", type=int, default=500, help="soak: clips between memory samples")
    g.add_argument("--soak-files", type=int, default=1000, help="soak: distinct file names (hard links) the clips "
                   "cycle over; the verdict starts after two passes (and half the run), when per-file caches are full")
    g.add_argument("--soak-arch", default="tsn_r50", choices=sorted(models.ARCHS), help="soak: whose training "
                   "pipeline (sampling, crop size) decodes the clips")
    g.add_argument("--soak-batch", type=int, default=8, help="soak: DataLoader batch size")
    g = p.add_argument_group("small-data, feed")
    g.add_argument("--small-dir", default=None, help="small-data: folder of the generated dataset (made there when "
                   "it has no synth/classes.txt, kept afterwards; runs go to SMALL_DIR/work_seedN); default: a "
                   "temporary folder")
    g.add_argument("--small-steps", type=int, default=800, help="small-data: optimiser steps of the plain CNN")
    g.add_argument("--small-epochs", type=int, default=None, help="small-data: --epochs of every train.py run "
                   "(default: the demo recipe's)")
    g.add_argument("--quick", action="store_true", help="small-data: a quarter of the steps and epochs (the "
                   "table in a few minutes; lower accuracies); feed: one sample per clip, 4 per loader pass (the "
                   "table's rows in seconds, figures unreliable)")
    g.add_argument("--profile", action="store_true", help="data: also cProfile data.read_frames on the samples")
    return p


def main(args) -> None:
    if args.repeats < 1 or args.samples < 1 or args.batch < 1 or args.threads < 1:
        raise ValueError("--repeats, --samples, --batch and --threads must be >= 1")
    sizes = ("small_steps", "scale_lines", "readers", "scale_images", "scale_images_small", "dedup_web", "dedup_val",
             "dedup_dim", "soak_clips", "soak_every", "soak_batch", "soak_files")
    for name in sizes:
        if getattr(args, name) < 1:
            raise ValueError(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    if args.compare_venv and not (Path(args.compare_venv) / "bin" / "python").is_file():
        raise FileNotFoundError(f"--compare-venv {args.compare_venv}: expected a virtualenv with bin/python")
    if args.what == "gpu" and not torch.cuda.is_available():
        print(f"benchmark --what gpu: no CUDA device visible to torch {torch.__version__} (NCCL available: "
              f"{dist.is_nccl_available()}); nothing to measure on this machine")
        return
    print(f"omnisource benchmark: python {sys.version.split()[0]}, torch {torch.__version__}, "
          f"av {av.__version__}, numpy {np.__version__}; {os.cpu_count()} cores; {_load()}")
    tmp = Path(tempfile.mkdtemp(prefix="omnisource_bench_"))
    try:
        if args.what in ("data", "all"):
            video = _pick_video(args.video, tmp)
            bench_data(args, video, tmp)
        if args.what in ("loader", "all"):
            bench_loader(args, _pick_video(args.video, tmp))
        if args.what in ("model", "all"):
            bench_models(args)
        if args.what == "transforms":
            bench_transforms(args, _pick_video(args.video, tmp))
        if args.what == "scale":
            bench_scale(args, tmp)
        if args.what == "soak":
            bench_soak(args, tmp)
        if args.what == "gpu":
            bench_gpu(args, tmp)
        if args.what == "small-data":
            bench_small_data(args, tmp)
        if args.what == "feed":
            bench_feed(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------------
# 1. Data: training pipelines and readers on the same sampled indices
# ----------------------------------------------------------------------------------------------------------------------

def bench_data(args, video: Path, tmp: Path) -> None:
    """Time ours vs naive (pipelines and decode-only) and, optionally, decord / MMAction2 PyAV."""
    torch.set_num_threads(1)   # as in a DataLoader worker
    num_frames = data.count_frames(video)
    print(f"\n== Data: {video} ({_describe_video(video)}), {args.samples} sampled clips per round, "
          f"{args.repeats} rounds + 1 warm-up, torch threads 1")
    # 1. per pipeline: the dataset train.py builds, the index sets it samples, the naive twin
    cases = {label: _make_case(arch, video, num_frames, args) for label, arch in PIPELINES}
    ours, theirs = {}, {}
    script = tmp / "third_party.py"
    script.write_text(THIRD_PARTY_SCRIPT)
    cfg = {"video": str(video), "sets": {k: c["sets"] for k, c in cases.items()}}
    # 2. warm-up round (untimed): every method once on the first sample
    _round_ours(cases, ours, warmup=True)
    if args.compare_venv:
        _round_theirs(args.compare_venv, script, cfg | {"warmup": True}, theirs, tmp)
    # 3. timed rounds, methods interleaved
    load_before = _load()
    for _ in range(args.repeats):
        _round_ours(cases, ours, warmup=False)
        if args.compare_venv:
            _round_theirs(args.compare_venv, script, cfg | {"warmup": False}, theirs, tmp)
    print(f"load during the data rounds: before {load_before}; after {_load()}")
    _print_pipeline_table(cases, ours)
    _print_decode_table(cases, ours, theirs)
    if args.compare_venv:
        _print_frame_check(video, cases, tmp)
    if args.profile:
        _profile_reader(video, cases)


def bench_loader(args, video: Path) -> None:
    """Clips/s of train.py's loaders (persistent workers) with one decoder thread per worker vs FFmpeg's auto."""
    torch.set_num_threads(1)
    print(f"\n== Loader: {video}, {args.workers} persistent workers, batch 4, 48 clips per round, "
          f"{args.repeats} rounds per setting, settings alternated")
    default = webscale.WORKER_CODEC_THREADS
    rates = {}
    try:
        for _ in range(args.repeats):
            for threads in (default, 0):
                webscale.WORKER_CODEC_THREADS = threads        # read by workers forked after this line
                for label, arch in PIPELINES:
                    rates.setdefault((label, threads), []).append(_loader_rate(arch, video, args.workers))
    finally:
        webscale.WORKER_CODEC_THREADS = default
    print(f"| pipeline | {default} decoder thread(s) per worker | auto threads per worker | ratio |")
    print("| --- | --- | --- | --- |")
    for label, _ in PIPELINES:
        ours, auto = statistics.median(rates[label, default]), statistics.median(rates[label, 0])
        print(f"| {label} | {ours:.1f} clips/s | {auto:.1f} clips/s | {ours / auto:.2f}x |")


def _loader_rate(arch: str, video: Path, workers: int, batch_size: int = 4, clips: int = 48,
                 pin_memory: bool = False) -> float:
    """One warm-up pass, then one timed pass over `clips` clips of `video` through a fresh DataLoader."""
    spec = models.ARCHS[arch][1]
    sampling = data.Sampling(spec.clip_len, spec.frame_interval, spec.num_clips_train)
    ds = data.VideoDataset([webscale.Sample(video, 0, "video")] * clips, sampling,
                           transform=transforms.train_transform(spec.family, spec.crop_size, uint8=True))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, pin_memory=pin_memory,
                                         persistent_workers=workers > 0)
    for _ in loader:
        pass
    ds.set_epoch(1)
    start = time.perf_counter()
    clips = sum(len(x) for x, _, _ in loader)
    return clips / (time.perf_counter() - start)


def bench_transforms(args: argparse.Namespace, video: Path) -> None:
    """CPU ms per output frame of the training augmentation alone (no decoding), one thread: train.py's
    transforms.train_transform(uint8=True) against the cv2-exact pipeline it replaced, alternated round by round."""
    torch.set_num_threads(1)   # as in a DataLoader worker
    rounds, clips = args.repeats, args.samples
    frames = data.read_frames(video, range(8))
    print(f"\n== Transforms: frames of {video} ({frames.shape[2]}x{frames.shape[1]}), {clips} clips per round, "
          f"{rounds} rounds + 1 warm-up, alternated, torch threads 1; CPU ms per output frame (median round)")
    cases = [(label, models.ARCHS[arch][1]) for label, arch in PIPELINES + (("SlowOnly 8x8", "slowonly_r50_8x8"),)]
    timings = {}
    for r in range(rounds + 1):
        for label, spec in cases:
            clip = frames[:spec.clip_len * spec.num_clips_train]
            pipes = {"before": _exact_train_transform(spec.family, spec.crop_size),
                     "after": transforms.train_transform(spec.family, spec.crop_size, uint8=True)}
            for name, fn in pipes.items():
                rng = np.random.default_rng(r)
                t = _time_calls(lambda _: fn(clip, rng), range(clips))
                if r:
                    timings.setdefault((label, name), Timing(clips * len(clip))).add(*t)
    rows = []
    for label, spec in cases:
        before, after = timings[label, "before"].cpu_ms, timings[label, "after"].cpu_ms
        rows.append([label, str(spec.clip_len * spec.num_clips_train), f"{before:.3f}", f"{after:.3f}",
                     f"{before / after:.1f}x"])
    _table(["pipeline", "frames", "before: cv2-exact crop resize", "after: ResizedCropFlip", "faster"], rows)


def _exact_train_transform(family: str, crop_size: int) -> Callable:
    """The training pipeline before ResizedCropFlip: cv2-exact Resize -> crop -> cv2-exact Resize -> Flip -> uint8."""
    box = transforms.MultiScaleCrop(input_size=crop_size).box if family == "tsn" else transforms.RandomResizedCrop().box
    short, to_tensor = transforms.Resize(short_side=transforms.short_side_for(crop_size)), transforms.ToUint8Tensor()

    def run(frames: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        frames = short(frames)
        x1, y1, x2, y2 = box(*frames.shape[1:3], rng)
        out = transforms.Resize(size=(crop_size, crop_size))(frames[:, y1:y2, x1:x2])
        return to_tensor(np.ascontiguousarray(out[:, :, ::-1]) if rng.random() < 0.5 else out)
    return run


def _make_case(arch: str, video: Path, num_frames: int, args) -> dict:
    """The training dataset of `arch` over `samples` copies of the clip, and its index sets."""
    spec = models.ARCHS[arch][1]
    sampling = data.Sampling(clip_len=spec.clip_len, frame_interval=spec.frame_interval,
                             num_clips=spec.num_clips_train)          # train.py make_dataset
    transform = transforms.train_transform(spec.family, spec.crop_size, uint8=True)
    samples = [webscale.Sample(video, 0, "video")] * args.samples
    ds = data.VideoDataset(samples, sampling, transform=transform, test_mode=False, seed=args.seed)
    sets = [_item_indices(ds, j, num_frames) for j in range(args.samples)]
    # the naive twin: same indices, same rng stream for the crops -> must give the same tensors
    ours, naive = ds[0][0], _naive_item(ds, 0, num_frames)
    if not torch.equal(ours, naive):
        raise RuntimeError(f"benchmark: the naive pipeline of {arch} does not reproduce the dataset item")
    return {"arch": arch, "family": spec.family, "ds": ds, "num_frames": num_frames,
            "sets": [s.tolist() for s in sets], "shape": tuple(ours.shape)}


def _round_ours(cases: dict, timings: dict, warmup: bool) -> None:
    """One round of the in-process methods, every case: pipelines then decode-only."""
    for label, c in cases.items():
        ds, video, n = c["ds"], c["ds"].samples[0].path, c["num_frames"]
        items = range(1 if warmup else len(c["sets"]))
        methods = {
            "pipeline ours": lambda j: ds[j],
            "pipeline naive": lambda j: _naive_item(ds, j, n),
            "decode ours": lambda j: data.read_frames(video, c["sets"][j]),
            "decode naive": lambda j: data.read_frames_naive(video, c["sets"][j]),
            "decode ours 1t": lambda j: _read_frames_one_thread(video, c["sets"][j]),
        }
        for name, fn in methods.items():
            t = _time_calls(fn, items)
            if not warmup:
                timings.setdefault((label, name), Timing(len(items))).add(*t)


def _round_theirs(venv: str, script: Path, cfg: dict, timings: dict, tmp: Path) -> None:
    """One round of decord / MMAction2 PyAV in the comparison virtualenv (a subprocess)."""
    cfg_path = tmp / "cfg.json"
    cfg_path.write_text(json.dumps(cfg | {"dump": str(tmp / "frames.npz") if cfg["warmup"] else None}))
    result = _run_venv(venv, script, cfg_path)
    timings.setdefault("_meta", {}).update(versions=result["versions"], errors=result["errors"],
                                           labels=result["labels"])
    if cfg["warmup"]:
        return
    for key, (units, wall, cpu) in result["results"].items():
        label, method = key.split("|")
        timings.setdefault((label, method), Timing(units)).add(wall, cpu)


def _print_pipeline_table(cases: dict, t: dict) -> None:
    print("\nTraining pipelines (decode + sample + crop + resize + flip to uint8; data.VideoDataset "
          "with transforms.train_transform(uint8=True), as train.py builds them; it normalises on the device)")
    rows = []
    for label, c in cases.items():
        ours, naive = t[(label, "pipeline ours")], t[(label, "pipeline naive")]
        for name, x in (("ours (data.read_frames)", ours), ("naive (read_frames_naive)", naive)):
            rows.append([label, name, f"{x.rate:.1f}", f"{1000 / x.rate:.0f}", f"{x.cpu_ms:.0f}",
                         f"{x.spread:.0f}%", f"{x.rate / naive.rate:.2f}x", f"{naive.cpu_ms / x.cpu_ms:.2f}x"])
    _table(["pipeline", "reader", "clips/s", "ms/clip", "CPU ms/clip", "spread", "vs naive",
            "vs naive (CPU)"], rows)
    shapes = ", ".join(f'{k}: clip {c["shape"]} (C, T, H, W)' for k, c in cases.items())
    print(f"outputs: {shapes}; naive twin checked identical to the dataset item")
    tsn = PIPELINES[0][0]
    speedup = t[(tsn, "pipeline ours")].rate / t[(tsn, "pipeline naive")].rate
    cpu = t[(tsn, "pipeline naive")].cpu_ms / t[(tsn, "pipeline ours")].cpu_ms
    verdict = "MET" if speedup >= GOAL_VS_NAIVE else "NOT MET"
    print(f"goal: TSN pipeline >= {GOAL_VS_NAIVE:.0f}x naive (wall clips/s): {verdict} "
          f"({speedup:.2f}x wall, {cpu:.2f}x in CPU time)")


def _print_decode_table(cases: dict, t: dict, theirs: dict) -> None:
    print("\nDecode + RGB only, no transform (file open + decode + conversion to uint8 (T, H, W, 3); "
          "same index sets for every reader)")
    meta = theirs.get("_meta", {})
    names = {"decode ours": "ours data.read_frames (codec threads auto)",
             "decode ours 1t": "ours, codec threads off (experiment)",
             "decode naive": "naive read_frames_naive (1 thread)"} | meta.get("labels", {})
    rows = []
    for label in cases:
        base, naive = t[(label, "decode ours")], t[(label, "decode naive")]
        for key, name in names.items():
            x = t.get((label, key)) or theirs.get((label, key))
            if x is not None:
                rows.append([label, name, f"{x.rate:.1f}", f"{1000 / x.rate:.0f}", f"{x.cpu_ms:.0f}",
                             f"{x.spread:.0f}%", f"{x.rate / naive.rate:.2f}x", f"{base.rate / x.rate:.2f}x"])
    _table(["pipeline", "reader", "clips/s", "ms/clip", "CPU ms/clip", "spread", "vs naive",
            "ours faster by"], rows)
    for lib, err in meta.get("errors", {}).items():
        print(f"{lib}: unavailable in the comparison venv ({err})")
    if meta:
        print("comparison venv: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    decords = [k for k in meta.get("labels", {}) if k.startswith("decord")]
    for key in decords:
        worse = [lab for lab in cases if t[(lab, "decode ours")].rate < theirs[(lab, key)].rate]
        verdict = "MET" if not worse else f'NOT MET for {", ".join(worse)}'
        print(f'goal: ours >= {meta["labels"][key]} (wall clips/s, same samples): {verdict}')


def _print_frame_check(video: Path, cases: dict, tmp: Path) -> None:
    """Which frame each third-party reader returned for the first TSN and 3D index sets."""
    dump = tmp / "frames.npz"
    if not dump.exists():
        return
    everything = data.read_frames_naive(video, range(data.count_frames(video))).astype(np.int16)
    print("\nSame frames? (first index set of each pipeline; offset = nearest decoded frame - asked index, "
          "mean |diff| on 0..255)")
    with np.load(dump) as z:
        for key in sorted(z.files):
            label, method = key.split("__")
            idx = cases[label]["sets"][0]
            offsets, diffs = _nearest_frames(z[key].astype(np.int16), idx, everything)
            print(f"  {label:14s} {method:28s} offsets {offsets}  mean |diff| at the asked index "
                  f"{np.mean(diffs):.2f}")


# ----------------------------------------------------------------------------------------------------------------------
# 2. Model: training throughput and FLOPs
# ----------------------------------------------------------------------------------------------------------------------

def bench_models(args) -> None:
    """Training samples/s per precision and memory layout, analytic FLOPs, fraction of the same-dtype matmul peak."""
    torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if not torch.cuda.is_available() and shutil.which("nvidia-smi"):
        print("\nnote: nvidia-smi is present but this torch has no CUDA: the model part runs on the CPU only")
    precisions = [p for p in args.precisions.split(",") if p]
    for p in precisions:
        if p not in PRECISIONS:
            raise ValueError(f'--precisions {args.precisions}: expected a comma list of {", ".join(PRECISIONS)}')
    archs = [a for a in args.models.split(",") if a]
    for a in archs:
        if a not in models.ARCHS:
            raise ValueError(f"--models {args.models}: unknown architecture {a!r} (see models.ARCHS)")
    print(f"\n== Model: training step (forward + backward + SGD momentum step) at batch {args.batch}, "
          f'{NUM_CLASSES} classes; torch threads {torch.get_num_threads()}; precisions {", ".join(precisions)} '
          f"(autocast; fp16 with GradScaler), each with and without channels_last (channels_last_3d for 3D); "
          f"{_load()}")
    if os.getloadavg()[0] > os.cpu_count() and torch.get_num_threads() > 1:
        print(f"note: the load average exceeds the {os.cpu_count()} cores: {torch.get_num_threads()} OpenMP "
              f"threads wait on each other when one is descheduled; compare with --threads 1")
    rows = []
    for device in devices:
        reps = max(args.repeats, 3)
        peaks = {}
        for p in precisions:
            if not _precision_supported(device, p):
                print(f"{device} {p}: not supported by this torch on this device, skipped")
                continue
            peaks[p] = _matmul_flops(device, PRECISIONS[p] or torch.float32, reps)
            print(f"{device} {p}: measured matmul peak {peaks[p] / 1e9:.1f} GFLOP/s (torch.mm {p}, median of {reps})")
        fp32 = peaks.get("fp32") or _matmul_flops(device, torch.float32, reps)
        for p in [p for p in peaks if p != "fp32" and peaks[p] < fp32 / 4]:
            print(f"{device} {p}: no fast kernels here ({peaks.pop(p) / 1e9:.1f} GFLOP/s against fp32's "
                  f"{fp32 / 1e9:.1f}): not timed (a training step would take minutes)")
        for arch in archs:
            steps = args.big_steps if (args.big_steps and arch in BIG_MODELS) else args.repeats
            base = None
            for p in peaks:
                for layout in (False, True):
                    r = _train_rate(arch, args.batch, device, PRECISIONS[p], layout, steps)
                    rate, flops = r["rate"], r["train_flops"]
                    base = base or rate
                    rows.append([arch, device, p, r["layout"] if layout else "contiguous", str(r["shape"]),
                                 f"{flops / 1e9:.1f}", f"{rate:.3f}" if rate < 10 else f"{rate:.1f}",
                                 f"{rate / base:.2f}x", f"{rate * flops / 1e9:.1f}",
                                 f"{100 * rate * flops / peaks[p]:.0f}%", f'{r["spread"]:.0f}%'])
            print(f"  ... done {arch} on {device}; {_load()}")
    print()
    _table(["model", "device", "precision", "layout", "input per sample (C, T, H, W)", "train GFLOP/sample",
            "samples/s", "vs fp32", "achieved GFLOP/s", "of matmul peak (same dtype)", "spread"], rows)
    print("train GFLOP/sample = 2 x conv/linear MACs of one forward x 3 (forward + backward); BN, ReLU, pooling "
          'and the optimiser are not counted. "vs fp32": samples/s over the same model\'s fp32 contiguous run.')


def _train_rate(arch: str, batch: int, device: str, dtype: torch.dtype | None, channels_last: bool,
                steps: int) -> dict:
    """Build `arch`, count its MACs, then time training steps (median) after warm-up steps.

    dtype None: fp32; else autocast to dtype (fp16 with a GradScaler). channels_last: the model's weights and the
    input in channels_last (2D, TSN) / channels_last_3d (3D)."""
    torch.manual_seed(0)
    model = models.build_model(arch, NUM_CLASSES).to(device)
    spec = model.spec
    frames = spec.num_clips_train if spec.family == "tsn" else spec.clip_len
    shape = (3, frames, spec.crop_size, spec.crop_size)   # (C, T, H, W)
    x = torch.randn(batch, *shape, device=device)         # (N, C, T, H, W)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    macs = _count_macs(model, x[:1])
    layout = "channels_last" if spec.family == "tsn" else "channels_last_3d"
    if channels_last:
        model = model.to(memory_format=getattr(torch, layout))
        if spec.family != "tsn":
            x = x.contiguous(memory_format=torch.channels_last_3d)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device) if dtype == torch.float16 else None
    model.train()

    def step():
        with torch.autocast(device_type=device, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

    # 1. two warm-up steps; the second sets how many steps one timed unit holds (>= 0.5 s: tiny models)
    step()
    t0 = _time_calls(lambda _: step(), range(1), sync=device)[0]
    inner = max(1, math.ceil(0.5 / max(t0, 1e-6)))
    # 2. timed units, median
    timing = Timing(inner * batch)
    for _ in range(steps):
        timing.add(*_time_calls(lambda _: step(), range(inner), sync=device))
    del model, opt
    return {"rate": timing.rate, "macs": macs, "train_flops": 6.0 * macs, "shape": shape,
            "spread": timing.spread, "layout": layout}


def _count_macs(model: nn.Module, x: torch.Tensor) -> float:
    """Multiply-accumulates of the conv and linear layers in one forward, per sample."""
    total = 0

    def hook(m, inputs, out):
        nonlocal total
        if isinstance(m, nn.Linear):
            total += out.numel() * m.in_features
        else:   # Conv2d / Conv3d: every output element costs (C_in / groups) x kernel volume
            total += out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)

    hooks = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear))]
    model.eval()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return total / x.shape[0]


def _matmul_flops(device: str, dtype: torch.dtype, repeats: int) -> float:
    """FLOP/s of a large square torch.mm (2 n^3 FLOPs), median of `repeats` after a warm-up.

    n doubles from 256 up to 2048 on the CPU (8192 on CUDA) while one product takes under 0.25 s, so a dtype
    without fast kernels (fp16 on most CPUs) is measured at a size that finishes."""
    largest = 2048 if device == "cpu" else 8192
    n = 256
    while True:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        first = _time_calls(lambda _: torch.mm(a, b), range(1), sync=device)[0]
        if first > 0.25 or n >= largest:
            break
        n *= 2
    timing = Timing(1)
    for _ in range(repeats):
        timing.add(*_time_calls(lambda _: torch.mm(a, b), range(1), sync=device))
    return 2.0 * n ** 3 * timing.rate


# ----------------------------------------------------------------------------------------------------------------------
# 3. Scale: list parsing, per-worker growth, filter CPU and peak RSS, de-duplication
# ----------------------------------------------------------------------------------------------------------------------

def bench_scale(args, tmp: Path) -> None:
    """The figures of the web-scale goals on a synthetic crawl of hard links (see the module docstring)."""
    torch.set_num_threads(1)
    root = tmp / "scale"
    classes = [f"class_{k:03d}" for k in range(SCALE_CLASSES)]
    print(f"\n== Scale: {args.scale_lines:,} list lines, {args.readers} forked readers, filter on "
          f"{args.scale_images_small:,} and {args.scale_images:,} images (96x128 JPEG hard links, tsn_tiny "
          f"teacher, OMP_NUM_THREADS=1), de-duplication {args.dedup_web:,} web x {args.dedup_val:,} val; {_load()}")
    parts = set(args.scale_parts.split(","))
    if not parts or not parts <= {"list", "filter", "dedup", "redecide"}:
        raise ValueError(f"--scale-parts {args.scale_parts}: expected a comma list of list, filter, dedup, redecide")
    if "list" in parts:
        _list_part(args, root, classes)
    if "filter" in parts:
        _filter_part(args, root, classes)
    if "dedup" in parts:
        _dedup_figures(args)
    if "redecide" in parts:
        _redecide_part(args, root, classes)


def _list_part(args, root: Path, classes: list[str]) -> None:
    """1. list parsing and bytes per sample (in a forked child: nothing else of ours is resident there)."""
    _write_plain_dataset(root / "biglist", classes, _image_list_lines(args.scale_lines, len(classes)))
    r = _in_fork(_list_figures, root, "biglist", args.readers)
    n = r["samples"]
    print(f'\nList: data.load_split of a {n:,}-line image list ({r["file_bytes"] / n:.0f} bytes per line): '
          f'{n / r["cpu"] / 1e3:.0f}k lines per CPU second, {n / r["wall"] / 1e3:.0f}k per wall second '
          f'({r["cpu"]:.2f} s CPU, {r["wall"]:.2f} s wall), '
          f'{r["rss_gain"] / n:.0f} bytes resident per sample (RSS {r["rss_before"] / 2**20:.0f} -> '
          f'{r["rss_after"] / 2**20:.0f} MiB), container {r["type"]}')
    gains = r["reader_gains"]
    fields = r["reader_gains_fields"]
    print(f"Readers: {len(gains)} forked processes reading every sample gain private memory (smaps_rollup "
          f"Private_Clean + Private_Dirty) of {statistics.mean(fields) / n:.1f} bytes per sample each for "
          f"samples[i].label and .path, {statistics.mean(gains) / n:.1f} bytes once the path is also made a "
          f'string (os.fspath, as opening the file does; per reader: {", ".join(f"{g / n:.1f}" for g in gains)})')
    print(f'goals: >= 500k lines/s (CPU): {_met(n / r["cpu"] >= 5e5)}; <= 100 bytes per sample: '
          f'{_met(r["rss_gain"] / n <= 100)}; <= 10 bytes per sample per reader: {_met(max(gains) / n <= 10)}')


def _filter_part(args, root: Path, classes: list[str]) -> None:
    """2. filter.py on a crawl of small JPEGs: CPU per image against decode alone and forward alone; peak RSS."""
    teacher = _scale_crawl(root, classes, args.scale_images_small, args.scale_images)
    runs = {}
    for name, count in (("small", args.scale_images_small), ("large", args.scale_images)):
        runs[name] = _filter_run(root, f"web{count}", teacher, args.workers)
        if runs[name]["rc"] != 0:
            print(f'filter.py on {count} images failed (exit {runs[name]["rc"]}): {runs[name]["tail"]}')
            return
    decode_ms, forward_ms, crop = _decode_and_forward_alone(root / f"web{args.scale_images}", teacher,
                                                             min(args.scale_images, 2000))
    big = runs["large"]
    filt_ms = 1000 * big["cpu"] / args.scale_images
    both = decode_ms + forward_ms
    print(f"\nFilter: python filter.py --workers {args.workers} --device cpu on {args.scale_images:,} images: "
          f'{filt_ms:.2f} ms CPU per image ({big["wall"]:.1f} s wall); decode + test transform alone '
          f"{decode_ms:.2f} ms, teacher forward alone {forward_ms:.2f} ms (batch 16, crop {crop}), sum "
          f"{both:.2f} ms: filter = {filt_ms / both:.2f}x the sum, plumbing {100 * (1 - both / filt_ms):.0f}% "
          f"of its CPU (goal <= 1.15x: {_met(filt_ms <= 1.15 * both)})")
    small = runs["small"]
    extra = args.scale_images - args.scale_images_small
    if extra > 0:
        marginal = 1000 * (big["cpu"] - small["cpu"]) / extra
        print(f"Filter marginal CPU per image (the two runs' difference, without start-up): {marginal:.2f} ms = "
              f"{marginal / both:.2f}x decode + forward")
    ratio = big["maxrss"] / small["maxrss"]
    print(f'Filter peak RSS (largest process of the run, ru_maxrss): {small["maxrss"] / 2**20:.0f} MiB at '
          f'{args.scale_images_small:,} images, {big["maxrss"] / 2**20:.0f} MiB at {args.scale_images:,} '
          f'({ratio:.2f}x; goal within 15%: {_met(ratio <= 1.15)}); output {big["out_bytes"] / args.scale_images:.0f} '
          f'bytes per image on disk ({", ".join(big["out_files"])})')


def _redecide_part(args, root: Path, classes: list[str]) -> None:
    """4. filter.py re-deciding a finished run of --scale-redecide synthetic image records at another --threshold:
    the output's columns (scores.npz) and records are written here directly, as a scoring run leaves them."""
    n, name = args.scale_redecide, f"crawl{args.scale_redecide}"
    rng = np.random.default_rng(0)
    lines = _image_list_lines(n, len(classes))
    _write_plain_dataset(root / name, classes, lines)
    out = root / f"{name}-filtered"
    out.mkdir(parents=True, exist_ok=True)
    flags = ["--data-root", str(root), "--source", name, "--teacher", str(root / "gone.pth"), "--out", out.name,
             "--device", "cpu", "--quiet"]
    cmd = [sys.executable, str(ROOT / "filter.py"), *flags, "--threshold", "0.3"]
    query = np.arange(n, dtype=np.int64) % len(classes)
    probs = rng.random((n, 2), dtype=np.float32)                           # p(query), p(argmax) >= p(query)
    top = np.where(probs[:, 1] > probs[:, 0], rng.integers(0, len(classes), n), query)
    records = b"".join(b'{"i":%d,"path":"%s","kind":"image","query":%d,"query_score":%.7g,"top_class":%d,'
                       b'"top_score":%.7g}\n' % (i, ln.rsplit(" ", 1)[0].encode(), q, a, c, max(a, b))
                       for i, (ln, q, (a, b), c) in enumerate(zip(lines, query.tolist(), probs.tolist(),
                                                                  top.tolist())))
    (out / "samples.jsonl").write_bytes(records)
    seen = webscale.Seen(query, probs[:, 0], top, probs.max(axis=1), np.zeros(n, np.uint8),
                         np.zeros(n + 1, np.int64), np.zeros(0, np.float32), np.zeros(0, np.float32),
                         np.zeros((0, 2), np.int64), np.full(n, np.nan), np.zeros(n + 1, np.int64))
    seen.save(out / "scores.npz")
    (out / "duplicates.txt").write_text("# de-duplication was not run (no --dedup-against)\n")
    (out / "classes.txt").write_text("".join(c + "\n" for c in classes))
    (out / "train.txt").write_text("")
    parsed = filter_mod.get_args_parser().parse_args(flags)
    knobs = {f.name: getattr(parsed, f.name) for f in fields(filter_mod.FilterConfig) if "help" in f.metadata}
    cfg = filter_mod.FilterConfig(**dict(knobs, device="cpu", amp="none"))
    settings = filter_mod.scoring_settings(parsed, cfg, n)
    (out / "report.json").write_text(json.dumps(dict(settings=settings, dedup=None, teachers=[])))
    wall = time.perf_counter()
    data.load_split(data.resolve_dataset(root, name), "train")
    list_wall = time.perf_counter() - wall
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    wall = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUSAGE_WRAPPER, *cmd], capture_output=True, text=True, env=env,
                          cwd=str(ROOT))
    wall = time.perf_counter() - wall
    report = json.loads((out / "report.json").read_text()) if proc.returncode == 0 else {}
    if not report.get("run", {}).get("redecided"):
        print(f"filter.py re-deciding {n:,} records failed or scored again (exit {proc.returncode}): "
              f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
        return
    r = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RUSAGE ")][-1][len("RUSAGE "):])
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import filter"], env=env, cwd=str(ROOT), check=True)
    start = time.perf_counter() - start   # the interpreter and the imports (torch): paid once, whatever N
    per = (wall - start) / n
    print(f"\nRe-deciding: python filter.py --source {name} --teacher gone.pth {' '.join(flags[6:])} --threshold 0.3 "
          f"on a finished run of {n:,} image records (its scores.npz; no teacher file): {wall:.1f} s wall, "
          f"{r['cpu']:.1f} s CPU: start-up {start:.1f} s (python + imports) + {per * 1e6:.1f} s per million "
          f"records (data.load_split of the source list alone {list_wall / n * 1e6:.1f}) -> "
          f"{start + per * 3.7e6:.1f} s at 3.7M; kept {report['counts']['kept']:,}; peak RSS "
          f"{r['maxrss'] / 2**20:.0f} MiB")


def _list_figures(root: Path, name: str, readers: int) -> dict:
    """(forked child) load_split speed and resident bytes; then `readers` forked readers' private growth."""
    gc.collect()
    rss0 = _proc_kb("status", "VmRSS") * 1024
    wall, cpu = time.perf_counter(), time.process_time()
    spec = data.resolve_dataset(root, name)
    samples = data.load_split(spec, "train")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    gc.collect()
    rss1 = _proc_kb("status", "VmRSS") * 1024
    out = {"samples": len(samples), "wall": wall, "cpu": cpu, "rss_before": rss0, "rss_after": rss1,
           "rss_gain": rss1 - rss0, "type": type(samples).__name__,
           "file_bytes": (root / name / "train.txt").stat().st_size}
    # readers fork from here, as DataLoader workers fork from the main process holding the list
    pids = [_fork_call(_touch_every_sample, samples) for _ in range(readers)]
    results = [_fork_result(p) for p in pids]
    out["reader_gains"] = [r["gain"] for r in results]
    out["reader_gains_fields"] = [r["gain_fields"] for r in results]
    return out


def _touch_every_sample(samples) -> dict:
    """(forked reader) read every sample as a DataLoader worker does; private bytes gained after pass 1 (the
    sample's label and path object) and after pass 2 (the path as a string, as opening the file needs)."""
    before = _private_bytes()
    total = 0
    for i in range(len(samples)):
        s = samples[i]
        total += int(s.label) + (s.path is None)
    fields = _private_bytes()
    for i in range(len(samples)):
        total += len(os.fspath(samples[i].path))
    return {"gain_fields": fields - before, "gain": _private_bytes() - before, "checksum": total}


def _scale_crawl(root: Path, classes: list[str], small: int, large: int) -> Path:
    """web{small}/ and web{large}/ plain datasets of hard links to 64 generated 96x128 JPEGs; a tsn_tiny teacher."""
    rng = np.random.default_rng(0)
    src = root / "crawl_src"
    src.mkdir(parents=True, exist_ok=True)
    originals = []
    for k in range(64):   # a smooth colour field + noise: compresses like a photo thumbnail
        base = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(base).resize((128, 96), Image.BICUBIC)).astype(np.int16)
        img = np.clip(img + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
        path = src / f"photo_{k:02d}.jpg"
        Image.fromarray(img).save(path, quality=90)
        originals.append(path)
    for count in (small, large):
        folder = root / f"web{count}"
        lines = []
        for i in range(count):
            rel = f"images/{classes[i % len(classes)]}/{i:08d}.jpg"
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            os.link(originals[i % len(originals)], folder / rel)
            lines.append(f"{rel} {i % len(classes)}")
        _write_plain_dataset(folder, classes, lines)
    teacher = root / "teacher_tsn_tiny.pth"
    torch.manual_seed(0)
    net = models.build_model("tsn_tiny", len(classes))
    torch.save(dict(model=net.state_dict(), arch="tsn_tiny", model_args={}, classes=classes), teacher)
    return teacher


def _filter_run(root: Path, source: str, teacher: Path, workers: int) -> dict:
    """filter.py as a user runs it, in a fresh wrapper process: CPU of the whole tree, largest ru_maxrss."""
    out = f"{source}-filtered"
    cmd = [sys.executable, str(ROOT / "filter.py"), "--data-root", str(root), "--source", source,
           "--teacher", str(teacher), "--out", out, "--device", "cpu", "--workers", str(workers), "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    wall = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUSAGE_WRAPPER, *cmd], capture_output=True, text=True, env=env,
                          cwd=str(ROOT))
    wall = time.perf_counter() - wall
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RUSAGE ")]
    r = json.loads(lines[-1][len("RUSAGE "):]) if lines else {"rc": proc.returncode, "cpu": 0, "maxrss": 0}
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    files = sorted(p for p in (root / out).rglob("*") if p.is_file()) if (root / out).is_dir() else []
    return r | {"wall": wall, "tail": tail, "out_bytes": sum(p.stat().st_size for p in files),
                "out_files": [p.name for p in files if p.suffix != ".txt" or p.name == "train.txt"][:6]}


def _decode_and_forward_alone(folder: Path, teacher_path: Path, count: int) -> tuple[float, float, int]:
    """CPU ms per image of (read + the filter's test transform) and of the teacher's forward, one thread."""
    teacher = models.from_checkpoint(teacher_path).eval()
    crop = teacher.spec.crop_size
    transform = transforms.test_transform(teacher.spec.family, crop, "center")
    paths = [folder / line.split()[0] for line in (folder / "train.txt").read_text().splitlines()[:count]]
    cpu = time.process_time()
    for p in paths:
        transform(data.read_frames(p, [0]))
    decode_ms = 1000 * (time.process_time() - cpu) / len(paths)
    x = torch.randn(16, 3, 1, crop, crop)   # (N, C, T, H, W): an image is one frame
    with torch.inference_mode():
        teacher(x)
        batches = max(1, count // 16)
        cpu = time.process_time()
        for _ in range(batches):
            teacher(x)
    forward_ms = 1000 * (time.process_time() - cpu) / (16 * batches)
    return decode_ms, forward_ms, crop


def _dedup_figures(args) -> None:
    """Time the filter's de-duplication on random features: web (N, D) x val (M, D), N = --dedup-web."""
    rng = np.random.default_rng(0)
    dim, n, m = args.dedup_dim, args.dedup_web, args.dedup_val
    find = getattr(filter_mod, "find_duplicates")
    hwm0 = _proc_kb("status", "VmHWM") * 1024
    web = rng.standard_normal((n, dim), dtype=np.float32)
    val = rng.standard_normal((m, dim), dtype=np.float32)
    web[::1000] = val[rng.integers(0, m, len(web[::1000]))]   # planted duplicates: 1 in 1000 web rows
    base = _proc_kb("status", "VmRSS") * 1024
    wall, cpu = time.perf_counter(), time.process_time()
    found = find(web, val, 0.9)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = _proc_kb("status", "VmHWM") * 1024
    planted = len(web[::1000])
    scale = 1e6 * 5e4 / (n * m)
    print(f"\nDe-duplication: filter.find_duplicates, web ({n:,}, {dim}) x val ({m:,}, {dim}) float32 input, "
          f"{len(found)} found of {planted} planted: {wall:.1f} s wall, {cpu:.1f} s CPU (all threads), "
          f"{1e9 * cpu / (n * m):.2f} CPU ns per pair; at 1M web x 50k val (scaled by pairs): "
          f"{cpu * scale / 60:.1f} CPU min, {wall * scale / 60:.1f} wall min at this load; peak RSS above the "
          f"inputs {max(0, peak - max(base, hwm0)) / 2**20:.0f} MiB")
    del web, val
    whitening = getattr(filter_mod, "Whitening", None)
    if whitening is not None and hasattr(whitening, "apply"):   # the chunked float32 projection of web features
        raw = torch.from_numpy(rng.standard_normal((8192, RAW_FEATURE_DIM), dtype=np.float32))
        dims = getattr(filter_mod, "DEDUP_DIMS", 256)   # a projection of the fitted shape (fitting is once per run)
        white = whitening(np.zeros(RAW_FEATURE_DIM), rng.standard_normal((RAW_FEATURE_DIM, dims)) / dims ** 0.5)
        rows = min(n, 131_072)
        cpu = time.process_time()
        for _ in range(0, rows, len(raw)):
            white.apply(raw)
        cpu = time.process_time() - cpu
        print(f"Whitening.apply (float32, {RAW_FEATURE_DIM} -> {white.proj.shape[1]} dims) of web features in "
              f"chunks of {len(raw)}: {1e6 * cpu / rows:.1f} CPU s per million web rows")


# ----------------------------------------------------------------------------------------------------------------------
# 4. Soak: resident memory while DataLoader workers decode training clips
# ----------------------------------------------------------------------------------------------------------------------

def bench_soak(args, tmp: Path) -> None:
    """Decode --soak-clips training clips in persistent workers; memory of main + workers every --soak-every."""
    torch.set_num_threads(1)
    arch = args.soak_arch
    spec = models.ARCHS[arch][1]
    root = tmp / "soak"
    names = _soak_videos(root / "src")
    classes = [f"class_{k}" for k in range(4)]
    lines = []
    files = min(args.soak_files, args.soak_clips)
    for i in range(files):   # distinct paths (hard links): per-path caches see a real dataset's spread
        rel = f"videos/v{i:06d}{names[i % len(names)].suffix}"
        (root / "soak" / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(names[i % len(names)], root / "soak" / rel)
        lines.append(f"{rel} {i % len(classes)}")
    lines = [lines[i % files] for i in range(args.soak_clips)]   # later passes revisit the same files (epochs)
    _write_plain_dataset(root / "soak", classes, lines)
    targs = train.get_args_parser().parse_args(["--data-root", str(root), "--target", "soak", "--arch", arch])
    ds = train.make_dataset(targs, data.resolve_dataset(root, "soak"), "train", spec, test_mode=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.soak_batch, num_workers=args.workers,
                                         persistent_workers=args.workers > 0, shuffle=False)
    print(f"\n== Soak: {args.soak_clips:,} training clips of {arch} (train.make_dataset: sampling + "
          f"transforms as train.py builds them) from {len(names)} generated videos under {files:,} hard-linked "
          f"names (read in order, {args.soak_clips / files:.1f} passes), batch {args.soak_batch}, {args.workers} "
          f"persistent workers; memory every {args.soak_every} clips; {_load()}")
    if not _proc_kb("smaps_rollup", "Pss_Anon"):
        raise ValueError("--what soak: this kernel's /proc/PID/smaps_rollup has no Pss_Anon (Linux >= 5.9 has)")
    print(f'{"clips":>7}  {"RSS main+workers MiB":>20}  {"anon PSS MiB":>12}  {"PSS MiB":>8}  {"main RSS":>8}  '
          f'{"workers RSS":>14}  clips/s')
    curve, done, start, last = [], 0, time.perf_counter(), 0
    it = iter(loader)
    while done < args.soak_clips:
        try:
            clips, _, _ = next(it)
        except StopIteration:
            break
        done += len(clips)
        if done - last >= args.soak_every or done >= args.soak_clips:
            last = done
            pids = [os.getpid()] + [w.pid for w in getattr(it, "_workers", [])]
            rss = [_proc_kb("status", "VmRSS", pid) * 1024 for pid in pids]
            pss = sum(_proc_kb("smaps_rollup", "Pss", pid) * 1024 for pid in pids)
            anon = sum(_proc_kb("smaps_rollup", "Pss_Anon", pid) * 1024 for pid in pids)
            curve.append((done, sum(rss), anon))
            print(f"{done:7d}  {sum(rss) / 2**20:20.1f}  {anon / 2**20:12.1f}  {pss / 2**20:8.1f}  "
                  f'{rss[0] / 2**20:8.1f}  {" ".join(f"{r / 2**20:.0f}" for r in rss[1:]):>14}  '
                  f"{done / (time.perf_counter() - start):.1f}")
    del it, loader
    _soak_verdict(curve, files)


def _soak_verdict(curve: list[tuple[int, int, int]], files: int) -> None:
    """Flat after warm-up: the slope of the anonymous PSS (curve: clips, RSS, anonymous PSS) over the second half of
    the run, once every worker has seen every file (two passes over the files) and the allocators have grown to
    their working size, and the growth it adds up to."""
    start = max(2 * files, curve[-1][0] // 2) if curve else 0
    warm = [c for c in curve if c[0] >= start]
    if len(warm) < 3:
        print(f"soak: too few samples after the warm-up ({start} clips: two passes over the {files} files, half "
              f"the run) for a verdict (raise --soak-clips, lower --soak-files or --soak-every)")
        return
    x = np.array([c[0] for c in warm], dtype=np.float64)
    y = np.array([c[2] for c in warm], dtype=np.float64)
    slope = np.polyfit(x, y, 1)[0] if len(warm) > 1 else 0.0   # bytes per clip
    growth = slope * (x[-1] - x[0])
    flat = growth <= max(0.05 * y.mean(), 16 * 2**20)   # the allocators' working size moves by a few %
    print(f"soak: after warm-up ({int(warm[0][0])} clips) anonymous PSS {y[0] / 2**20:.1f} -> "
          f"{y[-1] / 2**20:.1f} MiB (range {y.min() / 2**20:.1f}-{y.max() / 2**20:.1f}); least-squares slope "
          f"{slope / 1024:.2f} KiB per clip = {growth / 2**20:+.1f} MiB over {int(x[-1] - x[0])} clips "
          f'({slope * 1e6 / 2**30:+.2f} GiB per million clips): {"FLAT" if flat else "GROWING"} (flat: fitted growth '
          f"within max(5%, 16 MiB))")


def _soak_videos(folder: Path) -> list[Path]:
    """Three generated H.264 clips, 2 s at 30 fps with a keyframe every 15 frames (cheap to seek: the soak is
    about memory): K400-like 340x256, a 640x360 one (resized by the pipeline) and a 256x340 portrait one."""
    folder.mkdir(parents=True, exist_ok=True)
    return [_generate_clip(folder / "k400_like.mp4", seconds=2, gop=15),
            _generate_clip(folder / "wide_640x360.mp4", width=640, height=360, seconds=2, gop=15),
            _generate_clip(folder / "portrait_256x340.mp4", width=256, height=340, seconds=2, gop=15)]


# ----------------------------------------------------------------------------------------------------------------------
# 5. GPU: the one command for the day a GPU is at hand; every part reports on its own
# ----------------------------------------------------------------------------------------------------------------------

def bench_gpu(args, tmp: Path) -> None:
    """The parts in order (bf16 peak, models, loader, train.py, NVDEC, NCCL). A part that fails prints one line and
    the others still run; the command exits non-zero when any part failed."""
    torch.backends.cudnn.benchmark = True   # fixed shapes: the fastest convolutions, as train.py on CUDA
    props = torch.cuda.get_device_properties(0)
    print(f"\n== GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}."
          f"{props.minor}; torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
          f"{torch.backends.cudnn.version()}, NCCL available {dist.is_nccl_available()}; {_cores()} cores; {_load()}")
    found: dict = {}   # what one part measures for the next: "peak" FLOP/s, model samples/s per architecture
    parts = {"peak": lambda: _gpu_peak(props.name, args.repeats, found),
             "model": lambda: _gpu_models(args.repeats, found),
             "loader": lambda: _gpu_loader(tmp / "gpu", found),
             "train.py": lambda: _gpu_train_py(tmp / "gpu_train"),
             "hwaccel": lambda: _gpu_decode(tmp / "gpu"),
             "nccl": _gpu_nccl}
    failed = []
    for name, part in parts.items():
        start = time.perf_counter()
        try:
            part()
        except Exception as err:   # reported in one line; the remaining parts still run
            failed.append(name)
            print(f'gpu {name}: FAILED: {type(err).__name__}: {(str(err).strip().splitlines() or [""])[0]}')
        print(f"  ({name}: {time.perf_counter() - start:.0f} s)", flush=True)
    if failed:
        raise SystemExit(f'error: --what gpu: {len(failed)} of {len(parts)} parts failed ({", ".join(failed)})')


def _gpu_peak(name: str, repeats: int, found: dict) -> None:
    """The bf16 peak MFU is measured against: NVIDIA's dense figure for a known device, else the measured torch.mm."""
    measured = _matmul_flops("cuda", torch.bfloat16, max(repeats, 3))
    sheet = [(part, tflops) for part, tflops in BF16_PEAKS if part.lower() in name.lower()][:1]
    found["peak"] = sheet[0][1] * 1e12 if sheet else measured
    against = (f"{sheet[0][1]:.0f} TFLOP/s, NVIDIA's dense bf16 figure for the {sheet[0][0]} (measured: "
               f'{100 * measured / found["peak"]:.0f} % of it)' if sheet else "the measured torch.mm (no data-sheet "
               "figure for this name)")
    print(f"bf16 peak: torch.mm bf16 measured {measured / 1e12:.0f} TFLOP/s; model FLOP utilisation is against "
          f"{against}")


def _gpu_models(repeats: int, found: dict) -> None:
    """Training samples/s (forward + backward + SGD) of the paper's models in bf16 autocast with channels-last."""
    rows = []
    for arch, batch in GPU_MODELS:
        torch.cuda.reset_peak_memory_stats()
        r = _train_rate(arch, batch, "cuda", torch.bfloat16, True, max(repeats, 3))
        found[arch] = r["rate"]
        achieved = r["rate"] * r["train_flops"]
        mfu = f'{100 * achieved / found["peak"]:.0f}%' if "peak" in found else "-"
        rows.append([arch, r["layout"], str(batch), str(r["shape"]), f'{r["train_flops"] / 1e9:.1f}',
                     f'{r["rate"]:.0f}', f"{achieved / 1e12:.1f}", mfu, f'{r["spread"]:.0f}%',
                     f"{torch.cuda.max_memory_allocated() / 2**30:.1f}"])
        torch.cuda.empty_cache()
    print()
    _table(["model", "", "batch", "input per sample (C, T, H, W)", "train GFLOP/sample", "samples/s",
            "achieved TFLOP/s", "MFU (bf16 peak)", "spread", "peak GiB"], rows)


def _gpu_loader(folder: Path, found: dict) -> None:
    """train.py's training loaders with a worker on every core, on a prepared clip, against the model's rate."""
    clip = _prepared_clip(folder)
    workers = _cores()
    print(f'\nLoader: {workers} workers (every core), pinned batches, one prepared clip ('
          f'{_describe_video(clip).split(", keyframes")[0]}, a keyframe every 16 frames) under every sample; '
          f"samples/s of a pass after a warm-up pass")
    for arch, batch in GPU_MODELS:
        rate = _loader_rate(arch, clip, workers, batch_size=batch, clips=4 * workers * batch, pin_memory=True)
        line = f"  {arch}: loader {rate:.0f} samples/s = {1000 * workers / rate:.1f} ms of a core per sample"
        if arch in found:
            line += (f"; the model trains {found[arch]:.0f} samples/s: the loader is {rate / found[arch]:.2f}x it, "
                     f"{math.ceil(workers * found[arch] / rate)} cores of this machine feed this GPU")
        print(line)


def _gpu_train_py(root: Path) -> None:
    """One epoch of `train.py --amp bf16` on generated demo data, as a user types it (a subprocess): the CUDA path
    end to end (pinned loaders, device normalisation, autocast, evaluation, metrics.json)."""
    synthetic.generate(root, GPU_DEMO)
    work = root / "work"
    cmd = [sys.executable, str(ROOT / "train.py"), "--data-root", str(root), "--epochs", "1", "--amp", "bf16",
           "--work-dir", str(work)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=240)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise RuntimeError(f"train.py exited with {proc.returncode}: {tail}")
    metrics = json.loads((work / "metrics.json").read_text())
    print(f'\ntrain.py: {" ".join(cmd[1:])}\n  exit 0 in {wall:.0f} s; top-1 {metrics["top1"]:.3f} '
          f'(the default tsn_tiny after one epoch on the generated data)')


def _gpu_decode(folder: Path) -> None:
    """Whether PyAV's FFmpeg decodes H.264 on the GPU (hwaccel cuda: NVDEC) and how fast against the CPU."""
    videos = [_prepared_clip(folder)]
    videos += [DEMO_VIDEO] if DEMO_VIDEO.is_file() else [_generate_clip(folder / "k400_like_gop250.mp4")]
    hwaccel = getattr(av.codec, "hwaccel", None)   # PyAV >= 14
    types = hwaccel.hwdevices_available() if hwaccel else []
    print(f'\nhwaccel: PyAV {av.__version__}, libavcodec {".".join(map(str, av.library_versions["libavcodec"]))}; '
          f'hardware device types built in: {", ".join(types) or "none"}')
    if "cuda" not in types:
        print("  no: this PyAV " + ("has no hwaccel module (PyAV >= 14 has)" if hwaccel is None else
                                    "was built without the cuda device type"))
        return
    for video in videos:
        one, auto = _decode_rate(video, None, 1), _decode_rate(video, None, 0)
        try:
            gpu = _decode_rate(video, hwaccel.HWAccel(device_type="cuda", allow_software_fallback=False), 0)
        except Exception as err:   # the answer "no" with FFmpeg's reason (no NVDEC, no driver library, ...)
            print(f"  {video.name}: hwaccel cuda did not decode it ({type(err).__name__}: {err})")
            continue
        diff = float(np.abs(gpu["first"].astype(np.int16) - one["first"]).mean())
        print(f'  {video.name} ({_describe_video(video).split(", keyframes")[0]}): CPU 1 thread {one["fps"]:.0f} '
              f'frames/s ({one["cpu_ms"]:.2f} CPU ms per frame), CPU auto threads {auto["fps"]:.0f} frames/s; '
              f'hwaccel cuda {"on the GPU" if gpu["hw"] else "fell back to the CPU"}: {gpu["fps"]:.0f} frames/s '
              f'({gpu["cpu_ms"]:.2f} CPU ms per frame, {gpu["fps"] / one["fps"]:.2f}x 1 thread); first 8 frames '
              f"mean |diff| against the CPU's {diff:.2f} grey levels")


def _decode_rate(video: Path, hw, threads: int) -> dict:
    """Decode every frame of `video` to RGB (hw: an av HWAccel or None; threads: FFmpeg's count on the CPU, 0 auto):
    frames/s, CPU ms per frame, the first 8 frames and whether FFmpeg decoded on the hardware."""
    with av.open(str(video), **({"hwaccel": hw} if hw else {})) as container:
        stream = container.streams.video[0]
        if hw is None:
            stream.codec_context.thread_type, stream.codec_context.thread_count = "AUTO", threads
        first, count = [], 0
        wall, cpu = time.perf_counter(), time.process_time()
        for frame in container.decode(stream):
            rgb = webscale.to_rgb(frame)   # (H, W, 3); a GPU frame is downloaded first
            first += [rgb] if count < 8 else []
            count += 1
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        on_hw = hw is not None and bool(stream.codec_context.is_hwaccel)
    return {"fps": count / wall, "cpu_ms": 1000 * cpu / count, "first": np.stack(first), "hw": on_hw}


def _prepared_clip(folder: Path) -> Path:
    """A Kinetics-like clip as `prepare.py` re-encodes one: 340x256, 30 fps, 10 s, a keyframe every 16 frames
    (B-frames on); generated once under `folder`."""
    path = folder / "prepared_340x256_gop16.mp4"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        _generate_clip(path, gop=16)
    return path


def _gpu_nccl() -> None:
    """NCCL, the backend train.py and filter.py use under torchrun on CUDA: one-rank group, one all_reduce."""
    if not dist.is_nccl_available():
        print("\nnccl: not available in this torch build (torchrun on CUDA needs it)")
        return
    with socket.socket() as s:   # a free local port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        x = torch.full((1024,), 2.0, device="cuda")
        dist.all_reduce(x)
        ok = bool((x == 2.0).all())
    finally:
        dist.destroy_process_group()
    if not ok:
        raise RuntimeError("a one-rank all_reduce changed the tensor")
    print(f"\nnccl: available (NCCL {torch.cuda.nccl.version()}); a one-rank all_reduce ran")


# ----------------------------------------------------------------------------------------------------------------------
# 6. Small data: the demo recipe against a plain CNN on 8 labelled clips per class
# ----------------------------------------------------------------------------------------------------------------------

def bench_small_data(args, tmp: Path) -> None:
    """Ours (omnisource.py through the command line) vs `PlainCNN`, target only and with filtered web images."""
    epochs = args.small_epochs or (train.RECIPES["demo"]["epochs"] // 4 if args.quick else None)
    steps = args.small_steps // 4 if args.quick else args.small_steps
    root = Path(args.small_dir) if args.small_dir else tmp / "small"
    # 1. the dataset of the comparison (kept and reused in --small-dir)
    if not (root / "synth" / "classes.txt").exists():
        print(f"\n== Small data: generating {root} ...", flush=True)
        synthetic.generate(root, SMALL_DATA)
    work = root / f"work_seed{args.seed}"
    # 2. ours, as a user types it: baseline (= teacher), filter.py on the web images, the student at 2:1
    cmd = [sys.executable, str(ROOT / "omnisource.py"), "--data-root", str(root), "--sources", "synth-web-img",
           "--work-dir", str(work), "--seed", str(args.seed), "--workers", "1"]
    cmd += ["--epochs", str(epochs)] if epochs else []
    print(f"\n== Small data: {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    ours_minutes = (time.perf_counter() - start) / 60
    ours = [json.loads((work / run / "metrics.json").read_text())["top1"] for run in ("baseline", "student")]
    # 3. the plain CNN on the same target clips, then with the same teacher-filtered web images
    rows = [["plain CNN (48x48, AdamW)"], ["ours (tsn_tiny, demo recipe: the defaults of train.py / omnisource.py)"]]
    for aux in ([], ["synth-web-img-filtered"]):
        start = time.perf_counter()
        top1 = _plain_cnn_top1(root, aux, steps, args.seed)
        rows[0] += [f"{top1:.3f}", f"{(time.perf_counter() - start) / 60:.1f}"]
        print(f"plain CNN{' + ' + aux[0] if aux else ''}: top-1 {top1:.3f}", flush=True)
    rows[1] += [f"{ours[0]:.3f}", "-", f"{ours[1]:.3f}", f"{ours_minutes:.1f} (all steps)"]
    print(f"\n== Small data: top-1 on the {SMALL_DATA.val_per_class * SMALL_DATA.num_classes} val clips of "
          f"{root} (8 classes, {SMALL_DATA.train_per_class} labelled clips per class), seed {args.seed}; plain CNN "
          f"{steps} steps, train.py epochs {epochs or 'recipe'}; {_load()}")
    _table(["model", "", "target only", "minutes", "+ filtered web images (2:1)", "minutes"],
           [[r[0], ""] + r[1:] for r in rows])


class PlainCNN(nn.Module):
    """The small-data comparison's baseline: four 3x3 conv + BN + ReLU layers (32, 64, 128, 256 channels), 2x2
    max-pooling after the first three, per-frame global average pooling, mean over frames, dropout 0.4, linear."""

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()
        layers, c = [], 3
        for i, out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            layers += [nn.MaxPool2d(2)] if i < 3 else []
            c = out
        self.body, self.dropout, self.fc = nn.Sequential(*layers), nn.Dropout(0.4), nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, h, w = x.shape                                               # (N, C, T, H, W)
        feats = self.body(x.transpose(1, 2).reshape(n * t, c, h, w)).mean(dim=(2, 3))   # (N*T, D)
        return self.fc(self.dropout(feats.view(n, t, -1).mean(dim=1)))       # (N, K)


def _plain_cnn_top1(root: Path, aux: list[str], steps: int, seed: int, crop: int = 48) -> float:
    """Train `PlainCNN` for `steps` AdamW steps (lr 1e-3, weight decay 0.05, cosine) on 8 target clips (+ 4 clips
    of each `aux` source) of 3 frames (TSN sampling, the TSN training augmentation at `crop`); top-1 on val with
    25 frames, centre crop."""
    torch.manual_seed(seed)
    target = data.resolve_dataset(root, "synth")
    sampling = data.Sampling(clip_len=1, frame_interval=1, num_clips=3)

    def batches(name: str, size: int):
        ds = data.VideoDataset(data.load_split(data.resolve_dataset(root, name), "train"), sampling, seed=seed,
                               transform=transforms.train_transform("tsn", crop),
                               image_short_side=transforms.short_side_for(crop))
        sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=steps * size,
                                                 generator=torch.Generator().manual_seed(seed))
        return iter(torch.utils.data.DataLoader(ds, batch_size=size, sampler=sampler))

    net = PlainCNN(len(target.classes))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    sources = [batches("synth", 8)] + [batches(name, 4) for name in aux]
    for _ in range(steps):
        parts = [next(it) for it in sources]                                  # [(clips, labels, index), ...]
        loss = F.cross_entropy(net(torch.cat([p[0] for p in parts])), torch.cat([p[1] for p in parts]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    val = data.VideoDataset(data.load_split(target, "val"), data.Sampling(1, 1, 25), test_mode=True,
                            transform=transforms.test_transform("tsn", crop, "center"))
    net.eval()
    correct = 0
    with torch.no_grad():
        for views, labels, _ in torch.utils.data.DataLoader(val, batch_size=25):   # views (N, 1, C, 25, h, w)
            correct += (net(views[:, 0]).argmax(dim=1) == labels).sum().item()
    return correct / len(val)


# ----------------------------------------------------------------------------------------------------------------------
# 7. Feed: CPU per training sample, as downloaded and prepared, against what one GPU trains per second
# ----------------------------------------------------------------------------------------------------------------------

def bench_feed(args, tmp: Path) -> None:
    """The training pipelines (train.make_dataset) on the Kinetics clips as downloaded and after each prepare format:
    CPU ms per sample in one DataLoader worker, split into decoding and augmentation, whole-loader samples/s with
    1 and 2 workers, and the cores one GPU needs at FEED_PIPELINES' rates."""
    clips = [_pick_video(args.video, tmp)] if args.video else [v for v in REAL_VIDEOS if v.is_file()] or \
        [_pick_video(None, tmp)]
    per_clip, loader_items = (1, 4) if args.quick else (args.samples, 4 * args.samples)
    print(f"\n== Feed: {', '.join(f'{c.name} ({_describe_video(c)})' for c in clips)}; {per_clip * len(clips)} "
          f"training samples per figure in one DataLoader worker (1 torch thread, "
          f"{webscale.WORKER_CODEC_THREADS} decoder "
          f"thread), process CPU time; loaders: {loader_items} samples, batch 4, after a warm-up pass; {_load()}")
    # 1. the clips as a plain dataset, then written again by `python prepare.py` in every format
    root = tmp / "feed_downloaded"
    (root / "clips" / "videos").mkdir(parents=True)
    for c in clips:
        (root / "clips" / "videos" / c.name).symlink_to(c.resolve())
    lines = "".join(f"videos/{c.name} 0\n" for c in clips)
    for name, text in (("classes.txt", "clip\n"), ("train.txt", lines), ("val.txt", lines)):
        (root / "clips" / name).write_text(text)
    variants = {"as downloaded": (root, None)}
    for label, cfg in FEED_FORMATS:
        out = tmp / f"feed_{len(variants)}"
        with contextlib.redirect_stdout(io.StringIO()):
            report = prepare.prepare_dataset(root, "clips", out, dataclasses.replace(cfg, workers=2, measure=0))
        variants[label] = (out, report["disk"]["gb_per_video_hour"])
        variants["as downloaded"] = (root, report["disk"]["source_gb_per_video_hour"])
    # 2. every pipeline on every variant
    rows, cpu, augment = [], {}, {}
    for label, arch, rate in FEED_PIPELINES:
        for variant, (folder, gb) in variants.items():
            ds = _feed_dataset(folder, arch, per_clip * len(clips))
            total = statistics.mean(prepare.worker_cpu_ms(ds, len(ds)))
            decode = statistics.mean(prepare.worker_cpu_ms(data.VideoDataset(ds.samples, ds.sampling, seed=ds.seed),
                                                        len(ds)))
            if variant == "as downloaded":   # the same for every variant: the frames are the same size in all
                augment[label] = statistics.mean(prepare.worker_cpu_ms(_TransformOnly(ds), len(ds)))
            loaders = [_feed_loader_rate(_feed_dataset(folder, arch, loader_items), w) for w in (1, 2)]
            cpu[label, variant] = total
            rows.append([label, variant, f"{total:.1f}", f"{decode:.1f}", f"{augment[label]:.1f}",
                         f"{loaders[0]:.1f}", f"{loaders[1]:.1f}", f"{rate * total / 1000:.1f}",
                         "-" if gb is None else f"{gb:.2f}"])
    print(f"\nOne GPU trains: {FEED_RATE_SOURCE}")
    print(f"{', '.join(f'{label} ~{rate:,} samples/s' for label, _, rate in FEED_PIPELINES)}; a GPU machine has about "
          f"{FEED_CORES_PER_GPU} CPU cores per GPU")
    _table(["pipeline", "data", "CPU ms/sample", "decode ms", "augment ms", "loader 1 worker/s", "2 workers/s",
            "cores per GPU", "GB per video hour"], rows)
    print("decode = the same samples read without the transform (file open, seek, decode, RGB); augment = the "
          "transform alone on those decoded frames (resize, crop, resize to 224, flip, uint8 tensor; current "
          "transforms), measured once per pipeline; each column is measured on its own (noise: a few ms under load)")
    for label, goal in FEED_GOALS.items():
        best = min((cpu[label, v], v) for v in variants if v != "as downloaded")
        print(f"goal: {label} <= {goal:.0f} ms CPU per sample on prepared data: {_met(best[0] <= goal)} "
              f"(best {best[0]:.1f} ms, {best[1]}; as downloaded {cpu[label, 'as downloaded']:.1f} ms)")


def _feed_dataset(folder: Path, arch: str, count: int) -> data.VideoDataset:
    """train.make_dataset's training dataset of `arch` over `count` samples cycling through folder/clips' list."""
    targs = train.get_args_parser().parse_args(["--data-root", str(folder), "--target", "clips", "--arch", arch])
    spec = data.resolve_dataset(folder, "clips")
    samples = data.load_split(spec, "train")
    return train.make_dataset(targs, spec, "train", models.ARCHS[arch][1], test_mode=False,
                              samples=samples.subset(np.arange(count) % len(samples)))


class _TransformOnly(torch.utils.data.Dataset):
    """The training transform of `ds` alone: item i transforms item i's frames, decoded beforehand."""

    def __init__(self, ds: data.VideoDataset):
        self.frames, self.transform = [ds.load(i)[0] for i in range(len(ds))], ds.transform

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.frames[i], rng=np.random.default_rng(i))


def _feed_loader_rate(ds: data.VideoDataset, workers: int) -> float:
    """Samples/s of one pass through a DataLoader with `workers` persistent workers, after a warm-up pass."""
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers, persistent_workers=True)
    for _ in loader:
        pass
    ds.set_epoch(1)
    start = time.perf_counter()
    count = sum(len(x) for x, _, _ in loader)
    return count / (time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------------------------------
# 8. The comparison script, run by the --compare-venv python (never imported here)
# ----------------------------------------------------------------------------------------------------------------------

THIRD_PARTY_SCRIPT = r'''
"""Decode + RGB with decord and MMAction2 1.2 PyAVInit/PyAVDecode on given index sets; prints one JSON line."""
import json, sys, time
import numpy as np

cfg = json.load(open(sys.argv[1]))
video, out = cfg['video'], {'versions': {}, 'errors': {}, 'labels': {}, 'results': {}}
readers = {}
try:
    import decord
    out['versions']['decord'] = decord.__version__

    def decord_reader(threads):
        def read(path, idx):   # the reader is opened per clip, as MMAction2's DecordInit does
            return decord.VideoReader(path, num_threads=threads).get_batch(idx).asnumpy()
        return read
    readers['decord_1t'] = ('decord get_batch (num_threads=1, MMAction2 DecordInit)', decord_reader(1))
    readers['decord_auto'] = ('decord get_batch (num_threads=0: auto)', decord_reader(0))
except Exception as err:
    out['errors']['decord'] = f'{type(err).__name__}: {err}'
try:
    import av, mmaction
    from mmaction.datasets.transforms import PyAVInit, PyAVDecode
    out['versions'].update(mmaction2=mmaction.__version__, av=av.__version__)

    def pyav_reader(multi_thread):
        init, decode = PyAVInit(), PyAVDecode(multi_thread=multi_thread)
        def read(path, idx):
            results = init(dict(filename=path))
            results['frame_inds'] = np.asarray(idx)
            return np.stack(decode(results)['imgs'])
        return read
    readers['mmaction_pyav'] = ('MMAction2 PyAVDecode (default, 1 thread)', pyav_reader(False))
    readers['mmaction_pyav_mt'] = ('MMAction2 PyAVDecode (multi_thread=True)', pyav_reader(True))
except Exception as err:
    out['errors']['mmaction2'] = f'{type(err).__name__}: {err}'
out['labels'] = {k: v[0] for k, v in readers.items()}
dump = {}
for label, sets in cfg['sets'].items():
    for key, (_, read) in readers.items():
        if cfg['warmup']:
            dump[f'{label}__{key}'] = read(video, sets[0])
            continue
        w, c = time.perf_counter(), time.process_time()
        for idx in sets:
            read(video, idx)
        out['results'][f'{label}|{key}'] = (len(sets), time.perf_counter() - w, time.process_time() - c)
if cfg.get('dump'):
    np.savez(cfg['dump'], **dump)
print('BENCH_JSON ' + json.dumps(out))
'''


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------

def _item_indices(ds: data.VideoDataset, j: int, num_frames: int) -> np.ndarray:
    """The frame indices dataset item j samples: its first draws from the item's own generator."""
    sp = ds.sampling
    return data.sample_frames(num_frames, sp.clip_len, sp.frame_interval, sp.num_clips, False, ds._rng(j))


def _naive_item(ds: data.VideoDataset, j: int, num_frames: int) -> torch.Tensor:
    """Dataset item j rebuilt with the naive reader: same generator, same indices, same crops."""
    rng, sp = ds._rng(j), ds.sampling
    idx = data.sample_frames(num_frames, sp.clip_len, sp.frame_interval, sp.num_clips, False, rng)
    return ds.transform(data.read_frames_naive(ds.samples[j].path, idx), rng=rng)


def _read_frames_one_thread(path: Path, idx: list[int]) -> np.ndarray:
    """data.read_frames' video path with FFmpeg codec threading left off (PyAV's default): an experiment
    for oversubscribed machines (DataLoader workers >= cores), not a reader of the project."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return webscale.decode_video(container, stream, Path(path), np.asarray(idx, dtype=np.int64))


def _time_calls(fn, items, sync: str | None = None) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of fn(i) for every i in items."""
    w, c = time.perf_counter(), time.process_time()
    for i in items:
        fn(i)
    _sync(sync)
    return time.perf_counter() - w, time.process_time() - c


def _sync(device: str | None) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _run_venv(venv: str, script: Path, cfg_path: Path) -> dict:
    python = Path(venv) / "bin" / "python"
    proc = subprocess.run([str(python), str(script), str(cfg_path)], capture_output=True, text=True,
                          cwd=str(cfg_path.parent), timeout=1800)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ValueError(f"--compare-venv {venv}: the comparison script failed: {tail[0]}")
    return json.loads(lines[-1][len("BENCH_JSON "):])


def _nearest_frames(frames: np.ndarray, idx: list[int], everything: np.ndarray):
    """Per returned frame: offset of the closest decoded frame within +-3 of the asked index, and
    the mean |difference| to the frame at the asked index."""
    offsets, diffs = [], []
    for frame, i in zip(frames, idx):
        cands = range(max(0, i - 3), min(len(everything), i + 4))
        errs = [float(np.abs(everything[k] - frame).mean()) for k in cands]
        offsets.append(list(cands)[int(np.argmin(errs))] - i)
        diffs.append(float(np.abs(everything[i] - frame).mean()))
    return offsets, diffs


def _profile_reader(video: Path, cases: dict) -> None:
    for label, c in cases.items():
        prof = cProfile.Profile()
        prof.enable()
        for idx in c["sets"]:
            data.read_frames(video, idx)
        prof.disable()
        print(f'\ncProfile of data.read_frames, {label}, {len(c["sets"])} clips (top 15 by total time):')
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(15)
        stats = {}
        with webscale.open_video(video) as (container, stream):
            for idx in c["sets"]:
                s = {}
                webscale.decode_video(container, stream, video, np.asarray(idx), stats=s)
                for k in ("decoded", "seeks"):
                    stats[k] = stats.get(k, 0) + s[k]
        print(f'frames decoded per clip {stats["decoded"] / len(c["sets"]):.1f}, seeks per clip '
              f'{stats["seeks"] / len(c["sets"]):.1f} (of {c["num_frames"]} frames)')


def _pick_video(arg: str | None, tmp: Path) -> Path:
    if arg and arg != "gen":
        path = Path(arg)
        if not path.is_file():
            raise FileNotFoundError(f"--video {arg}: no such file")
        return path
    if arg is None and DEMO_VIDEO.is_file():
        return DEMO_VIDEO
    return _generate_clip(tmp / "k400_like_340x256_30fps_10s_gop250.mp4")


def _generate_clip(path: Path, width: int = 340, height: int = 256, fps: int = 30, seconds: int = 10,
                   gop: int = 250) -> Path:
    """A K400-like H.264 clip: a textured scene panning under moving blobs; GOP 250 by default, B-frames on."""
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (height * 2, width * 2, 3), dtype=np.uint8)
    texture = ((texture.astype(np.uint16) + np.roll(texture, 1, 0) + np.roll(texture, 1, 1)) // 3).astype(np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps, 1))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        for t in range(fps * seconds):
            dx, dy = t * width // (fps * seconds), t * height // (2 * fps * seconds)   # slow pan, no wrap
            img = texture[dy:dy + height, dx:dx + width].copy()
            cx, cy = width / 2 + 100 * math.sin(t / 15), height / 2 + 60 * math.cos(t / 20)
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < 900] = (220, 60, 40)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _describe_video(path: Path) -> str:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        keys = [i for i, p in enumerate(q for q in c.demux(s) if q.size) if p.is_keyframe]
        return (f"{s.codec_context.name} {s.width}x{s.height}, {float(s.average_rate):.4g} fps, "
                f"{s.frames} frames, keyframes at {keys}")


def _precision_supported(device: str, name: str) -> bool:
    """Whether a conv and a matmul run under autocast to this precision on `device`."""
    dtype = PRECISIONS[name]
    if dtype is None:
        return True
    try:
        conv = nn.Conv2d(3, 4, 3).to(device)
        with torch.autocast(device_type=device, dtype=dtype):
            conv(torch.randn(1, 3, 8, 8, device=device)).sum()
        torch.mm(torch.randn(8, 8, device=device, dtype=dtype), torch.randn(8, 8, device=device, dtype=dtype))
        return True
    except (RuntimeError, TypeError):
        return False


def _met(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def _write_plain_dataset(folder: Path, classes: list[str], lines: list[str]) -> None:
    """DATA_ROOT/NAME/ with classes.txt, train.txt (the lines) and an empty val.txt (data.py's plain layout)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classes.txt").write_text("".join(c + "\n" for c in classes))
    with open(folder / "train.txt", "w") as f:
        for s in range(0, len(lines), 100_000):
            f.write("\n".join(lines[s:s + 100_000]) + "\n")
    (folder / "val.txt").write_text("")


def _image_list_lines(n: int, num_classes: int) -> list[str]:
    """n web-image list lines in the released lists' style: 'CLASS_FOLDER/HASH.jpg LABEL'."""
    return [f"googleimage_200/class_{i % num_classes:03d}/{i * 2654435761 % 2**40:010x}.jpg {i % num_classes}"
            for i in range(n)]


def _proc_kb(name: str, key: str, pid: int | str = "self") -> int:
    """A 'Key:   N kB' field of /proc/PID/status or /proc/PID/smaps_rollup, in kB (0 when absent)."""
    try:
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _private_bytes(pid: int | str = "self") -> int:
    return 1024 * (_proc_kb("smaps_rollup", "Private_Clean", pid) + _proc_kb("smaps_rollup", "Private_Dirty", pid))


def _fork_call(fn, *args) -> tuple[int, int]:
    """Run fn(*args) in a forked child (no torch work there); returns (pid, read fd) for _fork_result."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:   # child: send the JSON result, never return into the caller's code
        os.close(read)
        try:
            payload = json.dumps({"ok": fn(*args)})
        except BaseException as err:   # report any failure to the parent instead of a traceback in a fork
            payload = json.dumps({"error": f"{type(err).__name__}: {err}"})
        with os.fdopen(write, "w") as f:
            f.write(payload)
        os._exit(0)
    os.close(write)
    return pid, read


def _fork_result(handle: tuple[int, int]) -> dict:
    pid, read = handle
    with os.fdopen(read) as f:
        text = f.read()
    os.waitpid(pid, 0)
    result = json.loads(text) if text else {"error": "the forked child died without a result"}
    if "error" in result:
        raise RuntimeError(f'benchmark: forked measurement failed: {result["error"]}')
    return result["ok"]


def _in_fork(fn, *args) -> dict:
    return _fork_result(_fork_call(fn, *args))


def _cores() -> int:
    """The cores this process may run on (a container or taskset may allow fewer than os.cpu_count)."""
    return len(os.sched_getaffinity(0))


def _load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths]] + rows:
        print("  ".join(str(v).ljust(w) if i < 2 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths))))


if __name__ == "__main__":
    webscale.run_command(main, get_args_parser())
