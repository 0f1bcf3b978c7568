// The elementwise steps of moe_ffn's "cuda" backend (see ffn_elementwise.h for the contract).
//
// One thread per (row, group of 8 columns): a group is 16 bytes, loaded and stored as one vector
// when every row start is 16-byte aligned (widths and strides multiples of 8, which the CUTLASS
// path requires anyway), element by element otherwise.
#include "moe/ffn_elementwise.h"

#include <cmath>
#include <cstring>

namespace star_elastic {
namespace moe {
namespace {

constexpr int kThreads = 128;
constexpr int kGroup = 8;

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

// Load/store n <= 8 consecutive bf16 values; whole aligned groups as one 16-byte access.
__host__ __device__ inline void load_group(const uint16_t* src, int n, uint16_t out[kGroup]) {
  if (n == kGroup && aligned16(src)) {
#ifdef __CUDA_ARCH__
    *reinterpret_cast<uint4*>(out) = *reinterpret_cast<const uint4*>(src);
#else
    memcpy(out, src, sizeof(uint16_t) * kGroup);
#endif
    return;
  }
  for (int i = 0; i < kGroup; ++i)
    if (i < n) out[i] = src[i];
}

__host__ __device__ inline void store_group(uint16_t* dst, int n, const uint16_t in[kGroup]) {
  if (n == kGroup && aligned16(dst)) {
#ifdef __CUDA_ARCH__
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(in);
#else
    memcpy(dst, in, sizeof(uint16_t) * kGroup);
#endif
    return;
  }
  for (int i = 0; i < kGroup; ++i)
    if (i < n) dst[i] = in[i];
}

__host__ __device__ inline int64_t groups_per_row(int64_t cols) { return (cols + kGroup - 1) / kGroup; }

// Thread `i` of the gather: row i / groups, column group i % groups.
__host__ __device__ void gather_thread(const GatherParams& p, int64_t i) {
  const int64_t groups = groups_per_row(p.cols);
  const int64_t row = i / groups, col = (i % groups) * kGroup;
  const int n = static_cast<int>(p.cols - col < kGroup ? p.cols - col : kGroup);
  const int64_t token = static_cast<int64_t>(p.sorted_slots[row]) / p.top_k;
  alignas(16) uint16_t v[kGroup];
  load_group(p.x + token * p.x_stride + col, n, v);
  store_group(p.out + row * p.out_stride + col, n, v);
}

__host__ __device__ void activation_thread(const ActivationParams& p, int64_t i) {
  const int64_t groups = groups_per_row(p.cols);
  const int64_t row = i / groups, col = (i % groups) * kGroup;
  const int n = static_cast<int>(p.cols - col < kGroup ? p.cols - col : kGroup);
  alignas(16) uint16_t g[kGroup], v[kGroup], h[kGroup];
  load_group(p.gate + row * p.gate_stride + col, n, g);
  if (p.value != nullptr) load_group(p.value + row * p.value_stride + col, n, v);
  for (int c = 0; c < kGroup; ++c) {
    if (c >= n) break;
    const float x = bf16_to_float(g[c]);
    float y;
    if (p.value == nullptr) {
      const float positive = x > 0.0f ? x : 0.0f;
      y = positive * positive;
    } else {
      y = x / (1.0f + expf(-x)) * bf16_to_float(v[c]);
    }
    h[c] = float_to_bf16(y);
  }
  store_group(p.out + row * p.out_stride + col, n, h);
}

// Combine, phase 1 (thread = sorted row): where each slot's output row is.
__host__ __device__ void invert_thread(const CombineParams& p, int64_t row) {
  p.inverse[p.sorted_slots[row]] = static_cast<int32_t>(row);
}

// Combine, phase 2 (thread = (token, column group)).
__host__ __device__ void combine_thread(const CombineParams& p, int64_t i) {
  const int64_t groups = groups_per_row(p.cols);
  const int64_t token = i / groups, col = (i % groups) * kGroup;
  const int n = static_cast<int>(p.cols - col < kGroup ? p.cols - col : kGroup);
  float acc[kGroup];
  for (int c = 0; c < kGroup; ++c) acc[c] = 0.0f;
  alignas(16) uint16_t v[kGroup];
  for (int64_t j = 0; j < p.top_k; ++j) {
    const int64_t slot = token * p.top_k + j;
    const float w = p.weights[slot];
    load_group(p.y + static_cast<int64_t>(p.inverse[slot]) * p.y_stride + col, n, v);
    for (int c = 0; c < kGroup; ++c)
      if (c < n) acc[c] += bf16_to_float(v[c]) * w;
  }
  for (int c = 0; c < kGroup; ++c) acc[c] *= p.scaling;
  if (p.shared != nullptr) {
    load_group(p.shared + token * p.shared_stride + col, n, v);
    for (int c = 0; c < kGroup; ++c)
      if (c < n) acc[c] += bf16_to_float(v[c]);
  }
  for (int c = 0; c < kGroup; ++c) v[c] = float_to_bf16(acc[c]);
  store_group(p.out + token * p.out_stride + col, n, v);
}

__global__ void __launch_bounds__(kThreads) gather_kernel(const GatherParams p, int64_t threads) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < threads) gather_thread(p, i);
}

__global__ void __launch_bounds__(kThreads) activation_kernel(const ActivationParams p,
                                                             int64_t threads) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < threads) activation_thread(p, i);
}

