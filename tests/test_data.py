"""hepms.data: building the dataset from awkward events, slicing views, gathers, splits,
standardisation."""
from __future__ import annotations

import math

import awkward as ak
import numpy as np
import pytest
import torch

from hepms import Jagged
from hepms.data import (
    Standardizer,
    TauEventData,
    build_dataset,
    prepare,
    split,
    toy_dataset,
)
from hepms.features import FeatureSpec


pytestmark = pytest.mark.usefixtures("one_thread")


def _jet(pt, eta, phi, mass, is_tau, parts, vis=(0.0, 0.0, 0.0)):
    return {
        "pt": pt, "eta": eta, "phi": phi, "mass": mass, "isTau": is_tau,
        "visTauPt": vis[0], "visTauEta": vis[1], "visTauPhi": vis[2],
        "constituents": [
            {"pt": p[0], "eta": p[1], "phi": p[2], "mass": 0.0, "charge": p[3]} for p in parts
        ],
    }


@pytest.fixture
def events() -> ak.Array:
    """Three events shaped like hepms.generate.read_events output (jets not pT-ordered)."""
    return ak.Array([
        {"label": 1, "jets": [
            _jet(30.0, 0.5, 1.0, 5.0, False, [(10.0, 0.5, 1.0, 1), (20.0, 0.4, 1.1, 0)]),
            _jet(50.0, -1.0, 3.1, 2.0, True, [(40.0, -1.0, 3.1, -1), (5.0, -1.1, -3.1, 0),
                                               (8.0, -0.9, 3.0, 1)], vis=(45.0, -1.0, 3.1)),
            _jet(25.0, 2.0, -2.0, 8.0, False, [(25.0, 2.0, -2.0, 0)]),
        ]},
        {"label": 0, "jets": []},  # no jet: dropped by min_jets=1
        {"label": 0, "jets": [
            _jet(60.0, 0.0, 0.0, 1.5, True, [(55.0, 0.0, 0.0, 1)], vis=(50.0, 0.1, 0.0)),
        ]},
    ])


# ------------------------------------------------------------------------------------------------
# build_dataset
# ------------------------------------------------------------------------------------------------
def test_build_dataset_layout_caps_and_features(events):
    data = build_dataset(events, FeatureSpec(max_jets=2, max_constituents=2))
    assert len(data) == 2  # the empty event is dropped
    assert data.jet_offsets.tolist() == [0, 2, 3]  # jets capped at 2 per event
    # jets pT-ordered (50, 30 | 60); constituents pT-ordered and capped at 2
    assert data.constituent_offsets.tolist() == [0, 2, 4, 5]
    assert data.jet_names == ("log_pt", "eta", "phi", "log_mass")
    expected_jets = torch.tensor([
        [math.log(50.1), -1.0, 3.1, math.log(2.1)],
        [math.log(30.1), 0.5, 1.0, math.log(5.1)],
        [math.log(60.1), 0.0, 0.0, math.log(1.6)],
    ])
    torch.testing.assert_close(data.jet_features, expected_jets)
    assert data.jet_labels.tolist() == [1.0, 0.0, 1.0]
    assert data.event_labels.tolist() == [1.0, 0.0]
    names = list(data.constituent_names)
    values = data.constituents.values
    # leading constituent of the leading jet: (40, -1.0, 3.1, charge -1)
    row = dict(zip(names, values[0].tolist()))
    assert row["log_pt"] == pytest.approx(math.log(40.1), rel=1e-6)
    assert row["deta"] == pytest.approx(0.0, abs=1e-6)
    assert row["charge"] == -1.0
    assert row["log_pt_rel"] == pytest.approx(math.log(40.0 / 50.0), rel=1e-5)
    # second constituent of the leading jet: (8, -0.9, 3.0): dphi wrapped, not 2*pi away
    row = dict(zip(names, values[1].tolist()))
    assert row["dphi"] == pytest.approx(-0.1, abs=1e-5)
    assert row["log_pt"] == pytest.approx(math.log(8.1), rel=1e-6)
    # regression targets: visible tau momentum / 100 GeV, zero for the light jet
    px, py, pz = 45.0 * math.cos(3.1), 45.0 * math.sin(3.1), 45.0 * math.sinh(-1.0)
    torch.testing.assert_close(data.jet_targets[0], torch.tensor([px, py, pz]) / 100.0)
    assert data.jet_targets[1].tolist() == [0.0, 0.0, 0.0]


