// FP8 E4M3 quantize / dequantize kernels (see fp8_quant.h for the contract).
#include "quant/fp8_quant.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cmath>
#include <cstring>

namespace star_elastic::quant {
namespace {

constexpr float kE4M3Max = 448.0f;
constexpr int kThreads = 256;

__host__ __device__ __forceinline__ float load_as_float(const void* base, FloatType type, int64_t offset) {
  switch (type) {
    case FloatType::kFloat16:
      return __half2float(static_cast<const __half*>(base)[offset]);
    case FloatType::kBFloat16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[offset]);
    default:
      return static_cast<const float*>(base)[offset];
  }
}

__device__ __forceinline__ void store_from_float(void* base, FloatType type, int64_t offset,
                                                 float value) {
  switch (type) {
    case FloatType::kFloat16:
      static_cast<__half*>(base)[offset] = __float2half_rn(value);
      break;
    case FloatType::kBFloat16:
      static_cast<__nv_bfloat16*>(base)[offset] = __float2bfloat16_rn(value);
      break;
    default:
      static_cast<float*>(base)[offset] = value;
  }
}

// Block-wide max of non-negative floats; the result is valid in thread 0.
__device__ float block_max(float value) {
  __shared__ float warp_max[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2)
    value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  if (lane == 0) warp_max[warp] = value;
  __syncthreads();
  value = threadIdx.x < kThreads / 32 ? warp_max[threadIdx.x] : 0.0f;
  if (warp == 0)
    for (int offset = 16; offset > 0; offset /= 2)
      value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  return value;
}

__host__ __device__ __forceinline__ float ieee_div(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  return a / b;  // host float division is IEEE round-to-nearest
#endif
}

__host__ __device__ __forceinline__ float scale_from_amax(float amax) {
  // An all-zero row quantizes to zeros under any scale; 1 keeps the scale finite and invertible.
  return amax > 0.0f ? ieee_div(amax, kE4M3Max) : 1.0f;
}

// IEEE division (not x * (1/s)) so every backend rounds identically.
__host__ __device__ __forceinline__ uint8_t quantize_value(float v, float scale) {
  return __nv_cvt_float_to_fp8(ieee_div(v, scale), __NV_SATFINITE, __NV_E4M3);
}

// Thread `tid`'s part of a row's amax: columns tid, tid + kThreads, ...
__host__ __device__ __forceinline__ float thread_row_amax(const StridedMatrix& x, int64_t row,
                                                          int tid) {
  float amax = 0.0f;
  for (int64_t c = tid; c < x.cols; c += kThreads)
    amax = fmaxf(amax, fabsf(load_as_float(x.data, x.type, row * x.row_stride + c * x.col_stride)));
  return amax;
}

__host__ __device__ __forceinline__ void thread_row_quantize(const StridedMatrix& x, int64_t row,
                                                             int tid, float scale, uint8_t* out) {
  for (int64_t c = tid; c < x.cols; c += kThreads)
    out[row * x.cols + c] =
        quantize_value(load_as_float(x.data, x.type, row * x.row_stride + c * x.col_stride), scale);
}

// ---- 16-byte chunks: rows with a unit stride, 16-byte aligned, a whole number of chunks long
// (the usual activation). A chunk is 8 16-bit or 4 fp32 elements; its codes are one 8- or 4-byte
// store. Other layouts take the element-wise loops above.

__host__ __device__ __forceinline__ int element_bytes(FloatType type) {
  return type == FloatType::kFloat32 ? 4 : 2;
}

__host__ __device__ __forceinline__ bool rows_in_chunks(const StridedMatrix& x, const uint8_t* out) {
  const int64_t size = element_bytes(x.type);
  return x.col_stride == 1 && reinterpret_cast<uintptr_t>(x.data) % 16 == 0 &&
         (x.row_stride * size) % 16 == 0 && (x.cols * size) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(out) % 8 == 0;
}

// The chunk's elements as floats; returns how many (8 or 4).
__host__ __device__ __forceinline__ int chunk_values(const uint4& chunk, FloatType type,
                                                     float values[8]) {
  const uint32_t words[4] = {chunk.x, chunk.y, chunk.z, chunk.w};
  if (type == FloatType::kFloat32) {
    memcpy(values, words, sizeof(words));
    return 4;
  }
  for (int i = 0; i < 8; ++i) {
    const uint16_t bits = static_cast<uint16_t>(words[i / 2] >> (16 * (i % 2)));
    if (type == FloatType::kBFloat16) {
      __nv_bfloat16_raw raw;
      raw.x = bits;
      values[i] = __bfloat162float(__nv_bfloat16(raw));
    } else {
      __half_raw raw;
      raw.x = bits;
      values[i] = __half2float(__half(raw));
    }
  }
  return 8;
}

__host__ __device__ __forceinline__ uint4 load_chunk(const StridedMatrix& x, int64_t row,
                                                     int64_t chunk) {
  const uint8_t* base = static_cast<const uint8_t*>(x.data) +
                        (row * x.row_stride) * element_bytes(x.type) + 16 * chunk;
#ifdef __CUDA_ARCH__
  return *reinterpret_cast<const uint4*>(base);
#else
  uint4 value;
  memcpy(&value, base, sizeof(value));
  return value;
#endif
}

__host__ __device__ __forceinline__ float thread_row_amax_chunks(const StridedMatrix& x,
                                                                 int64_t row, int tid) {
  const int64_t chunks = x.cols * element_bytes(x.type) / 16;
  float amax = 0.0f;
  float values[8];
  for (int64_t c = tid; c < chunks; c += kThreads) {
    const int count = chunk_values(load_chunk(x, row, c), x.type, values);
    for (int i = 0; i < count; ++i) amax = fmaxf(amax, fabsf(values[i]));
  }
  return amax;
}

__host__ __device__ __forceinline__ void thread_row_quantize_chunks(const StridedMatrix& x,
                                                                    int64_t row, int tid,
                                                                    float scale, uint8_t* out) {
  const int64_t chunks = x.cols * element_bytes(x.type) / 16;
  float values[8];
  for (int64_t c = tid; c < chunks; c += kThreads) {
    const int count = chunk_values(load_chunk(x, row, c), x.type, values);
    uint8_t codes[8];
    for (int i = 0; i < count; ++i) codes[i] = quantize_value(values[i], scale);
    uint8_t* target = out + row * x.cols + c * count;
#ifdef __CUDA_ARCH__
    if (count == 8)
      *reinterpret_cast<uint2*>(target) = *reinterpret_cast<const uint2*>(codes);
    else
      *reinterpret_cast<uint32_t*>(target) = *reinterpret_cast<const uint32_t*>(codes);
#else
    memcpy(target, codes, count);
#endif
  }
}

// One block per row: amax, scale and codes; the row is read once from memory (the quantizing
// pass re-reads it from L1/L2, where the amax pass has just brought it).
__global__ void __launch_bounds__(kThreads) quantize_per_row_kernel(StridedMatrix x, float* scales,
                                                                    uint8_t* out) {
  __shared__ float row_scale;
  const int64_t row = blockIdx.x;
  const bool chunked = rows_in_chunks(x, out);
  const float amax = block_max(chunked ? thread_row_amax_chunks(x, row, threadIdx.x)
                                       : thread_row_amax(x, row, threadIdx.x));
  if (threadIdx.x == 0) {
    row_scale = scale_from_amax(amax);
    scales[row] = row_scale;
  }
  __syncthreads();
  if (chunked)
    thread_row_quantize_chunks(x, row, threadIdx.x, row_scale, out);
  else
    thread_row_quantize(x, row, threadIdx.x, row_scale, out);
}

// One block per row: scales[row] = amax(row) / 448.
__global__ void __launch_bounds__(kThreads) row_scales_kernel(StridedMatrix x, float* scales) {
  const int64_t row = blockIdx.x;
  const float amax = block_max(thread_row_amax(x, row, threadIdx.x));
  if (threadIdx.x == 0) scales[row] = scale_from_amax(amax);
}

// Grid-stride amax over the whole matrix into *amax_bits (non-negative floats order like their bits).
__global__ void tensor_amax_kernel(StridedMatrix x, unsigned int* amax_bits) {
  const int64_t total = x.rows * x.cols;
  float amax = 0.0f;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / x.cols, c = i % x.cols;
    amax = fmaxf(amax, fabsf(load_as_float(x.data, x.type, r * x.row_stride + c * x.col_stride)));
  }
  amax = block_max(amax);
  if (threadIdx.x == 0) atomicMax(amax_bits, __float_as_uint(amax));
}

