"""Train and test a video classifier, alone (the teacher, the baseline) or with OmniSource web data.

    python train.py                                          # embedded demo: tsn_tiny on generated data
    python train.py --data-root data --target k400 --arch tsn_r50 --pretrained resnet50.pth
    python train.py --target k400 --aux gg,ig-vid --ratio 2:1:1           # OmniSource joint training
    torchrun --nproc_per_node 8 train.py --target k400 --arch slowonly_r50_4x16 ...
    python train.py --target k400 --arch tsn_r50 --checkpoint best.pth --test

The recipes are the paper's (appendix "Implementation Details"): SGD with momentum 0.9 and weight decay
1e-4, a learning rate linear in the number of samples per step, gradient clipping at norm 40, and per
family TSN 4e-5/sample, 100 epochs, x0.1 at 40 and 80; 3D from ImageNet 1.6e-4/sample, 150 epochs, x0.1
at 90 and 130; 3D from scratch 1.6e-3/sample, cosine, 256 epochs with 34 warm-up epochs.

The training step (Sec. 3.2, Eq. 1) is in `train_one_epoch`: one target batch plus one batch per
auxiliary source, one forward on their concatenation, one loss, ONE optimiser step.

Outputs in --work-dir: log.jsonl (one JSON object per logging interval and per epoch), latest.pth
(every epoch, written atomically), best.pth (best quick validation top-1), metrics.json (top1, top5,
mean_class_acc of the final evaluation with the paper's test protocol) and confusion_matrix.csv.
"""
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

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

import data
import models
import omnisource
import transforms

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


