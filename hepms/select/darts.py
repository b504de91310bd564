"""DARTS for multi-step models (MSNAS paper, section 3.1 and Algorithm 1).

All candidates of a task run in parallel; their outputs are mixed with softmax weights of the
architecture parameters ``alpha_t``::

    y_t = sum_i softmax(alpha_t)_i * y_{t,i}

(Task-1 outputs are mixed in their own space: tau logits or calibrated ``(pT/100, eta, phi)``;
Task-2 outputs are event logits, as in the paper). Every Task-2 candidate receives the *mixed*
Task-1 output. The loss is the paper's::

    L = sum_t v_t * ( L_t(y_t) + epsilon * sum_i L_t(y_{t,i}) ),   sum_t v_t = 1

The first term makes ``alpha`` learnable; the per-model terms keep every candidate's own output
close to its target (without them, parallel models can drift in compensating directions while the
mixture stays good, and the intermediate output stops meaning anything).

Optimisation (first-order DARTS): for every training batch, one Adam step on ``alpha`` with the
loss of a *validation* batch, then one Adam step on the model weights with the loss of the
training batch. Early stopping watches the full validation loss and restores the best epoch's
weights and ``alpha``. The selected pair is the argmax of ``alpha`` per task; the chain of the two
is then post-trained on ``v_1 L_1 + v_2 L_2`` (training split, early stopping on validation).

Cost: one pass of every candidate per batch: ``O(N_1 + N_2)``.
"""
from __future__ import annotations

import logging
import time
from typing import Iterator, NamedTuple, Optional

import torch
from torch import Tensor, nn

from hepms.data import TauEventData
from hepms.ops import validation
from hepms.select.data import Inputs, JetKinematics, Targets, iterate_batches, make_batch
from hepms.select.space import SearchSpace
from hepms.select.tasks import UpstreamTask, event_loss
from hepms.select.training import (
    Pretrained,
    SearchSettings,
    SelectionResult,
    epoch_generator,
    optimizer_step,
    post_train,
    run_epochs,
    start_search,
    trainable,
)
from hepms.train.optim import make_optimizer

log = logging.getLogger(__name__)

__all__ = ["DartsSupernet", "darts_search"]


class SupernetOutputs(NamedTuple):
    """Outputs of every candidate and of the mixtures."""

    upstream: Tensor  # [n1, B, k]
    upstream_mix: Tensor  # [B, k]
    downstream: Tensor  # [n2, E]
    downstream_mix: Tensor  # [E]


class DartsSupernet(nn.Module):
    """All candidates in parallel, mixed by softmax architecture weights (initialised uniform).

    Args:
        upstream, downstream: the candidates (``nn.ModuleDict``).
        task: the Task-1 definition.
        v1: Task-1 weight (``v_2 = 1 - v_1``).
        epsilon: weight of the per-model loss terms.
    """

    def __init__(
        self,
        upstream: nn.ModuleDict,
        downstream: nn.ModuleDict,
        task: UpstreamTask,
        v1: float = 0.5,
        epsilon: float = 1.0,
    ) -> None:
        super().__init__()
        self.upstream = upstream
        self.downstream = downstream
        self.task = task
        self.v1 = float(v1)
        self.epsilon = float(epsilon)
        self.alpha_upstream = nn.Parameter(torch.zeros(len(upstream)))
        self.alpha_downstream = nn.Parameter(torch.zeros(len(downstream)))

    def architecture_parameters(self) -> list[nn.Parameter]:
        return [self.alpha_upstream, self.alpha_downstream]

    def model_parameters(self) -> list[nn.Parameter]:
        return trainable([self.upstream, self.downstream])

    def weights(self) -> tuple[Tensor, Tensor]:
        """``softmax(alpha)`` per task (each sums to 1)."""
        return torch.softmax(self.alpha_upstream, 0), torch.softmax(self.alpha_downstream, 0)

    def named_weights(self) -> dict[str, dict[str, float]]:
        w1, w2 = self.weights()
        return {
            "upstream": dict(zip(self.upstream.keys(), w1.tolist())),
            "downstream": dict(zip(self.downstream.keys(), w2.tolist())),
        }

    def forward(self, inputs: Inputs) -> SupernetOutputs:
        w1, w2 = self.weights()
        u = torch.stack([m(inputs) for m in self.upstream.values()])
        u_mix = torch.einsum("i,ibk->bk", w1.to(u.dtype), u)
        link = self.task.link(u_mix, inputs)
        y = torch.stack([m(inputs, link) for m in self.downstream.values()])
        y_mix = torch.einsum("j,je->e", w2.to(y.dtype), y)
        return SupernetOutputs(u, u_mix, y, y_mix)

    def loss(self, out: SupernetOutputs, targets: Targets) -> Tensor:
        """The paper's DARTS loss (see the module docstring)."""
        v1, v2, eps = self.v1, 1.0 - self.v1, self.epsilon
        total = v2 * (
            event_loss(out.downstream_mix, targets)
            + eps * sum(event_loss(y, targets) for y in out.downstream)
        )
        if v1 > 0:
            total = total + v1 * (
                self.task.loss(out.upstream_mix, targets)
                + eps * sum(self.task.loss(u, targets) for u in out.upstream)
            )
        return total

    def selected(self) -> tuple[str, str]:
        """Argmax of ``alpha`` per task."""
        up = list(self.upstream.keys())[int(self.alpha_upstream.argmax())]
        down = list(self.downstream.keys())[int(self.alpha_downstream.argmax())]
        return up, down


