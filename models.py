"""Video recognition networks of OmniSource (Sec. 5.1 "Video architectures"; appendix "Implementation Details").

* **2D TSN** (Sec. 5.1, Tables 2-3): an ImageNet ResNet-50 on each of 3 segments (one frame each), the pooled
  features averaged over segments (average consensus), dropout 0.4, a linear classifier.  Test: all views x
  segments are averaged before one softmax (MMAction2's TSNHead).
* **3D SlowOnly** ResNet-50 (4x16, 8x8) and ResNet-101 (8x8): temporal kernel 3 on conv1 of the layer3/layer4 blocks,
  no temporal downsampling; from scratch or ImageNet-initialised by 2D->3D inflation (Table 3, section 5).  Test:
  the mean of the per-view softmax.
* **irCSN-152** 32x2 (Tran et al. 2019; Tables 3, 7), fine-tuned from IG-65M weights: the paper's best model.

`resnet50` gives Sec. 3.3's ImageNet frame features.  Parameter names are torchvision's (SlowOnly and irCSN use the
same), so inflation is per key and MMAction2's names translate through checkpoints.MMACTION_KEY_TABLE; checked
outside the suite against MMAction2 1.2.0 (random weights, same input), the class scores of all five nets differ by
0.0 (max abs, float32), both ways.  A variant with an operation at a named position of selected residual blocks is
one nn.Module class plus one ARCHS entry (section 4).  Input (N, C, T, H, W) float (`transforms.normalize`),
output (N, num_classes) logits.
"""
from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import checkpoints
import transforms

# ----------------------------------------------------------------------------------------------------------------------
# 1. Residual blocks (2D or 3D, torchvision layout) and their ops
# ----------------------------------------------------------------------------------------------------------------------

OP_POSITIONS = ("before_conv1", "after_conv2", "after_block")   # where a block runs its ops (see ARCHS)
OP_BLOCKS = ("all", "first", "last")   # which blocks of every stage get an op, or a tuple of names ("layer4.2", ...)


@dataclass(frozen=True)
class ResNetConfig:
    """Shape of a ResNet: block type, blocks per stage, base width (64 = standard; 16 for tiny demo models), stem,
    and the ops of its blocks."""

    block: str  # 'basic' (ResNet-18/34) or 'bottleneck' (ResNet-50/101/152)
    layers: tuple[int, int, int, int]  # number of blocks in layer1..layer4
    width: int = 64  # channels after the stem; stage i has width * 2**i planes (times the block expansion)
    stem: str = "imagenet"  # a STEMS key: 'imagenet' for 224 px crops, 'small' for the tiny nets' 64 px crops
    ops: dict = field(default_factory=dict)  # {OP_POSITIONS entry: (Op, OP_BLOCKS entry or block names)}: see ARCHS

    def __post_init__(self) -> None:
        if self.block not in BLOCKS:
            raise ValueError(f"models.ResNetConfig: block must be one of {sorted(BLOCKS)}, got {self.block!r}")
        if self.stem not in STEMS:
            raise ValueError(f"models.ResNetConfig: stem must be one of {sorted(STEMS)}, got {self.stem!r}")
        if len(self.layers) != 4 or min(self.layers) < 1 or self.width < 1:
            raise ValueError(f"models.ResNetConfig: need 4 positive stage depths and width >= 1, got {self}")
        for position, (_, which) in self.ops.items():
            if position not in OP_POSITIONS or not (which in OP_BLOCKS or isinstance(which, tuple)):
                raise ValueError(f"models.ResNetConfig: ops take a position in {OP_POSITIONS} and blocks in "
                                 f"{OP_BLOCKS} or a tuple of block names, got {position!r}: {which!r}")


class _Block(nn.Module):
    """What every residual block shares: `ops` (a ModuleDict, empty without ops), each built with the channels at
    its position and run as op(x, frames) (see ARCHS)."""

    def __init__(self, inplanes: int, planes: int, ops: dict[str, Callable[[int], nn.Module]] | None):
        super().__init__()
        channels = {"before_conv1": inplanes, "after_conv2": planes, "after_block": planes * self.expansion}
        self.ops = nn.ModuleDict({position: op(channels[position]) for position, op in (ops or {}).items()})

    def _op(self, position: str, x: torch.Tensor, frames: int) -> torch.Tensor:
        return self.ops[position](x, frames) if position in self.ops else x


class BasicBlock(_Block):
    """Two 3x3 convs + identity (ResNet-18/34); `ndim` 2 or 3.  3D (tiny SlowOnly, MMAction2 BasicBlock3d): conv1
    (t_kernel, 3, 3), conv2 (1, 3, 3), spatial stride only.  `frames`: see ARCHS."""

    expansion = 1
    last_bn = "bn2"  # the BN whose gamma SlowOnly zero-initialises

    def __init__(self, inplanes: int, planes: int, stride: int = 1, ndim: int = 2, t_kernel: int = 1,
                 ops: dict | None = None):
        super().__init__(inplanes, planes, ops)
        self.conv1 = _conv(ndim, inplanes, planes, 3, stride, t_kernel)
        self.bn1 = _bn(ndim, planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(ndim, planes, planes, 3)
        self.bn2 = _bn(ndim, planes)
        self.downsample = _downsample(ndim, inplanes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(self._op("before_conv1", x, frames))))
        out = self._op("after_conv2", self.bn2(self.conv2(out)), frames)
        return self._op("after_block", self.relu(out + identity), frames)