def get_args_parser():
    p = argparse.ArgumentParser("omnisource train", add_help=True,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data-root", default="data", help="folder holding the datasets (DATA_ROOT/NAME/ or the "
                   "released layouts: see README); the embedded demo data is generated here when missing")
    g.add_argument("--target", default="synth", help="target dataset: a folder name under --data-root or one "
                   "of the paper's names (k400, k200, ucf101, hmdb51); 'synth' is the generated demo set")
    g.add_argument("--label-fraction", type=float, default=1.0, help="train on this class-balanced fraction of "
                   "the target's labelled videos (Fig. 7: 0.03, 0.1, 0.3); at least one video per class")
    g.add_argument("--workers", type=int, default=2, help="DataLoader worker processes per source and rank")
    g = p.add_argument_group("model")
    g.add_argument("--arch", default="tsn_tiny", help="architecture, one of: " + ", ".join(models.ARCHS))
    g.add_argument("--pretrained", default=None, help="2D ImageNet weights (torchvision layout) to start from; "
                   "inflated for 3D nets. With them a 3D net uses the '3d_imagenet' recipe, without '3d_scratch'")
    g.add_argument("--checkpoint", default=None, help="weights to start from, or with --test the model to "
                   "evaluate (default with --test: WORK_DIR/best.pth). Our checkpoints, MMAction2 0.x / 1.x recognizer "
                   "checkpoints (e.g. the released OmniSource models), torchvision state dicts and bare state dicts "
                   "are detected (models.load_weights)")
    g.add_argument("--finetune", action="store_true", help="with --checkpoint: load the backbone only and keep a "
                   "fresh classifier, for a checkpoint with another class count (transfer to UCF101 / HMDB51)")
    g.add_argument("--export-mmaction", default=None, metavar="OUT.pth", help="only write --checkpoint (default "
                   "WORK_DIR/best.pth) as an MMAction2 1.x checkpoint to OUT.pth and exit")
    g.add_argument("--num-segments", type=int, default=None, help="TSN training segments (default: the arch's, 3)")
    g.add_argument("--clip-len", type=int, default=None, help="3D: frames per clip (default: the arch's, e.g. 4)")
    g.add_argument("--frame-interval", type=int, default=None, help="3D: frame step inside a clip (default: the "
                   "arch's, e.g. 16 for 4x16)")
    g.add_argument("--crop-size", type=int, default=None, help="training and test crop in pixels (default: the "
                   "arch's, 224); frames are first resized to a short side of round(crop * 256 / 224)")
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
    g.add_argument("--weight-decay", type=float, default=1e-4, help="SGD weight decay")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=None, help="batch norm in eval "
                   "mode (running statistics fixed) with its scale and shift untrained, as MMAction2 fine-tunes the "
                   "IG-65M irCSN (norm_eval, bn_frozen); default: the recipe's, on for ircsn_r152_32x2 only")
    g.add_argument("--clip-grad", type=float, default=40.0, help="gradient-norm clipping threshold (0: off)")
    g.add_argument("--seed", type=int, default=0, help="seed of every random choice (data, init, mixup)")
    g = p.add_argument_group("OmniSource joint training (Sec. 3.6); without --aux this trains on the target alone")
    g.add_argument("--aux", default="", help="comma-separated auxiliary sources (dataset names under "
                   "--data-root, e.g. the output of filter.py, or gg, ig-img, ig-vid, k200-raw, k400-untr)")
    g.add_argument("--ratio", default="", help="|B_T|:|B_A1|:|B_A2|... batch ratio, target first (default 2:1 "
                   "per source: 2:1, 2:1:1, ...; Table 2)")
    g.add_argument("--resample", default="power:0.2", help="class resampling of every auxiliary source: none, "
                   "clip:N_C or power:P (Table 10); one value or one per source separated by ','")
    g.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (0: off): cross-dataset with --aux, "
                   "intra-dataset without (Sec. 3.6, Table 9)")
    g.add_argument("--inflate", default="still", choices=("still", "translate-random", "translate-const",
                   "warp-agno", "warp-spec"), help="how still images become clips (Sec. 3.5, Eq. 2, Table 8)")
    g.add_argument("--motion", default=None, help="camera-motion Gaussian file for --inflate warp-* (written by "
                   "`python omnisource.py --estimate-motion`); default DATA_ROOT/TARGET/motion.json")
    g.add_argument("--snippet", default="1p2n", choices=("1p2n", "3rand", "3pos", "2p1n"),
                   help="3-segment TSN snippets from untrimmed videos that filter.py scored at 1 FPS: which "
                   "positive/negative frames (Table 14); other segment counts sample the whole video")
    g = p.add_argument_group("run")
    g.add_argument("--work-dir", default=None, help="output folder (default work_dirs/TARGET_ARCH)")
    g.add_argument("--resume", action="store_true", help="continue from WORK_DIR/latest.pth (weights, optimiser, "
                   "schedule position and RNG state)")
    g.add_argument("--test", action="store_true", help="only evaluate --checkpoint with the test protocol")
    g.add_argument("--test-clips", type=int, default=None, help="test clips (3D) or segments (TSN) per video "
                   "(default: the arch's, 10 for SlowOnly, 25 for TSN)")
    g.add_argument("--test-crops", type=int, choices=(1, 3, 10), default=None, help="test crops per clip: 1 "
                   "centre, 3 ThreeCrop, 10 TenCrop (default: the arch's, 3)")
    g.add_argument("--val-every", type=int, default=None, help="quick validation (centre crop, training clip "
                   "count) every N epochs, to pick best.pth (default: max(1, epochs // 10), about ten validations "
                   "per run, so short epochs of small datasets are not dominated by validation)")
    g.add_argument("--log-interval", type=int, default=20, help="steps between log lines")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    return p


# --------------------------------------------------------------------------------------------------
# Setup: everything a run needs, built once
# --------------------------------------------------------------------------------------------------


