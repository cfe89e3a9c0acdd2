"""Checkpoints in and out, and the commands' resume state (support module: the method does not need it).

1. Reading any checkpoint safely (`safe_load`: weights-only unpickling, never any pickled code) and telling its
   format (CHECKPOINT_FORMATS: ours, MMAction2 0.x / 1.x, torchvision, a bare state dict) with its state dict and
   class names (`detect_format`); models.load_weights maps the keys into a model and checks them.
2. THE key table between our models and MMAction2 (MMACTION_KEY_TABLE, `mmaction_key`, `plain_key`): every name
   translation is here, in both directions (export: models.mmaction_checkpoint).
3. train.py's latest.pth: what an exact --resume needs (`save_checkpoint`, `resume_train_state`: weights, optimiser,
   schedule position, meters, every rank's random state, the log's length) and its one-line refusals
   (`check_resume_args`, `refuse_used_work_dir`).
4. train.py's final test: the weights it evaluates, read by rank 0 alone and sent to the other ranks
   (`weights_to_test`, `load_on_rank0`), and its result files predictions.jsonl, confusion_matrix.csv and
   metrics.json (`write_predictions`, `write_results`).
5. omnisource.py's steps.json: the steps of a procedure that finished, skipped by --resume, and its flags
   (`finished_steps`, `mark_step`, `check_procedure`).
`run` is train.Run, duck-typed: this module imports none of the method's modules.
"""
from __future__ import annotations

import argparse
import json
import pickle
import random
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

import webscale


# ----------------------------------------------------------------------------------------------------------------------
# 1. Reading any checkpoint safely, and its format
# ----------------------------------------------------------------------------------------------------------------------


# What `load_weights` recognises (LoadReport.format), checked in this order:
CHECKPOINT_FORMATS = {
    "train.py": "our train.py checkpoint: {'model': state dict, 'arch', 'classes', ...}",
    "mmaction2-0.x": "MMAction2 0.x / mmcv 1.x: {'state_dict', 'meta' with 'mmcv_version', maybe 'optimizer'}",
    "mmaction2-1.x": "MMAction2 1.x / mmengine: {'state_dict', 'meta', maybe 'message_hub', 'optimizer', "
                     "'param_schedulers'} (also what mmaction_checkpoint gives)",
    "torchvision": "a 2D ImageNet ResNet state dict in torchvision names (bare or under 'state_dict' / 'model')",
    "state_dict": "a bare state dict (or under 'state_dict' / 'model') in our names or MMAction2's",
}


def safe_load(path: Path, who: str):
    """torch.load(weights_only=True) on CPU with `_allowed_globals`; failures become one-line errors.

    weights_only unpickling builds tensors and plain Python containers only.  Real MMAction2 1.x checkpoints
    (mmengine 0.10.7's Runner + CheckpointHook, checked) also hold numpy arrays and scalars, mmengine HistoryBuffer
    objects and `getattr(HistoryBuffer, 'min')` references in 'message_hub' and 'meta'.  Allowed for them, and only
    them: numpy's data rebuilders; every OpenMMLab-module global found in the file, bound to the inert
    `_OpenMMLabRecord` (no OpenMMLab code is imported or run; they are bookkeeping, never weights); and
    'builtins.getattr' bound to `_inert_getattr`.  Anything else -- os.system, eval, any other class or function a
    malicious __reduce__ names -- is refused: no arbitrary pickle is ever executed.
    """
    if not path.is_file():
        raise FileNotFoundError(f"models.{who}: no checkpoint file at {path}")
    try:
        with torch.serialization.safe_globals(_allowed_globals(path)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"models.{who}: {path} cannot be read by weights-only loading ({_unpickling_reason(err)}): "
                         f"only tensors, plain data, numpy arrays and OpenMMLab bookkeeping records are accepted, "
                         f"never pickled code") from None
    except (RuntimeError, EOFError) as err:
        raise ValueError(f"models.{who}: {path} is not a readable PyTorch checkpoint "
                         f"({str(err).splitlines()[0][:100]})") from None


