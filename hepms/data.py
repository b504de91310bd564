"""Datasets for the multi-step task: constituents -> jets (tau ID) -> events (H vs Z).

A :class:`TauEventData` holds a whole sample as flat tensors:

* ``constituents``: a two-level :class:`~hepms.jagged.Jagged` (events -> jets -> constituents) with
  one row of features per constituent (``values [N, F_c]``, ``offsets [B + 1]`` over the jets,
  ``outer_offsets [E + 1]`` over the events);
* ``jet_features [B, F_j]``, ``jet_labels [B]`` (1 = tau jet, 0 = light jet), optional
  ``jet_weights [B]`` and ``jet_targets [B, 3]`` (visible tau momentum ``px, py, pz`` in units of
  100 GeV, zero for light jets), all aligned with the jets;
* ``event_labels [E]`` (1 = H->tautau, 0 = Z->tautau).

Slicing a range of events (``data[a:b]``) slices every tensor consistently and copies nothing but
the re-based offsets; :meth:`TauEventData.take` gathers an arbitrary list of events with
vectorised index operations (used for splits and per-epoch shuffles).

The pipeline from the generator's awkward events::

    events = hepms.generate.read_events("data/htautau")
    train, val, test, scaler = hepms.data.prepare(events, seed=1)   # build, split, standardise

or step by step: :func:`build_dataset` -> :func:`split` -> :meth:`Standardizer.fit` on the
training part only -> apply the scaler to every part.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

import awkward as ak
import numpy as np
import torch
from torch import Tensor

from hepms.features import FeatureSpec, feature_tensors, regression_targets
from hepms.jagged import Jagged, take_segments, to_jagged
from hepms.ops import offsets_from_counts

log = logging.getLogger(__name__)

__all__ = [
    "TauEventData",
    "Standardizer",
    "build_dataset",
    "split",
    "prepare",
    "toy_dataset",
]

Device = Union[str, torch.device, None]

# ----------------------------------------------------------------------------------------------
# The container
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False, repr=False)
class TauEventData:
    """A sample (or a batch) of events for the multi-step tau-ID -> event-classification task.

    Args:
        constituents: two-level :class:`Jagged`: ``values [N, F_c]`` (constituent features),
            ``offsets [B + 1]`` (constituents of each jet), ``outer_offsets [E + 1]`` (jets of each
            event).
        jet_features: ``[B, F_j]`` per-jet features, row ``b`` belongs to set ``b`` of
            ``constituents``.
        jet_labels: ``[B]`` floating, 1 for a tau jet, 0 for a light jet.
        event_labels: ``[E]`` floating, 1 for H->tautau, 0 for Z->tautau.
        jet_weights: optional ``[B]`` per-jet weights for the upstream loss.
        jet_targets: optional ``[B, R]`` regression targets (visible tau momentum in units of
            100 GeV).
        constituent_names, jet_names: column names of the feature matrices.
        event_split: optional int64 ``[E]`` split of each event decided by the generator (0 train,
            1 validation, 2 test; see :func:`split`).
        validate: check shapes and offsets (reads the offsets: a device sync on a GPU).

    Example:
        >>> import torch
        >>> from hepms import Jagged
        >>> from hepms.data import TauEventData
        >>> parts = Jagged(torch.randn(5, 2), torch.tensor([0, 2, 3, 5]), torch.tensor([0, 2, 3]))
        >>> data = TauEventData(parts, torch.randn(3, 4), torch.tensor([1.0, 0.0, 1.0]),
        ...                     torch.tensor([1.0, 0.0]))
        >>> len(data), data.num_jets, data[1:].num_jets, data[1:].jet_labels.tolist()
        (2, 3, 1, [1.0])
    """

    constituents: Jagged
    jet_features: Tensor
    jet_labels: Tensor
    event_labels: Tensor
    jet_weights: Optional[Tensor] = None
    jet_targets: Optional[Tensor] = None
    constituent_names: tuple[str, ...] = ()
    jet_names: tuple[str, ...] = ()
    event_split: Optional[Tensor] = None
    validate: bool = field(default=True, compare=False)
    # CPU copies of the two offsets arrays: slicing data that lives on a GPU computes its ranges
    # from these, so taking a batch never waits for the device.
    _host_outer: Optional[Tensor] = field(default=None, compare=False)
    _host_offsets: Optional[Tensor] = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.validate:
            self._check()
        if self._host_outer is None:
            outer = self.constituents.outer_offsets
            object.__setattr__(self, "_host_outer", outer.cpu() if outer is not None else None)
            object.__setattr__(self, "_host_offsets", self.constituents.offsets.cpu())

    def _check(self) -> None:
        c = self.constituents
        if not isinstance(c, Jagged):
            raise TypeError(f"constituents must be a hepms.Jagged, got {type(c).__name__}")
        if c.outer_offsets is None:
            raise ValueError(
                "constituents must have two levels (events -> jets -> constituents): "
                "outer_offsets is missing"
            )
        # Re-run the Jagged checks: the data may have been assembled by hand.
        Jagged(c.values, c.offsets, c.outer_offsets, validate=True)
        n_jets, n_events = c.num_segments, len(c)
        if self.jet_features.dim() != 2 or self.jet_features.shape[0] != n_jets:
            raise ValueError(
                f"jet_features must have shape [B, F_j] with B = {n_jets} jets, got "
                f"{tuple(self.jet_features.shape)}"
            )
        if tuple(self.jet_labels.shape) != (n_jets,):
            raise ValueError(
                f"jet_labels must have shape [{n_jets}], got {tuple(self.jet_labels.shape)}"
            )
        if tuple(self.event_labels.shape) != (n_events,):
            raise ValueError(
                f"event_labels must have shape [{n_events}], got {tuple(self.event_labels.shape)}"
            )
        if self.jet_weights is not None and tuple(self.jet_weights.shape) != (n_jets,):
            raise ValueError(
                f"jet_weights must have shape [{n_jets}], got {tuple(self.jet_weights.shape)}"
            )
        if self.jet_targets is not None and (
            self.jet_targets.dim() != 2 or self.jet_targets.shape[0] != n_jets
        ):
            raise ValueError(
                f"jet_targets must have shape [{n_jets}, R], got {tuple(self.jet_targets.shape)}"
            )
        if self.event_split is not None and tuple(self.event_split.shape) != (n_events,):
            raise ValueError(
                f"event_split must have shape [{n_events}], got {tuple(self.event_split.shape)}"
            )
        for name in ("jet_features", "jet_labels", "event_labels", "jet_weights", "jet_targets"):
            tensor = getattr(self, name)
            if tensor is not None and tensor.device != c.values.device:
                raise ValueError(f"{name} is on {tensor.device} but constituents on {c.device}")
        if self.constituent_names and len(self.constituent_names) != c.num_features:
            raise ValueError(
                f"{len(self.constituent_names)} constituent names for {c.num_features} columns"
            )
        if self.jet_names and len(self.jet_names) != self.jet_features.shape[1]:
            raise ValueError(
                f"{len(self.jet_names)} jet names for {self.jet_features.shape[1]} columns"
            )

    # -- sizes ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of events."""
        return len(self.constituents)

    @property
    def num_events(self) -> int:
        return len(self.constituents)

    @property
    def num_jets(self) -> int:
        return self.constituents.num_segments

    @property
    def num_constituents(self) -> int:
        return self.constituents.values.shape[0]

    @property
    def jet_offsets(self) -> Tensor:
        """int64 ``[E + 1]``: jets of event ``e`` are ``jet_offsets[e]:jet_offsets[e + 1]``."""
        assert self.constituents.outer_offsets is not None
        return self.constituents.outer_offsets

    @property
    def constituent_offsets(self) -> Tensor:
        """int64 ``[B + 1]``: constituents of jet ``b``."""
        return self.constituents.offsets

    @property
    def device(self) -> torch.device:
        return self.constituents.values.device

    @property
    def has_targets(self) -> bool:
        return self.jet_targets is not None

    def __repr__(self) -> str:
        return (
            f"TauEventData(events={self.num_events}, jets={self.num_jets}, "
            f"constituents={self.num_constituents}, F_c={self.constituents.num_features}, "
            f"F_j={self.jet_features.shape[1]}, device={self.device})"
        )

    # -- conversions ----------------------------------------------------------------------------
    def to(
        self, device: Device = None, dtype: Optional[torch.dtype] = None, non_blocking: bool = False
    ) -> "TauEventData":
        """Move every tensor to ``device`` and cast the floating ones to ``dtype``."""

        def move(t: Optional[Tensor]) -> Optional[Tensor]:
            if t is None:
                return None
            cast = dtype if t.is_floating_point() else None
            return t.to(device=device, dtype=cast, non_blocking=non_blocking)

        return self._replace(
            constituents=self.constituents.to(device, dtype, non_blocking=non_blocking),
            jet_features=move(self.jet_features),
            jet_labels=move(self.jet_labels),
            event_labels=move(self.event_labels),
            jet_weights=move(self.jet_weights),
            jet_targets=move(self.jet_targets),
            event_split=move(self.event_split),
        )

    def _replace(self, **changes: Any) -> "TauEventData":
        fields = {
            "constituents": self.constituents,
            "jet_features": self.jet_features,
            "jet_labels": self.jet_labels,
            "event_labels": self.event_labels,
            "jet_weights": self.jet_weights,
            "jet_targets": self.jet_targets,
            "constituent_names": self.constituent_names,
            "jet_names": self.jet_names,
            "event_split": self.event_split,
            "_host_outer": self._host_outer,
            "_host_offsets": self._host_offsets,
        }
        fields.update(changes)
        return TauEventData(validate=False, **fields)

    # -- slicing (views) ------------------------------------------------------------------------
    def __getitem__(self, item: slice) -> "TauEventData":
        if not isinstance(item, slice):
            raise TypeError(
                f"TauEventData supports slices of events (data[a:b]), got {type(item).__name__}; "
                "use .take(index) for a list of events"
            )
        start, stop, step = item.indices(len(self))
        if step != 1:
            raise ValueError(f"slices must have step 1, got {step}; use .take(index)")
        return self.slice(start, max(start, stop))

    def slice(self, start: int, stop: int) -> "TauEventData":
        """Events ``start:stop``: views of every tensor, re-based offsets (small copies).

        The ranges are read from host copies of the offsets, so slicing GPU data does not
        synchronise the device.
        """
        n = len(self)
        if not (0 <= start <= stop <= n):
            raise IndexError(f"slice({start}, {stop}) out of range for {n} events")
        host_outer, host_offsets = self._host_outer, self._host_offsets
        assert host_outer is not None and host_offsets is not None
        jet_lo, jet_hi = int(host_outer[start]), int(host_outer[stop])
        lo, hi = int(host_offsets[jet_lo]), int(host_offsets[jet_hi])
        c = self.constituents
        assert c.outer_offsets is not None
        constituents = Jagged(
            c.values[lo:hi],
            c.offsets[jet_lo : jet_hi + 1] - lo,
            c.outer_offsets[start : stop + 1] - jet_lo,
            validate=False,
        )

        def rows(t: Optional[Tensor], a: int, b: int) -> Optional[Tensor]:
            return None if t is None else t[a:b]

        return self._replace(
            constituents=constituents,
            jet_features=self.jet_features[jet_lo:jet_hi],
            jet_labels=self.jet_labels[jet_lo:jet_hi],
            event_labels=self.event_labels[start:stop],
            jet_weights=rows(self.jet_weights, jet_lo, jet_hi),
            jet_targets=rows(self.jet_targets, jet_lo, jet_hi),
            event_split=rows(self.event_split, start, stop),
            _host_outer=host_outer[start : stop + 1] - jet_lo,
            _host_offsets=host_offsets[jet_lo : jet_hi + 1] - lo,
        )

    # -- gathers (copies) -----------------------------------------------------------------------
    def take(self, index: Union[Tensor, Sequence[int], np.ndarray]) -> "TauEventData":
        """Events in the order of ``index`` (int64 event numbers), gathered without Python loops.

        The jets and constituents of the selected events are gathered with one
        ``repeat_interleave`` + ``index_select`` per level; the result owns fresh, contiguous
        storage. An event may be selected more than once.
        """
        c = self.constituents
        assert c.outer_offsets is not None
        index = torch.as_tensor(index, dtype=torch.int64, device=self.device)
        if index.dim() != 1:
            raise ValueError(f"index must be 1-D, got shape {tuple(index.shape)}")
        n = len(self)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
            raise IndexError(f"event index out of range [0, {n})")
        jet_index, outer = take_segments(c.outer_offsets, index)
        part_index, offsets = take_segments(c.offsets, jet_index)

        def pick(t: Optional[Tensor], i: Tensor) -> Optional[Tensor]:
            return None if t is None else t.index_select(0, i)

        constituents = Jagged(c.values.index_select(0, part_index), offsets, outer, validate=False)
        return self._replace(
            constituents=constituents,
            jet_features=self.jet_features.index_select(0, jet_index),
            jet_labels=self.jet_labels.index_select(0, jet_index),
            event_labels=self.event_labels.index_select(0, index),
            jet_weights=pick(self.jet_weights, jet_index),
            jet_targets=pick(self.jet_targets, jet_index),
            event_split=pick(self.event_split, index),
            _host_outer=None,
            _host_offsets=None,
        )


