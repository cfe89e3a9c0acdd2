"""Tests of models.load_weights, models.mmaction_checkpoint and the irCSN-152 (Table 7's best architecture).

Known answers come from elsewhere: MMAction2 1.2.0's own state-dict key files (tests/data/mmaction_keys_*.txt,
written by MMAction2 from its configs) and its irCSN-152 parameter count; the outputs of the network that wrote a
checkpoint; and files written here the way train.py, MMAction2 0.x (mmcv) / 1.x (mmengine) and torchvision write
them.  MMAction2 is not imported: the mmengine objects of a real 1.x checkpoint (HistoryBuffer, a
getattr(HistoryBuffer, 'min') reference, numpy arrays and scalars -- the globals of a file written by mmengine
0.10.7's Runner) are imitated by look-alike classes registered under mmengine's module names only while saving.
The numeric match with MMAction2 itself (max abs difference 0) is checked outside the suite, see models.py.
"""
import collections
import random
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import checkpoints
import models  # noqa: E402
from mmaction_reference import DATA, KEY_FILES, read_key_file  # noqa: E402




pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny inputs (conftest.py)


@pytest.fixture(scope="module")
def big_models():
    """The four MMAction2-comparable nets, built once (about 5 s)."""
    return {name: models.build_model(name, 400) for name in KEY_FILES}


# ---------------------------------------------------------------- format detection, one test per kind


def test_train_py_checkpoint(tmp_path):
    src = _randomised(models.build_model("tsn_tiny", 5))
    sgd = torch.optim.SGD(src.parameters(), lr=0.1, momentum=0.9)
    path = tmp_path / "latest.pth"
    torch.save({"model": src.state_dict(), "arch": "tsn_tiny", "model_args": {}, "classes": list("abcde"),
                "epoch": 3, "optimizer": sgd.state_dict(), "best_top1": 0.5, "args": {"lr": 0.1},
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.default_rng(0).bit_generator.state,
                        "python": random.getstate()}}, path)
    dst = models.build_model("tsn_tiny", 5).eval()
    report = models.load_weights(dst, path)
    assert report.format == "train.py" and report.classes == list("abcde")
    assert report.copied == list(dst.state_dict()) and not report.missing and not report.skipped
    _assert_same_outputs(src, dst, t=3)


def test_mmaction2_1x_checkpoint_with_mmengine_objects(tmp_path, monkeypatch):
    src = _randomised(models.build_model("slowonly_tiny", 4))
    path = tmp_path / "epoch_1.pth"
    _register_fake_mmengine(monkeypatch)
    sgd = torch.optim.SGD(src.parameters(), lr=0.1, momentum=0.9)
    torch.save({
        "meta": {"epoch": 1, "iter": 2, "cfg": "model = dict(...)", "seed": 0, "experiment_name": "x",
                 "time": "20240101_000000", "mmengine_version": "0.10.7",
                 "dataset_meta": {"classes": ("w", "x", "y", "z")}},
        "state_dict": _mmaction_layout(src),
        "message_hub": {"log_scalars": collections.OrderedDict([("train/loss", HistoryBuffer([1.2, 1.1]))]),
                        "runtime_info": collections.OrderedDict([("eta", np.float64(12.5)), ("iter", 2)]),
                        "resumed_keys": {"train/loss": True}},
        "optimizer": sgd.state_dict(),
        "param_schedulers": [{"start_factor": 0.1, "base_values": [0.1], "last_step": 1, "by_epoch": True}],
    }, path)
    for name in _FAKE_MODULES:  # mmengine is gone when the file is read
        monkeypatch.delitem(sys.modules, name)
    # the same globals as a real Runner file; torch's weights_only alone refuses it
    assert {"builtins.getattr", "mmengine.logging.history_buffer.HistoryBuffer", "numpy.ndarray",
            "numpy._core.multiarray.scalar"} <= set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    with pytest.raises(Exception, match="HistoryBuffer"):
        torch.load(path, weights_only=True)
    dst = models.build_model("slowonly_tiny", 4).eval()
    report = models.load_weights(dst, path)
    assert report.format == "mmaction2-1.x" and report.classes == ["w", "x", "y", "z"]
    assert len(report.copied) == len(dst.state_dict()) and not report.missing
    _assert_same_outputs(src, dst, t=4)


