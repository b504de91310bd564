"""Physics helpers on awkward arrays, with the Lorentz algebra delegated to scikit-hep ``vector``.

Objects are awkward records with either ``pt, eta, phi, mass`` (or ``E`` instead of ``mass``) or
``px, py, pz, E`` (or ``mass`` instead of ``E``) fields; names match case-insensitively, so NanoAOD
(``pt``) and Delphes (``PT``) records both work, and ``vector`` Momentum4D arrays pass through.
Energies and momenta are in GeV. Everything is vectorised with awkward broadcasting: no Python loop
over events.

Conventions of the package: ``log_pt(pt) = log(0.1 + pT/GeV)``; azimuthal differences are wrapped
to ``[-pi, pi)``.

Example:
    >>> import awkward as ak
    >>> from hepms import physics
    >>> muons = ak.Array([[{"pt": 45.0, "eta": 0.0, "phi": 0.0, "mass": 0.0},
    ...                    {"pt": 45.0, "eta": 0.0, "phi": 3.141592653589793, "mass": 0.0}]])
    >>> physics.invariant_mass(muons).tolist()
    [90.0]
    >>> float(physics.delta_phi(3.0, -3.0))
    -0.28318530717958623
"""
from __future__ import annotations

import math
from typing import Optional, Union

import awkward as ak
import numpy as np
import torch
import vector

vector.register_awkward()  # gives awkward records named "Momentum4D" their vector behaviour

__all__ = [
    "to_vectors",
    "invariant_mass",
    "pair_mass",
    "log_pt",
    "delta_phi",
    "delta_r",
    "rapidity",
    "constituent_features",
    "jet_features",
    "leading",
    "match_by_delta_r",
]

ArrayLike = Union[ak.Array, np.ndarray, torch.Tensor, float]

_TWO_PI = 2.0 * math.pi

# Accepted field names per vector coordinate (lower case), in order of preference.
_ALIASES = {
    "pt": ("pt",),
    "eta": ("eta",),
    "phi": ("phi",),
    "mass": ("mass", "m"),
    "px": ("px",),
    "py": ("py",),
    "pz": ("pz",),
    "E": ("e", "energy"),
}
# Coordinate systems vector understands, tried in order: the first whose fields all exist wins.
_SYSTEMS = (
    ("pt", "eta", "phi", "mass"),
    ("pt", "eta", "phi", "E"),
    ("px", "py", "pz", "E"),
    ("px", "py", "pz", "mass"),
)


# ----------------------------------------------------------------------------------------------
# Field access and 4-vectors
# ----------------------------------------------------------------------------------------------
def _find_field(array: ak.Array, coordinate: str) -> Optional[str]:
    """The record field naming ``coordinate`` (case-insensitive, with aliases), or None."""
    by_lower = {name.lower(): name for name in array.fields}
    for alias in _ALIASES.get(coordinate, (coordinate.lower(),)):
        if alias in by_lower:
            return by_lower[alias]
    return None


def _get(array: ak.Array, coordinate: str) -> ak.Array:
    """A coordinate of ``array``: its field if present, else the ``vector`` property computed
    from the 4-momentum fields (e.g. ``pt`` of px/py/pz/E records)."""
    name = _find_field(array, coordinate)
    if name is not None:
        return array[name]
    try:
        vectors = to_vectors(array)
    except ValueError:
        vectors = None
    if vectors is None or not hasattr(vectors, coordinate):
        raise ValueError(
            f"the records have no {coordinate!r} field (fields: {array.fields}) and it cannot be "
            "computed from 4-momentum fields"
        )
    return getattr(vectors, coordinate)


def _is_vector(array: object) -> bool:
    return isinstance(array, vector.backends.awkward.MomentumAwkward4D)