# ----------------------------------------------------------------------------------------------
# Standardisation
# ----------------------------------------------------------------------------------------------
@dataclass
class Standardizer:
    """Per-column ``(x - mean) / std`` for constituent and jet features.

    Fit it on the training split only (:meth:`fit`), then apply it to every split. Columns with a
    (near) zero spread are only centred. Labels, weights and regression targets are untouched.

    Args:
        constituent_mean, constituent_std: ``[F_c]`` float64 statistics.
        jet_mean, jet_std: ``[F_j]`` float64 statistics.
    """

    constituent_mean: Tensor
    constituent_std: Tensor
    jet_mean: Tensor
    jet_std: Tensor

    @classmethod
    def fit(cls, data: TauEventData, min_std: float = 1e-6) -> "Standardizer":
        """Column means and standard deviations of ``data`` (use the training split)."""

        def stats(x: Tensor) -> tuple[Tensor, Tensor]:
            x = x.detach().to("cpu", torch.float64)
            if x.shape[0] == 0:
                return torch.zeros(x.shape[1], dtype=torch.float64), torch.ones(
                    x.shape[1], dtype=torch.float64
                )
            mean = x.mean(0)
            std = x.std(0, unbiased=False)
            return mean, torch.where(std > min_std, std, torch.ones_like(std))

        c_mean, c_std = stats(data.constituents.values)
        j_mean, j_std = stats(data.jet_features)
        return cls(c_mean, c_std, j_mean, j_std)

    def __call__(self, data: TauEventData) -> TauEventData:
        """A standardised copy of ``data`` (same device and dtype)."""
        values = data.constituents.values
        jets = data.jet_features
        if values.shape[1] != self.constituent_mean.shape[0]:
            raise ValueError(
                f"the scaler was fitted on {self.constituent_mean.shape[0]} constituent features, "
                f"the data has {values.shape[1]}"
            )
        if jets.shape[1] != self.jet_mean.shape[0]:
            raise ValueError(
                f"the scaler was fitted on {self.jet_mean.shape[0]} jet features, "
                f"the data has {jets.shape[1]}"
            )

        def apply(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
            mean = mean.to(x.device, x.dtype)
            std = std.to(x.device, x.dtype)
            return (x - mean) / std

        c = data.constituents
        constituents = Jagged(
            apply(values, self.constituent_mean, self.constituent_std),
            c.offsets,
            c.outer_offsets,
            validate=False,
        )
        return data._replace(
            constituents=constituents,
            jet_features=apply(jets, self.jet_mean, self.jet_std),
        )

    def state_dict(self) -> dict[str, Tensor]:
        return {
            "constituent_mean": self.constituent_mean,
            "constituent_std": self.constituent_std,
            "jet_mean": self.jet_mean,
            "jet_std": self.jet_std,
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Tensor]) -> "Standardizer":
        return cls(**{k: torch.as_tensor(state[k]) for k in cls.__dataclass_fields__})


