"""Causal depthwise conv1d over the Mamba conv channels at an elastic slice: ``causal_conv1d``
(prefill, batched or packed) and ``causal_conv1d_update`` (one decode token, in-place cache).

Order: launchers, the registered ops ``star_elastic::causal_conv1d`` and
``star_elastic::causal_conv1d_update`` with fake impls, the public wrappers. Kernels:
``csrc/ssm/causal_conv1d.cu`` (cuda: private ops ``_causal_conv1d``, ``_causal_conv1d_update``),
``star_elastic_kernels/triton/conv1d.py`` (triton); the specification is
``star_elastic_kernels.reference.ssm.causal_conv1d`` / ``causal_conv1d_update`` (torch). The
final states of the prefill are gathered in Python (``_final_states``) on the kernel backends.

``causal_conv1d`` is differentiable (x, weight, bias, initial_states) on every backend through
PyTorch autograd of the reference, recomputed in the backward pass (no backward kernel yet).
"""

from __future__ import annotations

import torch

from star_elastic_kernels import _backends
from star_elastic_kernels.reference import ssm as reference
from star_elastic_kernels.ssm import _autograd, _checks, _device_checks
from star_elastic_kernels.ssm._chunks import packed_bounds

SPEC = _backends.register(_backends.OpSpec(
    "causal_conv1d", backends=("cuda", "triton", "torch"), cuda_ops=("_causal_conv1d",),
    supports=_checks.kernels_skip_float64))
UPDATE_SPEC = _backends.register(_backends.OpSpec(
    "causal_conv1d_update", backends=("cuda", "triton", "torch"),
    cuda_ops=("_causal_conv1d_update",), supports=_checks.kernels_skip_float64))


def _triton():
    from star_elastic_kernels.triton import conv1d as kernels

    return kernels


def _narrow(t):
    """The CUDA kernels read fp32/fp16/bf16 parameters; float64 ones (weights, bias, history) go
    fp32 (x itself is never float64 on a kernel backend)."""
    return t.float() if t is not None and t.dtype == torch.float64 else t


def _cuda_conv1d(x, weight, bias, initial_states, bounds, silu, layout):
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if y.numel():
        torch.ops.star_elastic._causal_conv1d(
            x, _narrow(weight), _narrow(bias), _narrow(initial_states),
            bounds, y,
            list(_kernel_layout(layout, weight, x.shape[2]) or ()), silu)
    return y


def _cuda_conv1d_update(x, conv_state, weight, bias, state_indices, silu, layout):
    if conv_state.dtype == torch.float64:  # updated in place: cannot be narrowed to a copy
        raise TypeError("the cuda backend of causal_conv1d_update needs a float32/float16/bfloat16 "
                        "conv_state, got torch.float64; use backend='triton' or 'torch'")
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if y.numel():
        torch.ops.star_elastic._causal_conv1d_update(
            x, conv_state, _narrow(weight), _narrow(bias), state_indices, y,
            _device_checks.word_for(x), list(_kernel_layout(layout, weight, x.shape[1]) or ()),
            silu)
    return y


def _slice_kwargs(layout: list[int]) -> dict:
    """The reference's slice keywords from the op's layout list ([] = dense, else [H, G, k, p])."""
    if not layout:
        return {}
    return dict(num_heads=layout[0], num_groups=layout[1], heads_per_group=layout[2],
                head_dim=layout[3])


