// The CUTLASS 3 pointer-array grouped GEMM kernels (sm_90a) behind grouped_gemm.h, as a template
// each grouped_gemm_sm90_<schedule>.cu instantiates for its schedule with the three epilogues.
// Included only by those files: CUTLASS headers cost minutes of nvcc, torch headers are never here.
//
// A device-side assert in the mainloop becomes a call that serializes its wgmma pipeline (ptxas
// C7510), so NDEBUG is forced before any CUTLASS header.
#pragma once

#ifndef NDEBUG
#define NDEBUG
#endif

#include <cstring>
#include <mutex>
#include <vector>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/operations.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/group_array_problem_shape.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/kernel_hardware_info.h"
#include "moe/grouped_gemm.h"

namespace star_elastic {
namespace moe {
namespace sm90 {

using namespace cute;

using ProblemShape = cutlass::gemm::GroupProblemShape<Shape<int, int, int>>;  // per group (M, N, K)
using Element = cutlass::bfloat16_t;
using Accumulator = float;
constexpr int kAlignment = 16 / sizeof(Element);
using ClusterShape = Shape<_1, _1, _1>;

// ---- the epilogue math of epilogue.h on CUTLASS fragments ----------------------------------------

template <class T>
struct SquaredRelu {
  CUTLASS_HOST_DEVICE T operator()(T const& x) const { return T(squared_relu(float(x))); }
};

template <class T, int N>
struct SquaredRelu<cutlass::Array<T, N>> {
  CUTLASS_HOST_DEVICE cutlass::Array<T, N> operator()(cutlass::Array<T, N> const& x) const {
    cutlass::Array<T, N> y;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) y[i] = T(squared_relu(float(x[i])));
    return y;
  }
};

template <class T>
struct SiluCTimesAccFn {
  CUTLASS_HOST_DEVICE T operator()(T const& c, T const& acc) const {
    return T(apply_epilogue(GemmEpilogue::kSiluCTimesAcc, float(acc), float(c)));
  }
};

template <class T, int N>
struct SiluCTimesAccFn<cutlass::Array<T, N>> {
  CUTLASS_HOST_DEVICE cutlass::Array<T, N> operator()(cutlass::Array<T, N> const& c,
                                                      cutlass::Array<T, N> const& acc) const {
    cutlass::Array<T, N> y;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) {
      y[i] = T(apply_epilogue(GemmEpilogue::kSiluCTimesAcc, float(acc[i]), float(c[i])));
    }
    return y;
  }
};

// D = silu(C) * acc as an epilogue visitor tree: C is read by the epilogue's TMA (per group).
using SiluCTimesAcc = cutlass::epilogue::fusion::Sm90EVT<
    cutlass::epilogue::fusion::Sm90Compute<SiluCTimesAccFn, Element, Accumulator,
                                           cutlass::FloatRoundStyle::round_to_nearest>,
    cutlass::epilogue::fusion::Sm90SrcFetch<Element>, cutlass::epilogue::fusion::Sm90AccFetch>;

template <GemmEpilogue Epilogue>
struct EpilogueOf {  // kIdentity: D = acc (alpha 1, beta 0, no C operand)
  using Fusion = cutlass::epilogue::fusion::LinearCombination<Element, Accumulator>;
  using ElementC = void;
};

template <>
struct EpilogueOf<GemmEpilogue::kSquaredRelu> {
  using Fusion = cutlass::epilogue::fusion::LinCombEltAct<SquaredRelu, Element, Accumulator>;
  using ElementC = void;
};

template <>
struct EpilogueOf<GemmEpilogue::kSiluCTimesAcc> {
  using Fusion = SiluCTimesAcc;
  using ElementC = Element;
};

// ---- one kernel configuration ---------------------------------------------------------------------

// A row-major (M, K); B column-major (K, N), i.e. (N, K) row-major; D row-major, or column-major
// for the swapped problem (the same memory as the logical row-major D, see gemm_tables.h).
template <class TileShape, class KernelSchedule, class EpilogueSchedule, bool SwapAB,
          GemmEpilogue Epilogue>
struct Config {
  using LayoutA = cutlass::layout::RowMajor;
  using LayoutB = cutlass::layout::ColumnMajor;
  using LayoutD = cute::conditional_t<SwapAB, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>;
  using ElementC = typename EpilogueOf<Epilogue>::ElementC;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, Accumulator, Accumulator, ElementC,
      LayoutD*, kAlignment, Element, LayoutD*, kAlignment, EpilogueSchedule,
      typename EpilogueOf<Epilogue>::Fusion>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, LayoutA*, kAlignment, Element,
      LayoutB*, kAlignment, Accumulator, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<
          static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;

