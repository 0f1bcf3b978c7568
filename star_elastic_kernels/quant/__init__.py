"""Quantized formats and matmuls for nested (elastic) weights."""

from star_elastic_kernels.quant.checkpoint import (
    load_quantized,
    quantized_state_dict,
    save_quantized,
    slice_quantized,
)
from star_elastic_kernels.quant.fake_quant import fake_quantize_fp8, fake_quantize_nvfp4
from star_elastic_kernels.quant.fp8 import FP8Quantized, FP8Weight, dequantize_fp8, quantize_fp8
from star_elastic_kernels.quant.linear import fp8_linear, nvfp4_linear
from star_elastic_kernels.quant.nvfp4 import (
    NVFP4Prepacked,
    NVFP4Weight,
    dequantize_nvfp4,
    prepack_nvfp4,
    quantize_nvfp4,
)
from star_elastic_kernels.quant import _c_fakes  # noqa: F401  (fakes of the _C quant ops)

__all__ = [
    "FP8Quantized",
    "FP8Weight",
    "NVFP4Prepacked",
    "NVFP4Weight",
    "dequantize_fp8",
    "dequantize_nvfp4",
    "fake_quantize_fp8",
    "fake_quantize_nvfp4",
    "fp8_linear",
    "load_quantized",
    "nvfp4_linear",
    "prepack_nvfp4",
    "quantize_fp8",
    "quantize_nvfp4",
    "quantized_state_dict",
    "save_quantized",
    "slice_quantized",
]