def test_build_dataset_options_and_errors(events):
    spec = FeatureSpec(min_jets=0, jet_features=("log_pt", "log_n_constituents"),
                       constituent_features=("log_pt", "delta_r"), targets=())
    data = build_dataset(events, spec, dtype=torch.float64)
    assert len(data) == 3 and data.jet_offsets.tolist() == [0, 3, 3, 4]
    assert data.jet_features.dtype == torch.float64 and data.jet_targets is None
    torch.testing.assert_close(data.jet_features[:, 1],
                               torch.log1p(torch.tensor([3.0, 2.0, 1.0, 1.0], dtype=torch.float64)))
    with pytest.raises(ValueError, match="jet_features: unknown name"):
        FeatureSpec(jet_features=("rapidity_of_doom",))
    with pytest.raises(ValueError, match="constituent_features: unknown name"):
        FeatureSpec(constituent_features=("spin",))
    with pytest.raises(ValueError, match="max_jets"):
        FeatureSpec(max_jets=0)
    no_charge = ak.with_field(events, events.jets.constituents[["pt", "eta", "phi", "mass"]],
                              ["jets", "constituents"])
    with pytest.raises(ValueError, match="'charge'"):
        build_dataset(no_charge)
    assert build_dataset(no_charge, FeatureSpec(constituent_features=("deta", "dphi"))).num_jets == 4
    with pytest.raises(ValueError, match="no label field"):
        build_dataset(events, jet_label_field="isBottom")
    with pytest.raises(ValueError, match="no field 'truth'"):
        build_dataset(events, event_label_field="truth")


def test_build_dataset_rejects_non_finite_features(events):
    bad = ak.with_field(events, events.jets.constituents.pt * 0.0, ["jets", "constituents", "pt"])
    with pytest.raises(ValueError, match="non-finite"):
        build_dataset(bad)


# ------------------------------------------------------------------------------------------------
# The container: slices are views, gathers are consistent
# ------------------------------------------------------------------------------------------------
def test_slices_are_consistent_views():
    data = toy_dataset(50, seed=0)
    part = data[10:20]
    assert len(part) == 10
    jet_lo, jet_hi = int(data.jet_offsets[10]), int(data.jet_offsets[20])
    lo, hi = int(data.constituent_offsets[jet_lo]), int(data.constituent_offsets[jet_hi])
    assert part.num_jets == jet_hi - jet_lo and part.num_constituents == hi - lo
    # views: same storage, no copy
    assert part.constituents.values.data_ptr() == data.constituents.values[lo].data_ptr()
    assert part.jet_features.data_ptr() == data.jet_features[jet_lo].data_ptr()
    assert part.jet_targets.data_ptr() == data.jet_targets[jet_lo].data_ptr()
    torch.testing.assert_close(part.event_labels, data.event_labels[10:20])
    torch.testing.assert_close(part.jet_labels, data.jet_labels[jet_lo:jet_hi])
    assert part.jet_offsets[0] == 0 and part.constituent_offsets[0] == 0
    # re-validate the slice from scratch
    TauEventData(part.constituents, part.jet_features, part.jet_labels, part.event_labels)
    # slicing a slice equals slicing once
    twice = data[5:30][5:15]
    assert torch.equal(twice.constituents.values, part.constituents.values)
    assert torch.equal(twice.jet_offsets, part.jet_offsets)
    assert len(data[7:7]) == 0 and data[7:7].num_jets == 0
    with pytest.raises(TypeError, match="take"):
        data[[1, 2]]
    with pytest.raises(ValueError, match="step"):
        data[::2]


