"""Train and test a video classifier, alone (the teacher, the baseline) or with OmniSource web data.

    python train.py                                          # embedded demo: tsn_tiny on generated data
    python train.py --data-root data --target k400 --arch tsn_r50 --pretrained resnet50.pth
    python train.py --target k400 --aux gg,ig-vid --ratio 2:1:1           # OmniSource joint training
    torchrun --nproc_per_node 8 train.py --target k400 --arch slowonly_r50_4x16 ...
    python train.py --target k400 --arch tsn_r50 --checkpoint final.pth --test
    python train.py --predict a.mp4 b.mp4 --checkpoint work_dirs/synth_tsn_tiny/final.pth    # top-5 of each video

The recipes (RECIPES) are the paper's (appendix "Implementation Details"): SGD with momentum 0.9 and weight decay
1e-4, a learning rate linear in the number of samples per step, gradient clipping at norm 40, and per
family TSN 4e-5/sample, 100 epochs, x0.1 at 40 and 80; 3D from ImageNet 1.6e-4/sample, 150 epochs, x0.1
at 90 and 130; 3D from scratch 1.6e-3/sample, cosine, 256 epochs with 34 warm-up epochs. The tiny demo nets
(models.py *_tiny) have their own, RECIPES["demo"], not the paper's.

The training step (Sec. 3.2, Eq. 1) is in `train_one_epoch`: one target batch plus one batch per
auxiliary source, one forward on their concatenation, one loss, ONE optimiser step.

Outputs in --work-dir: log.jsonl (one JSON object per logging interval and per epoch, with the quick
validation's top-1 every --val-every epochs and after the last), latest.pth (every epoch and every --save-every
steps, written atomically), final.pth (the weights the final test evaluated: by default the last ones; --select
val: best.pth, the best quick validation top-1, MMAction2's practice), metrics.json (top1, top5, mean_class_acc of
the final test with the paper's protocol over the readable val videos, the unreadable ones left out and named, and
which weights it tested), confusion_matrix.csv and predictions.jsonl (per video: path, label, top-5 classes with
probabilities; --dump-probs: all of them); after training, curves.png and confusion.png
(figures.train_figures).

Crashes: kill the run at any moment (SIGKILL included) and run the same command plus --resume: it ends
with the weights, metrics.json and log.jsonl of an uninterrupted run, bit for bit on the same machine and
number of ranks (latest.pth holds every rank's random state; `set_train_epoch` skips ahead in an epoch).
On GPUs, exactly as far as two uninterrupted runs agree (cuDNN's autotuned kernels need not be deterministic).
The same command: a flag that changes the run (all but checkpoints.RESUME_FREE_FLAGS) is refused, naming its old and new value.

Speed: workers send uint8 clips, normalised on the device; the step runs in --amp precision
(bf16 by default on GPUs that have it) and never waits for the host: losses and accuracies are summed on
the device and read once per logging interval.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

import checkpoints
import data
import figures
import models
import omnisource
import synthetic
import transforms
import webscale

OPTIMIZERS = ("sgd", "adamw")
PROTOCOLS = {1: "center", 3: "three_crop", 10: "ten_crop"}     # test crops per clip -> transforms.test_transform's

# The paper's recipes (appendix "Implementation Details"), selected by the architecture's family and
# whether ImageNet weights are given. lr_per_sample x (samples per optimiser step) = base LR.
RECIPES = {
    "tsn": dict(lr_per_sample=4e-5, epochs=100, schedule="step", lr_steps=(40, 80), warmup_epochs=0,
                freeze_bn=False),
    "3d_imagenet": dict(lr_per_sample=1.6e-4, epochs=150, schedule="step", lr_steps=(90, 130), warmup_epochs=0,
                        freeze_bn=False),
    "3d_scratch": dict(lr_per_sample=1.6e-3, epochs=256, schedule="cosine", lr_steps=(), warmup_epochs=34,
                       freeze_bn=False),
    "ircsn_ig65m": dict(lr_per_sample=5e-6, epochs=58, schedule="step", lr_steps=(32, 48), warmup_epochs=16,
                        freeze_bn=True),
    # not the paper's: the tiny demo nets (models.py *_tiny) learn the generated data from scratch in minutes
    "demo": dict(lr_per_sample=1e-3, epochs=100, schedule="cosine", lr_steps=(), warmup_epochs=1,
                 freeze_bn=False),
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help gives each flag's default once: the parser's value, unless the help text says the default itself (a
    default of None is the recipe's or the arch's, explained there) or there is none to show (off, empty)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, "") or "default" in (action.help or "").lower():
            return action.help
        return super()._get_help_string(action)


def get_args_parser() -> argparse.ArgumentParser:
    p = omnisource.SettlingParser("omnisource train", settle=("arch", "snippet"), formatter_class=HelpFormatter)
    for add_group in (_data_args, _model_args, _optimisation_args, _omnisource_args, _run_args, _speed_args):
        add_group(p)
    return p


def _data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data-root", default="data", help="folder holding the datasets (DATA_ROOT/NAME/ or the "
                   "released layouts: see README); the embedded demo data is generated here when missing")
    g.add_argument("--target", default="synth", help="target dataset: a folder name under --data-root or one "
                   "of the paper's names (k400, k200, ucf101, hmdb51); 'synth' is the generated demo set")
    g.add_argument("--label-fraction", type=float, default=1.0, help="train on this class-balanced fraction of "
                   "the target's labelled videos (Fig. 7: 0.03, 0.1, 0.3); at least one video per class")
    g.add_argument("--workers", type=int, default=2, help="DataLoader worker processes per source and rank")


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--arch", default=None, help="architecture, one of: " + ", ".join(models.ARCHS) + " (default: "
                   "the paper's tsn_r50; tsn_tiny on the demo target)")
    g.add_argument("--pretrained", default=None, help="2D ImageNet weights (torchvision layout) to start from; "
                   "inflated for 3D nets. With them (or with --checkpoint) a 3D net uses the '3d_imagenet' recipe, "
                   "without both '3d_scratch'")
    g.add_argument("--checkpoint", default=None, help="weights to start from, or with --test the model to "
                   "evaluate (default with --test: WORK_DIR/final.pth). Our checkpoints, MMAction2 0.x / 1.x "
                   "recognizer checkpoints (e.g. the released OmniSource models), torchvision state dicts and bare "
                   "state dicts are detected (models.load_weights); its outputs are read by class name. A 3D net "
                   "started from it trains with the '3d_imagenet' recipe, like --pretrained")
    g.add_argument("--finetune", action="store_true", help="with --checkpoint: load the backbone only and keep a "
                   "fresh classifier, for a checkpoint with another class count (transfer to UCF101 / HMDB51)")
    g.add_argument("--export-mmaction", default=None, metavar="OUT.pth", help="only write --checkpoint (default "
                   "WORK_DIR/final.pth) as an MMAction2 1.x checkpoint to OUT.pth and exit")
    g.add_argument("--num-segments", type=int, default=None, help="TSN training segments (default: the arch's, 3)")
    g.add_argument("--clip-len", type=int, default=None, help="3D: frames per clip (default: the arch's, e.g. 4)")
    g.add_argument("--frame-interval", type=int, default=None, help="3D: frame step inside a clip (default: the "
                   "arch's, e.g. 16 for 4x16)")
    g.add_argument("--crop-size", type=int, default=None, help="training and test crop in pixels (default: the "
                   "arch's, 224); frames are first resized to a short side of round(crop * 256 / 224)")


def _optimisation_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimisation (defaults: the paper's recipe for --arch, see module docstring)")
    g.add_argument("--epochs", type=int, default=None, help="epochs over the target set (recipe: 100 TSN, "
                   "150 3D ImageNet-init, 256 3D scratch)")
    g.add_argument("--batch-size", type=int, default=8, help="target videos per rank and step, |B_T|; "
                   "auxiliary batches follow from --ratio")
    g.add_argument("--lr-per-sample", type=float, default=None, help="base LR = this x samples per optimiser "
                   "step over all ranks and sources (recipe: 4e-5 TSN, 1.6e-4 3D ImageNet, 1.6e-3 3D scratch)")
    g.add_argument("--lr-steps", default=None, help="comma-separated epochs where the LR is multiplied by 0.1 "
                   "(recipe's milestones, scaled by --epochs / recipe epochs when --epochs is changed)")
    g.add_argument("--schedule", choices=("step", "cosine"), default=None, help="LR schedule (recipe's)")
    g.add_argument("--warmup-epochs", type=float, default=None, help="linear warm-up from 0 (recipe's, scaled "
                   "like --lr-steps)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="sgd (with --momentum; every paper "
                   "recipe's) or adamw (decoupled weight decay)")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay (the paper's)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=None, help="batch norm in eval "
                   "mode (running statistics fixed) with its scale and shift untrained, as MMAction2 fine-tunes the "
                   "IG-65M irCSN (norm_eval, bn_frozen); default: the recipe's, on for ircsn_r152_32x2 only")
    g.add_argument("--clip-grad", type=float, default=40.0, help="gradient-norm clipping threshold (0: off)")
    g.add_argument("--seed", type=int, default=0, help="seed of every random choice (data, init, mixup)")


def _omnisource_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("OmniSource joint training (Sec. 3.6); without --aux this trains on the target alone")
    g.add_argument("--aux", default="", help="comma-separated auxiliary sources (dataset names under "
                   "--data-root, e.g. the output of filter.py, or gg, ig-img, web-img, ig-vid, k200-raw, k400-untr; "
                   "NAME:filtered for a released teacher-filtered list)")
    g.add_argument("--ratio", default="", help="|B_T|:|B_A1|:|B_A2|... batch ratio, target first (default 2:1 "
                   "per source: 2:1, 2:1:1, ...; Table 2)")
    g.add_argument("--resample", default=omnisource.DEFAULT_RESAMPLE, help="class resampling of every auxiliary "
                   "source: none, clip:N_C or power:P (Table 10); one value or one per source separated by ','")
    g.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (0: off): cross-dataset with --aux, "
                   "intra-dataset without (Sec. 3.6, Table 9)")
    g.add_argument("--image-to-clip", default="warp-agno", choices=transforms.IMAGE_TO_CLIP_MODES,
                   help="how still images become clips (Sec. 3.5, Eq. 2, Table 8): the paper's best, warp-agno, "
                   "warps by camera motion fitted on the target (--motion); still replicates the image")
    g.add_argument("--inflate", action=omnisource.Renamed, new="--image-to-clip", help=argparse.SUPPRESS)
    g.add_argument("--motion", default=None, help="camera-motion Gaussian file for --image-to-clip warp-* (written by "
                   "`python omnisource.py --estimate-motion`); default: motion.json in --target's folder "
                   "(data.motion_path: DATA_ROOT/NAME/ or the layout's, e.g. DATA_ROOT/kinetics400/ for k400)")
    g.add_argument("--snippet", default=None, choices=tuple(transforms.SNIPPET_MODES),
                   help="TSN snippets from untrimmed videos that filter.py scored at 1 FPS: which positive/negative "
                   "frames (Table 14); with N segments round-half-up(N p / 3) positive frames for a row of p "
                   "positives (1p2n, 8 segments: 3 positive + 5 negative). Default: the paper's 1p2n; 3pos on the "
                   "demo target (synthetic.DEMO_SETTINGS)")


def _run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--work-dir", default=None, help="output folder (default work_dirs/TARGET_ARCH)")
    g.add_argument("--resume", action="store_true", help="continue from WORK_DIR/latest.pth (weights, optimiser, "
                   "schedule position, every rank's RNG states): the same command plus --resume, after a crash or "
                   "kill -9 at any moment, ends with the weights and metrics of an uninterrupted run")
    g.add_argument("--save-every", type=int, default=0, metavar="N", help="also write latest.pth every N optimiser "
                   "steps inside an epoch (0: at the end of every epoch only); --resume continues from that step "
                   "with the same batches and random state")
    g.add_argument("--test", action="store_true", help="only evaluate --checkpoint with the test protocol")
    g.add_argument("--predict", nargs="+", default=None, metavar="VIDEO", help="only predict these videos' "
                   "classes with --checkpoint (default WORK_DIR/final.pth) and the test protocol of its architecture: "
                   "top-5 names and probabilities, printed and written to WORK_DIR/predictions.jsonl")
    g.add_argument("--classes", default=None, metavar="FILE", help="with --predict: the class names (line i: "
                   "label i) of a checkpoint that carries none (MMAction2's releases); default: --target's")
    g.add_argument("--test-clips", type=int, default=None, help="test clips (3D) or segments (TSN) per video "
                   "(default: the arch's, 10 for SlowOnly, 25 for TSN)")
    g.add_argument("--test-crops", type=int, choices=(1, 3, 10), default=None, help="test crops per clip: 1 "
                   "centre, 3 ThreeCrop, 10 TenCrop (default: the arch's, 3)")
    g.add_argument("--select", choices=("last", "val"), default="last", help="the weights the final test "
                   "reports and final.pth holds: last = after the last epoch (no choice made on the split the test "
                   "reports); val = best.pth, the best quick validation on the val split, then tested on that same "
                   "split (MMAction2's practice; an optimistic figure)")
    g.add_argument("--val-every", type=int, default=None, help="quick validation (centre crop, training clip "
                   "count) every N epochs and after the last, logged; with --select val it picks best.pth "
                   "(default: max(1, epochs // 10), about ten validations per run, so short epochs of small "
                   "datasets are not dominated by validation)")
    g.add_argument("--log-interval", type=int, default=20, help="steps between log lines")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")


def _speed_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("speed (same results, less time; README 'Speed')")
    g.add_argument("--amp", choices=("none", *models.AMP_DTYPES), default=None, help="mixed precision of the forward "
                   "and backward passes (torch.autocast on the run's device), also in evaluation; fp16 adds "
                   "loss scaling (gradients unscaled before --clip-grad). Default: bf16 on a GPU that supports it, "
                   "otherwise none (see `models.default_amp`)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="channels-last "
                   "memory layout of weights and input (channels_last for TSN, channels_last_3d for 3D nets). "
                   "Default: on for CUDA and for bf16 on CPU, off for float32 on CPU (see `default_channels_last`)")
    g.add_argument("--compile", action="store_true", help="torch.compile the training model (minutes of "
                   "compilation at start, then faster steps on GPUs)")
    g.add_argument("--eval-batch-size", type=int, default=None, help="videos per evaluation batch, every view of "
                   "each in one forward (default: --batch-size)")
    g.add_argument("--dump-probs", action="store_true", help="with --test: predictions.jsonl also holds every "
                   "video's full class-probability vector (as MMAction2's --dump)")


# ----------------------------------------------------------------------------------------------------------------------
# 1. Setup: everything a run needs, built once
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything a run holds, built once by `setup`; the training state that changes lives here too."""
    args: argparse.Namespace
    model: torch.nn.Module          # the DDP-wrapped model when distributed
    net: torch.nn.Module            # the bare model (for checkpoints and evaluation)
    classes: list[str]
    optimizer: torch.optim.Optimizer | None         # None with --test / --export-mmaction (nothing is trained)
    schedule: Schedule | None
    loader: omnisource.JointBatches | None          # one batch of every source per step
    val_loader: torch.utils.data.DataLoader | None  # the quick validation's
    source_names: list[str]                         # [--target, *--aux]
    datasets: list[data.VideoDataset]               # in the same order
    device: torch.device
    rank: int = 0
    world: int = 1
    start_epoch: int = 0
    start_step: int = 0             # optimiser steps already done in epoch start_epoch (a mid-epoch latest.pth)
    resumed_meters: list = field(default_factory=list)   # that checkpoint's meter sums (train_one_epoch restores)
    best_top1: float = -1.0
    best_epoch: int = 0             # the epoch of best_top1 (1-based; 0: none yet)
    val_every: int = 1
    freeze_bn: bool = False
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    scaler: torch.amp.GradScaler | None = None      # --amp fp16 loss scaling (made by the first epoch)

    def describe(self) -> dict:
        """What makes a checkpoint self-describing (models.load_weights, models.from_checkpoint): the weights, the
        architecture and its command-line overrides, its spec and the class names."""
        return {"model": self.net.state_dict(), "arch": self.args.arch, "model_args": model_overrides(self.args),
                "spec": vars(self.net.spec), "classes": self.classes}


