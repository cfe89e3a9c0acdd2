"""filter.py as users run it at web scale: through the command line, under torchrun, killed and rerun.

- Every flag family of filter.py through a subprocess, including a bare state dict teacher (--teacher-arch).
- Sharding: a 2-process gloo torchrun gives the 1-process output byte for byte (images, short videos and
  untrimmed 1-FPS frames in one list, with de-duplication).
- Resume: SIGKILL half-way, the same command again: the uninterrupted output, and it did not start from zero.
- The summary's counts (report.json, Fig. 3) equal the per-sample records (samples.jsonl).
- Untrimmed videos for 3D students: the listed windows hold exactly the frames of the pieces --cut-pieces
  writes (same frame ranges, pixels within the re-encoding tolerance), and both outputs load in data.py; the
  pieces' 'raw' list filters again (the released kinetics_raw_200 layout).
- Query classes matched to the teacher's classes by name: partial overlap left out and counted, none an error.
- Untrimmed videos scored in chunks of at most --chunk-frames frames give the whole-video pass's output.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data
import figures
import filter as flt
import models
import synthetic
import transforms
import webscale
from test_filter import ColourTeacher, Output, colour_video, make_source, run_main

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1")
OUTPUTS = ("train.txt", "samples.jsonl", "duplicates.txt", "classes.txt", "train_frame_scores.json")
COLUMNS = ("scores.npz", "decision.npz")


def filter_cmd(*args):
    return [sys.executable, str(REPO / "filter.py"), *map(str, args)]


def run_filter(*args, timeout=180):
    return subprocess.run(filter_cmd(*args), capture_output=True, text=True, cwd=REPO, timeout=timeout, env=ENV)


def outputs(folder: Path) -> dict:
    """The output files' bytes; the columns' arrays (an .npz's zip entries carry the time they were written)."""
    got = {name: (folder / name).read_bytes() for name in OUTPUTS if (folder / name).is_file()}
    for name in COLUMNS:
        with np.load(folder / name) as f:
            got[name] = {k: (f[k].dtype.str, f[k].tobytes()) for k in f.files}
    return got


def records(folder: Path) -> list[dict]:
    """samples.jsonl's records with their decision (decision.npz), as the figures read them."""
    return list(figures.read_filter_output(folder).records())


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    """Generated demo data (2 classes; web images, short and untrimmed videos incl. broken files), a 'mixed'
    source listing all of them, untrained tsn_tiny / slowonly_tiny teachers (train.py checkpoints) and the
    tsn_tiny as a bare state dict."""
    root = tmp_path_factory.mktemp("filter_scale")
    config = synthetic.SynthConfig(num_classes=2, train_per_class=1, val_per_class=2, web_images_per_class=4,
                                   web_videos_per_class=2, untrimmed_per_class=2, width=32, height=32,
                                   web_video_size=32, clip_frames=(8, 10), web_video_frames=(8, 10),
                                   untrimmed_frames=(40, 48))
    synthetic.generate(root, config)
    classes = data.read_classes(root / "synth" / "classes.txt")
    torch.manual_seed(0)
    for arch in ("tsn_tiny", "slowonly_tiny"):
        model = models.build_model(arch, 2)
        torch.save(dict(model=model.state_dict(), arch=arch, model_args={}, classes=classes), root / f"{arch}.pth")
        if arch == "tsn_tiny":
            torch.save(model.state_dict(), root / "bare.pth")
    mixed = root / "mixed"
    mixed.mkdir()
    lines = []
    for source, folder in (("synth-web-img", "images"), ("synth-web-vid", "videos"),
                           ("synth-web-untrimmed", "untrimmed")):
        (mixed / folder).symlink_to(root / source / folder)
        lines += (root / source / "train.txt").read_text().splitlines()
    lines = [lines[k] for k in np.random.default_rng(0).permutation(len(lines))]   # kinds interleaved
    (mixed / "train.txt").write_text("".join(f"{ln}\n" for ln in lines))
    (mixed / "val.txt").write_text(lines[0] + "\n")
    shutil.copy(root / "synth" / "classes.txt", mixed / "classes.txt")
    return root


def test_bare_state_dict_teacher_through_the_command_line(demo_root):
    """--teacher-arch with a bare state dict: the same records as the self-describing checkpoint of the same net,
    and the probabilities are those of the net run in-process on the scoring protocol (one centre crop)."""
    outs = {}
    for name, extra in (("bare", ("--teacher", demo_root / "bare.pth", "--teacher-arch", "tsn_tiny")),
                        ("ckpt", ("--teacher", demo_root / "tsn_tiny.pth"))):
        proc = run_filter("--data-root", demo_root, "--source", "synth-web-img", *extra, "--out", f"f-{name}",
                          "--threshold", "0.5", "--workers", "0", "--quiet")
        assert proc.returncode == 0, proc.stderr
        outs[name] = (demo_root / f"f-{name}" / "samples.jsonl").read_text()
    assert outs["bare"] == outs["ckpt"]
    net = models.from_checkpoint(demo_root / "tsn_tiny.pth").eval()
    transform = transforms.test_transform("tsn", net.spec.crop_size, "center", uint8=True)
    scored = [r for r in records(demo_root / "f-bare") if "top_class" in r]
    assert len(scored) >= 4
    for r in scored:
        frames = data.read_frames(demo_root / "synth-web-img" / r["path"], [0])
        with torch.inference_mode():
            p = models.predict(net, transform(frames)[None], net.spec)[0]                # (K,)
        assert r["top_class"] == int(p.argmax()) and r["top_score"] == pytest.approx(float(p.max()), abs=1e-5)
        assert r["query_score"] == pytest.approx(float(p[r["query"]]), abs=1e-5)
        assert r["status"] == ("kept" if r["query_score"] >= 0.5 else "dropped")


def test_torchrun_two_processes_equal_one_process(demo_root):
    """Images, short videos and untrimmed videos (1-FPS frames) in one list, with de-duplication: the output
    of `torchrun --nproc_per_node 2` (gloo on the CPU) is the 1-process output byte for byte."""
    common = ("--data-root", demo_root, "--source", "mixed", "--teacher", demo_root / "tsn_tiny.pth",
              "--threshold", "0.4", "--batch-size", "2", "--workers", "1", "--dedup-against", "synth",
              "--dedup-frames", "2", "--fps", "2", "--chunk-frames", "5", "--quiet")
    one = run_filter(*common, "--out", "one")
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(REPO / "filter.py"), *map(str, common), "--out", "two"], capture_output=True,
                         text=True, cwd=REPO, timeout=240, env=ENV)
    assert two.returncode == 0, "\n".join(ln for ln in two.stderr.splitlines() if "error" in ln.lower())
    a, b = outputs(demo_root / "one"), outputs(demo_root / "two")
    assert set(a) == set(OUTPUTS + COLUMNS) and a == b
    recs = records(demo_root / "one")
    assert {r["kind"] for r in recs} == {"image", "video", "untrimmed"}
    assert {r["status"] for r in recs} >= {"kept", "corrupt"}        # the demo's broken files are recorded
    report = json.loads((demo_root / "two" / "report.json").read_text())
    scored_one = json.loads((demo_root / "one" / "report.json").read_text())["run"]["scored"]
    assert report["run"]["ranks"] == 2 and report["run"]["scored"] == scored_one > 0
    assert not list(demo_root.glob(".two.*")) and not list(demo_root.glob(".one.*"))   # work folders removed
    check_summary_counts(demo_root / "two")


