"""Tests for filter.py (Sec. 3.3-3.5): known answers from teachers whose outputs we set.

- keep_decision / ensemble / untrimmed_scores / one_fps_indices / dedup_threshold / find_duplicates / Whitening:
  hand-computed values.
- The command's own path (`filter.main`, in-process with stub teachers in place of the checkpoints) with stub
  teachers that map each flat input colour to fixed probabilities: the kept set, labels and recorded scores in
  'query' and 'pseudo' mode are known exactly; two teachers average (Fig. 6); 3D teachers are refused for images
  (Sec. 3.4).
- Corrupt files (zero-byte, text named .mp4, bad jpg, truncated mp4, a file deleted mid-run) are reported, skipped.
- De-duplication: a re-encoded, resized val frame is found, different images are spared (Sec. 3.3).
- Untrimmed videos (Sec. 3.5): 3D cutting gives the right pieces and positive indices, loadable by data.py;
  the 2D frame-score sidecar drives data.VideoDataset's Table 14 snippets (1 positive + 2 negatives).
- The CLI end to end on generated data (output accepted by train.py's dataset code), atomic outputs, and
  one-line errors for bad input.
"""
from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import data
import figures
import filter as flt
import models
import synthetic
import train
import transforms
import webscale

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["red_thing", "green_thing", "blue_thing"]
PALETTE = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "grey": (128, 128, 128)}
# probabilities the stub teacher gives each colour (softmax of their logs gives them back exactly)
PROBS = {"red": [0.9, 0.05, 0.05], "green": [0.1, 0.8, 0.1], "blue": [0.2, 0.2, 0.6], "grey": [0.35, 0.4, 0.25]}


class ColourTeacher(nn.Module):
    """Stub teacher: normalised views -> logits log(table[the palette colour nearest their mean colour])."""

    def __init__(self, table=PROBS, family="tsn", on_forward=None):
        super().__init__()
        clip_len = 1 if family == "tsn" else 2
        self.spec = models.ArchSpec(family, clip_len, 1, 3, 25, 1, "demo", crop_size=16)
        self.classes, self.arch, self.on_forward = list(CLASSES), f"stub_{family}", on_forward
        self.source = self.arch
        names = list(PALETTE)
        self.register_buffer("colours", torch.tensor([PALETTE[n] for n in names], dtype=torch.float32))
        self.register_buffer("logits", torch.log(torch.tensor([table[n] for n in names], dtype=torch.float32)))

    def forward(self, x):   # (N, C, T, H, W) -> (N, K) logits (a 3D net's clips)
        return self.head(x.mean(dim=(2, 3, 4)))

    def consensus(self, views):   # a TSN's: (N, V, C, T, H, W) -> the mean over views and frames (N, C)
        return views.mean(dim=(1, 3, 4, 5))

    def head(self, feats):   # the mean normalised colour (N, 3) -> logits of the nearest palette colour
        if self.on_forward is not None:
            self.on_forward()
        rgb = feats * torch.tensor(transforms.STD) + torch.tensor(transforms.MEAN)
        return self.logits[torch.cdist(rgb, self.colours).argmin(dim=1)]

    def forward_views(self, views, spec):   # models.predict: the view combination of a real net of its family
        return (models.TSN if spec.family == "tsn" else models.ResNet3dSlowOnly).forward_views(self, views, spec)


class Output:
    """A filter output read back: list lines, records (samples.jsonl), report, duplicates.txt, sidecar."""

    def __init__(self, folder: Path):
        self.lines = (folder / "train.txt").read_text().splitlines()
        self.records = list(figures.read_filter_output(folder).records())   # with their decision
        self.report = json.loads((folder / "report.json").read_text())
        self.duplicates = (folder / "duplicates.txt").read_text().splitlines()[1:]
        sidecar = webscale.frame_scores_path(folder / "train.txt")
        self.frame_scores = webscale.read_frame_scores(sidecar) if sidecar.is_file() else {}
        self.corrupt = {r["path"]: r.get("error") or r.get("cut_error") for r in self.records
                        if r["status"] == "corrupt"}