# ----------------------------------------------------------------------------------------------
# Building from awkward events
# ----------------------------------------------------------------------------------------------
def build_dataset(
    events: ak.Array,
    spec: Optional[FeatureSpec] = None,
    *,
    jets_field: str = "jets",
    constituents_field: str = "constituents",
    jet_label_field: str = "isTau",
    event_label_field: str = "label",
    split_field: Optional[str] = "split",
    dtype: torch.dtype = torch.float32,
) -> TauEventData:
    """Assemble a :class:`TauEventData` from the generator's awkward events (no event loops).

    Events with fewer than ``spec.min_jets`` jets are dropped; the features are those of
    :func:`hepms.features.feature_tensors` (the leading ``spec.max_jets`` jets by pT, their leading
    ``spec.max_constituents`` constituents), the regression targets those of
    :func:`hepms.features.regression_targets` (``spec.targets``, when the jets carry the
    visible-tau fields). Features are *not* standardised here: fit a :class:`Standardizer` on the
    training split.

    Args:
        events: awkward array of event records, as returned by
            :func:`hepms.generate.read_events`: ``events[jets_field]`` are jets (pt, eta, phi,
            mass, a tau label, and their constituents nested under ``constituents_field``),
            ``events[event_label_field]`` the event label.
        spec: the features (default: ``FeatureSpec()``).
        jets_field, constituents_field, jet_label_field, event_label_field: field names.
        split_field: event field holding the split decided by the generator (kept as
            ``event_split``, used by :func:`split`); ignored when the events lack it, None: never.
        dtype: floating dtype of the features and labels.

    Returns:
        A :class:`TauEventData` on the CPU.

    Raises:
        ValueError: missing fields, non-finite features.
    """
    spec = FeatureSpec() if spec is None else spec
    if not isinstance(spec, FeatureSpec):
        raise TypeError(f"spec must be a hepms.features.FeatureSpec, got {type(spec).__name__}")
    for name in (jets_field, event_label_field):
        if name not in events.fields:
            raise ValueError(f"events have no field {name!r} (fields: {events.fields})")
    if spec.min_jets > 0:
        events = events[ak.num(events[jets_field], axis=1) >= spec.min_jets]
    jets = events[jets_field]
    if constituents_field not in jets.fields:
        raise ValueError(f"jets have no field {constituents_field!r} (fields: {jets.fields})")
    if jet_label_field not in jets.fields:
        raise ValueError(f"jets have no label field {jet_label_field!r} (fields: {jets.fields})")
    tensors = feature_tensors(jets, jets[constituents_field], spec, dtype=dtype)
    jets = tensors.jets  # the selected jets, in row order

    jet_labels = to_jagged(ak.values_astype(jets[jet_label_field], np.float64), dtype=dtype)
    event_labels = torch.as_tensor(
        ak.to_numpy(events[event_label_field]).astype(np.float64), dtype=dtype
    )
    targets = regression_targets(jets, spec, jet_label_field, dtype)
    if targets is not None and not bool(torch.isfinite(targets).all()):
        bad = (~torch.isfinite(targets)).any(0).nonzero().flatten().tolist()
        raise ValueError(f"non-finite regression targets in column(s) {bad} of {list(spec.targets)}")
    event_split = None
    if split_field is not None and split_field in events.fields:
        event_split = torch.as_tensor(ak.to_numpy(events[split_field]).astype(np.int64))
    data = TauEventData(
        tensors.constituents,
        tensors.jet_features,
        jet_labels.values[:, 0],
        event_labels,
        jet_weights=None,
        jet_targets=targets,
        constituent_names=spec.constituent_features,
        jet_names=spec.jet_features,
        event_split=event_split,
    )
    log.info(
        "built dataset: %d events, %d jets (%.1f%% tau), %d constituents",
        data.num_events,
        data.num_jets,
        100.0 * float(data.jet_labels.mean()) if data.num_jets else 0.0,
        data.num_constituents,
    )
    return data


