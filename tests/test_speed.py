"""train.py's speed: no host sync in the training step, yet a non-finite loss still stops the run; fp16 loss scaling
clips the true gradients; uint8 batches normalised on the device; batched evaluation writing predictions.jsonl
(gathered over ranks in the split's order); --amp in evaluation. Then benchmark.py's judgements: the soak verdict on
curves whose answer is known, and `--what gpu` on a machine without a GPU."""
import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import benchmark
import data
import models
import train
import transforms
import webscale

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--arch", "tsn_tiny", "--batch-size", "8", "--workers", "0", "--test-clips", "3", "--test-crops", "1"]
# Tensor methods that make the host wait for the device (on a GPU): reading a value, or an output whose size
# depends on the values
SYNCS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy", "nonzero")


# ----------------------------------------------------------------------------------------------------------------------
# train.py: the training step, loss scaling, uint8 batches, evaluation
# ----------------------------------------------------------------------------------------------------------------------


def make_run(small_data, tmp_path, *extra):
    args = train.get_args_parser().parse_args(["--data-root", str(small_data), "--target", "synth", "--epochs", "1",
                                               "--work-dir", str(tmp_path), *FAST, *extra])
    return train.setup(args, 0, 1, torch.device("cpu"))


class SyncCounter:
    """Counts calls of the SYNCS methods while `on`. The DataLoader's own work is not counted (it is not the step);
    `per_batch` holds the count since the previous batch was fetched, taken at each fetch."""

    def __init__(self, monkeypatch):
        self.on, self.count, self.per_batch = False, 0, []
        for name in SYNCS:
            monkeypatch.setattr(torch.Tensor, name, self._wrap(getattr(torch.Tensor, name)))
        monkeypatch.setattr(torch, "nonzero", self._wrap(torch.nonzero))
        it = torch.utils.data.dataloader._BaseDataLoaderIter
        fetch = self.paused(it.__next__)

        def counted_fetch(*a, **k):
            self.per_batch.append(self.count)
            self.count = 0
            return fetch(*a, **k)
        monkeypatch.setattr(it, "__next__", counted_fetch)

    def _wrap(self, fn):
        def counted(*a, **k):
            self.count += self.on
            return fn(*a, **k)
        return counted

    def paused(self, fn):
        def run(*a, **k):
            on, self.on = self.on, False
            try:
                return fn(*a, **k)
            finally:
                self.on = on
        return run


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("amp", ["none", "bf16"])         # bf16: also channels-last, the GPU defaults' code path
def test_the_training_step_never_waits_for_the_host(small_data, tmp_path, monkeypatch, amp):
    """Three sources, 4 steps, a log line every 2: no sync between the logging points, one read at each."""
    run = make_run(small_data, tmp_path, "--aux", "synth-web-img,synth-web-vid", "--image-to-clip", "still", "--ratio",
                   "2:1:1",
                   "--log-interval", "2", "--amp", amp)
    assert run.args.channels_last == (amp == "bf16")
    counter = SyncCounter(monkeypatch)
    counter.on = True
    torch.ones(2).sum().item()                     # the counter sees the calls the old step made
    bool(torch.isfinite(torch.ones(())))
    assert counter.count == 2
    reads, real_summary = [], train.Meter.summary

    def summary(meter):                            # inside report_progress, which is not counted
        before, counter.on = counter.count, True
        out = real_summary(meter)
        reads.append(counter.count - before)
        counter.count, counter.on = before, False  # the logging point itself is allowed to read
        return out
    monkeypatch.setattr(train.Meter, "summary", summary)
    monkeypatch.setattr(train, "report_progress", counter.paused(train.report_progress))
    counter.on, counter.count = True, 0
    train.train_one_epoch(run, 0)
    counter.on = False
    assert len(run.loader) == 4 and len(counter.per_batch) == 4 * 3 + 1   # 4 steps x 3 sources, the end
    assert sum(counter.per_batch[1:]) + counter.count == 0                # after the first batch: no sync at all
    assert reads[:2] == [1, 1]                     # one read per log line (then the epoch's summary)


