// Causal depthwise conv1d, prefill and decode update (see causal_conv1d.h for the contract).
//
// Prefill: 128-thread blocks over channels (x has a unit channel stride, so a warp's loads
// coalesce); grid (token blocks, channel blocks, batch rows). Each thread walks kTokensPerThread
// consecutive tokens of one channel with the w inputs in a register window, so every input is
// loaded once per thread; at a packed-sequence boundary the window restarts from the next
// sequence's history. Update: one thread per (row, active channel), 1-D grid over
// (row, channel block).
//
// The work of a thread is a __host__ __device__ function of its grid coordinates (conv_thread,
// update_thread). The CUDA kernels call it once per thread; the host launchers call it for every
// (block, thread) of the same grid in turn, so the CPU impl of the private ops tests this index
// math, not the launch.
#include "ssm/causal_conv1d.h"

#include <type_traits>

#include "ssm/float_access.cuh"

namespace star_elastic::ssm {
namespace {

using detail::ceil_div;
using detail::from_float;
using detail::load_float;
using detail::load_index;
using detail::raise_error;
using detail::silu;
using detail::store_float;
using detail::to_float;

constexpr int kThreads = 128;  // channels per block (both ops)
constexpr int64_t kTokensPerThread = 32;  // prefill tokens per thread
constexpr int64_t kMaxGridZ = 65535;

__host__ __device__ __forceinline__ int64_t parent_channel(const ConvChannelMap& m, int64_t ch) {
  if (ch >= m.x_channels) return m.parent_x_channels + ch - m.x_channels;
  const int64_t head = ch / m.head_dim;
  const int64_t parent_head =
      (head / m.heads_per_group) * m.parent_heads_per_group + head % m.heads_per_group;
  return parent_head * m.parent_head_dim + ch % m.head_dim;
}

// The input at token src of channel ch (its parent channel is not needed: x is compact) for a
// sequence starting at token `start`: x inside the sequence, else the sequence's history.
template <typename ActT, int W>
__host__ __device__ __forceinline__ float conv_input(const Conv1dParams& p, const ActT* x_row,
                                                     int64_t ch, int64_t seq, int64_t start,
                                                     int64_t src) {
  if (src >= start) return to_float(x_row[src * p.x_stride_l]);
  if (p.initial_states == nullptr) return 0.0f;
  const float h = load_float(p.initial_states, p.init_type,
                             seq * p.init_stride_s + ch * p.init_stride_c +
                                 ((W - 1) + src - start) * p.init_stride_k);
  return to_float(from_float<ActT>(h));  // the reference concatenates the history in x's dtype
}

struct ConvGrid {
  int64_t token_blocks, channel_blocks, rows;
};

__host__ __device__ __forceinline__ ConvGrid conv_grid(const Conv1dParams& p) {
  return {ceil_div(p.seqlen, kTokensPerThread), ceil_div(p.channels, kThreads),
          p.batch < kMaxGridZ ? p.batch : kMaxGridZ};
}

// One prefill thread: channel channel_block*kThreads + thread of batch row `row`, tokens
// [token_block*kTokensPerThread, +kTokensPerThread).
template <typename ActT, int W>
__host__ __device__ void conv_thread(const Conv1dParams& p, int64_t row, int64_t token_block,
                                     int64_t channel_block, int thread) {
  const int64_t ch = channel_block * kThreads + thread;
  const int64_t t0 = token_block * kTokensPerThread;
  if (ch >= p.channels || t0 >= p.seqlen) return;
  const int64_t t1 = t0 + kTokensPerThread < p.seqlen ? t0 + kTokensPerThread : p.seqlen;
  const int64_t pc = parent_channel(p.map, ch);
  float w[W];
  for (int i = 0; i < W; ++i)
    w[i] = load_float(p.weight, p.weight_type, pc * p.weight_stride_c + i * p.weight_stride_k);
  const float bias = p.bias != nullptr ? load_float(p.bias, p.bias_type, pc * p.bias_stride) : 0.0f;
  const ActT* x_row = static_cast<const ActT*>(p.x) + row * p.x_stride_b + ch;
  ActT* y_row = static_cast<ActT*>(p.y) + row * p.y_stride_b + ch;

  // The sequence of token t0: row itself, or (varlen, b == 1) the last s with cu[s] <= t0, which
  // skips empty sequences (cu[S] = l > t0, so s < S).
  int64_t seq = row, start = 0, end = p.seqlen;
  if (p.cu_seqlens != nullptr) {
    int64_t lo = 0, hi = p.num_seqs - 1;
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (load_index(p.cu_seqlens, p.cu_seqlens_int64, mid) <= t0)
        lo = mid;
      else
        hi = mid - 1;
    }
    seq = lo;
    start = load_index(p.cu_seqlens, p.cu_seqlens_int64, seq);
    end = load_index(p.cu_seqlens, p.cu_seqlens_int64, seq + 1);
  }

