"""filter.py decides once (Sec. 3.4): rules over the whole crawl, and a finished run re-decided without a teacher.

- Rules: `class_adaptive_thresholds` (FlexMatch-style T_c = T * beta_c) on a tiny array, by hand; --rule NAME:VALUE
  parsed and refused by `parse_rule`; a new rule with its own value is one function and one RULES entry (a top-k
  per class rule registered here), re-decided under another value without the teacher.
- The same command on a finished output with another --threshold, --mode or --rule re-decides from its columns
  (the teacher file renamed away in between) and writes what a fresh run with those flags writes.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import data
import figures
import filter as flt
import models
import synthetic
from test_filter import scores_of

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1")
OUTPUTS = ("train.txt", "samples.jsonl", "duplicates.txt", "classes.txt", "train_frame_scores.json")
COLUMNS = ("scores.npz", "decision.npz")


# ----------------------------------------------------------------------------------------------------------------------
# Rules: the threshold each class is held to (--rule NAME[:VALUE])
# ----------------------------------------------------------------------------------------------------------------------

def test_class_adaptive_thresholds_by_hand():
    # deciding labels and probabilities of 6 samples over 3 classes (NaN: not scored)
    labels = np.array([0, 0, 1, 1, 2, 0])
    p = np.array([0.9, 0.7, 0.4, 0.6, np.nan, 0.8], dtype=np.float32)
    # class means: 0 -> (0.9 + 0.7 + 0.8) / 3 = 0.8, 1 -> 0.5, 2 -> no scored sample; beta = mean / 0.8
    got = flt.class_adaptive_thresholds(labels, p, 3, 0.6)
    np.testing.assert_allclose(got, [0.6, 0.6 * 0.5 / 0.8, 0.6], rtol=1e-6)
    assert flt.fixed_thresholds(labels, p, 3, 0.6).tolist() == [0.6, 0.6, 0.6]
    # through keep_decision; pseudo labels 0, 1, 0, 1, 1 with probabilities 0.9, 0.7, 0.6, 0.8, 0.55: class
    # means 0.75 and 0.6833 (the largest is class 0's), so at T = 0.75 class 1 is held to 0.75 * 0.6833 / 0.75
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8], [0.45, 0.55]])
    scores = scores_of(probs, [0, 1, 0, 1, 1])
    mean1 = (0.7 + 0.8 + 0.55) / 3
    keep, label, held = flt.keep_decision(scores, 2, "pseudo", 0.75, "class-adaptive")
    assert label.tolist() == [0, 1, 0, 1, 1]
    np.testing.assert_allclose(held, [0.75, mean1, 0.75, mean1, mean1], rtol=1e-6)
    assert keep.tolist() == [True, True, False, True, False]          # 0.7 >= 0.6833 now
    assert flt.keep_decision(scores, 2, "pseudo", 0.75, "fixed")[0].tolist() == [True, False, False, True, False]
    # query mode: the same query classes, p(query) the same numbers: at T = 0.6 class 1 is held to 0.5467
    keep, _, held = flt.keep_decision(scores, 2, "query", 0.6, "class-adaptive")
    np.testing.assert_allclose(held, [0.6, 0.6 * mean1 / 0.75, 0.6, 0.6 * mean1 / 0.75, 0.6 * mean1 / 0.75],
                               rtol=1e-6)
    assert keep.tolist() == [True, True, True, True, True]
    assert flt.keep_decision(scores, 2, "query", 0.6)[0].tolist() == [True, True, True, True, False]


def topk_thresholds(labels: np.ndarray, p: np.ndarray, num_classes: int, threshold: float, k: int) -> np.ndarray:
    """An example rule with its own value, --rule topk:K: each class keeps its K most probable samples (at least T):
    T_c = max(T, the K-th largest deciding probability of the samples labelled c)."""
    if k < 1:
        raise ValueError(f"K must be >= 1, got {k}")
    held = np.full(num_classes, float(threshold))
    for c in range(num_classes):
        q = np.sort(p[(labels == c) & ~np.isnan(p)])[::-1]
        held[c] = max(held[c], float(q[k - 1])) if len(q) >= k else held[c]
    return held


def test_parse_rule_reads_name_and_value_and_refuses_the_rest(monkeypatch):
    assert flt.parse_rule("fixed") == (flt.fixed_thresholds, ())
    assert flt.parse_rule("class-adaptive") == (flt.class_adaptive_thresholds, ())
    monkeypatch.setitem(flt.RULES, "topk", (topk_thresholds, int))
    assert flt.parse_rule("topk:2") == (topk_thresholds, (2,))
    for bad, why in (("bogus", ""), ("fixed:1", ""), ("topk", ""), ("topk:two", ""), ("topk:0", " (K must be >= 1")):
        with pytest.raises(ValueError, match=re.escape(f"--rule {bad}: expected one of fixed, class-adaptive, "
                                                       f"topk:INT{why}")):
            flt.parse_rule(bad)
    with pytest.raises(ValueError, match="--rule bogus"):
        flt.FilterConfig(rule="bogus")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Generated demo data: a 'mixed' source of web images, short videos and untrimmed videos; a tsn_tiny teacher."""
    root = tmp_path_factory.mktemp("filter_decide")
    config = synthetic.SynthConfig(num_classes=2, train_per_class=1, val_per_class=1, web_images_per_class=3,
                                   web_videos_per_class=2, untrimmed_per_class=1, width=32, height=32,
                                   web_video_size=32, clip_frames=(8, 10), web_video_frames=(8, 10),
                                   untrimmed_frames=(40, 48))
    synthetic.generate(root, config)
    classes = data.read_classes(root / "synth" / "classes.txt")
    torch.manual_seed(0)
    model = models.build_model("tsn_tiny", 2)
    torch.save(dict(model=model.state_dict(), arch="tsn_tiny", model_args={}, classes=classes), root / "teacher.pth")
    mixed = root / "mixed"
    mixed.mkdir()
    lines = []
    for source, folder in (("synth-web-img", "images"), ("synth-web-vid", "videos"),
                           ("synth-web-untrimmed", "untrimmed")):
        (mixed / folder).symlink_to(root / source / folder)
        lines += (root / source / "train.txt").read_text().splitlines()
    (mixed / "train.txt").write_text("".join(f"{ln}\n" for ln in lines))
    (mixed / "val.txt").write_text(lines[0] + "\n")
    (mixed / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    return root


def run(root: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "filter.py"), "--data-root", str(root), "--source", "mixed",
                           "--teacher", str(root / "teacher.pth"), "--workers", "0", "--fps", "2", "--quiet",
                           *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=180, env=ENV)


