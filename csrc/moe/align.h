// Token alignment for grouped MoE GEMMs (the reference: star_elastic_kernels/reference/moe.py
// moe_align): group the (token, k) slots by expert, stably.
//
// Plain CUDA C++ (no torch headers); the binding and the Python wrapper check the arguments.
// Outputs, all int32: counts (E,) slots per expert; expert_offsets (E+1,) their exclusive prefix
// sum; block_offsets (E+1,) the prefix sum of ceil(counts / block_m); sorted_slots (S,) the slot
// ids s = t*k + j of expert 0 in increasing order, then expert 1's, ... An expert without slots
// gets no entries and no blocks. Deterministic (no atomics): the slots are cut into chunks of
// align_chunk(num_slots) slots (at least kAlignChunk, and at most kAlignMaxChunks chunks, so the
// per-expert scan stays short at prefill sizes); four phases run one after another:
//   1. count_chunk(c):  per-chunk histogram      workspace[c, e] = #slots of chunk c on expert e
//   2. scan_expert(e):  per-expert prefix over the chunks (workspace becomes exclusive), counts[e]
//   3. offsets():       expert_offsets and block_offsets from counts (one thread)
//   4. fill_chunk(c):   each slot of chunk c, in order, goes to
//                       expert_offsets[e] + workspace[c, e]++
// Every phase is a per-thread __host__ __device__ function: align_cuda launches each over a grid,
// align_host runs the same functions sequentially on the CPU (so CPU tests exercise the kernel's
// index math, not its launch).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "moe/error_flags.h"

namespace star_elastic {
namespace moe {

constexpr int64_t kAlignChunk = 64;
constexpr int64_t kAlignMaxChunks = 512;

// Slots per chunk for num_slots slots.
__host__ __device__ inline int64_t align_chunk(int64_t num_slots) {
  const int64_t even = (num_slots + kAlignMaxChunks - 1) / kAlignMaxChunks;
  return even > kAlignChunk ? even : kAlignChunk;
}

struct AlignParams {
  const void* ids;  // (num_slots,) contiguous, int32 or int64; ids outside [0, num_experts) are
                    // skipped (no slot, no count) and raise kErrorIdsOutOfRange
  bool ids_int64;
  int64_t num_slots;
  int64_t num_experts;
  int64_t block_m;
  int32_t* workspace;       // align_workspace_elements(num_slots, num_experts) int32
  int32_t* sorted_slots;    // (num_slots,)
  int32_t* counts;          // (num_experts,)
  int32_t* expert_offsets;  // (num_experts + 1,)
  int32_t* block_offsets;   // (num_experts + 1,)
  int32_t* error_flag;      // nullptr or one int32: kErrorIdsOutOfRange (error_flags.h)
};

inline int64_t align_workspace_elements(int64_t num_slots, int64_t num_experts) {
  const int64_t chunk = align_chunk(num_slots);
  const int64_t chunks = (num_slots + chunk - 1) / chunk;
  return (chunks > 0 ? chunks : 1) * num_experts;
}

// Launch the four phases on `stream` (device pointers).
cudaError_t align_cuda(const AlignParams& params, cudaStream_t stream);

// The same per-thread code, sequentially on the host (host pointers).
void align_host(const AlignParams& params);

}  // namespace moe
}  // namespace star_elastic
