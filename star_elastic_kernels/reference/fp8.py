"""Pure-PyTorch reference for FP8 E4M3 quantize / dequantize (the specification of the kernels).

Quantization: ``q = e4m3(clamp(x / scale, -448, 448))`` computed in float32 with IEEE division and
round-to-nearest-even, where ``scale = amax(|x|) / 448`` over the tensor or over each row (an
all-zero tensor or row gets scale 1). Dequantization: ``(float32(q) * scale).to(dtype)``.
"""

from __future__ import annotations

import torch

E4M3_MAX = 448.0


def fp8_scales_ref(x: torch.Tensor, per_row: bool) -> torch.Tensor:
    """Scales for ``x`` viewed as (rows, cols): shape (rows,) if ``per_row`` else (), float32."""
    magnitude = x.detach().to(torch.float32).abs()
    if per_row:
        amax = magnitude.amax(dim=1) if magnitude.shape[1] > 0 else magnitude.new_zeros(x.shape[0])
    else:
        amax = magnitude.amax() if magnitude.numel() > 0 else magnitude.new_zeros(())
    return torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))


def fp8_quantize_ref(x: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x (rows, cols) float, scales () or (rows,) float32 -> (rows, cols) float8_e4m3fn."""
    row_scales = scales.reshape(-1, 1) if scales.dim() == 1 else scales
    scaled = x.to(torch.float32) / row_scales
    return scaled.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def fp8_dequantize_ref(q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """q (rows, cols) float8_e4m3fn, scales () or (rows,) float32 -> (rows, cols) ``dtype``."""
    row_scales = scales.reshape(-1, 1) if scales.dim() == 1 else scales
    return (q.to(torch.float32) * row_scales).to(dtype)
