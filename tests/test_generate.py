"""Tests of hepms.generate: real Pythia 8 + FastJet events, small samples (seconds).

Pileup in these tests uses ``nondiffractive`` minimum bias: its Pythia instance initialises in 0.3 s,
against ~8 s for the default ``inelastic`` one; the pileup machinery exercised is the same.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

ak = pytest.importorskip("awkward")
uproot = pytest.importorskip("uproot")
pytest.importorskip("pythia8mc")
pytest.importorskip("fastjet")

from hepms.generate.detector import DetectorConfig, simulate  # noqa: E402
from hepms.generate.io import SCHEMA, EventsWriter, read_events  # noqa: E402
from hepms.generate.pipeline import generate  # noqa: E402

FAST = dict(pileup_process="nondiffractive", progress=False)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """150 H + 150 Z events with <mu> = 5, generated once for the module."""
    out = tmp_path_factory.mktemp("gen") / "sample"
    manifest = generate(out, events_per_process=150, mu=5, pileup_pool=100, seed=11, workers=1,
                        block_size=75, **FAST)
    return out, manifest


def _tree(path: Path) -> dict[str, ak.Array]:
    with uproot.open(path) as f:
        tree = f["Events"]
        return {name: tree[name].array(library="ak") for name in tree.keys()}


def _flat_branches(path: Path) -> dict[str, np.ndarray]:
    """All branches flattened to numpy, for exact comparisons."""
    return {k: ak.to_numpy(ak.flatten(v, axis=None)) for k, v in _tree(path).items()}


# ------------------------------------------------------------------------------------------ schema


def test_files_and_manifest(sample):
    out, manifest = sample
    assert sorted(p.name for p in out.iterdir()) == ["Htautau.root", "Ztautau.root", "manifest.json"]
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["files"] == manifest["files"]
    assert [f["events"] for f in manifest["files"]] == [150, 150]
    for key in ("pythia8mc", "fastjet", "uproot", "hepms"):
        assert manifest["versions"][key]
    assert manifest["versions"]["pythia8mc"] == "8.317.2"
    assert manifest["settings"]["mu"] == 5 and manifest["settings"]["seed"] == 11
    assert len(manifest["seeds"]["blocks"]) == 4  # 2 blocks x 2 processes, each with its own seed
    assert len({b["pythia_seed"] for b in manifest["seeds"]["blocks"]}) == 4


def test_schema_and_counts(sample):
    out, _ = sample
    for name, label in (("Htautau.root", 1), ("Ztautau.root", 0)):
        with uproot.open(out / name) as f:
            assert f["Events"].classname.startswith("TTree")
        b = _tree(out / name)
        expected = set()
        for key, spec in SCHEMA.items():
            if isinstance(spec, dict):
                expected |= {f"n{key}"} | {f"{key}_{field}" for field in spec}
            else:
                expected.add(key)
        assert expected == set(b)
        assert np.all(b["label"] == label)
        assert np.all(np.diff(ak.to_numpy(b["event"]).astype(np.int64)) == 1)
        # counts consistent with the collections
        for coll in ("Jet", "PFCands", "GenVisTau", "GenPart", "GenJet"):
            assert ak.all(b[f"n{coll}"] == ak.num(b[f"{coll}_pt"], axis=1))
        assert ak.all(b["nPFCands"] == ak.sum(b["Jet_nConstituents"], axis=1))
        assert ak.all(b["nJetPFCands"] == b["nPFCands"])
        assert ak.all(b["nGenVisTau"] == 2)  # both taus of H/Z -> tautau, forced hadronic
        assert ak.all(b["nGenPart"] == 2) and ak.all(abs(b["GenPart_pdgId"]) == 15)
        assert ak.all(b["GenVisTau_genPartIdxMother"] == ak.local_index(b["GenVisTau_pt"]))
        assert ak.all(b["GenPart_pdgId"] == -15 * b["GenVisTau_charge"])
        # PFNano association: row i links candidate i to its jet, grouped by jet in jet order
        assert ak.all(b["JetPFCands_pFCandsIdx"] == ak.local_index(b["PFCands_pt"]))
        assert ak.all(b["JetPFCands_jetIdx"] == b["PFCands_jetIdx"])
        assert ak.all(b["JetPFCands_jetIdx"][:, 1:] >= b["JetPFCands_jetIdx"][:, :-1])
        # PFCands_jetIdx points into the event's jets; per-jet counts match Jet_nConstituents
        assert ak.all((b["PFCands_jetIdx"] >= 0) & (b["PFCands_jetIdx"] < b["nJet"]))
        for i in range(30):
            counts = np.bincount(ak.to_numpy(b["PFCands_jetIdx"][i]), minlength=int(b["nJet"][i]))
            assert counts.tolist() == b["Jet_nConstituents"][i].tolist()
        # pileup provenance: one pool index per interaction, the pool is the event's split
        assert ak.all(b["nPileupEvent"] == b["Pileup_nPU"])
        assert ak.all(b["Pileup_pool"] == b["split"])
        assert set(np.unique(ak.to_numpy(b["split"]))) == {0, 1, 2}
        # jets: selection, ordering, pileup subtraction, truth consistency
        assert ak.all(b["Jet_pt"] > 20) and ak.all(abs(b["Jet_eta"]) < 2.5)
        assert ak.all(b["Jet_pt"][:, :-1] >= b["Jet_pt"][:, 1:])
        assert ak.all(b["Jet_rawPt"] >= b["Jet_pt"])
        expected_pt = b["Jet_rawPt"] - b["rho"] * np.pi * 0.4**2
        assert ak.all(abs(b["Jet_pt"] - expected_pt) < 1e-3 * b["Jet_rawPt"] + 1e-3)
        assert ak.all(b["Jet_isTau"] == (b["Jet_genVisTauIdx"] >= 0))
        assert ak.all((b["Jet_genVisTauIdx"] < b["nGenVisTau"]))
        assert ak.all(ak.where(b["Jet_isTau"], b["Jet_tauDecayMode"] >= 0, b["Jet_tauDecayMode"] == -1))
        assert ak.all((b["GenVisTau_jetIdx"] >= -1) & (b["GenVisTau_jetIdx"] < b["nJet"]))
        assert ak.all((b["Jet_genJetIdx"] >= -1) & (b["Jet_genJetIdx"] < b["nGenJet"]))
        assert ak.all(b["GenJet_pt"] > 10)


# ---------------------------------------------------------------------------------------- reading


def test_read_events_nested_and_capped(sample):
    out, _ = sample
    full = read_events(out, max_jets=None, max_constituents=None)
    assert len(full) == 300
    assert set(full.fields) >= {"jets", "taus", "label", "event", "nPU", "rho"}
    assert sorted(set(ak.to_numpy(full["label"]).tolist())) == [0, 1]
    const = full["jets"]["constituents"]
    assert const.ndim == 3  # [events][jets][constituents]
    assert ak.all(ak.num(const, axis=2) == full["jets"]["nConstituents"])
    assert ak.all(const["pt"][:, :, :-1] >= const["pt"][:, :, 1:])  # pT-ordered inside each jet
    # the constituents add up to the (raw) jet: proves each candidate sits in the right jet
    px = ak.sum(const["pt"] * np.cos(const["phi"]), axis=2)
    py = ak.sum(const["pt"] * np.sin(const["phi"]), axis=2)
    raw = full["jets"]["rawPt"]
    assert ak.all(abs(np.hypot(px, py) - raw) < 2e-3 * raw)

    capped = read_events(out / "Htautau.root", max_jets=2, max_constituents=3)
    assert len(capped) == 150 and ak.all(capped["label"] == 1)
    assert ak.max(ak.num(capped["jets"], axis=1)) <= 2
    assert ak.max(ak.num(capped["jets"]["constituents"], axis=2)) <= 3
    h = full[full["label"] == 1]
    assert ak.all(capped["jets"]["pt"] == h["jets"]["pt"][:, :2])
    assert ak.all(capped["jets"]["constituents"]["pt"] == h["jets"]["constituents"]["pt"][:, :2, :3])


@pytest.mark.parametrize("mode", ["eager", "dask"])
def test_nanoevents_load_without_warnings(sample, mode):
    """coffea reads the files natively: Jet.constituents (PFNano), 4-vectors, tau <-> jet links."""
    pytest.importorskip("coffea")
    from coffea.nanoevents import NanoEventsFactory

    from hepms.generate.schema import HepmsNanoAODSchema

    out, _ = sample
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning on load fails the test
        events = NanoEventsFactory.from_root(
            {str(out / "Htautau.root"): "Events"}, schemaclass=HepmsNanoAODSchema, mode=mode
        ).events()
        parts = events.Jet.constituents.pf
        jet_sum = parts.sum(axis=2)  # candidate 4-vectors add up (vector behaviour)
        vis = events.GenVisTau
        m_vis = (vis[:, 0] + vis[:, 1]).mass
        m_full = (vis.parent[:, 0] + vis.parent[:, 1]).mass
        tau_of_jet = events.Jet.genVisTauIdx
        jet_of_tau = events.GenVisTau.jetIdx
        gen_jet = events.Jet.matched_gen
        arrays = (events.Jet, parts, jet_sum, m_vis, m_full, tau_of_jet, jet_of_tau, gen_jet)
        if mode == "dask":
            import dask

            arrays = dask.compute(*arrays, scheduler="sync")
    jets, parts, jet_sum, m_vis, m_full, tau_of_jet, jet_of_tau, gen_jet = arrays
    direct = _tree(out / "Htautau.root")
    assert len(jets) == 150 and ak.all(jets.pt == direct["Jet_pt"])
    # [events][jets][candidates], each jet's own candidates, pT-ordered
    assert ak.all(ak.num(parts, axis=2) == direct["Jet_nConstituents"])
    assert ak.all(parts.pt[:, :, :-1] >= parts.pt[:, :, 1:])
    assert ak.all(abs(jet_sum.pt - direct["Jet_rawPt"]) < 2e-3 * direct["Jet_rawPt"] + 1e-3)
    # visible di-tau mass is well below m_H; the parents (full taus) give m_H back
    assert 40 < np.median(ak.to_numpy(m_vis)) < 110
    assert np.mean(abs(ak.to_numpy(m_full) - 125) < 1.0) > 0.9
    # the links both ways agree: tau -> jet -> same tau
    n_checked = 0
    for taus, jets_of, jet_taus in zip(ak.to_list(ak.local_index(jet_of_tau)), ak.to_list(jet_of_tau),
                                       ak.to_list(tau_of_jet)):
        for t, j in zip(taus, jets_of):
            if j >= 0:
                assert jet_taus[j] == t
                n_checked += 1
    assert n_checked > 100
    # reco -> gen jet match: a generator jet near each matched jet
    matched = ak.flatten(gen_jet[~ak.is_none(gen_jet, axis=1)])
    assert len(matched) > 100 and ak.all(matched.pt > 10)


def test_pfnano_schema_of_coffea_reads_constituents(sample):
    """coffea's own PFNanoAODSchema (which warns about the CMS indices the files lack) also gives
    Jet.constituents."""
    pytest.importorskip("coffea")
    from coffea.nanoevents import NanoEventsFactory, PFNanoAODSchema

    out, _ = sample
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        events = NanoEventsFactory.from_root(
            {str(out / "Ztautau.root"): "Events"}, schemaclass=PFNanoAODSchema, mode="eager"
        ).events()
        parts = events.Jet.constituents.pf
    direct = _tree(out / "Ztautau.root")
    assert ak.all(ak.num(parts, axis=2) == direct["Jet_nConstituents"])
    assert ak.all(parts.pt == ak.unflatten(direct["PFCands_pt"], ak.flatten(direct["Jet_nConstituents"]),
                                           axis=1))


# ---------------------------------------------------------------------------------- determinism


def test_deterministic_per_seed_whatever_the_workers(tmp_path):
    small = dict(events_per_process=16, mu=5, pileup_pool=30, block_size=8, **FAST)
    generate(tmp_path / "a", seed=3, workers=1, **small)
    generate(tmp_path / "b", seed=3, workers=2, **small)
    generate(tmp_path / "c", seed=4, workers=1, **small)
    for name in ("Htautau.root", "Ztautau.root"):
        a, b, c = (_flat_branches(tmp_path / d / name) for d in "abc")
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        assert not np.array_equal(a["GenVisTau_pt"], c["GenVisTau_pt"])
        assert not np.array_equal(a["PFCands_pt"], c["PFCands_pt"])


# -------------------------------------------------------------------------------------- physics


def test_visible_mass_h_above_z_and_boson_masses(sample):
    out, _ = sample
    events = read_events(out, max_jets=None, max_constituents=None)
    taus = events["taus"]
    vis = ak.zip({"pt": taus["visPt"], "eta": taus["visEta"], "phi": taus["visPhi"], "mass": taus["visMass"]},
                 with_name="Momentum4D", behavior=events.behavior)
    m_vis = (vis[:, 0] + vis[:, 1]).mass
    m_full = (taus[:, 0] + taus[:, 1]).mass
    is_h = ak.to_numpy(events["label"]) == 1
    m_vis, m_full = ak.to_numpy(m_vis), ak.to_numpy(m_full)
    # the generator-level di-tau mass is the boson's: 125 GeV (narrow H), 60-120 GeV (Z/gamma*),
    # lower only when a tau radiated a photon (QED FSR) before its last copy
    assert np.mean(abs(m_full[is_h] - 125.0) < 1.0) > 0.9 and np.all(m_full[is_h] < 125.5)
    assert np.all(m_full[~is_h] < 120.5) and abs(np.median(m_full[~is_h]) - 91) < 3
    # neutrinos carry away a large part of it; the visible mass keeps H above Z (~77 vs ~57 GeV)
    assert np.mean(m_vis[is_h]) > np.mean(m_vis[~is_h]) + 10
    assert np.all(m_vis <= m_full + 1e-3)


def test_decay_modes_are_hadronic_with_pdg_like_fractions(sample):
    out, _ = sample
    taus = ak.flatten(read_events(out)["taus"])
    n_ch = ak.to_numpy(taus["nCharged"])
    assert np.all(ak.to_numpy(taus["decayMode"]) >= 0)  # no leptonic decays
    # PDG: 1-prong ~77 %, 3-prong ~22 % of hadronic tau decays (600 taus: +-2 % statistics)
    assert 0.68 < np.mean(n_ch == 1) < 0.85
    assert 0.14 < np.mean(n_ch == 3) < 0.30


def test_tau_jets_have_one_or_three_collimated_prongs(sample):
    """Matched tau jets look like taus: 1 or 3 charged tracks in a narrow core.

    A hadronic tau decays to 1 or 3 charged hadrons (~99 %), and at visible pT > 20 GeV they fly
    within a few hundredths in delta-R of each other, so the tracks with pT > 1 GeV within
    delta-R < 0.1 of the jet axis number 1 or 3 for most tau jets.  It is not all of them: tracks are
    lost (5-15 % per track), a pi0 -> gamma gamma never makes a track, and UE/pileup tracks can fall in
    the core.  QCD jets have a broad, busy track distribution, where 1 or 3 is a coincidence.
    """
    out, _ = sample
    jets = ak.flatten(read_events(out, max_jets=None, max_constituents=None)["jets"])

    def core_tracks(j):
        c = j["constituents"]
        dphi = (c["phi"] - j["phi"] + np.pi) % (2 * np.pi) - np.pi
        dr = np.hypot(c["eta"] - j["eta"], dphi)
        return ak.to_numpy(ak.sum((c["charge"] != 0) & (c["pt"] > 1) & (dr < 0.1), axis=1))

    tau_jets, light_jets = jets[jets["isTau"]], jets[~jets["isTau"]]
    assert len(tau_jets) > 100 and len(light_jets) > 50
    n_tau, n_light = core_tracks(tau_jets), core_tracks(light_jets)
    frac_tau = np.mean((n_tau == 1) | (n_tau == 3))
    frac_light = np.mean((n_light == 1) | (n_light == 3))
    assert frac_tau > 0.65
    assert frac_tau > frac_light + 0.2
    # and fewer charged constituents overall than light jets
    charged = lambda j: ak.to_numpy(ak.sum(j["constituents"]["charge"] != 0, axis=1))  # noqa: E731
    assert np.mean(charged(tau_jets)) < np.mean(charged(light_jets))


def test_matched_tau_fraction(sample):
    """Visible taus with pT > 20 GeV and |eta| < 2.3 mostly have a jet within delta-R < 0.3.

    The jet threshold (20 GeV after pileup subtraction) equals the tau's visible-pT threshold, so
    only taus near threshold whose jet fluctuates low, or whose jet axis is pulled away, are lost;
    over all taus, including the soft ones (Z taus are soft), the fraction is much lower.
    """
    out, _ = sample
    taus = ak.flatten(read_events(out)["taus"])
    matched = ak.to_numpy(taus["jetIdx"]) >= 0
    hard = (ak.to_numpy(taus["visPt"]) > 20) & (abs(ak.to_numpy(taus["visEta"])) < 2.3)
    assert hard.sum() > 150
    assert 0.75 < np.mean(matched[hard]) <= 1.0
    assert 0.3 < np.mean(matched) < 0.85


def test_pileup_overlay(sample):
    out, _ = sample
    events = read_events(out, max_jets=None, max_constituents=None)
    assert abs(np.mean(ak.to_numpy(events["nPU"])) - 5) < 0.8  # Poisson(5), 300 events
    assert ak.any(events["jets"]["constituents"]["isPileup"])
    assert ak.all(events["rho"] >= 0)


# ------------------------------------------------------------------------------------- detector


def _particles(rows: list[tuple[float, float, float, int, int, bool]]) -> ak.Array:
    """One particle per event from (pt, eta, phi, pdgId, charge, isPileup), massless."""
    pt, eta, phi, pdg, charge, pu = (np.array(c) for c in zip(*rows))
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    flat = ak.zip({"px": px, "py": py, "pz": pz, "E": np.sqrt(px**2 + py**2 + pz**2),
                   "charge": charge.astype(np.int32), "pdgId": pdg.astype(np.int32), "isPileup": pu.astype(bool)})
    return ak.unflatten(flat, np.ones(len(rows), dtype=np.int64))


def test_detector_routing_and_chs():
    n = 400
    rows = (
        [(30.0, 0.3, 1.0, 16, 0, False)] * n      # neutrino: invisible
        + [(10.0, 0.5, 0.0, 211, 1, False)] * n   # central pi+: tracked with 95 % efficiency
        + [(10.0, 2.8, 0.0, -211, -1, False)] * n  # pi- beyond the tracker: HCAL deposit
        + [(10.0, 0.5, 0.0, 211, 1, True)] * n    # charged pileup: removed by CHS if tracked
        + [(10.0, 0.5, 0.0, 22, 0, True)] * n     # neutral pileup photon: kept
    )
    for chs in (False, True):
        cands = simulate(_particles(rows), DetectorConfig(), np.random.default_rng(1), chs)
        n_out = ak.to_numpy(ak.num(cands, axis=1))
        pdg = ak.to_numpy(ak.fill_none(ak.firsts(cands["pdgId"]), 0))
        block = lambda k: slice(k * n, (k + 1) * n)  # noqa: E731
        assert np.all(n_out[block(0)] == 0)
        assert 0.9 < np.mean(pdg[block(1)] == 211) < 0.99
        # lost tracks end up in the HCAL (0: the rare deposit that fluctuates below threshold)
        assert np.all(np.isin(pdg[block(1)][pdg[block(1)] != 211], [130, 0]))
        assert np.all(pdg[block(2)] == 130)
        assert np.all(ak.to_numpy(ak.firsts(cands["charge"]))[block(2)] == 0)
        charged_pu = pdg[block(3)] == 211
        assert charged_pu.any() != chs  # CHS removes every tracked pileup particle
        assert np.all(pdg[block(4)] == 22)
        assert np.all(ak.to_numpy(ak.firsts(cands["isPileup"]))[block(4)])


def test_detector_resolutions_match_parameters():
    config = DetectorConfig()
    n = 3000
    photons = _particles([(100.0, 0.0, 0.0, 22, 0, False)] * n)  # E = 100 GeV, ECAL barrel
    e = ak.to_numpy(ak.flatten(simulate(photons, config, np.random.default_rng(2), False)["pt"]))
    s, noise, c = config.ecal_res_barrel
    expected = np.sqrt(s**2 * 100 + noise**2 + (c * 100) ** 2) / 100
    assert abs(np.std(e / 100) / expected - 1) < 0.1
    assert abs(np.mean(e) - 100) < 5 * expected * 100 / np.sqrt(n)
    tracks = _particles([(50.0, 0.0, 0.0, 211, 1, False)] * n)
    cands = ak.flatten(simulate(tracks, config, np.random.default_rng(3), False))
    pt = ak.to_numpy(cands["pt"][cands["charge"] != 0])  # tracked (lost tracks become HCAL cells)
    a, b = config.track_res_barrel
    assert 0.9 < len(pt) / n < 0.99
    assert abs(np.std(pt / 50) / np.hypot(a, b * 50) - 1) < 0.1


# ------------------------------------------------------------------------------ errors and safety


@pytest.mark.parametrize(
    "kwargs, setting",
    [
        (dict(events_per_process=-5), "events_per_process"),
        (dict(events_per_process=0), "events_per_process"),
        (dict(processes=("H", "W")), "processes"),
        (dict(processes="H"), "processes"),
        (dict(mu=-1.0), "mu"),
        (dict(mu=float("nan")), "mu"),
        (dict(block_size=0), "block_size"),
        (dict(pileup_pool=0), "pileup_pool"),
        (dict(pileup_process="diffractive"), "pileup_process"),
        (dict(split_fractions=(0.5, 0.5, 0.5)), "split_fractions"),
        (dict(split_fractions=(0.5, 0.5)), "split_fractions"),
        (dict(workers=0), "workers"),
        (dict(jet_r=-0.4), "jet_r"),
        (dict(not_a_setting=1), "not_a_setting"),
    ],
)
def test_bad_settings_raise_before_generation(tmp_path, monkeypatch, kwargs, setting):
    import hepms.generate.pipeline as pipeline

    def forbidden(*args, **kw):
        raise AssertionError("generation started despite a bad setting")

    monkeypatch.setattr(pipeline, "run_block", forbidden)
    monkeypatch.setattr(pipeline, "build_pool_block", forbidden)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=setting):
        generate(out, **{**dict(events_per_process=10, progress=False), **kwargs})
    assert not out.exists()


def test_unwritable_output_raises(tmp_path, monkeypatch):
    import hepms.generate.pipeline as pipeline

    monkeypatch.setattr(pipeline, "run_block", lambda *a, **k: pytest.fail("generation started"))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="output_dir"):
        generate(blocker / "sub", events_per_process=10, progress=False)
    with pytest.raises(ValueError, match="output_dir"):
        generate(blocker, events_per_process=10, progress=False)


def test_interrupted_run_leaves_no_complete_looking_output(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = EventsWriter.extend

    def failing_extend(self, columns):
        calls["n"] += 1
        if calls["n"] == 2:  # the second block: one block already written to the partial file
            raise RuntimeError("injected failure mid-write")
        original(self, columns)

    monkeypatch.setattr(EventsWriter, "extend", failing_extend)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="injected"):
        generate(out, events_per_process=30, processes=("H",), mu=0, block_size=10, workers=1, progress=False)
    assert calls["n"] == 2
    assert list(out.iterdir()) == []  # no .root, no manifest, no partial file left behind


def test_partial_file_name_does_not_look_complete(tmp_path):
    writer = EventsWriter(tmp_path / "Htautau.root")
    assert writer.partial_path.name.startswith(".") and not writer.partial_path.name.endswith(".root")


# ----------------------------------------------------------------------------------------- plots


def test_validation_plots_and_summary(sample, tmp_path):
    pytest.importorskip("mplhep")
    from hepms.generate.plots import summarize, validation_plots

    out, _ = sample
    files = validation_plots(out, tmp_path / "plots")
    stems = {p.stem for p in files}
    assert stems == {"visible_ditau_mass", "jets_per_event", "constituents_per_jet", "tau_decay_modes", "jet_pt",
                     "jet_response"}
    assert {p.suffix for p in files} == {".png", ".pdf"}
    assert all(p.stat().st_size > 1000 for p in files)
    summary = summarize(out)
    assert summary["H"]["mean_visible_mass"] > summary["Z"]["mean_visible_mass"]
    assert summary["H"]["jets_per_event"] > summary["Z"]["jets_per_event"]
    for proc in ("H", "Z"):
        assert 0.8 < summary[proc]["jet_response_median"] < 1.2
        assert 0.0 < summary[proc]["jet_resolution"] < 0.5
        assert summary[proc]["rho_per_pileup_interaction"] > 0


def test_jet_response_measures_the_ratio_to_the_matched_gen_jet():
    from hepms.generate.plots import jet_response

    events = ak.Array([
        {"jets": [{"pt": 45.0, "genJetIdx": 1}, {"pt": 30.0, "genJetIdx": -1}],
         "genJets": [{"pt": 12.0}, {"pt": 50.0}]},
    ] * 10 + [{"jets": [{"pt": 110.0, "genJetIdx": 0}], "genJets": [{"pt": 100.0}]}] * 10)
    res = jet_response(events, (40, 60, 80, 120))
    np.testing.assert_allclose(res["response"], [0.9, np.nan, 1.1])
    np.testing.assert_allclose(res["resolution"], [0.0, np.nan, 0.0], atol=1e-12)
    assert res["jets"].tolist() == [10, 0, 10]


def test_public_api_reexports():
    import hepms.generate as gen

    if getattr(gen, "__file__", None) is None:
        pytest.skip("hepms.generate imported as a namespace package: the editable install predates "
                    "hepms/generate/__init__.py; rerun `pip install --no-build-isolation -e .`")
    from hepms.generate import cli, io, pipeline, plots

    assert gen.generate is pipeline.generate
    assert gen.read_events is io.read_events
    assert gen.validation_plots is plots.validation_plots
    assert callable(cli.main)


# ------------------------------------------------------------------------ splits and their pileup


def test_splits_of_hepms_data_share_no_pileup_event(sample):
    """hepms.data.split uses the generator's split, and every split drew its pileup from its own
    pool: no (pool, pool event) pair appears in two of the parts."""
    import torch

    from hepms.data import TauEventData, build_dataset, split
    from hepms.features import FeatureSpec

    out, manifest = sample
    events = read_events(out)
    data = build_dataset(events, FeatureSpec(min_jets=0))
    assert data.event_split is not None and len(data) == len(events)
    # tag every event with its row number (in event_labels) to find it again after the split
    tagged = TauEventData(data.constituents, data.jet_features, data.jet_labels,
                          torch.arange(len(data), dtype=torch.float32), event_split=data.event_split)
    parts = split(tagged, (0.6, 0.2, 0.2), seed=5)
    rows = [part.event_labels.long().numpy() for part in parts]
    assert sum(len(r) for r in rows) == len(events)
    split_of = ak.to_numpy(events["split"])
    pool_of = ak.to_numpy(events["pileupPool"])
    used = []
    for k, r in enumerate(rows):
        assert np.all(split_of[r] == k) and np.all(pool_of[r] == k)
        pairs = {(k, int(i)) for i in ak.to_numpy(ak.flatten(events["pileupIdx"][r]))}
        assert len(pairs) > 20
        used.append(pairs)
    assert not (used[0] & used[1]) and not (used[0] & used[2]) and not (used[1] & used[2])
    # the pools are different minimum-bias events: different Pythia seeds, disjoint streams
    seeds = [b["pythia_seed"] for b in manifest["seeds"]["pileup_pool_blocks"]]
    assert len(seeds) == 3 and len(set(seeds)) == 3
    assert {b["split"] for b in manifest["seeds"]["pileup_pool_blocks"]} == {"train", "validation", "test"}
    # fractions near 60/20/20 (300 events)
    counts = np.bincount(split_of, minlength=3) / len(split_of)
    assert abs(counts[0] - 0.6) < 0.1 and abs(counts[1] - 0.2) < 0.08 and abs(counts[2] - 0.2) < 0.08
    # a random split is still available
    random_parts = split(tagged, (0.5, 0.25, 0.25), seed=5, stored=False)
    assert [len(p) for p in random_parts] == [150, 75, 75]


def test_split_is_deterministic_and_independent_of_other_settings():
    from hepms.generate.pipeline import event_splits

    a = event_splits(3, "H", 0, 500, (0.6, 0.2, 0.2))
    assert np.array_equal(a, event_splits(3, "H", 0, 500, (0.6, 0.2, 0.2)))
    assert not np.array_equal(a, event_splits(4, "H", 0, 500, (0.6, 0.2, 0.2)))
    assert not np.array_equal(a, event_splits(3, "Z", 0, 500, (0.6, 0.2, 0.2)))
    assert set(np.unique(event_splits(3, "H", 0, 100, (1.0, 0.0, 0.0)))) == {0}


def test_pool_size_rule():
    from hepms.generate.config import POOL_MIN_EVENTS, POOL_REUSE, GenerationConfig

    cfg = GenerationConfig(events_per_process=50000, mu=50)
    assert cfg.pool_sizes() == [int(np.ceil(50 * f * 100000 / POOL_REUSE)) for f in (0.6, 0.2, 0.2)]
    assert GenerationConfig(events_per_process=30, mu=5).pool_sizes() == [POOL_MIN_EVENTS] * 3
    assert GenerationConfig(events_per_process=30, mu=0).pool_sizes() == [0, 0, 0]
    assert GenerationConfig(events_per_process=30, mu=5, pileup_pool=77).pool_sizes() == [77] * 3


# ------------------------------------------------------------------------------------------ truth


def test_taus_from_a_photon_splitting_are_not_hard_taus():
    """Z -> tau tau, one tau radiates a photon that splits into a soft tau pair: 2 hard taus, not 4."""
    from hepms.generate.truth import hard_taus

    rows = [  # (id, status, mother1, daughter1, daughter2, px, py, pz, e)
        (90, -11, 0, 0, 0, 0, 0, 0, 91),
        (23, -22, 0, 2, 3, 0, 0, 0, 91),  # 1: Z
        (15, -23, 1, 4, 5, 20, 0, 0, 45.5),  # 2: tau- (radiates)
        (-15, -23, 1, 10, 11, 0, -20, 0, 45.5),  # 3: tau+ -> pi+ nu (last copy)
        (15, -52, 2, 6, 7, 18, 0, 0, 40.0),  # 4: tau- after FSR (last copy)
        (22, -51, 2, 8, 9, 2, 0, 0, 5.5),  # 5: the photon, splits into taus
        (-211, 1, 4, 0, 0, 12, 0, 0, 30.0),  # 6
        (16, 1, 4, 0, 0, 6, 0, 0, 10.0),  # 7
        (15, -91, 5, 12, 13, 1, 0, 0, 2.7),  # 8: soft tau- from the photon
        (-15, -91, 5, 14, 15, 1, 0, 0, 2.8),  # 9: soft tau+ from the photon
        (211, 1, 3, 0, 0, 0, -12, 0, 30.0),  # 10
        (-16, 1, 3, 0, 0, 0, -8, 0, 15.5),  # 11
        (-211, 1, 8, 0, 0, 0.5, 0, 0, 1.5),  # 12
        (16, 1, 8, 0, 0, 0.5, 0, 0, 1.2),  # 13
        (211, 1, 9, 0, 0, 0.5, 0, 0, 1.5),  # 14
        (-16, 1, 9, 0, 0, 0.5, 0, 0, 1.3),  # 15
    ]
    prt = [{"id": r[0], "status": r[1], "mother1": r[2], "daughter1": r[3], "daughter2": r[4],
            "p": {"px": r[5], "py": r[6], "pz": r[7], "e": r[8]}} for r in rows]
    events = ak.Array([{"prt": prt}])

    def charge_of(pdg):
        return np.array([{211: 1, -211: -1, 15: -1, -15: 1}.get(int(p), 0) for p in pdg])

    taus = hard_taus(events, charge_of)
    assert ak.num(taus, axis=1).tolist() == [2]
    assert sorted(ak.to_list(taus["charge"][0])) == [-1, 1]
    assert sorted(round(x) for x in ak.to_list(taus["pt"][0])) == [18, 20]  # the last copies
    assert ak.to_list(taus["nCharged"][0]) == [1, 1]


def test_no_photon_splitting_taus_in_generated_z_events(sample):
    out, _ = sample
    b = _tree(out / "Ztautau.root")
    assert ak.all(b["nGenVisTau"] == 2)
    assert ak.all(ak.sum(b["GenVisTau_charge"], axis=1) == 0)


# ----------------------------------------------------------------------------- killed generations


def _start_generation(out: Path, seed: int, pause_at: str, mu: float = 0.0, workers: int = 1):
    import os
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from hepms.generate.pipeline import generate\n"
        "if __name__ == '__main__':\n"
        f"    generate({str(out)!r}, events_per_process=20, mu={mu}, seed={seed}, workers={workers},\n"
        "             block_size=20,"
        " pileup_process='nondiffractive', pileup_pool=30, progress=False)\n"
    )
    env = {**os.environ, "HEPMS_GENERATE_PAUSE_AT": pause_at}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
    line = ""
    for line in proc.stderr:  # wait until the generation reaches the pause point
        if "hepms-generate paused at" in line:
            break
    else:
        proc.wait()
        raise AssertionError(f"generation ended without reaching {pause_at!r}")
    return proc


def _old_sample(tmp_path: Path) -> tuple[Path, dict]:
    out = tmp_path / "sample"
    manifest = generate(out, events_per_process=20, mu=0, seed=1, workers=1, block_size=20, progress=False)
    return out, manifest


def test_sigkill_while_swapping_never_leaves_a_mixed_sample(tmp_path):
    import signal

    from hepms.generate.io import INCOMPLETE_MARKER
    from hepms.generate.pipeline import clean_stale

    out, old = _old_sample(tmp_path)
    old_h = _flat_branches(out / "Htautau.root")
    # killed after the new H file replaced the old one, before the Z file: the mixed state
    proc = _start_generation(out, seed=2, pause_at="swap-file-1")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    assert (out / INCOMPLETE_MARKER).exists()
    with pytest.raises(RuntimeError, match="incomplete sample"):
        read_events(out)
    assert not np.array_equal(_flat_branches(out / "Htautau.root")["GenVisTau_pt"],
                              old_h["GenVisTau_pt"])
    # the killed run's staging folder is stale now; the next run removes it and repairs the sample
    stale = [p for p in out.iterdir() if p.name.startswith(".staging-")]
    assert len(stale) == 1
    assert clean_stale(out) == stale
    manifest = generate(out, events_per_process=20, mu=0, seed=3, workers=1, block_size=20, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["Htautau.root", "Ztautau.root", "manifest.json"]
    assert manifest["settings"]["seed"] == 3 and len(read_events(out)) == 40
    assert old["settings"]["seed"] == 1


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_killed_after_the_pileup_pool_keeps_the_old_sample(tmp_path, sig):
    import signal

    from hepms.generate.pipeline import clean_stale

    out, old = _old_sample(tmp_path)
    before = (out / "manifest.json").read_text()
    proc = _start_generation(out, seed=2, pause_at="pool-built", mu=3)
    staging = [p for p in out.iterdir() if p.name.startswith(".staging-")]
    assert len(staging) == 1 and (staging[0] / "pileup-pool").is_dir()
    proc.send_signal(getattr(signal, sig))
    rc = proc.wait(timeout=60)
    assert (out / "manifest.json").read_text() == before  # the old sample is untouched
    assert len(read_events(out)) == 40
    left = [p for p in out.iterdir() if p.name.startswith(".")]
    if sig == "SIGTERM":
        assert rc == 128 + signal.SIGTERM
        assert left == []  # staging folder, pileup pool and partial files removed by the handler
    else:
        assert left == staging  # nothing can run on SIGKILL; the next run cleans up
        assert clean_stale(out) == staging
    assert sorted(p.name for p in out.iterdir()) == ["Htautau.root", "Ztautau.root", "manifest.json"]


def test_progress_is_reported_per_chunk():
    """The pool build and the event blocks report finished events as they go, not per block."""
    from hepms.generate import pipeline
    from hepms.generate.config import GenerationConfig
    from hepms.generate.pileup import build_pool_block

    calls: list[int] = []
    pool = build_pool_block(300, 5, 13000.0, 3.0, "nondiffractive", report=calls.append)
    assert calls == [250, 50] and pool.n_events == 300

    reported: list[int] = []
    task = pipeline.BlockTask("Z", 0, 0, 150)
    jobs = [(0, task, GenerationConfig(mu=0, processes=("Z",)), None, [(0, 0)] * 3)]
    results = list(pipeline._run_jobs(pipeline._block_job, jobs, None, None, reported.append))
    assert reported == [100, 50] and len(results) == 1


def _children(pid: int) -> list[int]:
    out = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            out.append(int(status.parent.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_sigterm_stops_the_workers_and_removes_the_pool(tmp_path):
    import os
    import signal
    import time

    out = tmp_path / "sample"
    proc = _start_generation(out, seed=2, pause_at="pool-built", mu=3, workers=2)
    workers = _children(proc.pid)
    assert len(workers) >= 2  # the worker pool (plus multiprocessing's helper processes)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
        time.sleep(0.1)
    alive = []
    for w in workers:
        try:
            os.kill(w, 0)
            alive.append(w)
        except ProcessLookupError:
            pass
    assert alive == []
    assert list(out.iterdir()) == []  # no staging folder, no pool, no partial file
