import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """These tests use tiny tensors: one intra-op thread avoids OpenMP oversubscription on a
    busy machine (measured 70x slower with 2 threads at load 10 on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
