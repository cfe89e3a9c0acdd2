"""Train and test a video classifier, alone (the teacher, the baseline) or jointly with OmniSource web data.

    python train.py                                          # embedded demo: tsn_tiny on generated data
    python train.py --data-root data --target k400 --arch tsn_r50 --pretrained resnet50.pth
    python train.py --target k400 --aux gg,ig-vid --ratio 2:1:1           # OmniSource joint training
    torchrun --nproc_per_node 8 train.py --target k400 --arch slowonly_r50_4x16 ...
    python train.py --target k400 --arch tsn_r50 --checkpoint final.pth --test
    python train.py --predict a.mp4 b.mp4 --checkpoint work_dirs/synth_tsn_tiny/final.pth    # top-5 of each video

In this file's order: setup; the training step of Sec. 3.2, Eq. 1 (`train_one_epoch`); the final test with the
paper's protocol (Sec. 5.1); the appendix's recipes; the data of every source (Sec. 3.5, 3.6); the command line.
Outputs in --work-dir: log.jsonl, latest.pth, final.pth (the weights tested), metrics.json, confusion_matrix.csv,
predictions.jsonl, curves.png, confusion.png. Killed and run again with --resume, a run ends as an uninterrupted one,
bit for bit (checkpoints.py). Workers send uint8 clips, normalised on the device; the step never waits for the host.
Global state: torch's and python's random streams (seeded per rank) and torch.distributed's process group.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import random
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

# The paper's recipes (appendix "Implementation Details"), chosen by `recipe_for` from the architecture's family and
# its initial weights; with SGD (momentum 0.9, weight decay 1e-4) and gradients clipped at norm 40 (the flags'
# defaults). Base LR = lr_per_sample x samples per optimiser step over all ranks and sources. freeze_bn: irCSN only.
RECIPES = {
    "tsn": dict(lr_per_sample=4e-5, epochs=100, schedule="step", lr_steps=(40, 80), warmup_epochs=0),
    "3d_imagenet": dict(lr_per_sample=1.6e-4, epochs=150, schedule="step", lr_steps=(90, 130), warmup_epochs=0),
    "3d_scratch": dict(lr_per_sample=1.6e-3, epochs=256, schedule="cosine", lr_steps=(), warmup_epochs=34),
    "ircsn_ig65m": dict(lr_per_sample=5e-6, epochs=58, schedule="step", lr_steps=(32, 48), warmup_epochs=16,
                        freeze_bn=True),
    # not the paper's: the tiny demo nets (models.py *_tiny) learn the generated data from scratch in minutes
    "demo": dict(lr_per_sample=1e-3, epochs=100, schedule="cosine", lr_steps=(), warmup_epochs=1),
}
PROTOCOLS = {1: "center", 3: "three_crop", 10: "ten_crop"}     # --test-crops -> transforms.test_transform's protocol


# ----------------------------------------------------------------------------------------------------------------------
# 1. Setup: everything a run needs, built once
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything a run holds, built once by `setup`, and the training state that changes."""
    args: argparse.Namespace
    model: torch.nn.Module          # the training model: DDP-wrapped when distributed, compiled with --compile
    net: torch.nn.Module            # the bare model (checkpoints, evaluation)
    classes: list[str]
    optimizer: torch.optim.Optimizer | None         # None with --test / --export-mmaction / --predict
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
    resumed_meters: list = field(default_factory=list)   # that checkpoint's meter sums
    best_top1: float = -1.0
    best_epoch: int = 0             # the epoch of best_top1 (1-based; 0: none yet)
    val_every: int = 1
    freeze_bn: bool = False
    rng: np.random.Generator = field(default_factory=np.random.default_rng)    # mixup's
    scaler: torch.amp.GradScaler | None = None      # --amp fp16 loss scaling (made by the first epoch)

    def describe(self) -> dict:
        """What makes a checkpoint self-describing (models.load_weights, models.from_checkpoint)."""
        return {"model": self.net.state_dict(), "arch": self.args.arch, "model_args": model_overrides(self.args),
                "spec": vars(self.net.spec), "classes": self.classes}


