"""Chunked SSD scan (Mamba-2 prefill / training) at an elastic width: ``ssd_scan``.

Order: launchers, the registered op ``star_elastic::ssd_scan`` (fake impl, autograd), the public
wrapper. Kernels: ``csrc/ssm/ssd_scan.cu`` (cuda, plain CUDA C++: chunk cumsum, C.B^T once per
(chunk, group), then one kernel for the chunk states fused with the state passing (each chunk's
own state stays in registers; only the states entering the chunks go through global memory,
handed from block to block by flags) and the chunk scan, whose blocks start on a chunk as soon as
its entering state is published; the matmuls on tensor cores (mma.sync, fp32 accumulation: fp16/bf16
operands as they are, fp32 ones as 3xTF32, which keeps fp32 accuracy); entering states stored fp32
or, as an option, in x's 16-bit dtype),
``star_elastic_kernels/triton/ssd_scan.py`` (triton); the specification is
``star_elastic_kernels.reference.ssm.ssd_scan`` (torch, the plain sequential recurrence).

The cuda backend's private op ``star_elastic::_ssd_scan`` also has a CPU impl: it runs the CUDA
kernels' own per-thread code over their grids on the host (block by block, barrier phase by phase,
thread by thread). That lets the tests check the kernels' indexing and arithmetic without a GPU; it
does not exercise the launch, the scheduling or the timing, and it is not a CPU fast path (the
public op runs the torch reference on CPU tensors).

Backward: the triton backend has its own chunked Triton backward
(``star_elastic_kernels/triton/ssd_scan_bwd.py``: the forward's entering states recomputed, a
reverse state-gradient pass, then per-chunk kernels for the channel-local, the B/C and the
dt/A gradients); the cuda backend uses the same Triton backward (it needs only the saved
inputs). The torch backend differentiates the reference recurrence with PyTorch autograd,
recomputed in the backward pass: exact but sequential in the sequence length, and it keeps one
state per token alive, so it is for tests and small shapes.
"""

from __future__ import annotations

import torch

from star_elastic_kernels import _backends
from star_elastic_kernels.reference import ssm as reference
from star_elastic_kernels.ssm import _checks, _device_checks
from star_elastic_kernels.ssm._chunks import chunk_tables, packed_bounds

# auto prefers Triton until a GPU has timed both: the CUDA forward (mma.sync, C.B^T once per
# group) compiles and is statically checked but has never run on a GPU.
SPEC = _backends.register(_backends.OpSpec("ssd_scan", backends=("triton", "cuda", "torch"),
                                            cuda_ops=("_ssd_scan",),
                                            supports=_checks.kernels_skip_float64))

_GRAD_INPUTS = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")


def _triton():
    from star_elastic_kernels.triton import ssd_scan as kernels

    return kernels


def _triton_bwd():
    from star_elastic_kernels.triton import ssd_scan_bwd as kernels

    return kernels


def _packed(cu_seqlens: torch.Tensor | None, seqlen: int) -> torch.Tensor | None:
    """The kernels' boundaries: ``cu_seqlens`` made safe on the device (no host read)."""
    return None if cu_seqlens is None else packed_bounds(cu_seqlens, seqlen)


CUDA_MAX_CHUNK = 256  # the CUDA kernels' longest chunk (kScanMaxChunk in csrc/ssm/ssd_scan.h)
STATE_TILE = 64  # the side of the CUDA chunk state's tiles (kScanStateTile)


