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
from hepms.study.records import record_of
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
        # w1 = 0 one, and w1 = 0 with MSE is w1 = 0 with BCE (the upstream loss has weight 0); the
        # monitor ablation's step-by-step and "monitor total" rows are loss-balancing BCE rows.
        assert len(unique_runs(planned)) == len(planned) - 6
        by_key = {}
        for r in planned:
            by_key.setdefault(r.key, set()).add(r.ref + "/" + r.column)
        assert {"loss_balancing/(w1, w2) = (0, 1)/bce", "loss_balancing/(w1, w2) = (0, 1)/mse",
                "k_scan/direct k=2/"} in by_key.values()
        assert {"loss_balancing/(w1, w2) = (1, 1)/bce", "k_scan/additional k=2/",
                "monitor_ablation/(w1, w2) = (1, 1), monitor total/"} in by_key.values()
        assert {"loss_balancing/step-by-step/bce", "monitor_ablation/step-by-step/"} in by_key.values()
        assert {"loss_balancing/uncertainty weighting/bce",
                "monitor_ablation/uncertainty weighting, monitor total/"} in by_key.values()
        ablation = {r.label: r.config["trainer"]["monitor"] for r in planned if r.study == "monitor_ablation"}
        assert ablation["(w1, w2) = (1, 1), monitor event"] == "event"
        assert ablation["uncertainty weighting, monitor event"] == "event"
        # Every comparison of the slides is configured (and checked against the plan).
        names = {c["name"] for c in cfg["scan"]["comparisons"]}
        assert {"uw_vs_best_fixed", "simultaneous_vs_step_by_step", "additional_vs_direct_k2",
                "simultaneous_event_vs_step_by_step"} <= names
        # Every published number has a row to sit next to.
        reference = cfg["scan"]["reference"]["loss_balancing"]["values"]
        assert set(reference) <= labels
        assert all(set(v) <= {"bce", "mse"} for v in reference.values())
    full = load_config(CONFIG / "full.yaml")
    assert full["scan"]["trials"] >= 10 and full["scan"]["trial_records"] == "analyses/htautau/results/full/trials"
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
    from hepms.config import schema
    from hepms.config_engine import Key

    cfg = load_config(CONFIG / "full.yaml")
    extended = copy.deepcopy(schema())
    extended["trainer"]["new_option"] = Key(0.5, "an option added after run-key version 1", float)
    extended["model"]["new_width"] = Key([8], "another one", list[int])
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
    original = Trainer.forward_batch  # the public step hook: the trial dies in its first step
    monkeypatch.setattr(Trainer, "forward_batch", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError, match="killed"):
        run_scan(cfg, plots=False)
    monkeypatch.setattr(Trainer, "forward_batch", original)
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
    # Every finished trial folder holds its model file (hepms.model_file.load_model reads the folder).
    from hepms.model_file import load_model

    for folder in run_dir.glob("trials/*/trial_*"):
        trained = load_model(folder)
        result = json.loads((folder / "result.json").read_text())
        assert trained.provenance.producer == "hepms scan"
        assert trained.provenance.data_fingerprint == result["data_fingerprint"]
        assert trained.provenance.extra["seed"] == result["seed"]

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


