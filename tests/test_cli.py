"""The entry points as a user types them: every flag of train.py and omnisource.py on a
command line run in a subprocess at least once, with answers known from the flags (summary line, learning
rates, checkpoint contents, test protocol); omnisource.py prints and runs its steps as commands (under torchrun
with --nproc), stops at a failing one with one line naming it, and refuses torchrun itself; and no module
defines anything below its `if __name__ == "__main__":` block (a function there does not exist when the
module is imported, only when it is run: filter.py's `_foreign_teacher` was such a case).
"""
import argparse
import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import models
import omnisource
import train

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1")
# every flag on some command line below; the exceptions and where they run
NOT_RUN = {"--compile": "torch.compile takes minutes on a CPU; tests/test_speed.py covers the flag",
           "--help": "argparse's own",
           "--resume": "tests/test_resume.py: killed runs resumed, through subprocesses",
           "--finetune": "test_omnisource_procedure_as_typed below passes it to every train.py run (subprocess)",
           "--write-queries": "tests/test_queries.py runs it as a user types it (Sec. 3.3)",
           "--query-years": "tests/test_queries.py runs it as a user types it (Sec. 3.3)",
           "--query-sources": "Sec. 3.3; tests/test_queries.py calls task_queries with its sources in-process",
           "--predict": "tests/test_trust.py runs it as a user types it, on a train.py and an MMAction2 checkpoint",
           "--classes": "tests/test_trust.py: --predict with an MMAction2 checkpoint and --classes FILE",
           "--dry-run": "tests/test_procedure_settings.py: the printed procedure on real layouts, as typed",
           "--dedup": "tests/test_procedure_settings.py: --no-dedup and the default in dry runs, as typed",
           "--dedup-checkpoint": "tests/test_procedure_settings.py: passed to every filter.py step (dry run)"}
USED = {"train": set(), "omnisource": set()}


def run(script, argv, ok=True):
    USED[script].update(str(a) for a in argv if str(a).startswith("--"))
    out = subprocess.run([sys.executable, str(ROOT / f"{script}.py"), *map(str, argv)], capture_output=True,
                         text=True, timeout=600, env=ENV, cwd=ROOT)
    if ok:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def data_root(small_data, tmp_path_factory):
    """A copy of the demo data: --estimate-motion and filtering write under DATA_ROOT."""
    root = tmp_path_factory.mktemp("cli") / "data"
    shutil.copytree(small_data, root)
    return root


def test_nothing_is_defined_below_a_main_block():
    for path in sorted(ROOT.glob("*.py")):
        body = ast.parse(path.read_text(), filename=str(path)).body
        mains = [i for i, node in enumerate(body) if isinstance(node, ast.If) and _is_main_test(node.test)]
        assert len(mains) <= 1, path.name
        if mains:
            below = [type(node).__name__ + f" at line {node.lineno}" for node in body[mains[0] + 1:]]
            assert not below, f"{path.name}: {below} below the __main__ block"


