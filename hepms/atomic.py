"""Files that mark work as done are written atomically, and JSON logs stay strict JSON.

One helper for the text files of runs, scans and the trainer (metrics logs, results, tables), so
that every writer gets the same guarantee: a reader, or a run killed half-way, never sees half a
file under the final name.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = ["write_text_atomic", "json_safe"]


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a hidden temporary file next to ``path``, then rename it to ``path``."""
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def json_safe(x: Any) -> Any:
    """NaN / inf -> None and numpy scalars -> Python numbers (recursively), for strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, np.floating):
        return json_safe(float(x))
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, Mapping):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x
