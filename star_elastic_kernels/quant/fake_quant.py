"""Fused fake-quantization (quantize -> dequantize in one kernel) with a straight-through gradient,
for quantization-aware training and distillation (QAD) of weights and activations.

Order of this file: the registered ops (``star_elastic::fake_quantize_nvfp4``,
``star_elastic::fake_quantize_fp8``) with fake implementations and autograd, then the public
wrappers. Kernels: ``triton/nvfp4_quant.py`` and ``triton/fp8_fake_quant.py``; specification:
``reference/nvfp4.py`` / ``reference/fp8.py`` (``*_fake_quantize_ref``).

Gradient: the straight-through estimator, ``grad_x = grad_out`` where the element lies inside the
clipping range and 0 where it was clipped (scales are treated as constants). For nested training,
fake-quantize the parent weight once with its frozen global scale and slice the result: every
child then trains on exactly the values it will be served with (quant-kernels.md §4.4).
"""

from __future__ import annotations

import math

import torch

from star_elastic_kernels import _backends
from star_elastic_kernels.quant import fp8 as fp8_ops
from star_elastic_kernels.quant import nvfp4 as nvfp4_ops
from star_elastic_kernels.reference import fp8 as fp8_reference
from star_elastic_kernels.reference import nvfp4 as nvfp4_reference

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

FAKE_NVFP4_SPEC = _backends.register(
    _backends.OpSpec("fake_quantize_nvfp4", backends=("triton", "torch"))
)
FAKE_FP8_SPEC = _backends.register(
    _backends.OpSpec("fake_quantize_fp8", backends=("triton", "torch"))
)


@torch.library.custom_op("star_elastic::fake_quantize_nvfp4", mutates_args=())
def _fake_nvfp4_op(
    x: torch.Tensor, global_scale: torch.Tensor, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "triton":
        from star_elastic_kernels.triton import nvfp4_quant

        return nvfp4_quant.nvfp4_fake_quantize(x, global_scale)
    out, mask = nvfp4_reference.nvfp4_fake_quantize_ref(x, global_scale)
    return out.contiguous(), mask.contiguous()


@_fake_nvfp4_op.register_fake
def _(x, global_scale, backend):
    return x.new_empty(x.shape), x.new_empty(x.shape, dtype=torch.bool)


@torch.library.custom_op("star_elastic::fake_quantize_fp8", mutates_args=())
def _fake_fp8_op(
    x: torch.Tensor, scales: torch.Tensor, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "triton":
        from star_elastic_kernels.triton import fp8_fake_quant

        return fp8_fake_quant.fp8_fake_quantize(x, scales)
    out, mask = fp8_reference.fp8_fake_quantize_ref(x, scales)
    return out.contiguous(), mask.contiguous()


@_fake_fp8_op.register_fake
def _(x, scales, backend):
    return x.new_empty(x.shape), x.new_empty(x.shape, dtype=torch.bool)


def _save_mask(ctx, inputs, output):
    ctx.save_for_backward(output[1])


def _straight_through(ctx, grad_out, grad_mask):
    (mask,) = ctx.saved_tensors
    return grad_out * mask, None, None


torch.library.register_autograd("star_elastic::fake_quantize_nvfp4", _straight_through,
                                setup_context=_save_mask)
torch.library.register_autograd("star_elastic::fake_quantize_fp8", _straight_through,
                                setup_context=_save_mask)


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])


def _check_x(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x must be float32, float16 or bfloat16, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError("x must have at least one dimension")


def fake_quantize_nvfp4(
    x: torch.Tensor,
    global_scale: torch.Tensor | None = None,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """NVFP4 quantize -> dequantize of ``x`` in one kernel, differentiable (straight-through).

    Args:
        x: float32 / float16 / bfloat16 (..., K), K % 16 == 0: a weight (out_features,
            in_features) or an activation (..., features). Blocks of 16 run along the last dim.
        global_scale: float32 () or (1,) per-tensor decode scale (for QAD, the parent's frozen
            ``amax / 2688``); default computed from x (``amax(|x|) / 2688``, not differentiated).
            NaN/Inf in x are not checked here (a hot training path): they give NaN outputs.
        backend: ``"auto" | "triton" | "torch"``.

    Returns:
        Tensor of x's shape and dtype equal to ``dequantize_nvfp4(quantize_nvfp4(x, g),
        dtype=x.dtype)``. Its gradient is ``grad`` where ``|x * reciprocal_block_scale| <= 6``,
        else 0.
    """
    _check_x(x)
    if x.shape[-1] % nvfp4_ops.BLOCK:
        raise ValueError(f"x's last dim must be a multiple of {nvfp4_ops.BLOCK} for NVFP4, got "
                         f"{x.shape[-1]}")
    if global_scale is None:
        global_scale = nvfp4_ops.nvfp4_global_scale(x)
    else:
        global_scale = nvfp4_ops.normalize_global_scale(global_scale, x)
    chosen = _backends.select_backend(FAKE_NVFP4_SPEC, x.device, x.dtype, backend)
    out, _ = _fake_nvfp4_op(_rows(x), global_scale.detach(), chosen)
    return out.reshape(x.shape)


def fake_quantize_fp8(
    x: torch.Tensor,
    scale: torch.Tensor | None = None,
    *,
    granularity: str = "tensor",
    backend: str | None = None,
) -> torch.Tensor:
    """FP8 E4M3 quantize -> dequantize of ``x`` in one kernel, differentiable (straight-through).

    Args:
        x: float32 / float16 / bfloat16 (..., K).
        scale: optional float32 decode scale: () / (1,) per tensor, or one per row of
            ``x.reshape(-1, K)`` (per output channel of a weight, per token of an activation) for
            ``granularity="channel"``. Default: ``amax / 448`` over the tensor or each row (not
            differentiated). Must be finite and > 0 (not checked: a hot training path).
        granularity: ``"tensor"`` or ``"channel"`` (per row of the last dim).
        backend: ``"auto" | "triton" | "torch"``.

    Returns:
        Tensor of x's shape and dtype equal to ``dequantize_fp8(*quantize_fp8(x, scale))``; its
        gradient is ``grad`` where ``|x / scale| <= 448`` and 0 where the value was clipped.
    """
    _check_x(x)
    if granularity not in ("tensor", "channel"):
        raise ValueError(f"granularity must be 'tensor' or 'channel', got {granularity!r}")
    per_row = granularity == "channel"
    rows = _rows(x)
    chosen = _backends.select_backend(FAKE_FP8_SPEC, x.device, x.dtype, backend)
    if scale is None:
        scale = fp8_ops._fp8_scales_op(rows.detach(), per_row, chosen)
    else:
        scale = fp8_ops._normalize_scale(scale, per_row, rows.shape[0], x, "scale")
    out, _ = _fake_fp8_op(rows, scale.detach(), chosen)
    return out.reshape(x.shape)