def check_summary_counts(folder: Path):
    """report.json's counts and per-class (Fig. 3) counts recomputed from samples.jsonl."""
    report, recs = json.loads((folder / "report.json").read_text()), records(folder)
    assert [r["i"] for r in recs] == list(range(len(recs))) and report["counts"]["total"] == len(recs)
    for status in ("kept", "dropped", "corrupt", "duplicate"):
        assert report["counts"][status] == sum(r["status"] == status for r in recs)
    for c in report["per_class"]:
        mine = [r for r in recs if r["query"] == c["index"]]
        assert c["before"] == len(mine)
        for status in ("kept", "dropped", "corrupt", "duplicate"):
            assert c[status] == sum(r["status"] == status for r in mine)
        assert c["after"] == sum(r["status"] == "kept" and r["label"] == c["index"] for r in recs)
    kept = [r for r in recs if r["status"] == "kept"]
    assert len((folder / "train.txt").read_text().splitlines()) == len(kept)


def test_sigkill_half_way_then_rerun_equals_uninterrupted(demo_root, tmp_path):
    """400 web images (hard links of 4 crawled-size JPEGs): killed with SIGKILL after a fifth of the blocks were
    recorded, the same command finishes with the uninterrupted run's output and scores only what was left."""
    root = tmp_path / "root"
    crawl = root / "crawl"
    (crawl / "images").mkdir(parents=True)
    seeds = []
    for k, p in enumerate(sorted((demo_root / "synth-web-img" / "images").glob("*.jpg"))):
        try:
            Image.open(p).convert("RGB").resize((640, 480)).save(root / f"seed{k}.jpg", quality=90)
            seeds.append(root / f"seed{k}.jpg")
        except OSError:   # the demo's broken files
            pass
    n = 400
    for i in range(n):
        os.link(seeds[i % len(seeds)], crawl / "images" / f"{i:05d}.jpg")
    (crawl / "train.txt").write_text("".join(f"images/{i:05d}.jpg {i % 2}\n" for i in range(n)))
    (crawl / "val.txt").write_text("images/00000.jpg 0\n")
    shutil.copy(demo_root / "synth" / "classes.txt", crawl / "classes.txt")
    common = ("--data-root", root, "--source", "crawl", "--teacher", demo_root / "tsn_tiny.pth", "--threshold",
              "0.5", "--batch-size", "4", "--workers", "0", "--quiet")
    ref = run_filter(*common, "--out", "ref")
    assert ref.returncode == 0, ref.stderr
    work = root / ".killed.filter-work"
    proc = subprocess.Popen(filter_cmd(*common, "--out", "killed"), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    lines, deadline = 0, time.time() + 120
    while lines < n // 5 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
        shard = work / "records-00000.jsonl"
        lines = shard.read_bytes().count(b"\n") if shard.is_file() else 0
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = (work / "records-00000.jsonl").read_bytes().count(b"\n")
    assert n // 5 <= done < n and not (root / "killed").exists()         # killed half-way, nothing merged
    rerun = run_filter(*common, "--out", "killed")
    assert rerun.returncode == 0, rerun.stderr
    assert outputs(root / "killed") == outputs(root / "ref")
    scored = json.loads((root / "killed" / "report.json").read_text())["run"]["scored"]
    assert scored <= n - done + 4 and scored < n                          # at most the torn block redone
    assert not work.exists()
    check_summary_counts(root / "killed")
    # another command on the same work folder would mix settings: refused in one line, nothing deleted
    (root / ".other.filter-work").mkdir()
    shutil.copy(root / "ref" / "report.json", root / ".other.filter-work" / "unrelated.json")
    (root / ".other.filter-work" / "config.json").write_text('{"format": "omnisource-filter-work-1"}')
    proc = run_filter(*common, "--out", "other")
    assert proc.returncode != 0 and proc.stderr.startswith("error: --out other: ") and "other settings" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and (root / ".other.filter-work" / "unrelated.json").exists()


def test_windows_hold_the_frames_of_the_cut_pieces_and_raw_lists_refilter(demo_root):
    """--student 3d: positive 2-s windows by time (default) vs --cut-pieces; the other flag families too."""
    common = ("--data-root", demo_root, "--source", "synth-web-untrimmed", "--split", "train", "--teacher",
              demo_root / "slowonly_tiny.pth", "--student", "3d", "--piece-seconds", "2", "--clips", "1",
              "--threshold", "0", "--workers", "1", "--device", "cpu", "--chunk-frames", "8", "--quiet")
    for out, extra in (("win", ()), ("cut", ("--cut-pieces", "--amp", "bf16"))):
        proc = run_filter(*common, *extra, "--out", out)
        assert proc.returncode == 0, proc.stderr
    win = data.load_split(data.resolve_dataset(demo_root, "win"), "train")
    cut = data.load_split(data.resolve_dataset(demo_root, "cut"), "train")
    assert len(win) == len(cut) >= 3
    for k in range(len(win)):
        w, c = win[k], cut[k]
        assert (w.kind, c.kind, w.label) == ("windows", "raw", c.label)
        assert c.pos_clips == tuple(range(c.num_parts)) and len(w.windows) == c.num_parts   # T=0: all positive
        n, fps = data.count_frames(w.path), data.video_fps(w.path)
        for j, window in enumerate(w.windows):
            first, stop = data.window_frames(window, fps, n, w.path)
            piece = c.path / webscale.PART_TMPL.format(j)
            assert stop - first == data.count_frames(piece)                # the same frames ...
            a = data.read_frames(w.path, range(first, stop)).astype(np.float32)
            b = data.read_frames(piece, range(stop - first)).astype(np.float32)
            assert np.abs(a - b).mean() < 3.0                               # ... up to the re-encoding (crf 18)
    # both kinds load as training data (3D sampling inside the window / positive piece)
    for name in ("win", "cut"):
        ds = data.VideoDataset(data.load_split(data.resolve_dataset(demo_root, name), "train"),
                               data.Sampling(clip_len=4, frame_interval=1, num_clips=1))
        assert ds.load(0)[0].shape[0] == 4
    # the scores came from the same frames: identical windows' unit scores (fp32 'win'; 'cut' ran in bf16)
    rw, rc = records(demo_root / "win"), records(demo_root / "cut")
    assert [r.get("windows") for r in rw] == [r.get("windows") for r in rc]
    np.testing.assert_allclose([s for r in rw for s in r.get("unit_query", [])],
                               [s for r in rc for s in r.get("unit_query", [])], atol=0.02)
    # the pieces' RawVideoDataset list (the released kinetics_raw_200 layout) filters again: positive pieces
    shutil.copy(demo_root / "cut" / "train.txt", demo_root / "cut" / "val.txt")
    proc = run_filter("--data-root", demo_root, "--source", "cut", "--teacher", demo_root / "slowonly_tiny.pth",
                      "--threshold", "0", "--mode", "pseudo", "--clips", "1", "--workers", "0", "--out", "cut2",
                      "--dedup-against", "synth", "--dedup-checkpoint", demo_root / "tsn_tiny.pth",
                      "--dedup-frames", "1", "--batch-size", "3", "--quiet")
    assert proc.returncode == 0, proc.stderr
    again = data.load_split(data.resolve_dataset(demo_root, "cut2"), "train")
    assert [(s.kind, s.num_parts) for s in again] == [("raw", c.num_parts) for c in cut[:len(again)]]
    check_summary_counts(demo_root / "cut2")


def test_query_classes_matched_by_name(demo_root, tmp_path):
    """Source classes partly unknown to the teacher: those samples are left out and counted in one line; a
    source sharing no class name with the teacher is a one-line error; 2D images with --fps/--mode flags."""
    root = tmp_path / "root"
    src = root / "part"
    src.mkdir(parents=True)
    (src / "images").symlink_to(demo_root / "synth-web-img" / "images")
    shutil.copy(demo_root / "synth-web-img" / "train.txt", src / "train.txt")
    shutil.copy(demo_root / "synth-web-img" / "train.txt", src / "val.txt")
    names = data.read_classes(demo_root / "synth" / "classes.txt")
    labels = [int(ln.split()[1]) for ln in (src / "train.txt").read_text().splitlines()]
    (src / "classes.txt").write_text(f'not_a_teacher_class\n{names[1].upper().replace("_", " ")}\n')   # same name
    proc = run_filter("--data-root", root, "--source", "part", "--teacher", demo_root / "tsn_tiny.pth",
                      "--out", "part-f", "--threshold", "0", "--workers", "0")
    assert proc.returncode == 0, proc.stderr
    note = [ln for ln in proc.stderr.splitlines() if "not a teacher class" in ln]
    assert len(note) == 1 and f"{labels.count(0)} of {len(labels)} samples" in note[0]
    report = json.loads((root / "part-f" / "report.json").read_text())
    recs = records(root / "part-f")
    assert [r["query"] < 0 for r in recs] == [label == 0 for label in labels]
    # query class not a teacher class: left out ('unknown_query'), unless the file is broken ('corrupt')
    assert {r["status"] for r in recs if r["query"] < 0} <= {"unknown_query", "corrupt"}
    assert report["counts"]["unknown_query"] == sum(r["status"] == "unknown_query" for r in recs) > 0
    assert report["counts"]["kept"] == sum(r["status"] != "corrupt" for r in recs if r["query"] >= 0)   # T = 0
    (src / "classes.txt").write_text("nothing_shared\nnone_here\n")
    proc = run_filter("--data-root", root, "--source", "part", "--teacher", demo_root / "tsn_tiny.pth",
                      "--out", "part-g", "--quiet")
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("error: --source part: none of its 2 classes (nothing_shared, none_here)")


def test_untrimmed_scored_in_bounded_chunks(tmp_path, monkeypatch):
    """Sec. 3.5 at scale: a video's units reach the teacher in chunks of at most --chunk-frames decoded frames, and
    the decision, unit scores and sidecar are those of one whole-video pass."""
    colours = [c for s in range(8) for c in [("red" if s in (2, 5) else "grey")] * 2]     # 2 FPS, 8 s
    colour_video(tmp_path / "web" / "untrimmed" / "v.mp4", colours, fps=2)
    make_source(tmp_path, "web", ["untrimmed/v.mp4 0"])
    probs, chunks = flt.Scorer.probs, []
    monkeypatch.setattr(flt.Scorer, "probs", lambda self, views: chunks.append(len(views[0])) or probs(self, views))
    res: dict[int, Output] = {k: run_main(monkeypatch, tmp_path, "web", [ColourTeacher()], "--chunk-frames", k,
                                          out=f"out{k}") for k in (3, 64)}
    assert chunks == [3, 3, 2, 8]                              # 8 one-FPS frames, 3 at a time; then all at once
    assert res[3].lines == res[64].lines == ["../web/untrimmed/v.mp4 0"]
    assert res[3].records == res[64].records
    assert res[3].frame_scores == res[64].frame_scores
    np.testing.assert_allclose(res[3].frame_scores["../web/untrimmed/v.mp4"].scores,
                               [0.35, 0.35, 0.9, 0.35, 0.35, 0.9, 0.35, 0.35], atol=1e-4)
