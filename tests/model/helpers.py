"""Shared helpers for the model-layer tests: tiny configs, randomised weights, token ids."""

import torch

from star_elastic.budget import Budget, LayerBudget
from star_elastic.config import ElasticConfig
from star_elastic.model import ElasticModel

# Budgets of tiny_model(): one width per axis everywhere, and per-layer widths with a layer skipped.
UNIFORM = Budget(hidden_size=24, mamba_heads_per_group=3, mamba_head_dim=4, attention_heads_per_group=1,
                 mlp_width=20, moe_experts=4, moe_expert_width=8, moe_shared_width=12)
HETEROGENEOUS = Budget(
    hidden_size=16, moe_experts=3,
    layers=(LayerBudget(mamba_heads_per_group=2, mamba_head_dim=8), None, LayerBudget(moe_expert_width=4),
            LayerBudget(mlp_width=4), LayerBudget(mamba_heads_per_group=1, mamba_head_dim=3)),
    skip_layers={1},
)


def toy_config(**overrides) -> ElasticConfig:
    """A router/trainer-sized config (hidden 64, width granularity 8): enough width choices per axis
    for budgets such as 70% and 45% to differ, still trainable in seconds."""
    fields = dict(layer_pattern="M*-EM-", vocab_size=64, hidden_size=64, mamba_num_heads=8,
                  mamba_head_dim=16, mamba_num_groups=2, mamba_state_size=8,
                  num_attention_heads=4, num_key_value_heads=2, attention_head_dim=16,
                  mlp_intermediate_size=128, moe_num_experts=8, moe_top_k=2,
                  moe_intermediate_size=32, moe_shared_intermediate_size=32, width_granularity=8)
    fields.update(overrides)
    return ElasticConfig(**fields)


def tiny_config(pattern: str = "M*E-M", **overrides) -> ElasticConfig:
    """A small hybrid config exercising every layer kind (hidden 32, 2 Mamba groups, 2 KV heads)."""
    fields = dict(
        layer_pattern=pattern, vocab_size=64, hidden_size=32,
        mamba_num_heads=8, mamba_head_dim=8, mamba_num_groups=2, mamba_state_size=8, mamba_chunk_size=4,
        num_attention_heads=4, num_key_value_heads=2, attention_head_dim=8, mlp_intermediate_size=48,
        moe_num_experts=6, moe_top_k=2, moe_intermediate_size=16, moe_shared_intermediate_size=24,
        moe_routed_scaling=2.5,
    )
    fields.update(overrides)
    return ElasticConfig(**fields)


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (norms, biases, A_log, correction bias included) so no test passes by symmetry."""
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        scale = 0.25 if tensor.dim() >= 2 else 0.3
        noise = torch.randn(tensor.shape, generator=generator) * scale
        if name.endswith(("norm.weight", "norm_f.weight")):
            noise = 1.0 + noise  # keep norms away from zero
        tensor.copy_(noise.to(tensor.dtype))
    return module


def tiny_model(pattern: str = "M*E-M", seed: int = 0, **overrides) -> ElasticModel:
    """A randomised tiny ElasticModel in eval mode."""
    torch.manual_seed(seed)
    return randomize_(ElasticModel(tiny_config(pattern, **overrides)), seed).eval()


def input_ids(batch: int = 2, length: int = 9, vocab: int = 64, seed: int = 0) -> torch.Tensor:
    """Random token ids (batch, length)."""
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
