"""The one path from events to model inputs: a :class:`FeatureSpec` and :func:`feature_tensors`.

A model is trained on, and must be served with, the same features: which per-jet and
per-constituent quantities, in which order, how many jets and constituents (the leading ones by
pT), and in which unit the momentum targets are. :class:`FeatureSpec` says all of that; every
model file carries it (:mod:`hepms.model_file`), and every consumer turns events into tensors with
:func:`feature_tensors`:

* :func:`hepms.data.build_dataset` (training, evaluation),
* :class:`hepms.coffea.MultiStepTagger` (coffea processors, eager and dask),
* :class:`hepms.export.InferenceModel` (checks a spec against a network),
* :mod:`hepms.select` (the model-selection study).

Inputs are awkward arrays of jets (``E * var * record`` with ``pt, eta, phi, mass``) and their
constituents, either already nested per jet (``E * var * var * record``, as
:func:`hepms.generate.read_events` returns them under ``jets.constituents``) or one flat list per
event with a jet index (``E * var * record`` with ``jetIdx``, as NanoAOD ``PFCands`` /
coffea NanoEvents give them), grouped by :func:`group_by_jet`.

Example:
    >>> import awkward as ak
    >>> from hepms.features import FeatureSpec, feature_tensors
    >>> spec = FeatureSpec(max_jets=2, max_constituents=2)
    >>> jets = ak.Array([[{"pt": 40.0, "eta": 0.1, "phi": 1.0, "mass": 5.0}], []])
    >>> pf = ak.Array([[{"pt": 30.0, "eta": 0.1, "phi": 1.0, "mass": 0.1, "charge": 1, "jetIdx": 0},
    ...                 {"pt": 1.0, "eta": 0.2, "phi": 1.1, "mass": 0.0, "charge": 0, "jetIdx": -1}],
    ...                []])
    >>> t = feature_tensors(jets, pf, spec)
    >>> t.constituents.values.shape, t.jet_features.shape, t.constituents.outer_offsets.tolist()
    (torch.Size([1, 8]), torch.Size([1, 4]), [0, 1, 1])
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import awkward as ak
import numpy as np
import torch
from torch import Tensor

from hepms import physics
from hepms.jagged import Jagged, to_jagged

log = logging.getLogger(__name__)

__all__ = [
    "FeatureSpec",
    "FeatureTensors",
    "feature_tensors",
    "check_inputs",
    "group_by_jet",
    "regression_targets",
    "JET_FEATURES",
    "CONSTITUENT_FEATURES",
    "DEFAULT_JET_FEATURES",
    "DEFAULT_CONSTITUENT_FEATURES",
    "TARGETS",
    "MOMENTUM_UNIT_GEV",
    "JET_INDEX_FIELD",
]

#: The momentum unit of regression targets, in GeV (DESIGN.md): the MSE is then O(1), like the BCE.
MOMENTUM_UNIT_GEV = 100.0
#: The NanoAOD field of flat constituents that names their jet (``PFCands_jetIdx``).
JET_INDEX_FIELD = "jetIdx"
_JET_FIELDS = ("pt", "eta", "phi", "mass")
_CONSTITUENT_FIELDS = ("pt", "eta", "phi", "mass")

#: Per-constituent features :func:`hepms.physics.constituent_features` computes (all of them);
#: ``charge`` needs a charge field on the constituents.
CONSTITUENT_FEATURES: tuple[str, ...] = (
    "deta",
    "dphi",
    "log_pt",
    "log_e",
    "log_pt_rel",
    "log_e_rel",
    "delta_r",
    "charge",
)
DEFAULT_CONSTITUENT_FEATURES: tuple[str, ...] = CONSTITUENT_FEATURES


def _log_scale(x: ak.Array) -> ak.Array:
    # The project's GeV scaling log(0.1 + x); masses and energies are clipped at 0 first, since
    # float rounding can leave a massless jet at -1e-6 GeV.
    return physics.log_pt(np.maximum(x, 0.0))


#: Per-jet features by name: functions of the jets (``vector`` Momentum4D records) and of their
#: (capped) constituents. The study's event model uses the jet 4-vector (pT, eta, phi, mass).
JET_FEATURES: dict[str, Callable[[ak.Array, ak.Array], ak.Array]] = {
    "log_pt": lambda jets, parts: physics.log_pt(jets.pt),
    "eta": lambda jets, parts: jets.eta,
    "phi": lambda jets, parts: jets.phi,
    "log_mass": lambda jets, parts: _log_scale(jets.mass),
    "log_e": lambda jets, parts: _log_scale(jets.E),
    "cos_phi": lambda jets, parts: np.cos(jets.phi),
    "sin_phi": lambda jets, parts: np.sin(jets.phi),
    "log_n_constituents": lambda jets, parts: np.log1p(ak.num(parts, axis=-1)),
}
DEFAULT_JET_FEATURES: tuple[str, ...] = ("log_pt", "eta", "phi", "log_mass")

#: Regression targets: the visible tau of a tau jet (zero for light jets), from the jets'
#: ``visTauPt, visTauEta, visTauPhi`` fields. Momenta (px, py, pz, pt) are in units of
#: ``FeatureSpec.momentum_unit_gev``; eta and phi are plain.
TARGETS: tuple[str, ...] = ("px", "py", "pz", "pt", "eta", "phi")
_MOMENTUM_TARGETS = ("px", "py", "pz", "pt")
_VISIBLE_TAU_FIELDS = ("visTauPt", "visTauEta", "visTauPhi")

_SPEC_FORMAT = "hepms.features/1"


# ----------------------------------------------------------------------------------------------
# The specification
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureSpec:
    """What a model reads: feature names and order, caps, units and regression targets.

    Args:
        jet_features: names from :data:`JET_FEATURES`, in column order.
        constituent_features: names from :data:`CONSTITUENT_FEATURES`, in column order.
        max_jets: the event model sees the leading ``max_jets`` jets of each event by pT.
        max_constituents: each jet keeps its leading ``max_constituents`` constituents by pT.
        min_jets: training drops events with fewer jets (serving scores them all).
        momentum_unit_gev: unit of the momentum targets and outputs, in GeV.
        targets: regression targets (names of :data:`TARGETS`), empty for none.

    Raises:
        ValueError: an unknown or repeated name, an empty feature list, a bad cap or unit (the
            message names the field).

    Example:
        >>> spec = FeatureSpec(max_jets=4)
        >>> FeatureSpec.from_dict(spec.to_dict()) == spec
        True
    """

    jet_features: tuple[str, ...] = DEFAULT_JET_FEATURES
    constituent_features: tuple[str, ...] = DEFAULT_CONSTITUENT_FEATURES
    max_jets: int = 8
    max_constituents: int = 50
    min_jets: int = 1
    momentum_unit_gev: float = MOMENTUM_UNIT_GEV
    targets: tuple[str, ...] = ("px", "py", "pz")

    def __post_init__(self) -> None:
        for name, known in (("jet_features", tuple(JET_FEATURES)),
                            ("constituent_features", CONSTITUENT_FEATURES),
                            ("targets", TARGETS)):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise ValueError(f"FeatureSpec.{name} must be a list of names, got {value!r}")
            names = tuple(str(n) for n in value)
            unknown = [n for n in names if n not in known]
            if unknown:
                raise ValueError(f"FeatureSpec.{name}: unknown name(s) {unknown}; hepms computes "
                                 f"{list(known)}")
            if len(set(names)) != len(names):
                raise ValueError(f"FeatureSpec.{name} repeats names: {list(names)}")
            if not names and name != "targets":
                raise ValueError(f"FeatureSpec.{name} is empty: the models need at least one")
            object.__setattr__(self, name, names)
        for name, low in (("max_jets", 1), ("max_constituents", 1), ("min_jets", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"FeatureSpec.{name} must be an integer >= {low}, got {value!r}")
            object.__setattr__(self, name, int(value))
        unit = self.momentum_unit_gev
        if isinstance(unit, bool) or not isinstance(unit, (int, float)) or not (
            math.isfinite(unit) and unit > 0
        ):
            raise ValueError(f"FeatureSpec.momentum_unit_gev must be a positive number, got {unit!r}")
        object.__setattr__(self, "momentum_unit_gev", float(unit))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (lists, numbers), with a ``format`` tag; :meth:`from_dict` reads it."""
        return {
            "format": _SPEC_FORMAT,
            "jet_features": list(self.jet_features),
            "constituent_features": list(self.constituent_features),
            "max_jets": self.max_jets,
            "max_constituents": self.max_constituents,
            "min_jets": self.min_jets,
            "momentum_unit_gev": self.momentum_unit_gev,
            "targets": list(self.targets),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FeatureSpec":
        """The spec of :meth:`to_dict` output.

        Raises:
            ValueError: not a mapping, another format, missing or unknown keys, bad values.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a feature spec must be a mapping, got {type(data).__name__}")
        data = dict(data)
        found = data.pop("format", None)
        if found != _SPEC_FORMAT:
            raise ValueError(f"feature spec format {found!r}, this hepms reads {_SPEC_FORMAT!r}")
        fields = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - fields)
        missing = sorted(fields - set(data))
        if unknown or missing:
            raise ValueError(f"feature spec: unknown key(s) {unknown}, missing key(s) {missing}")
        return cls(**data)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], targets: Sequence[str] = ("px", "py", "pz")
                      ) -> "FeatureSpec":
        """The spec of a configuration's ``data`` section (its keys ``jet_features``,
        ``constituent_features``, ``max_jets``, ``max_constituents``, ``min_jets``; others are
        ignored), with the regression ``targets`` of the model."""
        keys = ("jet_features", "constituent_features", "max_jets", "max_constituents", "min_jets")
        missing = [k for k in keys if k not in settings]
        if missing:
            raise ValueError(f"data settings lack {missing} for a feature spec")
        return cls(**{k: settings[k] for k in keys}, targets=tuple(targets))

    def check_widths(self, constituent_width: int, jet_width: int, what: str = "the model") -> None:
        """Raise ValueError unless ``what`` takes as many columns as the spec names."""
        for level, names, width in (("constituent", self.constituent_features, constituent_width),
                                    ("jet", self.jet_features, jet_width)):
            if int(width) != len(names):
                raise ValueError(
                    f"feature mismatch: {what} takes {int(width)} {level} features but the feature "
                    f"spec names {len(names)}: {list(names)}"
                )

    def required_fields(self, flat: bool = True) -> dict[str, tuple[str, ...]]:
        """Record fields :func:`feature_tensors` reads from the jets and the constituents
        (``flat``: one list per event, grouped by ``jetIdx``)."""
        fields = list(_CONSTITUENT_FIELDS)
        if "charge" in self.constituent_features:
            fields.append("charge")
        if flat:
            fields.append(JET_INDEX_FIELD)
        return {"jets": _JET_FIELDS, "constituents": tuple(fields)}


# ----------------------------------------------------------------------------------------------
# Grouping flat candidates into jets
# ----------------------------------------------------------------------------------------------
def group_by_jet(
    candidates: ak.Array,
    jet_counts: Any,
    jet_index: str = JET_INDEX_FIELD,
    *,
    fields: Optional[Sequence[str]] = None,
    sort_by: Optional[str] = "pt",
    with_name: Optional[str] = None,
    behavior: Optional[Mapping[str, Any]] = None,
) -> ak.Array:
    """Group flat per-event candidates (NanoAOD ``PFCands``) into their jets by a jet index.

    Candidate ``i`` of event ``e`` belongs to jet ``candidates[jet_index][e, i]`` of that event;
    candidates with an index outside the event's jets (``-1`` in NanoAOD: no jet) are dropped.
    Vectorised (numpy on the flat contents), no loop over events.

    Args:
        candidates: ``E * var * record`` with a ``jet_index`` field.
        jet_counts: jets per event (``ak.num(events.Jet)``, an array of ``E`` integers), or the
            jets themselves (``E * var * record``).
        jet_index: the field holding each candidate's jet index.
        fields: the record fields to keep (default: all but ``jet_index``).
        sort_by: order the candidates of each jet by this field, descending (stable: ties keep
            the file order); None keeps the file order.
        with_name, behavior: given to :func:`ak.zip` for the records (e.g. ``"Momentum4D"``).

    Returns:
        ``E * var * var * record``: events -> jets -> candidates, ``ak.num(out, axis=1)`` equal to
        ``jet_counts``.

    Raises:
        ValueError: a missing field, or ``jet_counts`` and ``candidates`` of different lengths.

    Example:
        >>> import awkward as ak
        >>> from hepms.features import group_by_jet
        >>> pf = ak.Array([[{"pt": 1.0, "jetIdx": 1}, {"pt": 3.0, "jetIdx": 0},
        ...                 {"pt": 2.0, "jetIdx": 1}, {"pt": 9.0, "jetIdx": -1}]])
        >>> group_by_jet(pf, [2]).pt.tolist()
        [[[3.0], [2.0, 1.0]]]
    """
    if not isinstance(jet_counts, (np.ndarray, list, tuple)) and isinstance(jet_counts, ak.Array) \
            and jet_counts.ndim > 1:
        jet_counts = ak.num(jet_counts, axis=1)
    counts = np.asarray(ak.to_numpy(jet_counts) if isinstance(jet_counts, ak.Array) else jet_counts,
                        dtype=np.int64)
    if counts.ndim != 1 or len(counts) != len(candidates):
        raise ValueError(f"jet_counts has {counts.shape} entries for {len(candidates)} events")
    if jet_index not in candidates.fields:
        raise ValueError(f"candidates have no jet index field {jet_index!r} (fields: "
                         f"{list(candidates.fields)})")
    names = [f for f in (fields if fields is not None else candidates.fields) if f != JET_INDEX_FIELD]
    missing = [f for f in names + ([sort_by] if sort_by else []) if f not in candidates.fields]
    if missing:
        raise ValueError(f"candidates lack field(s) {missing} (fields: {list(candidates.fields)})")
    n_events = len(counts)
    per_event = ak.to_numpy(ak.num(candidates, axis=1)).astype(np.int64)
    flat = {name: ak.to_numpy(ak.flatten(candidates[name], axis=1)) for name in names}
    index = ak.to_numpy(ak.flatten(candidates[jet_index], axis=1)).astype(np.int64)
    event_of = np.repeat(np.arange(n_events, dtype=np.int64), per_event)
    valid = (index >= 0) & (index < counts[event_of])
    rows = np.flatnonzero(valid)
    jet_first = np.zeros(n_events + 1, dtype=np.int64)
    np.cumsum(counts, out=jet_first[1:])
    global_jet = jet_first[event_of[rows]] + index[rows]
    if sort_by:
        key = flat[sort_by] if sort_by in flat else ak.to_numpy(ak.flatten(candidates[sort_by], axis=1))
        order = np.lexsort((-key[rows], global_jet))  # stable: ties keep the file order
    else:
        order = np.argsort(global_jet, kind="stable")
    rows, global_jet = rows[order], global_jet[order]
    per_jet = np.bincount(global_jet, minlength=int(jet_first[-1])).astype(np.int64)
    records = ak.zip({name: flat[name][rows] for name in names}, with_name=with_name,
                     behavior=behavior)
    return ak.unflatten(ak.unflatten(records, per_jet), counts)


# ----------------------------------------------------------------------------------------------
# Events -> tensors
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class FeatureTensors:
    """Raw (not standardised) model inputs of a batch of events, in CSR form.

    Attributes:
        constituents: two-level :class:`~hepms.jagged.Jagged`: ``values [N, F_c]``, ``offsets
            [B + 1]`` (constituents of each jet), ``outer_offsets [E + 1]`` (jets of each event).
        jet_features: ``[B, F_j]``, row ``b`` for set ``b`` of ``constituents``.
        jets: the jets the rows belong to, in row order (``E * var * record``: the input jets,
            reordered and capped when :func:`feature_tensors` selected the leading ones), for
            labels, targets, and for putting per-jet outputs back into awkward form.
        spec: the :class:`FeatureSpec` of the columns.
    """

    constituents: Jagged
    jet_features: Tensor
    jets: ak.Array
    spec: FeatureSpec

    @property
    def constituent_offsets(self) -> Tensor:
        return self.constituents.offsets

    @property
    def jet_offsets(self) -> Tensor:
        assert self.constituents.outer_offsets is not None
        return self.constituents.outer_offsets


def _list_depth(array: Any, what: str) -> int:
    """List levels between the events and the records (1: ``E * var * record``)."""
    layout = array.layout
    depth = 0
    while True:
        if isinstance(layout, (ak.contents.IndexedOptionArray, ak.contents.ByteMaskedArray,
                               ak.contents.BitMaskedArray, ak.contents.UnmaskedArray)):
            raise ValueError(
                f"{what} has missing (None) entries ({array.type}): drop or fill them first"
            )
        if isinstance(layout, ak.contents.IndexedArray):
            layout = layout.content
            continue
        if isinstance(layout, (ak.contents.ListOffsetArray, ak.contents.ListArray,
                               ak.contents.RegularArray)):
            depth += 1
            layout = layout.content
            continue
        if isinstance(layout, ak.contents.RecordArray):
            return depth
        raise ValueError(f"{what} must be lists of records (e.g. events.Jet), got {array.type}")


def _collection_name(array: Any) -> Optional[str]:
    """The NanoEvents collection (``"Jet"``), from the layout parameters, if any."""
    layout = array.layout
    while isinstance(layout, ak.contents.Content):
        name = layout.parameter("collection_name")
        if name is not None:
            return str(name)
        # Lists, options and indexed nodes wrap one content; a RecordArray's ``content`` is a
        # method (content(field)): the descent ends there.
        layout = getattr(layout, "content", None)
    return None


def _missing_message(what: str, array: Any, missing: Sequence[str]) -> str:
    collection = _collection_name(array)
    needs = []
    for name in missing:
        branch = f" (branch {collection}_{name})" if collection else ""
        if name == "charge":
            reason = "constituent feature 'charge'"
        elif name == JET_INDEX_FIELD:
            reason = "grouping flat constituents into jets"
        else:
            reason = "the 4-vectors of the features"
        needs.append(f"{name!r}{branch}, needed for {reason}")
    return (
        f"{what} lack field(s) the model needs: " + "; ".join(needs)
        + f". The {what} have fields {list(array.fields)}"
    )


def check_inputs(jets: Any, constituents: Any, spec: FeatureSpec) -> bool:
    """Check the list structure and fields of ``jets`` and ``constituents`` for ``spec`` (on data
    or on typetracers: reads no data). Returns True for constituents nested per jet, False for
    flat ones (grouped by ``jetIdx``).

    Raises:
        ValueError: a wrong structure, or a missing field (named with its NanoAOD branch).
    """
    if _list_depth(jets, "jets") != 1:
        raise ValueError(f"jets must be one list of records per event (E * var * Jet), got {jets.type}")
    depth = _list_depth(constituents, "constituents")
    if depth not in (1, 2):
        raise ValueError(
            "constituents must be one flat list per event with a jetIdx field (E * var * PFCand) "
            f"or one list per jet (E * var * var * PFCand), got {constituents.type}"
        )
    nested = depth == 2
    needed = spec.required_fields(flat=not nested)
    for what, array in (("jets", jets), ("constituents", constituents)):
        missing = [name for name in needed[what] if name not in array.fields]
        if missing:
            raise ValueError(_missing_message(what, array, missing))
    return nested


def _momentum4d(jets: ak.Array) -> ak.Array:
    """Plain ``Momentum4D`` jets from ``pt, eta, phi, mass`` only (drops NanoEvents behaviours and
    parameters, reads four branches), in the jets' list structure."""
    import vector

    counts = ak.num(jets, axis=1)
    flat = {name: ak.flatten(jets[name], axis=1) for name in _JET_FIELDS}
    return ak.unflatten(
        ak.zip(flat, with_name="Momentum4D", behavior=vector.backends.awkward.behavior), counts
    )


