"""Triton causal depthwise conv1d over the Mamba conv channels at an elastic slice (+ decode update).

Compact channel ``ch`` of ``[x: G*k*p | B: G*N | C: G*N]`` reads parent channel
``parent_head(ch // p) * P + ch % p`` below ``G*k*p`` and ``H*P + (ch - G*k*p)`` above (B and C are
whole); a dense call maps every channel to itself. Weights, bias and the decode cache are read in
place through strides; 64-bit offsets throughout.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from star_elastic_kernels.ssm import _device_checks


@triton.jit
def _parent_channel(ch, x_channels, head_dim, heads_per_group, parent_heads_per_group,
                    parent_head_dim, parent_x_channels):
    head = ch // head_dim
    parent_head = (head // heads_per_group) * parent_heads_per_group + head % heads_per_group
    return tl.where(ch < x_channels, parent_head * parent_head_dim + ch % head_dim,
                    parent_x_channels + ch - x_channels)


@triton.jit
def _conv1d_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, token_seq_ptr, cu_ptr, y_ptr,
    seqlen, channels, x_channels, head_dim, heads_per_group, parent_heads_per_group,
    parent_head_dim, parent_x_channels,
    stride_x_b, stride_x_l, stride_w_c, stride_w_k, stride_i_s, stride_i_c, stride_i_k,
    stride_y_b, stride_y_l,
    WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INITIAL: tl.constexpr, VARLEN: tl.constexpr,
    SILU: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1).to(tl.int64) * BLOCK_L + tl.arange(0, BLOCK_L).to(tl.int64)
    ch = tl.program_id(2).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    t_mask = t < seqlen
    c_mask = ch < channels
    parent = _parent_channel(ch, x_channels, head_dim, heads_per_group, parent_heads_per_group,
                             parent_head_dim, parent_x_channels)
    if VARLEN:
        seq = tl.load(token_seq_ptr + t, mask=t_mask, other=0)
        start = tl.load(cu_ptr + seq, mask=t_mask, other=0).to(tl.int64)
    else:
        seq = tl.zeros([BLOCK_L], dtype=tl.int64) + row
        start = tl.zeros([BLOCK_L], dtype=tl.int64)
    acc = tl.zeros([BLOCK_L, BLOCK_C], dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + parent, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    for i in tl.static_range(WIDTH):
        source = t - (WIDTH - 1) + i
        inside = source >= start
        value = tl.load(x_ptr + row * stride_x_b + source[:, None] * stride_x_l + ch[None, :],
                        mask=(t_mask & inside)[:, None] & c_mask[None, :], other=0.0)
        value = value.to(tl.float32)
        if HAS_INITIAL:
            history = tl.load(init_ptr + seq[:, None] * stride_i_s + ch[None, :] * stride_i_c
                              + ((WIDTH - 1) + source - start)[:, None] * stride_i_k,
                              mask=(t_mask & ~inside)[:, None] & c_mask[None, :], other=0.0)
            value += history.to(tl.float32)
        w = tl.load(w_ptr + parent * stride_w_c + i * stride_w_k, mask=c_mask, other=0.0)
        acc += value * w.to(tl.float32)[None, :]
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(y_ptr + row * stride_y_b + t[:, None] * stride_y_l + ch[None, :],
             acc.to(y_ptr.dtype.element_ty), mask=t_mask[:, None] & c_mask[None, :])


@triton.jit
def _conv1d_update_kernel(
    x_ptr, state_ptr, w_ptr, bias_ptr, slots_ptr, y_ptr, error_ptr, num_slots,
    channels, x_channels, head_dim, heads_per_group, parent_heads_per_group, parent_head_dim,
    parent_x_channels,
    stride_x_b, stride_s_slot, stride_s_c, stride_s_k, stride_w_c, stride_w_k, stride_y_b,
    WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SLOTS: tl.constexpr, SILU: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    ch = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    c_mask = ch < channels
    parent = _parent_channel(ch, x_channels, head_dim, heads_per_group, parent_heads_per_group,
                             parent_head_dim, parent_x_channels)
    slot = row
    if HAS_SLOTS:
        slot = tl.load(slots_ptr + row).to(tl.int64)
        # padding rows (slot < 0) and slots outside the cache (recorded) touch no state
        used = (slot >= 0) & (slot < num_slots)
        if slot >= num_slots:
            tl.atomic_or(error_ptr, 1)  # _device_checks.SLOT_OUT_OF_RANGE
        c_mask = c_mask & used
        slot = tl.where(used, slot, 0)
    cell = state_ptr + slot * stride_s_slot + parent * stride_s_c
    x = tl.load(x_ptr + row * stride_x_b + ch, mask=c_mask, other=0.0)
    acc = tl.load(w_ptr + parent * stride_w_c + (WIDTH - 1) * stride_w_k, mask=c_mask,
                  other=0.0).to(tl.float32) * x.to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + parent, mask=c_mask, other=0.0).to(tl.float32)
    for i in tl.static_range(WIDTH - 1):
        old = tl.load(cell + i * stride_s_k, mask=c_mask, other=0.0)
        acc += old.to(tl.float32) * tl.load(w_ptr + parent * stride_w_c + i * stride_w_k,
                                            mask=c_mask, other=0.0).to(tl.float32)
        if i > 0:
            tl.store(cell + (i - 1) * stride_s_k, old, mask=c_mask)
    tl.store(cell + (WIDTH - 2) * stride_s_k, x.to(state_ptr.dtype.element_ty), mask=c_mask)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(y_ptr + row * stride_y_b + ch, acc.to(y_ptr.dtype.element_ty), mask=ch < channels)


def _slice_args(layout):
    """(x_channels, head_dim, k, H/G, P, H*P) for the kernels; a dense call maps ch -> ch."""
    if layout is None:
        return 0, 1, 1, 1, 1, 0
    return layout


def causal_conv1d(x, weight, bias, initial_states, token_seq, cu_seqlens, layout, silu):
    """x (b, l, c) unit channel stride -> y (b, l, c) contiguous in x's dtype. ``layout`` is
    ``_slice_args``'s tuple or None; ``token_seq`` (l,) int64 sequence of each packed token."""
    b, l, c = x.shape
    width = weight.shape[1]
    y = torch.empty((b, l, c), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    block_c = min(128, triton.next_power_of_2(c))
    block_l = 16
    dummy = x
    init_strides = (0, 0, 0) if initial_states is None else initial_states.stride()
    _conv1d_kernel[(b, triton.cdiv(l, block_l), triton.cdiv(c, block_c))](
        x, weight, bias if bias is not None else dummy,
        initial_states if initial_states is not None else dummy,
        token_seq if token_seq is not None else dummy,
        cu_seqlens if cu_seqlens is not None else dummy, y,
        l, c, *_slice_args(layout), x.stride(0), x.stride(1), weight.stride(0), weight.stride(1),
        *init_strides, y.stride(0), y.stride(1),
        WIDTH=width, HAS_BIAS=bias is not None, HAS_INITIAL=initial_states is not None,
        VARLEN=token_seq is not None, SILU=silu, BLOCK_L=block_l, BLOCK_C=block_c)
    return y


def causal_conv1d_update(x, conv_state, weight, bias, slots, layout, silu):
    """x (b, c) -> y (b, c); shifts the active channels of ``conv_state`` (slots, C, w-1) in place.
    Rows whose slot is negative (padding) or outside the cache (recorded in the device error word)
    touch no state and output zero."""
    b, c = x.shape
    y = torch.empty((b, c), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    block_c = min(256, triton.next_power_of_2(c))
    _conv1d_update_kernel[(b, triton.cdiv(c, block_c))](
        x, conv_state, weight, bias if bias is not None else x, slots if slots is not None else x,
        y, _device_checks.word_for(x), conv_state.shape[0], c, *_slice_args(layout), x.stride(0), *conv_state.stride(), weight.stride(0),
        weight.stride(1), y.stride(0),
        WIDTH=weight.shape[1], HAS_BIAS=bias is not None, HAS_SLOTS=slots is not None, SILU=silu,
        BLOCK_C=block_c)
    return y
