"""``star-elastic``: the command line of the model layer.

    star-elastic train --config FILE.toml     one elastic distillation run (torchrun for DDP/FSDP)
    star-elastic generate --checkpoint DIR --think-budget NAME --answer-budget NAME
                                              streamed generation, thinking and answer at two budgets

A training config (TOML) has four tables:

    [model]   either ``checkpoint = "DIR"`` (an exported or Hugging Face ``nemotron_h`` directory)
              or ``config = { ...ElasticConfig fields... }`` with ``init_seed`` for a random parent
    [data]    ``source = "synthetic:addition"`` (with ``count``, ``min_digits``, ``max_digits``) or a
              local ``.txt`` / ``.jsonl`` / ``.parquet`` path; ``tokenizer = "char"`` or a local
              directory; ``max_len`` tokens per sequence
    [train]   the fields of :class:`star_elastic.train.TrainConfig`, with ``[[train.stages]]``
    [distributed] ``strategy = "none" | "ddp" | "fsdp"`` (under torchrun)
    [qad]     optional ``format = "nvfp4" | "fp8"``: quantization-aware distillation of the
              elastic checkpoint in [model] at its named budgets (``train.budget_names``); the
              quantized nested checkpoint is written to ``OUT/quantized``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from pathlib import Path

import torch
import torch.distributed as dist

from .config import ElasticConfig
from .model import ElasticModel


def load_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    with path.open("rb") as handle:
        return tomllib.load(handle)


def build_parent(section: dict) -> ElasticModel:
    """The teacher: a saved model, or a freshly initialised one from an inline config."""
    if "checkpoint" in section:
        from .slicing import load

        return load(section["checkpoint"])
    if "config" not in section:
        raise ValueError("[model] needs `checkpoint` or `config`")
    torch.manual_seed(int(section.get("init_seed", 0)))
    return ElasticModel(ElasticConfig(**section["config"]))


def build_data(section: dict, vocab_size: int):
    """(tokens, mask, tokenizer) for the [data] table."""
    from . import data

    tokenizer = data.load_tokenizer(section.get("tokenizer", "char"))
    source = section.get("source", "synthetic:addition")
    if source == "synthetic:addition":
        examples = data.arithmetic_examples(int(section.get("count", 2000)),
                                            min_digits=int(section.get("min_digits", 2)),
                                            max_digits=int(section.get("max_digits", 4)),
                                            seed=int(section.get("seed", 0)))
        texts = [example.text for example in examples]
    else:
        texts = data.load_texts(source, field=section.get("field", "text"))
    if getattr(tokenizer, "vocab_size", vocab_size) > vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab "
                         f"is {vocab_size}")
    # Synthetic reasoning samples are never cut (a cut one loses its answer); documents from a file
    # longer than max_len are.
    tokens, mask = data.encode_batch(tokenizer, texts, int(section.get("max_len", 128)),
                                     truncate=source != "synthetic:addition")
    return tokens, mask, tokenizer


def init_distributed(strategy: str):
    """Start the process group under torchrun and return a wrapper for the objective (or None)."""
    if strategy == "none":
        return None
    if "WORLD_SIZE" not in os.environ:
        raise RuntimeError(f"strategy {strategy!r} needs torchrun (WORLD_SIZE is not set)")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return lambda module: DistributedDataParallel(module, find_unused_parameters=True)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        def shard(module):
            for block in module.student.layers:
                fully_shard(block)
            fully_shard(module)
            return module

        return shard
    raise ValueError(f"[distributed] strategy must be none, ddp or fsdp, got {strategy!r}")


def train_command(args) -> int:
    from .router import ElasticRouter
    from .train import ElasticDistillationTrainer, TrainConfig, make_student

    spec = load_config_file(args.config)
    train_config = TrainConfig.from_dict(spec["train"])
    if args.out:
        train_config.out_dir = args.out
    wrap = init_distributed(spec.get("distributed", {}).get("strategy", "none"))
    qad_format = spec.get("qad", {}).get("format", "none")
    fixed_budgets = None
    if qad_format != "none":
        # QAD: the elastic checkpoint's parent (BF16) teaches a fake-quantized copy at every
        # named budget; the budgets are fixed (no router).
        from .elastic_checkpoint import load_elastic
        from .qad import apply_fake_quantization

        if "checkpoint" not in spec["model"]:
            raise ValueError("[qad] needs [model] checkpoint = an elastic checkpoint directory")
        teacher, fixed_budgets = load_elastic(spec["model"]["checkpoint"])
        fixed_budgets = {name: fixed_budgets[name] for name in train_config.budget_names}
        student = apply_fake_quantization(make_student(teacher), qad_format)
        router = None
    else:
        teacher = build_parent(spec["model"])
        student = make_student(teacher)
        router = ElasticRouter(student.config, train_config.budget_names,
                               train_config.budget_targets, cost=train_config.cost,
                               heterogeneous=train_config.heterogeneous)
    tokens, mask, _ = build_data(spec.get("data", {}), teacher.config.vocab_size)
    trainer = ElasticDistillationTrainer(teacher, student, router, tokens, mask, train_config,
                                         wrap=wrap, budgets=fixed_budgets,
                                         teacher_at_same_budget=fixed_budgets is not None)
    if trainer.resume():
        print(f"resumed at step {trainer.step}", file=sys.stderr)
    trainer.train(args.steps)
    trainer.save()
    if trainer.rank == 0 and qad_format != "none":
        from .qad import export_quantized

        export_quantized(student, fixed_budgets, qad_format, Path(train_config.out_dir) / "quantized")
    if trainer.rank == 0:
        budgets = {name: budget.to_dict() for name, budget in trainer.trained_budgets().items()}
        print(json.dumps({"step": trainer.step, "budgets": budgets}, indent=2))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def generate_command(args) -> int:
    """Stream the completion of ``--prompt``, or of every non-empty stdin line, from an elastic checkpoint."""
    from .data import load_tokenizer
    from .elastic_checkpoint import load_elastic
    from .generation import generate

    model, budgets = load_elastic(args.checkpoint)
    for flag, name in (("--think-budget", args.think_budget), ("--answer-budget", args.answer_budget)):
        if name not in budgets:
            print(f"star-elastic generate: error: {flag} {name!r} is not a budget of {args.checkpoint} "
                  f"(it has: {', '.join(budgets)})", file=sys.stderr)
            return 2
    tokenizer = load_tokenizer(args.checkpoint)
    model.eval()

    def stream(_index: int, piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    for line in [args.prompt] if args.prompt is not None else sys.stdin:
        if not line.strip():
            continue
        prompt = line if line.endswith("\n") else line + "\n"  # a prompt is one line, newline included
        try:
            [result] = generate(model, tokenizer, [prompt], think_budget=budgets[args.think_budget],
                                answer_budget=budgets[args.answer_budget], max_new_tokens=args.max_new_tokens,
                                max_thinking_tokens=args.max_thinking_tokens, temperature=args.temperature,
                                top_p=args.top_p, stop=tuple(args.stop or ()), seed=args.seed,
                                switch=args.switch, stream=stream)
        except ValueError as error:
            print(f"star-elastic generate: error: {error}", file=sys.stderr)
            return 2
        if not result.text.endswith("\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()
        print(json.dumps({"thinking_tokens": result.thinking_tokens, "answer_tokens": result.answer_tokens,
                          "thinking_capped": result.thinking_capped, "finish_reason": result.finish_reason,
                          "seconds": round(result.total_seconds, 4)}), file=sys.stderr)
    return 0


def demo_command(args) -> int:
    from .demo import run_demo

    results = run_demo(args.out, quick=args.quick, seed=args.seed)
    print((Path(args.out) / "results.md").read_text())
    print(f"wrote {args.out}/results.json, results.md, pareto.png and the checkpoints")
    return 0 if results else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="star-elastic", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="run elastic distillation from a TOML config")
    train.add_argument("--config", required=True, help="training config (TOML)")
    train.add_argument("--out", help="output directory (overrides train.out_dir)")
    train.add_argument("--steps", type=int, help="stop after this many more steps")
    train.set_defaults(run=train_command)
    demo = commands.add_parser("demo", help="the end-to-end demo on a synthetic reasoning task")
    demo.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    demo.add_argument("--quick", action="store_true", help="a small run for CI (about 3 minutes)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=demo_command)
    gen = commands.add_parser("generate", help="streamed generation from an elastic checkpoint at two budgets")
    gen.add_argument("--checkpoint", required=True, help="directory written by save_elastic")
    gen.add_argument("--think-budget", required=True, help="budget name for the thinking phase")
    gen.add_argument("--answer-budget", required=True, help="budget name for the answer")
    gen.add_argument("--prompt", help="one prompt (default: read prompts from stdin, one per line)")
    gen.add_argument("--max-new-tokens", type=int, default=256, help="tokens per prompt, both phases")
    gen.add_argument("--max-thinking-tokens", type=int, help="thinking cap (</think> forced after a grace window)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--stop", action="append", help="stop string (repeatable)")
    gen.add_argument("--switch", choices=("reprefill", "transplant"), default="reprefill",
                     help="how the answer budget takes over the thinking budget's context")
    gen.set_defaults(run=generate_command)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
