"""Star Elastic Kernels: kernels for nested (elastic) hybrid Mamba-2 / attention / MoE LLMs.

Every op is a ``torch.library`` op in the ``star_elastic`` namespace with three backends — the
pure-PyTorch reference (``"torch"``), Triton (``"triton"``) and the compiled CUDA extension
(``"cuda"``) — chosen per call (``backend=``), per block (:func:`use_backend`), per process
(``$STAR_ELASTIC_BACKEND``) or automatically. ``python -m star_elastic_kernels.info`` shows what
is available here and why the rest is not.

Importing never fails for want of the CUDA extension or a GPU, and never initialises CUDA.
"""

from star_elastic_kernels import _extension
from star_elastic_kernels._backends import BackendUnavailableError, use_backend
from star_elastic_kernels._extension import StarElasticWarning
from star_elastic_kernels.quant import FP8Quantized, dequantize_fp8, quantize_fp8

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "FP8Quantized",
    "StarElasticWarning",
    "dequantize_fp8",
    "quantize_fp8",
    "use_backend",
]

_extension.warn_if_missing()
