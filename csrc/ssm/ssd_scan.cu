// Chunked Mamba-2 SSD scan forward (see ssd_scan.h for the contract).
//
// Every kernel is written as a block program: a __host__ __device__ function of the block index
// whose per-thread work is a sequence of phases, Block::phase(body). On the device each thread runs
// body(threadIdx.x) and then waits at __syncthreads(); on the host (ssd_scan_host) the body runs for
// thread 0, 1, ..., kThreads-1 in turn, which is the same schedule a barrier allows. Shared memory
// is a struct (dynamic shared memory on the device, a heap object on the host). So the CPU build
// runs exactly the per-thread code of the kernels, which is how the tests check it without a GPU;
// it says nothing about the launch, warp scheduling or speed. Blocks run one after another,
// except those of the chunk kernel, which wait for each other (sections 3 and 5): several host
// threads run those at once.
//
// Kernels (128 threads each; 64-bit offsets throughout):
//  1. cumsum_kernel, one block per (chunk, head): processed dt and the inclusive cumsum of dt*A over
//     the chunk (segmented: per-thread runs, then the run totals), to the workspace.
//  3b. empty_sequence_kernel, per (sequence, head, 512 state entries): the final state of a
//     sequence without chunks (its initial state, or zero).
// The matmuls run on tensor cores: mma.sync m16n8k16 for fp16/bf16 activations, m16n8k8 on tf32 in
// three parts for fp32 ones (3xTF32, fp32-accurate), fp32 accumulation, operands through ldmatrix
// (or value by value for transposed fp32 tiles) from shared-memory tiles of 64 x 64 staged by
// 16-byte cp.async where a row chunk is aligned (plain loads otherwise), two stages so the next
// tile's copy overlaps the current MMAs; each warp owns a 16 x 64 output tile:
//  1b. chunk_cb_kernel, per (chunk, group, 64 rows t, 64 columns s <= t): C.B^T in fp32 to the
//     workspace, once per group: every head of the group reads it, none recomputes it.
//  2 + 4. tc_chunk_kernel, one launch for the chunk states and the chunk scan (section 5): its
//     blocks take tickets that name either block, chunk by chunk, a chunk's states first.
//  2. Chunk-state block, per (chunk, group, 64 channels, 64 state entries), the group's heads
//     in turn over B staged once: the chunk's own state of each head
//     S[p, n] = sum_t x[t, p] exp(cum_end - cum_t) dt_t B[t, n]; x and B are token-major,
//     so both fragments come transposed, and the decay scales the x fragment in registers before
//     it is rounded back to 16 bits (or split into tf32 parts). Fused with the state passing
//     (section 3): S stays in registers, the block waits for the state entering its chunk,
//     published by the previous chunk's block, and publishes exp(cum_end) h_in + S for the next
//     chunk (the final state after a sequence's last chunk). A block waits only for blocks with
//     smaller tickets, which have started.
//  4. Chunk-scan block, per (chunk, group, 64 channels, 64 tokens), the group's heads in turn
//     over C staged once (N <= 256): waits for the state entering the chunk, then
//     y = exp(cum_t) C_t h_in
//     (the entering state rounded to 16 bits when staged, kept fp32 for fp32 activations; with
//     a 16-bit chain_type the chain stores it rounded already, halving the chain's traffic)
//     + sum_{s<=t} CB[t, s] exp(cum_t - cum_s) dt_s x_s, the decayed masked CB fragment built in
//     registers from the workspace; each warp stops at its own last row (causal skip); then D x
//     and the gate.
// The states and all elementwise arithmetic are fp32. ssd_scan_host() runs the warp programs too:
// ldmatrix and mma.sync are emulated lane by lane through the PTX fragment maps (warp_mma,
// ldmatrix_x4, tf32 rounding as cvt.rna), so the CPU tests check the fragment indexing.
#include "ssm/ssd_scan.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "ssm/float_access.cuh"

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <vector>

namespace star_elastic::ssm {
namespace {

constexpr int kThreads = 128;
constexpr int kFinalElems = 4;  // state entries per thread (3b)
constexpr int64_t kMaxChunk = kScanMaxChunk;

// Unrolling hints for the device compiler only (the host compiler would warn about the pragma).
#ifdef __CUDA_ARCH__
#define SSD_UNROLL _Pragma("unroll")
#define SSD_UNROLL_4 _Pragma("unroll 4")
#else
#define SSD_UNROLL
#define SSD_UNROLL_4
#endif

// ---- the block-program machinery -----------------------------------------------------------------

struct Block {
  int64_t x, y, z;

  // One barrier phase: every thread runs body(thread), then all wait.
  template <class F>
  __host__ __device__ __forceinline__ void phase(F&& body) const {
#ifdef __CUDA_ARCH__
    body(static_cast<int>(threadIdx.x));
    __syncthreads();
#else
    for (int t = 0; t < kThreads; ++t) body(t);
#endif
  }

