// The one place where torch meets our CUDA code: op schemas and their CUDA implementations.
//
// The ops defined here are private building blocks (leading underscore). The public ops live in
// Python (star_elastic_kernels/*), where argument checking, output allocation and backend choice
// happen before anything is launched; these only fill preallocated outputs. That keeps this file
// light (no at::empty, no ATen op headers) and the kernels free of torch headers.
#include <Python.h>

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <string>

#include "build_info.h"
#include "ssm/ssd_state_update.h"
#include "ssm/causal_conv1d.h"
#include "ssm/gated_rmsnorm.h"
#include "ssm/ssd_scan.h"
#include "moe/grouped_gemm.h"
#include "moe/route.h"
#include "moe/align.h"
#include "moe/ffn_elementwise.h"

namespace star_elastic {
namespace {

void throw_on_cuda_error(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

// ---- ssm: implementations (csrc/ssm) -------------------------------------------------------------

ssm::DType ssm_dtype_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return ssm::DType::kFloat32;
    case at::kHalf:
      return ssm::DType::kFloat16;
    case at::kBFloat16:
      return ssm::DType::kBFloat16;
    default:
      TORCH_CHECK(false, name, " must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

void ssd_state_update_cuda(at::Tensor& state, const at::Tensor& x, const at::Tensor& dt,
                           const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                           const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                           const std::optional<at::Tensor>& dt_bias,
                           const std::optional<at::Tensor>& slots, at::Tensor& y,
                           int64_t heads_per_group, bool dt_softplus, double dt_min, double dt_max) {
  // Shapes were checked by the Python wrapper; these guard the raw-pointer contract only.
  TORCH_CHECK(state.is_cuda() && state.dim() == 4, "state must be a 4-D CUDA tensor");
  TORCH_CHECK(x.dim() == 3 && y.sizes() == x.sizes() && y.scalar_type() == x.scalar_type(),
              "x must be 3-D and y like x");
  TORCH_CHECK(B.dim() == 3 && C.sizes() == B.sizes() && B.stride(2) == 1 && C.stride(2) == 1,
              "B and C must be (b, G, N) with unit inner stride");
  TORCH_CHECK(B.scalar_type() == x.scalar_type() && C.scalar_type() == x.scalar_type(),
              "B and C must have x's dtype");
  TORCH_CHECK(x.stride(2) == 1 && y.stride(2) == 1, "x and y need a unit inner stride");
  TORCH_CHECK(B.size(2) <= 4096, "state size N must be <= 4096");
  ssm::StateUpdateParams p{};
  p.state = state.data_ptr();
  p.state_type = ssm_dtype_of(state, "state");
  for (int i = 0; i < 4; ++i) p.state_stride[i] = state.stride(i);
  p.x = x.data_ptr();
  p.act_type = ssm_dtype_of(x, "x");
  p.x_stride_b = x.stride(0);
  p.x_stride_h = x.stride(1);
  p.dt = dt.data_ptr();
  p.dt_type = ssm_dtype_of(dt, "dt");
  p.dt_stride_b = dt.stride(0);
  p.dt_stride_h = dt.stride(1);
  p.A = A.data_ptr();
  p.A_type = ssm_dtype_of(A, "A");
  p.A_stride = A.stride(0);
  p.B = B.data_ptr();
  p.B_stride_b = B.stride(0);
  p.B_stride_g = B.stride(1);
  p.C = C.data_ptr();
  p.C_stride_b = C.stride(0);
  p.C_stride_g = C.stride(1);
  if (D.has_value()) {
    p.D = D->data_ptr();
    p.D_type = ssm_dtype_of(*D, "D");
    p.D_stride_h = D->stride(0);
    p.D_stride_p = D->dim() == 2 ? D->stride(1) : 0;
  }
  if (z.has_value()) {
    TORCH_CHECK(z->sizes() == x.sizes() && z->stride(2) == 1 && z->scalar_type() == x.scalar_type(),
                "z must be like x");
    p.z = z->data_ptr();
    p.z_stride_b = z->stride(0);
    p.z_stride_h = z->stride(1);
  }
  if (dt_bias.has_value()) {
    p.dt_bias = dt_bias->data_ptr();
    p.dt_bias_type = ssm_dtype_of(*dt_bias, "dt_bias");
    p.dt_bias_stride = dt_bias->stride(0);
  }
  if (slots.has_value()) {
    TORCH_CHECK(slots->is_contiguous() && (slots->scalar_type() == at::kInt ||
                                           slots->scalar_type() == at::kLong),
                "state_indices must be contiguous int32 or int64");
    p.slots = slots->data_ptr();
    p.slots_int64 = slots->scalar_type() == at::kLong;
  }
  p.y = y.data_ptr();
  p.y_stride_b = y.stride(0);
  p.y_stride_h = y.stride(1);
  p.batch = x.size(0);
  p.active_heads = x.size(1);
  p.head_dim = x.size(2);
  p.state_size = B.size(2);
  p.heads_per_group = heads_per_group;
  p.parent_heads_per_group = A.size(0) / B.size(1);
  p.dt_softplus = dt_softplus;
  p.dt_min = static_cast<float>(dt_min);
  p.dt_max = static_cast<float>(dt_max);
  const c10::cuda::CUDAGuard guard(x.device());
  throw_on_cuda_error(
      ssm::ssd_state_update(p, c10::cuda::getCurrentCUDAStream(x.get_device()).stream()),
      "ssd_state_update");
}

// causal_conv1d / causal_conv1d_update / gated_rmsnorm: one params builder per op, used by the CUDA
// impl (kernel launch) and the CPU impl (the same per-thread code run over the grid on the host,
// to test the CUDA code's index math without a GPU; see csrc/ssm/causal_conv1d.h).

void check_ssm_device(const at::Tensor& t, const char* name, const at::Tensor& x, bool cuda) {
  TORCH_CHECK(t.device() == x.device(), name, " must be on x's device (", x.device(), ")");
  TORCH_CHECK(cuda ? t.is_cuda() : t.is_cpu(), name, cuda ? " must be a CUDA tensor"
                                                         : " must be a CPU tensor");
}

// layout: [] (dense) or the Triton kernels' [G*k*p, p, k, H/G, P, H*P]; checks it keeps every
// parent channel below `parent_channels`.
ssm::ConvChannelMap conv_channel_map(at::IntArrayRef layout, int64_t channels,
                                     int64_t parent_channels) {
  ssm::ConvChannelMap m{};
  if (layout.empty()) {
    TORCH_CHECK(channels == parent_channels, "a dense conv needs x's channels == weight's rows");
    return m;
  }
  TORCH_CHECK(layout.size() == 6, "layout must be [] or [G*k*p, p, k, H/G, P, H*P]");
  m = {layout[0], layout[1], layout[2], layout[3], layout[4], layout[5]};
  TORCH_CHECK(m.head_dim >= 1 && m.head_dim <= m.parent_head_dim && m.heads_per_group >= 1 &&
                  m.heads_per_group <= m.parent_heads_per_group && m.x_channels >= 1 &&
                  m.x_channels % (m.head_dim * m.heads_per_group) == 0 &&
                  m.x_channels / (m.head_dim * m.heads_per_group) * m.parent_heads_per_group *
                          m.parent_head_dim == m.parent_x_channels &&
                  m.x_channels <= channels &&
                  m.parent_x_channels + channels - m.x_channels == parent_channels,
              "layout does not describe a slice of the parent conv");
  return m;
}

ssm::Conv1dParams make_conv1d_params(const at::Tensor& x, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias,
                                     const std::optional<at::Tensor>& initial_states,
                                     const std::optional<at::Tensor>& cu_seqlens, at::Tensor& y,
                                     at::IntArrayRef layout, bool silu, bool cuda) {
  // Shapes and values were checked by the Python wrapper; these guard the raw-pointer contract.
  TORCH_CHECK(cuda ? x.is_cuda() : x.is_cpu(), "x must be a ", cuda ? "CUDA" : "CPU", " tensor");
  TORCH_CHECK(x.dim() == 3 && (x.size(2) <= 1 || x.stride(2) == 1),
              "x must be (b, l, c) with a unit channel stride");
  check_ssm_device(y, "y", x, cuda);
  TORCH_CHECK(y.sizes() == x.sizes() && y.scalar_type() == x.scalar_type() &&
                  (y.size(2) <= 1 || y.stride(2) == 1),
              "y must be like x with a unit channel stride");
  check_ssm_device(weight, "weight", x, cuda);
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) >= 2 && weight.size(1) <= 4,
              "weight must be (C, w) with w in 2..4");
  const int64_t width = weight.size(1);
  ssm::Conv1dParams p{};
  p.map = conv_channel_map(layout, x.size(2), weight.size(0));
  p.x = x.data_ptr();
  p.act_type = ssm_dtype_of(x, "x");
  p.x_stride_b = x.stride(0);
  p.x_stride_l = x.stride(1);
  p.weight = weight.data_ptr();
  p.weight_type = ssm_dtype_of(weight, "weight");
  p.weight_stride_c = weight.stride(0);
  p.weight_stride_k = weight.stride(1);
  if (bias.has_value()) {
    check_ssm_device(*bias, "bias", x, cuda);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "bias must be (C,)");
    p.bias = bias->data_ptr();
    p.bias_type = ssm_dtype_of(*bias, "bias");
    p.bias_stride = bias->stride(0);
  }
  int64_t seqs = x.size(0);
  if (cu_seqlens.has_value()) {
    check_ssm_device(*cu_seqlens, "cu_seqlens", x, cuda);
    TORCH_CHECK(cu_seqlens->dim() == 1 && cu_seqlens->size(0) >= 2 && cu_seqlens->is_contiguous() &&
                    (cu_seqlens->scalar_type() == at::kInt || cu_seqlens->scalar_type() == at::kLong),
                "cu_seqlens must be a contiguous (S+1,) int32/int64 tensor, S >= 1");
    TORCH_CHECK(x.size(0) == 1, "cu_seqlens needs x with batch size 1");
    p.cu_seqlens = cu_seqlens->data_ptr();
    p.cu_seqlens_int64 = cu_seqlens->scalar_type() == at::kLong;
    p.num_seqs = seqs = cu_seqlens->size(0) - 1;
  }
  if (initial_states.has_value()) {
    check_ssm_device(*initial_states, "initial_states", x, cuda);
    TORCH_CHECK(initial_states->dim() == 3 && initial_states->size(0) == seqs &&
                    initial_states->size(1) == x.size(2) && initial_states->size(2) == width - 1,
                "initial_states must be (b or S, c, w-1)");
    p.initial_states = initial_states->data_ptr();
    p.init_type = ssm_dtype_of(*initial_states, "initial_states");
    p.init_stride_s = initial_states->stride(0);
    p.init_stride_c = initial_states->stride(1);
    p.init_stride_k = initial_states->stride(2);
  }
  p.y = y.data_ptr();
  p.y_stride_b = y.stride(0);
  p.y_stride_l = y.stride(1);
  p.batch = x.size(0);
  p.seqlen = x.size(1);
  p.channels = x.size(2);
  p.width = width;
  p.silu = silu;
  return p;
}

void causal_conv1d_cuda(const at::Tensor& x, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias,
                        const std::optional<at::Tensor>& initial_states,
                        const std::optional<at::Tensor>& cu_seqlens, at::Tensor& y,
                        at::IntArrayRef layout, bool silu) {
  const auto p = make_conv1d_params(x, weight, bias, initial_states, cu_seqlens, y, layout, silu,
                                    true);
  const c10::cuda::CUDAGuard guard(x.device());
  throw_on_cuda_error(
      ssm::causal_conv1d(p, c10::cuda::getCurrentCUDAStream(x.get_device()).stream()),
      "causal_conv1d");
}

void causal_conv1d_cpu(const at::Tensor& x, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& initial_states,
                       const std::optional<at::Tensor>& cu_seqlens, at::Tensor& y,
                       at::IntArrayRef layout, bool silu) {
  const auto p = make_conv1d_params(x, weight, bias, initial_states, cu_seqlens, y, layout, silu,
                                    false);
  TORCH_CHECK(ssm::causal_conv1d_host(p), "causal_conv1d: unsupported kernel width");
}

ssm::Conv1dUpdateParams make_conv1d_update_params(const at::Tensor& x, at::Tensor& conv_state,
                                                  const at::Tensor& weight,
                                                  const std::optional<at::Tensor>& bias,
                                                  const std::optional<at::Tensor>& state_indices,
                                                  at::Tensor& y, at::IntArrayRef layout, bool silu,
                                                  bool cuda) {
  // Shapes and slot values were checked by the Python wrapper; these guard the raw-pointer contract.
  TORCH_CHECK(cuda ? x.is_cuda() : x.is_cpu(), "x must be a ", cuda ? "CUDA" : "CPU", " tensor");
  TORCH_CHECK(x.dim() == 2 && (x.size(1) <= 1 || x.stride(1) == 1),
              "x must be (b, c) with a unit channel stride");
  check_ssm_device(y, "y", x, cuda);
  TORCH_CHECK(y.sizes() == x.sizes() && y.scalar_type() == x.scalar_type() &&
                  (y.size(1) <= 1 || y.stride(1) == 1),
              "y must be like x with a unit channel stride");
  check_ssm_device(weight, "weight", x, cuda);
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) >= 2 && weight.size(1) <= 4,
              "weight must be (C, w) with w in 2..4");
  check_ssm_device(conv_state, "conv_state", x, cuda);
  TORCH_CHECK(conv_state.dim() == 3 && conv_state.size(1) == weight.size(0) &&
                  conv_state.size(2) == weight.size(1) - 1,
              "conv_state must be (slots, C, w-1)");
  ssm::Conv1dUpdateParams p{};
  p.map = conv_channel_map(layout, x.size(1), weight.size(0));
  p.x = x.data_ptr();
  p.act_type = ssm_dtype_of(x, "x");
  p.x_stride_b = x.stride(0);
  p.state = conv_state.data_ptr();
  p.state_type = ssm_dtype_of(conv_state, "conv_state");
  p.state_stride_s = conv_state.stride(0);
  p.state_stride_c = conv_state.stride(1);
  p.state_stride_k = conv_state.stride(2);
  p.weight = weight.data_ptr();
  p.weight_type = ssm_dtype_of(weight, "weight");
  p.weight_stride_c = weight.stride(0);
  p.weight_stride_k = weight.stride(1);
  if (bias.has_value()) {
    check_ssm_device(*bias, "bias", x, cuda);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "bias must be (C,)");
    p.bias = bias->data_ptr();
    p.bias_type = ssm_dtype_of(*bias, "bias");
    p.bias_stride = bias->stride(0);
  }
  if (state_indices.has_value()) {
    check_ssm_device(*state_indices, "state_indices", x, cuda);
    TORCH_CHECK(state_indices->dim() == 1 && state_indices->size(0) == x.size(0) &&
                    state_indices->is_contiguous() &&
                    (state_indices->scalar_type() == at::kInt ||
                     state_indices->scalar_type() == at::kLong),
                "state_indices must be a contiguous (b,) int32/int64 tensor");
    p.slots = state_indices->data_ptr();
    p.slots_int64 = state_indices->scalar_type() == at::kLong;
  } else {
    TORCH_CHECK(x.size(0) <= conv_state.size(0), "batch exceeds the cache's slots");
  }
  p.y = y.data_ptr();
  p.y_stride_b = y.stride(0);
  p.batch = x.size(0);
  p.channels = x.size(1);
  p.width = weight.size(1);
  p.silu = silu;
  return p;
}

