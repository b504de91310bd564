"""Fixtures shared by the test modules."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's small tensors on one intra-op thread (restored afterwards).

    With the 2-core machine shared by other jobs, OpenMP regions whose threads get descheduled
    spin at their barriers: small-tensor training then runs 10-50x slower with 2 threads than
    with 1. One thread keeps the run time predictable; the assertions hold either way. Modules opt
    in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