def test_only_selects_one_grid_column_of_a_run(sample: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "scan"
    cfg = small_scan(sample, run_dir, trials=1)
    cfg["scan"]["studies"]["balance"]["grid"] = {"trainer.upstream_loss": ["bce", "mse"]}
    cfg = validate(cfg)
    # "study/label [column]", as the log names a run: that grid point only.
    assert run_scan(cfg, only=["balance/uw [mse]"], plots=False)["trained"] == 1
    assert [p.name.rsplit("-", 1)[0] for p in (run_dir / "trials").iterdir()] == ["uw-mse"]
    with pytest.raises(ConfigError, match=r"balance/uw \[bce\]"):
        run_scan(cfg, only=["balance/uw [ce]"], plots=False)


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
    copied, kept = analysis.publish(run_dir, tmp_path / "results")
    names = {p.name for p in copied}
    assert {"balance.md", "balance.json", "tables.json", "manifest.json", "config.yaml", "latent_space.png",
            "captions.json"} <= names and kept == []
    captions_file = tmp_path / "results" / "figures" / "captions.json"
    captions = json.loads(captions_file.read_text())["captions"]
    assert "uw [bce], trial 0, seed 1000, k = 2" in captions["latent_space.png"]
    assert all(p.stat().st_size > 0 for p in copied)
    assert not any(p.suffix == ".pdf" for p in copied)

    # Published from a machine without the trials' run outputs (a fresh clone with the committed
    # records): the figures it cannot draw are kept with their captions, not deleted.
    latent = (tmp_path / "results" / "figures" / "latent_space.png").read_bytes()
    (run_dir / "figures" / "latent_space.png").unlink()
    published = tmp_path / "results" / "manifest.json"
    manifest = json.loads(published.read_text())
    own = [item["id"] for item in manifest["invocations"]]
    manifest["invocations"].insert(0, {"id": "elsewhere-1", "host": "another machine"})
    published.write_text(json.dumps(manifest))
    copied, kept = analysis.publish(run_dir, tmp_path / "results")
    # ... and the manifest keeps the earlier machines' invocations.
    assert [item["id"] for item in json.loads(published.read_text())["invocations"]] == ["elsewhere-1"] + own
    assert [p.name for p in kept] == ["latent_space.png"] and "latent_space.png" not in {p.name for p in copied}
    assert (tmp_path / "results" / "figures" / "latent_space.png").read_bytes() == latent
    assert json.loads(captions_file.read_text())["captions"] == captions

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


def test_pileup_check_scores_test_split_and_independent_sample(sample: Path, tmp_path: Path, capsys) -> None:
    """analyses/htautau/pileup_check.py: one trained model, its test split vs an independent sample
    and vs each split (pileup pool) of it."""
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
    assert result["cpu_seconds"] > 0 and result["model"]["data_fingerprint"] == result["sample"]["fingerprint"]
    # the model's own validation split scores as the trainer scored it (one epoch: the best one)
    trained = json.loads((run_dir / "train" / "metrics.json").read_text())["epochs"][0]
    for key in ("auc_tau", "auc_event"):
        assert result["validation_split"][key] == pytest.approx(trained[f"val_{key}"], abs=1e-6)
    # each split of the independent sample (its own pileup pool) scored on its own
    splits = result["independent_splits"]
    made = json.loads((other / "manifest.json").read_text())["splits"]["events"]
    for name, part in splits.items():  # events with at least one jet of the generator's split
        assert 0 < part["events"] <= made["H"][name] + made["Z"][name]
    assert sum(part["events"] for part in splits.values()) == result["independent"]["events"]
    for part in splits.values():
        assert 0.0 <= part["auc_event"] <= 1.0 and part["auc_event_err"] > 0
    diff = result["independent_split_differences"]["train - test"]["auc_event"]
    assert diff["value"] == pytest.approx(splits["train"]["auc_event"] - splits["test"]["auc_event"])
    assert set(result["independent_sample"]["mean_rho_by_split"]) == {"train", "validation", "test"}
    assert all(0 < rho < 20 for rho in result["sample"]["mean_rho_by_split"].values())  # <mu> = 5
    assert all(1 <= n <= 8 for n in result["independent"]["jets_per_event"].values())
    agreement = result["independent_splits_agreement"]["auc_event"]
    assert agreement["ndof"] == 2 and 0.0 < agreement["p_value"] <= 1.0
    assert {"seed", "events_per_process", "pileup_process"} <= set(result["independent_sample"]["settings_differing"])
    # the training sample itself is not an independent sample
    assert module.main([str(run_dir), str(sample), "--bootstrap", "5"]) == 2
    # a bare model file (no config.yaml beside it): the data settings come from the file, the
    # sample from --data; without --data, or with a sample the model was not trained on: refused
    bare = tmp_path / "bare" / "model.pt"
    bare.parent.mkdir()
    shutil.copy(run_dir / "model.pt", bare)
    out = tmp_path / "bare.json"
    assert module.main([str(bare), str(other), "--data", str(sample), "--out", str(out), "--bootstrap", "5"]) == 0
    assert json.loads(out.read_text())["test_split"]["events"] == result["test_split"]["events"]
    assert module.main([str(bare), str(other), "--bootstrap", "5"]) == 2
    assert module.main([str(bare), str(sample), "--data", str(other), "--bootstrap", "5"]) == 2
    assert "fingerprint" in capsys.readouterr().err


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
    # three parts, 0.80 / 0.82 / 0.80 +- 0.01: chi2 = 8/3 about 0.8067, p = 0.264 (chi2 table, 2 dof)
    parts = [{"auc_tau": 0.9, "auc_tau_err": 0.01, "auc_event": x, "auc_event_err": 0.01} for x in (0.80, 0.82, 0.80)]
    agreement = module.agreement(parts)
    assert agreement["auc_event"]["mean"] == pytest.approx(0.80667, abs=1e-5)
    assert agreement["auc_event"]["chi2"] == pytest.approx(8 / 3) and agreement["auc_event"]["p_value"] == pytest.approx(0.2636, abs=1e-4)
    assert agreement["auc_tau"]["chi2"] == pytest.approx(0.0) and agreement["auc_tau"]["p_value"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------
# Scans on dask.distributed, trial records shared between machines, n/a metrics, comparisons
# ----------------------------------------------------------------------------------------------
def one_config_scan(sample: Path, run_dir: Path, **scan) -> dict:
    """One table study with a fixed-weight run and a w1 = 0 run, 1 epoch, 2 trials."""
    cfg = {
        "run_dir": str(run_dir),
        "progress": False,
        "threads": 1,
        "data": {"path": str(sample)},
        "trainer": {"epochs": 1, "patience": 1, "batch_size": 32},
        "scan": {
            "trials": 2,
            "plots": False,
            "studies": {"balance": {"kind": "table", "runs": [
                {"label": "fixed", "set": {"trainer.balancer_options": {"weights": {"tau": 1.0, "event": 1.0}}}},
                {"label": "zero", "set": {"trainer.strategy": "w1_zero"}},
            ]}},
        },
    }
    cfg["scan"].update(scan)
    return validate(cfg)


def _metrics_by_seed(run_dir: Path, cfg: dict) -> dict:
    planned = expand_studies(cfg)
    results = collect_results(run_dir, planned, None)
    return {(key, r["seed"]): r["metrics"] for key, found in results.items() for r in found}


def test_dask_local_cluster_scan_matches_the_serial_scan(sample: Path, tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    import socket

    serial_dir, dask_dir = tmp_path / "serial", tmp_path / "dask"
    serial = one_config_scan(sample, serial_dir)
    assert run_scan(serial, only=["balance/fixed"])["trained"] == 2
    cfg = one_config_scan(sample, dask_dir)
    # Trial 1 is held by a live process (another scan): the dask scan must leave it alone.
    planned = unique_runs(expand_studies(cfg))
    busy = trial_folder(dask_dir, planned[0], 1)
    busy.mkdir(parents=True)
    (busy / "lock").write_text(f"{socket.gethostname()} {os.getppid()}")
    # Trial 0 was left by a worker that died: its lock names a process that is gone.
    dead_worker = trial_folder(dask_dir, planned[0], 0)
    dead_worker.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (dead_worker / "lock").write_text(f"{socket.gethostname()} {dead.pid} 0123456789ab")
    seen = []
    summary = run_scan(cfg, only=["balance/fixed"], dask="local:1", on_trial=lambda run, t, r: seen.append(t))
    assert (summary["trained"], summary["busy"], summary["skipped"]) == (1, 1, 0) and seen == [0]
    assert (dead_worker / "result.json").is_file() and not (dead_worker / "lock").exists()  # the same layout
    assert not (busy / "result.json").exists() and (busy / "lock").exists()
    manifest = json.loads((dask_dir / "manifest.json").read_text())
    assert manifest["invocations"][-1]["dask"] == "local:1" and manifest["invocations"][-1]["status"] == "finished"
    # The dask trial equals the serial one with the same seed (same folder layout, same numbers).
    dask_metrics, serial_metrics = _metrics_by_seed(dask_dir, cfg), _metrics_by_seed(serial_dir, serial)
    assert len(dask_metrics) == 1 and dask_metrics.items() <= serial_metrics.items()
    # Lock gone: a scan resumes with the missing trial only (one cluster start per test is enough:
    # starting workers costs seconds).
    (busy / "lock").unlink()
    again = run_scan(cfg, only=["balance/fixed"])
    assert (again["trained"], again["skipped"]) == (1, 1)
    assert _metrics_by_seed(dask_dir, cfg) == serial_metrics
    with pytest.raises(ConfigError, match="local:N"):
        run_scan(cfg, dask="local:zero")


def test_local_cluster_workers_keep_glibc_default_memory_trimming_and_have_no_ttl(monkeypatch):
    # distributed's default MALLOC_TRIM_THRESHOLD_=65536 makes glibc map and unmap every large
    # temporary of a training step (page faults: a trial in a worker took twice its CPU time).
    pytest.importorskip("distributed")
    import dask

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)  # a user's own setting is kept
    from hepms.study.scan import dask_client

    ttl = dask.config.get("distributed.scheduler.worker-ttl")
    assert ttl  # distributed's default ("5 minutes"): what the local cluster must not use
    client, cluster = dask_client("local:1")
    try:
        values = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
        # No worker time-to-live: a paused worker (SIGSTOP, a sleeping laptop) is not restarted
        # with its trial. The scheduler runs in this process; no TTL check is even scheduled.
        assert cluster.scheduler.worker_ttl is None
        assert "worker-ttl" not in cluster.scheduler.periodic_callbacks
    finally:
        client.close()
        cluster.close()
    assert values and all(v is None for v in values.values()), values
    # Only the cluster hepms started: the process's dask configuration is as it was.
    assert dask.config.get("distributed.scheduler.worker-ttl") == ttl


def test_trial_records_make_a_fresh_scan_train_nothing(sample: Path, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    import logging

    records = tmp_path / "repo" / "results" / "trials"
    first = one_config_scan(sample, tmp_path / "machine_a", trial_records=str(records))
    assert run_scan(first)["trained"] == 4
    files = sorted(records.glob("*/*.json"))
    assert len(files) == 4
    record = json.loads(files[0].read_text())
    assert record["format"] == "hepms.trial/1" and record["hepms_version"] and record["machine"]["cpu"]
    assert record["hepms_commit"] is None or len(record["hepms_commit"]) == 40  # a git checkout here, None in a wheel
    # The commit the trial started with (in its result.json), not the one when the record is written.
    result = json.loads(next((tmp_path / "machine_a" / "trials").glob("*/trial_*/result.json")).read_text())
    assert "hepms_commit" in result
    assert record_of({**result, "hepms_commit": "0" * 40}, record["run_key"])["hepms_commit"] == "0" * 40
    assert {"seed", "metrics", "epochs_trained", "seconds", "data_fingerprint", "run_key", "settings"} <= set(record)
    assert str(sample) not in files[0].read_text() and str(tmp_path) not in files[0].read_text()  # no paths
    assert record["run_key"] == settings_hash(record["settings"])
    tables_a = json.loads((tmp_path / "machine_a" / "tables" / "balance.json").read_text())

    # A fresh machine: another run directory, the sample elsewhere (a copy), the committed records.
    copy = tmp_path / "elsewhere" / "sample"
    shutil.copytree(sample, copy)
    fresh = one_config_scan(copy, tmp_path / "machine_b", trial_records=str(records))
    summary = run_scan(fresh)
    assert (summary["trained"], summary["skipped"], summary["finished_trials"]) == (0, 4, 4)
    tables_b = json.loads((tmp_path / "machine_b" / "tables" / "balance.json").read_text())
    for row_a, row_b in zip(tables_a["rows"], tables_b["rows"]):
        assert row_a["auc_event"] == row_b["auc_event"] and row_a["seeds"] == row_b["seeds"]

    # A record of other data (fingerprint) or edited settings does not count: that trial is retrained.
    victim = files[0]
    stale = json.loads(victim.read_text())
    victim.write_text(json.dumps({**stale, "data_fingerprint": "0123456789abcdef"}))
    with caplog.at_level(logging.WARNING, logger="hepms.study.records"):
        assert run_scan(fresh)["trained"] == 1
    edited = json.loads(files[1].read_text())
    edited["settings"]["trainer"]["lr"] = 0.5
    files[1].write_text(json.dumps(edited))
    with caplog.at_level(logging.WARNING, logger="hepms.study.records"):
        assert run_scan(one_config_scan(copy, tmp_path / "machine_c", trial_records=str(records)))["trained"] == 2
    assert any("do not hash to its run_key" in r.message for r in caplog.records)
    # Other settings (another learning rate): nothing recorded counts.
    other = one_config_scan(copy, tmp_path / "machine_d", trial_records=str(records))
    other["trainer"]["lr"] = 0.002
    for run in ("fixed", "zero"):
        assert run_scan(other, only=[f"balance/{run}"], trials=1)["trained"] == 1


def test_upstream_metrics_of_an_untrained_head_are_not_applicable(sample: Path, tmp_path: Path) -> None:
    from hepms.study.runner import PROBE_AUC_TAU, upstream_not_applicable

    def cfg_of(**trainer):
        return validate({"trainer": trainer, "model": {"connection": "additional", "k": 4}})

    assert upstream_not_applicable(cfg_of(strategy="w1_zero"))
    assert upstream_not_applicable(cfg_of(balancer_options={"weights": {"tau": 0.0, "event": 1.0}}))
    assert upstream_not_applicable(cfg_of()) is None
    assert upstream_not_applicable(cfg_of(strategy="step_by_step")) is None
    direct = validate({"model": {"connection": "direct", "k": 1}, "trainer": {"strategy": "w1_zero"}})
    assert upstream_not_applicable(direct) is None  # the tau output is the (trained) intermediate

    run_dir = tmp_path / "scan"
    cfg = one_config_scan(sample, run_dir, trials=1, reference={"balance": {"source": "test", "values": {}}})
    run_scan(cfg)
    results = collect_results(run_dir, expand_studies(cfg), None)
    by_label = {found[0]["label"]: found[0] for found in results.values()}
    zero, fixed = by_label["zero"], by_label["fixed"]
    assert zero["metrics"]["auc_tau"] is None and zero["metrics"]["rejection_tau_wp"] is None
    assert 0.0 <= zero["metrics"][PROBE_AUC_TAU] <= 1.0 and "never receives a gradient" in zero["not_applicable"]["auc_tau"]
    assert 0.0 <= fixed["metrics"]["auc_tau"] <= 1.0 and PROBE_AUC_TAU not in fixed["metrics"]
    table = json.loads((run_dir / "tables" / "balance.json").read_text())
    rows = {r["label"]: r for r in table["rows"]}
    assert rows["zero"]["auc_tau"] is None and rows["zero"][PROBE_AUC_TAU]["n"] == 1
    assert rows["fixed"]["auc_tau"]["n"] == 1
    markdown = (run_dir / "tables" / "balance.md").read_text()
    assert "| zero | n/a |" in markdown and "never receives a gradient" in markdown
    assert "n/a" in (run_dir / "tables" / "balance_vs_study.md").read_text()


def _comparison_config(**extra) -> dict:
    runs = [{"label": name, "set": {"trainer.lr": lr}} for name, lr in
            (("uw", 1e-3), ("f1", 2e-3), ("f2", 3e-3), ("step", 4e-3))]
    cfg = {"scan": {"trials": 5, "studies": {"t": {"kind": "table", "runs": runs}}, "comparisons": [
        {"name": "uw_vs_best", "a": "t/uw", "b": ["t/f1", "t/f2"],
         "claim": {"expect": "not_worse", "study": "+0.0002", "source": "the slides"}},
        {"name": "f1_vs_step", "a": "t/f1", "b": "t/step", "claim": {"expect": "better", "study": "+0.0044"}},
        {"name": "step_vs_f1", "a": "t/step", "b": "t/f1", "claim": {"expect": "better"}},
        {"name": "no_claim", "a": "t/f2", "b": "t/f1"},
    ]}}
    cfg["scan"].update(extra)
    return validate(cfg)


def test_paired_comparisons_from_known_numbers(tmp_path: Path) -> None:
    import math

    from hepms.study.compare import compare, paired_difference, write_comparisons

    # d = (0.5, 1, 0.5, 1): mean 0.75, s = sqrt(0.25 / 3), error s / 2, t = 3 sqrt(3) = 5.196;
    # Student's t with 3 degrees of freedom: two-sided p = 0.01385 -> 2.46 sigma.
    stats = paired_difference([1.0, 2.0, 3.0, 4.0], [0.5, 1.0, 2.5, 3.0])
    assert stats["n"] == 4 and stats["mean"] == pytest.approx(0.75)
    assert stats["error"] == pytest.approx(math.sqrt(0.25 / 3) / 2)
    assert stats["t"] == pytest.approx(3 * math.sqrt(3))
    assert stats["p_value"] == pytest.approx(0.013847, rel=1e-3) and stats["sigma"] == pytest.approx(2.461, abs=2e-3)
    low, high = stats["bootstrap_95"]
    assert 0.5 <= low <= 0.75 <= high <= 1.0 and paired_difference([1.0, 2.0, 3.0, 4.0], [0.5, 1.0, 2.5, 3.0]) == stats
    assert paired_difference([0.8], [0.7])["error"] is None
    with pytest.raises(ValueError, match="3 values of A but 2"):
        paired_difference([1, 2, 3], [1, 2])

    cfg = _comparison_config()
    planned = expand_studies(cfg)
    key = {r.label: r.key for r in planned}
    seeds = range(1000, 1005)
    noise = [0.0, 0.002, -0.001, 0.001, -0.002]
    auc = {"uw": [0.800 + e for e in noise],
           "f1": [0.7995 + e + 0.0001 * (i % 2) for i, e in enumerate(noise)],   # the best fixed
           "f2": [0.7900 + e for e in noise],
           "step": [0.7950 + e + 0.0002 * i for i, e in enumerate(noise)]}
    results = {key[label]: [{"seed": s, "metrics": {"auc_event": v}} for s, v in zip(seeds, values)]
               for label, values in auc.items()}
    results[key["uw"]].append({"seed": 1005, "metrics": {"auc_event": 0.5}})  # unpaired: left out
    rows = {r["name"]: r for r in compare(cfg, planned, results)}
    uw = rows["uw_vs_best"]
    assert uw["b"] == "f1" and uw["b_selected_as_best"] and uw["seeds"] == list(seeds)
    diffs = [a - b for a, b in zip(auc["uw"], auc["f1"])]
    assert uw["difference"]["mean"] == pytest.approx(sum(diffs) / 5)
    assert uw["verdict"] == "reproduced"
    assert rows["f1_vs_step"]["verdict"] == "reproduced" and rows["f1_vs_step"]["difference"]["sigma"] > 2
    assert rows["step_vs_f1"]["verdict"] == "not reproduced" and "opposite" in rows["step_vs_f1"]["reason"]
    assert rows["no_claim"]["verdict"] is None and rows["no_claim"]["difference"]["mean"] == pytest.approx(-0.0095 - 0.0001 * 2 / 5)
    # No results for any fixed-weight run yet: no "best" is made up, nothing is tested.
    partial = {k: v for k, v in results.items() if k not in (key["f1"], key["f2"])}
    empty = next(r for r in compare(cfg, planned, partial) if r["name"] == "uw_vs_best")
    assert empty["b"] is None and empty["difference"]["n"] == 0 and empty["verdict"] is None
    written = write_comparisons(tmp_path, list(rows.values()))
    markdown = (tmp_path / "comparisons.md").read_text()
    assert "**reproduced**" in markdown and "**not reproduced**" in markdown and "the slides" in markdown
    assert "2 sigma" in markdown and len(written) == 2
    assert json.loads((tmp_path / "comparisons.json").read_text())["comparisons"][0]["name"] == "uw_vs_best"

    with pytest.raises(ConfigError, match=r"scan.comparisons\[0\].a: 't/nope' is not a run"):
        _comparison_config(comparisons=[{"name": "x", "a": "t/nope", "b": "t/f1"}])
    with pytest.raises(ConfigError, match=r"scan.comparisons\[0\].claim.expect"):
        _comparison_config(comparisons=[{"name": "x", "a": "t/uw", "b": "t/f1", "claim": {"expect": "sure"}}])


def test_data_fingerprint_ignores_when_where_and_how_fast(sample: Path, tmp_path: Path) -> None:
    from hepms.study.dataset import prepare_data, sample_fingerprint
    from hepms.study.plan import run_settings

    # The sample made again elsewhere: other path, creation time, wall times, workers, command.
    copy = tmp_path / "regenerated"
    shutil.copytree(sample, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest.update(created_utc="2030-01-01T00:00:00+00:00", command="hepms generate elsewhere --workers 8")
    manifest["timing"] = {"wall_s": 1.0, "workers": 8}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert sample_fingerprint(copy) == sample_fingerprint(sample)
    cfg_a = one_config_scan(sample, tmp_path / "a")
    cfg_b = one_config_scan(copy, tmp_path / "b")
    data_a = prepare_data(cfg_a, tmp_path / "cache_a", progress=False)
    data_b = prepare_data(cfg_b, tmp_path / "cache_b", progress=False)
    assert data_a.fingerprint == data_b.fingerprint
    assert settings_hash(run_settings(cfg_a)) == settings_hash(run_settings(cfg_b))  # no data.path in it
    # Other generation settings, or other events: another fingerprint.
    manifest["settings"]["mu"] = 6.0
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert sample_fingerprint(copy) != sample_fingerprint(sample)
    from hepms.study.dataset import content_digest

    data = prepare_data(cfg_a, None, progress=False)
    full = data.train  # any built part: one changed value changes the digest
    before = content_digest(full)
    full.jet_features[0, 0] += 1.0
    assert content_digest(full) != before


def test_lock_of_another_host_is_stale_only_without_heartbeat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import hepms.study.scan as scan

    folder = tmp_path / "trial_000"
    folder.mkdir()
    lock = folder / "lock"
    lock.write_text("another-host 12345 abcdef")
    assert not scan._acquire(folder)  # fresh: a dask worker elsewhere is training it
    old = time.time() - scan._REMOTE_STALE_SECONDS - 10
    os.utime(lock, (old, old))
    assert scan._acquire(folder) and lock.read_text() == scan._lock_owner()  # no heartbeat: taken over
    # The heartbeat keeps a live lock fresh.
    os.utime(lock, (old, old))
    monkeypatch.setattr(scan, "_HEARTBEAT_SECONDS", 0.05)
    with scan._heartbeat(folder):
        time.sleep(0.3)
    assert time.time() - lock.stat().st_mtime < 5
    scan._release(folder)
    assert not lock.exists()
