"""What a user who gets something wrong sees: one line on stderr, ``star-elastic CMD: error: ...``, exit 2.

Each case names the file or argument at fault and what is wrong with it, and (where it can be)
is found before any weights load: the tests make loading weights fail loudly to prove that.
``--debug`` / ``STAR_ELASTIC_DEBUG=1`` add the traceback.
"""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from star_elastic import cli
from star_elastic import checkpoint as training_checkpoint
from star_elastic.budget import Budget
from star_elastic.data import load_tokenizer
from star_elastic.elastic_checkpoint import save_elastic
from star_elastic.slicing import export
from tests.model.helpers import tiny_model

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "python"), os.environ.get("PYTHONPATH", "")])}
SMALL = Budget(hidden_size=24, mamba_heads_per_group=2, mamba_head_dim=4, attention_heads_per_group=1,
               mlp_width=20, moe_experts=4, moe_expert_width=8, moe_shared_width=12)


def run(capsys, *argv: str) -> tuple[int, list[str]]:
    """(exit status, stderr lines) of ``star-elastic argv`` run in this process."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err.splitlines()


def assert_user_error(result: tuple[int, list[str]], command: str, *fragments: str) -> str:
    code, lines = result
    assert code == 2, (code, lines)
    assert len(lines) == 1, lines
    prefix = f"star-elastic {command}: error: " if command else "star-elastic: error: "
    assert lines[0].startswith(prefix), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def no_weight_loading(monkeypatch):
    """Make every way of loading a model's weights fail the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the error was found")

    import safetensors.torch

    from star_elastic import elastic_checkpoint, hf, slicing
    from star_elastic.model import ElasticModel

    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(hf, "from_hf", refuse)
    monkeypatch.setattr(ElasticModel, "from_hf", staticmethod(refuse))
    monkeypatch.setattr(elastic_checkpoint, "load", refuse)
    monkeypatch.setattr(slicing, "load", refuse)
    monkeypatch.setattr(cli, "build_parent", refuse)