def workspace_floats(chunks: int, heads: int, groups: int, head_dim: int, state_size: int,
                     chunk: int) -> int:
    """fp32 scratch of the CUDA forward, as ``ssd_scan_workspace_floats`` in csrc/ssm/ssd_scan.h
    (the op checks it): dt and cumsum per (chunk, head, token), the entering state per (chunk,
    head), then, 16-byte aligned, C.B^T per (chunk, group) in rows of an even pitch, then the
    state chain's words (a ticket counter, a stall word and a flag per (chunk, head, 64 x 64 state
    tile))."""
    pitch = (chunk + 1) // 2 * 2
    offset = (chunks * heads * (2 * chunk + head_dim * state_size) + 3) // 4 * 4
    tiles = -(-head_dim // STATE_TILE) * -(-state_size // STATE_TILE)
    return offset + chunks * groups * pitch * pitch + 2 + chunks * heads * tiles


def _cuda(x, dt, A, B, C, D, z, dt_bias, initial_states, bounds, chunk_size, dt_softplus,
          dt_min, dt_max, heads_per_group, states_dtype=torch.float32):
    """Run the CUDA SSD forward (``star_elastic::_ssd_scan``); inputs already checked by the public
    wrapper. On CPU tensors the op's CPU impl runs the kernels' per-thread code on the host (for
    tests). Chunks longer than ``CUDA_MAX_CHUNK`` are split (the result does not depend on it).
    ``states_dtype``: storage of the states entering the chunks, float32 or x's 16-bit dtype.
    Returns (y in x's dtype, final states fp32)."""
    # the kernels read fp32/fp16/bf16 parameters; float64 ones (per head, or states) go fp32
    narrow = lambda t: t.float() if t is not None and t.dtype == torch.float64 else t  # noqa: E731
    dt, A, D, dt_bias, initial_states = (narrow(t) for t in (dt, A, D, dt_bias, initial_states))
    b, l, heads, p = x.shape
    state_size = B.shape[3]
    chunk = min(int(chunk_size), CUDA_MAX_CHUNK)
    chunk_table, seq_table = chunk_tables(b, l, bounds, chunk, x.device)
    chunks, seqs = chunk_table.shape[1], seq_table.shape[1]
    y = torch.empty((b, l, heads, p), dtype=x.dtype, device=x.device)
    final = torch.empty((seqs, heads, p, state_size), dtype=torch.float32, device=x.device)
    workspace = torch.empty(workspace_floats(chunks, heads, B.shape[2], p, state_size, chunk),
                            dtype=torch.float32, device=x.device)
    torch.ops.star_elastic._ssd_scan(x, dt, A, B, C, D, z, dt_bias, initial_states, chunk_table,
                                     seq_table, y, final, workspace, _device_checks.word_for(x),
                                     chunk, heads_per_group,
                                     bool(dt_softplus), float(dt_min), float(dt_max), states_dtype)
    return y, final


def _reference(x, dt, A, B, C, D, z, dt_bias, initial_states, cu_seqlens, chunk_size, dt_softplus,
               dt_min, dt_max, heads_per_group, head_dim):
    return reference.ssd_scan(
        x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
        dt_limit=(dt_min, dt_max), initial_states=initial_states, cu_seqlens=cu_seqlens,
        return_final_states=True, heads_per_group=heads_per_group, head_dim=head_dim)


# --------------------------------------------------------------------------------------------------
# Registered op. Final states are always returned (they cost one state per sequence); the public
# wrapper drops them unless asked.


@torch.library.custom_op("star_elastic::ssd_scan", mutates_args=())
def _ssd_scan_op(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, z: torch.Tensor | None, dt_bias: torch.Tensor | None,
    initial_states: torch.Tensor | None, cu_seqlens: torch.Tensor | None, chunk_size: int,
    dt_softplus: bool, dt_min: float, dt_max: float, heads_per_group: int, head_dim: int,
    states_dtype: torch.dtype, backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "cuda":
        return _cuda(x, dt, A, B, C, D, z, dt_bias, initial_states, _packed(cu_seqlens, x.shape[1]),
                     chunk_size, dt_softplus, dt_min, dt_max, heads_per_group, states_dtype)
    if backend == "triton":
        return _triton().ssd_scan_fwd(x, dt, A, B, C, D, z, dt_bias, initial_states,
                                      _packed(cu_seqlens, x.shape[1]), chunk_size, dt_softplus,
                                      (dt_min, dt_max), heads_per_group, head_dim, states_dtype)
    y, final = _reference(x, dt, A, B, C, D, z, dt_bias, initial_states, cu_seqlens, chunk_size,
                          dt_softplus, dt_min, dt_max, heads_per_group, head_dim)
    if initial_states is not None and final.untyped_storage().data_ptr() == \
            initial_states.untyped_storage().data_ptr():
        final = final.clone()  # an empty sequence's final state is its (fp32) initial state
    return y.contiguous(), final.contiguous()


@_ssd_scan_op.register_fake
def _(x, dt, A, B, C, D, z, dt_bias, initial_states, cu_seqlens, chunk_size, dt_softplus, dt_min,
      dt_max, heads_per_group, head_dim, states_dtype, backend):
    b, l, heads, p = x.shape
    seqs = b if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return (x.new_empty((b, l, heads, p)),
            x.new_empty((seqs, heads, p, B.shape[-1]),
                        dtype=torch.float64 if x.dtype == torch.float64 else torch.float32))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:10])
    ctx.options = inputs[10:16]
    ctx.backend = inputs[17]


