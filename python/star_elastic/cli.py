"""star-elastic: train nested (elastic) hybrid Mamba-2 / attention / MoE models and generate with them.

Every user error (a file that does not exist or is corrupt, a directory that is not an elastic
checkpoint, a bad config setting, an output directory that cannot be written) ends the command
with one line on stderr, ``star-elastic CMD: error: ...``, and exit status 2, found before any
weights load where it can be. ``--debug`` (or ``STAR_ELASTIC_DEBUG=1``) adds the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import shutil
import sys
import tempfile
import tomllib
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from star_elastic_kernels import BackendUnavailableError
from star_elastic_kernels._console import exit_status_of

from .checkpoint import STATE, CheckpointError, join_tensors, latest_checkpoint
from .config import ElasticConfig
from .model import ElasticModel

DEBUG_ENV = "STAR_ELASTIC_DEBUG"
# What a user can get wrong, each with a message that says what and where. Anything else is a bug
# and keeps its traceback.
USER_ERRORS = (ValueError, OSError, CheckpointError, BackendUnavailableError)

TOP_LEVEL_EPILOG = f"""\
Errors are one line on stderr (exit status 2); --debug, or {DEBUG_ENV}=1, adds the traceback.
Without an activated .venv, the command is .venv/bin/star-elastic (after make demo or make install).
Run star-elastic COMMAND --help for a command's options."""

TRAIN_DESCRIPTION = """\
One elastic distillation run: the router and the two-stage curriculum train every named budget of
the parent at once. For DDP or FSDP2 start it under torchrun (see [distributed]).

Resuming: the run lives in OUT (--out, else [train] out_dir): checkpoints in OUT/checkpoints,
metrics in OUT/metrics.jsonl. When OUT already holds a run, train resumes it from its newest
checkpoint, if the config is the same (progress, checkpoint_every and keep_checkpoints may change);
a different config is refused, so that two runs are never mixed. --fresh deletes the run in OUT
(its checkpoints, metrics, TensorBoard logs and quantized export) and starts again at step 0."""

TRAIN_EPILOG = """\
The config (TOML) has these tables (example: configs/tiny_train.toml):
  [model]        checkpoint = "DIR": an exported, elastic or Hugging Face nemotron_h directory;
                 or a [model.config] table of ElasticConfig fields, with init_seed, for a random
                 parent
  [data]         source = "synthetic:addition" (with count, min_digits, max_digits, seed) or a
                 local .txt, .jsonl or .parquet file (field = its text column); tokenizer = "char"
                 or a local tokenizer directory; max_len = tokens per sequence
  [train]        the trainer's settings (budget_names, budget_targets, lr, ...), with one
                 [[train.stages]] table per curriculum stage (name, steps, seq_len, batch_size,
                 budget_weights, ramp_steps: steps over which a later stage's new, longer rows
                 grow to their natural share)
  [distributed]  strategy = "none", "ddp" or "fsdp" (under torchrun)
  [qad]          format = "nvfp4" or "fp8": quantization-aware distillation of the elastic
                 checkpoint in [model] at the budgets named in budget_names; the quantized nested
                 checkpoint is written to OUT/quantized"""

GENERATE_DESCRIPTION = """\
Stream the completion of --prompt, or of every non-empty line of stdin, from an elastic checkpoint
(star-elastic demo writes one into OUT/elastic; save_elastic writes them from Python): the
thinking phase runs at one budget, the answer at another. One line of statistics per prompt goes
to stderr, as JSON."""

CONFIG_TABLES = ("model", "data", "train", "distributed", "qad")
MODEL_KEYS = ("checkpoint", "config", "init_seed")
DATA_KEYS = ("source", "tokenizer", "count", "min_digits", "max_digits", "seed", "field", "max_len")
# [train] settings that may change when a run resumes: they do not change what is trained.
RESUMABLE_CHANGES = ("out_dir", "progress", "checkpoint_every", "keep_checkpoints")
RUN_RECORD = "star_elastic_run.json"  # the config a run in OUT was started with
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "tensorboard", "quantized", RUN_RECORD)


# --------------------------------------------------------------------------------------------------
# Checks that name the argument or file at fault


def existing_directory(path: str | Path, what: str) -> Path:
    """``path`` as a Path, or ``ValueError`` saying that ``what`` (e.g. "--checkpoint") is missing."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{what} {path} does not exist")
    if not path.is_dir():
        raise ValueError(f"{what} {path} is not a directory")
    return path


def writable_directory(path: str | Path, what: str) -> Path:
    """Create ``path`` if needed and prove that files can be written in it, before any work starts."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ValueError(f"{what} {path} cannot be written: {error.strerror or error}") from None
    return path


