"""Selection records: the small, committable result of one finished selection of a ``hepms select`` study.

A study's output folder (``runs/...``) holds model files and stays on the machine that made it.
What a study needs to grow from machine to machine is much smaller: per selection (method, ``v1``,
seed), its row (selected pair, validation and test metrics, seconds), grid search's score of every
pair, the DARTS weights per epoch and the epochs of every phase, with the settings that determine
it and the data fingerprint. With ``study.records`` set (``analyses/msnas/config/selection.yaml``:
``analyses/msnas/results/selection/records``), every finished selection is written there as::

    <records>/<method>_v1-<v1>_seed-<seed>-<key[:8]>-<fingerprint[:8]>.json

and a study anywhere counts a selection as done when a record with the same key (the hash of
:func:`selection_settings`: everything that determines the selection, not the study's list of
seeds, ``v1`` values or methods, no paths, nothing machine-specific) and the same data fingerprint
exists. Records are written atomically and never rewritten once there; records that do not match
are logged and left alone. The same idea as the trial records of ``hepms scan``
(:mod:`hepms.study.records`), for the selection study's own unit of work.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

from hepms.config_engine import settings_hash
from hepms.study.records import read_json_records

if TYPE_CHECKING:
    from hepms.select.config import SelectionConfig

log = logging.getLogger(__name__)

__all__ = ["SELECTION_RECORD_FORMAT", "SelectionKey", "selection_settings", "selection_key", "selection_record_path",
           "load_selection_records", "write_selection_record", "selected_pair"]

SELECTION_RECORD_FORMAT = "hepms.selection/1"

#: ``(method, v1, seed)``: one selection of a study.
SelectionKey = tuple[str, float, int]

# SearchSettings fields that say where or how a selection runs, not what it computes (the
# evaluation batch size only splits the forward passes of the evaluation).
_MACHINE_SETTINGS = ("device", "progress", "eval_batch_size", "v1", "seed")


def selection_settings(config: "SelectionConfig", method: str, v1: float, seed: int) -> dict[str, Any]:
    """Everything that determines the selection ``(method, v1, seed)`` of ``config``.

    Left out: the study's lists (``study.seeds``, ``study.v1``, ``study.methods``: adding a seed
    or a ``v1`` value must not orphan the records of the others), where the data lie
    (``data.path``, ``data.generate``: which events they are is the data fingerprint's business),
    the figures, the record folder, torch threads and the device.
    """
    cfg = config.to_dict()
    data = {k: v for k, v in cfg["data"].items() if k not in ("path", "generate")}
    settings = {k: v for k, v in cfg["settings"].items() if k not in _MACHINE_SETTINGS}
    return {"data": data, "task": cfg["task"], "candidates": cfg["candidates"], "settings": settings,
            "validity": cfg["validity"], "method": str(method), "v1": float(v1), "seed": int(seed)}


def selection_key(config: "SelectionConfig", method: str, v1: float, seed: int) -> str:
    """The hash of :func:`selection_settings`: two selections with the same key and the same data
    fingerprint are the same selection."""
    return settings_hash(selection_settings(config, method, v1, seed))


def selection_record_path(root: Path, method: str, v1: float, seed: int, key: str, fingerprint: str) -> Path:
    """Where the record of the selection ``(method, v1, seed)`` with ``key`` on data ``fingerprint`` lives."""
    return Path(root) / f"{method}_v1-{float(v1):g}_seed-{int(seed)}-{key[:8]}-{fingerprint[:8]}.json"


def selected_pair(row: Mapping[str, Any]) -> str:
    """``"upstream|downstream"`` of a selection's row; the downstream is ``n/a`` where the
    selection did not choose it (``downstream_selected: false``: no Task-2 loss at ``v1 = 1``,
    :func:`hepms.select.study.mark_not_applicable`). Rows written before that flag existed count
    as chosen."""
    down = row["downstream"] if row.get("downstream_selected", True) else "n/a"
    return f"{row['upstream']}|{down}"


def _problem(record: Any) -> Optional[str]:
    """Why ``record`` is not a usable selection record, or None."""
    if not isinstance(record, dict) or record.get("format") != SELECTION_RECORD_FORMAT:
        return f"not a {SELECTION_RECORD_FORMAT} record"
    for name, kind in (("key", str), ("data_fingerprint", str), ("settings", dict), ("row", dict)):
        if not isinstance(record.get(name), kind):
            return f"'{name}' is missing or not a {kind.__name__}"
    if settings_hash(record["settings"]) != record["key"]:
        return "its settings do not hash to its key (edited by hand?)"
    return None


def load_selection_records(
    root: Optional[Path], config: "SelectionConfig", fingerprint: Optional[str],
    planned: Sequence[SelectionKey],
) -> dict[SelectionKey, dict[str, Any]]:
    """The records under ``root`` of the ``planned`` selections of ``config`` on the data
    ``fingerprint``, by ``(method, v1, seed)``. Every other file is logged and left where it is:
    unreadable or inconsistent ones as warnings, records of other settings, other data or
    selections outside this study's lists as information."""
    out: dict[SelectionKey, dict[str, Any]] = {}
    if fingerprint is None:
        return out
    wanted = {selection_key(config, m, v, s): (m, float(v), int(s)) for m, v, s in planned}
    for path, record in read_json_records(root, "*.json", "selection record", _problem):
        if record["data_fingerprint"] != fingerprint:
            log.info("ignoring selection record %s: data fingerprint %s, this study's data %s",
                     path.name, record["data_fingerprint"], fingerprint)
            continue
        if record["key"] not in wanted:
            log.info("ignoring selection record %s: not a selection of this study (other settings, or a seed, "
                     "v1 or method outside its lists)", path.name)
            continue
        out.setdefault(wanted[record["key"]], {**record, "_record": str(path)})
    return out


def write_selection_record(
    root: Path, config: "SelectionConfig", fingerprint: str, content: Mapping[str, Any], *,
    commit: Optional[str], threads: Optional[int],
) -> Optional[Path]:
    """Write the record of a finished selection (``content``: its ``row`` with ``method``, ``v1``,
    ``seed``, and what the summary reads: ``scores``, ``alpha_history``, ``history``, ...) under
    ``root``, unless one is there already (a committed record stays as committed). ``commit``: the
    hepms commit the study ran (taken when it started). Returns the path written, or None."""
    from hepms._machine import cpu_model
    from hepms.study.runner import versions, write_json
    from hepms.study.scan import utc_now

    row = content["row"]
    method, v1, seed = row["method"], float(row["v1"]), int(row["seed"])
    settings = selection_settings(config, method, v1, seed)
    key = settings_hash(settings)
    path = selection_record_path(root, method, v1, seed, key, fingerprint)
    if path.is_file():
        return None
    record = {"format": SELECTION_RECORD_FORMAT, "key": key, "data_fingerprint": fingerprint,
              "method": method, "v1": v1, "seed": seed, **dict(content),
              "settings": settings, "hepms_version": versions().get("hepms"), "hepms_commit": commit,
              # What the seconds were measured on (not part of any identity).
              "machine": {"cpu": cpu_model(), "torch_threads": threads},
              "finished_utc": utc_now()}
    write_json(path, record)
    return path
