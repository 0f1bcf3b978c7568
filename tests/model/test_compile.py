"""torch.compile(fullgraph=True) of the model equals eager at a fixed budget."""

import torch

from star_elastic.budget import Budget

from .helpers import input_ids, tiny_model


def test_compiled_model_equals_eager_at_a_fixed_budget():
    torch._dynamo.reset()
    model = tiny_model("M*E-", seed=20, moe_num_experts=4)
    budget = Budget(hidden_size=24, mamba_heads_per_group=2, mamba_head_dim=4, moe_experts=3, mlp_width=16)
    ids = input_ids(2, 6, seed=20)
    compiled = torch.compile(model, fullgraph=True)  # fullgraph: any graph break is an error
    with torch.no_grad():
        expected = model(ids, budget)
        torch.testing.assert_close(compiled(ids, budget), expected, atol=1e-5, rtol=1e-5)
