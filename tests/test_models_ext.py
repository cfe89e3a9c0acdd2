"""Extension points of models.py: operations at named positions of selected residual blocks (`ResNetConfig.ops`,
told the frames of each sample by every forward), and the view combination that belongs to the model
(`forward_views`, which `models.predict` delegates to).

Known answers: a temporal shift written out by hand on a small tensor, residual blocks recomposed from their own
layers, per-frame features that must not change when another sample of the batch changes, and MMAction2's two view
combinations computed view by view with plain forwards.
"""
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import filter  # noqa: E402
import models  # noqa: E402
import transforms  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny inputs (conftest.py)


class TemporalShift(nn.Module):
    """Test-only op: TSM's shift (Lin et al., ICCV 2019). Of every frame's channels, the first 1/div take the next
    frame's values, the next 1/div the previous frame's (zeros past the ends of the sample), the rest stay."""

    def __init__(self, channels: int, div: int = 8):
        super().__init__()
        self.fold = max(channels // div, 1)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:   # (N * frames, C, H, W)
        nt, c, h, w = x.shape
        x, f = x.view(nt // frames, frames, c, h, w), self.fold
        out = torch.zeros_like(x)
        out[:, :-1, :f] = x[:, 1:, :f]                # frame t sees t + 1
        out[:, 1:, f:2 * f] = x[:, :-1, f:2 * f]      # frame t sees t - 1
        out[:, :, 2 * f:] = x[:, :, 2 * f:]
        return out.view(nt, c, h, w)


class TemporalAttention(nn.Module):
    """Test-only op: single-head self-attention across the frames of each sample at every pixel, added to its
    input; the value projection starts at zero, so the block starts as the plain one."""

    def __init__(self, channels: int):
        super().__init__()
        self.query_key = nn.Conv2d(channels, 2 * channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.value.weight)
        nn.init.zeros_(self.value.bias)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:   # (N * frames, C, H, W)
        nt, c, h, w = x.shape
        q, k = self.query_key(x).view(nt // frames, frames, 2, c, h * w).unbind(2)        # (N, frames, C, H*W)
        v = self.value(x).view(nt // frames, frames, c, h * w)
        attn = torch.einsum("nfcp,ngcp->npfg", q, k).mul(c ** -0.5).softmax(dim=-1)       # (N, H*W, frames, frames)
        return x + torch.einsum("npfg,ngcp->nfcp", attn, v).reshape(nt, c, h, w)


class Recorder(nn.Module):
    """Test-only op: multiplies by `factor` and records the channels it was built with and the (shape, frames) of
    every call."""

    def __init__(self, channels: int, factor: float = 1.0):
        super().__init__()
        self.channels, self.factor, self.seen = channels, factor, []

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        self.seen.append((tuple(x.shape), frames))
        return x * self.factor


VARIANT_OPS = {"shift": {"before_conv1": (TemporalShift, "all")},            # TSM: every residual branch
               "attention": {"after_conv2": (TemporalAttention, "last")}}    # after conv2 of each stage's last block


def variant_entry(ops: dict) -> tuple:
    """The one ARCHS entry of a variant: the tiny TSN with `ops` in its blocks, tsn_tiny's spec."""
    return partial(models.tsn_resnet, 18, width=16, stem="small", ops=ops), models.ARCHS["tsn_tiny"][1]


def build_variant(monkeypatch, op: str, num_classes: int = 5) -> nn.Module:
    monkeypatch.setitem(models.ARCHS, f"tsn_{op}_tiny", variant_entry(VARIANT_OPS[op]))
    torch.manual_seed(0)
    return models.build_model(f"tsn_{op}_tiny", num_classes)


def op_modules(net: nn.Module, kind: type = nn.Module) -> dict[str, nn.Module]:
    """{module name: op} of every block op of `net`."""
    return {f"{name}.ops.{pos}": op for name, block in net.named_modules() if isinstance(block, models._Block)
            for pos, op in block.ops.items() if isinstance(op, kind)}


# ---------------------------------------------------------------- block ops: positions, selection, construction


@pytest.mark.parametrize("block_type", [models.BasicBlock, models.Bottleneck])
@torch.no_grad()
def test_block_ops_run_at_their_named_positions(block_type):
    torch.manual_seed(0)
    ops = {"before_conv1": partial(Recorder, factor=2.0), "after_conv2": partial(Recorder, factor=3.0),
           "after_block": partial(Recorder, factor=5.0)}
    planes = 16 // block_type.expansion
    block, plain = block_type(16, planes, ops=ops).eval(), block_type(16, planes).eval()
    x = torch.randn(6, 16, 5, 5)                                       # 2 samples x 3 frames
    out = block.relu(block.bn1(block.conv1(2 * x)))                    # before conv1: the residual branch only
    if block_type is models.Bottleneck:
        out = block.bn3(block.conv3(3 * block.relu(block.bn2(block.conv2(out)))))
    else:
        out = 3 * block.bn2(block.conv2(out))
    torch.testing.assert_close(block(x, 3), 5 * torch.relu(out + x), rtol=0, atol=0)   # identity path: plain x
    assert [(op.channels, op.seen) for op in block.ops.values()] == [
        (16, [((6, 16, 5, 5), 3)]), (planes, [((6, planes, 5, 5), 3)]), (16, [((6, 16, 5, 5), 3)])]
    assert len(plain.ops) == 0 and list(plain.state_dict()) == list(block.state_dict())


def test_block_ops_are_built_for_the_selected_blocks_with_the_channels_there():
    ops = {"before_conv1": (Recorder, ("layer2.1", "layer4.0")), "after_conv2": (Recorder, "last"),
           "after_block": (Recorder, "first")}
    net = models.tsn_resnet(18, 4, width=16, stem="small", ops=ops)
    built = {name: op.channels for name, op in op_modules(net).items()}
    assert {name.replace("backbone.layer", "").replace(".ops", ""): c for name, c in built.items()} == {
        "1.0.after_block": 16, "1.1.after_conv2": 16, "2.0.after_block": 32, "2.1.before_conv1": 32,
        "2.1.after_conv2": 32, "3.0.after_block": 64, "3.1.after_conv2": 64, "4.0.before_conv1": 64,
        "4.0.after_block": 128, "4.1.after_conv2": 128}
    bottleneck = models.resnet(50, None, width=8, ops={"after_conv2": (Recorder, "first")})
    assert [op.channels for op in op_modules(bottleneck).values()] == [8, 16, 32, 64]   # conv2's planes, not x4


def test_block_ops_refuse_unknown_positions_and_selections():
    with pytest.raises(ValueError, match="ops take a position in"):
        models.tsn_resnet(18, 4, width=16, ops={"after_conv3": (Recorder, "all")})
    with pytest.raises(ValueError, match="ops take a position in"):
        models.tsn_resnet(18, 4, width=16, ops={"after_block": (Recorder, "middle")})


def test_block_ops_keep_their_own_init_and_add_only_their_parameters(monkeypatch):
    torch.manual_seed(0)
    plain = models.build_model("tsn_tiny", 5)
    shift = build_variant(monkeypatch, "shift")
    assert list(shift.state_dict()) == list(plain.state_dict())                        # no parameter of its own,
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in shift.state_dict().items())   # the same init
    attention = build_variant(monkeypatch, "attention")
    extra = [k for k in attention.state_dict() if k not in plain.state_dict()]
    assert extra == [f"backbone.layer{s}.1.ops.after_conv2.{p}" for s in (1, 2, 3, 4)
                     for p in ("query_key.weight", "query_key.bias", "value.weight", "value.bias")]
    ops = op_modules(attention, TemporalAttention).values()
    assert all(torch.all(op.value.weight == 0) for op in ops)                          # not the nets' kaiming init


# ---------------------------------------------------------------- two variants: temporal shift, temporal attention


def test_temporal_shift_on_a_known_tensor():
    # 2 samples x 3 frames, 4 channels of 1x1: value 100 * sample + 10 * frame + channel
    x = torch.tensor([[100 * n + 10 * t + c for c in range(4)] for n in range(2) for t in range(3)], dtype=torch.float)
    out = TemporalShift(4, div=4)(x.view(6, 4, 1, 1), 3).view(6, 4)
    expected = torch.tensor([[10, 0, 2, 3], [20, 1, 12, 13], [0, 11, 22, 23],   # sample 0, frames 0, 1, 2
                             [110, 0, 102, 103], [120, 101, 112, 113], [0, 111, 122, 123]], dtype=torch.float)
    assert torch.equal(out, expected)


@torch.no_grad()
def test_temporal_shift_variant_is_one_class_plus_one_archs_entry(monkeypatch):
    tsm = build_variant(monkeypatch, "shift").eval()
    torch.manual_seed(0)
    tsn = models.build_model("tsn_tiny", 5).eval()
    shifts = op_modules(tsm, TemporalShift)
    assert len(shifts) == 8 and [op.fold for op in shifts.values()] == [2, 2, 2, 4, 4, 8, 8, 16]   # input channels
    x = torch.randn(2, 3, 4, 32, 32)
    assert not torch.allclose(tsm(x), tsn(x))
    for block in tsm.modules():
        if isinstance(block, models._Block):
            block.ops.clear()
    torch.testing.assert_close(tsm(x), tsn(x), rtol=0, atol=0)    # the shift is the only difference


def test_temporal_attention_variant_trains_one_step_and_runs_the_test_protocol(monkeypatch):
    net = build_variant(monkeypatch, "attention")
    ops = op_modules(net, TemporalAttention)
    assert list(ops) == [f"backbone.layer{s}.1.ops.after_conv2" for s in (1, 2, 3, 4)]
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = F.cross_entropy(net.train()(torch.randn(2, 3, 4, 32, 32)), torch.tensor([0, 3]))   # 2 samples x 4 segments
    loss.backward()
    optimizer.step()
    assert all(op.value.weight.abs().sum() > 0 for op in ops.values())                 # the attention learns
    views = torch.randint(0, 256, (2, 3, 3, 2, 32, 32), dtype=torch.uint8)             # 3 crops x 2 frames
    with torch.no_grad():
        probs = models.predict(net.eval(), views, net.spec)
    assert probs.shape == (2, 5) and torch.allclose(probs.sum(dim=1), torch.ones(2))


# ---------------------------------------------------------------- every forward tells the ops the frames of a sample


@torch.no_grad()
def test_every_forward_tells_the_ops_the_frames_of_each_sample():
    net = models.tsn_resnet(18, 4, width=16, stem="small", ops={"after_block": (Recorder, ("layer1.0",))}).eval()
    op = net.backbone.layer1[0].ops["after_block"]
    net(torch.randn(2, 3, 4, 32, 32))                                                  # training: 4 segments
    models.predict(net, torch.randint(0, 256, (2, 3, 3, 2, 32, 32), dtype=torch.uint8), models.ARCHS["tsn_tiny"][1])
    models.predict(net, torch.randint(0, 256, (5, 1, 3, 1, 32, 32), dtype=torch.uint8), models.ARCHS["tsn_tiny"][1])
    filter.FrameFeatures(net, 32, "teacher")(torch.randn(5, 3, 32, 32))                # Sec. 3.3 frame features
    assert [(shape[0], frames) for shape, frames in op.seen] == [(8, 4), (12, 2), (5, 1), (5, 1)]
    net3d = models.slowonly_resnet(18, 4, width=16, stem="small", ops={"before_conv1": (Recorder, "first")}).eval()
    net3d(torch.randn(2, 3, 4, 32, 32))
    assert net3d.layer1[0].ops["before_conv1"].seen == [((2, 16, 4, 16, 16), 1)]      # 3D: time is an axis


def _sample_batches(net: nn.Module) -> dict:
    """The kinds of batch a TSN sees -> (run, x, frames per sample, where in x the backbone's sample 1 is, the
    output row that holds it): the backbone sees N samples of `frames` rows each."""
    def views(n, v, t):
        return torch.randint(0, 256, (n, v, 3, t, 32, 32), dtype=torch.uint8)

    def run(x):
        return models.predict(net, x, models.ARCHS["tsn_tiny"][1])
    return {"training_segments": (net, torch.randn(3, 3, 4, 32, 32), 4, (1,), 1),      # (N, C, S, H, W)
            "test_views": (run, views(2, 3, 2), 2, (0, 1), 0),                         # (N, V, C, T, H, W)
            "filter_single_frames": (run, views(4, 1, 1), 1, (1,), 1),
            "filter_frame_features": (filter.FrameFeatures(net, 32, "teacher"), torch.randn(4, 3, 32, 32), 1, (1,), 1)}


@pytest.mark.parametrize("batch", ["training_segments", "test_views", "filter_single_frames", "filter_frame_features"])
@pytest.mark.parametrize("op", sorted(VARIANT_OPS))
@torch.no_grad()
def test_a_temporal_op_never_mixes_frames_of_different_samples(monkeypatch, op, batch):
    net = build_variant(monkeypatch, op).eval()
    for param in [p for o in op_modules(net).values() for p in o.parameters()]:
        param.normal_(0, 0.2)                                              # an attention that does attend
    per_frame = []
    net.backbone.avgpool.register_forward_hook(lambda module, args, out: per_frame.append(out.flatten(1)))
    run, x, frames, sample, row = _sample_batches(net)[batch]
    changed = x.clone()
    changed[sample] = changed[sample] // 2 if x.dtype == torch.uint8 else changed[sample] + 1
    before, after = run(x), run(changed)
    a, b = per_frame                                                       # (N * frames, D) each
    others = torch.ones(len(a), dtype=torch.bool)
    others[frames:2 * frames] = False
    assert torch.equal(a[others], b[others])                               # every other sample: bit-identical
    assert not torch.equal(a[frames:2 * frames], b[frames:2 * frames])
    keep = torch.arange(len(before)) != row
    assert torch.equal(before[keep], after[keep]) and not torch.equal(before[row], after[row])


# ---------------------------------------------------------------- view combination belongs to the model


@torch.no_grad()
def test_tsn_averages_features_of_all_views_before_one_softmax():
    tsn = models.build_model("tsn_tiny", 4).eval()
    views = torch.randn(2, 3, 3, 2, 32, 32)                           # (N, V, C, T, H, W)
    per_frame = torch.stack([tsn.backbone.features(views[:, v, :, t]) for v in range(3) for t in range(2)], dim=1)
    expected = tsn.fc(per_frame.mean(dim=1)).softmax(dim=1)           # (N, K)
    torch.testing.assert_close(tsn.forward_views(views, tsn.spec), expected)
    torch.testing.assert_close(models.predict(tsn, views, tsn.spec), expected)


@torch.no_grad()
def test_3d_nets_average_the_softmax_of_every_clip_and_crop():
    net = models.build_model("slowonly_tiny", 4, clip_len=2).eval()
    views = torch.randn(2, 3, 3, 4, 32, 32)                           # 3 crops x (2 clips of 2 frames)
    per_view = [net(views[:, v, :, 2 * k:2 * k + 2]).softmax(dim=1) for v in range(3) for k in range(2)]
    expected = torch.stack(per_view).mean(dim=0)                      # (N, K)
    torch.testing.assert_close(net.forward_views(views, net.spec), expected)
    torch.testing.assert_close(models.predict(net, views, net.spec), expected)


def test_predict_only_normalises_and_delegates():
    seen = []

    class Constant(nn.Module):
        def forward_views(self, views, spec):
            seen.append((views, spec))
            return torch.full((len(views), 3), 1 / 3)

    spec = models.ARCHS["tsn_tiny"][1]                                # a TSN spec: no family decides anything
    views = torch.randint(0, 256, (2, 1, 3, 1, 4, 4), dtype=torch.uint8)
    assert torch.equal(models.predict(Constant(), views, spec), torch.full((2, 3), 1 / 3))
    assert torch.equal(seen[0][0], transforms.normalize(views)) and seen[0][1] is spec
