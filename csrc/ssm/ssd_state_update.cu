// Mamba-2 decode step (see ssd_state_update.h for the contract), built for the HBM roofline.
//
// The step reads and writes every active state element once and does ~4 flops per element, so
// its speed is the cache's bytes over the bandwidth. The kernel therefore
//  * gives every lane `vector` contiguous state elements of a row (16 bytes: 4 fp32 or 8 fp16/bf16)
//    for kRows rows, and issues all of the lane's 16-byte loads before the first store (the
//    pointers are __restrict__, so nothing orders a load after a store): 32 state values per lane
//    in flight, ~4 KB per block;
//  * is specialised on unit-stride, 16-byte-aligned state rows (plan.unit_stride); other layouts
//    (a transposed or misaligned cache view) take the element-wise instantiation;
//  * reads B and C of the block's group once per block (to shared memory, fp32); a block covers
//    (batch row, group, up to heads_per_block heads of the group), the whole group once there are
//    enough rows to fill the GPU without splitting it;
//  * skips padding rows (slot < 0) and slots outside the cache inside the kernel (the latter
//    recorded in the device error word), so the caller never reads slots on the host.
// A row of the state is shared by lanes_per_row lanes (a power of two, so the row's C-contraction
// is a shuffle butterfly inside a warp); a block's 128 threads cover 128 / lanes_per_row rows of
// kRows state rows each per pass.
//
// The per-thread code (block_work, skipped_block_thread, load_bc_thread, head_step, lane_tile,
// write_outputs) is __host__ __device__: ssd_state_update_host runs it over the grid on the CPU,
// the butterfly in the device's order, for the tests.
#include "ssm/ssd_state_update.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstring>
#include <type_traits>
#include <vector>

#include "ssm/float_access.cuh"

namespace star_elastic::ssm {
namespace {

constexpr int kThreads = 128;
constexpr int64_t kTargetBlocks = 1024;  // split a group's heads over blocks only below this

using detail::ceil_div;
using detail::from_float;
using detail::load_float;
using detail::load_index;
using detail::raise_error;
using detail::silu;
using detail::to_float;

#ifdef __CUDA_ARCH__
#define SSU_UNROLL _Pragma("unroll")
#else
#define SSU_UNROLL
#endif

template <typename StateT, bool kUnitStride>
struct LaneShape {
  static constexpr int kVector = 16 / static_cast<int>(sizeof(StateT));  // elements per 16 bytes
  // state rows per lane and pass: 32 values in flight (16 on the element-wise path, whose
  // per-element addresses cost registers)
  static constexpr int kRows = (kUnitStride ? 32 : 16) / kVector;
};

// 16 bytes of state as four 32-bit words (a uint4 load/store is one LDG.E.128/STG.E.128); element v
// of a 16-bit state is the low (v even) or high half of word v / 2.
__host__ __device__ __forceinline__ uint32_t word_of(const uint4& r, int i) {
  return i == 0 ? r.x : i == 1 ? r.y : i == 2 ? r.z : r.w;
}
template <typename T>
__host__ __device__ __forceinline__ float element_of(const uint4& r, int v);
template <>
__host__ __device__ __forceinline__ float element_of<float>(const uint4& r, int v) {
  const uint32_t bits = word_of(r, v);
#ifdef __CUDA_ARCH__
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
#endif
}
template <>
__host__ __device__ __forceinline__ float element_of<__half>(const uint4& r, int v) {
  __half_raw raw;
  raw.x = static_cast<unsigned short>(word_of(r, v / 2) >> (16 * (v % 2)));
  return __half2float(__half(raw));
}
template <>
__host__ __device__ __forceinline__ float element_of<__nv_bfloat16>(const uint4& r, int v) {
  __nv_bfloat16_raw raw;
  raw.x = static_cast<unsigned short>(word_of(r, v / 2) >> (16 * (v % 2)));
  return __bfloat162float(__nv_bfloat16(raw));
}

// 16 bytes of state from `vector` fp32 values, rounded to the state's dtype.
__host__ __device__ __forceinline__ uint32_t float_bits(float value) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(value);
#else
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
#endif
}

template <typename T>
__host__ __device__ __forceinline__ uint32_t half_bits(float value) {
  if constexpr (std::is_same_v<T, __half>) {
    const __half_raw raw = __float2half_rn(value);
    return raw.x;
  } else {
    const __nv_bfloat16_raw raw = __float2bfloat16_rn(value);
    return raw.x;
  }
}

template <typename T>
__host__ __device__ __forceinline__ uint4 pack16(const float* u) {
  if constexpr (std::is_same_v<T, float>) {
    return make_uint4(float_bits(u[0]), float_bits(u[1]), float_bits(u[2]), float_bits(u[3]));
  } else {
    const auto pair = [&](int i) { return half_bits<T>(u[i]) | (half_bits<T>(u[i + 1]) << 16); };
    return make_uint4(pair(0), pair(2), pair(4), pair(6));
  }
}

// One 16-byte global store. (nvcc splits a plain uint4 store into this kernel's state rows into four
// STG.E; the explicit st.global.v4 keeps it one STG.E.128.)
__host__ __device__ __forceinline__ void store16(void* dst, const uint4& v) {
#ifdef __CUDA_ARCH__
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(dst), "r"(v.x), "r"(v.y), "r"(v.z),
               "r"(v.w)
               : "memory");
#else
  std::memcpy(dst, &v, sizeof(v));
#endif
}

