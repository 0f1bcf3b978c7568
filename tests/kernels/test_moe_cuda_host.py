"""The CUDA MoE kernels' per-thread code on the CPU: csrc/moe/route.cu and align.cu register CPU
impls of their private ops (_moe_route, _moe_align) that run the very functions each GPU thread
runs, sequentially over the grid. These tests compare them with the reference on CPU tensors, so
the kernels' index math and arithmetic are checked on machines without a GPU (the launch
configuration, the device's expf and memory ordering are not: the GPU-marked tests in
test_moe_route.py cover those with backend="cuda").
"""

import pytest
import torch

from star_elastic_kernels import _extension
from star_elastic_kernels.moe import align as moe_align_ops
from star_elastic_kernels.moe import ffn as moe_ffn_ops
from star_elastic_kernels.moe import gemm as moe_gemm_ops
from star_elastic_kernels.moe import route as moe_route_ops
from star_elastic_kernels.reference import moe as reference
from tests.kernels.test_moe_route import align_by_hand

pytestmark = pytest.mark.skipif(
    not (_extension.has_op("_moe_route") and _extension.has_op("_moe_align")),
    reason="the CUDA extension (with _moe_route/_moe_align) is not built here")


def route_both(logits, *, top_k, score, bias=None, num_experts=None, mask=None, renormalize=True,
               scaling=1.0):
    prefix = logits.shape[1] if num_experts is None else num_experts
    got = moe_route_ops._route_cuda(logits, bias, mask, top_k, score == "softmax", prefix, renormalize,
                              scaling)
    want = reference.moe_route(logits, top_k=top_k, score=score, correction_bias=bias,
                               num_experts=num_experts, expert_mask=mask, renormalize=renormalize,
                               scaling=scaling)
    return got, want


def assert_same_routing(got, want):
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.int32
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("score", ["sigmoid", "softmax"])
@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("kind", ["none", "prefix", "mask", "compact"])
@pytest.mark.parametrize("tokens", [0, 1, 37])
@pytest.mark.parametrize("seed", range(3))
def test_route_nemotron_shape_matches_reference(score, renormalize, kind, tokens, seed):
    """E=128, top-6, random fp32 logits, with a correction bias, a prefix or a random mask."""
    g = torch.Generator().manual_seed(seed * 1000 + tokens)
    logits = torch.randn(tokens, 128, generator=g) * 3
    bias = torch.randn(128, generator=g) * 0.05
    kwargs = {}
    if kind in ("prefix", "compact"):
        kwargs["num_experts"] = 96
        if kind == "compact":
            logits = logits[:, :96]
    elif kind == "mask":
        kwargs["mask"] = torch.rand(128, generator=g) < 0.6
        kwargs["mask"][:6] = True  # at least top_k active experts
    got, want = route_both(logits, top_k=6, score=score, bias=bias, renormalize=renormalize,
                           scaling=2.5, **kwargs)
    assert_same_routing(got, want)
    if kind == "mask":
        assert bool(kwargs["mask"][got[1].long()].all())
    if kind in ("prefix", "compact") and tokens:
        assert int(got[1].max()) < 96


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("score", ["sigmoid", "softmax"])
def test_route_half_logits_and_strides(dtype, score):
    g = torch.Generator().manual_seed(7)
    base = (torch.randn(128, 50, generator=g) * 2).to(dtype)
    logits = base.T  # (50, 128) with strides (1, 50)
    got, want = route_both(logits, top_k=4, score=score, bias=torch.randn(128, generator=g) * 0.1)
    assert_same_routing(got, want)


def test_route_without_bias_and_top_k_equal_to_active():
    logits = torch.randn(9, 6)
    for score in ("sigmoid", "softmax"):
        got, want = route_both(logits, top_k=6, score=score)
        assert_same_routing(got, want)
    # masked experts that would win every choice are never chosen; ties go to the lowest index
    logits = torch.zeros(3, 8)
    logits[:, 5:] = 100.0
    mask = torch.tensor([True, True, True, False, True, False, False, True])
    got = moe_route_ops._route_cuda(logits, None, mask, 3, False, 8, True, 1.0)
    assert got[1].tolist() == [[7, 0, 1]] * 3


