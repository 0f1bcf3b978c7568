"""The end-to-end Star Elastic demo on a synthetic reasoning task, on a CPU, with no downloads.

``star-elastic demo [--quick] [--out DIR]`` runs, with a fixed seed:

1. the task: multi-digit addition written as ``Q:a+b=?\\n<think>digit-by-digit scratchpad</think>A:sum``;
2. a tiny hybrid Mamba-2 / attention / MLP / MoE parent trained on it (next-token cross-entropy);
3. importance estimation and the permutation that makes every submodel a prefix;
4. one elastic distillation run with the router and the two-stage curriculum for three budgets
   (100 / 70 / 45 % of the active parameters), the frozen parent as teacher;
5. zero-shot slicing of every budget (checked against the masked parent) and its export;
6. evaluation of every budget and every (think, answer) pair: accuracy, tokens and latency, with
   the answering budget re-prefilling prompt + thinking at the switch; then every mixed pair again
   with the cache-transplant switch, to measure what that shortcut costs in accuracy;
7. the cost of that one elastic run against distilling each smaller budget separately (same steps
   each), with the accuracy the separately distilled budgets reach;
8. ``results.json``, ``results.md`` and ``pareto.png`` (accuracy against latency) in ``DIR``, and an
   elastic checkpoint (``DIR/elastic``: parent + named budgets + tokenizer) plus one exported
   checkpoint per budget (``DIR/budgets/NAME``).

Everything runs on the pure-PyTorch reference kernels, so the model is tiny; the numbers show the
method's mechanics, not the paper's scale.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from pathlib import Path

import torch

from . import data, schedules
from .budget import Budget
from .elastic_checkpoint import save_elastic
from .generation import generate
from .importance import estimate_importance, permute_
from .losses import next_token_ce
from .model import ElasticModel
from .config import ElasticConfig
from .params import parameter_count
from .router import ElasticRouter
from .slicing import export, slice_model
from .train import ElasticDistillationTrainer, Stage, TrainConfig, make_student


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run (the full run and ``--quick``)."""

    train_examples: int
    test_examples: int
    min_digits: int
    max_digits: int
    parent_steps: int
    parent_batch: int
    elastic_stage_steps: tuple[int, int]
    elastic_batch: int
    separate_steps: int
    hidden_size: int = 64
    layer_pattern: str = "M*EM-E"

    @classmethod
    def full(cls) -> "DemoSettings":
        return cls(train_examples=4000, test_examples=64, min_digits=1, max_digits=2,
                   parent_steps=400, parent_batch=32, elastic_stage_steps=(150, 150),
                   elastic_batch=24, separate_steps=300)

    @classmethod
    def quick(cls) -> "DemoSettings":
        return cls(train_examples=600, test_examples=12, min_digits=1, max_digits=2,
                   parent_steps=60, parent_batch=16, elastic_stage_steps=(8, 8),
                   elastic_batch=8, separate_steps=16)


BUDGETS = (("100%", 1.0), ("70%", 0.7), ("45%", 0.45))


def parent_config(settings: DemoSettings, vocab_size: int) -> ElasticConfig:
    return ElasticConfig(
        layer_pattern=settings.layer_pattern, vocab_size=vocab_size, hidden_size=settings.hidden_size,
        mamba_num_heads=8, mamba_head_dim=16, mamba_num_groups=2, mamba_state_size=16,
        mamba_chunk_size=64, num_attention_heads=4, num_key_value_heads=2, attention_head_dim=16,
        mlp_intermediate_size=4 * settings.hidden_size, moe_num_experts=8, moe_top_k=2,
        moe_intermediate_size=64, moe_shared_intermediate_size=64, width_granularity=8)


def train_parent(model: ElasticModel, tokens: torch.Tensor, mask: torch.Tensor,
                 settings: DemoSettings, seed: int) -> list[float]:
    """Next-token training of the parent; returns the loss of every step."""
    from tqdm.auto import tqdm

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    history = []
    model.train()
    for step in tqdm(range(settings.parent_steps), desc="parent training"):
        for group in optimizer.param_groups:
            group["lr"] = 3e-3 * schedules.warmup_cosine(step, settings.parent_steps, 20, 0.05)
        rows = torch.randint(0, tokens.shape[0], (settings.parent_batch,), generator=generator)
        length = int(mask[rows].sum(1).max())
        loss = next_token_ce(model(tokens[rows, :length]), tokens[rows, :length], mask[rows, :length])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        history.append(loss.item())
    model.eval()
    return history


