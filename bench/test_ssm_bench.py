"""Mamba-2 SSM ops at Nemotron shapes: our kernels against mamba-ssm on the same data, same run.

Prefill (``ssd_scan``, bf16, chunk 128): Nemotron Nano v3 (H=64, P=64, N=128, G=8) at 8k and 32k
tokens and in 4 rows of 8k (a batch, whose rows' state chains are independent), and Nano v2
(H=128, P=80) at 8k, at 100 / 75 / 50 % heads per group (head_dim kept). The
baseline is ``mamba_chunk_scan_combined`` on the same compact activations with the parameters
gathered at the active heads (what a caller of mamba-ssm would have to do); "triton-bf16-states"
keeps the per-chunk states in bf16 and "cuda-bf16-states" the states entering the chunks
(``chunk_states_dtype``). Our Triton row also
records ``speedup_vs_mamba`` (targets: >= 2.0 at full width) and ``time_vs_full_width`` (target:
<= 0.55 at 50 %), both timed in the same test.

Decode (``ssd_state_update``, Nano v3 shape, fp32 state cache as Nemotron's default, and bf16):
batch 1 / 16 / 64 / 128 / 256, against ``selective_state_update`` with zero-stride expanded A/dt/D. The floor is one
read and one write of the active state slice; ``floor_fraction`` is against the measured copy
bandwidth (target: >= 0.85 at batch >= 64).

mamba-ssm rows skip (with the reason) where mamba-ssm is not installed; install it with
``MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE pip install --no-build-isolation --no-deps
mamba-ssm==2.3.2.post1`` (its Triton kernels need no build).
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

import star_elastic_kernels as sek

SHAPES = {"nano-v3": dict(H=64, P=64, N=128, G=8), "nano-v2": dict(H=128, P=80, N=128, G=8)}
PREFILL = [("nano-v3", 1, 8192), ("nano-v3", 1, 32768), ("nano-v3", 4, 8192), ("nano-v2", 1, 8192)]
WIDTHS = [1.0, 0.75, 0.5]


def _mamba(module: str):
    sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    return pytest.importorskip(module, reason="mamba-ssm is not installed")


def _do_bench(fn) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def _prefill_data(shape: str, rows: int, tokens: int, width: float):
    s = SHAPES[shape]
    H, P, N, G = s["H"], s["P"], s["N"], s["G"]
    k = int(H // G * width)
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *size: torch.randn(*size, device="cuda", generator=g)  # noqa: E731
    heads = (torch.arange(G, device="cuda")[:, None] * (H // G) + torch.arange(k, device="cuda")).reshape(-1)
    data = dict(x=r(rows, tokens, G * k, P).bfloat16(), dt=r(rows, tokens, G * k).bfloat16(),
                A=-torch.rand(H, device="cuda", generator=g) - 0.5,
                B=r(rows, tokens, G, N).bfloat16(), C=r(rows, tokens, G, N).bfloat16(), D=r(H),
                dt_bias=r(H))
    floor = rows * tokens * (G * k * P * 2 * 2 + G * k * 2 + 2 * G * N * 2)  # x, y, dt, B, C
    return data, heads, k, floor


def _ours(d, k, provider="triton"):
    """Our scan; a provider "BACKEND-bf16-states" keeps the chunk states in bf16."""
    backend, _, states = provider.partition("-")
    states_dtype = torch.bfloat16 if states == "bf16-states" else None
    return lambda: sek.ssd_scan(d["x"], d["dt"], d["A"], d["B"], d["C"], chunk_size=128, D=d["D"],
                                dt_bias=d["dt_bias"], dt_softplus=True, heads_per_group=k,
                                chunk_states_dtype=states_dtype, backend=backend)


def _theirs(d, heads):
    combined = _mamba("mamba_ssm.ops.triton.ssd_combined")
    A, D, dt_bias = d["A"][heads].contiguous(), d["D"][heads].contiguous(), d["dt_bias"][heads].contiguous()
    return lambda: combined.mamba_chunk_scan_combined(d["x"], d["dt"], A, d["B"], d["C"], 128, D=D,
                                                      dt_bias=dt_bias, dt_softplus=True)


@pytest.mark.parametrize("shape,rows,tokens", PREFILL,
                         ids=[f"{s}-{'' if b == 1 else f'{b}x'}{t // 1024}k" for s, b, t in PREFILL])
@pytest.mark.parametrize("width", WIDTHS, ids=[f"{int(w * 100)}pct" for w in WIDTHS])
@pytest.mark.parametrize("provider", ["triton", "triton-bf16-states", "cuda", "cuda-bf16-states",
                                      "mamba-ssm"])
def test_ssd_scan_prefill(gpu_bench, benchmark, shape, rows, tokens, width, provider):
    benchmark.group = f"ssd_scan[{shape}, {rows} x {tokens} tokens, bf16]"
    d, heads, k, floor = _prefill_data(shape, rows, tokens, width)
    fn = _theirs(d, heads) if provider == "mamba-ssm" else _ours(d, k, provider)
    ms = gpu_bench(fn, bytes_moved=floor, floor_bytes=floor)
    benchmark.extra_info.update(heads_per_group=k, width=width, rows=rows, tokens=tokens)
    if provider != "mamba-ssm":
        try:
            benchmark.extra_info["speedup_vs_mamba"] = _do_bench(_theirs(d, heads)) / ms
        except pytest.skip.Exception:
            benchmark.extra_info["speedup_vs_mamba"] = None
        if width != 1.0:
            full, _, k_full, _ = _prefill_data(shape, rows, tokens, 1.0)
            benchmark.extra_info["time_vs_full_width"] = ms / _do_bench(_ours(full, k_full, provider))


DECODE = [(batch, 1.0, provider, "fp32") for batch in (1, 16, 64, 128, 256)
          for provider in ("cuda", "triton", "mamba-ssm")]
DECODE += [(64, 0.5, "cuda", "fp32"), (256, 0.5, "cuda", "fp32"), (64, 1.0, "cuda", "bf16"),
           (256, 1.0, "cuda", "bf16")]


@pytest.mark.parametrize("batch,width,provider,cache_dtype", DECODE,
                         ids=[f"b{b}-{int(w * 100)}pct-{p}-{c}" for b, w, p, c in DECODE])
def test_ssd_state_update_decode(gpu_bench, benchmark, batch, width, provider, cache_dtype):
    s = SHAPES["nano-v3"]
    H, P, N, G = s["H"], s["P"], s["N"], s["G"]
    benchmark.group = f"ssd_state_update[nano-v3, batch {batch}, {cache_dtype} state, {int(width * 100)}%]"
    k = int(H // G * width)
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *size: torch.randn(*size, device="cuda", generator=g)  # noqa: E731
    cache = r(batch, H, P, N).to(getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[cache_dtype]))
    x, dt = r(batch, G * k, P).bfloat16(), r(batch, G * k)
    A, D, dt_bias = -torch.rand(H, device="cuda", generator=g) - 0.5, r(H), r(H)
    B, C = r(batch, G, N).bfloat16(), r(batch, G, N).bfloat16()
    floor = batch * G * k * P * N * cache.element_size() * 2 + batch * (G * k * P * 2 * 2 + 2 * G * N * 2)
    if provider == "mamba-ssm":
        ssu = _mamba("mamba_ssm.ops.triton.selective_state_update")
        heads = (torch.arange(G, device="cuda")[:, None] * (H // G) + torch.arange(k, device="cuda")).reshape(-1)
        sub_cache = cache[:, heads].contiguous()  # mamba-ssm cannot address a group-aware slice in place
        expand = lambda t, *shape: t[(...,) + (None,) * len(shape)].expand(*t.shape, *shape)  # noqa: E731
        A_e, D_e, bias_e = expand(A[heads], P, N), expand(D[heads], P), expand(dt_bias[heads], P)
        fn = lambda: ssu.selective_state_update(sub_cache, x, expand(dt, P), A_e, B, C, D=D_e,  # noqa: E731
                                                dt_bias=bias_e, dt_softplus=True)
    else:
        fn = lambda: sek.ssd_state_update(cache, x, dt, A, B, C, D=D, dt_bias=dt_bias, dt_softplus=True,  # noqa: E731
                                          heads_per_group=k, backend=provider)
    gpu_bench(fn, bytes_moved=floor, floor_bytes=floor)
    benchmark.extra_info.update(batch=batch, heads_per_group=k)
