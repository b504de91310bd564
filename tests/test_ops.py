"""Segment pooling ops: agreement with PyTorch references, gradients, compile/TorchScript, errors."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hepms
from hepms import _reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (rtol, atol) for sums/means against a float64 reference of the same (rounded) inputs: 16-bit
# outputs are rounded once from a float32 accumulator, so one output ulp dominates.
TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float64: (1e-12, 1e-12),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1e-2, 1e-2),
}
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
NEEDS_EXTENSION = pytest.mark.skipif(not hepms.extension_available(), reason="compiled extension not in use")


def make_offsets(counts, dtype=torch.long, device="cpu") -> torch.Tensor:
    counts = torch.as_tensor(counts, dtype=torch.long)
    offsets = torch.zeros(counts.numel() + 1, dtype=torch.long)
    offsets[1:] = counts.cumsum(0)
    return offsets.to(dtype=dtype, device=device)


def torch_reference(values: torch.Tensor, offsets: torch.Tensor, reduce: str) -> torch.Tensor:
    """torch.segment_reduce in float64, with empty segments set to 0 (our convention)."""
    offsets = offsets.long().cpu()
    data = values.detach().double().cpu()
    if offsets.numel() == 1:
        return data.new_zeros((0, *data.shape[1:]))
    out = torch.segment_reduce(data, reduce, offsets=offsets, axis=0, unsafe=False)
    empty = (offsets[1:] == offsets[:-1]).view(-1, *([1] * (data.dim() - 1)))
    return torch.where(empty, torch.zeros_like(out), out)


def assert_pools_match(values: torch.Tensor, offsets: torch.Tensor) -> None:
    rtol, atol = TOLERANCES[values.dtype]
    scale = max(1.0, float(values.detach().double().abs().max())) if values.numel() else 1.0
    for name in ("sum", "mean"):
        ours = getattr(hepms, f"segment_{name}")(values, offsets)
        assert ours.dtype == values.dtype
        assert ours.shape == (offsets.numel() - 1, *values.shape[1:])
        # sums of up to ~60 elements: allow the tolerance to grow with the magnitude of the sum
        expected = torch_reference(values, offsets, name)
        torch.testing.assert_close(
            ours.double().cpu(), expected, rtol=rtol, atol=atol * scale * 60
        )
    maxima, argmax = hepms.segment_max(values, offsets)
    expected = torch_reference(values, offsets, "max")
    # max is exact: it returns one of the inputs
    assert torch.equal(maxima.double().cpu(), expected)
    # arg-max points at a row holding the maximum, the first such row
    ref_max, ref_arg = _reference.segment_max_reference(values.cpu(), offsets.long().cpu())
    assert torch.equal(argmax.cpu(), ref_arg)
    nonempty = argmax >= 0
    if values.numel():
        picked = values.gather(0, argmax.clamp_min(0))
        assert torch.equal(picked[nonempty], maxima[nonempty])


# ----------------------------------------------------------------------------------------------
# Forward agreement
# ----------------------------------------------------------------------------------------------
def test_extension_is_used_when_required():
    if os.environ.get("HEPMS_REQUIRE_EXTENSION"):
        assert hepms.extension_available()
        assert torch.ops.hepms.segment_sum.default._schema.name == "hepms::segment_sum"


def test_docstring_example():
    values = torch.tensor([[1.0], [2.0], [5.0]])
    offsets = torch.tensor([0, 2, 2, 3])
    assert hepms.segment_sum(values, offsets).flatten().tolist() == [3.0, 0.0, 5.0]
    assert hepms.segment_mean(values, offsets).flatten().tolist() == [1.5, 0.0, 5.0]
    out, arg = hepms.segment_max(values, offsets)
    assert out.flatten().tolist() == [2.0, 0.0, 5.0]
    assert arg.flatten().tolist() == [1, -1, 2]


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(0, 60), min_size=0, max_size=30),
    width=st.sampled_from([1, 2, 3, 16, 33, 64, 130]),
    dtype=st.sampled_from(DTYPES),
    one_dim=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_torch_segment_reduce(counts, width, dtype, one_dim, seed):
    generator = torch.Generator().manual_seed(seed)
    offsets = make_offsets(counts)
    n = int(offsets[-1])
    shape = (n,) if one_dim else (n, width)
    values = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
    assert_pools_match(values, offsets)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_with_empty_long_and_tied_segments(dtype):
    counts = [0, 1, 5, 0, 0, 300, 2, 1000, 0]
    offsets = make_offsets(counts)
    values = torch.randn(int(offsets[-1]), 24, dtype=torch.float64).to(dtype)
    values[6:11] = values[6]  # a whole segment of ties
    assert_pools_match(values, offsets)


def test_matches_index_add_and_scatter_reduce():
    counts = torch.randint(0, 50, (400,), generator=torch.Generator().manual_seed(1))
    offsets = make_offsets(counts)
    values = torch.randn(int(offsets[-1]), 48)
    ids = torch.repeat_interleave(torch.arange(400), counts)
    expected_sum = torch.zeros(400, 48).index_add_(0, ids, values)
    torch.testing.assert_close(hepms.segment_sum(values, offsets), expected_sum)
    index = ids[:, None].expand_as(values)
    expected_max = torch.full((400, 48), float("-inf")).scatter_reduce(0, index, values, "amax")
    expected_max[counts == 0] = 0
    assert torch.equal(hepms.segment_max(values, offsets)[0], expected_max)


def test_zero_segments_and_zero_rows():
    values = torch.randn(0, 5)
    out = hepms.segment_sum(values, torch.zeros(1, dtype=torch.long))
    assert out.shape == (0, 5)
    maxima, argmax = hepms.segment_max(values, torch.zeros(1, dtype=torch.long))
    assert maxima.shape == (0, 5) and argmax.shape == (0, 5)
    # segments that exist but are all empty
    offsets = torch.zeros(4, dtype=torch.long)
    assert torch.equal(hepms.segment_mean(values, offsets), torch.zeros(3, 5))
    maxima, argmax = hepms.segment_max(values, offsets)
    assert torch.equal(maxima, torch.zeros(3, 5)) and torch.equal(argmax, torch.full((3, 5), -1))


def test_int32_offsets_are_accepted():
    offsets64 = make_offsets([3, 0, 4])
    values = torch.randn(7, 3)
    for fn in (hepms.segment_sum, hepms.segment_mean):
        assert torch.equal(fn(values, offsets64.int()), fn(values, offsets64))
    assert torch.equal(hepms.segment_max(values, offsets64.int())[1], hepms.segment_max(values, offsets64)[1])


def test_non_contiguous_values():
    offsets = make_offsets([4, 0, 9, 1])
    base = torch.randn(14, 20)
    strided = base[:, ::2]  # every other feature
    transposed = torch.randn(10, 14).t()  # column-major
    for values in (strided, transposed):
        assert not values.is_contiguous()
        assert_pools_match(values, offsets)
        assert torch.equal(hepms.segment_sum(values, offsets), hepms.segment_sum(values.contiguous(), offsets))


def test_many_threads_few_segments_many_features():
    # few segments, wide rows: the CPU kernel splits over feature blocks as well
    offsets = make_offsets([5000, 7000])
    values = torch.randn(12000, 1000, dtype=torch.float64)
    assert_pools_match(values, offsets)


def test_nan_propagates_through_max_and_sum():
    values = torch.tensor([[1.0], [float("nan")], [3.0], [float("nan")]])
    offsets = make_offsets([4])
    maxima, argmax = hepms.segment_max(values, offsets)
    assert torch.isnan(maxima).all() and argmax.item() == 1  # the first NaN
    assert torch.isnan(hepms.segment_sum(values, offsets)).all()


# ----------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sum", "mean", "max"])
def test_gradcheck(name):
    offsets = make_offsets([3, 0, 1, 5, 0])
    values = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)

    def pooled(x):
        out = getattr(hepms, f"segment_{name}")(x, offsets)
        return out[0] if isinstance(out, tuple) else out

    assert torch.autograd.gradcheck(pooled, (values,))
    assert torch.autograd.gradgradcheck(pooled, (values,))


def test_empty_segments_get_zero_gradient_and_rows_their_segment_gradient():
    offsets = make_offsets([2, 0, 3])
    values = torch.randn(5, 2, requires_grad=True)
    upstream = torch.tensor([[1.0, 2.0], [7.0, 7.0], [3.0, 4.0]])
    hepms.segment_sum(values, offsets).backward(upstream)
    assert torch.equal(values.grad, torch.tensor([[1.0, 2.0]] * 2 + [[3.0, 4.0]] * 3))
    values.grad = None
    hepms.segment_mean(values, offsets).backward(upstream)
    torch.testing.assert_close(values.grad, torch.tensor([[0.5, 1.0]] * 2 + [[1.0, 4 / 3]] * 3))


def test_max_ties_route_whole_gradient_to_first_row():
    values = torch.ones(4, 3, requires_grad=True)
    offsets = make_offsets([4])
    maxima, argmax = hepms.segment_max(values, offsets)
    assert argmax.tolist() == [[0, 0, 0]]
    maxima.backward(torch.tensor([[2.0, -3.0, 5.0]]))
    expected = torch.zeros(4, 3)
    expected[0] = torch.tensor([2.0, -3.0, 5.0])
    # unlike torch.segment_reduce, the gradient is not split between tied rows, whatever its sign
    assert torch.equal(values.grad, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_backward_in_low_precision_matches_float64(dtype):
    offsets = make_offsets([7, 0, 30, 2])
    # Both runs see the same (rounded) values: otherwise two rows that round to one bfloat16
    # value tie in the low-precision max but not in float64, and max's gradient goes to another
    # row (this test failed about one run in ten that way).
    values = torch.randn(39, 16, dtype=torch.float64).to(dtype).double()
    upstream = torch.randn(4, 16, dtype=torch.float64)
    for name in ("sum", "mean", "max"):
        results = []
        for dt in (dtype, torch.float64):
            x = values.to(dt).detach().clone().requires_grad_()
            out = getattr(hepms, f"segment_{name}")(x, offsets)
            out = out[0] if isinstance(out, tuple) else out
            out.backward(upstream.to(dt))
            results.append(x.grad.double())
        rtol, atol = TOLERANCES[dtype]
        torch.testing.assert_close(results[0], results[1], rtol=rtol, atol=atol * 10)


# ----------------------------------------------------------------------------------------------
# Under torch.autocast (the trainer's precision: bfloat16)
# ----------------------------------------------------------------------------------------------
def _pool_op(name: str, values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    if name == "gather":  # one row per set -> one row per element
        return torch.ops.hepms.segment_gather(values, offsets, int(offsets[-1]), False)
    out = getattr(hepms, f"segment_{name}")(values, offsets)
    return out[0] if name == "max" else out


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("name", ["sum", "mean", "max", "amax", "softmax", "logsumexp", "gather"])
def test_ops_under_bfloat16_autocast_match_float32_and_pass_gradients(device, name):
    # Autocast has no rule for our ops, by choice: they take the dtype of their input (the
    # bfloat16 output of an autocast Linear), accumulate in float32 and round once to bfloat16;
    # casting their inputs to float32 instead would cost a copy per call and make everything
    # after them float32 (benchmarks/train.md, "bfloat16 mixed precision").
    torch.manual_seed(0)
    offsets = make_offsets([7, 0, 30, 2, 1]).to(device)
    x = torch.randn(5 if name == "gather" else 40, 6, device=device, requires_grad=True)
    linear = torch.nn.Linear(6, 16).to(device)
    with torch.autocast(device, dtype=torch.bfloat16):
        h = linear(x)
        h.retain_grad()
        out = _pool_op(name, h, offsets)
    assert h.dtype == out.dtype == torch.bfloat16
    # The op on the same (rounded) bfloat16 inputs in float64: one bfloat16 rounding apart.
    h64 = h.detach().double().requires_grad_()
    reference = _pool_op(name, h64, offsets)
    rtol, atol = TOLERANCES[torch.bfloat16]
    torch.testing.assert_close(out.double(), reference, rtol=rtol, atol=atol)
    # The float32 model without autocast: within the bfloat16 rounding of the Linear's output.
    torch.testing.assert_close(out.float(), _pool_op(name, linear(x), offsets), rtol=5e-2, atol=5e-2)
    # Gradients flow through the op, the bfloat16 Linear and back to the float32 weights.
    upstream = torch.randn(reference.shape, dtype=torch.float64, device=device)
    (out.float() * upstream.float()).sum().backward()
    reference.backward(upstream)
    assert h.grad is not None and h.grad.dtype == torch.bfloat16
    torch.testing.assert_close(h.grad.double(), h64.grad, rtol=rtol, atol=atol * 10)
    for grad in (x.grad, linear.weight.grad, linear.bias.grad):
        assert grad is not None and grad.dtype == torch.float32
        assert bool(torch.isfinite(grad).all()) and bool(grad.abs().sum() > 0)


# ----------------------------------------------------------------------------------------------
# torch.compile and TorchScript
# ----------------------------------------------------------------------------------------------
class Pool(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.phi = torch.nn.Linear(3, 8)
        self.rho = torch.nn.Linear(24, 1)

    def forward(self, values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.phi(values))
        pooled = torch.cat(
            [
                hepms.segment_sum(h, offsets),
                hepms.segment_mean(h, offsets),
                hepms.segment_max(h, offsets)[0],
            ],
            dim=1,
        )
        return self.rho(pooled)


def _pool_inputs():
    offsets = make_offsets([3, 0, 5, 1, 7])
    values = torch.randn(16, 3)
    return values, offsets


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph_matches_eager(backend):
    torch.manual_seed(0)
    model = Pool()
    values, offsets = _pool_inputs()
    eager = model(values, offsets)
    eager.sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    out = compiled(values, offsets)
    out.sum().backward()
    torch.testing.assert_close(out, eager)
    for p, g in zip(model.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g)


def test_fake_kernels_give_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        values = torch.empty(10, 4)
        offsets = torch.empty(4, dtype=torch.long)
        assert torch.ops.hepms.segment_sum(values, offsets).shape == (3, 4)
        out, arg = torch.ops.hepms.segment_max(values, offsets)
        assert out.shape == (3, 4) and arg.dtype == torch.long
        assert torch.ops.hepms.segment_gather(out, offsets, 10, True).shape == (10, 4)
        assert torch.ops.hepms.segment_max_backward(out, arg, offsets, 10).shape == (10, 4)


def test_opcheck():
    values = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    offsets = make_offsets([3, 0, 1, 5])
    for op in (torch.ops.hepms.segment_sum, torch.ops.hepms.segment_mean, torch.ops.hepms.segment_max):
        torch.library.opcheck(op, (values, offsets))


def test_torchscript_module_matches_eager():
    torch.manual_seed(0)
    model = Pool()
    values, offsets = _pool_inputs()
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(values, offsets), model(values, offsets))
    # int32 offsets are converted inside the scripted function too
    torch.testing.assert_close(scripted(values, offsets.int()), model(values, offsets))
    out = scripted(values, offsets)
    out.sum().backward()
    assert model.phi.weight.grad is not None and model.phi.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------
# Bad input: one test each, every message names the problem
# ----------------------------------------------------------------------------------------------
GOOD_VALUES = torch.randn(5, 2)
GOOD_OFFSETS = torch.tensor([0, 2, 5])


@pytest.mark.parametrize("fn", [hepms.segment_sum, hepms.segment_mean, hepms.segment_max])
def test_values_must_be_a_tensor(fn):
    with pytest.raises(TypeError, match="values must be a torch.Tensor"):
        fn([[1.0]], GOOD_OFFSETS)


def test_offsets_must_be_a_tensor():
    with pytest.raises(TypeError, match="offsets must be a torch.Tensor"):
        hepms.segment_sum(GOOD_VALUES, [0, 2, 5])


def test_values_must_be_floating():
    with pytest.raises(TypeError, match="values must be floating point.*torch.int64"):
        hepms.segment_sum(torch.ones(5, 2, dtype=torch.long), GOOD_OFFSETS)


def test_values_must_be_1d_or_2d():
    with pytest.raises(ValueError, match=r"1-D \[N\] or 2-D \[N, F\].*\(5, 2, 1\)"):
        hepms.segment_max(torch.randn(5, 2, 1), GOOD_OFFSETS)


def test_offsets_must_be_integer():
    with pytest.raises(TypeError, match="offsets must be an integer tensor, got torch.float32"):
        hepms.segment_mean(GOOD_VALUES, GOOD_OFFSETS.float())


def test_offsets_must_be_1d():
    with pytest.raises(ValueError, match=r"offsets must be 1-D.*\(1, 3\)"):
        hepms.segment_sum(GOOD_VALUES, GOOD_OFFSETS[None])


def test_offsets_must_not_be_empty():
    with pytest.raises(ValueError, match="at least one entry"):
        hepms.segment_sum(GOOD_VALUES, torch.zeros(0, dtype=torch.long))


def test_offsets_must_start_at_zero():
    with pytest.raises(ValueError, match=r"offsets\[0\] must be 0, got 1"):
        hepms.segment_sum(GOOD_VALUES, torch.tensor([1, 2, 5]))


def test_offsets_must_be_non_decreasing():
    with pytest.raises(ValueError, match=r"non-decreasing.*offsets\[2\] = 1 < offsets\[1\] = 3"):
        hepms.segment_sum(GOOD_VALUES, torch.tensor([0, 3, 1, 5]))


def test_offsets_must_end_at_number_of_rows():
    with pytest.raises(ValueError, match=r"offsets\[-1\] must equal the number of rows of values \(5\), got 4"):
        hepms.segment_max(GOOD_VALUES, torch.tensor([0, 2, 4]))


def test_offsets_must_be_on_the_values_device():
    with pytest.raises(ValueError, match="offsets are on cpu but values are on meta"):
        hepms.segment_sum(torch.empty(5, 2, device="meta"), GOOD_OFFSETS)


def test_validation_can_be_switched_off_and_kernels_stay_in_bounds():
    bad = torch.tensor([0, 9, -4, 2])  # decreasing, out of range, wrong end
    for fn in (hepms.segment_sum, hepms.segment_mean):
        out = fn(GOOD_VALUES, bad, validate=False)
        assert out.shape == (3, 2)
    with hepms.validation(False):
        maxima, argmax = hepms.segment_max(GOOD_VALUES, bad)
    assert ((argmax >= -1) & (argmax < 5)).all()
    values = GOOD_VALUES.clone().requires_grad_()
    out = hepms.segment_sum(values, bad, validate=False)
    out.sum().backward()  # backward with malformed offsets: finite, no crash
    assert torch.isfinite(values.grad).all()
    # the process-wide switch is restored after the block
    with pytest.raises(ValueError):
        hepms.segment_sum(GOOD_VALUES, bad)


BAD_OFFSETS = torch.tensor([0, 4, 2, 5])  # decreasing


class ExplicitlyValidated(torch.nn.Module):
    def forward(self, values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return (hepms.segment_sum(values, offsets, validate=True)
                + hepms.segment_amax(values, offsets, validate=True)
                + hepms.segment_softmax(values, offsets, validate=True)[:3])


@pytest.mark.parametrize("wrap", ["compile", "script"])
def test_explicit_validate_works_under_compile_and_torchscript(wrap):
    """validate=True is not silently dropped: under torch.compile (fullgraph) and in TorchScript
    it runs as the op hepms::check_offsets and raises the eager error."""
    model = ExplicitlyValidated()
    if wrap == "compile":
        wrapped = torch.compile(model, fullgraph=True, backend="aot_eager")
        error = ValueError
    else:
        wrapped = torch.jit.script(model)
        error = RuntimeError  # TorchScript's interpreter error, quoting the ValueError
    torch.testing.assert_close(wrapped(GOOD_VALUES, torch.tensor([0, 2, 2, 5])),
                               model(GOOD_VALUES, torch.tensor([0, 2, 2, 5])))
    with pytest.raises(error, match=r"segment_\w+: offsets must be non-decreasing"):
        wrapped(GOOD_VALUES, BAD_OFFSETS)
    with pytest.raises(error, match=r"offsets\[-1\] must equal the number of rows of values \(5\)"):
        wrapped(GOOD_VALUES, torch.tensor([0, 2, 2, 4]))
    if wrap == "script":  # and it survives saving and loading the TorchScript archive
        import io
        buffer = io.BytesIO()
        torch.jit.save(wrapped, buffer)
        buffer.seek(0)
        with pytest.raises(RuntimeError, match="non-decreasing"):
            torch.jit.load(buffer)(GOOD_VALUES, BAD_OFFSETS)


def test_validation_block_is_local_to_its_thread():
    """dask workers run tasks in threads: one thread's `with hepms.validation(False)` must not
    switch the checks off (or, leaving its block, back on) in another."""
    import threading

    inside, checked = threading.Event(), threading.Event()
    results: dict[str, object] = {}

    def unchecked() -> None:
        with hepms.validation(False):
            inside.set()
            checked.wait(timeout=60)  # stay inside the block while the other thread checks
            results["unchecked"] = hepms.segment_sum(GOOD_VALUES, BAD_OFFSETS).shape
            results["enabled_in_block"] = hepms.ops.validation_enabled()

    def checking() -> None:
        inside.wait(timeout=60)
        try:
            hepms.segment_sum(GOOD_VALUES, BAD_OFFSETS)
            results["checking"] = "no error"
        except ValueError as error:
            results["checking"] = str(error)
        checked.set()

    threads = [threading.Thread(target=unchecked), threading.Thread(target=checking)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert "non-decreasing" in results["checking"]
    assert results["unchecked"] == (3, 2) and results["enabled_in_block"] is False
    # set_validation is the process-wide default: other threads see it
    previous = hepms.ops.validation_enabled()
    hepms.set_validation(False)
    try:
        seen = []
        thread = threading.Thread(target=lambda: seen.append(hepms.ops.validation_enabled()))
        thread.start()
        thread.join()
        assert seen == [False]
    finally:
        hepms.set_validation(previous)


def test_raw_op_rejects_int32_offsets_with_a_clear_error():
    with pytest.raises(RuntimeError, match="offsets must be int64"):
        torch.ops.hepms.segment_sum(GOOD_VALUES, GOOD_OFFSETS.int())


@NEEDS_EXTENSION
def test_raw_backward_ops_check_their_arguments():
    """The backward ops are public torch ops too: bad arguments get a message, not a crash."""
    grad = torch.randn(2, 2)
    argmax = torch.zeros(2, 2, dtype=torch.long)
    with pytest.raises(RuntimeError, match="argmax must be int64 with the shape of grad"):
        torch.ops.hepms.segment_max_backward(grad, argmax.int(), GOOD_OFFSETS, 5)
    with pytest.raises(RuntimeError, match="argmax must be int64 with the shape of grad"):
        torch.ops.hepms.segment_max_backward(grad, argmax[:1], GOOD_OFFSETS, 5)
    with pytest.raises(RuntimeError, match="num_rows must be >= 0"):
        torch.ops.hepms.segment_max_backward(grad, argmax, GOOD_OFFSETS, -1)
    with pytest.raises(RuntimeError, match="grad has 3 rows but offsets describe 2 segments"):
        torch.ops.hepms.segment_max_backward(torch.randn(3, 2), torch.zeros(3, 2, dtype=torch.long), GOOD_OFFSETS, 5)
    with pytest.raises(RuntimeError, match="src has 3 rows but offsets describe 2 segments"):
        torch.ops.hepms.segment_gather(torch.randn(3, 2), GOOD_OFFSETS, 5, False)
    with pytest.raises(RuntimeError, match="segment_gather: num_rows must be >= 0"):
        torch.ops.hepms.segment_gather(grad, GOOD_OFFSETS, -2, True)
    # and the good call still works: each row gets its segment's value
    out = torch.ops.hepms.segment_gather(grad, GOOD_OFFSETS, 5, False)
    assert torch.equal(out, grad[torch.tensor([0, 0, 1, 1, 1])])


# ----------------------------------------------------------------------------------------------
# CPU kernel variants: baseline x86-64 and AVX2 + FMA + F16C, chosen at run time
# ----------------------------------------------------------------------------------------------
def _avx2_supported() -> bool:
    if not hepms.extension_available():
        return False
    from hepms import _C

    return bool(_C.cpu_supports_avx2())


def _variant_inputs(dtype: torch.dtype, extremes: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Widths that are and are not multiples of the vector length and of the 128-feature block,
    empty / one-row / long segments and ties; with ``extremes``: NaN, +-inf and float16 extremes
    (subnormals, 65504)."""
    generator = torch.Generator().manual_seed(11)
    counts = [0, 1, 7, 0, 300, 2, 1, 65, 0]
    offsets = make_offsets(counts)
    n = int(offsets[-1])
    values = (torch.randn(n, 133, generator=generator, dtype=torch.float64) * 40).to(dtype)
    values[1:8, 3] = values[1, 3]  # ties
    if not extremes:
        return values, offsets
    values[10, :9] = float("nan")
    values[20, 9:17] = float("inf")
    values[21, 12:20] = float("-inf")
    if dtype == torch.float16:
        values[30:300, 40] = 65504.0  # the largest float16: the sum overflows to inf identically
        values[30:40, 41] = 6e-8  # subnormal
    return values, offsets


