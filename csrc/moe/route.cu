// Top-k MoE routing (see route.h for the contract).
//
// One thread per token walks its row of logits: for softmax a max pass and a sum pass over the
// active experts, then top_k selection passes. Pass j takes the best column strictly after pick
// j-1 in the order (choice descending, index ascending), so no per-thread list of picks is needed
// and ties resolve to the lowest index. Rows are small (E <= a few hundred) and L1-resident after
// the first pass; routing is a negligible part of the MoE layer.
#include "moe/route.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstring>

namespace star_elastic {
namespace moe {
namespace {

constexpr int kThreads = 128;

__host__ __device__ inline float load_logit(const RouteParams& p, int64_t t, int64_t e) {
  const int64_t offset = t * p.stride_t + e * p.stride_e;
  switch (p.logit_type) {
    case RouteLogitType::kFloat16:
      return __half2float(static_cast<const __half*>(p.logits)[offset]);
    case RouteLogitType::kBFloat16: {
      // bf16 -> fp32 is exact: the 16 bits are the high half of the fp32 pattern
      const uint16_t bits = static_cast<const uint16_t*>(p.logits)[offset];
      const uint32_t wide = static_cast<uint32_t>(bits) << 16;
      float value;
      memcpy(&value, &wide, sizeof(value));
      return value;
    }
    default:
      return static_cast<const float*>(p.logits)[offset];
  }
}

__host__ __device__ inline bool is_active(const RouteParams& p, int64_t e) {
  return e < p.num_prefix && (p.mask == nullptr || p.mask[e] != 0);
}

// The unbiased score of column e (softmax needs the row's max and sum of exponentials).
__host__ __device__ inline float score_of(const RouteParams& p, int64_t t, int64_t e, float row_max,
                                          float row_sum) {
  const float x = load_logit(p, t, e);
  if (p.softmax) return expf(x - row_max) / row_sum;
  return 1.0f / (1.0f + expf(-x));
}

// The work of the thread that routes token t.
__host__ __device__ void route_token(const RouteParams& p, int64_t t) {
  float row_max = 0.0f, row_sum = 1.0f;
  if (p.softmax) {
    row_max = -INFINITY;
    for (int64_t e = 0; e < p.num_columns; ++e)
      if (is_active(p, e)) row_max = fmaxf(row_max, load_logit(p, t, e));
    row_sum = 0.0f;
    for (int64_t e = 0; e < p.num_columns; ++e)
      if (is_active(p, e)) row_sum += expf(load_logit(p, t, e) - row_max);
  }
  float* weights = p.weights + t * p.top_k;
  int32_t* ids = p.ids + t * p.top_k;
  float prev_choice = INFINITY;
  int64_t prev_id = -1;
  float total = 0.0f;
  for (int j = 0; j < p.top_k; ++j) {
    float best_choice = -INFINITY, best_score = 0.0f;
    int64_t best_id = -1;
    for (int64_t e = 0; e < p.num_columns; ++e) {
      if (!is_active(p, e)) continue;
      const float score = score_of(p, t, e, row_max, row_sum);
      const float choice = p.bias != nullptr ? score + p.bias[e] : score;
      // only columns after the previous pick in (choice desc, index asc) order are left
      const bool left = choice < prev_choice || (choice == prev_choice && e > prev_id);
      if (left && (best_id < 0 || choice > best_choice)) {
        best_choice = choice;
        best_score = score;
        best_id = e;
      }
    }
    if (best_id < 0) {  // fewer active experts than top_k (error_flags.h)
      raise_error(p.error_flag, kErrorTooFewActiveExperts);
      best_id = 0;
      best_score = 0.0f;
    }
    ids[j] = static_cast<int32_t>(best_id);
    weights[j] = best_score;
    total += best_score;
    prev_choice = best_choice;
    prev_id = best_id;
  }
  for (int j = 0; j < p.top_k; ++j)
    weights[j] = p.renormalize ? weights[j] / (total + 1e-20f) * p.scaling : weights[j] * p.scaling;
}

__global__ void __launch_bounds__(kThreads) route_kernel(const RouteParams p) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (t < p.num_tokens) route_token(p, t);
}

}  // namespace

cudaError_t route_cuda(const RouteParams& params, cudaStream_t stream) {
  if (params.num_tokens == 0) return cudaSuccess;
  const int64_t blocks = (params.num_tokens + kThreads - 1) / kThreads;
  route_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(params);
  return cudaGetLastError();
}

void route_host(const RouteParams& params) {
  for (int64_t t = 0; t < params.num_tokens; ++t) route_token(params, t);
}

}  // namespace moe
}  // namespace star_elastic
