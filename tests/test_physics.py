"""Tests for hepms.physics, checked against hand-computed values and scikit-hep vector."""
from __future__ import annotations

import math

import awkward as ak
import numpy as np
import pytest
import torch
import vector

import hepms
from hepms import physics

Z_MASS = 91.1876


# ----------------------------------------------------------------------------------------------
# helpers: hand-made kinematics
# ----------------------------------------------------------------------------------------------
def _boost(energy: float, momentum: np.ndarray, beta: np.ndarray) -> tuple[float, np.ndarray]:
    """Lorentz boost of (E, p) by velocity ``beta`` (written out, independent of vector)."""
    b2 = float(beta @ beta)
    gamma = 1.0 / math.sqrt(1.0 - b2)
    bp = float(beta @ momentum)
    new_energy = gamma * (energy + bp)
    new_momentum = momentum + ((gamma - 1.0) * bp / b2 + gamma * energy) * beta
    return new_energy, new_momentum


def _pt_eta_phi(momentum: np.ndarray) -> dict[str, float]:
    px, py, pz = momentum
    pt = math.hypot(px, py)
    return {"pt": pt, "eta": math.asinh(pz / pt), "phi": math.atan2(py, px)}


def _z_decay(beta: np.ndarray, theta: float = 0.7, phi: float = 1.2):
    """Two massless leptons from a Z at rest, boosted by ``beta``: (lab E, lab p) per lepton."""
    direction = np.array(
        [math.sin(theta) * math.cos(phi), math.sin(theta) * math.sin(phi), math.cos(theta)]
    )
    half = Z_MASS / 2.0
    return [_boost(half, sign * half * direction, beta) for sign in (1.0, -1.0)]


# ----------------------------------------------------------------------------------------------
# masses
# ----------------------------------------------------------------------------------------------
def test_z_mass_from_boosted_leptons_pt_eta_phi():
    events = []
    for beta in ([0.3, -0.2, 0.5], [0.0, 0.0, 0.95], [-0.6, 0.1, -0.3]):
        leptons = _z_decay(np.array(beta))
        events.append([dict(_pt_eta_phi(p), mass=0.0) for _, p in leptons])
    muons = ak.Array(events)
    assert physics.invariant_mass(muons).to_list() == pytest.approx([Z_MASS] * 3, rel=1e-9)
    assert physics.invariant_mass(muons, n=2).to_list() == pytest.approx([Z_MASS] * 3, rel=1e-9)


def test_z_mass_from_px_py_pz_e_and_delphes_names():
    leptons = _z_decay(np.array([0.4, 0.4, -0.4]))
    cartesian = ak.Array([[{"px": p[0], "py": p[1], "pz": p[2], "E": e} for e, p in leptons]])
    assert physics.invariant_mass(cartesian).to_list() == pytest.approx([Z_MASS], rel=1e-9)
    delphes = ak.Array([[{"PT": d["pt"], "Eta": d["eta"], "Phi": d["phi"], "M": 0.0}
                         for d in (_pt_eta_phi(p) for _, p in leptons)]])
    assert physics.invariant_mass(delphes).to_list() == pytest.approx([Z_MASS], rel=1e-9)
    # The Z itself: its rapidity is atanh(beta_z) for the boost above, whatever beta_T.
    z_energy = sum(e for e, _ in leptons)
    z_momentum = sum(p for _, p in leptons)
    z = ak.Array([{"px": z_momentum[0], "py": z_momentum[1], "pz": z_momentum[2], "E": z_energy}])
    gamma = 1.0 / math.sqrt(1.0 - 3 * 0.4**2)
    assert z_energy == pytest.approx(gamma * Z_MASS)
    expected_y = 0.5 * math.log((z_energy + z_momentum[2]) / (z_energy - z_momentum[2]))
    assert physics.rapidity(z).to_list() == pytest.approx([expected_y])


def test_invariant_mass_leading_n_and_empty_lists():
    jets = ak.Array([
        [{"pt": 40.0, "eta": 0.0, "phi": 0.0, "mass": 0.0},
         {"pt": 5.0, "eta": 1.0, "phi": 1.0, "mass": 0.0},
         {"pt": 40.0, "eta": 0.0, "phi": math.pi, "mass": 0.0}],
        [{"pt": 30.0, "eta": 0.0, "phi": 0.0, "mass": 10.0}],
        [],
    ])
    leading_two = physics.invariant_mass(jets, n=2).to_list()
    assert leading_two[0] == pytest.approx(80.0) and leading_two[1:] == [None, None]
    everything = physics.invariant_mass(jets).to_list()
    v = (
        vector.obj(pt=40.0, eta=0.0, phi=0.0, mass=0.0)
        + vector.obj(pt=5.0, eta=1.0, phi=1.0, mass=0.0)
        + vector.obj(pt=40.0, eta=0.0, phi=math.pi, mass=0.0)
    )
    assert everything == pytest.approx([v.mass, 10.0, 0.0])


