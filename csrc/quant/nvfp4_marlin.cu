// Marlin-class NVFP4 W4A16 linear and its prepack (see nvfp4_marlin.h for the layout and the
// contract). Everything a thread computes (which bytes it copies, which codes and scale it reads,
// the bit-level dequant, the fragment maps, the epilogue) is a __host__ __device__ function; the
// host launchers at the end run them over the whole grid so the CPU tests prove them.
#include "quant/nvfp4_marlin.h"

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstring>
#include <vector>

namespace star_elastic::quant {
namespace {

constexpr int kWarps = kMarlinThreads / 32;
constexpr int kChunkBytes = 16;
constexpr int kXRowBytes = kMarlinTileK * 2;  // one 64-column activation row, 16-bit
constexpr int kXChunksPerRow = kXRowBytes / kChunkBytes;  // 8

// ---- layout -------------------------------------------------------------------------------------

__host__ __device__ constexpr int magnitude_bit(int slot) { return 3 * slot; }
__host__ __device__ constexpr int sign_bit(int slot) {
  return slot == 0 ? 13 : slot == 1 ? 12 : slot == 2 ? 14 : 15;
}

struct ThreadCoords {
  int warp, g, c;  // lane = 4 * g + c
};
__host__ __device__ inline ThreadCoords coords_of(int v) {
  return {v / 32, (v % 32) / 4, v % 4};
}

// Tile-local (row, column) of the code in `half` (0: low) of `slot` of word `word` of thread v.
__host__ __device__ inline void code_position(int v, int word, int slot, int half, int* row,
                                              int* col) {
  const ThreadCoords tc = coords_of(v);
  const int t = word / 2, j = word % 2;
  const int step = 2 * j + slot / 2, reg = slot % 2;
  *row = 16 * tc.warp + 8 * t + tc.g;
  *col = 16 * tc.c + 4 * step + 2 * reg + half;
}

// Tile-local row and 16-column block of thread v's scale byte t.
__host__ __device__ inline void scale_position(int v, int t, int* row, int* block) {
  const ThreadCoords tc = coords_of(v);
  *row = 16 * tc.warp + 8 * t + tc.g;
  *block = tc.c;
}

// E4M3 byte -> u = ((E + 22) << 3) | mmm (see the header); 0 for zero, 0xFF for NaN.
__host__ __device__ inline uint8_t encode_scale(uint8_t e4m3) {
  const int magnitude = e4m3 & 0x7F;
  if (magnitude == 0x7F) return 0xFF;
  if (magnitude == 0) return 0;
  int exponent = (magnitude >> 3) - 7;
  int mantissa = magnitude & 7;
  if ((magnitude >> 3) == 0) {  // subnormal: mantissa * 2^-9, normalised to 1.mmm * 2^E
    const int lead = mantissa >= 4 ? 2 : mantissa >= 2 ? 1 : 0;
    exponent = lead - 9;
    mantissa = (mantissa << (3 - lead)) & 7;
  }
  return static_cast<uint8_t>(((exponent + 22) << 3) | mantissa);
}

// The E2M1 code of standard-layout element (n, k), with a zero scale's codes zeroed and a
// negative scale's signs moved onto its codes; 0 outside the weight.
__host__ __device__ inline uint32_t prepacked_code(const Nvfp4PrepackParams& p, int64_t n,
                                                   int64_t k) {
  if (n >= p.N || k >= p.K) return 0;
  uint32_t code = (p.data[n * p.data_stride_n + k / 2] >> (4 * (k & 1))) & 0xF;
  const uint8_t raw_scale = p.scale[n * p.scale_stride_n + k / 16];
  if ((raw_scale & 0x7F) == 0) return 0;
  if ((raw_scale & 0x7F) != 0x7F && (raw_scale & 0x80)) code ^= 0x8;
  return code;
}

__host__ __device__ inline uint32_t prepack_word(const Nvfp4PrepackParams& p, int64_t tile_n,
                                                 int64_t tile_k, int v, int word) {
  uint32_t out = 0;
  for (int slot = 0; slot < 4; ++slot) {
    for (int half = 0; half < 2; ++half) {
      int row, col;
      code_position(v, word, slot, half, &row, &col);
      const uint32_t code = prepacked_code(p, kMarlinTileN * tile_n + row, kMarlinTileK * tile_k + col);
      out |= (code & 0x7) << (magnitude_bit(slot) + 16 * half);
      out |= (code >> 3) << (sign_bit(slot) + 16 * half);
    }
  }
  return out;
}

__host__ __device__ inline uint8_t prepack_scale(const Nvfp4PrepackParams& p, int64_t tile_n,
                                                 int64_t tile_k, int v, int t) {
  int row, block;
  scale_position(v, t, &row, &block);
  const int64_t n = kMarlinTileN * tile_n + row;
  const int64_t b = (kMarlinTileK / 16) * tile_k + block;
  if (n >= p.N || b >= p.K / 16) return 0;
  return encode_scale(p.scale[n * p.scale_stride_n + b]);
}

// ---- dequant: codes and scales to 16-bit MMA operands ---------------------------------------------

// The 16-bit pattern of slot kSlot's two codes, in each half: sign at bit 15, magnitude at
// bits 9..11 (fp16: e2m1 * 2^-14) or 6..8 (bf16: e2m1 * 2^-126).
template <bool kBf16, int kSlot>
__host__ __device__ __forceinline__ uint32_t code_pair_bits(uint32_t word) {
  constexpr int kTarget = kBf16 ? 6 : 9;
  constexpr int kMagnitudeShift = kTarget - magnitude_bit(kSlot);
  constexpr int kSignShift = 15 - sign_bit(kSlot);
  constexpr uint32_t kMagnitudeMask = (0x7u << kTarget) * 0x10001u;
  const uint32_t magnitude = kMagnitudeShift >= 0 ? word << kMagnitudeShift
                                                  : word >> -kMagnitudeShift;
  return (magnitude & kMagnitudeMask) | ((word << kSignShift) & 0x80008000u);
}

// The re-encoded scale u as a 16-bit pair (both halves): scale * 2^7 (fp16), scale * 2^119 (bf16).
template <bool kBf16>
__host__ __device__ __forceinline__ uint32_t scale_pair_bits(uint32_t u) {
  return kBf16 ? u * 0x00100010u + 0x70007000u : u * 0x00800080u;
}

__host__ __device__ inline float half_bits_to_float(uint16_t bits, bool bf16) {
  if (bf16) {
    __nv_bfloat16_raw raw;
    raw.x = bits;
    return __bfloat162float(__nv_bfloat16(raw));
  }
  __half_raw raw;
  raw.x = bits;
  return __half2float(__half(raw));
}

__host__ __device__ inline uint16_t float_to_half_bits(float value, bool bf16) {
  if (bf16) return static_cast<__nv_bfloat16_raw>(__float2bfloat16_rn(value)).x;
  return static_cast<__half_raw>(__float2half_rn(value)).x;
}

// Two 16-bit products, rounded to nearest (exact here: see the header).
template <bool kBf16>
__host__ __device__ __forceinline__ uint32_t multiply_pairs(uint32_t a, uint32_t b) {
#ifdef __CUDA_ARCH__
  uint32_t d;
  if constexpr (kBf16)
    asm("mul.rn.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  else
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
#else
  uint32_t d = 0;
  for (int half = 0; half < 2; ++half) {
    const float product = half_bits_to_float(static_cast<uint16_t>(a >> (16 * half)), kBf16) *
                          half_bits_to_float(static_cast<uint16_t>(b >> (16 * half)), kBf16);
    d |= static_cast<uint32_t>(float_to_half_bits(product, kBf16)) << (16 * half);
  }
  return d;
#endif
}

// The four A registers of k16 step kStep (the weight is the MMA's A operand: 16 rows = the
// thread's rows g (t = 0) and g + 8 (t = 1) of its warp's 16): a0 / a1 the even-column pairs
// (columns 16c + 4s, +1) of t = 0 / 1, a2 / a3 the odd ones (16c + 4s + 2, +3), each from the
// thread's code words and the scale pair of its row.
template <bool kBf16, int kStep>
__host__ __device__ __forceinline__ void a_fragment(const uint32_t words[4],
                                                    const uint32_t scale_pairs[2], uint32_t a[4]) {
  constexpr int kWord = kStep / 2, kSlot = 2 * (kStep % 2);
  a[0] = multiply_pairs<kBf16>(code_pair_bits<kBf16, kSlot>(words[kWord]), scale_pairs[0]);
  a[1] = multiply_pairs<kBf16>(code_pair_bits<kBf16, kSlot>(words[2 + kWord]), scale_pairs[1]);
  a[2] = multiply_pairs<kBf16>(code_pair_bits<kBf16, kSlot + 1>(words[kWord]), scale_pairs[0]);
  a[3] = multiply_pairs<kBf16>(code_pair_bits<kBf16, kSlot + 1>(words[2 + kWord]), scale_pairs[1]);
}

// A register `reg` of step `step` -> (code word, slot) of the thread (see a_fragment).
__host__ __device__ inline void a_register_source(int step, int reg, int* word, int* slot) {
  *word = 2 * (reg & 1) + step / 2;
  *slot = 2 * (step % 2) + (reg >> 1);
}

template <bool kBf16>
__host__ __device__ inline void a_fragment_at(int step, const uint32_t words[4],
                                              const uint32_t scale_pairs[2], uint32_t a[4]) {
  switch (step) {
    case 0: return a_fragment<kBf16, 0>(words, scale_pairs, a);
    case 1: return a_fragment<kBf16, 1>(words, scale_pairs, a);
    case 2: return a_fragment<kBf16, 2>(words, scale_pairs, a);
    default: return a_fragment<kBf16, 3>(words, scale_pairs, a);
  }
}

// ---- activation staging: 16-byte chunks of x rows (tokens), XOR-swizzled by row parity so the
// LDS.128 of a quarter-warp (rows g, g + 1 x chunks 2c + j) touch 8 different chunk positions.
// The activation is the MMA's B operand (8 tokens): thread (g, c) reads token g's columns
// 16c + 8j .. + 7, i.e. (b0, b1) of steps 2j and 2j + 1 in consecutive registers. ---------------

__host__ __device__ inline int x_chunk_offset(int row, int chunk) {
  return row * kXRowBytes + ((chunk ^ (row & 1)) * kChunkBytes);
}

// ---- MMA fragment maps (PTX m16n8k16, .row.col, 16-bit A/B, f32 C) -------------------------------

__host__ __device__ inline void a_element(int lane, int reg, int half, int* row, int* k) {
  *row = lane / 4 + 8 * (reg & 1);
  *k = 2 * (lane % 4) + half + 8 * (reg >> 1);
}
__host__ __device__ inline void b_element(int lane, int reg, int half, int* k, int* col) {
  *k = 2 * (lane % 4) + half + 8 * reg;
  *col = lane / 4;
}
__host__ __device__ inline void c_element(int lane, int index, int* row, int* col) {
  *row = lane / 4 + 8 * (index >> 1);
  *col = 2 * (lane % 4) + (index & 1);
}

// ---- epilogue -------------------------------------------------------------------------------------

__host__ __device__ inline float epilogue_value(float sum, float global_scale_x128,
                                                const void* bias, bool bf16, int64_t n) {
  float value = sum * global_scale_x128;
  if (bias != nullptr) {
    const uint16_t bits = static_cast<const uint16_t*>(bias)[n];
    value += half_bits_to_float(bits, bf16);
  }
  return value;
}

// The k-tiles [begin, end) of split rank `rank`.
__host__ __device__ inline void split_range(int64_t k_tiles, int split, int rank, int64_t* begin,
                                            int64_t* end) {
  const int64_t per = (k_tiles + split - 1) / split;
  *begin = per * rank < k_tiles ? per * rank : k_tiles;
  *end = per * (rank + 1) < k_tiles ? per * (rank + 1) : k_tiles;
}

// Tokens per block: 8 per group, kGroups = 1, 2, 4 or 8.
template <int kGroups>
struct StageLayout {
  static constexpr int kTokens = 8 * kGroups;
  static constexpr int kStages = kGroups <= 2 ? 6 : kGroups == 4 ? 5 : 4;
  static constexpr int kXBytes = kTokens * kXRowBytes;
  static constexpr int kStageBytes = kMarlinTileCodeBytes + kMarlinTileScaleBytes + kXBytes;
  static constexpr int kPartialBytes = kTokens * kMarlinTileN * 4;
  static constexpr int kBytes = kStages * kStageBytes > kPartialBytes ? kStages * kStageBytes
                                                                      : kPartialBytes;
  static constexpr int kXChunks = kTokens * kXChunksPerRow;
  static constexpr int kXCopies = (kXChunks + kMarlinThreads - 1) / kMarlinThreads;
  static constexpr int codes(int stage) { return stage * kStageBytes; }
  static constexpr int scales(int stage) { return stage * kStageBytes + kMarlinTileCodeBytes; }
  static constexpr int x(int stage) {
    return stage * kStageBytes + kMarlinTileCodeBytes + kMarlinTileScaleBytes;
  }
};

// The 16-byte copies thread v issues per k-tile: 0 the tile's codes, 1 its scales (threads < 16),
// 2.. activation chunks. Built once for the first k-tile of the block's range, then advanced by
// one tile at a time (pointer increments only, in the kernel's loop and in the CPU emulation).
template <int kGroups>
struct CopyPlan {
  static constexpr int kCopies = 2 + StageLayout<kGroups>::kXCopies;
  const uint8_t* source[kCopies];
  int offset[kCopies];        // within a stage
  bool active[kCopies];       // this thread issues the copy
  bool x_row_valid[kCopies];  // activation chunks: the token is < M
  int64_t x_column[kCopies];  // activation chunks: first column
};

template <int kGroups>
__host__ __device__ inline CopyPlan<kGroups> make_copy_plan(const Nvfp4MarlinParams& p,
                                                            int64_t tile_n, int64_t tile_k,
                                                            int64_t m0, int v) {
  using L = StageLayout<kGroups>;
  CopyPlan<kGroups> plan{};
  plan.source[0] = p.codes + tile_n * p.codes_stride_tn + tile_k * p.codes_stride_tk + kChunkBytes * v;
  plan.offset[0] = L::codes(0) + kChunkBytes * v;
  plan.active[0] = true;
  plan.source[1] = p.scales + tile_n * p.scales_stride_tn + tile_k * p.scales_stride_tk +
                   kChunkBytes * v;
  plan.offset[1] = L::scales(0) + kChunkBytes * v;
  plan.active[1] = v < kMarlinTileScaleBytes / kChunkBytes;
  for (int i = 2; i < CopyPlan<kGroups>::kCopies; ++i) {
    const int chunk_index = v + kMarlinThreads * (i - 2);
    const int row = chunk_index / kXChunksPerRow;
    const int chunk = chunk_index % kXChunksPerRow;
    plan.active[i] = chunk_index < L::kXChunks;
    plan.offset[i] = L::x(0) + x_chunk_offset(row, chunk);
    plan.x_row_valid[i] = m0 + row < p.M;
    plan.x_column[i] = kMarlinTileK * tile_k + 8 * chunk;
    // Not dereferenced for tokens past M (zero fill).
    plan.source[i] = reinterpret_cast<const uint8_t*>(static_cast<const uint16_t*>(p.x) +
                                                      (m0 + row) * p.x_stride_m +
                                                      plan.x_column[i]);
  }
  return plan;
}

// Copy i's source, or nullptr for a zero fill (tokens past M, columns past k_in).
template <int kGroups>
__host__ __device__ __forceinline__ const uint8_t* copy_source(const CopyPlan<kGroups>& plan,
                                                               const Nvfp4MarlinParams& p, int i) {
  if (i >= 2 && (!plan.x_row_valid[i] || plan.x_column[i] >= p.K)) return nullptr;
  return plan.source[i];
}

template <int kGroups>
__host__ __device__ __forceinline__ void advance_copy_plan(CopyPlan<kGroups>& plan,
                                                           const Nvfp4MarlinParams& p) {
  plan.source[0] += p.codes_stride_tk;
  plan.source[1] += p.scales_stride_tk;
  for (int i = 2; i < CopyPlan<kGroups>::kCopies; ++i) {
    plan.source[i] += kXRowBytes;
    plan.x_column[i] += kMarlinTileK;
  }
}

// Accumulator element `index` of group `group` of thread (warp, lane) -> (token, column) in the
// block's partial tile (the MMA's D is 16 weight rows x 8 tokens).
__host__ __device__ inline void partial_position(int warp, int lane, int group, int index,
                                                 int* token, int* column) {
  int row, col;
  c_element(lane, index, &row, &col);
  *token = 8 * group + col;
  *column = 16 * warp + row;
}

// ---- the kernel ------------------------------------------------------------------------------

#ifdef __CUDA_ARCH__
// A null source fills the 16 bytes with zeros (source size 0; `fallback` is a valid address that
// is not read).
__device__ __forceinline__ void cp_async_16(uint32_t shared_address, const void* source,
                                            const void* fallback) {
  const int bytes = source != nullptr ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address),
               "l"(source != nullptr ? source : fallback), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

template <bool kBf16>
__device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], uint32_t b0,
                                          uint32_t b1) {
  if constexpr (kBf16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}
#endif

template <bool kBf16, int kGroups>
__global__ void __launch_bounds__(kMarlinThreads)
    marlin_kernel(const Nvfp4MarlinParams p) {
#ifdef __CUDA_ARCH__
  using L = StageLayout<kGroups>;
  __shared__ __align__(16) uint8_t smem[L::kBytes];
  namespace cg = cooperative_groups;
  const cg::cluster_group cluster = cg::this_cluster();

  const int v = threadIdx.x;
  const int lane = v % 32;
  const ThreadCoords tc = coords_of(v);
  const int64_t tile_n = blockIdx.x;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * L::kTokens;
  const int rank = static_cast<int>(cluster.block_rank());
  const int64_t k_tiles = (p.K + kMarlinTileK - 1) / kMarlinTileK;
  int64_t begin, end;
  split_range(k_tiles, p.split, rank, &begin, &end);
  const uint32_t smem_base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));

