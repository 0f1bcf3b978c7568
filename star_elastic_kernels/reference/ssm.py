"""Pure-PyTorch reference for the width-sliced Mamba-2 ops (the specification; DESIGN §3.1).

Layout conventions shared by every function here:

* Parent sizes: ``H`` heads, ``P`` head channels, ``G`` groups (``H % G == 0``), ``N`` state size.
  Heads are group-major: head ``h`` belongs to group ``h // (H // G)``.
* An elastic slice keeps the first ``k = heads_per_group`` heads of **every** group and the first
  ``p = head_dim`` channels of every head. The active heads, in compact order, are
  ``[g * (H // G) + j for g in range(G) for j in range(k)]``. B, C, the groups and N are never sliced.
* Activations are compact (they have the active width: ``G*k`` heads of ``p`` channels); weights and
  per-head parameters keep the parent layout and are read at the active heads / channels.

These functions are written for clarity (a plain sequential recurrence for the scan), not speed.
They never modify their inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "active_head_index",
    "ssd_scan",
    "ssd_state_update",
    "causal_conv1d",
    "causal_conv1d_update",
    "gated_rmsnorm",
]


def active_head_index(num_heads: int, num_groups: int, heads_per_group: int, device=None) -> torch.Tensor:
    """Parent indices (int64, shape ``(G*k,)``) of the active heads, in compact (group-major) order."""
    parent_per_group = num_heads // num_groups
    group_start = torch.arange(num_groups, device=device) * parent_per_group
    return (group_start[:, None] + torch.arange(heads_per_group, device=device)[None, :]).reshape(-1)


def _check_head_slice(name_k: str, k: int, parent_per_group: int, name_p: str, p: int, parent_p: int | None):
    if not 1 <= k <= parent_per_group:
        raise ValueError(f"{name_k}={k} must be in [1, H/G={parent_per_group}]")
    if p < 1 or (parent_p is not None and p > parent_p):
        raise ValueError(f"{name_p}={p} must be in [1, P={parent_p}]")


def _resolve_slice(x: torch.Tensor, A: torch.Tensor, num_groups: int, heads_per_group, head_dim, D=None):
    """Checks the compact activation ``x (..., G*k, p)`` against the parent's ``A (H,)``; returns (k, p)."""
    num_heads = A.shape[0]
    if num_heads % num_groups != 0:
        raise ValueError(f"A has H={num_heads} heads, not divisible by G={num_groups} groups (B.shape[-2])")
    parent_per_group = num_heads // num_groups
    k = parent_per_group if heads_per_group is None else int(heads_per_group)
    p = x.shape[-1] if head_dim is None else int(head_dim)
    parent_p = D.shape[1] if (D is not None and D.dim() == 2) else None
    _check_head_slice("heads_per_group", k, parent_per_group, "head_dim", p, parent_p)
    if x.shape[-2] != num_groups * k or x.shape[-1] != p:
        raise ValueError(
            f"x has {tuple(x.shape[-2:])} (heads, channels) but the slice heads_per_group={k}, head_dim={p} "
            f"with G={num_groups} needs ({num_groups * k}, {p})"
        )
    return k, p


