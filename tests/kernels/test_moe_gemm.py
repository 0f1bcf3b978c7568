"""grouped_gemm: the reference against per-row products, every backend against the reference on
prefix views of parent weights, empty groups, gradients, registration, bad inputs."""

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import star_elastic_kernels as sek
from star_elastic_kernels.reference import moe as reference
from tests.helpers import backend_cases

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float16: dict(rtol=2e-2, atol=2e-2),
       torch.bfloat16: dict(rtol=5e-2, atol=5e-2), torch.float64: dict(rtol=1e-10, atol=1e-10)}


def skip_unsupported(backend, device, dtype):
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter computes bf16 wrongly; bf16 Triton runs on the GPU")


def problem(counts, n, k, parent_n, parent_k, dtype, device, trans_b=True, seed=0):
    """Rows grouped by ``counts`` and a prefix view of a parent (G, parent_n, parent_k) weight
    ((G, parent_k, parent_n) when not ``trans_b``)."""
    g = torch.Generator().manual_seed(seed)
    rows = sum(counts)
    a = torch.randn(rows, k, generator=g).to(dtype).to(device)
    shape = (parent_n, parent_k) if trans_b else (parent_k, parent_n)
    parent = torch.randn(len(counts), *shape, generator=g).to(dtype).to(device)
    b = parent[:, :n, :k] if trans_b else parent[:, :k, :n]
    ends = torch.tensor(counts).cumsum(0).to(torch.int32).to(device)
    return a, parent, b, ends


def rows_by_hand(a, b, counts, trans_b):
    """Each row times its group's matrix, one row at a time, in float64."""
    out, group_of_row = [], [g for g, c in enumerate(counts) for _ in range(c)]
    for row, group in zip(a.double(), group_of_row):
        w = b[group].double()
        out.append(w @ row if trans_b else row @ w)
    n = b.shape[1] if trans_b else b.shape[2]
    return torch.stack(out) if out else torch.zeros(0, n, dtype=torch.float64)


@pytest.mark.parametrize("trans_b", [True, False])
def test_reference_matches_rows_by_hand(trans_b):
    counts = [3, 0, 5, 1]
    a, _, b, ends = problem(counts, 6, 7, 9, 10, torch.float64, "cpu", trans_b)
    torch.testing.assert_close(reference.grouped_gemm(a, b, ends, trans_b), rows_by_hand(a, b, counts, trans_b))


@pytest.mark.parametrize("backend,device", backend_cases(with_cuda_backend=False))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("trans_b", [True, False])
@pytest.mark.parametrize("counts,n,k", [([3, 0, 5, 1], 6, 7), ([0, 0, 0], 5, 4), ([1], 1, 1),
                                        ([0, 37, 0, 20], 33, 18), ([70], 20, 40)])
def test_backends_match_reference_on_prefix_views(backend, device, dtype, trans_b, counts, n, k):
    skip_unsupported(backend, device, dtype)
    a, parent, b, ends = problem(counts, n, k, n + 5, k + 3, dtype, device, trans_b)
    got = sek.grouped_gemm(a, b, ends, trans_b=trans_b, backend=backend)
    want = rows_by_hand(a.cpu(), b.cpu(), counts, trans_b)
    assert got.shape == want.shape and got.dtype == dtype
    torch.testing.assert_close(got.cpu().double(), want, **TOL[dtype])


@pytest.mark.parametrize("backend,device", backend_cases(with_cuda_backend=False))
def test_empty_groups_are_never_read(backend, device):
    counts = [4, 0, 6, 0]
    a, parent, b, ends = problem(counts, 8, 8, 8, 8, torch.float32, device)
    parent[1] = float("nan")
    parent[3] = float("nan")
    got = sek.grouped_gemm(a, b, ends, backend=backend)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.cpu().double(), rows_by_hand(a.cpu(), b.cpu(), counts, True), **TOL[torch.float32])


