"""Elastic distillation: one run trains every nested budget of the parent, with its router.

The teacher is the frozen original parent; the student starts as a copy of it. Each step draws a
batch, assigns every sample one budget (uniform in stage 1, skewed to the largest in stage 2), runs
the teacher once and the student once per budget present, and minimises

    mean over samples [ KD(student_b || teacher) * T^2  (+ ce_weight * CE) ]  +  lambda * router loss

where ``b`` is the sample's budget, whose architecture the router samples (Gumbel-softmax) and
which reaches the student as a ``Budget`` plus straight-through gates (the router's "hard" mode,
see :mod:`star_elastic.router`). Model and router have their own learning rates (warmup + cosine).

Everything random in a step (rows of the batch, budget assignment, Gumbel noise) is drawn from
generators seeded by (seed, step): a run resumed from a checkpoint continues exactly, and every
data-parallel rank agrees on the budgets and architectures while reading its own shard.

The curriculum never cuts a sample: a stage of ``seq_len`` tokens draws only the training sequences
that fit in it whole (a short stage trains on the short problems, a long stage on all of them), so
no stage supervises a reasoning trace without its end or its answer.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.utils import parametrize

from . import checkpoint as ckpt
from . import losses, schedules
from .budget import Budget
from .model import ElasticModel
from .params import COST_KINDS, parameter_count
from .router import ElasticRouter


@dataclasses.dataclass
class Stage:
    """One curriculum stage: ``steps`` optimizer steps, ``batch_size`` sequences per step (global,
    across ranks), each a whole training sequence of at most ``seq_len`` tokens (longer ones are
    left to a later stage, never cut); ``budget_weights`` None = uniform.

    ``ramp_steps`` (not in the first stage): over this stage's first ``ramp_steps`` steps the rows
    new to it (longer than the previous stage's ``seq_len``) are drawn with a share that grows
    linearly to their natural one, ``(k + 1) / ramp_steps`` of it at the stage's step ``k``; the
    rows the previous stage also had fill the rest. 0: the natural share from the first step."""

    name: str
    steps: int
    seq_len: int
    batch_size: int
    budget_weights: tuple[float, ...] | None = None
    ramp_steps: int = 0


@dataclasses.dataclass
class TrainConfig:
    """Everything the trainer needs besides models and data (see ``configs/*.toml``)."""

    stages: list[Stage]
    budget_names: tuple[str, ...]
    budget_targets: tuple[float, ...]
    cost: str = "active"  # what budget_targets are fractions of: "active", "total" or "memory"
    depth: bool = False  # layers are an elastic axis too (ranked on the training data by the CLI)
    min_cost_share: float = 0.01  # axes that change the cost by less are not routed
    memory_context: int = 4096  # context tokens of cost = "memory"
    heterogeneous: bool = False
    mask_mode: str = "hard"
    lr: float = 1e-4
    # 5e-3, not the paper's 1e-2: Adam moves the logits of a 256-wide router MLP on a one-hot input
    # by about 100 x lr per step; at 1e-2 the sampled architectures froze within 10% of the run.
    router_lr: float = 5e-3
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_accum: int = 1
    kd_temperature: float = 1.0
    ce_weight: float = 0.0
    router_lambda: float = 1.0
    tau: tuple[float, float] = (1.0, 0.05)
    logit_scale: tuple[float, float] = (1.0, 10.0)
    seed: int = 0
    out_dir: str = "runs/elastic"
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    progress: bool = True

    def __post_init__(self):
        if not self.stages:
            raise ValueError("config needs at least one stage")
        for index, stage in enumerate(self.stages):
            if stage.steps <= 0 or stage.seq_len < 2 or stage.batch_size <= 0:
                raise ValueError(f"stage {stage.name!r}: steps, batch_size must be > 0, seq_len >= 2")
            if stage.budget_weights is not None:
                if len(stage.budget_weights) != len(self.budget_names):
                    raise ValueError(f"stage {stage.name!r}: budget_weights needs one weight per "
                                     f"budget ({len(self.budget_names)})")
                if any(w < 0 for w in stage.budget_weights) or sum(stage.budget_weights) <= 0:
                    raise ValueError(f"stage {stage.name!r}: budget_weights must be >= 0, not all 0")
            if not 0 <= stage.ramp_steps <= stage.steps:
                raise ValueError(f"stage {stage.name!r}: ramp_steps must be in [0, steps={stage.steps}],"
                                 f" got {stage.ramp_steps}")
            if stage.ramp_steps and index == 0:
                raise ValueError(f"stage {stage.name!r}: the first stage has no earlier stage to ramp "
                                 f"from (ramp_steps must be 0)")
        if self.grad_accum < 1:
            raise ValueError("grad_accum must be >= 1")
        if self.cost not in COST_KINDS:
            raise ValueError(f"cost must be one of {', '.join(COST_KINDS)}, got {self.cost!r}")
        if self.mask_mode not in ("hard", "soft"):
            raise ValueError(f"mask_mode must be 'hard' or 'soft', got {self.mask_mode!r}")

    @property
    def total_steps(self) -> int:
        return sum(stage.steps for stage in self.stages)

    def stage_at(self, step: int) -> Stage:
        return self.stages[self.stage_index(step)]

    def stage_index(self, step: int) -> int:
        return self.stage_position(step)[0]

    def stage_position(self, step: int) -> tuple[int, int]:
        """(index of the stage that runs ``step``, the step within that stage)."""
        for index, stage in enumerate(self.stages):
            if step < stage.steps:
                return index, step
            step -= stage.steps
        return len(self.stages) - 1, step + self.stages[-1].steps

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        fields = dict(data)
        fields["stages"] = [Stage(**{**s, "budget_weights": tuple(s["budget_weights"])
                                     if s.get("budget_weights") not in (None, "uniform") else None})
                            for s in fields["stages"]]
        for name in ("budget_names", "budget_targets", "tau", "logit_scale"):
            if name in fields:
                fields[name] = tuple(fields[name])
        return cls(**fields)


def _generator(*keys: int) -> torch.Generator:
    seed = 0
    for key in keys:
        seed = (seed * 1_000_003 + int(key)) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ElasticObjective(nn.Module):
    """Student + router as one module, so data parallelism wraps (and syncs) both; ``forward``
    returns the loss of one shard and, for logging, per-budget KD sums and sample counts (over all
    rows, and over the ``short_rows`` alone), the cost fractions of the sampled architectures and
    the active parameters x rows computed.

    With ``router=None`` the budgets are fixed (``budgets``, one per name; QAD uses this)."""

    def __init__(self, student: ElasticModel, router: ElasticRouter | None,
                 budgets: Sequence[Budget] | None = None, mask_mode: str = "hard"):
        super().__init__()
        if (router is None) == (budgets is None):
            raise ValueError("give either a router or fixed budgets")
        self.student, self.router = student, router
        self.fixed_budgets = None if budgets is None else list(budgets)
        self.mask_mode = mask_mode
        self.last_architectures: dict[int, Budget] = {}  # budget index -> the last sampled one

    @property
    def num_budgets(self) -> int:
        return len(self.fixed_budgets) if self.router is None else len(self.router.budget_names)

    def architecture(self, b: int, *, step: int, seed: int, tau: float, scale: float):
        """Forward keywords (budget, gates, masks), the router loss and the cost fraction (of the
        parent's cost; 1 for fixed budgets) of budget ``b``'s sampled architecture at this step.

        Hard mode: the sampled budget with straight-through gates. Soft mode: the full width with
        the probability-weighted prefix masks of every axis."""
        if self.router is None:
            return {"budget": self.fixed_budgets[b]}, torch.zeros(()), torch.ones(())
        # Every rank samples every budget's architecture from the same generator, so the router
        # sees the same decisions everywhere, whatever this shard holds.
        decision = self.router.sample(b, tau=tau, scale=scale, generator=_generator(seed, step, b))
        config = self.student.config
        self.last_architectures[b] = decision.budget(config)  # the sampled picks, for the log
        if self.mask_mode == "soft" and self.router.targets[b] < 1.0:
            forward = {"masks": decision.channel_masks(config, "soft")}
        else:
            forward = {"budget": decision.budget(config),
                       "gates": decision.gates(config.num_layers, config.layer_pattern)}
        fraction = self.router.sampled_cost(decision) / float(self.router.parent_cost)
        return forward, self.router.loss(decision, b), torch.tensor(fraction)

    def forward(self, tokens, mask, teacher_logits, budget_ids, *, step: int, seed: int,
                tau: float, scale: float, temperature: float, ce_weight: float,
                router_lambda: float, total_samples: int, short_rows: torch.Tensor | None = None):
        with parametrize.cached():  # fake-quantized weights (QAD): quantize once per step
            return self._forward(tokens, mask, teacher_logits, budget_ids, step=step, seed=seed,
                                 tau=tau, scale=scale, temperature=temperature,
                                 ce_weight=ce_weight, router_lambda=router_lambda,
                                 total_samples=total_samples, short_rows=short_rows)

    def _forward(self, tokens, mask, teacher_logits, budget_ids, *, step, seed, tau, scale,
                 temperature, ce_weight, router_lambda, total_samples, short_rows=None):
        loss = tokens.new_zeros((), dtype=torch.float32)
        kd_sums = torch.zeros(self.num_budgets)
        counts = torch.zeros(self.num_budgets)
        # the same sums over the rows short enough for the first stage (short_rows, bool per row)
        short_sums = torch.zeros(self.num_budgets)
        short_counts = torch.zeros(self.num_budgets)
        if short_rows is None:
            short_rows = torch.ones(tokens.shape[0], dtype=torch.bool)
        costs = torch.zeros(self.num_budgets)
        # active parameters x sequences computed per budget, for the FLOP count
        param_rows = torch.zeros(self.num_budgets, dtype=torch.float64)
        for b in range(self.num_budgets):
            rows = (budget_ids == b).nonzero().flatten()
            forward, router_loss, costs[b] = self.architecture(b, step=step, seed=seed, tau=tau,
                                                               scale=scale)
            # A shard without samples of this budget still runs it once, weighted 0: every rank
            # must make the same forward calls (FSDP gathers parameters in each one).
            weight = 1.0 if rows.numel() else 0.0
            if rows.numel() == 0:
                rows = torch.zeros(1, dtype=torch.long)
            logits = self.student(tokens[rows], **forward)
            per_sample = losses.kd_loss_per_sample(logits, teacher_logits[rows],
                                                   temperature=temperature, mask=mask[rows])
            if ce_weight:
                per_sample = per_sample + ce_weight * losses.next_token_ce_per_sample(
                    logits, tokens[rows], mask[rows])
            loss = loss + weight * (per_sample.sum() + router_lambda * router_loss * rows.numel()) / total_samples
            kd_sums[b] = weight * per_sample.detach().sum()
            counts[b] = weight * rows.numel()
            short = short_rows[rows].to(per_sample.device)
            short_sums[b] = weight * per_sample.detach()[short].sum()
            short_counts[b] = weight * short.sum()
            computed = parameter_count(self.student.config, forward.get("budget"))
            param_rows[b] = computed.active_without_embeddings * rows.numel()
        return loss, (kd_sums, counts, short_sums, short_counts), costs, param_rows


class ElasticDistillationTrainer:
    """Trains ``student`` (a copy of the frozen ``teacher``) and ``router`` over all budgets.

    Args:
        teacher: the original parent, frozen (no gradients; eval mode).
        student: the elastic model being trained (initialised from the teacher's weights).
        router: an :class:`ElasticRouter` for ``config.budget_names`` / ``budget_targets``.
        tokens: (N, L) int64 training sequences (right-padded), ``mask`` (N, L) bool real tokens.
        config: :class:`TrainConfig`.
        wrap: optional callable that wraps the :class:`ElasticObjective` for data parallelism
            (DDP / FSDP); the trainer then reads only its rank's shard of every batch.
        budgets: fixed ``{name: Budget}`` instead of a router (``router=None``): separate
            distillation of given architectures, or QAD.
        teacher_at_same_budget: run the teacher at each sample's (fixed) budget instead of in
            full (QAD: the high-precision model at the same budget teaches the quantized one).
        label: what the progress bar says the run does.

    Each step's metrics carry ``flops``: the model FLOPs the step computed, counted as 2 per
    active parameter (input embedding excluded) and token for the teacher's forward and 6 for the
    student's forward + backward at each sampled architecture, over the padded tokens processed.
    From the second stage on, ``kd_short/<budget>`` is the KD over the step's rows that also fit
    the first stage: continuous across a stage switch unless the switch itself disturbs the model
    (``kd/<budget>`` also counts the longer rows the first stage never had).
    """

    def __init__(self, teacher: ElasticModel, student: ElasticModel, router: ElasticRouter | None,
                 tokens: torch.Tensor, mask: torch.Tensor, config: TrainConfig, *, wrap=None,
                 budgets: dict[str, Budget] | None = None, teacher_at_same_budget: bool = False,
                 label: str = "elastic distillation"):
        if router is not None and tuple(router.budget_names) != tuple(config.budget_names):
            raise ValueError("router and config name different budgets")
        if budgets is not None and tuple(budgets) != tuple(config.budget_names):
            raise ValueError(f"budgets {tuple(budgets)} must be the config's "
                             f"{tuple(config.budget_names)}, in order")
        if tokens.shape != mask.shape or tokens.dim() != 2:
            raise ValueError(f"tokens and mask must be the same (N, L) shape, got "
                             f"{tuple(tokens.shape)} and {tuple(mask.shape)}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.objective = ElasticObjective(student, router,
                                          None if budgets is None else list(budgets.values()),
                                          mask_mode=config.mask_mode)
        # Elastic training distils every budget from the full parent; QAD from the teacher run at
        # the same (fixed) budget as the student.
        if teacher_at_same_budget and budgets is None:
            raise ValueError("teacher_at_same_budget needs fixed budgets")
        self.teacher_budgets = list(budgets.values()) if teacher_at_same_budget else None
        self.model = wrap(self.objective) if wrap is not None else self.objective
        self.tokens, self.mask, self.config = tokens, mask, config
        self.label = label
        # Whole samples only: a stage draws the rows whose real tokens all fit in its seq_len.
        self.lengths = mask.sum(dim=1)
        self.stage_rows = []
        for stage in config.stages:
            rows = (self.lengths <= stage.seq_len).nonzero().flatten()
            if rows.numel() == 0:
                raise ValueError(f"stage {stage.name!r}: no training sequence fits whole in seq_len="
                                 f"{stage.seq_len} tokens (the shortest has {int(self.lengths.min())});"
                                 f" stages never cut sequences")
            self.stage_rows.append(rows)
        # per stage: (rows the previous stage also had, rows new to this one), for ramp_steps; the
        # previous stage's rows fit this one too, or it is shorter (then none is new)
        self.stage_old_new = []
        for index, rows in enumerate(self.stage_rows):
            new = self.lengths[rows] > (config.stages[index - 1].seq_len if index else 0)
            self.stage_old_new.append((rows[~new], rows[new]))
        self.rank, self.world = _world()
        self.step = 0
        self.history: list[dict] = []
        router_parameters = [] if router is None else list(router.parameters())
        self.optimizer = torch.optim.AdamW(
            [{"params": list(student.parameters()), "lr": config.lr, "weight_decay": config.weight_decay},
             {"params": router_parameters, "lr": config.router_lr, "weight_decay": 0.0}])
        self.out_dir = Path(config.out_dir)

    # ---- the loop ---------------------------------------------------------------------------------

    def _batch(self, step: int, micro: int):
        index, step_in_stage = self.config.stage_position(step)
        stage, eligible = self.config.stages[index], self.stage_rows[index]
        generator = _generator(self.config.seed, step, micro, 1)
        old, new = self.stage_old_new[index]
        if step_in_stage < stage.ramp_steps and new.numel():
            share = new.numel() / eligible.numel() * (step_in_stage + 1) / stage.ramp_steps
            draw_new = torch.rand(stage.batch_size, generator=generator) < share
            rows = torch.where(draw_new,
                               new[torch.randint(0, new.numel(), (stage.batch_size,), generator=generator)],
                               old[torch.randint(0, old.numel(), (stage.batch_size,), generator=generator)])
        else:
            rows = eligible[torch.randint(0, eligible.numel(), (stage.batch_size,), generator=generator)]
        weights = torch.tensor(stage.budget_weights or [1.0] * len(self.config.budget_names),
                               dtype=torch.float64)
        budget_ids = torch.multinomial(weights, stage.batch_size, replacement=True,
                                       generator=generator)
        # Every rank pads to the longest sequence of the whole batch, which fits the stage whole.
        length = int(self.lengths[rows].max())
        shard = slice(self.rank, None, self.world)
        tokens = self.tokens[rows[shard], :length]
        mask = self.mask[rows[shard], :length]
        short_rows = self.lengths[rows[shard]] <= self.config.stages[0].seq_len
        return tokens, mask, budget_ids[shard], stage, short_rows

    def train_step(self) -> dict:
        """One optimizer step (``grad_accum`` micro-batches); returns its metrics."""
        config, step = self.config, self.step
        total = config.total_steps
        multiplier = schedules.warmup_cosine(step, total, config.warmup_steps, config.min_lr_ratio)
        self.optimizer.param_groups[0]["lr"] = config.lr * multiplier
        self.optimizer.param_groups[1]["lr"] = config.router_lr * multiplier
        tau = schedules.linear(step, total, *config.tau)
        scale = schedules.linear(step, total, *config.logit_scale)
        self.optimizer.zero_grad(set_to_none=True)
        # KD sums and counts over all rows and over the rows short enough for the first stage
        sums = torch.zeros(4, len(config.budget_names))
        loss_sum, flops = 0.0, torch.zeros((), dtype=torch.float64)
        for micro in range(config.grad_accum):
            tokens, mask, budget_ids, stage, short_rows = self._batch(step, micro)
            with torch.no_grad():
                teacher_logits = self._teacher_logits(tokens, budget_ids)
            autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=tokens.is_cuda)
            with autocast:
                loss, micro_sums, costs, param_rows = self.model(
                    tokens, mask, teacher_logits, budget_ids, step=step, seed=config.seed,
                    tau=tau, scale=scale, temperature=config.kd_temperature,
                    ce_weight=config.ce_weight, router_lambda=config.router_lambda,
                    total_samples=stage.batch_size // self.world * config.grad_accum,
                    short_rows=short_rows)
            loss.backward()
            loss_sum += float(loss.detach())
            sums += torch.stack(micro_sums)
            flops += tokens.shape[1] * (6 * param_rows.sum() + 2 * self._teacher_param_rows(budget_ids))
        self.optimizer.step()
        if self.world > 1:
            for t in (sums, flops):
                dist.all_reduce(t)
            reduced = torch.tensor(loss_sum)
            dist.all_reduce(reduced)
            loss_sum = float(reduced) / self.world
        metrics = {"step": step, "stage": stage.name, "loss": loss_sum, "tau": tau, "scale": scale,
                   "lr": config.lr * multiplier, "flops": float(flops)}
        kd_sums, counts, short_sums, short_counts = sums
        later_stage = config.stage_index(step) > 0
        for b, name in enumerate(config.budget_names):
            metrics[f"kd/{name}"] = float(kd_sums[b] / counts[b]) if counts[b] > 0 else None
            if later_stage:  # continuity across a stage switch: the rows the first stage also had
                metrics[f"kd_short/{name}"] = (float(short_sums[b] / short_counts[b])
                                               if short_counts[b] > 0 else None)
        router = self.objective.router
        if router is not None:
            for b, name in enumerate(config.budget_names):
                metrics[f"cost/{name}"] = float(costs[b])
                architecture = self.objective.last_architectures.get(b)
                if architecture is not None:  # the architecture this step sampled
                    metrics[f"arch/{name}"] = json.dumps(architecture.to_dict(), sort_keys=True)
        self.step += 1
        return metrics

    def _teacher_param_rows(self, budget_ids: torch.Tensor) -> torch.Tensor:
        """Active parameters (embedding excluded) x sequences of this shard's teacher forwards."""
        config = self.teacher.config
        if self.teacher_budgets is None:
            return torch.tensor(float(parameter_count(config).active_without_embeddings
                                      * budget_ids.numel()), dtype=torch.float64)
        return torch.tensor(sum(float(parameter_count(config, budget).active_without_embeddings
                                      * int((budget_ids == b).sum()))
                                for b, budget in enumerate(self.teacher_budgets)), dtype=torch.float64)

    def _teacher_logits(self, tokens: torch.Tensor, budget_ids: torch.Tensor) -> torch.Tensor:
        if self.teacher_budgets is None:
            return self.teacher(tokens)
        logits = None
        for b, budget in enumerate(self.teacher_budgets):
            rows = (budget_ids == b).nonzero().flatten()
            if rows.numel():
                out = self.teacher(tokens[rows], budget)
                if logits is None:
                    logits = out.new_empty(tokens.shape + out.shape[-1:])
                logits[rows] = out
        return logits

    def train(self, steps: int | None = None, *,
              after_step: Callable[[dict], None] | None = None) -> list[dict]:
        """Run until the curriculum ends (or ``steps`` more steps); returns all metrics so far.

        ``after_step(metrics)``: called on every rank after each step (``self.step`` is then the
        number of steps done), e.g. to evaluate the model mid-run; it must not train the model.
        """
        from tqdm.auto import tqdm

        end = self.config.total_steps if steps is None else min(self.step + steps, self.config.total_steps)
        bar = tqdm(total=end, initial=self.step, desc=self.label,
                   disable=not self.config.progress or self.rank != 0)
        metrics_file = self.out_dir / "metrics.jsonl"
        board = None
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            board = _tensorboard(self.out_dir / "tensorboard")
        while self.step < end:
            metrics = self.train_step()
            self.history.append(metrics)
            if self.rank == 0:
                with metrics_file.open("a") as handle:
                    handle.write(json.dumps(metrics) + "\n")
                bar.set_postfix({k.split("/")[1]: f"{v:.3f}" for k, v in metrics.items()
                                 if k.startswith("kd/") and v is not None})
                if board is not None:
                    for key, value in metrics.items():
                        if isinstance(value, float):
                            board.add_scalar(key, value, metrics["step"])
            bar.update(1)
            if after_step is not None:
                after_step(metrics)
            if self.config.checkpoint_every and self.step % self.config.checkpoint_every == 0:
                self.save()
        bar.close()
        if board is not None:
            board.close()
        return self.history

    # ---- checkpoints ------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        state = _full_state_dict(self.objective)
        return {
            "student": {k[len("student."):]: v for k, v in state.items() if k.startswith("student.")},
            "router": {k[len("router."):]: v for k, v in state.items() if k.startswith("router.")},
            "optimizer": self.optimizer.state_dict(),
            "config": self.config.to_dict(),
            "budgets": {name: budget.to_dict() for name, budget in self.trained_budgets().items()},
            "history": self.history,
        }

    def save(self) -> Path | None:
        """Checkpoint the run (rank 0 writes; every rank must call it)."""
        state = self._state()
        path = None
        if self.rank == 0:
            path = ckpt.save_checkpoint(self.out_dir / "checkpoints", self.step, state,
                                        keep=self.config.keep_checkpoints)
        if self.world > 1:
            dist.barrier()
        return path

    def resume(self, path: str | Path | None = None) -> bool:
        """Load the newest checkpoint of this run (or ``path``); False when there is none."""
        path = Path(path) if path else ckpt.latest_checkpoint(self.out_dir / "checkpoints")
        if path is None:
            return False
        step, state = ckpt.load_checkpoint(path)
        self.objective.student.load_state_dict(state["student"])
        if self.objective.router is not None:
            self.objective.router.load_state_dict(state["router"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.history = step, list(state["history"])
        return True

    def trained_budgets(self) -> dict[str, Budget]:
        """Each named budget's architecture (router argmax, or the fixed budgets)."""
        router = self.objective.router
        if router is None:
            return dict(zip(self.config.budget_names, self.objective.fixed_budgets))
        return {name: router.budget(name) for name in router.budget_names}


def _tensorboard(directory: Path):
    """A TensorBoard writer when tensorboard is installed, else None (metrics.jsonl always)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(directory))


def _full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """A plain (unsharded) state dict, also for FSDP-sharded modules."""
    state = module.state_dict()
    if any(type(p).__name__ == "DTensor" for p in module.parameters()):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))
    return state


def make_student(teacher: ElasticModel) -> ElasticModel:
    """A trainable copy of the teacher (same weights)."""
    student = copy.deepcopy(teacher)
    student.train().requires_grad_(True)
    return student
