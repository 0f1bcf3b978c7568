// Hopper (sm_90a) grouped GEMMs over experts for the MoE ops: CUTLASS 3 pointer-array kernels
// (TMA loads, warp-specialized wgmma mainloop, TMA-store epilogue with a fused activation) that
// read their per-group shapes, pointers and strides from device tables (gemm_tables.h), so no
// host sync; a group with no rows has no tiles.
//
// bf16 in, fp32 accumulation, bf16 out. TMA needs 16-byte aligned row strides and base pointers
// (row strides multiples of 8 elements); the extents m, n, k may be anything (TMA zero-fills the
// loads outside them and clips the stores), so elastic widths need no granularity here.
//
// Schedules (host-chosen from the mean rows per group, see star_elastic_kernels/moe/gemm.py):
//   kCooperative128x128: 128x128x64 tiles, two consumer warpgroups on one tile (prefill);
//   kPingpong64x128:     64x128x64 tiles, the two consumer warpgroups alternate tiles, so one's
//                        epilogue hides under the other's mainloop (mid-size groups);
//   kSwapAB64x32:        the swapped problem (tables written with swap_ab): 64 weight rows x 32
//                        tokens x 128, pingpong; at decode a group has a few rows, which would
//                        fill 1-3 of a 64/128-row M tile, while the weights fill M here.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "moe/epilogue.h"
#include "moe/gemm_tables.h"

namespace star_elastic {
namespace moe {

enum class GemmSchedule : int { kCooperative128x128 = 0, kPingpong64x128 = 1, kSwapAB64x32 = 2 };

// The persistent kernels keep per-SM TMA descriptors in their workspace; sized for up to this
// many SMs, the workspace bound needs no device query (callers size it while tracing).
constexpr int kMaxSmCount = 256;

// Bytes of CUTLASS workspace any schedule/epilogue needs for `groups` groups (256-aligned).
size_t grouped_gemm_cutlass_workspace_bytes(int groups);

// Runs one grouped GEMM over `tables` (device pointers) on `stream`. The CUTLASS arguments are
// built on the first call for a (tables, workspace, groups, device) and cached, so a steady-state
// call is one kernel launch. Returns cudaErrorInvalidValue for a bad schedule/epilogue pairing
// (kSwapAB64x32 needs tables written with swap_ab, the others without) or a small workspace.
cudaError_t grouped_gemm_run(const GemmTables& tables, int groups, GemmEpilogue epilogue,
                             GemmSchedule schedule, void* cutlass_workspace,
                             size_t workspace_bytes, int device, cudaStream_t stream);

// One launcher per schedule (grouped_gemm_sm90_*.cu), behind grouped_gemm_run.
cudaError_t grouped_gemm_cooperative(const GemmTables&, int, GemmEpilogue, void*, size_t, int,
                                     cudaStream_t);
cudaError_t grouped_gemm_pingpong(const GemmTables&, int, GemmEpilogue, void*, size_t, int,
                                  cudaStream_t);
cudaError_t grouped_gemm_swap_ab(const GemmTables&, int, GemmEpilogue, void*, size_t, int,
                                 cudaStream_t);
size_t grouped_gemm_cooperative_workspace_bytes(int groups);
size_t grouped_gemm_pingpong_workspace_bytes(int groups);
size_t grouped_gemm_swap_ab_workspace_bytes(int groups);
bool grouped_gemm_cooperative_layouts_match();
bool grouped_gemm_pingpong_layouts_match();
bool grouped_gemm_swap_ab_layouts_match();

// True when the cute types of the kernels' tables have the memory layout gemm_tables.h writes
// (Shape<int,int,int> = 3 x int32, the strides = one int64 each); run by a CPU test.
bool grouped_gemm_table_layouts_match();

// grouped_gemm's operands (TablesFromEnds) with its workspace: gemm_tables_bytes(G) bytes of
// tables, then grouped_gemm_cutlass_workspace_bytes(G).
size_t grouped_gemm_bf16_workspace_size(int num_groups);
cudaError_t grouped_gemm_bf16(const TablesFromEnds& args, GemmSchedule schedule, void* workspace,
                              size_t workspace_bytes, int device, cudaStream_t stream);
// The same on the CPU: tables_from_ends_host + grouped_gemm_tables_host (tests only; swap_ab
// writes and reads the swapped tables).
void grouped_gemm_bf16_host(const TablesFromEnds& args, void* workspace, bool swap_ab);

}  // namespace moe
}  // namespace star_elastic
