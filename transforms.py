"""Clip transforms for omnisource: the paper's format transforms and MMAction2-style augmentation.

Section 1 -- transforming web data to the target format (Sec. 3.5):
- Eq. 2 / Table 8: inflating a still image to a pseudo clip (replication, random / constant translation, perspective
  warping with homographies H_i ~ N(mu, Sigma) fitted by maximum likelihood to camera motion measured on real videos);
  `warp_perspective`, `estimate_homography` (direct photometric alignment), `estimate_video_motion`,
  `HomographyGaussian`, `fit_homography_gaussian`, `image_to_clip`.
- Table 14: building a 3-snippet TSN input from 1-FPS frames of an untrimmed video scored by a teacher
  (`select_snippet`, default 1 positive + 2 negative frames).

Section 2 -- clip augmentation. The paper does not list its augmentation (its appendix "Implementation Details" gives
only schedules); we follow the MMAction2 1.x Kinetics-400 configs of TSN and SlowOnly (the paper's codebase): Resize,
MultiScaleCrop (TSN), RandomResizedCrop (3D), Flip, Normalize, and the test-time CenterCrop / ThreeCrop / TenCrop, with
MMAction2's crop-box arithmetic and view order. A clip is uint8 numpy `(T, H, W, 3)` RGB; every random choice is drawn
ONCE per clip from the numpy Generator passed in, so all frames get the same crop/flip. `Resize` reproduces cv2's
INTER_LINEAR on uint8 as mmcv.imresize calls it (half-pixel centres, no anti-aliasing, 11-bit fixed-point weights),
bit for bit, so released checkpoints see the pixels they were trained on (every test pipeline, and the short-side
resize of training). Training resizes its random crop with `ResizedCropFlip`: torch's uint8 channels-last bilinear
kernel, the same crop boxes and geometry, within one grey level of cv2 (about 7x faster; augmentation noise).
With `uint8=True` the pipelines stop before normalisation and return uint8 tensors; `normalize` finishes them on any
device (DataLoader workers ship 4x fewer bytes).

Section 3 -- the machinery under both (a reader of the method may stop before it): `compose`, the
alignment's pyramid and Gauss-Newton steps, the cv2-exact resize taps and the other small helpers.

Coordinate convention (section 1): a homography H maps PIXEL coordinates (x, y, 1) of the source image to the output
image, pixel centres at integers (x = 0 .. W-1). `HomographyGaussian` stores motion in resolution-free normalised
coordinates u = (x - (W-1)/2) / (max(W, H)/2) so one fitted model applies to images of any size.
"""
from __future__ import annotations

import functools
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
_NORM_CACHE: dict = {}  # (device, mean, std) -> float32 (3, 1, 1, 1) tensors on that device (see normalize)

# ----------------------------------------------------------------------------------------------------------------------
# 1. Transforming web data to the target format (Sec. 3.5)
# ----------------------------------------------------------------------------------------------------------------------


def warp_perspective(image: np.ndarray | torch.Tensor, H: np.ndarray | torch.Tensor, padding: str = "border"
                     ) -> np.ndarray | torch.Tensor:
    """Sec. 3.5: the homographic transform F(I; H). Output pixel x' takes the source at H^-1 x' (bilinear).

    image: uint8 numpy (H, W, 3) or float tensor (3, H, W); H: (3, 3) mapping SOURCE pixel coords to OUTPUT pixel
    coords, or (N, 3, 3) for N warps of the same image (Eq. 2's frames: image_to_clip). Returns the same type and
    dtype, (H, W, 3) / (3, H, W), or with a leading N for N matrices. padding 'border' (default) repeats the edge
    pixels where the inverse map leaves the image, so pseudo videos have no black corners; 'zeros' and 'reflection'
    are grid_sample's others.
    """
    hmats = torch.as_tensor(np.asarray(H, dtype=np.float64))
    one = hmats.ndim == 2
    hmats = hmats.reshape(-1, 3, 3)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"transforms.warp_perspective: expected uint8 (H, W, 3), got {image.dtype} {image.shape}")
        chw = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)
        out = _warp_batch(chw, hmats, padding).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return out[0] if one else out
    if not torch.is_tensor(image) or image.ndim != 3 or not image.is_floating_point():
        raise ValueError("transforms.warp_perspective: expected uint8 numpy (H, W, 3) or float tensor (3, H, W)")
    out = _warp_batch(image, hmats, padding)
    return out[0] if one else out


