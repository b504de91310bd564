"""Tests of hepms.select.summary: the MSNAS paper's questions answered from a study's records.

Synthetic rows and records (no training), so the file runs in a few seconds.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from hepms.select.summary import dummy_names, load_study, main, summarize, summary_markdown, write_summary


def _row(method, v1, seed, up, down, mse, auc, validity):
    return {"method": method, "v1": v1, "seed": seed, "upstream": up, "downstream": down, "seconds": 1.0 + seed,
            "test_mse": mse, "test_auc_event": auc, "test_validity": validity}


def _alpha(seed, epochs=3):
    history = []
    for e in range(epochs + 1):
        w = 0.2 + 0.1 * e * (1 + seed)
        history.append({"epoch": e, "val_loss": None if e == 0 else 1.0 / (e + 1),
                        "upstream": {"ds": w, "zeros": (1 - w) / 2, "noise": (1 - w) / 2},
                        "downstream": {"mass": w, "zeros": 1 - w}})
    return history


@pytest.fixture
def study():
    rows, records = [], []
    for seed in (0, 1, 2):
        for v1 in (0.1, 0.9):
            auc = 0.80 + 0.01 * seed - 0.02 * v1
            rows.append(_row("grid", v1, seed, "ds", "mass", 0.10 - 0.05 * v1, auc, 0.9))
            # SPOS agrees with grid except at v1 = 0.9, seed 2 (another Task-2 model).
            down = "lstm" if (v1 == 0.9 and seed == 2) else "mass"
            rows.append(_row("spos", v1, seed, "ds", down, 0.11 - 0.05 * v1, auc - 0.001, 0.8))
            # DARTS picks a dummy once.
            up = "zeros" if (v1 == 0.1 and seed == 0) else "ds"
            rows.append(_row("darts", v1, seed, up, "mass", 0.2, auc - 0.01 * (seed + 1), 0.5))
            records.append({"row": rows[-1], "alpha_history": _alpha(seed)})
            pretrain = [{"phase": "pretrain/upstream/ds", "epoch": e} for e in range(4 + seed)]
            records.append({"row": rows[-3], "scores": {"ds|mass": {"auc_event": 0.8 + 0.01 * seed, "total": 0.5},
                                                         "zeros|mass": {"auc_event": 0.7, "total": 2.0}},
                            "history": pretrain + [{"phase": "grid/ds|mass", "epoch": e} for e in range(3)]})
    return rows, records


def test_summary_answers_the_papers_questions(study):
    rows, records = study
    s = summarize(rows, records, dummies={"zeros", "noise"})
    assert s["methods"] == ["darts", "grid", "spos"] and s["v1"] == [0.1, 0.9] and s["seeds"] == [0, 1, 2]
    assert s["dummies"]["grid"] == {"selected": 0, "runs": 6, "which": []}
    assert s["dummies"]["darts"]["selected"] == 1
    assert s["dummies"]["darts"]["which"] == [{"v1": 0.1, "seed": 0, "pair": "zeros|mass"}]
    agree = s["agreement"]["grid|spos"]
    assert (agree["agree"], agree["n"]) == (5, 6) and agree["fraction"] == pytest.approx(5 / 6)
    assert agree["same_upstream"] == 6 and agree["same_downstream"] == 5
    assert agree["by_v1"][0.9] == {"agree": 2, "n": 3}
    assert s["pairs"]["spos"][0.9] == {"ds|mass": {"count": 2, "fraction": pytest.approx(2 / 3)},
                                       "ds|lstm": {"count": 1, "fraction": pytest.approx(1 / 3)}}
    aucs = [r["test_auc_event"] for r in rows if r["method"] == "grid" and r["v1"] == 0.1]
    stat = s["metrics"]["grid"][0.1]["test_auc_event"]
    assert stat["mean"] == pytest.approx(np.mean(aucs)) and stat["sd"] == pytest.approx(np.std(aucs, ddof=1))
    assert stat["n"] == 3
    # Paired by seed: SPOS - grid is -0.001 in every pair (no spread), DARTS - grid -0.01 (seed + 1).
    d = s["paired"]["spos-grid"]["test_auc_event"][0.1]
    assert d["n"] == 3 and d["mean"] == pytest.approx(-0.001)
    d = s["paired"]["darts-grid"]["test_auc_event"][0.9]
    assert d["mean"] == pytest.approx(-0.02) and d["error"] == pytest.approx(0.01 / np.sqrt(3))
    assert "grid-grid" not in s["paired"]
    # v1 trend: grid's MSE at v1 = 0.9 minus at 0.1 is -0.04 for every seed.
    trend = s["v1_trend"]["grid"]["test_mse"]
    assert trend["v1"] == [0.1, 0.9] and trend["n"] == 3 and trend["mean"] == pytest.approx(-0.04)
    # DARTS weights: final softmax(alpha) over the seeds, and every seed's history.
    a = s["alpha"][0.1]
    finals = [0.2 + 0.3 * (1 + seed) for seed in (0, 1, 2)]
    assert a["final"]["upstream"]["ds"]["mean"] == pytest.approx(np.mean(finals))
    assert a["epochs"] == {0: 3, 1: 3, 2: 3} and len(a["history"][2]) == 4
    # Grid's validation scores of every pair, best AUC first.
    scores = s["pair_scores"][0.9]
    assert list(scores) == ["ds|mass", "zeros|mass"]
    assert scores["ds|mass"]["auc_event"]["mean"] == pytest.approx(0.81) and scores["zeros|mass"]["total"]["n"] == 3
    # Epochs per phase: a seed's pre-training counts once (it is shared by the v1 points).
    assert s["epochs"]["pretrain"] == {"n": 3, "mean": 5.0, "max": 6, "at_max": 1}
    assert s["epochs"]["grid/reoptimise"] == {"n": 6, "mean": 3.0, "max": 3, "at_max": 6}
    text = summary_markdown(s)
    assert "| grid vs spos | 5/6 | 0.83 |" in text
    assert "v1 0.1 seed 0: zeros + mass" in text


def test_summary_refuses_duplicates_and_empty_input(study):
    rows, _ = study
    with pytest.raises(ValueError, match="twice"):
        summarize(rows + rows[:1])
    with pytest.raises(ValueError, match="no selections"):
        summarize([])


def test_dummy_names_come_from_the_candidates_kinds():
    config = {"candidates": {"upstream": {"null": {"kind": "zeros"}, "ds": {"kind": "deepsets"}},
                             "downstream": {"rnd": {"kind": "noise"}, "mass": {"kind": "mass"}}}}
    assert dummy_names(config) == {"null", "rnd"}
    assert dummy_names(None) == {"zeros", "noise"}


def test_write_summary_reads_the_records_of_a_study_folder(study, tmp_path, capsys):
    rows, records = study
    runs = tmp_path / "study" / "runs"
    runs.mkdir(parents=True)
    by_key = {(r["row"]["method"], r["row"]["v1"], r["row"]["seed"]): r for r in records}
    for r in rows:
        record = by_key.get((r["method"], r["v1"], r["seed"]), {"alpha_history": []})
        (runs / f"{r['method']}_v1-{r['v1']:g}_seed-{r['seed']}.json").write_text(
            json.dumps({**record, "row": r}))
    # A study still running: no results.json; the records are enough.
    assert main([str(tmp_path / "study"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "darts  dummy selected in 1/6 runs" in out and "grid vs spos     same pair in 5/6" in out
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["provenance"]["complete"] is False
    assert written["agreement"]["grid|spos"]["agree"] == 5
    for name in ("summary.md", "selected_pairs.png", "auc_vs_v1.png", "mse_vs_v1.png", "validity_vs_v1.png",
                 "alpha_v1-0.1.png", "alpha_v1-0.9.png"):
        assert (tmp_path / "out" / name).is_file(), name
    # With results.json (a finished study) the configuration names the dummies and the provenance.
    (tmp_path / "study" / "results.json").write_text(json.dumps({
        "config": {"candidates": {"upstream": {"ds": {"kind": "deepsets"}, "zeros": {"kind": "mlp"}},
                                  "downstream": {"mass": {"kind": "mass"}}}, "data": {}},
        "settings_hash": "abc", "data_fingerprint": "def", "machine": {"cpu": "x"}, "rows": rows}))
    s = write_summary(tmp_path / "study", tmp_path / "out2", plots=False)
    assert s["dummies"]["darts"]["selected"] == 0  # "zeros" is an MLP in this configuration
    assert s["provenance"]["settings_hash"] == "abc" and s["provenance"]["data_fingerprint"] == "def"
    assert s["files"] == []


def test_load_study_names_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="runs"):
        load_study(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "x.json").write_text(json.dumps({"method": "grid"}))
    with pytest.raises(ValueError, match="x.json"):
        load_study(tmp_path)
    assert main([str(tmp_path / "nowhere")]) == 2


def test_a_stopped_study_is_summarised_with_its_configuration(study, tmp_path):
    import yaml

    rows, _ = study
    runs = tmp_path / "study" / "runs"
    runs.mkdir(parents=True)
    for r in rows[:3]:
        (runs / f"{r['method']}_seed-{r['seed']}_{r['v1']}.json").write_text(json.dumps({"row": r}))
    config = tmp_path / "select.yaml"
    config.write_text(yaml.safe_dump({"data": {"max_events": 10},
                                      "candidates": {"upstream": {"ds": {"kind": "sf"}, "zeros": {"kind": "zeros"}}}}))
    s = write_summary(tmp_path / "study", tmp_path / "out", plots=False, config=config)
    assert s["provenance"]["complete"] is False and s["provenance"]["settings_hash"]
    assert s["selections"] == 3 and s["dummy_candidates"] == ["noise", "zeros"]
    assert "stopped before it finished" in (tmp_path / "out" / "summary.md").read_text()


def test_the_ends_of_the_v1_scan(study):
    rows, records = study
    ends = []
    for seed in (0, 1, 2):
        for method in ("grid", "spos", "darts"):
            # v1 = 1: Task 2 was not chosen (a dummy there is no selection, and its AUC is n/a).
            ends.append({**_row(method, 1.0, seed, "ds", "zeros" if method == "darts" else "mass", 0.01, None, 0.99),
                         "downstream_selected": False, "not_applicable": "downstream_choice"})
            ends.append(_row(method, 0.0, seed, "ds", "mass", 0.5 + 0.1 * seed, 0.82, 0.4))
    s = summarize(rows + ends, records, dummies={"zeros", "noise"})
    assert s["v1"] == [0.0, 0.1, 0.9, 1.0]
    assert s["dummies"]["darts"]["selected"] == 1  # the v1 = 0.1 one only
    assert s["pairs"]["darts"][1.0] == {"ds|n/a": {"count": 3, "fraction": 1.0}}
    agree = s["agreement"]["grid|spos"]
    # v1 = 1 leaves the pair comparison (no Task-2 choice), not the Task-1 one.
    assert agree["by_v1"][1.0] == {"agree": 0, "n": 0} and agree["by_v1"][0.0] == {"agree": 3, "n": 3}
    assert (agree["agree"], agree["n"], agree["same_upstream"], agree["n_upstream"]) == (8, 9, 12, 12)
    assert s["metrics"]["grid"][1.0]["test_auc_event"] == {"mean": None, "sd": None, "n": 0}
    # The full trend spans 0 -> 1; the inner one 0.1 -> 0.9 (both tasks have a loss).
    assert s["v1_trend"]["grid"]["test_mse"]["v1"] == [0.0, 1.0]
    assert s["v1_trend"]["grid"]["test_auc_event"]["n"] == 0
    inner = s["v1_trend_inner"]["grid"]["test_mse"]
    assert inner["v1"] == [0.1, 0.9] and inner["mean"] == pytest.approx(-0.04)
    text = summary_markdown(s)
    assert "v1 = 0.9 minus at v1 = 0.1" in text and "v1 = 1 minus at v1 = 0" in text
    assert "ds + n/a 3" in text
    # ...and without the ends there is no inner trend.
    assert summarize(rows, records)["v1_trend_inner"] == {}
