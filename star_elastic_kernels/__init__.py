"""Star Elastic Kernels: kernels for nested (elastic) hybrid Mamba-2 / attention / MoE LLMs.

Every op is a ``torch.library`` op in the ``star_elastic`` namespace with three backends — the
pure-PyTorch reference (``"torch"``), Triton (``"triton"``) and the compiled CUDA extension
(``"cuda"``) — chosen per call (``backend=``), per block (:func:`use_backend`), per process
(``$STAR_ELASTIC_BACKEND``) or automatically. ``python -m star_elastic_kernels.info`` shows what
is available here and why the rest is not.

Importing never fails for want of the CUDA extension or a GPU, prints nothing, and never
initialises CUDA. A missing extension is reported once when CUDA tensors reach an op that has a
cuda backend, and always by ``python -m star_elastic_kernels.info``.
"""

from star_elastic_kernels import _extension
from star_elastic_kernels._backends import BackendUnavailableError, use_backend
from star_elastic_kernels._extension import StarElasticWarning
from star_elastic_kernels.quant import (  # quant ops
    FP8Quantized,
    FP8Weight,
    NVFP4Prepacked,
    NVFP4Weight,
    dequantize_fp8,
    dequantize_nvfp4,
    fake_quantize_fp8,
    fake_quantize_nvfp4,
    fp8_linear,
    load_quantized,
    nvfp4_linear,
    prepack_nvfp4,
    quantize_fp8,
    quantize_nvfp4,
    quantized_state_dict,
    save_quantized,
    slice_quantized,
)

# ssm ops
from star_elastic_kernels.ssm import (  # noqa: E402
    causal_conv1d,
    causal_conv1d_update,
    check_device_errors,
    gated_rmsnorm,
    ssd_scan,
    ssd_state_update,
)

# moe ops
from star_elastic_kernels.moe import MoEAlignment, grouped_gemm, moe_align, moe_ffn, moe_route  # noqa: E402,I001

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "FP8Quantized",
    "FP8Weight",
    "NVFP4Prepacked",
    "NVFP4Weight",
    "dequantize_nvfp4",
    "fake_quantize_fp8",
    "fake_quantize_nvfp4",
    "fp8_linear",
    "load_quantized",
    "nvfp4_linear",
    "prepack_nvfp4",
    "quantize_nvfp4",
    "quantized_state_dict",
    "save_quantized",
    "slice_quantized",
    "StarElasticWarning",
    "dequantize_fp8",
    "quantize_fp8",
    "use_backend",
    # ssm
    "causal_conv1d",
    "causal_conv1d_update",
    "check_device_errors",
    "gated_rmsnorm",
    "ssd_scan",
    "ssd_state_update",
    # moe
    "MoEAlignment",
    "grouped_gemm",
    "moe_align",
    "moe_ffn",
    "moe_route",
]

# Load _C now when it is there (its import registers the private ops); a failure is kept, not shown.
_extension.unavailable_reason()
