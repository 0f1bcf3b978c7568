// FP8 W8A8 GEMM on Hopper (CUTLASS 3.x, sm_90a, TMA + warp-specialized WGMMA):
//   out[m, n] = scale_a[m] * (sum_k a[m, k] * b[n, k]) * scale_b[n] + bias[n]
// with FP32 accumulation and the scales applied to the FP32 accumulator in the epilogue.
//
// Plain CUDA C++ interface (no torch headers). `b` is the (N, K) weight read through the parent's
// row stride `ldb`, so an elastic slice w[:n, :k] is used in place. Requirements (checked; a
// violation returns cudaErrorNotSupported): K, lda and ldb multiples of 16, ldd and N multiples
// of 8, 16-byte aligned pointers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cuda_runtime.h>

#include "quant/fp8_quant.h"

namespace star_elastic::quant {

struct Fp8GemmParams {
  const uint8_t* a;        // (M, K) E4M3, row stride lda (elements = bytes), unit K stride
  int64_t lda;
  const uint8_t* b;        // (N, K) E4M3, row stride ldb, unit K stride
  int64_t ldb;
  const float* scale_a;    // (M,) per-token (or an expanded per-tensor) activation scale
  const float* scale_b;    // (N,) per-channel (or an expanded per-tensor) weight scale
  const void* bias;        // (N,) out_type, or nullptr
  void* out;               // (M, N) out_type (float16 or bfloat16), row stride ldd
  int64_t ldd;
  FloatType out_type;
  int64_t M;
  int64_t N;
  int64_t K;
  void* workspace;         // scratch for the CUTLASS kernel
  size_t workspace_bytes;
};

cudaError_t fp8_gemm_sm90(const Fp8GemmParams& p, cudaStream_t stream);

}  // namespace star_elastic::quant
