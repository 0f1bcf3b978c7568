"""Save and load quantized weights with safetensors, under the common NVFP4 / FP8 tensor names.

For a linear layer named ``prefix`` (e.g. ``model.layers.0.mlp.up_proj``):

=============================  ======================================  ==========================
name                           NVFP4                                   FP8
=============================  ======================================  ==========================
``prefix.weight``              uint8 (N, K/2), low nibble first        float8_e4m3fn (N, K)
``prefix.weight_scale``        float8_e4m3fn (N, K/16), row-major      float32 () or (N, 1)
``prefix.weight_scale_2``      float32 (), the global decode scale     —
``prefix.input_scale``         float32 (), optional (calibrated)       float32 (), optional
=============================  ======================================  ==========================

These are the names ModelOpt's NVFP4 / FP8 exports use (decode convention: multiply to dequantize).

A nested (elastic) checkpoint stores each parent weight once, with the nested widths in the
safetensors metadata (``star_elastic.nested_widths``: ``{prefix: [[out, in], ...]}``). Because
slices of an NVFP4 or FP8 weight are exact (same codes, same block scales, the parent's global
scale), a child is read as views of the parent (:func:`load_quantized` with ``widths``) or
exported as a standalone checkpoint of contiguous copies (:func:`slice_quantized`).
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Union

import torch

from star_elastic_kernels.quant.fp8 import FP8Weight
from star_elastic_kernels.quant.nvfp4 import NVFP4Weight, check_nvfp4_weight

QuantizedWeight = Union[NVFP4Weight, FP8Weight]
_NESTED_KEY = "star_elastic.nested_widths"
_FORMAT_KEY = "star_elastic.quant_formats"


def quantized_state_dict(
    weights: Mapping[str, QuantizedWeight],
    input_scales: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Flatten ``{prefix: NVFP4Weight | FP8Weight}`` into checkpoint tensors (contiguous copies
    where a weight is a slice). ``input_scales``: optional ``{prefix: float32 scalar}``."""
    tensors: dict[str, torch.Tensor] = {}
    for prefix, w in weights.items():
        if isinstance(w, NVFP4Weight):
            check_nvfp4_weight(w, name=prefix)
            tensors[f"{prefix}.weight"] = w.data.contiguous()
            tensors[f"{prefix}.weight_scale"] = w.scale.contiguous()
            tensors[f"{prefix}.weight_scale_2"] = w.global_scale.reshape(()).contiguous()
        elif isinstance(w, FP8Weight):
            if w.data.dtype != torch.float8_e4m3fn or w.data.dim() != 2:
                raise ValueError(f"{prefix}: an FP8Weight must hold a 2-D float8_e4m3fn weight")
            tensors[f"{prefix}.weight"] = w.data.contiguous()
            scale = w.scale.reshape(()) if w.scale.dim() == 0 else w.scale.reshape(-1, 1)
            tensors[f"{prefix}.weight_scale"] = scale.contiguous()
        else:
            raise TypeError(f"{prefix}: expected an NVFP4Weight or FP8Weight, got "
                            f"{type(w).__name__}")
    for prefix, scale in (input_scales or {}).items():
        if prefix not in weights:
            raise ValueError(f"input_scales names {prefix!r}, which is not among the weights")
        if not isinstance(scale, torch.Tensor) or scale.dtype != torch.float32 \
                or scale.numel() != 1:
            raise ValueError(f"input_scales[{prefix!r}] must be a float32 tensor with one value")
        tensors[f"{prefix}.input_scale"] = scale.reshape(()).contiguous()
    return tensors


