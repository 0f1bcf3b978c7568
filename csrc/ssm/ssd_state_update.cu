// Mamba-2 decode step (see ssd_state_update.h for the contract).
//
// One 128-thread block per (batch row, active head). B and C of the row's group go to shared
// memory as fp32; each warp takes head channels c = warp, warp + 4, ..., its lanes walk the state
// row (unit stride over n in the usual cache layout, so loads and stores coalesce) and a warp
// shuffle reduces the C-contraction. The step is memory-bound: every active state element is read
// and written once.
#include "ssm/ssd_state_update.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "ssm/float_access.cuh"

namespace star_elastic::ssm {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;

using detail::from_float;
using detail::load_float;
using detail::to_float;

template <typename StateT, typename ActT>
__global__ void __launch_bounds__(kThreads)
    state_update_kernel(const StateUpdateParams p) {
  extern __shared__ float shared[];  // B then C of this row's group, fp32
  const int64_t block = blockIdx.x;
  const int64_t row = block / p.active_heads;
  const int64_t head = block % p.active_heads;
  const int64_t group = head / p.heads_per_group;
  const int64_t parent_head = group * p.parent_heads_per_group + head % p.heads_per_group;
  int64_t slot = row;
  if (p.slots != nullptr)
    slot = p.slots_int64 ? static_cast<const int64_t*>(p.slots)[row]
                         : static_cast<int64_t>(static_cast<const int32_t*>(p.slots)[row]);

  const ActT* B = static_cast<const ActT*>(p.B) + row * p.B_stride_b + group * p.B_stride_g;
  const ActT* C = static_cast<const ActT*>(p.C) + row * p.C_stride_b + group * p.C_stride_g;
  float* B_shared = shared;
  float* C_shared = shared + p.state_size;
  for (int64_t n = threadIdx.x; n < p.state_size; n += kThreads) {
    B_shared[n] = to_float(B[n]);
    C_shared[n] = to_float(C[n]);
  }

  float dt = load_float(p.dt, p.dt_type, row * p.dt_stride_b + head * p.dt_stride_h);
  if (p.dt_bias != nullptr) dt += load_float(p.dt_bias, p.dt_bias_type, parent_head * p.dt_bias_stride);
  if (p.dt_softplus) dt = dt <= 20.0f ? log1pf(expf(dt)) : dt;
  dt = fminf(fmaxf(dt, p.dt_min), p.dt_max);
  const float decay = expf(dt * load_float(p.A, p.A_type, parent_head * p.A_stride));
  __syncthreads();

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const ActT* x = static_cast<const ActT*>(p.x) + row * p.x_stride_b + head * p.x_stride_h;
  StateT* state = static_cast<StateT*>(p.state) + slot * p.state_stride[0] +
                  parent_head * p.state_stride[1];
  for (int64_t c = warp; c < p.head_dim; c += kWarps) {
    const float xc = to_float(x[c]);
    const float dtx = dt * xc;
    StateT* cell = state + c * p.state_stride[2];
    float acc = 0.0f;
    for (int64_t n = lane; n < p.state_size; n += 32) {
      const int64_t offset = n * p.state_stride[3];
      const float updated = decay * to_float(cell[offset]) + dtx * B_shared[n];
      cell[offset] = from_float<StateT>(updated);
      acc += updated * C_shared[n];
    }
    for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
    if (lane == 0) {
      float out = acc;
      if (p.D != nullptr)
        out += load_float(p.D, p.D_type, parent_head * p.D_stride_h + c * p.D_stride_p) * xc;
      if (p.z != nullptr) {
        const float z = to_float(static_cast<const ActT*>(p.z)[row * p.z_stride_b +
                                                               head * p.z_stride_h + c]);
        out *= z / (1.0f + expf(-z));
      }
      static_cast<ActT*>(p.y)[row * p.y_stride_b + head * p.y_stride_h + c] = from_float<ActT>(out);
    }
  }
}

template <typename StateT>
cudaError_t launch_for_state(const StateUpdateParams& p, cudaStream_t stream) {
  const int64_t blocks = p.batch * p.active_heads;
  const size_t shared_bytes = 2 * static_cast<size_t>(p.state_size) * sizeof(float);
  switch (p.act_type) {
    case DType::kFloat16:
      state_update_kernel<StateT, __half><<<blocks, kThreads, shared_bytes, stream>>>(p);
      break;
    case DType::kBFloat16:
      state_update_kernel<StateT, __nv_bfloat16><<<blocks, kThreads, shared_bytes, stream>>>(p);
      break;
    default:
      state_update_kernel<StateT, float><<<blocks, kThreads, shared_bytes, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t ssd_state_update(const StateUpdateParams& params, cudaStream_t stream) {
  if (params.batch == 0 || params.active_heads == 0 || params.head_dim == 0) return cudaSuccess;
  if (params.batch * params.active_heads > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  switch (params.state_type) {
    case DType::kFloat16:
      return launch_for_state<__half>(params, stream);
    case DType::kBFloat16:
      return launch_for_state<__nv_bfloat16>(params, stream);
    default:
      return launch_for_state<float>(params, stream);
  }
}

}  // namespace star_elastic::ssm
