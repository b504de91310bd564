"""Training the multi-step model: losses, loss balancers, strategies and the Trainer.

* :mod:`hepms.train.losses`: :func:`bce_loss`, :func:`mse_probability_loss`,
  :func:`momentum_loss`.
* :mod:`hepms.train.balancers`: :class:`FixedWeights`, :class:`UncertaintyWeighting`,
  :class:`GradNorm`, :class:`DynamicWeightAverage`, :func:`make_balancer`.
* :mod:`hepms.train.strategies`: ``simultaneous``, ``step_by_step``, ``w1_zero``,
  ``pretrain_truth`` as sequences of :class:`Phase`.
* :mod:`hepms.train.trainer`: :class:`TrainConfig`, :class:`Trainer`, :class:`History`.
"""
from __future__ import annotations

from hepms.train.balancers import (
    BALANCERS,
    Balancer,
    DynamicWeightAverage,
    FixedWeights,
    GradNorm,
    UncertaintyWeighting,
    make_balancer,
)
from hepms.train.losses import (
    CLASSIFICATION_LOSSES,
    bce_loss,
    classification_loss,
    momentum_loss,
    mse_probability_loss,
)
from hepms.train.strategies import STRATEGIES, Phase, phases_for
from hepms.train.trainer import EarlyStopping, History, TrainConfig, Trainer

__all__ = [
    "Balancer",
    "FixedWeights",
    "UncertaintyWeighting",
    "GradNorm",
    "DynamicWeightAverage",
    "make_balancer",
    "BALANCERS",
    "bce_loss",
    "mse_probability_loss",
    "momentum_loss",
    "classification_loss",
    "CLASSIFICATION_LOSSES",
    "Phase",
    "STRATEGIES",
    "phases_for",
    "TrainConfig",
    "Trainer",
    "History",
    "EarlyStopping",
]
