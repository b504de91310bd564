// The Python module hepms._C. Importing it loads this library, whose static initialisers
// register the torch ops (csrc/ops.cpp, csrc/cuda/); the module itself only reports how the
// extension was built.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <ATen/Parallel.h>

#include <iterator>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "autograd.h"
#include "cpu/cpu_capability.h"
#include "cpu/segment_cpu_common.h"
#include "segment_index.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "hepms compiled segment pooling kernels (ops registered as torch.ops.hepms.*)";
#ifdef HEPMS_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.attr("torch_version") = HEPMS_TORCH_VERSION;
  // hepms/ops.py registers the Python autograd of the other ops only.
  py::tuple cpp_autograd(std::size(hepms::kCppAutogradOps));
  for (std::size_t i = 0; i < std::size(hepms::kCppAutogradOps); ++i)
    cpp_autograd[i] = py::str(hepms::kCppAutogradOps[i]);
  m.attr("cpp_autograd_ops") = cpp_autograd;
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

  // The index arithmetic that the CPU and CUDA kernels share (csrc/segment_index.h), exposed so
  // that tests check it on the CPU, without a GPU.
  m.def("_index_clamp_segment", [](int64_t begin, int64_t end, int64_t num_rows) {
    hepms::index::clamp_segment(begin, end, num_rows);
    return std::make_tuple(begin, end);
  });
  m.def("_index_chunk_rows_for", &hepms::index::chunk_rows_for);
  m.def("_index_num_chunks", &hepms::index::num_chunks);
  m.def("_index_chunk_bounds", [](int64_t begin, int64_t end, int64_t chunk_rows, int64_t c) {
    int64_t b, e;
    hepms::index::chunk_bounds(begin, end, chunk_rows, c, b, e);
    return std::make_tuple(b, e);
  });
  m.def("_index_lane_layout", [](int64_t width) {
    const auto layout = hepms::index::lane_layout(width);
    return std::make_tuple(layout.cols, layout.rows);
  });
  // The tasks of the CPU kernels' work split for these offsets with the current thread count:
  // (segment, chunk, f0, w, begin, end) each, and the rows per chunk (0: whole segments).
  m.def(
      "_cpu_task_split",
      [](const std::vector<int64_t>& offsets, int64_t width, int64_t num_rows) {
        if (offsets.empty() || width < 1 || num_rows < 0)
          throw py::value_error("_cpu_task_split: need offsets, width >= 1 and num_rows >= 0");
        const int64_t segments = static_cast<int64_t>(offsets.size()) - 1;
        const hepms::TaskSplit split(offsets.data(), segments, width, num_rows);
        std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t>> tasks;
        for (int64_t t = 0; t < split.num_tasks(); ++t) {
          const auto task = split.at(t, offsets.data(), width);
          tasks.emplace_back(task.seg, task.unit, task.f0, task.w, task.begin, task.end);
        }
        return std::make_tuple(tasks, split.chunk_rows);
      },
      py::arg("offsets"), py::arg("width"), py::arg("num_rows"));
}
