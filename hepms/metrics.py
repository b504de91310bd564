"""Classifier metrics: ROC AUC, ROC curve points, background rejection at fixed signal efficiency.

The ROC computations are scikit-learn's (``sklearn.metrics.roc_auc_score`` / ``roc_curve``);
this module only converts inputs (torch tensors, numpy arrays, lists), checks them, and phrases the
curve the way physics analyses read it (signal efficiency vs background efficiency / rejection).
The counting statistics of the figures' error bars are here too: Clopper-Pearson efficiency
intervals (``hist.intervals``) and rejections with asymmetric intervals or lower limits.

Example:
    >>> from hepms import metrics
    >>> labels = [0, 0, 1, 1]
    >>> scores = [0.1, 0.4, 0.35, 0.8]
    >>> metrics.roc_auc(labels, scores)
    0.75
    >>> metrics.background_rejection(labels, scores, signal_efficiency=1.0)   # 1 / 0.5
    2.0
"""
from __future__ import annotations

import logging
import math
from typing import Any, Optional

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "roc_auc",
    "roc_curve",
    "background_rejection",
    "background_efficiency",
    "background_efficiencies",
    "clopper_pearson",
    "rejection_interval",
]


def _to_numpy(x: Any, name: str) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().to("cpu")
            if x.dtype in (torch.bfloat16, torch.float16):
                x = x.float()
            x = x.numpy()
    except ImportError:  # pragma: no cover - torch is a dependency of hepms
        pass
    array = np.asarray(x)
    if array.ndim != 1:
        array = array.reshape(-1) if array.size == max(array.shape, default=0) else array
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    return array


def _inputs(labels: Any, scores: Any, weights: Any) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    y = _to_numpy(labels, "labels")
    s = _to_numpy(scores, "scores").astype(np.float64)
    w = None if weights is None else _to_numpy(weights, "weights").astype(np.float64)
    if y.shape != s.shape or (w is not None and w.shape != y.shape):
        raise ValueError(
            f"labels {y.shape}, scores {s.shape}"
            + ("" if w is None else f" and weights {w.shape}")
            + " must have the same length"
        )
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    classes = np.unique(y)
    if not np.isin(classes, (0, 1)).all():
        raise ValueError(f"labels must be 0 (background) or 1 (signal), got values {classes[:10]}")
    if classes.size < 2:
        raise ValueError(
            f"ROC needs both classes, but all {y.size} labels are {classes.tolist()}"
        )
    return y.astype(np.int64), s, w


def roc_auc(labels: Any, scores: Any, weights: Any = None) -> float:
    """Area under the ROC curve (scikit-learn's ``roc_auc_score``).

    Args:
        labels: 1 for signal, 0 for background (tensor, array or list).
        scores: higher means more signal-like (probabilities or logits alike).
        weights: optional per-entry weights.

    Raises:
        ValueError: one class only, non-binary labels, NaN scores, mismatched lengths.
    """
    from sklearn.metrics import roc_auc_score

    y, s, w = _inputs(labels, scores, weights)
    return float(roc_auc_score(y, s, sample_weight=w))


