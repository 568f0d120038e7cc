from __future__ import annotations

import pathlib

import pytest
import torch

# A shared 2-core machine makes 2 threads up to 10x slower when a neighbour is busy.
torch.set_num_threads(1)

MNIST_DIR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.fixture
def mnist_dir() -> pathlib.Path:
    """The real MNIST files beside the checkout (skips when this machine has none)."""
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST not found at {MNIST_DIR}")
    return MNIST_DIR
