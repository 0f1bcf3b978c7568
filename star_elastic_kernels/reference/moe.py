"""Pure-PyTorch reference for the elastic MoE ops (the specification; DESIGN §3.2).

Conventions: ``T`` tokens, ``E`` parent experts, ``k`` experts per token, ``D`` parent hidden size,
``F`` parent expert-FFN width. Elastic widths are arguments: ``num_experts=e`` keeps the first ``e``
(importance-sorted) experts (``expert_mask`` (E,) bool is the general form), ``ffn_width=r`` the first
``r`` neurons of every expert, ``hidden_width=d`` the first ``d`` hidden channels. Activations are
compact ((T, d)); weights keep the parent layout and are read at ``[:, :r, :d]`` / ``[:, :d, :r]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["moe_route", "moe_ffn", "relu2", "moe_align", "grouped_gemm"]


def relu2(x: torch.Tensor) -> torch.Tensor:
    """Squared ReLU, Nemotron-H's MLP and expert activation: ``relu(x)**2``."""
    return torch.square(F.relu(x))


def _active_experts(num_parent: int, num_experts: int | None, expert_mask: torch.Tensor | None, device):
    """(E,) bool mask of the experts that may be chosen."""
    if num_experts is not None and expert_mask is not None:
        raise ValueError("pass num_experts or expert_mask, not both")
    if expert_mask is not None:
        if expert_mask.shape != (num_parent,) or expert_mask.dtype != torch.bool:
            raise ValueError(f"expert_mask must be a ({num_parent},) bool tensor, got {tuple(expert_mask.shape)} {expert_mask.dtype}")
        return expert_mask.to(device)
    e = num_parent if num_experts is None else int(num_experts)
    if not 1 <= e <= num_parent:
        raise ValueError(f"num_experts={e} must be in [1, {num_parent}]")
    return torch.arange(num_parent, device=device) < e


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k routing with Nemotron-v3 semantics.

    * ``logits`` (T, E) router logits over the parent's experts (any float dtype; scored in fp32).
      With ``num_experts=e``, logits may also be compact (T, e).
    * ``score``: ``"sigmoid"`` or ``"softmax"`` (softmax over the active experts only).
    * ``correction_bias`` (E,) parent: added to the scores **for the choice only**.
    * ``num_experts`` / ``expert_mask``: masked experts can never be chosen.
    * the weights are the unbiased scores of the chosen experts, renormalised over the k chosen
      (``renormalize``; denominator + 1e-20 as in Nemotron-H), times ``scaling``.

    Returns ``(weights (T, k) fp32, ids (T, k) int32)``; ids index the parent's experts.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (T, E), got {tuple(logits.shape)}")
    if score not in ("sigmoid", "softmax"):
        raise ValueError(f"score={score!r} must be 'sigmoid' or 'softmax'")
    if expert_mask is not None:
        num_parent = expert_mask.shape[0]
    elif correction_bias is not None:
        num_parent = correction_bias.shape[0]
    else:
        num_parent = logits.shape[1]
    active = _active_experts(num_parent, num_experts, expert_mask, logits.device)
    if logits.shape[1] != num_parent:
        # Compact logits: only the first e experts were projected.
        if num_experts is None or logits.shape[1] != num_experts:
            raise ValueError(f"logits have {logits.shape[1]} experts; expected {num_parent} or num_experts={num_experts}")
        active = active[:num_experts]
    if top_k < 1:
        raise ValueError(f"top_k={top_k} must be >= 1")
    if expert_mask is None:
        num_active = num_parent if num_experts is None else num_experts
    else:  # counting a mask's experts needs its values, which a compiled graph cannot branch on
        num_active = None if torch.compiler.is_compiling() else int(expert_mask.sum())
    if num_active is not None and top_k > num_active:
        raise ValueError(f"top_k={top_k} is larger than the {num_active} active experts")

    logits = logits.float()
    blocked = torch.full_like(logits, float("-inf"))
    if score == "sigmoid":
        scores = torch.sigmoid(logits)
    else:
        scores = torch.softmax(torch.where(active, logits, blocked), dim=-1)
    choice = scores
    if correction_bias is not None:
        choice = scores + correction_bias[: logits.shape[1]].float()
    choice = torch.where(active, choice, blocked)
    ids = torch.topk(choice, top_k, dim=-1).indices
    weights = scores.gather(1, ids)
    if renormalize:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * scaling, ids.to(torch.int32)


