"""moe_route and moe_align: the reference against token-by-token formulations, every backend
against the reference, masks and prefixes, gradients, registration, bad inputs."""

import math

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import star_elastic_kernels as sek
from star_elastic_kernels import _backends
from star_elastic_kernels.reference import moe as reference
from tests.helpers import backend_cases


def route_by_hand(logits, top_k, score, bias, active, renormalize, scaling):
    """One token at a time with Python floats: the Nemotron v3 rule written out."""
    weights, ids = [], []
    for row in logits.double().tolist():
        if score == "sigmoid":
            scores = [1.0 / (1.0 + math.exp(-v)) for v in row]
        else:
            live = [math.exp(v) for v, a in zip(row, active) if a]
            total = sum(live)
            scores = [math.exp(v) / total if a else 0.0 for v, a in zip(row, active)]
        choice = [s + (bias[e] if bias is not None else 0.0) for e, s in enumerate(scores)]
        order = sorted((e for e in range(len(row)) if active[e]), key=lambda e: (-choice[e], e))[:top_k]
        chosen = [scores[e] for e in order]
        norm = sum(chosen) + 1e-20 if renormalize else 1.0
        weights.append([scaling * c / norm for c in chosen])
        ids.append(order)
    return torch.tensor(weights, dtype=torch.float32), torch.tensor(ids, dtype=torch.int32)


def random_logits(t, e, seed=0, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(t, e, generator=g) * 2).to(dtype).to(device), (torch.randn(e, generator=g) * 0.3).to(device)