def main(args: argparse.Namespace) -> dict:
    """One run: --predict, --export-mmaction, --test, or training epochs followed by the final test -> the final
    test's metrics ({} with --export-mmaction; {path: top-5} with --predict)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")     # data.py's warnings
    warnings.filterwarnings("ignore", message=".*(TypedStorage|pin_memory).*")
    rank, world, device = setup_distributed(args.device)
    training = not (args.test or args.export_mmaction or args.predict)
    settled = omnisource.demo_settings_line(args, None if training else ["arch"])
    if settled and rank == 0:
        print(settled, flush=True)
    if args.work_dir is None:
        args.work_dir = str(Path("work_dirs") / f"{args.target}_{args.arch}")
    if args.predict:                                # needs no dataset: the classes are the checkpoint's
        result = predict(args, rank, world, device)
    else:
        if rank == 0:                               # the embedded demo's data, generated once when missing
            synthetic.ensure_demo_data(args.data_root, args.target)
        if world > 1:
            dist.barrier()
        if training and not args.resume:
            checkpoints.refuse_used_work_dir(Path(args.work_dir))
        run = setup(args, rank, world, device)
        if args.export_mmaction:
            result = export(run)
        elif args.test:
            result = final_test(run)
        else:
            for epoch in range(run.start_epoch, run.schedule.epochs):
                stats = train_one_epoch(run, epoch, first_step=run.start_step if epoch == run.start_epoch else 0)
                if (epoch + 1) % run.val_every == 0 or epoch + 1 == run.schedule.epochs:
                    stats["val"] = validate(run, epoch)
                # the epoch's log line before latest.pth, which records the log's length: a run killed in between
                # repeats the epoch and --resume first cuts the log back, so every line is written once
                log_line(run, dict(kind="epoch", epoch=epoch + 1, **stats))
                checkpoints.save_checkpoint(run, "latest.pth", epoch + 1)
            result = final_test(run)
            if rank == 0:                           # curves.png, confusion.png beside the run's outputs
                figures.train_figures(args.work_dir, result)
    if dist.is_initialized():   # every rank done with every collective before any tears its connections down
        dist.barrier()
        dist.destroy_process_group()
    return result


def setup(args: argparse.Namespace, rank: int, world: int, device: torch.device) -> Run:
    """Model, datasets, loaders, schedule, optimiser; then --resume or --checkpoint. With --test or --export-mmaction
    only the model: they read the val split or the checkpoint, never the training lists."""
    target = data.resolve_dataset(args.data_root, args.target)
    # 1. the initial weights: seeded by --seed alone, the same on every rank
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    model = build(args, len(target.classes), device)
    # 2. then each rank its own random streams from (seed, rank): torch's (dropout, on CPU and every GPU), python's,
    #    numpy's run.rng (mixup), so that ranks do not draw identical dropout masks
    torch.manual_seed(derive_seed(args.seed, rank, 17))
    random.seed(derive_seed(args.seed, rank, 19))
    names = [args.target] + split_names(args.aux)
    if args.test or args.export_mmaction:
        return Run(args, model, model, target.classes, None, None, None, None, names, [], device, rank, world)
    # 3. every source's training list and loader, the quick validation's loader
    datasets, loader, sizes, val_loader = make_training_data(args, target, model.spec, rank, world)
    # 4. the architecture's recipe: the schedule (LR linear in the samples per step over all ranks), the optimiser
    recipe = recipe_for(args, model.spec)
    freeze_bn = recipe.get("freeze_bn", False) if args.freeze_bn is None else args.freeze_bn
    if freeze_bn:                                   # bn_frozen: scale and shift are not trained
        for m in batch_norms(model):
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
    run = Run(args, model, net, target.classes, optimizer, schedule, loader, val_loader, names, datasets, device,
              rank, world, rng=np.random.default_rng([args.seed, rank, 3]),
              val_every=args.val_every or max(1, schedule.epochs // 10), freeze_bn=freeze_bn)
    # 6. --resume: all of latest.pth (checkpoints.resume_train_state; none yet: a fresh start); else --checkpoint
    if not (args.resume and checkpoints.resume_train_state(run)) and args.checkpoint:
        load_weights(run, Path(args.checkpoint), finetune=args.finetune)
    if rank == 0:
        Path(args.work_dir).mkdir(parents=True, exist_ok=True)
        print(f"{args.arch} on {args.target} ({len(run.classes)} classes, {len(datasets[0].samples)} training videos"
              + "".join(f", {n}: {len(d.samples)}" for n, d in zip(run.source_names[1:], datasets[1:]))
              + f"), batch {'+'.join(map(str, sizes))} x {world} rank(s), {schedule.describe()}", flush=True)
    return run


def build(args: argparse.Namespace, num_classes: int, device: torch.device) -> torch.nn.Module:
    """The model on the device; settles --amp and --channels-last (their defaults depend on the device)."""
    model = models.build_model(args.arch, num_classes, pretrained=args.pretrained, **model_overrides(args))
    args.amp = args.amp or models.default_amp(device)
    if args.channels_last is None:   # tensor cores want NHWC; on CPU oneDNN gains in bf16 only (1.15-1.45x steps)
        args.channels_last = device.type == "cuda" or args.amp == "bf16"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True       # fixed input shapes: find the fastest convolutions once
    model = model.to(device)
    if args.channels_last:                          # 4D weights (TSN) channels_last, 5D (3D nets) channels_last_3d
        model = model.to(memory_format=torch.channels_last_3d if model.spec.family == "3d" else torch.channels_last)
    return model


def model_overrides(args: argparse.Namespace) -> dict:
    """The architecture flags given on the command line (stored in checkpoints as model_args)."""
    names = ("num_segments", "clip_len", "frame_interval", "crop_size")
    return {k: getattr(args, k) for k in names if getattr(args, k) is not None}


def setup_distributed(device_arg: str | None) -> tuple[int, int, torch.device]:
    """torchrun sets RANK / WORLD_SIZE / LOCAL_RANK: NCCL on GPUs, gloo on CPU; else one process."""
    cuda = torch.cuda.is_available() if device_arg is None else device_arg.startswith("cuda")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, torch.device("cuda" if cuda else "cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), world, torch.device("cuda", local) if cuda else torch.device("cpu")


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
    |B_T| + sum_i |B_Ai| (a constant factor: the recipes' LR per sample applies unchanged). With --mixup each sample
    is mixed with a random partner of the same concatenated batch (across sources with --aux; Table 9). Then ONE
    optimiser step on that loss, never one step per source. Without --aux this is plain training on the target.

    first_step > 0 resumes at that step of a mid-epoch latest.pth: sampler indices are functions of (seed, epoch,
    rank) and items of (seed, epoch, index), so the samplers skip the done steps (nothing is decoded for them) and
    the rest of the epoch is the uninterrupted run's. -> the epoch's mean loss, loss_NAME / acc_NAME per source.
    """
    args, model = run.args, run.model
    model.train()
    if run.freeze_bn:                               # norm_eval: running statistics stay fixed
        for m in batch_norms(model):
            m.eval()
    for ds in run.datasets:
        ds.set_epoch(epoch)
    run.loader.set_epoch(epoch, first_step)
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
        # 2. targets: the labels (pseudo-labels for web samples, from filter.py), soft one-hot rows after mixup
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