def roc_curve(
    labels: Any, scores: Any, weights: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve points ``(signal_efficiency, background_efficiency, thresholds)``.

    Both efficiencies rise from 0 to 1 as the threshold ``score >= t`` decreases (scikit-learn's
    ``roc_curve`` with ``drop_intermediate=False``: every distinct score is a point).
    """
    from sklearn.metrics import roc_curve as sk_roc_curve

    y, s, w = _inputs(labels, scores, weights)
    fpr, tpr, thresholds = sk_roc_curve(y, s, sample_weight=w, drop_intermediate=False)
    return tpr, fpr, thresholds


def background_efficiency(
    labels: Any, scores: Any, signal_efficiency: float = 0.5, weights: Any = None
) -> float:
    """Background efficiency at the given signal efficiency, linearly interpolated on the ROC."""
    if not 0.0 < signal_efficiency <= 1.0:
        raise ValueError(f"signal_efficiency must be in (0, 1], got {signal_efficiency}")
    return float(background_efficiencies(labels, scores, [signal_efficiency], weights)[0])


def background_efficiencies(
    labels: Any, scores: Any, signal_efficiencies: Any, weights: Any = None
) -> np.ndarray:
    """Background efficiencies at several signal efficiencies (each in ``(0, 1]``), linearly
    interpolated on the ROC: the ROC on a fixed grid, comparable between trials."""
    grid = np.asarray(signal_efficiencies, dtype=np.float64).reshape(-1)
    if grid.size == 0 or not ((grid > 0.0) & (grid <= 1.0)).all():
        raise ValueError(f"signal efficiencies must be in (0, 1], got {grid[:10]}")
    tpr, fpr, _ = roc_curve(labels, scores, weights)
    # tpr is non-decreasing; np.interp needs increasing x, so take the lowest fpr reaching each
    # tpr value (ties in tpr come from background-only threshold steps).
    unique_tpr, first = np.unique(tpr, return_index=True)
    return np.interp(grid, unique_tpr, fpr[first])


def background_rejection(
    labels: Any, scores: Any, signal_efficiency: float = 0.5, weights: Any = None
) -> float:
    """Background rejection ``1 / background efficiency`` at the given signal efficiency.

    Returns ``inf`` when no background passes the working point.
    """
    eff = background_efficiency(labels, scores, signal_efficiency, weights)
    return math.inf if eff <= 0.0 else 1.0 / eff


# ----------------------------------------------------------------------------------------------
# Counting statistics of efficiencies and rejections (the figures' error bars)
# ----------------------------------------------------------------------------------------------
ONE_SIGMA = 0.6826894921370859  # the central coverage of +-1 standard deviation


def _counts(passed: Any, total: Any) -> tuple[np.ndarray, np.ndarray]:
    k = np.asarray(passed, dtype=np.float64)
    n = np.asarray(total, dtype=np.float64)
    if k.shape != n.shape:
        raise ValueError(f"passed {k.shape} and total {n.shape} must have the same shape")
    if (k < 0).any() or (k > n).any() or not (np.isfinite(k).all() and np.isfinite(n).all()):
        raise ValueError("counts must be finite with 0 <= passed <= total")
    return k, n


def clopper_pearson(
    passed: Any, total: Any, coverage: float = ONE_SIGMA
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Efficiency ``passed / total`` with its Clopper-Pearson interval (``hist.intervals``).

    Returns:
        ``(efficiency, lower, upper)``, NaN where ``total == 0``. For ``passed == 0`` the lower
        bound is 0, for ``passed == total`` the upper bound is 1.
    """
    from hist.intervals import clopper_pearson_interval

    k, n = _counts(passed, total)
    empty = n == 0
    safe_n = np.where(empty, 1.0, n)  # the interval of 0/0 is undefined: computed on 0/1, then NaN
    lo, hi = clopper_pearson_interval(np.where(empty, 0.0, k), safe_n, coverage)
    eff = np.where(empty, np.nan, k / safe_n)
    return eff, np.where(empty, np.nan, lo), np.where(empty, np.nan, hi)


def rejection_interval(
    passed: Any, total: Any, coverage: float = ONE_SIGMA, limit_cl: float = 0.95
) -> dict[str, np.ndarray]:
    """Rejection ``total / passed`` with asymmetric errors, and lower limits where nothing passed.

    The interval of the rejection is that of the efficiency inverted: ``[1 / upper, 1 / lower]``
    of the Clopper-Pearson efficiency interval. Where ``passed == 0`` the rejection is unbounded
    above: ``lower_limit`` holds ``1 / u``, ``u`` the one-sided Clopper-Pearson upper limit on the
    efficiency at confidence ``limit_cl`` (``1 - (1 - cl)**(1 / n)``), and ``is_limit`` is True.

    Returns:
        ``rejection``, ``lower``, ``upper`` (NaN where nothing passed or ``total == 0``),
        ``lower_limit`` (NaN where something passed), ``is_limit`` (bool).
    """
    if not 0.0 < limit_cl < 1.0:
        raise ValueError(f"limit_cl must be in (0, 1), got {limit_cl}")
    k, n = _counts(passed, total)
    eff, lo, hi = clopper_pearson(k, n, coverage)
    is_limit = (k == 0) & (n > 0)
    # A one-sided upper limit at cl is the upper end of the central interval of coverage 2 cl - 1.
    _, _, limit_hi = clopper_pearson(k, n, 2.0 * limit_cl - 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        measured = k > 0
        return {
            "rejection": np.where(measured, 1.0 / eff, np.nan),
            "lower": np.where(measured, 1.0 / hi, np.nan),
            "upper": np.where(measured, 1.0 / lo, np.nan),
            "lower_limit": np.where(is_limit, 1.0 / limit_hi, np.nan),
            "is_limit": is_limit,
        }
