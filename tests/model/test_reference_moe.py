"""The pure-PyTorch MoE references: routing against transformers' router, the FFN against a
token-by-token computation, and the nesting invariant against sliced copies."""

import pytest
import torch
from transformers import NemotronHConfig
from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHTopkRouter

from star_elastic_kernels.reference.moe import moe_ffn, moe_route, relu2

T, E, K, D, F_, S = 13, 8, 3, 12, 10, 14


def _weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(hidden=torch.randn(T, D, generator=g), up=torch.randn(E, F_, D, generator=g) * 0.3,
                down=torch.randn(E, D, F_, generator=g) * 0.3, shared_up=torch.randn(S, D, generator=g) * 0.3,
                shared_down=torch.randn(D, S, generator=g) * 0.3, router=torch.randn(E, D, generator=g),
                bias=torch.randn(E, generator=g) * 0.2)


def test_route_matches_transformers_router():
    w = _weights()
    cfg = NemotronHConfig(hidden_size=D, n_routed_experts=E, num_experts_per_tok=K, routed_scaling_factor=2.5)
    router = NemotronHTopkRouter(cfg)
    router.weight.data.copy_(w["router"])
    router.e_score_correction_bias.copy_(w["bias"])
    _, their_weights, their_ids = router(w["hidden"])
    weights, ids = moe_route(w["hidden"] @ w["router"].T, top_k=K, correction_bias=w["bias"], scaling=2.5)
    assert ids.dtype == torch.int32 and weights.dtype == torch.float32
    order, their_order = ids.sort(-1), their_ids.sort(-1)
    assert torch.equal(order.values.long(), their_order.values)
    torch.testing.assert_close(weights.gather(1, order.indices), their_weights.gather(1, their_order.indices))


@pytest.mark.parametrize("score", ["sigmoid", "softmax"])
def test_route_prefix_equals_route_on_sliced_logits_and_masked_experts_never_chosen(score):
    w = _weights(1)
    logits = w["hidden"] @ w["router"].T
    weights, ids = moe_route(logits, top_k=K, score=score, correction_bias=w["bias"], num_experts=5)
    dense_w, dense_ids = moe_route(logits[:, :5].clone(), top_k=K, score=score, correction_bias=w["bias"][:5].clone())
    assert torch.equal(ids, dense_ids)
    torch.testing.assert_close(weights, dense_w)
    compact_w, compact_ids = moe_route(logits[:, :5], top_k=K, score=score, correction_bias=w["bias"], num_experts=5)
    assert torch.equal(compact_ids, ids)
    mask = torch.tensor([True, False, True, True, False, True, False, True])
    _, masked_ids = moe_route(logits, top_k=K, score=score, expert_mask=mask)
    assert mask[masked_ids.long()].all()


def _token_by_token(hidden, up, down, weights, ids, shared_up, shared_down):
    out = torch.zeros_like(hidden)
    for t in range(hidden.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            out[t] += weights[t, j] * (down[e] @ relu2(up[e] @ hidden[t]))
        out[t] += shared_down @ relu2(shared_up @ hidden[t])
    return out


def test_ffn_matches_token_by_token_computation():
    w = _weights(2)
    weights, ids = moe_route(w["hidden"] @ w["router"].T, top_k=K, correction_bias=w["bias"])
    got = moe_ffn(w["hidden"], w["up"], w["down"], weights, ids, shared_up=w["shared_up"], shared_down=w["shared_down"])
    want = _token_by_token(w["hidden"], w["up"], w["down"], weights, ids, w["shared_up"], w["shared_down"])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("e,r,d,s", [(8, 10, 12, 14), (5, 7, 9, 3), (3, 1, 4, 1)])
def test_ffn_nesting_equals_sliced_copies_and_skips_masked_experts(e, r, d, s):
    w = _weights(3)
    hidden = w["hidden"][:, :d].contiguous()
    weights, ids = moe_route(hidden @ w["router"][:, :d].T, top_k=min(K, e), num_experts=e)
    up, down = w["up"].clone(), w["down"].clone()
    up[e:], down[e:] = float("nan"), float("nan")  # masked experts must never be read
    got = moe_ffn(hidden, up, down, weights, ids, ffn_width=r, hidden_width=d, shared_up=w["shared_up"],
                  shared_down=w["shared_down"], shared_width=s)
    want = moe_ffn(hidden, w["up"][:e, :r, :d].clone(), w["down"][:e, :d, :r].clone(), weights, ids,
                   shared_up=w["shared_up"][:s, :d].clone(), shared_down=w["shared_down"][:d, :s].clone())
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_empty_and_bad_inputs():
    w = _weights(4)
    weights, ids = moe_route(torch.zeros(0, E), top_k=K)
    assert weights.shape == (0, K) and ids.shape == (0, K)
    assert moe_ffn(torch.zeros(0, D), w["up"], w["down"], weights, ids).shape == (0, D)
    with pytest.raises(ValueError, match="top_k"):
        moe_route(torch.randn(4, E), top_k=3, num_experts=2)
    with pytest.raises(ValueError, match="top_k"):
        moe_route(torch.randn(4, E), top_k=3, expert_mask=torch.arange(E) < 2)
    with pytest.raises(ValueError, match="num_experts"):
        moe_route(torch.randn(4, E), top_k=2, num_experts=E + 1)
    with pytest.raises(ValueError, match="ffn_width"):
        moe_ffn(w["hidden"], w["up"], w["down"], *moe_route(torch.randn(T, E), top_k=2), ffn_width=F_ + 1)
    with pytest.raises(ValueError, match="hidden_width"):
        moe_ffn(w["hidden"], w["up"], w["down"], *moe_route(torch.randn(T, E), top_k=2), hidden_width=D - 1)
    with pytest.raises(ValueError, match="ids"):
        moe_ffn(w["hidden"], w["up"], w["down"], torch.ones(T, 2), torch.full((T, 2), E))
    with pytest.raises(ValueError, match="silu_glu"):
        moe_ffn(w["hidden"], w["up"], w["down"], torch.ones(T, 2), torch.zeros(T, 2, dtype=torch.int32),
                activation="silu_glu")
