"""train.py's exact resume: a run killed with SIGKILL at several moments, with the default DataLoader workers (2,
persistent), then the same command plus --resume, ends with the weights, metrics.json and log of an uninterrupted
run, bit for bit; the same under a 2-process gloo torchrun, with each rank's own random state restored; and a
distributed run whose ranks see different work dirs ends instead of hanging.

The kills are real: the test watches the run's outputs (log.jsonl, latest.pth) and sends SIGKILL to the
process group (main process and its DataLoader workers) when the moment it waits for has come.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import data
import train

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
# 4 optimiser steps per epoch (32 videos, batch 8), a mid-epoch latest.pth every 3 steps (not aligned with the
# epochs), validation every epoch, mixup (numpy stream) and dropout (torch stream) drawing every step
COMMON = ["--target", "synth", "--arch", "tsn_tiny", "--crop-size", "32", "--epochs", "2", "--batch-size", "8",
          "--log-interval", "1", "--test-clips", "2", "--test-crops", "1", "--val-every", "1", "--mixup", "0.2",
          "--save-every", "3"]
TIMING = ("samples_per_s", "eta_s")          # the only log fields that may differ between two runs


def train_cmd(data_root, work, *extra):
    return [sys.executable, str(ROOT / "train.py"), "--data-root", str(data_root), "--work-dir", str(work),
            *COMMON, *extra]


def torchrun_cmd(script, data_root, *extra):
    """2 ranks on gloo; channels-last weights (the GPU default) also go through rank 0's broadcast of best.pth
    (with --select val)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
            str(free_port()), str(script), "--data-root", str(data_root), *COMMON, "--channels-last", *extra]


def test_sigkill_at_any_moment_then_resume_gives_the_uninterrupted_run(small_data, tmp_path):
    aux = ["--aux", "synth-web-img", "--image-to-clip", "still"]   # a second loader: its ClassResampler skips ahead
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_group(train_cmd(small_data, straight, *aux), tmp_path / "straight.err")
    cmd = train_cmd(small_data, killed, *aux)
    # 1. mid-epoch, after a --save-every checkpoint: steps done since it are lost and repeated
    kill_when(cmd, lambda: checkpoint_at(killed) is not None and checkpoint_at(killed)[1] > 0, tmp_path)
    epoch, step = checkpoint_at(killed)
    assert step > 0, (epoch, step)
    # 2. right after epoch 1's last step: validation, the epoch's log line and latest.pth follow
    kill_when(cmd + ["--resume"], lambda: any(r["kind"] == "train" and r["epoch"] == 1 and r["step"] == 4
                                              for r in log_records(killed)), tmp_path)
    # 3. in the final test: training is over (latest.pth after epoch 2), final.pth and metrics.json may not be
    #    written yet
    kill_when(cmd + ["--resume"], lambda: checkpoint_at(killed) == (2, 0), tmp_path)
    run_group(cmd + ["--resume"], tmp_path / "last.err")
    assert_same_run(straight, killed)


def test_two_ranks_resume_exactly_with_each_ranks_random_state(small_data, tmp_path):
    """2-process gloo torchrun: per-rank random streams differ, are saved per rank and each rank gets its own
    back. The uninterrupted run gives each rank its own work dir (node-local disks): with --select val only
    rank 0 sees best.pth, and the run must end rather than wait in mismatched collectives. Two target videos are
    broken, one read by each rank in epoch 1: the logged count is the sum over the ranks."""
    data_root = broken_copy(small_data, tmp_path / "data")
    node_local = tmp_path / "node_local.py"
    node_local.write_text(
        "import os, runpy, sys\n"
        f"sys.argv = [{str(ROOT / 'train.py')!r}] + sys.argv[1:] + "
        f"['--work-dir', os.path.join({str(tmp_path / 'straight')!r}, 'node' + os.environ['RANK'])]\n"
        f"runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')\n")
    run_group(torchrun_cmd(node_local, data_root, "--select", "val"), tmp_path / "straight.err", timeout=240)
    straight, shared = tmp_path / "straight" / "node0", tmp_path / "shared"
    assert [r["failed_samples"] for r in log_records(straight) if r["kind"] == "train" and r["epoch"] == 1][-1] == 2
    assert not any((tmp_path / "straight" / "node1").glob("*.pth"))       # rank 1 never saw a checkpoint
    rng = torch.load(straight / "latest.pth", weights_only=True)["rng"]
    assert len(rng) == 2
    assert not torch.equal(rng[0]["torch"], rng[1]["torch"])              # dropout masks differ per rank
    assert rng[0]["numpy"] != rng[1]["numpy"] and rng[0]["python"] != rng[1]["python"]
    # the same command on a shared work dir, killed after a mid-epoch checkpoint, then resumed
    cmd = torchrun_cmd(ROOT / "train.py", data_root, "--select", "val", "--work-dir", str(shared))
    kill_when(cmd, lambda: checkpoint_at(shared) is not None and checkpoint_at(shared)[1] > 0, tmp_path,
              timeout=240)
    run_group(torchrun_cmd(ROOT / "train.py", data_root, "--select", "val", "--work-dir", str(shared), "--resume"),
              tmp_path / "resumed.err", timeout=240)
    assert_same_run(straight, shared)      # the weights depend on both ranks' dropout (gradients are averaged)
    resumed = torch.load(shared / "latest.pth", weights_only=True)["rng"]
    for r in range(2):                     # and each rank ends in its own uninterrupted state
        assert torch.equal(resumed[r]["torch"], rng[r]["torch"]), r
        assert resumed[r]["numpy"] == rng[r]["numpy"] and resumed[r]["python"] == rng[r]["python"], r


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------