def test_train_every_flag_family(data_root, tmp_path):
    # 1. training: data, model, optimisation, OmniSource, run and speed flags in one short run
    work = tmp_path / "a"
    argv = ["--data-root", data_root, "--target", "synth", "--label-fraction", "0.5", "--workers", "0",
            "--arch", "tsn_tiny", "--num-segments", "3", "--crop-size", "32",
            "--epochs", "2", "--batch-size", "4", "--lr-per-sample", "1e-3", "--lr-steps", "1", "--schedule", "step",
            "--warmup-epochs", "0.5", "--optimizer", "sgd", "--weight-decay", "5e-5", "--momentum", "0.8",
            "--freeze-bn",
            "--clip-grad", "20", "--seed", "3",
            "--aux", "synth-web-img,synth-web-untrimmed", "--ratio", "2:1:1", "--resample", "power:0.5,clip:3",
            "--mixup", "0.2", "--image-to-clip", "translate-random", "--snippet", "3pos",
            "--work-dir", work, "--save-every", "2", "--val-every", "1", "--select", "val", "--log-interval", "1",
            "--device", "cpu",
            "--test-clips", "2", "--test-crops", "3",
            "--amp", "none", "--no-channels-last", "--eval-batch-size", "4"]
    out = run("train", argv)
    # 16 of the 32 videos (half of each class), batches 4 + 2 + 2 (2:1:1), base LR 1e-3 x 8 samples
    assert "tsn_tiny on synth (4 classes, 16 training videos" in out.stdout
    assert "batch 4+2+2 x 1 rank(s), 2 epochs x 4 steps, lr 0.008 step x0.1 at [1], 0.5 warm-up epochs" in out.stdout
    lrs = [r["lr"] for r in map(json.loads, (work / "log.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    assert lrs == pytest.approx([0.0, 0.004, 0.008, 0.008, 0.0008, 0.0008, 0.0008, 0.0008])   # warm-up, x0.1
    ckpt = torch.load(work / "latest.pth", weights_only=True)
    assert ckpt["model_args"] == {"num_segments": 3, "crop_size": 32}
    group = ckpt["optimizer"]["param_groups"][0]
    assert (group["momentum"], group["weight_decay"]) == (0.8, 5e-5)
    assert torch.equal(ckpt["model"]["backbone.bn1.running_mean"], torch.zeros_like(
        ckpt["model"]["backbone.bn1.running_mean"]))                                 # --freeze-bn: never updated
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["protocol"] == "2 segments x 3 crops" and metrics["aux"] == ["synth-web-img", "synth-web-untrimmed"]
    # 2. --test of the best checkpoint with another protocol, full probabilities dumped
    run("train", ["--data-root", data_root, "--target", "synth", "--crop-size", "32", "--work-dir", tmp_path / "t",
                  "--test", "--checkpoint", work / "best.pth", "--test-clips", "1", "--test-crops", "10",
                  "--dump-probs"])
    assert json.loads((tmp_path / "t" / "metrics.json").read_text())["protocol"] == "1 segments x 10 crops"
    assert len((tmp_path / "t" / "predictions.jsonl").read_text().splitlines()) == 24
    # 3. a 3D net from the 2D weights (--pretrained, inflated; LR 0 keeps them), warped web images with the
    #    camera motion omnisource.py --estimate-motion fitted; the tiny nets' demo recipe, 1e-3 x (4 + 2) samples
    run("omnisource", ["--data-root", data_root, "--target", "synth", "--estimate-motion", "--arch", "slowonly_tiny"])
    motion = data_root / "synth" / "motion.json"
    assert motion.exists()
    out = run("train", ["--data-root", data_root, "--target", "synth", "--arch", "slowonly_tiny", "--clip-len", "4",
                        "--frame-interval", "4", "--crop-size", "32", "--pretrained", work / "latest.pth",
                        "--epochs", "1", "--batch-size", "4", "--aux", "synth-web-img", "--image-to-clip", "warp-spec",
                        "--lr-per-sample", "0",
                        "--motion", motion, "--workers", "0", "--test-clips", "1", "--test-crops", "1",
                        "--work-dir", tmp_path / "c"])
    assert "slowonly_tiny on synth" in out.stdout and "batch 4+2 x 1 rank(s), 1 epochs x 8 steps" in out.stdout
    c = torch.load(tmp_path / "c" / "latest.pth", weights_only=True)
    assert c["model_args"] == {"clip_len": 4, "frame_interval": 4, "crop_size": 32}
    # inflation spreads each 2D kernel over the temporal kernel: summed over time it is the 2D kernel again
    assert torch.allclose(c["model"]["conv1.weight"].sum(2), ckpt["model"]["backbone.conv1.weight"],
                          atol=1e-6)
    # 4. --export-mmaction of the 3D run's final.pth (the default of --checkpoint)
    out = run("train", ["--data-root", data_root, "--target", "synth", "--arch", "slowonly_tiny", "--clip-len", "4",
                        "--frame-interval", "4", "--crop-size", "32", "--work-dir", tmp_path / "c",
                        "--export-mmaction", tmp_path / "mm.pth"])
    assert out.stdout.startswith(f"exporting {tmp_path / 'c' / 'final.pth'}")
    assert "cls_head.fc_cls.weight" in torch.load(tmp_path / "mm.pth", weights_only=True)["state_dict"]
    assert not missing_flags(train.get_args_parser(), USED["train"])


def test_omnisource_steps_run_under_torchrun_with_nproc(data_root, tmp_path):
    """--nproc 2: every train.py / filter.py step is printed and run as a torchrun command (gloo on the CPU)."""
    work, motion = tmp_path / "work", tmp_path / "motion.json"
    out = run("omnisource", ["--data-root", data_root, "--sources", "synth-web-img", "--threshold", "0.0",
                             "--epochs", "1", "--batch-size", "4", "--motion-videos", "2", "--workers", "0",
                             "--nproc", "2", "--select", "val", "--motion", motion, "--work-dir", work])
    steps = [ln for ln in out.stdout.splitlines() if ln.startswith("$ ")]
    assert [ln.split()[1:6] for ln in steps] == [
        ["torchrun", "--standalone", "--nproc-per-node", "2", "train.py"],
        ["torchrun", "--standalone", "--nproc-per-node", "2", "filter.py"],
        ["python", "omnisource.py", "--estimate-motion", "--data-root", str(data_root)],
        ["torchrun", "--standalone", "--nproc-per-node", "2", "train.py"]]
    assert f"--work-dir {work / 'baseline'}" in steps[0] and f"--teacher {work / 'baseline' / 'final.pth'}" in steps[1]
    assert "--select val" in steps[0] and "--select val" in steps[3] and f"--motion {motion}" in steps[3]
    assert json.loads((data_root / "synth-web-img-filtered" / "report.json").read_text())["run"]["ranks"] == 2
    assert "x 2 rank(s)" in out.stdout and motion.exists()
    # the results say which weights were tested
    assert (work / "results.md").read_text().splitlines()[0].endswith("(--select val).")
    assert json.loads((work / "results.json").read_text())["select"] == "val"


def test_omnisource_stops_at_a_failing_step_with_one_line_naming_it(tmp_path):
    out = run("omnisource", ["--data-root", tmp_path / "d", "--target", "nope", "--sources", "web", "--epochs", "1",
                             "--work-dir", tmp_path / "w"], ok=False)
    assert out.returncode != 0 and "== step 2" not in out.stdout
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: this step failed (exit status ") and "train.py --data-root" in last
    assert "--target nope" in last and f"--work-dir {tmp_path / 'w' / 'baseline'}" in last


def test_omnisource_two_rounds_and_a_source_that_keeps_nothing(small_data, tmp_path):
    """--rounds 2 (Noisy Student): the round-1 student filters the web data again and teaches the round-2 student;
    a source of only unreadable files keeps nothing and leaves step 4 with its --ratio number and --resample rule
    (it used to fail in step 4, after the teacher and the filtering); --resume covers both rounds."""
    root, work = tmp_path / "data", tmp_path / "work"
    shutil.copytree(small_data, root, ignore=shutil.ignore_patterns("synth-web-vid", "synth-web-untrimmed"))
    for split in ("train", "val"):            # a third of the target: four training runs of one epoch
        lines = (root / "synth" / f"{split}.txt").read_text().splitlines()
        (root / "synth" / f"{split}.txt").write_text("\n".join(lines[::3]) + "\n")
    (root / "junk" / "images").mkdir(parents=True)
    shutil.copy(root / "synth" / "classes.txt", root / "junk" / "classes.txt")
    for i in range(2):
        (root / "junk" / "images" / f"{i}.jpg").write_bytes(b"not a jpeg")
    (root / "junk" / "train.txt").write_text("images/0.jpg 0\nimages/1.jpg 1\n")
    argv = ["--data-root", root, "--sources", "synth-web-img,junk", "--ratio", "2:1:1", "--resample",
            "none,power:0.5", "--rounds", "2", "--threshold", "0.0", "--epochs", "1", "--motion-videos", "2",
            "--workers", "0", "--work-dir", work]
    out = run("omnisource", argv)
    steps = [ln for ln in out.stdout.splitlines() if ln.startswith("$ ")]
    assert [ln.split()[2] for ln in steps] == ["train.py", "filter.py", "filter.py", "omnisource.py", "train.py",
                                               "filter.py", "filter.py", "train.py"]
    assert f"--teacher {work / 'baseline' / 'final.pth'} --out synth-web-img-filtered " in steps[1]
    assert f"--teacher {work / 'student' / 'final.pth'} --out synth-web-img-filtered-r2 " in steps[5]
    assert "--aux synth-web-img-filtered --ratio 2:1 --resample none " in steps[4]
    assert "--aux synth-web-img-filtered-r2 --ratio 2:1 --resample none " in steps[7]
    assert f"--work-dir {work / 'student_r2'}" in steps[7]
    assert out.stdout.count("junk: the teacher kept nothing") == 2
    rounds = json.loads((work / "results.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    for r, name in zip(rounds, ("student", "student_r2")):
        assert r["top1"] == json.loads((work / name / "metrics.json").read_text())["top1"]
    assert rounds[1]["teachers"]["image"] == str(work / "student" / "final.pth")
    report = json.loads((root / "synth-web-img-filtered-r2" / "report.json").read_text())["counts"]
    assert rounds[1]["kept"] == {"synth-web-img-filtered-r2": {"kept": report["kept"], "total": report["total"]}}
    rows = (work / "results.md").read_text().splitlines()
    assert rows[6].startswith("| OmniSource round 2 (teacher: the round-1 student) |")
    figures = json.loads((work / "results.json").read_text())["figures"]       # both rounds' filtering is shown
    assert {f"figures/synth-web-img-filtered{tag}_contact_sheet.png" for tag in ("", "-r2")} <= set(figures)
    again = run("omnisource", argv + ["--resume"])
    assert again.stdout.count("(finished earlier, skipped: --resume)") == 8


def test_omnisource_procedure_as_typed(data_root, tmp_path):
    """Table 1 in one command (every flag of omnisource.py): teacher, filtering, motion, student, comparisons. The
    teachers are separate runs: a 3D video teacher (--teacher-arch) for the web videos and the 2D image teacher it
    needs (--image-teacher-arch) for the images and the untrimmed videos' 1-FPS frames of the 2D student."""
    work = tmp_path / "work"
    sources = "synth-web-img,synth-web-vid,synth-web-untrimmed"
    other = models.build_model("tsn_tiny", 4)
    torch.save({"model": other.state_dict(), "arch": "tsn_tiny", "classes": list("abcd")}, tmp_path / "init.pth")
    argv = ["--data-root", data_root, "--target", "synth", "--sources", sources, "--arch", "tsn_tiny",
            "--teacher-arch", "slowonly_tiny", "--image-teacher-arch", "tsn_tiny",
            "--checkpoint", tmp_path / "init.pth",
            "--finetune", "--threshold", "0.0", "--mode", "query", "--rule", "class-adaptive", "--select", "last",
            "--epochs", "1", "--batch-size", "8", "--ratio", "2:1:1:1", "--resample", "none", "--mixup", "0.1",
            "--image-to-clip", "warp-agno", "--snippet", "3pos", "--also-unfiltered", "--also-still",
            "--motion-videos", "4",
            "--seed", "0", "--workers", "0", "--work-dir", work]
    out = run("omnisource", argv)
    rows = (work / "results.md").read_text().splitlines()
    assert rows[0] == "Accuracy on the val split of synth, of the final weights of each run (--select last)."
    assert rows[4].startswith("| baseline (target only) |") and rows[5].startswith("| OmniSource (filtered")
    assert rows[6].startswith("| unfiltered web data |") and rows[7].startswith("| filtered, still images")
    runs = {name: torch.load(work / name / "latest.pth", weights_only=False)["args"]
            for name in ("baseline", "teacher", "image_teacher", "student", "unfiltered", "still")}
    assert runs["baseline"]["checkpoint"] == str(tmp_path / "init.pth") and runs["baseline"]["finetune"]
    assert (runs["teacher"]["arch"], runs["image_teacher"]["arch"]) == ("slowonly_tiny", "tsn_tiny")
    assert runs["teacher"]["checkpoint"] is None                 # --checkpoint initialises runs of --arch only
    teacher_of = {ln.split(" --source ")[1].split()[0]: ln.split(" --teacher ")[1].split()[0]
                  for ln in out.stdout.splitlines() if ln.startswith("$ python filter.py")}
    assert teacher_of == {"synth-web-img": str(work / "image_teacher" / "final.pth"),
                          "synth-web-vid": str(work / "teacher" / "final.pth"),
                          "synth-web-untrimmed": str(work / "image_teacher" / "final.pth")}
    for source, teacher in teacher_of.items():   # filter.py ran the teacher it was given
        report = json.loads((data_root / f"{source}-filtered" / "report.json").read_text())
        assert [t["arch"] for t in report["teachers"]] == [torch.load(teacher, weights_only=False)["arch"]]
        assert report["rule"] == "class-adaptive"                  # --rule reached filter.py
    assert runs["student"]["image_to_clip"] == runs["unfiltered"]["image_to_clip"] == "warp-agno"
    assert (runs["student"]["ratio"], runs["student"]["resample"], runs["student"]["mixup"]) == ("2:1:1:1", "none", 0.1)
    assert runs["still"]["image_to_clip"] == "still" and runs["still"]["aux"] == runs["student"]["aux"]
    assert runs["unfiltered"]["aux"] == sources
    # threshold 0 keeps every readable sample with its query label: precision = the crawl's relevant rate, recall 1
    quality = json.loads((work / "results.json").read_text())["filtering"]
    truth = json.loads((data_root / "truth.json").read_text())["synth-web-img"]
    readable = [t for t in truth.values() if t["kind"] != "broken"]
    img = next(q for q in quality if q["source"] == "synth-web-img")
    assert img["kept"] == len(readable) and img["recall"] == 1.0
    assert img["precision"] == img["base_rate"] == sum(t["relevant"] for t in readable) / len(readable)
    assert (work / "motion.json").exists()
    figures = json.loads((work / "results.json").read_text())["figures"]     # each embedded and on disk
    assert figures and all((work / f).is_file() and f"]({f})" in (work / "results.md").read_text() for f in figures)
    assert (work / "baseline" / "curves.png").is_file() and (work / "student" / "confusion.png").is_file()
    assert (data_root / "synth-web-img-filtered" / "class_histogram.png").is_file()
    log = (work / "student" / "log.jsonl").read_text()
    assert all(f"loss_{s}-filtered" in log for s in sources.split(","))
    # the same command again with --resume: every step finished, so every step is skipped and nothing changes
    before = {f: (work / f).read_bytes() for f in ("results.json", "baseline/final.pth", "student/log.jsonl")}
    again = run("omnisource", argv + ["--resume"])
    # baseline, 2 teachers, 3 filters, motion, 3 students
    assert again.stdout.count("(finished earlier, skipped: --resume)") == 1 + 2 + 3 + 1 + 3
    assert {f: (work / f).read_bytes() for f in before} == before
    above = {"--estimate-motion", "--nproc", "--motion"}          # on the command lines of the tests above
    assert not missing_flags(omnisource.get_args_parser(), USED["omnisource"] | above)


def test_omnisource_killed_in_the_student_step_resumes_without_retraining(data_root, tmp_path):
    """SIGKILL the whole procedure once the student has written its first latest.pth, then the same command plus
    --resume: steps 1-3 are skipped (their outputs untouched), the student continues from its latest.pth."""
    work = tmp_path / "work"
    argv = [sys.executable, str(ROOT / "omnisource.py"), "--data-root", str(data_root), "--target", "synth",
            "--sources", "synth-web-img", "--epochs", "3", "--threshold", "0.0", "--motion-videos", "4",
            "--workers", "0", "--work-dir", str(work)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=ROOT,
                            start_new_session=True)
    latest = work / "student" / "latest.pth"
    try:
        deadline = time.time() + 600
        while not latest.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert latest.exists(), "the student never wrote latest.pth"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)        # the procedure and the train.py it launched
        proc.wait()
    assert not (work / "results.json").exists()
    baseline = (work / "baseline" / "final.pth").read_bytes()
    out = subprocess.run(argv + ["--resume"], capture_output=True, text=True, timeout=600, env=ENV, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("(finished earlier, skipped: --resume)") == 3           # baseline, filter, motion
    assert "resumed from" in out.stdout and (work / "baseline" / "final.pth").read_bytes() == baseline
    log = [json.loads(line) for line in (work / "student" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if r["kind"] == "epoch"] == [1, 2, 3]          # no epoch lost or logged twice
    rows = json.loads((work / "results.json").read_text())["rows"]
    assert rows[0]["top1"] == json.loads((work / "baseline" / "metrics.json").read_text())["top1"]


def test_omnisource_under_torchrun_refuses_at_once_naming_the_per_step_commands(tmp_path):
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          "29533", str(ROOT / "omnisource.py"), "--data-root", str(tmp_path / "d"), "--work-dir",
                          str(tmp_path / "w")], capture_output=True, text=True, timeout=300, env=ENV, cwd=ROOT)
    assert out.returncode != 0
    lines = [ln for ln in out.stderr.splitlines() if "omnisource.py does not run under torchrun" in ln]
    # one line from each rank that gets that far: torchrun stops the other rank when the first one exits
    assert 1 <= len(lines) <= 2 and all(ln.startswith("error: ") for ln in lines)
    assert "train.py" in lines[0] and "filter.py" in lines[0] and "python omnisource.py --nproc N" in lines[0]
    assert not (tmp_path / "d").exists() and not (tmp_path / "w").exists()       # nothing generated or trained


def missing_flags(parser, used):
    """The parser's --flags on no command line of this file (--no-X counts for --X) and not in NOT_RUN."""
    used = set(used) | {"--" + f[5:] for f in used if f.startswith("--no-")}
    flags = {o for a in parser._actions for o in a.option_strings if o.startswith("--") and not o.startswith("--no-")
             and a.help != argparse.SUPPRESS}                      # a renamed flag's refusal is not a feature
    return sorted(flags - used - set(NOT_RUN))


def _is_main_test(test):
    """`__name__ == "__main__"` in either order."""
    return (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)
            and {_name(test.left), _name(test.comparators[0])} == {"__name__", "'__main__'"})


def _name(node):
    if isinstance(node, ast.Name):
        return node.id
    return repr(node.value) if isinstance(node, ast.Constant) else None
