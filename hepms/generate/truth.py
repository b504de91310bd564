"""Generator truth: the taus of the hard process, their decays, and jet <-> tau matching.

A hard tau is the *last* copy of a tau (after QED/QCD recoil copies) whose chain of mothers through
earlier tau copies reaches the H or the Z/gamma* of the hard process (Pythia gives the Z/gamma*
propagator the id 23 whatever the interference setting).  Taus from hadron decays (e.g. D_s -> tau
nu in the underlying event) and taus from a photon splitting (gamma -> tau tau, e.g. a photon
radiated by a hard tau, seen as a Z event with four taus, two of them of a few GeV) are not hard
taus: their first non-tau ancestor is a photon or a hadron, not the boson.

Decay products are followed through short-lived intermediate states (rho, a1, omega, eta, K*, ...)
down to stable particles, stopping at pi0s.  Counted are

* ``nCharged``: stable charged descendants (the prongs),
* ``nPi0``: neutral pions (K0S / K0L count as neither, as in the CMS convention),
* the neutrinos, whose sum is subtracted from the tau momentum to give the *visible* tau.

``decayMode`` uses the CMS HPS code ``5 * (nCharged - 1) + min(nPi0, 4)``: 0 = 1-prong, 1 = 1-prong +
pi0, 2 = 1-prong + 2 pi0, 10 = 3-prong, 11 = 3-prong + pi0; -1 marks a leptonic decay (not produced
with the default settings, which force hadronic decays).
"""
from __future__ import annotations

import awkward as ak
import numpy as np

from hepms.generate.pythia import ChargeTable

NEUTRINOS = (12, 14, 16)
#: Parents that make a tau a hard-process tau: the Higgs (25) and the Z/gamma* (23).  Not 22: a
#: real photon's taus come from a photon splitting, not from the hard process.
BOSONS = (23, 25)


def _pt_eta_phi_m(px: np.ndarray, py: np.ndarray, pz: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, ...]:
    pt = np.hypot(px, py)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.arcsinh(pz / np.maximum(pt, 1e-12))
    phi = np.arctan2(py, px)
    mass = np.sqrt(np.maximum(e**2 - px**2 - py**2 - pz**2, 0.0))
    return pt, eta, phi, mass


def _daughters(d1: int, d2: int) -> list[int]:
    """Local daughter indices following Pythia's daughter1/daughter2 conventions."""
    if d1 <= 0 and d2 <= 0:
        return []
    if d2 == d1 or d2 <= 0:
        return [d1]
    if d2 > d1:
        return list(range(d1, d2 + 1))
    return [d1, d2]


