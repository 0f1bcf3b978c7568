"""Triton NVFP4 W4A16 linear: ``out = x @ dequantize(w).T * global_scale + bias``.

The weight is decoded inside the kernel: each packed byte gives the E2M1 codes of an even and an
odd element, multiplied by their block's E4M3 scale. ``e2m1 * e4m3`` has at most 6 significant bits
and lies in [2^-10, 2688], so it is exact in bf16 and fp16, and the MMA runs on 16-bit tensor cores
with float32 accumulation; the per-tensor scale is applied to the float32 accumulator (never to a
16-bit partial sum). The activation is split into its even and odd columns to meet the low and
high nibbles (a reshape and split of the loaded tile), so the weight needs no shuffle.

Two configurations share the kernel: a large-M tile for prefill and a small-M (decode) tile with
split-K, which spreads the weight read, the bottleneck there, over every SM. A sliced weight is
read through the parent's strides: only its rows and its leading bytes and blocks are touched.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from star_elastic_kernels.triton.fp8_quant import _e4m3_decode
from star_elastic_kernels.triton.nvfp4_quant import _e2m1_decode


@triton.jit
def _nvfp4_linear_kernel(
    x_ptr, data_ptr, scale_ptr, g_ptr, bias_ptr, out_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_dn, stride_sn, stride_om,
    HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1).to(tl.int64)
    pid_k = tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    half = tl.arange(0, BLOCK_K // 2).to(tl.int64)
    blocks = tl.arange(0, BLOCK_K // 16).to(tl.int64)
    cols = tl.arange(0, BLOCK_K).to(tl.int64)
    m_mask = rm < M
    n_mask = rn < N
    packed_k = K // 2
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_tiles = tl.cdiv(K, BLOCK_K)
    for tile in range(pid_k, k_tiles, SPLIT_K):
        byte = tile * (BLOCK_K // 2) + half  # (BLOCK_K/2,) packed column index
        k_mask = byte < packed_k
        w_mask = k_mask[:, None] & n_mask[None, :]
        packed = tl.load(data_ptr + rn[None, :] * stride_dn + byte[:, None], mask=w_mask, other=0)
        # One scale load and one E4M3 decode per 16-element block; the decoded float is then
        # broadcast over the block's 8 packed bytes.
        block = tile * (BLOCK_K // 16) + blocks
        code = tl.load(scale_ptr + rn[None, :] * stride_sn + block[:, None],
                       mask=(block < K // 16)[:, None] & n_mask[None, :], other=0)
        block_scale = _e4m3_decode(code)
        block_scale = tl.reshape(
            tl.broadcast_to(block_scale[:, None, :], (BLOCK_K // 16, 8, BLOCK_N)),
            (BLOCK_K // 2, BLOCK_N))
        # Load the activation tile once (contiguous along K) and split it into the even and odd
        # columns that meet the low and high nibbles.
        k = tile * BLOCK_K + cols
        x = tl.load(x_ptr + rm[:, None] * stride_xm + k[None, :] * stride_xk,
                    mask=m_mask[:, None] & (k < K)[None, :], other=0.0)
        x_even, x_odd = tl.split(tl.reshape(x, (BLOCK_M, BLOCK_K // 2, 2)))
        w_low = (_e2m1_decode(packed & 0xF) * block_scale).to(x_even.dtype)
        w_high = (_e2m1_decode(packed >> 4) * block_scale).to(x_even.dtype)
        if IEEE:
            acc = tl.dot(x_even, w_low, acc, input_precision="ieee")
            acc = tl.dot(x_odd, w_high, acc, input_precision="ieee")
        else:
            acc = tl.dot(x_even, w_low, acc)
            acc = tl.dot(x_odd, w_high, acc)
    acc = acc * tl.load(g_ptr)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)
        if SPLIT_K == 1:
            acc += bias[None, :]
        else:
            acc += tl.where(pid_k == 0, 1.0, 0.0) * bias[None, :]
    out_offsets = out_ptr + rm[:, None] * stride_om + rn[None, :]
    out_mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K == 1:
        tl.store(out_offsets, acc.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        tl.atomic_add(out_offsets, acc, mask=out_mask)


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def pick_config(M: int, N: int, K: int, device: torch.device):
    """(BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages) for a problem size."""
    if M <= 64:
        block_m = 16 if M <= 16 else 32 if M <= 32 else 64
        block_n, block_k = 64, 256
        tiles = triton.cdiv(M, block_m) * triton.cdiv(N, block_n)
        k_tiles = triton.cdiv(K, block_k)
        split = max(1, min(k_tiles, 16, triton.cdiv(2 * _sm_count(device), max(tiles, 1))))
        return block_m, block_n, block_k, split, 4, 3
    return 128, 128, 64, 1, 8, 3


def nvfp4_linear(x: torch.Tensor, data: torch.Tensor, scale: torch.Tensor,
                 global_scale: torch.Tensor, bias: torch.Tensor | None,
                 split_k: int | None = None) -> torch.Tensor:
    """x (M, K) float, data uint8 (N, K/2), scale float8_e4m3fn (N, K/16) (any row strides),
    global_scale float32 (), bias (N,) or None -> (M, N) in x.dtype."""
    M, K = x.shape
    N = data.shape[0]
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return out
    if K == 0:
        return out.zero_() if bias is None else out.copy_(bias.to(x.dtype).expand(M, N))
    block_m, block_n, block_k, split, warps, stages = pick_config(M, N, K, x.device)
    if split_k is not None:
        split = split_k
    target = out if split == 1 else torch.zeros((M, N), dtype=torch.float32, device=x.device)
    scale_bytes = scale.view(torch.uint8)
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n), split)
    _nvfp4_linear_kernel[grid](
        x, data, scale_bytes, global_scale, bias if bias is not None else out, target,
        M, N, K, x.stride(0), x.stride(1), data.stride(0), scale_bytes.stride(0),
        target.stride(0),
        HAS_BIAS=bias is not None, SPLIT_K=split, IEEE=x.dtype == torch.float32,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages)
    if split != 1:
        out.copy_(target)
    return out
