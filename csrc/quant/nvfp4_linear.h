// NVFP4 W4A16 linear: out = x @ dequantize(w).T * global_scale + bias, on 16-bit tensor cores.
//
// Plain CUDA C++: raw pointers, sizes and strides, no torch headers. The weight is the leading
// (N, K) sub-matrix of a parent read through the parent's row strides, so an elastic slice costs
// only its own bytes. Hopper has no FP4 MMA: the kernel decodes E2M1 codes times their E4M3 block
// scale (exact in fp16 / bf16) into shared memory and multiplies with WMMA, accumulating in FP32;
// the FP32 global scale is applied to the FP32 accumulator.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "quant/fp8_quant.h"

namespace star_elastic::quant {

struct Nvfp4LinearParams {
  const void* x;            // (M, K) activation, act_type (float16 or bfloat16)
  int64_t x_stride_m;       // in elements
  int64_t x_stride_k;       // in elements
  FloatType act_type;
  const uint8_t* data;      // (N, K/2) packed E2M1, element 2i in the low nibble; unit K stride
  int64_t data_stride_n;    // in bytes (the parent's K/2)
  const uint8_t* scale;     // (N, K/16) E4M3 block scales; unit K stride
  int64_t scale_stride_n;   // in bytes (the parent's K/16)
  const float* global_scale;  // one float
  const void* bias;         // (N,) act_type, or nullptr
  void* out;                // (M, N) act_type, row stride out_stride_m, unit column stride
  int64_t out_stride_m;
  float* workspace;         // (M, N) contiguous float32, zero-filled; used when split_k > 1
  int64_t M;
  int64_t N;
  int64_t K;                // a multiple of 16
  int split_k;              // >= 1: K tiles are shared by split_k blocks that add into workspace
};

cudaError_t nvfp4_linear(const Nvfp4LinearParams& p, cudaStream_t stream);

}  // namespace star_elastic::quant
