"""Tests for synthetic.py: layout, list formats, determinism, truth.json consistency, decodable media, broken files."""
import json
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import synthetic  # noqa: E402
import webscale

SMALL = dict(seed=3, num_classes=3, train_per_class=2, val_per_class=2, web_images_per_class=8,
             web_videos_per_class=2, untrimmed_per_class=1, clip_frames=(16, 20), web_video_frames=(12, 16),
             untrimmed_frames=(48, 64))
PREFIX = {"synth": ("videos/", ".mp4"), "synth-web-img": ("images/", ".jpg"),
          "synth-web-vid": ("videos/", ".mp4"), "synth-web-untrimmed": ("untrimmed/", ".mp4")}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_small")
    summary = synthetic.generate(root, synthetic.SynthConfig(**SMALL))
    return root, summary, json.loads((root / "truth.json").read_text())


def test_layout_and_list_formats(small):
    root, summary, truth = small
    classes = synthetic.class_names(SMALL["num_classes"])
    for name, (prefix, ext) in PREFIX.items():
        assert (root / name / "classes.txt").read_text().splitlines() == classes
        train, val = _lines(root / name / "train.txt"), _lines(root / name / "val.txt")
        assert train, name
        assert (val != []) == (name == "synth")                    # web folders: empty val.txt
        for line in train + val:
            rel, label = line.split(" ")                           # exactly "PATH LABEL"
            assert rel.startswith(prefix) and rel.endswith(ext) and "/" not in rel[len(prefix):]
            assert 0 <= int(label) < len(classes)
            assert (root / name / rel).is_file()
            assert rel in truth[name]
        assert summary["counts"][name] == {"train": len(train), "val": len(val)}
    assert summary["bytes"] < 2_000_000


def test_target_is_class_balanced(small):
    root, _, truth = small
    for split, per_class in (("train", SMALL["train_per_class"]), ("val", SMALL["val_per_class"])):
        lines = _lines(root / "synth" / f"{split}.txt")
        labels = [int(line.split()[1]) for line in lines]
        assert np.bincount(labels, minlength=SMALL["num_classes"]).tolist() == [per_class] * SMALL["num_classes"]
        assert all(truth["synth"][line.split()[0]]["split"] == split for line in lines)


def test_determinism(small, tmp_path):
    root, _, truth = small
    synthetic.generate(tmp_path, synthetic.SynthConfig(**SMALL))
    for name in PREFIX:
        for f in ("classes.txt", "train.txt", "val.txt"):
            assert (root / name / f).read_text() == (tmp_path / name / f).read_text()
    assert json.loads((tmp_path / "truth.json").read_text()) == truth
    for name in ("synth", "synth-web-vid", "synth-web-untrimmed"):
        rel = _lines(root / name / "train.txt")[0].split()[0]
        np.testing.assert_array_equal(_decode(root / name / rel)[0], _decode(tmp_path / name / rel)[0])
    # byte-identical files (x264 without mbtree is deterministic; see synthetic._encode_mp4)
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert all((root / f).read_bytes() == (tmp_path / f).read_bytes() for f in files)


def test_other_seed_gives_other_data(small, tmp_path):
    root, _, _ = small
    cfg = synthetic.SynthConfig(**{**SMALL, "seed": 4, "web_images_per_class": 1, "web_videos_per_class": 1})
    synthetic.generate(tmp_path, cfg)
    rel = _lines(root / "synth" / "train.txt")[0].split()[0]
    assert not np.array_equal(_decode(root / "synth" / rel)[0], _decode(tmp_path / "synth" / rel)[0])