def test_mmaction2_0x_checkpoint(tmp_path):
    src = _randomised(models.build_model("tsn_tiny", 6))
    sgd = torch.optim.SGD(src.parameters(), lr=0.0, momentum=0.9)
    src(torch.randn(1, 3, 2, 32, 32)).sum().backward()
    sgd.step()  # momentum buffers in the optimizer state; lr 0 keeps the randomised weights (finite outputs)
    path = tmp_path / "tsn_0x.pth"
    meta = {"mmcv_version": "1.3.1", "time": "Sat Sep 26 2020", "env_info": "sys.platform: linux", "seed": 0,
            "config": "model = dict(type='Recognizer2D')", "epoch": 100, "iter": 100,
            "hook_msgs": {"last_ckpt": "epoch_100.pth"}}
    torch.save({"meta": meta, "state_dict": _mmaction_layout(src), "optimizer": sgd.state_dict()}, path)
    dst = models.build_model("tsn_tiny", 6).eval()
    report = models.load_weights(dst, path)
    assert report.format == "mmaction2-0.x" and report.classes is None
    _assert_same_outputs(src.eval(), dst, t=3)


def test_torchvision_resnet_into_tsn_copied_and_into_slowonly_inflated(tmp_path):
    src = _randomised(models.resnet(18, num_classes=1000, width=16, stem="small"))   # the tiny nets' stem
    path = tmp_path / "resnet18.pth"
    torch.save(src.state_dict(), path)
    tsn = models.build_model("tsn_tiny", 5).eval()
    with pytest.raises(ValueError, match="has 1000 classes but the model has 5"):
        models.load_weights(tsn, path)  # the ImageNet head is a head with another class count
    report = models.load_weights(tsn, path, finetune=True)
    assert report.format == "torchvision" and len(report.skipped) == 2 and not report.inflated
    frames = torch.randn(2, 3, 1, 32, 32)
    torch.testing.assert_close(tsn.features(frames), src.features(frames[:, :, 0]), rtol=0, atol=0)
    net3d = models.build_model("slowonly_tiny", 5)
    report = models.load_weights(net3d, path, finetune=True)
    assert report.format == "torchvision" and len(report.inflated) == 20
    assert torch.allclose(net3d.layer4[1].conv1.weight.sum(2), src.layer4[1].conv1.weight)
    plain = models.resnet(18, num_classes=1000, width=16, stem="small").eval()   # a 2D ResNet takes the ImageNet head
    assert "fc.weight" in models.load_weights(plain, path).copied


@pytest.mark.parametrize("layout", ["ours", "module.", "mmaction2"])
def test_bare_state_dicts(tmp_path, layout):
    src = _randomised(models.build_model("tsn_tiny", 3))
    state = {"ours": src.state_dict(), "mmaction2": _mmaction_layout(src),
             "module.": {"module." + k: v for k, v in src.state_dict().items()}}[layout]
    torch.save(state, tmp_path / "bare.pth")
    torch.save({"state_dict": state}, tmp_path / "wrapped.pth")
    for name in ("bare.pth", "wrapped.pth"):
        dst = models.build_model("tsn_tiny", 3).eval()
        assert models.load_weights(dst, tmp_path / name).format == "state_dict"
        _assert_same_outputs(src, dst, t=2)


