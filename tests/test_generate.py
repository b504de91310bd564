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
        assert expected <= set(b)
        assert np.all(b["label"] == label)
        assert np.all(np.diff(ak.to_numpy(b["event"]).astype(np.int64)) == 1)
        # counts consistent with the collections
        for coll in ("Jet", "PFCand", "Tau"):
            assert ak.all(b[f"n{coll}"] == ak.num(b[f"{coll}_pt"], axis=1))
        assert ak.all(b["nPFCand"] == ak.sum(b["Jet_nConstituents"], axis=1))
        assert ak.all(b["nTau"] == 2)  # both taus of H/Z -> tautau, forced hadronic
        # PFCand_jetIdx points into the event's jets; per-jet counts match Jet_nConstituents
        assert ak.all((b["PFCand_jetIdx"] >= 0) & (b["PFCand_jetIdx"] < b["nJet"]))
        for i in range(30):
            counts = np.bincount(ak.to_numpy(b["PFCand_jetIdx"][i]), minlength=int(b["nJet"][i]))
            assert counts.tolist() == b["Jet_nConstituents"][i].tolist()
        # jets: selection, ordering, pileup subtraction, truth consistency
        assert ak.all(b["Jet_pt"] > 20) and ak.all(abs(b["Jet_eta"]) < 2.5)
        assert ak.all(b["Jet_pt"][:, :-1] >= b["Jet_pt"][:, 1:])
        assert ak.all(b["Jet_rawPt"] >= b["Jet_pt"])
        expected_pt = b["Jet_rawPt"] - b["rho"] * np.pi * 0.4**2
        assert ak.all(abs(b["Jet_pt"] - expected_pt) < 1e-3 * b["Jet_rawPt"] + 1e-3)
        assert ak.all(b["Jet_isTau"] == (b["Jet_tauIdx"] >= 0))
        assert ak.all((b["Jet_tauIdx"] < b["nTau"]))
        assert ak.all(ak.where(b["Jet_isTau"], b["Jet_tauDecayMode"] >= 0, b["Jet_tauDecayMode"] == -1))
        assert ak.all((b["Tau_jetIdx"] >= -1) & (b["Tau_jetIdx"] < b["nJet"]))


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


def test_coffea_nanoaod_schema(sample):
    pytest.importorskip("coffea")
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    out, _ = sample
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NanoAODSchema warns about every absent CMS collection
        events = NanoEventsFactory.from_root(
            {str(out / "Htautau.root"): "Events"}, schemaclass=NanoAODSchema, mode="eager"
        ).events()
    assert {"Jet", "PFCand", "Tau"} <= set(events.fields)
    assert len(events) == 150
    direct = _tree(out / "Htautau.root")
    assert ak.all(events.Jet.pt == direct["Jet_pt"])
    assert ak.all(events.PFCand.jetIdx == direct["PFCand_jetIdx"])


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
        assert not np.array_equal(a["Tau_visPt"], c["Tau_visPt"])
        assert not np.array_equal(a["PFCand_pt"], c["PFCand_pt"])


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
    assert stems == {"visible_ditau_mass", "jets_per_event", "constituents_per_jet", "tau_decay_modes", "jet_pt"}
    assert {p.suffix for p in files} == {".png", ".pdf"}
    assert all(p.stat().st_size > 1000 for p in files)
    summary = summarize(out)
    assert summary["H"]["mean_visible_mass"] > summary["Z"]["mean_visible_mass"]
    assert summary["H"]["jets_per_event"] > summary["Z"]["jets_per_event"]


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
