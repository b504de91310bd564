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

from typing import TYPE_CHECKING

from hepms.config_engine import Key, check_value

if TYPE_CHECKING:
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


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be > 0"


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _split_fractions(value: list[float]) -> str | None:
    if len(value) != 3 or any(f < 0 for f in value) or abs(sum(value) - 1.0) > 1e-6:
        return ("must be three non-negative numbers (train, validation, test) summing to 1 "
                "(split_fractions)")
    return None


#: The typed keys of :class:`GenerationConfig` (all fields but ``detector``): their types, checks
#: and documentation, written once. The ``data.generate`` sections of the run configuration
#: (:mod:`hepms.config`) and of the selection study (:mod:`hepms.select.config`) use these keys.
GENERATION_KEYS: dict[str, Key] = {
    "events_per_process": Key(1000, "events per process (H and Z)", int, check=_positive),
    "processes": Key(["H", "Z"], "processes to generate: H (gg->H->tautau, label 1), Z (Z->tautau, label 0)",
                     list[str], choices=tuple(PROCESS_LABELS)),
    "mu": Key(50.0, "mean number of pileup interactions (Poisson per event; 0: no pileup)", float,
              check=_non_negative),
    "chs": Key(True, "remove charged pileup with a track (charged-hadron subtraction)", bool),
    "seed": Key(12345, "generator seed (same seed and settings: same events, whatever the workers)", int,
                check=_non_negative),
    "block_size": Key(500, "events per seed block (one Pythia instance each)", int, check=_positive),
    "pileup_pool": Key(None, "minimum-bias events in each split's pileup pool (null: sized from the sample)",
                       int, nullable=True, check=_non_negative),
    "split_fractions": Key([0.6, 0.2, 0.2], "train / validation / test fractions of the generated events",
                           list[float], check=_split_fractions),
    "gen_jet_pt_min": Key(10.0, "minimum pT of generator-level jets (GeV)", float, check=_positive),
    "gen_match_dr": Key(0.2, "Delta R of the reco-to-generator jet matching", float, check=_positive),
    "pileup_process": Key("inelastic", "minimum-bias process of the pileup", str, choices=PILEUP_PROCESSES),
    "ecm": Key(13000.0, "centre-of-mass energy (GeV)", float, check=_positive),
    "jet_r": Key(0.4, "anti-kT jet radius", float, check=_positive),
    "jet_pt_min": Key(20.0, "minimum jet pT (GeV)", float, check=_positive),
    "jet_eta_max": Key(2.5, "maximum jet |eta|", float, check=_positive),
    "jet_pileup_subtraction": Key(True, "subtract the pileup density from the jet momenta", bool),
    "match_dr": Key(0.3, "Delta R of the jet-to-visible-tau matching (labels)", float, check=_positive),
}


def _detector_class() -> type:
    # Imported on use: the detector module needs numpy and awkward, and this module is read by
    # `hepms generate --help` (defaults of GENERATION_KEYS), which must start without them.
    from hepms.generate.detector import DetectorConfig

    return DetectorConfig


def _default(name: str) -> Any:
    """A field's default, from its key (lists become tuples: the config is frozen and hashable)."""
    value = GENERATION_KEYS[name].default
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class GenerationConfig:
    """Everything that determines the content of a generated dataset.

    Two runs with equal configs produce identical files, whatever the number of workers.
    """

    events_per_process: int = _default("events_per_process")
    processes: tuple[str, ...] = _default("processes")
    mu: float = _default("mu")
    chs: bool = _default("chs")
    seed: int = _default("seed")
    block_size: int = _default("block_size")
    #: minimum-bias events per split pool; None: sized from the sample (see :func:`pool_sizes`)
    pileup_pool: int | None = _default("pileup_pool")
    split_fractions: tuple[float, float, float] = _default("split_fractions")
    gen_jet_pt_min: float = _default("gen_jet_pt_min")
    gen_match_dr: float = _default("gen_match_dr")
    pileup_process: str = _default("pileup_process")
    ecm: float = _default("ecm")
    jet_r: float = _default("jet_r")
    jet_pt_min: float = _default("jet_pt_min")
    jet_eta_max: float = _default("jet_eta_max")
    jet_pileup_subtraction: bool = _default("jet_pileup_subtraction")
    match_dr: float = _default("match_dr")
    detector: DetectorConfig = field(default_factory=lambda: _detector_class()())

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad setting; return silently when all are fine.

        Every field is checked against its :data:`GENERATION_KEYS` entry (the configuration
        engine of :mod:`hepms.config_engine`), then the rules that involve several fields.
        """
        for name, spec in GENERATION_KEYS.items():
            check_value(name, spec, getattr(self, name))
        if len(self.processes) == 0:
            raise ValueError("processes must name at least one process")
        if len(set(self.processes)) != len(self.processes):
            raise ValueError(f"processes contains duplicates: {self.processes!r}")
        if self.pileup_pool is not None and self.mu > 0 and self.pileup_pool == 0:
            raise ValueError(f"pileup_pool must be a positive integer when mu > 0, got {self.pileup_pool!r}")
        if not isinstance(self.detector, _detector_class()):
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