def test_mmaction2_backbone_only_and_torchvision_backbone_layouts(tmp_path):
    csn = _randomised(models.ircsn_resnet(50, 3, width=8))
    backbone_only = {k.removeprefix("backbone."): v for k, v in _mmaction_layout(csn).items()
                     if k.startswith("backbone.")}  # an MMAction2 `pretrained=` file (e.g. IG-65M irCSN)
    assert "layer1.0.conv2.0.conv.weight" in backbone_only
    torch.save({"state_dict": backbone_only}, tmp_path / "ig65m_like.pth")
    dst = models.ircsn_resnet(50, 3, width=8)
    report = models.load_weights(dst, tmp_path / "ig65m_like.pth", finetune=True)
    assert len(report.copied) == len(dst.state_dict()) - 2 and report.missing == ["fc.weight", "fc.bias"]
    tsn = _randomised(models.build_model("tsn_tiny", 3))  # MMAction2 recognizer with a torchvision backbone
    tv_backbone = {"backbone." + k: v for k, v in tsn.backbone.state_dict().items()}  # 'backbone.conv1.weight'
    tv_backbone.update({"cls_head.fc_cls.weight": tsn.fc.weight, "cls_head.fc_cls.bias": tsn.fc.bias})
    torch.save({"meta": {}, "state_dict": tv_backbone}, tmp_path / "tv_backbone.pth")
    dst = models.build_model("tsn_tiny", 3).eval()
    assert models.load_weights(dst, tmp_path / "tv_backbone.pth").format == "mmaction2-1.x"
    _assert_same_outputs(tsn, dst, t=2)


def test_unknown_files_are_refused_with_one_line(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pth")
    torch.save({"epoch": 3, "note": "no weights"}, tmp_path / "dict.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    model = models.build_model("tsn_tiny", 3)
    for name, message in (("list.pth", "not a checkpoint dict"), ("dict.pth", "none of the checkpoint formats"),
                          ("junk.pth", "cannot be read")):
        with pytest.raises(ValueError, match=message) as err:
            models.load_weights(model, tmp_path / name)
        assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        models.load_weights(model, tmp_path / "absent.pth")


# ---------------------------------------------------------------- key mapping against MMAction2's key lists


@pytest.mark.parametrize("arch", sorted(KEY_FILES))
def test_mmaction2_key_lists_load_completely(arch, big_models, tmp_path):
    """A checkpoint with exactly MMAction2's keys, shapes and dtypes fills every tensor of our model."""
    filename, family, _ = KEY_FILES[arch]
    theirs = read_key_file(DATA / filename)
    model = big_models[arch]
    assert [checkpoints.mmaction_key(k, family) for k in model.state_dict()] == list(theirs)
    dtypes = {"float32": torch.float32, "int64": torch.int64}
    state = {k: torch.full((), 0.5 if dtype == "float32" else 3, dtype=dtypes[dtype]).expand(shape)
             for k, (shape, dtype) in theirs.items()}  # stride-0 tensors: the file stays a few KB
    path = tmp_path / f"{arch}.pth"
    torch.save({"meta": {"mmengine_version": "0.10.7"}, "state_dict": state}, path)
    report = models.load_weights(model, path)
    assert len(report.copied) == len(theirs) and not (report.missing or report.inflated or report.skipped)
    loaded = model.state_dict()
    assert torch.all(loaded["fc.weight"] == 0.5)
    assert loaded[("backbone." if family == "tsn" else "") + "bn1.num_batches_tracked"].item() == 3


def test_ircsn_r152_parameter_count_and_shapes_equal_mmaction2(big_models):
    model = big_models["ircsn_r152_32x2"]
    assert sum(p.numel() for p in model.parameters()) == 29_703_568
    theirs = read_key_file(DATA / "mmaction_keys_ircsn_r152.txt")
    mapped = {checkpoints.mmaction_key(k, "3d"): (tuple(v.shape), str(v.dtype).removeprefix("torch."))
              for k, v in model.state_dict().items()}
    assert len(theirs) == 932 and mapped == theirs and list(mapped) == list(theirs)
    assert checkpoints.mmaction_key("layer3.35.bn2_dw.running_var", "3d") == "backbone.layer3.35.conv2.0.bn.running_var"


def test_ircsn_layout_facts(big_models):
    net = big_models["ircsn_r152_32x2"]
    assert (net.conv1.kernel_size, net.conv1.stride, net.conv1.padding) == ((3, 7, 7), (1, 2, 2), (1, 3, 3))
    assert (net.maxpool.kernel_size, net.maxpool.stride) == ((1, 3, 3), (1, 2, 2))
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == [3, 8, 36, 3]
    for i, stride in ((1, 1), (2, 2), (3, 2), (4, 2)):
        first = getattr(net, f"layer{i}")[0]
        planes = 64 * 2 ** (i - 1)
        assert first.conv2_dw.stride == (stride,) * 3 and first.conv2_dw.groups == planes
        assert first.conv2_dw.weight.shape == (planes, 1, 3, 3, 3) and first.downsample[0].stride == (stride,) * 3
    small = models.ircsn_resnet(50, 3, width=8).eval()
    for m in small.modules():
        if isinstance(m, torch.nn.BatchNorm3d):  # caffe2's eps; no zero-init of the last BN (config's choice)
            assert m.eps == 1e-3 and torch.all(m.weight == 1)
    spec = net.spec
    assert (spec.family, spec.clip_len, spec.frame_interval, spec.num_clips_test, spec.crops_test) == ("3d", 32, 2,
                                                                                                          10, 3)
    assert spec.recipe == "ircsn_ig65m" and "ircsn_ig65m" in models.RECIPES
    assert small.feature_map(torch.randn(1, 3, 32, 32, 32)).shape == (1, 256, 4, 1, 1)  # time / 8


@torch.no_grad()
def test_csn_depthwise_conv_is_per_channel():
    """Golden: the block's 3x3x3 conv equals one single-channel conv per channel."""
    block = models.CSNBottleneck(16, 4, stride=2).eval()
    x = torch.randn(1, 4, 6, 8, 8)
    conv = block.conv2_dw
    per_channel = torch.cat([torch.nn.functional.conv3d(x[:, c:c + 1], conv.weight[c:c + 1], stride=2, padding=1)
                             for c in range(4)], dim=1)
    torch.testing.assert_close(conv(x), per_channel)


# ---------------------------------------------------------------- errors and finetune


def test_unmatched_keys_error_lists_them_and_loads_nothing(tmp_path):
    src = _randomised(models.build_model("tsn_tiny", 3))
    state = _mmaction_layout(src)
    state["cls_head.fc_extra.weight"] = torch.zeros(3)
    state["backbone.layer9.0.conv1.conv.weight"] = torch.zeros(1)
    torch.save({"meta": {}, "state_dict": state}, tmp_path / "extra.pth")
    dst = models.build_model("tsn_tiny", 3)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ValueError, match="2 checkpoint key") as err:
        models.load_weights(dst, tmp_path / "extra.pth")
    assert "cls_head.fc_extra.weight" in str(err.value) and "backbone.layer9.0.conv1.conv.weight" in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())


