"""Triton NVFP4 quantize / dequantize / fused fake-quantize: kernels, then launchers.

Every program handles one row and ``BLOCKS`` 16-element blocks of it. Each block is loaded as its
even and its odd elements (the low and high nibbles of the packed bytes), so packing needs no
shuffle. The arithmetic is the reference's float32 sequence with IEEE division (``div_rn``) and
integer-coded E4M3 / E2M1 conversions, so the codes are bit-identical on the GPU and under the
Triton interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from star_elastic_kernels.triton.fp8_quant import _e4m3_decode, _e4m3_encode

E2M1_MAX = tl.constexpr(6.0)
E4M3_MAX = tl.constexpr(448.0)  # a constexpr: jit code may only read constexpr globals
E4M3_MIN_NORMAL = tl.constexpr(0.015625)
_BLOCKS = 32  # 16-element blocks per program (512 elements)


@triton.jit
def _e2m1_encode(y):
    """float32 y with |y| <= 6 -> uint8 E2M1 code (nearest, ties to the even code, sign kept)."""
    m = tl.abs(y)
    code = tl.where(m > 0.25, 1, 0)
    code = tl.where(m >= 0.75, 2, code)
    code = tl.where(m > 1.25, 3, code)
    code = tl.where(m >= 1.75, 4, code)
    code = tl.where(m > 2.5, 5, code)
    code = tl.where(m >= 3.5, 6, code)
    code = tl.where(m > 5.0, 7, code)
    sign = ((y.to(tl.uint32, bitcast=True) >> 31) << 3).to(tl.int32)
    return (code | sign).to(tl.uint8)


@triton.jit
def _e2m1_decode(code):
    """uint8 E2M1 code (low 4 bits) -> float32 value. Magnitudes 2..7 are the float32 bit pattern
    0x3F000000 + (m << 22); 0 and 1 (0.0 and 0.5) are patched."""
    c = code.to(tl.uint32)
    m = c & 0x7
    normal = (0x3F000000 + (m << 22)).to(tl.float32, bitcast=True)
    magnitude = tl.where(m >= 2, normal, m.to(tl.float32) * 0.5)
    return tl.where((c & 0x8) != 0, -magnitude, magnitude)


@triton.jit
def _block_scales(even, odd, global_scale):
    """(BLOCKS, 8) even/odd float32 halves of each block -> (e4m3 code, float32 scale,
    float32 reciprocal) per block, exactly as the reference computes them."""
    amax = tl.maximum(tl.max(tl.abs(even), axis=1), tl.max(tl.abs(odd), axis=1))
    six = tl.full(amax.shape, E2M1_MAX, tl.float32)
    g = tl.full(amax.shape, 1.0, tl.float32) * global_scale
    scaled = tl.math.div_rn(tl.math.div_rn(amax, six), g)
    scaled = tl.minimum(tl.maximum(scaled, E4M3_MIN_NORMAL), E4M3_MAX)
    code = _e4m3_encode(scaled)
    scale = _e4m3_decode(code)
    reciprocal = tl.math.div_rn(tl.math.div_rn(tl.full(amax.shape, 1.0, tl.float32), g), scale)
    return code, scale, reciprocal


@triton.jit
def _load_halves(x_ptr, row, stride_row, stride_col, block0, n_blocks, BLOCKS: tl.constexpr):
    blocks = block0 + tl.arange(0, BLOCKS).to(tl.int64)
    pairs = tl.arange(0, 8).to(tl.int64)
    mask = (blocks < n_blocks)[:, None]
    even_cols = blocks[:, None] * 16 + pairs[None, :] * 2
    base = x_ptr + row * stride_row
    even = tl.load(base + even_cols * stride_col, mask=mask, other=0.0).to(tl.float32)
    odd = tl.load(base + (even_cols + 1) * stride_col, mask=mask, other=0.0).to(tl.float32)
    return even, odd, blocks, pairs, mask


@triton.jit
def _quantize_kernel(x_ptr, g_ptr, data_ptr, scale_ptr, n_blocks, stride_row, stride_col,
                     BLOCKS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    block0 = tl.program_id(1).to(tl.int64) * BLOCKS
    even, odd, blocks, pairs, mask = _load_halves(x_ptr, row, stride_row, stride_col, block0,
                                                  n_blocks, BLOCKS)
    global_scale = tl.load(g_ptr)
    code, scale, reciprocal = _block_scales(even, odd, global_scale)
    r = reciprocal[:, None]
    low = _e2m1_encode(tl.minimum(tl.maximum(even * r, -E2M1_MAX), E2M1_MAX))
    high = _e2m1_encode(tl.minimum(tl.maximum(odd * r, -E2M1_MAX), E2M1_MAX))
    packed = low | (high << 4)
    tl.store(data_ptr + row * n_blocks * 8 + blocks[:, None] * 8 + pairs[None, :], packed,
             mask=mask)
    tl.store(scale_ptr + row * n_blocks + blocks, code, mask=blocks < n_blocks)


@triton.jit
def _fake_quantize_kernel(x_ptr, g_ptr, out_ptr, mask_ptr, n_blocks, stride_row, stride_col,
                          BLOCKS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    block0 = tl.program_id(1).to(tl.int64) * BLOCKS
    even, odd, blocks, pairs, mask = _load_halves(x_ptr, row, stride_row, stride_col, block0,
                                                  n_blocks, BLOCKS)
    global_scale = tl.load(g_ptr)
    code, scale, reciprocal = _block_scales(even, odd, global_scale)
    r = reciprocal[:, None]
    even_scaled = even * r
    odd_scaled = odd * r
    low = _e2m1_encode(tl.minimum(tl.maximum(even_scaled, -E2M1_MAX), E2M1_MAX))
    high = _e2m1_encode(tl.minimum(tl.maximum(odd_scaled, -E2M1_MAX), E2M1_MAX))
    s = scale[:, None]
    even_out = (_e2m1_decode(low) * s) * global_scale
    odd_out = (_e2m1_decode(high) * s) * global_scale
    out_cols = row * n_blocks * 16 + blocks[:, None] * 16 + pairs[None, :] * 2
    ty = out_ptr.dtype.element_ty
    tl.store(out_ptr + out_cols, even_out.to(ty), mask=mask)
    tl.store(out_ptr + out_cols + 1, odd_out.to(ty), mask=mask)
    tl.store(mask_ptr + out_cols, (tl.abs(even_scaled) <= E2M1_MAX).to(tl.int8), mask=mask)
    tl.store(mask_ptr + out_cols + 1, (tl.abs(odd_scaled) <= E2M1_MAX).to(tl.int8), mask=mask)


@triton.jit
def _dequantize_kernel(data_ptr, scale_ptr, g_ptr, out_ptr, n_blocks, stride_data_row,
                       stride_data_col, stride_scale_row, stride_scale_col, BLOCKS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    blocks = tl.program_id(1).to(tl.int64) * BLOCKS + tl.arange(0, BLOCKS).to(tl.int64)
    pairs = tl.arange(0, 8).to(tl.int64)
    mask = (blocks < n_blocks)[:, None]
    byte_cols = blocks[:, None] * 8 + pairs[None, :]
    packed = tl.load(data_ptr + row * stride_data_row + byte_cols * stride_data_col, mask=mask,
                     other=0)
    code = tl.load(scale_ptr + row * stride_scale_row + blocks * stride_scale_col,
                   mask=blocks < n_blocks, other=0)
    s = _e4m3_decode(code)[:, None]
    global_scale = tl.load(g_ptr)
    even_out = (_e2m1_decode(packed & 0xF) * s) * global_scale
    odd_out = (_e2m1_decode(packed >> 4) * s) * global_scale
    out_cols = row * n_blocks * 16 + blocks[:, None] * 16 + pairs[None, :] * 2
    ty = out_ptr.dtype.element_ty
    tl.store(out_ptr + out_cols, even_out.to(ty), mask=mask)
    tl.store(out_ptr + out_cols + 1, odd_out.to(ty), mask=mask)


def _grid(rows: int, n_blocks: int):
    return (rows, triton.cdiv(n_blocks, _BLOCKS))


def nvfp4_quantize(x: torch.Tensor, global_scale: torch.Tensor):
    """x (rows, K) float (any strides), global_scale float32 () -> (data uint8 (rows, K/2),
    scale float8_e4m3fn (rows, K/16)), both contiguous."""
    rows, cols = x.shape
    n_blocks = cols // 16
    data = torch.empty((rows, cols // 2), dtype=torch.uint8, device=x.device)
    scale = torch.empty((rows, n_blocks), dtype=torch.float8_e4m3fn, device=x.device)
    if rows and n_blocks:
        _quantize_kernel[_grid(rows, n_blocks)](
            x, global_scale, data, scale.view(torch.uint8), n_blocks, x.stride(0), x.stride(1),
            BLOCKS=_BLOCKS)
    return data, scale


def nvfp4_fake_quantize(x: torch.Tensor, global_scale: torch.Tensor):
    """x (rows, K) float -> (dequantize(quantize(x)) contiguous in x.dtype, bool clip mask)."""
    rows, cols = x.shape
    n_blocks = cols // 16
    out = torch.empty((rows, cols), dtype=x.dtype, device=x.device)
    mask = torch.empty((rows, cols), dtype=torch.bool, device=x.device)
    if rows and n_blocks:
        _fake_quantize_kernel[_grid(rows, n_blocks)](
            x, global_scale, out, mask.view(torch.int8), n_blocks, x.stride(0), x.stride(1),
            BLOCKS=_BLOCKS)
    return out, mask


def nvfp4_dequantize(data: torch.Tensor, scale: torch.Tensor, global_scale: torch.Tensor,
                     dtype: torch.dtype) -> torch.Tensor:
    """data uint8 (rows, K/2), scale float8_e4m3fn (rows, K/16) (any strides) -> (rows, K) dtype."""
    rows, n_blocks = scale.shape
    out = torch.empty((rows, n_blocks * 16), dtype=dtype, device=data.device)
    if rows and n_blocks:
        scale_bytes = scale.view(torch.uint8)
        _dequantize_kernel[_grid(rows, n_blocks)](
            data, scale_bytes, global_scale, out, n_blocks, data.stride(0), data.stride(1),
            scale_bytes.stride(0), scale_bytes.stride(1), BLOCKS=_BLOCKS)
    return out
