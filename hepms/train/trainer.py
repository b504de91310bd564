"""The trainer: batches of events, strategies, balancers, early stopping, checkpoints, logs.

Batches are ranges of events sliced from a :class:`~hepms.data.TauEventData` (views, no per-event
Python loop). Shuffling: at the start of every epoch the training events are permuted once with a
seeded ``randperm`` and gathered into fresh storage by :meth:`TauEventData.take` (one vectorised
``index_select`` per level); the batches are then consecutive slices of the permuted copy. We chose
this over permuting fixed blocks of events because block permutation keeps the same events
together in every epoch and inherits the file order inside each block (the generator writes all
H events, then all Z events), while the gather costs one pass over the training data per epoch, a
small fraction of one forward + backward pass over the same data. The permutation of epoch ``e``
of phase ``p`` depends on ``(seed, p, e)`` only, so a resumed run draws the same batches.

Determinism: on CPU, the same model seed, data and config give bit-identical weights, and resuming
from a checkpoint gives the same weights as the uninterrupted run.

Cost (benchmarks/train.md, "Per-trial cost"): a phase that runs the upstream model without
training it (step-by-step's downstream phase) evaluates it once per phase on the training and
validation events and trains on those per-jet outputs, instead of running it on every batch;
Adam is the fused kernel; validation runs under ``torch.inference_mode``. ``precision:
"bfloat16"`` (mixed precision, opt-in) does not pay on a CPU for the study's model: bfloat16
products go through oneDNN, which builds a kernel for every new row count, and every batch has
another number of constituents (benchmarks/train.md, "bfloat16 mixed precision").
"""
from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Union

import numpy as np
import torch
from torch import Tensor

from hepms import __version__, metrics
from hepms.atomic import json_safe, save_atomically, write_text_atomic
from hepms.data import TauEventData
from hepms.jagged import Jagged
from hepms.nn.models import MultiStep
from hepms.ops import validation
from hepms.train.balancers import BALANCERS, Balancer, FixedWeights, GradNorm, make_balancer
from hepms.train.losses import CLASSIFICATION_LOSSES, bce_loss, classification_loss, momentum_loss
from hepms.train.optim import make_optimizer
from hepms.train.strategies import STRATEGIES, Phase, check_balancer, monitor_key, phases_for

log = logging.getLogger(__name__)

__all__ = ["TrainConfig", "Trainer", "History", "EarlyStopping", "CheckpointError", "data_digest",
           "check_device", "BatchOutputs"]

# hepms.model_file.load_model reads model_config, model and "preprocessing" (the feature spec and
# standardisation given to fit; format 2 added it). Resuming also needs "identity" (model
# configuration, data digest, the caller's identity): a checkpoint without it, or with another
# one, is refused (CheckpointError).
CHECKPOINT_FORMAT = 2


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: unreadable (truncated, corrupt), of another format, or
    made with other settings, another model or other data. The message names the file and why.

    Attributes:
        path: the checkpoint file.
        reason: why it cannot be resumed.
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"checkpoint {path}: {reason}; delete it to train from scratch")
        self.path = Path(path)
        self.reason = reason


PathLike = Union[str, "os.PathLike[str]"]

