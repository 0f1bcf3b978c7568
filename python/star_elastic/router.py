"""The budget router: which width every elastic axis takes for each target budget, learned end to end.

One small network per elastic axis (paper §5): the one-hot of the target budget goes through
``Linear(n_budgets, 256) -> LeakyReLU -> Linear(256, n_choices)`` (``n_choices`` per layer of the
axis's kind in heterogeneous mode; the hidden size is always global). Choices are sampled with
Gumbel-softmax at a temperature annealed 1.0 -> 0.05, on logits multiplied by a scale rising
1.0 -> 10.0. A choice becomes a prefix mask over the parent's width, integrated in one of two modes:

* ``"hard"``: the argmax prefix mask, multiplied by ``pi_a / stop_grad(pi_a)`` — the mask scaled by
  the chosen option's (Gumbel-softmax) weight, normalised so the forward value is exactly the hard
  mask while gradients reach the router (the paper scales by the chosen logit; normalising keeps
  the forward function that of the submodel);
* ``"soft"``: the probability-weighted sum of all prefix masks, ``sum_i pi_i * mask_i``.

Depth is an axis too when the router is given a layer ranking (``layer_order``, most important
first, from :func:`star_elastic.importance.rank_layers`): its choices are how many of the top-ranked
layers to keep; the others become the budget's ``skip_layers``. Its hard gate scales every kept
layer's output, its soft mask weighs each layer's output by the probability that it is kept.

The resource cost of a decision is explicit (``cost=``, one of :data:`star_elastic.params.COST_KINDS`:
active parameters, total parameters, or memory = weight bytes + decoding caches at
``memory_context`` tokens). The router loss steers its expectation under the router's policy
``softmax(scale * logits)`` (expected widths and keep probabilities through the same formulas as
:mod:`star_elastic.params`; exact, since the axes are drawn independently), so its gradient does
not vanish when a Gumbel-softmax sample saturates. An axis whose whole range of choices moves
that cost by less than ``min_cost_share`` of the parent's (MoE expert count for active parameters:
only the router rows change) is not routed at all: pruning it would save nothing the router is
asked to save. The router loss is ``lambda * |E[cost] - target| / target``. After training,
:meth:`ElasticRouter.budget` (argmax, no noise) gives each budget's architecture, stored in
checkpoints as a named ``Budget``.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .budget import _AXES, _GRANULAR, Budget, LayerBudget, LayerWidths, _parent_widths
from .config import ElasticConfig
from .params import COST_KINDS, layer_cache_bytes, layer_parameter_count

DEFAULT_FRACTIONS = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25)
# Depth keeps at least half the layers by default: below that a hybrid loses whole layer kinds.
DEFAULT_DEPTH_FRACTIONS = (1.0, 0.875, 0.75, 0.625, 0.5)
MODES = ("hard", "soft")
DEPTH = "depth"


def width_choices(parent: int, granularity: int, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                  minimum: int = 1) -> tuple[int, ...]:
    """Candidate widths, largest first: ``fraction * parent`` rounded down to ``granularity``,
    kept if at least ``minimum``; the parent's width is always a candidate."""
    widths = {parent}
    for fraction in fractions:
        width = int(parent * fraction) // granularity * granularity
        if width >= max(minimum, 1):
            widths.add(width)
    return tuple(sorted(widths, reverse=True))


@dataclasses.dataclass(frozen=True)
class Axis:
    """One elastic axis: its Budget field name (or ``"depth"``), the layers it spans (None =
    global) and its candidate widths (largest first). The depth axis's widths are numbers of kept
    layers and ``layer_order`` ranks the layers (most important first)."""

    name: str
    layers: tuple[int, ...] | None
    parent: int
    choices: tuple[int, ...]
    layer_order: tuple[int, ...] | None = None

    @property
    def segments(self) -> int:
        return 1 if self.layers is None else len(self.layers)


