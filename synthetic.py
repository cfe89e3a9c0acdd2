"""Embedded demo data for OmniSource: a small labeled target set plus noisy "crawled" web sources.

`python synthetic.py --out DIR` writes, deterministically from a seed and with no downloads (a few MB, well under a
minute on a laptop CPU):

    DIR/synth/               target set D_T (Sec. 3.2): videos/NAME.mp4 LABEL in train.txt / val.txt
    DIR/synth-web-img/       web images U_img:     images/NAME.jpg QUERY_LABEL   in train.txt (val.txt empty)
    DIR/synth-web-vid/       short web videos U_vid: videos/NAME.mp4 QUERY_LABEL in train.txt (val.txt empty)
    DIR/synth-web-untrimmed/ untrimmed web videos: untrimmed/NAME.mp4 QUERY_LABEL in train.txt (val.txt empty)
    DIR/truth.json           what the generator knows and the pipeline must not: relevance, true class, positive
                             frame ranges of untrimmed videos, broken files, frame counts

Every folder has the same classes.txt (line i = name of class i). Labels of the web lists are QUERY labels: the class
name used as the crawl keyword (Sec. 3.3), not the content.

Why the data looks as it does (the paper phenomenon each property mimics):
- Classes are objects told apart by APPEARANCE (shape + surface pattern, e.g. "striped_square"), while motion (object
  drift and spin, camera pan, a passing occluder) is present but carries no class information: a 2D TSN that looks at
  sparse frames is the right tool (Sec. 3.5, 2D teachers for images) and the frames still change over time.
- Large intra-class variation (size, position, rotation, colour: 90% of the objects have their class's typical
  hue, as real classes have typical colours and scenes, the rest any hue; background colour and texture, clutter, noise,
  occlusion, motion blur) and FEW labeled videos per class (default 6): a model trained on D_T alone generalises only
  moderately, which is the regime where web data pays off most (Sec. 5, Fig. 7: the gain grows when labels are scarce).
- Web data has a DOMAIN GAP (Sec. 1/3.6: "web images may focus more on objects and contain less motion blur than
  videos"): web images show the object centred and larger, on a clean background, with saturated colours, high
  pattern contrast, no noise and no blur, in various aspect ratios; short web videos sit between images and target.
- Crawls are NOISY (Sec. 3.4: using unfiltered web data drops accuracy; Sec. 4.2 teacher filtering rejects 70-80% of
  the data): only `relevant_fraction` (default 0.3) of each web source shows its query class; the rest shows another
  class's object (a wrong label) or clutter with no object at all.
- Crawls are UNBALANCED and relevance differs per query (Fig. 3): per-class crawl sizes and relevance rates vary
  (the overall relevant fraction is kept at the configured value), so filtering leaves an uneven class distribution
  for the resampling strategies of Sec. 3.6.
- Untrimmed videos (Sec. 3.5 "Untrimmed Videos") are several shots with hard cuts; the query object is visible in
  only some of them (about `untrimmed_pos_fraction` of the frames), the other shots are mostly context without the
  object (clutter; `untrimmed_other_fraction` of them show another class), so
  frame / clip level teacher scores have something to separate. truth.json gives the positive frame ranges.
- Crawls contain invalid files (Sec. 3.3 "we first remove invalid or corrupted data"): a text file named .jpg, a
  zero-byte .mp4, an .mp4 cut before its index (cannot be opened) and an .mp4 cut mid-stream (opens, claims all its
  frames, fails while decoding); all are listed in the web lists and marked in truth.json.
- Videos are H.264 (libx264, yuv420p) with a keyframe every `gop` frames (default 8), so that frame readers that seek
  to keyframes have something to gain; x264 runs single-threaded without mbtree so the bytes are deterministic.

Splits: synth train/val are balanced (`train_per_class` / `val_per_class` videos per class); web folders put every
crawled sample in train.txt and have an EMPTY val.txt. Names: target `CLASS_NNN.mp4` (split is the list file), web
`QUERY_NNN.ext` (the crawl keyword; relevance is not readable from the name or the order).
"""
from __future__ import annotations

import argparse
import colorsys
import json
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import av
import numpy as np
from PIL import Image


# ----------------------------------------------------------------------------------------------------------------------
# 1. Configuration: sizes and knobs, and the appearance of each source (where the domain gap lives)
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class SynthConfig:
    """Sizes and knobs of the generated data; the defaults give ~7 MB in ~25 s (tuples: CLI does not expose)."""
    seed: int = 0
    num_classes: int = 8
    train_per_class: int = 6             # labeled target videos per class (train.txt)
    val_per_class: int = 50              # target validation videos per class (val.txt): 400, one is 0.25 points
    web_images_per_class: int = 40       # crawled images per query (mean; varies per class by +-web_count_jitter)
    web_videos_per_class: int = 12       # crawled short videos per query (mean)
    untrimmed_per_class: int = 3         # crawled untrimmed videos per query (mean)
    relevant_fraction: float = 0.3       # overall fraction of web images / short videos showing their query class
    other_class_fraction: float = 0.5    # of the irrelevant ones: fraction showing another class (rest: clutter)
    web_count_jitter: float = 0.4        # per-class crawl size factor drawn from 1 +- this (Fig. 3 imbalance)
    relevance_jitter: float = 0.5        # per-class relevance rate factor drawn from 1 +- this (mean kept)
    untrimmed_pos_fraction: float = 0.3  # target fraction of an untrimmed video's frames that show the query class
    untrimmed_other_fraction: float = 0.1  # of an untrimmed video's negative shots: fraction showing another class
    width: int = 96                      # target / untrimmed frame width (even)
    height: int = 72                     # target / untrimmed frame height (even)
    web_video_size: int = 80             # short web videos are square (like social-media uploads)
    clip_frames: tuple = (24, 32)        # target clip length range (inclusive)
    web_video_frames: tuple = (16, 32)   # short web video length range
    untrimmed_frames: tuple = (64, 120)  # untrimmed video length range
    fps: int = 8
    gop: int = 8                         # keyframe interval (frames)
    crf: int = 28                        # x264 quality (higher = smaller files)
    jpeg_quality: int = 90
    broken_files: bool = True            # add the corrupted web files described in the module docstring