def test_take_gathers_events_in_order_and_inverts():
    data = toy_dataset(40, seed=1)
    order = torch.randperm(40, generator=torch.Generator().manual_seed(3))
    shuffled = data.take(order)
    for position in (0, 7, 39):  # event `order[position]` moved to `position`
        a, b = shuffled[position:position + 1], data[int(order[position]):int(order[position]) + 1]
        assert torch.equal(a.constituents.values, b.constituents.values)
        assert torch.equal(a.constituent_offsets, b.constituent_offsets)
        assert torch.equal(a.jet_features, b.jet_features)
        assert torch.equal(a.event_labels, b.event_labels)
    back = shuffled.take(torch.argsort(order))
    for name in ("jet_features", "jet_labels", "event_labels", "jet_targets"):
        assert torch.equal(getattr(back, name), getattr(data, name))
    assert torch.equal(back.constituents.values, data.constituents.values)
    assert torch.equal(back.jet_offsets, data.jet_offsets)
    repeated = data.take([2, 2])
    assert len(repeated) == 2 and repeated.num_jets == 2 * data[2:3].num_jets
    with pytest.raises(IndexError):
        data.take([40])


def test_container_checks_shapes():
    parts = Jagged(torch.randn(5, 2), torch.tensor([0, 2, 3, 5]), torch.tensor([0, 2, 3]))
    with pytest.raises(ValueError, match="jet_features"):
        TauEventData(parts, torch.randn(2, 4), torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="event_labels"):
        TauEventData(parts, torch.randn(3, 4), torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="two levels"):
        TauEventData(Jagged(torch.randn(5, 2), torch.tensor([0, 2, 5])), torch.randn(2, 4),
                     torch.zeros(2), torch.zeros(2))


def test_to_dtype_and_device():
    data = toy_dataset(10, seed=0)
    double = data.to(dtype=torch.float64)
    assert double.constituents.values.dtype == torch.float64
    assert double.jet_labels.dtype == torch.float64
    assert double.constituent_offsets.dtype == torch.int64
    if torch.cuda.is_available():  # exercised on CUDA machines only
        gpu = data.to("cuda")
        assert gpu.device.type == "cuda"
        part = gpu[2:5]  # sliced from host copies of the offsets
        assert torch.equal(part.jet_features.cpu(), data[2:5].jet_features)


# ------------------------------------------------------------------------------------------------
# split and standardisation
# ------------------------------------------------------------------------------------------------
def _event_ids(data: TauEventData) -> list[int]:
    # toy events get their index written into the first jet feature of each of their jets
    first = data.jet_offsets[:-1]
    return data.jet_features[first, 0].long().tolist()


def test_split_is_seeded_disjoint_and_complete():
    data = toy_dataset(101, seed=0)
    counts = data.jet_offsets.diff()
    ids = torch.repeat_interleave(torch.arange(101, dtype=torch.float32), counts)
    data = data._replace(jet_features=torch.cat([ids[:, None], data.jet_features[:, 1:]], 1))
    train, val, test = split(data, (0.6, 0.2, 0.2), seed=4)
    assert (len(train), len(val), len(test)) == (61, 20, 20)
    everything = _event_ids(train) + _event_ids(val) + _event_ids(test)
    assert sorted(everything) == list(range(101))
    again = split(data, (0.6, 0.2, 0.2), seed=4)
    assert _event_ids(again[1]) == _event_ids(val)
    assert _event_ids(split(data, (0.6, 0.2, 0.2), seed=5)[1]) != _event_ids(val)
    for bad in ((0.5, 0.6), (1.2, -0.2), (0.5, 0.5, 0.0)):
        with pytest.raises(ValueError, match="fractions"):
            split(data, bad)


