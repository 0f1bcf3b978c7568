"""Elastic MoE ops: routing, token alignment, grouped GEMM over experts, fused expert FFN.

Order of this file: backend launchers, the registered ops (``star_elastic::moe_*`` and
``star_elastic::grouped_gemm*``) with their fake implementations and autograd, then the public
wrappers :func:`moe_route`, :func:`moe_align`, :func:`grouped_gemm` and :func:`moe_ffn`, which check
every argument before anything runs. Kernels: ``star_elastic_kernels/triton/moe_*.py`` (triton),
``csrc/moe/`` (cuda: routing, alignment, the CUTLASS grouped GEMM and moe_ffn's elementwise
steps; the routing, alignment and elementwise ops also have CPU impls that run the kernels'
per-thread code sequentially, for tests without a GPU); the specification:
``star_elastic_kernels/reference/moe.py`` (torch).

Elastic widths follow DESIGN §3: activations are compact, weights keep the parent layout and are
read through strides at the active widths (``w_up[:, :r, :d]``, ``w_down[:, :d, :r]``); masked
experts never receive tokens, and an expert without tokens costs no work and is never read.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from star_elastic_kernels import _backends
from star_elastic_kernels.reference import moe as reference

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_ID_DTYPES = (torch.int32, torch.int64)


def _no_fp64_in_triton(backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
    if backend == "triton" and dtype == torch.float64:
        return "the Triton kernels compute in float32/float16/bfloat16; use backend='torch' for float64"
    return None


def _route_supports(backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
    if backend == "cuda" and dtype == torch.float64:
        return ("the CUDA routing kernel reads float32/float16/bfloat16 logits; use "
                "backend='torch' for float64")
    return _no_fp64_in_triton(backend, device, dtype)


ROUTE_SPEC = _backends.register(_backends.OpSpec(
    "moe_route", backends=("cuda", "triton", "torch"), cuda_ops=("_moe_route",),
    supports=_route_supports, triton_cpu_dtypes=(torch.float32, torch.float16)))
ALIGN_SPEC = _backends.register(_backends.OpSpec(
    "moe_align", backends=("cuda", "triton", "torch"),
    cuda_ops=("_moe_align", "_moe_align_workspace_size"), triton_cpu_dtypes=_ID_DTYPES))
def _grouped_gemm_supports(backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
    if backend == "cuda" and dtype != torch.bfloat16:
        return f"the CUTLASS grouped GEMM is bfloat16-only, got {dtype}"
    return _no_fp64_in_triton(backend, device, dtype)


_GROUPED_GEMM_C_OPS = ("_moe_grouped_gemm", "_moe_grouped_gemm_workspace_size")
GROUPED_GEMM_SPEC = _backends.register(_backends.OpSpec(
    "grouped_gemm", backends=("cuda", "triton", "torch"), cuda_ops=_GROUPED_GEMM_C_OPS,
    supports=_grouped_gemm_supports))
FFN_SPEC = _backends.register(_backends.OpSpec(
    "moe_ffn", backends=("cuda", "triton", "torch"),
    cuda_ops=_GROUPED_GEMM_C_OPS + ("_moe_align", "_moe_align_workspace_size", "_moe_gather_rows",
                                    "_moe_activation", "_moe_combine"),
    supports=_grouped_gemm_supports))


class MoEAlignment(NamedTuple):
    """Result of :func:`moe_align` (all int32, on the ids' device).

    ``sorted_slots`` (T*k,): slot ids ``t*k + j`` grouped by expert, increasing within an expert;
    ``counts`` (E,): slots per expert; ``expert_offsets`` (E+1,): expert e owns
    ``sorted_slots[expert_offsets[e]:expert_offsets[e+1]]``; ``block_offsets`` (E+1,): cumulative
    ``ceil(counts / block_m)``, the row blocks a grouped GEMM launches for each expert (0 for an
    expert with no tokens).
    """

    sorted_slots: torch.Tensor
    counts: torch.Tensor
    expert_offsets: torch.Tensor
    block_offsets: torch.Tensor


@functools.cache
def _cutlass_workspace_bytes(num_groups: int, device_index: int) -> int:
    return int(torch.ops.star_elastic._moe_grouped_gemm_workspace_size(num_groups, device_index))


def _cutlass_unsupported(a: torch.Tensor, b: torch.Tensor, trans_b: bool) -> str | None:
    """Why the CUTLASS kernel cannot run this call (TMA wants 16-byte aligned rows), or None."""
    if not trans_b:
        return "the CUTLASS grouped GEMM implements trans_b=True only"
    if a.dtype != torch.bfloat16:
        return f"the CUTLASS grouped GEMM is bfloat16-only, got {a.dtype}"
    if a.stride(1) != 1 or b.stride(2) != 1:
        return "the CUTLASS grouped GEMM needs unit inner strides (a.stride(1), b.stride(2))"
    # storage offsets (not data_ptr, which a traced fake tensor lacks): allocations are aligned
    sizes = (a.stride(0), b.stride(0), b.stride(1), b.shape[1], b.shape[2], a.storage_offset(),
             b.storage_offset())
    if any(v % 8 for v in sizes):
        return ("the CUTLASS grouped GEMM needs N, K and the row strides to be multiples of 8 "
                "bf16 elements and 16-byte aligned data")
    return None


def _grouped_gemm_cuda(a: torch.Tensor, b: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    out = torch.empty(a.shape[0], b.shape[1], dtype=a.dtype, device=a.device)
    if a.shape[0] == 0 or b.shape[1] == 0:
        return out
    if b.shape[2] == 0:
        return out.zero_()
    workspace = torch.empty(_cutlass_workspace_bytes(b.shape[0], a.device.index or 0),
                            dtype=torch.uint8, device=a.device)
    torch.ops.star_elastic._moe_grouped_gemm(a, b, ends.to(torch.int32).contiguous(), out, workspace)
    return out


def _ffn_cutlass_unsupported(hidden, w_up, w_down, shared_up, shared_down, r, d, s) -> str | None:
    """Why the CUTLASS composition of moe_ffn cannot run this call, or None."""
    if hidden.dtype != torch.bfloat16:
        return f"the CUTLASS grouped GEMM is bfloat16-only, got {hidden.dtype}"
    weights = [w_up, w_down] + ([shared_up, shared_down] if shared_up is not None else [])
    if any(w.stride(-1) != 1 for w in weights):
        return "the CUTLASS grouped GEMM needs weights with unit inner stride"
    values = [r, d, hidden.storage_offset()] + ([s] if shared_up is not None else [])
    for w in weights:
        values += [*w.stride()[:-1], w.storage_offset()]
    if any(v % 8 for v in values):
        return ("the CUTLASS grouped GEMM needs ffn_width, hidden_width, shared_width and the "
                "weights' row strides to be multiples of 8 bf16 elements")
    return None


def _expert_ffn_cuda(x, w_up, w_down, ends, r, d, activation, gemm=None):
    """Sorted rows x (P, d) -> (P, d) bf16: grouped GEMM up (gate, and value for SiLU-GLU), the
    activation kernel, grouped GEMM down. ``gemm(a, b, ends)`` is the CUTLASS grouped GEMM unless
    a test substitutes another (the CPU tests use the reference)."""
    gemm = gemm or _grouped_gemm_cuda
    gate = gemm(x, w_up[:, :r, :d], ends)
    value = None
    if activation == "silu_glu":
        half = w_up.shape[1] // 2
        value = gemm(x, w_up[:, half : half + r, :d], ends)
    h = torch.empty_like(gate)
    torch.ops.star_elastic._moe_activation(gate, value, h)
    return gemm(h, w_down[:, :d, :r], ends)


def _moe_ffn_cuda(hidden, w_up, w_down, weights, ids, shared_up, shared_down, activation, r, d, s,
                  scaling, gemm=None):
    """moe_ffn from CUDA kernels, no host sync: align the slots by expert (csrc/moe/align.cu),
    gather the tokens' rows in that order, CUTLASS grouped GEMMs with the activation kernel
    between them, then one combine kernel: the k weighted rows of each token summed in a fixed
    order, scaled, plus the shared expert (csrc/moe/ffn_elementwise.cu). bf16 throughout, fp32
    accumulation. On CPU tensors (tests only) the private ops run the kernels' per-thread code
    sequentially and ``gemm`` must be given."""
    num_tokens, top_k = ids.shape
    out = torch.empty(num_tokens, d, dtype=hidden.dtype, device=hidden.device)
    if num_tokens == 0:
        return out
    shared = None
    if shared_up is not None:
        ends = torch.full((1,), num_tokens, dtype=torch.int32, device=hidden.device)
        shared = _expert_ffn_cuda(hidden, shared_up.unsqueeze(0), shared_down.unsqueeze(0), ends,
                                  s, d, activation, gemm)
    slots, _, expert_offsets, _ = _align_cuda(ids, w_down.shape[0], 1)
    x = torch.empty(slots.numel(), d, dtype=hidden.dtype, device=hidden.device)
    torch.ops.star_elastic._moe_gather_rows(hidden, slots, top_k, x)
    y = _expert_ffn_cuda(x, w_up, w_down, expert_offsets[1:], r, d, activation, gemm)
    inverse = torch.empty_like(slots)
    torch.ops.star_elastic._moe_combine(y, slots, weights.float().contiguous(), shared, inverse,
                                        out, float(scaling))
    return out


def _route_cuda(logits: torch.Tensor, correction_bias: torch.Tensor | None,
                expert_mask: torch.Tensor | None, top_k: int, softmax: bool, num_prefix: int,
                renormalize: bool, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Backend "cuda" of moe_route (csrc/moe/route.cu, one thread per token). On CPU tensors the
    private op runs the kernel's per-token function sequentially (its CPU impl; tests only)."""
    num_tokens, num_columns = logits.shape
    weights = torch.empty(num_tokens, top_k, dtype=torch.float32, device=logits.device)
    ids = torch.empty(num_tokens, top_k, dtype=torch.int32, device=logits.device)
    bias = None if correction_bias is None else correction_bias[:num_columns].float().contiguous()
    mask = None if expert_mask is None else expert_mask[:num_columns].contiguous()
    torch.ops.star_elastic._moe_route(logits, bias, mask, weights, ids, num_prefix, softmax,
                                      renormalize, float(scaling))
    return weights, ids


def _align_cuda(ids: torch.Tensor, num_experts: int, block_m: int):
    """Backend "cuda" of moe_align (csrc/moe/align.cu: chunk histograms, per-expert scans,
    offsets, stable fill; no atomics). On CPU tensors the private op runs the kernels' per-thread
    functions sequentially (its CPU impl; tests only)."""
    flat = ids.reshape(-1).contiguous()
    i32 = dict(dtype=torch.int32, device=ids.device)
    workspace = torch.empty(
        int(torch.ops.star_elastic._moe_align_workspace_size(flat.numel(), num_experts)), **i32)
    sorted_slots = torch.empty(flat.numel(), **i32)
    counts = torch.empty(num_experts, **i32)
    expert_offsets = torch.empty(num_experts + 1, **i32)
    block_offsets = torch.empty(num_experts + 1, **i32)
    torch.ops.star_elastic._moe_align(flat, workspace, sorted_slots, counts, expert_offsets,
                                      block_offsets, block_m)
    return sorted_slots, counts, expert_offsets, block_offsets


def _triton_route():
    from star_elastic_kernels.triton import moe_route

    return moe_route


def _triton_align():
    from star_elastic_kernels.triton import moe_align

    return moe_align


def _triton_gemm():
    from star_elastic_kernels.triton import moe_gemm

    return moe_gemm


def _triton_ffn():
    from star_elastic_kernels.triton import moe_ffn

    return moe_ffn


# --------------------------------------------------------------------------------------------------
# Registered ops. The backend is an argument (resolved by the public wrapper) so that a compiled
# graph records which implementation it runs. ``num_experts`` of -1 means "not given".


@torch.library.custom_op("star_elastic::moe_route", mutates_args=())
def _moe_route_op(
    logits: torch.Tensor, correction_bias: torch.Tensor | None, expert_mask: torch.Tensor | None,
    top_k: int, score: str, num_experts: int, renormalize: bool, scaling: float, backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = logits.shape[1] if num_experts < 0 else num_experts
    if backend == "cuda":
        return _route_cuda(logits, correction_bias, expert_mask, top_k, score == "softmax", prefix,
                           renormalize, scaling)
    if backend == "triton":
        return _triton_route().moe_route(
            logits, correction_bias, expert_mask, top_k, score == "softmax", prefix, renormalize, scaling)
    weights, ids = reference.moe_route(
        logits, top_k=top_k, score=score, correction_bias=correction_bias,
        num_experts=None if num_experts < 0 else num_experts, expert_mask=expert_mask,
        renormalize=renormalize, scaling=scaling)
    return weights.contiguous(), ids.contiguous()


@_moe_route_op.register_fake
def _(logits, correction_bias, expert_mask, top_k, score, num_experts, renormalize, scaling, backend):
    t = logits.shape[0]
    return (logits.new_empty(t, top_k, dtype=torch.float32), logits.new_empty(t, top_k, dtype=torch.int32))


def _route_setup(ctx, inputs, output):
    logits, _, expert_mask, _, score, num_experts, renormalize, scaling, _ = inputs
    ctx.save_for_backward(logits, expert_mask, output[1])
    ctx.score, ctx.num_experts, ctx.renormalize, ctx.scaling = score, num_experts, renormalize, scaling


def _route_backward(ctx, grad_weights, grad_ids):
    """d logits from d weights: the chosen ids are constants, the weights a smooth function of the
    unbiased scores (the correction bias only decides the choice, so it gets no gradient)."""
    logits, expert_mask, ids = ctx.saved_tensors
    ids = ids.long()
    x = logits.float()
    grad_weights = grad_weights.float() * ctx.scaling
    if ctx.score == "sigmoid":
        chosen = torch.sigmoid(x.gather(1, ids))
    else:
        active = torch.arange(x.shape[1], device=x.device) < (x.shape[1] if ctx.num_experts < 0 else ctx.num_experts)
        if expert_mask is not None:
            active = active & expert_mask[: x.shape[1]]
        probs = torch.softmax(x.masked_fill(~active, float("-inf")), dim=-1)
        chosen = probs.gather(1, ids)
    if ctx.renormalize:
        total = chosen.sum(dim=-1, keepdim=True) + 1e-20
        grad_chosen = grad_weights / total - (grad_weights * chosen).sum(-1, keepdim=True) / total**2
    else:
        grad_chosen = grad_weights
    if ctx.score == "sigmoid":
        grad_logits = torch.zeros_like(x).scatter_(1, ids, grad_chosen * chosen * (1.0 - chosen))
    else:
        grad_probs = torch.zeros_like(x).scatter_(1, ids, grad_chosen)
        grad_logits = probs * (grad_probs - (grad_probs * probs).sum(-1, keepdim=True))
    return grad_logits.to(logits.dtype), None, None, None, None, None, None, None, None


_moe_route_op.register_autograd(_route_backward, setup_context=_route_setup)


@torch.library.custom_op("star_elastic::moe_align", mutates_args=())
def _moe_align_op(
    ids: torch.Tensor, num_experts: int, block_m: int, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "cuda":
        return _align_cuda(ids, num_experts, block_m)
    if backend == "triton":
        return _triton_align().moe_align(ids.contiguous(), num_experts, block_m)
    return reference.moe_align(ids, num_experts, block_m)


@_moe_align_op.register_fake
def _(ids, num_experts, block_m, backend):
    i32 = dict(dtype=torch.int32)
    return (ids.new_empty(ids.numel(), **i32), ids.new_empty(num_experts, **i32),
            ids.new_empty(num_experts + 1, **i32), ids.new_empty(num_experts + 1, **i32))


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
        return _triton_gemm().grouped_gemm(a, b, offsets, trans_b)
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
        return _triton_gemm().grouped_wgrad(x, y, offsets, num_groups)
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


@torch.library.custom_op("star_elastic::moe_ffn", mutates_args=())
def _moe_ffn_op(
    hidden: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, weights: torch.Tensor,
    ids: torch.Tensor, shared_up: torch.Tensor | None, shared_down: torch.Tensor | None,
    activation: str, ffn_width: int, hidden_width: int, shared_width: int, scaling: float,
    backend: str,
) -> torch.Tensor:
    if backend == "cuda":
        return _moe_ffn_cuda(hidden.contiguous(), w_up, w_down, weights, ids, shared_up, shared_down,
                             activation, ffn_width, hidden_width, shared_width, scaling)
    if backend == "triton":
        return _triton_ffn().moe_ffn_forward(hidden, w_up, w_down, weights, ids.contiguous(), shared_up,
                                             shared_down, activation, ffn_width, hidden_width,
                                             shared_width, scaling)
    return reference.moe_ffn(hidden, w_up, w_down, weights, ids, activation=activation,
                             ffn_width=ffn_width, hidden_width=hidden_width, shared_up=shared_up,
                             shared_down=shared_down,
                             shared_width=shared_width if shared_up is not None else None,
                             scaling=scaling).contiguous()


@_moe_ffn_op.register_fake
def _(hidden, w_up, w_down, weights, ids, shared_up, shared_down, activation, ffn_width,
      hidden_width, shared_width, scaling, backend):
    return torch.empty_like(hidden, memory_format=torch.contiguous_format)


def _expert_grads(grad_y, x, up_gate, up_value, down, activation):
    """One expert FFN's backward in plain torch: grad_y (T, d) of ``act(x @ up.T) @ down.T``.

    Returns (grad x, grad up_gate, grad up_value or None, grad down, the expert output (T, d))."""
    gate = x @ up_gate.T
    if activation == "relu2":
        h = torch.square(torch.relu(gate))
        grad_h = grad_y @ down
        grad_gate, grad_value = grad_h * 2.0 * torch.relu(gate), None
    else:
        value = x @ up_value.T
        sig = torch.sigmoid(gate)
        h = gate * sig * value
        grad_h = grad_y @ down
        grad_gate = grad_h * value * sig * (1.0 + gate * (1.0 - sig))
        grad_value = grad_h * gate * sig
    grad_x = grad_gate @ up_gate
    if grad_value is not None:
        grad_x = grad_x + grad_value @ up_value
    return (grad_x, grad_gate.T @ x, None if grad_value is None else grad_value.T @ x,
            grad_y.T @ h, h @ down.T)


def _reference_ffn_grads(grad, hidden, w_up, w_down, weights, ids, shared_up, shared_down,
                         activation, r, d, s, scaling):
    """The torch backend's backward: the reference's per-expert loop differentiated by hand (plain
    autograd is off inside a custom op), in fp32 (fp64 for fp64 inputs)."""
    acc = torch.promote_types(hidden.dtype, torch.float32)
    x, grad = hidden.to(acc), grad.to(acc)
    glu = activation == "silu_glu"
    half = w_up.shape[1] // 2
    grad_hidden = torch.zeros_like(x)
    grad_weights = torch.zeros(weights.shape, dtype=acc, device=hidden.device)
    grad_w_up = torch.zeros(w_up.shape, dtype=acc, device=hidden.device)
    grad_w_down = torch.zeros(w_down.shape, dtype=acc, device=hidden.device)
    for expert in range(w_down.shape[0]):
        routed = ids == expert
        if not bool(routed.any()):
            continue  # never read an unused expert's weights
        token_weight = (weights.to(acc) * routed).sum(dim=-1, keepdim=True)
        up = w_up[expert].to(acc)
        gx, gg, gv, gd, y = _expert_grads(grad * (scaling * token_weight), x, up[:r, :d],
                                          up[half : half + r, :d] if glu else None,
                                          w_down[expert, :d, :r].to(acc), activation)
        grad_hidden += gx
        grad_w_up[expert, :r, :d] = gg
        if glu:
            grad_w_up[expert, half : half + r, :d] = gv
        grad_w_down[expert, :d, :r] = gd
        grad_weights += routed * (scaling * (grad * y).sum(dim=-1, keepdim=True))
    grad_su = grad_sd = None
    if shared_up is not None:
        half_s = shared_up.shape[0] // 2
        up = shared_up.to(acc)
        gx, gg, gv, gd, _ = _expert_grads(grad, x, up[:s, :d], up[half_s : half_s + s, :d] if glu else None,
                                          shared_down[:d, :s].to(acc), activation)
        grad_hidden += gx
        grad_su = torch.zeros(shared_up.shape, dtype=acc, device=hidden.device)
        grad_sd = torch.zeros(shared_down.shape, dtype=acc, device=hidden.device)
        grad_su[:s, :d] = gg
        if glu:
            grad_su[half_s : half_s + s, :d] = gv
        grad_sd[:d, :s] = gd
        grad_su, grad_sd = grad_su.to(shared_up.dtype), grad_sd.to(shared_down.dtype)
    return (grad_hidden.to(hidden.dtype), grad_w_up.to(w_up.dtype), grad_w_down.to(w_down.dtype),
            grad_weights.to(weights.dtype), grad_su, grad_sd)


@torch.library.custom_op("star_elastic::moe_ffn_backward", mutates_args=())
def _moe_ffn_backward_op(
    grad_out: torch.Tensor, hidden: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
    weights: torch.Tensor, ids: torch.Tensor, shared_up: torch.Tensor | None,
    shared_down: torch.Tensor | None, activation: str, ffn_width: int, hidden_width: int,
    shared_width: int, scaling: float, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients for (hidden, w_up, w_down, weights, shared_up, shared_down); the shared ones are
    empty (0,) tensors when there is no shared expert. The torch backend is the reference's
    per-expert loop differentiated by hand (autograd is switched off inside a custom op)."""
    if backend in ("triton", "cuda"):  # the cuda backend's backward is the Triton one
        grads = _triton_ffn().moe_ffn_backward(
            grad_out.contiguous(), hidden, w_up, w_down, weights, ids.contiguous(), shared_up,
            shared_down, activation, ffn_width, hidden_width, shared_width, scaling)
    else:
        grads = _reference_ffn_grads(grad_out, hidden, w_up, w_down, weights, ids, shared_up,
                                     shared_down, activation, ffn_width, hidden_width, shared_width,
                                     scaling)
    return tuple(hidden.new_empty(0) if g is None else g.contiguous() for g in grads)


@_moe_ffn_backward_op.register_fake
def _(grad_out, hidden, w_up, w_down, weights, ids, shared_up, shared_down, activation, ffn_width,
      hidden_width, shared_width, scaling, backend):
    def like(t):
        return hidden.new_empty(0) if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)

    return (like(hidden), like(w_up), like(w_down), like(weights), like(shared_up), like(shared_down))


def _ffn_setup(ctx, inputs, output):
    (hidden, w_up, w_down, weights, ids, shared_up, shared_down, *rest) = inputs
    ctx.save_for_backward(hidden, w_up, w_down, weights, ids, shared_up, shared_down)
    ctx.rest = rest
    ctx.has_shared = shared_up is not None


def _ffn_backward(ctx, grad):
    grads = _moe_ffn_backward_op(grad, *ctx.saved_tensors, *ctx.rest)
    grad_hidden, grad_w_up, grad_w_down, grad_weights, grad_su, grad_sd = grads
    if not ctx.has_shared:
        grad_su = grad_sd = None
    return (grad_hidden, grad_w_up, grad_w_down, grad_weights, None, grad_su, grad_sd,
            None, None, None, None, None, None)


_moe_ffn_op.register_autograd(_ffn_backward, setup_context=_ffn_setup)


# --------------------------------------------------------------------------------------------------
# Public wrappers: all argument checks happen here, before any kernel runs.


def _check_tensor(t, name: str, dims: int | None = None, dtypes=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dims is not None and t.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must be one of {', '.join(map(str, dtypes))}, got {t.dtype}")


def _check_int(value, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name}={value} must be {bound}")
    return value


def _same_device(t: torch.Tensor, name: str, like: torch.Tensor, like_name: str) -> None:
    if t.device != like.device:
        raise ValueError(f"{name} is on {t.device} but {like_name} is on {like.device}")


def _check_ids_in_range(ids: torch.Tensor, num_experts: int, name: str = "ids") -> None:
    # Needs the values (one device sync); a compiled graph cannot branch on them, so it skips this.
    if torch.compiler.is_compiling() or ids.numel() == 0:
        return
    low, high = torch.stack([ids.min(), ids.max()]).tolist()
    if low < 0 or high >= num_experts:
        raise ValueError(f"{name} must lie in [0, {num_experts}), got values in [{low}, {high}]")


def moe_route(
    logits: torch.Tensor,
    *,
    top_k: int,
    score: str = "sigmoid",
    correction_bias: torch.Tensor | None = None,
    num_experts: int | None = None,
    expert_mask: torch.Tensor | None = None,
    renormalize: bool = True,
    scaling: float = 1.0,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k expert routing with Nemotron v3 semantics (differentiable in ``logits``).

    Args:
        logits: (T, E) router logits over the parent's E experts, any float dtype (scored in fp32);
            with ``num_experts=e`` they may also be compact (T, e) (only the first e experts were
            projected). Any strides.
        top_k: experts per token, ``1 <= top_k <=`` the number of active experts.
        score: ``"sigmoid"`` (Nemotron) or ``"softmax"`` (over the active experts only).
        correction_bias: optional (E,) float bias added to the scores for the choice only (the
            weights use the unbiased scores); it gets no gradient.
        num_experts: keep the first e (importance-sorted) experts; the others are never chosen.
        expert_mask: (E,) bool, the general form (True = may be chosen). Not with ``num_experts``.
        renormalize: divide the k chosen scores by their sum (+1e-20).
        scaling: multiplies the weights (Nemotron's routed scaling factor, 2.5).
        backend: ``"auto" | "cuda" | "triton" | "torch"``; default from :func:`use_backend` or
            ``$STAR_ELASTIC_BACKEND``, else auto. ``"cuda"`` is csrc/moe/route.cu (float32,
            float16 or bfloat16 logits; one thread per token).

    Returns:
        ``(weights (T, k) float32, ids (T, k) int32)``; ids index the parent's experts, in order of
        decreasing biased score.

    Raises:
        TypeError / ValueError: bad shapes, dtypes, devices or values, ``top_k`` larger than the
            active experts (counting a mask's experts needs one device sync; skipped when compiling).
        BackendUnavailableError: an explicitly requested backend cannot run this call.
    """
    _check_tensor(logits, "logits", 2, _FLOAT_DTYPES)
    if score not in ("sigmoid", "softmax"):
        raise ValueError(f"score must be 'sigmoid' or 'softmax', got {score!r}")
    if num_experts is not None and expert_mask is not None:
        raise ValueError("pass num_experts or expert_mask, not both")
    if correction_bias is not None:
        _check_tensor(correction_bias, "correction_bias", 1, _FLOAT_DTYPES)
        _same_device(correction_bias, "correction_bias", logits, "logits")
    if expert_mask is not None:
        _check_tensor(expert_mask, "expert_mask", 1, (torch.bool,))
        _same_device(expert_mask, "expert_mask", logits, "logits")
    parent = (expert_mask.shape[0] if expert_mask is not None else
              correction_bias.shape[0] if correction_bias is not None else logits.shape[1])
    if correction_bias is not None and correction_bias.shape[0] != parent:
        raise ValueError(f"correction_bias has {correction_bias.shape[0]} experts but expert_mask has {parent}")
    if num_experts is not None:
        _check_int(num_experts, "num_experts", 1, parent)
    if logits.shape[1] != parent and logits.shape[1] != num_experts:
        raise ValueError(f"logits have {logits.shape[1]} experts; expected the parent's {parent}"
                         + (f" or num_experts={num_experts}" if num_experts is not None else ""))
    _check_int(top_k, "top_k", 1)
    if expert_mask is not None:
        active = None if torch.compiler.is_compiling() else int(expert_mask.sum())
    else:
        active = parent if num_experts is None else num_experts
    if active is not None and top_k > active:
        raise ValueError(f"top_k={top_k} is larger than the {active} active experts")
    if not isinstance(scaling, (int, float)) or isinstance(scaling, bool):
        raise TypeError(f"scaling must be a float, got {type(scaling).__name__}")
    if not isinstance(renormalize, bool):
        raise TypeError(f"renormalize must be a bool, got {type(renormalize).__name__}")
    chosen = _backends.select_backend(ROUTE_SPEC, logits.device, logits.dtype, backend)
    return _moe_route_op(logits, correction_bias, expert_mask, top_k, score,
                         -1 if num_experts is None else num_experts, renormalize, float(scaling), chosen)


def moe_align(ids: torch.Tensor, num_experts: int, block_m: int = 64, *,
              backend: str | None = None) -> MoEAlignment:
    """Group the (token, k) slots of a routing by expert, for grouped GEMMs.

    Args:
        ids: (T, k) int32/int64 expert ids in ``[0, num_experts)`` (from :func:`moe_route`). Slot
            ``t*k + j`` is token t's j-th expert.
        num_experts: E, the parent's expert count.
        block_m: rows per GEMM row block; an expert with c slots gets ``ceil(c / block_m)`` blocks,
            an expert with none (a masked one in particular) gets no block and so no work.
        backend: as in :func:`moe_route`; ``"cuda"`` is csrc/moe/align.cu (deterministic, no
            atomics).

    Returns:
        :class:`MoEAlignment` ``(sorted_slots (T*k,), counts (E,), expert_offsets (E+1,),
        block_offsets (E+1,))``, int32; the slot order within an expert is increasing.
    """
    _check_tensor(ids, "ids", 2, _ID_DTYPES)
    _check_int(num_experts, "num_experts", 1)
    _check_int(block_m, "block_m", 1)
    _check_ids_in_range(ids, num_experts)
    chosen = _backends.select_backend(ALIGN_SPEC, ids.device, ids.dtype, backend)
    return MoEAlignment(*_moe_align_op(ids, num_experts, block_m, chosen))


def grouped_gemm(a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor, *, trans_b: bool = True,
                 backend: str | None = None) -> torch.Tensor:
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
        backend: ``"auto" | "cuda" | "triton" | "torch"`` (see :func:`moe_route`). ``"cuda"`` is
            the CUTLASS sm_90a pointer-array grouped GEMM: bfloat16, ``trans_b=True``, unit inner
            strides, N, K and row strides multiples of 8 (auto falls back to Triton otherwise;
            an explicit request raises). Its backward runs the Triton kernels.

    Returns:
        (M, N) in a's dtype (fp32 accumulation).
    """
    _check_tensor(a, "a", 2, _FLOAT_DTYPES)
    _check_tensor(b, "b", 3, _FLOAT_DTYPES)
    _check_tensor(offsets, "offsets", 1, _ID_DTYPES)
    if b.dtype != a.dtype:
        raise TypeError(f"b must have a's dtype {a.dtype}, got {b.dtype}")
    _same_device(b, "b", a, "a")
    _same_device(offsets, "offsets", a, "a")
    if not isinstance(trans_b, bool):
        raise TypeError(f"trans_b must be a bool, got {type(trans_b).__name__}")
    k = b.shape[2] if trans_b else b.shape[1]
    if a.shape[1] != k:
        raise ValueError(f"a has K={a.shape[1]} columns but b {tuple(b.shape)} (trans_b={trans_b}) "
                         f"has K={k}")
    if offsets.shape[0] != b.shape[0]:
        raise ValueError(f"offsets must have one entry per group ({b.shape[0]}), got {offsets.shape[0]}")
    if not torch.compiler.is_compiling() and offsets.numel():
        ends = offsets.tolist()
        if any(e < s for s, e in zip([0] + ends[:-1], ends)) or ends[-1] != a.shape[0]:
            raise ValueError(f"offsets must be non-decreasing cumulative end rows ending at "
                             f"M={a.shape[0]}, got {ends[:8]}{'...' if len(ends) > 8 else ''}")
    elif offsets.numel() == 0 and a.shape[0] != 0:
        raise ValueError("offsets is empty (no groups) but a has rows")
    chosen = _backends.select_backend(GROUPED_GEMM_SPEC, a.device, a.dtype, backend)
    if chosen == "cuda":
        reason = _cutlass_unsupported(a, b, trans_b)
        if reason is not None:
            if _backends.requested_backend(backend) == "cuda":
                raise _backends.BackendUnavailableError(
                    f"grouped_gemm: backend 'cuda' is unavailable: {reason}")
            chosen = _backends.select_backend(GROUPED_GEMM_SPEC, a.device, a.dtype, "triton")
    return _grouped_gemm_op(a, b, offsets, trans_b, chosen)


def moe_ffn(
    hidden: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    weights: torch.Tensor,
    ids: torch.Tensor,
    *,
    activation: str = "relu2",
    ffn_width: int | None = None,
    hidden_width: int | None = None,
    shared_up: torch.Tensor | None = None,
    shared_down: torch.Tensor | None = None,
    shared_width: int | None = None,
    scaling: float = 1.0,
    backend: str | None = None,
) -> torch.Tensor:
    """Routed expert FFN + optional shared expert at elastic widths, fused (differentiable in
    hidden, w_up, w_down, weights, shared_up, shared_down).

    ``out[t] = scaling * sum_j weights[t, j] * FFN_{ids[t, j]}(hidden[t]) + shared(hidden[t])`` with
    ``FFN_e(x) = act(x @ w_up[e, :r, :d].T) @ w_down[e, :d, :r].T``.

    Args:
        hidden: (T, d) compact activations, ``d = hidden_width or D``; float32/float16/bfloat16
            (float64 on the torch backend).
        w_up: (E, F, D) parent up projections; (E, 2F, D) for ``"silu_glu"`` (F gate rows, then F
            value rows). Read at ``[:, :r, :d]`` (and ``[:, F:F+r, :d]``) through strides; last
            stride need not be 1. Same dtype/device as hidden.
        w_down: (E, D, F) parent down projections, read at ``[:, :d, :r]``.
        weights: (T, k) float routing weights (from :func:`moe_route`).
        ids: (T, k) int32/int64 expert ids in ``[0, E)``. Experts absent from ids are never read.
        activation: ``"relu2"`` (Nemotron: relu(x)**2) or ``"silu_glu"`` (silu(gate) * value).
        ffn_width: r, the first r neurons of every expert (``1 <= r <= F``), default F.
        hidden_width: d, must equal ``hidden.shape[1]``; default D.
        shared_up: optional (Fs, D) ((2Fs, D) for silu_glu) shared expert; with ``shared_down``
            (D, Fs). Sees every token with weight 1, not scaled.
        shared_width: s, the first s shared neurons, default Fs.
        scaling: multiplies the routed sum.
        backend: ``"auto" | "cuda" | "triton" | "torch"`` (see :func:`moe_route`). ``"cuda"``
            composes the CUTLASS sm_90a grouped GEMM (bfloat16; widths and weight row strides
            multiples of 8; auto falls back to Triton otherwise, an explicit request raises) with
            CUDA kernels for the alignment, row gather, activation and weighted combine
            (csrc/moe/); its backward runs the Triton kernels.

    Returns:
        (T, d) in hidden's dtype (fp32 accumulation).
    """
    if activation not in ("relu2", "silu_glu"):
        raise ValueError(f"activation must be 'relu2' or 'silu_glu', got {activation!r}")
    _check_tensor(hidden, "hidden", 2, _FLOAT_DTYPES)
    _check_tensor(w_up, "w_up", 3, _FLOAT_DTYPES)
    _check_tensor(w_down, "w_down", 3, _FLOAT_DTYPES)
    _check_tensor(weights, "weights", 2, _FLOAT_DTYPES)
    _check_tensor(ids, "ids", 2, _ID_DTYPES)
    for t, name in ((w_up, "w_up"), (w_down, "w_down")):
        if t.dtype != hidden.dtype:
            raise TypeError(f"{name} must have hidden's dtype {hidden.dtype}, got {t.dtype}")
    for t, name in ((w_up, "w_up"), (w_down, "w_down"), (weights, "weights"), (ids, "ids")):
        _same_device(t, name, hidden, "hidden")
    num_experts, parent_d, parent_f = w_down.shape
    glu = 2 if activation == "silu_glu" else 1
    if w_up.shape != (num_experts, glu * parent_f, parent_d):
        raise ValueError(f"w_up must be (E, {glu}F, D) = {(num_experts, glu * parent_f, parent_d)} "
                         f"for activation={activation!r} and w_down {tuple(w_down.shape)}, got "
                         f"{tuple(w_up.shape)}")
    r = _check_int(parent_f if ffn_width is None else ffn_width, "ffn_width", 1, parent_f)
    d = _check_int(parent_d if hidden_width is None else hidden_width, "hidden_width", 1, parent_d)
    if hidden.shape[1] != d:
        raise ValueError(f"hidden has {hidden.shape[1]} channels but hidden_width is {d}")
    if weights.shape != ids.shape or weights.shape[0] != hidden.shape[0]:
        raise ValueError(f"weights {tuple(weights.shape)} and ids {tuple(ids.shape)} must both be "
                         f"(T={hidden.shape[0]}, k)")
    if (shared_up is None) != (shared_down is None):
        raise ValueError("shared_up and shared_down must be given together")
    s = 0
    if shared_up is not None:
        _check_tensor(shared_up, "shared_up", 2, _FLOAT_DTYPES)
        _check_tensor(shared_down, "shared_down", 2, _FLOAT_DTYPES)
        for t, name in ((shared_up, "shared_up"), (shared_down, "shared_down")):
            if t.dtype != hidden.dtype:
                raise TypeError(f"{name} must have hidden's dtype {hidden.dtype}, got {t.dtype}")
            _same_device(t, name, hidden, "hidden")
        parent_s = shared_down.shape[1]
        if shared_down.shape[0] != parent_d or shared_up.shape != (glu * parent_s, parent_d):
            raise ValueError(f"shared_up {tuple(shared_up.shape)} / shared_down "
                             f"{tuple(shared_down.shape)} must be ({glu}Fs, D={parent_d}) / "
                             f"(D={parent_d}, Fs)")
        s = _check_int(parent_s if shared_width is None else shared_width, "shared_width", 1, parent_s)
    elif shared_width is not None:
        raise ValueError("shared_width is given but there is no shared expert")
    if not isinstance(scaling, (int, float)) or isinstance(scaling, bool):
        raise TypeError(f"scaling must be a float, got {type(scaling).__name__}")
    _check_ids_in_range(ids, num_experts)
    chosen = _backends.select_backend(FFN_SPEC, hidden.device, hidden.dtype, backend)
    if chosen == "cuda":
        reason = _ffn_cutlass_unsupported(hidden, w_up, w_down, shared_up, shared_down, r, d, s)
        if reason is not None:
            if _backends.requested_backend(backend) == "cuda":
                raise _backends.BackendUnavailableError(f"moe_ffn: backend 'cuda' is unavailable: {reason}")
            chosen = _backends.select_backend(FFN_SPEC, hidden.device, hidden.dtype, "triton")
    return _moe_ffn_op(hidden, w_up, w_down, weights, ids, shared_up, shared_down, activation, r, d,
                       s, float(scaling), chosen)
