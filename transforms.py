"""Clip transforms of OmniSource: web data to the target format (Sec. 3.5) and MMAction2-style augmentation.

1. Sec. 3.5: Eq. 2 / Table 8, a still image as a pseudo clip (replication, random / constant translation, or
   perspective warps with homographies H_i ~ N(mu, Sigma) fitted by maximum likelihood to the camera motion of real
   videos); Table 14, a TSN snippet from the 1-FPS frames of an untrimmed video scored by a teacher.
2. Augmentation and test views as MMAction2 1.x's Kinetics-400 TSN / SlowOnly configs (the paper's codebase; the
   paper lists none), with MMAction2's box arithmetic and view order.  A clip is uint8 numpy (T, H, W, 3) RGB; each
   random choice is drawn once per clip from the Generator passed in.  `Resize` is cv2's INTER_LINEAR as mmcv calls
   it, bit for bit; training resizes its random crop with torch's uint8 kernel (within one grey level, ~7x faster).
   uint8=True pipelines stop before `normalize` (any device).  Global state: lru_caches of resize taps and mean/std.

Coordinates: H maps PIXEL coordinates (x, y, 1) of the source to the output, pixel centres at integers;
`HomographyGaussian` works in normalised coordinates u = (x - (W-1)/2) / (max(W, H)/2), valid at any image size.
"""
from __future__ import annotations

import functools
import itertools
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

MEAN = (123.675, 116.28, 103.53)  # ImageNet mean on the 0-255 scale (RGB)
STD = (58.395, 57.12, 57.375)
CV2_COEF_BITS = 11  # cv2 INTER_RESIZE_COEF_BITS: bilinear weights in units of 1/2048

# ----------------------------------------------------------------------------------------------------------------------
# 1. Web data to the target format (Sec. 3.5): Eq. 2 / Table 8 image-to-clip, Table 14 snippets
# ----------------------------------------------------------------------------------------------------------------------


def warp_perspective(image: np.ndarray | torch.Tensor, H: np.ndarray | torch.Tensor, padding: str = "border"
                     ) -> np.ndarray | torch.Tensor:
    """Sec. 3.5: the homographic transform F(I; H): output pixel x' takes the source at H^-1 x' (bilinear).

    image: uint8 numpy (H, W, 3) or float tensor (3, H, W); H: (3, 3) source -> output pixel coords, or (N, 3, 3)
    for N warps (Eq. 2's frames); returns the same type and dtype, with a leading N for N matrices.  padding:
    'border' repeats the edge pixels (pseudo videos get no black corners), or grid_sample's 'zeros' / 'reflection'.
    """
    hmats = torch.as_tensor(np.asarray(H, dtype=np.float64))
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        chw = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)
        out = _warp_batch(chw, hmats.reshape(-1, 3, 3), padding)
        out = out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    elif torch.is_tensor(image) and image.ndim == 3 and image.is_floating_point():
        out = _warp_batch(image, hmats.reshape(-1, 3, 3), padding)
    else:
        raise ValueError(f"transforms.warp_perspective: expected uint8 numpy (H, W, 3) or float tensor (3, H, W), got "
                         f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}")
    return out[0] if hmats.ndim == 2 else out


def estimate_homography(src: np.ndarray | torch.Tensor, dst: np.ndarray | torch.Tensor, max_side: int = 400,
                        min_side: int = 20, max_iters: int = 30, tol: float = 1e-2) -> torch.Tensor:
    """Direct photometric alignment: H (3, 3) float64 with warp_perspective(src, H) ~ dst (pixel coords, H[2,2]=1).

    src, dst: same-size uint8 (H, W, 3) / (H, W) numpy or float (3, H, W) / (H, W) tensors.  Inverse-compositional
    Gauss-Newton (Baker & Matthews) over the 8 parameters plus an intensity bias, Huber-weighted, coarse to fine on a
    2x2-average pyramid (coarsest short side >= min_side, levels with a long side > max_side skipped); pixels mapped
    outside dst are masked out; a level stops when an update moves the corners < tol px.  ~0.05 s per 340x256 pair
    on one CPU core (it runs single-threaded).
    """
    with _torch_threads(1):  # many small ops: one thread is fastest and immune to CPU oversubscription
        a, b = _gray(src), _gray(dst)
        if a.shape != b.shape:
            raise ValueError(f"transforms.estimate_homography: src {tuple(a.shape)} and dst {tuple(b.shape)} differ")
        h, w = a.shape
        # 1. pyramids (level l halves level l-1); 2. skip the finest levels whose long side exceeds max_side
        pyr_a, pyr_b = _pyramid(a, min_side), _pyramid(b, min_side)
        first = min(sum(max(level.shape) > max_side for level in pyr_a), len(pyr_a) - 1)
        # 3. coarse to fine; the motion is kept in normalised coordinates (level independent)
        g, bias = torch.eye(3, dtype=torch.float64), 0.0
        for level in range(len(pyr_a) - 1, first - 1, -1):
            g, bias = _align_level(pyr_a[level], pyr_b[level], g, bias, level, (w, h), max_iters, tol)
    return denormalize_homography(g, (w, h))   # 4. back to pixel coordinates


