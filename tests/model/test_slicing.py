"""slice_model == masked parent; export to transformers / own format and reload."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import NemotronHForCausalLM

from star_elastic.budget import Budget
from star_elastic.slicing import ELASTIC_CONFIG_NAME, export, load, slice_model

from .helpers import HETEROGENEOUS, UNIFORM, input_ids, tiny_config, tiny_model


@pytest.mark.parametrize("budget", [Budget(), UNIFORM, HETEROGENEOUS, Budget(skip_layers={0, 2, 3})],
                         ids=["full", "uniform", "heterogeneous", "depth"])
def test_sliced_model_equals_masked_parent(budget):
    parent = tiny_model(seed=5)
    child = slice_model(parent, budget)
    ids = input_ids(2, 9, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(child(ids), parent(ids, budget), atol=1e-5, rtol=1e-5)
    plan = parent.resolve_budget(budget)
    assert child.config.num_layers == sum(w is not None for w in plan.layers)
    assert child.embeddings.weight.shape == (64, plan.hidden_size)
    # real smaller tensors, not views of the parent
    assert all(p.untyped_storage().data_ptr() != q.untyped_storage().data_ptr()
               for p in child.parameters() for q in parent.parameters())


def test_smaller_budget_changes_the_output():
    parent = tiny_model(seed=6)
    ids = input_ids(seed=6)
    with torch.no_grad():
        assert not torch.allclose(parent(ids), parent(ids, UNIFORM), atol=1e-3)


def test_export_uniform_budget_reloads_in_transformers(tmp_path):
    parent = tiny_model(seed=7)
    assert export(parent, UNIFORM, tmp_path) == "nemotron_h"
    assert (tmp_path / "config.json").exists()
    hf = NemotronHForCausalLM.from_pretrained(tmp_path, experts_implementation="eager", use_kernels=False).eval()
    assert hf.config.hidden_size == 24 and hf.config.mamba_num_heads == 6 and hf.config.n_routed_experts == 4
    ids = input_ids(2, 9, seed=7)
    with torch.no_grad():
        expected = parent(ids, UNIFORM)
        torch.testing.assert_close(hf(ids, use_cache=False).logits, expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(load(tmp_path)(ids), expected, atol=1e-5, rtol=1e-5)


def test_export_heterogeneous_budget_uses_own_format(tmp_path):
    parent = tiny_model(seed=8)
    assert export(parent, HETEROGENEOUS, tmp_path) == "star_elastic"
    assert (tmp_path / ELASTIC_CONFIG_NAME).exists() and (tmp_path / "model.safetensors").exists()
    reloaded = load(tmp_path)
    assert reloaded.config.layer_overrides  # per-layer widths survived
    ids = input_ids(seed=8)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids), parent(ids, HETEROGENEOUS), atol=1e-5, rtol=1e-5)


def test_slicing_rejects_bad_budgets():
    parent = tiny_model(seed=9)
    with pytest.raises(ValueError, match="every layer"):
        slice_model(parent, Budget(skip_layers=set(range(5))))
    with pytest.raises(ValueError, match="mlp_width"):
        slice_model(parent, Budget(mlp_width=100))
    with pytest.raises(TypeError, match="Budget"):
        parent(input_ids(), budget={"hidden_size": 8})


def test_masked_training_step_touches_only_the_active_weights():
    parent = tiny_model(seed=10)
    parent.train()
    loss = parent(input_ids(seed=10), UNIFORM).logsumexp(-1).mean()
    loss.backward()
    child = slice_model(parent, UNIFORM)
    inactive = parent.embeddings.weight.grad[:, 24:]
    assert inactive.abs().sum() == 0 and parent.embeddings.weight.grad[:, :24].abs().sum() > 0
    experts = parent.layers[2].mixer.experts
    assert experts.up_proj.grad[4:].abs().sum() == 0 and experts.up_proj.grad[:, 8:].abs().sum() == 0
    mamba = parent.layers[0].mixer
    grad_rows = mamba.in_proj.weight.grad.abs().sum(1)
    assert int((grad_rows > 0).sum()) == child.layers[0].mixer.in_proj.weight.shape[0]


@settings(max_examples=12, deadline=None)
@given(
    hidden=st.integers(1, 32), mamba_k=st.integers(1, 4), mamba_p=st.integers(1, 8), attention_q=st.integers(1, 2),
    mlp=st.integers(1, 48), experts=st.integers(2, 6), expert_width=st.integers(1, 16), shared=st.integers(1, 24),
    skip=st.sets(st.integers(0, 4), max_size=3),
)
def test_random_budgets_sliced_equals_masked(hidden, mamba_k, mamba_p, attention_q, mlp, experts, expert_width,
                                             shared, skip):
    budget = Budget(hidden_size=hidden, mamba_heads_per_group=mamba_k, mamba_head_dim=mamba_p,
                    attention_heads_per_group=attention_q, mlp_width=mlp, moe_experts=experts,
                    moe_expert_width=expert_width, moe_shared_width=shared, skip_layers=skip)
    ids = input_ids(1, 5, seed=hidden)
    with torch.no_grad():
        torch.testing.assert_close(slice_model(_HYPOTHESIS_PARENT, budget)(ids), _HYPOTHESIS_PARENT(ids, budget),
                                   atol=1e-5, rtol=1e-5)


_HYPOTHESIS_PARENT = tiny_model(seed=11)


def test_budget_equals_zeroing_the_dropped_components_of_the_full_model():
    """An independent definition of what a budget keeps: dropping a query head, neuron, expert or
    layer is the same as zeroing its contribution in the full-width parent (group-aware heads)."""
    parent = tiny_model(seed=12)
    budget = Budget(attention_heads_per_group=1, mlp_width=20, moe_experts=4, moe_expert_width=8,
                    moe_shared_width=12, skip_layers={4})
    zeroed = tiny_model(seed=12)
    with torch.no_grad():
        o_proj = zeroed.layers[1].mixer.o_proj.weight.view(32, 2, 2, 8)  # (D, kv, heads per kv, head_dim)
        o_proj[:, :, 1:] = 0  # keep the first query head of every KV group
        zeroed.layers[3].mixer.up_proj.weight[20:] = 0
        moe = zeroed.layers[2].mixer
        moe.gate.e_score_correction_bias[4:] = float("-inf")  # experts 4, 5 can never be chosen
        moe.experts.up_proj[:, 8:] = 0
        moe.shared_experts.up_proj.weight[12:] = 0
        zeroed.layers[4].mixer.out_proj.weight.zero_()
        ids = input_ids(2, 9, seed=12)
        torch.testing.assert_close(parent(ids, budget), zeroed(ids), atol=1e-5, rtol=1e-5)


def test_group_aware_mamba_budget_equals_transformers_on_hand_sliced_weights():
    """Mamba heads: the first k heads of every group and the first p channels of every head, built
    here head by head from the parent's rows and loaded into transformers' own Mamba-2 layer."""
    parent = tiny_model("M", seed=13)
    G, hpg, P, N, k, p = 2, 4, 8, 8, 3, 5
    budget = Budget(mamba_heads_per_group=k, mamba_head_dim=p)
    hf_config = tiny_config("M", mamba_num_heads=G * k, mamba_head_dim=p).to_hf()
    hf = NemotronHForCausalLM(hf_config).eval()
    src, dst = parent.layers[0].mixer, hf.model.layers[0].mixer
    kept = [(g * hpg + j, c) for g in range(G) for j in range(k) for c in range(p)]  # (parent head, channel)
    inner = G * hpg * P
    z_rows = [h * P + c for h, c in kept]
    heads = [g * hpg + j for g in range(G) for j in range(k)]
    with torch.no_grad():
        rows = z_rows + [inner + r for r in z_rows] + list(range(2 * inner, 2 * inner + 2 * G * N)) + \
            [2 * inner + 2 * G * N + h for h in heads]
        dst.in_proj.weight.copy_(src.in_proj.weight[rows])
        conv = z_rows + list(range(inner, inner + 2 * G * N))
        dst.conv1d.weight.copy_(src.conv1d.weight[conv])
        dst.conv1d.bias.copy_(src.conv1d.bias[conv])
        for name in ("dt_bias", "A_log", "D"):
            getattr(dst, name).copy_(getattr(src, name)[heads])
        dst.norm.weight.copy_(src.norm.weight[z_rows])
        dst.out_proj.weight.copy_(src.out_proj.weight[:, z_rows])
        hf.model.layers[0].norm.weight.copy_(parent.layers[0].norm.weight)
        hf.model.embeddings.weight.copy_(parent.embeddings.weight)
        hf.model.norm_f.weight.copy_(parent.norm_f.weight)
        hf.lm_head.weight.copy_(parent.lm_head.weight)
        ids = input_ids(2, 9, seed=13)
        torch.testing.assert_close(parent(ids, budget), hf(ids, use_cache=False).logits, atol=1e-4, rtol=1e-4)


def test_export_of_a_depth_reduced_budget_reloads_in_transformers(tmp_path):
    """Depth nesting: a budget that drops layers (and narrows widths) is a smaller uniform
    nemotron_h model with the remaining layer pattern, and gives the masked parent's logits."""
    parent = tiny_model(seed=8)
    budget = Budget(hidden_size=24, mamba_heads_per_group=3, mlp_width=20, skip_layers={1, 3})
    assert export(parent, budget, tmp_path) == "nemotron_h"
    hf = NemotronHForCausalLM.from_pretrained(tmp_path, experts_implementation="eager", use_kernels=False).eval()
    assert hf.config.num_hidden_layers == 3 and hf.config.hybrid_override_pattern == "MEM"
    ids = input_ids(2, 9, seed=8)
    with torch.no_grad():
        torch.testing.assert_close(hf(ids, use_cache=False).logits, parent(ids, budget), atol=1e-4, rtol=1e-4)
