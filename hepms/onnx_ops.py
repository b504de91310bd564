"""The hepms segment ops written with standard ONNX operators (opset 18), for ONNX export.

:func:`translation_table` maps each ``torch.ops.hepms.*`` op the networks use to a function
that builds the same computation from standard operators, so an exported file runs in any ONNX
runtime (onnxruntime, as CMSSW and Triton use it) without hepms or torch. It is what
:func:`hepms.export.export_onnx` passes to ``torch.onnx.export(..., dynamo=True,
custom_translation_table=...)``.

How a CSR offsets vector ``[B + 1]`` becomes per-row segment ids without a data-dependent
shape: ``hist[k] = #{b >= 1: offsets[b] == k}`` (ScatterElements with ``reduction="add"``),
``ids = CumSum(hist)[:N]``, so row ``r`` gets ``#{b >= 1: offsets[b] <= r}``, which is its set for
well-formed offsets (empty sets are skipped). The reductions then scatter the rows into ``B + 1``
output rows (ScatterND with ``reduction="add"`` / ``"max"``) and drop the last one; broadcasts
back to the rows are Gathers by the same ids.

Conventions, as the hepms ops (:mod:`hepms.ops`): empty sets pool to 0 (sum, mean, max,
logsumexp); softmax subtracts the set's maximum first (0 where that maximum is infinite);
broadcasting a set's row back (``segment_gather``) divides by the set length for ``mean``.

Malformed offsets (not starting at 0, decreasing, or not ending at N) cannot raise in ONNX. The
offsets are clamped into ``[0, N]``, rows after the last offset go to the dropped extra row, so
every index stays in range (the runtime never fails or reads out of bounds) and the results are
finite garbage; :func:`hepms.export.export_onnx` therefore adds an ``inputs_valid`` output and
turns every score into NaN for such inputs. ``check_offsets`` (the eager/TorchScript/torch.export
check that raises) becomes an Identity here for that reason.

Not translated: ``segment_max`` (with its arg-max; the networks use ``segment_amax``) and the
backward ops (export is for inference). Sets that contain a NaN give NaN for sum, mean and
softmax, as in hepms; for max the result then depends on the runtime's scatter order.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = ["OPSET", "translation_table"]

#: ONNX opset of the translations (ScatterND/ScatterElements with reduction="max" need 18).
OPSET = 18
_INT64_MAX = 2**63 - 1


def translation_table() -> dict[Any, Callable[..., Any]]:
    """``{torch op overload: ONNX translation}`` for ``torch.onnx.export(dynamo=True)``.

    Importing onnxscript happens here (it is an optional dependency: ``pip install hepms[onnx]``).
    """
    import hepms.ops  # noqa: F401  registers torch.ops.hepms.* (also check_offsets)

    fns = _translations()
    ops = torch.ops.hepms
    return {
        ops.segment_sum.default: fns["sum"],
        ops.segment_mean.default: fns["mean"],
        ops.segment_amax.default: fns["amax"],
        ops.segment_mean_max.default: fns["mean_max"],
        ops.segment_softmax.default: fns["softmax"],
        ops.segment_logsumexp.default: fns["logsumexp"],
        ops.segment_gather.default: fns["gather"],
        ops.check_offsets.default: fns["check_offsets"],
    }


def _translations() -> dict[str, Callable[..., Any]]:
    try:
        from onnxscript import opset18 as op
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "ONNX export needs onnx and onnxscript: pip install 'hepms[onnx]'"
        ) from error

    def const_ints(*values: int):
        return op.Constant(value_ints=list(values))

    def row_ids(offsets, n):
        """``(ids [N] in [0, B], b [1])``: the set of every row (B: after the last offset)."""
        b = op.Sub(op.Shape(offsets), const_ints(1))
        bounds = op.Slice(offsets, const_ints(1), const_ints(_INT64_MAX))
        bounds = op.Clip(bounds, op.Constant(value_int=0), op.Squeeze(n))  # never out of range
        hist = op.Expand(op.Constant(value_int=0), op.Add(n, const_ints(1)))
        ones = op.Expand(op.Constant(value_int=1), op.Shape(bounds))
        hist = op.ScatterElements(hist, bounds, ones, axis=0, reduction="add")
        ids = op.Slice(op.CumSum(hist, op.Constant(value_int=0)), const_ints(0), n)
        return ids, b

    def rows_of(values):
        return op.Shape(values, start=0, end=1)

    def pooled_padded(values, ids, b, reduction: str, init: float):
        """``[B + 1, ...]``: the rows of each set reduced (row B collects stray rows)."""
        shape = op.Concat(op.Add(b, const_ints(1)), op.Shape(values, start=1), axis=0)
        data = op.Expand(op.CastLike(op.Constant(value_float=init), values), shape)
        index = op.Unsqueeze(ids, const_ints(1))
        return op.ScatterND(data, index, values, reduction=reduction)

    def first(x, b):
        return op.Slice(x, const_ints(0), b, const_ints(0))

    def counts_like(offsets, values):
        """``[B, 1...]`` set lengths in the dtype of ``values``, broadcastable against it."""
        counts = op.Sub(
            op.Slice(offsets, const_ints(1), const_ints(_INT64_MAX)),
            op.Slice(offsets, const_ints(0), const_ints(-1)),
        )
        counts = op.CastLike(counts, values)
        for _ in range(len(values.shape) - 1):
            counts = op.Unsqueeze(counts, const_ints(-1))
        return counts

    def finite(x):
        return op.Not(op.Or(op.IsInf(x), op.IsNaN(x)))

    def zero_like(x):
        return op.CastLike(op.Constant(value_float=0.0), x)

    def segment_sum(values, offsets):
        ids, b = row_ids(offsets, rows_of(values))
        return first(pooled_padded(values, ids, b, "add", 0.0), b)

    def segment_mean(values, offsets):
        total = segment_sum(values, offsets)
        counts = counts_like(offsets, values)
        return op.Div(total, op.Max(counts, op.CastLike(op.Constant(value_float=1.0), values)))

    def segment_amax(values, offsets):
        ids, b = row_ids(offsets, rows_of(values))
        maxima = first(pooled_padded(values, ids, b, "max", float("-inf")), b)
        nonempty = op.Greater(counts_like(offsets, values), zero_like(values))
        return op.Where(nonempty, maxima, zero_like(values))

    def segment_mean_max(values, offsets):
        # [B, 2F] (1-D values: [B, 2]): the two translations side by side.
        as_2d = const_ints(0, -1)
        return op.Concat(op.Reshape(segment_mean(values, offsets), as_2d),
                         op.Reshape(segment_amax(values, offsets), as_2d), axis=1)

    def shifted_exp(values, offsets):
        """As hepms._reference._shifted_exp: ``exp(x - shift)`` per row, its padded sum per
        set, the padded maxima and shifts, the ids and ``b``."""
        ids, b = row_ids(offsets, rows_of(values))
        maxima = pooled_padded(values, ids, b, "max", float("-inf"))
        shift = op.Where(finite(maxima), maxima, zero_like(values))
        e = op.Exp(op.Sub(values, op.Gather(shift, ids, axis=0)))
        total = pooled_padded(e, ids, b, "add", 0.0)
        return e, total, maxima, shift, ids, b

    def segment_softmax(values, offsets):
        e, total, _, _, ids, _ = shifted_exp(values, offsets)
        return op.Div(e, op.Gather(total, ids, axis=0))

    def segment_logsumexp(values, offsets):
        _, total, maxima, shift, _, b = shifted_exp(values, offsets)
        total, maxima, shift = first(total, b), first(maxima, b), first(shift, b)
        out = op.Where(finite(maxima), op.Add(shift, op.Log(total)), maxima)
        empty = op.Equal(counts_like(offsets, values), zero_like(values))
        return op.Where(empty, zero_like(values), out)

    def segment_gather(src, offsets, num_rows, mean: bool = False):
        n = op.Reshape(op.Cast(num_rows, to=7), const_ints(1))  # 7: INT64
        ids, _ = row_ids(offsets, n)
        # One zero row appended: stray rows (malformed offsets only) read it.
        pad = op.Expand(zero_like(src), op.Concat(const_ints(1), op.Shape(src, start=1), axis=0))
        per_set = op.Concat(src, pad, axis=0)
        if mean:
            counts = counts_like(offsets, src)
            one = op.CastLike(op.Constant(value_float=1.0), src)
            per_set = op.Concat(op.Div(src, op.Max(counts, one)), pad, axis=0)
        return op.Gather(per_set, ids, axis=0)

    def check_offsets(offsets, num_rows, name: str = ""):
        # ONNX cannot raise: validity is a separate output of the exported model.
        return op.Identity(offsets)

    return {
        "sum": segment_sum,
        "mean": segment_mean,
        "amax": segment_amax,
        "mean_max": segment_mean_max,
        "softmax": segment_softmax,
        "logsumexp": segment_logsumexp,
        "gather": segment_gather,
        "check_offsets": check_offsets,
    }
