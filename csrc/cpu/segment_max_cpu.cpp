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
#include <vector>

#include "../segment.h"
#include "segment_cpu_common.h"

namespace hepms {
namespace {

// Arguments of the forward, shared by the tasks.
template <typename scalar_t>
struct MaxArgs {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* __restrict__ values;
  const int64_t* __restrict__ offsets;
  scalar_t* __restrict__ out;
  int64_t* __restrict__ argmax;
  acc_t* __restrict__ partial;            // chunked split: each chunk's maximum, else unused
  int64_t* __restrict__ partial_argmax;   // and its row (-1: empty chunk)
  int64_t width;
  const TaskSplit& split;
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
  int64_t discarded[kFeatureBlock];  // the arg-max of segment_amax, which does not return it
  for (int64_t task = first; task < last; ++task) {
    const auto t = a.split.at(task, a.offsets, a.width);
    const int64_t f0 = t.f0, w = t.w, begin = t.begin, end = t.end;
    int64_t* dst_arg = a.split.chunked() ? a.partial_argmax + t.unit * a.width + f0
                       : a.argmax != nullptr ? a.argmax + t.seg * a.width + f0
                                             : discarded;
    if (end <= begin) {  // empty set: 0 and no arg-max
      for (int64_t j = 0; j < w; ++j) best[j] = acc_t(0);
      for (int64_t j = 0; j < w; ++j) dst_arg[j] = -1;
    } else {
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
    }
    if (a.split.chunked()) {  // a partial result: combined by combine_max_chunks
      acc_t* dst = a.partial + t.unit * a.width + f0;
      for (int64_t j = 0; j < w; ++j) dst[j] = best[j];
    } else {
      store_row<kAvx2>(best, a.out + t.seg * a.width + f0, w);
    }
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

// Chunked split: each segment's maximum from its chunks' maxima, taken in row order with the
// rule of the serial scan (a later chunk wins when it is larger or the first NaN), so the result
// and the arg-max are those of one pass.
template <typename scalar_t>
void combine_max_chunks(const MaxArgs<scalar_t>& a) {
  using acc_t = at::opmath_type<scalar_t>;
  const TaskSplit& split = a.split;
  at::parallel_for(0, split.num_segments, 1, [&](int64_t first, int64_t last) {
    for (int64_t seg = first; seg < last; ++seg) {
      const int64_t c0 = split.first_chunk[seg], c1 = split.first_chunk[seg + 1];
      for (int64_t f = 0; f < a.width; ++f) {
        acc_t best = a.partial[c0 * a.width + f];
        int64_t where = a.partial_argmax[c0 * a.width + f];
        for (int64_t c = c0 + 1; c < c1; ++c) {
          const acc_t x = a.partial[c * a.width + f];
          const int64_t row = a.partial_argmax[c * a.width + f];
          if (row >= 0 && (where < 0 || (!(x <= best) && best == best))) {
            best = x;
            where = row;
          }
        }
        a.out[seg * a.width + f] = static_cast<scalar_t>(best);
        if (a.argmax != nullptr) a.argmax[seg * a.width + f] = where;
      }
    }
  });
}

template <typename scalar_t>
void max_forward(const scalar_t* values, const int64_t* offsets, scalar_t* out, int64_t* argmax,
                 int64_t num_segments, int64_t width, int64_t num_rows) {
  using acc_t = at::opmath_type<scalar_t>;
  const TaskSplit split(offsets, num_segments, width, num_rows);
  const int64_t partial_size = split.chunked() ? split.num_units() * width : 0;
  std::vector<acc_t> partial(partial_size);
  std::vector<int64_t> partial_argmax(partial_size);
  const MaxArgs<scalar_t> args{values, offsets, out, argmax, partial.data(), partial_argmax.data(),
                               width, split};
  run_tasks(args, &max_tasks_avx2<scalar_t>, &max_tasks_baseline<scalar_t>);
  if (split.chunked()) combine_max_chunks(args);
}

// grad_values[argmax[s, f], f] = grad[s, f]; every other entry 0. Each task zeroes the rows of
// its own segment and writes into them, so the output is filled in a single parallel pass.
template <typename scalar_t>
void max_backward(const scalar_t* __restrict__ grad, const int64_t* __restrict__ argmax,
                  const int64_t* __restrict__ offsets, scalar_t* __restrict__ out,
                  int64_t num_segments, int64_t width, int64_t num_rows) {
  const TaskSplit split(offsets, num_segments, width, num_rows);
  at::parallel_for(0, split.num_tasks(), split.grain(), [&](int64_t first, int64_t last) {
    for (int64_t task = first; task < last; ++task) {
      const auto [seg, unit, f0, w, begin, end, seg_begin, seg_end] = split.at(task, offsets, width);
      for (int64_t r = begin; r < end; ++r)
        std::memset(out + r * width + f0, 0, sizeof(scalar_t) * w);
      const scalar_t* g = grad + seg * width + f0;
      const int64_t* a = argmax + seg * width + f0;
      for (int64_t j = 0; j < w; ++j) {
        // Only the arg-max rows inside this task's rows (its segment, or its chunk of a split
        // segment): one outside its own segment (a corrupted argmax tensor) is ignored rather
        // than written, as it could race with another task or fall out of bounds.
        if (a[j] >= begin && a[j] < end) out[a[j] * width + f0 + j] = g[j];
      }
    }
  });
}

// Backward of segment_amax, which keeps no arg-max: grad_values[r, f] = grad[s, f] for the first
// row r of segment s where values[r, f] equals the maximum (or is NaN when the maximum is), the
// row segment_max's arg-max names; 0 elsewhere (first_max_row_backward).
template <typename scalar_t>
void amax_backward(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ values,
                   const scalar_t* __restrict__ maxima, const int64_t* __restrict__ offsets,
                   scalar_t* __restrict__ out, int64_t num_segments, int64_t width,
                   int64_t num_rows) {
  first_max_row_backward(
      values, maxima, offsets, out, num_segments, width, num_rows,
      [](const TaskSplit::Task& t, scalar_t* row_value) {
        for (int64_t j = 0; j < t.w; ++j) row_value[j] = scalar_t(0);
      },
      [&](scalar_t* dst, int64_t seg, int64_t f) { *dst = grad[seg * width + f]; });
}

}  // namespace

at::Tensor segment_amax_cpu(const at::Tensor& values_in, const at::Tensor& offsets_in) {
  check_pool_args("segment_amax", values_in, offsets_in);
  const at::Tensor values = values_in.contiguous();
  const at::Tensor offsets = offsets_in.contiguous();
  const int64_t num_segments = offsets.numel() - 1;
  at::Tensor out = at::empty(pooled_shape(values, num_segments), values.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "segment_amax", [&] {
    max_forward<scalar_t>(values.const_data_ptr<scalar_t>(), offsets.const_data_ptr<int64_t>(),
                          out.mutable_data_ptr<scalar_t>(), nullptr, num_segments, row_width(values),
                          values.size(0));
  });
  return out;
}

at::Tensor segment_amax_backward_cpu(const at::Tensor& grad_in, const at::Tensor& values_in,
                                     const at::Tensor& out_in, const at::Tensor& offsets_in) {
  check_amax_backward_args(grad_in, values_in, out_in, offsets_in);
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor values = values_in.contiguous();
  const at::Tensor maxima = out_in.contiguous();
  const at::Tensor offsets = offsets_in.contiguous();
  const int64_t num_segments = offsets.numel() - 1;
  const int64_t num_rows = values.size(0);
  at::Tensor out = allocate_row_output(offsets.const_data_ptr<int64_t>(), num_segments, num_rows,
                                       values.sizes(), grad.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "segment_amax_backward", [&] {
    amax_backward<scalar_t>(grad.const_data_ptr<scalar_t>(), values.const_data_ptr<scalar_t>(),
                            maxima.const_data_ptr<scalar_t>(), offsets.const_data_ptr<int64_t>(),
                            out.mutable_data_ptr<scalar_t>(), num_segments, row_width(grad), num_rows);
  });
  return out;
}

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
