// The quant family's private ops (csrc/quant): schemas, and their CUDA and CPU implementations.
//
// As in csrc/torch_bindings.cpp: the public ops live in Python (star_elastic_kernels/quant), which
// checks arguments and allocates outputs; these only fill preallocated outputs. The CPU impls run
// the CUDA kernels' per-thread code on the host (a test of that code without a GPU, not a fast
// CPU path: the public ops use the torch reference on CPU tensors).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>

#include "quant/fp8_gemm.h"
#include "quant/fp8_quant.h"
#include "quant/nvfp4_marlin.h"

namespace star_elastic {
namespace {

void throw_on_cuda_error(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

cudaStream_t stream_of(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.get_device()).stream();
}

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
  TORCH_CHECK(t.dim() == 2, name, " must be 2-D, got ", t.dim(), "-D");
  return {t.data_ptr(), float_type_of(t, name), t.size(0), t.size(1), t.stride(0), t.stride(1)};
}

void check_scales(const at::Tensor& scales, int64_t rows) {
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous(),
              "scales must be a contiguous float32 tensor");
  TORCH_CHECK(scales.numel() == 1 || scales.numel() == rows,
              "scales must hold 1 or rows (", rows, ") values, got ", scales.numel());
}

void check_device(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.device() == like.device(), name, " must be on ", like.device(), ", got ",
              t.device());
}


void fp8_compute_scales_cuda(const at::Tensor& x, at::Tensor& scales, bool per_row) {
  TORCH_CHECK(x.is_cuda(), "x must be a CUDA tensor");
  const auto matrix = as_matrix(x, "x");
  check_scales(scales, per_row ? matrix.rows : 1);
  TORCH_CHECK(scales.numel() == (per_row ? matrix.rows : 1), "scales has the wrong size");
  const c10::cuda::CUDAGuard guard(x.device());
  throw_on_cuda_error(
      quant::fp8_compute_scales(matrix, per_row, scales.data_ptr<float>(),
                                stream_of(x)),
      "fp8_compute_scales");
}

void fp8_quantize_cuda(const at::Tensor& x, const at::Tensor& scales, at::Tensor& out) {
  TORCH_CHECK(x.is_cuda(), "x must be a CUDA tensor");
  const auto matrix = as_matrix(x, "x");
  check_scales(scales, matrix.rows);
  TORCH_CHECK(out.is_cuda() && out.is_contiguous() && out.element_size() == 1 &&
                  out.numel() == matrix.rows * matrix.cols,
              "out must be a contiguous 1-byte CUDA tensor with x.numel() elements");
  const c10::cuda::CUDAGuard guard(x.device());
  throw_on_cuda_error(
      quant::fp8_quantize(matrix, scales.data_ptr<float>(), scales.numel() == 1 ? 0 : 1,
                          static_cast<uint8_t*>(out.data_ptr()),
                          stream_of(x)),
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
                            stream_of(q)),
      "fp8_dequantize");
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
      quant::fp8_gemm_sm90(p, stream_of(a)),
      "fp8_gemm_sm90");
}

// Dynamic per-token quantization in one kernel (row amax, scale and codes).
quant::StridedMatrix per_row_params(const at::Tensor& x, const at::Tensor& scales,
                                    const at::Tensor& out) {
  const auto matrix = as_matrix(x, "x");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() &&
                  scales.numel() == matrix.rows,
              "_fp8_quantize_per_row: scales must be a contiguous float32 (rows,) tensor");
  TORCH_CHECK(out.is_contiguous() && out.element_size() == 1 && out.numel() == x.numel(),
              "_fp8_quantize_per_row: out must be a contiguous 1-byte tensor like x");
  check_device(scales, "scales", x);
  check_device(out, "out", x);
  return matrix;
}

void fp8_quantize_per_row_cuda(const at::Tensor& x, at::Tensor& scales, at::Tensor& out) {
  TORCH_CHECK(x.is_cuda(), "_fp8_quantize_per_row: x must be a CUDA tensor");
  const auto matrix = per_row_params(x, scales, out);
  const c10::cuda::CUDAGuard guard(x.device());
  throw_on_cuda_error(quant::fp8_quantize_per_row(matrix, scales.data_ptr<float>(),
                                                  static_cast<uint8_t*>(out.data_ptr()),
                                                  stream_of(x)),
                      "_fp8_quantize_per_row");
}