  // Per-thread work that touches no shared memory: no barrier needed.
  template <class F>
  __host__ __device__ __forceinline__ void each(F&& body) const {
#ifdef __CUDA_ARCH__
    body(static_cast<int>(threadIdx.x));
#else
    for (int t = 0; t < kThreads; ++t) body(t);
#endif
  }
};

// ---- conversions and small helpers ---------------------------------------------------------------

using detail::from_float;
using detail::load_float;
using detail::to_float;

__host__ __device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__host__ __device__ __forceinline__ int64_t ceil_div_i(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

struct ChunkInfo {
  int64_t chunk, head, group, parent_head, batch, token0, length;
};

// Block x of kernel 1 is chunk * H' + head (the tensor-core kernels: group_chunk).
__host__ __device__ __forceinline__ ChunkInfo chunk_info(const ScanParams& p, int64_t block_x) {
  ChunkInfo c;
  c.chunk = block_x / p.active_heads;
  c.head = block_x % p.active_heads;
  c.group = c.head / p.heads_per_group;
  c.parent_head = c.group * p.parent_heads_per_group + c.head % p.heads_per_group;
  c.batch = p.chunk_table[c.chunk];
  c.token0 = p.chunk_table[p.num_chunks + c.chunk];
  c.length = p.chunk_table[2 * p.num_chunks + c.chunk];
  return c;
}

// Workspace: dt (chunks, H', Q), cumsum (chunks, H', Q), entering states (chunks, H', p, N) stored
// as S (ScanParams::chain_type: fp32, or the 16-bit activation type).
__host__ __device__ __forceinline__ float* ws_dt(const ScanParams& p, int64_t chunk, int64_t head) {
  return p.workspace + (chunk * p.active_heads + head) * p.chunk_size;
}
__host__ __device__ __forceinline__ float* ws_cum(const ScanParams& p, int64_t chunk, int64_t head) {
  return p.workspace + (p.num_chunks + chunk) * p.active_heads * p.chunk_size + head * p.chunk_size;
}
template <typename S>
__host__ __device__ __forceinline__ S* ws_state(const ScanParams& p, int64_t chunk, int64_t head) {
  return reinterpret_cast<S*>(p.workspace + 2 * p.num_chunks * p.active_heads * p.chunk_size) +
         (chunk * p.active_heads + head) * p.head_dim * p.state_size;
}

__host__ __device__ __forceinline__ float process_dt(const ScanParams& p, const ChunkInfo& c,
                                                     int64_t token) {
  float dt = load_float(p.dt, p.dt_type,
                        c.batch * p.dt_stride_b + token * p.dt_stride_l + c.head * p.dt_stride_h);
  if (p.dt_bias != nullptr)
    dt += load_float(p.dt_bias, p.dt_bias_type, c.parent_head * p.dt_bias_stride);
  if (p.dt_softplus) dt = dt <= 20.0f ? log1pf(expf(dt)) : dt;  // torch's threshold
  return fminf(fmaxf(dt, p.dt_min), p.dt_max);
}

// ---- 1. chunk cumsum -----------------------------------------------------------------------------

struct CumsumShared {
  float dt[kMaxChunk];
  float run[kMaxChunk];  // dt*A, then its inclusive cumsum
  float total[kThreads];
};

__host__ __device__ __forceinline__ void cumsum_block(const ScanParams& p, const Block& blk,
                                                      CumsumShared& sm) {
  const ChunkInfo c = chunk_info(p, blk.x);
  const int64_t q = p.chunk_size;
  const int64_t seg = (q + kThreads - 1) / kThreads;  // tokens per thread in the scan
  const float rate = load_float(p.A, p.A_type, c.parent_head * p.A_stride);
  blk.phase([&](int t) {
    for (int64_t i = t; i < q; i += kThreads) {
      const float dt = i < c.length ? process_dt(p, c, c.token0 + i) : 0.0f;
      sm.dt[i] = dt;
      sm.run[i] = dt * rate;
    }
  });
  blk.phase([&](int t) {  // each thread scans its own run of tokens
    float sum = 0.0f;
    for (int64_t i = t * seg; i < min64(q, (t + 1) * seg); ++i) {
      sum += sm.run[i];
      sm.run[i] = sum;
    }
    sm.total[t] = sum;
  });
  blk.phase([&](int t) {  // ... and adds the totals of the runs before it
    float prefix = 0.0f;
    for (int j = 0; j < t; ++j) prefix += sm.total[j];
    for (int64_t i = t * seg; i < min64(q, (t + 1) * seg); ++i) sm.run[i] += prefix;
  });
  float* dt_out = ws_dt(p, c.chunk, c.head);
  float* cum_out = ws_cum(p, c.chunk, c.head);
  blk.each([&](int t) {
    for (int64_t i = t; i < q; i += kThreads) {
      dt_out[i] = sm.dt[i];
      cum_out[i] = sm.run[i];
    }
  });
}

// ---- 3. the state chain between the chunk-state blocks --------------------------------------------
//
// The state entering chunk c + 1 is exp(total_c) h_c + S_c, S_c the chunk's own contribution. The
// chunk-state block of (chunk c, head, tile) keeps S_c in registers, waits until the block of chunk
// c - 1 has published h_c (global memory, then its flag), writes h_{c+1} and publishes it in turn;
// the first chunk of a sequence starts from the initial state (and publishes it as its entering
// state, for the chunk scan), the last writes the final state. Only the entering states travel
// through global memory (once written, once read by the next block and once by the chunk scan,
// both from L2); the chunks' own states never leave the chip.
//
// Forward progress without relying on the order in which the hardware starts blocks: every block
// first takes a ticket (an atomic counter the launch zeroes) and works on the tile the ticket
// names, tickets chunk by chunk (section 5). A block only ever waits for a smaller ticket, whose
// block has started (it took that ticket) and itself waits only for smaller ones, so the smallest
// unfinished ticket always runs to its end. On the host several threads run the blocks at once
// (run_host_concurrently), so there the waits are real too.

__host__ __device__ __forceinline__ unsigned* chain_words(const ScanParams& p) {
  return reinterpret_cast<unsigned*>(
      p.workspace + ssd_scan_flags_offset(p.num_chunks, p.active_heads, p.active_heads /
                                          p.heads_per_group, p.head_dim, p.state_size,
                                          p.chunk_size));
}

__host__ __device__ __forceinline__ int64_t state_tiles_p(const ScanParams& p) {
  return ceil_div_i(p.head_dim, kScanStateTile);
}
__host__ __device__ __forceinline__ int64_t state_tiles_n(const ScanParams& p) {
  return ceil_div_i(p.state_size, kScanStateTile);
}

// The flag of the state entering (chunk, head) at state tile (p tile, N tile); word 0 is the
// ticket counter, word 1 this launch's stall word.
__host__ __device__ __forceinline__ unsigned* chain_flag(const ScanParams& p, int64_t chunk,
                                                         int64_t head, int64_t p_tile,
                                                         int64_t n_tile) {
  return chain_words(p) + 2 +
         ((chunk * p.active_heads + head) * state_tiles_p(p) + p_tile) * state_tiles_n(p) + n_tile;
}

__host__ __device__ __forceinline__ unsigned take_ticket(unsigned* counter) {
#ifdef __CUDA_ARCH__
  return atomicAdd(counter, 1u);
#else
  return __atomic_fetch_add(counter, 1u, __ATOMIC_RELAXED);
#endif
}

// A wait that outlasts this cannot be a slow predecessor (a whole scan of a million tokens takes
// milliseconds on a GPU; the host, emulating blocks thread by thread, waits ten times longer):
// a bug in the chain, reported through the error word instead of a hang.
constexpr uint64_t kChainWaitLimitNs = 1000000000ull;

// A wait of this launch has timed out: from then on no block of it waits any longer, so a broken
// chain costs one time limit, not one per chunk (word 1 of the chain words, zeroed per launch).
__host__ __device__ __forceinline__ bool chain_stalled(const unsigned* stall_word) {
#ifdef __CUDA_ARCH__
  unsigned v;
  asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(stall_word) : "memory");
#else
  const unsigned v = __atomic_load_n(stall_word, __ATOMIC_RELAXED);
#endif
  return v != 0u;
}

__host__ __device__ __forceinline__ void report_stall(unsigned* stall_word, int32_t* errors) {
#ifdef __CUDA_ARCH__
  atomicExch(stall_word, 1u);
  atomicOr(errors, kErrorScanChainStalled);
#else
  __atomic_store_n(stall_word, 1u, __ATOMIC_RELAXED);
  __atomic_fetch_or(errors, kErrorScanChainStalled, __ATOMIC_RELAXED);
#endif
}

// Wait until `flag` is set (acquire: what its publisher wrote before setting it is visible to
// this thread, and to the block after the barrier that follows).
__host__ __device__ __forceinline__ void wait_published(const unsigned* flag, unsigned* stall_word,
                                                        int32_t* errors) {
#ifdef __CUDA_ARCH__
  uint64_t start, now;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  for (;;) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(flag) : "memory");
    if (v != 0u || chain_stalled(stall_word)) break;
    __nanosleep(64);
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    if (now - start > kChainWaitLimitNs) {
      report_stall(stall_word, errors);
      break;
    }
  }
#else  // the host runs the chunk-state blocks on several threads at once (run_host_concurrently)
  const auto start = std::chrono::steady_clock::now();
  while (__atomic_load_n(flag, __ATOMIC_ACQUIRE) == 0u && !chain_stalled(stall_word)) {
    std::this_thread::yield();
    if (std::chrono::steady_clock::now() - start >
        std::chrono::nanoseconds(10 * kChainWaitLimitNs)) {
      report_stall(stall_word, errors);
      break;
    }
  }
#endif
}

// Set `flag` and, unless null, `also` (release at GPU scope), by thread 0 after a barrier: the
// barrier orders every thread's stores before thread 0's fence, so whoever acquires either flag
// sees all the block wrote (the pattern of CUTLASS's GenericBarrier: one fence, not one per thread
// or per flag; a fence.acq_rel followed by strong stores is a release pattern of the PTX model).
__host__ __device__ __forceinline__ void publish(unsigned* flag, unsigned* also) {
#ifdef __CUDA_ARCH__
  asm volatile("fence.acq_rel.gpu;\n" ::: "memory");
  asm volatile("st.relaxed.gpu.global.u32 [%0], %1;\n" ::"l"(flag), "r"(1u) : "memory");
  if (also != nullptr)
    asm volatile("st.relaxed.gpu.global.u32 [%0], %1;\n" ::"l"(also), "r"(1u) : "memory");
#else
  __atomic_store_n(flag, 1u, __ATOMIC_RELEASE);
  if (also != nullptr) __atomic_store_n(also, 1u, __ATOMIC_RELEASE);
#endif
}

// A value another block published: read from L2 (this SM's L1 is not coherent with the writer's).
template <typename S>
__host__ __device__ __forceinline__ float load_published(const S* address) {
#ifdef __CUDA_ARCH__
  return to_float<S>(__ldcg(address));
#else
  return to_float<S>(*address);
#endif
}

// The sequence a real chunk belongs to: the last one whose first chunk is <= chunk (first chunks
// never decrease, sequence 0 starts at chunk 0, and an empty sequence shares its first chunk with
// the next one, so the last such sequence holds the chunk).
struct ChunkSequence {
  int64_t seq;
  bool first, last;
};

__host__ __device__ __forceinline__ ChunkSequence sequence_of(const ScanParams& p,
                                                              int64_t chunk) {
  int64_t lo = 0, hi = p.num_seqs;
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (p.seq_table[mid] <= chunk) lo = mid; else hi = mid;
  }
  const int64_t first = p.seq_table[lo], count = p.seq_table[p.num_seqs + lo];
  return ChunkSequence{lo, chunk == first, chunk == first + count - 1};
}

__host__ __device__ __forceinline__ float initial_state(const ScanParams& p, int64_t seq,
                                                        int64_t head, int64_t pp, int64_t n) {
  if (p.initial == nullptr) return 0.0f;
  return load_float(p.initial, p.initial_type,
                    seq * p.initial_stride[0] + head * p.initial_stride[1] +
                        pp * p.initial_stride[2] + n * p.initial_stride[3]);
}

// ---- 3b. final states of empty sequences ----------------------------------------------------------

// Block (sequence, head, 512 state entries): a sequence without chunks leaves its initial state
// (or zero) as its final state; sequences with chunks are written by the chunk-state chain.
__host__ __device__ __forceinline__ void empty_sequence_block(const ScanParams& p,
                                                              const Block& blk) {
  const int64_t seq = blk.x / p.active_heads, head = blk.x % p.active_heads;
  if (p.seq_table[p.num_seqs + seq] != 0) return;
  const int64_t numel = p.head_dim * p.state_size;
  float* final_state = p.final_states + (seq * p.active_heads + head) * numel;
  blk.each([&](int t) {
SSD_UNROLL
    for (int k = 0; k < kFinalElems; ++k) {
      const int64_t offset = blk.y * (kThreads * kFinalElems) + t + k * kThreads;
      if (offset < numel)
        final_state[offset] =
            initial_state(p, seq, head, offset / p.state_size, offset % p.state_size);
    }
  });
}

