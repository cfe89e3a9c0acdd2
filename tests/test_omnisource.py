"""Known-answer tests of the OmniSource joint-training pieces (Sec. 3.2, Eq. 1, Sec. 3.6, Sec. 5.2), of how the
procedure builds its commands, and of the one-way import graph of the top-level modules."""
import argparse
import ast
import copy
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import figures
import filter as filter_module
import omnisource
import train
import webscale

ROOT = Path(__file__).resolve().parents[1]


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


def test_train_one_epoch_takes_one_optimiser_step_per_iteration_on_every_source(tmp_path):
    """train.train_one_epoch on a stub run: a linear net, a target and an auxiliary loader held in memory."""
    torch.manual_seed(0)
    k, sizes, steps = 3, [4, 2], 3
    batches = [[(torch.randn(n, 2, 1, 2, 2), torch.randint(0, k, (n,)), torch.arange(n)) for _ in range(steps)]
               for n in sizes]
    events = []
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, k))
    net.register_forward_hook(lambda module, inputs, output: events.append(("forward", len(inputs[0]))))
    init = copy.deepcopy(net.state_dict())
    opt = _CountingSGD(net.parameters(), lr=0.1, events=events)
    args = argparse.Namespace(amp="none", mixup=0.0, channels_last=False, clip_grad=0.0, log_interval=100,
                              save_every=0, work_dir=str(tmp_path))
    run = train.Run(args=args, model=net, net=net, classes=list("abc"), optimizer=opt,
                    schedule=types.SimpleNamespace(lr=lambda it: 0.1, epochs=1),
                    loader=omnisource.JointBatches(batches[0], [batches[1]]), val_loader=None,
                    source_names=["target", "web"], datasets=[], device=torch.device("cpu"))
    stats = train.train_one_epoch(run, 0)
    # one forward on the concatenated sum(sizes) rows, then ONE optimiser step, every iteration
    assert events == [("forward", sum(sizes)), ("step", None)] * steps
    # computed another way: plain SGD on the mean cross-entropy of [target batch, aux batch] of each step
    ref = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, k))
    ref.load_state_dict(init)
    losses = []
    for (x_t, y_t, _), (x_a, y_a, _) in zip(*batches):
        ref.zero_grad()
        loss = F.cross_entropy(ref(torch.cat([x_t, x_a])), torch.cat([y_t, y_a]))
        loss.backward()
        losses.append(loss.item())
        with torch.no_grad():
            for p in ref.parameters():
                p -= 0.1 * p.grad
    for name, value in ref.state_dict().items():
        assert torch.allclose(net.state_dict()[name], value, atol=1e-6), name
    assert stats["loss"] == pytest.approx(np.mean(losses), rel=1e-5)


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
    s = figures.confusion_scores(cm)
    assert s[0, 1] == pytest.approx(6 / 24)
    assert s[0, 2] == 0
    better = np.array([[13, 1, 0], [1, 9, 0], [0, 1, 4]])
    pairs = figures.confusion_pairs(cm, better, ["a", "b", "c"])
    assert pairs["dropped"][0][:2] == ("a", "b")
    assert pairs["dropped"][0][4] == pytest.approx(2 / 24 - 6 / 24)
    assert pairs["rose"][0][:2] == ("b", "c")


def test_step_commands_are_printed_as_typed_and_launched_with_this_python(tmp_path):
    shown, launched = omnisource.step_command("train.py", ["--epochs", "1"])
    assert shown[0] == "python" and Path(shown[1]).resolve() == ROOT / "train.py" and shown[2:] == ["--epochs", "1"]
    assert launched == [sys.executable, str(ROOT / "train.py"), "--epochs", "1"]
    shown, launched = omnisource.step_command("filter.py", ["--out", "x"], nproc=4)
    assert shown[:4] == ["torchrun", "--standalone", "--nproc-per-node", "4"] and shown[-2:] == ["--out", "x"]
    assert launched == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4",
                        str(ROOT / "filter.py"), "--out", "x"]


def test_read_metrics_takes_the_confusion_matrix_from_the_csv(tmp_path):
    (tmp_path / "metrics.json").write_text('{"top1": 0.5, "classes": ["a,b", "c"]}')
    (tmp_path / "confusion_matrix.csv").write_text("true\\pred,a,b,c\na,b,3,1\nc,2,4\n")
    assert figures.read_metrics(tmp_path)["confusion_matrix"] == [[3, 1], [2, 4]]


@pytest.mark.parametrize("argv,flag", [(["--ratio", "2:1"], "--ratio '2:1': expected 4 positive numbers"),
                                       (["--resample", "power:3"], "--resample 'power:3'"),
                                       (["--nproc", "0"], "--nproc 0: expected"),
                                       (["--sources", ""], "--sources: expected at least one")])
def test_bad_flags_of_the_last_steps_stop_the_procedure_before_it_starts(tmp_path, capsys, argv, flag):
    with pytest.raises(SystemExit) as stop:
        webscale.run_command(omnisource.main, omnisource.get_args_parser(),
                             ["--data-root", str(tmp_path / "d"), "--work-dir", str(tmp_path / "w"), *argv])
    assert str(stop.value).startswith(f"error: {flag}") and "\n" not in str(stop.value)
    assert capsys.readouterr().out == "" and not (tmp_path / "d").exists()      # no step printed, nothing generated


# the order in which the top-level modules may import each other: only modules of a lower layer
LAYERS = {"transforms": 0, "synthetic": 0, "webscale": 0, "checkpoints": 1, "data": 1, "models": 2, "figures": 2,
          "prepare": 2, "filter": 3, "omnisource": 4, "train": 5,
          "benchmark": 6}     # benchmark.py times the entry points' own functions in-process