@dataclass
class Run:
    args: argparse.Namespace
    model: torch.nn.Module          # the DDP-wrapped model when distributed
    net: torch.nn.Module            # the bare model (for checkpoints and evaluation)
    classes: list
    optimizer: torch.optim.Optimizer
    schedule: "Schedule"
    loader: omnisource.JointBatches
    val_loader: torch.utils.data.DataLoader
    source_names: list
    datasets: list
    device: torch.device
    rank: int = 0
    world: int = 1
    start_epoch: int = 0
    best_top1: float = -1.0
    val_every: int = 1
    freeze_bn: bool = False
    rng: np.random.Generator = field(default_factory=np.random.default_rng)


def main(args):
    rank, world, device = setup_distributed(args.device)
    if args.work_dir is None:
        args.work_dir = str(Path("work_dirs") / f"{args.target}_{args.arch}")
    ensure_demo_data(args, rank)
    run = setup(args, rank, world, device)
    if args.export_mmaction:
        return export(run)
    if args.test:
        return final_test(run)
    for epoch in range(run.start_epoch, run.schedule.epochs):
        stats = train_one_epoch(run, epoch)
        if (epoch + 1) % run.val_every == 0 or epoch + 1 == run.schedule.epochs:
            stats["val"] = evaluate(run, run.val_loader, quick=True)
            stats["val"].pop("confusion_matrix")
            if stats["val"]["top1"] > run.best_top1:
                run.best_top1 = stats["val"]["top1"]
                save_checkpoint(run, epoch, "best.pth")
        save_checkpoint(run, epoch, "latest.pth")
        log_line(run, dict(kind="epoch", epoch=epoch + 1, **stats))
    return final_test(run)


