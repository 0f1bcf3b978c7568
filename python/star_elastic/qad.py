"""Quantization-aware distillation (QAD) of an elastic model, keeping zero-shot slicing exact.

The student's weight matrices are fake-quantized (NVFP4 or FP8: quantize -> dequantize in one
kernel, straight-through gradient) through ``torch.nn.utils.parametrize``. Each weight is
fake-quantized *whole*, at the parent's shape, with a global scale frozen from the parent before
training; budgets then slice views of the fake-quantized parent. Since NVFP4 blocks run along the
input dimension and every elastic width is a multiple of 16 there, and the global scale is shared,
a budget's weights are exactly the quantized values its deployed slice will hold (FP8 per-tensor:
one shared scale). The teacher is the BF16/FP32 elastic model at the same budget.

Quantized: the projections of every block (Mamba in/out, attention q/k/v/o, MLP and expert and
shared-expert up/down). Kept in high precision, as deployed NVFP4/FP8 checkpoints do: embeddings,
LM head, norms, the conv1d, the MoE router and the SSM parameters.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

import star_elastic_kernels as sek

from .model import ElasticModel

FORMATS = ("nvfp4", "fp8")
QUANTIZED_SUFFIXES = ("in_proj.weight", "out_proj.weight", "q_proj.weight", "k_proj.weight",
                      "v_proj.weight", "o_proj.weight", "up_proj.weight", "down_proj.weight",
                      "experts.up_proj", "experts.down_proj")


class FakeQuantize(nn.Module):
    """Parametrization ``W -> fake_quantize(W)`` with a frozen global scale (a buffer)."""

    def __init__(self, fmt: str, weight: torch.Tensor):
        super().__init__()
        if fmt not in FORMATS:
            raise ValueError(f"QAD format must be one of {FORMATS}, got {fmt!r}")
        self.fmt = fmt
        amax = weight.detach().abs().amax().float()
        divisor = 6.0 * 448.0 if fmt == "nvfp4" else 448.0
        scale = torch.where(amax > 0, amax / divisor, torch.ones_like(amax))
        self.register_buffer("global_scale", scale)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.fmt == "nvfp4":
            return sek.fake_quantize_nvfp4(weight, self.global_scale)
        return sek.fake_quantize_fp8(weight, self.global_scale)


def quantized_weight_names(model: ElasticModel) -> list[str]:
    """Names of the parameters QAD fake-quantizes."""
    return [name for name, p in model.named_parameters()
            if name.endswith(QUANTIZED_SUFFIXES) and p.dim() >= 2]


def apply_fake_quantization(model: ElasticModel, fmt: str) -> ElasticModel:
    """Fake-quantize ``model``'s projection weights in place (see the module docstring)."""
    names = quantized_weight_names(model)
    if fmt == "nvfp4":
        for name in names:
            width = dict(model.named_parameters())[name].shape[-1]
            if width % 16:
                raise ValueError(f"NVFP4 needs in_features % 16 == 0; {name} has {width}")
    for name in names:
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        parametrize.register_parametrization(owner, attr, FakeQuantize(fmt, getattr(owner, attr)))
    return model


def remove_fake_quantization(model: ElasticModel) -> ElasticModel:
    """Drop the parametrizations, keeping the trained high-precision weights (to quantize for real)."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for attr in list(module.parametrizations):
                parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
    return model


def quantize_parent(model: ElasticModel, fmt: str) -> dict[str, object]:
    """The deployable quantized weights of a fake-quantized (QAD) model, one container per 2-D
    matrix (MoE experts as ``<name>.<expert>``), each with the frozen scale used in training.

    Returns ``{prefix: NVFP4Weight | FP8Weight}`` (a Linear's module name, or ``<experts>.up_proj.<e>``):
    dequantizing them gives exactly the weights the
    QAD student trained with, and any budget's slice of them is that budget's quantized weights.
    """
    quantized = {}
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for attr, stack in module.parametrizations.items():
            weight = stack.original.detach()
            scale = stack[0].global_scale
            matrices = weight.unsqueeze(0) if weight.dim() == 2 else weight
            for index, matrix in enumerate(matrices):
                # Checkpoint prefixes: a Linear's ``weight`` is stored as ``<prefix>.weight``.
                name = module_name if attr == "weight" else f"{module_name}.{attr}"
                name += "" if weight.dim() == 2 else f".{index}"
                # Each matrix gets its own copy of the (shared) scale: checkpoints store one per weight.
                if fmt == "nvfp4":
                    quantized[name] = sek.quantize_nvfp4(matrix, scale.clone())
                else:
                    quantized[name] = sek.quantize_fp8(matrix, scale.clone())
    if not quantized:
        raise ValueError("the model has no fake-quantized weights (call apply_fake_quantization first)")
    return quantized


def export_quantized(model: ElasticModel, budgets: dict, fmt: str, path) -> None:
    """Write a nested quantized elastic checkpoint: ``quantized.safetensors`` (the common
    ``weight`` / ``weight_scale`` / ``weight_scale_2`` names, one parent copy serving every budget),
    ``high_precision.safetensors`` (embeddings, norms, conv, router, SSM parameters), and the
    config and named budgets (``star_elastic_config.json``, ``budgets.json``)."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    from star_elastic_kernels.quant.checkpoint import save_quantized

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    quantized = quantize_parent(model, fmt)
    save_quantized(path / "quantized.safetensors", quantized)
    plain = {name: p.detach().contiguous() for name, p in model.named_parameters()
             if "parametrizations" not in name}
    plain.update({name: b.detach().contiguous() for name, b in model.named_buffers()
                  if "parametrizations" not in name})
    save_file(plain, str(path / "high_precision.safetensors"))
    (path / "star_elastic_config.json").write_text(json.dumps(
        {"format": "star_elastic_quantized", "quant_format": fmt, "config": model.config.to_dict()},
        indent=2))
    (path / "budgets.json").write_text(json.dumps({n: b.to_dict() for n, b in budgets.items()}, indent=2))
