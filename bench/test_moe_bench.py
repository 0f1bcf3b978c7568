"""The Nemotron Nano v3 MoE layer (E=128, top-6, D=2688, F=1856, ReLU², shared expert 3712, bf16)
at decode and prefill sizes (T = 1, 4, 16, 64, 512, 8192), with all 128 experts and with the first
64 (an elastic submodel: the router never picks the others, whose weights stay in place, unread).

Providers, same run, same routing: our CUTLASS path (backend "cuda": five launches, no host
sync), our Triton path, a ``torch._grouped_mm`` MoE (when this torch has it), the vLLM-style fused
Triton MoE (bench/baselines/fused_moe_vllm_style.py: vLLM's published design, its default
configs) and the per-expert loop (the reference). The baselines add the shared expert as two
dense matmuls, as a serving stack would.

``extra_info`` of every case: ``median_us`` (CUDA events), ``tflops``, ``floor_fraction`` (the time
the unavoidable bytes take at the measured copy bandwidth, over the measured time) and
``hbm_floor_fraction_4800gbs`` (the same at the H200's 4.8 TB/s vendor figure). The unavoidable
bytes: the weights of the experts the routing touched (their active rows only) and of the shared
expert, one read of the tokens and one write of the output.
"""

import pytest
import torch
import torch.nn.functional as F

import star_elastic_kernels as sek
from baselines import fused_moe_vllm_style  # bench/ is on sys.path (rootdir-relative import)
from star_elastic_kernels.reference import moe as reference

E, TOP_K, D, FFN, SHARED = 128, 6, 2688, 1856, 3712
TOKENS = [1, 4, 16, 64, 512, 8192]
EXPERTS = [128, 64]
PROVIDERS = ["cuda-cutlass", "triton", "torch-grouped-mm", "vllm-style-triton", "per-expert-loop"]
H200_HBM_BYTES_PER_S = 4.8e12


@pytest.fixture(scope="module")
def parent_layer():
    g = torch.Generator(device="cuda").manual_seed(0)

    def weight(*shape, fan_in):
        return (torch.randn(*shape, device="cuda", generator=g) * fan_in ** -0.5).to(torch.bfloat16)

    return dict(
        w_up=weight(E, FFN, D, fan_in=D), w_down=weight(E, D, FFN, fan_in=FFN),
        shared_up=weight(SHARED, D, fan_in=D), shared_down=weight(D, SHARED, fan_in=SHARED),
        router=torch.randn(E, D, device="cuda", generator=g) * D ** -0.5,
        bias=torch.randn(E, device="cuda", generator=g) * 0.01,
    )


def shared_expert(hidden, up, down):
    return F.linear(torch.square(torch.relu(F.linear(hidden, up))), down)


def grouped_mm_moe(hidden, w_up, w_down, weights, ids, num_experts, scaling):
    """The torch._grouped_mm MoE: sort slots by expert, gather, two grouped GEMMs, scatter-add."""
    t, k = ids.shape
    flat = ids.reshape(-1).long()
    order = torch.argsort(flat, stable=True)
    offs = torch.bincount(flat, minlength=num_experts).cumsum(0).to(torch.int32)
    tokens = order // k
    h = torch._grouped_mm(hidden[tokens], w_up[:num_experts].transpose(1, 2), offs=offs)
    h = torch.square(torch.relu(h))
    y = torch._grouped_mm(h, w_down[:num_experts].transpose(1, 2), offs=offs)
    y = y.float() * weights.reshape(-1)[order, None]
    out = torch.zeros(t, hidden.shape[1], device=hidden.device).index_add_(0, tokens, y)
    return out.mul_(scaling).to(hidden.dtype)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("experts", EXPERTS)
@pytest.mark.parametrize("tokens", TOKENS)
def test_moe_layer_nemotron_nano_v3(gpu_bench, benchmark, parent_layer, tokens, experts, provider):
    benchmark.group = f"moe_layer[T={tokens}, experts={experts}/{E}, top-{TOP_K}, bf16]"
    if provider == "per-expert-loop" and tokens > 512:
        pytest.skip("the per-expert loop (the slow reference) is timed up to T=512")
    if provider == "torch-grouped-mm" and not hasattr(torch, "_grouped_mm"):
        pytest.skip(f"torch {torch.__version__} has no torch._grouped_mm")
    if provider == "cuda-cutlass" and not sek._extension.has_op("_moe_ffn_plan"):
        pytest.skip("the CUDA extension lacks the moe_ffn ops (not built here)")
    layer = parent_layer
    hidden = torch.randn(tokens, D, device="cuda", dtype=torch.bfloat16)
    weights, ids = sek.moe_route(hidden.float() @ layer["router"].T, top_k=TOP_K,
                                 correction_bias=layer["bias"], num_experts=experts, scaling=2.5)
    w_up, w_down = layer["w_up"], layer["w_down"]
    su, sd = layer["shared_up"], layer["shared_down"]
    if provider == "torch-grouped-mm":
        def fn():
            return (grouped_mm_moe(hidden, w_up, w_down, weights, ids, experts, 1.0)
                    + shared_expert(hidden, su, sd))
        try:
            fn()
        except RuntimeError as error:  # e.g. a build or GPU without the grouped GEMM kernels
            pytest.skip(f"torch._grouped_mm failed here: {error}")
    elif provider == "vllm-style-triton":
        def fn():
            return (fused_moe_vllm_style.fused_experts(hidden, w_up, w_down, weights, ids)
                    + shared_expert(hidden, su, sd))
    elif provider == "per-expert-loop":
        def fn():
            return reference.moe_ffn(hidden, w_up, w_down, weights, ids, shared_up=su,
                                     shared_down=sd)
    else:
        backend = "cuda" if provider == "cuda-cutlass" else "triton"

        def fn():
            return sek.moe_ffn(hidden, w_up, w_down, weights, ids, shared_up=su, shared_down=sd,
                               backend=backend)
    touched = int(torch.unique(ids).numel())
    floor_bytes = (touched * 2 * FFN * D + 2 * SHARED * D) * 2 + 2 * tokens * D * 2
    flops = 4 * tokens * D * (TOP_K * FFN + SHARED)
    benchmark.extra_info.update(experts_touched=touched, experts=experts, floor_bytes=floor_bytes,
                                hbm_floor_us_4800gbs=floor_bytes / H200_HBM_BYTES_PER_S * 1e6)
    ms = gpu_bench(fn, bytes_moved=floor_bytes, flops=flops, floor_bytes=floor_bytes)
    benchmark.extra_info["hbm_floor_fraction_4800gbs"] = (
        floor_bytes / H200_HBM_BYTES_PER_S / (ms * 1e-3))
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