def save_quantized(
    path: str | os.PathLike,
    weights: Mapping[str, QuantizedWeight],
    *,
    input_scales: Mapping[str, torch.Tensor] | None = None,
    nested_widths: Mapping[str, list[tuple[int, int]]] | None = None,
) -> None:
    """Write quantized weights (and optional input scales) to a safetensors file.

    ``nested_widths``: ``{prefix: [(out_features, in_features), ...]}`` — the elastic widths the
    parent serves; each is checked to be a valid exact slice (in_features % 16 == 0 for NVFP4).
    """
    from safetensors.torch import save_file

    nested = {}
    for prefix, widths in (nested_widths or {}).items():
        if prefix not in weights:
            raise ValueError(f"nested_widths names {prefix!r}, which is not among the weights")
        nested[prefix] = []
        for n, k in widths:
            weights[prefix].slice(int(n), int(k))  # raises on an inexact width
            nested[prefix].append([int(n), int(k)])
    formats = {p: "NVFP4" if isinstance(w, NVFP4Weight) else "FP8" for p, w in weights.items()}
    tensors = {name: t.detach().cpu() for name, t in
               quantized_state_dict(weights, input_scales).items()}
    save_file(tensors, os.fspath(path),
              metadata={_FORMAT_KEY: json.dumps(formats), _NESTED_KEY: json.dumps(nested)})


def _from_tensors(prefix: str, tensors: Mapping[str, torch.Tensor]) -> QuantizedWeight:
    weight = tensors[f"{prefix}.weight"]
    scale = tensors.get(f"{prefix}.weight_scale")
    if scale is None:
        raise ValueError(f"{prefix}: checkpoint has {prefix}.weight but no {prefix}.weight_scale")
    if weight.dtype == torch.uint8:
        global_scale = tensors.get(f"{prefix}.weight_scale_2")
        if global_scale is None:
            raise ValueError(f"{prefix}: an NVFP4 weight needs {prefix}.weight_scale_2")
        w = NVFP4Weight(weight, scale, global_scale.to(torch.float32).reshape(()))
        check_nvfp4_weight(w, name=prefix)
        return w
    if weight.dtype == torch.float8_e4m3fn:
        scale = scale.to(torch.float32)
        scale = scale.reshape(()) if scale.numel() == 1 and weight.shape[0] != 1 \
            else scale.reshape(-1)
        if scale.dim() == 1 and scale.shape[0] != weight.shape[0]:
            raise ValueError(f"{prefix}.weight_scale has {scale.numel()} values for "
                             f"{weight.shape[0]} output channels")
        return FP8Weight(weight, scale)
    raise ValueError(f"{prefix}.weight has dtype {weight.dtype}; expected uint8 (NVFP4) or "
                     f"float8_e4m3fn (FP8)")


def load_quantized(
    path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    widths: Mapping[str, tuple[int, int]] | None = None,
) -> tuple[dict[str, QuantizedWeight], dict[str, torch.Tensor], dict]:
    """Read a checkpoint written by :func:`save_quantized` (or any checkpoint using the same names).

    Args:
        path: safetensors file.
        device: where to put the tensors.
        widths: optional ``{prefix: (out_features, in_features)}``; those weights come back as
            zero-copy slices of the parent (exactly the child's quantized weight).

    Returns:
        ``(weights, input_scales, nested_widths)``: ``{prefix: NVFP4Weight | FP8Weight}``,
        ``{prefix: float32 ()}`` and the nested widths recorded in the file.
    """
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="pt", device=str(device)) as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
        metadata = f.metadata() or {}
    prefixes = sorted(name[: -len(".weight")] for name in tensors if name.endswith(".weight"))
    weights = {prefix: _from_tensors(prefix, tensors) for prefix in prefixes}
    input_scales = {prefix: tensors[f"{prefix}.input_scale"].to(torch.float32).reshape(())
                    for prefix in prefixes if f"{prefix}.input_scale" in tensors}
    nested = {p: [tuple(w) for w in ws] for p, ws in
              json.loads(metadata.get(_NESTED_KEY, "{}")).items()}
    for prefix, (n, k) in (widths or {}).items():
        if prefix not in weights:
            raise ValueError(f"widths names {prefix!r}, which is not in the checkpoint")
        weights[prefix] = weights[prefix].slice(n, k)
    return weights, input_scales, nested


def slice_quantized(
    weights: Mapping[str, QuantizedWeight], widths: Mapping[str, tuple[int, int]]
) -> dict[str, QuantizedWeight]:
    """Contiguous copies of the children ``{prefix: w.slice(*widths[prefix])}`` (other prefixes
    unchanged), e.g. to save a standalone child checkpoint with :func:`save_quantized`."""
    out = dict(weights)
    for prefix, (n, k) in widths.items():
        child = weights[prefix].slice(n, k)
        out[prefix] = type(child)(*(t.contiguous() for t in child))
    return out