void causal_conv1d_update_cuda(const at::Tensor& x, at::Tensor& conv_state,
                               const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               const std::optional<at::Tensor>& state_indices, at::Tensor& y,
                               at::IntArrayRef layout, bool silu) {
  const auto p = make_conv1d_update_params(x, conv_state, weight, bias, state_indices, y, layout,
                                           silu, true);
  const c10::cuda::CUDAGuard guard(x.device());
  throw_on_cuda_error(
      ssm::causal_conv1d_update(p, c10::cuda::getCurrentCUDAStream(x.get_device()).stream()),
      "causal_conv1d_update");
}

void causal_conv1d_update_cpu(const at::Tensor& x, at::Tensor& conv_state,
                              const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                              const std::optional<at::Tensor>& state_indices, at::Tensor& y,
                              at::IntArrayRef layout, bool silu) {
  const auto p = make_conv1d_update_params(x, conv_state, weight, bias, state_indices, y, layout,
                                           silu, false);
  TORCH_CHECK(ssm::causal_conv1d_update_host(p), "causal_conv1d_update: unsupported kernel width");
}

ssm::GatedRmsNormParams make_gated_rmsnorm_params(const at::Tensor& y,
                                                  const std::optional<at::Tensor>& z,
                                                  const at::Tensor& weight, at::Tensor& out,
                                                  int64_t num_groups, int64_t head_dim,
                                                  int64_t parent_group_width,
                                                  int64_t parent_head_dim, double eps,
                                                  bool norm_before_gate, bool cuda) {
  // Shapes were checked by the Python wrapper; these guard the raw-pointer contract only.
  TORCH_CHECK(cuda ? y.is_cuda() : y.is_cpu(), "y must be a ", cuda ? "CUDA" : "CPU", " tensor");
  TORCH_CHECK(y.dim() == 2 && (y.size(1) <= 1 || y.stride(1) == 1),
              "y must be (rows, G*k*p) with a unit inner stride");
  check_ssm_device(out, "out", y, cuda);
  TORCH_CHECK(out.sizes() == y.sizes() && out.scalar_type() == y.scalar_type() &&
                  (out.size(1) <= 1 || out.stride(1) == 1),
              "out must be like y with a unit inner stride");
  check_ssm_device(weight, "weight", y, cuda);
  TORCH_CHECK(weight.dim() == 1, "weight must be 1-D");
  TORCH_CHECK(num_groups >= 1 && y.size(1) % num_groups == 0 && head_dim >= 1 &&
                  head_dim <= parent_head_dim && (y.size(1) / num_groups) % head_dim == 0 &&
                  (y.size(1) / num_groups) / head_dim * parent_head_dim <= parent_group_width &&
                  num_groups * parent_group_width == weight.size(0),
              "num_groups, head_dim, parent_group_width, parent_head_dim do not describe a slice "
              "of the weight");
  ssm::GatedRmsNormParams p{};
  p.y = y.data_ptr();
  p.act_type = ssm_dtype_of(y, "y");
  p.y_stride_row = y.stride(0);
  if (z.has_value()) {
    check_ssm_device(*z, "z", y, cuda);
    TORCH_CHECK(z->sizes() == y.sizes() && z->scalar_type() == y.scalar_type() &&
                    (z->size(1) <= 1 || z->stride(1) == 1),
                "z must be like y with a unit inner stride");
    p.z = z->data_ptr();
    p.z_stride_row = z->stride(0);
  }
  p.weight = weight.data_ptr();
  p.weight_type = ssm_dtype_of(weight, "weight");
  p.weight_stride = weight.stride(0);
  p.out = out.data_ptr();
  p.out_stride_row = out.stride(0);
  p.rows = y.size(0);
  p.num_groups = num_groups;
  p.group_width = y.size(1) / num_groups;
  p.head_dim = head_dim;
  p.parent_group_width = parent_group_width;
  p.parent_head_dim = parent_head_dim;
  p.eps = static_cast<float>(eps);
  p.norm_before_gate = norm_before_gate;
  return p;
}

