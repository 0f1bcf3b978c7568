// FP8 E4M3 quantize / dequantize launchers.
//
// Plain CUDA C++: raw pointers, sizes and strides, no torch headers (they cost minutes of nvcc per
// file). The binding file (csrc/torch_bindings.cpp) turns tensors into these arguments.
//
// Every input is addressed as a 2-D strided view (rows, cols) so a prefix slice of a parent weight
// (w[:n, :k]) is read in place. Scales are FP32, one per tensor or one per row.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace star_elastic::quant {

enum class FloatType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct StridedMatrix {
  const void* data;
  FloatType type;
  int64_t rows;
  int64_t cols;
  int64_t row_stride;  // in elements
  int64_t col_stride;  // in elements
};

// scales[r] = amax(|x[r, :]|) / 448 (or 1 when the row is all zeros); with per_row == false,
// scales[0] takes the amax over the whole matrix. `scales` must hold rows (per_row) or 1 floats.
cudaError_t fp8_compute_scales(const StridedMatrix& x, bool per_row, float* scales,
                               cudaStream_t stream);

// out[r, c] = e4m3_satfinite_rne(x[r, c] / scales[r * scale_stride]); out is contiguous (rows, cols).
// scale_stride is 0 for a per-tensor scale and 1 for per-row scales.
cudaError_t fp8_quantize(const StridedMatrix& x, const float* scales, int64_t scale_stride,
                         uint8_t* out, cudaStream_t stream);

// Dynamic per-token quantization in one kernel and one pass over x from memory: one block per row
// finds amax(|x[r, :]|), sets scales[r] = amax / 448 (1 for an all-zero row) and writes
// out[r, c] = e4m3_satfinite_rne(x[r, c] / scales[r]) (the second read of the row hits L1/L2).
// Contiguous, 16-byte aligned rows of a whole number of 16-byte chunks are read 16 bytes at a time.
// Bit-identical to fp8_compute_scales(per_row) followed by fp8_quantize.
cudaError_t fp8_quantize_per_row(const StridedMatrix& x, float* scales, uint8_t* out,
                                 cudaStream_t stream);

// The same per-block code run sequentially on the CPU (host pointers), in the kernel's
// reduction order, so the CPU tests exercise it.
void fp8_quantize_per_row_host(const StridedMatrix& x, float* scales, uint8_t* out);

// out[r, c] = (float(q[r, c]) * scales[r * scale_stride]) rounded to out_type; out is contiguous.
cudaError_t fp8_dequantize(const uint8_t* q, int64_t rows, int64_t cols, int64_t row_stride,
                           int64_t col_stride, const float* scales, int64_t scale_stride,
                           void* out, FloatType out_type, cudaStream_t stream);

}  // namespace star_elastic::quant