def _unknown_keys(table: str, given, known, source: Path) -> None:
    unknown = sorted(set(given) - set(known))
    if unknown:
        hint = difflib.get_close_matches(unknown[0], known, n=1)
        raise ValueError(f"{source}: [{table}] has no setting {unknown[0]!r}"
                         + (f" (did you mean {hint[0]!r}?)" if hint else
                            f" (its settings: {', '.join(sorted(known))})"))


_SIMPLE_TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool, "tuple": list, "list": list}


def _check_types(table: str, values: dict, cls, source: Path) -> None:
    """TOML values against the dataclass's plain annotations (int, float, str, bool, tuple, list):
    a value of the wrong kind would otherwise fail far from the config, without naming it."""
    for field in dataclasses.fields(cls):
        annotation = str(field.type)
        kind = _SIMPLE_TYPES.get(annotation.split("[", 1)[0])
        if field.name not in values or kind is None or "|" in annotation:
            continue
        value = values[field.name]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ValueError(f"{source}: [{table}] {field.name} = {value!r} is not of type {annotation}")


def load_config_file(path: str | Path) -> dict:
    """The TOML config at ``path``; ``ValueError`` naming the file when it is missing or invalid."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"--config {path} does not exist")
    if not path.is_file():
        raise ValueError(f"--config {path} is not a file")
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"--config {path} is not valid TOML: {error}") from None


def check_config(spec: dict, source: Path):
    """The [train] table as a TrainConfig, after checking every table's keys and simple types."""
    from .train import Stage, TrainConfig

    for name, value in spec.items():
        if name not in CONFIG_TABLES or not isinstance(value, dict):
            raise ValueError(f"{source}: {name!r} is not one of the config's tables "
                             f"([{'], ['.join(CONFIG_TABLES)}])")
    if "train" not in spec:
        raise ValueError(f"{source} has no [train] table (see star-elastic train --help)")
    model = spec.get("model", {})
    _unknown_keys("model", model, MODEL_KEYS, source)
    if "checkpoint" not in model and "config" not in model:
        raise ValueError(f"{source}: [model] needs checkpoint = \"DIR\" or a [model.config] table")
    _unknown_keys("data", spec.get("data", {}), DATA_KEYS, source)
    _unknown_keys("distributed", spec.get("distributed", {}), ("strategy",), source)
    _unknown_keys("qad", spec.get("qad", {}), ("format",), source)
    train = spec["train"]
    _unknown_keys("train", train, [f.name for f in dataclasses.fields(TrainConfig)], source)
    _check_types("train", train, TrainConfig, source)
    if not isinstance(train.get("stages"), list) or not train["stages"]:
        raise ValueError(f"{source}: [train] needs at least one [[train.stages]] table")
    for stage in train["stages"]:
        _unknown_keys("train.stages", stage, [f.name for f in dataclasses.fields(Stage)], source)
        _check_types("train.stages", stage, Stage, source)
        missing = [f.name for f in dataclasses.fields(Stage)
                   if f.default is dataclasses.MISSING and f.name not in stage]
        if missing:
            raise ValueError(f"{source}: a [[train.stages]] table lacks {', '.join(missing)}")
    missing = [f.name for f in dataclasses.fields(TrainConfig)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               and f.name not in train]
    if missing:
        raise ValueError(f"{source}: [train] lacks {', '.join(missing)}")
    try:
        return TrainConfig.from_dict(train)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: [train] {error}") from None


# --------------------------------------------------------------------------------------------------
# The run directory: resume the same config, refuse another, or start fresh


def run_identity(spec: dict, train_settings: dict) -> dict:
    """What a resumed run must share with the run it continues, as JSON values: every table of the
    config, with [train] as the trainer's effective settings (defaults filled in) less the
    ``RESUMABLE_CHANGES``."""
    identity = {name: table for name, table in spec.items() if name != "train"}
    identity["train"] = {k: v for k, v in train_settings.items() if k not in RESUMABLE_CHANGES}
    return json.loads(json.dumps(identity, default=str))


