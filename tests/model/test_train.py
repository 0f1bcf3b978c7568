"""Elastic distillation: every budget learns; resume after SIGKILL is exact; data parallelism."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from star_elastic import ElasticModel, data, losses
from star_elastic.budget import Budget
from star_elastic.checkpoint import load_checkpoint, latest_checkpoint
from star_elastic.losses import kd_loss
from star_elastic.router import ElasticRouter
from star_elastic.train import ElasticDistillationTrainer, Stage, TrainConfig, make_student
from tests.model.helpers import toy_config

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny_train.toml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_config_validation():
    base = dict(budget_names=("a", "b"), budget_targets=(1.0, 0.5))
    with pytest.raises(ValueError, match="at least one stage"):
        TrainConfig(stages=[], **base)
    with pytest.raises(ValueError, match="one weight per budget"):
        TrainConfig(stages=[Stage("s", 1, 8, 2, (1.0,))], **base)
    with pytest.raises(ValueError, match="seq_len"):
        TrainConfig(stages=[Stage("s", 1, 1, 2)], **base)
    parsed = TrainConfig.from_dict({**base, "stages": [
        {"name": "s", "steps": 3, "seq_len": 8, "batch_size": 2, "budget_weights": "uniform"},
        {"name": "t", "steps": 2, "seq_len": 8, "batch_size": 2, "budget_weights": [0.7, 0.3]},
        {"name": "u", "steps": 1, "seq_len": 8, "batch_size": 2, "budget_weights": [2, 1]}]})
    assert parsed.total_steps == 6 and parsed.stage_at(3).name == "t"
    assert parsed.stages[0].budget_weights is None and parsed.stages[1].budget_weights == (0.7, 0.3)
    with pytest.raises(ValueError, match=r"stage 't': ramp_steps must be in \[0, steps=2\]"):
        TrainConfig(stages=[Stage("s", 1, 8, 2), Stage("t", 2, 8, 2, ramp_steps=3)], **base)
    with pytest.raises(ValueError, match="stage 's': the first stage has no earlier stage"):
        TrainConfig(stages=[Stage("s", 2, 8, 2, ramp_steps=1)], **base)


def toy_teacher_and_student(seed: int = 0):
    """(config, teacher, student): a toy parent and its copy, nudged off it so there is something
    to distil."""
    torch.manual_seed(seed)
    config = toy_config(vocab_size=32)
    teacher = ElasticModel(config)
    student = make_student(teacher)
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.03)
    return config, teacher, student


def test_tiny_elastic_run_lowers_the_distillation_loss_of_every_budget(tmp_path):
    config, teacher, student = toy_teacher_and_student(0)
    tokenizer = data.load_tokenizer("char")
    texts = [example.text for example in data.arithmetic_examples(96, min_digits=1, max_digits=2,
                                                                    seed=1)]
    tokens, mask = data.encode_batch(tokenizer, texts, 42, truncate=False)
    train_config = TrainConfig(
        stages=[Stage("short", 6, 32, 8), Stage("long", 6, 42, 8, (0.5, 0.3, 0.2))],
        budget_names=("full", "70%", "45%"), budget_targets=(1.0, 0.7, 0.45), lr=3e-3,
        warmup_steps=2, out_dir=str(tmp_path), progress=False)
    router = ElasticRouter(config, train_config.budget_names, train_config.budget_targets)
    trainer = ElasticDistillationTrainer(teacher, student, router, tokens, mask, train_config)
    held_out, held_mask = data.encode_batch(
        tokenizer, [e.text for e in data.arithmetic_examples(16, min_digits=1, max_digits=2,
                                                             seed=99)], 42, truncate=False)

    def loss_at(budgets):
        with torch.no_grad():
            reference = teacher(held_out)
            return {name: float(kd_loss(student(held_out, budget), reference, mask=held_mask))
                    for name, budget in budgets.items()}

    trainer.train(steps=2)  # let the router settle before taking the "before" point
    budgets = trainer.trained_budgets()
    before = loss_at(budgets)
    trainer.train()
    after = loss_at(budgets)
    for name in budgets:
        assert after[name] < 0.8 * before[name], (name, before[name], after[name])
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(12))
    assert {"kd/full", "kd/70%", "kd/45%", "cost/full", "cost/70%", "cost/45%", "loss", "lr",
            "tau"} <= set(metrics[-1])
    assert metrics[-1]["cost/full"] == 1.0 and 0 < metrics[-1]["cost/45%"] < 1


def run_cli(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "star_elastic.cli", "train", "--config",
                             str(TINY), "--out", str(out), *extra], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_resume_after_sigkill_continues_exactly(tmp_path):
    straight = run_cli(tmp_path / "straight")
    assert straight.wait(timeout=600) == 0, straight.stderr.read()[-2000:]
    killed = run_cli(tmp_path / "killed")
    deadline = time.time() + 600
    while latest_checkpoint(tmp_path / "killed" / "checkpoints") is None:
        assert killed.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    interrupted_at = load_checkpoint(latest_checkpoint(tmp_path / "killed" / "checkpoints"))[0]
    assert interrupted_at < 8
    resumed = run_cli(tmp_path / "killed")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    assert f"resumed at step {interrupted_at}" in err
    history = lambda run: load_checkpoint(latest_checkpoint(tmp_path / run / "checkpoints"))[1]["history"]
    straight_losses = [m["loss"] for m in history("straight")]
    resumed_losses = [m["loss"] for m in history("killed")]
    assert len(straight_losses) == 8
    assert resumed_losses == straight_losses  # exactly, step by step
    assert json.loads(out)["budgets"] == json.loads(straight.stdout.read())["budgets"]


WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.fixture(scope="module")
def one_rank_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    single = subprocess.run([sys.executable, str(WORKER), "none", str(out)], env=ENV,
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert single.returncode == 0, single.stderr[-3000:]
    return out


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_cpu_ranks_match_one_rank(tmp_path, strategy, one_rank_run):
    worker = WORKER
    double = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
         str(worker), strategy, str(tmp_path / "two")],
        env=ENV, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert double.returncode == 0, double.stderr[-3000:]
    rank0 = load_file(tmp_path / "two" / "weights-rank0.safetensors")
    rank1 = load_file(tmp_path / "two" / "weights-rank1.safetensors")
    alone = load_file(one_rank_run / "weights-rank0.safetensors")
    for name, tensor in rank0.items():
        assert torch.equal(tensor, rank1[name]), f"ranks disagree on {name}"
        assert torch.allclose(tensor, alone[name], atol=1e-5, rtol=1e-4), name
    one = json.loads((one_rank_run / "history.json").read_text())
    two = json.loads((tmp_path / "two" / "history.json").read_text())
    for a, b in zip(one, two):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)


def _tiny_trainer(tmp_path, *, batch_size, grad_accum, mask_mode="hard", steps=1, seed=0,
                  budget_weights=None):
    """An ElasticDistillationTrainer over a fixed toy parent and arithmetic data."""
    config, teacher, student = toy_teacher_and_student(seed)
    tokenizer = data.load_tokenizer("char")
    tokens, mask = data.encode_batch(
        tokenizer, [e.text for e in data.arithmetic_examples(64, min_digits=1, max_digits=2, seed=1)],
        42, truncate=False)
    train_config = TrainConfig(
        stages=[Stage("only", steps, 42, batch_size, budget_weights)],
        budget_names=("full", "70%", "45%"),
        budget_targets=(1.0, 0.7, 0.45), lr=3e-3, warmup_steps=0, grad_accum=grad_accum,
        mask_mode=mask_mode, out_dir=str(tmp_path), progress=False)
    router = ElasticRouter(config, train_config.budget_names, train_config.budget_targets)
    return ElasticDistillationTrainer(teacher, student, router, tokens, mask, train_config)


def test_gradient_accumulation_equals_one_large_batch(tmp_path):
    """Two micro-batches of 4 accumulate to the update of one batch of the same 8 samples."""
    rows = torch.arange(8)
    budget_ids = torch.tensor([0, 1, 2, 0, 1, 2, 2, 1])

    def fixed_batches(trainer, micro_size):
        def batch(step, micro):
            picked = rows[micro * micro_size:(micro + 1) * micro_size]
            return (trainer.tokens[picked, :24], trainer.mask[picked, :24],
                    budget_ids[micro * micro_size:(micro + 1) * micro_size],
                    trainer.config.stage_at(step), torch.ones(len(picked), dtype=torch.bool))
        trainer._batch = batch

    large = _tiny_trainer(tmp_path / "large", batch_size=8, grad_accum=1)
    accumulated = _tiny_trainer(tmp_path / "accumulated", batch_size=4, grad_accum=2)
    fixed_batches(large, 8)
    fixed_batches(accumulated, 4)
    # Compare the gradients the optimizer receives (Adam's first step is about lr * sign(grad),
    # which would turn rounding differences of near-zero gradients into full-size ones).
    grads = {}
    for run, trainer in (("large", large), ("accumulated", accumulated)):
        def capture(run=run, trainer=trainer):
            grads[run] = [p.grad.clone() for p in trainer.objective.parameters()]
        trainer.optimizer.step = capture
    one = large.train_step()
    two = accumulated.train_step()
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    for name in ("kd/full", "kd/70%", "kd/45%"):
        assert two[name] == pytest.approx(one[name], rel=1e-5)
    names = [name for name, _ in large.objective.named_parameters()]
    assert any(g.abs().sum() > 0 for g in grads["large"])
    for name, a, b in zip(names, grads["large"], grads["accumulated"]):
        # the router gradients are sums of cancelling terms: 1e-7 absolute is below their rounding
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4), (name, (a - b).abs().max())
    # and accumulation is not a no-op: the first micro-batch alone gives a different gradient
    half = _tiny_trainer(tmp_path / "half", batch_size=4, grad_accum=1)
    fixed_batches(half, 4)
    half.optimizer.step = lambda: grads.__setitem__("half", [p.grad.clone() for p in half.objective.parameters()])
    half.train_step()
    assert not all(torch.allclose(a, b, atol=1e-7, rtol=1e-4) for a, b in zip(grads["half"], grads["large"]))


def test_integer_budget_weights_draw_every_budget(tmp_path):
    trainer = _tiny_trainer(tmp_path, batch_size=64, grad_accum=1, budget_weights=(2, 1, 1))
    _, _, budget_ids, _, _ = trainer._batch(0, 0)
    counts = torch.bincount(budget_ids, minlength=3)
    assert counts.sum() == 64 and counts.min() > 0 and counts[0] > counts[2]


def test_after_step_sees_every_step_once_and_leaves_the_run_as_it_was(tmp_path):
    seen = []
    trainer = _tiny_trainer(tmp_path / "hooked", batch_size=6, grad_accum=1, steps=4)
    history = trainer.train(after_step=lambda metrics: seen.append((trainer.step, metrics["step"])))
    assert seen == [(1, 0), (2, 1), (3, 2), (4, 3)]
    plain = _tiny_trainer(tmp_path / "plain", batch_size=6, grad_accum=1, steps=4).train()
    assert [m["loss"] for m in history] == [m["loss"] for m in plain]


def test_tensorboard_receives_every_metric(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = _tiny_trainer(tmp_path, batch_size=6, grad_accum=1, steps=3)
    history = trainer.train()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "lr", "tau", "scale", "kd/full", "kd/70%", "kd/45%"} <= tags
    logged = [(e.step, e.value) for e in events.Scalars("loss")]
    assert [step for step, _ in logged] == [0, 1, 2]
    assert [value for _, value in logged] == pytest.approx([m["loss"] for m in history], rel=1e-6)


def test_soft_mask_training_run_lowers_every_budgets_loss_and_trains_the_router(tmp_path):
    trainer = _tiny_trainer(tmp_path, batch_size=8, grad_accum=1, mask_mode="soft", steps=12)
    router_before = [p.detach().clone() for p in trainer.objective.router.parameters()]
    first = trainer.train(steps=3)
    history = trainer.train()
    assert len(history) == 12
    for name in ("kd/full", "kd/70%", "kd/45%"):
        early = [m[name] for m in first if m[name] is not None]
        late = [m[name] for m in history[-3:] if m[name] is not None]
        assert early and late and sum(late) / len(late) < sum(early) / len(early), name
    moved = [not torch.equal(a, b) for a, b in zip(router_before, trainer.objective.router.parameters())]
    assert any(moved)
    assert set(trainer.trained_budgets()) == {"full", "70%", "45%"}


def short_and_long_problems():
    """(tokenizer, tokens (80, 72), mask): 40 one-digit and 40 three-to-four-digit additions,
    whole, padded to 72."""
    tokenizer = data.load_tokenizer("char")
    examples = (data.arithmetic_examples(40, min_digits=1, max_digits=1, seed=3)
                + data.arithmetic_examples(40, min_digits=3, max_digits=4, seed=4))
    tokens, mask = data.encode_batch(tokenizer, [e.text for e in examples], 72, truncate=False)
    return tokenizer, tokens, mask


def two_stage_trainer(tmp_path, batch_size: int):
    """(teacher, student, tokens, mask, budgets, train config, trainer): fixed budgets "full" and
    "half" distilled over one short step (sequences <= 27 tokens) and one long step (all)."""
    config, teacher, student = toy_teacher_and_student(0)
    _, tokens, mask = short_and_long_problems()
    budgets = {"full": Budget(), "half": Budget(mlp_width=config.mlp_intermediate_size // 2)}
    train_config = TrainConfig(
        stages=[Stage("short", 1, 27, batch_size), Stage("long", 1, 72, batch_size)],
        budget_names=tuple(budgets), budget_targets=(1.0, 0.5), out_dir=str(tmp_path),
        progress=False)
    trainer = ElasticDistillationTrainer(teacher, student, None, tokens, mask, train_config,
                                         budgets=budgets)
    return teacher, student, tokens, mask, budgets, train_config, trainer


def test_every_stage_draws_whole_samples_and_the_short_stage_only_short_ones(tmp_path):
    """No stage cuts a sample: every drawn sequence keeps its </think>, its answer and <eos>, and
    the answer is the problem's sum (so nothing inside was cut either)."""
    config, teacher, student = toy_teacher_and_student(0)
    tokenizer, tokens, mask = short_and_long_problems()
    train_config = TrainConfig(
        stages=[Stage("short", 3, 27, 16), Stage("long", 3, 72, 16, (0.5, 0.3, 0.2))],
        budget_names=("full", "70%", "45%"), budget_targets=(1.0, 0.7, 0.45),
        out_dir=str(tmp_path), progress=False)
    router = ElasticRouter(config, train_config.budget_names, train_config.budget_targets)
    trainer = ElasticDistillationTrainer(teacher, student, router, tokens, mask, train_config)
    longest = {}
    for step in range(train_config.total_steps):
        batch_tokens, batch_mask, _, stage, _ = trainer._batch(step, 0)
        assert batch_tokens.shape[1] <= stage.seq_len
        for row, row_mask in zip(batch_tokens, batch_mask):
            text = tokenizer.decode(row[row_mask].tolist())
            assert text.startswith("<bos>Q:") and text.endswith("\n<eos>"), text
            question, rest = text[len("<bos>Q:"):].split("=?", 1)
            a, b = (int(v) for v in question.split("+"))
            assert "</think>" in rest and rest.split("</think>", 1)[1] == f"A:{a + b}\n<eos>", text
            longest[stage.name] = max(longest.get(stage.name, 0), len(str(max(a, b))))
    assert longest == {"short": 1, "long": 4}  # the long stage draws the long problems too
    too_short = TrainConfig(stages=[Stage("tiny", 1, 20, 4)], budget_names=("full",),
                            budget_targets=(1.0,), out_dir=str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="stage 'tiny': no training sequence fits whole"):
        ElasticDistillationTrainer(teacher, student, None, tokens, mask, too_short,
                                   budgets={"full": Budget()})


