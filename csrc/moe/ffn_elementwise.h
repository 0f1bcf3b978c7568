// The elementwise steps around the CUTLASS grouped GEMMs of moe_ffn's "cuda" backend (bf16):
//
//   gather:     out[i, :]  = x[sorted_slots[i] / top_k, :]            (rows in expert order)
//   activation: out[i, c]  = relu(gate)^2                (value == nullptr)
//                          = silu(gate) * value          (SiLU-GLU)
//   combine:    out[t, c]  = scaling * sum_j weights[t, j] * y[row(t*k + j), c] (+ shared[t, c])
//               with row(s) the position of slot s in sorted_slots (inverted first, no atomics;
//               the k terms are summed in order j = 0..k-1, so the result is deterministic).
//
// bf16 tensors (raw 16-bit patterns), fp32 arithmetic, round-to-nearest-even to bf16 (like torch).
// Rows are row-major with the given row strides (elements) and unit column stride.
//
// Plain CUDA C++ without torch headers. Every thread's work is a __host__ __device__ function
// over (row, group of 8 columns); the *_cuda functions launch it, the *_host functions run the
// same functions sequentially on the CPU (the CPU impls of the private ops, for tests without a
// GPU: they exercise the index math and arithmetic, not the launch).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace star_elastic {
namespace moe {

struct GatherParams {
  const uint16_t* x;  // (T, cols)
  int64_t x_stride;
  const int32_t* sorted_slots;  // (rows,)
  int64_t top_k;
  uint16_t* out;  // (rows, cols)
  int64_t out_stride;
  int64_t rows, cols;
};

struct ActivationParams {
  const uint16_t* gate;   // (rows, cols)
  const uint16_t* value;  // nullptr (relu2) or (rows, cols) (silu_glu)
  uint16_t* out;          // (rows, cols)
  int64_t gate_stride, value_stride, out_stride;
  int64_t rows, cols;
};

struct CombineParams {
  const uint16_t* y;  // (tokens * top_k, cols), sorted rows
  int64_t y_stride;
  const int32_t* sorted_slots;  // (tokens * top_k,)
  int32_t* inverse;             // (tokens * top_k,) scratch: row of each slot
  const float* weights;         // (tokens, top_k) contiguous
  const uint16_t* shared;       // nullptr or (tokens, cols)
  int64_t shared_stride;
  uint16_t* out;  // (tokens, cols)
  int64_t out_stride;
  int64_t tokens, top_k, cols;
  float scaling;
};

cudaError_t gather_rows_cuda(const GatherParams& params, cudaStream_t stream);
cudaError_t activation_cuda(const ActivationParams& params, cudaStream_t stream);
cudaError_t combine_cuda(const CombineParams& params, cudaStream_t stream);

void gather_rows_host(const GatherParams& params);
void activation_host(const ActivationParams& params);
void combine_host(const CombineParams& params);

}  // namespace moe
}  // namespace star_elastic
