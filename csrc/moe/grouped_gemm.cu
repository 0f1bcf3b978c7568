// CUTLASS 3 pointer-array grouped GEMM (TMA + warp-specialized cooperative wgmma) for sm_90a.
// See grouped_gemm.h for the contract. No torch headers here: they cost minutes of nvcc.
// Device-side asserts in the mainloop become calls that serialize the wgmma pipeline (ptxas C7510).
#ifndef NDEBUG
#define NDEBUG
#endif

#include "moe/grouped_gemm.h"

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/group_array_problem_shape.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/kernel_hardware_info.h"

namespace star_elastic {
namespace moe {
namespace {

using namespace cute;

using ProblemShape = cutlass::gemm::GroupProblemShape<Shape<int, int, int>>;  // per group (M, N, K)
using Element = cutlass::bfloat16_t;
using Accumulator = float;
constexpr int kAlignment = 16 / sizeof(Element);

// A (M, K) row-major; B_g^T, i.e. a column-major (K, N) operand = an (N, K) row-major matrix;
// D (M, N) row-major. No C operand: the epilogue only writes.
using LayoutA = cutlass::layout::RowMajor;
using LayoutB = cutlass::layout::ColumnMajor;
using LayoutD = cutlass::layout::RowMajor;
using TileShape = Shape<_128, _128, _64>;
using ClusterShape = Shape<_1, _1, _1>;

using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, Accumulator, Accumulator,
    void, LayoutD*, kAlignment, Element, LayoutD*, kAlignment,
    cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative,
    cutlass::epilogue::fusion::LinearCombination<Element, Accumulator>>::CollectiveOp;

using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, LayoutA*, kAlignment, Element,
    LayoutB*, kAlignment, Accumulator, TileShape, ClusterShape,
    cutlass::gemm::collective::StageCountAutoCarveout<
        static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>,
    cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative>::CollectiveOp;

using GemmKernel =
    cutlass::gemm::kernel::GemmUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue>;
using Gemm = cutlass::gemm::device::GemmUniversalAdapter<GemmKernel>;

using StrideA = typename Gemm::GemmKernel::InternalStrideA;
using StrideB = typename Gemm::GemmKernel::InternalStrideB;
using StrideD = typename Gemm::GemmKernel::InternalStrideD;
using Shape3 = typename ProblemShape::UnderlyingProblemShape;

// The per-group tables, carved from the front of the workspace.
struct Tables {
  Shape3* shapes;
  const Element** ptr_a;
  const Element** ptr_b;
  Element** ptr_d;
  StrideA* stride_a;
  StrideB* stride_b;
  StrideD* stride_d;
};

size_t round_up(size_t bytes) { return (bytes + 255) / 256 * 256; }

size_t tables_bytes(int groups) {
  const size_t g = static_cast<size_t>(groups);
  return round_up(g * sizeof(Shape3)) + 3 * round_up(g * sizeof(void*)) +
         round_up(g * sizeof(StrideA)) + round_up(g * sizeof(StrideB)) + round_up(g * sizeof(StrideD));
}

Tables carve(void* workspace, int groups) {
  auto* p = static_cast<char*>(workspace);
  const size_t g = static_cast<size_t>(groups);
  Tables t;
  t.shapes = reinterpret_cast<Shape3*>(p);
  p += round_up(g * sizeof(Shape3));
  t.ptr_a = reinterpret_cast<const Element**>(p);
  p += round_up(g * sizeof(void*));
  t.ptr_b = reinterpret_cast<const Element**>(p);
  p += round_up(g * sizeof(void*));
  t.ptr_d = reinterpret_cast<Element**>(p);
  p += round_up(g * sizeof(void*));
  t.stride_a = reinterpret_cast<StrideA*>(p);
  p += round_up(g * sizeof(StrideA));
  t.stride_b = reinterpret_cast<StrideB*>(p);
  p += round_up(g * sizeof(StrideB));
  t.stride_d = reinterpret_cast<StrideD*>(p);
  return t;
}

// Group g's rows [start, end) from the ends, clamped into [0, M] and non-decreasing; bad ends
// are flagged (error_flags.h).
__device__ void group_rows(const GroupedGemmArgs& args, int g, int64_t* start, int64_t* end) {
  const auto clamp = [&](int64_t v) { return v < 0 ? int64_t{0} : (v > args.m ? args.m : v); };
  const int64_t prev = g == 0 ? 0 : static_cast<int64_t>(args.group_ends[g - 1]);
  const int64_t here = static_cast<int64_t>(args.group_ends[g]);
  if (here < prev || here < 0 || here > args.m || (g == args.num_groups - 1 && here != args.m)) {
    raise_error(args.error_flag, kErrorBadGroupEnds);
  }
  *start = clamp(prev);
  *end = clamp(here) < *start ? *start : clamp(here);
}

__global__ void build_tables_kernel(GroupedGemmArgs args, Tables t) {
  const int g = blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= args.num_groups) return;
  int64_t start, end;
  group_rows(args, g, &start, &end);
  t.shapes[g] = Shape3{static_cast<int>(end - start), static_cast<int>(args.n), static_cast<int>(args.k)};
  t.ptr_a[g] = static_cast<const Element*>(args.a) + start * args.lda;
  t.ptr_b[g] = static_cast<const Element*>(args.b) + static_cast<int64_t>(g) * args.stride_bg;
  t.ptr_d[g] = static_cast<Element*>(args.d) + start * args.ldd;
  t.stride_a[g] = cute::make_stride(args.lda, cute::Int<1>{}, cute::Int<0>{});
  t.stride_b[g] = cute::make_stride(args.ldb, cute::Int<1>{}, cute::Int<0>{});
  t.stride_d[g] = cute::make_stride(args.ldd, cute::Int<1>{}, cute::Int<0>{});
}

typename Gemm::Arguments make_arguments(const GroupedGemmArgs& args, const Tables& t, int device,
                                        int sm_count) {
  cutlass::KernelHardwareInfo hw_info;
  hw_info.device_id = device;
  hw_info.sm_count = sm_count;
  typename Gemm::Arguments arguments{
      cutlass::gemm::GemmUniversalMode::kGrouped,
      {args.num_groups, t.shapes, nullptr},
      {t.ptr_a, t.stride_a, t.ptr_b, t.stride_b},
      {{}, nullptr, nullptr, t.ptr_d, t.stride_d},
      hw_info};
  arguments.epilogue.thread.alpha = 1.0f;
  arguments.epilogue.thread.beta = 0.0f;
  return arguments;
}

bool aligned(int64_t value) { return value % kAlignment == 0; }

// The SMs the persistent kernel spreads over (its workspace holds per-SM TMA descriptors).
int sm_count_of(int device) {
  const int count = cutlass::KernelHardwareInfo::query_device_multiprocessor_count(device);
  return count < kMaxSmCount ? count : kMaxSmCount;
}

}  // namespace

size_t grouped_gemm_bf16_workspace_size(int num_groups) {
  GroupedGemmArgs args{};
  args.num_groups = num_groups;
  const Tables none{};
  return tables_bytes(num_groups) +
         round_up(Gemm::get_workspace_size(make_arguments(args, none, 0, kMaxSmCount)));
}

cudaError_t grouped_gemm_bf16(const GroupedGemmArgs& args, void* workspace, size_t workspace_bytes,
                              int device, cudaStream_t stream) {
  if (args.num_groups <= 0 || args.n == 0) return cudaSuccess;
  if (!aligned(args.lda) || !aligned(args.ldb) || !aligned(args.ldd) || !aligned(args.n) ||
      !aligned(args.k) || !aligned(args.stride_bg) ||
      reinterpret_cast<uintptr_t>(args.a) % 16 || reinterpret_cast<uintptr_t>(args.b) % 16 ||
      reinterpret_cast<uintptr_t>(args.d) % 16 || reinterpret_cast<uintptr_t>(workspace) % 256 ||
      workspace_bytes < grouped_gemm_bf16_workspace_size(args.num_groups)) {
    return cudaErrorInvalidValue;
  }
  const Tables tables = carve(workspace, args.num_groups);
  build_tables_kernel<<<(args.num_groups + 127) / 128, 128, 0, stream>>>(args, tables);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;

  Gemm gemm;
  auto arguments = make_arguments(args, tables, device, sm_count_of(device));
  void* gemm_workspace = static_cast<char*>(workspace) + tables_bytes(args.num_groups);
  if (gemm.can_implement(arguments) != cutlass::Status::kSuccess) return cudaErrorInvalidValue;
  if (gemm.initialize(arguments, gemm_workspace, stream) != cutlass::Status::kSuccess) {
    return cudaErrorUnknown;
  }
  if (gemm.run(stream) != cutlass::Status::kSuccess) return cudaErrorLaunchFailure;
  return cudaGetLastError();
}

}  // namespace moe
}  // namespace star_elastic
