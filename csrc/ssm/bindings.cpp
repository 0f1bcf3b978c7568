// The SSM family's torch bindings: the private op schemas (TORCH_LIBRARY_FRAGMENT, next to the
// other families' fragments of the `star_elastic` library) and their CUDA and CPU impls.
//
// The public ops live in Python (star_elastic_kernels/ssm/*), where argument checking, output
// allocation and backend choice happen; these ops only fill preallocated outputs. Each op has one
// params builder used by the CUDA impl (kernel launch) and the CPU impl, which runs the CUDA
// kernels' per-thread code over the grid on the host: a test of the kernels' indexing and
// arithmetic on machines without a GPU, not a fast CPU path (the public ops run the torch
// reference on CPU tensors). Fake (meta) impls are registered in Python
// (star_elastic_kernels/ssm/_fakes.py).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <initializer_list>

#include "ssm/causal_conv1d.h"
#include "ssm/gated_rmsnorm.h"
#include "ssm/ssd_scan.h"
#include "ssm/ssd_state_update.h"

namespace star_elastic {
namespace {

void throw_on_cuda_error(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

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

void check_ssm_device(const at::Tensor& t, const char* name, const at::Tensor& x, bool cuda) {
  TORCH_CHECK(t.device() == x.device(), name, " must be on x's device (", x.device(), ")");
  TORCH_CHECK(cuda ? t.is_cuda() : t.is_cpu(), name, cuda ? " must be a CUDA tensor"
                                                         : " must be a CPU tensor");
}

int32_t* error_word(const at::Tensor& errors, const at::Tensor& x, bool cuda) {
  check_ssm_device(errors, "errors", x, cuda);
  TORCH_CHECK(errors.scalar_type() == at::kInt && errors.numel() == 1 && errors.is_contiguous(),
              "errors must be a (1,) int32 tensor (the device error word)");
  return errors.data_ptr<int32_t>();
}

ssm::StateUpdateParams make_state_update_params(
    at::Tensor& state, const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
    const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& D,
    const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& dt_bias,
    const std::optional<at::Tensor>& slots, at::Tensor& y, at::Tensor& errors,
    int64_t heads_per_group, bool dt_softplus, double dt_min, double dt_max, bool cuda) {
  // Shapes were checked by the Python wrapper; these guard the raw-pointer contract only.
  TORCH_CHECK(cuda ? x.is_cuda() : x.is_cpu(), "x must be a ", cuda ? "CUDA" : "CPU", " tensor");
  for (const at::Tensor* t : {static_cast<const at::Tensor*>(&state), &dt, &A, &B, &C,
                              static_cast<const at::Tensor*>(&y)})
    check_ssm_device(*t, "every tensor", x, cuda);
  TORCH_CHECK(state.dim() == 4, "state must be 4-D (slots, H, P, N)");
  TORCH_CHECK(x.dim() == 3 && y.sizes() == x.sizes() && y.scalar_type() == x.scalar_type(),
              "x must be 3-D and y like x");
  TORCH_CHECK(B.dim() == 3 && C.sizes() == B.sizes() && B.stride(2) == 1 && C.stride(2) == 1,
              "B and C must be (b, G, N) with unit inner stride");
  TORCH_CHECK(B.scalar_type() == x.scalar_type() && C.scalar_type() == x.scalar_type(),
              "B and C must have x's dtype");
  TORCH_CHECK(x.stride(2) == 1 && y.stride(2) == 1, "x and y need a unit inner stride");
  TORCH_CHECK(B.size(2) <= 4096, "state size N must be <= 4096");
  TORCH_CHECK(A.dim() == 1 && B.size(1) >= 1 && A.size(0) % B.size(1) == 0 &&
                  heads_per_group >= 1 && heads_per_group <= A.size(0) / B.size(1) &&
                  x.size(1) == B.size(1) * heads_per_group && state.size(1) == A.size(0) &&
                  state.size(2) >= x.size(2) && state.size(3) == B.size(2),
              "state (slots, H, P, N), x (b, G*k, p), A (H,), B (b, G, N) do not fit together");
  ssm::StateUpdateParams p{};
  p.state = state.data_ptr();
  p.state_type = ssm_dtype_of(state, "state");
  for (int i = 0; i < 4; ++i) p.state_stride[i] = state.stride(i);
  p.num_slots = state.size(0);
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
    check_ssm_device(*D, "D", x, cuda);
    TORCH_CHECK(D->size(0) == A.size(0) && (D->dim() == 1 || D->size(1) >= x.size(2)),
                "D must be (H,) or (H, P)");
    p.D = D->data_ptr();
    p.D_type = ssm_dtype_of(*D, "D");
    p.D_stride_h = D->stride(0);
    p.D_stride_p = D->dim() == 2 ? D->stride(1) : 0;
  }
  if (z.has_value()) {
    check_ssm_device(*z, "z", x, cuda);
    TORCH_CHECK(z->sizes() == x.sizes() && z->stride(2) == 1 && z->scalar_type() == x.scalar_type(),
                "z must be like x");
    p.z = z->data_ptr();
    p.z_stride_b = z->stride(0);
    p.z_stride_h = z->stride(1);
  }
  if (dt_bias.has_value()) {
    check_ssm_device(*dt_bias, "dt_bias", x, cuda);
    p.dt_bias = dt_bias->data_ptr();
    p.dt_bias_type = ssm_dtype_of(*dt_bias, "dt_bias");
    p.dt_bias_stride = dt_bias->stride(0);
  }
  if (slots.has_value()) {
    check_ssm_device(*slots, "state_indices", x, cuda);
    TORCH_CHECK(slots->is_contiguous() && slots->numel() == x.size(0) &&
                    (slots->scalar_type() == at::kInt || slots->scalar_type() == at::kLong),
                "state_indices must be contiguous (b,) int32 or int64");
    p.slots = slots->data_ptr();
    p.slots_int64 = slots->scalar_type() == at::kLong;
  } else {
    TORCH_CHECK(x.size(0) <= state.size(0), "batch exceeds the cache's slots");
  }
  p.errors = error_word(errors, x, cuda);
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
  return p;
}

void ssd_state_update_cuda(at::Tensor& state, const at::Tensor& x, const at::Tensor& dt,
                           const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                           const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                           const std::optional<at::Tensor>& dt_bias,
                           const std::optional<at::Tensor>& slots, at::Tensor& y,
                           at::Tensor& errors, int64_t heads_per_group, bool dt_softplus,
                           double dt_min, double dt_max) {
  const auto p = make_state_update_params(state, x, dt, A, B, C, D, z, dt_bias, slots, y, errors,
                                          heads_per_group, dt_softplus, dt_min, dt_max, true);
  const c10::cuda::CUDAGuard guard(x.device());
  throw_on_cuda_error(
      ssm::ssd_state_update(p, c10::cuda::getCurrentCUDAStream(x.get_device()).stream()),
      "ssd_state_update");
}

void ssd_state_update_cpu(at::Tensor& state, const at::Tensor& x, const at::Tensor& dt,
                          const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                          const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                          const std::optional<at::Tensor>& dt_bias,
                          const std::optional<at::Tensor>& slots, at::Tensor& y,
                          at::Tensor& errors, int64_t heads_per_group, bool dt_softplus,
                          double dt_min, double dt_max) {
  ssm::ssd_state_update_host(make_state_update_params(state, x, dt, A, B, C, D, z, dt_bias, slots,
                                                      y, errors, heads_per_group, dt_softplus,
                                                      dt_min, dt_max, false));
}

// causal_conv1d / causal_conv1d_update / gated_rmsnorm: one params builder per op, used by the CUDA
// impl (kernel launch) and the CPU impl (the same per-thread code run over the grid on the host,
// to test the CUDA code's index math without a GPU; see csrc/ssm/causal_conv1d.h).


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
                                                  at::Tensor& y, at::Tensor& errors,
                                                  at::IntArrayRef layout, bool silu, bool cuda) {
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
  p.num_slots = conv_state.size(0);
  p.errors = error_word(errors, x, cuda);
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
                               at::Tensor& errors,
                               at::IntArrayRef layout, bool silu) {
  const auto p = make_conv1d_update_params(x, conv_state, weight, bias, state_indices, y, errors,
                                           layout, silu, true);
  const c10::cuda::CUDAGuard guard(x.device());
  throw_on_cuda_error(
      ssm::causal_conv1d_update(p, c10::cuda::getCurrentCUDAStream(x.get_device()).stream()),
      "causal_conv1d_update");
}

void causal_conv1d_update_cpu(const at::Tensor& x, at::Tensor& conv_state,
                              const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                              const std::optional<at::Tensor>& state_indices, at::Tensor& y,
                              at::Tensor& errors,
                              at::IntArrayRef layout, bool silu) {
  const auto p = make_conv1d_update_params(x, conv_state, weight, bias, state_indices, y, errors,
                                           layout, silu, false);
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

// ssd_scan (chunked SSD forward): one params builder for the CUDA impl (its kernel launches) and
// the CPU impl (the same per-thread code run over the grid on the host; see csrc/ssm/ssd_scan.h).

ssm::ScanParams make_ssd_scan_params(
    const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& C, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
    const std::optional<at::Tensor>& dt_bias, const std::optional<at::Tensor>& initial_states,
    const at::Tensor& chunk_table, const at::Tensor& seq_table, at::Tensor& y,
    at::Tensor& final_states, at::Tensor& workspace, at::Tensor& errors, int64_t chunk_size,
    int64_t heads_per_group, bool dt_softplus, double dt_min, double dt_max,
    at::ScalarType chain_dtype, bool cuda) {
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
                  workspace.numel() >= ssm::ssd_scan_workspace_floats(chunks, heads, groups,
                                                                      head_dim, state_size,
                                                                      chunk_size),
              "workspace must be a contiguous float32 tensor of at least "
              "ssd_scan_workspace_floats(chunks, H', G, p, N, chunk_size) values (csrc/ssm/ssd_scan.h)");
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
  TORCH_CHECK(chain_dtype == at::kFloat ||
                  (chain_dtype == x.scalar_type() && x.scalar_type() != at::kFloat),
              "chain_dtype must be float32 or x's 16-bit dtype, got ", chain_dtype);
  p.chain_type = chain_dtype == at::kFloat ? ssm::DType::kFloat32 : p.act_type;
  p.errors = error_word(errors, x, cuda);
  p.num_chunks = chunks;
  p.num_seqs = seqs;
  p.chain_rows = x.size(0) > 1 ? x.size(0) : 1;  // batched rows; packed sequences have batch 1
  TORCH_CHECK(chunks % p.chain_rows == 0,
              "chunk_table must hold the same number of chunks for every batch row of x");
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
                   at::Tensor& workspace, at::Tensor& errors, int64_t chunk_size,
                   int64_t heads_per_group, bool dt_softplus, double dt_min, double dt_max,
                   at::ScalarType chain_dtype) {
  const auto p = make_ssd_scan_params(x, dt, A, B, C, D, z, dt_bias, initial_states, chunk_table,
                                      seq_table, y, final_states, workspace, errors, chunk_size,
                                      heads_per_group, dt_softplus, dt_min, dt_max, chain_dtype,
                                      true);
  const c10::cuda::CUDAGuard guard(x.device());
  throw_on_cuda_error(ssm::ssd_scan(p, c10::cuda::getCurrentCUDAStream(x.get_device()).stream()),
                      "ssd_scan");
}

void ssd_scan_cpu(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                  const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& D,
                  const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& dt_bias,
                  const std::optional<at::Tensor>& initial_states, const at::Tensor& chunk_table,
                  const at::Tensor& seq_table, at::Tensor& y, at::Tensor& final_states,
                  at::Tensor& workspace, at::Tensor& errors, int64_t chunk_size,
                  int64_t heads_per_group, bool dt_softplus, double dt_min, double dt_max,
                  at::ScalarType chain_dtype) {
  ssm::ssd_scan_host(make_ssd_scan_params(x, dt, A, B, C, D, z, dt_bias, initial_states,
                                          chunk_table, seq_table, y, final_states, workspace,
                                          errors, chunk_size, heads_per_group, dt_softplus,
                                          dt_min, dt_max, chain_dtype, false));
}

}  // namespace
}  // namespace star_elastic