def test_missing_and_misshapen_tensors_are_errors(tmp_path):
    src = models.build_model("slowonly_tiny", 3).state_dict()
    missing = {k: v for k, v in src.items() if k != "layer2.1.conv1.weight" and "num_batches" not in k}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"1 model tensor\(s\) are not in the checkpoint: layer2.1.conv1.weight$"):
        models.load_weights(models.build_model("slowonly_tiny", 3), tmp_path / "missing.pth")
    misshapen = dict(src, **{"layer1.0.bn1.weight": torch.ones(5)})
    torch.save(misshapen, tmp_path / "misshapen.pth")
    with pytest.raises(ValueError, match=r"layer1.0.bn1.weight \(5,\) vs \(16,\)"):
        models.load_weights(models.build_model("slowonly_tiny", 3), tmp_path / "misshapen.pth")


def test_class_count_mismatch_error_says_both_counts(tmp_path):
    torch.save(_mmaction_layout(models.build_model("tsn_tiny", 7)), tmp_path / "seven.pth")
    with pytest.raises(ValueError, match="classifier has 7 classes but the model has 5; pass finetune=True") as err:
        models.load_weights(models.build_model("tsn_tiny", 5), tmp_path / "seven.pth")
    assert "\n" not in str(err.value)
    backbone = {k: v for k, v in models.build_model("tsn_tiny", 5).state_dict().items() if not k.startswith("fc.")}
    torch.save(backbone, tmp_path / "headless.pth")
    with pytest.raises(ValueError, match="no classifier"):
        models.load_weights(models.build_model("tsn_tiny", 5), tmp_path / "headless.pth")


