// Grouped GEMM schedule "swap_ab" (grouped_gemm.h): the swapped problem (weights on M,
// tokens on N): 64 weight rows x 32 tokens x 128, pingpong: decode, a few rows per expert.
// One file per schedule: each instantiates three CUTLASS kernels (one per epilogue), minutes of
// nvcc apiece, and an edit to another schedule rebuilds none of them.
#include "moe/grouped_gemm_sm90.cuh"

namespace star_elastic {
namespace moe {
namespace {

using ThisSchedule = sm90::Schedule<cute::Shape<cute::_64, cute::_32, cute::_128>,
                                    cutlass::gemm::KernelPtrArrayTmaWarpSpecializedPingpong,
                                    cutlass::epilogue::PtrArrayTmaWarpSpecializedPingpong, true>;

}  // namespace

cudaError_t grouped_gemm_swap_ab(const GemmTables& tables, int groups, GemmEpilogue epilogue,
                                void* workspace, size_t bytes, int device, cudaStream_t stream) {
  return ThisSchedule::launch(tables, groups, epilogue, workspace, bytes, device, stream);
}

size_t grouped_gemm_swap_ab_workspace_bytes(int groups) { return ThisSchedule::workspace(groups); }

bool grouped_gemm_swap_ab_layouts_match() { return ThisSchedule::layouts_match(); }

}  // namespace moe
}  // namespace star_elastic