  // Loads the plan's next k-tile into `stage`.
  CopyPlan<kGroups> plan = make_copy_plan<kGroups>(p, tile_n, begin, m0, v);
  auto load_stage = [&](int stage) {
#pragma unroll
    for (int i = 0; i < CopyPlan<kGroups>::kCopies; ++i)
      if (plan.active[i])
        cp_async_16(smem_base + stage * L::kStageBytes + plan.offset[i],
                    copy_source<kGroups>(plan, p, i), p.codes);
    advance_copy_plan<kGroups>(plan, p);
  };

  float acc[kGroups][4] = {};
  const int tiles = static_cast<int>(end - begin);
#pragma unroll
  for (int s = 0; s < L::kStages - 1; ++s) {
    if (s < tiles) load_stage(s);
    cp_async_commit();
  }
  int stage = 0;                    // the stage computed in this iteration
  int fill_stage = L::kStages - 1;  // the stage the next load goes to
  for (int it = 0; it < tiles; ++it) {
    cp_async_wait<L::kStages - 2>();
    __syncthreads();  // `stage` is complete for every thread; `fill_stage` is no longer read
    if (it + L::kStages - 1 < tiles) load_stage(fill_stage);
    cp_async_commit();
    fill_stage = fill_stage + 1 == L::kStages ? 0 : fill_stage + 1;

    const uint4 code_words = *reinterpret_cast<const uint4*>(smem + L::codes(stage) + 16 * v);
    const uint32_t words[4] = {code_words.x, code_words.y, code_words.z, code_words.w};
    const uint32_t scale_bytes =
        *reinterpret_cast<const uint16_t*>(smem + L::scales(stage) + 2 * v);
    const uint32_t scale_pairs[2] = {scale_pair_bits<kBf16>(scale_bytes & 0xFF),
                                     scale_pair_bits<kBf16>(scale_bytes >> 8)};
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      uint4 tokens[kGroups];
#pragma unroll
      for (int group = 0; group < kGroups; ++group)
        tokens[group] = *reinterpret_cast<const uint4*>(
            smem + L::x(stage) + x_chunk_offset(8 * group + tc.g, 2 * tc.c + j));
#pragma unroll
      for (int sub = 0; sub < 2; ++sub) {
        uint32_t a[4];
        a_fragment_at<kBf16>(2 * j + sub, words, scale_pairs, a);
#pragma unroll
        for (int group = 0; group < kGroups; ++group) {
          const uint32_t b0 = sub == 0 ? tokens[group].x : tokens[group].z;
          const uint32_t b1 = sub == 0 ? tokens[group].y : tokens[group].w;
          mma_16816<kBf16>(acc[group], a, b0, b1);
        }
      }
    }
    stage = stage + 1 == L::kStages ? 0 : stage + 1;
  }
  cp_async_wait<0>();
  __syncthreads();  // the stages are dead: the partial tile reuses their shared memory

  float* partial = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int group = 0; group < kGroups; ++group)
