"""No silent wrong number from train.py, through the command line: unreadable val videos, --resume and used work
dirs, failure marks, class names of checkpoints, --predict.

One tiny run (module fixture) on a copy of the small generated set whose val split holds one unreadable video;
the tests resume it, rerun it, test it on other class lists.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import checkpoints
import data
import models
import omnisource
import train
import webscale

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1")
TINY = ["--arch", "tsn_tiny", "--batch-size", "8", "--workers", "0", "--test-clips", "3", "--test-crops", "1",
        "--log-interval", "2", "--epochs", "1"]


def train_py(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], capture_output=True, text=True,
                          timeout=300, env=ENV, cwd=ROOT)


def one_line_error(out: subprocess.CompletedProcess) -> str:
    assert out.returncode != 0, out.stdout[-2000:]
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), out.stderr[-2000:]
    return line


def copy_dataset(src: Path, dst: Path, classes: list[str], relabel: dict[int, int]) -> None:
    """The dataset at `src` (videos hard-linked) under another class list, its list labels moved by `relabel`."""
    shutil.copytree(src / "videos", dst / "videos", copy_function=os.link)
    (dst / "classes.txt").write_text("\n".join(classes) + "\n")
    for split in ("train", "val"):
        rows = [line.split() for line in (src / f"{split}.txt").read_text().splitlines()]
        (dst / f"{split}.txt").write_text("".join(f"{p} {relabel[int(l)]}\n" for p, l in rows))


@pytest.fixture(scope="module")
def run(small_data, tmp_path_factory):
    """(data root, work dir, the command's arguments, the bad val video) of one finished tiny run."""
    tmp = tmp_path_factory.mktemp("trust")
    root = tmp / "data"
    classes = (small_data / "synth" / "classes.txt").read_text().split()
    copy_dataset(small_data / "synth", root / "synth", classes, {i: i for i in range(len(classes))})
    bad = root / "synth" / (root / "synth" / "val.txt").read_text().splitlines()[3].split()[0]
    content = bad.read_bytes()
    bad.unlink()                                        # a hard link: the shared file stays intact
    bad.write_bytes(content[:40])                       # a truncated download
    argv = ["--data-root", str(root), "--target", "synth", *TINY, "--work-dir", str(tmp / "w")]
    out = train_py(*argv)
    assert out.returncode == 0, out.stderr[-3000:]
    return root, tmp / "w", argv, bad


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def steps(log: Path) -> list[tuple]:
    """log.jsonl's lines as (kind, epoch, step): one run has each once."""
    return [(r["kind"], r["epoch"], r.get("step")) for r in read_jsonl(log)]


# ----------------------------------------------------------------------------------------------------------------------
# An unreadable val video is left out, counted and named; never scored as another video
# ----------------------------------------------------------------------------------------------------------------------

def test_unreadable_val_video_is_left_out_counted_and_named(run):
    root, work, _, bad = run
    m = json.loads((work / "metrics.json").read_text())
    assert m["num_unreadable"] == 1 and m["unreadable"] == [str(bad)] and m["num_videos"] == 23
    lines = read_jsonl(work / "predictions.jsonl")
    assert [line["index"] for line in lines] == list(range(24))
    (gone,) = [line for line in lines if line.get("unreadable")]
    assert gone["path"] == str(bad) and "top5" not in gone and gone["index"] == 3
    readable = [line for line in lines if not line.get("unreadable")]
    hits = sum(line["top5"][0]["class"] == line["label"] for line in readable)
    assert m["top1"] == pytest.approx(hits / 23)
    # the quick validation after the epoch too
    (epoch,) = [r for r in read_jsonl(work / "log.jsonl") if r["kind"] == "epoch"]
    assert epoch["val"]["num_unreadable"] == 1 and epoch["val"]["num_videos"] == 23


# ----------------------------------------------------------------------------------------------------------------------
# --resume continues the same run only; a used work dir is never a second run's
# ----------------------------------------------------------------------------------------------------------------------

def test_resume_with_flags_that_change_the_run_is_refused_naming_each(run, tmp_path):
    _, work, argv, _ = run
    line = one_line_error(train_py(*argv, "--resume", "--batch-size", "4", "--lr-per-sample", "0.01",
                                   "--mixup", "0.2", "--workers", "1"))
    assert "--batch-size 8 -> 4" in line and "--lr-per-sample None -> 0.01" in line and "--mixup 0.0 -> 0.2" in line
    assert "--workers" not in line and line.count(" -> ") == 3
    # the flags that change nothing in the result stay free: the finished run resumes, its log untouched
    other = tmp_path / "w"
    shutil.copytree(work, other)
    free = ["--workers", "1", "--log-interval", "3", "--eval-batch-size", "2", "--save-every", "1"]
    out = train_py(*argv, "--work-dir", str(other), "--resume", *free)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (other / "log.jsonl").read_text() == (work / "log.jsonl").read_text()
    assert json.loads((other / "metrics.json").read_text())["top1"] == json.loads(
        (work / "metrics.json").read_text())["top1"]


def test_every_flag_but_the_free_ones_is_checked_on_resume():
    """The free list is the one place: every other flag of the parser, a new one too, is compared."""
    args = train.get_args_parser().parse_args([])
    saved = dict(vars(args))
    for key, value in vars(args).items():
        changed = argparse.Namespace(**{**saved, key: "another value"})
        if key in checkpoints.RESUME_FREE_FLAGS:
            checkpoints.check_resume_args(saved, changed, Path("latest.pth"))
        else:
            with pytest.raises(ValueError, match=f"--{key.replace('_', '-')} .* -> 'another value'"):
                checkpoints.check_resume_args(saved, changed, Path("latest.pth"))


def test_same_command_twice_is_refused_and_the_procedure_reruns_its_runs_afresh(run, tmp_path, monkeypatch):
    _, work, argv, _ = run
    log = (work / "log.jsonl").read_text()
    line = one_line_error(train_py(*argv))
    assert f"--work-dir {work} already holds a run" in line and "--resume" in line
    assert (work / "log.jsonl").read_text() == log
    # python omnisource.py run again: its train.py step runs into the same folder, which starts afresh
    other = tmp_path / "w"
    shutil.copytree(work, other)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")             # the step's train.py inherits it
    procedure = argparse.Namespace(resume=False, dry_run=False, work_dir=str(tmp_path), nproc=1)
    omnisource.run_step(procedure, "train.py", argv[:-2] + ["--work-dir", str(other)])
    one_run = [("train", 1, 2), ("train", 1, 4), ("epoch", 1, None)]
    assert steps(other / "log.jsonl") == steps(work / "log.jsonl") == one_run


def test_omnisource_resume_with_another_command_is_refused(run, tmp_path):
    root, _, _, _ = run
    base = [sys.executable, str(ROOT / "omnisource.py"), "--data-root", str(root), "--work-dir", str(tmp_path),
            "--workers", "0"]
    # a batch larger than the target set passes the procedure's own checks and fails inside step 1's train.py
    first = subprocess.run(base + ["--batch-size", "100000"], capture_output=True, text=True, timeout=300,
                           env=ENV, cwd=ROOT)
    assert first.returncode != 0 and (tmp_path / "steps.json").exists()     # step 1 failed; recorded as begun
    line = one_line_error(subprocess.run(base + ["--resume", "--workers", "1", "--epochs", "2", "--batch-size", "4"],
                                         capture_output=True, text=True, timeout=300, env=ENV, cwd=ROOT))
    assert "--batch-size 100000 -> 4" in line and "--epochs None -> 2" in line
    assert "--workers" not in line and line.count(" -> ") == 2


# ----------------------------------------------------------------------------------------------------------------------
# Failure marks by source and path
# ----------------------------------------------------------------------------------------------------------------------

def test_failure_marks_follow_the_source_and_path_not_the_position(tmp_path):
    """A bad file of source 'web' marked in one run lands on that file of 'web' in a resumed run whose lists
    differ (another order, another source before it), and on nothing else."""
    def dataset(paths: list[str]) -> data.VideoDataset:
        return data.VideoDataset([webscale.Sample(tmp_path / p, 0, "video") for p in paths], data.Sampling())

    def run_of(sources: dict[str, list[str]]) -> argparse.Namespace:
        return argparse.Namespace(source_names=list(sources), datasets=[dataset(p) for p in sources.values()],
                                  rng=np.random.default_rng(0), device=torch.device("cpu"))

    before = run_of({"target": ["t0", "t1", "t2"], "web": ["w0", "w1", "w2", "w3"]})
    before.datasets[1]._failed[2] = 1                       # web's w2
    state = checkpoints.rank_rng_state(before)
    after = run_of({"target": ["t0", "t1", "t2"], "other": ["o0", "o1", "o2"], "web": ["w3", "w2", "w1", "w0"]})
    checkpoints.set_rank_rng_state(after, state)
    assert [ds._failed.tolist() for ds in after.datasets] == [[0, 0, 0], [0, 0, 0], [0, 1, 0, 0]]


# ----------------------------------------------------------------------------------------------------------------------
# A checkpoint's outputs are read by class name
# ----------------------------------------------------------------------------------------------------------------------

def test_class_list_in_another_order_gives_the_same_predictions(run):
    root, work, _, _ = run
    classes = (root / "synth" / "classes.txt").read_text().split()
    k = len(classes)
    copy_dataset(root / "synth", root / "shuffled", classes[::-1], {i: k - 1 - i for i in range(k)})
    test = ["--data-root", str(root), "--checkpoint", str(work / "final.pth"), "--test", *TINY]
    out = train_py(*test, "--target", "shuffled", "--work-dir", str(work.parent / "shuffled"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "in another order; its outputs are mapped by name" in out.stdout
    names = [[p["name"] for p in line.get("top5", [])] for line in read_jsonl(work / "predictions.jsonl")]
    again = [[p["name"] for p in line.get("top5", [])]
             for line in read_jsonl(work.parent / "shuffled" / "predictions.jsonl")]
    assert again == names
    assert json.loads((work.parent / "shuffled" / "metrics.json").read_text())["top1"] == pytest.approx(
        json.loads((work / "metrics.json").read_text())["top1"])
    # other names: refused
    copy_dataset(root / "synth", root / "renamed", classes[:-1] + ["juggling"], {i: i for i in range(k)})
    line = one_line_error(train_py(*test, "--target", "renamed", "--work-dir", str(work.parent / "renamed")))
    assert str(work / "final.pth") in line and "juggling" in line and classes[-1] in line   # named as written


def test_checkpoint_without_class_names_says_which_list_it_is_read_against(run, tmp_path):
    root, work, _, _ = run
    net = models.from_checkpoint(work / "final.pth")
    torch.save(models.mmaction_checkpoint(net), tmp_path / "mm.pth")   # no classes: as the released MMAction2 files
    out = train_py("--data-root", str(root), "--target", "synth", "--checkpoint", str(tmp_path / "mm.pth"),
                   "--test", *TINY, "--test-clips", "1", "--work-dir", str(tmp_path / "w"))
    assert out.returncode == 0, out.stderr[-2000:]
    (line,) = [s for s in out.stdout.splitlines() if "carries no class names" in s]
    assert "--target synth" in line and ", ".join(net.classes[:4]) in line


# ----------------------------------------------------------------------------------------------------------------------
# --predict
# ----------------------------------------------------------------------------------------------------------------------

def test_predict_gives_the_tests_top1_and_survives_a_bad_path(run, tmp_path):
    """Two val videos and a missing file: the two get --test's top-5 (the fixture's final test, same protocol
    flags), printed and in predictions.jsonl; the missing one is one warning line. An MMAction2 file without
    names reads its outputs against --classes FILE."""
    root, work, _, _ = run
    tested = {line["path"]: line for line in read_jsonl(work / "predictions.jsonl") if "top5" in line}
    videos = sorted(tested)[:2]
    missing = str(tmp_path / "missing.mp4")
    protocol = ["--test-clips", "3", "--test-crops", "1", "--workers", "0"]
    out = train_py("--predict", videos[0], missing, videos[1], "--checkpoint", str(work / "final.pth"), *protocol,
                   "--work-dir", str(tmp_path / "p"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert [s for s in out.stderr.splitlines() if missing in s] == [next(s for s in out.stderr.splitlines()
                                                                      if "failed to load" in s)]
    lines = read_jsonl(tmp_path / "p" / "predictions.jsonl")
    assert [line["path"] for line in lines] == [videos[0], missing, videos[1]] and lines[1]["unreadable"]
    for line in (lines[0], lines[2]):
        expected = tested[line["path"]]["top5"]
        assert [p["name"] for p in line["top5"]] == [p["name"] for p in expected] and "label" not in line
        assert [p["prob"] for p in line["top5"]] == pytest.approx([p["prob"] for p in expected], abs=1e-5)
        shown = next(s for s in out.stdout.splitlines() if s.startswith(line["path"] + ": "))
        assert shown.split(": ", 1)[1].split(", ")[0].split()[0] == expected[0]["name"]
    # an MMAction2-format checkpoint (no class names) with the class list given as a file
    net = models.from_checkpoint(work / "final.pth")
    torch.save(models.mmaction_checkpoint(net), tmp_path / "mm.pth")
    (tmp_path / "classes.txt").write_text("\n".join(net.classes) + "\n")
    out = train_py("--predict", videos[0], "--checkpoint", str(tmp_path / "mm.pth"), "--arch", "tsn_tiny",
                   "--classes", str(tmp_path / "classes.txt"), *protocol, "--work-dir", str(tmp_path / "m"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"of --classes {tmp_path / 'classes.txt'} in that order" in out.stdout
    (line,) = read_jsonl(tmp_path / "m" / "predictions.jsonl")
    assert line["top5"][0]["name"] == tested[videos[0]]["top5"][0]["name"]