def test_relevance_fraction_and_web_truth(small):
    _, _, truth = small
    # the crawl plan (no rendering) at the default size keeps the configured overall fraction
    cfg = synthetic.SynthConfig()
    for source, per_class in (("synth-web-img", 40), ("synth-web-vid", 12)):
        kinds = [k for per_q in synthetic._crawl_plan(cfg, source, per_class) for k, _ in per_q]
        assert abs(kinds.count("relevant") / len(kinds) - cfg.relevant_fraction) < 0.03
        assert 0.2 < kinds.count("clutter") / (len(kinds) - kinds.count("relevant")) < 0.8
    # the written truth of the small generation
    for source in ("synth-web-img", "synth-web-vid"):
        entries = [t for t in truth[source].values() if t["kind"] != "broken"]
        frac = np.mean([t["relevant"] for t in entries])
        assert abs(frac - SMALL.get("relevant_fraction", 0.3)) < 0.2, (source, frac)
        for t in entries:
            if t["kind"] == "relevant":
                assert t["relevant"] and t["true_class"] == t["query"]
            elif t["kind"] == "other_class":
                assert not t["relevant"] and t["true_class"] not in (None, t["query"])
            else:
                assert t["kind"] == "clutter" and not t["relevant"] and t["true_class"] is None


def test_untrimmed_truth_ranges(small):
    root, _, truth = small
    for rel, t in truth["synth-web-untrimmed"].items():
        if t["kind"] == "broken":
            continue
        frames = _decode(root / "synth-web-untrimmed" / rel)
        n = len(frames)
        assert n == t["num_frames"]
        segs = t["segments"]
        assert segs[0][0] == 0 and segs[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(segs, segs[1:]))  # contiguous shots
        assert t["positive_ranges"] and t["relevant"]
        for s, e in t["positive_ranges"]:
            assert 0 <= s < e <= n
        pos = sum(e - s for s, e in t["positive_ranges"])
        assert pos == sum(e - s for s, e, c in segs if c == t["query"])
        assert 0.1 < pos / n < 0.8
        # shots are hard cuts: the frame difference at a cut is larger than inside the shots
        diff = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))
        cuts = [s - 1 for s, _, _ in segs[1:]]
        inside = np.delete(diff, cuts)
        assert diff[cuts].min() > 2 * np.median(inside)


def test_videos_decode_with_expected_frames_and_size(small):
    root, _, truth = small
    cfg = synthetic.SynthConfig(**SMALL)
    for name, size in (("synth", (cfg.width, cfg.height)), ("synth-web-vid", (cfg.web_video_size,) * 2)):
        for rel, t in truth[name].items():
            if t.get("kind") == "broken":
                continue
            with av.open(str(root / name / rel)) as c:
                stream = c.streams.video[0]
                assert stream.codec_context.name == "h264" and stream.codec_context.format.name == "yuv420p"
                keys = [i for i, f in enumerate(c.decode(stream)) if f.key_frame]
            frames = _decode(root / name / rel)
            assert frames.shape == (t["num_frames"], size[1], size[0], 3)
            assert keys == list(range(0, t["num_frames"], cfg.gop))
            assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 0.5   # frames change over time


def test_web_images_decode(small):
    root, _, truth = small
    for rel, t in truth["synth-web-img"].items():
        if t["kind"] != "broken":
            with Image.open(root / "synth-web-img" / rel) as im:
                assert im.format == "JPEG" and im.size == (t["width"], t["height"]) and im.mode == "RGB"


def test_broken_files_present_and_marked(small):
    root, _, truth = small
    found = {}
    for source in ("synth-web-img", "synth-web-vid", "synth-web-untrimmed"):
        listed = {line.split()[0] for line in _lines(root / source / "train.txt")}
        for rel, t in truth[source].items():
            if t["kind"] == "broken":
                assert rel in listed and t["relevant"] is False and t["true_class"] is None
                found[t["broken"]] = root / source / rel
    assert set(found) == {"not-an-image", "zero-byte", "truncated-no-index", "truncated-midstream"}
    with pytest.raises(Exception):
        Image.open(found["not-an-image"]).load()
    assert found["zero-byte"].stat().st_size == 0
    with pytest.raises(av.error.FFmpegError):
        av.open(str(found["truncated-no-index"]))
    with av.open(str(found["truncated-midstream"])) as c:             # opens and claims all its frames ...
        claimed = c.streams.video[0].frames
        decoded = 0
        with pytest.raises(av.error.FFmpegError):                   # ... but fails while decoding
            for _ in c.decode(video=0):
                decoded += 1
    assert 0 < decoded < claimed