void gated_rmsnorm_cuda(const at::Tensor& y, const std::optional<at::Tensor>& z,
                        const at::Tensor& weight, at::Tensor& out, int64_t num_groups,
                        int64_t head_dim, int64_t parent_group_width, int64_t parent_head_dim,
                        double eps, bool norm_before_gate) {
  const auto p = make_gated_rmsnorm_params(y, z, weight, out, num_groups, head_dim,
                                           parent_group_width, parent_head_dim, eps,
                                           norm_before_gate, true);
  const c10::cuda::CUDAGuard guard(y.device());
  throw_on_cuda_error(
      ssm::gated_rmsnorm(p, c10::cuda::getCurrentCUDAStream(y.get_device()).stream()),
      "gated_rmsnorm");
}

void gated_rmsnorm_cpu(const at::Tensor& y, const std::optional<at::Tensor>& z,
                       const at::Tensor& weight, at::Tensor& out, int64_t num_groups,
                       int64_t head_dim, int64_t parent_group_width, int64_t parent_head_dim,
                       double eps, bool norm_before_gate) {
  ssm::gated_rmsnorm_host(make_gated_rmsnorm_params(y, z, weight, out, num_groups, head_dim,
                                                    parent_group_width, parent_head_dim, eps,
                                                    norm_before_gate, false));
}