@NEEDS_EXTENSION
@pytest.mark.skipif(not _avx2_supported(), reason="this CPU lacks AVX2 + FMA + F16C")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.usefixtures("restore_cpu_capability")
def test_cpu_variants_give_identical_results(dtype):
    values, offsets = _variant_inputs(dtype, extremes=True)
    results = {}
    for variant in ("baseline", "avx2"):
        hepms.ops.set_cpu_capability(variant)
        assert hepms.ops.cpu_capability() == variant
        assert_pools_match(*_variant_inputs(dtype, extremes=False))  # each variant is right on its own
        maxima, argmax = hepms.segment_max(values, offsets)
        results[variant] = (hepms.segment_sum(values, offsets), hepms.segment_mean(values, offsets), maxima, argmax)
    # Same accumulation order and exact conversions: the variants agree bit for bit, NaN included.
    for ours, theirs in zip(results["avx2"], results["baseline"]):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True)


@NEEDS_EXTENSION
@pytest.mark.usefixtures("restore_cpu_capability")
def test_set_cpu_capability_names_the_choices():
    with pytest.raises(ValueError, match="'auto', 'baseline' or 'avx2'"):
        hepms.ops.set_cpu_capability("avx512")
    hepms.ops.set_cpu_capability("baseline")
    assert hepms.ops.cpu_capability() == "baseline"
    hepms.ops.set_cpu_capability("auto")
    assert hepms.ops.cpu_capability() == ("avx2" if _avx2_supported() else "baseline")
    if not _avx2_supported():
        with pytest.raises(ValueError, match="lacks AVX2"):
            hepms.ops.set_cpu_capability("avx2")


