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