@pytest.mark.parametrize("t,k,num_experts,block_m", [(0, 2, 4, 16), (1, 1, 4, 16), (1, 6, 128, 64),
                                                     (37, 3, 8, 16), (50, 6, 128, 64), (9, 2, 5, 1),
                                                     (400, 6, 128, 16), (11, 6, 64, 3)])
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64])
def test_align_matches_by_hand(t, k, num_experts, block_m, id_dtype):
    g = torch.Generator().manual_seed(t + k)
    # the last experts receive no tokens: they must get no slots and no blocks
    live = max(num_experts * 3 // 4, k)
    ids = torch.stack([torch.randperm(live, generator=g)[:k] for _ in range(t)]) if t else \
        torch.empty(0, k, dtype=torch.int64)
    ids = ids.to(id_dtype)
    got = moe_align_ops._align_cuda(ids, num_experts, block_m)
    for name, ours, want in zip(moe_align_ops.MoEAlignment._fields, got,
                                align_by_hand(ids, num_experts, block_m)):
        assert ours.dtype == torch.int32, name
        assert torch.equal(ours, want), name
    for ours, want in zip(got, reference.moe_align(ids, num_experts, block_m)):
        assert torch.equal(ours, want)


def test_align_all_slots_on_one_expert_across_many_chunks():
    ids = torch.full((1000, 1), 3, dtype=torch.int32)  # 16 chunks of 64 slots
    sorted_slots, counts, offsets, blocks = moe_align_ops._align_cuda(ids, 6, 8)
    assert torch.equal(sorted_slots, torch.arange(1000, dtype=torch.int32))
    assert counts.tolist() == [0, 0, 0, 1000, 0, 0]
    assert blocks.tolist() == [0, 0, 0, 0, 125, 125, 125]


# --- moe_ffn's plan, gather and combine kernels and the grouped GEMMs over their tables ---------
# (csrc/moe/ffn.cu, gemm_tables.cu): the CPU impls run the kernels' per-thread code, and the GEMM op
# a reference product with the CUTLASS kernels' own epilogue functions (csrc/moe/epilogue.h).

needs_ffn_ops = pytest.mark.skipif(
    not all(_extension.has_op(op) for op in moe_ffn_ops.CUDA_OPS),
    reason="the CUDA extension (with the moe_ffn plan/gather/GEMM/combine ops) is not built here")


@needs_ffn_ops
def test_the_kernels_table_layouts_are_what_the_plan_writes():
    """The plan writes int32 (m, n, k) triples and int64 row strides; CUTLASS reads them as its
    cute Shape / Stride types (checked on values here, on sizes at compile time)."""
    assert torch.ops.star_elastic._moe_gemm_table_layouts_match()


def ffn_case(t, k, e, d_parent, f_parent, activation, shared, num_experts, seed):
    from tests.kernels.test_moe_ffn import make_layer

    layer = make_layer(t, e, k, d_parent, f_parent, activation=activation, shared=shared, seed=seed,
                       dtype=torch.bfloat16, num_experts=num_experts)
    for name in ("w_up", "w_down"):
        layer[name][num_experts:] = float("nan")  # experts outside the prefix are never read
    return layer


@needs_ffn_ops
@pytest.mark.parametrize("activation", ["relu2", "silu_glu"])
@pytest.mark.parametrize("shared", [0, 16])
@pytest.mark.parametrize("t,k,widths", [
    (1, 3, (None, None, None)),   # decode: the swap-AB tables
    (29, 3, (24, 16, 8)),         # elastic widths, aligned
    (29, 3, (13, 21, 9)),         # widths that are no multiple of 8 (padded buffers, no fallback)
    (70, 4, (None, None, None)),  # 47 rows per expert: the non-swapped tables (pingpong)
    (5, 6, (None, 11, 5)),        # k = E: every expert active
])
def test_ffn_cuda_composition_on_cpu_matches_reference(activation, shared, t, k, widths):
    """The whole cuda backend of moe_ffn (plan, gather, GEMMs with fused epilogues, combine) on the
    CPU, against the reference moe_ffn in bf16; NaN in every expert the routing does not touch and
    in every weight outside the active widths."""
    e_parent, experts = 8, 6
    layer = ffn_case(t, k, e_parent, 32, 32, activation, shared, max(experts, k), seed=t + k)
    r, d, s = widths
    r, d, s = r or 32, d or 32, (s or 16) if shared else 0
    layer["w_up"][:, r:32] = float("nan")  # neurons past r (of each GLU half), channels past d
    layer["w_up"][:, 32 + r :] = float("nan")
    layer["w_up"][:, :, d:] = float("nan")
    layer["w_down"][:, :, r:] = float("nan")
    layer["w_down"][:, d:] = float("nan")
    if shared:
        layer["shared_up"][s:16] = float("nan")
        layer["shared_up"][16 + s :] = float("nan")  # (empty without GLU)
        layer["shared_up"][:, d:] = float("nan")
        layer["shared_down"][:, s:] = float("nan")
        layer["shared_down"][d:] = float("nan")
    hidden = layer["hidden"][:, :d].contiguous()
    got = moe_ffn_ops._moe_ffn_cuda(hidden, layer["w_up"], layer["w_down"], layer["weights"],
                                    layer["ids"], layer["shared_up"], layer["shared_down"],
                                    activation, r, d, s, 2.5)
    clean = {n: None if v is None else torch.nan_to_num(v, nan=0.0) for n, v in layer.items()}
    want = reference.moe_ffn(hidden, clean["w_up"], clean["w_down"], layer["weights"], layer["ids"],
                             activation=activation, ffn_width=r, hidden_width=d,
                             shared_up=clean["shared_up"], shared_down=clean["shared_down"],
                             shared_width=s or None, scaling=2.5)
    assert got.shape == (t, d) and got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), want.float(), rtol=5e-2, atol=5e-2)


