"""data.py: frame sampling, the decoding entry points, datasets by name, labels by class name, the VideoDataset.

Known answers computed another way:
- sample_frames: every entry of MMAction2 1.2.0's SampleFrames test-mode output (golden JSON copied from
  ../shared/data/mmaction2), train-mode known answers for the deterministic short-video branches, and properties
  of the random branches (range, one index per segment, seeded).
- read_frames on generated videos whose pixels say their frame number (its equality with a whole-file decode on
  every format and on the real videos: tests/test_decode.py), frame folders and still images against Pillow,
  crawled JPEGs decoded reduced against a full decode.
- dataset layouts by name, class names, each bad-input error message.
- VideoDataset: every sample kind against read_frames / sample_frames, windows against the pieces cut_video writes,
  corrupt samples replaced and counted once across DataLoader workers, reproducible per-item randomness.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

import data
import videos as tv
import webscale

HERE = Path(__file__).resolve().parent
GEN_FRAMES, GEN_W, GEN_H = 40, 64, 48   # generated videos: frame i is grey level 20 + 5 i on top, 255 minus it below
# generated variants: codec, container, frame timing; all a keyframe every 8 frames, with B-frames
VARIANTS = {
    "h264_mp4": dict(suffix=".mp4"),
    "h264_vfr_mp4": dict(suffix=".mp4", times_ms=np.cumsum([0] + [20 * (1 + i % 3) for i in range(GEN_FRAMES - 1)])),
    "h264_opengop_mkv": dict(suffix=".mkv", bframes=3, x264="open-gop=1"),   # no frame count
    "mpeg4_avi": dict(suffix=".avi", codec="mpeg4", bit_rate=4_000_000),     # AVI pts: the sequential fallback
}


def gen_level(i: int) -> int:
    """Grey level that encodes frame number i in the generated video."""
    return 20 + 5 * i


def write_jpg(path: Path, value: int, size=(20, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, value // 2)).save(path, quality=95)
    return path


def put(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def gen_videos(tmp_path_factory) -> dict[str, Path]:
    root, frames = tmp_path_factory.mktemp("gen"), tv.level_frames(GEN_FRAMES, GEN_W, GEN_H)
    return {name: tv.write_video(root / f"{name}{kw.pop('suffix')}", frames, **{"gop": 8, "bframes": 2, **kw})
            for name, kw in ((name, dict(kw)) for name, kw in VARIANTS.items())}


@pytest.fixture(scope="module")
def gen_video(gen_videos) -> Path:
    return gen_videos["h264_mp4"]


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


def test_sample_frames_refuses_bad_arguments():
    with pytest.raises(ValueError, match="num_frames must be >= 1"):
        data.sample_frames(0, 1, 1, 3, True)
    with pytest.raises(ValueError, match="clip_len, frame_interval, num_clips"):
        data.sample_frames(10, 0, 1, 3, True)


# ----------------------------------------------------------------------------------------------------------------------
# 2. Decoding entry points
# ----------------------------------------------------------------------------------------------------------------------

def test_read_frames_generated_video_content(gen_video):
    idx = np.array([39, 0, 17, 17, 8, 31, 2])
    frames = data.read_frames(gen_video, idx)
    assert frames.shape == (len(idx), GEN_H, GEN_W, 3) and frames.dtype == np.uint8
    for f, i in zip(frames, idx):   # the pixels say which frame this is (levels are 5 apart)
        assert abs(f[:GEN_H // 4].mean() - gen_level(i)) < 2.5
        assert abs(f[3 * GEN_H // 4:].mean() - (255 - gen_level(i))) < 2.5


def test_read_frames_refuses_frames_past_the_end_and_bad_indices(gen_video):
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


def test_read_frames_frame_folder_and_still_image(tmp_path):
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


def test_read_image_large_jpeg_decoded_reduced_is_close_to_a_full_decode(tmp_path):
    y, x = np.mgrid[0:300, 0:400].astype(np.float32)
    img = np.stack([x / 400 * 255, y / 300 * 255, 128 + 100 * np.sin(x / 30) * np.cos(y / 20)], -1).astype(np.uint8)
    Image.fromarray(img).resize((4000, 3000), Image.BILINEAR).save(tmp_path / "big.jpg", quality=90)
    full = data.read_image(tmp_path / "big.jpg")
    small = data.read_image(tmp_path / "big.jpg", short_side=256)
    assert full.shape == (3000, 4000, 3) and small.shape == (375, 500, 3)   # 1/8 scale: short side 375 >= 256
    # resized to the same size (short side 256), the two agree up to draft mode's DCT averaging
    size = (341, 256)
    a = np.asarray(Image.fromarray(full).resize(size, Image.BILINEAR, reducing_gap=None), dtype=np.float32)
    b = np.asarray(Image.fromarray(small).resize(size, Image.BILINEAR), dtype=np.float32)
    assert np.abs(a - b).mean() < 1.5 and np.abs(a - b).max() < 40
    # small images and other formats are decoded in full; a short side of 8-16 px stays as it is
    Image.fromarray(img).resize((800, 600)).save(tmp_path / "mid.png")
    assert data.read_image(tmp_path / "mid.png", short_side=256).shape == (600, 800, 3)
    with pytest.raises(ValueError, match=r"tiny.jpg: 1x1 image, smaller than 8 pixels a side"):
        Image.new("RGB", (1, 1)).save(tmp_path / "tiny.jpg")
        data.read_image(tmp_path / "tiny.jpg", short_side=256)


# ----------------------------------------------------------------------------------------------------------------------
# 3. Lists and layouts: datasets by name, labels by class name
# ----------------------------------------------------------------------------------------------------------------------

def test_resolve_dataset_plain_folder(tmp_path):
    put(tmp_path / "toy" / "classes.txt", "a\nb\n")
    put(tmp_path / "toy" / "train.txt", "videos/x.mp4 1\nimages/y.jpg 0\n")
    put(tmp_path / "toy" / "val.txt", "videos/z.mp4 0\n")
    spec = data.resolve_dataset(tmp_path, "toy")
    assert spec.classes == ["a", "b"] and sorted(spec.splits) == ["train", "val"]
    train = data.load_split(spec, "train")
    assert train[0].path == tmp_path / "toy" / "videos/x.mp4" and train[1].kind == "image"
    with pytest.raises(FileNotFoundError, match=r"toy/test.txt not found"):
        data.load_split(spec, "test")


def test_resolve_dataset_unknown_name_lists_known_names(tmp_path):
    with pytest.raises(ValueError) as err:
        data.resolve_dataset(tmp_path, "kinetics9000")
    msg = str(err.value)
    assert "unknown dataset 'kinetics9000'" in msg and "\n" not in msg
    for name in ("k400", "k200", "ucf101", "hmdb51", "gg", "ig-img", "ig-vid", "k200-raw", "k400-untr"):
        assert name in msg
    assert "classes.txt" in msg and "train.txt" in msg and "val.txt" in msg


def test_resolve_dataset_k400_layout(tmp_path):
    k = tmp_path / "kinetics400"
    put(k / "label_map_k400.txt", "\n".join(f"class {i}" for i in range(400)))
    put(k / "kinetics400_train_list_videos.txt", "abseiling/x.mp4 0\n")
    put(k / "kinetics400_val_list_videos.txt", "y.mp4 399\n")
    spec = data.resolve_dataset(tmp_path, "k400")
    assert len(spec.classes) == 400 and spec.classes[3] == "class 3"
    assert data.load_split(spec, "train")[0].path == k / "videos_train" / "abseiling/x.mp4"
    assert data.load_split(spec, "val")[0].path == k / "videos_val" / "y.mp4"


def test_resolve_dataset_k200_and_web_sources(tmp_path):
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


def test_resolve_dataset_ucf101_and_hmdb51_class_names(tmp_path):
    put(tmp_path / "ucf101" / "annotations" / "classInd.txt", "1 ApplyEyeMakeup\n2 Archery\n")
    put(tmp_path / "ucf101" / "ucf101_train_split_1_videos.txt", "Archery/v_Archery_g01_c01.avi 1\n")
    ucf = data.resolve_dataset(tmp_path, "ucf101")
    assert ucf.classes == ["ApplyEyeMakeup", "Archery"]
    assert data.load_split(ucf, "train")[0].path == tmp_path / "ucf101/videos/Archery/v_Archery_g01_c01.avi"
    for c in ("wave", "brush_hair", "kiss"):
        (tmp_path / "hmdb51" / "videos" / c).mkdir(parents=True)
    assert data.resolve_dataset(tmp_path, "hmdb51").classes == ["brush_hair", "kiss", "wave"]


def test_resolve_dataset_missing_class_names(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dataset k400: class names not found; looked for"):
        data.resolve_dataset(tmp_path, "k400")
    (tmp_path / "mine").mkdir()
    with pytest.raises(FileNotFoundError, match=r"mine/classes.txt not found"):
        data.resolve_dataset(tmp_path, "mine")


def test_read_classes_plain_and_indexed(tmp_path):
    (tmp_path / "a.txt").write_text("abseiling\nair drumming\n")
    (tmp_path / "b.txt").write_text("1 ApplyEyeMakeup\n2 ApplyLipstick\n3 Archery\n")
    assert data.read_classes(tmp_path / "a.txt") == ["abseiling", "air drumming"]
    assert data.read_classes(tmp_path / "b.txt") == ["ApplyEyeMakeup", "ApplyLipstick", "Archery"]


def test_map_labels_k200_web_images_land_on_k400_places(tmp_path):
    k400 = [f"class_{i:03d}" for i in range(400)]
    k200 = [k400[i] for i in np.random.default_rng(0).permutation(400)[:199]] + ["class_399"]
    k200 = k200[::-1]   # another order: class_399 is web label 0
    lst = put(tmp_path / "gg.txt", "a.jpg 0\nb.jpg 1\nc.jpg 199\nd.jpg 0\n")
    for samples in (webscale.read_list(lst, tmp_path, 200), webscale.read_list_samples(lst, tmp_path, 200)):
        mapped, left_out = data.map_labels(samples, k200, k400, "--aux gg")
        assert left_out == 0 and [s.label for s in mapped] == [399, k400.index(k200[1]), k400.index(k200[199]), 399]
        assert [s.path.name for s in mapped] == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    # names compared case-insensitively with '_' as ' '; classes missing from the target are left out
    mapped, left_out = data.map_labels(webscale.read_list(lst, tmp_path, 200), ["Class 399", "nope"] + k200[2:],
                                       k400, "--aux gg")
    assert left_out == 1 and [s.label for s in mapped] == [399, k400.index(k200[199]), 399]
    assert isinstance(mapped, webscale.SampleList) and mapped.labels.tolist() == [399, k400.index(k200[199]), 399]
    with pytest.raises(ValueError, match=r"^--aux gg: none of its 2 classes \(x, y\) is a class of the target "
                                         r"\(class_000, class_001, class_002, class_003, \.\.\.\)$"):
        data.map_labels(webscale.read_list(put(tmp_path / "g2.txt", "a.jpg 0\n"), tmp_path, 2), ["x", "y"], k400,
                        "--aux gg")


# ----------------------------------------------------------------------------------------------------------------------
# 4. VideoDataset
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


def test_video_dataset_replaces_and_counts_broken_samples(media_root, caplog):
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


def test_video_dataset_all_broken_raises(media_root):
    ds = make_dataset(media_root, [f"{b} 0" for b in BROKEN[:3]])
    with pytest.raises(RuntimeError, match="all 3 samples failed to load"):
        ds[1]


def test_video_dataset_kinds_and_frames(media_root, gen_video):
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


def test_video_dataset_reproducible_rng_and_epochs(media_root):
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


def test_video_dataset_same_items_with_dataloader_workers(media_root):
    ds = make_dataset(media_root, [GOOD[0], f"{BROKEN[0]} 0", GOOD[2], GOOD[3]])
    direct = [ds[i] for i in range(len(ds))]
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, shuffle=False)
    for (clip, label, used), (c0, l0, u0) in zip(loader, direct):
        assert torch.equal(clip, c0) and int(label) == l0 and int(used) == u0


def test_video_dataset_persistent_workers_follow_set_epoch(media_root):
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


def test_video_dataset_recovers_from_an_optimistic_frame_count(media_root):
    """A container frame count larger than the decodable frames: recount, resample, no failure."""
    ds = make_dataset(media_root, [GOOD[0]], sampling=data.Sampling(1, 1, 25), test_mode=True)
    expected = ds.load(0)[0]
    ds = make_dataset(media_root, [GOOD[0]], sampling=data.Sampling(1, 1, 25), test_mode=True)
    ds._counts[str(media_root / "videos/good.mp4")] = GEN_FRAMES + 20
    assert np.array_equal(ds.load(0)[0], expected) and ds.num_failed == 0
    assert ds._counts[str(media_root / "videos/good.mp4")] == GEN_FRAMES


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_video_dataset_on_every_generated_variant(gen_videos, variant):
    """Count (container count or decode-count for Matroska), sample and decode through the dataset."""
    for sampling in (data.Sampling(1, 1, 25), data.Sampling(4, 4, 3)):
        ds = data.VideoDataset([webscale.Sample(gen_videos[variant], 0, "video")], sampling, test_mode=True)
        inds = data.sample_frames(GEN_FRAMES, sampling.clip_len, sampling.frame_interval,
                                  sampling.num_clips, True)
        expected = data.read_frames_naive(gen_videos[variant], inds)
        assert np.array_equal(ds.load(0)[0], expected) and ds.num_failed == 0


def test_video_dataset_image_to_clip_gets_rng_and_its_errors_are_not_swallowed(media_root):
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


def test_video_dataset_keeps_a_sample_list_and_converts_samples(tmp_path):
    lst = put(tmp_path / "train.txt", "images/a.jpg 0\nimages/b.jpg 1\n")
    compact = webscale.read_list(lst, tmp_path, 2)
    ds = data.VideoDataset(compact, data.Sampling())
    assert ds.samples is compact
    ds.samples = [compact[1]]   # e.g. train.py's label_fraction
    assert isinstance(ds.samples, webscale.SampleList) and list(ds.samples) == [compact[1]] and ds.num_failed == 0


W_FRAMES, W_FPS = 40, 25   # windows: an untrimmed video's frames k / fps, against cut_video's pieces


def write_levels_video(path: Path, num_frames: int = W_FRAMES, fps: int = W_FPS) -> Path:
    """32x32, frame i grey level 20 + 5 i all over (decodes back to its index whatever the encoder's rounding)."""
    return tv.write_video(path, tv.level_frames(num_frames, 32, 32, split=False), fps=fps, gop=8)


def frame_numbers(frames: np.ndarray) -> list[int]:
    return [tv.frame_number(f) for f in frames]


def test_video_dataset_windows_decode_the_frames_of_the_cut_pieces(tmp_path):
    write_levels_video(tmp_path / "untrimmed" / "v.mp4")
    # 0.6-s pieces of 15 frames: [0, 15), [15, 30), [30, 40) (the tail joins the last piece)
    assert data.cut_video(tmp_path / "untrimmed" / "v.mp4", tmp_path / "raw" / "v", seconds=0.6) == 3
    assert data.window_frames((0.6, 1.2), W_FPS, W_FRAMES) == (15, 30)
    assert data.window_frames((1.2, 1.6), W_FPS, W_FRAMES) == (30, 40)
    assert data.window_frames((0.5996, 1.2004), W_FPS, W_FRAMES) == (15, 30)   # milliseconds in the list
    with pytest.raises(ValueError, match=r"v.mp4: window 2.000:3.000 s holds no frame \(40 frames"):
        data.window_frames((2.0, 3.0), W_FPS, W_FRAMES, "v.mp4")
    put(tmp_path / "pieces.txt", "raw/v 0 3 1\nraw/v 0 3 2\n")
    put(tmp_path / "windows.txt", "untrimmed/v.mp4 0 0.600:1.200\nuntrimmed/v.mp4 0 1.200:1.600 0.000:0.600\n")
    for sampling in (data.Sampling(4, 2, 1), data.Sampling(1, 1, 5)):
        for test_mode in (False, True):
            kw = dict(sampling=sampling, test_mode=test_mode, seed=3)
            pieces = data.VideoDataset(webscale.read_list(tmp_path / "pieces.txt", tmp_path, 1), **kw)
            windows = data.VideoDataset(webscale.read_list(tmp_path / "windows.txt", tmp_path, 1), **kw)
            for i in range(2):
                # frame numbers of the untrimmed video (a piece's frames carry their original levels)
                got, want = frame_numbers(windows.load(i)[0]), frame_numbers(pieces.load(i)[0])
                if test_mode or i == 0:   # the first window is the piece; one window: the same random draws
                    assert got == want, (sampling, test_mode, i)
                if test_mode:
                    assert all(15 * (i + 1) <= n < 15 * (i + 2) - 5 * i for n in got)
    assert windows.num_failed == 0
    # Matroska carries no frame count: the window's bound comes from duration x rate, same frames
    write_levels_video(tmp_path / "untrimmed" / "v.mkv")
    put(tmp_path / "mkv.txt", "untrimmed/v.mkv 0 0.600:1.200\nuntrimmed/v.mkv 0 1.200:9.000 0.000:0.600\n")
    mkv = data.VideoDataset(webscale.read_list(tmp_path / "mkv.txt", tmp_path, 1), data.Sampling(4, 3, 3),
                            test_mode=True)
    mp4 = data.VideoDataset(webscale.read_list(tmp_path / "windows.txt", tmp_path, 1), data.Sampling(4, 3, 3),
                            test_mode=True)
    assert [frame_numbers(mkv.load(i)[0]) for i in range(2)] == [frame_numbers(mp4.load(i)[0]) for i in range(2)]
    # training draws one of the item's windows per epoch, and samples inside it only
    seen = set()
    windows = data.VideoDataset(webscale.read_list(tmp_path / "windows.txt", tmp_path, 1), data.Sampling(4, 2, 1))
    for epoch in range(12):
        windows.set_epoch(epoch)
        got = frame_numbers(windows.load(1)[0])
        inside = [w for w, (a, b) in enumerate([(30, 40), (0, 15)]) if all(a <= n < b for n in got)]
        assert len(inside) == 1, got
        seen.add(inside[0])
    assert seen == {0, 1}


def write_audio_only(path: Path) -> Path:
    """An .mp4 with one AAC audio stream and no video stream."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_video_dataset_dirty_web_files_counted_once_across_two_workers(tmp_path):
    good = write_levels_video(tmp_path / "videos" / "good.mp4")
    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 30), (90, 20, 200)).save(tmp_path / "images" / "good.jpg")
    bad = {"videos/zero.mp4": b"", "videos/truncated.mp4": good.read_bytes()[:good.stat().st_size // 2],
           "videos/text.mp4": b"this is not a video\n" * 40, "images/page.jpg": b"<!DOCTYPE html><html>404</html>"}
    for rel, content in bad.items():
        (tmp_path / rel).write_bytes(content)
    Image.new("RGB", (1, 1)).save(tmp_path / "images" / "pixel.jpg")
    write_audio_only(tmp_path / "videos" / "audio.mp4")
    bad_paths = [*bad, "images/pixel.jpg", "videos/audio.mp4", "videos/missing.mp4"]
    # 15 items, 7 bad at (0, 1, 2, 3, 8, 9, 10): with the replacement stride 11 no bad item's first replacement
    # is bad, so each bad file is read by exactly one worker (the one given its index) in the first epoch
    lines, it = [], iter(bad_paths)
    for i in range(15):
        lines.append(f"{next(it)} 1" if i in (0, 1, 2, 3, 8, 9, 10) else
                     ("videos/good.mp4 0" if i % 2 else "images/good.jpg 0"))
    put(tmp_path / "dirty.txt", "\n".join(lines) + "\n")
    ds = data.VideoDataset(webscale.read_list(tmp_path / "dirty.txt", tmp_path, 2), data.Sampling(1, 1, 2),
                           image_short_side=16)
    assert data._coprime_stride(len(ds)) == 11
    log = tmp_path / "log.txt"
    handler = logging.FileHandler(log)
    logging.getLogger("data").addHandler(handler)
    try:
        for epoch in range(2):   # fresh workers each epoch: the second skips the known-bad files silently
            ds.set_epoch(epoch)
            loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
            items = list(loader)
            assert len(items) == 15 and all(lines[used].endswith(" 0") for _, _, used in items)
    finally:
        logging.getLogger("data").removeHandler(handler)
        handler.close()
    assert ds.num_failed == 7
    named = [ln for ln in log.read_text().splitlines() if "failed to load" in ln]
    assert sorted(next(p for p in bad_paths if str(tmp_path / p) + " " in ln) for ln in named) == sorted(bad_paths)
