"""This checkout's :mod:`hepms.atomic` (the project's one atomic writer) for the benchmarks that
import hepms from another tree (``--source``).

Their result files are written by the benchmark's own tree, not by the tree under test, which
may predate ``hepms.atomic`` (the "before" trees of benchmarks/train.md do). The module is loaded
from its file under another name, so ``import hepms`` still finds the tree under test.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parents[1] / "hepms" / "atomic.py"
_spec = importlib.util.spec_from_file_location("checkout_hepms_atomic", _PATH)
assert _spec is not None and _spec.loader is not None, _PATH
atomic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(atomic)

save_atomically = atomic.save_atomically
write_text_atomic = atomic.write_text_atomic

__all__ = ["save_atomically", "write_text_atomic"]