__global__ void amax_to_scale_kernel(float* scale) {
  scale[0] = scale_from_amax(scale[0]);
}

__global__ void quantize_kernel(StridedMatrix x, const float* scales, int64_t scale_stride,
                                uint8_t* out) {
  const int64_t total = x.rows * x.cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / x.cols, c = i % x.cols;
    const float v = load_as_float(x.data, x.type, r * x.row_stride + c * x.col_stride);
    out[i] = quantize_value(v, scales[r * scale_stride]);
  }
}

__global__ void dequantize_kernel(const uint8_t* q, int64_t rows, int64_t cols, int64_t row_stride,
                                  int64_t col_stride, const float* scales, int64_t scale_stride,
                                  void* out, FloatType out_type) {
  const int64_t total = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    const __half_raw h = __nv_cvt_fp8_to_halfraw(q[r * row_stride + c * col_stride], __NV_E4M3);
    const float v = __half2float(__half(h));
    store_from_float(out, out_type, i, __fmul_rn(v, scales[r * scale_stride]));
  }
}

unsigned int elementwise_blocks(int64_t total) {
  const int64_t wanted = (total + kThreads - 1) / kThreads;
  // Enough blocks to fill any current GPU; the grid-stride loops cover the rest.
  return static_cast<unsigned int>(wanted < 65536 ? (wanted > 0 ? wanted : 1) : 65536);
}

}  // namespace

