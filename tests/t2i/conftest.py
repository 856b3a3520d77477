import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _one_thread_when_oversubscribed():
    """On a CPU busier than its cores, 2 OpenMP threads ran our models ~5x slower than 1 (measured)."""
    prev = torch.get_num_threads()
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="session")
def saved(tmp_path_factory):
    """A tiny random SD saved as a diffusers folder, an original .safetensors and an original .ckpt."""
    from tests.t2i import tiny_pipeline

    root = tmp_path_factory.mktemp("t2i")
    pipe = tiny_pipeline(root)
    pipe.save_pretrained(root / "model")
    pipe.save_single_file(root / "model.safetensors")
    pipe.save_single_file(root / "model.ckpt")
    pipe.reference = {}  # torch threads -> images every reload must reproduce exactly
    return pipe, root