// ---- tensor-core kernels ---------------------------------------------------------------------------
//
// Warp programs. A tensor-core step is collective over a warp (ldmatrix hands every lane pieces of
// rows other lanes addressed; mma.sync multiplies fragments spread over the 32 lanes), so the
// per-thread schedule of Block::phase cannot express it. Warp code is written per warp instead:
// Warp::lanes(body) is the per-lane part (on the device the calling lane, on the host lane 0..31 in
// turn), ldmatrix_x4 and warp_mma are the collectives (on the device the PTX instruction, on the host
// the same data movement and product through the PTX fragment maps below), and what a lane keeps is
// Lanes<T> (its registers on the device, one slot per lane on the host). warp_phase(blk, body)
// runs a warp body for every warp, then the barrier; warp_each the same without the barrier.
//
// One code path for every activation dtype T, parameterised by Mma<T>: fp16/bf16 operands go to
// mma.sync m16n8k16 (two values per fragment register); fp32 operands to m16n8k8 on tf32, each
// split into a tf32 big part and the tf32 of its remainder, three MMAs per step (small x big,
// big x small, big x big: "3xTF32"), which keeps the products fp32-accurate (the dropped
// small x small term is ~2^-22 of the product) at three times the tensor-core work; a plain tf32
// product would lose fp32 inputs' precision to a 10-bit mantissa.

[[maybe_unused]] constexpr int kWarps = kThreads / 32;  // the host schedule's warp count
constexpr int kTcTile = 64;               // rows, columns and contraction step of every tile
constexpr int kTcColTiles = kTcTile / 8;  // n8 tiles of a warp's 16 x 64 output

struct Warp {
  int id;
#ifdef __CUDA_ARCH__
  int lane;
  template <class F>
  __device__ __forceinline__ void lanes(F&& body) const { body(lane); }
#else
  template <class F>
  void lanes(F&& body) const {
    for (int l = 0; l < 32; ++l) body(l);
  }
#endif
};

template <class F>
__host__ __device__ __forceinline__ void warp_phase(const Block&, F&& body) {
#ifdef __CUDA_ARCH__
  body(Warp{static_cast<int>(threadIdx.x) / 32, static_cast<int>(threadIdx.x) % 32});
  __syncthreads();
#else
  for (int w = 0; w < kWarps; ++w) body(Warp{w});
#endif
}

template <class F>
__host__ __device__ __forceinline__ void warp_each(const Block&, F&& body) {
#ifdef __CUDA_ARCH__
  body(Warp{static_cast<int>(threadIdx.x) / 32, static_cast<int>(threadIdx.x) % 32});
#else
  for (int w = 0; w < kWarps; ++w) body(Warp{w});
#endif
}

template <class T>
struct Lanes {
#ifdef __CUDA_ARCH__
  T value;
  __device__ __forceinline__ T& operator[](int) { return value; }
#else
  T values[32];
  T& operator[](int l) { return values[l]; }
#endif
};

template <class T>
struct PerWarp {
#ifdef __CUDA_ARCH__
  T value;
  __device__ __forceinline__ T& operator[](int) { return value; }
#else
  T values[kWarps];
  T& operator[](int w) { return values[w]; }
#endif
};


template <typename T>
struct Mma {
  static constexpr int kPerReg = 2;  // 16-bit values per fragment register
  static constexpr int kK = 16;      // m16n8k16
  static constexpr int kParts = 1;   // the operand as it is
};
template <>
struct Mma<float> {
  static constexpr int kPerReg = 1;  // one tf32 value per register
  static constexpr int kK = 8;       // m16n8k8
  static constexpr int kParts = 2;   // big and small tf32 parts
};
template <typename T>
constexpr int kSteps = kTcTile / Mma<T>::kK;  // MMA k steps of one staged tile
// 64 values and 16 bytes per row (144 B for 16-bit, 272 B for fp32): the 8 rows an ldmatrix reads
// fall in 8 distinct 16-byte bank quads, and an fp32 fragment read (rows lane / 4, columns
// lane % 4) hits 32 distinct banks.
template <typename T>
constexpr int kPitch = kTcTile + 16 / static_cast<int>(sizeof(T));
template <typename T>
using TileRows = T (*)[kPitch<T>];

// A lane's fragment of an A operand (16 x k) or of a pair of B operands (two k x 8 tiles): 4
// registers per part, part 1 (fp32 only) the small tf32 parts.
template <typename T>
using Frag = Lanes<uint32_t[4 * Mma<T>::kParts]>;

// PTX fragment maps (.row.col; A and B of m16n8k16 with 16-bit values, of m16n8k8 with tf32, and
// the fp32 C of both); g = lane / 4, c = lane % 4; value v of a register (v < kPerReg).
template <typename T>
__host__ __device__ __forceinline__ void a_element(int lane, int reg, int v, int* row, int* k) {
  constexpr int E = Mma<T>::kPerReg;
  *row = lane / 4 + 8 * (reg & 1);
  *k = E * (lane % 4) + v + 4 * E * (reg >> 1);
}
template <typename T>
__host__ __device__ __forceinline__ void b_element(int lane, int reg, int v, int* k, int* col) {
  constexpr int E = Mma<T>::kPerReg;
  *k = E * (lane % 4) + v + 4 * E * reg;
  *col = lane / 4;
}
__host__ __device__ __forceinline__ void c_element(int lane, int index, int* row, int* col) {
  *row = lane / 4 + 8 * (index >> 1);
  *col = 2 * (lane % 4) + (index & 1);
}

// Values <-> their bits (16-bit values are packed two per register, element k in the low half).
template <typename T>
__host__ __device__ __forceinline__ uint32_t bits_of(T v);
template <>
__host__ __device__ __forceinline__ uint32_t bits_of<__half>(__half v) {
  return static_cast<__half_raw>(v).x;
}
template <>
__host__ __device__ __forceinline__ uint32_t bits_of<__nv_bfloat16>(__nv_bfloat16 v) {
  return static_cast<__nv_bfloat16_raw>(v).x;
}
template <>
__host__ __device__ __forceinline__ uint32_t bits_of<float>(float v) {
  uint32_t b;
  memcpy(&b, &v, sizeof b);
  return b;
}
__host__ __device__ __forceinline__ float float_of_bits(uint32_t b) {
  float v;
  memcpy(&v, &b, sizeof v);
  return v;
}
template <typename T>
__host__ __device__ __forceinline__ T of_bits(uint16_t b);
template <>
__host__ __device__ __forceinline__ __half of_bits<__half>(uint16_t b) {
  __half_raw r;
  r.x = b;
  return __half(r);
}
template <>
__host__ __device__ __forceinline__ __nv_bfloat16 of_bits<__nv_bfloat16>(uint16_t b) {
  __nv_bfloat16_raw r;
  r.x = b;
  return __nv_bfloat16(r);
}
template <typename T>
__host__ __device__ __forceinline__ float value_of(uint32_t reg, int v) {
  if constexpr (std::is_same_v<T, float>)
    return float_of_bits(reg);
  else
    return to_float(of_bits<T>(static_cast<uint16_t>(reg >> (16 * v))));
}

// fp32 -> tf32, rounded to nearest with ties away from zero (cvt.rna); the low 13 bits are zero.
__host__ __device__ __forceinline__ uint32_t tf32_bits(float v) {
#ifdef __CUDA_ARCH__
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(v));
  return r;
#else
  const uint32_t b = bits_of(v);
  if ((b & 0x7f800000u) == 0x7f800000u) return b;  // inf and NaN as they are
  return (b + 0x1000u) & 0xffffe000u;  // sign-magnitude: + half an ulp rounds the magnitude
#endif
}

// Register reg of a fragment from its values v[0..kPerReg): 16-bit values rounded and packed; an
// fp32 value split into its tf32 big part (register reg) and small part (register 4 + reg).
template <typename T>
__host__ __device__ __forceinline__ void set_reg(uint32_t* frag, int reg, const float* v) {
  if constexpr (std::is_same_v<T, float>) {
    const uint32_t big = tf32_bits(v[0]);
    frag[reg] = big;
    frag[4 + reg] = tf32_bits(v[0] - float_of_bits(big));
  } else {
    frag[reg] = bits_of(from_float<T>(v[0])) | (bits_of(from_float<T>(v[1])) << 16);
  }
}

// A fragment loaded as raw values (registers 0..3) made ready for the MMA: fp32 split into parts.
template <typename T>
__host__ __device__ __forceinline__ void finish_frag(const Warp& w, Frag<T>& f) {
  if constexpr (std::is_same_v<T, float>)
    w.lanes([&](int l) {
SSD_UNROLL
      for (int reg = 0; reg < 4; ++reg) {
        const float v = float_of_bits(f[l][reg]);
        set_reg<float>(f[l], reg, &v);
      }
    });
}