struct BlockWork {
  int64_t row, group, head_begin, head_end, slot;
  bool used;  // the slot is in the cache
};

__host__ __device__ __forceinline__ BlockWork block_work(const StateUpdateParams& p,
                                                         const StateUpdatePlan& plan,
                                                         int64_t block) {
  BlockWork w;
  const int64_t groups = p.active_heads / p.heads_per_group;
  w.row = block / (groups * plan.head_blocks);
  const int64_t rest = block % (groups * plan.head_blocks);
  w.group = rest / plan.head_blocks;
  w.head_begin = w.group * p.heads_per_group + (rest % plan.head_blocks) * plan.heads_per_block;
  const int64_t group_end = (w.group + 1) * p.heads_per_group;
  w.head_end = w.head_begin + plan.heads_per_block < group_end ? w.head_begin + plan.heads_per_block
                                                               : group_end;
  w.slot = p.slots != nullptr ? load_index(p.slots, p.slots_int64, w.row) : w.row;
  w.used = w.slot >= 0 && w.slot < p.num_slots;
  return w;
}

// A block whose row has no slot in the cache: zero outputs, no state touched.
template <typename ActT>
__host__ __device__ __forceinline__ void skipped_block_thread(const StateUpdateParams& p,
                                                              const BlockWork& w, int thread) {
  if (thread == 0 && w.slot >= p.num_slots) raise_error(p.errors, kErrorSlotOutOfRange);
  for (int64_t h = w.head_begin; h < w.head_end; ++h)
    for (int64_t c = thread; c < p.head_dim; c += kThreads)
      static_cast<ActT*>(p.y)[w.row * p.y_stride_b + h * p.y_stride_h + c] = from_float<ActT>(0.0f);
}

// B then C of the block's group, fp32, into bc[0, 2N).
template <typename ActT>
__host__ __device__ __forceinline__ void load_bc_thread(const StateUpdateParams& p,
                                                        const BlockWork& w, int thread,
                                                        float* bc) {
  const ActT* __restrict__ B =
      static_cast<const ActT*>(p.B) + w.row * p.B_stride_b + w.group * p.B_stride_g;
  const ActT* __restrict__ C =
      static_cast<const ActT*>(p.C) + w.row * p.C_stride_b + w.group * p.C_stride_g;
  for (int64_t n = thread; n < p.state_size; n += kThreads) {
    bc[n] = to_float(B[n]);
    bc[p.state_size + n] = to_float(C[n]);
  }
}

struct HeadStep {
  int64_t head, parent_head;
  float dt, decay;
};