#pragma unroll
    for (int index = 0; index < 4; ++index) {
      int token, column;
      partial_position(tc.warp, lane, group, index, &token, &column);
      partial[token * kMarlinTileN + column] = acc[group][index];
    }
  cluster.sync();  // every block of the cluster has its partial tile in shared memory

  const float global_scale_x128 = *p.global_scale * 128.0f;
  uint16_t* out = static_cast<uint16_t*>(p.out);
  for (int e = v; e < L::kTokens * kMarlinTileN; e += kMarlinThreads) {
    const int token = e / kMarlinTileN;
    if (token % p.split != rank) continue;
    const int64_t m = m0 + token;
    const int64_t n = kMarlinTileN * tile_n + e % kMarlinTileN;
    if (m >= p.M || n >= p.N) continue;
    float sum = 0.0f;
    for (int q = 0; q < p.split; ++q) sum += cluster.map_shared_rank(partial, q)[e];
    out[m * p.out_stride_m + n] =
        float_to_half_bits(epilogue_value(sum, global_scale_x128, p.bias, kBf16, n), kBf16);
  }
  cluster.sync();  // no block leaves while another still reads its shared memory
#endif
}

template <bool kBf16>
__global__ void __launch_bounds__(kMarlinThreads) operands_kernel(const Nvfp4MarlinParams p);

