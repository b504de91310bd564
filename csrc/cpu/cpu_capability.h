// Which variant of the CPU kernels runs: the baseline x86-64 (SSE2) build or an AVX2 + FMA +
// F16C one. The extension is compiled for baseline x86-64 so that it loads on every CPU; the hot
// loops are compiled a second time with __attribute__((target)) and chosen at run time. The
// choice starts at the best the CPU supports and can be overridden for tests and benchmarks
// (set_cpu_capability; hepms.ops applies the environment variable HEPMS_CPU_CAPABILITY with it).
#pragma once

// Define HEPMS_NO_AVX2_PATH to build the baseline kernels only (as on non-x86 CPUs).
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(HEPMS_NO_AVX2_PATH)
#define HEPMS_HAVE_AVX2_PATH 1
#define HEPMS_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define HEPMS_HAVE_AVX2_PATH 0
#define HEPMS_TARGET_AVX2
#endif

#include <string>

namespace hepms {

enum class CpuCapability : int { kBaseline = 0, kAvx2 = 1 };

// True when the CPU (and this build) can run the AVX2 + FMA + F16C kernels.
bool cpu_supports_avx2();

// The variant the kernels use now.
CpuCapability cpu_capability();

// Selects a variant: "baseline", "avx2" or "auto" (the best the CPU supports). Throws
// std::invalid_argument for an unknown name or for "avx2" on a CPU without it.
void set_cpu_capability(const std::string& name);

const char* cpu_capability_name(CpuCapability capability);

}  // namespace hepms