def model_input(clips: torch.Tensor, args: argparse.Namespace) -> torch.Tensor:
    """uint8 clips (N, C, T, H, W) on the device -> normalised float32 (transforms.normalize, equal to the float
    pipeline's output), channels_last_3d with --channels-last (TSN's (N*T, C, H, W) view of it is channels_last)."""
    if clips.dtype == torch.uint8:
        clips = transforms.normalize(clips)
    if args.channels_last:
        clips = clips.contiguous(memory_format=torch.channels_last_3d)
    return clips


class Meter:
    """Running sums of the loss (total, per source) and top-1 per source over a logging interval or an epoch, kept
    ON THE DEVICE so that the step never waits for the host: [loss, loss per source (S), correct per source (S), first
    non-finite step]. `summary()` reads them once and raises FloatingPointError if a loss was not finite."""

    def __init__(self, names: list[str], device: torch.device, epoch: int = 0):
        self.names, self.device, self.epoch = names, device, epoch
        self.reset()

    def reset(self) -> None:
        s = len(self.names)
        self.sums = torch.zeros(2 + 2 * s, device=self.device)      # float32: exact counts up to 2^24
        self.sums[-1] = -1                                          # 0-based step of the first non-finite loss
        self.seen = [0] * s                                         # samples per source (host integers)
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
    rate = sum(meter.seen) * run.world / max(time.time() - meter.t0, 1e-9)      # over this interval
    remaining = (run.schedule.epochs * steps - epoch * steps - step - 1) * (time.time() - t0) / (step + 1)
    failed = torch.tensor([sum(ds.num_failed for ds in run.datasets)], device=run.device if run.world > 1 else None)
    if run.world > 1:                             # samples that failed to load so far, over every source and rank
        dist.all_reduce(failed)
    failed = int(failed.item())
    per = " ".join(f"{n} {s['loss_' + n]:.3f}" for n in run.source_names) if len(run.source_names) > 1 else ""
    if run.rank == 0:
        print(f"epoch {epoch + 1}/{run.schedule.epochs} step {step + 1}/{steps} loss {s['loss']:.4f}"
              + (f" ({per})" if per else "") + f" lr {lr:.3g} {rate:.1f} samples/s eta "
              f"{time.strftime('%H:%M:%S', time.gmtime(remaining))}" + (f" failed {failed}" if failed else ""),
              flush=True)
    log_line(run, dict(kind="train", epoch=epoch + 1, step=step + 1, steps=steps, lr=lr, samples_per_s=rate,
                       eta_s=remaining, failed_samples=failed, **s))
    meter.reset()


# ----------------------------------------------------------------------------------------------------------------------
# 3. Evaluation and the final test: top-1, top-5, mean class accuracy (test protocols of Sec. 5.1)
# ----------------------------------------------------------------------------------------------------------------------


