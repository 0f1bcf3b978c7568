// moe_ffn's "cuda" backend around the grouped GEMMs: plan, gather and combine (see ffn.h).
#include "moe/ffn.h"

#include "moe/bf16.h"
#include "moe/grouped_gemm.h"

namespace star_elastic {
namespace moe {
namespace {

constexpr int kGatherThreads = 256;
constexpr int kCombineThreads = 128;

size_t round_up(size_t bytes) { return (bytes + 255) / 256 * 256; }

// a / b and a % b for 0 <= a, b < 2^32 (the bindings bound every index below that): 32-bit
// division, where an int64 one is a called subroutine that saves registers to the stack.
__host__ __device__ inline int64_t div32(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint32_t>(a) / static_cast<uint32_t>(b));
}
__host__ __device__ inline int64_t mod32(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint32_t>(a) % static_cast<uint32_t>(b));
}

__host__ __device__ inline int64_t num_slots(const FfnPlanParams& p) {
  return p.num_tokens * p.top_k;
}

__host__ __device__ inline int64_t chunks_of(int64_t slots) {
  const int64_t chunk = align_chunk(slots);
  return div32(slots + chunk - 1, chunk);
}

__host__ __device__ inline void chunk_range(const FfnPlanParams& p, int64_t chunk, int64_t* begin,
                                            int64_t* end) {
  const int64_t slots = num_slots(p), size = align_chunk(slots);
  *begin = chunk * size;
  *end = *begin + size < slots ? *begin + size : slots;
}

__host__ __device__ inline int64_t expert_of(const FfnPlanParams& p, int64_t slot) {
  return p.ids_int64 ? static_cast<const int64_t*>(p.ids)[slot]
                     : static_cast<int64_t>(static_cast<const int32_t*>(p.ids)[slot]);
}

// The shared expert is the GEMM group after the routed experts.
__host__ __device__ inline bool has_shared_group(const FfnPlanParams& p) {
  return p.groups > p.num_experts;
}

__host__ __device__ inline bool in_range(const FfnPlanParams& p, int64_t e) {
  return e >= 0 && e < p.num_experts;
}

// ---- 1. plan (one block; phases separated by __syncthreads) ---------------------------------------

// Adds 1 to *counter: an atomic on the device (the order of the additions does not change the
// count, so the histogram is still deterministic), a plain add in the sequential CPU impl.
__host__ __device__ inline void count_one(int32_t* counter) {
#ifdef __CUDA_ARCH__
  atomicAdd(counter, 1);
#else
  ++*counter;
#endif
}

// Phase 0, thread = histogram cell: zero it.
__host__ __device__ void plan_zero_cell(const FfnPlanParams& p, int64_t cell) {
  p.ws.chunk_counts[cell] = 0;
}

// Phase 1, thread = slot: count it in its chunk's histogram; ids out of range are flagged. One
// thread per slot, so no thread walks a chunk through a chain of dependent read-modify-writes.
__host__ __device__ void plan_count_slot(const FfnPlanParams& p, int64_t slot) {
  const int64_t e = expert_of(p, slot);
  if (!in_range(p, e)) {
    raise_error(p.error_flag, kErrorIdsOutOfRange);
    return;
  }
  const int64_t chunk = div32(slot, align_chunk(num_slots(p)));
  count_one(p.ws.chunk_counts + chunk * p.num_experts + e);
}

// Phase 2, thread = expert: exclusive prefix over the chunks in place; the count goes to
// expert_offsets[e + 1] until phase 3 turns the counts into offsets.
__host__ __device__ void plan_scan_expert(const FfnPlanParams& p, int64_t e) {
  int32_t running = 0;
  const int64_t chunks = chunks_of(num_slots(p));
  for (int64_t c = 0; c < chunks; ++c) {
    int32_t* cell = p.ws.chunk_counts + c * p.num_experts + e;
    const int32_t here = *cell;
    *cell = running;
    running += here;
  }
  p.ws.expert_offsets[e + 1] = running;
}

// Phase 3, one thread: offsets, and the experts with slots in increasing order (the GEMM groups).
__host__ __device__ void plan_offsets(const FfnPlanParams& p) {
  int32_t offset = 0, active = 0;
  p.ws.expert_offsets[0] = 0;
  for (int64_t e = 0; e < p.num_experts; ++e) {
    const int32_t count = p.ws.expert_offsets[e + 1];
    offset += count;
    p.ws.expert_offsets[e + 1] = offset;
    if (count > 0) p.ws.active[1 + active++] = static_cast<int32_t>(e);
  }
  p.ws.active[0] = active;
}

// Phase 4, thread = (table, GEMM group): group g < E is the g-th active expert (none past the
// active count: an empty group), group E the shared expert over all T tokens.
__host__ __device__ void plan_group_table(const FfnPlanParams& p, int table, int64_t g) {
  int64_t start = 0, rows = 0;
  const uint16_t *up, *down;
  if (g < p.num_experts) {
    const int64_t active = p.ws.active[0];
    const int64_t e = g < active ? p.ws.active[1 + g] : 0;
    if (g < active) {
      start = p.ws.expert_offsets[e];
      rows = p.ws.expert_offsets[e + 1] - start;
    }
    up = p.w_up + e * p.up_stride_e;
    down = p.w_down + e * p.down_stride_e;
  } else {
    start = num_slots(p);
    rows = p.num_tokens;
    up = p.shared_up;
    down = p.shared_down;
  }
  const bool routed = g < p.num_experts;
  const int64_t width = routed ? p.r : p.s;
  const int64_t up_ld = routed ? p.up_ld : p.shared_up_ld;
  const uint16_t* x = p.x + start * p.ldx;
  uint16_t* h = p.h + start * p.ldh;
  uint16_t* first = p.glu ? p.gate + start * p.ldh : h;  // the up GEMM's output
  const GemmTables& t = p.ws.tables[table];
  if (table == kFfnUpTable) {
    write_group(t, g, rows, width, p.d, x, p.ldx, up, up_ld, nullptr, 0, first, p.ldh);
  } else if (table == kFfnValueTable) {
    const int64_t value_offset = routed ? p.up_value_offset : p.shared_value_offset;
    write_group(t, g, rows, width, p.d, x, p.ldx, up + value_offset, up_ld, first, p.ldh, h,
                p.ldh);
  } else {
    write_group(t, g, rows, p.d, width, h, p.ldh, down, routed ? p.down_ld : p.shared_down_ld,
                nullptr, 0, p.y + start * p.ldy, p.ldy);
  }
}

__global__ void __launch_bounds__(kPlanThreads) plan_kernel(const FfnPlanParams p) {
  const int64_t cells = chunks_of(num_slots(p)) * p.num_experts;
  for (int64_t c = threadIdx.x; c < cells; c += kPlanThreads) plan_zero_cell(p, c);
  __syncthreads();
  for (int64_t s = threadIdx.x; s < num_slots(p); s += kPlanThreads) plan_count_slot(p, s);
  __syncthreads();
  for (int64_t e = threadIdx.x; e < p.num_experts; e += kPlanThreads) plan_scan_expert(p, e);
  __syncthreads();
  if (threadIdx.x == 0) plan_offsets(p);
  __syncthreads();
  const int tables = p.glu ? 3 : 2;
  for (int64_t i = threadIdx.x; i < tables * p.groups; i += kPlanThreads) {
    const int table = static_cast<int>(div32(i, p.groups));
    plan_group_table(p, table == 1 && !p.glu ? kFfnDownTable : table, mod32(i, p.groups));
  }
}

// ---- 2. gather --------------------------------------------------------------------------------------

// Thread = slot s of chunk c: its row is its expert's first row + the expert's slots in earlier
// chunks (the plan's exclusive prefix) + those earlier in this chunk (stable: slot order), or -1
// for an id out of range. Counting the earlier ones reads at most a chunk of ids, which every
// thread of the block reads in the same order (cache broadcasts), instead of one thread placing
// the chunk through a chain of dependent read-modify-writes.
__host__ __device__ void gather_place_slot(const FfnPlanParams& p, int64_t chunk, int64_t slot) {
  const int64_t e = expert_of(p, slot);
  if (!in_range(p, e)) {
    p.inverse[slot] = -1;
    return;
  }
  int64_t begin, end;
  chunk_range(p, chunk, &begin, &end);
  int32_t rank = 0;
  for (int64_t j = begin; j < slot; ++j) rank += expert_of(p, j) == e ? 1 : 0;
  p.inverse[slot] = p.ws.expert_offsets[e] + p.ws.chunk_counts[chunk * p.num_experts + e] + rank;
}

// Thread i of chunk c's block: column group i % groups of the chunk's slot i / groups.
__host__ __device__ void gather_copy(const FfnPlanParams& p, int64_t chunk, int64_t i) {
  int64_t begin, end;
  chunk_range(p, chunk, &begin, &end);
  const int64_t groups = groups_per_row(p.d);
  const int64_t slot = begin + div32(i, groups), group = mod32(i, groups);
  const int32_t row = p.inverse[slot];
  if (row < 0) return;
  const int64_t token = div32(slot, p.top_k);
  alignas(16) uint16_t v[kBf16Group];
  const int n = group_width(p.d, group);
  load_group(p.hidden + token * p.ld_hidden + group * kBf16Group, n, v);
  store_group(p.x + row * p.ldx + group * kBf16Group, n, v);
}

// Thread i of the shared rows: hidden row i / groups goes to x row P + i / groups.
__host__ __device__ void gather_copy_shared(const FfnPlanParams& p, int64_t i) {
  const int64_t groups = groups_per_row(p.d);
  const int64_t token = div32(i, groups), group = mod32(i, groups);
  alignas(16) uint16_t v[kBf16Group];
  const int n = group_width(p.d, group);
  load_group(p.hidden + token * p.ld_hidden + group * kBf16Group, n, v);
  store_group(p.x + (num_slots(p) + token) * p.ldx + group * kBf16Group, n, v);
}

__global__ void __launch_bounds__(kGatherThreads) gather_kernel(const FfnPlanParams p) {
  const int64_t chunks = chunks_of(num_slots(p));
  const int64_t groups = groups_per_row(p.d);
  const int64_t block = blockIdx.x;
  if (block < chunks) {
    int64_t begin, end;
    chunk_range(p, block, &begin, &end);
    for (int64_t s = begin + threadIdx.x; s < end; s += kGatherThreads) gather_place_slot(p, block, s);
    __syncthreads();  // the chunk's rows are visible to every thread of the block
    for (int64_t i = threadIdx.x; i < (end - begin) * groups; i += kGatherThreads) {
      gather_copy(p, block, i);
    }
  } else {
    const int64_t first = (block - chunks) * kSharedRowsPerBlock;
    const int64_t last = first + kSharedRowsPerBlock < p.num_tokens ? first + kSharedRowsPerBlock
                                                                     : p.num_tokens;
    for (int64_t i = first * groups + threadIdx.x; i < last * groups; i += kGatherThreads) {
      gather_copy_shared(p, i);
    }
  }
}

// ---- 5. combine --------------------------------------------------------------------------------------

__host__ __device__ void combine_thread(const FfnCombineParams& p, int64_t i) {
  const int64_t groups = groups_per_row(p.cols);
  const int64_t token = div32(i, groups), group = mod32(i, groups), col = group * kBf16Group;
  const int n = group_width(p.cols, group);
  float acc[kBf16Group];
  for (int c = 0; c < kBf16Group; ++c) acc[c] = 0.0f;
  alignas(16) uint16_t v[kBf16Group];
  for (int64_t j = 0; j < p.top_k; ++j) {  // in order j = 0..k-1: deterministic
    const int64_t slot = token * p.top_k + j;
    const int32_t row = p.inverse[slot];
    if (row < 0) continue;  // an id out of range (flagged by the plan)
    const float w = p.weights[slot];
    load_group(p.y + static_cast<int64_t>(row) * p.ldy + col, n, v);
    for (int c = 0; c < kBf16Group; ++c)
      if (c < n) acc[c] += bf16_to_float(v[c]) * w;
  }
  for (int c = 0; c < kBf16Group; ++c) acc[c] *= p.scaling;
  if (p.shared) {
    load_group(p.y + (p.tokens * p.top_k + token) * p.ldy + col, n, v);
    for (int c = 0; c < kBf16Group; ++c)
      if (c < n) acc[c] += bf16_to_float(v[c]);
  }
  for (int c = 0; c < kBf16Group; ++c) v[c] = float_to_bf16(acc[c]);
  store_group(p.out + token * p.ld_out + col, n, v);
}

__global__ void __launch_bounds__(kCombineThreads) combine_kernel(const FfnCombineParams p,
                                                                 int64_t threads) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kCombineThreads + threadIdx.x;
  if (i < threads) combine_thread(p, i);
}

}  // namespace

