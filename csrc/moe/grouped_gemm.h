// Hopper (sm_90a) grouped GEMM over experts for the MoE ops, CUTLASS 3 pointer-array kernel.
//
// Group g owns the rows group_ends[g-1]..group_ends[g] of A (row-major, row stride lda) and
// computes D[rows] = A[rows] @ B_g^T, where B_g = b + g * stride_bg is an (N, K) matrix with row
// stride ldb and unit column stride: a prefix view w[:, :n, :k] of a parent (E, N', K') weight is
// read in place. The per-group problem shapes, pointers and strides are built on the device from
// group_ends (no host sync); an empty group has no tiles. bf16 in, fp32 accumulation, bf16 out.
// group_ends are checked on the device: ends that decrease, are negative or do not finish at M
// raise kErrorBadGroupEnds in error_flag and are clamped into [0, M] (never read out of bounds).
// TMA needs 16-byte alignment: lda, ldb, ldd, N and K multiples of 8, base pointers 16-byte aligned.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "moe/error_flags.h"

namespace star_elastic {
namespace moe {

struct GroupedGemmArgs {
  const void* a;               // bf16 (M, K), row stride lda
  int64_t lda;
  const void* b;               // bf16 (G, N, K) view: group stride stride_bg, row stride ldb
  int64_t stride_bg;
  int64_t ldb;
  void* d;                     // bf16 (M, N), row stride ldd
  int64_t ldd;
  const int32_t* group_ends;   // (G,) cumulative end rows, on the device
  int32_t* error_flag;         // nullptr or one int32 on the device (error_flags.h)
  int num_groups;
  int64_t m;
  int64_t n;
  int64_t k;
};

// Bytes of device scratch grouped_gemm_bf16 needs for num_groups groups: a bound that holds on
// any GPU with up to kMaxSmCount SMs, computed without touching a device (so callers can size it
// while tracing with fake tensors).
constexpr int kMaxSmCount = 256;
size_t grouped_gemm_bf16_workspace_size(int num_groups);

// Launches on `stream`; `workspace` holds grouped_gemm_bf16_workspace_size(...) bytes, 256-byte
// aligned. Returns cudaErrorInvalidValue when the alignment rules above are broken.
cudaError_t grouped_gemm_bf16(const GroupedGemmArgs& args, void* workspace, size_t workspace_bytes,
                              int device, cudaStream_t stream);

}  // namespace moe
}  // namespace star_elastic
