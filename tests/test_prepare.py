"""`python prepare.py`: the same dataset written again for fast training (frame folders or dense H.264).

Through the command line as a user runs it: on the demo data and on a generated Kinetics-400 layout in both formats,
train.py on the result, a broken file reported and left out, SIGKILL mid-run and the same command again equal to an
uninterrupted run, every list form (images, frame folders, raw pieces, windows, frame-score sidecars) written back.
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

import data
import prepare
import train
import transforms
import videos as tv
import webscale

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--arch", "tsn_tiny", "--batch-size", "4", "--workers", "0", "--test-clips", "3", "--test-crops", "1",
        "--epochs", "1", "--log-interval", "2"]


def run_prepare(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, str(ROOT / "prepare.py"), *argv], capture_output=True, text=True,
                         timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"})
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def cli(argv: list) -> dict:
    """prepare.py in-process, as its __main__ runs it (one-line errors: SystemExit)."""
    return webscale.run_command(prepare.main, prepare.get_args_parser(), argv)


def tree(root: Path) -> dict:
    """relative path -> sha256 of every file under root."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def write_video(path: Path, frames: np.ndarray, faststart: bool = False) -> Path:
    """H.264 as downloads are: x264's default GOP, B-frames on; 8 fps."""
    return tv.write_video(path, frames, fps=8, faststart=faststart)


