"""Tests of models.py: torchvision layout, MMAction2 parameter counts and key mapping, inflation, build_model.

Known answers come from elsewhere: torchvision's resnet18 state dict written out by hand, torchvision's published
parameter counts, MMAction2 1.2.0's state-dict key files (copied into tests/data from shared/data/mmaction2), and
2D-vs-3D / per-frame equivalences computed with the 2D network.
"""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import checkpoints  # noqa: E402
import models  # noqa: E402
from mmaction_reference import DATA, KEY_FILES, read_key_file  # noqa: E402


# torchvision resnet18 state dict, written out by hand: module name, kind, weight shape.
TORCHVISION_RESNET18 = """
conv1 conv 64 3 7 7
bn1 bn 64
layer1.0.conv1 conv 64 64 3 3
layer1.0.bn1 bn 64
layer1.0.conv2 conv 64 64 3 3
layer1.0.bn2 bn 64
layer1.1.conv1 conv 64 64 3 3
layer1.1.bn1 bn 64
layer1.1.conv2 conv 64 64 3 3
layer1.1.bn2 bn 64
layer2.0.conv1 conv 128 64 3 3
layer2.0.bn1 bn 128
layer2.0.conv2 conv 128 128 3 3
layer2.0.bn2 bn 128
layer2.0.downsample.0 conv 128 64 1 1
layer2.0.downsample.1 bn 128
layer2.1.conv1 conv 128 128 3 3
layer2.1.bn1 bn 128
layer2.1.conv2 conv 128 128 3 3
layer2.1.bn2 bn 128
layer3.0.conv1 conv 256 128 3 3
layer3.0.bn1 bn 256
layer3.0.conv2 conv 256 256 3 3
layer3.0.bn2 bn 256
layer3.0.downsample.0 conv 256 128 1 1
layer3.0.downsample.1 bn 256
layer3.1.conv1 conv 256 256 3 3
layer3.1.bn1 bn 256
layer3.1.conv2 conv 256 256 3 3
layer3.1.bn2 bn 256
layer4.0.conv1 conv 512 256 3 3
layer4.0.bn1 bn 512
layer4.0.conv2 conv 512 512 3 3
layer4.0.bn2 bn 512
layer4.0.downsample.0 conv 512 256 1 1
layer4.0.downsample.1 bn 512
layer4.1.conv1 conv 512 512 3 3
layer4.1.bn1 bn 512
layer4.1.conv2 conv 512 512 3 3
layer4.1.bn2 bn 512
fc linear 1000 512
"""

# torchvision.models.resnetXX(): total parameters (published in torchvision's model docs).
TORCHVISION_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}

