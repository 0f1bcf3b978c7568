"""ElasticModel.from_hf / to_hf: full-budget logits equal transformers' NemotronHForCausalLM."""

import pytest
import torch
from transformers import NemotronHForCausalLM

from star_elastic.config import ElasticConfig
from star_elastic.model import ElasticModel

from .helpers import input_ids, randomize_, tiny_config


def _hf_model(config: ElasticConfig, seed: int) -> NemotronHForCausalLM:
    hf_config = config.to_hf()
    hf_config._experts_implementation = "eager"  # transformers' CPU grouped_mm needs 16-byte strides
    torch.manual_seed(seed)
    model = NemotronHForCausalLM(hf_config).eval()
    return randomize_(model, seed)


@pytest.mark.parametrize(
    "pattern,overrides",
    [
        ("M*E-M", {}),
        ("EM-*M", dict(hidden_size=48, mamba_num_heads=12, mamba_num_groups=3, mamba_head_dim=4, mamba_state_size=6,
                       mamba_conv_kernel=3, num_attention_heads=6, num_key_value_heads=3, moe_num_experts=8,
                       moe_top_k=3, moe_routed_scaling=1.0, moe_renormalize=False, mamba_chunk_size=3)),
    ],
)
def test_full_budget_logits_equal_transformers(pattern, overrides):
    config = tiny_config(pattern, **overrides)
    hf = _hf_model(config, seed=1)
    model = ElasticModel.from_hf(hf)
    assert model.config == config
    ids = input_ids(2, 11, config.vocab_size, seed=1)
    with torch.no_grad():
        # One forward, no cache: transformers 5.25's DynamicCache fails when layer 0 is an MoE layer.
        expected = hf(ids, use_cache=False).logits
        got = model(ids)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_from_local_checkpoint_directory_and_to_hf(tmp_path):
    config = tiny_config()
    hf = _hf_model(config, seed=2)
    hf.save_pretrained(tmp_path)
    model = ElasticModel.from_hf(str(tmp_path))
    ids = input_ids(1, 8, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids, use_cache=False).logits, atol=1e-4, rtol=1e-4)
        back = model.to_hf()
        back.config._experts_implementation = "eager"
        torch.testing.assert_close(back(ids, use_cache=False).logits, hf(ids, use_cache=False).logits, atol=1e-5, rtol=1e-5)


def test_from_hf_copies_weights_and_rejects_non_directories(tmp_path):
    hf = _hf_model(tiny_config("M-"), seed=3)
    model = ElasticModel.from_hf(hf)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    assert hf.lm_head.weight.abs().sum() > 0
    with pytest.raises(ValueError, match="local checkpoint directory"):
        ElasticModel.from_hf(str(tmp_path / "missing"))


