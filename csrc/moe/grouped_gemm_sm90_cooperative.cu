// Grouped GEMM schedule "cooperative" (grouped_gemm.h): 128x128x64 tiles, cooperative
// (two consumer warpgroups share a tile): prefill, many rows per expert.
// One file per schedule: each instantiates three CUTLASS kernels (one per epilogue), minutes of
// nvcc apiece, and an edit to another schedule rebuilds none of them.
#include "moe/grouped_gemm_sm90.cuh"

namespace star_elastic {
namespace moe {
namespace {

using ThisSchedule = sm90::Schedule<cute::Shape<cute::_128, cute::_128, cute::_64>,
                                    cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative,
                                    cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative, false>;

}  // namespace

cudaError_t grouped_gemm_cooperative(const GemmTables& tables, int groups, GemmEpilogue epilogue,
                                void* workspace, size_t bytes, int device, cudaStream_t stream) {
  return ThisSchedule::launch(tables, groups, epilogue, workspace, bytes, device, stream);
}

size_t grouped_gemm_cooperative_workspace_bytes(int groups) { return ThisSchedule::workspace(groups); }

bool grouped_gemm_cooperative_layouts_match() { return ThisSchedule::layouts_match(); }

}  // namespace moe
}  // namespace star_elastic
