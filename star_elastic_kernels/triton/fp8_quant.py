"""Triton FP8 E4M3 quantize / dequantize: kernels, then launchers.

E4M3 encoding and decoding are written with integer bit arithmetic instead of the hardware cast:
the result is the same round-to-nearest-even, satfinite code on every GPU and, bit for bit, under
the Triton interpreter on the CPU (whose float8 casts are unreliable), so the CPU tests exercise the
exact code that runs on the GPU. Division uses ``div_rn`` (Triton's ``/`` on float32 is approximate)
so that every backend rounds identically.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

E4M3_MAX = tl.constexpr(448.0)  # a constexpr: jit code may only read constexpr globals
_BLOCK = 1024


@triton.jit
def _e4m3_encode(y):
    """float32 y, finite with |y| <= 448 -> uint8 E4M3 code (round to nearest even)."""
    bits = y.to(tl.uint32, bitcast=True)
    sign = (bits >> 31) << 7
    magnitude_bits = bits & 0x7FFFFFFF
    magnitude = magnitude_bits.to(tl.float32, bitcast=True)
    # Normal range: keep 3 mantissa bits, rounding half to even; a carry bumps the exponent, which
    # is exactly what rounding up to the next binade needs. Rebias the exponent from 127 to 7.
    lsb = (magnitude_bits >> 20) & 1
    normal = ((magnitude_bits + 0x7FFFF + lsb) >> 20) - (120 << 3)
    # Subnormal range (< 2^-6): codes are multiples of 2^-9. Adding and removing 2^23 rounds to an
    # integer, half to even, in float32 arithmetic; code 8 is the smallest normal, so the two ranges
    # join seamlessly.
    subnormal = ((magnitude * 512.0 + 8388608.0) - 8388608.0).to(tl.uint32)
    code = tl.where(magnitude < 0.015625, subnormal, normal)
    return (code | sign).to(tl.uint8)


@triton.jit
def _e4m3_decode(code):
    """uint8 E4M3 code -> float32 value (exact); codes 0x7F / 0xFF are NaN."""
    c = code.to(tl.uint32)
    sign = (c & 0x80) << 24
    exponent = (c >> 3) & 0xF
    mantissa = c & 0x7
    normal = ((exponent + 120) << 23) | (mantissa << 20)
    subnormal = (mantissa.to(tl.float32) * 0.001953125).to(tl.uint32, bitcast=True)
    value = (tl.where(exponent == 0, subnormal, normal) | sign).to(tl.float32, bitcast=True)
    return tl.where((c & 0x7F) == 0x7F, float("nan"), value)


@triton.jit
def _row_amax_kernel(x_ptr, amax_ptr, cols, stride_row, stride_col, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, cols, BLOCK):
        offsets = start + tl.arange(0, BLOCK).to(tl.int64)
        values = tl.load(x_ptr + row * stride_row + offsets * stride_col, mask=offsets < cols,
                         other=0.0)
        acc = tl.maximum(acc, tl.abs(values.to(tl.float32)))
    tl.store(amax_ptr + row, tl.max(acc, axis=0))


@triton.jit
def _scale_from_amax(amax):
    # An all-zero row quantizes to zeros under any scale; 1 keeps the scale finite and invertible.
    return tl.where(amax > 0.0, tl.math.div_rn(amax, tl.full(amax.shape, E4M3_MAX, tl.float32)),
                    1.0)


@triton.jit
def _row_scales_kernel(amax_ptr, scale_ptr, rows, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    amax = tl.load(amax_ptr + offsets, mask=offsets < rows, other=0.0)
    tl.store(scale_ptr + offsets, _scale_from_amax(amax), mask=offsets < rows)


@triton.jit
def _tensor_scale_kernel(amax_ptr, scale_ptr, rows, BLOCK: tl.constexpr):
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, rows, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        acc = tl.maximum(acc, tl.load(amax_ptr + offsets, mask=offsets < rows, other=0.0))
    amax = tl.max(acc, axis=0)
    tl.store(scale_ptr, _scale_from_amax(amax))


@triton.jit
def _quantize_kernel(x_ptr, scale_ptr, out_ptr, cols, stride_row, stride_col, scale_stride,
                     BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < cols
    x = tl.load(x_ptr + row * stride_row + offsets * stride_col, mask=mask, other=0.0)
    scale = tl.load(scale_ptr + row * scale_stride)
    scaled = tl.math.div_rn(x.to(tl.float32), tl.full([BLOCK], 1.0, tl.float32) * scale)
    scaled = tl.minimum(tl.maximum(scaled, -E4M3_MAX), E4M3_MAX)
    tl.store(out_ptr + row * cols + offsets, _e4m3_encode(scaled), mask=mask)


@triton.jit
def _dequantize_kernel(q_ptr, scale_ptr, out_ptr, cols, stride_row, stride_col, scale_stride,
                       BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < cols
    code = tl.load(q_ptr + row * stride_row + offsets * stride_col, mask=mask, other=0)
    scale = tl.load(scale_ptr + row * scale_stride)
    value = _e4m3_decode(code) * scale
    tl.store(out_ptr + row * cols + offsets, value.to(out_ptr.dtype.element_ty), mask=mask)


def _block_for(cols: int) -> int:
    return min(_BLOCK, max(16, triton.next_power_of_2(max(cols, 1))))


def fp8_compute_scales(x: torch.Tensor, per_row: bool) -> torch.Tensor:
    """x (rows, cols) float -> scales (rows,) if ``per_row`` else (), float32."""
    rows, cols = x.shape
    amax = torch.zeros(rows, dtype=torch.float32, device=x.device)
    if rows > 0 and cols > 0:
        _row_amax_kernel[(rows,)](x, amax, cols, x.stride(0), x.stride(1), BLOCK=_block_for(cols))
    if per_row:
        scales = torch.empty(rows, dtype=torch.float32, device=x.device)
        if rows > 0:
            _row_scales_kernel[(triton.cdiv(rows, _BLOCK),)](amax, scales, rows, BLOCK=_BLOCK)
        return scales
    scale = torch.empty((), dtype=torch.float32, device=x.device)
    _tensor_scale_kernel[(1,)](amax, scale, rows, BLOCK=_BLOCK)
    return scale


def fp8_quantize(x: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x (rows, cols) float, scales () or (rows,) float32 -> contiguous (rows, cols) float8_e4m3fn."""
    rows, cols = x.shape
    out = torch.empty((rows, cols), dtype=torch.float8_e4m3fn, device=x.device)
    if out.numel() > 0:
        block = _block_for(cols)
        _quantize_kernel[(rows, triton.cdiv(cols, block))](
            x, scales, out.view(torch.uint8), cols, x.stride(0), x.stride(1),
            0 if scales.dim() == 0 else 1, BLOCK=block)
    return out


def fp8_dequantize(q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """q (rows, cols) float8_e4m3fn, scales () or (rows,) float32 -> contiguous (rows, cols) dtype."""
    rows, cols = q.shape
    out = torch.empty((rows, cols), dtype=dtype, device=q.device)
    if out.numel() > 0:
        block = _block_for(cols)
        _dequantize_kernel[(rows, triton.cdiv(cols, block))](
            q.view(torch.uint8), scales, out, cols, q.stride(0), q.stride(1),
            0 if scales.dim() == 0 else 1, BLOCK=block)
    return out