def validate(run: Run, epoch: int) -> dict:
    """Quick validation after epoch `epoch` (0-based): centre crop, the training clip count, the whole val split.
    With --select val the best top-1 so far is saved as best.pth (the first of equal ones)."""
    m = evaluate(run, run.val_loader)
    m.pop("confusion_matrix")
    if m["top1"] > run.best_top1:
        run.best_top1, run.best_epoch = m["top1"], epoch + 1
        if run.args.select == "val":
            checkpoints.save_checkpoint(run, "best.pth", epoch + 1)
    return m


def final_test(run: Run) -> dict:
    """The paper's test protocol (--test-clips x --test-crops views of every val video) on --checkpoint (--test) or
    --select's weights -> final.pth (after training: written before the test, so that it holds exactly the weights
    metrics.json reports), predictions.jsonl, confusion_matrix.csv and metrics.json (the run's "done" mark)."""
    args, arch = run.args, run.net.spec
    weights, source = checkpoints.weights_to_test(run, lambda path: load_weights(run, path))
    if not args.test and run.rank == 0:
        final = {**run.describe(), "weights": weights}
        webscale.write_atomic(Path(args.work_dir) / "final.pth", lambda f: torch.save(final, f))
    crops, clips = args.test_crops or arch.crops_test, args.test_clips or arch.num_clips_test
    ds = make_dataset(args, data.resolve_dataset(args.data_root, args.target), "val", arch, test_mode=True,
                      protocol=PROTOCOLS[crops], num_clips=clips)
    if run.rank == 0:
        print(f"testing {source} on the {len(ds)} val videos of {args.target}", flush=True)
    m = evaluate(run, make_eval_loader(args, ds, run.rank, run.world),
                 predictions=Path(args.work_dir) / "predictions.jsonl")
    m["protocol"] = f"{clips} {'segments' if arch.family == 'tsn' else 'clips'} x {crops} crops"
    m["weights"] = weights
    if run.rank == 0:
        checkpoints.write_results(run, m)
        print(f"test ({m['protocol']}): top1 {m['top1']:.4f}  top5 {m['top5']:.4f}  "
              f"mean_class_acc {m['mean_class_acc']:.4f}" + (f" over the {m['num_videos']} readable videos; "
              f"{m['num_unreadable']} unreadable, left out: {', '.join(m['unreadable'])}" if m["unreadable"] else ""),
              flush=True)
    return m


@torch.no_grad()
def evaluate(run: Run, loader: torch.utils.data.DataLoader, predictions: Path | None = None) -> dict:
    """Top-1, top-5, mean class accuracy over the whole split, reduced over ranks; with `predictions` also the
    per-video file. An unreadable video is never replaced by another: it is left out, counted and named."""
    k = len(run.classes)
    probs, labels, used, unreadable = forward_split(run, loader)
    cm = torch.bincount(labels * k + probs.argmax(1), minlength=k * k).view(k, k).double()  # rows: true class
    top5 = (probs.topk(min(5, k), dim=1).indices == labels[:, None]).any(1).sum().double().reshape(1)
    every_unreadable = [unreadable]
    if run.world > 1:
        dist.all_reduce(cm)
        dist.all_reduce(top5)
        every_unreadable = [None] * run.world
        dist.all_gather_object(every_unreadable, unreadable)
    if predictions is not None:
        checkpoints.write_predictions(run, loader.dataset.samples, probs, used, unreadable, predictions)
    run.net.train()
    bad = sorted(i for part in every_unreadable for i in part)
    cm, total = cm.cpu(), cm.sum().item()
    per_class = (cm.diag() / cm.sum(1).clamp(min=1))[cm.sum(1) > 0]        # over the classes with videos
    return {"top1": cm.diag().sum().item() / max(1, total), "top5": top5.item() / max(1, total),
            "mean_class_acc": per_class.mean().item() if len(per_class) else 0.0, "num_videos": int(total),
            "confusion_matrix": cm.long().tolist(), "num_unreadable": len(bad),
            "unreadable": [str(loader.dataset.samples.path(i)) for i in bad]}


@torch.no_grad()
def forward_split(run: Run, loader: torch.utils.data.DataLoader) -> tuple[torch.Tensor, torch.Tensor, list, list]:
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