def test_standardizer_uses_training_statistics_only():
    train = toy_dataset(200, seed=0)
    other = toy_dataset(100, seed=1, signal_strength=3.0)
    scaler = Standardizer.fit(train)
    scaled = scaler(train)
    torch.testing.assert_close(scaled.jet_features.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(scaled.jet_features.std(0, unbiased=False), torch.ones(4),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(scaled.constituents.values.mean(0), torch.zeros(8), atol=1e-5,
                               rtol=0)
    expected = (other.jet_features.double() - scaler.jet_mean) / scaler.jet_std
    torch.testing.assert_close(scaler(other).jet_features, expected.float())
    assert torch.equal(scaler(other).jet_labels, other.jet_labels)  # labels untouched
    restored = Standardizer.from_state_dict(scaler.state_dict())
    assert torch.equal(restored(other).constituents.values, scaler(other).constituents.values)
    with pytest.raises(ValueError, match="jet features"):
        scaler(toy_dataset(5, seed=2, jet_features=3))


# ------------------------------------------------------------------------------------------------
# generated events end to end
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_generated_events_build_split_and_standardise(tmp_path):
    pytest.importorskip("pythia8mc")
    pytest.importorskip("fastjet")
    from hepms.generate.io import read_events
    from hepms.generate.pipeline import generate

    generate(tmp_path, events_per_process=40, mu=0, seed=3, workers=1, progress=False,
             block_size=40)
    events = read_events(tmp_path, max_jets=8, max_constituents=50)
    train, val, test, scaler = prepare(events, seed=2, spec=FeatureSpec(max_jets=3, max_constituents=10))
    kept = events[ak.num(events.jets) >= 1]
    assert len(train) + len(val) + len(test) == len(kept)
    for part in (train, val, test):
        assert int(part.jet_offsets.diff().max()) <= 3
        assert int(part.constituent_offsets.diff().max()) <= 10
        assert bool(torch.isfinite(part.constituents.values).all())
    total_tau = sum(float(p.jet_labels.sum()) for p in (train, val, test))
    expected_tau = float(ak.sum(ak.values_astype(kept.jets.isTau[:, :3], np.int64)))
    assert total_tau == expected_tau
    assert float(train.jet_features.mean(0).abs().max()) < 1e-4  # fitted on train


def test_split_uses_the_generators_split_when_the_data_carry_it() -> None:
    import dataclasses

    data = toy_dataset(300, seed=3)
    assignment = torch.tensor([0, 1, 2] * 100)
    data = dataclasses.replace(data, event_split=assignment, validate=True)
    marked = dataclasses.replace(data, event_labels=torch.arange(300, dtype=torch.float32))
    train, val, test = split(marked, (0.6, 0.2, 0.2), seed=1)
    for k, part in enumerate((train, val, test)):
        rows = part.event_labels.long()
        assert len(part) == 100 and torch.all(rows % 3 == k)
        assert torch.equal(part.event_split, torch.full((100,), k))  # carried through take()
    again = split(marked, (0.6, 0.2, 0.2), seed=1)
    assert torch.equal(again[0].event_labels, train.event_labels)  # seeded order
    assert torch.equal(marked[10:20].event_split, assignment[10:20])  # and through slices
    assert [len(p) for p in split(marked, (0.5, 0.25, 0.25), seed=1, stored=False)] == [150, 75, 75]
    with pytest.raises(ValueError, match="three fractions"):
        split(marked, (0.5, 0.5), seed=1)
    with pytest.raises(ValueError, match="event_split must have shape"):
        dataclasses.replace(data, event_split=assignment[:10], validate=True)
    bad = dataclasses.replace(data, event_split=assignment + 1, validate=True)
    with pytest.raises(ValueError, match="outside 0"):
        split(bad, (0.6, 0.2, 0.2))