def test_a_ramped_stage_grows_its_new_rows_to_their_natural_share(tmp_path):
    """ramp_steps = 4: at the long stage's step k the rows longer than the short stage's 27 tokens
    are (k + 1) / 4 of their natural share (half the rows; 5 sigma of 4000 draws), all whole; from
    step 4 on the stage draws exactly what it draws without a ramp."""
    _, teacher, student = toy_teacher_and_student(0)
    tokenizer, tokens, mask = short_and_long_problems()
    natural = float((mask.sum(1) > 27).float().mean())
    assert natural == 0.5

    def trainer(ramp_steps):
        config = TrainConfig(stages=[Stage("short", 2, 27, 4000), Stage("long", 6, 72, 4000, ramp_steps=ramp_steps)],
                             budget_names=("full",), budget_targets=(1.0,), out_dir=str(tmp_path),
                             progress=False)
        return ElasticDistillationTrainer(teacher, student, None, tokens, mask, config,
                                          budgets={"full": Budget()})

    ramped, plain = trainer(4), trainer(0)
    for k in range(6):
        batch_tokens, batch_mask, _, stage, short_rows = ramped._batch(2 + k, 0)
        plain_tokens, _, _, _, plain_short_rows = plain._batch(2 + k, 0)
        new_share = float((~short_rows).float().mean())
        expected = natural * min(1.0, (k + 1) / 4)
        assert abs(new_share - expected) < 5 * (expected * (1 - expected) / 4000) ** 0.5 + 1e-9, (k, new_share)
        if k < 3:  # without the ramp the new rows come at their natural share at once
            assert abs(float((~plain_short_rows).float().mean()) - natural) < 0.04
        if k >= 4:
            assert torch.equal(batch_tokens, plain_tokens)
        for row, row_mask in zip(batch_tokens[:64], batch_mask[:64]):
            text = tokenizer.decode(row[row_mask].tolist())
            assert "</think>" in text and text.endswith("\n<eos>"), text


