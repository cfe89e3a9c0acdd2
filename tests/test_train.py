"""train.py end to end on small generated datasets, by feature: learning and the run's outputs (DDP included),
OmniSource joint training and the data of every source, the recipes, checkpoints in and out, the command line."""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

import data
import models
import synthetic
import train
import transforms
import webscale

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--arch", "tsn_tiny", "--batch-size", "8", "--workers", "0", "--test-clips", "3", "--test-crops", "1",
        "--log-interval", "2"]


# ----------------------------------------------------------------------------------------------------------------------
# Learning, and the run's outputs
# ----------------------------------------------------------------------------------------------------------------------


def test_learns_the_generated_data_well_above_chance(tmp_path, one_torch_thread):
    """The demo's target data (4 classes, 24 labelled videos each): after 8 epochs the val split, never trained on,
    is recognised well above chance (0.25) by the final test and by the quick validation; the outputs are there.
    Measured: 0.60 and 0.60 (48 val videos; 22 or more right by chance has probability about 1e-3)."""
    synthetic.generate(tmp_path / "data", synthetic.SynthConfig(
        seed=1, num_classes=4, train_per_class=24, val_per_class=12, web_images_per_class=1, web_videos_per_class=1,
        untrimmed_per_class=1, broken_files=False))
    work = tmp_path / "w"
    m = run_train(["--data-root", str(tmp_path / "data"), "--target", "synth", "--epochs", "8", "--work-dir",
                   str(work), *FAST])
    saved = json.loads((work / "metrics.json").read_text())
    assert {"top1", "top5", "mean_class_acc"} <= set(saved) and saved["top1"] == pytest.approx(m["top1"])
    assert saved["num_videos"] == 48 and saved["top5"] >= saved["top1"]
    rows = (work / "confusion_matrix.csv").read_text().splitlines()
    assert len(rows) == 1 + 4
    log = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    step = next(r for r in log if r["kind"] == "train")
    assert {"loss", "lr", "samples_per_s", "eta_s"} <= set(step)
    assert (work / "latest.pth").exists() and (work / "final.pth").exists()
    epochs = [r for r in log if r["kind"] == "epoch"]
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    assert saved["top1"] >= 0.45 and epochs[-1]["val"]["top1"] >= 0.45, (saved, epochs[-1]["val"])


def test_learns_an_easy_generated_set_far_above_chance(tmp_path):
    """A set any working pipeline learns: 4 classes = 4 object colours on noise; chance is 0.25."""
    root = tmp_path / "data" / "colours"
    write_colour_dataset(root, per_class={"train": 8, "val": 4})
    m = run_train(["--data-root", str(tmp_path / "data"), "--target", "colours", "--epochs", "8",
                   "--lr-per-sample", "2.5e-3", "--work-dir", str(tmp_path / "w"), *FAST])
    assert m["top1"] >= 0.75, m


def test_checkpoint_is_self_describing(small_data, tmp_path):
    run_train(["--data-root", str(small_data), "--target", "synth", "--epochs", "1", "--work-dir", str(tmp_path),
               *FAST])
    ckpt = torch.load(tmp_path / "latest.pth", weights_only=True)
    assert ckpt["arch"] == "tsn_tiny" and len(ckpt["classes"]) == 4 and ckpt["epoch"] == 1
    assert {"optimizer", "rng", "model_args", "args"} <= set(ckpt)
    model = models.from_checkpoint(tmp_path / "latest.pth")
    assert model.classes == ckpt["classes"]


