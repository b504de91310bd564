// Typed handles of the hepms ops that C++ code calls through the dispatcher: the C++ autograd
// (csrc/autograd.cpp) and the CUDA segment_mean_max, which runs the registered mean and amax
// kernels. Looked up together on first use; every schema is defined (csrc/ops.cpp) when the
// library is loaded, before any op can run.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/SymInt.h>

namespace hepms {

struct OpHandles {
  using Tensor = at::Tensor;
  using Pool = Tensor(const Tensor&, const Tensor&);
  using Gather = Tensor(const Tensor&, const Tensor&, c10::SymInt, bool);
  using PoolBackward = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&);

  template <class Sig>
  static c10::TypedOperatorHandle<Sig> find(const char* name) {
    return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
  }

  c10::TypedOperatorHandle<Pool> sum = find<Pool>("hepms::segment_sum");
  c10::TypedOperatorHandle<Pool> mean = find<Pool>("hepms::segment_mean");
  c10::TypedOperatorHandle<Pool> amax = find<Pool>("hepms::segment_amax");
  c10::TypedOperatorHandle<Pool> mean_max = find<Pool>("hepms::segment_mean_max");
  c10::TypedOperatorHandle<Gather> gather = find<Gather>("hepms::segment_gather");
  c10::TypedOperatorHandle<PoolBackward> amax_backward =
      find<PoolBackward>("hepms::segment_amax_backward");
  c10::TypedOperatorHandle<PoolBackward> mean_max_backward =
      find<PoolBackward>("hepms::segment_mean_max_backward");
};

inline const OpHandles& op_handles() {
  static const OpHandles handles;
  return handles;
}

}  // namespace hepms
