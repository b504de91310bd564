"""Tests of hepms.select: model selection (grid search, DARTS, SPOS-NAS) for multi-step models.

The plumbing runs on a small sample from the project's generator (Pythia 8 + FastJet, mu = 5),
with tiny models and a few epochs, so the whole file takes about a minute on two shared cores.
"""
from __future__ import annotations

import inspect
import json
import math

import numpy as np
import pytest
import torch

from hepms import physics
from hepms.data import TauEventData
from hepms import select
from hepms.select.config import load_selection_config
from hepms.select.data import CALIBRATION_TARGETS, SELECTION_JET_FEATURES
from hepms.select.jets import leading_two, pad_jets
from hepms.select.scaling import fit_all, fit_power_law, time_methods

ak = pytest.importorskip("awkward")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    pytest.importorskip("pythia8mc")
    pytest.importorskip("fastjet")
    from hepms.generate import generate

    folder = tmp_path_factory.mktemp("select_events")
    generate(folder, events_per_process=400, mu=5, seed=5, workers=1, progress=False,
             pileup_pool=100, block_size=400, pileup_process="nondiffractive")
    return folder


@pytest.fixture(scope="module")
def events(generated):
    from hepms.generate import read_events

    return read_events(generated)


@pytest.fixture(scope="module")
def prepared(events):
    # 30 % validation: the selection criterion needs enough events to be stable on a small sample.
    return select.prepare_selection_data(events, seed=2, fractions=(0.5, 0.3, 0.2))


def _settings(**changes) -> select.SearchSettings:
    base = dict(pretrain_epochs=5, search_epochs=4, posttrain_epochs=3, patience=3,
                search_patience=3, batch_size=32, alpha_lr=0.05, v1=0.5, progress=False)
    base.update(changes)
    return select.SearchSettings(**base)


TINY_DEEPSETS = {"kind": "deepsets", "phi": [16, 16], "blocks": 0, "pool": ["mean"],
                 "post_pool": [16], "embedding": [16], "head": [16]}
WITH_DUMMIES = {
    "upstream": {"ds": TINY_DEEPSETS, "zeros": {"kind": "zeros"}, "noise": {"kind": "noise"}},
    "downstream": {"mass": {"kind": "mass", "hidden": [32, 32]}, "zeros": {"kind": "zeros"},
                   "noise": {"kind": "noise"}},
}
# One pair is best by construction: "ds" is the only tau tagger that sees the constituents
# ("mlp_phi" sees the jet azimuth only, which carries no tau information), "mass" the only event
# model with physics information ("blind" sees the jets' azimuths only and ignores Task 1).
CLEAR = {
    "upstream": {"ds": TINY_DEEPSETS,
                 "mlp_phi": {"kind": "mlp", "hidden": [16], "features": ["phi"]}},
    "downstream": {"mass": {"kind": "mass", "hidden": [32, 32]},
                   "blind": {"kind": "deepsets", "phi": [16], "rho": [16], "pool": ["mean"],
                             "features": ["phi"], "use_intermediate": False}},
}


# ------------------------------------------------------------------------------------------------
# Helpers: jets, masses, data preparation
# ------------------------------------------------------------------------------------------------
def test_pair_mass_matches_vector():
    rng = np.random.default_rng(1)
    n = 50
    cols = {"pt": rng.uniform(20, 200, (n, 2)), "eta": rng.uniform(-2.5, 2.5, (n, 2)),
            "phi": rng.uniform(-np.pi, np.pi, (n, 2)), "mass": rng.uniform(0, 5, (n, 2))}
    objects = ak.zip({k: v[:, 0] for k, v in cols.items()}), ak.zip({k: v[:, 1] for k, v in cols.items()})
    expected = ak.to_numpy(physics.pair_mass(*objects))
    p4 = torch.tensor(np.stack([cols["pt"], cols["eta"], cols["phi"], cols["mass"]], -1))
    ours = physics.pair_mass(p4[:, 0], p4[:, 1], eps=0.0).numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-9)
    # Zero momenta (a "zeros" calibration) keep a finite gradient.
    zero = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    physics.pair_mass(zero, zero).sum().backward()
    assert torch.isfinite(zero.grad).all()