def test_select_last_tests_the_last_weights_and_final_pth_holds_them(small_data: Path, tmp_path: Path) -> None:
    """--select last (the default): the final test's figures are a `--test --checkpoint latest.pth` run's (the
    weights after the last epoch); final.pth holds exactly those weights and says so; no best.pth is written."""
    work = tmp_path / "w"
    m = run_train(["--data-root", str(small_data), "--target", "synth", "--epochs", "2", "--val-every", "1",
                   "--work-dir", str(work), *FAST])
    latest, final = (torch.load(work / name, weights_only=True) for name in ("latest.pth", "final.pth"))
    assert final["weights"] == "last" == json.loads((work / "metrics.json").read_text())["weights"]
    assert final["model"].keys() == latest["model"].keys()
    assert all(torch.equal(final["model"][k], latest["model"][k]) for k in latest["model"])
    assert not (work / "best.pth").exists()
    t = run_train(["--data-root", str(small_data), "--target", "synth", "--test", "--checkpoint",
                   str(work / "latest.pth"), "--work-dir", str(tmp_path / "t"), *FAST])
    assert (t["top1"], t["top5"], t["confusion_matrix"]) == (m["top1"], m["top5"], m["confusion_matrix"])
    assert t["weights"] == str(work / "latest.pth")


def test_select_val_tests_best_pth_chosen_on_val_and_says_which_epoch(small_data: Path, tmp_path: Path) -> None:
    """--select val (MMAction2's practice), run as a user runs it: best.pth is the epoch of the first highest
    quick-validation top-1 in log.jsonl; the final test reports it (a `--test --checkpoint best.pth` run's figures),
    final.pth holds those weights, metrics.json and the "testing ..." line name the epoch."""
    work = tmp_path / "w"
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--data-root", str(small_data), "--target", "synth",
                          "--epochs", "3", "--val-every", "1", "--select", "val", "--work-dir", str(work), *FAST],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    val = [r["val"]["top1"] for r in map(json.loads, (work / "log.jsonl").read_text().splitlines())
           if r["kind"] == "epoch"]
    epoch = 1 + val.index(max(val))
    best, final = (torch.load(work / name, weights_only=True) for name in ("best.pth", "final.pth"))
    assert best["epoch"] == epoch and final["weights"] == f"best on val (epoch {epoch})"
    assert all(torch.equal(final["model"][k], best["model"][k]) for k in best["model"])
    assert f"testing {work / 'best.pth'}, the best on val (epoch {epoch}, --select val)" in out.stdout
    metrics = json.loads((work / "metrics.json").read_text())
    t = run_train(["--data-root", str(small_data), "--target", "synth", "--test", "--checkpoint",
                   str(work / "best.pth"), "--work-dir", str(tmp_path / "t"), *FAST])
    assert (t["top1"], t["top5"]) == (metrics["top1"], metrics["top5"]) and metrics["weights"] == final["weights"]