def estimate_video_motion(frames: np.ndarray, stride: int = 1, max_shift: float | None = 0.1, **kwargs: float
                          ) -> list:
    """Camera motion of a real video (Sec. 3.5: mu, Sigma are "estimated ... on the original video source").

    frames: uint8 (T, H, W, 3), consecutive native frames -> (T-1) // stride entries, entry k the pixel-coordinate H
    (3, 3) with warp(frame_ks, H) ~ frame_(k+1)s (one step of the clips a network samples, Eq. 2), or None.  Entry k
    is the product of its window's consecutive-pair homographies (`estimate_homography`, kwargs), None when a pair
    moves a corner by more than max_shift * long side or flips orientation (a scene cut, a failed alignment;
    max_shift=None keeps all).  Composed, not aligned `stride` apart: frames 16 apart in real clips disagreed with
    the chain by over a tenth of the frame on half the pairs (the alignment loses large motions).
    """
    _check_clip(frames, "estimate_video_motion")
    if stride < 1:
        raise ValueError(f"transforms.estimate_video_motion: stride must be >= 1, got {stride}")
    (h, w), out = frames.shape[1:3], []
    for k in range((len(frames) - 1) // stride):
        total = torch.eye(3, dtype=torch.float64)
        for t in range(k * stride, (k + 1) * stride):
            step = estimate_homography(frames[t], frames[t + 1], **kwargs)
            if max_shift is not None and not _plausible(step.numpy(), w, h, max_shift):
                total = None
                break
            total = step @ total
        out.append(None if total is None else total / total[2, 2])
    return out


def normalize_homography(H: np.ndarray | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixel-coordinate H of a (w, h) image -> normalised-coordinate G = N H N^-1 (H[2,2] = 1), float64 (3, 3)."""
    norm = _norm_matrix(*size)
    g = norm @ torch.as_tensor(np.asarray(H, dtype=np.float64)).reshape(3, 3) @ torch.linalg.inv(norm)
    return g / g[2, 2]


def denormalize_homography(G: np.ndarray | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Normalised-coordinate G -> pixel-coordinate H = N^-1 G N for a (w, h) image, float64 (3, 3)."""
    norm = _norm_matrix(*size)
    hmat = torch.linalg.inv(norm) @ torch.as_tensor(np.asarray(G, dtype=np.float64)).reshape(3, 3) @ norm
    return hmat / hmat[2, 2]


@dataclass
class HomographyGaussian:
    """Sec. 3.5: per-step camera motion H_i ~ N(mu, Sigma) over the 8 free entries of G - I (row-major, G[2,2] = 1),
    G in normalised coordinates; per_class: class-specific fits (Table 8 "[spec]"; mu, sigma: "[agno]"); stride: one
    step in the videos it was fitted on (`omnisource.motion_stride`: "16 frames", "1/3 video"; "" unknown)."""
    mu: np.ndarray  # (8,)
    sigma: np.ndarray  # (8, 8)
    per_class: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    stride: str = ""

    def __post_init__(self) -> None:
        self.mu, self.sigma = _check_gaussian(self.mu, self.sigma)
        self.per_class = {int(k): _check_gaussian(*v) for k, v in self.per_class.items()}

    def sample(self, n: int, rng: np.random.Generator, label: int | None = None) -> np.ndarray:
        """n normalised homographies (n, 3, 3) float64; class-specific when `label` has its own fit."""
        mu, sigma = self.per_class.get(label, (self.mu, self.sigma))   # label None: the class-agnostic fit
        vals, vecs = np.linalg.eigh(sigma)
        root = vecs * np.sqrt(np.clip(vals, 0.0, None))  # sigma = root @ root.T (works for singular sigma)
        params = mu + rng.standard_normal((n, 8)) @ root.T
        return _params_to_h(params)

    def save(self, path: str | Path) -> None:
        """Write JSON {mu, sigma, per_class: {label: {mu, sigma}}, stride}."""
        data = {"mu": self.mu.tolist(), "sigma": self.sigma.tolist(),
                "per_class": {str(k): {"mu": m.tolist(), "sigma": s.tolist()} for k, (m, s) in self.per_class.items()},
                "stride": self.stride}
        Path(path).write_text(json.dumps(data, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "HomographyGaussian":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"transforms.HomographyGaussian.load: no motion file {path}")
        data = json.loads(path.read_text())
        per_class = {int(k): (v["mu"], v["sigma"]) for k, v in data.get("per_class", {}).items()}
        return cls(data["mu"], data["sigma"], per_class, data.get("stride", ""))


def fit_homography_gaussian(hs: Sequence, size: tuple[int, int] | None = None, labels: Sequence[int] | None = None,
                            ridge: float = 1e-12, min_class: int = 1, stride: str = "") -> HomographyGaussian:
    """Sec. 3.5: maximum-likelihood N(mu, Sigma) of the 8 free parameters of H - I.

    hs: (3, 3) homographies (None skipped), in pixel coordinates of (w, h) = size frames, or normalised when size is
    None.  Sigma = (1/n) sum (p - mu)(p - mu)^T + ridge * I (positive definite; 1e-12 is far below real motion).
    labels (one per H): also a Gaussian per label with >= `min_class` homographies.  stride: recorded in the model.
    """
    keep = [i for i, hmat in enumerate(hs) if hmat is not None]  # None: pairs rejected by estimate_video_motion
    if not keep:
        raise ValueError("transforms.fit_homography_gaussian: expected at least one homography (all None or empty)")
    params = np.stack([_h_to_params(np.asarray(normalize_homography(hs[i], size) if size is not None else hs[i]))
                       for i in keep])  # (n, 8)

    def ml(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu = p.mean(0)
        return mu, (p - mu).T @ (p - mu) / len(p) + ridge * np.eye(8)

    per_class = {}
    if labels is not None:
        if len(labels) != len(hs):
            raise ValueError(f"transforms.fit_homography_gaussian: {len(labels)} labels for {len(hs)} homographies")
        labels = np.asarray(labels)[keep]
        per_class = {int(k): ml(params[labels == k]) for k in np.unique(labels) if (labels == k).sum() >= min_class}
    return HomographyGaussian(*ml(params), per_class, stride)


IMAGE_TO_CLIP_MODES = ("still", "translate-random", "translate-const", "warp-agno", "warp-spec")   # Table 8's rows


def image_to_clip(image: np.ndarray, num_frames: int, mode: str = "still", rng: np.random.Generator | None = None,
                  motion: HomographyGaussian | None = None, label: int | None = None,
                  max_step: float = 0.02, short_side: int | None = None) -> np.ndarray:
    """Eq. 2 / Table 8: a still image uint8 (H, W, 3) as a pseudo clip uint8 (T, H', W', 3).

    'still': replication; 'translate-random': each step moves by (dx, dy) ~ U(-m, m)^2; 'translate-const': one
    velocity (direction U(0, 2pi), speed U(0, m)), m = max_step * short side; 'warp-agno': J_1 = I,
    J_i = H_i(J_{i-1}), H_i ~ the class-agnostic Gaussian of `motion`; 'warp-spec': that of the image's
    (pseudo-)`label` where it has its own fit.  Frame i is the ORIGINAL image warped once by H_i ... H_1 (no
    resampling blur), edges replicated.  short_side: Resize(short_side) the (often multi-megapixel) image first,
    to the size the clip pipeline resizes to anyway (its Resize is then the identity); None: keep the size.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"transforms.image_to_clip: expected uint8 (H, W, 3), got {image.dtype} {image.shape}")
    _check_image_to_clip(mode, motion)
    if short_side is not None:
        image = Resize(short_side=short_side)(image[None])[0]
    if num_frames < 1:
        raise ValueError(f"transforms.image_to_clip: expected num_frames >= 1, got {num_frames}")
    if mode == "still":
        return np.repeat(image[None], num_frames, axis=0)
    rng = rng if rng is not None else np.random.default_rng()
    h, w = image.shape[:2]
    # 1. per-step homographies (num_frames - 1, 3, 3) in pixel coordinates
    if mode.startswith("warp"):
        sampled = motion.sample(num_frames - 1, rng, label if mode == "warp-spec" else None)
        steps = [denormalize_homography(g, (w, h)).numpy() for g in sampled]
    else:
        m = max_step * min(h, w)
        if mode == "translate-random":
            shifts = rng.uniform(-m, m, size=(num_frames - 1, 2))
        else:
            angle, speed = rng.uniform(0, 2 * np.pi), rng.uniform(0, m)
            shifts = np.tile([speed * np.cos(angle), speed * np.sin(angle)], (num_frames - 1, 1))
        steps = [np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]]) for dx, dy in shifts]
    # 2. Eq. 2: compose H_i ... H_1 and warp the original image once per frame
    mats = itertools.accumulate(steps, lambda total, step: step @ total, initial=np.eye(3))
    return warp_perspective(image, np.stack(list(mats)))             # (T, H, W, 3) uint8


def build_image_to_clip(mode: str = "still", motion: HomographyGaussian | None = None, max_step: float = 0.02,
                        short_side: int | None = None) -> Callable:
    """`image_to_clip` bound for a dataset: f(image (H, W, 3), num_frames, rng=None, label=None) -> uint8
    (T, H', W', 3); short_side: short_side_for(crop_size) of the clip pipeline."""
    _check_image_to_clip(mode, motion)

    def to_clip(image: np.ndarray, num_frames: int, rng: np.random.Generator | None = None,
                label: int | None = None) -> np.ndarray:
        return image_to_clip(image, num_frames, mode, rng, motion, label, max_step, short_side)
    return to_clip


SNIPPET_MODES = {"1p2n": (1, 2), "2p1n": (2, 1), "3pos": (3, 0), "3rand": None}  # Table 14 rows: (pos, neg) of 3


def select_snippet(scores: np.ndarray | Sequence[float], label: int, mode: str = "1p2n",
                   rng: np.random.Generator | None = None, *, threshold: float, num_frames: int = 3) -> np.ndarray:
    """Table 14: a TSN snippet's frames (one per segment) from an untrimmed video's 1-FPS frames (policy: filter.py).

    scores: (F, num_classes) teacher probabilities or (F,) of `label`; positives: prob >= threshold, the filter's
    threshold for the video (webscale.FrameScores.threshold).  '1p2n' (the paper's) 1 positive + 2 negatives,
    '2p1n', '3pos', '3rand'; N segments take the same share, floor(N p / 3 + 1/2) positives (1p2n, 8 segments:
    3 + 5).  Drawn without replacement, a shortfall of one kind filled from the other, frames repeated when F < N.
    Returns sorted frame indices (N,) int64.
    """
    if mode not in SNIPPET_MODES:
        raise ValueError(f"transforms.select_snippet: mode must be one of {sorted(SNIPPET_MODES)}, got {mode!r}")
    probs = np.asarray(scores, dtype=np.float64)
    probs = probs[:, label] if probs.ndim == 2 else probs
    if probs.ndim != 1 or len(probs) == 0:
        raise ValueError(f"transforms.select_snippet: expected scores (F, C) or (F,) with F >= 1, "
                         f"got {np.shape(scores)}")
    rng = rng if rng is not None else np.random.default_rng()
    # 1. split the frames by the teacher's confidence
    pos, neg, row = np.flatnonzero(probs >= threshold), np.flatnonzero(probs < threshold), SNIPPET_MODES[mode]
    if row is None:
        pos, neg, row = np.arange(len(probs)), np.zeros(0, dtype=int), (3, 0)
    # 2. take what each kind has; the shortfall moves to the other kind
    n_pos = min(int(np.floor(num_frames * row[0] / 3 + 0.5)), len(pos))
    n_neg = min(num_frames - n_pos, len(neg))
    n_pos = min(num_frames - n_neg, len(pos))
    picked = list(rng.choice(pos, n_pos, replace=False)) + list(rng.choice(neg, n_neg, replace=False))
    # 3. fewer than N frames in the video: repeat random frames
    if len(picked) < num_frames:
        picked += list(rng.integers(len(probs), size=num_frames - len(picked)))
    return np.sort(np.asarray(picked, dtype=np.int64))


# ----------------------------------------------------------------------------------------------------------------------
# 2. Clip augmentation and test views (MMAction2 1.x mmaction/datasets/transforms/processing.py, re-implemented)
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Resize:
    """MMAction2 `Resize`: the short side to `short_side` keeping the ratio (scale=(-1, S); mmcv.rescale_size:
    int(w * S / min(h, w) + 0.5)), or to a fixed `size` (w, h); (T, H, W, 3) -> (T, H', W', 3) uint8, equal to cv2's
    INTER_LINEAR bit for bit (`_resize_cv2_linear`)."""
    short_side: int | None = None
    size: tuple[int, int] | None = None  # (w, h), keep_ratio=False

    def __call__(self, frames: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        _check_clip(frames, "Resize")
        h, w = frames.shape[1:3]
        if self.size is not None:
            new_w, new_h = self.size
        elif self.short_side is not None:
            scale = self.short_side / min(h, w)
            new_w, new_h = int(w * scale + 0.5), int(h * scale + 0.5)
        else:
            raise ValueError("transforms.Resize: expected short_side or size=(w, h)")
        return _resize_frames(frames, new_w, new_h)


@dataclass
class MultiScaleCrop:
    """MMAction2 `MultiScaleCrop` (TSN training; its K400 config: max_wh_scale_gap 1, fixed offsets): crop w and h
    from scales of the short side at 5 fixed offsets; the box for ResizedCropFlip."""
    input_size: int | tuple[int, int] = 224  # (w, h) of the network input
    scales: tuple[float, ...] = (1, 0.875, 0.75, 0.66)

    def box(self, img_h: int, img_w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """Crop box (x1, y1, x2, y2) for an image of img_h x img_w."""
        in_w, in_h = _pair(self.input_size)
        # 1. candidate (w, h) sizes: pairs of scales at most one level apart
        crop_sizes = [int(min(img_h, img_w) * s) for s in self.scales]
        candidates = [[w, h] for i, h in enumerate(crop_sizes) for j, w in enumerate(crop_sizes) if abs(i - j) <= 1]
        crop_w, crop_h = candidates[int(rng.integers(len(candidates)))]
        # 2. a size within 3 px of the input size snaps to it (as MMAction2)
        crop_w = in_w if abs(crop_w - in_w) < 3 else crop_w
        crop_h = in_h if abs(crop_h - in_h) < 3 else crop_h
        # 3. offset: one of the 5 fixed positions on a quarter grid
        offsets = _fixed_offsets((img_w - crop_w) // 4, (img_h - crop_h) // 4)
        x, y = offsets[int(rng.integers(len(offsets)))]
        return x, y, x + crop_w, y + crop_h


@dataclass
class RandomResizedCrop:
    """MMAction2 `RandomResizedCrop` (3D training): 10 trials of (area, log-uniform ratio), else the centre square;
    the box for ResizedCropFlip."""
    area_range: tuple[float, float] = (0.08, 1.0)
    aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3)

    def box(self, img_h: int, img_w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """Crop box (x1, y1, x2, y2) for an image of img_h x img_w."""
        # 1. all trials drawn at once (as MMAction2): ratio log-uniform, area uniform in area_range * H * W
        lo, hi = np.log(self.aspect_ratio_range[0]), np.log(self.aspect_ratio_range[1])
        ratios = np.exp(rng.uniform(lo, hi, size=10))
        areas = rng.uniform(*self.area_range, size=10) * img_h * img_w
        widths = np.round(np.sqrt(areas * ratios)).astype(int)
        heights = np.round(np.sqrt(areas / ratios)).astype(int)
        # 2. the first trial that fits gets a uniform offset
        for crop_w, crop_h in zip(widths, heights):
            if crop_h <= img_h and crop_w <= img_w:
                x, y = int(rng.integers(img_w - crop_w + 1)), int(rng.integers(img_h - crop_h + 1))
                return x, y, x + int(crop_w), y + int(crop_h)
        # 3. fallback: centre square of the short side
        side = min(img_h, img_w)
        x, y = (img_w - side) // 2, (img_h - side) // 2
        return x, y, x + side, y + side


@dataclass
class ResizedCropFlip:
    """Training: crop `box(H, W, rng)` (MultiScaleCrop.box / RandomResizedCrop.box), resize it to size x size, flip
    it with probability p, fused: (T, H, W, 3) uint8 -> uint8 (C, T, size, size).  The draws are in MMAction2's
    order (box, flip).  The resize is torch's uint8 bilinear kernel on channels-last memory: cv2's sample points,
    within one grey level of Resize's exact pixels, about 7x faster (benchmark.py --what transforms).
    """
    box: Callable[[int, int, np.random.Generator], tuple[int, int, int, int]]
    size: int = 224
    p: float = 0.5

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        _check_clip(frames, "ResizedCropFlip")
        crop = _crop(frames, self.box(*frames.shape[1:3], rng))
        flip = rng.random() < self.p
        if crop.shape[1:3] != (self.size, self.size):
            crop = _resize_uint8(crop, self.size, self.size)
        crop = crop[:, :, ::-1] if flip else crop
        return torch.from_numpy(np.ascontiguousarray(crop.transpose(3, 0, 1, 2)))  # (C, T, size, size)


@dataclass
class Normalize:
    """(x - mean) / std on the 0-255 scale: uint8 (T, H, W, 3) -> float32 (C, T, H, W); views (V, T, H, W, 3) ->
    (V, C, T, H, W).  ToUint8Tensor, then `normalize`."""
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD

    def __call__(self, frames: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        return normalize(ToUint8Tensor()(frames), self.mean, self.std)


@dataclass
class ToUint8Tensor:
    """The uint8 end of a pipeline: (T, H, W, 3) -> uint8 (C, T, H, W); views (V, T, H, W, 3) -> (V, C, T, H, W)
    (Normalize's layout; `normalize` turns it into Normalize's output exactly)."""

    def __call__(self, frames: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        if frames.ndim not in (4, 5) or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"transforms.ToUint8Tensor: expected uint8 (T, H, W, 3) or (V, T, H, W, 3), "
                             f"got {frames.dtype} {frames.shape}")
        order = (3, 0, 1, 2) if frames.ndim == 4 else (0, 4, 1, 2, 3)
        return torch.from_numpy(np.ascontiguousarray(frames)).permute(*order).contiguous()


def normalize(x: torch.Tensor, mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD) -> torch.Tensor:
    """uint8 (..., C, T, H, W) clips, the channel (RGB) at dim -4 -> float32 (x - mean) / std on x's device (so the
    same values as Normalize, which calls it); mean/std are put on a device once."""
    if x.dtype != torch.uint8 or x.ndim < 4 or x.shape[-4] != 3:
        raise ValueError(f"transforms.normalize: expected uint8 (..., 3, T, H, W), got {x.dtype} {tuple(x.shape)}")
    m, s = _norm_constants(x.device, tuple(mean), tuple(std))
    return (x.to(torch.float32) - m) / s


@dataclass
class CenterCrop:
    """MMAction2 `CenterCrop`: offsets ((W - w) // 2, (H - h) // 2). (T, H, W, 3) -> (T, h, w, 3)."""
    size: int | tuple[int, int]  # (w, h)

    def __call__(self, frames: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        _check_clip(frames, "CenterCrop")
        (h, w), (cw, ch) = frames.shape[1:3], _pair(self.size)
        x, y = (w - cw) // 2, (h - ch) // 2
        return np.ascontiguousarray(_crop(frames, (x, y, x + cw, y + ch)))


@dataclass
class ThreeCrop:
    """MMAction2 `ThreeCrop`: 3 crops spanning the short side, along the long one in the ORDER left/top,
    right/bottom, middle (step (L - l) // 2); (T, H, W, 3) -> views (3, T, h, w, 3)."""
    size: int | tuple[int, int]  # (w, h)

    def boxes(self, img_h: int, img_w: int) -> list[tuple[int, int, int, int]]:
        cw, ch = _pair(self.size)
        if ch == img_h:
            step = (img_w - cw) // 2
            offsets = [(0, 0), (2 * step, 0), (step, 0)]
        elif cw == img_w:
            step = (img_h - ch) // 2
            offsets = [(0, 0), (0, 2 * step), (0, step)]
        else:
            raise ValueError(f"transforms.ThreeCrop: crop {cw}x{ch} must span the image height {img_h} or width "
                             f"{img_w}")
        return [(x, y, x + cw, y + ch) for x, y in offsets]

    def __call__(self, frames: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        _check_clip(frames, "ThreeCrop")
        return np.stack([_crop(frames, b) for b in self.boxes(*frames.shape[1:3])])


@dataclass
class TenCrop:
    """MMAction2 `TenCrop`: (T, H, W, 3) -> views (10, T, h, w, 3), a crop and its flip for each of upper-left,
    upper-right, lower-left, lower-right and centre, in that order."""
    size: int | tuple[int, int]  # (w, h)

    def boxes(self, img_h: int, img_w: int) -> list[tuple[int, int, int, int]]:
        cw, ch = _pair(self.size)
        return [(x, y, x + cw, y + ch) for x, y in _fixed_offsets((img_w - cw) // 4, (img_h - ch) // 4)]

    def __call__(self, frames: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        _check_clip(frames, "TenCrop")
        crops = [_crop(frames, b) for b in self.boxes(*frames.shape[1:3])]
        return np.stack([view for crop in crops for view in (crop, crop[:, :, ::-1])])


def compose(*steps: Callable) -> Callable:
    """Chain clip transforms: f(frames, rng) = steps[-1](... steps[0](frames, rng) ..., rng)."""
    def run(frames: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray | torch.Tensor:
        for step in steps:
            frames = step(frames, rng)
        return frames
    return run


def train_transform(family: str, crop_size: int = 224, uint8: bool = False) -> Callable:
    """Training pipeline f(frames uint8 (T, H, W, 3), rng) -> float (C, T, crop, crop), MMAction2's K400 configs:
    Resize(short=S) -> MultiScaleCrop ('tsn') / RandomResizedCrop ('3d') -> resize to crop -> Flip -> Normalize,
    S = short_side_for(crop); one ResizedCropFlip after the cv2-exact Resize.  uint8=True: stop before Normalize.
    """
    boxes = {"tsn": MultiScaleCrop(input_size=crop_size).box, "3d": RandomResizedCrop().box}
    if family not in boxes:
        raise ValueError(f"transforms.train_transform: family must be one of {sorted(boxes)}, got {family!r}")
    steps = [Resize(short_side=short_side_for(crop_size)), ResizedCropFlip(boxes[family], crop_size, 0.5)]
    return compose(*steps) if uint8 else compose(*steps, lambda x, rng: normalize(x))


def test_transform(family: str, crop_size: int = 224, protocol: str = "three_crop", uint8: bool = False) -> Callable:
    """Test pipeline f(frames uint8 (T, H, W, 3)) -> float views (V, C, T, h, w): cv2-exact Resize(short=S), S =
    short_side_for(crop), then 'three_crop' ThreeCrop(S) (V=3; MMAction2's SlowOnly test config), 'ten_crop'
    TenCrop(crop) (V=10; its TSN test config) or 'center' CenterCrop(crop) (V=1); uint8=True: before Normalize."""
    if family not in ("tsn", "3d"):
        raise ValueError(f"transforms.test_transform: family must be 'tsn' or '3d', got {family!r}")
    side = short_side_for(crop_size)
    views = {"three_crop": ThreeCrop(side), "ten_crop": TenCrop(crop_size),
             "center": compose(CenterCrop(crop_size), lambda f, rng: f[None])}
    if protocol not in views:
        raise ValueError(f"transforms.test_transform: protocol must be one of {sorted(views)}, got {protocol!r}")
    pipeline = compose(Resize(short_side=side), views[protocol], ToUint8Tensor() if uint8 else Normalize())
    return lambda frames: pipeline(frames, None)


def short_side_for(crop_size: int) -> int:
    """MMAction2 test/train resize: short side 256 for crop 224, scaled alike for other crops (round(crop*256/224))."""
    return int(round(crop_size * 256 / 224))


# ----------------------------------------------------------------------------------------------------------------------
# Helpers: the alignment's steps, the cv2-exact resize, small checks
# ----------------------------------------------------------------------------------------------------------------------


def _check_clip(frames: object, where: str) -> None:
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3:
        got = getattr(frames, "shape", type(frames))
        raise ValueError(f"transforms.{where}: expected uint8 numpy (T, H, W, 3), got {got}")


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))


def _crop(frames: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x1, y1, x2, y2 = box
    return frames[:, y1:y2, x1:x2]


def _resize_frames(frames: np.ndarray, new_w: int, new_h: int) -> np.ndarray:
    """cv2-exact bilinear resize of every frame (T, H, W, 3) uint8 -> (T, new_h, new_w, 3); no copy at equal size."""
    if frames.shape[1:3] == (new_h, new_w):
        return frames
    with _torch_threads(1):  # per-sample work in DataLoader workers (they are the parallelism); a read-only image
        x = torch.from_numpy(np.ascontiguousarray(frames) if frames.flags.writeable else np.array(frames))
        return _resize_cv2_linear(x, new_w, new_h).numpy()


def _resize_uint8(frames: np.ndarray, new_w: int, new_h: int) -> np.ndarray:
    """Fast bilinear resize (T, H, W, 3) uint8 (any strides, a crop view) -> (T, new_h, new_w, 3), within 1 of cv2:
    torch's uint8 kernel reads the channels-last (T, 3, H, W) view in place and writes channels-last (no copy)."""
    with _torch_threads(1):
        x = torch.from_numpy(frames if frames.flags.writeable else np.array(frames)).permute(0, 3, 1, 2)
        y = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=False)
        return y.permute(0, 2, 3, 1).numpy()


def _resize_cv2_linear(x: torch.Tensor, new_w: int, new_h: int) -> torch.Tensor:
    """cv2.resize(INTER_LINEAR) of uint8 frames (T, H, W, C) -> (T, new_h, new_w, C), integer for integer: as cv2's
    generic 8-bit path (resize.cpp, what mmcv.imresize reaches), weights rounded to 1/2048, the horizontal pass exact
    in int32 (on the source rows the output needs), the vertical pass its SIMD fixed-point form
    ((r0 >> 4) * b0 >> 16) + ((r1 >> 4) * b1 >> 16), then (+ 2) >> 2."""
    t, h, w, c = x.shape
    xs0, xs1, a0, a1, rows, r0, r1, b0, b1 = _cv2_linear_plan(h, w, new_h, new_w)
    # 1. horizontal pass on the needed source rows: (T * R, new_w, C) int32, S[x0] * a0 + S[x1] * a1
    src = (x if rows is None else x.index_select(1, rows)).reshape(-1, w, c)
    acc = src.index_select(1, xs0).to(torch.int32).mul_(a0)
    acc.add_(src.index_select(1, xs1).to(torch.int32).mul_(a1)).bitwise_right_shift_(4)
    acc = acc.view(t, -1, new_w * c)
    # 2. vertical pass, fixed point as cv2's VResizeLinearVec_32s8u
    out = acc.index_select(1, r0).mul_(b0).bitwise_right_shift_(16)
    out.add_(acc.index_select(1, r1).mul_(b1).bitwise_right_shift_(16))
    out.add_(2).bitwise_right_shift_(2).clamp_(0, 255)
    return out.to(torch.uint8).view(t, new_h, new_w, c)


@functools.lru_cache(maxsize=512)
def _cv2_linear_plan(h: int, w: int, new_h: int, new_w: int) -> tuple:
    """Taps and weights of one (h, w) -> (new_h, new_w) resize, shaped for _resize_cv2_linear (computed once)."""
    xs0, xs1, a0, a1 = _cv2_linear_taps(w, new_w, clamp=True)
    ys0, ys1, b0, b1 = _cv2_linear_taps(h, new_h, clamp=False)  # cv2 clamps the rows, not their weights
    rows, inverse = torch.unique(torch.cat([ys0, ys1]), return_inverse=True)
    return (xs0, xs1, a0[:, None], a1[:, None], None if len(rows) == h else rows, inverse[:new_h], inverse[new_h:],
            b0[:, None], b1[:, None])


def _cv2_linear_taps(src: int, dst: int, clamp: bool) -> tuple[torch.Tensor, ...]:
    """cv2 INTER_LINEAR taps along one axis: source indices (i0, i1) and 11-bit weights (w0, w1), each (dst,); the
    source coordinate f = (d + 0.5) * scale - 0.5 (scale = 1 / (dst / src) in double, then float32 as cv2); clamp
    (columns): outside the image the weight goes to the edge pixel, else (rows) only the indices are clamped."""
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    f = (f - i0).astype(np.float32)
    if clamp:
        low, high = i0 < 0, i0 >= src - 1
        f[low | high] = 0
        i0 = np.where(low, 0, np.where(high, src - 1, i0))
    one = np.float32(1 << CV2_COEF_BITS)
    w0 = np.rint((np.float32(1) - f) * one).astype(np.int32)  # saturate_cast<short>: round half to even
    w1 = np.rint(f * one).astype(np.int32)
    i0, i1 = np.clip(i0, 0, src - 1), np.clip(i0 + 1, 0, src - 1)
    return tuple(torch.from_numpy(a) for a in (i0, i1, w0, w1))


@functools.lru_cache(maxsize=None)
def _norm_constants(device: torch.device, mean: tuple, std: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """mean/std float32 (3, 1, 1, 1) on `device`, made once per (device, values)."""
    return tuple(torch.tensor(v, dtype=torch.float32).view(3, 1, 1, 1).to(device) for v in (mean, std))


def _fixed_offsets(w_step: int, h_step: int) -> list[tuple[int, int]]:
    """MMAction2's fixed crop offsets on a quarter grid: UL, UR, LL, LR, centre."""
    return [(0, 0), (4 * w_step, 0), (0, 4 * h_step), (4 * w_step, 4 * h_step), (2 * w_step, 2 * h_step)]


def _plausible(hmat: np.ndarray, w: int, h: int, max_shift: float) -> bool:
    """True when every image corner keeps a positive projective depth and moves < max_shift * max(w, h) pixels."""
    corners = np.array([[0, w - 1, 0, w - 1], [0, 0, h - 1, h - 1], [1, 1, 1, 1]], dtype=np.float64)
    moved = hmat @ corners
    if np.any(moved[2] <= 0) or np.linalg.det(hmat[:2, :2]) <= 0:
        return False
    return bool(np.abs(moved[:2] / moved[2] - corners[:2]).max() < max_shift * max(w, h))


def _params_to_h(params: np.ndarray | Sequence[float]) -> np.ndarray:
    """(..., 8) parameters of H - I (row-major, H[2,2] = 1) -> (..., 3, 3)."""
    params = np.asarray(params, dtype=np.float64)
    full = np.concatenate([params, np.zeros(params.shape[:-1] + (1,))], axis=-1)
    return full.reshape(params.shape[:-1] + (3, 3)) + np.eye(3)


def _h_to_params(hmat: np.ndarray | torch.Tensor) -> np.ndarray:
    hmat = np.asarray(hmat, dtype=np.float64)
    return (hmat / hmat[2, 2] - np.eye(3)).reshape(9)[:8]


def _check_image_to_clip(mode: str, motion: HomographyGaussian | None) -> None:
    if mode not in IMAGE_TO_CLIP_MODES:
        raise ValueError(f"transforms.image_to_clip: mode must be one of {IMAGE_TO_CLIP_MODES}, got {mode!r}")
    if mode.startswith("warp") and motion is None:
        raise ValueError(f"transforms.image_to_clip: mode {mode!r} needs motion=HomographyGaussian "
                         f"(fit_homography_gaussian on estimate_video_motion of real videos)")


def _check_gaussian(mu: np.ndarray | Sequence, sigma: np.ndarray | Sequence) -> tuple[np.ndarray, np.ndarray]:
    mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    if mu.shape != (8,) or sigma.shape != (8, 8):
        raise ValueError(f"transforms.HomographyGaussian: expected mu (8,) and sigma (8, 8), "
                         f"got {mu.shape} {sigma.shape}")
    return mu, sigma


def _warp_batch(chw: torch.Tensor, hmats: torch.Tensor, padding: str) -> torch.Tensor:
    """Warp one image (C, H, W) float by N homographies (N, 3, 3) (pixel coords, source -> output) -> (N, C, H, W):
    identities return the input exactly, the others inverse-map every output pixel with grid_sample (bilinear,
    align_corners=False: pixel centres at integers; 3x3 inverses in float64, the grid float32 from row and column
    vectors)."""
    c, h, w = chw.shape
    hmats = hmats.to(torch.float64)
    out = chw[None].repeat(len(hmats), 1, 1, 1)
    moving = [i for i in range(len(hmats)) if not torch.equal(hmats[i], torch.eye(3, dtype=torch.float64))]
    if not moving:
        return out
    with _torch_threads(1):  # per-sample work (data workers parallelise across samples); avoids oversubscription
        inv = torch.linalg.inv(hmats[moving]).to(torch.float32)  # (M, 3, 3) output pixel -> source pixel
        xs = torch.arange(w, dtype=torch.float32).view(1, 1, w)
        ys = torch.arange(h, dtype=torch.float32).view(1, h, 1)

        def row(k: int) -> torch.Tensor:  # (M, H, W): inv[k, 0] * x + inv[k, 1] * y + inv[k, 2]
            return inv[:, k, 0].view(-1, 1, 1) * xs + (inv[:, k, 1].view(-1, 1, 1) * ys + inv[:, k, 2].view(-1, 1, 1))

        z = row(2)
        z = torch.where(z.abs() < 1e-12, torch.full_like(z, 1e-12), z)
        gx = (row(0) / z + 0.5) * (2.0 / w) - 1
        gy = (row(1) / z + 0.5) * (2.0 / h) - 1
        grid = torch.stack([gx, gy], dim=-1).clamp_(-4, 4).to(chw.dtype)  # (M, H, W, 2)
        out[moving] = F.grid_sample(chw[None].expand(len(moving), c, h, w), grid, mode="bilinear",
                                    padding_mode=padding, align_corners=False)
    return out


def _gray(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (H, W, 3) / (H, W) numpy or float tensor (3, H, W) / (H, W) -> float32 gray (H, W) on the 0-1 scale."""
    if isinstance(image, np.ndarray):
        x = torch.from_numpy(image.astype(np.float32)) / (255.0 if image.dtype == np.uint8 else 1.0)
        x = x.permute(2, 0, 1) if x.ndim == 3 else x
    else:
        x = image.float()
    if x.ndim == 3 and x.shape[0] == 3:
        x = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    if x.ndim != 2:
        raise ValueError(f"transforms.estimate_homography: expected (H, W, 3) / (H, W) numpy or (3, H, W) / (H, W) "
                         f"tensor, got shape {tuple(x.shape)}")
    return x.contiguous()


def _pyramid(img: torch.Tensor, min_side: int) -> list[torch.Tensor]:
    """2x2-average pyramid [(H, W), (H/2, W/2), ...] while the short side stays >= min_side."""
    levels = [img]
    while min(levels[-1].shape) // 2 >= min_side:
        levels.append(F.avg_pool2d(levels[-1][None, None], 2)[0, 0])
    return levels


def _norm_matrix(w: int, h: int) -> torch.Tensor:
    """Pixel -> normalised coords: u = (x - (w-1)/2) / s, v = (y - (h-1)/2) / s, s = max(w, h) / 2."""
    s = max(w, h) / 2.0
    return torch.tensor([[1 / s, 0, -(w - 1) / 2 / s], [0, 1 / s, -(h - 1) / 2 / s], [0, 0, 1]], dtype=torch.float64)


def _align_level(tmpl: torch.Tensor, img: torch.Tensor, g: torch.Tensor, bias: float, level: int,
                 full_size: tuple[int, int], max_iters: int, tol: float) -> tuple[torch.Tensor, float]:
    """Inverse-compositional Gauss-Newton at one pyramid level; g (3, 3) normalised src -> dst, returns (g, bias)."""
    hl, wl = tmpl.shape
    w, h = full_size
    scale, s = 2.0 ** level, max(w, h) / 2.0
    cx, cy = (w - 1) / 2, (h - 1) / 2
    # 1. normalised coordinates of this level's pixel centres (level pixel i covers full pixels [i*2^l, (i+1)*2^l))
    ys, xs = torch.meshgrid((torch.arange(hl) + 0.5) * scale - 0.5, (torch.arange(wl) + 0.5) * scale - 0.5,
                            indexing="ij")
    u, v = ((xs - cx) / s).reshape(-1), ((ys - cy) / s).reshape(-1)
    # 2. steepest-descent images of the template (N, 9): gradient (per normalised unit) x dW/dp at identity, + bias
    gx, gy = torch.zeros_like(tmpl), torch.zeros_like(tmpl)
    gx[:, 1:-1] = (tmpl[:, 2:] - tmpl[:, :-2]) * (s / scale / 2)
    gy[1:-1, :] = (tmpl[2:, :] - tmpl[:-2, :]) * (s / scale / 2)
    gx, gy = gx.reshape(-1), gy.reshape(-1)
    radial = gx * u + gy * v
    sd = torch.stack([gx * u, gx * v, gx, gy * u, gy * v, gy, -radial * u, -radial * v, torch.ones_like(u)], dim=1)
    inner = torch.zeros_like(tmpl, dtype=torch.bool)
    inner[1:-1, 1:-1] = True
    inner, t = inner.reshape(-1), tmpl.reshape(-1)
    pts = torch.stack([u, v, torch.ones_like(u)]).double()
    corners = torch.tensor([[-cx, cx, -cx, cx], [-cy, -cy, cy, cy], [s, s, s, s]], dtype=torch.float64) / s
    for _ in range(max_iters):
        # 3. sample dst at W(u; g), residual against the template (+ bias), mask pixels that leave dst
        q = g @ pts
        xl = ((q[0] / q[2]) * s + cx + 0.5) / scale - 0.5
        yl = ((q[1] / q[2]) * s + cy + 0.5) / scale - 0.5
        grid = torch.stack([(xl + 0.5) / wl * 2 - 1, (yl + 0.5) / hl * 2 - 1], -1).float().reshape(1, hl, wl, 2)
        warped = F.grid_sample(img[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        err = warped.reshape(-1) - t - bias
        valid = inner & (xl >= 0) & (xl <= wl - 1) & (yl >= 0) & (yl <= hl - 1)
        # 4. Huber weights (scale from the median absolute residual), weighted normal equations
        wts = _huber_weights(err, valid)
        a = sd * wts[:, None]
        delta = torch.linalg.solve((a.T @ sd).double() + 1e-9 * torch.eye(9, dtype=torch.float64),
                                   (a.T @ err).double())
        # 5. inverse-compositional update g <- g o W(dp)^-1; stop when the corners move < tol level-pixels
        step = torch.as_tensor(_params_to_h(delta[:8].numpy()))
        g, bias = g @ torch.linalg.inv(step), bias + float(delta[8])
        moved = step @ corners
        shift = ((moved[:2] / moved[2] - corners[:2]).norm(dim=0).max() * s / scale).item()
        if shift < tol:
            break
    return g / g[2, 2], bias


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Temporarily run torch intra-op work on n threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _huber_weights(err: torch.Tensor, valid: torch.Tensor, k: float = 1.345) -> torch.Tensor:
    """IRLS Huber weights (0 outside `valid`); residual scale = 1.4826 * median |err| over valid pixels."""
    if not valid.any():
        return valid.float()
    sigma = 1.4826 * err[valid].abs().median().clamp(min=1e-4)
    r = err.abs() / (k * sigma)
    return torch.where(r <= 1, torch.ones_like(r), 1 / r.clamp(min=1e-12)) * valid.float()