def test_later_stages_log_the_kd_of_the_rows_the_first_stage_also_had(tmp_path):
    """kd_short/<budget> is the mean per-sample KD over the batch's rows that fit the first stage,
    recomputed here from the student before the step; the first stage logs none."""
    teacher, student, _, _, budgets, train_config, trainer = two_stage_trainer(tmp_path, 16)
    first = trainer.train_step()
    assert not any(key.startswith("kd_short/") for key in first)
    batch_tokens, batch_mask, budget_ids, _, short_rows = trainer._batch(1, 0)
    lengths = batch_mask.sum(dim=1)
    assert torch.equal(short_rows, lengths <= 27) and 0 < int(short_rows.sum()) < len(short_rows)
    with torch.no_grad():
        teacher_logits = teacher(batch_tokens)
        expected = {}
        for b, (name, budget) in enumerate(budgets.items()):
            rows = ((budget_ids == b) & short_rows).nonzero().flatten()
            if rows.numel():
                per_sample = losses.kd_loss_per_sample(student(batch_tokens[rows], budget=budget),
                                                       teacher_logits[rows],
                                                       temperature=train_config.kd_temperature,
                                                       mask=batch_mask[rows])
                expected[name] = float(per_sample.mean())
            else:
                expected[name] = None
    second = trainer.train_step()
    for name, value in expected.items():
        if value is None:
            assert second[f"kd_short/{name}"] is None
        else:
            assert second[f"kd_short/{name}"] == pytest.approx(value, rel=1e-5)
            assert second[f"kd_short/{name}"] != pytest.approx(second[f"kd/{name}"], rel=1e-3)