def _kernel_layout(layout: list[int], weight: torch.Tensor, channels: int):
    """The kernels' channel-map arguments (x channels, p, k, H/G, P, H*P) or None (Triton and
    CUDA alike)."""
    if not layout:
        return None
    num_heads, num_groups, k, p = layout
    bc = channels - num_groups * k * p
    parent_p = (weight.shape[0] - bc) // num_heads
    return (num_groups * k * p, p, k, num_heads // num_groups, parent_p, num_heads * parent_p)


def _final_states(x, initial_states, bounds, width):
    """The last w-1 inputs of every sequence (from the initial states where it is shorter):
    (b or S, c, w-1) in x's dtype. ``bounds``: packed boundaries on the device (int64, from
    ``_chunks.packed_bounds``) or None; nothing is read on the host."""
    b, l, c = x.shape
    if bounds is None:
        starts = torch.zeros(b, dtype=torch.long, device=x.device)
        ends = torch.full((b,), l, dtype=torch.long, device=x.device)
        rows = torch.arange(b, device=x.device)
    else:
        starts, ends = bounds[:-1], bounds[1:]
        rows = torch.zeros_like(starts)
    positions = ends[:, None] - (width - 1) + torch.arange(width - 1, device=x.device)  # (S, w-1)
    from_x = positions >= starts[:, None]
    taken = x[rows[:, None], positions.clamp(min=0, max=max(l - 1, 0))] if l else \
        x.new_zeros((len(rows), width - 1, c))
    out = torch.where(from_x[..., None], taken, torch.zeros((), dtype=x.dtype, device=x.device))
    if initial_states is not None:
        history_index = ((width - 1) + positions - starts[:, None]).clamp(min=0, max=width - 2)
        history = initial_states.gather(2, history_index[:, None, :].expand(-1, c, -1))
        out = torch.where(from_x[..., None], out, history.transpose(1, 2).to(x.dtype))
    return out.transpose(1, 2).contiguous()


@torch.library.custom_op("star_elastic::causal_conv1d", mutates_args=())
def _causal_conv1d_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
    initial_states: torch.Tensor | None, cu_seqlens: torch.Tensor | None, silu: bool,
    layout: list[int], backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    if backend in ("cuda", "triton"):
        width = weight.shape[1]
        bounds = None if cu_seqlens is None else packed_bounds(cu_seqlens, x.shape[1])
        if backend == "cuda":
            y = _cuda_conv1d(x, weight, bias, initial_states, bounds, silu, layout)
        else:
            token_seq = None
            if bounds is not None:  # the sequence of every packed token (empty ones skipped)
                tokens = torch.arange(x.shape[1], device=x.device)
                token_seq = torch.searchsorted(bounds[1:], tokens, right=True)
            y = _triton().causal_conv1d(x, weight, bias, initial_states, token_seq, bounds,
                                        _kernel_layout(layout, weight, x.shape[2]), silu)
        return y, _final_states(x, initial_states, bounds, width)
    y, final = _conv_reference(x, weight, bias, initial_states, cu_seqlens, silu, layout)
    return y.contiguous(), final.contiguous()


def _conv_reference(x, weight, bias, initial_states, cu_seqlens, silu, layout):
    """The reference, sequence by sequence when packed (differentiable)."""
    activation = "silu" if silu else None
    kwargs = _slice_kwargs(layout)
    bounds = None if cu_seqlens is None else [int(v) for v in cu_seqlens.tolist()]
    if bounds is None:
        return reference.causal_conv1d(x, weight, bias, activation=activation,
                                       initial_states=initial_states, return_final_states=True,
                                       **kwargs)
    pieces, finals = [], []
    for i, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        init = None if initial_states is None else initial_states[i : i + 1]
        y, final = reference.causal_conv1d(x[:, start:end], weight, bias, activation=activation,
                                           initial_states=init, return_final_states=True,
                                           **kwargs)
        pieces.append(y)
        finals.append(final)
    return torch.cat(pieces, dim=1), torch.cat(finals, dim=0)


@_causal_conv1d_op.register_fake
def _(x, weight, bias, initial_states, cu_seqlens, silu, layout, backend):
    seqs = x.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return x.new_empty(x.shape), x.new_empty((seqs, x.shape[2], weight.shape[1] - 1))


_autograd.register_reference_backward(_causal_conv1d_op, _conv_reference, num_tensors=5)


@torch.library.custom_op("star_elastic::causal_conv1d_update", mutates_args=("conv_state",))
def _causal_conv1d_update_op(
    x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
    state_indices: torch.Tensor | None, silu: bool, layout: list[int], backend: str,
) -> torch.Tensor:
    if backend == "cuda":
        return _cuda_conv1d_update(x, conv_state, weight, bias, state_indices, silu, layout)
    if backend == "triton":
        return _triton().causal_conv1d_update(x, conv_state, weight, bias, state_indices,
                                              _kernel_layout(layout, weight, x.shape[1]), silu)
    def step(rows, slots):
        return reference.causal_conv1d_update(
            x if rows is None else x[rows], conv_state, weight, bias,
            activation="silu" if silu else None, state_indices=slots, **_slice_kwargs(layout))

    return _checks.reference_on_used_slots(step, x, state_indices, conv_state.shape[0])


@_causal_conv1d_update_op.register_fake
def _(x, conv_state, weight, bias, state_indices, silu, layout, backend):
    return x.new_empty(x.shape)


# --------------------------------------------------------------------------------------------------
# Public wrappers


def _check_layout(weight, channels, num_heads, num_groups, heads_per_group, head_dim,
                  x_name: str) -> list[int]:
    """[] for a dense call, else [H, G, k, p] after checking the slice against the parent conv."""
    if num_heads is None and num_groups is None and heads_per_group is None and head_dim is None:
        if channels != weight.shape[0]:
            raise ValueError(f"{x_name} has {channels} channels but weight has {weight.shape[0]}; "
                             f"a sliced call needs num_heads, num_groups, heads_per_group, head_dim")
        return []
    for value, name in ((num_heads, "num_heads"), (num_groups, "num_groups"),
                        (head_dim, "head_dim")):
        if value is None:
            raise ValueError(f"a sliced causal_conv1d needs {name} (num_heads=H, num_groups=G, "
                             f"head_dim=p of the Mamba layout)")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if num_heads % num_groups:
        raise ValueError(f"num_heads={num_heads} is not divisible by num_groups={num_groups}")
    parent_per_group = num_heads // num_groups
    k = parent_per_group if heads_per_group is None else heads_per_group
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= parent_per_group:
        raise ValueError(f"heads_per_group={k!r} must be in [1, H/G={parent_per_group}]")
    conv_dim = weight.shape[0]
    bc = channels - num_groups * k * head_dim
    if bc <= 0 or bc % (2 * num_groups) or (conv_dim - bc) <= 0 or (conv_dim - bc) % num_heads:
        raise ValueError(f"{x_name} has {channels} channels, not G*k*p + 2*G*N for G={num_groups}, "
                         f"k={k}, p={head_dim} against a parent conv of {conv_dim} channels "
                         f"with H={num_heads}")
    parent_p = (conv_dim - bc) // num_heads
    if head_dim > parent_p:
        raise ValueError(f"head_dim={head_dim} must be in [1, P={parent_p}]")
    return [num_heads, num_groups, k, head_dim]


def _check_weight(weight, bias, device):
    _checks.tensor(weight, "weight", 2, device)
    if not 2 <= weight.shape[1] <= 4:
        raise ValueError(f"weight must be (C, w) with kernel width w in 2..4, got "
                         f"{tuple(weight.shape)} (a (C, 1, w) Conv1d weight: pass weight[:, 0])")
    _checks.optional(bias, "bias", 1, device)
    _checks.shape(bias, "bias", (weight.shape[0],))


def _check_activation(activation) -> bool:
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be 'silu' (or 'swish') or None, got {activation!r}")
    return activation is not None


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str | None = "silu",
    initial_states: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    return_final_states: bool = False,
    num_heads: int | None = None,
    num_groups: int | None = None,
    heads_per_group: int | None = None,
    head_dim: int | None = None,
    backend: str | None = None,
):
    """Causal depthwise conv1d over channel-last activations, optionally at a Mamba slice.

    ``y[t, c] = act(bias[c] + sum_i weight[c, i] * x[t - (w-1) + i, c])``, with the w-1 inputs
    before each sequence taken from ``initial_states`` (zeros when omitted).

    Args:
        x: (b, l, c) float32/float16/bfloat16 compact activations, unit channel stride (other
            strides free: a view into the packed in_proj output works).
        weight: (C, w) parent depthwise kernels, w in 2..4 (a Conv1d's ``weight[:, 0]``), any
            strides; ``bias`` (C,) parent.
        activation: ``"silu"`` (``"swish"``) or None.
        initial_states: (b, c, w-1) compact, or (S, c, w-1) with ``cu_seqlens``; oldest first.
        cu_seqlens: (S+1,) int32/int64 packed-sequence boundaries (b must be 1; 0 ... l,
            non-decreasing); no input flows across a boundary. GPU values are never read on the
            host (invalid ones are clamped and recorded on the device, see
            :func:`star_elastic_kernels.ssm.check_device_errors`); CPU values raise here.
        return_final_states: also return the last w-1 inputs of every sequence, (b or S, c, w-1)
            in x's dtype (for decoding).
        num_heads, num_groups, heads_per_group, head_dim: the Mamba slice (H, G, k, p). The parent
            channels are ``[x: H*P | B: G*N | C: G*N]``; the compact ones ``[x: G*k*p | B | C]``
            (the first k heads of every group, the first p channels of every head; B, C whole),
            so ``c = G*k*p + 2*G*N``. Omit all four for a dense call (c == C).
        backend: ``"auto" | "cuda" | "triton" | "torch"``.

    Returns:
        ``y`` (b, l, c) in x's dtype; with ``return_final_states`` ``(y, final_states)``.
    """
    _checks.tensor(x, "x", 3, unit_inner_stride=True)
    device = x.device
    _check_weight(weight, bias, device)
    silu = _check_activation(activation)
    b, l, c = x.shape
    width = weight.shape[1]
    layout = _check_layout(weight, c, num_heads, num_groups, heads_per_group, head_dim, "x")
    seqs = b
    if cu_seqlens is not None:
        seqs = _checks.seq_bounds(cu_seqlens, b, l, device)
    _checks.optional(initial_states, "initial_states", 3, device)
    _checks.shape(initial_states, "initial_states", (seqs, c, width - 1))
    chosen = _backends.select_backend(SPEC, device, x.dtype, backend)
    y, final = _causal_conv1d_op(x, weight, bias, initial_states, cu_seqlens, silu, layout, chosen)
    return (y, final) if return_final_states else y


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str | None = "silu",
    num_heads: int | None = None,
    num_groups: int | None = None,
    heads_per_group: int | None = None,
    head_dim: int | None = None,
    state_indices: torch.Tensor | None = None,
    check_state_indices: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """One decode token of :func:`causal_conv1d`; updates the parent-layout cache in place.

    Args:
        x: (b, c) compact token inputs (same channel slice as :func:`causal_conv1d`), unit stride.
        conv_state: (slots, C, w-1) parent-channel cache of the last w-1 inputs, oldest first, any
            float dtype and strides. Only the active channels of the chosen slots are written
            (shifted by one, x appended); everything else stays bit-identical.
        weight, bias, activation, num_heads, num_groups, heads_per_group, head_dim: as in
            :func:`causal_conv1d`.
        state_indices: optional (b,) int32/int64 distinct slots in [0, slots), negative for a
            padding row (skipped, output zero); default row i -> slot i. As in
            :func:`ssd_state_update`, GPU values are never read on the host (slots >= slots are
            skipped and recorded on the device).
        check_state_indices: as in :func:`ssd_state_update` (opt-in host check, one sync).
        backend: ``"auto" | "cuda" | "triton" | "torch"`` (cuda needs a float32/float16/bfloat16
            ``conv_state``).

    Returns:
        ``y`` (b, c) in x's dtype.
    """
    _checks.tensor(x, "x", 2, unit_inner_stride=True)
    device = x.device
    _check_weight(weight, bias, device)
    silu = _check_activation(activation)
    _checks.tensor(conv_state, "conv_state", 3, device)
    _checks.shape(conv_state, "conv_state", (conv_state.shape[0], weight.shape[0],
                                             weight.shape[1] - 1))
    b, c = x.shape
    layout = _check_layout(weight, c, num_heads, num_groups, heads_per_group, head_dim, "x")
    slots = _checks.slot_indices(state_indices, b, conv_state.shape[0], device,
                                 check_state_indices)
    chosen = _backends.select_backend(UPDATE_SPEC, device, x.dtype, backend)
    return _causal_conv1d_update_op(x, conv_state, weight, bias, slots, silu, layout, chosen)
