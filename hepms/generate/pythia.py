"""Pythia 8 (``pythia8mc``) set-up for the signal processes and minimum-bias pileup.

Events are produced with ``Pythia.nextBatch(n)``, which returns awkward records of whole events in
one call; looping over particles in Python costs about twice the time.

Processes (13 TeV pp, ISR, FSR, MPI and hadronisation on, Pythia defaults otherwise):

* ``H``: gg -> H (m_H = 125 GeV, Pythia default), H -> tau tau.
* ``Z``: f fbar -> Z/gamma* -> tau tau with full Z/gamma* interference, 60 < m_hat < 120 GeV.
* pileup: minimum-bias ``SoftQCD:inelastic`` (default) or ``SoftQCD:nonDiffractive``.

Taus decay hadronically only (``15:offIfAny = 11 13``), as in the reference study.  Particles with
c*tau > 10 mm (K0S, Lambda, ...) are left stable, the usual LHC generator-level convention.
"""
from __future__ import annotations

import logging
from typing import Any

import awkward as ak
import numpy as np

logger = logging.getLogger(__name__)

COMMON_SETTINGS: tuple[str, ...] = (
    "Print:quiet = on",
    "Next:numberCount = 0",
    "Random:setSeed = on",
    # stable if c*tau > 10 mm, as in LHC experiments' generator-level definition
    "ParticleDecays:limitTau0 = on",
    "ParticleDecays:tau0Max = 10",
)

HADRONIC_TAUS: tuple[str, ...] = ("15:offIfAny = 11 13",)

PROCESS_SETTINGS: dict[str, tuple[str, ...]] = {
    "H": (
        "HiggsSM:gg2H = on",
        "25:onMode = off",
        "25:onIfMatch = 15 -15",
        *HADRONIC_TAUS,
    ),
    "Z": (
        "WeakSingleBoson:ffbar2gmZ = on",
        "WeakZ0:gmZmode = 0",  # full Z/gamma* interference
        "PhaseSpace:mHatMin = 60",
        "PhaseSpace:mHatMax = 120",
        "23:onMode = off",
        "23:onIfMatch = 15 -15",
        *HADRONIC_TAUS,
    ),
    # Pileup.  <mu> counts inelastic pp interactions, so "inelastic" (non-diffractive + diffractive)
    # is the physical choice; its initialisation takes ~8 s (diffractive MPI set-up) against 0.3 s
    # for "nondiffractive", which is ~30 % busier per event and useful for quick tests.
    "inelastic": ("SoftQCD:inelastic = on",),
    "nondiffractive": ("SoftQCD:nonDiffractive = on",),
}


def pythia_settings(process: str, seed: int, ecm: float) -> list[str]:
    """All ``readString`` lines for ``process`` (a key of :data:`PROCESS_SETTINGS`)."""
    if process not in PROCESS_SETTINGS:
        raise ValueError(f"unknown process {process!r}; known: {sorted(PROCESS_SETTINGS)}")
    return [f"Beams:eCM = {ecm:g}", *COMMON_SETTINGS, f"Random:seed = {seed}", *PROCESS_SETTINGS[process]]


def make_pythia(process: str, seed: int, ecm: float) -> Any:
    """Create and initialise a Pythia instance; raise ``RuntimeError`` if Pythia refuses."""
    import pythia8mc  # imported here so that validation and reading files never need it

    pythia = pythia8mc.Pythia("", False)  # no banner
    for line in pythia_settings(process, seed, ecm):
        if not pythia.readString(line):
            raise RuntimeError(f"Pythia rejected setting {line!r}")
    if not pythia.init():
        raise RuntimeError(f"Pythia initialisation failed for process {process!r} (seed {seed})")
    return pythia


def next_events(pythia: Any, n: int) -> ak.Array:
    """Exactly ``n`` events from ``pythia`` as awkward records (``nextBatch``).

    ``nextBatch`` skips events that fail (its default ``errorMode='skip'``), so it may return fewer
    than asked; the shortfall is requested again.
    """
    batches = []
    missing = n
    for _ in range(100):
        batch = pythia.nextBatch(missing)
        if len(batch):
            batches.append(batch)
        missing -= len(batch)
        if missing <= 0:
            break
    else:
        raise RuntimeError(f"Pythia produced only {n - missing} of {n} events in 100 attempts")
    return batches[0] if len(batches) == 1 else ak.concatenate(batches)


class ChargeTable:
    """Vectorised pdgId -> electric charge (in units of e), using Pythia's particle data."""

    def __init__(self, pythia: Any) -> None:
        self._pdata = pythia.particleData
        self._ids = np.zeros(0, dtype=np.int64)
        self._charges = np.zeros(0, dtype=np.int32)

    def __call__(self, pdg: np.ndarray) -> np.ndarray:
        pdg = np.asarray(pdg, dtype=np.int64)
        unknown = np.setdiff1d(np.unique(pdg), self._ids)
        if len(unknown):
            new = np.array([round(self._pdata.charge(int(i))) for i in unknown], dtype=np.int32)
            ids = np.concatenate([self._ids, unknown])
            order = np.argsort(ids)
            self._ids = ids[order]
            self._charges = np.concatenate([self._charges, new])[order]
        return self._charges[np.searchsorted(self._ids, pdg)]


def final_state(events: ak.Array, charge_of: ChargeTable, is_pileup: bool = False) -> ak.Array:
    """Stable particles (status > 0) as ``[events][particles]`` records.

    Fields: ``px, py, pz, E`` (GeV), ``charge`` (int), ``pdgId``, ``isPileup``.
    """
    prt = events["prt"]
    stable = prt[prt["status"] > 0]
    counts = ak.num(stable, axis=1)
    p = stable["p"]
    pdg = np.asarray(ak.flatten(stable["id"]), dtype=np.int32)
    flat = ak.zip(
        {
            "px": np.asarray(ak.flatten(p["px"]), dtype=np.float64),
            "py": np.asarray(ak.flatten(p["py"]), dtype=np.float64),
            "pz": np.asarray(ak.flatten(p["pz"]), dtype=np.float64),
            "E": np.asarray(ak.flatten(p["e"]), dtype=np.float64),
            "charge": charge_of(pdg),
            "pdgId": pdg,
            "isPileup": np.full(len(pdg), is_pileup),
        }
    )
    return ak.unflatten(flat, counts)
