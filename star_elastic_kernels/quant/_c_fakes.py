"""Fake (meta) implementations of the quant family's private ``_C`` ops.

Every quant ``_C`` op fills preallocated outputs and returns nothing, so its fake implementation
only has to exist: with it the launchers in ``quant/fp8.py``, ``quant/nvfp4.py`` and
``quant/linear.py`` run under ``FakeTensorMode`` (and ``torch.compile`` traces them) on CUDA
tensors without a GPU, which is how the tests prove that they never read device data on the host.
"""

from __future__ import annotations

import torch

from star_elastic_kernels import _extension

QUANT_C_OPS = (
    "_fp8_compute_scales",
    "_fp8_quantize",
    "_fp8_quantize_per_row",
    "_fp8_dequantize",
    "_fp8_gemm_sm90",
    "_nvfp4_prepack",
    "_nvfp4_prepacked_operands",
    "_nvfp4_marlin_linear",
)


def _fills_outputs(*args, **kwargs) -> None:
    return None


def register() -> list[str]:
    """Register a fake for every quant op the loaded ``_C`` defines; returns their names."""
    if _extension.unavailable_reason() is not None:
        return []
    registered = []
    for name in QUANT_C_OPS:
        if _extension.has_op(name):
            torch.library.register_fake(f"star_elastic::{name}", _fills_outputs)
            registered.append(name)
    return registered


REGISTERED = register()
