// Chunked Mamba-2 SSD scan (prefill) forward at an elastic width, in four phases.
//
// Plain CUDA C++: raw pointers, sizes and strides (in elements), no torch headers. The binding file
// (csrc/ssm/bindings.cpp) turns tensors into these arguments; the Python wrapper
// (star_elastic_kernels/ssm/scan.py) has checked every shape and dtype and built the chunk tables.
//
// Active head h' (compact, group-major) is parent head (h' / k) * parent_heads_per_group + h' % k
// and uses group h' / k. Per token t and active head h' (parent head ph, group g), in fp32:
//   dt_t = clamp(softplus?(dt[t, h'] + dt_bias[ph]), dt_min, dt_max)
//   h_t  = exp(dt_t * A[ph]) h_{t-1} + dt_t x_t B_t^T             (state (p, N), fp32)
//   y_t  = (h_t C_t + D[ph(, c)] x_t) * silu(z_t)
// with the state restarting (at initial_states, else zero) at every sequence. The work is split in
// chunks that never straddle a sequence: chunk_table (3, num_chunks) int64 holds each chunk's batch
// row, first token and length (1 .. chunk_size, or 0 for a padding chunk, which is skipped);
// seq_table (2, num_seqs) int64 each sequence's first chunk and chunk count (0 for an empty
// sequence, whose final state is its initial state).
//
// Kernels: (1) chunk cumsum of dt*A, (1b) C.B^T once per (chunk, group), (2) the chunk states
// fused with the state passing: each chunk's own state contribution stays in registers, the block
// waits for the state entering its chunk (published by the block of the chunk before, through
// global memory and a flag), adds its own part and publishes the state entering the next chunk
// (or the final state); (4) chunk scan: the intra-chunk C.B^T decay-masked term, the inter-chunk
// C.h term, D.x and the z gate, each head once its entering state is published. (2) and (4) are
// blocks of one launch, taking tickets chunk by chunk (batched rows side by side), so the scan
// of early chunks overlaps the chain of later ones. A small kernel writes the final states of
// empty sequences. (2) and (4) run on tensor cores (mma.sync, fp32 accumulation: m16n8k16 for
// fp16/bf16, 3xTF32 m16n8k8 for fp32, which keeps fp32 accuracy); with 16-bit activations the
// decayed operands (x dt exp(cum_end - cum_t), the masked decayed scores, the entering state) are
// rounded to the activation dtype for the MMA.
//
// ssd_scan_host() runs the very same per-thread code on the CPU (block by block, barrier phase by
// barrier phase, thread by thread, shared memory a host array; the blocks of (2) and (4), which
// wait for each other, on several host threads at once). It verifies the arithmetic, the indexing
// and the chain's hand-offs of the kernels, not the launch, the warp scheduling, the GPU's memory
// ordering or the timing.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "ssm/ssd_state_update.h"  // DType