def test_gradcheck_fp64_reference():
    for trans_b in (True, False):
        a, parent, b, ends = problem([2, 0, 3], 3, 4, 5, 6, torch.float64, "cpu", trans_b)
        a.requires_grad_()
        b = b.detach().clone().requires_grad_()
        assert torch.autograd.gradcheck(
            lambda x, w: sek.grouped_gemm(x, w, ends, trans_b=trans_b, backend="torch"), (a, b))


@pytest.mark.parametrize("backend,device", backend_cases(with_cuda_backend=False))
@pytest.mark.parametrize("trans_b", [True, False])
def test_gradients_match_reference_and_reach_the_parent_prefix(backend, device, trans_b):
    counts = [5, 0, 17, 2]
    a, parent, _, ends = problem(counts, 9, 11, 12, 13, torch.float32, device, trans_b)
    grads = {}
    for which in (backend, "torch"):
        x = a.detach().clone().requires_grad_()
        p = parent.detach().clone().requires_grad_()
        view = p[:, :9, :11] if trans_b else p[:, :11, :9]
        out = sek.grouped_gemm(x, view, ends, trans_b=trans_b, backend=which)
        out.backward(torch.linspace(-1, 1, out.numel(), device=device).view_as(out))
        grads[which] = (x.grad, p.grad)
    for ours, want in zip(grads[backend], grads["torch"]):
        torch.testing.assert_close(ours, want, **TOL[torch.float32])
    parent_grad = grads[backend][1]
    assert not parent_grad[1].any()  # an empty group gets a zero gradient
    assert not (parent_grad[:, 9:, :].any() if trans_b else parent_grad[:, 11:, :].any())


@pytest.mark.parametrize("backend,device", backend_cases(with_cuda_backend=False))
def test_opcheck(backend, device):
    a, parent, b, ends = problem([3, 0, 4], 5, 6, 7, 8, torch.float32, device)
    torch.library.opcheck(torch.ops.star_elastic.grouped_gemm.default, (a, b, ends, True, backend))
    torch.library.opcheck(torch.ops.star_elastic.grouped_gemm.default,
                          (a.requires_grad_(), b.detach().clone().requires_grad_(), ends, True, backend))
    torch.library.opcheck(torch.ops.star_elastic.grouped_gemm_wgrad.default,
                          (a.detach(), torch.randn(7, 3, device=device), ends, 3, backend))


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.interpreter)])
def test_torch_compile_fullgraph_matches_eager(backend):
    a, parent, b, ends = problem([3, 0, 4], 5, 6, 7, 8, torch.float32, "cpu")
    fn = lambda x, w: sek.grouped_gemm(x, w, ends, backend=backend) * 2  # noqa: E731
    torch.testing.assert_close(torch.compile(fn, fullgraph=True, backend="aot_eager")(a, b), fn(a, b))


def test_bad_inputs_raise_clear_errors():
    a, parent, b, ends = problem([3, 4], 5, 6, 7, 8, torch.float32, "cpu")
    cases = [
        (lambda: sek.grouped_gemm(a[:, :5], b, ends), ValueError, "K=5"),
        (lambda: sek.grouped_gemm(a, b.half(), ends), TypeError, "dtype"),
        (lambda: sek.grouped_gemm(a, b, ends[:1]), ValueError, "one entry per group"),
        (lambda: sek.grouped_gemm(a, b, torch.tensor([4, 3], dtype=torch.int32)), ValueError, "non-decreasing"),
        (lambda: sek.grouped_gemm(a, b, torch.tensor([3, 6], dtype=torch.int32)), ValueError, "ending at M=7"),
        (lambda: sek.grouped_gemm(a, b, ends.float()), TypeError, "offsets"),
        (lambda: sek.grouped_gemm(a, b[0], ends), ValueError, "b must be 3-D"),
        (lambda: sek.grouped_gemm(a, b.to("meta"), ends), ValueError, "b is on meta"),
        (lambda: sek.grouped_gemm(a, b, ends, trans_b=1), TypeError, "trans_b"),
    ]
    for call, error, words in cases:
        with pytest.raises(error, match=words):
            call()


