import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Every video test module on one torch thread, its module fixtures included (the shared 2-core CPU ran
    these small models ~10x slower with 2 threads under load)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
