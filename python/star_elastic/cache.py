"""Decoding caches: what an :class:`~star_elastic.model.ElasticModel` keeps between forward calls.

``cache = InferenceCache.for_model(model, batch_size)`` then ``model(ids, budget, cache=cache)``
prefills (any length) or decodes (one token or more) and advances the cache, so the logits of
prefill(prompt) + decode(t1) + decode(t2) ... equal those of one uncached forward over the whole
sequence. Per layer the cache holds:

* Mamba-2 (``M``): the conv state ``(b, C, w-1)`` — the last ``w-1`` inputs of the parent's conv
  channels ``[x: H*P | B: G*N | C: G*N]`` — and the SSM state ``(b, H, P, N)`` fp32, both in the
  **parent layout**. A budget reads and writes only its active slice (the first k heads of every
  group, the first p channels of every head), like the ``*_update`` decode ops; everything else
  stays as it was (zero if never written).
* Attention (``*``): keys and values ``(b, Hkv, T, hd)`` as the active budget computed them (KV
  heads and head_dim are not elastic, so their shape does not depend on the budget), and which of
  the T cached positions are real tokens.
* MLP / MoE: nothing (stateless per token).

Because states live in the parent layout, one cache can be continued at another budget ("cache
transplant"): Mamba states are sliced (a smaller budget ignores the extra heads/channels) or
zero-padded (a larger budget reads never-written zeros), attention KV is reused as computed. That is
lossy (the other budget computed different states) — exact decoding needs one budget per cache.

Padding. ``cache.set_input_mask(mask (b, l) bool)`` declares which positions of the *next* forward
are real tokens (``True``). A masked token leaves its row's state untouched (one-token steps:
rows can be frozen while others decode) or is left padding (multi-token steps, only on a fresh
cache: padded prompts of different lengths prefill in one batch). Attention never attends to a
masked position; a masked query sees only itself, so its (ignored) output stays finite.
"""

from __future__ import annotations

import torch

from .config import ElasticConfig

__all__ = ["InferenceCache", "MambaLayerCache", "AttentionLayerCache"]


class MambaLayerCache:
    """Parent-layout Mamba-2 states of one layer for ``b`` sequences.

    ``conv`` (b, H*P + 2*G*N, w-1) in the activation dtype: the last w-1 conv inputs, oldest first.
    ``ssm`` (b, H, P, N) fp32: the recurrent state.
    """

    def __init__(self, conv: torch.Tensor, ssm: torch.Tensor):
        self.conv, self.ssm = conv, ssm

    def select_rows(self, rows: torch.Tensor) -> "MambaLayerCache":
        """The states of ``rows`` (r,) int64, copied."""
        return MambaLayerCache(self.conv[rows].clone(), self.ssm[rows].clone())


class AttentionLayerCache:
    """Keys and values of one attention layer, grown along the sequence (amortised doubling).

    ``keys``/``values`` (b, Hkv, length, hd) views of the filled part; ``valid`` (b, length) bool marks
    the real tokens among the cached positions (padding and frozen rows' steps are False).
    """

    def __init__(self, batch_size: int, num_kv_heads: int, head_dim: int, *, device, dtype):
        self._keys = torch.empty(batch_size, num_kv_heads, 0, head_dim, device=device, dtype=dtype)
        self._values = torch.empty_like(self._keys)
        self._valid = torch.empty(batch_size, 0, dtype=torch.bool, device=device)
        self.length = 0
        self.all_valid = True  # lets the common unpadded decode step skip building a mask

    @property
    def keys(self) -> torch.Tensor:
        return self._keys[:, :, : self.length]

    @property
    def values(self) -> torch.Tensor:
        return self._values[:, :, : self.length]

    @property
    def valid(self) -> torch.Tensor:
        return self._valid[:, : self.length]

    def append(self, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor | None):
        """Add ``keys``/``values`` (b, Hkv, l, hd) of l new positions (``valid`` (b, l) bool or None = all
        real); returns the whole (keys, values, valid) including them."""
        b, kv, l, hd = keys.shape
        if self.length + l > self._keys.shape[2]:
            capacity = max(2 * self._keys.shape[2], self.length + l, 16)
            grown_keys = keys.new_empty(b, kv, capacity, hd)
            grown_values = values.new_empty(b, kv, capacity, hd)
            grown_valid = torch.zeros(b, capacity, dtype=torch.bool, device=keys.device)
            grown_keys[:, :, : self.length] = self.keys
            grown_values[:, :, : self.length] = self.values
            grown_valid[:, : self.length] = self.valid
            self._keys, self._values, self._valid = grown_keys, grown_values, grown_valid
        end = self.length + l
        self._keys[:, :, self.length : end] = keys.to(self._keys.dtype)
        self._values[:, :, self.length : end] = values.to(self._values.dtype)
        if valid is None:
            self._valid[:, self.length : end] = True
        else:
            self._valid[:, self.length : end] = valid
            self.all_valid = self.all_valid and bool(valid.all())
        self.length = end
        return self.keys, self.values, self.valid

    def select_rows(self, rows: torch.Tensor) -> "AttentionLayerCache":
        """The cached positions of ``rows`` (r,) int64, copied."""
        out = AttentionLayerCache(0, 0, 0, device=self._keys.device, dtype=self._keys.dtype)
        out._keys, out._values = self.keys[rows].clone(), self.values[rows].clone()
        out._valid, out.length = self.valid[rows].clone(), self.length
        out.all_valid = bool(out._valid.all())
        return out


