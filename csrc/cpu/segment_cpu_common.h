// Work splitting shared by the CPU kernels.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "../segment.h"
#include "../segment_index.h"
#include "cpu_capability.h"

#if HEPMS_HAVE_AVX2_PATH
#include <immintrin.h>
#endif

// Forces a helper into its caller, so that a body shared by the baseline and AVX2 kernels is
// compiled for the instruction set of each caller.
#define HEPMS_ALWAYS_INLINE inline __attribute__((always_inline))

namespace hepms {

// Features handled by one task; the per-task accumulators (kFeatureBlock values) stay in L1.
constexpr int64_t kFeatureBlock = 128;

// Sums add kCascadeRows rows sequentially into a block, then combine the blocks pairwise
// (Cascade, below). Long segments are split into chunks of kCascadeRows * 2^k rows.
constexpr int64_t kCascadeRows = 64;
// The smallest row chunk worth a task of its own.
constexpr int64_t kMinChunkRows = 2048;

// Tasks are (row chunk, feature block) pairs. A row chunk is a whole segment unless some segment
// is long enough to keep one thread busy while the others idle (few huge sets): then every
// segment is split into chunks of `chunk_rows` rows, whose partial results are combined after.
// With many segments the split is over segments; with few segments and many features it is over
// feature blocks as well.
struct TaskSplit {
  int64_t num_segments;
  int64_t num_blocks;
  int64_t num_rows;
  int64_t chunk_rows = 0;          // 0: one chunk per segment
  std::vector<int64_t> first_chunk;  // chunked only: index of segment b's first chunk, [B + 1]
  int64_t elements_per_task;       // average rows x features touched by one task

  // allow_chunks = false: one chunk per segment whatever the lengths (kernels that need a whole
  // set in one task).
  TaskSplit(const int64_t* offsets, int64_t segments, int64_t width, int64_t rows,
            bool allow_chunks = true)
      : num_segments(segments), num_blocks(index::num_feature_blocks(width, kFeatureBlock)),
        num_rows(rows) {
    const int64_t threads = at::get_num_threads();
    const int64_t candidate = index::chunk_rows_for(rows, 4 * threads, kCascadeRows, kMinChunkRows);
    if (allow_chunks && threads > 1 && rows > candidate) {
      int64_t longest = 0;
      for (int64_t b = 0; b < segments; ++b) {
        int64_t begin = offsets[b], end = offsets[b + 1];
        index::clamp_segment(begin, end, rows);
        longest = std::max(longest, end - begin);
      }
      if (longest > candidate) {
        chunk_rows = candidate;
        first_chunk.resize(segments + 1);
        first_chunk[0] = 0;
        for (int64_t b = 0; b < segments; ++b) {
          int64_t begin = offsets[b], end = offsets[b + 1];
          index::clamp_segment(begin, end, rows);
          first_chunk[b + 1] = first_chunk[b] + index::num_chunks(begin, end, chunk_rows);
        }
      }
    }
    elements_per_task = std::max<int64_t>(
        1, (rows / std::max<int64_t>(1, num_units()) + 1) * std::min(width, kFeatureBlock));
  }

  bool chunked() const { return chunk_rows > 0; }
  // Row chunks: segments, or the chunks of all segments when chunked.
  int64_t num_units() const { return chunked() ? first_chunk.back() : num_segments; }
  int64_t num_tasks() const { return num_units() * num_blocks; }

  // Task t: segment `seg` ([seg_begin, seg_end)), its row chunk `unit` (global index) with rows
  // [begin, end), features [f0, f0 + w); every bound clamped to [0, num_rows).
  struct Task {
    int64_t seg, unit, f0, w, begin, end, seg_begin, seg_end;
  };
  Task at(int64_t t, const int64_t* offsets, int64_t width) const {
    Task task;
    task.unit = t / num_blocks;
    task.f0 = (t % num_blocks) * kFeatureBlock;
    task.w = std::min<int64_t>(kFeatureBlock, width - task.f0);
    if (!chunked()) {
      task.seg = task.unit;
      index::segment_bounds(offsets, task.seg, num_rows, task.seg_begin, task.seg_end);
      task.begin = task.seg_begin;
      task.end = task.seg_end;
    } else {
      task.seg = std::upper_bound(first_chunk.begin(), first_chunk.end(), task.unit) -
                 first_chunk.begin() - 1;
      index::segment_bounds(offsets, task.seg, num_rows, task.seg_begin, task.seg_end);
      index::chunk_bounds(task.seg_begin, task.seg_end, chunk_rows, task.unit - first_chunk[task.seg],
                          task.begin, task.end);
    }
    return task;
  }