def _differences(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [name for key in sorted(set(old) | set(new), key=str)
                for name in _differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _recorded_train_settings(checkpoint: Path) -> dict | None:
    """The [train] settings stored in a checkpoint of a run that has no RUN_RECORD (started from
    the Python API, or before the record existed); None when they cannot be read."""
    try:
        payload = json.loads((checkpoint / STATE).read_text())["payload"]
        config = dict(payload["__dict__"])["config"]
        return join_tensors(config, {})
    except (OSError, ValueError, KeyError, TypeError):
        return None  # resuming will report the damage, naming the file


def prepare_run_directory(out: Path, identity: dict, *, fresh: bool, writer: bool) -> bool:
    """Decide between resuming the run in ``out`` and starting one; True to resume.

    ``identity`` is :func:`run_identity` of the new config. A run already in ``out`` that was
    started with another one raises ``ValueError`` listing the settings that differ, unless
    ``fresh``, which deletes the run's outputs (``RUN_OUTPUTS``, on the writing rank only).
    """
    record = out / RUN_RECORD
    newest = None if fresh else latest_checkpoint(out / "checkpoints")
    if fresh and writer:
        for name in RUN_OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    if newest is not None:
        if record.exists():
            try:
                previous = json.loads(record.read_text())["identity"]
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{record} is corrupt; start the run over with --fresh") from None
            differing = _differences(previous, identity)
        else:  # a run started from the Python API: its checkpoint holds the [train] settings
            stored = _recorded_train_settings(newest)
            differing = [] if stored is None else _differences(
                run_identity({}, stored)["train"], identity["train"], "train.")
        if differing:
            shown = ", ".join(differing[:6]) + (", ..." if len(differing) > 6 else "")
            raise ValueError(f"{out} holds a run trained with a different config (differs in {shown}); "
                             "resume it with its own config, start it over with --fresh, or choose "
                             "another --out")
    if writer:
        staging = record.with_name(f".{RUN_RECORD}.tmp-{os.getpid()}")
        staging.write_text(json.dumps({"identity": identity}, indent=2))
        os.replace(staging, record)
    return newest is not None


# --------------------------------------------------------------------------------------------------
# Building the run


def build_parent(section: dict, source: Path | None = None) -> ElasticModel:
    """The teacher: a saved model, or a freshly initialised one from an inline config."""
    if "checkpoint" in section:
        from .slicing import load

        where = f"{source}: [model] checkpoint" if source else "[model] checkpoint"
        return load(existing_directory(section["checkpoint"], where))
    if "config" not in section:
        raise ValueError("[model] needs `checkpoint` or `config`")
    try:
        config = ElasticConfig.from_dict(section["config"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source or 'config'}: [model.config] {error}") from None
    torch.manual_seed(int(section.get("init_seed", 0)))
    return ElasticModel(config)


def load_data_texts(section: dict) -> tuple[object, list[str]]:
    """(tokenizer, texts) for the [data] table: the cheap part, done before the model loads."""
    from . import data

    tokenizer = data.load_tokenizer(section.get("tokenizer", "char"))
    source = section.get("source", "synthetic:addition")
    if source == "synthetic:addition":
        examples = data.arithmetic_examples(int(section.get("count", 2000)),
                                            min_digits=int(section.get("min_digits", 2)),
                                            max_digits=int(section.get("max_digits", 4)),
                                            seed=int(section.get("seed", 0)))
        return tokenizer, [example.text for example in examples]
    return tokenizer, data.load_texts(source, field=section.get("field", "text"))


def build_data(section: dict, vocab_size: int, tokenizer=None, texts=None):
    """(tokens, mask, tokenizer) for the [data] table."""
    from . import data

    if tokenizer is None or texts is None:
        tokenizer, texts = load_data_texts(section)
    if getattr(tokenizer, "vocab_size", vocab_size) > vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab "
                         f"is {vocab_size}")
    # Synthetic reasoning samples are never cut (a cut one loses its answer); documents from a file
    # longer than max_len are.
    tokens, mask = data.encode_batch(tokenizer, texts, int(section.get("max_len", 128)),
                                     truncate=section.get("source", "synthetic:addition") != "synthetic:addition")
    return tokens, mask, tokenizer


def init_distributed(strategy: str):
    """Start the process group under torchrun and return a wrapper for the objective (or None)."""
    if strategy not in ("none", "ddp", "fsdp"):
        raise ValueError(f"[distributed] strategy must be none, ddp or fsdp, got {strategy!r}")
    if strategy == "none":
        return None
    if "WORLD_SIZE" not in os.environ:
        raise ValueError(f"[distributed] strategy {strategy!r} needs torchrun (WORLD_SIZE is not set): "
                         "torchrun --nproc_per_node N -m star_elastic.cli train ...")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return lambda module: DistributedDataParallel(module, find_unused_parameters=True)
    from torch.distributed.fsdp import fully_shard

    def shard(module):
        for block in module.student.layers:
            fully_shard(block)
        fully_shard(module)
        return module

    return shard


# --------------------------------------------------------------------------------------------------
# Commands


def train_command(args) -> int:
    from .router import ElasticRouter
    from .train import ElasticDistillationTrainer, make_student

    source = Path(args.config)
    spec = load_config_file(source)
    train_config = check_config(spec, source)
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.out:
        train_config.out_dir = args.out
    out = writable_directory(train_config.out_dir, "--out" if args.out else f"{source}: [train] out_dir")
    wrap = init_distributed(spec.get("distributed", {}).get("strategy", "none"))
    writer = int(os.environ.get("RANK", "0")) == 0
    resume = prepare_run_directory(out, run_identity(spec, train_config.to_dict()), fresh=args.fresh,
                                   writer=writer)
    qad_format = spec.get("qad", {}).get("format", "none")
    if qad_format not in ("none", "nvfp4", "fp8"):
        raise ValueError(f"{source}: [qad] format must be nvfp4 or fp8, got {qad_format!r}")
    tokenizer, texts = load_data_texts(spec.get("data", {}))
    fixed_budgets = None
    if qad_format != "none":
        # QAD: the elastic checkpoint's parent (BF16) teaches a fake-quantized copy at every
        # named budget; the budgets are fixed (no router).
        from .elastic_checkpoint import load_elastic, read_budgets
        from .qad import apply_fake_quantization

        if "checkpoint" not in spec["model"]:
            raise ValueError(f"{source}: [qad] needs [model] checkpoint = an elastic checkpoint directory")
        checkpoint = existing_directory(spec["model"]["checkpoint"], f"{source}: [model] checkpoint")
        saved = read_budgets(checkpoint)
        missing = [name for name in train_config.budget_names if name not in saved]
        if missing:
            raise ValueError(f"{source}: [train] budget_names {', '.join(missing)} are not budgets of "
                             f"{checkpoint} (it has: {', '.join(saved)})")
        teacher, saved = load_elastic(checkpoint)
        fixed_budgets = {name: saved[name] for name in train_config.budget_names}
        student = apply_fake_quantization(make_student(teacher), qad_format)
        router = None
    else:
        teacher = build_parent(spec["model"], source)
        student = make_student(teacher)
    tokens, mask, _ = build_data(spec.get("data", {}), teacher.config.vocab_size, tokenizer, texts)
    if fixed_budgets is None:
        layer_order = None
        if train_config.depth:  # rank the layers (normalised-MSE) on the first training sequences
            from .importance import rank_layers

            starts = range(0, min(64, len(tokens)), 16)
            layer_order = rank_layers(teacher, [tokens[i:i + 16] for i in starts],
                                      masks=[mask[i:i + 16] for i in starts])
        router = ElasticRouter(student.config, train_config.budget_names,
                               train_config.budget_targets, cost=train_config.cost,
                               heterogeneous=train_config.heterogeneous, layer_order=layer_order,
                               min_cost_share=train_config.min_cost_share,
                               memory_context=train_config.memory_context)
    trainer = ElasticDistillationTrainer(teacher, student, router, tokens, mask, train_config,
                                         wrap=wrap, budgets=fixed_budgets,
                                         teacher_at_same_budget=fixed_budgets is not None)
    if resume and trainer.resume():
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
    """Stream the completion of --prompt, or of every non-empty stdin line, from an elastic checkpoint."""
    from .data import load_tokenizer
    from .elastic_checkpoint import load_elastic, read_budgets
    from .generation import generate

    checkpoint = existing_directory(args.checkpoint, "--checkpoint")
    budgets = read_budgets(checkpoint)  # before the weights: a typo costs no loading time
    for flag, name in (("--think-budget", args.think_budget), ("--answer-budget", args.answer_budget)):
        if name not in budgets:
            raise ValueError(f"{flag} {name!r} is not a budget of {checkpoint} (it has: {', '.join(budgets)})")
    tokenizer = load_tokenizer(checkpoint)
    model, budgets = load_elastic(checkpoint)
    model.eval()

    def stream(_index: int, piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    for line in [args.prompt] if args.prompt is not None else sys.stdin:
        if not line.strip():
            continue
        prompt = line if line.endswith("\n") else line + "\n"  # a prompt is one line, newline included
        [result] = generate(model, tokenizer, [prompt], think_budget=budgets[args.think_budget],
                            answer_budget=budgets[args.answer_budget], max_new_tokens=args.max_new_tokens,
                            max_thinking_tokens=args.max_thinking_tokens, temperature=args.temperature,
                            top_p=args.top_p, stop=tuple(args.stop or ()), seed=args.seed,
                            switch=args.switch, stream=stream)
        if not result.text.endswith("\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()
        print(json.dumps({"thinking_tokens": result.thinking_tokens, "answer_tokens": result.answer_tokens,
                          "thinking_capped": result.thinking_capped, "finish_reason": result.finish_reason,
                          "seconds": round(result.total_seconds, 4)}), file=sys.stderr)
    return 0


def demo_command(args) -> int:
    from .demo import run_demo_seeds

    writable_directory(args.out, "--out")
    try:
        seeds = tuple(int(seed) for seed in args.seeds.split(","))
    except ValueError:
        raise ValueError(f"--seeds {args.seeds!r} is not a comma-separated list of integers (e.g. 0,1,2)") from None
    results = run_demo_seeds(args.out, quick=args.quick, seeds=seeds)
    print((Path(args.out) / "results.md").read_text())
    print(f"wrote {args.out}/results.json, results.md, pareto.png and the checkpoints")
    return 0 if results else 1


# --------------------------------------------------------------------------------------------------
# The parser and the error handling


class _Parser(argparse.ArgumentParser):
    """argparse with a usage error as one line, like every other error of the command line."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``star-elastic`` argument parser (every command and flag)."""
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help=f"on an error, print the traceback too (or set {DEBUG_ENV}=1)")
    layout = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog="star-elastic", description=__doc__.split("\n\n")[0], epilog=TOP_LEVEL_EPILOG,
                     parents=[debug], formatter_class=layout)
    commands = parser.add_subparsers(dest="command", required=True, title="commands")

    train = commands.add_parser("train", parents=[debug], formatter_class=layout,
                                help="run elastic distillation from a TOML config (resumes from --out)",
                                description=TRAIN_DESCRIPTION, epilog=TRAIN_EPILOG)
    train.add_argument("--config", required=True, help="training config (TOML; see below)")
    train.add_argument("--out", help="the run's directory (default: [train] out_dir); a run of the same "
                                     "config already there is resumed")
    train.add_argument("--fresh", action="store_true",
                       help="delete the run in the output directory and start again at step 0")
    train.add_argument("--steps", type=int, help="stop after this many more steps (resume later)")
    train.set_defaults(run=train_command)

    demo = commands.add_parser("demo", parents=[debug], formatter_class=layout,
                               help="the end-to-end demo on a synthetic reasoning task (what make demo runs)",
                               description="The end-to-end demo on a synthetic reasoning task (what make "
                                           "demo runs): results, plot and checkpoints go into --out.")
    demo.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    demo.add_argument("--quick", action="store_true", help="a small run for CI (about 3 minutes)")
    demo.add_argument("--seeds", default="0",
                      help="comma-separated seeds (default 0); several give each seed's run in "
                           "OUT/seed_K and the mean and standard deviation in OUT")
    demo.set_defaults(run=demo_command)

    gen = commands.add_parser(
        "generate", parents=[debug], formatter_class=layout,
        help="streamed generation from an elastic checkpoint at two budgets",
        description=GENERATE_DESCRIPTION)
    gen.add_argument("--checkpoint", required=True,
                     help="an elastic checkpoint directory (e.g. demo_out/elastic)")
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
    return parser


def describe(error: BaseException) -> str:
    """One line saying what went wrong, and where (an OSError names its file)."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    else:
        text = str(error) or type(error).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False) or os.environ.get(DEBUG_ENV, "0") not in ("", "0")
    try:
        return args.run(args)
    except BrokenPipeError:
        raise  # the reader left (| head): exit_status_of ends quietly
    except USER_ERRORS as error:
        if debug:
            traceback.print_exc()
        print(f"star-elastic {args.command}: error: {describe(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"star-elastic {args.command}: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    """Run ``star-elastic`` with ``argv`` (default: the process's arguments); returns the exit status."""
    return exit_status_of(lambda: _run(argv))


if __name__ == "__main__":
    sys.exit(main())