@pytest.mark.parametrize("source_classes", [7, 5])
def test_finetune_loads_the_backbone_only(tmp_path, source_classes):
    src = _randomised(models.build_model("slowonly_tiny", source_classes))
    torch.save({"meta": {}, "state_dict": _mmaction_layout(src)}, tmp_path / "src.pth")
    dst = models.build_model("slowonly_tiny", 5).eval()
    fresh_fc = dst.fc.weight.clone()
    report = models.load_weights(dst, tmp_path / "src.pth", finetune=True)
    assert [s.split(":")[0] for s in report.skipped] == ["fc.weight", "fc.bias"]
    assert f"checkpoint: {source_classes}" in report.skipped[0]
    assert torch.equal(dst.fc.weight, fresh_fc) and not any(k.startswith("fc.") for k in report.copied)
    clip = torch.randn(2, 3, 4, 32, 32)
    torch.testing.assert_close(dst.features(clip), src.features(clip), rtol=0, atol=0)


# ---------------------------------------------------------------- export


@pytest.mark.parametrize("arch", ["tsn_tiny", "slowonly_tiny", "ircsn_small"])
def test_export_round_trip_gives_identical_outputs(tmp_path, arch):
    def build():
        return models.ircsn_resnet(50, 4, width=8) if arch == "ircsn_small" else models.build_model(arch, 4)
    src = _randomised(build())
    path = tmp_path / "export.pth"
    torch.save(models.mmaction_checkpoint(src, ["a", "b", "c", "d"]), path)
    raw = torch.load(path, weights_only=True)  # plain data only: MMAction2 reads it without allow-lists
    family = "tsn" if arch == "tsn_tiny" else "3d"
    assert list(raw["state_dict"]) == [checkpoints.mmaction_key(k, family) for k in src.state_dict()]
    assert raw["meta"]["dataset_meta"] == {"classes": ["a", "b", "c", "d"]}
    dst = build().eval()
    report = models.load_weights(dst, path)
    assert report.format == "mmaction2-1.x" and report.classes == ["a", "b", "c", "d"]
    assert len(report.copied) == len(dst.state_dict())
    _assert_same_outputs(src, dst, t=4 if arch != "ircsn_small" else 8)


def test_export_names_the_mmaction2_config_and_refuses_bad_input(tmp_path):
    tsn = models.build_model("tsn_r50", 400)
    torch.save(models.mmaction_checkpoint(tsn), tmp_path / "tsn.pth")
    meta = torch.load(tmp_path / "tsn.pth", weights_only=True)["meta"]
    assert meta["mmaction2_config"].endswith("tsn_imagenet-pretrained-r50_8xb32-1x1x3-100e_kinetics400-rgb.py")
    assert meta["arch"] == "tsn_r50" and "dataset_meta" not in meta
    with pytest.raises(ValueError, match="3 class names given for a 400-class model"):
        models.mmaction_checkpoint(tsn, ["a", "b", "c"])
    with pytest.raises(ValueError, match="only TSN / SlowOnly / irCSN"):
        models.mmaction_checkpoint(models.resnet(18))


# ---------------------------------------------------------------- weights-only safety


class Payload:
    """Pickles as a call of `action(*args)`: what a malicious checkpoint does."""

    def __init__(self, action, *args):
        self.action, self.args = action, args

    def __reduce__(self):
        return self.action, self.args