def test_no_broken_option(tmp_path):
    cfg = synthetic.SynthConfig(**{**SMALL, "num_classes": 2, "train_per_class": 1, "val_per_class": 1,
                                   "web_images_per_class": 1, "web_videos_per_class": 1, "broken_files": False})
    synthetic.generate(tmp_path, cfg)
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert not any(t["kind"] == "broken" for s in PREFIX if s != "synth" for t in truth[s].values())


def test_a_larger_val_split_leaves_the_training_data_unchanged(tmp_path):
    # the default val split grew (12 -> 50 per class) so that one video is a fraction of a point; the training
    # videos and the web crawl must stay byte for byte those of the smaller split (results stay comparable)
    assert synthetic.SynthConfig().val_per_class * synthetic.SynthConfig().num_classes == 400
    cfg = dict(SMALL, num_classes=2, train_per_class=1, web_images_per_class=2, web_videos_per_class=1,
               untrimmed_per_class=1, broken_files=False)
    for val in (1, 3):
        synthetic.generate(tmp_path / f"val{val}", synthetic.SynthConfig(**{**cfg, "val_per_class": val}))
    small, large = tmp_path / "val1", tmp_path / "val3"
    assert len(_lines(small / "synth" / "val.txt")) == 2 and len(_lines(large / "synth" / "val.txt")) == 6
    for name in ("synth/train.txt", "synth-web-img/train.txt", "synth-web-vid/train.txt"):
        assert (small / name).read_text() == (large / name).read_text()
        for line in _lines(small / name):
            rel = line.split()[0]
            assert (small / Path(name).parent / rel).read_bytes() == (large / Path(name).parent / rel).read_bytes()
    assert set(_lines(small / "synth" / "val.txt")) < set(_lines(large / "synth" / "val.txt"))


def test_cli_and_parser(tmp_path, capsys):
    parser = synthetic.get_args_parser()
    assert all(a.help for a in parser._actions)
    synthetic.main(["--out", str(tmp_path), "--num-classes", "2", "--train-per-class", "1", "--val-per-class", "1",
                    "--web-images-per-class", "2", "--web-videos-per-class", "1", "--untrimmed-per-class", "1",
                    "--no-broken"])
    assert "MB in" in capsys.readouterr().out
    assert len(_lines(tmp_path / "synth" / "train.txt")) == 2
    with pytest.raises(SystemExit, match="error: --num-classes"):
        synthetic.main(["--out", str(tmp_path), "--num-classes", "1"])


def test_class_names_are_distinct_combinations():
    names = synthetic.class_names(synthetic.MAX_CLASSES)
    assert len(set(names)) == len(names)
    first8 = [n.split("_") for n in names[:8]]
    assert len({p for p, _ in first8}) == 8 and len({s for _, s in first8}) == 8
    with pytest.raises(ValueError, match="--num-classes"):
        synthetic.generate("/nonexistent/never", synthetic.SynthConfig(num_classes=synthetic.MAX_CLASSES + 1))


def _lines(path):
    return [line for line in path.read_text().splitlines() if line.strip()]


def _decode(path):
    with av.open(str(path)) as c:
        return np.stack([webscale.to_rgb(f) for f in c.decode(video=0)])


def test_ensure_demo_data_generates_the_default_demo_once_and_only_for_synth(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(synthetic, "generate", lambda root, cfg: (calls.append((root, cfg)),
                                                                  (Path(root) / "synth").mkdir(parents=True),
                                                                  (Path(root) / "synth" / "classes.txt").touch()))
    assert synthetic.ensure_demo_data(tmp_path, "k400") is False and calls == []
    assert synthetic.ensure_demo_data(tmp_path, "synth") is True
    assert calls == [(tmp_path, synthetic.SynthConfig())]                  # the default demo, into DATA_ROOT
    assert capsys.readouterr().out == f"generating the demo dataset in {tmp_path}/ ...\n"
    assert synthetic.ensure_demo_data(tmp_path, "synth") is False and len(calls) == 1   # classes.txt is there
    assert capsys.readouterr().out == ""
