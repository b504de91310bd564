#include "cpu_capability.h"

#include <atomic>
#include <cstdlib>
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

CpuCapability initial() {
  const char* env = std::getenv("HEPMS_CPU_CAPABILITY");
  if (env == nullptr || *env == '\0') return best_supported();
  try {
    return parse(env);
  } catch (const std::invalid_argument&) {
    // A bad environment value must not stop the library from loading (this runs while the
    // module is imported); the Python side reports it (hepms.ops checks the variable).
    return best_supported();
  }
}

std::atomic<int>& current() {
  static std::atomic<int> value{static_cast<int>(initial())};
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