class NaNAt(torch.nn.Module):
    """Wraps a model: its `at`-th training forward (1-based) returns NaN logits."""

    def __init__(self, net, at):
        super().__init__()
        self.net, self.at, self.calls = net, at, 0
        self.spec = net.spec

    def forward(self, x):
        y = self.net(x)
        self.calls += self.training
        return y * float("nan") if self.training and self.calls == self.at else y


@pytest.mark.usefixtures("one_torch_thread")
def test_a_non_finite_loss_stops_the_run_naming_step_and_interval(small_data, tmp_path, monkeypatch, capsys):
    real_build = train.build
    monkeypatch.setattr(train, "build", lambda *a: NaNAt(real_build(*a), at=3))
    with pytest.raises(SystemExit) as exc:
        webscale.run_command(train.main, train.get_args_parser(), [
            "--data-root", str(small_data), "--target", "synth", "--epochs", "2", "--log-interval", "2",
            "--work-dir", str(tmp_path), *FAST])
    msg = str(exc.value.code)
    assert msg.startswith("error: non-finite loss at epoch 1 step 3 (logging interval of steps 3-4)"), msg
    assert "\n" not in msg and "--lr-per-sample" in msg
    assert not (tmp_path / "latest.pth").exists()          # stopped inside the first epoch, nothing saved
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2]                  # the interval before was logged normally


def one_step(small_data, tmp_path, amp, clip):
    """One optimiser step of tsn_tiny (8 of the training videos, batch 8) from the seed's initial weights:
    (weight change, the gradient norms the clipper saw, the run). Dropout off: fp16 and fp32 see one function."""
    run = make_run(small_data, tmp_path / amp, "--amp", amp, "--clip-grad", str(clip), "--label-fraction", "0.25",
                   "--lr-per-sample", "1e-2")
    run.net.dropout.p = 0.0
    before = {k: v.clone() for k, v in run.net.state_dict().items()}
    seen, real_clip = [], torch.nn.utils.clip_grad_norm_

    def clip_spy(params, max_norm, *a, **k):
        params = list(params)
        seen.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))))
        return real_clip(params, max_norm, *a, **k)
    torch.nn.utils.clip_grad_norm_ = clip_spy
    try:
        train.train_one_epoch(run, 0)
    finally:
        torch.nn.utils.clip_grad_norm_ = real_clip
    after = run.net.state_dict()
    delta = torch.cat([(after[k] - before[k]).flatten() for k in before if before[k].is_floating_point()])
    return delta, seen, run


@pytest.mark.usefixtures("one_torch_thread")
def test_fp16_loss_scaling_clips_the_unscaled_gradients(small_data, tmp_path):
    """Known answer: the fp32 step. With loss scaling (2^16) the clipper must see the true gradient norm and the
    clipped update must equal fp32's (to fp16 rounding); without unscaling both would be off by 2^16."""
    ref, ref_norms, _ = one_step(small_data, tmp_path, "none", clip=0.05)
    got, norms, run = one_step(small_data, tmp_path, "fp16", clip=0.05)
    assert run.scaler.is_enabled() and run.scaler.get_scale() >= 2 ** 15
    assert ref_norms[0] > 0.05                               # the clipping is active
    assert norms[0] == pytest.approx(ref_norms[0], rel=0.02)
    assert torch.linalg.vector_norm(got - ref) < 0.02 * torch.linalg.vector_norm(ref)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("arch", ["tsn_tiny", "slowonly_tiny"])
