"""The selection study's configuration: a YAML file (or dict) validated into :class:`StudyConfig`.

Sections (all optional except ``candidates``; see ``analyses/htautau/config/select.yaml``)::

    data:        path | generate{...}, max_jets, max_constituents, jet_features, fractions, split_seed
    task:        calibration | tau_id                  (Task 1)
    candidates:  upstream: {name: {kind, ...}}, downstream: {name: {kind, ...}}
    settings:    SearchSettings fields (lr, alpha_lr, epochs, patience, epsilon, criterion, ...)
    study:       methods, v1 (list), seeds (list), validity{...}, threads, plots

Unknown keys raise ``ValueError`` naming them, so a typo cannot be silently ignored.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from hepms.select.candidates import DEFAULT_CANDIDATES, validate_spec
from hepms.select.data import SELECTION_JET_FEATURES
from hepms.select.tasks import TASKS
from hepms.select.training import SearchSettings

__all__ = ["StudyConfig", "load_config", "METHOD_NAMES"]

METHOD_NAMES = ("grid", "darts", "spos")

_DATA_KEYS = {"path", "generate", "max_jets", "max_constituents", "jet_features", "fractions", "split_seed"}
_STUDY_KEYS = {"methods", "v1", "seeds", "validity", "threads", "plots"}
_VALIDITY_KEYS = {"enabled", "max_points", "iterations", "lr", "nsigma", "seed"}
_DEFAULT_GENERATE = {
    "events_per_process": 400,
    "mu": 5,
    "pileup_process": "nondiffractive",
    "pileup_pool": 200,
    "block_size": 400,
    "seed": 1,
}


def _check_keys(section: str, given: Mapping[str, Any], allowed: set) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ValueError(f"config section {section!r}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


@dataclass
class StudyConfig:
    """A validated selection-study configuration (see the module docstring)."""

    data: dict = field(default_factory=dict)
    task: str = "calibration"
    candidates: dict = field(default_factory=lambda: copy.deepcopy(DEFAULT_CANDIDATES))
    settings: SearchSettings = field(default_factory=SearchSettings)
    methods: tuple[str, ...] = METHOD_NAMES
    v1: tuple[float, ...] = (0.5,)
    seeds: tuple[int, ...] = (0,)
    validity: dict = field(default_factory=dict)
    threads: Optional[int] = None
    plots: bool = True
    source: Optional[str] = None

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["settings"] = self.settings.to_dict()
        return out


def load_config(source: Union[str, os.PathLike, Mapping[str, Any]]) -> StudyConfig:
    """Read and validate a study configuration from a YAML file or a mapping.

    Raises:
        ValueError: unknown sections or keys, bad values (with the offending name).
    """
    if isinstance(source, Mapping):
        raw: Any = copy.deepcopy(dict(source))
        origin = None
    else:
        import yaml

        path = Path(source)
        if not path.is_file():
            raise ValueError(f"config file {str(path)!r} does not exist")
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
        origin = str(path)
    if not isinstance(raw, Mapping):
        raise ValueError(f"the config must be a mapping of sections, got {type(raw).__name__}")
    _check_keys("<top>", raw, {"data", "task", "candidates", "settings", "study"})

    data = dict(raw.get("data") or {})
    _check_keys("data", data, _DATA_KEYS)
    if data.get("path") is None:
        generate = {**_DEFAULT_GENERATE, **(data.get("generate") or {})}
        data["generate"] = generate
    data.setdefault("max_jets", 8)
    data.setdefault("max_constituents", 50)
    data.setdefault("jet_features", list(SELECTION_JET_FEATURES))
    data.setdefault("fractions", [0.6, 0.2, 0.2])
    data.setdefault("split_seed", 1)

    task = raw.get("task", "calibration")
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")

    candidates = raw.get("candidates") or copy.deepcopy(DEFAULT_CANDIDATES)
    _check_keys("candidates", candidates, {"upstream", "downstream"})
    candidates = {
        "upstream": validate_spec(candidates.get("upstream") or {}, "upstream"),
        "downstream": validate_spec(candidates.get("downstream") or {}, "downstream"),
    }

    settings_raw = dict(raw.get("settings") or {})
    allowed = {f.name for f in dataclasses.fields(SearchSettings)} - {"v1", "seed"}
    _check_keys("settings", settings_raw, allowed)
    settings = SearchSettings(**settings_raw)

    study = dict(raw.get("study") or {})
    _check_keys("study", study, _STUDY_KEYS)
    methods = tuple(study.get("methods", METHOD_NAMES))
    bad = [m for m in methods if m not in METHOD_NAMES]
    if bad or not methods:
        raise ValueError(f"study.methods: unknown or empty {list(methods)}; choose from {METHOD_NAMES}")
    v1 = tuple(float(v) for v in _as_list(study.get("v1", [0.5])))
    if not v1 or any(not 0.0 <= v <= 1.0 for v in v1):
        raise ValueError(f"study.v1 must be values in [0, 1], got {list(v1)}")
    seeds = tuple(int(s) for s in _as_list(study.get("seeds", [0])))
    if not seeds:
        raise ValueError("study.seeds must not be empty")
    validity = dict(study.get("validity") or {})
    _check_keys("study.validity", validity, _VALIDITY_KEYS)
    # "enabled" left unset means: on for the calibration task (resolved when the study runs, so a
    # --task override on the command line gets the right default).
    threads = study.get("threads")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"study.threads must be a positive integer, got {threads!r}")
    return StudyConfig(
        data=data,
        task=task,
        candidates=candidates,
        settings=settings,
        methods=methods,
        v1=v1,
        seeds=seeds,
        validity=validity,
        threads=threads,
        plots=bool(study.get("plots", True)),
        source=origin,
    )


def _as_list(value: Any) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]
