// Softmax family on the CPU: segment_softmax (per set and feature, over the rows of the set), its
// backward, and segment_logsumexp.
//
// Numerically stable: the set's maximum is subtracted before exponentiating. Per task (segment,
// feature block) the rows are read up to three times (maximum, sum of exponentials, output); a jet
// of ~30 rows stays in L1 between the passes, so memory sees one read and one write. exp is a
// branch-free polynomial (below) that the compiler vectorizes; this file is compiled with
// -ffp-contract=off so the baseline and AVX2 variants round identically (no fused multiply-add).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "../segment.h"
#include "segment_cpu_common.h"

namespace hepms {
namespace {

// exp(d) for d <= 0 (or NaN), vectorizable: d = n ln2 + r with |r| <= ln2 / 2, exp(r) by its
// Taylor series (to r^7/7! for float, r^13/13! for double: below half an ulp), 2^n built in the
// exponent bits. n is rounded with the 1.5 * 2^mantissa trick, whose bits hold n (no float ->
// int conversion, which SSE2/AVX2 lack for 64-bit integers). Results that would be subnormal
// are flushed to 0 (weights below 1e-38 for float).
template <typename acc_t>
struct ExpConstants;

template <>
struct ExpConstants<float> {
  using int_t = int32_t;
  static constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
  static constexpr int_t kBias = 127;
  static constexpr int kMantissa = 23;
  static constexpr float kLowest = -87.0f;
  static constexpr float kLn2Hi = 0.693359375f;
  static constexpr float kLn2Lo = -2.12194440e-4f;
  static constexpr int kTerms = 7;
};

template <>
struct ExpConstants<double> {
  using int_t = int64_t;
  static constexpr double kMagic = 6755399441055744.0;  // 1.5 * 2^52
  static constexpr int_t kBias = 1023;
  static constexpr int kMantissa = 52;
  static constexpr double kLowest = -708.0;
  static constexpr double kLn2Hi = 0.693145751953125;
  static constexpr double kLn2Lo = 1.42860682030941723212e-6;
  static constexpr int kTerms = 13;
};

template <typename acc_t>
HEPMS_ALWAYS_INLINE acc_t exp_nonpositive(acc_t d) {
  using C = ExpConstants<acc_t>;
  using int_t = typename C::int_t;
  const acc_t clamped = d < C::kLowest ? C::kLowest : d;  // keeps NaN
  const acc_t shifted = clamped * acc_t(1.4426950408889634) + C::kMagic;
  const acc_t n = shifted - C::kMagic;
  const acc_t r = (clamped - n * C::kLn2Hi) - n * C::kLn2Lo;
  acc_t p = acc_t(1);
  // Horner form of sum_{k <= kTerms} r^k / k!: p = 1 + r/1 (1 + r/2 (1 + r/3 (...))); the
  // loop is unrolled before vectorization (otherwise GCC sees control flow and gives up).
#pragma GCC unroll 16
  for (int k = C::kTerms; k >= 1; --k) p = acc_t(1) + p * (r * acc_t(1.0 / k));
  const int_t n_int = std::bit_cast<int_t>(shifted) - std::bit_cast<int_t>(C::kMagic);
  const acc_t scale = std::bit_cast<acc_t>((n_int + C::kBias) << C::kMantissa);
  const acc_t result = p * scale;
  return d < C::kLowest ? acc_t(0) : result;
}

// Arguments of one op, shared by the tasks. out_rows: [N, F] (softmax, softmax backward) or
// out_pooled: [B, F] (logsumexp).
template <typename scalar_t>
struct SoftmaxArgs {
  const scalar_t* __restrict__ values;  // softmax, logsumexp: the values; backward: the gradient
  const scalar_t* __restrict__ other;   // backward: the softmax output; else unused
  const int64_t* __restrict__ offsets;
  scalar_t* __restrict__ out;
  int64_t width;
  const TaskSplit& split;
};

enum class SoftmaxOp { kSoftmax, kLogSumExp, kBackward };

// Sum over rows [begin, end) of term(r, j) into result[0, w): blocks of kCascadeRows rows
// combined pairwise, like the sum kernel, so long sets stay accurate.
template <typename acc_t, typename Term>
HEPMS_ALWAYS_INLINE void cascade_rows(int64_t begin, int64_t end, int64_t w, Term&& term,
                                      acc_t* __restrict__ block, Cascade<acc_t>& cascade,
                                      acc_t* __restrict__ result) {
  if (end - begin <= kCascadeRows) {
    for (int64_t j = 0; j < w; ++j) result[j] = acc_t(0);
    for (int64_t r = begin; r < end; ++r) term(r, result);
    return;
  }
  cascade.reset();
  bool has_tail = false;
  for (int64_t b0 = begin; b0 < end; b0 += kCascadeRows) {
    const int64_t b1 = std::min(b0 + kCascadeRows, end);
    for (int64_t j = 0; j < w; ++j) block[j] = acc_t(0);
    for (int64_t r = b0; r < b1; ++r) term(r, block);
    if (b1 - b0 == kCascadeRows) {
      cascade.push(block, w);
    } else {
      has_tail = true;
    }
  }
  cascade.finish(block, has_tail, result, w);
}

template <typename scalar_t, SoftmaxOp kOp, bool kAvx2>
HEPMS_ALWAYS_INLINE void softmax_tasks(const SoftmaxArgs<scalar_t>& a, int64_t first, int64_t last) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kWiden = kAvx2 && kWidenWithF16c<scalar_t>;
  acc_t maxima[kFeatureBlock];
  acc_t total[kFeatureBlock];
  acc_t block[kFeatureBlock];
  acc_t x[kFeatureBlock];
  acc_t y[kFeatureBlock];
  acc_t result[kFeatureBlock];
  Cascade<acc_t> cascade;
  for (int64_t task = first; task < last; ++task) {
    const auto t = a.split.at(task, a.offsets, a.width);
    const int64_t f0 = t.f0, w = t.w, begin = t.begin, end = t.end;
    auto row_of = [&](const scalar_t* base, int64_t r, acc_t* scratch) {
      return as_acc<kWiden>(base + r * a.width + f0, scratch, w);
    };
    if constexpr (kOp == SoftmaxOp::kBackward) {
      // grad_values = y * (g - sum_set(g * y))
      cascade_rows(begin, end, w, [&](int64_t r, acc_t* acc) {
        const auto* g = row_of(a.values, r, x);
        const auto* yr = row_of(a.other, r, y);
        for (int64_t j = 0; j < w; ++j) acc[j] += static_cast<acc_t>(g[j]) * static_cast<acc_t>(yr[j]);
      }, block, cascade, total);
      for (int64_t r = begin; r < end; ++r) {
        const auto* g = row_of(a.values, r, x);
        const auto* yr = row_of(a.other, r, y);
        for (int64_t j = 0; j < w; ++j)
          result[j] = static_cast<acc_t>(yr[j]) * (static_cast<acc_t>(g[j]) - total[j]);
        store_row<kAvx2>(result, a.out + r * a.width + f0, w);
      }
      continue;
    } else {
      if (end <= begin) {  // empty set: logsumexp pools to 0 (softmax has no rows to write)
        if constexpr (kOp == SoftmaxOp::kLogSumExp) {
          for (int64_t j = 0; j < w; ++j) result[j] = acc_t(0);
          store_row<kAvx2>(result, a.out + t.seg * a.width + f0, w);
        }
        continue;
      }
      const auto* row0 = row_of(a.values, begin, x);
      for (int64_t j = 0; j < w; ++j) maxima[j] = static_cast<acc_t>(row0[j]);
      for (int64_t r = begin + 1; r < end; ++r) {
        const auto* row = row_of(a.values, r, x);
        for (int64_t j = 0; j < w; ++j) {
          const acc_t v = static_cast<acc_t>(row[j]);
          maxima[j] = v > maxima[j] ? v : maxima[j];
        }
      }
      // An infinite maximum would give inf - inf = NaN: shift by 0 instead (softmax then gives
      // NaN or 0/1 as the plain formula does; logsumexp gives the infinity below).
      for (int64_t j = 0; j < w; ++j)
        y[j] = std::isfinite(maxima[j]) ? maxima[j] : acc_t(0);
      cascade_rows(begin, end, w, [&](int64_t r, acc_t* acc) {
        const auto* row = row_of(a.values, r, x);
        for (int64_t j = 0; j < w; ++j) acc[j] += exp_nonpositive(static_cast<acc_t>(row[j]) - y[j]);
      }, block, cascade, total);
      if constexpr (kOp == SoftmaxOp::kLogSumExp) {
        for (int64_t j = 0; j < w; ++j)
          result[j] = std::isfinite(maxima[j]) ? y[j] + std::log(total[j]) : maxima[j];
        store_row<kAvx2>(result, a.out + t.seg * a.width + f0, w);
      } else {
        for (int64_t j = 0; j < w; ++j) total[j] = acc_t(1) / total[j];
        for (int64_t r = begin; r < end; ++r) {
          const auto* row = row_of(a.values, r, x);
          for (int64_t j = 0; j < w; ++j)
            result[j] = exp_nonpositive(static_cast<acc_t>(row[j]) - y[j]) * total[j];
          store_row<kAvx2>(result, a.out + r * a.width + f0, w);
        }
      }
    }
  }
}

template <typename scalar_t, SoftmaxOp kOp>
HEPMS_TARGET_AVX2 void softmax_tasks_avx2(const SoftmaxArgs<scalar_t>& a, int64_t first, int64_t last) {
  softmax_tasks<scalar_t, kOp, HEPMS_HAVE_AVX2_PATH>(a, first, last);
}

template <typename scalar_t, SoftmaxOp kOp>
void softmax_tasks_baseline(const SoftmaxArgs<scalar_t>& a, int64_t first, int64_t last) {
  softmax_tasks<scalar_t, kOp, false>(a, first, last);
}

template <SoftmaxOp kOp>
void run_softmax(const at::Tensor& values, const at::Tensor& other, const at::Tensor& offsets,
                 at::Tensor& out) {
  const int64_t num_segments = offsets.numel() - 1;
  const int64_t width = row_width(values);
  // No row chunks: a set's rows are read in several passes that need the whole set's maximum.
  const TaskSplit split(offsets.const_data_ptr<int64_t>(), num_segments, width, values.size(0),
                        /*allow_chunks=*/false);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "segment_softmax", [&] {
    const SoftmaxArgs<scalar_t> args{values.const_data_ptr<scalar_t>(),
                                     other.defined() ? other.const_data_ptr<scalar_t>() : nullptr,
                                     offsets.const_data_ptr<int64_t>(), out.mutable_data_ptr<scalar_t>(),
                                     width, split};
    run_tasks(args, &softmax_tasks_avx2<scalar_t, kOp>, &softmax_tasks_baseline<scalar_t, kOp>);
  });
}

}  // namespace

