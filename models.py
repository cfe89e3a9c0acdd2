"""Video recognition networks of OmniSource (Sec. 5.1 "Video architectures"; appendix "Implementation Details").

The paper trains two students (Sec. 5.1, Tables 2-3), and for its best result a third (Table 7):

* **2D TSN** (Temporal Segment Networks) with an ImageNet ResNet-50 backbone and 3 segments: every segment is one
  frame, each goes through the same 2D ResNet, the pooled features are averaged over segments ("average consensus"),
  then dropout 0.4 and a linear classifier.  At test time all views (25 clips x 3 crops) are fed as extra segments,
  so the consensus averages over every view -- MMAction2's behaviour (TSNHead averages the pooled features of all
  views x segments before fc_cls; `average_clips='prob'` then softmaxes that single row).
* **3D SlowOnly** (Feichtenhofer et al., SlowFast paper) ResNet-50 (4x16, 8x8) and ResNet-101 (8x8): a ResNet whose
  layer3/layer4 bottlenecks get a temporal kernel of 3 on their first 1x1 conv, no temporal downsampling anywhere.
  It is trained from scratch or initialised from ImageNet by *inflating* the 2D weights (Sec. 1, Sec. 5.1 / Table 3
  "ImageNet" vs "-"), see `load_pretrained`.  Test views: softmax per view, then mean (MMAction2 'prob').
* **irCSN-152** 32x2 (Tran et al. 2019, interaction-reduced channel-separated ResNet; Sec. 5.1, Tables 3 and 7),
  fine-tuned from IG-65M weights: the paper's best model (83.6 top-1 with OmniSource).

The ImageNet-pretrained ResNet-50 frame features used for de-duplication (Sec. 3.3) are `ResNet.features`
(`resnet50`).  How test views are combined belongs to each model (`forward_views`; `predict` calls it), and a
backbone variant with an operation in its residual branches is one class plus one `ARCHS` entry (`BranchOp`).

Everything is laid out so that weights move between the worlds key-to-key:

* the 2D `ResNet` has torchvision's exact parameter names, so a torchvision ImageNet state dict loads with
  ``strict=True``;
* `ResNet3dSlowOnly` uses the same names (conv1, bn1, layerX.Y.conv1/bn1/..., downsample.0/.1, fc), so inflation
  is a per-key operation; `ResNet3dCSN` too, its depthwise conv being conv2_dw / bn2_dw;
* our names and MMAction2's (``backbone.conv1.conv.weight`` ...) translate both ways (`mmaction_key` for export,
  `_plain_key` for loading) through ONE table, `MMACTION_KEY_TABLE`, and the parameter counts equal MMAction2
  1.2's (400 classes: TSN-R50 24,327,632; SlowOnly-R50 32,454,096; SlowOnly-R101 60,359,120; irCSN-152
  29,703,568);
* `load_weights` reads our train.py checkpoints, MMAction2 0.x / 1.x recognizer checkpoints, torchvision ImageNet
  ResNets and bare state dicts -- detected, mapped through the table, checked strictly, read with weights-only
  unpickling (`_safe_torch_load`); `mmaction_checkpoint` gives MMAction2 1.x checkpoints.  Checked outside the suite
  against MMAction2 1.2.0 itself (random weights, same input): class scores differ by 0.0 (max abs, float32) for
  TSN-R50, SlowOnly-R50 4x16 / 8x8, SlowOnly-R101 8x8 and irCSN-152, both ways (load and export).

Public API, top to bottom.  The method (sections 1-6): `ResNetConfig`, `BasicBlock`, `Bottleneck`, `BranchOp`,
`ResNet` (+ `resnet`, `resnet50`), `TSN`, `tsn_resnet`, `ResNet3dSlowOnly`, `slowonly_resnet`, `CSNBottleneck`,
`ResNet3dCSN`, `ircsn_resnet`, `RECIPES`, `ArchSpec`, `ARCHS`, `build_model`, `load_pretrained` (ImageNet init,
inflation), `predict` (test views through the model's `forward_views`, used by train.py's evaluation and
filter.py's teachers).  Then, after a banner, the machinery (sections 7-9): `CHECKPOINT_FORMATS`, `LoadReport`,
`load_weights`, `mmaction_checkpoint`, `load_state_dict_file`, `from_checkpoint`, `MMACTION_KEY_TABLE`,
`MMACTION_CONFIGS`, `mmaction_key`, `AMP_DTYPES`, `default_amp`, `autocast`; private helpers last.

Shapes: video input is `(N, C, T, H, W)` float, normalised by `transforms.normalize` (ImageNet mean and std of
0-255 RGB); outputs are `(N, num_classes)` logits. The training schedules that `ArchSpec.recipe` names are in
`train.RECIPES` (their numbers are written there only).
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
# 1. ResNet building blocks (2D or 3D), torchvision layout
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResNetConfig:
    """Shape of a ResNet: block type, blocks per stage, base width (64 = standard; 16 for tiny demo models), stem."""

    block: str  # 'basic' (ResNet-18/34) or 'bottleneck' (ResNet-50/101/152)
    layers: tuple[int, int, int, int]  # number of blocks in layer1..layer4
    width: int = 64  # channels after the stem; stage i has width * 2**i planes (times the block expansion)
    stem: str = "imagenet"  # a STEMS key: 'imagenet' for 224 px crops, 'small' for the tiny nets' 64 px crops

    def __post_init__(self) -> None:
        if self.block not in BLOCKS:
            raise ValueError(f"models.ResNetConfig: block must be one of {sorted(BLOCKS)}, got {self.block!r}")
        if self.stem not in STEMS:
            raise ValueError(f"models.ResNetConfig: stem must be one of {sorted(STEMS)}, got {self.stem!r}")
        if len(self.layers) != 4 or min(self.layers) < 1 or self.width < 1:
            raise ValueError(f"models.ResNetConfig: need 4 positive stage depths and width >= 1, got {self}")


class BasicBlock(nn.Module):
    """Two 3x3 convs + identity (ResNet-18/34).  `ndim` 2 or 3; in 3D, `t_kernel` is conv1's temporal kernel.

    3D variant (tiny SlowOnly): conv1 (t_kernel, 3, 3), conv2 (1, 3, 3), spatial stride only (MMAction2 BasicBlock3d).
    `branch_op` (every block here): a module run on the residual branch's input before conv1, the identity path
    untouched -- the extension point of a backbone variant (see `BranchOp`); None: nothing (nn.Identity).
    """

    expansion = 1
    last_bn = "bn2"  # the BN whose gamma SlowOnly zero-initialises

    def __init__(self, inplanes: int, planes: int, stride: int = 1, ndim: int = 2, t_kernel: int = 1,
                 branch_op: nn.Module | None = None):
        super().__init__()
        self.branch_op = nn.Identity() if branch_op is None else branch_op
        self.conv1 = _conv(ndim, inplanes, planes, 3, stride, t_kernel)
        self.bn1 = _bn(ndim, planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(ndim, planes, planes, 3)
        self.bn2 = _bn(ndim, planes)
        self.downsample = _downsample(ndim, inplanes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(self.branch_op(x))))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride here, torchvision "ResNet v1.5") -> 1x1 (x4 channels) + identity.

    3D variant (SlowOnly): conv1 (t_kernel, 1, 1) with temporal padding t_kernel // 2, conv2 (1, 3, 3) with stride
    (1, s, s), conv3 (1, 1, 1); t_kernel = 3 for every block of layer3/layer4, 1 elsewhere.  `branch_op`: as in
    `BasicBlock`.
    """

    expansion = 4
    last_bn = "bn3"

    def __init__(self, inplanes: int, planes: int, stride: int = 1, ndim: int = 2, t_kernel: int = 1,
                 branch_op: nn.Module | None = None):
        super().__init__()
        self.branch_op = nn.Identity() if branch_op is None else branch_op
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
        out = self.relu(self.bn1(self.conv1(self.branch_op(x))))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}

