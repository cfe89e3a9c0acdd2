"""Video recognition networks of OmniSource (Sec. 5.1 "Video architectures"; appendix "Implementation Details").

The paper trains two students (Sec. 5.1, Tables 2-3):

* **2D TSN** (Temporal Segment Networks) with an ImageNet ResNet-50 backbone and 3 segments: every segment is one
  frame, each goes through the same 2D ResNet, the pooled features are averaged over segments ("average consensus"),
  then dropout 0.4 and a linear classifier.  At test time all views (25 clips x 3 crops) are fed as extra segments,
  so the consensus averages over every view -- MMAction2's behaviour.
* **3D SlowOnly** (Feichtenhofer et al., SlowFast paper) ResNet-50 (4x16, 8x8) and ResNet-101 (8x8): a ResNet whose
  layer3/layer4 bottlenecks get a temporal kernel of 3 on their first 1x1 conv, no temporal downsampling anywhere.
  It is trained from scratch or initialised from ImageNet by *inflating* the 2D weights (Sec. 1, Sec. 5.1 / Table 3
  "ImageNet" vs "-"), see `inflate_2d_into_3d`.

The ImageNet-pretrained ResNet-50 frame features used for de-duplication (Sec. 3.3) are `ResNet.features`.

Everything is laid out so that weights move between the three worlds key-to-key:

* the 2D `ResNet` has torchvision's exact parameter names, so a torchvision ImageNet state dict loads with
  ``strict=True``;
* `ResNet3dSlowOnly` uses the same names (conv1, bn1, layerX.Y.conv1/bn1/..., downsample.0/.1, fc), so inflation
  is a per-key operation;
* `mmaction_key` / `from_mmaction_key` translate our names to MMAction2's (``backbone.conv1.conv.weight`` ...),
  and the parameter counts equal MMAction2's (TSN-R50 24,327,632; SlowOnly-R50 32,454,096; SlowOnly-R101
  60,359,120 for 400 classes).

Public API, top to bottom: `ResNetConfig`, `BasicBlock`, `Bottleneck`, `ResNet` (+ `resnet18..152`), `TSN`,
`ResNet3dSlowOnly`, `tsn_resnet`, `slowonly_resnet`, `ArchSpec`, `ARCHS`, `build_model`, `LoadReport`,
`inflate_2d_into_3d`, `load_pretrained`, `load_state_dict_file`, `mmaction_key`, `from_mmaction_key`.

Shapes: video input is `(N, C, T, H, W)` float, normalised as in DESIGN.md; outputs are `(N, num_classes)` logits.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn

# ----------------------------------------------------------------------------------------------------------------
# 1. ResNet building blocks (2D or 3D), torchvision layout
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResNetConfig:
    """Shape of a ResNet: block type, blocks per stage, base width (64 = standard; 16 for tiny demo models)."""

    block: str  # 'basic' (ResNet-18/34) or 'bottleneck' (ResNet-50/101/152)
    layers: tuple[int, int, int, int]  # number of blocks in layer1..layer4
    width: int = 64  # channels after the stem; stage i has width * 2**i planes (times the block expansion)
    in_channels: int = 3  # RGB

    def __post_init__(self):
        if self.block not in BLOCKS:
            raise ValueError(f"models.ResNetConfig: block must be one of {sorted(BLOCKS)}, got {self.block!r}")
        if len(self.layers) != 4 or min(self.layers) < 1 or self.width < 1:
            raise ValueError(f"models.ResNetConfig: need 4 positive stage depths and width >= 1, got {self}")


class BasicBlock(nn.Module):
    """Two 3x3 convs + identity (ResNet-18/34).  `ndim` 2 or 3; in 3D, `t_kernel` is conv1's temporal kernel.

    3D variant (tiny SlowOnly): conv1 (t_kernel, 3, 3), conv2 (1, 3, 3), spatial stride only (MMAction2 BasicBlock3d).
    """

    expansion = 1
    last_bn = "bn2"  # the BN whose gamma SlowOnly zero-initialises

    def __init__(self, inplanes: int, planes: int, stride: int = 1, ndim: int = 2, t_kernel: int = 1):
        super().__init__()
        self.conv1 = _conv(ndim, inplanes, planes, 3, stride, t_kernel)
        self.bn1 = _bn(ndim, planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(ndim, planes, planes, 3)
        self.bn2 = _bn(ndim, planes)
        self.downsample = _downsample(ndim, inplanes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride here, torchvision "ResNet v1.5") -> 1x1 (x4 channels) + identity.

    3D variant (SlowOnly): conv1 (t_kernel, 1, 1) with temporal padding t_kernel // 2, conv2 (1, 3, 3) with stride
    (1, s, s), conv3 (1, 1, 1); t_kernel = 3 for every block of layer3/layer4, 1 elsewhere.
    """

    expansion = 4
    last_bn = "bn3"

    def __init__(self, inplanes: int, planes: int, stride: int = 1, ndim: int = 2, t_kernel: int = 1):
        super().__init__()
        self.conv1 = _conv(ndim, inplanes, planes, 1, 1, t_kernel)
        self.bn1 = _bn(ndim, planes)
        self.conv2 = _conv(ndim, planes, planes, 3, stride)
        self.bn2 = _bn(ndim, planes)
        self.conv3 = _conv(ndim, planes, planes * self.expansion, 1)
        self.bn3 = _bn(ndim, planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(ndim, inplanes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}

RESNET_CONFIGS = {
    18: ResNetConfig("basic", (2, 2, 2, 2)),
    34: ResNetConfig("basic", (3, 4, 6, 3)),
    50: ResNetConfig("bottleneck", (3, 4, 6, 3)),
    101: ResNetConfig("bottleneck", (3, 4, 23, 3)),
    152: ResNetConfig("bottleneck", (3, 8, 36, 3)),
}

# ----------------------------------------------------------------------------------------------------------------
# 2. 2D ResNet (torchvision names and init) and TSN (Sec. 5.1)
# ----------------------------------------------------------------------------------------------------------------


class ResNet(nn.Module):
    """torchvision's ResNet: same parameter names, same init (kaiming fan_out convs, BN 1/0, default Linear).

    `num_classes=None` builds it without `fc` (a backbone); `forward` then returns the pooled features.
    A torchvision ImageNet state dict loads with ``strict=True`` at width 64.
    """

    def __init__(self, cfg: ResNetConfig, num_classes: int | None = 1000):
        super().__init__()
        self.cfg = cfg
        block, w = BLOCKS[cfg.block], cfg.width
        self.conv1 = _conv(2, cfg.in_channels, w, 7, 2)  # 7x7 stride 2 pad 3
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1, self.layer2, self.layer3, self.layer4 = _make_stages(block, cfg, ndim=2, t_kernels=(1,) * 4)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feat_dim = 8 * w * block.expansion  # 2048 for ResNet-50, 512 for ResNet-18
        self.fc = nn.Linear(self.feat_dim, num_classes) if num_classes else None
        _init_convs_and_bns(self)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, D, H/32, W/32)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, w, H/4, W/4)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, D) globally average-pooled features."""
        return torch.flatten(self.avgpool(self.feature_map(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.features(x)  # (N, D)
        return feats if self.fc is None else self.fc(feats)  # (N, num_classes)


def resnet(depth: int, num_classes: int | None = 1000, width: int = 64) -> ResNet:
    """2D ResNet-`depth` (18, 34, 50, 101, 152) at base `width`."""
    if depth not in RESNET_CONFIGS:
        raise ValueError(f"models.resnet: depth must be one of {sorted(RESNET_CONFIGS)}, got {depth}")
    return ResNet(replace(RESNET_CONFIGS[depth], width=width), num_classes)


def resnet18(num_classes: int | None = 1000, width: int = 64) -> ResNet:
    return resnet(18, num_classes, width)


def resnet34(num_classes: int | None = 1000, width: int = 64) -> ResNet:
    return resnet(34, num_classes, width)


def resnet50(num_classes: int | None = 1000, width: int = 64) -> ResNet:
    return resnet(50, num_classes, width)


def resnet101(num_classes: int | None = 1000, width: int = 64) -> ResNet:
    return resnet(101, num_classes, width)


def resnet152(num_classes: int | None = 1000, width: int = 64) -> ResNet:
    return resnet(152, num_classes, width)


class TSN(nn.Module):
    """Temporal Segment Network (Sec. 5.1): shared 2D backbone per segment, average consensus, dropout, fc.

    Parameters: ``backbone.*`` (torchvision layout without its fc) and ``fc.*``.  If the given backbone still has
    an fc (e.g. after loading an ImageNet state dict), it is dropped: the TSN's own fc replaces it.
    Any T works; at test time feed all views' frames along T, the consensus then averages over all views.
    """

    def __init__(self, backbone: ResNet, num_classes: int, dropout: float = 0.4):
        super().__init__()
        backbone.fc = None
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(backbone.feat_dim, num_classes)
        _init_fc(self.fc)  # normal std 0.01, bias 0 (MMAction2 TSNHead)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T, H, W) -> (N, D): per-frame pooled backbone features averaged over T (consensus)."""
        n, c, t, h, w = _check_video(x, "TSN")
        frames = x.transpose(1, 2).reshape(n * t, c, h, w)  # (N*T, C, H, W), segment-major inside each sample
        feats = self.backbone.features(frames)  # (N*T, D)
        return feats.view(n, t, -1).mean(dim=1)  # (N, D) average consensus

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, num_classes): dropout 0.4 then fc."""
        return self.fc(self.dropout(feats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# ----------------------------------------------------------------------------------------------------------------
# 3. SlowOnly 3D ResNet (Sec. 5.1, "3D ConvNets")
# ----------------------------------------------------------------------------------------------------------------


class ResNet3dSlowOnly(nn.Module):
    """SlowOnly ResNet (MMAction2 ResNet3dSlowOnly + I3DHead) with the 2D ResNet's parameter names.

    conv1 (1,7,7) stride (1,2,2) pad (0,3,3); maxpool (1,3,3) stride (1,2,2) pad (0,1,1); no temporal downsampling.
    Blocks of the stages flagged in `inflate` (layer3, layer4) have a temporal kernel 3 on conv1 (padding 1, zeros at
    the clip ends).  The last BN of every block starts at gamma = 0.  Head: global average pool over (T, H, W),
    dropout 0.5, fc (normal std 0.01, bias 0).
    """

    def __init__(self, cfg: ResNetConfig, num_classes: int, dropout: float = 0.5,
                 inflate: tuple[bool, bool, bool, bool] = (False, False, True, True)):
        super().__init__()
        self.cfg = cfg
        block, w = BLOCKS[cfg.block], cfg.width
        self.conv1 = _conv(3, cfg.in_channels, w, 7, 2, t_kernel=1)  # (1,7,7) stride (1,2,2) pad (0,3,3)
        self.bn1 = nn.BatchNorm3d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        t_kernels = tuple(3 if flag else 1 for flag in inflate)
        self.layer1, self.layer2, self.layer3, self.layer4 = _make_stages(block, cfg, ndim=3, t_kernels=t_kernels)
        self.feat_dim = 8 * w * block.expansion
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.feat_dim, num_classes)
        _init_convs_and_bns(self)
        _zero_init_last_bns(self)
        _init_fc(self.fc)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T, H, W) -> (N, D, T, H/32, W/32)."""
        _check_video(x, "ResNet3dSlowOnly")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, w, T, H/4, W/4)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T, H, W) -> (N, D) global average pool over (T, H, W)."""
        return self.feature_map(x).mean(dim=(2, 3, 4))

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, num_classes): dropout 0.5 then fc."""
        return self.fc(self.dropout(feats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def tsn_resnet(depth: int, num_classes: int, width: int = 64, dropout: float = 0.4) -> TSN:
    """TSN on a 2D ResNet-`depth` backbone (no backbone fc)."""
    return TSN(resnet(depth, None, width), num_classes, dropout)


def slowonly_resnet(depth: int, num_classes: int, width: int = 64, dropout: float = 0.5) -> ResNet3dSlowOnly:
    """SlowOnly on ResNet-`depth` (50, 101; 18/34 give the BasicBlock variant used by the tiny demo model)."""
    if depth not in RESNET_CONFIGS:
        raise ValueError(f"models.slowonly_resnet: depth must be one of {sorted(RESNET_CONFIGS)}, got {depth}")
    return ResNet3dSlowOnly(replace(RESNET_CONFIGS[depth], width=width), num_classes, dropout)


# ----------------------------------------------------------------------------------------------------------------
# 4. Architecture table and build_model
# ----------------------------------------------------------------------------------------------------------------

FAMILIES = ("tsn", "3d")
RECIPES = ("tsn", "3d_imagenet", "3d_scratch", "demo")  # schedules (appendix "Implementation Details"; demo: tiny nets)


@dataclass(frozen=True)
class ArchSpec:
    """Default sampling / evaluation protocol of an architecture (MMAction2 configs of the paper's models).

    TSN: `num_clips_train` is the number of segments (3 in the paper, Sec. 5.1), clip_len 1.
    3D: one clip of `clip_len` frames taken every `frame_interval` frames ("4x16" = 4 frames, interval 16).
    Test: `num_clips_test` clips x `crops_test` crops (ThreeCrop).  `recipe` picks the schedule in train.py:
    'tsn', '3d_imagenet' (inflated ImageNet init) or '3d_scratch' (train.py switches when no weights are given).
    """

    family: str
    clip_len: int
    frame_interval: int
    num_clips_train: int
    num_clips_test: int
    crops_test: int
    recipe: str
    crop_size: int = 224

    def __post_init__(self):
        if self.family not in FAMILIES or self.recipe not in RECIPES:
            raise ValueError(f"models.ArchSpec: family must be in {FAMILIES} and recipe in {RECIPES}, got {self}")
        ints = (self.clip_len, self.frame_interval, self.num_clips_train, self.num_clips_test, self.crops_test,
                self.crop_size)
        if min(ints) < 1:
            raise ValueError(f"models.ArchSpec: clip/crop counts and sizes must be >= 1, got {self}")


_TSN_SPEC = ArchSpec("tsn", clip_len=1, frame_interval=1, num_clips_train=3, num_clips_test=25, crops_test=3,
                     recipe="tsn")

# name -> (factory(num_classes, width=..., dropout=...), default ArchSpec)
ARCHS: dict[str, tuple[Callable[..., nn.Module], ArchSpec]] = {
    "tsn_r18": (partial(tsn_resnet, 18), _TSN_SPEC),
    "tsn_r34": (partial(tsn_resnet, 34), _TSN_SPEC),
    "tsn_r50": (partial(tsn_resnet, 50), _TSN_SPEC),
    "tsn_r101": (partial(tsn_resnet, 101), _TSN_SPEC),
    "tsn_r152": (partial(tsn_resnet, 152), _TSN_SPEC),
    "slowonly_r50_4x16": (partial(slowonly_resnet, 50), ArchSpec("3d", 4, 16, 1, 10, 3, "3d_imagenet")),
    "slowonly_r50_8x8": (partial(slowonly_resnet, 50), ArchSpec("3d", 8, 8, 1, 10, 3, "3d_imagenet")),
    "slowonly_r101_8x8": (partial(slowonly_resnet, 101), ArchSpec("3d", 8, 8, 1, 10, 3, "3d_imagenet")),
    # tiny demo models: width 16 (about 1/16 of the parameters of the width-64 nets), 64x64 crops
    "tsn_tiny": (partial(tsn_resnet, 18, width=16), replace(_TSN_SPEC, crop_size=64, recipe="demo")),
    "slowonly_tiny": (partial(slowonly_resnet, 18, width=16), ArchSpec("3d", 4, 4, 1, 10, 3, "demo", 64)),
}

MODEL_OVERRIDES = ("width", "dropout")  # go to the factory
SPEC_OVERRIDES = tuple(f.name for f in fields(ArchSpec) if f.name != "family") + ("num_segments",)


def build_model(name: str, num_classes: int, **overrides) -> nn.Module:
    """Build architecture `name` for `num_classes` classes; returns a module with `.spec` and `.arch`.

    Overrides (a value of None means "keep the default"):
      width, dropout                  -> the network;
      clip_len, frame_interval, num_clips_train (alias num_segments), num_clips_test, crops_test, recipe,
      crop_size                       -> `model.spec`;
      pretrained                      -> path or state dict: 2D weights (torchvision / our TSN / MMAction2 TSN
                                         layout) loaded into a TSN, or inflated into a SlowOnly (see
                                         `load_pretrained`); the report is kept in `model.pretrained_report`.
    """
    if name not in ARCHS:
        raise ValueError(f"models.build_model: unknown architecture {name!r}; known: {', '.join(ARCHS)}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"models.build_model: num_classes must be a positive int, got {num_classes!r}")
    unknown = set(overrides) - set(MODEL_OVERRIDES) - set(SPEC_OVERRIDES) - {"pretrained"}
    if unknown:
        raise ValueError(f"models.build_model: unknown override(s) {sorted(unknown)}; allowed: "
                         f"{', '.join(MODEL_OVERRIDES + SPEC_OVERRIDES)}, pretrained")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    factory, spec = ARCHS[name]
    if "num_segments" in overrides:
        overrides["num_clips_train"] = overrides.pop("num_segments")
    model = factory(num_classes, **{k: overrides[k] for k in MODEL_OVERRIDES if k in overrides})
    model.spec = replace(spec, **{k: overrides[k] for k in SPEC_OVERRIDES if k in overrides})
    model.arch = name
    model.pretrained_report = None
    if "pretrained" in overrides:
        model.pretrained_report = _load_pretrained_checked(model, overrides["pretrained"], name)
    return model


# ----------------------------------------------------------------------------------------------------------------
# 5. Loading weights: inflation (2D -> 3D), checkpoints
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What happened to every tensor when weights were transferred into a model."""

    copied: list[str] = field(default_factory=list)  # model keys copied as they are
    inflated: list[str] = field(default_factory=list)  # model keys filled with a 2D kernel repeated over time / kt
    skipped: list[str] = field(default_factory=list)  # "key: reason" (kept at their initial values)
    missing: list[str] = field(default_factory=list)  # model keys absent from the source (kept at init)
    unused: list[str] = field(default_factory=list)  # source keys the model has no place for

    @property
    def num_loaded_weights(self) -> int:
        """Number of loaded `.weight` tensors (conv, BN gamma, fc): 0 means nothing useful was loaded."""
        return sum(k.endswith(".weight") for k in self.copied + self.inflated)

    def summary(self) -> str:
        lines = [f"copied {len(self.copied)}, inflated {len(self.inflated)}, skipped {len(self.skipped)}, "
                 f"missing {len(self.missing)}, unused {len(self.unused)}"]
        lines += [f"  skipped {s}" for s in self.skipped]
        lines += [f"  missing {k}" for k in self.missing[:10]] + [f"  unused {k}" for k in self.unused[:10]]
        return "\n".join(lines)


def inflate_2d_into_3d(state_dict_2d: dict[str, torch.Tensor], model3d: ResNet3dSlowOnly) -> LoadReport:
    """Initialise a SlowOnly from 2D ResNet weights (I3D-style inflation; the paper's "ImageNet" 3D models).

    A conv kernel (O, I, kh, kw) becomes (O, I, kt, kh, kw) by repeating it kt times and dividing by kt, so a clip
    that is constant over time gives the 2D responses (away from the zero-padded clip ends).  BN tensors are copied;
    fc is copied if the class count matches and otherwise skipped (the report says so).  The source may be in
    torchvision, our TSN (``backbone.`` prefix) or MMAction2 layout; a ``module.`` prefix is ignored.
    """
    return _transfer_weights(state_dict_2d, model3d, family="3d")


def load_pretrained(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> LoadReport:
    """Load weights into a TSN (copy; fc skipped on class mismatch) or a SlowOnly (`inflate_2d_into_3d`).

    3D weights of the same architecture are simply copied into a SlowOnly (equal shapes need no inflation); a plain
    2D `ResNet` works too (its keys are the plain layout).  Nothing is checked for completeness: read the report.
    """
    family = "tsn" if isinstance(model, TSN) else "3d"
    return _transfer_weights(state_dict, model, family)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """torch.load a checkpoint on CPU (weights only) and unwrap {'state_dict': ...} / {'model': ...}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"models.load_state_dict_file: no checkpoint file at {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"models.load_state_dict_file: {path} does not hold a state dict of tensors")
    return obj


def from_checkpoint(path: str | Path) -> nn.Module:
    """Rebuild a model from one of train.py's self-describing checkpoints (arch, model_args, classes, weights).

    The returned model is in eval mode and carries `.classes` (the class names it was trained on), `.spec`, `.arch`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"models.from_checkpoint: no checkpoint file at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not {"arch", "model", "classes"} <= set(state):
        raise ValueError(f"models.from_checkpoint: {path} is not a train.py checkpoint (needs arch, model, classes)")
    model = build_model(state["arch"], len(state["classes"]), **state.get("model_args", {}))
    model.load_state_dict(state["model"])
    model.classes = list(state["classes"])
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------
# 6. Key mapping to MMAction2 (groundwork for loading MMAction2 checkpoints)
# ----------------------------------------------------------------------------------------------------------------

# One row per kind of tensor: (our key in the plain ResNet layout, MMAction2's key).  Placeholders: {L} stage 1-4,
# {B} block index, {K} conv index 1-3, {P} tensor name (weight, bias, running_mean, running_var, num_batches_tracked).
# The plain layout is the 2D ResNet's / SlowOnly's own key; a TSN adds "backbone." in front of all but fc.
MMACTION_KEY_TABLE = (
    ("conv1.weight", "backbone.conv1.conv.weight"),
    ("bn1.{P}", "backbone.conv1.bn.{P}"),
    ("layer{L}.{B}.conv{K}.weight", "backbone.layer{L}.{B}.conv{K}.conv.weight"),
    ("layer{L}.{B}.bn{K}.{P}", "backbone.layer{L}.{B}.conv{K}.bn.{P}"),
    ("layer{L}.{B}.downsample.0.weight", "backbone.layer{L}.{B}.downsample.conv.weight"),
    ("layer{L}.{B}.downsample.1.{P}", "backbone.layer{L}.{B}.downsample.bn.{P}"),
    ("fc.{P}", "cls_head.fc_cls.{P}"),
)


def mmaction_key(our_key: str, family: str) -> str:
    """Our state-dict key -> MMAction2's, e.g. 'layer1.0.bn2.weight' -> 'backbone.layer1.0.conv2.bn.weight'.

    `family` is 'tsn' (our keys 'backbone.<plain>' and 'fc.*') or '3d' (plain keys).
    """
    plain = _strip_family_prefix(our_key, family)
    their = _translate(plain, src_col=0)
    if their is None:
        raise ValueError(f"models.mmaction_key: {our_key!r} is not a ResNet/TSN/SlowOnly parameter name")
    return their


def from_mmaction_key(their_key: str, family: str) -> str:
    """MMAction2's key -> ours (inverse of `mmaction_key`)."""
    plain = _translate(their_key, src_col=1)
    if plain is None:
        raise ValueError(f"models.from_mmaction_key: {their_key!r} is not an MMAction2 ResNet recognizer key")
    return _add_family_prefix(plain, family)


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


def _conv(ndim: int, cin: int, cout: int, kernel: int, stride: int = 1, t_kernel: int = 1) -> nn.Module:
    """Bias-free conv with 'same' padding; 3D: kernel (t_kernel, k, k), stride (1, s, s), padding (t//2, k//2, k//2)."""
    if ndim == 2:
        return nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False)
    return nn.Conv3d(cin, cout, (t_kernel, kernel, kernel), (1, stride, stride),
                     padding=(t_kernel // 2, kernel // 2, kernel // 2), bias=False)


def _bn(ndim: int, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if ndim == 2 else nn.BatchNorm3d(channels)


def _downsample(ndim: int, inplanes: int, outplanes: int, stride: int) -> nn.Sequential | None:
    """Projection shortcut (1x1 conv with the block's stride + BN) when the shape changes; names downsample.0/.1."""
    if stride == 1 and inplanes == outplanes:
        return None
    return nn.Sequential(_conv(ndim, inplanes, outplanes, 1, stride), _bn(ndim, outplanes))


def _make_stages(block: type, cfg: ResNetConfig, ndim: int, t_kernels: tuple[int, ...]) -> list[nn.Sequential]:
    """layer1..layer4: stage i has cfg.layers[i] blocks of width * 2**i planes; stride 2 in the first block of
    layer2-4 (spatial only in 3D); every block of stage i gets temporal kernel t_kernels[i] on conv1."""
    stages, inplanes = [], cfg.width
    for i, (num_blocks, t_kernel) in enumerate(zip(cfg.layers, t_kernels)):
        planes, stride = cfg.width * 2 ** i, 1 if i == 0 else 2
        blocks = [block(inplanes, planes, stride, ndim, t_kernel)]
        inplanes = planes * block.expansion
        blocks += [block(inplanes, planes, 1, ndim, t_kernel) for _ in range(num_blocks - 1)]
        stages.append(nn.Sequential(*blocks))
    return stages


def _init_convs_and_bns(model: nn.Module) -> None:
    """torchvision / MMAction2 init: kaiming normal (fan_out, relu) for convs, BN gamma 1 and beta 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


def _zero_init_last_bns(model: nn.Module) -> None:
    """Each residual block starts as identity: gamma of its last BN = 0 (MMAction2 ResNet3d zero_init_residual)."""
    for m in model.modules():
        if isinstance(m, (BasicBlock, Bottleneck)):
            nn.init.zeros_(getattr(m, m.last_bn).weight)


def _init_fc(fc: nn.Linear) -> None:
    nn.init.normal_(fc.weight, mean=0.0, std=0.01)
    nn.init.zeros_(fc.bias)


def _check_video(x: torch.Tensor, who: str) -> tuple[int, int, int, int, int]:
    if x.dim() != 5:
        raise ValueError(f"models.{who}: expected input (N, C, T, H, W), got shape {tuple(x.shape)}")
    return tuple(x.shape)


def _load_pretrained_checked(model: nn.Module, pretrained, arch: str) -> LoadReport:
    """build_model's `pretrained=`: path or state dict; refuse weights that share nothing with the net."""
    state_dict = pretrained if isinstance(pretrained, dict) else load_state_dict_file(pretrained)
    report = load_pretrained(model, state_dict)
    if report.num_loaded_weights == 0:
        source = "the given state dict" if isinstance(pretrained, dict) else str(pretrained)
        raise ValueError(f"models.build_model: pretrained weights {source} share no weight tensor with {arch} "
                         f"(wrong architecture or width?)")
    return report


def _transfer_weights(source: dict[str, torch.Tensor], model: nn.Module, family: str) -> LoadReport:
    """Copy / inflate every source tensor whose plain-layout key and shape fit the model; report the rest."""
    src = _to_plain_layout(source)
    report, new_state, used = LoadReport(), {}, set()
    for key, dst in model.state_dict().items():
        plain = _strip_family_prefix(key, family)
        if plain not in src:
            report.missing.append(key)
            continue
        used.add(plain)
        value = src[plain]
        if value.shape == dst.shape:
            new_state[key] = value.to(dst.dtype)
            report.copied.append(key)
        elif _is_inflatable(value, dst):
            kt = dst.shape[2]  # (O, I, kh, kw) -> (O, I, kt, kh, kw) / kt
            new_state[key] = (value.unsqueeze(2).expand(-1, -1, kt, -1, -1) / kt).to(dst.dtype)
            report.inflated.append(key)
        elif plain.startswith("fc.") and value.shape[1:] == dst.shape[1:]:
            report.skipped.append(f"{key}: source has {value.shape[0]} classes, model {dst.shape[0]} "
                                  f"-> kept the fresh init (std 0.01)")
        else:
            report.skipped.append(f"{key}: shape {tuple(value.shape)} in source, {tuple(dst.shape)} in model")
    model.load_state_dict(new_state, strict=False)
    report.unused = sorted(set(src) - used)
    return report


def _is_inflatable(value: torch.Tensor, dst: torch.Tensor) -> bool:
    """A 2D conv kernel (O, I, kh, kw) fits a 3D one (O, I, kt, kh, kw)."""
    return value.dim() == 4 and dst.dim() == 5 and value.shape == dst.shape[:2] + dst.shape[3:]


def _to_plain_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of torchvision / our TSN ('backbone.') / MMAction2 / DataParallel ('module.') -> plain ResNet keys."""
    plain = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        parts = key.split(".")
        if key.startswith("cls_head.") or "conv" in parts or "bn" in parts:  # MMAction2 layout
            key = _translate(key, src_col=1) or key
        else:
            key = key.removeprefix("backbone.")
        plain[key] = value
    return plain


def _strip_family_prefix(our_key: str, family: str) -> str:
    """TSN keys are 'backbone.<plain>' or 'fc.*'; SlowOnly keys are plain."""
    if family not in FAMILIES:
        raise ValueError(f"models: family must be one of {FAMILIES}, got {family!r}")
    if family == "tsn" and not our_key.startswith("fc."):
        if not our_key.startswith("backbone."):
            raise ValueError(f"models: TSN key {our_key!r} should start with 'backbone.' or 'fc.'")
        return our_key.removeprefix("backbone.")
    return our_key


def _add_family_prefix(plain: str, family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"models: family must be one of {FAMILIES}, got {family!r}")
    return "backbone." + plain if family == "tsn" and not plain.startswith("fc.") else plain


_PLACEHOLDERS = {"L": r"(?P<L>[1-4])", "B": r"(?P<B>\d+)", "K": r"(?P<K>[1-3])", "P": r"(?P<P>[a-z_]+)"}


def _template_regex(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for name, group in _PLACEHOLDERS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), group)
    return re.compile(pattern + r"\Z")


_KEY_REGEXES = [(_template_regex(ours), _template_regex(theirs)) for ours, theirs in MMACTION_KEY_TABLE]


def _translate(key: str, src_col: int) -> str | None:
    """Map `key` through MMACTION_KEY_TABLE from column src_col (0 ours, 1 MMAction2) to the other; None if no row."""
    for regexes, templates in zip(_KEY_REGEXES, MMACTION_KEY_TABLE):
        match = regexes[src_col].match(key)
        if match:
            return templates[1 - src_col].format(**match.groupdict())
    return None