def setup(args, rank, world, device):
    """Datasets, model, optimiser, schedule, loaders; then --resume / --checkpoint."""
    target = data.resolve_dataset(args.data_root, args.target)
    classes = target.classes
    random.seed(args.seed)
    torch.manual_seed(args.seed)                   # model init and dropout
    model = build(args, len(classes), device)
    spec = model.spec
    train_ds = make_dataset(args, target, "train", spec, test_mode=False)
    if args.label_fraction < 1.0:
        train_ds.samples = label_fraction(train_ds.samples, args.label_fraction, args.seed)
    aux = [make_dataset(args, data.resolve_dataset(args.data_root, name), "train", spec, test_mode=False)
           for name in split_names(args.aux)]
    check_classes(args, classes, aux)
    loader, sizes = make_train_loader(args, train_ds, aux, rank, world)
    val_ds = make_dataset(args, target, "val", spec, test_mode=True, protocol="center")
    val_loader = make_eval_loader(args, val_ds, rank, world)
    recipe = recipe_for(args, spec)
    freeze_bn = recipe["freeze_bn"] if args.freeze_bn is None else args.freeze_bn
    if freeze_bn:                                   # bn_frozen: scale and shift are not trained
        for m in _batch_norms(model):
            m.requires_grad_(False)
    schedule = Schedule.from_args(args, recipe, steps_per_epoch=len(loader),
                                  samples_per_step=sum(sizes) * world)
    optimizer = torch.optim.SGD(model.parameters(), lr=schedule.base_lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    net = model
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    run = Run(args, model, net, classes, optimizer, schedule, loader, val_loader,
              [args.target] + split_names(args.aux), [train_ds] + aux, device, rank, world,
              rng=np.random.default_rng([args.seed, rank, 3]),
              val_every=args.val_every or max(1, schedule.epochs // 10), freeze_bn=freeze_bn)
    if args.resume:
        load_checkpoint(run, Path(args.work_dir) / "latest.pth", full=True)
    elif args.checkpoint and not args.test:
        load_checkpoint(run, Path(args.checkpoint), full=False)      # also before --export-mmaction
    if rank == 0:
        Path(args.work_dir).mkdir(parents=True, exist_ok=True)
        print(f"{args.arch} on {args.target} ({len(classes)} classes, {len(train_ds.samples)} training videos"
              + "".join(f", {n}: {len(d.samples)}" for n, d in zip(split_names(args.aux), aux))
              + f"), batch {'+'.join(map(str, sizes))} x {world} rank(s), {schedule.describe()}", flush=True)
    return run


# --------------------------------------------------------------------------------------------------
# The training epoch: Sec. 3.2, Eq. 1, one optimiser step per iteration
# --------------------------------------------------------------------------------------------------


def train_one_epoch(run, epoch):
    args, model = run.args, run.model
    model.train()
    if run.freeze_bn:                               # norm_eval: running statistics stay fixed
        for m in _batch_norms(model):
            m.eval()
    for ds in run.datasets:
        ds.set_epoch(epoch)
    for sampler in run.loader.samplers:
        sampler.set_epoch(epoch)
    meter, epoch_meter, t0 = Meter(run.source_names), Meter(run.source_names), time.time()
    steps = len(run.loader)
    for step, (clips, labels, sizes) in enumerate(run.loader):
        it = epoch * steps + step
        lr = run.schedule.lr(it)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        clips = clips.to(run.device, non_blocking=True)
        labels = labels.to(run.device, non_blocking=True)
        # 1. targets: one-hot (soft after mixup); pseudo-labels for web samples come from filter.py
        targets = F.one_hot(labels, len(run.classes)).float()
        if args.mixup > 0:
            clips, targets = omnisource.mixup(clips, targets, args.mixup, run.rng)
        # 2. one forward on the concatenated batch [B_T, B_A1, ...] and Eq. 1's summed loss
        logits = model(clips)                                        # (sum(sizes), K)
        loss, per_source = omnisource.joint_loss(logits, targets, sizes)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {epoch + 1} step {step + 1}; "
                                     f"lower --lr-per-sample or check the data")
        # 3. ONE optimiser step on the sum
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
        run.optimizer.step()
        for m in (meter, epoch_meter):
            m.update(loss, per_source, logits.detach(), labels, sizes)
        if (step + 1) % args.log_interval == 0 or step + 1 == steps:
            report_progress(run, meter, epoch, step, steps, lr, t0)
    return epoch_meter.summary()


# --------------------------------------------------------------------------------------------------
# Evaluation: top-1, top-5, mean class accuracy, confusion matrix (test protocols of Sec. 5.1)
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(run, loader, quick=False):
    """Metrics over the whole val split, reduced over ranks.

    Each item holds every view of a video, (V, C, T, H, W) with V the crops and T all sampled frames.
    TSN: the features of all views and segments are averaged before the classifier (MMAction2's
    consensus); 3D: the softmax of every clip x crop view is averaged.
    """
    net, spec = run.net, run.net.spec
    net.eval()
    k = len(run.classes)
    cm = torch.zeros(k, k, dtype=torch.float64)
    top5 = torch.zeros(1, dtype=torch.float64)
    for views, labels, _ in loader:
        probs = predict(net, views.to(run.device), spec).cpu()      # (N, K)
        cm += confusion(probs.argmax(1), labels, k)
        top5 += (probs.topk(min(5, k), dim=1).indices == labels[:, None]).any(1).sum()
    if run.world > 1:
        cm, top5 = cm.to(run.device), top5.to(run.device)
        dist.all_reduce(cm)
        dist.all_reduce(top5)
        cm, top5 = cm.cpu(), top5.cpu()
    net.train()
    return metrics_from(cm, top5)


def predict(net, views, spec):
    """views (N, V, C, T, H, W) -> class probabilities (N, K), combining views as MMAction2 does."""
    n, v, c, t, h, w = views.shape
    if spec.family == "tsn":
        frames = views.permute(0, 2, 1, 3, 4, 5).reshape(n, c, v * t, h, w)   # all views as segments
        return net(frames).softmax(dim=1)
    clips = t // spec.clip_len                                             # (N, crops, C, clips*L, H, W)
    x = views.reshape(n, v, c, clips, spec.clip_len, h, w).permute(0, 3, 1, 2, 4, 5, 6)
    probs = net(x.reshape(n * clips * v, c, spec.clip_len, h, w)).softmax(dim=1)
    return probs.view(n, clips * v, -1).mean(dim=1)


def export(run):
    """--export-mmaction: our checkpoint -> MMAction2 1.x layout (models.export_mmaction)."""
    ckpt = Path(run.args.checkpoint) if run.args.checkpoint else Path(run.args.work_dir) / "best.pth"
    if not run.args.checkpoint:
        load_checkpoint(run, ckpt, full=False)
    if run.rank == 0:
        out = models.export_mmaction(run.net, run.args.export_mmaction, classes=run.classes)
        print(f"wrote {out} (MMAction2 1.x layout) from {ckpt}", flush=True)
    return {}


def final_test(run):
    """The paper's test protocol on the val split -> metrics.json and confusion_matrix.csv."""
    args, spec = run.args, run.net.spec
    if args.test:
        ckpt = Path(args.checkpoint) if args.checkpoint else Path(args.work_dir) / "best.pth"
        load_checkpoint(run, ckpt, full=False)
    elif (Path(args.work_dir) / "best.pth").exists():
        dist_barrier(run)
        load_checkpoint(run, Path(args.work_dir) / "best.pth", full=False)
    crops = args.test_crops or spec.crops_test
    protocol = {1: "center", 3: "three_crop", 10: "ten_crop"}[crops]
    target = data.resolve_dataset(args.data_root, args.target)
    ds = make_dataset(args, target, "val", spec, test_mode=True, protocol=protocol,
                      num_clips=args.test_clips or spec.num_clips_test)
    m = evaluate(run, make_eval_loader(args, ds, run.rank, run.world, batch_size=1))
    m["protocol"] = f"{args.test_clips or spec.num_clips_test} {'segments' if spec.family == 'tsn' else 'clips'}" \
                    f" x {crops} crops"
    if run.rank == 0:
        write_results(run, m)
        print(f"test ({m['protocol']}): top1 {m['top1']:.4f}  top5 {m['top5']:.4f}  "
              f"mean_class_acc {m['mean_class_acc']:.4f}", flush=True)
    return m


# --------------------------------------------------------------------------------------------------
# Schedule (appendix "Implementation Details")
# --------------------------------------------------------------------------------------------------


@dataclass
class Schedule:
    base_lr: float
    epochs: int
    steps_per_epoch: int
    kind: str                   # 'step' | 'cosine'
    lr_steps: tuple             # epochs where the LR is multiplied by 0.1
    warmup_epochs: float

    @staticmethod
    def from_args(args, recipe, steps_per_epoch, samples_per_step):
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

    def lr(self, it):
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

    def describe(self):
        extra = f" x0.1 at {list(self.lr_steps)}" if self.kind == "step" else ""
        warm = f", {self.warmup_epochs:g} warm-up epochs" if self.warmup_epochs else ""
        return f"{self.epochs} epochs x {self.steps_per_epoch} steps, lr {self.base_lr:.4g} {self.kind}{extra}{warm}"


def recipe_for(args, spec):
    """TSN -> 'tsn'; SlowOnly -> '3d_imagenet' with initial weights, '3d_scratch' without; irCSN, tiny: their own."""
    if spec.recipe in ("tsn", "demo", "ircsn_ig65m"):
        return RECIPES[spec.recipe]
    return RECIPES["3d_imagenet" if (args.pretrained or args.checkpoint) else "3d_scratch"]


# --------------------------------------------------------------------------------------------------
# Checkpoints: self-describing, written atomically
# --------------------------------------------------------------------------------------------------


def save_checkpoint(run, epoch, name):
    if run.rank != 0:
        return
    state = {
        "model": run.net.state_dict(),
        "arch": run.args.arch,
        "model_args": model_overrides(run.args),
        "spec": vars(run.net.spec) if hasattr(run.net.spec, "__dict__") else None,
        "classes": run.classes,
        "epoch": epoch + 1,
        "optimizer": run.optimizer.state_dict(),
        "best_top1": run.best_top1,
        "args": vars(run.args),
        "rng": {"torch": torch.get_rng_state(), "numpy": run.rng.bit_generator.state,
                "python": random.getstate()},
    }
    path = Path(run.args.work_dir) / name
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)                      # atomic: a crash mid-write leaves the old file intact


def load_checkpoint(run, path, full):
    """Weights from any checkpoint format (models.load_weights); with full=True (--resume, our own
    latest.pth) also the optimiser, epoch, best top-1 and RNG state."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found" + (" (--resume needs a previous run in "
                                "--work-dir)" if full else ""))
    if not full:
        report = models.load_weights(run.net, path, finetune=run.args.finetune and not run.args.test)
        if run.rank == 0 and report.format != "train.py":
            print(f"loaded {path} ({report.format}): {report.summary().splitlines()[0]}", flush=True)
        return
    state = torch.load(path, map_location="cpu", weights_only=True)     # our own file; no arbitrary pickle
    run.net.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.start_epoch = state["epoch"]
    run.best_top1 = state.get("best_top1", -1.0)
    torch.set_rng_state(state["rng"]["torch"])
    run.rng.bit_generator.state = state["rng"]["numpy"]
    random.setstate(state["rng"]["python"])


# --------------------------------------------------------------------------------------------------
# Helpers: data, model, distributed, logging
# --------------------------------------------------------------------------------------------------


def build(args, num_classes, device):
    overrides = model_overrides(args)
    model = models.build_model(args.arch, num_classes, pretrained=args.pretrained, **overrides)
    return model.to(device)


def model_overrides(args):
    """The architecture overrides given on the command line (stored in checkpoints as model_args)."""
    return {k: v for k, v in dict(num_segments=args.num_segments, clip_len=args.clip_len,
                                  frame_interval=args.frame_interval, crop_size=args.crop_size).items()
            if v is not None}


def make_dataset(args, spec_ds, split, spec, test_mode, protocol="center", num_clips=None):
    """A data.VideoDataset over one split, sampling frames as the architecture expects.

    Train: TSN draws num_segments single frames (clip_len 1), 3D one clip of clip_len x frame_interval.
    Test: num_clips clips (3D) or segments (TSN), every crop of the protocol.
    """
    if test_mode:
        clips = num_clips or (spec.num_clips_train if spec.family == "tsn" else 1)
        transform = transforms.test_transform(spec.family, spec.crop_size, protocol)
    else:
        clips = spec.num_clips_train
        transform = transforms.train_transform(spec.family, spec.crop_size)
    sampling = data.Sampling(clip_len=spec.clip_len, frame_interval=spec.frame_interval, num_clips=clips)
    samples = data.load_split(spec_ds, split)
    image_to_clip = (make_image_to_clip(args, spec_ds) if not test_mode else None) or data.replicate_image
    # Table 14: untrimmed videos scored frame by frame by filter.py become 3-frame TSN snippets
    snippet = None
    if not test_mode and spec.family == "tsn" and clips == 3:
        snippet = functools.partial(transforms.select_snippet, mode=args.snippet)
    return data.VideoDataset(samples, sampling, test_mode=test_mode, transform=transform,
                             image_to_clip=image_to_clip, seed=args.seed, snippet=snippet)


def make_image_to_clip(args, spec_ds):
    """Sec. 3.5, Eq. 2, Table 8: how a still image of this source becomes a clip (--inflate)."""
    if args.inflate == "still":
        return None
    motion = None
    if args.inflate.startswith("warp"):
        path = Path(args.motion) if args.motion else Path(args.data_root) / args.target / "motion.json"
        if not path.exists():
            raise FileNotFoundError(f"--inflate {args.inflate} needs the camera-motion file {path} "
                                    f"(python omnisource.py --estimate-motion, or give --motion)")
        motion = transforms.HomographyGaussian.load(path)
    mode = "warp" if args.inflate.startswith("warp") else args.inflate
    return transforms.build_image_to_clip(mode, motion, class_specific=args.inflate == "warp-spec")


def make_train_loader(args, target_ds, aux, rank, world):
    """Target loader (shuffled, sharded over ranks, drop_last) + one resampled loader per aux source."""
    sizes = omnisource.batch_sizes(args.batch_size, omnisource.parse_ratio(args.ratio, len(aux)))
    sampler = ShardedShuffle(len(target_ds), rank, world, args.seed)
    target_loader = loader_for(args, target_ds, sampler, sizes[0], drop_last=True)
    if len(target_loader) == 0:
        raise ValueError(f"--batch-size {args.batch_size} x {world} rank(s) is larger than the {len(target_ds)} "
                         f"training videos of --target {args.target}")
    rules = resample_rules(args.resample, len(aux))
    samplers, aux_loaders = [sampler], []
    for ds, size, rule in zip(aux, sizes[1:], rules):
        s = omnisource.ClassResampler([smp.label for smp in ds.samples], len(target_loader) * size, rule,
                                      seed=args.seed, rank=rank)
        samplers.append(s)
        aux_loaders.append(loader_for(args, ds, s, size, drop_last=True))
    loader = omnisource.JointBatches(target_loader, aux_loaders)
    loader.samplers = samplers
    return loader, sizes


def loader_for(args, ds, sampler, batch_size, drop_last):
    """Training loader. Persistent workers: no process start-up per epoch (it dominates the short epochs of
    small datasets), and a broken web file is reported and skipped once per worker, not once per epoch; the
    epoch's randomness reaches them through VideoDataset's shared-memory epoch."""
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=args.workers,
                                       drop_last=drop_last, pin_memory=torch.cuda.is_available(),
                                       persistent_workers=args.workers > 0)


def make_eval_loader(args, ds, rank, world, batch_size=None):
    sampler = list(range(rank, len(ds), world))     # every video exactly once over all ranks
    return torch.utils.data.DataLoader(ds, batch_size=batch_size or args.batch_size, sampler=sampler,
                                       num_workers=args.workers)


class ShardedShuffle(torch.utils.data.Sampler):
    """The target sampler: one permutation per (seed, epoch), rank r takes positions r, r+W, ...

    Unlike DistributedSampler it never pads with repeated samples; ranks get len // W samples each.
    """

    def __init__(self, n, rank, world, seed):
        self.n, self.rank, self.world, self.seed, self.epoch = n, rank, world, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.n // self.world

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch, 11]).permutation(self.n)
        return iter(order[self.rank: len(self) * self.world: self.world].tolist())


def resample_rules(text, num_aux):
    parts = [t.strip() for t in text.split(",")] if text else ["power:0.2"]
    if len(parts) == 1:
        parts = parts * num_aux
    if len(parts) != num_aux:
        raise ValueError(f"--resample {text!r}: give one rule or one per --aux source ({num_aux})")
    return [omnisource.Resampling.parse(p) for p in parts]


def label_fraction(samples, fraction, seed):
    """Fig. 7: a class-balanced fraction of the labelled videos (at least one per class), fixed by seed."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--label-fraction {fraction}: expected a number in (0, 1]")
    rng = np.random.default_rng([seed, 5])
    by_class = {}
    for i, s in enumerate(samples):
        by_class.setdefault(s.label, []).append(i)
    keep = []
    for idx in by_class.values():
        keep += list(rng.permutation(idx)[: max(1, round(fraction * len(idx)))])
    return [samples[i] for i in sorted(keep)]


