"""Shared pieces of the three selection methods: settings, epochs with early stopping, evaluation,
pre-training on truth, re-optimisation of a connected chain (and its opposite, a Task-2 model
trained on a frozen Task-1 model's outputs), and the result record.

Every function here takes the training and the validation split only: early stopping and model
choice look at validation, weights are fitted on training; the test split is read only after a
selection has returned.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional

import numpy as np
import torch
from torch import Tensor, nn

from hepms import metrics
from hepms.data import TauEventData
from hepms.ops import validation
from hepms.select.data import Inputs, JetKinematics, Targets, iterate_batches, make_batch
from hepms.select.space import Chain, SearchSpace
from hepms.select.tasks import UpstreamTask, event_loss
from hepms.train.trainer import EarlyStopping, cpu_state
from hepms.train.optim import make_optimizer

log = logging.getLogger(__name__)

__all__ = [
    "SearchSettings",
    "SelectionResult",
    "Pretrained",
    "pretrain",
    "reoptimise",
    "train_on_upstream_outputs",
    "evaluate_chain",
    "run_epochs",
    "score",
    "CRITERIA",
]

CRITERIA = ("loss", "auc")


@dataclass
class SearchSettings:
    """Settings shared by grid search, DARTS and SPOS-NAS (defaults: the MSNAS paper's).

    Args:
        v1: Task-1 weight ``v_1``; ``v_2 = 1 - v_1`` (the paper's normalisation ``sum v_t = 1``).
        epsilon: weight of the per-model terms in the DARTS loss (the paper fixes it to 1).
        lr: Adam learning rate of the model weights (pre-training, search, post-training).
        alpha_lr: Adam learning rate of the DARTS architecture weights (paper: 1e-3; small samples
            have few steps per epoch, so a larger value is useful there).
        batch_size: events per training batch.
        eval_batch_size: events per evaluation batch.
        pretrain_epochs, search_epochs, posttrain_epochs: epoch limits of the three phases (the
            grid's re-optimisation counts as post-training).
        patience: early-stopping patience of pre- and post-training (paper: 10).
        search_patience: early-stopping patience of the DARTS / SPOS search (paper: 20).
        early_stopping: False runs every phase for its full epoch count (used for timings).
        criterion: how grid search and SPOS rank pairs on validation: ``"loss"`` (the weighted
            total ``v_1 L_1 + v_2 L_2``, lower is better) or ``"auc"`` (Task-2 AUC).
        spos_include_dummies: keep ``zeros`` / ``noise`` in SPOS (the paper leaves them out: a
            dummy on a sampled path corrupts the other model's update).
        seed: seeds the candidates' initialisation, the batch order and the path sampling.
        device: torch device.
        progress: tqdm bars over epochs.
    """

    v1: float = 0.5
    epsilon: float = 1.0
    lr: float = 1e-3
    alpha_lr: float = 1e-3
    batch_size: int = 64
    eval_batch_size: int = 4096
    pretrain_epochs: int = 100
    search_epochs: int = 100
    posttrain_epochs: int = 100
    patience: int = 10
    search_patience: int = 20
    early_stopping: bool = True
    criterion: str = "loss"
    spos_include_dummies: bool = False
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        if not (0.0 <= float(self.v1) <= 1.0):
            raise ValueError(f"v1 must be in [0, 1] (v2 = 1 - v1), got {self.v1}")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        for name in ("lr", "alpha_lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not (isinstance(self.epsilon, (int, float)) and self.epsilon >= 0):
            raise ValueError(f"epsilon must be >= 0, got {self.epsilon!r}")
        for name in ("batch_size", "eval_batch_size", "pretrain_epochs", "search_epochs",
                     "posttrain_epochs", "patience", "search_patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        torch.device(self.device)

    @property
    def v2(self) -> float:
        return 1.0 - float(self.v1)

    def replace(self, **changes: Any) -> "SearchSettings":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class SelectionResult:
    """What a selection method returns.

    Attributes:
        method: ``"grid"``, ``"darts"`` or ``"spos"``.
        upstream, downstream: names of the selected candidates.
        chain: the selected, trained chain.
        val_metrics: the chain's validation metrics (:func:`evaluate_chain`).
        scores: per pair ``"up|down"``, validation metrics (grid: after re-optimisation; SPOS:
            with the supernet weights; DARTS: empty).
        alpha_history: DARTS: per epoch, ``{"epoch", "val_loss", "upstream": {name: weight},
            "downstream": {name: weight}}`` (softmax of the architecture weights).
        history: per-epoch logs of every phase.
        timings: wall seconds per phase and ``"total"``.
        settings: the :class:`SearchSettings` as a dict.
        candidates: ``{"upstream": [...], "downstream": [...]}`` names searched over.
    """

    method: str
    upstream: str
    downstream: str
    chain: Chain
    val_metrics: dict
    scores: dict = field(default_factory=dict)
    alpha_history: list = field(default_factory=list)
    history: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    candidates: dict = field(default_factory=dict)

    @property
    def pair(self) -> tuple[str, str]:
        return (self.upstream, self.downstream)

    def to_dict(self) -> dict:
        """Everything but the model, JSON-ready."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "chain"}
        return json_ready(out)


def json_ready(x: Any) -> Any:
    """Floats NaN/inf -> None, tuples -> lists, numpy scalars -> Python (for JSON files)."""
    if isinstance(x, Mapping):
        return {str(k): json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def score(metrics_: Mapping[str, float], criterion: str) -> float:
    """Lower is better: the weighted total loss, or minus the Task-2 AUC."""
    if criterion == "loss":
        value = metrics_["total"]
    elif criterion == "auc":
        value = -metrics_["auc_event"]
    else:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    return value if math.isfinite(value) else math.inf


def pair_key(up: str, down: str) -> str:
    return f"{up}|{down}"


# ------------------------------------------------------------------------------------------------
# Epoch loop
# ------------------------------------------------------------------------------------------------
def epoch_generator(seed: int, tag: str, epoch: int) -> torch.Generator:
    """The batch-shuffling generator of one epoch: a function of (seed, search tag, epoch) only, so
    a search draws the same batches whatever ran before it."""
    mixed = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, sum(map(ord, tag)) * 131 + len(tag), epoch])
    return torch.Generator().manual_seed(int(mixed.generate_state(1)[0]))


class _Bar:
    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

    def update(self, postfix: Optional[dict] = None) -> None:
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_epochs(
    module: nn.Module,
    step: Callable[[Inputs, Targets], float],
    validate: Callable[[], float],
    train: TauEventData,
    kinematics: JetKinematics,
    settings: SearchSettings,
    *,
    epochs: int,
    patience: int,
    tag: str,
    on_epoch: Optional[Callable[[int, float], None]] = None,
) -> list[dict]:
    """Epochs of ``step`` over shuffled training batches, early stopping on ``validate()``.

    ``step`` does one optimisation step (it owns its optimisers) and returns the batch loss. The
    best validation epoch's ``module`` state is restored at the end (when early stopping is on).

    Returns:
        One ``{"phase", "epoch", "train_loss", "val_loss", "seconds"}`` dict per epoch.
    """
    history: list[dict] = []
    stopper = EarlyStopping(patience)
    bar = _Bar(epochs, tag, settings.progress)
    try:
        for epoch in range(epochs):
            started = time.perf_counter()
            module.train()
            generator = epoch_generator(settings.seed, tag, epoch)
            losses = []
            for batch in iterate_batches(train, settings.batch_size, shuffle=True, generator=generator):
                inputs, targets = make_batch(batch, kinematics)
                losses.append(step(inputs, targets))
            module.eval()
            with torch.no_grad():
                val_loss = float(validate())
            if on_epoch is not None:
                on_epoch(epoch, val_loss)
            stopper.update(val_loss if math.isfinite(val_loss) else math.inf, epoch, cpu_state(module))
            row = {
                "phase": tag,
                "epoch": epoch,
                "train_loss": float(np.mean(losses)) if losses else math.nan,
                "val_loss": val_loss,
                "seconds": time.perf_counter() - started,
            }
            history.append(row)
            log.debug("%s epoch %d: train %.4f val %.4f", tag, epoch, row["train_loss"], val_loss)
            bar.update({"val": f"{val_loss:.4f}"})
            if settings.early_stopping and stopper.should_stop:
                break
    finally:
        bar.close()
    if settings.early_stopping and stopper.best_state is not None:
        module.load_state_dict(stopper.best_state)
    return history


def optimizer_step(optimizer: torch.optim.Optimizer, loss: Tensor) -> float:
    """Zero the gradients (to None: unsampled SPOS candidates stay untouched), back-propagate, step."""
    optimizer.zero_grad(set_to_none=True)
    if loss.requires_grad:
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def trainable(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    params: list[nn.Parameter] = []
    for m in modules:
        params.extend(p for p in m.parameters() if p.requires_grad)
    return params


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def chain_outputs(
    chain: Chain, data: TauEventData, kinematics: JetKinematics, batch_size: int
) -> tuple[Tensor, Tensor]:
    """``(u [B, k], event_logit [E])`` of ``chain`` over ``data`` (in data order, on CPU)."""
    chain.eval()
    us, logits = [], []
    for batch in iterate_batches(data, batch_size):
        inputs, _ = make_batch(batch, kinematics)
        u, logit = chain(inputs)
        us.append(u.cpu())
        logits.append(logit.cpu())
    return torch.cat(us), torch.cat(logits)


def metrics_from_outputs(
    u: Tensor, logit: Tensor, targets: Targets, task: UpstreamTask, v1: float
) -> dict[str, float]:
    """Task losses, weighted total, Task-2 AUC and the Task-1 metrics."""
    targets = Targets(*(t.cpu() for t in targets))
    loss1 = float(task.loss(u, targets))
    loss2 = float(event_loss(logit, targets))
    out = {"loss1": loss1, "loss2": loss2, "total": v1 * loss1 + (1.0 - v1) * loss2}
    try:
        out["auc_event"] = metrics.roc_auc(targets.event_labels, logit)
    except ValueError:
        out["auc_event"] = math.nan
    out.update(task.metrics(u, targets))
    return out


def evaluate_chain(
    chain: Chain,
    data: TauEventData,
    kinematics: JetKinematics,
    v1: float,
    batch_size: int = 4096,
) -> dict[str, float]:
    """Metrics of a connected chain on ``data``: ``loss1``, ``loss2``, ``total``, ``auc_event``
    and the task's own (``auc_tau`` or ``mse``, ``mse_pt``, ...)."""
    with validation(False):
        u, logit = chain_outputs(chain, data, kinematics, batch_size)
    _, targets = make_batch(data, kinematics)
    return metrics_from_outputs(u, logit, targets, chain.task, v1)


# ------------------------------------------------------------------------------------------------
# Pre-training on truth and re-optimisation of a chain
# ------------------------------------------------------------------------------------------------
@dataclass
class Pretrained:
    """Weights of every candidate after pre-training on truth (CPU state dicts).

    Attributes:
        upstream, downstream: ``name -> state_dict``.
        val_loss: ``"upstream/name"`` / ``"downstream/name"`` -> best validation loss.
        seconds: wall time of the pre-training.
        history: per-epoch logs.
    """

    upstream: dict
    downstream: dict
    val_loss: dict = field(default_factory=dict)
    seconds: float = 0.0
    history: list = field(default_factory=list)

    def load_into(self, upstream: nn.ModuleDict, downstream: nn.ModuleDict) -> None:
        """Load the pre-trained states into freshly built candidates of the same space."""
        for step, modules, states in (("upstream", upstream, self.upstream),
                                      ("downstream", downstream, self.downstream)):
            missing = [n for n in modules if n not in states]
            if missing:
                raise ValueError(f"no pre-trained {step} weights for {missing}")
            for name, module in modules.items():
                module.load_state_dict(states[name])


def pretrain(
    space: SearchSpace,
    train: TauEventData,
    val: TauEventData,
    settings: SearchSettings,
) -> Pretrained:
    """Train every candidate alone on truth (paper Algorithm 1, "Pre-training").

    Task-1 candidates minimise the Task-1 loss; Task-2 candidates minimise the event loss with the
    truth link (:meth:`UpstreamTask.truth_link`) as input. Each stops early on its own validation
    loss. Dummies have no weights and are stored as they are.
    """
    started = time.perf_counter()
    device = torch.device(settings.device)
    kinematics = space.kinematics(device)
    train, val = train.to(device), val.to(device)
    upstream, downstream = space.build(settings.seed)
    upstream.to(device)
    downstream.to(device)
    task = space.task
    val_inputs, val_targets = make_batch(val, kinematics)
    result = Pretrained({}, {})
    with validation(False):
        for name, model in upstream.items():
            params = trainable([model])
            if params:
                optimizer = make_optimizer(params, settings.lr)

                def step(inputs: Inputs, targets: Targets, model=model, optimizer=optimizer) -> float:
                    return optimizer_step(optimizer, task.loss(model(inputs), targets))

                def validate(model=model) -> float:
                    return float(task.loss(_predict_upstream(model, val, kinematics, settings), val_targets))

                result.history += run_epochs(
                    model, step, validate, train, kinematics, settings,
                    epochs=settings.pretrain_epochs, patience=settings.patience,
                    tag=f"pretrain/upstream/{name}",
                )
            with torch.no_grad():
                result.val_loss[f"upstream/{name}"] = float(
                    task.loss(_predict_upstream(model, val, kinematics, settings), val_targets)
                )
            result.upstream[name] = cpu_state(model)
        for name, model in downstream.items():
            params = trainable([model])

            def forward_truth(inputs: Inputs, targets: Targets, model=model) -> Tensor:
                return model(inputs, task.truth_link(inputs, targets))

            if params:
                optimizer = make_optimizer(params, settings.lr)

                def step(inputs: Inputs, targets: Targets, optimizer=optimizer, fwd=forward_truth) -> float:
                    return optimizer_step(optimizer, event_loss(fwd(inputs, targets), targets))

                def validate(fwd=forward_truth) -> float:
                    return float(event_loss(fwd(val_inputs, val_targets), val_targets))

                result.history += run_epochs(
                    model, step, validate, train, kinematics, settings,
                    epochs=settings.pretrain_epochs, patience=settings.patience,
                    tag=f"pretrain/downstream/{name}",
                )
            with torch.no_grad():
                model.eval()
                result.val_loss[f"downstream/{name}"] = float(
                    event_loss(forward_truth(val_inputs, val_targets), val_targets)
                )
            result.downstream[name] = cpu_state(model)
    result.seconds = time.perf_counter() - started
    log.info("pre-training of %d + %d candidates: %.1f s", len(upstream), len(downstream), result.seconds)
    return result


@dataclass
class SearchStart:
    """What every selection method starts from: the data on the device, the candidates with
    their pre-trained weights (and the :class:`Pretrained` they came from, whose history leads
    the result's), and the timings dict (``"pretrain"`` filled in)."""

    device: torch.device
    kinematics: JetKinematics
    train: TauEventData
    val: TauEventData
    upstream: nn.ModuleDict
    downstream: nn.ModuleDict
    timings: dict
    pretrained: Pretrained


def start_search(
    space: SearchSpace,
    train: TauEventData,
    val: TauEventData,
    settings: SearchSettings,
    pretrained: Optional[Pretrained],
) -> SearchStart:
    """Pre-train the candidates (unless ``pretrained`` is given), build fresh candidates from
    ``settings.seed`` with those weights, and move them and the data to ``settings.device``."""
    device = torch.device(settings.device)
    timings: dict[str, float] = {}
    if pretrained is None:
        pretrained = pretrain(space, train, val, settings)
        timings["pretrain"] = pretrained.seconds
    else:
        timings["pretrain"] = 0.0
    upstream, downstream = space.build(settings.seed)
    pretrained.load_into(upstream, downstream)
    return SearchStart(device=device, kinematics=space.kinematics(device), train=train.to(device),
                       val=val.to(device), upstream=upstream.to(device), downstream=downstream.to(device),
                       timings=timings, pretrained=pretrained)


def post_train(
    start: SearchStart, space: SearchSpace, up_name: str, down_name: str, settings: SearchSettings,
    history: list, tag: str
) -> tuple[Chain, dict]:
    """Re-optimise the selected pair (DARTS, SPOS) as one chain and evaluate it on validation.

    Appends the re-optimisation's epochs to ``history`` and its wall time to
    ``start.timings["posttrain"]``; returns the chain and its validation metrics.
    """
    t0 = time.perf_counter()
    chain = Chain.from_candidates(start.upstream[up_name], start.downstream[down_name], space.task)
    history += reoptimise(chain, start.train, start.val, settings, start.kinematics, tag=tag)
    start.timings["posttrain"] = time.perf_counter() - t0
    metrics = evaluate_chain(chain, start.val, start.kinematics, settings.v1, settings.eval_batch_size)
    return chain, metrics


@torch.no_grad()
def _predict_upstream(
    model: nn.Module, data: TauEventData, kinematics: JetKinematics, settings: SearchSettings
) -> Tensor:
    model.eval()
    outs = []
    for batch in iterate_batches(data, settings.eval_batch_size):
        inputs, _ = make_batch(batch, kinematics)
        outs.append(model(inputs))
    return torch.cat(outs)


def chain_loss(chain: Chain, inputs: Inputs, targets: Targets, v1: float) -> Tensor:
    """``v_1 L_1 + v_2 L_2`` of the connected chain on a batch."""
    u, logit = chain(inputs)
    loss = (1.0 - v1) * event_loss(logit, targets)
    if v1 > 0:
        loss = loss + v1 * chain.task.loss(u, targets)
    return loss


def reoptimise(
    chain: Chain,
    train: TauEventData,
    val: TauEventData,
    settings: SearchSettings,
    kinematics: JetKinematics,
    tag: str = "reoptimise",
) -> list[dict]:
    """Train the connected chain on ``v_1 L_1 + v_2 L_2`` (paper: re-optimisation / post-training),
    early stopping on the same quantity on validation; the best epoch is restored."""
    params = trainable([chain])
    if not params:
        return []
    optimizer = make_optimizer(params, settings.lr)
    v1 = float(settings.v1)

    def step(inputs: Inputs, targets: Targets) -> float:
        return optimizer_step(optimizer, chain_loss(chain, inputs, targets, v1))

    def validate() -> float:
        return evaluate_chain(chain, val, kinematics, v1, settings.eval_batch_size)["total"]

    with validation(False):
        return run_epochs(
            chain, step, validate, train, kinematics, settings,
            epochs=settings.posttrain_epochs, patience=settings.patience, tag=tag,
        )


def train_on_upstream_outputs(
    chain: Chain,
    train: TauEventData,
    val: TauEventData,
    settings: SearchSettings,
    kinematics: JetKinematics,
    tag: str = "without_reoptimisation",
) -> list[dict]:
    """The chain *without* re-optimisation (MSNAS paper, section 4.4.1): the Task-1 model of
    ``chain`` is frozen and its outputs, not the truth, are the Task-2 model's input; the Task-2
    model is trained on the event loss ``L_2`` alone.

    The Task-1 parameters get ``requires_grad = False`` and the Task-1 model stays in eval mode
    (they stay so afterwards: the returned chain is the frozen pipeline). The Task-2 model is
    trained from whatever weights it has (the study passes the same seeded initialisation that its
    pre-training on truth started from), for ``settings.pretrain_epochs`` epochs at most (it is a
    training of one model from scratch, like pre-training) with ``settings.patience``, early
    stopping on the validation ``L_2`` of the chain; the best epoch is restored. ``settings.v1``
    plays no role.

    Returns:
        One ``{"phase", "epoch", "train_loss", "val_loss", "seconds"}`` dict per epoch.
    """
    upstream, downstream = chain.upstream, chain.downstream
    for p in upstream.parameters():
        p.requires_grad_(False)
    upstream.eval()
    params = trainable([downstream])
    if not params:
        return []
    optimizer = make_optimizer(params, settings.lr)
    task = chain.task

    def step(inputs: Inputs, targets: Targets) -> float:
        with torch.no_grad():  # frozen Task 1: its outputs are data for Task 2
            u = upstream(inputs)
        logit = downstream(inputs, task.link(u, inputs))
        return optimizer_step(optimizer, event_loss(logit, targets))

    def validate() -> float:
        loss2 = evaluate_chain(chain, val, kinematics, 0.0, settings.eval_batch_size)["loss2"]
        upstream.eval()  # evaluate_chain leaves the whole chain in eval mode: fine for Task 1
        return loss2

    with validation(False):
        # run_epochs switches only the Task-2 model between train and eval mode, and keeps its
        # best state: the Task-1 model never leaves eval mode.
        return run_epochs(
            downstream, step, validate, train, kinematics, settings,
            epochs=settings.pretrain_epochs, patience=settings.patience, tag=tag,
        )