def cli(argv: list[str] | None = None) -> None:
    """The command line: main(), a one-line error and a non-zero exit for bad input or a non-finite loss."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    warnings.filterwarnings("ignore", message=".*(TypedStorage|pin_memory).*")
    try:
        main(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        sys.exit(f"error: {e}")            # torchrun stops the other ranks; a collective teardown could hang
    if dist.is_initialized():
        # every rank is done with every collective before any rank tears its connections down: a rank that
        # destroyed its group while a peer was still finishing the final test aborted (SIGABRT) now and then
        dist.barrier()
        dist.destroy_process_group()


def main(args: argparse.Namespace) -> dict:
    """One run: setup, then --predict, --export-mmaction, --test, or training epochs followed by the final test.

    Returns the final test's metrics (with --export-mmaction: {}; with --predict: {path: top-5}).
    """
    rank, world, device = setup_distributed(args.device)
    settled = omnisource.demo_settings_line(args, None if training(args) else ["arch"])
    if settled and rank == 0:
        print(settled, flush=True)
    if args.work_dir is None:
        args.work_dir = str(Path("work_dirs") / f"{args.target}_{args.arch}")
    if args.predict:                                # needs no dataset: the classes are the checkpoint's
        return predict(args, rank, world, device)
    if rank == 0:                                   # the embedded demo's data, generated once when missing
        synthetic.ensure_demo_data(args.data_root, args.target)
    if dist.is_initialized():
        dist.barrier()
    if not (args.resume or args.test or args.export_mmaction):
        checkpoints.refuse_used_work_dir(Path(args.work_dir))
    run = setup(args, rank, world, device)
    if args.export_mmaction:
        return export(run)
    if args.test:
        return final_test(run)
    for epoch in range(run.start_epoch, run.schedule.epochs):
        stats = train_one_epoch(run, epoch, first_step=run.start_step if epoch == run.start_epoch else 0)
        if (epoch + 1) % run.val_every == 0 or epoch + 1 == run.schedule.epochs:
            stats["val"] = validate(run, epoch)
        # the epoch's log line before latest.pth, which records how long log.jsonl was: a run killed in between
        # repeats the epoch and --resume first cuts the log back, so every line is written once
        log_line(run, dict(kind="epoch", epoch=epoch + 1, **stats))
        checkpoints.save_checkpoint(run, "latest.pth", epoch + 1)
    metrics = final_test(run)
    if rank == 0:                                   # curves.png, confusion.png beside the run's outputs
        figures.train_figures(args.work_dir, metrics)
    return metrics


def training(args: argparse.Namespace) -> bool:
    """Whether the command trains (not --test, --export-mmaction or --predict)."""
    return not (args.test or args.export_mmaction or args.predict)


def setup(args: argparse.Namespace, rank: int, world: int, device: torch.device) -> Run:
    """Model, datasets, loaders, schedule, optimiser; then --resume / --checkpoint.

    With --test or --export-mmaction only the model is built: they read the val split or the checkpoint,
    never the training lists.
    """
    target = data.resolve_dataset(args.data_root, args.target)
    classes = target.classes
    # 1. the initial weights: seeded by --seed alone, the same on every rank
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    model = build(args, len(classes), device)
    # 2. then each rank its own random streams (dropout, python's random; mixup's run.rng below), so ranks do
    #    not draw identical dropout masks
    seed_rank(args.seed, rank)
    if args.test or args.export_mmaction:
        return Run(args, model, model, classes, None, None, None, None, [args.target], [], device, rank, world)
    # 3. every source's training list and loader, the val loader of the quick validation
    datasets, loader, sizes, val_loader = make_training_data(args, target, model.spec, rank, world)
    # 4. the recipe of the architecture: schedule (LR linear in the samples per step over all ranks), optimiser
    recipe = recipe_for(args, model.spec)
    freeze_bn = recipe["freeze_bn"] if args.freeze_bn is None else args.freeze_bn
    if freeze_bn:                                   # bn_frozen: scale and shift are not trained
        for m in _batch_norms(model):
            m.requires_grad_(False)
    schedule = Schedule.from_args(args, recipe, steps_per_epoch=len(loader), samples_per_step=sum(sizes) * world)
    optimizer = make_optimizer(args, model, schedule.base_lr)
    # 5. the training model: DDP over the ranks, --compile; run.net stays the bare model
    net = model
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        model = torch.compile(model)
    run = Run(args, model, net, classes, optimizer, schedule, loader, val_loader,
              [args.target] + split_names(args.aux), datasets, device, rank, world,
              rng=np.random.default_rng([args.seed, rank, 3]),
              val_every=args.val_every or max(1, schedule.epochs // 10), freeze_bn=freeze_bn)
    # 6. --resume (latest.pth) or --checkpoint
    start_or_resume(run)
    if rank == 0:
        print(f"{args.arch} on {args.target} ({len(classes)} classes, {len(datasets[0].samples)} training videos"
              + "".join(f", {n}: {len(d.samples)}" for n, d in zip(split_names(args.aux), datasets[1:]))
              + f"), batch {'+'.join(map(str, sizes))} x {world} rank(s), {schedule.describe()}", flush=True)
    return run


def build(args: argparse.Namespace, num_classes: int, device: torch.device) -> torch.nn.Module:
    """The model on the device; settles --amp and --channels-last (their defaults depend on the device)."""
    overrides = model_overrides(args)
    model = models.build_model(args.arch, num_classes, pretrained=args.pretrained, **overrides)
    args.amp = args.amp or models.default_amp(device)
    args.channels_last = default_channels_last(device, args.amp) if args.channels_last is None else args.channels_last
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True       # fixed input shapes: find the fastest convolutions once
    model = model.to(device)
    if args.channels_last:                          # 4D weights (TSN) channels_last, 5D (3D nets) channels_last_3d
        model = model.to(memory_format=torch.channels_last_3d if model.spec.family == "3d" else torch.channels_last)
    return model


def model_overrides(args: argparse.Namespace) -> dict:
    """The architecture overrides given on the command line (stored in checkpoints as model_args)."""
    return {k: v for k, v in dict(num_segments=args.num_segments, clip_len=args.clip_len,
                                  frame_interval=args.frame_interval, crop_size=args.crop_size).items()
            if v is not None}


def setup_distributed(device_arg: str | None) -> tuple[int, int, torch.device]:
    """torchrun sets RANK / WORLD_SIZE / LOCAL_RANK: NCCL on GPUs, gloo on CPU; else one process."""
    cuda = torch.cuda.is_available() if device_arg is None else device_arg.startswith("cuda")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")
        rank = dist.get_rank()
        device = torch.device("cuda", local) if cuda else torch.device("cpu")
    else:
        rank, device = 0, torch.device("cuda" if cuda else "cpu")
    return rank, world, device


# ----------------------------------------------------------------------------------------------------------------------
# 2. The training epoch: Sec. 3.2, Eq. 1, one optimiser step per iteration
# ----------------------------------------------------------------------------------------------------------------------


def train_one_epoch(run: Run, epoch: int, first_step: int = 0) -> dict:
    """One epoch of OmniSource joint training (Sec. 3.2, Sec. 3.6): one optimiser step per iteration.

    Every iteration takes one mini-batch of each source from run.loader (omnisource.JointBatches): B_T of the
    target and B_A1, B_A2, ... of the auxiliary sources (--ratio sets their sizes, each source's ClassResampler
    its classes, --resample), concatenated on the device in that order. ONE forward on the concatenation gives
    the loss of Eq. 1,
        L = sum_{(x, y) in B_T} CE(F(x; M'), y) + sum_i sum_{(x, y^) in B_Ai} CE(F(x; M'), y^),
    y^ being the pseudo-labels filter.py gave the web samples; omnisource.joint_loss divides it by
    |B_T| + sum_i |B_Ai| (a constant factor: the recipes' LR per sample applies unchanged). With --mixup the
    targets are soft one-hot rows and each sample is mixed with a random partner of the same concatenated batch
    (cross-dataset mixup with --aux, intra-dataset without; Table 9). Then ONE optimiser step on that loss
    (SGD, --clip-grad), never one step per source. Without --aux this is plain training on the target.

    first_step > 0: the epoch resumes at that step of a mid-epoch latest.pth with the same batches and random
    state (set_train_epoch). Returns the epoch's means: loss, and loss_NAME / acc_NAME (training top-1) per source.
    """
    args, model = run.args, run.model
    model.train()
    if run.freeze_bn:                               # norm_eval: running statistics stay fixed
        for m in _batch_norms(model):
            m.eval()
    # every item is a function of (seed, epoch, index): the samplers skip the batches of the steps already done,
    # and the rest of the epoch is the uninterrupted run's (see set_train_epoch)
    set_train_epoch(run, epoch, first_step)
    if run.scaler is None:                          # fp16 loss scaling; a no-op for --amp none / bf16
        run.scaler = torch.amp.GradScaler(run.device.type, enabled=args.amp == "fp16")
    meter, epoch_meter = Meter(run.source_names, run.device, epoch), Meter(run.source_names, run.device, epoch)
    if first_step:                                  # the sums of the steps done before the mid-epoch checkpoint
        checkpoints.restore_meters((meter, epoch_meter), run.resumed_meters, run.device)
    t0 = time.time()
    steps = len(run.loader)
    for step, (clips, labels, sizes) in enumerate(run.loader, start=first_step):
        it = epoch * steps + step
        lr = run.schedule.lr(it)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        # 1. each source's batch (uint8, pinned by its loader) to the device without waiting, concatenated
        #    there as [B_T, B_A1, ...]; float conversion and normalisation on the device (model_input)
        clips = model_input(torch.cat([c.to(run.device, non_blocking=True) for c in clips]), args)
        labels = torch.cat([y.to(run.device, non_blocking=True) for y in labels])   # (B,)
        # 2. targets: the labels, soft one-hot rows after mixup; pseudo-labels for web samples come from filter.py
        targets = labels
        if args.mixup > 0:
            clips, targets = omnisource.mixup(clips, F.one_hot(labels, len(run.classes)).float(), args.mixup,
                                              run.rng)
        # 3. one forward on the concatenated batch in --amp precision; Eq. 1's summed loss in float32
        with models.autocast(args.amp, run.device):
            logits = model(clips)                                    # (sum(sizes), K)
        loss, per_source = omnisource.joint_loss(logits.float(), targets, sizes)
        # 4. ONE optimiser step on the sum. fp16: the loss is scaled for the backward pass and the gradients
        #    unscaled before clipping, so --clip-grad sees true norms; a step whose gradients overflowed is skipped
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        if args.clip_grad > 0:
            run.scaler.unscale_(run.optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        # 5. statistics accumulate on the device: no host sync in the step. They are read, and a non-finite
        #    loss stops the run, once per logging interval (report_progress -> Meter.summary)
        stats = Meter.step_stats(loss, per_source, logits, labels, sizes)
        for m in (meter, epoch_meter):
            m.add(stats, sizes, step)
        if (step + 1) % args.log_interval == 0 or step + 1 == steps:
            report_progress(run, meter, epoch, step, steps, lr, t0)
        # 6. --save-every: latest.pth inside the epoch (its end is saved by main, after validation)
        if args.save_every and (it + 1) % args.save_every == 0 and step + 1 < steps:
            checkpoints.save_checkpoint(run, "latest.pth", epoch, step + 1, meters=(meter, epoch_meter))
    return epoch_meter.summary()


def set_train_epoch(run: Run, epoch: int, first_step: int = 0) -> None:
    """Select epoch `epoch`'s randomness in every dataset and sampler, starting at step `first_step`.

    Resuming part-way through an epoch skips ahead in the samplers (each starts at the index of the batch
    of step `first_step`) instead of replaying the loaders or saving their state (torchdata's
    StatefulDataLoader, a new dependency): every index is a function of (seed, epoch, rank) and every item
    of (seed, epoch, index), so the skipped batches need not be decoded and nothing else is needed to
    continue exactly, whatever the workers had prefetched when the process died.
    """
    for ds in run.datasets:
        ds.set_epoch(epoch)
    run.loader.set_epoch(epoch, first_step)


def model_input(clips: torch.Tensor, args: argparse.Namespace) -> torch.Tensor:
    """Clips as the workers send them, uint8 (N, C, T, H, W) already on the device -> normalised float32
    (transforms.normalize, equal to the float pipeline's output), channels_last_3d with --channels-last
    (TSN's (N*T, C, H, W) reshape of that layout is channels_last)."""
    if clips.dtype == torch.uint8:
        clips = transforms.normalize(clips)
    if args.channels_last:
        clips = clips.contiguous(memory_format=torch.channels_last_3d)
    return clips


class Meter:
    """Running sums of the loss (total and per source) and top-1 per source over a logging interval or an epoch.

    The sums stay ON THE DEVICE, so the training step never waits for the host: one
    vector [loss, loss per source (S), correct per source (S), first non-finite step] per meter. `summary()`
    reads it once (the only host sync of an interval) and raises FloatingPointError when a loss was not
    finite, naming the step and the interval. Samples seen are host integers (the batch sizes are known).
    """

    def __init__(self, names: list[str], device: torch.device, epoch: int = 0):
        self.names, self.device, self.epoch = names, device, epoch
        self.reset()

    def reset(self) -> None:
        s = len(self.names)
        self.sums = torch.zeros(2 + 2 * s, device=self.device)      # float32: exact counts up to 2^24
        self.sums[-1] = -1                                          # 0-based step of the first non-finite loss
        self.seen = [0] * s
        self.steps, self.first_step, self.last_step = 0, None, None
        self.t0 = time.time()

    @staticmethod
    def step_stats(loss: torch.Tensor, per_source: list[torch.Tensor], logits: torch.Tensor, labels: torch.Tensor,
                   sizes: list[int]) -> torch.Tensor:
        """One step's (1 + 2S,) vector on the device: loss, each source's mean CE, each source's correct count."""
        total = sum(sizes)
        source_ce = [l.detach() * (total / n) for l, n in zip(per_source, sizes)]   # back to the source's mean CE
        hits = (logits.detach().argmax(1) == labels).float()                         # (B,)
        return torch.stack([loss.detach().float(), *source_ce, *[h.sum() for h in hits.split(list(sizes))]])

    def add(self, stats: torch.Tensor, sizes: list[int], step: int) -> None:
        finite = torch.isfinite(stats[0])
        self.sums[:-1] += torch.where(finite, stats, 0.0)          # a bad step does not poison the other sums
        self.sums[-1] = torch.where(finite | (self.sums[-1] >= 0), self.sums[-1], float(step))
        self.seen = [a + b for a, b in zip(self.seen, sizes)]
        self.first_step = step if self.first_step is None else self.first_step
        self.steps, self.last_step = self.steps + 1, step

    def summary(self) -> dict:
        vals = self.sums.tolist()                                   # the one host sync per interval
        if vals[-1] >= 0:
            raise FloatingPointError(
                f"non-finite loss at epoch {self.epoch + 1} step {int(vals[-1]) + 1} (logging interval of steps "
                f"{self.first_step + 1}-{self.last_step + 1}); lower --lr-per-sample or check the data")
        n, s = max(1, self.steps), len(self.names)
        out = {"loss": vals[0] / n}
        for i, name in enumerate(self.names):
            out[f"loss_{name}"] = vals[1 + i] / n
            out[f"acc_{name}"] = vals[1 + s + i] / max(1, self.seen[i])
        return out


def report_progress(run: Run, meter: Meter, epoch: int, step: int, steps: int, lr: float, t0: float) -> None:
    """One console line and one log.jsonl object per logging interval (rank 0)."""
    s = meter.summary()                           # first: it waits for the device, so the rates below are true
    elapsed = time.time() - t0                                     # since the epoch started
    rate = sum(meter.seen) * run.world / max(time.time() - meter.t0, 1e-9)   # over this interval
    done = epoch * steps + step + 1
    remaining = (run.schedule.epochs * steps - done) * elapsed / (step + 1)
    failed = failed_samples(run)
    record = dict(kind="train", epoch=epoch + 1, step=step + 1, steps=steps, lr=lr, samples_per_s=rate,
                  eta_s=remaining, failed_samples=failed, **s)
    per = " ".join(f"{n} {s['loss_' + n]:.3f}" for n in run.source_names) if len(run.source_names) > 1 else ""
    if run.rank == 0:
        print(f"epoch {epoch + 1}/{run.schedule.epochs} step {step + 1}/{steps} loss {s['loss']:.4f}"
              + (f" ({per})" if per else "") + f" lr {lr:.3g} {rate:.1f} samples/s eta "
              f"{time.strftime('%H:%M:%S', time.gmtime(remaining))}" + (f" failed {failed}" if failed else ""),
              flush=True)
    log_line(run, record)
    meter.reset()


# ----------------------------------------------------------------------------------------------------------------------
# 3. Evaluation and the final test: top-1, top-5, mean class accuracy (test protocols of Sec. 5.1)
# ----------------------------------------------------------------------------------------------------------------------


def validate(run: Run, epoch: int) -> dict:
    """Quick validation after epoch `epoch` (0-based): centre crop, the training clip count, the whole val split;
    logged. With --select val the best top-1 so far is saved as best.pth (the first of equal ones)."""
    m = evaluate(run, run.val_loader)
    m.pop("confusion_matrix")
    if m["top1"] > run.best_top1:
        run.best_top1, run.best_epoch = m["top1"], epoch + 1
        if run.args.select == "val":
            checkpoints.save_checkpoint(run, "best.pth", epoch + 1)
    return m


def final_test(run: Run) -> dict:
    """The paper's test protocol on the val split -> final.pth, metrics.json, confusion_matrix.csv and
    predictions.jsonl.

    1. the weights (`weights_to_test`): --test: --checkpoint; after training: --select's, written to final.pth
       (weights only, self-describing, what models.load_weights reads) before they are tested, so final.pth is
       exactly what metrics.json reports ("weights": "last" or "best on val (epoch N)");
    2. the test protocol's views (--test-clips x --test-crops) of every val video, then metrics.json last (the
       run's "done" mark).
    """
    args, arch = run.args, run.net.spec
    weights, source = weights_to_test(run)
    if not args.test and run.rank == 0:
        final = {**run.describe(), "weights": weights}
        webscale.write_atomic(Path(args.work_dir) / "final.pth", lambda f: torch.save(final, f))
    crops = args.test_crops or arch.crops_test
    target = data.resolve_dataset(args.data_root, args.target)
    ds = make_dataset(args, target, "val", arch, test_mode=True, protocol=PROTOCOLS[crops],
                      num_clips=args.test_clips or arch.num_clips_test)
    if run.rank == 0:
        print(f"testing {source} on the {len(ds)} val videos of {args.target}", flush=True)
    m = evaluate(run, make_eval_loader(args, ds, run.rank, run.world),
                 predictions=Path(args.work_dir) / "predictions.jsonl")
    m["protocol"] = f"{args.test_clips or arch.num_clips_test} {'segments' if arch.family == 'tsn' else 'clips'}" \
                    f" x {crops} crops"
    m["weights"] = weights
    if run.rank == 0:
        write_results(run, m)
        print(f"test ({m['protocol']}): top1 {m['top1']:.4f}  top5 {m['top5']:.4f}  "
              f"mean_class_acc {m['mean_class_acc']:.4f}" + (f" over the {m['num_videos']} readable videos; "
              f"{m['num_unreadable']} unreadable, left out: {', '.join(m['unreadable'])}" if m["unreadable"] else ""),
              flush=True)
    return m


def weights_to_test(run: Run) -> tuple[str, str]:
    """Load the weights the final test evaluates -> (metrics.json's "weights", the "testing ..." line's words).

    --test: --checkpoint (default WORK_DIR/final.pth). --select last: the weights in memory after the last epoch.
    --select val: best.pth; 1. every rank waits until rank 0 has written it; 2. rank 0 alone decides whether it
    exists and sends the decision, then the weights, to the others. Ranks that each looked for themselves could
    disagree (node-local or NFS-cached work dirs) and then wait in different collectives forever.
    """
    args = run.args
    if args.test:
        ckpt = Path(args.checkpoint) if args.checkpoint else Path(args.work_dir) / "final.pth"
        load_weights_everywhere(run, ckpt)
        return str(ckpt), str(ckpt)
    last = f"the last weights (epoch {run.schedule.epochs}, --select {args.select})"
    if args.select == "last":
        return "last", last
    dist_barrier(run)
    ckpt = Path(args.work_dir) / "best.pth"
    found = [ckpt.exists() if run.rank == 0 else None]
    if run.world > 1:
        dist.broadcast_object_list(found, src=0)
    if not found[0]:                                # deleted by hand: nothing else to choose from
        return "last (no best.pth)", last + f": {ckpt} not found"
    load_weights_everywhere(run, ckpt)
    epoch = f"epoch {run.best_epoch}" if run.best_epoch else "epoch not recorded"   # a latest.pth of an older train.py
    return f"best on val ({epoch})", f"{ckpt}, the best on val ({epoch}, --select val)"


@torch.no_grad()
def evaluate(run: Run, loader: torch.utils.data.DataLoader, predictions: Path | None = None) -> dict:
    """Metrics over the whole val split, reduced over ranks; with `predictions` (a path) also per-video results.

    Each item holds every view of a video, (V, C, T, H, W) with V the crops and T all sampled frames.
    TSN: the features of all views and segments are averaged before the classifier (MMAction2's
    consensus); 3D: the softmax of every clip x crop view is averaged. A batch of videos goes through
    in one forward, in --amp precision; the probabilities stay on the device until the split is done.
    An unreadable video is never replaced by another (make_dataset: replace_failed=False): it is left out of
    the metrics, counted (num_unreadable) and named (unreadable: its paths, over every rank).
    """
    k = len(run.classes)
    probs, labels, used, unreadable = forward_split(run, loader)
    cm = confusion(probs.argmax(1), labels, k)
    top5 = (probs.topk(min(5, k), dim=1).indices == labels[:, None]).any(1).sum().double().reshape(1)
    every_unreadable = [unreadable]
    if run.world > 1:
        dist.all_reduce(cm)
        dist.all_reduce(top5)
        every_unreadable = [None] * run.world
        dist.all_gather_object(every_unreadable, unreadable)
    if predictions is not None:
        write_predictions(run, loader, probs, labels, used, unreadable, Path(predictions))
    run.net.train()
    samples = loader.dataset.samples
    bad = sorted(i for part in every_unreadable for i in part)
    return {**metrics_from(cm.cpu(), top5.cpu()), "num_unreadable": len(bad),
            "unreadable": [str(samples.path(i)) for i in bad]}


@torch.no_grad()
def forward_split(run: Run, loader: torch.utils.data.DataLoader) -> tuple[torch.Tensor, torch.Tensor, list[int],
                                                                          list[int]]:
    """The test protocol's forward over this rank's share of a split (models.predict, in --amp precision) ->
    (probabilities (N, K) and labels (N,) on the device, the N readable videos' indices, the unreadable ones')."""
    run.net.eval()
    probs, labels = [torch.zeros(0, len(run.classes), device=run.device)], [torch.zeros(0, dtype=torch.long)]
    used, unreadable = [], []
    for views, y, u, bad in loader:
        if views is not None:
            probs.append(models.predict(run.net, views.to(run.device, non_blocking=True), run.net.spec,
                                        amp=run.args.amp))                                          # (N, K)
        labels.append(y)
        used += u
        unreadable += bad
    return torch.cat(probs), torch.cat(labels).to(run.device), used, unreadable


def collate_readable(batch: list[tuple]) -> tuple[torch.Tensor | None, torch.Tensor, list[int], list[int]]:
    """An evaluation batch without its unreadable videos (items `(None, label, index)`, data.VideoDataset with
    replace_failed=False) -> (views of the readable ones or None, their labels, their indices, the unreadable's)."""
    readable = [b for b in batch if b[0] is not None]
    views = torch.utils.data.default_collate([b[0] for b in readable]) if readable else None
    return (views, torch.tensor([b[1] for b in readable], dtype=torch.long), [b[2] for b in readable],
            [b[2] for b in batch if b[0] is None])


def write_predictions(run: Run, loader: torch.utils.data.DataLoader, probs: torch.Tensor, labels: torch.Tensor,
                      used: list[int], unreadable: list[int], path: Path) -> None:
    """predictions.jsonl: one JSON line per video of the split, in the split's order (gathered from every
    rank to rank 0): index, path, label, top-5 classes with probabilities, and with --dump-probs the whole
    probability vector (as MMAction2's --dump), so results can be compared video by video. A video that could
    not be read has no prediction: its line says "unreadable": true."""
    k = len(run.classes)
    top_p, top_i = probs.topk(min(5, k), dim=1)
    local = (used, labels.tolist(), top_p.tolist(), top_i.tolist(),
             probs.tolist() if run.args.dump_probs else None, unreadable)
    parts = [local]
    if run.world > 1:
        parts = [None] * run.world
        dist.all_gather_object(parts, local)
    if run.rank != 0:
        return
    samples = loader.dataset.samples
    lines = {}
    for indices, y, ps, cs, full, bad in parts:
        for n, (index, label) in enumerate(zip(indices, y)):
            lines[index] = {"index": index, "path": str(samples.path(index)), "label": label,
                            "top5": [{"class": c, "name": run.classes[c], "prob": p} for c, p in zip(cs[n], ps[n])]}
            if label < 0:                           # --predict: a video of unknown class
                del lines[index]["label"]
            if full is not None:
                lines[index]["probs"] = full[n]
        for index in bad:
            lines[index] = {"index": index, "path": str(samples.path(index)), "label": int(samples.labels[index]),
                            "unreadable": True}
            if samples.labels[index] < 0:
                del lines[index]["label"]
    webscale.write_atomic(path, "".join(json.dumps(lines[i]) + "\n" for i in sorted(lines)))


def predict(args: argparse.Namespace, rank: int, world: int, device: torch.device) -> dict:
    """--predict: each video's top-5 classes with --checkpoint (default WORK_DIR/final.pth), printed and written to
    WORK_DIR/predictions.jsonl in --test's format (without a label), with --test's protocol and code (evaluate's
    forward, write_predictions): the top-1 of a val video is --test's. A file that cannot be read is one warning
    line and an "unreadable" line; the others are predicted. -> {path: top-5 [(name, probability)]}."""
    ckpt = Path(args.checkpoint) if args.checkpoint else Path(args.work_dir) / "final.pth"
    net, classes = predictor(args, ckpt)
    net = net.to(device).eval()
    args.amp = args.amp or models.default_amp(device)
    arch = net.spec
    run = Run(args, net, net, classes, None, None, None, None, [], [], device, rank, world)
    crops = args.test_crops or arch.crops_test
    samples = [webscale.Sample(Path(v), -1, "video") for v in args.predict]
    ds = make_dataset(args, None, "val", arch, test_mode=True, protocol=PROTOCOLS[crops],
                      num_clips=args.test_clips or arch.num_clips_test, samples=samples)
    loader = make_eval_loader(args, ds, rank, world)
    probs, labels, used, unreadable = forward_split(run, loader)
    out = Path(args.work_dir) / "predictions.jsonl"
    write_predictions(run, loader, probs, labels, used, unreadable, out)
    if rank != 0:
        return {}
    top = {}
    for line in map(json.loads, out.read_text().splitlines()):
        if "top5" in line:
            top[line["path"]] = [(p["name"], p["prob"]) for p in line["top5"]]
            print(f"{line['path']}: " + ", ".join(f"{n} {p:.3f}" for n, p in top[line["path"]]), flush=True)
    print(f"predicted {len(top)} of {len(samples)} videos with {ckpt} -> {out}", flush=True)
    return top


def predictor(args: argparse.Namespace, ckpt: Path) -> tuple[torch.nn.Module, list[str]]:
    """--predict's model and class names: a train.py checkpoint rebuilds its own architecture with its classes;
    any other format (models.load_weights) is --arch with the names it carries, else those of --classes FILE or
    of --target (one line says which)."""
    if not ckpt.exists():
        raise FileNotFoundError(f"--checkpoint {ckpt} not found")
    try:
        net = models.from_checkpoint(ckpt)
        return net, net.classes
    except ValueError:                              # not train.py's: MMAction2, torchvision, bare state dict
        pass
    if args.classes:
        classes, where = data.read_classes(args.classes), f"--classes {args.classes}"
    else:
        classes, where = data.resolve_dataset(args.data_root, args.target).classes, f"--target {args.target}"
    net = models.build_model(args.arch, len(classes), **model_overrides(args))
    report = models.load_weights(net, ckpt)
    if report.classes is not None:
        return net, list(report.classes)
    print(f"{ckpt} ({report.format}) carries no class names: its {len(classes)} outputs are read as the classes "
          f"of {where} in that order ({data._preview(classes)})", flush=True)
    return net, classes


def write_results(run: Run, m: dict) -> None:
    """Rank 0: confusion_matrix.csv, then metrics.json (the run's "done" mark), both written atomically."""
    work = Path(run.args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    cm = m.pop("confusion_matrix")
    m.update(arch=run.args.arch, target=run.args.target, aux=split_names(run.args.aux), classes=run.classes)
    rows = [name + "," + ",".join(str(v) for v in row) for name, row in zip(run.classes, cm)]
    webscale.write_atomic(work / "confusion_matrix.csv", "\n".join(["true\\pred," + ",".join(run.classes), *rows]) + "\n")
    webscale.write_atomic(work / "metrics.json", json.dumps(m, indent=2) + "\n")     # last: the run's "done" mark
    m["confusion_matrix"] = cm


def export(run: Run) -> dict:
    """--export-mmaction: our checkpoint -> MMAction2 1.x layout (models.mmaction_checkpoint), written atomically."""
    ckpt = Path(run.args.checkpoint) if run.args.checkpoint else Path(run.args.work_dir) / "final.pth"
    if run.rank == 0:
        print(f"exporting {ckpt} ({run.args.arch}, {len(run.classes)} classes of {run.args.target}) to "
              f"{run.args.export_mmaction}", flush=True)
    load_weights_everywhere(run, ckpt)
    if run.rank == 0:
        mm = models.mmaction_checkpoint(run.net, run.classes)
        webscale.write_atomic(run.args.export_mmaction, lambda f: torch.save(mm, f))
        print(f"wrote {run.args.export_mmaction} (MMAction2 1.x layout) from {ckpt}", flush=True)
    return {}


# ----------------------------------------------------------------------------------------------------------------------
# 4. Schedule (appendix "Implementation Details")
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Schedule:
    base_lr: float
    epochs: int
    steps_per_epoch: int
    kind: str                   # 'step' | 'cosine'
    lr_steps: tuple             # epochs where the LR is multiplied by 0.1
    warmup_epochs: float

    @staticmethod
    def from_args(args: argparse.Namespace, recipe: dict, steps_per_epoch: int, samples_per_step: int) -> Schedule:
        """The recipe, overridden by the flags given; milestones and warm-up scale with --epochs."""
        epochs = args.epochs or recipe["epochs"]
        scale = epochs / recipe["epochs"]          # keep milestones at the same fraction of training
        if args.lr_steps is not None:
            lr_steps = tuple(int(s) for s in args.lr_steps.split(",") if s.strip())
        else:
            lr_steps = tuple(round(s * scale) for s in recipe["lr_steps"])
        warmup = args.warmup_epochs if args.warmup_epochs is not None else recipe["warmup_epochs"] * scale
        per_sample = recipe["lr_per_sample"] if args.lr_per_sample is None else args.lr_per_sample
        return Schedule(per_sample * samples_per_step, epochs, steps_per_epoch,
                        args.schedule or recipe["schedule"], lr_steps, warmup)

    def lr(self, it: int) -> float:
        """Learning rate at iteration `it` (0-based, counted over all epochs)."""
        epoch = it / self.steps_per_epoch
        # 1. linear warm-up from 0 to the base LR
        if epoch < self.warmup_epochs:
            return self.base_lr * epoch / self.warmup_epochs
        # 2. step schedule: x0.1 at every milestone passed
        if self.kind == "step":
            return self.base_lr * 0.1 ** sum(epoch >= s for s in self.lr_steps)
        # 3. cosine from the base LR to 0 over the epochs after warm-up
        progress = (epoch - self.warmup_epochs) / max(1e-8, self.epochs - self.warmup_epochs)
        return 0.5 * self.base_lr * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def describe(self) -> str:
        """One line for the run's summary, e.g. "100 epochs x 10 steps, lr 0.01 step x0.1 at [40, 80]"."""
        extra = f" x0.1 at {list(self.lr_steps)}" if self.kind == "step" else ""
        warm = f", {self.warmup_epochs:g} warm-up epochs" if self.warmup_epochs else ""
        return f"{self.epochs} epochs x {self.steps_per_epoch} steps, lr {self.base_lr:.4g} {self.kind}{extra}{warm}"


def make_optimizer(args: argparse.Namespace, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """--optimizer with --weight-decay: by default SGD with --momentum 0.9 and weight decay 1e-4, the paper's for
    every architecture (the recipes set the schedule, not the optimiser); adamw: decoupled weight decay."""
    if args.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=args.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=args.momentum, weight_decay=args.weight_decay)


def recipe_for(args: argparse.Namespace, arch: models.ArchSpec) -> dict:
    """TSN -> 'tsn'; SlowOnly -> '3d_imagenet' with initial weights (--pretrained or --checkpoint), '3d_scratch'
    without; irCSN, tiny: their own."""
    if arch.recipe in ("tsn", "demo", "ircsn_ig65m"):
        return RECIPES[arch.recipe]
    return RECIPES["3d_imagenet" if (args.pretrained or args.checkpoint) else "3d_scratch"]


# ----------------------------------------------------------------------------------------------------------------------
# 5. Data: datasets, samplers and loaders of every source (Sec. 3.5, Sec. 3.6)
# ----------------------------------------------------------------------------------------------------------------------


def make_training_data(args: argparse.Namespace, target: data.DatasetSpec, arch: models.ArchSpec, rank: int,
                       world: int) -> tuple[list[data.VideoDataset], omnisource.JointBatches, list[int],
                                            torch.utils.data.DataLoader]:
    """-> (the training datasets [target, aux...], their joint loader, the batch sizes, the val loader).

    1. the target's training list (--label-fraction of it);
    2. every --aux source's, its labels translated into the target's classes by name (the released web sources
       are labelled with K200's 200 classes, in k200_actions.txt order; the target may be K400);
    3. the joint loader (Sec. 3.6: batch ratio, class resampling) and the quick validation's loader (centre crop).
    """
    samples = data.load_split(target, "train")
    if args.label_fraction < 1.0:
        samples = label_fraction(samples, args.label_fraction, args.seed)
    train_ds = make_dataset(args, target, "train", arch, test_mode=False, samples=samples)
    aux = []
    for name in split_names(args.aux):
        source = data.resolve_dataset(args.data_root, name)
        aux.append(make_dataset(args, source, "train", arch, test_mode=False,
                                samples=aux_samples(source, target, f"--aux {name}", rank)))
    loader, sizes = make_train_loader(args, train_ds, aux, rank, world)
    val_ds = make_dataset(args, target, "val", arch, test_mode=True, protocol="center")
    return [train_ds] + aux, loader, sizes, make_eval_loader(args, val_ds, rank, world)


def make_dataset(args: argparse.Namespace, dataset: data.DatasetSpec | None, split: str, arch: models.ArchSpec,
                 test_mode: bool, protocol: str = "center", num_clips: int | None = None,
                 samples: webscale.SampleList | list | None = None) -> data.VideoDataset:
    """A data.VideoDataset over one split of `dataset` (or the given `samples` of it), sampling frames as the
    architecture `arch` expects.

    Train: TSN draws num_segments single frames (clip_len 1), 3D one clip of clip_len x frame_interval.
    Test: num_clips clips (3D) or segments (TSN), every crop of the protocol.
    Items are uint8 (normalised on the device: model_input, models.predict): 4x fewer bytes between processes.
    """
    if test_mode:
        clips = num_clips or (arch.num_clips_train if arch.family == "tsn" else 1)
        transform = transforms.test_transform(arch.family, arch.crop_size, protocol, uint8=True)
    else:
        clips = arch.num_clips_train
        transform = transforms.train_transform(arch.family, arch.crop_size, uint8=True)
    sampling = data.Sampling(clip_len=arch.clip_len, frame_interval=arch.frame_interval, num_clips=clips)
    samples = data.load_split(dataset, split) if samples is None else samples
    # web images: JPEGs decoded reduced to about the pipeline's short side (draft mode), resized once, then
    # inflated into clips (Sec. 3.5; --inflate in training, still clips in testing); crawled images are often
    # 1-12 megapixels
    short_side = transforms.short_side_for(arch.crop_size)
    image_to_clip = transforms.image_to_clip                    # never called: the split holds no image
    if "image" in webscale.kind_names(samples):
        image_to_clip = make_image_to_clip(args, "still" if test_mode else args.image_to_clip, short_side, arch)
    # Table 14: untrimmed videos scored frame by frame by filter.py become TSN snippets of one frame per segment
    snippet = None
    if not test_mode and arch.family == "tsn":
        snippet = functools.partial(transforms.select_snippet, mode=args.snippet, num_frames=clips)
    # training replaces an unreadable sample by another (dirty web data); evaluation never scores one video
    # under another's label: it leaves the unreadable one out and counts it (evaluate)
    return data.VideoDataset(samples, sampling, test_mode=test_mode, transform=transform,
                             image_to_clip=image_to_clip, seed=args.seed, snippet=snippet,
                             image_short_side=short_side, replace_failed=not test_mode)


def make_image_to_clip(args: argparse.Namespace, mode: str, short_side: int, arch: models.ArchSpec) -> Callable:
    """Sec. 3.5, Eq. 2, Table 8: how a still image becomes a clip (an --image-to-clip mode; the warps read --motion),
    after resizing it to `short_side`: transforms.image_to_clip.
    A motion file fitted at another stride than `arch` samples frames (omnisource.motion_stride) is refused: each
    of its steps would move the image by another amount than real clips of this network move per frame."""
    motion = None
    if mode.startswith("warp"):
        path = Path(args.motion) if args.motion else data.motion_path(data.resolve_dataset(args.data_root, args.target))
        fit = (f"python omnisource.py --estimate-motion --data-root {args.data_root} --target {args.target} "
               f"--arch {args.arch}")
        if not path.exists():
            raise FileNotFoundError(f"--image-to-clip {mode} needs the camera-motion file {path}: fit it with "
                                    f"`{fit}` (or give --motion, or --image-to-clip still)")
        motion = transforms.HomographyGaussian.load(path)
        stride = omnisource.motion_stride(arch)
        if motion.stride != stride:
            fitted = motion.stride or "unknown (the file records none)"
            raise ValueError(f"--motion {path} was fitted at a stride of {fitted}, but the frames --arch "
                             f"{args.arch} samples lie {stride} apart: fit it again with `{fit}`")
    return transforms.build_image_to_clip(mode, motion, short_side=short_side)


def make_train_loader(args: argparse.Namespace, target_ds: data.VideoDataset, aux: list[data.VideoDataset], rank: int,
                      world: int) -> tuple[omnisource.JointBatches, list[int]]:
    """Target loader (shuffled, sharded over ranks, drop_last) + one resampled loader per aux source."""
    sizes = omnisource.batch_sizes(args.batch_size, omnisource.parse_ratio(args.ratio, len(aux)))
    sampler = ShardedShuffle(len(target_ds), rank, world, args.seed)
    target_loader = loader_for(args, target_ds, sampler, sizes[0], drop_last=True, seed=(args.seed, rank, 0))
    if len(target_loader) == 0:
        raise ValueError(f"--batch-size {args.batch_size} x {world} rank(s) is larger than the {len(target_ds)} "
                         f"training videos of --target {args.target}")
    rules = omnisource.resample_rules(args.resample, len(aux))
    samplers, aux_loaders = [sampler], []
    for i, (ds, size, rule) in enumerate(zip(aux, sizes[1:], rules), start=1):
        s = omnisource.ClassResampler(webscale.labels_of(ds.samples), len(target_loader) * size, rule,
                                      seed=args.seed, rank=rank)
        samplers.append(s)
        aux_loaders.append(loader_for(args, ds, s, size, drop_last=True, seed=(args.seed, rank, i)))
    return omnisource.JointBatches(target_loader, aux_loaders, samplers), sizes


def loader_for(args: argparse.Namespace, ds: data.VideoDataset, sampler: torch.utils.data.Sampler, batch_size: int,
               drop_last: bool, seed: tuple[int, ...]) -> torch.utils.data.DataLoader:
    """Training loader. Persistent workers: no process start-up per epoch (it dominates the short epochs of
    small datasets), and a broken web file is reported and skipped once per worker, not once per epoch; the
    epoch's randomness reaches them through VideoDataset's shared-memory epoch.

    The loader has its own generator, seeded by `seed` = (--seed, rank, source). A DataLoader draws its workers'
    base seed when it starts them, from the GLOBAL torch RNG unless given a generator. With persistent workers
    that happens once per process: a --resume'd process drew once more than the run it continues, after the
    RNG state was restored, and every dropout mask from then on differed.
    No item depends on that base seed (VideoDataset draws from (seed, epoch, index)); the global RNG is now
    the model's alone.
    """
    generator = torch.Generator().manual_seed(_derive_seed(*seed, 23))
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=args.workers,
                                       drop_last=drop_last, pin_memory=pin_memory(args),
                                       persistent_workers=args.workers > 0, generator=generator)


def make_eval_loader(args: argparse.Namespace, ds: data.VideoDataset, rank: int, world: int,
                     batch_size: int | None = None) -> torch.utils.data.DataLoader:
    """This rank's share of the split, in order; batches of --eval-batch-size videos (less the unreadable ones,
    collate_readable), pinned for a GPU."""
    sampler = list(range(rank, len(ds), world))     # every video exactly once over all ranks
    return torch.utils.data.DataLoader(ds, batch_size=batch_size or args.eval_batch_size or args.batch_size,
                                       sampler=sampler, num_workers=args.workers, pin_memory=pin_memory(args),
                                       collate_fn=collate_readable)


class ShardedShuffle(torch.utils.data.Sampler):
    """The target sampler: one permutation per (seed, epoch), rank r takes positions r, r+W, ...

    Unlike DistributedSampler it never pads with repeated samples; ranks get len // W samples each.
    """

    def __init__(self, n: int, rank: int, world: int, seed: int):
        self.n, self.rank, self.world, self.seed, self.epoch, self.start = n, rank, world, seed, 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation; `start` > 0 skips this rank's first `start` indices (--resume)."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.n // self.world          # the whole epoch's, also when it starts part-way

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch, 11]).permutation(self.n)
        return iter(order[self.rank: len(self) * self.world: self.world][self.start:].tolist())


def label_fraction(samples: webscale.SampleList | list, fraction: float, seed: int) -> webscale.SampleList | list:
    """Fig. 7: a class-balanced fraction of the labelled videos (at least one per class), fixed by seed."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--label-fraction {fraction}: expected a number in (0, 1]")
    rng = np.random.default_rng([seed, 5])
    by_class = {}
    for i, label in enumerate(webscale.labels_of(samples)):
        by_class.setdefault(int(label), []).append(i)
    keep = []
    for idx in by_class.values():
        keep += list(rng.permutation(idx)[: max(1, round(fraction * len(idx)))])
    keep = sorted(keep)
    return samples.subset(np.asarray(keep)) if isinstance(samples, webscale.SampleList) else [samples[i] for i in keep]


def aux_samples(source: data.DatasetSpec, target: data.DatasetSpec, name: str, rank: int) -> webscale.SampleList:
    """An auxiliary source's training list with labels in the target's label space, matched by class name
    (data.map_labels); one printed line says how many samples were left out (class not in the target).
    A source that shares no class name with the target is a one-line error."""
    samples, left_out = data.map_labels(data.load_split(source, "train"), source.classes, target.classes, name)
    if rank == 0:
        print(f"{name}: {len(samples)} samples, labels mapped by class name onto the {len(target.classes)} "
              f"classes of {target.name}; {left_out} left out (class not in {target.name})", flush=True)
    if not len(samples):
        raise ValueError(f"{name}: none of its samples belongs to a class of {target.name}")
    return samples


# ----------------------------------------------------------------------------------------------------------------------
# Machinery: a reader of the method may stop here. Below: checkpoints (formats, atomic writes, exact resume with
# every rank's random state), the one-line refusals of --resume and of a used --work-dir, the class-name matching
# of loaded weights, and the helpers. None of it is a step of the method.
# ----------------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------------
# 6. Checkpoints: self-describing, written atomically; exact resume
# ----------------------------------------------------------------------------------------------------------------------


def start_or_resume(run: Run) -> None:
    """--resume: continue from WORK_DIR/latest.pth when it exists (weights, optimiser, position, random state);
    a run killed before its first checkpoint starts over. Otherwise --checkpoint's weights, when given."""
    args = run.args
    latest = Path(args.work_dir) / "latest.pth"
    if args.resume and latest.exists():
        load_checkpoint(run, latest, full=True)
    else:
        if args.resume and run.rank == 0:
            print(f"--resume: no {latest} yet, starting from the beginning", flush=True)
            (Path(args.work_dir) / "log.jsonl").unlink(missing_ok=True)
        if args.checkpoint:
            load_checkpoint(run, Path(args.checkpoint), full=False)
    if run.rank == 0:
        Path(args.work_dir).mkdir(parents=True, exist_ok=True)


def load_checkpoint(run: Run, path: Path, full: bool) -> None:
    """Weights from any checkpoint format (models.load_weights); with full=True (--resume, our own
    latest.pth) also the optimiser, epoch, best top-1 and RNG state."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found" + (" (--resume needs a previous run in "
                                "--work-dir)" if full else ""))
    if not full:
        finetune = run.args.finetune and not run.args.test
        report = models.load_weights(run.net, path, finetune=finetune)
        if run.rank == 0 and report.format != "train.py":
            print(f"loaded {path} ({report.format}): {report.summary().splitlines()[0]}", flush=True)
        if not finetune:                            # a fresh classifier has no classes to match
            match_classes(run, report.classes, f"{path} ({report.format})")
        return
    state = torch.load(path, map_location="cpu", weights_only=True)     # our own file; no arbitrary pickle
    checkpoints.check_resume_args(state.get("args", {}), run.args, path)
    if list(state.get("classes", run.classes)) != list(run.classes):
        raise ValueError(f"--resume: {path} was trained on other classes than the {len(run.classes)} of "
                         f"--target {run.args.target} now ({data._preview(state['classes'])} vs "
                         f"{data._preview(run.classes)}); give another --work-dir")
    run.net.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        run.scaler = torch.amp.GradScaler(run.device.type, enabled=run.args.amp == "fp16")
        run.scaler.load_state_dict(state["scaler"])
    run.start_epoch, run.start_step = state["epoch"], state.get("step", 0)
    run.best_top1, run.best_epoch = state.get("best_top1", -1.0), state.get("best_epoch", 0)
    run.resumed_meters = state.get("meters", [])
    rng, world = state["rng"], state.get("world", 1)
    if isinstance(rng, dict):                      # written before per-rank states: rank 0's for every rank
        rng = [rng] * run.world
    if world == run.world:
        checkpoints.set_rank_rng_state(run, rng[run.rank])
    else:
        # another number of ranks shards the epoch differently: the part-done epoch restarts from its first
        # step and the ranks keep their fresh (seed, rank) streams; the run continues, no longer exactly
        if run.rank == 0:
            print(f"note: {path} was written by {world} rank(s), this run has {run.world}: random streams "
                  f"start afresh and epoch {run.start_epoch + 1} restarts from its first step", flush=True)
        run.start_step, run.resumed_meters = 0, []
    log = Path(run.args.work_dir) / "log.jsonl"
    if run.rank == 0 and log.exists() and log.stat().st_size > state.get("log_bytes", math.inf):
        with open(log, "r+b") as f:                # lines of the steps that will now be repeated
            f.truncate(state["log_bytes"])
    if run.rank == 0:
        print(f"resumed from {path}: {run.start_epoch} epoch(s)"
              + (f" and {run.start_step} step(s)" if run.start_step else "") + " done", flush=True)


def match_classes(run: Run, checkpoint_classes: list[str] | None, where: str) -> None:
    """Read a checkpoint's outputs against the dataset's classes by name (data.class_order): the same names in
    another order permute the classifier's rows (fc), other names are a one-line error; a checkpoint without
    names (MMAction2's, bare state dicts) is read in the dataset's class order, and one line says so."""
    if checkpoint_classes is None:
        if run.rank == 0:
            print(f"{where} carries no class names: its {len(run.classes)} outputs are read as the classes of "
                  f"--target {run.args.target} in its class-list order ({data._preview(run.classes)})", flush=True)
        return
    order = data.class_order(checkpoint_classes, run.classes, where)
    if (order != np.arange(len(order))).any():
        fc = run.net.fc
        with torch.no_grad():
            fc.weight.copy_(fc.weight[torch.from_numpy(order)])
            fc.bias.copy_(fc.bias[torch.from_numpy(order)])
        if run.rank == 0:
            print(f"{where}: its classes are those of --target {run.args.target} in another order; its outputs "
                  f"are mapped by name",
                  flush=True)


def load_weights_everywhere(run: Run, path: Path) -> None:
    """Rank 0 reads the weights at `path` (any format, load_checkpoint) and sends them to the other ranks,
    which need not see the file; a missing or unusable file is the same one-line error on every rank."""
    error = None
    if run.rank == 0:
        try:
            load_checkpoint(run, path, full=False)
        except (ValueError, FileNotFoundError) as err:
            error = err
    if run.world > 1:
        box = [None if error is None else (isinstance(error, FileNotFoundError), str(error))]
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None:
            raise (FileNotFoundError if box[0][0] else ValueError)(box[0][1])
        for tensor in run.net.state_dict().values():
            flat = tensor.contiguous()              # a channels_last weight is sent as a dense copy
            dist.broadcast(flat, src=0)
            if flat.data_ptr() != tensor.data_ptr():
                tensor.copy_(flat)
    elif error is not None:
        raise error


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------


def split_names(text: str) -> list[str]:
    """A comma-separated flag value -> its non-empty names (--aux)."""
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


def dist_barrier(run: Run) -> None:
    if run.world > 1:
        dist.barrier()


def failed_samples(run: Run) -> int:
    """Samples that failed to load so far, summed over every source and rank (one all-reduce per log line)."""
    failed = torch.tensor([sum(ds.num_failed for ds in run.datasets)], dtype=torch.int64)
    if run.world > 1:
        failed = failed.to(run.device)
        dist.all_reduce(failed)
    return int(failed.item())


def seed_rank(seed: int, rank: int) -> None:
    """Each rank's own torch (CPU and every CUDA device) and python streams, from (seed, rank)."""
    torch.manual_seed(_derive_seed(seed, rank, 17))
    random.seed(_derive_seed(seed, rank, 19))


def _derive_seed(*key: int) -> int:
    """A 63-bit seed from a tuple of integers (numpy's SeedSequence hashing: nearby keys, unrelated seeds)."""
    return int(np.random.SeedSequence(list(key)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _batch_norms(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def default_channels_last(device: torch.device, amp: str) -> bool:
    """--channels-last when not given: on for CUDA (tensor-core convolutions want NHWC); on CPU on for bf16 only
    (oneDNN; one training step of TSN-R50 / SlowOnly-R50, alternated, two sessions: bf16 1.20-1.45x / 1.15-1.30x
    faster channels-last; float32 0.90-1.20x / 0.91-1.02x, no consistent gain)."""
    return device.type == "cuda" or amp == "bf16"


def pin_memory(args: argparse.Namespace) -> bool:
    """Loaders pin their batches (page-locked memory: the copies to the GPU do not wait) on a CUDA run only."""
    return torch.cuda.is_available() and (args.device or "cuda").startswith("cuda")


def log_line(run: Run, record: dict) -> None:
    """Rank 0 appends one JSON object to WORK_DIR/log.jsonl."""
    if run.rank == 0:
        with open(Path(run.args.work_dir) / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


def confusion(pred: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(K, K) counts, rows = true class, columns = predicted class."""
    return torch.bincount(labels * k + pred, minlength=k * k).view(k, k).double()


def metrics_from(cm: torch.Tensor, top5: torch.Tensor) -> dict:
    """top1, top5, mean_class_acc (over the classes with videos), num_videos and the confusion matrix."""
    total = cm.sum().item()
    per_class = (cm.diag() / cm.sum(1).clamp(min=1))[cm.sum(1) > 0]
    return {"top1": cm.diag().sum().item() / max(1, total), "top5": top5.item() / max(1, total),
            "mean_class_acc": per_class.mean().item() if len(per_class) else 0.0,
            "num_videos": int(total), "confusion_matrix": cm.long().tolist()}


if __name__ == "__main__":
    cli()
