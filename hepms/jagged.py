"""Jagged tensors and the bridge between awkward arrays and PyTorch.

A :class:`Jagged` holds variable-length sets as flat storage plus offsets (CSR), the form that
``hepms.segment_sum`` & co. consume:

* ``values``: tensor ``[N, F]``, the elements of all sets stacked along dimension 0;
* ``offsets``: int64 ``[B + 1]``, set ``b`` is ``values[offsets[b]:offsets[b + 1]]``;
* ``outer_offsets`` (optional): int64 ``[E + 1]`` over the *sets* (events -> jets), so that
  event ``e`` owns jets ``outer_offsets[e]:outer_offsets[e + 1]`` and their constituents.

:func:`to_jagged` converts an awkward array of lists (one or two list levels, of numbers or of
records) into a :class:`Jagged`, sharing memory with the awkward buffers wherever the layout allows;
:func:`from_jagged` turns per-element or per-set results back into awkward arrays shaped like the
input. ``ak.to_torch`` refuses jagged arrays: this is the gap these two functions fill.

Example:
    >>> import awkward as ak, torch, hepms
    >>> jets = ak.Array([[{"pt": 50.0, "eta": 0.5}, {"pt": 30.0, "eta": -1.0}], [],
    ...                  [{"pt": 20.0, "eta": 2.0}]])
    >>> j = hepms.to_jagged(jets, fields=["pt", "eta"])
    >>> j.values.tolist(), j.offsets.tolist()
    ([[50.0, 0.5], [30.0, -1.0], [20.0, 2.0]], [0, 2, 2, 3])
    >>> scores = j.values[:, 0] / 100                      # one number per jet
    >>> hepms.from_jagged(scores, like=jets).tolist()
    [[0.5, 0.30000001192092896], [], [0.20000000298023224]]
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import KW_ONLY, InitVar, dataclass
from typing import Literal, NamedTuple, Optional, Sequence, Union

import awkward as ak
import numpy as np
import torch
from torch import Tensor

from hepms import ops

log = logging.getLogger(__name__)

__all__ = ["Jagged", "to_jagged", "from_jagged", "take_segments"]

OptionPolicy = Union[Literal["error"], float, int, bool]


# ----------------------------------------------------------------------------------------------
# The Jagged container
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False, repr=False)
class Jagged:
    """Variable-length sets as flat ``values [N, F]`` plus int64 ``offsets [B + 1]``.

    With ``outer_offsets [E + 1]`` the data has two levels over the same flat storage: entries
    (events) own ranges of sets (jets), sets own ranges of elements (constituents).
    ``len()`` counts the outermost entries: events for two levels, sets for one.

    Args:
        values: ``[N, F]`` tensor (usually floating; ``to_jagged`` returns it contiguous).
        offsets: int64 ``[B + 1]``, ``offsets[0] == 0``, non-decreasing, ``offsets[-1] == N``
            (an integer numpy array is converted; from set lengths: ``hepms.offsets_from_counts``).
        outer_offsets: optional int64 ``[E + 1]`` into the ``B`` sets, same rules with
            ``outer_offsets[-1] == B``.
        validate: check the rules above (this reads the offsets, i.e. synchronises a GPU);
            pass ``False`` for data you built yourself and trust.

    Example:
        >>> import torch
        >>> from hepms import Jagged
        >>> j = Jagged(torch.arange(10.0).view(5, 2), torch.tensor([0, 2, 2, 5]))
        >>> len(j), j.num_features, j.counts.tolist()
        (3, 2, [2, 0, 3])
        >>> j[1:].offsets.tolist(), j[1:].values.shape
        ([0, 0, 3], torch.Size([3, 2]))
        >>> j.sum().tolist()                       # = hepms.segment_sum(j); also .mean(), .max()
        [[2.0, 4.0], [0.0, 0.0], [18.0, 21.0]]
    """

    values: Tensor
    offsets: Tensor
    outer_offsets: Optional[Tensor] = None
    _: KW_ONLY
    validate: InitVar[bool] = True

    def __post_init__(self, validate: bool) -> None:
        for name in ("offsets", "outer_offsets"):  # numpy offsets (e.g. from awkward) as int64 tensors
            given = getattr(self, name)
            if isinstance(given, np.ndarray) and given.dtype.kind in "iu":
                device = self.values.device if isinstance(self.values, Tensor) else None
                object.__setattr__(self, name, torch.tensor(given.astype(np.int64, copy=False), device=device))
        if validate:
            self._validate()

    # -- validation -----------------------------------------------------------------------------
    def _validate(self) -> None:
        if not isinstance(self.values, Tensor):
            raise TypeError(
                f"Jagged.values must be a torch.Tensor, got {type(self.values).__name__}"
            )
        if self.values.dim() != 2:
            raise ValueError(
                f"Jagged.values must have shape [N, F] (2-D), got shape {tuple(self.values.shape)}"
            )
        _check_offsets("offsets", self.offsets, self.values.shape[0], self.values.device)
        if self.outer_offsets is not None:
            _check_offsets(
                "outer_offsets", self.outer_offsets, self.offsets.shape[0] - 1, self.values.device
            )

    # -- shape information ----------------------------------------------------------------------
    def __len__(self) -> int:
        outer = self.offsets if self.outer_offsets is None else self.outer_offsets
        return outer.shape[0] - 1

    @property
    def num_levels(self) -> int:
        """1 for sets of elements, 2 for entries of sets of elements."""
        return 1 if self.outer_offsets is None else 2

    @property
    def num_features(self) -> int:
        return self.values.shape[1]

    @property
    def num_segments(self) -> int:
        """Number of innermost sets ``B`` (jets), whatever the number of levels."""
        return self.offsets.shape[0] - 1

    @property
    def counts(self) -> Tensor:
        """Length of every innermost set (elements per jet), int64 ``[B]``."""
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def outer_counts(self) -> Optional[Tensor]:
        """Sets per outer entry (jets per event), int64 ``[E]``; ``None`` for one level."""
        if self.outer_offsets is None:
            return None
        return self.outer_offsets[1:] - self.outer_offsets[:-1]

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    # -- pooling over the innermost sets (hepms.segment_*) ----------------------------------------
    def sum(self, validate: Optional[bool] = None) -> Tensor:
        """Sum over each innermost set (jet), ``[B, F]``; 0 for empty sets (``hepms.segment_sum``)."""
        return ops.segment_sum(self.values, self.offsets, validate)

    def mean(self, validate: Optional[bool] = None) -> Tensor:
        """Mean over each innermost set (jet), ``[B, F]``; 0 for empty sets."""
        return ops.segment_mean(self.values, self.offsets, validate)

    def max(self, validate: Optional[bool] = None) -> tuple[Tensor, Tensor]:
        """``(max, argmax)`` over each innermost set (jet), as :func:`hepms.segment_max`."""
        return ops.segment_max(self.values, self.offsets, validate)

    # -- conversions ----------------------------------------------------------------------------
    def to(
        self,
        device: Union[str, torch.device, None] = None,
        dtype: Optional[torch.dtype] = None,
        *,
        non_blocking: bool = False,
    ) -> "Jagged":
        """Move to ``device`` and/or cast ``values`` to ``dtype`` (offsets stay int64)."""
        values = self.values.to(device=device, dtype=dtype, non_blocking=non_blocking)
        offsets = self.offsets.to(device=device, non_blocking=non_blocking)
        outer = None
        if self.outer_offsets is not None:
            outer = self.outer_offsets.to(device=device, non_blocking=non_blocking)
        return Jagged(values, offsets, outer, validate=False)

    # -- slicing --------------------------------------------------------------------------------
    def __getitem__(self, item: slice) -> "Jagged":
        if not isinstance(item, slice):
            raise TypeError(
                f"Jagged supports only slices of entries (jagged[a:b]), got {type(item).__name__}"
            )
        start, stop, step = item.indices(len(self))
        if step != 1:
            raise ValueError(f"Jagged slices must have step 1, got step {step}")
        return self.slice(start, max(start, stop))

    def slice(self, start: int, stop: int) -> "Jagged":
        """Entries ``start:stop`` (events for two levels, sets for one), without copying values.

        The offsets are re-based to start at 0 (a copy of ``stop - start + 1`` integers); the values
        are a view. For two levels, jets and constituents are sliced consistently.
        """
        n = len(self)
        if not (0 <= start <= stop <= n):
            raise IndexError(f"Jagged.slice({start}, {stop}) out of range for {n} entries")
        if self.outer_offsets is None:
            offsets, lo, hi = _rebase(self.offsets, start, stop)
            return Jagged(self.values[lo:hi], offsets, None, validate=False)
        outer, jet_lo, jet_hi = _rebase(self.outer_offsets, start, stop)
        offsets, lo, hi = _rebase(self.offsets, jet_lo, jet_hi)
        return Jagged(self.values[lo:hi], offsets, outer, validate=False)

    def __repr__(self) -> str:
        levels = "" if self.outer_offsets is None else f", entries={len(self)}"
        return (
            f"Jagged(values={tuple(self.values.shape)} {self.values.dtype}, "
            f"segments={self.num_segments}{levels}, device={self.values.device})"
        )


def _rebase(offsets: Tensor, start: int, stop: int) -> tuple[Tensor, int, int]:
    """``offsets[start:stop + 1]`` shifted to start at 0, plus the element range it covers."""
    window = offsets[start : stop + 1]
    lo, hi = int(window[0]), int(window[-1])  # one read (a sync on GPU) per level: unavoidable
    return window - lo, lo, hi


def _check_offsets(name: str, offsets: object, total: int, device: torch.device) -> None:
    if not isinstance(offsets, Tensor):
        raise TypeError(f"Jagged.{name} must be a torch.Tensor, got {type(offsets).__name__}")
    if offsets.dtype != torch.int64:
        raise TypeError(f"Jagged.{name} must be int64, got {offsets.dtype}")
    if offsets.dim() != 1 or offsets.shape[0] < 1:
        raise ValueError(
            f"Jagged.{name} must be 1-D with at least one entry, got shape {tuple(offsets.shape)}"
        )
    if offsets.device != device:
        raise ValueError(f"Jagged.{name} is on {offsets.device} but values are on {device}")
    first, last = int(offsets[0]), int(offsets[-1])
    if first != 0:
        raise ValueError(
            f"Jagged.{name}[0] must be 0, got {first} "
            "(re-base sliced offsets: offsets - offsets[0])"
        )
    if offsets.shape[0] > 1 and bool((offsets[1:] < offsets[:-1]).any()):
        bad = int(torch.nonzero(offsets[1:] < offsets[:-1])[0, 0])
        raise ValueError(
            f"Jagged.{name} must be non-decreasing, but {name}[{bad + 1}] = "
            f"{int(offsets[bad + 1])} < {name}[{bad}] = {int(offsets[bad])}"
        )
    if last != total:
        what = "values.shape[0]" if name == "offsets" else "the segment count (len(offsets) - 1)"
        raise ValueError(f"Jagged.{name}[-1] = {last} must equal {what} = {total}")


# ----------------------------------------------------------------------------------------------
# awkward -> Jagged
# ----------------------------------------------------------------------------------------------
def to_jagged(
    array: object,
    fields: Optional[Sequence[str]] = None,
    dtype: torch.dtype = torch.float32,
    option: OptionPolicy = "error",
    check_nan: bool = False,
) -> Jagged:
    """Convert an awkward array of lists (one or two levels) of numbers or records to a Jagged.

    ``N * var * X`` gives one level (``offsets`` over the N lists); ``N * var * var * X`` gives two
    (``outer_offsets`` over the N entries, ``offsets`` over the inner lists). Record fields become
    feature columns, in the order of ``fields`` (default: the record's own order); a plain number
    gives one column, a regular inner dimension ``k`` gives ``k`` columns. A record of lists whose
    lists have equal lengths (what ``uproot``'s ``tree.arrays([...])`` returns) works as a list of
    records.

    Memory is shared with the awkward buffers when the layout allows it: one numeric column whose
    dtype is already ``dtype``, laid out contiguously (packed arrays and range slices such as
    ``array[5:]``), in a writable buffer. Treat such values as read-only (``.clone()`` before
    in-place edits). A read-only buffer (``np.memmap(mode="r")``, Arrow-backed arrays) is copied:
    torch has no read-only tensors, and an edit would crash or corrupt it. Otherwise the copies are the ones the layout forces: stacking several fields into ``[N, F]``, a dtype
    cast, or gathering elements that ``array[mask]`` / ``array[[2, 0, 1]]`` left scattered (only the
    selected fields are gathered). Offsets are always re-based int64 copies (they are small).

    Args:
        array: anything ``ak.to_layout`` accepts; CPU or CUDA (cupy) backend.
        fields: record fields to use, in column order; ``None`` takes all fields.
        dtype: dtype of ``values``, float32 by default: every field (float64, integers such as a
            charge, booleans) is cast to it, within the one copy that stacking the fields needs
            anyway. Pass ``torch.float64`` to keep double precision; ``values`` never has mixed
            dtypes, and offsets are always int64.
        option: ``"error"`` raises ``ValueError`` on missing (``None``) entries; a number fills
            missing numbers with it and turns missing lists into empty lists.
        check_nan: raise ``ValueError`` naming the fields that contain NaN.

    Returns:
        A :class:`Jagged` on the array's device (CPU, or the current CUDA device for cupy arrays).

    Raises:
        TypeError: not an array of lists, unions, strings, non-numeric or nested-record fields.
        ValueError: more than two list levels, missing fields, fields of unequal list lengths,
            missing values with ``option="error"``, NaN with ``check_nan=True``, values that a cast
            to an integer ``dtype`` would change (NaN, infinity, out of range: no silent wrap).

    Example:
        >>> import awkward as ak, torch, hepms
        >>> events = ak.Array([[[1.0, 2.0], [3.0]], [], [[4.0]]])     # events -> jets -> parts
        >>> j = hepms.to_jagged(events)
        >>> j.outer_offsets.tolist(), j.offsets.tolist(), j.values.flatten().tolist()
        ([0, 2, 2, 3], [0, 2, 3, 4], [1.0, 2.0, 3.0, 4.0])
        >>> hepms.to_jagged(ak.Array([[1.0, None]]), option=0.0).values.flatten().tolist()
        [1.0, 0.0]
    """
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")
    if isinstance(option, str) and option != "error":
        raise ValueError(f"option must be 'error' or a fill value (a number), got {option!r}")
    if fields is not None:
        if isinstance(fields, str):
            raise TypeError(f"fields must be a sequence of field names, not the string {fields!r}")
        fields = list(fields)
        if not fields:
            raise ValueError("fields is empty: give at least one field name, or None for all")
    layout = ak.to_layout(array, allow_record=False)
    visitor = _LayoutVisitor(fields, dtype, option, _device_of(array))
    columns = visitor.visit(layout, None)
    if fields is not None and not visitor.saw_record:
        raise ValueError(
            f"fields={fields} given, but the array has no record fields: {_type(array)}"
        )
    levels = _common_levels(columns, array)
    fill = 0.0 if option == "error" else float(option)
    values = _stack_columns(columns, dtype, fill)
    if check_nan:
        _raise_on_nan(values, columns)
    outer = levels[0] if len(levels) == 2 else None
    return Jagged(values, levels[-1], outer, validate=False)


def _type(array: object) -> str:
    try:
        return str(ak.type(array))
    except Exception:  # only used in error messages; never mask the real error
        return type(array).__name__


def _device_of(array: object) -> torch.device:
    backend = ak.backend(array)
    if backend == "cpu":
        return torch.device("cpu")
    if backend == "cuda":
        import cupy  # present whenever awkward's cuda backend is

        return torch.device("cuda", cupy.cuda.runtime.getDevice())
    raise TypeError(
        f"to_jagged supports awkward's 'cpu' and 'cuda' backends, got {backend!r}: "
        "convert with ak.to_backend(array, 'cpu') (typetracer arrays carry no data)"
    )


class _Take(NamedTuple):
    """A pending gather of node entries: ``index`` (int64), -1 marking a missing entry."""

    index: Tensor
    has_missing: bool  # known where the -1s are created, so leaves need not scan for them


@dataclasses.dataclass
class _Column:
    """One feature column: its list offsets (outermost first) and its leaf values.

    The leaf's values are ``data`` if ``take`` is None, else ``data[take.index]`` (with missing
    entries filled): the gather is left to :func:`_stack_columns`, which writes it straight into
    the output columns instead of materialising it first.
    """

    name: Optional[str]
    levels: list[Tensor]
    data: Tensor
    take: Optional[_Take] = None
    readonly: bool = False  # data views a buffer that must not be written (see _stack_columns)

    @property
    def length(self) -> int:
        return self.data.shape[0] if self.take is None else self.take.index.shape[0]

    @property
    def width(self) -> int:
        """Feature columns it contributes: 1 for numbers, k for a regular ``k`` dimension."""
        return int(np.prod(self.data.shape[1:]))


class _LayoutVisitor:
    """Walks an awkward layout down to its numeric leaves, one method per node type.

    Each method takes the node and an optional :class:`_Take` of node entries (``None``: all
    entries in order). Takes are pushed down to the leaves, so records only gather the fields that
    are asked for and lists only re-index their starts/stops. All arithmetic is in torch on the
    array's device, so the same code serves numpy (CPU) and cupy (CUDA) buffers.
    """

    def __init__(
        self, fields: Optional[list[str]], dtype: torch.dtype, option: OptionPolicy,
        device: torch.device,
    ) -> None:
        self.fields = fields
        self.dtype = dtype
        self.option = option
        self.device = device
        self.saw_record = False
        self._field_path: list[str] = []

    def visit(self, layout: ak.contents.Content, take: Optional[_Take]) -> list[_Column]:
        if layout.parameter("__array__") in ("string", "bytestring", "char", "byte"):
            raise TypeError(f"strings cannot be converted to tensors{self._where()}")
        contents = ak.contents
        if isinstance(layout, contents.NumpyArray):
            data = _leaf_tensor(layout.data, self._where())
            return [_Column(None, [], data, take, readonly=_is_readonly(layout.data))]
        if isinstance(layout, contents.RegularArray) and isinstance(
            layout.content, contents.NumpyArray
        ):
            data = self._regular_numbers(layout)
            return [_Column(None, [], data, take, readonly=_is_readonly(layout.content.data))]
        if isinstance(
            layout, (contents.ListOffsetArray, contents.ListArray, contents.RegularArray)
        ):
            return self._list(layout, take)
        if isinstance(layout, contents.RecordArray):
            return self._record(layout, take)
        if isinstance(layout, contents.IndexedOptionArray):
            return self._indexed(layout, take, is_option=True)
        if isinstance(layout, contents.IndexedArray):
            return self._indexed(layout, take, is_option=False)
        if isinstance(layout, (contents.ByteMaskedArray, contents.BitMaskedArray)):
            return self._masked(layout, take)
        if isinstance(layout, contents.UnmaskedArray):
            return self.visit(layout.content, take)
        if isinstance(layout, contents.EmptyArray):
            return self._empty(take)
        raise TypeError(
            f"cannot convert a {type(layout).__name__} ({layout.form.type}){self._where()} to a "
            "tensor: expected lists of numbers or of records of numbers"
        )

    def _regular_numbers(self, layout: ak.contents.RegularArray) -> Tensor:
        # A fixed-size dimension holding numbers (``k * float``) is k feature columns, the same as
        # a NumpyArray with inner shape (k,): both layouts have the same awkward type.
        data = _leaf_tensor(layout.content.data, self._where())
        rows = data[: layout.length * layout.size]
        return rows.reshape(layout.length, layout.size, *data.shape[1:])

    def _where(self) -> str:
        return f" in field {'.'.join(self._field_path)!r}" if self._field_path else ""

    def _empty(self, take: Optional[_Take]) -> list[_Column]:
        # EmptyArray: lists that are all empty, of unknown type. In fill mode missing entries can
        # still point here (only missing ones can): the take makes them fill values.
        data = torch.empty(0, dtype=self.dtype, device=self.device)
        if self.fields is not None and not self._field_path:
            self.saw_record = True  # the requested fields are simply all empty
            return [_Column(name, [], data, take) for name in self.fields]
        return [_Column(None, [], data, take)]

    def _fill_allowed(self, missing: Tensor) -> bool:
        """Whether any entry is missing; raises if that is an error."""
        has_missing = bool(missing.shape[0]) and bool(missing.any())
        if has_missing and self.option == "error":
            raise ValueError(
                f"the array has {int(missing.sum())} missing (None) entries{self._where()}: pass "
                "option=<fill value> to fill them (missing lists become empty), or remove them "
                "first with ak.drop_none / ak.fill_none"
            )
        return has_missing

    # -- lists ----------------------------------------------------------------------------------
    def _list(self, layout: ak.contents.Content, take: Optional[_Take]) -> list[_Column]:
        if take is None and isinstance(layout, ak.contents.ListOffsetArray):
            # Packed or range-sliced lists: re-base the offsets, view the content range.
            own = _index_tensor(layout.offsets)
            offsets = own - own[0]  # a new tensor: awkward's offsets buffer stays untouched
            base, total = int(own[0]), int(offsets[-1])
            columns = self.visit(layout.content[base : base + total], None)
        else:
            starts, stops = self._starts_stops(layout)
            if take is not None:
                starts, stops = _take_ranges(starts, stops, take)
            counts = stops - starts
            offsets = torch.zeros(counts.shape[0] + 1, dtype=torch.int64, device=self.device)
            torch.cumsum(counts, 0, out=offsets[1:])
            total = int(offsets[-1])
            base = _contiguous_base(starts, counts, offsets)
            if base is not None:
                # The selected lists lie back to back in the content: a range view, no copy.
                columns = self.visit(layout.content[base : base + total], None)
            else:
                carry = _ranges_index(starts, counts, offsets, total)
                columns = self.visit(layout.content, _Take(carry, False))
        for column in columns:
            column.levels.insert(0, offsets)
        return columns

    def _starts_stops(self, layout: ak.contents.Content) -> tuple[Tensor, Tensor]:
        if isinstance(layout, ak.contents.ListOffsetArray):
            offsets = _index_tensor(layout.offsets)
            return offsets[:-1], offsets[1:]
        if isinstance(layout, ak.contents.ListArray):
            starts = _index_tensor(layout.starts)
            return starts, _index_tensor(layout.stops)[: starts.shape[0]]
        size = layout.size  # RegularArray
        starts = torch.arange(layout.length, dtype=torch.int64, device=self.device) * size
        return starts, starts + size

    # -- records --------------------------------------------------------------------------------
    def _record(self, layout: ak.contents.RecordArray, take: Optional[_Take]) -> list[_Column]:
        if self._field_path:
            raise TypeError(
                f"field {'.'.join(self._field_path)!r} is itself a record "
                f"({layout.form.type}): select numeric fields only"
            )
        names = self.fields if self.fields is not None else list(layout.fields)
        absent = [name for name in names if name not in layout.fields]
        if absent:
            raise ValueError(
                f"field(s) {absent} not present; the record has fields {layout.fields}"
            )
        if not names:
            raise TypeError("the records have no fields: nothing to convert")
        self.saw_record = True
        columns = []
        for name in names:
            content = layout.content(name)
            if take is None:
                content = content[: layout.length]  # contents may be longer than the record
            self._field_path.append(name)
            try:
                (column,) = self.visit(content, take)
            finally:
                self._field_path.pop()
            column.name = name
            columns.append(column)
        return columns

    # -- indirection and options ----------------------------------------------------------------
    def _indexed(
        self, layout: ak.contents.Content, take: Optional[_Take], is_option: bool
    ) -> list[_Column]:
        own = _index_tensor(layout.index)
        if take is not None:
            own = _compose(own, take)
        if is_option:
            has_missing = self._fill_allowed(own < 0)
        else:
            has_missing = take is not None and take.has_missing
        return self.visit(layout.content, _Take(own, has_missing))

    def _masked(self, layout: ak.contents.Content, take: Optional[_Take]) -> list[_Column]:
        missing = _leaf_tensor(layout.mask_as_bool(valid_when=False), self._where())
        if take is not None:
            # Entries already missing upstream (-1) were checked there; look at the selected ones.
            if missing.shape[0] == 0:
                missing = torch.zeros_like(take.index, dtype=torch.bool)
            else:
                missing = missing[take.index.clamp(min=0)] & (take.index >= 0)
        if not self._fill_allowed(missing):
            # All selected entries are valid: read the content directly, no index to build.
            return self.visit(layout.content[: layout.length], take)
        return self._indexed(layout.to_IndexedOptionArray64(), take, is_option=True)


def _contiguous_base(starts: Tensor, counts: Tensor, offsets: Tensor) -> Optional[int]:
    """Where the selected lists start in the content if they lie back to back, else None."""
    # Empty lists may carry any start (ListArray allows it): only non-empty ones must line up.
    shift = (starts - offsets[:-1])[counts > 0]
    if shift.shape[0] == 0:
        return 0
    first = shift[0]
    return int(first) if bool((shift == first).all()) else None


def _take_ranges(starts: Tensor, stops: Tensor, take: _Take) -> tuple[Tensor, Tensor]:
    """Starts/stops of the selected lists; missing (-1) selections become empty lists."""
    index = take.index
    if starts.shape[0] == 0:  # only missing entries can select from zero lists
        zeros = torch.zeros_like(index)
        return zeros, zeros
    if not take.has_missing:
        return starts.index_select(0, index), stops.index_select(0, index)
    safe = index.clamp(min=0)
    starts, stops = starts.index_select(0, safe), stops.index_select(0, safe)
    return starts, torch.where(index < 0, starts, stops)


def _ranges_index(starts: Tensor, counts: Tensor, offsets: Tensor, total: int) -> Tensor:
    """Content positions of the concatenated ranges ``starts[i] : starts[i] + counts[i]``."""
    shift = torch.repeat_interleave(starts - offsets[:-1], counts, output_size=total)
    return shift + torch.arange(total, dtype=torch.int64, device=starts.device)


def _compose(inner: Tensor, outer: _Take) -> Tensor:
    """``inner[outer]``, where -1 in either stays -1 (a missing entry)."""
    if not outer.has_missing:
        return inner.index_select(0, outer.index)
    if inner.shape[0] == 0:
        return torch.full_like(outer.index, -1)
    taken = inner.index_select(0, outer.index.clamp(min=0))
    return torch.where(outer.index < 0, outer.index, taken)


def _index_tensor(index: ak.index.Index) -> Tensor:
    """An awkward Index (int8/uint8/int32/uint32/int64) as an int64 tensor."""
    data = index.data
    if data.dtype != np.int64:
        data = data.astype(np.int64)  # numpy or cupy; indices are small next to the values
    return _leaf_tensor(data, "")


def _leaf_tensor(data: object, where: str) -> Tensor:
    """A numpy/cupy buffer as a tensor sharing its memory whenever torch can represent it."""
    if not isinstance(data, np.ndarray):
        return torch.from_dlpack(data)  # cupy (CUDA backend): zero-copy
    if data.dtype.kind not in "biuf":
        raise TypeError(f"cannot convert values of dtype {data.dtype}{where} to a tensor")
    if data.flags.writeable:
        return torch.from_numpy(data)
    return _readonly_tensor(data)


def _is_readonly(data: object) -> bool:
    """A numpy buffer that must not be written: read-only ones (``np.memmap(mode="r")``, where a
    write segfaults) and Arrow-backed ones (immutable by contract, even where pyarrow allocated
    the memory as mutable). cupy buffers are always writable."""
    if not isinstance(data, np.ndarray):
        return False
    if not data.flags.writeable:
        return True
    base = data.base
    for _ in range(8):  # views of views: the owner is a few levels up at most
        if base is None:
            return False
        if type(base).__module__.startswith("pyarrow"):
            return True
        base = getattr(base, "base", None)
    return False


def _readonly_tensor(data: np.ndarray) -> Tensor:
    # torch has no read-only tensors, so torch.from_numpy warns on read-only arrays. DLPack >= 1.0
    # (numpy >= 2.1) exports them with a read-only flag that torch accepts, sharing the memory
    # without a warning. Such tensors stay internal (indices, gather sources): _stack_columns
    # copies a read-only column rather than return it as values. Older numpy refuses the
    # export, and then a copy is the only safe way.
    try:
        return torch.from_dlpack(data)
    except (BufferError, RuntimeError, TypeError):
        log.debug("read-only %s buffer copied: DLPack export refused", data.dtype)
        return torch.from_numpy(data.copy())


def _common_levels(columns: list[_Column], array: object) -> list[Tensor]:
    """The list offsets shared by all columns, after checking depth and equal lengths."""
    depths = {len(column.levels) for column in columns}
    if len(depths) > 1:
        detail = ", ".join(f"{c.name!r}: {len(c.levels)}" for c in columns)
        raise ValueError(f"fields have different list depths ({detail}); convert them separately")
    (depth,) = depths
    if depth == 0:
        raise TypeError(
            f"to_jagged needs an array of lists (e.g. N * var * float32), got {_type(array)}"
        )
    if depth > 2:
        raise ValueError(
            f"to_jagged supports one or two list levels, got {depth} ({_type(array)}): "
            "flatten the outer levels first (ak.flatten)"
        )
    reference = columns[0]
    for column in columns[1:]:
        for level, (a, b) in enumerate(zip(reference.levels, column.levels)):
            if a is not b and not torch.equal(a, b):
                raise ValueError(
                    f"fields {reference.name!r} and {column.name!r} have different list lengths at "
                    f"list level {level + 1}: ragged records cannot share one set of offsets"
                )
    return reference.levels


def _stack_columns(columns: list[_Column], dtype: torch.dtype, fill: float) -> Tensor:
    """``[N, F]`` values: a view of a single matching column, else one pass per column."""
    n = columns[0].length
    only = columns[0]
    if len(columns) == 1 and only.take is None:
        flat = only.data.reshape(n, only.width)  # a view for contiguous data
        if flat.dtype == dtype and flat.is_contiguous():
            # torch has no read-only tensors: values over a read-only buffer would let an in-place
            # edit segfault (read-only memory map) or corrupt immutable (Arrow) memory. Copy.
            return flat.clone() if only.readonly else flat  # else zero-copy
    values = _empty_values(n, sum(c.width for c in columns), dtype, only.data.device)
    start = 0
    for column in columns:  # the copy (stacking, gathering, casting) that [N, F] storage requires
        _write_column(values[:, start : start + column.width], column, fill)
        start += column.width
    return values


def _empty_values(n: int, width: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """An uninitialised ``[n, width]`` output tensor.

    On the CPU it is allocated by numpy: numpy asks the kernel for transparent huge pages on large
    arrays and torch.empty does not, and with 4 KiB pages the first-touch page faults cost more
    than the copy itself (stacking 3M x 6 float32 measured 2.4x faster this way).
    """
    if device.type == "cpu":
        try:
            np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        except TypeError:  # bfloat16 etc. have no numpy dtype
            np_dtype = None
        if np_dtype is not None:
            return torch.from_numpy(np.empty((n, width), dtype=np_dtype))
    return torch.empty((n, width), dtype=dtype, device=device)


def _write_column(out: Tensor, column: _Column, fill: float) -> None:
    """Write ``column``'s values into the (strided) ``out`` view, gathering on the way."""
    source = column.data.reshape(column.data.shape[0], column.width)
    if column.width == 1:
        # 1-D gathers take torch's fast path; on [N, 1] views index_select copies row by row.
        source, out = source[:, 0], out[:, 0]
    take = column.take
    if take is None:
        _check_cast(source, out.dtype, column.name)
        out.copy_(source)
        return
    if source.shape[0] == 0:  # every selected entry is missing (checked upstream)
        out.fill_(fill)
        return
    index = take.index.clamp(min=0) if take.has_missing else take.index
    if source.dtype == out.dtype:
        torch.index_select(source, 0, index, out=out)  # gathers straight into the output
    else:
        selected = torch.index_select(source, 0, index)
        _check_cast(selected, out.dtype, column.name)
        out.copy_(selected)
    if take.has_missing:
        out[take.index < 0] = fill


def _check_cast(source: Tensor, dtype: torch.dtype, name: Optional[str]) -> None:
    """Refuse a cast to an integer ``dtype`` that would change values silently: NaN or infinity
    (they become INT64_MIN), or numbers outside ``dtype``'s range (they wrap)."""
    if not ops.is_integer_dtype(dtype) or source.dtype == dtype:
        return
    if source.numel() == 0:
        return
    where = f" of field {name!r}" if name is not None else ""
    info = torch.iinfo(dtype)
    if source.is_floating_point():
        if not bool(torch.isfinite(source).all()):
            raise ValueError(f"cannot cast the values{where} ({source.dtype}) to {dtype}: they contain "
                             "NaN or infinity; fill or drop them first, or keep a floating dtype")
        lo, hi = float(source.min()), float(source.max())
        out_of_range = lo < info.min or hi >= float(info.max) + 1  # float(2**63 - 1) + 1 == 2**63
    else:
        if source.dtype == torch.uint64:
            # No min/max for uint64 in torch: reinterpret; values >= 2**63 turn negative.
            signed = source.view(torch.int64)
            if bool((signed < 0).any()):
                host = source.cpu().numpy()  # the error path only: exact range for the message
                lo, hi = int(host.min()), int(host.max())
            else:
                lo, hi = int(signed.min()), int(signed.max())
        else:
            lo, hi = int(source.min()), int(source.max())
        out_of_range = lo < info.min or hi > info.max
    if out_of_range:
        raise ValueError(f"cannot cast the values{where} ({source.dtype}, range [{lo}, {hi}]) to {dtype} "
                         f"(range [{info.min}, {info.max}]): they would wrap around")


def _raise_on_nan(values: Tensor, columns: list[_Column]) -> None:
    if not values.is_floating_point():
        return
    nan_columns = torch.isnan(values).any(dim=0).tolist()
    if not any(nan_columns):
        return
    names: list[str] = []
    start = 0
    for index, column in enumerate(columns):
        width = column.width
        if any(nan_columns[start : start + width]):
            names.append(column.name if column.name is not None else f"column {index}")
        start += width
    raise ValueError(f"NaN values found in {names} (check_nan=True)")


# ----------------------------------------------------------------------------------------------
# tensor -> awkward
# ----------------------------------------------------------------------------------------------
def from_jagged(
    tensor: Tensor,
    like: object,
    *,
    level: Literal["auto", "element", "segment"] = "auto",
) -> ak.Array:
    """Per-element or per-set results back to an awkward array with the lists of ``like``.

    ``like`` is the array the inputs came from, e.g. ``events.Jet`` (``E * var * Jet``). A tensor
    with one row per jet (the elements of ``like``) becomes ``E * var * float32``; one row per
    event (the lists) becomes ``E * float32``. For two list levels (events -> jets ->
    constituents) the rows may be constituents, jets or events. A 1-D tensor gives numbers, a
    2-D ``[rows, K]`` tensor a regular ``K`` inner dimension. Missing lists in ``like`` stay
    missing (they own no rows, as in ``to_jagged(..., option=fill)``).

    The result lives on ``like``'s backend. It shares memory with the (detached) tensor when the
    tensor is already there (CPU for numpy, GPU via DLPack for cupy), else the rows are copied
    across.

    Args:
        tensor: ``[rows]`` or ``[rows, K]``.
        like: the awkward array whose list structure to reproduce.
        level: ``"auto"`` matches the row count to the deepest level with that many entries (so
            when every event has exactly one jet, rows are read as jets); ``"element"`` or
            ``"segment"`` force the innermost level or the one above it.

    Example:
        >>> import awkward as ak, torch, hepms
        >>> jets = ak.Array([[{"pt": 50.0}, {"pt": 30.0}], [], [{"pt": 20.0}]])
        >>> hepms.from_jagged(torch.tensor([1, 2, 3]), like=jets).tolist()
        [[1, 2], [], [3]]
        >>> hepms.from_jagged(torch.tensor([7, 8, 9]), like=jets, level="segment").tolist()
        [7, 8, 9]
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"from_jagged needs a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() not in (1, 2):
        raise ValueError(f"from_jagged needs a 1-D or 2-D tensor, got shape {tuple(tensor.shape)}")
    like = like if isinstance(like, ak.Array) else ak.Array(like)
    counts = _list_counts(like)
    sizes = [len(like)] + [_count_total(c) for c in counts]  # entries at each depth
    depth = _pick_depth(tensor.shape[0], sizes, level, like)
    result = _flat_array(tensor, ak.backend(like))
    for level_counts in reversed(counts[:depth]):
        result = ak.unflatten(result, level_counts)
    return result


def _list_counts(like: ak.Array) -> list[ak.Array]:
    """Counts of every list level of ``like``, outermost first (records end the descent)."""
    min_depth = like.layout.minmax_depth[0]
    if min_depth < 2:
        raise TypeError(f"like must be an array of lists (e.g. events.Jet), got {like.type}")
    current, counts = like, []
    for _ in range(min_depth - 1):
        level_counts = ak.num(current, axis=1)
        if level_counts.fields:
            raise TypeError(
                f"like must be lists of records or numbers, not records of lists: {like.type}"
            )
        counts.append(level_counts)
        current = ak.flatten(current, axis=1)
    return counts


def _count_total(counts: ak.Array) -> int:
    return int(ak.sum(counts, axis=None, mask_identity=False))


def _pick_depth(rows: int, sizes: list[int], level: str, like: ak.Array) -> int:
    deepest = len(sizes) - 1
    if level == "element":
        candidates = [deepest]
    elif level == "segment":
        candidates = [deepest - 1]
    elif level == "auto":
        candidates = list(range(deepest, -1, -1))
    else:
        raise ValueError(f"level must be 'auto', 'element' or 'segment', got {level!r}")
    for depth in candidates:
        if sizes[depth] == rows:
            return depth
    raise ValueError(
        f"tensor has {rows} rows, but like ({like.type}) has {sizes[-1]} elements, "
        + ", ".join(f"{size} entries at depth {d}" for d, size in enumerate(sizes[:-1]))
        + f"; no level matches (level={level!r})"
    )


def _flat_array(tensor: Tensor, backend: str) -> ak.Array:
    """The rows as a flat awkward array on ``backend``, sharing the tensor's memory if possible."""
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()  # neither numpy nor cupy has bfloat16
    if backend == "cuda":
        import cupy  # present whenever awkward's cuda backend is

        gpu = (tensor if tensor.is_cuda else tensor.cuda()).contiguous()
        return ak.from_cupy(cupy.from_dlpack(gpu), regulararray=False)
    return ak.from_numpy(tensor.cpu().numpy(), regulararray=False)


def take_segments(offsets: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """The segments ``index`` of ``offsets``, in that order: ``(rows, new_offsets)``.

    ``rows`` (int64) are the positions of their rows in the original values, ``new_offsets`` the
    offsets over ``values[rows]``; a segment may be taken more than once. Vectorised: one
    ``repeat_interleave`` and one ``arange``.

    Example:
        >>> import torch
        >>> from hepms.jagged import take_segments
        >>> rows, offsets = take_segments(torch.tensor([0, 2, 2, 5]), torch.tensor([2, 0]))
        >>> rows.tolist(), offsets.tolist()
        ([2, 3, 4, 0, 1], [0, 3, 5])
    """
    starts = offsets[:-1].index_select(0, index)
    counts = offsets[1:].index_select(0, index) - starts
    new_offsets = ops.offsets_from_counts(counts)
    return _ranges_index(starts, counts, new_offsets, int(new_offsets[-1])), new_offsets
