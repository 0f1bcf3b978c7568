"""Routed expert FFN + optional shared expert at elastic widths: ``moe_ffn`` (and its backward).

Order: the CUDA launcher, the registered ops ``star_elastic::moe_ffn`` and
``star_elastic::moe_ffn_backward`` with their fake impls and autograd, the public wrapper. Kernels:
``csrc/moe/`` (cuda: alignment, row gather, the CUTLASS grouped GEMMs, activation and weighted
combine; the elementwise ops have CPU impls that run the kernels' per-thread code sequentially,
for tests without a GPU), ``star_elastic_kernels/triton/moe_ffn.py`` (triton; also the cuda
backend's backward); the specification is ``star_elastic_kernels.reference.moe.moe_ffn``.

Elastic widths follow DESIGN §3: activations are compact, weights keep the parent layout and are
read through strides at the active widths (``w_up[:, :r, :d]``, ``w_down[:, :d, :r]``); masked
experts never receive tokens, and an expert without tokens costs no work and is never read.
"""

from __future__ import annotations

import torch

from star_elastic_kernels import _backends, _extension
from star_elastic_kernels.moe import _checks, _errors, _fallback
from star_elastic_kernels.moe.gemm import EPILOGUE_IDENTITY, EPILOGUE_RELU2, EPILOGUE_SILU_C_TIMES_ACC
from star_elastic_kernels.moe.gemm import SCHEDULE_SWAP_AB, _grouped_gemm_supports, schedule_for
from star_elastic_kernels.reference import moe as reference

# Each op launches one kernel: a routed relu2 forward is plan, gather, up GEMM, down GEMM, combine.
CUDA_OPS = ("_moe_ffn_workspace_size", "_moe_ffn_plan", "_moe_ffn_gather", "_moe_ffn_gemm",
            "_moe_ffn_combine")
SPEC = _backends.register(_backends.OpSpec(
    "moe_ffn", backends=("cuda", "triton", "torch"), cuda_ops=CUDA_OPS,
    supports=_grouped_gemm_supports))
_UP, _VALUE, _DOWN = 0, 1, 2  # the plan's tables (csrc/moe/ffn.h FfnTable)


def _ffn_cutlass_unsupported(hidden, w_up, w_down, shared_up, shared_down) -> str | None:
    """Why the CUTLASS path of moe_ffn cannot run this call, or None. Only the parent layout
    matters: TMA reads rows at 16-byte aligned strides, and any active width (ffn_width,
    hidden_width, shared_width) is fine (the loads zero-fill past it, the stores clip)."""
    if hidden.dtype != torch.bfloat16:
        return f"the CUTLASS grouped GEMM is bfloat16-only, got {hidden.dtype}"
    weights = [w_up, w_down] + ([shared_up, shared_down] if shared_up is not None else [])
    if any(w.stride(-1) != 1 for w in weights):
        return "the CUTLASS grouped GEMM needs weights with unit inner stride"
    values = []
    for w in weights:
        values += [*w.stride()[:-1], w.storage_offset()]
    if any(v % 8 for v in values):
        return ("the CUTLASS grouped GEMM needs the parent weights' row strides (D, F, Fs) and "
                "offsets to be multiples of 8 bf16 elements (16 bytes)")
    return None


