"""omnisource.py on real data gets the paper's procedure, the demo target the demo's settings; --dry-run; Eq. 2's
camera motion fitted at the stride the student samples frames, and refused by train.py at another stride.

Through the command line as a user types it, on generated layouts (a Kinetics-400 folder and the released web
sources' annotation lists) and on generated videos that pan a known number of pixels per frame.
"""
import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

import models
import omnisource
import synthetic

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1")
PAN = 1            # pixels the generated camera moves right per native frame
W, H, FRAMES = 96, 72, 41


def run(script, argv):
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, argv)], capture_output=True, text=True,
                          timeout=600, env=ENV, cwd=ROOT)


def put(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """Annotation lists only (a dry run reads lists, no media): K400 as the target, GG-k400 web images and
    K400-untr untrimmed videos as the released layouts name them."""
    root = tmp_path_factory.mktemp("layout")
    classes = ["abseiling", "air drumming", "archery"]
    put(root / "kinetics400" / "classes.txt", "\n".join(classes) + "\n")
    for split in ("train", "val"):
        put(root / "kinetics400" / f"kinetics400_{split}_list_videos.txt",
            "".join(f"{split}_{c}_{i}.mp4 {c}\n" for c in range(3) for i in range(2)))
    ann = root / "OmniSource" / "annotations"
    put(ann / "k200_actions.txt", "\n".join(classes) + "\n")
    put(ann / "googleimage_200" / "googleimage_200.txt",
        "".join(f"googleimage_200/{c}/{i}.jpg {c}\n" for c in range(3) for i in range(4)))
    put(ann / "kinetics_raw_400" / "kinetics_raw_400.txt", "".join(f"untrimmed/u{c}.mp4 {c}\n" for c in range(3)))
    return root


def dry_run(layout, tmp_path, *argv):
    out = run("omnisource.py", ["--data-root", layout, "--target", "k400", "--sources", "gg,k400-untr", "--dry-run",
                                "--work-dir", tmp_path / "w", *argv])
    assert out.returncode == 0, out.stderr[-2000:]
    assert not (tmp_path / "w").exists()                 # nothing ran, nothing was written
    return [line[2:] for line in out.stdout.splitlines() if line.startswith("$ ")], out.stdout


def flag(command, name):
    words = command.split()
    return words[words.index(name) + 1]


def test_dry_run_of_a_3d_student_on_real_data_is_the_papers_procedure(layout, tmp_path):
    commands, stdout = dry_run(layout, tmp_path, "--arch", "slowonly_r50_4x16", "--dedup-checkpoint", "r50.pth")
    assert "tiny" not in stdout and "demo settings" not in stdout
    train = [c for c in commands if " train.py " in c]
    filters = [c for c in commands if " filter.py " in c]
    # step 1: the baseline / video teacher (3D) and the 2D image teacher of the same backbone (Sec. 3.4)
    assert [flag(c, "--arch") for c in train] == ["slowonly_r50_4x16", "tsn_r50", "slowonly_r50_4x16"]
    assert flag(train[0], "--work-dir").endswith("/w/baseline") and flag(train[1], "--work-dir").endswith(
        "/w/image_teacher")
    # step 2: images by the 2D teacher, untrimmed videos as 10-s windows by the 3D teacher, both de-duplicated
    assert flag(filters[0], "--teacher").endswith("image_teacher/final.pth") and flag(filters[0], "--student") == "3d"
    assert flag(filters[1], "--teacher").endswith("baseline/final.pth")
    assert all(flag(c, "--dedup-against") == "k400" and flag(c, "--dedup-checkpoint") == "r50.pth" for c in filters)
    # step 3 at the student's stride; step 4 with the paper's transforms
    motion = next(c for c in commands if "--estimate-motion" in c)
    assert flag(motion, "--arch") == "slowonly_r50_4x16"
    assert flag(train[2], "--aux") == "gg-filtered,k400-untr-filtered"
    assert flag(train[2], "--image-to-clip") == "warp-agno" and flag(train[2], "--snippet") == "1p2n"
    assert flag(train[2], "--motion") == flag(motion, "--motion")


def test_dry_run_of_a_2d_student_on_real_data_uses_1p2n_snippets(layout, tmp_path):
    commands, stdout = dry_run(layout, tmp_path, "--arch", "tsn_r50", "--no-dedup")
    assert "tiny" not in stdout and "--dedup" not in stdout
    train = [c for c in commands if " train.py " in c]
    assert [flag(c, "--arch") for c in train] == ["tsn_r50", "tsn_r50"]        # the TSN teaches its images itself
    assert flag(train[1], "--snippet") == "1p2n"
    assert all(flag(c, "--student") == "2d" for c in commands if " filter.py " in c)


def test_dry_run_with_resume_shows_what_would_be_skipped(layout, tmp_path):
    commands, _ = dry_run(layout, tmp_path, "--arch", "tsn_r50")
    work = tmp_path / "w"
    work.mkdir()
    record = {"procedure": {}, "finished": [commands[0]]}        # step 1 recorded as finished
    (work / "steps.json").write_text(json.dumps(record))
    out = run("omnisource.py", ["--data-root", layout, "--target", "k400", "--sources", "gg,k400-untr", "--dry-run",
                                "--work-dir", work, "--arch", "tsn_r50", "--resume"])
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"$ {commands[0]}\n  (finished earlier, skipped: --resume)" in out.stdout
    assert "--resume --work-dir" not in out.stdout and out.stdout.count(" --resume") >= 1
    assert json.loads((work / "steps.json").read_text()) == record                  # a dry run writes nothing


def test_demo_target_says_which_demo_settings_are_in_force_and_real_targets_need_sources(layout, tmp_path):
    out = run("omnisource.py", ["--data-root", tmp_path / "data", "--dry-run", "--work-dir", tmp_path / "w"])
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("demo settings"))
    for key, value in synthetic.DEMO_SETTINGS.items():
        paper = omnisource._flag_value(omnisource.PAPER_SETTINGS[key])
        assert f"--{key} {omnisource._flag_value(value)} (paper: {paper})" in line
    assert "--arch tsn_tiny" in out.stdout and "--snippet 3pos" in out.stdout
    given = run("omnisource.py", ["--data-root", tmp_path / "data", "--dry-run", "--work-dir", tmp_path / "w",
                                  "--arch", "tsn_tiny", "--snippet", "1p2n"])
    assert "--arch tsn_tiny (paper" not in given.stdout and "--snippet 1p2n" in given.stdout
    refused = run("omnisource.py", ["--data-root", layout, "--target", "k400", "--dry-run"])
    assert refused.returncode != 0 and refused.stderr.strip().splitlines()[-1].startswith("error: --sources:")


