"""Neural networks on jagged sets: DeepSets, the tau-ID and event models, their connection.

* :class:`DeepSets`, :class:`EquivariantBlock`, :class:`Pooling`: set networks on flat values +
  CSR offsets, pooled with the hepms segment ops (no padding); :class:`AttentionPooling` (pool
  mode ``"attention"``): learned-query attention over each set's rows.
* :class:`TauID` (upstream, per jet), :class:`EventClassifier` (downstream, per event),
  :class:`MultiStep` (the two connected, ``"direct"`` or ``"additional"`` NN), :func:`run`.

The padded + masked reference of the same modules, used by tests and benchmarks only, is
:mod:`hepms._padded_reference` (next to :mod:`hepms._reference`, the reference of the ops).
"""
from __future__ import annotations

from hepms.nn.deepsets import DeepSets, EquivariantBlock
from hepms.nn.layers import POOLING_MODES, AttentionPooling, Pooling, mlp
from hepms.nn.models import (
    CONNECTIONS,
    EventClassifier,
    MultiStep,
    MultiStepOutput,
    TauID,
    run,
)

__all__ = [
    "DeepSets",
    "EquivariantBlock",
    "Pooling",
    "AttentionPooling",
    "POOLING_MODES",
    "mlp",
    "TauID",
    "EventClassifier",
    "MultiStep",
    "MultiStepOutput",
    "CONNECTIONS",
    "run",
]
