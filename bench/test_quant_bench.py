"""Quantized linears for nested weights: NVFP4 W4A16 and FP8 W8A8 / W8A16 against the baselines
of the same run — BF16 ``F.linear``, ``torch._scaled_mm`` (FP8 rowwise, activation pre-quantized:
the GEMM alone) and dequantize + ``F.linear``.

Each case is (N, K) of the parent, the active fraction of both widths (1, 1/2, 1/4: a slice read
from the parent in place) and M. The default grid fits the device script's time budget; set
``STAR_ELASTIC_QUANT_BENCH=full`` for N = K in {4096, 8192} plus the Nemotron-3-Nano shapes and
M in {1, 4, 16, 64, 256, 4096}. ``floor_fraction`` uses the bytes of the weight slice (its format's
bytes per element), the activation and the output.

Targets (issue 5): NVFP4 >= 3.0x BF16 at M <= 16; FP8 W8A8 >= 1.75x BF16 at M >= 4096; a 1/2 slice
<= 0.55x the parent's time.
"""

import os

import pytest
import torch
import torch.nn.functional as F

import star_elastic_kernels as sek

FULL = os.environ.get("STAR_ELASTIC_QUANT_BENCH") == "full"
# (N, K): square parents, then Nemotron-3-Nano: Mamba in_proj / out_proj, shared-expert up / down,
# routed-expert up.
SHAPES = [(4096, 4096), (8192, 8192)] + (
    [(10304, 2688), (2688, 4096), (3712, 2688), (2688, 3712), (1856, 2688)] if FULL else [])
MS = [1, 4, 16, 64, 256, 4096] if FULL else [1, 16, 4096]
FRACTIONS = [1.0, 0.5, 0.25]
PROVIDERS = ["bf16-F.linear", "nvfp4-w4a16-triton", "nvfp4-w4a16-cuda", "fp8-w8a8-triton",
             "fp8-w8a8-cuda", "fp8-w8a16-triton", "scaled_mm-rowwise", "nvfp4-dequantize+F.linear"]
BYTES_PER_WEIGHT = {"bf16-F.linear": 2.0, "scaled_mm-rowwise": 1.0,
                    "nvfp4-dequantize+F.linear": 0.5625}


def _active(size: int, fraction: float) -> int:
    return max(16, int(size * fraction) // 16 * 16)


@pytest.fixture(scope="module")
def weights():
    cache = {}

    def get(shape):
        if shape not in cache:
            w = torch.randn(*shape, device="cuda", dtype=torch.bfloat16) * 0.02
            cache.clear()  # keep one parent resident
            cache[shape] = (w, sek.quantize_nvfp4(w), sek.quantize_fp8(w, granularity="channel"))
        return cache[shape]

    return get


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("fraction", FRACTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_quant_linear(gpu_bench, benchmark, weights, shape, fraction, m, provider):
    if not FULL and provider in ("fp8-w8a16-triton", "nvfp4-dequantize+F.linear") \
            and fraction != 1.0:
        pytest.skip("secondary baseline: parent width only in the default grid")
    w, nv, f8 = weights(shape)
    n, k = _active(shape[0], fraction), _active(shape[1], fraction)
    benchmark.group = f"quant_linear[{shape[0]}x{shape[1]}, active {n}x{k}, M={m}]"
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    if provider == "bf16-F.linear":
        w_active = w[:n, :k]  # a strided view of the parent, as an elastic BF16 layer reads it
        fn = lambda: F.linear(x, w_active)  # noqa: E731
    elif provider.startswith("nvfp4-w4a16"):
        backend = provider.rsplit("-", 1)[1]
        fn = lambda: sek.nvfp4_linear(x, nv, out_features=n, in_features=k,  # noqa: E731
                                      backend=backend)
    elif provider.startswith("fp8-w8a8"):
        backend = provider.rsplit("-", 1)[1]
        fn = lambda: sek.fp8_linear(x, f8, out_features=n, in_features=k,  # noqa: E731
                                    backend=backend)
    elif provider == "fp8-w8a16-triton":
        fn = lambda: sek.fp8_linear(x, f8, out_features=n, in_features=k,  # noqa: E731
                                    activation_quant=None, backend="triton")
    elif provider == "scaled_mm-rowwise":
        x_q = sek.quantize_fp8(x, granularity="channel")
        b = f8.data[:n, :k].t()  # column-major (k, n) view with the parent's leading dimension
        scale_b = f8.scale[:n].reshape(1, n)
        scale_a = x_q.scale.reshape(m, 1)
        fn = lambda: torch._scaled_mm(x_q.data, b, scale_a, scale_b,  # noqa: E731
                                      out_dtype=torch.bfloat16)
        try:
            fn()
        except RuntimeError as error:
            pytest.skip(f"torch._scaled_mm rejects this case: {error}")
    else:
        child = nv.slice(n, k)
        fn = lambda: F.linear(x, child.dequantize(torch.bfloat16))  # noqa: E731
    bytes_per_weight = BYTES_PER_WEIGHT.get(provider, 0.5625 if "nvfp4" in provider else 1.0)
    weight_bytes = n * k * bytes_per_weight
    floor = weight_bytes + 2 * m * (k + n)
    gpu_bench(fn, bytes_moved=floor, flops=2 * m * n * k, floor_bytes=floor)
