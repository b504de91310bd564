"""analyses/htautau and hepms.study: the study's configurations, resumable scans (skip finished
trials, redo deleted or interrupted ones, locks), tables built from partial results, figures."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hepms.config import ConfigError, load_config, settings_hash, validate
from hepms.study.plan import expand_studies, unique_runs
from hepms.study.scan import collect_results, run_scan, trial_folder
from hepms.study.tables import fmt_mean_std, summarise

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "analyses" / "htautau" / "config"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sample(tiny_sample: Path) -> Path:
    return tiny_sample


def small_scan(sample: Path, run_dir: Path, **scan) -> dict:
    """A two-study scan (3 configurations, one shared) on the tiny sample, 1 epoch per phase."""
    cfg = {
        "run_dir": str(run_dir),
        "progress": False,
        "data": {"path": str(sample)},
        "model": {"connection": "additional", "k": 2},
        "trainer": {"epochs": 1, "patience": 1, "batch_size": 32},
        "plot": {"formats": ["png"]},
        "scan": {
            "trials": 2,
            "studies": {
                "balance": {
                    "kind": "table",
                    "grid": {"trainer.upstream_loss": ["bce"]},
                    "runs": [
                        {"label": "fixed", "set": {"trainer.balancer_options": {"weights": {"tau": 1.0, "event": 1.0}}}},
                        {"label": "uw", "set": {"trainer.balancer": "uncertainty"}},
                    ],
                },
                "size": {
                    "kind": "boxplot",
                    "x": "model.k",
                    "runs": [
                        {"label": "k=2", "group": "additional NN",
                         "set": {"trainer.balancer_options": {"weights": {"tau": 1.0, "event": 1.0}}}},
                        {"label": "k=1", "group": "direct", "set": {"model.connection": "direct", "model.k": 1}},
                    ],
                },
            },
            "figures": {"showcase": "balance/uw", "roc": ["balance/fixed", "balance/uw"],
                        "weights": ["balance/uw"], "latent": "balance/uw"},
            "reference": {"balance": {"source": "made up for the test",
                                      "values": {"uw": {"bce": {"auc_tau": "0.9", "auc_event": "0.8"}}}}},
        },
    }
    cfg["scan"].update(scan)
    return validate(cfg)


# ----------------------------------------------------------------------------------------------
# The study's configurations
# ----------------------------------------------------------------------------------------------
def test_study_configs_cover_the_reference_study() -> None:
    for preset in ("quick", "full"):
        cfg = load_config(CONFIG / f"{preset}.yaml")
        planned = expand_studies(cfg)
        table = [r for r in planned if r.study == "loss_balancing"]
        labels = {r.label for r in table}
        assert labels == {"step-by-step", "(w1, w2) = (0, 1)", "(w1, w2) = (0.1, 1)", "(w1, w2) = (1, 1)",
                          "(w1, w2) = (10, 1)", "uncertainty weighting", "GradNorm"}
        assert {r.column for r in table} == {"bce", "mse"} and len(table) == 14
        assert {r.config["trainer"]["upstream_loss"] for r in table if r.column == "mse"} == {"mse"}
        fixed = {r.label: r.config["trainer"]["balancer_options"]["weights"]["tau"] for r in table
                 if r.label.startswith("(w1, w2) = (") and r.config["trainer"]["strategy"] == "simultaneous"}
        assert fixed == {"(w1, w2) = (0.1, 1)": 0.1, "(w1, w2) = (1, 1)": 1.0, "(w1, w2) = (10, 1)": 10.0}
        ks = {(r.group, r.config["model"]["k"]) for r in planned if r.study == "k_scan"}
        assert ks == {(g, k) for g in ("direct connection", "additional NN") for k in (1, 2, 4, 8)}
        # Identical settings are trained once: additional k=2 is the (1, 1) BCE row, direct k=2 the
        # w1 = 0 one, and w1 = 0 with MSE is w1 = 0 with BCE (the upstream loss has weight 0).
        assert len(unique_runs(planned)) == len(planned) - 3
        by_key = {}
        for r in planned:
            by_key.setdefault(r.key, set()).add(r.ref + "/" + r.column)
        assert {"loss_balancing/(w1, w2) = (0, 1)/bce", "loss_balancing/(w1, w2) = (0, 1)/mse",
                "k_scan/direct k=2/"} in by_key.values()
        assert {"loss_balancing/(w1, w2) = (1, 1)/bce", "k_scan/additional k=2/"} in by_key.values()
        # Every published number has a row to sit next to.
        reference = cfg["scan"]["reference"]["loss_balancing"]["values"]
        assert set(reference) <= labels
        assert all(set(v) <= {"bce", "mse"} for v in reference.values())
    full = load_config(CONFIG / "full.yaml")
    assert full["data"]["generate"]["events_per_process"] == 50_000 and full["data"]["generate"]["mu"] == 50
    assert full["trainer"]["epochs"] == 100 and full["trainer"]["patience"] == 10 and full["trainer"]["lr"] == 1e-3
    quick = load_config(CONFIG / "quick.yaml", ["scan.trials=5"])
    assert quick["scan"]["trials"] == 5 and quick["data"]["generate"]["enabled"] is True


def test_extends_merges_and_overrides(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("trainer: {epochs: 7, balancer: gradnorm, balancer_options: {alpha: 1.0}}\nmodel: {k: 4}\n")
    top = tmp_path / "top.yaml"
    top.write_text("extends: base.yaml\ntrainer: {patience: 3, balancer: fixed, balancer_options: {}}\n")
    cfg = load_config(top, ["model.k=8"])
    assert cfg["trainer"]["epochs"] == 7 and cfg["trainer"]["patience"] == 3
    assert cfg["trainer"]["balancer_options"] == {}  # free-form options are replaced, not merged
    assert cfg["model"]["k"] == 8
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(loop)


def test_new_option_at_its_default_keeps_every_run_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding a schema key must not orphan finished trials; setting it away from its default must
    make a new configuration."""
    import copy

    import hepms.study.plan as plan
    from hepms.config import Key, schema

    cfg = load_config(CONFIG / "full.yaml")
    extended = copy.deepcopy(schema())
    extended["trainer"]["new_option"] = Key(0.5, "an option added after run-key version 1", "float")
    extended["model"]["new_width"] = Key([8], "another one", "list[int]")
    monkeypatch.setattr(plan, "schema", lambda: extended)
    with_defaults = copy.deepcopy(cfg)
    with_defaults["trainer"]["new_option"] = 0.5
    with_defaults["model"]["new_width"] = [8]
    assert plan.run_settings(with_defaults) == plan.run_settings(cfg)
    changed = copy.deepcopy(with_defaults)
    changed["trainer"]["new_option"] = 0.25
    assert settings_hash(plan.run_settings(changed)) != settings_hash(plan.run_settings(cfg))
    # The version-1 keys always count, even at their default, and they all exist in the schema.
    assert "monitor" in plan.run_settings(cfg)["trainer"]
    spec = schema()
    for keys, section in ((plan._V1_DATA_KEYS, spec["data"]), (plan._V1_GENERATE_KEYS, spec["data"]["generate"]),
                          (plan._V1_MODEL_KEYS, spec["model"]), (plan._V1_TRAINER_KEYS, spec["trainer"])):
        assert keys <= set(section), keys - set(section)


