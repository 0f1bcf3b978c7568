// Top-k MoE routing with Nemotron v3 semantics (the reference: star_elastic_kernels/reference/moe.py
// moe_route), one token per thread.
//
// Plain CUDA C++: raw pointers, sizes and strides (in elements), no torch headers. The binding
// (csrc/torch_bindings.cpp) turns tensors into these arguments; the Python wrapper
// (star_elastic_kernels/moe/ops.py) has checked every shape, dtype and value before.
//
// For token t, over the columns e < num_columns (the parent's experts, or a compact prefix):
//   active(e) = e < num_prefix && (mask == nullptr || mask[e] != 0)
//   score(e)  = sigmoid(x[t, e])  or  softmax over the active e of x[t, e]     (fp32)
//   choice(e) = score(e) + bias[e] (bias optional, fp32), -inf when not active
//   ids[t, :] = the top_k columns by decreasing choice (lowest index first on ties)
//   weights[t, j] = score(ids[t, j]) / (sum_j score(ids[t, j]) + 1e-20 if renormalize) * scaling
// With fewer active columns than top_k (a mask with too few experts: its count is device data),
// the picks that find no active column get id 0 and weight 0, and kErrorTooFewActiveExperts is
// raised in error_flag.
//
// Every token's work is one __host__ __device__ function (route_token). route_cuda launches it
// over a grid; route_host runs the very same function sequentially on the CPU, so CPU tests
// exercise the index math and arithmetic of the kernel (not the launch or the device's expf).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "moe/error_flags.h"

namespace star_elastic {
namespace moe {

enum class RouteLogitType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct RouteParams {
  const void* logits;  // (num_tokens, num_columns), strides below
  RouteLogitType logit_type;
  int64_t stride_t, stride_e;
  const float* bias;     // nullptr or (>= num_columns,) contiguous fp32
  const uint8_t* mask;   // nullptr or (>= num_columns,) contiguous bool bytes
  float* weights;        // (num_tokens, top_k) contiguous
  int32_t* ids;          // (num_tokens, top_k) contiguous
  int32_t* error_flag;   // nullptr or one int32 (error_flags.h)
  int64_t num_tokens, num_columns, num_prefix;
  int top_k;
  bool softmax, renormalize;
  float scaling;
};

// Launch on `stream` (device pointers).
cudaError_t route_cuda(const RouteParams& params, cudaStream_t stream);

// The same per-token code, sequentially on the host (host pointers).
void route_host(const RouteParams& params);

}  // namespace moe
}  // namespace star_elastic