void fp8_quantize_per_row_cpu(const at::Tensor& x, at::Tensor& scales, at::Tensor& out) {
  TORCH_CHECK(x.is_cpu(), "_fp8_quantize_per_row (CPU): x must be a CPU tensor");
  const auto matrix = per_row_params(x, scales, out);
  quant::fp8_quantize_per_row_host(matrix, scales.data_ptr<float>(),
                                   static_cast<uint8_t*>(out.data_ptr()));
}

// ---- NVFP4 prepacked (Marlin-class) ---------------------------------------------------------------

void check_tiles(const at::Tensor& t, const char* name, int64_t bytes_per_tile) {
  TORCH_CHECK(t.scalar_type() == at::kByte && t.dim() == 3 && t.size(2) == bytes_per_tile &&
                  t.stride(2) == 1,
              name, " must be uint8 (tiles_n, tiles_k, ", bytes_per_tile,
              ") with unit innermost stride");
}

quant::Nvfp4PrepackParams prepack_params(const at::Tensor& data, const at::Tensor& scale,
                                         at::Tensor& codes, at::Tensor& scales) {
  TORCH_CHECK(data.scalar_type() == at::kByte && data.dim() == 2 &&
                  (data.size(1) == 0 || data.stride(1) == 1),
              "_nvfp4_prepack: data must be 2-D uint8 with unit K stride");
  TORCH_CHECK(scale.element_size() == 1 && scale.dim() == 2 && scale.size(0) == data.size(0) &&
                  data.size(1) == 8 * scale.size(1) && (scale.size(1) == 0 || scale.stride(1) == 1),
              "_nvfp4_prepack: scale must be (N, K/16) 1-byte with unit K stride");
  check_tiles(codes, "_nvfp4_prepack: codes", quant::kMarlinTileCodeBytes);
  check_tiles(scales, "_nvfp4_prepack: scales", quant::kMarlinTileScaleBytes);
  const int64_t N = data.size(0), K = 16 * scale.size(1);
  TORCH_CHECK(codes.is_contiguous() && scales.is_contiguous() &&
                  codes.size(0) == (N + 63) / 64 && codes.size(1) == (K + 63) / 64 &&
                  scales.size(0) == codes.size(0) && scales.size(1) == codes.size(1),
              "_nvfp4_prepack: codes and scales must be contiguous (ceil(N/64), ceil(K/64), .)");
  for (const at::Tensor* t : {&scale, static_cast<const at::Tensor*>(&codes),
                              static_cast<const at::Tensor*>(&scales)})
    check_device(*t, "_nvfp4_prepack: every tensor", data);
  quant::Nvfp4PrepackParams p{};
  p.data = static_cast<const uint8_t*>(data.data_ptr());
  p.data_stride_n = data.stride(0);
  p.scale = static_cast<const uint8_t*>(scale.data_ptr());
  p.scale_stride_n = scale.stride(0);
  p.N = N;
  p.K = K;
  p.codes = static_cast<uint8_t*>(codes.data_ptr());
  p.scales = static_cast<uint8_t*>(scales.data_ptr());
  return p;
}

void nvfp4_prepack_cuda(const at::Tensor& data, const at::Tensor& scale, at::Tensor& codes,
                        at::Tensor& scales) {
  TORCH_CHECK(data.is_cuda(), "_nvfp4_prepack: data must be a CUDA tensor");
  const auto p = prepack_params(data, scale, codes, scales);
  const c10::cuda::CUDAGuard guard(data.device());
  throw_on_cuda_error(quant::nvfp4_prepack(p, stream_of(data)), "_nvfp4_prepack");
}

void nvfp4_prepack_cpu(const at::Tensor& data, const at::Tensor& scale, at::Tensor& codes,
                       at::Tensor& scales) {
  TORCH_CHECK(data.is_cpu(), "_nvfp4_prepack (CPU): data must be a CPU tensor");
  quant::nvfp4_prepack_host(prepack_params(data, scale, codes, scales));
}

