"""The budget router: choices, masks, the differentiable cost, and convergence to targets."""

import pytest
import torch

from star_elastic import schedules
from star_elastic.params import parameter_count
from star_elastic.router import ElasticRouter, width_choices
from star_elastic.train import TrainConfig
from tests.model.helpers import toy_config


def test_width_choices():
    assert width_choices(64, 8, (1.0, 0.5, 0.3)) == (64, 32, 16)
    assert width_choices(10, 1, (1.0, 0.5)) == (10, 5)
    assert width_choices(8, 1, (0.1,), minimum=2) == (8,)


@pytest.mark.parametrize("heterogeneous", [False, True])
def test_hard_cost_equals_parameter_count_of_the_budget(heterogeneous):
    config = toy_config()
    router = ElasticRouter(config, ["a", "b"], [1.0, 0.5], heterogeneous=heterogeneous)
    for budget in ("a", "b"):
        decision = router.sample(budget, tau=0.05, generator=torch.Generator().manual_seed(3))
        hard = type(decision)(decision.axes,
                              {k: torch.nn.functional.one_hot(v, p.shape[-1]).float()
                               for (k, v), p in zip(decision.picks.items(), decision.probs.values())},
                              decision.picks)
        for kind in ("active", "total"):
            router.cost_kind = kind
            want = getattr(parameter_count(config, hard.budget(config)), kind)
            assert float(router.expected_cost(hard)) == pytest.approx(want)
    router.cost_kind = "active"
    assert float(router.parent_cost) == parameter_count(config).active


def test_masks_hard_and_soft():
    config = toy_config()
    router = ElasticRouter(config, ["x"], [0.5])
    decision = router.sample("x", tau=0.5, generator=torch.Generator().manual_seed(0))
    for axis in router.axes:
        hard = decision.masks(axis, "hard")
        width = decision.widths(axis)[0]
        assert torch.equal(hard.detach()[0], (torch.arange(axis.parent) < width).float())
        soft = decision.masks(axis, "soft")[0]
        assert torch.all(soft[:-1] >= soft[1:] - 1e-7)  # a prefix mask: non-increasing
        assert float(soft[0].detach()) == pytest.approx(1.0, abs=1e-6)
        hard.sum().backward(retain_graph=True)  # gradients reach the router
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in router.parameters())
    with pytest.raises(ValueError, match="mode"):
        decision.masks(router.axes[0], "medium")


def test_bad_router_arguments():
    config = toy_config()
    with pytest.raises(ValueError, match="equal length"):
        ElasticRouter(config, ["a"], [1.0, 0.5])
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        ElasticRouter(config, ["a"], [1.5])
    with pytest.raises(KeyError, match="unknown budget 'z'"):
        ElasticRouter(config, ["a"], [1.0]).budget("z")


@pytest.mark.parametrize("heterogeneous", [False, True])
def test_router_reaches_parameter_targets(heterogeneous):
    torch.manual_seed(0)
    config = toy_config()
    names, targets = ("full", "70%", "45%"), (1.0, 0.7, 0.45)
    router = ElasticRouter(config, names, targets, heterogeneous=heterogeneous,
                           fractions=[i / 16 for i in range(16, 3, -1)])
    optimizer = torch.optim.Adam(router.parameters(), lr=1e-2)
    steps = 200 if heterogeneous else 300
    generator = torch.Generator().manual_seed(1)
    for step in range(steps):
        tau = schedules.linear(step, steps, 1.0, 0.05)
        scale = schedules.linear(step, steps, 1.0, 10.0)
        loss = sum(router.loss(router.sample(b, tau=tau, scale=scale, generator=generator), b)
                   for b in names)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    parent = parameter_count(config).active
    for name, target in zip(names, targets):
        got = parameter_count(config, router.budget(name)).active / parent
        assert abs(got - target) / target < 0.05, (name, got, target)


