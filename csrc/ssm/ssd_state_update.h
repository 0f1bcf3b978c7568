// Mamba-2 decode step at an elastic width: one token of the recurrence, in place on the cache.
//
// Plain CUDA C++: raw pointers, sizes and strides (in elements), no torch headers. The binding file
// (csrc/ssm/bindings.cpp) turns tensors into these arguments; the Python wrapper
// (star_elastic_kernels/ssm/decode.py) has checked every shape and dtype before.
//
// Active head h' (compact, group-major) is parent head (h' / k) * parent_heads_per_group + h' % k
// and uses group h' / k. For every batch row r (cache slot s = slots ? slots[r] : r), active head
// h' (parent head ph, group g) and channel c < head_dim:
//   dt    = clamp(softplus?(dt[r, h'] + dt_bias[ph]), dt_min, dt_max)
//   state[s, ph, c, :] = exp(dt * A[ph]) * state[s, ph, c, :] + dt * x[r, h', c] * B[r, g, :]
//   y[r, h', c] = (sum_n state[s, ph, c, n] * C[r, g, n] + D[ph(, c)] * x[r, h', c]) * silu(z)
// computed in fp32 (y uses the fp32 state, before it is rounded to the cache's dtype). Nothing
// outside the active slice of the chosen slots is read or written. A row whose slot is negative
// (padding) or >= num_slots reads and writes no state and gets y = 0; a slot >= num_slots also
// ORs kErrorSlotOutOfRange into *errors (the values are never read on the host). All offsets are
// 64-bit.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace star_elastic::ssm {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Bits of the device error word (star_elastic_kernels/ssm/_device_checks.py has the same values).
constexpr int32_t kErrorSlotOutOfRange = 1;
constexpr int32_t kErrorScanChainStalled = 4;  // ssd_scan: a chunk state never arrived (a bug)

struct StateUpdateParams {
  void* state;  // (slots, H, P, N) parent layout
  DType state_type;
  int64_t state_stride[4];
  int64_t num_slots;
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
  int32_t* errors;  // (1,) int32 device error word
  void* y;  // (b, H', p)
  int64_t y_stride_b, y_stride_h;
  int64_t batch, active_heads, heads_per_group, parent_heads_per_group, head_dim, state_size;
  bool dt_softplus;
  float dt_min, dt_max;
};

// How a launch covers the work (the CUDA launcher and the host launcher use the same plan).
struct StateUpdatePlan {
  bool unit_stride;     // state rows contiguous and 16-byte aligned: 16-byte loads and stores
  int vector;           // state elements per 16-byte access: 4 (fp32) or 8 (16-bit)
  int lanes_per_row;    // lanes sharing one state row (a power of two <= 32)
  int64_t segments;     // 'vector'-element segments of a state row per lane
  int64_t heads_per_block, head_blocks, blocks;  // block = (row, group, block of heads)
};

StateUpdatePlan plan_state_update(const StateUpdateParams& params);

cudaError_t ssd_state_update(const StateUpdateParams& params, cudaStream_t stream);

// The same per-thread code run over the whole grid on the CPU (host pointers), the shuffle
// reductions in their butterfly order: a test of the kernel's indexing and arithmetic.
void ssd_state_update_host(const StateUpdateParams& params);

}  // namespace star_elastic::ssm
