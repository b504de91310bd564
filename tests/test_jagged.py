"""Tests for hepms.jagged: the Jagged container and the awkward <-> torch bridge."""
from __future__ import annotations

import warnings

import awkward as ak
import numpy as np
import pytest
import torch

import hepms
from hepms import Jagged, from_jagged, to_jagged


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _address(buffer: np.ndarray) -> int:
    return buffer.__array_interface__["data"][0]


def _jets(dtype=np.float32) -> ak.Array:
    """[events][jets] records with pt, eta, phi; event 1 has no jets."""
    return ak.zip(
        {
            "pt": ak.values_astype(ak.Array([[50.0, 30.0, 20.0], [], [40.0], [15.0, 10.0]]), dtype),
            "eta": ak.values_astype(ak.Array([[0.5, -1.0, 2.0], [], [0.1], [1.5, -2.2]]), dtype),
            "phi": ak.values_astype(ak.Array([[0.1, 3.0, -3.0], [], [1.0], [2.0, -0.5]]), dtype),
        }
    )


def _assert_roundtrip(array: ak.Array, jagged: Jagged, fields: list[str] | None) -> None:
    """Every column of ``jagged`` goes back to exactly the matching field of ``array``."""
    names = fields if fields is not None else (array.fields or [None])
    assert jagged.num_features == len(names)
    for column, name in enumerate(names):
        expected = array if name is None else array[name]
        back = from_jagged(jagged.values[:, column], like=array)
        assert back.to_list() == ak.values_astype(expected, np.float32).to_list()
        assert ak.all(ak.num(back, axis=1) == ak.num(array, axis=1))
    Jagged(jagged.values, jagged.offsets, jagged.outer_offsets)  # the result passes validation


def _layouts(layout: ak.contents.Content) -> set[str]:
    """Names of all node types in a layout, to check a test exercises the layout it claims."""
    names = {type(layout).__name__}
    if isinstance(layout, ak.contents.RecordArray):
        for content in layout.contents:
            names |= _layouts(content)
    elif hasattr(layout, "content"):
        names |= _layouts(layout.content)
    return names


# ----------------------------------------------------------------------------------------------
# to_jagged: layouts
# ----------------------------------------------------------------------------------------------
def test_packed_numbers_are_zero_copy():
    array = ak.Array([[1.0, 2.0], [], [3.0]], backend="cpu")
    array = ak.values_astype(array, np.float32)
    jagged = to_jagged(array)
    buffer = array.layout.content.data
    assert jagged.values.data_ptr() == _address(buffer)
    assert jagged.values.shape == (3, 1) and jagged.values.is_contiguous()
    assert jagged.offsets.dtype == torch.int64 and jagged.offsets.tolist() == [0, 2, 2, 3]
    assert jagged.outer_offsets is None and len(jagged) == 3
    _assert_roundtrip(array, jagged, None)


def test_single_field_record_is_zero_copy():
    jets = _jets()
    jagged = to_jagged(jets, fields=["eta"])
    assert jagged.values.data_ptr() == _address(jets.layout.content.content("eta").data)
    _assert_roundtrip(jets, jagged, ["eta"])


def test_fields_stacked_in_requested_order():
    jets = _jets()
    jagged = to_jagged(jets, fields=["phi", "pt"])
    assert jagged.values[:, 0].tolist() == pytest.approx(ak.flatten(jets.phi).to_list())
    assert jagged.values[:, 1].tolist() == pytest.approx(ak.flatten(jets.pt).to_list())
    assert jagged.values.is_contiguous()
    default = to_jagged(jets)  # all fields, record order
    assert default.num_features == 3
    assert default.values[:, 2].tolist() == pytest.approx(ak.flatten(jets.phi).to_list())
    _assert_roundtrip(jets, jagged, ["phi", "pt"])


@pytest.mark.parametrize(
    "index_type, np_type",
    [(ak.index.Index32, np.int32), (ak.index.IndexU32, np.uint32), (ak.index.Index64, np.int64)],
)
def test_offset_integer_types(index_type, np_type):
    content = ak.contents.NumpyArray(np.arange(6, dtype=np.float32))
    offsets = index_type(np.array([0, 2, 2, 5, 6], dtype=np_type))
    array = ak.Array(ak.contents.ListOffsetArray(offsets, content))
    jagged = to_jagged(array)
    assert jagged.offsets.dtype == torch.int64
    assert jagged.offsets.tolist() == [0, 2, 2, 5, 6]
    assert jagged.values.data_ptr() == _address(content.data)  # values still shared
    _assert_roundtrip(array, jagged, None)


