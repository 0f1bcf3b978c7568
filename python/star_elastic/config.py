"""Architecture of an elastic hybrid (Nemotron-H style) model.

``ElasticConfig`` describes the parent: a layer pattern (``M`` Mamba-2, ``*`` attention, ``-`` ReLU²
MLP, ``E`` MoE) and the sizes of each layer kind. A sliced child may have different widths per layer;
those live in ``layer_overrides`` and every module is built from ``config.layer(i)``, a ``LayerSpec``
with the concrete sizes of layer ``i``. Converts from and to transformers' ``NemotronHConfig``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

__all__ = ["ElasticConfig", "LayerSpec", "LAYER_KINDS", "PER_LAYER_FIELDS"]

LAYER_KINDS = {"M": "mamba", "*": "attention", "-": "mlp", "E": "moe"}
_HF_BLOCK_TYPES = {"M": "linear_attention", "*": "full_attention", "-": "mlp", "E": "moe"}

# The sizes that may differ from layer to layer (after heterogeneous slicing), by layer kind.
PER_LAYER_FIELDS = {
    "M": ("mamba_num_heads", "mamba_head_dim"),
    "*": ("num_attention_heads",),
    "-": ("mlp_intermediate_size",),
    "E": ("moe_num_experts", "moe_intermediate_size", "moe_shared_intermediate_size"),
}


@dataclass
class ElasticConfig:
    """The parent (or a sliced child) architecture.

    Mamba-2: ``mamba_num_heads`` H heads of ``mamba_head_dim`` P channels in ``mamba_num_groups`` G
    groups (B/C shared per group), state ``mamba_state_size`` N, depthwise conv of width
    ``mamba_conv_kernel``, ``dt`` clamped to ``mamba_dt_limit`` after softplus.
    Attention: GQA with ``num_attention_heads`` query heads, ``num_key_value_heads`` KV heads of
    ``attention_head_dim`` channels, no positional embedding (Nemotron-H attention is NoPE).
    MoE: ``moe_num_experts`` routed experts of width ``moe_intermediate_size``, ``moe_top_k`` per token,
    sigmoid scores (+ ``e_score_correction_bias`` for the choice when ``moe_correction_bias``),
    renormalised top-k times ``moe_routed_scaling``, plus a shared expert of width
    ``moe_shared_intermediate_size`` (0 = none).
    ``width_granularity``: elastic widths (hidden, MLP, expert, shared, Mamba head dim) must be
    multiples of it unless they equal the parent's (16 keeps NVFP4 blocks whole).
    ``layer_overrides``: ``{layer index: {field in PER_LAYER_FIELDS[kind]: size}}`` for heterogeneous
    children.
    """

    layer_pattern: str
    vocab_size: int
    hidden_size: int
    mamba_num_heads: int = 8
    mamba_head_dim: int = 16
    mamba_num_groups: int = 2
    mamba_state_size: int = 16
    mamba_conv_kernel: int = 4
    mamba_chunk_size: int = 128
    mamba_conv_bias: bool = True
    mamba_dt_limit: tuple[float, float] = (1e-3, math.inf)  # Nemotron-H: (time_step_min, no upper bound)
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    attention_head_dim: int = 16
    mlp_intermediate_size: int = 128
    moe_num_experts: int = 8
    moe_top_k: int = 2
    moe_intermediate_size: int = 32
    moe_shared_intermediate_size: int = 64
    moe_routed_scaling: float = 1.0
    moe_correction_bias: bool = True
    moe_renormalize: bool = True
    norm_eps: float = 1e-5
    width_granularity: int = 1
    layer_overrides: dict[int, dict[str, int]] = field(default_factory=dict)

    def __post_init__(self):
        self.mamba_dt_limit = tuple(float(v) for v in self.mamba_dt_limit)
        self.layer_overrides = {int(i): dict(sizes) for i, sizes in self.layer_overrides.items()}
        self.validate()

    # --- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        """Raises ``ValueError`` naming the offending field."""
        if not self.layer_pattern:
            raise ValueError("layer_pattern must have at least one layer")
        for position, char in enumerate(self.layer_pattern):
            if char not in LAYER_KINDS:
                raise ValueError(
                    f"layer_pattern has unknown layer character {char!r} at position {position}; "
                    f"expected one of {''.join(LAYER_KINDS)}"
                )
        positive = ["vocab_size", "hidden_size", "width_granularity"]
        kinds = set(self.layer_pattern)
        if "M" in kinds:
            positive += ["mamba_num_heads", "mamba_head_dim", "mamba_num_groups", "mamba_state_size",
                         "mamba_conv_kernel", "mamba_chunk_size"]
        if "*" in kinds:
            positive += ["num_attention_heads", "num_key_value_heads", "attention_head_dim"]
        if "-" in kinds:
            positive += ["mlp_intermediate_size"]
        if "E" in kinds:
            positive += ["moe_num_experts", "moe_top_k", "moe_intermediate_size"]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.moe_shared_intermediate_size < 0:
            raise ValueError(f"moe_shared_intermediate_size={self.moe_shared_intermediate_size} must be >= 0")
        if self.norm_eps <= 0:
            raise ValueError(f"norm_eps={self.norm_eps} must be positive")
        for index, sizes in self.layer_overrides.items():
            if not 0 <= index < self.num_layers:
                raise ValueError(f"layer_overrides names layer {index}, but the model has {self.num_layers} layers")
            kind = self.layer_pattern[index]
            for name in sizes:
                if name not in PER_LAYER_FIELDS[kind]:
                    raise ValueError(
                        f"layer_overrides[{index}] sets {name!r}, which a {LAYER_KINDS[kind]} layer does not have "
                        f"(allowed: {PER_LAYER_FIELDS[kind]})"
                    )
        for index in range(self.num_layers):
            self._validate_layer(index, self.layer(index))

    def _validate_layer(self, index: int, spec: LayerSpec) -> None:
        where = f" (layer {index})" if index in self.layer_overrides else ""
        if spec.kind == "M":
            if spec.mamba_num_heads < 1 or spec.mamba_head_dim < 1:
                raise ValueError(f"mamba_num_heads and mamba_head_dim must be positive{where}")
            if spec.mamba_num_heads % self.mamba_num_groups:
                raise ValueError(
                    f"mamba_num_heads={spec.mamba_num_heads} is not divisible by mamba_num_groups="
                    f"{self.mamba_num_groups}{where}"
                )
        elif spec.kind == "*":
            if spec.num_attention_heads < 1 or spec.num_attention_heads % self.num_key_value_heads:
                raise ValueError(
                    f"num_attention_heads={spec.num_attention_heads} is not a positive multiple of "
                    f"num_key_value_heads={self.num_key_value_heads}{where}"
                )
        elif spec.kind == "-":
            if spec.mlp_intermediate_size < 1:
                raise ValueError(f"mlp_intermediate_size must be positive{where}")
        elif spec.kind == "E":
            if spec.moe_num_experts < 1 or spec.moe_intermediate_size < 1 or spec.moe_shared_intermediate_size < 0:
                raise ValueError(f"MoE sizes must be positive{where}")
            if self.moe_top_k > spec.moe_num_experts:
                raise ValueError(f"moe_top_k={self.moe_top_k} is larger than moe_num_experts={spec.moe_num_experts}{where}")

    # --- derived sizes ----------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """Number of blocks (the length of the layer pattern)."""
        return len(self.layer_pattern)

    def layer(self, index: int) -> LayerSpec:
        """Sizes of layer ``index`` (global sizes with that layer's overrides applied)."""
        sizes = {name: getattr(self, name) for name in LayerSpec.__dataclass_fields__ if name != "kind"}
        sizes.update(self.layer_overrides.get(index, {}))
        return LayerSpec(kind=self.layer_pattern[index], **sizes)

    @property
    def is_uniform(self) -> bool:
        """True when every layer of a kind has the same sizes (expressible as a ``NemotronHConfig``)."""
        return all(
            getattr(self.layer(i), name) == getattr(self, name)
            for i in range(self.num_layers)
            for name in PER_LAYER_FIELDS[self.layer_pattern[i]]
        )

    # --- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready dict (the project's own checkpoint format)."""
        data = dataclasses.asdict(self)
        data["mamba_dt_limit"] = [v if math.isfinite(v) else "inf" for v in self.mamba_dt_limit]
        data["layer_overrides"] = {str(i): sizes for i, sizes in self.layer_overrides.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ElasticConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        data = dict(data)
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown ElasticConfig fields: {sorted(unknown)}")
        if "mamba_dt_limit" in data:
            data["mamba_dt_limit"] = tuple(float(v) for v in data["mamba_dt_limit"])
        return cls(**data)

    def to_json(self) -> str:
        """The config as a JSON string."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    # --- transformers interop ---------------------------------------------------------------
    @classmethod
    def from_hf(cls, hf_config) -> "ElasticConfig":
        """From a transformers ``NemotronHConfig``. Raises for features this model does not implement."""
        unsupported = {
            "use_bias": False, "mlp_bias": False, "tie_word_embeddings": False, "moe_latent_size": None,
            "n_group": 1, "num_nextn_predict_layers": 0, "mlp_hidden_act": "relu2", "mamba_hidden_act": "silu",
        }
        for name, supported in unsupported.items():
            value = getattr(hf_config, name, supported)
            if value != supported:
                raise ValueError(f"NemotronHConfig.{name}={value!r} is not supported (only {supported!r})")
        return cls(
            layer_pattern=hf_config.hybrid_override_pattern,
            vocab_size=hf_config.vocab_size,
            hidden_size=hf_config.hidden_size,
            mamba_num_heads=hf_config.mamba_num_heads,
            mamba_head_dim=hf_config.mamba_head_dim,
            mamba_num_groups=hf_config.n_groups,
            mamba_state_size=hf_config.ssm_state_size,
            mamba_conv_kernel=hf_config.conv_kernel,
            mamba_chunk_size=hf_config.chunk_size,
            mamba_conv_bias=bool(hf_config.use_conv_bias),
            # Nemotron-H clamps dt from below at time_step_min and never from above.
            mamba_dt_limit=(float(hf_config.time_step_min), math.inf),
            num_attention_heads=hf_config.num_attention_heads,
            num_key_value_heads=hf_config.num_key_value_heads,
            attention_head_dim=hf_config.head_dim,
            mlp_intermediate_size=hf_config.intermediate_size,
            moe_num_experts=hf_config.n_routed_experts,
            moe_top_k=hf_config.num_experts_per_tok,
            moe_intermediate_size=hf_config.moe_intermediate_size,
            moe_shared_intermediate_size=hf_config.moe_shared_expert_intermediate_size,
            moe_routed_scaling=float(hf_config.routed_scaling_factor),
            moe_correction_bias=True,
            moe_renormalize=bool(hf_config.norm_topk_prob),
            norm_eps=float(hf_config.layer_norm_epsilon),
        )

    def to_hf(self):
        """A transformers ``NemotronHConfig``; only for uniform configs with a shared expert."""
        from transformers import NemotronHConfig

        if not self.is_uniform:
            raise ValueError("per-layer widths (layer_overrides) cannot be expressed as a NemotronHConfig")
        if not (0 < self.mamba_dt_limit[0] and self.mamba_dt_limit[1] == math.inf):
            raise ValueError(f"mamba_dt_limit={self.mamba_dt_limit}: NemotronHConfig needs (time_step_min > 0, inf)")
        if "E" in self.layer_pattern and (self.moe_shared_intermediate_size == 0 or not self.moe_correction_bias):
            raise ValueError("NemotronHConfig MoE layers always have a shared expert and a correction bias")
        return NemotronHConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            layers_block_type=[_HF_BLOCK_TYPES[c] for c in self.layer_pattern],
            mamba_num_heads=self.mamba_num_heads,
            mamba_head_dim=self.mamba_head_dim,
            n_groups=self.mamba_num_groups,
            ssm_state_size=self.mamba_state_size,
            conv_kernel=self.mamba_conv_kernel,
            chunk_size=self.mamba_chunk_size,
            use_conv_bias=self.mamba_conv_bias,
            time_step_min=self.mamba_dt_limit[0],
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.attention_head_dim,
            intermediate_size=self.mlp_intermediate_size,
            n_routed_experts=self.moe_num_experts,
            num_experts_per_tok=self.moe_top_k,
            moe_intermediate_size=self.moe_intermediate_size,
            moe_shared_expert_intermediate_size=self.moe_shared_intermediate_size,
            routed_scaling_factor=self.moe_routed_scaling,
            norm_topk_prob=self.moe_renormalize,
            layer_norm_epsilon=self.norm_eps,
            tie_word_embeddings=False,
            use_bias=False,
            mlp_bias=False,
        )


@dataclass(frozen=True)
class LayerSpec:
    """Concrete sizes of one layer; fields that do not apply to ``kind`` are still filled in."""

    kind: str
    mamba_num_heads: int
    mamba_head_dim: int
    num_attention_heads: int
    mlp_intermediate_size: int
    moe_num_experts: int
    moe_intermediate_size: int
    moe_shared_intermediate_size: int