def evaluate(model, tokenizer, examples, think_budget, answer_budget, *, max_new_tokens: int,
             switch: str = "reprefill"):
    """Accuracy, mean generated tokens and mean seconds per problem for one (think, answer) pair,
    the answering budget taking over by ``switch`` (``"reprefill"`` or ``"transplant"``)."""
    prompts = [example.prompt for example in examples]
    start = time.perf_counter()
    results = generate(model, tokenizer, prompts, think_budget=think_budget,
                       answer_budget=answer_budget, max_new_tokens=max_new_tokens, stop=("\n",),
                       switch=switch)
    seconds = time.perf_counter() - start
    correct = sum(data.parse_answer(r.answer) == data.parse_answer(e.answer)
                  for r, e in zip(results, examples))
    return {
        "accuracy": correct / len(examples),
        "thinking_tokens": sum(r.thinking_tokens for r in results) / len(results),
        "answer_tokens": sum(r.answer_tokens for r in results) / len(results),
        "seconds_per_problem": seconds / len(examples),
        # the phases run batched: every row carries its batch's phase time, so take one row's
        "thinking_seconds": results[0].thinking_seconds / len(examples),
        "switch_seconds": results[0].switch_seconds / len(examples),
    }


def _elastic_config(settings: DemoSettings, out: Path, seq_len: int, **overrides) -> TrainConfig:
    short = max(16, seq_len // 2)
    fields = dict(
        stages=[Stage("short", settings.elastic_stage_steps[0], short, settings.elastic_batch),
                Stage("long", settings.elastic_stage_steps[1], seq_len, settings.elastic_batch,
                      (0.5, 0.3, 0.2))],
        budget_names=tuple(name for name, _ in BUDGETS),
        budget_targets=tuple(target for _, target in BUDGETS),
        # lambda 4: at lambda 1 the distillation term outweighed the cost term and the 70% budget
        # settled at 56-63% of the parameters; in a trial of this demo lambda 4 put the 70% and 45%
        # budgets at 0.69 and 0.44 (the demo prints what each run reaches).
        lr=1e-3, router_lr=1e-2, router_lambda=4.0, warmup_steps=5, out_dir=str(out),
        ce_weight=0.0)
    fields.update(overrides)
    return TrainConfig(**fields)


def run_demo(out: str | Path, *, quick: bool = False, seed: int = 0) -> dict:
    """Run the whole pipeline; returns the results written to ``out/results.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = DemoSettings.quick() if quick else DemoSettings.full()
    torch.manual_seed(seed)
    random.seed(seed)
    timings = {}

    # 1. The task.
    tokenizer = data.load_tokenizer("char")
    train_examples = data.arithmetic_examples(settings.train_examples, min_digits=settings.min_digits,
                                              max_digits=settings.max_digits, seed=seed)
    test_examples = data.arithmetic_examples(settings.test_examples, min_digits=settings.min_digits,
                                             max_digits=settings.max_digits, seed=seed + 1)
    seq_len = max(len(tokenizer.encode(e.text)) for e in train_examples) + 2
    tokens, mask = data.encode_batch(tokenizer, [e.text for e in train_examples], seq_len)
    vocab = 8 * math.ceil(tokenizer.vocab_size / 8)

    # 2. The parent.
    parent = ElasticModel(parent_config(settings, vocab))
    start = time.perf_counter()
    parent_losses = train_parent(parent, tokens, mask, settings, seed)
    timings["parent_training_seconds"] = time.perf_counter() - start

    # 3. Importance and permutation (on a calibration batch of training problems).
    start = time.perf_counter()
    calibration = [tokens[i:i + 16, :seq_len] for i in range(0, 64, 16)]
    with torch.no_grad():
        probe = parent(tokens[:8])
        permute_(parent, estimate_importance(parent, calibration, rank_depth=False))
        permutation_error = float((parent(tokens[:8]) - probe).abs().max())
    timings["importance_seconds"] = time.perf_counter() - start

    # 4. One elastic distillation run over all budgets.
    teacher = parent
    student = make_student(parent)
    config = _elastic_config(settings, out / "elastic_run", seq_len)
    router = ElasticRouter(student.config, config.budget_names, config.budget_targets)
    trainer = ElasticDistillationTrainer(teacher, student, router, tokens, mask, config)
    start = time.perf_counter()
    trainer.train()
    timings["elastic_run_seconds"] = time.perf_counter() - start
    budgets = trainer.trained_budgets()
    student.eval()

    # 5. Zero-shot slicing, checked against the masked parent, and export.
    probe_ids = tokens[:4]
    slicing_error = {}
    with torch.no_grad():
        for name, budget in budgets.items():
            child = slice_model(student, budget)
            slicing_error[name] = float((child(probe_ids) - student(probe_ids, budget)).abs().max())
            export(student, budget, out / "budgets" / name)
    save_elastic(student, budgets, out / "elastic", tokenizer=tokenizer)

    # 6. Every budget and every (think, answer) pair.
    max_new = seq_len
    parent_params = parameter_count(student.config)
    pairs = {}
    for think_name, think_budget in budgets.items():
        for answer_name, answer_budget in budgets.items():
            with torch.no_grad():
                metrics = evaluate(student, tokenizer, test_examples, think_budget, answer_budget,
                                   max_new_tokens=max_new)
            pairs[f"{think_name}->{answer_name}"] = {"think": think_name, "answer": answer_name,
                                                     **metrics}
    # The cache-transplant switch (the answering budget reuses the thinking budget's sliced or
    # padded caches instead of re-prefilling) is approximate: measure what it costs per mixed pair.
    transplant = {}
    for key, pair in pairs.items():
        if pair["think"] == pair["answer"]:
            continue
        with torch.no_grad():
            metrics = evaluate(student, tokenizer, test_examples, budgets[pair["think"]],
                               budgets[pair["answer"]], max_new_tokens=max_new, switch="transplant")
        transplant[key] = {"think": pair["think"], "answer": pair["answer"], **metrics,
                           "reprefill_accuracy": pair["accuracy"],
                           "accuracy_cost": pair["accuracy"] - metrics["accuracy"],
                           "reprefill_switch_seconds": pair["switch_seconds"]}
    with torch.no_grad():
        parent_metrics = evaluate(parent, tokenizer, test_examples, None, None, max_new_tokens=max_new)
    per_budget = {}
    for name, budget in budgets.items():
        count = parameter_count(student.config, budget)
        per_budget[name] = {
            "target_fraction": dict(BUDGETS)[name],
            "active_params": count.active, "total_params": count.total,
            "active_fraction": count.active / parent_params.active,
            "budget": budget.to_dict(), "slicing_max_abs_error": slicing_error[name],
            **{k: v for k, v in pairs[f"{name}->{name}"].items() if k not in ("think", "answer")},
        }

    # 7. Separate distillation of each smaller budget (fixed architecture, same steps each).
    separate = {}
    for name, budget in list(budgets.items())[1:]:
        single = make_student(parent)
        separate_config = _elastic_config(
            settings, out / f"separate_{name.rstrip('%')}", seq_len,
            stages=[Stage("separate", settings.separate_steps, seq_len, settings.elastic_batch)],
            budget_names=(name,), budget_targets=(dict(BUDGETS)[name],))
        start = time.perf_counter()
        ElasticDistillationTrainer(parent, single, None, tokens, mask, separate_config,
                                   budgets={name: budget}).train()
        elapsed = time.perf_counter() - start
        single.eval()
        with torch.no_grad():
            metrics = evaluate(single, tokenizer, test_examples, budget, budget, max_new_tokens=max_new)
        separate[name] = {"seconds": elapsed, "steps": settings.separate_steps,
                          "accuracy": metrics["accuracy"]}
    elastic_steps = sum(settings.elastic_stage_steps)
    cost = {
        "elastic_run": {"seconds": timings["elastic_run_seconds"], "steps": elastic_steps,
                        "budgets_trained": len(budgets)},
        "separate_runs": separate,
        "separate_total_seconds": sum(s["seconds"] for s in separate.values()),
        "separate_total_steps": sum(s["steps"] for s in separate.values()),
    }

    # 8. The report.
    full_name = BUDGETS[0][0]
    full = pairs[f"{full_name}->{full_name}"]
    mixed = [p for key, p in pairs.items() if p["think"] != p["answer"] and p["answer"] == full_name]
    best_mixed = max(mixed, key=lambda p: (p["accuracy"], -p["seconds_per_problem"])) if mixed else None
    results = {
        "settings": dataclasses.asdict(settings), "seed": seed, "quick": quick,
        "parent": {"final_loss": parent_losses[-1], "first_loss": parent_losses[0],
                   "params": dataclasses.asdict(parent_params), **parent_metrics},
        "permutation_max_abs_error": permutation_error,
        "budgets": per_budget, "pairs": pairs, "transplant": transplant, "training_cost": cost,
        "timings": timings,
        "think_small_answer_large": None if best_mixed is None else {
            **best_mixed,
            # Matching a model that solves nothing proves nothing: demand a non-zero full accuracy.
            "reaches_full_accuracy": full["accuracy"] > 0 and best_mixed["accuracy"] >= full["accuracy"],
            "latency_ratio_vs_full": best_mixed["seconds_per_problem"] / full["seconds_per_problem"],
        },
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(render_markdown(results))
    plot_pareto(results, out / "pareto.png")
    return results


def render_markdown(results: dict) -> str:
    lines = ["# Star Elastic demo results", "",
             f"Seed {results['seed']}, {'quick' if results['quick'] else 'full'} run. Parent loss "
             f"{results['parent']['first_loss']:.3f} -> {results['parent']['final_loss']:.3f}; "
             f"trained parent accuracy {results['parent']['accuracy']:.1%}.", "",
             "## Budgets", "",
             "| budget | active params | fraction | accuracy | thinking tokens | s / problem | slicing error |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, b in results["budgets"].items():
        lines.append(f"| {name} | {b['active_params']:,} | {b['active_fraction']:.2f} | "
                     f"{b['accuracy']:.1%} | {b['thinking_tokens']:.1f} | "
                     f"{b['seconds_per_problem']:.3f} | {b['slicing_max_abs_error']:.1e} |")
    lines += ["", "## Think with one budget, answer with another", "",
              "| think -> answer | accuracy | thinking tokens | answer tokens | s / problem |",
              "| --- | --- | --- | --- | --- |"]
    for key, p in results["pairs"].items():
        lines.append(f"| {key} | {p['accuracy']:.1%} | {p['thinking_tokens']:.1f} | "
                     f"{p['answer_tokens']:.1f} | {p['seconds_per_problem']:.3f} |")
    mixed = results["think_small_answer_large"]
    if mixed:
        verdict = "reaches" if mixed["reaches_full_accuracy"] else "does not reach"
        lines += ["", f"Best think-small / answer-large pair: {mixed['think']} -> {mixed['answer']}, "
                      f"{verdict} the full model's accuracy ({mixed['accuracy']:.1%}) at "
                      f"{mixed['latency_ratio_vs_full']:.2f}x its latency."]
    lines += ["", "## Cache transplant instead of re-prefill at the switch", "",
              "| think -> answer | accuracy (re-prefill) | accuracy (transplant) | cost | "
              "switch s (re-prefill) | switch s (transplant) |",
              "| --- | --- | --- | --- | --- | --- |"]
    for key, t in results["transplant"].items():
        lines.append(f"| {key} | {t['reprefill_accuracy']:.1%} | {t['accuracy']:.1%} | "
                     f"{t['accuracy_cost']:+.1%} | {t['reprefill_switch_seconds']:.4f} | "
                     f"{t['switch_seconds']:.4f} |")
    cost = results["training_cost"]
    lines += ["", "## Training cost", "",
              "| run | steps | seconds | budgets trained |", "| --- | --- | --- | --- |",
              f"| one elastic run | {cost['elastic_run']['steps']} | "
              f"{cost['elastic_run']['seconds']:.1f} | {cost['elastic_run']['budgets_trained']} |"]
    for name, run in cost["separate_runs"].items():
        lines.append(f"| separate distillation of {name} | {run['steps']} | {run['seconds']:.1f} | "
                     f"1 (accuracy {run['accuracy']:.1%}) |")
    return "\n".join(lines) + "\n"


def plot_pareto(results: dict, path: Path) -> None:
    """Accuracy against seconds per problem for every (think, answer) pair, frontier drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(p["seconds_per_problem"], p["accuracy"], key) for key, p in results["pairs"].items()]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for x, y, key in points:
        same = key.split("->")[0] == key.split("->")[1]
        ax.scatter(x, y, marker="o" if same else "^", s=40)
        ax.annotate(key, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    frontier, best = [], -1.0
    for x, y, _ in sorted(points):
        if y > best:
            frontier.append((x, y))
            best = y
    ax.plot(*zip(*frontier), linestyle="--", color="gray", label="Pareto frontier")
    ax.set_xlabel("seconds per problem (CPU)")
    ax.set_ylabel("accuracy")
    ax.set_title("Star Elastic demo: think -> answer budgets")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