def test_offsets_not_starting_at_zero_are_rebased_and_values_viewed():
    jets = _jets()
    sliced = jets[2:]
    assert int(sliced.layout.offsets[0]) == 3  # the slice keeps the original offsets
    jagged = to_jagged(sliced, fields=["pt"])
    assert jagged.offsets.tolist() == [0, 1, 3]
    buffer = jets.layout.content.content("pt").data
    assert jagged.values.data_ptr() == _address(buffer) + 3 * buffer.itemsize  # a view, no copy
    _assert_roundtrip(sliced, jagged, ["pt"])


def test_list_array_from_fancy_index():
    jets = _jets()
    picked = jets[[3, 0, 2]]
    assert isinstance(picked.layout, ak.contents.ListArray)
    jagged = to_jagged(picked, fields=["pt", "eta"])
    assert jagged.offsets.tolist() == [0, 2, 5, 6]
    assert jagged.values[:, 0].tolist() == [15.0, 10.0, 50.0, 30.0, 20.0, 40.0]
    _assert_roundtrip(picked, jagged, ["pt", "eta"])


def test_list_array_from_concatenate():
    jets = _jets()
    joined = ak.concatenate([jets[2:], jets[[1, 0]]])
    assert isinstance(joined.layout, ak.contents.ListArray)
    jagged = to_jagged(joined, fields=["pt"])
    assert jagged.values[:, 0].tolist() == [40.0, 15.0, 10.0, 50.0, 30.0, 20.0]
    _assert_roundtrip(joined, jagged, ["pt"])


def test_contiguous_list_array_is_zero_copy():
    content = ak.contents.NumpyArray(np.arange(10, dtype=np.float32))
    starts = ak.index.Index64(np.array([2, 4, 9, 4]))  # the empty list (9, 9) may start anywhere
    stops = ak.index.Index64(np.array([4, 4, 9, 7]))
    array = ak.Array(ak.contents.ListArray(starts, stops, content))
    jagged = to_jagged(array)
    assert jagged.offsets.tolist() == [0, 2, 2, 2, 5]
    assert jagged.values.data_ptr() == _address(content.data) + 2 * 4
    _assert_roundtrip(array, jagged, None)


def test_indexed_array_after_inner_mask():
    jets = _jets()
    selected = jets[jets.pt > 18]
    assert "IndexedArray" in _layouts(selected.layout)
    jagged = to_jagged(selected, fields=["pt", "phi"])
    assert jagged.offsets.tolist() == [0, 3, 3, 4, 4]
    assert jagged.values[:, 0].tolist() == [50.0, 30.0, 20.0, 40.0]
    _assert_roundtrip(selected, jagged, ["pt", "phi"])


def test_indexed_record_array_at_the_top():
    # A record of lists masked per event: IndexedArray over RecordArray over lists.
    events = ak.Array(
        {"pt": [[1.0, 2.0], [3.0], [4.0, 5.0, 6.0]], "eta": [[0.1, 0.2], [0.3], [0.4, 0.5, 0.6]]}
    )
    masked = events[np.array([True, False, True])]
    jagged = to_jagged(masked, fields=["pt", "eta"])
    assert jagged.offsets.tolist() == [0, 2, 5]
    assert jagged.values[:, 0].tolist() == [1.0, 2.0, 4.0, 5.0, 6.0]