def make_source(root: Path, name: str, lines: list[str], classes=CLASSES) -> None:
    """A plain dataset DATA_ROOT/NAME/ (classes.txt, train.txt, val.txt) over files already under it."""
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    for split in ("train", "val"):
        (root / name / f"{split}.txt").write_text("".join(f"{ln}\n" for ln in lines))


def run_main(monkeypatch, root: Path, source: str, teachers, *flags, out: str = "out", extractor=None) -> Output:
    """The filter.py command in-process (`filter.main`), its checkpoints replaced by the stub teachers."""
    monkeypatch.setattr(flt, "load_teachers", lambda *args, **kw: list(teachers))
    if extractor is not None:
        monkeypatch.setattr(flt, "build_extractor", lambda *args, **kw: extractor)
    args = flt.get_args_parser().parse_args(["--data-root", str(root), "--source", source, "--teacher", "stub.pth",
                                             "--out", out, "--workers", "0", "--batch-size", "4", "--quiet",
                                             *map(str, flags)])
    flt.main(args)
    return Output(root / out)


def scores_of(probs, query) -> SimpleNamespace:
    """What keep_decision reads (webscale.Seen's query / query_p / top_class / top_p) from (N, K) probabilities and
    (N,) query classes (-1: not a teacher class)."""
    p, q = np.asarray(probs, dtype=np.float32), np.asarray(query, dtype=np.int64)
    rows, top = np.arange(len(p)), p.argmax(axis=1)
    return SimpleNamespace(query=q, query_p=np.where(q >= 0, p[rows, np.maximum(q, 0)], np.float32(np.nan)),
                           top_class=top, top_p=p[rows, top])


