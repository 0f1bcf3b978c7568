"""export / save_elastic appear complete or not at all: a write that fails midway (a full disk is
simulated by a save that writes part of its file and raises ENOSPC) leaves nothing under the final
name, and a failed re-export leaves the previous export loadable."""

import errno
import os
from pathlib import Path

import pytest
import torch

from star_elastic.budget import Budget
from star_elastic.data import load_tokenizer
from star_elastic.elastic_checkpoint import load_elastic, save_elastic
from star_elastic.slicing import export, load

from .helpers import input_ids, tiny_model

SMALL = Budget(hidden_size=24, mamba_heads_per_group=2, mamba_head_dim=4, attention_heads_per_group=1,
               mlp_width=20, moe_experts=4, moe_expert_width=8, moe_shared_width=12)
OWN_FORMAT = dict(mamba_dt_limit=(1e-3, 1e4))  # not expressible as a NemotronHConfig


def fill_the_disk(monkeypatch, module, name="save_file"):
    """Make ``module.name`` (a safetensors save) write a third of its file, then fail with ENOSPC."""
    real_save = getattr(module, name)

    def disk_full(tensors, filename, *args, **kwargs):
        real_save(tensors, filename, *args, **kwargs)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 3])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))

    monkeypatch.setattr(module, name, disk_full)


def save_module(fmt: str):
    if fmt == "own":
        import safetensors.torch

        return safetensors.torch
    import transformers.modeling_utils

    return transformers.modeling_utils


SAVE_NAME = {"own": "save_file", "hf": "safe_save_file"}


def model_for(fmt: str, seed: int = 3):
    return tiny_model("M*E-M", seed=seed, **(OWN_FORMAT if fmt == "own" else {}))


def leftovers(parent: Path, final: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name != final)


@pytest.mark.parametrize("fmt", ["own", "hf"])
def test_disk_full_during_export_leaves_nothing_under_the_final_name(tmp_path, monkeypatch, fmt):
    fill_the_disk(monkeypatch, save_module(fmt), SAVE_NAME[fmt])
    with pytest.raises(OSError) as error:
        export(model_for(fmt), SMALL, tmp_path / "child")
    assert error.value.errno == errno.ENOSPC
    assert not (tmp_path / "child").exists()
    assert leftovers(tmp_path, "child") == []  # the staging directory went too


@pytest.mark.parametrize("fmt", ["own", "hf"])
def test_failed_re_export_keeps_the_previous_export(tmp_path, monkeypatch, fmt):
    first = model_for(fmt, seed=3)
    assert export(first, SMALL, tmp_path / "child") == ("star_elastic" if fmt == "own" else "nemotron_h")
    ids = input_ids(vocab=64)
    before = load(tmp_path / "child")(ids)
    fill_the_disk(monkeypatch, save_module(fmt), SAVE_NAME[fmt])
    with pytest.raises(OSError):
        export(model_for(fmt, seed=4), SMALL, tmp_path / "child")
    assert torch.equal(load(tmp_path / "child")(ids), before)
    assert leftovers(tmp_path, "child") == []


def test_disk_full_during_save_elastic_leaves_nothing(tmp_path, monkeypatch):
    tokenizer = load_tokenizer("char")

    def disk_full(directory):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(directory) / "char_tokenizer.json"))

    monkeypatch.setattr(tokenizer, "save", disk_full)  # the last file save_elastic writes
    with pytest.raises(OSError):
        save_elastic(model_for("own"), {"full": Budget(), "small": SMALL}, tmp_path / "elastic",
                     tokenizer=tokenizer)
    assert not (tmp_path / "elastic").exists()
    assert leftovers(tmp_path, "elastic") == []


def test_export_replaces_an_export_of_the_other_format(tmp_path):
    # own format first, then nemotron_h into the same directory: the stale
    # star_elastic_config.json must not survive and shadow the new export
    ids = input_ids(vocab=64)
    export(model_for("own", seed=3), SMALL, tmp_path / "child")
    uniform = model_for("hf", seed=4)
    assert export(uniform, SMALL, tmp_path / "child") == "nemotron_h"
    assert not (tmp_path / "child" / "star_elastic_config.json").exists()
    torch.testing.assert_close(load(tmp_path / "child")(ids), uniform(ids, SMALL))


def test_save_elastic_over_a_previous_one(tmp_path):
    budgets = {"full": Budget(), "small": SMALL}
    save_elastic(model_for("own", seed=3), budgets, tmp_path / "elastic")
    second = model_for("own", seed=4)
    save_elastic(second, {"full": Budget()}, tmp_path / "elastic")
    loaded, loaded_budgets = load_elastic(tmp_path / "elastic")
    assert list(loaded_budgets) == ["full"]
    ids = input_ids(vocab=64)
    torch.testing.assert_close(loaded(ids), second(ids))


def test_export_refuses_to_replace_a_directory_holding_other_files(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("not an export")
    with pytest.raises(ValueError, match=r"notes\.txt"):
        export(model_for("own"), SMALL, target)
    assert (target / "notes.txt").read_text() == "not an export"
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]


def test_export_into_an_empty_existing_directory(tmp_path):
    (tmp_path / "child").mkdir()
    export(model_for("own"), SMALL, tmp_path / "child")
    assert (tmp_path / "child" / "model.safetensors").exists()