// The weight part of the params: a prepacked weight or a child view, (N, K) active.
quant::Nvfp4MarlinParams prepacked_params(const at::Tensor& codes, const at::Tensor& scales,
                                          int64_t N, int64_t K, const at::Tensor& like) {
  check_tiles(codes, "codes", quant::kMarlinTileCodeBytes);
  check_tiles(scales, "scales", quant::kMarlinTileScaleBytes);
  TORCH_CHECK(K % 16 == 0, "in_features must be a multiple of 16, got ", K);
  TORCH_CHECK(codes.size(0) * 64 >= N && codes.size(1) * 64 >= K &&
                  scales.size(0) == codes.size(0) && scales.size(1) == codes.size(1),
              "codes / scales (", codes.size(0), ", ", codes.size(1),
              " tiles) do not cover the active (", N, ", ", K, ") weight");
  TORCH_CHECK(codes.stride(0) % 16 == 0 && codes.stride(1) % 16 == 0 &&
                  scales.stride(0) % 16 == 0 && scales.stride(1) % 16 == 0 &&
                  reinterpret_cast<uintptr_t>(codes.data_ptr()) % 16 == 0 &&
                  reinterpret_cast<uintptr_t>(scales.data_ptr()) % 16 == 0,
              "codes and scales tiles must be 16-byte aligned");
  check_device(codes, "codes", like);
  check_device(scales, "scales", like);
  quant::Nvfp4MarlinParams p{};
  p.codes = static_cast<const uint8_t*>(codes.data_ptr());
  p.codes_stride_tn = codes.stride(0);
  p.codes_stride_tk = codes.stride(1);
  p.scales = static_cast<const uint8_t*>(scales.data_ptr());
  p.scales_stride_tn = scales.stride(0);
  p.scales_stride_tk = scales.stride(1);
  p.N = N;
  p.K = K;
  p.split = 1;
  return p;
}

quant::Nvfp4MarlinParams operands_params(const at::Tensor& codes, const at::Tensor& scales,
                                         at::Tensor& out) {
  TORCH_CHECK(out.dim() == 2 && (out.scalar_type() == at::kHalf ||
                                 out.scalar_type() == at::kBFloat16) &&
                  (out.size(1) == 0 || out.stride(1) == 1),
              "_nvfp4_prepacked_operands: out must be 2-D float16 / bfloat16, unit column stride");
  auto p = prepacked_params(codes, scales, out.size(0), out.size(1), out);
  p.act_type = float_type_of(out, "out");
  p.out = out.data_ptr();
  p.out_stride_m = out.stride(0);
  return p;
}

void nvfp4_prepacked_operands_cuda(const at::Tensor& codes, const at::Tensor& scales,
                                   at::Tensor& out) {
  TORCH_CHECK(out.is_cuda(), "_nvfp4_prepacked_operands: out must be a CUDA tensor");
  const auto p = operands_params(codes, scales, out);
  const c10::cuda::CUDAGuard guard(out.device());
  throw_on_cuda_error(quant::nvfp4_prepacked_operands(p, stream_of(out)),
                      "_nvfp4_prepacked_operands");
}

void nvfp4_prepacked_operands_cpu(const at::Tensor& codes, const at::Tensor& scales,
                                  at::Tensor& out) {
  TORCH_CHECK(out.is_cpu(), "_nvfp4_prepacked_operands (CPU): out must be a CPU tensor");
  quant::nvfp4_prepacked_operands_host(operands_params(codes, scales, out));
}

quant::Nvfp4MarlinParams marlin_params(const at::Tensor& x, const at::Tensor& codes,
                                       const at::Tensor& scales, const at::Tensor& global_scale,
                                       const std::optional<at::Tensor>& bias, at::Tensor& out,
                                       int64_t split) {
  TORCH_CHECK(x.dim() == 2 && (x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16),
              "_nvfp4_marlin_linear: x must be 2-D float16 or bfloat16");
  TORCH_CHECK((x.size(1) == 0 || x.stride(1) == 1) && x.stride(0) % 8 == 0 &&
                  reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0,
              "_nvfp4_marlin_linear: x rows must be contiguous and 16-byte aligned");
  TORCH_CHECK(out.scalar_type() == x.scalar_type() && out.dim() == 2 &&
                  out.size(0) == x.size(0) && (out.size(1) == 0 || out.stride(1) == 1),
              "_nvfp4_marlin_linear: out must be (M, N) in x's dtype with unit column stride");
  TORCH_CHECK(global_scale.scalar_type() == at::kFloat && global_scale.numel() == 1,
              "_nvfp4_marlin_linear: global_scale must be one float32");
  TORCH_CHECK(split >= 1 && split <= quant::kMarlinMaxSplit, "_nvfp4_marlin_linear: split must be in [1, ",
              quant::kMarlinMaxSplit, "], got ", split);
  check_device(global_scale, "global_scale", x);
  check_device(out, "out", x);
  auto p = prepacked_params(codes, scales, out.size(1), x.size(1), x);
  p.x = x.data_ptr();
  p.x_stride_m = x.stride(0);
  p.act_type = float_type_of(x, "x");
  p.global_scale = global_scale.data_ptr<float>();
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == x.scalar_type() && bias->is_contiguous() &&
                    bias->numel() == out.size(1),
                "_nvfp4_marlin_linear: bias must be a contiguous (N,) tensor in x's dtype");
    check_device(*bias, "bias", x);
    p.bias = bias->data_ptr();
  }
  p.out = out.data_ptr();
  p.out_stride_m = out.stride(0);
  p.M = x.size(0);
  p.split = static_cast<int>(split);
  return p;
}