def test_regular_and_multidimensional_layouts():
    # Regular lists of records (e.g. jets padded to 2 per event) are a list level.
    padded = ak.to_regular(ak.zip({"pt": [[1.0, 2.0], [3.0, 4.0]]}), axis=1)
    assert isinstance(padded.layout, ak.contents.RegularArray)
    jagged = to_jagged(padded)
    assert jagged.offsets.tolist() == [0, 2, 4]
    assert jagged.values.flatten().tolist() == [1.0, 2.0, 3.0, 4.0]
    # N * var * 3 * float: a regular dimension of numbers becomes 3 feature columns, whether the
    # layout is a RegularArray or a NumpyArray with an inner shape (same type, same result).
    triples = ak.to_regular(ak.Array([[[0.0, 1.0, 2.0]], [], [[3.0, 4.0, 5.0]]]), axis=2)
    assert isinstance(triples.layout.content, ak.contents.RegularArray)
    assert to_jagged(triples).values.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert to_jagged(triples).offsets.tolist() == [0, 1, 1, 2]
    with_missing = ak.to_regular(ak.Array([[[0.0, 1.0, 2.0], None]]), axis=2)
    assert str(with_missing.type) == "1 * var * option[3 * float64]"
    filled = to_jagged(with_missing, option=-1.0)
    assert filled.values.tolist() == [[0.0, 1.0, 2.0], [-1.0, -1.0, -1.0]]
    vectors = ak.Array(ak.contents.ListOffsetArray(
        ak.index.Index64(np.array([0, 1, 1, 2])),
        ak.contents.NumpyArray(np.arange(6, dtype=np.float32).reshape(2, 3)),
    ))
    jagged = to_jagged(vectors)
    assert jagged.values.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert jagged.offsets.tolist() == [0, 1, 1, 2]
    gathered = to_jagged(vectors[[2, 1, 0]])  # a gather of whole rows of width 3
    assert gathered.values.tolist() == [[3.0, 4.0, 5.0], [0.0, 1.0, 2.0]]
    assert gathered.offsets.tolist() == [0, 1, 1, 2]


def test_dtype_cast_and_integer_fields():
    jets = ak.with_field(_jets(np.float64), ak.Array([[1, -1, 0], [], [1], [0, -1]]), "charge")
    jagged = to_jagged(jets, fields=["pt", "charge"], dtype=torch.float64)
    assert jagged.values.dtype == torch.float64
    assert jagged.values[:, 1].tolist() == [1.0, -1.0, 0.0, 1.0, 0.0, -1.0]
    as_float32 = to_jagged(jets, fields=["pt"])  # float64 -> float32: one copy
    assert as_float32.values.dtype == torch.float32
    assert as_float32.values.flatten().tolist() == [50.0, 30.0, 20.0, 40.0, 15.0, 10.0]


def test_two_levels_events_jets_constituents():
    parts = ak.Array(
        [[[{"pt": 1.0, "eta": 0.1}, {"pt": 2.0, "eta": 0.2}], [{"pt": 3.0, "eta": 0.3}]],
         [],
         [[{"pt": 4.0, "eta": 0.4}], [], [{"pt": 5.0, "eta": 0.5}, {"pt": 6.0, "eta": 0.6}]]]
    )
    jagged = to_jagged(parts, fields=["eta", "pt"])
    assert jagged.num_levels == 2 and len(jagged) == 3
    assert jagged.outer_offsets.tolist() == [0, 2, 2, 5]
    assert jagged.offsets.tolist() == [0, 2, 3, 4, 4, 6]
    assert jagged.values[:, 1].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    back = from_jagged(jagged.values[:, 1], like=parts)
    assert back.to_list() == parts.pt.to_list()
    # Event mask on two levels: ListArray over lists.
    kept = parts[np.array([True, False, True])]
    sub = to_jagged(kept, fields=["pt"])
    assert sub.outer_offsets.tolist() == [0, 2, 5]
    assert sub.offsets.tolist() == [0, 2, 3, 4, 4, 6]
    assert from_jagged(sub.values[:, 0], like=kept).to_list() == kept.pt.to_list()


def test_two_level_fancy_index_gathers_constituents():
    parts = ak.Array([[[1.0, 2.0], [3.0]], [[4.0]], [[5.0, 6.0], [], [7.0]]])
    picked = parts[[2, 0]]
    jagged = to_jagged(picked)
    assert jagged.outer_offsets.tolist() == [0, 3, 5]
    assert jagged.offsets.tolist() == [0, 2, 2, 3, 5, 6]
    assert jagged.values.flatten().tolist() == [5.0, 6.0, 7.0, 1.0, 2.0, 3.0]


def test_empty_inputs():
    jagged = to_jagged(ak.Array([[], []]))
    assert jagged.values.shape == (0, 1) and jagged.offsets.tolist() == [0, 0, 0]
    jets = _jets()[1:2]
    jagged = to_jagged(jets, fields=["pt", "eta"])
    assert jagged.values.shape == (0, 2) and jagged.offsets.tolist() == [0, 0]


