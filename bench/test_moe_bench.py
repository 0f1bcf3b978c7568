"""Nemotron v3 MoE layer (E=128, top-6, D=2688, F=1856, ReLU², bf16): our Triton fused expert FFN
and our CUTLASS grouped-GEMM composition (backend "cuda") against ``torch._grouped_mm`` (when this
torch has it), a vLLM-style fused Triton MoE (bench/baselines/fused_moe_vllm_style.py: vLLM's
published design with its default tile configs) and the per-expert loop (the reference), at
decode (T = 1, 8, 64) and prefill (T = 4096, 16384) sizes and at 100/75/50% of the experts and of
the expert-FFN width (the elastic submodels; weights stay the parent's and are read in place).

Every case records TFLOP/s, GB/s and ``floor_fraction``: the time to stream the weights of the
experts the routing actually touched (their first r neurons only) plus one read of the tokens and
one write of the output, at the measured copy bandwidth, divided by the measured time.
"""

import pytest
import torch

import star_elastic_kernels as sek
from baselines import fused_moe_vllm_style  # bench/ is on sys.path (rootdir-relative import)

E, TOP_K, D, F = 128, 6, 2688, 1856
TOKENS = [1, 8, 64, 4096, 16384]
FRACTIONS = [1.0, 0.75, 0.5]
PROVIDERS = ["triton", "cuda-cutlass", "vllm-style-triton", "torch-grouped-mm", "per-expert-loop"]


@pytest.fixture(scope="module")
def parent_layer():
    g = torch.Generator(device="cuda").manual_seed(0)
    return dict(
        w_up=(torch.randn(E, F, D, device="cuda", generator=g) * D ** -0.5).to(torch.bfloat16),
        w_down=(torch.randn(E, D, F, device="cuda", generator=g) * F ** -0.5).to(torch.bfloat16),
        router=torch.randn(E, D, device="cuda", generator=g) * D ** -0.5,
        bias=torch.randn(E, device="cuda", generator=g) * 0.01,
    )


def grouped_mm_moe(hidden, w_up, w_down, weights, ids, num_experts, r, scaling):
    """The torch._grouped_mm MoE: sort slots by expert, gather, two grouped GEMMs, scatter-add."""
    t, k = ids.shape
    flat = ids.reshape(-1).long()
    order = torch.argsort(flat, stable=True)
    offs = torch.bincount(flat, minlength=num_experts).cumsum(0).to(torch.int32)
    tokens = order // k
    h = torch._grouped_mm(hidden[tokens], w_up[:num_experts, :r].transpose(1, 2), offs=offs)
    h = torch.square(torch.relu(h))
    y = torch._grouped_mm(h, w_down[:num_experts, :, :r].transpose(1, 2), offs=offs)
    y = y.float() * weights.reshape(-1)[order, None]
    return torch.zeros(t, hidden.shape[1], device=hidden.device).index_add_(0, tokens, y).mul_(scaling).to(hidden.dtype)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("fraction", FRACTIONS)
@pytest.mark.parametrize("tokens", TOKENS)
def test_moe_ffn_nemotron(gpu_bench, benchmark, parent_layer, tokens, fraction, provider):
    num_experts = int(E * fraction)
    r = int(F * fraction)
    benchmark.group = f"moe_ffn[T={tokens}, experts={num_experts}, r={r}, bf16]"
    if provider == "per-expert-loop" and (tokens > 4096 or fraction != 1.0):
        pytest.skip("the per-expert loop (the slow reference) is timed at full width up to T=4096")
    if provider == "torch-grouped-mm" and not hasattr(torch, "_grouped_mm"):
        pytest.skip(f"torch {torch.__version__} has no torch._grouped_mm")
    hidden = torch.randn(tokens, D, device="cuda", dtype=torch.bfloat16)
    weights, ids = sek.moe_route(hidden.float() @ parent_layer["router"].T, top_k=TOP_K,
                                 correction_bias=parent_layer["bias"], num_experts=num_experts,
                                 scaling=2.5)
    w_up, w_down = parent_layer["w_up"], parent_layer["w_down"]
    if provider == "torch-grouped-mm":
        fn = lambda: grouped_mm_moe(hidden, w_up, w_down, weights, ids, num_experts, r, 1.0)  # noqa: E731
        try:
            fn()
        except RuntimeError as error:  # e.g. a build or GPU without the grouped GEMM kernels
            pytest.skip(f"torch._grouped_mm failed here: {error}")
    elif provider == "vllm-style-triton":
        fn = lambda: fused_moe_vllm_style.fused_experts(  # noqa: E731
            hidden, w_up, w_down, weights, ids, ffn_width=r)
    else:
        backend = {"triton": "triton", "cuda-cutlass": "cuda"}.get(provider, "torch")
        if backend == "cuda" and not sek._extension.has_op("_moe_grouped_gemm"):
            pytest.skip("the CUDA extension lacks _moe_grouped_gemm (not built here)")
        fn = lambda: sek.moe_ffn(hidden, w_up, w_down, weights, ids, ffn_width=r,  # noqa: E731
                                 backend=backend)
    touched = int(torch.unique(ids).numel())
    floor_bytes = touched * 2 * r * D * 2 + 2 * tokens * D * 2
    flops = 4 * tokens * TOP_K * D * r
    benchmark.extra_info.update(experts_touched=touched, experts=num_experts, ffn_width=r,
                                floor_bytes=floor_bytes)
    ms = gpu_bench(fn, bytes_moved=floor_bytes, flops=flops, floor_bytes=floor_bytes)
    # dense bf16 peak of an H100/H200 (989 TFLOP/s, vendor figure) for the compute-bound cases
    benchmark.extra_info["compute_floor_fraction_989tflops"] = flops / 989e12 / (ms * 1e-3)


def _skip_without(op):
    if not sek._extension.has_op(op):
        pytest.skip(f"the CUDA extension lacks {op} (not built here)")


@pytest.mark.parametrize("provider", ["cuda", "triton", "torch"])
@pytest.mark.parametrize("tokens", [64, 16384])
def test_moe_route_nemotron(gpu_bench, benchmark, tokens, provider):
    benchmark.group = f"moe_route[T={tokens}, E={E}, top-{TOP_K}]"
    if provider == "cuda":
        _skip_without("_moe_route")
    logits = torch.randn(tokens, E, device="cuda")
    bias = torch.randn(E, device="cuda") * 0.01
    fn = lambda: sek.moe_route(logits, top_k=TOP_K, correction_bias=bias, scaling=2.5,  # noqa: E731
                               backend=provider)
    gpu_bench(fn, bytes_moved=logits.numel() * 4 + tokens * TOP_K * 8)


@pytest.mark.parametrize("provider", ["cuda", "triton", "torch"])
@pytest.mark.parametrize("tokens", [64, 16384])
def test_moe_align_nemotron(gpu_bench, benchmark, tokens, provider):
    benchmark.group = f"moe_align[T={tokens}, E={E}, top-{TOP_K}]"
    if provider == "cuda":
        _skip_without("_moe_align")
    ids = torch.stack([torch.randperm(E, device="cuda")[:TOP_K] for _ in range(min(tokens, 64))])
    ids = ids.repeat(tokens // ids.shape[0], 1).to(torch.int32)
    fn = lambda: sek.moe_align(ids, E, 64, backend=provider)  # noqa: E731
    gpu_bench(fn, bytes_moved=ids.numel() * 8)
