// Work split shared by the CUDA kernels: one warp per segment, lanes arranged as
// (row lanes x column lanes). With F >= 32 all 32 lanes cover consecutive features of one row
// (coalesced 128-byte reads along F). With fewer features the warp reads several consecutive
// rows at once (e.g. F = 16: 2 rows x 16 features, F = 1: 32 rows), so short rows still give
// full, coalesced warps, and the row lanes are combined with warp shuffles at the end.
// No atomics anywhere: every output element is written by exactly one lane (deterministic).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>

namespace hepms {
namespace cuda {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;
constexpr int kThreadsPerBlock = kWarp * kWarpsPerBlock;
constexpr unsigned kFullMask = 0xffffffffu;

struct LaneLayout {
  int cols;  // column lanes: min(32, next power of two >= F)
  int rows;  // row lanes: 32 / cols
};

inline LaneLayout lane_layout(int64_t width) {
  int cols = 1;
  while (cols < kWarp && cols < width) cols *= 2;
  return {cols, kWarp / cols};
}

inline unsigned num_blocks_for_segments(int64_t num_segments) {
  return static_cast<unsigned>((num_segments + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

// Segment bounds clamped to [0, num_rows) (see csrc/segment.h).
__device__ __forceinline__ void segment_bounds(const int64_t* __restrict__ offsets, int64_t seg,
                                               int64_t num_rows, int64_t& begin, int64_t& end) {
  begin = offsets[seg];
  end = offsets[seg + 1];
  begin = begin < 0 ? 0 : (begin > num_rows ? num_rows : begin);
  end = end < begin ? begin : (end > num_rows ? num_rows : end);
}

}  // namespace cuda
}  // namespace hepms