@NEEDS_EXTENSION
def test_cpu_capability_environment_variable():
    script = "import hepms; print(hepms.ops.cpu_capability())"
    env = dict(os.environ, HEPMS_CPU_CAPABILITY="baseline")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "baseline"
    env["HEPMS_CPU_CAPABILITY"] = "fastest"
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "HEPMS_CPU_CAPABILITY='fastest'" in result.stderr and "'auto', 'baseline' or 'avx2'" in result.stderr


# ----------------------------------------------------------------------------------------------
# The pure-PyTorch fallback (extension disabled) gives the same results
# ----------------------------------------------------------------------------------------------
FALLBACK_SCRIPT = r"""
import json, torch, hepms
assert not hepms.extension_available()
torch.manual_seed(3)
counts = torch.tensor([3, 0, 7, 1, 0, 12])
offsets = torch.zeros(7, dtype=torch.long); offsets[1:] = counts.cumsum(0)
values = torch.randn(23, 5, dtype=torch.float64, requires_grad=True)
# amax, mean_max and gather: the Python autograd that the extension replaces with C++ nodes
for name in ("sum", "mean", "max", "amax", "mean_max"):
    f = lambda x: (lambda o: o[0] if isinstance(o, tuple) else o)(getattr(hepms, f"segment_{name}")(x, offsets))
    assert torch.autograd.gradcheck(f, (values,)), name
    assert torch.autograd.gradgradcheck(f, (values,)), name
per_set = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
for mean in (False, True):
    g = lambda s: torch.ops.hepms.segment_gather(s, offsets, 23, mean)
    assert torch.autograd.gradcheck(g, (per_set,)) and torch.autograd.gradgradcheck(g, (per_set,)), mean
maxima, argmax = hepms.segment_max(values, offsets)
print(json.dumps({
    "sum": hepms.segment_sum(values, offsets).tolist(),
    "mean": hepms.segment_mean(values, offsets).tolist(),
    "max": maxima.tolist(),
    "argmax": argmax.tolist(),
}))
"""