def _active_dt(dt, dt_bias, heads, dt_softplus, dt_limit, compute_dtype=torch.float32):
    """Discretisation step per token and active head, fp32: ``clamp(softplus(dt + dt_bias))``."""
    dt = dt.to(compute_dtype)
    if dt_bias is not None:
        dt = dt + dt_bias[heads].to(compute_dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    return dt.clamp(min=dt_limit[0], max=dt_limit[1])


def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    chunk_size: int = 128,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    initial_states: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    return_final_states: bool = False,
    heads_per_group: int | None = None,
    head_dim: int | None = None,
):
    """Mamba-2 selective scan (SSD) as the plain sequential recurrence, at an elastic width.

    With ``H' = G*k`` active heads and ``p`` active head channels:

    * ``x`` (b, l, H', p): compact inputs;  ``z`` (b, l, H', p) optional gate (``y *= silu(z)``).
    * ``dt`` (b, l, H'): compact raw time steps; ``dt_bias`` (H,) parent, added before softplus.
    * ``A`` (H,) parent (negative decay rates); ``D`` (H,) or (H, P) parent skip weights.
    * ``B``, ``C`` (b, l, G, N): never sliced; head ``h'`` uses group ``h' // k``.
    * ``initial_states`` (b, H', p, N) compact; ``cu_seqlens`` (S+1,) int, only with b == 1: packed
      sequences, the state restarts at every boundary (final states are then (S, H', p, N)).

    Recurrence per head (fp32): ``h_t = exp(dt_t*A) h_{t-1} + dt_t * x_t B_t^T``,
    ``y_t = h_t C_t + D*x_t``, then ``y_t *= silu(z_t)``. ``chunk_size`` only affects how a kernel
    blocks the work; the result does not depend on it.

    Returns ``y`` (b, l, H', p) in x's dtype, and the final states (b, H', p, N) fp32 when
    ``return_final_states``.
    """
    if x.dim() != 4 or dt.dim() != 3 or B.dim() != 4 or C.dim() != 4:
        raise ValueError("ssd_scan expects x (b,l,H,P), dt (b,l,H), B and C (b,l,G,N)")
    b, l, num_active, p = x.shape
    num_groups, state_size = B.shape[2], B.shape[3]
    k, p = _resolve_slice(x, A, num_groups, heads_per_group, head_dim, D)
    if dt.shape != (b, l, num_active):
        raise ValueError(f"dt has shape {tuple(dt.shape)}, expected {(b, l, num_active)}")
    if B.shape != C.shape or B.shape[:2] != (b, l):
        raise ValueError(f"B {tuple(B.shape)} and C {tuple(C.shape)} must both be (b={b}, l={l}, G, N)")
    if z is not None and z.shape != x.shape:
        raise ValueError(f"z has shape {tuple(z.shape)}, expected x's {tuple(x.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be positive")
    heads = active_head_index(A.shape[0], num_groups, k, device=x.device)

    starts = [0]
    if cu_seqlens is not None:
        if b != 1:
            raise ValueError("cu_seqlens requires batch size 1 (packed sequences)")
        starts = [int(s) for s in cu_seqlens.tolist()]
        if starts[0] != 0 or starts[-1] != l or any(e < s for s, e in zip(starts, starts[1:])):
            raise ValueError(f"cu_seqlens must start at 0, not decrease and end at l={l}: {starts}")
        starts = starts[:-1]
    num_seqs = len(starts)
    state_shape = (num_seqs if cu_seqlens is not None else b, num_active, p, state_size)
    if initial_states is not None and initial_states.shape != state_shape:
        raise ValueError(f"initial_states has shape {tuple(initial_states.shape)}, expected {state_shape}")

    # fp32 arithmetic; float64 inputs stay float64 (so the scan can be gradchecked)
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    dt = _active_dt(dt, dt_bias, heads, dt_softplus, dt_limit, compute)  # (b, l, H')
    A_active = A[heads].to(compute)  # (H',)
    group_of_head = torch.arange(num_active, device=x.device) // k
    B_heads = B.to(compute)[:, :, group_of_head]  # (b, l, H', N)
    C_heads = C.to(compute)[:, :, group_of_head]
    xf = x.to(compute)

    def fresh_state(seq: int) -> torch.Tensor:
        if initial_states is None:
            return x.new_zeros((b if cu_seqlens is None else 1, num_active, p, state_size), dtype=compute)
        if cu_seqlens is None:
            return initial_states.to(compute)
        return initial_states[seq : seq + 1].to(compute)

    outputs, finals = [], []
    seq, state = 0, fresh_state(0)
    # unbind, not indexing: the backward of l selects would write l full-size zero gradients
    steps = zip(dt.unbind(1), xf.unbind(1), B_heads.unbind(1), C_heads.unbind(1))
    for t, (dt_t, x_t, B_t, C_t) in enumerate(steps):
        while seq + 1 < num_seqs and t == starts[seq + 1]:  # a loop: empty sequences end here too
            finals.append(state)
            seq += 1
            state = fresh_state(seq)
        decay = torch.exp(dt_t * A_active)  # (b, H')
        update = (dt_t[:, :, None] * x_t)[..., None] * B_t[:, :, None, :]  # (b, H', p, N)
        state = decay[:, :, None, None] * state + update
        outputs.append(torch.einsum("bhpn,bhn->bhp", state, C_t))
    while seq + 1 < num_seqs:  # trailing empty sequences
        finals.append(state)
        seq += 1
        state = fresh_state(seq)
    finals.append(state)
    y = torch.stack(outputs, dim=1) if outputs else xf.new_zeros((b, 0, num_active, p))

    if D is not None:
        D_active = D[heads].to(compute)
        D_active = D_active[:, :p] if D.dim() == 2 else D_active[:, None]
        y = y + D_active * xf
    if z is not None:
        y = y * F.silu(z.to(compute))
    y = y.to(x.dtype)
    if return_final_states:
        return y, torch.cat(finals, dim=0) if cu_seqlens is not None else finals[0]
    return y