__host__ __device__ __forceinline__ HeadStep head_step(const StateUpdateParams& p,
                                                       const BlockWork& w, int64_t head) {
  HeadStep s;
  s.head = head;
  s.parent_head = w.group * p.parent_heads_per_group + head % p.heads_per_group;
  float dt = load_float(p.dt, p.dt_type, w.row * p.dt_stride_b + head * p.dt_stride_h);
  if (p.dt_bias != nullptr)
    dt += load_float(p.dt_bias, p.dt_bias_type, s.parent_head * p.dt_bias_stride);
  if (p.dt_softplus) dt = dt <= 20.0f ? log1pf(expf(dt)) : dt;  // torch's threshold
  s.dt = fminf(fmaxf(dt, p.dt_min), p.dt_max);
  s.decay = expf(s.dt * load_float(p.A, p.A_type, s.parent_head * p.A_stride));
  return s;
}

// One lane's share of kRows state rows c_first.. of one head: every 16-byte (or element) load of
// a segment first, then the updates, stores and the lane's partial C-contraction of each row.
template <typename StateT, typename ActT, bool kUnitStride>
__host__ __device__ __forceinline__ void lane_tile(
    const StateUpdateParams& p, const StateUpdatePlan& plan, const BlockWork& w,
    const HeadStep& hs, int64_t c_first, int lane,
    const float* __restrict__ bc, float (&partial)[LaneShape<StateT, kUnitStride>::kRows]) {
  constexpr int V = LaneShape<StateT, kUnitStride>::kVector;
  constexpr int R = LaneShape<StateT, kUnitStride>::kRows;
  const ActT* __restrict__ x =
      static_cast<const ActT*>(p.x) + w.row * p.x_stride_b + hs.head * p.x_stride_h;
  StateT* __restrict__ state = static_cast<StateT*>(p.state) + w.slot * p.state_stride[0] +
                               hs.parent_head * p.state_stride[1];
  const int64_t N = p.state_size;
  float dtx[R];
SSU_UNROLL
  for (int j = 0; j < R; ++j) {
    const int64_t c = c_first + j;
    dtx[j] = c < p.head_dim ? hs.dt * to_float(x[c]) : 0.0f;
    partial[j] = 0.0f;
  }
  const int64_t live_rows = p.head_dim - c_first;  // rows j < live_rows exist
  const int64_t row_stride = p.state_stride[2], element_stride = kUnitStride ? 1 : p.state_stride[3];
  for (int64_t s = 0; s < plan.segments; ++s) {
    const int64_t n0 = (lane + s * plan.lanes_per_row) * V;
    if (n0 >= N) break;
    float b[V], c_weights[V];  // B and C at this segment, the same for all its rows
SSU_UNROLL
    for (int v = 0; v < V; ++v) {
      const int64_t n = n0 + v < N ? n0 + v : N - 1;  // (lanes past N add 0 below)
      b[v] = bc[n];
      c_weights[v] = bc[N + n];
    }
    StateT* const segment = state + c_first * row_stride + n0 * element_stride;
    float values[R][V];
SSU_UNROLL
    for (int j = 0; j < R; ++j) {
      if (j < live_rows) {
        const StateT* cell = segment + j * row_stride;
        if constexpr (kUnitStride) {
          const uint4 loaded = *reinterpret_cast<const uint4*>(cell);
SSU_UNROLL
          for (int v = 0; v < V; ++v) values[j][v] = element_of<StateT>(loaded, v);
        } else {
SSU_UNROLL
          for (int v = 0; v < V; ++v)
            values[j][v] = n0 + v < N ? to_float(cell[v * element_stride]) : 0.0f;
        }
      }
    }
SSU_UNROLL
    for (int j = 0; j < R; ++j) {
      if (j < live_rows) {
        float updated[V];
SSU_UNROLL
        for (int v = 0; v < V; ++v) {
          updated[v] = hs.decay * values[j][v] + dtx[j] * b[v];
          if (n0 + v < N) partial[j] += updated[v] * c_weights[v];
        }
        StateT* cell = segment + j * row_stride;
        if constexpr (kUnitStride) {
          store16(cell, pack16<StateT>(updated));
        } else {
SSU_UNROLL
          for (int v = 0; v < V; ++v)
            if (n0 + v < N) cell[v * element_stride] = from_float<StateT>(updated[v]);
        }
      }
    }
  }
}