def predict(args: argparse.Namespace, rank: int, world: int, device: torch.device) -> dict:
    """--predict: each video's top-5 classes with --checkpoint and --test's protocol and code, printed and written to
    WORK_DIR/predictions.jsonl (an unreadable file: a warning and an "unreadable" line) -> {path: [(name, p)] * 5}."""
    ckpt = Path(args.checkpoint or Path(args.work_dir) / "final.pth")
    net, classes = predictor(args, ckpt)
    net, arch = net.to(device).eval(), net.spec
    args.amp = args.amp or models.default_amp(device)
    run = Run(args, net, net, classes, None, None, None, None, [], [], device, rank, world)
    samples = [webscale.Sample(Path(v), -1, "video") for v in args.predict]
    ds = make_dataset(args, None, "val", arch, test_mode=True, protocol=PROTOCOLS[args.test_crops or arch.crops_test],
                      num_clips=args.test_clips or arch.num_clips_test, samples=samples)
    probs, _, used, unreadable = forward_split(run, make_eval_loader(args, ds, rank, world))
    out = Path(args.work_dir) / "predictions.jsonl"
    checkpoints.write_predictions(run, ds.samples, probs, used, unreadable, out)
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
    """--predict's model and classes: a train.py checkpoint's own; any other format is --arch with the names the file
    carries, else those of --classes or --target (one line says which)."""
    if not ckpt.exists():
        raise FileNotFoundError(f"--checkpoint {ckpt} not found")
    try:
        net = models.from_checkpoint(ckpt)
        return net, net.classes
    except ValueError:                              # not train.py's: MMAction2, torchvision, bare state dict
        where = f"--classes {args.classes}" if args.classes else f"--target {args.target}"
    classes = data.read_classes(args.classes) if args.classes else \
        data.resolve_dataset(args.data_root, args.target).classes
    net = models.build_model(args.arch, len(classes), **model_overrides(args))
    report = models.load_weights(net, ckpt)
    if report.classes is None:
        print(f"{ckpt} ({report.format}) carries no class names: its {len(classes)} outputs are read as the classes "
              f"of {where} in that order ({data._preview(classes)})", flush=True)
    return net, classes if report.classes is None else list(report.classes)


def export(run: Run) -> dict:
    """--export-mmaction: --checkpoint (default WORK_DIR/final.pth) in MMAction2 1.x's layout, written atomically."""
    ckpt, out = Path(run.args.checkpoint or Path(run.args.work_dir) / "final.pth"), run.args.export_mmaction
    if run.rank == 0:
        print(f"exporting {ckpt} ({run.args.arch}, {len(run.classes)} classes of {run.args.target}) to {out}",
              flush=True)
    checkpoints.load_on_rank0(run, lambda: load_weights(run, ckpt))
    if run.rank == 0:
        mm = models.mmaction_checkpoint(run.net, run.classes)
        webscale.write_atomic(out, lambda f: torch.save(mm, f))
        print(f"wrote {out} (MMAction2 1.x layout) from {ckpt}", flush=True)
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
        """The recipe, overridden by the flags given; its milestones and warm-up scale with --epochs."""
        epochs = args.epochs or recipe["epochs"]
        scale = epochs / recipe["epochs"]          # keep milestones at the same fraction of training
        lr_steps = tuple(round(s * scale) for s in recipe["lr_steps"]) if args.lr_steps is None else \
            tuple(int(s) for s in args.lr_steps.split(",") if s.strip())
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
    """SGD with --momentum and --weight-decay, the paper's for every architecture (the recipes set the schedule,
    not the optimiser); --optimizer adamw: decoupled weight decay."""
    if args.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=args.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=args.momentum, weight_decay=args.weight_decay)


def recipe_for(args: argparse.Namespace, arch: models.ArchSpec) -> dict:
    """TSN -> 'tsn'; SlowOnly -> '3d_imagenet' with initial weights (--pretrained or --checkpoint), '3d_scratch'
    without; irCSN, the tiny nets: their own."""
    if arch.recipe in ("tsn", "demo", "ircsn_ig65m"):
        return RECIPES[arch.recipe]
    return RECIPES["3d_imagenet" if (args.pretrained or args.checkpoint) else "3d_scratch"]


# ----------------------------------------------------------------------------------------------------------------------
# 5. Data: datasets, samplers and loaders of every source (Sec. 3.5, Sec. 3.6)
# ----------------------------------------------------------------------------------------------------------------------