def _ffn(x: torch.Tensor, up: torch.Tensor, down: torch.Tensor, activation: str) -> torch.Tensor:
    """One expert: x (T, d), up (r, d) or (2r, d) for silu_glu, down (d, r) -> (T, d)."""
    h = F.linear(x, up)
    if activation == "relu2":
        h = relu2(h)
    else:
        gate, value = h.chunk(2, dim=-1)
        h = F.silu(gate) * value
    return F.linear(h, down)


def _up_rows(up: torch.Tensor, glu: int, r: int, d: int) -> torch.Tensor:
    """The active rows of one up projection (glu*F, D): the first r neurons (of each GLU half), first d inputs."""
    if glu == 1:
        return up[:r, :d]
    half = up.shape[0] // 2
    return torch.cat([up[:r, :d], up[half : half + r, :d]])


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
) -> torch.Tensor:
    """Routed expert FFN (a loop over experts) plus an optional shared expert, at an elastic width.

    * ``hidden`` (T, d) compact, ``d = hidden_width or D``.
    * ``w_up`` (E, F, D) (``(E, 2F, D)`` for ``activation="silu_glu"``: gate rows then value rows),
      ``w_down`` (E, D, F): parent layout, read at ``[:, :r, :d]`` / ``[:, :d, :r]``, ``r = ffn_width or F``.
    * ``weights`` (T, k) routing weights, ``ids`` (T, k) int expert ids (from :func:`moe_route`).
    * ``shared_up`` (Fs, D), ``shared_down`` (D, Fs) parent shared expert, read at ``[:s, :d]`` /
      ``[:d, :s]`` with ``s = shared_width or Fs``; it sees every token with weight 1.
    * ``scaling`` multiplies the routed sum (not the shared expert).

    Returns (T, d) in hidden's dtype: ``scaling * sum_j weights[t,j] * FFN_{ids[t,j]}(hidden[t])
    + shared(hidden[t])``, accumulated in fp32 (fp64 for fp64 inputs). Only experts that appear in ``ids`` contribute, and an
    expert's output is selected (not multiplied by zero) so unused experts can hold any values.
    """
    if activation not in ("relu2", "silu_glu"):
        raise ValueError(f"activation={activation!r} must be 'relu2' or 'silu_glu'")
    if hidden.dim() != 2 or w_up.dim() != 3 or w_down.dim() != 3:
        raise ValueError("moe_ffn expects hidden (T,d), w_up (E,F,D) and w_down (E,D,F)")
    num_experts, parent_d, parent_f = w_down.shape
    glu = 2 if activation == "silu_glu" else 1
    if w_up.shape != (num_experts, glu * parent_f, parent_d):
        raise ValueError(f"w_up {tuple(w_up.shape)} must be {(num_experts, glu * parent_f, parent_d)} for {activation}")
    d = parent_d if hidden_width is None else int(hidden_width)
    r = parent_f if ffn_width is None else int(ffn_width)
    if not 1 <= d <= parent_d:
        raise ValueError(f"hidden_width={d} must be in [1, {parent_d}]")
    if not 1 <= r <= parent_f:
        raise ValueError(f"ffn_width={r} must be in [1, {parent_f}]")
    if hidden.shape[1] != d:
        raise ValueError(f"hidden has {hidden.shape[1]} channels but hidden_width is {d}")
    if weights.shape != ids.shape or weights.dim() != 2 or weights.shape[0] != hidden.shape[0]:
        raise ValueError(f"weights {tuple(weights.shape)} and ids {tuple(ids.shape)} must both be (T={hidden.shape[0]}, k)")
    if not torch.compiler.is_compiling() and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_experts):
        raise ValueError(f"ids must lie in [0, {num_experts})")

    acc = torch.promote_types(hidden.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs (gradcheck)
    out = hidden.new_zeros(hidden.shape, dtype=acc)
    for expert in range(num_experts):
        routed = ids == expert  # (T, k)
        if not torch.compiler.is_compiling() and not bool(routed.any()):
            continue  # never read an unused expert's weights (eager only; compiled graphs stay static)
        token_weight = (weights.to(acc) * routed).sum(dim=-1, keepdim=True)  # (T, 1)
        expert_out = _ffn(hidden, _up_rows(w_up[expert], glu, r, d), w_down[expert, :d, :r], activation).to(acc)
        out = out + torch.where(routed.any(dim=-1, keepdim=True), token_weight * expert_out, 0.0)
    out = out * scaling

    if shared_up is not None or shared_down is not None:
        if shared_up is None or shared_down is None:
            raise ValueError("shared_up and shared_down must be given together")
        parent_s = shared_up.shape[0] // glu
        s = parent_s if shared_width is None else int(shared_width)
        if not 1 <= s <= parent_s:
            raise ValueError(f"shared_width={s} must be in [1, {parent_s}]")
        out = out + _ffn(hidden, _up_rows(shared_up, glu, s, d), shared_down[:d, :s], activation).to(acc)
    return out.to(hidden.dtype)


def moe_align(ids: torch.Tensor, num_experts: int, block_m: int):
    """Group the (token, k) slots by expert (a loop over experts).

    * ``ids`` (T, k) int expert ids; slot ``t * k + j`` is token t's j-th choice.
    * ``block_m``: the row-block size a grouped GEMM uses; an expert with c tokens needs
      ``ceil(c / block_m)`` blocks, so an expert with no tokens (a masked one in particular) needs none.

    Returns ``(sorted_slots (T*k,), counts (E,), expert_offsets (E+1,), block_offsets (E+1,))``, all
    int32: the slots of expert 0 in increasing order, then expert 1's, ...; ``counts[e]`` tokens of
    expert e, whose slots are ``sorted_slots[expert_offsets[e]:expert_offsets[e+1]]``; its row blocks are
    ``block_offsets[e]:block_offsets[e+1]``.
    """
    flat = ids.reshape(-1).long()
    runs = [torch.nonzero(flat == expert).flatten() for expert in range(num_experts)]
    counts = torch.tensor([len(run) for run in runs], dtype=torch.int64)
    blocks = (counts + block_m - 1) // block_m
    zero = torch.zeros(1, dtype=torch.int64)
    sorted_slots = torch.cat([zero[:0], *runs]) if runs else zero[:0]
    as_int = lambda t: t.to(torch.int32).to(ids.device)  # noqa: E731
    return (as_int(sorted_slots), as_int(counts), as_int(torch.cat([zero, counts.cumsum(0)])),
            as_int(torch.cat([zero, blocks.cumsum(0)])))


def grouped_gemm(a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor, trans_b: bool = True) -> torch.Tensor:
    """One matmul per group of consecutive rows (a loop over groups).

    * ``a`` (M, K); ``offsets`` (G,) int cumulative end rows (``torch._grouped_mm`` convention): group g
      owns rows ``offsets[g-1]:offsets[g]`` (``offsets[-1] == M``).
    * ``b`` (G, N, K) when ``trans_b`` (rows of group g times ``b[g].T``), else (G, K, N) (times ``b[g]``).

    Returns (M, N) in a's dtype.
    """
    num_groups = b.shape[0]
    n = b.shape[1] if trans_b else b.shape[2]
    out = a.new_zeros(a.shape[0], n)
    ends = [int(v) for v in offsets.tolist()]
    start = 0
    for group in range(num_groups):
        end = ends[group]
        if end > start:
            weight = b[group].T if trans_b else b[group]
            out[start:end] = a[start:end] @ weight
        start = end
    return out
