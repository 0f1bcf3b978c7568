// Marlin-class NVFP4 W4A16 linear on 16-bit tensor cores (mma.sync m16n8k16), with the weight
// prepacked offline into the order in which each thread feeds its MMA fragments.
//
// Plain CUDA C++: raw pointers, sizes and strides, no torch headers. Status: compiles for sm_90a,
// statically checked, never run on a GPU (docs/gpu_status.md); the CPU impls below run the same
// per-thread code and prove it against the reference.
//
// ---- The prepacked layout (NVFP4Prepacked in star_elastic_kernels/quant/nvfp4.py) -------------
// The (N, K) weight is cut into tiles of kTileN = 64 rows x kTileK = 64 columns, stored as
//   codes  uint8 (ceil(N/64), ceil(K/64), 2048): the tile's 4096 E2M1 codes,
//   scales uint8 (ceil(N/64), ceil(K/64), 256):  its 256 block scales (one per row and 16 columns),
// zero-padded past N and K. A nested child (n_out, k_in) is the view codes[:ceil(n_out/64),
// :ceil(k_in/64)] of its parent (same strides): no copy. Columns of the last tile past k_in are
// multiplied by the zero-filled activation, rows past n_out are not stored.
//
// Inside a tile, the 128 threads of a block ("virtual thread" v = 32 * warp + lane, lane =
// 4 * g + c) each own 16 consecutive bytes of codes and 2 bytes of scales: rows
// n = 16 * warp + 8 * t + g (t = 0, 1) and the 16-column block c (columns 16c .. 16c + 15).
// The reduction index of the MMA is permuted so that a thread's B fragments over the tile's four
// k16 steps are exactly that one block: step s, register r (b0/b1) holds columns
// 16c + 4s + 2r (low half) and 16c + 4s + 2r + 1 (high half); the activation is read with the same
// permutation (columns 16c + 4s .. 16c + 4s + 3 give a0 and a2). So each thread decodes one block
// scale per 16 elements, and no scale is decoded twice.
// The 4 code words of a thread are (t, j) = (0,0), (0,1), (1,0), (1,1); word (t, j) holds steps
// 2j and 2j+1, pair p = 2 * (s - 2j) + r in slot p: in each 16-bit half (low half: the even column,
// high half: the odd one) slot p has its 3 magnitude bits at kMagnitudeBit[p] and its sign at
// kSignBit[p]. The slots are placed so that moving a code to the fp16 (magnitude at bits 9..11)
// or bf16 (bits 6..8) position takes 12 shift/and/or operations per 8 codes for either type.
//
// Block scales are re-encoded as u = ((E + 22) << 3) | mmm for |scale| = 2^E * (1 + mmm/8)
// (E4M3 subnormals normalised), u = 0 for a zero scale, u = 0xFF for NaN. Then, bit for bit,
//   fp16: code bits (s << 15) | (mag << 9) = e2m1 * 2^-14,  scale bits u << 7 = scale * 2^7;
//   bf16: code bits (s << 15) | (mag << 6) = e2m1 * 2^-126, scale bits (u << 4) | 0x7000
//         = scale * 2^119;
// and one 16-bit multiply gives the MMA operand e2m1 * scale * 2^-7 exactly (it has at most 6
// significant bits and lies in [2^-17, 21]); the epilogue multiplies the FP32 accumulator by
// global_scale * 2^7. A zero scale zeroes its block's codes in the prepack; a negative scale
// flips its codes' signs (the values are unchanged).
// The bf16 path relies on mul.rn.bf16x2 keeping subnormal inputs (0.5 * 2^-126), as PTX documents
// for the 16-bit arithmetic instructions; unverified on hardware like the rest of the kernel.
//
// ---- The kernel ------------------------------------------------------------------------------
// The MMA computes out^T: the dequantized weight is its A operand (16 output features, made in
// registers, so no shuffles) and the activation its B operand (8 tokens, loaded from shared
// memory straight into the register pairs the MMA takes). A block of 4 warps computes tokens
// [8 * G * blockIdx.y, +8G) (G = 1, 2, 4, 8 groups of 8 tokens) x output features
// [64 * blockIdx.x, +64) over the k-tiles of its split (blockIdx.z); warps own 16 features each.
// Per k-tile, 16-byte cp.async copies bring the tile's codes, scales and activation rows into one
// of 4-6 shared-memory stages. Split-K is deterministic and takes one launch: the `split` blocks
// of an output tile form a thread-block cluster (1 x 1 x split); each writes its FP32 partial tile
// to its shared memory, and after a cluster barrier every block sums a share of the rows over the
// cluster's blocks in rank order (distributed shared memory): no memset, no atomics, no second
// kernel.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "quant/fp8_quant.h"  // FloatType

