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
#include "quant/fp8_quant.h"
#include "quant/fp8_gemm.h"
#include "quant/nvfp4_linear.h"
#include "ssm/ssd_state_update.h"
#include "moe/grouped_gemm.h"

namespace star_elastic {
namespace {

quant::FloatType float_type_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return quant::FloatType::kFloat32;
    case at::kHalf:
      return quant::FloatType::kFloat16;
    case at::kBFloat16:
      return quant::FloatType::kBFloat16;
    default:
      TORCH_CHECK(false, name, " must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

quant::StridedMatrix as_matrix(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.dim() == 2, name, " must be 2-D, got ", t.dim(), "-D");
  return {t.data_ptr(), float_type_of(t, name), t.size(0), t.size(1), t.stride(0), t.stride(1)};
}

void check_scales(const at::Tensor& scales, int64_t rows) {
  TORCH_CHECK(scales.is_cuda() && scales.scalar_type() == at::kFloat && scales.is_contiguous(),
              "scales must be a contiguous float32 CUDA tensor");
  TORCH_CHECK(scales.numel() == 1 || scales.numel() == rows,
              "scales must hold 1 or rows (", rows, ") values, got ", scales.numel());
}

void throw_on_cuda_error(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

// ---- quant: implementations (csrc/quant) ---------------------------------------------------------

void fp8_compute_scales_cuda(const at::Tensor& x, at::Tensor& scales, bool per_row) {
  const auto matrix = as_matrix(x, "x");
  check_scales(scales, per_row ? matrix.rows : 1);
  TORCH_CHECK(scales.numel() == (per_row ? matrix.rows : 1), "scales has the wrong size");
  const c10::cuda::CUDAGuard guard(x.device());
  throw_on_cuda_error(
      quant::fp8_compute_scales(matrix, per_row, scales.data_ptr<float>(),
                                c10::cuda::getCurrentCUDAStream(x.get_device()).stream()),
      "fp8_compute_scales");
}

void fp8_quantize_cuda(const at::Tensor& x, const at::Tensor& scales, at::Tensor& out) {
  const auto matrix = as_matrix(x, "x");
  check_scales(scales, matrix.rows);
  TORCH_CHECK(out.is_cuda() && out.is_contiguous() && out.element_size() == 1 &&
                  out.numel() == matrix.rows * matrix.cols,
              "out must be a contiguous 1-byte CUDA tensor with x.numel() elements");
  const c10::cuda::CUDAGuard guard(x.device());
  throw_on_cuda_error(
      quant::fp8_quantize(matrix, scales.data_ptr<float>(), scales.numel() == 1 ? 0 : 1,
                          static_cast<uint8_t*>(out.data_ptr()),
                          c10::cuda::getCurrentCUDAStream(x.get_device()).stream()),
      "fp8_quantize");
}

void fp8_dequantize_cuda(const at::Tensor& q, const at::Tensor& scales, at::Tensor& out) {
  TORCH_CHECK(q.is_cuda() && q.dim() == 2 && q.element_size() == 1, "q must be a 2-D fp8 CUDA tensor");
  check_scales(scales, q.size(0));
  TORCH_CHECK(out.is_cuda() && out.is_contiguous() && out.numel() == q.numel(),
              "out must be a contiguous CUDA tensor with q.numel() elements");
  const c10::cuda::CUDAGuard guard(q.device());
  throw_on_cuda_error(
      quant::fp8_dequantize(static_cast<const uint8_t*>(q.data_ptr()), q.size(0), q.size(1),
                            q.stride(0), q.stride(1), scales.data_ptr<float>(),
                            scales.numel() == 1 ? 0 : 1, out.data_ptr(), float_type_of(out, "out"),
                            c10::cuda::getCurrentCUDAStream(q.get_device()).stream()),
      "fp8_dequantize");
}

void nvfp4_linear_cuda(const at::Tensor& x, const at::Tensor& data, const at::Tensor& scale,
                       const at::Tensor& global_scale, const std::optional<at::Tensor>& bias,
                       at::Tensor& out, at::Tensor& workspace, int64_t split_k) {
  // Shapes were checked by the Python wrapper; these guard the raw-pointer contract only.
  TORCH_CHECK(x.is_cuda() && x.dim() == 2, "x must be a 2-D CUDA tensor");
  TORCH_CHECK(x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16,
              "x must be float16 or bfloat16");
  TORCH_CHECK(data.scalar_type() == at::kByte && data.dim() == 2 &&
                  (data.size(1) == 0 || data.stride(1) == 1),
              "data must be 2-D uint8 with unit K stride");
  TORCH_CHECK(scale.element_size() == 1 && scale.dim() == 2 &&
                  (scale.size(1) == 0 || scale.stride(1) == 1),
              "scale must be 2-D 1-byte with unit K stride");
  TORCH_CHECK(data.stride(0) % 4 == 0 && reinterpret_cast<uintptr_t>(data.data_ptr()) % 4 == 0,
              "data rows must be 4-byte aligned");
  TORCH_CHECK(global_scale.scalar_type() == at::kFloat && global_scale.numel() == 1,
              "global_scale must be one float32");
  TORCH_CHECK(out.scalar_type() == x.scalar_type() && out.size(0) == x.size(0) &&
                  out.size(1) == data.size(0) && out.stride(1) == 1,
              "out must be (M, N) in x's dtype with unit column stride");
  TORCH_CHECK(split_k <= 1 || (workspace.scalar_type() == at::kFloat && workspace.is_contiguous() &&
                               workspace.numel() == out.numel()),
              "workspace must be a contiguous float32 (M, N) tensor when split_k > 1");
  quant::Nvfp4LinearParams p{};
  p.x = x.data_ptr();
  p.x_stride_m = x.stride(0);
  p.x_stride_k = x.stride(1);
  p.act_type = float_type_of(x, "x");
  p.data = static_cast<const uint8_t*>(data.data_ptr());
  p.data_stride_n = data.stride(0);
  p.scale = static_cast<const uint8_t*>(scale.data_ptr());
  p.scale_stride_n = scale.stride(0);
  p.global_scale = global_scale.data_ptr<float>();
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == x.scalar_type() && bias->is_contiguous() &&
                    bias->numel() == data.size(0),
                "bias must be a contiguous (N,) tensor in x's dtype");
    p.bias = bias->data_ptr();
  }
  p.out = out.data_ptr();
  p.out_stride_m = out.stride(0);
  p.workspace = split_k > 1 ? workspace.data_ptr<float>() : nullptr;
  p.M = x.size(0);
  p.N = data.size(0);
  p.K = x.size(1);
  p.split_k = static_cast<int>(split_k);
  const c10::cuda::CUDAGuard guard(x.device());
  throw_on_cuda_error(
      quant::nvfp4_linear(p, c10::cuda::getCurrentCUDAStream(x.get_device()).stream()),
      "nvfp4_linear");
}

void fp8_gemm_sm90_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& scale_a,
                        const at::Tensor& scale_b, const std::optional<at::Tensor>& bias,
                        at::Tensor& out, at::Tensor& workspace) {
  TORCH_CHECK(a.is_cuda() && a.dim() == 2 && a.element_size() == 1 && a.stride(1) == 1,
              "a must be a 2-D 1-byte CUDA tensor with unit K stride");
  TORCH_CHECK(b.is_cuda() && b.dim() == 2 && b.element_size() == 1 && b.stride(1) == 1 &&
                  b.size(1) == a.size(1),
              "b must be a 2-D 1-byte (N, K) CUDA tensor with unit K stride");
  TORCH_CHECK(scale_a.scalar_type() == at::kFloat && scale_a.is_contiguous() &&
                  scale_a.numel() == a.size(0),
              "scale_a must be a contiguous float32 (M,) tensor");
  TORCH_CHECK(scale_b.scalar_type() == at::kFloat && scale_b.is_contiguous() &&
                  scale_b.numel() == b.size(0),
              "scale_b must be a contiguous float32 (N,) tensor");
  TORCH_CHECK(out.size(0) == a.size(0) && out.size(1) == b.size(0) && out.stride(1) == 1,
              "out must be (M, N) with unit column stride");
  TORCH_CHECK(a.size(1) % 16 == 0 && a.stride(0) % 16 == 0 && b.stride(0) % 16 == 0 &&
                  out.size(1) % 8 == 0 && out.stride(0) % 8 == 0,
              "the CUTLASS FP8 GEMM needs K and the row strides of a and b to be multiples of 16 "
              "and N and out's row stride multiples of 8");
  TORCH_CHECK(workspace.is_cuda() && workspace.is_contiguous(), "workspace must be contiguous");
  quant::Fp8GemmParams p{};
  p.a = static_cast<const uint8_t*>(a.data_ptr());
  p.lda = a.stride(0);
  p.b = static_cast<const uint8_t*>(b.data_ptr());
  p.ldb = b.stride(0);
  p.scale_a = scale_a.data_ptr<float>();
  p.scale_b = scale_b.data_ptr<float>();
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == out.scalar_type() && bias->is_contiguous() &&
                    bias->numel() == b.size(0),
                "bias must be a contiguous (N,) tensor in out's dtype");
    p.bias = bias->data_ptr();
  }
  p.out = out.data_ptr();
  p.ldd = out.stride(0);
  p.out_type = float_type_of(out, "out");
  p.M = a.size(0);
  p.N = b.size(0);
  p.K = a.size(1);
  p.workspace = workspace.data_ptr();
  p.workspace_bytes = static_cast<size_t>(workspace.numel());
  const c10::cuda::CUDAGuard guard(a.device());
  throw_on_cuda_error(
      quant::fp8_gemm_sm90(p, c10::cuda::getCurrentCUDAStream(a.get_device()).stream()),
      "fp8_gemm_sm90");
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
  m.def("_fp8_compute_scales(Tensor x, Tensor(a!) scales, bool per_row) -> ()");
  m.def("_fp8_quantize(Tensor x, Tensor scales, Tensor(a!) out) -> ()");
  m.def("_fp8_dequantize(Tensor q, Tensor scales, Tensor(a!) out) -> ()");
  // quant (more)
  m.def("_nvfp4_linear(Tensor x, Tensor data, Tensor scale, Tensor global_scale, Tensor? bias, "
        "Tensor(a!) out, Tensor(b!) workspace, int split_k) -> ()");
  m.def("_fp8_gemm_sm90(Tensor a, Tensor b, Tensor scale_a, Tensor scale_b, Tensor? bias, "
        "Tensor(a!) out, Tensor(b!) workspace) -> ()");
  // ssm
  m.def("_ssd_state_update(Tensor(a!) state, Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, "
        "Tensor? D, Tensor? z, Tensor? dt_bias, Tensor? slots, Tensor(b!) y, int heads_per_group, "
        "bool dt_softplus, float dt_min, float dt_max) -> ()");
  // moe
  m.def("_moe_grouped_gemm_workspace_size(int num_groups, int device) -> int",
        &star_elastic::moe_grouped_gemm_workspace_size);
  m.def("_moe_grouped_gemm(Tensor a, Tensor b, Tensor group_ends, Tensor(a!) out, Tensor(b!) workspace) -> ()");
}

TORCH_LIBRARY_IMPL(star_elastic, CUDA, m) {
  m.impl("_fp8_compute_scales", &star_elastic::fp8_compute_scales_cuda);
  m.impl("_fp8_quantize", &star_elastic::fp8_quantize_cuda);
  m.impl("_fp8_dequantize", &star_elastic::fp8_dequantize_cuda);
  // quant (more)
  m.impl("_nvfp4_linear", &star_elastic::nvfp4_linear_cuda);
  m.impl("_fp8_gemm_sm90", &star_elastic::fp8_gemm_sm90_cuda);
  // ssm
  m.impl("_ssd_state_update", &star_elastic::ssd_state_update_cuda);
  // moe
  m.impl("_moe_grouped_gemm", &star_elastic::moe_grouped_gemm_cuda);
}

// `import star_elastic_kernels._C` loads this library, which runs the registrations above. The
// module itself is empty: every entry point is a torch op.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