@dataclass(frozen=True)
class Style:
    """Appearance statistics of one source (the domain gap between target and web data lives here)."""
    radius: tuple        # object radius range, fraction of the frame's short side
    jitter: float        # max offset of the object's start centre from the frame centre, fraction of each side
    drift: float         # max object travel over a clip, fraction of the short side
    spin: float          # max rotation speed, radians per frame
    saturation: tuple    # object colour HSV saturation range
    value: tuple         # object colour HSV value range
    contrast: tuple      # pattern contrast range (0: invisible pattern, 1: black/white)
    clean_bg: bool       # plain light background instead of textured clutter
    clutter: tuple       # number of distractor blobs (min, max)
    texture: float       # background texture amplitude
    pan: float           # max camera travel over a clip, fraction of the short side
    occlusion: float     # probability of an occluder passing through the clip
    noise: tuple         # per-pixel Gaussian noise sigma range (0..1 scale)
    blur: int            # max motion blur taps (< 2: none)
    class_hue: float = 0.9   # probability that the object has its class's typical hue instead of a random one


TARGET_STYLE = Style(radius=(0.28, 0.42), jitter=0.18, drift=0.2, spin=0.06, saturation=(0.2, 0.9),
                     value=(0.35, 0.95), contrast=(0.5, 0.9), clean_bg=False, clutter=(0, 2), texture=0.05,
                     pan=0.25, occlusion=0.2, noise=(0.005, 0.025), blur=2)
WEB_IMAGE_STYLE = Style(radius=(0.28, 0.42), jitter=0.06, drift=0.0, spin=0.0, saturation=(0.7, 1.0),
                        value=(0.65, 1.0), contrast=(0.65, 1.0), clean_bg=True, clutter=(0, 1), texture=0.0,
                        pan=0.0, occlusion=0.0, noise=(0.0, 0.0), blur=0)
WEB_VIDEO_STYLE = Style(radius=(0.22, 0.38), jitter=0.12, drift=0.15, spin=0.04, saturation=(0.5, 1.0),
                        value=(0.5, 1.0), contrast=(0.45, 0.9), clean_bg=False, clutter=(0, 3), texture=0.08,
                        pan=0.12, occlusion=0.2, noise=(0.0, 0.02), blur=1)
WEB_IMAGE_SIZES = ((96, 96), (112, 84), (84, 112), (104, 78))   # (width, height): crawled images vary in shape
SOURCES = ("synth", "synth-web-img", "synth-web-vid", "synth-web-untrimmed")
DEMO_TARGET = SOURCES[0]   # --target of the generated demo: train.py and omnisource.py generate it when missing
# The demo's settings: in force only when --target is DEMO_TARGET (a printed line says which), where every other
# target gets the paper's (omnisource.PAPER_SETTINGS). Why each differs:
#   arch      the tiny nets learn the 64-px generated clips from scratch in minutes (models.py *_tiny)
#   sources   the generated crawl
#   snippet   the generated untrimmed videos' negative shots are clutter without context, while the paper's argument
#             for 1p2n (Table 14) is the context negative frames carry: 3pos measured better here (README)
#   dedup     the generated crawl shares no frame with the val split (Sec. 3.3's de-duplication has nothing to find)
DEMO_SETTINGS = {"arch": "tsn_tiny", "sources": ",".join(SOURCES[1:]), "snippet": "3pos", "dedup": False}


# ----------------------------------------------------------------------------------------------------------------------
# 2. Generation, the demo's truth against filter.py's output, the command line
# ----------------------------------------------------------------------------------------------------------------------

def generate(out_dir: str | Path, config: SynthConfig | None = None) -> dict:
    """Write the four dataset folders and truth.json under out_dir; return a summary dict (counts, bytes, seconds)."""
    cfg = config or SynthConfig()
    _check_config(cfg)
    start = time.perf_counter()
    out = Path(out_dir)
    classes = class_names(cfg.num_classes)
    # 1. folders with the shared classes.txt
    for name in SOURCES:
        (out / name).mkdir(parents=True, exist_ok=True)
        (out / name / "classes.txt").write_text("".join(c + "\n" for c in classes))
    truth = {"seed": cfg.seed, "config": asdict(cfg), "classes": classes,
             "notes": "ranges are 0-based [start, end) frame indices; labels index classes.txt"}
    # 2. labeled target set: balanced, trimmed clips in the target style
    truth["synth"] = _write_target(out / "synth", cfg, classes)
    # 3.-5. web sources with query labels; relevance decided per class by the crawl plan
    truth["synth-web-img"] = _write_web_images(out / "synth-web-img", cfg, classes)
    truth["synth-web-vid"] = _write_web_videos(out / "synth-web-vid", cfg, classes)
    truth["synth-web-untrimmed"] = _write_untrimmed(out / "synth-web-untrimmed", cfg, classes)
    # 6. corrupted crawl results, appended to the web lists
    if cfg.broken_files:
        _write_broken(out, cfg, classes, truth)
    # 7. ground truth and summary
    (out / "truth.json").write_text(json.dumps(truth, indent=1, sort_keys=True) + "\n")
    return _summary(out, classes, start)