def elastic_axes(config: ElasticConfig, *, heterogeneous: bool = False,
                 fractions: Sequence[float] = DEFAULT_FRACTIONS,
                 layer_order: Sequence[int] | None = None,
                 depth_fractions: Sequence[float] = DEFAULT_DEPTH_FRACTIONS) -> list[Axis]:
    """Every axis of ``config`` with more than one candidate width; with ``layer_order`` (every
    layer index once, most important first) also the depth axis."""
    axes = []
    if layer_order is not None:
        order = tuple(int(i) for i in layer_order)
        if sorted(order) != list(range(config.num_layers)):
            raise ValueError(f"layer_order must name each of the {config.num_layers} layers once, "
                             f"got {list(order)}")
        depths = width_choices(config.num_layers, 1, depth_fractions)
        if len(depths) > 1:
            axes.append(Axis(DEPTH, None, config.num_layers, depths, order))
    hidden = width_choices(config.hidden_size, config.width_granularity, fractions)
    if len(hidden) > 1:
        axes.append(Axis("hidden_size", None, config.hidden_size, hidden))
    for name, kind in _AXES.items():
        layers = tuple(i for i in range(config.num_layers) if config.layer(i).kind == kind)
        if not layers:
            continue
        parent = _parent_widths(config, config.layer(layers[0]))[name]
        if name in ("mamba_heads_per_group", "attention_heads_per_group"):
            choices = tuple(range(parent, 0, -1))
        elif parent == 0:
            continue
        else:
            granularity = config.width_granularity if name in _GRANULAR else 1
            minimum = config.moe_top_k if name == "moe_experts" else 1
            choices = width_choices(parent, granularity, fractions, minimum)
        if len(choices) > 1:
            axes.append(Axis(name, layers if heterogeneous else None, parent, choices))
    return axes


class AxisRouter(nn.Module):
    """one-hot(budget) -> Linear(n_budgets, hidden) -> LeakyReLU -> Linear(hidden, segments*choices)."""

    def __init__(self, axis: Axis, num_budgets: int, hidden: int = 256):
        super().__init__()
        self.axis = axis
        self.net = nn.Sequential(nn.Linear(num_budgets, hidden), nn.LeakyReLU(),
                                 nn.Linear(hidden, axis.segments * len(axis.choices)))
        # Start every budget at the full width so training begins from the parent's function.
        with torch.no_grad():
            self.net[2].bias.view(axis.segments, -1)[:, 0] += 2.0

    def forward(self, one_hot: torch.Tensor) -> torch.Tensor:
        """(num_budgets,) -> logits (segments, choices)."""
        return self.net(one_hot).view(self.axis.segments, len(self.axis.choices))


@dataclasses.dataclass(frozen=True)
class Gates:
    """Straight-through factors (value 1, gradient to the router) that carry the "hard" mode into
    a forward at a ``Budget``: ``hidden`` multiplies the embedding output, ``layers[i]`` the output
    of layer i's mixer (None: nothing routed there). Scaling a layer's output stands in for scaling
    its prefix masks by the chosen options' weights: the forward value is unchanged, and the router
    gets the gradient of the loss along that output."""

    hidden: torch.Tensor | None
    layers: tuple[torch.Tensor | None, ...]


