"""Throughput benchmark of the data pipeline and the models (a command, not a test).

    python benchmark.py                                   # data + model on this machine
    python benchmark.py --what data --compare-venv /work/venvs/bench --repeats 5
    python benchmark.py --video gen --what data           # the generated K400-like clip instead of the demo
    python benchmark.py --what model --threads 2
    python benchmark.py --what loader                     # 2-worker training loaders, decoder threads per worker

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
2. Loader: the same training pipelines behind a DataLoader with --workers (2) persistent workers, as train.py
   runs them: clips/s with one FFmpeg decoder thread per worker (data.WORKER_CODEC_THREADS, the default)
   against automatic decoder threading in every worker, alternated round by round.
3. Model: training samples/s (forward + backward + SGD step) at --batch (2) on the CPU, and on CUDA with
   and without bf16 autocast when a GPU is visible; FLOPs per sample counted analytically (conv/linear
   MACs from forward hooks, x2 FLOPs per MAC, x3 for forward + backward), and the fraction of the
   measured float32 (bf16 for AMP) matmul FLOP/s that training reaches.

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
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import data
import models
import transforms

ROOT = Path(__file__).resolve().parent
DEMO_VIDEO = ROOT.parent / 'shared' / 'data' / 'real_videos' / 'mmaction2_demo.mp4'
# the two training pipelines of the paper's target models: (label, architecture name in models.ARCHS)
PIPELINES = (('TSN 3 seg', 'tsn_r50'), ('SlowOnly 4x16', 'slowonly_r50_4x16'))
BIG_MODELS = ('tsn_r50', 'slowonly_r50_4x16')
TINY_MODELS = ('tsn_tiny', 'slowonly_tiny')
NUM_CLASSES = 400   # Kinetics-400 head for every model timed
GOAL_VS_NAIVE = 2.0


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
    p = argparse.ArgumentParser('omnisource benchmark', formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--video', default=None, help="H.264 clip to read (default: ../shared/data/real_videos/"
                   "mmaction2_demo.mp4 when present, else a generated one); 'gen' forces the generated "
                   "340x256, 30 fps, 10 s, GOP 250 clip")
    p.add_argument('--repeats', type=int, default=5, help='timed rounds per figure (the median is shown)')
    p.add_argument('--samples', type=int, default=8, help='data: distinct sampled clips per round')
    p.add_argument('--what', choices=('data', 'loader', 'model', 'all'), default='all')
    p.add_argument('--workers', type=int, default=2, help='loader: DataLoader worker processes')
    p.add_argument('--compare-venv', default=None, help='virtualenv with decord and mmaction2==1.2.0 '
                   '(e.g. /work/venvs/bench): their readers run there, in a subprocess')
    p.add_argument('--batch', type=int, default=2, help='model: batch size (videos per step)')
    p.add_argument('--threads', type=int, default=os.cpu_count(), help='model: torch.set_num_threads')
    p.add_argument('--big-steps', type=int, default=None, help='model: override --repeats for the R50 models '
                   '(each of their steps takes seconds on a small CPU)')
    p.add_argument('--profile', action='store_true', help='data: also cProfile data.read_frames on the samples')
    p.add_argument('--seed', type=int, default=0)
    return p


def main(args) -> None:
    if args.repeats < 1 or args.samples < 1 or args.batch < 1 or args.threads < 1:
        raise ValueError('--repeats, --samples, --batch and --threads must be >= 1')
    if args.compare_venv and not (Path(args.compare_venv) / 'bin' / 'python').is_file():
        raise FileNotFoundError(f'--compare-venv {args.compare_venv}: expected a virtualenv with bin/python')
    print(f'omnisource benchmark: python {sys.version.split()[0]}, torch {torch.__version__}, '
          f'av {av.__version__}, numpy {np.__version__}; {os.cpu_count()} cores; {_load()}')
    tmp = Path(tempfile.mkdtemp(prefix='omnisource_bench_'))
    try:
        if args.what in ('data', 'all'):
            video = _pick_video(args.video, tmp)
            bench_data(args, video, tmp)
        if args.what in ('loader', 'all'):
            bench_loader(args, _pick_video(args.video, tmp))
        if args.what in ('model', 'all'):
            bench_models(args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# =====================================================================================
# 1. Data: training pipelines and readers on the same sampled indices
# =====================================================================================

def bench_data(args, video: Path, tmp: Path) -> None:
    """Time ours vs naive (pipelines and decode-only) and, optionally, decord / MMAction2 PyAV."""
    torch.set_num_threads(1)   # as in a DataLoader worker
    num_frames = data.count_frames(video)
    print(f'\n== Data: {video} ({_describe_video(video)}), {args.samples} sampled clips per round, '
          f'{args.repeats} rounds + 1 warm-up, torch threads 1')
    # 1. per pipeline: the dataset train.py builds, the index sets it samples, the naive twin
    cases = {label: _make_case(arch, video, num_frames, args) for label, arch in PIPELINES}
    ours, theirs = {}, {}
    script = tmp / 'third_party.py'
    script.write_text(THIRD_PARTY_SCRIPT)
    cfg = {'video': str(video), 'sets': {k: c['sets'] for k, c in cases.items()}}
    # 2. warm-up round (untimed): every method once on the first sample
    _round_ours(cases, ours, warmup=True)
    if args.compare_venv:
        _round_theirs(args.compare_venv, script, cfg | {'warmup': True}, theirs, tmp)
    # 3. timed rounds, methods interleaved
    load_before = _load()
    for _ in range(args.repeats):
        _round_ours(cases, ours, warmup=False)
        if args.compare_venv:
            _round_theirs(args.compare_venv, script, cfg | {'warmup': False}, theirs, tmp)
    print(f'load during the data rounds: before {load_before}; after {_load()}')
    _print_pipeline_table(cases, ours)
    _print_decode_table(cases, ours, theirs)
    if args.compare_venv:
        _print_frame_check(video, cases, tmp)
    if args.profile:
        _profile_reader(video, cases)


def bench_loader(args, video: Path) -> None:
    """Clips/s of train.py's loaders (persistent workers) with one decoder thread per worker vs FFmpeg's auto."""
    torch.set_num_threads(1)
    print(f'\n== Loader: {video}, {args.workers} persistent workers, batch 4, 48 clips per round, '
          f'{args.repeats} rounds per setting, settings alternated')
    default = data.WORKER_CODEC_THREADS
    rates = {}
    try:
        for _ in range(args.repeats):
            for threads in (default, 0):
                data.WORKER_CODEC_THREADS = threads        # read by workers forked after this line
                for label, arch in PIPELINES:
                    rates.setdefault((label, threads), []).append(_loader_rate(arch, video, args.workers))
    finally:
        data.WORKER_CODEC_THREADS = default
    print(f'| pipeline | {default} decoder thread(s) per worker | auto threads per worker | ratio |')
    print('| --- | --- | --- | --- |')
    for label, _ in PIPELINES:
        ours, auto = statistics.median(rates[label, default]), statistics.median(rates[label, 0])
        print(f'| {label} | {ours:.1f} clips/s | {auto:.1f} clips/s | {ours / auto:.2f}x |')


def _loader_rate(arch: str, video: Path, workers: int) -> float:
    """One warm-up pass, then one timed pass over 48 clips of `video` through a fresh DataLoader."""
    spec = models.ARCHS[arch][1]
    sampling = data.Sampling(spec.clip_len, spec.frame_interval, spec.num_clips_train)
    ds = data.VideoDataset([data.Sample(video, 0, 'video')] * 48, sampling,
                           transform=transforms.train_transform(spec.family, spec.crop_size))
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers, persistent_workers=workers > 0)
    for _ in loader:
        pass
    ds.set_epoch(1)
    start = time.perf_counter()
    clips = sum(len(x) for x, _, _ in loader)
    return clips / (time.perf_counter() - start)


def _make_case(arch: str, video: Path, num_frames: int, args) -> dict:
    """The training dataset of `arch` over `samples` copies of the clip, and its index sets."""
    spec = models.ARCHS[arch][1]
    sampling = data.Sampling(clip_len=spec.clip_len, frame_interval=spec.frame_interval,
                             num_clips=spec.num_clips_train)          # train.py make_dataset
    transform = transforms.train_transform(spec.family, spec.crop_size)
    samples = [data.Sample(video, 0, 'video')] * args.samples
    ds = data.VideoDataset(samples, sampling, transform=transform, test_mode=False, seed=args.seed)
    sets = [_item_indices(ds, j, num_frames) for j in range(args.samples)]
    # the naive twin: same indices, same rng stream for the crops -> must give the same tensors
    ours, naive = ds[0][0], _naive_item(ds, 0, num_frames)
    if not torch.equal(ours, naive):
        raise RuntimeError(f'benchmark: the naive pipeline of {arch} does not reproduce the dataset item')
    return {'arch': arch, 'family': spec.family, 'ds': ds, 'num_frames': num_frames,
            'sets': [s.tolist() for s in sets], 'shape': tuple(ours.shape)}


def _round_ours(cases: dict, timings: dict, warmup: bool) -> None:
    """One round of the in-process methods, every case: pipelines then decode-only."""
    for label, c in cases.items():
        ds, video, n = c['ds'], c['ds'].samples[0].path, c['num_frames']
        items = range(1 if warmup else len(c['sets']))
        methods = {
            'pipeline ours': lambda j: ds[j],
            'pipeline naive': lambda j: _naive_item(ds, j, n),
            'decode ours': lambda j: data.read_frames(video, c['sets'][j]),
            'decode naive': lambda j: data.read_frames_naive(video, c['sets'][j]),
            'decode ours 1t': lambda j: _read_frames_one_thread(video, c['sets'][j]),
        }
        for name, fn in methods.items():
            t = _time_calls(fn, items)
            if not warmup:
                timings.setdefault((label, name), Timing(len(items))).add(*t)


def _round_theirs(venv: str, script: Path, cfg: dict, timings: dict, tmp: Path) -> None:
    """One round of decord / MMAction2 PyAV in the comparison virtualenv (a subprocess)."""
    cfg_path = tmp / 'cfg.json'
    cfg_path.write_text(json.dumps(cfg | {'dump': str(tmp / 'frames.npz') if cfg['warmup'] else None}))
    result = _run_venv(venv, script, cfg_path)
    timings.setdefault('_meta', {}).update(versions=result['versions'], errors=result['errors'],
                                           labels=result['labels'])
    if cfg['warmup']:
        return
    for key, (units, wall, cpu) in result['results'].items():
        label, method = key.split('|')
        timings.setdefault((label, method), Timing(units)).add(wall, cpu)


def _print_pipeline_table(cases: dict, t: dict) -> None:
    print('\nTraining pipelines (decode + sample + crop + resize + flip + normalise; data.VideoDataset '
          'with transforms.train_transform, as train.py builds them)')
    rows = []
    for label, c in cases.items():
        ours, naive = t[(label, 'pipeline ours')], t[(label, 'pipeline naive')]
        for name, x in (('ours (data.read_frames)', ours), ('naive (read_frames_naive)', naive)):
            rows.append([label, name, f'{x.rate:.1f}', f'{1000 / x.rate:.0f}', f'{x.cpu_ms:.0f}',
                         f'{x.spread:.0f}%', f'{x.rate / naive.rate:.2f}x', f'{naive.cpu_ms / x.cpu_ms:.2f}x'])
    _table(['pipeline', 'reader', 'clips/s', 'ms/clip', 'CPU ms/clip', 'spread', 'vs naive',
            'vs naive (CPU)'], rows)
    shapes = ', '.join(f'{k}: clip {c["shape"]} (C, T, H, W)' for k, c in cases.items())
    print(f'outputs: {shapes}; naive twin checked identical to the dataset item')
    tsn = PIPELINES[0][0]
    speedup = t[(tsn, 'pipeline ours')].rate / t[(tsn, 'pipeline naive')].rate
    cpu = t[(tsn, 'pipeline naive')].cpu_ms / t[(tsn, 'pipeline ours')].cpu_ms
    verdict = 'MET' if speedup >= GOAL_VS_NAIVE else 'NOT MET'
    print(f'goal: TSN pipeline >= {GOAL_VS_NAIVE:.0f}x naive (wall clips/s): {verdict} '
          f'({speedup:.2f}x wall, {cpu:.2f}x in CPU time)')


def _print_decode_table(cases: dict, t: dict, theirs: dict) -> None:
    print('\nDecode + RGB only, no transform (file open + decode + conversion to uint8 (T, H, W, 3); '
          'same index sets for every reader)')
    meta = theirs.get('_meta', {})
    names = {'decode ours': 'ours data.read_frames (codec threads auto)',
             'decode ours 1t': 'ours, codec threads off (experiment)',
             'decode naive': 'naive read_frames_naive (1 thread)'} | meta.get('labels', {})
    rows = []
    for label in cases:
        base, naive = t[(label, 'decode ours')], t[(label, 'decode naive')]
        for key, name in names.items():
            x = t.get((label, key)) or theirs.get((label, key))
            if x is not None:
                rows.append([label, name, f'{x.rate:.1f}', f'{1000 / x.rate:.0f}', f'{x.cpu_ms:.0f}',
                             f'{x.spread:.0f}%', f'{x.rate / naive.rate:.2f}x', f'{base.rate / x.rate:.2f}x'])
    _table(['pipeline', 'reader', 'clips/s', 'ms/clip', 'CPU ms/clip', 'spread', 'vs naive',
            'ours faster by'], rows)
    for lib, err in meta.get('errors', {}).items():
        print(f'{lib}: unavailable in the comparison venv ({err})')
    if meta:
        print('comparison venv: ' + ', '.join(f'{k} {v}' for k, v in meta['versions'].items()))
    decords = [k for k in meta.get('labels', {}) if k.startswith('decord')]
    for key in decords:
        worse = [lab for lab in cases if t[(lab, 'decode ours')].rate < theirs[(lab, key)].rate]
        verdict = 'MET' if not worse else f'NOT MET for {", ".join(worse)}'
        print(f'goal: ours >= {meta["labels"][key]} (wall clips/s, same samples): {verdict}')


def _print_frame_check(video: Path, cases: dict, tmp: Path) -> None:
    """Which frame each third-party reader returned for the first TSN and 3D index sets."""
    dump = tmp / 'frames.npz'
    if not dump.exists():
        return
    everything = data.read_frames_naive(video, range(data.count_frames(video))).astype(np.int16)
    print('\nSame frames? (first index set of each pipeline; offset = nearest decoded frame - asked index, '
          'mean |diff| on 0..255)')
    with np.load(dump) as z:
        for key in sorted(z.files):
            label, method = key.split('__')
            idx = cases[label]['sets'][0]
            offsets, diffs = _nearest_frames(z[key].astype(np.int16), idx, everything)
            print(f'  {label:14s} {method:28s} offsets {offsets}  mean |diff| at the asked index '
                  f'{np.mean(diffs):.2f}')


# =====================================================================================
# 2. Model: training throughput and FLOPs
# =====================================================================================

def bench_models(args) -> None:
    """Training samples/s, analytic FLOPs and fraction of the matmul peak, per device and precision."""
    torch.set_num_threads(args.threads)
    runs = [('cpu', False)]
    if torch.cuda.is_available():
        runs += [('cuda', False), ('cuda', True)]
    elif shutil.which('nvidia-smi'):
        print('\nnote: nvidia-smi is present but this torch has no CUDA: the model part runs on the CPU only')
    print(f'\n== Model: training step (forward + backward + SGD momentum step) at batch {args.batch}, '
          f'{NUM_CLASSES} classes; torch threads {torch.get_num_threads()}; {_load()}')
    if os.getloadavg()[0] > os.cpu_count() and torch.get_num_threads() > 1:
        print(f'note: the load average exceeds the {os.cpu_count()} cores: {torch.get_num_threads()} OpenMP '
              f'threads wait on each other when one is descheduled; compare with --threads 1')
    rows = []
    for device, amp in runs:
        peak = _matmul_flops(device, torch.bfloat16 if amp else torch.float32, max(args.repeats, 3))
        precision = 'bf16 autocast' if amp else 'fp32'
        print(f'{device} {precision}: measured matmul peak {peak / 1e9:.1f} GFLOP/s '
              f'(torch.mm {"bf16" if amp else "fp32"}, median of {max(args.repeats, 3)})')
        for arch in BIG_MODELS + TINY_MODELS:
            steps = args.big_steps if (args.big_steps and arch in BIG_MODELS) else args.repeats
            r = _train_rate(arch, args.batch, device, amp, steps)
            rate, flops = r['rate'], r['train_flops']
            rows.append([arch, device, precision, str(r['shape']), f'{r["macs"] / 1e9:.2f}',
                         f'{flops / 1e9:.1f}', f'{rate:.3f}' if rate < 10 else f'{rate:.1f}',
                         f'{rate * flops / 1e9:.1f}', f'{100 * rate * flops / peak:.0f}%', f'{r["spread"]:.0f}%'])
        print(f'  ... done {device} {precision}; {_load()}')
    print()
    _table(['model', 'device', 'precision', 'input per sample (C, T, H, W)', 'fwd GMAC/sample',
            'train GFLOP/sample', 'samples/s', 'achieved GFLOP/s', 'of matmul peak', 'spread'], rows)
    print('train GFLOP/sample = 2 x conv/linear MACs of one forward x 3 (forward + backward); '
          'BN, ReLU, pooling and the optimiser are not counted')


def _train_rate(arch: str, batch: int, device: str, amp: bool, steps: int) -> dict:
    """Build `arch`, count its MACs, then time training steps (median) after one warm-up step."""
    torch.manual_seed(0)
    model = models.build_model(arch, NUM_CLASSES).to(device)
    spec = model.spec
    frames = spec.num_clips_train if spec.family == 'tsn' else spec.clip_len
    shape = (3, frames, spec.crop_size, spec.crop_size)   # (C, T, H, W)
    x = torch.randn(batch, *shape, device=device)         # (N, C, T, H, W)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    macs = _count_macs(model, x[:1])
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)
    model.train()

    def step():
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # 1. two warm-up steps; the second sets how many steps one timed unit holds (>= 0.5 s: tiny models)
    step()
    t0 = _time_calls(lambda _: step(), range(1), sync=device)[0]
    inner = max(1, math.ceil(0.5 / max(t0, 1e-6)))
    # 2. timed units, median
    timing = Timing(inner * batch)
    for _ in range(steps):
        timing.add(*_time_calls(lambda _: step(), range(inner), sync=device))
    del model, opt
    return {'rate': timing.rate, 'macs': macs, 'train_flops': 6.0 * macs, 'shape': shape,
            'spread': timing.spread}


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
    """FLOP/s of a large square torch.mm (2 n^3 FLOPs), median of `repeats` after a warm-up."""
    n = 2048 if device == 'cpu' else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    timing = Timing(1)
    torch.mm(a, b)
    for _ in range(repeats):
        timing.add(*_time_calls(lambda _: torch.mm(a, b), range(1), sync=device))
    return 2.0 * n ** 3 * timing.rate


# =====================================================================================
# 3. The comparison script, run by the --compare-venv python (never imported here)
# =====================================================================================

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


# =====================================================================================
# Helpers
# =====================================================================================

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
        return data._decode_video(container, stream, Path(path), np.asarray(idx, dtype=np.int64))


def _time_calls(fn, items, sync: str | None = None) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of fn(i) for every i in items."""
    w, c = time.perf_counter(), time.process_time()
    for i in items:
        fn(i)
    _sync(sync)
    return time.perf_counter() - w, time.process_time() - c