def ssd_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    heads_per_group: int | None = None,
    head_dim: int | None = None,
    state_indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """One decode token of the recurrence; updates the parent-layout ``state`` in place.

    ``state`` (slots, H, P, N) parent layout (fp32 or bf16); only the active slice
    ``[:, active heads, :p, :]`` of the chosen slots is written. ``x`` (b, H', p), ``dt`` (b, H'),
    ``z`` (b, H', p) compact; ``B``, ``C`` (b, G, N); ``A``, ``dt_bias`` (H,), ``D`` (H,) or (H, P)
    parent. ``state_indices`` (b,) int picks the slot of each batch row (default: row i -> slot i).
    Returns ``y`` (b, H', p) in x's dtype.
    """
    if x.dim() != 3 or state.dim() != 4:
        raise ValueError("ssd_state_update expects state (slots,H,P,N) and x (b,H',p)")
    b, num_active, _ = x.shape
    num_groups = B.shape[1]
    k, p = _resolve_slice(x, A, num_groups, heads_per_group, head_dim, D)
    if state.shape[1] != A.shape[0] or p > state.shape[2] or state.shape[3] != B.shape[2]:
        raise ValueError(f"state {tuple(state.shape)} does not match H={A.shape[0]}, p={p}, N={B.shape[2]}")
    slots = torch.arange(b, device=x.device) if state_indices is None else state_indices.long()
    if slots.shape != (b,) or (b and (slots.min() < 0 or slots.max() >= state.shape[0])):
        raise ValueError(f"state_indices must be (b={b},) slots in [0, {state.shape[0]})")
    heads = active_head_index(A.shape[0], num_groups, k, device=x.device)
    group_of_head = torch.arange(num_active, device=x.device) // k

    dt = _active_dt(dt, dt_bias, heads, dt_softplus, dt_limit)  # (b, H')
    old = state[slots[:, None], heads[None, :], :p].float()  # (b, H', p, N) copy of the active slice
    decay = torch.exp(dt * A[heads].float())
    update = (dt[..., None] * x.float())[..., None] * B.float()[:, group_of_head, None, :]
    new = decay[:, :, None, None] * old + update
    state[slots[:, None], heads[None, :], :p] = new.to(state.dtype)
    y = torch.einsum("bhpn,bhn->bhp", new, C.float()[:, group_of_head])
    if D is not None:
        D_active = D[heads].float()
        y = y + (D_active[:, :p] if D.dim() == 2 else D_active[:, None]) * x.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(x.dtype)


