// NVFP4 W4A16 linear (see nvfp4_linear.h for the contract).
//
// One block of 4 warps computes a (BM, 64) output tile. Per 64-wide K tile it stages the
// activation (BM x 64) and the decoded weight (64 x 64, 16-bit) in shared memory; each warp owns 16
// output columns and BM/16 WMMA accumulators. BM is 16 for decode (M <= 16) and 64 otherwise.
// With split_k > 1 the blocks along gridDim.z take every split_k-th K tile and add their FP32
// partial sums into the workspace; a second kernel applies the bias and the output cast.
#include "quant/nvfp4_linear.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

namespace star_elastic::quant {
namespace {

constexpr int kThreads = 128;
constexpr int kBlockN = 64;
constexpr int kBlockK = 64;
constexpr int kPitch = kBlockK + 8;  // shared-memory row pitch (elements): fewer bank conflicts

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

// E4M3 code -> float (exact). Block scales are positive and never the NaN code.
__device__ __forceinline__ float e4m3_to_float(uint32_t code) {
  const uint32_t exponent = (code >> 3) & 0xF;
  const uint32_t mantissa = code & 0x7;
  const float magnitude = exponent
      ? __uint_as_float(((exponent + 120u) << 23) | (mantissa << 20))
      : static_cast<float>(mantissa) * 0.001953125f;
  return (code & 0x80) ? -magnitude : magnitude;
}

// E2M1 code (low 4 bits) -> float: magnitudes 2..7 are the float bits 0x3F000000 + (m << 22).
__device__ __forceinline__ float e2m1_to_float(uint32_t code) {
  const uint32_t m = code & 0x7;
  const float magnitude = m >= 2 ? __uint_as_float(0x3F000000u + (m << 22))
                                 : 0.5f * static_cast<float>(m);
  return (code & 0x8) ? -magnitude : magnitude;
}

template <typename T, int BM>
__global__ void __launch_bounds__(kThreads) nvfp4_linear_kernel(Nvfp4LinearParams p) {
  using namespace nvcuda;
  __shared__ __align__(32) T x_tile[BM][kPitch];
  __shared__ __align__(32) T w_tile[kBlockN][kPitch];
  __shared__ __align__(32) float c_tile[BM][kBlockN + 4];

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kBlockN;
  const T* x = static_cast<const T*>(p.x);
  const int64_t packed_k = p.K / 2;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[BM / 16];
#pragma unroll
  for (int i = 0; i < BM / 16; ++i) wmma::fill_fragment(acc[i], 0.0f);

  const int64_t k_tiles = (p.K + kBlockK - 1) / kBlockK;
  for (int64_t tile = blockIdx.z; tile < k_tiles; tile += p.split_k) {
    const int64_t k0 = tile * kBlockK;
    for (int i = tid; i < BM * kBlockK; i += kThreads) {
      const int r = i / kBlockK;
      const int c = i % kBlockK;
      const int64_t m = m0 + r;
      const int64_t k = k0 + c;
      x_tile[r][c] = (m < p.M && k < p.K) ? x[m * p.x_stride_m + k * p.x_stride_k]
                                          : from_float<T>(0.0f);
    }
    // Four packed bytes (8 elements, one scale block half) per step: K is a multiple of 16, so
    // a 4-byte chunk never crosses the end of a row and stays 4-byte aligned.
    constexpr int kChunksPerRow = kBlockK / 8;
    for (int i = tid; i < kBlockN * kChunksPerRow; i += kThreads) {
      const int r = i / kChunksPerRow;
      const int chunk = i % kChunksPerRow;
      const int64_t n = n0 + r;
      const int64_t byte = k0 / 2 + chunk * 4;
      uint32_t packed = 0;
      float block_scale = 0.0f;
      if (n < p.N && byte < packed_k) {
        packed = *reinterpret_cast<const uint32_t*>(p.data + n * p.data_stride_n + byte);
        block_scale = e4m3_to_float(p.scale[n * p.scale_stride_n + byte / 8]);
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const uint32_t code = (packed >> (4 * j)) & 0xF;
        w_tile[r][chunk * 8 + j] = from_float<T>(e2m1_to_float(code) * block_scale);
      }
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBlockK; kk += 16) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
      wmma::load_matrix_sync(b, &w_tile[warp * 16][kk], kPitch);
#pragma unroll
      for (int i = 0; i < BM / 16; ++i) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::load_matrix_sync(a, &x_tile[i * 16][kk], kPitch);
        wmma::mma_sync(acc[i], a, b, acc[i]);
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < BM / 16; ++i)
    wmma::store_matrix_sync(&c_tile[i * 16][warp * 16], acc[i], kBlockN + 4, wmma::mem_row_major);
  __syncthreads();

  const float global_scale = *p.global_scale;
  const T* bias = static_cast<const T*>(p.bias);
  T* out = static_cast<T*>(p.out);
  for (int i = tid; i < BM * kBlockN; i += kThreads) {
    const int r = i / kBlockN;
    const int c = i % kBlockN;
    const int64_t m = m0 + r;
    const int64_t n = n0 + c;
    if (m >= p.M || n >= p.N) continue;
    float value = c_tile[r][c] * global_scale;
    if (p.split_k > 1) {
      atomicAdd(p.workspace + m * p.N + n, value);
    } else {
      if (bias != nullptr) value += to_float<T>(bias[n]);
      out[m * p.out_stride_m + n] = from_float<T>(value);
    }
  }
}

template <typename T>
__global__ void finalize_kernel(Nvfp4LinearParams p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.M * p.N) return;
  const int64_t m = i / p.N;
  const int64_t n = i % p.N;
  float value = p.workspace[i];
  if (p.bias != nullptr) value += to_float<T>(static_cast<const T*>(p.bias)[n]);
  static_cast<T*>(p.out)[m * p.out_stride_m + n] = from_float<T>(value);
}

template <typename T>
cudaError_t launch(const Nvfp4LinearParams& p, cudaStream_t stream) {
  const int split = p.split_k < 1 ? 1 : p.split_k;
  if (p.M <= 16) {
    const dim3 grid((p.M + 15) / 16, (p.N + kBlockN - 1) / kBlockN, split);
    nvfp4_linear_kernel<T, 16><<<grid, kThreads, 0, stream>>>(p);
  } else {
    const dim3 grid((p.M + 63) / 64, (p.N + kBlockN - 1) / kBlockN, split);
    nvfp4_linear_kernel<T, 64><<<grid, kThreads, 0, stream>>>(p);
  }
  if (split > 1) {
    const int64_t total = p.M * p.N;
    finalize_kernel<T><<<static_cast<unsigned>((total + 255) / 256), 256, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t nvfp4_linear(const Nvfp4LinearParams& p, cudaStream_t stream) {
  if (p.M == 0 || p.N == 0 || p.K == 0) return cudaSuccess;
  if (p.K % 16 != 0) return cudaErrorInvalidValue;
  switch (p.act_type) {
    case FloatType::kFloat16:
      return launch<__half>(p, stream);
    case FloatType::kBFloat16:
      return launch<__nv_bfloat16>(p, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace star_elastic::quant
