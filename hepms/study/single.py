"""One model, step by step: ``hepms train`` -> ``hepms evaluate`` -> ``hepms plot``.

Layout of the run directory::

    config.yaml, manifest.json
    cache/dataset-<hash>.pt
    train/       checkpoint.pt (every epoch), metrics.csv, metrics.json (per-epoch log), summary.json
    model.pt     the selected weights, the model's configuration and the feature scaler
    evaluation/  metrics.json, predictions.npz (test set)
    tables/      evaluation.md, evaluation.json
    figures/     PDF + PNG

``train`` continues an interrupted training from ``train/checkpoint.pt`` and does nothing when
``model.pt`` already holds the same settings (``force`` retrains).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from hepms.config import ConfigError, dump_yaml
from hepms.data import Standardizer
from hepms.generate.io import UnreadableFileError
from hepms.nn.models import MultiStep
from hepms.study.dataset import PreparedData, prepare_data
from hepms.study.runner import (
    check_trainer_device,
    evaluate_predictions,
    fit_trial,
    load_predictions,
    predict,
    save_predictions,
    trial_identity,
    versions,
    write_json,
)
from hepms.study.scan import _now, update_manifest

log = logging.getLogger(__name__)

__all__ = ["train_run", "evaluate_run", "plot_run", "MODEL_FORMAT"]

MODEL_FORMAT = "hepms.model/1"


def _prepare(cfg: Mapping[str, Any], run_dir: Path, progress: bool) -> PreparedData:
    return prepare_data(cfg, run_dir / "cache", progress)


def train_run(
    cfg: Mapping[str, Any],
    run_dir: Optional[Path] = None,
    *,
    force: bool = False,
    progress: Optional[bool] = None,
    command: Optional[Sequence[str]] = None,
) -> dict[str, Any]:
    """Train the model of ``cfg`` (seed ``cfg["seed"]``) into ``run_dir``.

    Returns:
        ``{"status": "trained" | "up to date", "model": path, "best": ..., "epochs": n}``.
    """
    run_dir = Path(run_dir or cfg["run_dir"])
    progress = cfg["progress"] if progress is None else progress
    check_trainer_device(cfg)  # before the data are prepared (possibly generated): fail fast
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    data = _prepare(cfg, run_dir, progress)
    model_path = run_dir / "model.pt"
    identity = trial_identity(cfg, cfg["seed"])
    if model_path.is_file() and not force:
        state = _read_model_file(model_path)
        if state is None:
            log.warning("ignoring %s: unreadable (truncated or corrupt?); training again", model_path)
        elif state.get("identity") == identity and state.get("data_fingerprint") == data.fingerprint:
            return {"status": "up to date", "model": str(model_path), "epochs": state.get("epochs")}
    folder = run_dir / "train"
    if force and folder.exists():
        shutil.rmtree(folder)  # a forced retrain must not resume the old checkpoint
    started = time.perf_counter()
    update_manifest(run_dir, "train", cfg, data=data.info, data_fingerprint=data.fingerprint,
                    invocation={"id": f"{os.getpid()}-train", "step": "train", "started_utc": _now(),
                                "command": list(command or sys.argv), "status": "running"})
    trainer, history, resumed = fit_trial(cfg, data, folder, cfg["seed"], progress)
    model = trainer.model
    state = {
        "format": MODEL_FORMAT,
        "identity": identity,
        "data_fingerprint": data.fingerprint,
        "model_config": model.config,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "scaler": data.scaler.state_dict(),
        "seed": cfg["seed"],
        "epochs": len(history.epochs),
    }
    tmp = model_path.with_name(f".model.pt.partial-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, model_path)
    summary = {"best": history.best, "epochs": len(history.epochs), "resumed": resumed,
               "seconds": time.perf_counter() - started, "last_epoch": history.epochs[-1] if history.epochs else None}
    write_json(folder / "summary.json", summary)
    update_manifest(run_dir, "train", cfg, invocation={"id": f"{os.getpid()}-train", "step": "train",
                                                      "finished_utc": _now(), "status": "finished",
                                                      "command": list(command or sys.argv), **summary})
    return {"status": "trained", "model": str(model_path), **summary}


def load_model(run_dir: Path) -> tuple[MultiStep, dict[str, Any]]:
    """The trained model of ``run_dir/model.pt`` (eval mode, CPU) and the saved state."""
    path = Path(run_dir) / "model.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `hepms train` first")
    state = _read_model_file(path)
    if state is None:
        raise UnreadableFileError(f"{path} is unreadable (truncated or corrupt?): retrain with `hepms train --force`")
    if state.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: unknown model format {state.get('format')!r}; retrain with `hepms train --force`")
    try:
        model = MultiStep(**state["model_config"])
        model.load_state_dict(state["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{path} does not hold a usable model ({type(error).__name__}: {error}); "
                         "retrain with `hepms train --force`") from error
    model.eval()
    return model, state


def _read_model_file(path: Path) -> Optional[dict[str, Any]]:
    """The dict saved in ``path``, or None when the file is unreadable (truncated, random bytes:
    torch.load then raises anything from OSError to UnpicklingError or IndexError)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        log.debug("cannot read %s: %s: %s", path, type(error).__name__, error)
        return None
    return state if isinstance(state, dict) else None