def check_classes(args, classes, aux):
    for name, ds in zip(split_names(args.aux), aux):
        bad = [s for s in ds.samples if not 0 <= s.label < len(classes)]
        if bad:
            raise ValueError(f"--aux {name}: label {bad[0].label} of {bad[0].path} is outside the target's "
                             f"{len(classes)} classes; web sources must use the target's classes.txt")


def split_names(text):
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


def ensure_demo_data(args, rank):
    """The embedded demo: generate DATA_ROOT/synth (and its web sources) when --target synth is missing."""
    if args.target != "synth" or (Path(args.data_root) / "synth" / "classes.txt").exists():
        return
    if rank == 0:
        import synthetic
        print(f"generating the demo dataset in {args.data_root}/ ...", flush=True)
        synthetic.generate(args.data_root, synthetic.SynthConfig())
    if dist.is_initialized():
        dist.barrier()


def setup_distributed(device_arg):
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


def dist_barrier(run):
    if run.world > 1:
        dist.barrier()


def _batch_norms(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


class Meter:
    """Running sums of the loss (total and per source), top-1 per source and samples seen."""

    def __init__(self, names):
        self.names = names
        self.reset()

    def reset(self):
        self.loss = 0.0
        self.source_loss = [0.0] * len(self.names)
        self.correct = [0] * len(self.names)
        self.seen = [0] * len(self.names)
        self.steps = 0
        self.t0 = time.time()

    def update(self, loss, per_source, logits, labels, sizes):
        self.steps += 1
        self.loss += loss.item()
        pred = logits.argmax(1).split(sizes)
        for s, (l, p, y) in enumerate(zip(per_source, pred, labels.split(sizes))):
            self.source_loss[s] += l.item() * sum(sizes) / sizes[s]     # back to the source's mean CE
            self.correct[s] += (p.cpu() == y.cpu()).sum().item()
            self.seen[s] += sizes[s]

    def summary(self):
        n = max(1, self.steps)
        out = {"loss": self.loss / n}
        for s, name in enumerate(self.names):
            out[f"loss_{name}"] = self.source_loss[s] / n
            out[f"acc_{name}"] = self.correct[s] / max(1, self.seen[s])
        return out


def report_progress(run, meter, epoch, step, steps, lr, t0):
    """One console line and one log.jsonl object per logging interval (rank 0)."""
    elapsed = time.time() - t0                                     # since the epoch started
    rate = sum(meter.seen) * run.world / max(time.time() - meter.t0, 1e-9)   # over this interval
    done = epoch * steps + step + 1
    remaining = (run.schedule.epochs * steps - done) * elapsed / (step + 1)
    failed = sum(getattr(ds, "num_failed", 0) for ds in run.datasets)
    s = meter.summary()
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


def log_line(run, record):
    if run.rank == 0:
        with open(Path(run.args.work_dir) / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


def confusion(pred, labels, k):
    """(K, K) counts, rows = true class, columns = predicted class."""
    return torch.bincount(labels * k + pred, minlength=k * k).view(k, k).double()


def metrics_from(cm, top5):
    total = cm.sum().item()
    per_class = (cm.diag() / cm.sum(1).clamp(min=1))[cm.sum(1) > 0]
    return {"top1": cm.diag().sum().item() / max(1, total), "top5": top5.item() / max(1, total),
            "mean_class_acc": per_class.mean().item() if len(per_class) else 0.0,
            "num_videos": int(total), "confusion_matrix": cm.long().tolist()}


def write_results(run, m):
    work = Path(run.args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    cm = m.pop("confusion_matrix")
    m.update(arch=run.args.arch, target=run.args.target, aux=split_names(run.args.aux), classes=run.classes)
    (work / "metrics.json").write_text(json.dumps(m, indent=2) + "\n")
    with open(work / "confusion_matrix.csv", "w") as f:
        f.write("true\\pred," + ",".join(run.classes) + "\n")
        for name, row in zip(run.classes, cm):
            f.write(name + "," + ",".join(str(v) for v in row) + "\n")
    m["confusion_matrix"] = cm


def cli(argv=None):
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    warnings.filterwarnings("ignore", message=".*(TypedStorage|pin_memory).*")
    try:
        main(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        sys.exit(f"error: {e}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    cli()