// Thread v of tile (tile_n, tile_k): its code words and scale bytes, read from global memory the
// way the kernel reads them from its stage, dequantized into out (logical (n, k) order).
template <bool kBf16>
__host__ __device__ void write_operands(const Nvfp4MarlinParams& p, int64_t tile_n, int64_t tile_k,
                                        int v) {
  const uint8_t* codes = p.codes + tile_n * p.codes_stride_tn + tile_k * p.codes_stride_tk;
  const uint8_t* scales = p.scales + tile_n * p.scales_stride_tn + tile_k * p.scales_stride_tk;
  uint32_t words[4];
  memcpy(words, codes + 16 * v, sizeof(words));
  const uint32_t scale_pairs[2] = {scale_pair_bits<kBf16>(scales[2 * v]),
                                   scale_pair_bits<kBf16>(scales[2 * v + 1])};
  uint16_t* out = static_cast<uint16_t*>(p.out);
  for (int step = 0; step < 4; ++step) {
    uint32_t a[4];
    a_fragment_at<kBf16>(step, words, scale_pairs, a);
    for (int reg = 0; reg < 4; ++reg) {
      int word, slot;
      a_register_source(step, reg, &word, &slot);
      for (int half = 0; half < 2; ++half) {
        int row, col;
        code_position(v, word, slot, half, &row, &col);
        const int64_t n = kMarlinTileN * tile_n + row;
        const int64_t k = kMarlinTileK * tile_k + col;
        if (n < p.N && k < p.K)
          out[n * p.out_stride_m + k] = static_cast<uint16_t>(a[reg] >> (16 * half));
      }
    }
  }
}