# The extension point of a backbone variant (beyond the paper): BranchOp(channels, num_segments) builds the module
# that runs on a block's residual-branch input (`channels`: the block's input channels), once per block when the
# stages are built.  num_segments: the spec's num_clips_train, which `build_model` hands every factory -- a TSN's
# segments, whose frames lie consecutively along the batch axis of its 2D backbone, (N * num_segments, C, H, W);
# the 3D nets see time as an axis of (N, C, T, H, W).  A variant is then one such class plus one ARCHS entry
# (section 4).
BranchOp = Callable[[int, int], nn.Module]

# Stem = conv1 (kernel, stride) + BN + ReLU, then a 3x3 stride-2 max-pool: stem name -> conv1's (kernel, stride).
# 'imagenet' (torchvision, MMAction2) divides the input by 4: 224 -> 56 before layer1, 7x7 after layer4.
# 'small' (the tiny demo nets) divides it by 2 and looks at every pixel first: for 64 px crops layer1 sees 32x32 and
# layer4 4x4, where the ImageNet stem leaves 16x16 and 2x2 and its stride-2 conv skips every other pixel, too coarse
# for a surface pattern a few pixels wide (the generated demo classes are such patterns).
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
    """torchvision's ResNet: same parameter names, same init (kaiming fan_out convs, BN 1/0, default Linear).

    `num_classes=None` builds it without `fc` (a backbone); `forward` then returns the pooled features.
    A torchvision ImageNet state dict loads with ``strict=True`` at width 64.  `branch_op` (+ `num_segments`, the
    frames of one sample along the batch axis): see `BranchOp`.
    """

    def __init__(self, cfg: ResNetConfig, num_classes: int | None = 1000, branch_op: BranchOp | None = None,
                 num_segments: int = 1):
        super().__init__()
        block, w = BLOCKS[cfg.block], cfg.width
        kernel, stride = STEMS[cfg.stem]
        self.conv1 = _conv(2, 3, w, kernel, stride)  # RGB in; 'imagenet': 7x7 stride 2 pad 3
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1, self.layer2, self.layer3, self.layer4 = _make_stages(block, cfg, 2, (1,) * 4, branch_op,
                                                                          num_segments)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feat_dim = 8 * w * block.expansion  # 2048 for ResNet-50, 512 for ResNet-18
        self.fc = nn.Linear(self.feat_dim, num_classes) if num_classes else None
        _init_convs_and_bns(self)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, D, H/32, W/32) ('small' stem: H/16, W/16)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, w, H/4, W/4) ('small' stem: H/2, W/2)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, D) globally average-pooled features."""
        return torch.flatten(self.avgpool(self.feature_map(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.features(x)  # (N, D)
        return feats if self.fc is None else self.fc(feats)  # (N, num_classes)


def resnet(depth: int, num_classes: int | None = 1000, width: int = 64, stem: str = "imagenet",
           branch_op: BranchOp | None = None, num_segments: int = 1) -> ResNet:
    """2D ResNet-`depth` (18, 34, 50, 101, 152) at base `width` with a STEMS `stem` (`branch_op`: see `BranchOp`)."""
    if depth not in RESNET_CONFIGS:
        raise ValueError(f"models.resnet: depth must be one of {sorted(RESNET_CONFIGS)}, got {depth}")
    return ResNet(replace(RESNET_CONFIGS[depth], width=width, stem=stem), num_classes, branch_op, num_segments)


def resnet50(num_classes: int | None = 1000) -> ResNet:
    """torchvision's ResNet-50: the ImageNet frame features of Sec. 3.3's de-duplication (filter.py)."""
    return resnet(50, num_classes)


class TSN(nn.Module):
    """Temporal Segment Network (Sec. 5.1): shared 2D backbone per segment, average consensus, dropout, fc.

    Parameters: ``backbone.*`` (torchvision layout without its fc) and ``fc.*``.  If the given backbone still has
    an fc (e.g. after loading an ImageNet state dict), it is dropped: the TSN's own fc replaces it.
    Any T works; at test time `forward_views` feeds all views' frames along T, so the consensus averages over all.
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
        frames = x.transpose(1, 2).reshape(n * t, c, h, w)  # (N*T, C, H, W): a sample's T segments in a row
        feats = self.backbone.features(frames)  # (N*T, D)
        return feats.view(n, t, -1).mean(dim=1)  # (N, D) average consensus

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, num_classes): dropout (0.4 by default) then fc."""
        return self.fc(self.dropout(feats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward_views(self, views: torch.Tensor, spec: ArchSpec) -> torch.Tensor:
        """views (N, V, C, T, H, W) normalised -> (N, K) float32 probabilities, MMAction2's TSN test protocol
        (Sec. 5.1): every view's frames are extra segments, so the consensus averages the features of all views x
        segments before the classifier (TSNHead), then one softmax.  Every frame is a segment, whatever
        `spec.clip_len` says."""
        n, v, c, t, h, w = views.shape
        frames = views.permute(0, 2, 1, 3, 4, 5).reshape(n, c, v * t, h, w)  # (N, C, V*T, H, W)
        return self(frames).float().softmax(dim=1)


def tsn_resnet(depth: int, num_classes: int, width: int = 64, dropout: float = 0.4, stem: str = "imagenet",
               branch_op: BranchOp | None = None, num_segments: int = 3) -> TSN:
    """TSN on a 2D ResNet-`depth` backbone (no backbone fc); `num_segments` reaches `branch_op` only."""
    return TSN(resnet(depth, None, width, stem, branch_op, num_segments), num_classes, dropout)


# ----------------------------------------------------------------------------------------------------------------------
# 3. SlowOnly 3D ResNet (Sec. 5.1, "3D ConvNets")
# ----------------------------------------------------------------------------------------------------------------------


class _ClipNet(nn.Module):
    """What every 3D net here shares: stem conv1/bn1/relu/maxpool, layer1..4, global pooling, dropout + fc head.

    Subclasses build those modules in __init__; the forward pass is the same for SlowOnly and irCSN.
    """

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
    tiny net's 'small' stem: STEMS); no temporal downsampling.
    Blocks of the stages flagged in `inflate` (layer3, layer4) have a temporal kernel 3 on conv1 (padding 1, zeros at
    the clip ends).  The last BN of every block starts at gamma = 0.  Head: global average pool over (T, H, W),
    dropout 0.5, fc (normal std 0.01, bias 0).
    """

    def __init__(self, cfg: ResNetConfig, num_classes: int, dropout: float = 0.5,
                 inflate: tuple[bool, bool, bool, bool] = (False, False, True, True),
                 branch_op: BranchOp | None = None, num_segments: int = 1):
        super().__init__()
        block, w = BLOCKS[cfg.block], cfg.width
        kernel, stride = STEMS[cfg.stem]
        self.conv1 = _conv(3, 3, w, kernel, stride, t_kernel=1)  # RGB; 'imagenet': (1,7,7) stride (1,2,2)
        self.bn1 = nn.BatchNorm3d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        t_kernels = tuple(3 if flag else 1 for flag in inflate)
        self.layer1, self.layer2, self.layer3, self.layer4 = _make_stages(block, cfg, 3, t_kernels, branch_op,
                                                                          num_segments)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(8 * w * block.expansion, num_classes)
        _init_convs_and_bns(self)
        _zero_init_last_bns(self)
        _init_fc(self.fc)


