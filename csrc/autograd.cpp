// Autograd of the ops a training step calls (the pooling and the broadcast of the equivariant
// blocks), in C++: the same forward and backward ops as the Python autograd of hepms/ops.py, so
// the same numbers, without the Python wrappers of torch.library.register_autograd (about 85 us
// per call: see benchmarks/train.md, "third round"). Registered for the Autograd alias key (CPU
// and CUDA). The backward calls the ops through the dispatcher: while a graph is being built
// (create_graph, gradgradcheck, torch.compile's tracing) they record their own autograd (C++ for
// the ops of kCppAutogradOps, Python for the backward ops), so double backward works as before;
// otherwise they dispatch below autograd, skipping their (Python) autograd wrappers.
#include <c10/core/GradMode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "autograd.h"
#include "op_handles.h"

namespace hepms {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Tensor = at::Tensor;

// Runs a backward op: through autograd when a graph is built (double backward), else below it.
template <class F>
Tensor backward_op(F&& f) {
  if (c10::GradMode::is_enabled()) return f();
  at::AutoDispatchBelowADInplaceOrView below;
  return f();
}

// sum / mean: the backward spreads the gradient over each set's rows (/ count for the mean).
template <bool Mean>
struct PoolFunction : public torch::autograd::Function<PoolFunction<Mean>> {
  static Tensor forward(AutogradContext* ctx, const Tensor& values, const Tensor& offsets) {
    at::AutoDispatchBelowADInplaceOrView below;
    ctx->save_for_backward({offsets});
    ctx->saved_data["rows"] = values.sym_size(0);
    return (Mean ? op_handles().mean : op_handles().sum).call(values, offsets);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto offsets = ctx->get_saved_variables()[0];
    const auto rows = ctx->saved_data["rows"].toSymInt();
    const auto grad = grads[0].contiguous();
    return {backward_op([&] { return op_handles().gather.call(grad, offsets, rows, Mean); }),
            Tensor()};
  }
};

// gather (the broadcast of one row per set to the set's rows): its adjoint is sum / mean.
struct GatherFunction : public torch::autograd::Function<GatherFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& src, const Tensor& offsets,
                        c10::SymInt num_rows, bool mean) {
    at::AutoDispatchBelowADInplaceOrView below;
    ctx->save_for_backward({offsets});
    ctx->saved_data["mean"] = mean;
    return op_handles().gather.call(src, offsets, std::move(num_rows), mean);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto offsets = ctx->get_saved_variables()[0];
    const bool mean = ctx->saved_data["mean"].toBool();
    const auto grad = grads[0].contiguous();
    auto grad_src = backward_op(
        [&] { return (mean ? op_handles().mean : op_handles().sum).call(grad, offsets); });
    return {grad_src, Tensor(), Tensor(), Tensor()};
  }
};

// amax and mean_max: the backward ops find the first maximal row again from values and out.
template <bool MeanMax>
struct MaxPoolFunction : public torch::autograd::Function<MaxPoolFunction<MeanMax>> {
  static Tensor forward(AutogradContext* ctx, const Tensor& values, const Tensor& offsets) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto out = (MeanMax ? op_handles().mean_max : op_handles().amax).call(values, offsets);
    ctx->save_for_backward({values, out, offsets});
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto grad = grads[0].contiguous();
    auto grad_values = backward_op([&] {
      return (MeanMax ? op_handles().mean_max_backward : op_handles().amax_backward)
          .call(grad, saved[0], saved[1], saved[2]);
    });
    return {grad_values, Tensor()};
  }
};

Tensor segment_sum_autograd(const Tensor& values, const Tensor& offsets) {
  return PoolFunction<false>::apply(values, offsets);
}
Tensor segment_mean_autograd(const Tensor& values, const Tensor& offsets) {
  return PoolFunction<true>::apply(values, offsets);
}
Tensor segment_gather_autograd(const Tensor& src, const Tensor& offsets, c10::SymInt num_rows,
                               bool mean) {
  return GatherFunction::apply(src, offsets, std::move(num_rows), mean);
}
Tensor segment_amax_autograd(const Tensor& values, const Tensor& offsets) {
  return MaxPoolFunction<false>::apply(values, offsets);
}
Tensor segment_mean_max_autograd(const Tensor& values, const Tensor& offsets) {
  return MaxPoolFunction<true>::apply(values, offsets);
}

}  // namespace
}  // namespace hepms

// Keep in step with kCppAutogradOps (csrc/autograd.h).
TORCH_LIBRARY_IMPL(hepms, Autograd, m) {
  m.impl("segment_sum", &hepms::segment_sum_autograd);
  m.impl("segment_mean", &hepms::segment_mean_autograd);
  m.impl("segment_gather", &hepms::segment_gather_autograd);
  m.impl("segment_amax", &hepms::segment_amax_autograd);
  m.impl("segment_mean_max", &hepms::segment_mean_max_autograd);
}
