"""Elastic MoE ops: routing, token alignment, grouped GEMM over experts, fused expert FFN."""

from star_elastic_kernels.moe.ops import MoEAlignment, grouped_gemm, moe_align, moe_ffn, moe_route

__all__ = ["MoEAlignment", "grouped_gemm", "moe_align", "moe_ffn", "moe_route"]
