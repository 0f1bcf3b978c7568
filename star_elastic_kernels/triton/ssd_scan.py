"""Triton chunked SSD (Mamba-2 scan) forward at an elastic width: kernels, then the launcher.

Three kernels, each reading the compact activations and the parent's per-head parameters in place
(head ``h'`` of the compact order is parent head ``(h' // k) * (H/G) + h' % k``, group ``h' // k``):

1. ``_chunk_state_kernel``: per (chunk, head, channel block) the discretised step and its in-chunk
   cumulative log-decay (recomputed, never stored), and the chunk's own contribution to the state,
   ``S_c = x^T (exp(cum_end - cum_t) * dt_t * B_t)`` (one matmul per state block), plus the chunk's
   total decay.
2. ``_state_passing_kernel``: per (sequence, head, state block) a walk over the sequence's chunks,
   overwriting each chunk's contribution with the state *entering* it and writing the final state.
3. ``_chunk_scan_kernel``: per (chunk, head, channel block)
   ``y_t = exp(cum_t) C_t h_in + sum_{s<=t} (C_t.B_s) exp(cum_t - cum_s) dt_s x_s``, then the skip
   term ``D x`` and the gate ``silu(z)``.

Chunks never straddle a sequence: a table built on the device (``ssm/_chunks.py``, no host read)
lists, per chunk, its batch row, first token and length, so batched and packed (``cu_seqlens``)
inputs run the same kernels; packed inputs get a static upper bound of chunks, the spare ones of
length 0 (skipped).
All offsets are 64-bit. The dt processing is the same jitted function in kernels 1 and 3 so their
decays agree bit for bit. fp32 inputs multiply in IEEE fp32; fp16/bf16 inputs feed the tensor cores
in their own dtype with fp32 accumulation (as mamba-ssm does).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from star_elastic_kernels.ssm._chunks import chunk_tables


@triton.jit
def _discretize_dt(dt_raw, bias, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, dt_min,
                   dt_max):
    dt = dt_raw.to(tl.float32)
    if HAS_DT_BIAS:
        dt = dt + bias
    if DT_SOFTPLUS:
        # torch's softplus threshold: above 20, softplus(x) == x in fp32
        dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
    return tl.minimum(tl.maximum(dt, dt_min), dt_max)


@triton.jit
def _chunk_dt_and_cumsum(dt_ptr, dt_bias_ptr, A_ptr, batch, token0, length, head, parent_head,
                         stride_dt_b, stride_dt_l, stride_dt_h,
                         HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, dt_min, dt_max,
                         BLOCK_Q: tl.constexpr):
    """(dt, cumulative dt*A) over the chunk's tokens, zero past its length; fp32 (BLOCK_Q,)."""
    t = tl.arange(0, BLOCK_Q)
    in_chunk = t < length
    raw = tl.load(dt_ptr + batch * stride_dt_b + (token0 + t.to(tl.int64)) * stride_dt_l
                  + head * stride_dt_h, mask=in_chunk, other=0.0)
    bias = 0.0
    if HAS_DT_BIAS:
        bias = tl.load(dt_bias_ptr + parent_head).to(tl.float32)
    dt = _discretize_dt(raw, bias, HAS_DT_BIAS, DT_SOFTPLUS, dt_min, dt_max)
    dt = tl.where(in_chunk, dt, 0.0)
    a = tl.load(A_ptr + parent_head).to(tl.float32)
    return dt, tl.cumsum(dt * a, axis=0)


