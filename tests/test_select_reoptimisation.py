"""Tests of the re-optimisation on / off study (hepms.select.reoptimisation, MSNAS paper 4.4.1) and
of the selection config's ``data.max_events``.

Plumbing only, on the session's tiny generated sample (100 + 100 events) with tiny models and a
couple of epochs: a few seconds in all.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from hepms import select
from hepms.config_engine import ConfigError
from hepms.select.config import load_selection_config
from hepms.select.space import Chain

ak = pytest.importorskip("awkward")

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "upstream": {"sf": {"kind": "sf"}, "mlp": {"kind": "mlp", "hidden": [8]}, "zeros": {"kind": "zeros"}},
    "downstream": {"mass": {"kind": "mass", "hidden": [8]}, "mlp2": {"kind": "mlp2", "hidden": [8]},
                   "noise": {"kind": "noise"}},
}


@pytest.fixture(scope="module")
def events(tiny_sample):
    from hepms.generate import read_events

    return read_events(tiny_sample)


@pytest.fixture(scope="module")
def prepared(events):
    return select.prepare_selection_data(events, seed=3)


def _settings(**changes) -> select.SearchSettings:
    base = dict(pretrain_epochs=2, posttrain_epochs=2, patience=2, batch_size=16, progress=False)
    base.update(changes)
    return select.SearchSettings(**base)


def _config(**study):
    return load_selection_config({
        "task": "calibration",
        "candidates": TINY,
        "settings": {"pretrain_epochs": 2, "posttrain_epochs": 2, "patience": 2, "batch_size": 16},
        "study": {"v1": [0.5], "seeds": [0, 1], "validity": {"max_points": 40, "iterations": 5},
                  "plots": False, **study},
    })


def test_without_reoptimisation_freezes_task1_and_feeds_its_outputs(prepared, monkeypatch):
    space = select.SearchSpace.create(prepared, "calibration", upstream={"mlp": TINY["upstream"]["mlp"]},
                                      downstream={"mass": TINY["downstream"]["mass"]})
    kinematics = prepared.kinematics()

    def forbidden(*args, **kwargs):
        raise AssertionError("the Task-2 model must not see the truth")

    monkeypatch.setattr(type(space.task), "truth_link", forbidden)
    finals = []
    for scale in (1.0, 3.0):  # two different Task-1 models, the same Task-2 initialisation
        up, down = space.build(seed=0)
        with torch.no_grad():
            for p in up["mlp"].parameters():
                p.mul_(scale)
        chain = Chain.from_candidates(up["mlp"], down["mass"], space.task)
        up_before = {k: v.clone() for k, v in chain.upstream.state_dict().items()}
        down_before = {k: v.clone() for k, v in chain.downstream.state_dict().items()}
        history = select.train_on_upstream_outputs(chain, prepared.train, prepared.val, _settings(), kinematics)
        assert len(history) == 2 and all(math.isfinite(h["val_loss"]) for h in history)
        # Task 1 frozen: same weights, no gradient, eval mode...
        for k, v in chain.upstream.state_dict().items():
            assert torch.equal(v, up_before[k]), k
        assert not any(p.requires_grad for p in chain.upstream.parameters())
        assert not chain.upstream.training
        # ...while Task 2 was trained.
        assert any(not torch.equal(v, down_before[k]) for k, v in chain.downstream.state_dict().items())
        finals.append(torch.cat([p.detach().flatten() for p in chain.downstream.parameters()]))
    # The Task-2 model learned from the Task-1 outputs: another Task-1 model, another Task-2 fit.
    assert not torch.allclose(finals[0], finals[1])


def test_study_writes_its_outputs_and_a_seed_reproduces(prepared, tmp_path):
    from hepms.select.reoptimisation import run_reoptimisation_study

    config = _config(plots=True)
    both = run_reoptimisation_study(config, tmp_path / "both", prepared=prepared, progress=False)
    for name in ("results.json", "results.csv", "summary.md", "auc_pairs.png", "v1_scan.png"):
        assert (tmp_path / "both" / name).is_file(), name
    written = json.loads((tmp_path / "both" / "results.json").read_text())
    for key in ("config", "settings_hash", "machine", "hepms_version", "rows", "summary", "cpu_seconds"):
        assert key in written, key
    assert written["complete"] is True and written["seeds_done"] == [0, 1]
    assert written["candidates"]["dummies_left_out"] == ["noise", "zeros"]
    rows = written["rows"]
    # Per seed: 2 x 2 pairs with and without, and the best pair at v1 = 0.5.
    assert len(rows) == 2 * (2 * 2 * 2 + 1)
    for seed in (0, 1):
        mine = [r for r in rows if r["seed"] == seed]
        assert sum(r["phase"] == "scan" for r in mine) == 1
        assert all(r["v1"] is None for r in mine if r["mode"] == "without")
        best = {r["pair"] for r in mine if r["best"]}
        assert len(best) == 1
        # Without re-optimisation the Task-1 model is the frozen pre-trained one: the same Task-1
        # numbers whatever Task-2 model follows it.
        for up in ("sf", "mlp"):
            mse = {r["test_mse"] for r in mine if r["mode"] == "without" and r["upstream"] == up}
            assert len(mse) == 1
        assert all(0.0 <= r["test_validity"] <= 1.0 for r in mine)
    summary = written["summary"]
    assert {p["pair"] for p in summary["pairs"]} == {"sf+mass", "sf+mlp2", "mlp+mass", "mlp+mlp2"}
    assert all(p["difference"]["n"] == 2 for p in summary["pairs"])
    assert [s["v1"] for s in summary["scan"]] == [0.0, 0.5]
    assert "reproduced" in (tmp_path / "both" / "summary.md").read_text()

    def same(again, before):
        assert len(again) == len(before)
        for a, b in zip(again, before):
            for key in a:
                if key.startswith(("test_", "val_")) or key in ("seed", "pair", "mode", "v1", "epochs", "best"):
                    assert a[key] == b[key] or (a[key] != a[key] and b[key] != b[key]), key

    # Seed 1 alone gives seed 1's numbers of the two-seed run...
    one = run_reoptimisation_study(_config(seeds=[1]), tmp_path / "grow", prepared=prepared, progress=False)
    assert one["reused_seeds"] == []
    same(one["rows"], [r for r in both["rows"] if r["seed"] == 1])
    # ...and the study grows: asked for seeds 0 and 1 there, it runs seed 0 only (study.records, the
    # selection study's record folder, is no setting of this study).
    grown_config = _config(seeds=[0, 1])
    grown_config.records = str(tmp_path / "selection_records")
    grown = run_reoptimisation_study(grown_config, tmp_path / "grow", prepared=prepared, progress=False)
    assert grown["reused_seeds"] == [1]
    same(grown["rows"], both["rows"])
    # Other settings: nothing reused.
    other = _config(seeds=[1])
    other.settings = other.settings.replace(lr=0.002)
    assert run_reoptimisation_study(other, tmp_path / "grow", prepared=prepared, progress=False)["reused_seeds"] == []


def test_bad_values_are_refused(prepared, tmp_path):
    from hepms.select.reoptimisation import run_reoptimisation_study

    for bad in (0, -5, "many", 2.5):
        with pytest.raises(ConfigError, match="max_events"):
            load_selection_config({"data": {"max_events": bad}})
    only_dummies = load_selection_config({
        "candidates": {"upstream": {"zeros": {"kind": "zeros"}}, "downstream": {"mass": {"kind": "mass"}}},
    })
    with pytest.raises(ValueError, match="dummies"):
        run_reoptimisation_study(only_dummies, tmp_path, prepared=prepared, progress=False)
    from hepms.select.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["x.yaml", "--study", "bogus"])
    assert exit_.value.code == 2


def test_max_events_keeps_the_first_events_of_each_process(events, tiny_sample):
    from hepms.select.study import first_events_per_process, load_events

    kept = first_events_per_process(events, 30)
    labels = ak.to_numpy(events.label)
    assert len(kept) == 60 and sorted(set(ak.to_numpy(kept.label))) == [0, 1]
    for value in (0, 1):
        first = ak.to_numpy(events.event[labels == value])[:30]
        assert (ak.to_numpy(kept.event[ak.to_numpy(kept.label) == value]) == first).all()
    assert first_events_per_process(events, None) is events
    assert len(first_events_per_process(events, 10_000)) == len(events)
    config = load_selection_config({"data": {"path": str(tiny_sample), "max_events": 25}})
    loaded = load_events(config, tiny_sample, progress=False)
    assert len(loaded) == 50 and ak.to_list(loaded.event) == ak.to_list(first_events_per_process(events, 25).event)