at::Tensor segment_softmax_cpu(const at::Tensor& values_in, const at::Tensor& offsets_in) {
  check_pool_args("segment_softmax", values_in, offsets_in);
  const at::Tensor values = values_in.contiguous();
  const at::Tensor offsets = offsets_in.contiguous();
  const int64_t num_rows = values.size(0);
  at::Tensor out = allocate_row_output(offsets.const_data_ptr<int64_t>(), offsets.numel() - 1,
                                       num_rows, values.sizes(), values.options());
  if (out.numel() == 0 || offsets.numel() == 1) return out;
  run_softmax<SoftmaxOp::kSoftmax>(values, at::Tensor(), offsets, out);
  return out;
}

at::Tensor segment_softmax_backward_cpu(const at::Tensor& grad_in, const at::Tensor& out_in,
                                        const at::Tensor& offsets_in) {
  check_softmax_backward_args(grad_in, out_in, offsets_in);
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor softmax = out_in.contiguous();
  const at::Tensor offsets = offsets_in.contiguous();
  at::Tensor out = allocate_row_output(offsets.const_data_ptr<int64_t>(), offsets.numel() - 1,
                                       grad.size(0), grad.sizes(), grad.options());
  if (out.numel() == 0 || offsets.numel() == 1) return out;
  run_softmax<SoftmaxOp::kBackward>(grad, softmax, offsets, out);
  return out;
}

at::Tensor segment_logsumexp_cpu(const at::Tensor& values_in, const at::Tensor& offsets_in) {
  check_pool_args("segment_logsumexp", values_in, offsets_in);
  const at::Tensor values = values_in.contiguous();
  const at::Tensor offsets = offsets_in.contiguous();
  at::Tensor out = at::empty(pooled_shape(values, offsets.numel() - 1), values.options());
  if (out.numel() == 0) return out;
  run_softmax<SoftmaxOp::kLogSumExp>(values, at::Tensor(), offsets, out);
  return out;
}

}  // namespace hepms
