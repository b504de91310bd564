// Max family on the CPU: segment_max (value + arg-max row) and its backward.
//
// The arg-max is tracked as an index relative to the segment start, in an integer type as wide
// as the accumulator (int32 beside float, int64 beside double), so the compare-and-select inner
// loop over features vectorizes. Ties keep the first row; a NaN wins over numbers (as torch.max)
// and the first NaN is kept.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>

#include "../segment.h"
#include "segment_cpu_common.h"

namespace hepms {
namespace {

template <typename scalar_t>
void max_forward(const scalar_t* __restrict__ values, const int64_t* __restrict__ offsets,
                 scalar_t* __restrict__ out, int64_t* __restrict__ argmax, int64_t num_segments,
                 int64_t width, int64_t num_rows) {
  using acc_t = at::opmath_type<scalar_t>;
  using rel_t = std::conditional_t<sizeof(acc_t) == 8, int64_t, int32_t>;
  const TaskSplit split(num_segments, width, num_rows);
  at::parallel_for(0, split.num_tasks(), split.grain(), [&](int64_t first, int64_t last) {
    acc_t best[kFeatureBlock];
    rel_t where[kFeatureBlock];
    int64_t where_long[kFeatureBlock];
    for (int64_t task = first; task < last; ++task) {
      const int64_t seg = task / split.num_blocks;
      const int64_t f0 = (task % split.num_blocks) * kFeatureBlock;
      const int64_t w = std::min<int64_t>(kFeatureBlock, width - f0);
      int64_t begin = offsets[seg], end = offsets[seg + 1];
      clamp_segment(begin, end, num_rows);
      scalar_t* dst = out + seg * width + f0;
      int64_t* dst_arg = argmax + seg * width + f0;
      if (end <= begin) {  // empty set: 0 and no arg-max
        for (int64_t j = 0; j < w; ++j) {
          dst[j] = scalar_t(0);
          dst_arg[j] = -1;
        }
        continue;
      }
      const scalar_t* row0 = values + begin * width + f0;
      for (int64_t j = 0; j < w; ++j) best[j] = static_cast<acc_t>(row0[j]);
      if (end - begin <= std::numeric_limits<rel_t>::max()) {
        for (int64_t j = 0; j < w; ++j) where[j] = 0;
        for (int64_t r = begin + 1; r < end; ++r) {
          const scalar_t* row = values + r * width + f0;
          const rel_t rel = static_cast<rel_t>(r - begin);
          for (int64_t j = 0; j < w; ++j) {
            const acc_t x = static_cast<acc_t>(row[j]);
            const bool take = (x > best[j]) | ((x != x) & (best[j] == best[j]));
            best[j] = take ? x : best[j];
            where[j] = take ? rel : where[j];
          }
        }
        for (int64_t j = 0; j < w; ++j) dst_arg[j] = begin + where[j];
      } else {  // a segment longer than the relative index type can count (2^31 rows)
        for (int64_t j = 0; j < w; ++j) where_long[j] = begin;
        for (int64_t r = begin + 1; r < end; ++r) {
          const scalar_t* row = values + r * width + f0;
          for (int64_t j = 0; j < w; ++j) {
            const acc_t x = static_cast<acc_t>(row[j]);
            const bool take = (x > best[j]) | ((x != x) & (best[j] == best[j]));
            best[j] = take ? x : best[j];
            where_long[j] = take ? r : where_long[j];
          }
        }
        for (int64_t j = 0; j < w; ++j) dst_arg[j] = where_long[j];
      }
      for (int64_t j = 0; j < w; ++j) dst[j] = static_cast<scalar_t>(best[j]);
    }
  });
}

// grad_values[argmax[s, f], f] = grad[s, f]; every other entry 0. Each task zeroes the rows of
// its own segment and writes into them, so the output is filled in a single parallel pass.
template <typename scalar_t>
void max_backward(const scalar_t* __restrict__ grad, const int64_t* __restrict__ argmax,
                  const int64_t* __restrict__ offsets, scalar_t* __restrict__ out,
                  int64_t num_segments, int64_t width, int64_t num_rows) {
  const TaskSplit split(num_segments, width, num_rows);
  at::parallel_for(0, split.num_tasks(), split.grain(), [&](int64_t first, int64_t last) {
    for (int64_t task = first; task < last; ++task) {
      const int64_t seg = task / split.num_blocks;
      const int64_t f0 = (task % split.num_blocks) * kFeatureBlock;
      const int64_t w = std::min<int64_t>(kFeatureBlock, width - f0);
      int64_t begin = offsets[seg], end = offsets[seg + 1];
      clamp_segment(begin, end, num_rows);
      for (int64_t r = begin; r < end; ++r)
        std::memset(out + r * width + f0, 0, sizeof(scalar_t) * w);
      const scalar_t* g = grad + seg * width + f0;
      const int64_t* a = argmax + seg * width + f0;
      for (int64_t j = 0; j < w; ++j) {
        // An arg-max outside its own segment (a corrupted argmax tensor) is ignored rather than
        // written: it could race with another task or fall out of bounds.
        if (a[j] >= begin && a[j] < end) out[a[j] * width + f0 + j] = g[j];
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> segment_max_cpu(const at::Tensor& values_in,
                                                   const at::Tensor& offsets_in) {
  check_pool_args("segment_max", values_in, offsets_in);
  const at::Tensor values = values_in.contiguous();
  const at::Tensor offsets = offsets_in.contiguous();
  const int64_t num_segments = offsets.numel() - 1;
  const int64_t width = row_width(values);
  const auto shape = pooled_shape(values, num_segments);
  at::Tensor out = at::empty(shape, values.options());
  at::Tensor argmax = at::empty(shape, values.options().dtype(at::kLong));
  if (out.numel() == 0) return {out, argmax};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "segment_max",
                                  [&] {
    max_forward<scalar_t>(values.const_data_ptr<scalar_t>(), offsets.const_data_ptr<int64_t>(),
                          out.mutable_data_ptr<scalar_t>(), argmax.mutable_data_ptr<int64_t>(),
                          num_segments, width, values.size(0));
  });
  return {out, argmax};
}

at::Tensor segment_max_backward_cpu(const at::Tensor& grad_in, const at::Tensor& argmax_in,
                                    const at::Tensor& offsets_in, int64_t num_rows) {
  check_pool_args("segment_max_backward", grad_in, offsets_in);
  TORCH_CHECK(num_rows >= 0, "segment_max_backward: num_rows must be >= 0, got ", num_rows);
  TORCH_CHECK(argmax_in.scalar_type() == at::kLong && argmax_in.sizes() == grad_in.sizes(),
              "segment_max_backward: argmax must be int64 with the shape of grad ",
              grad_in.sizes(), ", got ", argmax_in.scalar_type(), " ", argmax_in.sizes());
  TORCH_CHECK(grad_in.size(0) == offsets_in.numel() - 1, "segment_max_backward: grad has ",
              grad_in.size(0), " rows but offsets describe ", offsets_in.numel() - 1, " segments");
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor argmax = argmax_in.contiguous();
  const at::Tensor offsets = offsets_in.contiguous();
  const int64_t num_segments = offsets.numel() - 1;
  const int64_t width = row_width(grad);
  const auto shape = row_shape(grad, num_rows);
  at::Tensor out = allocate_row_output(offsets.const_data_ptr<int64_t>(), num_segments, num_rows,
                                       shape, grad.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "segment_max_backward", [&] {
    max_backward<scalar_t>(grad.const_data_ptr<scalar_t>(), argmax.const_data_ptr<int64_t>(),
                           offsets.const_data_ptr<int64_t>(), out.mutable_data_ptr<scalar_t>(),
                           num_segments, width, num_rows);
  });
  return out;
}

}  // namespace hepms