def test_imports_flow_one_way_and_sit_at_the_top_of_every_module():
    modules = {p.stem: ast.parse(p.read_text(), filename=str(p)) for p in sorted(ROOT.glob("*.py"))}
    assert set(modules) == set(LAYERS), "place every top-level module in LAYERS"
    graph = {name: {n for node in tree.body for n in _imported(node) if n in modules} for name, tree in modules.items()}
    for name, imported in graph.items():
        assert all(LAYERS[n] < LAYERS[name] for n in imported), f"{name} imports {sorted(imported)}"
    assert not graph["omnisource"] & {"train"}
    for name, tree in modules.items():
        inner = [f"line {sub.lineno}: {ast.unparse(sub)}" for node in ast.walk(tree)
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                 for sub in ast.walk(node) if isinstance(sub, (ast.Import, ast.ImportFrom))]
        assert not inner, f"{name}.py imports inside a function or class: {sorted(set(inner))}"


def _imported(node: ast.AST) -> list[str]:
    """The top-level package names an import statement names."""
    if isinstance(node, ast.Import):
        return [a.name.split(".")[0] for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0:
        return [(node.module or "").split(".")[0]]
    return []


class _CountingSGD(torch.optim.SGD):
    """SGD that records each step in `events` (beside the net's forwards)."""

    def __init__(self, params, lr, events):
        super().__init__(params, lr=lr)
        self.events = events

    def step(self, closure=None):
        self.events.append(("step", None))
        return super().step(closure)


def test_the_module_docstring_names_the_methods_functions():
    listed = re.findall(r"^    \d\. [^\n]*?  +([A-Za-z_]\w*)", omnisource.__doc__, re.M)
    assert listed == ["joint_loss", "task_queries", "estimate_motion", "batch", "run_procedure"]
    assert all(hasattr(omnisource, n) for n in listed if n != "batch") and "JointBatches" in omnisource.__doc__


# ----------------------------------------------------------------------------------------------------------------------
# The paper's map (README "Paper to code") names what the commands run
# ----------------------------------------------------------------------------------------------------------------------

MODULES = ("omnisource", "train", "filter", "data", "transforms", "models")
# code the commands run: every top-level module except the benchmark (tests are not under ROOT/*.py)
COMMAND_CODE = {p.stem: ast.parse(p.read_text(), filename=str(p)) for p in sorted(ROOT.glob("*.py"))
                if p.stem != "benchmark"}


def mapped_names() -> list[str]:
    """Every module.function the code column (the last) of the README's "Paper to code" table names. In a cell a bare
    `name` after `module.name` belongs to that module ("`filter.main` -> `decide`")."""
    table = (ROOT / "README.md").read_text().split("## Paper to code")[1].split("\n## ")[0]
    names = set()
    for row in table.splitlines()[2:]:
        module = None
        for code in re.findall(r"`([^`]+)`", row.split("|")[-2] if row.count("|") >= 3 else ""):
            head = re.match(rf"({'|'.join(MODULES)})\.([A-Za-z_]\w*)$", code.strip())
            if head and head.group(2) != "py":
                module = head.group(1)
                names.add(head.groups())
            elif module and re.fullmatch(r"[A-Za-z_]\w*", code.strip()):
                names.add((module, code.strip()))
    return sorted(f"{m}.{f}" for m, f in names)


def referenced_by_the_commands(module: str, name: str) -> bool:
    """Whether `module.name` is used by the command code other than in its own definition: `module.name` from another
    module, or `name` inside `module` outside the body of its own def / class."""
    for other, tree in COMMAND_CODE.items():
        own = [n for n in ast.walk(tree) if other == module and isinstance(n, (ast.FunctionDef, ast.ClassDef))
               and n.name == name]
        inside = {id(sub) for d in own for sub in ast.walk(d)}
        for node in ast.walk(tree):
            if id(node) in inside:
                continue
            if other != module and isinstance(node, ast.Attribute) and node.attr == name and \
                    isinstance(node.value, ast.Name) and node.value.id == module:
                return True
            if other == module and isinstance(node, ast.Name) and node.id == name:
                return True
    return False


@pytest.mark.parametrize("name", mapped_names())
def test_the_paper_map_names_only_what_the_commands_run(name):
    module, function = name.split(".")
    assert referenced_by_the_commands(module, function), f"{name} is named by the map but no command runs it"


def test_the_map_parser_reads_both_maps():
    names = mapped_names()
    # one of each form: a README cell's first `module.name`, a bare name after it
    assert {"omnisource.joint_loss", "transforms.image_to_clip", "omnisource.ClassResampler", "filter.best_match",
            "train.Schedule"} <= set(names) and len(names) >= 30


def test_the_procedures_rule_is_checked_by_filter_parse_rule(monkeypatch):
    """omnisource.py passes --rule to filter.py and checks it with filter.parse_rule before any step: a rule added to
    filter.RULES is accepted with its value, a bad name or value is refused in one line naming the flag."""
    monkeypatch.setitem(filter_module.RULES, "topk", (lambda labels, p, k, t, n: np.full(k, t), int))
    base = ["--sources", "web", "--arch", "tsn_tiny"]
    omnisource._check_args(omnisource.get_args_parser().parse_args(base + ["--rule", "topk:3"]))
    for bad in ("bogus", "topk", "topk:x", "fixed:1"):
        with pytest.raises(ValueError, match=f"--rule {bad}: expected one of fixed, class-adaptive, topk:INT"):
            omnisource._check_args(omnisource.get_args_parser().parse_args(base + ["--rule", bad]))
