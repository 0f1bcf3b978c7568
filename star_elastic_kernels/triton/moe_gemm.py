"""Triton grouped GEMM over experts, the building block of the MoE forward and backward.

Rows of ``a`` are grouped by expert (segment g owns rows ``seg[g]:seg[g+1]``), and each group is
multiplied by its own weight matrix ``b[g]``, read through its strides so that a prefix view of a
parent weight (``w[:, :n, :k]``) costs only its own bytes and is never copied. Work is a list of
row blocks: ``block_offsets`` (G+1) holds the cumulative number of BLOCK_M-row blocks per group, a
program finds its group by counting the block ends at or before its id, and an empty group (a
masked expert in particular) owns no block, so its weights are never read.

Options fused into the loads and the epilogue (all from one kernel):

* ``row_index`` (sorted slot ids) with ``gather_div``: A's row r is ``row_index[r] // gather_div``
  (the token of a (token, k) slot), so the token gather is part of the load;
* ``scatter``: C's row r is ``row_index[r]`` (the slot), so results land in slot order;
* ``scale``: multiply row r by ``scale[row_index[r]]`` (the routing weight);
* ``activation``: ``"relu2"``, or ``"silu_glu"`` which also reads the value rows at ``b + value_offset``
  and returns ``silu(gate) * value``.

``grouped_wgrad`` is the weight gradient: ``out[g] = x[seg g]^T @ y[seg g]``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_ACTIVATIONS = {None: 0, "relu2": 1, "silu_glu": 2}


@triton.jit
def _grouped_gemm_kernel(
    a_ptr, b_ptr, c_ptr, row_index_ptr, scale_ptr, seg_offsets_ptr, block_offsets_ptr,
    num_groups, N, K, gather_div, value_offset,
    stride_am, stride_ak, stride_bg, stride_bn, stride_bk, stride_cm, stride_cn,
    GATHER_A: tl.constexpr, SCATTER_C: tl.constexpr, HAS_SCALE: tl.constexpr,
    ACTIVATION: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_G: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    groups = tl.arange(0, BLOCK_G)
    block_ends = tl.load(block_offsets_ptr + 1 + groups, mask=groups < num_groups, other=2147483647)
    group = tl.sum((block_ends <= pid_m).to(tl.int32), axis=0)
    if group < num_groups:
        first_block = tl.load(block_offsets_ptr + group)
        seg_start = tl.load(seg_offsets_ptr + group).to(tl.int64)
        seg_end = tl.load(seg_offsets_ptr + group + 1).to(tl.int64)
        rows = seg_start + (pid_m - first_block).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < seg_end
        if GATHER_A or SCATTER_C or HAS_SCALE:
            slots = tl.load(row_index_ptr + rows, mask=row_ok, other=0).to(tl.int64)
        else:
            slots = rows
        if GATHER_A:
            a_rows = slots // gather_div
        else:
            a_rows = rows
        cols = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        ks = tl.arange(0, BLOCK_K).to(tl.int64)
        b_base = b_ptr + group.to(tl.int64) * stride_bg
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        acc_value = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + ks
            k_ok = kk < K
            a = tl.load(a_ptr + a_rows[:, None] * stride_am + kk[None, :] * stride_ak,
                        mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            b_offsets = kk[:, None] * stride_bk + cols[None, :] * stride_bn
            b_mask = k_ok[:, None] & col_ok[None, :]
            b = tl.load(b_base + b_offsets, mask=b_mask, other=0.0)
            acc += tl.dot(a, b, input_precision=PRECISION)
            if ACTIVATION == 2:
                b_value = tl.load(b_base + value_offset + b_offsets, mask=b_mask, other=0.0)
                acc_value += tl.dot(a, b_value, input_precision=PRECISION)
        if ACTIVATION == 1:
            acc = tl.maximum(acc, 0.0)
            acc = acc * acc
        if ACTIVATION == 2:
            acc = acc * tl.sigmoid(acc) * acc_value
        if HAS_SCALE:
            acc = acc * tl.load(scale_ptr + slots, mask=row_ok, other=0.0)[:, None]
        if SCATTER_C:
            c_rows = slots
        else:
            c_rows = rows
        tl.store(c_ptr + c_rows[:, None] * stride_cm + cols[None, :] * stride_cn,
                 acc.to(c_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _grouped_wgrad_kernel(
    x_ptr, y_ptr, out_ptr, seg_offsets_ptr, X, Y,
    stride_xm, stride_xn, stride_ym, stride_yn, stride_og, stride_ox, stride_oy,
    PRECISION: tl.constexpr, BLOCK_X: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_M: tl.constexpr,
):
    group = tl.program_id(0)
    tile = tl.program_id(1)
    tiles_y = tl.cdiv(Y, BLOCK_Y)
    xs = (tile // tiles_y).to(tl.int64) * BLOCK_X + tl.arange(0, BLOCK_X)
    ys = (tile % tiles_y).to(tl.int64) * BLOCK_Y + tl.arange(0, BLOCK_Y)
    seg_start = tl.load(seg_offsets_ptr + group).to(tl.int64)
    seg_end = tl.load(seg_offsets_ptr + group + 1).to(tl.int64)
    # The output was zero-filled: an empty group (a masked expert) needs no work at all.
    if seg_start < seg_end:
        acc = tl.zeros([BLOCK_X, BLOCK_Y], dtype=tl.float32)
        for m0 in range(seg_start, seg_end, BLOCK_M):
            ms = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
            m_ok = ms < seg_end
            xt = tl.load(x_ptr + ms[None, :] * stride_xm + xs[:, None] * stride_xn,
                         mask=m_ok[None, :] & (xs[:, None] < X), other=0.0)
            yt = tl.load(y_ptr + ms[:, None] * stride_ym + ys[None, :] * stride_yn,
                         mask=m_ok[:, None] & (ys[None, :] < Y), other=0.0)
            acc += tl.dot(xt, yt, input_precision=PRECISION)
        tl.store(out_ptr + group.to(tl.int64) * stride_og + xs[:, None] * stride_ox
                 + ys[None, :] * stride_oy, acc.to(out_ptr.dtype.element_ty),
                 mask=(xs[:, None] < X) & (ys[None, :] < Y))


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs get true fp32 products (TF32 would miss the reference by ~1e-3).
    return "ieee" if dtype == torch.float32 else "tf32"


def _tile(extent: int, cap: int) -> int:
    return max(16, min(cap, triton.next_power_of_2(max(extent, 1))))


def segments_from_ends(ends: torch.Tensor, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(G,) cumulative end offsets -> ((G+1,) starts, (G+1,) cumulative row blocks), int32, no sync."""
    seg = torch.nn.functional.pad(ends.to(torch.int32), (1, 0))
    counts = seg[1:] - seg[:-1]
    blocks = torch.div(counts + (block_m - 1), block_m, rounding_mode="floor")
    return seg, torch.nn.functional.pad(blocks.cumsum(0), (1, 0)).to(torch.int32)


