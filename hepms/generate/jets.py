"""Jet clustering with FastJet's awkward interface (many events per call), with pileup subtraction.

Anti-kT, R = 0.4 by default, on all reconstructed candidates (tracks and calorimeter cells) of an
event.  At <mu> = 50 the pileup pT density rho is tens of GeV per unit area, so raw anti-kT jets of
area ~0.5 pick up 10-25 GeV of pileup each and almost the whole tracker acceptance fills with
"jets" above 20 GeV.  As in the experiments (and in Delphes' pileup cards), the jet momentum is
therefore corrected by area subtraction, p_corr = p_raw * (1 - rho * A / pT_raw):

* rho is the event's median pT density on a grid of 0.55 x 0.55 cells in |eta| < 2.5: the algorithm
  of FastJet's ``GridMedianBackgroundEstimator`` (as in CMS' ``fixedGridRhoFastjet``),
  re-implemented in numpy because the awkward interface of ``fastjet`` has no area support;
* A = pi R^2, the area of a hard anti-kT jet (anti-kT jets are circular; soft pileup jets have
  smaller areas and are over-subtracted, which only helps to reject them).

Jets are kept if the corrected pT > 20 GeV and |eta| < 2.5, ordered by corrected pT.  The raw pT
is kept as ``rawPt``.  Every constituent is kept; readers cap the number of constituents when asked.
"""
from __future__ import annotations

import logging

import awkward as ak
import numpy as np

logger = logging.getLogger(__name__)

_BANNER_SILENCED = False


def _silence_banner() -> None:
    """FastJet prints a banner to stdout on first use; library code must not print."""
    global _BANNER_SILENCED
    if not _BANNER_SILENCED:
        import fastjet._swig as fj_swig

        fj_swig.ClusterSequence.set_fastjet_banner_stream(None)
        _BANNER_SILENCED = True


def grid_median_rho(candidates: ak.Array, eta_max: float = 2.5, spacing: float = 0.55) -> np.ndarray:
    """Median pT density per event (GeV per unit eta-phi area) on a grid of ~``spacing`` cells.

    Same construction as FastJet's ``GridMedianBackgroundEstimator(eta_max, spacing)``: the grid
    covers |eta| < ``eta_max`` and the full azimuth, empty cells count as zero.
    """
    n_events = len(candidates)
    n_eta = max(1, int(2 * eta_max / spacing + 0.5))
    n_phi = max(1, int(2 * np.pi / spacing + 0.5))
    area = (2 * eta_max / n_eta) * (2 * np.pi / n_phi)
    counts = np.asarray(ak.num(candidates, axis=1), dtype=np.int64)
    pt = np.asarray(ak.flatten(candidates["pt"]), dtype=np.float64)
    eta = np.asarray(ak.flatten(candidates["eta"]), dtype=np.float64)
    phi = np.asarray(ak.flatten(candidates["phi"]), dtype=np.float64)
    event = np.repeat(np.arange(n_events), counts)
    inside = np.abs(eta) < eta_max
    ieta = np.clip(((eta[inside] + eta_max) / (2 * eta_max) * n_eta).astype(np.int64), 0, n_eta - 1)
    iphi = np.clip(((phi[inside] + np.pi) / (2 * np.pi) * n_phi).astype(np.int64), 0, n_phi - 1)
    cell = (event[inside] * n_eta + ieta) * n_phi + iphi
    density = np.bincount(cell, weights=pt[inside], minlength=n_events * n_eta * n_phi) / area
    return np.median(density.reshape(n_events, n_eta * n_phi), axis=1)


