// Segment (CSR) reductions shared declarations.
//
// values: [N, ...] (any trailing shape, treated as [N, F] with F = prod(trailing))
// offsets: int64 [B + 1]; segment b covers rows [offsets[b], offsets[b + 1]).
//
// The kernels clamp every segment to [0, N) and treat end < begin as empty, so malformed offsets
// (when the Python-side validation is switched off) can give meaningless numbers but never an
// out-of-bounds access.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "segment_index.h"

namespace hepms {

// Shape of the pooled output: [B, trailing...].
inline std::vector<int64_t> pooled_shape(const at::Tensor& values, int64_t num_segments) {
  std::vector<int64_t> shape(values.sizes().begin(), values.sizes().end());
  shape[0] = num_segments;
  return shape;
}

// Shape of a per-row output (backward): [num_rows, trailing...] of `like`.
inline std::vector<int64_t> row_shape(const at::Tensor& like, int64_t num_rows) {
  std::vector<int64_t> shape(like.sizes().begin(), like.sizes().end());
  shape[0] = num_rows;
  return shape;
}

// Number of features per row (product of trailing dims); 1 for 1-D values.
inline int64_t row_width(const at::Tensor& t) {
  int64_t width = 1;
  for (int64_t d = 1; d < t.dim(); ++d) width *= t.size(d);
  return width;
}

// Argument checks common to every op (cheap metadata only; content is checked in Python).
inline void check_pool_args(const char* op, const at::Tensor& values, const at::Tensor& offsets) {
  TORCH_CHECK(values.dim() >= 1, op, ": values must have at least 1 dimension, got a scalar");
  TORCH_CHECK(offsets.dim() == 1 && offsets.numel() >= 1, op,
              ": offsets must be 1-D with at least one entry, got shape ", offsets.sizes());
  TORCH_CHECK(offsets.scalar_type() == at::kLong, op, ": offsets must be int64, got ",
              offsets.scalar_type());
  TORCH_CHECK(values.device() == offsets.device(), op, ": values on ", values.device(),
              " but offsets on ", offsets.device());
  TORCH_CHECK(at::isFloatingType(values.scalar_type()), op,
              ": values must be floating point, got ", values.scalar_type());
}

// Checks of segment_gather (backward of sum / mean): src holds one row per segment.
inline void check_gather_args(const at::Tensor& src, const at::Tensor& offsets, int64_t num_rows) {
  check_pool_args("segment_gather", src, offsets);
  TORCH_CHECK(num_rows >= 0, "segment_gather: num_rows must be >= 0, got ", num_rows);
  TORCH_CHECK(src.size(0) == offsets.numel() - 1, "segment_gather: src has ", src.size(0),
              " rows but offsets describe ", offsets.numel() - 1, " segments");
}

// Checks of segment_max_backward: grad and argmax hold one row per segment, argmax is int64.
inline void check_max_backward_args(const at::Tensor& grad, const at::Tensor& argmax,
                                    const at::Tensor& offsets, int64_t num_rows) {
  check_pool_args("segment_max_backward", grad, offsets);
  TORCH_CHECK(num_rows >= 0, "segment_max_backward: num_rows must be >= 0, got ", num_rows);
  TORCH_CHECK(argmax.scalar_type() == at::kLong && argmax.sizes() == grad.sizes(),
              "segment_max_backward: argmax must be int64 with the shape of grad ", grad.sizes(),
              ", got ", argmax.scalar_type(), " ", argmax.sizes());
  TORCH_CHECK(argmax.device() == grad.device(), "segment_max_backward: argmax on ", argmax.device(),
              " but grad on ", grad.device());
  TORCH_CHECK(grad.size(0) == offsets.numel() - 1, "segment_max_backward: grad has ", grad.size(0),
              " rows but offsets describe ", offsets.numel() - 1, " segments");
}

// Checks of segment_softmax_backward: grad and the softmax output have the values' shape.
inline void check_softmax_backward_args(const at::Tensor& grad, const at::Tensor& out,
                                        const at::Tensor& offsets) {
  check_pool_args("segment_softmax_backward", grad, offsets);
  TORCH_CHECK(out.sizes() == grad.sizes() && out.scalar_type() == grad.scalar_type() &&
                  out.device() == grad.device(),
              "segment_softmax_backward: the softmax output (", out.scalar_type(), " ", out.sizes(),
              " on ", out.device(), ") must match grad (", grad.scalar_type(), " ", grad.sizes(),
              " on ", grad.device(), ")");
}

// Checks of segment_amax_backward: grad and the maximum [B, ...], values [N, ...], same dtype.
inline void check_amax_backward_args(const at::Tensor& grad, const at::Tensor& values,
                                     const at::Tensor& out, const at::Tensor& offsets) {
  check_pool_args("segment_amax_backward", values, offsets);
  TORCH_CHECK(grad.sizes() == out.sizes() && grad.dim() == values.dim() &&
                  grad.size(0) == offsets.numel() - 1 &&
                  grad.sizes().slice(1) == values.sizes().slice(1),
              "segment_amax_backward: grad ", grad.sizes(), " and the maximum ", out.sizes(),
              " must have one row per segment (", offsets.numel() - 1, ") of the values' rows ",
              values.sizes());
  TORCH_CHECK(grad.scalar_type() == values.scalar_type() && out.scalar_type() == values.scalar_type() &&
                  grad.device() == values.device() && out.device() == values.device(),
              "segment_amax_backward: grad, values and the maximum must share dtype and device");
}

// Checks of segment_mean_max_backward: values [N, F] (or [N]), the forward's output and grad
// [B, 2F] (mean columns, then max columns), one dtype and device.
inline void check_mean_max_backward_args(const at::Tensor& grad, const at::Tensor& values,
                                         const at::Tensor& out, const at::Tensor& offsets) {
  check_pool_args("segment_mean_max_backward", values, offsets);
  TORCH_CHECK(values.dim() <= 2, "segment_mean_max_backward: values must be 1-D or 2-D, got shape ",
              values.sizes());
  const int64_t width = row_width(values);
  TORCH_CHECK(grad.dim() == 2 && grad.sizes() == out.sizes() &&
                  grad.size(0) == offsets.numel() - 1 && grad.size(1) == 2 * width,
              "segment_mean_max_backward: grad ", grad.sizes(), " and the output ", out.sizes(),
              " must be [", offsets.numel() - 1, ", ", 2 * width, "] for values ", values.sizes());
  TORCH_CHECK(grad.scalar_type() == values.scalar_type() && out.scalar_type() == values.scalar_type() &&
                  grad.device() == values.device() && out.device() == values.device(),
              "segment_mean_max_backward: grad, values and the output must share dtype and device");
}

// CPU kernels (csrc/cpu/).
at::Tensor segment_sum_cpu(const at::Tensor& values, const at::Tensor& offsets);
at::Tensor segment_mean_cpu(const at::Tensor& values, const at::Tensor& offsets);
at::Tensor segment_gather_cpu(const at::Tensor& src, const at::Tensor& offsets, int64_t num_rows,
                              bool mean);
std::tuple<at::Tensor, at::Tensor> segment_max_cpu(const at::Tensor& values,
                                                   const at::Tensor& offsets);
at::Tensor segment_max_backward_cpu(const at::Tensor& grad, const at::Tensor& argmax,
                                    const at::Tensor& offsets, int64_t num_rows);
at::Tensor segment_amax_cpu(const at::Tensor& values, const at::Tensor& offsets);
at::Tensor segment_amax_backward_cpu(const at::Tensor& grad, const at::Tensor& values,
                                     const at::Tensor& out, const at::Tensor& offsets);
at::Tensor segment_softmax_cpu(const at::Tensor& values, const at::Tensor& offsets);
at::Tensor segment_softmax_backward_cpu(const at::Tensor& grad, const at::Tensor& out,
                                        const at::Tensor& offsets);
at::Tensor segment_logsumexp_cpu(const at::Tensor& values, const at::Tensor& offsets);
at::Tensor segment_mean_max_cpu(const at::Tensor& values, const at::Tensor& offsets);
at::Tensor segment_mean_max_backward_cpu(const at::Tensor& grad, const at::Tensor& values,
                                         const at::Tensor& out, const at::Tensor& offsets);

}  // namespace hepms
