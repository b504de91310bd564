// Work splitting shared by the CPU kernels.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

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

}  // namespace hepms