def test_pair_mass_matches_vector():
    jets = ak.Array([[{"pt": 50.0, "eta": 0.3, "phi": 0.1, "mass": 5.0},
                      {"pt": 30.0, "eta": -1.2, "phi": 2.5, "mass": 3.0}]])
    expected = (vector.obj(pt=50.0, eta=0.3, phi=0.1, mass=5.0)
                + vector.obj(pt=30.0, eta=-1.2, phi=2.5, mass=3.0)).mass
    assert physics.pair_mass(jets[:, 0], jets[:, 1]).to_list() == pytest.approx([expected])
    first, second = ak.unzip(ak.combinations(jets, 2))  # all pairs: here the only one
    assert ak.flatten(physics.pair_mass(first, second)).to_list() == pytest.approx([expected])


def test_missing_coordinates_raise():
    with pytest.raises(ValueError, match="cannot build 4-vectors from fields"):
        physics.to_vectors(ak.Array([[{"pt": 1.0, "eta": 0.0}]]))


# ----------------------------------------------------------------------------------------------
# scalars
# ----------------------------------------------------------------------------------------------
def test_log_pt_on_every_array_type():
    assert physics.log_pt(0.0) == pytest.approx(math.log(0.1))
    assert physics.log_pt(np.array([9.9])).tolist() == pytest.approx([math.log(10.0)])
    assert physics.log_pt(ak.Array([[9.9], []])).to_list() == [[pytest.approx(math.log(10.0))], []]
    assert physics.log_pt(torch.tensor([99.9])).tolist() == pytest.approx([math.log(100.0)])


@pytest.mark.parametrize(
    "phi1, phi2, expected",
    [
        (3.1, -3.1, 6.2 - 2 * math.pi),      # across the +-pi seam: small and negative
        (-3.1, 3.1, 2 * math.pi - 6.2),
        (math.pi, 0.0, -math.pi),            # +pi itself maps to -pi: the range is [-pi, pi)
        (0.0, math.pi, -math.pi),
        (-math.pi, 0.0, -math.pi),
        (1.0, 0.5, 0.5),
        (7.0, 0.0, 7.0 - 2 * math.pi),       # more than a full turn
    ],
)
def test_delta_phi_wraps_to_half_open_range(phi1, phi2, expected):
    assert float(physics.delta_phi(phi1, phi2)) == pytest.approx(expected, abs=1e-12)
    as_torch = physics.delta_phi(
        torch.tensor([phi1], dtype=torch.float64), torch.tensor([phi2], dtype=torch.float64)
    )
    assert as_torch.item() == pytest.approx(expected, abs=1e-12)


def test_delta_phi_range_and_agreement_with_vector():
    rng = np.random.default_rng(1)
    phi1 = ak.Array(rng.uniform(-math.pi, math.pi, 2000))
    phi2 = ak.Array(rng.uniform(-math.pi, math.pi, 2000))
    ours = physics.delta_phi(phi1, phi2)
    assert ak.all(ours >= -math.pi) and ak.all(ours < math.pi)
    a = vector.zip({"rho": ak.ones_like(phi1), "phi": phi1})
    b = vector.zip({"rho": ak.ones_like(phi2), "phi": phi2})
    assert np.allclose(ak.to_numpy(ours), ak.to_numpy(a.deltaphi(b)), atol=1e-12)
    # Rounding can land exactly on +pi; the convention moves it to -pi.
    assert float(physics.delta_phi(-1e-17, 0.0)) < math.pi
    assert physics.delta_phi(torch.tensor([-1e-8]), torch.tensor([0.0])).item() < math.pi


def test_delta_r_matches_vector():
    a = ak.Array([[{"pt": 10.0, "eta": 0.5, "phi": 3.0, "mass": 0.0}]])
    b = ak.Array([[{"pt": 20.0, "eta": -0.5, "phi": -3.0, "mass": 1.0}]])
    expected = math.hypot(1.0, 6.0 - 2 * math.pi)
    assert physics.delta_r(a, b).to_list() == [[pytest.approx(expected)]]
    by_vector = physics.to_vectors(a).deltaR(physics.to_vectors(b))[0, 0]
    assert physics.delta_r(a, b).to_list() == [[pytest.approx(by_vector)]]
    cartesian = ak.Array([{"px": 1.0, "py": 1.0, "pz": 1.0, "E": 3.0}])  # eta/phi via vector
    other = ak.Array([{"eta": 0.0, "phi": 0.0}])
    v = vector.obj(px=1.0, py=1.0, pz=1.0, E=3.0)
    assert physics.delta_r(cartesian, other).to_list() == pytest.approx([math.hypot(v.eta, v.phi)])


