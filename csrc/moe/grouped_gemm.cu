// The grouped GEMM entry points (see grouped_gemm.h): schedule dispatch and grouped_gemm's
// tables-then-GEMM pair. The CUTLASS kernels live in grouped_gemm_sm90_*.cu, one file per
// schedule (each costs minutes of nvcc; an edit here rebuilds none of them).
#include "moe/grouped_gemm.h"

namespace star_elastic {
namespace moe {
namespace {

size_t round_up(size_t bytes) { return (bytes + 255) / 256 * 256; }

bool aligned(int64_t value) { return value % 8 == 0; }
bool aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

size_t grouped_gemm_cutlass_workspace_bytes(int groups) {
  size_t bytes = grouped_gemm_cooperative_workspace_bytes(groups);
  const size_t pingpong = grouped_gemm_pingpong_workspace_bytes(groups);
  const size_t swap_ab = grouped_gemm_swap_ab_workspace_bytes(groups);
  bytes = pingpong > bytes ? pingpong : bytes;
  bytes = swap_ab > bytes ? swap_ab : bytes;
  return round_up(bytes);
}

cudaError_t grouped_gemm_run(const GemmTables& tables, int groups, GemmEpilogue epilogue,
                             GemmSchedule schedule, void* workspace, size_t workspace_bytes,
                             int device, cudaStream_t stream) {
  if (groups <= 0) return cudaSuccess;
  if (tables.swap_ab != (schedule == GemmSchedule::kSwapAB64x32)) return cudaErrorInvalidValue;
  switch (schedule) {
    case GemmSchedule::kCooperative128x128:
      return grouped_gemm_cooperative(tables, groups, epilogue, workspace, workspace_bytes, device,
                                      stream);
    case GemmSchedule::kPingpong64x128:
      return grouped_gemm_pingpong(tables, groups, epilogue, workspace, workspace_bytes, device,
                                   stream);
    case GemmSchedule::kSwapAB64x32:
      return grouped_gemm_swap_ab(tables, groups, epilogue, workspace, workspace_bytes, device,
                                  stream);
  }
  return cudaErrorInvalidValue;
}

bool grouped_gemm_table_layouts_match() {
  return grouped_gemm_cooperative_layouts_match() && grouped_gemm_pingpong_layouts_match() &&
         grouped_gemm_swap_ab_layouts_match();
}

size_t grouped_gemm_bf16_workspace_size(int num_groups) {
  return gemm_tables_bytes(num_groups) + grouped_gemm_cutlass_workspace_bytes(num_groups);
}

cudaError_t grouped_gemm_bf16(const TablesFromEnds& args, GemmSchedule schedule, void* workspace,
                              size_t workspace_bytes, int device, cudaStream_t stream) {
  if (args.num_groups <= 0 || args.n == 0 || args.m == 0) return cudaSuccess;
  if (!aligned(args.lda) || !aligned(args.ldb) || !aligned(args.ldd) || !aligned(args.stride_bg) ||
      !aligned(args.a) || !aligned(args.b) || !aligned(args.d) || !aligned(workspace) ||
      workspace_bytes < grouped_gemm_bf16_workspace_size(args.num_groups)) {
    return cudaErrorInvalidValue;
  }
  const GemmTables tables =
      carve_gemm_tables(workspace, args.num_groups, schedule == GemmSchedule::kSwapAB64x32);
  cudaError_t err = tables_from_ends_cuda(args, tables, stream);
  if (err != cudaSuccess) return err;
  const size_t table_bytes = gemm_tables_bytes(args.num_groups);
  return grouped_gemm_run(tables, args.num_groups, GemmEpilogue::kIdentity, schedule,
                          static_cast<char*>(workspace) + table_bytes, workspace_bytes - table_bytes,
                          device, stream);
}

void grouped_gemm_bf16_host(const TablesFromEnds& args, void* workspace, bool swap_ab) {
  if (args.num_groups <= 0) return;
  const GemmTables tables = carve_gemm_tables(workspace, args.num_groups, swap_ab);
  tables_from_ends_host(args, tables);
  grouped_gemm_tables_host(tables, args.num_groups, GemmEpilogue::kIdentity);
}

}  // namespace moe
}  // namespace star_elastic
