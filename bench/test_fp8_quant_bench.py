"""FP8 E4M3 quantization: each backend of ours against plain PyTorch on the same data.

Shapes are weight matrices of the sizes the quant issue benchmarks (N = K in {4096, 8192}) in
bf16. The floor is one read of x and one write of the codes (3 bytes per element in bf16).
"""

import pytest
import torch

import star_elastic_kernels as sek


def torch_quantize(x: torch.Tensor, per_row: bool):
    """The baseline: plain PyTorch ops, as a user would write them."""
    amax = x.abs().amax(dim=1, keepdim=True) if per_row else x.abs().amax()
    scale = (amax.float() / 448.0).clamp_min(torch.finfo(torch.float32).tiny)
    return (x.float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn), scale


@pytest.mark.parametrize("size", [4096, 8192])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize(
    "provider", ["cuda", "cuda+finite-check", "triton", "torch-reference", "pytorch-plain"])
def test_quantize_fp8(gpu_bench, benchmark, size, granularity, provider):
    benchmark.group = f"quantize_fp8[{granularity}, {size}x{size} bf16]"
    x = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    per_row = granularity == "channel"
    if provider == "pytorch-plain":
        fn = lambda: torch_quantize(x, per_row)  # noqa: E731
    else:
        backend = {"torch-reference": "torch", "cuda+finite-check": "cuda"}.get(provider, provider)
        check = provider == "cuda+finite-check"
        fn = lambda: sek.quantize_fp8(x, granularity=granularity, check_finite=check,  # noqa: E731
                                      backend=backend)
    floor = x.numel() * (x.element_size() + 1)
    gpu_bench(fn, bytes_moved=floor, floor_bytes=floor)
