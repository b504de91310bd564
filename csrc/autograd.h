// The hepms ops whose autograd is registered in C++ (csrc/autograd.cpp). hepms/ops.py registers
// the Python autograd (torch.library.register_autograd) of every other op, and of these too when
// the compiled extension is missing; hepms._C.cpp_autograd_ops exposes this list to it.
#pragma once

namespace hepms {

inline constexpr const char* kCppAutogradOps[] = {
    "segment_sum", "segment_mean", "segment_gather", "segment_amax", "segment_mean_max",
};

}  // namespace hepms
