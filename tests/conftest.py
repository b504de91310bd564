"""Fixtures shared by the test modules."""
from __future__ import annotations

from pathlib import Path

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


@pytest.fixture(scope="session")
def tiny_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 H + 100 Z events at <mu> = 5, made once per test session through ``hepms generate``.

    Generating it costs several seconds of Pythia 8 + FastJet; the CLI and analysis tests share it.
    Going through the command line (rather than ``hepms.generate.generate``) keeps the CLI's
    generate path covered end to end.
    """
    from hepms.cli import main

    path = tmp_path_factory.getbasetemp() / "hepms_tiny_sample"
    rc = main(["generate", str(path), "--events", "100", "--mu", "5", "--seed", "7", "--workers", "1",
               "--pileup-pool", "200", "--no-progress"])
    assert rc == 0, "hepms generate failed for the shared tiny sample"
    return path


@pytest.fixture
def restore_cpu_capability():
    """Put back the CPU kernel variant a test switched (``hepms.ops.set_cpu_capability``)."""
    import hepms.ops

    previous = hepms.ops.cpu_capability()
    yield
    if previous != "python":  # the pure-PyTorch fallback has no variants to restore
        hepms.ops.set_cpu_capability(previous)
