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
}

TORCH_LIBRARY_IMPL(star_elastic, CUDA, m) {
  m.impl("_fp8_compute_scales", &star_elastic::fp8_compute_scales_cuda);
  m.impl("_fp8_quantize", &star_elastic::fp8_quantize_cuda);
  m.impl("_fp8_dequantize", &star_elastic::fp8_dequantize_cuda);
}

// `import star_elastic_kernels._C` loads this library, which runs the registrations above. The
// module itself is empty: every entry point is a torch op.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
