// Value checks the MoE kernels make on the device instead of the host (no sync, capturable in a
// CUDA graph): a kernel that meets a bad value ORs a bit into a device int32 flag and handles the
// value harmlessly (an out-of-range expert id is skipped, never written through). The Python side
// (star_elastic_kernels/moe/_errors.py, same bit values) reads the flag only when asked:
// raise_device_errors() or validate=True.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace star_elastic {
namespace moe {

constexpr int32_t kErrorIdsOutOfRange = 1;       // an expert id outside [0, num_experts)
constexpr int32_t kErrorTooFewActiveExperts = 2; // routing: fewer choosable experts than top_k
constexpr int32_t kErrorBadGroupEnds = 4;        // grouped GEMM: offsets decrease or miss M

// Sets `bit` in *flag (nullptr: no flag given). Atomic on the device; plain on the host (the CPU
// impls run the per-thread code sequentially).
__host__ __device__ inline void raise_error(int32_t* flag, int32_t bit) {
  if (flag == nullptr) return;
#ifdef __CUDA_ARCH__
  atomicOr(flag, bit);
#else
  *flag |= bit;
#endif
}

}  // namespace moe
}  // namespace star_elastic
