// segment_mean_max on the CPU: the mean and the maximum of each set side by side ([B, 2F], the
// pooling of hepms.nn with modes ("mean", "max")), and its backward in one pass.
//
// The forward runs the mean and the amax kernels (segment_sum_cpu.cpp, segment_max_cpu.cpp)
// into the two halves of one output, so its numbers are bit for bit those of the separate ops
// (the same cascade summation, the same first-maximal-row rule). What the fusion saves is in the
// backward, where the time is: one kernel writes grad_mean / count to every row of a set and adds
// grad_max on the set's first maximal row, per feature. Separately, that took a mean backward (a
// [N, F] buffer), an amax backward (another [N, F] buffer, zero-filled), the contiguous copies of
// both halves of the concatenation's gradient and an [N, F] add.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>

#include "../segment.h"
#include "segment_cpu_common.h"

namespace hepms {
namespace {

// grad_values[r, f] = grad[s, f] / |s| for every row r of set s, plus grad[s, F + f] on the
// first row of s where values[r, f] equals the maximum maxima[s, f] (or is NaN when the maximum
// is NaN): the rows segment_mean's and segment_amax's backwards write (first_max_row_backward,
// whose search segment_amax's backward shares).
template <typename scalar_t>
void mean_max_backward(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ values,
                       const scalar_t* __restrict__ maxima, const int64_t* __restrict__ offsets,
                       scalar_t* __restrict__ out, int64_t num_segments, int64_t width,
                       int64_t num_rows) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t grad_width = 2 * width;
  first_max_row_backward(
      values, maxima, offsets, out, num_segments, width, num_rows,
      [&](const TaskSplit::Task& t, scalar_t* row_value) {
        // The mean's gradient, rounded to scalar_t as segment_gather(mean=True) rounds it.
        const scalar_t* g_mean = grad + t.seg * grad_width + t.f0;
        const acc_t scale = acc_t(1) / static_cast<acc_t>(t.seg_end - t.seg_begin);
        for (int64_t j = 0; j < t.w; ++j)
          row_value[j] = static_cast<scalar_t>(static_cast<acc_t>(g_mean[j]) * scale);
      },
      [&](scalar_t* dst, int64_t seg, int64_t f) {
        // mean part + max part, in the order and precision of autograd adding the two separate
        // backwards' outputs.
        *dst = static_cast<scalar_t>(static_cast<acc_t>(*dst) +
                                     static_cast<acc_t>(grad[seg * grad_width + width + f]));
      });
}

}  // namespace

at::Tensor segment_mean_max_cpu(const at::Tensor& values, const at::Tensor& offsets) {
  check_pool_args("segment_mean_max", values, offsets);
  TORCH_CHECK(values.dim() <= 2, "segment_mean_max: values must be 1-D [N] or 2-D [N, F], got shape ",
              values.sizes());
  const int64_t num_segments = offsets.numel() - 1;
  const int64_t width = row_width(values);
  at::Tensor out = at::empty({num_segments, 2 * width}, values.options());
  if (out.numel() == 0) return out;
  // Both kernels write [B, F] (or [B]) blocks of their own; the two small copies into the halves
  // cost O(B F), against the O(N F) of the kernels.
  out.narrow(1, 0, width).copy_(segment_mean_cpu(values, offsets).view({num_segments, width}));
  out.narrow(1, width, width).copy_(segment_amax_cpu(values, offsets).view({num_segments, width}));
  return out;
}

at::Tensor segment_mean_max_backward_cpu(const at::Tensor& grad_in, const at::Tensor& values_in,
                                         const at::Tensor& out_in, const at::Tensor& offsets_in) {
  check_mean_max_backward_args(grad_in, values_in, out_in, offsets_in);
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor values = values_in.contiguous();
  const int64_t num_segments = offsets_in.numel() - 1;
  const int64_t width = row_width(values);
  // The maximum half of the forward's output, as a contiguous [B, F] block.
  const at::Tensor maxima = out_in.narrow(1, width, width).contiguous();
  const at::Tensor offsets = offsets_in.contiguous();
  const int64_t num_rows = values.size(0);
  at::Tensor out = allocate_row_output(offsets.const_data_ptr<int64_t>(), num_segments, num_rows,
                                       values.sizes(), grad.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "segment_mean_max_backward", [&] {
    mean_max_backward<scalar_t>(grad.const_data_ptr<scalar_t>(), values.const_data_ptr<scalar_t>(),
                                maxima.const_data_ptr<scalar_t>(), offsets.const_data_ptr<int64_t>(),
                                out.mutable_data_ptr<scalar_t>(), num_segments, width, num_rows);
  });
  return out;
}

}  // namespace hepms