def test_fallback_without_extension_matches_compiled_ops():
    import json

    env = dict(os.environ, HEPMS_DISABLE_EXTENSION="1")
    env.pop("HEPMS_REQUIRE_EXTENSION", None)
    result = subprocess.run(
        [sys.executable, "-c", FALLBACK_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    fallback = json.loads(result.stdout.strip().splitlines()[-1])
    torch.manual_seed(3)
    offsets = make_offsets([3, 0, 7, 1, 0, 12])
    values = torch.randn(23, 5, dtype=torch.float64)
    maxima, argmax = hepms.segment_max(values, offsets)
    torch.testing.assert_close(torch.tensor(fallback["sum"], dtype=torch.float64), hepms.segment_sum(values, offsets))
    torch.testing.assert_close(torch.tensor(fallback["mean"], dtype=torch.float64), hepms.segment_mean(values, offsets))
    assert torch.equal(torch.tensor(fallback["max"], dtype=torch.float64), maxima)
    assert torch.equal(torch.tensor(fallback["argmax"]), argmax)


# ----------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)
# ----------------------------------------------------------------------------------------------
@CUDA
def test_cuda_extension_was_built_with_cuda():
    from hepms import _C

    assert _C.with_cuda


@CUDA
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [1, 3, 16, 32, 64, 130])
def test_cuda_matches_cpu(dtype, width):
    counts = torch.randint(0, 200, (300,), generator=torch.Generator().manual_seed(width))
    counts[::5] = 0
    offsets = make_offsets(counts)
    values = torch.randn(int(offsets[-1]), width, dtype=torch.float64).to(dtype)
    values[offsets[2] : offsets[3]] = 1.0  # ties
    assert_pools_match(values.cuda(), offsets.cuda())
    upstream = torch.randn(300, width, dtype=torch.float64).to(dtype)
    for name in ("sum", "mean", "max"):
        grads = []
        for device in ("cpu", "cuda"):
            x = values.to(device).requires_grad_()
            out = getattr(hepms, f"segment_{name}")(x, offsets.to(device))
            out = out[0] if isinstance(out, tuple) else out
            out.backward(upstream.to(device))
            grads.append(x.grad.cpu().double())
        rtol, atol = TOLERANCES[dtype]
        torch.testing.assert_close(grads[1], grads[0], rtol=rtol, atol=atol)


@CUDA
def test_cuda_gradcheck_and_determinism():
    offsets = make_offsets([3, 0, 1, 5, 0, 40]).cuda()
    values = torch.randn(49, 7, dtype=torch.float64, device="cuda", requires_grad=True)
    for name in ("sum", "mean", "max"):
        def pooled(x, name=name):
            out = getattr(hepms, f"segment_{name}")(x, offsets)
            return out[0] if isinstance(out, tuple) else out

        assert torch.autograd.gradcheck(pooled, (values,))
        assert torch.equal(pooled(values), pooled(values))


@CUDA
def test_cuda_device_mismatch_is_reported():
    with pytest.raises(ValueError, match="offsets are on cpu but values are on cuda"):
        hepms.segment_sum(torch.randn(5, 2, device="cuda"), GOOD_OFFSETS)


@CUDA
def test_cuda_torch_compile():
    torch.manual_seed(0)
    model = Pool().cuda()
    values, offsets = _pool_inputs()
    values, offsets = values.cuda(), offsets.cuda()
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(values, offsets), model(values, offsets))


