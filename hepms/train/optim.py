"""The one place where hepms builds an optimizer.

Every training loop of the package (the multi-step :class:`~hepms.train.Trainer`, the learned loss
weights of GradNorm and DWA, the selection study's grid / DARTS / SPOS searches and its validity
check) gets its optimizer from :func:`make_optimizer`, so a change of optimizer or of its options
(e.g. a fused kernel) is made once and reaches all of them.
"""
from __future__ import annotations

from typing import Any, Iterable, Union

import torch

__all__ = ["make_optimizer"]

#: What ``params`` may be: tensors, or parameter groups (dicts with a ``"params"`` entry).
Params = Union[Iterable[torch.Tensor], Iterable[dict[str, Any]]]


def make_optimizer(params: Params, lr: float, *, fused: bool = False) -> torch.optim.Optimizer:
    """Adam with learning rate ``lr`` over ``params`` (tensors or parameter groups).

    Adam with torch's default betas and no weight decay, as in the reference study. ``fused``:
    torch's fused implementation (one kernel per parameter for the whole update; the same
    algorithm, updates equal up to float rounding).

    Raises:
        ValueError: ``lr`` is not a positive finite number, or ``params`` is empty.
    """
    lr = float(lr)
    if not lr > 0 or lr == float("inf"):
        raise ValueError(f"learning rate must be a positive finite number, got {lr!r}")
    return torch.optim.Adam(params, lr=lr, fused=True if fused else None)
