import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread_when_oversubscribed():
    """On a CPU busier than its cores, 2 OpenMP threads ran our models ~5x slower than 1 (measured)."""
    prev = torch.get_num_threads()
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