def outputs(folder: Path) -> dict:
    """The output files' bytes; the columns' arrays (an .npz's zip entries carry the time they were written)."""
    got = {name: (folder / name).read_bytes() for name in OUTPUTS if (folder / name).is_file()}
    for name in COLUMNS:
        with np.load(folder / name) as f:
            got[name] = {k: (f[k].dtype.str, f[k].tobytes()) for k in f.files}
    return got


# ----------------------------------------------------------------------------------------------------------------------
# Re-deciding a finished run from its columns, without a teacher
# ----------------------------------------------------------------------------------------------------------------------

def test_another_threshold_mode_or_rule_re_decides_without_the_teacher(root):
    first = run(root, "--out", "f", "--threshold", "0.5")
    assert first.returncode == 0, first.stderr
    scored = json.loads((root / "f" / "report.json").read_text())["run"]["scored"]
    assert scored > 0
    for flags in (("--threshold", "0.52", "--mode", "pseudo", "--rule", "class-adaptive"),):
        fresh = run(root, "--out", "fresh", *flags)                     # a run from scratch with these flags
        assert fresh.returncode == 0, fresh.stderr
        os.rename(root / "teacher.pth", root / "teacher.away")          # no teacher can be built now
        try:
            again = run(root, "--out", "f", *flags)
        finally:
            os.rename(root / "teacher.away", root / "teacher.pth")
        assert again.returncode == 0, again.stderr
        assert "re-deciding" in again.stderr and "no teacher is run" in again.stderr
        report = json.loads((root / "f" / "report.json").read_text())
        assert report["run"]["redecided"] and report["run"]["scored"] == 0
        assert outputs(root / "f") == outputs(root / "fresh")
        assert not list(root.glob(".f.*"))                               # no work folder left behind
    recs = list(figures.read_filter_output(root / "f").records())    # samples.jsonl with the decision
    assert {r["status"] for r in recs} >= {"kept", "corrupt"} and {r["kind"] for r in recs} >= {"image", "untrimmed"}
    # the rule's thresholds by hand: 0.52 x the class's mean top probability / the largest class mean
    scored = [r for r in recs if "threshold" in r]
    means = {c: np.mean([r["top_score"] for r in scored if r["top_class"] == c])
             for c in {r["top_class"] for r in scored}}
    for r in scored:
        assert r["threshold"] == pytest.approx(0.52 * means[r["top_class"]] / max(means.values()), rel=1e-6)
        assert r["status"] == ("kept" if r["top_score"] >= r["threshold"] else "dropped")
    # the teacher gone, a run with other scoring settings cannot re-decide: a one-line error names the file
    os.rename(root / "teacher.pth", root / "teacher.away")
    try:
        proc = run(root, "--out", "f", "--fps", "1")
    finally:
        os.rename(root / "teacher.away", root / "teacher.pth")
    assert proc.returncode != 0 and "teacher.pth" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_source_classes_in_another_order_give_the_same_decisions_by_name(root):
    """The teacher's outputs are matched to the source's query classes by name: the source's classes.txt
    shuffled (labels rewritten to the same names) keeps the same samples with the same labels."""
    shuffled = root / "shuffled"
    shuffled.mkdir()
    names = data.read_classes(root / "synth-web-img" / "classes.txt")
    (shuffled / "classes.txt").write_text("".join(f"{c}\n" for c in names[::-1]))
    lines = []
    for ln in (root / "synth-web-img" / "train.txt").read_text().splitlines():
        path, label = ln.split()
        lines.append(f"{path} {len(names) - 1 - int(label)}")
        folder = path.split("/")[0]
        if not (shuffled / folder).exists():
            (shuffled / folder).symlink_to(root / "synth-web-img" / folder)
    (shuffled / "train.txt").write_text("".join(f"{ln}\n" for ln in lines))
    (shuffled / "val.txt").write_text(lines[0] + "\n")
    a = run(root, "--out", "by-name-a", "--threshold", "0.5", "--source", "synth-web-img")
    b = run(root, "--out", "by-name-b", "--threshold", "0.5", "--source", "shuffled")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    la = [ln.split(maxsplit=1)[1] for ln in (root / "by-name-a" / "train.txt").read_text().splitlines()]
    lb = [ln.split(maxsplit=1)[1] for ln in (root / "by-name-b" / "train.txt").read_text().splitlines()]
    assert la == lb and len(la) > 0                                   # the same samples, the same teacher labels
    assert (root / "by-name-a" / "classes.txt").read_text() == (root / "by-name-b" / "classes.txt").read_text()
    ra, rb = (list(figures.read_filter_output(root / name).records()) for name in ("by-name-a", "by-name-b"))
    assert [(r["query"], r.get("query_score"), r["status"]) for r in ra] == \
           [(r["query"], r.get("query_score"), r["status"]) for r in rb]


