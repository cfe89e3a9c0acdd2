"""webscale.py's compact annotation lists: the vectorised parser, `SampleList`, the frame-score sidecar.

Known answers: `webscale.read_list` (vectorised, compact) must give exactly what the per-line reference parser
`webscale.read_list_samples` gives, on every list format, with the same one-line errors; the reference parser's own
samples and messages are checked against what each line says.
"""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

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


def test_read_list_every_txt_form_equals_the_reference_parser(tmp_path):
    lst = put(tmp_path / "train.txt", MIXED)
    compact, ref = both(lst, tmp_path / "prefix", 3)
    assert isinstance(compact, webscale.SampleList) and len(compact) == len(ref) == 15
    assert list(compact) == ref
    assert [s.kind for s in ref] == ["video", "untrimmed", "frames", "image", "raw", "image", "image", "untrimmed",
                                     "video", "image", "windows", "video", "video", "video", "video"]
    assert ref[0] == webscale.Sample(tmp_path / "prefix" / "videos/a.mp4", 0, "video")
    assert ref[2].num_frames == 300 and ref[2].label == 2 and ref[3].path == tmp_path / "prefix" / "images/y.JPG"
    assert ref[4].pos_clips == (0, 1, 2) and ref[4].num_parts == 10 and ref[4].label == 2
    assert ref[10].windows == ((10.0, 20.0), (40.5, 50.0)) and ref[8].label == 2
    assert compact.labels.dtype == np.int64 and list(compact.labels) == [s.label for s in ref]
    assert webscale.kind_names(compact) == {"video", "untrimmed", "frames", "image", "raw", "windows"}


def test_read_list_random_image_list_equals_the_reference_parser(tmp_path):
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


def test_read_list_plain_lines_take_the_vectorised_path(tmp_path, monkeypatch):
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


def test_read_list_json_equals_the_reference_parser(tmp_path):
    lst = put(tmp_path / "raw.json", json.dumps([
        {"video_dir": "rawvideo_dataset", "label": 1, "num_clips": 2, "positive_clip_inds": [0]},
        {"video_dir": "empty", "label": 0, "num_clips": 3, "positive_clip_inds": []},
        {"filename": "v.mp4", "label": 0}, {"frame_dir": "f", "total_frames": 7, "label": 1},
        {"filename": "untrimmed/w.mp4", "label": 1, "windows": [[1.5, 2.5], [7, 9]]}]))
    compact, ref = both(lst, tmp_path, 2)
    assert list(compact) == ref and [s.kind for s in ref] == ["raw", "video", "frames", "windows"]
    assert ref[0] == webscale.Sample(tmp_path / "rawvideo_dataset", 1, "raw", pos_clips=(0,), num_parts=2)
    assert ref[3].windows == ((1.5, 2.5), (7.0, 9.0))   # the entry without a positive piece is left out


def test_read_list_frame_score_sidecar_equals_the_reference_parser(tmp_path):
    lst = put(tmp_path / "train.txt", "untrimmed/a.mp4 1\nuntrimmed/b.mp4 0\nimages/c.jpg 1\n")
    webscale.write_frame_scores(webscale.frame_scores_path(lst), {
        "untrimmed/a.mp4": webscale.FrameScores((0, 25, 50), (0.25, 0.5, 0.125), 0.5),
        "images/c.jpg": webscale.FrameScores((0,), (0.75,), 0.4)})
    compact, ref = both(lst, tmp_path, 2)
    assert list(compact) == ref   # these scores are exact in float32
    assert ref[0].frame_scores.frames == (0, 25, 50) and ref[1].frame_scores is None
    # a subset keeps each sample's scores
    assert list(compact.subset([2, 0])) == [ref[2], ref[0]]


def test_sample_list_subset_slicing_pickling_and_from_samples(tmp_path):
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


# ----------------------------------------------------------------------------------------------------------------------
# 2. Bad lines: one-line errors naming the file and line, the same as the reference parser's
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, message", [
    ("videos/a.mp4 5", r"label 5 out of range: expected 0\.\.2 \(3 classes\)"),
    ("videos/a.mp4 -1", r"label -1 out of range: expected 0\.\.2"),
    ("videos/a.mp4 x", r"LABEL must be an integer"),
    ("videos/a.mp4", r"expected 'PATH LABEL' for a \.mp4 file, got 1 fields"),
    ("frames/x", r"expected 'PATH LABEL' \(video"),
    ("videos/a.mp4 1 2", r"expected 'PATH LABEL' for a \.mp4 file"),
    ("frames/x zero 1", r"NUM_FRAMES must be an integer"),
    ("raw/d 1 2 0 2", r"positive piece 2 out of range: expected 0\.\.1"),
    ("images/a.jpg 1 2", None), ("videos/.mp4 1", None), ("videos/a.mp4 1.0", None), ("videos/a.mp4 +1", None),
    ("videos/a.mp4 99999999999", None), ("videos/a.mp4 1 5:3", None), ("videos/a.mp4 1 x:3", None),
    ("videos/a.mp4 1 1:2 nan:3", None), ("videos/a.txt 1", None), ("a.mp4/ 1", None)])
def test_read_list_bad_lines_are_the_reference_parsers_one_line_errors(tmp_path, line, message):
    lst = put(tmp_path / "train.txt", f"videos/ok.mp4 0\n{line}\n")
    try:
        expected = list(webscale.read_list_samples(lst, tmp_path, 3))
    except ValueError as err:
        with pytest.raises(ValueError) as got:
            webscale.read_list(lst, tmp_path, 3)
        assert str(got.value) == str(err) and "train.txt:2: " in str(err) and "\n" not in str(err)
        assert message is None or re.search(f"train.txt:2: {message}", str(err)), str(err)
    else:   # accepted by both ('a.mp4/ 1' is the video a.mp4; '+1' is label 1)
        assert message is None and list(webscale.read_list(lst, tmp_path, 3)) == expected


def test_read_list_window_errors_missing_and_empty_lists(tmp_path):
    lst = put(tmp_path / "train.txt", "v.mp4 0 3.0:2.0\n")
    with pytest.raises(ValueError, match=r"train.txt:1: window '3.0:2.0': expected START:END in seconds"):
        webscale.read_list(lst, tmp_path, 1)
    with pytest.raises(FileNotFoundError, match=r"annotation list .*nope\.txt not found"):
        webscale.read_list(tmp_path / "nope.txt", tmp_path, 3)
    for text in ("", "\n\n", "# only a comment\n"):
        put(tmp_path / "empty.txt", text)
        with pytest.raises(ValueError, match="no samples"):
            webscale.read_list(tmp_path / "empty.txt", tmp_path, 1)


# ----------------------------------------------------------------------------------------------------------------------
# 3. The frame-score sidecar (Sec. 3.5)
# ----------------------------------------------------------------------------------------------------------------------

def test_frame_scores_streamed_or_whole_give_the_same(tmp_path):
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
        fa, fr = a.frame_scores, r.frame_scores
        if fr is not None:
            assert fa.frames == fr.frames and fa.threshold == fr.threshold
            assert np.allclose(fa.scores, fr.scores, rtol=0, atol=1e-7)
    side.write_text(side.read_text()[:-20])   # broken: the one-line error of the whole-file reader
    with pytest.raises(ValueError, match="not a valid frame-score JSON file"):
        webscale.read_list(lst, tmp_path, 2)
