"""Segment kernels beyond the basics: accurate long sums, the split of huge sets over threads,
the index arithmetic shared with CUDA, segment_softmax / segment_logsumexp and attention pooling."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

import hepms
from hepms import _reference
from hepms.nn import AttentionPooling, DeepSets, Pooling

NEEDS_EXTENSION = pytest.mark.skipif(not hepms.extension_available(), reason="compiled extension not in use")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
CASCADE_ROWS = 64  # kCascadeRows in csrc/cpu/segment_cpu_common.h


def make_offsets(counts) -> torch.Tensor:
    counts = torch.as_tensor(counts, dtype=torch.long)
    offsets = torch.zeros(counts.numel() + 1, dtype=torch.long)
    offsets[1:] = counts.cumsum(0)
    return offsets


@pytest.fixture
def threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


# ----------------------------------------------------------------------------------------------
# Accurate long sums
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["randn", "uniform"])
def test_long_sum_error_bound_against_float64(dtype, kind):
    generator = torch.Generator().manual_seed(5)
    n = 1_000_000
    data = torch.randn(n, 3, generator=generator) if kind == "randn" else torch.rand(n, 3, generator=generator)
    if dtype != torch.float32 and kind == "uniform":
        data = data / 64  # keep the float16 sum (~8e3) finite
    values = data.to(dtype)
    exact = values.double().sum(0)
    magnitude = values.double().abs().sum(0)
    offsets = torch.tensor([0, n])
    ours = hepms.segment_sum(values, offsets)[0].double()
    mean = hepms.segment_mean(values, offsets)[0].double()
    # Worst-case bound of a cascade over blocks of 64 rows, float32 accumulation:
    # (64 + log2(n / 64) + 1) eps32 sum|x|, plus rounding the result to the output dtype.
    eps32 = torch.finfo(torch.float32).eps
    output_ulp = torch.finfo(dtype).eps * exact.abs()
    bound = (CASCADE_ROWS + math.log2(n / CASCADE_ROWS) + 1) * eps32 * magnitude + output_ulp
    assert ((ours - exact).abs() <= bound).all()
    assert ((mean - exact / n).abs() <= bound / n + torch.finfo(dtype).eps * (exact / n).abs()).all()
    if dtype == torch.float32:
        # Typical error: sequential float32 summation gave 1.2e-4 (randn) / 2.2e-5 (uniform)
        # relative here; the cascade is within a few float32 ulps of the exact sum.
        relative = ((ours - exact).abs() / exact.abs()).max().item()
        assert relative < (5e-6 if kind == "randn" else 5e-7), relative


@NEEDS_EXTENSION
@pytest.mark.usefixtures("restore_cpu_capability")
def test_cascade_and_softmax_variants_are_bit_identical():
    if not hepms._C.cpu_supports_avx2():
        pytest.skip("this CPU lacks AVX2 + FMA + F16C")
    generator = torch.Generator().manual_seed(2)
    offsets = make_offsets([100_000, 3, 0, 4_097])
    for dtype in (torch.float32, torch.float64, torch.float16):
        values = torch.randn(int(offsets[-1]), 9, generator=generator).to(dtype)
        results = {}
        for variant in ("baseline", "avx2"):
            hepms.ops.set_cpu_capability(variant)
            results[variant] = [hepms.segment_sum(values, offsets), hepms.segment_mean(values, offsets),
                                hepms.segment_softmax(values, offsets), hepms.segment_logsumexp(values, offsets)]
        for ours, theirs in zip(results["avx2"], results["baseline"]):
            assert torch.equal(ours, theirs), dtype


# ----------------------------------------------------------------------------------------------
# Few huge sets: split over threads, same bits
# ----------------------------------------------------------------------------------------------
@NEEDS_EXTENSION
@pytest.mark.usefixtures("threads")
def test_few_huge_sets_are_split_and_give_the_same_bits():
    offsets = make_offsets([150_000, 0, 70_001, 1])
    rows = int(offsets[-1])
    torch.set_num_threads(2)
    _, chunk_rows = hepms._C._cpu_task_split(offsets.tolist(), 5, rows)
    assert chunk_rows > 0, "few huge sets should be split into row chunks"
    values = torch.randn(rows, 5, generator=torch.Generator().manual_seed(0))
    values[200_000, 2] = float("nan")
    values[10:20, 3] = 7.0  # ties across a chunk's rows
    upstream = torch.randn(4, 5)
    results = {}
    for count in (1, 2):  # one thread: never split
        torch.set_num_threads(count)
        x = values.clone().requires_grad_()
        maxima, argmax = hepms.segment_max(x, offsets)
        total = hepms.segment_sum(x, offsets)
        mean = hepms.segment_mean(x, offsets)
        grads = torch.autograd.grad((maxima * upstream).sum() + (total * upstream).sum() + (mean * upstream).sum(), x)
        results[count] = (total, mean, maxima, argmax, grads[0])
    for split, whole in zip(results[2], results[1]):
        torch.testing.assert_close(split, whole, rtol=0, atol=0, equal_nan=True)
    assert results[2][3][2, 2].item() == 200_000  # the NaN wins the max
    assert results[2][3][0, 3].item() == 10  # the first of the tied rows


@NEEDS_EXTENSION
@pytest.mark.usefixtures("threads")
@pytest.mark.parametrize("counts", [[0], [5], [3000, 0, 7, 200_000], [70_000] * 3, [1] * 50 + [90_000]])
@pytest.mark.parametrize("width", [1, 130])
def test_task_split_covers_every_row_and_feature_once(counts, width):
    torch.set_num_threads(2)
    offsets = make_offsets(counts).tolist()
    rows = offsets[-1]
    tasks, chunk_rows = hepms._C._cpu_task_split(offsets, width, rows)
    if chunk_rows:
        # 64 rows times a power of two, so split sums match the one-pass cascade
        assert chunk_rows >= 2048 and chunk_rows % CASCADE_ROWS == 0
        assert (chunk_rows // CASCADE_ROWS) & (chunk_rows // CASCADE_ROWS - 1) == 0
    covered = torch.zeros(rows, width, dtype=torch.long)
    segments_seen = set()
    for seg, unit, f0, w, begin, end in tasks:
        assert offsets[seg] <= begin <= end <= offsets[seg + 1]
        if chunk_rows:
            assert end - begin <= chunk_rows
        covered[begin:end, f0:f0 + w] += 1
        segments_seen.add(seg)
    assert (covered == 1).all()
    assert segments_seen == set(range(len(counts)))  # empty sets get a task too (their output)


@NEEDS_EXTENSION
def test_shared_index_arithmetic():
    C = hepms._C
    assert C._index_clamp_segment(-5, 3, 10) == (0, 3)
    assert C._index_clamp_segment(4, 2, 10) == (4, 4)
    assert C._index_clamp_segment(8, 50, 10) == (8, 10)
    assert C._index_clamp_segment(12, 50, 10) == (10, 10)
    assert C._index_num_chunks(5, 5, 64) == 1
    assert C._index_num_chunks(0, 129, 64) == 3
    bounds = [C._index_chunk_bounds(10, 139, 64, c) for c in range(3)]
    assert bounds == [(10, 74), (74, 138), (138, 139)]
    assert C._index_chunk_rows_for(1000, 8, 64, 2048) == 2048
    assert C._index_chunk_rows_for(1_000_000, 8, 64, 2048) == 131072
    for width in range(1, 200):
        cols, rows = C._index_lane_layout(width)
        assert cols * rows == 32 and cols & (cols - 1) == 0
        assert cols >= min(width, 32) and (cols == 1 or cols // 2 < width)


# ----------------------------------------------------------------------------------------------
# segment_amax: the max without the arg-max
# ----------------------------------------------------------------------------------------------
@pytest.mark.usefixtures("threads")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("counts", "width"), [([3, 0, 1, 45, 0, 2], 5), ([0, 90_000, 5, 40_000], 5),
                                               ([2, 0, 9_000, 1], 130)])  # 130: two feature blocks
def test_amax_matches_segment_max_values_and_gradient(dtype, counts, width):
    torch.set_num_threads(2)  # the long sets are split into chunks
    offsets = make_offsets(counts)
    n = int(offsets[-1])
    values = torch.randn(n, width, generator=torch.Generator().manual_seed(4)).to(dtype)
    values[:2, 0] = 3.0  # a tie
    values[1, 1] = float("nan")
    values[3:, -1] = 10.0  # ties (the maximum) in the last feature block, across chunks
    upstream = torch.randn(len(counts), width).to(dtype)
    x1 = values.clone().requires_grad_()
    x2 = values.clone().requires_grad_()
    ours = hepms.segment_amax(x1, offsets)
    theirs, _ = hepms.segment_max(x2, offsets)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True)
    ours.backward(upstream)
    theirs.backward(upstream)
    assert torch.equal(x1.grad, x2.grad)


def test_amax_gradcheck_opcheck_and_errors():
    offsets = make_offsets([3, 0, 1, 6, 0])
    values = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: hepms.segment_amax(x, offsets), (values,))
    assert torch.autograd.gradgradcheck(lambda x: hepms.segment_amax(x, offsets), (values,))
    torch.library.opcheck(torch.ops.hepms.segment_amax, (values, offsets))
    with pytest.raises(ValueError, match=r"segment_amax: offsets\[0\] must be 0"):
        hepms.segment_amax(values, torch.tensor([1, 10]))
    with pytest.raises(RuntimeError, match="segment_amax_backward: grad"):
        torch.ops.hepms.segment_amax_backward(torch.ones(2, 3, dtype=torch.float64), values.detach(),
                                              torch.ones(2, 3, dtype=torch.float64), offsets)


# ----------------------------------------------------------------------------------------------
# segment_mean_max: the default pooling (mean and max side by side) as one op
# ----------------------------------------------------------------------------------------------
@pytest.mark.usefixtures("threads")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("counts", "width"), [([3, 0, 1, 45, 0, 2], 5), ([0, 90_000, 5, 40_000], 5),
                                               ([2, 0, 9_000, 1], 130)])  # 130: two feature blocks
def test_mean_max_is_mean_and_amax_side_by_side_bit_for_bit(dtype, counts, width):
    torch.set_num_threads(2)  # the long sets are split into chunks (the backward's phase 2)
    offsets = make_offsets(counts)
    n = int(offsets[-1])
    values = torch.randn(n, width, generator=torch.Generator().manual_seed(5)).to(dtype)
    values[:2, 0] = 3.0  # a tie
    values[1, 1] = float("nan")
    values[3:, -1] = 10.0  # ties (the maximum) in the last feature block, across chunks
    upstream = torch.randn(len(counts), 2 * width, generator=torch.Generator().manual_seed(6)).to(dtype)
    x1 = values.clone().requires_grad_()
    x2 = values.clone().requires_grad_()
    ours = hepms.segment_mean_max(x1, offsets)
    theirs = torch.cat([hepms.segment_mean(x2, offsets), hepms.segment_amax(x2, offsets)], dim=1)
    assert ours.shape == (len(counts), 2 * width) and ours.dtype == dtype
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True)
    ours.backward(upstream)
    theirs.backward(upstream)
    # mean part + max part, rounded as autograd adds the two separate gradients
    torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=0, equal_nan=True)
    assert float(x1.grad[offsets[0]:offsets[1]].abs().sum()) > 0 or counts[0] == 0


def test_mean_max_against_the_pytorch_reference_gradcheck_opcheck_and_errors():
    offsets = make_offsets([3, 0, 1, 6, 0])
    values = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
    expected = torch.cat([_reference.segment_mean_reference(values, offsets),
                          _reference.segment_max_reference(values, offsets)[0]], dim=1)
    torch.testing.assert_close(hepms.segment_mean_max(values, offsets), expected)
    assert hepms.segment_mean_max(values, offsets)[1].abs().sum() == 0  # an empty set pools to 0
    flat = values[:, 0].detach().clone().requires_grad_()  # 1-D values: [B, 2]
    assert hepms.segment_mean_max(flat, offsets).shape == (5, 2)
    for x in (values, flat):
        assert torch.autograd.gradcheck(lambda v: hepms.segment_mean_max(v, offsets), (x,))
        assert torch.autograd.gradgradcheck(lambda v: hepms.segment_mean_max(v, offsets), (x,))
    torch.library.opcheck(torch.ops.hepms.segment_mean_max, (values, offsets))
    grad = torch.randn(5, 6, dtype=torch.float64)
    out = hepms.segment_mean_max(values, offsets).detach()
    torch.library.opcheck(torch.ops.hepms.segment_mean_max_backward, (grad, values.detach(), out, offsets))
    with pytest.raises(ValueError, match=r"segment_mean_max: offsets\[0\] must be 0"):
        hepms.segment_mean_max(values, torch.tensor([1, 10]))
    with pytest.raises(RuntimeError, match="segment_mean_max_backward: grad"):
        torch.ops.hepms.segment_mean_max_backward(grad[:, :3], values.detach(), out, offsets)
    with pytest.raises(ValueError, match="values must be 1-D"):
        hepms.segment_mean_max(torch.zeros(10, 2, 2), offsets)


# ----------------------------------------------------------------------------------------------
# C++ autograd (csrc/autograd.cpp) of the ops a training step calls
# ----------------------------------------------------------------------------------------------
@NEEDS_EXTENSION
def test_cpp_autograd_runs_the_backward_ops_of_the_python_autograd_bit_for_bit():
    """The C++ autograd nodes call the same backward ops as hepms/ops.py's Python autograd (used
    without the extension): same gradients bit for bit, and a graph for double backward."""
    from hepms import _C

    assert set(_C.cpp_autograd_ops) == {"segment_sum", "segment_mean", "segment_gather",
                                        "segment_amax", "segment_mean_max"}
    ops = torch.ops.hepms
    offsets = make_offsets([3, 0, 1, 45, 0, 2])
    rows, sets = int(offsets[-1]), len(offsets) - 1
    values = torch.randn(rows, 5, generator=torch.Generator().manual_seed(1))
    values[:2, 0] = 3.0  # a tie
    per_set = torch.randn(sets, 5, generator=torch.Generator().manual_seed(2))
    cases = {  # input, forward, the backward the Python autograd computes for upstream g
        "segment_sum": (values, lambda x: ops.segment_sum(x, offsets),
                        lambda g, x, out: ops.segment_gather(g, offsets, rows, False)),
        "segment_mean": (values, lambda x: ops.segment_mean(x, offsets),
                         lambda g, x, out: ops.segment_gather(g, offsets, rows, True)),
        "segment_gather sum": (per_set, lambda x: ops.segment_gather(x, offsets, rows, False),
                               lambda g, x, out: ops.segment_sum(g, offsets)),
        "segment_gather mean": (per_set, lambda x: ops.segment_gather(x, offsets, rows, True),
                                lambda g, x, out: ops.segment_mean(g, offsets)),
        "segment_amax": (values, lambda x: ops.segment_amax(x, offsets),
                         lambda g, x, out: ops.segment_amax_backward(g, x, out, offsets)),
        "segment_mean_max": (values, lambda x: ops.segment_mean_max(x, offsets),
                             lambda g, x, out: ops.segment_mean_max_backward(g, x, out, offsets)),
    }
    for name, (data, forward, backward) in cases.items():
        x = data.clone().requires_grad_()
        out = forward(x)
        assert "CppNode" in out.grad_fn.name(), (name, out.grad_fn.name())
        assert torch.equal(out.detach(), forward(data))
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
        # a non-contiguous upstream: the node makes it contiguous, as the Python one does
        g = upstream.t().contiguous().t().requires_grad_()
        (grad,) = torch.autograd.grad(out, x, g, create_graph=True)
        assert torch.equal(grad.detach(), backward(upstream, data, out.detach())), name
        # create_graph recorded the backward op (double backward): grad depends on g
        (again,) = torch.autograd.grad(grad, g, torch.ones_like(grad))
        assert again.shape == upstream.shape, name
    no_grad = torch.randn(rows, 5)
    assert ops.segment_mean_max(no_grad, offsets).grad_fn is None
    for mean in (False, True):  # sum, mean, amax and mean_max: in their own opcheck tests
        torch.library.opcheck(ops.segment_gather, (per_set.double().requires_grad_(), offsets, rows, mean))


def test_pooling_mean_max_runs_the_fused_op_with_the_same_numbers():
    torch.manual_seed(0)
    offsets = make_offsets([4, 0, 9, 1])
    values = torch.randn(14, 6, requires_grad=True)
    fused = Pooling(("mean", "max"))
    parts = (Pooling("mean"), Pooling("max"))
    ours = fused(values, offsets)
    theirs = torch.cat([p(values, offsets) for p in parts], dim=1)
    assert torch.equal(ours, theirs)
    upstream = torch.randn(ours.shape)
    assert torch.equal(*(torch.autograd.grad(out, values, upstream)[0] for out in (ours, theirs)))
    compiled = torch.compile(fused, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(values, offsets), ours)
    assert torch.equal(torch.jit.script(fused)(values, offsets), ours)


# ----------------------------------------------------------------------------------------------
# segment_softmax and segment_logsumexp
# ----------------------------------------------------------------------------------------------
def softmax_by_loop(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    x = values.double()
    parts = [x[a:b].softmax(0) for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
    return torch.cat(parts) if parts else x.clone()


def logsumexp_by_loop(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    x = values.double()
    rows = [x[a:b].logsumexp(0) if b > a else x.new_zeros(x.shape[1:])
            for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
    return torch.stack(rows) if rows else x.new_zeros((0, *x.shape[1:]))


TOLERANCES = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.mark.parametrize("dtype", list(TOLERANCES))
@pytest.mark.parametrize("width", [None, 1, 7, 130])
def test_softmax_and_logsumexp_match_torch(dtype, width):
    offsets = make_offsets([3, 0, 1, 45, 0, 130, 2])
    shape = (int(offsets[-1]),) if width is None else (int(offsets[-1]), width)
    values = (torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 30).to(dtype)
    tol = TOLERANCES[dtype]
    ours = hepms.segment_softmax(values, offsets)
    assert ours.dtype == dtype and ours.shape == values.shape
    torch.testing.assert_close(ours.double(), softmax_by_loop(values, offsets), rtol=tol, atol=tol)
    lse = hepms.segment_logsumexp(values, offsets)
    assert lse.shape == (offsets.numel() - 1, *values.shape[1:])
    torch.testing.assert_close(lse.double(), logsumexp_by_loop(values, offsets), rtol=tol, atol=tol)
    # the pure-PyTorch reference (the fallback's kernels) agrees too
    torch.testing.assert_close(_reference.segment_softmax_reference(values, offsets).double(),
                               softmax_by_loop(values, offsets), rtol=tol, atol=tol)
    torch.testing.assert_close(_reference.segment_logsumexp_reference(values, offsets).double(),
                               logsumexp_by_loop(values, offsets), rtol=tol, atol=tol)


def test_softmax_is_stable_for_large_values_and_long_sets():
    offsets = make_offsets([2, 3, 200_000])
    values = torch.randn(int(offsets[-1]), 2, generator=torch.Generator().manual_seed(3))
    values[:2] += 1000.0  # exp would overflow without subtracting the maximum
    values[2:5] -= 1000.0
    values[5:] *= 20.0  # exponents over the whole float32 range, underflowing ones included
    ours = hepms.segment_softmax(values, offsets)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours.double(), softmax_by_loop(values, offsets), rtol=2e-6, atol=1e-12)
    sums = hepms.segment_sum(ours.double(), offsets)
    torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=1e-5)
    torch.testing.assert_close(hepms.segment_logsumexp(values, offsets).double(),
                               logsumexp_by_loop(values, offsets), rtol=1e-6, atol=1e-6)


def test_softmax_infinities_and_nan():
    offsets = make_offsets([3, 2, 2])
    inf = float("inf")
    values = torch.tensor([[0.0], [-inf], [1.0], [-inf], [-inf], [2.0], [float("nan")]])
    soft = hepms.segment_softmax(values, offsets)
    torch.testing.assert_close(soft[:3, 0], torch.tensor([1.0, 0.0, math.e]) / (1 + math.e))
    assert torch.isnan(soft[3:5]).all() and torch.isnan(soft[5:]).all()  # as torch.softmax
    lse = hepms.segment_logsumexp(values, offsets)
    assert lse[1, 0].item() == -inf and torch.isnan(lse[2, 0])


@pytest.mark.parametrize("name", ["softmax", "logsumexp"])
def test_softmax_gradcheck(name):
    offsets = make_offsets([3, 0, 1, 6, 0])
    values = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
    fn = getattr(hepms, f"segment_{name}")
    assert torch.autograd.gradcheck(lambda x: fn(x, offsets), (values,))
    assert torch.autograd.gradgradcheck(lambda x: fn(x, offsets), (values,))


def test_softmax_opcheck_and_fake_kernels():
    from torch._subclasses.fake_tensor import FakeTensorMode

    values = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
    offsets = make_offsets([3, 0, 1, 6])
    for op in (torch.ops.hepms.segment_softmax, torch.ops.hepms.segment_logsumexp):
        torch.library.opcheck(op, (values, offsets))
    soft = torch.ops.hepms.segment_softmax(values.detach(), offsets)
    torch.library.opcheck(torch.ops.hepms.segment_softmax_backward, (torch.randn_like(soft), soft, offsets))
    with FakeTensorMode():
        v = torch.empty(10, 4)
        o = torch.empty(4, dtype=torch.long)
        assert torch.ops.hepms.segment_softmax(v, o).shape == (10, 4)
        assert torch.ops.hepms.segment_logsumexp(v, o).shape == (3, 4)
        assert torch.ops.hepms.segment_softmax_backward(v, v, o).shape == (10, 4)


def test_softmax_argument_errors():
    offsets = make_offsets([2, 1])
    with pytest.raises(TypeError, match="segment_softmax: values must be floating"):
        hepms.segment_softmax(torch.ones(3, 2, dtype=torch.long), offsets)
    with pytest.raises(ValueError, match=r"segment_logsumexp: offsets\[-1\] must equal"):
        hepms.segment_logsumexp(torch.ones(4, 2), offsets)
    with pytest.raises(ValueError, match="segment_softmax: offsets must be non-decreasing"):
        hepms.segment_softmax(torch.ones(3, 2), torch.tensor([0, 2, 1, 3]))
    with pytest.raises(RuntimeError, match="segment_softmax_backward: the softmax output"):
        torch.ops.hepms.segment_softmax_backward(torch.ones(3, 2), torch.ones(3, 1), offsets)


def test_softmax_unvalidated_malformed_offsets_stay_in_bounds():
    values = torch.randn(5, 2)
    out = hepms.segment_softmax(values, torch.tensor([0, 7, 2, -3]), validate=False)
    assert out.shape == (5, 2)
    assert torch.isfinite(out).all()


class SoftPool(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.phi = torch.nn.Linear(3, 8)
        self.pool = Pooling(["attention", "max"], in_features=8, attention_heads=2)

    def forward(self, values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.phi(values))
        soft = hepms.segment_softmax(h, offsets)
        return torch.cat([self.pool(h, offsets), hepms.segment_logsumexp(h, offsets),
                          hepms.segment_sum(soft * h, offsets)], dim=1)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_softmax_and_attention_compile_fullgraph(backend):
    torch.manual_seed(0)
    model = SoftPool()
    offsets = make_offsets([3, 0, 5, 1, 7])
    values = torch.randn(16, 3)
    eager = model(values, offsets)
    eager.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    out = compiled(values, offsets)
    out.square().sum().backward()
    torch.testing.assert_close(out, eager)
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g)


def test_softmax_and_attention_torchscript():
    torch.manual_seed(0)
    model = SoftPool()
    offsets = make_offsets([3, 0, 5, 1, 7])
    values = torch.randn(16, 3)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(values, offsets), model(values, offsets))


FALLBACK_SCRIPT = r"""
import json, torch, hepms
assert not hepms.extension_available()
torch.manual_seed(3)
offsets = torch.tensor([0, 3, 3, 10, 11])
values = torch.randn(11, 4, dtype=torch.float64, requires_grad=True)
for fn in (hepms.segment_softmax, hepms.segment_logsumexp, hepms.segment_amax, hepms.segment_mean_max):
    assert torch.autograd.gradcheck(lambda x: fn(x, offsets), (values,))
    assert torch.autograd.gradgradcheck(lambda x: fn(x, offsets), (values,))
