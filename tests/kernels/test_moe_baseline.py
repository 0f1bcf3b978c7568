"""The vLLM-style fused MoE baseline of the benchmark (bench/baselines/fused_moe_vllm_style.py)
equals our reference moe_ffn, so the numbers it is timed against are a correct MoE. Triton
interpreter on the CPU (fp32, small shapes); the same test runs on a GPU when there is one."""

import os

import pytest
import torch

from bench.baselines import fused_moe_vllm_style as vllm_style
from star_elastic_kernels.reference import moe as reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="needs a GPU or TRITON_INTERPRET=1")


def layer(t, e, k, d_parent, f_parent, activation, num_experts, seed):
    g = torch.Generator().manual_seed(seed)
    glu = 2 if activation == "silu_glu" else 1
    w_up = torch.randn(e, glu * f_parent, d_parent, generator=g) * d_parent ** -0.5
    w_down = torch.randn(e, d_parent, f_parent, generator=g) * f_parent ** -0.5
    w_up[num_experts:] = float("nan")  # experts outside the prefix must never be read
    w_down[num_experts:] = float("nan")
    hidden = torch.randn(t, d_parent, generator=g)
    weights, ids = reference.moe_route(torch.randn(t, e, generator=g), top_k=k,
                                       num_experts=num_experts, scaling=1.0)
    return [x.to(DEVICE) for x in (hidden, w_up, w_down, weights, ids)]


@pytest.mark.parametrize("activation", ["relu2", "silu_glu"])
@pytest.mark.parametrize("t,e,k,num_experts", [(0, 8, 2, 8), (1, 8, 2, 8), (5, 8, 3, 6),
                                               (40, 6, 2, 4), (70, 4, 4, 4)])
@pytest.mark.parametrize("widths", [(None, None), (11, 13)])
def test_vllm_style_baseline_matches_reference(activation, t, e, k, num_experts, widths):
    hidden, w_up, w_down, weights, ids = layer(t, e, k, 24, 20, activation, num_experts, seed=t + e)
    r, d = widths
    hidden = hidden if d is None else hidden[:, :d].contiguous()
    got = vllm_style.fused_experts(hidden, w_up, w_down, weights, ids, activation=activation,
                                   ffn_width=r, scaling=2.5)
    want = reference.moe_ffn(hidden.cpu(), w_up.cpu(), w_down.cpu(), weights.cpu(), ids.cpu(),
                             activation=activation, ffn_width=r, hidden_width=d, scaling=2.5)
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got.cpu(), want, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("block_m", [1, 4, 16])
def test_alignment_pads_each_expert_to_whole_blocks(block_m):
    ids = torch.tensor([[2, 0], [2, 3], [0, 2], [3, 0], [2, 3]], dtype=torch.int32, device=DEVICE)
    sorted_ids, expert_ids, num_post = vllm_style.moe_align_block_size(ids, block_m, 5)
    counts = [3, 0, 4, 3, 0]
    padded = [-(-c // block_m) * block_m for c in counts]
    assert int(num_post) == sum(padded)
    assert sorted_ids.numel() == ids.numel() + 5 * (block_m - 1)
    start = 0
    for expert, (c, p) in enumerate(zip(counts, padded)):
        seg = sorted_ids[start : start + p].tolist()
        want = [s for s, v in enumerate(ids.flatten().tolist()) if v == expert]
        assert seg == want + [ids.numel()] * (p - c)
        blocks = expert_ids[start // block_m : (start + p) // block_m]
        assert blocks.tolist() == [expert] * (p // block_m)
        start += p
    assert (sorted_ids[start:] == ids.numel()).all()


@pytest.mark.skipif(DEVICE != "cuda",
                    reason="bf16 Triton needs a GPU (the interpreter computes bf16 wrongly)")
def test_vllm_style_baseline_bf16_on_gpu():
    hidden, w_up, w_down, weights, ids = layer(300, 16, 6, 64, 48, "relu2", 12, seed=3)
    got = vllm_style.fused_experts(hidden.bfloat16(), w_up.bfloat16(), w_down.bfloat16(), weights,
                                   ids, ffn_width=40, scaling=2.5)
    want = reference.moe_ffn(hidden.bfloat16(), w_up.bfloat16(), w_down.bfloat16(), weights, ids,
                             ffn_width=40, scaling=2.5)
    torch.testing.assert_close(got.float(), want.float(), rtol=8e-2, atol=8e-2)
