// Token alignment for grouped MoE GEMMs (see align.h for the contract and the four phases).
#include "moe/align.h"

namespace star_elastic {
namespace moe {
namespace {

constexpr int kThreads = 128;

__host__ __device__ inline int64_t num_chunks(const AlignParams& p) {
  const int64_t chunk = align_chunk(p.num_slots);
  return (p.num_slots + chunk - 1) / chunk;
}

// The slots [*begin, *end) of a chunk.
__host__ __device__ inline void chunk_range(const AlignParams& p, int64_t chunk, int64_t* begin,
                                            int64_t* end) {
  const int64_t size = align_chunk(p.num_slots);
  *begin = chunk * size;
  *end = *begin + size < p.num_slots ? *begin + size : p.num_slots;
}

__host__ __device__ inline int64_t expert_of(const AlignParams& p, int64_t slot) {
  return p.ids_int64 ? static_cast<const int64_t*>(p.ids)[slot]
                     : static_cast<int64_t>(static_cast<const int32_t*>(p.ids)[slot]);
}

// Phase 1, thread = chunk: the chunk's histogram over the experts (ids out of range are
// skipped rather than written out of bounds, and flagged).
__host__ __device__ void count_chunk(const AlignParams& p, int64_t chunk) {
  int32_t* row = p.workspace + chunk * p.num_experts;
  for (int64_t e = 0; e < p.num_experts; ++e) row[e] = 0;
  int64_t begin, end;
  chunk_range(p, chunk, &begin, &end);
  for (int64_t s = begin; s < end; ++s) {
    const int64_t e = expert_of(p, s);
    if (e >= 0 && e < p.num_experts) {
      ++row[e];
    } else {
      raise_error(p.error_flag, kErrorIdsOutOfRange);
    }
  }
}

// Phase 2, thread = expert: exclusive prefix over the chunks, in place; the total is the count.
// Consecutive threads read consecutive words of a workspace row (coalesced).
__host__ __device__ void scan_expert(const AlignParams& p, int64_t e) {
  int32_t running = 0;
  const int64_t chunks = num_chunks(p);
  for (int64_t c = 0; c < chunks; ++c) {
    int32_t* cell = p.workspace + c * p.num_experts + e;
    const int32_t here = *cell;
    *cell = running;
    running += here;
  }
  p.counts[e] = running;
}

// Phase 3, one thread: expert and row-block offsets.
__host__ __device__ void offsets(const AlignParams& p) {
  int32_t slots = 0, blocks = 0;
  p.expert_offsets[0] = 0;
  p.block_offsets[0] = 0;
  for (int64_t e = 0; e < p.num_experts; ++e) {
    const int32_t c = p.counts[e];
    slots += c;
    blocks += static_cast<int32_t>((c + p.block_m - 1) / p.block_m);
    p.expert_offsets[e + 1] = slots;
    p.block_offsets[e + 1] = blocks;
  }
}

// Phase 4, thread = chunk: place the chunk's slots, in increasing order within each expert.
__host__ __device__ void fill_chunk(const AlignParams& p, int64_t chunk) {
  int32_t* row = p.workspace + chunk * p.num_experts;
  int64_t begin, end;
  chunk_range(p, chunk, &begin, &end);
  for (int64_t s = begin; s < end; ++s) {
    const int64_t e = expert_of(p, s);
    if (e < 0 || e >= p.num_experts) continue;
    p.sorted_slots[p.expert_offsets[e] + row[e]++] = static_cast<int32_t>(s);
  }
}

__global__ void __launch_bounds__(kThreads) count_kernel(const AlignParams p) {
  const int64_t chunk = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (chunk < num_chunks(p)) count_chunk(p, chunk);
}

__global__ void __launch_bounds__(kThreads) scan_kernel(const AlignParams p) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (e < p.num_experts) scan_expert(p, e);
}

__global__ void offsets_kernel(const AlignParams p) { offsets(p); }

__global__ void __launch_bounds__(kThreads) fill_kernel(const AlignParams p) {
  const int64_t chunk = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (chunk < num_chunks(p)) fill_chunk(p, chunk);
}

unsigned grid_for(int64_t threads) {
  return static_cast<unsigned>((threads + kThreads - 1) / kThreads);
}

}  // namespace

cudaError_t align_cuda(const AlignParams& p, cudaStream_t stream) {
  if (p.num_experts <= 0) return cudaSuccess;
  const int64_t chunks = num_chunks(p);
  if (chunks > 0) count_kernel<<<grid_for(chunks), kThreads, 0, stream>>>(p);
  scan_kernel<<<grid_for(p.num_experts), kThreads, 0, stream>>>(p);
  offsets_kernel<<<1, 1, 0, stream>>>(p);
  if (chunks > 0) fill_kernel<<<grid_for(chunks), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

void align_host(const AlignParams& p) {
  if (p.num_experts <= 0) return;
  const int64_t chunks = num_chunks(p);
  for (int64_t c = 0; c < chunks; ++c) count_chunk(p, c);
  for (int64_t e = 0; e < p.num_experts; ++e) scan_expert(p, e);
  offsets(p);
  for (int64_t c = 0; c < chunks; ++c) fill_chunk(p, c);
}

}  // namespace moe
}  // namespace star_elastic
