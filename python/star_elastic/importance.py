"""Importance ranking on calibration data and the permutation that makes every submodel a prefix.

Scores (paper-method.md §3), all from forward passes of the full parent:

* hidden channels: ``sum_{B,L} |LN(X)|`` summed over every block's pre-norm output;
* MLP neurons: ``sum_{B,L} |relu(X W1^T)^2|`` (the fc2 input, as ModelOpt's Minitron);
* Mamba: on the x branch of in_proj, ``s`` (b, l, H, P): one head-channel ranking shared by all heads,
  ``||s[..., c]||_2`` over batch, length and heads (eq. 3); heads by ``||s[..., h, D_top]||_2`` over
  the top-ranked channels D_top only (eq. 4; by default as many as the smallest head_dim the
  router can choose), ranked inside their group only;
* attention heads: ``||o_h||_2`` of each query head's output (the o_proj input), ranked inside its KV group;
* MoE experts: REAP, the mean over the tokens routed to expert j of ``g_j(x) * ||f_j(x)||_2``;
  expert-FFN neurons per expert over its routed tokens; shared-expert neurons over all tokens;
* layers: iterative normalised MSE of the logits — repeatedly drop the layer whose removal (on top
  of those already dropped) changes the logits least; the rank is the reverse removal order.

``permute_`` reorders the parent's weights in place by these rankings; the full model computes the
same function afterwards, and every budget then keeps the most important components.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from .budget import Budget
from .model import AttentionMixer, ElasticModel, MambaMixer, MLPMixer, MoEMixer

__all__ = ["Importance", "estimate_importance", "permute_", "rank_layers"]


@dataclass
class Importance:
    """Scores per axis (higher = more important); dicts are keyed by layer index.

    hidden (D,); mlp_neurons {i: (F,)}; mamba_channels {i: (P,)}; mamba_heads {i: (H,)};
    attention_heads {i: (Hq,)}; moe_experts {i: (E,)}; moe_expert_neurons {i: (E, F)};
    moe_shared_neurons {i: (Fs,)}; layer_order: layer indices, most important first.
    """

    hidden: torch.Tensor
    mlp_neurons: dict[int, torch.Tensor] = field(default_factory=dict)
    mamba_channels: dict[int, torch.Tensor] = field(default_factory=dict)
    mamba_heads: dict[int, torch.Tensor] = field(default_factory=dict)
    attention_heads: dict[int, torch.Tensor] = field(default_factory=dict)
    moe_experts: dict[int, torch.Tensor] = field(default_factory=dict)
    moe_expert_neurons: dict[int, torch.Tensor] = field(default_factory=dict)
    moe_shared_neurons: dict[int, torch.Tensor] = field(default_factory=dict)
    layer_order: list[int] | None = None

    def depth_budget(self, num_layers: int, **widths) -> Budget:
        """A ``Budget`` keeping the ``num_layers`` most important layers (plus any width fields)."""
        if self.layer_order is None:
            raise ValueError("layer importance was not estimated (rank_layers=False)")
        if not 1 <= num_layers <= len(self.layer_order):
            raise ValueError(f"num_layers={num_layers} must be in [1, {len(self.layer_order)}]")
        return Budget(skip_layers=frozenset(self.layer_order[num_layers:]), **widths)


class _Accumulator:
    """The observer: sums activation statistics per (layer, site) over the calibration batches."""

    def __init__(self, model: ElasticModel):
        self.model = model
        self.hidden = torch.zeros(model.config.hidden_size, dtype=torch.float64)
        self.sums: dict[tuple[int, str], torch.Tensor] = {}
        self.valid: torch.Tensor | None = None  # (b, l) 1 at the current batch's real tokens

    def add(self, key, value: torch.Tensor):
        value = value.detach().double().cpu()
        self.sums[key] = self.sums[key] + value if key in self.sums else value

    def _at_tokens(self, values: torch.Tensor) -> torch.Tensor:
        """values (b, l, ...) with the padded positions zeroed (sums then count real tokens only)."""
        if self.valid is None:
            return values
        return values * self.valid.to(values.dtype).view(*self.valid.shape, *[1] * (values.dim() - 2))

    def __call__(self, layer_index: int, site: str, tensor: torch.Tensor):
        if site == "norm":
            self.hidden += self._at_tokens(tensor.detach().abs()).sum(dim=(0, 1)).double().cpu()
        elif site == "mlp_neurons":
            self.add((layer_index, site), self._at_tokens(tensor.abs()).sum(dim=(0, 1)))
        elif site == "mamba_x":  # (H, P) sums of squares
            self.add((layer_index, site), self._at_tokens(tensor.float().pow(2)).sum(dim=(0, 1)))
        elif site == "attention_heads":  # (Hq,)
            self.add((layer_index, site), self._at_tokens(tensor.float().pow(2)).sum(dim=(0, 1, 3)))
        elif site == "moe_tokens":  # (b * l, d): only the real tokens are routed
            self._moe(layer_index, tensor if self.valid is None else tensor[self.valid.flatten()])

    def _moe(self, layer_index: int, tokens: torch.Tensor):
        mixer = self.model.layers[layer_index].mixer
        widths = Budget().resolve(self.model.config).layers[layer_index]
        weights, ids = mixer.route(tokens, widths)
        num_experts = mixer.experts.up_proj.shape[0]
        reap_sum = torch.zeros(num_experts, dtype=torch.float64)
        routed_count = torch.zeros(num_experts, dtype=torch.float64)
        neurons = torch.zeros(mixer.experts.up_proj.shape[:2], dtype=torch.float64)
        for expert in range(num_experts):
            token_index, slot = torch.nonzero(ids == expert, as_tuple=True)
            if token_index.numel() == 0:
                continue
            routed_tokens = tokens[token_index]
            activation = torch.relu(routed_tokens @ mixer.experts.up_proj[expert].T).square()
            output = activation @ mixer.experts.down_proj[expert].T
            gate = weights[token_index, slot]
            reap_sum[expert] = (gate * output.float().norm(dim=-1)).sum().double()
            routed_count[expert] = token_index.numel()
            neurons[expert] = activation.abs().sum(dim=0).double()
        self.add((layer_index, "reap_sum"), reap_sum)
        self.add((layer_index, "reap_count"), routed_count)
        self.add((layer_index, "expert_neurons"), neurons)
        if mixer.shared_experts is not None:
            shared = torch.relu(tokens @ mixer.shared_experts.up_proj.weight.T).square()
            self.add((layer_index, "shared_neurons"), shared.abs().sum(dim=0))


@torch.no_grad()
def estimate_importance(model: ElasticModel, batches: Iterable[torch.Tensor], *,
                        masks: Iterable[torch.Tensor] | None = None, rank_depth: bool = True,
                        mamba_head_channels: int | str = "smallest") -> Importance:
    """Scores every elastic axis of ``model`` (at full width) on ``batches`` of input ids (b, l).

    ``masks``: one (b, l) bool tensor per batch, True at the real tokens: padded positions then
    count in no score (their activations are whatever the model makes of padding, and on short
    samples they can outnumber the real tokens). None: every position counts.

    ``mamba_head_channels``: how many top-ranked head channels score the Mamba heads (the D_top
    of the paper's eq. 4): ``"smallest"`` (default) the smallest head_dim the router can choose
    (:func:`star_elastic.router.width_choices` at the config's granularity), an int, or ``"all"``.
    ``rank_depth=False`` skips the O(layers²) forwards of the layer ranking.
    """
    config = model.config
    if mamba_head_channels == "smallest":
        from .router import width_choices

        mamba_head_channels = width_choices(config.mamba_head_dim, config.width_granularity)[-1]
    elif mamba_head_channels == "all":
        mamba_head_channels = config.mamba_head_dim
    elif not isinstance(mamba_head_channels, int) or isinstance(mamba_head_channels, bool) \
            or not 1 <= mamba_head_channels <= config.mamba_head_dim:
        raise ValueError(f"mamba_head_channels={mamba_head_channels!r} must be 'smallest', 'all' or "
                         f"an int in [1, {config.mamba_head_dim}]")
    batches = list(batches)
    if not batches:
        raise ValueError("estimate_importance needs at least one calibration batch")
    masks = _check_masks(batches, masks)
    was_training = model.training
    model.eval()
    accumulator = _Accumulator(model)
    for input_ids, valid in zip(batches, masks):
        accumulator.valid = None if valid is None else valid.to(input_ids.device)
        model(input_ids, observer=accumulator)
    sums = accumulator.sums
    importance = Importance(hidden=accumulator.hidden.float())
    for index, block in enumerate(model.layers):
        mixer = block.mixer
        if isinstance(mixer, MLPMixer):
            importance.mlp_neurons[index] = sums[(index, "mlp_neurons")].float()
        elif isinstance(mixer, MambaMixer):
            squares = sums[(index, "mamba_x")]
            importance.mamba_channels[index] = squares.sum(dim=0).sqrt().float()
            top = _descending(importance.mamba_channels[index])[:mamba_head_channels]
            importance.mamba_heads[index] = squares[:, top].sum(dim=1).sqrt().float()
        elif isinstance(mixer, AttentionMixer):
            importance.attention_heads[index] = sums[(index, "attention_heads")].sqrt().float()
        elif isinstance(mixer, MoEMixer):
            count = sums[(index, "reap_count")]
            importance.moe_experts[index] = (sums[(index, "reap_sum")] / count.clamp(min=1)).float()
            importance.moe_expert_neurons[index] = sums[(index, "expert_neurons")].float()
            if mixer.shared_experts is not None:
                importance.moe_shared_neurons[index] = sums[(index, "shared_neurons")].float()
    if rank_depth:
        importance.layer_order = rank_layers(model, batches, masks=None if masks[0] is None else masks)
    model.train(was_training)
    return importance


def _check_masks(batches: list[torch.Tensor], masks) -> list[torch.Tensor | None]:
    """``masks`` as one bool (b, l) tensor per batch (None entries: no mask), checked."""
    if masks is None:
        return [None] * len(batches)
    masks = list(masks)
    if len(masks) != len(batches):
        raise ValueError(f"masks: {len(masks)} masks for {len(batches)} batches (one per batch)")
    for i, (ids, mask) in enumerate(zip(batches, masks)):
        if not isinstance(mask, torch.Tensor) or mask.shape != ids.shape[:2]:
            shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"masks[{i}] must be a tensor of the batch's shape {tuple(ids.shape[:2])}, "
                             f"not {shape}")
    return [mask.bool() for mask in masks]


@torch.no_grad()
def rank_layers(model: ElasticModel, batches: list[torch.Tensor], *,
                masks: list[torch.Tensor] | None = None) -> list[int]:
    """Layer indices, most important first, by iterative normalised-MSE removal on the logits.

    ``batches``: input ids (b, l) each; ``masks``: one (b, l) bool tensor per batch, True at the
    real tokens (None: every position counts). The error and the logits' energy are summed over
    the real tokens only: the logits at padding would otherwise rank the layers too."""
    masks = _check_masks(list(batches), masks)

    def squares(logits: torch.Tensor, valid: torch.Tensor | None) -> float:
        per_token = logits.double().pow(2).sum(-1)
        return float(per_token.sum() if valid is None else per_token[valid.to(per_token.device)].sum())

    full = [model(input_ids) for input_ids in batches]
    energy = sum(squares(logits, valid) for logits, valid in zip(full, masks))
    remaining, removed = list(range(model.config.num_layers)), []
    while len(remaining) > 1:
        def removal_cost(candidate: int) -> float:
            budget = Budget(skip_layers=frozenset(removed + [candidate]))
            error = sum(squares(model(ids, budget) - ref, valid)
                        for ids, ref, valid in zip(batches, full, masks))
            return error / energy

        cheapest = min(remaining, key=removal_cost)
        remaining.remove(cheapest)
        removed.append(cheapest)
    return remaining + removed[::-1]


def _descending(scores: torch.Tensor) -> torch.Tensor:
    return torch.argsort(scores, descending=True, stable=True)


def _within_groups(scores: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Order of (H,) scores that sorts each of ``num_groups`` contiguous groups independently."""
    grouped = scores.view(num_groups, -1)
    per_group = grouped.shape[1]
    local = torch.argsort(grouped, dim=1, descending=True, stable=True)
    return (local + torch.arange(num_groups)[:, None] * per_group).reshape(-1)


def _take_(tensor: torch.Tensor, dim: int, order: torch.Tensor):
    tensor.copy_(tensor.index_select(dim, order.to(tensor.device)))


@torch.no_grad()
def permute_(model: ElasticModel, importance: Importance) -> dict[str, object]:
    """Reorder ``model``'s weights in place so every axis is sorted by decreasing importance.

    The full model computes the same function afterwards. Returns the orders applied (new position
    -> old index): ``{"hidden": (D,), (layer, axis): order, ...}``.
    """
    hidden = _descending(importance.hidden)
    applied: dict[object, torch.Tensor] = {"hidden": hidden}
    _take_(model.embeddings.weight, 1, hidden)
    _take_(model.lm_head.weight, 1, hidden)
    _take_(model.norm_f.weight, 0, hidden)
    for index, block in enumerate(model.layers):
        _take_(block.norm.weight, 0, hidden)
        mixer = block.mixer
        if isinstance(mixer, MLPMixer):
            applied[(index, "mlp")] = _permute_mlp(mixer, hidden, _descending(importance.mlp_neurons[index]))
        elif isinstance(mixer, AttentionMixer):
            applied[(index, "attention_heads")] = _permute_attention(mixer, hidden, importance.attention_heads[index])
        elif isinstance(mixer, MambaMixer):
            applied[(index, "mamba")] = _permute_mamba(
                mixer, hidden, importance.mamba_heads[index], importance.mamba_channels[index])
        elif isinstance(mixer, MoEMixer):
            applied[(index, "moe")] = _permute_moe(mixer, hidden, importance, index)
    return applied


def _permute_mlp(mixer: MLPMixer, hidden: torch.Tensor, neurons: torch.Tensor) -> torch.Tensor:
    _take_(mixer.up_proj.weight, 1, hidden)
    _take_(mixer.down_proj.weight, 0, hidden)
    _take_(mixer.up_proj.weight, 0, neurons)
    _take_(mixer.down_proj.weight, 1, neurons)
    return neurons


def _permute_attention(mixer: AttentionMixer, hidden: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    for projection in (mixer.q_proj, mixer.k_proj, mixer.v_proj):
        _take_(projection.weight, 1, hidden)
    _take_(mixer.o_proj.weight, 0, hidden)
    heads = _within_groups(scores, mixer.num_kv_heads)
    channels = (heads[:, None] * mixer.head_dim + torch.arange(mixer.head_dim)).reshape(-1)
    _take_(mixer.q_proj.weight, 0, channels)
    _take_(mixer.o_proj.weight, 1, channels)
    return heads


def _permute_mamba(mixer: MambaMixer, hidden, head_scores, channel_scores) -> dict[str, torch.Tensor]:
    H, P, G, N = mixer.num_heads, mixer.head_dim, mixer.num_groups, mixer.state_size
    inner = H * P
    heads = _within_groups(head_scores, G)  # heads never leave their group: B/C are per group
    head_channels = _descending(channel_scores)  # one channel order shared by every head
    channels = (heads[:, None] * P + head_channels[None, :]).reshape(-1)
    bc = torch.arange(2 * inner, 2 * inner + 2 * G * N)
    rows = torch.cat([channels, inner + channels, bc, 2 * inner + 2 * G * N + heads])
    _take_(mixer.in_proj.weight, 1, hidden)
    _take_(mixer.in_proj.weight, 0, rows)
    conv_channels = torch.cat([channels, bc - inner])
    _take_(mixer.conv1d.weight, 0, conv_channels)
    if mixer.conv1d.bias is not None:
        _take_(mixer.conv1d.bias, 0, conv_channels)
    for per_head in (mixer.dt_bias, mixer.A_log, mixer.D):
        _take_(per_head, 0, heads)
    _take_(mixer.norm.weight, 0, channels)
    _take_(mixer.out_proj.weight, 0, hidden)
    _take_(mixer.out_proj.weight, 1, channels)
    return {"heads": heads, "head_channels": head_channels}


def _permute_moe(mixer: MoEMixer, hidden, importance: Importance, index: int) -> dict[str, torch.Tensor]:
    experts = _descending(importance.moe_experts[index])
    _take_(mixer.gate.weight, 1, hidden)
    _take_(mixer.gate.weight, 0, experts)
    if mixer.gate.e_score_correction_bias is not None:
        _take_(mixer.gate.e_score_correction_bias, 0, experts)
    up, down = mixer.experts.up_proj, mixer.experts.down_proj
    _take_(up, 2, hidden)
    _take_(down, 1, hidden)
    _take_(up, 0, experts)
    _take_(down, 0, experts)
    neuron_scores = importance.moe_expert_neurons[index][experts]  # rows now follow the new expert order
    neurons = torch.argsort(neuron_scores, dim=1, descending=True, stable=True)  # (E, F), one order per expert
    up.copy_(torch.gather(up, 1, neurons[:, :, None].expand_as(up).to(up.device)))
    down.copy_(torch.gather(down, 2, neurons[:, None, :].expand_as(down).to(down.device)))
    applied = {"experts": experts, "expert_neurons": neurons}
    if mixer.shared_experts is not None:
        applied["shared_neurons"] = _permute_mlp(
            mixer.shared_experts, hidden, _descending(importance.moe_shared_neurons[index]))
    return applied
