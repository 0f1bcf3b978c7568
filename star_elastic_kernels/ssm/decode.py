"""Decode step of the Mamba-2 recurrence at an elastic width: ``ssd_state_update``.

Order: launchers, the registered op ``star_elastic::ssd_state_update`` (mutates the cache), its
fake impl, the public wrapper. Kernels: ``csrc/ssm/ssd_state_update.cu`` (cuda),
``star_elastic_kernels/triton/ssd_state_update.py`` (triton); the specification is
``star_elastic_kernels.reference.ssm.ssd_state_update`` (torch).
"""

from __future__ import annotations

import torch

from star_elastic_kernels import _backends
from star_elastic_kernels.reference import ssm as reference
from star_elastic_kernels.ssm import _checks, _device_checks

SPEC = _backends.register(_backends.OpSpec(
    "ssd_state_update", backends=("cuda", "triton", "torch"), cuda_ops=("_ssd_state_update",),
    supports=_checks.kernels_skip_float64))


CUDA_MAX_STATE_SIZE = 4096  # B/C of a group sit in the kernel's shared memory (fp32)


def _cuda(state, x, dt, A, B, C, D, z, dt_bias, slots, dt_softplus, dt_min, dt_max,
          heads_per_group):
    """Run the CUDA decode step (``star_elastic::_ssd_state_update``, csrc/ssm/ssd_state_update.cu)
    on checked inputs; slots are handled on the device (see ``_device_checks``). On CPU tensors
    the op's CPU impl runs the kernel's per-thread code on the host (for tests). Returns y."""
    if B.shape[2] > CUDA_MAX_STATE_SIZE:
        raise ValueError(f"the cuda backend of ssd_state_update takes a state size N <= "
                         f"{CUDA_MAX_STATE_SIZE}, got {B.shape[2]}; use backend='triton'")
    # the kernel reads fp32/fp16/bf16 parameters; float64 ones (tiny: per head or per row) go fp32
    narrow = lambda t: t.float() if t is not None and t.dtype == torch.float64 else t  # noqa: E731
    dt, A, D, dt_bias = narrow(dt), narrow(A), narrow(D), narrow(dt_bias)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if y.numel():
        torch.ops.star_elastic._ssd_state_update(state, x, dt, A, B, C, D, z, dt_bias, slots, y,
                                                 _device_checks.word_for(x), heads_per_group,
                                                 dt_softplus, dt_min, dt_max)
    return y


@torch.library.custom_op("star_elastic::ssd_state_update", mutates_args=("state",))
def _ssd_state_update_op(
    state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
    C: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None,
    dt_bias: torch.Tensor | None, state_indices: torch.Tensor | None, dt_softplus: bool,
    dt_min: float, dt_max: float, heads_per_group: int, head_dim: int, backend: str,
) -> torch.Tensor:
    if backend == "cuda":
        return _cuda(state, x, dt, A, B, C, D, z, dt_bias, state_indices, dt_softplus, dt_min,
                     dt_max, heads_per_group)
    if backend == "triton":
        from star_elastic_kernels.triton import ssd_state_update as kernels

        return kernels.ssd_state_update(state, x, dt, A, B, C, D, z, dt_bias, state_indices,
                                        dt_softplus, (dt_min, dt_max), heads_per_group)
    def step(rows, slots):
        pick = (lambda t: t) if rows is None else (lambda t: None if t is None else t[rows])
        return reference.ssd_state_update(
            state, pick(x), pick(dt), A, pick(B), pick(C), D=D, z=pick(z), dt_bias=dt_bias,
            dt_softplus=dt_softplus, dt_limit=(dt_min, dt_max), heads_per_group=heads_per_group,
            head_dim=head_dim, state_indices=slots)

    return _checks.reference_on_used_slots(step, x, state_indices, state.shape[0])