def test_rapidity_hand_formula():
    objects = ak.Array([[{"pt": 20.0, "eta": 1.3, "phi": 0.2, "mass": 5.0}]])
    v = vector.obj(pt=20.0, eta=1.3, phi=0.2, mass=5.0)
    expected = 0.5 * math.log((v.E + v.pz) / (v.E - v.pz))
    assert physics.rapidity(objects).to_list() == [[pytest.approx(expected)]]
    massless = ak.Array([[{"pt": 20.0, "eta": 1.3, "phi": 0.2, "mass": 0.0}]])
    assert physics.rapidity(massless).to_list() == [[pytest.approx(1.3)]]  # y = eta for m = 0


# ----------------------------------------------------------------------------------------------
# features
# ----------------------------------------------------------------------------------------------
def _jets_and_constituents(with_charge: bool = True):
    jets = ak.Array([
        [{"pt": 100.0, "eta": 0.5, "phi": 3.0, "mass": 10.0},
         {"pt": 50.0, "eta": -1.0, "phi": 0.0, "mass": 5.0}],
        [],
        [{"pt": 30.0, "eta": 2.0, "phi": -1.0, "mass": 0.0}],
    ])
    parts = [
        [[{"pt": 60.0, "eta": 0.6, "phi": -3.1, "mass": 0.0, "charge": 1},
          {"pt": 40.0, "eta": 0.4, "phi": 2.9, "mass": 0.14, "charge": -1}],
         [{"pt": 50.0, "eta": -1.0, "phi": 0.1, "mass": 0.0, "charge": 0}]],
        [],
        [[]],  # a jet without constituents
    ]
    constituents = ak.Array(parts)
    if not with_charge:
        constituents = constituents[["pt", "eta", "phi", "mass"]]
    return jets, constituents


def test_constituent_features_hand_values():
    jets, constituents = _jets_and_constituents()
    features = physics.constituent_features(jets, constituents)
    assert features.fields == [
        "deta", "dphi", "log_pt", "log_e", "log_pt_rel", "log_e_rel", "delta_r", "charge"
    ]
    assert ak.num(features, axis=2).to_list() == [[2, 1], [], [0]]
    first = features[0, 0, 0]
    jet = vector.obj(pt=100.0, eta=0.5, phi=3.0, mass=10.0)
    part = vector.obj(pt=60.0, eta=0.6, phi=-3.1, mass=0.0)
    dphi = -3.1 - 3.0 + 2 * math.pi
    assert first.deta == pytest.approx(0.1)
    assert first.dphi == pytest.approx(dphi)
    assert first.log_pt == pytest.approx(math.log(60.1))
    assert first.log_e == pytest.approx(math.log(0.1 + part.E))
    assert first.log_pt_rel == pytest.approx(math.log(0.6))
    assert first.log_e_rel == pytest.approx(math.log(part.E / jet.E))
    assert first.delta_r == pytest.approx(math.hypot(0.1, dphi))
    assert first.charge == 1
    second_jet = features[0, 1, 0]
    assert second_jet.deta == pytest.approx(0.0) and second_jet.dphi == pytest.approx(0.1)
    # The features go straight into a two-level Jagged: events -> jets -> constituents.
    jagged = hepms.to_jagged(features)
    assert jagged.num_features == 8
    assert jagged.outer_offsets.tolist() == [0, 2, 2, 3] and jagged.offsets.tolist() == [0, 2, 3, 3]


def test_constituent_features_without_charge():
    jets, constituents = _jets_and_constituents(with_charge=False)
    assert "charge" not in physics.constituent_features(jets, constituents).fields


def test_constituent_features_mismatched_jets_raise():
    jets, constituents = _jets_and_constituents()
    with pytest.raises(ValueError, match="different numbers of jets per event"):
        physics.constituent_features(jets[[0, 2, 1]], constituents)
    with pytest.raises(ValueError, match="one list level more"):
        physics.constituent_features(jets, jets)


def test_jet_features():
    jets, constituents = _jets_and_constituents()
    features = physics.jet_features(jets, constituents)
    assert features.fields == ["pt", "eta", "phi", "mass", "n_constituents"]
    assert features.n_constituents.to_list() == [[2, 1], [], [0]]
    masses = features.mass.to_list()
    assert masses == [[pytest.approx(10.0), pytest.approx(5.0)], [], [pytest.approx(0.0)]]
    with_counts = ak.with_field(jets, ak.Array([[7, 3], [], [1]]), "nConstituents")
    assert physics.jet_features(with_counts).n_constituents.to_list() == [[7, 3], [], [1]]
    with pytest.raises(ValueError, match="nConstituents"):
        physics.jet_features(jets)