// ldmatrix.x4 (optionally .trans): lane l addresses row l % 8 of 8x8 matrix l / 8 (16 contiguous
// bytes of shared memory); register i of lane l then holds matrix i's 16-bit elements
// (l/4, 2(l%4) + h), or with .trans (2(l%4) + h, l/4), h = 0 in the low half. Without .trans the
// same instruction moves fp32 rows of 4: register i holds element (l/4, l%4) of matrix i.
template <bool kTrans, typename T, class AddrF, class OutF>
__host__ __device__ __forceinline__ void ldmatrix_x4(const Warp& w, AddrF addr_of, OutF out_of) {
  static_assert(!(kTrans && std::is_same_v<T, float>), ".trans splits 32-bit values");
#ifdef __CUDA_ARCH__
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(addr_of(w.lane)));
  uint32_t* o = out_of(w.lane);
  if constexpr (kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(o[0]), "=r"(o[1]), "=r"(o[2]), "=r"(o[3])
                 : "r"(s));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(o[0]), "=r"(o[1]), "=r"(o[2]), "=r"(o[3])
                 : "r"(s));
#else
  constexpr int E = Mma<T>::kPerReg;
  const T* rows[32];
  for (int l = 0; l < 32; ++l) rows[l] = addr_of(l);
  for (int l = 0; l < 32; ++l) {
    uint32_t* o = out_of(l);
    for (int i = 0; i < 4; ++i) {
      uint32_t reg = 0;
      for (int h = 0; h < E; ++h) {
        const int r = kTrans ? E * (l % 4) + h : l / 4, col = kTrans ? l / 4 : E * (l % 4) + h;
        reg |= bits_of(rows[8 * i + r][col]) << (16 * h);
      }
      o[i] = reg;
    }
  }
#endif
}

// c += a b over one m16n8k16 (16-bit) or m16n8k8 (3xTF32) tile: c_of(lane) -> float[4],
// a_of(lane) -> the lane's A registers (small parts 4 later), b_of(lane) -> its two B registers
// (small parts 4 later, as in a pair fragment).
template <typename T, class CF, class AF, class BF>
__host__ __device__ __forceinline__ void warp_mma(const Warp& w, CF c_of, AF a_of, BF b_of) {
#ifdef __CUDA_ARCH__
  float* c = c_of(w.lane);
  const uint32_t* a = a_of(w.lane);
  const uint32_t* b = b_of(w.lane);
  if constexpr (std::is_same_v<T, float>) {
    const auto mma = [&](const uint32_t* pa, const uint32_t* pb) {
      asm volatile(
          "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
          "{%8,%9}, {%0,%1,%2,%3};\n"
          : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
          : "r"(pa[0]), "r"(pa[1]), "r"(pa[2]), "r"(pa[3]), "r"(pb[0]), "r"(pb[1]));
    };
    // small terms first: they are added while the accumulator is still near their size
    mma(a + 4, b);
    mma(a, b + 4);
    mma(a, b);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#else
  constexpr int E = Mma<T>::kPerReg, K = Mma<T>::kK, P = Mma<T>::kParts;
  float A[2][16][16], Bm[2][16][8];  // [part][row][k], [part][k][col]
  for (int l = 0; l < 32; ++l) {
    const uint32_t* a = a_of(l);
    const uint32_t* b = b_of(l);
    for (int part = 0; part < P; ++part)
      for (int h = 0; h < E; ++h) {
        int row, k, col;
        for (int reg = 0; reg < 4; ++reg) {
          a_element<T>(l, reg, h, &row, &k);
          A[part][row][k] = value_of<T>(a[4 * part + reg], h);
        }
        for (int reg = 0; reg < 2; ++reg) {
          b_element<T>(l, reg, h, &k, &col);
          Bm[part][k][col] = value_of<T>(b[4 * part + reg], h);
        }
      }
  }
  // the device's order of MMAs: (small, big), (big, small), (big, big); one MMA for 16 bits
  const int terms[3][2] = {{1, 0}, {0, 1}, {0, 0}};
  for (int m = P == 2 ? 0 : 2; m < 3; ++m)
    for (int l = 0; l < 32; ++l) {
      float* c = c_of(l);
      for (int index = 0; index < 4; ++index) {
        int row, col;
        c_element(l, index, &row, &col);
        float sum = 0.0f;
        for (int k = 0; k < K; ++k) sum += A[terms[m][0]][row][k] * Bm[terms[m][1]][k][col];
        c[index] += sum;
      }
    }
#endif
}

// A warp's 16 x 64 fp32 output tile: 8 n8 tiles, 4 values each (c_element).
using WarpAcc = Lanes<float[kTcColTiles][4]>;

// B fragments of n8 tiles 2j and 2j + 1 at one k step of a tile stored [n][k] (k contiguous,
// `trans` false) or [k][n] (`trans` true): registers {b0, b1} of tile 2j, then of tile 2j + 1, raw
// (finish_frag splits fp32). fp32 tiles stored [k][n] are read value by value (ldmatrix.trans
// would split the 32-bit values).
template <bool kTrans, typename T>
__host__ __device__ __forceinline__ void load_b_pair(const Warp& w, TileRows<T> tile, int kk,
                                                     int j, Frag<T>& out) {
  constexpr int K = Mma<T>::kK;
  if constexpr (kTrans && std::is_same_v<T, float>) {
    w.lanes([&](int l) {
SSD_UNROLL
      for (int h = 0; h < 2; ++h)
SSD_UNROLL
        for (int reg = 0; reg < 2; ++reg) {
          int k, col;
          b_element<T>(l, reg, 0, &k, &col);
          out[l][2 * h + reg] = bits_of(tile[K * kk + k][8 * (2 * j + h) + col]);
        }
    });
  } else {
    ldmatrix_x4<kTrans, T>(
        w,
        [&](int l) {
          const int i = l / 8, r = l % 8, n = 8 * (2 * j + (i >> 1)), k = K * kk + K / 2 * (i & 1);
          return kTrans ? &tile[k + r][n] : &tile[n + r][k];
        },
        [&](int l) { return out[l]; });
  }
}

// A fragment of rows m0..m0+15 at one k step of a tile stored [m][k] (`trans` false) or [k][m],
// raw (finish_frag or set_reg make it ready).
template <bool kTrans, typename T>
__host__ __device__ __forceinline__ void load_a(const Warp& w, TileRows<T> tile, int m0, int kk,
                                                Frag<T>& out) {
  constexpr int K = Mma<T>::kK;
  if constexpr (kTrans && std::is_same_v<T, float>) {
    w.lanes([&](int l) {
SSD_UNROLL
      for (int reg = 0; reg < 4; ++reg) {
        int row, k;
        a_element<T>(l, reg, 0, &row, &k);
        out[l][reg] = bits_of(tile[K * kk + k][m0 + row]);
      }
    });
  } else {
    ldmatrix_x4<kTrans, T>(
        w,
        [&](int l) {
          const int i = l / 8, r = l % 8, m = m0 + 8 * (i & 1), k = K * kk + K / 2 * (i >> 1);
          return kTrans ? &tile[k + r][m] : &tile[m + r][k];
        },
        [&](int l) { return out[l]; });
  }
}

// acc (16 x 64) += A (16 x k) B (k x 64) at k step kk, B from a staged tile.
template <bool kTransB, typename T>
__host__ __device__ __forceinline__ void mma_row_tile(const Warp& w, WarpAcc& acc, Frag<T>& a,
                                                      TileRows<T> b_tile, int kk) {
SSD_UNROLL
  for (int j = 0; j < kTcColTiles / 2; ++j) {
    Frag<T> b;
    load_b_pair<kTransB, T>(w, b_tile, kk, j, b);
    finish_frag<T>(w, b);
SSD_UNROLL
    for (int h = 0; h < 2; ++h)
      warp_mma<T>(
          w, [&](int l) { return acc[l][2 * j + h]; }, [&](int l) { return a[l]; },
          [&](int l) { return b[l] + 2 * h; });
  }
}

__host__ __device__ __forceinline__ void zero_acc(WarpAcc& acc, int lane) {
SSD_UNROLL
  for (int j = 0; j < kTcColTiles; ++j)
SSD_UNROLL
    for (int i = 0; i < 4; ++i) acc[lane][j][i] = 0.0f;
}

// Every warp's accumulator tile (rows row0 + 16 w + 0..15, columns col0 + 0..63) to
// store(row, col, value), for the elements with row < rows and col < cols.
template <class Store>
__host__ __device__ __forceinline__ void store_acc_tile(const Block& blk, PerWarp<WarpAcc>& acc,
                                                        int64_t row0, int64_t col0, int64_t rows,
                                                        int64_t cols, Store&& store) {
  warp_each(blk, [&](const Warp& w) {
    w.lanes([&](int l) {
SSD_UNROLL
      for (int j = 0; j < kTcColTiles; ++j)
SSD_UNROLL
        for (int i = 0; i < 4; ++i) {
          int row, col;
          c_element(l, i, &row, &col);
          const int64_t r = row0 + 16 * w.id + row, cc = col0 + 8 * j + col;
          if (r < rows && cc < cols) store(r, cc, acc[w.id][l][j][i]);
        }
    });
  });
}

// ---- staging tiles: cp.async where a row chunk is 16 aligned bytes, else plain loads -------------

__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
#ifdef __CUDA_ARCH__
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(src));
#endif
}

