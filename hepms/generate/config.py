"""Settings of a generation run and their validation.

Every setting is checked here, before any Pythia instance is created, so that a typo in a long
production fails in milliseconds with a :class:`ValueError` that names the setting.
"""
from __future__ import annotations

import math
import numbers
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hepms.generate.detector import DetectorConfig

#: Known processes: name -> (event-level label, "run" number written to the file).
#: The run number is the PDG id of the boson, so (run, event) is unique across the samples.
PROCESS_LABELS: dict[str, int] = {"H": 1, "Z": 0}
PROCESS_RUN: dict[str, int] = {"H": 25, "Z": 23}

#: Minimum-bias processes usable for pileup (see hepms.generate.pythia).
PILEUP_PROCESSES: tuple[str, ...] = ("inelastic", "nondiffractive")

#: Pythia's Random:seed accepts 0..900_000_000 (0 would mean "seed from the clock").
PYTHIA_SEED_MAX = 900_000_000

#: Names of the splits decided at generation time (stored per event as ``split`` = 0, 1, 2).
SPLIT_NAMES: tuple[str, ...] = ("train", "validation", "test")

#: Automatic pileup-pool size (``pileup_pool=None``): each split's pool holds enough minimum-bias
#: events that, on average, one is drawn at most POOL_REUSE times within its split
#: (``ceil(mu * events of the split / POOL_REUSE)``), and at least POOL_MIN_EVENTS.
POOL_REUSE = 25
POOL_MIN_EVENTS = 200

#: Events handed to Pythia's nextBatch / the detector / FastJet in one go inside a block.  A fixed
#: constant (not a tunable) because the numpy random stream is consumed per chunk: changing it
#: would change the smearing of a given seed.
CHUNK_EVENTS = 100


@dataclass(frozen=True)
class GenerationConfig:
    """Everything that determines the content of a generated dataset.

    Two runs with equal configs produce identical files, whatever the number of workers.
    """

    events_per_process: int = 1000
    processes: tuple[str, ...] = ("H", "Z")
    mu: float = 50.0
    chs: bool = True
    seed: int = 12345
    block_size: int = 500
    #: minimum-bias events per split pool; None: sized from the sample (see :func:`pool_sizes`)
    pileup_pool: int | None = None
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    gen_jet_pt_min: float = 10.0
    gen_match_dr: float = 0.2
    pileup_process: str = "inelastic"
    ecm: float = 13000.0
    jet_r: float = 0.4
    jet_pt_min: float = 20.0
    jet_eta_max: float = 2.5
    jet_pileup_subtraction: bool = True
    match_dr: float = 0.3
    detector: DetectorConfig = field(default_factory=DetectorConfig)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad setting; return silently when all are fine."""
        _positive_int("events_per_process", self.events_per_process)
        _positive_int("block_size", self.block_size)
        if isinstance(self.processes, str) or not isinstance(self.processes, (tuple, list)):
            raise ValueError(
                f"processes must be a sequence of names from {sorted(PROCESS_LABELS)}, "
                f"got {self.processes!r}"
            )
        if len(self.processes) == 0:
            raise ValueError("processes must name at least one process")
        for proc in self.processes:
            if proc not in PROCESS_LABELS:
                raise ValueError(
                    f"processes: unknown process {proc!r}; known: {sorted(PROCESS_LABELS)}"
                )
        if len(set(self.processes)) != len(self.processes):
            raise ValueError(f"processes contains duplicates: {self.processes!r}")
        _finite_number("mu", self.mu)
        if self.mu < 0:
            raise ValueError(f"mu (mean number of pileup interactions) must be >= 0, got {self.mu}")
        for name in ("chs", "jet_pileup_subtraction"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.pileup_pool is None:
            pass
        elif self.mu > 0:
            _positive_int("pileup_pool", self.pileup_pool)
        elif (
            isinstance(self.pileup_pool, bool)
            or not isinstance(self.pileup_pool, numbers.Integral)
            or self.pileup_pool < 0
        ):
            raise ValueError(f"pileup_pool must be a non-negative integer, got {self.pileup_pool!r}")
        if self.pileup_process not in PILEUP_PROCESSES:
            raise ValueError(
                f"pileup_process: unknown {self.pileup_process!r}; known: {list(PILEUP_PROCESSES)}"
            )
        fr = self.split_fractions
        if (
            not isinstance(fr, (tuple, list))
            or len(fr) != 3
            or any(isinstance(f, bool) or not isinstance(f, numbers.Real) or not math.isfinite(f) or f < 0 for f in fr)
            or abs(sum(fr) - 1.0) > 1e-6
        ):
            raise ValueError(
                f"split_fractions must be three non-negative numbers (train, validation, test) summing "
                f"to 1, got {fr!r}"
            )
        for name in ("ecm", "jet_r", "jet_pt_min", "jet_eta_max", "match_dr", "gen_jet_pt_min", "gen_match_dr"):
            value = getattr(self, name)
            _finite_number(name, value)
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if not isinstance(self.detector, DetectorConfig):
            raise ValueError(f"detector must be a DetectorConfig, got {type(self.detector).__name__}")
        self.detector.validate()

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view, recorded in the manifest."""
        out = asdict(self)
        out["processes"] = list(self.processes)
        out["split_fractions"] = list(self.split_fractions)
        out["chunk_events"] = CHUNK_EVENTS
        return out

    def pool_sizes(self) -> list[int]:
        """Minimum-bias events in the pool of each split (train, validation, test).

        ``pileup_pool`` given: that many per split (0 for a split with no events).  Otherwise
        ``max(POOL_MIN_EVENTS, ceil(mu * N_split / POOL_REUSE))`` with ``N_split`` the expected
        events of the split over all processes, so that a pool event is drawn about
        ``POOL_REUSE`` times or less inside its split, and never in another split.
        """
        if self.mu <= 0:
            return [0, 0, 0]
        total = self.events_per_process * len(self.processes)
        sizes = []
        for fraction in self.split_fractions:
            if fraction <= 0:
                sizes.append(0)
            elif self.pileup_pool is not None:
                sizes.append(int(self.pileup_pool))
            else:
                sizes.append(max(POOL_MIN_EVENTS, math.ceil(self.mu * fraction * total / POOL_REUSE)))
        return sizes


def validate_workers(workers: int | None) -> int:
    """Resolve ``workers`` (None = all cores this process may use) or raise ``ValueError``."""
    if workers is None:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            return max(1, os.cpu_count() or 1)
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
        raise ValueError(f"workers must be a positive integer or None, got {workers!r}")
    return int(workers)


def validate_output_dir(output_dir: str | os.PathLike[str]) -> Path:
    """Create ``output_dir`` if needed and prove it is writable, or raise ``ValueError``.

    Checked with a real temporary file: permission bits alone miss read-only mounts.
    """
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"output_dir {str(path)!r} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".hepms-write-test-"):
            pass
    except OSError as exc:
        raise ValueError(f"output_dir {str(path)!r} is not writable: {exc}") from exc
    return path


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _finite_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