@pytest.mark.parametrize("score", ["sigmoid", "softmax"])
@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("mask_kind", ["none", "prefix", "mask"])
def test_reference_matches_token_by_token_routing(score, renormalize, mask_kind):
    logits, bias = random_logits(11, 9, seed=1)
    active = [True] * 9
    kwargs = {}
    if mask_kind == "prefix":
        kwargs["num_experts"] = 6
        active = [e < 6 for e in range(9)]
    elif mask_kind == "mask":
        mask = torch.tensor([True, False, True, True, False, True, True, False, True])
        kwargs["expert_mask"] = mask
        active = mask.tolist()
    weights, ids = reference.moe_route(logits, top_k=3, score=score, correction_bias=bias,
                                       renormalize=renormalize, scaling=2.5, **kwargs)
    want_w, want_ids = route_by_hand(logits, 3, score, bias.tolist(), active, renormalize, 2.5)
    assert torch.equal(ids, want_ids)
    torch.testing.assert_close(weights, want_w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("score", ["sigmoid", "softmax"])
@pytest.mark.parametrize("shape,top_k", [((1, 8), 2), ((37, 16), 4), ((0, 8), 2), ((5, 128), 6),
                                         ((3, 6), 6)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_backends_match_reference(backend, device, score, shape, top_k, dtype):
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter computes bf16 wrongly; bf16 Triton runs on the GPU")
    logits, bias = random_logits(*shape, seed=2, device=device, dtype=dtype)
    got = sek.moe_route(logits, top_k=top_k, score=score, correction_bias=bias, scaling=2.5,
                        backend=backend)
    want = reference.moe_route(logits.cpu(), top_k=top_k, score=score, correction_bias=bias.cpu(),
                               scaling=2.5)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.int32
    assert got[0].shape == (shape[0], top_k) == got[1].shape
    assert torch.equal(got[1].cpu(), want[1])
    torch.testing.assert_close(got[0].cpu(), want[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("score", ["sigmoid", "softmax"])
def test_prefix_and_mask_never_choose_masked_experts(backend, device, score):
    logits, bias = random_logits(40, 12, seed=3, device=device)
    logits[:, 7:] += 100.0  # the masked experts would win every choice if they could be chosen
    prefix = sek.moe_route(logits, top_k=3, score=score, correction_bias=bias, num_experts=7,
                           backend=backend)
    assert int(prefix[1].max()) < 7
    # the prefix equals routing the first 7 experts alone (sliced copies) ...
    alone = reference.moe_route(logits[:, :7].clone(), top_k=3, score=score,
                                correction_bias=bias[:7].clone())
    assert torch.equal(prefix[1].cpu(), alone[1].cpu())
    torch.testing.assert_close(prefix[0].cpu(), alone[0].cpu())
    # ... and compact (T, e) logits give the same result.
    compact = sek.moe_route(logits[:, :7], top_k=3, score=score, correction_bias=bias,
                            num_experts=7, backend=backend)
    assert torch.equal(compact[1], prefix[1])
    torch.testing.assert_close(compact[0], prefix[0])
    mask = torch.zeros(12, dtype=torch.bool, device=device)
    mask[[0, 2, 3, 8, 11]] = True
    masked = sek.moe_route(logits, top_k=3, score=score, correction_bias=bias, expert_mask=mask,
                           backend=backend)
    assert bool(mask[masked[1].long()].all())


@pytest.mark.parametrize("score", ["sigmoid", "softmax"])
@pytest.mark.parametrize("renormalize", [True, False])
def test_route_gradcheck_fp64(score, renormalize):
    logits, bias = random_logits(5, 7, seed=4)
    logits = logits.double().requires_grad_()

    def weights_only(x):
        return sek.moe_route(x, top_k=3, score=score, correction_bias=bias.double(),
                             num_experts=6, renormalize=renormalize, scaling=1.5, backend="torch")[0]

    # routing scores in fp32 by specification, so finite differences need a coarse step
    assert torch.autograd.gradcheck(weights_only, (logits,), eps=1e-3, atol=2e-3, rtol=1e-2)
    # the registered backward equals autograd through the reference
    x = logits.detach().clone().requires_grad_()
    ref_w = reference.moe_route(x, top_k=3, score=score, correction_bias=bias.double(),
                                num_experts=6, renormalize=renormalize, scaling=1.5)[0]
    g = torch.randn_like(ref_w.float())
    (ref_grad,) = torch.autograd.grad(ref_w, x, g)
    y = logits.detach().clone().float().requires_grad_()
    ours = sek.moe_route(y, top_k=3, score=score, correction_bias=bias, num_experts=6,
                         renormalize=renormalize, scaling=1.5, backend="triton"
                         if _backends.triton_interpreter_enabled() else "torch")[0]
    (our_grad,) = torch.autograd.grad(ours, y, g)
    torch.testing.assert_close(our_grad.double(), ref_grad, rtol=1e-4, atol=1e-6)


# --- moe_align ------------------------------------------------------------------------------------


def align_by_hand(ids, num_experts, block_m):
    flat = ids.reshape(-1).tolist()
    slots = [s for e in range(num_experts) for s, v in enumerate(flat) if v == e]
    counts = [flat.count(e) for e in range(num_experts)]
    offsets, blocks = [0], [0]
    for c in counts:
        offsets.append(offsets[-1] + c)
        blocks.append(blocks[-1] + -(-c // block_m))
    return [torch.tensor(x, dtype=torch.int32) for x in (slots, counts, offsets, blocks)]


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("t,k,num_experts,block_m", [(0, 2, 4, 16), (1, 1, 4, 16), (37, 3, 8, 16),
                                                     (50, 6, 128, 64), (9, 2, 5, 1)])
def test_align_matches_by_hand(backend, device, t, k, num_experts, block_m):
    g = torch.Generator().manual_seed(t)
    # only the first half of the experts receive tokens: the rest must get no slots and no blocks
    ids = torch.stack([torch.randperm(max(num_experts // 2, k), generator=g)[:k] for _ in range(t)]) \
        if t else torch.empty(0, k, dtype=torch.int64)
    ids = ids.to(torch.int32).to(device)
    got = sek.moe_align(ids, num_experts, block_m, backend=backend)
    for name, ours, want in zip(got._fields, got, align_by_hand(ids.cpu(), num_experts, block_m)):
        assert ours.dtype == torch.int32, name
        assert torch.equal(ours.cpu(), want), name


@pytest.mark.parametrize("backend,device", backend_cases())
def test_align_all_tokens_on_one_expert(backend, device):
    ids = torch.full((19, 1), 3, dtype=torch.int64, device=device)
    got = sek.moe_align(ids, 6, 8, backend=backend)
    assert torch.equal(got.sorted_slots.cpu(), torch.arange(19, dtype=torch.int32))
    assert got.counts.tolist() == [0, 0, 0, 19, 0, 0]
    assert got.block_offsets.tolist() == [0, 0, 0, 0, 3, 3, 3]


# --- registration, compile, bad inputs --------------------------------------------------------------


@pytest.mark.parametrize("backend,device", backend_cases())
def test_opcheck(backend, device):
    logits, bias = random_logits(6, 8, seed=5, device=device)
    mask = torch.tensor([1, 1, 0, 1, 1, 1, 0, 1], dtype=torch.bool, device=device)
    torch.library.opcheck(torch.ops.star_elastic.moe_route.default,
                          (logits, bias, None, 2, "sigmoid", 5, True, 2.5, backend))
    torch.library.opcheck(torch.ops.star_elastic.moe_route.default,
                          (logits.requires_grad_(), None, mask, 3, "softmax", -1, True, 1.0, backend))
    ids = torch.randint(0, 8, (6, 2), dtype=torch.int32, device=device)
    torch.library.opcheck(torch.ops.star_elastic.moe_align.default, (ids, 8, 4, backend))


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.interpreter)])
def test_torch_compile_fullgraph_matches_eager(backend):
    logits, bias = random_logits(10, 8, seed=6)

    def route_and_align(x):
        weights, ids = sek.moe_route(x, top_k=2, correction_bias=bias, num_experts=6, scaling=2.5,
                                     backend=backend)
        return weights, ids, *sek.moe_align(ids, 8, 4, backend=backend)

    compiled = torch.compile(route_and_align, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(logits), route_and_align(logits)):
        assert torch.equal(got, want)


def _bad_route_calls():
    x = torch.randn(4, 8)
    return [
        (lambda: sek.moe_route(x, top_k=9), ValueError, "top_k=9"),
        (lambda: sek.moe_route(x, top_k=4, num_experts=3), ValueError, "active experts"),
        (lambda: sek.moe_route(x, top_k=3, expert_mask=torch.tensor([1, 1, 0, 0, 0, 0, 0, 0]).bool()),
         ValueError, "active experts"),
        (lambda: sek.moe_route(x, top_k=0), ValueError, "top_k"),
        (lambda: sek.moe_route(x, top_k=2, score="relu"), ValueError, "score"),
        (lambda: sek.moe_route(x.int(), top_k=2), TypeError, "logits"),
        (lambda: sek.moe_route(x[0], top_k=2), ValueError, "logits"),
        (lambda: sek.moe_route(x, top_k=2, correction_bias=torch.zeros(7)), ValueError, "logits"),
        (lambda: sek.moe_route(x, top_k=2, num_experts=9), ValueError, "num_experts"),
        (lambda: sek.moe_route(x, top_k=2, num_experts=4, expert_mask=torch.ones(8, dtype=torch.bool)),
         ValueError, "not both"),
        (lambda: sek.moe_route(x, top_k=2, expert_mask=torch.ones(8)), TypeError, "expert_mask"),
        (lambda: sek.moe_route(x, top_k=2, correction_bias=torch.zeros(8, device="meta")),
         ValueError, "correction_bias"),
        (lambda: sek.moe_align(torch.tensor([[0, 8]]), 8), ValueError, "ids must lie in [0, 8)"),
        (lambda: sek.moe_align(torch.tensor([[0, -1]]), 8), ValueError, "ids"),
        (lambda: sek.moe_align(torch.tensor([[0.0]]), 8), TypeError, "ids"),
        (lambda: sek.moe_align(torch.tensor([[0]]), 8, 0), ValueError, "block_m"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_route_calls())))
def test_bad_inputs_raise_clear_errors(case):
    call, error, words = _bad_route_calls()[case]
    with pytest.raises(error, match=words.replace("[", r"\[").replace(")", r"\)").replace("(", r"\(")):
        call()


def test_explicit_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(sek.BackendUnavailableError, match="moe_route"):
        sek.moe_route(torch.randn(2, 4), top_k=1, backend="triton")
    with pytest.raises(sek.BackendUnavailableError, match="cuda"):
        sek.moe_route(torch.randn(2, 4), top_k=1, backend="cuda")


@pytest.mark.interpreter
@settings(max_examples=int(os.environ.get("MOE_PROPERTY_EXAMPLES", "40")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(t=st.integers(0, 20), e=st.integers(2, 40), data=st.data(),
       score=st.sampled_from(["sigmoid", "softmax"]), renormalize=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float16]))
def test_property_triton_route_matches_reference(t, e, data, score, renormalize, dtype):
    prefix = data.draw(st.integers(1, e))
    k = data.draw(st.integers(1, prefix))
    logits, bias = random_logits(t, e, seed=t * 41 + e, dtype=dtype)
    kwargs = dict(top_k=k, score=score, correction_bias=bias, num_experts=prefix,
                  renormalize=renormalize, scaling=2.5)
    got = sek.moe_route(logits, backend="triton", **kwargs)
    want = reference.moe_route(logits, **kwargs)
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)


# --- the cuda backend (csrc/moe/route.cu, align.cu) at Nemotron sizes; GPU only ---------------
# (its per-thread code is also checked on the CPU: tests/kernels/test_moe_cuda_host.py)


@pytest.mark.gpu
@pytest.mark.parametrize("score", ["sigmoid", "softmax"])
@pytest.mark.parametrize("tokens", [1, 4096])
def test_cuda_route_and_align_at_nemotron_sizes(score, tokens):
    if not (sek._extension.has_op("_moe_route") and sek._extension.has_op("_moe_align")):
        pytest.fail("the CUDA extension lacks _moe_route/_moe_align: rebuild it")
    logits, bias = random_logits(tokens, 128, seed=tokens, device="cuda")
    mask = torch.rand(128, generator=torch.Generator().manual_seed(1)) < 0.7
    mask[:6] = True
    for kwargs in (dict(num_experts=96), dict(expert_mask=mask.cuda())):
        got = sek.moe_route(logits, top_k=6, score=score, correction_bias=bias, scaling=2.5,
                            backend="cuda", **kwargs)
        want = reference.moe_route(logits.cpu(), top_k=6, score=score, correction_bias=bias.cpu(),
                                   scaling=2.5, **{n: v.cpu() if torch.is_tensor(v) else v
                                                   for n, v in kwargs.items()})
        assert torch.equal(got[1].cpu(), want[1])
        torch.testing.assert_close(got[0].cpu(), want[0], rtol=1e-5, atol=1e-6)
        aligned = sek.moe_align(got[1], 128, 64, backend="cuda")
        for ours, by_ref in zip(aligned, reference.moe_align(want[1], 128, 64)):
            assert torch.equal(ours.cpu(), by_ref)
