"""Figures of every step of OmniSource, and the Sec. 5.2 analysis of results (support module: the method does not
need it).

Pillow drawings beside each step's outputs, embedded in the procedure's results.md:
    filter.py            DATA_ROOT/OUT/ contact_sheet.png, class_histogram.png (Fig. 3), filter_quality.png (the
                         demo's truth.json), timeline.png (untrimmed videos, Sec. 3.5)           filter_figures
    train.py             WORK_DIR/ curves.png (loss, training top-1 per source, quick validation), confusion.png
                         (Sec. 5.2)                                                              train_figures
    omnisource.py        WORK_DIR/figures/: the above per filtered source and for all runs together, and Eq. 2's
                         pseudo clips eq2_MODE.gif and eq2_filmstrip.png; embedded in results.md procedure_figures
A handful of primitives (bar_chart, line_chart, heat_map, thumbnail_grid, write_gif), Pillow's default font, PNG and GIF
files any Markdown viewer shows. Every chart panel has its plotting area at (FIG_LEFT, FIG_TOP), FIG_W x FIG_H pixels:
a value v of an axis [lo, hi] lies at FIG_LEFT + round((v - lo) / (hi - lo) * (FIG_W - 1)) (x) and
FIG_TOP + FIG_H - 1 - round(...) (y); a bar of value v is round(v / hi * (FIG_W - 1)) pixels long.
Sec. 5.2's confusion scores and pairs (Tables 18-19) are here too: the results table and the confusion figure read
them. Imports: data, transforms, synthetic; called by the commands (train.py, filter.py, omnisource.py).
"""
from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import data
import synthetic
import transforms
import webscale


def confusion_scores(cm: np.ndarray) -> np.ndarray:
    """s_ij = (n_ij + n_ji) / (n_ij + n_ji + n_ii + n_jj) for every class pair i < j.

    cm: (K, K) confusion matrix, cm[i, j] = number of samples of true class i predicted as j.
    Returns a (K, K) matrix with s_ij in the upper triangle (NaN where a pair has no samples).
    """
    cm = np.asarray(cm, dtype=np.float64)
    off = cm + cm.T                                      # n_ij + n_ji
    diag = np.diag(cm)
    denom = off + diag[:, None] + diag[None, :]          # + n_ii + n_jj
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(denom > 0, off / denom, np.nan)
    return np.triu(s, k=1) + np.tril(np.full_like(s, np.nan))


def confusion_pairs(cm_before: np.ndarray, cm_after: np.ndarray, classes: list[str], top: int = 5) -> dict:
    """Tables 18-19: the class pairs whose confusion score dropped most and rose most from run A to B.

    Returns {'dropped': [(name_i, name_j, s_before, s_after, delta)...], 'rose': [...]} sorted by delta
    (after - before); pairs never confused in either run are left out.
    """
    before, after = confusion_scores(cm_before), confusion_scores(cm_after)
    rows = []
    for i, j in zip(*np.triu_indices(len(classes), k=1)):
        b, a = before[i, j], after[i, j]
        if np.isnan(b) or np.isnan(a) or (b == 0 and a == 0):
            continue
        rows.append((classes[i], classes[j], float(b), float(a), float(a - b)))
    rows.sort(key=lambda r: r[4])
    return {"dropped": [r for r in rows[:top] if r[4] < 0],
            "rose": [r for r in reversed(rows[-top:]) if r[4] > 0]}


FIG_LEFT, FIG_TOP, FIG_W, FIG_H = 124, 20, 240, 120     # px: the plotting area of every chart panel


BAR_H = 11           # px: one bar of a bar chart and its gap (the bar is BAR_H - 2 thick)


CELL = 24            # px: one cell of a heat map


THUMB = 64           # px: the thumbnail box of contact sheets and filmstrips; short side of the Eq. 2 clips drawn


PAD = 4              # px: between thumbnails, and between the clips of an Eq. 2 GIF frame


INK, GRID, SPAN, BG = (0, 0, 0), (170, 170, 170), (200, 235, 200), (255, 255, 255)


COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (23, 190, 207))   # one per series, in order (cycled)


HEAT = (8, 48, 107)  # the heat map's colour of the largest count (zero: white, linear in between)


FONT = ImageFont.load_default()


EQ2_FRAMES = 8   # frames of every Eq. 2 clip drawn


EQ2_IMAGES = 4   # web images drawn as Eq. 2 clips (the first kept image of the first classes)


SHEET_PER_CLASS = 4  # kept and dropped thumbnails per class on a contact sheet (the highest probabilities)


SHEET_CLASSES = 50   # classes on a contact sheet (the first ones)


TIMELINE_VIDEOS = 6  # kept untrimmed videos drawn on a timeline


