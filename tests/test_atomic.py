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


def test_one_atomic_writer_in_the_package_and_the_benchmarks() -> None:
    """Files are moved into place by hepms.atomic only, except where its write-then-rename does not
    fit: a ROOT file streamed chunk by chunk (EventsWriter) and finished files moved out of a
    staging folder (the generation's swap)."""
    repo = Path(__file__).resolve().parents[1]
    found = {str(p.relative_to(repo)) for folder in ("hepms", "benchmarks", "analyses", "scripts")
             for p in (repo / folder).rglob("*.py")
             if any(call in p.read_text(encoding="utf-8") for call in ("os.replace(", "os.rename(", ".rename("))}
    assert found == {"hepms/atomic.py", "hepms/generate/io.py", "hepms/generate/pipeline.py"}


def test_benchmarks_write_with_this_checkouts_writer_whatever_tree_they_measure(tmp_path: Path) -> None:
    """benchmarks/checkout_atomic.py gives the benchmarks this checkout's hepms.atomic, while
    `import hepms` still finds the tree under test (--source), which may predate hepms.atomic."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    old = tmp_path / "old_tree" / "hepms"
    old.mkdir(parents=True)
    (old / "__init__.py").write_text("OLD = True\n")  # an old tree: no hepms/atomic.py
    script = (
        "import sys\n"
        f"sys.path[:0] = [{str(old.parent)!r}, {str(repo / 'benchmarks')!r}]\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in type(f).__module__]\n"
        "from checkout_atomic import atomic, write_text_atomic\n"
        "import hepms\n"
        "assert hepms.OLD, hepms.__file__\n"
        f"assert atomic.__file__ == {str(repo / 'hepms' / 'atomic.py')!r}, atomic.__file__\n"
        f"write_text_atomic({str(tmp_path / 'result.json')!r}, '{{}}')\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert (tmp_path / "result.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old_tree", "result.json"]
