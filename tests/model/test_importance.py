"""estimate_importance and permute_: scores against transformers' activations, function-preserving
permutation, prefixes sorted by importance afterwards, planted unimportant components ranked last."""

import pytest
import torch
from transformers import NemotronHForCausalLM

from star_elastic.budget import Budget
from star_elastic.importance import estimate_importance, permute_, rank_layers

from .helpers import input_ids, tiny_model

BATCHES = [input_ids(2, 8, seed=s) for s in (10, 11)]


def _is_descending(scores, rtol=1e-4):
    return bool((scores[1:] <= scores[:-1] * (1 + rtol) + 1e-6).all())


def test_scores_match_activations_captured_from_transformers():
    model = tiny_model(seed=12)
    importance = estimate_importance(model, BATCHES, rank_depth=False)
    hf_config = model.config.to_hf()
    hf_config._experts_implementation = "eager"
    hf = NemotronHForCausalLM(hf_config).eval()
    hf.load_state_dict({("model." + k if not k.startswith("lm_head") else k): v for k, v in model.state_dict().items()})
    hidden = torch.zeros(32, dtype=torch.float64)
    captured = {}

    def norm_hook(_, __, out):
        hidden.add_(out.abs().sum((0, 1)).double())

    def save(name, take_input):
        def hook(_, args, out):
            value = (args[0] if take_input else out).detach()
            captured[name] = captured.get(name, 0) + value.double().pow(2 if name != "mlp" else 1).abs().sum((0, 1))
        return hook

    layers = hf.model.layers
    for layer in layers:
        layer.norm.register_forward_hook(norm_hook)
    layers[0].mixer.in_proj.register_forward_hook(save("mamba", False))
    layers[1].mixer.o_proj.register_forward_hook(save("attention", True))
    layers[3].mixer.down_proj.register_forward_hook(save("mlp", True))
    with torch.no_grad():
        for ids in BATCHES:
            hf(ids, use_cache=False)
    torch.testing.assert_close(importance.hidden.double(), hidden, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(importance.mlp_neurons[3].double(), captured["mlp"], rtol=1e-4, atol=1e-4)
    x_squares = captured["mamba"][64:128].view(8, 8)  # x rows of in_proj: (H, P)
    torch.testing.assert_close(importance.mamba_channels[0].double(), x_squares.sum(0).sqrt(), rtol=1e-4, atol=1e-4)
    # eq. 4 by default: heads scored on the D_top best channels, D_top = the smallest head_dim the
    # router can choose (head_dim 8, granularity 1: the 25% fraction, 2 channels)
    top2 = x_squares.sum(0).argsort(descending=True)[:2]
    torch.testing.assert_close(importance.mamba_heads[0].double(), x_squares[:, top2].sum(1).sqrt(), rtol=1e-4, atol=1e-4)
    every = estimate_importance(model, BATCHES, rank_depth=False, mamba_head_channels="all")
    torch.testing.assert_close(every.mamba_heads[0].double(), x_squares.sum(1).sqrt(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="mamba_head_channels"):
        estimate_importance(model, BATCHES, rank_depth=False, mamba_head_channels=9)
    top3 = x_squares.sum(0).argsort(descending=True)[:3]  # D_top: heads scored on the 3 best channels
    top_scores = estimate_importance(model, BATCHES[:1] + BATCHES[1:], rank_depth=False, mamba_head_channels=3)
    torch.testing.assert_close(top_scores.mamba_heads[0].double(), x_squares[:, top3].sum(1).sqrt(), rtol=1e-4, atol=1e-4)
    heads = captured["attention"].view(4, 8).sum(1).sqrt()
    torch.testing.assert_close(importance.attention_heads[1].double(), heads, rtol=1e-4, atol=1e-4)


def test_reap_matches_per_token_definition():
    model = tiny_model("E", seed=13)
    importance = estimate_importance(model, BATCHES, rank_depth=False)
    mixer = model.layers[0].mixer
    totals, counts = torch.zeros(6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
    with torch.no_grad():
        for ids in BATCHES:
            tokens = model.layers[0].norm(model.embeddings(ids)).reshape(-1, 32)
            logits = tokens @ mixer.gate.weight.T
            scores = torch.sigmoid(logits)
            chosen = torch.topk(scores + mixer.gate.e_score_correction_bias, 2).indices
            for t in range(tokens.shape[0]):
                gates = scores[t, chosen[t]] / scores[t, chosen[t]].sum() * 2.5
                for gate, e in zip(gates, chosen[t].tolist()):
                    out = mixer.experts.down_proj[e] @ torch.relu(mixer.experts.up_proj[e] @ tokens[t]).square()
                    totals[e] += float(gate * out.norm())
                    counts[e] += 1
    torch.testing.assert_close(importance.moe_experts[0].double(), totals / counts.clamp(min=1), rtol=1e-4, atol=1e-6)


def test_permutation_preserves_logits_and_sorts_every_axis():
    model = tiny_model(seed=14)
    ids = input_ids(2, 9, seed=14)
    with torch.no_grad():
        before = model(ids)
        reference_state = {k: v.clone() for k, v in model.state_dict().items()}
    importance = estimate_importance(model, BATCHES, rank_depth=False)
    applied = permute_(model, importance)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), before, atol=1e-5, rtol=1e-5)
    assert not torch.equal(model.embeddings.weight, reference_state["embeddings.weight"])
    assert not torch.equal(applied["hidden"], torch.arange(32))
    after = estimate_importance(model, BATCHES, rank_depth=False)
    assert _is_descending(after.hidden)
    assert _is_descending(after.mlp_neurons[3])
    for layer in (0, 4):
        assert _is_descending(after.mamba_channels[layer])
        assert all(_is_descending(group) for group in after.mamba_heads[layer].view(2, 4))
    assert all(_is_descending(group) for group in after.attention_heads[1].view(2, 2))
    assert _is_descending(after.moe_experts[2])
    assert all(_is_descending(row) for row in after.moe_expert_neurons[2])
    assert _is_descending(after.moe_shared_neurons[2])


def test_planted_dead_components_rank_last_and_layers_by_logit_mse():
    model = tiny_model(seed=15)
    with torch.no_grad():
        model.layers[3].mixer.up_proj.weight[5].zero_()  # dead MLP neuron 5
        model.layers[0].mixer.in_proj.weight[64 + 8 * 1 : 64 + 8 * 2].zero_()  # x rows of Mamba head 1 (group 0)
        model.layers[4].mixer.out_proj.weight.zero_()  # layer 4 contributes nothing
        model.layers[2].mixer.experts.down_proj[3].zero_()  # expert 3 outputs zeros
    importance = estimate_importance(model, BATCHES)
    assert importance.mlp_neurons[3].argmin() == 5
    assert importance.mamba_heads[0][:4].argmin() == 1
    assert importance.moe_experts[2].argmin() == 3
    assert importance.layer_order[-1] == 4
    assert sorted(importance.layer_order) == list(range(5))
    budget = importance.depth_budget(3)
    assert isinstance(budget, Budget) and 4 in budget.skip_layers and len(budget.skip_layers) == 2


def _fields(importance):
    """Every score of an Importance as a flat dict of tensors (for comparing two estimates)."""
    out = {"hidden": importance.hidden}
    for name in ("mlp_neurons", "mamba_channels", "mamba_heads", "attention_heads", "moe_experts",
                 "moe_expert_neurons", "moe_shared_neurons"):
        for layer, scores in getattr(importance, name).items():
            out[f"{name}[{layer}]"] = scores
    return out


def test_padded_positions_count_in_no_score_when_masked():
    """Right padding (what a batch of samples of different lengths gets) must not rank anything:
    with the real-token masks the scores and the layer order are those of the unpadded prefixes
    (the model is causal, so the real tokens do not see the padding), whatever the padding holds;
    without masks the padding's activations change the scores."""
    model = tiny_model(seed=16)
    real = 6
    prefixes = [input_ids(2, real, seed=s) for s in (20, 21)]
    padded = [torch.cat([ids, input_ids(2, 10, seed=30 + i)], dim=1) for i, ids in enumerate(prefixes)]
    masks = [torch.arange(16).expand(2, 16) < real for _ in padded]
    want = estimate_importance(model, prefixes)
    got = estimate_importance(model, padded, masks=masks)
    want_fields, got_fields = _fields(want), _fields(got)
    assert want_fields.keys() == got_fields.keys() and len(want_fields) > 5
    for name in want_fields:
        torch.testing.assert_close(got_fields[name], want_fields[name], rtol=1e-5, atol=1e-5,
                                   msg=lambda m: f"{name}: {m}")
    assert got.layer_order == want.layer_order == rank_layers(model, padded, masks=masks)
    unmasked = _fields(estimate_importance(model, padded, rank_depth=False))
    assert any(not torch.allclose(unmasked[name], want_fields[name], rtol=1e-3)
               for name in want_fields)


def test_bad_masks_are_refused_naming_the_argument():
    model = tiny_model(seed=16)
    with pytest.raises(ValueError, match="masks: 1 masks for 2 batches"):
        estimate_importance(model, BATCHES, masks=[torch.ones(2, 8, dtype=torch.bool)])
    with pytest.raises(ValueError, match=r"masks\[1\] must be a tensor of the batch's shape \(2, 8\)"):
        rank_layers(model, BATCHES, masks=[torch.ones(2, 8), torch.ones(2, 7)])