def test_two_gloo_ranks_share_the_work_and_rank_0_alone_writes(small_data, tmp_path):
    """torchrun with 2 CPU ranks (gloo): each rank trains on its half of the target and tests its share of the val
    split; the metrics are reduced over both; one console header, one log line per interval."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(ROOT / "train.py"), "--data-root", str(small_data), "--target", "synth", "--epochs", "2",
           "--work-dir", str(tmp_path), *FAST]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    val_videos = len((small_data / "synth" / "val.txt").read_text().split("\n")) - 1
    assert m["num_videos"] == val_videos          # metrics reduced over both ranks: every video once
    # only rank 0 writes: one console header, one log line per interval
    assert out.stdout.count("tsn_tiny on synth") == 1
    assert "x 2 rank(s)" in out.stdout
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in log if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    # 32 training videos, batch 8 per rank, 2 ranks -> 2 steps per epoch
    assert max(r["steps"] for r in log if r["kind"] == "train") == 2


# ----------------------------------------------------------------------------------------------------------------------
# OmniSource joint training and the data of every source (Sec. 3.5, 3.6; Fig. 7)
# ----------------------------------------------------------------------------------------------------------------------


def test_joint_training_with_web_sources_logs_each_source(small_data, tmp_path):
    """Three sources, batches 8 + 4 + 4 (--ratio 2:1:1): the log has each source's loss and top-1, and the total
    loss is Eq. 1's sum over the concatenated batch (each source's mean CE weighted by its share)."""
    m = run_train(["--data-root", str(small_data), "--target", "synth", "--epochs", "1",
                   "--aux", "synth-web-img,synth-web-vid", "--ratio", "2:1:1", "--mixup", "0.2",
                   "--image-to-clip", "still", "--work-dir", str(tmp_path), *FAST])
    # the final test's figures, computed another way: from predictions.jsonl's top-1 per video
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == m["num_videos"] == 24
    assert m["top1"] == pytest.approx(sum(r["top5"][0]["class"] == r["label"] for r in rows) / 24)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    step = next(r for r in log if r["kind"] == "train")
    assert {"loss_synth", "loss_synth-web-img", "loss_synth-web-vid", "acc_synth-web-img"} <= set(step)
    assert step["loss"] == pytest.approx(step["loss_synth"] * 8 / 16 + step["loss_synth-web-img"] * 4 / 16
                                         + step["loss_synth-web-vid"] * 4 / 16, rel=1e-4)


def test_web_labels_are_mapped_onto_the_target_classes_by_name(small_data, tmp_path):
    """gg is labelled in k200_actions.txt order; K400 is the target. The image labelled
    class_399 (K200 label 0) trains as K400 label 399; unicycling, not a K400 class, is left out and counted."""
    root = released_layout(tmp_path / "data", small_data)
    argv = ["--data-root", str(root), "--target", "k400", "--aux", "gg", "--image-to-clip", "still", "--ratio", "2:1",
            "--batch-size", "4",
            "--epochs", "1", "--crop-size", "32", "--test-clips", "1", "--test-crops", "1", "--workers", "0"]
    run = train.setup(train.get_args_parser().parse_args(argv + ["--work-dir", str(tmp_path / "a")]), 0, 1,
                      torch.device("cpu"))
    web = run.datasets[1]
    names = {Path(s.path).name: s.label for s in web.samples}
    assert names == {"0.jpg": 399, "1.jpg": 398, "2.jpg": 394}
    _, labels, _ = next(iter(run.loader))          # what the training step receives: [target, gg] batches
    assert set(labels[1].tolist()) <= {399, 398, 394} and labels[1].numel() == 2
    # the command as a user types it: one line per source names what was left out, and the run trains
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), *argv, "--work-dir", str(tmp_path / "b")],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--aux gg: 3 samples, labels mapped by class name onto the 400 classes of k400; 1 left out" in out.stdout
    # a source that shares no class name with the target: one line, non-zero exit
    other = root / "other"
    other.mkdir()
    (other / "classes.txt").write_text("juggling\nknitting\n")
    (other / "train.txt").write_text("a.jpg 0\nb.jpg 1\n")
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), *argv[:4], "--aux", "other",
                          "--work-dir", str(tmp_path / "c")], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("error: --aux other:") and "juggling" in out.stderr


def test_joint_batches_set_epoch_skips_the_done_steps_of_the_uninterrupted_epoch() -> None:
    """JointBatches.set_epoch(epoch, first_step) (a mid-epoch --resume) yields exactly the batches of steps
    first_step.. of the uninterrupted epoch, in every source; the same as setting each sampler from outside
    (start = first_step x its batch size, the path it replaces); another epoch is another order."""
    args = train.get_args_parser().parse_args(["--batch-size", "4", "--workers", "0", "--ratio", "2:1:1"])
    target, aux = Items(range(0, 40), 4), [Items(range(100, 130), 3), Items(range(200, 211), 2)]
    loader, sizes = train.make_train_loader(args, target, aux, rank=0, world=1)
    assert sizes == [4, 2, 2] and len(loader) == 10

    def epoch_ids(epoch: int, first_step: int) -> list[list[list[int]]]:
        loader.set_epoch(epoch, first_step)
        return [[c.tolist() for c in clips] for clips, _, _ in loader]

    full = epoch_ids(1, 0)
    assert len(full) == 10 and sorted(sum((b[0] for b in full), [])) == list(range(40))
    assert epoch_ids(1, 3) == full[3:] and epoch_ids(1, 9) == full[9:]
    for sampler, source in zip(loader.samplers, [loader.target_loader, *loader.aux_loaders]):
        sampler.set_epoch(1, start=3 * source.batch_size)
    assert [[c.tolist() for c in clips] for clips, _, _ in loader] == full[3:]
    assert epoch_ids(2, 0) != full and epoch_ids(1, 0) == full


def test_still_clips_come_from_one_implementation_in_training_and_testing(small_data: Path) -> None:
    """A web image becomes a still clip (the image, resized once to the pipeline's short side, repeated) through
    transforms.image_to_clip alone: train.py's training path (--image-to-clip still), its test path and
    data.VideoDataset's default give those frames (before augmentation)."""
    args = train.get_args_parser().parse_args(["--image-to-clip", "still", "--data-root", str(small_data)])
    arch = models.build_model("tsn_tiny", 4).spec
    web = data.resolve_dataset(str(small_data), "synth-web-img")
    short = transforms.short_side_for(arch.crop_size)
    for test_mode in (False, True):
        ds = train.make_dataset(args, web, "train", arch, test_mode=test_mode)
        frames, _, used = ds.load(0)
        image = data.read_image(ds.samples.path(used), short)
        expected = np.repeat(transforms.Resize(short_side=short)(image[None]), arch.num_clips_train, axis=0)
        assert np.array_equal(frames, expected), test_mode
    plain = data.VideoDataset(data.load_split(web, "train"), data.Sampling(1, 1, 5))
    frames, _, used = plain.load(1)
    assert np.array_equal(frames, np.repeat(data.read_image(plain.samples.path(used))[None], 5, axis=0))


def test_label_fraction_is_class_balanced():
    class S:
        def __init__(self, label):
            self.label = label
    samples = [S(c) for c in range(4) for _ in range(10)]
    kept = train.label_fraction(samples, 0.3, seed=0)
    assert np.bincount([s.label for s in kept]).tolist() == [3, 3, 3, 3]
    assert np.bincount([s.label for s in train.label_fraction(samples, 0.01, 0)]).tolist() == [1, 1, 1, 1]


def test_broken_target_video_is_replaced_counted_and_logged(small_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(small_data / "synth", root / "synth")
    first = (root / "synth" / "train.txt").read_text().split()[0]
    (root / "synth" / first).write_bytes(b"not a video at all")
    run_train(["--data-root", str(root), "--target", "synth", "--epochs", "1", "--work-dir", str(tmp_path / "w"),
               *FAST])
    log = [json.loads(line) for line in (tmp_path / "w" / "log.jsonl").read_text().splitlines()]
    assert max(r["failed_samples"] for r in log if r["kind"] == "train") == 1


def test_dirty_files_in_every_source_are_skipped_named_once_and_counted_exactly(small_data, tmp_path):
    """20 % bad files in the target and in both web sources, default workers. Every source has
    20 samples, all drawn once in the epoch (batch 5, ratio 1:1:1, --resample none), the bad ones last (their
    replacement, index + 13 mod 20, is always a good one, so no two workers ever try the same bad file): the
    log counts exactly the 12 bad files, and the warnings name each exactly once."""
    root = tmp_path / "data"
    classes = (small_data / "synth" / "classes.txt").read_text()
    good = [line.split() for line in (small_data / "synth" / "train.txt").read_text().splitlines()]
    src = small_data / "synth"
    bad = {"target": ["zero.mp4", "truncated.mp4", "text.mp4", "missing.mp4"],
           "web-img": ["page.jpg", "pixel.jpg", "zero.jpg", "missing.jpg"],
           "web-vid": ["audio_only.mp4", "truncated.mp4", "text.mp4", "zero.mp4"]}
    for name in bad:
        d = root / name
        (d / "files").mkdir(parents=True)
        (d / "classes.txt").write_text(classes)
        lines = []
        for i in range(16):
            if name == "web-img":
                Image.new("RGB", (40, 32), (60 * (i % 4), 90, 200 - 50 * (i % 4))).save(d / "files" / f"{i}.jpg")
                lines.append(f"files/{i}.jpg {i % 4}")
            else:
                rel, label = good[i if name == "target" else 16 + i]
                os.link(src / rel, d / "files" / f"{i}.mp4")
                lines.append(f"files/{i}.mp4 {label}")
        for i, file in enumerate(bad[name]):
            write_dirty(d / "files" / file, src / good[0][0])
            lines.append(f"files/{file} {i % 4}")
        (d / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "target" / "val.txt").write_text((src / "val.txt").read_text())
    shutil.copytree(src / "videos", root / "target" / "videos", copy_function=os.link)
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--data-root", str(root), "--target", "target",
                          "--aux", "web-img,web-vid", "--image-to-clip", "still", "--ratio", "1:1:1",
                          "--resample", "none", "--batch-size", "5", "--epochs", "1", "--crop-size", "32",
                          "--test-clips", "1", "--test-crops", "1", "--work-dir", str(tmp_path / "w")],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    log = [json.loads(line) for line in (tmp_path / "w" / "log.jsonl").read_text().splitlines()]
    assert [r["failed_samples"] for r in log if r["kind"] == "train"][-1] == 12
    for name, files in bad.items():
        for file in files:
            path = root / name / "files" / file
            assert out.stderr.count(f"failed to load {path} (") == 1, (path, out.stderr[-3000:])
    assert json.loads((tmp_path / "w" / "metrics.json").read_text())["num_videos"] == 24


# ----------------------------------------------------------------------------------------------------------------------
# The recipes: schedule, optimiser, frozen batch norm (appendix)
# ----------------------------------------------------------------------------------------------------------------------


def test_schedule_follows_the_recipes():
    args = train.get_args_parser().parse_args([])
    tsn = train.Schedule.from_args(args, train.RECIPES["tsn"], steps_per_epoch=10, samples_per_step=256)
    assert tsn.base_lr == pytest.approx(4e-5 * 256) and tsn.epochs == 100 and tsn.lr_steps == (40, 80)
    assert tsn.lr(0) == pytest.approx(0.01024)
    assert tsn.lr(40 * 10) == pytest.approx(0.001024) and tsn.lr(80 * 10) == pytest.approx(0.0001024)
    scratch = train.Schedule.from_args(args, train.RECIPES["3d_scratch"], steps_per_epoch=10, samples_per_step=64)
    assert scratch.base_lr == pytest.approx(1.6e-3 * 64) and scratch.warmup_epochs == 34
    assert scratch.lr(17 * 10) == pytest.approx(scratch.base_lr / 2)               # half-way through warm-up
    mid = (34 + (256 - 34) / 2) * 10
    assert scratch.lr(mid) == pytest.approx(scratch.base_lr / 2)                   # cosine half-way
    short = train.Schedule.from_args(train.get_args_parser().parse_args(["--epochs", "50"]),
                                     train.RECIPES["3d_imagenet"], steps_per_epoch=1, samples_per_step=1)
    assert short.lr_steps == (30, 43)                                               # 90/150 and 130/150 of 50


def test_optimizer_is_the_papers_unless_the_flags_say_otherwise() -> None:
    """SGD with momentum 0.9 and weight decay 1e-4 for every architecture (the paper's); --optimizer adamw with
    --weight-decay. Known answer: AdamW's first step is, per weight, w (1 - lr decay) - lr g / (|g| + eps)
    (bias-corrected moments of one gradient)."""
    parse = train.get_args_parser().parse_args
    net = torch.nn.Linear(3, 2)
    sgd = train.make_optimizer(parse([]), net, 0.1)
    assert type(sgd) is torch.optim.SGD
    assert (sgd.defaults["lr"], sgd.defaults["momentum"], sgd.defaults["weight_decay"]) == (0.1, 0.9, 1e-4)
    adamw = train.make_optimizer(parse(["--optimizer", "adamw", "--weight-decay", "0.05"]), net, 1e-2)
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["weight_decay"] == 0.05
    before = net.weight.detach().clone()
    net(torch.ones(1, 3)).sum().backward()
    grad = net.weight.grad.clone()
    adamw.step()
    expected = before * (1 - 1e-2 * 0.05) - 1e-2 * grad / (grad.abs() + adamw.defaults["eps"])
    assert torch.allclose(net.weight.detach(), expected, atol=1e-7)


def test_freeze_bn_keeps_batch_norm_fixed_and_trains_the_rest(small_data, tmp_path):
    """--freeze-bn (MMAction2's norm_eval + bn_frozen, the irCSN recipe's default): BN state stays at its init."""
    run_train(["--data-root", str(small_data), "--target", "synth", "--epochs", "1", "--freeze-bn",
               "--work-dir", str(tmp_path), *FAST])
    torch.manual_seed(0)                               # train.setup seeds, then builds the model
    init = models.build_model("tsn_tiny", 4).state_dict()
    trained = torch.load(tmp_path / "latest.pth", weights_only=False)["model"]
    bn = [k for k in init if ".bn" in k or ".downsample.1." in k]
    assert len(bn) > 20 and all(torch.equal(init[k], trained[k]) for k in bn if "num_batches" not in k)
    assert not torch.equal(init["backbone.conv1.weight"], trained["backbone.conv1.weight"])


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints in and out: --checkpoint, --finetune, --test, --export-mmaction
# ----------------------------------------------------------------------------------------------------------------------


def test_export_mmaction_round_trips(small_data, tmp_path):
    run_train(["--data-root", str(small_data), "--target", "synth", "--epochs", "1", "--work-dir", str(tmp_path),
               *FAST])
    out = tmp_path / "mm.pth"
    run_train(["--data-root", str(small_data), "--target", "synth", "--work-dir", str(tmp_path),
               "--export-mmaction", str(out), *FAST])
    mm = torch.load(out, weights_only=True)
    assert "cls_head.fc_cls.weight" in mm["state_dict"] and mm["state_dict"]["cls_head.fc_cls.weight"].shape[0] == 4
    # evaluating the exported MMAction2 file gives the same metrics as our own final.pth (the default exported)
    a = run_train(["--data-root", str(small_data), "--target", "synth", "--work-dir", str(tmp_path / "a"), "--test",
                   "--checkpoint", str(tmp_path / "final.pth"), *FAST])
    b = run_train(["--data-root", str(small_data), "--target", "synth", "--work-dir", str(tmp_path / "b"), "--test",
                   "--checkpoint", str(out), *FAST])
    assert a["top1"] == b["top1"] and a["confusion_matrix"] == b["confusion_matrix"]


def test_finetune_loads_the_backbone_of_another_class_count(small_data, tmp_path):
    other = models.build_model("tsn_tiny", 7)
    torch.save({"model": other.state_dict(), "arch": "tsn_tiny", "classes": [str(i) for i in range(7)]},
               tmp_path / "seven.pth")
    run_train(["--data-root", str(small_data), "--target", "synth", "--checkpoint", str(tmp_path / "seven.pth"),
               "--finetune", "--epochs", "1", "--lr-per-sample", "0", "--work-dir", str(tmp_path / "w"), *FAST])
    got = torch.load(tmp_path / "w" / "latest.pth", weights_only=True)["model"]
    assert torch.equal(got["backbone.conv1.weight"], other.state_dict()["backbone.conv1.weight"])
    assert got["fc.weight"].shape[0] == 4


def test_test_and_export_need_only_the_val_split_and_the_checkpoint(small_data, tmp_path):
    """The README's evaluation of a released model, with only K400's val videos on disk."""
    root = released_layout(tmp_path / "data", small_data)
    (root / "kinetics400" / "kinetics400_train_list_videos.txt").unlink()
    shutil.rmtree(root / "kinetics400" / "videos_train")
    ckpt = tmp_path / "k400_tsn_tiny.pth"
    torch.manual_seed(3)
    net = models.build_model("tsn_tiny", 400, crop_size=32)
    torch.save({"model": net.state_dict(), "arch": "tsn_tiny", "classes": [f"class_{i:03d}" for i in range(400)]},
               ckpt)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    base = [sys.executable, str(ROOT / "train.py"), "--data-root", str(root), "--target", "k400", "--arch", "tsn_tiny",
            "--crop-size", "32", "--checkpoint", str(ckpt), "--work-dir", str(tmp_path / "w"), "--batch-size", "64"]
    out = subprocess.run(base + ["--test", "--test-clips", "2", "--test-crops", "1"], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "training videos" not in out.stdout and "epochs x" not in out.stdout    # no training summary
    assert f"testing {ckpt} on the 4 val videos of k400" in out.stdout
    m = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert m["num_videos"] == 4 and len(m["classes"]) == 400
    out = subprocess.run(base + ["--export-mmaction", str(tmp_path / "mm.pth")], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith(f"exporting {ckpt}") and "training videos" not in out.stdout
    mm = torch.load(tmp_path / "mm.pth", weights_only=True)["state_dict"]
    assert torch.equal(mm["cls_head.fc_cls.weight"], net.state_dict()["fc.weight"])


def test_checkpoint_with_other_class_count_says_both(small_data, tmp_path, capsys):
    other = models.build_model("tsn_tiny", 7)
    torch.save({"model": other.state_dict(), "arch": "tsn_tiny", "classes": [str(i) for i in range(7)]},
               tmp_path / "seven.pth")
    msg = cli_error(["--data-root", str(small_data), "--target", "synth", "--checkpoint", str(tmp_path / "seven.pth"),
                     "--work-dir", str(tmp_path / "w"), *FAST], capsys)
    assert re.search(r"\b7 classes\b.*\b4\b", msg), msg            # the checkpoint's 7, the target's 4


# ----------------------------------------------------------------------------------------------------------------------
# The command line: --help, one-line errors
# ----------------------------------------------------------------------------------------------------------------------


def test_help_gives_every_default_once() -> None:
    """`python train.py --help`: no flag's text names its default twice (its own words and the formatter's)."""
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, COLUMNS="100000"))
    assert out.returncode == 0
    flags = []                                          # each flag's entry: its line and the help lines below it
    for line in out.stdout.splitlines():
        if line.startswith("  --"):
            flags.append(line)
        elif flags and line.startswith(" " * 10):
            flags[-1] += line
    shown = [a for a in train.get_args_parser()._actions if a.help != argparse.SUPPRESS]
    assert len(flags) == len(shown) - 1                                      # -h excepted
    assert [f for f in flags if f.lower().replace("default_", "").count("default") > 1] == []
    assert "(default: 8)" in next(f for f in flags if f.lstrip().startswith("--batch-size"))


def test_unknown_dataset_lists_the_known_ones(tmp_path, capsys):
    msg = cli_error(["--data-root", str(tmp_path), "--target", "nope", "--work-dir", str(tmp_path / "w")], capsys)
    assert "nope" in msg and "k400" in msg and "classes.txt" in msg


def test_missing_list_file_is_named(small_data, tmp_path, capsys):
    shutil.copytree(small_data / "synth", tmp_path / "d" / "synth")
    (tmp_path / "d" / "synth" / "val.txt").unlink()
    msg = cli_error(["--data-root", str(tmp_path / "d"), "--target", "synth", "--work-dir", str(tmp_path / "w"),
                     *FAST], capsys)
    assert "val.txt" in msg


def test_label_out_of_range_names_the_line(small_data, tmp_path, capsys):
    shutil.copytree(small_data / "synth", tmp_path / "d" / "synth")
    lst = tmp_path / "d" / "synth" / "train.txt"
    lines = lst.read_text().splitlines()
    lines[2] = lines[2].rsplit(" ", 1)[0] + " 9"
    lst.write_text("\n".join(lines) + "\n")
    msg = cli_error(["--data-root", str(tmp_path / "d"), "--target", "synth", "--work-dir", str(tmp_path / "w"),
                     *FAST], capsys)
    assert re.search(r"train\.txt:3\b.*\blabel 9\b", msg), msg


def test_cli_exits_non_zero_with_one_line(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--data-root", str(tmp_path), "--target", "nope"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert out.stderr.strip().count("\n") == 0 and out.stderr.startswith("error: ")


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------


def run_train(argv):
    return train.main(train.get_args_parser().parse_args(argv))


def cli_error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        webscale.run_command(train.main, train.get_args_parser(), argv)
    msg = str(exc.value.code)
    assert msg.startswith("error: ") and "\n" not in msg, msg
    return msg


def write_colour_dataset(root, per_class, size=(64, 48), frames=12):
    """classes.txt, train.txt, val.txt and H.264 videos of a square of the class colour moving on noise."""
    colours = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40)}
    (root / "videos").mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(colours) + "\n")
    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        lines = []
        for label, rgb in enumerate(colours.values()):
            for i in range(n):
                name = f"videos/{split}_{label}_{i}.mp4"
                clip = rng.integers(60, 160, size=(frames, size[1], size[0], 3), dtype=np.uint8)
                x, y = rng.integers(0, size[0] - 24), rng.integers(0, size[1] - 24)
                for t in range(frames):
                    clip[t, y:y + 20, min(x + t, size[0] - 20):min(x + t, size[0] - 20) + 20] = rgb
                with av.open(str(root / name), "w") as out:
                    stream = out.add_stream("libx264", rate=8)
                    stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
                    for f in clip:
                        out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
                    out.mux(stream.encode())
                lines.append(f"{name} {label}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")


