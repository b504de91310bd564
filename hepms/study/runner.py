"""One training run (a configuration with one seed) from a validated configuration.

:func:`run_trial` trains a :class:`~hepms.nn.MultiStep` model into a folder and evaluates it once
on the test part. The folder holds the trainer's ``checkpoint.pt`` (written after every epoch,
atomically, with the preprocessing) and ``metrics.csv`` / ``metrics.json`` (per-epoch log), then
``model.pt`` (the model file of :mod:`hepms.model_file`: load it with
:func:`hepms.model_file.load_model`), ``predictions.npz`` (optional) and, last, ``result.json``:
a folder with a valid ``result.json`` is finished. A folder
with a checkpoint but no result is an interrupted run and continues from the checkpoint (the
trainer's resume gives the same weights as an uninterrupted run).
"""
from __future__ import annotations

import json
import logging
import math
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch

import hepms
from hepms import metrics
from hepms.atomic import json_safe, save_atomically, write_text_atomic
from hepms.config_engine import ConfigError, settings_hash
from hepms.generate.io import UnreadableFileError
from hepms.model_file import MODEL_FILE, preprocessing, save_model
from hepms.nn.models import MultiStep
from hepms.study.dataset import PreparedData
from hepms.study.plan import run_settings
from hepms.train.trainer import CheckpointError, TrainConfig, Trainer, check_device

log = logging.getLogger(__name__)

__all__ = [
    "RESULT_FORMAT",
    "build_model",
    "train_config",
    "check_trainer_device",
    "fit_trial",
    "trial_identity",
    "run_trial",
    "predict",
    "read_result",
    "save_predictions",
    "save_model_file",
    "load_predictions",
    "evaluate_predictions",
    "evaluation_metrics",
    "upstream_not_applicable",
    "UPSTREAM_METRICS",
    "PROBE_AUC_TAU",
    "roc_on_grid",
    "write_json",
    "format_metric",
    "versions",
]

RESULT_FORMAT = "hepms.result/1"
RESULT = "result.json"
PREDICTIONS = "predictions.npz"


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------
def write_json(path: Path, payload: Any) -> None:
    """Write strict JSON atomically (temporary file + rename): readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(json_safe(payload), indent=1, allow_nan=False, default=str) + "\n")


def format_metric(value: Optional[float], digits: int = 4) -> str:
    """``0.9750``; ``n/a`` for a metric that does not apply (None)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def versions() -> dict[str, str]:
    """Versions of the software that produced a result."""
    out = {"hepms": hepms.__version__, "torch": torch.__version__, "numpy": np.__version__,
           "python": platform.python_version()}
    for name in ("awkward", "sklearn", "matplotlib", "mplhep", "hist"):
        try:
            module = __import__(name)
            out[name] = getattr(module, "__version__", "?")
        except ImportError:
            pass
    return out


def read_result(
    folder: Path, fingerprint: Optional[str] = None, seed: Optional[int] = None
) -> Optional[dict[str, Any]]:
    """The finished result in ``folder``, or None (missing, unreadable, other format, made from
    another sample when ``fingerprint`` is given, or with another seed when ``seed`` is given).
    An unreadable or foreign file is logged with the reason: the trial is then trained again."""
    path = Path(folder) / RESULT
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        log.warning("ignoring %s: unreadable (%s: %s); the trial will be trained again", path,
                    type(error).__name__, error)
        return None
    if not isinstance(result, dict) or result.get("format") != RESULT_FORMAT or result.get("status") != "done":
        log.warning("ignoring %s: not a finished %s result", path, RESULT_FORMAT)
        return None
    if fingerprint is not None and result.get("data_fingerprint") != fingerprint:
        log.info("ignoring %s: made from another sample (data fingerprint %s, now %s)", path,
                 result.get("data_fingerprint"), fingerprint)
        return None
    if seed is not None and result.get("seed") != seed:
        log.info("ignoring %s: made with seed %s, now %s", path, result.get("seed"), seed)
        return None
    return result


# ----------------------------------------------------------------------------------------------
# Model and trainer from the configuration
# ----------------------------------------------------------------------------------------------
def build_model(cfg: Mapping[str, Any], data: PreparedData, seed: int) -> MultiStep:
    """The multi-step model of ``cfg["model"]`` for the features of ``data``, initialised by ``seed``."""
    m = cfg["model"]
    return MultiStep(
        constituent_features=data.train.constituents.num_features,
        jet_features=data.train.jet_features.shape[1],
        connection=m["connection"],
        k=m["k"],
        aux=m["aux"],
        regression_outputs=3 if m["regression"] else 0,
        tau_options=m["tau"],
        event_options=m["event"],
        seed=seed,
    )