def test_malicious_reduce_objects_are_refused(tmp_path):
    target = tmp_path / "pwned"
    gadgets = {
        "os": Payload(__import__("os").makedirs, str(target)),  # a module torch blocks outright
        "exec": Payload(exec, f"open({str(target)!r}, 'w')"),
        "shutil": Payload(__import__("shutil").copyfile, __file__, str(target)),
        # a method reached through the allow-listed getattr ('builtins.getattr' is inert here), then called
        "getattr": Payload(collections.OrderedDict().update, {"pwned": 1}),
    }
    model = models.build_model("tsn_tiny", 3)
    for name, gadget in gadgets.items():
        path = tmp_path / f"{name}.pth"
        torch.save({"meta": {}, "state_dict": _mmaction_layout(model), "message_hub": gadget}, path)
        with pytest.raises(ValueError, match="cannot be read by weights-only loading") as err:
            models.load_weights(model, path)
        assert "\n" not in str(err.value)
        assert not target.exists(), name


def test_openmmlab_names_become_inert_records(tmp_path, monkeypatch):
    """A global under an OpenMMLab module name is bound to an inert record: its code never runs."""
    module = types.ModuleType("mmengine.evil")
    target = tmp_path / "pwned"
    module.run = lambda path: Path(path).touch()
    module.run.__module__, module.run.__qualname__ = "mmengine.evil", "run"
    monkeypatch.setitem(sys.modules, "mmengine", types.ModuleType("mmengine"))
    monkeypatch.setitem(sys.modules, "mmengine.evil", module)
    model = models.build_model("tsn_tiny", 3)
    path = tmp_path / "record.pth"
    torch.save({"meta": {}, "state_dict": _mmaction_layout(model), "message_hub": Payload(module.run, str(target))},
               path)
    monkeypatch.delitem(sys.modules, "mmengine.evil")
    assert models.load_weights(model, path).format == "mmaction2-1.x"
    assert not target.exists()
    record = checkpoints.safe_load(path, "test")["message_hub"]
    assert type(record).__name__ == "_OpenMMLabRecord" and record.args == (str(target),)


# ---------------------------------------------------------------- helpers

_FAKE_MODULES = ("mmengine", "mmengine.logging", "mmengine.logging.history_buffer")


class HistoryBuffer:
    """Look-alike of mmengine.logging.history_buffer.HistoryBuffer as pickled inside 'message_hub'."""

    def __init__(self, values):
        self.max_length = 1000000
        self._log_history = np.asarray(values, dtype=np.float64)
        self._count_history = np.ones(len(values), dtype=np.int64)
        self.statistics_methods = {"min": HistoryBuffer.min, "max": HistoryBuffer.max}  # -> getattr(cls, 'min')

    def min(self):
        return self._log_history.min()

    def max(self):
        return self._log_history.max()


def _register_fake_mmengine(monkeypatch):
    leaf = types.ModuleType(_FAKE_MODULES[-1])
    leaf.HistoryBuffer = HistoryBuffer
    for obj in (HistoryBuffer, HistoryBuffer.min, HistoryBuffer.max):
        obj.__module__ = leaf.__name__
    for name in _FAKE_MODULES[:-1]:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, leaf.__name__, leaf)


def _mmaction_layout(model: torch.nn.Module) -> dict:
    family = "tsn" if isinstance(model, models.TSN) else "3d"
    return {checkpoints.mmaction_key(k, family): v for k, v in model.state_dict().items()}


def _randomised(net: torch.nn.Module) -> torch.nn.Module:
    """Eval mode, random BN affine parameters and statistics, random fc: every tensor matters for the output."""
    gen = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.weight.data = 0.5 + torch.rand(c, generator=gen)
            m.bias.data = 0.1 * torch.randn(c, generator=gen)
            m.running_mean = 0.1 * torch.randn(c, generator=gen)
            m.running_var = 0.5 + torch.rand(c, generator=gen)
        elif isinstance(m, torch.nn.Linear):
            m.weight.data = torch.randn(m.weight.shape, generator=gen)
    return net.eval()


@torch.no_grad()
def _assert_same_outputs(src: torch.nn.Module, dst: torch.nn.Module, t: int) -> None:
    x = torch.randn(2, 3, t, 32, 32)
    out = src.eval()(x)
    assert torch.isfinite(out).all() and torch.equal(out, dst.eval()(x))
