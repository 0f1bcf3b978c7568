"""ElasticConfig (validation, JSON, NemotronHConfig round trip) and Budget resolution/validation."""

import math

import pytest

from star_elastic.budget import Budget, LayerBudget, ResolvedBudget
from star_elastic.config import ElasticConfig

from .helpers import tiny_config


def test_hf_config_round_trip_keeps_every_field():
    config = tiny_config(mamba_dt_limit=(0.002, math.inf), norm_eps=1e-6, moe_renormalize=False)
    hf = config.to_hf()
    assert hf.hybrid_override_pattern == "M*E-M"
    assert (hf.mamba_num_heads, hf.n_groups, hf.num_key_value_heads, hf.n_routed_experts) == (8, 2, 2, 6)
    assert ElasticConfig.from_hf(hf) == config


def test_json_round_trip():
    config = tiny_config(layer_overrides={0: {"mamba_num_heads": 4}})
    assert ElasticConfig.from_dict(config.to_dict()) == config
    assert ElasticConfig.from_dict(__import__("json").loads(config.to_json())) == config


@pytest.mark.parametrize(
    "overrides,field",
    [
        (dict(layer_pattern="M*X"), "layer_pattern"),
        (dict(layer_pattern=""), "layer_pattern"),
        (dict(mamba_num_heads=7), "mamba_num_heads"),
        (dict(num_attention_heads=5), "num_attention_heads"),
        (dict(moe_top_k=7), "moe_top_k"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(layer_overrides={9: {"mamba_num_heads": 4}}), "layer_overrides"),
        (dict(layer_overrides={1: {"mamba_num_heads": 4}}), "layer_overrides"),
        (dict(layer_overrides={0: {"mamba_num_heads": 3}}), "mamba_num_heads"),
    ],
)
def test_config_validation_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(**overrides)


def test_unsupported_transformers_features_are_rejected():
    hf = tiny_config().to_hf()
    hf.mlp_bias = True
    with pytest.raises(ValueError, match="mlp_bias"):
        ElasticConfig.from_hf(hf)
    with pytest.raises(ValueError, match="per-layer"):
        tiny_config(layer_overrides={0: {"mamba_num_heads": 4}}).to_hf()


def test_budget_resolves_globals_overrides_and_skips():
    config = tiny_config()
    plan = Budget(hidden_size=16, mamba_heads_per_group=2, moe_experts=4,
                  layers=(None, None, None, LayerBudget(mlp_width=8), LayerBudget(mamba_head_dim=4)),
                  skip_layers={1}).resolve(config)
    assert plan.hidden_size == 16
    assert plan.layers[1] is None
    assert (plan.layers[0].mamba_heads_per_group, plan.layers[0].mamba_head_dim) == (2, 8)
    assert (plan.layers[4].mamba_heads_per_group, plan.layers[4].mamba_head_dim) == (2, 4)
    assert plan.layers[2].moe_experts == 4 and plan.layers[2].moe_expert_width == 16
    assert plan.layers[3].mlp_width == 8
    full = ResolvedBudget.full(config)
    assert full.hidden_size == 32 and full.layers[0].mamba_heads_per_group == 4


@pytest.mark.parametrize(
    "budget,message",
    [
        (Budget(hidden_size=33), "hidden_size"),
        (Budget(mamba_heads_per_group=5), "mamba_heads_per_group"),
        (Budget(mamba_head_dim=0), "mamba_head_dim"),
        (Budget(attention_heads_per_group=3), "attention_heads_per_group"),
        (Budget(moe_experts=1), "moe_top_k"),
        (Budget(mlp_width=49), "mlp_width"),
        (Budget(layers=(None, None)), "5 layers"),
        (Budget(layers=(LayerBudget(mlp_width=8), None, None, None, None)), "does not have"),
        (Budget(skip_layers={7}), "skip_layers"),
    ],
)
def test_bad_budgets_raise(budget, message):
    with pytest.raises(ValueError, match=message):
        budget.resolve(tiny_config())


def test_granularity_and_budget_for_another_model():
    config = tiny_config(width_granularity=8)
    Budget(hidden_size=24, mlp_width=40).resolve(config)
    with pytest.raises(ValueError, match="width_granularity"):
        Budget(hidden_size=20).resolve(config)
    with pytest.raises(ValueError, match="another model"):
        Budget(moe_experts=4).resolve(tiny_config("M*-"))


def test_resolved_budget_round_trips_and_is_checked_against_the_model():
    from .helpers import tiny_model

    config = tiny_config()
    plan = Budget(hidden_size=16, mamba_heads_per_group=2, mlp_width=8, skip_layers={2}).resolve(config)
    assert plan.to_budget().resolve(config) == plan
    model = tiny_model()
    assert model.resolve_budget(plan) is plan
    bigger = Budget(mlp_width=96).resolve(tiny_config(mlp_intermediate_size=96))
    with pytest.raises(ValueError, match="mlp_width"):
        model.resolve_budget(bigger)
    with pytest.raises(ValueError, match="does not have"):  # layer kinds differ
        model.resolve_budget(ResolvedBudget.full(tiny_config("*ME-M")))
