"""Triton gated group RMSNorm at an elastic slice (Mamba-2's ``RMSNormGated``).

One program per (row, norm group): the group's ``k*p`` compact values are contiguous in the row;
the weight is read in place at the parent's ``[g, j < k, c < p]`` positions of its
(G, H/G, P) layout. fp32 arithmetic, 64-bit offsets.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _gated_rmsnorm_kernel(
    y_ptr, z_ptr, w_ptr, out_ptr, group_width, head_dim, parent_group_stride, parent_head_dim,
    stride_y_row, stride_z_row, stride_out_row, eps,
    HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    group = tl.program_id(1).to(tl.int64)
    i = tl.arange(0, BLOCK).to(tl.int64)
    mask = i < group_width
    column = group * group_width + i
    value = tl.load(y_ptr + row * stride_y_row + column, mask=mask, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + row * stride_z_row + column, mask=mask, other=0.0).to(tl.float32)
        gate = z * tl.sigmoid(z)
        if not NORM_BEFORE_GATE:
            value = value * gate
    mean_square = tl.sum(value * value, axis=0) / group_width
    value = value * tl.rsqrt(mean_square + eps)
    parent = group * parent_group_stride + (i // head_dim) * parent_head_dim + i % head_dim
    value = value * tl.load(w_ptr + parent, mask=mask, other=0.0).to(tl.float32)
    if HAS_Z:
        if NORM_BEFORE_GATE:
            value = value * gate
    tl.store(out_ptr + row * stride_out_row + column, value.to(out_ptr.dtype.element_ty), mask=mask)


def gated_rmsnorm(y, z, weight, eps, num_groups, head_dim, parent_group_width, parent_head_dim,
                  norm_before_gate):
    """y, z (rows, G*k*p) unit inner stride -> (rows, G*k*p) contiguous in y's dtype; ``weight``
    (H*P,) contiguous parent. A dense call passes head_dim = parent_head_dim = group width."""
    rows, width = y.shape
    out = torch.empty((rows, width), dtype=y.dtype, device=y.device)
    if out.numel() == 0:
        return out
    group_width = width // num_groups
    _gated_rmsnorm_kernel[(rows, num_groups)](
        y, z if z is not None else y, weight, out, group_width, head_dim, parent_group_width,
        parent_head_dim, y.stride(0), z.stride(0) if z is not None else 0, out.stride(0),
        float(eps), HAS_Z=z is not None, NORM_BEFORE_GATE=bool(norm_before_gate),
        BLOCK=triton.next_power_of_2(group_width))
    return out
