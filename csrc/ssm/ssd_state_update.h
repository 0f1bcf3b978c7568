// Mamba-2 decode step at an elastic width: one token of the recurrence, in place on the cache.
//
// Plain CUDA C++: raw pointers, sizes and strides (in elements), no torch headers. The binding file
// (csrc/torch_bindings.cpp) turns tensors into these arguments; the Python wrapper
// (star_elastic_kernels/ssm/decode.py) has checked every shape, dtype and slot before.
//
// Active head h' (compact, group-major) is parent head (h' / k) * parent_heads_per_group + h' % k
// and uses group h' / k. For every batch row r (cache slot s = slots ? slots[r] : r), active head
// h' (parent head ph, group g) and channel c < head_dim:
//   dt    = clamp(softplus?(dt[r, h'] + dt_bias[ph]), dt_min, dt_max)
//   state[s, ph, c, :] = exp(dt * A[ph]) * state[s, ph, c, :] + dt * x[r, h', c] * B[r, g, :]
//   y[r, h', c] = (sum_n state[s, ph, c, n] * C[r, g, n] + D[ph(, c)] * x[r, h', c]) * silu(z)
// computed in fp32 (y uses the fp32 state, before it is rounded to the cache's dtype). Nothing
// outside the active slice of the chosen slots is read or written. All offsets are 64-bit.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace star_elastic::ssm {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct StateUpdateParams {
  void* state;  // (slots, H, P, N) parent layout
  DType state_type;
  int64_t state_stride[4];
  const void* x;  // (b, H', p); x, z, B, C and y share act_type
  DType act_type;
  int64_t x_stride_b, x_stride_h;
  const void* dt;  // (b, H')
  DType dt_type;
  int64_t dt_stride_b, dt_stride_h;
  const void* A;  // (H,)
  DType A_type;
  int64_t A_stride;
  const void* B;  // (b, G, N), unit inner stride
  int64_t B_stride_b, B_stride_g;
  const void* C;  // (b, G, N), unit inner stride
  int64_t C_stride_b, C_stride_g;
  const void* D;  // nullptr, (H,) or (H, P); D_stride_p is 0 for (H,)
  DType D_type;
  int64_t D_stride_h, D_stride_p;
  const void* z;  // nullptr or (b, H', p)
  int64_t z_stride_b, z_stride_h;
  const void* dt_bias;  // nullptr or (H,)
  DType dt_bias_type;
  int64_t dt_bias_stride;
  const void* slots;  // nullptr or (b,) int32 / int64 cache slots
  bool slots_int64;
  void* y;  // (b, H', p)
  int64_t y_stride_b, y_stride_h;
  int64_t batch, active_heads, heads_per_group, parent_heads_per_group, head_dim, state_size;
  bool dt_softplus;
  float dt_min, dt_max;
};

cudaError_t ssd_state_update(const StateUpdateParams& params, cudaStream_t stream);

}  // namespace star_elastic::ssm
