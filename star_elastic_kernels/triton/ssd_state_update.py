"""Triton decode step of the Mamba-2 recurrence at an elastic width (``ssd_state_update``).

One program per (batch row, active head, block of head channels) reads its slice of the
parent-layout cache ``state[slot, parent_head, :p, :N]`` through strides, updates it in fp32,
writes it back in the cache's dtype and reduces the fp32 state against C for the output. Nothing
outside the active slice of the chosen slots is read or written; a row whose slot is negative
(padding) or outside the cache (recorded in the device error word) touches no state and outputs
zero. 64-bit offsets.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from star_elastic_kernels.ssm import _device_checks
from star_elastic_kernels.triton.ssd_scan import _discretize_dt


@triton.jit
def _state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dt_bias_ptr, slots_ptr, y_ptr,
    error_ptr, heads_per_group, parent_heads_per_group, head_dim, state_size, num_slots,
    stride_s_slot, stride_s_h, stride_s_p, stride_s_n,
    stride_x_b, stride_x_h, stride_dt_b, stride_dt_h, stride_B_b, stride_B_g,
    stride_C_b, stride_C_g, stride_z_b, stride_z_h, stride_D_h, stride_D_p,
    stride_y_b, stride_y_h,
    dt_min, dt_max,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    HAS_SLOTS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    p = tl.program_id(2).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    n = tl.arange(0, BLOCK_N).to(tl.int64)
    p_mask = p < head_dim
    n_mask = n < state_size
    group = head // heads_per_group
    parent_head = group * parent_heads_per_group + head % heads_per_group
    slot = row
    used = True
    if HAS_SLOTS:
        slot = tl.load(slots_ptr + row).to(tl.int64)
        # padding rows (slot < 0) and slots outside the cache (recorded) touch no state
        used = (slot >= 0) & (slot < num_slots)
        if slot >= num_slots:
            tl.atomic_or(error_ptr, 1)  # _device_checks.SLOT_OUT_OF_RANGE
        slot = tl.where(used, slot, 0)

    bias = 0.0
    if HAS_DT_BIAS:
        bias = tl.load(dt_bias_ptr + parent_head).to(tl.float32)
    dt = _discretize_dt(tl.load(dt_ptr + row * stride_dt_b + head * stride_dt_h), bias,
                        HAS_DT_BIAS, DT_SOFTPLUS, dt_min, dt_max)
    decay = tl.exp(dt * tl.load(A_ptr + parent_head).to(tl.float32))
    x = tl.load(x_ptr + row * stride_x_b + head * stride_x_h + p, mask=p_mask,
                other=0.0).to(tl.float32)
    b = tl.load(B_ptr + row * stride_B_b + group * stride_B_g + n, mask=n_mask,
                other=0.0).to(tl.float32)
    c = tl.load(C_ptr + row * stride_C_b + group * stride_C_g + n, mask=n_mask,
                other=0.0).to(tl.float32)
    cell = (state_ptr + slot * stride_s_slot + parent_head * stride_s_h
            + p[:, None] * stride_s_p + n[None, :] * stride_s_n)
    mask = p_mask[:, None] & n_mask[None, :] & used
    state = tl.load(cell, mask=mask, other=0.0).to(tl.float32)
    state = decay * state + (dt * x)[:, None] * b[None, :]
    tl.store(cell, state.to(state_ptr.dtype.element_ty), mask=mask)
    y = tl.sum(state * c[None, :], axis=1)
    if HAS_D:
        d = tl.load(D_ptr + parent_head * stride_D_h + p * stride_D_p, mask=p_mask, other=0.0)
        y += d.to(tl.float32) * x
    if HAS_Z:
        z = tl.load(z_ptr + row * stride_z_b + head * stride_z_h + p, mask=p_mask,
                    other=0.0).to(tl.float32)
        y = y * z * tl.sigmoid(z)
    y = tl.where(used, y, 0.0)
    tl.store(y_ptr + row * stride_y_b + head * stride_y_h + p, y.to(y_ptr.dtype.element_ty),
             mask=p_mask)


def ssd_state_update(state, x, dt, A, B, C, D, z, dt_bias, slots, dt_softplus, dt_limit,
                     heads_per_group):
    """Launch the decode step (arguments checked by ``star_elastic_kernels.ssm.decode``).
    Updates ``state`` in place; returns y (b, G*k, p) contiguous in x's dtype (zero on rows whose
    slot is negative or outside the cache; the latter are recorded in the device error word)."""
    b, num_active, p = x.shape
    num_groups, state_size = B.shape[1], B.shape[2]
    y = torch.empty((b, num_active, p), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    block_n = max(16, triton.next_power_of_2(state_size))
    block_p = max(1, min(triton.next_power_of_2(p), 4096 // block_n))
    dummy = x
    D_strides = (0, 0) if D is None else (D.stride(0), D.stride(1) if D.dim() == 2 else 0)
    z_strides = (0, 0) if z is None else (z.stride(0), z.stride(1))
    _state_update_kernel[(b, num_active, triton.cdiv(p, block_p))](
        state, x, dt, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
        dt_bias if dt_bias is not None else dummy, slots if slots is not None else dummy, y,
        _device_checks.word_for(x), heads_per_group, A.shape[0] // num_groups, p, state_size,
        state.shape[0], *state.stride(),
        x.stride(0), x.stride(1), dt.stride(0), dt.stride(1), B.stride(0), B.stride(1),
        C.stride(0), C.stride(1), *z_strides, *D_strides, y.stride(0), y.stride(1),
        float(dt_limit[0]), float(dt_limit[1]), HAS_D=D is not None, HAS_Z=z is not None,
        HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=bool(dt_softplus),
        HAS_SLOTS=slots is not None, BLOCK_P=block_p, BLOCK_N=block_n)
    return y