def detect_format(obj, path: Path) -> tuple[str, dict, list[str] | None]:
    """load_weights step 2 -> (CHECKPOINT_FORMATS key, state dict, class names or None)."""
    if not isinstance(obj, dict):
        raise ValueError(f"models.load_weights: {path} holds a {type(obj).__name__}, not a checkpoint dict")
    if {"model", "arch", "classes"} <= obj.keys() and isinstance(obj["model"], dict):
        return "train.py", obj["model"], [str(c) for c in obj["classes"]]
    if isinstance(obj.get("state_dict"), dict) and isinstance(obj.get("meta"), dict):
        meta = obj["meta"]  # mmcv 1.x's save_checkpoint always writes mmcv_version; mmengine's never does
        dataset_meta = meta.get("dataset_meta")
        classes = dataset_meta.get("classes") if isinstance(dataset_meta, dict) else None
        fmt = "mmaction2-0.x" if "mmcv_version" in meta else "mmaction2-1.x"
        return fmt, obj["state_dict"], None if classes is None else [str(c) for c in classes]
    state = next((obj[w] for w in ("state_dict", "model") if isinstance(obj.get(w), dict)), obj)
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"models.load_weights: {path} is none of the checkpoint formats "
                         f"{', '.join(CHECKPOINT_FORMATS)} (no state dict of tensors in it)")
    return ("torchvision" if _is_torchvision_layout(state) else "state_dict"), state, None


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """torch.load a checkpoint on CPU (weights only) and unwrap {'state_dict': ...} / {'model': ...}."""
    path = Path(path)
    obj = safe_load(path, "load_state_dict_file")
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"checkpoints.load_state_dict_file: {path} does not hold a state dict of tensors")
    return obj


def _is_torchvision_layout(state: dict) -> bool:
    """torchvision's 2D ResNet names: a 4-D 'conv1.weight' and 'layer1.0.conv1.weight', no prefix but 'module.'."""
    keys = {k.removeprefix("module."): v for k, v in state.items()}
    return "layer1.0.conv1.weight" in keys and keys.get("conv1.weight", torch.empty(0)).dim() == 4


_OPENMMLAB_MODULES = ("mmengine", "mmcv", "mmaction", "mmcls", "mmpretrain", "mmdet")


class _OpenMMLabRecord:
    """Inert stand-in for an OpenMMLab object inside a checkpoint (mmengine's HistoryBuffer in 'message_hub', ...).

    It keeps what the pickle hands it as plain data; none of the original class's code exists here or runs.
    """

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state


def _inert_getattr(obj, name, *default) -> _OpenMMLabRecord:
    """Bound to 'builtins.getattr' while reading: mmengine pickles `getattr(HistoryBuffer, 'min')`; nothing is
    looked up, a record is returned instead."""
    return _OpenMMLabRecord("getattr", str(name))


