"""Scalability: wall time of grid search, DARTS and SPOS-NAS versus candidates per task.

As in the MSNAS paper (section 4.4.3): the base candidate set of each task is replicated with
independent initialisations (``name``, ``name#2``, ...), so the number of models per task
``N = copies * base`` grows while the problem stays the same; each method runs end to end
(pre-training included) and its wall time is fitted with ``t = C * N^a`` by least squares in
log-log space. Expected: ``a ~ 1`` for DARTS and SPOS (every candidate trained once per batch or
sampled), ``a ~ 2`` for grid search (``N^2`` pairs re-optimised); SPOS's final evaluation of
every pair is ``O(N^2)`` too, but forward-only, so it shows only at large ``N``.

For timings, phases run a fixed number of epochs (``early_stopping=False``), so that the time
measures the algorithm, not when a noisy validation curve happened to stop.
"""
from __future__ import annotations

import gc
import logging
import math
import time
from typing import Mapping, Optional, Sequence

import numpy as np

from hepms.data import TauEventData
from hepms.select.space import SearchSpace
from hepms.select.training import SearchSettings

log = logging.getLogger(__name__)

__all__ = ["fit_power_law", "time_methods"]


def fit_power_law(n: Sequence[float], t: Sequence[float]) -> dict[str, float]:
    """Least-squares fit of ``log t = log C + a log n``.

    Returns:
        ``{"C", "a", "a_err", "points"}`` (``a_err``: standard error of the slope; NaN with two
        distinct points or fewer).

    Raises:
        ValueError: fewer than two points, or non-positive values.
    """
    x = np.log(np.asarray(n, dtype=float))
    y = np.log(np.asarray(t, dtype=float))
    if x.size < 2 or x.size != y.size:
        raise ValueError(f"need at least two (n, t) points of equal length, got {x.size} and {y.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("n and t must be positive")
    design = np.stack([np.ones_like(x), x], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ coef
    dof = x.size - 2
    if dof > 0 and np.unique(x).size > 2:
        sigma2 = float(residual @ residual) / dof
        cov = sigma2 * np.linalg.inv(design.T @ design)
        a_err = float(np.sqrt(cov[1, 1]))
    else:
        a_err = math.nan
    return {"C": float(np.exp(coef[0])), "a": float(coef[1]), "a_err": a_err, "points": int(x.size)}


def time_methods(
    base: SearchSpace,
    train: TauEventData,
    val: TauEventData,
    settings: SearchSettings,
    copies: Sequence[int],
    methods: Sequence[str] = ("grid", "darts", "spos"),
    repeats: int = 1,
    warmup: bool = True,
    test: Optional[TauEventData] = None,
) -> list[dict]:
    """Time each method on ``copies`` replicas of ``base`` (dummies excluded).

    Args:
        base: the base candidate set (dummies are removed).
        train, val: the data.
        settings: epochs etc. (``early_stopping`` is forced off).
        copies: replica counts; ``N = copies * len(base set)`` per task.
        methods: method names.
        repeats: runs per point (different seeds).
        warmup: one untimed small run first (imports, allocator, first-call overheads).
        test: when given, the selected chain is evaluated on it after the timed selection
            (``test_auc_event``, ``test_mse`` / ``test_auc_tau``; paper Fig. 7b).

    Returns:
        ``{"method", "copies", "n_models", "repeat", "seconds", "cpu_seconds", "phases", "pair",
        "auc_event"}`` per run (``auc_event``: validation AUC of the selected chain), plus the
        ``test_*`` metrics when ``test`` is given.
    """
    from hepms.select import select
    from hepms.select.training import evaluate_chain

    base = base.without_dummies()
    n1, n2 = base.size()
    if n1 != n2:
        log.warning("base sets differ in size (%d vs %d): N is reported as the Task-1 count", n1, n2)
    settings = settings.replace(early_stopping=False, progress=False)
    if warmup:
        small = settings.replace(pretrain_epochs=1, search_epochs=1, posttrain_epochs=1)
        for method in methods:
            select(method, base, train, val, small)
    rows: list[dict] = []
    for c in copies:
        space = base.replicated(int(c))
        for repeat in range(repeats):
            for method in methods:
                gc.collect()
                cpu = time.process_time()
                started = time.perf_counter()
                result = select(method, space, train, val, settings.replace(seed=repeat))
                seconds = time.perf_counter() - started
                cpu = time.process_time() - cpu
                row = {
                    "method": method,
                    "copies": int(c),
                    "n_models": space.size()[0],
                    "repeat": repeat,
                    "seconds": seconds,
                    "cpu_seconds": cpu,
                    "phases": {k: round(v, 4) for k, v in result.timings.items()},
                    "pair": list(result.pair),
                    "auc_event": result.val_metrics.get("auc_event"),
                }
                if test is not None:
                    metrics = evaluate_chain(result.chain, test.to(settings.device), space.kinematics(settings.device),
                                             settings.v1, settings.eval_batch_size)
                    row.update({f"test_{k}": v for k, v in metrics.items()})
                rows.append(row)
                log.info("scaling %s N=%d repeat %d: %.2f s", method, space.size()[0], repeat, seconds)
    return rows


def fit_all(rows: Sequence[Mapping], key: str = "seconds") -> dict[str, dict]:
    """:func:`fit_power_law` per method over all its runs."""
    out: dict[str, dict] = {}
    for method in sorted({r["method"] for r in rows}):
        mine = [r for r in rows if r["method"] == method]
        if len({r["n_models"] for r in mine}) >= 2:
            out[method] = fit_power_law([r["n_models"] for r in mine], [r[key] for r in mine])
    return out


def fit_phase(rows: Sequence[Mapping], phase: str) -> Optional[dict]:
    """Power law of one phase's time (e.g. the grid's ``"reoptimise"``) over the runs that have it."""
    mine = [r for r in rows if phase in r.get("phases", {}) and r["phases"][phase] > 0]
    if len({r["n_models"] for r in mine}) < 2:
        return None
    return fit_power_law([r["n_models"] for r in mine], [r["phases"][phase] for r in mine])