// y of kRows rows from their reduced C-contractions: + D x, * silu(z).
template <typename ActT, int R>
__host__ __device__ __forceinline__ void write_outputs(const StateUpdateParams& p,
                                                       const BlockWork& w, const HeadStep& hs,
                                                       int64_t c_first, const float (&sums)[R]) {
  const ActT* x = static_cast<const ActT*>(p.x) + w.row * p.x_stride_b + hs.head * p.x_stride_h;
  ActT* y = static_cast<ActT*>(p.y) + w.row * p.y_stride_b + hs.head * p.y_stride_h;
  for (int j = 0; j < R; ++j) {
    const int64_t c = c_first + j;
    if (c >= p.head_dim) return;
    float out = sums[j];
    if (p.D != nullptr)
      out += load_float(p.D, p.D_type, hs.parent_head * p.D_stride_h + c * p.D_stride_p) *
             to_float(x[c]);
    if (p.z != nullptr)
      out *= silu(to_float(static_cast<const ActT*>(p.z)[w.row * p.z_stride_b +
                                                         hs.head * p.z_stride_h + c]));
    y[c] = from_float<ActT>(out);
  }
}

template <typename StateT, typename ActT, bool kUnitStride>
__global__ void __launch_bounds__(kThreads, 3)
    state_update_kernel(const StateUpdateParams p, const StateUpdatePlan plan) {
  constexpr int R = LaneShape<StateT, kUnitStride>::kRows;
  extern __shared__ float bc[];
  const BlockWork w = block_work(p, plan, blockIdx.x);
  if (!w.used) {  // the whole block leaves: no barrier is left waiting
    skipped_block_thread<ActT>(p, w, threadIdx.x);
    return;
  }
  load_bc_thread<ActT>(p, w, threadIdx.x, bc);
  __syncthreads();
  const int lanes = plan.lanes_per_row;
  const int lane = threadIdx.x % lanes;
  const int64_t rows_per_pass = (kThreads / lanes) * R;
  const int64_t row_offset = (threadIdx.x / lanes) * R;
  for (int64_t h = w.head_begin; h < w.head_end; ++h) {
    const HeadStep hs = head_step(p, w, h);
    for (int64_t c0 = 0; c0 < p.head_dim; c0 += rows_per_pass) {
      float partial[R];
      lane_tile<StateT, ActT, kUnitStride>(p, plan, w, hs, c0 + row_offset, lane, bc, partial);
      for (int offset = lanes / 2; offset > 0; offset /= 2)
SSU_UNROLL
        for (int j = 0; j < R; ++j) partial[j] += __shfl_xor_sync(0xffffffffu, partial[j], offset);
      if (lane == 0) write_outputs<ActT, R>(p, w, hs, c0 + row_offset, partial);
    }
  }
}

// The host schedule: block by block; within a block, the lanes of a row group in turn, then the
// butterfly over their partial sums (the device's shuffle order), then lane 0's outputs.
template <typename StateT, typename ActT, bool kUnitStride>
void run_host(const StateUpdateParams& p, const StateUpdatePlan& plan) {
  constexpr int R = LaneShape<StateT, kUnitStride>::kRows;
  std::vector<float> bc(2 * static_cast<size_t>(p.state_size) + 1);
  const int lanes = plan.lanes_per_row;
  const int64_t rows_per_pass = (kThreads / lanes) * R;
  std::vector<float> partial(static_cast<size_t>(lanes) * R), next(partial.size());
  for (int64_t block = 0; block < plan.blocks; ++block) {
    const BlockWork w = block_work(p, plan, block);
    if (!w.used) {
      for (int t = 0; t < kThreads; ++t) skipped_block_thread<ActT>(p, w, t);
      continue;
    }
    for (int t = 0; t < kThreads; ++t) load_bc_thread<ActT>(p, w, t, bc.data());
    for (int64_t h = w.head_begin; h < w.head_end; ++h) {
      const HeadStep hs = head_step(p, w, h);
      for (int64_t c0 = 0; c0 < p.head_dim; c0 += rows_per_pass) {
        for (int group = 0; group < kThreads / lanes; ++group) {
          const int64_t c_first = c0 + group * R;
          for (int lane = 0; lane < lanes; ++lane) {
            float lane_partial[R];
            lane_tile<StateT, ActT, kUnitStride>(p, plan, w, hs, c_first, lane, bc.data(),
                                                 lane_partial);
            for (int j = 0; j < R; ++j) partial[lane * R + j] = lane_partial[j];
          }
          for (int offset = lanes / 2; offset > 0; offset /= 2) {
            for (int lane = 0; lane < lanes; ++lane)
              for (int j = 0; j < R; ++j)
                next[lane * R + j] = partial[lane * R + j] + partial[(lane ^ offset) * R + j];
            partial.swap(next);
          }
          float sums[R];
          for (int j = 0; j < R; ++j) sums[j] = partial[j];
          write_outputs<ActT, R>(p, w, hs, c_first, sums);
        }
      }
    }
  }
}