template <bool kBf16>
__global__ void __launch_bounds__(kMarlinThreads) operands_kernel(const Nvfp4MarlinParams p) {
  write_operands<kBf16>(p, blockIdx.x, blockIdx.y, threadIdx.x);
}

__global__ void prepack_kernel(const Nvfp4PrepackParams p, int64_t tiles_k, int64_t words) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  constexpr int kWordsPerTile = kMarlinTileCodeBytes / 4;
  if (i < words) {
    const int64_t tile = i / kWordsPerTile;
    const int within = static_cast<int>(i % kWordsPerTile);
    const uint32_t word = prepack_word(p, tile / tiles_k, tile % tiles_k, within / 4, within % 4);
    reinterpret_cast<uint32_t*>(p.codes)[i] = word;
  }
  if (i < words / 2) {  // a tile has 512 code words and 256 scale bytes
    const int64_t tile = i / kMarlinTileScaleBytes;
    const int within = static_cast<int>(i % kMarlinTileScaleBytes);
    p.scales[i] = prepack_scale(p, tile / tiles_k, tile % tiles_k, within / 2, within % 2);
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool is_bf16(FloatType type) { return type == FloatType::kBFloat16; }

}  // namespace

int nvfp4_marlin_token_groups(int64_t M) { return M <= 8 ? 1 : M <= 16 ? 2 : M <= 32 ? 4 : 8; }

