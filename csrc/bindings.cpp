// The Python module hepms._C. Importing it loads this library, whose static initialisers
// register the torch ops (csrc/ops.cpp, csrc/cuda/); the module itself only reports how the
// extension was built.
#include <pybind11/pybind11.h>

#include <ATen/Parallel.h>

#include <stdexcept>
#include <string>

#include "cpu/cpu_capability.h"

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
  m.def("cpu_supports_avx2", &hepms::cpu_supports_avx2,
        "whether this CPU (and build) can run the AVX2 + FMA + F16C variant of the CPU kernels");
  m.def("cpu_capability", []() { return std::string(hepms::cpu_capability_name(hepms::cpu_capability())); },
        "the variant of the CPU kernels in use: 'avx2' or 'baseline'");
  m.def(
      "set_cpu_capability",
      [](const std::string& name) {
        try {
          hepms::set_cpu_capability(name);
        } catch (const std::invalid_argument& error) {
          throw py::value_error(error.what());
        }
      },
      py::arg("name"),
      "select the CPU kernel variant: 'auto' (the best this CPU supports), 'baseline' or 'avx2'");
}
