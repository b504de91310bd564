// Registers the hepms torch ops: schemas and CPU kernels. The CUDA kernels register themselves
// from csrc/cuda/ when the extension is built with CUDA; the autograd of the ops a training step
// calls is in csrc/autograd.cpp, that of the others and the fake (meta) kernels are registered
// from Python (hepms/ops.py), where torch.library provides them for torch.compile.
#include <torch/library.h>

#include "segment.h"

TORCH_LIBRARY(hepms, m) {
  m.def("segment_sum(Tensor values, Tensor offsets) -> Tensor");
  m.def("segment_mean(Tensor values, Tensor offsets) -> Tensor");
  m.def("segment_max(Tensor values, Tensor offsets) -> (Tensor, Tensor)");
  // Backward of sum (mean=False) and mean (mean=True): each row receives its segment's value.
  m.def("segment_gather(Tensor src, Tensor offsets, SymInt num_rows, bool mean) -> Tensor");
  // Backward of max: the gradient goes to the arg-max row, every other row gets 0.
  m.def(
      "segment_max_backward(Tensor grad, Tensor argmax, Tensor offsets, SymInt num_rows) -> "
      "Tensor");
  // The maximum without its arg-max (the pooling of hepms.nn): the backward finds the first
  // maximal row again from the values, so the forward writes no int64 arg-max tensor.
  m.def("segment_amax(Tensor values, Tensor offsets) -> Tensor");
  m.def("segment_amax_backward(Tensor grad, Tensor values, Tensor out, Tensor offsets) -> Tensor");
  // Softmax over the rows of each set (per feature), its backward, and the pooled log-sum-exp.
  m.def("segment_softmax(Tensor values, Tensor offsets) -> Tensor");
  m.def("segment_softmax_backward(Tensor grad, Tensor out, Tensor offsets) -> Tensor");
  m.def("segment_logsumexp(Tensor values, Tensor offsets) -> Tensor");
  // Mean and maximum side by side ([B, 2F]: the default pooling of hepms.nn) and a backward
  // that writes both gradients in one pass.
  m.def("segment_mean_max(Tensor values, Tensor offsets) -> Tensor");
  m.def("segment_mean_max_backward(Tensor grad, Tensor values, Tensor out, Tensor offsets) -> Tensor");
}

TORCH_LIBRARY_IMPL(hepms, CPU, m) {
  m.impl("segment_sum", &hepms::segment_sum_cpu);
  m.impl("segment_mean", &hepms::segment_mean_cpu);
  m.impl("segment_max", &hepms::segment_max_cpu);
  m.impl("segment_gather", &hepms::segment_gather_cpu);
  m.impl("segment_max_backward", &hepms::segment_max_backward_cpu);
  m.impl("segment_amax", &hepms::segment_amax_cpu);
  m.impl("segment_amax_backward", &hepms::segment_amax_backward_cpu);
  m.impl("segment_softmax", &hepms::segment_softmax_cpu);
  m.impl("segment_softmax_backward", &hepms::segment_softmax_backward_cpu);
  m.impl("segment_logsumexp", &hepms::segment_logsumexp_cpu);
  m.impl("segment_mean_max", &hepms::segment_mean_max_cpu);
  m.impl("segment_mean_max_backward", &hepms::segment_mean_max_backward_cpu);
}
