// moe_ffn's "cuda" backend in five launches (six for SiLU-GLU), none of which waits on the host:
//
//   1. plan (one block):   count the slots of each expert per chunk (a thread per slot), scan them
//                          into expert offsets, list the experts that have slots (active first:
//                          the others become empty groups at the end, with no tiles), and write
//                          the argument tables of every grouped GEMM (gemm_tables.h);
//   2. gather (a block per chunk, + blocks for the shared rows): place each slot at its row in
//                          expert order (a thread per slot; stable: increasing slot within an
//                          expert), record it (inverse), and copy its token's hidden row there;
//   3. up GEMM:            x @ w_up[e, :r, :d]^T with ReLU^2 in the epilogue -> h;
//                          (SiLU-GLU: gate GEMM -> g, then value GEMM with silu(g) * acc -> h);
//   4. down GEMM:          h @ w_down[e, :d, :r]^T -> y;
//   5. combine:            out[t] = scaling * sum_j weights[t, j] * y[row(t, j)] (+ y[shared row t]).
//
// The shared expert is one more group of the same grouped GEMMs (group E: all T tokens, its own
// widths), so it costs no extra launch. Buffers (bf16, row-major, row strides multiples of 8 so TMA
// can read them; the widths themselves may be anything): x (P + T, ldx) gathered rows then the T
// hidden rows, h and g (P + T, ldh), y (P + T, ldy); P = T * k slots.
//
// Every thread's work is a __host__ __device__ function; the *_cuda functions launch them, the
// *_host functions run the same functions sequentially (the CPU impls, for tests without a GPU).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "moe/align.h"
#include "moe/error_flags.h"
#include "moe/gemm_tables.h"

namespace star_elastic {
namespace moe {

enum FfnTable : int { kFfnUpTable = 0, kFfnValueTable = 1, kFfnDownTable = 2 };

// The int32 bookkeeping and the GEMM tables, carved from one workspace (ffn_workspace_bytes).
struct FfnWorkspace {
  int32_t* chunk_counts;    // (chunks, E): per-chunk histogram, then its exclusive prefix per expert
  int32_t* expert_offsets;  // (E + 1,): first row of each expert's slots
  int32_t* active;          // (E + 1,): active[0] = experts with slots, active[1 + i] = the i-th
  GemmTables tables[3];     // FfnTable order
  void* cutlass;            // grouped_gemm_cutlass_workspace_bytes(groups)
  size_t cutlass_bytes;
};

size_t ffn_workspace_bytes(int64_t num_slots, int64_t num_experts, int groups);
FfnWorkspace carve_ffn_workspace(void* base, int64_t num_slots, int64_t num_experts, int groups,
                                 bool swap_ab);

struct FfnPlanParams {
  const void* ids;  // (T, k) contiguous int32 or int64; ids outside [0, E) are skipped, flagged
  bool ids_int64;
  int64_t num_tokens, top_k, num_experts;
  FfnWorkspace ws;
  int32_t* error_flag;
  // activations (bf16 bit patterns)
  const uint16_t* hidden;  // (T, d), row stride ld_hidden
  int64_t ld_hidden;
  uint16_t* x;             // (P + T, ldx)
  int64_t ldx;
  uint16_t* gate;          // SiLU-GLU only: (P + T, ldh); else nullptr
  uint16_t* h;             // (P + T, ldh)
  int64_t ldh;
  uint16_t* y;             // (P + T, ldy)
  int64_t ldy;
  int32_t* inverse;        // (P,): the row of each slot, -1 for a skipped slot
  // parent weights, read at the active widths through their strides
  const uint16_t* w_up;    // (E, F or 2F, D)
  int64_t up_stride_e, up_ld, up_value_offset;  // value rows at + up_value_offset (GLU)
  const uint16_t* w_down;  // (E, D, F)
  int64_t down_stride_e, down_ld;
  const uint16_t* shared_up;    // nullptr or (Fs or 2Fs, D)
  int64_t shared_up_ld, shared_value_offset;
  const uint16_t* shared_down;  // (D, Fs)
  int64_t shared_down_ld;
  int64_t r, d, s;              // active widths: routed neurons, hidden channels, shared neurons
  bool glu;
  int groups;                   // E (+ 1 with a shared expert)
};

constexpr int kPlanThreads = 512;
constexpr int64_t kSharedRowsPerBlock = 8;

int64_t ffn_chunks(int64_t num_slots);  // chunks of align_chunk(num_slots) slots (align.h)

// 1. plan: one block. 2. gather: ffn_gather_blocks(...) blocks.
cudaError_t ffn_plan_cuda(const FfnPlanParams& params, cudaStream_t stream);
void ffn_plan_host(const FfnPlanParams& params);
int64_t ffn_gather_blocks(const FfnPlanParams& params);
cudaError_t ffn_gather_cuda(const FfnPlanParams& params, cudaStream_t stream);
void ffn_gather_host(const FfnPlanParams& params);

// 5. combine: thread per (token, group of 8 columns).
struct FfnCombineParams {
  const uint16_t* y;  // (P + T, ldy)
  int64_t ldy;
  const int32_t* inverse;  // (P,)
  const float* weights;    // (T, k) contiguous
  bool shared;             // add y's shared rows P + t
  uint16_t* out;           // (T, d)
  int64_t ld_out;
  int64_t tokens, top_k, cols;
  float scaling;
};

cudaError_t ffn_combine_cuda(const FfnCombineParams& params, cudaStream_t stream);
void ffn_combine_host(const FfnCombineParams& params);

}  // namespace moe
}  // namespace star_elastic