cudaError_t nvfp4_prepack(const Nvfp4PrepackParams& p, cudaStream_t stream) {
  const int64_t words = ceil_div(p.N, kMarlinTileN) * ceil_div(p.K, kMarlinTileK) *
                        (kMarlinTileCodeBytes / 4);
  if (words == 0) return cudaSuccess;
  prepack_kernel<<<static_cast<unsigned>(ceil_div(words, 256)), 256, 0, stream>>>(
      p, ceil_div(p.K, kMarlinTileK), words);
  return cudaGetLastError();
}

void nvfp4_prepack_host(const Nvfp4PrepackParams& p) {
  const int64_t tiles_n = ceil_div(p.N, kMarlinTileN), tiles_k = ceil_div(p.K, kMarlinTileK);
  for (int64_t tn = 0; tn < tiles_n; ++tn)
    for (int64_t tk = 0; tk < tiles_k; ++tk) {
      const int64_t tile = tn * tiles_k + tk;
      for (int v = 0; v < kMarlinThreads; ++v) {
        for (int word = 0; word < 4; ++word) {
          const uint32_t value = prepack_word(p, tn, tk, v, word);
          memcpy(p.codes + tile * kMarlinTileCodeBytes + 16 * v + 4 * word, &value, 4);
        }
        for (int t = 0; t < 2; ++t)
          p.scales[tile * kMarlinTileScaleBytes + 2 * v + t] = prepack_scale(p, tn, tk, v, t);
      }
    }
}

