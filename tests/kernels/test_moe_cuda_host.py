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


# --- moe_ffn's elementwise kernels (csrc/moe/ffn_elementwise.cu) and their composition -----------

needs_ffn_ops = pytest.mark.skipif(
    not all(_extension.has_op(op)
            for op in ("_moe_gather_rows", "_moe_activation", "_moe_combine")),
    reason="the CUDA extension (with the moe_ffn elementwise ops) is not built here")


@needs_ffn_ops
@pytest.mark.parametrize("rows,cols,tokens,top_k", [(0, 8, 0, 2), (12, 16, 4, 3), (35, 13, 7, 5)])
def test_gather_rows(rows, cols, tokens, top_k):
    g = torch.Generator().manual_seed(rows)
    parent = torch.randn(max(tokens, 1), cols + 8, generator=g).bfloat16()
    x = parent[:tokens, 3 : 3 + cols]  # a strided, unaligned view: the element-by-element path
    slots = torch.randperm(tokens * top_k, generator=g)[:rows].to(torch.int32)
    out = torch.empty(rows, cols, dtype=torch.bfloat16)
    torch.ops.star_elastic._moe_gather_rows(x, slots, top_k, out)
    assert torch.equal(out, x[slots.long() // top_k])
    if cols % 8 == 0 and tokens:  # and the 16-byte vector path
        aligned = parent[:tokens, :cols].contiguous()
        torch.ops.star_elastic._moe_gather_rows(aligned, slots, top_k, out)
        assert torch.equal(out, aligned[slots.long() // top_k])


@needs_ffn_ops
@pytest.mark.parametrize("glu", [False, True])
@pytest.mark.parametrize("cols", [16, 21])
def test_activation(glu, cols):
    g = torch.Generator().manual_seed(cols)
    gate = (torch.randn(30, cols, generator=g) * 3).bfloat16()
    gate[0, :4] = torch.tensor([0.0, -0.0, float("inf"), -float("inf")])
    value = (torch.randn(30, cols, generator=g) * 3).bfloat16() if glu else None
    out = torch.empty_like(gate)
    torch.ops.star_elastic._moe_activation(gate, value, out)
    if glu:
        want = (torch.nn.functional.silu(gate.float()) * value.float()).bfloat16()
        # torch's vectorised exp may differ from expf in the last fp32 bit: at most one bf16 ulp
        torch.testing.assert_close(out[1:].float(), want[1:].float(), rtol=8e-3, atol=1e-6)
    else:
        want = torch.square(torch.relu(gate.float())).bfloat16()
        assert torch.equal(out, want)


@needs_ffn_ops
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("tokens,top_k,cols", [(1, 1, 8), (9, 3, 24), (17, 6, 13)])
def test_combine(shared, tokens, top_k, cols):
    g = torch.Generator().manual_seed(tokens * 10 + top_k)
    slots = torch.randperm(tokens * top_k, generator=g).to(torch.int32)
    y = torch.randn(tokens * top_k, cols, generator=g).bfloat16()
    weights = torch.rand(tokens, top_k, generator=g)
    extra = torch.randn(tokens, cols, generator=g).bfloat16() if shared else None
    out = torch.empty(tokens, cols, dtype=torch.bfloat16)
    inverse = torch.empty_like(slots)
    torch.ops.star_elastic._moe_combine(y, slots, weights, extra, inverse, out, 2.5)
    per_slot = torch.empty(tokens * top_k, cols)
    per_slot[slots.long()] = y.float()
    want = (per_slot.view(tokens, top_k, cols) * weights[..., None]).sum(1) * 2.5
    if shared:
        want = want + extra.float()
    assert torch.equal(inverse[slots.long()], torch.arange(tokens * top_k, dtype=torch.int32))
    torch.testing.assert_close(out.float(), want.bfloat16().float(), rtol=8e-3, atol=1e-5)


@needs_ffn_ops
@pytest.mark.parametrize("activation", ["relu2", "silu_glu"])
@pytest.mark.parametrize("shared", [0, 16])
@pytest.mark.parametrize("t,widths", [(0, (None, None, None)), (1, (None, None, None)),
                                      (29, (None, None, None)), (29, (24, 16, 8))])
def test_ffn_composition_with_reference_gemm(activation, shared, t, widths):
    """The cuda backend's composition (align, gather, GEMMs, activation, combine) on the CPU with
    the reference grouped GEMM in place of CUTLASS: it equals the reference moe_ffn in bf16."""
    from tests.kernels.test_moe_ffn import TOL, make_layer

    layer = make_layer(t, 8, 3, 32, 32, activation=activation, shared=shared, seed=t,
                       dtype=torch.bfloat16, num_experts=6)
    for name in ("w_up", "w_down"):
        layer[name][6:] = float("nan")  # experts outside the prefix are never read
    r, d, s = widths
    r, d, s = r or 32, d or 32, (s or 16) if shared else 0
    hidden = layer["hidden"][:, :d].contiguous()
    got = moe_ffn_ops._moe_ffn_cuda(hidden, layer["w_up"], layer["w_down"], layer["weights"],
                                layer["ids"], layer["shared_up"], layer["shared_down"], activation,
                                r, d, s, 2.5, gemm=reference.grouped_gemm)
    want = reference.moe_ffn(hidden, layer["w_up"], layer["w_down"], layer["weights"], layer["ids"],
                             activation=activation, ffn_width=r, hidden_width=d,
                             shared_up=layer["shared_up"], shared_down=layer["shared_down"],
                             shared_width=s or None, scaling=2.5)
    assert got.shape == (t, d) and got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), **TOL[torch.bfloat16])


@pytest.mark.parametrize("tokens", [5461, 6000])  # 32766 and 36000 slots: 64- and 71-slot chunks
def test_align_large_with_the_chunk_cap(tokens):
    g = torch.Generator().manual_seed(tokens)
    ids = torch.randint(0, 100, (tokens, 6), generator=g, dtype=torch.int32)
    for ours, want in zip(moe_align_ops._align_cuda(ids, 128, 64), reference.moe_align(ids, 128, 64)):
        assert torch.equal(ours, want)