__host__ __device__ __forceinline__ void cp_async_commit() {
#ifdef __CUDA_ARCH__
  asm volatile("cp.async.commit_group;\n");
#endif
}

template <int kPending>
__host__ __device__ __forceinline__ void cp_async_wait() {
#ifdef __CUDA_ARCH__
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
#endif
}

// Thread t's part of a 64 x 64 tile copy: rows < rows, columns < cols of src (row stride ld
// elements) into dst, zero elsewhere. Every element of dst is written, so the MMA reads no stale
// values (0 x NaN would survive masking).
template <typename T>
__host__ __device__ __forceinline__ void stage_tile(int t, TileRows<T> dst, const T* src,
                                                    int64_t ld, int64_t rows, int64_t cols) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));  // values per 16-byte chunk
  const bool vector = reinterpret_cast<uintptr_t>(src) % 16 == 0 && ld % kVec == 0;
  constexpr int kChunks = kTcTile * kTcTile / kVec;
SSD_UNROLL
  for (int e = t; e < kChunks; e += kThreads) {
    const int row = e / (kTcTile / kVec), col = kVec * (e % (kTcTile / kVec));
    T* d = &dst[row][col];
    if (row < rows && col + kVec <= cols && vector) {
#ifdef __CUDA_ARCH__
      cp_async16(d, src + row * ld + col);
#else
      memcpy(d, src + row * ld + col, 16);
#endif
    } else if (row >= rows || col >= cols) {
      *reinterpret_cast<uint4*>(d) = uint4{0u, 0u, 0u, 0u};
    } else {
      for (int i = 0; i < kVec; ++i)
        d[i] = col + i < cols ? src[row * ld + col + i] : from_float<T>(0.0f);
    }
  }
}