def _sync(device: str | None) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


def _run_venv(venv: str, script: Path, cfg_path: Path) -> dict:
    python = Path(venv) / 'bin' / 'python'
    proc = subprocess.run([str(python), str(script), str(cfg_path)], capture_output=True, text=True,
                          cwd=str(cfg_path.parent), timeout=1800)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('BENCH_JSON ')]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['no output']
        raise ValueError(f'--compare-venv {venv}: the comparison script failed: {tail[0]}')
    return json.loads(lines[-1][len('BENCH_JSON '):])


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
    import cProfile
    import pstats
    for label, c in cases.items():
        prof = cProfile.Profile()
        prof.enable()
        for idx in c['sets']:
            data.read_frames(video, idx)
        prof.disable()
        print(f'\ncProfile of data.read_frames, {label}, {len(c["sets"])} clips (top 15 by total time):')
        pstats.Stats(prof, stream=sys.stdout).sort_stats('tottime').print_stats(15)
        stats = {}
        with data._open_video(video) as (container, stream):
            for idx in c['sets']:
                s = {}
                data._decode_video(container, stream, video, np.asarray(idx), stats=s)
                for k in ('decoded', 'seeks'):
                    stats[k] = stats.get(k, 0) + s[k]
        print(f'frames decoded per clip {stats["decoded"] / len(c["sets"]):.1f}, seeks per clip '
              f'{stats["seeks"] / len(c["sets"]):.1f} (of {c["num_frames"]} frames)')