@pytest.mark.parametrize("heterogeneous", [False, True])
def test_hard_channel_masks_at_full_width_equal_the_sliced_budget_forward(heterogeneous):
    from star_elastic import ElasticModel

    torch.manual_seed(2)
    config = toy_config(vocab_size=32)
    model = ElasticModel(config)
    router = ElasticRouter(config, ["x"], [0.5], heterogeneous=heterogeneous)
    ids = torch.randint(0, 32, (2, 12))
    for seed in range(3):
        decision = router.sample("x", tau=0.5, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            masked = model(ids, masks=decision.channel_masks(config, "hard"))
            sliced = model(ids, decision.budget(config))
        assert torch.allclose(masked, sliced, atol=2e-5), (masked - sliced).abs().max()


def test_soft_masks_carry_the_task_gradient_to_the_router():
    from star_elastic import ElasticModel

    torch.manual_seed(3)
    config = toy_config(vocab_size=32)
    model = ElasticModel(config)
    router = ElasticRouter(config, ["x"], [0.5])
    decision = router.sample("x", tau=1.0, generator=torch.Generator().manual_seed(0))
    masks = decision.channel_masks(config, "soft")
    assert 0 < float(masks.hidden.detach().min()) < 1  # really soft
    model(torch.randint(0, 32, (2, 8)), masks=masks).logsumexp(-1).mean().backward()
    touched = [name for name, p in router.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert any("hidden_size" in n for n in touched) and any("mlp_width" in n for n in touched)


def _one_hot_decision(router, choice_of):
    """The decision that takes ``choice_of[axis name]`` (an index; default 0 = the largest)."""
    from star_elastic.router import Decision

    probs = {a.name: torch.nn.functional.one_hot(torch.full((a.segments,), choice_of.get(a.name, 0)),
                                                 len(a.choices)).float() for a in router.axes}
    return Decision(router.axes, probs, {name: p.argmax(-1) for name, p in probs.items()})


def test_depth_axis_keeps_the_top_ranked_layers_and_costs_what_they_cost():
    from star_elastic.params import memory_bytes

    config = toy_config()  # "M*-EM-": six layers
    order = [4, 0, 3, 1, 5, 2]
    for kind in ("active", "total", "memory"):
        router = ElasticRouter(config, ["a", "b"], [1.0, 0.5], cost=kind, layer_order=order,
                               memory_context=64)
        depth = next(a for a in router.axes if a.name == "depth")
        assert depth.choices == (6, 5, 4, 3)
        for pick, kept in enumerate(depth.choices):
            decision = _one_hot_decision(router, {"depth": pick, "mlp_width": 1})
            budget = decision.budget(config)
            assert budget.skip_layers == frozenset(order[kept:])
            if kind == "memory":
                want = memory_bytes(config, budget, context=64)
            else:
                want = getattr(parameter_count(config, budget), kind)
            assert float(router.expected_cost(decision)) == pytest.approx(want), (kind, kept)
    with pytest.raises(ValueError, match="layer_order"):
        ElasticRouter(config, ["a"], [0.5], layer_order=[0, 1, 2])


def test_an_axis_that_does_not_change_the_chosen_cost_is_not_routed():
    config = toy_config()
    # Active parameters: a token touches top_k experts whatever their number; only the router's
    # rows shrink (8 x 64 of ~80k), so the expert count is left at full width.
    active = ElasticRouter(config, ["full", "half"], [1.0, 0.5], cost="active")
    assert "moe_experts" in {a.name for a in active.excluded_axes}
    assert "moe_experts" not in active.routers and "mlp_width" in active.routers
    assert active.budget("half").moe_experts is None
    # Total parameters: every expert counts, so the router may prune them.
    total = ElasticRouter(config, ["full", "half"], [1.0, 0.5], cost="total")
    assert "moe_experts" in total.routers and not total.excluded_axes
    # Memory: attention query heads change weights but not the K/V cache; they still count.
    memory = ElasticRouter(config, ["full", "half"], [1.0, 0.5], cost="memory", memory_context=64)
    assert "attention_heads_per_group" in memory.routers
    # ... until the context is so long that the K/V cache, which no width axis shrinks, dominates.
    long_context = ElasticRouter(config, ["full", "half"], [1.0, 0.5], cost="memory",
                                 memory_context=1 << 16)
    assert "attention_heads_per_group" not in long_context.routers


def test_router_with_depth_reaches_its_target_and_drops_layers():
    torch.manual_seed(0)
    config = toy_config()
    router = ElasticRouter(config, ("full", "45%"), (1.0, 0.45), layer_order=[4, 0, 3, 1, 5, 2],
                           fractions=[i / 16 for i in range(16, 3, -1)])
    optimizer = torch.optim.Adam(router.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(1)
    for step in range(300):
        tau = schedules.linear(step, 300, 1.0, 0.05)
        loss = router.loss(router.sample("45%", tau=tau, generator=generator), "45%")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    got = parameter_count(config, router.budget("45%")).active / parameter_count(config).active
    assert abs(got - 0.45) / 0.45 < 0.05, got


def test_masks_with_depth_equal_the_budget_forward_in_both_modes_and_soft_layer_weights_are_not_run():
    from star_elastic import ElasticModel

    torch.manual_seed(2)
    config = toy_config(vocab_size=32)
    model = ElasticModel(config)
    router = ElasticRouter(config, ["x"], [0.5], layer_order=[5, 0, 3, 1, 4, 2])
    ids = torch.randint(0, 32, (2, 12))
    skipped = set()
    for seed in range(6):
        decision = router.sample("x", tau=0.5, generator=torch.Generator().manual_seed(seed))
        budget = decision.budget(config)
        skipped |= budget.skip_layers
        with torch.no_grad():
            masked = model(ids, masks=decision.channel_masks(config, "hard"))
            gated = model(ids, budget, gates=decision.gates(config.num_layers, config.layer_pattern))
            sliced = model(ids, budget)
        assert torch.allclose(masked, sliced, atol=2e-5), (masked - sliced).abs().max()
        assert torch.equal(gated, sliced)
    assert skipped, "no sample dropped a layer: the test would not check depth"
    # The Gumbel-softmax layer weights are fractional, but no sliced budget runs a fraction of a
    # layer: soft width masks come with the sampled layers, 0 or 1, and the depth gradient.
    depth = next(a for a in router.axes if a.name == "depth")
    for seed in range(6):
        decision = router.sample("x", tau=1.0, generator=torch.Generator().manual_seed(seed))
        keep = decision.layer_keep(depth, "soft").detach()
        assert float(keep[5]) == pytest.approx(1.0)  # the top-ranked layer is always kept
        masks = decision.channel_masks(config, "soft")
        layer_weights = torch.stack([layer["layer"] for layer in masks.layers])
        sampled = decision.layer_keep(depth, "hard")
        assert torch.equal(layer_weights.detach(), sampled)
        if 0 < float(keep.min()) < 1 and not bool(sampled.all()):
            break
    else:
        raise AssertionError("no sample with fractional Gumbel weights that drops a layer")
    router.zero_grad()
    model(ids, masks=masks).logsumexp(-1).mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for name, p in router.named_parameters() if "depth" in name)
    with pytest.raises(ValueError, match="mode must be one of"):
        decision.channel_masks(config, "policy")


def test_sampled_architectures_keep_moving_after_the_first_tenth_of_the_run():
    """The search does not freeze: with the trainer's schedules (lr warmup + cosine, tau 1 -> 0.05,
    scale 1 -> 10) the sampled architecture still changes in the second half of the run, while
    the budget's target is reached."""
    torch.manual_seed(0)
    config = toy_config()
    router = ElasticRouter(config, ("full", "45%"), (1.0, 0.45), layer_order=[4, 0, 3, 1, 5, 2],
                           fractions=[i / 16 for i in range(16, 3, -1)])
    lr = TrainConfig.router_lr
    optimizer = torch.optim.Adam(router.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(1)
    steps, sampled = 300, []
    for step in range(steps):
        optimizer.param_groups[0]["lr"] = lr * schedules.warmup_cosine(step, steps, 10, 0.1)
        decision = router.sample("45%", tau=schedules.linear(step, steps, 1.0, 0.05),
                                 scale=schedules.linear(step, steps, 1.0, 10.0), generator=generator)
        sampled.append(decision.budget(config))
        loss = router.loss(decision, "45%")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    changes = [step for step in range(1, steps) if sampled[step] != sampled[step - 1]]
    assert len(set(sampled[steps // 10:])) >= 3 and changes[-1] > steps // 2, changes
    got = parameter_count(config, router.budget("45%")).active / parameter_count(config).active
    assert abs(got - 0.45) / 0.45 < 0.05, got