def _backward(ctx, grad_y, grad_final):
    saved = ctx.saved_tensors
    wanted = [i for i in range(len(_GRAD_INPUTS)) if ctx.needs_input_grad[i]
              and saved[i] is not None]
    grads: list[torch.Tensor | None] = [None] * 18
    if not wanted:
        return tuple(grads)
    if ctx.backend in ("triton", "cuda"):  # the CUDA forward shares the Triton backward
        chunk_size, dt_softplus, dt_min, dt_max, heads_per_group, _ = ctx.options
        x, dt, A, B, C, D, z, dt_bias, initial_states, cu_seqlens = saved
        found = _triton_bwd().ssd_scan_bwd(
            grad_y, grad_final, x, dt, A, B, C, D, z, dt_bias, initial_states,
            _packed(cu_seqlens, x.shape[1]), chunk_size, dt_softplus, (dt_min, dt_max),
            heads_per_group)
        for i in wanted:
            grads[i] = found[i].to(saved[i].dtype)
        return tuple(grads)
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(i in wanted) if t is not None else None
                  for i, t in enumerate(saved)]
        y, final = _reference(*leaves, *ctx.options)
        outputs, seeds = [y], [grad_y]
        if grad_final is not None:
            outputs.append(final)
            seeds.append(grad_final)
        found = torch.autograd.grad(outputs, [leaves[i] for i in wanted], seeds, allow_unused=True)
    for i, g in zip(wanted, found):
        grads[i] = torch.zeros_like(saved[i]) if g is None else g
    return tuple(grads)