def to_vectors(objects: ak.Array) -> ak.Array:
    """``vector`` Momentum4D awkward array from records of 4-momentum components.

    Recognised field sets (case-insensitive): ``pt, eta, phi, mass|m``; ``pt, eta, phi, E|energy``;
    ``px, py, pz, E|energy``; ``px, py, pz, mass|m``. Other fields (charge, ...) are not carried.
    A Momentum4D array is returned unchanged.

    Example:
        >>> import awkward as ak
        >>> from hepms.physics import to_vectors
        >>> v = to_vectors(ak.Array([{"px": 3.0, "py": 4.0, "pz": 0.0, "E": 13.0}]))
        >>> v.pt.tolist(), v.mass.tolist()
        ([5.0], [12.0])
    """
    if _is_vector(objects):
        return objects
    objects = _as_array(objects)
    for system in _SYSTEMS:
        names = [_find_field(objects, coordinate) for coordinate in system]
        if all(name is not None for name in names):
            return vector.zip({coord: objects[name] for coord, name in zip(system, names)})
    raise ValueError(
        f"cannot build 4-vectors from fields {objects.fields}: need pt/eta/phi with mass or E, "
        "or px/py/pz with E or mass"
    )


def _as_array(objects: object) -> ak.Array:
    array = objects if isinstance(objects, ak.Array) else ak.Array(objects)
    if not array.fields:
        raise TypeError(f"expected an awkward array of records, got {array.type}")
    return array


# ----------------------------------------------------------------------------------------------
# Masses
# ----------------------------------------------------------------------------------------------
def invariant_mass(objects: ak.Array, n: Optional[int] = None) -> ak.Array:
    """Invariant mass of the sum of all objects in each innermost list, in GeV.

    With ``n``, only the ``n`` leading objects (by pT) enter, and lists with fewer than ``n``
    objects give ``None`` (e.g. ``n=2``: the di-jet mass of the two leading jets). An empty list
    sums to the zero vector: mass 0.

    Example:
        >>> import awkward as ak
        >>> from hepms.physics import invariant_mass
        >>> jets = ak.Array([[{"pt": 40.0, "eta": 0.0, "phi": 0.0, "mass": 0.0},
        ...                   {"pt": 40.0, "eta": 0.0, "phi": 3.141592653589793, "mass": 0.0},
        ...                   {"pt": 5.0, "eta": 1.0, "phi": 1.0, "mass": 0.0}]])
        >>> invariant_mass(jets, n=2).tolist()
        [80.0]
    """
    vectors = to_vectors(objects)
    if n is not None:
        vectors = leading(vectors, n, by="pt")
        complete = ak.num(vectors, axis=-1) == n
        return ak.mask(ak.sum(vectors, axis=-1).mass, complete)
    return ak.sum(vectors, axis=-1).mass


def pair_mass(
    first: Union[ak.Array, torch.Tensor], second: Union[ak.Array, torch.Tensor], eps: float = 1e-6
) -> Union[ak.Array, torch.Tensor]:
    """Invariant mass of ``first + second``, element by element.

    Awkward records (via ``vector``, with awkward broadcasting): select the pairs first, e.g.
    ``pair_mass(jets[:, 0], jets[:, 1])`` for the two leading jets of events with at least two, or
    all pairs with ``pair_mass(*ak.unzip(ak.combinations(jets, 2)))``.

    Torch tensors ``[..., 4]`` of ``(pT, eta, phi, mass)``: differentiable, for models (``vector``
    has no torch backend); ``eps`` (GeV^2) is added under each energy's square root and ``m^2`` is
    clamped at it, so gradients stay finite for zero momenta and collinear massless pairs.
    ``eps`` is not used for awkward input.
    """
    if isinstance(first, torch.Tensor) or isinstance(second, torch.Tensor):
        a, b = _cartesian(first, eps), _cartesian(second, eps)
        px, py, pz, energy = (x + y for x, y in zip(a, b))
        m2 = energy * energy - px * px - py * py - pz * pz
        return torch.sqrt(m2.clamp_min(eps))
    return (to_vectors(first) + to_vectors(second)).mass


