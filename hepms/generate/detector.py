"""A simple parametric detector turning generator particles into particle-flow-like candidates.

The model is deliberately small, CMS-like, and vectorised over a whole batch of events (flat numpy
arrays, no Python loop over particles).  It stands in for Delphes, which the reference study used;
its numbers are listed in :class:`DetectorConfig` and in ``hepms/generate/README.md``.

What happens to a stable generator particle:

1. **Neutrinos** (|pdgId| 12, 14, 16) are invisible and dropped.
2. **Charged particles** inside the tracker (|eta| < 2.5, pT > 0.1 GeV) get a track with an
   efficiency that depends on pT and |eta| (0.70 / 0.95 below / above 1 GeV in the barrel,
   0.60 / 0.85 in the endcaps).  The track's pT is smeared with
   sigma(pT)/pT = a (+) b*pT (a = 0.7 % / 2 %, b = 1.5e-4 / 3e-4 per GeV, barrel / endcap).
   The candidate keeps the particle's direction, gets the charge, a particle-flow pdgId
   (+-211 for hadrons, +-11, +-13 for leptons) and the matching mass hypothesis.
3. **CHS** (optional): tracked charged particles from pileup are removed, as if their tracks pointed
   to another vertex.  Untracked charged pileup (outside the tracker or lost) cannot be removed and
   stays in the calorimeters, as in a real detector.
4. **Calorimeters** (|eta| < 3.0): photons and untracked electrons go to the ECAL, neutral hadrons
   and untracked charged hadrons to the HCAL; untracked muons leave only a minimum-ionising deposit,
   which is ignored.  Deposits are summed in cells (ECAL 0.0174 x 2pi/360 like a CMS crystal,
   HCAL 0.087 x 2pi/72 like a CMS tower), so collinear photons from a boosted pi0 merge as they do in
   the real ECAL.  The cell energy is smeared with
   sigma(E) = S*sqrt(E) (+) N (+) C*E (ECAL barrel S = 2.8 %, N = 0.12 GeV, C = 0.3 %; ECAL endcap
   5.7 %, 0.25 GeV, 0.55 %; HCAL 100 %, 0, 5 %; CMS test-beam / design values) and kept above
   0.5 GeV (ECAL) or 1.0 GeV (HCAL).  A cell becomes one massless neutral candidate (pdgId 22 for
   ECAL, 130 for HCAL) at the energy-weighted direction of what entered it, flagged as pileup when
   more than half of its true energy came from pileup.

Not modelled: out-of-time pileup, vertex/impact-parameter information, the forward calorimeter
(|eta| > 3, irrelevant for jets with |eta| < 2.5 and R = 0.4), shower spread into neighbouring
cells, fake tracks, electron/photon identification.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import awkward as ak
import numpy as np

#: Masses used for the particle-flow hypotheses (GeV).
PION_MASS = 0.13957039
ELECTRON_MASS = 0.00051099895
MUON_MASS = 0.1056583755

INVISIBLE_PDG = (12, 14, 16)


@dataclass(frozen=True)
class DetectorConfig:
    """Numbers of the parametric detector (CMS-like; GeV units)."""

    tracker_eta_max: float = 2.5
    track_pt_min: float = 0.1
    # tracking efficiency: (barrel |eta| <= barrel_eta, endcap) x (pT <= 1 GeV, pT > 1 GeV)
    barrel_eta: float = 1.5
    track_eff_barrel: tuple[float, float] = (0.70, 0.95)
    track_eff_endcap: tuple[float, float] = (0.60, 0.85)
    # sigma(pT)/pT = a (+) b * pT
    track_res_barrel: tuple[float, float] = (0.007, 1.5e-4)
    track_res_endcap: tuple[float, float] = (0.02, 3.0e-4)
    calo_eta_max: float = 3.0
    ecal_barrel_eta: float = 1.479
    # sigma(E) = S sqrt(E) (+) N (+) C E, given as (S, N, C)
    ecal_res_barrel: tuple[float, float, float] = (0.028, 0.12, 0.003)
    ecal_res_endcap: tuple[float, float, float] = (0.057, 0.25, 0.0055)
    hcal_res: tuple[float, float, float] = (1.00, 0.0, 0.05)
    ecal_cell_eta: float = 0.0174
    ecal_cells_phi: int = 360
    hcal_cell_eta: float = 0.087
    hcal_cells_phi: int = 72
    ecal_threshold: float = 0.5
    hcal_threshold: float = 1.0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent detector setting."""
        for name in ("tracker_eta_max", "calo_eta_max", "ecal_cell_eta", "hcal_cell_eta", "barrel_eta"):
            if not getattr(self, name) > 0:
                raise ValueError(f"detector.{name} must be > 0, got {getattr(self, name)}")
        for name in ("ecal_cells_phi", "hcal_cells_phi"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"detector.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("track_eff_barrel", "track_eff_endcap"):
            if any(not 0.0 <= e <= 1.0 for e in getattr(self, name)):
                raise ValueError(f"detector.{name} entries must lie in [0, 1], got {getattr(self, name)}")
        for name in ("track_pt_min", "ecal_threshold", "hcal_threshold"):
            if getattr(self, name) < 0:
                raise ValueError(f"detector.{name} must be >= 0, got {getattr(self, name)}")


def _wrap(dphi: np.ndarray) -> np.ndarray:
    """Wrap angles to [-pi, pi)."""
    return (dphi + np.pi) % (2 * np.pi) - np.pi


def _flat(particles: ak.Array, name: str, dtype: type) -> np.ndarray:
    return np.asarray(ak.flatten(particles[name], axis=1), dtype=dtype)


def simulate(particles: ak.Array, config: DetectorConfig, rng: np.random.Generator, chs: bool) -> ak.Array:
    """Turn stable particles into reconstructed candidates.

    Args:
        particles: ``[events][particles]`` records with ``px, py, pz, E`` (GeV), ``charge``,
            ``pdgId`` and ``isPileup``.
        config: detector numbers.
        rng: numpy Generator; it is consumed in a fixed order, so equal inputs and seeds give
            equal outputs.
        chs: remove tracked charged particles from pileup.

    Returns:
        ``[events][candidates]`` records with ``px, py, pz, E, pt, eta, phi, mass, charge, pdgId,
        isPileup``; per event the tracks come first, then the calorimeter cells.
    """
    n_events = len(particles)
    counts = np.asarray(ak.num(particles, axis=1), dtype=np.int64)
    px = _flat(particles, "px", np.float64)
    py = _flat(particles, "py", np.float64)
    pz = _flat(particles, "pz", np.float64)
    energy = _flat(particles, "E", np.float64)
    charge = _flat(particles, "charge", np.int32)
    pdg = _flat(particles, "pdgId", np.int32)
    pileup = _flat(particles, "isPileup", bool)
    event = np.repeat(np.arange(n_events, dtype=np.int64), counts)
    n = len(px)

    pt = np.hypot(px, py)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.where(pt > 0, np.arcsinh(pz / np.where(pt > 0, pt, 1.0)), np.sign(pz) * 1e9)
    phi = np.arctan2(py, px)
    abs_eta = np.abs(eta)
    apdg = np.abs(pdg)

    # Random numbers are drawn for every particle, in one call each, so the stream consumed does not
    # depend on which particles end up in which branch of the model.
    u_track = rng.random(n)
    g_track = rng.standard_normal(n)

    visible = ~np.isin(apdg, INVISIBLE_PDG)
    charged = visible & (charge != 0)
    barrel = abs_eta <= config.barrel_eta
    in_tracker = charged & (abs_eta < config.tracker_eta_max) & (pt > config.track_pt_min)
    high_pt = pt > 1.0
    eff = np.where(
        barrel,
        np.where(high_pt, config.track_eff_barrel[1], config.track_eff_barrel[0]),
        np.where(high_pt, config.track_eff_endcap[1], config.track_eff_endcap[0]),
    )
    tracked = in_tracker & (u_track < eff)
    keep_track = tracked & ~(pileup & chs)

    # --- tracks
    a = np.where(barrel, config.track_res_barrel[0], config.track_res_endcap[0])
    b = np.where(barrel, config.track_res_barrel[1], config.track_res_endcap[1])
    rel = np.hypot(a, b * pt)
    t_sel = np.flatnonzero(keep_track)
    t_pt = pt[t_sel] * np.clip(1.0 + rel[t_sel] * g_track[t_sel], 0.05, None)
    t_eta = eta[t_sel]
    t_phi = phi[t_sel]
    t_charge = charge[t_sel]
    t_apdg = apdg[t_sel]
    is_e = t_apdg == 11
    is_mu = t_apdg == 13
    # PDG convention: e-/mu- have positive ids and negative charge; pi+ is +211.
    t_pdg = np.where(is_e, -11 * t_charge, np.where(is_mu, -13 * t_charge, 211 * t_charge)).astype(np.int32)
    t_mass = np.where(is_e, ELECTRON_MASS, np.where(is_mu, MUON_MASS, PION_MASS))
    t_pileup = pileup[t_sel]
    t_event = event[t_sel]

    # --- calorimeters: everything visible that has no (kept or CHS-removed) track, except muons
    to_calo = visible & ~tracked & (apdg != 13) & (abs_eta < config.calo_eta_max)
    is_ecal = (apdg == 22) | (apdg == 11)
    c_sel = np.flatnonzero(to_calo)
    c_ecal = is_ecal[c_sel]
    c_e = energy[c_sel]
    c_eta = eta[c_sel]
    c_phi = phi[c_sel]
    c_event = event[c_sel]
    c_pileup = pileup[c_sel]

    cell_eta = np.where(c_ecal, config.ecal_cell_eta, config.hcal_cell_eta)
    n_phi = np.where(c_ecal, config.ecal_cells_phi, config.hcal_cells_phi)
    n_eta_max = int(math.ceil(2 * config.calo_eta_max / min(config.ecal_cell_eta, config.hcal_cell_eta))) + 1
    n_phi_max = max(config.ecal_cells_phi, config.hcal_cells_phi)
    ieta = np.floor((c_eta + config.calo_eta_max) / cell_eta).astype(np.int64)
    iphi = np.floor((c_phi + np.pi) / (2 * np.pi) * n_phi).astype(np.int64) % n_phi
    key = ((c_event * 2 + c_ecal.astype(np.int64)) * n_eta_max + ieta) * n_phi_max + iphi
    cells, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    n_cells = len(cells)
    phi_center = -np.pi + (iphi + 0.5) * (2 * np.pi / n_phi)
    e_sum = np.bincount(inverse, weights=c_e, minlength=n_cells)
    e_pu = np.bincount(inverse, weights=c_e * c_pileup, minlength=n_cells)
    eta_w = np.bincount(inverse, weights=c_e * c_eta, minlength=n_cells)
    dphi_w = np.bincount(inverse, weights=c_e * _wrap(c_phi - phi_center), minlength=n_cells)
    # `first` is the first deposit of each cell: all deposits of a cell share event and calorimeter.
    cell_ecal = c_ecal[first]
    cell_event = c_event[first]
    with np.errstate(divide="ignore", invalid="ignore"):
        cell_eta_mean = eta_w / e_sum
        # phi is averaged as an offset from the cell centre, which cannot straddle the -pi/pi seam
        cell_phi_mean = _wrap(phi_center[first] + dphi_w / e_sum)
        pu_fraction = e_pu / e_sum

    ecal_barrel = np.abs(cell_eta_mean) <= config.ecal_barrel_eta
    res = np.where(
        cell_ecal[:, None],
        np.where(ecal_barrel[:, None], np.asarray(config.ecal_res_barrel), np.asarray(config.ecal_res_endcap)),
        np.asarray(config.hcal_res),
    )
    sigma = np.sqrt(res[:, 0] ** 2 * e_sum + res[:, 1] ** 2 + (res[:, 2] * e_sum) ** 2)
    e_meas = e_sum + sigma * rng.standard_normal(n_cells)
    threshold = np.where(cell_ecal, config.ecal_threshold, config.hcal_threshold)
    keep_cell = np.flatnonzero(e_meas > threshold)
    n_eta = cell_eta_mean[keep_cell]
    n_pt = e_meas[keep_cell] / np.cosh(n_eta)
    n_phi_out = cell_phi_mean[keep_cell]
    n_pdg = np.where(cell_ecal[keep_cell], 22, 130).astype(np.int32)
    n_pileup = pu_fraction[keep_cell] > 0.5
    n_event = cell_event[keep_cell]

    # --- merge tracks and cells, grouped by event (stable: tracks first, then cells by cell key)
    all_event = np.concatenate([t_event, n_event])
    order = np.argsort(all_event, kind="stable")
    out_pt = np.concatenate([t_pt, n_pt])[order]
    out_eta = np.concatenate([t_eta, n_eta])[order]
    out_phi = np.concatenate([t_phi, n_phi_out])[order]
    out_mass = np.concatenate([t_mass, np.zeros(len(keep_cell))])[order]
    out_charge = np.concatenate([t_charge, np.zeros(len(keep_cell), np.int32)])[order].astype(np.int32)
    out_pdg = np.concatenate([t_pdg, n_pdg])[order]
    out_pileup = np.concatenate([t_pileup, n_pileup])[order]
    out_counts = np.bincount(all_event, minlength=n_events)

    out_px = out_pt * np.cos(out_phi)
    out_py = out_pt * np.sin(out_phi)
    out_pz = out_pt * np.sinh(out_eta)
    out_e = np.sqrt(out_px**2 + out_py**2 + out_pz**2 + out_mass**2)
    flat = ak.zip(
        {
            "px": out_px,
            "py": out_py,
            "pz": out_pz,
            "E": out_e,
            "pt": out_pt,
            "eta": out_eta,
            "phi": out_phi,
            "mass": out_mass,
            "charge": out_charge,
            "pdgId": out_pdg,
            "isPileup": out_pileup,
        }
    )
    return ak.unflatten(flat, out_counts)