// ssd_scan (chunked SSD forward): one params builder for the CUDA impl (four kernel launches) and
// the CPU impl (the same per-thread code run over the grid on the host; see csrc/ssm/ssd_scan.h).

ssm::ScanParams make_ssd_scan_params(
    const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& C, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
    const std::optional<at::Tensor>& dt_bias, const std::optional<at::Tensor>& initial_states,
    const at::Tensor& chunk_table, const at::Tensor& seq_table, at::Tensor& y,
    at::Tensor& final_states, at::Tensor& workspace, int64_t chunk_size, int64_t heads_per_group,
    bool dt_softplus, double dt_min, double dt_max, bool cuda) {
  // Shapes and values were checked by the Python wrapper; these guard the raw-pointer contract.
  TORCH_CHECK(cuda ? x.is_cuda() : x.is_cpu(), "x must be a ", cuda ? "CUDA" : "CPU", " tensor");
  TORCH_CHECK(x.dim() == 4 && (x.size(3) <= 1 || x.stride(3) == 1),
              "x must be (b, l, H', p) with a unit inner stride");
  const int64_t batch = x.size(0), seqlen = x.size(1), heads = x.size(2), head_dim = x.size(3);
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{
           &dt, &A, &B, &C, &chunk_table, &seq_table, &y, &final_states, &workspace})
    check_ssm_device(*t, "every tensor", x, cuda);
  TORCH_CHECK(dt.dim() == 3 && dt.size(0) == batch && dt.size(1) == seqlen && dt.size(2) == heads,
              "dt must be (b, l, H')");
  TORCH_CHECK(B.dim() == 4 && B.size(0) == batch && B.size(1) == seqlen && C.sizes() == B.sizes() &&
                  (B.size(3) <= 1 || (B.stride(3) == 1 && C.stride(3) == 1)),
              "B and C must be (b, l, G, N) with unit inner strides");
  TORCH_CHECK(B.scalar_type() == x.scalar_type() && C.scalar_type() == x.scalar_type(),
              "B and C must have x's dtype");
  const int64_t groups = B.size(2), state_size = B.size(3);
  TORCH_CHECK(A.dim() == 1 && groups >= 1 && A.size(0) % groups == 0, "A must be (H,), G | H");
  TORCH_CHECK(heads_per_group >= 1 && heads_per_group <= A.size(0) / groups &&
                  heads == groups * heads_per_group,
              "x's heads must be G * heads_per_group with heads_per_group <= H/G");
  TORCH_CHECK(y.sizes() == x.sizes() && y.scalar_type() == x.scalar_type() &&
                  (head_dim <= 1 || y.stride(3) == 1),
              "y must be like x with a unit inner stride");
  TORCH_CHECK(chunk_size >= 1 && chunk_size <= ssm::kScanMaxChunk, "chunk_size must be in [1, ",
              ssm::kScanMaxChunk, "]");
  TORCH_CHECK(chunk_table.scalar_type() == at::kLong && chunk_table.is_contiguous() &&
                  chunk_table.dim() == 2 && chunk_table.size(0) == 3,
              "chunk_table must be a contiguous (3, chunks) int64 tensor");
  TORCH_CHECK(seq_table.scalar_type() == at::kLong && seq_table.is_contiguous() &&
                  seq_table.dim() == 2 && seq_table.size(0) == 2,
              "seq_table must be a contiguous (2, S) int64 tensor");
  const int64_t chunks = chunk_table.size(1), seqs = seq_table.size(1);
  TORCH_CHECK(final_states.scalar_type() == at::kFloat && final_states.is_contiguous() &&
                  final_states.dim() == 4 && final_states.size(0) == seqs &&
                  final_states.size(1) == heads && final_states.size(2) == head_dim &&
                  final_states.size(3) == state_size,
              "final_states must be a contiguous (S, H', p, N) float32 tensor");
  TORCH_CHECK(workspace.scalar_type() == at::kFloat && workspace.is_contiguous() &&
                  workspace.numel() >= ssm::ssd_scan_workspace_floats(chunks, heads, head_dim,
                                                                      state_size, chunk_size),
              "workspace must be a contiguous float32 tensor of chunks*H'*(2*chunk_size + p*N) values");
  ssm::ScanParams p{};
  p.x = x.data_ptr();
  p.act_type = ssm_dtype_of(x, "x");
  p.x_stride_b = x.stride(0);
  p.x_stride_l = x.stride(1);
  p.x_stride_h = x.stride(2);
  p.dt = dt.data_ptr();
  p.dt_type = ssm_dtype_of(dt, "dt");
  p.dt_stride_b = dt.stride(0);
  p.dt_stride_l = dt.stride(1);
  p.dt_stride_h = dt.stride(2);
  p.A = A.data_ptr();
  p.A_type = ssm_dtype_of(A, "A");
  p.A_stride = A.stride(0);
  p.B = B.data_ptr();
  p.B_stride_b = B.stride(0);
  p.B_stride_l = B.stride(1);
  p.B_stride_g = B.stride(2);
  p.C = C.data_ptr();
  p.C_stride_b = C.stride(0);
  p.C_stride_l = C.stride(1);
  p.C_stride_g = C.stride(2);
  if (D.has_value()) {
    check_ssm_device(*D, "D", x, cuda);
    TORCH_CHECK(D->size(0) == A.size(0) && (D->dim() == 1 || (D->dim() == 2 && D->size(1) >= head_dim)),
                "D must be (H,) or (H, P) with P >= p");
    p.D = D->data_ptr();
    p.D_type = ssm_dtype_of(*D, "D");
    p.D_stride_h = D->stride(0);
    p.D_stride_p = D->dim() == 2 ? D->stride(1) : 0;
  }
  if (z.has_value()) {
    check_ssm_device(*z, "z", x, cuda);
    TORCH_CHECK(z->sizes() == x.sizes() && z->scalar_type() == x.scalar_type() &&
                    (head_dim <= 1 || z->stride(3) == 1),
                "z must be like x with a unit inner stride");
    p.z = z->data_ptr();
    p.z_stride_b = z->stride(0);
    p.z_stride_l = z->stride(1);
    p.z_stride_h = z->stride(2);
  }
  if (dt_bias.has_value()) {
    check_ssm_device(*dt_bias, "dt_bias", x, cuda);
    TORCH_CHECK(dt_bias->dim() == 1 && dt_bias->size(0) == A.size(0), "dt_bias must be (H,)");
    p.dt_bias = dt_bias->data_ptr();
    p.dt_bias_type = ssm_dtype_of(*dt_bias, "dt_bias");
    p.dt_bias_stride = dt_bias->stride(0);
  }
  if (initial_states.has_value()) {
    check_ssm_device(*initial_states, "initial_states", x, cuda);
    TORCH_CHECK(initial_states->dim() == 4 && initial_states->size(0) == seqs &&
                    initial_states->size(1) == heads && initial_states->size(2) == head_dim &&
                    initial_states->size(3) == state_size,
                "initial_states must be (S, H', p, N)");
    p.initial = initial_states->data_ptr();
    p.initial_type = ssm_dtype_of(*initial_states, "initial_states");
    for (int i = 0; i < 4; ++i) p.initial_stride[i] = initial_states->stride(i);
  }
  p.chunk_table = chunk_table.data_ptr<int64_t>();
  p.seq_table = seq_table.data_ptr<int64_t>();
  p.y = y.data_ptr();
  p.y_stride_b = y.stride(0);
  p.y_stride_l = y.stride(1);
  p.y_stride_h = y.stride(2);
  p.final_states = final_states.data_ptr<float>();
  p.workspace = workspace.data_ptr<float>();
  p.num_chunks = chunks;
  p.num_seqs = seqs;
  p.active_heads = heads;
  p.heads_per_group = heads_per_group;
  p.parent_heads_per_group = A.size(0) / groups;
  p.head_dim = head_dim;
  p.state_size = state_size;
  p.chunk_size = chunk_size;
  p.dt_softplus = dt_softplus;
  p.dt_min = static_cast<float>(dt_min);
  p.dt_max = static_cast<float>(dt_max);
  return p;
}