int64_t ffn_chunks(int64_t slots) { return chunks_of(slots); }

size_t ffn_workspace_bytes(int64_t slots, int64_t experts, int groups) {
  const int64_t ints = ffn_chunks(slots) * experts + 2 * (experts + 1);
  return round_up(static_cast<size_t>(ints) * sizeof(int32_t)) + 3 * gemm_tables_bytes(groups) +
         grouped_gemm_cutlass_workspace_bytes(groups);
}

FfnWorkspace carve_ffn_workspace(void* base, int64_t slots, int64_t experts, int groups,
                                 bool swap_ab) {
  FfnWorkspace ws;
  auto* ints = static_cast<int32_t*>(base);
  ws.chunk_counts = ints;
  ws.expert_offsets = ints + ffn_chunks(slots) * experts;
  ws.active = ws.expert_offsets + experts + 1;
  char* p = static_cast<char*>(base) +
            round_up(static_cast<size_t>(ffn_chunks(slots) * experts + 2 * (experts + 1)) *
                     sizeof(int32_t));
  for (GemmTables& t : ws.tables) {
    t = carve_gemm_tables(p, groups, swap_ab);
    p += gemm_tables_bytes(groups);
  }
  ws.cutlass = p;
  ws.cutlass_bytes = grouped_gemm_cutlass_workspace_bytes(groups);
  return ws;
}