def _cartesian(p4: torch.Tensor, eps: float) -> tuple[torch.Tensor, ...]:
    pt, eta, phi, mass = p4.unbind(-1)
    px, py, pz = pt * torch.cos(phi), pt * torch.sin(phi), pt * torch.sinh(eta)
    # eps under the root: a massless object at zero momentum (e.g. a "zeros" calibration) would
    # otherwise give an infinite gradient, i.e. NaN weights.
    energy = torch.sqrt(px * px + py * py + pz * pz + mass * mass + eps)
    return px, py, pz, energy


# ----------------------------------------------------------------------------------------------
# Scalars: log pT, angles, rapidity
# ----------------------------------------------------------------------------------------------
def log_pt(pt: ArrayLike) -> ArrayLike:
    """The project's pT scaling ``log(0.1 + pT/GeV)`` for awkward, numpy, torch or a float.

    The 0.1 GeV offset keeps zero-pT entries finite.
    """
    if isinstance(pt, torch.Tensor):
        return torch.log(pt + 0.1)
    return np.log(pt + 0.1)


def delta_phi(phi1: ArrayLike, phi2: ArrayLike) -> ArrayLike:
    """``phi1 - phi2`` wrapped to ``[-pi, pi)`` (awkward, numpy, torch or floats).

    Written out rather than taken from ``vector.deltaphi``, because the modulo can round to
    exactly ``+pi`` (e.g. ``delta_phi(-1e-17, 0)``): the convention needs the half-open range, so
    such values are moved to ``-pi``. The result keeps the inputs' floating dtype (float32 stays
    float32).
    """
    diff = phi1 - phi2
    if isinstance(diff, torch.Tensor):
        wrapped = torch.remainder(diff + math.pi, _TWO_PI) - math.pi
        return torch.where(wrapped >= math.pi, wrapped - _TWO_PI, wrapped)
    wrapped = np.mod(diff + math.pi, _TWO_PI) - math.pi
    # np.where, not `wrapped - 2 pi * (wrapped >= pi)`: a bool array times a Python float is float64
    result = np.where(wrapped >= math.pi, wrapped - _TWO_PI, wrapped)
    return result[()] if isinstance(result, np.ndarray) and result.ndim == 0 else result


def delta_r(first: ak.Array, second: ak.Array) -> ak.Array:
    """``sqrt(delta_eta**2 + delta_phi**2)`` between objects with eta/phi (records or vectors).

    Broadcasts like awkward arithmetic: jets ``[events][jets]`` against constituents
    ``[events][jets][constituents]`` gives one value per constituent.
    """
    first, second = _records(first), _records(second)
    d_eta = _get(first, "eta") - _get(second, "eta")
    d_phi = delta_phi(_get(first, "phi"), _get(second, "phi"))
    return np.sqrt(d_eta**2 + d_phi**2)


def _records(objects: object) -> ak.Array:
    return objects if _is_vector(objects) else _as_array(objects)


def rapidity(objects: ak.Array) -> ak.Array:
    """Rapidity ``y = 0.5 ln((E + pz) / (E - pz))`` of each object (via ``vector``)."""
    return to_vectors(objects).rapidity


