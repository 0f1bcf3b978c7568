"""Parameter counts and the resource costs built on them, from a config (and optionally a budget),
without allocating any weights.

"Total" counts every parameter of the (sub)model; "active" counts what one token touches: MoE
layers contribute only their router, shared expert and ``top_k`` routed experts. "Without
embeddings" drops the input embedding table (the LM head is a matmul every token pays for), which
is how the published Nemotron Nano v3 figure (3.23B active without embeddings) is stated. Buffers
(the MoE correction bias) are not parameters.

Costs a budget can be chosen for (``COST_KINDS``, the router's ``cost=``): ``"active"`` and
``"total"`` parameters, and ``"memory"``, the bytes a deployment holds for one sequence: every
weight plus the decoding caches at a context length (attention K/V, Mamba SSM and conv states).
:func:`decode_bytes_per_token` is the memory-bound cost of one decoded token: the active weights it
reads (the input embedding contributes one row, not its table).
"""

from __future__ import annotations

from dataclasses import dataclass

from .budget import Budget, LayerWidths, ResolvedBudget
from .config import ElasticConfig

__all__ = ["ParameterCount", "parameter_count", "layer_parameter_count", "layer_cache_bytes",
           "memory_bytes", "decode_bytes_per_token", "COST_KINDS"]

COST_KINDS = ("active", "total", "memory")


@dataclass(frozen=True)
class ParameterCount:
    """Parameter counts of a (sub)model."""

    total: int
    active: int
    total_without_embeddings: int
    active_without_embeddings: int


def layer_parameter_count(config: ElasticConfig, widths: LayerWidths, hidden: int) -> tuple[int, int]:
    """(total, active) parameters of one block (its pre-norm included) at ``widths`` and hidden size ``hidden``."""
    norm = hidden
    if widths.kind == "M":
        groups, state = config.mamba_num_groups, config.mamba_state_size
        heads = groups * widths.mamba_heads_per_group
        inner = heads * widths.mamba_head_dim
        conv_dim = inner + 2 * groups * state
        in_proj = hidden * (inner + conv_dim + heads)
        conv = conv_dim * config.mamba_conv_kernel + (conv_dim if config.mamba_conv_bias else 0)
        count = in_proj + conv + 3 * heads + inner + inner * hidden  # dt_bias, A_log, D; gated norm; out_proj
        return norm + count, norm + count
    if widths.kind == "*":
        head_dim, kv = config.attention_head_dim, config.num_key_value_heads
        q_heads = kv * widths.attention_heads_per_group
        count = 2 * hidden * q_heads * head_dim + 2 * hidden * kv * head_dim
        return norm + count, norm + count
    if widths.kind == "-":
        count = 2 * hidden * widths.mlp_width
        return norm + count, norm + count
    router = widths.moe_experts * hidden
    expert = 2 * hidden * widths.moe_expert_width
    shared = 2 * hidden * widths.moe_shared_width
    total = norm + router + widths.moe_experts * expert + shared
    active = norm + router + config.moe_top_k * expert + shared
    return total, active


def parameter_count(config: ElasticConfig, budget: Budget | ResolvedBudget | None = None) -> ParameterCount:
    """Total and active parameter counts of ``config`` at ``budget`` (default: the whole model)."""
    plan = budget if isinstance(budget, ResolvedBudget) else (budget or Budget()).resolve(config)
    hidden = plan.hidden_size
    embedding = config.vocab_size * hidden
    head_and_final_norm = config.vocab_size * hidden + hidden
    total = active = embedding + head_and_final_norm
    for widths in plan.layers:
        if widths is not None:
            layer_total, layer_active = layer_parameter_count(config, widths, hidden)
            total += layer_total
            active += layer_active
    return ParameterCount(total, active, total - embedding, active - embedding)


def layer_cache_bytes(config: ElasticConfig, widths: LayerWidths, *, context: int,
                      cache_bytes: int = 2, state_bytes: int = 4):
    """Decoding-cache bytes of one kept layer for one sequence of ``context`` tokens.

    Attention keeps K and V for every token (``2 * kv_heads * head_dim`` values; query heads, the
    elastic axis, cost none); Mamba keeps its SSM state ``(heads, head_dim, state)`` in
    ``state_bytes`` (fp32, as Nemotron Nano v3's ``mamba_ssm_cache_dtype``) and the last
    ``conv_kernel - 1`` inputs of its conv channels; MLP and MoE layers keep nothing. Works on
    tensor widths too (the router's differentiable cost)."""
    if widths.kind == "*":
        return 2 * config.num_key_value_heads * config.attention_head_dim * context * cache_bytes
    if widths.kind == "M":
        groups, state = config.mamba_num_groups, config.mamba_state_size
        inner = groups * widths.mamba_heads_per_group * widths.mamba_head_dim
        conv_dim = inner + 2 * groups * state
        return inner * state * state_bytes + conv_dim * (config.mamba_conv_kernel - 1) * cache_bytes
    return 0


def memory_bytes(config: ElasticConfig, budget: Budget | ResolvedBudget | None = None, *,
                 context: int, weight_bytes: int = 2, cache_bytes: int = 2, state_bytes: int = 4) -> int:
    """Bytes a deployment of ``config`` at ``budget`` holds for one sequence of ``context`` tokens:
    every weight in ``weight_bytes`` (2 = BF16) plus every kept layer's :func:`layer_cache_bytes`."""
    plan = budget if isinstance(budget, ResolvedBudget) else (budget or Budget()).resolve(config)
    caches = sum(layer_cache_bytes(config, widths, context=context, cache_bytes=cache_bytes,
                                   state_bytes=state_bytes)
                 for widths in plan.layers if widths is not None)
    return parameter_count(config, plan).total * weight_bytes + caches


def decode_bytes_per_token(config: ElasticConfig, budget: Budget | ResolvedBudget | None = None, *,
                           weight_bytes: int = 2) -> int:
    """Weight bytes one decoded token reads at ``budget`` (batch 1, memory-bound): the active
    parameters without the input embedding table, plus the one embedding row it looks up."""
    plan = budget if isinstance(budget, ResolvedBudget) else (budget or Budget()).resolve(config)
    return (parameter_count(config, plan).active_without_embeddings + plan.hidden_size) * weight_bytes