cudaError_t ffn_plan_cuda(const FfnPlanParams& p, cudaStream_t stream) {
  if (num_slots(p) == 0) return cudaSuccess;
  plan_kernel<<<1, kPlanThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

void ffn_plan_host(const FfnPlanParams& p) {
  if (num_slots(p) == 0) return;
  const int64_t cells = chunks_of(num_slots(p)) * p.num_experts;
  for (int64_t c = 0; c < cells; ++c) plan_zero_cell(p, c);
  for (int64_t s = 0; s < num_slots(p); ++s) plan_count_slot(p, s);
  for (int64_t e = 0; e < p.num_experts; ++e) plan_scan_expert(p, e);
  plan_offsets(p);
  for (int table : {kFfnUpTable, kFfnValueTable, kFfnDownTable}) {
    if (table == kFfnValueTable && !p.glu) continue;
    for (int64_t g = 0; g < p.groups; ++g) plan_group_table(p, table, g);
  }
}

int64_t ffn_gather_blocks(const FfnPlanParams& p) {
  const int64_t shared = has_shared_group(p)
                             ? (p.num_tokens + kSharedRowsPerBlock - 1) / kSharedRowsPerBlock
                             : 0;
  return chunks_of(num_slots(p)) + shared;
}

cudaError_t ffn_gather_cuda(const FfnPlanParams& p, cudaStream_t stream) {
  const int64_t blocks = ffn_gather_blocks(p);
  if (blocks > 0) gather_kernel<<<static_cast<unsigned>(blocks), kGatherThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

void ffn_gather_host(const FfnPlanParams& p) {
  const int64_t chunks = chunks_of(num_slots(p));
  const int64_t groups = groups_per_row(p.d);
  for (int64_t c = 0; c < chunks; ++c) {
    int64_t begin, end;
    chunk_range(p, c, &begin, &end);
    for (int64_t s = begin; s < end; ++s) gather_place_slot(p, c, s);
    for (int64_t i = 0; i < (end - begin) * groups; ++i) gather_copy(p, c, i);
  }
  if (has_shared_group(p)) {
    for (int64_t i = 0; i < p.num_tokens * groups; ++i) gather_copy_shared(p, i);
  }
}

cudaError_t ffn_combine_cuda(const FfnCombineParams& p, cudaStream_t stream) {
  const int64_t threads = p.tokens * groups_per_row(p.cols);
  if (threads > 0) {
    const auto blocks = static_cast<unsigned>((threads + kCombineThreads - 1) / kCombineThreads);
    combine_kernel<<<blocks, kCombineThreads, 0, stream>>>(p, threads);
  }
  return cudaGetLastError();
}

void ffn_combine_host(const FfnCombineParams& p) {
  const int64_t threads = p.tokens * groups_per_row(p.cols);
  for (int64_t i = 0; i < threads; ++i) combine_thread(p, i);
}

}  // namespace moe
}  // namespace star_elastic