  // window[i] = input at t - (W-1) + i; window[1..W-1] hold the inputs before t0.
  float window[W];
  for (int i = 1; i < W; ++i)
    window[i] = conv_input<ActT, W>(p, x_row, ch, seq, start, t0 - W + i);
  for (int64_t t = t0; t < t1; ++t) {
    if (t >= end) {  // next non-empty sequence: restart the window from its history
      while (t >= end) {
        ++seq;
        start = end;
        end = load_index(p.cu_seqlens, p.cu_seqlens_int64, seq + 1);
      }
      for (int i = 1; i < W; ++i)
        window[i] = conv_input<ActT, W>(p, x_row, ch, seq, start, t - W + i);
    }
    for (int i = 0; i < W - 1; ++i) window[i] = window[i + 1];
    window[W - 1] = to_float(x_row[t * p.x_stride_l]);
    float acc = bias;
    for (int i = 0; i < W; ++i) acc += w[i] * window[i];
    if (p.silu) acc = silu(acc);
    y_row[t * p.y_stride_l] = from_float<ActT>(acc);
  }
}

// No __launch_bounds__: with it ptxas squeezes the W=2/4 kernels to 32-40 registers and spills.
template <typename ActT, int W>
__global__ void conv_kernel(const Conv1dParams p) {
  for (int64_t row = blockIdx.z; row < p.batch; row += gridDim.z)
    conv_thread<ActT, W>(p, row, blockIdx.x, blockIdx.y, threadIdx.x);
}

// One update thread: block = row * channel_blocks + channel block.
template <typename ActT, int W>
__host__ __device__ void update_thread(const Conv1dUpdateParams& p, int64_t block, int thread) {
  const int64_t channel_blocks = ceil_div(p.channels, kThreads);
  const int64_t row = block / channel_blocks;
  const int64_t ch = (block % channel_blocks) * kThreads + thread;
  if (row >= p.batch || ch >= p.channels) return;
  const int64_t slot = p.slots != nullptr ? load_index(p.slots, p.slots_int64, row) : row;
  if (slot < 0 || slot >= p.num_slots) {  // padding, or outside the cache: no state touched
    if (slot >= p.num_slots && ch == 0) raise_error(p.errors, kErrorSlotOutOfRange);
    static_cast<ActT*>(p.y)[row * p.y_stride_b + ch] = from_float<ActT>(0.0f);
    return;
  }
  const int64_t pc = parent_channel(p.map, ch);
  const int64_t cell = slot * p.state_stride_s + pc * p.state_stride_c;
  const float x = to_float(static_cast<const ActT*>(p.x)[row * p.x_stride_b + ch]);
  float acc = load_float(p.weight, p.weight_type,
                         pc * p.weight_stride_c + (W - 1) * p.weight_stride_k) * x;
  if (p.bias != nullptr) acc += load_float(p.bias, p.bias_type, pc * p.bias_stride);
  for (int i = 0; i < W - 1; ++i) {
    const float old = load_float(p.state, p.state_type, cell + i * p.state_stride_k);
    acc += old * load_float(p.weight, p.weight_type, pc * p.weight_stride_c + i * p.weight_stride_k);
    // exact: the old value came from the cache's dtype
    if (i > 0) store_float(p.state, p.state_type, cell + (i - 1) * p.state_stride_k, old);
  }
  store_float(p.state, p.state_type, cell + (W - 2) * p.state_stride_k, x);
  if (p.silu) acc = silu(acc);
  static_cast<ActT*>(p.y)[row * p.y_stride_b + ch] = from_float<ActT>(acc);
}

template <typename ActT, int W>
__global__ void __launch_bounds__(kThreads) update_kernel(const Conv1dUpdateParams p) {
  update_thread<ActT, W>(p, blockIdx.x, threadIdx.x);
}

// Calls fn(ActT{}, std::integral_constant<int, W>{}) for the runtime dtype and width; false for a
// width outside 2..4.
template <typename Fn>
bool dispatch(DType act_type, int64_t width, Fn&& fn) {
  auto with_width = [&](auto tag) {
    switch (width) {
      case 2:
        fn(tag, std::integral_constant<int, 2>{});
        return true;
      case 3:
        fn(tag, std::integral_constant<int, 3>{});
        return true;
      case 4:
        fn(tag, std::integral_constant<int, 4>{});
        return true;
      default:
        return false;
    }
  };
  switch (act_type) {
    case DType::kFloat16:
      return with_width(__half{});
    case DType::kBFloat16:
      return with_width(__nv_bfloat16{});
    default:
      return with_width(float{});
  }
}

}  // namespace

