// Element access shared by the SSM kernels (ssd_scan.cu, ssd_state_update.cu, causal_conv1d.cu,
// gated_rmsnorm.cu): fp32/fp16/bf16 <-> fp32 conversions and loads/stores through a runtime dtype,
// all __host__ __device__ so the same per-thread code compiles for the GPU and for the CPU impls.
// Included only from .cu files (nvcc); no torch headers.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "ssm/ssd_state_update.h"  // DType

namespace star_elastic::ssm::detail {

template <typename T>
__host__ __device__ __forceinline__ float to_float(T v);
template <>
__host__ __device__ __forceinline__ float to_float<float>(float v) { return v; }
template <>
__host__ __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <>
__host__ __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__host__ __device__ __forceinline__ T from_float(float v);
template <>
__host__ __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__host__ __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__host__ __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Parameters, caches and initial states come in any of the three dtypes: a runtime switch keeps
// the template count low.
__host__ __device__ __forceinline__ float load_float(const void* base, DType type, int64_t offset) {
  switch (type) {
    case DType::kFloat16:
      return __half2float(static_cast<const __half*>(base)[offset]);
    case DType::kBFloat16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[offset]);
    default:
      return static_cast<const float*>(base)[offset];
  }
}

__host__ __device__ __forceinline__ void store_float(void* base, DType type, int64_t offset,
                                                     float v) {
  switch (type) {
    case DType::kFloat16:
      static_cast<__half*>(base)[offset] = __float2half_rn(v);
      break;
    case DType::kBFloat16:
      static_cast<__nv_bfloat16*>(base)[offset] = __float2bfloat16_rn(v);
      break;
    default:
      static_cast<float*>(base)[offset] = v;
  }
}

__host__ __device__ __forceinline__ int64_t load_index(const void* base, bool is_int64,
                                                       int64_t i) {
  return is_int64 ? static_cast<const int64_t*>(base)[i]
                  : static_cast<int64_t>(static_cast<const int32_t*>(base)[i]);
}

__host__ __device__ __forceinline__ float silu(float v) { return v / (1.0f + expf(-v)); }

// OR a bit into the device error word (kError* in ssd_state_update.h); the host launchers run
// the same per-thread code with a host word.
__host__ __device__ __forceinline__ void raise_error(int32_t* errors, int32_t bit) {
#ifdef __CUDA_ARCH__
  atomicOr(errors, bit);
#else
  *errors |= bit;
#endif
}

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace star_elastic::ssm::detail