@triton.jit
def _chunk_state_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, dt_bias_ptr, chunk_table_ptr, states_ptr, chunk_decay_ptr,
    num_chunks, heads_per_group, parent_heads_per_group, head_dim, state_size, num_active,
    stride_x_b, stride_x_l, stride_x_h,
    stride_dt_b, stride_dt_l, stride_dt_h,
    stride_B_b, stride_B_l, stride_B_g,
    dt_min, dt_max,
    HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, IEEE_FP32: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    chunk = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    p0 = tl.program_id(2).to(tl.int64) * BLOCK_P
    batch = tl.load(chunk_table_ptr + chunk)
    token0 = tl.load(chunk_table_ptr + num_chunks + chunk)
    length = tl.load(chunk_table_ptr + 2 * num_chunks + chunk)
    group = head // heads_per_group
    parent_head = group * parent_heads_per_group + head % heads_per_group

    dt, cum = _chunk_dt_and_cumsum(dt_ptr, dt_bias_ptr, A_ptr, batch, token0, length, head,
                                   parent_head, stride_dt_b, stride_dt_l, stride_dt_h, HAS_DT_BIAS,
                                   DT_SOFTPLUS, dt_min, dt_max, BLOCK_Q)
    # the chunk's total log-decay is its last cumulative value (exactly, so the last token's weight
    # is exp(0) * dt); an empty chunk never runs
    total = tl.max(tl.where(tl.arange(0, BLOCK_Q) == length - 1, cum, float("-inf")), axis=0)
    weight = tl.exp(total - cum) * dt  # decay from token t to the chunk's end, times dt_t

    t = tl.arange(0, BLOCK_Q).to(tl.int64)
    rows = token0 + t
    in_chunk = t < length
    p = p0 + tl.arange(0, BLOCK_P).to(tl.int64)
    x = tl.load(x_ptr + batch * stride_x_b + rows[:, None] * stride_x_l + head * stride_x_h
                + p[None, :], mask=in_chunk[:, None] & (p[None, :] < head_dim), other=0.0)
    xw = x.to(tl.float32) * weight[:, None]
    if not IEEE_FP32:
        xw = xw.to(x_ptr.dtype.element_ty)
    out_base = states_ptr + (chunk * num_active + head) * head_dim * state_size
    for n0 in range(0, state_size, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        b = tl.load(B_ptr + batch * stride_B_b + rows[:, None] * stride_B_l + group * stride_B_g
                    + n[None, :], mask=in_chunk[:, None] & (n[None, :] < state_size), other=0.0)
        if IEEE_FP32:
            contribution = tl.dot(tl.trans(xw), b.to(tl.float32), input_precision="ieee")
        else:
            contribution = tl.dot(tl.trans(xw), b.to(xw.dtype))
        tl.store(out_base + p[:, None] * state_size + n[None, :], contribution,
                 mask=(p[:, None] < head_dim) & (n[None, :] < state_size))
    if p0 == 0:
        tl.store(chunk_decay_ptr + chunk * num_active + head, tl.exp(total))


@triton.jit
def _state_passing_kernel(
    states_ptr, chunk_decay_ptr, seq_table_ptr, initial_ptr, final_ptr,
    num_seqs, num_active, state_numel, state_size,
    stride_i_s, stride_i_h, stride_i_p, stride_i_n,
    HAS_INITIAL: tl.constexpr, BLOCK: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(2).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < state_numel
    first_chunk = tl.load(seq_table_ptr + seq)
    count = tl.load(seq_table_ptr + num_seqs + seq)
    if HAS_INITIAL:
        p = offs // state_size
        n = offs % state_size
        state = tl.load(initial_ptr + seq * stride_i_s + head * stride_i_h + p * stride_i_p
                        + n * stride_i_n, mask=mask, other=0.0).to(tl.float32)
    else:
        state = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(0, count):
        chunk = first_chunk + i
        slot = states_ptr + (chunk * num_active + head) * state_numel + offs
        own = tl.load(slot, mask=mask, other=0.0)
        tl.store(slot, state, mask=mask)  # from here on: the state entering this chunk
        state = tl.load(chunk_decay_ptr + chunk * num_active + head) * state + own
    tl.store(final_ptr + (seq * num_active + head) * state_numel + offs, state, mask=mask)


@triton.jit
def _chunk_scan_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dt_bias_ptr, chunk_table_ptr, states_ptr,
    y_ptr,
    num_chunks, heads_per_group, parent_heads_per_group, head_dim, state_size, num_active,
    stride_x_b, stride_x_l, stride_x_h,
    stride_dt_b, stride_dt_l, stride_dt_h,
    stride_B_b, stride_B_l, stride_B_g,
    stride_C_b, stride_C_l, stride_C_g,
    stride_z_b, stride_z_l, stride_z_h,
    stride_D_h, stride_D_p,
    stride_y_b, stride_y_l, stride_y_h,
    dt_min, dt_max,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    IEEE_FP32: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    chunk = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    p0 = tl.program_id(2).to(tl.int64) * BLOCK_P
    batch = tl.load(chunk_table_ptr + chunk)
    token0 = tl.load(chunk_table_ptr + num_chunks + chunk)
    length = tl.load(chunk_table_ptr + 2 * num_chunks + chunk)
    group = head // heads_per_group
    parent_head = group * parent_heads_per_group + head % heads_per_group

    dt, cum = _chunk_dt_and_cumsum(dt_ptr, dt_bias_ptr, A_ptr, batch, token0, length, head,
                                   parent_head, stride_dt_b, stride_dt_l, stride_dt_h, HAS_DT_BIAS,
                                   DT_SOFTPLUS, dt_min, dt_max, BLOCK_Q)
    t = tl.arange(0, BLOCK_Q).to(tl.int64)
    rows = token0 + t
    in_chunk = t < length
    p = p0 + tl.arange(0, BLOCK_P).to(tl.int64)
    p_mask = p < head_dim
    tile_mask = in_chunk[:, None] & p_mask[None, :]

    inter = tl.zeros([BLOCK_Q, BLOCK_P], dtype=tl.float32)
    scores = tl.zeros([BLOCK_Q, BLOCK_Q], dtype=tl.float32)
    state_base = states_ptr + (chunk * num_active + head) * head_dim * state_size
    for n0 in range(0, state_size, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        n_mask = n < state_size
        c = tl.load(C_ptr + batch * stride_C_b + rows[:, None] * stride_C_l + group * stride_C_g
                    + n[None, :], mask=in_chunk[:, None] & n_mask[None, :], other=0.0)
        b = tl.load(B_ptr + batch * stride_B_b + rows[:, None] * stride_B_l + group * stride_B_g
                    + n[None, :], mask=in_chunk[:, None] & n_mask[None, :], other=0.0)
        h_in = tl.load(state_base + p[None, :] * state_size + n[:, None],
                       mask=n_mask[:, None] & p_mask[None, :], other=0.0)  # (BLOCK_N, BLOCK_P)
        if IEEE_FP32:
            inter += tl.dot(c.to(tl.float32), h_in, input_precision="ieee")
            scores += tl.dot(c.to(tl.float32), tl.trans(b.to(tl.float32)), input_precision="ieee")
        else:
            inter += tl.dot(c, h_in.to(c.dtype))
            scores += tl.dot(c, tl.trans(b))
    y = inter * tl.exp(cum)[:, None]
    causal = t[:, None] >= t[None, :]
    segment = tl.where(causal, cum[:, None] - cum[None, :], float("-inf"))
    scores = scores * tl.exp(segment) * dt[None, :]
    x = tl.load(x_ptr + batch * stride_x_b + rows[:, None] * stride_x_l + head * stride_x_h
                + p[None, :], mask=tile_mask, other=0.0)
    if IEEE_FP32:
        y += tl.dot(scores, x.to(tl.float32), input_precision="ieee")
    else:
        y += tl.dot(scores.to(x.dtype), x)
    if HAS_D:
        d = tl.load(D_ptr + parent_head * stride_D_h + p * stride_D_p, mask=p_mask, other=0.0)
        y += d.to(tl.float32)[None, :] * x.to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + batch * stride_z_b + rows[:, None] * stride_z_l + head * stride_z_h
                    + p[None, :], mask=tile_mask, other=0.0).to(tl.float32)
        y = y * z * tl.sigmoid(z)
    tl.store(y_ptr + batch * stride_y_b + rows[:, None] * stride_y_l + head * stride_y_h
             + p[None, :], y.to(y_ptr.dtype.element_ty), mask=tile_mask)


def _block_sizes(chunk_size: int, p: int, state_size: int):
    return (max(16, triton.next_power_of_2(chunk_size)), max(16, min(64, triton.next_power_of_2(p))),
            max(16, min(64, triton.next_power_of_2(state_size))))


def _entering_states(x, dt, A, B, dt_bias, initial_states, bounds, chunk_size, dt_softplus,
                     dt_limit, heads_per_group):
    """Kernels 1 and 2: (chunk table, sequence table, states entering every chunk
    (chunks, H', p, N) fp32, per-chunk total decay (chunks, H') fp32, final states fp32)."""
    b, l, num_active, p = x.shape
    num_groups, state_size = B.shape[2], B.shape[3]
    parent_per_group = A.shape[0] // num_groups
    num_seqs = b if bounds is None else bounds.shape[0] - 1
    final = torch.empty((num_seqs, num_active, p, state_size), dtype=torch.float32, device=x.device)
    chunk_table, seq_table = chunk_tables(b, l, bounds, chunk_size, x.device)
    num_chunks = chunk_table.shape[1]
    states = torch.empty((num_chunks, num_active, p, state_size), dtype=torch.float32,
                         device=x.device)
    chunk_decay = torch.empty((num_chunks, num_active), dtype=torch.float32, device=x.device)
    if num_seqs == 0 or num_active == 0 or p == 0:
        return chunk_table, seq_table, states, chunk_decay, final
    block_q, block_p, block_n = _block_sizes(chunk_size, p, state_size)
    dummy = x  # any tensor, for absent optional pointers (never dereferenced)
    if num_chunks > 0:
        _chunk_state_kernel[(num_chunks, num_active, triton.cdiv(p, block_p))](
            x, dt, A, B, dt_bias if dt_bias is not None else dummy, chunk_table, states,
            chunk_decay, num_chunks, heads_per_group, parent_per_group, p, state_size, num_active,
            x.stride(0), x.stride(1), x.stride(2), dt.stride(0), dt.stride(1), dt.stride(2),
            B.stride(0), B.stride(1), B.stride(2), float(dt_limit[0]), float(dt_limit[1]),
            HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=bool(dt_softplus),
            IEEE_FP32=x.dtype == torch.float32, BLOCK_Q=block_q, BLOCK_P=block_p, BLOCK_N=block_n,
            num_warps=4 if block_q <= 64 else 8)
    state_numel = p * state_size
    block = min(1024, triton.next_power_of_2(state_numel))
    init = initial_states if initial_states is not None else dummy
    init_strides = initial_states.stride() if initial_states is not None else (0, 0, 0, 0)
    _state_passing_kernel[(num_seqs, num_active, triton.cdiv(state_numel, block))](
        states, chunk_decay, seq_table, init, final, num_seqs, num_active, state_numel, state_size,
        *init_strides, HAS_INITIAL=initial_states is not None, BLOCK=block)
    return chunk_table, seq_table, states, chunk_decay, final


def ssd_scan_fwd(x, dt, A, B, C, D, z, dt_bias, initial_states, bounds, chunk_size,
                 dt_softplus, dt_limit, heads_per_group, head_dim):
    """Launch the chunked SSD. Shapes as in ``star_elastic_kernels.ssm.scan`` (already checked):
    x (b,l,G*k,p) with unit inner stride, ``bounds`` the packed boundaries (int64 on the device,
    from ``_chunks.packed_bounds``) or None.
    Returns (y (b,l,G*k,p) in x's dtype, final states (b or S, G*k, p, N) fp32)."""
    b, l, num_active, p = x.shape
    num_groups, state_size = B.shape[2], B.shape[3]
    y = torch.empty((b, l, num_active, p), dtype=x.dtype, device=x.device)
    chunk_table, _, states, _, final = _entering_states(
        x, dt, A, B, dt_bias, initial_states, bounds, chunk_size, dt_softplus, dt_limit,
        heads_per_group)
    num_chunks = chunk_table.shape[1]
    if num_chunks == 0 or y.numel() == 0:
        return y, final
    block_q, block_p, block_n = _block_sizes(chunk_size, p, state_size)
    dummy = x
    D_strides = (0, 0) if D is None else (D.stride(0), D.stride(1) if D.dim() == 2 else 0)
    z_strides = (0, 0, 0) if z is None else (z.stride(0), z.stride(1), z.stride(2))
    _chunk_scan_kernel[(num_chunks, num_active, triton.cdiv(p, block_p))](
        x, dt, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
        dt_bias if dt_bias is not None else dummy, chunk_table, states, y,
        num_chunks, heads_per_group, A.shape[0] // num_groups, p, state_size, num_active,
        x.stride(0), x.stride(1), x.stride(2), dt.stride(0), dt.stride(1), dt.stride(2),
        B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2),
        *z_strides, *D_strides, y.stride(0), y.stride(1), y.stride(2),
        float(dt_limit[0]), float(dt_limit[1]), HAS_D=D is not None, HAS_Z=z is not None,
        HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=bool(dt_softplus),
        IEEE_FP32=x.dtype == torch.float32, BLOCK_Q=block_q, BLOCK_P=block_p, BLOCK_N=block_n,
        num_warps=4 if block_q <= 64 else 8)
    return y, final