  // Aim for chunks of at least ~32k elements so scheduling overhead stays negligible,
  // while keeping enough chunks to balance uneven segment lengths.
  int64_t grain() const { return std::max<int64_t>(1, 32768 / elements_per_task); }
};

// Pairwise (cascade) summation of blocks of kCascadeRows rows, as a binary counter: level l holds
// the sum of 2^l consecutive blocks. The rounding error then grows with log2(rows / 64) + 64
// instead of with the number of rows (over 1e6 float32 rows: ~1e-7 relative instead of ~1e-4).
// Full blocks are pushed; an incomplete last block is the `tail`; finish() adds the tail, then the
// levels from the lowest up. Because of this fixed order, a segment summed in chunks of
// kCascadeRows * 2^k rows (each chunk finished, the chunks pushed into an outer Cascade, the last
// incomplete chunk as its tail) gives the same bits as the whole segment in one pass.
template <typename acc_t>
struct Cascade {
  static constexpr int kLevels = 32;  // the top level adds sequentially after 2^31 blocks
  acc_t level[kLevels][kFeatureBlock];
  uint64_t count = 0;
  bool top_used = false;

  void reset() {
    count = 0;
    top_used = false;
  }

  HEPMS_ALWAYS_INLINE void push(acc_t* __restrict__ block, int64_t w) {
    int l = 0;
    while (l < kLevels - 1 && ((count >> l) & 1)) {
      const acc_t* __restrict__ lower = level[l];
      for (int64_t j = 0; j < w; ++j) block[j] = lower[j] + block[j];
      ++l;
    }
    acc_t* __restrict__ dst = level[l];
    if (l == kLevels - 1 && top_used) {
      for (int64_t j = 0; j < w; ++j) dst[j] = dst[j] + block[j];
    } else {
      for (int64_t j = 0; j < w; ++j) dst[j] = block[j];
      top_used = top_used || l == kLevels - 1;
    }
    ++count;
  }

  // out = tail (when has_tail) + the levels in increasing order; 0 when there is nothing.
  HEPMS_ALWAYS_INLINE void finish(const acc_t* __restrict__ tail, bool has_tail,
                                  acc_t* __restrict__ out, int64_t w) const {
    bool any = has_tail;
    if (has_tail) {
      for (int64_t j = 0; j < w; ++j) out[j] = tail[j];
    }
    for (int l = 0; l < kLevels; ++l) {
      const bool used = l < kLevels - 1 ? ((count >> l) & 1) != 0 : top_used;
      if (!used) continue;
      const acc_t* __restrict__ src = level[l];
      if (any) {
        for (int64_t j = 0; j < w; ++j) out[j] = out[j] + src[j];
      } else {
        for (int64_t j = 0; j < w; ++j) out[j] = src[j];
      }
      any = true;
    }
    if (!any) {
      for (int64_t j = 0; j < w; ++j) out[j] = acc_t(0);
    }
  }
};

// True when the offsets tile [0, num_rows) exactly (start at 0, non-decreasing, end at num_rows):
// then every output row of a backward is written and the output need not be zero-filled.
inline bool covers_all_rows(const int64_t* offsets, int64_t num_segments, int64_t num_rows) {
  if (offsets[0] != 0 || offsets[num_segments] != num_rows) return false;
  for (int64_t b = 0; b < num_segments; ++b)
    if (offsets[b + 1] < offsets[b]) return false;
  return true;
}

// Output of a backward ([num_rows, ...]), from PyTorch's allocator. When the offsets tile every
// row, each row is written by the kernel and the buffer need not be zeroed; otherwise (malformed
// offsets with validation off) rows outside every segment must read 0.
//
// The buffer is as large as the values and, on the CPU, freshly mapped memory: its first-touch
// page faults cost more than writing it (with 4 KiB pages). An earlier version asked the kernel
// for transparent huge pages on it (madvise(MADV_HUGEPAGE)); that was fast when free huge pages
// were at hand and several times slower when the kernel had to compact memory first (THP defrag
// "madvise"), so the forward+backward time depended on what the process had done before. Huge
// pages for PyTorch's allocations are the user's choice: THP_MEM_ALLOC_ENABLE=1 (see
// benchmarks/README.md).
inline at::Tensor allocate_row_output(const int64_t* offsets, int64_t num_segments,
                                      int64_t num_rows, at::IntArrayRef shape,
                                      const at::TensorOptions& options) {
  if (!covers_all_rows(offsets, num_segments, num_rows)) return at::zeros(shape, options);
  return at::empty(shape, options);
}

// ---------------------------------------------------------------------------------------------
// float16 <-> float32 rows. Without F16C every value goes through c10::Half's bit-twiddling
// software conversion, which the compiler does not vectorize (float16 pooling was 4-10x slower
// than float32). With F16C, 8 values convert in one instruction.
// ---------------------------------------------------------------------------------------------
#if HEPMS_HAVE_AVX2_PATH
HEPMS_TARGET_AVX2 inline void half_to_float_f16c(const c10::Half* __restrict__ src,
                                                 float* __restrict__ dst, int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    _mm256_storeu_ps(dst + j, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j))));
  for (; j < n; ++j) dst[j] = _cvtsh_ss(src[j].x);
}

HEPMS_TARGET_AVX2 inline void float_to_half_f16c(const float* __restrict__ src,
                                                 c10::Half* __restrict__ dst, int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + j),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + j), _MM_FROUND_TO_NEAREST_INT));
  for (; j < n; ++j) dst[j].x = _cvtss_sh(src[j], _MM_FROUND_TO_NEAREST_INT);
}
#endif