def _layout(config: ElasticConfig) -> tuple:
    """What a cache's tensors depend on: per layer its kind and state sizes (checked at every forward)."""
    layout = []
    for index in range(config.num_layers):
        spec = config.layer(index)
        if spec.kind == "M":
            layout.append(("M", spec.mamba_num_heads, spec.mamba_head_dim, config.mamba_num_groups,
                           config.mamba_state_size, config.mamba_conv_kernel))
        elif spec.kind == "*":
            layout.append(("*", config.num_key_value_heads, config.attention_head_dim))
        else:
            layout.append((spec.kind,))
    return tuple(layout)


class InferenceCache:
    """Decoding state of one model for ``batch_size`` sequences (see the module docstring).

    ``layers[i]``: a :class:`MambaLayerCache`, an :class:`AttentionLayerCache` or ``None`` (stateless
    layer). ``position``: input positions consumed so far (padding included); ``lengths`` (b,) int64:
    real tokens consumed per row. Caches are for inference: call the model under ``torch.no_grad()``
    (states are stored detached). If a forward raises, the cache is left in an undefined state.
    """

    def __init__(self, config: ElasticConfig, batch_size: int, *, device=None, dtype=torch.float32,
                 state_dtype=torch.float32):
        """``dtype``: activations (conv state, keys/values); ``state_dtype``: the SSM state (fp32 default)."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be a positive int")
        self.batch_size = batch_size
        self.layout = _layout(config)
        self.position = 0
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self._input_mask: torch.Tensor | None = None  # set_input_mask -> the next forward
        self.step_mask: torch.Tensor | None = None  # (b, l) bool during a forward, else None
        self.layers: list = []
        for entry in self.layout:
            if entry[0] == "M":
                _, heads, head_dim, groups, state, kernel = entry
                conv = torch.zeros(batch_size, heads * head_dim + 2 * groups * state, kernel - 1,
                                   device=device, dtype=dtype)
                ssm = torch.zeros(batch_size, heads, head_dim, state, device=device, dtype=state_dtype)
                self.layers.append(MambaLayerCache(conv, ssm))
            elif entry[0] == "*":
                self.layers.append(AttentionLayerCache(batch_size, entry[1], entry[2], device=device, dtype=dtype))
            else:
                self.layers.append(None)

    @classmethod
    def for_model(cls, model, batch_size: int) -> "InferenceCache":
        """An empty cache for ``model`` (its config, device and parameter dtype)."""
        weight = model.embeddings.weight if hasattr(model, "embeddings") else next(model.parameters())
        return cls(model.config, batch_size, device=weight.device, dtype=weight.dtype)

    @property
    def is_fresh(self) -> bool:
        """True before the first forward."""
        return self.position == 0

    def set_input_mask(self, mask: torch.Tensor | None) -> None:
        """Declare the real tokens (True) of the next forward's input, ``mask`` (b, l) bool.

        One-token steps: a False row is frozen (its states do not change). Multi-token steps: each
        row must be left padding (False... then True...), and only on a fresh cache (the recurrent
        state of a row must still be zero for padding to be exact).
        """
        if mask is not None:
            if mask.dim() != 2 or mask.shape[0] != self.batch_size or mask.dtype != torch.bool:
                raise ValueError(f"input mask must be (batch={self.batch_size}, l) bool, got "
                                 f"{tuple(mask.shape)} {mask.dtype}")
        self._input_mask = mask

    def begin_step(self, input_ids: torch.Tensor, config: ElasticConfig) -> None:
        """Called by the model's forward before its layers: validates and arms the step mask."""
        b, l = input_ids.shape
        if b != self.batch_size:
            raise ValueError(f"input has batch {b} but the cache was made for {self.batch_size} sequences")
        if _layout(config) != self.layout:
            raise ValueError("the cache was made for another model (its layer kinds or state sizes differ)")
        mask, self._input_mask = self._input_mask, None
        if mask is not None:
            if mask.shape != (b, l):
                raise ValueError(f"input mask has shape {tuple(mask.shape)} but the input is {(b, l)}")
            mask = mask.to(input_ids.device)
            if l > 1:
                if not self.is_fresh:
                    raise ValueError("padding in a multi-token step needs a fresh cache; decode padded "
                                     "rows one token at a time (a False row is then frozen)")
                if bool((mask[:, :-1] & ~mask[:, 1:]).any()):
                    raise ValueError("multi-token padding must be left padding (False before True in every row)")
            if bool(mask.all()):
                mask = None
        self.step_mask = mask
        self.lengths += l if mask is None else mask.sum(1).to(self.lengths.device)

    def end_step(self, length: int) -> None:
        """Called by the model's forward after its layers."""
        self.position += length
        self.step_mask = None

    def select_rows(self, rows) -> "InferenceCache":
        """A new cache holding the sequences ``rows`` (list or (r,) int tensor) of this one, copied."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.lengths.device)
        if rows.dim() != 1 or rows.numel() == 0:
            raise ValueError("rows must be a non-empty 1-D list of row indices")
        if bool((rows < 0).any() | (rows >= self.batch_size).any()):
            raise ValueError(f"rows must be in [0, {self.batch_size})")
        out = InferenceCache.__new__(InferenceCache)
        out.batch_size, out.layout, out.position = rows.numel(), self.layout, self.position
        out.lengths = self.lengths[rows].clone()
        out._input_mask, out.step_mask = None, None
        out.layers = [None if layer is None else layer.select_rows(rows) for layer in self.layers]
        return out
