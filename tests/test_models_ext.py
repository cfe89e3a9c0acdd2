"""Extension points of models.py (issue 15 item 7): an operation in the residual branch (`BranchOp`), and the view
combination that belongs to the model (`forward_views`, which `models.predict` delegates to).

Known answers: a temporal shift written out by hand on a small tensor, the residual block recomposed from its
own layers, and MMAction2's two view combinations computed view by view with plain forwards.
"""
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import models  # noqa: E402
import transforms  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny inputs (conftest.py)


class TemporalShift(nn.Module):
    """Test-only BranchOp: TSM's shift (Lin et al., ICCV 2019). Of every segment's channels, the first 1/div take
    the next segment's values, the next 1/div the previous segment's (zeros past the ends), the rest stay."""

    def __init__(self, channels: int, num_segments: int, div: int = 8):
        super().__init__()
        self.fold, self.num_segments = max(channels // div, 1), num_segments

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # (N * num_segments, C, H, W)
        nt, c, h, w = x.shape
        x, f = x.view(nt // self.num_segments, self.num_segments, c, h, w), self.fold
        out = torch.zeros_like(x)
        out[:, :-1, :f] = x[:, 1:, :f]                # segment t sees t + 1
        out[:, 1:, f:2 * f] = x[:, :-1, f:2 * f]      # segment t sees t - 1
        out[:, :, 2 * f:] = x[:, :, 2 * f:]
        return out.view(nt, c, h, w)


def tsm_entry() -> tuple:
    """The one ARCHS entry of the variant: the tiny TSN with the shift in every residual branch."""
    return partial(models.tsn_resnet, 18, width=16, stem="small", branch_op=TemporalShift), models.ARCHS["tsn_tiny"][1]


# ---------------------------------------------------------------- an operation in the residual branch


def test_temporal_shift_on_a_known_tensor():
    # 2 samples x 3 segments, 4 channels of 1x1: value 100 * sample + 10 * segment + channel
    x = torch.tensor([[100 * n + 10 * t + c for c in range(4)] for n in range(2) for t in range(3)], dtype=torch.float)
    out = TemporalShift(4, 3, div=4)(x.view(6, 4, 1, 1)).view(6, 4)
    expected = torch.tensor([[10, 0, 2, 3], [20, 1, 12, 13], [0, 11, 22, 23],   # sample 0, segments 0, 1, 2
                             [110, 0, 102, 103], [120, 101, 112, 113], [0, 111, 122, 123]], dtype=torch.float)
    assert torch.equal(out, expected)


@torch.no_grad()
def test_branch_op_runs_on_the_residual_branch_only():
    torch.manual_seed(0)
    x = torch.randn(6, 8, 5, 5)                            # 2 samples x 3 segments
    shift = TemporalShift(8, 3, div=4)
    for block, op in ((models.BasicBlock(8, 8), lambda t: t), (models.BasicBlock(8, 8, branch_op=shift), shift)):
        block.eval()
        branch = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(op(x))))))
        torch.testing.assert_close(block(x), torch.relu(branch + x), rtol=0, atol=0)   # identity path: plain x
    assert isinstance(models.BasicBlock(8, 8).branch_op, nn.Identity)


def test_variant_is_one_class_plus_one_archs_entry(monkeypatch):
    monkeypatch.setitem(models.ARCHS, "tsm_tiny", tsm_entry())
    torch.manual_seed(0)
    tsm = models.build_model("tsm_tiny", 5, num_segments=4).eval()
    torch.manual_seed(0)
    tsn = models.build_model("tsn_tiny", 5, num_segments=4).eval()
    blocks = [b for layer in (tsm.backbone.layer1, tsm.backbone.layer2, tsm.backbone.layer3, tsm.backbone.layer4)
              for b in layer]
    assert len(blocks) == 8 and all(isinstance(b.branch_op, TemporalShift) for b in blocks)
    # built once, with the segments of the final spec (the override) and each block's input channels
    assert [(b.branch_op.num_segments, b.branch_op.fold) for b in blocks] == [(4, 2)] * 3 + [(4, 4)] * 2 + \
        [(4, 8)] * 2 + [(4, 16)]
    assert list(tsm.state_dict()) == list(tsn.state_dict())           # no parameter of its own: same keys,
    assert all(torch.equal(v, tsn.state_dict()[k]) for k, v in tsm.state_dict().items())   # same init
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        shifted = tsm(x)
        assert not torch.allclose(shifted, tsn(x))
        for b in blocks:
            b.branch_op = nn.Identity()
        torch.testing.assert_close(tsm(x), tsn(x), rtol=0, atol=0)    # the shift is the only difference
        probs = models.predict(tsm, torch.randint(0, 256, (2, 1, 3, 4, 32, 32), dtype=torch.uint8), tsm.spec)
    assert probs.shape == (2, 5)


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
