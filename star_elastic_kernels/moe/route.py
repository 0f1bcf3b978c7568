"""Top-k expert routing at an elastic expert count: ``moe_route``.

Order: the launcher, the registered op ``star_elastic::moe_route`` with its fake impl and autograd,
the public wrapper. Kernels: ``csrc/moe/route.cu`` (cuda; its CPU impl runs the kernel's per-token
function sequentially, for tests without a GPU), ``star_elastic_kernels/triton/moe_route.py``
(triton); the specification is ``star_elastic_kernels.reference.moe.moe_route`` (torch).
"""

from __future__ import annotations

import torch

from star_elastic_kernels import _backends, _extension
from star_elastic_kernels.moe import _checks, _errors
from star_elastic_kernels.reference import moe as reference


def _route_supports(backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
    if backend == "cuda" and dtype == torch.float64:
        return ("the CUDA routing kernel reads float32/float16/bfloat16 logits; use "
                "backend='torch' for float64")
    return _checks.no_fp64_in_triton(backend, device, dtype)


SPEC = _backends.register(_backends.OpSpec(
    "moe_route", backends=("cuda", "triton", "torch"), cuda_ops=("_moe_route",),
    supports=_route_supports, triton_cpu_dtypes=(torch.float32, torch.float16)))


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
    torch.ops.star_elastic._moe_route(logits, bias, mask, weights, ids, _errors.device_flag(logits),
                                      num_prefix, softmax, renormalize, float(scaling))
    return weights, ids


if _extension.has_op("_moe_route"):
    @torch.library.register_fake("star_elastic::_moe_route")
    def _(logits, bias, mask, weights, ids, error_flag, num_prefix, softmax, renormalize, scaling):
        tokens = logits.shape[0]
        _checks.fake_expect(logits.dim() == 2 and weights.dim() == 2 and weights.shape[0] == tokens
                            and weights.dtype == torch.float32, "_moe_route",
                            "logits (T, E), weights float32 (T, k)")
        _checks.fake_expect(ids.shape == weights.shape and ids.dtype == torch.int32, "_moe_route",
                            "ids int32 shaped like weights")


def _triton_route():
    from star_elastic_kernels.triton import moe_route

    return moe_route


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
            logits, correction_bias, expert_mask, top_k, score == "softmax", prefix, renormalize,
            scaling, _errors.device_flag(logits))
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
    validate: bool = False,
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
        validate: on device tensors, also count the active experts of ``expert_mask`` on the host
            before launching (one sync). Without it the kernel checks on the device: picks that
            find no active expert get id 0 with weight 0 and set a flag that
            :func:`star_elastic_kernels.moe.raise_device_errors` reports. CPU tensors are always
            checked on the host.
        backend: ``"auto" | "cuda" | "triton" | "torch"``; default from :func:`use_backend` or
            ``$STAR_ELASTIC_BACKEND``, else auto. ``"cuda"`` is csrc/moe/route.cu (float32,
            float16 or bfloat16 logits; one thread per token).

    Returns:
        ``(weights (T, k) float32, ids (T, k) int32)``; ids index the parent's experts, in order of
        decreasing biased score.

    Raises:
        TypeError / ValueError: bad shapes, dtypes, devices or values, ``top_k`` larger than the
            active experts (for a mask on a device: only with ``validate=True``, see above).
        BackendUnavailableError: an explicitly requested backend cannot run this call.
    """
    _checks.tensor(logits, "logits", 2, _checks.FLOAT_DTYPES)
    if score not in ("sigmoid", "softmax"):
        raise ValueError(f"score must be 'sigmoid' or 'softmax', got {score!r}")
    if num_experts is not None and expert_mask is not None:
        raise ValueError("pass num_experts or expert_mask, not both")
    if correction_bias is not None:
        _checks.tensor(correction_bias, "correction_bias", 1, _checks.FLOAT_DTYPES)
        _checks.same_device(correction_bias, "correction_bias", logits, "logits")
    if expert_mask is not None:
        _checks.tensor(expert_mask, "expert_mask", 1, (torch.bool,))
        _checks.same_device(expert_mask, "expert_mask", logits, "logits")
    parent = (expert_mask.shape[0] if expert_mask is not None else
              correction_bias.shape[0] if correction_bias is not None else logits.shape[1])
    if correction_bias is not None and correction_bias.shape[0] != parent:
        raise ValueError(f"correction_bias has {correction_bias.shape[0]} experts but expert_mask has {parent}")
    if num_experts is not None:
        _checks.integer(num_experts, "num_experts", 1, parent)
    if logits.shape[1] != parent and logits.shape[1] != num_experts:
        raise ValueError(f"logits have {logits.shape[1]} experts; expected the parent's {parent}"
                         + (f" or num_experts={num_experts}" if num_experts is not None else ""))
    _checks.integer(top_k, "top_k", 1)
    if expert_mask is not None:
        active = int(expert_mask.sum()) if _checks.on_host_now(expert_mask, validate) else None
    else:
        active = parent if num_experts is None else num_experts
    if active is not None and top_k > active:
        raise ValueError(f"top_k={top_k} is larger than the {active} active experts")
    if not isinstance(scaling, (int, float)) or isinstance(scaling, bool):
        raise TypeError(f"scaling must be a float, got {type(scaling).__name__}")
    _checks.boolean(renormalize, "renormalize")
    _checks.boolean(validate, "validate")
    chosen = _backends.select_backend(SPEC, logits.device, logits.dtype, backend)
    return _moe_route_op(logits, correction_bias, expert_mask, top_k, score,
                         -1 if num_experts is None else num_experts, renormalize, float(scaling), chosen)