def make_training_data(args: argparse.Namespace, target: data.DatasetSpec, arch: models.ArchSpec, rank: int,
                       world: int) -> tuple[list[data.VideoDataset], omnisource.JointBatches, list[int],
                                            torch.utils.data.DataLoader]:
    """The target's training list (--label-fraction of it), every --aux source's in the target's classes (matched by
    name: the released web sources are labelled in K200's order) -> (the training datasets [target, aux...], their
    joint loader, the batch sizes, the quick validation's loader)."""
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
    """A data.VideoDataset over one split of `dataset` (or the given `samples`), sampling frames as `arch` expects:
    in training TSN's num_segments single frames or a 3D net's clip of clip_len x frame_interval; in testing
    `num_clips` clips or segments, every crop of `protocol`. Items are uint8, normalised on the device."""
    if test_mode:
        clips = num_clips or (arch.num_clips_train if arch.family == "tsn" else 1)
        transform = transforms.test_transform(arch.family, arch.crop_size, protocol, uint8=True)
    else:
        clips = arch.num_clips_train
        transform = transforms.train_transform(arch.family, arch.crop_size, uint8=True)
    sampling = data.Sampling(clip_len=arch.clip_len, frame_interval=arch.frame_interval, num_clips=clips)
    samples = data.load_split(dataset, split) if samples is None else samples
    # web images (Sec. 3.5): JPEGs decoded reduced to about the pipeline's short side (draft mode; crawled images
    # are often 1-12 megapixels), resized once, then made clips (--image-to-clip in training, still clips in testing)
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
    """Sec. 3.5, Eq. 2, Table 8: how a still image, resized to `short_side`, becomes a clip (--image-to-clip; the warps
    read --motion). A motion file fitted at another stride than `arch` samples frames (omnisource.motion_stride) is
    refused: its steps would move the image by other amounts than real clips of this network move per frame."""
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
    """The target's loader (shuffled, sharded over ranks) + one class-resampled loader per aux source (Sec. 3.6).
    Persistent workers: no start-up per epoch, a broken web file is reported and skipped once per worker. Each loader
    has its own generator, seeded by (--seed, rank, source): else its workers' base seed would be drawn from the
    global torch RNG, once more in a --resume'd process than in the run it continues (that RNG is dropout's alone)."""
    def loader(ds: data.VideoDataset, sampler: torch.utils.data.Sampler, size: int, source: int
               ) -> torch.utils.data.DataLoader:
        generator = torch.Generator().manual_seed(derive_seed(args.seed, rank, source, 23))
        return torch.utils.data.DataLoader(ds, batch_size=size, sampler=sampler, num_workers=args.workers,
                                           drop_last=True, pin_memory=pin_memory(args),
                                           persistent_workers=args.workers > 0, generator=generator)

    sizes = omnisource.batch_sizes(args.batch_size, omnisource.parse_ratio(args.ratio, len(aux)))
    sampler = ShardedShuffle(len(target_ds), rank, world, args.seed)
    target_loader = loader(target_ds, sampler, sizes[0], 0)
    if len(target_loader) == 0:
        raise ValueError(f"--batch-size {args.batch_size} x {world} rank(s) is larger than the {len(target_ds)} "
                         f"training videos of --target {args.target}")
    rules = omnisource.resample_rules(args.resample, len(aux))
    samplers, aux_loaders = [sampler], []
    for i, (ds, size, rule) in enumerate(zip(aux, sizes[1:], rules), start=1):
        samplers.append(omnisource.ClassResampler(webscale.labels_of(ds.samples), len(target_loader) * size, rule,
                                                  seed=args.seed, rank=rank))
        aux_loaders.append(loader(ds, samplers[-1], size, i))
    return omnisource.JointBatches(target_loader, aux_loaders, samplers), sizes


def make_eval_loader(args: argparse.Namespace, ds: data.VideoDataset, rank: int, world: int
                     ) -> torch.utils.data.DataLoader:
    """This rank's share of the split, in order (every video exactly once over all ranks), in batches of
    --eval-batch-size videos, the unreadable ones set apart (collate_readable)."""
    return torch.utils.data.DataLoader(ds, batch_size=args.eval_batch_size or args.batch_size,
                                       sampler=list(range(rank, len(ds), world)), num_workers=args.workers,
                                       pin_memory=pin_memory(args), collate_fn=collate_readable)


def collate_readable(batch: list[tuple]) -> tuple[torch.Tensor | None, torch.Tensor, list[int], list[int]]:
    """An evaluation batch -> (the readable videos' views or None, their labels and indices, the unreadable's)."""
    readable = [b for b in batch if b[0] is not None]
    views = torch.utils.data.default_collate([b[0] for b in readable]) if readable else None
    return (views, torch.tensor([b[1] for b in readable], dtype=torch.long), [b[2] for b in readable],
            [b[2] for b in batch if b[0] is None])


class ShardedShuffle(torch.utils.data.Sampler):
    """The target sampler: one permutation per (seed, epoch), rank r takes positions r, r+W, ...; unlike
    DistributedSampler it never pads with repeated samples (len // W samples per rank)."""

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
    keep = sorted(i for idx in by_class.values() for i in rng.permutation(idx)[: max(1, round(fraction * len(idx)))])
    return samples.subset(np.asarray(keep)) if isinstance(samples, webscale.SampleList) else [samples[i] for i in keep]


def aux_samples(source: data.DatasetSpec, target: data.DatasetSpec, name: str, rank: int) -> webscale.SampleList:
    """An auxiliary source's training list in the target's label space, matched by class name (data.map_labels);
    one line says how many samples were left out. A source that shares no class with the target is an error."""
    samples, left_out = data.map_labels(data.load_split(source, "train"), source.classes, target.classes, name)
    if rank == 0:
        print(f"{name}: {len(samples)} samples, labels mapped by class name onto the {len(target.classes)} "
              f"classes of {target.name}; {left_out} left out (class not in {target.name})", flush=True)
    if not len(samples):
        raise ValueError(f"{name}: none of its samples belongs to a class of {target.name}")
    return samples


