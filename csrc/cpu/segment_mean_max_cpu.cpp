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
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <cstring>
#include <limits>
#include <vector>

#include "../segment.h"
#include "segment_cpu_common.h"

namespace hepms {
namespace {

// grad_values[r, f] = grad[s, f] / |s| for every row r of set s, plus grad[s, F + f] on the
// first row of s where values[r, f] equals the maximum maxima[s, f] (or is NaN when the maximum
// is NaN): the rows segment_mean's and segment_amax's backwards write. Split like the other
// backwards (row chunks for huge sets when several threads run); a chunked set's maximal row is
// found per chunk in phase 1 and receives grad_max in phase 2.
template <typename scalar_t>
void mean_max_backward(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ values,
                       const scalar_t* __restrict__ maxima, const int64_t* __restrict__ offsets,
                       scalar_t* __restrict__ out, int64_t num_segments, int64_t width,
                       int64_t num_rows) {
  using acc_t = at::opmath_type<scalar_t>;
  const TaskSplit split(offsets, num_segments, width, num_rows);
  const int64_t grad_width = 2 * width;
  // -1: no maximal row (also for the chunks of empty sets, whose tasks write nothing).
  std::vector<int64_t> first_row(split.chunked() ? split.num_units() * width : 0, -1);
  at::parallel_for(0, split.num_tasks(), split.grain(), [&](int64_t first, int64_t last) {
    scalar_t row_value[kFeatureBlock];
    int32_t where[kFeatureBlock];
    int64_t where_long[kFeatureBlock];
    int64_t whole_set[kFeatureBlock];
    for (int64_t task = first; task < last; ++task) {
      const auto t = split.at(task, offsets, width);
      if (t.end <= t.begin) continue;  // an empty set (or chunk) has no rows to write
      const scalar_t* g_mean = grad + t.seg * grad_width + t.f0;
      const scalar_t* m = maxima + t.seg * width + t.f0;
      // The mean's gradient, rounded to scalar_t as segment_gather(mean=True) rounds it.
      const acc_t scale = acc_t(1) / static_cast<acc_t>(t.seg_end - t.seg_begin);
      for (int64_t j = 0; j < t.w; ++j)
        row_value[j] = static_cast<scalar_t>(static_cast<acc_t>(g_mean[j]) * scale);
      int64_t* found = split.chunked() ? first_row.data() + t.unit * width + t.f0 : whole_set;
      if (t.end - t.begin < std::numeric_limits<int32_t>::max()) {
        for (int64_t j = 0; j < t.w; ++j) where[j] = -1;
        for (int64_t r = t.begin; r < t.end; ++r) {
          const scalar_t* row = values + r * width + t.f0;
          scalar_t* dst = out + r * width + t.f0;
          const int32_t rel = static_cast<int32_t>(r - t.begin);
          for (int64_t j = 0; j < t.w; ++j) {
            dst[j] = row_value[j];
            const bool nan_max = m[j] != m[j];
            const bool match = (row[j] == m[j]) | (nan_max & (row[j] != row[j]));
            const bool take = match & (where[j] < 0);
            const int32_t mask = -static_cast<int32_t>(take);
            where[j] = (rel & mask) | (where[j] & ~mask);
          }
        }
        for (int64_t j = 0; j < t.w; ++j) found[j] = where[j] < 0 ? -1 : t.begin + where[j];
      } else {  // a chunk longer than int32 can count
        for (int64_t j = 0; j < t.w; ++j) where_long[j] = -1;
        for (int64_t r = t.begin; r < t.end; ++r) {
          const scalar_t* row = values + r * width + t.f0;
          scalar_t* dst = out + r * width + t.f0;
          for (int64_t j = 0; j < t.w; ++j) {
            dst[j] = row_value[j];
            const bool match = (row[j] == m[j]) | ((m[j] != m[j]) & (row[j] != row[j]));
            if (match && where_long[j] < 0) where_long[j] = r;
          }
        }
        for (int64_t j = 0; j < t.w; ++j) found[j] = where_long[j];
      }
      if (!split.chunked()) {
        const scalar_t* g_max = grad + t.seg * grad_width + width + t.f0;
        for (int64_t j = 0; j < t.w; ++j) {
          if (found[j] < 0) continue;
          scalar_t* dst = out + found[j] * width + t.f0 + j;
          // mean part + max part, in the order and precision of autograd adding the two
          // separate backwards' outputs.
          *dst = static_cast<scalar_t>(static_cast<acc_t>(*dst) + static_cast<acc_t>(g_max[j]));
        }
      }
    }
  });
  if (!split.chunked()) return;
  // Phase 2: each set's first maximal row (the first chunk that found one) gets grad_max. The
  // rows were written in phase 1, which has finished.
  at::parallel_for(0, num_segments, 1024, [&](int64_t first, int64_t last) {
    for (int64_t seg = first; seg < last; ++seg) {
      const int64_t c0 = split.first_chunk[seg], c1 = split.first_chunk[seg + 1];
      for (int64_t f = 0; f < width; ++f) {
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t row = first_row[c * width + f];
          if (row >= 0) {
            scalar_t* dst = out + row * width + f;
            *dst = static_cast<scalar_t>(static_cast<acc_t>(*dst) +
                                         static_cast<acc_t>(grad[seg * grad_width + width + f]));
            break;
          }
        }
      }
    }
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
