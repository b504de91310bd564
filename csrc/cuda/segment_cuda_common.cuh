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

#include "../segment_index.h"

namespace hepms {
namespace cuda {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;
constexpr int kThreadsPerBlock = kWarp * kWarpsPerBlock;
constexpr unsigned kFullMask = 0xffffffffu;

// Lane layout and segment bounds: the host/device functions of csrc/segment_index.h, which the
// CPU kernels use too and tests/test_ops.py checks on the CPU.
using LaneLayout = index::LaneLayout;

inline LaneLayout lane_layout(int64_t width) { return index::lane_layout(width, kWarp); }

// Grid of the pooling kernels: one warp per segment.
inline unsigned num_blocks_for_segments(int64_t num_segments) {
  return static_cast<unsigned>((num_segments + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

// Grid of the scattering backwards: one thread per (segment, feature), `total` of them.
inline unsigned num_blocks_for_elements(int64_t total) {
  return static_cast<unsigned>((total + kThreadsPerBlock - 1) / kThreadsPerBlock);
}

// Launches `kernel` on `blocks` blocks of kThreadsPerBlock threads on the current stream (of the
// device the caller's CUDAGuard selected) and checks the launch, as every kernel here is run.
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), unsigned blocks, Args... args) {
  kernel<<<blocks, kThreadsPerBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

using index::segment_bounds;

}  // namespace cuda
}  // namespace hepms