cudaError_t fp8_compute_scales(const StridedMatrix& x, bool per_row, float* scales,
                               cudaStream_t stream) {
  if (per_row) {
    if (x.rows == 0) return cudaSuccess;
    row_scales_kernel<<<static_cast<unsigned int>(x.rows), kThreads, 0, stream>>>(x, scales);
    return cudaGetLastError();
  }
  cudaError_t err = cudaMemsetAsync(scales, 0, sizeof(float), stream);
  if (err != cudaSuccess) return err;
  if (x.rows * x.cols > 0) {
    tensor_amax_kernel<<<elementwise_blocks(x.rows * x.cols), kThreads, 0, stream>>>(
        x, reinterpret_cast<unsigned int*>(scales));
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  amax_to_scale_kernel<<<1, 1, 0, stream>>>(scales);
  return cudaGetLastError();
}

cudaError_t fp8_quantize(const StridedMatrix& x, const float* scales, int64_t scale_stride,
                         uint8_t* out, cudaStream_t stream) {
  const int64_t total = x.rows * x.cols;
  if (total == 0) return cudaSuccess;
  quantize_kernel<<<elementwise_blocks(total), kThreads, 0, stream>>>(x, scales, scale_stride, out);
  return cudaGetLastError();
}

cudaError_t fp8_quantize_per_row(const StridedMatrix& x, float* scales, uint8_t* out,
                                 cudaStream_t stream) {
  if (x.rows == 0) return cudaSuccess;
  quantize_per_row_kernel<<<static_cast<unsigned int>(x.rows), kThreads, 0, stream>>>(x, scales,
                                                                                      out);
  return cudaGetLastError();
}

void fp8_quantize_per_row_host(const StridedMatrix& x, float* scales, uint8_t* out) {
  const bool chunked = rows_in_chunks(x, out);
  for (int64_t row = 0; row < x.rows; ++row) {
    // block_max's order: max is exact, so any order gives the kernel's result.
    float amax = 0.0f;
    for (int tid = 0; tid < kThreads; ++tid)
      amax = fmaxf(amax, chunked ? thread_row_amax_chunks(x, row, tid)
                                 : thread_row_amax(x, row, tid));
    scales[row] = scale_from_amax(amax);
    for (int tid = 0; tid < kThreads; ++tid) {
      if (chunked)
        thread_row_quantize_chunks(x, row, tid, scales[row], out);
      else
        thread_row_quantize(x, row, tid, scales[row], out);
    }
  }
}

cudaError_t fp8_dequantize(const uint8_t* q, int64_t rows, int64_t cols, int64_t row_stride,
                           int64_t col_stride, const float* scales, int64_t scale_stride,
                           void* out, FloatType out_type, cudaStream_t stream) {
  const int64_t total = rows * cols;
  if (total == 0) return cudaSuccess;
  dequantize_kernel<<<elementwise_blocks(total), kThreads, 0, stream>>>(
      q, rows, cols, row_stride, col_stride, scales, scale_stride, out, out_type);
  return cudaGetLastError();
}

}  // namespace star_elastic::quant
