"""Triton chunked SSD backward at an elastic width (gradients of ``ssd_scan``).

The backward uses its own chunk of 64 tokens (the result does not depend on the chunking): its
kernels hold whole-chunk (Q, Q) tiles, and 64 is the smallest M of Hopper's wgmma; over the state
they hold blocks of ``STATE_BLOCK_N`` entries, never a whole (Q, N) tile (those spilled at
N = 128). The forward's chunk table and entering states are recomputed first (the forward's
kernels 1-3, fp32 states), then:

1. ``_output_state_grad_kernel``: per (chunk, head, channel block) the gradient that the chunk's
   outputs send to the state entering it, ``sum_t exp(cum_t) gy_t C_t^T`` (gy = dout * silu(z)).
2. ``_state_passing_bwd_kernel``: per (sequence, head, state block) a reverse walk over the chunks:
   the gradient of the state leaving each chunk (the final-state gradient for the last one), and
   the gradient of the initial state.
3. ``_chunk_bwd_local_kernel``: per (chunk, head, channel block) the chunk recomputed (so z's
   gradient sees the pre-gate output; its scores and state products summed over blocks of the
   state) and differentiated in its channels: x, z, the D partial sums, and the block's share of
   the per-token sums the log-decay gradient needs (the score term included).
4. ``_chunk_bwd_shared_kernel``: per (chunk, head, state block) the gradients of B and C of the
   head, which sum over the head's channels (a loop over channel blocks).
5. ``_decay_grad_kernel``: per (chunk, head) raw dt's gradient and the chunk's share of A's, from
   the local kernel's per-token sums; the log-decay gradient is reverse-cumsummed.

Every matmul runs on the tensor cores as TF32 on fp32 values (no IEEE dots), whatever the input
dtype; the other arithmetic is fp32. The launcher reduces B/C over the heads of a group and
A/D/dt_bias over tokens and chunks, and scatters A/D/dt_bias into the parent's layout (zero
outside the active slice). 64-bit offsets.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from star_elastic_kernels.triton.ssd_scan import _chunk_setup, _entering_states

CHUNK = 64  # the backward's own chunk: whole-chunk tiles, the smallest wgmma M (see ssd_scan_bwd)
BWD_WARPS = 8
# Blocks of the chunk kernels, sized so that at N = 128 neither spills on sm_90 (registers at
# the Nemotron Nano v3 shape, AOT: local 233 bf16 / 172 fp32, shared 215 bf16 / 210 fp32; see
# tests/kernels/test_ssm_sm90_compile.py): whole-N tiles, or 32 channels per step of the shared
# kernel, reach the 255-register cap.
LOCAL_BLOCK_P = 16  # channels per program of the local kernel
SHARED_BLOCK_P = 16  # channels per step of the shared kernel's reduction over the head
STATE_BLOCK_N = 64  # state entries per step of the local kernel's loop, per shared-kernel program


@triton.jit
def _output_state_grad_kernel(
    dout_ptr, z_ptr, dt_ptr, A_ptr, C_ptr, dt_bias_ptr, chunk_table_ptr, dstates_ptr,
    num_chunks, heads_per_group, parent_heads_per_group, head_dim, state_size, num_active,
    stride_do_b, stride_do_l, stride_do_h, stride_z_b, stride_z_l, stride_z_h,
    stride_dt_b, stride_dt_l, stride_dt_h, stride_C_b, stride_C_l, stride_C_g,
    dt_min, dt_max,
    HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    chunk, head, batch, token0, length, group, parent_head, _, cum, t, rows, in_chunk = \
        _chunk_setup(dt_ptr, A_ptr, dt_bias_ptr, chunk_table_ptr, num_chunks,
                     heads_per_group, parent_heads_per_group, stride_dt_b, stride_dt_l,
                     stride_dt_h, dt_min, dt_max, HAS_DT_BIAS, DT_SOFTPLUS, BLOCK_Q)
    p0 = tl.program_id(2).to(tl.int64) * BLOCK_P
    p = p0 + tl.arange(0, BLOCK_P).to(tl.int64)
    tile = in_chunk[:, None] & (p[None, :] < head_dim)
    gy = tl.load(dout_ptr + batch * stride_do_b + rows[:, None] * stride_do_l
                 + head * stride_do_h + p[None, :], mask=tile, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + batch * stride_z_b + rows[:, None] * stride_z_l + head * stride_z_h
                    + p[None, :], mask=tile, other=0.0).to(tl.float32)
        gy = gy * z * tl.sigmoid(z)
    gy = gy * tl.exp(cum)[:, None]
    out_base = dstates_ptr + (chunk * num_active + head) * head_dim * state_size
    for n0 in range(0, state_size, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        c = tl.load(C_ptr + batch * stride_C_b + rows[:, None] * stride_C_l + group * stride_C_g
                    + n[None, :], mask=in_chunk[:, None] & (n[None, :] < state_size),
                    other=0.0).to(tl.float32)
        grad = tl.dot(tl.trans(gy), c, input_precision="tf32")
        tl.store(out_base + p[:, None] * state_size + n[None, :], grad,
                 mask=(p[:, None] < head_dim) & (n[None, :] < state_size))


@triton.jit
def _state_passing_bwd_kernel(
    dstates_ptr, chunk_decay_ptr, seq_table_ptr, dfinal_ptr, dinitial_ptr,
    num_seqs, num_active, state_numel, HAS_DFINAL: tl.constexpr, BLOCK: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(2).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < state_numel
    first_chunk = tl.load(seq_table_ptr + seq)
    count = tl.load(seq_table_ptr + num_seqs + seq)
    if HAS_DFINAL:
        grad = tl.load(dfinal_ptr + (seq * num_active + head) * state_numel + offs, mask=mask,
                       other=0.0)
    else:
        grad = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(0, count):
        chunk = first_chunk + count - 1 - i
        slot = dstates_ptr + (chunk * num_active + head) * state_numel + offs
        from_outputs = tl.load(slot, mask=mask, other=0.0)
        tl.store(slot, grad, mask=mask)  # from here on: gradient of the state leaving the chunk
        grad = from_outputs + tl.load(chunk_decay_ptr + chunk * num_active + head) * grad
    tl.store(dinitial_ptr + (seq * num_active + head) * state_numel + offs, grad, mask=mask)


@triton.jit
def _causal_decay(cum, t):
    """exp(cum_t - cum_s) for s <= t, else 0: (t, s). Cheap enough to recompute where it is used
    rather than hold a (Q, Q) tile through a loop."""
    causal = t[:, None] >= t[None, :]
    return tl.exp(tl.where(causal, cum[:, None] - cum[None, :], float("-inf")))


@triton.jit
def _load_bc_block(B_ptr, C_ptr, batch, rows, group, in_chunk, n, state_size,
                   stride_B_b, stride_B_l, stride_B_g, stride_C_b, stride_C_l, stride_C_g):
    """The chunk's (Q, BLOCK_N) tiles of B and C at state entries ``n``, fp32."""
    tile_n = in_chunk[:, None] & (n < state_size)[None, :]
    b = tl.load(B_ptr + batch * stride_B_b + rows[:, None] * stride_B_l + group * stride_B_g
                + n[None, :], mask=tile_n, other=0.0).to(tl.float32)
    c = tl.load(C_ptr + batch * stride_C_b + rows[:, None] * stride_C_l + group * stride_C_g
                + n[None, :], mask=tile_n, other=0.0).to(tl.float32)
    return b, c