print(json.dumps({"softmax": hepms.segment_softmax(values, offsets).tolist(),
                  "logsumexp": hepms.segment_logsumexp(values, offsets).tolist(),
                  "amax": hepms.segment_amax(values, offsets).tolist(),
                  "mean_max": hepms.segment_mean_max(values, offsets).tolist()}))
"""


@NEEDS_EXTENSION
def test_softmax_fallback_matches_compiled():
    env = dict(os.environ, HEPMS_DISABLE_EXTENSION="1")
    env.pop("HEPMS_REQUIRE_EXTENSION", None)
    result = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    fallback = json.loads(result.stdout.strip().splitlines()[-1])
    torch.manual_seed(3)
    offsets = torch.tensor([0, 3, 3, 10, 11])
    values = torch.randn(11, 4, dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(fallback["softmax"], dtype=torch.float64),
                               hepms.segment_softmax(values, offsets))
    torch.testing.assert_close(torch.tensor(fallback["logsumexp"], dtype=torch.float64),
                               hepms.segment_logsumexp(values, offsets))
    assert torch.equal(torch.tensor(fallback["amax"], dtype=torch.float64), hepms.segment_amax(values, offsets))
    torch.testing.assert_close(torch.tensor(fallback["mean_max"], dtype=torch.float64),
                               hepms.segment_mean_max(values, offsets))


# ----------------------------------------------------------------------------------------------
# Attention pooling
# ----------------------------------------------------------------------------------------------
def test_attention_pooling_is_a_softmax_weighted_sum_per_head():
    torch.manual_seed(0)
    pool = AttentionPooling(6, heads=2).double()
    offsets = make_offsets([4, 0, 1, 3])
    values = torch.randn(8, 6, dtype=torch.float64)
    out = pool(values, offsets)
    assert out.shape == (4, 6)
    assert torch.equal(out[1], torch.zeros(6, dtype=torch.float64))  # empty set
    keys = pool.key(values).view(8, 2, 3)
    vals = pool.value(values).view(8, 2, 3)
    for b, (lo, hi) in enumerate(zip(offsets[:-1].tolist(), offsets[1:].tolist())):
        if hi == lo:
            continue
        scores = (keys[lo:hi] * pool.query).sum(-1) / math.sqrt(3)  # [rows, heads]
        weights = scores.softmax(0)
        expected = (weights.unsqueeze(-1) * vals[lo:hi]).sum(0).reshape(6)
        torch.testing.assert_close(out[b], expected)
    # permutation invariance within a set
    perm = torch.tensor([3, 1, 0, 2, 4, 7, 5, 6])
    torch.testing.assert_close(pool(values[perm], offsets), out)


def test_attention_pooling_arguments():
    with pytest.raises(ValueError, match="multiple of heads"):
        AttentionPooling(6, heads=4)
    with pytest.raises(ValueError, match="needs in_features"):
        Pooling(["attention"])
    ds = DeepSets(4, phi=(8,), blocks=1, block_sizes=((8,), (8,)), pool=("attention", "mean"), rho=(2,))
    assert ds(torch.randn(5, 4), make_offsets([2, 3])).shape == (2, 2)


def test_attention_pooling_from_config():
    from hepms.config import ConfigError, validate
    from hepms.nn import TauID

    cfg = validate({"model": {"tau": {"pool": ["attention", "max"]}}})
    tau = TauID(constituent_features=5, jet_features=3, **cfg["model"]["tau"])
    assert any(isinstance(m, AttentionPooling) for m in tau.modules())
    with pytest.raises(ConfigError, match=r"model.tau.pool: \['softmax'\]"):
        validate({"model": {"tau": {"pool": ["softmax"]}}})


# ----------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)
# ----------------------------------------------------------------------------------------------
@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("width", [1, 16, 33, 130])
def test_cuda_softmax_and_logsumexp_match_cpu(dtype, width):
    counts = torch.randint(0, 200, (300,), generator=torch.Generator().manual_seed(width))
    counts[::7] = 0
    counts[5] = 100_000  # a long set: the compensated / cascade sums
    offsets = make_offsets(counts)
    values = torch.randn(int(offsets[-1]), width, dtype=torch.float64).to(dtype)
    tol = TOLERANCES[dtype]
    for name in ("softmax", "logsumexp", "sum"):
        fn = getattr(hepms, f"segment_{name}")
        x_cpu = values.clone().requires_grad_()
        x_gpu = values.cuda().requires_grad_()
        out_cpu, out_gpu = fn(x_cpu, offsets), fn(x_gpu, offsets.cuda())
        torch.testing.assert_close(out_gpu.cpu().double(), out_cpu.double(), rtol=tol * 10, atol=tol * 10)
        upstream = torch.randn(out_cpu.shape, dtype=torch.float64).to(dtype)
        out_cpu.backward(upstream)
        out_gpu.backward(upstream.cuda())
        torch.testing.assert_close(x_gpu.grad.cpu().double(), x_cpu.grad.double(), rtol=tol * 10, atol=tol * 10)


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_cuda_mean_max_matches_cpu(dtype):
    counts = torch.randint(0, 50, (200,), generator=torch.Generator().manual_seed(1))
    counts[::9] = 0
    offsets = make_offsets(counts)
    values = torch.randn(int(offsets[-1]), 33, dtype=torch.float64).to(dtype)
    x_cpu = values.clone().requires_grad_()
    x_gpu = values.cuda().requires_grad_()
    out_cpu, out_gpu = hepms.segment_mean_max(x_cpu, offsets), hepms.segment_mean_max(x_gpu, offsets.cuda())
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, rtol=tol, atol=tol)
    upstream = torch.randn(out_cpu.shape, dtype=torch.float64).to(dtype)
    out_cpu.backward(upstream)
    out_gpu.backward(upstream.cuda())
    torch.testing.assert_close(x_gpu.grad.cpu(), x_cpu.grad, rtol=tol, atol=tol)


@CUDA
def test_cuda_softmax_gradcheck():
    offsets = make_offsets([3, 0, 1, 6, 0]).cuda()
    values = torch.randn(10, 3, dtype=torch.float64, device="cuda", requires_grad=True)
    for fn in (hepms.segment_softmax, hepms.segment_logsumexp):
        assert torch.autograd.gradcheck(lambda x: fn(x, offsets), (values,))