def moving_frames(n: int, w: int, h: int, seed: int) -> np.ndarray:
    """(n, h, w, 3) smooth frames with a moving square: easy for the codec, distinct per frame."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([40 + 150 * xx / w, 40 + 150 * yy / h, np.full((h, w), 20.0 * (seed % 8))], axis=-1)
    frames = np.repeat(base.astype(np.uint8)[None], n, axis=0)
    for t in range(n):
        frames[t, 10:26, 4 + 3 * t:20 + 3 * t] = (250, 30, 30)
    return frames


def keyframes(path: Path) -> tuple[list[int], bool]:
    """Keyframe positions in decoding order, and whether frames are stored in display order (no B-frames)."""
    with av.open(str(path)) as c:
        packets = [p for p in c.demux(video=0) if p.size]
    pts = [p.pts for p in packets]
    return [i for i, p in enumerate(packets) if p.is_keyframe], pts == sorted(pts)


@pytest.fixture(scope="module")
def k400(tmp_path_factory) -> tuple[Path, dict]:
    """DATA_ROOT/kinetics400/ as MMAction2 lays it out: 3 classes, 4 train + 2 val clips of 160x120 (one of them an
    .avi name), and a train clip cut mid-stream; -> (root, {list path: frame count})."""
    root = tmp_path_factory.mktemp("k400root")
    k = root / "kinetics400"
    k.mkdir()
    (k / "classes.txt").write_text("abseiling\nair drumming\nzumba\n")
    counts, lines = {}, {"train": [], "val": []}
    for i in range(6):
        split = "train" if i < 4 else "val"
        rel = f"{['abseiling', 'air_drumming', 'zumba'][i % 3]}/clip_{i:02d}.mp4"
        n = 20 + i
        write_video(k / f"videos_{split}" / rel, moving_frames(n, 160, 120, i))
        counts[rel], lines[split] = n, lines[split] + [f"{rel} {i % 3}"]
    broken = k / "videos_train" / "zumba" / "cut.mp4"   # index up front, data cut: opens, claims 40 frames
    write_video(broken, moving_frames(40, 160, 120, 9), faststart=True)
    broken.write_bytes(broken.read_bytes()[:broken.stat().st_size // 2])
    lines["train"].insert(2, "zumba/cut.mp4 2")
    for split in ("train", "val"):
        (k / f"kinetics400_{split}_list_videos.txt").write_text("".join(x + "\n" for x in lines[split]))
    return root, counts


@pytest.mark.parametrize("fmt", ["frames", "video"])
def test_prepare_k400_layout_is_written_in_its_layout_resized_and_the_broken_clip_is_reported(k400, tmp_path, capsys,
                                                                                             fmt):
    root, counts = k400
    before = tree(root)
    out = tmp_path / "prepared"
    argv = ["--data-root", str(root), "--dataset", "k400", "--out", str(out), "--format", fmt, "--short-side", "64",
            "--gop", "4", "--workers", "2", "--measure", "0"]
    if fmt == "frames":   # as a user runs it
        stdout = run_prepare(*argv).stdout
    else:                 # the same entry point in-process (the subprocess costs seconds of start-up)
        cli([*argv])
        stdout = capsys.readouterr().out
    assert tree(root) == before   # nothing of DIR changed
    k = out / "kinetics400"
    assert (k / "classes.txt").read_text() == (root / "kinetics400" / "classes.txt").read_text()
    report = json.loads((out / "k400" / prepare.PREPARE_REPORT).read_text())
    assert [f["path"] for f in report["failed"]] == ["kinetics400/videos_train/zumba/cut.mp4"]
    assert "truncated" in report["failed"][0]["reason"] or "Invalid" in report["failed"][0]["reason"]
    assert "1 source(s) failed" in stdout and "/s, ETA" in stdout
    for split in ("train", "val"):
        src_lines = (root / "kinetics400" / f"kinetics400_{split}_list_videos.txt").read_text().split("\n")[:-1]
        got = (k / f"kinetics400_{split}_list_videos.txt").read_text().split("\n")[:-1]
        want = [ln for ln in src_lines if "cut.mp4" not in ln]
        assert len(got) == len(want) == (4 if split == "train" else 2)
        for line, src in zip(got, want):
            rel, label = src.split()
            if fmt == "frames":   # 'DIR COUNT LABEL', the decoded frames 160x120 -> 85x64 (Resize's rounding)
                assert line == f"{rel[:-4]} {counts[rel]} {label}"
                first = np.asarray(Image.open(k / f"videos_{split}" / rel[:-4] / "img_00001.jpg"))
                assert first.shape == (64, 85, 3)
            else:                 # an mp4 84x64 (even sides), a keyframe every 4 frames, no B-frames
                assert line == src
                path = k / f"videos_{split}" / rel
                keys, in_order = keyframes(path)
                assert keys == list(range(0, counts[rel], 4)) and in_order
                first = data.read_frames(path, [0])[0]
                assert first.shape == (64, 84, 3)
            ref = transforms.Resize(short_side=64)(data.read_frames(root / "kinetics400" / f"videos_{split}" / rel,
                                                                    [0]))[0][:, :first.shape[1]]
            assert np.abs(ref.astype(int) - first.astype(int)).mean() < 3
    if fmt == "frames":   # train.py reads the prepared layout as it is: its val videos are the prepared folders
        work = tmp_path / "w"
        m = train.main(train.get_args_parser().parse_args(["--data-root", str(out), "--target", "k400",
                                                           "--work-dir", str(work), *FAST]))
        preds = [json.loads(ln) for ln in (work / "predictions.jsonl").read_text().splitlines()]
        val = [ln.split() for ln in (k / "kinetics400_val_list_videos.txt").read_text().splitlines()]
        assert [(p["path"], p["label"]) for p in preds] == [(str(k / "videos_val" / rel), int(label))
                                                            for rel, _, label in val]
        assert m["num_videos"] == 2 and m["num_unreadable"] == 0   # top1: the videos whose first class is their label
        assert m["top1"] == sum(p["top5"][0]["class"] == p["label"] for p in preds) / 2
    else:
        samples = data.load_split(data.resolve_dataset(out, "k400"), "val")
        ds = data.VideoDataset(samples, data.Sampling(4, 4, 1))
        assert [ds.load(i)[0].shape for i in range(2)] == [(4, 64, 84, 3)] * 2 and ds.num_failed == 0


def test_prepare_demo_data_becomes_frame_folders_of_every_frame_and_the_cpu_per_sample_is_printed(small_data, tmp_path):
    before = tree(small_data / "synth")
    out = tmp_path / "prepared"
    res = run_prepare("--data-root", str(small_data), "--dataset", "synth", "--out", str(out), "--workers", "2",
                  "--measure", "2")
    assert tree(small_data / "synth") == before
    truth = json.loads((small_data / "truth.json").read_text())["synth"]
    for split in ("train", "val"):
        src = (small_data / "synth" / f"{split}.txt").read_text().split()
        got = (out / "synth" / f"{split}.txt").read_text().split("\n")[:-1]
        assert got == [f"{p[:-4]} {truth[p]['num_frames']} {lab}" for p, lab in zip(src[::2], src[1::2])]
    assert (out / "synth" / "classes.txt").read_bytes() == (small_data / "synth" / "classes.txt").read_bytes()
    assert "TSN 3 seg (one DataLoader worker, current transforms)" in res.stdout and "ms prepared" in res.stdout
    report = json.loads((out / "synth" / prepare.PREPARE_REPORT).read_text())
    assert report["failed"] == [] and set(report["cpu_ms_per_sample"]) == {"TSN 3 seg", "SlowOnly 4x16"}
    video = "videos/solid_disc_000.mp4"   # every frame, in order, within JPEG's loss of the decoded video
    frames = data.read_frames(out / "synth" / video[:-4], range(truth[video]["num_frames"]))
    ref = data.read_frames_naive(small_data / "synth" / video, range(truth[video]["num_frames"]))
    assert np.abs(frames.astype(int) - ref.astype(int)).mean() < 3


def test_prepare_killed_mid_run_and_run_again_equals_an_uninterrupted_run(small_data, tmp_path):
    args = ["--data-root", str(small_data), "--dataset", "synth-web-vid", "--format", "video", "--workers", "1",
            "--measure", "0"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    cmd = [sys.executable, str(ROOT / "prepare.py"), *args, "--out", str(killed)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=os.environ | {"OMP_NUM_THREADS": "1"})
    videos = killed / "synth-web-vid" / "videos"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if videos.is_dir() and len([p for p in videos.iterdir() if p.suffix == ".mp4"]) >= 3:
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "synth-web-vid" / "train.txt").exists()   # killed mid-run: the lists come last
    run_prepare(*args, "--out", str(killed))
    cli([*args, "--out", str(whole)])
    a, b = tree(killed), tree(whole)
    assert not [p for p in a if webscale.TMP_TAG in p]
    report = f"synth-web-vid/{prepare.PREPARE_REPORT}"   # holds --out: compared without it
    a.pop(report), b.pop(report)
    failed = [json.loads((r / report).read_text())["failed"] for r in (killed, whole)]
    assert a == b and len(a) == 11 + 3 and failed[0] == failed[1] and len(failed[0]) == 2


def test_prepare_writes_every_list_form_back(tmp_path):
    """Images (resized, re-saved as .jpg), frame folders (copied), raw pieces, windows and a frame-score sidecar."""
    root, name = tmp_path / "root", "mixed"
    d = root / name
    (d / "images").mkdir(parents=True)
    Image.fromarray(moving_frames(1, 200, 150, 1)[0]).save(d / "images" / "big.png")
    Image.fromarray(moving_frames(1, 40, 30, 2)[0]).save(d / "images" / "small.jpg", quality=80)
    (d / "frames" / "f").mkdir(parents=True)
    for i, f in enumerate(moving_frames(5, 48, 40, 3)):
        Image.fromarray(f).save(d / "frames" / "f" / data.FRAME_TMPL.format(i + 1))
    for k in range(2):
        write_video(d / "raw" / "r" / webscale.PART_TMPL.format(k), moving_frames(16, 48, 40, 4 + k))
    write_video(d / "untrimmed" / "u.mp4", moving_frames(40, 48, 40, 6))
    write_video(d / "untrimmed" / "s.mp4", moving_frames(24, 48, 40, 7))
    (d / "classes.txt").write_text("a\nb\n")
    (d / "motion.json").write_text("{}\n")
    (d / "train.txt").write_text("images/big.png 0\nimages/small.jpg 1\nframes/f 5 0\nraw/r 1 2 1\n"
                                 "untrimmed/u.mp4 1 0.5:1.75 3.0:4.0\nuntrimmed/s.mp4 0\n")
    (d / "val.txt").write_text("")
    scores = webscale.FrameScores((0, 8, 16), (0.9, 0.2, 0.7), 0.5)
    webscale.write_frame_scores(webscale.frame_scores_path(d / "train.txt"), {"untrimmed/s.mp4": scores})
    out = tmp_path / "out"
    cli(["--data-root", str(root), "--dataset", name, "--out", str(out), "--short-side", "32",
              "--workers", "2", "--measure", "0"])
    o = out / name
    assert (o / "train.txt").read_text() == ("images/big.jpg 0\nimages/small.jpg 1\nframes/f 5 0\nraw/r 1 2 1\n"
                                            "untrimmed/u.mp4 1 0.5:1.75 3.0:4.0\nuntrimmed/s.mp4 0\n")
    assert (o / "val.txt").read_text() == "" and (o / "motion.json").read_text() == "{}\n"
    assert webscale.read_frame_scores(webscale.frame_scores_path(o / "train.txt")) == {"untrimmed/s.mp4": scores}
    assert Image.open(o / "images" / "big.jpg").size == (43, 32)                  # 200x150 -> short side 32
    assert (o / "images" / "small.jpg").read_bytes() == (d / "images" / "small.jpg").read_bytes()  # 40x30: as is
    assert data.count_frames(o / "frames" / "f") == 5
    assert Image.open(o / "frames" / "f" / "img_00001.jpg").size == (38, 32)
    assert data.count_frames(o / "raw" / "r" / "part_1.mp4") == 16
    assert data.count_frames(o / "untrimmed" / "u.mp4") == 40 and data.video_fps(o / "untrimmed" / "u.mp4") == 8
    samples = webscale.read_list(o / "train.txt", o, 2)
    assert [s.kind for s in samples] == ["image", "image", "frames", "raw", "windows", "untrimmed"]


def cli_error(argv: list, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        cli([*argv])
    msg = str(exc.value.code)
    assert msg.startswith("error: ") and "\n" not in msg, msg
    return msg


def test_prepare_bad_flags_and_other_settings_into_the_same_out_are_one_line_errors(small_data, tmp_path, capsys):
    common = ["--data-root", str(small_data), "--dataset", "synth"]
    assert "never changes the source" in cli_error([*common, "--out", str(small_data)], capsys)
    assert cli_error([*common, "--out", str(tmp_path), "--gop", "-1"], capsys) == \
        "error: --gop must be an integer >= 0, got -1"
    assert "--quality must be" in cli_error([*common, "--out", str(tmp_path), "--quality", "0"], capsys)
    (tmp_path / "synth").mkdir()
    (tmp_path / "synth" / prepare.PREPARE_REPORT).write_text(json.dumps({"settings": {"format": "video"}}))
    assert "prepared with other settings" in cli_error([*common, "--out", str(tmp_path)], capsys)
    assert not (tmp_path / "synth" / "videos").exists()
