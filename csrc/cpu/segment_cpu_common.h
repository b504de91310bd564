// Work splitting shared by the CPU kernels.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

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

}  // namespace hepms