def hard_taus(events: ak.Array, charge_of: ChargeTable) -> ak.Array:
    """Hard-process taus of each event as ``[events][taus]`` records, ordered by visible pT.

    Fields: ``pt, eta, phi, mass`` (full tau), ``visPt, visEta, visPhi, visMass`` (tau minus its
    neutrinos), ``charge``, ``nCharged``, ``nPi0``, ``decayMode``.
    """
    prt = events["prt"]
    counts = np.asarray(ak.num(prt, axis=1), dtype=np.int64)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    pid = np.asarray(ak.flatten(prt["id"]), dtype=np.int64)
    status = np.asarray(ak.flatten(prt["status"]), dtype=np.int64)
    mother1 = np.asarray(ak.flatten(prt["mother1"]), dtype=np.int64)
    dau1 = np.asarray(ak.flatten(prt["daughter1"]), dtype=np.int64)
    dau2 = np.asarray(ak.flatten(prt["daughter2"]), dtype=np.int64)
    p = prt["p"]
    mom = np.stack([np.asarray(ak.flatten(p[c]), dtype=np.float64) for c in ("px", "py", "pz", "e")], axis=1)
    event_of = np.repeat(np.arange(len(counts)), counts)
    base = offsets[event_of]  # global index of each particle's event entry 0
    apid = np.abs(pid)

    # Last copies of taus: the first daughter is not a tau (vectorised over the whole batch).
    is_tau = np.flatnonzero(apid == 15)
    first_dau = base[is_tau] + np.maximum(dau1[is_tau], 0)
    last = is_tau[(dau1[is_tau] > 0) & (apid[first_dau] != 15)]
    # Climb through earlier tau copies to the first non-tau ancestor (vectorised, a few steps).
    top = last.copy()
    for _ in range(64):
        mother = base[top] + mother1[top]
        climb = (mother1[top] > 0) & (apid[mother] == 15)
        if not climb.any():
            break
        top = np.where(climb, mother, top)
    origin = apid[base[top] + mother1[top]]
    hard = last[np.isin(origin, BOSONS)]

    charge_cache: dict[int, int] = {}

    def charge(code: int) -> int:
        if code not in charge_cache:
            charge_cache[code] = int(charge_of(np.array([code]))[0])
        return charge_cache[code]

    n_hard = len(hard)
    vis = mom[hard].copy()
    n_charged = np.zeros(n_hard, dtype=np.int32)
    n_pi0 = np.zeros(n_hard, dtype=np.int32)
    leptonic = np.zeros(n_hard, dtype=bool)
    # The tree walk is in Python, but only over the ~10 decay products of 2 taus per event.
    for k, g in enumerate(hard.tolist()):
        off = int(base[g])
        stack = [off + d for d in _daughters(int(dau1[g]), int(dau2[g]))]
        direct = True
        while stack:
            next_stack = []
            for i in stack:
                a = int(apid[i])
                if a in NEUTRINOS:
                    vis[k] -= mom[i]
                elif direct and a in (11, 13):
                    leptonic[k] = True
                elif a == 111:
                    n_pi0[k] += 1
                elif status[i] > 0:
                    if charge(int(pid[i])) != 0:
                        n_charged[k] += 1
                else:
                    next_stack.extend(off + d for d in _daughters(int(dau1[i]), int(dau2[i])))
            stack = next_stack
            direct = False

    decay_mode = np.where(leptonic, -1, 5 * (n_charged - 1) + np.minimum(n_pi0, 4)).astype(np.int32)
    pt, eta, phi, mass = _pt_eta_phi_m(*mom[hard].T)
    vpt, veta, vphi, vmass = _pt_eta_phi_m(*vis.T)
    tau_event = event_of[hard]
    # order: by event, then visible pT descending
    order = np.lexsort((-vpt, tau_event))
    flat = ak.zip(
        {
            "pt": pt[order],
            "eta": eta[order],
            "phi": phi[order],
            "mass": mass[order],
            "visPt": vpt[order],
            "visEta": veta[order],
            "visPhi": vphi[order],
            "visMass": vmass[order],
            "charge": np.where(pid[hard] > 0, -1, 1).astype(np.int32)[order],
            "nCharged": n_charged[order],
            "nPi0": n_pi0[order],
            "decayMode": decay_mode[order],
        }
    )
    return ak.unflatten(flat, np.bincount(tau_event, minlength=len(counts)))


def delta_r_table(eta1: ak.Array, phi1: ak.Array, eta2: ak.Array, phi2: ak.Array) -> ak.Array:
    """``[events][i][j]`` delta-R between collection 1 (i) and collection 2 (j)."""
    a_eta, b_eta = ak.unzip(ak.cartesian([eta1, eta2], axis=1, nested=True))
    a_phi, b_phi = ak.unzip(ak.cartesian([phi1, phi2], axis=1, nested=True))
    dphi = (a_phi - b_phi + np.pi) % (2 * np.pi) - np.pi
    return np.sqrt((a_eta - b_eta) ** 2 + dphi**2)


def closest(table: ak.Array, dr_max: float) -> ak.Array:
    """Index of the closest object within ``dr_max`` for each row of a ``[events][i][j]`` table."""
    best = ak.argmin(table, axis=2, keepdims=True)
    best_dr = ak.firsts(table[best], axis=2)
    idx = ak.firsts(best, axis=2)
    ok = ak.fill_none(best_dr < dr_max, False)
    return ak.values_astype(ak.where(ok, ak.fill_none(idx, -1), -1), np.int32)


def match(jets: ak.Array, taus: ak.Array, dr_max: float) -> tuple[ak.Array, ak.Array]:
    """Match jets and visible taus by delta-R.

    Returns:
        ``(jet_tau_idx, tau_jet_idx)``: for each jet the index of the closest visible tau within
        ``dr_max`` (else -1), and for each tau the index of the closest jet within ``dr_max``
        (else -1).  Indices are local to the event, as in NanoAOD.
    """
    dr = delta_r_table(jets["eta"], jets["phi"], taus["visEta"], taus["visPhi"])  # [ev][jet][tau]
    jet_tau = closest(dr, dr_max)
    dr_t = delta_r_table(taus["visEta"], taus["visPhi"], jets["eta"], jets["phi"])  # [ev][tau][jet]
    tau_jet = closest(dr_t, dr_max)
    return jet_tau, tau_jet


def match_gen_jets(jets: ak.Array, gen_jets: ak.Array, dr_max: float) -> ak.Array:
    """For each reconstructed jet the index of the closest generator jet within ``dr_max`` (else
    -1), as NanoAOD's ``Jet_genJetIdx``."""
    dr = delta_r_table(jets["eta"], jets["phi"], gen_jets["eta"], gen_jets["phi"])
    return closest(dr, dr_max)
