// Index arithmetic shared by the CPU and CUDA kernels: segment bounds, the split of long segments
// into row chunks and of wide rows into feature blocks, and the CUDA warp lane layout.
//
// Plain inline functions for g++ and __host__ __device__ ones for nvcc, so the CUDA kernels run
// exactly the arithmetic that the CPU kernels use and that tests/test_ops.py checks on the CPU
// (through hepms._C.segment_index_*), without a GPU.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define HEPMS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define HEPMS_HOST_DEVICE inline
#endif

namespace hepms {
namespace index {

// Clamps segment [begin, end) to the valid rows [0, num_rows); end < begin becomes empty.
// Malformed offsets (validation switched off) can give meaningless numbers but never an
// out-of-bounds access.
HEPMS_HOST_DEVICE void clamp_segment(int64_t& begin, int64_t& end, int64_t num_rows) {
  begin = begin < 0 ? 0 : (begin > num_rows ? num_rows : begin);
  end = end < begin ? begin : (end > num_rows ? num_rows : end);
}

// Bounds of segment `seg` read from the offsets and clamped.
HEPMS_HOST_DEVICE void segment_bounds(const int64_t* offsets, int64_t seg, int64_t num_rows,
                                      int64_t& begin, int64_t& end) {
  begin = offsets[seg];
  end = offsets[seg + 1];
  clamp_segment(begin, end, num_rows);
}

HEPMS_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Number of blocks of `block` features covering a row of `width` features (at least 1).
HEPMS_HOST_DEVICE int64_t num_feature_blocks(int64_t width, int64_t block) {
  const int64_t n = ceil_div(width, block);
  return n < 1 ? 1 : n;
}

// Rows of a long segment are split into chunks of `chunk_rows` rows (the last one shorter); an
// empty segment still has one (empty) chunk, so that its output is written.
HEPMS_HOST_DEVICE int64_t num_chunks(int64_t begin, int64_t end, int64_t chunk_rows) {
  const int64_t n = ceil_div(end - begin, chunk_rows);
  return n < 1 ? 1 : n;
}

// Rows [chunk_begin, chunk_end) of chunk c of segment [begin, end).
HEPMS_HOST_DEVICE void chunk_bounds(int64_t begin, int64_t end, int64_t chunk_rows, int64_t c,
                                    int64_t& chunk_begin, int64_t& chunk_end) {
  chunk_begin = begin + c * chunk_rows;
  if (chunk_begin > end) chunk_begin = end;
  chunk_end = chunk_begin + chunk_rows;
  if (chunk_end > end) chunk_end = end;
}

// Rows per chunk when `num_rows` rows should be spread over about `target_chunks` chunks:
// `base` rows times a power of two (so that a cascade sum over blocks of `base` rows splits at
// block-tree boundaries and gives the same bits split or not), at least `min_rows`.
HEPMS_HOST_DEVICE int64_t chunk_rows_for(int64_t num_rows, int64_t target_chunks, int64_t base,
                                         int64_t min_rows) {
  const int64_t want = ceil_div(num_rows, target_chunks < 1 ? 1 : target_chunks);
  int64_t rows = base;
  while (rows < want || rows < min_rows) rows *= 2;
  return rows;
}

// CUDA warp layout: column lanes = min(32, next power of two >= width), row lanes = 32 / that.
// With F >= 32 the 32 lanes read consecutive features of one row (coalesced); with fewer
// features the warp reads several consecutive rows at once.
struct LaneLayout {
  int cols;
  int rows;
};

HEPMS_HOST_DEVICE LaneLayout lane_layout(int64_t width, int warp = 32) {
  int cols = 1;
  while (cols < warp && cols < width) cols *= 2;
  return LaneLayout{cols, warp / cols};
}

}  // namespace index
}  // namespace hepms
