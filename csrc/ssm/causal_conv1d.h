// Causal depthwise conv1d over the Mamba conv channels at an elastic slice: prefill (batched or
// packed varlen) and the one-token decode update (in place on the cache).
//
// Plain CUDA C++: raw pointers, sizes and strides (in elements), no torch headers. The binding file
// (csrc/ssm/bindings.cpp) turns tensors into these arguments; the Python wrapper
// (star_elastic_kernels/ssm/conv.py) has checked every shape and dtype before; packed boundaries
// arrive clamped to a valid split (star_elastic_kernels/ssm/_chunks.py).
//
// Channel map (the same as the Triton kernels' `_parent_channel`): compact channel ch of
// [x: G*k*p | B: G*N | C: G*N] reads parent channel
//   ch <  x_channels: parent_head(ch / p) * P + ch % p, parent_head(h) = (h / k) * (H/G) + h % k
//   ch >= x_channels: parent_x_channels + ch - x_channels          (B and C whole)
// A dense call uses the identity map {0, 1, 1, 1, 1, 0}.
//
// Prefill: y[r, t, ch] = act(bias[pc] + sum_i weight[pc, i] * in(r, t - (w-1) + i, ch)) where
// in() is x inside the token's sequence, else initial_states[seq, ch, (w-1) + src - start] (rounded
// to x's dtype, as the reference concatenates it to x) or 0; pc = parent channel. Varlen: b == 1,
// the token's sequence is found by binary search in cu_seqlens. fp32 math, 64-bit offsets.
//
// Update: for row r, slot s = slots ? slots[r] : r and active channel ch (parent pc):
//   y[r, ch] = act(bias[pc] + sum_{i<w-1} weight[pc, i] * state[s, pc, i] + weight[pc, w-1] * x[r, ch])
//   state[s, pc, :] = (state[s, pc, 1:], x[r, ch])        -- nothing else is read or written.
// A row whose slot is negative (padding) or >= num_slots touches no state and gets y = 0; a slot
// >= num_slots also ORs kErrorSlotOutOfRange into *errors (slots are never read on the host).
//
// Each op has a CUDA launcher and a host launcher. The host launcher runs the very same per-thread
// function (a __host__ __device__ function of the grid coordinates) over the whole grid,
// sequentially on the CPU: it checks the index math of the CUDA code on machines without a GPU. It
// does not exercise the launch itself (block sizes, occupancy, memory coalescing).
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "ssm/ssd_state_update.h"  // DType

namespace star_elastic::ssm {

struct ConvChannelMap {
  int64_t x_channels = 0;  // G*k*p (0 = dense: identity map)
  int64_t head_dim = 1;  // p
  int64_t heads_per_group = 1;  // k
  int64_t parent_heads_per_group = 1;  // H/G
  int64_t parent_head_dim = 1;  // P
  int64_t parent_x_channels = 0;  // H*P
};

struct Conv1dParams {
  const void* x;  // (b, l, c), unit channel stride; x and y share act_type
  DType act_type;
  int64_t x_stride_b, x_stride_l;
  const void* weight;  // (C, w) parent, any strides
  DType weight_type;
  int64_t weight_stride_c, weight_stride_k;
  const void* bias;  // nullptr or (C,) parent
  DType bias_type;
  int64_t bias_stride;
  const void* initial_states;  // nullptr or (b or S, c, w-1) compact, any strides
  DType init_type;
  int64_t init_stride_s, init_stride_c, init_stride_k;
  const void* cu_seqlens;  // nullptr or (S+1,) int32/int64, contiguous; then b == 1
  bool cu_seqlens_int64;
  int64_t num_seqs;  // S (varlen only)
  void* y;  // (b, l, c), unit channel stride
  int64_t y_stride_b, y_stride_l;
  int64_t batch, seqlen, channels, width;  // width in 2..4
  ConvChannelMap map;
  bool silu;
};

struct Conv1dUpdateParams {
  const void* x;  // (b, c), unit channel stride; x and y share act_type
  DType act_type;
  int64_t x_stride_b;
  void* state;  // (slots, C, w-1) parent, any strides
  DType state_type;
  int64_t state_stride_s, state_stride_c, state_stride_k;
  const void* weight;  // (C, w) parent, any strides
  DType weight_type;
  int64_t weight_stride_c, weight_stride_k;
  const void* bias;  // nullptr or (C,) parent
  DType bias_type;
  int64_t bias_stride;
  const void* slots;  // nullptr or (b,) int32/int64 distinct cache slots, contiguous
  bool slots_int64;
  int64_t num_slots;  // the cache's slot count
  int32_t* errors;    // (1,) int32 device error word (kErrorSlotOutOfRange)
  void* y;  // (b, c), unit channel stride
  int64_t y_stride_b;
  int64_t batch, channels, width;  // width in 2..4
  ConvChannelMap map;
  bool silu;
};

cudaError_t causal_conv1d(const Conv1dParams& params, cudaStream_t stream);
cudaError_t causal_conv1d_update(const Conv1dUpdateParams& params, cudaStream_t stream);

// The same per-thread code, run over the whole grid on the CPU (host pointers). Returns false for
// a configuration the CUDA launcher would refuse (unsupported width).
bool causal_conv1d_host(const Conv1dParams& params);
bool causal_conv1d_update_host(const Conv1dUpdateParams& params);

}  // namespace star_elastic::ssm