def test_every_3d_architecture_has_a_2d_image_teacher():
    for name, (_, spec) in models.ARCHS.items():
        if spec.family == "3d":
            assert models.ARCHS[omnisource.IMAGE_TEACHERS[name]][1].family == "tsn", name


# ----------------------------------------------------------------------------------------------------------------------
# Eq. 2's camera motion at the stride the student samples
# ----------------------------------------------------------------------------------------------------------------------

def write_pan(path, seed):
    """FRAMES frames of a smooth texture seen by a camera moving PAN pixels right per frame (content moves left)."""
    rng = np.random.default_rng(seed)
    big = rng.uniform(0, 255, (H // 8 + 2, (W + PAN * FRAMES) // 8 + 2, 3))
    big = np.kron(big, np.ones((8, 8, 1)))                        # blocks, then blurred: texture at every scale
    for axis in (0, 1):
        big = sum(np.roll(big, k, axis=axis) for k in range(-4, 5)) / 9
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.options = {"crf": "8"}
        for t in range(FRAMES):
            frame = big[4:4 + H, 4 + PAN * t:4 + PAN * t + W].round().clip(0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.fixture(scope="module")
def pan_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pan")
    put(root / "pan" / "classes.txt", "left\nright\n")
    lines = []
    for c in range(2):
        for i in range(2):
            write_pan(root / "pan" / "videos" / f"{c}_{i}.mp4", seed=10 * c + i)
            lines.append(f"videos/{c}_{i}.mp4 {c}\n")
    put(root / "pan" / "train.txt", "".join(lines))
    put(root / "pan" / "val.txt", lines[0])
    return root


@pytest.mark.parametrize("arch,stride", [("slowonly_tiny", 4), ("slowonly_r50_8x8", 8), ("tsn_tiny", FRAMES // 3)])
def test_estimate_motion_fits_one_step_per_sampled_frame_distance(pan_root, tmp_path, arch, stride):
    """Known answer: a camera panning PAN px per native frame moves the image PAN * stride px per pseudo-clip step
    (normalised: divided by half the long side), the stride being the frames the architecture samples apart."""
    motion = tmp_path / "motion.json"
    out = run("omnisource.py", ["--estimate-motion", "--data-root", pan_root, "--target", "pan", "--arch", arch,
                                "--motion", motion, "--workers", "0"])
    assert out.returncode == 0, out.stderr[-2000:]
    fit = json.loads(motion.read_text())
    assert fit["stride"] == omnisource.motion_stride(models.ARCHS[arch][1])
    assert abs(fit["mu"][2] * (W / 2) - (-PAN * stride)) < 0.1                          # x translation, px
    assert abs(fit["mu"][5]) < 0.01 and abs(fit["mu"][0]) < 0.005                         # no y motion, no zoom
    # 2 videos per class give (FRAMES - 1) // stride or 2..MOTION_STEPS // stride windows each: below MIN_CLASS_FIT
    # for the longer strides, where warp-spec falls back to the class-agnostic fit, as the line says
    windows = min(max(2, omnisource.MOTION_STEPS // stride), (FRAMES - 1) // stride)
    own = 2 if 2 * windows >= omnisource.MIN_CLASS_FIT else 0
    assert len(fit["per_class"]) == own
    assert f"warp-spec: {own} of 2 classes have their own fit" in out.stdout


def test_train_refuses_a_motion_file_of_another_stride(pan_root, small_data, tmp_path):
    motion = tmp_path / "motion.json"
    assert run("omnisource.py", ["--estimate-motion", "--data-root", pan_root, "--target", "pan", "--arch",
                                 "slowonly_tiny", "--motion", motion, "--workers", "0"]).returncode == 0
    out = run("train.py", ["--data-root", small_data, "--target", "synth", "--arch", "tsn_tiny", "--aux",
                           "synth-web-img", "--image-to-clip", "warp-agno", "--motion", motion, "--epochs", "1",
                           "--workers", "0", "--work-dir", tmp_path / "w"])
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --motion {motion} was fitted at a stride of 4 frames, but the frames --arch "
                           f"tsn_tiny samples lie 1/3 video apart")
    assert "--estimate-motion" in last and "--arch tsn_tiny" in last


def test_the_renamed_inflate_flag_is_refused_with_a_pointer(tmp_path):
    for script in ("train.py", "omnisource.py"):
        out = run(script, ["--data-root", tmp_path / "d", "--inflate", "still"])
        assert out.returncode == 2 and "--inflate is now --image-to-clip" in out.stderr.splitlines()[-1], script
        assert not (tmp_path / "d").exists()