cudaError_t nvfp4_prepacked_operands(const Nvfp4MarlinParams& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(ceil_div(p.N, kMarlinTileN)),
                  static_cast<unsigned>(ceil_div(p.K, kMarlinTileK)));
  if (grid.x == 0 || grid.y == 0) return cudaSuccess;
  if (is_bf16(p.act_type))
    operands_kernel<true><<<grid, kMarlinThreads, 0, stream>>>(p);
  else
    operands_kernel<false><<<grid, kMarlinThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

void nvfp4_prepacked_operands_host(const Nvfp4MarlinParams& p) {
  for (int64_t tn = 0; tn < ceil_div(p.N, kMarlinTileN); ++tn)
    for (int64_t tk = 0; tk < ceil_div(p.K, kMarlinTileK); ++tk)
      for (int v = 0; v < kMarlinThreads; ++v) {
        if (is_bf16(p.act_type))
          write_operands<true>(p, tn, tk, v);
        else
          write_operands<false>(p, tn, tk, v);
      }
}

namespace {

template <bool kBf16, int kGroups>
cudaError_t launch_marlin(const Nvfp4MarlinParams& p, cudaStream_t stream) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(ceil_div(p.N, kMarlinTileN)),
                        static_cast<unsigned>(ceil_div(p.M, StageLayout<kGroups>::kTokens)),
                        static_cast<unsigned>(p.split));
  config.blockDim = dim3(kMarlinThreads);
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeClusterDimension;
  attribute[0].val.clusterDim.x = 1;
  attribute[0].val.clusterDim.y = 1;
  attribute[0].val.clusterDim.z = static_cast<unsigned>(p.split);
  config.attrs = attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, marlin_kernel<kBf16, kGroups>, p);
}