// Two-stage pipeline over `steps` tiles: load(t, step, buffer) stages a tile (cp.async and/or plain
// stores), compute(warp, step, buffer) consumes it. The copy of step + 1 is in flight while step is
// multiplied; the barrier after each compute frees its buffer for the load two steps later.
template <class Load, class Compute>
__host__ __device__ __forceinline__ void pipeline(const Block& blk, int64_t steps, Load&& load,
                                                  Compute&& compute) {
  if (steps <= 0) return;
  blk.each([&](int t) {
    load(t, int64_t{0}, 0);
    cp_async_commit();
  });
  for (int64_t step = 0; step < steps; ++step) {
    blk.phase([&](int t) {
      if (step + 1 < steps) {
        load(t, step + 1, static_cast<int>((step + 1) & 1));
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
    });
    warp_phase(blk, [&](const Warp& w) { compute(w, step, static_cast<int>(step & 1)); });
  }
}

__host__ __device__ __forceinline__ int64_t groups_of(const ScanParams& p) {
  return p.active_heads / p.heads_per_group;
}

// Block x of the tensor-core kernels is chunk * G + group (the twin of chunk_info for kernel 1).
struct GroupChunk {
  int64_t chunk, group, batch, token0, length;
};

__host__ __device__ __forceinline__ GroupChunk group_chunk(const ScanParams& p, int64_t block_x) {
  GroupChunk g;
  g.chunk = block_x / groups_of(p);
  g.group = block_x % groups_of(p);
  g.batch = p.chunk_table[g.chunk];
  g.token0 = p.chunk_table[p.num_chunks + g.chunk];
  g.length = p.chunk_table[2 * p.num_chunks + g.chunk];
  return g;
}

__host__ __device__ __forceinline__ float* ws_cb(const ScanParams& p, int64_t chunk,
                                                 int64_t group) {
  const int64_t pitch = ssd_scan_cb_pitch(p.chunk_size);
  return p.workspace +
         ssd_scan_cb_offset(p.num_chunks, p.active_heads, p.head_dim, p.state_size, p.chunk_size) +
         (chunk * groups_of(p) + group) * pitch * pitch;
}

// ---- 1b. C.B^T per (chunk, group) ---------------------------------------------------------------

template <typename T>
struct CbShared {
  alignas(16) T c[2][kTcTile][kPitch<T>];  // C of the block's 64 rows t, one 64-entry state step
  alignas(16) T b[2][kTcTile][kPitch<T>];  // B of its 64 columns s
};

// Block (chunk * G + group, t tile, s tile): CB[t, s] = sum_n C[t, n] B[s, n] for s tile <= t tile
// (the scan reads only s <= t); warp w owns rows 16w..16w+15 of the tile.
template <typename T>
__host__ __device__ __forceinline__ void chunk_cb_block(const ScanParams& p, const Block& blk,
                                                        CbShared<T>& sm) {
  constexpr int K = Mma<T>::kK;
  const GroupChunk g = group_chunk(p, blk.x);
  const int64_t chunk = g.chunk, group = g.group, batch = g.batch, token0 = g.token0,
                length = g.length;
  const int64_t t0 = blk.y * kTcTile, s0 = blk.z * kTcTile;
  if (blk.z > blk.y || t0 >= length) return;
  const T* C = static_cast<const T*>(p.C) + batch * p.C_stride_b + token0 * p.C_stride_l +
               group * p.C_stride_g;
  const T* B = static_cast<const T*>(p.B) + batch * p.B_stride_b + token0 * p.B_stride_l +
               group * p.B_stride_g;
  PerWarp<WarpAcc> acc;
  warp_each(blk, [&](const Warp& w) { w.lanes([&](int l) { zero_acc(acc[w.id], l); }); });
  pipeline(
      blk, ceil_div_i(p.state_size, kTcTile),
      [&](int t, int64_t step, int buf) {
        const int64_t n0 = step * kTcTile;
        stage_tile<T>(t, sm.c[buf], C + t0 * p.C_stride_l + n0, p.C_stride_l, length - t0,
                      p.state_size - n0);
        stage_tile<T>(t, sm.b[buf], B + s0 * p.B_stride_l + n0, p.B_stride_l, length - s0,
                      p.state_size - n0);
      },
      [&](const Warp& w, int64_t step, int buf) {
        if (t0 + 16 * w.id >= length) return;
SSD_UNROLL
        for (int kk = 0; kk < kSteps<T>; ++kk) {
          if (step * kTcTile + K * kk >= p.state_size) break;
          Frag<T> a;
          load_a<false, T>(w, sm.c[buf], 16 * w.id, kk, a);
          finish_frag<T>(w, a);
          mma_row_tile<false, T>(w, acc[w.id], a, sm.b[buf], kk);
        }
      });
  float* out = ws_cb(p, chunk, group);
  const int64_t pitch = ssd_scan_cb_pitch(p.chunk_size);
  store_acc_tile(blk, acc, t0, s0, length, length,
                 [&](int64_t t, int64_t s, float v) { out[t * pitch + s] = v; });
}

// ---- 2. chunk states -----------------------------------------------------------------------------

// B of a whole chunk stays in shared memory while the block runs every head of the group over it.
constexpr int kStateTiles = static_cast<int>(kMaxChunk) / kTcTile;

static_assert(kTcTile == kScanStateTile, "a chunk-state block covers one tile of the state chain");

template <typename T>
struct TcStateShared {
  float w[kMaxChunk];                                 // exp(cum_end - cum_t) * dt_t, 0 past the chunk
  alignas(16) T b[kStateTiles][kTcTile][kPitch<T>];  // B (t, n) of the chunk, 64 tokens a tile
  alignas(16) T x[2][kTcTile][kPitch<T>];            // x (t, p) of one 64-token step of one head
};

// Block (chunk * G + group, p tile, n tile), for every head of the group in turn:
// S[p, n] = sum_t (x[t, p] w_t) B[t, n]; warp w owns channels 16w..16w+15. B is staged once per
// (chunk, group) and read by all the group's heads; x and w are per head. Both operands are
// stored token-major, so both fragments come transposed (ldmatrix.trans for 16 bits, value by
// value for fp32); w_t scales the A fragment in registers before it is rounded back to 16 bits (or
// split into tf32 parts).
template <typename T, typename S>
__host__ __device__ __forceinline__ void tc_chunk_state_block(const ScanParams& p,
                                                              const Block& blk,
                                                              TcStateShared<T>& sm) {
  constexpr int K = Mma<T>::kK, E = Mma<T>::kPerReg;
  const GroupChunk g = group_chunk(p, blk.x);
  const int64_t chunk = g.chunk, group = g.group, batch = g.batch, token0 = g.token0,
                length = g.length;
  if (length == 0) return;  // a padding chunk (packed inputs): the whole block leaves
  const int64_t p0 = blk.y * kTcTile, n0 = blk.z * kTcTile;
  const int64_t steps = ceil_div_i(length, kTcTile);
  const ChunkSequence sequence = sequence_of(p, chunk);
  const T* B = static_cast<const T*>(p.B) + batch * p.B_stride_b + token0 * p.B_stride_l +
               group * p.B_stride_g + n0;
  // one cp.async group, the oldest: the first wait of every head's pipeline covers it
  blk.each([&](int t) {
    for (int64_t step = 0; step < steps; ++step)
      stage_tile<T>(t, sm.b[step], B + step * kTcTile * p.B_stride_l, p.B_stride_l,
                    length - step * kTcTile, p.state_size - n0);
    cp_async_commit();
  });
  for (int64_t i = 0; i < p.heads_per_group; ++i) {
    const int64_t head = group * p.heads_per_group + i;
    const float* cum = ws_cum(p, chunk, head);
    const float* dt = ws_dt(p, chunk, head);
    const float total = cum[length - 1];
    const T* x = static_cast<const T*>(p.x) + batch * p.x_stride_b + token0 * p.x_stride_l +
                 head * p.x_stride_h + p0;
    PerWarp<WarpAcc> acc;
    // the previous head's last barrier has freed w and both x buffers
    blk.phase([&](int t) {
      for (int64_t q = t; q < steps * kTcTile; q += kThreads)
        sm.w[q] = q < length ? expf(total - cum[q]) * dt[q] : 0.0f;
    });
    warp_each(blk, [&](const Warp& w) { w.lanes([&](int l) { zero_acc(acc[w.id], l); }); });
    pipeline(
        blk, steps,
        [&](int t, int64_t step, int buf) {
          const int64_t q0 = step * kTcTile;
          stage_tile<T>(t, sm.x[buf], x + q0 * p.x_stride_l, p.x_stride_l, length - q0,
                        p.head_dim - p0);
        },
        [&](const Warp& w, int64_t step, int buf) {
          if (p0 + 16 * w.id >= p.head_dim) return;
          const int64_t q0 = step * kTcTile;
SSD_UNROLL
          for (int kk = 0; kk < kSteps<T>; ++kk) {
            if (q0 + K * kk >= length) break;
            Frag<T> a;
            load_a<true, T>(w, sm.x[buf], 16 * w.id, kk, a);
            w.lanes([&](int l) {
SSD_UNROLL
              for (int reg = 0; reg < 4; ++reg) {
                float v[2];
SSD_UNROLL
                for (int h = 0; h < E; ++h) {
                  int row, k;
                  a_element<T>(l, reg, h, &row, &k);
                  v[h] = value_of<T>(a[l][reg], h) * sm.w[q0 + K * kk + k];
                }
                set_reg<T>(a[l], reg, v);
              }
            });
            mma_row_tile<true, T>(w, acc[w.id], a, sm.b[step], kk);
          }
        });
    // the chain (section 3): h_in from the chunk before (or the initial state), h_out onwards
    if (!sequence.first)
      blk.phase([&](int t) {
        if (t == 0)
          wait_published(chain_flag(p, chunk, head, blk.y, blk.z), chain_words(p) + 1, p.errors);
      });
    const float decay = expf(total);
    S* entering = ws_state<S>(p, chunk, head);
    // the state leaving the chunk: the next chunk's entering state (S), or the final state (fp32)
    S* next = sequence.last ? nullptr : ws_state<S>(p, chunk + 1, head);
    float* final_state = sequence.last ? p.final_states + (sequence.seq * p.active_heads + head) *
                                                              p.head_dim * p.state_size
                                       : nullptr;
    store_acc_tile(blk, acc, p0, n0, p.head_dim, p.state_size,
                   [&](int64_t pp, int64_t n, float own) {
                     const int64_t at = pp * p.state_size + n;
                     float h_in;
                     if (sequence.first) {
                       h_in = initial_state(p, sequence.seq, head, pp, n);
                       entering[at] = from_float<S>(h_in);  // for the chunk scan
                     } else {
                       h_in = load_published(entering + at);
                     }
                     const float h_out = decay * h_in + own;
                     if (sequence.last)
                       final_state[at] = h_out;
                     else
                       next[at] = from_float<S>(h_out);
                   });
    // the chunk scan of this chunk waits for the state entering it (a sequence's first chunk
    // publishes its own, the initial state), the next chunk's blocks for the one leaving it
    if (sequence.first || !sequence.last) {
      blk.phase([](int) {});  // every thread's stores before thread 0's release
      blk.each([&](int t) {
        if (t != 0) return;
        unsigned* entering_flag = chain_flag(p, chunk, head, blk.y, blk.z);
        unsigned* leaving_flag = chain_flag(p, chunk + 1, head, blk.y, blk.z);
        publish(sequence.first ? entering_flag : leaving_flag,
                sequence.first && !sequence.last ? leaving_flag : nullptr);
      });
    }
  }
}

// ---- 4. chunk scan -------------------------------------------------------------------------------

// C of the block's 64 tokens stays in shared memory for all the group's heads when N <= 256 (every
// Mamba-2 configuration we know); a larger N is restaged per head in two buffers.
constexpr int kResidentStateTiles = 4;

template <typename T>
struct TcScanShared {
  float cum[kMaxChunk];
  float dt[kMaxChunk];
  alignas(16) T c[kResidentStateTiles][kTcTile][kPitch<T>];  // C (t, n), 64 state entries a tile
  union {
    alignas(16) T h[2][kTcTile][kPitch<T>];  // entering state (p, n) of one state step
    alignas(16) T x[2][kTcTile][kPitch<T>];  // x (s, p) of one step of source tokens
  } u;
};

// Block (chunk * G + group, p tile, t tile), for every head of the group in turn: warp w owns
// output rows t0 + 16w .. + 15, all 64 channels. Inter-chunk term C h_in^T (A = C via ldmatrix,
// staged once per group; B = the head's entering state staged (p, n)), scaled by exp(cum_t); then
// the intra-chunk term: the A fragment is built in registers from the group's C.B^T (fp32),
// decayed with the head's cumsum, masked to s <= t and rounded (or split); B = x, transposed.
// A warp stops its source steps at its own last row (the causal skip is per warp).
template <typename T, typename S>
__host__ __device__ __forceinline__ void tc_chunk_scan_block(const ScanParams& p,
                                                             const Block& blk,
                                                             TcScanShared<T>& sm) {
  constexpr int K = Mma<T>::kK, E = Mma<T>::kPerReg;
  const GroupChunk g = group_chunk(p, blk.x);
  const int64_t chunk = g.chunk, group = g.group, batch = g.batch, token0 = g.token0,
                length = g.length;
  const int64_t p0 = blk.y * kTcTile, t0 = blk.z * kTcTile;
  if (t0 >= length) return;
  const int64_t rows_end = min64(length, t0 + kTcTile);
  const T* C = static_cast<const T*>(p.C) + batch * p.C_stride_b + (token0 + t0) * p.C_stride_l +
               group * p.C_stride_g;
  const int64_t state_steps = ceil_div_i(p.state_size, kTcTile);
  const bool resident = state_steps <= kResidentStateTiles;
  const float* cb = ws_cb(p, chunk, group);
  const int64_t pitch = ssd_scan_cb_pitch(p.chunk_size);
  for (int64_t i = 0; i < p.heads_per_group; ++i) {
    const int64_t head = group * p.heads_per_group + i;
    // the state entering the chunk (all its N tiles) is published by the chain; the barrier also
    // tells that the previous head's warps are done with cum and dt
    blk.phase([&](int t) {
      if (t == 0)
        for (int64_t n_tile = 0; n_tile < state_tiles_n(p); ++n_tile)
          wait_published(chain_flag(p, chunk, head, blk.y, n_tile), chain_words(p) + 1, p.errors);
    });
    const float* cum = ws_cum(p, chunk, head);
    const float* dt = ws_dt(p, chunk, head);
    const S* h_in = ws_state<S>(p, chunk, head);
    const T* x = static_cast<const T*>(p.x) + batch * p.x_stride_b + token0 * p.x_stride_l +
                 head * p.x_stride_h;
    PerWarp<WarpAcc> acc;
    blk.phase([&](int t) {
      for (int64_t q = t; q < rows_end; q += kThreads) {
        sm.cum[q] = cum[q];
        sm.dt[q] = dt[q];
      }
    });
    warp_each(blk, [&](const Warp& w) { w.lanes([&](int l) { zero_acc(acc[w.id], l); }); });

    const bool stage_c = !resident || i == 0;
    pipeline(
        blk, state_steps,
        [&](int t, int64_t step, int buf) {
          const int64_t n0 = step * kTcTile;
          if (stage_c)
            stage_tile<T>(t, sm.c[resident ? step : buf], C + n0, p.C_stride_l, rows_end - t0,
                          p.state_size - n0);
          for (int e = t; e < kTcTile * kTcTile; e += kThreads) {
            const int pp = e / kTcTile, col = e % kTcTile;
            const int64_t n = n0 + col;
            sm.u.h[buf][pp][col] = from_float<T>(
                p0 + pp < p.head_dim && n < p.state_size
                    ? load_published(h_in + (p0 + pp) * p.state_size + n)
                    : 0.0f);
          }
        },
        [&](const Warp& w, int64_t step, int buf) {
          if (t0 + 16 * w.id >= rows_end) return;
          TileRows<T> c_tile = sm.c[resident ? step : buf];
SSD_UNROLL
          for (int kk = 0; kk < kSteps<T>; ++kk) {
            if (step * kTcTile + K * kk >= p.state_size) break;
            Frag<T> a;
            load_a<false, T>(w, c_tile, 16 * w.id, kk, a);
            finish_frag<T>(w, a);
            mma_row_tile<false, T>(w, acc[w.id], a, sm.u.h[buf], kk);
          }
        });
    warp_each(blk, [&](const Warp& w) {
      w.lanes([&](int l) {
SSD_UNROLL
        for (int r = 0; r < 4; ++r) {
          int row, col;
          c_element(l, r, &row, &col);
          const int64_t t = t0 + 16 * w.id + row;
          const float scale = t < rows_end ? expf(sm.cum[t]) : 0.0f;
SSD_UNROLL
          for (int j = 0; j < kTcColTiles; ++j) acc[w.id][l][j][r] *= scale;
        }
      });
    });

    if (p.state_size > 0)  // N = 0: C.B^T is empty (and never written)
      pipeline(
          blk, ceil_div_i(rows_end, kTcTile),
          [&](int t, int64_t step, int buf) {
            const int64_t s0 = step * kTcTile;
            stage_tile<T>(t, sm.u.x[buf], x + s0 * p.x_stride_l + p0, p.x_stride_l,
                          length - s0, p.head_dim - p0);
          },
          [&](const Warp& w, int64_t step, int buf) {
            const int64_t r0 = t0 + 16 * w.id;
            if (r0 >= rows_end) return;
            const int64_t last = min64(r0 + 15, rows_end - 1), s0 = step * kTcTile;
SSD_UNROLL
            for (int kk = 0; kk < kSteps<T>; ++kk) {
              if (s0 + K * kk > last) break;
              Frag<T> a;
              w.lanes([&](int l) {
SSD_UNROLL
                for (int reg = 0; reg < 4; ++reg) {
                  int row, k;
                  a_element<T>(l, reg, 0, &row, &k);
                  const int64_t t = r0 + row, s = s0 + K * kk + k;
                  float v[2] = {0.0f, 0.0f};
                  if (t < rows_end && s <= t) {  // 16 bits: s + 1 <= pitch - 1, the pair is in the row
                    const float* pair = cb + t * pitch + s;
                    float cbv[2];
                    if constexpr (E == 2) {
#ifdef __CUDA_ARCH__
                      const float2 two = *reinterpret_cast<const float2*>(pair);
                      cbv[0] = two.x;
                      cbv[1] = two.y;
#else
                      cbv[0] = pair[0];
                      cbv[1] = pair[1];
#endif
                    } else {
                      cbv[0] = pair[0];
                    }
                    const float ct = sm.cum[t];
SSD_UNROLL
                    for (int h = 0; h < E; ++h)
                      if (s + h <= t) v[h] = cbv[h] * expf(ct - sm.cum[s + h]) * sm.dt[s + h];
                  }
                  set_reg<T>(a[l], reg, v);
                }
              });
              mma_row_tile<true, T>(w, acc[w.id], a, sm.u.x[buf], kk);
            }
          });

    const T* z = p.z == nullptr ? nullptr
                                : static_cast<const T*>(p.z) + batch * p.z_stride_b +
                                      token0 * p.z_stride_l + head * p.z_stride_h;
    T* y = static_cast<T*>(p.y) + batch * p.y_stride_b + token0 * p.y_stride_l +
           head * p.y_stride_h;
    const int64_t parent_head = group * p.parent_heads_per_group + i;
    store_acc_tile(blk, acc, t0, p0, rows_end, p.head_dim, [&](int64_t t, int64_t pp, float out) {
      if (p.D != nullptr)
        out += load_float(p.D, p.D_type, parent_head * p.D_stride_h + pp * p.D_stride_p) *
               to_float(x[t * p.x_stride_l + pp]);
      if (z != nullptr) {
        const float g = to_float(z[t * p.z_stride_l + pp]);
        out *= g / (1.0f + expf(-g));
      }
      y[t * p.y_stride_l + pp] = from_float<T>(out);
    });
  }
}

// ---- 5. chunk states and chunk scan in one launch ------------------------------------------------
//
// One grid holds the blocks of both: each block takes a ticket (section 3) and runs the block the
// ticket names. Tickets go chunk by chunk, and within a chunk first its chunk-state blocks, then
// its chunk-scan blocks: (chunk c states, chunk c scan, chunk c + 1 states, ...). A chunk-scan
// block waits for the state entering its chunk, which the chunk-state blocks of chunk c - 1 (or, at
// a sequence's first chunk, of chunk c) publish, all with smaller tickets, so the forward-progress
// argument of section 3 covers both. The scan of early chunks runs while the chain still walks
// through later ones, instead of after the whole chain, and there is one launch less.
//
// Batched rows are independent chains. The chunks go position by position across the rows (chunk
// 0 of every row, then chunk 1 of every row, ...), so the blocks on the GPU at one time hold every
// row's chain front and the rows advance side by side; row by row, a batch would cost the sum of
// its rows' chain latencies instead of one row's. Chunk c still comes after chunk c - 1 of its row.

__host__ __device__ __forceinline__ int64_t state_blocks_per_chunk(const ScanParams& p) {
  return groups_of(p) * state_tiles_p(p) * state_tiles_n(p);
}
__host__ __device__ __forceinline__ int64_t scan_token_tiles(const ScanParams& p) {
  return ceil_div_i(p.chunk_size, kTcTile);
}
__host__ __device__ __forceinline__ int64_t scan_blocks_per_chunk(const ScanParams& p) {
  return groups_of(p) * state_tiles_p(p) * scan_token_tiles(p);  // the same p tiles (work_of)
}
__host__ __device__ __forceinline__ int64_t tickets_per_chunk(const ScanParams& p) {
  return state_blocks_per_chunk(p) + scan_blocks_per_chunk(p);
}

// The block a ticket names: (chunk * G + group, p tile, N tile) of the chunk states, or
// (chunk * G + group, p tile, token tile) of the chunk scan.
struct ChunkWork {
  bool scan;
  Block block;
};

__host__ __device__ __forceinline__ int64_t chunk_of_position(const ScanParams& p,
                                                             int64_t position) {
  const int64_t per_row = p.num_chunks / p.chain_rows;
  return position % p.chain_rows * per_row + position / p.chain_rows;
}

__host__ __device__ __forceinline__ ChunkWork work_of(const ScanParams& p, int64_t ticket) {
  const int64_t chunk = chunk_of_position(p, ticket / tickets_per_chunk(p));
  int64_t rest = ticket % tickets_per_chunk(p);
  const bool scan = rest >= state_blocks_per_chunk(p);
  if (scan) rest -= state_blocks_per_chunk(p);
  const int64_t inner = scan ? scan_token_tiles(p) : state_tiles_n(p);
  const int64_t per_group = state_tiles_p(p) * inner;  // kTcTile == kScanStateTile: same p tiles
  return ChunkWork{scan, Block{chunk * groups_of(p) + rest / per_group, rest % per_group / inner,
                               rest % inner}};
}

template <typename T>
struct TcChunkShared {
  unsigned ticket;
  union {
    TcStateShared<T> state;
    TcScanShared<T> scan;
  } u;
};

template <typename T, typename S>
__host__ __device__ __forceinline__ void tc_chunk_block(const ScanParams& p, const Block& blk,
                                                        TcChunkShared<T>& sm) {
  blk.phase([&](int t) {
    if (t == 0) sm.ticket = take_ticket(chain_words(p));
  });
  const ChunkWork work = work_of(p, sm.ticket);
  if (work.scan)
    tc_chunk_scan_block<T, S>(p, work.block, sm.u.scan);
  else
    tc_chunk_state_block<T, S>(p, work.block, sm.u.state);
}

// ---- device entry points -------------------------------------------------------------------------

__device__ __forceinline__ Block this_block() { return Block{blockIdx.x, blockIdx.y, blockIdx.z}; }

// The tensor-core kernels' shared memory is dynamic: fp32 tiles need ~70 KB, above the 48 KB a
// static declaration may take.
template <class Shared>
__device__ __forceinline__ Shared& dynamic_shared() {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  return *reinterpret_cast<Shared*>(shared_bytes);
}

__global__ void __launch_bounds__(kThreads) cumsum_kernel(const ScanParams p) {
  __shared__ CumsumShared sm;
  cumsum_block(p, this_block(), sm);
}

__global__ void __launch_bounds__(kThreads) empty_sequence_kernel(const ScanParams p) {
  empty_sequence_block(p, this_block());
}

template <typename T>
__global__ void __launch_bounds__(kThreads) chunk_cb_kernel(const ScanParams p) {
  chunk_cb_block<T>(p, this_block(), dynamic_shared<CbShared<T>>());
}

// 2 blocks per SM as the register target (8 warps): at 3 blocks ptxas caps the kernel at 168
// registers and spills in the head loops (16-bit: 24-32 bytes; fp32: 80); it needs 198-200
// (16-bit) and 211 (fp32) without. Shared memory would allow 3 blocks of the 16-bit kernel.
// S: the entering states' storage (ScanParams::chain_type), fp32 or T.
template <typename T, typename S>
__global__ void __launch_bounds__(kThreads, 2) tc_chunk_kernel(const ScanParams p) {
  tc_chunk_block<T, S>(p, this_block(), dynamic_shared<TcChunkShared<T>>());
}

struct Grids {
  dim3 chunk_heads, cb, chunks, finals;
  bool any_chunks, any_states, any_finals;  // launch only grids with blocks
};

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

size_t chain_bytes(const ScanParams& p) {
  return sizeof(unsigned) *
         static_cast<size_t>(ssd_scan_flag_words(p.num_chunks, p.active_heads, p.head_dim,
                                                 p.state_size));
}

Grids grids_of(const ScanParams& p) {
  const int64_t chunk_heads = p.num_chunks * p.active_heads;
  Grids g;
  g.any_chunks = chunk_heads > 0;
  g.any_states = g.any_chunks && p.state_size > 0;  // N = 0: no state, y = D x only
  g.any_finals = p.num_seqs * p.active_heads > 0 && p.state_size > 0;
  g.chunk_heads = dim3(static_cast<unsigned>(chunk_heads));
  g.cb = dim3(static_cast<unsigned>(p.num_chunks * groups_of(p)),
              static_cast<unsigned>(cdiv(p.chunk_size, kTcTile)),
              static_cast<unsigned>(cdiv(p.chunk_size, kTcTile)));
  g.chunks = dim3(static_cast<unsigned>(p.num_chunks * tickets_per_chunk(p)));  // one per ticket
  g.finals = dim3(static_cast<unsigned>(p.num_seqs * p.active_heads),
                  static_cast<unsigned>(cdiv(p.head_dim * p.state_size, kThreads * kFinalElems)));
  return g;
}

bool grids_fit(const ScanParams& p) {
  const int64_t limit = 0x7fffffffLL;
  return p.num_chunks * p.active_heads <= limit && p.num_seqs * p.active_heads <= limit &&
         p.num_chunks * tickets_per_chunk(p) <= limit &&
         cdiv(p.head_dim * p.state_size, kThreads * kFinalElems) <= 65535;
}

// A tensor-core kernel with its shared memory as dynamic shared memory (opted in above 48 KB).
template <class Shared>
cudaError_t launch_tc(void (*kernel)(ScanParams), dim3 grid, const ScanParams& p,
                      cudaStream_t stream) {
  constexpr int kBytes = static_cast<int>(sizeof(Shared));
  if (kBytes > 48 * 1024) {
    const cudaError_t e =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kBytes);
    if (e != cudaSuccess) return e;
  }
  kernel<<<grid, kThreads, kBytes, stream>>>(p);
  return cudaGetLastError();
}

