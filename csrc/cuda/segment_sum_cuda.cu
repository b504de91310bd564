// Sum / mean family on CUDA: segment_sum, segment_mean and their backward, segment_gather.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../segment.h"
#include "segment_cuda_common.cuh"

namespace hepms {
namespace cuda {
namespace {

template <typename scalar_t, bool kMean>
__global__ void sum_forward_kernel(const scalar_t* __restrict__ values,
                                   const int64_t* __restrict__ offsets, scalar_t* __restrict__ out,
                                   int64_t num_segments, int64_t width, int64_t num_rows,
                                   int cols, int rows) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t seg = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (seg >= num_segments) return;  // whole warps exit together
  const int lane = threadIdx.x % kWarp;
  const int col = lane % cols;
  const int row_lane = lane / cols;
  int64_t begin, end;
  segment_bounds(offsets, seg, num_rows, begin, end);
  const acc_t scale = (kMean && end > begin) ? acc_t(1) / static_cast<acc_t>(end - begin) : acc_t(1);
  // Uniform trip count over the warp (f0 is the same for all lanes) so the shuffles below are
  // executed by every lane.
  for (int64_t f0 = 0; f0 < width; f0 += cols) {
    const int64_t f = f0 + col;
    // Compensated (Kahan) summation per lane: a lane adds up to (end - begin) / rows values
    // of a set, millions for a huge one, and the GPU is memory-bound, so the extra adds are
    // free. (nvcc keeps the order of these operations without --use_fast_math.)
    acc_t acc = acc_t(0);
    acc_t compensation = acc_t(0);
    if (f < width) {
#pragma unroll 4
      for (int64_t r = begin + row_lane; r < end; r += rows) {
        const acc_t y = static_cast<acc_t>(values[r * width + f]) - compensation;
        const acc_t t = acc + y;
        compensation = (t - acc) - y;
        acc = t;
      }
      acc -= compensation;
    }
    for (int step = cols; step < kWarp; step *= 2) acc += __shfl_xor_sync(kFullMask, acc, step);
    if (row_lane == 0 && f < width) out[seg * width + f] = static_cast<scalar_t>(acc * scale);
  }
}

template <typename scalar_t, bool kMean>
__global__ void gather_kernel(const scalar_t* __restrict__ src, const int64_t* __restrict__ offsets,
                              scalar_t* __restrict__ out, int64_t num_segments, int64_t width,
                              int64_t num_rows, int cols, int rows) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t seg = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (seg >= num_segments) return;
  const int lane = threadIdx.x % kWarp;
  const int col = lane % cols;
  const int row_lane = lane / cols;
  int64_t begin, end;
  segment_bounds(offsets, seg, num_rows, begin, end);
  if (end <= begin) return;
  const acc_t scale = kMean ? acc_t(1) / static_cast<acc_t>(end - begin) : acc_t(1);
  for (int64_t f = col; f < width; f += cols) {
    const scalar_t value = static_cast<scalar_t>(static_cast<acc_t>(src[seg * width + f]) * scale);
#pragma unroll 4
    for (int64_t r = begin + row_lane; r < end; r += rows) out[r * width + f] = value;
  }
}

template <bool kMean>
at::Tensor pool_sum(const at::Tensor& values_in, const at::Tensor& offsets_in) {
  const char* op = kMean ? "segment_mean" : "segment_sum";
  check_pool_args(op, values_in, offsets_in);
  const c10::cuda::CUDAGuard guard(values_in.device());
  const at::Tensor values = values_in.contiguous();
  const at::Tensor offsets = offsets_in.contiguous();
  const int64_t num_segments = offsets.numel() - 1;
  const int64_t width = row_width(values);
  at::Tensor out = at::empty(pooled_shape(values, num_segments), values.options());
  if (out.numel() == 0) return out;
  const LaneLayout layout = lane_layout(width);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "segment_sum_cuda",
                                  [&] {
    launch_kernel(sum_forward_kernel<scalar_t, kMean>, num_blocks_for_segments(num_segments),
                  values.const_data_ptr<scalar_t>(), offsets.const_data_ptr<int64_t>(),
                  out.mutable_data_ptr<scalar_t>(), num_segments, width, values.size(0),
                  layout.cols, layout.rows);
  });
  return out;
}

at::Tensor segment_sum_cuda(const at::Tensor& values, const at::Tensor& offsets) {
  return pool_sum<false>(values, offsets);
}

at::Tensor segment_mean_cuda(const at::Tensor& values, const at::Tensor& offsets) {
  return pool_sum<true>(values, offsets);
}

// Rows are written segment by segment; with validated offsets (the default on the Python side)
// the segments tile every row. With validation switched off and malformed offsets, rows outside
// every segment are left uninitialised (checking coverage here would cost a device sync).
at::Tensor segment_gather_cuda(const at::Tensor& src_in, const at::Tensor& offsets_in,
                               int64_t num_rows, bool mean) {
  check_gather_args(src_in, offsets_in, num_rows);
  const c10::cuda::CUDAGuard guard(src_in.device());
  const at::Tensor src = src_in.contiguous();
  const at::Tensor offsets = offsets_in.contiguous();
  const int64_t num_segments = offsets.numel() - 1;
  const int64_t width = row_width(src);
  at::Tensor out = at::empty(row_shape(src, num_rows), src.options());
  if (out.numel() == 0 || num_segments == 0) return out;
  const LaneLayout layout = lane_layout(width);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(),
                                  "segment_gather_cuda", [&] {
    launch_kernel(mean ? gather_kernel<scalar_t, true> : gather_kernel<scalar_t, false>,
                  num_blocks_for_segments(num_segments), src.const_data_ptr<scalar_t>(),
                  offsets.const_data_ptr<int64_t>(), out.mutable_data_ptr<scalar_t>(),
                  num_segments, width, num_rows, layout.cols, layout.rows);
  });
  return out;
}

}  // namespace
}  // namespace cuda
}  // namespace hepms

TORCH_LIBRARY_IMPL(hepms, CUDA, m) {
  m.impl("segment_sum", &hepms::cuda::segment_sum_cuda);
  m.impl("segment_mean", &hepms::cuda::segment_mean_cuda);
  m.impl("segment_gather", &hepms::cuda::segment_gather_cuda);
}