def _conv_channel_index(weight, x_channels, num_heads, num_groups, heads_per_group, head_dim):
    """Parent conv channels read by a compact xBC activation: the active x channels, then B and C whole."""
    conv_dim = weight.shape[0]
    if num_heads is None and num_groups is None and heads_per_group is None and head_dim is None:
        if x_channels != conv_dim:
            raise ValueError(f"x has {x_channels} channels but weight has {conv_dim} (pass the Mamba slice)")
        return None
    if num_heads is None or num_groups is None:
        raise ValueError("an elastic causal_conv1d needs num_heads and num_groups (the parent's H and G)")
    if num_heads % num_groups:
        raise ValueError(f"num_heads={num_heads} is not divisible by num_groups={num_groups}")
    if head_dim is None:
        raise ValueError("an elastic causal_conv1d needs head_dim (the active head channels p)")
    k = num_heads // num_groups if heads_per_group is None else heads_per_group
    # Solve the parent's P and N from conv_dim = H*P + 2*G*N and x_channels = G*k*p + 2*G*N.
    bc = x_channels - num_groups * k * head_dim
    if bc <= 0 or bc % (2 * num_groups) or (conv_dim - bc) % num_heads:
        raise ValueError(
            f"x has {x_channels} channels, which is not G*k*p + 2*G*N for G={num_groups}, k={k}, p={head_dim} "
            f"against a parent conv of {conv_dim} channels and H={num_heads}"
        )
    parent_p = (conv_dim - bc) // num_heads
    _check_head_slice("heads_per_group", k, num_heads // num_groups, "head_dim", head_dim, parent_p)
    heads = active_head_index(num_heads, num_groups, k, device=weight.device)
    x_index = (heads[:, None] * parent_p + torch.arange(head_dim, device=weight.device)[None, :]).reshape(-1)
    bc_index = torch.arange(num_heads * parent_p, conv_dim, device=weight.device)
    return torch.cat([x_index, bc_index])


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str | None = "silu",
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
    num_heads: int | None = None,
    num_groups: int | None = None,
    heads_per_group: int | None = None,
    head_dim: int | None = None,
):
    """Causal depthwise conv1d over channel-last activations, optionally at a Mamba elastic slice.

    * ``x`` (b, l, c): compact activations, channel-last (the layout the in_proj GEMM produces).
    * ``weight`` (C, w) parent depthwise kernels (w = 2..4), ``bias`` (C,) parent.
    * Dense call (no slice arguments): ``c == C``.
    * Mamba slice: the parent channels are ``[x: H*P | B: G*N | C: G*N]``; ``num_heads=H``,
      ``num_groups=G``, ``heads_per_group=k``, ``head_dim=p`` select the compact channels
      ``[x: G*k*p | B | C]`` (B and C whole), so ``c = G*k*p + 2*G*N``.
    * ``initial_states`` (b, c, w-1): the last w-1 inputs before this call (zeros when omitted).
    * ``activation``: ``"silu"`` or ``None``.

    Returns ``y`` (b, l, c) in x's dtype, and the final states (b, c, w-1) when
    ``return_final_states`` (the last w-1 inputs, for decoding).
    """
    if x.dim() != 3 or weight.dim() != 2:
        raise ValueError(f"causal_conv1d expects x (b,l,c) and weight (C,w); got {tuple(x.shape)}, {tuple(weight.shape)}")
    if activation not in (None, "silu"):
        raise ValueError(f"activation={activation!r} must be 'silu' or None")
    b, l, c = x.shape
    width = weight.shape[1]
    channels = _conv_channel_index(weight, c, num_heads, num_groups, heads_per_group, head_dim)
    w = weight if channels is None else weight[channels]
    bias_active = bias if (bias is None or channels is None) else bias[channels]
    history = x.new_zeros((b, c, width - 1)) if initial_states is None else initial_states
    if history.shape != (b, c, width - 1):
        raise ValueError(f"initial_states has shape {tuple(history.shape)}, expected {(b, c, width - 1)}")
    padded = torch.cat([history.to(x.dtype), x.transpose(1, 2)], dim=-1)  # (b, c, w-1+l)
    if l == 0:  # F.conv1d rejects an input shorter than the kernel
        y = padded.new_zeros((b, c, 0), dtype=torch.float32)
    else:
        y = F.conv1d(padded.float(), w.float()[:, None, :], None if bias_active is None else bias_active.float(), groups=c)
    if activation == "silu":
        y = F.silu(y)
    y = y.transpose(1, 2).to(x.dtype)
    if return_final_states:
        return y, padded[:, :, padded.shape[-1] - (width - 1) :]
    return y


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
) -> torch.Tensor:
    """One decode token of :func:`causal_conv1d`; updates the parent-layout ``conv_state`` in place.

    * ``x`` (b, c) compact (same channel slice as :func:`causal_conv1d`).
    * ``conv_state`` (slots, C, w-1) parent channels: the last w-1 inputs of each cached sequence,
      oldest first. Only the active channels of the chosen slots are written (shifted by one, the
      new input appended).
    * ``state_indices`` (b,) int picks the slot of each batch row (default: row i -> slot i).

    Returns ``y`` (b, c) in x's dtype.
    """
    if x.dim() != 2 or conv_state.dim() != 3 or weight.dim() != 2:
        raise ValueError("causal_conv1d_update expects x (b,c), conv_state (slots,C,w-1), weight (C,w)")
    if activation not in (None, "silu"):
        raise ValueError(f"activation={activation!r} must be 'silu' or None")
    b, c = x.shape
    width = weight.shape[1]
    if conv_state.shape[1:] != (weight.shape[0], width - 1):
        raise ValueError(f"conv_state {tuple(conv_state.shape)} must be (slots, {weight.shape[0]}, {width - 1})")
    channels = _conv_channel_index(weight, c, num_heads, num_groups, heads_per_group, head_dim)
    if channels is None:
        channels = torch.arange(c, device=x.device)
    slots = torch.arange(b, device=x.device) if state_indices is None else state_indices.long()
    if slots.shape != (b,) or (b and (slots.min() < 0 or slots.max() >= conv_state.shape[0])):
        raise ValueError(f"state_indices must be (b={b},) slots in [0, {conv_state.shape[0]})")
    history = conv_state[slots[:, None], channels[None, :]]  # (b, c, w-1) copy of the active slice
    window = torch.cat([history.float(), x.float()[:, :, None]], dim=-1)  # (b, c, w)
    y = (window * weight[channels].float()).sum(-1)
    if bias is not None:
        y = y + bias[channels].float()
    if activation == "silu":
        y = F.silu(y)
    conv_state[slots[:, None], channels[None, :]] = torch.cat([history[:, :, 1:], x[:, :, None].to(conv_state.dtype)], -1)
    return y.to(x.dtype)