#: ``TrainConfig.precision`` values: the dtype of the training forward passes' autocast region.
PRECISIONS = ("float32", "bfloat16")


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Training settings (defaults: the study's Adam lr 1e-3, early stopping with patience 10).

    Args:
        strategy: ``"simultaneous"``, ``"step_by_step"``, ``"w1_zero"`` or ``"pretrain_truth"``
            (see :mod:`hepms.train.strategies`).
        balancer: ``"fixed"``, ``"uncertainty"``, ``"gradnorm"`` or ``"dwa"``: how the losses of
            the joint phase combine.
        balancer_options: keyword arguments of the balancer, e.g. ``{"weights": {"tau": 1.0,
            "event": 1.0}}`` for ``"fixed"``, ``{"alpha": 1.5}`` for GradNorm, ``{"temperature":
            2.0}`` for DWA.
        upstream_loss: ``"bce"`` (cross-entropy) or ``"mse"`` (squared error of the probability).
        lr: Adam learning rate.
        batch_size: events per training batch.
        eval_batch_size: events per evaluation batch.
        max_epochs: epochs per phase at most.
        patience: epochs without a validation improvement before a phase stops.
        monitor: validation quantity for early stopping: ``"total"`` (the phase's combined loss)
            or a task name (``"event"``, ``"tau"``; phases without that task use the total).
        seed: seed of the per-epoch shuffles.
        device: ``"cpu"``, ``"cuda"``, ...
        progress: show a tqdm progress bar per epoch.
        log_dir: folder for ``metrics.csv`` and ``metrics.json`` (None: no files).
        checkpoint_dir: folder for ``checkpoint.pt`` written after every epoch (None: none).
        precision: ``"float32"`` or ``"bfloat16"``: the training forward passes run under
            ``torch.autocast(device, torch.bfloat16)`` (mixed precision); the weights, their
            gradients and the optimizer stay float32, the losses are computed in float32 and
            validation, the frozen-upstream cache, :meth:`Trainer.predict` and
            :meth:`Trainer.evaluate` run in float32. It changes the results (bfloat16 rounding),
            so it is part of a run's settings. On a CPU it is slower for the study's model
            (benchmarks/train.md, "bfloat16 mixed precision").
    """

    strategy: str = "simultaneous"
    balancer: str = "fixed"
    balancer_options: dict = field(default_factory=dict)
    upstream_loss: str = "bce"
    lr: float = 1e-3
    batch_size: int = 128
    eval_batch_size: int = 512  # larger costs more per event on a CPU (see hepms.config)
    max_epochs: int = 100
    patience: int = 10
    monitor: str = "total"
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    log_dir: Optional[str] = None
    checkpoint_dir: Optional[str] = None
    precision: str = "float32"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose from {STRATEGIES}")
        if self.balancer not in BALANCERS:
            raise ValueError(f"unknown balancer {self.balancer!r}; choose from {sorted(BALANCERS)}")
        if self.upstream_loss not in CLASSIFICATION_LOSSES:
            raise ValueError(
                f"unknown upstream loss {self.upstream_loss!r}; choose from "
                f"{sorted(CLASSIFICATION_LOSSES)}"
            )
        if not isinstance(self.balancer_options, Mapping):
            raise ValueError(f"balancer_options must be a dict, got {self.balancer_options!r}")
        check_balancer(self.strategy, self.balancer, self.balancer_options)
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        for name in ("batch_size", "eval_batch_size", "max_epochs", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        check_device(self.device)
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose from {PRECISIONS}")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


def check_device(device: Union[str, torch.device]) -> torch.device:
    """``device`` as a :class:`torch.device`, after checking that this machine has it.

    Raises:
        ValueError: not a device name (``"gpu"``), or CUDA requested where torch has none (a
            CPU-only build, no GPU visible, or an index beyond the GPU count); the message says which.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device {device!r} is not a torch device ({error}); use 'cpu', 'cuda' or "
                         "'cuda:N'") from None
    if dev.type == "cuda":
        if torch.version.cuda is None:
            raise ValueError(f"device {device!r}: this torch ({torch.__version__}) was built without "
                             "CUDA; use device 'cpu' or install a CUDA build of torch")
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA GPU is visible (torch {torch.__version__}, "
                             f"CUDA {torch.version.cuda}); use device 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return dev


# ----------------------------------------------------------------------------------------------
# Early stopping
# ----------------------------------------------------------------------------------------------
class EarlyStopping:
    """Stops after ``patience`` epochs without a strictly lower validation loss and keeps a copy
    of the best model (and balancer) state to restore.

    Args:
        patience: epochs without improvement that end the phase.
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best = math.inf
        self.best_epoch = -1
        self.wait = 0
        self.best_state: Optional[dict] = None

    def update(self, value: float, epoch: int, state: dict) -> bool:
        """Record epoch ``epoch``'s validation value; True when it is a new best."""
        if value < self.best:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            self.best_state = copy.deepcopy(state)
            return True
        self.wait += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.wait >= self.patience

    def state_dict(self) -> dict:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.wait = int(state["wait"])
        self.best_state = state["best_state"]


def cpu_state(module: torch.nn.Module) -> dict:
    """A detached CPU copy of ``module``'s state dict: what :class:`EarlyStopping` keeps as the best."""
    return {k: v.detach().to("cpu", copy=True) if isinstance(v, Tensor) else copy.deepcopy(v)
            for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------------------------
# History
# ----------------------------------------------------------------------------------------------
@dataclass
class History:
    """What :meth:`Trainer.fit` returns.

    Attributes:
        epochs: one dict per epoch: ``phase``, ``epoch`` (within the phase), ``train_loss``,
            ``train_<task>``, ``val_loss``, ``val_<task>``, ``val_auc_tau``, ``val_auc_event``,
            ``weight_<task>`` (balancer weights at the end of the epoch), ``lr``, ``seconds``,
            ``best`` (a new best validation value).
        step_weights: per phase, the balancer weights after every training step
            (``[[w_task1, w_task2, ...], ...]`` in the order of ``weight_tasks[phase]``).
        weight_tasks: per phase, the task order of ``step_weights``.
        best: per phase, ``{"epoch": ..., "value": ...}`` of the restored best epoch.
        interrupted: the call returned early (``stop_after``); resume from the checkpoint.
    """

    epochs: list = field(default_factory=list)
    step_weights: dict = field(default_factory=dict)
    weight_tasks: dict = field(default_factory=dict)
    best: dict = field(default_factory=dict)
    interrupted: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------
@dataclass
class BatchOutputs:
    """What :meth:`Trainer.forward_batch` returns: the outputs a training phase computes (None
    for those it does not: e.g. ``event_logit`` in the upstream phase of step-by-step)."""

    tau_logit: Optional[Tensor]
    intermediate: Optional[Tensor]
    momentum: Optional[Tensor]
    event_logit: Optional[Tensor]


class Trainer:
    """Trains a :class:`~hepms.nn.MultiStep` model with a strategy and a loss balancer.

    Args:
        model: the multi-step model (its weights are trained in place).
        config: a :class:`TrainConfig`; keyword ``overrides`` replace its fields.

    Example::

        model = hepms.nn.MultiStep(train.constituents.num_features, train.jet_features.shape[1],
                                   seed=1)
        trainer = hepms.train.Trainer(model, strategy="simultaneous", balancer="uncertainty",
                                      log_dir="runs/uw", checkpoint_dir="runs/uw")
        history = trainer.fit(train, val)
        trainer.evaluate(test)          # {"loss_tau": ..., "auc_tau": ..., "auc_event": ...}
    """

    def __init__(
        self, model: MultiStep, config: Optional[TrainConfig] = None, **overrides: Any
    ) -> None:
        if not isinstance(model, MultiStep):
            raise TypeError(f"Trainer trains a hepms.nn.MultiStep, got {type(model).__name__}")
        config = config or TrainConfig()
        if overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config
        self.device = torch.device(config.device)
        self.model = model.to(self.device)
        self.regression = model.tau.regression_outputs > 0
        self.phases = phases_for(config.strategy, self.regression)
        if config.strategy == "pretrain_truth":
            model.truth_intermediate(torch.zeros(1))  # raises for the additional-NN connection
        self._upstream_loss = classification_loss(config.upstream_loss)
        self.balancer: Optional[Balancer] = None
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.history = History()
        self._identity: Optional[dict] = None  # what produced the checkpoints (set by fit)
        self._preprocessing: Optional[Mapping[str, Any]] = None  # stored in checkpoints (fit)
        # (phase, train, val) -> upstream caches of train and val (see _frozen_data)
        self._frozen: Optional[tuple[tuple, TauEventData, TauEventData]] = None

    # -- public API -----------------------------------------------------------------------------
    def fit(
        self,
        train: TauEventData,
        val: TauEventData,
        resume_from: Optional[PathLike] = None,
        stop_after: Optional[int] = None,
        identity: Optional[Mapping[str, Any]] = None,
        preprocessing: Optional[Mapping[str, Any]] = None,
    ) -> History:
        """Train on ``train``, select and stop on ``val``.

        Args:
            train: training events.
            val: validation events (early stopping and model selection).
            resume_from: a checkpoint file (or a folder holding ``checkpoint.pt``) to continue
                from; the result equals the uninterrupted run.
            stop_after: return after this many epochs in this call (for time-limited jobs),
                with ``history.interrupted`` set; resume later from the checkpoint.
            identity: JSON-able facts that must match for a checkpoint to be resumed (e.g. a
                settings hash and a data fingerprint); stored in every checkpoint written.
            preprocessing: the input pipeline of the data
                (:func:`hepms.model_file.preprocessing`: feature spec and standardisation),
                stored in every checkpoint so that :func:`hepms.model_file.load_model` reads a
                checkpoint without further arguments.

        Every checkpoint also records the model's configuration and a digest of ``train`` and
        ``val``; resuming with another model, other data or another ``identity`` raises.

        Returns:
            The :class:`History` (also in ``self.history``).

        Raises:
            CheckpointError: ``resume_from`` is unreadable or was made by other settings, another
                model or other data (the message says which).
        """
        cfg = self.config
        self._preprocessing = preprocessing
        self._check_data(train, "train")
        self._check_data(val, "validation")
        if stop_after is not None and (not isinstance(stop_after, int) or stop_after < 1):
            raise ValueError(f"stop_after must be a positive integer, got {stop_after!r}")
        if resume_from is not None or self.checkpoint_path() is not None:
            self._identity = {"model_config": _canonical(self.model.config),
                              "data": data_digest(train, val), "caller": _canonical(dict(identity or {}))}
        train = train.to(self.device)
        val = val.to(self.device)
        first_phase, start_epoch, stopper = 0, 0, None
        self._frozen = None
        if resume_from is not None:
            first_phase, start_epoch, stopper = self._load_checkpoint(resume_from)
        else:
            self.history = History()
        epochs_run = 0
        # The data were validated above: skip the per-call offsets checks (a GPU sync each).
        with validation(False):
            for phase_index in range(first_phase, len(self.phases)):
                phase = self.phases[phase_index]
                resumed = phase_index == first_phase and resume_from is not None
                if not resumed:
                    self.start_phase(phase)
                    stopper = EarlyStopping(cfg.patience)
                    first_epoch = 0
                else:
                    first_epoch = start_epoch
                assert stopper is not None
                log.info("phase %s (%s): epochs %d..%d", phase.name, cfg.strategy,
                         first_epoch, cfg.max_epochs - 1)
                epoch = first_epoch
                finished = stopper.should_stop or first_epoch >= cfg.max_epochs
                while not finished:
                    if stop_after is not None and epochs_run >= stop_after:
                        self.history.interrupted = True
                        for p in self.model.parameters():
                            p.requires_grad_(True)
                        return self.history
                    self._run_epoch(phase_index, phase, epoch, train, val, stopper)
                    epochs_run += 1
                    epoch += 1
                    finished = stopper.should_stop or epoch >= cfg.max_epochs
                    if not finished:
                        self._save_checkpoint(phase_index, epoch, stopper)
                self._end_phase(phase_index, phase, stopper)
        self.history.interrupted = False
        self._write_logs()
        return self.history

    @torch.no_grad()
    def predict(self, data: TauEventData, batch_size: Optional[int] = None) -> dict[str, Tensor]:
        """Full model outputs on ``data`` (CPU tensors): ``tau_logit [B]``, ``intermediate
        [B, k]``, ``momentum [B, R]``, ``event_logit [E]``."""
        self._check_data(data, "data")
        data = data.to(self.device)
        self.model.eval()
        parts: dict[str, list[Tensor]] = {k: [] for k in ("tau_logit", "intermediate",
                                                           "momentum", "event_logit")}
        with validation(False):
            for batch in _batches(data, batch_size or self.config.eval_batch_size):
                out = self.model(batch.constituents.values, batch.constituents.offsets,
                                 batch.jet_offsets, batch.jet_features)
                for key in parts:
                    parts[key].append(getattr(out, key).detach().cpu())
        return {k: torch.cat(v) if v else torch.empty(0) for k, v in parts.items()}

    def evaluate(self, data: TauEventData, batch_size: Optional[int] = None) -> dict[str, float]:
        """Losses and metrics of the full connected model (no truth) on ``data``.

        Returns:
            ``loss_tau``, ``loss_event`` (and ``loss_momentum``), ``auc_tau``, ``auc_event``,
            ``rejection_tau_50`` / ``rejection_event_50`` (background rejection at 50 % signal
            efficiency).
        """
        out = self.predict(data, batch_size)
        cpu = data.to("cpu")
        result = {
            "loss_tau": float(self._upstream_loss(out["tau_logit"], cpu.jet_labels.to(out["tau_logit"].dtype), cpu.jet_weights)),
            "loss_event": float(bce_loss(out["event_logit"], cpu.event_labels.to(out["event_logit"].dtype))),
        }
        if self.regression and cpu.jet_targets is not None:
            result["loss_momentum"] = float(
                momentum_loss(out["momentum"], cpu.jet_targets, cpu.jet_labels > 0.5)
            )
        for task, labels, scores in (("tau", cpu.jet_labels, out["tau_logit"]),
                                     ("event", cpu.event_labels, out["event_logit"])):
            result[f"auc_{task}"] = _safe_auc(labels, scores)
            try:
                result[f"rejection_{task}_50"] = metrics.background_rejection(labels, scores, 0.5)
            except ValueError:
                result[f"rejection_{task}_50"] = math.nan
        return result

    # -- phases ---------------------------------------------------------------------------------
    def _make_balancer(self, phase: Phase) -> Balancer:
        if phase.balancer == "unit":
            return FixedWeights({t: 1.0 for t in phase.tasks})
        if phase.balancer == "w1_zero":
            return FixedWeights({t: (1.0 if t == "event" else 0.0) for t in phase.tasks})
        balancer = make_balancer(self.config.balancer, phase.tasks, **self.config.balancer_options)
        if isinstance(balancer, GradNorm) and balancer._shared is None:
            balancer.bind(self.model.shared_layer().weight)
        return balancer

    def _set_trainable(self, phase: Phase) -> list[torch.nn.Parameter]:
        model = self.model
        upstream = model.upstream_parameters()
        downstream = model.downstream_parameters()
        for p in upstream:
            p.requires_grad_(phase.train_upstream)
        for p in downstream:
            p.requires_grad_(phase.train_downstream)
        trainable = (upstream if phase.train_upstream else []) + (
            downstream if phase.train_downstream else []
        )
        return trainable

    def start_phase(self, phase: Phase) -> None:
        """Ready the trainer for training steps of ``phase`` (one of ``self.phases``): which
        parameters train, a fresh balancer (``self.balancer``) and optimizer
        (``self.optimizer``), and the modules in training mode (a frozen upstream model in
        eval mode). :meth:`fit` calls it at the start of every phase; benchmarks that time single
        steps (:meth:`forward_batch`, :meth:`batch_losses`) call it instead of :meth:`fit`."""
        trainable = self._set_trainable(phase)
        self.balancer = self._make_balancer(phase).to(self.device)
        groups = [{"params": trainable}]
        extra = self.balancer.trainable_parameters()
        if extra:
            groups.append({"params": extra})
        # fused: one kernel per parameter for the whole Adam update (the default for-loop issues
        # ~12 small ops per parameter and step: ~10 % of a training step of the study's model on
        # one CPU thread). Same algorithm; the updates differ from the loop's by float rounding.
        self.optimizer = make_optimizer(groups, self.config.lr, fused=True)
        self.history.weight_tasks[phase.name] = list(self.balancer.tasks)
        self.history.step_weights.setdefault(phase.name, [])
        self._set_modes(phase, True)

    def _end_phase(self, phase_index: int, phase: Phase, stopper: EarlyStopping) -> None:
        assert self.balancer is not None
        self._frozen = None
        if stopper.best_state is not None:
            self.model.load_state_dict(stopper.best_state["model"])
            self.balancer.load_state_dict(stopper.best_state["balancer"])
        self.history.best[phase.name] = {"epoch": stopper.best_epoch, "value": stopper.best}
        log.info("phase %s done: best epoch %d, validation %s = %.5f", phase.name,
                 stopper.best_epoch, monitor_key(phase, self.config.monitor), stopper.best)
        for p in self.model.parameters():
            p.requires_grad_(True)
        self._save_checkpoint(phase_index + 1, 0, None)
        self._write_logs()

    # -- one epoch ------------------------------------------------------------------------------
    def forward_batch(self, phase: Phase, batch: TauEventData, cached: bool = False,
                      mixed: bool = False) -> BatchOutputs:
        """The outputs of ``phase`` (one of ``self.phases``) on ``batch`` (on the trainer's
        device), as a training step computes them; gradients flow where the phase trains.

        Args:
            cached: ``batch`` is an upstream cache (internal to :meth:`fit`): its rows are the
                frozen upstream model's outputs per jet.
            mixed: as a training step: in the configured ``precision`` (under
                ``torch.autocast`` unless float32), the outputs returned as float32 for float32
                losses. False: in float32.
        """
        if mixed and self.config.precision != "float32":
            with torch.autocast(self.device.type, dtype=getattr(torch, self.config.precision)):
                out = self.forward_batch(phase, batch, cached)
            return BatchOutputs(*(None if t is None else t.float() for t in
                              (out.tau_logit, out.intermediate, out.momentum, out.event_logit)))
        model = self.model
        tau_logit = intermediate = momentum = event_logit = None
        if cached:
            columns = batch.constituents.values
            k = model.k
            tau_logit, intermediate, momentum = columns[:, 0], columns[:, 1:1 + k], columns[:, 1 + k:]
        elif phase.run_upstream:
            frozen = contextlib.nullcontext() if phase.train_upstream else torch.no_grad()
            with frozen:
                tau_logit, intermediate, momentum = model.upstream(
                    batch.constituents.values, batch.constituents.offsets, batch.jet_features
                )
        if phase.run_downstream:
            feed = model.truth_intermediate(batch.jet_labels) if phase.truth_intermediate else intermediate
            assert feed is not None
            event_logit = model.downstream(batch.jet_features, batch.jet_offsets, feed)
        return BatchOutputs(tau_logit, intermediate, momentum, event_logit)

    def batch_losses(self, phase: Phase, out: BatchOutputs, batch: TauEventData) -> dict[str, Tensor]:
        """The losses of ``phase``'s tasks (``{"tau": ..., "event": ...}``, ``"momentum"`` with a
        regression head) for the outputs ``out`` of :meth:`forward_batch` on ``batch``, before
        the balancer weights them (``self.balancer.combine(losses)`` is what a step minimises)."""
        losses: dict[str, Tensor] = {}
        if "tau" in phase.tasks:
            assert out.tau_logit is not None
            losses["tau"] = self._upstream_loss(
                out.tau_logit, batch.jet_labels.to(out.tau_logit.dtype), batch.jet_weights
            )
        if "momentum" in phase.tasks:
            assert out.momentum is not None and batch.jet_targets is not None
            losses["momentum"] = momentum_loss(out.momentum, batch.jet_targets, batch.jet_labels > 0.5)
        if "event" in phase.tasks:
            assert out.event_logit is not None
            losses["event"] = bce_loss(out.event_logit, batch.event_labels.to(out.event_logit.dtype))
        return losses

    def _upstream_cache(self, data: TauEventData) -> TauEventData:
        """``data`` with one row per jet in place of its constituents: the frozen upstream
        model's ``[tau_logit, intermediate (k), momentum (R)]``, computed once per phase.

        A phase that runs the upstream model without training it (step-by-step's downstream
        phase) would otherwise evaluate it on every batch of every epoch, training and
        validation, for the same outputs: the per-jet outputs depend on the jet's constituents
        and the frozen weights only (eval mode, as in the batches). The jets, labels and offsets
        of ``data`` are kept, so shuffles and batches are drawn exactly as from ``data``.
        """
        model = self.model
        model.tau.eval()
        model.aux.eval()
        parts = []
        with torch.no_grad():
            for batch in _batches(data, self.config.eval_batch_size):
                tau_logit, intermediate, momentum = model.upstream(
                    batch.constituents.values, batch.constituents.offsets, batch.jet_features
                )
                parts.append(torch.cat([tau_logit[:, None], intermediate, momentum], dim=1))
        rows = torch.cat(parts)
        per_jet = torch.arange(rows.shape[0] + 1, dtype=torch.int64, device=rows.device)
        return TauEventData(
            Jagged(rows, per_jet, data.jet_offsets, validate=False),
            data.jet_features, data.jet_labels, data.event_labels, data.jet_weights,
            data.jet_targets, validate=False,
        )

    def _frozen_data(self, phase_index: int, phase: Phase, train: TauEventData,
                     val: TauEventData) -> Optional[tuple[TauEventData, TauEventData]]:
        """The upstream caches of ``train`` and ``val`` for a phase with a frozen upstream model
        (None for other phases); made on the phase's first epoch in this call."""
        if not phase.run_upstream or phase.train_upstream:
            return None
        # Dropped at the start of every fit and at the end of every phase, so the weights
        # cannot change under a cache: within the phase the upstream model is not trained.
        key = (phase_index, id(train), id(val))
        if self._frozen is None or self._frozen[0] != key:
            started = time.process_time()
            self._frozen = (key, self._upstream_cache(train), self._upstream_cache(val))
            log.debug("phase %s: frozen upstream outputs cached (%.1f CPU s)", phase.name,
                      time.process_time() - started)
        return self._frozen[1], self._frozen[2]

    def _set_modes(self, phase: Phase, training: bool) -> None:
        self.model.train(training)
        if training and not phase.train_upstream:
            # A frozen upstream stays in eval mode (matters for dropout / batch-norm variants).
            self.model.tau.eval()
            self.model.aux.eval()
        assert self.balancer is not None
        self.balancer.train(training)

    def _run_epoch(
        self,
        phase_index: int,
        phase: Phase,
        epoch: int,
        train: TauEventData,
        val: TauEventData,
        stopper: EarlyStopping,
    ) -> None:
        cfg = self.config
        assert self.optimizer is not None and self.balancer is not None
        started = time.perf_counter()
        cached = self._frozen_data(phase_index, phase, train, val)
        if cached is not None:
            train, val = cached
        self._set_modes(phase, True)
        generator = torch.Generator().manual_seed(_epoch_seed(cfg.seed, phase_index, epoch))
        order = torch.randperm(len(train), generator=generator).to(self.device)
        shuffled = train.take(order)
        n_batches = max(1, math.ceil(len(shuffled) / cfg.batch_size))
        sums = {t: torch.zeros((), dtype=torch.float64, device=self.device) for t in phase.tasks}
        total_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        step_weights: list[Tensor] = []
        bar = _progress(n_batches, f"{phase.name} {epoch}", cfg.progress)
        try:
            for batch in _batches(shuffled, cfg.batch_size):
                out = self.forward_batch(phase, batch, cached is not None, mixed=True)
                losses = self.batch_losses(phase, out, batch)
                total = self.balancer.combine(losses)
                self.optimizer.zero_grad(set_to_none=True)
                total.backward()
                self.optimizer.step()
                weights = self.balancer.weight_vector()
                step_weights.append(weights)
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("%s epoch %d step weights %s", phase.name, epoch,
                              dict(zip(self.balancer.tasks, weights.tolist())))
                for t, value in losses.items():
                    sums[t] += value.detach()
                total_sum += total.detach()
                bar.update(1)
        finally:
            bar.close()
        self.balancer.epoch_end()
        self._set_modes(phase, False)
        val_result = self._validate(phase, val, cached is not None)
        key = monitor_key(phase, cfg.monitor)
        monitored = val_result["val_loss"] if key == "total" else val_result[f"val_{key}"]
        state = {"model": cpu_state(self.model), "balancer": cpu_state(self.balancer)}
        improved = stopper.update(monitored, epoch, state)
        row: dict[str, Any] = {"phase": phase.name, "epoch": epoch}
        row["train_loss"] = float(total_sum) / n_batches
        for t in phase.tasks:
            row[f"train_{t}"] = float(sums[t]) / n_batches
        row.update(val_result)
        for t, w in self.balancer.weights().items():
            row[f"weight_{t}"] = w
        row["lr"] = self.optimizer.param_groups[0]["lr"]
        row["seconds"] = time.perf_counter() - started
        row["best"] = improved
        self.history.epochs.append(row)
        self.history.step_weights[phase.name].extend(
            torch.stack(step_weights).tolist() if step_weights else []
        )
        log.info(
            "%s epoch %d: train %.4f, val %.4f, AUC tau %.4f event %.4f, weights %s%s",
            phase.name, epoch, row["train_loss"], row["val_loss"],
            row.get("val_auc_tau", math.nan), row.get("val_auc_event", math.nan),
            {t: round(w, 4) for t, w in self.balancer.weights().items()},
            " *" if improved else "",
        )
        self._write_logs()

    @torch.inference_mode()
    def _validate(self, phase: Phase, val: TauEventData, cached: bool = False) -> dict[str, float]:
        assert self.balancer is not None
        outs: list[BatchOutputs] = [self.forward_batch(phase, b, cached)
                                for b in _batches(val, self.config.eval_batch_size)]

        def cat(name: str) -> Optional[Tensor]:
            parts = [getattr(o, name) for o in outs]
            return None if not parts or parts[0] is None else torch.cat(parts)

        out = BatchOutputs(cat("tau_logit"), cat("intermediate"), cat("momentum"), cat("event_logit"))
        losses = self.batch_losses(phase, out, val)
        result = {"val_loss": float(self.balancer.combine(losses))}
        for t, value in losses.items():
            result[f"val_{t}"] = float(value)
        result["val_auc_tau"] = (
            _safe_auc(val.jet_labels, out.tau_logit) if out.tau_logit is not None else math.nan
        )
        result["val_auc_event"] = (
            _safe_auc(val.event_labels, out.event_logit) if out.event_logit is not None else math.nan
        )
        return result

    # -- checks ---------------------------------------------------------------------------------
    def _check_data(self, data: TauEventData, name: str) -> None:
        if not isinstance(data, TauEventData):
            raise TypeError(f"{name} must be a hepms.data.TauEventData, got {type(data).__name__}")
        model = self.model
        if data.constituents.num_features != model.tau.constituent_features:
            raise ValueError(
                f"{name} has {data.constituents.num_features} constituent features but the model "
                f"expects {model.tau.constituent_features}"
            )
        if data.jet_features.shape[1] != model.tau.jet_features:
            raise ValueError(
                f"{name} has {data.jet_features.shape[1]} jet features but the model expects "
                f"{model.tau.jet_features}"
            )
        if self.regression and data.jet_targets is None:
            raise ValueError(
                f"the model has a momentum regression head but {name} has no jet_targets"
            )
        if self.regression and data.jet_targets.shape[1] != model.tau.regression_outputs:
            raise ValueError(
                f"{name} has {data.jet_targets.shape[1]} regression targets, the model "
                f"{model.tau.regression_outputs} outputs"
            )
        if len(data) == 0:
            raise ValueError(f"{name} has no events")

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoint_path(self) -> Optional[Path]:
        if self.config.checkpoint_dir is None:
            return None
        return Path(self.config.checkpoint_dir) / "checkpoint.pt"

    def _save_checkpoint(
        self, phase_index: int, epoch: int, stopper: Optional[EarlyStopping]
    ) -> None:
        path = self.checkpoint_path()
        if path is None:
            return
        assert self.optimizer is not None and self.balancer is not None
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "model_config": self.model.config,
            "identity": self._identity,
            "phase": phase_index,
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "balancer": self.balancer.state_dict(),
            "early_stopping": stopper.state_dict() if stopper is not None else None,
            "history": self.history.to_dict(),
            "rng": _rng_state(),
            "preprocessing": self._preprocessing,
            "hepms_version": __version__,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        # atomic: a killed run never leaves half a checkpoint
        save_atomically(path, lambda tmp: torch.save(state, tmp))

    def _load_checkpoint(self, source: PathLike) -> tuple[int, int, Optional[EarlyStopping]]:
        path = Path(source)
        if path.is_dir():
            path = path / "checkpoint.pt"
        if not path.exists():
            raise FileNotFoundError(f"no checkpoint at {path}")
        try:
            # Truncated or random bytes raise anything from OSError to UnpicklingError/IndexError.
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise CheckpointError(
                path, f"unreadable (truncated or corrupt?): {type(error).__name__}: {error}"
            ) from error
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(path, f"format {found!r}, this hepms writes {CHECKPOINT_FORMAT}")
        mine = self.config.to_dict()
        theirs = state.get("config") if isinstance(state.get("config"), dict) else {}
        older = {"precision": "float32"}  # keys added later: what checkpoints without them used
        for key in ("strategy", "balancer", "balancer_options", "upstream_loss", "lr",
                    "batch_size", "seed", "max_epochs", "patience", "monitor", "precision"):
            if theirs.get(key, older.get(key)) != mine.get(key):
                raise CheckpointError(
                    path, f"made with {key}={theirs.get(key, older.get(key))!r}, this trainer has "
                    f"{mine.get(key)!r}"
                )
        saved = state.get("identity")
        if not isinstance(saved, dict):
            raise CheckpointError(path, "records no model/data identity (written by an older hepms)")
        assert self._identity is not None  # set by fit before loading
        for key, what in (("model_config", "another model configuration"),
                          ("data", "other training/validation data"),
                          ("caller", "other settings or another data fingerprint")):
            if saved.get(key) != self._identity[key]:
                raise CheckpointError(
                    path, f"made with {what} ({key}: {_diff(saved.get(key), self._identity[key])})"
                )
        try:
            phase_index, epoch = int(state["phase"]), int(state["epoch"])
            stopper = self._restore(state)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
            raise CheckpointError(path, f"does not fit this trainer ({type(error).__name__}: {error})") from error
        log.info("resumed from %s: phase %d, epoch %d", path, phase_index, epoch)
        return phase_index, epoch, stopper

    def _restore(self, state: Mapping[str, Any]) -> Optional[EarlyStopping]:
        """Model, history, optimizer, balancer, early stopping and RNG from a checked checkpoint."""
        phase_index = int(state["phase"])
        self.model.load_state_dict(state["model"])
        self.history = History(**state["history"])
        stopper = None
        if phase_index < len(self.phases):
            phase = self.phases[phase_index]
            self.start_phase(phase)
            if state["early_stopping"] is not None:
                # Mid-phase: optimizer, balancer and early stopping continue where they were.
                assert self.optimizer is not None and self.balancer is not None
                self.optimizer.load_state_dict(state["optimizer"])
                self.balancer.load_state_dict(state["balancer"])
                stopper = EarlyStopping(self.config.patience)
                stopper.load_state_dict(state["early_stopping"])
            else:
                stopper = EarlyStopping(self.config.patience)
        _set_rng_state(state["rng"])
        return stopper

    # -- logs -----------------------------------------------------------------------------------
    def _write_logs(self) -> None:
        if self.config.log_dir is None:
            return
        folder = Path(self.config.log_dir)
        folder.mkdir(parents=True, exist_ok=True)
        rows = self.history.epochs
        columns: list[str] = []
        for row in rows:
            for key in row:
                if key not in columns:
                    columns.append(key)
        write_text_atomic(folder / "metrics.csv", _csv_text(columns, rows))
        payload = {"config": self.config.to_dict(), "model": self.model.config,
                   **self.history.to_dict()}
        text = json.dumps(json_safe(payload), indent=1, default=str, allow_nan=False)
        write_text_atomic(folder / "metrics.json", text)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
def data_digest(*parts: TauEventData) -> str:
    """A hash of the tensors of ``parts`` (values, offsets, features, labels, weights, targets):
    checkpoints record it so that a run never resumes on data other than its own."""
    h = hashlib.blake2b(digest_size=16)
    for data in parts:
        c = data.constituents
        for tensor in (c.values, c.offsets, c.outer_offsets, data.jet_features, data.jet_labels,
                       data.event_labels, data.jet_weights, data.jet_targets):
            if tensor is None:
                h.update(b"none")
                continue
            flat = tensor.detach().reshape(-1).contiguous().cpu()
            h.update(f"{flat.dtype}{tuple(tensor.shape)}".encode())
            h.update(flat.view(torch.uint8).numpy().data)
        h.update(repr((tuple(data.constituent_names), tuple(data.jet_names))).encode())
    return h.hexdigest()


def _canonical(x: Any) -> Any:
    """JSON-normal form (tuples -> lists, keys sorted) so saved and live values compare equal."""
    return json.loads(json.dumps(x, sort_keys=True, default=str))


def _diff(saved: Any, current: Any) -> str:
    """Where two identities differ, briefly, for the discard message."""
    if isinstance(saved, dict) and isinstance(current, dict):
        keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        return ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys[:4])
    return f"{saved!r} -> {current!r}"


def _batches(data: TauEventData, batch_size: int) -> Iterator[TauEventData]:
    for start in range(0, len(data), batch_size):
        yield data.slice(start, min(len(data), start + batch_size))


def _epoch_seed(seed: int, phase: int, epoch: int) -> int:
    # SeedSequence mixes the three numbers into independent, well-spread streams.
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, phase, epoch]).generate_state(1)[0])


def _safe_auc(labels: Tensor, scores: Optional[Tensor]) -> float:
    if scores is None:
        return math.nan
    try:
        return metrics.roc_auc(labels, scores)
    except ValueError as error:
        log.warning("AUC undefined: %s", error)
        return math.nan


def _progress(total: int, desc: str, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        enabled = False
    if not enabled:
        return _NoBar()
    # The epoch history must stay on screen: when each epoch is logged (INFO, the CLI's default)
    # the bar is transient and the log line replaces it; otherwise the finished bars are the history.
    return tqdm(total=total, desc=desc, leave=not log.isEnabledFor(logging.INFO), dynamic_ncols=True)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [t.tolist() if isinstance(t, np.ndarray) else t for t in np.random.get_state()],
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _csv_text(columns: list[str], rows: list[dict]) -> str:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return buffer.getvalue()