@needs_ffn_ops
def test_ffn_cuda_on_cpu_skips_and_flags_an_out_of_range_id():
    from star_elastic_kernels.moe import _errors

    layer = ffn_case(7, 2, 6, 16, 16, "relu2", 0, 6, seed=3)
    flag = _errors.device_flag(torch.empty(0))
    flag.zero_()
    bad = layer["ids"].clone()
    bad[2, 1] = 6
    got = moe_ffn_ops._moe_ffn_cuda(layer["hidden"], layer["w_up"], layer["w_down"],
                                    layer["weights"], bad, None, None, "relu2", 16, 16, 0, 1.0)
    assert int(flag.item()) == _errors.IDS_OUT_OF_RANGE
    flag.zero_()
    weights = layer["weights"].clone()
    weights[2, 1] = 0.0  # the skipped slot contributes nothing
    want = reference.moe_ffn(layer["hidden"], layer["w_up"], layer["w_down"], weights,
                             layer["ids"])
    torch.testing.assert_close(got.float(), want.float(), rtol=5e-2, atol=5e-2)


@needs_ffn_ops
@pytest.mark.parametrize("counts,n,k", [([3, 0, 5, 1], 16, 24), ([70, 0, 81], 8, 13),
                                        ([0, 0, 0], 8, 8), ([1, 1], 24, 8)])
def test_grouped_gemm_cuda_on_cpu_matches_reference(counts, n, k):
    """grouped_gemm's cuda launcher on the CPU: the table kernel (from the ends) and the GEMM over
    the tables, swapped (few rows per group) or not; empty groups poisoned with NaN."""
    from tests.kernels.test_moe_gemm import problem

    a, parent, b, ends = problem(counts, n, k, n + 8, k + 3 + (8 - (k + 3) % 8) % 8,
                                 torch.bfloat16, "cpu")
    parent[[g for g, c in enumerate(counts) if c == 0]] = float("nan")
    got = moe_gemm_ops._grouped_gemm_cuda(a, b, ends)
    want = reference.grouped_gemm(a.float(), torch.nan_to_num(b.float()), ends)
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)


@needs_ffn_ops
def test_grouped_gemm_cuda_on_cpu_clamps_and_flags_bad_ends():
    from star_elastic_kernels.moe import _errors

    a = torch.randn(6, 8).bfloat16()
    b = torch.randn(2, 8, 8).bfloat16()
    flag = _errors.device_flag(a)
    flag.zero_()
    got = moe_gemm_ops._grouped_gemm_cuda(a, b, torch.tensor([4, 3], dtype=torch.int32))
    assert int(flag.item()) == _errors.BAD_GROUP_ENDS
    flag.zero_()
    want = reference.grouped_gemm(a.float(), b.float(), torch.tensor([4, 4]))  # clamped: 4, 4
    torch.testing.assert_close(got[:4].float(), want[:4], rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("tokens", [5461, 6000])  # 32766 and 36000 slots: 64- and 71-slot chunks
def test_align_large_with_the_chunk_cap(tokens):
    g = torch.Generator().manual_seed(tokens)
    ids = torch.randint(0, 100, (tokens, 6), generator=g, dtype=torch.int32)
    for ours, want in zip(moe_align_ops._align_cuda(ids, 128, 64), reference.moe_align(ids, 128, 64)):
        assert torch.equal(ours, want)
