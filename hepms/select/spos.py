"""SPOS-NAS for multi-step models (MSNAS paper, section 3.2 and Algorithm 2).

Weight determination ("supernet" training): for every training batch one Task-1 candidate ``i``
and one Task-2 candidate ``j`` are drawn uniformly (seeded) and only that path is updated, on the
paper's loss ``E_i[ sum_t v_t L_t(y_{t,i}) ]``, i.e. ``v_1 L_1(u_i) + v_2 L_2(y_ij)`` per batch.
Early stopping watches the validation loss of a fixed, seeded set of ``max(N_1, N_2)`` paths that
covers every candidate (the same paths every epoch, so epochs compare; ``O(N)`` per epoch).

Model search: every combination is evaluated on the validation split with the supernet weights
(forward passes only, ``O(N_1 N_2)`` but cheap), the best by the criterion is selected, and its
chain is post-trained like DARTS's.

Dummies (``zeros`` / ``noise``) are left out by default, as in the paper: a dummy on a sampled
path feeds the other candidate garbage and corrupts its update.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Optional

import torch
from torch import nn

from hepms.data import TauEventData
from hepms.ops import validation
from hepms.select.data import Inputs, Targets
from hepms.select.space import Chain, SearchSpace
from hepms.select.tasks import event_loss
from hepms.select.training import (
    Pretrained,
    SearchSettings,
    SelectionResult,
    optimizer_step,
    evaluate_chain,
    pair_key,
    post_train,
    run_epochs,
    score,
    start_search,
    trainable,
)
from hepms.train.optim import make_optimizer

log = logging.getLogger(__name__)

__all__ = ["spos_search"]


def _validation_paths(n1: int, n2: int, seed: int) -> list[tuple[int, int]]:
    """``max(n1, n2)`` pairs in which every candidate of both tasks appears."""
    g = torch.Generator().manual_seed(int(seed) + 7919)
    n = max(n1, n2)
    ups = [i % n1 for i in torch.randperm(n, generator=g).tolist()]
    downs = [j % n2 for j in torch.randperm(n, generator=g).tolist()]
    return list(zip(ups, downs))


def spos_search(
    space: SearchSpace,
    train: TauEventData,
    val: TauEventData,
    settings: Optional[SearchSettings] = None,
    *,
    pretrained: Optional[Pretrained] = None,
) -> SelectionResult:
    """SPOS-NAS model selection: pre-train, single-path supernet training, evaluate all pairs on
    validation, post-train the best.

    Args:
        space: the candidates (dummies are removed unless ``settings.spos_include_dummies``).
        train: training split: model weights.
        val: validation split: early stopping and the choice.
        settings: :class:`SearchSettings`.
        pretrained: shared pre-trained weights (None: pre-train here).

    Returns:
        A :class:`SelectionResult` with every pair's supernet validation metrics in ``scores``.
    """
    settings = settings or SearchSettings()
    if not settings.spos_include_dummies:
        full = space
        space = space.without_dummies()
        dropped = sorted(set(full.upstream_names + full.downstream_names)
                         - set(space.upstream_names + space.downstream_names))
        if dropped:
            log.info("SPOS: leaving out the dummy candidates %s", dropped)
    started = time.perf_counter()
    start = start_search(space, train, val, settings, pretrained)
    device, kinematics, timings = start.device, start.kinematics, start.timings
    train, val, upstream, downstream = start.train, start.val, start.upstream, start.downstream
    supernet = nn.ModuleDict({"upstream": upstream, "downstream": downstream}).to(device)
    ups, downs = list(upstream.values()), list(downstream.values())
    task, v1 = space.task, float(settings.v1)

    t0 = time.perf_counter()
    params = trainable([supernet])
    optimizer = make_optimizer(params, settings.lr) if params else None
    sampler = torch.Generator().manual_seed(int(settings.seed) + 104729)

    def path_loss(i: int, j: int, inputs: Inputs, targets: Targets) -> torch.Tensor:
        u = ups[i](inputs)
        loss = (1.0 - v1) * event_loss(downs[j](inputs, task.link(u, inputs)), targets)
        if v1 > 0:
            loss = loss + v1 * task.loss(u, targets)
        return loss

    def step(inputs: Inputs, targets: Targets) -> float:
        i = int(torch.randint(len(ups), (1,), generator=sampler))
        j = int(torch.randint(len(downs), (1,), generator=sampler))
        loss = path_loss(i, j, inputs, targets)
        return float(loss.detach()) if optimizer is None else optimizer_step(optimizer, loss)

    paths = _validation_paths(len(ups), len(downs), settings.seed)

    def validate() -> float:
        values = []
        for i, j in paths:
            chain = Chain(ups[i], downs[j], task)
            values.append(evaluate_chain(chain, val, kinematics, v1, settings.eval_batch_size)["total"])
        return float(sum(values) / len(values))

    with validation(False):
        history = list(start.pretrained.history) + run_epochs(
            supernet, step, validate, train, kinematics, settings,
            epochs=settings.search_epochs, patience=settings.search_patience, tag="spos/supernet",
        )
    timings["search"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    scores: dict[str, dict] = {}
    best = (math.inf, "", "")
    with validation(False):
        for up_name, up in upstream.items():
            for down_name, down in downstream.items():
                metrics = evaluate_chain(Chain(up, down, task), val, kinematics, v1, settings.eval_batch_size)
                scores[pair_key(up_name, down_name)] = metrics
                value = score(metrics, settings.criterion)
                if value < best[0] or not best[1]:
                    best = (value, up_name, down_name)
    timings["evaluate"] = time.perf_counter() - t0
    _, up_name, down_name = best
    log.info("SPOS selected %s | %s", up_name, down_name)

    chain, metrics = post_train(start, space, up_name, down_name, settings, history, tag="spos/posttrain")
    timings["total"] = time.perf_counter() - started
    return SelectionResult(
        method="spos",
        upstream=up_name,
        downstream=down_name,
        chain=chain,
        val_metrics=metrics,
        scores=scores,
        history=history,
        timings=timings,
        settings=settings.to_dict(),
        candidates={"upstream": space.upstream_names, "downstream": space.downstream_names},
    )