def test_re_deciding_reads_no_record_and_no_teacher(root, monkeypatch):
    """A re-decide reads the finished run's columns (scores.npz), not its records: with samples.jsonl emptied and
    the teacher file gone, --threshold 0.3 lists exactly the samples whose recorded p(query) is >= 0.3 (query
    mode), and samples.jsonl is left as it was (what the teachers saw is never rewritten). In-process, without
    the figures drawn at the end (they read the few records they show)."""
    first = run(root, "--out", "h", "--threshold", "0.5")
    assert first.returncode == 0, first.stderr
    recs = [json.loads(line) for line in (root / "h" / "samples.jsonl").read_text().splitlines()]
    want = [f'../mixed/{r["path"]} {r["query"]}' for r in recs
            if r.get("query_score") is not None and r["query_score"] >= 0.3]
    assert 0 < len(want) < len(recs)
    (root / "h" / "samples.jsonl").write_text("")
    monkeypatch.setattr(figures, "filter_figures", lambda folder: None)
    os.rename(root / "teacher.pth", root / "teacher.away")
    try:
        report = flt.main(flt.get_args_parser().parse_args(
            ["--data-root", str(root), "--source", "mixed", "--teacher", str(root / "teacher.pth"), "--workers", "0",
             "--fps", "2", "--quiet", "--out", "h", "--threshold", "0.3"]))
    finally:
        os.rename(root / "teacher.away", root / "teacher.pth")
    assert report["run"]["redecided"] and report["run"]["scored"] == 0 and report["counts"]["kept"] == len(want)
    assert (root / "h" / "train.txt").read_text().splitlines() == want
    assert (root / "h" / "samples.jsonl").read_text() == ""


def test_a_new_rule_is_one_function_and_its_value_re_decides_without_the_teacher(root, monkeypatch):
    """--rule topk:K, registered here (one function, one RULES entry), through filter.py's main on the generated
    source: with K = 2 and then, the teacher file gone, K = 1, each class keeps its K most probable samples (query
    mode, T = 0), counted by hand from what the teachers saw (samples.jsonl); the second run scores nothing."""
    monkeypatch.setitem(flt.RULES, "topk", (topk_thresholds, int))
    monkeypatch.setattr(figures, "filter_figures", lambda folder: None)
    argv = ["--data-root", str(root), "--source", "mixed", "--teacher", str(root / "teacher.pth"), "--workers", "0",
            "--fps", "2", "--quiet", "--out", "topk", "--threshold", "0"]
    for k, teacher in ((2, "teacher.pth"), (1, "teacher.away")):
        if teacher == "teacher.away":
            os.rename(root / "teacher.pth", root / "teacher.away")          # no teacher can be loaded now
        try:
            report = flt.main(flt.get_args_parser().parse_args(argv + ["--rule", f"topk:{k}"]))
        finally:
            if teacher == "teacher.away":
                os.rename(root / "teacher.away", root / "teacher.pth")
        recs = [json.loads(line) for line in (root / "topk" / "samples.jsonl").read_text().splitlines()]
        by_class = {}
        for r in recs:
            if r.get("query_score") is not None:
                by_class.setdefault(r["query"], []).append((r["query_score"], r["i"]))
        want = sorted(i for scored in by_class.values() for _, i in sorted(scored, reverse=True)[:k])
        kept = [r["i"] for r in figures.read_filter_output(root / "topk").records() if r["status"] == "kept"]
        assert kept == want and len(want) == k * len(by_class) and report["rule"] == f"topk:{k}"
        assert len((root / "topk" / "train.txt").read_text().splitlines()) == len(want)
        assert report["run"]["redecided"] == (k == 1) and (report["run"]["scored"] == 0) == (k == 1)