def test_leading_two_and_padding():
    offsets = torch.tensor([0, 3, 4, 4, 6])  # events with 3, 1, 0 and 2 jets
    score = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.2, 0.8])
    c = leading_two(score, offsets)
    assert c.index.tolist() == [[1, 2], [3, 0], [0, 0], [5, 4]]
    assert c.valid.tolist() == [[True, True], [True, False], [False, False], [True, True]]
    dense, mask = pad_jets(score[:, None], offsets)
    assert dense.shape == (4, 3, 1) and mask.sum(1).tolist() == [3, 1, 0, 2]
    picked = c.gather(score[:, None])[..., 0]
    torch.testing.assert_close(picked, torch.tensor([[0.9, 0.5], [0.3, 0.0], [0.0, 0.0], [0.8, 0.2]]))


def test_prepared_targets_and_kinematics_match_the_events(events):
    from hepms import data as hdata

    from hepms.features import FeatureSpec

    built = hdata.build_dataset(events, FeatureSpec(jet_features=SELECTION_JET_FEATURES,
                                                    targets=CALIBRATION_TARGETS))
    kept = events[ak.num(events.jets, axis=1) >= 1]
    jets = physics.leading(kept.jets, 8, by="pt")
    flat = {f: ak.to_numpy(ak.flatten(jets[f])).astype(np.float64)
            for f in ("pt", "eta", "phi", "mass", "isTau", "visTauPt", "visTauEta", "visTauPhi")}
    # Task-1 targets: the matched visible tau, pT in units of 100 GeV; zero for light jets.
    targets = built.jet_targets.double().numpy()
    tau = flat["isTau"] > 0
    assert tau.any() and (~tau).any()
    np.testing.assert_allclose(targets[tau, 0], flat["visTauPt"][tau] / 100, rtol=1e-5)
    np.testing.assert_allclose(targets[tau, 1], flat["visTauEta"][tau], atol=1e-4)
    dphi = physics.delta_phi(targets[tau, 2], flat["visTauPhi"][tau])
    assert np.abs(dphi).max() < 1e-4
    assert np.all(targets[~tau] == 0)
    # The raw jet 4-vector comes back from the standardised features.
    scaler = hdata.Standardizer.fit(built)
    p4 = select.JetKinematics(scaler, built.jet_names)(scaler(built).jet_features).double().numpy()
    np.testing.assert_allclose(p4[:, 0], flat["pt"], rtol=1e-3)
    np.testing.assert_allclose(p4[:, 1], flat["eta"], atol=1e-4)
    np.testing.assert_allclose(p4[:, 3], np.maximum(flat["mass"], 0), rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------------------------------------
# Candidates
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["tau_id", "calibration"])
def test_every_candidate_kind_builds_and_runs(prepared, task):
    space = select.SearchSpace.create(prepared, task, **select.DEFAULT_CANDIDATES)
    up, down = space.build(seed=0)
    inputs, targets = select.make_batch(prepared.train.slice(0, 40), prepared.kinematics())
    k = space.task.outputs
    for name, model in up.items():
        u = model(inputs)
        assert u.shape == (inputs.num_jets, k), name
        assert torch.isfinite(space.task.loss(u, targets)), name
        assert (len(list(model.parameters())) == 0) == model.dummy, name
    link = space.task.link(up["mlp"](inputs), inputs)
    for name, model in down.items():
        y = model(inputs, link)
        assert y.shape == (inputs.num_events,) and torch.isfinite(y).all(), name
    if task == "calibration":
        # The scale-factor model starts at the uncalibrated jet (a = 1, b = 0).
        torch.testing.assert_close(up["sf"](inputs), space.task.base(inputs))
    # Replicas are independent initialisations; rebuilding with the same seed is reproducible.
    rep = space.replicated(2)
    up2, _ = rep.build(seed=0)
    assert not torch.equal(up2["mlp"].net[0].weight, up2["mlp#2"].net[0].weight)
    torch.testing.assert_close(up2["mlp"].net[0].weight, up["mlp"].net[0].weight)


def test_bad_candidate_specs_are_refused(prepared):
    with pytest.raises(ValueError, match="unknown kind"):
        select.SearchSpace.create(prepared, "tau_id", {"a": {"kind": "cnn"}}, {"b": {"kind": "mass"}})
    space = select.SearchSpace.create(prepared, "tau_id", {"a": {"kind": "mlp", "depth": 3}},
                                      {"b": {"kind": "mass"}})
    with pytest.raises(ValueError, match="depth"):
        space.build()
    space = select.SearchSpace.create(prepared, "tau_id", {"a": {"kind": "mlp", "features": ["nope"]}},
                                      {"b": {"kind": "mass"}})
    with pytest.raises(ValueError, match="nope"):
        space.build()
    with pytest.raises(ValueError, match="unknown upstream task"):
        select.make_task("energy")


