// Softmax family on CUDA: segment_softmax, its backward and segment_logsumexp.
//
// One warp per segment with the lane layout of the sum kernel (segment_cuda_common.cuh): each
// pass over the set's rows ends in a warp-shuffle reduction over the row lanes (maximum, then the
// sum of exponentials), and the last pass writes the outputs. No atomics: deterministic.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "../segment.h"
#include "segment_cuda_common.cuh"

namespace hepms {
namespace cuda {
namespace {

enum class SoftmaxOp { kSoftmax, kLogSumExp, kBackward };

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t value, int cols) {
  for (int step = cols; step < kWarp; step *= 2) value += __shfl_xor_sync(kFullMask, value, step);
  return value;
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_max(acc_t value, int cols) {
  for (int step = cols; step < kWarp; step *= 2) {
    const acc_t other = __shfl_xor_sync(kFullMask, value, step);
    value = other > value ? other : value;
  }
  return value;
}

// kSoftmax: out [N, F] = softmax of `values` per set. kLogSumExp: out [B, F]. kBackward: out
// [N, F] = other * (values - sum_set(values * other)), values = the gradient, other = softmax.
template <typename scalar_t, SoftmaxOp kOp>
__global__ void softmax_kernel(const scalar_t* __restrict__ values, const scalar_t* __restrict__ other,
                               const int64_t* __restrict__ offsets, scalar_t* __restrict__ out,
                               int64_t num_segments, int64_t width, int64_t num_rows, int cols,
                               int rows) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t seg = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (seg >= num_segments) return;  // whole warps exit together
  const int lane = threadIdx.x % kWarp;
  const int col = lane % cols;
  const int row_lane = lane / cols;
  int64_t begin, end;
  segment_bounds(offsets, seg, num_rows, begin, end);
  if (kOp != SoftmaxOp::kLogSumExp && end <= begin) return;
  for (int64_t f0 = 0; f0 < width; f0 += cols) {  // uniform over the warp (shuffles inside)
    const int64_t f = f0 + col;
    const bool active = f < width;
    if (kOp == SoftmaxOp::kBackward) {
      acc_t dot = acc_t(0);
      if (active)
        for (int64_t r = begin + row_lane; r < end; r += rows)
          dot += static_cast<acc_t>(values[r * width + f]) * static_cast<acc_t>(other[r * width + f]);
      dot = warp_sum(dot, cols);
      if (active)
        for (int64_t r = begin + row_lane; r < end; r += rows)
          out[r * width + f] = static_cast<scalar_t>(
              static_cast<acc_t>(other[r * width + f]) * (static_cast<acc_t>(values[r * width + f]) - dot));
      continue;
    }
    acc_t maximum = -INFINITY;
    if (active)
      for (int64_t r = begin + row_lane; r < end; r += rows) {
        const acc_t x = static_cast<acc_t>(values[r * width + f]);
        maximum = x > maximum ? x : maximum;
      }
    maximum = warp_max(maximum, cols);
    // An infinite maximum would give inf - inf: shift by 0 instead (as the CPU kernel).
    const acc_t shift = isfinite(maximum) ? maximum : acc_t(0);
    acc_t total = acc_t(0);
    if (active)
      for (int64_t r = begin + row_lane; r < end; r += rows)
        total += exp(static_cast<acc_t>(values[r * width + f]) - shift);
    total = warp_sum(total, cols);
    if (kOp == SoftmaxOp::kLogSumExp) {
      if (active && row_lane == 0) {
        const acc_t result = end <= begin ? acc_t(0) : (isfinite(maximum) ? shift + log(total) : maximum);
        out[seg * width + f] = static_cast<scalar_t>(result);
      }
    } else if (active) {
      const acc_t inverse = acc_t(1) / total;
      for (int64_t r = begin + row_lane; r < end; r += rows)
        out[r * width + f] =
            static_cast<scalar_t>(exp(static_cast<acc_t>(values[r * width + f]) - shift) * inverse);
    }
  }
}

template <SoftmaxOp kOp>
void launch(const at::Tensor& values, const at::Tensor& other, const at::Tensor& offsets,
            at::Tensor& out) {
  const int64_t num_segments = offsets.numel() - 1;
  if (out.numel() == 0 || num_segments == 0) return;
  const int64_t width = row_width(values);
  const LaneLayout layout = lane_layout(width);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "segment_softmax_cuda",
                                  [&] {
    launch_kernel(softmax_kernel<scalar_t, kOp>, num_blocks_for_segments(num_segments),
                  values.const_data_ptr<scalar_t>(),
                  other.defined() ? other.const_data_ptr<scalar_t>() : nullptr,
                  offsets.const_data_ptr<int64_t>(), out.mutable_data_ptr<scalar_t>(), num_segments,
                  width, values.size(0), layout.cols, layout.rows);
  });
}

// Rows outside every segment (malformed offsets with validation off) are zero-filled: checking
// the coverage on the device would cost a sync, so the outputs start from zeros.
at::Tensor segment_softmax_cuda(const at::Tensor& values_in, const at::Tensor& offsets_in) {
  check_pool_args("segment_softmax", values_in, offsets_in);
  const c10::cuda::CUDAGuard guard(values_in.device());
  const at::Tensor values = values_in.contiguous();
  const at::Tensor offsets = offsets_in.contiguous();
  at::Tensor out = at::zeros(values.sizes(), values.options());
  launch<SoftmaxOp::kSoftmax>(values, at::Tensor(), offsets, out);
  return out;
}

at::Tensor segment_softmax_backward_cuda(const at::Tensor& grad_in, const at::Tensor& out_in,
                                         const at::Tensor& offsets_in) {
  check_softmax_backward_args(grad_in, out_in, offsets_in);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor softmax = out_in.contiguous();
  const at::Tensor offsets = offsets_in.contiguous();
  at::Tensor out = at::zeros(grad.sizes(), grad.options());
  launch<SoftmaxOp::kBackward>(grad, softmax, offsets, out);
  return out;
}

at::Tensor segment_logsumexp_cuda(const at::Tensor& values_in, const at::Tensor& offsets_in) {
  check_pool_args("segment_logsumexp", values_in, offsets_in);
  const c10::cuda::CUDAGuard guard(values_in.device());
  const at::Tensor values = values_in.contiguous();
  const at::Tensor offsets = offsets_in.contiguous();
  at::Tensor out = at::empty(pooled_shape(values, offsets.numel() - 1), values.options());
  launch<SoftmaxOp::kLogSumExp>(values, at::Tensor(), offsets, out);
  return out;
}

}  // namespace
}  // namespace cuda
}  // namespace hepms

TORCH_LIBRARY_IMPL(hepms, CUDA, m) {
  m.impl("segment_softmax", &hepms::cuda::segment_softmax_cuda);
  m.impl("segment_softmax_backward", &hepms::cuda::segment_softmax_backward_cuda);
  m.impl("segment_logsumexp", &hepms::cuda::segment_logsumexp_cuda);
}