def _check_finite(what: str, values: Tensor, names: Sequence[str]) -> None:
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return
    bad = (~finite).any(0).nonzero().flatten().tolist()
    rows = int((~finite).any(1).sum())
    raise ValueError(
        f"non-finite {what} feature(s) {[names[i] for i in bad]} in {rows} row(s): zero-pT or "
        "zero-energy objects? Cut them before computing features (or pass check_finite=False to "
        "get NaN scores)"
    )


def feature_tensors(
    jets: ak.Array,
    constituents: ak.Array,
    spec: FeatureSpec,
    *,
    select_jets: bool = True,
    dtype: torch.dtype = torch.float32,
    check_finite: bool = True,
) -> FeatureTensors:
    """The raw model inputs of ``spec`` for ``jets`` and their ``constituents`` (no event loops).

    Constituents are ordered by pT and capped at ``spec.max_constituents`` per jet; constituent
    features are computed relative to their jet with :func:`hepms.physics.constituent_features`,
    jet features picked by name from :data:`JET_FEATURES`. Features are *not* standardised (the
    :class:`~hepms.data.Standardizer` of a model file does that). ``spec.min_jets`` is not applied
    here (training drops such events in :func:`hepms.data.build_dataset`).

    Args:
        jets: ``E * var * record`` with ``pt, eta, phi, mass`` (NanoEvents ``events.Jet``, or the
            ``jets`` of :func:`hepms.generate.read_events`; other fields are ignored).
        constituents: nested per jet (``E * var * var * record``) or flat per event with a
            ``jetIdx`` field (grouped with :func:`group_by_jet`); fields ``pt, eta, phi, mass``
            and ``charge`` when the spec uses it.
        spec: the features to compute.
        select_jets: keep the leading ``spec.max_jets`` jets of each event by pT (training and the
            event model); False keeps every jet in its input order (the tau score of every jet).
        dtype: floating dtype of the tensors.
        check_finite: raise on NaN/inf features instead of returning them.

    Returns:
        A :class:`FeatureTensors` on the CPU.

    Raises:
        ValueError: a missing field (named), inputs of different event counts or jets per event,
            non-finite features (``check_finite``).
    """
    if not isinstance(spec, FeatureSpec):
        raise TypeError(f"spec must be a hepms.features.FeatureSpec, got {type(spec).__name__}")
    nested = check_inputs(jets, constituents, spec)
    if len(jets) != len(constituents):
        raise ValueError(f"jets and constituents have different numbers of events: {len(jets)} and "
                         f"{len(constituents)} (pass collections of the same events)")
    payload = [f for f in spec.required_fields(flat=not nested)["constituents"] if f != JET_INDEX_FIELD]
    if not nested:
        # Grouped pT-descending (stable, like physics.leading): only the cap is left to apply.
        parts = group_by_jet(constituents, ak.num(jets, axis=1), JET_INDEX_FIELD, fields=payload)
        parts = parts[:, :, : spec.max_constituents]
    else:
        if not ak.all(ak.num(jets, axis=1) == ak.num(constituents, axis=1)):
            raise ValueError("jets and constituents have different numbers of jets per event")
        parts = ak.zip({name: constituents[name] for name in payload}, depth_limit=3)
        parts = physics.leading(parts, spec.max_constituents, by="pt")
    vectors = _momentum4d(jets)
    if select_jets:
        order = ak.argsort(vectors.pt, axis=1, ascending=False, stable=True)[:, : spec.max_jets]
        jets, vectors, parts = jets[order], vectors[order], parts[order]

    with np.errstate(divide="ignore", invalid="ignore"):  # non-finite values are checked below
        part_records = physics.constituent_features(vectors, parts)
        jet_records = ak.zip(
            {name: JET_FEATURES[name](vectors, parts) for name in spec.jet_features}, depth_limit=2
        )
    constituent_table = to_jagged(part_records, fields=list(spec.constituent_features), dtype=dtype)
    jet_table = to_jagged(jet_records, fields=list(spec.jet_features), dtype=dtype)
    assert constituent_table.outer_offsets is not None
    if not torch.equal(jet_table.offsets, constituent_table.outer_offsets):
        raise ValueError("jets and constituents disagree on the number of jets per event")
    if check_finite:
        _check_finite("constituent", constituent_table.values, spec.constituent_features)
        _check_finite("jet", jet_table.values, spec.jet_features)
    return FeatureTensors(constituent_table, jet_table.values, jets, spec)


def regression_targets(
    jets: ak.Array, spec: FeatureSpec, label_field: str = "isTau", dtype: torch.dtype = torch.float32
) -> Optional[Tensor]:
    """``[B, len(spec.targets)]`` targets of the visible tau of each jet (zero for light jets), in
    the jets' order (e.g. :attr:`FeatureTensors.jets`); None when the spec has no targets or the
    jets lack the ``visTauPt, visTauEta, visTauPhi`` fields."""
    if not spec.targets or any(f not in jets.fields for f in _VISIBLE_TAU_FIELDS):
        return None
    pt, eta, phi = (jets[f] for f in _VISIBLE_TAU_FIELDS)
    is_tau = jets[label_field] > 0
    unit = spec.momentum_unit_gev
    formulas = {
        "px": lambda: pt * np.cos(phi) / unit,
        "py": lambda: pt * np.sin(phi) / unit,
        "pz": lambda: pt * np.sinh(eta) / unit,
        "pt": lambda: pt / unit,
        "eta": lambda: eta,
        "phi": lambda: phi,
    }
    columns = {name: ak.where(is_tau, formulas[name](), 0.0) for name in spec.targets}
    return to_jagged(ak.zip(columns), dtype=dtype).values