def launch_grouped_gemm(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, *, num_rows: int, seg_offsets: torch.Tensor,
    block_offsets: torch.Tensor, block_m: int, trans_b: bool = True,
    row_index: torch.Tensor | None = None, gather_div: int = 0, scatter: bool = False,
    scale: torch.Tensor | None = None, activation: str | None = None, value_offset: int = 0,
) -> torch.Tensor:
    """c[rows of g] = epilogue(a[rows of g] @ op(b[g])); ``block_offsets`` must be built with block_m.

    ``b`` is (G, N, K) for ``trans_b`` and (G, K, N) otherwise, any strides; c (rows, N) is written
    only at the rows of non-empty groups. ``num_rows`` bounds the grid (no device sync).
    """
    num_groups = b.shape[0]
    if trans_b:
        n, k = b.shape[1], b.shape[2]
        stride_bn, stride_bk = b.stride(1), b.stride(2)
    else:
        k, n = b.shape[1], b.shape[2]
        stride_bk, stride_bn = b.stride(1), b.stride(2)
    if num_rows == 0 or n == 0 or num_groups == 0:
        return c
    # Prefill-sized groups get 64x128 tiles and 8 warps; decode-sized ones 16..32-row blocks.
    block_n = _tile(n, 128 if block_m >= 64 else 64)
    block_k = _tile(k, 64)
    num_warps = 8 if block_m * block_n >= 64 * 128 else 4
    max_blocks = triton.cdiv(num_rows, block_m) + min(num_groups, num_rows)
    grid = (max_blocks, triton.cdiv(n, block_n))
    dummy = seg_offsets
    _grouped_gemm_kernel[grid](
        a, b, c, row_index if row_index is not None else dummy,
        scale if scale is not None else dummy, seg_offsets, block_offsets,
        num_groups, n, k, max(gather_div, 1), value_offset,
        a.stride(0), a.stride(1), b.stride(0), stride_bn, stride_bk, c.stride(0), c.stride(1),
        GATHER_A=gather_div > 0, SCATTER_C=scatter, HAS_SCALE=scale is not None,
        ACTIVATION=_ACTIVATIONS[activation], PRECISION=_precision(a.dtype),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        BLOCK_G=triton.next_power_of_2(num_groups), num_warps=num_warps, num_stages=3,
    )
    return c


