"""InferenceCache: cached prefill + decode == one uncached forward, at every budget and layer kind."""

import pytest
import torch

from star_elastic.budget import Budget, LayerBudget
from star_elastic.cache import InferenceCache

from .helpers import HETEROGENEOUS, UNIFORM, input_ids, tiny_model


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Decode steps are tiny: on the shared 2-core machine one thread is faster and steadier."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


HETEROGENEOUS_KEEPS_ATTENTION = Budget(
    hidden_size=24,
    layers=(LayerBudget(mamba_heads_per_group=1, mamba_head_dim=5), LayerBudget(attention_heads_per_group=1),
            None, None, LayerBudget(mamba_heads_per_group=4, mamba_head_dim=2)),
    skip_layers={2},
)

CASES = [
    # one layer kind at a time (two layers where the kind has state), full and reduced widths
    ("MM", {}, Budget()),
    ("MM", {}, Budget(hidden_size=24, mamba_heads_per_group=2, mamba_head_dim=4)),
    ("M", {"mamba_conv_kernel": 2}, Budget(mamba_heads_per_group=3, mamba_head_dim=5)),
    ("**", {}, Budget()),
    ("**", {}, Budget(hidden_size=24, attention_heads_per_group=1)),
    ("-", {}, Budget(hidden_size=24, mlp_width=20)),
    ("E", {}, Budget()),
    ("E", {}, Budget(hidden_size=24, moe_experts=4, moe_expert_width=8, moe_shared_width=12)),
    # the hybrid: full, uniform, heterogeneous with a skipped layer (attention skipped / kept)
    ("M*E-M", {}, Budget()),
    ("M*E-M", {}, UNIFORM),
    ("M*E-M", {}, HETEROGENEOUS),
    ("M*E-M", {}, HETEROGENEOUS_KEEPS_ATTENTION),
]


@pytest.mark.parametrize("pattern,overrides,budget", CASES,
                         ids=[f"{p}-{i}" for i, (p, _, _) in enumerate(CASES)])
def test_cached_decoding_equals_uncached_forward(pattern, overrides, budget):
    model = tiny_model(pattern, seed=7, **overrides)
    ids = input_ids(2, 11, seed=7)
    with torch.no_grad():
        expected = model(ids, budget)
        cache = InferenceCache.for_model(model, 2)
        pieces = [model(ids[:, :4], budget, cache=cache)]  # prefill
        pieces += [model(ids[:, t : t + 1], budget, cache=cache) for t in range(4, 8)]  # one token at a time
        pieces.append(model(ids[:, 8:], budget, cache=cache))  # several tokens on a warm cache
    torch.testing.assert_close(torch.cat(pieces, dim=1), expected, atol=2e-5, rtol=1e-5)
    assert cache.position == 11 and cache.lengths.tolist() == [11, 11]


def test_left_padded_prefill_and_frozen_rows_equal_each_row_alone():
    model = tiny_model("M*E-M", seed=8)
    budget = UNIFORM
    lengths = [3, 7, 5]
    rows = [input_ids(1, n, seed=10 + n)[0] for n in lengths]
    width = max(lengths)
    padded = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.bool)
    for r, row in enumerate(rows):
        padded[r, width - len(row):], mask[r, width - len(row):] = row, True
    follow = input_ids(3, 3, seed=9)  # three decode steps; row 1 is frozen during the second
    with torch.no_grad():
        cache = InferenceCache.for_model(model, 3)
        cache.set_input_mask(mask)
        prefill = model(padded, budget, cache=cache)
        steps = []
        for t in range(3):
            if t == 1:
                cache.set_input_mask(torch.tensor([[True], [False], [True]]))
            steps.append(model(follow[:, t : t + 1], budget, cache=cache))
        for r, row in enumerate(rows):
            fed = [follow[r, t] for t in range(3) if not (r == 1 and t == 1)]
            alone = model(torch.cat([row, torch.stack(fed)])[None], budget)[0]
            torch.testing.assert_close(prefill[r, width - len(row):], alone[: len(row)], atol=2e-5, rtol=1e-5)
            got = [steps[t][r, 0] for t in range(3) if not (r == 1 and t == 1)]
            torch.testing.assert_close(torch.stack(got), alone[len(row):], atol=2e-5, rtol=1e-5)
    assert cache.lengths.tolist() == [n + 3 - (r == 1) for r, n in enumerate(lengths)]


def test_a_budget_writes_only_its_slice_of_the_parent_layout_states():
    model = tiny_model("M*", seed=3)
    budget = Budget(mamba_heads_per_group=2, mamba_head_dim=5)  # parent: 4 heads per group, 8 channels
    with torch.no_grad():
        cache = InferenceCache.for_model(model, 2)
        model(input_ids(2, 6, seed=3), budget, cache=cache)
    mamba, attention = cache.layers
    ssm = mamba.ssm.view(2, 2, 4, 8, -1)  # (b, G, heads per group, P, N)
    assert ssm[:, :, :2, :5].abs().sum() > 0
    assert ssm[:, :, 2:].abs().sum() == 0 and ssm[:, :, :, 5:].abs().sum() == 0
    conv_x = mamba.conv[:, : 8 * 8].view(2, 2, 4, 8, -1)
    assert conv_x[:, :, :2, :5].abs().sum() > 0 and conv_x[:, :, 2:].abs().sum() == 0
    assert mamba.conv[:, 8 * 8:].abs().sum() > 0  # B and C channels are whole
    assert attention.keys.shape == (2, 2, 6, 8) and cache.layers[1] is attention
    # transplant: the same cache continues at the full budget (zero-padded states), and stays finite
    with torch.no_grad():
        assert torch.isfinite(model(input_ids(2, 1, seed=4), Budget(), cache=cache)).all()


def test_select_rows_continues_like_the_whole_cache():
    model = tiny_model("M*E-M", seed=4)
    ids = input_ids(3, 8, seed=4)
    with torch.no_grad():
        cache = InferenceCache.for_model(model, 3)
        model(ids[:, :6], UNIFORM, cache=cache)
        picked = cache.select_rows([2, 0])
        whole = model(ids[:, 6:], UNIFORM, cache=cache)
        part = model(ids[[2, 0], 6:], UNIFORM, cache=picked)
    torch.testing.assert_close(part, whole[[2, 0]], atol=2e-5, rtol=1e-5)


def test_bad_cache_use_raises_clear_errors():
    model = tiny_model("M*", seed=1)
    ids = input_ids(2, 4, seed=1)
    cache = InferenceCache.for_model(model, 2)
    with torch.no_grad():
        with pytest.raises(ValueError, match="batch 3 but the cache was made for 2"):
            model(input_ids(3, 4), cache=cache)
        with pytest.raises(ValueError, match="another model"):
            model(ids, cache=InferenceCache.for_model(tiny_model("*M", seed=1), 2))
        with pytest.raises(TypeError, match="InferenceCache"):
            model(ids, cache={})
        with pytest.raises(ValueError, match="left padding"):
            cache.set_input_mask(torch.tensor([[True, False, True, True]] * 2))
            model(ids, cache=cache)
        cache = InferenceCache.for_model(model, 2)
        model(ids, cache=cache)
        with pytest.raises(ValueError, match="fresh cache"):
            cache.set_input_mask(torch.tensor([[False, True, True, True]] * 2))
            model(ids, cache=cache)
        with pytest.raises(ValueError, match=r"\(batch=2, l\) bool"):
            cache.set_input_mask(torch.ones(3, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="batch_size"):
        InferenceCache(model.config, 0)
    with pytest.raises(ValueError, match="rows must be in"):
        cache.select_rows([5])
