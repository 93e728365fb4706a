"""Test helpers shared by the ``test_refine_*`` modules (imported, so pytest registers the fixture)."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Small models train fastest on one thread; more threads thrash on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