def _numpy_globals() -> list:
    """numpy's array / scalar / dtype rebuilders under their numpy 1.x and 2.x pickle names: they rebuild data only."""
    reconstruct = np.ndarray.__reduce__(np.zeros(0))[0]  # numpy.(_)core.multiarray._reconstruct
    scalar = np.float64(0).__reduce__()[0]  # numpy.(_)core.multiarray.scalar
    names = [(f, f"{module}.{f.__name__}") for f in (reconstruct, scalar)
             for module in ("numpy.core.multiarray", "numpy._core.multiarray")]
    dtype_classes = [type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDGSUVO"]  # numpy.dtypes.*DType (numpy >= 1.25)
    return [np.ndarray, np.dtype, *names, *dtype_classes]


def _allowed_globals(path: Path) -> list:
    """The extra allow-list for one file: numpy rebuilders, the inert getattr, and the file's OpenMMLab names."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (ValueError, RuntimeError):  # not a zip checkpoint: only the fixed entries apply
        names = []
    records = [(_OpenMMLabRecord, n) for n in names if n.split(".")[0] in _OPENMMLAB_MODULES]
    return [*_numpy_globals(), (_inert_getattr, "builtins.getattr"), *records]


def _unpickling_reason(err: Exception) -> str:
    """The useful line of torch's long weights-only error, e.g. 'unsupported global os.system'."""
    message = str(err)
    name = re.search(r"GLOBAL (\S+)", message)
    if name:
        return f"unsupported global {name.group(1)}"
    found = re.search(r"WeightsUnpickler error:\s*(.+)", message)
    return (found.group(1) if found else message.strip().splitlines()[0])[:120]


# ----------------------------------------------------------------------------------------------------------------------
# 2. THE key table between our models and MMAction2
# ----------------------------------------------------------------------------------------------------------------------


# One row per kind of tensor: (our key in the plain ResNet layout, MMAction2's key).  Placeholders: {L} stage 1-4,
# {B} block index, {K} conv index 1-3, {P} tensor name (weight, bias, running_mean, running_var, num_batches_tracked).
# The plain layout is the 2D ResNet's / SlowOnly's / irCSN's own key; a TSN adds "backbone." in front of all but fc.
# Around the table (`plain_key`): a 'module.' prefix (DataParallel) is dropped; MMAction2 backbone-only files (the
# `pretrained=` weights, e.g. IG-65M irCSN) lack 'backbone.' and are read as if it were there; MMAction2 recognizers
# with a torchvision backbone ('backbone.conv1.weight', 'backbone.bn1.*') are plain keys under 'backbone.'.
MMACTION_KEY_TABLE = (
    ("conv1.weight", "backbone.conv1.conv.weight"),
    ("bn1.{P}", "backbone.conv1.bn.{P}"),
    ("layer{L}.{B}.conv{K}.weight", "backbone.layer{L}.{B}.conv{K}.conv.weight"),
    ("layer{L}.{B}.bn{K}.{P}", "backbone.layer{L}.{B}.conv{K}.bn.{P}"),
    ("layer{L}.{B}.conv2_dw.weight", "backbone.layer{L}.{B}.conv2.0.conv.weight"),  # irCSN depthwise 3x3x3
    ("layer{L}.{B}.bn2_dw.{P}", "backbone.layer{L}.{B}.conv2.0.bn.{P}"),  # irCSN ('ir': conv2 = Sequential(dw))
    ("layer{L}.{B}.downsample.0.weight", "backbone.layer{L}.{B}.downsample.conv.weight"),
    ("layer{L}.{B}.downsample.1.{P}", "backbone.layer{L}.{B}.downsample.bn.{P}"),
    ("fc.{P}", "cls_head.fc_cls.{P}"),
)


# The MMAction2 1.2 config that builds the same recognizer as our arch (written into exported checkpoints' meta).
MMACTION_CONFIGS = {
    "tsn_r50": "configs/recognition/tsn/tsn_imagenet-pretrained-r50_8xb32-1x1x3-100e_kinetics400-rgb.py",
    "slowonly_r50_4x16": "configs/recognition/slowonly/slowonly_r50_8xb16-4x16x1-256e_kinetics400-rgb.py",
    "slowonly_r50_8x8": "configs/recognition/slowonly/slowonly_r50_8xb16-8x8x1-256e_kinetics400-rgb.py",
    "slowonly_r101_8x8": "configs/recognition/slowonly/slowonly_r101_8xb16-8x8x1-196e_kinetics400-rgb.py",
    "ircsn_r152_32x2": "configs/recognition/csn/ircsn_ig65m-pretrained-r152_8xb12-32x2x1-58e_kinetics400-rgb.py",
}


def mmaction_key(our_key: str, family: str) -> str:
    """Our state-dict key -> MMAction2's, e.g. 'layer1.0.bn2.weight' -> 'backbone.layer1.0.conv2.bn.weight'.

    `family` is 'tsn' (our keys 'backbone.<plain>' and 'fc.*') or '3d' (plain keys: SlowOnly, irCSN).
    """
    plain = strip_family_prefix(our_key, family)
    their = _translate(plain, src_col=0)
    if their is None:
        raise ValueError(f"checkpoints.mmaction_key: {our_key!r} is not a ResNet/TSN/SlowOnly/irCSN parameter name")
    return their


def to_plain_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of torchvision / our TSN ('backbone.') / MMAction2 / DataParallel ('module.') -> plain ResNet keys
    (a key no rule translates is kept, without 'module.', and ends up in the report's `unused`)."""
    return {plain_key(key) or key.removeprefix("module."): value for key, value in state_dict.items()}


def plain_key(key: str) -> str | None:
    """Any layout's key -> the plain ResNet key (see the comment above MMACTION_KEY_TABLE); None if untranslatable."""
    key = key.removeprefix("module.")
    parts = key.split(".")
    if key.startswith("cls_head.") or "conv" in parts or "bn" in parts:  # MMAction2 names
        return _translate(key, src_col=1) or _translate("backbone." + key, src_col=1)  # also backbone-only files
    return key.removeprefix("backbone.")  # torchvision / our TSN / MMAction2 with a torchvision backbone


def strip_family_prefix(our_key: str, family: str) -> str:
    """TSN keys are 'backbone.<plain>' or 'fc.*'; SlowOnly keys are plain."""
    if family == "tsn" and not our_key.startswith("fc."):
        if not our_key.startswith("backbone."):
            raise ValueError(f"models: TSN key {our_key!r} should start with 'backbone.' or 'fc.'")
        return our_key.removeprefix("backbone.")
    return our_key


def add_family_prefix(plain: str, family: str) -> str:
    return "backbone." + plain if family == "tsn" and not plain.startswith("fc.") else plain


def key_list(keys: list[str], limit: int = 30) -> str:
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


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


# ----------------------------------------------------------------------------------------------------------------------
# 3. train.py's latest.pth: exact resume
# ----------------------------------------------------------------------------------------------------------------------


# The flags --resume lets change: how the run executes, where it writes, what it prints; none changes its weights,
# log or metrics. Every other flag (a new one too) must equal latest.pth's stored args (check_resume_args).
RESUME_FREE_FLAGS = ("workers", "log_interval", "device", "eval_batch_size", "save_every", "work_dir", "resume",
                     "dump_probs", "demo_settings")


def save_checkpoint(run: Any, name: str, epoch: int, step: int = 0, meters: tuple = ()) -> None:
    """WORK_DIR/name after `epoch` finished epochs and `step` optimiser steps of the next one (--save-every).

    Every rank calls it (it gathers):
    1. each rank's random state: torch CPU (dropout), CUDA, numpy (run.rng: mixup) and python, gathered on
       rank 0 as a list indexed by rank; --resume gives each rank its own back;
    2. rank 0 writes weights, optimiser, schedule position, the meters of a part-done epoch, fp16's loss
       scale and the length of log.jsonl into a temporary file, flushes it to disk and renames it over the
       old one: a kill at any moment leaves either the old or the new file, never a partial one.
    """
    rng = [rank_rng_state(run)]
    if run.world > 1:
        rng = [None] * run.world if run.rank == 0 else None
        dist.gather_object(rank_rng_state(run), rng, dst=0)
    if run.rank != 0:
        return
    log = Path(run.args.work_dir) / "log.jsonl"
    state = {
        **run.describe(),
        "epoch": epoch,
        "step": step,
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "meters": [meter_state(m) for m in meters],
        "best_top1": run.best_top1,
        "best_epoch": run.best_epoch,
        "args": vars(run.args),
        "world": run.world,
        "rng": rng,
        "log_bytes": log.stat().st_size if log.exists() else 0,
    }
    webscale.write_atomic(Path(run.args.work_dir) / name, lambda f: torch.save(state, f))


def resume_train_state(run: Any) -> bool:
    """--resume: continue from WORK_DIR/latest.pth -> True. Its weights, optimiser, fp16 loss scale, position (epoch,
    step), meters and best top-1, this rank's random state, and log.jsonl cut back to its length then (the lines
    of the steps that will be repeated). Without latest.pth (killed before the first one) the run starts over: False.
    Written by another number of ranks, the part-done epoch restarts and the ranks keep fresh random streams."""
    args, path = run.args, Path(run.args.work_dir) / "latest.pth"
    log = Path(args.work_dir) / "log.jsonl"
    if not path.exists():
        if run.rank == 0:
            print(f"--resume: no {path} yet, starting from the beginning", flush=True)
            log.unlink(missing_ok=True)
        return False
    state = torch.load(path, map_location="cpu", weights_only=True)     # our own file; no arbitrary pickle
    check_resume_args(state.get("args", {}), args, path)
    saved = list(state.get("classes", run.classes))
    if saved != list(run.classes):
        raise ValueError(f"--resume: {path} was trained on other classes ({len(saved)}: {', '.join(saved[:4])}, ...) "
                         f"than the {len(run.classes)} of --target {args.target} now; give another --work-dir")
    run.net.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        run.scaler = torch.amp.GradScaler(run.device.type, enabled=args.amp == "fp16")
        run.scaler.load_state_dict(state["scaler"])
    run.start_epoch, run.start_step = state["epoch"], state.get("step", 0)
    run.best_top1, run.best_epoch = state.get("best_top1", -1.0), state.get("best_epoch", 0)
    run.resumed_meters = state.get("meters", [])
    rng, world = state["rng"], state.get("world", 1)
    if world == run.world:
        set_rank_rng_state(run, rng[run.rank] if isinstance(rng, list) else rng)   # a dict: one rank's, older files
    else:
        if run.rank == 0:
            print(f"note: {path} was written by {world} rank(s), this run has {run.world}: random streams "
                  f"start afresh and epoch {run.start_epoch + 1} restarts from its first step", flush=True)
        run.start_step, run.resumed_meters = 0, []
    if run.rank == 0 and log.exists() and log.stat().st_size > state.get("log_bytes", float("inf")):
        with open(log, "r+b") as f:
            f.truncate(state["log_bytes"])
    if run.rank == 0:
        print(f"resumed from {path}: {run.start_epoch} epoch(s)"
              + (f" and {run.start_step} step(s)" if run.start_step else "") + " done", flush=True)
    return True


def check_resume_args(saved: dict, args: argparse.Namespace, path: Path) -> None:
    """--resume continues the run latest.pth holds, never another: every flag outside RESUME_FREE_FLAGS must have
    the value stored in it (`args`, settled defaults included; a flag newer than the file is not compared).
    Otherwise one ValueError names each changed flag with its old and new value."""
    changed = [f"--{k.replace('_', '-')} {_shown(saved[k])} -> {_shown(v)}" for k, v in vars(args).items()
               if k not in RESUME_FREE_FLAGS and k in saved and saved[k] != v]
    if changed:
        raise ValueError(f"--resume: {path} holds a run with other flags: {', '.join(changed)}; resume with the "
                         f"run's flags, or give another --work-dir for a new run")


def refuse_used_work_dir(work_dir: Path) -> None:
    """A log holds one run: training without --resume into a folder that holds a run (log.jsonl or latest.pth)
    is a one-line error, never a second run appended to its log or overwriting its checkpoints."""
    used = [name for name in ("log.jsonl", "latest.pth") if (work_dir / name).exists()]
    if used:
        raise ValueError(f"--work-dir {work_dir} already holds a run ({', '.join(used)}): continue it with "
                         f"--resume, or give another --work-dir (or delete that folder) for a new run")


def rank_rng_state(run: Any) -> dict:
    """This rank's random state: torch CPU, CUDA (on a GPU), numpy (run.rng) and python; and the samples of
    each training source that failed to load on this rank, {source name: [paths]} (the replacements, the skipped
    retries and the logged count go on as in an uninterrupted run, and no bad file is named twice). Keyed by
    source and path, not by position: a list that changed cannot mark a good sample as failed."""
    failed = {}
    for name, ds in zip(run.source_names, run.datasets):
        failed.setdefault(name, []).extend(str(ds.samples.path(int(j))) for j in torch.nonzero(ds._failed).flatten())
    state = {"torch": torch.get_rng_state(), "numpy": run.rng.bit_generator.state, "python": random.getstate(),
             "failed": failed}
    if run.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(run.device)
    return state


def set_rank_rng_state(run: Any, state: dict) -> None:
    """Restore this rank's random state (rank_rng_state) and its training sources' failed-sample marks."""
    torch.set_rng_state(state["torch"])
    if run.device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], run.device)
    run.rng.bit_generator.state = state["numpy"]
    random.setstate(state["python"])
    failed = state.get("failed")
    if not isinstance(failed, dict):    # an older train.py's marks by position: not trusted, the files are retried
        failed = {}
    for name, ds in zip(run.source_names, run.datasets):
        paths = set(failed.get(name, ()))
        if paths:                       # mapped back by path; shared memory: the persistent workers skip them too
            ds._failed[[j for j in range(len(ds)) if str(ds.samples.path(j)) in paths]] = 1


