"""Triton top-k routing (Nemotron v3 semantics): fp32 scores, choice on score + correction bias,
masked experts never chosen, unbiased weights renormalised over the k chosen, times the scaling.
A pick that finds no active expert left (a mask with fewer experts than top_k) gets expert 0 with
weight 0 and sets bit 2 of the device error flag (star_elastic_kernels/moe/_errors.py).

One program routes a block of tokens with the whole (padded) expert row in registers; the top-k is
k rounds of "take the maximum, lowest index on ties, then knock it out".
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _route_kernel(
    logits_ptr, bias_ptr, mask_ptr, weights_ptr, ids_ptr, error_ptr,
    num_tokens, num_columns, num_prefix, stride_lt, stride_le, scaling,
    TOP_K: tl.constexpr, K_PAD: tl.constexpr, SOFTMAX: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_MASK: tl.constexpr, RENORMALIZE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_E)
    row_ok = rows < num_tokens
    col_ok = cols < num_columns
    x = tl.load(logits_ptr + rows[:, None] * stride_lt + cols[None, :] * stride_le,
                mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
    active = col_ok & (cols < num_prefix)
    if HAS_MASK:
        active = active & (tl.load(mask_ptr + cols, mask=col_ok, other=0) != 0)
    active_2d = active[None, :] & (rows[:, None] >= 0)
    if SOFTMAX:
        masked = tl.where(active_2d, x, float("-inf"))
        shifted = tl.exp(masked - tl.max(masked, axis=1)[:, None])
        scores = shifted / tl.sum(shifted, axis=1)[:, None]
    else:
        scores = tl.sigmoid(x)
    choice = scores
    if HAS_BIAS:
        choice = choice + tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    choice = tl.where(active_2d, choice, float("-inf"))

    ks = tl.arange(0, K_PAD)
    chosen_w = tl.zeros([BLOCK_T, K_PAD], dtype=tl.float32)
    chosen_id = tl.zeros([BLOCK_T, K_PAD], dtype=tl.int32)
    total = tl.zeros([BLOCK_T], dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        best = tl.max(choice, axis=1)
        none_left = best == float("-inf")
        tl.atomic_or(error_ptr + 0 * rows, 2, mask=row_ok & none_left)
        index = tl.min(tl.where(choice == best[:, None], cols[None, :], BLOCK_E), axis=1)
        index = tl.where(none_left, 0, index)
        picked = (cols[None, :] == index[:, None]) & (best[:, None] > float("-inf"))
        weight = tl.sum(tl.where(picked, scores, 0.0), axis=1)
        total += weight
        chosen_w = tl.where(ks[None, :] == j, weight[:, None], chosen_w)
        chosen_id = tl.where(ks[None, :] == j, index[:, None], chosen_id)
        choice = tl.where(picked, float("-inf"), choice)
    if RENORMALIZE:
        chosen_w = chosen_w / (total[:, None] + 1e-20)
    chosen_w = chosen_w * scaling
    out_mask = row_ok[:, None] & (ks[None, :] < TOP_K)
    out_offsets = rows[:, None] * TOP_K + ks[None, :]
    tl.store(weights_ptr + out_offsets, chosen_w, mask=out_mask)
    tl.store(ids_ptr + out_offsets, chosen_id, mask=out_mask)


def moe_route(logits: torch.Tensor, correction_bias: torch.Tensor | None,
              expert_mask: torch.Tensor | None, top_k: int, softmax: bool, num_prefix: int,
              renormalize: bool, scaling: float,
              error_flag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (T, Ec) -> (weights (T, k) fp32, ids (T, k) int32); checked arguments only."""
    num_tokens, num_columns = logits.shape
    weights = torch.empty(num_tokens, top_k, dtype=torch.float32, device=logits.device)
    ids = torch.empty(num_tokens, top_k, dtype=torch.int32, device=logits.device)
    if num_tokens == 0:
        return weights, ids
    block_e = triton.next_power_of_2(num_columns)
    block_t = max(1, min(64, 4096 // block_e))
    mask = None if expert_mask is None else expert_mask[:num_columns].to(torch.int8)
    _route_kernel[(triton.cdiv(num_tokens, block_t),)](
        logits, correction_bias if correction_bias is not None else logits,
        mask if mask is not None else ids, weights, ids, error_flag,
        num_tokens, num_columns, num_prefix, logits.stride(0), logits.stride(1), float(scaling),
        TOP_K=top_k, K_PAD=triton.next_power_of_2(top_k), SOFTMAX=softmax,
        HAS_BIAS=correction_bias is not None, HAS_MASK=mask is not None,
        RENORMALIZE=renormalize, BLOCK_T=block_t, BLOCK_E=block_e,
    )
    return weights, ids