def gated_rmsnorm(
    y: torch.Tensor,
    z: torch.Tensor | None,
    weight: torch.Tensor,
    *,
    eps: float,
    group_size: int,
    norm_before_gate: bool = False,
    heads_per_group: int | None = None,
    head_dim: int | None = None,
    num_heads: int | None = None,
) -> torch.Tensor:
    """Mamba-2's gated group RMSNorm at an elastic slice.

    * ``y``, ``z`` (..., G*k*p): compact activations (heads group-major, channels inside heads).
    * ``weight`` (H*P,) parent; ``group_size`` the parent's group size ``(H/G)*P`` (so G =
      H*P / group_size); at a slice every group keeps its count and shrinks to ``k*p`` values.
    * ``num_heads`` (H) is needed only at a slice, to locate the active channels in ``weight``.
    * ``norm_before_gate=False`` (Nemotron-H): ``out = rmsnorm_groups(y * silu(z)) * w``;
      ``True``: ``out = rmsnorm_groups(y) * w * silu(z)``.

    Computed in fp32; returns (..., G*k*p) in y's dtype.
    """
    parent_width = weight.shape[0]
    if group_size < 1 or parent_width % group_size:
        raise ValueError(f"group_size={group_size} does not divide the weight's {parent_width} channels")
    num_groups = parent_width // group_size
    if heads_per_group is None and head_dim is None:
        w, active_group = weight, group_size
    else:
        if num_heads is None or num_heads % num_groups or parent_width % num_heads:
            raise ValueError(f"num_heads={num_heads} must be given and divisible by the {num_groups} norm groups")
        parent_per_group, parent_p = num_heads // num_groups, parent_width // num_heads
        k = parent_per_group if heads_per_group is None else heads_per_group
        p = parent_p if head_dim is None else head_dim
        _check_head_slice("heads_per_group", k, parent_per_group, "head_dim", p, parent_p)
        w = weight.view(num_groups, parent_per_group, parent_p)[:, :k, :p].reshape(-1)
        active_group = k * p
    if y.shape[-1] != w.shape[0] or (z is not None and z.shape != y.shape):
        raise ValueError(f"y {tuple(y.shape)} / z must have {w.shape[0]} channels for this slice")
    out = y.float()
    if z is not None and not norm_before_gate:
        out = out * F.silu(z.float())
    grouped = out.view(*out.shape[:-1], num_groups, active_group)
    grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + eps)
    out = grouped.view(out.shape) * w.float()
    if z is not None and norm_before_gate:
        out = out * F.silu(z.float())
    return out.to(y.dtype)