def estimate_homography(src: np.ndarray | torch.Tensor, dst: np.ndarray | torch.Tensor, max_side: int = 400,
                        min_side: int = 20, max_iters: int = 30, tol: float = 1e-2) -> torch.Tensor:
    """Direct photometric alignment: H (3, 3) float64 with warp_perspective(src, H) ~ dst (pixel coords, H[2,2]=1).

    src, dst: uint8 (H, W, 3) / (H, W) numpy or float tensors (3, H, W) / (H, W), same size. Inverse-compositional
    Gauss-Newton (Baker & Matthews) over the 8 homography parameters plus an intensity bias, Huber-weighted, on a
    2x2-average pyramid coarse to fine (coarsest short side >= min_side); pixels mapped outside dst are masked out.
    Speed: levels whose long side exceeds max_side are skipped (the finest level used is downscaled by 2^k); the
    result is still in full-resolution pixel coordinates. tol: stop a level when an update moves the corners < tol px.
    Runs torch single-threaded (restored after): ~0.05 s per 340x256 pair on one CPU core.
    """
    with _torch_threads(1):  # many small ops: one thread is fastest and immune to CPU oversubscription
        a, b = _gray(src), _gray(dst)
        if a.shape != b.shape:
            raise ValueError(f"transforms.estimate_homography: src {tuple(a.shape)} and dst {tuple(b.shape)} differ")
        h, w = a.shape
        norm = _norm_matrix(w, h)
        # 1. pyramids (level l halves level l-1); 2. skip the finest levels whose long side exceeds max_side
        pyr_a, pyr_b = _pyramid(a, min_side), _pyramid(b, min_side)
        first = 0
        while first < len(pyr_a) - 1 and max(pyr_a[first].shape) > max_side:
            first += 1
        # 3. coarse to fine; the motion is kept in normalised coordinates (level independent)
        g, bias = torch.eye(3, dtype=torch.float64), 0.0
        for level in range(len(pyr_a) - 1, first - 1, -1):
            g, bias = _align_level(pyr_a[level], pyr_b[level], g, bias, level, (w, h), max_iters, tol)
    # 4. back to pixel coordinates
    hmat = torch.linalg.inv(norm) @ g @ norm
    return hmat / hmat[2, 2]


