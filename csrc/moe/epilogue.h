// The math of the grouped GEMMs' fused epilogues, shared by the CUTLASS epilogue functors
// (grouped_gemm_sm90.cuh) and the CPU impl of the GEMM op (gemm_tables.cu), which applies the very
// same functions to a plain fp32 product: the CPU tests check the epilogue math, a GPU checks the
// MMA. Inputs are the fp32 accumulator (and the fp32 value of the C operand); the result is
// rounded to bf16 by the caller.
#pragma once

#include <cuda_runtime.h>

#include <cmath>

namespace star_elastic {
namespace moe {

enum class GemmEpilogue : int {
  kIdentity = 0,       // D = acc
  kSquaredRelu = 1,    // D = relu(acc)^2                 (Nemotron's expert activation)
  kSiluCTimesAcc = 2,  // D = silu(C) * acc               (SiLU-GLU: C = the gate GEMM's output)
};

__host__ __device__ inline float squared_relu(float x) {
  const float positive = x > 0.0f ? x : 0.0f;
  return positive * positive;
}

__host__ __device__ inline float silu(float x) { return x / (1.0f + expf(-x)); }

__host__ __device__ inline float apply_epilogue(GemmEpilogue epilogue, float acc, float c) {
  switch (epilogue) {
    case GemmEpilogue::kSquaredRelu:
      return squared_relu(acc);
    case GemmEpilogue::kSiluCTimesAcc:
      return silu(c) * acc;
    default:
      return acc;
  }
}

}  // namespace moe
}  // namespace star_elastic