def test_leading_keeps_jagged_form():
    jets = ak.Array([
        [{"pt": 10.0, "i": 0}, {"pt": 30.0, "i": 1}, {"pt": 20.0, "i": 2}, {"pt": 30.0, "i": 3}],
        [{"pt": 5.0, "i": 0}],
        [],
    ])
    top = physics.leading(jets, 2)
    assert top.pt.to_list() == [[30.0, 30.0], [5.0], []]
    assert top.i.to_list() == [[1, 3], [0], []]  # ties keep their original order
    assert physics.leading(jets, 0).pt.to_list() == [[], [], []]
    assert physics.leading(jets, 10).pt.to_list() == [[30.0, 30.0, 20.0, 10.0], [5.0], []]


def test_leading_constituents_per_jet_and_jets_by_key():
    _, constituents = _jets_and_constituents()
    top = physics.leading(constituents, 1)  # innermost axis: constituents per jet
    assert top.pt.to_list() == [[[60.0], [50.0]], [], [[]]]
    jets, _ = _jets_and_constituents()
    # Sort constituent lists by their jet's mass (a key one level up): jets per event.
    by_jet = physics.leading(constituents, 1, by=jets.mass, axis=1)
    assert ak.num(by_jet, axis=2).to_list() == [[2], [], [0]]
    with pytest.raises(ValueError, match="non-negative integer"):
        physics.leading(jets, -1)
    with pytest.raises(ValueError, match="not a list axis"):
        physics.leading(jets, 1, axis=0)


def test_leading_by_vector_property():
    cartesian = ak.Array([[{"px": 1.0, "py": 0.0, "pz": 0.0, "E": 2.0},
                           {"px": 3.0, "py": 4.0, "pz": 0.0, "E": 6.0}]])
    assert physics.leading(cartesian, 1).px.to_list() == [[3.0]]


def test_match_by_delta_r():
    jets = ak.Array([
        [{"eta": 0.0, "phi": 3.1}, {"eta": 1.0, "phi": 0.0}, {"eta": -2.0, "phi": 1.0}],
        [{"eta": 0.0, "phi": 0.0}],
        [],
    ])
    taus = ak.Array([
        [{"eta": 1.0, "phi": 0.5}, {"eta": 0.05, "phi": -3.1}, {"eta": 1.0, "phi": 0.1}],
        [],
        [{"eta": 0.0, "phi": 0.0}],
    ])
    index, matched = physics.match_by_delta_r(jets, taus, max_dr=0.3)
    # jet 0 matches tau 1 across the phi seam; jet 1 is nearest to tau 2 (0.1 < 0.5); jet 2 none.
    assert index.to_list() == [[1, 2, -1], [-1], []]
    assert matched.to_list() == [[True, True, False], [False], []]
    assert str(index.type.content.content) == "int64"
    _, loose = physics.match_by_delta_r(jets, taus, max_dr=0.6)
    assert loose.to_list() == [[True, True, False], [False], []]
    with pytest.raises(ValueError, match="max_dr must be positive"):
        physics.match_by_delta_r(jets, taus, max_dr=0.0)


def test_constituent_features_keep_charge_of_vector_records():
    import vector

    vector.register_awkward()
    jets = ak.zip({"pt": [[40.0]], "eta": [[0.1]], "phi": [[0.2]], "mass": [[5.0]]}, with_name="Momentum4D")
    parts = ak.zip(
        {"pt": [[[30.0, 10.0]]], "eta": [[[0.1, 0.2]]], "phi": [[[0.2, 0.3]]],
         "mass": [[[0.14, 0.0]]], "charge": [[[-1, 0]]]},
        with_name="Momentum4D",
    )
    features = physics.constituent_features(jets, parts)
    assert "charge" in features.fields
    assert ak.to_list(features.charge) == [[[-1, 0]]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_constituent_features_have_one_dtype_the_inputs(dtype):
    jets = ak.Array([[{"pt": 10.0, "eta": 0.0, "phi": 3.0, "mass": 0.0}]])
    parts = ak.Array([[[{"pt": 10.0, "eta": 0.5, "phi": -3.0, "mass": 0.0, "charge": 1},
                        {"pt": 2.0, "eta": -0.1, "phi": 2.9, "mass": 0.1, "charge": -1}]]])
    cast = {name: ak.values_astype(parts[name], dtype) for name in ("pt", "eta", "phi", "mass")}
    parts = ak.zip({**cast, "charge": parts["charge"]})  # charge stays int64 in the input
    features = physics.constituent_features(ak.values_astype(jets, dtype), parts)
    for name in features.fields:
        assert ak.flatten(features[name], axis=None).to_numpy().dtype == dtype, name
    assert ak.flatten(features.charge, axis=None).tolist() == [1.0, -1.0]
    assert physics.delta_phi(np.array([3.0], dtype=dtype), np.array([-3.0], dtype=dtype)).dtype == dtype
