"""Tests of hepms.select.records: a `hepms select` study that resumes and grows from committed
selection records (same settings hash and data fingerprint: skipped; anything else: run again).

A tiny study (the shared 100 + 100 event sample, two small candidates per task, a few epochs)."""
from __future__ import annotations

import json

import pytest
import torch

from hepms.select.config import load_selection_config
from hepms.select.records import SELECTION_RECORD_FORMAT, load_selection_records, selection_key

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "task": "calibration",
    "candidates": {"upstream": {"sf": {"kind": "sf"}, "zeros": {"kind": "zeros"}},
                   "downstream": {"mass": {"kind": "mass", "hidden": [8]}, "zeros": {"kind": "zeros"}}},
    "settings": {"pretrain_epochs": 2, "search_epochs": 2, "posttrain_epochs": 2, "patience": 2,
                 "search_patience": 2, "batch_size": 32, "alpha_lr": 0.05},
    "study": {"methods": ["grid", "darts"], "v1": [0.5], "seeds": [0], "plots": False,
              "validity": {"max_points": 50, "iterations": 5}},
}


def _config(sample, records, **study):
    raw = json.loads(json.dumps(TINY))
    raw["data"] = {"path": str(sample), "fractions": [0.5, 0.3, 0.2]}
    raw["study"].update(records=str(records), **study)
    return load_selection_config(raw)


def test_a_rerun_trains_nothing_and_a_new_v1_runs_only_its_selections(tiny_sample, tmp_path, monkeypatch, caplog):
    import hepms.select.study as study

    records = tmp_path / "records"
    first = study.run_study(_config(tiny_sample, records), tmp_path / "a", progress=False)
    assert first["selections"]["run"] == 2 and first["selections"]["recorded"] == 0
    written = sorted(records.glob("*.json"))
    assert [p.name.split("-")[0] for p in written] == ["darts_v1", "grid_v1"]
    record = json.loads(written[0].read_text())
    assert record["format"] == SELECTION_RECORD_FORMAT and record["data_fingerprint"] == first["data_fingerprint"]
    assert record["row"] in first["rows"] and "study" not in record["settings"]
    assert record["hepms_commit"] and record["alpha_history"] and "history" not in record
    # The epochs per phase instead of the per-epoch history (every phase ran 1 or 2 epochs here).
    assert any(tag.startswith("pretrain/") for tag in record["epochs"]) and set(record["epochs"].values()) <= {1, 2}

    # Again: nothing is pre-trained or selected, and the results are the same.
    calls = []
    monkeypatch.setattr(study, "pretrain", lambda *a, **k: calls.append(a) or pytest.fail("pre-trained"))
    again = study.run_study(_config(tiny_sample, records), tmp_path / "b", progress=False)
    assert again["selections"]["run"] == 0 and again["selections"]["recorded"] == 2 and not calls
    assert again["rows"] == json.loads(json.dumps(first["rows"]))
    assert json.loads((tmp_path / "b" / "results.json").read_text())["rows"] == again["rows"]
    assert (tmp_path / "b" / "runs" / "darts_v1-0.5_seed-0.json").is_file()  # the summary's input
    monkeypatch.undo()

    # A new v1 value: only its two selections run; the ends of the scan mark what has no meaning.
    pretrained = []
    real_pretrain = study.pretrain
    monkeypatch.setattr(study, "pretrain", lambda *a, **k: pretrained.append(real_pretrain(*a, **k)) or pretrained[-1])
    grown = study.run_study(_config(tiny_sample, records, v1=[0.5, 1.0]), tmp_path / "c", progress=False)
    monkeypatch.undo()
    # At v1 = 1 Task 2 gets no gradient: DARTS's Task-2 weights stay uniform (argmax: the first
    # candidate, "mass"), and the chain's Task-2 model is exactly its pre-trained self.
    from hepms.model_file import load_model

    chain = load_model(tmp_path / "c" / "runs" / "darts_v1-1_seed-0.model.pt").network
    assert chain.names[1] == "mass" and len(pretrained) == 1
    for name, value in pretrained[0].downstream["mass"].items():
        assert torch.equal(chain.downstream.state_dict()[name], value), name
    assert grown["selections"] == {"run": 2, "recorded": 2, "records": str(records)}
    assert len(list(records.glob("*.json"))) == 4
    for row in grown["rows"]:
        if row["v1"] == 1.0:
            # No Task-2 loss: neither DARTS nor the loss criterion of grid search chose Task 2.
            assert row["downstream_selected"] is False and "downstream_choice" in row["not_applicable"]
            if row["downstream"] == "zeros":
                assert row["test_auc_event"] is None and "test_auc_event" in row["not_applicable"]
            else:
                assert 0.0 <= row["test_auc_event"] <= 1.0
        else:
            assert row["downstream_selected"] is True and row["not_applicable"] == ""

    # A changed setting runs everything again; the other records are logged and left in place.
    caplog.set_level("INFO", logger="hepms.select.records")
    changed = _config(tiny_sample, records)
    changed.settings = changed.settings.replace(lr=2e-3)
    other = study.run_study(changed, tmp_path / "d", progress=False)
    assert other["selections"]["run"] == 2 and other["selections"]["recorded"] == 0
    assert len(list(records.glob("*.json"))) == 6
    assert "not a selection of this study" in caplog.text


def test_the_key_leaves_out_the_study_lists_and_checks_the_records(tiny_sample, tmp_path, caplog):
    base = _config(tiny_sample, tmp_path)
    wider = _config(tiny_sample, tmp_path, v1=[0.0, 0.5, 1.0], seeds=[0, 1, 2], methods=["grid", "darts", "spos"])
    wider.threads, wider.plots, wider.data["path"] = 1, True, "/elsewhere"
    assert selection_key(base, "grid", 0.5, 0) == selection_key(wider, "grid", 0.5, 0)
    assert selection_key(base, "grid", 0.5, 0) != selection_key(base, "grid", 0.5, 1)
    assert selection_key(base, "grid", 0.5, 0) != selection_key(base, "darts", 0.5, 0)
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "edited.json").write_text(json.dumps({"format": SELECTION_RECORD_FORMAT, "key": "0" * 12,
                                                      "data_fingerprint": "f", "settings": {}, "row": {}}))
    assert load_selection_records(tmp_path, base, "f", [("grid", 0.5, 0)]) == {}
    assert "unreadable" in caplog.text and "do not hash to its key" in caplog.text


def test_the_printed_table_says_n_a_for_what_does_not_apply():
    from hepms.select.cli import row_line

    row = {"method": "grid", "v1": 1.0, "seed": 3, "upstream": "deepsets", "downstream": "zeros",
           "downstream_selected": False, "test_auc_event": None, "test_mse": 0.0052, "test_validity": 0.995}
    line = row_line(row, "test_mse")
    assert "deepsets + n/a" in line and "n/a" in line.split("n/a", 1)[1] and "0.0052" in line and "0.995" in line
    assert "0.7500" in row_line({**row, "downstream_selected": True, "downstream": "mlp2", "test_auc_event": 0.75},
                                "test_mse")
