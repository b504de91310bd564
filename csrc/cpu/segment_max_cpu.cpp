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

// Arguments of the forward, shared by the tasks.
template <typename scalar_t>
struct MaxArgs {
  const scalar_t* __restrict__ values;
  const int64_t* __restrict__ offsets;
  scalar_t* __restrict__ out;
  int64_t* __restrict__ argmax;
  int64_t width;
  int64_t num_rows;
  TaskSplit split;
};

// best[j] / where[j] take row[j] when it is larger, or the first NaN: the compare-and-select
// that the compiler vectorizes (ties keep the earlier row). Reading row[j] with a cast inside the
// loop keeps it one pass over the row for float and double.
template <typename acc_t, typename src_t, typename index_t>
HEPMS_ALWAYS_INLINE void take_larger(const src_t* __restrict__ row, acc_t* __restrict__ best,
                                     index_t* __restrict__ where, index_t index, int64_t w) {
  for (int64_t j = 0; j < w; ++j) {
    const acc_t x = static_cast<acc_t>(row[j]);
    // = x > best, or x is NaN while best is not: two compares, no branch.
    const bool take = !(x <= best[j]) & (best[j] == best[j]);
    best[j] = take ? x : best[j];
    // The index select as mask arithmetic: written as `take ? index : where[j]`, GCC does not
    // vectorize it for double (a 64-bit float compare selecting 64-bit integers).
    const index_t mask = -static_cast<index_t>(take);
    where[j] = (index & mask) | (where[j] & ~mask);
  }
}

// Tasks [first, last) of the forward. Inlined into a baseline and an AVX2 caller (below), so the
// same source is compiled for each instruction set.
template <typename scalar_t, bool kAvx2>
HEPMS_ALWAYS_INLINE void max_tasks(const MaxArgs<scalar_t>& a, int64_t first, int64_t last) {
  using acc_t = at::opmath_type<scalar_t>;
  using rel_t = std::conditional_t<sizeof(acc_t) == 8, int64_t, int32_t>;
  constexpr bool kWiden = kAvx2 && kWidenWithF16c<scalar_t>;
  acc_t best[kFeatureBlock];
  acc_t x[kFeatureBlock];
  rel_t where[kFeatureBlock];
  int64_t where_long[kFeatureBlock];
  for (int64_t task = first; task < last; ++task) {
    const auto [seg, f0, w, begin, end] = a.split.at(task, a.offsets, a.width, a.num_rows);
    scalar_t* dst = a.out + seg * a.width + f0;
    int64_t* dst_arg = a.argmax + seg * a.width + f0;
    if (end <= begin) {  // empty set: 0 and no arg-max
      for (int64_t j = 0; j < w; ++j) {
        dst[j] = scalar_t(0);
        dst_arg[j] = -1;
      }
      continue;
    }
    const auto* row0 = as_acc<kWiden>(a.values + begin * a.width + f0, x, w);
    for (int64_t j = 0; j < w; ++j) best[j] = static_cast<acc_t>(row0[j]);
    if (end - begin <= std::numeric_limits<rel_t>::max()) {
      for (int64_t j = 0; j < w; ++j) where[j] = 0;
      for (int64_t r = begin + 1; r < end; ++r) {
        const auto* row = as_acc<kWiden>(a.values + r * a.width + f0, x, w);
        take_larger(row, best, where, static_cast<rel_t>(r - begin), w);
      }
      for (int64_t j = 0; j < w; ++j) dst_arg[j] = begin + where[j];
    } else {  // a segment longer than the relative index type can count (2^31 rows)
      for (int64_t j = 0; j < w; ++j) where_long[j] = begin;
      for (int64_t r = begin + 1; r < end; ++r) {
        const auto* row = as_acc<kWiden>(a.values + r * a.width + f0, x, w);
        take_larger(row, best, where_long, r, w);
      }
      for (int64_t j = 0; j < w; ++j) dst_arg[j] = where_long[j];
    }
    store_row<kAvx2>(best, dst, w);
  }
}

template <typename scalar_t>
HEPMS_TARGET_AVX2 void max_tasks_avx2(const MaxArgs<scalar_t>& a, int64_t first, int64_t last) {
  max_tasks<scalar_t, HEPMS_HAVE_AVX2_PATH>(a, first, last);
}

template <typename scalar_t>
void max_tasks_baseline(const MaxArgs<scalar_t>& a, int64_t first, int64_t last) {
  max_tasks<scalar_t, false>(a, first, last);
}

template <typename scalar_t>
void max_forward(const scalar_t* values, const int64_t* offsets, scalar_t* out, int64_t* argmax,
                 int64_t num_segments, int64_t width, int64_t num_rows) {
  const MaxArgs<scalar_t> args{values, offsets, out, argmax, width, num_rows,
                               TaskSplit(num_segments, width, num_rows)};
  run_tasks(args, &max_tasks_avx2<scalar_t>, &max_tasks_baseline<scalar_t>);
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
      const auto [seg, f0, w, begin, end] = split.at(task, offsets, width, num_rows);
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
  check_max_backward_args(grad_in, argmax_in, offsets_in, num_rows);
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
