// Sum / mean family on the CPU: segment_sum, segment_mean and their backward, segment_gather.
//
// Work is split into tasks (row chunk, feature block) handed to at::parallel_for (TaskSplit), so
// many short segments spread over threads, few segments with many features use every thread, and
// few huge segments are split into row chunks with partial sums. Inside a task the rows are
// streamed once and accumulated into a small local buffer whose inner loop over features the
// compiler vectorizes, in blocks of kCascadeRows rows combined pairwise (Cascade) so that long
// sums stay accurate.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <vector>

#include "../segment.h"
#include "segment_cpu_common.h"

namespace hepms {
namespace {

// Arguments of the forward, shared by the tasks.
template <typename scalar_t>
struct SumArgs {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* __restrict__ values;
  const int64_t* __restrict__ offsets;
  scalar_t* __restrict__ out;
  acc_t* __restrict__ partial;  // chunked split: one accumulator row per chunk, else unused
  int64_t width;
  const TaskSplit& split;
};

// Cascade sum of rows [begin, end), features [f0, f0 + w), into result[0, w).
template <typename scalar_t, bool kWiden, typename acc_t>
HEPMS_ALWAYS_INLINE void sum_rows(const SumArgs<scalar_t>& a, int64_t begin, int64_t end,
                                  int64_t f0, int64_t w, acc_t* __restrict__ block,
                                  acc_t* __restrict__ widened, Cascade<acc_t>& cascade,
                                  acc_t* __restrict__ result) {
  if (end - begin <= kCascadeRows) {  // short sets (jets): one block, no cascade
    for (int64_t j = 0; j < w; ++j) result[j] = acc_t(0);
    for (int64_t r = begin; r < end; ++r) {
      const auto* row = as_acc<kWiden>(a.values + r * a.width + f0, widened, w);
      for (int64_t j = 0; j < w; ++j) result[j] += static_cast<acc_t>(row[j]);
    }
    return;  // (a full block of exactly kCascadeRows rows: the same as push + finish)
  }
  cascade.reset();
  bool has_tail = false;
  for (int64_t b0 = begin; b0 < end; b0 += kCascadeRows) {
    const int64_t b1 = std::min(b0 + kCascadeRows, end);
    for (int64_t j = 0; j < w; ++j) block[j] = acc_t(0);
    for (int64_t r = b0; r < b1; ++r) {
      const auto* row = as_acc<kWiden>(a.values + r * a.width + f0, widened, w);
      for (int64_t j = 0; j < w; ++j) block[j] += static_cast<acc_t>(row[j]);
    }
    if (b1 - b0 == kCascadeRows) {
      cascade.push(block, w);
    } else {
      has_tail = true;
    }
  }
  cascade.finish(block, has_tail, result, w);
}

// Tasks [first, last) of the forward. Inlined into a baseline and an AVX2 caller (below), so the
// same source is compiled for each instruction set.
template <typename scalar_t, bool kMean, bool kAvx2>
HEPMS_ALWAYS_INLINE void sum_tasks(const SumArgs<scalar_t>& a, int64_t first, int64_t last) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kWiden = kAvx2 && kWidenWithF16c<scalar_t>;
  acc_t acc[kFeatureBlock];
  acc_t block[kFeatureBlock];
  acc_t widened[kWiden ? kFeatureBlock : 1];
  Cascade<acc_t> cascade;
  for (int64_t task = first; task < last; ++task) {
    const auto t = a.split.at(task, a.offsets, a.width);
    sum_rows<scalar_t, kWiden>(a, t.begin, t.end, t.f0, t.w, block, widened, cascade, acc);
    if (a.split.chunked()) {  // a partial result: combined by combine_chunks
      acc_t* dst = a.partial + t.unit * a.width + t.f0;
      for (int64_t j = 0; j < t.w; ++j) dst[j] = acc[j];
      continue;
    }
    if (kMean && t.end > t.begin) {
      const acc_t scale = acc_t(1) / static_cast<acc_t>(t.end - t.begin);
      for (int64_t j = 0; j < t.w; ++j) acc[j] *= scale;
    }
    store_row<kAvx2>(acc, a.out + t.seg * a.width + t.f0, t.w);
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

// Chunked split: segment b's result from its chunks' partial sums. Full chunks (chunk_rows =
// kCascadeRows * 2^k rows) enter a Cascade as blocks of its level 0 and the last, incomplete one
// is the tail, which reproduces the one-pass cascade bit for bit (see Cascade). Plain C++ (no
// target variants): it adds a few rows per segment, in the same order in both.
template <typename scalar_t, bool kMean>
void combine_chunks(const SumArgs<scalar_t>& a) {
  using acc_t = at::opmath_type<scalar_t>;
  const TaskSplit& split = a.split;
  at::parallel_for(0, split.num_segments * split.num_blocks, 1, [&](int64_t first, int64_t last) {
    Cascade<acc_t> cascade;
    acc_t acc[kFeatureBlock];
    for (int64_t task = first; task < last; ++task) {
      const int64_t seg = task / split.num_blocks;
      const int64_t f0 = (task % split.num_blocks) * kFeatureBlock;
      const int64_t w = std::min<int64_t>(kFeatureBlock, a.width - f0);
      int64_t begin, end;
      index::segment_bounds(a.offsets, seg, split.num_rows, begin, end);
      cascade.reset();
      const int64_t c0 = split.first_chunk[seg], c1 = split.first_chunk[seg + 1];
      const bool has_tail = (end - begin) % split.chunk_rows != 0;
      const int64_t full = has_tail ? c1 - 1 : c1;
      for (int64_t c = c0; c < full; ++c) {
        for (int64_t j = 0; j < w; ++j) acc[j] = a.partial[c * a.width + f0 + j];
        cascade.push(acc, w);
      }
      cascade.finish(a.partial + (c1 - 1) * a.width + f0, has_tail, acc, w);
      if (kMean && end > begin) {
        const acc_t scale = acc_t(1) / static_cast<acc_t>(end - begin);
        for (int64_t j = 0; j < w; ++j) acc[j] *= scale;
      }
      scalar_t* dst = a.out + seg * a.width + f0;
      for (int64_t j = 0; j < w; ++j) dst[j] = static_cast<scalar_t>(acc[j]);
    }
  });
}

template <typename scalar_t, bool kMean>
void sum_forward(const scalar_t* values, const int64_t* offsets, scalar_t* out,
                 int64_t num_segments, int64_t width, int64_t num_rows) {
  using acc_t = at::opmath_type<scalar_t>;
  const TaskSplit split(offsets, num_segments, width, num_rows);
  std::vector<acc_t> partial(split.chunked() ? split.num_units() * width : 0);
  const SumArgs<scalar_t> args{values, offsets, out, partial.data(), width, split};
  run_tasks(args, &sum_tasks_avx2<scalar_t, kMean>, &sum_tasks_baseline<scalar_t, kMean>);
  if (split.chunked()) combine_chunks<scalar_t, kMean>(args);
}

// out[r] = src[segment of r] (divided by the segment length for the mean's backward).
template <typename scalar_t, bool kMean>
void gather_rows(const scalar_t* __restrict__ src, const int64_t* __restrict__ offsets,
                 scalar_t* __restrict__ out, int64_t num_segments, int64_t width,
                 int64_t num_rows) {
  using acc_t = at::opmath_type<scalar_t>;
  const TaskSplit split(offsets, num_segments, width, num_rows);
  at::parallel_for(0, split.num_tasks(), split.grain(), [&](int64_t first, int64_t last) {
    scalar_t row_value[kFeatureBlock];
    for (int64_t task = first; task < last; ++task) {
      const auto t = split.at(task, offsets, width);
      if (t.end <= t.begin) continue;
      const scalar_t* s = src + t.seg * width + t.f0;
      if (kMean) {
        const acc_t scale = acc_t(1) / static_cast<acc_t>(t.seg_end - t.seg_begin);
        for (int64_t j = 0; j < t.w; ++j)
          row_value[j] = static_cast<scalar_t>(static_cast<acc_t>(s[j]) * scale);
      } else {
        for (int64_t j = 0; j < t.w; ++j) row_value[j] = s[j];
      }
      for (int64_t r = t.begin; r < t.end; ++r) {
        scalar_t* dst = out + r * width + t.f0;
        for (int64_t j = 0; j < t.w; ++j) dst[j] = row_value[j];
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
