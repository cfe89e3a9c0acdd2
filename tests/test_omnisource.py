"""Known-answer tests of the OmniSource joint-training pieces (Sec. 3.2, Eq. 1, Sec. 3.6, Sec. 5.2)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import omnisource


def test_eq1_is_the_sum_of_the_per_batch_losses():
    torch.manual_seed(0)
    sizes = [4, 2, 2]
    logits = torch.randn(sum(sizes), 5)
    labels = torch.randint(0, 5, (sum(sizes),))
    loss, per_source = omnisource.joint_loss(logits, labels, sizes)
    # computed another way: the summed cross-entropies of each mini-batch (Eq. 1), over the total count
    sums = [F.cross_entropy(l, y, reduction="sum") for l, y in zip(logits.split(sizes), labels.split(sizes))]
    assert torch.allclose(loss, sum(sums) / sum(sizes))
    assert torch.allclose(loss, torch.stack(per_source).sum())
    assert torch.allclose(per_source[1], sums[1] / sum(sizes))
    # soft one-hot targets give the same value as hard labels
    soft, _ = omnisource.joint_loss(logits, F.one_hot(labels, 5).float(), sizes)
    assert torch.allclose(soft, loss)


def test_eq1_takes_one_optimiser_step_on_the_summed_gradient():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 4)
    init = {k: v.detach().clone() for k, v in net.state_dict().items()}
    x_t, x_a = torch.randn(4, 3), torch.randn(2, 3)
    y_t, y_a = torch.randint(0, 4, (4,)), torch.randint(0, 4, (2,))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    calls = []
    orig_step = opt.step
    opt.step = lambda *a, **k: (calls.append(1), orig_step(*a, **k))
    loss, _ = omnisource.joint_loss(net(torch.cat([x_t, x_a])), torch.cat([y_t, y_a]), [4, 2])
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert len(calls) == 1
    # computed another way: gradients of the two mini-batch sums taken separately, added by hand
    grads = {k: torch.zeros_like(v) for k, v in init.items()}
    for x, y in ((x_t, y_t), (x_a, y_a)):
        m = torch.nn.Linear(3, 4)
        m.load_state_dict(init)
        (F.cross_entropy(m(x), y, reduction="sum") / 6).backward()
        grads["weight"] += m.weight.grad
        grads["bias"] += m.bias.grad
    for k, v in net.state_dict().items():
        assert torch.allclose(v, init[k] - 0.1 * grads[k], atol=1e-6)


def test_ratio_gives_the_stated_batch_sizes():
    assert omnisource.parse_ratio("", 1) == [2, 1]
    assert omnisource.parse_ratio("", 3) == [2, 1, 1, 1]
    assert omnisource.batch_sizes(16, omnisource.parse_ratio("2:1:1", 2)) == [16, 8, 8]
    assert omnisource.batch_sizes(8, omnisource.parse_ratio("1:1", 1)) == [8, 8]
    with pytest.raises(ValueError, match="--ratio"):
        omnisource.parse_ratio("2:1", 2)


def test_joint_batches_yield_one_batch_per_source():
    def loader(n_batches, size, value):
        return [(torch.full((size, 1), float(value)), torch.full((size,), value), torch.arange(size))
                for _ in range(n_batches)]
    jb = omnisource.JointBatches(loader(3, 4, 0), [loader(3, 2, 1), loader(3, 2, 2)])
    out = list(jb)
    assert len(out) == 3 == len(jb)
    clips, labels, sizes = out[0]
    assert sizes == [4, 2, 2] == [len(c) for c in clips]
    assert torch.cat(labels).tolist() == [0, 0, 0, 0, 1, 1, 2, 2]          # train.py concatenates on the device


@pytest.mark.parametrize("rule,expected", [
    ("none", [800 / 1110, 300 / 1110, 10 / 1110]),
    ("clip:100", [100 / 210, 100 / 210, 10 / 210]),
    ("power:0.2", None),
])
def test_resampling_gives_the_stated_class_distribution(rule, expected):
    labels = [0] * 800 + [1] * 300 + [2] * 10
    r = omnisource.Resampling.parse(rule)
    if expected is None:
        mass = np.array([800, 300, 10]) ** 0.2
        expected = mass / mass.sum()
    assert np.allclose(r.class_probabilities([800, 300, 10]), expected)
    sampler = omnisource.ClassResampler(labels, 60000, r, seed=1)
    drawn = np.bincount(np.asarray(labels)[list(sampler)], minlength=3) / 60000
    assert np.allclose(drawn, expected, atol=0.01)


def test_resampler_is_deterministic_per_epoch_and_differs_by_rank():
    labels = [0, 0, 1, 1, 1, 2]
    r = omnisource.Resampling.parse("power:0.5")
    a, b = omnisource.ClassResampler(labels, 50, r, seed=3), omnisource.ClassResampler(labels, 50, r, seed=3)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    c = omnisource.ClassResampler(labels, 50, r, seed=3, rank=1)
    assert list(c) != list(b)


def test_resample_none_cycles_through_every_sample():
    s = omnisource.ClassResampler([0, 1, 2, 3], 10, omnisource.Resampling.parse("none"))
    order = list(s)
    assert sorted(order[:4]) == [0, 1, 2, 3] and sorted(order[4:8]) == [0, 1, 2, 3]


def test_resample_rejects_bad_rules():
    for bad in ("uniform", "clip", "power:2", "power:x"):
        with pytest.raises(ValueError, match="--resample"):
            omnisource.Resampling.parse(bad)


def test_mixup_targets_sum_to_one_and_interpolate():
    rng = np.random.default_rng(0)
    clips = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1, 1).expand(4, 3, 2, 2, 2).clone()
    targets = F.one_hot(torch.tensor([0, 1, 2, 3]), 4).float()
    mixed, mt = omnisource.mixup(clips, targets, 0.4, np.random.default_rng(0))
    assert torch.allclose(mt.sum(1), torch.ones(4))
    lam = rng.beta(0.4, 0.4)
    perm = rng.permutation(4)
    for i in range(4):
        want = lam * i + (1 - lam) * perm[i]
        assert torch.allclose(mixed[i], torch.full_like(mixed[i], want), atol=1e-6)
        assert mt[i, i] == pytest.approx(lam + (1 - lam) * (perm[i] == i), abs=1e-6)


def test_confusion_score_and_pairs():
    # class 0 and 1 are confused 4 + 2 times, with 10 and 8 correct: s_01 = 6 / 24
    cm = np.array([[10, 4, 0], [2, 8, 0], [0, 0, 5]])
    s = omnisource.confusion_scores(cm)
    assert s[0, 1] == pytest.approx(6 / 24)
    assert s[0, 2] == 0
    better = np.array([[13, 1, 0], [1, 9, 0], [0, 1, 4]])
    pairs = omnisource.confusion_pairs(cm, better, ["a", "b", "c"])
    assert pairs["dropped"][0][:2] == ("a", "b")
    assert pairs["dropped"][0][4] == pytest.approx(2 / 24 - 6 / 24)
    assert pairs["rose"][0][:2] == ("b", "c")