# ------------------------------------------------------------------------------------------------
# Selection
# ------------------------------------------------------------------------------------------------
def test_selection_functions_cannot_receive_the_test_split():
    for fn in (select.grid_search, select.darts_search, select.spos_search, select.select):
        params = list(inspect.signature(fn).parameters)
        assert "train" in params and "val" in params, fn.__name__
        assert not any("test" in p for p in params), (fn.__name__, params)


@pytest.mark.parametrize("task", ["tau_id", "calibration"])
def test_darts_weights_sum_to_one_and_leave_the_dummies(prepared, task):
    space = select.SearchSpace.create(prepared, task, **WITH_DUMMIES)
    result = select.darts_search(space, prepared.train, prepared.val, _settings(seed=0))
    history = result.alpha_history
    assert len(history) >= 2
    for row in history:
        for step in ("upstream", "downstream"):
            assert sum(row[step].values()) == pytest.approx(1.0, abs=1e-6)
    for step in ("upstream", "downstream"):
        assert all(w == pytest.approx(1 / 3) for w in history[0][step].values())
        last = history[-1][step]
        real = [w for n, w in last.items() if n not in ("zeros", "noise")]
        for dummy in ("zeros", "noise"):
            assert last[dummy] < 1 / 3 and last[dummy] < min(real), (step, last)
    assert result.pair == ("ds", "mass")
    assert math.isfinite(result.val_metrics["total"])


@pytest.mark.parametrize("seed", [0, 1])
def test_dummies_are_never_selected(prepared, seed):
    space = select.SearchSpace.create(prepared, "tau_id", **WITH_DUMMIES)
    settings = _settings(seed=seed)
    shared = select.pretrain(space, prepared.train, prepared.val, settings)
    for method in ("grid", "darts"):
        result = select.select(method, space, prepared.train, prepared.val, settings, pretrained=shared)
        assert result.upstream not in ("zeros", "noise"), (method, result.pair)
        assert result.downstream not in ("zeros", "noise"), (method, result.pair)
    # Grid search scores every pair: the dummies' pairs really are worse on validation.
    scores = result.scores if result.method == "grid" else select.grid_search(
        space, prepared.train, prepared.val, settings, pretrained=shared).scores
    assert scores["ds|mass"]["total"] < min(v["total"] for k, v in scores.items() if k != "ds|mass")


def test_the_choice_follows_the_validation_split(prepared):
    """Selection reads validation: inverting its event labels makes the zero output the best
    event model (every trained model is now anti-correlated with the labels it is scored on)."""
    space = select.SearchSpace.create(prepared, "tau_id", **WITH_DUMMIES)
    settings = _settings(seed=0)
    normal = select.grid_search(space, prepared.train, prepared.val, settings)
    inverted_val = prepared.val._replace(event_labels=1.0 - prepared.val.event_labels)
    inverted = select.grid_search(space, prepared.train, inverted_val, settings)
    assert normal.pair == ("ds", "mass")
    assert inverted.pair == ("ds", "zeros")


def test_grid_and_spos_agree_when_one_pair_is_clearly_best(prepared):
    space = select.SearchSpace.create(prepared, "tau_id", **CLEAR)
    settings = _settings(seed=0)
    grid = select.grid_search(space, prepared.train, prepared.val, settings)
    spos = select.spos_search(space, prepared.train, prepared.val, settings)
    assert grid.pair == spos.pair == ("ds", "mass")
    assert set(spos.scores) == {"ds|mass", "ds|blind", "mlp_phi|mass", "mlp_phi|blind"}
    assert grid.val_metrics["auc_event"] > 0.6 and grid.val_metrics["auc_tau"] > 0.8


def test_spos_leaves_dummies_out_by_default(prepared):
    space = select.SearchSpace.create(prepared, "tau_id", **WITH_DUMMIES)
    result = select.spos_search(space, prepared.train, prepared.val, _settings(search_epochs=1))
    assert result.candidates == {"upstream": ["ds"], "downstream": ["mass"]}