def check_trainer_device(cfg: Mapping[str, Any]) -> None:
    """Fail early, naming the key, when ``trainer.device`` does not exist on this machine."""
    try:
        check_device(cfg["trainer"]["device"])
    except ValueError as error:
        raise ConfigError(f"trainer.device: {error}") from None


def train_config(cfg: Mapping[str, Any], seed: int, folder: Optional[Path], progress: bool) -> TrainConfig:
    """The :class:`~hepms.train.TrainConfig` of ``cfg["trainer"]``, logging into ``folder``."""
    t = cfg["trainer"]
    check_trainer_device(cfg)
    return TrainConfig(
        strategy=t["strategy"],
        balancer=t["balancer"],
        balancer_options=dict(t["balancer_options"]),
        upstream_loss=t["upstream_loss"],
        lr=t["lr"],
        batch_size=t["batch_size"],
        eval_batch_size=t["eval_batch_size"],
        max_epochs=t["epochs"],
        patience=t["patience"],
        monitor=t["monitor"],
        seed=seed,
        device=t["device"],
        precision=t["precision"],
        progress=progress,
        log_dir=None if folder is None else str(folder),
        checkpoint_dir=None if folder is None else str(folder),
    )


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------
#: The tau-ID metrics; not applicable (None) where the tau output never learns (see below).
UPSTREAM_METRICS = ("auc_tau", "rejection_tau_50", "rejection_tau_wp")
#: The AUC of an untrained auxiliary head, kept under this name only (a probe, not a tau ID).
PROBE_AUC_TAU = "probe_auc_tau_untrained_head"


def upstream_not_applicable(cfg: Mapping[str, Any]) -> Optional[str]:
    """Why the tau-ID metrics of ``cfg`` mean nothing, or None when they apply.

    With ``connection: additional`` the tau logit comes from the auxiliary network (k -> tau logit),
    which only the upstream loss trains. With that loss at weight 0 throughout (``strategy:
    w1_zero``, the ``(w1, w2) = (0, 1)`` row and the direct ``k > 1`` runs, or fixed weights with
    ``tau: 0``) the head never receives a gradient: its weights stay at their initialisation and
    its "AUC" is that of a random function of the learned features.
    """
    model, trainer = cfg["model"], cfg["trainer"]
    if model["connection"] != "additional":
        return None  # direct: the tau output is the intermediate itself, trained end to end
    weights = (trainer.get("balancer_options") or {}).get("weights") or {}
    zero_fixed = (trainer["strategy"] == "simultaneous" and trainer["balancer"] == "fixed"
                  and isinstance(weights, Mapping) and weights.get("tau") == 0)
    if trainer["strategy"] == "w1_zero" or zero_fixed:
        return ("not applicable: the upstream loss has weight 0, so the auxiliary tau head never "
                "receives a gradient (its weights stay at their initialisation); its AUC is kept "
                f"only as the probe metric {PROBE_AUC_TAU}")
    return None


def evaluate_predictions(
    predictions: Mapping[str, np.ndarray], tau_efficiency: float = 0.6
) -> dict[str, float]:
    """Test metrics from the saved predictions.

    Returns:
        ``auc_tau``, ``auc_event``; ``rejection_tau_50`` / ``rejection_event_50`` (background
        rejection at 50 % signal efficiency); ``rejection_tau_wp`` at the tau efficiency
        ``tau_efficiency``; NaN where a metric is undefined.
    """

    def safe(fn, *args) -> float:
        try:
            return float(fn(*args))
        except ValueError as error:
            log.warning("metric undefined: %s", error)
            return math.nan

    jl, tl = predictions["jet_labels"], predictions["tau_logit"]
    el, ev = predictions["event_labels"], predictions["event_logit"]
    return {
        "auc_tau": safe(metrics.roc_auc, jl, tl),
        "auc_event": safe(metrics.roc_auc, el, ev),
        "rejection_tau_50": safe(metrics.background_rejection, jl, tl, 0.5),
        "rejection_tau_wp": safe(metrics.background_rejection, jl, tl, tau_efficiency),
        "rejection_event_50": safe(metrics.background_rejection, el, ev, 0.5),
    }


