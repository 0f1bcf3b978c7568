// Gated group RMSNorm (Mamba-2's RMSNormGated) at an elastic slice, forward.
//
// Plain CUDA C++: raw pointers, sizes and strides (in elements), no torch headers. The binding file
// (csrc/ssm/bindings.cpp) turns tensors into these arguments; the Python wrapper
// (star_elastic_kernels/ssm/norm.py) has checked every shape and dtype before.
//
// y, z and out are (rows, G*gw) with a unit inner stride, gw = k*p the active group width (dense:
// gw = group size). For row r, group g and i < gw (column j = g*gw + i, compact head i / p,
// channel i % p), with v = y[r, j] * (z && !norm_before_gate ? silu(z[r, j]) : 1):
//   out[r, j] = v * rsqrt(mean_i(v^2) + eps) * weight[g*parent_group_width + (i/p)*P + i%p]
//               * (z && norm_before_gate ? silu(z[r, j]) : 1)
// in fp32; the weight is the parent's (H*P,), read in place. Dense: p = P = gw = group size.
//
// One warp per (row, group): each lane sums v^2 over i = lane, lane + 32, ...; an xor-butterfly
// of warp shuffles adds the 32 partial sums; each lane then writes its columns. The host launcher
// runs the same per-lane functions for every (row, group), emulating the butterfly with the same
// additions in the same order, so the CPU impl of the private op tests this code (index math and
// reduction order), not the launch.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "ssm/ssd_state_update.h"  // DType

namespace star_elastic::ssm {

struct GatedRmsNormParams {
  const void* y;  // (rows, G*gw); y, z and out share act_type
  DType act_type;
  int64_t y_stride_row;
  const void* z;  // nullptr or like y
  int64_t z_stride_row;
  const void* weight;  // (H*P,) parent
  DType weight_type;
  int64_t weight_stride;
  void* out;  // (rows, G*gw)
  int64_t out_stride_row;
  int64_t rows, num_groups, group_width, head_dim, parent_group_width, parent_head_dim;
  float eps;
  bool norm_before_gate;
};

cudaError_t gated_rmsnorm(const GatedRmsNormParams& params, cudaStream_t stream);

// The same per-lane code over every (row, group) on the CPU (host pointers).
void gated_rmsnorm_host(const GatedRmsNormParams& params);

}  // namespace star_elastic::ssm
