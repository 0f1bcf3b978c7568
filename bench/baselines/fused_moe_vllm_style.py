"""A vLLM-style fused MoE in Triton: the published design of vLLM's ``fused_experts``, written
here from its description (docs: /work/shared/reference/moe-kernels.md §1), as a benchmark
baseline for our kernels. Not library code: no argument checks beyond asserts, forward only.

Pipeline (like vLLM's ``fused_experts_impl`` with a non-gated ``relu2`` or a gated ``silu_glu``
activation):

1. ``moe_align_block_size``: the (token, k) slots sorted by expert, each expert's segment padded
   to a multiple of BLOCK_M with the sentinel ``T*k`` (``sorted_token_ids``), one expert id per
   BLOCK_M-row block (``expert_ids``) and the padded total (``num_tokens_post_padded``). The
   buffers have the worst-case size ``T*k + E*(BLOCK_M-1)``; blocks past the padded total exit at
   once (vLLM's small-batch trim bounds the grid at ``T*k*BLOCK_M`` rows when T < BLOCK_M).
2. ONE Triton GEMM kernel for both projections: a program owns a BLOCK_M x BLOCK_N tile of the
   sorted rows (grouped "GROUP_M" ordering for L2 reuse), loads the block's expert id, gathers
   A's rows through ``sorted_token_ids // top_k`` in the load, streams the expert's B (E, N, K)
   through its strides (prefix views ``w[:, :r, :d]`` are read in place), optionally multiplies
   by the routing weight of each slot, and scatter-stores to row ``slot`` of the (T*k, N) output.
3. up projection into ``cache1`` (T*k, r), the activation as separate torch kernels (vLLM runs a
   separate activation kernel), the down projection with the routing weights into ``cache3``
   (T*k, d), then the sum over k (vLLM's ``moe_sum``) and the routed scaling factor.

Differences from vLLM that do not matter for timing: the alignment is plain torch ops (vLLM has a
CUDA op; it is a few tens of microseconds either way), no chunking over tokens, no quantisation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def fused_moe_kernel(
    a_ptr, b_ptr, c_ptr, topk_weights_ptr, sorted_token_ids_ptr, expert_ids_ptr,
    num_tokens_post_padded_ptr,
    N, K, EM, num_valid_tokens,
    stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
    MUL_ROUTED_WEIGHT: tl.constexpr, TOP_K: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # grouped ordering: GROUP_M row blocks share the B column tiles while they are in L2
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(EM, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    num_tokens_post_padded = tl.load(num_tokens_post_padded_ptr)
    if pid_m * BLOCK_M >= num_tokens_post_padded:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_token = tl.load(sorted_token_ids_ptr + offs_m).to(tl.int64)
    token_mask = offs_token < num_valid_tokens
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)

    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + (offs_token[:, None] // TOP_K) * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + expert * stride_be + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k0 * BLOCK_K
        a = tl.load(a_ptrs, mask=token_mask[:, None] & (offs_k[None, :] < k_left), other=0.0)
        b = tl.load(b_ptrs, mask=(offs_k[:, None] < k_left) & n_mask[None, :], other=0.0)
        acc += tl.dot(a, b, input_precision=PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    if MUL_ROUTED_WEIGHT:
        weight = tl.load(topk_weights_ptr + offs_token, mask=token_mask, other=0.0)
        acc = acc * weight[:, None]
    c_ptrs = c_ptr + offs_token[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=token_mask[:, None] & n_mask[None, :])


def default_config(num_tokens: int, num_experts: int) -> dict:
    """vLLM's fallback when no tuned config file matches (ours: N=1856 at elastic widths never
    matches one): small tiles for decode-sized batches, 64x64x32 with GROUP_M=8 otherwise."""
    if num_tokens <= num_experts:
        return dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, GROUP_M=1)
    return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8)


def moe_align_block_size(topk_ids: torch.Tensor, block_m: int, num_experts: int):
    """-> (sorted_token_ids (T*k + E*(block_m-1),), expert_ids (blocks,), num_tokens_post_padded
    (1,)), int32, without a host sync. Padding rows hold the sentinel T*k."""
    flat = topk_ids.reshape(-1).long()
    numel = flat.numel()
    device = topk_ids.device
    max_padded = numel + num_experts * (block_m - 1)
    counts = torch.bincount(flat, minlength=num_experts)
    padded = torch.div(counts + block_m - 1, block_m, rounding_mode="floor") * block_m
    padded_ends = padded.cumsum(0)
    padded_starts = padded_ends - padded
    starts = counts.cumsum(0) - counts
    order = torch.argsort(flat, stable=True)
    expert_of = flat[order]
    dest = padded_starts[expert_of] + torch.arange(numel, device=device) - starts[expert_of]
    sorted_ids = torch.full((max_padded,), numel, dtype=torch.int32, device=device)
    sorted_ids[dest] = order.to(torch.int32)
    num_blocks = triton.cdiv(max_padded, block_m)
    block_starts = torch.arange(num_blocks, device=device) * block_m
    expert_ids = torch.searchsorted(padded_ends, block_starts, right=True)
    expert_ids = expert_ids.clamp_(max=num_experts - 1).to(torch.int32)
    return sorted_ids, expert_ids, padded_ends[-1:].to(torch.int32)


def invoke_fused_moe_kernel(a, b, c, topk_weights, sorted_ids, expert_ids, num_post_padded,
                            mul_routed_weight: bool, top_k: int, config: dict) -> torch.Tensor:
    """c[slot] = a[slot // top_k] @ b[expert].T (times topk_weights[slot]); b is (E, N, K)."""
    num_valid = topk_weights.numel()
    em = sorted_ids.numel()
    if a.shape[0] < config["BLOCK_M"]:  # vLLM's small-batch trim of the grid
        em = min(em, a.shape[0] * top_k * config["BLOCK_M"])
    n, k = b.shape[1], b.shape[2]
    grid = (triton.cdiv(em, config["BLOCK_M"]) * triton.cdiv(n, config["BLOCK_N"]),)
    fused_moe_kernel[grid](
        a, b, c, topk_weights, sorted_ids, expert_ids, num_post_padded, n, k, em, num_valid,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), b.stride(2), c.stride(0), c.stride(1),
        MUL_ROUTED_WEIGHT=mul_routed_weight, TOP_K=top_k,
        PRECISION="ieee" if a.dtype == torch.float32 else "tf32", **config)
    return c