def test_a_row_carries_the_same_kd_in_either_stage(tmp_path):
    """The KD of a budget cannot jump at the stage switch because of the recipe: rows of the short
    stage, drawn by the long stage beside a long row (padded to its length), give the objective
    the same per-sample KD, so at the switch only the long rows (new data) change the logged KD.
    A stage that cut its rows (the old first stage's truncation) would fail this."""
    _, _, tokens, mask, _, train_config, trainer = two_stage_trainer(tmp_path, 8)
    short_tokens, short_mask, budget_ids, stage, _ = trainer._batch(0, 0)
    assert stage.name == "short" and short_tokens.shape[1] < 72
    long_row = int(mask.sum(1).argmax())
    assert mask[long_row].sum() > 27
    rows = [int((tokens[:, :short_tokens.shape[1]] == r).all(1).nonzero()[0]) for r in short_tokens]
    long_tokens = torch.cat([tokens[rows], tokens[long_row:long_row + 1]])
    long_mask = torch.cat([mask[rows], mask[long_row:long_row + 1]])
    long_budgets = torch.cat([budget_ids, budget_ids[:1]])
    short_rows = torch.arange(len(rows) + 1) < len(rows)

    def kd_sums(tokens_, mask_, budget_ids_, short_rows_=None):
        with torch.no_grad():
            _, sums, _, _ = trainer.objective(
                tokens_, mask_, trainer._teacher_logits(tokens_, budget_ids_), budget_ids_, step=0,
                seed=0, tau=1.0, scale=1.0, temperature=train_config.kd_temperature, ce_weight=0.0,
                router_lambda=0.0, total_samples=len(budget_ids_), short_rows=short_rows_)
        return sums

    first_kd, first_counts, _, _ = kd_sums(short_tokens, short_mask, budget_ids)
    _, _, later_short_kd, later_short_counts = kd_sums(long_tokens, long_mask, long_budgets,
                                                       short_rows)
    assert torch.equal(first_counts, later_short_counts) and first_counts.sum() == len(rows)
    torch.testing.assert_close(later_short_kd, first_kd, rtol=1e-5, atol=1e-7)
    assert (first_kd > 0).all()
    # ... and cutting the rows, as the old first stage did, would change it
    cut = 16
    cut_kd, _, _, _ = kd_sums(short_tokens[:, :cut], short_mask[:, :cut], budget_ids)
    assert not torch.allclose(cut_kd, first_kd, rtol=1e-3)


def test_step_metrics_count_flops_and_log_the_sampled_architecture(tmp_path):
    from star_elastic.params import parameter_count

    trainer = _tiny_trainer(tmp_path, batch_size=6, grad_accum=1, steps=1)
    tokens, mask, budget_ids, _, _ = trainer._batch(0, 0)
    metrics = trainer.train_step()
    length = tokens.shape[1]
    config = trainer.teacher.config
    teacher = 2 * parameter_count(config).active_without_embeddings * 6 * length
    student = 0
    for b, name in enumerate(("full", "70%", "45%")):
        budget = Budget.from_dict(json.loads(metrics[f"arch/{name}"]))
        rows = max(int((budget_ids == b).sum()), 1)  # a budget without samples still runs one row
        student += 6 * parameter_count(config, budget).active_without_embeddings * rows * length
    assert metrics["flops"] == pytest.approx(teacher + student)
    full = Budget.from_dict(json.loads(metrics["arch/full"]))
    assert full.resolve(config) == Budget().resolve(config)