@dataclass
class FilterOutput:
    """What filter.py wrote to DATA_ROOT/OUT/: report.json, the decision of every sample (decision.npz's columns:
    status, label, score = the deciding teacher probability, Sec. 3.4), the kept samples of the list train.txt
    (`kept`, read on first use: a compact webscale.SampleList, with its frame-score sidecar, Sec. 3.5) and the
    per-sample records of samples.jsonl (what the teachers saw: path relative to `prefix`, query, windows / fps of
    untrimmed videos), streamed by `records` or one by one by `record`, each joined with its decision (status,
    label, score, threshold; unit_scores = each unit's p(label)). Memory: arrays, not one object a sample."""
    folder: Path
    report: dict
    prefix: Path
    decision: dict[str, np.ndarray]

    @functools.cached_property
    def kept(self) -> webscale.SampleList | list:
        kept_any = (self.decision["status"] == self.decision["statuses"].tolist().index("kept")).any()
        if not kept_any:
            return []
        return webscale.read_list(self.folder / "train.txt", self.folder, len(self.report["classes"]))

    def where(self, status: str) -> np.ndarray:
        """bool (N,): the samples of a status (kept, dropped, unknown_query, corrupt, duplicate)."""
        names = self.decision["statuses"].tolist()
        return self.decision["status"] == names.index(status) if status in names else \
            np.zeros(len(self.decision["status"]), dtype=bool)

    def records(self) -> Iterator[dict]:
        with open(self.folder / "samples.jsonl") as f:
            yield from (self._decided(i, json.loads(line)) for i, line in enumerate(f))

    @functools.cached_property
    def columns(self) -> dict[str, np.ndarray]:
        """scores.npz: what the teachers saw as columns (query, query_p, top_class, top_p, line_offset, ...)."""
        with np.load(self.folder / "scores.npz") as f:
            return {k: f[k] for k in f.files}

    def record(self, i: int) -> dict:
        """Record i alone (scores.npz's line offsets locate it in samples.jsonl)."""
        a, b = self.columns["line_offset"][i:i + 2].tolist()
        with open(self.folder / "samples.jsonl", "rb") as f:
            f.seek(a)
            return self._decided(i, json.loads(f.read(b - a)))

    def _decided(self, i: int, r: dict) -> dict:
        d = self.decision
        r.update(status=d["statuses"][d["status"][i]].item(), label=int(d["label"][i]) if d["label"][i] >= 0 else None)
        if not np.isnan(d["score"][i]):
            r.update(score=float(d["score"][i]), threshold=float(d["threshold"][i]))
        if d["positive_units"][i] >= 0:
            r.update(positive_units=int(d["positive_units"][i]),
                     unit_scores=r["unit_query" if self.report["mode"] == "query" else "unit_top"])
        failed = np.flatnonzero(d["cut_failed"] == i)
        if len(failed):
            r["cut_error"] = d["cut_error"][failed[0]].item()
        return r


def read_filter_output(folder: str | Path) -> FilterOutput:
    """The one reader of a filter.py output folder for the figures (DATA_ROOT/OUT: OUT is a name under DATA_ROOT)."""
    folder = Path(folder)
    report = json.loads((folder / "report.json").read_text())
    with np.load(folder / "decision.npz") as f:
        decision = {k: f[k] for k in f.files}
    spec = data.resolve_dataset(folder.parent, report["source"])
    return FilterOutput(folder, report, Path(spec.splits[report.get("split", "train")].prefix), decision)


