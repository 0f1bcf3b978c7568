"""Elastic MoE ops: routing, token alignment, grouped GEMM over experts, fused expert FFN.

One module per op (launchers, registered op with fake impl and autograd, public wrapper, in that
order): :mod:`.route`, :mod:`.align`, :mod:`.gemm`, :mod:`.ffn`. On CUDA tensors no op reads
device data on the host: value checks run in the kernels and are reported by
:func:`raise_device_errors` (see :mod:`._errors`).
"""

from star_elastic_kernels.moe._errors import raise_device_errors
from star_elastic_kernels.moe.align import MoEAlignment, moe_align
from star_elastic_kernels.moe.ffn import moe_ffn
from star_elastic_kernels.moe.gemm import grouped_gemm
from star_elastic_kernels.moe.route import moe_route

__all__ = ["MoEAlignment", "grouped_gemm", "moe_align", "moe_ffn", "moe_route",
           "raise_device_errors"]
