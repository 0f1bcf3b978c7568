"""The budget router: choices, masks, the differentiable cost, and convergence to targets."""

import pytest
import torch

from star_elastic import schedules
from star_elastic.params import parameter_count
from star_elastic.router import ElasticRouter, width_choices
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