class Bottleneck(_Block):
    """1x1 -> 3x3 (stride here, torchvision "ResNet v1.5") -> 1x1 (x4 channels) + identity.

    3D (SlowOnly): conv1 (t_kernel, 1, 1) with temporal padding t_kernel // 2, conv2 (1, 3, 3) with stride (1, s, s),
    conv3 (1, 1, 1); t_kernel = 3 in every block of layer3/layer4, 1 elsewhere.  `frames`: see ARCHS.
    """

    expansion = 4
    last_bn = "bn3"

    def __init__(self, inplanes: int, planes: int, stride: int = 1, ndim: int = 2, t_kernel: int = 1,
                 ops: dict | None = None):
        super().__init__(inplanes, planes, ops)
        self.conv1 = _conv(ndim, inplanes, planes, 1, 1, t_kernel)
        self.bn1 = _bn(ndim, planes)
        self.conv2 = _conv(ndim, planes, planes, 3, stride)
        self.bn2 = _bn(ndim, planes)
        self.conv3 = _conv(ndim, planes, planes * self.expansion, 1)
        self.bn3 = _bn(ndim, planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(ndim, inplanes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(self._op("before_conv1", x, frames))))
        out = self._op("after_conv2", self.relu(self.bn2(self.conv2(out))), frames)
        out = self.bn3(self.conv3(out))
        return self._op("after_block", self.relu(out + identity), frames)


class CSNBottleneck(_Block):
    """irCSN bottleneck (Tran et al. 2019, Fig. 2c; MMAction2 CSNBottleneck3d, bottleneck_mode='ir'): 1x1x1 conv ->
    3x3x3 *depthwise* conv (the only spatio-temporal conv; stride in time AND space, the shortcut's too) -> 1x1x1 conv
    (x4 channels) + identity.  BN eps 1e-3 (the IG-65M caffe2 models).  The depthwise pair is conv2_dw / bn2_dw, so
    no 2D ResNet conv2 is ever mistaken for it.  `ndim`, `t_kernel`: 3 only."""

    expansion = 4
    bn_eps = 1e-3

    def __init__(self, inplanes: int, planes: int, stride: int = 1, ndim: int = 3, t_kernel: int = 3,
                 ops: dict | None = None):
        super().__init__(inplanes, planes, ops)
        if (ndim, t_kernel) != (3, 3):
            raise ValueError(f"models.CSNBottleneck: only the 3D 3x3x3 form exists, got {ndim=}, {t_kernel=}")
        out = planes * self.expansion
        self.conv1 = nn.Conv3d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes, eps=self.bn_eps)
        self.conv2_dw = nn.Conv3d(planes, planes, 3, stride, padding=1, groups=planes, bias=False)  # (planes, 1, 3,3,3)
        self.bn2_dw = nn.BatchNorm3d(planes, eps=self.bn_eps)
        self.conv3 = nn.Conv3d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(out, eps=self.bn_eps)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:  # projection shortcut, stride (s, s, s)
            self.downsample = nn.Sequential(nn.Conv3d(inplanes, out, 1, stride, bias=False),
                                            nn.BatchNorm3d(out, eps=self.bn_eps))

    def forward(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(self._op("before_conv1", x, frames))))
        out = self._op("after_conv2", self.relu(self.bn2_dw(self.conv2_dw(out))), frames)
        out = self.bn3(self.conv3(out))
        return self._op("after_block", self.relu(out + identity), frames)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}

# Stem = conv1 (kernel, stride) + BN + ReLU + 3x3 stride-2 max-pool: name -> conv1's (kernel, stride).  'imagenet'
# (torchvision, MMAction2): 224 -> 56 before layer1, 7x7 after layer4.  'small' (the tiny demo nets) looks at every
# pixel: 64 px crops -> 32x32 before layer1, 4x4 after layer4 (the ImageNet stem's stride-2 conv skips every other
# pixel, too coarse for the demo classes' surface patterns a few pixels wide).
STEMS = {"imagenet": (7, 2), "small": (3, 1)}

RESNET_CONFIGS = {
    18: ResNetConfig("basic", (2, 2, 2, 2)),
    34: ResNetConfig("basic", (3, 4, 6, 3)),
    50: ResNetConfig("bottleneck", (3, 4, 6, 3)),
    101: ResNetConfig("bottleneck", (3, 4, 23, 3)),
    152: ResNetConfig("bottleneck", (3, 8, 36, 3)),
}

# ----------------------------------------------------------------------------------------------------------------------
# 2. 2D ResNet (torchvision names and init) and TSN (Sec. 5.1)
# ----------------------------------------------------------------------------------------------------------------------