@triton.jit
def _chunk_bwd_local_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dt_bias_ptr, chunk_table_ptr, states_ptr,
    dstates_ptr, dout_ptr, dx_ptr, dz_ptr, dD_ptr, parts_ptr, state_dot_ptr,
    num_chunks, heads_per_group, parent_heads_per_group, head_dim, state_size, num_active, seqlen,
    stride_x_b, stride_x_l, stride_x_h, stride_dt_b, stride_dt_l, stride_dt_h,
    stride_B_b, stride_B_l, stride_B_g, stride_C_b, stride_C_l, stride_C_g,
    stride_z_b, stride_z_l, stride_z_h, stride_D_h, stride_D_p,
    stride_do_b, stride_do_l, stride_do_h,
    dt_min, dt_max,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Per (chunk, head, channel block): the channel-local gradients (x, z, D) and the block's
    share of the per-token sums the log-decay gradient needs (to ``parts``/``state_dot``)."""
    chunk, head, batch, token0, length, group, parent_head, dt, cum, t, rows, in_chunk = \
        _chunk_setup(dt_ptr, A_ptr, dt_bias_ptr, chunk_table_ptr, num_chunks,
                     heads_per_group, parent_heads_per_group, stride_dt_b, stride_dt_l,
                     stride_dt_h, dt_min, dt_max, HAS_DT_BIAS, DT_SOFTPLUS, BLOCK_Q)
    p_block = tl.program_id(2)
    p = p_block.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    p_mask = p < head_dim
    # Every product that sums over the state runs over blocks of BLOCK_N entries, so only its
    # (Q, Q) and (Q, BLOCK_P) accumulators live across the loop, never a whole (Q, N) tile of B or
    # C (those spilled at N = 128).
    scores = tl.zeros([BLOCK_Q, BLOCK_Q], dtype=tl.float32)  # C B^T
    c_h_in = tl.zeros([BLOCK_Q, BLOCK_P], dtype=tl.float32)  # C h_in^T
    b_g_end = tl.zeros([BLOCK_Q, BLOCK_P], dtype=tl.float32)  # B g_end^T
    state_dot = 0.0  # sum of g_end * h_in over the block's channels and every state entry
    state_base = (chunk * num_active + head) * head_dim * state_size
    for n0 in range(0, state_size, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        b, c = _load_bc_block(B_ptr, C_ptr, batch, rows, group, in_chunk, n, state_size,
                              stride_B_b, stride_B_l, stride_B_g, stride_C_b, stride_C_l,
                              stride_C_g)
        state_offsets = state_base + p[:, None] * state_size + n[None, :]
        state_mask = p_mask[:, None] & (n < state_size)[None, :]
        h_in = tl.load(states_ptr + state_offsets, mask=state_mask, other=0.0)  # (BLOCK_P, N)
        g_end = tl.load(dstates_ptr + state_offsets, mask=state_mask, other=0.0)
        scores = tl.dot(c, tl.trans(b), scores, input_precision="tf32")
        c_h_in = tl.dot(c, tl.trans(h_in), c_h_in, input_precision="tf32")
        b_g_end = tl.dot(b, tl.trans(g_end), b_g_end, input_precision="tf32")
        state_dot += tl.sum(g_end * h_in)

    token = batch * seqlen + rows  # row of the contiguous (b*l, ...) gradient outputs
    cum_last = tl.max(tl.where(t == length - 1, cum, float("-inf")), axis=0)
    cb_decay = scores * _causal_decay(cum, t)
    y_inter = tl.exp(cum)[:, None] * c_h_in
    m_end = tl.exp(cum_last - cum)[:, None] * b_g_end
    tile_p = in_chunk[:, None] & p_mask[None, :]
    act_offsets = (token[:, None] * num_active + head) * head_dim + p[None, :]
    x = tl.load(x_ptr + batch * stride_x_b + rows[:, None] * stride_x_l + head * stride_x_h
                + p[None, :], mask=tile_p, other=0.0).to(tl.float32)
    dout = tl.load(dout_ptr + batch * stride_do_b + rows[:, None] * stride_do_l
                   + head * stride_do_h + p[None, :], mask=tile_p, other=0.0).to(tl.float32)
    gy = dout
    if HAS_D:
        d = tl.load(D_ptr + parent_head * stride_D_h + p * stride_D_p, mask=p_mask,
                    other=0.0).to(tl.float32)
    if HAS_Z:
        y = y_inter + tl.dot(cb_decay * dt[None, :], x, input_precision="tf32")
        if HAS_D:
            y += d[None, :] * x
        z = tl.load(z_ptr + batch * stride_z_b + rows[:, None] * stride_z_l
                    + head * stride_z_h + p[None, :], mask=tile_p, other=0.0).to(tl.float32)
        sig = tl.sigmoid(z)
        gy = dout * z * sig
        tl.store(dz_ptr + act_offsets, dout * y * sig * (1.0 + z * (1.0 - sig)), mask=tile_p)
    m = tl.dot(tl.trans(cb_decay), gy, input_precision="tf32") + m_end
    dx = dt[:, None] * m
    if HAS_D:
        dx += d[None, :] * gy
        tl.store(dD_ptr + (chunk * num_active + head) * head_dim + p, tl.sum(gy * x, axis=0),
                 mask=p_mask)
    tl.store(dx_ptr + act_offsets, dx, mask=tile_p)
    num_p_blocks = tl.num_programs(2)
    part = (chunk * num_active + head) * num_p_blocks + p_block
    parts = parts_ptr + part * 3 * BLOCK_Q + t
    # The log-decay gradient's score term sum_s e_ts - sum_s e_st, with
    # e = (C B^T * decay)_ts dt_s gy_t.x_s, is linear in gy.x^T, so each channel block adds its
    # share here, where the scores are at hand, and the shared kernel never builds them.
    e = cb_decay * dt[None, :] * tl.dot(gy, tl.trans(x), input_precision="tf32")
    tl.store(parts, tl.sum(gy * y_inter, axis=1) + tl.sum(e, axis=1) - tl.sum(e, axis=0))
    tl.store(parts + BLOCK_Q, dt * tl.sum(x * m_end, axis=1))
    tl.store(parts + 2 * BLOCK_Q, tl.sum(x * m, axis=1))
    tl.store(state_dot_ptr + part, state_dot)


@triton.jit
def _chunk_bwd_shared_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, z_ptr, dt_bias_ptr, chunk_table_ptr, states_ptr,
    dstates_ptr, dout_ptr, dB_ptr, dC_ptr,
    num_chunks, heads_per_group, parent_heads_per_group, head_dim, state_size, num_active, seqlen,
    stride_x_b, stride_x_l, stride_x_h, stride_dt_b, stride_dt_l, stride_dt_h,
    stride_B_b, stride_B_l, stride_B_g, stride_C_b, stride_C_l, stride_C_g,
    stride_z_b, stride_z_l, stride_z_h, stride_do_b, stride_do_l, stride_do_h,
    dt_min, dt_max,
    HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Per (chunk, head, state block): the gradients of B and C of the head, which sum over the
    head's channels (a loop over channel blocks)."""
    chunk, head, batch, token0, length, group, parent_head, dt, cum, t, rows, in_chunk = \
        _chunk_setup(dt_ptr, A_ptr, dt_bias_ptr, chunk_table_ptr, num_chunks,
                     heads_per_group, parent_heads_per_group, stride_dt_b, stride_dt_l,
                     stride_dt_h, dt_min, dt_max, HAS_DT_BIAS, DT_SOFTPLUS, BLOCK_Q)
    n = tl.program_id(2).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    n_mask = n < state_size
    token = batch * seqlen + rows
    cum_last = tl.max(tl.where(t == length - 1, cum, float("-inf")), axis=0)
    x_base = x_ptr + batch * stride_x_b + rows[:, None] * stride_x_l + head * stride_x_h
    do_base = dout_ptr + batch * stride_do_b + rows[:, None] * stride_do_l + head * stride_do_h
    z_base = z_ptr + batch * stride_z_b + rows[:, None] * stride_z_l + head * stride_z_h
    # Each program takes one block of the state, so only that block's (Q, BLOCK_N) sums over
    # the channels live at once (whole-N ones spilled at N = 128); the (Q, Q) gy.x^T that every
    # block needs is recomputed per block (one small dot per channel block) rather than shared.
    gx = tl.zeros([BLOCK_Q, BLOCK_Q], dtype=tl.float32)  # (t, s): gy_t . x_s
    x_g_end = tl.zeros([BLOCK_Q, BLOCK_N], dtype=tl.float32)  # x_s . g_end[:, n]
    gy_h_in = tl.zeros([BLOCK_Q, BLOCK_N], dtype=tl.float32)  # gy_t . h_in[:, n]
    state_base = (chunk * num_active + head) * head_dim * state_size
    for p0 in range(0, head_dim, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P).to(tl.int64)
        p_mask = p < head_dim
        tile_p = in_chunk[:, None] & p_mask[None, :]
        x = tl.load(x_base + p[None, :], mask=tile_p, other=0.0).to(tl.float32)
        gy = tl.load(do_base + p[None, :], mask=tile_p, other=0.0).to(tl.float32)
        if HAS_Z:
            z = tl.load(z_base + p[None, :], mask=tile_p, other=0.0).to(tl.float32)
            gy = gy * z * tl.sigmoid(z)
        state_offsets = state_base + p[:, None] * state_size + n[None, :]
        state_mask = p_mask[:, None] & n_mask[None, :]
        h_in = tl.load(states_ptr + state_offsets, mask=state_mask, other=0.0)
        g_end = tl.load(dstates_ptr + state_offsets, mask=state_mask, other=0.0)
        gx = tl.dot(gy, tl.trans(x), gx, input_precision="tf32")
        x_g_end = tl.dot(x, g_end, x_g_end, input_precision="tf32")
        gy_h_in = tl.dot(gy, h_in, gy_h_in, input_precision="tf32")

    gx_decay = gx * _causal_decay(cum, t)
    b, c = _load_bc_block(B_ptr, C_ptr, batch, rows, group, in_chunk, n, state_size,
                          stride_B_b, stride_B_l, stride_B_g, stride_C_b, stride_C_l, stride_C_g)
    db = dt[:, None] * tl.dot(tl.trans(gx_decay), c, input_precision="tf32") \
        + (dt * tl.exp(cum_last - cum))[:, None] * x_g_end
    dc = tl.exp(cum)[:, None] * gy_h_in + tl.dot(gx_decay * dt[None, :], b,
                                                 input_precision="tf32")
    bc_offsets = (token[:, None] * num_active + head) * state_size + n[None, :]
    tile_n = in_chunk[:, None] & n_mask[None, :]
    tl.store(dB_ptr + bc_offsets, db, mask=tile_n)
    tl.store(dC_ptr + bc_offsets, dc, mask=tile_n)


