// Gated group RMSNorm (see gated_rmsnorm.h for the contract).
//
// 128-thread blocks, one warp per (row, group). Two passes over the group's columns (the gated
// values are recomputed in the second; the re-read hits L1/L2): lanes walk columns lane, lane+32,
// ... so a warp's loads coalesce (unit inner stride). The per-lane work is __host__ __device__
// (lane_sum_squares, lane_write); the host launcher calls it for every lane of every (row, group)
// and adds the partial sums in the butterfly's order.
#include "ssm/gated_rmsnorm.h"

#include <cmath>

#include "ssm/float_access.cuh"

namespace star_elastic::ssm {
namespace {

using detail::ceil_div;
using detail::from_float;
using detail::load_float;
using detail::silu;
using detail::to_float;

constexpr int kThreads = 128;
constexpr int kLanes = 32;
constexpr int kWarps = kThreads / kLanes;

// The value that is normalised (gated first when !norm_before_gate); *gate gets silu(z) or 1.
template <typename ActT>
__host__ __device__ __forceinline__ float gated_value(const GatedRmsNormParams& p, int64_t row,
                                                      int64_t column, float* gate) {
  float v = to_float(static_cast<const ActT*>(p.y)[row * p.y_stride_row + column]);
  *gate = 1.0f;
  if (p.z != nullptr) {
    const float g = silu(to_float(static_cast<const ActT*>(p.z)[row * p.z_stride_row + column]));
    if (p.norm_before_gate)
      *gate = g;
    else
      v *= g;
  }
  return v;
}

template <typename ActT>
__host__ __device__ float lane_sum_squares(const GatedRmsNormParams& p, int64_t row, int64_t group,
                                           int lane) {
  float acc = 0.0f;
  float gate;
  for (int64_t i = lane; i < p.group_width; i += kLanes) {
    const float v = gated_value<ActT>(p, row, group * p.group_width + i, &gate);
    acc += v * v;
  }
  return acc;
}

__host__ __device__ __forceinline__ float inv_rms(const GatedRmsNormParams& p, float sum_squares) {
  const float mean_square = sum_squares / static_cast<float>(p.group_width) + p.eps;
#ifdef __CUDA_ARCH__
  return rsqrtf(mean_square);
#else
  return 1.0f / std::sqrt(mean_square);
#endif
}

template <typename ActT>
__host__ __device__ void lane_write(const GatedRmsNormParams& p, int64_t row, int64_t group,
                                    int lane, float scale) {
  float gate;
  for (int64_t i = lane; i < p.group_width; i += kLanes) {
    const int64_t column = group * p.group_width + i;
    const float v = gated_value<ActT>(p, row, column, &gate);
    const int64_t parent = group * p.parent_group_width + (i / p.head_dim) * p.parent_head_dim +
                           i % p.head_dim;
    const float w = load_float(p.weight, p.weight_type, parent * p.weight_stride);
    static_cast<ActT*>(p.out)[row * p.out_stride_row + column] =
        from_float<ActT>(v * scale * w * gate);
  }
}

template <typename ActT>
__global__ void __launch_bounds__(kThreads) gated_rmsnorm_kernel(const GatedRmsNormParams p) {
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / kLanes;
  const int lane = threadIdx.x % kLanes;
  if (item >= p.rows * p.num_groups) return;  // whole warps leave together
  const int64_t row = item / p.num_groups;
  const int64_t group = item % p.num_groups;
  float acc = lane_sum_squares<ActT>(p, row, group, lane);
  for (int offset = kLanes / 2; offset > 0; offset /= 2)
    acc += __shfl_xor_sync(0xffffffffu, acc, offset);
  lane_write<ActT>(p, row, group, lane, inv_rms(p, acc));
}

template <typename ActT>
void host_rows(const GatedRmsNormParams& p) {
  for (int64_t item = 0; item < p.rows * p.num_groups; ++item) {
    const int64_t row = item / p.num_groups;
    const int64_t group = item % p.num_groups;
    float acc[kLanes];
    for (int lane = 0; lane < kLanes; ++lane) acc[lane] = lane_sum_squares<ActT>(p, row, group, lane);
    for (int offset = kLanes / 2; offset > 0; offset /= 2) {  // the shuffle butterfly
      float next[kLanes];
      for (int lane = 0; lane < kLanes; ++lane) next[lane] = acc[lane] + acc[lane ^ offset];
      for (int lane = 0; lane < kLanes; ++lane) acc[lane] = next[lane];
    }
    for (int lane = 0; lane < kLanes; ++lane)
      lane_write<ActT>(p, row, group, lane, inv_rms(p, acc[lane]));
  }
}

}  // namespace

cudaError_t gated_rmsnorm(const GatedRmsNormParams& p, cudaStream_t stream) {
  if (p.rows == 0 || p.num_groups == 0 || p.group_width == 0) return cudaSuccess;
  const int64_t blocks = ceil_div(p.rows * p.num_groups, kWarps);
  if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  const unsigned grid = static_cast<unsigned>(blocks);
  switch (p.act_type) {
    case DType::kFloat16:
      gated_rmsnorm_kernel<__half><<<grid, kThreads, 0, stream>>>(p);
      break;
    case DType::kBFloat16:
      gated_rmsnorm_kernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(p);
      break;
    default:
      gated_rmsnorm_kernel<float><<<grid, kThreads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

void gated_rmsnorm_host(const GatedRmsNormParams& p) {
  if (p.rows == 0 || p.num_groups == 0 || p.group_width == 0) return;
  switch (p.act_type) {
    case DType::kFloat16:
      return host_rows<__half>(p);
    case DType::kBFloat16:
      return host_rows<__nv_bfloat16>(p);
    default:
      return host_rows<float>(p);
  }
}

}  // namespace star_elastic::ssm