def _round8(n: int) -> int:
    return -(-n // 8) * 8


def _moe_ffn_cuda(hidden, w_up, w_down, weights, ids, shared_up, shared_down, activation, r, d, s,
                  scaling):
    """moe_ffn from CUDA kernels in five launches (six for SiLU-GLU), no host sync
    (csrc/moe/ffn.h): plan (slot counts, expert offsets, active-expert list, the GEMM tables), gather
    (rows in expert order, and the shared expert's rows), the CUTLASS up GEMM with ReLU^2 in its
    epilogue (SiLU-GLU: gate GEMM, then value GEMM with silu(gate) * acc in its epilogue), the down
    GEMM, then one combine kernel: the k weighted rows of each token summed in a fixed order,
    scaled, plus the shared expert's row. The shared expert is one more group of the same GEMMs.
    bf16 throughout, fp32 accumulation. On CPU tensors (tests only) the private ops run the
    kernels' per-thread code sequentially and the GEMMs a reference product with the kernels'
    epilogue functions."""
    num_tokens, top_k = ids.shape
    out = torch.empty(num_tokens, d, dtype=hidden.dtype, device=hidden.device)
    if num_tokens == 0:
        return out
    num_experts = w_down.shape[0]
    slots = num_tokens * top_k
    groups = num_experts + (1 if shared_up is not None else 0)
    rows = slots + (num_tokens if shared_up is not None else 0)
    glu = activation == "silu_glu"
    schedule = schedule_for(slots, num_experts)
    bf16 = dict(dtype=hidden.dtype, device=hidden.device)
    width = max(r, s) if shared_up is not None else r
    # row strides multiples of 8 (16 bytes, for TMA); the columns past the widths are never read
    x = torch.empty(rows, _round8(d), **bf16)
    h = torch.empty(rows, _round8(width), **bf16)
    gate = torch.empty(rows, _round8(width), **bf16) if glu else None
    y = torch.empty(rows, _round8(d), **bf16)
    inverse = torch.empty(slots, dtype=torch.int32, device=hidden.device)
    workspace = torch.empty(
        int(torch.ops.star_elastic._moe_ffn_workspace_size(slots, num_experts, groups)),
        dtype=torch.uint8, device=hidden.device)
    ids = ids.contiguous()
    ops = torch.ops.star_elastic
    ops._moe_ffn_plan(ids, hidden, w_up, w_down, shared_up, shared_down, x, gate, h, y, inverse,
                      workspace, _errors.device_flag(hidden), r, s, schedule == SCHEDULE_SWAP_AB)
    ops._moe_ffn_gather(ids, hidden, x, inverse, workspace, num_experts, groups)
    gemm = (slots, num_experts, groups)
    if glu:
        ops._moe_ffn_gemm(workspace, gate, *gemm, _UP, EPILOGUE_IDENTITY, schedule)
        ops._moe_ffn_gemm(workspace, h, *gemm, _VALUE, EPILOGUE_SILU_C_TIMES_ACC, schedule)
    else:
        ops._moe_ffn_gemm(workspace, h, *gemm, _UP, EPILOGUE_RELU2, schedule)
    ops._moe_ffn_gemm(workspace, y, *gemm, _DOWN, EPILOGUE_IDENTITY, schedule)
    ops._moe_ffn_combine(y, inverse, weights.float().contiguous(), out, shared_up is not None,
                         float(scaling))
    return out


if _extension.has_op("_moe_ffn_plan"):
    @torch.library.register_fake("star_elastic::_moe_ffn_plan")
    def _(ids, hidden, w_up, w_down, shared_up, shared_down, x, gate, h, y, inverse, workspace,
          error_flag, ffn_width, shared_width, swap_ab):
        rows = ids.numel() + (ids.shape[0] if shared_up is not None else 0)
        _checks.fake_expect(ids.dim() == 2 and hidden.shape[0] == ids.shape[0], "_moe_ffn_plan",
                            "ids (T, k), hidden (T, d)")
        _checks.fake_expect(x.shape[0] == h.shape[0] == y.shape[0] == rows, "_moe_ffn_plan",
                            "x, h, y have T*k (+ T) rows")
        _checks.fake_expect(inverse.numel() == ids.numel(), "_moe_ffn_plan", "inverse (T*k,)")

    @torch.library.register_fake("star_elastic::_moe_ffn_gather")
    def _(ids, hidden, x, inverse, workspace, num_experts, num_groups):
        _checks.fake_expect(inverse.numel() == ids.numel() and x.shape[1] >= hidden.shape[1],
                            "_moe_ffn_gather", "inverse (T*k,), x (rows, >= d)")

    @torch.library.register_fake("star_elastic::_moe_ffn_gemm")
    def _(workspace, out, num_slots, num_experts, num_groups, table, epilogue, schedule):
        _checks.fake_expect(0 <= table <= 2 and 0 <= epilogue <= 2 and 0 <= schedule <= 2,
                            "_moe_ffn_gemm", "table, epilogue and schedule in 0..2")

    @torch.library.register_fake("star_elastic::_moe_ffn_combine")
    def _(y, inverse, weights, out, shared, scaling):
        _checks.fake_expect(weights.dim() == 2 and inverse.numel() == weights.numel()
                            and out.shape[0] == weights.shape[0], "_moe_ffn_combine",
                            "weights (T, k), inverse (T*k,), out (T, d)")


def _triton_ffn():
    from star_elastic_kernels.triton import moe_ffn

    return moe_ffn


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
                                             shared_width, scaling, _errors.device_flag(hidden))
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
            shared_down, activation, ffn_width, hidden_width, shared_width, scaling,
            _errors.device_flag(hidden))
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
    validate: bool = False,
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
        validate: on device tensors, also check the ids' range on the host before launching (one
            sync). Without it the cuda and triton kernels check on the device: a slot with an id
            out of range contributes nothing and sets a flag that
            :func:`star_elastic_kernels.moe.raise_device_errors` reports. CPU tensors are always
            checked on the host.
        backend: ``"auto" | "cuda" | "triton" | "torch"`` (see :func:`moe_route`). ``"cuda"`` is
            five launches with no host sync (csrc/moe/ffn.h): plan, gather, the CUTLASS sm_90a
            grouped GEMMs with ReLU^2 (or SiLU-GLU) fused in the up-projection's epilogue, and one
            combine kernel; the shared expert is one more group of the same GEMMs. bfloat16; any
            ffn_width / hidden_width / shared_width; the parent weights' row strides must be
            multiples of 8 (else auto runs Triton and warns once, see ``moe/_fallback.py``, and an
            explicit request raises). Its backward runs the Triton kernels.

    Returns:
        (T, d) in hidden's dtype (fp32 accumulation).

    Raises:
        TypeError / ValueError: bad shapes, dtypes, devices, widths; ids out of range (on a
            device: with ``validate``).
        BackendUnavailableError: an explicitly requested backend cannot run this call.
    """
    if activation not in ("relu2", "silu_glu"):
        raise ValueError(f"activation must be 'relu2' or 'silu_glu', got {activation!r}")
    _checks.tensor(hidden, "hidden", 2, _checks.FLOAT_DTYPES)
    _checks.tensor(w_up, "w_up", 3, _checks.FLOAT_DTYPES)
    _checks.tensor(w_down, "w_down", 3, _checks.FLOAT_DTYPES)
    _checks.tensor(weights, "weights", 2, _checks.FLOAT_DTYPES)
    _checks.tensor(ids, "ids", 2, _checks.ID_DTYPES)
    for t, name in ((w_up, "w_up"), (w_down, "w_down")):
        if t.dtype != hidden.dtype:
            raise TypeError(f"{name} must have hidden's dtype {hidden.dtype}, got {t.dtype}")
    for t, name in ((w_up, "w_up"), (w_down, "w_down"), (weights, "weights"), (ids, "ids")):
        _checks.same_device(t, name, hidden, "hidden")
    num_experts, parent_d, parent_f = w_down.shape
    glu = 2 if activation == "silu_glu" else 1
    if w_up.shape != (num_experts, glu * parent_f, parent_d):
        raise ValueError(f"w_up must be (E, {glu}F, D) = {(num_experts, glu * parent_f, parent_d)} "
                         f"for activation={activation!r} and w_down {tuple(w_down.shape)}, got "
                         f"{tuple(w_up.shape)}")
    r = _checks.integer(parent_f if ffn_width is None else ffn_width, "ffn_width", 1, parent_f)
    d = _checks.integer(parent_d if hidden_width is None else hidden_width, "hidden_width", 1, parent_d)
    if hidden.shape[1] != d:
        raise ValueError(f"hidden has {hidden.shape[1]} channels but hidden_width is {d}")
    if weights.shape != ids.shape or weights.shape[0] != hidden.shape[0]:
        raise ValueError(f"weights {tuple(weights.shape)} and ids {tuple(ids.shape)} must both be "
                         f"(T={hidden.shape[0]}, k)")
    if (shared_up is None) != (shared_down is None):
        raise ValueError("shared_up and shared_down must be given together")
    s = 0
    if shared_up is not None:
        _checks.tensor(shared_up, "shared_up", 2, _checks.FLOAT_DTYPES)
        _checks.tensor(shared_down, "shared_down", 2, _checks.FLOAT_DTYPES)
        for t, name in ((shared_up, "shared_up"), (shared_down, "shared_down")):
            if t.dtype != hidden.dtype:
                raise TypeError(f"{name} must have hidden's dtype {hidden.dtype}, got {t.dtype}")
            _checks.same_device(t, name, hidden, "hidden")
        parent_s = shared_down.shape[1]
        if shared_down.shape[0] != parent_d or shared_up.shape != (glu * parent_s, parent_d):
            raise ValueError(f"shared_up {tuple(shared_up.shape)} / shared_down "
                             f"{tuple(shared_down.shape)} must be ({glu}Fs, D={parent_d}) / "
                             f"(D={parent_d}, Fs)")
        s = _checks.integer(parent_s if shared_width is None else shared_width, "shared_width", 1, parent_s)
    elif shared_width is not None:
        raise ValueError("shared_width is given but there is no shared expert")
    if not isinstance(scaling, (int, float)) or isinstance(scaling, bool):
        raise TypeError(f"scaling must be a float, got {type(scaling).__name__}")
    if _checks.on_host_now(ids, validate):
        _checks.ids_in_range(ids, num_experts)
    chosen = _backends.select_backend(SPEC, hidden.device, hidden.dtype, backend)
    if chosen == "cuda":
        reason = _ffn_cutlass_unsupported(hidden, w_up, w_down, shared_up, shared_down)
        if reason is not None:
            if _backends.requested_backend(backend) == "cuda":
                raise _backends.BackendUnavailableError(f"moe_ffn: backend 'cuda' is unavailable: {reason}")
            _fallback.fallback("moe_ffn", reason)
            chosen = _backends.select_backend(SPEC, hidden.device, hidden.dtype, "triton")
    return _moe_ffn_op(hidden, w_up, w_down, weights, ids, shared_up, shared_down, activation, r, d,
                       s, float(scaling), chosen)