cudaError_t causal_conv1d(const Conv1dParams& p, cudaStream_t stream) {
  if (p.batch == 0 || p.seqlen == 0 || p.channels == 0) return cudaSuccess;
  const ConvGrid g = conv_grid(p);
  if (g.token_blocks > 0x7fffffffLL || g.channel_blocks > 65535) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(g.token_blocks), static_cast<unsigned>(g.channel_blocks),
                  static_cast<unsigned>(g.rows));
  const bool ok = dispatch(p.act_type, p.width, [&](auto tag, auto width) {
    conv_kernel<decltype(tag), decltype(width)::value><<<grid, kThreads, 0, stream>>>(p);
  });
  return ok ? cudaGetLastError() : cudaErrorInvalidValue;
}

cudaError_t causal_conv1d_update(const Conv1dUpdateParams& p, cudaStream_t stream) {
  if (p.batch == 0 || p.channels == 0) return cudaSuccess;
  const int64_t blocks = p.batch * ceil_div(p.channels, kThreads);
  if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  const bool ok = dispatch(p.act_type, p.width, [&](auto tag, auto width) {
    update_kernel<decltype(tag), decltype(width)::value>
        <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
  });
  return ok ? cudaGetLastError() : cudaErrorInvalidValue;
}

bool causal_conv1d_host(const Conv1dParams& p) {
  if (p.batch == 0 || p.seqlen == 0 || p.channels == 0) return p.width >= 2 && p.width <= 4;
  const ConvGrid g = conv_grid(p);
  return dispatch(p.act_type, p.width, [&](auto tag, auto width) {
    // the kernel's grid, block by block and thread by thread (blockIdx.z strides over the rows)
    for (int64_t z = 0; z < g.rows; ++z)
      for (int64_t bx = 0; bx < g.token_blocks; ++bx)
        for (int64_t by = 0; by < g.channel_blocks; ++by)
          for (int t = 0; t < kThreads; ++t)
            for (int64_t row = z; row < p.batch; row += g.rows)
              conv_thread<decltype(tag), decltype(width)::value>(p, row, bx, by, t);
  });
}

bool causal_conv1d_update_host(const Conv1dUpdateParams& p) {
  if (p.batch == 0 || p.channels == 0) return p.width >= 2 && p.width <= 4;
  const int64_t blocks = p.batch * ceil_div(p.channels, kThreads);
  return dispatch(p.act_type, p.width, [&](auto tag, auto width) {
    for (int64_t block = 0; block < blocks; ++block)
      for (int t = 0; t < kThreads; ++t)
        update_thread<decltype(tag), decltype(width)::value>(p, block, t);
  });
}

}  // namespace star_elastic::ssm
