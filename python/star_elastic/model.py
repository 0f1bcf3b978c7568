"""The elastic hybrid model: embedding, pre-norm residual blocks, final norm, LM head.

Convention (DESIGN §3): activations are compact — a tensor of the active width — while every weight
keeps the parent layout and is read through slicing views (``w[:r, :d]``), never copied into a new
parameter. RMSNorms normalise over the active width, so running the parent at a budget computes
exactly what the physically sliced model computes. Parameter names match transformers'
``NemotronHForCausalLM`` (minus its ``model.`` prefix) so checkpoints map one to one.

Every forward takes the layer's resolved ``LayerWidths`` and two optional hooks threaded through
unchanged: ``cache`` (decoding state, issue 8) and ``observer``, a callable
``observer(layer_index, site, tensor)`` the importance estimator uses to see activations. Sites:
``"norm"`` block pre-norm output (b, l, d); ``"mamba_x"`` x branch of in_proj (b, l, G*k, p);
``"attention_heads"`` per-head attention output, the o_proj input (b, l, Hkv*q, head_dim);
``"mlp_neurons"`` ReLU² activations, the down_proj input (b, l, f); ``"moe_tokens"`` the MoE input (T, d).

The Mamba and MoE mixers call the library's registered ops (``star_elastic_kernels.ssd_scan``,
``moe_ffn``, ...), so the backend rules apply: CUDA tensors run the CUDA/Triton kernels, CPU tensors
the PyTorch reference; ``star_elastic_kernels.use_backend`` or ``$STAR_ELASTIC_BACKEND`` choose.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

import star_elastic_kernels as sek
from star_elastic_kernels.reference.moe import relu2
from star_elastic_kernels.reference.ssm import active_head_index

from .budget import Budget, LayerWidths, ResolvedBudget
from .cache import InferenceCache
from .config import ElasticConfig, LayerSpec

__all__ = ["ElasticModel", "ElasticRMSNorm", "MambaMixer", "AttentionMixer", "MLPMixer", "MoEMixer", "Block",
           "GatedGroupRMSNorm"]


def _observe(observer, layer_index, site, tensor):
    if observer is not None:
        observer(layer_index, site, tensor)


def _linear(x: torch.Tensor, weight_view: torch.Tensor) -> torch.Tensor:
    """``x (..., d) @ W^T`` for a weight view ``(*out, d)`` whose output dims flatten to the compact width.

    The reshape of a strided view may gather here; registered kernels read the view in place.
    """
    return F.linear(x, weight_view.reshape(-1, weight_view.shape[-1]))


def _linear_in(x: torch.Tensor, weight_view: torch.Tensor) -> torch.Tensor:
    """``x (..., c) @ W^T`` for a weight view ``(d, *in)`` whose input dims flatten to the compact width c."""
    return F.linear(x, weight_view.reshape(weight_view.shape[0], -1))


@dataclasses.dataclass(frozen=True)
class ChannelMasks:
    """Soft channel multipliers for the router's soft mode (see ``ElasticModel.forward``).

    ``hidden`` (D,) or None; ``layers[i]`` None or ``{axis: (parent width,)}`` with the Budget axis
    names of layer i's kind (``mlp_width``; ``attention_heads_per_group``; ``mamba_heads_per_group``
    and ``mamba_head_dim``; ``moe_experts``, ``moe_expert_width`` and ``moe_shared_width``), plus
    optionally ``"layer"``, a scalar weighing the layer's output (soft depth)."""

    hidden: torch.Tensor | None
    layers: tuple[dict[str, torch.Tensor] | None, ...]


