// Sum / mean family on the CPU: segment_sum, segment_mean and their backward, segment_gather.
//
// Work is split into tasks (segment, feature block) handed to at::parallel_for, so many short
// segments spread over threads and few segments with many features still use every thread.
// Inside a task the rows of the segment are streamed once and accumulated into a small local
// buffer whose inner loop over features the compiler vectorizes.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>

#include "../segment.h"
#include "segment_cpu_common.h"

namespace hepms {
namespace {

// Arguments of the forward, shared by the tasks.
template <typename scalar_t>
struct SumArgs {
  const scalar_t* __restrict__ values;
  const int64_t* __restrict__ offsets;
  scalar_t* __restrict__ out;
  int64_t width;
  int64_t num_rows;
  TaskSplit split;
};

// Tasks [first, last) of the forward. Inlined into a baseline and an AVX2 caller (below), so the
// same source is compiled for each instruction set.
template <typename scalar_t, bool kMean, bool kAvx2>
HEPMS_ALWAYS_INLINE void sum_tasks(const SumArgs<scalar_t>& a, int64_t first, int64_t last) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kWiden = kAvx2 && kWidenWithF16c<scalar_t>;
  acc_t acc[kFeatureBlock];
  acc_t widened[kWiden ? kFeatureBlock : 1];
  for (int64_t task = first; task < last; ++task) {
    const auto [seg, f0, w, begin, end] = a.split.at(task, a.offsets, a.width, a.num_rows);
    for (int64_t j = 0; j < w; ++j) acc[j] = acc_t(0);
    for (int64_t r = begin; r < end; ++r) {
      const auto* row = as_acc<kWiden>(a.values + r * a.width + f0, widened, w);
      for (int64_t j = 0; j < w; ++j) acc[j] += static_cast<acc_t>(row[j]);
    }
    if (kMean && end > begin) {
      const acc_t scale = acc_t(1) / static_cast<acc_t>(end - begin);
      for (int64_t j = 0; j < w; ++j) acc[j] *= scale;
    }
    store_row<kAvx2>(acc, a.out + seg * a.width + f0, w);
  }
}

template <typename scalar_t, bool kMean>
HEPMS_TARGET_AVX2 void sum_tasks_avx2(const SumArgs<scalar_t>& a, int64_t first, int64_t last) {
  sum_tasks<scalar_t, kMean, HEPMS_HAVE_AVX2_PATH>(a, first, last);
}

template <typename scalar_t, bool kMean>
void sum_tasks_baseline(const SumArgs<scalar_t>& a, int64_t first, int64_t last) {
  sum_tasks<scalar_t, kMean, false>(a, first, last);
}

template <typename scalar_t, bool kMean>
void sum_forward(const scalar_t* values, const int64_t* offsets, scalar_t* out,
                 int64_t num_segments, int64_t width, int64_t num_rows) {
  const SumArgs<scalar_t> args{values, offsets, out, width, num_rows,
                               TaskSplit(num_segments, width, num_rows)};
  run_tasks(args, &sum_tasks_avx2<scalar_t, kMean>, &sum_tasks_baseline<scalar_t, kMean>);
}

// out[r] = src[segment of r] (divided by the segment length for the mean's backward).
template <typename scalar_t, bool kMean>
void gather_rows(const scalar_t* __restrict__ src, const int64_t* __restrict__ offsets,
                 scalar_t* __restrict__ out, int64_t num_segments, int64_t width,
                 int64_t num_rows) {
  using acc_t = at::opmath_type<scalar_t>;
  const TaskSplit split(num_segments, width, num_rows);
  at::parallel_for(0, split.num_tasks(), split.grain(), [&](int64_t first, int64_t last) {
    scalar_t row_value[kFeatureBlock];
    for (int64_t task = first; task < last; ++task) {
      const auto [seg, f0, w, begin, end] = split.at(task, offsets, width, num_rows);
      if (end <= begin) continue;
      const scalar_t* s = src + seg * width + f0;
      if (kMean) {
        const acc_t scale = acc_t(1) / static_cast<acc_t>(end - begin);
        for (int64_t j = 0; j < w; ++j)
          row_value[j] = static_cast<scalar_t>(static_cast<acc_t>(s[j]) * scale);
      } else {
        for (int64_t j = 0; j < w; ++j) row_value[j] = s[j];
      }
      for (int64_t r = begin; r < end; ++r) {
        scalar_t* dst = out + r * width + f0;
        for (int64_t j = 0; j < w; ++j) dst[j] = row_value[j];
      }
    }
  });
}

template <bool kMean>
at::Tensor pool_sum(const char* op, const at::Tensor& values_in, const at::Tensor& offsets_in) {
  check_pool_args(op, values_in, offsets_in);
  const at::Tensor values = values_in.contiguous();
  const at::Tensor offsets = offsets_in.contiguous();
  const int64_t num_segments = offsets.numel() - 1;
  const int64_t width = row_width(values);
  at::Tensor out = at::empty(pooled_shape(values, num_segments), values.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "segment_sum", [&] {
    sum_forward<scalar_t, kMean>(values.const_data_ptr<scalar_t>(),
                                 offsets.const_data_ptr<int64_t>(), out.mutable_data_ptr<scalar_t>(),
                                 num_segments, width, values.size(0));
  });
  return out;
}

}  // namespace

at::Tensor segment_sum_cpu(const at::Tensor& values, const at::Tensor& offsets) {
  return pool_sum<false>("segment_sum", values, offsets);
}

at::Tensor segment_mean_cpu(const at::Tensor& values, const at::Tensor& offsets) {
  return pool_sum<true>("segment_mean", values, offsets);
}

at::Tensor segment_gather_cpu(const at::Tensor& src_in, const at::Tensor& offsets_in,
                              int64_t num_rows, bool mean) {
  check_gather_args(src_in, offsets_in, num_rows);
  const at::Tensor src = src_in.contiguous();
  const at::Tensor offsets = offsets_in.contiguous();
  const int64_t num_segments = offsets.numel() - 1;
  const int64_t width = row_width(src);
  const auto shape = row_shape(src, num_rows);
  at::Tensor out = allocate_row_output(offsets.const_data_ptr<int64_t>(), num_segments, num_rows,
                                       shape, src.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "segment_gather",
                                  [&] {
    if (mean) {
      gather_rows<scalar_t, true>(src.const_data_ptr<scalar_t>(), offsets.const_data_ptr<int64_t>(),
                                  out.mutable_data_ptr<scalar_t>(), num_segments, width, num_rows);
    } else {
      gather_rows<scalar_t, false>(src.const_data_ptr<scalar_t>(),
                                   offsets.const_data_ptr<int64_t>(),
                                   out.mutable_data_ptr<scalar_t>(), num_segments, width, num_rows);
    }
  });
  return out;
}

}  // namespace hepms
