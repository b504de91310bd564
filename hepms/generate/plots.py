"""Validation plots and summary numbers of a generated sample (hist + mplhep).

Figures are built with ``matplotlib.figure.Figure`` (the Agg canvas, no pyplot), so they never
touch an interactive backend or global pyplot state.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import awkward as ak
import numpy as np

logger = logging.getLogger(__name__)

PROCESS_NAMES = {1: r"$H\to\tau\tau$", 0: r"$Z/\gamma^*\to\tau\tau$"}

#: Decay-mode groups: key -> (axis label, predicate on (nCharged, nPi0)).
DECAY_GROUPS: dict[str, tuple[str, Any]] = {
    "1p": ("1p", lambda c, n: (c == 1) & (n == 0)),
    "1p1pi0": (r"1p+$\pi^0$", lambda c, n: (c == 1) & (n == 1)),
    "1p2pi0+": (r"1p+$\geq2\pi^0$", lambda c, n: (c == 1) & (n >= 2)),
    "3p": ("3p", lambda c, n: (c == 3) & (n == 0)),
    "3p1pi0+": (r"3p+$\geq1\pi^0$", lambda c, n: (c == 3) & (n >= 1)),
    "other": ("other", lambda c, n: (c != 1) & (c != 3)),
}

EventsSource = Union[str, "os.PathLike[str]", Sequence[Any], ak.Array]


def _load(path_or_events: EventsSource) -> ak.Array:
    if isinstance(path_or_events, ak.Array):
        return path_or_events
    from hepms.generate.io import read_events

    # plots describe the full sample, not what a capped reader returns
    return read_events(path_or_events, max_jets=None, max_constituents=None)


def _visible_mass(taus: ak.Array) -> np.ndarray:
    """Invariant mass of the two leading visible taus (events with two taus)."""
    two = taus[ak.num(taus, axis=1) >= 2]
    px = [np.asarray(two["visPt"][:, i] * np.cos(two["visPhi"][:, i]), np.float64) for i in (0, 1)]
    py = [np.asarray(two["visPt"][:, i] * np.sin(two["visPhi"][:, i]), np.float64) for i in (0, 1)]
    pz = [np.asarray(two["visPt"][:, i] * np.sinh(two["visEta"][:, i]), np.float64) for i in (0, 1)]
    m = [np.asarray(two["visMass"][:, i], np.float64) for i in (0, 1)]
    e = [np.sqrt(px[i] ** 2 + py[i] ** 2 + pz[i] ** 2 + m[i] ** 2) for i in (0, 1)]
    m2 = (e[0] + e[1]) ** 2 - (px[0] + px[1]) ** 2 - (py[0] + py[1]) ** 2 - (pz[0] + pz[1]) ** 2
    return np.sqrt(np.maximum(m2, 0.0))


#: Generator-jet pT bins (GeV) of the response / resolution measurement.
RESPONSE_BINS: tuple[float, ...] = (20, 30, 40, 60, 80, 120, 200)


def jet_response(events: ak.Array, bins: Sequence[float] = RESPONSE_BINS) -> dict[str, np.ndarray]:
    """Jet response and resolution versus generator-jet pT, from jets matched to a generator jet.

    Response: median of pT(reco) / pT(gen) in each gen-pT bin.  Resolution: half the 16-84 %
    quantile range of the ratio divided by its median (robust against the non-Gaussian tails that
    pileup jets produce).  Light and tau jets together; empty bins give NaN.

    Returns:
        ``{"edges", "response", "resolution", "jets"}`` (per bin, ``jets`` = matched jets used).
    """
    jets = events["jets"]
    idx = jets["genJetIdx"]
    gen = events["genJets"]
    has = idx >= 0
    gen_pt = np.asarray(ak.flatten(gen["pt"][ak.mask(idx, has)][has], axis=1), np.float64)
    reco_pt = np.asarray(ak.flatten(jets["pt"][has], axis=1), np.float64)
    ratio = reco_pt / gen_pt
    edges = np.asarray(bins, np.float64)
    which = np.digitize(gen_pt, edges) - 1
    response, resolution, count = [], [], []
    for b in range(len(edges) - 1):
        r = ratio[which == b]
        count.append(len(r))
        if len(r) < 5:
            response.append(np.nan)
            resolution.append(np.nan)
            continue
        q16, q50, q84 = np.percentile(r, [16, 50, 84])
        response.append(q50)
        resolution.append((q84 - q16) / 2 / q50)
    return {"edges": edges, "response": np.array(response), "resolution": np.array(resolution),
            "jets": np.array(count)}


def _tau_jet_pair_mass_median(jets: ak.Array) -> float:
    """Median invariant mass of the two leading tau-matched reconstructed jets (events with two):
    the detector-level counterpart of the visible di-tau mass."""
    taus = jets[jets["isTau"]]
    two = taus[ak.num(taus, axis=1) >= 2]
    if len(two) == 0:
        return float("nan")
    pt, eta, phi, m = (np.asarray(two[f][:, :2], np.float64) for f in ("pt", "eta", "phi", "mass"))
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    e = np.sqrt(px**2 + py**2 + pz**2 + m**2)
    m2 = e.sum(1) ** 2 - px.sum(1) ** 2 - py.sum(1) ** 2 - pz.sum(1) ** 2
    return float(np.median(np.sqrt(np.maximum(m2, 0.0))))


def summarize(path_or_events: EventsSource) -> dict[str, dict[str, Any]]:
    """Summary numbers per process (keyed ``"H"`` / ``"Z"``), all from the events themselves.

    Per process: events, mean visible di-tau mass, jets per event, tau-jet fraction of jets,
    mean constituents of tau and light jets (full counts), fraction of visible taus with pT > 20 GeV
    and |eta| < 2.3 matched to a jet, decay-mode fractions, mean nPU and rho, rho per pileup
    interaction (the sum of rho over the sum of nPU), medians of the visible di-tau mass (generator)
    and of the mass of the two leading tau-matched jets (detector), the jet response, resolution (as in :func:`jet_response`, all matched jets with gen pT > 20 GeV),
    fraction of constituents from pileup and fraction of light jets with most of their pT from
    pileup.
    """
    events = _load(path_or_events)
    out: dict[str, dict[str, Any]] = {}
    for label, name in ((1, "H"), (0, "Z")):
        sel = events[events["label"] == label]
        if len(sel) == 0:
            continue
        jets = sel["jets"]
        flat_jets = ak.flatten(jets, axis=1)
        is_tau = np.asarray(flat_jets["isTau"], bool)
        n_const = np.asarray(flat_jets["nConstituents"], np.float64)
        taus = ak.flatten(sel["taus"], axis=1)
        vis_ok = (np.asarray(taus["visPt"]) > 20) & (np.abs(np.asarray(taus["visEta"])) < 2.3)
        matched = np.asarray(taus["jetIdx"]) >= 0
        n_ch, n_pi0 = np.asarray(taus["nCharged"]), np.asarray(taus["nPi0"])
        out[name] = {
            "events": len(sel),
            "mean_visible_mass": float(np.mean(_visible_mass(sel["taus"]))),
            "jets_per_event": float(np.mean(ak.num(jets, axis=1))),
            "tau_jet_fraction": float(np.mean(is_tau)) if len(is_tau) else float("nan"),
            "constituents_per_tau_jet": float(np.mean(n_const[is_tau])) if is_tau.any() else float("nan"),
            "constituents_per_light_jet": float(np.mean(n_const[~is_tau])) if (~is_tau).any() else float("nan"),
            "matched_fraction_visible_taus": float(np.mean(matched[vis_ok])) if vis_ok.any() else float("nan"),
            "decay_mode_fractions": {k: float(np.mean(f(n_ch, n_pi0))) for k, (_, f) in DECAY_GROUPS.items()},
            "mean_nPU": float(np.mean(sel["nPU"])) if "nPU" in sel.fields else 0.0,
            "mean_rho": float(np.mean(sel["rho"])) if "rho" in sel.fields else 0.0,
        }
        n_pu = float(np.sum(sel["nPU"]))
        out[name]["rho_per_pileup_interaction"] = float(np.sum(sel["rho"])) / n_pu if n_pu > 0 else float("nan")
        out[name]["median_visible_mass"] = float(np.median(_visible_mass(sel["taus"])))
        out[name]["median_tau_jet_pair_mass"] = _tau_jet_pair_mass_median(sel["jets"])
        overall = jet_response(sel, (20.0, 1e9))
        out[name]["jet_response_median"] = float(overall["response"][0])
        out[name]["jet_resolution"] = float(overall["resolution"][0])
        const = ak.flatten(flat_jets["constituents"], axis=1)
        pu = np.asarray(const["isPileup"], bool)
        out[name]["pileup_constituent_fraction"] = float(np.mean(pu)) if len(pu) else float("nan")
        pt = flat_jets["constituents"]["pt"]
        pu_pt = np.asarray(ak.sum(ak.where(flat_jets["constituents"]["isPileup"], pt, 0.0), axis=1), np.float64)
        all_pt = np.asarray(ak.sum(pt, axis=1), np.float64)
        light = ~is_tau
        out[name]["light_jets_mostly_pileup"] = (
            float(np.mean(pu_pt[light] > 0.5 * all_pt[light])) if light.any() else float("nan")
        )
    return out


def validation_plots(
    path_or_events: EventsSource, outdir: str | os.PathLike[str], formats: Sequence[str] = ("png", "pdf")
) -> list[Path]:
    """Write validation figures to ``outdir`` and return their paths.

    Figures: visible di-tau mass (H vs Z), jets per event, constituents per jet (tau vs light jets),
    tau decay-mode fractions, jet pT (tau vs light jets), jet response and resolution versus
    generator-jet pT (:func:`jet_response`).  Each is written in every ``formats``.
    """
    import hist
    import matplotlib
    import mplhep as hep
    from matplotlib.figure import Figure

    events = _load(path_or_events)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    labels = [lab for lab in (1, 0) if np.any(np.asarray(events["label"]) == lab)]
    mean_pu = float(np.mean(events["nPU"])) if "nPU" in events.fields else 0.0
    note = f"hepms simulation, mean pileup {mean_pu:.0f}"

    def save(fig: Any, stem: str) -> None:
        for fmt in formats:
            path = outdir / f"{stem}.{fmt}"
            fig.savefig(path, bbox_inches="tight")
            written.append(path)

    with matplotlib.style.context(hep.style.CMS):
        # 1. visible di-tau mass
        fig = Figure(figsize=(8, 6))
        ax = fig.add_subplot()
        for lab in labels:
            h = hist.Hist.new.Reg(40, 0, 200, name="m", label=r"visible $m_{\tau\tau}$ [GeV]").Double()
            sel = events[events["label"] == lab]
            m = _visible_mass(sel["taus"])
            h.fill(m=m)
            hep.histplot(h, ax=ax, density=True, yerr=False, label=f"{PROCESS_NAMES[lab]} (mean {np.mean(m):.1f} GeV)")
        ax.set_ylabel("a.u.")
        ax.set_title(note, fontsize=14)
        ax.legend(fontsize=14)
        save(fig, "visible_ditau_mass")

        # 2. jets per event
        fig = Figure(figsize=(8, 6))
        ax = fig.add_subplot()
        for lab in labels:
            sel = events[events["label"] == lab]
            n = np.asarray(ak.num(sel["jets"], axis=1))
            h = hist.Hist.new.Integer(0, max(12, int(n.max()) + 2), name="n", label="jets per event").Double()
            h.fill(n=n)
            hep.histplot(h, ax=ax, density=True, yerr=False, label=f"{PROCESS_NAMES[lab]} (mean {np.mean(n):.2f})")
        ax.set_ylabel("fraction of events")
        ax.set_title(note, fontsize=14)
        ax.legend(fontsize=14)
        save(fig, "jets_per_event")

        flat_jets = ak.flatten(events["jets"], axis=1)
        is_tau = np.asarray(flat_jets["isTau"], bool)
        n_const = np.asarray(flat_jets["nConstituents"])
        jet_pt = np.asarray(flat_jets["pt"], np.float64)

        # 3. constituents per jet
        fig = Figure(figsize=(8, 6))
        ax = fig.add_subplot()
        top = max(60, int(np.percentile(n_const, 99.5)) + 5) if len(n_const) else 60
        for mask, name in ((is_tau, r"$\tau$ jets"), (~is_tau, "light jets")):
            if mask.any():
                # bin edges at half-integers: float bins over integer counts alias into spikes
                width = max(1, -(-top // 60))
                n_bins = -(-top // width)
                h = hist.Hist.new.Reg(n_bins, -0.5, n_bins * width - 0.5, name="n", label="constituents per jet").Double()
                h.fill(n=n_const[mask])
                hep.histplot(h, ax=ax, density=True, yerr=False, label=f"{name} (mean {np.mean(n_const[mask]):.1f})")
        ax.set_ylabel("a.u.")
        ax.set_title(note, fontsize=14)
        ax.legend(fontsize=14)
        save(fig, "constituents_per_jet")

        # 4. decay-mode fractions
        fig = Figure(figsize=(9, 6))
        ax = fig.add_subplot()
        names = list(DECAY_GROUPS)
        width = 0.8 / max(len(labels), 1)
        for k, lab in enumerate(labels):
            taus = ak.flatten(events[events["label"] == lab]["taus"], axis=1)
            c, n = np.asarray(taus["nCharged"]), np.asarray(taus["nPi0"])
            fractions = [float(np.mean(DECAY_GROUPS[g][1](c, n))) for g in names]
            ax.bar(np.arange(len(names)) + (k - (len(labels) - 1) / 2) * width, fractions, width,
                   label=PROCESS_NAMES[lab])
        ax.set_xticks(np.arange(len(names)), [DECAY_GROUPS[g][0] for g in names], fontsize=15)
        ax.set_ylabel(r"fraction of hadronic $\tau$ decays")
        ax.set_title(note, fontsize=14)
        ax.legend(fontsize=14)
        save(fig, "tau_decay_modes")

        # 5. jet pT
        fig = Figure(figsize=(8, 6))
        ax = fig.add_subplot()
        for mask, name in ((is_tau, r"$\tau$ jets"), (~is_tau, "light jets")):
            if mask.any():
                h = hist.Hist.new.Reg(45, 20, 200, name="pt", label=r"jet $p_T$ [GeV]").Double()
                h.fill(pt=jet_pt[mask])
                hep.histplot(h, ax=ax, yerr=False, label=f"{name} ({int(mask.sum())})")
        ax.set_yscale("log")
        ax.set_ylabel("jets")
        ax.set_title(note, fontsize=14)
        ax.legend(fontsize=14)
        save(fig, "jet_pt")

        # 6. jet response and resolution versus generator-jet pT
        fig = Figure(figsize=(8, 8))
        ax_r, ax_s = fig.subplots(2, 1, sharex=True)
        edges = np.asarray(RESPONSE_BINS, np.float64)
        centres = 0.5 * (edges[1:] + edges[:-1])
        half = 0.5 * (edges[1:] - edges[:-1])
        for lab in labels:
            res = jet_response(events[events["label"] == lab])
            ax_r.errorbar(centres, res["response"], xerr=half, fmt="o", label=PROCESS_NAMES[lab])
            ax_s.errorbar(centres, res["resolution"], xerr=half, fmt="o", label=PROCESS_NAMES[lab])
        ax_r.axhline(1.0, color="grey", lw=1, ls="--")
        ax_r.set_ylabel(r"median $p_T^{reco}/p_T^{gen}$")
        ax_s.set_ylabel("resolution")
        ax_s.text(0.97, 0.92, "(q84 - q16) / 2 / median of the ratio", transform=ax_s.transAxes,
                  ha="right", va="top", fontsize=12)
        ax_s.set_xlabel(r"generator-jet $p_T$ [GeV]")
        ax_r.set_title(note, fontsize=14)
        ax_r.legend(fontsize=14)
        save(fig, "jet_response")

    logger.info("wrote %d validation figures to %s", len(written), outdir)
    return written