// Whether the chain stores T (16-bit activations and chain_type == act_type); fp32 otherwise.
template <typename T>
bool chain_in_t(const ScanParams& p) {
  return !std::is_same<T, float>::value && p.chain_type == p.act_type;
}

template <typename T>
cudaError_t launch(const ScanParams& p, cudaStream_t stream) {
  const Grids g = grids_of(p);
  cudaError_t e = cudaSuccess;
  if (g.any_chunks) cumsum_kernel<<<g.chunk_heads, kThreads, 0, stream>>>(p);
  if (g.any_states && e == cudaSuccess) e = launch_tc<CbShared<T>>(chunk_cb_kernel<T>, g.cb, p, stream);
  if (g.any_chunks && e == cudaSuccess)  // the ticket counter and the chain's flags start at zero
    e = cudaMemsetAsync(chain_words(p), 0, chain_bytes(p), stream);
  if (g.any_chunks && e == cudaSuccess)
    e = launch_tc<TcChunkShared<T>>(
        chain_in_t<T>(p) ? tc_chunk_kernel<T, T> : tc_chunk_kernel<T, float>, g.chunks, p, stream);
  if (g.any_finals && e == cudaSuccess) empty_sequence_kernel<<<g.finals, kThreads, 0, stream>>>(p);
  return e != cudaSuccess ? e : cudaGetLastError();
}