def test_uint8_batches_normalised_on_the_device_equal_the_float_pipeline(small_data, arch):
    """The workers' uint8 items, batched and normalised as the training step and predict do, equal the float
    pipeline's items (the same resized, cropped, flipped frames normalised on the host) exactly."""
    args = train.get_args_parser().parse_args(["--arch", arch, "--channels-last"])
    net = train.build(args, 4, torch.device("cpu")).eval()
    target = data.resolve_dataset(str(small_data), "synth")
    for split, test_mode, float_transform in (
            ("train", False, transforms.train_transform(net.spec.family, net.spec.crop_size)),
            ("val", True, transforms.test_transform(net.spec.family, net.spec.crop_size, "three_crop"))):
        u8 = train.make_dataset(args, target, split, net.spec, test_mode=test_mode, protocol="three_crop")
        reference = copy.copy(u8)
        reference.transform = float_transform
        items = [u8[i][0] for i in range(3)]
        assert all(x.dtype == torch.uint8 for x in items)
        expected = torch.stack([reference[i][0] for i in range(3)])
        if test_mode:                            # (N, V, C, T, H, W) views: predict normalises them
            with torch.no_grad():
                assert torch.equal(models.predict(net, torch.stack(items), net.spec),
                                   models.predict(net, expected, net.spec))
        else:
            assert torch.equal(train.model_input(torch.stack(items), args), expected)


def test_test_writes_per_video_predictions_gathered_in_split_order(small_data, tmp_path):
    """--test (one process, then two ranks) writes predictions.jsonl: one line per val video in list order, top-1
    agreeing with metrics.json; the two-rank file (each rank tested its share) equals the one-process file."""
    train.main(train.get_args_parser().parse_args(["--data-root", str(small_data), "--target", "synth",
                                                   "--epochs", "1", "--work-dir", str(tmp_path / "train"), *FAST]))
    ckpt = str(tmp_path / "train" / "final.pth")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    test = ["--data-root", str(small_data), "--target", "synth", "--test", "--checkpoint", ckpt, "--dump-probs",
            *FAST]
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), *test, "--work-dir", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "one" / "predictions.jsonl").read_text().splitlines()]
    val = data.load_split(data.resolve_dataset(str(small_data), "synth"), "val")
    assert [r["index"] for r in rows] == list(range(len(val))) and len(val) == 24
    assert [r["path"] for r in rows] == [str(s.path) for s in val]
    assert [r["label"] for r in rows] == [s.label for s in val]
    for r in rows:
        probs = torch.tensor(r["probs"])
        assert probs.sum() == pytest.approx(1.0, abs=1e-5) and len(probs) == 4
        assert [t["class"] for t in r["top5"]] == probs.argsort(descending=True).tolist()
        assert [t["prob"] for t in r["top5"]] == pytest.approx(probs.sort(descending=True).values.tolist())
    metrics = json.loads((tmp_path / "one" / "metrics.json").read_text())
    top1 = sum(r["top5"][0]["class"] == r["label"] for r in rows) / len(rows)
    assert metrics["top1"] == pytest.approx(top1) and metrics["num_videos"] == len(rows)
    # two ranks: rank r tests videos r, r+2, ...; rank 0 gathers and writes them in the split's order
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          "29531", str(ROOT / "train.py"), *test, "--work-dir", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    two = [json.loads(line) for line in (tmp_path / "two" / "predictions.jsonl").read_text().splitlines()]
    assert [(r["index"], r["path"], r["label"]) for r in two] == [(r["index"], r["path"], r["label"]) for r in rows]
    assert torch.allclose(torch.tensor([r["probs"] for r in two]), torch.tensor([r["probs"] for r in rows]),
                          atol=1e-5)
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["top1"] == pytest.approx(top1)


