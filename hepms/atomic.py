"""Files that mark work as done are written atomically, and JSON logs stay strict JSON.

One writer for every file of runs, scans, the trainer and the exports: :func:`save_atomically`
lets any serialiser (``torch.save``, ``numpy.savez``, ``torch.export.save``, ...) write a hidden
temporary file next to the target, which is then renamed to the target; :func:`write_text_atomic`
is its text form (metrics logs, results, tables). A reader, or a run killed half-way, never sees
half a file under the final name, and a failed write leaves no temporary file behind.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Union

import numpy as np

__all__ = ["save_atomically", "write_text_atomic", "json_safe"]


def save_atomically(path: Union[str, "os.PathLike[str]"], save: Callable[[str], None], *,
                    keep_suffix: bool = False) -> None:
    """``save(tmp)`` into a hidden file next to ``path``, then rename it to ``path`` (atomic on
    POSIX: same folder). If ``save`` raises, the temporary file is removed and ``path`` is left
    as it was.

    Args:
        path: the final file.
        save: writes the file whose name (a string) it is given.
        keep_suffix: the temporary name ends in ``path``'s suffix (``.model.partial-PID.pt2``),
            for writers that insist on it (``torch.export.save`` warns without ``.pt2``,
            ``numpy.savez`` appends ``.npz``); otherwise it is ``.NAME.partial-PID``.
    """
    path = Path(path)
    # Hidden; without keep_suffix ending in the PID, the form of the stale partial files that
    # hepms.generate.pipeline removes.
    tmp = (path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}") if keep_suffix
           else path.with_name(f".{path.name}.partial-{os.getpid()}"))
    try:
        save(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: Union[str, "os.PathLike[str]"], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` with :func:`save_atomically`."""
    save_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


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