def meter_state(meter: Any) -> dict:
    """A Meter's running sums (tensors on the CPU), for a mid-epoch checkpoint; timing is left out."""
    return {k: v.cpu() if torch.is_tensor(v) else v for k, v in vars(meter).items()
            if k not in ("names", "device", "t0")}


def restore_meters(meters: tuple, states: list[dict], device: torch.device) -> None:
    """Put a mid-epoch checkpoint's meter sums (meter_state) back, on the run's device."""
    for meter, state in zip(meters, states):
        vars(meter).update({k: v.to(device) if torch.is_tensor(v) else v for k, v in state.items()})


def _shown(value: object) -> str:
    """A flag value as an error line shows it: strings quoted (an empty --aux is ''), the rest as is."""
    return repr(value) if isinstance(value, str) else str(value)


# ----------------------------------------------------------------------------------------------------------------------
# 4. train.py's final test: the weights it evaluates, its result files
# ----------------------------------------------------------------------------------------------------------------------


def weights_to_test(run: Any, load: Callable[[Path], None]) -> tuple[str, str]:
    """Put the weights the final test evaluates into run.net (`load` reads a checkpoint file into it, on rank 0, and
    they are sent to the other ranks) -> (metrics.json's "weights", the "testing ..." line's words).

    --test: --checkpoint (default WORK_DIR/final.pth). --select last: the weights after the last epoch, in memory.
    --select val: best.pth, as rank 0 sees it once every rank got here: ranks that each looked for themselves could
    disagree (node-local or NFS-cached work dirs) and then wait in different collectives forever.
    """
    args = run.args
    if args.test:
        ckpt = Path(args.checkpoint) if args.checkpoint else Path(args.work_dir) / "final.pth"
        load_on_rank0(run, lambda: load(ckpt))
        return str(ckpt), str(ckpt)
    last = f"the last weights (epoch {run.schedule.epochs}, --select {args.select})"
    if args.select == "last":
        return "last", last
    ckpt = Path(args.work_dir) / "best.pth"
    if run.world > 1:
        dist.barrier()                              # every rank is here: rank 0 has written its files
    found = [ckpt.exists() if run.rank == 0 else None]
    if run.world > 1:
        dist.broadcast_object_list(found, src=0)
    if not found[0]:                                # deleted by hand: nothing else to choose from
        return "last (no best.pth)", last + f": {ckpt} not found"
    load_on_rank0(run, lambda: load(ckpt))
    epoch = f"epoch {run.best_epoch}" if run.best_epoch else "epoch not recorded"   # a latest.pth of an older train.py
    return f"best on val ({epoch})", f"{ckpt}, the best on val ({epoch}, --select val)"


