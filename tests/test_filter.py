"""Tests for filter.py (Sec. 3.3-3.5): known answers from teachers whose outputs we set.

- keep_decision / ensemble / one_fps_indices / dedup_threshold / find_duplicates / Whitening: hand-computed values.
- Filtering with stub teachers that map each flat input colour to fixed probabilities: the kept set, labels and
  recorded scores in 'query' and 'pseudo' mode are known exactly; two teachers average (Fig. 6); 3D teachers are
  refused for images (Sec. 3.4).
- Corrupt files (zero-byte, text named .mp4, bad jpg, truncated mp4, a file deleted mid-run) are reported, skipped.
- De-duplication: a re-encoded, resized val frame is found, different images are spared (Sec. 3.3).
- Untrimmed videos (Sec. 3.5): 3D cutting gives the right pieces and positive indices, loadable by data.py;
  the 2D frame-score sidecar drives data.VideoDataset's Table 14 snippets (1 positive + 2 negatives).
- The CLI end to end on generated data (output accepted by train.py's dataset code), atomic outputs, and
  one-line errors for bad input.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from functools import partial
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import data
import filter as flt
import models
import synthetic
import train
import transforms

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["red_thing", "green_thing", "blue_thing"]
PALETTE = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "grey": (128, 128, 128)}
# probabilities the stub teacher gives each colour (softmax of their logs gives them back exactly)
PROBS = {"red": [0.9, 0.05, 0.05], "green": [0.1, 0.8, 0.1], "blue": [0.2, 0.2, 0.6], "grey": [0.35, 0.4, 0.25]}


class ColourTeacher(nn.Module):
    """Stub teacher: (N, C, T, H, W) normalised clips -> logits log(table[nearest palette colour of the mean])."""

    def __init__(self, table=PROBS, family="tsn", on_forward=None):
        super().__init__()
        clip_len = 1 if family == "tsn" else 2
        self.spec = models.ArchSpec(family, clip_len, 1, 3, 25, 1, "demo", crop_size=16)
        self.classes, self.arch, self.on_forward = list(CLASSES), f"stub_{family}", on_forward
        names = list(PALETTE)
        self.register_buffer("colours", torch.tensor([PALETTE[n] for n in names], dtype=torch.float32))
        self.register_buffer("logits", torch.log(torch.tensor([table[n] for n in names], dtype=torch.float32)))

    def forward(self, x):
        if self.on_forward is not None:
            self.on_forward()
        rgb = x.mean(dim=(2, 3, 4)) * torch.tensor(transforms.STD) + torch.tensor(transforms.MEAN)   # (N, 3)
        nearest = torch.cdist(rgb, self.colours).argmin(dim=1)
        return self.logits[nearest]

    def forward_views(self, views, spec):   # models.predict: the view combination of a real net of its family
        return (models.TSN if spec.family == "tsn" else models.ResNet3dSlowOnly).forward_views(self, views, spec)


def cfg(**kw):
    return flt.FilterConfig(**{**dict(workers=0, progress=False, batch_size=4), **kw})


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


def image_source(root: Path) -> tuple[list, np.ndarray]:
    """red/green/blue/grey images with query labels 0, 0, 2, 1."""
    spec = [("red", 0), ("green", 0), ("blue", 2), ("grey", 1)]
    samples = [data.Sample(write_image(root / "images" / f"{c}.jpg", c), q, "image") for c, q in spec]
    return samples, np.array([q for _, q in spec])


# ----------------------------------------------------------------------------------------------------------------------
# Decisions and maths: hand-computed answers
# ----------------------------------------------------------------------------------------------------------------------

def test_keep_decision_query_and_pseudo():
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.4, 0.35, 0.25], [0.5, 0.25, 0.25]])
    query = np.array([0, 0, 2, -1, 0])
    keep, labels = flt.keep_decision(probs, query, "query", 0.5)
    assert keep.tolist() == [True, False, True, False, True]          # p == T is kept; -1 never
    assert labels.tolist() == [0, 0, 2, -1, 0]
    keep, labels = flt.keep_decision(probs, query, "pseudo", 0.5)
    assert keep.tolist() == [True, True, True, False, True]
    assert labels.tolist() == [0, 1, 2, 0, 0]
    with pytest.raises(ValueError, match="mode"):
        flt.keep_decision(probs, query, "vote", 0.5)


def test_ensemble_and_untrimmed_decision():
    a, b = np.array([[0.2, 0.8]]), np.array([[0.6, 0.4]])
    np.testing.assert_allclose(flt.ensemble([a, b]), [[0.4, 0.6]])
    with pytest.raises(ValueError, match="one shape"):
        flt.ensemble([a, np.ones((2, 2))])
    units = np.array([[0.1, 0.9], [0.7, 0.3], [0.55, 0.45]])
    assert flt.untrimmed_decision(units, 0, "query", 0.5)[:2] == (True, 0)
    assert flt.untrimmed_decision(units, 0, "query", 0.5)[2].tolist() == [False, True, True]
    keep, label, pos = flt.untrimmed_decision(units, 0, "pseudo", 0.8)     # best unit: class 1 at 0.9
    assert (keep, label, pos.tolist()) == (True, 1, [True, False, False])
    assert flt.untrimmed_decision(units, 1, "query", 0.95)[0] is False


def test_one_fps_indices():
    assert flt.one_fps_indices(16, 2.0).tolist() == [1, 3, 5, 7, 9, 11, 13, 15]
    assert flt.one_fps_indices(100, 25.0).tolist() == [12, 37, 62, 87]
    assert flt.one_fps_indices(10, 30.0).tolist() == [5]                 # shorter than half a second
    assert flt.one_fps_indices(100, 25.0, fps=2.0).tolist() == [6, 18, 31, 43, 56, 68, 81, 93]


def test_dedup_maths():
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    assert flt.dedup_threshold([[e1, e1, e2]]) == pytest.approx(1 / 3)   # pairs: 1, 0, 0
    found = flt.find_duplicates([[1, 0], [0, 1], [2, 0.1]], [[1, 0.1], [-1, 0]], threshold=0.99)
    assert [(w, v) for w, v, _ in found] == [(0, 0), (2, 0)]
    assert found[0][2] == pytest.approx(1 / np.sqrt(1.01))
    x = np.random.default_rng(0).normal(size=(4000, 3)) @ np.array([[3, 0, 0], [1, 1, 0], [0, 0, 0.1]])
    w = flt.Whitening.fit(x, shrink=0.0)
    y = (x - w.mean) @ w.proj
    np.testing.assert_allclose(np.cov(y.T), np.eye(3), atol=1e-6)       # PCA whitening: identity covariance


# ----------------------------------------------------------------------------------------------------------------------
# Teacher filtering with known outputs (Sec. 3.4)
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, kept", [("query", {"red": 0, "blue": 2}),
                                        ("pseudo", {"red": 0, "green": 1, "blue": 2})])
def test_filter_images_both_modes(tmp_path, mode, kept):
    samples, query = image_source(tmp_path / "web")
    res = flt.filter_source(samples, query, [ColourTeacher()], cfg(mode=mode), tmp_path / "out",
                            prefix=tmp_path / "web")
    assert res.lines == [f"../web/images/{c}.jpg {label}" for c, label in kept.items()]
    by_path = {r["path"]: r for r in res.report["samples"]}
    for colour, q in zip(["red", "green", "blue", "grey"], query):
        r = by_path[f"images/{colour}.jpg"]
        assert r["query_score"] == pytest.approx(PROBS[colour][q], abs=1e-4)
        assert r["top_score"] == pytest.approx(max(PROBS[colour]), abs=1e-4)
        assert r["status"] == ("kept" if colour in kept else "dropped")
    per = {c["name"]: c for c in res.report["per_class"]}
    assert [per[n]["before"] for n in CLASSES] == [2, 1, 1]            # Fig. 3: by query label
    assert [per[n]["after"] for n in CLASSES] == [1, int(mode == "pseudo"), 1]
    assert res.report["counts"] == dict(total=4, kept=len(kept), dropped=4 - len(kept), corrupt=0, duplicate=0,
                                        unknown_query=0)


def test_ensemble_of_teachers_averages(tmp_path):
    samples, query = image_source(tmp_path / "web")
    other = {"red": [0.3, 0.3, 0.4], "green": [0.2, 0.2, 0.6], "blue": [0.1, 0.1, 0.8], "grey": [0.6, 0.2, 0.2]}
    probs, errors = flt.score_clips(samples, [ColourTeacher(), ColourTeacher(other)], cfg())
    assert errors == {}
    expect = [(np.array(PROBS[c]) + np.array(other[c])) / 2 for c in ["red", "green", "blue", "grey"]]
    np.testing.assert_allclose(probs, expect, atol=1e-6)
    # the average decides: red 0.6 >= 0.5 kept; blue 0.7 kept; green (query 0) 0.15 dropped
    res = flt.filter_source(samples, query, [ColourTeacher(), ColourTeacher(other)], cfg(), tmp_path / "out")
    assert [ln.split()[0].split("/")[-1] for ln in res.lines] == ["red.jpg", "blue.jpg"]


def test_videos_with_2d_and_3d_teachers_and_3d_refused_for_images(tmp_path):
    v = [data.Sample(colour_video(tmp_path / "web" / "videos" / f"{c}.mp4", [c] * 12), 0, "video")
         for c in ("red", "green")]
    for teacher in (ColourTeacher(family="tsn"), ColourTeacher(family="3d")):
        probs, errors = flt.score_clips(v, [teacher], cfg())
        np.testing.assert_allclose(probs, [PROBS["red"], PROBS["green"]], atol=1e-5)
    images, query = image_source(tmp_path / "img")
    with pytest.raises(ValueError, match=r"3D teacher .* images are scored by 2D \(TSN\) teachers only"):
        flt.filter_source(images, query, [ColourTeacher(family="3d")], cfg(), tmp_path / "out")


# ----------------------------------------------------------------------------------------------------------------------
# Corrupt files (Sec. 3.3)
# ----------------------------------------------------------------------------------------------------------------------

def test_corrupt_files_reported_and_skipped(tmp_path):
    web = tmp_path / "web"
    good = colour_video(web / "videos" / "good.mp4", ["red"] * 12)
    doomed = colour_video(web / "videos" / "doomed.mp4", ["red"] * 12)
    (web / "videos" / "zero.mp4").write_bytes(b"")
    (web / "videos" / "html.mp4").write_text("<html>404 not found</html>\n")
    raw = colour_video(web / "videos" / "cut.mp4", ["red"] * 40).read_bytes()
    (web / "videos" / "cut.mp4").write_bytes(raw[:len(raw) // 2])
    names = ["good", "zero", "html", "cut", "doomed"]
    videos = [data.Sample(web / "videos" / f"{n}.mp4", 0, "video") for n in names]
    bad_jpg = web / "images" / "bad.jpg"
    bad_jpg.parent.mkdir()
    bad_jpg.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    images = [data.Sample(write_image(web / "images" / "ok.jpg", "red"), 0, "image"),
              data.Sample(bad_jpg, 0, "image")]
    # the teacher's first forward deletes doomed.mp4, which is decoded in a later batch: it vanishes mid-run
    teacher = ColourTeacher(on_forward=lambda: doomed.unlink(missing_ok=True))
    res = flt.filter_source(videos + images, np.zeros(7, int), [teacher], cfg(batch_size=1), tmp_path / "out",
                            prefix=web)
    assert res.lines == ["../web/videos/good.mp4 0", "../web/images/ok.jpg 0"]
    corrupt = {c["path"]: c["error"] for c in res.report["corrupt"]}
    assert set(corrupt) == {"videos/zero.mp4", "videos/html.mp4", "videos/cut.mp4", "videos/doomed.mp4",
                            "images/bad.jpg"}
    assert "FileNotFoundError" in corrupt["videos/doomed.mp4"]
    assert good.exists() and res.report["counts"]["corrupt"] == 5


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


def test_dedup_finds_planted_near_copy(tmp_path):
    val = [data.Sample(write_video(tmp_path / "target" / "videos" / f"v{k}.mp4",
                                   np.stack([texture(k)] * 9), fps=4), 0, "video") for k in range(8)]
    web = tmp_path / "web" / "images"
    web.mkdir(parents=True)
    # a frame of val video 3, resized by 0.9 and re-encoded as JPEG: a near-copy
    frame = data.read_frames(val[3].path, [4])[0]
    Image.fromarray(frame).resize((43, 36), Image.BILINEAR).save(web / "copy.jpg", quality=85)
    for k in range(100, 108):   # different images
        Image.fromarray(texture(k)).save(web / f"other{k}.jpg", quality=85)
    samples = [data.Sample(p, 0, "image") for p in sorted(web.iterdir())]
    dups, info, errors = flt.deduplicate(samples, val, PoolFeatures(), cfg())
    assert errors == {} and info["val_frames"] == 8 * 3 and 0 < info["threshold"] < 1
    assert {samples[i].path.name: j for i, (j, _) in dups.items()} == {"copy.jpg": 3}
    res = flt.filter_source(samples, np.zeros(len(samples), int), [ColourTeacher()],
                            cfg(threshold=0.0), tmp_path / "out", val_samples=val, extractor=PoolFeatures())
    assert res.report["counts"]["duplicate"] == 1 and len(res.lines) == len(samples) - 1
    assert res.duplicates[0].startswith("../web/images/copy.jpg ../target/videos/v3.mp4 ")


# ----------------------------------------------------------------------------------------------------------------------
# Untrimmed videos (Sec. 3.5)
# ----------------------------------------------------------------------------------------------------------------------

def test_untrimmed_3d_pieces(tmp_path):
    # 2 FPS: 25 s = 50 frames; red during seconds 10-20 only. 10-s pieces of 20 frames: 2.5 -> 3 pieces
    # [0, 20), [20, 40), [40, 50); only piece 1 is red. A 12-s grey video is 1 piece (24 frames), dropped.
    web = tmp_path / "web"
    long = colour_video(web / "untrimmed" / "long.mp4", ["grey"] * 20 + ["red"] * 20 + ["grey"] * 10, fps=2)
    short = colour_video(web / "untrimmed" / "short.mp4", ["grey"] * 24, fps=2)
    samples = [data.Sample(long, 0, "untrimmed"), data.Sample(short, 0, "untrimmed")]
    out = tmp_path / "out"
    res = flt.filter_source(samples, [0, 0], [ColourTeacher(family="3d")], cfg(student="3d", cut_pieces=True), out,
                            prefix=web)
    assert res.lines == ["raw/untrimmed/long 0 3 1"]
    parts = sorted((out / "raw" / "untrimmed" / "long").iterdir())
    assert [p.name for p in parts] == ["part_0.mp4", "part_1.mp4", "part_2.mp4"]
    assert [data.count_frames(p) for p in parts] == [20, 20, 10]
    assert not (out / "raw" / "untrimmed" / "short").exists()            # pieces of dropped videos removed
    assert res.report["samples"][0]["unit_scores"] == pytest.approx([0.35, 0.9, 0.35], abs=1e-3)
    # data.py reads the result as a raw (RawVideoDataset) sample whose positive piece is the red one
    flt.write_output(out, res, CLASSES)
    ds = data.VideoDataset(data.load_split(data.resolve_dataset(tmp_path, "out"), "train"),
                           data.Sampling(clip_len=2, frame_interval=1, num_clips=1))
    (sample,) = ds.samples
    assert (sample.kind, sample.num_parts, sample.pos_clips) == ("raw", 3, (1,))
    assert {colour_of(f) for f in ds.load(0)[0]} == {"red"}
    # a tail shorter than half a piece joins the last piece
    assert data.cut_video(short, tmp_path / "pieces", seconds=5) == 2
    assert [data.count_frames(tmp_path / "pieces" / f"part_{i}.mp4") for i in (0, 1)] == [10, 14]


def test_untrimmed_2d_snippet_sidecar_with_video_dataset(tmp_path):
    # 2 FPS, 8 s: the 1-FPS frames are 1, 3, ..., 15; seconds 2 and 5 are red (positive), the rest grey
    colours = [c for s in range(8) for c in [("red" if s in (2, 5) else "grey")] * 2]
    web = tmp_path / "web"
    video = colour_video(web / "untrimmed" / "v.mp4", colours, fps=2)
    samples = [data.Sample(video, 0, "untrimmed")]
    out = tmp_path / "out"
    res = flt.filter_source(samples, [0], [ColourTeacher()], cfg(), out)
    assert res.lines == ["../web/untrimmed/v.mp4 0"]
    fs = res.frame_scores["../web/untrimmed/v.mp4"]
    assert fs.frames == (1, 3, 5, 7, 9, 11, 13, 15) and fs.threshold == 0.5
    np.testing.assert_allclose(fs.scores, [0.35, 0.35, 0.9, 0.35, 0.35, 0.9, 0.35, 0.35], atol=1e-4)
    flt.write_output(out, res, CLASSES)
    assert data.frame_scores_path(out / "train.txt").is_file()
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
    """Generated demo data (2 classes, a few web samples incl. broken files) and an untrained tsn_tiny teacher."""
    root = tmp_path_factory.mktemp("filter_cli")
    config = synthetic.SynthConfig(num_classes=2, train_per_class=1, val_per_class=1, web_images_per_class=3,
                                   web_videos_per_class=2, untrimmed_per_class=1, width=32, height=32,
                                   web_video_size=32, clip_frames=(8, 10), web_video_frames=(8, 10),
                                   untrimmed_frames=(40, 48))
    synthetic.generate(root, config)
    model = models.build_model("tsn_tiny", 2)
    torch.save(dict(model=model.state_dict(), arch="tsn_tiny", model_args={},
                    classes=data.read_classes(root / "synth" / "classes.txt")), root / "teacher.pth")
    return root


def run_cli(*args):
    return subprocess.run([sys.executable, str(REPO / "filter.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)


def test_cli_end_to_end_output_loads_in_train(tiny_root):
    proc = run_cli("--data-root", tiny_root, "--source", "synth-web-img", "--teacher", tiny_root / "teacher.pth",
                   "--out", "web-img-f", "--threshold", "0", "--workers", "1", "--dedup-against", "synth", "--quiet")
    assert proc.returncode == 0, proc.stderr
    out = tiny_root / "web-img-f"
    report = (out / "report.json").read_text()
    lines = (out / "train.txt").read_text().splitlines()
    import json
    counts = json.loads(report)["counts"]
    assert counts["corrupt"] == 1 and counts["total"] == 8                 # the HTML page named .jpg
    assert len(lines) == 8 - 1 - counts["duplicate"] and (out / "duplicates.txt").is_file()
    assert (out / "classes.txt").read_text() == (tiny_root / "synth" / "classes.txt").read_text()
    assert not list(tiny_root.glob(".web-img-f.*"))                        # no staging folder left behind
    # train.py's own dataset code accepts it as --aux
    model = models.build_model("tsn_tiny", 2)
    args = train.get_args_parser().parse_args(["--data-root", str(tiny_root), "--aux", "web-img-f"])
    spec = data.resolve_dataset(tiny_root, "web-img-f")
    samples = train.aux_samples(spec, data.resolve_dataset(tiny_root, "synth"), "web-img-f", rank=0)
    ds = train.make_dataset(args, spec, "train", model.spec, test_mode=False, samples=samples)
    clip, label, _ = ds[0]
    assert clip.shape == (3, 3, 64, 64) and 0 <= label < 2 and ds.num_failed == 0


def test_cli_errors_are_one_line(tiny_root):
    for args, needle in ((("--source", "no-such-source", "--teacher", tiny_root / "teacher.pth"), "no-such-source"),
                         (("--source", "synth-web-img", "--teacher", tiny_root / "missing.pth"), "missing.pth"),
                         (("--source", "synth-web-img", "--teacher", tiny_root / "synth" / "classes.txt"),
                          "not a usable checkpoint")):
        proc = run_cli("--data-root", tiny_root, *args, "--out", "x", "--quiet")
        assert proc.returncode != 0
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: ")
        assert needle in proc.stderr
    proc = run_cli("--data-root", tiny_root, "--source", "synth-web-img", "--teacher", tiny_root / "teacher.pth",
                   "--out", "synth", "--quiet")
    assert proc.returncode != 0 and "not an earlier filter.py output" in proc.stderr


def test_staged_output_is_atomic(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "train.txt").write_text("old\n")
    with pytest.raises(RuntimeError):
        with flt.staged_output(final) as tmp:
            (tmp / "train.txt").write_text("half")
            raise RuntimeError("crash mid-run")
    assert (final / "train.txt").read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with flt.staged_output(final) as tmp:
        (tmp / "train.txt").write_text("new\n")
    assert (final / "train.txt").read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_mmaction2_checkpoint_as_teacher_with_teacher_arch(tmp_path):
    """A released-style MMAction2 1.x checkpoint is a teacher once its architecture is named."""
    model = models.build_model("tsn_tiny", 3)
    path = models.export_mmaction(model, tmp_path / "mm.pth", classes=["a", "b", "c"])
    with pytest.raises(ValueError, match="--teacher-arch"):
        flt.load_teachers([path])
    (teacher,) = flt.load_teachers([path], arch="tsn_tiny", classes=["a", "b", "c"])
    assert teacher.classes == ["a", "b", "c"] and not teacher.training
    x = torch.randn(1, 3, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(teacher(x), model(x))
