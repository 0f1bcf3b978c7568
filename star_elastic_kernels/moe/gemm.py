"""Grouped GEMM over experts at elastic widths: ``grouped_gemm`` (and its weight gradient).

Order: the CUTLASS launcher, the registered ops ``star_elastic::grouped_gemm`` and
``star_elastic::grouped_gemm_wgrad`` with their fake impls and autograd, the public wrapper.
Kernels: ``csrc/moe/grouped_gemm.cu`` (cuda: the CUTLASS sm_90a pointer-array grouped GEMM,
forward with ``trans_b=True``), ``star_elastic_kernels/triton/moe_gemm.py`` (triton; also the cuda
backend's backward); the specification is ``star_elastic_kernels.reference.moe.grouped_gemm``.
"""

from __future__ import annotations

import functools

import torch

from star_elastic_kernels import _backends, _extension
from star_elastic_kernels.moe import _checks, _errors, _fallback
from star_elastic_kernels.reference import moe as reference


def _grouped_gemm_supports(backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
    if backend == "cuda" and dtype != torch.bfloat16:
        return f"the CUTLASS grouped GEMM is bfloat16-only, got {dtype}"
    return _checks.no_fp64_in_triton(backend, device, dtype)


CUDA_OPS = ("_moe_grouped_gemm", "_moe_grouped_gemm_workspace_size")

# csrc/moe/grouped_gemm.h GemmSchedule and csrc/moe/epilogue.h GemmEpilogue
SCHEDULE_COOPERATIVE, SCHEDULE_PINGPONG, SCHEDULE_SWAP_AB = 0, 1, 2
EPILOGUE_IDENTITY, EPILOGUE_RELU2, EPILOGUE_SILU_C_TIMES_ACC = 0, 1, 2
# Mean rows per group at which a schedule stops paying: swap-AB puts the tokens on a 32-wide N
# tile (decode: a few rows per expert would fill 1-3 rows of a 64/128-row M tile), pingpong's
# 64-row tiles waste at most half a tile per group up to ~128 rows, then 128x128 cooperative.
SWAP_AB_MAX_ROWS, PINGPONG_MAX_ROWS = 32, 128


def schedule_for(rows: int, groups: int) -> int:
    """The CUTLASS schedule for ``rows`` rows over ``groups`` groups, from shapes only (no host
    read): by the mean rows per group that receives rows."""
    per_group = rows / max(1, min(groups, rows))
    if per_group <= SWAP_AB_MAX_ROWS:
        return SCHEDULE_SWAP_AB
    return SCHEDULE_PINGPONG if per_group <= PINGPONG_MAX_ROWS else SCHEDULE_COOPERATIVE


SPEC = _backends.register(_backends.OpSpec(
    "grouped_gemm", backends=("cuda", "triton", "torch"), cuda_ops=CUDA_OPS,
    supports=_grouped_gemm_supports))


@functools.cache
def _cutlass_workspace_bytes(num_groups: int) -> int:
    # a bound for any GPU (up to 256 SMs), computed without a device: usable while tracing
    return int(torch.ops.star_elastic._moe_grouped_gemm_workspace_size(num_groups))


def _cutlass_unsupported(a: torch.Tensor, b: torch.Tensor, trans_b: bool) -> str | None:
    """Why the CUTLASS kernel cannot run this call (TMA wants 16-byte aligned rows), or None."""
    if not trans_b:
        return "the CUTLASS grouped GEMM implements trans_b=True only"
    if a.dtype != torch.bfloat16:
        return f"the CUTLASS grouped GEMM is bfloat16-only, got {a.dtype}"
    if a.stride(1) != 1 or b.stride(2) != 1:
        return "the CUTLASS grouped GEMM needs unit inner strides (a.stride(1), b.stride(2))"
    # TMA reads and writes rows at 16-byte aligned strides; K itself is free (the loads zero-fill
    # past it). N is the row stride of the (M, N) output. Storage offsets, not data_ptr (which a
    # traced fake tensor lacks): allocations are aligned.
    sizes = (a.stride(0), b.stride(0), b.stride(1), b.shape[1], a.storage_offset(),
             b.storage_offset())
    if any(v % 8 for v in sizes):
        return ("the CUTLASS grouped GEMM needs N and the row strides of a and b to be multiples "
                "of 8 bf16 elements (16 bytes) and 16-byte aligned data")
    return None


def _grouped_gemm_cuda(a: torch.Tensor, b: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Backend "cuda" of grouped_gemm (bf16, trans_b): a table kernel builds the per-group
    arguments from the ends on the device, then the CUTLASS kernel of the schedule the mean rows
    per group picks (:func:`schedule_for`). On CPU tensors (tests only) the private op runs the
    table kernel's per-thread code and a reference product."""
    out = torch.empty(a.shape[0], b.shape[1], dtype=a.dtype, device=a.device)
    if a.shape[0] == 0 or b.shape[1] == 0:
        return out
    if b.shape[2] == 0:
        return out.zero_()
    workspace = torch.empty(_cutlass_workspace_bytes(b.shape[0]), dtype=torch.uint8, device=a.device)
    torch.ops.star_elastic._moe_grouped_gemm(a, b, ends.to(torch.int32).contiguous(), out, workspace,
                                             _errors.device_flag(a), schedule_for(a.shape[0], b.shape[0]))
    return out


def _checked_ends(ends: torch.Tensor, rows: int) -> torch.Tensor:
    """The Triton path's device-side check of the offsets (no host read): bad ends set the
    BAD_GROUP_ENDS flag and are clamped into [0, rows] and made non-decreasing, so the kernels
    never read outside ``a``."""
    ends = ends.to(torch.int32)
    if ends.numel() == 0:
        return ends
    bad = (ends < 0) | (ends > rows)
    bad[1:] |= ends[1:] < ends[:-1]
    bad[-1:] |= ends[-1:] != rows
    _errors.device_flag(ends).bitwise_or_(bad.any().to(torch.int32) * _errors.BAD_GROUP_ENDS)
    return torch.cummax(ends.clamp(0, rows), 0).values


if _extension.has_op("_moe_grouped_gemm"):
    @torch.library.register_fake("star_elastic::_moe_grouped_gemm")
    def _(a, b, group_ends, out, workspace, error_flag, schedule):
        _checks.fake_expect(a.dim() == 2 and b.dim() == 3 and out.shape == (a.shape[0], b.shape[1])
                            and a.shape[1] == b.shape[2], "_moe_grouped_gemm",
                            "a (M, K), b (G, N, K), out (M, N)")
        _checks.fake_expect(group_ends.shape == (b.shape[0],) and group_ends.dtype == torch.int32,
                            "_moe_grouped_gemm", "group_ends int32 (G,)")
        _checks.fake_expect(workspace.numel() >= _cutlass_workspace_bytes(b.shape[0]),
                            "_moe_grouped_gemm", "workspace too small")


def _triton_gemm():
    from star_elastic_kernels.triton import moe_gemm

    return moe_gemm


@torch.library.custom_op("star_elastic::grouped_gemm", mutates_args=())
def _grouped_gemm_op(a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor, trans_b: bool,
                     backend: str) -> torch.Tensor:
    if backend == "cuda":
        # The public wrapper only sends CUTLASS-shaped forward calls here; the backward's
        # trans_b=False products (and any other shape) run the Triton kernels.
        if _cutlass_unsupported(a, b, trans_b) is None:
            return _grouped_gemm_cuda(a, b, offsets)
        backend = "triton"
    if backend == "triton":
        return _triton_gemm().grouped_gemm(a, b, _checked_ends(offsets, a.shape[0]), trans_b)
    return reference.grouped_gemm(a, b, offsets, trans_b)


@_grouped_gemm_op.register_fake
def _(a, b, offsets, trans_b, backend):
    return a.new_empty(a.shape[0], b.shape[1] if trans_b else b.shape[2])


@torch.library.custom_op("star_elastic::grouped_gemm_wgrad", mutates_args=())
def _grouped_wgrad_op(x: torch.Tensor, y: torch.Tensor, offsets: torch.Tensor, num_groups: int,
                      backend: str) -> torch.Tensor:
    """(G, X, Y): per group g, x[rows of g]^T @ y[rows of g] (the weight gradient); the cuda
    backend uses the Triton kernel here."""
    if backend in ("triton", "cuda"):
        return _triton_gemm().grouped_wgrad(x, y, _checked_ends(offsets, x.shape[0]), num_groups)
    out = x.new_zeros(num_groups, x.shape[1], y.shape[1])
    start = 0
    for group, end in enumerate(offsets.tolist()):
        out[group] = x[start:end].T @ y[start:end]
        start = end
    return out


@_grouped_wgrad_op.register_fake
def _(x, y, offsets, num_groups, backend):
    return x.new_empty(num_groups, x.shape[1], y.shape[1])


def _gemm_setup(ctx, inputs, output):
    a, b, offsets, trans_b, backend = inputs
    ctx.save_for_backward(a, b, offsets)
    ctx.trans_b, ctx.backend = trans_b, backend


def _gemm_backward(ctx, grad):
    a, b, offsets = ctx.saved_tensors
    grad = grad.contiguous()
    grad_a = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_a = _grouped_gemm_op(grad, b, offsets, not ctx.trans_b, ctx.backend)
    if ctx.needs_input_grad[1]:
        if ctx.trans_b:
            grad_b = _grouped_wgrad_op(grad, a, offsets, b.shape[0], ctx.backend)
        else:
            grad_b = _grouped_wgrad_op(a, grad, offsets, b.shape[0], ctx.backend)
    return grad_a, grad_b, None, None, None


_grouped_gemm_op.register_autograd(_gemm_backward, setup_context=_gemm_setup)


def grouped_gemm(a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor, *, trans_b: bool = True,
                 validate: bool = False, backend: str | None = None) -> torch.Tensor:
    """One matmul per expert over consecutive row groups (differentiable in ``a`` and ``b``).

    Args:
        a: (M, K) rows sorted by group, float32/float16/bfloat16 (float64 on the torch backend).
        b: (G, N, K) when ``trans_b`` (group g's rows times ``b[g].T``), else (G, K, N); same dtype
            and device as a. Read through its strides: a prefix view ``w[:, :n, :k]`` of a parent
            weight is legal and only its own bytes are read (its last two strides are free).
        offsets: (G,) int32/int64 cumulative end rows (the ``torch._grouped_mm`` convention):
            group g owns rows ``offsets[g-1]:offsets[g]``; non-decreasing, ``offsets[-1] == M``.
            An empty group costs nothing.
        trans_b: layout of b, see above.
        validate: on device tensors, also check the offsets on the host before launching (one
            sync). Without it the cuda and triton kernels check them on the device: bad ends are
            clamped into [0, M] (never read out of bounds) and set a flag that
            :func:`star_elastic_kernels.moe.raise_device_errors` reports. CPU tensors are always
            checked on the host.
        backend: ``"auto" | "cuda" | "triton" | "torch"`` (see :func:`moe_route`). ``"cuda"`` is
            the CUTLASS sm_90a pointer-array grouped GEMM (schedule by mean rows per group:
            swap-AB, pingpong 64x128 or cooperative 128x128): bfloat16, ``trans_b=True``, unit
            inner strides, N and row strides multiples of 8 (auto runs Triton otherwise and warns
            once, see ``moe/_fallback.py``; an explicit request raises). Its backward runs the
            Triton kernels.

    Returns:
        (M, N) in a's dtype (fp32 accumulation).

    Raises:
        TypeError / ValueError: bad shapes, dtypes or devices; bad offsets (on a device: with
            ``validate``).
        BackendUnavailableError: an explicitly requested backend cannot run this call.
    """
    _checks.tensor(a, "a", 2, _checks.FLOAT_DTYPES)
    _checks.tensor(b, "b", 3, _checks.FLOAT_DTYPES)
    _checks.tensor(offsets, "offsets", 1, _checks.ID_DTYPES)
    if b.dtype != a.dtype:
        raise TypeError(f"b must have a's dtype {a.dtype}, got {b.dtype}")
    _checks.same_device(b, "b", a, "a")
    _checks.same_device(offsets, "offsets", a, "a")
    _checks.boolean(trans_b, "trans_b")
    _checks.boolean(validate, "validate")
    k = b.shape[2] if trans_b else b.shape[1]
    if a.shape[1] != k:
        raise ValueError(f"a has K={a.shape[1]} columns but b {tuple(b.shape)} (trans_b={trans_b}) "
                         f"has K={k}")
    if offsets.shape[0] != b.shape[0]:
        raise ValueError(f"offsets must have one entry per group ({b.shape[0]}), got {offsets.shape[0]}")
    if offsets.numel() and _checks.on_host_now(offsets, validate):
        ends = offsets.tolist()
        if any(e < s for s, e in zip([0] + ends[:-1], ends)) or ends[-1] != a.shape[0]:
            raise ValueError(f"offsets must be non-decreasing cumulative end rows ending at "
                             f"M={a.shape[0]}, got {ends[:8]}{'...' if len(ends) > 8 else ''}")
    if offsets.numel() == 0 and a.shape[0] != 0:
        raise ValueError("offsets is empty (no groups) but a has rows")
    chosen = _backends.select_backend(SPEC, a.device, a.dtype, backend)
    if chosen == "cuda":
        reason = _cutlass_unsupported(a, b, trans_b)
        if reason is not None:
            if _backends.requested_backend(backend) == "cuda":
                raise _backends.BackendUnavailableError(
                    f"grouped_gemm: backend 'cuda' is unavailable: {reason}")
            _fallback.fallback("grouped_gemm", reason)
            chosen = _backends.select_backend(SPEC, a.device, a.dtype, "triton")
    return _grouped_gemm_op(a, b, offsets, trans_b, chosen)