TORCH_LIBRARY_FRAGMENT(star_elastic, m) {
  m.def("_ssd_state_update(Tensor(a!) state, Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, "
        "Tensor? D, Tensor? z, Tensor? dt_bias, Tensor? slots, Tensor(b!) y, Tensor(c!) errors, "
        "int heads_per_group, bool dt_softplus, float dt_min, float dt_max) -> ()");
  m.def("_causal_conv1d(Tensor x, Tensor weight, Tensor? bias, Tensor? initial_states, "
        "Tensor? cu_seqlens, Tensor(a!) y, int[] layout, bool silu) -> ()");
  m.def("_causal_conv1d_update(Tensor x, Tensor(a!) conv_state, Tensor weight, Tensor? bias, "
        "Tensor? state_indices, Tensor(b!) y, Tensor(c!) errors, int[] layout, bool silu) -> ()");
  m.def("_gated_rmsnorm(Tensor y, Tensor? z, Tensor weight, Tensor(a!) out, int num_groups, "
        "int head_dim, int parent_group_width, int parent_head_dim, float eps, "
        "bool norm_before_gate) -> ()");
  m.def("_ssd_scan(Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "
        "Tensor? dt_bias, Tensor? initial_states, Tensor chunk_table, Tensor seq_table, "
        "Tensor(a!) y, Tensor(b!) final_states, Tensor(c!) workspace, Tensor(d!) errors, "
        "int chunk_size, int heads_per_group, bool dt_softplus, float dt_min, float dt_max, "
        "ScalarType chain_dtype) -> ()");
}

TORCH_LIBRARY_IMPL(star_elastic, CUDA, m) {
  m.impl("_ssd_state_update", &star_elastic::ssd_state_update_cuda);
  m.impl("_causal_conv1d", &star_elastic::causal_conv1d_cuda);
  m.impl("_causal_conv1d_update", &star_elastic::causal_conv1d_update_cuda);
  m.impl("_gated_rmsnorm", &star_elastic::gated_rmsnorm_cuda);
  m.impl("_ssd_scan", &star_elastic::ssd_scan_cuda);
}

TORCH_LIBRARY_IMPL(star_elastic, CPU, m) {
  m.impl("_ssd_state_update", &star_elastic::ssd_state_update_cpu);
  m.impl("_causal_conv1d", &star_elastic::causal_conv1d_cpu);
  m.impl("_causal_conv1d_update", &star_elastic::causal_conv1d_update_cpu);
  m.impl("_gated_rmsnorm", &star_elastic::gated_rmsnorm_cpu);
  m.impl("_ssd_scan", &star_elastic::ssd_scan_cpu);
}
