"""Pure-PyTorch segment reductions over CSR offsets.

These are the semantic reference for the compiled kernels (tests compare against them) and the
fallback when the extension ``hepms._C`` is not available. They follow the package conventions:
empty segments pool to 0, max returns the arg-max row (first one on ties, -1 for empty segments)
and its backward routes the whole gradient to that row.

They are written with ``index_add_``/``scatter_reduce`` so autograd handles the backward, except
for max, whose tie rule needs the explicit arg-max. Unvalidated malformed offsets are clamped
exactly as the compiled kernels clamp them (see :class:`_Segments`), so both give the same numbers
instead of the fallback raising where the kernels do not.
"""
from __future__ import annotations

from typing import Optional

import torch


def segment_ids(offsets: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Segment index of each row, e.g. offsets [0, 2, 2, 3] -> [0, 0, 2] (well-formed offsets;
    ``num_rows`` = ``offsets[-1]``, given so that no GPU sync is needed). Public as
    :func:`hepms.ops.segment_ids`."""
    counts = offsets[1:] - offsets[:-1]
    return torch.repeat_interleave(
        torch.arange(counts.numel(), device=offsets.device), counts, output_size=num_rows
    )


def _counts_like(offsets: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    counts = (offsets[1:] - offsets[:-1]).to(values.dtype)
    return counts.view(-1, *([1] * (values.dim() - 1)))


class _Segments:
    """Rows of every segment, clamped as the compiled kernels clamp them (csrc/segment.h): segment
    ``b`` covers rows ``[begin, end)`` with ``begin = clamp(offsets[b], 0, N)`` and ``end =
    clamp(offsets[b + 1], begin, N)``. For well-formed offsets that is the rows in order; for
    malformed ones (unvalidated calls) segments may be shorter, leave rows uncovered or overlap,
    and the results are the kernels' results, never an error or an out-of-bounds access.

    Attributes:
        rows: ``[T]`` row of each (segment, row) pair; None when it is simply ``0..N-1``.
        ids: ``[T]`` segment of each pair.
        counts: ``[B]`` clamped segment lengths.
    """

    def __init__(self, offsets: torch.Tensor, num_rows: int) -> None:
        offsets = offsets.long()
        begin = offsets[:-1].clamp(0, num_rows)
        end = torch.maximum(offsets[1:].clamp(max=num_rows), begin)
        self.counts = end - begin
        total = int(self.counts.sum())
        arange = torch.arange(self.counts.numel(), device=offsets.device)
        self.ids = torch.repeat_interleave(arange, self.counts, output_size=total)
        well_formed = (total == num_rows and int(offsets[0]) == 0 and int(offsets[-1]) == num_rows
                       and torch.equal(end, offsets[1:]))
        self.rows: Optional[torch.Tensor] = None
        if not well_formed:
            first = torch.cumsum(self.counts, 0) - self.counts  # position of each segment's first pair
            shift = torch.repeat_interleave(begin - first, self.counts, output_size=total)
            self.rows = shift + torch.arange(total, device=offsets.device)

    def select(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` of every pair."""
        return values if self.rows is None else values.index_select(0, self.rows)

    def row_index(self, num_rows: int, device: torch.device) -> torch.Tensor:
        return torch.arange(num_rows, device=device) if self.rows is None else self.rows

    def counts_like(self, values: torch.Tensor) -> torch.Tensor:
        return self.counts.to(values.dtype).view(-1, *([1] * (values.dim() - 1)))


def segment_sum_reference(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    num_segments = offsets.numel() - 1
    seg = _Segments(offsets, values.shape[0])
    # Accumulate 16-bit inputs in float32, as the kernels do.
    acc_dtype = torch.float32 if values.dtype in (torch.float16, torch.bfloat16) else values.dtype
    out = values.new_zeros((num_segments, *values.shape[1:]), dtype=acc_dtype)
    out = out.index_add(0, seg.ids, seg.select(values).to(acc_dtype))
    return out.to(values.dtype)


def segment_mean_reference(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    total = segment_sum_reference(values, offsets)
    counts = _Segments(offsets, values.shape[0]).counts_like(total).clamp_min(1)
    return total / counts


def segment_max_reference(
    values: torch.Tensor, offsets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (max, argmax); argmax holds global row indices, -1 for empty segments."""
    num_segments = offsets.numel() - 1
    num_rows = values.shape[0]
    seg = _Segments(offsets, num_rows)
    picked = seg.select(values)
    shape = (num_segments, *values.shape[1:])
    index = seg.ids.view(-1, *([1] * (values.dim() - 1))).expand_as(picked)
    with torch.no_grad():
        maxima = values.new_full(shape, float("-inf")).scatter_reduce(
            0, index, picked, reduce="amax", include_self=True
        )
        # First row (lowest index) that attains the maximum: ties go to one element only.
        # NaN compares unequal to itself, so a NaN maximum is matched with isnan.
        rows = seg.row_index(num_rows, values.device).view(
            -1, *([1] * (values.dim() - 1))
        ).expand_as(picked)
        gathered = maxima.gather(0, index)
        hit = (picked == gathered) | (picked.isnan() & gathered.isnan())
        candidate = torch.where(hit, rows, torch.full_like(rows, num_rows))
        argmax = torch.full(shape, num_rows, dtype=torch.long, device=values.device)
        argmax = argmax.scatter_reduce(0, index, candidate, reduce="amin", include_self=True)
        empty = argmax == num_rows
        argmax = argmax.masked_fill(empty, -1)
    safe = argmax.clamp_min(0)
    out = values.gather(0, safe) if num_rows > 0 else values.new_zeros(shape)
    out = out.masked_fill(empty, 0)
    return out, argmax


def segment_gather_reference(
    src: torch.Tensor, offsets: torch.Tensor, num_rows: int, mean: bool
) -> torch.Tensor:
    """``out[r] = src[segment of r]`` (divided by its length for ``mean``); rows outside every
    (clamped) segment are 0. Where malformed offsets make segments overlap, a row gets the value
    of one of them (the kernels make no promise which)."""
    seg = _Segments(offsets, num_rows)
    per_pair = src.index_select(0, seg.ids)
    if mean:
        per_pair = per_pair / seg.counts_like(src).clamp_min(1).index_select(0, seg.ids)
    if seg.rows is None:
        return per_pair
    out = src.new_zeros((num_rows, *src.shape[1:]))
    return out.index_copy(0, seg.rows, per_pair)


def _shifted_exp(values: torch.Tensor, offsets: torch.Tensor):
    """Per set and feature: ``exp(x - shift)`` per row and its sum per set, where ``shift`` is the
    set's maximum (0 where that maximum is infinite, as the kernels do: no inf - inf). 16-bit
    inputs are computed in float32. Returns ``(e, total, maxima, shift, ids)``."""
    num_segments = offsets.numel() - 1
    ids = segment_ids(offsets, values.shape[0])
    shape = (num_segments, *values.shape[1:])
    index = ids.view(-1, *([1] * (values.dim() - 1))).expand_as(values)
    acc_dtype = torch.float32 if values.dtype in (torch.float16, torch.bfloat16) else values.dtype
    x = values.to(acc_dtype)
    maxima = x.new_full(shape, float("-inf")).scatter_reduce(
        0, index, x.detach(), reduce="amax", include_self=True
    )
    shift = torch.where(maxima.isfinite(), maxima, torch.zeros_like(maxima))
    e = (x - shift.index_select(0, ids)).exp()
    total = x.new_zeros(shape).index_add(0, ids, e)
    return e, total, maxima, shift, ids


def segment_softmax_reference(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Softmax over the rows of each set, per feature (the maximum is subtracted first)."""
    e, total, _, _, ids = _shifted_exp(values, offsets)
    return (e / total.index_select(0, ids)).to(values.dtype)


def segment_logsumexp_reference(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """log(sum(exp(values))) over the rows of each set, per feature; 0 for empty sets."""
    _, total, maxima, shift, _ = _shifted_exp(values, offsets)
    out = torch.where(maxima.isfinite(), shift + total.log(), maxima)
    empty = (offsets[1:] == offsets[:-1]).view(-1, *([1] * (values.dim() - 1)))
    return torch.where(empty, torch.zeros_like(out), out).to(values.dtype)