# ----------------------------------------------------------------------------------------------------------------------
# 6. The command line
# ----------------------------------------------------------------------------------------------------------------------


def get_args_parser() -> argparse.ArgumentParser:
    """train.py's flags. --arch and --snippet left unset take the demo's values on the demo target, else the paper's
    (omnisource.SettlingParser); other defaults of None are derived as their help says."""
    p = omnisource.SettlingParser("omnisource train", settle=("arch", "snippet"),
                                  formatter_class=webscale.HelpFormatter)
    _model_and_data_args(p)
    _optimisation_and_omnisource_args(p)
    _run_args(p)
    return p


def _model_and_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data-root", default="data", help="folder of the datasets (the demo's is generated when missing)")
    g.add_argument("--target", default=synthetic.DEMO_TARGET, help="target dataset: a folder under --data-root, or "
                   "k400, k200, ucf101, hmdb51 in their released layouts; synth: the generated demo")
    g.add_argument("--label-fraction", type=float, default=1.0, help="train on a class-balanced part of the target "
                   "(Fig. 7)")
    g.add_argument("--workers", type=int, default=2, help="DataLoader worker processes per source and rank")
    g = p.add_argument_group("model")
    g.add_argument("--arch", help=f"{', '.join(models.ARCHS)} (default: tsn_r50; on the demo tsn_tiny)")
    g.add_argument("--pretrained", help="2D ImageNet weights (torchvision layout), inflated for 3D nets")
    g.add_argument("--checkpoint", help="weights to start from (any format models.load_weights reads); "
                   "with --test, --predict or --export-mmaction the model (default there: WORK_DIR/final.pth)")
    g.add_argument("--finetune", action="store_true", help="load only --checkpoint's backbone (another class count)")
    g.add_argument("--export-mmaction", metavar="OUT.pth", help="only write --checkpoint in MMAction2 1.x's layout")
    g.add_argument("--num-segments", type=int, help="TSN training segments (default: the arch's)")
    g.add_argument("--clip-len", type=int, help="3D: frames per clip (default: the arch's)")
    g.add_argument("--frame-interval", type=int, help="3D: frame step in a clip (default: the arch's)")
    g.add_argument("--crop-size", type=int, help="crop in pixels, after resizing to a short side of "
                   "round(crop x 256 / 224) (default: the arch's)")


def _optimisation_and_omnisource_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimisation (unset: the --arch's recipe, RECIPES; milestones and warm-up scaled by "
                             "--epochs / its epochs)")
    g.add_argument("--epochs", type=int, help="epochs over the target set")
    g.add_argument("--batch-size", type=int, default=8, help="target videos per rank and step, |B_T|")
    g.add_argument("--lr-per-sample", type=float, help="base LR = this x samples per step (all ranks and sources)")
    g.add_argument("--lr-steps", help="comma-separated epochs where the LR is multiplied by 0.1")
    g.add_argument("--schedule", choices=("step", "cosine"), help="LR schedule")
    g.add_argument("--warmup-epochs", type=float, help="linear LR warm-up from 0")
    g.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd", help="sgd with --momentum (the paper's) "
                   "or adamw (decoupled weight decay)")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, help="batch norm frozen: statistics, scale "
                   "and shift (MMAction2's norm_eval + bn_frozen)")
    g.add_argument("--clip-grad", type=float, default=40.0, help="gradient-norm clipping threshold (0: off)")
    g.add_argument("--seed", type=int, default=0, help="seed of every random choice (data, init, mixup)")
    g = p.add_argument_group("OmniSource joint training (Sec. 3.6); without --aux, the target alone")
    g.add_argument("--aux", default="", help="comma-separated auxiliary sources: datasets under --data-root (e.g. "
                   "filter.py's outputs) or gg, ig-img, web-img, ig-vid, k200-raw, k400-untr (NAME:filtered)")
    g.add_argument("--ratio", default="", help="|B_T|:|B_A1|:... batch ratio (default: 2:1 per source; Table 2)")
    g.add_argument("--resample", default=omnisource.DEFAULT_RESAMPLE, help="class resampling of the auxiliary "
                   "sources: none, clip:N_C or power:P (Table 10), one for all or one per source (',')")
    g.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (0: off): across sources with --aux, within "
                   "the target without (Table 9)")
    g.add_argument("--image-to-clip", default="warp-agno", choices=transforms.IMAGE_TO_CLIP_MODES,
                   help="how still images become clips (Sec. 3.5, Eq. 2, Table 8); warp-*: by --motion")
    g.add_argument("--inflate", action=webscale.Renamed, new="--image-to-clip", help=argparse.SUPPRESS,
                   why="'inflate' names the 2D->3D inflation of weights only")
    g.add_argument("--motion", help="camera motion of omnisource.py --estimate-motion (default: --target's)")
    g.add_argument("--snippet", choices=tuple(transforms.SNIPPET_MODES), help="positive / negative frames of TSN "
                   "snippets from scored untrimmed videos, Table 14 (default: 1p2n; on the demo 3pos)")


