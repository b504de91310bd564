"""Task losses: classification (BCE with logits, MSE on the probability) and momentum regression.

All losses return a scalar mean over the entries (jets or events); optional per-entry weights
give a weighted mean ``sum(w * l) / sum(w)``.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "bce_loss",
    "mse_probability_loss",
    "momentum_loss",
    "classification_loss",
    "CLASSIFICATION_LOSSES",
]


def _weighted_mean(per_entry: Tensor, weights: Optional[Tensor]) -> Tensor:
    if weights is None:
        return per_entry.mean() if per_entry.numel() else per_entry.sum()
    if weights.shape != per_entry.shape:
        raise ValueError(
            f"weights must have the shape of the losses {tuple(per_entry.shape)}, "
            f"got {tuple(weights.shape)}"
        )
    # clamp: a batch whose weights are all zero contributes 0, not NaN
    return (weights * per_entry).sum() / weights.sum().clamp_min(torch.finfo(per_entry.dtype).tiny)


def _check(logits: Tensor, targets: Tensor, name: str) -> None:
    if logits.shape != targets.shape:
        raise ValueError(
            f"{name}: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ"
        )


def bce_loss(logits: Tensor, targets: Tensor, weights: Optional[Tensor] = None) -> Tensor:
    """Binary cross-entropy on logits (the numerically stable form
    ``max(y, 0) - y t + log(1 + exp(-|y|))``), mean over entries.

    Args:
        logits: ``[n]`` raw scores.
        targets: ``[n]`` labels in {0, 1} (floating).
        weights: optional ``[n]`` per-entry weights.
    """
    _check(logits, targets, "bce_loss")
    per_entry = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    return _weighted_mean(per_entry, weights)


def mse_probability_loss(
    logits: Tensor, targets: Tensor, weights: Optional[Tensor] = None
) -> Tensor:
    """Mean squared error between ``sigmoid(logits)`` and the labels (the study's alternative
    upstream loss: a loss of a different scale than the downstream cross-entropy)."""
    _check(logits, targets, "mse_probability_loss")
    per_entry = (torch.sigmoid(logits) - targets.to(logits.dtype)) ** 2
    return _weighted_mean(per_entry, weights)


def momentum_loss(prediction: Tensor, target: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Squared momentum error ``|p_pred - p_true|^2`` (summed over components), mean over entries.

    Momenta are in units of 100 GeV (``hepms.data`` stores the targets so), which brings this
    chi-square-like loss to the scale of a cross-entropy (the MSNAS paper scales by 1e-4 GeV^-2
    for the same reason).

    Args:
        prediction: ``[n, R]``.
        target: ``[n, R]``.
        mask: optional ``[n]`` boolean, the entries that have a target (tau jets); the mean runs
            over them only (0 when there is none).
    """
    if prediction.shape != target.shape:
        raise ValueError(
            f"momentum_loss: prediction {tuple(prediction.shape)} and target "
            f"{tuple(target.shape)} differ"
        )
    per_entry = ((prediction - target.to(prediction.dtype)) ** 2).sum(-1)
    if mask is None:
        return per_entry.mean() if per_entry.numel() else per_entry.sum()
    weights = mask.to(per_entry.dtype)
    return (weights * per_entry).sum() / weights.sum().clamp_min(1.0)


CLASSIFICATION_LOSSES: dict[str, Callable[..., Tensor]] = {
    "bce": bce_loss,
    "mse": mse_probability_loss,
}


def classification_loss(name: str) -> Callable[..., Tensor]:
    """The classification loss called ``name`` (``"bce"`` or ``"mse"``)."""
    try:
        return CLASSIFICATION_LOSSES[name]
    except KeyError:
        raise ValueError(
            f"unknown classification loss {name!r}; choose from {sorted(CLASSIFICATION_LOSSES)}"
        ) from None
