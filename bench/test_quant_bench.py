"""Quantized linears for nested weights: NVFP4 W4A16 and FP8 W8A8 / W8A16 against the baselines
of the same run — BF16 ``F.linear``, ``torch._scaled_mm`` (FP8 rowwise, activation pre-quantized:
the GEMM alone) and dequantize + ``F.linear``.

Each case is (N, K) of the parent, the active fraction of both widths (1 or 1/2: a child read from
the parent in place) and M. The grid is issue 15's: the Nemotron shapes (N, K) = 2688 x 1856,
2688 x 3712 and 5120 x 20480 at M = 1, 16, 128, 4096, 8192 (``STAR_ELASTIC_QUANT_BENCH=full`` adds
the transposed shapes). ``nvfp4-w4a16-cuda`` is the Marlin-class kernel on the prepacked weight
(``w.prepack()``, done once outside the timing); ``fp8-w8a8-cuda`` includes the one-kernel
per-token activation quantization.

Recorded in ``extra_info`` next to the fixture's timing: ``hbm_peak_fraction`` (the floor bytes —
weight slice in its format, activation, output — over 4.8 TB/s, divided by the time) and
``tensor_core_peak_fraction`` (2MNK over the dense peak of the MMA the path runs on: 989.4 TFLOP/s
BF16 for BF16 and W4A16, 1978.9 TFLOP/s FP8 for W8A8 and scaled_mm).

Targets (issue 15, H200, same run): NVFP4 >= 3.0x BF16 at M <= 16 and a 1/2 child <= 0.55x the
parent's time; FP8 W8A8 >= 1.75x BF16 at M >= 4096.
"""

import os

import pytest
import torch
import torch.nn.functional as F

import star_elastic_kernels as sek

FULL = os.environ.get("STAR_ELASTIC_QUANT_BENCH") == "full"
SHAPES = [(2688, 1856), (2688, 3712), (5120, 20480)]
if FULL:
    SHAPES += [(k, n) for n, k in SHAPES]
MS = [1, 16, 128, 4096, 8192]
FRACTIONS = [1.0, 0.5]
PROVIDERS = ["bf16-F.linear", "nvfp4-w4a16-triton", "nvfp4-w4a16-cuda", "fp8-w8a8-triton",
             "fp8-w8a8-cuda", "fp8-w8a16-triton", "scaled_mm-rowwise", "nvfp4-dequantize+F.linear"]
BYTES_PER_WEIGHT = {"bf16-F.linear": 2.0, "scaled_mm-rowwise": 1.0,
                    "nvfp4-dequantize+F.linear": 0.5625}
HBM_BYTES_PER_S = 4.8e12
DENSE_PEAK_FLOPS = {"bf16": 989.4e12, "fp8": 1978.9e12}


def _active(size: int, fraction: float) -> int:
    return max(16, int(size * fraction) // 16 * 16)


@pytest.fixture(scope="module")
def weights():
    cache = {}

    def get(shape):
        if shape not in cache:
            w = torch.randn(*shape, device="cuda", dtype=torch.bfloat16) * 0.02
            cache.clear()  # keep one parent resident
            nv = sek.quantize_nvfp4(w)
            cache[shape] = (w, nv, nv.prepack(), sek.quantize_fp8(w, granularity="channel"))
        return cache[shape]

    return get


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("fraction", FRACTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_quant_linear(gpu_bench, benchmark, weights, shape, fraction, m, provider):
    if provider in ("fp8-w8a16-triton", "nvfp4-dequantize+F.linear") and fraction != 1.0:
        pytest.skip("secondary baseline: parent width only")
    w, nv, packed, f8 = weights(shape)
    n, k = _active(shape[0], fraction), _active(shape[1], fraction)
    benchmark.group = f"quant_linear[{shape[0]}x{shape[1]}, active {n}x{k}, M={m}]"
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    if provider == "bf16-F.linear":
        w_active = w[:n, :k]  # a strided view of the parent, as an elastic BF16 layer reads it
        fn = lambda: F.linear(x, w_active)  # noqa: E731
    elif provider.startswith("nvfp4-w4a16"):
        backend = provider.rsplit("-", 1)[1]
        weight = packed if backend == "cuda" else nv
        fn = lambda: sek.nvfp4_linear(x, weight, out_features=n, in_features=k,  # noqa: E731
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
    ms = gpu_bench(fn, bytes_moved=floor, flops=2 * m * n * k, floor_bytes=floor)
    mma = "fp8" if provider.startswith(("fp8-w8a8", "scaled_mm")) else "bf16"
    benchmark.extra_info["hbm_peak_fraction"] = floor / HBM_BYTES_PER_S / (ms * 1e-3)
    benchmark.extra_info["tensor_core_peak_fraction"] = (
        2 * m * n * k / DENSE_PEAK_FLOPS[mma] / (ms * 1e-3))
