// Work splitting shared by the CPU kernels.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <c10/util/Half.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../segment.h"
#include "cpu_capability.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if HEPMS_HAVE_AVX2_PATH
#include <immintrin.h>
#endif

// Forces a helper into its caller, so that a body shared by the baseline and AVX2 kernels is
// compiled for the instruction set of each caller.
#define HEPMS_ALWAYS_INLINE inline __attribute__((always_inline))

namespace hepms {

// Features handled by one task; the per-task accumulators (kFeatureBlock values) stay in L1.
constexpr int64_t kFeatureBlock = 128;

// Tasks are (segment, feature block) pairs: with many segments the split is over segments,
// with few segments and many features it is over feature blocks as well.
struct TaskSplit {
  int64_t num_segments;
  int64_t num_blocks;
  int64_t elements_per_task;  // average rows x features touched by one task

  TaskSplit(int64_t segments, int64_t width, int64_t rows)
      : num_segments(segments),
        num_blocks(std::max<int64_t>(1, (width + kFeatureBlock - 1) / kFeatureBlock)),
        elements_per_task(std::max<int64_t>(
            1, (rows / std::max<int64_t>(1, segments) + 1) * std::min(width, kFeatureBlock))) {}

  int64_t num_tasks() const { return num_segments * num_blocks; }

  // Task t: segment `seg`, features [f0, f0 + w), rows [begin, end) clamped to [0, num_rows).
  struct Task {
    int64_t seg, f0, w, begin, end;
  };
  Task at(int64_t t, const int64_t* offsets, int64_t width, int64_t num_rows) const {
    Task task;
    task.seg = t / num_blocks;
    task.f0 = (t % num_blocks) * kFeatureBlock;
    task.w = std::min<int64_t>(kFeatureBlock, width - task.f0);
    task.begin = offsets[task.seg];
    task.end = offsets[task.seg + 1];
    clamp_segment(task.begin, task.end, num_rows);
    return task;
  }

  // Aim for chunks of at least ~32k elements so scheduling overhead stays negligible,
  // while keeping enough chunks to balance uneven segment lengths.
  int64_t grain() const { return std::max<int64_t>(1, 32768 / elements_per_task); }
};

// True when the offsets tile [0, num_rows) exactly (start at 0, non-decreasing, end at num_rows):
// then every output row of a backward is written and the output need not be zero-filled.
inline bool covers_all_rows(const int64_t* offsets, int64_t num_segments, int64_t num_rows) {
  if (offsets[0] != 0 || offsets[num_segments] != num_rows) return false;
  for (int64_t b = 0; b < num_segments; ++b)
    if (offsets[b + 1] < offsets[b]) return false;
  return true;
}

// Ask the kernel to back a freshly allocated, large output with transparent huge pages before we
// first touch it. A backward output is as large as the input ([N, F]); with 4 KiB pages its
// first-touch page faults cost more than writing it (measured here: values.clone() is 3-4x slower
// than a copy into an existing buffer). With THP in "madvise" mode (the common default) torch's
// allocator does not ask for huge pages unless THP_MEM_ALLOC_ENABLE=1, so we ask for this buffer.
// Only whole 2 MiB pages inside the buffer are affected; failures (THP disabled) are harmless.
inline void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
  if (data == nullptr || bytes < 4 * kHugePage) return;
  const uintptr_t start = reinterpret_cast<uintptr_t>(data);
  const uintptr_t begin = (start + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (start + bytes) & ~(kHugePage - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

// Output of a backward ([num_rows, ...]). When the offsets tile every row, each row is written by
// the kernel and the buffer need not be zeroed (it gets huge pages instead, see above); otherwise
// (malformed offsets with validation off) rows outside every segment must read 0.
inline at::Tensor allocate_row_output(const int64_t* offsets, int64_t num_segments,
                                      int64_t num_rows, at::IntArrayRef shape,
                                      const at::TensorOptions& options) {
  if (!covers_all_rows(offsets, num_segments, num_rows)) return at::zeros(shape, options);
  at::Tensor out = at::empty(shape, options);
  advise_huge_pages(out.data_ptr(), out.nbytes());
  return out;
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
