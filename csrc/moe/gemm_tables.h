// The per-group argument tables of a pointer-array grouped GEMM, in the layout the CUTLASS sm_90a
// kernels read them (grouped_gemm_sm90.cuh reinterprets them as its cute types and checks the
// layouts agree), written on the device by the kernel that knows the groups (the moe_ffn plan, or
// tables_from_ends below for grouped_gemm), so the host never needs the group sizes.
//
// Logical problem of group g: D[m, n] = epilogue(A[m, :K] . B[n, :K]) with A, B, C, D row-major
// (row strides lda, ldb, ldc, ldd; unit column stride): A holds the group's token rows, B the
// expert's weight rows. With swap_ab the tables describe the transposed problem that decode uses
// (weights on the MMA's M, tokens on N): shapes (n, m, K), a = the weight rows, b = the token rows;
// c and d keep their pointers and row strides (a column-major D' of the swapped problem is the
// same memory as the row-major D).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "moe/epilogue.h"
#include "moe/error_flags.h"

namespace star_elastic {
namespace moe {

struct GemmTables {
  int32_t* shapes;  // (G, 3): the MMA problem (m, n, k) of each group
  const void** a;
  const void** b;
  const void** c;   // read only by GemmEpilogue::kSiluCTimesAcc
  void** d;
  int64_t* lda;
  int64_t* ldb;
  int64_t* ldc;
  int64_t* ldd;
  bool swap_ab;
};

// Bytes of the tables of `groups` groups (each piece 256-byte aligned).
size_t gemm_tables_bytes(int groups);

// The tables carved from `base` (256-byte aligned, gemm_tables_bytes(groups) bytes).
GemmTables carve_gemm_tables(void* base, int groups, bool swap_ab);

// Writes group g's entry: logical rows m, outputs n, depth k; A (m, k) at a/lda, B (n, k) at
// b/ldb, C at c/ldc (or nullptr), D (m, n) at d/ldd.
__host__ __device__ inline void write_group(const GemmTables& t, int64_t g, int64_t m, int64_t n,
                                            int64_t k, const void* a, int64_t lda, const void* b,
                                            int64_t ldb, const void* c, int64_t ldc, void* d,
                                            int64_t ldd) {
  int32_t* shape = t.shapes + 3 * g;
  shape[0] = static_cast<int32_t>(t.swap_ab ? n : m);
  shape[1] = static_cast<int32_t>(t.swap_ab ? m : n);
  shape[2] = static_cast<int32_t>(k);
  t.a[g] = t.swap_ab ? b : a;
  t.lda[g] = t.swap_ab ? ldb : lda;
  t.b[g] = t.swap_ab ? a : b;
  t.ldb[g] = t.swap_ab ? lda : ldb;
  t.c[g] = c;
  t.ldc[g] = ldc;
  t.d[g] = d;
  t.ldd[g] = ldd;
}

// The tables of grouped_gemm's operands: group g owns the rows group_ends[g-1]..group_ends[g] of
// A (M, K) and multiplies them by B_g = b + g * stride_bg ((N, K), row stride ldb). Ends are checked
// on the device: ends that decrease, are negative or do not finish at M raise kErrorBadGroupEnds
// and are clamped into [0, M] (never read out of bounds).
struct TablesFromEnds {
  const void* a;
  int64_t lda;
  const void* b;
  int64_t stride_bg;
  int64_t ldb;
  void* d;
  int64_t ldd;
  const int32_t* group_ends;  // (G,)
  int32_t* error_flag;        // nullptr or one int32
  int num_groups;
  int64_t m, n, k;
};

cudaError_t tables_from_ends_cuda(const TablesFromEnds& params, const GemmTables& tables,
                                  cudaStream_t stream);
void tables_from_ends_host(const TablesFromEnds& params, const GemmTables& tables);

// The CPU impl of a grouped GEMM over tables (host pointers): a plain fp32 product of the bf16
// operands per group (the reference MMA), then the same epilogue function as the CUTLASS kernels
// and round-to-nearest-even to bf16. For tests of the tables and the epilogue without a GPU.
void grouped_gemm_tables_host(const GemmTables& tables, int groups, GemmEpilogue epilogue);

}  // namespace moe
}  // namespace star_elastic