def fused_experts(hidden: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
                  topk_weights: torch.Tensor, topk_ids: torch.Tensor, *, activation: str = "relu2",
                  ffn_width: int | None = None, scaling: float = 1.0,
                  config: dict | None = None) -> torch.Tensor:
    """Routed experts only (no shared expert), our weight layout: w_up (E, F, D) ((E, 2F, D) gate
    then value rows for silu_glu), w_down (E, D, F), read at widths r = ffn_width and
    d = hidden.shape[1]. Returns (T, d) in hidden's dtype."""
    assert hidden.dim() == 2 and topk_ids.shape == topk_weights.shape
    num_tokens, top_k = topk_ids.shape
    num_experts, _, parent_f = w_down.shape
    d = hidden.shape[1]
    r = parent_f if ffn_width is None else ffn_width
    if num_tokens == 0:
        return hidden.new_zeros(0, d)
    config = dict(config or default_config(num_tokens, num_experts))
    hidden = hidden.contiguous()
    weights = topk_weights.reshape(-1).float().contiguous()
    sorted_ids, expert_ids, num_post = moe_align_block_size(topk_ids, config["BLOCK_M"],
                                                            num_experts)
    num_slots = num_tokens * top_k
    args = (weights, sorted_ids, expert_ids, num_post)

    def up(view):
        cache = hidden.new_empty(num_slots, view.shape[1])
        return invoke_fused_moe_kernel(hidden, view, cache, *args, False, top_k, config)

    if activation == "relu2":
        cache1 = torch.square(torch.relu(up(w_up[:, :r, :d])))
    elif activation == "silu_glu":
        half = w_up.shape[1] // 2
        if r == half:  # one GEMM over the concatenated gate|value rows, like vLLM's w13
            gate, value = up(w_up[:, :, :d]).chunk(2, dim=-1)
        else:  # the two halves of a narrowed GLU are not one strided view
            gate, value = up(w_up[:, :r, :d]), up(w_up[:, half : half + r, :d])
        cache1 = torch.nn.functional.silu(gate) * value
    else:
        raise ValueError(f"unknown activation {activation!r}")
    cache3 = hidden.new_empty(num_slots, d)
    invoke_fused_moe_kernel(cache1, w_down[:, :d, :r], cache3, *args, True, 1, config)
    out = cache3.view(num_tokens, top_k, d).sum(dim=1)
    return out if scaling == 1.0 else out * scaling