// True for the element types whose rows are widened into a float buffer by F16C on the AVX2 path.
template <typename scalar_t>
constexpr bool kWidenWithF16c = HEPMS_HAVE_AVX2_PATH && std::is_same_v<scalar_t, c10::Half>;

// The row as acc_t values: float16 rows are widened by F16C into `scratch` first (kWiden),
// other rows are read in place (the caller casts each value to acc_t inside its loop, which keeps
// float and double one pass over the row).
template <bool kWiden, typename scalar_t, typename acc_t>
HEPMS_ALWAYS_INLINE auto as_acc(const scalar_t* __restrict__ row, acc_t* __restrict__ scratch, int64_t w) {
#if HEPMS_HAVE_AVX2_PATH
  if constexpr (kWiden) {
    half_to_float_f16c(row, scratch, w);
    return static_cast<const acc_t*>(scratch);
  } else
#endif
  {
    (void)scratch;
    (void)w;
    return row;
  }
}

// Writes n accumulator values to an output row of scalar_t (rounded to nearest, as static_cast).
template <bool kAvx2, typename scalar_t, typename acc_t>
HEPMS_ALWAYS_INLINE void store_row(const acc_t* __restrict__ src, scalar_t* __restrict__ dst,
                                   int64_t n) {
#if HEPMS_HAVE_AVX2_PATH
  if constexpr (kAvx2 && kWidenWithF16c<scalar_t>) {
    float_to_half_f16c(src, dst, n);
    return;
  }
#endif
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<scalar_t>(src[j]);
}

// ---------------------------------------------------------------------------------------------
// The backwards that route a set's gradient to its first maximal row: segment_amax's (0 on every
// other row) and segment_mean_max's (the mean's gradient on every row, plus the max's on that
// row). Neither op keeps an arg-max, so the row is searched again from the values and the maxima.
// ---------------------------------------------------------------------------------------------

// out[r, f] = row_value[f] for every row r of set s, where fill_row_value(task, row_value)
// writes the task's t.w values (features [t.f0, t.f0 + t.w) of set t.seg); then
// at_max(&out[r, f], s, f) on the first row r of s where values[r, f] equals maxima[s, f] (or is
// NaN when the maximum is NaN): the row segment_max's arg-max names (ties keep the first row).
// maxima is [B, width]. Phase 1 is split like the forwards (row chunks for huge sets when several
// threads run): each task writes its rows and finds, per feature, its first maximal row (a
// branch-free select, like the forward's); when the sets are not split it applies at_max itself.
// Phase 2 (split sets only), per set and feature: at_max on the row of the first chunk that found
// one, after every row has been written in phase 1.
template <typename scalar_t, typename FillRowValue, typename AtMax>
void first_max_row_backward(const scalar_t* __restrict__ values, const scalar_t* __restrict__ maxima,
                            const int64_t* __restrict__ offsets, scalar_t* __restrict__ out,
                            int64_t num_segments, int64_t width, int64_t num_rows,
                            const FillRowValue& fill_row_value, const AtMax& at_max) {
  const TaskSplit split(offsets, num_segments, width, num_rows);
  // Only split sets need the per-chunk results; a whole set's task applies at_max itself.
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
      fill_row_value(t, row_value);
      const scalar_t* m = maxima + t.seg * width + t.f0;
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
        for (int64_t j = 0; j < t.w; ++j)
          if (found[j] >= 0) at_max(out + found[j] * width + t.f0 + j, t.seg, t.f0 + j);
      }
    }
  });
  if (!split.chunked()) return;
  at::parallel_for(0, num_segments, 1024, [&](int64_t first, int64_t last) {
    for (int64_t seg = first; seg < last; ++seg) {
      const int64_t c0 = split.first_chunk[seg], c1 = split.first_chunk[seg + 1];
      for (int64_t f = 0; f < width; ++f) {
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t row = first_row[c * width + f];
          if (row >= 0) {
            at_max(out + row * width + f, seg, f);
            break;
          }
        }
      }
    }
  });
}

// Runs the tasks of args.split in parallel, with the AVX2 variant when it is selected
// (cpu_capability()) and compiled in. `avx2` and `baseline` are the same always-inline body
// instantiated in a function with and without __attribute__((target)): the parallel_for lambda
// itself cannot carry the target attribute (OpenMP outlines it into a plain function).
template <typename Args>
void run_tasks(const Args& args, void (*avx2)(const Args&, int64_t, int64_t),
               void (*baseline)(const Args&, int64_t, int64_t)) {
  const bool use_avx2 = HEPMS_HAVE_AVX2_PATH && cpu_capability() == CpuCapability::kAvx2;
  const auto tasks = use_avx2 ? avx2 : baseline;
  at::parallel_for(0, args.split.num_tasks(), args.split.grain(),
                   [&](int64_t first, int64_t last) { tasks(args, first, last); });
}

}  // namespace hepms
