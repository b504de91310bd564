// segment_mean_max on CUDA: the forward runs the registered mean and amax kernels into the two
// halves of one [B, 2F] output (so its numbers are those of the separate ops); the backward is
// one kernel, a thread per (set, feature): grad_mean / count to every row of the set, plus
// grad_max on the set's first maximal row (the rule of segment_amax's backward).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <type_traits>

#include "../op_handles.h"
#include "../segment.h"
#include "segment_cuda_common.cuh"

namespace hepms {
namespace cuda {
namespace {

// The mean's gradient grad / count, rounded to scalar_t as segment_gather(mean=True) rounds it.
// double has its own rounding multiply (__dmul_rn: no contraction with the add below).
template <typename scalar_t>
__device__ __forceinline__ scalar_t mean_gradient(scalar_t grad, int64_t count) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    return __dmul_rn(grad, 1.0 / static_cast<double>(count));
  } else {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t scale = acc_t(1) / static_cast<acc_t>(count);
    return static_cast<scalar_t>(static_cast<acc_t>(grad) * scale);
  }
}

// mean part + max part, rounded as autograd adds the two separate backwards' outputs:
// __fadd_rn / __dadd_rn, no contraction with the multiply above (the separate ops round in
// between).
template <typename scalar_t>
__device__ __forceinline__ scalar_t add_rounded(scalar_t mean_part, scalar_t max_part) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    return __dadd_rn(mean_part, max_part);
  } else {
    using acc_t = at::opmath_type<scalar_t>;
    return static_cast<scalar_t>(__fadd_rn(static_cast<float>(static_cast<acc_t>(mean_part)),
                                           static_cast<float>(static_cast<acc_t>(max_part))));
  }
}

template <typename scalar_t>
__global__ void mean_max_backward_kernel(const scalar_t* __restrict__ grad,
                                         const scalar_t* __restrict__ values,
                                         const scalar_t* __restrict__ maxima,
                                         const int64_t* __restrict__ offsets,
                                         scalar_t* __restrict__ out, int64_t num_segments,
                                         int64_t width, int64_t num_rows) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= num_segments * width) return;
  const int64_t seg = index / width;
  const int64_t f = index % width;
  int64_t begin, end;
  segment_bounds(offsets, seg, num_rows, begin, end);
  if (end <= begin) return;
  const scalar_t mean_part = mean_gradient(grad[seg * 2 * width + f], end - begin);
  const scalar_t m = maxima[seg * width + f];
  const bool nan_max = m != m;
  int64_t found = -1;
  for (int64_t r = begin; r < end; ++r) {
    out[r * width + f] = mean_part;
    const scalar_t x = values[r * width + f];
    if (found < 0 && (x == m || (nan_max && x != x))) found = r;
  }
  if (found >= 0)
    out[found * width + f] = add_rounded(mean_part, grad[seg * 2 * width + width + f]);
}

at::Tensor segment_mean_max_cuda(const at::Tensor& values, const at::Tensor& offsets) {
  check_pool_args("segment_mean_max", values, offsets);
  TORCH_CHECK(values.dim() <= 2, "segment_mean_max: values must be 1-D [N] or 2-D [N, F], got shape ",
              values.sizes());
  const c10::cuda::CUDAGuard guard(values.device());
  const int64_t num_segments = offsets.numel() - 1;
  const int64_t width = row_width(values);
  at::Tensor out = at::empty({num_segments, 2 * width}, values.options());
  if (out.numel() == 0) return out;
  out.narrow(1, 0, width).copy_(op_handles().mean.call(values, offsets).view({num_segments, width}));
  out.narrow(1, width, width).copy_(op_handles().amax.call(values, offsets).view({num_segments, width}));
  return out;
}

at::Tensor segment_mean_max_backward_cuda(const at::Tensor& grad_in, const at::Tensor& values_in,
                                          const at::Tensor& out_in, const at::Tensor& offsets_in) {
  check_mean_max_backward_args(grad_in, values_in, out_in, offsets_in);
  const c10::cuda::CUDAGuard guard(values_in.device());
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor values = values_in.contiguous();
  const at::Tensor offsets = offsets_in.contiguous();
  const int64_t num_segments = offsets.numel() - 1;
  const int64_t width = row_width(values);
  const at::Tensor maxima = out_in.narrow(1, width, width).contiguous();
  const int64_t num_rows = values.size(0);
  // Zero-filled: rows outside every set (malformed offsets, validation off) must read 0.
  at::Tensor out = at::zeros(values.sizes(), values.options());
  const int64_t total = num_segments * width;
  if (out.numel() == 0 || total == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "segment_mean_max_backward_cuda", [&] {
    launch_kernel(mean_max_backward_kernel<scalar_t>, num_blocks_for_elements(total),
                  grad.const_data_ptr<scalar_t>(), values.const_data_ptr<scalar_t>(),
                  maxima.const_data_ptr<scalar_t>(), offsets.const_data_ptr<int64_t>(),
                  out.mutable_data_ptr<scalar_t>(), num_segments, width, num_rows);
  });
  return out;
}

}  // namespace
}  // namespace cuda
}  // namespace hepms

TORCH_LIBRARY_IMPL(hepms, CUDA, m) {
  m.impl("segment_mean_max", &hepms::cuda::segment_mean_max_cuda);
  m.impl("segment_mean_max_backward", &hepms::cuda::segment_mean_max_backward_cuda);
}