@dataclasses.dataclass
class Decision:
    """One sampled architecture: per axis, the Gumbel-softmax sample ``probs`` (segments, choices),
    its argmax ``picks`` (segments,), and ``policy``, the router's distribution over the choices
    (``softmax(scale * logits)``, no noise) whose expected cost the router loss steers; ``None``
    = ``probs`` (a fixed or hand-made decision)."""

    axes: list[Axis]
    probs: dict[str, torch.Tensor]
    picks: dict[str, torch.Tensor]
    policy: dict[str, torch.Tensor] | None = None

    def widths(self, axis: Axis) -> list[int]:
        return [axis.choices[int(i)] for i in self.picks[axis.name]]

    def budget(self, config: ElasticConfig) -> Budget:
        """The hard architecture as a ``Budget`` (per-layer overrides for heterogeneous axes)."""
        global_fields, per_layer = {}, [dict() for _ in range(config.num_layers)]
        for axis in self.axes:
            widths = self.widths(axis)
            if axis.name == DEPTH:
                global_fields["skip_layers"] = frozenset(axis.layer_order[widths[0]:])
            elif axis.layers is None:
                global_fields[axis.name] = widths[0]
            else:
                for layer, width in zip(axis.layers, widths):
                    per_layer[layer][axis.name] = width
        layers = None
        if any(per_layer):
            layers = tuple(LayerBudget(**fields) if fields else None for fields in per_layer)
        return Budget(layers=layers, **global_fields)

    def _policy(self, axis: Axis) -> torch.Tensor:
        return (self.policy or self.probs)[axis.name]

    def expected_widths(self, axis: Axis) -> torch.Tensor:
        """(segments,) expected widths ``sum_i policy_i * width_i`` under the router's distribution,
        differentiable. The axes are drawn independently and every cost is a sum of products of
        widths of different axes, so the cost at these widths is the expected cost."""
        policy = self._policy(axis)
        return policy @ torch.tensor(axis.choices, dtype=policy.dtype, device=policy.device)

    def layer_keep(self, axis: Axis, mode: str = "policy") -> torch.Tensor:
        """Depth axis: (num_layers,) weight of every layer, in layer order: ``"policy"`` the
        probability that the layer is kept under the router's distribution (the expected cost),
        ``"soft"`` under the Gumbel-softmax sample (the soft mode's layer weights), ``"hard"`` 1
        for the sampled architecture's kept layers and 0 for its skipped ones."""
        ranks = torch.empty(axis.parent, dtype=torch.long)
        ranks[torch.tensor(axis.layer_order)] = torch.arange(axis.parent)
        choices = torch.tensor(axis.choices)
        kept_by_choice = (ranks[None, :] < choices[:, None]).float()  # (choices, num_layers)
        if mode == "hard":
            return kept_by_choice[self.picks[axis.name][0]]
        if mode not in ("soft", "policy"):
            raise ValueError(f"mode must be 'hard', 'soft' or 'policy', got {mode!r}")
        weights = self.probs[axis.name][0] if mode == "soft" else self._policy(axis)[0]
        return weights @ kept_by_choice.to(weights.dtype).to(weights.device)

    def _factors(self, axis: Axis) -> torch.Tensor:
        picked = self.probs[axis.name].gather(1, self.picks[axis.name][:, None])[:, 0]
        return picked / picked.detach()

    def gates(self, num_layers: int, layer_kinds: str) -> Gates:
        """The hard mode's straight-through :class:`Gates` for a model of ``layer_kinds``."""
        hidden, layers = None, [None] * num_layers
        for axis in self.axes:
            factors = self._factors(axis)
            if axis.name == "hidden_size":
                hidden = factors[0]
                continue
            if axis.name == DEPTH:  # the kept layers carry the depth choice's gradient
                targets = axis.layer_order[:self.widths(axis)[0]]
            else:
                kind = _AXES[axis.name]
                targets = axis.layers or [i for i in range(num_layers) if layer_kinds[i] == kind]
            for segment, layer in enumerate(targets):
                factor = factors[segment if axis.layers else 0]
                layers[layer] = factor if layers[layer] is None else layers[layer] * factor
        return Gates(hidden, tuple(layers))

    def channel_masks(self, config: ElasticConfig, mode: str = "soft"):
        """Every axis's masks (:meth:`masks`) laid out for ``ElasticModel.forward(masks=...)``,
        to be run at the full budget; axes the router does not route get all-ones masks. The
        depth axis adds each layer's weight under the key ``"layer"``: in both modes 1 for the
        sampled architecture's kept layers (carrying the depth choice's straight-through
        gradient) and 0 for its skipped ones. Every sliced budget has a layer or not, and a layer
        trained at a fractional weight fails when the budget drops it (the full demo's 45% budget
        lost 31 points to one such layer with soft layer weights)."""
        from .model import ChannelMasks

        layers: list[dict | None] = [None] * config.num_layers
        hidden = None
        for index in range(config.num_layers):
            spec = config.layer(index)
            parent = _parent_widths(config, spec)
            layers[index] = {name: torch.ones(parent[name]) for name, kind in _AXES.items()
                             if kind == spec.kind}
        for axis in self.axes:
            if axis.name == DEPTH:
                if mode not in MODES:
                    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
                keep = self.layer_keep(axis, "hard").to(self.probs[axis.name].device)
                for layer, weight in enumerate(keep * self._factors(axis)[0]):
                    layers[layer]["layer"] = weight
                continue
            masks = self.masks(axis, mode)
            if axis.name == "hidden_size":
                hidden = masks[0]
                continue
            targets = axis.layers or [i for i in range(config.num_layers)
                                      if config.layer(i).kind == _AXES[axis.name]]
            for segment, layer in enumerate(targets):
                layers[layer][axis.name] = masks[segment if axis.layers else 0]
        return ChannelMasks(hidden, tuple(layers))

    def masks(self, axis: Axis, mode: str) -> torch.Tensor:
        """(segments, parent) masks over the axis's parent width, integrated as ``mode``."""
        probs = self.probs[axis.name]
        positions = torch.arange(axis.parent, device=probs.device)
        prefix = (positions[None, :] < torch.tensor(axis.choices, device=probs.device)[:, None])
        prefix = prefix.to(probs.dtype)  # (choices, parent)
        if mode == "soft":
            return probs @ prefix
        if mode != "hard":
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        picked = probs.gather(1, self.picks[axis.name][:, None])  # (segments, 1)
        return prefix[self.picks[axis.name]] * (picked / picked.detach())