@_ssd_state_update_op.register_fake
def _(state, x, dt, A, B, C, D, z, dt_bias, state_indices, dt_softplus, dt_min, dt_max,
      heads_per_group, head_dim, backend):
    return x.new_empty(x.shape)


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
    check_state_indices: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """One decode token of the Mamba-2 recurrence; updates the parent-layout cache in place.

    With ``H' = G*k`` active heads (the first k of every group) and ``p`` active channels:
    ``h = exp(dt*A) h + dt * x B^T`` on ``state[slot, active heads, :p, :]``, then
    ``y = h C + D*x`` and ``y *= silu(z)``.

    Args:
        state: (slots, H, P, N) parent-layout cache, float32 / bfloat16 / float16, any strides.
            Only ``state[state_indices][:, active heads, :p]`` is read and written; every other
            element (other heads, channels >= p, other slots) stays bit-identical.
        x: (b, H', p) compact token inputs, float32/float16/bfloat16, unit innermost stride.
        dt: (b, H') raw time steps, any float dtype.
        A: (H,) parent decay rates; ``dt_bias`` (H,) parent; ``D`` (H,) or (H, P) parent.
        B, C: (b, G, N) in x's dtype, unit innermost stride.
        z: optional (b, H', p) gate in x's dtype, unit innermost stride.
        dt_softplus, dt_limit: as in :func:`ssd_scan`.
        heads_per_group: k in [1, H/G] (default H/G); head_dim: p in [1, P] (default x.shape[-1]).
        state_indices: optional (b,) int32/int64 cache slot of each row, distinct, in
            [0, slots); a negative slot marks a padding row (skipped: no state read or written,
            output zero). Default row i -> slot i. GPU values are never read on the host: a slot
            >= slots is skipped like padding and recorded on the device (raised by
            :func:`star_elastic_kernels.ssm.check_device_errors`); CPU values are checked here.
        check_state_indices: opt-in host check of GPU ``state_indices`` (range, no repeated slot;
            one sync, which also surfaces errors recorded earlier). Off by default so a decode
            step never stalls and can be captured in a CUDA graph; repeated slots are then the
            caller's promise (which row wins is undefined).
        backend: ``"auto" | "cuda" | "triton" | "torch"``.

    Returns:
        ``y`` (b, H', p) in x's dtype. The new state is computed in fp32; ``y`` uses the fp32 state
        (before rounding to the cache's dtype).
    """
    _checks.tensor(x, "x", 3, unit_inner_stride=True)
    device = x.device
    _checks.tensor(state, "state", 4, device)
    _checks.tensor(dt, "dt", 2, device)
    _checks.tensor(A, "A", 1, device)
    _checks.tensor(B, "B", 3, device, dtypes=(x.dtype,), unit_inner_stride=True)
    _checks.tensor(C, "C", 3, device, dtypes=(x.dtype,), unit_inner_stride=True)
    _checks.optional(D, "D", (1, 2), device)
    _checks.optional(z, "z", 3, device, dtypes=(x.dtype,), unit_inner_stride=True)
    _checks.optional(dt_bias, "dt_bias", 1, device)
    b, heads, channels = x.shape
    num_heads, num_groups, state_size = A.shape[0], B.shape[1], B.shape[2]
    k, p = _checks.head_slice(num_heads, num_groups, heads_per_group, head_dim, heads, channels,
                              state.shape[2])
    if state.shape[1] != num_heads or state.shape[3] != state_size:
        raise ValueError(f"state has shape {tuple(state.shape)}, expected (slots, H={num_heads}, "
                         f"P, N={state_size})")
    if D is not None and (D.shape[0] != num_heads or (D.dim() == 2 and D.shape[1] != state.shape[2])):
        raise ValueError(f"D has shape {tuple(D.shape)}, expected ({num_heads},) or "
                         f"({num_heads}, {state.shape[2]})")
    _checks.shape(dt, "dt", (b, heads))
    _checks.shape(B, "B", (b, num_groups, state_size))
    _checks.shape(C, "C", (b, num_groups, state_size), " (B's shape)")
    _checks.shape(z, "z", tuple(x.shape), " (x's shape)")
    _checks.shape(dt_bias, "dt_bias", (num_heads,))
    low, high = _checks.dt_limit(dt_limit)
    slots = _checks.slot_indices(state_indices, b, state.shape[0], device,
                                 check_state_indices)
    chosen = _backends.select_backend(SPEC, device, x.dtype, backend)
    return _ssd_state_update_op(state, x, dt, A, B, C, D, z, dt_bias, slots, bool(dt_softplus),
                                low, high, k, p, chosen)