# --------------------------------------------------------------------------------------------------
# generate: the checkpoint directory and what must be in it


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Two elastic checkpoints, in the project's own format and in transformers' nemotron_h format."""
    root = tmp_path_factory.mktemp("saved")
    tokenizer = load_tokenizer("char")
    budgets = {"full": Budget(), "small": SMALL}
    # a finite upper dt limit is not expressible as a NemotronHConfig: the project's own format
    save_elastic(tiny_model("M*E-M", seed=5, mamba_dt_limit=(1e-3, 1e4)), budgets, root / "own",
                 tokenizer=tokenizer)
    save_elastic(tiny_model("M*E-M", seed=5), budgets, root / "hf", tokenizer=tokenizer)
    return root


@pytest.fixture(params=["own", "hf"])
def elastic_dir(request, saved, tmp_path):
    """A fresh copy of one saved elastic checkpoint, free to damage."""
    copy = tmp_path / request.param
    shutil.copytree(saved / request.param, copy)
    return copy


def generate(capsys, checkpoint, *extra):
    return run(capsys, "generate", "--checkpoint", str(checkpoint), "--think-budget", "small",
               "--answer-budget", "full", "--prompt", "Q:1+2=?", "--max-new-tokens", "4", *extra)


def test_the_saved_checkpoints_do_generate(capsys, elastic_dir):
    code, lines = generate(capsys, elastic_dir)
    assert code == 0, lines


def test_generate_checkpoint_that_does_not_exist(capsys, tmp_path, no_weight_loading):
    missing = tmp_path / "no-such-run"
    line = assert_user_error(generate(capsys, missing), "generate", "--checkpoint", str(missing),
                             "does not exist")
    assert "budgets.json" not in line  # the directory is the problem, not a file in it


def test_generate_checkpoint_that_is_a_file(capsys, tmp_path, no_weight_loading):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"\0" * 64)
    assert_user_error(generate(capsys, file), "generate", str(file), "not a directory")


def test_generate_truncated_safetensors(capsys, elastic_dir):
    weights = elastic_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert_user_error(generate(capsys, elastic_dir), "generate", str(weights), "truncated or corrupt")


def test_generate_garbage_safetensors(capsys, elastic_dir):
    weights = elastic_dir / "model.safetensors"
    weights.write_bytes(b"this is not a safetensors file at all")
    assert_user_error(generate(capsys, elastic_dir), "generate", str(weights), "truncated or corrupt")


def test_generate_missing_weights_file(capsys, elastic_dir, no_weight_loading):
    (elastic_dir / "model.safetensors").unlink()
    assert_user_error(generate(capsys, elastic_dir), "generate", "model.safetensors", "missing")


def test_generate_corrupt_budgets_json(capsys, elastic_dir, no_weight_loading):
    budgets = elastic_dir / "budgets.json"
    budgets.write_text('{"full": {}, "small": ')  # cut off mid-write
    assert_user_error(generate(capsys, elastic_dir), "generate", str(budgets), "corrupt", "JSON")


def test_generate_budgets_json_of_the_wrong_shape(capsys, elastic_dir, no_weight_loading):
    budgets = elastic_dir / "budgets.json"
    budgets.write_text('["full", "small"]')
    assert_user_error(generate(capsys, elastic_dir), "generate", str(budgets))


def test_generate_corrupt_model_config(capsys, elastic_dir, no_weight_loading):
    config = elastic_dir / ("config.json" if elastic_dir.name == "hf" else "star_elastic_config.json")
    config.write_text("{ not json")
    assert_user_error(generate(capsys, elastic_dir), "generate", str(config), "corrupt")


def test_generate_directory_that_is_not_an_elastic_checkpoint(capsys, tmp_path, no_weight_loading):
    # one exported budget: a model, but no named budgets
    exported = tmp_path / "budget"
    export(tiny_model("M*E-M", seed=5, mamba_dt_limit=(1e-3, 1e4)), SMALL, exported)
    assert_user_error(generate(capsys, exported), "generate", str(exported),
                      "not an elastic checkpoint", "budgets.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(generate(capsys, empty), "generate", str(empty), "not an elastic checkpoint")


def test_generate_missing_tokenizer_file(capsys, elastic_dir, no_weight_loading):
    (elastic_dir / "char_tokenizer.json").unlink()
    line = assert_user_error(generate(capsys, elastic_dir), "generate", str(elastic_dir),
                             "char_tokenizer.json")
    assert "sentencepiece" not in line and "tiktoken" not in line


def test_generate_corrupt_tokenizer_file(capsys, elastic_dir, no_weight_loading):
    (elastic_dir / "char_tokenizer.json").write_text('{"alpha')
    assert_user_error(generate(capsys, elastic_dir), "generate",
                      str(elastic_dir / "char_tokenizer.json"), "corrupt")


def test_generate_unknown_budget_is_found_before_the_weights_load(capsys, elastic_dir,
                                                                  no_weight_loading):
    result = run(capsys, "generate", "--checkpoint", str(elastic_dir), "--think-budget", "tiny",
                 "--answer-budget", "full", "--prompt", "Q:1+2=?")
    assert_user_error(result, "generate", "--think-budget 'tiny' is not a budget", "small")


# --------------------------------------------------------------------------------------------------
# Argument syntax, --debug


def test_usage_errors_are_one_line(capsys):
    assert_user_error(run(capsys, "generate"), "generate", "--checkpoint")
    assert_user_error(run(capsys, "generate", "--checkpoint", "x", "--think-budget", "a",
                          "--answer-budget", "b", "--max-new-tokens", "many"), "generate", "many")
    assert_user_error(run(capsys, "train", "--config"), "train", "--config")
    assert_user_error(run(capsys, "fly"), "", "fly")
    assert_user_error(run(capsys), "", "command")


def run_process(*argv: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "star_elastic.cli", *argv], capture_output=True,
                          text=True, env={**ENV, **env}, timeout=300)


def test_the_real_process_prints_one_line_and_exits_2(tmp_path):
    result = run_process("generate", "--checkpoint", str(tmp_path / "nope"), "--think-budget", "a",
                         "--answer-budget", "b")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"star-elastic generate: error: --checkpoint {tmp_path / 'nope'} does not exist"]
    assert result.stdout == ""


@pytest.mark.parametrize("how", ["flag-first", "flag-after-command", "environment"])
def test_debug_shows_the_traceback(tmp_path, how):
    args = ["generate", "--checkpoint", str(tmp_path / "nope"), "--think-budget", "a", "--answer-budget", "b"]
    env = {}
    if how == "flag-first":
        args = ["--debug", *args]
    elif how == "flag-after-command":
        args.append("--debug")
    else:
        env["STAR_ELASTIC_DEBUG"] = "1"
    result = run_process(*args, **env)
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("star-elastic generate: error: ")


# --------------------------------------------------------------------------------------------------
# train: the config file, the output directory, a full disk


def tiny_train_config(path: Path, **train_overrides) -> Path:
    train = {"budget_names": '["full", "half"]', "budget_targets": "[1.0, 0.5]", "lr": "1e-3",
             "warmup_steps": "1", "progress": "false", "checkpoint_every": "1"}
    train.update({key: str(value) for key, value in train_overrides.items()})
    path.write_text("\n".join([
        "[model]", "init_seed = 0",
        "[model.config]", 'layer_pattern = "M*-E"', "vocab_size = 32", "hidden_size = 32",
        "mamba_num_heads = 4", "mamba_head_dim = 8", "mamba_num_groups = 2", "mamba_state_size = 8",
        "num_attention_heads = 2", "num_key_value_heads = 1", "attention_head_dim = 8",
        "mlp_intermediate_size = 32", "moe_num_experts = 4", "moe_top_k = 2",
        "moe_intermediate_size = 16", "moe_shared_intermediate_size = 16", "width_granularity = 8",
        "[data]", 'source = "synthetic:addition"', "count = 16", "min_digits = 1", "max_digits = 1",
        "max_len = 28",
        "[train]", *(f"{key} = {value}" for key, value in train.items()),
        "[[train.stages]]", 'name = "only"', "steps = 2", "seq_len = 28", "batch_size = 2", ""]))
    return path


def test_train_config_that_does_not_exist(capsys, tmp_path, no_weight_loading):
    missing = tmp_path / "nope.toml"
    assert_user_error(run(capsys, "train", "--config", str(missing)), "train", "--config",
                      str(missing), "does not exist")


def test_train_config_that_is_not_toml(capsys, tmp_path, no_weight_loading):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr = ")
    assert_user_error(run(capsys, "train", "--config", str(bad)), "train", str(bad), "not valid TOML")


def test_train_config_without_a_train_table(capsys, tmp_path, no_weight_loading):
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\ninit_seed = 0\n')
    assert_user_error(run(capsys, "train", "--config", str(bad)), "train", str(bad), "[train]")


def test_train_config_with_an_unknown_setting(capsys, tmp_path, no_weight_loading):
    config = tiny_train_config(tmp_path / "typo.toml", lrr="1e-3")
    assert_user_error(run(capsys, "train", "--config", str(config), "--out", str(tmp_path / "run")),
                      "train", str(config), "lrr", "[train]")


def test_train_config_with_a_bad_value(capsys, tmp_path, no_weight_loading):
    config = tiny_train_config(tmp_path / "bad.toml", mask_mode='"fuzzy"')
    assert_user_error(run(capsys, "train", "--config", str(config), "--out", str(tmp_path / "run")),
                      "train", str(config), "mask_mode")


def test_train_model_checkpoint_that_does_not_exist(capsys, tmp_path):
    config = tmp_path / "from_checkpoint.toml"
    text = tiny_train_config(tmp_path / "base.toml").read_text()
    missing = tmp_path / "no-such-parent"
    config.write_text(f'[model]\ncheckpoint = "{missing}"\n[data]' + text.split("[data]", 1)[1])
    assert_user_error(run(capsys, "train", "--config", str(config), "--out", str(tmp_path / "run")),
                      "train", str(missing), "does not exist")


def test_train_output_directory_under_a_regular_file(capsys, tmp_path, no_weight_loading):
    # A path below a regular file cannot be created by anyone, root included.
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = tiny_train_config(tmp_path / "tiny.toml")
    out = blocker / "run"
    assert_user_error(run(capsys, "train", "--config", str(config), "--out", str(out)),
                      "train", "--out", str(out), "Not a directory")


def test_train_output_directory_permission_denied_simulated(capsys, tmp_path, monkeypatch,
                                                            no_weight_loading):
    # Root may write anywhere, so the denial is simulated at the system call that makes directories.
    out = tmp_path / "locked" / "run"
    real_mkdir = os.mkdir

    def denied(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "locked")):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", denied)
    config = tiny_train_config(tmp_path / "tiny.toml")
    assert_user_error(run(capsys, "train", "--config", str(config), "--out", str(out)),
                      "train", "--out", str(out), "Permission denied")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions (the simulated "
                                              "and the under-a-file tests cover this as root)")
def test_train_output_directory_permission_denied(capsys, tmp_path, no_weight_loading):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        config = tiny_train_config(tmp_path / "tiny.toml")
        assert_user_error(run(capsys, "train", "--config", str(config), "--out", str(locked / "run")),
                          "train", "--out", "Permission denied")
    finally:
        locked.chmod(0o700)


def test_train_disk_full_while_writing_a_checkpoint(capsys, tmp_path, monkeypatch):
    real_save = training_checkpoint.save_file

    def disk_full(tensors, filename, *args, **kwargs):
        real_save(tensors, filename, *args, **kwargs)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 3])  # what fitted before the disk filled up
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))

    monkeypatch.setattr(training_checkpoint, "save_file", disk_full)
    config = tiny_train_config(tmp_path / "tiny.toml")
    out = tmp_path / "run"
    assert_user_error(run(capsys, "train", "--config", str(config), "--out", str(out)), "train",
                      "No space left on device", "tensors.safetensors")
    checkpoints = out / "checkpoints"
    assert not (checkpoints / "latest").exists()
    assert sorted(p.name for p in checkpoints.iterdir()) == []  # no step-*, no half-written staging dir


def test_train_torchrun_strategy_without_torchrun(capsys, tmp_path, monkeypatch, no_weight_loading):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    config = tiny_train_config(tmp_path / "ddp.toml")
    config.write_text(config.read_text() + '[distributed]\nstrategy = "ddp"\n')
    assert_user_error(run(capsys, "train", "--config", str(config), "--out", str(tmp_path / "run")),
                      "train", "torchrun")


# --------------------------------------------------------------------------------------------------
# train: resuming from --out, and starting fresh


def test_train_help_documents_resuming_and_starting_fresh(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "resume" in text.lower() and "--fresh" in text


def test_train_resumes_refuses_a_new_config_and_starts_fresh_on_request(capsys, tmp_path):
    out = tmp_path / "run"
    first = tiny_train_config(tmp_path / "first.toml")
    code, lines = run(capsys, "train", "--config", str(first), "--out", str(out), "--steps", "1")
    assert code == 0, lines
    assert not any("resumed" in line for line in lines)
    # the same config continues where the run stopped
    code, lines = run(capsys, "train", "--config", str(first), "--out", str(out))
    assert code == 0, lines
    assert "resumed at step 1" in lines
    finished = training_checkpoint.latest_checkpoint(out / "checkpoints")
    # a changed config is not mixed into the run ...
    changed = tiny_train_config(tmp_path / "changed.toml", lr="5e-4")
    assert_user_error(run(capsys, "train", "--config", str(changed), "--out", str(out)), "train",
                      str(out), "different config", "train.lr", "--fresh")
    assert training_checkpoint.latest_checkpoint(out / "checkpoints") == finished  # untouched
    # ... unless asked to start over
    code, lines = run(capsys, "train", "--config", str(changed), "--out", str(out), "--fresh",
                      "--steps", "1")
    assert code == 0, lines
    assert not any("resumed" in line for line in lines)
    step, state = training_checkpoint.load_checkpoint(training_checkpoint.latest_checkpoint(out / "checkpoints"))
    assert step == 1 and state["config"]["lr"] == 5e-4
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0]  # the old run's metrics went with it


# --------------------------------------------------------------------------------------------------
# demo: the output directory is checked before anything runs


def test_demo_output_directory_under_a_regular_file(capsys, tmp_path, monkeypatch):
    from star_elastic import demo

    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: pytest.fail("the demo started"))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_user_error(run(capsys, "demo", "--out", str(blocker / "out")), "demo", "--out",
                      str(blocker / "out"), "Not a directory")


# --------------------------------------------------------------------------------------------------
# Help texts


@pytest.mark.parametrize("command", [[], ["train"], ["generate"], ["demo"]])
def test_help_texts_have_no_markup(capsys, command):
    with pytest.raises(SystemExit) as exit_:
        cli.main([*command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for markup in ("``", ":class:", ":func:", ":meth:", "`"):
        assert markup not in text, (markup, text)
    if not command:
        assert "--debug" in text and "STAR_ELASTIC_DEBUG" in text


def test_generate_into_a_closed_pipe_exits_quietly(saved):
    # like `star-elastic generate ... | head -c 10`: the reader leaves while text still streams
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "star_elastic.cli", "generate", "--checkpoint",
                                 str(saved / "own"), "--think-budget", "small", "--answer-budget", "full",
                                 "--prompt", "Q:1+2=?", "--max-new-tokens", "4"],
                                stdout=write_end, stderr=subprocess.PIPE, text=True, env=ENV, timeout=300)
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr


def test_a_run_without_its_config_record_is_compared_by_its_checkpoint(capsys, tmp_path):
    # e.g. a run started from the Python API: only the checkpoint says how it was trained
    out = tmp_path / "run"
    first = tiny_train_config(tmp_path / "first.toml")
    code, lines = run(capsys, "train", "--config", str(first), "--out", str(out), "--steps", "1")
    assert code == 0, lines
    (out / cli.RUN_RECORD).unlink()
    changed = tiny_train_config(tmp_path / "changed.toml", warmup_steps="2")
    assert_user_error(run(capsys, "train", "--config", str(changed), "--out", str(out)), "train",
                      "different config", "train.warmup_steps")
    code, lines = run(capsys, "train", "--config", str(first), "--out", str(out))
    assert code == 0, lines
    assert "resumed at step 1" in lines