// The kernel's grid, block by block, on the CPU (see the header).
template <bool kBf16, int kGroups>
void marlin_host(const Nvfp4MarlinParams& p) {
  using L = StageLayout<kGroups>;
  constexpr int kPartial = L::kTokens * kMarlinTileN;
  const int64_t k_tiles = ceil_div(p.K, kMarlinTileK);
  std::vector<uint8_t> stage(L::kStageBytes);
  std::vector<float> partials(static_cast<size_t>(p.split) * kPartial);
  for (int64_t tile_n = 0; tile_n < ceil_div(p.N, kMarlinTileN); ++tile_n) {
    for (int64_t m0 = 0; m0 < p.M; m0 += L::kTokens) {
      for (int rank = 0; rank < p.split; ++rank) {
        std::vector<float> acc(static_cast<size_t>(kMarlinThreads) * kGroups * 4, 0.0f);
        auto acc_at = [&](int v, int group, int index) -> float& {
          return acc[(static_cast<size_t>(v) * kGroups + group) * 4 + index];
        };
        int64_t begin, end;
        split_range(k_tiles, p.split, rank, &begin, &end);
        std::vector<CopyPlan<kGroups>> plans;
        for (int v = 0; v < kMarlinThreads; ++v)
          plans.push_back(make_copy_plan<kGroups>(p, tile_n, begin, m0, v));
        for (int64_t tile_k = begin; tile_k < end; ++tile_k) {
          for (int v = 0; v < kMarlinThreads; ++v) {
            for (int i = 0; i < CopyPlan<kGroups>::kCopies; ++i) {
              if (!plans[v].active[i]) continue;
              const uint8_t* source = copy_source<kGroups>(plans[v], p, i);
              if (source != nullptr)
                memcpy(stage.data() + plans[v].offset[i], source, kChunkBytes);
              else
                memset(stage.data() + plans[v].offset[i], 0, kChunkBytes);
            }
            advance_copy_plan<kGroups>(plans[v], p);
          }
          for (int warp = 0; warp < kWarps; ++warp) {
            // Every lane's registers, then the warp's MMA from the PTX fragment maps.
            uint32_t words[32][4], scale_pairs[32][2];
            for (int lane = 0; lane < 32; ++lane) {
              const int v = 32 * warp + lane;
              memcpy(words[lane], stage.data() + L::codes(0) + 16 * v, 16);
              for (int t = 0; t < 2; ++t)
                scale_pairs[lane][t] = scale_pair_bits<kBf16>(stage[L::scales(0) + 2 * v + t]);
            }
            for (int step = 0; step < 4; ++step) {
              float A[16][16];
              for (int lane = 0; lane < 32; ++lane) {
                uint32_t a[4];
                a_fragment_at<kBf16>(step, words[lane], scale_pairs[lane], a);
                for (int reg = 0; reg < 4; ++reg)
                  for (int half = 0; half < 2; ++half) {
                    int row, k;
                    a_element(lane, reg, half, &row, &k);
                    A[row][k] = half_bits_to_float(static_cast<uint16_t>(a[reg] >> (16 * half)), kBf16);
                  }
              }
              for (int group = 0; group < kGroups; ++group) {
                float B[16][8];
                for (int lane = 0; lane < 32; ++lane) {
                  const ThreadCoords tc = coords_of(32 * warp + lane);
                  uint32_t chunk[4];
                  memcpy(chunk, stage.data() + L::x(0) + x_chunk_offset(8 * group + tc.g, 2 * tc.c + step / 2), 16);
                  const uint32_t b[2] = {chunk[2 * (step % 2)], chunk[2 * (step % 2) + 1]};
                  for (int reg = 0; reg < 2; ++reg)
                    for (int half = 0; half < 2; ++half) {
                      int k, col;
                      b_element(lane, reg, half, &k, &col);
                      B[k][col] = half_bits_to_float(static_cast<uint16_t>(b[reg] >> (16 * half)), kBf16);
                    }
                }
                for (int lane = 0; lane < 32; ++lane)
                  for (int index = 0; index < 4; ++index) {
                    int row, col;
                    c_element(lane, index, &row, &col);
                    float& sum = acc_at(32 * warp + lane, group, index);
                    for (int k = 0; k < 16; ++k) sum += A[row][k] * B[k][col];
                  }
              }
            }
          }
        }
        float* partial = partials.data() + static_cast<size_t>(rank) * kPartial;
        for (int v = 0; v < kMarlinThreads; ++v)
          for (int group = 0; group < kGroups; ++group)
            for (int index = 0; index < 4; ++index) {
              int token, column;
              partial_position(v / 32, v % 32, group, index, &token, &column);
              partial[token * kMarlinTileN + column] = acc_at(v, group, index);
            }
      }
      const float global_scale_x128 = *p.global_scale * 128.0f;
      for (int e = 0; e < kPartial; ++e) {
        const int64_t m = m0 + e / kMarlinTileN;
        const int64_t n = kMarlinTileN * tile_n + e % kMarlinTileN;
        if (m >= p.M || n >= p.N) continue;
        float sum = 0.0f;
        for (int q = 0; q < p.split; ++q) sum += partials[static_cast<size_t>(q) * kPartial + e];
        static_cast<uint16_t*>(p.out)[m * p.out_stride_m + n] =
            float_to_half_bits(epilogue_value(sum, global_scale_x128, p.bias, kBf16, n), kBf16);
      }
    }
  }
}

template <bool kBf16>
cudaError_t launch_for_m(const Nvfp4MarlinParams& p, cudaStream_t stream) {
  switch (nvfp4_marlin_token_groups(p.M)) {
    case 1: return launch_marlin<kBf16, 1>(p, stream);
    case 2: return launch_marlin<kBf16, 2>(p, stream);
    case 4: return launch_marlin<kBf16, 4>(p, stream);
    default: return launch_marlin<kBf16, 8>(p, stream);
  }
}

template <bool kBf16>
void host_for_m(const Nvfp4MarlinParams& p) {
  switch (nvfp4_marlin_token_groups(p.M)) {
    case 1: return marlin_host<kBf16, 1>(p);
    case 2: return marlin_host<kBf16, 2>(p);
    case 4: return marlin_host<kBf16, 4>(p);
    default: return marlin_host<kBf16, 8>(p);
  }
}

bool valid(const Nvfp4MarlinParams& p) {
  return p.K % 16 == 0 && p.split >= 1 && p.split <= kMarlinMaxSplit &&
         (p.act_type == FloatType::kFloat16 || p.act_type == FloatType::kBFloat16);
}

}  // namespace

cudaError_t nvfp4_marlin_linear(const Nvfp4MarlinParams& p, cudaStream_t stream) {
  if (!valid(p)) return cudaErrorInvalidValue;
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  return is_bf16(p.act_type) ? launch_for_m<true>(p, stream) : launch_for_m<false>(p, stream);
}

void nvfp4_marlin_linear_host(const Nvfp4MarlinParams& p) {
  if (!valid(p) || p.M == 0 || p.N == 0) return;
  if (is_bf16(p.act_type))
    host_for_m<true>(p);
  else
    host_for_m<false>(p);
}

}  // namespace star_elastic::quant