def evaluate_run(
    cfg: Mapping[str, Any], run_dir: Optional[Path] = None, *, progress: Optional[bool] = None
) -> dict[str, Any]:
    """Evaluate ``run_dir/model.pt`` once on the test part; write metrics, predictions, tables."""
    run_dir = Path(run_dir or cfg["run_dir"])
    progress = cfg["progress"] if progress is None else progress
    model, state = load_model(run_dir)
    data = _prepare(cfg, run_dir, progress)
    if state.get("data_fingerprint") != data.fingerprint:
        raise ConfigError(
            "data: the model in {} was trained on another sample or other data settings; "
            "retrain with `hepms train`".format(run_dir)
        )
    # The split and the scaler are recomputed from the same sample and seed: check they agree.
    saved = Standardizer.from_state_dict(state["scaler"])
    if not torch.allclose(saved.jet_mean, data.scaler.jet_mean):
        raise ValueError("the feature scaler differs from the one saved with the model")
    pred = predict(model, data, cfg["trainer"]["eval_batch_size"])
    metrics = evaluate_predictions(pred, cfg["evaluate"]["tau_efficiency"])
    folder = run_dir / "evaluation"
    save_predictions(folder / "predictions.npz", pred)
    payload = {"metrics": metrics, "working_point": {"tau_efficiency": cfg["evaluate"]["tau_efficiency"]},
               "test_events": len(data.test), "test_jets": data.test.num_jets,
               "data": data.info, "versions": versions(), "evaluated_utc": _now()}
    write_json(folder / "metrics.json", payload)
    tables = run_dir / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    lines = [
        "| metric | value |",
        "| --- | --- |",
        f"| upstream (tau ID) AUC | {metrics['auc_tau']:.4f} |",
        f"| downstream (H/Z) AUC | {metrics['auc_event']:.4f} |",
        # one tau-ID working point, the one the figures use (evaluate.tau_efficiency)
        f"| light-jet rejection at {cfg['evaluate']['tau_efficiency']:.0%} tau efficiency | {metrics['rejection_tau_wp']:.2f} |",
        f"| Z rejection at 50 % H efficiency | {metrics['rejection_event_50']:.2f} |",
        f"| test events / jets | {len(data.test)} / {data.test.num_jets} |",
    ]
    (tables / "evaluation.md").write_text("\n".join(lines) + "\n")
    write_json(tables / "evaluation.json", metrics)
    update_manifest(run_dir, "train", cfg, evaluation={"metrics": metrics, "utc": _now()})
    return {"metrics": metrics, "files": [str(folder / "metrics.json"), str(folder / "predictions.npz"),
                                           str(tables / "evaluation.md"), str(tables / "evaluation.json")]}


def plot_run(cfg: Mapping[str, Any], run_dir: Optional[Path] = None) -> list[Path]:
    """All figures of a trained and evaluated run (from its files only)."""
    from hepms.study import plots

    run_dir = Path(run_dir or cfg["run_dir"])
    pred_path = run_dir / "evaluation" / "predictions.npz"
    if not pred_path.is_file():
        raise FileNotFoundError(f"{pred_path} not found: run `hepms evaluate` first")
    pred = load_predictions(pred_path)
    info: dict[str, Any] = {}
    try:
        info = json.loads((run_dir / "manifest.json").read_text()).get("data", {})
    except (OSError, ValueError):
        pass
    epochs, tasks = None, None
    log_path = run_dir / "train" / "metrics.json"
    if log_path.is_file():
        logged = json.loads(log_path.read_text())
        epochs = logged.get("epochs")
        tasks = []
        for names in (logged.get("weight_tasks") or {}).values():
            tasks += [t for t in names if t not in tasks]
    style = plots.FigureStyle.from_config(cfg["plot"], run_dir / "figures", info)
    m = cfg["model"]
    label = f"{m['connection']} k={m['k']}, {cfg['trainer']['strategy']}, {cfg['trainer']['balancer']}"
    paths = plots.run_figures(style, pred, cfg["evaluate"], label, epochs, tasks, cfg["plot"]["latent_points"],
                              caption=f"{label}; one run (seed {cfg['seed']})")
    update_manifest(run_dir, "train", cfg, figures={"files": [p.name for p in paths], "utc": _now()})
    return paths