# ----------------------------------------------------------------------------------------------
# Per-jet and per-constituent features
# ----------------------------------------------------------------------------------------------
def constituent_features(jets: ak.Array, constituents: ak.Array) -> ak.Array:
    """Constituent features relative to their jet, as used by DeepSets / PFN taggers.

    ``jets`` is ``[events][jets]`` (or ``[jets]``) and ``constituents`` one level deeper, with the
    same number of jets per event; jet quantities broadcast onto their constituents.

    Returns records, one per constituent, with fields

    * ``deta``: eta - eta_jet; ``dphi``: phi - phi_jet wrapped to [-pi, pi);
    * ``log_pt``: log(0.1 + pT); ``log_e``: log(0.1 + E) (the same GeV scaling);
    * ``log_pt_rel``: log(pT / pT_jet); ``log_e_rel``: log(E / E_jet);
    * ``delta_r``: sqrt(deta**2 + dphi**2);
    * ``charge``: only when the constituent records have a charge field (any case).

    dtype: every field has one floating dtype, that of the input kinematics (numpy promotion of the
    jets' and constituents' coordinates: float32 for float32 NanoAOD branches, float64 if either is
    float64); the charge is cast to it. ``hepms.to_jagged`` then casts to its own ``dtype``
    (float32 by default) in one pass.

    Zero-pT constituents give ``-inf`` relative logs: cut them beforehand.

    Example:
        >>> import awkward as ak, hepms
        >>> from hepms.physics import constituent_features
        >>> jets = ak.Array([[{"pt": 10.0, "eta": 0.0, "phi": 3.0, "mass": 0.0}]])
        >>> parts = ak.Array([[[{"pt": 10.0, "eta": 0.5, "phi": -3.0, "mass": 0.0}]]])
        >>> f = constituent_features(jets, parts)
        >>> round(float(f.deta[0, 0, 0]), 3), round(float(f.dphi[0, 0, 0]), 3), f.fields[-1]
        (0.5, 0.283, 'delta_r')
        >>> hepms.to_jagged(f).values.shape    # events -> jets -> constituents, 7 features
        torch.Size([1, 7])
    """
    _check_same_jets(jets, constituents)
    jet_v, part_v = to_vectors(jets), to_vectors(constituents)
    part_pt, part_e = part_v.pt, part_v.E
    d_eta = part_v.eta - jet_v.eta
    d_phi = delta_phi(part_v.phi, jet_v.phi)
    features = {
        "deta": d_eta,
        "dphi": d_phi,
        "log_pt": log_pt(part_pt),
        "log_e": log_pt(part_e),
        "log_pt_rel": np.log(part_pt / jet_v.pt),
        "log_e_rel": np.log(part_e / jet_v.E),
        "delta_r": np.sqrt(d_eta**2 + d_phi**2),
    }
    # Records with vector behaviour (e.g. from hepms.generate.read_events) keep their other
    # fields, so the charge is looked up on the input itself, vector or not.
    charge = _find_field(_as_array(constituents), "charge")
    if charge is not None:
        features["charge"] = constituents[charge]
    dtype = np.result_type(*(_leaf_dtype(v) for k, v in features.items() if k != "charge"))
    if not np.issubdtype(dtype, np.floating):
        dtype = np.dtype(np.float64)
    features = {k: v if _leaf_dtype(v) == dtype else ak.values_astype(v, dtype) for k, v in features.items()}
    return ak.zip(features)


def _leaf_dtype(array: ak.Array) -> np.dtype:
    """The numpy dtype of the numbers in an awkward array of (nested, optional) lists."""
    kind = array.type.content
    while not isinstance(kind, ak.types.NumpyType):
        kind = kind.content  # ListType, RegularType, OptionType
    return np.dtype(kind.primitive)


def _check_same_jets(jets: ak.Array, constituents: ak.Array) -> None:
    """Constituents must be one list level deeper than jets, with the same jets per event."""
    jet_depth = jets.layout.minmax_depth[0]
    part_depth = constituents.layout.minmax_depth[0]
    if part_depth != jet_depth + 1:
        raise ValueError(
            f"constituents ({constituents.type}) must have one list level more than jets "
            f"({jets.type})"
        )
    if len(jets) != len(constituents):
        raise ValueError(f"{len(jets)} jet entries but {len(constituents)} constituent entries")
    if jet_depth > 1 and not ak.all(ak.num(jets, axis=1) == ak.num(constituents, axis=1)):
        raise ValueError("jets and constituents have different numbers of jets per event")


def jet_features(jets: ak.Array, constituents: Optional[ak.Array] = None) -> ak.Array:
    """Jet-level features: ``pt, eta, phi, mass, n_constituents`` records, one per jet.

    ``n_constituents`` counts the lists of ``constituents`` when given, else it is read from a
    jet field named ``nConstituents`` / ``n_constituents`` (any case).
    """
    vectors = to_vectors(jets)
    features = {"pt": vectors.pt, "eta": vectors.eta, "phi": vectors.phi, "mass": vectors.mass}
    if constituents is not None:
        _check_same_jets(jets, constituents)
        features["n_constituents"] = ak.num(constituents, axis=-1)
    else:
        by_lower = {} if _is_vector(jets) else {f.lower(): f for f in jets.fields}
        name = by_lower.get("nconstituents", by_lower.get("n_constituents"))
        if name is None:
            raise ValueError(
                "pass constituents, or give the jets an nConstituents field, to count constituents"
            )
        features["n_constituents"] = jets[name]
    return ak.zip(features)