class Items(torch.utils.data.Dataset):
    """In-memory items (id, label, index) with ids `ids` and labels id % classes (a stub VideoDataset)."""

    def __init__(self, ids: range, classes: int):
        self.ids = list(ids)
        self.samples = [webscale.Sample(Path(f"{i}.mp4"), i % classes, "video") for i in self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[int, int, int]:
        return self.ids[index], self.samples[index].label, index


def released_layout(root, small_data):
    """A small copy of the released layouts (data.LAYOUTS): K400 with classes class_000..class_399 and a few
    videos, the OmniSource folder with k200_actions.txt (class_399, class_398, ..., class_201 and one class
    K400 lacks, 'unicycling': another order than K400's) and four googleimage_200 images labelled in it."""
    k400 = root / "kinetics400"
    (k400 / "videos_train").mkdir(parents=True)
    (k400 / "videos_val").mkdir()
    (k400 / "classes.txt").write_text("".join(f"class_{i:03d}\n" for i in range(400)))
    videos = [line.split()[0] for line in (small_data / "synth" / "train.txt").read_text().splitlines()]
    for split, picks in (("train", videos[:8]), ("val", videos[8:12])):
        lines = []
        for i, rel in enumerate(picks):
            os.link(small_data / "synth" / rel, k400 / f"videos_{split}" / f"{i}.mp4")
            lines.append(f"{i}.mp4 {(0, 17, 200, 399)[i % 4]}")
        (k400 / f"kinetics400_{split}_list_videos.txt").write_text("\n".join(lines) + "\n")
    ann = root / "OmniSource" / "annotations"
    (ann / "googleimage_200").mkdir(parents=True)
    (ann / "k200_actions.txt").write_text("".join(f"class_{i:03d}\n" for i in range(399, 200, -1)) + "unicycling\n")
    (root / "OmniSource" / "googleimage_200").mkdir()
    lines = []
    for i, k200_label in enumerate((0, 1, 5, 199)):          # class_399, class_398, class_394, unicycling
        Image.new("RGB", (48, 40), (40 * i, 200, 90)).save(root / "OmniSource" / "googleimage_200" / f"{i}.jpg")
        lines.append(f"googleimage_200/{i}.jpg {k200_label}")
    (ann / "googleimage_200" / "googleimage_200.txt").write_text("\n".join(lines) + "\n")
    return root


def write_dirty(path, video):
    """One bad file of the kind its name says (a crawl's usual breakage); `video` is a good .mp4 to cut."""
    kind = path.stem
    if kind == "missing":
        return
    if kind == "zero":
        path.write_bytes(b"")
    elif kind == "truncated":                  # the index (moov, written last) is cut off: cannot be opened
        path.write_bytes(Path(video).read_bytes()[: Path(video).stat().st_size * 6 // 10])
    elif kind == "text":
        path.write_text("this is a text file named .mp4\n")
    elif kind == "page":
        path.write_text("<!DOCTYPE html><html><head><title>404 Not Found</title></head><body></body></html>\n")
    elif kind == "pixel":
        Image.new("RGB", (1, 1), (255, 255, 255)).save(path)
    elif kind == "audio_only":                 # a valid MP4 with an AAC stream and no video stream
        with av.open(str(path), "w") as out:
            stream = out.add_stream("aac", rate=16000)
            for i in range(8):
                frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 16000, i * 1024
                out.mux(stream.encode(frame))
            out.mux(stream.encode())
