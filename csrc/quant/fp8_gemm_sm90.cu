// FP8 W8A8 GEMM with per-row / per-column scales and bias fused into the epilogue (see fp8_gemm.h).
//
// One CUTLASS configuration per output type: 128x128x128 tiles, a 1x1x1 cluster, the cooperative
// TMA warp-specialized mainloop without fast accumulation (partial sums are promoted to FP32
// periodically), and an epilogue visitor tree computing scale_a * (acc * scale_b) + bias.
#include "quant/fp8_gemm.h"

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/kernel/gemm_universal.hpp>

namespace star_elastic::quant {
namespace {

using namespace cute;

template <typename ElementD>
struct Fp8Gemm {
  using ElementA = cutlass::float_e4m3_t;
  using ElementB = cutlass::float_e4m3_t;
  using LayoutA = cutlass::layout::RowMajor;
  using LayoutB = cutlass::layout::ColumnMajor;  // (K, N) column-major == the (N, K) weight
  using LayoutD = cutlass::layout::RowMajor;
  using ElementAccumulator = float;
  static constexpr int kAlignmentAB = 16;
  static constexpr int kAlignmentD = 128 / cutlass::sizeof_bits<ElementD>::value;

  using TileShape = Shape<_128, _128, _128>;
  using ClusterShape = Shape<_1, _1, _1>;
  using KernelSchedule = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
  using EpilogueSchedule = cutlass::epilogue::TmaWarpSpecializedCooperative;

  static constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;
  using ScaleA = cutlass::epilogue::fusion::Sm90ColBroadcast<0, TileShape, float, float,
                                                             Stride<_1, _0, _0>>;
  using ScaleB = cutlass::epilogue::fusion::Sm90RowBroadcast<0, TileShape, float, float,
                                                             Stride<_0, _1, _0>>;
  using Bias = cutlass::epilogue::fusion::Sm90RowBroadcast<0, TileShape, ElementD, float,
                                                           Stride<_0, _1, _0>>;
  using Accumulator = cutlass::epilogue::fusion::Sm90AccFetch;
  using ScaleByB = cutlass::epilogue::fusion::Sm90EVT<
      cutlass::epilogue::fusion::Sm90Compute<cutlass::multiplies, float, float, kRound>, ScaleB,
      Accumulator>;
  using Epilogue = cutlass::epilogue::fusion::Sm90EVT<
      cutlass::epilogue::fusion::Sm90Compute<cutlass::multiply_add, ElementD, float, kRound>,
      ScaleA, ScaleByB, Bias>;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAccumulator, float, void, LayoutD,
      kAlignmentD, ElementD, LayoutD, kAlignmentD, EpilogueSchedule, Epilogue>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementA, LayoutA, kAlignmentAB,
      ElementB, LayoutB, kAlignmentAB, ElementAccumulator, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>,
                                                      CollectiveMainloop, CollectiveEpilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
};

int sm_count() {
  static int count = [] {
    int device = 0;
    int value = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&value, cudaDevAttrMultiProcessorCount, device);
    return value;
  }();
  return count;
}

template <typename ElementD>
cudaError_t run(const Fp8GemmParams& p, cudaStream_t stream) {
  using Config = Fp8Gemm<ElementD>;
  using Gemm = typename Config::Gemm;
  using StrideA = typename Gemm::GemmKernel::StrideA;
  using StrideB = typename Gemm::GemmKernel::StrideB;
  using StrideC = typename Gemm::GemmKernel::StrideC;
  using StrideD = typename Gemm::GemmKernel::StrideD;

  const int M = static_cast<int>(p.M);
  const int N = static_cast<int>(p.N);
  const int K = static_cast<int>(p.K);
  StrideA stride_a = make_stride(p.lda, Int<1>{}, int64_t(0));
  StrideB stride_b = make_stride(p.ldb, Int<1>{}, int64_t(0));
  StrideC stride_c = make_stride(p.ldd, Int<1>{}, int64_t(0));
  StrideD stride_d = make_stride(p.ldd, Int<1>{}, int64_t(0));

  typename Config::ScaleA::Arguments scale_a_args{p.scale_a};
  typename Config::ScaleB::Arguments scale_b_args{p.scale_b};
  typename Config::Bias::Arguments bias_args{static_cast<const ElementD*>(p.bias)};
  typename Config::ScaleByB::Arguments scale_by_b_args{scale_b_args, {}, {}};
  typename Config::Epilogue::Arguments epilogue_args{scale_a_args, scale_by_b_args, bias_args, {}};

  typename Gemm::Arguments args{
      cutlass::gemm::GemmUniversalMode::kGemm,
      {M, N, K, 1},
      {reinterpret_cast<const cutlass::float_e4m3_t*>(p.a), stride_a,
       reinterpret_cast<const cutlass::float_e4m3_t*>(p.b), stride_b},
      {epilogue_args, nullptr, stride_c, static_cast<ElementD*>(p.out), stride_d}};
  args.hw_info.sm_count = sm_count();

  Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return cudaErrorNotSupported;
  if (Gemm::get_workspace_size(args) > p.workspace_bytes) return cudaErrorMemoryAllocation;
  if (gemm.initialize(args, p.workspace, stream) != cutlass::Status::kSuccess)
    return cudaErrorLaunchFailure;
  if (gemm.run(stream) != cutlass::Status::kSuccess) return cudaErrorLaunchFailure;
  return cudaGetLastError();
}

}  // namespace

cudaError_t fp8_gemm_sm90(const Fp8GemmParams& p, cudaStream_t stream) {
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  if (p.K % 16 || p.lda % 16 || p.ldb % 16 || p.ldd % 8 || p.N % 8) return cudaErrorNotSupported;
  switch (p.out_type) {
    case FloatType::kFloat16:
      return run<cutlass::half_t>(p, stream);
    case FloatType::kBFloat16:
      return run<cutlass::bfloat16_t>(p, stream);
    default:
      return cudaErrorNotSupported;
  }
}

}  // namespace star_elastic::quant