def cluster(
    candidates: ak.Array,
    r: float = 0.4,
    pt_min: float = 20.0,
    eta_max: float = 2.5,
    subtract_pileup: bool = True,
) -> tuple[ak.Array, ak.Array, np.ndarray]:
    """Cluster ``candidates`` (``[events][candidates]`` with ``px, py, pz, E, pt, eta, phi``).

    Returns:
        ``(jets, constituent_index, rho)``: jets as ``[events][jets]`` records (``pt, eta, phi,
        mass, rawPt``; pileup-subtracted when ``subtract_pileup``), ordered by pT; for each jet the
        indices of its constituents in ``candidates`` (``[events][jets][constituents]``, FastJet's
        order); and the per-event pT density rho (GeV per unit area; 0 without subtraction).
    """
    import fastjet

    _silence_banner()
    inputs = ak.zip({name: candidates[name] for name in ("px", "py", "pz", "E")}, depth_limit=2)
    jet_def = fastjet.JetDefinition(fastjet.antikt_algorithm, r)
    sequence = fastjet.ClusterSequence(inputs, jet_def)
    # Subtraction only lowers pT, so the raw-pT cut inside FastJet loses no jet that passes the
    # corrected cut; the eta cut, the corrected cut and the ordering are applied here.
    raw = sequence.inclusive_jets(min_pt=pt_min)
    index = sequence.constituent_index(min_pt=pt_min)

    px, py, pz, e = raw["px"], raw["py"], raw["pz"], raw["E"]
    raw_pt = np.hypot(px, py)
    eta = np.arcsinh(pz / np.maximum(raw_pt, 1e-12))
    phi = np.arctan2(py, px)
    raw_mass = np.sqrt(np.maximum(e**2 - px**2 - py**2 - pz**2, 0.0))
    if subtract_pileup:
        rho = grid_median_rho(candidates, eta_max=eta_max)
        # 4-vector scaling: direction kept, pT and mass scaled by the same factor
        scale = np.maximum(1.0 - rho * (np.pi * r * r) / np.maximum(raw_pt, 1e-12), 0.0)
    else:
        rho = np.zeros(len(candidates))
        scale = 1.0
    jets = ak.zip({"pt": raw_pt * scale, "eta": eta, "phi": phi, "mass": raw_mass * scale, "rawPt": raw_pt})

    keep = (abs(jets["eta"]) < eta_max) & (jets["pt"] > pt_min)
    jets, index = jets[keep], index[keep]
    order = ak.argsort(jets["pt"], axis=1, ascending=False, stable=True)
    jets, index = jets[order], index[order]
    return jets, index, rho


def flatten_constituents(candidates: ak.Array, index: ak.Array) -> tuple[ak.Array, ak.Array]:
    """Constituents as one flat list per event, grouped by jet and ordered by pT inside each jet.

    A ROOT TTree written by uproot cannot hold a list of lists per entry, so constituents are stored
    flat with the index of their jet (``jetIdx``), NanoAOD-style.

    Args:
        candidates: ``[events][candidates]`` records (need ``pt``).
        index: ``[events][jets][constituents]`` indices into ``candidates`` (from :func:`cluster`).

    Returns:
        ``(constituents, jet_idx)``: ``[events][constituents]`` records taken from ``candidates``
        and the matching ``[events][constituents]`` int32 jet index.
    """
    n_events = len(candidates)
    cand_counts = np.asarray(ak.num(candidates, axis=1), dtype=np.int64)
    cand_offsets = np.zeros(n_events + 1, dtype=np.int64)
    np.cumsum(cand_counts, out=cand_offsets[1:])

    n_jets = np.asarray(ak.num(index, axis=1), dtype=np.int64)
    per_jet = np.asarray(ak.flatten(ak.num(index, axis=2)), dtype=np.int64)
    local = np.asarray(ak.flatten(index, axis=None), dtype=np.int64)
    jet_event = np.repeat(np.arange(n_events), n_jets)
    row_event = np.repeat(jet_event, per_jet)
    rows = local + cand_offsets[row_event]
    # jet index inside its event, per constituent
    jet_first = np.zeros(len(n_jets) + 1, dtype=np.int64)
    np.cumsum(n_jets, out=jet_first[1:])
    global_jet = np.repeat(np.arange(len(per_jet)), per_jet)
    jet_idx = (global_jet - jet_first[row_event]).astype(np.int32)

    flat_candidates = ak.flatten(candidates, axis=1)
    pt = np.asarray(flat_candidates["pt"], dtype=np.float64)[rows]
    # global_jet increases with (event, jet), so this groups by event and jet, pT descending inside
    order = np.lexsort((-pt, global_jet))
    rows, jet_idx = rows[order], jet_idx[order]
    counts = np.bincount(row_event, minlength=n_events)
    constituents = ak.unflatten(flat_candidates[rows], counts)
    return constituents, ak.unflatten(jet_idx, counts)