def _cycle_batches(
    data: TauEventData, batch_size: int, seed: int
) -> Iterator[TauEventData]:
    """Shuffled validation batches forever (a new seeded order on every pass)."""
    epoch = 0
    while True:
        yield from iterate_batches(
            data, batch_size, shuffle=True, generator=epoch_generator(seed, "darts/alpha", epoch)
        )
        epoch += 1


@torch.no_grad()
def _validation_loss(
    net: DartsSupernet, val: TauEventData, kinematics: JetKinematics, batch_size: int
) -> float:
    parts = []
    for batch in iterate_batches(val, batch_size):
        inputs, _ = make_batch(batch, kinematics)
        parts.append(net(inputs))
    out = SupernetOutputs(
        torch.cat([p.upstream for p in parts], 1),
        torch.cat([p.upstream_mix for p in parts], 0),
        torch.cat([p.downstream for p in parts], 1),
        torch.cat([p.downstream_mix for p in parts], 0),
    )
    _, targets = make_batch(val, kinematics)
    return float(net.loss(out, targets))


def darts_search(
    space: SearchSpace,
    train: TauEventData,
    val: TauEventData,
    settings: Optional[SearchSettings] = None,
    *,
    pretrained: Optional[Pretrained] = None,
) -> SelectionResult:
    """DARTS model selection (paper Algorithm 1): pre-train, search ``alpha``, select, post-train.

    Args:
        space: the candidates (dummies included, as in the paper).
        train: training split: model weights.
        val: validation split: architecture weights, early stopping.
        settings: :class:`SearchSettings` (``v1``, ``epsilon``, ``alpha_lr``, ...).
        pretrained: shared pre-trained weights (None: pre-train here).

    Returns:
        A :class:`SelectionResult`; ``alpha_history`` holds the softmax weights after every
        epoch (epoch 0: before the search) and the validation loss.
    """
    settings = settings or SearchSettings()
    started = time.perf_counter()
    start = start_search(space, train, val, settings, pretrained)
    device, kinematics, timings = start.device, start.kinematics, start.timings
    train, val, upstream, downstream = start.train, start.val, start.upstream, start.downstream
    net = DartsSupernet(upstream, downstream, space.task, settings.v1, settings.epsilon).to(device)

    t0 = time.perf_counter()
    w_params = net.model_parameters()
    w_opt = make_optimizer(w_params, settings.lr) if w_params else None
    a_opt = make_optimizer(net.architecture_parameters(), settings.alpha_lr)
    val_batches = _cycle_batches(val, settings.batch_size, settings.seed)
    alphas = net.architecture_parameters()

    def step(inputs: Inputs, targets: Targets) -> float:
        # 1) architecture weights on a validation batch (first-order DARTS).
        v_inputs, v_targets = make_batch(next(val_batches), kinematics)
        v_loss = net.loss(net(v_inputs), v_targets)
        grads = torch.autograd.grad(v_loss, alphas, allow_unused=True)
        a_opt.zero_grad(set_to_none=True)
        for a, g in zip(alphas, grads):
            a.grad = torch.zeros_like(a) if g is None else g
        a_opt.step()
        # 2) model weights on the training batch.
        loss = net.loss(net(inputs), targets)
        if w_opt is None:
            return float(loss.detach())
        return optimizer_step(w_opt, loss)

    alpha_history = [{"epoch": 0, "val_loss": None, **net.named_weights()}]

    def record(epoch: int, val_loss: float) -> None:
        alpha_history.append({"epoch": epoch + 1, "val_loss": val_loss, **net.named_weights()})

    with validation(False):
        history = list(start.pretrained.history) + run_epochs(
            net,
            step,
            lambda: _validation_loss(net, val, kinematics, settings.eval_batch_size),
            train,
            kinematics,
            settings,
            epochs=settings.search_epochs,
            patience=settings.search_patience,
            tag="darts/search",
            on_epoch=record,
        )
    timings["search"] = time.perf_counter() - t0
    up_name, down_name = net.selected()
    final_weights = net.named_weights()
    log.info("DARTS selected %s | %s (weights %s)", up_name, down_name, final_weights)

    chain, metrics = post_train(start, space, up_name, down_name, settings, history, tag="darts/posttrain")
    timings["total"] = time.perf_counter() - started
    return SelectionResult(
        method="darts",
        upstream=up_name,
        downstream=down_name,
        chain=chain,
        val_metrics=metrics,
        alpha_history=alpha_history,
        history=history,
        timings=timings,
        settings=settings.to_dict(),
        candidates={
            "upstream": space.upstream_names,
            "downstream": space.downstream_names,
            "selected_weights": final_weights,
        },
    )