_ssd_scan_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------------
# Public wrapper: every check happens here, before anything runs.


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
    chunk_states_dtype: torch.dtype | None = None,
    backend: str | None = None,
):
    """Mamba-2 SSD scan over the first ``k`` heads of every group and ``p`` channels of every head.

    Parent sizes: ``H`` heads in ``G`` groups (group-major: head h is in group h // (H/G)), head
    dim ``P``, state size ``N``. Active: ``H' = G*k`` heads of ``p`` channels, in compact order
    (group 0's first k heads, then group 1's, ...).

    Args:
        x: (b, l, H', p) float32/float16/bfloat16 compact inputs, unit innermost stride (other
            strides free, e.g. a view into a packed projection).
        dt: (b, l, H') raw time steps (any float dtype, any strides).
        A: (H,) parent decay rates (negative; ``-exp(A_log)``), read at the active heads.
        B, C: (b, l, G, N) in x's dtype, unit innermost stride; never sliced. Head h' uses group
            h' // k.
        chunk_size: tokens per chunk of the kernels (>= 1; the kernels split chunks longer than
            256); does not change the result beyond rounding.
        D: optional (H,) or (H, P) parent skip weights: ``y += D * x``.
        z: optional (b, l, H', p) gate in x's dtype, unit innermost stride: ``y *= silu(z)``.
        dt_bias: optional (H,) parent bias added to dt before the softplus.
        dt_softplus: apply softplus to ``dt + dt_bias``.
        dt_limit: (min, max) clamp of the processed dt.
        initial_states: optional (b, H', p, N) (or (S, H', p, N) with cu_seqlens) compact states
            entering the sequence(s), any float dtype.
        cu_seqlens: optional (S+1,) int32/int64 boundaries of S packed sequences (b must be 1),
            starting at 0, non-decreasing, ending at l; no state flows across a boundary. Never
            read on the host for GPU tensors: invalid values are clamped and recorded on the
            device (see :func:`star_elastic_kernels.ssm.check_device_errors`); on CPU tensors they
            raise here.
        return_final_states: also return the final states, (b, H', p, N) or (S, H', p, N), fp32.
        heads_per_group: k in [1, H/G] (default H/G, the full model).
        head_dim: p (default x.shape[-1]); checked against P when D is (H, P).
        chunk_states_dtype: storage of the kernels' per-chunk states, float32 (default) or
            float16/bfloat16 (half the scan's largest memory traffic, at 16-bit rounding of the
            states between chunks). The triton backend takes either 16-bit dtype; the cuda
            backend (which stores only the states entering the chunks) takes x's own 16-bit
            dtype and raises ``ValueError`` for another; torch keeps fp32. Final states are fp32
            either way.
        backend: ``"auto" | "cuda" | "triton" | "torch"`` (see
            :func:`star_elastic_kernels.use_backend`).

    Returns:
        ``y`` (b, l, H', p) in x's dtype, contiguous; with ``return_final_states`` the tuple
        ``(y, final_states)``.

    Differentiable in x, dt, A, B, C, D, z, dt_bias and initial_states, and through both outputs
    (see the module docstring for how each backend computes the backward).
    """
    _checks.tensor(x, "x", 4, unit_inner_stride=True)
    device = x.device
    _checks.tensor(dt, "dt", 3, device)
    _checks.tensor(A, "A", 1, device)
    _checks.tensor(B, "B", 4, device, dtypes=(x.dtype,), unit_inner_stride=True)
    _checks.tensor(C, "C", 4, device, dtypes=(x.dtype,), unit_inner_stride=True)
    _checks.optional(D, "D", (1, 2), device)
    _checks.optional(z, "z", 4, device, dtypes=(x.dtype,), unit_inner_stride=True)
    _checks.optional(dt_bias, "dt_bias", 1, device)
    _checks.optional(initial_states, "initial_states", 4, device)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    b, l, heads, channels = x.shape
    num_heads, num_groups = A.shape[0], B.shape[2]
    parent_p = D.shape[1] if D is not None and D.dim() == 2 else None
    k, p = _checks.head_slice(num_heads, num_groups, heads_per_group, head_dim, heads, channels,
                              parent_p)
    _checks.shape(dt, "dt", (b, l, heads))
    _checks.shape(B, "B", (b, l, num_groups, B.shape[3]))
    _checks.shape(C, "C", tuple(B.shape), " (B's shape)")
    _checks.shape(z, "z", tuple(x.shape), " (x's shape)")
    if D is not None and D.shape[0] != num_heads:
        raise ValueError(f"D has shape {tuple(D.shape)}, expected ({num_heads},) or "
                         f"({num_heads}, P)")
    _checks.shape(dt_bias, "dt_bias", (num_heads,))
    low, high = _checks.dt_limit(dt_limit)
    seqs = b
    if cu_seqlens is not None:
        seqs = _checks.seq_bounds(cu_seqlens, b, l, device)
    _checks.shape(initial_states, "initial_states", (seqs, heads, p, B.shape[3]))
    if chunk_states_dtype is None:
        chunk_states_dtype = torch.float32
    if chunk_states_dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"chunk_states_dtype must be torch.float32, torch.float16 or "
                        f"torch.bfloat16, got {chunk_states_dtype!r}")
    chosen = _backends.select_backend(SPEC, device, x.dtype, backend)
    if chosen == "cuda" and chunk_states_dtype not in (torch.float32, x.dtype):
        raise ValueError(f"chunk_states_dtype={chunk_states_dtype} with x of {x.dtype}: the cuda "
                         f"backend stores the chunk states in float32 or in x's 16-bit dtype")
    y, final = _ssd_scan_op(x, dt, A, B, C, D, z, dt_bias, initial_states, cu_seqlens, chunk_size,
                            bool(dt_softplus), low, high, k, p, chunk_states_dtype, chosen)
    return (y, final) if return_final_states else y
