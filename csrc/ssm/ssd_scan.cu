// Chunked Mamba-2 SSD scan forward (see ssd_scan.h for the contract).
//
// Every kernel is written as a block program: a __host__ __device__ function of the block index
// whose per-thread work is a sequence of phases, Block::phase(body). On the device each thread runs
// body(threadIdx.x) and then waits at __syncthreads(); on the host (ssd_scan_host) the body runs for
// thread 0, 1, ..., kThreads-1 in turn, which is the same schedule a barrier allows. Values a thread
// keeps across phases live in PerThread<T> (registers on the device, one slot per thread on the
// host); shared memory is a struct (__shared__ on the device, a heap object on the host). So the CPU
// build runs exactly the per-thread code of the kernels, which is how the tests check it without a
// GPU; it says nothing about the launch, warp scheduling or speed.
//
// Kernels (128 threads each; 64-bit offsets throughout):
//  1. cumsum_kernel, one block per (chunk, head): processed dt and the inclusive cumsum of dt*A over
//     the chunk (segmented: per-thread runs, then the run totals), to the workspace.
//  2. chunk_state_kernel, per (chunk, head, 64 channels, 64 state entries): the chunk's own state
//     S[p, n] = sum_t x[t, p] exp(cum_end - cum_t) dt_t B[t, n], as a 32-token tiled fp32 GEMM in
//     shared memory (each thread a 4 x 8 register tile).
//  3. state_passing_kernel, per (sequence, head, 512 state entries): walks the sequence's chunks,
//     replacing each chunk's own state by the state entering it and writing the final state.
//  4. chunk_scan_kernel, per (chunk, head, 64 channels, 64 tokens):
//     y = exp(cum_t) C_t h_in  +  sum_{s<=t} (C_t . B_s) exp(cum_t - cum_s) dt_s x_s, then D x and
//     the gate. Both terms are tiled GEMMs over shared memory (C tile 64 x 64, scores 64 x 32), the
//     score tile masked causally and decayed in between; the output stays in registers (4 x 8).
// Activations are read in their dtype and converted to fp32 on the way to shared memory; all
// arithmetic and the states are fp32.
#include "ssm/ssd_scan.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "ssm/float_access.cuh"

#include <cmath>
#include <memory>

