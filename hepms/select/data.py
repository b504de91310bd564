"""Data for the model-selection study: splits, raw jet kinematics, model inputs and targets.

The selection study reuses :class:`hepms.data.TauEventData` (built by
:func:`hepms.data.build_dataset`, standardised by :class:`hepms.data.Standardizer` fitted on the
training split) with its own :class:`~hepms.features.FeatureSpec`: ``jet_targets`` hold the
study's Task-1 regression target, the visible tau ``(pT / 100 GeV, eta, phi)`` of the matched tau
(zero for light jets; spec targets ``("pt", "eta", "phi")``), instead of ``(px, py, pz)``.

Models receive :class:`Inputs` (features only: no labels, so a candidate model cannot read the
answer) and losses receive :class:`Targets`; both are built per batch by :func:`make_batch`.

The test split is returned separately from the training and validation splits
(:class:`SelectionData`): selection functions in :mod:`hepms.select` take ``train`` and ``val``
only, and the test split is evaluated once, after the selection, by the study runner.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Optional, Sequence

import awkward as ak
import torch
from torch import Tensor, nn

from hepms import data as hdata
from hepms import physics
from hepms.data import Standardizer, TauEventData
from hepms.features import DEFAULT_JET_FEATURES, FeatureSpec

log = logging.getLogger(__name__)

__all__ = [
    "SELECTION_JET_FEATURES",
    "KINEMATIC_COLUMNS",
    "SelectionData",
    "prepare_selection_data",
    "JetKinematics",
    "Inputs",
    "Targets",
    "make_batch",
    "iterate_batches",
]

#: Jet-level features the selection study gives its models by default: the training default
#: (:data:`hepms.features.DEFAULT_JET_FEATURES`) plus the constituent count, which the candidate
#: models of the study were defined with.
SELECTION_JET_FEATURES: tuple[str, ...] = (*DEFAULT_JET_FEATURES, "log_n_constituents")
#: The columns the raw jet 4-vector is recovered from (they must be among the jet features).
KINEMATIC_COLUMNS: tuple[str, ...] = ("log_pt", "eta", "phi", "log_mass")
#: The Task-1 calibration targets (:data:`hepms.features.TARGETS`): visible tau pT / unit, eta, phi.
CALIBRATION_TARGETS: tuple[str, ...] = ("pt", "eta", "phi")


@dataclass(frozen=True)
class SelectionData:
    """Standardised splits and what is needed to undo the standardisation of the kinematics.

    Attributes:
        train, val, test: the three splits (``jet_targets`` = visible tau ``(pT/100, eta, phi)``).
        scaler: the :class:`~hepms.data.Standardizer` fitted on ``train``.
        jet_names: names of the jet feature columns.
        constituent_features: number of constituent feature columns.
        spec: the :class:`~hepms.features.FeatureSpec` the splits were built with.
    """

    train: TauEventData
    val: TauEventData
    test: TauEventData
    scaler: Standardizer
    jet_names: tuple[str, ...]
    constituent_features: int
    spec: Optional[FeatureSpec] = None

    def kinematics(self) -> "JetKinematics":
        """A :class:`JetKinematics` for these splits."""
        return JetKinematics(self.scaler, self.jet_names)


def prepare_selection_data(
    events: ak.Array,
    *,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    max_jets: int = 8,
    max_constituents: int = 50,
    jet_features: Sequence[str] = SELECTION_JET_FEATURES,
) -> SelectionData:
    """Build, split (seeded, by events) and standardise the generator's events for selection.

    Args:
        events: awkward events from :func:`hepms.generate.read_events`.
        fractions: train / validation / test fractions.
        seed: seed of the split.
        max_jets, max_constituents: caps (leading objects in pT).
        jet_features: jet feature names; must include :data:`KINEMATIC_COLUMNS`.

    Returns:
        A :class:`SelectionData`.

    Raises:
        ValueError: missing kinematic columns, or events without the visible-tau fields.
    """
    missing = [c for c in KINEMATIC_COLUMNS if c not in jet_features]
    if missing:
        raise ValueError(
            f"jet_features must include {KINEMATIC_COLUMNS} (the jet 4-vector is recovered from "
            f"them); missing {missing}"
        )
    if len(fractions) != 3:
        raise ValueError(f"fractions must be (train, validation, test), got {fractions}")
    spec = FeatureSpec(jet_features=tuple(jet_features), max_jets=max_jets,
                       max_constituents=max_constituents, targets=CALIBRATION_TARGETS)
    data = hdata.build_dataset(events, spec)
    if data.jet_targets is None:
        raise ValueError(
            "the events have no visible-tau fields (visTauPt, visTauEta, visTauPhi) on their jets: "
            "the calibration task needs them (use hepms.generate.read_events)"
        )
    train, val, test = hdata.split(data, fractions, seed)
    scaler = Standardizer.fit(train)
    log.info(
        "selection data: %d / %d / %d events (train / validation / test)",
        len(train), len(val), len(test),
    )
    return SelectionData(
        scaler(train),
        scaler(val),
        scaler(test),
        scaler,
        tuple(data.jet_names),
        data.constituents.num_features,
        spec,
    )


class JetKinematics(nn.Module):
    """Recovers the raw jet 4-vector ``(pT [GeV], eta, phi, mass [GeV])`` from standardised features.

    The standardisation is affine and the scaling ``log(0.1 + x)`` invertible, so no extra column
    has to travel with the data.

    Args:
        scaler: the :class:`~hepms.data.Standardizer` the features were standardised with.
        jet_names: names of the jet feature columns.
    """

    def __init__(self, scaler: Standardizer, jet_names: Sequence[str]) -> None:
        super().__init__()
        jet_names = tuple(jet_names)
        missing = [c for c in KINEMATIC_COLUMNS if c not in jet_names]
        if missing:
            raise ValueError(f"jet features {jet_names} lack the kinematic column(s) {missing}")
        index = torch.tensor([jet_names.index(c) for c in KINEMATIC_COLUMNS], dtype=torch.long)
        self.register_buffer("index", index, persistent=False)
        self.register_buffer("mean", scaler.jet_mean[index].float(), persistent=False)
        self.register_buffer("std", scaler.jet_std[index].float(), persistent=False)

    def forward(self, jet_features: Tensor) -> Tensor:
        """``[B, F_j]`` standardised -> ``[B, 4]`` ``(pT, eta, phi, mass)`` in GeV."""
        x = jet_features.index_select(1, self.index) * self.std.to(jet_features.dtype) + self.mean.to(
            jet_features.dtype
        )
        log_pt, eta, phi, log_mass = x.unbind(1)
        pt = (torch.exp(log_pt) - 0.1).clamp_min(0.0)
        mass = (torch.exp(log_mass) - 0.1).clamp_min(0.0)
        return torch.stack([pt, eta, physics.delta_phi(phi, torch.zeros_like(phi)), mass], dim=1)


class Inputs(NamedTuple):
    """What candidate models see of a batch (features only).

    Attributes:
        constituents: ``[N, F_c]`` standardised constituent features.
        constituent_offsets: int64 ``[B + 1]``.
        jet_offsets: int64 ``[E + 1]``.
        jet_features: ``[B, F_j]`` standardised jet features.
        jet_p4: ``[B, 4]`` raw jet ``(pT [GeV], eta, phi, mass [GeV])``.
    """

    constituents: Tensor
    constituent_offsets: Tensor
    jet_offsets: Tensor
    jet_features: Tensor
    jet_p4: Tensor

    @property
    def num_jets(self) -> int:
        return self.jet_features.shape[0]

    @property
    def num_events(self) -> int:
        return self.jet_offsets.shape[0] - 1


class Targets(NamedTuple):
    """What the losses see of a batch.

    Attributes:
        jet_labels: ``[B]`` 1 = tau jet.
        calibration: ``[B, 3]`` visible tau ``(pT / 100 GeV, eta, phi)`` (zero for light jets).
        event_labels: ``[E]`` 1 = H.
    """

    jet_labels: Tensor
    calibration: Tensor
    event_labels: Tensor


def make_batch(data: TauEventData, kinematics: JetKinematics) -> tuple[Inputs, Targets]:
    """Split a :class:`TauEventData` (batch) into model :class:`Inputs` and loss :class:`Targets`."""
    if data.jet_targets is None or data.jet_targets.shape[1] != 3:
        raise ValueError(
            "selection data need jet_targets = (pT/100, eta, phi): prepare them with "
            "hepms.select.prepare_selection_data"
        )
    with torch.no_grad():
        p4 = kinematics(data.jet_features)
    inputs = Inputs(
        data.constituents.values,
        data.constituents.offsets,
        data.jet_offsets,
        data.jet_features,
        p4,
    )
    return inputs, Targets(data.jet_labels, data.jet_targets, data.event_labels)


def iterate_batches(
    data: TauEventData,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: Optional[torch.Generator] = None,
) -> Iterator[TauEventData]:
    """Batches of ``batch_size`` events; shuffled with one seeded gather when ``shuffle``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shuffle:
        order = torch.randperm(len(data), generator=generator).to(data.device)
        data = data.take(order)
    for start in range(0, len(data), batch_size):
        yield data.slice(start, min(len(data), start + batch_size))


def num_batches(data: TauEventData, batch_size: int) -> int:
    """Number of batches :func:`iterate_batches` yields."""
    return max(1, math.ceil(len(data) / batch_size))
