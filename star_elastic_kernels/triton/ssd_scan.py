"""Triton chunked SSD (Mamba-2 scan) forward at an elastic width: kernels, then the launcher.

Four kernels, each reading the compact activations and the parent's per-head parameters in place
(head ``h'`` of the compact order is parent head ``(h' // k) * (H/G) + h' % k``, group ``h' // k``):

1. ``_chunk_cumsum_kernel``: per (chunk, head) the discretised step ``dt`` and its in-chunk
   cumulative log-decay ``cum`` (fp32, to a small workspace that every later kernel reads, so they
   all use the same decays), and the chunk's total decay.
2. ``_chunk_state_kernel``: per (chunk, head, channel block, state block) the chunk's own
   contribution to the state, ``S_c = x^T (exp(cum_end - cum_t) * dt_t * B_t)``, one tensor-core
   matmul per block of ``BLOCK_K`` tokens.
3. ``_state_passing_kernel``: per (sequence, head, state block) a walk over the sequence's chunks,
   overwriting each chunk's contribution with the state *entering* it and writing the final state.
4. ``_chunk_scan_kernel``: per (chunk, block of ``BLOCK_M`` rows, head, channel block)
   ``y_t = exp(cum_t) C_t h_in + sum_{s<=t} (C_t.B_s) exp(cum_t - cum_s) dt_s x_s`` as a
   flash-attention-like loop over ``BLOCK_K`` source tokens up to the diagonal, then the skip term
   ``D x`` and the gate ``silu(z)``.

Built for Hopper: the working set of a program is fixed by its blocks (``BLOCK_M`` x ``BLOCK_K``
scores, ``BLOCK_M`` x ``BLOCK_P`` outputs), not by the chunk, so every chunk size up to 256 fits
shared memory and registers (``tests/kernels/test_ssm_sm90_compile.py`` compiles every config the
launcher picks for sm_90 at Nemotron Nano v3 shapes and checks shared memory, spills and wgmma).
fp16/bf16 inputs feed the tensor cores in their own dtype with fp32 accumulation (as mamba-ssm
does); fp32 inputs use TF32 tensor-core dots (as mamba-ssm's Triton SSD does by default: about
1e-3 relative on a GPU; the CPU interpreter computes them in fp32).
The per-chunk states (written by kernel 2, rewritten by 3, read by 4) are fp32 or, on request,
fp16/bf16 (half the dominant memory traffic of the scan); the running state of kernel 3 and the
final states stay fp32.

Chunks never straddle a sequence: a table built on the device (``ssm/_chunks.py``, no host read)
lists, per chunk, its batch row, first token and length, so batched and packed (``cu_seqlens``)
inputs run the same kernels; packed inputs get a static upper bound of chunks, the spare ones of
length 0 (skipped). All offsets are 64-bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from star_elastic_kernels.ssm._chunks import chunk_tables

MAX_CHUNK = 256  # longer chunks are split by the launcher (the result does not depend on it)
CHUNK_STATE_WARPS = 4  # a (64, 128) fp32 accumulator over one warpgroup
CHUNK_SCAN_WARPS = 8  # two (64, 64) fp32 accumulators (outputs, scores): two warpgroups


@triton.jit
def _chunk_entry(chunk_table_ptr, num_chunks, chunk):
    """Row, first token and length of ``chunk`` (the launcher's (3, chunks) table)."""
    batch = tl.load(chunk_table_ptr + chunk)
    token0 = tl.load(chunk_table_ptr + num_chunks + chunk)
    length = tl.load(chunk_table_ptr + 2 * num_chunks + chunk)
    return batch, token0, length


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
def _chunk_setup(dt_ptr, A_ptr, dt_bias_ptr, chunk_table_ptr,
                 num_chunks, heads_per_group, parent_heads_per_group,
                 stride_dt_b, stride_dt_l, stride_dt_h, dt_min, dt_max,
                 HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, BLOCK_Q: tl.constexpr):
    """What every chunk kernel of a (chunk, head) program needs first: its chunk table entry, its
    parent head, and its dt and cumulative log-decay (forward cumsum and all backward kernels)."""
    chunk = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    batch, token0, length = _chunk_entry(chunk_table_ptr, num_chunks, chunk)
    group = head // heads_per_group
    parent_head = group * parent_heads_per_group + head % heads_per_group
    dt, cum = _chunk_dt_and_cumsum(dt_ptr, dt_bias_ptr, A_ptr, batch, token0, length, head,
                                   parent_head, stride_dt_b, stride_dt_l, stride_dt_h, HAS_DT_BIAS,
                                   DT_SOFTPLUS, dt_min, dt_max, BLOCK_Q)
    t = tl.arange(0, BLOCK_Q).to(tl.int64)
    rows = token0 + t
    return chunk, head, batch, token0, length, group, parent_head, dt, cum, t, rows, t < length


@triton.jit
def _dot(a, b, acc, FP32: tl.constexpr):
    """acc + a @ b on tensor cores: TF32 for fp32 operands (as mamba-ssm's Triton SSD; 3xTF32
    would keep fp32 accuracy but needs more registers than a program has), else the operands'
    16-bit dtype with fp32 accumulation."""
    if FP32:
        return tl.dot(a, b, acc, input_precision="tf32")
    return tl.dot(a, b, acc)


@triton.jit
def _chunk_cumsum_kernel(
    dt_ptr, A_ptr, dt_bias_ptr, chunk_table_ptr, dt_cum_ptr, chunk_decay_ptr,
    num_chunks, heads_per_group, parent_heads_per_group, num_active,
    stride_dt_b, stride_dt_l, stride_dt_h, dt_min, dt_max,
    HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    chunk, head, _, _, length, _, _, dt, cum, t, _, _ = \
        _chunk_setup(dt_ptr, A_ptr, dt_bias_ptr, chunk_table_ptr, num_chunks, heads_per_group,
                     parent_heads_per_group, stride_dt_b, stride_dt_l, stride_dt_h, dt_min, dt_max,
                     HAS_DT_BIAS, DT_SOFTPLUS, BLOCK_Q)
    base = (chunk * num_active + head) * BLOCK_Q
    tl.store(dt_cum_ptr + base + t, dt)
    tl.store(dt_cum_ptr + num_chunks * num_active * BLOCK_Q + base + t, cum)
    # the chunk's total log-decay is its last cumulative value (a padding chunk decays by 1)
    total = tl.sum(tl.where(t == length - 1, cum, 0.0), axis=0)
    tl.store(chunk_decay_ptr + chunk * num_active + head, tl.exp(total))


@triton.jit
def _chunk_state_kernel(
    x_ptr, B_ptr, chunk_table_ptr, dt_cum_ptr, states_ptr,
    num_chunks, heads_per_group, head_dim, state_size, num_active,
    stride_x_b, stride_x_l, stride_x_h, stride_B_b, stride_B_l, stride_B_g,
    FP32: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    chunk = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    n_blocks = tl.cdiv(state_size, BLOCK_N)
    p0 = (tl.program_id(2) // n_blocks).to(tl.int64) * BLOCK_P
    n0 = (tl.program_id(2) % n_blocks).to(tl.int64) * BLOCK_N
    batch, token0, length = _chunk_entry(chunk_table_ptr, num_chunks, chunk)
    group = head // heads_per_group
    base = (chunk * num_active + head) * BLOCK_Q
    cum_base = dt_cum_ptr + num_chunks * num_active * BLOCK_Q + base
    total = tl.load(cum_base + tl.maximum(length - 1, 0))
    # 64-bit bases of the chunk, 32-bit offsets inside it (the launcher checks they fit)
    x_chunk = x_ptr + batch * stride_x_b + token0 * stride_x_l + head * stride_x_h + p0
    B_chunk = B_ptr + batch * stride_B_b + token0 * stride_B_l + group * stride_B_g + n0
    p = tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    p_mask = p < head_dim - p0
    n_mask = n < state_size - n0
    acc = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, length, BLOCK_K):  # no iteration for a padding chunk
        t = k0 + tl.arange(0, BLOCK_K)
        in_chunk = t < length
        # decay from token t to the chunk's end, times dt_t (zero past the chunk: dt is zero there)
        weight = tl.exp(total - tl.load(cum_base + t, mask=in_chunk, other=0.0)) \
            * tl.load(dt_cum_ptr + base + t, mask=in_chunk, other=0.0)
        x = tl.load(x_chunk + t[:, None] * stride_x_l.to(tl.int32) + p[None, :],
                    mask=in_chunk[:, None] & p_mask[None, :], other=0.0)
        xw = (x.to(tl.float32) * weight[:, None]).to(x_ptr.dtype.element_ty)
        b = tl.load(B_chunk + t[:, None] * stride_B_l.to(tl.int32) + n[None, :],
                    mask=in_chunk[:, None] & n_mask[None, :], other=0.0)
        acc = _dot(tl.trans(xw), b, acc, FP32)
    out = states_ptr + (chunk * num_active + head) * head_dim * state_size + p0 * state_size + n0
    tl.store(out + p[:, None] * state_size.to(tl.int32) + n[None, :],
             acc.to(states_ptr.dtype.element_ty), mask=p_mask[:, None] & n_mask[None, :])


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
        own = tl.load(slot, mask=mask, other=0.0).to(tl.float32)
        # from here on: the state entering this chunk (rounded to the storage dtype)
        tl.store(slot, state.to(states_ptr.dtype.element_ty), mask=mask)
        state = tl.load(chunk_decay_ptr + chunk * num_active + head) * state + own
    tl.store(final_ptr + (seq * num_active + head) * state_numel + offs, state, mask=mask)


@triton.jit
def _chunk_scan_kernel(
    x_ptr, B_ptr, C_ptr, D_ptr, z_ptr, chunk_table_ptr, dt_cum_ptr, states_ptr, y_ptr,
    num_chunks, heads_per_group, parent_heads_per_group, head_dim, state_size, num_active,
    stride_x_b, stride_x_l, stride_x_h,
    stride_B_b, stride_B_l, stride_B_g,
    stride_C_b, stride_C_l, stride_C_g,
    stride_z_b, stride_z_l, stride_z_h,
    stride_D_h, stride_D_p,
    stride_y_b, stride_y_l, stride_y_h,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, FP32: tl.constexpr, BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    row_blocks: tl.constexpr = BLOCK_Q // BLOCK_M
    chunk = (tl.program_id(0) // row_blocks).to(tl.int64)
    m0 = (tl.program_id(0) % row_blocks).to(tl.int64) * BLOCK_M
    head = tl.program_id(1).to(tl.int64)
    p0 = tl.program_id(2).to(tl.int64) * BLOCK_P
    batch, token0, length = _chunk_entry(chunk_table_ptr, num_chunks, chunk)
    group = head // heads_per_group
    parent_head = group * parent_heads_per_group + head % heads_per_group
    act = x_ptr.dtype.element_ty
    base = (chunk * num_active + head) * BLOCK_Q
    dt_base = dt_cum_ptr + base
    cum_base = dt_cum_ptr + num_chunks * num_active * BLOCK_Q + base
    # 64-bit bases of the chunk, 32-bit offsets inside it (the launcher checks they fit)
    x_chunk = x_ptr + batch * stride_x_b + token0 * stride_x_l + head * stride_x_h + p0
    B_chunk = B_ptr + batch * stride_B_b + token0 * stride_B_l + group * stride_B_g
    C_chunk = C_ptr + batch * stride_C_b + token0 * stride_C_l + group * stride_C_g
    sx, sB, sC = stride_x_l.to(tl.int32), stride_B_l.to(tl.int32), stride_C_l.to(tl.int32)
    t = m0.to(tl.int32) + tl.arange(0, BLOCK_M)
    in_rows = t < length
    p = tl.arange(0, BLOCK_P)
    p_mask = p < head_dim - p0
    cum_t = tl.load(cum_base + t, mask=in_rows, other=0.0)

    # inter-chunk term: exp(cum_t) C_t h_in
    acc = tl.zeros([BLOCK_M, BLOCK_P], dtype=tl.float32)
    state_base = states_ptr + (chunk * num_active + head) * head_dim * state_size + p0 * state_size
    for n0 in range(0, state_size, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_mask = n < state_size
        c = tl.load(C_chunk + t[:, None] * sC + n[None, :], mask=in_rows[:, None] & n_mask[None, :],
                    other=0.0)
        h_in = tl.load(state_base + p[None, :] * state_size.to(tl.int32) + n[:, None],
                       mask=n_mask[:, None] & p_mask[None, :], other=0.0)  # (BLOCK_N, BLOCK_P)
        acc = _dot(c, h_in.to(act), acc, FP32)
    acc = acc * tl.exp(cum_t)[:, None]

    # intra-chunk term over source tokens s <= t, BLOCK_K at a time (causal: up to the block's end)
    source_end = tl.where(m0 < length, tl.minimum(m0 + BLOCK_M, length), 0)
    for k0 in range(0, source_end, BLOCK_K):
        s = k0 + tl.arange(0, BLOCK_K)
        in_sources = s < length
        scores = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)
        for n0 in range(0, state_size, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            n_mask = n < state_size
            c = tl.load(C_chunk + t[:, None] * sC + n[None, :],
                        mask=in_rows[:, None] & n_mask[None, :], other=0.0)
            b = tl.load(B_chunk + s[:, None] * sB + n[None, :],
                        mask=in_sources[:, None] & n_mask[None, :], other=0.0)
            scores = _dot(c, tl.trans(b), scores, FP32)
        cum_s = tl.load(cum_base + s, mask=in_sources, other=0.0)
        dt_s = tl.load(dt_base + s, mask=in_sources, other=0.0)
        causal = (t[:, None] >= s[None, :]) & in_sources[None, :]
        segment = tl.where(causal, cum_t[:, None] - cum_s[None, :], float("-inf"))
        scores = scores * tl.exp(segment) * dt_s[None, :]
        x = tl.load(x_chunk + s[:, None] * sx + p[None, :],
                    mask=in_sources[:, None] & p_mask[None, :], other=0.0)
        acc = _dot(scores.to(act), x, acc, FP32)

    tile_mask = in_rows[:, None] & p_mask[None, :]
    y = acc
    if HAS_D:
        d = tl.load(D_ptr + parent_head * stride_D_h + (p0 + p) * stride_D_p, mask=p_mask,
                    other=0.0)
        x = tl.load(x_chunk + t[:, None] * sx + p[None, :], mask=tile_mask, other=0.0)
        y += d.to(tl.float32)[None, :] * x.to(tl.float32)
    if HAS_Z:
        z_chunk = z_ptr + batch * stride_z_b + token0 * stride_z_l + head * stride_z_h + p0
        z = tl.load(z_chunk + t[:, None] * stride_z_l.to(tl.int32) + p[None, :], mask=tile_mask,
                    other=0.0).to(tl.float32)
        y = y * z * tl.sigmoid(z)
    y_chunk = y_ptr + batch * stride_y_b + token0 * stride_y_l + head * stride_y_h + p0
    tl.store(y_chunk + t[:, None] * stride_y_l.to(tl.int32) + p[None, :],
             y.to(y_ptr.dtype.element_ty), mask=tile_mask)


def block_config(chunk_size: int, p: int, state_size: int, fp32: bool) -> dict:
    """The forward's blocks for a chunk (<= MAX_CHUNK) and head/state sizes: the whole chunk's
    dt/cum (BLOCK_Q), rows and source tokens per step (BLOCK_M, BLOCK_K), channels (BLOCK_P) and
    state entries (BLOCK_N) per program; fp32 halves the state block (its tiles are twice as big)."""
    block_q = max(16, triton.next_power_of_2(chunk_size))
    step = min(64, block_q)
    return dict(BLOCK_Q=block_q, BLOCK_M=step, BLOCK_K=step,
                BLOCK_P=max(16, min(64, triton.next_power_of_2(p))),
                BLOCK_N=max(16, min(64 if fp32 else 128, triton.next_power_of_2(state_size))))


def _entering_states(x, dt, A, B, dt_bias, initial_states, bounds, chunk_size, dt_softplus,
                     dt_limit, heads_per_group, states_dtype=torch.float32):
    """Kernels 1-3: (chunk table, sequence table, states entering every chunk (chunks, H', p, N)
    in ``states_dtype``, per-chunk total decay (chunks, H') fp32, final states fp32, the dt/cum
    workspace (2, chunks, H', BLOCK_Q) fp32)."""
    b, l, num_active, p = x.shape
    num_groups, state_size = B.shape[2], B.shape[3]
    parent_per_group = A.shape[0] // num_groups
    num_seqs = b if bounds is None else bounds.shape[0] - 1
    blocks = block_config(chunk_size, p, state_size, x.dtype == torch.float32)
    f32 = dict(dtype=torch.float32, device=x.device)
    final = torch.empty((num_seqs, num_active, p, state_size), **f32)
    chunk_table, seq_table = chunk_tables(b, l, bounds, chunk_size, x.device)
    num_chunks = chunk_table.shape[1]
    states = torch.empty((num_chunks, num_active, p, state_size), dtype=states_dtype,
                         device=x.device)
    chunk_decay = torch.empty((num_chunks, num_active), **f32)
    dt_cum = torch.empty((2, num_chunks, num_active, blocks["BLOCK_Q"]), **f32)
    if num_seqs == 0 or num_active == 0 or p == 0:
        return chunk_table, seq_table, states, chunk_decay, final, dt_cum
    dummy = x  # any tensor, for absent optional pointers (never dereferenced)
    if num_chunks > 0:
        _chunk_cumsum_kernel[(num_chunks, num_active)](
            dt, A, dt_bias if dt_bias is not None else dummy, chunk_table, dt_cum, chunk_decay,
            num_chunks, heads_per_group, parent_per_group, num_active,
            dt.stride(0), dt.stride(1), dt.stride(2), float(dt_limit[0]), float(dt_limit[1]),
            HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=bool(dt_softplus),
            BLOCK_Q=blocks["BLOCK_Q"])
        if state_size > 0:
            grid_z = triton.cdiv(p, blocks["BLOCK_P"]) * triton.cdiv(state_size, blocks["BLOCK_N"])
            _chunk_state_kernel[(num_chunks, num_active, grid_z)](
                x, B, chunk_table, dt_cum, states, num_chunks, heads_per_group, p, state_size,
                num_active, x.stride(0), x.stride(1), x.stride(2), B.stride(0), B.stride(1),
                B.stride(2), FP32=x.dtype == torch.float32, BLOCK_Q=blocks["BLOCK_Q"],
                BLOCK_K=blocks["BLOCK_K"], BLOCK_P=blocks["BLOCK_P"], BLOCK_N=blocks["BLOCK_N"],
                num_warps=CHUNK_STATE_WARPS)
    state_numel = p * state_size
    if state_numel > 0:
        block = min(1024, triton.next_power_of_2(state_numel))
        init = initial_states if initial_states is not None else dummy
        init_strides = initial_states.stride() if initial_states is not None else (0, 0, 0, 0)
        _state_passing_kernel[(num_seqs, num_active, triton.cdiv(state_numel, block))](
            states, chunk_decay, seq_table, init, final, num_seqs, num_active, state_numel,
            state_size, *init_strides, HAS_INITIAL=initial_states is not None, BLOCK=block)
    return chunk_table, seq_table, states, chunk_decay, final, dt_cum


def ssd_scan_fwd(x, dt, A, B, C, D, z, dt_bias, initial_states, bounds, chunk_size,
                 dt_softplus, dt_limit, heads_per_group, head_dim, states_dtype=torch.float32):
    """Launch the chunked SSD. Shapes as in ``star_elastic_kernels.ssm.scan`` (already checked):
    x (b,l,G*k,p) with unit inner stride, ``bounds`` the packed boundaries (int64 on the device,
    from ``_chunks.packed_bounds``) or None; ``chunk_size`` is split to <= MAX_CHUNK;
    ``states_dtype`` the per-chunk states' storage (fp32, or fp16/bf16 for half the traffic).
    Returns (y (b,l,G*k,p) in x's dtype, final states (b or S, G*k, p, N) fp32)."""
    chunk_size = min(int(chunk_size), MAX_CHUNK)
    b, l, num_active, p = x.shape
    num_groups, state_size = B.shape[2], B.shape[3]
    y = torch.empty((b, l, num_active, p), dtype=x.dtype, device=x.device)
    chunk_table, _, states, _, final, dt_cum = _entering_states(
        x, dt, A, B, dt_bias, initial_states, bounds, chunk_size, dt_softplus, dt_limit,
        heads_per_group, states_dtype)
    num_chunks = chunk_table.shape[1]
    if num_chunks == 0 or y.numel() == 0:
        return y, final
    blocks = block_config(chunk_size, p, state_size, x.dtype == torch.float32)
    dummy = x
    D_strides = (0, 0) if D is None else (D.stride(0), D.stride(1) if D.dim() == 2 else 0)
    z_strides = (0, 0, 0) if z is None else (z.stride(0), z.stride(1), z.stride(2))
    row_blocks = blocks["BLOCK_Q"] // blocks["BLOCK_M"]
    _chunk_scan_kernel[(num_chunks * row_blocks, num_active, triton.cdiv(p, blocks["BLOCK_P"]))](
        x, B, C, D if D is not None else dummy, z if z is not None else dummy, chunk_table,
        dt_cum, states, y, num_chunks, heads_per_group, A.shape[0] // num_groups, p, state_size,
        num_active, x.stride(0), x.stride(1), x.stride(2), B.stride(0), B.stride(1), B.stride(2),
        C.stride(0), C.stride(1), C.stride(2), *z_strides, *D_strides, y.stride(0), y.stride(1),
        y.stride(2), HAS_D=D is not None, HAS_Z=z is not None, FP32=x.dtype == torch.float32,
        num_warps=CHUNK_SCAN_WARPS, **blocks)
    return y, final
