"""The ``hepms`` command line: generate -> train -> evaluate -> plot on a tiny sample, the run
directory, re-runs and resumption, configuration errors, --help, and the ``select`` dispatch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from hepms.cli import main

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "analyses" / "htautau" / "config" / "study.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sample(tiny_sample: Path) -> Path:
    return tiny_sample


def write_config(path: Path, sample: Path, run_dir: Path, **sections) -> Path:
    cfg = {
        "extends": str(STUDY),
        "run_dir": str(run_dir),
        "progress": False,
        "data": {"path": str(sample)},
        "trainer": {"epochs": 2, "patience": 2, "batch_size": 32},
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value) if isinstance(value, dict) else cfg.__setitem__(key, value)
    path.write_text(yaml.safe_dump(cfg))
    return path


# ----------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------
def test_generate_train_evaluate_plot(sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "cfg.yaml", sample, run_dir)

    assert main(["train", str(config), "--set", "model.k=2"]) == 0
    assert "trained 2 epochs" in capsys.readouterr().out
    for name in ("config.yaml", "manifest.json", "model.pt", "train/checkpoint.pt", "train/metrics.csv",
                 "train/metrics.json", "train/summary.json"):
        assert (run_dir / name).stat().st_size > 0, name
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["path"] == str(sample) and saved["trainer"]["epochs"] == 2
    log = json.loads((run_dir / "train" / "metrics.json").read_text())
    assert len(log["epochs"]) == 2 and {"weight_tau", "weight_event"} <= set(log["epochs"][0])

    # The run directory stands for its config: evaluate and plot take it directly.
    assert main(["evaluate", str(run_dir)]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((run_dir / "evaluation" / "metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["auc_tau"] <= 1.0 and 0.0 <= metrics["auc_event"] <= 1.0
    assert f"tau ID {metrics['auc_tau']:.4f}" in out
    # The Markdown table holds the same numbers as the JSON.
    table = (run_dir / "tables" / "evaluation.md").read_text().splitlines()
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in table[2:]}
    assert float(rows["upstream (tau ID) AUC"]) == pytest.approx(metrics["auc_tau"], abs=5e-5)
    assert float(rows["downstream (H/Z) AUC"]) == pytest.approx(metrics["auc_event"], abs=5e-5)
    assert json.loads((run_dir / "tables" / "evaluation.json").read_text())["auc_event"] == metrics["auc_event"]
    # One tau-ID working point (evaluate.tau_efficiency, 60 %), stated in the printout and the table,
    # the one the efficiency / rejection versus pT figures use.
    assert f"light-jet rejection at 60% tau efficiency {metrics['rejection_tau_wp']:.2f}" in out
    assert "evaluate.tau_efficiency" in out
    assert [k for k in rows if "tau efficiency" in k] == ["light-jet rejection at 60% tau efficiency"]

    assert main(["plot", str(run_dir)]) == 0
    stems = ["roc_tau", "roc_event", "scores_tau", "scores_event", "tau_efficiency_vs_pt",
             "light_rejection_vs_pt", "loss_weights", "latent_space"]
    for stem in stems:
        for ext in ("pdf", "png"):
            f = run_dir / "figures" / f"{stem}.{ext}"
            assert f.is_file() and f.stat().st_size > 1000, f
    with open(run_dir / "figures" / "roc_tau.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["kind"] == "train" and manifest["versions"]["torch"] == torch.__version__
    assert manifest["data"]["path"] == str(sample) and manifest["evaluation"]["metrics"]["auc_tau"] == metrics["auc_tau"]
    assert set(manifest["figures"]["files"]) == {f"{s}.{e}" for s in stems for e in ("pdf", "png")}

    # A second train with the same settings does nothing; --force retrains.
    before = (run_dir / "model.pt").stat().st_mtime_ns
    assert main(["train", str(config), "--set", "model.k=2"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert (run_dir / "model.pt").stat().st_mtime_ns == before
    # Other settings are not "up to date".
    assert main(["train", str(config), "--set", "model.k=2", "--set", "trainer.lr=0.002"]) == 0
    assert "trained" in capsys.readouterr().out


def test_interrupted_training_resumes_to_the_same_weights(
    sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hepms.model_file import load_model
    from hepms.train.trainer import Trainer

    settings = ["--set", "trainer.epochs=3", "--set", "trainer.patience=5"]
    reference = write_config(tmp_path / "ref.yaml", sample, tmp_path / "ref")
    assert main(["train", str(reference), *settings]) == 0

    config = write_config(tmp_path / "cfg.yaml", sample, tmp_path / "run")
    original = Trainer.forward_batch

    def crash_in_second_epoch(self, *args, **kwargs):
        # the public step hook: the first batch after one finished epoch (history row) is killed
        if len(self.history.epochs) == 1:
            raise KeyboardInterrupt("simulated kill")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "forward_batch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        main(["train", str(config), *settings])
    assert (tmp_path / "run" / "train" / "checkpoint.pt").is_file()
    assert not (tmp_path / "run" / "model.pt").exists()
    monkeypatch.setattr(Trainer, "forward_batch", original)

    assert main(["train", str(config), *settings]) == 0
    summary = json.loads((tmp_path / "run" / "train" / "summary.json").read_text())
    assert summary["resumed"] is True and summary["epochs"] == 3
    resumed = load_model(tmp_path / "run").network
    uninterrupted = load_model(tmp_path / "ref").network
    for (name, a), (_, b) in zip(resumed.state_dict().items(), uninterrupted.state_dict().items()):
        assert torch.equal(a, b), name


# ----------------------------------------------------------------------------------------------
# Configuration errors
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override, expected",
    [
        ("trainer.epoch=5", ["trainer.epoch: unknown key", "'epochs'", "'patience'"]),
        ("trainers.epochs=5", ["trainers.epochs: unknown key", "'trainer'"]),
        ("trainer.balancer=magic", ["trainer.balancer: 'magic' is not allowed", "'fixed'", "'gradnorm'",
                                    "'uncertainty'"]),
        ("trainer.upstream_loss=hinge", ["trainer.upstream_loss: 'hinge'", "['bce', 'mse']"]),
        ("model.connection=wired", ["model.connection", "['direct', 'additional']"]),
        ("trainer.epochs=many", ["trainer.epochs: expected an integer"]),
        ("data.fractions=[0.5,0.5]", ["data.fractions", "summing to 1"]),
        ("data.jet_features=[log_pt,colour]", ["data.jet_features: 'colour' is not allowed", "'eta'"]),
        ("model.tau={width: 3}", ["model.tau.width: unknown key", "'phi'"]),
        ("model.connection=direct", ["model.k: 2 is not allowed with model.connection 'direct'"]),
        ("trainer.balancer_options={temperature: 2}", ["trainer.balancer_options", "unknown option"]),
        ("scan.figures.latent=k_scan/direct k=8", ["scan.figures.latent", "k = 2"]),
    ],
)
def test_config_errors_name_key_and_allowed_values(
    tmp_path: Path, capsys: pytest.CaptureFixture, override: str, expected: list
) -> None:
    config = write_config(tmp_path / "cfg.yaml", tmp_path / "nowhere", tmp_path / "run")
    assert main(["train", str(config), "--set", override]) == 2
    err = capsys.readouterr().err
    assert "config error" in err
    for text in expected:
        assert text in err, (text, err)
    assert not (tmp_path / "run").exists()  # nothing is written for an invalid configuration


def test_config_file_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  epochs: 3\n  optimiser: sgd\n")
    assert main(["scan", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "trainer.optimiser: unknown key" in err and "'lr'" in err

    bad.write_text(yaml.safe_dump({"scan": {"studies": {"s": {"kind": "table", "runs": [
        {"label": "a", "set": {"trainer.strategy": "sometimes"}}]}}}}))
    assert main(["scan", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "scan.studies.s.runs[0].set: trainer.strategy: 'sometimes' is not allowed" in err
    assert "'step_by_step'" in err

    bad.write_text(yaml.safe_dump({"scan": {"studies": {"s": {"kind": "violin", "runs": []}}}}))
    assert main(["scan", str(bad)]) == 2
    assert "scan.studies.s.kind: 'violin' is not allowed; choose from ['table', 'boxplot']" in capsys.readouterr().err

    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err

    # A valid config pointing at a folder without a finished sample: says what to do.
    config = write_config(tmp_path / "cfg.yaml", tmp_path / "nowhere", tmp_path / "run")
    assert main(["scan", str(config), "--trials", "0"]) == 2
    assert "trials: 0 must be an integer >= 1" in capsys.readouterr().err
    assert main(["scan", str(config), "--only", "no_such_study"]) == 2
    err = capsys.readouterr().err
    assert "matches no study or run" in err and "'k_scan'" in err and "'loss_balancing/GradNorm'" in err
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "data.path" in err and "hepms generate" in err and "data.generate.enabled" in err


def test_config_command_prints_resolved_config_and_keys(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = write_config(tmp_path / "cfg.yaml", tmp_path / "s", tmp_path / "run")
    assert main(["config", str(config), "--set", "trainer.lr=0.01"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["trainer"]["lr"] == 0.01 and resolved["trainer"]["epochs"] == 2
    assert set(resolved["scan"]["studies"]) == {"loss_balancing", "k_scan", "monitor_ablation"}
    assert main(["config", "--keys"]) == 0
    keys = capsys.readouterr().out
    for key in ("trainer.epochs", "trainer.balancer", "model.k", "data.path", "scan.trials", "plot.exp"):
        assert key in keys


# ----------------------------------------------------------------------------------------------
# Help, dispatch, the existing commands
# ----------------------------------------------------------------------------------------------
def test_help_of_every_subcommand(capsys: pytest.CaptureFixture) -> None:
    for command, option in (("train", "--force"), ("evaluate", "--run-dir"), ("plot", "--run-dir"),
                            ("scan", "--max-trials"), ("config", "--keys"), ("generate", "--events")):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert "usage:" in out and option in out and "--set" in out or command == "generate", command
    # The installed entry point, as a user runs it.
    out = subprocess.run([sys.executable, "-m", "hepms.cli", "--help"], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert out.returncode == 0
    for command in ("demo", "info", "generate", "train", "evaluate", "plot", "scan", "select"):
        assert command in out.stdout


def test_select_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    import hepms.select.cli

    # The arguments reach hepms.select.cli.main(argv) unchanged.
    seen = {}
    monkeypatch.setattr(hepms.select.cli, "main", lambda argv: seen.setdefault("argv", argv) and 0)
    assert main(["select", "runs/x", "--budget", "3"]) == 0
    assert seen["argv"] == ["runs/x", "--budget", "3"]


def test_info_still_works(capsys: pytest.CaptureFixture) -> None:
    assert main(["info"]) == 0
    assert "hepms" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# Start-up, --version, argument parsing
# ----------------------------------------------------------------------------------------------
HEAVY = ("torch", "numpy", "awkward", "uproot", "vector", "sympy", "hist", "mplhep", "matplotlib", "sklearn",
         "coffea", "dask", "yaml", "tqdm", "pythia8mc", "fastjet", "gpytorch", "hepms.ops", "hepms._C")

IMPORTED = """
import json, sys
{code}
heavy = {heavy!r}
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in heavy or name in heavy)))
"""


def imported_by(code: str) -> list[str]:
    script = IMPORTED.format(code=code, heavy=HEAVY)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_help_and_version_import_neither_torch_nor_the_scikit_hep_stack() -> None:
    for argv in (["--help"], ["--version"], ["train", "--help"], ["scan", "--help"], ["generate", "--help"],
                 ["select", "--help"]):
        code = f"from hepms.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
        assert imported_by(code) == [], argv
    assert imported_by("import hepms") == []


def test_lazy_names_and_op_registration() -> None:
    # The lazy re-exports resolve to the real objects, and listing them imports nothing heavy.
    import hepms
    import hepms.jagged
    import hepms.ops

    assert hepms.segment_sum is hepms.ops.segment_sum and hepms.Jagged is hepms.jagged.Jagged
    assert {"segment_sum", "offsets_from_counts", "Jagged", "to_jagged", "physics"} <= set(dir(hepms))
    with pytest.raises(AttributeError, match="no attribute 'segment_summ'"):
        hepms.segment_summ  # noqa: B018
    assert imported_by("import hepms\nnames = dir(hepms)") == []
    # Exported models need torch.ops.hepms.*: `import hepms` registers them whichever of hepms and
    # torch comes first (as before the imports were lazy).
    for code in ("import hepms, torch", "import torch, hepms"):
        loaded = imported_by(code + "\nassert torch.ops.hepms.segment_sum.default is not None")
        assert "hepms.ops" in loaded, code


def test_version(capsys: pytest.CaptureFixture) -> None:
    import hepms

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"hepms {hepms.__version__}"


def test_generate_processes_do_not_swallow_the_output_folder() -> None:
    from hepms.generate.cli import build_parser

    args = build_parser().parse_args(["--processes", "H", "out"])
    assert args.processes == ["H"] and str(args.output_dir) == "out"
    args = build_parser().parse_args(["out", "--processes", "H,Z"])
    assert args.processes == ["H", "Z"] and str(args.output_dir) == "out"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["out", "--processes", ","])


def test_generate_without_the_generate_extra_says_how_to_install_it(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    # as if pythia8mc were not installed
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pythia8mc" else real(name, *a))
    assert main(["generate", str(tmp_path / "out"), "--events", "10"]) == 2
    err = capsys.readouterr().err
    assert "pythia8mc not installed" in err and '".[generate]"' in err
    assert not (tmp_path / "out").exists()