def filter_figures(folder: str | Path, out_dir: str | Path | None = None, tag: str = "", target: str | None = None,
                   log: Callable[[str], None] = print) -> list[Path]:
    """Figures of one filter.py output (Sec. 3.4-3.5) -> OUT_DIR/TAG*.png (default: the output folder itself).

    contact_sheet: per class the kept and dropped samples of highest teacher probability; class_histogram (Fig. 3):
    samples per class crawled, kept, and in the train split of `target` (default: the --dedup-against dataset);
    filter_quality: per-class precision and recall against DATA_ROOT/truth.json (the demo only); timeline: the
    teacher scores of kept untrimmed videos over time, their positive windows / frames marked. Returns the paths.
    """
    out = read_filter_output(folder)
    out_dir = Path(out_dir or out.folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = target or out.report.get("dedup_against")
    quality = synthetic.filtering_quality(out.folder.parent, out.folder.name, out.records())   # None: no truth
    figures = {"contact_sheet": contact_sheet(out), "class_histogram": class_histogram(out, target),
               "filter_quality": quality and quality_chart(out, quality),
               "timeline": timeline(out)}
    paths = [out_dir / f"{tag}{name}.png" for name, img in figures.items() if img]
    for path, img in zip(paths, [img for img in figures.values() if img]):
        img.save(path)
    log(f"figures of {out.folder.name}: " + ", ".join(str(p) for p in paths))
    return paths


def contact_sheet(out: FilterOutput) -> Image.Image:
    """Per class (query class; a pseudo-label for kept samples in pseudo mode; the first SHEET_CLASSES) the
    SHEET_PER_CLASS kept and dropped samples of highest teacher probability (the first of equal ones): first frames
    of videos, images; their probability under each."""
    classes, n = out.report["classes"][:SHEET_CLASSES], SHEET_PER_CLASS
    query = out.columns["query"]
    by = {}                       # (class, status) -> the records of the n highest scores (the first of equal ones)
    for status in ("kept", "dropped"):
        c = out.decision["label"] if status == "kept" else query
        idx = np.flatnonzero(out.where(status) & (c >= 0) & (c < len(classes)))
        idx = idx[np.lexsort((idx, -out.decision["score"][idx], c[idx]))]     # by class, score down, index up
        first = np.searchsorted(c[idx], c[idx], side="left")
        for i in idx[np.arange(len(idx)) - first < n].tolist():
            by.setdefault((int(c[i]), status), []).append(out.record(i))
    rows, failed = [], 0
    for c, name in enumerate(classes):
        cells = []
        for status in ("kept", "dropped"):
            best = by.get((c, status), [])
            thumbs = [(_first_frame(out.prefix / r["path"]), f"p {r['score']:.2f}") for r in best]
            failed += sum(t is None for t, _ in thumbs)
            cells += [t if t[0] is not None else None for t in thumbs] + [None] * (n - len(best))
        rows.append((name, cells))
    head = ["kept"] + [""] * (n - 1) + ["dropped"] + [""] * (n - 1)
    title = (f"{out.report['source']}: teacher filtering at T={out.report['threshold']} ({out.report['mode']} mode)"
             + (f", {failed} unreadable" if failed else ""))
    return thumbnail_grid(title, rows, head)


def class_histogram(out: FilterOutput, target: str | None = None) -> Image.Image:
    """Fig. 3: samples per class crawled (query class) and kept (label), beside the target's training samples."""
    per = out.report["per_class"]
    series = {"crawled": [c["before"] for c in per], "kept": [c["after"] for c in per]}
    if target:
        spec = data.resolve_dataset(out.folder.parent, target)
        labels = data.load_split(spec, "train").labels
        series[f"{target} train"] = np.bincount(labels, minlength=len(per)).tolist()
    return bar_chart(f"Fig. 3: samples per class of {out.report['source']}", out.report["classes"], series)


def quality_chart(out: FilterOutput, quality: dict) -> Image.Image:
    """Per-class precision and recall of the kept samples against the generator's truth: the class_precision and
    class_recall of synthetic.filtering_quality (correct = kept with the class its content shows; recall over those
    that could be kept correctly)."""
    series = {"precision": quality["class_precision"], "recall": quality["class_recall"]}
    return bar_chart(f"{out.report['source']}: precision / recall per class (truth.json, --rule {quality['rule']}, "
                     f"worst recall {quality['worst_class_recall']:.2f})", out.report["classes"], series, hi=1.0)


def timeline(out: FilterOutput) -> Image.Image | None:
    """Sec. 3.5: the teacher's probability of the label over each kept untrimmed video's time (seconds, 0 to its
    length) for the first TIMELINE_VIDEOS; shaded: the positive windows of its list line (3D students), or the
    positive 1-FPS frames of its sidecar, each over the interval it stands for (2D students, Table 14's snippets).
    None when the output lists no untrimmed video."""
    if not ((out.where("kept") & (out.decision["positive_units"] >= 0)).any() and
            (webscale.frame_scores_path(out.folder / "train.txt").is_file()
             or "windows" in webscale.kind_names(out.kept))):
        return None
    shown = list(itertools.islice((s for s in out.kept if s.frame_scores or s.windows), TIMELINE_VIDEOS))
    wanted = {os.path.relpath(s.path, out.prefix) for s in shown if s.windows}
    records = {r["path"]: r for r in out.records() if r["path"] in wanted}
    panels = []
    for s in shown:
        try:
            fps = data.video_fps(s.path)
            length = data.count_frames(s.path) / fps
        except (OSError, ValueError, RuntimeError):           # gone or broken since filtering: left out
            continue
        if s.frame_scores:
            times = np.asarray(s.frame_scores.frames) / fps
            scores, threshold = np.asarray(s.frame_scores.scores), s.frame_scores.threshold
            half = (float(np.median(np.diff(times))) if len(times) > 1 else 1.0) / 2
            spans = [(t - half, t + half) for t, p in zip(times, scores) if p >= threshold]
        else:
            r = records.get(os.path.relpath(s.path, out.prefix), {})
            windows = np.asarray(r.get("windows", np.zeros((0, 2)))) / r.get("fps", fps)
            times, scores = windows.mean(axis=1), np.asarray(r.get("unit_scores", []))
            threshold = out.report["threshold"]
            spans = list(s.windows)
        title = f"{s.path.name} ({out.report['classes'][s.label]})"
        panels.append(line_chart(title, {"teacher p(label)": (times, scores)}, (0.0, length), (0.0, 1.0),
                                 spans=spans, hline=threshold, x_label="seconds"))
    return _stack(panels, vertical=True) if panels else None


def eq2_figures(images: list[tuple[Path, int]], motion_path: str | Path | None, out_dir: str | Path,
                seed: int = 0, log: Callable[[str], None] = print) -> list[Path]:
    """Eq. 2 / Table 8: the same web images (path, label) as pseudo clips under every --image-to-clip mode (the
    warps with camera motion sampled from the Gaussian of step 3, when `motion_path` exists) -> OUT_DIR/eq2_MODE.gif
    (the clips side by side, PAD apart) and eq2_filmstrip.png (one row per mode and image, one column per frame).

    Image i is read with data.read_image(path, THUMB) and made a clip by transforms.build_image_to_clip(short_side=
    THUMB) of EQ2_FRAMES frames with the generator np.random.default_rng([seed, i]) (as train.make_image_to_clip
    does; warp-spec with the image's label). Returns the paths written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    motion = (transforms.HomographyGaussian.load(motion_path) if motion_path and Path(motion_path).is_file()
              else None)
    pictures = [data.read_image(path, THUMB) for path, _ in images]
    rows, paths = [], []
    for mode in [m for m in transforms.IMAGE_TO_CLIP_MODES if motion is not None or not m.startswith("warp")]:
        to_clip = transforms.build_image_to_clip(mode, motion, short_side=THUMB)
        clips = [to_clip(p, EQ2_FRAMES, np.random.default_rng([seed, i]), label)     # (T, H, W, 3) each
                 for i, (p, (_, label)) in enumerate(zip(pictures, images))]
        paths.append(out_dir / f"eq2_{mode}.gif")
        write_gif(paths[-1], [_stack([Image.fromarray(c[t]) for c in clips]) for t in range(EQ2_FRAMES)])
        rows += [(f"{mode} #{i}", [(Image.fromarray(f), f"t={t}") for t, f in enumerate(c)])
                 for i, c in enumerate(clips)]
    paths.append(out_dir / "eq2_filmstrip.png")
    thumbnail_grid("Eq. 2: web images as pseudo clips under each --image-to-clip mode", rows).save(paths[-1])
    log("figures of Eq. 2: " + ", ".join(str(p) for p in paths))
    return paths


def train_figures(work_dir: str | Path, metrics: dict, log: Callable[[str], None] = print) -> list[Path]:
    """A finished train.py run's WORK_DIR/curves.png (log.jsonl) and confusion.png (its final test's `metrics`:
    classes, confusion_matrix; with the run's most confused class pairs, Sec. 5.2). Returns the paths."""
    work_dir = Path(work_dir)
    paths = [work_dir / "curves.png", work_dir / "confusion.png"]
    training_curves({"": work_dir}).save(paths[0])
    confusion_figure([(work_dir.name, metrics)]).save(paths[1])
    log("figures: " + ", ".join(str(p) for p in paths))
    return paths


def training_curves(runs: dict[str, Path]) -> Image.Image:
    """Loss and training top-1 per source (each logging interval; x = epochs done) and the quick validation top-1
    after each epoch, of every run {name: WORK_DIR} (one line per run and source)."""
    loss, acc, val = {}, {}, {}
    for name, folder in runs.items():
        records = [json.loads(line) for line in (Path(folder) / "log.jsonl").read_text().splitlines() if line]
        steps = [r for r in records if r["kind"] == "train"]
        x = [r["epoch"] - 1 + r["step"] / r["steps"] for r in steps]
        for key in [k for k in (steps[0] if steps else {}) if k.startswith("loss_")]:
            label = f"{name}: {key[5:]}" if name else key[5:]
            loss[label] = (x, [r[key] for r in steps])
            acc[label] = (x, [r["acc_" + key[5:]] for r in steps])
        epochs = [r for r in records if r["kind"] == "epoch" and "val" in r]
        val[name or "val"] = ([r["epoch"] for r in epochs], [r["val"]["top1"] for r in epochs])
    end = max([max(xs, default=1) for xs, _ in [*loss.values(), *val.values()]] + [1])
    top = max([max(ys, default=0) for _, ys in loss.values()] + [1e-6])
    return _stack([line_chart("training loss", loss, (0, end), (0, top), x_label="epochs"),
                   line_chart("training top-1", acc, (0, end), (0, 1), x_label="epochs"),
                   line_chart("quick validation top-1", val, (0, end), (0, 1), x_label="epochs")])


def confusion_figure(runs: list[tuple[str, dict]]) -> Image.Image:
    """Sec. 5.2: each run's confusion matrix (rows true, columns predicted) as a heat map; below, the class pairs
    whose confusion score s_ij dropped and rose most from the first run to the second (confusion_pairs), or for one
    run its most confused pairs."""
    names = runs[0][1]["classes"]
    hi = max(max(max(row) for row in m["confusion_matrix"]) for _, m in runs)       # one colour scale for all
    maps = [heat_map(f"{name}: confusion matrix (rows true, columns predicted)", m["confusion_matrix"], names, hi)
            for name, m in runs]
    if len(runs) > 1:
        pairs = confusion_pairs(runs[0][1]["confusion_matrix"], runs[1][1]["confusion_matrix"], names)
        lines = [f"s_ij {runs[0][0]} -> {runs[1][0]} (Sec. 5.2):"] + [
            f"{a} / {b}: {s0:.3f} -> {s1:.3f} ({d:+.3f})" for a, b, s0, s1, d in pairs["dropped"] + pairs["rose"]]
    else:
        s = confusion_scores(runs[0][1]["confusion_matrix"])
        top = sorted(((s[i, j], i, j) for i, j in zip(*np.triu_indices(len(names), k=1)) if s[i, j] > 0),
                     reverse=True)[:5]
        lines = ["most confused pairs, s_ij (Sec. 5.2):"] + [f"{names[i]} / {names[j]}: {v:.3f}" for v, i, j in top]
    return _stack([_stack(maps), _text(lines)], vertical=True)


def procedure_figures(args: argparse.Namespace, rows: list[tuple[str, dict]], filtered: list[str],
                      motion: str) -> list[tuple[str, str]]:
    """The procedure's figures in WORK_DIR/figures/: each filtered source's of every round (filter_figures, beside
    --target's class counts), Eq. 2's clips of its first kept web images (eq2_figures), every run's curves
    together and the confusion matrices of the first two rows (baseline, student). Returns (caption, path relative
    to WORK_DIR)."""
    work = Path(args.work_dir)
    out_dir, paths = work / "figures", []
    for name in filtered:
        paths += filter_figures(Path(args.data_root) / name, out_dir, f"{name}_", args.target)
    images = {}                                       # label -> the first kept image of that class
    for s in (s for name in filtered for s in read_filter_output(Path(args.data_root) / name).kept):
        if s.kind == "image":
            images.setdefault(s.label, s.path)
        if len(images) == EQ2_IMAGES:
            break
    paths += eq2_figures([(p, label) for label, p in sorted(images.items())], motion, out_dir) if images else []
    runs = {d.name: d for d in sorted(work.iterdir()) if (d / "metrics.json").is_file() and (d / "log.jsonl").is_file()}
    paths += [out_dir / "curves.png", out_dir / "confusion.png"]
    training_curves(runs).save(paths[-2])
    confusion_figure(rows[:2]).save(paths[-1])
    return [(p.stem.replace("_", " "), p.relative_to(work).as_posix()) for p in paths]


# ----------------------------------------------------------------------------------------------------------------------
# The procedure's results: results.md / results.json (omnisource.py), every round's filtering quality on the demo
# ----------------------------------------------------------------------------------------------------------------------

TESTED = {"last": "the final weights of each run",                  # --select: which weights are tested
          "val": "the weights of each run that scored best on this same split (best.pth)"}


def round_record(args: argparse.Namespace, r: int, teachers: dict[str, Path], filtered: list[str],
                 student: dict) -> dict:
    """results.json's entry of one round: its teachers, the student's accuracy, what each filtered source kept
    (filter.py's report.json counts) and, on the demo data, the filtering's precision and recall."""
    kept = {}
    for name in filtered:
        counts = json.loads((Path(args.data_root) / name / "report.json").read_text())["counts"]
        kept[name] = {"kept": counts["kept"], "total": counts["total"]}
    return {"round": r, "teachers": {k: str(v) for k, v in teachers.items()},
            **{k: student[k] for k in ("top1", "top5", "mean_class_acc")},
            "kept": kept, "quality": filter_quality(args.data_root, filtered)}


def read_metrics(work_dir: str | Path) -> dict:
    """A finished train.py run's WORK_DIR/metrics.json, with its confusion matrix (K, K) from confusion_matrix.csv."""
    work_dir = Path(work_dir)
    metrics = json.loads((work_dir / "metrics.json").read_text())
    k = len(metrics["classes"])
    rows = (work_dir / "confusion_matrix.csv").read_text().splitlines()[1:]       # "name,n_0,...,n_K-1"
    metrics["confusion_matrix"] = [[int(v) for v in row.split(",")[-k:]] for row in rows]
    return metrics


def write_table(work: Path, rows: list[tuple[str, dict]], select: str = "last", rounds: list[dict] = (),
                embedded: list[tuple[str, str]] = ()) -> str:
    """Print and save the comparison (results.md, results.json), the confusion pairs of Sec. 5.2 (first row ->
    second row), each round's teachers and filtering (`round_record`; on the generated demo data with the
    filter's precision and recall against the generator's truth). Says which weights were tested (--select);
    `embedded` (caption, path relative to WORK_DIR) are embedded at the end of results.md (procedure_figures) and
    listed in results.json. Returns the text of results.md."""
    tested = TESTED[select]
    lines = [f"Accuracy on the val split of {rows[0][1].get('target', 'the target')}, of {tested} "
             f"(--select {select}).", "",
             "| run | top-1 | top-5 | mean class acc |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {m['top1']:.4f} | {m['top5']:.4f} | {m['mean_class_acc']:.4f} |" for name, m in rows]
    quality = rounds[0]["quality"] if rounds else []
    if quality:
        lines += ["", "Teacher filtering against the generator's truth (truth.json):"]
        lines += [quality_line(q) for q in quality]
    if len(rounds) > 1:
        lines += ["", "Teacher-student rounds (--rounds; beyond the paper):"]
        for rd in rounds:
            kept = ", ".join(f"{name} kept {k['kept']} of {k['total']}" for name, k in rd["kept"].items())
            lines += [f"  round {rd['round']}: teacher {rd['teachers']['video']}; {kept}; student top-1 "
                      f"{rd['top1']:.4f}"] + [quality_line(q) for q in rd["quality"]]
    (_, base), (_, student) = rows[:2]
    pairs = confusion_pairs(base["confusion_matrix"], student["confusion_matrix"], base["classes"])
    lines += ["", "Confusion pairs (Sec. 5.2, s_ij baseline -> OmniSource):"]
    lines += [f"  {a} / {b}: {s0:.3f} -> {s1:.3f} ({d:+.3f})" for a, b, s0, s1, d in pairs["dropped"] + pairs["rose"]]
    if embedded:
        lines += ["", "Figures:"] + [part for caption, path in embedded for part in ("", f"![{caption}]({path})")]
    text = "\n".join(lines)
    print(text, flush=True)
    (work / "results.md").write_text(text + "\n")
    (work / "results.json").write_text(json.dumps(
        {"select": select, "tested": tested,
         "rows": [{"run": name, **{k: m[k] for k in ("top1", "top5", "mean_class_acc")}} for name, m in rows],
         "confusion_pairs": pairs, "filtering": list(quality), "rounds": list(rounds),
         "figures": [p for _, p in embedded]}, indent=2) + "\n")
    return text


def filter_quality(data_root: str | Path, filtered: list[str]) -> list[dict]:
    """Filtering precision / recall per filtered source when DATA_ROOT holds the demo's truth.json."""
    quality = (synthetic.filtering_quality(data_root, name, read_filter_output(Path(data_root) / name).records())
               for name in filtered)
    return [q for q in quality if q is not None]


def quality_line(q: dict) -> str:
    """One source's filtering_quality as a line of the results table."""
    line = (f"  {q['source']}: kept {q['kept']} of {q['samples']}, precision {q['precision']:.2f} "
            f"(keeping all: {q['base_rate']:.2f}), recall {q['recall']:.2f}, worst class recall "
            f"{q['worst_class_recall']:.2f} ({q['worst_class']})")
    if "frames" in q:
        line += (f"; 1-FPS frames: kept {q['frames_kept']} of {q['frames']}, precision {q['frame_precision']:.2f} "
                 f"(all: {q['frame_base_rate']:.2f}), recall {q['frame_recall']:.2f}")
    return line


def bar_chart(title: str, names: Sequence[str], series: dict[str, Sequence[float]],
              hi: float | None = None) -> Image.Image:
    """Horizontal bars: one group (row) per name, in it one bar per series (COLOURS in order), value v drawn
    round(v / hi * (FIG_W - 1)) px long from x = FIG_LEFT (hi: default the largest value) and written after it."""
    hi = hi or max([max(v, default=0) for v in series.values()] + [1e-12])
    group = BAR_H * (len(series) + 1)
    img = _panel(FIG_LEFT + FIG_W + 40, FIG_TOP + group * len(names) + BAR_H * len(series) + 4, title)
    draw = ImageDraw.Draw(img)
    for g, name in enumerate(names):
        y = FIG_TOP + g * group
        draw.text((4, y), name[:20], font=FONT, fill=INK)
        for s, values in enumerate(series.values()):
            length, y0 = round(values[g] / hi * (FIG_W - 1)), y + s * BAR_H
            if length > 0:
                draw.rectangle([FIG_LEFT, y0, FIG_LEFT + length - 1, y0 + BAR_H - 3], fill=COLOURS[s % len(COLOURS)])
            draw.text((FIG_LEFT + length + 3, y0 - 2), f"{values[g]:g}" if values[g] == int(values[g])
                      else f"{values[g]:.2f}", font=FONT, fill=INK)
    draw.line([FIG_LEFT - 1, FIG_TOP, FIG_LEFT - 1, FIG_TOP + group * len(names) - BAR_H], fill=GRID)
    _legend(draw, list(series), FIG_TOP + group * len(names))
    return img


def line_chart(title: str, series: dict[str, tuple[Sequence[float], Sequence[float]]], x_range: tuple[float, float],
               y_range: tuple[float, float], spans: Sequence[tuple[float, float]] = (), hline: float | None = None,
               x_label: str = "") -> Image.Image:
    """Lines through the points (x, y) of each series (COLOURS in order; a 5 x 5 dot at each point of a series of at
    most 30) on the axes x_range x y_range; `spans` (x0, x1) shaded in SPAN behind them, `hline` a grey line."""
    img = _panel(FIG_LEFT + FIG_W + 16, FIG_TOP + FIG_H + 18 + BAR_H * len(series) + 4, title)
    draw = ImageDraw.Draw(img)
    for x0, x1 in spans:
        a, b = _to_px(max(x0, x_range[0]), x_range), _to_px(min(x1, x_range[1]), x_range)
        draw.rectangle([a, FIG_TOP, b, FIG_TOP + FIG_H - 1], fill=SPAN)
    draw.rectangle([FIG_LEFT - 1, FIG_TOP - 1, FIG_LEFT + FIG_W, FIG_TOP + FIG_H], outline=GRID)
    if hline is not None:
        y = _to_py(hline, y_range)
        draw.line([FIG_LEFT, y, FIG_LEFT + FIG_W - 1, y], fill=GRID)
    for s, (xs, ys) in enumerate(series.values()):
        points = [(_to_px(x, x_range), _to_py(y, y_range)) for x, y in zip(xs, ys)]
        colour = COLOURS[s % len(COLOURS)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=1)
        for px, py in points if len(points) <= 30 else ():
            draw.rectangle([px - 2, py - 2, px + 2, py + 2], fill=colour)
    for value, y in ((y_range[1], FIG_TOP), (y_range[0], FIG_TOP + FIG_H - 10)):
        draw.text((FIG_LEFT - 6, y), f"{value:.3g}", font=FONT, fill=INK, anchor="ra")
    bottom = FIG_TOP + FIG_H + 2
    draw.text((FIG_LEFT, bottom), f"{x_range[0]:.3g}", font=FONT, fill=INK)
    draw.text((FIG_LEFT + FIG_W - 1, bottom), f"{x_range[1]:.3g} {x_label}", font=FONT, fill=INK, anchor="ra")
    _legend(draw, list(series), bottom + 16)
    return img


def heat_map(title: str, matrix: Sequence[Sequence[float]], names: Sequence[str],
             hi: float | None = None) -> Image.Image:
    """A (K, K) matrix as square cells from (FIG_LEFT, FIG_TOP): cell (i, j) at row i, column j, its colour linear
    from BG (0) to HEAT (`hi`, default the largest value). Cells are CELL px with the value written in them and the
    row names on the left; for K > 40 classes smaller (960 // K px, at least 1), without text."""
    m = np.asarray(matrix, dtype=np.float64)
    k, hi = len(m), hi or max(m.max(), 1e-12)
    cell = max(1, min(CELL, 960 // k))
    img = _panel(FIG_LEFT + cell * k + 8, FIG_TOP + cell * k + 8, title)
    f = m / hi                                                                                  # (K, K) in [0, 1]
    colours = np.round(np.asarray(BG) + f[..., None] * (np.asarray(HEAT) - np.asarray(BG))).astype(np.uint8)
    img.paste(Image.fromarray(colours).resize((k * cell, k * cell), Image.Resampling.NEAREST), (FIG_LEFT, FIG_TOP))
    draw = ImageDraw.Draw(img)
    for i in range(k) if cell == CELL else ():
        draw.text((4, FIG_TOP + i * CELL + 6), names[i][:20], font=FONT, fill=INK)
        for j in range(k):
            draw.text((FIG_LEFT + j * CELL + CELL // 2, FIG_TOP + i * CELL + CELL // 2), f"{m[i, j]:g}", font=FONT,
                      anchor="mm", fill=BG if f[i, j] > 0.5 else INK)
    return img


def thumbnail_grid(title: str, rows: Sequence[tuple[str, Sequence[tuple[Image.Image, str] | None]]],
                   head: Sequence[str] = ()) -> Image.Image:
    """Rows of captioned thumbnails: each (name, cells), a cell (image, caption) or None (empty). Cell j of row i
    sits at x = FIG_LEFT + j * (THUMB + PAD), y = FIG_TOP + 12 + i * (THUMB + 14): the image fitted into its
    THUMB x THUMB box (aspect kept, bilinear, centred), the caption under it; `head`: a text above each column."""
    cols = max([len(c) for _, c in rows] + [1])
    img = _panel(FIG_LEFT + cols * (THUMB + PAD), FIG_TOP + 12 + len(rows) * (THUMB + 14), title)
    draw = ImageDraw.Draw(img)
    for j, text in enumerate(head):
        draw.text((FIG_LEFT + j * (THUMB + PAD), FIG_TOP), text, font=FONT, fill=INK)
    for i, (name, cells) in enumerate(rows):
        y = FIG_TOP + 12 + i * (THUMB + 14)
        draw.text((4, y + THUMB // 2 - 6), name[:20], font=FONT, fill=INK)
        for j, cell in enumerate(cells):
            if cell is not None:
                x = FIG_LEFT + j * (THUMB + PAD)
                fitted = _fit(cell[0])
                img.paste(fitted, (x + (THUMB - fitted.width) // 2, y + (THUMB - fitted.height) // 2))
                draw.text((x, y + THUMB), cell[1], font=FONT, fill=INK)
    return img


def write_gif(path: str | Path, frames: Sequence[Image.Image], ms: int = 125) -> None:
    """An animated GIF looping over `frames` (Pillow save_all), `ms` milliseconds each (8 FPS by default)."""
    frames[0].save(path, save_all=True, append_images=list(frames[1:]), duration=ms, loop=0)


def _panel(width: int, height: int, title: str) -> Image.Image:
    """A white canvas (widened to fit `title`) with `title` at the top left."""
    img = Image.new("RGB", (max(width, round(FONT.getlength(title)) + 8), height), BG)
    ImageDraw.Draw(img).text((4, 3), title, font=FONT, fill=INK)
    return img


def _legend(draw: ImageDraw.ImageDraw, names: list[str], y: int) -> None:
    """A colour swatch (left of FIG_LEFT, where no chart draws) and the name of each series, one a line."""
    for s, name in enumerate(names):
        draw.rectangle([4, y + s * BAR_H + 2, 12, y + s * BAR_H + 8], fill=COLOURS[s % len(COLOURS)])
        draw.text((16, y + s * BAR_H - 1), name, font=FONT, fill=INK)


def _to_px(v: float, axis: tuple[float, float]) -> int:
    return FIG_LEFT + round((v - axis[0]) / max(axis[1] - axis[0], 1e-12) * (FIG_W - 1))


def _to_py(v: float, axis: tuple[float, float]) -> int:
    return FIG_TOP + FIG_H - 1 - round((v - axis[0]) / max(axis[1] - axis[0], 1e-12) * (FIG_H - 1))


def _fit(image: Image.Image) -> Image.Image:
    """An image scaled (bilinear) so that its longer side is THUMB pixels."""
    scale = THUMB / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.Resampling.BILINEAR)


def _first_frame(path: Path) -> Image.Image | None:
    """The first frame of a video, or an image; None when it cannot be read (dirty web data is counted)."""
    try:
        return Image.fromarray(data.read_image(path, THUMB) if path.suffix.lower() in webscale.IMAGE_EXTS
                               else data.read_frames(path, [0])[0])
    except (OSError, ValueError, RuntimeError):
        return None


def _stack(images: Sequence[Image.Image], vertical: bool = False) -> Image.Image:
    """Images side by side, PAD apart, top-aligned (vertical: one under the other, left-aligned) on white."""
    if vertical:
        size = (max(i.width for i in images), sum(i.height for i in images) + PAD * (len(images) - 1))
    else:
        size = (sum(i.width for i in images) + PAD * (len(images) - 1), max(i.height for i in images))
    canvas, at = Image.new("RGB", size, BG), 0
    for img in images:
        canvas.paste(img, (0, at) if vertical else (at, 0))
        at += (img.height if vertical else img.width) + PAD
    return canvas


def _text(lines: list[str]) -> Image.Image:
    """Lines of text on a white canvas."""
    img = Image.new("RGB", (max([len(s) for s in lines] + [1]) * 7 + 8, 14 * len(lines) + 6), BG)
    draw = ImageDraw.Draw(img)
    for n, line in enumerate(lines):
        draw.text((4, 3 + 14 * n), line, font=FONT, fill=INK)
    return img