void ssd_scan_cuda(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                   const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& D,
                   const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& dt_bias,
                   const std::optional<at::Tensor>& initial_states, const at::Tensor& chunk_table,
                   const at::Tensor& seq_table, at::Tensor& y, at::Tensor& final_states,
                   at::Tensor& workspace, int64_t chunk_size, int64_t heads_per_group,
                   bool dt_softplus, double dt_min, double dt_max) {
  const auto p = make_ssd_scan_params(x, dt, A, B, C, D, z, dt_bias, initial_states, chunk_table,
                                      seq_table, y, final_states, workspace, chunk_size,
                                      heads_per_group, dt_softplus, dt_min, dt_max, true);
  const c10::cuda::CUDAGuard guard(x.device());
  throw_on_cuda_error(ssm::ssd_scan(p, c10::cuda::getCurrentCUDAStream(x.get_device()).stream()),
                      "ssd_scan");
}

void ssd_scan_cpu(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                  const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& D,
                  const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& dt_bias,
                  const std::optional<at::Tensor>& initial_states, const at::Tensor& chunk_table,
                  const at::Tensor& seq_table, at::Tensor& y, at::Tensor& final_states,
                  at::Tensor& workspace, int64_t chunk_size, int64_t heads_per_group,
                  bool dt_softplus, double dt_min, double dt_max) {
  ssm::ssd_scan_host(make_ssd_scan_params(x, dt, A, B, C, D, z, dt_bias, initial_states,
                                          chunk_table, seq_table, y, final_states, workspace,
                                          chunk_size, heads_per_group, dt_softplus, dt_min, dt_max,
                                          false));
}

// ---- moe: implementations (csrc/moe) -------------------------------------------------------------

int64_t moe_grouped_gemm_workspace_size(int64_t num_groups, int64_t device) {
  return static_cast<int64_t>(
      moe::grouped_gemm_bf16_workspace_size(static_cast<int>(num_groups), static_cast<int>(device)));
}

void moe_grouped_gemm_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& group_ends,
                           at::Tensor& out, at::Tensor& workspace) {
  TORCH_CHECK(a.is_cuda() && b.is_cuda() && group_ends.is_cuda() && out.is_cuda() &&
                  workspace.is_cuda(),
              "_moe_grouped_gemm: every tensor must be on the GPU");
  TORCH_CHECK(a.scalar_type() == at::kBFloat16 && b.scalar_type() == at::kBFloat16 &&
                  out.scalar_type() == at::kBFloat16,
              "_moe_grouped_gemm: a, b and out must be bfloat16");
  TORCH_CHECK(a.dim() == 2 && b.dim() == 3 && out.dim() == 2, "_moe_grouped_gemm: a (M, K), b (G, N, K), out (M, N)");
  TORCH_CHECK(a.size(1) == b.size(2) && out.size(0) == a.size(0) && out.size(1) == b.size(1),
              "_moe_grouped_gemm: shapes disagree");
  TORCH_CHECK(a.stride(1) == 1 && b.stride(2) == 1 && out.stride(1) == 1,
              "_moe_grouped_gemm: a, b and out need unit inner strides");
  TORCH_CHECK(group_ends.scalar_type() == at::kInt && group_ends.is_contiguous() &&
                  group_ends.numel() == b.size(0),
              "_moe_grouped_gemm: group_ends must be a contiguous int32 tensor with one entry per group");
  TORCH_CHECK(workspace.is_contiguous(), "_moe_grouped_gemm: workspace must be contiguous");
  const c10::cuda::CUDAGuard guard(a.device());
  moe::GroupedGemmArgs args{};
  args.a = a.data_ptr();
  args.lda = a.stride(0);
  args.b = b.data_ptr();
  args.stride_bg = b.stride(0);
  args.ldb = b.stride(1);
  args.d = out.data_ptr();
  args.ldd = out.stride(0);
  args.group_ends = group_ends.data_ptr<int32_t>();
  args.num_groups = static_cast<int>(b.size(0));
  args.n = b.size(1);
  args.k = b.size(2);
  throw_on_cuda_error(
      moe::grouped_gemm_bf16(args, workspace.data_ptr(), static_cast<size_t>(workspace.numel()),
                             a.get_device(), c10::cuda::getCurrentCUDAStream(a.get_device()).stream()),
      "_moe_grouped_gemm (CUTLASS sm_90a grouped GEMM; needs 16-byte aligned rows)");
}

// Routing and alignment: the same argument unpacking for the CUDA kernels and for their CPU
// impls, which run the kernels' per-thread functions sequentially (route.h, align.h).

