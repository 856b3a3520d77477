import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Every longexp test module on one torch thread (the suite shares 2 cores with other workers)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