# MMAction2 1.2.0 recognizers with 400 classes (mmaction_reference.py); irCSN is checked in test_checkpoints.py
MMACTION = {name: row for name, row in KEY_FILES.items() if name != "ircsn_r152_32x2"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny inputs (conftest.py)


@pytest.fixture(scope="module")
def big_models():
    """The three MMAction2-comparable nets, built once (about 2 s)."""
    return {name: models.build_model(name, 400) for name in MMACTION}


# ---------------------------------------------------------------- torchvision layout


def test_resnet18_state_dict_equals_torchvision_layout():
    expected = _expand_module_list(TORCHVISION_RESNET18)
    ours = {k: tuple(v.shape) for k, v in models.resnet(18).state_dict().items()}
    assert len(expected) == 122
    assert list(ours) == list(expected)  # same keys, same order
    assert ours == expected
    fake_torchvision = {k: torch.randn(s) if s else torch.tensor(0) for k, s in expected.items()}
    models.resnet(18).load_state_dict(fake_torchvision, strict=True)


def test_resnet50_keys_follow_torchvision_rule():
    expected = _torchvision_bottleneck_keys((3, 4, 6, 3))
    ours = list(models.resnet50().state_dict())
    assert len(ours) == 320
    assert ours == expected


@pytest.mark.parametrize("depth", sorted(TORCHVISION_PARAMS))
def test_resnet_parameter_counts_equal_torchvision(depth):
    assert _count(models.resnet(depth)) == TORCHVISION_PARAMS[depth]


def test_resnet_init_is_torchvision_like():
    net = models.resnet50()
    w = net.layer1[0].conv2.weight  # kaiming normal, fan_out = 64 * 3 * 3
    assert abs(w.std().item() - (2 / (64 * 9)) ** 0.5) < 0.01
    assert torch.all(net.layer1[0].bn3.weight == 1) and torch.all(net.layer1[0].bn3.bias == 0)


def test_reduced_width_resnet():
    net = models.resnet(18, num_classes=10, width=16)
    assert net.conv1.weight.shape == (16, 3, 7, 7) and net.fc.weight.shape == (10, 128)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# ---------------------------------------------------------------- MMAction2 parity


@pytest.mark.parametrize("arch", sorted(MMACTION))
def test_parameter_counts_equal_mmaction2(arch, big_models):
    count = _count(big_models[arch])
    print(f"{arch}: {count:,} parameters")
    assert count == MMACTION[arch][2]


@pytest.mark.parametrize("arch", sorted(MMACTION))
def test_keys_and_shapes_map_onto_mmaction2(arch, big_models):
    filename, family, _ = MMACTION[arch]
    theirs = read_key_file(DATA / filename)
    ours = big_models[arch].state_dict()
    mapped = {checkpoints.mmaction_key(k, family): (tuple(v.shape), str(v.dtype).removeprefix("torch."))
              for k, v in ours.items()}
    assert list(mapped) == list(theirs)  # same keys in the same order
    assert mapped == theirs  # and the same shapes and dtypes


def test_mmaction_key_examples_and_errors():
    assert checkpoints.mmaction_key("bn1.running_var", "3d") == "backbone.conv1.bn.running_var"
    assert checkpoints.mmaction_key("layer2.0.downsample.1.bias", "3d") == "backbone.layer2.0.downsample.bn.bias"
    assert checkpoints.mmaction_key("backbone.layer4.2.bn3.weight", "tsn") == "backbone.layer4.2.conv3.bn.weight"
    assert checkpoints.mmaction_key("fc.weight", "tsn") == "cls_head.fc_cls.weight"
    with pytest.raises(ValueError, match="not a ResNet"):
        checkpoints.mmaction_key("layer1.0.relu.weight", "3d")


# ---------------------------------------------------------------- SlowOnly architecture facts


def test_slowonly_layout_facts(big_models):
    net = big_models["slowonly_r50_4x16"]
    assert (net.conv1.kernel_size, net.conv1.stride, net.conv1.padding) == ((1, 7, 7), (1, 2, 2), (0, 3, 3))
    assert (net.maxpool.kernel_size, net.maxpool.stride) == ((1, 3, 3), (1, 2, 2))
    for stage, t in (("layer1", 1), ("layer2", 1), ("layer3", 3), ("layer4", 3)):
        for block in getattr(net, stage):
            assert block.conv1.kernel_size == (t, 1, 1) and block.conv1.padding == (t // 2, 0, 0)
            assert block.conv2.kernel_size == (1, 3, 3) and block.conv2.stride[0] == 1
            assert torch.all(block.bn3.weight == 0)  # zero-init of the last BN gamma
    assert abs(net.fc.weight.std().item() - 0.01) < 0.001 and torch.all(net.fc.bias == 0)
    assert net.dropout.p == 0.5


def test_slowonly_tiny_basic_blocks_have_temporal_conv1():
    net = models.build_model("slowonly_tiny", 5)
    assert net.layer3[1].conv1.kernel_size == (3, 3, 3) and net.layer2[0].conv1.kernel_size == (1, 3, 3)
    assert net.layer4[0].conv2.kernel_size == (1, 3, 3) and torch.all(net.layer4[0].bn2.weight == 0)


def test_slowonly_has_no_temporal_downsampling():
    net = models.build_model("slowonly_r50_4x16", 5)
    assert net.feature_map(torch.randn(1, 3, 5, 64, 64)).shape == (1, 2048, 5, 2, 2)


# ---------------------------------------------------------------- the tiny nets' small-input stem


def _resnet18_params(width: int, stem_kernel: int, num_classes: int) -> int:
    """Parameters of a BasicBlock ResNet-18 at `width` with a `stem_kernel` stem and a linear head, by hand:
    convs are bias-free, each BN has 2 parameters per channel, the first block of layer2-4 has a 1x1 projection."""
    total = 3 * width * stem_kernel ** 2 + 2 * width                          # conv1 + bn1
    total += 2 * 2 * (9 * width * width + 2 * width)                          # layer1: 2 blocks x 2 (conv + BN)
    for i in (1, 2, 3):
        cin, c = width * 2 ** (i - 1), width * 2 ** i
        total += 9 * cin * c + 2 * c + 9 * c * c + 2 * c + cin * c + 2 * c    # first block + projection
        total += 2 * (9 * c * c + 2 * c)                                      # second block
    return total + 8 * width * num_classes + num_classes                      # fc


def test_tiny_nets_have_the_small_input_stem():
    kernel, stride = models.STEMS["small"]
    tsn, net3d = models.build_model("tsn_tiny", 8), models.build_model("slowonly_tiny", 8)
    assert (tsn.backbone.conv1.kernel_size, tsn.backbone.conv1.stride) == ((kernel, kernel), (stride, stride))
    assert (net3d.conv1.kernel_size, net3d.conv1.stride) == ((1, kernel, kernel), (1, stride, stride))
    assert sum(p.numel() for p in tsn.parameters()) == _resnet18_params(16, kernel, 8)
    # SlowOnly: conv1 of every layer3 / layer4 block has 3 temporal taps, 2 more 3x3 kernels per (in, out) pair
    temporal = 2 * 9 * (32 * 64 + 64 * 64 + 64 * 128 + 128 * 128)
    assert sum(p.numel() for p in net3d.parameters()) == _resnet18_params(16, kernel, 8) + temporal
    # the width-64 nets keep torchvision's stem: 7x7 stride 2 + max-pool, 224 -> 7x7 after layer4
    assert sum(p.numel() for p in models.resnet(18, num_classes=1000).parameters()) == _resnet18_params(64, 7, 1000)
    assert models.build_model("tsn_r18", 8).backbone.conv1.kernel_size == (7, 7)


@torch.no_grad()
def test_small_stem_output_sizes():
    kernel, stride = models.STEMS["small"]
    down = stride * 2 * 8                             # conv1, the stem's max-pool, then layer2-4 stride 2 each
    tsn = models.build_model("tsn_tiny", 8).eval()
    assert tsn.backbone.feature_map(torch.randn(2, 3, 64, 64)).shape == (2, 128, 64 // down, 64 // down)
    assert tsn(torch.randn(2, 3, 3, 64, 64)).shape == (2, 8)
    net3d = models.build_model("slowonly_tiny", 8).eval()
    assert net3d.feature_map(torch.randn(1, 3, 4, 64, 64)).shape == (1, 128, 4, 64 // down, 64 // down)
    with pytest.raises(ValueError, match="stem must be one of"):
        models.ResNetConfig("basic", (2, 2, 2, 2), stem="cifar")


# ---------------------------------------------------------------- inflation (golden: 3D on a static clip == 2D)


@torch.no_grad()
def test_inflated_slowonly_reproduces_2d_resnet50_on_static_clip():
    net2d = _randomised_eval(models.resnet50(num_classes=1000))
    net3d = models.slowonly_resnet(50, num_classes=400).double().eval()
    report = models.load_pretrained(net3d, net2d.state_dict())
    assert len(report.inflated) == 53 and not report.missing and report.unused == []
    assert report.skipped == ["fc.weight: source has 1000 classes, model 400 -> kept the fresh init (std 0.01)",
                              "fc.bias: source has 1000 classes, model 400 -> kept the fresh init (std 0.01)"]
    w2, w3 = net2d.layer3[0].conv1.weight, net3d.layer3[0].conv1.weight  # (256, 512, 1, 1) -> (256, 512, 3, 1, 1)
    assert torch.allclose(w3.sum(dim=2), w2) and torch.allclose(w3[:, :, 0], w3[:, :, 2])

    image = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    expected = net2d.features(image)  # (2, 2048)
    # 9 temporal convs (layer3: 6, layer4: 3) each see zero padding at the clip ends, so only frames >= 9 away
    # from both ends are unaffected: T = 19, compare the centre frame.
    clip = image.unsqueeze(2).expand(-1, -1, 19, -1, -1)  # (2, 3, 19, 48, 48), constant over time
    feature_map = net3d.feature_map(clip)  # (2, 2048, 19, 2, 2)
    centre = feature_map[:, :, 9].mean(dim=(-2, -1))  # (2, 2048)
    torch.testing.assert_close(centre, expected, atol=1e-4, rtol=1e-6)
    pooled = feature_map.mean(dim=(2, 3, 4))  # what net3d.features returns
    assert not torch.allclose(pooled, expected, atol=1e-4)  # the clip ends do differ (as in MMAction2)


@torch.no_grad()
def test_inflation_without_temporal_kernels_gives_equal_pooled_features():
    net2d = _randomised_eval(models.resnet(18, num_classes=7, width=16))
    cfg = models.ResNetConfig("basic", (2, 2, 2, 2), width=16)
    net3d = models.ResNet3dSlowOnly(cfg, num_classes=7, inflate=(False,) * 4).double().eval()
    report = models.load_pretrained(net3d, net2d.state_dict())
    assert not report.skipped and "fc.weight" in report.copied
    image = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    clip = image.unsqueeze(2).expand(-1, -1, 4, -1, -1)
    torch.testing.assert_close(net3d.features(clip), net2d.features(image), atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(net3d(clip), net2d(image), atol=1e-4, rtol=1e-6)


def test_inflation_accepts_mmaction2_and_tsn_layouts():
    tsn = models.build_model("tsn_tiny", 6)
    mmaction_layout = {checkpoints.mmaction_key(k, "tsn"): v for k, v in tsn.state_dict().items()}
    for source in (tsn.state_dict(), mmaction_layout, {"module." + k: v for k, v in tsn.state_dict().items()}):
        net3d = models.build_model("slowonly_tiny", 6)
        report = models.load_pretrained(net3d, source)
        assert not report.missing and not report.skipped and not report.unused
        assert torch.equal(net3d.fc.weight, tsn.fc.weight)
        assert torch.allclose(net3d.layer4[1].conv1.weight.sum(2), tsn.backbone.layer4[1].conv1.weight)


# ---------------------------------------------------------------- TSN consensus (golden: per-frame 2D features)


@torch.no_grad()
def test_tsn_averages_per_frame_features_over_all_segments_and_views():
    tsn = models.build_model("tsn_tiny", 4).eval()
    x = torch.randn(2, 3, 6, 32, 32)  # e.g. 3 segments x 2 views
    per_frame = torch.stack([tsn.backbone.features(x[:, :, t]) for t in range(6)], dim=1)  # (2, 6, 128)
    torch.testing.assert_close(tsn.features(x), per_frame.mean(dim=1))
    torch.testing.assert_close(tsn(x), tsn.fc(per_frame.mean(dim=1)))
    assert tsn.dropout.p == 0.4 and abs(tsn.fc.weight.std().item() - 0.01) < 0.002
    assert "backbone.fc.weight" not in tsn.state_dict()


def test_tsn_refuses_non_video_input():
    with pytest.raises(ValueError, match=r"expected input \(N, C, T, H, W\)"):
        models.build_model("tsn_tiny", 4)(torch.randn(2, 3, 32, 32))


# ---------------------------------------------------------------- build_model and specs


@pytest.mark.parametrize("name", list(models.ARCHS))
@torch.no_grad()
def test_every_arch_maps_a_video_batch_to_logits(name):
    model = models.build_model(name, 11).eval()
    t = 3 if model.spec.family == "tsn" else 2
    x = torch.randn(2, 3, t, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 11) and torch.isfinite(logits).all()
    features = model.features(x)
    assert features.shape == (2, model.fc.in_features)
    torch.testing.assert_close(model.head(features), logits)  # eval mode: dropout is the identity
    assert model.arch == name and isinstance(model.spec, models.ArchSpec)


def test_arch_specs_hold_the_mmaction2_sampling_and_test_protocols():
    spec = models.ARCHS["tsn_r50"][1]
    assert (spec.family, spec.clip_len, spec.frame_interval, spec.num_clips_train) == ("tsn", 1, 1, 3)
    assert (spec.num_clips_test, spec.crops_test, spec.recipe, spec.crop_size) == (25, 3, "tsn", 224)
    spec = models.ARCHS["slowonly_r50_4x16"][1]
    assert (spec.family, spec.clip_len, spec.frame_interval, spec.num_clips_train) == ("3d", 4, 16, 1)
    assert (spec.num_clips_test, spec.crops_test, spec.recipe) == (10, 3, "3d_imagenet")
    for name in ("slowonly_r50_8x8", "slowonly_r101_8x8"):
        assert models.ARCHS[name][1].clip_len == 8 and models.ARCHS[name][1].frame_interval == 8
    tiny = models.ARCHS["slowonly_tiny"][1]
    assert (tiny.clip_len, tiny.frame_interval, tiny.crop_size, tiny.recipe) == (4, 4, 64, "demo")
    assert models.ARCHS["tsn_tiny"][1].crop_size == 64


def test_build_model_overrides_reach_the_network_and_its_spec():
    model = models.build_model("tsn_tiny", 3, num_segments=8, dropout=0.2, width=8, crop_size=32, recipe=None)
    assert model.spec.num_clips_train == 8 and model.dropout.p == 0.2 and model.fc.in_features == 64
    assert model.spec.crop_size == 32 and model.spec.recipe == "demo"
    model = models.build_model("slowonly_tiny", 3, clip_len=8, frame_interval=2, recipe="3d_scratch")
    assert (model.spec.clip_len, model.spec.frame_interval, model.spec.recipe) == (8, 2, "3d_scratch")
    with pytest.raises(ValueError, match="unknown override"):
        models.build_model("tsn_tiny", 3, segments=None)  # unknown names are refused even when None
    with pytest.raises(ValueError, match="recipe"):
        models.build_model("tsn_tiny", 3, recipe="imagenet")


def test_build_model_refuses_an_unknown_arch_listing_the_known_ones():
    with pytest.raises(ValueError) as err:
        models.build_model("tsn_r51", 10)
    message = str(err.value)
    assert "'tsn_r51'" in message and "\n" not in message
    assert all(name in message for name in models.ARCHS)


def test_build_model_pretrained_file_is_copied_into_tsn_and_inflated_into_slowonly(tmp_path):
    source = models.resnet(18, num_classes=1000, width=16, stem="small")   # the tiny nets' stem
    path = tmp_path / "r18w16.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    tsn = models.build_model("tsn_tiny", 5, pretrained=str(path))
    assert torch.equal(tsn.backbone.layer2[0].downsample[0].weight, source.layer2[0].downsample[0].weight)
    assert tsn.fc.weight.shape == (5, 128) and abs(tsn.fc.weight.std().item() - 0.01) < 0.003  # fresh 5-class fc
    net3d = models.build_model("slowonly_tiny", 5, pretrained=path)
    w2 = source.layer3[1].conv1.weight                                          # (64, 64, 3, 3)
    assert torch.equal(net3d.layer3[1].conv1.weight, (w2.unsqueeze(2).expand(-1, -1, 3, -1, -1) / 3))  # kernel / kt
    assert torch.equal(net3d.layer1[0].conv1.weight[:, :, 0], source.layer1[0].conv1.weight)  # kt = 1: copied
    with pytest.raises(ValueError, match="share no weight tensor"):
        models.build_model("tsn_r18", 5, pretrained=path)  # width 64 net, width 16 weights


def test_load_state_dict_file_unwraps_and_reports_missing(tmp_path):
    state = {"w": torch.ones(2)}
    torch.save({"model": state}, tmp_path / "a.pth")
    assert torch.equal(checkpoints.load_state_dict_file(tmp_path / "a.pth")["w"], state["w"])
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        checkpoints.load_state_dict_file(tmp_path / "missing.pth")


# ---------------------------------------------------------------- helpers


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _expand_module_list(text: str) -> dict[str, tuple]:
    """'name kind dims...' lines -> {state-dict key: shape} in torchvision's order."""
    keys = {}
    for line in text.strip().splitlines():
        name, kind, *dims = line.split()
        shape = tuple(int(d) for d in dims)
        if kind == "conv":
            keys[f"{name}.weight"] = shape
        elif kind == "linear":
            keys[f"{name}.weight"], keys[f"{name}.bias"] = shape, shape[:1]
        else:
            for p in ("weight", "bias", "running_mean", "running_var"):
                keys[f"{name}.{p}"] = shape
            keys[f"{name}.num_batches_tracked"] = ()
    return keys


def _torchvision_bottleneck_keys(layers) -> list[str]:
    """torchvision's Bottleneck ResNet key order, written from its source layout (not from models.py)."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = ["conv1.weight"] + [f"bn1.{p}" for p in bn]
    for stage, num_blocks in enumerate(layers, start=1):
        for b in range(num_blocks):
            prefix = f"layer{stage}.{b}."
            for i in (1, 2, 3):
                keys += [f"{prefix}conv{i}.weight"] + [f"{prefix}bn{i}.{p}" for p in bn]
            if b == 0:
                keys += [f"{prefix}downsample.0.weight"] + [f"{prefix}downsample.1.{p}" for p in bn]
    return keys + ["fc.weight", "fc.bias"]


def _randomised_eval(net: torch.nn.Module) -> torch.nn.Module:
    """float64, eval mode, random BN affine parameters and running statistics (so BN is not the identity)."""
    gen = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = 0.5 + torch.rand(c, generator=gen)
            m.bias.data = 0.1 * torch.randn(c, generator=gen)
            m.running_mean = 0.1 * torch.randn(c, generator=gen)
            m.running_var = 0.5 + torch.rand(c, generator=gen)
    return net.double().eval()