// The host schedule: every block in turn, each block's phases in order, each phase thread by thread.
template <class Shared, class Program>
void run_host_grid(dim3 grid, Program program) {
  auto shared = std::make_unique<Shared>();
  for (int64_t x = 0; x < grid.x; ++x)
    for (int64_t y = 0; y < grid.y; ++y)
      for (int64_t z = 0; z < grid.z; ++z) program(Block{x, y, z}, *shared);
}

// The chunk-state chain's grid on the host: kHostChainWorkers threads, each running whole blocks
// (taking the next ticket) one after another, so blocks of the chain really wait for each other
// in whatever interleaving the threads take, as the GPU's blocks do; a hand-off that relied on the
// one-block-at-a-time order would stall or read stale states here. The same forward-progress
// argument holds (a block waits only for tickets taken by running workers).
constexpr int kHostChainWorkers = 4;

template <class Shared, class Program>
void run_host_concurrently(int64_t blocks, Program program) {
  std::atomic<int64_t> started{0};
  std::exception_ptr failure;
  std::mutex failure_lock;
  std::vector<std::thread> workers;
  for (int w = 0; w < kHostChainWorkers && w < blocks; ++w)
    workers.emplace_back([&] {
      try {
        auto shared = std::make_unique<Shared>();
        while (started.fetch_add(1) < blocks) program(Block{0, 0, 0}, *shared);
      } catch (...) {
        const std::lock_guard<std::mutex> hold(failure_lock);
        if (!failure) failure = std::current_exception();
      }
    });
  for (auto& worker : workers) worker.join();
  if (failure) std::rethrow_exception(failure);
}

struct NoShared {};

template <typename T>
void run_host(const ScanParams& p) {
  const Grids g = grids_of(p);
  if (g.any_chunks)
    run_host_grid<CumsumShared>(g.chunk_heads, [&](const Block& b, CumsumShared& sm) {
      cumsum_block(p, b, sm);
    });
  if (g.any_states)
    run_host_grid<CbShared<T>>(g.cb, [&](const Block& b, CbShared<T>& sm) {
      chunk_cb_block<T>(p, b, sm);
    });
  if (g.any_chunks) {
    std::memset(chain_words(p), 0, chain_bytes(p));
    const bool in_t = chain_in_t<T>(p);
    run_host_concurrently<TcChunkShared<T>>(g.chunks.x, [&](const Block& b, TcChunkShared<T>& sm) {
      if (in_t)
        tc_chunk_block<T, T>(p, b, sm);
      else
        tc_chunk_block<T, float>(p, b, sm);
    });
  }
  if (g.any_finals)
    run_host_grid<NoShared>(g.finals, [&](const Block& b, NoShared&) { empty_sequence_block(p, b); });
}

bool nothing_to_do(const ScanParams& p) {
  return p.num_seqs == 0 || p.active_heads == 0 || p.head_dim == 0;
}

}  // namespace

cudaError_t ssd_scan(const ScanParams& params, cudaStream_t stream) {
  if (nothing_to_do(params)) return cudaSuccess;
  if (!grids_fit(params) || params.chunk_size < 1 || params.chunk_size > kScanMaxChunk)
    return cudaErrorInvalidConfiguration;
  if (params.chain_type != DType::kFloat32 && params.chain_type != params.act_type)
    return cudaErrorInvalidValue;
  switch (params.act_type) {
    case DType::kFloat16:
      return launch<__half>(params, stream);
    case DType::kBFloat16:
      return launch<__nv_bfloat16>(params, stream);
    default:
      return launch<float>(params, stream);
  }
}

void ssd_scan_host(const ScanParams& params) {
  if (nothing_to_do(params)) return;
  switch (params.act_type) {
    case DType::kFloat16:
      return run_host<__half>(params);
    case DType::kBFloat16:
      return run_host<__nv_bfloat16>(params);
    default:
      return run_host<float>(params);
  }
}

}  // namespace star_elastic::ssm