class ResNet(nn.Module):
    """torchvision's ResNet: same parameter names (its ImageNet state dicts load with strict=True at width 64), same
    init (kaiming fan_out convs, BN 1/0, default Linear); `num_classes=None`: no `fc`, `forward` gives features."""

    def __init__(self, cfg: ResNetConfig, num_classes: int | None = 1000):
        super().__init__()
        block, w = BLOCKS[cfg.block], cfg.width
        kernel, stride = STEMS[cfg.stem]
        self.conv1 = _conv(2, 3, w, kernel, stride)  # RGB in; 'imagenet': 7x7 stride 2 pad 3
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1, self.layer2, self.layer3, self.layer4 = _make_stages(block, cfg, 2, (1,) * 4)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feat_dim = 8 * w * block.expansion  # 2048 for ResNet-50, 512 for ResNet-18
        self.fc = nn.Linear(self.feat_dim, num_classes) if num_classes else None
        _init_convs_and_bns(self)

    def feature_map(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        """(N * frames, C, H, W) -> (N * frames, D, H/32, W/32) ('small' stem: H/16, W/16); `frames` consecutive
        images are one sample (a TSN's segments) for the blocks' ops."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N*frames, w, H/4, W/4) ('small' stem: H/2, W/2)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                x = block(x, frames)
        return x

    def features(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        """(N * frames, C, H, W) -> (N * frames, D) globally average-pooled features."""
        return torch.flatten(self.avgpool(self.feature_map(x, frames)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.features(x)  # (N, D)
        return feats if self.fc is None else self.fc(feats)  # (N, num_classes)


def resnet(depth: int, num_classes: int | None = 1000, width: int = 64, stem: str = "imagenet",
           ops: dict | None = None) -> ResNet:
    """2D ResNet-`depth` (18, 34, 50, 101, 152) at base `width` with a STEMS `stem` and block `ops` (see ARCHS)."""
    return ResNet(_config(depth, "resnet", width=width, stem=stem, ops=ops or {}), num_classes)


def resnet50(num_classes: int | None = 1000) -> ResNet:
    """torchvision's ResNet-50: the ImageNet frame features of Sec. 3.3's de-duplication (filter.py)."""
    return resnet(50, num_classes)


class TSN(nn.Module):
    """Temporal Segment Network (Sec. 5.1): shared 2D backbone per segment, average consensus, dropout, fc.
    Parameters ``backbone.*`` (torchvision's, the backbone's own fc dropped) and ``fc.*``."""

    def __init__(self, backbone: ResNet, num_classes: int, dropout: float = 0.4):
        super().__init__()
        backbone.fc = None
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(backbone.feat_dim, num_classes)
        _init_fc(self.fc)  # normal std 0.01, bias 0 (MMAction2 TSNHead)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T, H, W) -> (N, D): per-frame pooled backbone features averaged over the T segments."""
        _check_video(x, "TSN")
        return self.consensus(x[:, None])

    def consensus(self, views: torch.Tensor) -> torch.Tensor:
        """(N, V, C, T, H, W) -> (N, D): the backbone on every frame, its ops told that each view is one sample of T
        frames (see ARCHS), then the mean over all V x T frames (average consensus)."""
        n, v, c, t, h, w = views.shape
        frames = views.transpose(2, 3).reshape(n * v * t, c, h, w)  # (N*V*T, C, H, W): a view's T frames in a row
        return self.backbone.features(frames, t).view(n, v * t, -1).mean(dim=1)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, num_classes): dropout (0.4 by default) then fc."""
        return self.fc(self.dropout(feats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward_views(self, views: torch.Tensor, spec: ArchSpec) -> torch.Tensor:
        """views (N, V, C, T, H, W) normalised -> (N, K) float32 probabilities, MMAction2's TSN test protocol
        (Sec. 5.1): the consensus averages the features of all views x frames before the classifier (TSNHead),
        then one softmax.  Every frame is a segment, whatever `spec.clip_len` says."""
        return self.head(self.consensus(views)).float().softmax(dim=1)


def tsn_resnet(depth: int, num_classes: int, width: int = 64, dropout: float = 0.4, stem: str = "imagenet",
               ops: dict | None = None) -> TSN:
    """TSN on a 2D ResNet-`depth` backbone (no backbone fc) with block `ops` (see ARCHS)."""
    return TSN(resnet(depth, None, width, stem, ops), num_classes, dropout)


# ----------------------------------------------------------------------------------------------------------------------
# 3. 3D nets: SlowOnly ResNet (Sec. 5.1, "3D ConvNets") and irCSN (Sec. 5.1 "more advanced architecture"; Table 7)
# ----------------------------------------------------------------------------------------------------------------------


class _ClipNet(nn.Module):
    """What the 3D nets share: the stem (`conv1`, `bn1`, ReLU, a (1,3,3) stride (1,2,2) max-pool), layer1..4 of
    `block` with temporal kernels `t_kernels`, global average pooling, dropout and fc (normal std 0.01, bias 0)."""

    def __init__(self, cfg: ResNetConfig, block: type, conv1: nn.Conv3d, bn1: nn.BatchNorm3d,
                 t_kernels: tuple[int, ...], num_classes: int, dropout: float):
        super().__init__()
        self.conv1, self.bn1, self.relu = conv1, bn1, nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.layer1, self.layer2, self.layer3, self.layer4 = _make_stages(block, cfg, 3, t_kernels)
        self.dropout, self.fc = nn.Dropout(dropout), nn.Linear(8 * cfg.width * block.expansion, num_classes)
        _init_convs_and_bns(self)
        _init_fc(self.fc)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T, H, W) -> (N, D, T', H/32, W/32), T' = T for SlowOnly, T/8 for irCSN; 'small' stem: H/16, W/16."""
        _check_video(x, type(self).__name__)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, w, T, H/4, W/4) ('small' stem: H/2, W/2)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T, H, W) -> (N, D) global average pool over (T, H, W)."""
        return self.feature_map(x).mean(dim=(2, 3, 4))

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, num_classes): dropout (0.5 by default) then fc."""
        return self.fc(self.dropout(feats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward_views(self, views: torch.Tensor, spec: ArchSpec) -> torch.Tensor:
        """views (N, V, C, T, H, W) normalised -> (N, K) float32 probabilities, MMAction2's 3D test protocol
        (Sec. 5.1): the T frames of a view are T // spec.clip_len clips; the softmax of every clip x crop is
        averaged (average_clips='prob')."""
        n, v, c, t, h, w = views.shape
        clips, length = t // spec.clip_len, spec.clip_len
        x = views.reshape(n, v, c, clips, length, h, w).permute(0, 3, 1, 2, 4, 5, 6)  # (N, clips, V, C, L, H, W)
        probs = self(x.reshape(n * clips * v, c, length, h, w)).float().softmax(dim=1)  # (N*clips*V, K)
        return probs.view(n, clips * v, -1).mean(dim=1)


class ResNet3dSlowOnly(_ClipNet):
    """SlowOnly ResNet (MMAction2 ResNet3dSlowOnly + I3DHead) with the 2D ResNet's parameter names.

    conv1 (1,7,7) stride (1,2,2) pad (0,3,3); maxpool (1,3,3) stride (1,2,2) pad (0,1,1) (the 'imagenet' stem; the
    tiny net's 'small' stem: STEMS); no temporal downsampling.  The blocks of the stages flagged in `inflate`
    (layer3, layer4) have a temporal kernel 3 on conv1 (padding 1, zeros at the clip ends); the last BN of every
    block starts at gamma = 0.  Head: global average pool over (T, H, W), dropout 0.5, fc (normal std 0.01, bias 0).
    """

    def __init__(self, cfg: ResNetConfig, num_classes: int, dropout: float = 0.5,
                 inflate: tuple[bool, bool, bool, bool] = (False, False, True, True)):
        kernel, stride = STEMS[cfg.stem]   # 'imagenet': conv1 (1,7,7) stride (1,2,2)
        super().__init__(cfg, BLOCKS[cfg.block], _conv(3, 3, cfg.width, kernel, stride), nn.BatchNorm3d(cfg.width),
                         tuple(3 if flag else 1 for flag in inflate), num_classes, dropout)
        _zero_init_last_bns(self)


def slowonly_resnet(depth: int, num_classes: int, width: int = 64, dropout: float = 0.5, stem: str = "imagenet",
                    ops: dict | None = None) -> ResNet3dSlowOnly:
    """SlowOnly on ResNet-`depth` (50, 101; 18/34 give the BasicBlock variant of the tiny demo model)."""
    return ResNet3dSlowOnly(_config(depth, "slowonly_resnet", width=width, stem=stem, ops=ops or {}), num_classes,
                            dropout)


class ResNet3dCSN(_ClipNet):
    """irCSN ResNet (MMAction2 ResNet3dCSN, bottleneck_mode='ir', with_pool2=False, + I3DHead), our key names.

    conv1 (3,7,7) stride (1,2,2) pad (1,3,3) + BN + ReLU; maxpool (1,3,3) stride (1,2,2) pad (0,1,1); layer1..4 of
    `CSNBottleneck` (ResNet-152: 3, 8, 36, 3 blocks) with stride (1, 2, 2, 2) in time and space, so a 32-frame
    clip leaves layer4 with 4 frames.  No zero-init of the last BN (the IG-65M config sets zero_init_residual=False).
    Head: global average pool over (T, H, W), dropout 0.5, fc (normal std 0.01, bias 0).
    """

    def __init__(self, cfg: ResNetConfig, num_classes: int, dropout: float = 0.5):
        if cfg.block != "bottleneck":
            raise ValueError(f"models.ResNet3dCSN: irCSN needs a bottleneck ResNet depth (50, 101, 152), got {cfg}")
        conv1 = nn.Conv3d(3, cfg.width, (3, 7, 7), (1, 2, 2), padding=(1, 3, 3), bias=False)
        super().__init__(cfg, CSNBottleneck, conv1, nn.BatchNorm3d(cfg.width, eps=CSNBottleneck.bn_eps), (3,) * 4,
                         num_classes, dropout)


def ircsn_resnet(depth: int, num_classes: int, width: int = 64, dropout: float = 0.5,
                 ops: dict | None = None) -> ResNet3dCSN:
    """irCSN on ResNet-`depth` (50, 101, 152; the paper's best model is irCSN-152, Table 7)."""
    return ResNet3dCSN(_config(depth, "ircsn_resnet", width=width, ops=ops or {}), num_classes, dropout)


# ----------------------------------------------------------------------------------------------------------------------
# 4. Architecture table and build_model
# ----------------------------------------------------------------------------------------------------------------------

FAMILIES = ("tsn", "3d")
# the training schedules by name (appendix "Implementation Details"; the numbers: train.RECIPES)
RECIPES = ("tsn", "3d_imagenet", "3d_scratch", "demo", "ircsn_ig65m")


@dataclass(frozen=True)
class ArchSpec:
    """Default sampling / evaluation protocol of an architecture (MMAction2 configs of the paper's models).

    TSN: `num_clips_train` segments (3 in the paper, Sec. 5.1) of clip_len 1.  3D: one clip of `clip_len` frames every
    `frame_interval` frames ("4x16").  Test: `num_clips_test` clips x `crops_test` crops (3: ThreeCrop, 1: centre).
    `recipe`: the schedule in train.RECIPES ('3d_scratch': train.py's switch when a '3d_imagenet' net gets no weights).
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
        if min(self.clip_len, self.frame_interval, self.num_clips_train, self.num_clips_test, self.crops_test,
               self.crop_size) < 1:
            raise ValueError(f"models.ArchSpec: clip/crop counts and sizes must be >= 1, got {self}")


_TSN_SPEC = ArchSpec("tsn", clip_len=1, frame_interval=1, num_clips_train=3, num_clips_test=25, crops_test=3,
                     recipe="tsn")

# name -> (factory(num_classes, width=..., dropout=...), default ArchSpec).
#
# Block ops (beyond the paper): a variant with an operation at a named position of selected residual blocks is one
# nn.Module class plus one entry whose factory gets ops={position: (Op, which)} (ResNetConfig.ops):
#   position  'before_conv1': the residual branch's input (identity path untouched); 'after_conv2': conv2's output
#             after its BN (and ReLU in a bottleneck); 'after_block': the block's output, after the sum and ReLU;
#   which     'all', 'first' or 'last' block of every stage, or a tuple of block names ("layer4.2", ...);
#   Op        Op(channels) is built with the blocks, with the channels at its position, keeps its own init, and runs
#             as op(x, frames).  In a TSN x is (N * frames, C, H, W), a sample's frames in a row: its segments in
#             training, the T frames of one view in TSN.forward_views, 1 for the images and 1-FPS frames filter.py
#             scores; a temporal op mixes frames only within a group.  In the 3D nets x is (N, C, T, H, W), frames 1.
# E.g. TSM (Lin et al., ICCV 2019): "tsm_r50": (partial(tsn_resnet, 50, ops={"before_conv1": (TemporalShift, "all")}),
#     replace(_TSN_SPEC, num_clips_train=8, num_clips_test=8)); tests/test_models_ext.py builds such entries.
ARCHS: dict[str, tuple[Callable[..., nn.Module], ArchSpec]] = {
    "tsn_r18": (partial(tsn_resnet, 18), _TSN_SPEC),
    "tsn_r34": (partial(tsn_resnet, 34), _TSN_SPEC),
    "tsn_r50": (partial(tsn_resnet, 50), _TSN_SPEC),
    "tsn_r101": (partial(tsn_resnet, 101), _TSN_SPEC),
    "tsn_r152": (partial(tsn_resnet, 152), _TSN_SPEC),
    "slowonly_r50_4x16": (partial(slowonly_resnet, 50), ArchSpec("3d", 4, 16, 1, 10, 3, "3d_imagenet")),
    "slowonly_r50_8x8": (partial(slowonly_resnet, 50), ArchSpec("3d", 8, 8, 1, 10, 3, "3d_imagenet")),
    "slowonly_r101_8x8": (partial(slowonly_resnet, 101), ArchSpec("3d", 8, 8, 1, 10, 3, "3d_imagenet")),
    # Table 7's best: irCSN-152, 32 frames every 2nd, IG-65M init (MMAction2 ircsn_ig65m-pretrained-r152 config)
    "ircsn_r152_32x2": (partial(ircsn_resnet, 152), ArchSpec("3d", 32, 2, 1, 10, 3, "ircsn_ig65m")),
    # tiny demo models: width 16 (1/16 of the parameters), 64x64 crops, the 'small' stem, one centre crop at test
    # time (ThreeCrop's full 73x73 frames look unlike the 64 px training crops to a net this small)
    "tsn_tiny": (partial(tsn_resnet, 18, width=16, stem="small"),
                 replace(_TSN_SPEC, crops_test=1, crop_size=64, recipe="demo")),
    "slowonly_tiny": (partial(slowonly_resnet, 18, width=16, stem="small"), ArchSpec("3d", 4, 4, 1, 10, 1, "demo", 64)),
}

MODEL_OVERRIDES = ("width", "dropout")  # go to the factory
SPEC_OVERRIDES = tuple(f.name for f in fields(ArchSpec) if f.name != "family") + ("num_segments",)


def build_model(name: str, num_classes: int, **overrides) -> nn.Module:
    """Build architecture `name` for `num_classes` classes; returns a module with `.spec` and `.arch`.

    Overrides (None: keep the default): width, dropout -> the network; clip_len, frame_interval, num_clips_train
    (alias num_segments), num_clips_test, crops_test, recipe, crop_size -> `model.spec`; pretrained -> a path or
    state dict given to `load_pretrained` (ImageNet weights copied into a TSN, inflated into a SlowOnly; same-shape
    3D weights, e.g. MMAction2's backbone-only IG-65M irCSN file, copied), refused when no weight fits.
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
    spec = replace(spec, **{k: overrides[k] for k in SPEC_OVERRIDES if k in overrides})
    model = factory(num_classes, **{k: overrides[k] for k in MODEL_OVERRIDES if k in overrides})
    model.spec, model.arch = spec, name
    if (pretrained := overrides.get("pretrained")) is not None:   # path or state dict; refused if nothing fits
        state_dict = pretrained if isinstance(pretrained, dict) else checkpoints.load_state_dict_file(pretrained)
        if load_pretrained(model, state_dict).num_loaded_weights == 0:
            source = "the given state dict" if isinstance(pretrained, dict) else str(pretrained)
            raise ValueError(f"models.build_model: pretrained weights {source} share no weight tensor with {name} "
                             f"(wrong architecture or width?)")
    return model


# ----------------------------------------------------------------------------------------------------------------------
# 5. Weights: ImageNet initialisation and 2D->3D inflation (Sec. 5.1 / Table 3 "ImageNet"), checkpoints, export
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What happened to every tensor when weights were transferred into a model."""

    copied: list[str] = field(default_factory=list)  # model keys copied as they are
    inflated: list[str] = field(default_factory=list)  # model keys filled with a 2D kernel repeated over time / kt
    skipped: list[str] = field(default_factory=list)  # "key: reason" (kept at their initial values)
    missing: list[str] = field(default_factory=list)  # model keys absent from the source (kept at init)
    unused: list[str] = field(default_factory=list)  # source keys the model has no place for
    format: str = ""  # load_weights: the detected checkpoints.CHECKPOINT_FORMATS key ("" for load_pretrained)
    classes: list[str] | None = None  # class names stored in the checkpoint (train.py 'classes', MMAction2 meta)

    @property
    def num_loaded_weights(self) -> int:
        """Number of loaded `.weight` tensors (conv, BN gamma, fc): 0 means nothing useful was loaded."""
        return sum(k.endswith(".weight") for k in self.copied + self.inflated)

    def summary(self) -> str:
        counts = ", ".join(f"{f.name} {len(getattr(self, f.name))}" for f in fields(self)[:5])   # the key lists
        return (f"format {self.format}: " if self.format else "") + counts


def load_pretrained(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> LoadReport:
    """Copy / inflate every tensor of `state_dict` whose plain-layout key and shape fit `model`; report the rest.

    ImageNet weights are copied into a TSN or a 2D `ResNet` and inflated into a 3D net (`inflate_kernel`: the paper's
    "ImageNet" 3D models; BN copied); same-shape 3D weights (MMAction2's IG-65M irCSN backbone) are copied; fc only
    at the same class count.  Layouts: torchvision, our TSN, MMAction2, a ``module.`` prefix.  Nothing is checked for
    completeness (read the report); `load_weights` checks whole checkpoints.
    """
    src, family = checkpoints.to_plain_layout(state_dict), _family_of(model)
    report, new_state, used = LoadReport(), {}, set()
    for key, dst in model.state_dict().items():
        plain = checkpoints.strip_family_prefix(key, family)
        if plain not in src:
            report.missing.append(key)
            continue
        used.add(plain)
        value = src[plain]
        if _copy_or_inflate(key, value, dst, new_state, report):
            continue
        if plain.startswith("fc.") and value.shape[1:] == dst.shape[1:]:
            report.skipped.append(f"{key}: source has {value.shape[0]} classes, model {dst.shape[0]} "
                                  f"-> kept the fresh init (std 0.01)")
        else:
            report.skipped.append(f"{key}: shape {tuple(value.shape)} in source, {tuple(dst.shape)} in model")
    model.load_state_dict(new_state, strict=False)
    report.unused = sorted(set(src) - used)
    return report


def inflate_kernel(value: torch.Tensor, dst: torch.Tensor) -> torch.Tensor | None:
    """2D->3D inflation (I3D): a 2D conv kernel (O, I, kh, kw) into `dst`'s 3D shape (O, I, kt, kh, kw), repeated kt
    times over time and divided by kt, so a clip constant over time gives the 2D responses (away from the
    zero-padded clip ends); None when the shapes do not fit."""
    if value.dim() != 4 or dst.dim() != 5 or value.shape != dst.shape[:2] + dst.shape[3:]:
        return None
    kt = dst.shape[2]
    return (value.unsqueeze(2).expand(-1, -1, kt, -1, -1) / kt).to(dst.dtype)


def _copy_or_inflate(key: str, value: torch.Tensor, dst: torch.Tensor, new_state: dict, report: LoadReport) -> bool:
    """Put `value` into new_state[key] as `dst`'s shape takes it: copied at the same shape, else inflated (recorded
    in the report); False when neither fits (the caller says why)."""
    if value.shape == dst.shape:
        new_state[key] = value.to(dst.dtype)
        report.copied.append(key)
    elif (inflated := inflate_kernel(value, dst)) is not None:
        new_state[key] = inflated
        report.inflated.append(key)
    else:
        return False
    return True


def load_weights(model: nn.Module, path: str | Path, finetune: bool = False) -> LoadReport:
    """Load a checkpoint of any checkpoints.CHECKPOINT_FORMATS kind into `model` (TSN, SlowOnly, irCSN or a 2D
    ResNet), strictly; nothing is loaded unless all checks pass.

    1. Read it with weights-only unpickling (`checkpoints.safe_load`) and take its state dict and class names.
    2. Map every key to the model's own (`checkpoints.plain_key`: MMAction2's names, our TSN's 'backbone.',
       torchvision's, a 'module.' prefix); a key that maps to no model tensor is an error listing the keys.
    3. The classifier: without finetune it must be there with the model's class count; with finetune the backbone
       alone is loaded and fc keeps its fresh init -- fine-tuning / transfer (Sec. 5.1, UCF101 / HMDB51).
    4. Every other tensor must fit in shape (a 2D conv kernel going into a 3D net is inflated) and every model
       tensor must be in the checkpoint (BN num_batches_tracked excepted); otherwise a ValueError lists the keys.
    """
    path = Path(path)
    fmt, state_dict, classes = checkpoints.detect_format(checkpoints.safe_load(path, "load_weights"), path)
    where, family, own = f"models.load_weights: {path} ({fmt})", _family_of(model), model.state_dict()
    mapped, unmatched = {}, []   # 2. checkpoint keys -> the model's own keys
    for key, value in state_dict.items():
        plain = checkpoints.plain_key(key)
        ours = None if plain is None else checkpoints.add_family_prefix(plain, family)
        if ours in own and ours not in mapped and isinstance(value, torch.Tensor):
            mapped[ours] = value
        else:
            unmatched.append(key)
    if unmatched:
        raise ValueError(f"{where}: {len(unmatched)} checkpoint key(s) match no tensor of "
                         f"{getattr(model, 'arch', type(model).__name__)}: {checkpoints.key_list(unmatched)}")
    if not finetune and "fc.weight" in own:   # 3. the classifier
        advice, n = "pass finetune=True (train.py --finetune) to load the backbone only", own["fc.weight"].shape[0]
        if "fc.weight" not in mapped:
            raise ValueError(f"{where}: has no classifier (fc) for the model's {n} classes; {advice}")
        if mapped["fc.weight"].shape[0] != n:
            raise ValueError(f"{where}: the checkpoint's classifier has {mapped['fc.weight'].shape[0]} classes but "
                             f"the model has {n}; {advice}")
    report, new_state, bad = LoadReport(format=fmt, classes=classes), {}, []   # 4. shapes and completeness
    for key, dst in own.items():
        value = mapped.get(key)
        if value is None:
            report.missing.append(key)
        elif finetune and key.startswith("fc."):
            report.skipped.append(f"{key}: finetune -> fresh classifier for {dst.shape[0]} classes "
                                  f"(checkpoint: {value.shape[0]})")
        elif not _copy_or_inflate(key, value, dst, new_state, report):
            bad.append(f"{key} {tuple(value.shape)} vs {tuple(dst.shape)}")
    if bad:
        raise ValueError(f"{where}: {len(bad)} tensor(s) differ in shape (checkpoint vs model): "
                         f"{checkpoints.key_list(bad)}")
    needed = [k for k in report.missing
              if not k.endswith(".num_batches_tracked") and not (finetune and k.startswith("fc."))]
    if needed:
        raise ValueError(f"{where}: {len(needed)} model tensor(s) are not in the checkpoint: "
                         f"{checkpoints.key_list(needed)}")
    model.load_state_dict(new_state, strict=False)
    return report


def mmaction_checkpoint(model: nn.Module, classes: list[str] | None = None) -> dict:
    """`model` as an MMAction2 1.x recognizer checkpoint {'meta', 'state_dict' (checkpoints.mmaction_key names)}
    (train.py --export-mmaction); the meta is plain data (our arch, the MMAction2 config, `dataset_meta.classes`),
    so MMAction2's `load_checkpoint` and `load_weights` read it with weights_only=True."""
    if not isinstance(model, (TSN, ResNet3dSlowOnly, ResNet3dCSN)):
        raise ValueError(f"models.mmaction_checkpoint: only TSN / SlowOnly / irCSN recognizers have an MMAction2 "
                         f"layout, got {type(model).__name__}")
    num_classes = model.fc.out_features
    if classes is not None and len(classes) != num_classes:
        raise ValueError(f"models.mmaction_checkpoint: {len(classes)} class names given for a {num_classes}-class "
                         f"model")
    family, arch = _family_of(model), getattr(model, "arch", None)
    state = OrderedDict((checkpoints.mmaction_key(k, family), v.detach().cpu().clone())
                        for k, v in model.state_dict().items())
    meta = {"exported_by": "omnisource models.mmaction_checkpoint", "arch": arch,
            "mmaction2_config": checkpoints.MMACTION_CONFIGS.get(arch), "num_classes": num_classes,
            "time": time.strftime("%Y%m%d_%H%M%S")}
    if classes is not None:
        meta["dataset_meta"] = {"classes": [str(c) for c in classes]}
    return {"meta": meta, "state_dict": state}


def from_checkpoint(path: str | Path) -> nn.Module:
    """Rebuild a model from one of train.py's self-describing checkpoints (arch, model_args, classes, weights);
    in eval mode, with `.classes` (the class names it was trained on), `.spec` and `.arch`."""
    path = Path(path)
    state = checkpoints.safe_load(path, "from_checkpoint")
    if not isinstance(state, dict) or not {"arch", "model", "classes"} <= set(state):
        raise ValueError(f"models.from_checkpoint: {path} is not a train.py checkpoint (needs arch, model, classes)")
    model = build_model(state["arch"], len(state["classes"]), **state.get("model_args", {}))
    model.load_state_dict(state["model"])
    model.classes = list(state["classes"])
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------------
# 6. Test views: MMAction2's combination (Sec. 5.1 test protocol), in --amp precision
# ----------------------------------------------------------------------------------------------------------------------


def predict(net: nn.Module, views: torch.Tensor, arch: ArchSpec, amp: str | None = None) -> torch.Tensor:
    """views (N, V, C, T, H, W), uint8 or normalised, sampled as `arch` (a model's .spec) says -> class probabilities
    (N, K) float32, combined by the model's `forward_views` (filter.py's images and 1-FPS frames: T = 1), in `amp`
    precision (train.py --amp; None: the caller's autocast state) on the device of `views`."""
    if views.dtype == torch.uint8:
        views = transforms.normalize(views)
    with autocast(amp, views.device):
        return net.forward_views(views, arch)


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}   # --amp choices: "none" and these


def default_amp(device: str | torch.device) -> str:
    """--amp when not given (train.py, filter.py): bf16 on GPUs that support it (no loss scaling needed); none on
    older GPUs (fp16 is opt-in: MMAction2 users saw accuracy drops with it on 3D nets) and on CPUs."""
    return "bf16" if torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported() else "none"


def autocast(amp: str | None, device: torch.device) -> contextlib.AbstractContextManager:
    """torch.autocast for an --amp value on `device` ('none': off; None: leave the caller's state as it is)."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES.get(amp, torch.float32), enabled=amp in AMP_DTYPES)


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------


def _config(depth: int, who: str, **changes) -> ResNetConfig:
    """RESNET_CONFIGS[depth] with `changes` (width, stem, ops)."""
    if depth not in RESNET_CONFIGS:
        raise ValueError(f"models.{who}: depth must be one of {sorted(RESNET_CONFIGS)}, got {depth}")
    return replace(RESNET_CONFIGS[depth], **changes)


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
    layer2-4 (spatial only in 3D); temporal kernel t_kernels[i] on conv1; the cfg.ops that select the block."""
    stages, inplanes = [], cfg.width
    for i, (num_blocks, t_kernel) in enumerate(zip(cfg.layers, t_kernels)):
        planes, stride = cfg.width * 2 ** i, 1 if i == 0 else 2
        blocks = []
        for b in range(num_blocks):
            chosen = {"all": True, "first": b == 0, "last": b == num_blocks - 1}   # else `which` names blocks
            ops = {pos: op for pos, (op, which) in cfg.ops.items() if chosen.get(which, f"layer{i + 1}.{b}" in which)}
            blocks.append(block(inplanes, planes, stride if b == 0 else 1, ndim, t_kernel, ops))
            inplanes = planes * block.expansion
        stages.append(nn.Sequential(*blocks))
    return stages


def _init_convs_and_bns(model: nn.Module) -> None:
    """torchvision / MMAction2 init: kaiming normal (fan_out, relu) for convs, BN gamma 1 and beta 0; the blocks'
    ops keep their own."""
    in_ops = {id(m) for block in model.modules() if isinstance(block, _Block) for m in block.ops.modules()}
    for m in model.modules():
        if id(m) in in_ops:
            continue
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


def _check_video(x: torch.Tensor, who: str) -> None:
    if x.dim() != 5:
        raise ValueError(f"models.{who}: expected input (N, C, T, H, W), got shape {tuple(x.shape)}")


def _family_of(model: nn.Module) -> str:
    """'tsn' (keys 'backbone.*' + 'fc.*') for a TSN, '3d' (plain keys) for SlowOnly, irCSN and a 2D ResNet."""
    return "tsn" if isinstance(model, TSN) else "3d"