def slowonly_resnet(depth: int, num_classes: int, width: int = 64, dropout: float = 0.5, stem: str = "imagenet",
                    branch_op: BranchOp | None = None, num_segments: int = 1) -> ResNet3dSlowOnly:
    """SlowOnly on ResNet-`depth` (50, 101; 18/34 give the BasicBlock variant used by the tiny demo model);
    `num_segments` reaches `branch_op` only."""
    if depth not in RESNET_CONFIGS:
        raise ValueError(f"models.slowonly_resnet: depth must be one of {sorted(RESNET_CONFIGS)}, got {depth}")
    cfg = replace(RESNET_CONFIGS[depth], width=width, stem=stem)
    return ResNet3dSlowOnly(cfg, num_classes, dropout, branch_op=branch_op, num_segments=num_segments)


# ----------------------------------------------------------------------------------------------------------------------
# 3b. irCSN: interaction-reduced channel-separated 3D ResNet (Sec. 5.1 "more advanced architecture"; Tables 3, 7)
# ----------------------------------------------------------------------------------------------------------------------


class CSNBottleneck(nn.Module):
    """irCSN bottleneck (Tran et al. 2019, Fig. 2c; MMAction2 CSNBottleneck3d with bottleneck_mode='ir').

    1x1x1 conv -> 3x3x3 *depthwise* conv (groups = channels, the block's only spatio-temporal conv; the stride sits
    here) -> 1x1x1 conv (x4 channels) + identity.  The stride is applied to time AND space (MMAction2 ResNet3dCSN:
    temporal_strides = spatial_strides = (1, 2, 2, 2)); the projection shortcut strides the same way.  BN eps 1e-3
    (the caffe2 models the IG-65M weights come from).  The depthwise pair is named conv2_dw / bn2_dw so that no 2D
    ResNet conv2 is ever mistaken for it.  `ndim` and `t_kernel` exist for `_make_stages` and must be 3;
    `branch_op`: as in `BasicBlock`.
    """

    expansion = 4
    bn_eps = 1e-3

    def __init__(self, inplanes: int, planes: int, stride: int = 1, ndim: int = 3, t_kernel: int = 3,
                 branch_op: nn.Module | None = None):
        super().__init__()
        if ndim != 3 or t_kernel != 3:
            raise ValueError(f"models.CSNBottleneck: only the 3D 3x3x3 form exists, got ndim={ndim}, "
                             f"t_kernel={t_kernel}")
        out = planes * self.expansion
        self.branch_op = nn.Identity() if branch_op is None else branch_op
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(self.branch_op(x))))
        out = self.relu(self.bn2_dw(self.conv2_dw(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet3dCSN(_ClipNet):
    """irCSN ResNet (MMAction2 ResNet3dCSN, bottleneck_mode='ir', with_pool2=False, + I3DHead), our key names.

    conv1 (3,7,7) stride (1,2,2) pad (1,3,3) + BN + ReLU; maxpool (1,3,3) stride (1,2,2) pad (0,1,1); layer1..4 of
    `CSNBottleneck` (ResNet-152: 3, 8, 36, 3 blocks) with stride (1, 2, 2, 2) in time and space, so a 32-frame
    clip leaves layer4 with 4 frames.  No zero-init of the last BN (the IG-65M config sets zero_init_residual=False).
    Head: global average pool over (T, H, W), dropout 0.5, fc (normal std 0.01, bias 0).
    """

    def __init__(self, cfg: ResNetConfig, num_classes: int, dropout: float = 0.5, branch_op: BranchOp | None = None,
                 num_segments: int = 1):
        super().__init__()
        if cfg.block != "bottleneck":
            raise ValueError(f"models.ResNet3dCSN: irCSN needs a bottleneck ResNet depth (50, 101, 152), got {cfg}")
        w = cfg.width
        self.conv1 = nn.Conv3d(3, w, (3, 7, 7), (1, 2, 2), padding=(1, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(w, eps=CSNBottleneck.bn_eps)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        # stride 2 in (T, H, W) in the first block of layer2-4
        stages = _make_stages(CSNBottleneck, cfg, 3, (3,) * 4, branch_op, num_segments)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(8 * w * CSNBottleneck.expansion, num_classes)
        _init_convs_and_bns(self)
        _init_fc(self.fc)


def ircsn_resnet(depth: int, num_classes: int, width: int = 64, dropout: float = 0.5,
                 branch_op: BranchOp | None = None, num_segments: int = 1) -> ResNet3dCSN:
    """irCSN on ResNet-`depth` (50, 101, 152; the paper's best model is irCSN-152, Table 7); `num_segments` reaches
    `branch_op` only."""
    if depth not in RESNET_CONFIGS or RESNET_CONFIGS[depth].block != "bottleneck":
        raise ValueError(f"models.ircsn_resnet: depth must be one of 50, 101, 152, got {depth}")
    return ResNet3dCSN(replace(RESNET_CONFIGS[depth], width=width), num_classes, dropout, branch_op, num_segments)


# ----------------------------------------------------------------------------------------------------------------------
# 4. Architecture table and build_model
# ----------------------------------------------------------------------------------------------------------------------

FAMILIES = ("tsn", "3d")
# the training schedules by name (appendix "Implementation Details"; the numbers: train.RECIPES); 'demo': the tiny
# nets; 'ircsn_ig65m': irCSN-152 fine-tuned from IG-65M weights
RECIPES = ("tsn", "3d_imagenet", "3d_scratch", "demo", "ircsn_ig65m")


@dataclass(frozen=True)
class ArchSpec:
    """Default sampling / evaluation protocol of an architecture (MMAction2 configs of the paper's models).

    TSN: `num_clips_train` is the number of segments (3 in the paper, Sec. 5.1), clip_len 1.
    3D: one clip of `clip_len` frames taken every `frame_interval` frames ("4x16" = 4 frames, interval 16).
    Test: `num_clips_test` clips x `crops_test` crops (3: ThreeCrop, 1: centre crop).  `recipe` names the schedule
    in train.RECIPES: 'tsn', '3d_imagenet' (inflated ImageNet init) or '3d_scratch' (train.py switches to it when
    no weights are given), 'demo' (the tiny nets), 'ircsn_ig65m' (irCSN-152 fine-tuned from IG-65M weights).
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

# name -> (factory(num_classes, num_segments=..., width=..., dropout=...), default ArchSpec); `build_model` calls the
# factory with the spec's num_clips_train as num_segments (see `BranchOp`).  A backbone variant with an operation
# in its residual branches is one nn.Module class Op(channels, num_segments) plus one entry, e.g. a temporal shift
# (TSM, Lin et al. ICCV 2019; beyond the paper):
#   "tsm_r50": (partial(tsn_resnet, 50, branch_op=TemporalShift), replace(_TSN_SPEC, num_clips_train=8,
#                                                                           num_clips_test=8)),
# (tests/test_models_ext.py builds such an entry).  Its test views are combined by its class (`TSN.forward_views`
# feeds the V views' frames view after view, so with num_clips_test = num_segments each view is one group).
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
    # tiny demo models: width 16 (about 1/16 of the parameters of the width-64 nets), 64x64 crops, the 'small' stem
    # (3x3 stride-1 conv + max-pool: 64 -> 32 before layer1, 4x4 after layer4) and one centre crop at test time, at
    # the training scale (ThreeCrop's full 73x73 frames look unlike the 64 px training crops to a net this small)
    "tsn_tiny": (partial(tsn_resnet, 18, width=16, stem="small"),
                 replace(_TSN_SPEC, crops_test=1, crop_size=64, recipe="demo")),
    "slowonly_tiny": (partial(slowonly_resnet, 18, width=16, stem="small"), ArchSpec("3d", 4, 4, 1, 10, 1, "demo", 64)),
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
                                         layout) loaded into a TSN, or inflated into a SlowOnly; same-shape 3D
                                         weights, e.g. MMAction2's backbone-only IG-65M irCSN file, copied (see
                                         `load_pretrained`, lenient; refused when no weight fits).  Whole
                                         checkpoints: `load_weights` (strict).
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
    model = factory(num_classes, num_segments=spec.num_clips_train,
                    **{k: overrides[k] for k in MODEL_OVERRIDES if k in overrides})
    model.spec, model.arch = spec, name
    if "pretrained" in overrides:
        _load_pretrained_checked(model, overrides["pretrained"], name)
    return model


# ----------------------------------------------------------------------------------------------------------------------
# 5. ImageNet initialisation: copied into TSN, inflated into the 3D nets (Sec. 5.1 / Table 3 "ImageNet")
# ----------------------------------------------------------------------------------------------------------------------


def load_pretrained(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> LoadReport:
    """Copy / inflate every tensor of `state_dict` whose plain-layout key and shape fit `model`; report the rest.

    Into a TSN or a 2D `ResNet` the weights are copied.  Into a SlowOnly, 2D weights are inflated (I3D-style; the
    paper's "ImageNet" 3D models, Sec. 5.1 / Table 3): a conv kernel (O, I, kh, kw) becomes (O, I, kt, kh, kw) by
    repeating it kt times and dividing by kt, so a clip that is constant over time gives the 2D responses (away
    from the zero-padded clip ends); BN tensors are copied.  Same-shape 3D weights (e.g. MMAction2's IG-65M irCSN
    backbone) are simply copied.  fc is copied if the class count matches and otherwise skipped (the report says
    so).  The source may be in torchvision, our TSN (``backbone.`` prefix) or MMAction2 layout; a ``module.``
    prefix is ignored.  Nothing is checked for completeness: read the report.  Use `load_weights` for whole
    checkpoints: it checks everything.
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


# ----------------------------------------------------------------------------------------------------------------------
# 6. Inference: MMAction2's combination of test views (Sec. 5.1 test protocol)
# ----------------------------------------------------------------------------------------------------------------------


def predict(net: nn.Module, views: torch.Tensor, arch: ArchSpec, amp: str | None = None) -> torch.Tensor:
    """views (N, V, C, T, H, W), uint8 or normalised, sampled as `arch` says (a model's .spec) -> class
    probabilities (N, K) float32, the views combined by the model itself: `net.forward_views` (`TSN.forward_views`,
    `_ClipNet.forward_views`: MMAction2's combination for each).  The forward runs in `amp` precision (train.py
    --amp) on the device of `views` (None: the caller's autocast state, e.g. filter.py's).
    """
    if views.dtype == torch.uint8:
        views = transforms.normalize(views)
    with autocast(amp, views.device):
        return net.forward_views(views, arch)


# ----------------------------------------------------------------------------------------------------------------------
# A reader of the method may stop here.  Below is machinery: checkpoint formats and safe loading, the MMAction2
# key table, --amp precision and the private helpers.
# ----------------------------------------------------------------------------------------------------------------------

# ----------------------------------------------------------------------------------------------------------------------
# 7. Checkpoints of every kind, export to MMAction2
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What happened to every tensor when weights were transferred into a model."""

    copied: list[str] = field(default_factory=list)  # model keys copied as they are
    inflated: list[str] = field(default_factory=list)  # model keys filled with a 2D kernel repeated over time / kt
    skipped: list[str] = field(default_factory=list)  # "key: reason" (kept at their initial values)
    missing: list[str] = field(default_factory=list)  # model keys absent from the source (kept at init)
    unused: list[str] = field(default_factory=list)  # source keys the model has no place for
    format: str = ""  # load_weights: the detected CHECKPOINT_FORMATS key ("" for load_pretrained)
    classes: list[str] | None = None  # class names stored in the checkpoint (train.py 'classes', MMAction2 meta)

    @property
    def num_loaded_weights(self) -> int:
        """Number of loaded `.weight` tensors (conv, BN gamma, fc): 0 means nothing useful was loaded."""
        return sum(k.endswith(".weight") for k in self.copied + self.inflated)

    def summary(self) -> str:
        lines = [(f"format {self.format}: " if self.format else "")
                 + f"copied {len(self.copied)}, inflated {len(self.inflated)}, skipped {len(self.skipped)}, "
                 f"missing {len(self.missing)}, unused {len(self.unused)}"]
        lines += [f"  skipped {s}" for s in self.skipped]
        lines += [f"  missing {k}" for k in self.missing[:10]] + [f"  unused {k}" for k in self.unused[:10]]
        return "\n".join(lines)


def load_weights(model: nn.Module, path: str | Path, finetune: bool = False) -> LoadReport:
    """Load a checkpoint of any CHECKPOINT_FORMATS kind into `model` (TSN, SlowOnly, irCSN or a 2D ResNet), strictly.

    1. Read it safely (`checkpoints.safe_load`: weights-only unpickling, nothing from the file is ever executed).
    2. Detect the format (`checkpoints.detect_format`) and take its state dict, class names and nothing else (optimizer,
       message_hub, param_schedulers are ignored).
    3. Map every key to the model's own name through MMACTION_KEY_TABLE (MMAction2 names, also without the
       'backbone.' prefix of backbone-only files), our TSN's 'backbone.' prefix, torchvision's plain names, and a
       DataParallel 'module.' prefix.  A checkpoint key that maps to no model key is an error listing the keys.
    4. The classifier (fc): with finetune=False it must be there with the model's class count, else a ValueError
       naming both counts; with finetune=True the backbone alone is loaded and fc keeps its fresh init
       (report.skipped says so) -- fine-tuning / transfer (Sec. 5.1, UCF101 / HMDB51).
    5. Every other tensor must match in shape -- a 2D conv kernel going into a 3D net is inflated (kernel / kt,
       as in `load_pretrained`) -- and every model tensor must be in the checkpoint (BN num_batches_tracked
       excepted); otherwise a ValueError lists the keys.  Nothing is loaded unless all checks pass.
    """
    path = Path(path)
    obj = checkpoints.safe_load(path, "load_weights")
    fmt, state_dict, classes = checkpoints.detect_format(obj, path)
    mapped, unmatched = _map_to_model_keys(state_dict, model)
    where = f"models.load_weights: {path} ({fmt})"
    if unmatched:
        raise ValueError(f"{where}: {len(unmatched)} checkpoint key(s) match no tensor of "
                         f"{getattr(model, 'arch', type(model).__name__)}: {checkpoints.key_list(unmatched)}")
    report = _assign_checked(model, mapped, finetune, where)
    report.format, report.classes = fmt, classes
    return report


def mmaction_checkpoint(model: nn.Module, classes: list[str] | None = None) -> dict:
    """`model` as an MMAction2 1.x recognizer checkpoint: {'meta': {...}, 'state_dict': {MMAction2 keys}}.

    Keys go through MMACTION_KEY_TABLE (`checkpoints.mmaction_key`); the meta holds plain Python data only (exporter, our
    arch, the MMAction2 config that builds the same recognizer, time, and `dataset_meta.classes` when `classes`
    is given), so MMAction2's `load_checkpoint` -- and our `load_weights` -- read the file torch.save writes of it
    with weights_only=True (train.py --export-mmaction writes it with webscale.write_atomic).
    """
    if not isinstance(model, (TSN, ResNet3dSlowOnly, ResNet3dCSN)):
        raise ValueError(f"models.mmaction_checkpoint: only TSN / SlowOnly / irCSN recognizers have an MMAction2 "
                         f"layout, got {type(model).__name__}")
    num_classes = model.fc.out_features
    if classes is not None and len(classes) != num_classes:
        raise ValueError(f"models.mmaction_checkpoint: {len(classes)} class names given for a {num_classes}-class "
                         f"model")
    family, arch = _family_of(model), getattr(model, "arch", None)
    state = OrderedDict((checkpoints.mmaction_key(k, family), v.detach().cpu().clone()) for k, v in model.state_dict().items())
    meta = {"exported_by": "omnisource models.mmaction_checkpoint", "arch": arch,
            "mmaction2_config": checkpoints.MMACTION_CONFIGS.get(arch), "num_classes": num_classes,
            "time": time.strftime("%Y%m%d_%H%M%S")}
    if classes is not None:
        meta["dataset_meta"] = {"classes": [str(c) for c in classes]}
    return {"meta": meta, "state_dict": state}


def from_checkpoint(path: str | Path) -> nn.Module:
    """Rebuild a model from one of train.py's self-describing checkpoints (arch, model_args, classes, weights).

    The returned model is in eval mode and carries `.classes` (the class names it was trained on), `.spec`, `.arch`.
    """
    path = Path(path)
    state = checkpoints.safe_load(path, "from_checkpoint")
    if not isinstance(state, dict) or not {"arch", "model", "classes"} <= set(state):
        raise ValueError(f"models.from_checkpoint: {path} is not a train.py checkpoint (needs arch, model, classes)")
    model = build_model(state["arch"], len(state["classes"]), **state.get("model_args", {}))
    model.load_state_dict(state["model"])
    model.classes = list(state["classes"])
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------------
# 8. Key mapping to MMAction2 -- THE table: every name translation between our models and MMAction2 is here
# ----------------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------------
# 9. --amp precision
# ----------------------------------------------------------------------------------------------------------------------

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}   # --amp choices: "none" and these


def default_amp(device: str | torch.device) -> str:
    """--amp when not given (train.py, filter.py): bf16 on GPUs that support it (no loss scaling needed, the usual
    choice); none on older GPUs (fp16 is opt-in: MMAction2 users saw accuracy drops with it on 3D nets) and on
    CPUs."""
    return "bf16" if torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported() else "none"


def autocast(amp: str | None, device: torch.device) -> contextlib.AbstractContextManager:
    """torch.autocast for an --amp value on `device` ('none': off; None: leave the caller's state as it is);
    the same code on CPU and GPU."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES.get(amp, torch.float32), enabled=amp in AMP_DTYPES)


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------


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


def _make_stages(block: type, cfg: ResNetConfig, ndim: int, t_kernels: tuple[int, ...],
                 branch_op: BranchOp | None, num_segments: int) -> list[nn.Sequential]:
    """layer1..layer4: stage i has cfg.layers[i] blocks of width * 2**i planes; stride 2 in the first block of
    layer2-4 (spatial only in 3D); every block of stage i gets temporal kernel t_kernels[i] on conv1, and
    branch_op(its input channels, num_segments) when a branch_op is given."""
    stages, inplanes = [], cfg.width
    for i, (num_blocks, t_kernel) in enumerate(zip(cfg.layers, t_kernels)):
        planes, stride = cfg.width * 2 ** i, 1 if i == 0 else 2
        blocks = []
        for b in range(num_blocks):
            op = None if branch_op is None else branch_op(inplanes, num_segments)
            blocks.append(block(inplanes, planes, stride if b == 0 else 1, ndim, t_kernel, op))
            inplanes = planes * block.expansion
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


def _load_pretrained_checked(model: nn.Module, pretrained: str | Path | dict, arch: str) -> None:
    """build_model's `pretrained=`: path or state dict; refuse weights that share nothing with the net."""
    state_dict = pretrained if isinstance(pretrained, dict) else checkpoints.load_state_dict_file(pretrained)
    report = load_pretrained(model, state_dict)
    if report.num_loaded_weights == 0:
        source = "the given state dict" if isinstance(pretrained, dict) else str(pretrained)
        raise ValueError(f"models.build_model: pretrained weights {source} share no weight tensor with {arch} "
                         f"(wrong architecture or width?)")


def _copy_or_inflate(key: str, value: torch.Tensor, dst: torch.Tensor, new_state: dict, report: LoadReport) -> bool:
    """Put `value` into new_state[key] as `dst`'s shape takes it: the same shape copied, a 2D kernel inflated to
    `dst`'s 3D one (recorded in the report); False when neither fits (the caller says why)."""
    if value.shape == dst.shape:
        new_state[key] = value.to(dst.dtype)
        report.copied.append(key)
    elif _is_inflatable(value, dst):
        new_state[key] = _inflate_kernel(value, dst)
        report.inflated.append(key)
    else:
        return False
    return True


def _is_inflatable(value: torch.Tensor, dst: torch.Tensor) -> bool:
    """A 2D conv kernel (O, I, kh, kw) fits a 3D one (O, I, kt, kh, kw)."""
    return value.dim() == 4 and dst.dim() == 5 and value.shape == dst.shape[:2] + dst.shape[3:]


def _inflate_kernel(value: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """(O, I, kh, kw) -> (O, I, kt, kh, kw): repeated kt times over time and divided by kt (I3D inflation)."""
    kt = dst.shape[2]
    return (value.unsqueeze(2).expand(-1, -1, kt, -1, -1) / kt).to(dst.dtype)


def _family_of(model: nn.Module) -> str:
    """'tsn' (keys 'backbone.*' + 'fc.*') for a TSN, '3d' (plain keys) for SlowOnly, irCSN and a 2D ResNet."""
    return "tsn" if isinstance(model, TSN) else "3d"


def _map_to_model_keys(state_dict: dict, model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Checkpoint keys -> the model's own keys; returns (mapped, checkpoint keys with no (unique) model key)."""
    family, own = _family_of(model), model.state_dict()
    mapped, unmatched = {}, []
    for key, value in state_dict.items():
        plain = checkpoints.plain_key(key)
        ours = None if plain is None else checkpoints.add_family_prefix(plain, family)
        if ours in own and ours not in mapped and isinstance(value, torch.Tensor):
            mapped[ours] = value
        else:
            unmatched.append(key)
    return mapped, unmatched


def _assign_checked(model: nn.Module, mapped: dict[str, torch.Tensor], finetune: bool, where: str) -> LoadReport:
    """load_weights steps 4-5: check the head, shapes and completeness, then load (all or nothing)."""
    own, report, new_state, bad = model.state_dict(), LoadReport(), {}, []
    _check_head(mapped, own, finetune, where)
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
        raise ValueError(f"{where}: {len(bad)} tensor(s) differ in shape (checkpoint vs model): {checkpoints.key_list(bad)}")
    needed = [k for k in report.missing
              if not k.endswith(".num_batches_tracked") and not (finetune and k.startswith("fc."))]
    if needed:
        raise ValueError(f"{where}: {len(needed)} model tensor(s) are not in the checkpoint: {checkpoints.key_list(needed)}")
    model.load_state_dict(new_state, strict=False)
    return report


def _check_head(mapped: dict, own: dict, finetune: bool, where: str) -> None:
    """Without finetune the checkpoint's classifier must be there with the model's class count."""
    if finetune or "fc.weight" not in own:
        return
    model_classes = own["fc.weight"].shape[0]
    advice = "pass finetune=True (train.py --finetune) to load the backbone only"
    if "fc.weight" not in mapped:
        raise ValueError(f"{where}: has no classifier (fc) for the model's {model_classes} classes; {advice}")
    ckpt_classes = mapped["fc.weight"].shape[0]
    if ckpt_classes != model_classes:
        raise ValueError(f"{where}: the checkpoint's classifier has {ckpt_classes} classes but the model has "
                         f"{model_classes}; {advice}")


# Safe checkpoint reading (load_weights step 1) ------------------------------------------------------------------


