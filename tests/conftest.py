"""Shared test helpers: tiny variants of every named config, a small prepared data dir, and fixed threads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tilelli.model.config import ModelConfig, from_name, list_configs
from tilelli.train.prepare import prepare
from tilelli.train.trainer import sample_text

torch.set_num_threads(2)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def tiny(name: str, **overrides) -> ModelConfig:
    """A small-shape variant of a named config that keeps its architecture and options."""
    shape = dict(d_model=32, n_layers=2, max_seq_len=256)
    base = from_name(name)
    if base.arch == "parent":
        shape.update(d_head=8)
    else:
        shape.update(n_heads=4)
    shape.update(overrides)
    return base.replace(**shape)


def outputs_and_grads(fn, leaves, *args):
    """fn(*args) and the gradients of a fixed random projection of it w.r.t. `leaves`."""
    for t in leaves:
        t.grad = None
    y = fn(*args)
    torch.manual_seed(123)
    y.backward(torch.randn(y.shape))
    return y.detach(), [t.grad.clone() for t in leaves]


@pytest.fixture(params=list_configs())
def config_name(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """`tilelli prepare` output (train.bin 32 KB, valid.bin 4 KB) of the built-in sample text."""
    root = tmp_path_factory.mktemp("data")
    (root / "train.txt").write_bytes(sample_text(1 << 15, seed=0))
    (root / "valid.txt").write_bytes(sample_text(1 << 12, seed=1))
    prepare([root / "train.txt"], root / "bins", valid=[root / "valid.txt"], progress=False)
    return root / "bins"