__global__ void __launch_bounds__(kThreads) invert_kernel(const CombineParams p, int64_t threads) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < threads) invert_thread(p, i);
}

__global__ void __launch_bounds__(kThreads) combine_kernel(const CombineParams p, int64_t threads) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < threads) combine_thread(p, i);
}

unsigned blocks_for(int64_t threads) { return static_cast<unsigned>((threads + kThreads - 1) / kThreads); }

}  // namespace

cudaError_t gather_rows_cuda(const GatherParams& p, cudaStream_t stream) {
  const int64_t threads = p.rows * groups_per_row(p.cols);
  if (threads > 0) gather_kernel<<<blocks_for(threads), kThreads, 0, stream>>>(p, threads);
  return cudaGetLastError();
}

cudaError_t activation_cuda(const ActivationParams& p, cudaStream_t stream) {
  const int64_t threads = p.rows * groups_per_row(p.cols);
  if (threads > 0) activation_kernel<<<blocks_for(threads), kThreads, 0, stream>>>(p, threads);
  return cudaGetLastError();
}

cudaError_t combine_cuda(const CombineParams& p, cudaStream_t stream) {
  const int64_t slots = p.tokens * p.top_k;
  const int64_t threads = p.tokens * groups_per_row(p.cols);
  if (slots > 0) invert_kernel<<<blocks_for(slots), kThreads, 0, stream>>>(p, slots);
  if (threads > 0) combine_kernel<<<blocks_for(threads), kThreads, 0, stream>>>(p, threads);
  return cudaGetLastError();
}

void gather_rows_host(const GatherParams& p) {
  const int64_t threads = p.rows * groups_per_row(p.cols);
  for (int64_t i = 0; i < threads; ++i) gather_thread(p, i);
}

void activation_host(const ActivationParams& p) {
  const int64_t threads = p.rows * groups_per_row(p.cols);
  for (int64_t i = 0; i < threads; ++i) activation_thread(p, i);
}

void combine_host(const CombineParams& p) {
  const int64_t slots = p.tokens * p.top_k;
  const int64_t threads = p.tokens * groups_per_row(p.cols);
  for (int64_t i = 0; i < slots; ++i) invert_thread(p, i);
  for (int64_t i = 0; i < threads; ++i) combine_thread(p, i);
}

}  // namespace moe
}  // namespace star_elastic
