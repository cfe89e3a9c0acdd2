"""OmniSource (Duan et al., "Omni-sourced Webly-supervised Learning for Video Recognition", ECCV 2020), Sec. 3:
the pieces of the method that are its own, and the four steps of Table 1 as the commands a user types.

    1. Sec. 3.2, Eq. 1   joint_loss: one loss, the sum of the cross-entropies of the target and auxiliary batches
    2. Sec. 3.3          task_queries: the target's class names as search queries of each web source
    3. Sec. 3.5, Eq. 2   estimate_motion: the camera-motion Gaussian web images are warped by, fitted on the target
    4. Sec. 3.6          batch ratio, class resampling, cross-dataset mixup, JointBatches (a batch of every source)
    5. Table 1           run_procedure: teacher -> filter.py -> motion -> student, each step a printed command
The video-recognition code they build on is in models.py, data.py and transforms.py; the training step that uses
them in train.py, teacher filtering (Sec. 3.3-3.5) in filter.py. README.md's "Paper to code" maps every section.

How batch norm sees the sources: every step concatenates the target batch and all auxiliary batches into ONE tensor
and runs ONE forward pass, so batch norm normalises target and web samples with shared statistics and its running
averages are those of the mixture the network trains on. (1) Cross-dataset mixup mixes samples of different sources,
so they must share the forward pass anyway; (2) one forward and backward per step is what Eq. 1 describes (one loss,
one gradient, one all-reduce under DDP); (3) separate forwards would let each source normalise only itself, hiding
the domain gap in training but not at test time. The price: the statistics depend on the ratio, one more reason the
paper tunes it (Fig. 8).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

import checkpoints
import data
import figures
import filter
import models
import synthetic
import transforms
import webscale

# ----------------------------------------------------------------------------------------------------------------------
# 1. Sec. 3.2, Eq. 1: the joint loss
# ----------------------------------------------------------------------------------------------------------------------


def joint_loss(logits: torch.Tensor, targets: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, list]:
    """Eq. 1: the sum of the cross-entropies over the target batch and every auxiliary batch.

    logits:  (B, K) for the concatenated batch [B_T, B_A1, B_A2, ...], B = sum(sizes).
    targets: (B,) int labels, or (B, K) soft labels (after mixup); pseudo-labels for web samples.
    sizes:   [|B_T|, |B_A1|, ...], the number of rows of each source in that order.

    Eq. 1 sums the per-sample losses over all mini-batches. We divide that sum by the total number of
    samples B, so the result is the mean over the concatenated batch and the LR-per-sample recipes of the
    appendix apply unchanged (a constant factor of Eq. 1 is a learning-rate choice).
    Returns (loss, per_source) where loss == sum(per_source) exactly, per_source[s] being source s's
    share: the sum of its samples' cross-entropies divided by B.
    """
    if targets.dim() == 1:
        per_sample = F.cross_entropy(logits, targets, reduction="none")          # (B,)
    else:
        per_sample = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1)       # (B,) soft CE
    total = per_sample.shape[0]
    per_source = [chunk.sum() / total for chunk in per_sample.split(list(sizes))]
    return torch.stack(per_source).sum(), per_source


# ----------------------------------------------------------------------------------------------------------------------
# 2. Sec. 3.3: task-specific collection -- the target's class names become each source's search queries
# ----------------------------------------------------------------------------------------------------------------------
# The class names themselves, "with no extra query expansion": Google images and YouTube get the name, Instagram
# hashtags of its words permuted and stemmed (footnote 4); Google queries may repeat per period (its results are
# capped). We write the queries for a crawler, one JSON object per line; we do not crawl.

QUERY_SOURCES = ("google", "instagram", "youtube")
STOP_WORDS = frozenset("a an the of on in at to with or and for from by into".split())
MAX_PERMUTED_WORDS = 2    # longer names keep their word order (the paper: 1,479 tags for 400 classes, ~4 a class)


def task_queries(classes: list[str], sources: tuple[str, ...] = QUERY_SOURCES,
                 years: tuple[int, int] | None = None) -> list[dict]:
    """Sec. 3.3: every query of every source for the target's class names, in label order: rows {"source", "label",
    "class", "query"} (+ ISO "after" / "before" of one Google query per calendar year of `years` = (first, last))."""
    rows = []
    for label, name in enumerate(classes):
        for source in sources:
            if source == "instagram":
                rows += [_query("instagram", label, name, "#" + tag) for tag in hashtags(name)]
            elif source == "google" and years:
                rows += [dict(_query("google", label, name, search_terms(name)), after=f"{y}-01-01",
                              before=f"{y + 1}-01-01") for y in range(years[0], years[1] + 1)]
            elif source in QUERY_SOURCES:
                rows.append(_query(source, label, name, search_terms(name)))
            else:
                raise ValueError(f"unknown query source {source!r}: expected one of {', '.join(QUERY_SOURCES)}")
    return rows


def search_terms(name: str) -> str:
    """A class name as a search query: "skiing (not slalom or crosscountry)" -> "skiing", "ApplyEyeMakeup" ->
    "apply eye makeup"."""
    return " ".join(class_words(name))


def hashtags(name: str) -> list[str]:
    """Instagram tags of a class name (footnote 4), most literal first: its content words (no stop words) in every
    order (more than MAX_PERMUTED_WORDS keep theirs) joined, then the same stemmed. "playing guitar" ->
    playingguitar, guitarplaying, playguitar, guitarplay."""
    words = [w for w in class_words(name) if w not in STOP_WORDS] or class_words(name)
    orders = list(itertools.permutations(words)) if len(words) <= MAX_PERMUTED_WORDS else [tuple(words)]
    tags = ["".join(o) for o in orders] + ["".join(stem(w) for w in o) for o in orders]
    return list(dict.fromkeys(t for t in tags if t))


def class_words(name: str) -> list[str]:
    """Lower-case words of a class name: split at spaces, '_', '-', '/' and lower-to-upper case changes;
    apostrophes and other punctuation dropped; a parenthesised note removed."""
    name = re.sub(r"\([^)]*\)", " ", name)
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)
    name = re.sub(r"[’']", "", name)
    return [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]


def stem(word: str) -> str:
    """A small suffix stripper for action names (Porter's first steps, so the stem is a word a hashtag uses):
    "beekeeping" -> "beekeep", "running" -> "run", "dancing" -> "dance", "riding" -> "ride", "ponies" -> "pony".
    1. plurals: -ies -> -y, -sses / -shes / -ches / -xes / -zes lose "es", other -s (not -ss, -us, -is) lose "s";
    2. -ing, when three letters with a vowel stay, then repaired (`_repair_stem`)."""
    if len(word) <= 3:
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "shes", "ches", "xes", "zes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    if word.endswith("ing") and len(word) >= 6 and re.search(r"[aeiouy]", word[:-3]):
        return _repair_stem(word[:-3])
    return word


def write_queries(path: str | Path, rows: list[dict]) -> None:
    """The queries as JSON lines, one per query, written atomically (a crawler reads them line by line)."""
    webscale.write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


# ----------------------------------------------------------------------------------------------------------------------
# 3. Sec. 3.5: the camera-motion Gaussian of Eq. 2, estimated on the target videos
# ----------------------------------------------------------------------------------------------------------------------


MOTION_STEPS = 32       # consecutive frame pairs aligned per video (at least two windows of the stride)
MIN_CLASS_FIT = 9       # homographies a class needs for its own Gaussian ('warp-spec'): more than its 8 dimensions


def motion_stride(spec: models.ArchSpec) -> str:
    """What one step H_i of a pseudo clip (Eq. 2) stands for: the distance between the frames the architecture
    samples from a real clip. A 3D net takes a frame every `frame_interval` ("16 frames" for SlowOnly 4x16); a TSN
    takes one frame per segment, so its frames lie a segment apart: 1 / num_segments of the video ("1/3 video").
    The motion file records it; train.py refuses a file fitted at another stride than its --arch samples."""
    if spec.family == "tsn":
        return f"1/{spec.num_clips_train} video"
    return f"{spec.frame_interval} frames"


def stride_frames(spec: models.ArchSpec, num_frames: int) -> int:
    """`motion_stride` in native frames of a video of `num_frames` frames (a TSN's segment length)."""
    return max(1, num_frames // spec.num_clips_train) if spec.family == "tsn" else spec.frame_interval


def estimate_motion(data_root: str | Path, target: str, arch: str, out: str | Path | None = None,
                    videos_per_class: int = 5, seed: int = 0, workers: int = 0,
                    log: Callable[[str], None] = print) -> transforms.HomographyGaussian:
    """Fit N(mu, Sigma) of the camera motion of the target's training videos at `arch`'s stride (Sec. 3.5).

    1. Take `videos_per_class` training videos of every class (a fixed random subset).
    2. In each, decode a run of consecutive frames from a random start and take the homography of every window
       of `stride_frames` frames: the product of its consecutive steps (transforms.estimate_video_motion; a
       window with a scene cut or a failed alignment is dropped). Windows per video: MOTION_STEPS // stride, at
       least 2, as many as the video holds. Videos are read in `workers` DataLoader processes.
    3. Express every H in normalised image coordinates (so the fit applies to web images of any size) and take the
       maximum-likelihood Gaussian, class-agnostic ("warp-agno") and per class ("warp-spec", Table 8) for the
       classes with at least MIN_CLASS_FIT homographies; the others sample the class-agnostic one (printed).
    Writes the model with its stride (`motion_stride`) to `out` (default `data.motion_path`: the target's folder,
    where train.py looks) and returns it.
    """
    spec = data.resolve_dataset(data_root, target)
    arch_spec = _arch_spec(arch)
    samples = [s for s in data.load_split(spec, "train") if s.kind in ("video", "untrimmed", "frames")]
    rng = np.random.default_rng([seed, 13])
    by_class: dict[int, list] = {}
    for i in rng.permutation(len(samples)):
        by_class.setdefault(samples[i].label, []).append(samples[i])
    chosen = [s for label in sorted(by_class) for s in by_class[label][:videos_per_class]]
    videos = _MotionVideos(chosen, arch_spec, seed)
    loader = torch.utils.data.DataLoader(videos, batch_size=None, num_workers=workers, collate_fn=webscale.as_is)
    hs, labels = [], []
    for n, (found, label, error) in enumerate(loader):
        if error:                           # a broken video only loses its own motion samples
            log(f"estimate_motion: skipped {chosen[n].path}: {error}")
        hs += found
        labels += [label] * len(found)
        if (n + 1) % 50 == 0:
            log(f"estimate_motion: {n + 1}/{len(chosen)} videos, {sum(h is not None for h in hs)} homographies")
    stride = motion_stride(arch_spec)
    motion = transforms.fit_homography_gaussian(hs, labels=labels, min_class=MIN_CLASS_FIT, stride=stride)
    out = Path(out) if out else data.motion_path(spec)
    motion.save(out)
    log(f"estimate_motion: {sum(h is not None for h in hs)} homographies at a stride of {stride} ({arch}) from "
        f"{len(chosen)} videos -> {out}; warp-spec: {len(motion.per_class)} of {len(spec.classes)} classes have "
        f"their own fit (>= {MIN_CLASS_FIT} homographies), {len(spec.classes) - len(motion.per_class)} use the "
        f"class-agnostic one")
    return motion


# ----------------------------------------------------------------------------------------------------------------------
# 4. Sec. 3.6: batch ratio, class resampling, mixup
# ----------------------------------------------------------------------------------------------------------------------


def parse_ratio(text: str, num_aux: int) -> list[float]:
    """'2:1:1' -> [2, 1, 1]: |B_T| : |B_A1| : |B_A2| (target first, one number per auxiliary source).

    With no text the paper's default is used: 2:1 for one source ... 2:1:1:1 (Table 2, all sources).
    """
    if not text:
        return [2] + [1] * num_aux
    try:
        parts = [float(p) for p in text.split(":")]
    except ValueError:
        parts = []
    if len(parts) != num_aux + 1 or any(p <= 0 for p in parts):
        raise ValueError(f"--ratio {text!r}: expected {num_aux + 1} positive numbers separated by ':' "
                         f"(target first, then one per --aux source)")
    return parts


def batch_sizes(target_batch: int, ratio: list[float]) -> list[int]:
    """Per-source batch sizes from the target batch size and the ratio: |B_Ai| = floor(|B_T| r_i / r_T + 1/2),
    at least 1 (halves round up: --batch-size 5 --ratio 2:1 gives 5+3, 7 gives 7+4; train.py prints them)."""
    return [target_batch] + [max(1, math.floor(target_batch * r / ratio[0] + 0.5)) for r in ratio[1:]]


DEFAULT_RESAMPLE = "power:0.2"    # Sec. 3.6 / Table 10: class probability proportional to N_c ** 0.2


@dataclass
class Resampling:
    """Sec. 3.6 "Resampling strategy" (Table 10). mode: 'none' | 'clip' | 'power'.

    none:  every sample equally likely (class probability proportional to N_c).
    clip:  class probability proportional to min(N_c, N_clip) ("clipped distribution").
    power: class probability proportional to N_c ** p, p in (0, 1); p = 0.2 is the paper's choice.
    """
    mode: str = "power"
    value: float = 0.2

    @staticmethod
    def parse(text: str) -> Resampling:
        """'none' | 'clip:5000' | 'power:0.2' | 'power' (p = 0.2)."""
        name, _, val = text.partition(":")
        defaults = {"none": 0.0, "power": 0.2, "clip": None}
        if name not in defaults:
            raise ValueError(f"--resample {text!r}: expected none, clip:N_C or power:P")
        if val == "":
            if defaults[name] is None:
                raise ValueError(f"--resample {text!r}: clip needs a threshold, e.g. clip:5000")
            return Resampling(name, defaults[name])
        try:
            value = float(val)
        except ValueError:
            raise ValueError(f"--resample {text!r}: {val!r} is not a number") from None
        if (name == "power" and not 0 < value <= 1) or (name == "clip" and value < 1):
            raise ValueError(f"--resample {text!r}: expected power:P with 0 < P <= 1 or clip:N_C with N_C >= 1")
        return Resampling(name, value)

    def class_probabilities(self, counts: np.ndarray) -> np.ndarray:
        """(K,) sample counts per class -> (K,) probability of drawing each class."""
        counts = np.asarray(counts, dtype=np.float64)
        if self.mode == "none":
            mass = counts
        elif self.mode == "clip":
            mass = np.minimum(counts, self.value)
        else:
            mass = np.where(counts > 0, counts ** self.value, 0.0)
        return mass / mass.sum()


def resample_rules(text: str, num_aux: int) -> list[Resampling]:
    """--resample -> one Resampling per auxiliary source (one value applies to all, else one per source)."""
    parts = [t.strip() for t in text.split(",")] if text else [DEFAULT_RESAMPLE]
    if len(parts) == 1:
        parts = parts * num_aux
    if len(parts) != num_aux:
        raise ValueError(f"--resample {text!r}: give one rule or one per source ({num_aux})")
    return [Resampling.parse(p) for p in parts]


class ClassResampler(torch.utils.data.Sampler):
    """Draws `num_samples` indices per epoch for an auxiliary source (Sec. 3.6).

    1. Count the samples of each (pseudo-)class, N_c; 2. class probability from the rule (Resampling);
    3. per-sample weight = P(class) / N_c: a class is drawn with its probability, its samples uniformly;
    4. mode 'none': random permutations, each sample once per pass; otherwise draws with replacement.
    Seeded by (seed, epoch, rank): every rank its own stream, a resumed run the same samples; `set_epoch`'s
    `start` skips the epoch's first draws (a run resumed part-way through an epoch).
    """

    def __init__(self, labels: np.ndarray, num_samples: int, resampling: Resampling, seed: int = 0, rank: int = 0):
        self.labels = np.asarray(labels)
        self.num_samples = int(num_samples)
        self.resampling = resampling
        self.seed, self.rank, self.epoch, self.start = seed, rank, 0, 0
        counts = np.bincount(self.labels, minlength=self.labels.max() + 1 if len(self.labels) else 1)
        probs = resampling.class_probabilities(counts)
        self.weights = probs[self.labels] / counts[self.labels]                  # (num_samples_in_source,)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.num_samples               # the whole epoch's, also when it starts part-way

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, 7])
        n = len(self.labels)
        if self.resampling.mode == "none":
            passes = -(-self.num_samples // n)
            order = np.concatenate([rng.permutation(n) for _ in range(passes)])[: self.num_samples]
        else:
            order = rng.choice(n, size=self.num_samples, replace=True, p=self.weights / self.weights.sum())
        return iter(order[self.start:].tolist())


def mixup(clips: torch.Tensor, targets: torch.Tensor, alpha: float,
          rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sec. 3.6 mixup (Zhang et al.): x = lam x_i + (1 - lam) x_j, y = lam y_i + (1 - lam) y_j.

    clips (B, C, T, H, W); targets (B, K) one-hot or soft. Rows are paired by ONE random permutation of the
    whole concatenated batch [B_T, B_A1, ...] (row i with row perm[i]), so the partner of a row is any row of
    the batch, whatever its source: at 2:1:1 a target row meets a target row half the time and a web row the
    other half. That is the paper's cross-dataset mixup, "samples randomly chosen from both datasets": the
    pair is drawn from the union of the sources, not one from each, and every pairing across and within
    sources occurs in proportion to the batch ratio. With the target alone it is intra-dataset mixup.
    One lam ~ Beta(alpha, alpha) per batch, as in the original mixup.
    Returns (mixed clips, mixed targets); each target row still sums to one.
    """
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(clips.shape[0])).to(clips.device)
    mixed = lam * clips + (1.0 - lam) * clips[perm]
    return mixed, lam * targets + (1.0 - lam) * targets[perm]


class JointBatches:
    """Sec. 3.2: each iteration yields one target batch and one batch of every auxiliary source: ([clips_T,
    clips_A1, ...], [labels_T, ...], sizes [|B_T|, |B_A1|, ...]), one (|B_i|, C, T, H, W) batch per source, not
    concatenated here (the training step copies each from pinned memory and concatenates them on the device).
    The target loader defines the epoch; each auxiliary sampler draws steps x |B_Ai| indices per epoch, so a small
    source cycles and a large one is subsampled. samplers: one per loader, target first, with `set_epoch(epoch,
    start)` (train.ShardedShuffle, ClassResampler); empty for loaders whose order never changes (tests)."""

    def __init__(self, target_loader: Iterable, aux_loaders: Sequence[Iterable], samplers: Sequence = ()):
        self.target_loader = target_loader
        self.aux_loaders = list(aux_loaders)
        self.samplers = list(samplers)
        if self.samplers and len(self.samplers) != 1 + len(self.aux_loaders):
            raise ValueError(f"JointBatches: {len(self.samplers)} samplers for {1 + len(self.aux_loaders)} loaders "
                             f"(one per source, target first)")

    def set_epoch(self, epoch: int, first_step: int = 0) -> None:
        """Select epoch `epoch` in every sampler; the epoch then starts at step `first_step` (--resume of a
        mid-epoch latest.pth): each sampler skips the indices of the batches of the steps already done, so the
        rest of the epoch is exactly the uninterrupted run's and the skipped batches are never decoded."""
        for sampler, loader in zip(self.samplers, [self.target_loader, *self.aux_loaders]):
            sampler.set_epoch(epoch, start=first_step * loader.batch_size)

    def __len__(self) -> int:
        return len(self.target_loader)

    def __iter__(self) -> Iterator[tuple[list, list, list]]:
        aux_iters = [iter(loader) for loader in self.aux_loaders]
        for clips, labels, _ in self.target_loader:
            parts, targets, sizes = [clips], [labels], [clips.shape[0]]
            for it in aux_iters:
                aux_clips, aux_labels, _ = next(it)
                parts.append(aux_clips)
                targets.append(aux_labels)
                sizes.append(aux_clips.shape[0])
            yield parts, targets, sizes


# ----------------------------------------------------------------------------------------------------------------------
# 5. Table 1: the whole procedure, each step run as the command a user would type
# ----------------------------------------------------------------------------------------------------------------------


# The defaults a run on real data gets (train.py's and this file's flags of the same names), where the generated demo
# gets synthetic.DEMO_SETTINGS: TSN-R50 is the paper's 2D model (Sec. 5.1), 1 positive + 2 negative frames its
# snippets (Sec. 3.5, Table 14), web data is de-duplicated against the target's val split (Sec. 3.3), and the web
# sources are the user's to name (none by default: a one-line refusal asks for them).
PAPER_SETTINGS = {"arch": "tsn_r50", "sources": None, "snippet": "1p2n", "dedup": True}
# Sec. 3.4: "we do not use 3D ConvNet teachers for web images": a 3D student's images (and a 2D student's 1-FPS
# frames under a 3D teacher) are scored by the 2D network of the same backbone and recipe
IMAGE_TEACHERS = {"slowonly_r50_4x16": "tsn_r50", "slowonly_r50_8x8": "tsn_r50", "slowonly_r101_8x8": "tsn_r101",
                  "ircsn_r152_32x2": "tsn_r152", "slowonly_tiny": "tsn_tiny"}


class SettlingParser(argparse.ArgumentParser):
    """argparse's parser for train.py and omnisource.py: parsing also settles the flags `settle` left unset (None):
    the demo's value (synthetic.DEMO_SETTINGS) when --target is the generated demo, else the paper's
    (PAPER_SETTINGS). `args.demo_settings` lists the flags that took the demo's value, for the run's first line
    (`demo_settings_line`); every caller of parse_args gets complete arguments."""

    def __init__(self, *args: object, settle: Sequence[str] = (), **kwargs: object):
        super().__init__(*args, **kwargs)
        self.settle = tuple(settle)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        ns, rest = super().parse_known_args(args, namespace)
        demo = ns.target == synthetic.DEMO_TARGET
        ns.demo_settings = [k for k in self.settle if getattr(ns, k) is None] if demo else []
        for k in self.settle:
            if getattr(ns, k) is None:
                setattr(ns, k, (synthetic.DEMO_SETTINGS if demo else PAPER_SETTINGS)[k])
        return ns, rest


def demo_settings_line(args: argparse.Namespace, keys: Sequence[str] | None = None) -> str:
    """The line a command prints first when demo settings are in force (those of `keys`, default all); "" if none."""
    shown = [f"--{k.replace('_', '-')} {_flag_value(synthetic.DEMO_SETTINGS[k])} "
             f"(paper: {_flag_value(PAPER_SETTINGS[k])})" for k in args.demo_settings if keys is None or k in keys]
    return (f"demo settings, because --target {args.target} is the generated demo (any other target gets the "
            f"paper's): {', '.join(shown)}") if shown else ""


class StepFailed(ValueError):
    """A step's command exited with a non-zero status (its own error is printed above by the command); the
    procedure stops with one line naming it (webscale.run_command)."""


def get_args_parser() -> argparse.ArgumentParser:
    p = SettlingParser("omnisource.py", settle=list(PAPER_SETTINGS), formatter_class=webscale.HelpFormatter,
                       description="The four steps of Table 1 in one command: 1. teacher (and baseline) on the target "
                       "set, 2. teacher filtering of every web source, 3. the camera motion of Eq. 2, 4. joint "
                       "training of the student; each printed and run as the train.py / filter.py command it is.")
    g = p.add_argument_group("data and models")
    g.add_argument("--data-root", default="data", help="datasets folder; the demo data is generated here")
    g.add_argument("--target", default=synthetic.DEMO_TARGET, help="target dataset (train.py --target); the default "
                   "is the generated demo")
    g.add_argument("--sources", default=None, help="comma-separated raw web sources to filter and add (dataset names "
                   "under --data-root, e.g. gg,ig-vid,k400-untr); required but on the demo target")
    g.add_argument("--arch", default=None, help="student and baseline architecture (default: the paper's tsn_r50; "
                   "tsn_tiny on the demo target)")
    g.add_argument("--checkpoint", default=None, help="initial weights of every training run of --arch (any format "
                   "models.load_weights reads)")
    g.add_argument("--finetune", action="store_true", help="with --checkpoint: backbone only, fresh classifier")
    g.add_argument("--teacher-arch", default=None, help="teacher architecture (default: --arch)")
    g.add_argument("--image-teacher-arch", default=None, help="2D teacher of web images (and of a 2D student's 1-FPS "
                   "frames) when --teacher-arch is 3D, Sec. 3.4 (default: IMAGE_TEACHERS, the 2D net of the same "
                   "backbone: slowonly_r50_4x16 -> tsn_r50)")
    g = p.add_argument_group("the steps (defaults: the paper's)")
    g.add_argument("--threshold", type=float, default=0.5, help="teacher confidence threshold T (Sec. 3.4)")
    g.add_argument("--mode", choices=("query", "pseudo"), default="query", help="filter.py --mode")
    g.add_argument("--rule", default="fixed", help="filter.py --rule NAME[:VALUE] (filter.RULES): fixed, one T for "
                   "every class (the paper's), or class-adaptive T_c (beyond the paper)")
    g.add_argument("--dedup", action=argparse.BooleanOptionalAction, default=None, help="de-duplicate every web "
                   "source against the target's val split (Sec. 3.3). Default: on; off on the demo target, whose "
                   "generated crawl shares no frame with its val split")
    g.add_argument("--dedup-checkpoint", default=None, help="the paper's ImageNet ResNet-50 weights (torchvision "
                   "layout) for de-duplication; without them filter.py uses the teacher's backbone and says so")
    g.add_argument("--epochs", type=int, default=None, help="epochs of every training run (default: the recipe's)")
    g.add_argument("--batch-size", type=int, default=8, help="target videos per step and process, |B_T|")
    g.add_argument("--ratio", default="", help="|B_T|:|B_A1|:... of the student (default 2:1 per source; train.py "
                   "--ratio); a source the teacher keeps nothing of leaves step 4 with its number")
    g.add_argument("--resample", default=DEFAULT_RESAMPLE, help="class resampling of the web sources (Table 10): one "
                   "rule, or one per --sources entry separated by ','")
    g.add_argument("--mixup", type=float, default=0.0, help="mixup alpha of the student (0: off; Table 9)")
    g.add_argument("--image-to-clip", default="warp-agno", choices=transforms.IMAGE_TO_CLIP_MODES, help="how the "
                   "student's web images become clips (Eq. 2, Table 8)")
    g.add_argument("--inflate", action=webscale.Renamed, new="--image-to-clip", help=argparse.SUPPRESS,
                   why="'inflate' names the 2D->3D inflation of weights only")
    g.add_argument("--snippet", default=None, choices=tuple(transforms.SNIPPET_MODES), help="untrimmed-video "
                   "snippets of a 2D student (Table 14). Default: the paper's 1p2n, whose negative frames add "
                   "context; 3pos on the demo target, whose negative shots carry none")
    g.add_argument("--motion-videos", type=int, default=5, help="target videos per class whose camera motion is "
                   f"fitted for Eq. 2 (a class with fewer than {MIN_CLASS_FIT} homographies uses the class-agnostic "
                   "fit under warp-spec)")
    g.add_argument("--motion", default=None, help="camera-motion file written by step 3, read by the student "
                   "(default WORK_DIR/motion.json; with --estimate-motion: data.motion_path, where train.py looks)")
    g.add_argument("--select", choices=("last", "val"), default="last", help="weights every run tests and keeps as "
                   "final.pth (the teachers of step 2): last = the final ones; val = best on the val split")
    g.add_argument("--seed", type=int, default=0, help="seed of every run")
    g = p.add_argument_group("beyond Table 1")
    g.add_argument("--rounds", type=int, default=1, help="teacher-student rounds (Noisy Student, beyond the paper): "
                   "the student of round r filters the web sources again (SOURCE-filtered-rR) and teaches "
                   "student_rR; 1 = the paper's single teacher")
    g.add_argument("--also-unfiltered", action="store_true", help="also train a student on the raw web data "
                   "(Table 12)")
    g.add_argument("--also-still", action="store_true", help="also train a student whose web images are replicated "
                   "(--image-to-clip still, Table 8)")
    g = p.add_argument_group("running it")
    g.add_argument("--workers", type=int, default=2, help="DataLoader workers per process")
    g.add_argument("--nproc", type=int, default=1, help="processes per train.py / filter.py step: N > 1 runs each "
                   "under `torchrun --standalone --nproc-per-node N` (one GPU per process)")
    g.add_argument("--work-dir", default="work_dirs/omnisource", help="every run goes to a sub-folder of this")
    g.add_argument("--resume", action="store_true", help="continue an interrupted procedure: steps that finished "
                   "(WORK_DIR/steps.json) are skipped, a killed train.py continues from its latest.pth, filter.py "
                   "from its work folder; other flags than the recorded ones (--workers excepted) are refused")
    g.add_argument("--dry-run", action="store_true", help="print every step's command as it would run (with "
                   "--resume: which are skipped) and run none")
    g = p.add_argument_group("single steps")
    g.add_argument("--estimate-motion", action="store_true", help="only fit the camera motion of --target at the "
                   "stride --arch samples frames (Sec. 3.5) and write it to --motion")
    g.add_argument("--write-queries", default=None, metavar="OUT.jsonl", help="only write the search queries of "
                   "--target's class names (Sec. 3.3), one JSON object per line, for a crawler")
    g.add_argument("--query-sources", default=",".join(QUERY_SOURCES), help="with --write-queries: google and "
                   "youtube get the class name, instagram hashtags by permutation and stemming")
    g.add_argument("--query-years", default=None, metavar="FIRST:LAST", help="with --write-queries: one Google query "
                   "per calendar year, as the paper splits queries by period (Google caps the results of one)")
    return p


def run_procedure(args: argparse.Namespace) -> list[tuple[str, dict]]:
    """Table 1, OmniSource column, on --target and --sources: every step a printed command, run to its end.

    --rounds N > 1 goes beyond the paper (Noisy Student, Xie et al., CVPR 2020): the student of round r is the
    teacher of round r + 1, which filters the web data again (into SOURCE-filtered-rR) and trains student_rR.
    --dry-run prints every command and runs none (each filter.py step is assumed to keep something).
    Returns the rows of the results table: (run name, that run's metrics.json with its confusion matrix).
    """
    work, sources = Path(args.work_dir), args.sources.split(",")
    motion = args.motion or str(work / "motion.json")
    # 1. Train one (or more) teacher M on D_T. With the same architecture as the student it is also
    #    the baseline ("target only") of the comparison.
    print("== step 1: teacher / baseline on the target set", flush=True)
    baseline, teachers = train_teachers(args)
    rows, rounds, every_filtered, first = [("baseline (target only)", baseline)], [], [], None
    same = ["--mixup", str(args.mixup), "--image-to-clip", args.image_to_clip, "--motion", motion, "--snippet",
            args.snippet]
    for r in range(1, args.rounds + 1):
        tag = "" if r == 1 else f"-r{r}"
        # 2. Run M on every U_i, drop samples under the threshold, pseudo-label the rest (filter.py).
        print(f"== step 2: teacher filtering of every web source{_round(r, args)}", flush=True)
        filtered, kept = filter_sources(args, sources, teachers, tag)
        every_filtered += filtered
        if r == 1:
            # 3. Transforms T_i: fit the camera motion of Eq. 2 on the target videos (web images -> clips), at the
            #    stride the student samples frames (motion_stride).
            print("== step 3: camera-motion Gaussian for image-to-clip (Eq. 2)", flush=True)
            run_step(args, "omnisource.py", ["--estimate-motion", "--data-root", args.data_root, "--target",
                                             args.target, "--arch", args.arch, "--motion", motion, "--motion-videos",
                                             str(args.motion_videos), "--seed", str(args.seed), "--workers",
                                             str(args.workers)], nproc=1)
        # 4. Train M' on D_T and the auxiliary sets D_A,i (Eq. 1), one optimiser step per iteration.
        print(f"== step 4: joint training of the student{_round(r, args)}", flush=True)
        joint = ["--aux", ",".join(filtered), *step4_flags(args.ratio, args.resample, kept), *same]
        first = first or joint                      # round 1's: the comparisons below change only one flag
        name = "student" if r == 1 else f"student_r{r}"
        student = run_train(args, name, args.arch, joint)
        rows.append(("OmniSource (filtered web data)" if r == 1 else
                     f"OmniSource round {r} (teacher: the round-{r - 1} student)", student))
        if not args.dry_run:
            rounds.append(figures.round_record(args, r, teachers, filtered, student))
        teachers = next_teachers(args, teachers, work / name / "final.pth")
    # Comparisons beside Table 1's steps, everything else equal: Table 12's unfiltered web data, Table 8's
    # still-image clips.
    if args.also_unfiltered:
        every = step4_flags(args.ratio, args.resample, list(range(len(sources))))
        rows.append(("unfiltered web data",
                     run_train(args, "unfiltered", args.arch, ["--aux", ",".join(sources), *every, *same])))
    if args.also_still:
        rows.append(("filtered, still images (--image-to-clip still)",
                     run_train(args, "still", args.arch, _with(first, "--image-to-clip", "still"))))
    if not args.dry_run:
        embedded = figures.procedure_figures(args, rows, every_filtered, motion)
        figures.write_table(work, rows, args.select, rounds, embedded)
    return rows


def next_teachers(args: argparse.Namespace, teachers: dict[str, Path], student: Path) -> dict[str, Path]:
    """--rounds: the teachers of the next round. The student scores everything it can: a 2D student also images and
    1-FPS frames; a 3D student's web images keep their 2D teacher (Sec. 3.4: images get 2D teachers only)."""
    return {"video": student, "image": student if _is_2d(args.arch) else teachers["image"]}


def train_teachers(args: argparse.Namespace) -> tuple[dict, dict[str, Path]]:
    """Step 1: the baseline (--arch on the target alone) and the teachers, the weights each run reports
    (WORK_DIR/RUN/final.pth): {"video": ..., "image": ...}. Returns (the baseline's metrics, teachers)."""
    work = Path(args.work_dir)
    baseline = run_train(args, "baseline", args.arch)
    teachers = {"video": work / "baseline" / "final.pth"}
    if args.teacher_arch != args.arch:
        run_train(args, "teacher", args.teacher_arch, init=False)
        teachers["video"] = work / "teacher" / "final.pth"
    teachers["image"] = teachers["video"]
    if not _is_2d(args.teacher_arch):                  # Sec. 3.4: web images get 2D teachers only
        run_train(args, "image_teacher", args.image_teacher_arch, init=False)
        teachers["image"] = work / "image_teacher" / "final.pth"
    return baseline, teachers


def filter_sources(args: argparse.Namespace, sources: list[str], teachers: dict[str, Path], tag: str = ""
                   ) -> tuple[list[str], list[int]]:
    """Step 2: one filter.py run per web source (into SOURCE-filtered + `tag`); returns the filtered datasets that
    kept something and their sources' places in `sources`."""
    filtered, kept = [], []
    for i, source in enumerate(sources):
        out, argv = filter_command(args, source, teachers, tag)
        run_step(args, "filter.py", argv)
        if args.dry_run or _kept_any(Path(args.data_root) / out):
            filtered.append(out)
            kept.append(i)
        else:
            print(f"{source}: the teacher kept nothing; the source is left out of joint training, with its number "
                  f"of --ratio and its rule of --resample", flush=True)
    if not filtered:
        raise ValueError(f"the teacher kept no web sample of --sources {args.sources} at --threshold "
                         f"{args.threshold}; lower the threshold or train a better teacher")
    return filtered, kept


def run_train(args: argparse.Namespace, name: str, arch: str, extra: list[str] | None = None,
              init: bool = True) -> dict:
    """One train.py run into WORK_DIR/NAME (--checkpoint only for runs with `init`); returns its metrics ({} with
    --dry-run)."""
    argv = ["--data-root", args.data_root, "--target", args.target, "--arch", arch, "--batch-size",
            str(args.batch_size), "--seed", str(args.seed), "--workers", str(args.workers), "--select", args.select]
    if args.epochs:
        argv += ["--epochs", str(args.epochs)]
    if init and args.checkpoint:
        argv += ["--checkpoint", args.checkpoint] + (["--finetune"] if args.finetune else [])
    work_dir = Path(args.work_dir) / name
    run_step(args, "train.py", argv + (extra or []) + ["--work-dir", str(work_dir)])
    return {} if args.dry_run else figures.read_metrics(work_dir)


def step4_flags(ratio: str, resample: str, kept: list[int]) -> list[str]:
    """--ratio and --resample of step 4 for the sources (indices into --sources) that kept something: a source the
    teacher kept nothing of leaves with its number of the ratio and its rule (when one is given per source)."""
    flags = []
    if ratio:
        parts = ratio.split(":")
        flags += ["--ratio", ":".join([parts[0]] + [parts[1 + i] for i in kept])]
    rules = [r.strip() for r in resample.split(",")]
    return flags + ["--resample", ",".join(rules if len(rules) == 1 else [rules[i] for i in kept])]


def filter_command(args: argparse.Namespace, source: str, teachers: dict[str, Path], tag: str = ""
                   ) -> tuple[str, list[str]]:
    """Step 2's filter.py command for one web source: (output dataset name under --data-root, arguments)."""
    out = f"{source}-filtered{tag}"
    kind = _source_kind(args.data_root, source)
    # Sec. 3.4-3.5: images, and the 1-FPS frames of untrimmed videos for a 2D student, need a 2D teacher
    two_d = kind == "image" or (kind == "untrimmed" and _is_2d(args.arch))
    teacher = teachers["image" if two_d else "video"]
    argv = ["--data-root", args.data_root, "--source", source, "--teacher", str(teacher), "--out", out,
            "--threshold", str(args.threshold), "--mode", args.mode, "--rule", args.rule,
            "--workers", str(args.workers), "--student", "2d" if _is_2d(args.arch) else "3d"]
    if args.dedup:                                  # Sec. 3.3: web samples too close to a val frame are removed
        argv += ["--dedup-against", args.target]
        argv += ["--dedup-checkpoint", args.dedup_checkpoint] if args.dedup_checkpoint else []
    return out, argv


def run_step(args: argparse.Namespace, script: str, argv: list[str], nproc: int | None = None) -> None:
    """Print the command a user would type for one step, run it, and raise StepFailed naming it if it fails.

    nproc (default --nproc) > 1: the script runs under torchrun (`python -m torch.distributed.run`, which works
    inside a virtual environment as the `torchrun` script may not).
    A crash or kill at any moment loses at most the step that was running (--resume):
    1. a step's exact command is recorded in WORK_DIR/steps.json when it finishes, and unrecorded when it starts
       again (a rerun that dies half-way has not finished);
    2. with --resume a recorded command is skipped; train.py runs get --resume (each continues from its own
       latest.pth, exactly); filter.py continues from its work folder by itself (the same command again);
    3. steps.json also records the procedure's own flags, and --resume with other ones is a one-line error
       (checkpoints.check_procedure); without --resume each train.py run starts in a fresh folder.
    --dry-run: the command is printed as it would run (after the same --resume checks) and nothing else happens.
    """
    shown, launched = step_command(script, argv, args.nproc if nproc is None else nproc)
    command, record = shlex.join(shown), Path(args.work_dir) / "steps.json"
    if args.resume:
        checkpoints.check_procedure(record, args)
    if args.resume and command in checkpoints.finished_steps(record):
        print(f"$ {command}\n  (finished earlier, skipped: --resume)", flush=True)
        return
    if args.resume and script == "train.py":    # continues from its latest.pth, or starts if it has none
        shown, launched = shown + ["--resume"], launched + ["--resume"]
    print("$ " + shlex.join(shown), flush=True)
    if args.dry_run:
        return
    checkpoints.mark_step(record, command, finished=False, procedure=args)
    if not args.resume and script == "train.py":    # a new procedure: the run's folder starts afresh (train.py
        shutil.rmtree(argv[argv.index("--work-dir") + 1], ignore_errors=True)   # refuses a used one)
    code = subprocess.call(launched)
    if code != 0:
        raise StepFailed(f"this step failed (exit status {code}): {shlex.join(shown)}")
    checkpoints.mark_step(record, command, finished=True, procedure=args)


def step_command(script: str, argv: list[str], nproc: int = 1) -> tuple[list[str], list[str]]:
    """(the command as a user types it, the command launched) for SCRIPT of this folder with arguments argv."""
    path = Path(__file__).resolve().with_name(script)
    shown = os.path.relpath(path)
    if nproc > 1:
        launcher = ["--standalone", "--nproc-per-node", str(nproc)]
        return (["torchrun", *launcher, shown, *argv],
                [sys.executable, "-m", "torch.distributed.run", *launcher, str(path), *argv])
    return ["python", shown, *argv], [sys.executable, str(path), *argv]


def write_target_queries(args: argparse.Namespace) -> None:
    """--write-queries: Sec. 3.3's queries for --target's class names -> OUT.jsonl."""
    classes = data.resolve_dataset(args.data_root, args.target).classes
    sources = tuple(s.strip() for s in args.query_sources.split(",") if s.strip())
    rows = task_queries(classes, sources, _parse_years(args.query_years))
    write_queries(args.write_queries, rows)
    print(f"{len(rows)} queries for the {len(classes)} classes of {args.target} -> {args.write_queries}", flush=True)


def main(args: argparse.Namespace) -> list[tuple[str, dict]] | None:
    """The procedure (run_procedure), or one of its single steps (--estimate-motion, --write-queries)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:          # the procedure launches its steps itself: under torchrun every rank would launch them
        raise ValueError(f"omnisource.py does not run under torchrun (WORLD_SIZE={world}): it launches every "
                         f"train.py and filter.py step itself; for N processes per step run python omnisource.py "
                         f"--nproc N")
    if args.write_queries:
        return write_target_queries(args)
    if not args.estimate_motion:
        _check_args(args)
    settled = demo_settings_line(args, ["arch"] if args.estimate_motion else None)
    if settled:
        print(settled, flush=True)
    if args.estimate_motion:
        estimate_motion(args.data_root, args.target, args.arch, out=args.motion, videos_per_class=args.motion_videos,
                        seed=args.seed, workers=args.workers)
        return None
    synthetic.ensure_demo_data(args.data_root, args.target)
    return run_procedure(args)


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------

def _check_args(args: argparse.Namespace) -> None:
    """Flags the last steps read, checked before hours of teacher training: one-line errors naming the flag."""
    if args.nproc < 1:
        raise ValueError(f"--nproc {args.nproc}: expected a number of processes >= 1")
    if args.rounds < 1:
        raise ValueError(f"--rounds {args.rounds}: expected a number of teacher-student rounds >= 1")
    if args.sources is None:
        raise ValueError(f"--sources: name the web sources to filter and add for --target {args.target} (dataset "
                         f"names under --data-root, e.g. gg,ig-vid,k400-untr)")
    for flag in ("arch", "teacher_arch", "image_teacher_arch"):
        arch = getattr(args, flag)
        if arch is not None and arch not in models.ARCHS:
            raise ValueError(f"--{flag.replace('_', '-')} {arch}: expected one of {', '.join(models.ARCHS)}")
    args.teacher_arch = args.teacher_arch or args.arch
    if args.image_teacher_arch is None and not _is_2d(args.teacher_arch):
        if args.teacher_arch not in IMAGE_TEACHERS:
            raise ValueError(f"--teacher-arch {args.teacher_arch} is 3D and has no 2D counterpart in IMAGE_TEACHERS "
                             f"to score web images (Sec. 3.4): give --image-teacher-arch")
        args.image_teacher_arch = IMAGE_TEACHERS[args.teacher_arch]
    if args.image_teacher_arch is not None and not _is_2d(args.image_teacher_arch):
        raise ValueError(f"--image-teacher-arch {args.image_teacher_arch}: expected a 2D (tsn_*) architecture, web "
                         f"images get 2D teachers only (Sec. 3.4)")
    if not 0 <= args.threshold <= 1:
        raise ValueError(f"--threshold {args.threshold}: expected a probability in [0, 1]")
    filter.parse_rule(args.rule)
    for flag, value in (("--batch-size", args.batch_size), ("--epochs", args.epochs),
                        ("--motion-videos", args.motion_videos)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} {value}: expected a number >= 1")
    if args.mixup < 0:
        raise ValueError(f"--mixup {args.mixup}: expected an alpha >= 0 (0: off)")
    names = args.sources.split(",")
    if not all(names):
        raise ValueError("--sources: expected at least one web source name" if not any(names) else
                         f"--sources {args.sources}: an empty name between two ','")
    num_sources = len(names)
    parse_ratio(args.ratio, num_sources)
    resample_rules(args.resample, num_sources)


def _flag_value(value: object) -> str:
    """A setting as demo_settings_line shows it: on / off for switches, 'required' for no default."""
    return {True: "on", False: "off", None: "required"}.get(value, str(value)) if not isinstance(value, str) else value


def _round(r: int, args: argparse.Namespace) -> str:
    """' (round R of N)' in a step's banner when --rounds > 1."""
    return f" (round {r} of {args.rounds})" if args.rounds > 1 else ""


def _kept_any(folder: Path) -> bool:
    """Whether a filter.py output lists at least one sample (its train.txt has a non-blank line)."""
    return any(line.strip() for line in (folder / "train.txt").read_text().splitlines())


def _with(argv: list[str], flag: str, value: str) -> list[str]:
    """A copy of the argument list `argv` with `flag`'s value replaced."""
    argv = list(argv)
    argv[argv.index(flag) + 1] = value
    return argv


def _is_2d(arch: str) -> bool:
    """Whether an architecture is a 2D TSN (scores single images and frames, Sec. 3.4-3.5)."""
    return _arch_spec(arch).family == "tsn"


def _arch_spec(arch: str) -> models.ArchSpec:
    """The default ArchSpec of an architecture name; an unknown name is a one-line ValueError naming the choices."""
    if arch not in models.ARCHS:
        raise ValueError(f"--arch {arch}: expected one of {', '.join(models.ARCHS)}")
    return models.ARCHS[arch][1]


class _MotionVideos(torch.utils.data.Dataset):
    """estimate_motion's videos, one item each: (normalised homographies of its windows, None where rejected; its
    label; the error that made it unreadable, else ""). The start of each video's run is drawn from (seed, index)."""

    def __init__(self, samples: list[webscale.Sample], spec: models.ArchSpec, seed: int):
        self.samples, self.spec, self.seed = samples, spec, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[list, int, str]:
        s = self.samples[i]
        try:
            total = s.num_frames or data.count_frames(s.path)
            stride = stride_frames(self.spec, total)
            windows = min(max(2, MOTION_STEPS // stride), (total - 1) // stride)
            if windows < 1:
                return [], s.label, f"{total} frames: shorter than one step of {stride} frames"
            start = int(np.random.default_rng([self.seed, 13, i]).integers(0, total - windows * stride))
            frames = data.read_frames(s.path, np.arange(start, start + windows * stride + 1))   # (F, H, W, 3)
        except Exception as err:            # a broken video only loses its own motion samples
            return [], s.label, str(err).splitlines()[0] if str(err) else type(err).__name__
        size = (frames.shape[2], frames.shape[1])
        hs = transforms.estimate_video_motion(frames, stride)
        return [None if h is None else transforms.normalize_homography(h, size) for h in hs], s.label, ""


def _source_kind(data_root: str | Path, source: str) -> str:
    """'image', 'untrimmed' or 'video': the kind of most of a source's samples (decides the teacher)."""
    samples = data.load_split(data.resolve_dataset(data_root, source), "train")
    counts = np.bincount(webscale.kinds_of(samples), minlength=len(webscale.KINDS))
    top = webscale.KINDS[int(counts.argmax())] if counts.sum() else "video"
    return {"image": "image", "untrimmed": "untrimmed", "raw": "untrimmed"}.get(top, "video")


def _parse_years(text: str | None) -> tuple[int, int] | None:
    """--query-years FIRST:LAST -> (FIRST, LAST); None stays None."""
    if text is None:
        return None
    first, sep, last = text.partition(":")
    if not (sep and first.strip().isdigit() and last.strip().isdigit() and int(first) <= int(last)):
        raise ValueError(f"--query-years {text}: expected FIRST:LAST calendar years, e.g. 2015:2019")
    return int(first), int(last)


def _query(source: str, label: int, name: str, query: str) -> dict:
    return {"source": source, "label": label, "class": name, "query": query}


def _repair_stem(s: str) -> str:
    """Step 2 of `stem`: a doubled final consonant but l, s, z is halved (runn -> run); -at, -ag, -bl, -iz, -c, -v and
    a consonant + l take an "e" back (massag -> massage); so does a short consonant-vowel-consonant stem not ending in
    w, x or y (rid -> ride)."""
    vowels = "aeiou"
    if len(s) >= 2 and s[-1] == s[-2] and s[-1] not in vowels + "lsz":
        return s[:-1]
    if s.endswith(("at", "ag", "bl", "iz", "c", "v")) and len(s) > 3 or re.search(r"[bdfgkpt]l$", s):
        return s + "e"
    if len(s) == 3 and s[0] not in vowels and s[1] in vowels and s[2] not in vowels + "wxy":
        return s + "e"
    return s


if __name__ == "__main__":
    webscale.run_command(main, get_args_parser())