def _pick_video(arg: str | None, tmp: Path) -> Path:
    if arg and arg != 'gen':
        path = Path(arg)
        if not path.is_file():
            raise FileNotFoundError(f'--video {arg}: no such file')
        return path
    if arg is None and DEMO_VIDEO.is_file():
        return DEMO_VIDEO
    return _generate_clip(tmp / 'k400_like_340x256_30fps_10s_gop250.mp4')


def _generate_clip(path: Path, width: int = 340, height: int = 256, fps: int = 30, seconds: int = 10) -> Path:
    """A K400-like H.264 clip: a textured scene panning under moving blobs; GOP 250, B-frames on."""
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (height * 2, width * 2, 3), dtype=np.uint8)
    texture = ((texture.astype(np.uint16) + np.roll(texture, 1, 0) + np.roll(texture, 1, 1)) // 3).astype(np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), 'w') as out:
        stream = out.add_stream('libx264', rate=Fraction(fps, 1))
        stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
        stream.codec_context.gop_size = 250
        for t in range(fps * seconds):
            dx, dy = t * width // (fps * seconds), t * height // (2 * fps * seconds)   # slow pan, no wrap
            img = texture[dy:dy + height, dx:dx + width].copy()
            cx, cy = width / 2 + 100 * math.sin(t / 15), height / 2 + 60 * math.cos(t / 20)
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < 900] = (220, 60, 40)
            frame = av.VideoFrame.from_ndarray(img, format='rgb24')
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _describe_video(path: Path) -> str:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        keys = [i for i, p in enumerate(q for q in c.demux(s) if q.size) if p.is_keyframe]
        return (f'{s.codec_context.name} {s.width}x{s.height}, {float(s.average_rate):.4g} fps, '
                f'{s.frames} frames, keyframes at {keys}')


def _load() -> str:
    return 'load average {:.2f} {:.2f} {:.2f}'.format(*os.getloadavg())


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    for r in [header, ['-' * w for w in widths]] + rows:
        print('  '.join(str(v).ljust(w) if i < 2 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths))))


def cli(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    try:
        main(args)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f'error: {err}')


if __name__ == '__main__':
    cli()