// fn(StateT{}, ActT{}, std::bool_constant<unit>{}) for the runtime dtypes and the plan.
template <typename Fn>
void dispatch(const StateUpdateParams& p, const StateUpdatePlan& plan, Fn&& fn) {
  auto with_act = [&](auto state_tag) {
    auto with_layout = [&](auto act_tag) {
      if (plan.unit_stride)
        fn(state_tag, act_tag, std::true_type{});
      else
        fn(state_tag, act_tag, std::false_type{});
    };
    switch (p.act_type) {
      case DType::kFloat16:
        return with_layout(__half{});
      case DType::kBFloat16:
        return with_layout(__nv_bfloat16{});
      default:
        return with_layout(float{});
    }
  };
  switch (p.state_type) {
    case DType::kFloat16:
      return with_act(__half{});
    case DType::kBFloat16:
      return with_act(__nv_bfloat16{});
    default:
      return with_act(float{});
  }
}

bool nothing_to_do(const StateUpdateParams& p) {
  return p.batch == 0 || p.active_heads == 0 || p.head_dim == 0;
}

}  // namespace

StateUpdatePlan plan_state_update(const StateUpdateParams& p) {
  StateUpdatePlan plan{};
  plan.vector = p.state_type == DType::kFloat32 ? 4 : 8;
  const auto multiple = [&](int64_t v) { return v % plan.vector == 0; };
  plan.unit_stride = p.state_stride[3] == 1 && multiple(p.state_size) &&
                     multiple(p.state_stride[2]) && multiple(p.state_stride[1]) &&
                     multiple(p.state_stride[0]) &&
                     reinterpret_cast<uintptr_t>(p.state) % 16 == 0;
  const int64_t segments = ceil_div(p.state_size, plan.vector);
  plan.lanes_per_row = 1;
  while (plan.lanes_per_row < 32 && plan.lanes_per_row < segments) plan.lanes_per_row *= 2;
  plan.segments = ceil_div(segments, plan.lanes_per_row);
  const int64_t per_group = p.heads_per_group > 0 ? p.heads_per_group : 1;
  int64_t heads = p.batch * p.active_heads / kTargetBlocks;
  plan.heads_per_block = heads < 1 ? 1 : heads > per_group ? per_group : heads;
  plan.head_blocks = ceil_div(per_group, plan.heads_per_block);
  plan.blocks = p.batch * (p.active_heads / per_group) * plan.head_blocks;
  return plan;
}

cudaError_t ssd_state_update(const StateUpdateParams& p, cudaStream_t stream) {
  if (nothing_to_do(p)) return cudaSuccess;
  const StateUpdatePlan plan = plan_state_update(p);
  if (plan.blocks > 0x7fffffffLL || p.state_size > 4096) return cudaErrorInvalidConfiguration;
  const size_t shared_bytes = 2 * static_cast<size_t>(p.state_size) * sizeof(float);
  dispatch(p, plan, [&](auto state_tag, auto act_tag, auto unit) {
    state_update_kernel<decltype(state_tag), decltype(act_tag), decltype(unit)::value>
        <<<static_cast<unsigned>(plan.blocks), kThreads, shared_bytes, stream>>>(p, plan);
  });
  return cudaGetLastError();
}

void ssd_state_update_host(const StateUpdateParams& p) {
  if (nothing_to_do(p)) return;
  const StateUpdatePlan plan = plan_state_update(p);
  dispatch(p, plan, [&](auto state_tag, auto act_tag, auto unit) {
    run_host<decltype(state_tag), decltype(act_tag), decltype(unit)::value>(p, plan);
  });
}

}  // namespace star_elastic::ssm