def leading(array: ak.Array, n: int, by: Union[str, ak.Array] = "pt", axis: int = -1) -> ak.Array:
    """Keep up to ``n`` leading objects per list, sorted by ``by`` descending, jagged form kept.

    ``by`` is a field name (or a vector property such as ``"pt"`` of px/py/pz/E records) or an
    array of sort keys; ``axis`` is the list axis of the key to sort along (``-1``: the innermost,
    e.g. constituents per jet; ``1`` on ``[events][jets]``: jets per event). Ties keep their
    original order. Lists shorter than ``n`` are kept whole.

    Example:
        >>> import awkward as ak
        >>> from hepms.physics import leading
        >>> jets = ak.Array([[{"pt": 10.0}, {"pt": 30.0}, {"pt": 20.0}], [{"pt": 5.0}], []])
        >>> leading(jets, 2).pt.tolist()
        [[30.0, 20.0], [5.0], []]
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    key = _get(array, by) if isinstance(by, str) else by
    depth = key.ndim
    list_axis = axis if axis >= 0 else depth + axis
    if not 1 <= list_axis < depth:
        raise ValueError(f"axis={axis} is not a list axis of the sort key ({key.type})")
    order = ak.argsort(key, axis=list_axis, ascending=False, stable=True)
    selection = (slice(None),) * list_axis + (slice(None, int(n)),)
    return array[order][selection]


# ----------------------------------------------------------------------------------------------
# Truth matching
# ----------------------------------------------------------------------------------------------
def match_by_delta_r(
    objects: ak.Array, targets: ak.Array, max_dr: float = 0.3
) -> tuple[ak.Array, ak.Array]:
    """Match each object to its nearest target in delta-R within the same event.

    ``objects`` and ``targets`` are ``[events][objects]`` records (or vectors) with eta/phi.
    Matching is per object and not exclusive: two jets may match the same target.

    Returns:
        ``(index, matched)``, both shaped like ``objects``: ``index`` (int64) is the position of
        the nearest target in its event's list when its delta-R is strictly below ``max_dr``,
        else -1; ``matched`` is ``index >= 0``.

    Example:
        >>> import awkward as ak
        >>> from hepms.physics import match_by_delta_r
        >>> jets = ak.Array([[{"eta": 0.0, "phi": 0.0}, {"eta": 2.0, "phi": 1.0}]])
        >>> taus = ak.Array([[{"eta": 2.1, "phi": 1.0}, {"eta": 0.1, "phi": 3.1}]])
        >>> index, matched = match_by_delta_r(jets, taus, max_dr=0.3)
        >>> index.tolist(), matched.tolist()
        ([[-1, 0]], [[False, True]])
    """
    if max_dr <= 0:
        raise ValueError(f"max_dr must be positive, got {max_dr}")
    pairs = ak.cartesian(
        {"obj": _eta_phi(objects), "tgt": _eta_phi(targets)}, axis=1, nested=True
    )  # [events][objects][targets]
    dr = delta_r(pairs.obj, pairs.tgt)
    nearest = ak.argmin(dr, axis=-1)  # None for events without targets
    matched = ak.fill_none(ak.min(dr, axis=-1) < max_dr, False)
    index = ak.where(matched, ak.fill_none(nearest, -1), -1)
    return ak.values_astype(index, np.int64), matched


def _eta_phi(objects: ak.Array) -> ak.Array:
    """Just eta and phi, so the cartesian product does not drag whole records along."""
    objects = _records(objects)
    return ak.zip({"eta": _get(objects, "eta"), "phi": _get(objects, "phi")})