def split(
    data: TauEventData,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    *,
    stored: bool = True,
) -> tuple[TauEventData, ...]:
    """Split by events into train, validation and test parts.

    When ``data.event_split`` is set (files of ``hepms generate``, which decides the split of every
    event at generation time and gives each split its own pileup pool) and ``stored`` is true, the
    parts are the events of split 0, 1 and 2: no pileup event is then shared between the parts.
    ``fractions`` only has to have three entries; the generator's fractions apply.

    Otherwise the split is random: part sizes are ``floor(fraction * E)``, the remainder going to
    the first part.  Either way the events of each part are in an order permuted with a
    ``torch.Generator`` seeded by ``seed`` (same seed, same parts).

    Raises:
        ValueError: fractions not positive or not summing to 1; a stored split with other than
            three fractions or with values outside 0, 1, 2.
    """
    fractions = [float(f) for f in fractions]
    if not fractions or any(not math.isfinite(f) or f <= 0 for f in fractions):
        raise ValueError(f"fractions must be positive numbers, got {fractions}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {fractions} (sum {sum(fractions)})")
    n = len(data)
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(n, generator=generator)
    if stored and data.event_split is not None:
        if len(fractions) != 3:
            raise ValueError(
                f"the data carry the generator's train/validation/test split: give three fractions, "
                f"got {fractions}"
            )
        assignment = data.event_split.cpu()[order]
        if n and (int(assignment.min()) < 0 or int(assignment.max()) > 2):
            raise ValueError("event_split holds values outside 0 (train), 1 (validation), 2 (test)")
        parts = tuple(data.take(order[assignment == k].to(data.device)) for k in range(3))
        log.info(
            "split stored by the generator: %d / %d / %d events (train / validation / test)",
            *(len(p) for p in parts),
        )
        return parts
    sizes = [int(math.floor(f * n)) for f in fractions]
    sizes[0] += n - sum(sizes)
    shuffled = data.take(order.to(data.device))
    parts_list, start = [], 0
    for size in sizes:
        parts_list.append(shuffled.slice(start, start + size))
        start += size
    return tuple(parts_list)