def estimate_video_motion(frames: np.ndarray, stride: int = 1, max_shift: float | None = 0.1, **kwargs: float
                          ) -> list:
    """Camera motion of a real video (Sec. 3.5: mu, Sigma are "estimated ... on the original video source").

    frames: uint8 (T, H, W, 3), consecutive native frames -> (T-1) // stride entries: entry k is H (3, 3), pixel
    coords, with warp(frame_ks, H) ~ frame_(k+1)s: the motion over `stride` native frames (one step of the clips a
    network samples, Eq. 2), or None where the window crosses a scene cut / failed alignment.
    1. H between every consecutive pair (`estimate_homography`); a pair is rejected when a corner moves more than
       max_shift * long side or the homography flips orientation (max_shift=None keeps all);
    2. entry k = the product of the `stride` steps of its window, None when one of them was rejected.
    Composing consecutive steps, not aligning frames `stride` apart directly: aligning frames 16 apart in the
    Kinetics-like real clips disagreed with the composed chain by more than a tenth of the frame on half of the
    pairs (the photometric alignment loses large motions); each consecutive step is a small motion it finds.
    kwargs go to estimate_homography.
    """
    _check_clip(frames, "estimate_video_motion")
    if stride < 1:
        raise ValueError(f"transforms.estimate_video_motion: stride must be >= 1, got {stride}")
    h, w = frames.shape[1:3]
    out = []
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
    """Sec. 3.5: per-step camera motion H_i ~ N(mu, Sigma) over the 8 free entries of G - I (row-major, G[2,2] = 1).

    G is the homography in normalised coordinates (see the module docstring), so the model fits any image size.
    per_class: optional class-specific (mu, sigma) (Table 8 "[spec]"); the class-agnostic mu/sigma is "[agno]".
    stride: what one step H_i stands for in the real videos it was fitted on, as `omnisource.motion_stride` names
    it ("16 frames": a 3D net sampling every 16th frame; "1/3 video": a TSN's 3 segments); "" when unknown.
    """
    mu: np.ndarray  # (8,)
    sigma: np.ndarray  # (8, 8)
    per_class: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    stride: str = ""

    def __post_init__(self) -> None:
        self.mu, self.sigma = _check_gaussian(self.mu, self.sigma)
        self.per_class = {int(k): _check_gaussian(*v) for k, v in self.per_class.items()}

    def sample(self, n: int, rng: np.random.Generator, label: int | None = None) -> np.ndarray:
        """n normalised homographies (n, 3, 3) float64; class-specific when `label` has its own fit."""
        mu, sigma = self.per_class.get(label, (self.mu, self.sigma)) if label is not None else (self.mu, self.sigma)
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

    hs: sequence of (3, 3) homographies (None entries are skipped); in pixel coordinates of (w, h) = size frames
    (normalised here), or already normalised when size is None. mu = mean, Sigma = (1/n) sum (p - mu)(p - mu)^T
    (the ML estimate) + ridge * I (keeps it positive definite; 1e-12 is a 1e-6 std, far below real motion).
    labels (optional, one per H, None entries included): also fit a class-specific Gaussian per label that has at
    least `min_class` homographies (the others sample the class-agnostic one). stride: recorded in the model.
    """
    keep = [i for i, hmat in enumerate(hs) if hmat is not None]  # None: pairs rejected by estimate_video_motion
    if not keep:
        raise ValueError("transforms.fit_homography_gaussian: expected at least one homography (all None or empty)")
    mats = [normalize_homography(hs[i], size) if size is not None else np.asarray(hs[i], np.float64) for i in keep]
    params = np.stack([_h_to_params(np.asarray(m)) for m in mats])  # (n, 8)

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

    'still': replication. 'translate-random': each step moves by a random (dx, dy) ~ U(-m, m)^2.
    'translate-const': one random velocity (direction U(0, 2pi), speed U(0, m)) for the whole clip.
    'warp-agno': J_1 = I, J_i = H_i(J_{i-1}) with H_i ~ the class-agnostic Gaussian of `motion`; 'warp-spec': the
    Gaussian of the image's (pseudo-)`label` where that class has its own fit (HomographyGaussian.sample).
    m = max_step * short side (pixels per frame). Frame i is the ORIGINAL image warped once by the composed product
    (H_i ... H_1), so there is no repeated-resampling blur; borders are filled by edge replication
    (warp_perspective 'border'). short_side (web images are often 1-12 megapixels): first Resize(short_side) the
    image, once, so replication and warping work at the size the clip pipeline resizes to anyway (its Resize is
    then the identity; 'still' gives the same pixels as resizing every frame after). None: keep the image's size.
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
        steps = [_translation(dx, dy) for dx, dy in shifts]
    # 2. Eq. 2: compose H_i ... H_1 and warp the original image once per frame
    total, mats = np.eye(3), [np.eye(3)]
    for step in steps:
        total = step @ total
        mats.append(total.copy())
    return warp_perspective(image, np.stack(mats))             # (T, H, W, 3) uint8


def build_image_to_clip(mode: str = "still", motion: HomographyGaussian | None = None, max_step: float = 0.02,
                        short_side: int | None = None) -> Callable:
    """`image_to_clip` bound for a dataset: f(image (H, W, 3), num_frames, rng=None, label=None) -> (T, H', W', 3)
    uint8. short_side: resize the image first; pass short_side_for(crop_size) of the clip pipeline."""
    _check_image_to_clip(mode, motion)

    def to_clip(image: np.ndarray, num_frames: int, rng: np.random.Generator | None = None,
                label: int | None = None) -> np.ndarray:
        return image_to_clip(image, num_frames, mode, rng, motion, label, max_step, short_side)
    return to_clip


SNIPPET_MODES = {"1p2n": (1, 2), "2p1n": (2, 1), "3pos": (3, 0), "3rand": None}  # Table 14 rows: (pos, neg) of 3


def select_snippet(scores: np.ndarray | Sequence[float], label: int, mode: str = "1p2n",
                   rng: np.random.Generator | None = None, *, threshold: float, num_frames: int = 3) -> np.ndarray:
    """Table 14: pick the frames of a TSN snippet (one per segment) from the 1-FPS frames of an untrimmed video.

    scores: (F, num_classes) teacher probabilities, or (F,) probability of `label`. Positives: prob >= threshold,
    the threshold the filter held the video to (webscale.FrameScores.threshold; no default: there is no other).
    '1p2n' (paper default) 1 positive + 2 negatives, '2p1n', '3pos', '3rand' (any 3 frames). For num_frames = N
    segments a row of p positives of 3 takes the same share: floor(N p / 3 + 1/2) positives (halves up) and the
    rest negatives (1p2n with 8 segments: 3 + 5; 2p1n: 5 + 3). Each kind is drawn without replacement; a
    shortfall of one kind is filled from the other kind; videos with < N frames repeat frames.
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
    pos, neg = np.flatnonzero(probs >= threshold), np.flatnonzero(probs < threshold)
    row = SNIPPET_MODES[mode]
    if row is None:
        pos, neg, row = np.arange(len(probs)), np.zeros(0, dtype=int), (3, 0)
    n_want = int(np.floor(num_frames * row[0] / 3 + 0.5))
    want = (n_want, num_frames - n_want)
    # 2. take what each kind has; the shortfall moves to the other kind
    n_pos = min(want[0], len(pos))
    n_neg = min(want[1] + want[0] - n_pos, len(neg))
    n_pos = min(want[0] + want[1] - n_neg, len(pos))
    picked = list(rng.choice(pos, n_pos, replace=False)) + list(rng.choice(neg, n_neg, replace=False))
    # 3. fewer than N frames in the video: repeat random frames
    if len(picked) < num_frames:
        picked += list(rng.integers(len(probs), size=num_frames - len(picked)))
    return np.sort(np.asarray(picked, dtype=np.int64))


