"""Segment (CSR) pooling: sum, mean, max, log-sum-exp and softmax over variable-length sets.

``values`` holds the elements of all sets stacked along dimension 0 (shape ``[N]`` or ``[N, F]``);
``offsets`` (int64, shape ``[B + 1]``) marks where each set starts: set ``b`` is
``values[offsets[b]:offsets[b + 1]]``. Each function returns one row per set.

Example:
    >>> import torch, hepms
    >>> values = torch.tensor([[1.0], [2.0], [5.0]])
    >>> offsets = torch.tensor([0, 2, 2, 3])          # sets of length 2, 0 and 1
    >>> hepms.segment_sum(values, offsets).flatten().tolist()
    [3.0, 0.0, 5.0]
    >>> out, arg = hepms.segment_max(values, offsets)
    >>> out.flatten().tolist(), arg.flatten().tolist()
    ([2.0, 0.0, 5.0], [1, -1, 2])

Besides :func:`segment_sum`, :func:`segment_mean` and :func:`segment_max`: :func:`segment_amax`
(the max without its arg-max), :func:`segment_mean_max` (mean and max side by side, one op),
:func:`segment_logsumexp` (a smooth max) and :func:`segment_softmax` (per-row weights that sum to
1 over each set: attention pooling).

Conventions: empty sets pool to 0 and get zero gradient; max returns the arg-max row index
(the first one on ties, -1 for an empty set) and its backward sends the whole gradient to that row.
16-bit inputs accumulate in float32.

The computation runs in the compiled extension ``hepms._C`` (C++ on CPU, CUDA on GPU), registered as
the torch ops ``torch.ops.hepms.*`` with autograd and fake kernels, so ``torch.compile`` and
TorchScript see through them. Without the extension the same ops are registered with a pure-PyTorch
implementation (slower, same results).

Argument checks (shapes, dtypes, devices, offsets well-formed) run by default. The offsets checks read
the offsets, which on a GPU means a device synchronisation: switch them off with
``validate=False`` per call, ``with hepms.validation(False):`` for a block (per thread and asyncio
task: a ``contextvars`` variable, so dask worker threads do not switch each other's checks), or
``hepms.set_validation(False)`` for the whole process once you trust your data. Even
unvalidated, the kernels never read or write out of bounds.

Under ``torch.compile`` and ``torch.jit.script`` the switches above are Python state the compiled
code cannot read: there the offsets content is checked only for an explicit ``validate=True``,
which runs the check as the op ``torch.ops.hepms.check_offsets`` (opaque to the compiler, so it
survives ``fullgraph=True``, TorchScript files and ``torch.export`` programs) and raises the same
``ValueError`` as in eager mode (inside TorchScript: a ``RuntimeError`` whose message quotes it).
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from typing import Any, Iterator, Optional, Union

import numpy as np

import torch
from torch import Tensor

from hepms import _reference
from hepms._reference import segment_ids

log = logging.getLogger(__name__)

__all__ = [
    "segment_sum",
    "segment_mean",
    "segment_max",
    "offsets_from_counts",
    "segment_ids",
    "segment_amax",
    "segment_softmax",
    "segment_logsumexp",
    "segment_mean_max",
    "set_validation",
    "validation",
    "validation_enabled",
    "extension_available",
    "cpu_capability",
    "set_cpu_capability",
    "is_integer_dtype",
]

_FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def is_integer_dtype(dtype: torch.dtype) -> bool:
    """True for torch's integer dtypes (any width, signed or not); False for floating point,
    complex and bool. Offsets and counts must have one of them."""
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def _load_extension() -> bool:
    """Import ``hepms._C`` (which registers the ops); fall back to Python ops if it is missing.

    ``HEPMS_DISABLE_EXTENSION=1`` forces the fallback (used to test it); ``HEPMS_REQUIRE_EXTENSION=1``
    turns a missing extension into an error (used by CI, so a broken build cannot pass silently).
    """
    if os.environ.get("HEPMS_DISABLE_EXTENSION", "") not in ("", "0"):
        _define_python_ops()
        return False
    try:
        from hepms import _C  # noqa: F401
    except ImportError as error:
        if os.environ.get("HEPMS_REQUIRE_EXTENSION", "") not in ("", "0"):
            raise ImportError(
                "HEPMS_REQUIRE_EXTENSION is set but the compiled extension hepms._C could not be "
                f"imported ({error}). Build it with: pip install --no-build-isolation -e ."
            ) from error
        log.warning(
            "hepms._C is not available (%s); using the pure-PyTorch segment ops (slower). "
            "Build it with: pip install --no-build-isolation -e .",
            error,
        )
        _define_python_ops()
        return False
    requested = os.environ.get("HEPMS_CPU_CAPABILITY", "")
    if requested:
        try:
            _C.set_cpu_capability(requested)
        except ValueError as error:
            raise ValueError(f"environment variable HEPMS_CPU_CAPABILITY={requested!r}: {error}") from error
    return True


def _define_python_ops() -> None:
    """Register the hepms op schemas with reference kernels, mirroring csrc/ops.cpp."""
    lib = torch.library.Library("hepms", "DEF")
    _define_python_ops.lib = lib  # keep the registration alive for the process lifetime
    lib.define("segment_sum(Tensor values, Tensor offsets) -> Tensor")
    lib.define("segment_mean(Tensor values, Tensor offsets) -> Tensor")
    lib.define("segment_max(Tensor values, Tensor offsets) -> (Tensor, Tensor)")
    lib.define("segment_gather(Tensor src, Tensor offsets, SymInt num_rows, bool mean) -> Tensor")
    lib.define(
        "segment_max_backward(Tensor grad, Tensor argmax, Tensor offsets, SymInt num_rows) -> Tensor"
    )

    def gather(src: Tensor, offsets: Tensor, num_rows: int, mean: bool) -> Tensor:
        return _reference.segment_gather_reference(src, offsets, num_rows, mean)

    def max_backward(grad: Tensor, argmax: Tensor, offsets: Tensor, num_rows: int) -> Tensor:
        out = grad.new_zeros((num_rows, *grad.shape[1:]))
        valid = argmax >= 0
        # scatter_add, not scatter: empty sets (argmax -1 -> row 0) add zeros instead of
        # overwriting row 0's real gradient.
        return out.scatter_add(0, argmax.clamp_min(0), torch.where(valid, grad, out.new_zeros(())))

    for name, fn in (
        ("segment_sum", _reference.segment_sum_reference),
        ("segment_mean", _reference.segment_mean_reference),
        ("segment_max", _reference.segment_max_reference),
        ("segment_gather", gather),
        ("segment_max_backward", max_backward),
    ):
        lib.impl(name, fn, "CompositeExplicitAutograd")
    _define_python_softmax_ops(lib)


def _define_python_softmax_ops(lib: torch.library.Library) -> None:
    """segment_amax's and the softmax family's schemas and reference kernels (as csrc/ops.cpp)."""
    lib.define("segment_amax(Tensor values, Tensor offsets) -> Tensor")
    lib.define("segment_amax_backward(Tensor grad, Tensor values, Tensor out, Tensor offsets) -> Tensor")
    lib.define("segment_softmax(Tensor values, Tensor offsets) -> Tensor")
    lib.define("segment_softmax_backward(Tensor grad, Tensor out, Tensor offsets) -> Tensor")
    lib.define("segment_logsumexp(Tensor values, Tensor offsets) -> Tensor")
    lib.define("segment_mean_max(Tensor values, Tensor offsets) -> Tensor")
    lib.define("segment_mean_max_backward(Tensor grad, Tensor values, Tensor out, Tensor offsets) -> Tensor")

    def softmax_backward(grad: Tensor, out: Tensor, offsets: Tensor) -> Tensor:
        ids = _reference.segment_ids(offsets, grad.shape[0])
        dot = _reference.segment_sum_reference(grad * out, offsets)
        return out * (grad - dot.index_select(0, ids))

    def amax(values: Tensor, offsets: Tensor) -> Tensor:
        return _reference.segment_max_reference(values, offsets)[0]

    def amax_backward(grad: Tensor, values: Tensor, out: Tensor, offsets: Tensor) -> Tensor:
        _, argmax = _reference.segment_max_reference(values, offsets)
        zeros = grad.new_zeros(values.shape)
        return zeros.scatter_add(0, argmax.clamp_min(0), torch.where(argmax >= 0, grad, grad.new_zeros(())))

    def mean_max(values: Tensor, offsets: Tensor) -> Tensor:
        pooled = (_reference.segment_mean_reference(values, offsets), amax(values, offsets))
        return torch.cat([p.reshape(offsets.shape[0] - 1, -1) for p in pooled], dim=1)

    def mean_max_backward(grad: Tensor, values: Tensor, out: Tensor, offsets: Tensor) -> Tensor:
        width = grad.shape[1] // 2
        mean_part = _reference.segment_gather_reference(
            grad[:, :width].contiguous(), offsets, values.shape[0], True)
        max_part = amax_backward(grad[:, width:].contiguous(), values.reshape(values.shape[0], -1),
                                 out[:, width:], offsets)
        return (mean_part + max_part).reshape(values.shape)

    for name, fn in (
        ("segment_mean_max", mean_max),
        ("segment_mean_max_backward", mean_max_backward),
        ("segment_amax", amax),
        ("segment_amax_backward", amax_backward),
        ("segment_softmax", _reference.segment_softmax_reference),
        ("segment_softmax_backward", softmax_backward),
        ("segment_logsumexp", _reference.segment_logsumexp_reference),
    ):
        lib.impl(name, fn, "CompositeExplicitAutograd")


HAS_EXTENSION: bool = _load_extension()


def extension_available() -> bool:
    """True when the compiled kernels (``hepms._C``) are in use, False for the Python fallback."""
    return HAS_EXTENSION


def cpu_capability() -> str:
    """Which CPU kernels run: ``"avx2"`` (AVX2 + FMA + F16C), ``"baseline"`` (x86-64 SSE2, or
    any other CPU) or ``"python"`` (the pure-PyTorch fallback, no compiled extension).

    The extension is compiled for baseline x86-64 so that it loads everywhere; its hot loops are
    compiled a second time for AVX2 and the best variant the CPU supports is chosen when it loads.
    The AVX2 variant matters most for float16 (hardware conversion) and float64 max.
    """
    if not HAS_EXTENSION:
        return "python"
    from hepms import _C

    return _C.cpu_capability()


def set_cpu_capability(name: str) -> None:
    """Select the CPU kernels: ``"auto"`` (the best the CPU supports), ``"baseline"`` or ``"avx2"``.

    For comparisons and tests; the environment variable ``HEPMS_CPU_CAPABILITY`` does the same
    when hepms is imported. Both variants give bit-identical results (same accumulation order,
    exact conversions).

    Raises:
        ValueError: an unknown name, or ``"avx2"`` on a CPU without AVX2, FMA or F16C.
        RuntimeError: the compiled extension is not in use.
    """
    if not HAS_EXTENSION:
        raise RuntimeError("set_cpu_capability needs the compiled extension hepms._C, which is not in use")
    from hepms import _C

    _C.set_cpu_capability(name)


# --------------------------------------------------------------------------------------------
# Fake (meta) kernels: output shapes only, so torch.compile / torch.export can trace the ops.
# --------------------------------------------------------------------------------------------
def _pooled_shape(values: Tensor, offsets: Tensor) -> list:
    return [offsets.shape[0] - 1, *values.shape[1:]]


@torch.library.register_fake("hepms::segment_sum")
def _segment_sum_fake(values: Tensor, offsets: Tensor) -> Tensor:
    return values.new_empty(_pooled_shape(values, offsets))


@torch.library.register_fake("hepms::segment_mean")
def _segment_mean_fake(values: Tensor, offsets: Tensor) -> Tensor:
    return values.new_empty(_pooled_shape(values, offsets))


@torch.library.register_fake("hepms::segment_max")
def _segment_max_fake(values: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor]:
    shape = _pooled_shape(values, offsets)
    return values.new_empty(shape), values.new_empty(shape, dtype=torch.long)


@torch.library.register_fake("hepms::segment_gather")
def _segment_gather_fake(src: Tensor, offsets: Tensor, num_rows: int, mean: bool) -> Tensor:
    return src.new_empty([num_rows, *src.shape[1:]])


@torch.library.register_fake("hepms::segment_max_backward")
def _segment_max_backward_fake(
    grad: Tensor, argmax: Tensor, offsets: Tensor, num_rows: int
) -> Tensor:
    return grad.new_empty([num_rows, *grad.shape[1:]])


# --------------------------------------------------------------------------------------------
# Autograd: sum backward = gather by offsets, mean = gather / count, max = scatter to arg-max.
# The backward ops are differentiable too (their adjoints are the forward ops), so double
# backward works.
# --------------------------------------------------------------------------------------------
def _cpp_autograd_ops() -> frozenset:
    """The ops whose autograd the compiled extension registers itself (csrc/autograd.cpp: no
    Python wrapper per call); empty without the extension (or an older build of it)."""
    if not HAS_EXTENSION:
        return frozenset()
    from hepms import _C

    return frozenset(getattr(_C, "cpp_autograd_ops", ()))


_CPP_AUTOGRAD = _cpp_autograd_ops()


def _register_autograd(name: str, backward, setup_context) -> None:
    """``torch.library.register_autograd``, unless the extension has the op's autograd in C++
    (the same forward and backward ops, so the same numbers)."""
    if name.removeprefix("hepms::") not in _CPP_AUTOGRAD:
        torch.library.register_autograd(name, backward, setup_context=setup_context)


def _setup_pool(ctx, inputs, output) -> None:
    values, offsets = inputs
    ctx.save_for_backward(offsets)
    ctx.num_rows = values.shape[0]


def _segment_sum_backward(ctx, grad: Tensor):
    (offsets,) = ctx.saved_tensors
    return torch.ops.hepms.segment_gather(grad.contiguous(), offsets, ctx.num_rows, False), None


def _segment_mean_backward(ctx, grad: Tensor):
    (offsets,) = ctx.saved_tensors
    return torch.ops.hepms.segment_gather(grad.contiguous(), offsets, ctx.num_rows, True), None


def _setup_max(ctx, inputs, output) -> None:
    values, offsets = inputs
    _, argmax = output
    ctx.save_for_backward(argmax, offsets)
    ctx.num_rows = values.shape[0]
    ctx.mark_non_differentiable(argmax)


def _segment_max_autograd(ctx, grad: Tensor, _grad_argmax: Optional[Tensor]):
    argmax, offsets = ctx.saved_tensors
    return (
        torch.ops.hepms.segment_max_backward(grad.contiguous(), argmax, offsets, ctx.num_rows),
        None,
    )


def _setup_gather(ctx, inputs, output) -> None:
    _, offsets, _, mean = inputs
    ctx.save_for_backward(offsets)
    ctx.mean = mean


def _segment_gather_autograd(ctx, grad: Tensor):
    (offsets,) = ctx.saved_tensors
    adjoint = torch.ops.hepms.segment_mean if ctx.mean else torch.ops.hepms.segment_sum
    return adjoint(grad.contiguous(), offsets), None, None, None


def _setup_max_backward(ctx, inputs, output) -> None:
    _, argmax, _, _ = inputs
    ctx.save_for_backward(argmax)


def _segment_max_backward_autograd(ctx, grad: Tensor):
    (argmax,) = ctx.saved_tensors
    picked = grad.gather(0, argmax.clamp_min(0))
    return torch.where(argmax >= 0, picked, torch.zeros_like(picked)), None, None, None


_register_autograd(
    "hepms::segment_sum", _segment_sum_backward, setup_context=_setup_pool
)
_register_autograd(
    "hepms::segment_mean", _segment_mean_backward, setup_context=_setup_pool
)
_register_autograd(
    "hepms::segment_max", _segment_max_autograd, setup_context=_setup_max
)
_register_autograd(
    "hepms::segment_gather", _segment_gather_autograd, setup_context=_setup_gather
)
_register_autograd(
    "hepms::segment_max_backward",
    _segment_max_backward_autograd,
    setup_context=_setup_max_backward,
)


# --------------------------------------------------------------------------------------------
# The softmax family: fake kernels and autograd.
#   softmax:   y = softmax_set(x);  dx = y * (g - gather(sum_set(g * y)))  (segment_softmax_backward)
#   logsumexp: l = log sum_set exp(x);  dx = softmax_set(x) * gather(g)
# The backward of segment_softmax_backward is written with the forward ops, so double backward
# works too.
# --------------------------------------------------------------------------------------------
@torch.library.register_fake("hepms::segment_amax")
def _segment_amax_fake(values: Tensor, offsets: Tensor) -> Tensor:
    return values.new_empty(_pooled_shape(values, offsets))


@torch.library.register_fake("hepms::segment_amax_backward")
def _segment_amax_backward_fake(grad: Tensor, values: Tensor, out: Tensor, offsets: Tensor) -> Tensor:
    return grad.new_empty(values.shape)


def _setup_amax(ctx, inputs, output) -> None:
    values, offsets = inputs
    ctx.save_for_backward(values, output, offsets)


def _segment_amax_autograd(ctx, grad: Tensor):
    values, out, offsets = ctx.saved_tensors
    return torch.ops.hepms.segment_amax_backward(grad.contiguous(), values, out, offsets), None


def _setup_amax_backward(ctx, inputs, output) -> None:
    grad, values, out, offsets = inputs
    ctx.save_for_backward(grad, values, out, offsets)


def _segment_amax_backward_autograd(ctx, upstream: Tensor):
    # The backward is linear in grad: it places grad[s] on the routing rows. Its adjoint picks
    # the upstream at those rows: the routing mask (the backward of ones) times the upstream,
    # summed per set. The routing does not change with small changes of the values: no gradient.
    grad, values, out, offsets = ctx.saved_tensors
    mask = torch.ops.hepms.segment_amax_backward(torch.ones_like(grad), values, out, offsets)
    return torch.ops.hepms.segment_sum((upstream * mask).contiguous(), offsets), None, None, None


_register_autograd(
    "hepms::segment_amax", _segment_amax_autograd, setup_context=_setup_amax
)
_register_autograd(
    "hepms::segment_amax_backward",
    _segment_amax_backward_autograd,
    setup_context=_setup_amax_backward,
)


# segment_mean_max: [B, 2F] = [mean | max]. Its backward (one kernel) is linear in grad: the
# mean half spread over each set's rows / count, the max half on each set's first maximal row.
# The adjoint of that map: the mean of the upstream per set, and the upstream at the maximal rows
# summed per set (the routing mask, the max half's backward of ones, times the upstream).
@torch.library.register_fake("hepms::segment_mean_max")
def _segment_mean_max_fake(values: Tensor, offsets: Tensor) -> Tensor:
    width = values.shape[1] if values.dim() == 2 else 1
    return values.new_empty([offsets.shape[0] - 1, 2 * width])


@torch.library.register_fake("hepms::segment_mean_max_backward")
def _segment_mean_max_backward_fake(grad: Tensor, values: Tensor, out: Tensor, offsets: Tensor) -> Tensor:
    return grad.new_empty(values.shape)


def _segment_mean_max_autograd(ctx, grad: Tensor):
    values, out, offsets = ctx.saved_tensors
    return torch.ops.hepms.segment_mean_max_backward(grad.contiguous(), values, out, offsets), None


def _segment_mean_max_backward_autograd(ctx, upstream: Tensor):
    grad, values, out, offsets = ctx.saved_tensors
    width = grad.shape[1] // 2
    rows = values.shape[0]
    upstream = upstream.reshape(rows, width)
    values2d = values.reshape(rows, width)
    ones = torch.ones_like(grad[:, width:])
    mask = torch.ops.hepms.segment_amax_backward(ones, values2d, out[:, width:].contiguous(), offsets)
    grad_grad = torch.cat(
        [torch.ops.hepms.segment_mean(upstream.contiguous(), offsets),
         torch.ops.hepms.segment_sum((upstream * mask).contiguous(), offsets)],
        dim=1,
    )
    return grad_grad, None, None, None


# segment_mean_max and its backward save what segment_amax and its backward save.
_register_autograd(
    "hepms::segment_mean_max", _segment_mean_max_autograd, setup_context=_setup_amax
)
_register_autograd(
    "hepms::segment_mean_max_backward",
    _segment_mean_max_backward_autograd,
    setup_context=_setup_amax_backward,
)


@torch.library.register_fake("hepms::segment_softmax")
def _segment_softmax_fake(values: Tensor, offsets: Tensor) -> Tensor:
    return values.new_empty(values.shape)


@torch.library.register_fake("hepms::segment_softmax_backward")
def _segment_softmax_backward_fake(grad: Tensor, out: Tensor, offsets: Tensor) -> Tensor:
    return grad.new_empty(grad.shape)


@torch.library.register_fake("hepms::segment_logsumexp")
def _segment_logsumexp_fake(values: Tensor, offsets: Tensor) -> Tensor:
    return values.new_empty(_pooled_shape(values, offsets))


def _setup_softmax(ctx, inputs, output) -> None:
    _, offsets = inputs
    ctx.save_for_backward(output, offsets)


def _segment_softmax_autograd(ctx, grad: Tensor):
    out, offsets = ctx.saved_tensors
    return torch.ops.hepms.segment_softmax_backward(grad.contiguous(), out, offsets), None


def _setup_softmax_backward(ctx, inputs, output) -> None:
    grad, out, offsets = inputs
    ctx.save_for_backward(grad, out, offsets)


def _segment_softmax_backward_autograd(ctx, upstream: Tensor):
    # z = y * (g - S(g * y)) with S = gather(sum_set(.)):
    #   dz/dg . u = y * (u - S(u * y))          = segment_softmax_backward(u, y)
    #   dz/dy . u = u * (g - S(g * y)) - g * S(u * y)
    grad, out, offsets = ctx.saved_tensors
    upstream = upstream.contiguous()
    rows = grad.shape[0]

    def spread(x: Tensor) -> Tensor:
        pooled = torch.ops.hepms.segment_sum(x.contiguous(), offsets)
        return torch.ops.hepms.segment_gather(pooled, offsets, rows, False)

    grad_grad = torch.ops.hepms.segment_softmax_backward(upstream, out, offsets)
    grad_out = upstream * (grad - spread(grad * out)) - grad * spread(upstream * out)
    return grad_grad, grad_out, None


def _setup_logsumexp(ctx, inputs, output) -> None:
    values, offsets = inputs
    ctx.save_for_backward(values, offsets)


def _segment_logsumexp_autograd(ctx, grad: Tensor):
    values, offsets = ctx.saved_tensors
    weights = torch.ops.hepms.segment_softmax(values, offsets)
    spread = torch.ops.hepms.segment_gather(grad.contiguous(), offsets, values.shape[0], False)
    return weights * spread, None


_register_autograd(
    "hepms::segment_softmax", _segment_softmax_autograd, setup_context=_setup_softmax
)
_register_autograd(
    "hepms::segment_softmax_backward",
    _segment_softmax_backward_autograd,
    setup_context=_setup_softmax_backward,
)
_register_autograd(
    "hepms::segment_logsumexp", _segment_logsumexp_autograd, setup_context=_setup_logsumexp
)


# --------------------------------------------------------------------------------------------
# Argument validation
# --------------------------------------------------------------------------------------------
# The process-wide default (set_validation), and a per-context override (validation()): a
# ContextVar, because a module global saved and restored by a context manager races between
# threads (dask workers run tasks in threads): one thread leaving its block would switch the
# checks back on, or off, under another thread still inside its own.
_process_default = os.environ.get("HEPMS_VALIDATE", "1") not in ("0", "false", "False")
_override: contextvars.ContextVar[Optional[bool]] = contextvars.ContextVar(
    "hepms_validation", default=None
)


def set_validation(enabled: bool) -> None:
    """Switch the argument checks of the segment ops on or off for the whole process (every
    thread), where no :func:`validation` block says otherwise."""
    global _process_default
    _process_default = bool(enabled)


@contextlib.contextmanager
def validation(enabled: bool) -> Iterator[None]:
    """Context manager: ``with hepms.validation(False): ...`` skips the checks inside the block.

    The setting is local to the current thread (and asyncio task): other threads keep theirs.
    """
    token = _override.set(bool(enabled))
    try:
        yield
    finally:
        _override.reset(token)


def validation_enabled() -> bool:
    """Whether the segment ops check the offsets content by default in this thread/context."""
    override = _override.get()
    return _process_default if override is None else override


def offsets_from_counts(counts: Any, device: Union[str, torch.device, None] = None) -> Tensor:
    """CSR offsets ``[0, c0, c0 + c1, ...]`` (int64, ``[B + 1]``) from set lengths ``[B]``.

    ``counts`` may be a tensor, a numpy array, an awkward array of counts (``ak.num(jets)``) or a
    list of non-negative integers. The result is on ``device`` (default: the device of a tensor
    ``counts``, else the CPU).

    Example:
        >>> import hepms
        >>> hepms.offsets_from_counts([3, 0, 2]).tolist()
        [0, 3, 3, 5]
    """
    if isinstance(counts, Tensor):
        tensor = counts
    else:
        array = np.asarray(counts)  # numpy, awkward (1-D, no missing values) and lists
        if array.dtype == object:
            raise TypeError(f"offsets_from_counts: counts must be 1-D integers, got {type(counts).__name__}")
        if array.size == 0:
            array = array.astype(np.int64)  # np.asarray([]) is float64: no sets is not a dtype error
        tensor = torch.tensor(array)
    if not is_integer_dtype(tensor.dtype):
        raise TypeError(f"offsets_from_counts: counts must be integers, got {tensor.dtype}")
    if tensor.dim() != 1:
        raise ValueError(f"offsets_from_counts: counts must be 1-D [B], got shape {tuple(tensor.shape)}")
    tensor = tensor.to(device=device if device is not None else tensor.device, dtype=torch.int64)
    if tensor.numel() and bool((tensor < 0).any()):
        bad = int(torch.nonzero(tensor < 0)[0, 0])
        raise ValueError(f"offsets_from_counts: counts must be >= 0, got counts[{bad}] = {int(tensor[bad])}")
    offsets = tensor.new_zeros(tensor.shape[0] + 1)
    torch.cumsum(tensor, 0, out=offsets[1:])
    return offsets


def _unpack(name: str, values: Any, offsets: Any) -> tuple[Any, Any]:
    """``(values, offsets)`` from a Jagged-like first argument, and numpy offsets as a tensor."""
    if not isinstance(values, Tensor) and hasattr(values, "values") and hasattr(values, "offsets"):
        # a hepms.Jagged (duck-typed: hepms.jagged imports this module): its innermost sets
        if offsets is not None:
            raise TypeError(
                f"{name}: got a {type(values).__name__} and offsets; pass either a Jagged alone "
                "or values and offsets"
            )
        values, offsets = values.values, values.offsets
    if offsets is None:
        raise TypeError(f"{name}: offsets missing: pass values and offsets, or a hepms.Jagged")
    if isinstance(offsets, np.ndarray):
        if offsets.dtype.kind not in "iu":
            raise TypeError(f"{name}: offsets must be integers, got a numpy array of {offsets.dtype}")
        device = values.device if isinstance(values, Tensor) else None
        offsets = torch.tensor(offsets.astype(np.int64, copy=False), device=device)
    return values, offsets


def _check_arguments(
    name: str, values: Tensor, offsets: Optional[Tensor], validate: Optional[bool]
) -> tuple[Tensor, Tensor]:
    """Type/shape/device checks (always) and offsets content checks (unless disabled).

    ``values`` may be a :class:`hepms.Jagged` (with ``offsets`` None) and ``offsets`` a numpy
    array. Returns ``offsets`` as int64 (int32 and other integer offsets are accepted and converted).
    """
    values, offsets = _unpack(name, values, offsets)
    if not isinstance(values, Tensor):
        raise TypeError(f"{name}: values must be a torch.Tensor, got {type(values).__name__}")
    if not isinstance(offsets, Tensor):
        raise TypeError(f"{name}: offsets must be a torch.Tensor, got {type(offsets).__name__}")
    if values.dtype not in _FLOATING:
        raise TypeError(
            f"{name}: values must be floating point (float32, float64, float16, bfloat16), "
            f"got {values.dtype}"
        )
    if values.dim() not in (1, 2):
        raise ValueError(
            f"{name}: values must be 1-D [N] or 2-D [N, F], got shape {tuple(values.shape)}"
        )
    if not is_integer_dtype(offsets.dtype):
        raise TypeError(f"{name}: offsets must be an integer tensor, got {offsets.dtype}")
    if offsets.dim() != 1:
        raise ValueError(f"{name}: offsets must be 1-D [B + 1], got shape {tuple(offsets.shape)}")
    if offsets.numel() == 0:
        raise ValueError(f"{name}: offsets must have at least one entry (B + 1 >= 1), got none")
    if offsets.device != values.device:
        raise ValueError(
            f"{name}: offsets are on {offsets.device} but values are on {values.device}; "
            "move both to the same device"
        )
    if offsets.dtype != torch.long:
        offsets = offsets.long()
    if torch.compiler.is_compiling():
        # Traced code cannot read the switches (Python state): only an explicit request checks,
        # through the op, which the compiler keeps (its result is the offsets used below).
        if validate:
            offsets = torch.ops.hepms.check_offsets(offsets, values.shape[0], name)
        return values, offsets
    if validate is None:
        validate = validation_enabled()
    if validate:
        _check_offsets_content(name, offsets, values.shape[0])
    return values, offsets


def _scripted_check(name: str, values: Tensor, offsets: Tensor, validate: Optional[bool]) -> Tensor:
    """The TorchScript side of :func:`_check_arguments`: int64 offsets, checked by the op for an
    explicit ``validate=True`` (TorchScript cannot read the Python switches)."""
    offsets = offsets.long()
    if validate is not None and validate:
        offsets = torch.ops.hepms.check_offsets(offsets, values.shape[0], name)
    return offsets


def _check_offsets_content(name: str, offsets: Tensor, num_rows: int) -> None:
    # One small host transfer for all three conditions (a single sync on GPU).
    first = offsets[0]
    last = offsets[-1]
    decreasing = (offsets[1:] < offsets[:-1]).any() if offsets.numel() > 1 else first.new_zeros(())
    first_v, last_v, decreasing_v = torch.stack([first, last, decreasing.long()]).tolist()
    if first_v != 0:
        raise ValueError(f"{name}: offsets[0] must be 0, got {first_v}{_counts_hint(offsets, num_rows)}")
    if decreasing_v:
        steps = offsets[1:] - offsets[:-1]
        bad = int(torch.nonzero(steps < 0)[0, 0])
        raise ValueError(
            f"{name}: offsets must be non-decreasing, but offsets[{bad + 1}] = "
            f"{int(offsets[bad + 1])} < offsets[{bad}] = {int(offsets[bad])}"
            f"{_counts_hint(offsets, num_rows)}"
        )
    if last_v != num_rows:
        raise ValueError(
            f"{name}: offsets[-1] must equal the number of rows of values ({num_rows}), "
            f"got {last_v}{_counts_hint(offsets, num_rows)}"
        )


@torch.library.custom_op("hepms::check_offsets", mutates_args=())
def _check_offsets_op(offsets: Tensor, num_rows: int, name: str) -> Tensor:
    """Raise ``ValueError`` unless ``offsets`` are CSR offsets of ``num_rows`` rows; returns a copy
    of them (an op whose result is used is never removed as dead code by torch.compile or
    torch.export; a copy, since custom ops may not return their input). O(B), one host sync."""
    _check_offsets_content(name, offsets, num_rows)
    return offsets.clone()


@_check_offsets_op.register_fake
def _check_offsets_fake(offsets: Tensor, num_rows: int, name: str) -> Tensor:
    return torch.empty_like(offsets)


def _counts_hint(offsets: Tensor, num_rows: int) -> str:
    """A hint when the 'offsets' look like set lengths (they add up to the number of rows)."""
    if int(offsets.sum()) != num_rows:
        return ""
    return (
        "; these look like counts (set lengths, summing to the number of rows), not offsets: "
        "convert them with hepms.offsets_from_counts(counts)"
    )


# --------------------------------------------------------------------------------------------
# Public API. The `torch.jit.is_scripting()` branches keep these functions scriptable: inside
# TorchScript only the op call remains (offsets are still converted to int64), after the
# check op where validate=True is given explicitly.
# --------------------------------------------------------------------------------------------
def segment_sum(
    values: Tensor, offsets: Optional[Tensor] = None, validate: Optional[bool] = None
) -> Tensor:
    """Sum of each set: ``out[b] = values[offsets[b]:offsets[b+1]].sum(0)`` (0 for empty sets).

    Args:
        values: ``[N]`` or ``[N, F]`` floating tensor (float32/64, float16, bfloat16), or a
            :class:`hepms.Jagged` (then without ``offsets``; its innermost sets are pooled:
            ``hepms.segment_sum(jagged)`` is ``jagged.sum()``).
        offsets: ``[B + 1]`` integer tensor on the same device (a numpy array is converted),
            ``offsets[0] == 0``, non-decreasing, ``offsets[-1] == N``. Set lengths (counts)
            become offsets with :func:`offsets_from_counts`.
        validate: check the offsets content (None: the process-wide default, see
            :func:`set_validation`).

    Returns:
        ``[B]`` or ``[B, F]`` tensor of the dtype of ``values``.
    """
    if not torch.jit.is_scripting():
        values, offsets = _check_arguments("segment_sum", values, offsets, validate)
    else:
        assert offsets is not None  # TorchScript: offsets are required there (no Jagged)
        offsets = _scripted_check("segment_sum", values, offsets, validate)
    assert offsets is not None
    return torch.ops.hepms.segment_sum(values, offsets.long())


def segment_mean(
    values: Tensor, offsets: Optional[Tensor] = None, validate: Optional[bool] = None
) -> Tensor:
    """Mean of each set (0 for empty sets). Arguments as :func:`segment_sum`."""
    if not torch.jit.is_scripting():
        values, offsets = _check_arguments("segment_mean", values, offsets, validate)
    else:
        assert offsets is not None  # TorchScript: offsets are required there (no Jagged)
        offsets = _scripted_check("segment_mean", values, offsets, validate)
    assert offsets is not None
    return torch.ops.hepms.segment_mean(values, offsets.long())


def segment_max(
    values: Tensor, offsets: Optional[Tensor] = None, validate: Optional[bool] = None
) -> tuple[Tensor, Tensor]:
    """Element-wise maximum of each set and its arg-max row.

    Returns:
        ``(max, argmax)``: ``max`` has shape ``[B]``/``[B, F]`` (0 for empty sets, NaN if the set
        holds a NaN); ``argmax`` (int64, same shape) is the global row index into ``values`` of the
        first maximal element, -1 for empty sets. The gradient flows to that row only.
    """
    if not torch.jit.is_scripting():
        values, offsets = _check_arguments("segment_max", values, offsets, validate)
    else:
        assert offsets is not None  # TorchScript: offsets are required there (no Jagged)
        offsets = _scripted_check("segment_max", values, offsets, validate)
    assert offsets is not None
    return torch.ops.hepms.segment_max(values, offsets.long())


def segment_amax(
    values: Tensor, offsets: Optional[Tensor] = None, validate: Optional[bool] = None
) -> Tensor:
    """The maximum of each set, without its arg-max: ``segment_max(values, offsets)[0]``.

    Same values, same gradient (to the first maximal row of each set and feature, 0 for empty
    sets), but no int64 arg-max tensor is written: its backward finds the maximal rows again
    from the values. That matters when there are about as many sets as rows (the arg-max is
    then twice the size of the values in float32). :class:`hepms.nn.Pooling` uses it.
    Arguments as :func:`segment_sum`.
    """
    if not torch.jit.is_scripting():
        values, offsets = _check_arguments("segment_amax", values, offsets, validate)
    else:
        assert offsets is not None  # TorchScript: offsets are required there (no Jagged)
        offsets = _scripted_check("segment_amax", values, offsets, validate)
    assert offsets is not None
    return torch.ops.hepms.segment_amax(values, offsets.long())


def segment_mean_max(
    values: Tensor, offsets: Optional[Tensor] = None, validate: Optional[bool] = None
) -> Tensor:
    """Mean and maximum of each set side by side: ``[B, 2F]`` (``[B, 2]`` for 1-D values).

    Equal, bit for bit, to ``torch.cat([segment_mean(v, o), segment_amax(v, o)], dim=1)`` (the
    same kernels run), with the same gradient (mean: spread over the set's rows; max: to the
    first maximal row of each set and feature; empty sets: 0), but one autograd node whose
    backward writes both parts in one pass: the default pooling of :class:`hepms.nn.Pooling`
    (modes ``("mean", "max")``). Arguments as :func:`segment_sum`.
    """
    if not torch.jit.is_scripting():
        values, offsets = _check_arguments("segment_mean_max", values, offsets, validate)
    else:
        assert offsets is not None  # TorchScript: offsets are required there (no Jagged)
        offsets = _scripted_check("segment_mean_max", values, offsets, validate)
    assert offsets is not None
    return torch.ops.hepms.segment_mean_max(values, offsets.long())


def segment_softmax(
    values: Tensor, offsets: Optional[Tensor] = None, validate: Optional[bool] = None
) -> Tensor:
    """Softmax over the rows of each set, per feature: the attention weights of set pooling.

    ``out[i] = exp(values[i]) / sum(exp(values[j]) for j in the set of i)``, computed stably (the
    set's maximum is subtracted first; 16-bit inputs are computed in float32). Each set's rows
    sum to 1 in every column; empty sets have no rows.

    Args:
        values: ``[N]`` or ``[N, F]`` floating tensor (float32/64, float16, bfloat16).
        offsets: ``[B + 1]`` integer tensor, as for :func:`segment_sum`.
        validate: check the offsets content (None: the process-wide default).

    Returns:
        A tensor of the shape and dtype of ``values``.
    """
    if not torch.jit.is_scripting():
        values, offsets = _check_arguments("segment_softmax", values, offsets, validate)
    else:
        assert offsets is not None  # TorchScript: offsets are required there (no Jagged)
        offsets = _scripted_check("segment_softmax", values, offsets, validate)
    assert offsets is not None
    return torch.ops.hepms.segment_softmax(values, offsets.long())


def segment_logsumexp(
    values: Tensor, offsets: Optional[Tensor] = None, validate: Optional[bool] = None
) -> Tensor:
    """``log(sum(exp(values)))`` over the rows of each set, computed stably; 0 for empty sets.

    A smooth maximum: its gradient is :func:`segment_softmax` of the values. Arguments as
    :func:`segment_sum`; returns ``[B]`` or ``[B, F]`` of the dtype of ``values``.
    """
    if not torch.jit.is_scripting():
        values, offsets = _check_arguments("segment_logsumexp", values, offsets, validate)
    else:
        assert offsets is not None  # TorchScript: offsets are required there (no Jagged)
        offsets = _scripted_check("segment_logsumexp", values, offsets, validate)
    assert offsets is not None
    return torch.ops.hepms.segment_logsumexp(values, offsets.long())