def toy_dataset(
    num_events: int,
    seed: int = 0,
    *,
    mean_jets: float = 2.0,
    mean_constituents: float = 12.0,
    max_jets: int = 8,
    max_constituents: int = 50,
    constituent_features: int = 8,
    jet_features: int = 4,
    regression_outputs: int = 3,
    signal_strength: float = 0.5,
    dtype: torch.dtype = torch.float32,
) -> TauEventData:
    """Random events with learnable labels, for tests, examples and benchmarks (no generator).

    Jets per event are ``1 + Poisson(mean_jets - 1)`` and constituents per jet
    ``1 + Poisson(mean_constituents - 1)``, capped at ``max_jets`` / ``max_constituents``. Labels
    are fair coins; features are standard normal, with the first constituent feature and the
    second jet feature shifted by ``signal_strength`` for tau jets, and the first jet feature
    shifted by ``signal_strength`` in H events, so both tasks can be learnt.

    Args:
        num_events: number of events.
        seed: seed of the ``torch.Generator`` drawing everything.
        mean_jets, mean_constituents: mean multiplicities before capping.
        max_jets, max_constituents: caps.
        constituent_features, jet_features: feature columns.
        regression_outputs: columns of ``jet_targets`` (0: none).
        signal_strength: size of the label-dependent shifts.
        dtype: floating dtype.
    """
    if num_events < 0:
        raise ValueError(f"num_events must be >= 0, got {num_events}")
    if mean_jets < 1 or mean_constituents < 1:
        raise ValueError("mean_jets and mean_constituents must be >= 1")
    g = torch.Generator().manual_seed(int(seed))
    jets_per_event = (
        1 + torch.poisson(torch.full((num_events,), mean_jets - 1.0), generator=g).long()
    ).clamp_max(max_jets)
    n_jets = int(jets_per_event.sum())
    parts_per_jet = (
        1 + torch.poisson(torch.full((n_jets,), mean_constituents - 1.0), generator=g).long()
    ).clamp_max(max_constituents)
    n_parts = int(parts_per_jet.sum())
    outer = offsets_from_counts(jets_per_event)
    offsets = offsets_from_counts(parts_per_jet)
    event_labels = torch.randint(0, 2, (num_events,), generator=g).to(dtype)
    jet_labels = torch.randint(0, 2, (n_jets,), generator=g).to(dtype)
    values = torch.randn(n_parts, constituent_features, generator=g, dtype=dtype)
    values[:, 0] += signal_strength * torch.repeat_interleave(jet_labels, parts_per_jet)
    jets = torch.randn(n_jets, jet_features, generator=g, dtype=dtype)
    jets[:, 0] += signal_strength * torch.repeat_interleave(event_labels, jets_per_event)
    if jet_features > 1:
        jets[:, 1] += signal_strength * jet_labels
    targets = None
    if regression_outputs > 0:
        targets = torch.randn(n_jets, regression_outputs, generator=g, dtype=dtype) * jet_labels[:, None]
    return TauEventData(
        Jagged(values, offsets, outer, validate=False),
        jets,
        jet_labels,
        event_labels,
        jet_targets=targets,
        validate=False,
    )


def prepare(
    events: ak.Array,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    **build_options: Any,
) -> tuple[TauEventData, TauEventData, TauEventData, Standardizer]:
    """:func:`build_dataset`, :func:`split` (seeded) and standardisation fitted on training.

    Returns:
        ``(train, validation, test, scaler)``, the three parts standardised with ``scaler``.
    """
    if len(fractions) != 3:
        raise ValueError(f"prepare needs three fractions (train, validation, test), got {fractions}")
    data = build_dataset(events, **build_options)
    train, val, test = split(data, fractions, seed)
    scaler = Standardizer.fit(train)
    return scaler(train), scaler(val), scaler(test), scaler
