// The Python module hepms._C. Importing it loads this library, whose static initialisers
// register the torch ops (csrc/ops.cpp, csrc/cuda/); the module itself only reports how the
// extension was built.
#include <pybind11/pybind11.h>

#include <ATen/Parallel.h>

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "hepms compiled segment pooling kernels (ops registered as torch.ops.hepms.*)";
#ifdef HEPMS_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.attr("torch_version") = HEPMS_TORCH_VERSION;
  m.def("parallel_info", []() { return at::get_parallel_info(); },
        "ATen's description of the CPU thread pools the kernels run on");
}