class ElasticRouter(nn.Module):
    """Per-axis routers for ``budget_names`` over the elastic axes of ``config``.

    Args:
        config: the parent's config.
        budget_names: the named budgets (e.g. ``("full", "70%", "45%")``), index = one-hot position.
        targets: the target cost of each budget, as a fraction of the parent's cost.
        cost: what the targets are fractions of, one of :data:`~star_elastic.params.COST_KINDS`:
            ``"active"`` parameters (what a token touches), ``"total"`` parameters, or
            ``"memory"`` (weight bytes + decoding caches of one sequence of ``memory_context`` tokens).
        heterogeneous: one choice per layer for the per-layer axes (hidden size stays global).
        fractions: candidate width fractions of every axis (heads: every count).
        layer_order: every layer index once, most important first (``rank_layers``): makes depth
            an axis whose choices keep the top ``int(f * num_layers)`` layers, f in ``depth_fractions``.
        min_cost_share: an axis is routed only if its smallest choice (all else full) lowers the
            parent's cost by at least this fraction of it; ``excluded_axes`` lists the others.
        memory_context: tokens of context for ``cost="memory"``.
        hidden: router hidden size (256 in the paper).
    """

    def __init__(self, config: ElasticConfig, budget_names: Sequence[str], targets: Sequence[float],
                 *, cost: str = "active", heterogeneous: bool = False,
                 fractions: Sequence[float] = DEFAULT_FRACTIONS,
                 layer_order: Sequence[int] | None = None,
                 depth_fractions: Sequence[float] = DEFAULT_DEPTH_FRACTIONS,
                 min_cost_share: float = 0.01, memory_context: int = 4096, hidden: int = 256):
        super().__init__()
        if len(budget_names) != len(targets) or not budget_names:
            raise ValueError("budget_names and targets must be non-empty and of equal length")
        if not all(0 < t <= 1 for t in targets):
            raise ValueError(f"targets are fractions of the parent's cost in (0, 1], got {targets}")
        if cost not in COST_KINDS:
            raise ValueError(f"cost must be one of {', '.join(COST_KINDS)}, got {cost!r}")
        if not 0 <= min_cost_share < 1:
            raise ValueError(f"min_cost_share must be in [0, 1), got {min_cost_share}")
        if memory_context < 1:
            raise ValueError(f"memory_context must be >= 1 token, got {memory_context}")
        self.config, self.budget_names, self.targets = config, tuple(budget_names), tuple(targets)
        self.cost_kind, self.memory_context = cost, int(memory_context)
        candidates = elastic_axes(config, heterogeneous=heterogeneous, fractions=fractions,
                                  layer_order=layer_order, depth_fractions=depth_fractions)
        self.axes = candidates
        parent_cost = float(self._cost_of(None))
        self.axes, self.excluded_axes = [], []
        for axis in candidates:
            saving = parent_cost - float(self._cost_of(_smallest(candidates, axis)))
            (self.axes if saving >= min_cost_share * parent_cost else self.excluded_axes).append(axis)
        self.routers = nn.ModuleDict({a.name: AxisRouter(a, len(budget_names), hidden)
                                      for a in self.axes})
        self.register_buffer("parent_cost", torch.tensor(parent_cost), persistent=False)
        if layer_order is not None:  # saved with the router: its depth choices mean these layers
            self.register_buffer("layer_order", torch.tensor([int(i) for i in layer_order]))

    def index(self, budget: str | int) -> int:
        if isinstance(budget, int):
            return budget
        if budget not in self.budget_names:
            raise KeyError(f"unknown budget {budget!r}; known: {', '.join(self.budget_names)}")
        return self.budget_names.index(budget)

    def logits(self, budget: str | int) -> dict[str, torch.Tensor]:
        one_hot = F.one_hot(torch.tensor(self.index(budget)), len(self.budget_names)).float()
        one_hot = one_hot.to(next(self.parameters()).device)
        return {name: router(one_hot) for name, router in self.routers.items()}

    def _full(self) -> Decision:
        probs = {a.name: F.one_hot(torch.zeros(a.segments, dtype=torch.long), len(a.choices)).float()
                 for a in self.axes}
        return Decision(self.axes, probs, {n: p.argmax(-1) for n, p in probs.items()})

    def sample(self, budget: str | int, *, tau: float = 1.0, scale: float = 1.0,
               generator: torch.Generator | None = None) -> Decision:
        """Gumbel-softmax sample of every axis for ``budget`` at temperature ``tau`` on the logits
        times ``scale``; the decision's ``policy`` is ``softmax(scale * logits)``.

        A budget whose target is 1.0 is the parent itself: always the full widths, not routed.
        """
        if self.targets[self.index(budget)] == 1.0:
            return self._full()
        probs, picks, policy = {}, {}, {}
        for name, logits in self.logits(budget).items():
            uniform = torch.rand(logits.shape, generator=generator).clamp(1e-9, 1 - 1e-9)
            gumbel = -torch.log(-torch.log(uniform)).to(logits.device)
            probs[name] = torch.softmax((logits * scale + gumbel) / tau, dim=-1)
            picks[name] = probs[name].argmax(dim=-1)
            policy[name] = torch.softmax(logits * scale, dim=-1)
        return Decision(self.axes, probs, picks, policy)

    def decide(self, budget: str | int) -> Decision:
        """The deterministic architecture of ``budget``: argmax of the logits, no noise."""
        if self.targets[self.index(budget)] == 1.0:
            return self._full()
        probs, picks = {}, {}
        for name, logits in self.logits(budget).items():
            probs[name] = torch.softmax(logits, dim=-1)
            picks[name] = logits.argmax(dim=-1)
        return Decision(self.axes, probs, picks)

    def budget(self, budget: str | int) -> Budget:
        """The trained architecture of ``budget`` as a ``Budget``."""
        return self.decide(budget).budget(self.config)

    def expected_cost(self, decision: Decision) -> torch.Tensor:
        """The expected cost (of kind ``cost_kind``) under ``decision``'s policy, differentiable."""
        return self._cost_of(decision)

    def sampled_cost(self, decision: Decision) -> float:
        """The cost of the architecture ``decision`` sampled (its picks)."""
        hard = {a.name: F.one_hot(decision.picks[a.name], len(a.choices)).float() for a in decision.axes}
        return float(self._cost_of(Decision(decision.axes, hard, decision.picks)))

    def loss(self, decision: Decision, budget: str | int) -> torch.Tensor:
        """``|E[cost] - target| / target``, the expected cost under ``decision``'s policy and the
        target as fractions of the parent's cost.

        The expectation, not the sampled architecture's cost through a straight-through estimate:
        the Gumbel-softmax saturates as soon as its logits part, and its gradient (and with it the
        search) would stop; the policy's gradient stays until the scale schedule commits it."""
        target = self.targets[self.index(budget)]
        fraction = self.expected_cost(decision) / self.parent_cost
        return (fraction - target).abs() / target

    def _cost_of(self, decision: Decision | None):
        """The cost (of kind ``cost_kind``) of ``decision``'s expected widths and kept layers;
        ``None``: the parent's."""
        config = self.config
        expected, keep = {}, None
        if decision is not None:
            for axis in decision.axes:
                if axis.name == DEPTH:
                    keep = decision.layer_keep(axis, "policy")
                    continue
                widths = decision.expected_widths(axis)
                for segment, layer in enumerate(axis.layers or [None]):
                    expected[(axis.name, layer)] = widths[segment]

        def width(name: str, layer: int | None, parent):
            return expected.get((name, layer), expected.get((name, None), parent))

        hidden = width("hidden_size", None, config.hidden_size)
        total = active = 2 * config.vocab_size * hidden + hidden
        caches = 0
        for index in range(config.num_layers):
            spec = config.layer(index)
            parent = _parent_widths(config, spec)
            fields = {name: width(name, index, parent[name]) for name in parent}
            widths = LayerWidths(kind=spec.kind, **fields)
            layer_total, layer_active = layer_parameter_count(config, widths, hidden)
            layer_cache = layer_cache_bytes(config, widths, context=self.memory_context)
            kept = 1 if keep is None else keep[index]
            total, active = total + kept * layer_total, active + kept * layer_active
            caches = caches + kept * layer_cache
        if self.cost_kind == "active":
            return active
        if self.cost_kind == "total":
            return total
        return 2 * total + caches  # BF16 weights + caches, as params.memory_bytes


def _smallest(axes: list[Axis], axis: Axis) -> Decision:
    """The decision that takes ``axis``'s smallest choice and every other axis's largest."""
    probs = {}
    for a in axes:
        pick = len(a.choices) - 1 if a is axis else 0
        probs[a.name] = F.one_hot(torch.full((a.segments,), pick), len(a.choices)).float()
    return Decision(axes, probs, {name: p.argmax(-1) for name, p in probs.items()})
