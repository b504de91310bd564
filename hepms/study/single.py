"""One model, step by step: ``hepms train`` -> ``hepms evaluate`` -> ``hepms plot``.

Layout of the run directory::

    config.yaml, manifest.json
    cache/dataset-<hash>.pt
    train/       checkpoint.pt (every epoch), metrics.csv, metrics.json (per-epoch log), summary.json
    model.pt     the model file (hepms.model_file): selected weights, network configuration,
                 feature spec, standardisation, provenance
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

from hepms.config_engine import ConfigError, dump_yaml
from hepms.generate.io import UnreadableFileError
from hepms.model_file import MODEL_FILE, TrainedModel, load_model
from hepms.study.dataset import PreparedData, prepare_data
from hepms.study.runner import (
    check_trainer_device,
    fit_trial,
    format_metric,
    load_predictions,
    predict,
    save_model_file,
    save_predictions,
    evaluation_metrics,
    trial_identity,
    versions,
    write_json,
)
from hepms.study.scan import update_manifest, utc_now

log = logging.getLogger(__name__)

__all__ = ["train_run", "evaluate_run", "plot_run"]


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
    model_path = run_dir / MODEL_FILE
    identity = trial_identity(cfg, cfg["seed"])
    if model_path.is_file() and not force:
        try:
            provenance = load_model(model_path).provenance
        except (OSError, ValueError) as error:  # unreadable, foreign or of an older format
            log.warning("ignoring %s: %s; training again", model_path, error)
        else:
            if provenance.settings_hash == identity and provenance.data_fingerprint == data.fingerprint:
                return {"status": "up to date", "model": str(model_path),
                        "epochs": provenance.extra.get("epochs")}
    folder = run_dir / "train"
    if force and folder.exists():
        shutil.rmtree(folder)  # a forced retrain must not resume the old checkpoint
    started = time.perf_counter()
    update_manifest(run_dir, "train", cfg, data=data.info, data_fingerprint=data.fingerprint,
                    invocation={"id": f"{os.getpid()}-train", "step": "train", "started_utc": utc_now(),
                                "command": list(command or sys.argv), "status": "running"})
    trainer, history, resumed = fit_trial(cfg, data, folder, cfg["seed"], progress)
    save_model_file(model_path, trainer.model, data, identity, "hepms train",
                    {"seed": cfg["seed"], "epochs": len(history.epochs)})
    summary = {"best": history.best, "epochs": len(history.epochs), "resumed": resumed,
               "seconds": time.perf_counter() - started, "last_epoch": history.epochs[-1] if history.epochs else None}
    write_json(folder / "summary.json", summary)
    update_manifest(run_dir, "train", cfg, invocation={"id": f"{os.getpid()}-train", "step": "train",
                                                      "finished_utc": utc_now(), "status": "finished",
                                                      "command": list(command or sys.argv), **summary})
    return {"status": "trained", "model": str(model_path), **summary}


def _trained_model(run_dir: Path, model: Optional[Path]) -> TrainedModel:
    source = Path(model) if model is not None else run_dir
    try:
        return load_model(source)
    except FileNotFoundError:
        if model is None:
            raise FileNotFoundError(f"no {MODEL_FILE} in {run_dir}: run `hepms train` first") from None
        raise
    except ValueError as error:  # an old format or a foreign file: the message says what to do
        raise UnreadableFileError(str(error)) from error


def evaluate_run(
    cfg: Mapping[str, Any],
    run_dir: Optional[Path] = None,
    *,
    progress: Optional[bool] = None,
    model: Optional[Path] = None,
) -> dict[str, Any]:
    """Evaluate a model file once on the test part of ``cfg``'s data; write metrics, predictions,
    tables into ``run_dir``.

    Args:
        model: a model file, or a run or trial directory (default: ``run_dir/model.pt``).
    """
    run_dir = Path(run_dir or cfg["run_dir"])
    progress = cfg["progress"] if progress is None else progress
    trained = _trained_model(run_dir, model)
    data = _prepare(cfg, run_dir, progress)
    if trained.provenance.data_fingerprint != data.fingerprint:
        raise ConfigError(
            f"data: the model in {trained.path} was trained on another sample or other data "
            "settings; retrain with `hepms train`, or evaluate it with the configuration it was "
            "trained with"
        )
    if trained.spec != data.spec:
        raise ConfigError(f"data: the model in {trained.path} reads features {trained.spec}, the "
                          f"configuration builds {data.spec}")
    # The split and the scaler are recomputed from the same sample and seed: check they agree.
    if not torch.allclose(trained.scaler.jet_mean, data.scaler.jet_mean):
        raise ValueError("the feature scaler differs from the one saved with the model")
    pred = predict(trained.network, data, cfg["trainer"]["eval_batch_size"])
    metrics = evaluation_metrics(cfg, pred)  # tau-ID metrics None where the tau head never learns
    folder = run_dir / "evaluation"
    save_predictions(folder / "predictions.npz", pred)
    payload = {"metrics": metrics, "working_point": {"tau_efficiency": cfg["evaluate"]["tau_efficiency"]},
               "test_events": len(data.test), "test_jets": data.test.num_jets,
               "data": data.info, "versions": versions(), "evaluated_utc": utc_now()}
    write_json(folder / "metrics.json", payload)
    tables = run_dir / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    lines = [
        "| metric | value |",
        "| --- | --- |",
        f"| upstream (tau ID) AUC | {format_metric(metrics['auc_tau'])} |",
        f"| downstream (H/Z) AUC | {metrics['auc_event']:.4f} |",
        # one tau-ID working point, the one the figures use (evaluate.tau_efficiency)
        f"| light-jet rejection at {cfg['evaluate']['tau_efficiency']:.0%} tau efficiency | {format_metric(metrics['rejection_tau_wp'], 2)} |",
        f"| Z rejection at 50 % H efficiency | {metrics['rejection_event_50']:.2f} |",
        f"| test events / jets | {len(data.test)} / {data.test.num_jets} |",
    ]
    (tables / "evaluation.md").write_text("\n".join(lines) + "\n")
    write_json(tables / "evaluation.json", metrics)
    update_manifest(run_dir, "train", cfg, evaluation={"metrics": metrics, "utc": utc_now()})
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
    update_manifest(run_dir, "train", cfg, figures={"files": [p.name for p in paths], "utc": utc_now()})
    return paths
