"""Triton MoE expert FFN, forward and backward, from the grouped GEMM kernel (moe_gemm.py).

Forward: align the (token, k) slots by expert (moe_align.py), then two grouped GEMMs:
  1. up:   gather the tokens' rows of ``hidden`` in the load, multiply by ``w_up[e, :r, :d]^T`` (and the
           value rows ``w_up[e, F:F+r, :d]`` for SiLU-GLU), activation in the epilogue -> h (T*k, r);
  2. down: h @ ``w_down[e, :d, :r]^T``, times the routing weight, scattered to slot order (fp32);
then the k slots of every token are summed in a fixed order (deterministic, no atomics) and scaled.
Experts with no tokens own no row blocks: their weights are never read. The shared expert is the
same kernel with one group holding every token.

Backward recomputes the pre-activations and uses the same kernel with ``trans_b=False`` for the
input gradients and the grouped weight-gradient kernel for ``w_up``/``w_down``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from star_elastic_kernels.triton import moe_align as align_kernels
from star_elastic_kernels.triton import moe_gemm as gemm


def _routed_layout(ids: torch.Tensor, num_experts: int, block_m: int, error_flag: torch.Tensor):
    slots, counts, expert_offsets, block_offsets = align_kernels.moe_align(ids, num_experts, block_m,
                                                                           error_flag)
    return slots, expert_offsets, block_offsets


def _dense_layout(num_rows: int, block_m: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    seg = torch.tensor([0, num_rows], dtype=torch.int32, device=device)
    blocks = torch.tensor([0, -(-num_rows // block_m)], dtype=torch.int32, device=device)
    return seg, blocks


def _ffn_forward(hidden, w_up, w_down, r, d, activation, *, num_rows, seg, blocks, block_m,
                 row_index=None, gather_div=0, scale=None, scatter=False, out=None):
    """One layout (routed or shared): returns the fp32 (rows, d) down-projection output."""
    glu_rows = w_up.shape[1] // 2
    h = hidden.new_empty(num_rows, r)
    value_offset = glu_rows * w_up.stride(1) if activation == "silu_glu" else 0
    gemm.launch_grouped_gemm(
        hidden, w_up[:, :r, :d], h, num_rows=num_rows, seg_offsets=seg, block_offsets=blocks,
        block_m=block_m, row_index=row_index, gather_div=gather_div, activation=activation,
        value_offset=value_offset)
    if out is None:
        out = torch.empty(num_rows, d, dtype=torch.float32, device=hidden.device)
    return gemm.launch_grouped_gemm(
        h, w_down[:, :d, :r], out, num_rows=num_rows, seg_offsets=seg, block_offsets=blocks,
        block_m=block_m, row_index=row_index, scale=scale, scatter=scatter)


def moe_ffn_forward(hidden, w_up, w_down, weights, ids, shared_up, shared_down, activation: str,
                    r: int, d: int, s: int, scaling: float, error_flag: torch.Tensor) -> torch.Tensor:
    num_tokens, top_k = ids.shape
    num_experts = w_down.shape[0]
    num_slots = num_tokens * top_k
    out = torch.zeros(num_tokens, d, dtype=torch.float32, device=hidden.device)
    if num_slots:
        block_m = gemm.block_m_for(num_slots / num_experts)
        slots, seg, blocks = _routed_layout(ids, num_experts, block_m, error_flag)
        # every slot belongs to exactly one expert, so the down GEMM writes every row
        per_slot = torch.empty(num_slots, d, dtype=torch.float32, device=hidden.device)
        _ffn_forward(hidden, w_up, w_down, r, d, activation, num_rows=num_slots, seg=seg,
                     blocks=blocks, block_m=block_m, row_index=slots, gather_div=top_k,
                     scale=weights.reshape(-1).float(), scatter=True, out=per_slot)
        out = per_slot.view(num_tokens, top_k, d).sum(dim=1) * scaling
    if shared_up is not None and num_tokens:
        block_m = gemm.block_m_for(num_tokens)
        seg, blocks = _dense_layout(num_tokens, block_m, hidden.device)
        out = out + _ffn_forward(hidden, shared_up.unsqueeze(0), shared_down.unsqueeze(0), s, d,
                                 activation, num_rows=num_tokens, seg=seg, blocks=blocks,
                                 block_m=block_m)
    return out.to(hidden.dtype)


def _activation_backward(activation, gate, value, grad_h):
    """(grad wrt gate pre-activation, grad wrt value or None), fp32."""
    if activation == "relu2":
        return grad_h * 2.0 * torch.relu(gate), None
    sig = torch.sigmoid(gate)
    silu = gate * sig
    return grad_h * value * (sig * (1.0 + gate * (1.0 - sig))), grad_h * silu


def _activation(activation, gate, value):
    if activation == "relu2":
        return torch.square(torch.relu(gate))
    return F.silu(gate) * value


def _ffn_backward(grad_rows, x_rows, w_up, w_down, r, d, activation, *, num_rows, seg, blocks,
                  block_m, row_scale):
    """Backward of one layout whose rows are already gathered (x_rows (rows, d), grad_rows fp32
    (rows, d) = the gradient of the un-weighted expert output times ``row_scale``).

    Returns (grad x_rows fp32, grad w_up (parent shape), grad w_down (parent shape), the fp32
    un-weighted expert outputs (rows, d) for the routing-weight gradient).
    """
    dtype = x_rows.dtype
    glu = activation == "silu_glu"
    glu_rows = w_up.shape[1] // 2
    common = dict(num_rows=num_rows, seg_offsets=seg, block_offsets=blocks, block_m=block_m)
    gate = gemm.launch_grouped_gemm(
        x_rows, w_up[:, :r, :d], torch.empty(num_rows, r, dtype=torch.float32, device=x_rows.device),
        **common)
    value = None
    if glu:
        value = gemm.launch_grouped_gemm(
            x_rows, w_up[:, glu_rows : glu_rows + r, :d],
            torch.empty(num_rows, r, dtype=torch.float32, device=x_rows.device), **common)
    h = _activation(activation, gate.to(dtype).float(), None if value is None else value.to(dtype).float()).to(dtype)
    expert_out = gemm.launch_grouped_gemm(
        h, w_down[:, :d, :r], torch.empty(num_rows, d, dtype=torch.float32, device=x_rows.device), **common)
    grad_y = (grad_rows * row_scale[:, None]).to(dtype)
    grad_h = gemm.launch_grouped_gemm(
        grad_y, w_down[:, :d, :r], torch.empty(num_rows, r, dtype=torch.float32, device=x_rows.device),
        trans_b=False, **common)
    grad_w_down = torch.zeros_like(w_down)
    gemm.launch_grouped_wgrad(grad_y, h, grad_w_down[:, :d, :r], seg)
    grad_gate, grad_value = _activation_backward(activation, gate, value, grad_h)
    grad_w_up = torch.zeros_like(w_up)
    grad_x = torch.empty(num_rows, d, dtype=torch.float32, device=x_rows.device)
    grad_gate = grad_gate.to(dtype)
    gemm.launch_grouped_wgrad(grad_gate, x_rows, grad_w_up[:, :r, :d], seg)
    gemm.launch_grouped_gemm(grad_gate, w_up[:, :r, :d], grad_x, trans_b=False, **common)
    if glu:
        grad_value = grad_value.to(dtype)
        gemm.launch_grouped_wgrad(grad_value, x_rows, grad_w_up[:, glu_rows : glu_rows + r, :d], seg)
        grad_x = grad_x + gemm.launch_grouped_gemm(
            grad_value, w_up[:, glu_rows : glu_rows + r, :d],
            torch.empty(num_rows, d, dtype=torch.float32, device=x_rows.device), trans_b=False, **common)
    return grad_x, grad_w_up, grad_w_down, expert_out


def moe_ffn_backward(grad_out, hidden, w_up, w_down, weights, ids, shared_up, shared_down,
                     activation: str, r: int, d: int, s: int, scaling: float,
                     error_flag: torch.Tensor):
    """-> (grad hidden, grad w_up, grad w_down, grad weights, grad shared_up, grad shared_down)."""
    num_tokens, top_k = ids.shape
    num_experts = w_down.shape[0]
    num_slots = num_tokens * top_k
    grad_out = grad_out.float()
    grad_hidden = torch.zeros(num_tokens, d, dtype=torch.float32, device=hidden.device)
    grad_weights = torch.zeros(num_slots, dtype=torch.float32, device=hidden.device)
    grad_w_up, grad_w_down = torch.zeros_like(w_up), torch.zeros_like(w_down)
    if num_slots:
        block_m = gemm.block_m_for(num_slots / num_experts)
        slots, seg, blocks = _routed_layout(ids, num_experts, block_m, error_flag)
        slots = slots.long()
        tokens = torch.div(slots, top_k, rounding_mode="floor")
        row_weight = weights.reshape(-1).float()[slots]
        grad_rows = grad_out[tokens]
        grad_x, grad_w_up, grad_w_down, expert_out = _ffn_backward(
            grad_rows, hidden[tokens], w_up, w_down, r, d, activation, num_rows=num_slots, seg=seg,
            blocks=blocks, block_m=block_m, row_scale=row_weight * scaling)
        grad_weights[slots] = scaling * (grad_rows * expert_out).sum(dim=-1)
        per_slot = torch.empty_like(grad_x)
        per_slot[slots] = grad_x
        grad_hidden = per_slot.view(num_tokens, top_k, d).sum(dim=1)
    grad_shared_up = grad_shared_down = None
    if shared_up is not None:
        grad_shared_up, grad_shared_down = torch.zeros_like(shared_up), torch.zeros_like(shared_down)
        if num_tokens:
            block_m = gemm.block_m_for(num_tokens)
            seg, blocks = _dense_layout(num_tokens, block_m, hidden.device)
            grad_x, grad_su, grad_sd, _ = _ffn_backward(
                grad_out, hidden, shared_up.unsqueeze(0), shared_down.unsqueeze(0), s, d, activation,
                num_rows=num_tokens, seg=seg, blocks=blocks, block_m=block_m,
                row_scale=torch.ones(num_tokens, dtype=torch.float32, device=hidden.device))
            grad_hidden = grad_hidden + grad_x
            grad_shared_up, grad_shared_down = grad_su[0], grad_sd[0]
    return (grad_hidden.to(hidden.dtype), grad_w_up, grad_w_down,
            grad_weights.view(weights.shape).to(weights.dtype), grad_shared_up, grad_shared_down)
