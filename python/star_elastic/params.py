"""Parameter counts from a config (and optionally a budget), without allocating any weights.

"Total" counts every parameter of the (sub)model; "active" counts what one token touches: MoE
layers contribute only their router, shared expert and ``top_k`` routed experts. "Without
embeddings" drops the input embedding table (the LM head is a matmul every token pays for), which
is how the published Nemotron Nano v3 figure (3.23B active without embeddings) is stated. Buffers
(the MoE correction bias) are not parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

from .budget import Budget, LayerWidths, ResolvedBudget
from .config import ElasticConfig

__all__ = ["ParameterCount", "parameter_count", "layer_parameter_count"]


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
