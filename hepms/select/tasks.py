"""The two steps of the selection study and what flows between them.

Task 1 (upstream, per jet) is either

* ``"tau_id"``: a tau logit per jet, binary cross-entropy against the tau label; or
* ``"calibration"``: the study's Task 1, the visible tau ``(pT / 100 GeV, eta, phi)`` regressed
  from the jet, squared error summed over the three components (azimuthal difference wrapped to
  ``[-pi, pi)``) and averaged over tau jets (light jets have no target).

Task 2 (downstream, per event) is H vs Z, binary cross-entropy on logits.

An upstream output ``u [B, k]`` reaches the event models as a :class:`Link`:

* ``intermediate [B, k]``: the per-jet value appended to the jet features (tau-ID: the tau
  probability ``sigmoid(u)``; calibration: the calibrated ``(pT/100, eta, phi)`` itself);
* ``rank [B]``: how tau-like a jet is, to pick the two tau candidates of an event (tau-ID: the
  probability; calibration: the jet pT, i.e. the two leading jets);
* ``p4 [B, 4]``: the candidate 4-vector ``(pT [GeV], eta, phi, mass [GeV])`` for the di-tau mass
  (tau-ID: the reconstructed jet; calibration: the calibrated, massless tau, so the mass is a
  differentiable function of Task 1's output as in the study).

:meth:`UpstreamTask.truth_link` builds the same from the truth, to pre-train the event models:
tau-ID feeds the label; calibration feeds the visible tau for tau jets and the uncalibrated jet
for light jets (they have no tau to calibrate to).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from hepms import metrics, physics
from hepms.features import MOMENTUM_UNIT_GEV
from hepms.select.data import Inputs, Targets
from hepms.train.losses import bce_loss, momentum_loss

__all__ = ["Link", "UpstreamTask", "TauIDTask", "CalibrationTask", "event_loss", "make_task", "UPSTREAM_TASKS"]


class Link(NamedTuple):
    """What the event models receive from Task 1 (see the module docstring)."""

    intermediate: Tensor
    rank: Tensor
    p4: Tensor


def _safe_auc(labels: Tensor, scores: Tensor) -> float:
    try:
        return metrics.roc_auc(labels, scores)
    except ValueError:
        return float("nan")


class UpstreamTask:
    """Interface of a Task 1 definition."""

    #: task name used in configs and results
    name: str = ""
    #: width of the upstream output per jet
    outputs: int = 1
    #: calibration models add their output to the uncalibrated jet (a residual, as in the study)
    residual: bool = False

    def loss(self, u: Tensor, targets: Targets) -> Tensor:
        raise NotImplementedError

    def link(self, u: Tensor, inputs: Inputs) -> Link:
        raise NotImplementedError

    def truth_link(self, inputs: Inputs, targets: Targets) -> Link:
        raise NotImplementedError

    def base(self, inputs: Inputs) -> Tensor:
        """The uncalibrated value a residual model starts from, ``[B, outputs]``."""
        return inputs.jet_p4.new_zeros((inputs.num_jets, self.outputs))

    def metrics(self, u: Tensor, targets: Targets) -> dict[str, float]:
        """Task-1 quality numbers besides the loss."""
        return {}


class TauIDTask(UpstreamTask):
    """Tau identification: one logit per jet, BCE against the tau label."""

    name = "tau_id"
    outputs = 1
    residual = False

    def loss(self, u: Tensor, targets: Targets) -> Tensor:
        return bce_loss(u[:, 0], targets.jet_labels)

    def link(self, u: Tensor, inputs: Inputs) -> Link:
        probability = torch.sigmoid(u)
        return Link(probability, self._rank(probability[:, 0], inputs), inputs.jet_p4)

    def truth_link(self, inputs: Inputs, targets: Targets) -> Link:
        label = targets.jet_labels.reshape(-1, 1).to(inputs.jet_features.dtype)
        return Link(label, self._rank(label[:, 0], inputs), inputs.jet_p4)

    @staticmethod
    def _rank(probability: Tensor, inputs: Inputs) -> Tensor:
        # Ties (e.g. truth labels) are broken by jet pT: 1e-6 per GeV cannot reorder distinct
        # probabilities meaningfully but prefers the harder of two equally tau-like jets.
        return probability.detach() + 1e-6 * inputs.jet_p4[:, 0]

    def metrics(self, u: Tensor, targets: Targets) -> dict[str, float]:
        return {"auc_tau": _safe_auc(targets.jet_labels, u[:, 0])}


class CalibrationTask(UpstreamTask):
    """Tau momentum calibration: regress the visible tau ``(pT / 100 GeV, eta, phi)`` per jet."""

    name = "calibration"
    outputs = 3
    residual = True

    def base(self, inputs: Inputs) -> Tensor:
        p4 = inputs.jet_p4
        return torch.stack([p4[:, 0] / MOMENTUM_UNIT_GEV, p4[:, 1], p4[:, 2]], dim=1)

    @staticmethod
    def residuals(u: Tensor, targets: Targets) -> Tensor:
        """``u - target`` with the azimuthal component wrapped to ``[-pi, pi)``."""
        target = targets.calibration.to(u.dtype)
        d = u - target
        return torch.cat([d[:, :2], physics.delta_phi(u[:, 2:3], target[:, 2:3])], dim=1)

    def loss(self, u: Tensor, targets: Targets) -> Tensor:
        d = self.residuals(u, targets)
        return momentum_loss(d, torch.zeros_like(d), mask=targets.jet_labels > 0.5)

    def link(self, u: Tensor, inputs: Inputs) -> Link:
        return Link(u, inputs.jet_p4[:, 0].detach(), self._p4(u))

    def truth_link(self, inputs: Inputs, targets: Targets) -> Link:
        is_tau = (targets.jet_labels > 0.5).unsqueeze(1)
        value = torch.where(is_tau, targets.calibration.to(inputs.jet_p4.dtype), self.base(inputs))
        return Link(value, inputs.jet_p4[:, 0], self._p4(value))

    @staticmethod
    def _p4(u: Tensor) -> Tensor:
        # |pT|: a calibration model may output a negative pT early in training; the mass of the
        # pair only depends on the momentum's magnitude and direction.
        return torch.stack(
            [u[:, 0].abs() * MOMENTUM_UNIT_GEV, u[:, 1], u[:, 2], torch.zeros_like(u[:, 0])], dim=1
        )

    def metrics(self, u: Tensor, targets: Targets) -> dict[str, float]:
        mask = targets.jet_labels > 0.5
        if not bool(mask.any()):
            return {"mse": float("nan")}
        d = self.residuals(u, targets)[mask]
        per_component = (d**2).mean(0)
        return {
            "mse": float((d**2).sum(1).mean()),
            "mse_pt": float(per_component[0]),
            "mse_eta": float(per_component[1]),
            "mse_phi": float(per_component[2]),
        }


def event_loss(logit: Tensor, targets: Targets) -> Tensor:
    """Task 2 loss: BCE with logits (the study's stable ``max(y,0) - y t + log(1 + e^-|y|)``)."""
    return bce_loss(logit, targets.event_labels)


UPSTREAM_TASKS: dict[str, type[UpstreamTask]] = {"tau_id": TauIDTask, "calibration": CalibrationTask}


def make_task(name: str) -> UpstreamTask:
    """The Task-1 definition called ``name`` (``"tau_id"`` or ``"calibration"``)."""
    try:
        return UPSTREAM_TASKS[name]()
    except KeyError:
        raise ValueError(f"unknown upstream task {name!r}; choose from {sorted(UPSTREAM_TASKS)}") from None
