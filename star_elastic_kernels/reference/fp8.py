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


def fp8_fake_quantize_ref(x: torch.Tensor, scales: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """x (rows, cols), scales () or (rows,) -> (dequantize(quantize(x)) in x.dtype, mask bool).

    The mask marks the elements inside the clipping range ``|x / scale| <= 448``; the
    straight-through gradient passes there and is zero elsewhere.
    """
    row_scales = scales.reshape(-1, 1) if scales.dim() == 1 else scales
    mask = (x.to(torch.float32) / row_scales).abs() <= E4M3_MAX
    return fp8_dequantize_ref(fp8_quantize_ref(x, scales), scales, x.dtype), mask


def fp8_linear_ref(
    x: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    activation_quant: str | None,
    input_scale: torch.Tensor | None,
) -> torch.Tensor:
    """FP8-weight linear, dequantize-then-matmul in float32.

    x (M, k) float, w float8_e4m3fn (n, k), w_scale () or (n,), bias (n,) or None -> (M, n) in
    x.dtype. ``activation_quant``: None (W8A16: x is used as is), ``"dynamic_per_token"`` (x is
    quantized to E4M3 with one scale per row, amax / 448) or ``"static"`` (one given
    ``input_scale``).
    """
    if activation_quant == "dynamic_per_token":
        x_scale = fp8_scales_ref(x, per_row=True)
        x_used = fp8_dequantize_ref(fp8_quantize_ref(x, x_scale), x_scale, torch.float32)
    elif activation_quant == "static":
        x_used = fp8_dequantize_ref(fp8_quantize_ref(x, input_scale), input_scale, torch.float32)
    else:
        x_used = x.to(torch.float32)
    out = x_used @ fp8_dequantize_ref(w, w_scale, torch.float32).t()
    if bias is not None:
        out = out + bias.to(torch.float32)
    return out.to(x.dtype)