@triton.jit
def _decay_grad_kernel(
    dt_ptr, A_ptr, dt_bias_ptr, chunk_table_ptr, parts_ptr, state_dot_ptr, ddt_ptr, dA_ptr,
    num_chunks, heads_per_group, parent_heads_per_group, num_active, seqlen, num_p_blocks,
    stride_dt_b, stride_dt_l, stride_dt_h, dt_min, dt_max,
    HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    """Per (chunk, head): raw dt's gradient and the chunk's share of A's, from the local kernel's
    per-token sums over channel blocks; the log-decay gradient is reverse-cumsummed."""
    chunk, head, batch, token0, length, group, parent_head, dt, cum, t, rows, in_chunk = \
        _chunk_setup(dt_ptr, A_ptr, dt_bias_ptr, chunk_table_ptr, num_chunks,
                     heads_per_group, parent_heads_per_group, stride_dt_b, stride_dt_l,
                     stride_dt_h, dt_min, dt_max, HAS_DT_BIAS, DT_SOFTPLUS, BLOCK_Q)
    a = tl.load(A_ptr + parent_head).to(tl.float32)
    token = batch * seqlen + rows
    is_last = t == length - 1
    cum_last = tl.max(tl.where(is_last, cum, float("-inf")), axis=0)
    g_cum = tl.zeros([BLOCK_Q], dtype=tl.float32)
    to_end = tl.zeros([BLOCK_Q], dtype=tl.float32)
    direct_dt = tl.zeros([BLOCK_Q], dtype=tl.float32)
    state_dot = 0.0
    for i in range(0, num_p_blocks):
        part = (chunk * num_active + head) * num_p_blocks + i
        parts = parts_ptr + part * 3 * BLOCK_Q + t
        g_cum += tl.load(parts)
        to_end += tl.load(parts + BLOCK_Q)
        direct_dt += tl.load(parts + 2 * BLOCK_Q)
        state_dot += tl.load(state_dot_ptr + part)

    # log-decay gradient per token, then reverse-cumsummed onto every dA_s = dt_s * A
    g_cum -= to_end
    end_term = tl.sum(to_end, axis=0) + tl.exp(cum_last) * state_dot
    g_cum += tl.where(is_last, end_term, 0.0)
    g_da = tl.sum(g_cum, axis=0) - tl.cumsum(g_cum, axis=0) + g_cum
    g_dt = direct_dt + g_da * a
    tl.store(dA_ptr + chunk * num_active + head, tl.sum(g_da * dt, axis=0))

    raw = tl.load(dt_ptr + batch * stride_dt_b + rows * stride_dt_l + head * stride_dt_h,
                  mask=in_chunk, other=0.0).to(tl.float32)
    if HAS_DT_BIAS:
        raw += tl.load(dt_bias_ptr + parent_head).to(tl.float32)
    value = raw
    slope = tl.full([BLOCK_Q], 1.0, tl.float32)
    if DT_SOFTPLUS:
        value = tl.where(raw <= 20.0, tl.log(1.0 + tl.exp(raw)), raw)
        slope = tl.where(raw <= 20.0, tl.sigmoid(raw), 1.0)
    passes = (value >= dt_min) & (value <= dt_max)
    tl.store(ddt_ptr + token * num_active + head, tl.where(passes, g_dt * slope, 0.0),
             mask=in_chunk)


def ssd_scan_bwd(dy, dfinal, x, dt, A, B, C, D, z, dt_bias, initial_states, bounds,
                 chunk_size, dt_softplus, dt_limit, heads_per_group):
    """Gradients of ``ssd_scan_fwd``: returns (dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinitial)
    with the inputs' shapes (fp32; dA, dD, ddt_bias in the parent's layout, zero outside the slice;
    None where the input is None)."""
    b, l, num_active, p = x.shape
    num_groups, state_size = B.shape[2], B.shape[3]
    num_heads = A.shape[0]
    # The result does not depend on the chunking, so the backward picks its own: its kernels hold
    # (Q, Q) fp32 tiles of a whole chunk, which fit a program's registers (with the state in
    # blocks) up to Q = 64 at N = 128 (tests/kernels/test_ssm_sm90_compile.py).
    chunk_size = CHUNK
    parent_per_group = num_heads // num_groups
    f32 = dict(dtype=torch.float32, device=x.device)
    chunk_table, seq_table, states, chunk_decay, _, _ = _entering_states(
        x, dt, A, B, dt_bias, initial_states, bounds, chunk_size, dt_softplus, dt_limit,
        heads_per_group)
    num_chunks, num_seqs = chunk_table.shape[1], seq_table.shape[1]
    dx = torch.zeros((b, l, num_active, p), **f32)
    dz = torch.zeros((b, l, num_active, p), **f32) if z is not None else None
    ddt = torch.zeros((b, l, num_active), **f32)
    dB_heads = torch.zeros((b, l, num_active, state_size), **f32)
    dC_heads = torch.zeros((b, l, num_active, state_size), **f32)
    dD_part = torch.zeros((num_chunks, num_active, p), **f32)
    dA_part = torch.zeros((num_chunks, num_active), **f32)
    dinitial = torch.zeros((num_seqs, num_active, p, state_size), **f32)
    if num_seqs > 0 and num_active > 0 and p > 0:
        dy = dy.contiguous()
        dstates = torch.zeros_like(states)
        dummy = x
        block_q = max(16, triton.next_power_of_2(chunk_size))
        block_p = max(16, min(64, triton.next_power_of_2(p)))
        block_n = max(16, min(64, triton.next_power_of_2(state_size)))
        limits = (float(dt_limit[0]), float(dt_limit[1]))
        flags = dict(HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=bool(dt_softplus))
        z_strides = (0, 0, 0) if z is None else z.stride()[:3]
        if num_chunks > 0:
            _output_state_grad_kernel[(num_chunks, num_active, triton.cdiv(p, block_p))](
                dy, z if z is not None else dummy, dt, A, C,
                dt_bias if dt_bias is not None else dummy, chunk_table, dstates,
                num_chunks, heads_per_group, parent_per_group, p, state_size, num_active,
                *dy.stride()[:3], *z_strides, *dt.stride(), *C.stride()[:3], *limits,
                HAS_Z=z is not None, BLOCK_Q=block_q, BLOCK_P=block_p, BLOCK_N=block_n, **flags)
        state_numel = p * state_size
        block = min(1024, triton.next_power_of_2(state_numel))
        _state_passing_bwd_kernel[(num_seqs, num_active, triton.cdiv(state_numel, block))](
            dstates, chunk_decay, seq_table,
            dfinal.contiguous() if dfinal is not None else dummy, dinitial,
            num_seqs, num_active, state_numel, HAS_DFINAL=dfinal is not None, BLOCK=block)
        if num_chunks > 0:
            D_strides = (0, 0) if D is None else (D.stride(0), D.stride(1) if D.dim() == 2 else 0)
            local_p = max(16, min(LOCAL_BLOCK_P, triton.next_power_of_2(p)))
            p_blocks = triton.cdiv(p, local_p)
            state_block = max(16, min(STATE_BLOCK_N, triton.next_power_of_2(state_size)))
            parts = torch.empty((num_chunks, num_active, p_blocks, 3, block_q), **f32)
            state_dot = torch.empty((num_chunks, num_active, p_blocks), **f32)
            common = (num_chunks, heads_per_group, parent_per_group, p, state_size, num_active, l)
            _chunk_bwd_local_kernel[(num_chunks, num_active, p_blocks)](
                x, dt, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
                dt_bias if dt_bias is not None else dummy, chunk_table, states, dstates, dy,
                dx, dz if dz is not None else dx, dD_part, parts, state_dot, *common,
                *x.stride()[:3], *dt.stride(), *B.stride()[:3], *C.stride()[:3], *z_strides,
                *D_strides, *dy.stride()[:3], *limits, HAS_D=D is not None, HAS_Z=z is not None,
                BLOCK_Q=block_q, BLOCK_P=local_p, BLOCK_N=state_block, num_warps=BWD_WARPS,
                **flags)
            state_blocks = triton.cdiv(state_size, state_block)
            _chunk_bwd_shared_kernel[(num_chunks, num_active, state_blocks)](
                x, dt, A, B, C, z if z is not None else dummy,
                dt_bias if dt_bias is not None else dummy, chunk_table, states, dstates, dy,
                dB_heads, dC_heads, *common,
                *x.stride()[:3], *dt.stride(), *B.stride()[:3], *C.stride()[:3], *z_strides,
                *dy.stride()[:3], *limits, HAS_Z=z is not None, BLOCK_Q=block_q,
                BLOCK_P=SHARED_BLOCK_P, BLOCK_N=state_block, num_warps=BWD_WARPS, **flags)
            _decay_grad_kernel[(num_chunks, num_active)](
                dt, A, dt_bias if dt_bias is not None else dummy, chunk_table, parts, state_dot,
                ddt, dA_part, num_chunks, heads_per_group, parent_per_group, num_active, l,
                p_blocks, *dt.stride(), *limits, BLOCK_Q=block_q, **flags)
    k = heads_per_group
    heads = ((torch.arange(num_groups, device=x.device) * parent_per_group)[:, None]
             + torch.arange(k, device=x.device)[None, :]).reshape(-1)
    dB = dB_heads.view(b, l, num_groups, k, state_size).sum(3)
    dC = dC_heads.view(b, l, num_groups, k, state_size).sum(3)
    dA = torch.zeros(num_heads, **f32).index_add_(0, heads, dA_part.sum(0))
    dD = None
    if D is not None:
        per_channel = dD_part.sum(0)  # (H', p)
        dD = torch.zeros(D.shape, **f32)
        if D.dim() == 2:
            dD[heads, :p] = per_channel
        else:
            dD.index_add_(0, heads, per_channel.sum(1))
    ddt_bias = None
    if dt_bias is not None:
        ddt_bias = torch.zeros(num_heads, **f32).index_add_(0, heads, ddt.sum((0, 1)))
    return dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinitial
