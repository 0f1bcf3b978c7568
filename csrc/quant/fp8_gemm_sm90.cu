// FP8 W8A8 GEMM with per-row / per-column scales and bias fused into the epilogue (see fp8_gemm.h).
//
// Two CUTLASS configurations per output type, both the cooperative TMA warp-specialized FP8
// fast-accumulate mainloop (partial sums stay in the tensor core's accumulators, as cuBLAS's and
// torch._scaled_mm's fast-accum) with the persistent tile scheduler, and an epilogue visitor tree
// computing scale_a * (acc * scale_b) + bias:
//   * large M (> 128 rows): 128x256x128 tiles in 2x1 clusters, so the two CTAs of a cluster share
//     each weight tile through a TMA multicast (B is loaded once per cluster);
//   * small M (decode, <= 128 rows): 128x128x128 tiles, 1x1 clusters (a second M tile would be
//     padding).
// Built with NDEBUG (setup.py, CMake Release): an assert in the mainloop makes ptxas serialize
// every wgmma (warning C7510), which tests/kernels/test_quant_static_contract.py guards against.
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

template <typename ElementD, typename TileShape_, typename ClusterShape_>
struct Fp8Gemm {
  using Output = ElementD;
  using ElementA = cutlass::float_e4m3_t;
  using ElementB = cutlass::float_e4m3_t;
  using LayoutA = cutlass::layout::RowMajor;
  using LayoutB = cutlass::layout::ColumnMajor;  // (K, N) column-major == the (N, K) weight
  using LayoutD = cutlass::layout::RowMajor;
  using ElementAccumulator = float;
  static constexpr int kAlignmentAB = 16;
  static constexpr int kAlignmentD = 128 / cutlass::sizeof_bits<ElementD>::value;

  using TileShape = TileShape_;
  using ClusterShape = ClusterShape_;
  using KernelSchedule = cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8FastAccum;
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
                                                      CollectiveMainloop, CollectiveEpilogue,
                                                      cutlass::gemm::PersistentScheduler>;
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
using LargeMGemm = Fp8Gemm<ElementD, Shape<_128, _256, _128>, Shape<_2, _1, _1>>;
template <typename ElementD>
using SmallMGemm = Fp8Gemm<ElementD, Shape<_128, _128, _128>, Shape<_1, _1, _1>>;
constexpr int64_t kSmallMRows = 128;

template <typename Config>
cudaError_t run(const Fp8GemmParams& p, cudaStream_t stream) {
  using ElementD = typename Config::Output;
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
      return p.M <= kSmallMRows ? run<SmallMGemm<cutlass::half_t>>(p, stream)
                                : run<LargeMGemm<cutlass::half_t>>(p, stream);
    case FloatType::kBFloat16:
      return p.M <= kSmallMRows ? run<SmallMGemm<cutlass::bfloat16_t>>(p, stream)
                                : run<LargeMGemm<cutlass::bfloat16_t>>(p, stream);
    default:
      return cudaErrorNotSupported;
  }
}

}  // namespace star_elastic::quant
