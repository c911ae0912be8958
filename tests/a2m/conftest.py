"""a2m tests run tiny models: one intra-op thread. With two, every small op pays a thread
hand-off, which on a busy 2-core machine made the sampler tests ~10x slower."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