moe::RouteParams moe_route_params(const at::Tensor& logits, const std::optional<at::Tensor>& bias,
                                  const std::optional<at::Tensor>& mask, at::Tensor& weights,
                                  at::Tensor& ids, int64_t num_prefix, bool softmax,
                                  bool renormalize, double scaling) {
  TORCH_CHECK(logits.dim() == 2, "_moe_route: logits must be (T, E)");
  const int64_t tokens = logits.size(0), columns = logits.size(1);
  TORCH_CHECK(weights.scalar_type() == at::kFloat && weights.is_contiguous() && weights.dim() == 2 &&
                  weights.size(0) == tokens && weights.size(1) >= 1,
              "_moe_route: weights must be a contiguous float32 (T, k) tensor");
  TORCH_CHECK(ids.scalar_type() == at::kInt && ids.is_contiguous() && ids.sizes() == weights.sizes(),
              "_moe_route: ids must be a contiguous int32 tensor shaped like weights");
  TORCH_CHECK(weights.device() == logits.device() && ids.device() == logits.device(),
              "_moe_route: every tensor must be on logits' device");
  moe::RouteParams p{};
  p.logits = logits.data_ptr();
  switch (logits.scalar_type()) {
    case at::kFloat: p.logit_type = moe::RouteLogitType::kFloat32; break;
    case at::kHalf: p.logit_type = moe::RouteLogitType::kFloat16; break;
    case at::kBFloat16: p.logit_type = moe::RouteLogitType::kBFloat16; break;
    default: TORCH_CHECK(false, "_moe_route: logits must be float32, float16 or bfloat16");
  }
  p.stride_t = logits.stride(0);
  p.stride_e = logits.stride(1);
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() &&
                    bias->numel() >= columns && bias->device() == logits.device(),
                "_moe_route: bias must be a contiguous float32 tensor of >= E values on logits' device");
    p.bias = bias->data_ptr<float>();
  }
  if (mask.has_value()) {
    TORCH_CHECK(mask->element_size() == 1 && mask->is_contiguous() && mask->numel() >= columns &&
                    mask->device() == logits.device(),
                "_moe_route: mask must be a contiguous bool tensor of >= E values on logits' device");
    p.mask = static_cast<const uint8_t*>(mask->data_ptr());
  }
  p.weights = weights.data_ptr<float>();
  p.ids = ids.data_ptr<int32_t>();
  p.num_tokens = tokens;
  p.num_columns = columns;
  p.num_prefix = num_prefix;
  p.top_k = static_cast<int>(weights.size(1));
  p.softmax = softmax;
  p.renormalize = renormalize;
  p.scaling = static_cast<float>(scaling);
  return p;
}

void moe_route_cuda(const at::Tensor& logits, const std::optional<at::Tensor>& bias,
                    const std::optional<at::Tensor>& mask, at::Tensor& weights, at::Tensor& ids,
                    int64_t num_prefix, bool softmax, bool renormalize, double scaling) {
  TORCH_CHECK(logits.is_cuda(), "_moe_route: logits must be a CUDA tensor");
  const auto p = moe_route_params(logits, bias, mask, weights, ids, num_prefix, softmax, renormalize,
                                  scaling);
  const c10::cuda::CUDAGuard guard(logits.device());
  throw_on_cuda_error(
      moe::route_cuda(p, c10::cuda::getCurrentCUDAStream(logits.get_device()).stream()),
      "_moe_route");
}

// CPU impl: the CUDA kernel's per-token function run sequentially (tests the index math and the
// arithmetic of the kernel on machines without a GPU; not the launch).
void moe_route_cpu(const at::Tensor& logits, const std::optional<at::Tensor>& bias,
                   const std::optional<at::Tensor>& mask, at::Tensor& weights, at::Tensor& ids,
                   int64_t num_prefix, bool softmax, bool renormalize, double scaling) {
  TORCH_CHECK(logits.is_cpu(), "_moe_route (CPU): logits must be a CPU tensor");
  moe::route_host(moe_route_params(logits, bias, mask, weights, ids, num_prefix, softmax,
                                   renormalize, scaling));
}

int64_t moe_align_workspace_size(int64_t num_slots, int64_t num_experts) {
  return moe::align_workspace_elements(num_slots, num_experts);
}

moe::AlignParams moe_align_params(const at::Tensor& ids, at::Tensor& workspace,
                                  at::Tensor& sorted_slots, at::Tensor& counts,
                                  at::Tensor& expert_offsets, at::Tensor& block_offsets,
                                  int64_t block_m) {
  TORCH_CHECK(ids.is_contiguous() && (ids.scalar_type() == at::kInt || ids.scalar_type() == at::kLong),
              "_moe_align: ids must be contiguous int32 or int64");
  const int64_t experts = counts.numel();
  TORCH_CHECK(block_m >= 1 && experts >= 1, "_moe_align: block_m and the expert count must be >= 1");
  for (const at::Tensor* t : {&workspace, &sorted_slots, &counts, &expert_offsets, &block_offsets}) {
    TORCH_CHECK(t->scalar_type() == at::kInt && t->is_contiguous() && t->device() == ids.device(),
                "_moe_align: outputs and workspace must be contiguous int32 on ids' device");
  }
  TORCH_CHECK(sorted_slots.numel() == ids.numel() && expert_offsets.numel() == experts + 1 &&
                  block_offsets.numel() == experts + 1,
              "_moe_align: sorted_slots (T*k,), counts (E,), expert_offsets and block_offsets (E+1,)");
  TORCH_CHECK(workspace.numel() >= moe::align_workspace_elements(ids.numel(), experts),
              "_moe_align: workspace is too small (see _moe_align_workspace_size)");
  TORCH_CHECK(ids.numel() < INT32_MAX, "_moe_align: too many slots for int32 slot ids");
  moe::AlignParams p{};
  p.ids = ids.data_ptr();
  p.ids_int64 = ids.scalar_type() == at::kLong;
  p.num_slots = ids.numel();
  p.num_experts = experts;
  p.block_m = block_m;
  p.workspace = workspace.data_ptr<int32_t>();
  p.sorted_slots = sorted_slots.data_ptr<int32_t>();
  p.counts = counts.data_ptr<int32_t>();
  p.expert_offsets = expert_offsets.data_ptr<int32_t>();
  p.block_offsets = block_offsets.data_ptr<int32_t>();
  return p;
}

void moe_align_cuda(const at::Tensor& ids, at::Tensor& workspace, at::Tensor& sorted_slots,
                    at::Tensor& counts, at::Tensor& expert_offsets, at::Tensor& block_offsets,
                    int64_t block_m) {
  TORCH_CHECK(ids.is_cuda(), "_moe_align: ids must be a CUDA tensor");
  const auto p = moe_align_params(ids, workspace, sorted_slots, counts, expert_offsets,
                                  block_offsets, block_m);
  const c10::cuda::CUDAGuard guard(ids.device());
  throw_on_cuda_error(moe::align_cuda(p, c10::cuda::getCurrentCUDAStream(ids.get_device()).stream()),
                      "_moe_align");
}

// CPU impl: the four phases' per-thread functions run sequentially (see moe_route_cpu).
void moe_align_cpu(const at::Tensor& ids, at::Tensor& workspace, at::Tensor& sorted_slots,
                   at::Tensor& counts, at::Tensor& expert_offsets, at::Tensor& block_offsets,
                   int64_t block_m) {
  TORCH_CHECK(ids.is_cpu(), "_moe_align (CPU): ids must be a CPU tensor");
  moe::align_host(moe_align_params(ids, workspace, sorted_slots, counts, expert_offsets,
                                   block_offsets, block_m));
}

