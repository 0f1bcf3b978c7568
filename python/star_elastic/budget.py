"""Budgets: which prefix of every elastic axis a submodel keeps.

A ``Budget`` names active widths; anything left ``None`` stays at the parent's size. Global fields
apply to every layer of their kind, ``layers`` overrides them per layer (heterogeneous submodels),
``skip_layers`` drops whole blocks (a skipped block is the identity on the residual stream).
``Budget.resolve(config)`` validates it against a model and returns a ``ResolvedBudget`` with one
``LayerWidths`` (or ``None`` when skipped) per layer — the form the model's forward consumes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .config import ElasticConfig, LayerSpec

__all__ = ["LayerBudget", "Budget", "LayerWidths", "ResolvedBudget"]

# Budget field -> the layer kind it applies to.
_AXES = {
    "mamba_heads_per_group": "M",
    "mamba_head_dim": "M",
    "attention_heads_per_group": "*",
    "mlp_width": "-",
    "moe_experts": "E",
    "moe_expert_width": "E",
    "moe_shared_width": "E",
}
# Axes whose widths are channel counts and must respect ElasticConfig.width_granularity.
_GRANULAR = {"mamba_head_dim", "mlp_width", "moe_expert_width", "moe_shared_width"}


@dataclass(frozen=True)
class LayerBudget:
    """Active widths of one layer; ``None`` = the parent's. Only the fields of the layer's kind may be set."""

    mamba_heads_per_group: int | None = None
    mamba_head_dim: int | None = None
    attention_heads_per_group: int | None = None
    mlp_width: int | None = None
    moe_experts: int | None = None
    moe_expert_width: int | None = None
    moe_shared_width: int | None = None


@dataclass(frozen=True)
class Budget(LayerBudget):
    """A submodel: the global width of every axis, optional per-layer overrides and skipped layers.

    ``hidden_size``: active embedding channels (global; every layer and norm uses the same prefix).
    ``layers``: ``None`` or one ``LayerBudget | None`` per layer of the model (length must match).
    ``skip_layers``: indices of layers to drop.
    """

    hidden_size: int | None = None
    layers: tuple[LayerBudget | None, ...] | None = None
    skip_layers: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self):
        # Normalise lists/sets so budgets stay hashable and compare by value.
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "skip_layers", frozenset(int(i) for i in self.skip_layers))

    def to_dict(self) -> dict:
        """JSON-able form (``Budget.from_dict`` inverts it)."""
        data = {name: getattr(self, name) for name in (*_AXES, "hidden_size") if getattr(self, name) is not None}
        if self.layers is not None:
            data["layers"] = [None if layer is None else
                              {k: v for k, v in dataclasses.asdict(layer).items() if v is not None}
                              for layer in self.layers]
        if self.skip_layers:
            data["skip_layers"] = sorted(self.skip_layers)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Budget":
        fields = dict(data)
        if fields.get("layers") is not None:
            fields["layers"] = tuple(None if layer is None else LayerBudget(**layer) for layer in fields["layers"])
        fields["skip_layers"] = frozenset(fields.get("skip_layers", ()))
        unknown = set(fields) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown budget fields: {', '.join(sorted(unknown))}")
        return cls(**fields)

    def resolve(self, config: ElasticConfig) -> "ResolvedBudget":
        """Validate against ``config`` and fill in every width; raises ``ValueError`` naming the field."""
        hidden = _check_width("hidden_size", self.hidden_size, config.hidden_size, config.width_granularity, True)
        kinds = set(config.layer_pattern)
        for name, kind in _AXES.items():
            if getattr(self, name) is not None and kind not in kinds:
                raise ValueError(f"budget sets {name}, but the model has no layer of kind {kind!r} (budget for another model?)")
        if self.layers is not None and len(self.layers) != config.num_layers:
            raise ValueError(f"budget.layers has {len(self.layers)} entries but the model has {config.num_layers} layers")
        for index in self.skip_layers:
            if not 0 <= index < config.num_layers:
                raise ValueError(f"skip_layers names layer {index}, but the model has {config.num_layers} layers")
        resolved = []
        for index in range(config.num_layers):
            override = None if self.layers is None else self.layers[index]
            spec = config.layer(index)
            if override is not None:
                for name in _AXES:
                    if getattr(override, name) is not None and _AXES[name] != spec.kind:
                        raise ValueError(f"budget.layers[{index}] sets {name}, which a {spec.kind!r} layer does not have")
            widths = _layer_widths(config, spec, index, self, override)
            resolved.append(None if index in self.skip_layers else widths)
        return ResolvedBudget(hidden_size=hidden, layers=tuple(resolved))


@dataclass(frozen=True)
class LayerWidths:
    """Fully resolved active widths of one (kept) layer; fields not of ``kind`` hold the parent sizes."""

    kind: str
    mamba_heads_per_group: int
    mamba_head_dim: int
    attention_heads_per_group: int
    mlp_width: int
    moe_experts: int
    moe_expert_width: int
    moe_shared_width: int


@dataclass(frozen=True)
class ResolvedBudget:
    """What the forward consumes: the active hidden size and ``LayerWidths`` (``None`` = skipped) per layer."""

    hidden_size: int
    layers: tuple[LayerWidths | None, ...]

    @classmethod
    def full(cls, config: ElasticConfig) -> "ResolvedBudget":
        """The whole parent."""
        return Budget().resolve(config)

    def to_budget(self) -> Budget:
        """The equivalent explicit per-layer ``Budget`` (resolving it against the same config gives self back)."""
        layers = tuple(
            None if widths is None else LayerBudget(**{name: getattr(widths, name) for name, kind in _AXES.items()
                                                       if kind == widths.kind})
            for widths in self.layers
        )
        skipped = frozenset(index for index, widths in enumerate(self.layers) if widths is None)
        return Budget(hidden_size=self.hidden_size, layers=layers, skip_layers=skipped)


def _parent_widths(config: ElasticConfig, spec: LayerSpec) -> dict[str, int]:
    return {
        "mamba_heads_per_group": spec.mamba_num_heads // config.mamba_num_groups,
        "mamba_head_dim": spec.mamba_head_dim,
        "attention_heads_per_group": spec.num_attention_heads // config.num_key_value_heads,
        "mlp_width": spec.mlp_intermediate_size,
        "moe_experts": spec.moe_num_experts,
        "moe_expert_width": spec.moe_intermediate_size,
        "moe_shared_width": spec.moe_shared_intermediate_size,
    }


def _layer_widths(config, spec, index, budget, override) -> LayerWidths:
    parent = _parent_widths(config, spec)
    widths = {}
    for name in _AXES:
        requested = getattr(override, name, None) if override is not None else None
        if requested is None:
            requested = getattr(budget, name)
        if _AXES[name] != spec.kind:
            widths[name] = parent[name]
            continue
        label = f"{name} (layer {index})"
        granularity = config.width_granularity if name in _GRANULAR else 1
        allow_zero = name == "moe_shared_width" and parent[name] == 0
        widths[name] = _check_width(label, requested, parent[name], granularity, not allow_zero)
    if spec.kind == "E" and widths["moe_experts"] < config.moe_top_k:
        raise ValueError(f"moe_experts={widths['moe_experts']} (layer {index}) is below moe_top_k={config.moe_top_k}")
    return LayerWidths(kind=spec.kind, **widths)


def _check_width(name: str, requested: int | None, parent: int, granularity: int, positive: bool) -> int:
    if requested is None:
        return parent
    if not isinstance(requested, int) or isinstance(requested, bool):
        raise ValueError(f"{name}={requested!r} must be an int")
    low = 1 if positive else 0
    if not low <= requested <= parent:
        raise ValueError(f"{name}={requested} is outside [{low}, {parent}] (the parent's width is {parent})")
    if requested != parent and requested % granularity:
        raise ValueError(f"{name}={requested} is not a multiple of width_granularity={granularity}")
    return requested

