"""Trial records: the small, committable result of one finished trial, shared between machines.

A scan's run directory (``runs/...``) holds checkpoints and predictions and stays on the machine
that made it. What a study needs to grow from machine to machine is much smaller: per trial, the
test metrics with the seed, the epochs, the time, the settings (their hash is the run key) and the
data fingerprint. With ``scan.trial_records`` set (``analyses/htautau/config/full.yaml``:
``analyses/htautau/results/full/trials``), every finished trial is written there as::

    <records>/<configuration folder>/seed<seed>-<fingerprint[:8]>.json

and a scan anywhere counts a trial as done when a record with the same run key (the hash of
:func:`hepms.study.plan.run_settings`: no paths, nothing machine-specific), the same seed and the
same data fingerprint (:mod:`hepms.study.dataset`: the same events) exists; the tables use it like
a local result. Records are written atomically and never rewritten once there.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

from hepms.config_engine import settings_hash
from hepms.study.plan import PlannedRun, ensure_inside

log = logging.getLogger(__name__)

__all__ = ["RECORD_FORMAT", "RecordKey", "records_dir", "record_of", "record_path", "load_records", "write_record",
           "read_json_records"]

RECORD_FORMAT = "hepms.trial/1"

#: ``(run key, seed, data fingerprint)``: what makes two trials the same.
RecordKey = tuple[str, int, str]

# The fields of a result that a record keeps (no per-epoch history, no paths).
_KEPT = ("seed", "trial", "study", "label", "column", "data_fingerprint", "metrics", "not_applicable", "roc", "best",
         "epochs_trained", "seconds", "threads", "finished_utc", "versions", "settings")


def records_dir(cfg: Mapping[str, Any]) -> Optional[Path]:
    """``scan.trial_records`` as a path (relative: to the working directory), or None."""
    value = cfg["scan"].get("trial_records")
    return None if not value else Path(value)


def record_of(result: Mapping[str, Any], run_key: str) -> dict[str, Any]:
    """The record of a finished trial's ``result`` (``result.json`` of :func:`~hepms.study.runner.run_trial`)."""
    from hepms._machine import cpu_model, git_commit

    record: dict[str, Any] = {"format": RECORD_FORMAT, "run_key": run_key}
    record.update({k: result[k] for k in _KEPT if k in result})
    record["hepms_version"] = (result.get("versions") or {}).get("hepms")
    # The version string alone does not tell two development states apart (a study can grow over
    # code changes that move results by float rounding); the commit does, where there is one. It
    # is the one the trial started with (results older than that field: the commit now).
    record["hepms_commit"] = result["hepms_commit"] if "hepms_commit" in result else git_commit()
    # What the seconds were measured on (not part of any identity).
    record["machine"] = {"cpu": cpu_model()}
    return record


def record_path(root: Path, run: PlannedRun, seed: int, fingerprint: str) -> Path:
    """Where the record of ``run``'s trial with ``seed`` on the data ``fingerprint`` lives."""
    return ensure_inside(root, Path(root) / run.folder / f"seed{int(seed)}-{fingerprint[:8]}.json")


def _valid(record: Any) -> Optional[str]:
    """Why ``record`` is not a usable trial record, or None."""
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        return f"not a {RECORD_FORMAT} record"
    for key, kind in (("run_key", str), ("data_fingerprint", str), ("metrics", dict), ("settings", dict)):
        if not isinstance(record.get(key), kind):
            return f"'{key}' is missing or not a {kind.__name__}"
    if isinstance(record.get("seed"), bool) or not isinstance(record.get("seed"), int):
        return "'seed' is missing or not an integer"
    if settings_hash(record["settings"]) != record["run_key"]:
        return "its settings do not hash to its run_key (edited by hand?)"
    return None


def read_json_records(root: Optional[Path], pattern: str, what: str,
                      problem_of: Callable[[Any], Optional[str]]) -> Iterator[tuple[Path, dict[str, Any]]]:
    """``(path, record)`` for every JSON file matching ``pattern`` under ``root`` (sorted) that
    reads and for which ``problem_of(record)`` is None; the others are logged as warnings (``what``
    names the kind of record) and skipped. Nothing when ``root`` is None or not a folder."""
    if root is None or not Path(root).is_dir():
        return
    for path in sorted(Path(root).glob(pattern)):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            log.warning("ignoring %s %s: unreadable (%s)", what, path, error)
            continue
        problem = problem_of(record)
        if problem:
            log.warning("ignoring %s %s: %s", what, path, problem)
            continue
        yield path, record


def load_records(root: Optional[Path]) -> dict[RecordKey, dict[str, Any]]:
    """Every valid record under ``root`` by ``(run key, seed, data fingerprint)``; unreadable or
    inconsistent files are logged and left out (their trials count as not done)."""
    out: dict[RecordKey, dict[str, Any]] = {}
    for path, record in read_json_records(root, "*/*.json", "trial record", _valid):
        record["_record"] = str(path)
        out.setdefault((record["run_key"], record["seed"], record["data_fingerprint"]), record)
    return out


def write_record(root: Path, run: PlannedRun, result: Mapping[str, Any]) -> Optional[Path]:
    """Write the record of ``run``'s finished ``result`` under ``root`` unless one is there
    already (records are never rewritten: a committed record stays as committed). Returns the
    path written, or None."""
    from hepms.study.runner import write_json

    path = record_path(root, run, result["seed"], result["data_fingerprint"])
    if path.is_file():
        return None
    write_json(path, record_of(result, run.key))
    return path