class ElasticRMSNorm(nn.Module):
    """RMSNorm with a parent-size weight (D,) applied to compact activations (..., d), d <= D.

    The mean of squares runs over the d active channels only, so it equals the sliced model's norm.
    Computed in fp32, returned in the input dtype (as Nemotron-H).
    """

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (>= d,): soft channel multipliers (router training); the mean of squares is then
        taken over ``sum(mask)`` channels, which for a 0/1 prefix mask is the active width."""
        d = x.shape[-1]
        xf = x.float()
        if mask is None:
            xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
            return (self.weight[:d].float() * xf).to(x.dtype)
        m = mask[:d].float()
        xf = xf * m
        xf = xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) / m.sum().clamp_min(1e-6) + self.eps)
        return (self.weight[:d].float() * xf * m).to(x.dtype)


class GatedGroupRMSNorm(nn.Module):
    """Mamba-2's gated RMSNorm over G groups: ``rmsnorm_groups(y * silu(z)) * weight``, weight (H*P,).

    At a budget the G groups stay and each shrinks to its k active heads of p channels.
    """

    def __init__(self, inner: int, num_heads: int, num_groups: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(inner))
        self.num_heads, self.group_size, self.eps = num_heads, inner // num_groups, eps

    def forward(self, y, z, heads_per_group: int, head_dim: int):
        """y, z (..., G*k*p) -> (..., G*k*p)."""
        return sek.gated_rmsnorm(y, z, self.weight, eps=self.eps, group_size=self.group_size,
                                 heads_per_group=heads_per_group, head_dim=head_dim,
                                 num_heads=self.num_heads)


class MambaMixer(nn.Module):
    """Mamba-2 mixer (Nemotron-H layout), group-aware elastic.

    Parent parameters: ``in_proj.weight`` (2*I + 2*G*N + H, D) with rows [z: I | x: I | B: G*N |
    C: G*N | dt: H] (I = H*P, head h at rows h*P..h*P+P-1, group-major heads); ``conv1d.weight``
    (I + 2*G*N, 1, w) over [x | B | C]; ``dt_bias``, ``A_log``, ``D`` (H,); gated ``norm.weight`` (I,)
    in G groups; ``out_proj.weight`` (D, I). A budget keeps the first k heads of every group and the
    first p channels of every head; B, C and N stay whole.
    """

    def __init__(self, config: ElasticConfig, spec: LayerSpec):
        super().__init__()
        self.num_heads, self.head_dim = spec.mamba_num_heads, spec.mamba_head_dim
        self.num_groups, self.state_size = config.mamba_num_groups, config.mamba_state_size
        self.chunk_size, self.dt_limit = config.mamba_chunk_size, config.mamba_dt_limit
        inner = self.num_heads * self.head_dim
        conv_dim = inner + 2 * self.num_groups * self.state_size
        self.in_proj = nn.Linear(config.hidden_size, inner + conv_dim + self.num_heads, bias=False)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, config.mamba_conv_kernel, groups=conv_dim,
                                bias=config.mamba_conv_bias, padding=config.mamba_conv_kernel - 1)
        self.dt_bias = nn.Parameter(torch.ones(self.num_heads))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, self.num_heads + 1, dtype=torch.float32)))
        self.D = nn.Parameter(torch.ones(self.num_heads))
        self.norm = GatedGroupRMSNorm(inner, self.num_heads, self.num_groups, config.norm_eps)
        self.out_proj = nn.Linear(inner, config.hidden_size, bias=False)

    def forward(self, x, widths: LayerWidths, layer_index: int, cache=None, observer=None, masks=None):
        """x (b, l, d) -> (b, l, d). ``masks``: soft channel multipliers of this layer (router training)."""
        b, l, d = x.shape
        H, P, G, N = self.num_heads, self.head_dim, self.num_groups, self.state_size
        k, p = widths.mamba_heads_per_group, widths.mamba_head_dim
        inner, heads_per_group = H * P, H // G
        rows = self.in_proj.weight
        z = _linear(x, rows[:inner].view(G, heads_per_group, P, -1)[:, :k, :p, :d])  # (b, l, G*k*p)
        xs = _linear(x, rows[inner : 2 * inner].view(G, heads_per_group, P, -1)[:, :k, :p, :d])
        bc = _linear(x, rows[2 * inner : 2 * inner + 2 * G * N, :d])  # (b, l, 2*G*N): B and C whole
        dt = _linear(x, rows[2 * inner + 2 * G * N :].view(G, heads_per_group, -1)[:, :k, :d])  # (b, l, G*k)
        _observe(observer, layer_index, "mamba_x", xs.view(b, l, G * k, p))

        if cache is not None:
            y = self._conv_and_scan_cached(torch.cat([xs, bc], dim=-1), dt, k, p, cache.layers[layer_index],
                                           cache.step_mask)
        else:
            xbc = sek.causal_conv1d(torch.cat([xs, bc], dim=-1), self.conv1d.weight[:, 0], self.conv1d.bias,
                                    activation="silu", num_heads=H, num_groups=G, heads_per_group=k,
                                    head_dim=p)
            xs, B, C = xbc.split([G * k * p, G * N, G * N], dim=-1)
            y = sek.ssd_scan(
                xs.view(b, l, G * k, p), dt, -torch.exp(self.A_log.float()),
                B.view(b, l, G, N), C.view(b, l, G, N),
                chunk_size=self.chunk_size, D=self.D, dt_bias=self.dt_bias, dt_softplus=True,
                dt_limit=self.dt_limit, heads_per_group=k, head_dim=p,
            )
        if masks is None:
            y = self.norm(y.reshape(b, l, -1), z, k, p)
        else:
            y = self._masked_gated_norm(y, z, masks["mamba_heads_per_group"][:k], masks["mamba_head_dim"][:p])
        return _linear_in(y.to(x.dtype), self.out_proj.weight.view(-1, G, heads_per_group, P)[:d, :, :k, :p])

    def _masked_gated_norm(self, y, z, head_mask, channel_mask):
        """The gated group RMSNorm under soft masks (router training): y (b, l, G*k, p), z (b, l, G*k*p);
        each group's mean of squares is taken over its mask's total weight (its active size for 0/1 masks)."""
        b, l = y.shape[:2]
        G, k, p = self.num_groups, head_mask.shape[0], channel_mask.shape[0]
        m = (head_mask[:, None] * channel_mask[None, :]).float()  # (k, p), the same in every group
        gated = y.float().view(b, l, G, k, p) * m * F.silu(z.float().view(b, l, G, k, p))
        mean_square = gated.pow(2).sum((-1, -2), keepdim=True) / m.sum().clamp_min(1e-6)
        weight = self.norm.weight.view(G, -1, self.head_dim)[:, :k, :p].float()
        return (gated * torch.rsqrt(mean_square + self.norm.eps) * weight * m).reshape(b, l, -1)

    def _conv_and_scan_cached(self, xbc, dt, k: int, p: int, state, step_mask):
        """Conv + SSD scan continuing from (and updating) ``state``, a parent-layout ``MambaLayerCache``.

        xbc (b, l, G*k*p + 2*G*N) conv inputs, dt (b, l, G*k) raw steps -> y (b, l, G*k, p).
        ``step_mask`` (b, l) bool or None: one-token steps skip the False rows (their states stay
        as they are); multi-token steps treat False as left padding on a fresh cache.
        """
        b, l, _ = xbc.shape
        H, P, G, N = self.num_heads, self.head_dim, self.num_groups, self.state_size
        slice_args = dict(num_heads=H, num_groups=G, heads_per_group=k, head_dim=p)
        scan_args = dict(D=self.D, dt_bias=self.dt_bias, dt_softplus=True, dt_limit=self.dt_limit,
                         heads_per_group=k, head_dim=p)
        A = -torch.exp(self.A_log.float())
        if l == 1:
            # The decode ops update the active slice of the chosen state slots in place.
            rows = None if step_mask is None else step_mask[:, 0].nonzero().squeeze(1)
            if rows is not None and rows.numel() == 0:
                return xbc.new_zeros(b, 1, G * k, p)
            x_now, dt_now = (xbc[:, 0], dt[:, 0]) if rows is None else (xbc[rows, 0], dt[rows, 0])
            # rows come from nonzero(): in range and distinct, so the ops need not check them
            conv_out = sek.causal_conv1d_update(
                x_now, state.conv, self.conv1d.weight[:, 0], self.conv1d.bias, activation="silu",
                state_indices=rows, check_state_indices=False, **slice_args)
            xs, B, C = conv_out.split([G * k * p, G * N, G * N], dim=-1)
            y_rows = sek.ssd_state_update(
                state.ssm, xs.reshape(-1, G * k, p), dt_now, A, B.reshape(-1, G, N), C.reshape(-1, G, N),
                state_indices=rows, check_state_indices=False, **scan_args)
            if rows is None:
                return y_rows[:, None]
            y = y_rows.new_zeros(b, G * k, p)  # frozen rows: an output nobody reads
            y[rows] = y_rows
            return y[:, None]
        # Several tokens: gather the active slice of the states, run the prefill ops from it, write back.
        heads = active_head_index(H, G, k, device=xbc.device)
        x_channels = (heads[:, None] * P + torch.arange(p, device=xbc.device)[None, :]).reshape(-1)
        channels = torch.cat([x_channels, torch.arange(H * P, H * P + 2 * G * N, device=xbc.device)])
        if step_mask is not None:  # left padding: zero inputs keep a fresh row's conv and SSM state at zero
            xbc = torch.where(step_mask[..., None], xbc, torch.zeros((), dtype=xbc.dtype, device=xbc.device))
        xbc, conv_final = sek.causal_conv1d(xbc, self.conv1d.weight[:, 0], self.conv1d.bias, activation="silu",
                                            initial_states=state.conv[:, channels].to(xbc.dtype),
                                            return_final_states=True, **slice_args)
        xs, B, C = xbc.split([G * k * p, G * N, G * N], dim=-1)
        if step_mask is not None:  # the padded positions' conv outputs are silu(bias), not zero
            xs = torch.where(step_mask[..., None], xs, torch.zeros((), dtype=xs.dtype, device=xs.device))
        y, ssm_final = sek.ssd_scan(
            xs.reshape(b, l, G * k, p), dt, A, B.reshape(b, l, G, N), C.reshape(b, l, G, N),
            chunk_size=self.chunk_size, initial_states=state.ssm[:, heads, :p].float(),
            return_final_states=True, **scan_args,
        )
        state.conv[:, channels] = conv_final.to(state.conv.dtype)
        state.ssm[:, heads, :p] = ssm_final.to(state.ssm.dtype)
        return y


class AttentionMixer(nn.Module):
    """Causal GQA self-attention without positional embedding (Nemotron-H attention is NoPE).

    ``q_proj.weight`` (Hq*hd, D) with query heads group-major over the KV heads (head h reads KV head
    h // (Hq/Hkv)); ``k_proj``/``v_proj`` (Hkv*hd, D); ``o_proj`` (D, Hq*hd). A budget keeps the first
    q query heads of every KV group; KV heads and head_dim are not elastic.
    """

    def __init__(self, config: ElasticConfig, spec: LayerSpec):
        super().__init__()
        self.num_heads, self.num_kv_heads = spec.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.attention_head_dim
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, x, widths: LayerWidths, layer_index: int, cache=None, observer=None, masks=None):
        """x (b, l, d) -> (b, l, d). ``masks``: soft channel multipliers of this layer (router training)."""
        b, l, d = x.shape
        kv, hd, q = self.num_kv_heads, self.head_dim, widths.attention_heads_per_group
        per_group = self.num_heads // kv
        queries = _linear(x, self.q_proj.weight.view(kv, per_group, hd, -1)[:, :q, :, :d])
        keys = _linear(x, self.k_proj.weight[:, :d])
        values = _linear(x, self.v_proj.weight[:, :d])
        queries, keys, values = (t.view(b, l, -1, hd).transpose(1, 2) for t in (queries, keys, values))
        if cache is not None:
            attended = self._attend_cached(queries, keys, values, cache.layers[layer_index], cache.step_mask)
        else:
            attended = F.scaled_dot_product_attention(queries, keys, values, is_causal=True, enable_gqa=True)
        attended = attended.transpose(1, 2)  # (b, l, kv*q, hd)
        if masks is not None:  # query heads are kv-major: head g*q + j carries mask j
            attended = attended * masks["attention_heads_per_group"][:q].repeat(kv)[:, None].to(attended.dtype)
        _observe(observer, layer_index, "attention_heads", attended)
        return _linear_in(attended.reshape(b, l, -1), self.o_proj.weight.view(-1, kv, per_group, hd)[:d, :, :q])

    @staticmethod
    def _attend_cached(queries, keys, values, state, step_mask):
        """Attention of l new positions over the cached ones plus themselves; appends keys/values to ``state``.

        queries (b, kv*q, l, hd), keys/values (b, kv, l, hd) of the new positions -> (b, kv*q, l, hd).
        ``step_mask`` (b, l) bool or None: False positions are never attended to (padding, frozen rows).
        """
        past, l = state.length, queries.shape[2]
        all_keys, all_values, valid = state.append(keys, values, step_mask)  # (b, kv, past+l, hd), (b, past+l)
        if l == 1 and state.all_valid:  # plain decode: the new token sees everything cached
            return F.scaled_dot_product_attention(queries, all_keys, all_values, enable_gqa=True)
        device = queries.device
        query_at = past + torch.arange(l, device=device)[:, None]  # absolute position of each query
        key_at = torch.arange(past + l, device=device)[None, :]
        visible = (key_at <= query_at)[None] & valid[:, None, :]  # (b, l, past+l): causal, real keys only
        visible = visible | (key_at == query_at)[None]  # a padded query sees itself, so its row stays finite
        return F.scaled_dot_product_attention(queries, all_keys, all_values, attn_mask=visible[:, None],
                                              enable_gqa=True)


class MLPMixer(nn.Module):
    """Ungated ReLU² MLP: ``down(relu(up(x))**2)``; ``up_proj`` (F, D), ``down_proj`` (D, F); budget keeps f neurons."""

    def __init__(self, hidden_size: int, width: int):
        super().__init__()
        self.up_proj = nn.Linear(hidden_size, width, bias=False)
        self.down_proj = nn.Linear(width, hidden_size, bias=False)

    def forward(self, x, widths: LayerWidths, layer_index: int, cache=None, observer=None, masks=None):
        """x (b, l, d) -> (b, l, d). ``masks``: soft channel multipliers of this layer (router training)."""
        d, f = x.shape[-1], widths.mlp_width
        neurons = relu2(F.linear(x, self.up_proj.weight[:f, :d]))
        if masks is not None:
            neurons = neurons * masks["mlp_width"][:f].to(neurons.dtype)
        _observe(observer, layer_index, "mlp_neurons", neurons)
        return F.linear(neurons, self.down_proj.weight[:d, :f])


class MoERouter(nn.Module):
    """Router weights: ``weight`` (E, D) fp32 and the aux-loss-free ``e_score_correction_bias`` (E,) buffer."""

    def __init__(self, config: ElasticConfig, spec: LayerSpec):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(spec.moe_num_experts, config.hidden_size, dtype=torch.float32))
        if config.moe_correction_bias:
            self.register_buffer("e_score_correction_bias", torch.zeros(spec.moe_num_experts, dtype=torch.float32))
        else:
            self.e_score_correction_bias = None


class MoEExperts(nn.Module):
    """Routed expert weights: ``up_proj`` (E, F, D), ``down_proj`` (E, D, F)."""

    def __init__(self, config: ElasticConfig, spec: LayerSpec):
        super().__init__()
        e, f, dim = spec.moe_num_experts, spec.moe_intermediate_size, config.hidden_size
        self.up_proj = nn.Parameter(torch.empty(e, f, dim).normal_(std=0.02))
        self.down_proj = nn.Parameter(torch.empty(e, dim, f).normal_(std=0.02))


class MoEMixer(nn.Module):
    """Mixture of ReLU² experts: sigmoid router + correction bias + top-k + renorm + routed scaling,
    plus an optional always-on shared expert. A budget keeps the first e experts (router rows, bias
    entries), the first r neurons of every expert and the first s shared-expert neurons.
    """

    def __init__(self, config: ElasticConfig, spec: LayerSpec):
        super().__init__()
        self.top_k, self.scaling, self.renormalize = config.moe_top_k, config.moe_routed_scaling, config.moe_renormalize
        self.gate = MoERouter(config, spec)
        self.experts = MoEExperts(config, spec)
        self.shared_experts = None
        if spec.moe_shared_intermediate_size > 0:
            self.shared_experts = MLPMixer(config.hidden_size, spec.moe_shared_intermediate_size)

    def route(self, tokens: torch.Tensor, widths: LayerWidths, expert_mask: torch.Tensor | None = None):
        """tokens (T, d) -> (weights (T, k) fp32, ids (T, k) int32) over the first e experts.

        ``expert_mask`` (>= e,): soft expert multipliers (router training); experts at 0 are never
        chosen (as if cut), the others' weights are scaled by their multiplier."""
        e, d = widths.moe_experts, tokens.shape[-1]
        logits = F.linear(tokens.float(), self.gate.weight[:e, :d].float())  # (T, e)
        if expert_mask is None:
            return sek.moe_route(logits, top_k=self.top_k, score="sigmoid",
                                 correction_bias=self.gate.e_score_correction_bias, num_experts=e,
                                 renormalize=self.renormalize, scaling=self.scaling)
        multipliers = expert_mask[:e].float()
        bias = self.gate.e_score_correction_bias
        weights, ids = sek.moe_route(logits, top_k=self.top_k, score="sigmoid",
                                     correction_bias=None if bias is None else bias[:e],
                                     expert_mask=multipliers.detach() > 0,
                                     renormalize=self.renormalize, scaling=self.scaling)
        return weights * multipliers[ids.long()], ids

    def forward(self, x, widths: LayerWidths, layer_index: int, cache=None, observer=None, masks=None):
        """x (b, l, d) -> (b, l, d). ``masks``: soft channel multipliers of this layer (router training)."""
        tokens = x.reshape(-1, x.shape[-1])
        _observe(observer, layer_index, "moe_tokens", tokens)
        weights, ids = self.route(tokens, widths, None if masks is None else masks["moe_experts"])
        shared = self.shared_experts
        down = self.experts.down_proj
        shared_down = None if shared is None else shared.down_proj.weight
        if masks is not None:  # a neuron's multiplier scales its column of the down projection
            down = down * masks["moe_expert_width"].to(down.dtype)
            if shared is not None:
                shared_down = shared_down * masks["moe_shared_width"].to(shared_down.dtype)
        out = sek.moe_ffn(
            tokens, self.experts.up_proj, down, weights, ids, activation="relu2",
            ffn_width=widths.moe_expert_width, hidden_width=x.shape[-1],
            shared_up=None if shared is None else shared.up_proj.weight,
            shared_down=shared_down,
            shared_width=None if shared is None else widths.moe_shared_width,
        )
        return out.view(x.shape)


def _make_mixer(config: ElasticConfig, spec: LayerSpec) -> nn.Module:
    if spec.kind == "M":
        return MambaMixer(config, spec)
    if spec.kind == "*":
        return AttentionMixer(config, spec)
    if spec.kind == "-":
        return MLPMixer(config.hidden_size, spec.mlp_intermediate_size)
    return MoEMixer(config, spec)


class Block(nn.Module):
    """Pre-norm residual block: ``h + mixer(norm(h))``; the identity when the budget skips it."""

    def __init__(self, config: ElasticConfig, index: int):
        super().__init__()
        spec = config.layer(index)
        self.index, self.kind = index, spec.kind
        self.norm = ElasticRMSNorm(config.hidden_size, config.norm_eps)
        self.mixer = _make_mixer(config, spec)

    def forward(self, hidden, widths: LayerWidths | None, cache=None, observer=None, gate=None,
                hidden_mask=None, masks=None):
        """hidden (b, l, d) -> (b, l, d). Router training only: ``gate``, a scalar multiplying the
        mixer's output (the hard mode's straight-through factor); ``hidden_mask`` (D,) and
        ``masks`` ({axis: (parent width,)}), soft channel multipliers (the soft mode)."""
        if widths is None:
            return hidden
        normed = self.norm(hidden, hidden_mask)
        _observe(observer, self.index, "norm", normed)
        if masks is None:
            out = self.mixer(normed, widths, self.index, cache=cache, observer=observer)
        else:
            mixer_masks = {axis: mask for axis, mask in masks.items() if axis != "layer"}
            out = self.mixer(normed, widths, self.index, cache=cache, observer=observer, masks=mixer_masks)
            if "layer" in masks:  # the soft depth weight: 0 is the skipped layer, 1 the kept one
                out = out * masks["layer"].to(out.dtype)
        if hidden_mask is not None:
            out = out * hidden_mask[: out.shape[-1]].to(out.dtype)
        return hidden + (out if gate is None else out * gate.to(out.dtype))


class ElasticModel(nn.Module):
    """Elastic Nemotron-H style causal LM holding every nested submodel.

    ``forward(input_ids (b, l) int64, budget=None, cache=None)`` -> logits (b, l, V) fp32. ``budget``
    is a ``Budget`` (validated here) or an already ``ResolvedBudget``; ``None`` runs the whole parent.
    """

    def __init__(self, config: ElasticConfig):
        super().__init__()
        self.config = config
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_layers))
        self.norm_f = ElasticRMSNorm(config.hidden_size, config.norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self._init_weights()

    def _init_weights(self):
        """Nemotron-H style initialisation: N(0, 0.02) matrices, out projections scaled by depth."""
        for name, parameter in self.named_parameters():
            if parameter.dim() >= 2 and "conv1d" not in name:
                nn.init.normal_(parameter, std=0.02)
                if name.endswith(("out_proj.weight", "o_proj.weight", "down_proj.weight", "down_proj")):
                    parameter.data /= math.sqrt(2 * self.config.num_layers)

    def resolve_budget(self, budget: Budget | ResolvedBudget | None) -> ResolvedBudget:
        """A validated ``ResolvedBudget`` for this model."""
        if budget is None:
            budget = Budget()
        if isinstance(budget, ResolvedBudget):
            if len(budget.layers) != self.config.num_layers:
                raise ValueError(f"resolved budget has {len(budget.layers)} layers, the model {self.config.num_layers}")
            if budget.to_budget().resolve(self.config) != budget:  # raises first if a width does not fit
                raise ValueError("resolved budget was made for another model (its layer kinds differ)")
            return budget
        if not isinstance(budget, Budget):
            raise TypeError(f"budget must be a Budget, ResolvedBudget or None, not {type(budget).__name__}")
        return budget.resolve(self.config)

    def forward(self, input_ids: torch.Tensor, budget: Budget | ResolvedBudget | None = None, cache=None,
                *, observer=None, gates=None, masks=None) -> torch.Tensor:
        """input_ids (b, l) -> logits (b, l, V) fp32 at ``budget``.

        ``gates``: optional :class:`star_elastic.router.Gates` (elastic training only): scalars
        multiplying the embedding output (``gates.hidden``) and each layer's mixer output
        (``gates.layers[i]``); their value is 1, they exist to carry the router's gradient.
        ``masks``: optional :class:`ChannelMasks` (the router's soft mode): channel multipliers over
        the parent widths applied to the activations of every elastic axis; with 0/1 prefix masks
        the result equals the forward at the corresponding budget.
        ``cache``: an :class:`star_elastic.cache.InferenceCache`; the call continues the cached
        sequences with ``input_ids`` (prefill or decode, any length) and advances the cache.
        """
        if cache is not None and not isinstance(cache, InferenceCache):
            raise TypeError(f"cache must be an InferenceCache or None, not {type(cache).__name__}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got {tuple(input_ids.shape)}")
        plan = self.resolve_budget(budget)
        if cache is not None:
            cache.begin_step(input_ids, self.config)
        d = plan.hidden_size
        hidden = F.embedding(input_ids, self.embeddings.weight[:, :d])
        if gates is not None and gates.hidden is not None:
            hidden = hidden * gates.hidden.to(hidden.dtype)
        hidden_mask = None if masks is None else masks.hidden
        if hidden_mask is not None:
            hidden = hidden * hidden_mask[:d].to(hidden.dtype)
        layer_gates = gates.layers if gates is not None else (None,) * len(self.layers)
        layer_masks = masks.layers if masks is not None else (None,) * len(self.layers)
        for block, widths, gate, layer_mask in zip(self.layers, plan.layers, layer_gates, layer_masks):
            hidden = block(hidden, widths, cache=cache, observer=observer, gate=gate,
                           hidden_mask=hidden_mask, masks=layer_mask)
        if cache is not None:
            cache.end_step(input_ids.shape[1])
        hidden = self.norm_f(hidden, hidden_mask)
        return F.linear(hidden, self.lm_head.weight[:, :d]).float()

    @classmethod
    def from_hf(cls, model_or_path) -> "ElasticModel":
        """From a transformers ``NemotronHForCausalLM`` (in memory) or a local checkpoint directory."""
        from .hf import from_hf

        return from_hf(model_or_path)

    def to_hf(self):
        """An equal transformers ``NemotronHForCausalLM`` (uniform widths only)."""
        from .hf import to_hf

        return to_hf(self)
