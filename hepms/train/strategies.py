"""Training strategies as sequences of phases.

A :class:`Phase` says which losses are computed, which sub-model is trained (the other one is
frozen or not run), whether the event model is fed the truth, and how the losses combine. The
:class:`~hepms.train.Trainer` runs the phases of a strategy in order, each with its own optimizer
and early stopping (restoring the phase's best weights before the next phase starts).

==================  =============================================================================
strategy            phases
==================  =============================================================================
``simultaneous``    ``joint``: both models, all losses, the configured balancer
``step_by_step``    ``upstream``: tau model on its loss(es); ``downstream``: tau model frozen,
                    event model on the event loss
``w1_zero``         ``joint`` with fixed weights 0 for the upstream loss(es), 1 for the event loss:
                    the tau label is never used (the study's ``(w1, w2) = (0, 1)`` row)
``pretrain_truth``  ``pretrain_upstream`` (tau model alone); ``pretrain_downstream`` (event model
                    alone, fed the true tau label as its intermediate input); ``reoptimise``: the
                    connected model, all losses, the configured balancer
==================  =============================================================================
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

__all__ = ["Phase", "STRATEGIES", "phases_for", "check_balancer"]

STRATEGIES = ("simultaneous", "step_by_step", "w1_zero", "pretrain_truth")


@dataclass(frozen=True)
class Phase:
    """One stage of training.

    Attributes:
        name: label used in logs and checkpoints.
        tasks: losses computed and combined (``"tau"``, ``"momentum"``, ``"event"``).
        train_upstream: the tau model (and auxiliary network) is optimised.
        train_downstream: the event model is optimised.
        run_upstream: the tau model is evaluated (frozen when not trained).
        run_downstream: the event model is evaluated.
        truth_intermediate: the event model gets the true tau label instead of the tau model's
            output.
        balancer: ``"configured"`` (the config's balancer), ``"unit"`` (fixed weight 1 for every
            task) or ``"w1_zero"`` (fixed 0 for upstream tasks, 1 for the event task).
    """

    name: str
    tasks: tuple[str, ...]
    train_upstream: bool
    train_downstream: bool
    run_upstream: bool
    run_downstream: bool
    truth_intermediate: bool = False
    balancer: str = "configured"


def phases_for(strategy: str, regression: bool = False) -> tuple[Phase, ...]:
    """The phases of ``strategy``; ``regression`` adds the ``momentum`` task to the upstream."""
    upstream: tuple[str, ...] = ("tau", "momentum") if regression else ("tau",)
    everything = upstream + ("event",)
    if strategy == "simultaneous":
        return (Phase("joint", everything, True, True, True, True),)
    if strategy == "w1_zero":
        return (Phase("joint", everything, True, True, True, True, balancer="w1_zero"),)
    if strategy == "step_by_step":
        return (
            Phase("upstream", upstream, True, False, True, False, balancer="unit"),
            Phase("downstream", ("event",), False, True, True, True, balancer="unit"),
        )
    if strategy == "pretrain_truth":
        return (
            Phase("pretrain_upstream", upstream, True, False, True, False, balancer="unit"),
            Phase(
                "pretrain_downstream",
                ("event",),
                False,
                True,
                False,
                True,
                truth_intermediate=True,
                balancer="unit",
            ),
            Phase("reoptimise", everything, True, True, True, True),
        )
    raise ValueError(f"unknown strategy {strategy!r}; choose from {STRATEGIES}")


def check_balancer(strategy: str, balancer: str, balancer_options: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` when ``strategy`` does not allow ``balancer`` with ``balancer_options``.

    ``w1_zero`` fixes the loss weights to (0, 1) itself: a balancer other than ``fixed``, or
    weights given as options, would be ignored or contradict it.
    """
    if strategy == "w1_zero" and (balancer != "fixed" or balancer_options):
        raise ValueError(
            "strategy 'w1_zero' fixes the weights to (0, 1): leave balancer 'fixed' without "
            "balancer_options"
        )


def upstream_tasks(phase: Phase) -> tuple[str, ...]:
    return tuple(t for t in phase.tasks if t != "event")


def monitor_key(phase: Phase, monitor: Optional[str]) -> str:
    """The validation quantity early stopping watches in ``phase``: ``"total"`` or a task."""
    if monitor in (None, "total") or monitor not in phase.tasks:
        return "total"
    return monitor
