// segment_mean_max on CUDA: the forward runs the registered mean and amax kernels into the two
// halves of one [B, 2F] output (so its numbers are those of the separate ops); the backward is
// one kernel, a thread per (set, feature): grad_mean / count to every row of the set, plus
// grad_max on the set's first maximal row (the rule of segment_amax's backward).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "../segment.h"
#include "segment_cuda_common.cuh"

namespace hepms {
namespace cuda {
namespace {

template <typename scalar_t>
__global__ void mean_max_backward_kernel(const scalar_t* __restrict__ grad,
                                         const scalar_t* __restrict__ values,
                                         const scalar_t* __restrict__ maxima,
                                         const int64_t* __restrict__ offsets,
                                         scalar_t* __restrict__ out, int64_t num_segments,
                                         int64_t width, int64_t num_rows) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= num_segments * width) return;
  const int64_t seg = index / width;
  const int64_t f = index % width;
  int64_t begin, end;
  segment_bounds(offsets, seg, num_rows, begin, end);
  if (end <= begin) return;
  const acc_t scale = acc_t(1) / static_cast<acc_t>(end - begin);
  const scalar_t mean_part =
      static_cast<scalar_t>(static_cast<acc_t>(grad[seg * 2 * width + f]) * scale);
  const scalar_t m = maxima[seg * width + f];
  const bool nan_max = m != m;
  int64_t found = -1;
  for (int64_t r = begin; r < end; ++r) {
    out[r * width + f] = mean_part;
    const scalar_t x = values[r * width + f];
    if (found < 0 && (x == m || (nan_max && x != x))) found = r;
  }
  if (found >= 0) {
    // __fadd_rn: no contraction with the multiply above (the separate ops round in between).
    out[found * width + f] = static_cast<scalar_t>(
        __fadd_rn(static_cast<float>(static_cast<acc_t>(mean_part)),
                  static_cast<float>(static_cast<acc_t>(grad[seg * 2 * width + width + f]))));
  }
}

// double has its own rounding add.
template <>
__global__ void mean_max_backward_kernel<double>(const double* __restrict__ grad,
                                                 const double* __restrict__ values,
                                                 const double* __restrict__ maxima,
                                                 const int64_t* __restrict__ offsets,
                                                 double* __restrict__ out, int64_t num_segments,
                                                 int64_t width, int64_t num_rows) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= num_segments * width) return;
  const int64_t seg = index / width;
  const int64_t f = index % width;
  int64_t begin, end;
  segment_bounds(offsets, seg, num_rows, begin, end);
  if (end <= begin) return;
  const double mean_part = __dmul_rn(grad[seg * 2 * width + f], 1.0 / static_cast<double>(end - begin));
  const double m = maxima[seg * width + f];
  const bool nan_max = m != m;
  int64_t found = -1;
  for (int64_t r = begin; r < end; ++r) {
    out[r * width + f] = mean_part;
    const double x = values[r * width + f];
    if (found < 0 && (x == m || (nan_max && x != x))) found = r;
  }
  if (found >= 0) out[found * width + f] = __dadd_rn(mean_part, grad[seg * 2 * width + width + f]);
}

at::Tensor call_pool(const char* name, const at::Tensor& values, const at::Tensor& offsets) {
  static const auto mean_op = c10::Dispatcher::singleton()
                                  .findSchemaOrThrow("hepms::segment_mean", "")
                                  .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  static const auto amax_op = c10::Dispatcher::singleton()
                                  .findSchemaOrThrow("hepms::segment_amax", "")
                                  .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return (name[0] == 'm' ? mean_op : amax_op).call(values, offsets);
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
  out.narrow(1, 0, width).copy_(call_pool("mean", values, offsets).view({num_segments, width}));
  out.narrow(1, width, width).copy_(call_pool("amax", values, offsets).view({num_segments, width}));
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
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const unsigned blocks = static_cast<unsigned>((total + kThreadsPerBlock - 1) / kThreadsPerBlock);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "segment_mean_max_backward_cuda", [&] {
    mean_max_backward_kernel<scalar_t><<<blocks, kThreadsPerBlock, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), values.const_data_ptr<scalar_t>(),
        maxima.const_data_ptr<scalar_t>(), offsets.const_data_ptr<int64_t>(),
        out.mutable_data_ptr<scalar_t>(), num_segments, width, num_rows);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
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
