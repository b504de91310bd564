"""hepms.atomic: save_atomically (any serialiser) and write_text_atomic write under a hidden
temporary name and rename; a failed write leaves the old file and no temporary file."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from hepms.atomic import save_atomically, write_text_atomic


def test_save_atomically_writes_through_a_hidden_temporary_name(tmp_path: Path) -> None:
    seen = []

    def save(tmp: str) -> None:
        seen.append(Path(tmp))
        torch.save({"x": torch.arange(3)}, tmp)

    target = tmp_path / "checkpoint.pt"
    save_atomically(target, save)
    assert seen == [tmp_path / f".checkpoint.pt.partial-{os.getpid()}"]
    assert torch.equal(torch.load(target)["x"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    # keep_suffix: numpy.savez appends .npz to a name without it; the final name is unchanged
    save_atomically(tmp_path / "predictions.npz",
                    lambda tmp: np.savez_compressed(tmp, a=np.arange(4)), keep_suffix=True)
    assert np.array_equal(np.load(tmp_path / "predictions.npz")["a"], np.arange(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "predictions.npz"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    write_text_atomic(target, "old ± text\n")

    def half_then_fail(tmp: str) -> None:
        Path(tmp).write_bytes(b"half a fi")
        raise OSError("disk full")

    for keep_suffix in (False, True):
        with pytest.raises(OSError, match="disk full"):
            save_atomically(target, half_then_fail, keep_suffix=keep_suffix)
        assert target.read_text(encoding="utf-8") == "old ± text\n"
        assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