# ------------------------------------------------------------------------------------------------
# Validity, study, CLI, scaling
# ------------------------------------------------------------------------------------------------
# gpytorch's import calls torch.jit.script, deprecated in this torch: not ours to fix.
_JIT_DEPRECATION = "ignore:`torch.jit.script` is deprecated:FutureWarning"


@pytest.mark.filterwarnings(_JIT_DEPRECATION)
def test_gp_reference_brackets_the_truth(prepared):
    from hepms.select.validity import GPReference, validity_fraction

    kin = prepared.kinematics()
    space = select.SearchSpace.create(prepared, "calibration", **CLEAR)
    gp = GPReference(space.task, kin, max_points=150, iterations=25).fit(prepared.train)
    mean, sigma, mask = gp.predict(prepared.val)
    _, targets = select.make_batch(prepared.val, kin)
    truth = validity_fraction(targets.calibration, mean, sigma, mask)
    zeros = validity_fraction(torch.zeros_like(mean), mean, sigma, mask)
    assert truth["validity"] > 0.8  # a 2-sigma predictive band covers most true values
    assert zeros["validity"] < 0.2
    with pytest.raises(ValueError, match="calibration"):
        GPReference(select.make_task("tau_id"), kin)


def _poisoned(data: TauEventData, seed: int = 0) -> TauEventData:
    """The same events with every label and target permuted: useless for any honest fit."""
    g = torch.Generator().manual_seed(seed)
    jets = torch.randperm(data.num_jets, generator=g)
    return data._replace(
        event_labels=data.event_labels[torch.randperm(len(data), generator=g)],
        jet_labels=data.jet_labels[jets],
        jet_targets=data.jet_targets[jets],
    )


@pytest.mark.filterwarnings(_JIT_DEPRECATION)
def test_study_never_reads_the_test_split(prepared, tmp_path):
    from hepms.select.study import run_study

    config = load_selection_config({
        "task": "calibration",
        "candidates": {"upstream": {"ds": TINY_DEEPSETS, "sf": {"kind": "sf"}},
                       "downstream": {"mass": {"kind": "mass", "hidden": [16]},
                                      "mlp2": {"kind": "mlp2", "hidden": [16]}}},
        "settings": {"pretrain_epochs": 3, "search_epochs": 2, "posttrain_epochs": 2, "patience": 2,
                     "search_patience": 2, "batch_size": 32, "alpha_lr": 0.05},
        "study": {"methods": ["darts", "spos"], "v1": [0.5], "seeds": [0],
                  "validity": {"max_points": 100, "iterations": 10}},
    })
    poisoned = select.SelectionData(prepared.train, prepared.val, _poisoned(prepared.test),
                                   prepared.scaler, prepared.jet_names, prepared.constituent_features,
                                   prepared.spec)
    clean = run_study(config, tmp_path / "clean", prepared=prepared, progress=False)
    config.plots = False
    dirty = run_study(config, tmp_path / "dirty", prepared=poisoned, progress=False)
    for a, b in zip(clean["rows"], dirty["rows"]):
        assert (a["upstream"], a["downstream"]) == (b["upstream"], b["downstream"])
        for key in a:
            if key.startswith("val_"):
                assert a[key] == b[key] or (math.isnan(a[key]) and math.isnan(b[key])), key
        # ...while the test numbers do see the poison.
        assert a["test_auc_event"] != b["test_auc_event"]
        assert 0.0 <= a["test_validity"] <= 1.0
    written = json.loads((tmp_path / "clean" / "results.json").read_text())
    assert len(written["rows"]) == 2 and written["machine"]["cpu"]
    # Each selection's chain is a model file: loaded, it gives the recorded test numbers.
    from hepms.model_file import load_model
    from hepms.select.training import evaluate_chain

    for row in clean["rows"]:
        trained = load_model(tmp_path / "clean" / "runs" / f"{row['method']}_v1-0.5_seed-0.model.pt")
        assert trained.spec == prepared.spec and trained.provenance.producer == "hepms select"
        assert trained.network.names == (row["upstream"], row["downstream"])
        again = evaluate_chain(trained.network, prepared.test, prepared.kinematics(), 0.5,
                               config.settings.eval_batch_size)
        assert again["auc_event"] == row["test_auc_event"]
        with pytest.raises(TypeError, match="not a hepms.nn.MultiStep"):
            trained.inference_model()
    for name in ("selected_pairs.png", "auc_vs_v1.png", "mse_vs_v1.png", "validity_vs_v1.png",
                 "alpha_v1-0.5.png", "results.csv"):
        assert (tmp_path / "clean" / name).is_file(), name