def test_existing_sample_must_match_the_generation_settings(sample: Path, tmp_path: Path) -> None:
    from hepms.study.dataset import ensure_sample

    cfg = small_scan(sample, tmp_path / "scan")
    assert ensure_sample(cfg) == sample  # generation disabled: any finished sample is used
    cfg["data"]["generate"].update(enabled=True, events_per_process=100, mu=5.0, seed=7)
    assert ensure_sample(cfg) == sample  # it is the sample these settings make
    cfg["data"]["generate"]["events_per_process"] = 999
    with pytest.raises(ConfigError, match=r"data.generate.events_per_process: 999, but the sample .* 100"):
        ensure_sample(cfg)


def test_summaries_and_formatting() -> None:
    s = summarise([0.8, 0.82, None, float("nan"), 0.81])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.81) and s["std"] == pytest.approx(0.01)
    assert fmt_mean_std(s) == "0.8100 ± 0.0100"
    assert fmt_mean_std(summarise([0.5])) == "0.5000"
    assert fmt_mean_std(summarise([])) == "—"


# ----------------------------------------------------------------------------------------------
# Scans: resume, skip, redo, locks, tables, figures
# ----------------------------------------------------------------------------------------------
def test_scan_runs_skips_redoes_and_resumes(sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hepms.train.trainer import Trainer

    run_dir = tmp_path / "scan"
    cfg = small_scan(sample, run_dir)
    planned = expand_studies(cfg)
    assert len(planned) == 4 and len(unique_runs(planned)) == 3

    # Stop after two trials: the tables already exist, from what is there.
    first = run_scan(cfg, max_trials=2, plots=False)
    assert (first["trained"], first["remaining"]) == (2, 4)
    table = json.loads((run_dir / "tables" / "balance.json").read_text())
    assert [row["auc_event"]["n"] for row in table["rows"]] == [1, 1]  # trial-major: trial 0 first
    assert "| fixed | " in (run_dir / "tables" / "balance.md").read_text()

    # Crash in the middle of the next trial (trial 0 of the direct k=1 run).
    original = Trainer._run_epoch
    monkeypatch.setattr(Trainer, "_run_epoch", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError, match="killed"):
        run_scan(cfg, plots=False)
    monkeypatch.setattr(Trainer, "_run_epoch", original)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["invocations"][-1]["status"] == "interrupted"
    crashed = [f for f in (run_dir / "trials").glob("*/trial_000") if not (f / "result.json").exists()]
    assert len(crashed) == 1 and not (crashed[0] / "lock").exists()  # the lock is released

    # The next run does the rest, skipping the finished trials.
    second = run_scan(cfg)
    assert (second["trained"], second["skipped"], second["remaining"]) == (4, 2, 0)
    results = collect_results(run_dir, planned, None)
    assert all(len(v) == 2 for v in results.values())
    assert sorted(r["seed"] for r in results[planned[0].key]) == [cfg["scan"]["seed"], cfg["scan"]["seed"] + 1]

    # Done: a re-run trains nothing and leaves the results alone.
    stamp = {p: p.stat().st_mtime_ns for p in run_dir.glob("trials/*/trial_*/result.json")}
    third = run_scan(cfg, plots=False)
    assert (third["trained"], third["skipped"]) == (0, 6)
    assert stamp == {p: p.stat().st_mtime_ns for p in run_dir.glob("trials/*/trial_*/result.json")}

    # A deleted result is redone (and only that one).
    victim = trial_folder(run_dir, planned[1], 1)
    before = json.loads((victim / "result.json").read_text())
    (victim / "result.json").unlink()
    fourth = run_scan(cfg, plots=False)
    assert (fourth["trained"], fourth["skipped"]) == (1, 5)
    redone = json.loads((victim / "result.json").read_text())
    # It continued from the trial's final checkpoint: same weights, same test metrics.
    assert redone["resumed"] is True and redone["metrics"] == before["metrics"]
    # With the checkpoint gone too, it is trained from scratch to the same (deterministic) result.
    (victim / "result.json").unlink()
    (victim / "checkpoint.pt").unlink()
    run_scan(cfg, plots=False)
    again = json.loads((victim / "result.json").read_text())
    assert again["resumed"] is False and again["metrics"] == before["metrics"]

    # Tables: every configuration with 2 trials, mean ± std, the shared run reported in both studies.
    balance = json.loads((run_dir / "tables" / "balance.json").read_text())
    size = json.loads((run_dir / "tables" / "size.json").read_text())
    fixed_row = balance["rows"][0]
    k2_row = next(r for r in size["rows"] if r["label"] == "k=2")
    assert fixed_row["folder"] == k2_row["folder"] and fixed_row["auc_event"] == k2_row["auc_event"]
    values = fixed_row["auc_event"]["values"]
    assert fixed_row["auc_event"]["mean"] == pytest.approx(sum(values) / 2)
    markdown = (run_dir / "tables" / "balance.md").read_text()
    assert fmt_mean_std(fixed_row["auc_event"]) in markdown
    comparison = (run_dir / "tables" / "balance_vs_study.md").read_text()
    assert "| uw | bce |" in comparison and "0.9" in comparison and "made up for the test" in comparison
    assert {r["x"] for r in size["rows"]} == {1, 2}

    # Figures of the scan exist and are non-empty PNGs.
    figures = run_dir / "figures"
    for stem in ("roc_tau", "roc_event", "scores_tau", "scores_event", "tau_efficiency_vs_pt",
                 "light_rejection_vs_pt", "latent_space", "roc_tau_compare_bce", "roc_event_compare_bce",
                 "size_boxplot", "weights_uw-bce"):
        path = figures / f"{stem}.png"
        assert path.is_file() and path.stat().st_size > 1000, stem
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["results"]["finished_trials"] == 6 and manifest["kind"] == "scan"
    assert manifest["data"]["events"] > 0 and manifest["invocations"][-1]["status"] == "finished"


def test_scan_respects_locks_and_takes_over_stale_ones(sample: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "scan"
    cfg = small_scan(sample, run_dir, trials=1)
    planned = unique_runs(expand_studies(cfg))
    busy = trial_folder(run_dir, planned[0], 0)
    busy.mkdir(parents=True)
    import socket

    (busy / "lock").write_text(f"{socket.gethostname()} {os.getppid()}")  # a live process
    stale = trial_folder(run_dir, planned[1], 0)
    stale.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (stale / "lock").write_text(f"{socket.gethostname()} {dead.pid}")
    summary = run_scan(cfg, plots=False)
    assert (summary["trained"], summary["busy"]) == (2, 1)
    assert not (busy / "result.json").exists() and (stale / "result.json").is_file()
    assert not (stale / "lock").exists()


def test_shared_configuration_has_one_folder_whatever_only_selects(sample: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "scan"
    cfg = small_scan(sample, run_dir, trials=1)
    # size/k=2 is balance/fixed: trained from the size study, it still goes to balance/fixed's folder.
    assert run_scan(cfg, only=["size/k=2"], plots=False)["trained"] == 1
    assert [p.name.rsplit("-", 1)[0] for p in (run_dir / "trials").iterdir()] == ["fixed-bce"]
    summary = run_scan(cfg, only=["balance"], plots=False)
    assert (summary["trained"], summary["skipped"]) == (1, 1)
    tables = json.loads((run_dir / "tables" / "tables.json").read_text())
    k2 = next(r for r in tables["size"]["rows"] if r["label"] == "k=2")
    assert k2["auc_event"]["n"] == 1 and k2["folder"].startswith("fixed-bce-")


def test_results_of_another_sample_are_not_mixed_in(sample: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "scan"
    cfg = small_scan(sample, run_dir, trials=1)
    assert run_scan(cfg, only=["balance/fixed"], plots=False)["trained"] == 1
    # Same run directory, other data settings: the earlier result does not count.
    other = small_scan(sample, run_dir, trials=1)
    other["data"]["max_events"] = 120
    for run in ("fixed",):
        summary = run_scan(other, only=[f"balance/{run}"], plots=False)
        assert summary["trained"] == 1 and summary["skipped"] == 0


def test_run_script_publishes_tables_and_key_figures(sample: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "analyses" / "htautau"))
    try:
        import run as analysis
    finally:
        sys.path.pop(0)
    run_dir = tmp_path / "scan"
    cfg = small_scan(sample, run_dir, trials=1)
    run_scan(cfg)
    copied = analysis.publish(run_dir, tmp_path / "results")
    names = {p.name for p in copied}
    assert {"balance.md", "balance.json", "tables.json", "manifest.json", "config.yaml", "latent_space.png",
            "captions.json"} <= names
    captions = json.loads((tmp_path / "results" / "figures" / "captions.json").read_text())["captions"]
    assert "uw [bce], trial 0, seed 1000, k = 2" in captions["latent_space.png"]
    assert all(p.stat().st_size > 0 for p in copied)
    assert not any(p.suffix == ".pdf" for p in copied)

    # `hepms evaluate` / `hepms plot` on a scan's run directory rebuild its tables / figures.
    from hepms.cli import main

    shutil.rmtree(run_dir / "tables")
    shutil.rmtree(run_dir / "figures")
    assert main(["evaluate", str(run_dir)]) == 0
    assert (run_dir / "tables" / "balance.md").is_file() and not (run_dir / "figures").exists()
    assert main(["plot", str(run_dir)]) == 0
    assert (run_dir / "figures" / "size_boxplot.png").stat().st_size > 1000
    out = subprocess.run([sys.executable, str(REPO / "analyses" / "htautau" / "run.py"), "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "quick" in out.stdout and "full" in out.stdout


def test_killed_scan_releases_its_lock_and_resumes(sample: Path, tmp_path: Path) -> None:
    import signal
    import time

    import yaml

    run_dir = tmp_path / "scan"
    cfg = small_scan(sample, run_dir, trials=1)
    cfg["trainer"].update(epochs=200, patience=200)  # long enough to be killed mid-trial
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "hepms.cli", "scan", str(config), "--only", "balance/fixed",
                             "--no-plots"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    checkpoints: list = []
    while not checkpoints and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        checkpoints = list(run_dir.glob("trials/*/trial_000/checkpoint.pt"))
    assert checkpoints, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    folder = checkpoints[0].parent
    assert not (folder / "lock").exists() and not (folder / "result.json").exists()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["invocations"][-1]["status"] == "interrupted"
    # (continuing from that checkpoint is tested in test_scan_runs_skips_redoes_and_resumes)


def test_manifest_marks_scans_that_died_without_a_word_as_killed(tmp_path: Path) -> None:
    # SIGKILL or a power cut leaves an invocation "running" for ever; the next scan that updates
    # the manifest sees that its process is gone and says so.
    import socket

    from hepms.study.scan import update_manifest

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cfg = load_config(CONFIG / "quick.yaml")
    running = {"id": f"{dead.pid}-1", "host": socket.gethostname(), "status": "running"}
    foreign = {"id": f"{dead.pid}-2", "host": "another-machine", "status": "running"}
    alive = {"id": f"{os.getpid()}-3", "host": socket.gethostname(), "status": "running"}
    for entry in (running, foreign, alive):
        update_manifest(tmp_path, "scan", cfg, invocation=dict(entry))
    manifest = update_manifest(tmp_path, "scan", cfg, invocation={"id": "new", "status": "running"})
    status = {entry["id"]: entry["status"] for entry in manifest["invocations"]}
    assert status == {running["id"]: "killed", foreign["id"]: "running", alive["id"]: "running", "new": "running"}


def test_pileup_check_scores_test_split_and_independent_sample(sample: Path, tmp_path: Path) -> None:
    """analyses/htautau/pileup_check.py: one trained model, its test split vs an independent sample."""
    import importlib.util

    from hepms.cli import main as hepms_main
    from hepms.generate import generate

    run_dir = tmp_path / "run"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"run_dir: {run_dir}\nprogress: false\ndata: {{path: {sample}}}\n"
        "trainer: {epochs: 1, patience: 1, batch_size: 32}\n"
    )
    assert hepms_main(["train", str(config), "--no-progress"]) == 0
    other = tmp_path / "independent"
    generate(other, events_per_process=60, mu=5, seed=8, workers=1, pileup_process="nondiffractive",
             progress=False)
    spec = importlib.util.spec_from_file_location("hepms_tests_pileup_check",
                                                  REPO / "analyses" / "htautau" / "pileup_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(run_dir), str(other), "--bootstrap", "20"]) == 0
    result = json.loads((run_dir / "pileup_check.json").read_text())
    for part in ("test_split", "independent", "validation_split"):
        assert 0.0 <= result[part]["auc_tau"] <= 1.0 and result[part]["auc_tau_err"] > 0
    assert 50 < result["independent"]["events"] <= 120  # events with at least one jet
    assert result["test_split"]["events"] < 100  # the generator's test split of 200 events
    diff = result["auc_tau_difference"]
    assert diff["value"] == pytest.approx(result["test_split"]["auc_tau"] - result["independent"]["auc_tau"])
    assert result["machine"]["cpu"]
    # the training sample itself is not an independent sample
    assert module.main([str(run_dir), str(sample), "--bootstrap", "5"]) == 2


def test_bootstrap_follows_events() -> None:
    import importlib.util

    import numpy as np

    spec = importlib.util.spec_from_file_location("hepms_tests_pileup_check2",
                                                  REPO / "analyses" / "htautau" / "pileup_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(0)
    n = 400
    jets = rng.integers(1, 4, n)
    offsets = np.concatenate([[0], np.cumsum(jets)])
    labels = rng.integers(0, 2, offsets[-1])
    pred = {"jet_offsets": offsets, "jet_labels": labels, "tau_logit": labels + rng.normal(0, 1, offsets[-1]),
            "event_labels": rng.integers(0, 2, n), "event_logit": rng.normal(0, 1, n)}
    out = module.bootstrap_aucs(pred, 200, seed=1)
    assert out["events"] == n and out["jets"] == offsets[-1]
    # binomial-like error of an AUC from ~800 jets: a few 0.01
    assert 0.005 < out["auc_tau_err"] < 0.05 and 0.01 < out["auc_event_err"] < 0.06