// moe_ffn's elementwise steps (bf16) around the grouped GEMMs; CUDA kernels and CPU impls that
// run their per-thread functions sequentially (moe/ffn_elementwise.h).

const uint16_t* bf16_rows(const at::Tensor& t, const at::Tensor& like, const char* what) {
  TORCH_CHECK(t.scalar_type() == at::kBFloat16 && t.dim() == 2 && (t.size(1) <= 1 || t.stride(1) == 1) &&
                  t.device() == like.device(),
              what, " must be a 2-D bfloat16 tensor with unit column stride on the same device");
  return static_cast<const uint16_t*>(t.data_ptr());
}

moe::GatherParams moe_gather_params(const at::Tensor& x, const at::Tensor& sorted_slots,
                                    int64_t top_k, at::Tensor& out) {
  TORCH_CHECK(sorted_slots.scalar_type() == at::kInt && sorted_slots.is_contiguous() &&
                  sorted_slots.numel() == out.size(0) && sorted_slots.device() == x.device(),
              "_moe_gather_rows: sorted_slots must be contiguous int32 with one entry per out row");
  TORCH_CHECK(top_k >= 1 && out.size(1) == x.size(1), "_moe_gather_rows: top_k >= 1, out (P, d)");
  moe::GatherParams p{};
  p.x = bf16_rows(x, x, "_moe_gather_rows: x");
  p.x_stride = x.stride(0);
  p.sorted_slots = sorted_slots.data_ptr<int32_t>();
  p.top_k = top_k;
  p.out = const_cast<uint16_t*>(bf16_rows(out, x, "_moe_gather_rows: out"));
  p.out_stride = out.stride(0);
  p.rows = out.size(0);
  p.cols = out.size(1);
  return p;
}

moe::ActivationParams moe_activation_params(const at::Tensor& gate,
                                            const std::optional<at::Tensor>& value, at::Tensor& out) {
  TORCH_CHECK(out.sizes() == gate.sizes() && (!value.has_value() || value->sizes() == gate.sizes()),
              "_moe_activation: gate, value and out must have one shape");
  moe::ActivationParams p{};
  p.gate = bf16_rows(gate, gate, "_moe_activation: gate");
  p.gate_stride = gate.stride(0);
  if (value.has_value()) {
    p.value = bf16_rows(*value, gate, "_moe_activation: value");
    p.value_stride = value->stride(0);
  }
  p.out = const_cast<uint16_t*>(bf16_rows(out, gate, "_moe_activation: out"));
  p.out_stride = out.stride(0);
  p.rows = gate.size(0);
  p.cols = gate.size(1);
  return p;
}

moe::CombineParams moe_combine_params(const at::Tensor& y, const at::Tensor& sorted_slots,
                                      const at::Tensor& weights,
                                      const std::optional<at::Tensor>& shared, at::Tensor& inverse,
                                      at::Tensor& out, double scaling) {
  TORCH_CHECK(weights.scalar_type() == at::kFloat && weights.is_contiguous() && weights.dim() == 2 &&
                  weights.size(0) == out.size(0) && weights.device() == y.device(),
              "_moe_combine: weights must be a contiguous float32 (T, k) tensor");
  const int64_t slots = weights.numel();
  for (const at::Tensor* t : {&sorted_slots, static_cast<const at::Tensor*>(&inverse)}) {
    TORCH_CHECK(t->scalar_type() == at::kInt && t->is_contiguous() && t->numel() == slots &&
                    t->device() == y.device(),
                "_moe_combine: sorted_slots and inverse must be contiguous int32 (T*k,)");
  }
  TORCH_CHECK(y.size(0) == slots && y.size(1) == out.size(1), "_moe_combine: y (T*k, d), out (T, d)");
  moe::CombineParams p{};
  p.y = bf16_rows(y, y, "_moe_combine: y");
  p.y_stride = y.stride(0);
  p.sorted_slots = sorted_slots.data_ptr<int32_t>();
  p.inverse = inverse.data_ptr<int32_t>();
  p.weights = weights.data_ptr<float>();
  if (shared.has_value()) {
    TORCH_CHECK(shared->sizes() == out.sizes(), "_moe_combine: shared must be (T, d)");
    p.shared = bf16_rows(*shared, y, "_moe_combine: shared");
    p.shared_stride = shared->stride(0);
  }
  p.out = const_cast<uint16_t*>(bf16_rows(out, y, "_moe_combine: out"));
  p.out_stride = out.stride(0);
  p.tokens = weights.size(0);
  p.top_k = weights.size(1);
  p.cols = out.size(1);
  p.scaling = static_cast<float>(scaling);
  return p;
}

void moe_gather_rows_cuda(const at::Tensor& x, const at::Tensor& sorted_slots, int64_t top_k,
                          at::Tensor& out) {
  TORCH_CHECK(x.is_cuda(), "_moe_gather_rows: x must be a CUDA tensor");
  const auto p = moe_gather_params(x, sorted_slots, top_k, out);
  const c10::cuda::CUDAGuard guard(x.device());
  throw_on_cuda_error(
      moe::gather_rows_cuda(p, c10::cuda::getCurrentCUDAStream(x.get_device()).stream()),
      "_moe_gather_rows");
}

void moe_gather_rows_cpu(const at::Tensor& x, const at::Tensor& sorted_slots, int64_t top_k,
                         at::Tensor& out) {
  TORCH_CHECK(x.is_cpu(), "_moe_gather_rows (CPU): x must be a CPU tensor");
  moe::gather_rows_host(moe_gather_params(x, sorted_slots, top_k, out));
}

void moe_activation_cuda(const at::Tensor& gate, const std::optional<at::Tensor>& value,
                         at::Tensor& out) {
  TORCH_CHECK(gate.is_cuda(), "_moe_activation: gate must be a CUDA tensor");
  const auto p = moe_activation_params(gate, value, out);
  const c10::cuda::CUDAGuard guard(gate.device());
  throw_on_cuda_error(
      moe::activation_cuda(p, c10::cuda::getCurrentCUDAStream(gate.get_device()).stream()),
      "_moe_activation");
}

void moe_activation_cpu(const at::Tensor& gate, const std::optional<at::Tensor>& value,
                        at::Tensor& out) {
  TORCH_CHECK(gate.is_cpu(), "_moe_activation (CPU): gate must be a CPU tensor");
  moe::activation_host(moe_activation_params(gate, value, out));
}

