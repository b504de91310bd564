"""The selection study's configuration (``hepms select``): a YAML file or a mapping, validated into
a :class:`SelectionConfig` by the configuration engine of :mod:`hepms.config_engine` (the one that also
reads the run configuration of ``hepms train`` / ``scan``).

Sections (all optional; see ``analyses/htautau/config/select.yaml``)::

    data:        path | generate{...}, max_events, max_jets, max_constituents, jet_features, fractions, split_seed
    task:        calibration | tau_id                  (Task 1)
    candidates:  upstream: {name: {kind, ...}}, downstream: {name: {kind, ...}}
    settings:    SearchSettings fields (lr, alpha_lr, epochs, patience, epsilon, criterion, ...)
    study:       methods, v1 (list), seeds (list), validity{...}, threads, plots, records

The keys shared with the run configuration (``data.max_jets``, ``data.split_seed``, ...) and with
the generator (``data.generate.*``) are the same :class:`~hepms.config_engine.Key` objects, so their
types, checks and defaults are written once; ``data.generate`` differs only in its defaults (a
small, fast sample). Unknown keys raise :class:`~hepms.config_engine.ConfigError` (a ``ValueError``)
naming them, so a typo cannot be silently ignored; YAML files may use ``extends:``, and a key given
twice is an error.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from hepms.config_engine import ConfigError, Key, check_section, read_yaml_chain
from hepms.select.candidates import DEFAULT_CANDIDATES, validate_spec
from hepms.select.data import SELECTION_JET_FEATURES
from hepms.select.tasks import UPSTREAM_TASKS
from hepms.select.training import SearchSettings

__all__ = ["SelectionConfig", "load_selection_config", "selection_schema", "METHOD_NAMES"]

METHOD_NAMES = ("grid", "darts", "spos")

# data.generate of a selection study: a small sample (about 20 s to generate on 2 cores).
_GENERATE_DEFAULTS = {
    "events_per_process": 400,
    "mu": 5.0,
    "pileup_process": "nondiffractive",
    "pileup_pool": 200,
    "block_size": 400,
    "seed": 1,
}


def _unit_interval_items(value: list[float]) -> Optional[str]:
    return None if value and all(0.0 <= v <= 1.0 for v in value) else "must be values in [0, 1] (v2 = 1 - v1)"


def _non_empty(value: list) -> Optional[str]:
    return None if value else "must not be empty"


def _positive(value: Any) -> Optional[str]:
    return None if value > 0 else "must be > 0"


_SCHEMA_CACHE: Optional[dict[str, Any]] = None


def selection_schema() -> dict[str, Any]:
    """The schema of a selection-study configuration (a nested dict of :class:`~hepms.config_engine.Key`)."""
    global _SCHEMA_CACHE
    if _SCHEMA_CACHE is not None:
        return _SCHEMA_CACHE
    from hepms.config import schema as run_schema
    from hepms.generate.config import GENERATION_KEYS

    run_data = run_schema()["data"]
    generate = {name: key.with_default(_GENERATE_DEFAULTS.get(name, key.default))
                for name, key in GENERATION_KEYS.items()}
    settings = {
        f.name: Key(f.default, f"SearchSettings.{f.name}", type(f.default))
        for f in dataclasses.fields(SearchSettings)
        if f.name not in ("v1", "seed")  # set per selection from study.v1 / study.seeds
    }
    _SCHEMA_CACHE = {
        "data": {
            "path": Key(None, "events from `hepms generate` (null: generate them as data.generate says)", str,
                        nullable=True),
            "max_events": Key(None, "events per process at most: the first N of each process in file order, "
                              "taken before the train/validation/test split (null: all)", int, nullable=True,
                              check=_positive),
            "generate": generate,
            "max_jets": run_data["max_jets"],
            "max_constituents": run_data["max_constituents"],
            "jet_features": Key(list(SELECTION_JET_FEATURES), "per-jet input features", list[str]),
            "fractions": run_data["fractions"],
            "split_seed": run_data["split_seed"],
        },
        "task": Key("calibration", "Task 1: calibration (visible tau pT, eta, phi) or tau_id", str,
                    choices=tuple(sorted(UPSTREAM_TASKS))),
        "candidates": {
            "upstream": Key(copy.deepcopy(DEFAULT_CANDIDATES["upstream"]), "Task-1 candidates {name: {kind, ...}}",
                            dict),
            "downstream": Key(copy.deepcopy(DEFAULT_CANDIDATES["downstream"]),
                              "Task-2 candidates {name: {kind, ...}}", dict),
        },
        "settings": settings,
        "study": {
            "methods": Key(list(METHOD_NAMES), "selection methods to run", list[str], choices=METHOD_NAMES,
                           check=_non_empty),
            "v1": Key([0.5], "Task-1 loss weights v1 (one selection per value)", list[float],
                      check=_unit_interval_items),
            "seeds": Key([0], "seeds (one selection per seed)", list[int], check=_non_empty),
            "validity": {
                "enabled": Key(None, "GP validity check of the calibration (null: on for task calibration)",
                               bool, nullable=True),
                "max_points": Key(1000, "training jets of the Gaussian process at most", int, check=_positive),
                "iterations": Key(60, "hyper-parameter fit iterations of the GP", int, check=_positive),
                "lr": Key(0.1, "learning rate of the GP fit", float, check=_positive),
                "nsigma": Key(2.0, "a calibration is valid within nsigma GP standard deviations", float,
                              check=_positive),
                "seed": Key(0, "seed of the GP's choice of training jets", int),
            },
            "threads": Key(None, "torch CPU threads (null: torch's default)", int, nullable=True, check=_positive),
            "plots": Key(True, "draw the figures", bool),
            "records": Key(None, "folder of the selection records (hepms.select.records), relative to the working "
                           "directory: finished selections are written there and skipped when found (null: none)",
                           str, nullable=True),
        },
    }
    return _SCHEMA_CACHE


@dataclass
class SelectionConfig:
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
    records: Optional[str] = None
    source: Optional[str] = None

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["settings"] = self.settings.to_dict()
        return out


def load_selection_config(source: Union[str, os.PathLike, Mapping[str, Any]]) -> SelectionConfig:
    """Read and validate a selection-study configuration from a YAML file or a mapping.

    Raises:
        ConfigError: (a ``ValueError``) unknown sections or keys, bad values, naming the dotted key.
    """
    if isinstance(source, Mapping):
        raw: dict[str, Any] = copy.deepcopy(dict(source))
        origin = None
    else:
        raw = read_yaml_chain(Path(source))
        origin = str(source)
    cfg = check_section("", selection_schema(), raw)
    candidates = {}
    for step in ("upstream", "downstream"):
        try:
            candidates[step] = validate_spec(cfg["candidates"][step], step)
        except ValueError as error:
            raise ConfigError(f"candidates.{step}: {error}") from None
    try:
        settings = SearchSettings(**cfg["settings"])
    except ValueError as error:
        raise ConfigError(f"settings: {error}") from None
    study = cfg["study"]
    return SelectionConfig(
        data=cfg["data"],
        task=cfg["task"],
        candidates=candidates,
        settings=settings,
        methods=tuple(dict.fromkeys(study["methods"])),
        v1=tuple(study["v1"]),
        seeds=tuple(study["seeds"]),
        validity=study["validity"],
        threads=study["threads"],
        plots=study["plots"],
        records=study["records"],
        source=origin,
    )
