"""Compact annotation lists (issue 9 item 6), labels by class name (issue 8 item 10), windows of untrimmed
videos (issue 9 item 4), dirty web data in DataLoader workers (issue 8 item 7), reduced JPEG decoding.

Known answers: `webscale.read_list` (vectorised, compact) must give exactly what the per-line reference parser
`webscale.read_list_samples` gives, on every list format, with the same one-line errors.
"""
from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

import data
import webscale


def put(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def both(lst: Path, prefix: Path, num_classes: int):
    """(compact list, reference Samples) of one list file."""
    return webscale.read_list(lst, prefix, num_classes), webscale.read_list_samples(lst, prefix, num_classes)


# ----------------------------------------------------------------------------------------------------------------------
# 1. Same samples as the reference parser, every format
# ----------------------------------------------------------------------------------------------------------------------

MIXED = ("videos/a.mp4 0\n"
         "\n"
         "untrimmed/long.mkv 1\n"
         "frames/x 300 2\n"
         "images/y.JPG 1\n"
         "raw/D32_1gwq35E 2 10 0 1 2\n"
         "# a comment\n"
         "   # an indented comment\n"
         "images/tab.png\t2\n"
         "images/crlf.jpg 1\r\n"
         "./untrimmed/dot.mp4 0\n"
         "/abs/videos/b.webm 002\n"
         "web/ünïcode.jpeg 1\n"
         "untrimmed/u.mp4 1 10.000:20.000 40.5:50\n"
         "untrimmedx.mp4 1\n"
         "  spaced/lead.mp4   2  \n"
         "x.tar.mp4 0\n"
         "UPPER/V.MPEG 2")   # no newline at the end


def test_every_txt_form_equals_the_reference(tmp_path):
    lst = put(tmp_path / "train.txt", MIXED)
    compact, ref = both(lst, tmp_path / "prefix", 3)
    assert isinstance(compact, webscale.SampleList) and len(compact) == len(ref) == 15
    assert list(compact) == ref
    assert [s.kind for s in ref] == ["video", "untrimmed", "frames", "image", "raw", "image", "image", "untrimmed",
                                     "video", "image", "windows", "video", "video", "video", "video"]
    assert ref[10].windows == ((10.0, 20.0), (40.5, 50.0)) and ref[8].label == 2
    assert compact.labels.dtype == np.int64 and list(compact.labels) == [s.label for s in ref]
    assert webscale.kind_names(compact) == {"video", "untrimmed", "frames", "image", "raw", "windows"}


def test_random_image_list_equals_the_reference(tmp_path):
    rng = np.random.default_rng(0)
    exts = webscale.VIDEO_EXTS + webscale.IMAGE_EXTS + (".JPG", ".Mp4", ".txt", "")
    lines = []
    for i in range(3000):
        name = "".join(rng.choice(list("abcXYZ019_-./"), size=rng.integers(1, 12)))
        lines.append(f'{rng.choice(["", "untrimmed/", "web/"])}{name}{rng.choice(exts)} {rng.integers(0, 5)}')
    good = []
    for ln in lines:   # keep the lines the reference accepts (the others are tested for their errors below)
        try:
            webscale._parse_line(ln.split(), "line", tmp_path, 5)   # the reference parser's line rule
            good.append(ln)
        except ValueError:
            pass
    assert len(good) > 2000
    lst = put(tmp_path / "train.txt", "\n".join(good) + "\n")
    compact, ref = both(lst, tmp_path, 5)
    assert list(compact) == ref


def test_plain_lines_take_the_vectorised_path(tmp_path, monkeypatch):
    lines = ["web/a.jpg 3", "untrimmed/b.MP4 0", "c/d.e.webm 1", "x.tiff 2", "untrimmed.mp4 1", "v/.x.jpg 0",
             "../web/f.jpg 1", "../../untrimmed/g.mp4 2"]   # filter.py's outputs list their crawl as '../SOURCE/...'
    lst = put(tmp_path / "train.txt", "\n".join(lines) + "\n")
    ref = webscale.read_list_samples(lst, tmp_path, 4)
    put(tmp_path / "crlf.txt", "\r\n".join(lines) + "\r\n")   # written on Windows
    assert webscale.read_list_samples(tmp_path / "crlf.txt", tmp_path, 4) == ref
    calls = []
    monkeypatch.setattr(webscale, "_parse_line", lambda *a: calls.append(a))
    assert list(webscale.read_list(lst, tmp_path, 4)) == ref and calls == []
    assert list(webscale.read_list(tmp_path / "crlf.txt", tmp_path, 4)) == ref and calls == []
    assert [s.kind for s in ref] == ["image", "untrimmed", "video", "image", "video", "image", "image", "video"]


def test_json_list_equals_the_reference(tmp_path):
    lst = put(tmp_path / "raw.json", json.dumps([
        {"video_dir": "rawvideo_dataset", "label": 1, "num_clips": 2, "positive_clip_inds": [0]},
        {"video_dir": "empty", "label": 0, "num_clips": 3, "positive_clip_inds": []},
        {"filename": "v.mp4", "label": 0}, {"frame_dir": "f", "total_frames": 7, "label": 1},
        {"filename": "untrimmed/w.mp4", "label": 1, "windows": [[1.5, 2.5], [7, 9]]}]))
    compact, ref = both(lst, tmp_path, 2)
    assert list(compact) == ref and [s.kind for s in ref] == ["raw", "video", "frames", "windows"]
    assert ref[3].windows == ((1.5, 2.5), (7.0, 9.0))


def test_frame_score_sidecar_equals_the_reference(tmp_path):
    lst = put(tmp_path / "train.txt", "untrimmed/a.mp4 1\nuntrimmed/b.mp4 0\nimages/c.jpg 1\n")
    webscale.write_frame_scores(webscale.frame_scores_path(lst), {
        "untrimmed/a.mp4": webscale.FrameScores((0, 25, 50), (0.25, 0.5, 0.125), 0.5),
        "images/c.jpg": webscale.FrameScores((0,), (0.75,), 0.4)})
    compact, ref = both(lst, tmp_path, 2)
    assert list(compact) == ref   # these scores are exact in float32
    assert ref[0].frame_scores.frames == (0, 25, 50) and ref[1].frame_scores is None
    # a subset keeps each sample's scores
    assert list(compact.subset([2, 0])) == [ref[2], ref[0]]


def test_subset_slicing_pickling_and_from_samples(tmp_path):
    lst = put(tmp_path / "train.txt", MIXED)
    compact, ref = both(lst, tmp_path, 3)
    idx = np.array([14, 4, 4, 10, 0])
    assert list(compact[idx]) == [ref[i] for i in idx]
    assert list(compact[2:9:3]) == ref[2:9:3] and compact[-1] == ref[-1]
    assert list(compact[compact.labels == 1]) == [s for s in ref if s.label == 1]
    relabelled = compact.subset([4, 10], labels=[7, 8])
    assert [s.label for s in relabelled] == [7, 8] and relabelled[0].pos_clips == (0, 1, 2)
    assert list(pickle.loads(pickle.dumps(compact))) == ref
    assert list(webscale.SampleList.from_samples(ref)) == ref
    assert list(webscale.SampleList.from_samples(ref, tmp_path)) == ref
    with pytest.raises(IndexError):
        compact[15]


def test_dataset_keeps_a_sample_list_and_converts_samples(tmp_path):
    lst = put(tmp_path / "train.txt", "images/a.jpg 0\nimages/b.jpg 1\n")
    compact = webscale.read_list(lst, tmp_path, 2)
    ds = data.VideoDataset(compact, data.Sampling())
    assert ds.samples is compact
    ds.samples = [compact[1]]   # e.g. train.py's label_fraction
    assert isinstance(ds.samples, webscale.SampleList) and list(ds.samples) == [compact[1]] and ds.num_failed == 0


# ----------------------------------------------------------------------------------------------------------------------
# 2. Bad lines keep their one-line errors (same message as the reference)
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("line", [
    "videos/a.mp4 5", "videos/a.mp4 -1", "videos/a.mp4 x", "videos/a.mp4", "frames/x", "videos/a.mp4 1 2",
    "frames/x zero 1", "raw/d 1 2 0 2", "images/a.jpg 1 2", "videos/.mp4 1", "videos/a.mp4 1.0",
    "videos/a.mp4 +1", "videos/a.mp4 99999999999", "videos/a.mp4 1 5:3", "videos/a.mp4 1 x:3",
    "videos/a.mp4 1 1:2 nan:3", "videos/a.txt 1", "a.mp4/ 1"])
def test_bad_lines_keep_their_one_line_errors(tmp_path, line):
    lst = put(tmp_path / "train.txt", f"videos/ok.mp4 0\n{line}\n")
    try:
        expected = list(webscale.read_list_samples(lst, tmp_path, 3))
    except ValueError as err:
        with pytest.raises(ValueError) as got:
            webscale.read_list(lst, tmp_path, 3)
        assert str(got.value) == str(err) and f"train.txt:2: " in str(err) and "\n" not in str(err)
    else:   # accepted by both ('a.mp4/ 1' is the video a.mp4)
        assert list(webscale.read_list(lst, tmp_path, 3)) == expected


def test_window_errors_and_empty_lists(tmp_path):
    lst = put(tmp_path / "train.txt", "v.mp4 0 3.0:2.0\n")
    with pytest.raises(ValueError, match=r"train.txt:1: window '3.0:2.0': expected START:END in seconds"):
        webscale.read_list(lst, tmp_path, 1)
    for text in ("", "\n\n", "# only a comment\n"):
        put(tmp_path / "empty.txt", text)
        with pytest.raises(ValueError, match="no samples"):
            webscale.read_list(tmp_path / "empty.txt", tmp_path, 1)


# ----------------------------------------------------------------------------------------------------------------------
# 3. Labels by class name (issue 8 item 10)
# ----------------------------------------------------------------------------------------------------------------------

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
# 4. Windows of untrimmed videos (issue 9 item 4): the same frames as the cut pieces
# ----------------------------------------------------------------------------------------------------------------------

W_FRAMES, W_FPS = 40, 25


def write_levels_video(path: Path, num_frames: int = W_FRAMES, fps: int = W_FPS) -> Path:
    """Frame i is grey level 20 + 5 i (decodes back to its index whatever the encoder's rounding)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.options = {"x264-params": "keyint=8:min-keyint=8:scenecut=0"}
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 20 + 5 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def frame_numbers(frames: np.ndarray) -> list[int]:
    return [int(round((f.mean() - 20) / 5)) for f in frames]


def test_windows_decode_the_frames_of_the_cut_pieces(tmp_path):
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
    mkv = data.VideoDataset(webscale.read_list(tmp_path / "mkv.txt", tmp_path, 1), data.Sampling(4, 3, 3), test_mode=True)
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


# ----------------------------------------------------------------------------------------------------------------------
# 5. Crawled JPEGs decoded reduced (issue 9 item 7)
# ----------------------------------------------------------------------------------------------------------------------

def test_large_jpeg_decoded_reduced_is_close_to_a_full_decode(tmp_path):
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
# 6. Dirty web data in DataLoader workers (issue 8 item 7): caught, named once, counted exactly
# ----------------------------------------------------------------------------------------------------------------------

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


def test_dirty_matrix_counted_once_across_two_workers(tmp_path):
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


def test_frame_score_sidecar_streamed_or_whole_gives_the_same(tmp_path):
    videos = {f"untrimmed/{i}.mp4": webscale.FrameScores(tuple(range(0, 25 * (i + 1), 25)),
                                                     tuple(np.linspace(0, 1, i + 1).round(3)), 0.5 + i / 100)
              for i in range(5)}
    lst = put(tmp_path / "train.txt", "".join(f"{k} 0\n" for k in videos) + "untrimmed/none.mp4 1\n")
    side = webscale.frame_scores_path(lst)
    webscale.write_frame_scores(side, videos)
    assert dict(webscale._stream_frame_scores(side)) == webscale.read_frame_scores(side) == \
        {k: webscale.FrameScores(v.frames, tuple(float(x) for x in v.scores), v.threshold) for k, v in videos.items()}
    streamed = list(webscale.read_list(lst, tmp_path, 2))
    side.write_text(json.dumps({"format": webscale.FRAME_SCORES_FORMAT, "videos": {
        k: {"frames": list(v.frames), "scores": list(v.scores), "threshold": v.threshold} for k, v in videos.items()}}))
    whole = list(webscale.read_list(lst, tmp_path, 2))   # another layout: read whole
    ref = webscale.read_list_samples(lst, tmp_path, 2)
    for a, b, r in zip(streamed, whole, ref):   # float32 scores: equal to 1e-7
        assert a == b and a.path == r.path and (a.frame_scores is None) == (r.frame_scores is None)
        if r.frame_scores is not None:
            assert a.frame_scores.frames == r.frame_scores.frames and a.frame_scores.threshold == r.frame_scores.threshold
            assert np.allclose(a.frame_scores.scores, r.frame_scores.scores, rtol=0, atol=1e-7)
    side.write_text(side.read_text()[:-20])   # broken: the one-line error of the whole-file reader
    with pytest.raises(ValueError, match="not a valid frame-score JSON file"):
        webscale.read_list(lst, tmp_path, 2)
