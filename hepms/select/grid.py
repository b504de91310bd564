"""Grid search over every (Task-1, Task-2) pair: the baseline of the MSNAS study.

For each pair: start from the pre-trained (on truth) weights of both candidates, connect them,
re-optimise the chain on ``v_1 L_1 + v_2 L_2`` (training split, early stopping on validation) and
score it on validation. The best-scoring pair is selected; its re-optimised chain is the result.
Cost: ``N_1 + N_2`` pre-trainings plus ``N_1 * N_2`` re-optimisations, i.e. ``O(N^2)``.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Optional

from hepms.data import TauEventData
from hepms.ops import validation
from hepms.select.space import Chain, SearchSpace
from hepms.select.training import (
    Pretrained,
    SearchSettings,
    SelectionResult,
    evaluate_chain,
    pair_key,
    reoptimise,
    score,
    start_search,
)
from hepms.train.trainer import cpu_state

log = logging.getLogger(__name__)

__all__ = ["grid_search"]


def grid_search(
    space: SearchSpace,
    train: TauEventData,
    val: TauEventData,
    settings: Optional[SearchSettings] = None,
    *,
    pretrained: Optional[Pretrained] = None,
) -> SelectionResult:
    """Select a pair by re-optimising every combination and scoring it on validation.

    Args:
        space: the candidates.
        train: training split (weights).
        val: validation split (early stopping and the choice).
        settings: :class:`SearchSettings` (``v1``, ``criterion``, epochs, ...).
        pretrained: weights from :func:`~hepms.select.training.pretrain` on the same space and
            data, to share the pre-training between methods (None: pre-train here).

    Returns:
        A :class:`SelectionResult` with the best pair's re-optimised chain and every pair's
        validation metrics in ``scores``.
    """
    settings = settings or SearchSettings()
    started = time.perf_counter()
    start = start_search(space, train, val, settings, pretrained)
    kinematics, timings = start.kinematics, start.timings
    train, val, upstream, downstream = start.train, start.val, start.upstream, start.downstream

    t0 = time.perf_counter()
    scores: dict[str, dict] = {}
    history: list[dict] = list(start.pretrained.history)
    best: tuple[float, str, str, Optional[dict]] = (math.inf, "", "", None)
    for up_name, up in upstream.items():
        for down_name, down in downstream.items():
            chain = Chain.from_candidates(up, down, space.task)
            history += reoptimise(
                chain, train, val, settings, kinematics, tag=f"grid/{up_name}|{down_name}"
            )
            with validation(False):
                metrics = evaluate_chain(chain, val, kinematics, settings.v1, settings.eval_batch_size)
            scores[pair_key(up_name, down_name)] = metrics
            value = score(metrics, settings.criterion)
            log.info("grid %s | %s: val total %.4f, AUC %.4f", up_name, down_name,
                     metrics["total"], metrics["auc_event"])
            if value < best[0] or best[3] is None:
                best = (value, up_name, down_name, cpu_state(chain))
    timings["reoptimise"] = time.perf_counter() - t0

    _, up_name, down_name, state = best
    chain = Chain.from_candidates(upstream[up_name], downstream[down_name], space.task)
    assert state is not None
    chain.load_state_dict(state)
    # Wall time of this call: includes the pre-training unless it was passed in.
    timings["total"] = time.perf_counter() - started
    return SelectionResult(
        method="grid",
        upstream=up_name,
        downstream=down_name,
        chain=chain,
        val_metrics=scores[pair_key(up_name, down_name)],
        scores=scores,
        history=history,
        timings=timings,
        settings=settings.to_dict(),
        candidates={"upstream": space.upstream_names, "downstream": space.downstream_names},
    )
