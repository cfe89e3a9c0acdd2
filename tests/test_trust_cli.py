"""Each silent wrong result of the list / layout / procedure code, reproduced as a user types the
command (a subprocess on tiny generated data), now a correct result or a one-line refusal; with in-process known
answers beside them."""
import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import data
import models
import omnisource
import train
import transforms
import webscale

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def run(script, argv):
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, argv)], capture_output=True, text=True,
                          timeout=600, env=ENV, cwd=ROOT)


def put(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture(scope="module")
def k400_root(small_data, tmp_path_factory):
    """The demo's target as a tiny Kinetics-400 layout (DATA_ROOT/kinetics400/...), its class names written
    without separators ('soliddisc' for the web sources' 'solid_disc'), beside a copy of the demo's image source."""
    root = tmp_path_factory.mktemp("k400") / "data"
    shutil.copytree(small_data / "synth-web-img", root / "synth-web-img")
    k = root / "kinetics400"
    names = data.read_classes(small_data / "synth" / "classes.txt")
    put(k / "classes.txt", "\n".join(n.replace("_", "") for n in names) + "\n")
    for split, n in (("train", 2), ("val", 1)):
        lines = [ln for ln in (small_data / "synth" / f"{split}.txt").read_text().splitlines() if ln.strip()]
        picked = [ln for c in range(len(names)) for ln in [x for x in lines if x.endswith(f" {c}")][:n]]
        for ln in picked:
            src = small_data / "synth" / ln.split()[0]
            (k / f"videos_{split}" / ln.split()[0]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, k / f"videos_{split}" / ln.split()[0])
        put(k / f"kinetics400_{split}_list_videos.txt", "\n".join(picked) + "\n")
    return root


# ----------------------------------------------------------------------------------------------------------------------
# a. the motion file of a layout name; j. class names matched without case, '_' and spaces; l. batch sizes
# ----------------------------------------------------------------------------------------------------------------------

def test_motion_written_by_estimate_motion_is_the_one_train_reads_on_a_layout_name(k400_root, tmp_path):
    out = run("omnisource.py", ["--data-root", k400_root, "--target", "k400", "--estimate-motion",
                                "--motion-videos", "2"])
    assert out.returncode == 0, out.stderr[-2000:]
    assert (k400_root / "kinetics400" / "motion.json").is_file()
    # the README's step 4 without --motion; the web images' 'solid_disc' is the target's 'soliddisc' (j);
    # --batch-size 5 --ratio 2:1: 5 * 1 / 2 = 2.5 rounds half up to 3 (l)
    out = run("train.py", ["--data-root", k400_root, "--target", "k400", "--arch", "tsn_tiny", "--aux",
                           "synth-web-img", "--image-to-clip", "warp-agno", "--batch-size", "5", "--ratio", "2:1",
                           "--epochs", "1", "--workers", "0", "--test-clips", "1", "--test-crops", "1",
                           "--work-dir", tmp_path / "w"])
    assert out.returncode == 0, out.stderr[-2000:]
    assert "batch 5+3 x 1 rank(s)" in out.stdout


def test_motion_path_is_the_layout_root_for_every_layout(tmp_path):
    put(tmp_path / "toy" / "classes.txt", "a\n")
    put(tmp_path / "toy" / "train.txt", "x.mp4 0\n")
    assert data.motion_path(data.resolve_dataset(tmp_path, "toy")) == tmp_path / "toy" / "motion.json"
    for name, layout in data.LAYOUTS.items():
        root = tmp_path / name
        if "classes_from" in layout:          # ucf101, hmdb51: the class folders
            (root / layout["classes_from"] / "a").mkdir(parents=True)
        else:
            put(root / layout["classes"][0], "\n".join(f"c{i}" for i in range(400)) + "\n")
        spec = data.resolve_dataset(root, name)
        assert spec.layout == name and data.motion_path(spec) == root / layout["root"] / "motion.json", name


@pytest.mark.parametrize("target, ratio, expected", [(5, [2, 1], [5, 3]), (7, [2, 1], [7, 4]), (9, [2, 1], [9, 5]),
                                                     (6, [2, 1, 1], [6, 3, 3]), (1, [4, 1], [1, 1]),
                                                     (10, [4, 1], [10, 3]), (10, [8, 1], [10, 1])])
def test_batch_sizes_round_half_up(target, ratio, expected):
    # by hand: 2.5 -> 3, 3.5 -> 4, 4.5 -> 5, 0.25 -> at least 1, 2.5 -> 3, 1.25 -> 1
    assert omnisource.batch_sizes(target, ratio) == expected


def test_class_names_that_collide_are_refused_naming_the_file_and_both(tmp_path):
    put(tmp_path / "toy" / "classes.txt", "air drumming\nabseiling\nAir_Drumming\n")
    put(tmp_path / "toy" / "train.txt", "x.mp4 0\n")
    out = run("omnisource.py", ["--data-root", tmp_path, "--target", "toy", "--estimate-motion"])
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {tmp_path / 'toy' / 'classes.txt'}: ") and "\n" not in last
    assert "'air drumming' (line 1)" in last and "'Air_Drumming' (line 3)" in last


def test_class_key_ignores_case_underscores_and_spaces():
    target = ["air drumming", "abseiling", "Playing Guitar"]
    for name in ("air drumming", "air_drumming", "airdrumming", "Air Drumming", " AIR  drumming "):
        samples = [webscale.Sample(Path("x.jpg"), 0, "image")]
        mapped, left_out = data.map_labels(samples, [name], target, "--aux web")
        assert (mapped[0].label, left_out) == (0, 0), name
    mapped, left_out = data.map_labels([webscale.Sample(Path("x.jpg"), 0, "image")], ["playingguitar"], target, "x")
    assert mapped[0].label == 2
    with pytest.raises(ValueError, match=r"--aux web: class names 'a b' .* and 'ab' .* are the same class"):
        data.map_labels([], ["a b", "ab"], target, "--aux web")


# ----------------------------------------------------------------------------------------------------------------------
# g. MMAction2's ambiguous 3-field line: a frame folder 'DIR NUM_FRAMES LABEL' or raw pieces 'DIR LABEL NUM_PARTS'
# ----------------------------------------------------------------------------------------------------------------------

def test_raw_line_without_positive_piece_is_refused_naming_the_line(tmp_path):
    put(tmp_path / "toy" / "classes.txt", "".join(f"c{i}\n" for i in range(20)))
    for i in range(12):
        put(tmp_path / "toy" / "raw" / "x" / f"part_{i}.mp4", "")
    put(tmp_path / "toy" / "train.txt", "raw/x 3 12\n")
    out = run("omnisource.py", ["--data-root", tmp_path, "--target", "toy", "--estimate-motion"])
    assert out.returncode != 0 and not (tmp_path / "toy" / "motion.json").exists()
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {tmp_path / 'toy' / 'train.txt'}:1: ") and "part_*.mp4" in last
    assert "no positive piece" in last


def test_three_field_lines_are_read_from_what_is_on_disk(tmp_path):
    put(tmp_path / "frames" / "y" / "img_00001.jpg", "")
    put(tmp_path / "raw" / "x" / "part_0.mp4", "")
    put(tmp_path / "l.txt", "frames/y 3 12\nnowhere/z 5 2\n")
    for parse in (webscale.read_list, webscale.read_list_samples):
        got = list(parse(tmp_path / "l.txt", tmp_path, 20))
        assert [(s.kind, s.num_frames, s.label) for s in got] == [("frames", 3, 12), ("frames", 5, 2)]
    put(tmp_path / "r.txt", "frames/y 3 12\nraw/x 3 12\n")
    for parse in (webscale.read_list, webscale.read_list_samples):
        with pytest.raises(ValueError, match=r"r.txt:2: 'raw/x 3 12': raw/x holds part_\*.mp4"):
            parse(tmp_path / "r.txt", tmp_path, 20)


# ----------------------------------------------------------------------------------------------------------------------
# i. omnisource.py checks every flag before step 1
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag, value", [("--image-to-clip", "warp-agnostic"), ("--snippet", "4pos")])
def test_procedure_flags_without_a_valid_value_stop_before_step_1(tmp_path, flag, value):
    out = run("omnisource.py", ["--data-root", tmp_path / "d", "--work-dir", tmp_path / "w", flag, value])
    assert out.returncode != 0 and "== step 1" not in out.stdout
    assert f"argument {flag}: invalid choice: '{value}'" in out.stderr
    assert not (tmp_path / "d").exists() and not (tmp_path / "w").exists()


@pytest.mark.parametrize("argv, message", [
    (["--resample", "none,none"], "--resample 'none,none': give one rule or one per source (3)"),
    (["--sources", "a,b", "--resample", "none,power:3"], "--resample 'power:3'"),
    (["--teacher-arch", "slowonly_r5O"], "--teacher-arch slowonly_r5O: expected one of tsn_r18, tsn_r34, tsn_r50"),
    (["--threshold", "50"], "--threshold 50.0: expected a probability in [0, 1]"),
    (["--epochs", "0"], "--epochs 0: expected a number >= 1"), (["--rounds", "0"], "--rounds 0: expected"),
    (["--mixup", "-1"], "--mixup -1.0: expected an alpha >= 0")])
def test_procedure_flags_are_checked_before_step_1(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        webscale.run_command(omnisource.main, omnisource.get_args_parser(),
                             ["--data-root", str(tmp_path / "d"), "--work-dir", str(tmp_path / "w"), *argv])
    assert str(stop.value).startswith(f"error: {message}") and "\n" not in str(stop.value)
    assert capsys.readouterr().out == ""


def test_step_4_flags_keep_the_sources_that_kept_something():
    # three sources, the second kept nothing: its number of --ratio and its rule of --resample leave with it
    assert omnisource.step4_flags("3:1:2:1", "none,clip:5,power:0.5", [0, 2]) == ["--ratio", "3:1:1",
                                                                                  "--resample", "none,power:0.5"]
    assert omnisource.step4_flags("", "power:0.2", [1]) == ["--resample", "power:0.2"]


# ----------------------------------------------------------------------------------------------------------------------
# k. Table 14's snippet rule for N TSN segments
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, n, positives", [("1p2n", 3, 1), ("1p2n", 8, 3), ("1p2n", 5, 2), ("2p1n", 8, 5),
                                                ("2p1n", 3, 2), ("3pos", 8, 8), ("1p2n", 1, 0), ("2p1n", 1, 1)])
