"""Triton FP8 linear: W8A8 (FP8 tensor cores) and W8A16 (FP8 weight decoded in the kernel).

``out = (a @ w.T) * a_scale * w_scale + bias`` with float32 accumulation, where ``a`` is either the
activation quantized to E4M3 (W8A8; ``a_scale`` per token or per tensor) or the 16-bit activation
itself (W8A16; no ``a_scale``). ``w_scale`` is per tensor or per output channel. The weight is read
through its (parent's) strides, so a slice costs only its own rows and columns.

On the GPU the W8A8 MMA runs on e4m3 operands. The Triton interpreter computes float8 arithmetic
wrongly, so there (``DOT_FP8=False``) the same codes are decoded exactly to float32 first; the
products and sums are then exact float32 arithmetic on identical values.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from star_elastic_kernels.triton.fp8_quant import _e4m3_decode


@triton.jit
def _fp8_linear_kernel(
    a_ptr, a_scale_ptr, w_ptr, w_scale_ptr, bias_ptr, out_ptr,
    M, N, K,
    stride_am, stride_ak, stride_wn, stride_wk, stride_om,
    A_FP8: tl.constexpr, A_SCALE_PER_ROW: tl.constexpr, W_SCALE_PER_ROW: tl.constexpr,
    HAS_BIAS: tl.constexpr, DOT_FP8: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1).to(tl.int64)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    rk = tl.arange(0, BLOCK_K).to(tl.int64)
    m_mask = rm < M
    n_mask = rn < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        k_mask = kk < K
        a = tl.load(a_ptr + rm[:, None] * stride_am + kk[None, :] * stride_ak,
                    mask=m_mask[:, None] & k_mask[None, :], other=0)
        w = tl.load(w_ptr + rn[None, :] * stride_wn + kk[:, None] * stride_wk,
                    mask=k_mask[:, None] & n_mask[None, :], other=0)
        if A_FP8:
            if DOT_FP8:
                acc = tl.dot(a.to(tl.float8e4nv, bitcast=True), w.to(tl.float8e4nv, bitcast=True),
                             acc)
            else:
                acc = tl.dot(_e4m3_decode(a), _e4m3_decode(w), acc, input_precision="ieee")
        else:
            w_values = _e4m3_decode(w).to(a.dtype)  # exact in fp16 / bf16
            if IEEE:
                acc = tl.dot(a, w_values, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, w_values, acc)
    if A_FP8:
        if A_SCALE_PER_ROW:
            acc = acc * tl.load(a_scale_ptr + rm, mask=m_mask, other=1.0)[:, None]
        else:
            acc = acc * tl.load(a_scale_ptr)
    if W_SCALE_PER_ROW:
        acc = acc * tl.load(w_scale_ptr + rn, mask=n_mask, other=1.0)[None, :]
    else:
        acc = acc * tl.load(w_scale_ptr)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])


def _config(M: int, a_fp8: bool):
    if M <= 16:
        return 16, 64, 128 if a_fp8 else 64, 4, 4
    if M <= 64:
        return 64, 64, 128 if a_fp8 else 64, 4, 3
    return 128, 128, 128 if a_fp8 else 64, 8, 3


def fp8_linear(a: torch.Tensor, a_scale: torch.Tensor | None, w: torch.Tensor,
               w_scale: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype
               ) -> torch.Tensor:
    """a (M, K): float8_e4m3fn (W8A8, a_scale () or (M,)) or a 16/32-bit float (W8A16, a_scale
    None); w float8_e4m3fn (N, K) any strides; w_scale () or (N,); bias (N,) -> (M, N) out_dtype."""
    M, K = a.shape
    N = w.shape[0]
    out = torch.empty((M, N), dtype=out_dtype, device=a.device)
    if M == 0 or N == 0:
        return out
    if K == 0:
        return out.zero_() if bias is None else out.copy_(bias.to(out_dtype).expand(M, N))
    a_fp8 = a.dtype == torch.float8_e4m3fn
    a_view = a.view(torch.uint8) if a_fp8 else a
    w_bytes = w.view(torch.uint8)
    block_m, block_n, block_k, warps, stages = _config(M, a_fp8)
    on_gpu = a.device.type == "cuda"
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n))
    _fp8_linear_kernel[grid](
        a_view, a_scale if a_scale is not None else w_scale, w_bytes, w_scale,
        bias if bias is not None else out, out,
        M, N, K, a_view.stride(0), a_view.stride(1), w_bytes.stride(0), w_bytes.stride(1),
        out.stride(0),
        A_FP8=a_fp8, A_SCALE_PER_ROW=a_scale is not None and a_scale.dim() == 1,
        W_SCALE_PER_ROW=w_scale.dim() == 1, HAS_BIAS=bias is not None, DOT_FP8=on_gpu,
        IEEE=a.dtype == torch.float32,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages)
    return out
