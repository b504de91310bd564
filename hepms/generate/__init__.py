"""Simulated H->tautau / Z->tautau events: Pythia 8 + pileup + a parametric detector + FastJet.

Public API::

    generate(output_dir, events_per_process=1000, processes=("H", "Z"), mu=50, chs=True,
             seed=12345, workers=None, progress=True, ...) -> manifest dict
    read_events(path, max_jets=8, max_constituents=50) -> awkward Events[jets[constituents]]
    validation_plots(path_or_events, outdir) -> list of written files
    summarize(path_or_events) -> dict of summary numbers

Files are CMS NanoAOD / PFNano-like; coffea reads them with
``hepms.generate.schema.HepmsNanoAODSchema`` (imported from there: it needs coffea).
The physics, the detector model and the ROOT schema are documented in ``hepms/generate/README.md``.
Heavy dependencies (pythia8mc, fastjet, uproot, matplotlib) are imported only when used.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "DetectorConfig",
    "GenerationConfig",
    "generate",
    "read_events",
    "summarize",
    "validation_plots",
]

if TYPE_CHECKING:  # pragma: no cover
    from hepms.generate.config import GenerationConfig
    from hepms.generate.detector import DetectorConfig
    from hepms.generate.io import read_events
    from hepms.generate.pipeline import generate
    from hepms.generate.plots import summarize, validation_plots

_LAZY = {
    "GenerationConfig": "hepms.generate.config",
    "DetectorConfig": "hepms.generate.detector",
    "read_events": "hepms.generate.io",
    "generate": "hepms.generate.pipeline",
    "summarize": "hepms.generate.plots",
    "validation_plots": "hepms.generate.plots",
}


def __getattr__(name: str) -> Any:
    # Lazy: `import hepms.generate` stays cheap and does not need pythia8mc or matplotlib.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hepms.generate' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