def _run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--work-dir", help="output folder (default: work_dirs/TARGET_ARCH)")
    g.add_argument("--resume", action="store_true", help="continue the run in --work-dir from its latest.pth, to "
                   "an uninterrupted run's result; flags that change the run are refused")
    g.add_argument("--save-every", type=int, default=0, metavar="N", help="also write latest.pth every N steps")
    g.add_argument("--test", action="store_true", help="only evaluate --checkpoint with the test protocol")
    g.add_argument("--predict", nargs="+", metavar="VIDEO", help="only print these videos' top-5 classes (and "
                   "write WORK_DIR/predictions.jsonl) with --checkpoint and the test protocol")
    g.add_argument("--classes", metavar="FILE", help="with --predict: the class names (line i: label i) of a "
                   "checkpoint that carries none (default: --target's)")
    g.add_argument("--test-clips", type=int, help="test clips (3D) or segments (TSN) per video (default: the arch's)")
    g.add_argument("--test-crops", type=int, choices=(1, 3, 10), help="test crops per clip (default: the arch's)")
    g.add_argument("--select", choices=("last", "val"), default="last", help="weights of final.pth and the final "
                   "test: the last epoch's, or best.pth, the best quick validation (MMAction2's; optimistic)")
    g.add_argument("--val-every", type=int, help="quick validation (centre crop, training clip count) "
                   "every N epochs and after the last (default: max(1, epochs // 10))")
    g.add_argument("--log-interval", type=int, default=20, help="steps between log lines")
    g.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    g = p.add_argument_group("speed (the same results in less time)")
    g.add_argument("--amp", choices=("none", *models.AMP_DTYPES), help="forward and backward precision; fp16 with "
                   "loss scaling (default: bf16 on a GPU that has it)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, help="channels-last weights and input "
                   "(default: on for CUDA, and for bf16 on CPU)")
    g.add_argument("--compile", action="store_true", help="torch.compile the training model")
    g.add_argument("--eval-batch-size", type=int, help="videos per evaluation batch (default: --batch-size)")
    g.add_argument("--dump-probs", action="store_true", help="predictions.jsonl also holds every class probability")


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------


def load_weights(run: Run, path: Path, finetune: bool = False) -> None:
    """Weights of any checkpoint format (models.load_weights) into run.net, their outputs read by class name
    (data.class_order): the same names in another order permute the classifier's rows, other names are an error; a
    checkpoint without names is read in --target's class order, and one line says so. finetune: the backbone only."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found")
    report = models.load_weights(run.net, path, finetune=finetune)
    where = f"{path} ({report.format})"
    if run.rank == 0 and report.format != "train.py":
        print(f"loaded {where}: {report.summary().splitlines()[0]}", flush=True)
    if finetune:                                    # a fresh classifier has no classes to match
        return
    if report.classes is None:
        if run.rank == 0:
            print(f"{where} carries no class names: its {len(run.classes)} outputs are read as the classes of "
                  f"--target {run.args.target} in its class-list order ({data._preview(run.classes)})", flush=True)
        return
    order = torch.from_numpy(data.class_order(report.classes, run.classes, where))
    if (order != torch.arange(len(order))).any():
        with torch.no_grad():
            run.net.fc.weight.copy_(run.net.fc.weight[order])
            run.net.fc.bias.copy_(run.net.fc.bias[order])
        if run.rank == 0:
            print(f"{where}: its classes are those of --target {run.args.target} in another order; its outputs "
                  f"are mapped by name", flush=True)


def split_names(text: str) -> list[str]:
    """A comma-separated flag value -> its non-empty names (--aux)."""
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


def derive_seed(*key: int) -> int:
    """A 63-bit seed from a tuple of integers (numpy's SeedSequence hashing: nearby keys, unrelated seeds)."""
    return int(np.random.SeedSequence(list(key)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def batch_norms(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def pin_memory(args: argparse.Namespace) -> bool:
    """Loaders pin their batches (page-locked memory: the copies to the GPU do not wait) on a CUDA run only."""
    return torch.cuda.is_available() and (args.device or "cuda").startswith("cuda")


def log_line(run: Run, record: dict) -> None:
    """Rank 0 appends one JSON object to WORK_DIR/log.jsonl."""
    if run.rank == 0:
        with open(Path(run.args.work_dir) / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    webscale.run_command(main, get_args_parser())