def load_on_rank0(run: Any, load: Callable[[], None]) -> None:
    """Rank 0 runs `load` (it reads a checkpoint into run.net) and sends the weights to the other ranks, which need
    not see the file; a missing or unusable file is the same one-line error on every rank."""
    error = None
    if run.rank == 0:
        try:
            load()
        except (ValueError, FileNotFoundError) as err:
            error = err
    if run.world == 1:
        if error is not None:
            raise error
        return
    box = [None if error is None else (isinstance(error, FileNotFoundError), str(error))]
    dist.broadcast_object_list(box, src=0)
    if box[0] is not None:
        raise (FileNotFoundError if box[0][0] else ValueError)(box[0][1])
    for tensor in run.net.state_dict().values():
        flat = tensor.contiguous()              # a channels_last weight is sent as a dense copy
        dist.broadcast(flat, src=0)
        if flat.data_ptr() != tensor.data_ptr():
            tensor.copy_(flat)


def write_predictions(run: Any, samples: Any, probs: torch.Tensor, used: list[int], unreadable: list[int],
                      path: Path) -> None:
    """predictions.jsonl: one line per video of the split (`samples`, a webscale.SampleList) in its order, gathered
    from every rank on rank 0: index, path, label (none for --predict's videos), the top-5 classes with their
    probabilities (`probs` (N, K) of the videos `used`) and, with --dump-probs, all of them (MMAction2's --dump);
    "unreadable": true for a video that could not be read."""
    top_p, top_i = probs.topk(min(5, len(run.classes)), dim=1)
    full = probs.tolist() if run.args.dump_probs else None
    lines = {}
    for n, (index, ps, cs) in enumerate(zip(used, top_p.tolist(), top_i.tolist())):
        lines[index] = {"index": index, "path": str(samples.path(index)), "label": int(samples.labels[index]),
                        "top5": [{"class": c, "name": run.classes[c], "prob": p} for c, p in zip(cs, ps)]}
        if full is not None:
            lines[index]["probs"] = full[n]
    for index in unreadable:
        lines[index] = {"index": index, "path": str(samples.path(index)), "label": int(samples.labels[index]),
                        "unreadable": True}
    parts = [lines]
    if run.world > 1:
        parts = [None] * run.world
        dist.all_gather_object(parts, lines)
    if run.rank == 0:
        every = {i: line for part in parts for i, line in part.items()}
        for line in every.values():
            if line["label"] < 0:                   # --predict: a video of unknown class
                del line["label"]
        webscale.write_atomic(path, "".join(json.dumps(every[i]) + "\n" for i in sorted(every)))


