// Max family on CUDA: segment_max (value + arg-max row) and its backward.
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

// Is candidate (value, index) preferred over the current one? The order reproduces a serial
// scan that keeps the first NaN if there is one, otherwise the first occurrence of the maximum.
// index -1 marks "nothing yet".
template <typename acc_t>
__device__ __forceinline__ bool prefer(acc_t value, int64_t index, acc_t best, int64_t best_index) {
  if (index < 0) return false;
  if (best_index < 0) return true;
  const bool value_nan = value != value;
  const bool best_nan = best != best;
  if (value_nan != best_nan) return value_nan;
  if (!value_nan && value != best) return value > best;
  return index < best_index;
}

template <typename scalar_t>
__global__ void max_forward_kernel(const scalar_t* __restrict__ values,
                                   const int64_t* __restrict__ offsets, scalar_t* __restrict__ out,
                                   int64_t* __restrict__ argmax, int64_t num_segments,
                                   int64_t width, int64_t num_rows, int cols, int rows) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t seg = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (seg >= num_segments) return;
  const int lane = threadIdx.x % kWarp;
  const int col = lane % cols;
  const int row_lane = lane / cols;
  int64_t begin, end;
  segment_bounds(offsets, seg, num_rows, begin, end);
  for (int64_t f0 = 0; f0 < width; f0 += cols) {  // uniform over the warp (shuffles inside)
    const int64_t f = f0 + col;
    acc_t best = acc_t(0);
    int64_t best_index = -1;
    if (f < width) {
      // Each lane scans its rows in increasing order: a plain "greater, or first NaN" test keeps
      // the first maximum within the lane.
      for (int64_t r = begin + row_lane; r < end; r += rows) {
        const acc_t x = static_cast<acc_t>(values[r * width + f]);
        const bool take =
            best_index < 0 || x > best || ((x != x) && (best == best));
        if (take) {
          best = x;
          best_index = r;
        }
      }
    }
    for (int step = cols; step < kWarp; step *= 2) {
      const acc_t other = __shfl_xor_sync(kFullMask, best, step);
      const int64_t other_index = __shfl_xor_sync(kFullMask, best_index, step);
      if (prefer(other, other_index, best, best_index)) {
        best = other;
        best_index = other_index;
      }
    }
    if (row_lane == 0 && f < width) {
      out[seg * width + f] = best_index < 0 ? scalar_t(0) : static_cast<scalar_t>(best);
      argmax[seg * width + f] = best_index;
    }
  }
}

// grad_values[argmax[s, f], f] = grad[s, f]; the output was zero-filled beforehand. One thread per
// pooled element; arg-max rows are distinct per (segment, feature), so there are no conflicts.
template <typename scalar_t>
__global__ void max_backward_kernel(const scalar_t* __restrict__ grad,
                                    const int64_t* __restrict__ argmax,
                                    const int64_t* __restrict__ offsets, scalar_t* __restrict__ out,
                                    int64_t num_segments, int64_t width, int64_t num_rows) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= num_segments * width) return;
  const int64_t seg = index / width;
  const int64_t f = index - seg * width;
  int64_t begin, end;
  segment_bounds(offsets, seg, num_rows, begin, end);
  const int64_t row = argmax[index];
  // An arg-max outside its own segment (a corrupted argmax tensor) is ignored, never written.
  if (row >= begin && row < end) out[row * width + f] = grad[index];
}

std::tuple<at::Tensor, at::Tensor> segment_max_cuda(const at::Tensor& values_in,
                                                    const at::Tensor& offsets_in) {
  check_pool_args("segment_max", values_in, offsets_in);
  const c10::cuda::CUDAGuard guard(values_in.device());
  const at::Tensor values = values_in.contiguous();
  const at::Tensor offsets = offsets_in.contiguous();
  const int64_t num_segments = offsets.numel() - 1;
  const int64_t width = row_width(values);
  const auto shape = pooled_shape(values, num_segments);
  at::Tensor out = at::empty(shape, values.options());
  at::Tensor argmax = at::empty(shape, values.options().dtype(at::kLong));
  if (out.numel() == 0) return {out, argmax};
  const LaneLayout layout = lane_layout(width);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "segment_max_cuda",
                                  [&] {
    launch_kernel(max_forward_kernel<scalar_t>, num_blocks_for_segments(num_segments),
                  values.const_data_ptr<scalar_t>(), offsets.const_data_ptr<int64_t>(),
                  out.mutable_data_ptr<scalar_t>(), argmax.mutable_data_ptr<int64_t>(),
                  num_segments, width, values.size(0), layout.cols, layout.rows);
  });
  return {out, argmax};
}

at::Tensor segment_max_backward_cuda(const at::Tensor& grad_in, const at::Tensor& argmax_in,
                                     const at::Tensor& offsets_in, int64_t num_rows) {
  check_max_backward_args(grad_in, argmax_in, offsets_in, num_rows);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor argmax = argmax_in.contiguous();
  const at::Tensor offsets = offsets_in.contiguous();
  const int64_t num_segments = offsets.numel() - 1;
  const int64_t width = row_width(grad);
  at::Tensor out = at::zeros(row_shape(grad, num_rows), grad.options());
  const int64_t total = num_segments * width;
  if (out.numel() == 0 || total == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "segment_max_backward_cuda", [&] {
    launch_kernel(max_backward_kernel<scalar_t>, num_blocks_for_elements(total),
                  grad.const_data_ptr<scalar_t>(), argmax.const_data_ptr<int64_t>(),
                  offsets.const_data_ptr<int64_t>(), out.mutable_data_ptr<scalar_t>(),
                  num_segments, width, num_rows);
  });
  return out;
}

// segment_amax on CUDA: the max kernel with its arg-max dropped, and a backward that recomputes
// the arg-max (the same first-maximal-row rule) before scattering. Correct and simple; unlike
// the CPU kernels it still writes an arg-max tensor (GPU memory is not page-faulted on first
// touch, so the saving that motivated segment_amax on the CPU is smaller here).
at::Tensor segment_amax_cuda(const at::Tensor& values, const at::Tensor& offsets) {
  return std::get<0>(segment_max_cuda(values, offsets));
}

at::Tensor segment_amax_backward_cuda(const at::Tensor& grad, const at::Tensor& values,
                                      const at::Tensor& out, const at::Tensor& offsets) {
  check_amax_backward_args(grad, values, out, offsets);
  const at::Tensor argmax = std::get<1>(segment_max_cuda(values, offsets));
  return segment_max_backward_cuda(grad, argmax, offsets, values.size(0));
}

}  // namespace
}  // namespace cuda
}  // namespace hepms

TORCH_LIBRARY_IMPL(hepms, CUDA, m) {
  m.impl("segment_amax", &hepms::cuda::segment_amax_cuda);
  m.impl("segment_amax_backward", &hepms::cuda::segment_amax_backward_cuda);
  m.impl("segment_max", &hepms::cuda::segment_max_cuda);
  m.impl("segment_max_backward", &hepms::cuda::segment_max_backward_cuda);
}
