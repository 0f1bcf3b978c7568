"""Named budgets survive serialisation, alone and with the parent."""

import pytest
import torch

from star_elastic import Budget, ElasticModel, LayerBudget
from star_elastic.data import load_tokenizer
from star_elastic.elastic_checkpoint import load_elastic, save_elastic
from tests.model.helpers import toy_config


def test_budget_dict_round_trip():
    budget = Budget(hidden_size=48, mlp_width=64,
                    layers=(None, LayerBudget(attention_heads_per_group=1), None, None, None, None),
                    skip_layers={4})
    assert Budget.from_dict(budget.to_dict()) == budget
    assert Budget.from_dict({}) == Budget()
    with pytest.raises(ValueError, match="unknown budget fields: width"):
        Budget.from_dict({"width": 3})


def test_elastic_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = ElasticModel(toy_config())
    budgets = {"full": Budget(), "half": Budget(hidden_size=32, mlp_width=64, moe_experts=4)}
    save_elastic(model, budgets, tmp_path, tokenizer=load_tokenizer("char"))
    loaded, loaded_budgets = load_elastic(tmp_path)
    assert loaded_budgets == budgets
    ids = torch.randint(0, 64, (2, 9))
    for budget in budgets.values():
        assert torch.allclose(loaded(ids, budget), model(ids, budget), atol=1e-5)
    assert load_tokenizer(tmp_path).tokens == load_tokenizer("char").tokens
    with pytest.raises(ValueError):
        save_elastic(model, {"bad": Budget(hidden_size=1000)}, tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="nothing does not exist"):
        load_elastic(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not an elastic checkpoint: it has no budgets.json"):
        load_elastic(tmp_path / "empty")