def write_results(run: Any, m: dict) -> None:
    """Rank 0: the final test's confusion_matrix.csv, then metrics.json (the run's "done" mark) with the run's arch,
    target, auxiliary sources and classes."""
    work = Path(run.args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    cm = m.pop("confusion_matrix")
    m.update(arch=run.args.arch, target=run.args.target, aux=run.source_names[1:], classes=run.classes)
    rows = ["true\\pred," + ",".join(run.classes)] + [name + "," + ",".join(map(str, row))
                                                      for name, row in zip(run.classes, cm)]
    webscale.write_atomic(work / "confusion_matrix.csv", "\n".join(rows) + "\n")
    webscale.write_atomic(work / "metrics.json", json.dumps(m, indent=2) + "\n")
    m["confusion_matrix"] = cm


# ----------------------------------------------------------------------------------------------------------------------
# 5. omnisource.py's record of finished steps (WORK_DIR/steps.json): --resume skips them
# ----------------------------------------------------------------------------------------------------------------------

# The procedure's flags --resume lets change (how its steps execute, not what they compute); every other flag must
# equal the one WORK_DIR/steps.json recorded (check_procedure).
PROCEDURE_FREE_FLAGS = ("workers", "resume", "dry_run", "demo_settings")


def finished_steps(record: Path) -> set[str]:
    """The commands WORK_DIR/steps.json records as finished."""
    return set(json.loads(record.read_text())["finished"]) if record.is_file() else set()


def mark_step(record: Path, command: str, finished: bool, procedure: argparse.Namespace) -> None:
    """Record (finished=True) or unrecord one step's command in WORK_DIR/steps.json, atomically, with the
    procedure's own arguments (`procedure`: omnisource.py's, read by check_procedure on --resume)."""
    done = finished_steps(record)
    done = done | {command} if finished else done - {command}
    webscale.write_atomic(record, json.dumps({"procedure": vars(procedure), "finished": sorted(done)}, indent=1) + "\n")


def check_procedure(record: Path, args: argparse.Namespace) -> None:
    """--resume continues the procedure steps.json recorded, never another: one ValueError names each flag
    outside PROCEDURE_FREE_FLAGS whose value differs from the recorded one (old and new)."""
    saved = json.loads(record.read_text()).get("procedure", {}) if record.is_file() else {}
    changed = [f"--{k.replace('_', '-')} {saved[k]!r} -> {v!r}" for k, v in vars(args).items()
               if k not in PROCEDURE_FREE_FLAGS and k in saved and saved[k] != v]
    if changed:
        raise ValueError(f"--resume: {record} records a procedure with other flags: {', '.join(changed)}; resume "
                         f"with its flags, or give another --work-dir for a new procedure")