# ----------------------------------------------------------------------------------------------
# Convenience inputs: a Jagged, numpy offsets, counts
# ----------------------------------------------------------------------------------------------
def test_segment_ops_accept_a_jagged_and_numpy_offsets():
    import numpy as np

    torch.manual_seed(5)
    values = torch.randn(6, 3)
    offsets = make_offsets([2, 0, 4])
    jagged = hepms.Jagged(values, offsets)
    assert torch.equal(hepms.segment_sum(jagged), hepms.segment_sum(values, offsets))
    assert torch.equal(hepms.segment_mean(jagged), hepms.segment_mean(values, offsets))
    for got, want in zip(hepms.segment_max(jagged), hepms.segment_max(values, offsets)):
        assert torch.equal(got, want)
    for np_offsets in (offsets.numpy(), offsets.numpy().astype(np.int32), offsets.numpy().astype(np.uint32)):
        assert torch.equal(hepms.segment_sum(values, np_offsets), hepms.segment_sum(values, offsets))
    # read-only numpy buffers (e.g. from awkward) are copied, not written to
    frozen = offsets.numpy().copy()
    frozen.flags.writeable = False
    assert torch.equal(hepms.segment_mean(values, frozen), hepms.segment_mean(values, offsets))
    with pytest.raises(TypeError, match="offsets must be integers.*float64"):
        hepms.segment_sum(values, offsets.numpy().astype(np.float64))
    with pytest.raises(TypeError, match="pass either a Jagged alone"):
        hepms.segment_sum(jagged, offsets)
    with pytest.raises(TypeError, match="offsets missing"):
        hepms.segment_sum(values)