namespace star_elastic::quant {

constexpr int kMarlinTileN = 64;
constexpr int kMarlinTileK = 64;
constexpr int kMarlinTileCodeBytes = kMarlinTileN * kMarlinTileK / 2;  // 2048
constexpr int kMarlinTileScaleBytes = kMarlinTileN * kMarlinTileK / 16;  // 256
constexpr int kMarlinThreads = 128;
constexpr int kMarlinMaxSplit = 8;  // the portable cluster size

// Standard NVFP4 (data (N, K/2), scales (N, K/16), unit K stride) -> the prepacked tiles.
struct Nvfp4PrepackParams {
  const uint8_t* data;
  int64_t data_stride_n;  // bytes
  const uint8_t* scale;   // E4M3 bytes
  int64_t scale_stride_n;
  int64_t N;
  int64_t K;              // a multiple of 16
  uint8_t* codes;         // (ceil(N/64), ceil(K/64), 2048), contiguous
  uint8_t* scales;        // (ceil(N/64), ceil(K/64), 256), contiguous
};

// A prepacked weight (or a child view of one) and what to do with it.
struct Nvfp4MarlinParams {
  const void* x;            // (M, K) act_type, unit K stride, rows 16-byte aligned
  int64_t x_stride_m;       // elements
  FloatType act_type;       // float16 or bfloat16
  const uint8_t* codes;     // tile (i, j) at codes + i * codes_stride_tn + j * codes_stride_tk
  int64_t codes_stride_tn;
  int64_t codes_stride_tk;
  const uint8_t* scales;
  int64_t scales_stride_tn;
  int64_t scales_stride_tk;
  const float* global_scale;  // one float
  const void* bias;           // (N,) act_type or nullptr
  void* out;                  // (M, N) act_type, unit column stride
  int64_t out_stride_m;
  int64_t M;
  int64_t N;                // active output features (<= 64 * tiles along N)
  int64_t K;                // active input features, a multiple of 16 (<= 64 * tiles along K)
  int split;                // 1 .. kMarlinMaxSplit blocks share each output tile's K loop
};

cudaError_t nvfp4_prepack(const Nvfp4PrepackParams& p, cudaStream_t stream);
void nvfp4_prepack_host(const Nvfp4PrepackParams& p);

// out (N, K) act_type, row stride out_stride_m: the MMA operands e2m1 * scale * 2^-7 in logical
// order, produced by the kernel's fragment reader and dequant (a test of both; x, bias, M and
// global_scale are unused).
cudaError_t nvfp4_prepacked_operands(const Nvfp4MarlinParams& p, cudaStream_t stream);
void nvfp4_prepacked_operands_host(const Nvfp4MarlinParams& p);

cudaError_t nvfp4_marlin_linear(const Nvfp4MarlinParams& p, cudaStream_t stream);
// Every block, warp and lane of the kernel run on the CPU: the same copies into (emulated) shared
// memory, fragment reads, dequant and cluster reduction; the MMA itself is computed in FP32 from
// the fragments by the PTX fragment layout.
void nvfp4_marlin_linear_host(const Nvfp4MarlinParams& p);

// Tokens per block, in groups of 8 (the MMA's N): 1, 2, 4 or 8 groups for M <= 8, 16, 32, more.
int nvfp4_marlin_token_groups(int64_t M);

}  // namespace star_elastic::quant
