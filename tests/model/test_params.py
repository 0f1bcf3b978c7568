"""parameter_count: published Nemotron figures (no weights allocated) and numel of real models."""

import pytest

from star_elastic.budget import Budget, LayerBudget
from star_elastic.config import ElasticConfig
from star_elastic.params import parameter_count
from star_elastic.slicing import slice_model

from .helpers import tiny_config, tiny_model

# Field values from shared/reference/paper-method.md §2.1 and §2.2.
NANO_V2_12B = ElasticConfig(
    layer_pattern="M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M-",
    vocab_size=131072, hidden_size=5120, mamba_num_heads=128, mamba_head_dim=80, mamba_num_groups=8,
    mamba_state_size=128, mamba_conv_kernel=4, mamba_chunk_size=128, num_attention_heads=40,
    num_key_value_heads=8, attention_head_dim=128, mlp_intermediate_size=20480,
)
NANO_V3_30B = ElasticConfig(
    layer_pattern="MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME",
    vocab_size=131072, hidden_size=2688, mamba_num_heads=64, mamba_head_dim=64, mamba_num_groups=8,
    mamba_state_size=128, mamba_conv_kernel=4, mamba_chunk_size=128, num_attention_heads=32,
    num_key_value_heads=2, attention_head_dim=128, moe_num_experts=128, moe_top_k=6,
    moe_intermediate_size=1856, moe_shared_intermediate_size=3712, moe_routed_scaling=2.5,
)


def test_published_nemotron_figures():
    v2 = parameter_count(NANO_V2_12B)
    assert round(v2.total / 1e9, 2) == 12.31 and v2.active == v2.total
    v3 = parameter_count(NANO_V3_30B)
    assert round(v3.total / 1e9, 2) == 31.58
    assert round(v3.active / 1e9, 2) == 3.58
    assert round(v3.active_without_embeddings / 1e9, 2) == 3.23


def test_budget_shrinks_the_count():
    full = parameter_count(NANO_V3_30B)
    child = parameter_count(NANO_V3_30B, Budget(hidden_size=2048, mamba_heads_per_group=6, moe_experts=96))
    assert child.total < full.total and child.active < full.active


def _numel(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("pattern", ["M*E-M", "E-E", "*M"])
def test_total_equals_numel_of_instantiated_models(pattern):
    config = tiny_config(pattern)
    model = tiny_model(pattern)
    count = parameter_count(config)
    assert count.total == _numel(model)
    assert count.total_without_embeddings == _numel(model) - model.embeddings.weight.numel()


def test_budget_count_equals_numel_of_sliced_model_and_active_counts_top_k():
    model = tiny_model()
    budget = Budget(hidden_size=24, mamba_heads_per_group=2, moe_experts=4, moe_expert_width=8,
                    layers=(None, None, None, LayerBudget(mlp_width=16), LayerBudget(mamba_head_dim=4)),
                    skip_layers={1})
    child = slice_model(model, budget)
    count = parameter_count(model.config, budget)
    assert count.total == _numel(child) == parameter_count(child.config).total
    experts = child.layers[1].mixer.experts
    per_expert = experts.up_proj[0].numel() + experts.down_proj[0].numel()
    assert count.total - count.active == (4 - model.config.moe_top_k) * per_expert




def test_decode_and_memory_costs_by_hand():
    from star_elastic.params import decode_bytes_per_token, memory_bytes

    # One Mamba layer and one attention layer, counted by hand.
    config = ElasticConfig(layer_pattern="M*", vocab_size=10, hidden_size=8, mamba_num_heads=4,
                           mamba_head_dim=2, mamba_num_groups=2, mamba_state_size=3,
                           mamba_conv_kernel=4, num_attention_heads=4, num_key_value_heads=2,
                           attention_head_dim=2)
    inner, conv_dim = 4 * 2, 4 * 2 + 2 * 2 * 3  # 8, 20
    mamba = 8 + 8 * (inner + conv_dim + 4) + (conv_dim * 4 + conv_dim) + 3 * 4 + inner + inner * 8
    attention = 8 + 2 * 8 * 4 * 2 + 2 * 8 * 2 * 2
    head_and_norm = 10 * 8 + 8
    assert decode_bytes_per_token(config) == 2 * (head_and_norm + mamba + attention + 8)
    assert decode_bytes_per_token(config, weight_bytes=1) == head_and_norm + mamba + attention + 8
    weights = 2 * (10 * 8 + head_and_norm + mamba + attention)
    kv = 2 * 2 * 2 * 5 * 2  # K and V, 2 KV heads of 2 channels, 5 tokens, bf16
    ssm = inner * 3 * 4 + conv_dim * 3 * 2  # fp32 state + bf16 conv window of 3 inputs
    assert memory_bytes(config, context=5) == weights + kv + ssm
    # Skipping the attention layer drops its weights and its cache.
    assert memory_bytes(config, Budget(skip_layers={1}), context=5) == weights - 2 * attention + ssm
    # Halving the Mamba heads per group halves its state (one head of 2 channels per group).
    half = Budget(mamba_heads_per_group=1)
    assert memory_bytes(config, half, context=5) - memory_bytes(config, context=5) == pytest.approx(
        2 * (parameter_count(config, half).total - parameter_count(config).total)
        - (inner // 2) * 3 * 4 - (inner // 2) * 3 * 2)