def test_snippet_of_n_segments_keeps_the_tables_share_of_positive_frames(mode, n, positives):
    # by hand: round half up of n * p / 3 positive frames (8 * 1/3 = 2.67 -> 3, 5 * 1/3 = 1.67 -> 2,
    # 8 * 2/3 = 5.33 -> 5, 1 * 1/3 -> 0, 1 * 2/3 -> 1), the rest negative; 20 positive and 20 negative frames
    scores = np.array([0.9, 0.1] * 20)
    picked = transforms.select_snippet(scores, 0, mode, np.random.default_rng(0), threshold=0.5, num_frames=n)
    assert picked.shape == (n,) and len(set(picked.tolist())) == n and (np.diff(picked) > 0).all()
    assert int((scores[picked] >= 0.5).sum()) == positives


def test_train_builds_snippets_of_every_segment_count(tmp_path):
    """A TSN student with --num-segments 8 gets 8-frame snippets from the teacher-scored frames (train.make_dataset)."""
    put(tmp_path / "u" / "classes.txt", "a\nb\n")
    put(tmp_path / "u" / "train.txt", "untrimmed/v.mp4 1\n")
    webscale.write_frame_scores(tmp_path / "u" / "train_frame_scores.json",
                            {"untrimmed/v.mp4": webscale.FrameScores(tuple(range(0, 40, 2)), (0.9, 0.1) * 10, 0.5)})
    spec = data.resolve_dataset(tmp_path, "u")
    arch = dataclasses.replace(models.ARCHS["tsn_tiny"][1], num_clips_train=8)      # --num-segments 8
    args = argparse.Namespace(image_to_clip="still", motion=None, data_root=str(tmp_path), target="u", seed=0,
                              snippet="1p2n")
    ds = train.make_dataset(args, spec, "train", arch, test_mode=False)
    assert ds.snippet is not None
    pos = ds.snippet(np.array((0.9, 0.1) * 10), 1, rng=np.random.default_rng(0), threshold=0.5)
    assert len(pos) == 8 and int((np.array((0.9, 0.1) * 10)[pos] >= 0.5).sum()) == 3
