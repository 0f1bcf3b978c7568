"""Quantized formats and matmuls for nested (elastic) weights."""

from star_elastic_kernels.quant.fp8 import FP8Quantized, dequantize_fp8, quantize_fp8

__all__ = ["FP8Quantized", "dequantize_fp8", "quantize_fp8"]