@pytest.mark.interpreter
@settings(max_examples=int(os.environ.get("MOE_PROPERTY_EXAMPLES", "30")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(counts=st.lists(st.integers(0, 40), min_size=1, max_size=6), n=st.integers(1, 40),
       k=st.integers(1, 40), extra=st.integers(0, 5), trans_b=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float16]))
def test_property_triton_matches_reference(counts, n, k, extra, trans_b, dtype):
    a, parent, b, ends = problem(counts, n, k, n + extra, k + extra, dtype, "cpu", trans_b, seed=n * k)
    got = sek.grouped_gemm(a, b, ends, trans_b=trans_b, backend="triton")
    torch.testing.assert_close(got.double(), rows_by_hand(a, b, counts, trans_b), **TOL[dtype])


# --- the CUTLASS sm_90a grouped GEMM (cuda backend; GPU only) ---------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("counts,n,k,parent_n,parent_k", [
    ([3, 0, 130, 1], 64, 128, 96, 160),       # prefix view of a larger parent, an empty group
    ([0, 0, 0, 0], 64, 64, 64, 64),
    ([1, 5, 0, 257, 9, 0, 0, 40], 1856, 2688, 1856, 2688),  # Nemotron expert shapes
    ([17] * 16, 928, 1344, 1856, 2688),        # 50% neurons and channels of the parent
])
def test_cuda_grouped_gemm_matches_reference(counts, n, k, parent_n, parent_k):
    if not sek._extension.has_op("_moe_grouped_gemm"):
        pytest.fail("the CUDA extension lacks _moe_grouped_gemm: rebuild it")
    a, parent, b, ends = problem(counts, n, k, parent_n, parent_k, torch.bfloat16, "cuda")
    parent[[g for g, c in enumerate(counts) if c == 0]] = float("nan")  # empty groups are never read
    got = sek.grouped_gemm(a, b, ends, backend="cuda")
    want = reference.grouped_gemm(a.float(), b.float(), ends)
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2 * k ** 0.5)


@pytest.mark.gpu
def test_cuda_grouped_gemm_backward_matches_reference():
    if not sek._extension.has_op("_moe_grouped_gemm"):
        pytest.fail("the CUDA extension lacks _moe_grouped_gemm: rebuild it")
    a, parent, b, ends = problem([40, 0, 72], 64, 96, 128, 128, torch.bfloat16, "cuda")
    grads = {}
    for backend in ("cuda", "torch"):
        x = a.detach().float().to(torch.bfloat16 if backend == "cuda" else torch.float32).requires_grad_()
        w = b.detach().to(x.dtype).requires_grad_()
        out = sek.grouped_gemm(x, w, ends, backend=backend)
        out.float().sum().backward()
        grads[backend] = (out.float(), x.grad.float(), w.grad.float())
    for ours, want in zip(grads["cuda"], grads["torch"]):
        torch.testing.assert_close(ours, want, rtol=3e-2, atol=3e-1)


@pytest.mark.gpu
def test_cuda_grouped_gemm_refuses_unaligned_shapes_when_asked_explicitly():
    a, parent, b, ends = problem([3, 4], 12, 16, 13, 16, torch.bfloat16, "cuda")  # N=12: not a multiple of 8
    with pytest.raises(sek.BackendUnavailableError, match="multiples of 8"):
        sek.grouped_gemm(a, b, ends, backend="cuda")
    # auto picks Triton for the same call
    torch.testing.assert_close(sek.grouped_gemm(a, b, ends).float(),
                               reference.grouped_gemm(a.float(), b.float(), ends), rtol=2e-2, atol=5e-2)