  using Kernel =
      cutlass::gemm::kernel::GemmUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue>;

  using StrideA = typename Kernel::InternalStrideA;
  using StrideB = typename Kernel::InternalStrideB;
  using StrideC = typename Kernel::InternalStrideC;
  using StrideD = typename Kernel::InternalStrideD;
  using Shape3 = typename ProblemShape::UnderlyingProblemShape;

  // gemm_tables.h writes int32 (m, n, k) triples and one int64 row stride per operand
  static_assert(sizeof(Shape3) == 3 * sizeof(int32_t), "problem shape is not 3 x int32");
  static_assert(sizeof(StrideA) == sizeof(int64_t) && sizeof(StrideB) == sizeof(int64_t) &&
                    sizeof(StrideD) == sizeof(int64_t),
                "a stride is not one int64");
};

// The kernel entry point: CUTLASS's device_kernel under our name, so the static contract tests
// find the MoE GEMMs in the SASS (star_elastic::moe::sm90::grouped_gemm_kernel<...>).
template <class Kernel>
__global__ void __launch_bounds__(Kernel::MaxThreadsPerBlock, Kernel::MinBlocksPerMultiprocessor)
    grouped_gemm_kernel(CUTLASS_GRID_CONSTANT typename Kernel::Params const params) {
  extern __shared__ char smem[];
  Kernel op;
  op(params, smem);
}

template <class C>
typename C::Kernel::Arguments make_arguments(const GemmTables& t, int groups, int device,
                                             int sm_count) {
  typename C::Kernel::Arguments arguments{};
  arguments.mode = cutlass::gemm::GemmUniversalMode::kGrouped;
  arguments.problem_shape = {groups, reinterpret_cast<typename C::Shape3*>(t.shapes), nullptr};
  auto& mainloop = arguments.mainloop;
  mainloop.ptr_A = reinterpret_cast<decltype(mainloop.ptr_A)>(t.a);
  mainloop.dA = reinterpret_cast<decltype(mainloop.dA)>(t.lda);
  mainloop.ptr_B = reinterpret_cast<decltype(mainloop.ptr_B)>(t.b);
  mainloop.dB = reinterpret_cast<decltype(mainloop.dB)>(t.ldb);
  auto& epilogue = arguments.epilogue;
  epilogue.ptr_C = reinterpret_cast<decltype(epilogue.ptr_C)>(t.c);
  epilogue.dC = reinterpret_cast<decltype(epilogue.dC)>(t.ldc);
  epilogue.ptr_D = reinterpret_cast<decltype(epilogue.ptr_D)>(t.d);
  epilogue.dD = reinterpret_cast<decltype(epilogue.dD)>(t.ldd);
  if constexpr (cute::is_void_v<typename C::ElementC>) {  // the tree of silu(C)*acc takes none
    epilogue.thread.alpha = 1.0f;
    epilogue.thread.beta = 0.0f;
  }
  arguments.hw_info.device_id = device;
  arguments.hw_info.sm_count = sm_count;
  return arguments;
}

template <class C>
size_t workspace_bytes(int groups) {
  const GemmTables none{};
  return C::Kernel::get_workspace_size(make_arguments<C>(none, groups, 0, kMaxSmCount));
}

inline int sm_count_of(int device) {
  static std::mutex mutex;
  static std::vector<int> counts;
  const std::lock_guard<std::mutex> lock(mutex);
  if (static_cast<int>(counts.size()) <= device) counts.resize(device + 1, 0);
  if (counts[device] == 0) {
    const int count = cutlass::KernelHardwareInfo::query_device_multiprocessor_count(device);
    counts[device] = count < kMaxSmCount ? count : kMaxSmCount;
  }
  return counts[device];
}

// Launches kernel C on the tables. The Params (host-built TMA descriptor templates, scheduler
// setup) depend only on the table and workspace addresses, the group count and the device, so
// they are built once per such key and reused: a steady-state call is one launch.
template <class C>
cudaError_t run(const GemmTables& t, int groups, void* workspace, size_t bytes, int device,
                cudaStream_t stream) {
  using Kernel = typename C::Kernel;
  using Params = typename Kernel::Params;
  struct Entry {
    const void* tables;
    const void* workspace;
    int groups, device;
    Params params;
  };
  static std::mutex mutex;
  static std::vector<Entry> cache;  // newest last; a few entries (layers share buffers)
  static std::vector<bool> smem_set;
  constexpr int kCacheEntries = 64;
  constexpr int smem = Kernel::SharedStorageSize;
  Params params;
  {
    const std::lock_guard<std::mutex> lock(mutex);
    bool found = false;
    for (const Entry& e : cache) {
      if (e.tables == t.shapes && e.workspace == workspace && e.groups == groups &&
          e.device == device) {
        params = e.params;
        found = true;
        break;
      }
    }
    if (!found) {
      const auto arguments = make_arguments<C>(t, groups, device, sm_count_of(device));
      if (!Kernel::can_implement(arguments)) return cudaErrorInvalidValue;
      if (Kernel::get_workspace_size(arguments) > bytes) return cudaErrorInvalidValue;
      if (Kernel::initialize_workspace(arguments, workspace, stream) != cutlass::Status::kSuccess) {
        return cudaErrorUnknown;
      }
      params = Kernel::to_underlying_arguments(arguments, workspace);
      if (static_cast<int>(cache.size()) >= kCacheEntries) cache.erase(cache.begin());
      cache.push_back(Entry{t.shapes, workspace, groups, device, params});
    }
    if (static_cast<int>(smem_set.size()) <= device) smem_set.resize(device + 1, false);
    if (!smem_set[device] && smem >= (48 << 10)) {
      const cudaError_t err = cudaFuncSetAttribute(
          grouped_gemm_kernel<Kernel>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
      if (err != cudaSuccess) return err;
      smem_set[device] = true;
    }
  }
  const dim3 grid = Kernel::get_grid_shape(params);
  const dim3 block = Kernel::get_block_shape();
  grouped_gemm_kernel<Kernel><<<grid, block, smem, stream>>>(params);
  return cudaGetLastError();
}

// The three epilogues of one schedule.
template <class TileShape, class KernelSchedule, class EpilogueSchedule, bool SwapAB>
struct Schedule {
  template <GemmEpilogue E>
  using Of = Config<TileShape, KernelSchedule, EpilogueSchedule, SwapAB, E>;

  static cudaError_t launch(const GemmTables& t, int groups, GemmEpilogue epilogue,
                            void* workspace, size_t bytes, int device, cudaStream_t stream) {
    switch (epilogue) {
      case GemmEpilogue::kIdentity:
        return run<Of<GemmEpilogue::kIdentity>>(t, groups, workspace, bytes, device, stream);
      case GemmEpilogue::kSquaredRelu:
        return run<Of<GemmEpilogue::kSquaredRelu>>(t, groups, workspace, bytes, device, stream);
      case GemmEpilogue::kSiluCTimesAcc:
        return run<Of<GemmEpilogue::kSiluCTimesAcc>>(t, groups, workspace, bytes, device, stream);
    }
    return cudaErrorInvalidValue;
  }

  static size_t workspace(int groups) {
    size_t bytes = workspace_bytes<Of<GemmEpilogue::kIdentity>>(groups);
    const size_t relu = workspace_bytes<Of<GemmEpilogue::kSquaredRelu>>(groups);
    const size_t silu = workspace_bytes<Of<GemmEpilogue::kSiluCTimesAcc>>(groups);
    bytes = relu > bytes ? relu : bytes;
    return silu > bytes ? silu : bytes;
  }

  // The layouts gemm_tables.h writes, checked on values (the static_asserts check sizes).
  static bool layouts_match() {
    using C = Of<GemmEpilogue::kSiluCTimesAcc>;
    const typename C::Shape3 shape{3, 5, 7};
    int32_t ints[3];
    memcpy(ints, &shape, sizeof(ints));
    const typename C::StrideA sa = cute::make_stride(int64_t{41}, cute::Int<1>{}, cute::Int<0>{});
    typename C::StrideD sd{};
    cute::get<SwapAB ? 1 : 0>(sd) = 43;
    int64_t a, d;
    memcpy(&a, &sa, sizeof(a));
    memcpy(&d, &sd, sizeof(d));
    return ints[0] == 3 && ints[1] == 5 && ints[2] == 7 && a == 41 && d == 43;
  }
};

}  // namespace sm90
}  // namespace moe
}  // namespace star_elastic
