"""Triton fused FP8 E4M3 fake-quantize (quantize -> dequantize in one pass) with the clip mask for
the straight-through gradient. Encoding and decoding share the bit-exact helpers of fp8_quant."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from star_elastic_kernels.triton.fp8_quant import _block_for, _e4m3_decode, _e4m3_encode

E4M3_MAX = tl.constexpr(448.0)  # a constexpr: jit code may only read constexpr globals


@triton.jit
def _fake_quantize_kernel(x_ptr, scale_ptr, out_ptr, mask_ptr, cols, stride_row, stride_col,
                          scale_stride, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_bounds = offsets < cols
    x = tl.load(x_ptr + row * stride_row + offsets * stride_col, mask=in_bounds, other=0.0)
    scale = tl.load(scale_ptr + row * scale_stride)
    scaled = tl.math.div_rn(x.to(tl.float32), tl.full([BLOCK], 1.0, tl.float32) * scale)
    inside = tl.abs(scaled) <= E4M3_MAX
    code = _e4m3_encode(tl.minimum(tl.maximum(scaled, -E4M3_MAX), E4M3_MAX))
    value = _e4m3_decode(code) * scale
    tl.store(out_ptr + row * cols + offsets, value.to(out_ptr.dtype.element_ty), mask=in_bounds)
    tl.store(mask_ptr + row * cols + offsets, inside.to(tl.int8), mask=in_bounds)


def fp8_fake_quantize(x: torch.Tensor, scales: torch.Tensor):
    """x (rows, cols) float, scales () or (rows,) -> (contiguous fake-quantized x, bool mask)."""
    rows, cols = x.shape
    out = torch.empty((rows, cols), dtype=x.dtype, device=x.device)
    mask = torch.empty((rows, cols), dtype=torch.bool, device=x.device)
    if out.numel() > 0:
        block = _block_for(cols)
        _fake_quantize_kernel[(rows, triton.cdiv(cols, block))](
            x, scales, out, mask.view(torch.int8), cols, x.stride(0), x.stride(1),
            0 if scales.dim() == 0 else 1, BLOCK=block)
    return out, mask