def evaluation_metrics(cfg: Mapping[str, Any], predictions: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """:func:`evaluate_predictions` at ``evaluate.tau_efficiency``, with the tau-ID metrics None
    (and the AUC moved to :data:`PROBE_AUC_TAU`) where :func:`upstream_not_applicable`."""
    out: dict[str, Any] = dict(evaluate_predictions(predictions, cfg["evaluate"]["tau_efficiency"]))
    if upstream_not_applicable(cfg):
        out[PROBE_AUC_TAU] = out["auc_tau"]
        for name in UPSTREAM_METRICS:
            out[name] = None
    return out


def roc_on_grid(predictions: Mapping[str, np.ndarray], points: int = 100) -> dict[str, Any]:
    """Both ROC curves as background efficiencies at the signal efficiencies ``1/points .. 1``:
    a few hundred numbers that let the figures draw ROC bands over every trial (``result.json``
    key ``roc``) without keeping each trial's predictions."""
    grid = np.arange(1, points + 1) / points
    out: dict[str, Any] = {"signal_efficiency": [round(float(x), 6) for x in grid]}
    for task, labels, logits in (("tau", "jet_labels", "tau_logit"), ("event", "event_labels", "event_logit")):
        y = np.asarray(predictions[labels])
        try:
            eff = metrics.background_efficiencies(y, predictions[logits], grid)
        except ValueError as error:  # one class only: no curve
            log.warning("no %s ROC: %s", task, error)
            continue
        out[task] = {"background_efficiency": [float(f"{e:.6g}") for e in eff],
                     "signal": int((y == 1).sum()), "background": int((y == 0).sum())}
    return out


def _predict(trainer: Trainer, data: PreparedData) -> dict[str, np.ndarray]:
    out = trainer.predict(data.test)
    pred = {
        "tau_logit": out["tau_logit"].double().numpy(),
        "intermediate": out["intermediate"].float().numpy(),
        "event_logit": out["event_logit"].double().numpy(),
        "jet_labels": data.test.jet_labels.numpy().astype(np.int8),
        "event_labels": data.test.event_labels.numpy().astype(np.int8),
        "jet_offsets": data.test.jet_offsets.numpy(),
    }
    if data.test_jet_pt is not None:
        pred["jet_pt"] = data.test_jet_pt.astype(np.float32)
    return pred


def save_predictions(path: Path, predictions: Mapping[str, np.ndarray]) -> None:
    """``predictions.npz``, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # keep_suffix: numpy.savez appends .npz to a name without it
    save_atomically(path, lambda tmp: np.savez_compressed(tmp, **predictions), keep_suffix=True)


def load_predictions(path: Path) -> dict[str, np.ndarray]:
    """The arrays of ``predictions.npz``.

    Raises:
        FileNotFoundError: no such file.
        UnreadableFileError: a truncated or corrupt file (named in the message).
    """
    try:
        with np.load(path) as npz:
            return {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise
    except Exception as error:  # zipfile.BadZipFile, EOFError, ValueError, OSError, ...
        raise UnreadableFileError(f"{path} is unreadable (truncated or corrupt?): {type(error).__name__}: "
                                  f"{error}; delete it and rerun the run or trial that wrote it") from error


def save_model_file(
    path: Path, network: MultiStep, data: PreparedData, settings_hash: str, producer: str,
    extra: Optional[Mapping[str, Any]] = None,
) -> Path:
    """The model file of a trained run or trial (:func:`hepms.model_file.save_model`)."""
    if data.spec is None:
        raise ValueError("the prepared data carry no feature spec: build them with prepare_data")
    return save_model(path, network, data.spec, data.scaler, data_fingerprint=data.fingerprint,
                      settings_hash=settings_hash, producer=producer, extra=extra)


# ----------------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------------
def fit_trial(
    cfg: Mapping[str, Any], data: PreparedData, folder: Path, seed: int, progress: bool = True
) -> tuple[Trainer, Any, bool]:
    """Train ``cfg`` with ``seed`` in ``folder``, continuing from ``folder/checkpoint.pt`` if present.

    Returns:
        ``(trainer, history, resumed)``; the trainer's model holds the selected (best) weights.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = build_model(cfg, data, seed)
    trainer = Trainer(model, train_config(cfg, seed, folder, progress))
    checkpoint = folder / "checkpoint.pt"
    resume = checkpoint if checkpoint.is_file() else None
    # What a checkpoint must match to be resumed: every result-defining setting (the model's
    # configuration included), the seed and the sample. The trainer adds its own checks.
    identity = {"settings": trial_identity(cfg, seed), "data_fingerprint": data.fingerprint}
    # Recorded in every checkpoint, so that hepms.model_file.load_model reads one on its own.
    steps = None if data.spec is None else preprocessing(data.spec, data.scaler)
    if resume is not None:
        log.info("resuming %s from its checkpoint", folder)
    try:
        history = trainer.fit(data.train, data.val, resume_from=resume, identity=identity,
                              preprocessing=steps)
    except CheckpointError as error:
        # Unreadable, or made by other settings/data: never resume it, start this run again.
        log.warning("discarding %s: %s; training from scratch", checkpoint, error.reason)
        checkpoint.unlink(missing_ok=True)
        model = build_model(cfg, data, seed)
        trainer = Trainer(model, train_config(cfg, seed, folder, progress))
        history = trainer.fit(data.train, data.val, identity=identity, preprocessing=steps)
        resume = None
    return trainer, history, resume is not None


def trial_identity(cfg: Mapping[str, Any], seed: int) -> str:
    """Hash of the result-defining settings of ``cfg`` (model configuration included) and ``seed``."""
    return settings_hash({"settings": run_settings(cfg), "seed": seed})


def predict(model: MultiStep, data: PreparedData, batch_size: int = 2048) -> dict[str, np.ndarray]:
    """Test-set outputs of ``model`` with labels, jet offsets and (when known) jet pT."""
    trainer = Trainer(model, TrainConfig(progress=False, eval_batch_size=batch_size,
                                         device=str(next(model.parameters()).device)))
    return _predict(trainer, data)


def run_trial(
    cfg: Mapping[str, Any],
    data: PreparedData,
    folder: Path,
    seed: int,
    *,
    save_predictions_file: bool = True,
    progress: bool = True,
    extra: Optional[Mapping[str, Any]] = None,
) -> dict[str, Any]:
    """Train (or finish training) ``cfg`` with ``seed`` into ``folder``, evaluate on the test part.

    Args:
        cfg: a validated configuration.
        data: the prepared data.
        folder: the run's folder (created).
        seed: model initialisation and shuffling seed.
        save_predictions_file: write ``predictions.npz`` (test-set outputs, for the figures).
        progress: progress bars.
        extra: more fields for ``result.json`` (e.g. the scan's labels).

    Returns:
        The result written to ``folder/result.json``.
    """
    from hepms._machine import git_commit

    folder = Path(folder)
    started = time.perf_counter()
    # The tree this trial trains with, read now: a long scan may outlive its checkout's HEAD.
    commit = git_commit()
    trainer, history, resumed = fit_trial(cfg, data, folder, seed, progress)
    predictions = _predict(trainer, data)
    result_metrics = evaluation_metrics(cfg, predictions)
    not_applicable = upstream_not_applicable(cfg)
    save_model_file(folder / MODEL_FILE, trainer.model, data, trial_identity(cfg, seed), "hepms scan",
                    {"seed": seed, "epochs": len(history.epochs), **dict(extra or {})})
    if save_predictions_file:
        save_predictions(folder / PREDICTIONS, predictions)
    result: dict[str, Any] = {
        "format": RESULT_FORMAT,
        "status": "done",
        "seed": seed,
        "settings": run_settings(cfg),
        "data_fingerprint": data.fingerprint,
        "metrics": result_metrics,
        "not_applicable": {name: not_applicable for name in UPSTREAM_METRICS} if not_applicable else {},
        "roc": roc_on_grid(predictions),
        "epochs": history.epochs,
        "best": history.best,
        "weight_tasks": history.weight_tasks,
        "epochs_trained": len(history.epochs),
        "resumed": resumed,
        "seconds": time.perf_counter() - started,
        "threads": torch.get_num_threads(),
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "hepms_commit": commit,
    }
    if extra:
        result.update(extra)
    write_json(folder / RESULT, result)  # last: its presence marks the run as finished
    log.info("%s: AUC tau %s, event %.4f (%d epochs, %.0f s)", folder, format_metric(result_metrics["auc_tau"]),
             result_metrics["auc_event"], len(history.epochs), result["seconds"])
    return result