def test_cli_runs_a_small_study(generated, tmp_path, capsys):
    import yaml

    from hepms.select.cli import main

    config = {
        "data": {"path": str(generated), "fractions": [0.5, 0.3, 0.2]},
        "task": "tau_id",
        "candidates": {"upstream": {"sf": {"kind": "sf"}}, "downstream": {"mass": {"kind": "mass", "hidden": [8]}}},
        "settings": {"pretrain_epochs": 1, "search_epochs": 1, "posttrain_epochs": 1},
        "study": {"methods": ["grid"], "plots": False},
    }
    path = tmp_path / "select.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main([str(path), "--out", str(tmp_path / "out"), "--method", "spos", "-q"]) == 0
    out = capsys.readouterr().out
    assert "sf + mass" in out and "spos" in out
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["spos"]
    path.write_text(yaml.safe_dump({**config, "study": {"methods": ["bogus"]}}))
    assert main([str(path), "--out", str(tmp_path / "bad"), "-q"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_max_events_keeps_the_first_events_of_each_process(generated):
    from hepms.generate import read_events
    from hepms.select.study import load_events

    config = load_selection_config({"data": {"path": str(generated), "max_events": 30}})
    events = load_events(config, generated)
    labels = ak.to_numpy(events.label)
    assert (labels == 1).sum() == 30 and (labels == 0).sum() == 30
    # The first 30 of each file, in file order (the generator's event numbers).
    full = read_events(generated)
    for label in (0, 1):
        expected = ak.to_numpy(full.event[full.label == label])[:30]
        np.testing.assert_array_equal(ak.to_numpy(events.event[events.label == label]), expected)
    assert len(load_events(load_selection_config({"data": {"path": str(generated)}}), generated)) == len(full)
    with pytest.raises(ValueError, match="max_events"):
        load_selection_config({"data": {"max_events": 0}})


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="colour"):
        load_selection_config({"settings": {"colour": "red"}})
    with pytest.raises(ValueError, match="v1"):
        load_selection_config({"study": {"v1": [1.5]}})
    with pytest.raises(ValueError, match="task"):
        load_selection_config({"task": "jets"})
    config = load_selection_config({})
    assert config.task == "calibration" and config.methods == ("grid", "darts", "spos")


def test_example_config_loads():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "analyses" / "htautau" / "config" / "select.yaml"
    config = load_selection_config(path)
    assert {"zeros", "noise", "sf", "mlp"} <= set(config.candidates["upstream"])
    assert {"deepsets", "mlp2", "lstm", "mass"} <= set(config.candidates["downstream"])


def test_power_law_fit_recovers_the_exponent():
    n = np.array([2, 4, 8, 16])
    fit = fit_power_law(n, 3.0 * n**2.0)
    assert fit["a"] == pytest.approx(2.0) and fit["C"] == pytest.approx(3.0)
    with pytest.raises(ValueError):
        fit_power_law([1], [1.0])


def test_scaling_runs_every_method(prepared):
    base = select.SearchSpace.create(prepared, "tau_id", {"sf": {"kind": "sf"}},
                                     {"mass": {"kind": "mass", "hidden": [8]}})
    settings = _settings(pretrain_epochs=1, search_epochs=1, posttrain_epochs=1)
    rows = time_methods(base, prepared.train, prepared.val, settings, copies=[1, 2], warmup=False,
                        test=prepared.test)
    assert {(r["method"], r["n_models"]) for r in rows} == {
        (m, n) for m in ("grid", "darts", "spos") for n in (1, 2)}
    for r in rows:  # the selected chain's test numbers (paper Fig. 7b) and the CPU time
        assert 0.0 <= r["test_auc_event"] <= 1.0 and r["cpu_seconds"] > 0
    grid2 = [r for r in rows if r["method"] == "grid" and r["n_models"] == 2][0]
    assert grid2["phases"]["reoptimise"] > 0
    assert set(fit_all(rows)) == {"grid", "darts", "spos"}