namespace star_elastic::ssm {

// Longest chunk the kernels take (the Python launcher clamps chunk_size to it).
constexpr int64_t kScanMaxChunk = 256;

struct ScanParams {
  const void* x;  // (b, l, H', p); x, B, C, z and y share act_type; unit inner stride
  DType act_type;
  int64_t x_stride_b, x_stride_l, x_stride_h;
  const void* dt;  // (b, l, H')
  DType dt_type;
  int64_t dt_stride_b, dt_stride_l, dt_stride_h;
  const void* A;  // (H,) parent
  DType A_type;
  int64_t A_stride;
  const void* B;  // (b, l, G, N), unit inner stride
  int64_t B_stride_b, B_stride_l, B_stride_g;
  const void* C;  // (b, l, G, N), unit inner stride
  int64_t C_stride_b, C_stride_l, C_stride_g;
  const void* D;  // nullptr, (H,) or (H, P) parent; D_stride_p is 0 for (H,)
  DType D_type;
  int64_t D_stride_h, D_stride_p;
  const void* z;  // nullptr or (b, l, H', p), unit inner stride
  int64_t z_stride_b, z_stride_l, z_stride_h;
  const void* dt_bias;  // nullptr or (H,) parent
  DType dt_bias_type;
  int64_t dt_bias_stride;
  const void* initial;  // nullptr or (b or S, H', p, N)
  DType initial_type;
  int64_t initial_stride[4];
  const int64_t* chunk_table;  // (3, num_chunks): batch row, first token, length
  const int64_t* seq_table;    // (2, num_seqs): first chunk, chunk count
  void* y;                     // (b, l, H', p), unit inner stride
  int64_t y_stride_b, y_stride_l, y_stride_h;
  float* final_states;  // (num_seqs, H', p, N) contiguous fp32
  float* workspace;     // ssd_scan_workspace_floats(...) fp32 values
  // storage of the entering states in the workspace (the state chain): kFloat32, or act_type for
  // 16-bit activations (half the chain's traffic; each chunk's entering state rounded once)
  DType chain_type;
  int32_t* errors;      // (1,) int32 device error word (kErrorScanChainStalled)
  int64_t num_chunks, num_seqs, active_heads, heads_per_group, parent_heads_per_group, head_dim,
      state_size, chunk_size;
  // The chunk table is chain_rows runs of num_chunks / chain_rows chunks, one per batch row
  // (batched rows), or one run (packed sequences, batch 1): the blocks walk the runs side by side.
  int64_t chain_rows;
  bool dt_softplus;
  float dt_min, dt_max;
};

// Side of the chunk state's square tiles: the state of every (chunk, head) is produced in
// ceil(p / 64) x ceil(N / 64) tiles, each handed to the next chunk through its own flag.
constexpr int64_t kScanStateTile = 64;

// fp32 values of scratch: processed dt and cumulative dt*A per (chunk, head, token of the chunk),
// the state entering every (chunk, head), (p, N) each (chain_type elements, so 16-bit ones fill
// half of that region), and C.B^T once per
// (chunk, group), Q x Q rows of an even pitch so the chunk scan reads it in 8-byte pairs; the
// C.B^T block starts 16-byte aligned. Then 32-bit words the launch zeroes: the chunk-state blocks'
// ticket counter, this launch's "a chain stalled" word, and one "published" flag per (chunk,
// head, p tile, N tile) of the state chain.
// __host__ __device__: the kernels address the workspace with the same functions the launchers
// size it with.
__host__ __device__ inline int64_t ssd_scan_cb_pitch(int64_t chunk_size) {
  return (chunk_size + 1) / 2 * 2;
}
__host__ __device__ inline int64_t ssd_scan_cb_offset(int64_t num_chunks, int64_t active_heads,
                                                      int64_t head_dim, int64_t state_size,
                                                      int64_t chunk_size) {
  return (num_chunks * active_heads * (2 * chunk_size + head_dim * state_size) + 3) / 4 * 4;
}
__host__ __device__ inline int64_t ssd_scan_flags_offset(int64_t num_chunks, int64_t active_heads,
                                                         int64_t groups, int64_t head_dim,
                                                         int64_t state_size, int64_t chunk_size) {
  const int64_t pitch = ssd_scan_cb_pitch(chunk_size);
  return ssd_scan_cb_offset(num_chunks, active_heads, head_dim, state_size, chunk_size) +
         num_chunks * groups * pitch * pitch;
}
__host__ __device__ inline int64_t ssd_scan_flag_words(int64_t num_chunks, int64_t active_heads,
                                                       int64_t head_dim, int64_t state_size) {
  const int64_t tiles = (head_dim + kScanStateTile - 1) / kScanStateTile *
                        ((state_size + kScanStateTile - 1) / kScanStateTile);
  return 2 + num_chunks * active_heads * tiles;
}
__host__ __device__ inline int64_t ssd_scan_workspace_floats(int64_t num_chunks,
                                                             int64_t active_heads, int64_t groups,
                                                             int64_t head_dim, int64_t state_size,
                                                             int64_t chunk_size) {
  return ssd_scan_flags_offset(num_chunks, active_heads, groups, head_dim, state_size, chunk_size) +
         ssd_scan_flag_words(num_chunks, active_heads, head_dim, state_size);
}

cudaError_t ssd_scan(const ScanParams& params, cudaStream_t stream);
void ssd_scan_host(const ScanParams& params);

}  // namespace star_elastic::ssm