def write_image(path: Path, colour: str, size=(40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, PALETTE[colour]).save(path, quality=90)
    return path


def write_video(path: Path, frames: np.ndarray, fps: int = 4) -> Path:
    """uint8 (T, H, W, 3) -> H.264 mp4."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width, stream.pix_fmt = frames.shape[1], frames.shape[2], "yuv420p"
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def colour_video(path: Path, colours: list, fps: int = 4, size=(32, 24)) -> Path:
    """One flat colour per frame."""
    frames = np.stack([np.full((size[1], size[0], 3), PALETTE[c], np.uint8) for c in colours])
    return write_video(path, frames, fps)


def colour_of(frame: np.ndarray) -> str:
    mean = frame.reshape(-1, 3).mean(0)
    return min(PALETTE, key=lambda n: np.linalg.norm(mean - np.array(PALETTE[n])))


def image_source(root: Path, name: str = "web") -> np.ndarray:
    """DATA_ROOT/NAME/: red/green/blue/grey images with query labels 0, 0, 2, 1."""
    spec = [("red", 0), ("green", 0), ("blue", 2), ("grey", 1)]
    for c, _ in spec:
        write_image(root / name / "images" / f"{c}.jpg", c)
    make_source(root, name, [f"images/{c}.jpg {q}" for c, q in spec])
    return np.array([q for _, q in spec])


# ----------------------------------------------------------------------------------------------------------------------
# Decisions and maths: hand-computed answers
# ----------------------------------------------------------------------------------------------------------------------

def test_keep_decision_keeps_at_the_threshold_in_query_and_pseudo_mode():
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.4, 0.35, 0.25], [0.5, 0.25, 0.25]])
    scores = scores_of(probs, [0, 0, 2, -1, 0])
    keep, labels, held = flt.keep_decision(scores, 3, "query", 0.5)
    assert keep.tolist() == [True, False, True, False, True]          # p == T is kept; -1 never
    assert labels.tolist() == [0, 0, 2, -1, 0] and held[[0, 1, 2, 4]].tolist() == [0.5] * 4
    keep, labels, _ = flt.keep_decision(scores, 3, "pseudo", 0.5)
    assert keep.tolist() == [True, True, True, False, True]
    assert labels.tolist() == [0, 1, 2, 0, 0]
    with pytest.raises(ValueError, match="mode"):
        flt.keep_decision(scores, 3, "vote", 0.5)


def test_ensemble_averages_and_an_untrimmed_video_decides_on_its_best_unit():
    a, b = np.array([[0.2, 0.8]]), np.array([[0.6, 0.4]])
    np.testing.assert_allclose(flt.ensemble([a, b]), [[0.4, 0.6]])
    with pytest.raises(ValueError, match="one shape"):
        flt.ensemble([a, np.ones((2, 2))])
    units = np.array([[0.1, 0.9], [0.7, 0.3], [0.55, 0.45]])
    video, unit_query, unit_top = flt.untrimmed_scores(units, 0)       # the most confident unit per class
    np.testing.assert_allclose(video, [0.7, 0.9])
    np.testing.assert_allclose(unit_query, [0.1, 0.7, 0.55])
    np.testing.assert_allclose(unit_top, [0.9, 0.3, 0.45])            # argmax class 1
    keep, label, _ = flt.keep_decision(scores_of(video[None], [0]), 2, "query", 0.5)
    assert (bool(keep[0]), int(label[0])) == (True, 0)
    assert flt.untrimmed_decision(unit_query, True, 0.5).tolist() == [False, True, True]
    keep, label, _ = flt.keep_decision(scores_of(video[None], [0]), 2, "pseudo", 0.8)
    assert (bool(keep[0]), int(label[0])) == (True, 1)
    assert flt.untrimmed_decision(unit_top, True, 0.8).tolist() == [True, False, False]
    assert not flt.keep_decision(scores_of(video[None], [1]), 2, "query", 0.95)[0][0]
    assert flt.untrimmed_decision(unit_top, False, 0.5).tolist() == [False, False, False]   # dropped: none


def test_one_fps_indices_are_the_centre_frames_of_the_seconds():
    assert flt.one_fps_indices(16, 2.0).tolist() == [1, 3, 5, 7, 9, 11, 13, 15]
    assert flt.one_fps_indices(100, 25.0).tolist() == [12, 37, 62, 87]
    assert flt.one_fps_indices(10, 30.0).tolist() == [5]                 # shorter than half a second
    assert flt.one_fps_indices(100, 25.0, fps=2.0).tolist() == [6, 18, 31, 43, 56, 68, 81, 93]


def test_dedup_threshold_find_duplicates_and_whitening_by_hand():
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    assert flt.dedup_threshold([[e1, e1, e2]]) == pytest.approx(1 / 3)   # pairs: 1, 0, 0
    found = flt.find_duplicates([[1, 0], [0, 1], [2, 0.1]], [[1, 0.1], [-1, 0]], threshold=0.99)
    assert [(w, v) for w, v, _ in found] == [(0, 0), (2, 0)]
    assert found[0][2] == pytest.approx(1 / np.sqrt(1.01))
    # chunked: one web row per chunk gives the same answer (each chunk normalised on its own)
    sims, best = flt.best_match(torch.tensor([[1.0, 0], [0, 1], [2, 0.1]]),
                                torch.nn.functional.normalize(torch.tensor([[1, 0.1], [-1, 0]]), dim=1),
                                chunk_bytes=8)
    assert best.tolist() == [0, 0, 0] and sims[0].item() == pytest.approx(1 / np.sqrt(1.01))
    x = np.random.default_rng(0).normal(size=(4000, 3)) @ np.array([[3, 0, 0], [1, 1, 0], [0, 0, 0.1]])
    w = flt.Whitening.fit(x, shrink=0.0)
    y = (x - w.mean) @ w.proj
    np.testing.assert_allclose(np.cov(y.T), np.eye(3), atol=1e-6)       # PCA whitening: identity covariance


# ----------------------------------------------------------------------------------------------------------------------
# Teacher filtering with known outputs (Sec. 3.4), through the command's own path
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, kept", [("query", {"red": 0, "blue": 2}),
                                        ("pseudo", {"red": 0, "green": 1, "blue": 2})])
def test_teacher_filtering_of_images_in_query_and_pseudo_mode(tmp_path, monkeypatch, mode, kept):
    query = image_source(tmp_path)
    res = run_main(monkeypatch, tmp_path, "web", [ColourTeacher()], "--mode", mode)
    assert res.lines == [f"../web/images/{c}.jpg {label}" for c, label in kept.items()]
    by_path = {r["path"]: r for r in res.records}
    for colour, q in zip(["red", "green", "blue", "grey"], query):
        r = by_path[f"images/{colour}.jpg"]
        assert r["query_score"] == pytest.approx(PROBS[colour][q], abs=1e-6)
        assert r["top_score"] == pytest.approx(max(PROBS[colour]), abs=1e-6)
        assert r["top_class"] == int(np.argmax(PROBS[colour]))
        assert r["status"] == ("kept" if colour in kept else "dropped") and r["threshold"] == 0.5
    per = {c["name"]: c for c in res.report["per_class"]}
    assert [per[n]["before"] for n in CLASSES] == [2, 1, 1]            # Fig. 3: by query label
    assert [per[n]["after"] for n in CLASSES] == [1, int(mode == "pseudo"), 1]
    assert res.report["counts"] == dict(total=4, kept=len(kept), dropped=4 - len(kept), corrupt=0, duplicate=0,
                                        unknown_query=0)


def test_teacher_ensemble_averages_the_probabilities(tmp_path, monkeypatch):
    image_source(tmp_path)
    other = {"red": [0.3, 0.3, 0.4], "green": [0.2, 0.2, 0.6], "blue": [0.1, 0.1, 0.8], "grey": [0.6, 0.2, 0.2]}
    res = run_main(monkeypatch, tmp_path, "web", [ColourTeacher(), ColourTeacher(other)])
    for r, c in zip(res.records, ["red", "green", "blue", "grey"]):
        mean = (np.array(PROBS[c]) + np.array(other[c])) / 2
        assert r["top_score"] == pytest.approx(mean.max(), abs=1e-6) and r["top_class"] == int(mean.argmax())
    # the average decides: red 0.6 >= 0.5 kept; blue 0.7 kept; green (query 0) 0.15 dropped
    assert [ln.split()[0].split("/")[-1] for ln in res.lines] == ["red.jpg", "blue.jpg"]


def test_teachers_with_the_same_classes_in_another_order_are_matched_by_name(tmp_path, monkeypatch):
    """Fig. 6 averages classes by name: a teacher whose class list is reversed (and its outputs with it) is the
    same teacher; different names are refused in one line naming the checkpoint."""
    image_source(tmp_path)
    reversed_teacher = ColourTeacher({c: p[::-1] for c, p in PROBS.items()})
    reversed_teacher.classes = CLASSES[::-1]
    one = run_main(monkeypatch, tmp_path, "web", [ColourTeacher()], out="one")
    both = run_main(monkeypatch, tmp_path, "web", [ColourTeacher(), reversed_teacher], out="both")
    assert both.lines == one.lines and len(one.lines) == 2
    np.testing.assert_allclose([r["top5"] for r in both.records], [r["top5"] for r in one.records], atol=1e-6)
    other = ColourTeacher()
    other.classes, other.source = ["red_thing", "green_thing", "purple_thing"], "other.pth"
    with pytest.raises(ValueError, match="--teacher other.pth: its 3 class names differ"):
        run_main(monkeypatch, tmp_path, "web", [ColourTeacher(), other], out="bad")


def test_videos_with_2d_and_3d_teachers_and_3d_refused_for_images(tmp_path, monkeypatch):
    for c in ("red", "green"):
        colour_video(tmp_path / "vid" / "videos" / f"{c}.mp4", [c] * 12)
    make_source(tmp_path, "vid", ["videos/red.mp4 0", "videos/green.mp4 0"])
    for family in ("tsn", "3d"):
        res = run_main(monkeypatch, tmp_path, "vid", [ColourTeacher(family=family)], out=f"out-{family}")
        assert [r["query_score"] for r in res.records] == pytest.approx([0.9, 0.1], abs=1e-5)
        assert [r["top_class"] for r in res.records] == [0, 1]
    image_source(tmp_path, "img")
    with pytest.raises(ValueError, match=r"3D teacher .* images are scored by 2D \(TSN\) teachers only"):
        run_main(monkeypatch, tmp_path, "img", [ColourTeacher(family="3d")])


# ----------------------------------------------------------------------------------------------------------------------
# Corrupt files (Sec. 3.3)
# ----------------------------------------------------------------------------------------------------------------------

def test_corrupt_files_reported_and_skipped(tmp_path, monkeypatch):
    web = tmp_path / "web"
    good = colour_video(web / "videos" / "good.mp4", ["red"] * 12)
    doomed = colour_video(web / "videos" / "doomed.mp4", ["red"] * 12)
    (web / "videos" / "zero.mp4").write_bytes(b"")
    (web / "videos" / "html.mp4").write_text("<html>404 not found</html>\n")
    raw = colour_video(web / "videos" / "cut.mp4", ["red"] * 40).read_bytes()
    (web / "videos" / "cut.mp4").write_bytes(raw[:len(raw) // 2])
    names = ["good", "zero", "html", "cut", "doomed"]
    (web / "images").mkdir()
    (web / "images" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    write_image(web / "images" / "ok.jpg", "red")
    make_source(tmp_path, "web", [f"videos/{n}.mp4 0" for n in names] + ["images/ok.jpg 0", "images/bad.jpg 0"])
    # the teacher's first forward deletes doomed.mp4, which is decoded in a later batch: it vanishes mid-run
    teacher = ColourTeacher(on_forward=lambda: doomed.unlink(missing_ok=True))
    res = run_main(monkeypatch, tmp_path, "web", [teacher], "--batch-size", "1")
    assert res.lines == ["../web/videos/good.mp4 0", "../web/images/ok.jpg 0"]
    assert set(res.corrupt) == {"videos/zero.mp4", "videos/html.mp4", "videos/cut.mp4", "videos/doomed.mp4",
                                "images/bad.jpg"}
    assert "FileNotFoundError" in res.corrupt["videos/doomed.mp4"]
    assert good.exists() and res.report["counts"]["corrupt"] == 5


def test_a_bug_in_a_transform_stops_the_run(tmp_path, monkeypatch):
    """Only decode and I/O failures of a file are 'corrupt': a TypeError of a transform is raised, not counted."""
    image_source(tmp_path)

    def broken_transform(*args, **kw):
        def transform(frames):
            raise TypeError("a bug in the transform")
        return transform
    monkeypatch.setattr(transforms, "test_transform", broken_transform)
    with pytest.raises(TypeError, match="a bug in the transform"):
        run_main(monkeypatch, tmp_path, "web", [ColourTeacher()])
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------------------
# De-duplication against the val split (Sec. 3.3)
# ----------------------------------------------------------------------------------------------------------------------

class PoolFeatures:
    """A stand-in frame feature extractor: 4x4 average-pooled colours (crop-tolerant, content-specific)."""
    crop_size, name = 32, "pool4x4"

    def __call__(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)


def texture(seed: int, size=(48, 40)) -> np.ndarray:
    """A smooth random image: 6x5 random colours upsampled (bilinear)."""
    small = np.random.default_rng(seed).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize(size, Image.BILINEAR))


def test_dedup_finds_planted_near_copy(tmp_path, monkeypatch):
    for k in range(8):
        write_video(tmp_path / "target" / "videos" / f"v{k}.mp4", np.stack([texture(k)] * 9), fps=4)
    make_source(tmp_path, "target", [f"videos/v{k}.mp4 0" for k in range(8)])
    web = tmp_path / "web" / "images"
    web.mkdir(parents=True)
    # a frame of val video 3, resized by 0.9 and re-encoded as JPEG: a near-copy
    frame = data.read_frames(tmp_path / "target" / "videos" / "v3.mp4", [4])[0]
    Image.fromarray(frame).resize((43, 36), Image.BILINEAR).save(web / "copy.jpg", quality=85)
    for k in range(100, 108):   # different images
        Image.fromarray(texture(k)).save(web / f"other{k}.jpg", quality=85)
    make_source(tmp_path, "web", [f"images/{p.name} 0" for p in sorted(web.iterdir())])
    res = run_main(monkeypatch, tmp_path, "web", [ColourTeacher()], "--threshold", "0", "--dedup-against", "target",
                   extractor=PoolFeatures())
    info = res.report["dedup"]
    assert info["val_frames"] == 8 * 3 and 0 < info["threshold"] < 1
    assert [r["path"] for r in res.records if r["status"] == "duplicate"] == ["images/copy.jpg"]
    assert res.report["counts"]["duplicate"] == 1 and len(res.lines) == 8
    assert res.duplicates[0].startswith("../web/images/copy.jpg ../target/videos/v3.mp4 ")


# ----------------------------------------------------------------------------------------------------------------------
# Untrimmed videos (Sec. 3.5)
# ----------------------------------------------------------------------------------------------------------------------

def test_untrimmed_3d_student_pieces_follow_the_decision(tmp_path, monkeypatch):
    # 2 FPS: 25 s = 50 frames; red during seconds 10-20 only. 10-s pieces of 20 frames: 2.5 -> 3 pieces
    # [0, 20), [20, 40), [40, 50); only piece 1 is red. A 12-s grey video is 1 piece (24 frames), dropped.
    web = tmp_path / "web"
    colour_video(web / "untrimmed" / "long.mp4", ["grey"] * 20 + ["red"] * 20 + ["grey"] * 10, fps=2)
    short = colour_video(web / "untrimmed" / "short.mp4", ["grey"] * 24, fps=2)
    make_source(tmp_path, "web", ["untrimmed/long.mp4 0", "untrimmed/short.mp4 0"])
    out = tmp_path / "out"
    res = run_main(monkeypatch, tmp_path, "web", [ColourTeacher(family="3d")], "--student", "3d", "--cut-pieces")
    assert res.lines == ["raw/untrimmed/long 0 3 1"]
    parts = sorted((out / "raw" / "untrimmed" / "long").iterdir())
    assert [p.name for p in parts] == ["part_0.mp4", "part_1.mp4", "part_2.mp4"]
    assert [data.count_frames(p) for p in parts] == [20, 20, 10]
    assert not (out / "raw" / "untrimmed" / "short").exists()            # dropped videos are not cut
    assert res.records[0]["unit_query"] == pytest.approx([0.35, 0.9, 0.35], abs=1e-6)
    # data.py reads the result as a raw (RawVideoDataset) sample whose positive piece is the red one
    ds = data.VideoDataset(data.load_split(data.resolve_dataset(tmp_path, "out"), "train"),
                           data.Sampling(clip_len=2, frame_interval=1, num_clips=1))
    (sample,) = ds.samples
    assert (sample.kind, sample.num_parts, sample.pos_clips) == ("raw", 3, (1,))
    assert {colour_of(f) for f in ds.load(0)[0]} == {"red"}
    # re-decided without the teacher, the pieces follow the decision: T = 0.95 keeps nothing, T = 0.3 both
    none = run_main(monkeypatch, tmp_path, "web", [], "--student", "3d", "--cut-pieces", "--threshold", "0.95")
    assert none.lines == [] and none.report["run"]["redecided"] and not (out / "raw").exists()
    both = run_main(monkeypatch, tmp_path, "web", [], "--student", "3d", "--cut-pieces", "--threshold", "0.3")
    assert both.lines == ["raw/untrimmed/long 0 3 0 1 2", "raw/untrimmed/short 0 1 0"]
    assert data.count_frames(out / "raw" / "untrimmed" / "short" / "part_0.mp4") == 24
    # a tail shorter than half a piece joins the last piece
    assert data.cut_video(short, tmp_path / "pieces", seconds=5) == 2
    assert [data.count_frames(tmp_path / "pieces" / f"part_{i}.mp4") for i in (0, 1)] == [10, 14]


def test_untrimmed_2d_student_sidecar_gives_table14_snippets(tmp_path, monkeypatch):
    # 2 FPS, 8 s: the 1-FPS frames are 1, 3, ..., 15; seconds 2 and 5 are red (positive), the rest grey
    colours = [c for s in range(8) for c in [("red" if s in (2, 5) else "grey")] * 2]
    colour_video(tmp_path / "web" / "untrimmed" / "v.mp4", colours, fps=2)
    make_source(tmp_path, "web", ["untrimmed/v.mp4 0"])
    res = run_main(monkeypatch, tmp_path, "web", [ColourTeacher()])
    assert res.lines == ["../web/untrimmed/v.mp4 0"]
    fs = res.frame_scores["../web/untrimmed/v.mp4"]
    assert fs.frames == (1, 3, 5, 7, 9, 11, 13, 15) and fs.threshold == 0.5
    np.testing.assert_allclose(fs.scores, [0.35, 0.35, 0.9, 0.35, 0.35, 0.9, 0.35, 0.35], atol=1e-4)
    loaded = data.load_split(data.resolve_dataset(tmp_path, "out"), "train")
    got = loaded[0].frame_scores
    assert (got.frames, got.threshold) == (fs.frames, fs.threshold)
    np.testing.assert_allclose(got.scores, fs.scores, atol=1e-6)
    # Table 14: 1 positive + 2 negatives; 3 positives asked of 2 available -> 2 red + 1 grey
    for mode, expect in (("1p2n", ["grey", "grey", "red"]), ("3pos", ["grey", "red", "red"])):
        ds = data.VideoDataset(loaded, data.Sampling(1, 1, 3), snippet=partial(transforms.select_snippet, mode=mode))
        for epoch in range(3):
            ds.set_epoch(epoch)
            frames = ds.load(0)[0]
            assert frames.shape[0] == 3 and sorted(colour_of(f) for f in frames) == expect
    with pytest.raises(ValueError, match="num_clips=8"):
        data.VideoDataset(loaded, data.Sampling(1, 1, 8), snippet=transforms.select_snippet)


# ----------------------------------------------------------------------------------------------------------------------
# Command line, outputs
# ----------------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """Generated demo data (2 classes, a few web samples incl. broken files), an untrained tsn_tiny teacher, and a
    web image that is a copy of a val video's frame."""
    root = tmp_path_factory.mktemp("filter_cli")
    config = synthetic.SynthConfig(num_classes=2, train_per_class=1, val_per_class=1, web_images_per_class=3,
                                   web_videos_per_class=2, untrimmed_per_class=1, width=32, height=32,
                                   web_video_size=32, clip_frames=(8, 10), web_video_frames=(8, 10),
                                   untrimmed_frames=(40, 48))
    synthetic.generate(root, config)
    model = models.build_model("tsn_tiny", 2)
    torch.save(dict(model=model.state_dict(), arch="tsn_tiny", model_args={},
                    classes=data.read_classes(root / "synth" / "classes.txt")), root / "teacher.pth")
    val = (root / "synth" / "val.txt").read_text().split()[0]
    middle = data.sample_frames(data.count_frames(root / "synth" / val), 1, 1, 3, test_mode=True)[1]
    frame = data.read_frames(root / "synth" / val, [middle])[0]       # one of the frames de-duplication compares
    Image.fromarray(frame).save(root / "synth-web-img" / "images" / "copy_of_val.png")
    with open(root / "synth-web-img" / "train.txt", "a") as f:
        f.write("images/copy_of_val.png 0\n")
    return root


def run_cli(*args):
    return subprocess.run([sys.executable, str(REPO / "filter.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)


def test_cli_end_to_end_output_loads_in_train(tiny_root):
    proc = run_cli("--data-root", tiny_root, "--source", "synth-web-img", "--teacher", tiny_root / "teacher.pth",
                   "--out", "web-img-f", "--threshold", "0", "--workers", "1", "--dedup-against", "synth", "--quiet")
    assert proc.returncode == 0, proc.stderr
    out = tiny_root / "web-img-f"
    res = Output(out)
    web = [ln.split()[0] for ln in (tiny_root / "synth-web-img" / "train.txt").read_text().splitlines()]
    html = [p for p in web if (tiny_root / "synth-web-img" / p).read_bytes().lstrip().startswith(b"<")]
    assert list(res.corrupt) == html and len(html) == 1                      # the HTML page named .jpg
    # the exact copy of a val frame is a duplicate of that val video (whatever the untrained features find else)
    val = (tiny_root / "synth" / "val.txt").read_text().split()[0]
    assert f"../synth-web-img/images/copy_of_val.png ../synth/{val}" in [d.rsplit(" ", 1)[0] for d in res.duplicates]
    # T = 0 in query mode keeps every readable sample that is not a duplicate, in list order
    dups = {d.split()[0] for d in res.duplicates}
    assert [ln.split()[0] for ln in res.lines] == [f"../synth-web-img/{p}" for p in web
                                                   if p not in html and f"../synth-web-img/{p}" not in dups]
    assert (out / "classes.txt").read_text() == (tiny_root / "synth" / "classes.txt").read_text()
    assert not list(tiny_root.glob(".web-img-f.*"))                        # no staging folder left behind
    # train.py's own dataset code accepts it as --aux
    model = models.build_model("tsn_tiny", 2)
    args = train.get_args_parser().parse_args(["--data-root", str(tiny_root), "--aux", "web-img-f", "--image-to-clip",
                                               "still"])
    spec = data.resolve_dataset(tiny_root, "web-img-f")
    samples = train.aux_samples(spec, data.resolve_dataset(tiny_root, "synth"), "web-img-f", rank=0)
    ds = train.make_dataset(args, spec, "train", model.spec, test_mode=False, samples=samples)
    clip, label, _ = ds[0]
    assert clip.shape == (3, 3, 64, 64) and 0 <= label < 2 and ds.num_failed == 0


def test_cli_errors_are_one_line(tiny_root):
    for args, needle in ((("--source", "no-such-source", "--teacher", tiny_root / "teacher.pth"), "no-such-source"),
                         (("--source", "synth-web-img", "--teacher", tiny_root / "missing.pth"), "missing.pth"),
                         (("--source", "synth-web-img", "--teacher", tiny_root / "synth" / "classes.txt"),
                          "not a usable checkpoint"),
                         (("--source", "synth-web-img", "--teacher", tiny_root / "teacher.pth", "--rule", "fixed:2"),
                          "--rule fixed:2: expected one of fixed, class-adaptive")):
        proc = run_cli("--data-root", tiny_root, *args, "--out", "x", "--quiet")
        assert proc.returncode != 0
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: ")
        assert needle in proc.stderr
    proc = run_cli("--data-root", tiny_root, "--source", "synth-web-img", "--teacher", tiny_root / "teacher.pth",
                   "--out", "synth", "--quiet")
    assert proc.returncode != 0 and "not an earlier filter.py output" in proc.stderr


def test_output_folder_is_replaced_atomically(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "train.txt").write_text("old\n")
    with pytest.raises(RuntimeError):
        with webscale.staged_output(final) as tmp:
            (tmp / "train.txt").write_text("half")
            raise RuntimeError("crash mid-run")
    assert (final / "train.txt").read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with webscale.staged_output(final) as tmp:
        (tmp / "train.txt").write_text("new\n")
    assert (final / "train.txt").read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_mmaction2_checkpoint_as_teacher_with_teacher_arch(tmp_path, capsys):
    """A released-style MMAction2 1.x checkpoint is a teacher once its architecture is named; it carries no
    class names, and one line says which class list its outputs are read against."""
    model = models.build_model("tsn_tiny", 3)
    path = tmp_path / "mm.pth"
    torch.save(models.mmaction_checkpoint(model, ["a", "b", "c"]), path)
    with pytest.raises(ValueError, match="--teacher-arch"):
        flt.load_teachers([path])
    (teacher,) = flt.load_teachers([path], arch="tsn_tiny", classes=["a", "b", "c"], classes_from="--source web")
    assert teacher.classes == ["a", "b", "c"] and not teacher.training
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert str(path) in line and "read against the class list of --source web" in line
    x = torch.randn(1, 3, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(teacher(x), model(x))