void moe_combine_cuda(const at::Tensor& y, const at::Tensor& sorted_slots, const at::Tensor& weights,
                      const std::optional<at::Tensor>& shared, at::Tensor& inverse, at::Tensor& out,
                      double scaling) {
  TORCH_CHECK(y.is_cuda(), "_moe_combine: y must be a CUDA tensor");
  const auto p = moe_combine_params(y, sorted_slots, weights, shared, inverse, out, scaling);
  const c10::cuda::CUDAGuard guard(y.device());
  throw_on_cuda_error(moe::combine_cuda(p, c10::cuda::getCurrentCUDAStream(y.get_device()).stream()),
                      "_moe_combine");
}

void moe_combine_cpu(const at::Tensor& y, const at::Tensor& sorted_slots, const at::Tensor& weights,
                     const std::optional<at::Tensor>& shared, at::Tensor& inverse, at::Tensor& out,
                     double scaling) {
  TORCH_CHECK(y.is_cpu(), "_moe_combine (CPU): y must be a CPU tensor");
  moe::combine_host(moe_combine_params(y, sorted_slots, weights, shared, inverse, out, scaling));
}

// ---- build info ----------------------------------------------------------------------------------

std::string build_info() {
  return std::string("{\"cuda_archs\": \"") + build_cuda_archs() + "\", \"cutlass_version\": \"" +
         build_cutlass_version() + "\", \"cuda_runtime_version\": " +
         std::to_string(build_cuda_runtime_version()) + "}";
}

}  // namespace
}  // namespace star_elastic

TORCH_LIBRARY(star_elastic, m) {
  m.def("_build_info() -> str", &star_elastic::build_info);
  // ssm
  m.def("_ssd_state_update(Tensor(a!) state, Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, "
        "Tensor? D, Tensor? z, Tensor? dt_bias, Tensor? slots, Tensor(b!) y, int heads_per_group, "
        "bool dt_softplus, float dt_min, float dt_max) -> ()");
  m.def("_causal_conv1d(Tensor x, Tensor weight, Tensor? bias, Tensor? initial_states, "
        "Tensor? cu_seqlens, Tensor(a!) y, int[] layout, bool silu) -> ()");
  m.def("_causal_conv1d_update(Tensor x, Tensor(a!) conv_state, Tensor weight, Tensor? bias, "
        "Tensor? state_indices, Tensor(b!) y, int[] layout, bool silu) -> ()");
  m.def("_gated_rmsnorm(Tensor y, Tensor? z, Tensor weight, Tensor(a!) out, int num_groups, "
        "int head_dim, int parent_group_width, int parent_head_dim, float eps, "
        "bool norm_before_gate) -> ()");
  m.def("_ssd_scan(Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "
        "Tensor? dt_bias, Tensor? initial_states, Tensor chunk_table, Tensor seq_table, "
        "Tensor(a!) y, Tensor(b!) final_states, Tensor(c!) workspace, int chunk_size, "
        "int heads_per_group, bool dt_softplus, float dt_min, float dt_max) -> ()");
  // moe
  m.def("_moe_grouped_gemm_workspace_size(int num_groups, int device) -> int",
        &star_elastic::moe_grouped_gemm_workspace_size);
  m.def("_moe_grouped_gemm(Tensor a, Tensor b, Tensor group_ends, Tensor(a!) out, Tensor(b!) workspace) -> ()");
  m.def("_moe_route(Tensor logits, Tensor? bias, Tensor? mask, Tensor(a!) weights, Tensor(b!) ids, "
        "int num_prefix, bool softmax, bool renormalize, float scaling) -> ()");
  m.def("_moe_align_workspace_size(int num_slots, int num_experts) -> int",
        &star_elastic::moe_align_workspace_size);
  m.def("_moe_align(Tensor ids, Tensor(a!) workspace, Tensor(b!) sorted_slots, Tensor(c!) counts, "
        "Tensor(d!) expert_offsets, Tensor(e!) block_offsets, int block_m) -> ()");
  m.def("_moe_gather_rows(Tensor x, Tensor sorted_slots, int top_k, Tensor(a!) out) -> ()");
  m.def("_moe_activation(Tensor gate, Tensor? value, Tensor(a!) out) -> ()");
  m.def("_moe_combine(Tensor y, Tensor sorted_slots, Tensor weights, Tensor? shared, "
        "Tensor(a!) inverse, Tensor(b!) out, float scaling) -> ()");
}

TORCH_LIBRARY_IMPL(star_elastic, CUDA, m) {
  // ssm
  m.impl("_ssd_state_update", &star_elastic::ssd_state_update_cuda);
  m.impl("_causal_conv1d", &star_elastic::causal_conv1d_cuda);
  m.impl("_causal_conv1d_update", &star_elastic::causal_conv1d_update_cuda);
  m.impl("_gated_rmsnorm", &star_elastic::gated_rmsnorm_cuda);
  m.impl("_ssd_scan", &star_elastic::ssd_scan_cuda);
  // moe
  m.impl("_moe_grouped_gemm", &star_elastic::moe_grouped_gemm_cuda);
  m.impl("_moe_route", &star_elastic::moe_route_cuda);
  m.impl("_moe_align", &star_elastic::moe_align_cuda);
  m.impl("_moe_gather_rows", &star_elastic::moe_gather_rows_cuda);
  m.impl("_moe_activation", &star_elastic::moe_activation_cuda);
  m.impl("_moe_combine", &star_elastic::moe_combine_cuda);
}

// CPU impls that run a CUDA kernel's per-thread code sequentially, so the kernels' index math is
// tested on machines without a GPU (moe/route.h, moe/align.h, moe/ffn_elementwise.h).
TORCH_LIBRARY_IMPL(star_elastic, CPU, m) {
  m.impl("_moe_route", &star_elastic::moe_route_cpu);
  m.impl("_moe_align", &star_elastic::moe_align_cpu);
  m.impl("_moe_gather_rows", &star_elastic::moe_gather_rows_cpu);
  m.impl("_moe_activation", &star_elastic::moe_activation_cpu);
  m.impl("_moe_combine", &star_elastic::moe_combine_cpu);
}

// ssm: CPU impls that run the CUDA kernels' per-thread code over the grid on the host (a test of the
// kernels' index math on machines without a GPU; not a fast CPU path: the public ops use the torch
// reference on CPU tensors).
TORCH_LIBRARY_IMPL(star_elastic, CPU, m) {
  m.impl("_causal_conv1d", &star_elastic::causal_conv1d_cpu);
  m.impl("_causal_conv1d_update", &star_elastic::causal_conv1d_update_cpu);
  m.impl("_gated_rmsnorm", &star_elastic::gated_rmsnorm_cpu);
}

// ssd_scan: the CPU impl runs the four SSD kernels' per-thread code over their grids on the host
// (csrc/ssm/ssd_scan.h): a test of the kernels without a GPU, not a fast CPU path.
TORCH_LIBRARY_IMPL(star_elastic, CPU, m) {
  m.impl("_ssd_scan", &star_elastic::ssd_scan_cpu);
}

// `import star_elastic_kernels._C` loads this library, which runs the registrations above. The
// module itself is empty: every entry point is a torch op.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