# ----------------------------------------------------------------------------------------------------------------------
# 2. Clip augmentation (MMAction2 1.x mmaction/datasets/transforms/processing.py, re-implemented)
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Resize:
    """MMAction2 `Resize`: short side to `short_side` keeping the ratio (scale=(-1, S)), or to a fixed `size` (w, h).

    (T, H, W, 3) uint8 -> (T, H', W', 3) uint8. New size as mmcv.rescale_size: int(w * S / min(h, w) + 0.5).
    Equals MMAction2's cv2 INTER_LINEAR bit for bit (see _resize_cv2_linear).
    """
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
    """MMAction2 `MultiScaleCrop` (TSN training): crop w and h from scales of the short side, then fixed offsets.

    Gives the box; ResizedCropFlip crops the clip with it and resizes the crop to `input_size` (train_transform).
    """
    input_size: int | tuple[int, int] = 224  # (w, h) of the network input
    scales: tuple[float, ...] = (1, 0.875, 0.75, 0.66)
    max_wh_scale_gap: int = 1
    random_crop: bool = False
    num_fixed_crops: int = 5  # 5 or 13

    def box(self, img_h: int, img_w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """Crop box (x1, y1, x2, y2) for an image of img_h x img_w."""
        in_w, in_h = _pair(self.input_size)
        # 1. candidate (w, h) sizes: pairs of scales at most max_wh_scale_gap levels apart
        crop_sizes = [int(min(img_h, img_w) * s) for s in self.scales]
        candidates = [[w, h] for i, h in enumerate(crop_sizes) for j, w in enumerate(crop_sizes)
                      if abs(i - j) <= self.max_wh_scale_gap]
        crop_w, crop_h = candidates[int(rng.integers(len(candidates)))]
        # 2. a size within 3 px of the input size snaps to it (as MMAction2)
        crop_w = in_w if abs(crop_w - in_w) < 3 else crop_w
        crop_h = in_h if abs(crop_h - in_h) < 3 else crop_h
        # 3. offset: uniform, or one of the 5 (13) fixed positions on a quarter grid
        if self.random_crop:
            x, y = int(rng.integers(img_w - crop_w + 1)), int(rng.integers(img_h - crop_h + 1))
        else:
            offsets = _fixed_offsets((img_w - crop_w) // 4, (img_h - crop_h) // 4, self.num_fixed_crops)
            x, y = offsets[int(rng.integers(len(offsets)))]
        return x, y, x + crop_w, y + crop_h


@dataclass
class RandomResizedCrop:
    """MMAction2 `RandomResizedCrop` (3D training): 10 trials of (area, log-uniform ratio); fallback centre square.

    Gives the box; ResizedCropFlip crops the clip with it and resizes the crop to the crop size (train_transform).
    """
    area_range: tuple[float, float] = (0.08, 1.0)
    aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3)
    max_attempts: int = 10

    def box(self, img_h: int, img_w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """Crop box (x1, y1, x2, y2) for an image of img_h x img_w."""
        # 1. all trials drawn at once (as MMAction2): ratio log-uniform, area uniform in area_range * H * W
        lo, hi = np.log(self.aspect_ratio_range[0]), np.log(self.aspect_ratio_range[1])
        ratios = np.exp(rng.uniform(lo, hi, size=self.max_attempts))
        areas = rng.uniform(*self.area_range, size=self.max_attempts) * img_h * img_w
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
    """Training: crop `box(H, W, rng)`, resize the crop to size x size, flip horizontally with probability p; fused.

    (T, H, W, 3) uint8 -> uint8 (C, T, size, size), ToUint8Tensor's layout. The random draws are MMAction2's order
    (the box, then the flip), so a Generator gives the same boxes and flips as crop -> Resize -> Flip would. The
    resize is F.interpolate(bilinear, align_corners=False, antialias=False) on the uint8 crop in channels-last memory
    (torch's uint8 kernel): cv2 INTER_LINEAR's sample points and edge clamping, within one grey level of Resize's
    exact pixels (their roundings differ), about 7x faster (benchmark.py --what transforms); the flip and the
    (C, T, H, W) layout are one numpy copy. box: MultiScaleCrop.box (TSN) or RandomResizedCrop.box (3D).
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
        if flip:
            crop = crop[:, :, ::-1]
        return torch.from_numpy(np.ascontiguousarray(crop.transpose(3, 0, 1, 2)))  # (C, T, size, size)


@dataclass
class Normalize:
    """(x - mean) / std on the 0-255 scale: (T, H, W, 3) -> (C, T, H, W); views (V, T, H, W, 3) -> (V, C, T, H, W)."""
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD

    def __call__(self, frames: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        if frames.ndim not in (4, 5) or frames.shape[-1] != 3:
            raise ValueError(f"transforms.Normalize: expected (T, H, W, 3) or (V, T, H, W, 3), got {frames.shape}")
        x = torch.from_numpy(frames.astype(np.float32))  # a copy: read-only inputs are fine
        x = (x - torch.tensor(self.mean)) / torch.tensor(self.std)
        order = (3, 0, 1, 2) if frames.ndim == 4 else (0, 4, 1, 2, 3)
        return x.permute(*order).contiguous()


@dataclass
class ToUint8Tensor:
    """The uint8 end of a pipeline: (T, H, W, 3) -> uint8 (C, T, H, W); views (V, T, H, W, 3) -> (V, C, T, H, W).

    Same layout as Normalize's output, before normalisation; `normalize` turns it into Normalize's output exactly.
    """

    def __call__(self, frames: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        if frames.ndim not in (4, 5) or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"transforms.ToUint8Tensor: expected uint8 (T, H, W, 3) or (V, T, H, W, 3), "
                             f"got {frames.dtype} {frames.shape}")
        order = (3, 0, 1, 2) if frames.ndim == 4 else (0, 4, 1, 2, 3)
        return torch.from_numpy(np.ascontiguousarray(frames)).permute(*order).contiguous()


def normalize(x: torch.Tensor, mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD) -> torch.Tensor:
    """uint8 clips -> float32 (x - mean) / std on x's device, equal to Normalize's output for the same pixels.

    x: uint8 (..., C, T, H, W) with the CHANNEL AT DIM -4 (C = 3, RGB): a clip (C, T, H, W), a batch (N, C, T, H, W),
    test views (V, C, T, H, W) or a batch of them (N, V, C, T, H, W). Same float32 operations as Normalize, so the
    values are bit-identical. mean/std live on the device once (no host copy per call, no host sync).
    """
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
    """MMAction2 `ThreeCrop`: 3 crops along the long side, ORDER left/top, right/bottom, middle (step = (L - l) // 2).

    The crop must span the short side. (T, H, W, 3) -> views (3, T, h, w, 3).
    """
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
    """MMAction2 `TenCrop`: for each of upper-left, upper-right, lower-left, lower-right, centre: crop, flipped crop.

    (T, H, W, 3) -> views (10, T, h, w, 3), order [UL, UL-flip, UR, UR-flip, LL, LL-flip, LR, LR-flip, C, C-flip].
    """
    size: int | tuple[int, int]  # (w, h)

    def boxes(self, img_h: int, img_w: int) -> list[tuple[int, int, int, int]]:
        cw, ch = _pair(self.size)
        offsets = _fixed_offsets((img_w - cw) // 4, (img_h - ch) // 4, 5)
        return [(x, y, x + cw, y + ch) for x, y in offsets]

    def __call__(self, frames: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        _check_clip(frames, "TenCrop")
        views = []
        for b in self.boxes(*frames.shape[1:3]):
            crop = _crop(frames, b)
            views += [crop, crop[:, :, ::-1]]
        return np.stack(views)


def train_transform(family: str, crop_size: int = 224, uint8: bool = False) -> Callable:
    """Training pipeline f(frames uint8 (T, H, W, 3), rng) -> float (C, T, crop, crop), as MMAction2's K400 configs.

    'tsn': Resize(short=S) -> MultiScaleCrop -> resize (crop, crop) -> Flip -> Normalize;
    '3d':  Resize(short=S) -> RandomResizedCrop -> resize (crop, crop) -> Flip -> Normalize; S = round(crop*256/224).
    Resize is cv2-exact (an identity on K400's short side 256); crop, resize and flip are one ResizedCropFlip
    (within one grey level of cv2, same boxes). uint8=True: uint8 (C, T, crop, crop) before normalisation
    (`normalize` finishes it, to the float output exactly).
    """
    boxes = {"tsn": MultiScaleCrop(input_size=crop_size).box, "3d": RandomResizedCrop().box}
    if family not in boxes:
        raise ValueError(f"transforms.train_transform: family must be one of {sorted(boxes)}, got {family!r}")
    steps = [Resize(short_side=short_side_for(crop_size)), ResizedCropFlip(boxes[family], crop_size, 0.5)]
    return compose(*steps) if uint8 else compose(*steps, lambda x, rng: normalize(x))


def test_transform(family: str, crop_size: int = 224, protocol: str = "three_crop", uint8: bool = False) -> Callable:
    """Test pipeline f(frames uint8 (T, H, W, 3)) -> float views (V, C, T, h, w); S = round(crop * 256 / 224).

    'three_crop': Resize(short=S) -> ThreeCrop(S) (V=3, h=w=S; MMAction2 SlowOnly test config);
    'ten_crop':   Resize(short=S) -> TenCrop(crop) (V=10; MMAction2 TSN test config);
    'center':     Resize(short=S) -> CenterCrop(crop) (V=1; MMAction2 val config).
    Resize is cv2-exact. uint8=True: uint8 views (V, C, T, h, w) before normalisation (`normalize` finishes them).
    """
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
# 3. Machinery (a reader of the method may stop here): compose, alignment steps, cv2-exact resize taps, helpers
# ----------------------------------------------------------------------------------------------------------------------


def compose(*steps: Callable) -> Callable:
    """Chain clip transforms: f(frames, rng) = steps[-1](... steps[0](frames, rng) ..., rng)."""
    def run(frames: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray | torch.Tensor:
        for step in steps:
            frames = step(frames, rng)
        return frames
    return run


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
    with _torch_threads(1):  # per-sample work in DataLoader workers (they are the parallelism)
        # read-only input (an image straight from Pillow) is copied: torch wants writable memory
        x = torch.from_numpy(np.ascontiguousarray(frames) if frames.flags.writeable else np.array(frames))
        return _resize_cv2_linear(x, new_w, new_h).numpy()


def _resize_uint8(frames: np.ndarray, new_w: int, new_h: int) -> np.ndarray:
    """Fast bilinear resize (T, H, W, 3) uint8 (any strides, a crop view) -> (T, new_h, new_w, 3), within 1 of cv2.

    The (T, 3, H, W) view of the frames is channels-last memory: torch's uint8 kernel reads it in place (a read-only
    crop is copied first) and writes channels-last, i.e. (T, new_h, new_w, 3) contiguous, returned without a copy.
    """
    with _torch_threads(1):
        x = torch.from_numpy(frames if frames.flags.writeable else np.array(frames)).permute(0, 3, 1, 2)
        y = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=False)
        return y.permute(0, 2, 3, 1).numpy()


def _resize_cv2_linear(x: torch.Tensor, new_w: int, new_h: int) -> torch.Tensor:
    """cv2.resize(INTER_LINEAR) of uint8 frames (T, H, W, C) -> (T, new_h, new_w, C), integer for integer.

    cv2 (resize.cpp, the generic 8-bit path mmcv.imresize reaches): weights are rounded to 1/2048, the horizontal pass
    is exact in int32, the vertical pass is its SIMD fixed-point form ((r0 >> 4) * b0 >> 16) + ((r1 >> 4) * b1 >> 16),
    then (+ 2) >> 2. Only the source rows the output needs go through the horizontal pass.
    """
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
    """cv2 INTER_LINEAR taps along one axis: source indices (i0, i1) and 11-bit weights (w0, w1), each (dst,).

    Source coordinate f = (d + 0.5) * scale - 0.5 with scale = 1 / (dst / src) in double, then float32 as cv2 does;
    clamp=True (columns): outside the image the weight goes to the edge pixel; clamp=False (rows): indices clamped only.
    """
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
    i1 = np.clip(i0 + 1, 0, src - 1)
    i0 = np.clip(i0, 0, src - 1)
    return tuple(torch.from_numpy(a) for a in (i0, i1, w0, w1))


def _norm_constants(device: torch.device, mean: tuple, std: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """mean/std float32 (3, 1, 1, 1) on `device`, made once per (device, values)."""
    key = (str(device), mean, std)
    if key not in _NORM_CACHE:
        _NORM_CACHE[key] = tuple(torch.tensor(v, dtype=torch.float32).view(3, 1, 1, 1).to(device)
                                 for v in (mean, std))
    return _NORM_CACHE[key]


def _fixed_offsets(w_step: int, h_step: int, num: int) -> list[tuple[int, int]]:
    """MMAction2 fixed crop offsets on a quarter grid: UL, UR, LL, LR, centre (+ 8 more when num == 13)."""
    offsets = [(0, 0), (4 * w_step, 0), (0, 4 * h_step), (4 * w_step, 4 * h_step), (2 * w_step, 2 * h_step)]
    if num == 13:
        offsets += [(0, 2 * h_step), (4 * w_step, 2 * h_step), (2 * w_step, 4 * h_step), (2 * w_step, 0),
                    (w_step, h_step), (3 * w_step, h_step), (w_step, 3 * h_step), (3 * w_step, 3 * h_step)]
    elif num != 5:
        raise ValueError(f"transforms.MultiScaleCrop: num_fixed_crops must be 5 or 13, got {num}")
    return offsets


def _plausible(hmat: np.ndarray, w: int, h: int, max_shift: float) -> bool:
    """True when every image corner keeps a positive projective depth and moves < max_shift * max(w, h) pixels."""
    corners = np.array([[0, w - 1, 0, w - 1], [0, 0, h - 1, h - 1], [1, 1, 1, 1]], dtype=np.float64)
    moved = hmat @ corners
    if np.any(moved[2] <= 0) or np.linalg.det(hmat[:2, :2]) <= 0:
        return False
    return bool(np.abs(moved[:2] / moved[2] - corners[:2]).max() < max_shift * max(w, h))


def _translation(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


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
    """Warp one image (C, H, W) float by N homographies (N, 3, 3) (pixel coords, source -> output) -> (N, C, H, W).

    Identity matrices return the input exactly; others inverse-map every output pixel with grid_sample (bilinear,
    align_corners=False so that pixel centres sit at integer coordinates). The 3x3 inverses are float64; the per-pixel
    grid is float32 (H, W, 2) per matrix, built from row and column vectors (no (3, H*W) coordinate matrix).
    """
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
        x = torch.from_numpy(image.astype(np.float32))
        scale = 255.0 if image.dtype == np.uint8 else 1.0
        x = x.permute(2, 0, 1) if x.ndim == 3 else x
        x = x / scale
    else:
        x = image.float()
    if x.ndim == 3:
        if x.shape[0] != 3:
            raise ValueError(f"transforms.estimate_homography: expected (H, W, 3) numpy or (3, H, W) tensor, "
                             f"got {tuple(x.shape)}")
        x = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    if x.ndim != 2:
        raise ValueError(f"transforms.estimate_homography: expected an image, got shape {tuple(x.shape)}")
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