def assert_same_run(a, b):
    """Bit-identical weights (latest, final and, with --select val, best), optimiser state, metrics.json and log
    (timing fields aside)."""
    assert (a / "best.pth").exists() == (b / "best.pth").exists()
    for name in ("latest.pth", "final.pth") + (("best.pth",) if (a / "best.pth").exists() else ()):
        x, y = (torch.load(d / name, weights_only=True) for d in (a, b))
        assert (x.get("epoch"), x.get("step"), x.get("weights")) == (y.get("epoch"), y.get("step"), y.get("weights"))
        assert x["model"].keys() == y["model"].keys()
        for k in x["model"]:
            assert torch.equal(x["model"][k], y["model"][k]), (name, k)
    xo, yo = (torch.load(d / "latest.pth", weights_only=True)["optimizer"]["state"] for d in (a, b))
    for k in xo:
        assert torch.equal(xo[k]["momentum_buffer"], yo[k]["momentum_buffer"]), k
    assert (a / "metrics.json").read_text() == (b / "metrics.json").read_text()
    strip = [[{k: v for k, v in r.items() if k not in TIMING} for r in log_records(d)] for d in (a, b)]
    assert strip[0] == strip[1]


def broken_copy(small_data, root):
    """The demo target with two training videos replaced by broken files: one read by rank 0 and one by rank 1
    in epoch 1 (train.ShardedShuffle's order), neither the other's replacement (index + stride)."""
    (root / "synth").mkdir(parents=True)
    for name in ("classes.txt", "val.txt"):
        (root / "synth" / name).write_text((small_data / "synth" / name).read_text())
    lines = (small_data / "synth" / "train.txt").read_text().splitlines()
    n, stride = len(lines), data._coprime_stride(len(lines))
    shards = [list(train.ShardedShuffle(n, rank, 2, seed=0)) for rank in (0, 1)]
    first = [shards[0][0], next(j for j in shards[1] if stride not in ((j - shards[0][0]) % n, (shards[0][0] - j) % n))]
    for i in first:
        lines[i] = f"videos/broken_{i}.mp4 {lines[i].split()[1]}"
        (root / "synth" / "videos").mkdir(exist_ok=True)
        (root / "synth" / "videos" / f"broken_{i}.mp4").write_bytes(b"<html>not a video</html>")
    (root / "synth" / "train.txt").write_text("\n".join(lines) + "\n")
    for line in lines:
        rel = line.split()[0]
        if not (root / "synth" / rel).exists():
            os.link(small_data / "synth" / rel, root / "synth" / rel)
    for line in (small_data / "synth" / "val.txt").read_text().splitlines():
        os.link(small_data / "synth" / line.split()[0], root / "synth" / line.split()[0])
    return root


def checkpoint_at(work):
    """(finished epochs, steps of the next) of WORK/latest.pth, or None before the first one."""
    path = Path(work) / "latest.pth"
    if not path.exists():
        return None
    state = torch.load(path, weights_only=True)            # renamed into place whole: never partly written
    return state["epoch"], state["step"]


def log_records(work):
    path = Path(work) / "log.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.endswith("}")]   # a line being written is skipped


def kill_when(cmd, moment, tmp_path, timeout=120):
    """Start `cmd` in its own process group, poll `moment()` and SIGKILL the whole group when it holds."""
    err = tmp_path / f"killed_{time.monotonic_ns()}.err"
    with open(err, "w") as f:
        proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=f, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not moment():
            assert proc.poll() is None, f"ended (rc {proc.returncode}) before the kill point: {err.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "the kill point never came"
            time.sleep(0.005)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:           # already gone
            pass
        proc.wait()


def run_group(cmd, err, timeout=120):
    """Run `cmd` to its end in its own process group (killed whole on a timeout: a hang fails the test)."""
    with open(err, "w") as f:
        proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=f, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"{' '.join(map(str, cmd[:4]))} ... still running after {timeout} s (hang): "
                    f"{Path(err).read_text()[-2000:]}")
    assert rc == 0, Path(err).read_text()[-3000:]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