void nvfp4_marlin_linear_cuda(const at::Tensor& x, const at::Tensor& codes,
                              const at::Tensor& scales, const at::Tensor& global_scale,
                              const std::optional<at::Tensor>& bias, at::Tensor& out,
                              int64_t split) {
  TORCH_CHECK(x.is_cuda(), "_nvfp4_marlin_linear: x must be a CUDA tensor");
  const auto p = marlin_params(x, codes, scales, global_scale, bias, out, split);
  const c10::cuda::CUDAGuard guard(x.device());
  throw_on_cuda_error(quant::nvfp4_marlin_linear(p, stream_of(x)), "_nvfp4_marlin_linear");
}

void nvfp4_marlin_linear_cpu(const at::Tensor& x, const at::Tensor& codes,
                             const at::Tensor& scales, const at::Tensor& global_scale,
                             const std::optional<at::Tensor>& bias, at::Tensor& out,
                             int64_t split) {
  TORCH_CHECK(x.is_cpu(), "_nvfp4_marlin_linear (CPU): x must be a CPU tensor");
  quant::nvfp4_marlin_linear_host(marlin_params(x, codes, scales, global_scale, bias, out, split));
}

}  // namespace
}  // namespace star_elastic

TORCH_LIBRARY_FRAGMENT(star_elastic, m) {
  m.def("_fp8_compute_scales(Tensor x, Tensor(a!) scales, bool per_row) -> ()");
  m.def("_fp8_quantize(Tensor x, Tensor scales, Tensor(a!) out) -> ()");
  m.def("_fp8_quantize_per_row(Tensor x, Tensor(a!) scales, Tensor(b!) out) -> ()");
  m.def("_fp8_dequantize(Tensor q, Tensor scales, Tensor(a!) out) -> ()");
  m.def("_fp8_gemm_sm90(Tensor a, Tensor b, Tensor scale_a, Tensor scale_b, Tensor? bias, "
        "Tensor(a!) out, Tensor(b!) workspace) -> ()");
  m.def("_nvfp4_prepack(Tensor data, Tensor scale, Tensor(a!) codes, Tensor(b!) scales) -> ()");
  m.def("_nvfp4_prepacked_operands(Tensor codes, Tensor scales, Tensor(a!) out) -> ()");
  m.def("_nvfp4_marlin_linear(Tensor x, Tensor codes, Tensor scales, Tensor global_scale, "
        "Tensor? bias, Tensor(a!) out, int split) -> ()");
}

TORCH_LIBRARY_IMPL(star_elastic, CUDA, m) {
  m.impl("_fp8_compute_scales", &star_elastic::fp8_compute_scales_cuda);
  m.impl("_fp8_quantize", &star_elastic::fp8_quantize_cuda);
  m.impl("_fp8_quantize_per_row", &star_elastic::fp8_quantize_per_row_cuda);
  m.impl("_fp8_dequantize", &star_elastic::fp8_dequantize_cuda);
  m.impl("_fp8_gemm_sm90", &star_elastic::fp8_gemm_sm90_cuda);
  m.impl("_nvfp4_prepack", &star_elastic::nvfp4_prepack_cuda);
  m.impl("_nvfp4_prepacked_operands", &star_elastic::nvfp4_prepacked_operands_cuda);
  m.impl("_nvfp4_marlin_linear", &star_elastic::nvfp4_marlin_linear_cuda);
}

TORCH_LIBRARY_IMPL(star_elastic, CPU, m) {
  m.impl("_fp8_quantize_per_row", &star_elastic::fp8_quantize_per_row_cpu);
  m.impl("_nvfp4_prepack", &star_elastic::nvfp4_prepack_cpu);
  m.impl("_nvfp4_prepacked_operands", &star_elastic::nvfp4_prepacked_operands_cpu);
  m.impl("_nvfp4_marlin_linear", &star_elastic::nvfp4_marlin_linear_cpu);
}
