"""An elastic checkpoint: the parent's weights plus the named budgets that carve submodels out of it.

Layout of the directory: the parent exported with :func:`star_elastic.slicing.export` (a
transformers ``nemotron_h`` checkpoint or the project's own format), ``budgets.json``
(``{name: Budget.to_dict()}``, in order from largest to smallest), and optionally the tokenizer
(``char_tokenizer.json``). Any budget is then sliced zero-shot, or run in place on the parent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .budget import Budget
from .model import ElasticModel
from .slicing import export, load

BUDGETS_NAME = "budgets.json"


def save_elastic(model: ElasticModel, budgets: dict[str, Budget], path: str | os.PathLike,
                 tokenizer=None) -> Path:
    """Write ``model`` (the parent) with its named ``budgets`` (and ``tokenizer``) to ``path``."""
    for name, budget in budgets.items():
        budget.resolve(model.config)  # refuse a budget that does not fit this parent
    path = Path(path)
    export(model, None, path)
    (path / BUDGETS_NAME).write_text(json.dumps({n: b.to_dict() for n, b in budgets.items()}, indent=2))
    if tokenizer is not None and hasattr(tokenizer, "save"):
        tokenizer.save(path)
    return path


def load_elastic(path: str | os.PathLike) -> tuple[ElasticModel, dict[str, Budget]]:
    """(parent model, {name: Budget}) from a directory written by :func:`save_elastic`."""
    path = Path(path)
    budgets_file = path / BUDGETS_NAME
    if not budgets_file.exists():
        raise FileNotFoundError(f"{path} is not an elastic checkpoint: {BUDGETS_NAME} is missing")
    model = load(path)
    budgets = {name: Budget.from_dict(data) for name, data in json.loads(budgets_file.read_text()).items()}
    for budget in budgets.values():
        budget.resolve(model.config)
    return model, budgets