def class_names(num_classes: int) -> list:
    """Class i = (pattern, shape) pair; the first 8 classes use 8 distinct shapes and 8 distinct patterns."""
    shapes, patterns = list(SHAPES), list(PATTERNS)
    pairs = [(patterns[(i + 3 * (i // len(shapes))) % len(patterns)], shapes[i % len(shapes)])
             for i in range(num_classes)]
    return [f"{p}_{s}" for p, s in pairs]


def filtering_quality(data_root: str | Path, filtered: str, records: Iterable[dict]) -> dict | None:
    """Precision / recall of filter.py's output DATA_ROOT/FILTERED against truth.json (the demo only); records: its
    per-sample records with their decision (figures.read_filter_output(...).records()).

    A kept sample is correct when its label (query or pseudo label) is the class its content really shows.
    precision = correct kept / kept; recall = correct kept / samples that could be kept correctly (query mode: those
    showing their query class; pseudo mode: those showing any class); base_rate = precision of keeping every
    readable sample with its query label. The same per class (K,) lists: class_precision over the samples kept with
    label c, class_recall over those that could be kept correctly as c; worst_class_recall / worst_class: the
    lowest class_recall among classes with such samples (what a single threshold costs the unsure classes,
    --rule). For untrimmed videos scored frame by frame (2D students, Sec. 3.5) the same is measured on the 1-FPS
    frames (`_frame_quality`).
    Returns None when the data root has no truth.json or the report belongs to another source.
    """
    root = Path(data_root)
    report_file, truth_file = root / filtered / "report.json", root / "truth.json"
    if not (report_file.exists() and truth_file.exists()):
        return None
    report, truth = json.loads(report_file.read_text()), json.loads(truth_file.read_text())
    if report.get("source") not in truth:
        return None
    known, k = truth[report["source"]], len(report["classes"])
    query_mode = report["mode"] == "query"
    rows = [(r, known[r["path"]]) for r in records if r["path"] in known]
    kept = [(r, t) for r, t in rows if r["status"] == "kept"]
    readable = [(r, t) for r, t in rows if r["status"] != "corrupt"]
    # per class c: kept with label c, of those correct, and the samples that could be kept correctly as c
    kept_c = np.bincount([r["label"] for r, _ in kept], minlength=k)
    correct_c = np.bincount([r["label"] for r, t in kept if r["label"] == t["true_class"]], minlength=k)
    possible_c = np.bincount([t["true_class"] for _, t in rows
                              if t["true_class"] is not None and (t["true_class"] == t["query"] or not query_mode)],
                             minlength=k)
    class_recall = correct_c / np.maximum(possible_c, 1)
    worst = int(np.argmin(np.where(possible_c > 0, class_recall, np.inf)))
    out = {"source": report["source"], "mode": report["mode"], "threshold": report["threshold"],
           "rule": report.get("rule", "fixed"), "kept": len(kept), "samples": len(rows),
           "precision": int(correct_c.sum()) / max(1, len(kept)),
           "recall": int(correct_c.sum()) / max(1, int(possible_c.sum())),
           "base_rate": sum(t["true_class"] == t["query"] for _, t in readable) / max(1, len(readable)),
           "class_precision": (correct_c / np.maximum(kept_c, 1)).tolist(), "class_recall": class_recall.tolist(),
           "worst_class_recall": float(class_recall[worst]), "worst_class": report["classes"][worst]}
    if any("unit_scores" in r and "frames" in r for r, _ in rows):
        out.update(_frame_quality(rows))
    return out


def ensure_demo_data(data_root: str | Path, target: str) -> bool:
    """Generate the default demo into data_root when target is "synth" and DATA_ROOT/synth/classes.txt is missing.

    Returns whether it generated. Called by train.py (rank 0 only; the barrier is train.py's) and omnisource.py.
    """
    if target != DEMO_TARGET or (Path(data_root) / DEMO_TARGET / "classes.txt").exists():
        return False
    print(f"generating the demo dataset in {data_root}/ ...", flush=True)
    generate(data_root, SynthConfig())
    return True


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Generate the embedded OmniSource demo data (target + noisy web sources).")
    d = SynthConfig()
    p.add_argument("--out", required=True, help="output root; gets synth/, synth-web-img/, synth-web-vid/, "
                                                "synth-web-untrimmed/ and truth.json")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed; same seed gives the same data")
    p.add_argument("--num-classes", type=int, default=d.num_classes, help="number of classes (2..40)")
    p.add_argument("--train-per-class", type=int, default=d.train_per_class,
                   help="labeled target train videos per class")
    p.add_argument("--val-per-class", type=int, default=d.val_per_class, help="target validation videos per class")
    p.add_argument("--web-images-per-class", type=int, default=d.web_images_per_class,
                   help="crawled web images per query class (mean, varies per class)")
    p.add_argument("--web-videos-per-class", type=int, default=d.web_videos_per_class,
                   help="crawled short web videos per query class (mean, varies per class)")
    p.add_argument("--untrimmed-per-class", type=int, default=d.untrimmed_per_class,
                   help="crawled untrimmed web videos per query class (mean, varies per class)")
    p.add_argument("--relevant-fraction", type=float, default=d.relevant_fraction,
                   help="fraction of web images / short videos that really show their query class")
    p.add_argument("--untrimmed-pos-fraction", type=float, default=d.untrimmed_pos_fraction,
                   help="fraction of each untrimmed video's frames that show the query class")
    p.add_argument("--width", type=int, default=d.width, help="target and untrimmed frame width (even)")
    p.add_argument("--height", type=int, default=d.height, help="target and untrimmed frame height (even)")
    p.add_argument("--fps", type=int, default=d.fps, help="frame rate written into the videos")
    p.add_argument("--gop", type=int, default=d.gop, help="keyframe interval in frames")
    p.add_argument("--crf", type=int, default=d.crf, help="x264 constant rate factor (higher = smaller, worse)")
    p.add_argument("--no-broken", action="store_true", help="do not add the deliberately corrupted web files")
    return p


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    cfg = SynthConfig(seed=args.seed, num_classes=args.num_classes, train_per_class=args.train_per_class,
                      val_per_class=args.val_per_class, web_images_per_class=args.web_images_per_class,
                      web_videos_per_class=args.web_videos_per_class, untrimmed_per_class=args.untrimmed_per_class,
                      relevant_fraction=args.relevant_fraction, untrimmed_pos_fraction=args.untrimmed_pos_fraction,
                      width=args.width, height=args.height, fps=args.fps, gop=args.gop, crf=args.crf,
                      broken_files=not args.no_broken)
    try:
        summary = generate(args.out, cfg)
    except ValueError as e:
        sys.exit(f"error: {e}")
    for name, c in summary["counts"].items():
        print(f"{name:22s} train {c['train']:4d}  val {c['val']:4d}")
    print(f"{summary['num_files']} files, {summary['bytes'] / 1e6:.1f} MB in {summary['seconds']:.1f} s "
          f"-> {summary['out_dir']} (ground truth: {summary['truth']})")


# ----------------------------------------------------------------------------------------------------------------------
# 3. Per-source writers
# ----------------------------------------------------------------------------------------------------------------------

def _write_target(root: Path, cfg: SynthConfig, classes: list) -> dict:
    """Balanced labeled clips; returns {path: {label, split, num_frames}}."""
    (root / "videos").mkdir(exist_ok=True)
    truth, lines = {}, {"train": [], "val": []}
    size = (cfg.width, cfg.height)
    for c, cname in enumerate(classes):
        n_train = cfg.train_per_class
        for k in range(n_train + cfg.val_per_class):
            split = "train" if k < n_train else "val"
            rng = _rng(cfg.seed, "synth", c, k)
            num = int(rng.integers(cfg.clip_frames[0], cfg.clip_frames[1] + 1))
            frames = _render_clip(_sample_scene(rng, TARGET_STYLE, size, num, c), num)
            rel = f"videos/{cname}_{k:03d}.mp4"
            _encode_mp4(root / rel, frames, cfg)
            lines[split].append(f"{rel} {c}")
            truth[rel] = {"label": c, "split": split, "num_frames": num}
    for split in ("train", "val"):
        _write_list(root / f"{split}.txt", lines[split])
    return truth


def _write_web_images(root: Path, cfg: SynthConfig, classes: list) -> dict:
    """Crawled still images in the web style; QUERY labels in train.txt."""
    (root / "images").mkdir(exist_ok=True)
    truth, lines = {}, []
    for q, kinds in enumerate(_crawl_plan(cfg, "synth-web-img", cfg.web_images_per_class)):
        for k, (kind, true_class) in enumerate(kinds):
            rng = _rng(cfg.seed, "synth-web-img", q, k)
            size = WEB_IMAGE_SIZES[int(rng.integers(len(WEB_IMAGE_SIZES)))]
            image = _render_clip(_sample_scene(rng, WEB_IMAGE_STYLE, size, 1, true_class), 1)[0]
            rel = f"images/{classes[q]}_{k:03d}.jpg"
            Image.fromarray(image).save(root / rel, quality=cfg.jpeg_quality)
            lines.append(f"{rel} {q}")
            truth[rel] = _web_truth(q, kind, true_class, width=size[0], height=size[1])
    _write_list(root / "train.txt", lines)
    _write_list(root / "val.txt", [])
    return truth


def _write_web_videos(root: Path, cfg: SynthConfig, classes: list) -> dict:
    """Crawled short videos (square, between web-image and target style); QUERY labels in train.txt."""
    (root / "videos").mkdir(exist_ok=True)
    truth, lines = {}, []
    size = (cfg.web_video_size, cfg.web_video_size)
    for q, kinds in enumerate(_crawl_plan(cfg, "synth-web-vid", cfg.web_videos_per_class)):
        for k, (kind, true_class) in enumerate(kinds):
            rng = _rng(cfg.seed, "synth-web-vid", q, k)
            num = int(rng.integers(cfg.web_video_frames[0], cfg.web_video_frames[1] + 1))
            frames = _render_clip(_sample_scene(rng, WEB_VIDEO_STYLE, size, num, true_class), num)
            rel = f"videos/{classes[q]}_{k:03d}.mp4"
            _encode_mp4(root / rel, frames, cfg)
            lines.append(f"{rel} {q}")
            truth[rel] = _web_truth(q, kind, true_class, num_frames=num)
    _write_list(root / "train.txt", lines)
    _write_list(root / "val.txt", [])
    return truth


def _write_untrimmed(root: Path, cfg: SynthConfig, classes: list) -> dict:
    """Long multi-shot videos; the query object is visible in some shots only (truth: positive frame ranges)."""
    (root / "untrimmed").mkdir(exist_ok=True)
    truth, lines = {}, []
    size = (cfg.width, cfg.height)
    for q in range(cfg.num_classes):
        for k in range(_crawl_counts(cfg, "synth-web-untrimmed", cfg.untrimmed_per_class)[q]):
            rng = _rng(cfg.seed, "synth-web-untrimmed", q, k)
            frames, segments = _render_untrimmed(rng, cfg, q, size)
            rel = f"untrimmed/{classes[q]}_{k:03d}.mp4"
            _encode_mp4(root / rel, frames, cfg)
            lines.append(f"{rel} {q}")
            ranges = _merge_ranges([(s, e) for s, e, c in segments if c == q])
            truth[rel] = {"query": q, "relevant": bool(ranges), "true_class": q if ranges else None,
                          "kind": "untrimmed", "num_frames": len(frames), "positive_ranges": ranges,
                          "segments": [[s, e, c] for s, e, c in segments]}
    _write_list(root / "train.txt", lines)
    _write_list(root / "val.txt", [])
    return truth


def _render_untrimmed(rng: np.random.Generator, cfg: SynthConfig, query: int,
                      size: tuple) -> tuple[np.ndarray, list]:
    """Shots of 8-32 frames with hard cuts; shots are marked positive until ~untrimmed_pos_fraction is covered."""
    # 1. cut the video into shots (the last one takes the remaining 9-32 frames)
    total = int(rng.integers(cfg.untrimmed_frames[0], cfg.untrimmed_frames[1] + 1))
    bounds, pos = [0], 0
    while total - pos > 32:
        pos += int(rng.integers(8, 25))
        bounds.append(pos)
    bounds.append(total)
    shots = list(zip(bounds[:-1], bounds[1:]))
    # 2. visit shots in random order; a shot becomes positive if it keeps coverage near the target (at least one)
    target = cfg.untrimmed_pos_fraction * total
    positive, covered = set(), 0
    for i in rng.permutation(len(shots)):
        length = shots[i][1] - shots[i][0]
        if not positive or (covered < target and covered + length <= target + 8):
            positive.add(int(i))
            covered += length
    # 3. negative shots are mostly context without the object (clutter), as the idle parts of a real untrimmed
    #    video are, and sometimes another class; render each shot as its own scene
    frames, segments = [], []
    for i, (s, e) in enumerate(shots):
        if i in positive:
            content = query
        else:
            other = rng.random() < cfg.untrimmed_other_fraction
            content = _other_class(rng, query, cfg.num_classes) if other else None
        frames.append(_render_clip(_sample_scene(rng, TARGET_STYLE, size, e - s, content), e - s))
        segments.append((s, e, content))
    return np.concatenate(frames), segments


def _write_broken(out: Path, cfg: SynthConfig, classes: list, truth: dict) -> None:
    """Step 6: a text file named .jpg, a zero-byte .mp4, an .mp4 without its index, an .mp4 cut mid-stream.
    They get ordinary names (next free index of a random query) and random positions in the web lists."""
    rng = _rng(cfg.seed, "broken")
    for source, why in (("synth-web-img", "not-an-image"), ("synth-web-vid", "zero-byte"),
                        ("synth-web-vid", "truncated-no-index"), ("synth-web-untrimmed", "truncated-midstream")):
        q = int(rng.integers(cfg.num_classes))
        folder, ext = {"synth-web-img": ("images", "jpg"), "synth-web-vid": ("videos", "mp4"),
                       "synth-web-untrimmed": ("untrimmed", "mp4")}[source]
        index = sum(t["query"] == q for t in truth[source].values())
        rel = f"{folder}/{classes[q]}_{index:03d}.{ext}"
        path = out / source / rel
        if why == "not-an-image":            # 1. an HTML error page saved under the image name
            path.write_text("<html><body>403 Forbidden</body></html>\n")
        elif why == "zero-byte":             # 2. an aborted download
            path.write_bytes(b"")
        elif why == "truncated-no-index":    # 3. the index (moov atom, written last) is missing: cannot be opened
            size = (cfg.web_video_size, cfg.web_video_size)
            _encode_mp4(path, _render_clip(_sample_scene(rng, WEB_VIDEO_STYLE, size, 24, q), 24), cfg)
            _truncate(path, 0.6)
        else:                                # 4. index up front, data cut: opens, claims all frames, fails decoding
            _encode_mp4(path, _render_untrimmed(rng, cfg, q, (cfg.width, cfg.height))[0], cfg, faststart=True)
            _truncate(path, 0.45)
        _insert_line(out / source / "train.txt", f"{rel} {q}", rng)
        truth[source][rel] = {"query": q, "relevant": False, "true_class": None, "kind": "broken", "broken": why}


# ----------------------------------------------------------------------------------------------------------------------
# 4. Crawl plan: how many samples each query returns and which of them are relevant (Fig. 3 imbalance)
# ----------------------------------------------------------------------------------------------------------------------

def _crawl_counts(cfg: SynthConfig, source: str, per_class: int) -> list:
    """Per-query crawl sizes: per_class * U(1 - jitter, 1 + jitter), at least 1 unless per_class is 0."""
    rng = _rng(cfg.seed, source, "counts")
    j = cfg.web_count_jitter
    return [max(1, int(round(per_class * f))) if per_class else 0 for f in rng.uniform(1 - j, 1 + j, cfg.num_classes)]


def _crawl_plan(cfg: SynthConfig, source: str, per_class: int) -> list:
    """Per query: list of (kind, true_class) with kind 'relevant' | 'other_class' | 'clutter', in random order."""
    counts = np.array(_crawl_counts(cfg, source, per_class))
    rng = _rng(cfg.seed, source, "relevance")
    j = cfg.relevance_jitter
    factors = rng.uniform(1 - j, 1 + j, cfg.num_classes)
    factors *= counts.sum() / (factors * counts).sum()          # keep the overall relevant fraction
    rates = np.clip(cfg.relevant_fraction * factors, 0.0, 1.0)
    plan = []
    for q, (n, rate) in enumerate(zip(counts, rates)):
        n_rel = int(round(rate * n))
        n_other = int(round(cfg.other_class_fraction * (n - n_rel)))
        kinds = ["relevant"] * n_rel + ["other_class"] * n_other + ["clutter"] * (n - n_rel - n_other)
        kinds = [kinds[i] for i in rng.permutation(n)]
        plan.append([(kind, q if kind == "relevant" else
                      _other_class(rng, q, cfg.num_classes) if kind == "other_class" else None) for kind in kinds])
    return plan


def _frame_quality(rows: list) -> dict:
    """filtering_quality on the 1-FPS frames of untrimmed videos: a frame counts as kept when its video is kept and
    its score reaches the threshold its video was held to (--rule), and as correct when it shows its video's label
    (the query when dropped)."""
    frames = [(r, t, f, s) for r, t in rows if "unit_scores" in r and "frames" in r
              for f, s in zip(r["frames"], r["unit_scores"])]
    kept = hits = showing_query = 0
    for r, t, f, score in frames:
        shown = _content_at(t, f)
        label = r["label"] if r["label"] is not None else t["query"]
        chosen = r["status"] == "kept" and score >= r["threshold"]
        kept += chosen
        hits += chosen and shown is not None and shown == label
        showing_query += shown == t["query"]
    return {"frames": len(frames), "frames_kept": kept, "frame_precision": hits / max(1, kept),
            "frame_recall": hits / max(1, showing_query), "frame_base_rate": showing_query / max(1, len(frames))}


def _content_at(truth_entry: dict, frame: int) -> int | None:
    """The class shown at 0-based `frame` of an untrimmed video (None: clutter or outside its segments)."""
    for start, end, cls in truth_entry.get("segments", []):
        if start <= frame < end:
            return cls
    return None


def _web_truth(query: int, kind: str, true_class: int | None, **extra: object) -> dict:
    return {"query": query, "relevant": kind == "relevant", "true_class": true_class, "kind": kind, **extra}


def _other_class(rng: np.random.Generator, query: int, num_classes: int) -> int:
    return int((query + rng.integers(1, num_classes)) % num_classes)


# ----------------------------------------------------------------------------------------------------------------------
# 5. Rendering: a scene = background canvas larger than the frame (camera pans over it) + one patterned object
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class _Scene:
    canvas: np.ndarray                   # (Hc, Wc, 3) float32 background, larger than the frame by the pan margin
    size: tuple                          # frame (width, height)
    cam: tuple                           # ((x0, y0), (x1, y1)) canvas offset at the first / last frame
    obj: dict = None                     # shape, pattern, colours, radius, trajectory; None = no object (clutter)
    occluder: dict = None                # colour, box size, trajectory; None = no occluder
    noise: float = 0.0
    blur: int = 0
    gain: tuple = (1.0, 0.0)             # global contrast / brightness
    flicker: np.ndarray = None           # (T,) per-frame brightness offsets
    noise_seed: int = 0


def _sample_scene(rng: np.random.Generator, style: Style, size: tuple, num_frames: int,
                  content: int | None) -> _Scene:
    """Draw every nuisance factor of one clip; content = class index (object shown) or None (clutter only)."""
    w, h = size
    short = min(w, h)
    pan = style.pan * short
    margin = int(np.ceil(pan)) + 2
    canvas = _background(rng, style, w + 2 * margin, h + 2 * margin)
    travel = rng.uniform(0, pan) * _unit(rng.uniform(0, 2 * np.pi))    # camera path centred on the canvas
    c0, c1 = margin - travel / 2, margin + travel / 2
    scene = _Scene(canvas=canvas, size=size, cam=(tuple(c0), tuple(c1)),
                   noise=float(rng.uniform(*style.noise)), blur=int(rng.integers(0, style.blur + 1)),
                   gain=(float(rng.uniform(0.8, 1.15)), float(rng.uniform(-0.06, 0.06))),
                   flicker=rng.normal(0, 0.012 if style.noise[1] > 0 else 0.0, num_frames),
                   noise_seed=int(rng.integers(2 ** 31)))
    if content is not None:
        scene.obj = _sample_object(rng, style, size, content)
    if rng.random() < style.occlusion:
        scene.occluder = _sample_occluder(rng, size)
    return scene


def _sample_object(rng: np.random.Generator, style: Style, size: tuple, content: int) -> dict:
    w, h = size
    short = min(w, h)
    shape, pattern = _class_parts(content)
    radius = rng.uniform(*style.radius) * short
    lo = np.array([radius * 0.7, radius * 0.7])
    hi = np.array([w - radius * 0.7, h - radius * 0.7])
    start = np.array([w / 2, h / 2]) + rng.uniform(-1, 1, 2) * style.jitter * np.array([w, h])
    step = rng.uniform(0, style.drift * short) * _unit(rng.uniform(0, 2 * np.pi))
    start = np.clip(start, lo, hi)
    end = np.clip(start + step, lo, hi)
    hue = rng.uniform(0, 1)
    if rng.random() < style.class_hue:                              # the class's typical colour
        hue = (content * 0.618034 + rng.normal(0, 0.05)) % 1.0
    c1 = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(*style.saturation), rng.uniform(*style.value)))
    contrast = rng.uniform(*style.contrast)
    lum = c1 @ np.array([0.299, 0.587, 0.114])
    c2 = c1 + contrast * (1 - c1) if lum < 0.5 else c1 * (1 - contrast)
    if rng.random() < 0.5:                                          # pattern on a dark/light base or the reverse
        c1, c2 = c2, c1
    return {"shape": shape, "pattern": pattern, "c1": c1.astype(np.float32), "c2": c2.astype(np.float32),
            "radius": radius, "start": start, "end": end, "angle": rng.uniform(0, 2 * np.pi),
            "spin": rng.uniform(-style.spin, style.spin), "pulse": rng.uniform(0, 0.08),
            "phase": rng.uniform(0, 2 * np.pi), "scale": rng.uniform(0.85, 1.15)}


def _sample_occluder(rng: np.random.Generator, size: tuple) -> dict:
    """A solid bar that slides across the frame during the clip (people, hands, captions...)."""
    w, h = size
    vertical = rng.random() < 0.5
    bw, bh = (rng.uniform(0.1, 0.22) * w, h * 1.2) if vertical else (w * 1.2, rng.uniform(0.1, 0.22) * h)
    a, b = rng.uniform(-0.3, 1.3, 2)
    start = np.array([a * w, h / 2]) if vertical else np.array([w / 2, a * h])
    end = np.array([b * w, h / 2]) if vertical else np.array([w / 2, b * h])
    return {"colour": rng.uniform(0.05, 0.95, 3).astype(np.float32), "half": np.array([bw / 2, bh / 2]),
            "start": start, "end": end}


def _render_clip(scene: _Scene, num_frames: int) -> np.ndarray:
    """-> uint8 (T, H, W, 3) RGB."""
    w, h = scene.size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    out = np.empty((num_frames, h, w, 3), np.uint8)
    noise_rng = np.random.default_rng(scene.noise_seed)
    for t in range(num_frames):
        a = t / max(num_frames - 1, 1)                              # 0 -> 1 over the clip
        cam = (1 - a) * np.array(scene.cam[0]) + a * np.array(scene.cam[1])
        frame = _crop_bilinear(scene.canvas, cam, w, h)
        if scene.obj is not None:
            _draw_object(frame, scene.obj, xx, yy, t, a)
        if scene.occluder is not None:
            o = scene.occluder
            centre = (1 - a) * o["start"] + a * o["end"]
            inside = (np.abs(xx - centre[0]) < o["half"][0]) & (np.abs(yy - centre[1]) < o["half"][1])
            frame[inside] = o["colour"]
        if scene.blur > 1:
            direction = np.array(scene.cam[1]) - np.array(scene.cam[0])
            frame = _motion_blur(frame, scene.blur, 0 if abs(direction[1]) > abs(direction[0]) else 1)  # along pan
        frame = frame * scene.gain[0] + scene.gain[1] + scene.flicker[t]
        if scene.noise > 0:
            frame = frame + noise_rng.normal(0, scene.noise, frame.shape).astype(np.float32)
        out[t] = np.clip(frame * 255 + 0.5, 0, 255).astype(np.uint8)
    return out


def _draw_object(frame: np.ndarray, obj: dict, xx: np.ndarray, yy: np.ndarray, t: int, a: float) -> None:
    """Paint the patterned object in place; its pattern lives in object coordinates so it rotates and scales with it."""
    centre = (1 - a) * obj["start"] + a * obj["end"]
    angle = obj["angle"] + obj["spin"] * t
    radius = obj["radius"] * (1 + obj["pulse"] * np.sin(obj["phase"] + 0.5 * t))
    dx, dy = xx - centre[0], yy - centre[1]
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / radius
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / radius
    mask = SHAPES[obj["shape"]](u, v)
    t_pat = PATTERNS[obj["pattern"]](u * obj["scale"], v * obj["scale"])[mask]
    frame[mask] = obj["c1"] * (1 - t_pat[:, None]) + obj["c2"] * t_pat[:, None]


def _background(rng: np.random.Generator, style: Style, w: int, h: int) -> np.ndarray:
    """Target style: smooth colour field + faint random texture + distractor blobs. Web style: plain light backdrop."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if style.clean_bg:
        base = rng.uniform(0.75, 1.0) * np.ones(3) - rng.uniform(0, 0.12, 3)
        canvas = base + (yy / h)[..., None] * rng.uniform(-0.1, 0.1)
    else:
        canvas = _smooth_noise(rng, h, w, cells=int(rng.integers(2, 5)))
        freq, theta = rng.uniform(0.15, 0.9), rng.uniform(0, np.pi)
        wave = np.sin(freq * (xx * np.cos(theta) + yy * np.sin(theta)) + rng.uniform(0, 6.3))
        canvas = canvas + style.texture * rng.uniform(0.2, 1.0) * wave[..., None] * rng.uniform(-1, 1, 3)
    canvas = np.asarray(canvas, np.float32).copy()
    for _ in range(int(rng.integers(style.clutter[0], style.clutter[1] + 1))):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(0.04, 0.2, 2) * min(w, h)
        th = rng.uniform(0, np.pi)
        du, dv = xx - cx, yy - cy
        e = ((du * np.cos(th) + dv * np.sin(th)) / rx) ** 2 + ((-du * np.sin(th) + dv * np.cos(th)) / ry) ** 2
        alpha = np.clip((1 - e) * rng.uniform(1, 5), 0, 1) * rng.uniform(0.4, 0.9)   # soft-edged, translucent
        canvas += alpha[..., None] * (rng.uniform(0.05, 0.95, 3).astype(np.float32) - canvas)
    return np.clip(canvas, 0, 1)


# ----------------------------------------------------------------------------------------------------------------------
# 6. Shapes (mask from object coordinates u, v with radius ~1) and patterns (0/1 in object coordinates)
# ----------------------------------------------------------------------------------------------------------------------

def _disc(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v < 1.0


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) < 0.8


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    m = np.ones(u.shape, bool)
    for k in range(3):
        th = np.pi / 2 + 2 * np.pi * k / 3
        m &= u * np.cos(th) + v * np.sin(th) < 0.5
    return m


def _plus(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    return ((au < 0.33) & (av < 0.95)) | ((av < 0.33) & (au < 0.95))


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r, th = np.sqrt(u * u + v * v), np.arctan2(v, u)
    saw = np.abs(((5 * th / (2 * np.pi)) % 1.0) * 2 - 1)          # 1 at the tips, 0 between them
    return r < 0.45 + 0.6 * saw


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r2 = u * u + v * v
    return (r2 < 1.0) & (r2 > 0.3)


def _crescent(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (u * u + v * v < 1.0) & ((u - 0.5) ** 2 + v * v > 0.6)


def _bar(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(u) < 1.0) & (np.abs(v) < 0.4)


def _lshape(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.maximum(np.abs(u), np.abs(v)) < 0.85) & ~((u > -0.1) & (v > -0.1))


def _bowtie(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(u) < 0.95) & (np.abs(v) < np.abs(u) * 0.95)


def _solid(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.zeros(u.shape, np.float32)


def _striped(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.sin(np.pi * 2.6 * u) > 0).astype(np.float32)


def _checkered(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.sin(np.pi * 2.2 * u) * np.sin(np.pi * 2.2 * v) > 0).astype(np.float32)


def _dotted(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    fu, fv = (u * 1.4) % 1.0 - 0.5, (v * 1.4) % 1.0 - 0.5
    return (fu * fu + fv * fv < 0.09).astype(np.float32)


def _ringed(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.sin(np.pi * 2.6 * np.sqrt(u * u + v * v)) > 0).astype(np.float32)


def _wedged(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.sin(6 * np.arctan2(v, u)) > 0).astype(np.float32)


def _gridded(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return ((np.abs(np.sin(np.pi * 1.8 * u)) < 0.35) | (np.abs(np.sin(np.pi * 1.8 * v)) < 0.35)).astype(np.float32)


def _split(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (u > 0).astype(np.float32)


SHAPES = {"disc": _disc, "square": _square, "triangle": _triangle, "plus": _plus, "star": _star, "ring": _ring,
          "crescent": _crescent, "bar": _bar, "lshape": _lshape, "bowtie": _bowtie}
PATTERNS = {"solid": _solid, "striped": _striped, "checkered": _checkered, "dotted": _dotted, "ringed": _ringed,
            "wedged": _wedged, "gridded": _gridded, "split": _split}
MAX_CLASSES = 40


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------

def _class_parts(c: int) -> tuple:
    pattern, shape = _CLASS_PAIRS[c]
    return shape, pattern


_CLASS_PAIRS = [tuple(name.split("_", 1)) for name in class_names(MAX_CLASSES)]


def _rng(seed: int, *key: int | str) -> np.random.Generator:
    """Independent stream per (seed, source, class, index): samples do not depend on generation order."""
    return np.random.default_rng([seed, zlib.crc32(repr(key).encode())])


def _unit(theta: float) -> np.ndarray:
    return np.array([np.cos(theta), np.sin(theta)])


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled random colour grid: (h, w, 3) in [0, 1]."""
    grid = rng.uniform(0.05, 0.95, (cells + 1, cells + 1, 3)).astype(np.float32)
    ys, xs = np.linspace(0, cells, h), np.linspace(0, cells, w)
    y0, x0 = np.minimum(ys.astype(int), cells - 1), np.minimum(xs.astype(int), cells - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def _crop_bilinear(canvas: np.ndarray, offset: np.ndarray, w: int, h: int) -> np.ndarray:
    """Sub-pixel crop (h, w, 3) at canvas offset (x, y): smooth camera pan."""
    x, y = float(offset[0]), float(offset[1])
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    fx, fy = x - x0, y - y0
    a = canvas[y0:y0 + h, x0:x0 + w]
    b = canvas[y0:y0 + h, x0 + 1:x0 + 1 + w]
    c = canvas[y0 + 1:y0 + 1 + h, x0:x0 + w]
    d = canvas[y0 + 1:y0 + 1 + h, x0 + 1:x0 + 1 + w]
    return ((a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy).astype(np.float32)


def _motion_blur(frame: np.ndarray, taps: int, axis: int) -> np.ndarray:
    return sum(np.roll(frame, k - taps // 2, axis=axis) for k in range(taps)) / taps


def _encode_mp4(path: Path, frames: np.ndarray, cfg: SynthConfig, faststart: bool = False) -> None:
    """H.264 yuv420p, keyframe every cfg.gop frames, byte-for-byte deterministic: x264 macroblock-tree rate control
    (mbtree, on in every preset but ultrafast) gave different bytes for the same frames on repeated runs in one
    process (its SIMD code path; asm=0 also fixed it), so it is off; threads=1 for good measure."""
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as container:
        stream = container.add_stream("libx264", rate=cfg.fps)
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = cfg.gop
        params = f"keyint={cfg.gop}:min-keyint={cfg.gop}:scenecut=0:threads=1:no-mbtree=1"
        stream.codec_context.options = {"crf": str(cfg.crf), "preset": "veryfast", "x264-params": params}
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, cfg.fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _summary(out: Path, classes: list, start: float) -> dict:
    files = [p for name in SOURCES for p in (out / name).rglob("*") if p.is_file()] + [out / "truth.json"]
    counts = {name: {split: len(_read_list(out / name / f"{split}.txt")) for split in ("train", "val")}
              for name in SOURCES}
    return {"out_dir": str(out), "classes": classes, "counts": counts, "num_files": len(files),
            "bytes": sum(p.stat().st_size for p in files), "seconds": round(time.perf_counter() - start, 2),
            "truth": str(out / "truth.json")}


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def _merge_ranges(ranges: list) -> list:
    merged = []
    for s, e in sorted(ranges):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return merged


def _write_list(path: Path, lines: list) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def _insert_line(path: Path, line: str, rng: np.random.Generator) -> None:
    lines = _read_list(path)
    lines.insert(int(rng.integers(len(lines) + 1)), line)
    _write_list(path, lines)


def _read_list(path: Path) -> list:
    return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _check_config(cfg: SynthConfig) -> None:
    if not 2 <= cfg.num_classes <= MAX_CLASSES:
        raise ValueError(f"--num-classes: expected 2..{MAX_CLASSES}, got {cfg.num_classes}")
    for name in ("train_per_class", "val_per_class", "web_images_per_class", "web_videos_per_class",
                 "untrimmed_per_class"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')}: expected >= 0, got {getattr(cfg, name)}")
    for name in ("relevant_fraction", "other_class_fraction", "untrimmed_pos_fraction"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ValueError(f"--{name.replace('_', '-')}: expected a fraction in [0, 1], got {getattr(cfg, name)}")
    if cfg.width % 2 or cfg.height % 2 or min(cfg.width, cfg.height) < 32 or cfg.web_video_size % 2:
        raise ValueError(f"--width/--height: expected even sizes >= 32 (yuv420p), got {cfg.width}x{cfg.height}")
    if cfg.fps < 1 or cfg.gop < 1 or not 0 <= cfg.crf <= 51:
        raise ValueError(f"--fps/--gop/--crf: expected fps >= 1, gop >= 1, 0 <= crf <= 51, got "
                         f"{cfg.fps}/{cfg.gop}/{cfg.crf}")


if __name__ == "__main__":
    main()
