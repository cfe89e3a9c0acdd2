"""Shared test setup: the repository on sys.path, and one small generated dataset per test session."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"          # exists on the developers' machines and in CI, never on a user's


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules with tiny inputs: one intra-op thread is as fast and avoids OpenMP spin-waiting, which slows
    them 3-5x when other processes share the 2 cores. Restored afterwards for the rest of the session."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    """A reduced demo dataset (4 classes) under DATA_ROOT, generated once: (data_root, truth)."""
    import synthetic
    root = tmp_path_factory.mktemp("data")
    cfg = synthetic.SynthConfig(seed=1, num_classes=4, train_per_class=8, val_per_class=6,
                                web_images_per_class=10, web_videos_per_class=3, untrimmed_per_class=1)
    synthetic.generate(root, cfg)
    return root