# ----------------------------------------------------------------------------------------------
# to_jagged: options, read-only buffers, NaN, uproot
# ----------------------------------------------------------------------------------------------
def test_missing_values_raise_by_default():
    array = ak.Array([[1.0, None], [2.0]])
    with pytest.raises(ValueError, match=r"missing \(None\)"):
        to_jagged(array)


def test_missing_values_filled():
    numbers = ak.Array([[1.0, None], None, [2.0]])
    jagged = to_jagged(numbers, option=-9.0)
    assert jagged.values.flatten().tolist() == [1.0, -9.0, 2.0]
    assert jagged.offsets.tolist() == [0, 2, 2, 3]  # the missing list became an empty list
    # Missing records fill every field; an int field is filled in the target dtype.
    records = ak.Array([[{"pt": 1.0, "q": 1}, None], [{"pt": 2.0, "q": -1}]])
    jagged = to_jagged(records, fields=["pt", "q"], option=0.5)
    assert jagged.values.tolist() == [[1.0, 1.0], [0.5, 0.5], [2.0, -1.0]]


def test_masked_array_without_missing_entries_is_zero_copy():
    array = ak.values_astype(ak.Array([[1.0, 2.0], [3.0]]), np.float32)
    masked = ak.mask(array, ak.Array([[True, True], [True]]))
    assert "ByteMaskedArray" in _layouts(masked.layout)
    jagged = to_jagged(masked)
    assert jagged.values.data_ptr() == _address(array.layout.content.data)
    with pytest.raises(ValueError, match="missing"):
        to_jagged(ak.mask(array, ak.Array([[True, False], [True]])))