def launch_grouped_wgrad(x: torch.Tensor, y: torch.Tensor, out: torch.Tensor,
                         seg_offsets: torch.Tensor) -> torch.Tensor:
    """out[g] = x[seg g]^T @ y[seg g] into a zero-filled (G, X, Y) tensor or view (any strides)."""
    num_groups, size_x, size_y = out.shape
    if num_groups == 0 or size_x == 0 or size_y == 0 or x.shape[0] == 0:
        return out
    block_x, block_y = _tile(size_x, 64), _tile(size_y, 64)
    grid = (num_groups, triton.cdiv(size_x, block_x) * triton.cdiv(size_y, block_y))
    _grouped_wgrad_kernel[grid](
        x, y, out, seg_offsets, size_x, size_y,
        x.stride(0), x.stride(1), y.stride(0), y.stride(1),
        out.stride(0), out.stride(1), out.stride(2),
        PRECISION=_precision(x.dtype), BLOCK_X=block_x, BLOCK_Y=block_y, BLOCK_M=32,
    )
    return out


def block_m_for(rows_per_group: float) -> int:
    """Row-block size from the mean rows per group (small for decode, where padding is waste)."""
    return 16 if rows_per_group <= 16 else (32 if rows_per_group <= 32 else 64)


def grouped_gemm(a: torch.Tensor, b: torch.Tensor, ends: torch.Tensor, trans_b: bool) -> torch.Tensor:
    """a (M, K), b (G, N, K) / (G, K, N), ends (G,) cumulative end rows -> (M, N) in a's dtype."""
    num_groups = b.shape[0]
    n = b.shape[1] if trans_b else b.shape[2]
    out = torch.zeros(a.shape[0], n, dtype=a.dtype, device=a.device)
    block_m = block_m_for(a.shape[0] / max(num_groups, 1))
    seg, blocks = segments_from_ends(ends, block_m)
    return launch_grouped_gemm(a, b, out, num_rows=a.shape[0], seg_offsets=seg,
                               block_offsets=blocks, block_m=block_m, trans_b=trans_b)


def grouped_wgrad(x: torch.Tensor, y: torch.Tensor, ends: torch.Tensor, num_groups: int) -> torch.Tensor:
    """x (M, X), y (M, Y), ends (G,) -> (G, X, Y) in x's dtype: per group x_g^T @ y_g."""
    out = torch.zeros(num_groups, x.shape[1], y.shape[1], dtype=x.dtype, device=x.device)
    seg = torch.nn.functional.pad(ends.to(torch.int32), (1, 0))
    return launch_grouped_wgrad(x, y, out, seg)
