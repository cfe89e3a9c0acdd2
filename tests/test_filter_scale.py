"""filter.py as users run it at web scale: through the command line, under torchrun, killed and rerun.

- Every flag family of filter.py through a subprocess, including a bare state dict teacher (--teacher-arch).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import data
import models
import synthetic

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS='1')


def run_filter(*args, timeout=120):
    return subprocess.run([sys.executable, str(REPO / 'filter.py'), *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=timeout, env=ENV)


@pytest.fixture(scope='module')
def demo_root(tmp_path_factory):
    """Generated demo data (2 classes; web images, short and untrimmed videos incl. broken files) and an
    untrained tsn_tiny teacher saved as a train.py checkpoint and as a bare state dict."""
    root = tmp_path_factory.mktemp('filter_scale')
    config = synthetic.SynthConfig(num_classes=2, train_per_class=1, val_per_class=1, web_images_per_class=3,
                                   web_videos_per_class=2, untrimmed_per_class=1, width=32, height=32,
                                   web_video_size=32, clip_frames=(8, 10), web_video_frames=(8, 10),
                                   untrimmed_frames=(40, 48))
    synthetic.generate(root, config)
    torch.manual_seed(0)
    model = models.build_model('tsn_tiny', 2)
    classes = data.read_classes(root / 'synth' / 'classes.txt')
    torch.save(dict(model=model.state_dict(), arch='tsn_tiny', model_args={}, classes=classes),
               root / 'teacher.pth')
    torch.save(model.state_dict(), root / 'bare.pth')
    return root


def test_bare_state_dict_teacher_through_the_command_line(demo_root):
    """--teacher-arch with a bare state dict: same decisions as the self-describing checkpoint of the same net."""
    outs = {}
    for name, extra in (('bare', ('--teacher', demo_root / 'bare.pth', '--teacher-arch', 'tsn_tiny')),
                        ('ckpt', ('--teacher', demo_root / 'teacher.pth'))):
        proc = run_filter('--data-root', demo_root, '--source', 'synth-web-img', *extra, '--out', f'f-{name}',
                          '--threshold', '0.5', '--workers', '0', '--quiet')
        assert proc.returncode == 0, proc.stderr
        outs[name] = (demo_root / f'f-{name}' / 'train.txt').read_text()
    assert outs['bare'] == outs['ckpt']