namespace star_elastic::ssm {
namespace {

constexpr int kThreads = 128;
constexpr int kTileP = 64;     // head channels per block (kernels 2 and 4)
constexpr int kTileN = 64;     // state entries per block (2) / per contraction step (4)
constexpr int kTileQ = 32;     // tokens per contraction step
constexpr int kScanRows = 64;  // output tokens per block (4)
constexpr int kPassElems = 4;  // state entries per thread (3)
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

// What a thread keeps across phases: its registers on the device, one slot per thread on the host.
template <class T>
struct PerThread {
#ifdef __CUDA_ARCH__
  T value;
  __device__ __forceinline__ T& operator[](int) { return value; }
#else
  T values[kThreads];
  T& operator[](int t) { return values[t]; }
#endif
};

// ---- conversions and small helpers ---------------------------------------------------------------

using detail::from_float;
using detail::load_float;
using detail::to_float;

__host__ __device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

struct ChunkInfo {
  int64_t chunk, head, group, parent_head, batch, token0, length;
};

// Block x of kernels 1, 2 and 4 is chunk * H' + head.
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

// Workspace: dt (chunks, H', Q), cumsum (chunks, H', Q), states (chunks, H', p, N).
__host__ __device__ __forceinline__ float* ws_dt(const ScanParams& p, int64_t chunk, int64_t head) {
  return p.workspace + (chunk * p.active_heads + head) * p.chunk_size;
}
__host__ __device__ __forceinline__ float* ws_cum(const ScanParams& p, int64_t chunk, int64_t head) {
  return p.workspace + (p.num_chunks + chunk) * p.active_heads * p.chunk_size + head * p.chunk_size;
}
__host__ __device__ __forceinline__ float* ws_state(const ScanParams& p, int64_t chunk,
                                                    int64_t head) {
  return p.workspace + 2 * p.num_chunks * p.active_heads * p.chunk_size +
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

// ---- 2. chunk states -----------------------------------------------------------------------------

struct StateShared {
  float w[kMaxChunk];        // exp(cum_end - cum_t) * dt_t
  float x[kTileQ][kTileP];   // x * w, fp32
  float b[kTileQ][kTileN];
};

struct StateRegs {
  float acc[4][8];  // rows p = tp + 16 i, columns n = tn + 8 j
};

template <typename ActT>
__host__ __device__ __forceinline__ void chunk_state_block(const ScanParams& p, const Block& blk,
                                                           StateShared& sm) {
  const ChunkInfo c = chunk_info(p, blk.x);
  if (c.length == 0) return;  // a padding chunk (packed inputs): the whole block leaves
  const int64_t p0 = blk.y * kTileP, n0 = blk.z * kTileN;
  const float* cum = ws_cum(p, c.chunk, c.head);
  const float* dt = ws_dt(p, c.chunk, c.head);
  const float total = cum[c.length - 1];
  const ActT* x = static_cast<const ActT*>(p.x) + c.batch * p.x_stride_b +
                  c.token0 * p.x_stride_l + c.head * p.x_stride_h;
  const ActT* B = static_cast<const ActT*>(p.B) + c.batch * p.B_stride_b +
                  c.token0 * p.B_stride_l + c.group * p.B_stride_g;
  PerThread<StateRegs> regs;
  blk.phase([&](int t) {
    for (int64_t i = t; i < c.length; i += kThreads) sm.w[i] = expf(total - cum[i]) * dt[i];
    StateRegs& r = regs[t];
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 8; ++j) r.acc[i][j] = 0.0f;
  });
  for (int64_t q0 = 0; q0 < c.length; q0 += kTileQ) {
    blk.phase([&](int t) {
      for (int e = t; e < kTileQ * kTileP; e += kThreads) {
        const int row = e / kTileP, col = e % kTileP;
        const int64_t q = q0 + row;
        float xv = 0.0f, bv = 0.0f;
        if (q < c.length) {
          if (p0 + col < p.head_dim) xv = to_float(x[q * p.x_stride_l + p0 + col]) * sm.w[q];
          if (n0 + col < p.state_size) bv = to_float(B[q * p.B_stride_l + n0 + col]);
        }
        sm.x[row][col] = xv;
        sm.b[row][col] = bv;
      }
    });
    blk.phase([&](int t) {
      const int tp = t / 8, tn = t % 8;
      StateRegs& r = regs[t];
SSD_UNROLL_4
      for (int q = 0; q < kTileQ; ++q) {
        float xs[4], bs[8];
SSD_UNROLL
        for (int i = 0; i < 4; ++i) xs[i] = sm.x[q][tp + 16 * i];
SSD_UNROLL
        for (int j = 0; j < 8; ++j) bs[j] = sm.b[q][tn + 8 * j];
SSD_UNROLL
        for (int i = 0; i < 4; ++i)
SSD_UNROLL
          for (int j = 0; j < 8; ++j) r.acc[i][j] += xs[i] * bs[j];
      }
    });
  }
  float* out = ws_state(p, c.chunk, c.head);
  blk.each([&](int t) {
    const int tp = t / 8, tn = t % 8;
    StateRegs& r = regs[t];
SSD_UNROLL
    for (int i = 0; i < 4; ++i) {
      const int64_t pp = p0 + tp + 16 * i;
      if (pp >= p.head_dim) continue;
SSD_UNROLL
      for (int j = 0; j < 8; ++j) {
        const int64_t n = n0 + tn + 8 * j;
        if (n < p.state_size) out[pp * p.state_size + n] = r.acc[i][j];
      }
    }
  });
}

// ---- 3. state passing ----------------------------------------------------------------------------

__host__ __device__ __forceinline__ void state_passing_block(const ScanParams& p,
                                                             const Block& blk) {
  const int64_t seq = blk.x / p.active_heads, head = blk.x % p.active_heads;
  const int64_t numel = p.head_dim * p.state_size;
  const int64_t first = p.seq_table[seq], count = p.seq_table[p.num_seqs + seq];
  blk.each([&](int t) {
    int64_t offset[kPassElems];
    float state[kPassElems];
SSD_UNROLL
    for (int k = 0; k < kPassElems; ++k) {
      offset[k] = blk.y * (kThreads * kPassElems) + t + k * kThreads;
      state[k] = 0.0f;
      if (p.initial != nullptr && offset[k] < numel) {
        const int64_t pp = offset[k] / p.state_size, n = offset[k] % p.state_size;
        state[k] = load_float(p.initial, p.initial_type,
                              seq * p.initial_stride[0] + head * p.initial_stride[1] +
                                  pp * p.initial_stride[2] + n * p.initial_stride[3]);
      }
    }
    for (int64_t chunk = first; chunk < first + count; ++chunk) {
      const int64_t length = p.chunk_table[2 * p.num_chunks + chunk];
      const float decay = expf(ws_cum(p, chunk, head)[length - 1]);
      float* slot = ws_state(p, chunk, head);
SSD_UNROLL
      for (int k = 0; k < kPassElems; ++k) {
        if (offset[k] >= numel) continue;
        const float own = slot[offset[k]];
        slot[offset[k]] = state[k];  // from here on: the state entering this chunk
        state[k] = decay * state[k] + own;
      }
    }
    float* final_state = p.final_states + (seq * p.active_heads + head) * numel;
SSD_UNROLL
    for (int k = 0; k < kPassElems; ++k)
      if (offset[k] < numel) final_state[offset[k]] = state[k];
  });
}

// ---- 4. chunk scan -------------------------------------------------------------------------------

struct ScanShared {
  float cum[kMaxChunk];
  float dt[kMaxChunk];
  float c[kScanRows][kTileN + 1];  // C of the block's tokens, one state step; padded rows
  union {
    float h[kTileN][kTileP + 1];  // inter-chunk term: entering state, (n, p)
    struct {
      float b[kTileQ][kTileN + 1];      // B of a step of source tokens
      float s[kScanRows][kTileQ + 1];   // decayed, masked scores (t, s)
      float x[kTileQ][kTileP];          // x of the source tokens
    } intra;
  } u;
};

struct ScanRegs {
  float acc[4][8];    // output rows t = tr + 16 i, channels tc + 8 j
  float score[4][4];  // score rows t = tr + 16 i, source tokens tc + 8 j
};

template <typename ActT>
__host__ __device__ __forceinline__ void chunk_scan_block(const ScanParams& p, const Block& blk,
                                                          ScanShared& sm) {
  const ChunkInfo c = chunk_info(p, blk.x);
  const int64_t p0 = blk.y * kTileP, t0 = blk.z * kScanRows;
  if (t0 >= c.length) return;  // the whole block: no barrier is left waiting
  const int64_t rows_end = min64(c.length, t0 + kScanRows);
  const float* cum = ws_cum(p, c.chunk, c.head);
  const float* dt = ws_dt(p, c.chunk, c.head);
  const float* h_in = ws_state(p, c.chunk, c.head);
  const ActT* x = static_cast<const ActT*>(p.x) + c.batch * p.x_stride_b +
                  c.token0 * p.x_stride_l + c.head * p.x_stride_h;
  const ActT* B = static_cast<const ActT*>(p.B) + c.batch * p.B_stride_b +
                  c.token0 * p.B_stride_l + c.group * p.B_stride_g;
  const ActT* C = static_cast<const ActT*>(p.C) + c.batch * p.C_stride_b +
                  c.token0 * p.C_stride_l + c.group * p.C_stride_g;
  PerThread<ScanRegs> regs;

  auto load_c_tile = [&](int t, int64_t n0) {
    for (int e = t; e < kScanRows * kTileN; e += kThreads) {
      const int row = e / kTileN, col = e % kTileN;
      const int64_t token = t0 + row, n = n0 + col;
      sm.c[row][col] =
          token < c.length && n < p.state_size ? to_float(C[token * p.C_stride_l + n]) : 0.0f;
    }
  };

  blk.phase([&](int t) {
    for (int64_t i = t; i < rows_end; i += kThreads) {
      sm.cum[i] = cum[i];
      sm.dt[i] = dt[i];
    }
    ScanRegs& r = regs[t];
    for (int i = 0; i < 4; ++i) {
      for (int j = 0; j < 8; ++j) r.acc[i][j] = 0.0f;
      for (int j = 0; j < 4; ++j) r.score[i][j] = 0.0f;
    }
  });

  // inter-chunk term: acc = C h_in^T, then scaled by exp(cum_t)
  for (int64_t n0 = 0; n0 < p.state_size; n0 += kTileN) {
    blk.phase([&](int t) {
      load_c_tile(t, n0);
      for (int e = t; e < kTileP * kTileN; e += kThreads) {
        const int pp = e / kTileN, col = e % kTileN;  // unit stride over n in global memory
        const int64_t n = n0 + col;
        sm.u.h[col][pp] =
            p0 + pp < p.head_dim && n < p.state_size ? h_in[(p0 + pp) * p.state_size + n] : 0.0f;
      }
    });
    blk.phase([&](int t) {
      const int tr = t / 8, tc = t % 8;
      ScanRegs& r = regs[t];
SSD_UNROLL_4
      for (int k = 0; k < kTileN; ++k) {
        float cs[4], hs[8];
SSD_UNROLL
        for (int i = 0; i < 4; ++i) cs[i] = sm.c[tr + 16 * i][k];
SSD_UNROLL
        for (int j = 0; j < 8; ++j) hs[j] = sm.u.h[k][tc + 8 * j];
SSD_UNROLL
        for (int i = 0; i < 4; ++i)
SSD_UNROLL
          for (int j = 0; j < 8; ++j) r.acc[i][j] += cs[i] * hs[j];
      }
    });
  }
  blk.each([&](int t) {
    const int tr = t / 8;
    ScanRegs& r = regs[t];
SSD_UNROLL
    for (int i = 0; i < 4; ++i) {
      const int64_t row = t0 + tr + 16 * i;
      const float scale = row < rows_end ? expf(sm.cum[row]) : 0.0f;
SSD_UNROLL
      for (int j = 0; j < 8; ++j) r.acc[i][j] *= scale;
    }
  });

  // intra-chunk term, causal: source tokens s < rows_end in steps of kTileQ
  for (int64_t s0 = 0; s0 < rows_end; s0 += kTileQ) {
    for (int64_t n0 = 0; n0 < p.state_size; n0 += kTileN) {
      blk.phase([&](int t) {
        load_c_tile(t, n0);
        for (int e = t; e < kTileQ * kTileN; e += kThreads) {
          const int row = e / kTileN, col = e % kTileN;
          const int64_t s = s0 + row, n = n0 + col;
          sm.u.intra.b[row][col] =
              s < c.length && n < p.state_size ? to_float(B[s * p.B_stride_l + n]) : 0.0f;
        }
      });
      blk.phase([&](int t) {
        const int tr = t / 8, tc = t % 8;
        ScanRegs& r = regs[t];
SSD_UNROLL_4
        for (int k = 0; k < kTileN; ++k) {
          float cs[4], bs[4];
SSD_UNROLL
          for (int i = 0; i < 4; ++i) cs[i] = sm.c[tr + 16 * i][k];
SSD_UNROLL
          for (int j = 0; j < 4; ++j) bs[j] = sm.u.intra.b[tc + 8 * j][k];
SSD_UNROLL
          for (int i = 0; i < 4; ++i)
SSD_UNROLL
            for (int j = 0; j < 4; ++j) r.score[i][j] += cs[i] * bs[j];
        }
      });
    }
    blk.phase([&](int t) {
      const int tr = t / 8, tc = t % 8;
      ScanRegs& r = regs[t];
SSD_UNROLL
      for (int i = 0; i < 4; ++i) {
        const int64_t row = t0 + tr + 16 * i;
SSD_UNROLL
        for (int j = 0; j < 4; ++j) {
          const int64_t s = s0 + tc + 8 * j;
          float v = 0.0f;
          if (row < rows_end && s <= row) v = r.score[i][j] * expf(sm.cum[row] - sm.cum[s]) * sm.dt[s];
          sm.u.intra.s[tr + 16 * i][tc + 8 * j] = v;
          r.score[i][j] = 0.0f;
        }
      }
      for (int e = t; e < kTileQ * kTileP; e += kThreads) {
        const int row = e / kTileP, col = e % kTileP;
        const int64_t s = s0 + row;
        sm.u.intra.x[row][col] =
            s < c.length && p0 + col < p.head_dim ? to_float(x[s * p.x_stride_l + p0 + col]) : 0.0f;
      }
    });
    blk.phase([&](int t) {
      const int tr = t / 8, tc = t % 8;
      ScanRegs& r = regs[t];
SSD_UNROLL_4
      for (int k = 0; k < kTileQ; ++k) {
        float ss[4], xs[8];
SSD_UNROLL
        for (int i = 0; i < 4; ++i) ss[i] = sm.u.intra.s[tr + 16 * i][k];
SSD_UNROLL
        for (int j = 0; j < 8; ++j) xs[j] = sm.u.intra.x[k][tc + 8 * j];
SSD_UNROLL
        for (int i = 0; i < 4; ++i)
SSD_UNROLL
          for (int j = 0; j < 8; ++j) r.acc[i][j] += ss[i] * xs[j];
      }
    });
  }

  // epilogue: skip term, gate, store
  const ActT* z = p.z == nullptr ? nullptr
                                 : static_cast<const ActT*>(p.z) + c.batch * p.z_stride_b +
                                       c.token0 * p.z_stride_l + c.head * p.z_stride_h;
  ActT* y = static_cast<ActT*>(p.y) + c.batch * p.y_stride_b + c.token0 * p.y_stride_l +
            c.head * p.y_stride_h;
  blk.each([&](int t) {
    const int tr = t / 8, tc = t % 8;
    ScanRegs& r = regs[t];
SSD_UNROLL
    for (int i = 0; i < 4; ++i) {
      const int64_t row = t0 + tr + 16 * i;
      if (row >= rows_end) continue;
SSD_UNROLL
      for (int j = 0; j < 8; ++j) {
        const int64_t pp = p0 + tc + 8 * j;
        if (pp >= p.head_dim) continue;
        float out = r.acc[i][j];
        if (p.D != nullptr)
          out += load_float(p.D, p.D_type, c.parent_head * p.D_stride_h + pp * p.D_stride_p) *
                 to_float(x[row * p.x_stride_l + pp]);
        if (z != nullptr) {
          const float g = to_float(z[row * p.z_stride_l + pp]);
          out *= g / (1.0f + expf(-g));
        }
        y[row * p.y_stride_l + pp] = from_float<ActT>(out);
      }
    }
  });
}

// ---- device entry points -------------------------------------------------------------------------

__device__ __forceinline__ Block this_block() { return Block{blockIdx.x, blockIdx.y, blockIdx.z}; }

__global__ void __launch_bounds__(kThreads) cumsum_kernel(const ScanParams p) {
  __shared__ CumsumShared sm;
  cumsum_block(p, this_block(), sm);
}

template <typename ActT>
__global__ void __launch_bounds__(kThreads) chunk_state_kernel(const ScanParams p) {
  __shared__ StateShared sm;
  chunk_state_block<ActT>(p, this_block(), sm);
}

__global__ void __launch_bounds__(kThreads) state_passing_kernel(const ScanParams p) {
  state_passing_block(p, this_block());
}

template <typename ActT>
__global__ void __launch_bounds__(kThreads) chunk_scan_kernel(const ScanParams p) {
  __shared__ ScanShared sm;
  chunk_scan_block<ActT>(p, this_block(), sm);
}

struct Grids {
  dim3 chunk_heads, state, passing, scan;
  bool any_chunks, any_states, any_passing;  // launch only grids with blocks
};

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

Grids grids_of(const ScanParams& p) {
  const int64_t chunk_heads = p.num_chunks * p.active_heads;
  Grids g;
  g.any_chunks = chunk_heads > 0;
  g.any_states = g.any_chunks && p.state_size > 0;  // N = 0: no state, y = D x only
  g.any_passing = p.num_seqs * p.active_heads > 0 && p.state_size > 0;
  g.chunk_heads = dim3(static_cast<unsigned>(chunk_heads));
  g.state = dim3(static_cast<unsigned>(chunk_heads), static_cast<unsigned>(cdiv(p.head_dim, kTileP)),
                 static_cast<unsigned>(cdiv(p.state_size, kTileN)));
  g.passing = dim3(static_cast<unsigned>(p.num_seqs * p.active_heads),
                   static_cast<unsigned>(cdiv(p.head_dim * p.state_size, kThreads * kPassElems)));
  g.scan = dim3(static_cast<unsigned>(chunk_heads), static_cast<unsigned>(cdiv(p.head_dim, kTileP)),
                static_cast<unsigned>(cdiv(p.chunk_size, kScanRows)));
  return g;
}

bool grids_fit(const ScanParams& p) {
  const int64_t limit = 0x7fffffffLL;
  return p.num_chunks * p.active_heads <= limit && p.num_seqs * p.active_heads <= limit &&
         cdiv(p.head_dim * p.state_size, kThreads * kPassElems) <= 65535 &&
         cdiv(p.head_dim, kTileP) <= 65535 && cdiv(p.state_size, kTileN) <= 65535;
}

template <typename ActT>
cudaError_t launch(const ScanParams& p, cudaStream_t stream) {
  const Grids g = grids_of(p);
  if (g.any_chunks) cumsum_kernel<<<g.chunk_heads, kThreads, 0, stream>>>(p);
  if (g.any_states) chunk_state_kernel<ActT><<<g.state, kThreads, 0, stream>>>(p);
  if (g.any_passing) state_passing_kernel<<<g.passing, kThreads, 0, stream>>>(p);
  if (g.any_chunks) chunk_scan_kernel<ActT><<<g.scan, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

// The host schedule: every block in turn, each block's phases in order, each phase thread by thread.
template <class Shared, class Program>
void run_host_grid(dim3 grid, Program program) {
  auto shared = std::make_unique<Shared>();
  for (int64_t x = 0; x < grid.x; ++x)
    for (int64_t y = 0; y < grid.y; ++y)
      for (int64_t z = 0; z < grid.z; ++z) program(Block{x, y, z}, *shared);
}

struct NoShared {};

template <typename ActT>
void run_host(const ScanParams& p) {
  const Grids g = grids_of(p);
  if (g.any_chunks)
    run_host_grid<CumsumShared>(g.chunk_heads, [&](const Block& b, CumsumShared& sm) {
      cumsum_block(p, b, sm);
    });
  if (g.any_states)
    run_host_grid<StateShared>(g.state, [&](const Block& b, StateShared& sm) {
      chunk_state_block<ActT>(p, b, sm);
    });
  if (g.any_passing)
    run_host_grid<NoShared>(g.passing, [&](const Block& b, NoShared&) { state_passing_block(p, b); });
  if (g.any_chunks)
    run_host_grid<ScanShared>(g.scan, [&](const Block& b, ScanShared& sm) {
      chunk_scan_block<ActT>(p, b, sm);
    });
}

bool nothing_to_do(const ScanParams& p) {
  return p.num_seqs == 0 || p.active_heads == 0 || p.head_dim == 0;
}

}  // namespace

cudaError_t ssd_scan(const ScanParams& params, cudaStream_t stream) {
  if (nothing_to_do(params)) return cudaSuccess;
  if (!grids_fit(params) || params.chunk_size < 1 || params.chunk_size > kScanMaxChunk)
    return cudaErrorInvalidConfiguration;
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
