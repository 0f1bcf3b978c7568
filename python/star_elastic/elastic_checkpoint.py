"""An elastic checkpoint: the parent's weights plus the named budgets that carve submodels out of it.

Layout of the directory: the parent exported with :func:`star_elastic.slicing.export` (a
transformers ``nemotron_h`` checkpoint or the project's own format), ``budgets.json``
(``{name: Budget.to_dict()}``, in order from largest to smallest), and optionally the tokenizer
(``char_tokenizer.json``). Any budget is then sliced zero-shot, or run in place on the parent.

Saving is atomic like :func:`~star_elastic.slicing.export`; loading checks every file (budgets,
configs, whole safetensors files) before any weights load and names the one at fault.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .budget import Budget
from .data import CHAR_TOKENIZER_NAME
from .model import ElasticModel
from .slicing import check_saved_model, load, staged_directory, write_model

BUDGETS_NAME = "budgets.json"


def save_elastic(model: ElasticModel, budgets: dict[str, Budget], path: str | os.PathLike,
                 tokenizer=None) -> Path:
    """Write ``model`` (the parent) with its named ``budgets`` (and ``tokenizer``) to ``path``.

    Atomic: ``path`` holds the complete checkpoint or, if a write fails, what it held before. An
    existing ``path`` must be empty or a previous export / elastic checkpoint (else ``ValueError``).
    """
    for name, budget in budgets.items():
        budget.resolve(model.config)  # refuse a budget that does not fit this parent
    with staged_directory(path, also_replaces=(BUDGETS_NAME, CHAR_TOKENIZER_NAME)) as staging:
        write_model(model, staging)
        (staging / BUDGETS_NAME).write_text(json.dumps({n: b.to_dict() for n, b in budgets.items()},
                                                       indent=2))
        if tokenizer is not None and hasattr(tokenizer, "save"):
            tokenizer.save(staging)
    return Path(path)


def read_budgets(path: str | os.PathLike) -> dict[str, Budget]:
    """The named budgets of the elastic checkpoint ``path``, read without loading any weights.

    Raises ``FileNotFoundError`` (``path`` does not exist, or holds no ``budgets.json``: not an
    elastic checkpoint), ``NotADirectoryError``, or ``ValueError`` (``budgets.json`` is corrupt),
    each naming the path or file at fault.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a directory")
    budgets_file = path / BUDGETS_NAME
    if not budgets_file.exists():
        raise FileNotFoundError(f"{path} is not an elastic checkpoint: it has no {BUDGETS_NAME} (save_elastic "
                                "and star-elastic demo write one)")
    try:
        entries = json.loads(budgets_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{budgets_file} is corrupt: not valid JSON ({error})") from None
    if not isinstance(entries, dict) or not entries or not all(isinstance(v, dict) for v in entries.values()):
        raise ValueError(f"{budgets_file} is corrupt: expected a non-empty JSON object "
                         "{budget name: {width fields}}")
    budgets = {}
    for name, fields in entries.items():
        try:
            budgets[name] = Budget.from_dict(fields)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{budgets_file}: budget {name!r}: {error}") from None
    return budgets


def load_elastic(path: str | os.PathLike) -> tuple[ElasticModel, dict[str, Budget]]:
    """(parent model, {name: Budget}) from a directory written by :func:`save_elastic`.

    Every file is checked before the weights load (:func:`read_budgets`,
    :func:`~star_elastic.slicing.check_saved_model`), and each budget against the model.
    """
    budgets = read_budgets(path)
    check_saved_model(path)
    model = load(path)
    for name, budget in budgets.items():
        try:
            budget.resolve(model.config)
        except ValueError as error:
            raise ValueError(f"{Path(path) / BUDGETS_NAME}: budget {name!r} does not fit the model "
                             f"saved beside it: {error}") from None
    return model, budgets
