// bfloat16 as raw 16-bit patterns, and 16-byte groups of them, for the MoE elementwise kernels and
// the CPU impls that run their per-thread code (no CUDA bf16 types: the same code compiles for the
// host). fp32 arithmetic, round-to-nearest-even to bf16 (like torch).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

namespace star_elastic {
namespace moe {

constexpr int kBf16Group = 8;  // bf16 values per 16-byte vector

__host__ __device__ inline float bf16_to_float(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float value;
  memcpy(&value, &wide, sizeof(value));
  return value;
}

__host__ __device__ inline uint16_t float_to_bf16(float value) {
  uint32_t u;
  memcpy(&u, &value, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return static_cast<uint16_t>(u >> 16);
}

__host__ __device__ inline bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// Load/store n <= 8 consecutive bf16 values; a whole aligned group as one 16-byte access.
__host__ __device__ inline void load_group(const uint16_t* src, int n, uint16_t out[kBf16Group]) {
  if (n == kBf16Group && aligned16(src)) {
#ifdef __CUDA_ARCH__
    *reinterpret_cast<uint4*>(out) = *reinterpret_cast<const uint4*>(src);
#else
    memcpy(out, src, sizeof(uint16_t) * kBf16Group);
#endif
    return;
  }
  for (int i = 0; i < kBf16Group; ++i)
    if (i < n) out[i] = src[i];
}

__host__ __device__ inline void store_group(uint16_t* dst, int n, const uint16_t in[kBf16Group]) {
  if (n == kBf16Group && aligned16(dst)) {
#ifdef __CUDA_ARCH__
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(in);
#else
    memcpy(dst, in, sizeof(uint16_t) * kBf16Group);
#endif
    return;
  }
  for (int i = 0; i < kBf16Group; ++i)
    if (i < n) dst[i] = in[i];
}

__host__ __device__ inline int64_t groups_per_row(int64_t cols) {
  return (cols + kBf16Group - 1) / kBf16Group;
}

// Values in column group `group` of a row of `cols` values (8, or fewer in the last group).
__host__ __device__ inline int group_width(int64_t cols, int64_t group) {
  const int64_t left = cols - group * kBf16Group;
  return static_cast<int>(left < kBf16Group ? left : kBf16Group);
}

}  // namespace moe
}  // namespace star_elastic