def test_read_only_buffers_convert_without_warnings():
    data = np.arange(5, dtype=np.float32)
    data.flags.writeable = False
    offsets = np.array([0, 2, 5], dtype=np.int64)
    offsets.flags.writeable = False
    array = ak.Array(
        ak.contents.ListOffsetArray(ak.index.Index64(offsets), ak.contents.NumpyArray(data))
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning (e.g. torch's non-writable one) fails
        jagged = to_jagged(array)
    assert jagged.values.flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert jagged.offsets.tolist() == [0, 2, 5]
    # torch has no read-only tensors: values over a read-only buffer are a copy, so an
    # in-place edit cannot reach (or crash on) the immutable memory.
    assert jagged.values.data_ptr() != _address(data)
    jagged.values.mul_(2)
    assert data.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_check_nan_names_the_field():
    jets = ak.zip({"pt": [[1.0, 2.0]], "eta": [[np.nan, 0.0]]})
    assert to_jagged(jets).values.isnan().any()  # allowed unless asked
    with pytest.raises(ValueError, match=r"NaN values found in \['eta'\]"):
        to_jagged(jets, check_nan=True)


def test_uproot_ttree_roundtrip(tmp_path):
    uproot = pytest.importorskip("uproot")
    jets = _jets()
    path = tmp_path / "jets.root"
    with uproot.recreate(path) as file:
        file.mktree("Events", {"Jet": jets.type.content})
        file["Events"].extend({"Jet": jets})
    with uproot.open(path) as file:
        tree = file["Events"]
        flat = tree.arrays(["Jet_pt", "Jet_eta"])  # a record of lists, one offsets per branch
        zipped = tree.arrays(filter_name="*Jet*", how="zip").Jet  # a list of records
    from_flat = to_jagged(flat, fields=["Jet_pt", "Jet_eta"])
    from_zip = to_jagged(zipped, fields=["pt", "eta"])
    assert from_flat.offsets.tolist() == [0, 3, 3, 4, 6] == from_zip.offsets.tolist()
    assert torch.equal(from_flat.values, from_zip.values)
    assert from_zip.values[:, 0].tolist() == ak.flatten(jets.pt).to_list()
    single = to_jagged(zipped, fields=["eta"])  # float32 column read by uproot: shared
    assert single.values.data_ptr() == _address(zipped.layout.content.content("eta").data)
    scores = from_jagged(single.values[:, 0] * 2, like=zipped)
    assert scores.to_list() == (2 * jets.eta).to_list()


def test_uproot_rntuple_two_levels(tmp_path):
    uproot = pytest.importorskip("uproot")
    parts = ak.Array([[[1.0, 2.0], [3.0]], [], [[4.0], [], [5.0]]])
    path = tmp_path / "parts.root"
    with uproot.recreate(path) as file:
        file["Events"] = {"parts": parts}  # uproot writes doubly-jagged data as an RNTuple
    with uproot.open(path) as file:
        read = file["Events"].arrays()["parts"]
    jagged = to_jagged(read)
    assert jagged.outer_offsets.tolist() == [0, 2, 2, 5]
    assert jagged.offsets.tolist() == [0, 2, 3, 4, 4, 5]
    assert from_jagged(jagged.values[:, 0], like=read).to_list() == parts.to_list()


@pytest.mark.cuda
def test_cuda_backend():
    pytest.importorskip("cupy")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    jets = ak.to_backend(_jets(), "cuda")
    sliced = jets[1:]
    jagged = to_jagged(sliced, fields=["pt", "eta"])
    assert jagged.values.is_cuda and jagged.offsets.is_cuda
    assert jagged.offsets.tolist() == [0, 0, 1, 3]
    assert jagged.values[:, 0].tolist() == [40.0, 15.0, 10.0]
    single = to_jagged(jets, fields=["pt"])
    assert single.values.data_ptr() == jets.layout.content.content("pt").data.data.ptr
    gathered = to_jagged(jets[[3, 0]], fields=["pt"])
    assert gathered.values.flatten().tolist() == [15.0, 10.0, 50.0, 30.0, 20.0]
    back = from_jagged(single.values[:, 0], like=jets)
    assert ak.backend(back) == "cuda"
    assert ak.to_backend(back, "cpu").to_list() == _jets().pt.to_list()


# ----------------------------------------------------------------------------------------------
# to_jagged: bad input
# ----------------------------------------------------------------------------------------------
def test_non_list_array_raises():
    with pytest.raises(TypeError, match="needs an array of lists"):
        to_jagged(ak.Array([1.0, 2.0]))
    with pytest.raises(TypeError, match="needs an array of lists"):  # N * 2 * float: features
        to_jagged(ak.to_regular(ak.Array([[1.0, 2.0], [3.0, 4.0]]), axis=1))


def test_unequal_field_lengths_raise():
    ragged = ak.Array({"pt": [[1.0, 2.0], [3.0]], "eta": [[0.1], [0.2, 0.3]]})
    with pytest.raises(ValueError, match="'pt' and 'eta' have different list lengths"):
        to_jagged(ragged)


def test_missing_field_raises():
    with pytest.raises(ValueError, match=r"field\(s\) \['mass'\] not present"):
        to_jagged(_jets(), fields=["pt", "mass"])


def test_fields_without_records_raise():
    with pytest.raises(ValueError, match="no record fields"):
        to_jagged(ak.Array([[1.0]]), fields=["pt"])


def test_three_levels_raise():
    with pytest.raises(ValueError, match="one or two list levels, got 3"):
        to_jagged(ak.Array([[[[1.0]]]]))


def test_strings_raise():
    with pytest.raises(TypeError, match="strings"):
        to_jagged(ak.Array([["a", "b"], ["c"]]))


def test_nested_record_field_raises():
    nested = ak.Array([[{"p4": {"pt": 1.0}, "q": 1}]])
    with pytest.raises(TypeError, match="'p4' is itself a record"):
        to_jagged(nested)


def test_bad_option_and_dtype_raise():
    with pytest.raises(ValueError, match="option must be 'error' or a fill value"):
        to_jagged(ak.Array([[1.0]]), option="zero")
    with pytest.raises(TypeError, match="dtype must be a torch.dtype"):
        to_jagged(ak.Array([[1.0]]), dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# Jagged container
# ----------------------------------------------------------------------------------------------
def test_jagged_basics_and_to():
    values = torch.arange(10.0).view(5, 2)
    jagged = Jagged(values, torch.tensor([0, 2, 2, 5]))
    assert len(jagged) == 3 and jagged.num_features == 2 and jagged.num_segments == 3
    assert jagged.counts.tolist() == [2, 0, 3] and jagged.outer_counts is None
    moved = jagged.to("cpu", dtype=torch.float64)
    assert moved.values.dtype == torch.float64 and moved.offsets.dtype == torch.int64
    assert "segments=3" in repr(jagged)


def test_jagged_slice_one_level():
    values = torch.arange(10.0).view(5, 2)
    jagged = Jagged(values, torch.tensor([0, 2, 2, 5]))
    part = jagged[1:3]
    assert part.offsets.tolist() == [0, 0, 3]
    assert part.values.data_ptr() == values[2:].data_ptr()  # a view into the same storage
    assert torch.equal(part.values, values[2:5])
    assert jagged.slice(0, 1).values.tolist() == [[0.0, 1.0], [2.0, 3.0]]
    assert len(jagged[-1:]) == 1 and jagged[-1:].offsets.tolist() == [0, 3]
    assert len(jagged[2:1]) == 0 and jagged[2:1].values.shape == (0, 2)
    with pytest.raises(ValueError, match="step 1"):
        jagged[::2]
    with pytest.raises(TypeError, match="only slices"):
        jagged[0]
    with pytest.raises(IndexError):
        jagged.slice(1, 7)


def test_jagged_slice_two_levels_is_consistent():
    parts = ak.Array([[[1.0, 2.0], [3.0]], [], [[4.0], [], [5.0, 6.0]], [[7.0]]])
    jagged = to_jagged(parts)
    part = jagged[2:4]
    assert len(part) == 2
    assert part.outer_offsets.tolist() == [0, 3, 4]
    assert part.offsets.tolist() == [0, 1, 1, 3, 4]
    assert part.values.flatten().tolist() == [4.0, 5.0, 6.0, 7.0]
    assert part.values.data_ptr() == jagged.values[3:].data_ptr()
    assert from_jagged(part.values[:, 0], like=parts[2:4]).to_list() == parts[2:4].to_list()


@pytest.mark.parametrize(
    "offsets, outer, error, message",
    [
        (torch.tensor([0, 2, 5], dtype=torch.int32), None, TypeError, "offsets must be int64"),
        (torch.tensor([[0, 5]]), None, ValueError, "offsets must be 1-D"),
        (torch.tensor([1, 2, 5]), None, ValueError, r"offsets\[0\] must be 0, got 1"),
        (torch.tensor([0, 3, 2, 5]), None, ValueError, "non-decreasing"),
        (torch.tensor([0, 2, 4]), None, ValueError,
         r"offsets\[-1\] = 4 must equal values.shape\[0\] = 5"),
        (torch.tensor([0, 2, 5]), torch.tensor([0, 3]), ValueError, r"outer_offsets\[-1\] = 3"),
        (torch.tensor([0, 2, 5]), torch.tensor([0.0, 2.0]), TypeError,
         "outer_offsets must be int64"),
        ([0, 2, 5], None, TypeError, "offsets must be a torch.Tensor"),
    ],
)
def test_jagged_validation(offsets, outer, error, message):
    with pytest.raises(error, match=message):
        Jagged(torch.zeros(5, 1), offsets, outer)


def test_jagged_validation_of_values_and_skipping():
    with pytest.raises(ValueError, match=r"shape \[N, F\]"):
        Jagged(torch.zeros(5), torch.tensor([0, 5]))
    unchecked = Jagged(torch.zeros(5, 1), torch.tensor([1, 2]), validate=False)
    assert unchecked.offsets.tolist() == [1, 2]


# ----------------------------------------------------------------------------------------------
# from_jagged
# ----------------------------------------------------------------------------------------------
def test_from_jagged_per_jet_scores_into_events():
    events = ak.zip({"Jet": _jets(), "met": [10.0, 20.0, 30.0, 40.0]}, depth_limit=1)
    jagged = to_jagged(events.Jet, fields=["pt"])
    scores = torch.sigmoid(jagged.values[:, 0])
    events["Jet", "tau_score"] = from_jagged(scores, like=events.Jet)
    assert events.Jet.tau_score.type.content.content == ak.types.NumpyType("float32")
    assert ak.num(events.Jet.tau_score, axis=1).to_list() == [3, 0, 1, 2]
    assert events.Jet.tau_score[3, 1] == pytest.approx(float(torch.sigmoid(torch.tensor(10.0))))


def test_from_jagged_per_segment_and_two_dimensional():
    jets = _jets()
    per_event = from_jagged(torch.tensor([1.0, 2.0, 3.0, 4.0]), like=jets)
    assert per_event.to_list() == [1.0, 2.0, 3.0, 4.0] and per_event.ndim == 1
    two_d = from_jagged(torch.arange(12.0).view(6, 2), like=jets)
    assert str(two_d.type) == "4 * var * 2 * float32"
    assert two_d[3].to_list() == [[8.0, 9.0], [10.0, 11.0]]


def test_from_jagged_two_levels_and_ambiguity():
    parts = ak.Array([[[1.0, 2.0], [3.0]], [[4.0]]])  # 2 events, 3 jets, 4 constituents
    assert from_jagged(torch.tensor([5, 6, 7]), like=parts).to_list() == [[5, 6], [7]]
    assert from_jagged(torch.tensor([8, 9]), like=parts).to_list() == [8, 9]
    one_each = ak.Array([[1.0], [2.0]])  # 2 events with one jet each: rows could be either
    assert from_jagged(torch.tensor([1, 2]), like=one_each).to_list() == [[1], [2]]
    assert from_jagged(torch.tensor([1, 2]), like=one_each, level="segment").to_list() == [1, 2]


def test_from_jagged_keeps_missing_lists():
    like = ak.Array([[1.0, 2.0], None, [3.0]])
    jagged = to_jagged(like, option=0.0)
    assert from_jagged(jagged.values[:, 0] + 1, like=like).to_list() == [[2.0, 3.0], None, [4.0]]


def test_from_jagged_length_mismatch_raises():
    with pytest.raises(ValueError, match="tensor has 5 rows.*6 elements"):
        from_jagged(torch.zeros(5), like=_jets())
    with pytest.raises(ValueError, match="1-D or 2-D"):
        from_jagged(torch.zeros(6, 1, 1), like=_jets())
    with pytest.raises(TypeError, match="array of lists"):
        from_jagged(torch.zeros(2), like=ak.Array([1.0, 2.0]))


def test_public_api_is_exported():
    assert hepms.Jagged is Jagged and hepms.to_jagged is to_jagged
    assert hepms.physics.delta_phi is not None


@pytest.mark.parametrize("module", [hepms.jagged, hepms.physics])
def test_docstring_examples_run(module):
    import doctest

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_jagged_pooling_methods_match_the_segment_ops():
    events = ak.Array([[[1.0, 2.0], [3.0]], [], [[4.0], [], [5.0, -6.0]]])
    j = to_jagged(events)  # two levels: the methods pool the innermost sets (jets)
    assert j.sum().flatten().tolist() == [3.0, 3.0, 4.0, 0.0, -1.0]
    assert j.mean().flatten().tolist() == [1.5, 3.0, 4.0, 0.0, -0.5]
    maxima, argmax = j.max()
    assert maxima.flatten().tolist() == [2.0, 3.0, 4.0, 0.0, 5.0]
    assert argmax.flatten().tolist() == [1, 2, 3, -1, 4]
    assert torch.equal(j.sum(), hepms.segment_sum(j.values, j.offsets))
    assert torch.equal(hepms.segment_mean(j), j.mean())


def test_to_jagged_casts_every_field_to_one_dtype():
    records = ak.Array([[{"pt": 1.5, "charge": -1, "good": True}], [{"pt": 2.25, "charge": 1, "good": False}]])
    assert to_jagged(records).values.dtype == torch.float32  # the documented default
    j = to_jagged(records, dtype=torch.float64)
    assert j.values.dtype == torch.float64
    assert j.values.tolist() == [[1.5, -1.0, 1.0], [2.25, 1.0, 0.0]]


def test_jagged_takes_numpy_offsets():
    values = torch.arange(10.0).view(5, 2)
    j = Jagged(values, np.array([0, 2, 2, 5], dtype=np.uint32), np.array([0, 1, 3]))
    assert j.offsets.dtype == torch.int64 and j.offsets.tolist() == [0, 2, 2, 5]
    assert j.outer_offsets.dtype == torch.int64 and j.outer_offsets.tolist() == [0, 1, 3]
    assert j.sum().tolist() == [[2.0, 4.0], [0.0, 0.0], [18.0, 21.0]]
    with pytest.raises(TypeError, match="must be a torch.Tensor"):  # float offsets are not converted
        Jagged(values, np.array([0.0, 5.0]))
