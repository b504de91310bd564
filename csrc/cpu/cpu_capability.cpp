#include "cpu_capability.h"

#include <atomic>
#include <stdexcept>

namespace hepms {
namespace {

CpuCapability best_supported() {
  return cpu_supports_avx2() ? CpuCapability::kAvx2 : CpuCapability::kBaseline;
}

CpuCapability parse(const std::string& name) {
  if (name == "auto") return best_supported();
  if (name == "baseline") return CpuCapability::kBaseline;
  if (name == "avx2") {
    if (!cpu_supports_avx2())
      throw std::invalid_argument("CPU capability 'avx2' requested, but this CPU (or build) lacks AVX2, FMA or F16C");
    return CpuCapability::kAvx2;
  }
  throw std::invalid_argument("unknown CPU capability '" + name + "': choose 'auto', 'baseline' or 'avx2'");
}

// Starts at the best variant; hepms.ops applies HEPMS_CPU_CAPABILITY through
// set_cpu_capability when it loads the extension (and names the variable when it is wrong).
std::atomic<int>& current() {
  static std::atomic<int> value{static_cast<int>(best_supported())};
  return value;
}

}  // namespace

bool cpu_supports_avx2() {
#if HEPMS_HAVE_AVX2_PATH
  static const bool supported = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
  }();
  return supported;
#else
  return false;
#endif
}

CpuCapability cpu_capability() { return static_cast<CpuCapability>(current().load(std::memory_order_relaxed)); }

void set_cpu_capability(const std::string& name) {
  current().store(static_cast<int>(parse(name)), std::memory_order_relaxed);
}

const char* cpu_capability_name(CpuCapability capability) {
  return capability == CpuCapability::kAvx2 ? "avx2" : "baseline";
}

}  // namespace hepms
