"""The figures of every step show what they say: measured in the pixels of the PNG / GIF files.

- filter.py as a user runs it writes its figures: the Fig. 3 histogram's bar lengths are the per-class counts of
  samples.jsonl (and the target's train list) on the chart's known scale; the contact sheet's cells are the first
  images of the kept / dropped samples of highest probability; precision / recall bars match truth.json.
- Eq. 2: every frame of the GIFs is transforms.image_to_clip's output for that image (up to GIF's 256 colours).
- Untrimmed videos: the shaded spans of the timeline sit at the list's window times.
- Training: the quick-validation dots sit at (epoch, top-1); the heat map's cells darken monotonically with counts.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data
import models
import figures as o
import synthetic
import transforms

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def filtered_images(small_data, tmp_path_factory):
    """filter.py on the web images of the small demo with a random teacher at T = 0.25: some kept, some dropped."""
    torch.manual_seed(0)
    classes = data.read_classes(small_data / "synth" / "classes.txt")
    teacher = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    torch.save(dict(model=models.build_model("tsn_tiny", len(classes)).state_dict(), arch="tsn_tiny", model_args={},
                    classes=classes), teacher)
    out = subprocess.run([sys.executable, str(REPO / "filter.py"), "--data-root", str(small_data), "--source",
                          "synth-web-img", "--teacher", str(teacher), "--out", "fig-img", "--threshold", "0.25",
                          "--workers", "0", "--quiet"],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    folder = small_data / "fig-img"
    records = list(o.read_filter_output(folder).records())          # samples.jsonl with the decision
    assert {"kept", "dropped"} <= {r["status"] for r in records}
    return folder, records, classes


def bar_lengths(png: Path, colour: tuple) -> list[int]:
    """The length in pixels of every bar of `colour` right of FIG_LEFT, top to bottom (zero bars are not drawn)."""
    a = np.asarray(Image.open(png).convert("RGB"))[:, o.FIG_LEFT:]
    hit = (a == colour).all(axis=2)                  # (H, W)
    rows = np.flatnonzero(hit.any(axis=1))
    bars = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1) if len(rows) else []
    return [int(hit[b[len(b) // 2]].sum()) for b in bars]


def expected_lengths(counts: list[float], hi: float) -> list[int]:
    return [v for v in (round(c / hi * (o.FIG_W - 1)) for c in counts) if v > 0]


def test_filter_py_writes_the_fig3_histogram_to_scale(filtered_images, small_data, tmp_path):
    folder, records, classes = filtered_images
    k = len(classes)
    crawled = np.bincount([r["query"] for r in records], minlength=k)
    kept = np.bincount([r["label"] for r in records if r["status"] == "kept"], minlength=k)
    target = np.zeros(k, int)
    for line in (small_data / "synth" / "train.txt").read_text().split("\n"):
        if line.strip():
            target[int(line.split()[-1])] += 1
    png = folder / "class_histogram.png"                                   # filter.py's: crawled and kept
    for colour, counts in zip(o.COLOURS, (crawled, kept)):
        assert bar_lengths(png, colour) == expected_lengths(counts.tolist(), max(crawled.max(), kept.max()))
    assert bar_lengths(png, o.COLOURS[2]) == []
    o.filter_figures(folder, tmp_path, "x_", target="synth", log=lambda s: None)   # the procedure's: the target's too
    hi = max(crawled.max(), kept.max(), target.max())
    for colour, counts in zip(o.COLOURS, (crawled, kept, target)):
        assert bar_lengths(tmp_path / "x_class_histogram.png", colour) == expected_lengths(counts.tolist(), hi)


def test_contact_sheet_shows_the_most_probable_kept_and_dropped_samples(filtered_images, small_data):
    folder, records, classes = filtered_images
    sheet = np.asarray(Image.open(folder / "contact_sheet.png").convert("RGB")).astype(int)
    prefix = small_data / "synth-web-img"
    for status, first_col in (("kept", 0), ("dropped", o.SHEET_PER_CLASS)):
        for c in range(len(classes)):
            group = sorted((r for r in records if r["status"] == status and
                            (r["label"] if status == "kept" else r["query"]) == c), key=lambda r: -r["score"])
            x = o.FIG_LEFT + first_col * (o.THUMB + o.PAD)
            y = o.FIG_TOP + 12 + c * (o.THUMB + 14)
            cell = sheet[y:y + o.THUMB, x:x + o.THUMB]
            if not group:
                assert (cell == 255).all()
                continue
            image = Image.open(prefix / group[0]["path"]).convert("RGB")     # the small demo's images are small
            scale = o.THUMB / max(image.size)
            w, h = round(image.width * scale), round(image.height * scale)
            want = np.asarray(image.resize((w, h), Image.Resampling.BILINEAR)).astype(int)
            x0, y0 = (o.THUMB - w) // 2, (o.THUMB - h) // 2
            assert np.abs(cell[y0:y0 + h, x0:x0 + w] - want).max() <= 1


def test_precision_recall_bars_match_the_truth(filtered_images, small_data):
    folder, records, classes = filtered_images
    truth = json.loads((small_data / "truth.json").read_text())["synth-web-img"]
    k = len(classes)
    kept = [(r, truth[r["path"]]) for r in records if r["status"] == "kept"]
    correct = np.bincount([r["label"] for r, t in kept if r["label"] == t["true_class"]], minlength=k)
    possible = np.bincount([t["query"] for t in truth.values() if t["true_class"] == t["query"]], minlength=k)
    precision = correct / np.maximum(np.bincount([r["label"] for r, _ in kept], minlength=k), 1)
    recall = correct / np.maximum(possible, 1)
    png = folder / "filter_quality.png"
    assert bar_lengths(png, o.COLOURS[0]) == expected_lengths(precision.tolist(), 1.0)
    assert bar_lengths(png, o.COLOURS[1]) == expected_lengths(recall.tolist(), 1.0)
    overall = synthetic.filtering_quality(small_data, "fig-img", records)   # the same truth, counted another way
    assert correct.sum() / len(kept) == pytest.approx(overall["precision"])
    assert correct.sum() / possible.sum() == pytest.approx(overall["recall"])
    worst = np.where(possible > 0, recall, np.inf).argmin()                # --rule's figure: the worst class
    assert (overall["worst_class"], overall["worst_class_recall"]) == (classes[worst], pytest.approx(recall[worst]))


def test_eq2_gif_frames_are_image_to_clip_output(small_data, tmp_path):
    web = small_data / "synth-web-img"
    images = [(web / line.split()[0], int(line.split()[1])) for line in (web / "train.txt").read_text().splitlines()
              if line.endswith(".jpg 0") or line.endswith(".jpg 1")][:2]
    rng = np.random.default_rng(5)
    motion = transforms.HomographyGaussian(np.zeros(8), np.diag(rng.uniform(1e-4, 4e-4, 8)),
                                           per_class={1: (np.full(8, 0.01), np.eye(8) * 1e-4)})
    motion.save(tmp_path / "motion.json")
    paths = o.eq2_figures(images, tmp_path / "motion.json", tmp_path / "figs", seed=3, log=lambda s: None)
    assert [p.name for p in paths] == [f"eq2_{m}.gif" for m in transforms.IMAGE_TO_CLIP_MODES] + ["eq2_filmstrip.png"]
    for mode in transforms.IMAGE_TO_CLIP_MODES:
        clips = [transforms.image_to_clip(data.read_image(p, o.THUMB), o.EQ2_FRAMES, mode,
                                          np.random.default_rng([3, i]), motion, label, short_side=o.THUMB)
                 for i, (p, label) in enumerate(images)]
        gif = Image.open(tmp_path / "figs" / f"eq2_{mode}.gif")
        assert gif.n_frames == (1 if mode == "still" else o.EQ2_FRAMES)   # Pillow merges identical frames
        shown = []
        for t in range(gif.n_frames):
            gif.seek(t)
            shown.append(np.asarray(gif.convert("RGB")).astype(int))
        x = 0
        for clip in clips:                                    # the clips side by side, PAD apart
            h, w = clip.shape[1:3]
            part = [frame[:h, x:x + w] for frame in shown]
            errors = np.array([[np.abs(p - c.astype(int)).mean() for c in clip] for p in part])   # (shown, true)
            assert errors.min(axis=1).max() < 4                  # GIF's palette: a few levels
            if mode != "still":                                  # each shown frame is its own frame of the clip
                assert (errors.argmin(axis=1) == np.arange(o.EQ2_FRAMES)).all()
            x += w + o.PAD


def test_timeline_marks_the_window_times(small_data, tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    (root / "synth-web-untrimmed").symlink_to(small_data / "synth-web-untrimmed")
    truth = json.loads((small_data / "truth.json").read_text())["synth-web-untrimmed"]
    rel, t = next((p, t) for p, t in truth.items() if t["kind"] == "untrimmed")
    fps = synthetic.SynthConfig().fps
    length = t["num_frames"] / fps
    windows = [(1.0, 3.5), (6.0, length)]
    out = root / "untr"
    out.mkdir()
    classes = data.read_classes(small_data / "synth" / "classes.txt")
    per_class = [dict(index=c, name=n, before=0, after=0) for c, n in enumerate(classes)]
    (out / "report.json").write_text(json.dumps(dict(source="synth-web-untrimmed", mode="query", threshold=0.5,
                                                     classes=classes, per_class=per_class)))
    (out / "train.txt").write_text(f"../synth-web-untrimmed/{rel} {t['query']} "
                                   + " ".join(f"{a:.3f}:{b:.3f}" for a, b in windows) + "\n")
    record = json.dumps(dict(i=0, path=rel, query=t["query"], units=2, unit_query=[0.6, 0.3],
                             windows=[[0, 8], [8, 16]], fps=fps)) + "\n"
    (out / "samples.jsonl").write_text(record)
    np.savez(out / "scores.npz", query=np.array([t["query"]]), line_offset=np.array([0, len(record)]))
    np.savez(out / "decision.npz", statuses=np.array(["kept"]), status=np.array([0]), label=np.array([t["query"]]),
             score=np.array([0.6]), threshold=np.array([0.5]), positive_units=np.array([1]),
             cut_failed=np.zeros(0, int), cut_error=np.zeros(0, str))
    paths = o.filter_figures(out, log=lambda s: None)
    assert out / "timeline.png" in paths
    row = np.asarray(Image.open(out / "timeline.png").convert("RGB"))[o.FIG_TOP + 1, o.FIG_LEFT:o.FIG_LEFT + o.FIG_W]
    shaded = set(np.flatnonzero((row == o.SPAN).all(axis=1)))
    want = set()
    for a, b in windows:
        want |= set(range(round(a / length * (o.FIG_W - 1)), round(b / length * (o.FIG_W - 1)) + 1))
    assert shaded == want


def test_training_curves_and_heat_map(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    val = [0.25, 0.5, 0.75]
    log = [dict(kind="train", epoch=e, step=2, steps=2, loss_synth=2.0 - e / 2, acc_synth=e / 4) for e in (1, 2, 3)]
    log += [dict(kind="epoch", epoch=e + 1, val=dict(top1=v)) for e, v in enumerate(val)]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    cm = [[5, 1, 0], [2, 3, 4], [0, 7, 1]]
    classes = ["a", "b", "c"]
    curves, heat = o.train_figures(run, dict(classes=classes, confusion_matrix=cm), log=lambda s: None)
    # the third panel (quick validation) starts after two panels of FIG_LEFT + FIG_W + 16 px and PAD
    a = np.asarray(Image.open(curves).convert("RGB"))
    left = 2 * (o.FIG_LEFT + o.FIG_W + 16 + o.PAD)
    for epoch, top1 in zip((1, 2, 3), val):
        x = left + o.FIG_LEFT + round(epoch / 3 * (o.FIG_W - 1))
        y = o.FIG_TOP + o.FIG_H - 1 - round(top1 * (o.FIG_H - 1))
        assert tuple(a[y, x]) == o.COLOURS[0]
    # heat map cells: a corner pixel of cell (i, j); darker (smaller RGB sum) exactly when the count is larger
    h = np.asarray(Image.open(heat).convert("RGB")).astype(int)
    shade = {(i, j): h[o.FIG_TOP + i * o.CELL + 1, o.FIG_LEFT + j * o.CELL + 1].sum() for i in range(3)
             for j in range(3)}
    for p in shade:
        for q in shade:
            v, w = cm[p[0]][p[1]], cm[q[0]][q[1]]
            assert (v > w) == (shade[p] < shade[q]) and (v == w) == (shade[p] == shade[q])
    assert shade[0, 2] == 3 * 255 and tuple(h[o.FIG_TOP + 2 * o.CELL + 1, o.FIG_LEFT + o.CELL + 1]) == o.HEAT