def test_counts_instead_of_offsets_get_a_hint():
    values = torch.randn(5, 2)
    for counts in ([3, 0, 2], [0, 3, 2]):  # offsets[0] != 0, or decreasing
        with pytest.raises(ValueError, match=r"look like counts.*hepms\.offsets_from_counts\(counts\)"):
            hepms.segment_sum(values, torch.tensor(counts))
    with pytest.raises(ValueError, match="offsets\\[0\\] must be 0, got 1$"):  # not counts: no hint
        hepms.segment_sum(values, torch.tensor([1, 5]))


def test_is_integer_dtype_and_the_offsets_dtype_errors():
    from hepms.ops import is_integer_dtype

    for dtype in (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64):
        assert is_integer_dtype(dtype), dtype
    for dtype in (torch.bool, torch.float16, torch.bfloat16, torch.float32, torch.float64,
                  torch.complex64):
        assert not is_integer_dtype(dtype), dtype
        with pytest.raises(TypeError, match="offsets must be an integer tensor"):
            hepms.segment_sum(torch.randn(3, 2), torch.tensor([0, 1, 3]).to(dtype))
        with pytest.raises(TypeError, match="counts must be integers"):
            hepms.offsets_from_counts(torch.tensor([1, 2]).to(dtype))
    offsets = torch.tensor([0, 1, 3], dtype=torch.int32)
    assert hepms.segment_sum(torch.ones(3, 2), offsets).tolist() == [[1, 1], [2, 2]]


def test_offsets_from_counts():
    import awkward as ak
    import numpy as np

    expected = [0, 3, 3, 5]
    for counts in ([3, 0, 2], np.array([3, 0, 2], dtype=np.uint8), torch.tensor([3, 0, 2], dtype=torch.int32),
                   ak.num(ak.Array([[1, 2, 3], [], [4, 5]]))):
        offsets = hepms.offsets_from_counts(counts)
        assert offsets.dtype == torch.int64 and offsets.tolist() == expected, counts
    assert hepms.offsets_from_counts([]).tolist() == [0]
    values = torch.randn(5, 2)
    assert torch.equal(hepms.segment_sum(values, hepms.offsets_from_counts([3, 0, 2])),
                       hepms.segment_sum(values, torch.tensor(expected)))
    with pytest.raises(ValueError, match=r"counts must be >= 0, got counts\[1\] = -1"):
        hepms.offsets_from_counts([2, -1])
    with pytest.raises(TypeError, match="integers"):
        hepms.offsets_from_counts(torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="1-D"):
        hepms.offsets_from_counts(torch.ones(2, 2, dtype=torch.long))