@pytest.mark.usefixtures("one_torch_thread")
def test_predict_runs_in_the_given_precision_or_the_callers():
    """evaluate passes --amp; filter.py calls predict inside its own autocast, which must stay in force."""
    args = train.get_args_parser().parse_args(["--arch", "tsn_tiny"])
    net = train.build(args, 4, torch.device("cpu")).eval()
    views = torch.randint(0, 256, (2, 1, 3, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        fp32 = models.predict(net, views, net.spec, amp="none")
        bf16 = models.predict(net, views, net.spec, amp="bf16")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inherited = models.predict(net, views, net.spec)
            forced_off = models.predict(net, views, net.spec, amp="none")
    assert bf16.dtype == fp32.dtype == torch.float32 and not torch.equal(bf16, fp32)
    assert torch.allclose(bf16, fp32, atol=0.05)
    assert torch.equal(inherited, bf16) and torch.equal(forced_off, fp32)


# ----------------------------------------------------------------------------------------------------------------------
# benchmark.py's judgements
# ----------------------------------------------------------------------------------------------------------------------


MiB, KiB = 2 ** 20, 2 ** 10


def soak_curve(pss_at, clips: int = 2000, every: int = 100) -> list[tuple[int, int, int]]:
    """A soak curve as bench_soak records it: (clips, RSS, anonymous PSS) every `every` clips; RSS = it + 100 MiB."""
    return [(n, int(pss_at(n)) + 100 * MiB, int(pss_at(n))) for n in range(every, clips + 1, every)]


def verdict_of(curve, files, capsys) -> tuple[str, float, int, str]:
    """(FLAT / GROWING, the fitted growth in MiB, the clips it spans, the line) as _soak_verdict prints them."""
    benchmark._soak_verdict(curve, files)
    out = capsys.readouterr().out
    found = re.search(r"= ([+-][0-9.]+) MiB over ([0-9]+) clips .*: (FLAT|GROWING) \(flat: fitted growth within "
                      r"max\(5%, 16 MiB\)\)$", out.strip())
    assert found, out
    return found[3], float(found[1]), int(found[2]), out


@pytest.mark.parametrize("base,slope,expected", [
    (400 * MiB, 0, "FLAT"),                  # flat
    (400 * MiB, 40 * KiB, "GROWING"),        # +39.1 MiB over the 1000 judged clips: over 5% of ~459 MiB
    (100 * MiB, 15 * KiB, "FLAT"),           # +14.6 MiB: within the 16 MiB floor (5% of ~122 MiB is 6.1 MiB)
    (100 * MiB, 17 * KiB, "GROWING"),        # +16.6 MiB: over it
    (1000 * MiB, 45 * KiB, "FLAT"),          # +43.9 MiB: within 5% of ~1066 MiB = 53.3 MiB (over the floor)
    (1000 * MiB, 60 * KiB, "GROWING")])      # +58.6 MiB: over 5% of ~1088 MiB = 54.4 MiB
def test_soak_verdict_on_linear_curves_with_known_growth(capsys, base, slope, expected):
    """2000 clips over 100 files: judged from clip 1000 (half the run; two passes would be 200) to 2000, so the
    fitted growth is the slope x 1000 clips exactly; a steep warm-up before clip 1000 does not count."""
    curve = soak_curve(lambda n: base + slope * n - (base / 2 * (1000 - n) / 1000 if n < 1000 else 0))
    verdict, growth, span, _ = verdict_of(curve, 100, capsys)
    assert span == 1000 and growth == pytest.approx(slope * 1000 / MiB, abs=0.05)
    assert verdict == expected


def test_soak_verdict_judges_after_two_passes_and_ignores_noise(capsys):
    """1000 files over 4000 clips: the warm-up is two passes (2000 clips), not half the run; a curve that grows
    100 MiB during them and then alternates by +-8 MiB around a constant is flat."""
    curve = soak_curve(lambda n: 300 * MiB + 100 * MiB * min(n, 2000) / 2000 + 8 * MiB * (-1) ** (n // 100),
                       clips=4000)
    verdict, growth, span, out = verdict_of(curve, 1000, capsys)
    assert "after warm-up (2000 clips) anonymous PSS 408.0 -> 408.0 MiB (range 392.0-408.0)" in out
    assert span == 2000 and abs(growth) < 1.0 and verdict == "FLAT"


def test_soak_verdict_needs_three_samples_after_the_warm_up(capsys):
    benchmark._soak_verdict(soak_curve(lambda n: 300 * MiB, clips=300), 100)   # judged from 200: samples 200, 300
    out = capsys.readouterr().out
    assert out.startswith("soak: too few samples after the warm-up (200 clips") and "FLAT" not in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the command measures it (minutes)")
def test_benchmark_gpu_mode_without_a_gpu_says_so_in_one_line():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmark.py"), "--what", "gpu"], capture_output=True,
                          text=True, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [f"benchmark --what gpu: no CUDA device visible to torch {torch.__version__} "
                                        f"(NCCL available: {torch.distributed.is_nccl_available()}); nothing to "
                                        f"measure on this machine"]
