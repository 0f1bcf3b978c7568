"""ssd_scan: the reference and the Triton kernels against a float64 sequential oracle, mamba-ssm's
SSD, sliced copies (nesting), separate runs (varlen), and their own continuation; gradients,
opcheck, torch.compile, bad inputs and a property test."""

import os
import time

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import star_elastic_kernels as sek
from star_elastic_kernels import _backends, _extension
from star_elastic_kernels.ssm import check_device_errors
from star_elastic_kernels.ssm import scan as scan_module
from star_elastic_kernels.ssm._chunks import chunk_tables, packed_bounds
from star_elastic_kernels.ssm._device_checks import SCAN_CHAIN_STALLED
from tests.helpers import backend_cases
from tests.kernels.ssm_cases import (
    import_mamba_oracles,
    parent_heads,
    scan_inputs,
    sequential_scan,
    skip_unsupported,
    slice_heads,
)

H, P, G, N = 8, 6, 2, 5  # 4 heads per group
SCAN_CASES = backend_cases(with_cuda_backend=True)
TOL = {torch.float32: dict(atol=2e-4, rtol=2e-4), torch.float16: dict(atol=2e-2, rtol=2e-2),
       torch.bfloat16: dict(atol=8e-2, rtol=5e-2)}


def sliced(a, k, p, seqs=None):
    """Compact activations for the slice (k, p) (copies), and parent parameters untouched."""
    init = a["init"] if seqs is None else a["init"][:1].expand(seqs, -1, -1, -1)
    return dict(x=slice_heads(a["x"], H, G, k, p), z=slice_heads(a["z"], H, G, k, p),
                dt=slice_heads(a["dt"], H, G, k), init=slice_heads(init, H, G, k, p, dim=1))


@pytest.mark.parametrize("backend,device", SCAN_CASES)
@pytest.mark.parametrize("k,p", [(4, 6), (3, 4), (1, 1)])
def test_matches_sequential_oracle(backend, device, k, p):
    a = scan_inputs(2, 9, H, P, G, N, seed=1, device=device)
    s = sliced(a, k, p)
    y, final = sek.ssd_scan(s["x"], s["dt"], a["A"], a["B"], a["C"], chunk_size=4, D=a["D2"], z=s["z"],
                            dt_bias=a["dt_bias"], dt_softplus=True, dt_limit=(0.05, 2.0),
                            initial_states=s["init"], return_final_states=True, heads_per_group=k,
                            head_dim=p, backend=backend)
    want_y, want_final = sequential_scan(*(t.cpu() for t in (s["x"], s["dt"], a["A"], a["B"], a["C"])),
                                         D=a["D2"].cpu(), z=s["z"].cpu(), dt_bias=a["dt_bias"].cpu(),
                                         dt_softplus=True, dt_limit=(0.05, 2.0),
                                         initial_states=s["init"].cpu(), heads_per_group=k)
    assert y.shape == (2, 9, G * k, p) and y.dtype == torch.float32 and y.is_contiguous()
    assert final.shape == (2, G * k, p, N) and final.dtype == torch.float32
    torch.testing.assert_close(y.cpu().double(), want_y, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(final.cpu().double(), want_final, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("backend,device", SCAN_CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_against_the_reference(backend, device, dtype):
    skip_unsupported(backend, device, dtype)
    a = scan_inputs(2, 20, H, P, G, N, seed=2, dtype=dtype, device=device)
    kw = dict(chunk_size=8, D=a["D"], z=a["z"], dt_bias=a["dt_bias"], dt_softplus=True,
              return_final_states=True)
    y, final = sek.ssd_scan(a["x"], a["dt"], a["A"], a["B"], a["C"], backend=backend, **kw)
    want_y, want_final = sek.ssd_scan(*(t.cpu() for t in (a["x"], a["dt"], a["A"], a["B"], a["C"])),
                                      backend="torch", **{n: v.cpu() if torch.is_tensor(v) else v
                                                          for n, v in kw.items()})
    assert y.dtype == dtype
    torch.testing.assert_close(y.cpu(), want_y, **TOL[dtype])
    torch.testing.assert_close(final.cpu(), want_final, **TOL[dtype])


@pytest.mark.parametrize("backend,device", SCAN_CASES)
@pytest.mark.parametrize("chunk_size", [1, 3, 16])
def test_result_does_not_depend_on_chunk_size(backend, device, chunk_size):
    a = scan_inputs(1, 10, H, P, G, N, seed=3, device=device)
    y = sek.ssd_scan(a["x"], a["dt"], a["A"], a["B"], a["C"], chunk_size=chunk_size, D=a["D"],
                     dt_softplus=True, backend=backend)
    want = sek.ssd_scan(a["x"].cpu(), a["dt"].cpu(), a["A"].cpu(), a["B"].cpu(), a["C"].cpu(),
                        D=a["D"].cpu(), dt_softplus=True, backend="torch")
    torch.testing.assert_close(y.cpu(), want, **TOL[torch.float32])


def test_reference_matches_mamba_ssd_minimal():
    minimal, _ = import_mamba_oracles()
    a = scan_inputs(2, 16, H, P, G, N, seed=4, dtype=torch.float64)
    dt = F.softplus(a["dt"].double() + a["dt_bias"].double())
    per_head = torch.arange(H) // (H // G)
    Y, final = minimal.ssd_minimal_discrete(
        a["x"] * dt[..., None], a["A"].double() * dt, a["B"][:, :, per_head], a["C"][:, :, per_head],
        block_len=4, initial_states=a["init"].double()[:, None])
    y, ours_final = sek.ssd_scan(a["x"].float(), a["dt"], a["A"], a["B"].float(), a["C"].float(),
                                 dt_bias=a["dt_bias"], dt_softplus=True, initial_states=a["init"],
                                 return_final_states=True, backend="torch")
    torch.testing.assert_close(y.double(), Y, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(ours_final.double(), final, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("backend,device", SCAN_CASES)
@pytest.mark.parametrize("k,p", [(4, 6), (3, 5), (2, 3), (1, 6)])
def test_nesting_parent_parameters_equal_sliced_copies(backend, device, k, p):
    a = scan_inputs(2, 10, H, P, G, N, seed=5, device=device)
    s = sliced(a, k, p)
    kw = dict(chunk_size=4, z=s["z"], dt_softplus=True, initial_states=s["init"],
              return_final_states=True, backend=backend)
    elastic = sek.ssd_scan(s["x"], s["dt"], a["A"], a["B"], a["C"], D=a["D2"], dt_bias=a["dt_bias"],
                           heads_per_group=k, head_dim=p, **kw)
    heads = torch.tensor(parent_heads(H, G, k), device=device)
    dense = sek.ssd_scan(s["x"], s["dt"], a["A"][heads].clone(), a["B"], a["C"],
                         D=a["D2"][heads, :p].clone(), dt_bias=a["dt_bias"][heads].clone(), **kw)
    for got, want in zip(elastic, dense):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("backend,device", SCAN_CASES)
def test_strided_views_are_read_in_place(backend, device):
    """x, z and dt as views into one packed projection (non-contiguous, unit inner stride)."""
    a = scan_inputs(2, 9, H, P, G, N, seed=6, device=device)
    packed = torch.cat([a["z"].flatten(2), a["x"].flatten(2), a["dt"]], dim=-1)
    z = packed[..., : H * P].unflatten(-1, (H, P))
    x = packed[..., H * P : 2 * H * P].unflatten(-1, (H, P))
    dt = packed[..., 2 * H * P :]
    assert not x.is_contiguous() and x.stride(-1) == 1
    y = sek.ssd_scan(x, dt, a["A"], a["B"], a["C"], chunk_size=4, z=z, dt_softplus=True, backend=backend)
    want = sek.ssd_scan(a["x"], a["dt"], a["A"], a["B"], a["C"], chunk_size=4, z=a["z"], dt_softplus=True,
                        backend="torch")
    torch.testing.assert_close(y, want, **TOL[torch.float32])


@pytest.mark.parametrize("backend,device", SCAN_CASES)
def test_varlen_equals_separate_runs(backend, device):
    k, p = 3, 4
    a = scan_inputs(1, 17, H, P, G, N, seed=7, device=device)
    cu = torch.tensor([0, 5, 5, 14, 17, 17], device=device)  # two empty sequences
    init = torch.randn(5, G * k, p, N, generator=torch.Generator().manual_seed(0)).to(device)
    s = sliced(a, k, p)
    kw = dict(chunk_size=4, D=a["D"], dt_bias=a["dt_bias"], dt_softplus=True, heads_per_group=k,
              head_dim=p, return_final_states=True, backend=backend)
    y, finals = sek.ssd_scan(s["x"], s["dt"], a["A"], a["B"], a["C"], z=s["z"], cu_seqlens=cu,
                             initial_states=init, **kw)
    assert finals.shape == (5, G * k, p, N)
    bounds = cu.tolist()
    for i, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        part, final = sek.ssd_scan(s["x"][:, start:end], s["dt"][:, start:end], a["A"],
                                   a["B"][:, start:end], a["C"][:, start:end], z=s["z"][:, start:end],
                                   initial_states=init[i : i + 1], **kw)
        torch.testing.assert_close(y[:, start:end], part, **TOL[torch.float32])
        torch.testing.assert_close(finals[i : i + 1], final, **TOL[torch.float32])
    assert torch.equal(finals[1], init[1]) and torch.equal(finals[4], init[4])


@pytest.mark.parametrize("backend,device", SCAN_CASES)
def test_continuing_from_final_states_equals_the_longer_prefill(backend, device):
    a = scan_inputs(2, 14, H, P, G, N, seed=8, device=device)
    kw = dict(chunk_size=4, D=a["D"], dt_bias=a["dt_bias"], dt_softplus=True, backend=backend)
    full = sek.ssd_scan(a["x"], a["dt"], a["A"], a["B"], a["C"], z=a["z"], **kw)
    cut = 9
    first, state = sek.ssd_scan(a["x"][:, :cut], a["dt"][:, :cut], a["A"], a["B"][:, :cut],
                                a["C"][:, :cut], z=a["z"][:, :cut], return_final_states=True, **kw)
    second = sek.ssd_scan(a["x"][:, cut:], a["dt"][:, cut:], a["A"], a["B"][:, cut:], a["C"][:, cut:],
                          z=a["z"][:, cut:], initial_states=state, **kw)
    torch.testing.assert_close(torch.cat([first, second], 1), full, **TOL[torch.float32])


@pytest.mark.parametrize("backend,device", SCAN_CASES)
def test_empty_inputs(backend, device):
    a = scan_inputs(2, 3, H, P, G, N, seed=9, device=device)
    y, final = sek.ssd_scan(a["x"][:, :0], a["dt"][:, :0], a["A"], a["B"][:, :0], a["C"][:, :0],
                            initial_states=a["init"], return_final_states=True, backend=backend)
    assert y.shape == (2, 0, H, P) and torch.equal(final, a["init"])
    y, final = sek.ssd_scan(a["x"][:0], a["dt"][:0], a["A"], a["B"][:0], a["C"][:0],
                            return_final_states=True, backend=backend)
    assert y.shape == (0, 3, H, P) and final.shape == (0, H, P, N)
    _, final = sek.ssd_scan(a["x"][:1, :0], a["dt"][:1, :0], a["A"], a["B"][:1, :0], a["C"][:1, :0],
                            cu_seqlens=torch.tensor([0, 0], device=device), return_final_states=True,
                            backend=backend)
    assert torch.equal(final, torch.zeros(1, H, P, N, device=device))


# --- gradients -----------------------------------------------------------------------------------


def test_gradcheck_fp64_through_the_reference():
    k, p, n = 1, 2, 3
    g = torch.Generator().manual_seed(10)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: E731
    x, z, dt = r(1, 5, 2 * k, p), r(1, 5, 2 * k, p), r(1, 5, 2 * k)
    B, C, init = r(1, 5, 2, n), r(1, 5, 2, n), r(1, 2 * k, p, n)
    A = (-torch.rand(4, generator=g, dtype=torch.float64) - 0.2).requires_grad_()
    D, dt_bias = r(4, 3), r(4)

    def run(x, dt, A, B, C, D, z, dt_bias, init):
        return sek.ssd_scan(x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=True, initial_states=init,
                            return_final_states=True, heads_per_group=k, head_dim=p, backend="torch")

    assert torch.autograd.gradcheck(run, (x, dt, A, B, C, D, z, dt_bias, init), eps=1e-6, atol=1e-5)
    cu = torch.tensor([0, 2, 5])
    init2 = r(2, 2 * k, p, n)
    assert torch.autograd.gradcheck(
        lambda x, B, init: sek.ssd_scan(x, dt, A, B, C, cu_seqlens=cu, initial_states=init,
                                        return_final_states=True, heads_per_group=k, head_dim=p,
                                        backend="torch"), (x, B, init2), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend,device", SCAN_CASES)
def test_gradients_of_every_backend_match_autograd_through_the_oracle(backend, device):
    k, p = 2, 4
    a = scan_inputs(1, 7, H, P, G, N, seed=11, device=device)
    s = sliced(a, k, p)
    leaves = {n: t.detach().clone().requires_grad_() for n, t in
              dict(x=s["x"], dt=s["dt"], A=a["A"], B=a["B"], C=a["C"], D=a["D"], z=s["z"],
                   dt_bias=a["dt_bias"], init=s["init"]).items()}
    y, final = sek.ssd_scan(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], chunk_size=4,
                            D=leaves["D"], z=leaves["z"], dt_bias=leaves["dt_bias"], dt_softplus=True,
                            initial_states=leaves["init"], return_final_states=True, heads_per_group=k,
                            head_dim=p, backend=backend)
    (y.square().sum() + final.sum()).backward()
    oracle = {n: t.detach().cpu().double().requires_grad_() for n, t in leaves.items()}
    want_y, want_final = sequential_scan(oracle["x"], oracle["dt"], oracle["A"], oracle["B"], oracle["C"],
                                         D=oracle["D"], z=oracle["z"], dt_bias=oracle["dt_bias"],
                                         dt_softplus=True, initial_states=oracle["init"], heads_per_group=k)
    (want_y.square().sum() + want_final.sum()).backward()
    for name in leaves:
        torch.testing.assert_close(leaves[name].grad.cpu().double(), oracle[name].grad, atol=1e-3,
                                   rtol=1e-3, msg=lambda m: f"grad of {name}: {m}")


def _scan_grads(backend, device, b, l, k, p, cu, chunk, gate, D_shape, n=N, seed=18):
    """Gradients of a weighted sum of y and the final states; D_shape's P may exceed the module's
    P (x only needs p <= D's P); ``n`` is the state size."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    seqs = b if cu is None else len(cu) - 1
    t = dict(x=r(b, l, G * k, p), dt=r(b, l, G * k) * 0.5, A=-torch.rand(H, generator=g) - 0.2, B=r(b, l, G, n),
             C=r(b, l, G, n), D=r(*D_shape), z=r(b, l, G * k, p) if gate else None, dt_bias=r(H) * 0.3,
             init=r(seqs, G * k, p, n))
    leaves = {n: v.to(device).requires_grad_() for n, v in t.items() if v is not None}
    y, final = sek.ssd_scan(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], chunk_size=chunk,
                            D=leaves["D"], z=leaves.get("z"), dt_bias=leaves["dt_bias"], dt_softplus=True,
                            dt_limit=(0.05, 1.5), initial_states=leaves["init"], return_final_states=True,
                            heads_per_group=k, head_dim=p, cu_seqlens=None if cu is None else cu.to(device),
                            backend=backend)
    weights = torch.randn(y.shape, generator=g).to(device), torch.randn(final.shape, generator=g).to(device)
    ((y * weights[0]).sum() + (final * weights[1]).sum()).backward()
    return {n: v.grad.cpu() for n, v in leaves.items()}


@pytest.mark.parametrize("device", [pytest.param("cpu", marks=pytest.mark.interpreter),
                                    pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("case", [
    dict(b=2, l=11, k=3, p=4, cu=None, chunk=4, gate=True, D_shape=(H, P)),
    dict(b=1, l=11, k=2, p=5, cu=torch.tensor([0, 3, 3, 11]), chunk=4, gate=True, D_shape=(H,)),
    dict(b=1, l=9, k=4, p=6, cu=None, chunk=16, gate=False, D_shape=(H,)),
    dict(b=1, l=6, k=1, p=40, cu=None, chunk=4, gate=True, D_shape=(H, 40)),
    dict(b=1, l=70, k=1, p=70, cu=torch.tensor([0, 66, 70]), chunk=256, gate=True, D_shape=(H, 70)),
    dict(b=1, l=67, k=1, p=18, cu=None, chunk=64, gate=True, D_shape=(H, 18), n=80),
], ids=["batched-clamped", "varlen-empty-seq", "one-chunk-no-gate", "wide-head", "long-chunks-channel-blocks",
        "state-blocks"])
def test_triton_backward_matches_reference_autograd(device, case):
    """The Triton backward kernels against autograd through the reference recurrence (itself
    checked against gradcheck and the float64 oracle above); dt_limit clamps some steps."""
    ours = _scan_grads("triton", device, **case)
    want = _scan_grads("torch", "cpu", **case)
    assert ours.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(ours[name], want[name], atol=1e-4, rtol=1e-4, msg=lambda m: f"d{name}: {m}")


# --- registration --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend,device", SCAN_CASES)
def test_opcheck(backend, device):
    k, p = 3, 4
    a = scan_inputs(1, 6, H, P, G, N, seed=12, device=device)
    s = sliced(a, k, p)
    args = (s["x"], s["dt"], a["A"], a["B"], a["C"], a["D2"], s["z"], a["dt_bias"], s["init"], None, 4, True,
            0.0, float("inf"), k, p, torch.float32, backend)
    torch.library.opcheck(torch.ops.star_elastic.ssd_scan.default, args)
    cu = torch.tensor([0, 2, 6], device=device)
    varlen = (s["x"], s["dt"], a["A"], a["B"], a["C"], None, None, None, None, cu, 4, False, 0.0,
              float("inf"), k, p, torch.float32, backend)
    torch.library.opcheck(torch.ops.star_elastic.ssd_scan.default, varlen)


def test_opcheck_autograd_registration():
    a = scan_inputs(1, 4, H, P, G, N, seed=13)
    args = [t.requires_grad_() for t in (a["x"], a["dt"], a["A"], a["B"], a["C"])]
    torch.library.opcheck(torch.ops.star_elastic.ssd_scan.default,
                          (*args, None, None, None, None, None, 4, False, 0.0, float("inf"), 4, P, torch.float32,
                           "torch"),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_torch_compile_fullgraph_matches_eager():
    a = scan_inputs(1, 6, H, P, G, N, seed=14)

    def layer(x, dt, B, C):
        return sek.ssd_scan(x, dt, a["A"], B, C, chunk_size=4, D=a["D"], dt_bias=a["dt_bias"], dt_softplus=True,
                            heads_per_group=2, head_dim=4)

    s = sliced(a, 2, 4)
    compiled = torch.compile(layer, fullgraph=True)
    torch.testing.assert_close(compiled(s["x"], s["dt"], a["B"], a["C"]), layer(s["x"], s["dt"], a["B"], a["C"]))


# --- argument checking ---------------------------------------------------------------------------


def _bad_calls():
    a = scan_inputs(2, 5, H, P, G, N, seed=15)
    x, dt, A, B, C = a["x"], a["dt"], a["A"], a["B"], a["C"]
    s = lambda **kw: (lambda: sek.ssd_scan(**{**dict(x=x, dt=dt, A=A, B=B, C=C), **kw}))  # noqa: E731
    return [
        (s(heads_per_group=5), ValueError, "heads_per_group=5 must be in [1, H/G=4]"),
        (s(heads_per_group=0), ValueError, "heads_per_group=0"),
        (s(x=x[:, :, :6], dt=dt[:, :, :6], heads_per_group=2), ValueError, "x has 6 heads of 6 channels"),
        (s(x=x[:, :, :, :4].contiguous(), D=torch.ones(H, 3), head_dim=4), ValueError, "head_dim=4 must be in [1, P=3]"),
        (s(x=x[:, :, :7], dt=dt[:, :, :7], A=A[:7]), ValueError, "not divisible"),
        (s(dt=dt[:1]), ValueError, "dt has shape"),
        (s(B=B[:, :4]), ValueError, "B has shape"),
        (s(C=C[:, :, :, :3]), ValueError, "C has shape"),
        (s(z=x[:, :4]), ValueError, "z has shape"),
        (s(x=x.long()), TypeError, "x must be"),
        (s(B=B.double()), TypeError, "B must be torch.float32"),
        (s(A=A.long()), TypeError, "A must be"),
        (s(x=x.transpose(2, 3).contiguous().transpose(2, 3)), ValueError, "unit innermost stride"),
        (s(D=torch.ones(H + 1)), ValueError, "D has shape"),
        (s(dt_bias=torch.ones(3)), ValueError, "dt_bias has shape"),
        (s(chunk_size=0), ValueError, "chunk_size"),
        (s(dt_limit=(1.0, 0.5)), ValueError, "dt_limit"),
        (s(initial_states=torch.zeros(2, H, P, N + 1)), ValueError, "initial_states has shape"),
        (s(cu_seqlens=torch.tensor([0, 5])), ValueError, "batch size 1"),
        (s(x=x[:1], dt=dt[:1], B=B[:1], C=C[:1], cu_seqlens=torch.tensor([0, 4, 3, 5])), ValueError,
         "never decrease"),
        (s(x=x[:1], dt=dt[:1], B=B[:1], C=C[:1], cu_seqlens=torch.tensor([0, 4])), ValueError, "end at l=5"),
        (s(x=x[:1], dt=dt[:1], B=B[:1], C=C[:1], cu_seqlens=torch.tensor([0, 5.0])), TypeError, "cu_seqlens"),
        (s(x=x[:1], dt=dt[:1], B=B[:1], C=C[:1], cu_seqlens=torch.tensor([0, 2, 5]),
           initial_states=torch.zeros(1, H, P, N)), ValueError, "initial_states has shape"),
        (s(x=x.tolist()), TypeError, "x must be a torch.Tensor"),
        (s(backend="fast"), ValueError, "unknown backend"),
    ]


@pytest.mark.parametrize("index", range(len(_bad_calls())))
def test_bad_inputs_raise_clear_errors(index):
    call, error, words = _bad_calls()[index]
    with pytest.raises(error) as info:
        call()
    assert words in str(info.value)


def test_cuda_backend_on_cpu_tensors_is_refused_not_substituted():
    a = scan_inputs(1, 3, H, P, G, N)
    with pytest.raises(sek.BackendUnavailableError, match="backend 'cuda' is unavailable"):
        sek.ssd_scan(a["x"], a["dt"], a["A"], a["B"], a["C"], backend="cuda")


# --- the CUDA kernels' per-thread code on the CPU ------------------------------------------------
# csrc/ssm/ssd_scan.cu registers a CPU impl of its private op star_elastic::_ssd_scan that runs the
# four kernels' own per-thread code over their grids on the host (block by block, barrier phase by
# phase, thread by thread, shared memory a host array). These tests call it on CPU tensors (through
# the cuda backend's launcher, which builds the chunk tables and the workspace), so the kernels'
# tiling, masking, indexing and arithmetic are checked without a GPU. The launch, the scheduling,
# the device's expf and the timing are not: the GPU-marked cases (backend "cuda") cover those.
# fp32 runs the same tensor-core kernels as 3xTF32 (each operand a tf32 big part plus the tf32 of
# its remainder, three emulated m16n8k8 MMAs): held to 2e-5 against the float64 oracle, which plain
# TF32 (a 10-bit mantissa, errors ~1e-3 here) would fail.

needs_host_op = pytest.mark.skipif(not _extension.has_op("_ssd_scan"),
                                   reason="the CUDA extension (with _ssd_scan) is not built here")


def host_scan(x, dt, A, B, C, *, chunk_size, k, p, D=None, z=None, dt_bias=None, dt_softplus=False,
              dt_limit=(0.0, float("inf")), initial_states=None, cu_seqlens=None,
              states_dtype=torch.float32):
    """The CUDA forward's code on the CPU: torch.ops.star_elastic._ssd_scan on CPU tensors."""
    bounds = None if cu_seqlens is None else packed_bounds(cu_seqlens, x.shape[1])
    return scan_module._cuda(x, dt, A, B, C, D, z, dt_bias, initial_states, bounds, chunk_size,
                             dt_softplus, dt_limit[0], dt_limit[1], k, states_dtype)


@needs_host_op
@pytest.mark.parametrize("k,p,D_name,chunk", [(4, 6, "D2", 4), (3, 4, "D", 3), (2, 5, "D2", 16),
                                              (1, 1, "D", 1)])
@pytest.mark.parametrize("gate", [True, False])
def test_cuda_code_on_cpu_matches_the_float64_oracle(k, p, D_name, chunk, gate):
    """fp32, dense and sliced, D (H,) and (H, P), z, dt_bias + softplus + limits, initial states,
    l = 9 not a multiple of the chunk."""
    a = scan_inputs(2, 9, H, P, G, N, seed=21)
    s = sliced(a, k, p)
    z = s["z"] if gate else None
    kw = dict(D=a[D_name], z=z, dt_bias=a["dt_bias"], dt_softplus=True, dt_limit=(0.05, 1.2),
              initial_states=s["init"])
    y, final = host_scan(s["x"], s["dt"], a["A"], a["B"], a["C"], chunk_size=chunk, k=k, p=p, **kw)
    want_y, want_final = sequential_scan(s["x"], s["dt"], a["A"], a["B"], a["C"], heads_per_group=k,
                                         **kw)
    assert y.dtype == torch.float32 and y.shape == (2, 9, G * k, p)
    assert final.shape == (2, G * k, p, N)
    torch.testing.assert_close(y.double(), want_y, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(final.double(), want_final, atol=2e-5, rtol=2e-5)


@needs_host_op
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k,p", [(4, 6), (3, 4)])
def test_cuda_code_on_cpu_half_precision(dtype, k, p):
    a = scan_inputs(2, 20, H, P, G, N, seed=22, dtype=dtype)
    s = sliced(a, k, p)
    kw = dict(D=a["D"], z=s["z"], dt_bias=a["dt_bias"], dt_softplus=True, initial_states=s["init"])
    y, final = host_scan(s["x"], s["dt"], a["A"], a["B"], a["C"], chunk_size=8, k=k, p=p, **kw)
    want_y, want_final = sek.ssd_scan(s["x"], s["dt"], a["A"], a["B"], a["C"], chunk_size=8,
                                      heads_per_group=k, head_dim=p, return_final_states=True,
                                      backend="torch", **kw)
    assert y.dtype == dtype
    torch.testing.assert_close(y, want_y, **TOL[dtype])
    torch.testing.assert_close(final, want_final, **TOL[dtype])


@needs_host_op
def test_cuda_code_on_cpu_varlen_crossing_chunks():
    """Packed sequences (two empty) crossing chunk boundaries, with per-sequence initial and final
    states; strided x/z/dt views into one packed projection."""
    k, p = 3, 4
    a = scan_inputs(1, 17, H, P, G, N, seed=23)
    s = sliced(a, k, p)
    packed = torch.cat([s["z"].flatten(2), s["x"].flatten(2), s["dt"]], dim=-1)
    z = packed[..., : G * k * p].unflatten(-1, (G * k, p))
    x = packed[..., G * k * p : 2 * G * k * p].unflatten(-1, (G * k, p))
    dt = packed[..., 2 * G * k * p :]
    cu = torch.tensor([0, 5, 5, 14, 17, 17])
    init = torch.randn(5, G * k, p, N, generator=torch.Generator().manual_seed(1))
    kw = dict(D=a["D2"], z=z, dt_bias=a["dt_bias"], dt_softplus=True, initial_states=init,
              cu_seqlens=cu)
    y, finals = host_scan(x, dt, a["A"], a["B"], a["C"], chunk_size=4, k=k, p=p, **kw)
    want_y, want_finals = sequential_scan(x, dt, a["A"], a["B"], a["C"], heads_per_group=k, **kw)
    torch.testing.assert_close(y.double(), want_y, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(finals.double(), want_finals, atol=2e-5, rtol=2e-5)
    assert torch.equal(finals[1], init[1]) and torch.equal(finals[4], init[4])


@needs_host_op
@pytest.mark.parametrize("l", [0, 1])
def test_cuda_code_on_cpu_tiny_lengths(l):
    a = scan_inputs(2, 3, H, P, G, N, seed=24)
    x, dt, B, C = a["x"][:, :l], a["dt"][:, :l], a["B"][:, :l], a["C"][:, :l]
    kw = dict(D=a["D"], z=a["z"][:, :l], dt_bias=a["dt_bias"], dt_softplus=True,
              initial_states=a["init"])
    y, final = host_scan(x, dt, a["A"], B, C, chunk_size=4, k=H // G, p=P, **kw)
    want_y, want_final = sequential_scan(x, dt, a["A"], B, C, **kw)
    assert y.shape == (2, l, H, P)
    torch.testing.assert_close(y.double(), want_y, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(final.double(), want_final, atol=2e-5, rtol=2e-5)
    if l == 0:
        assert torch.equal(final, a["init"])
    _, final = host_scan(x[:1, :0], dt[:1, :0], a["A"], B[:1, :0], C[:1, :0], chunk_size=4,
                         k=H // G, p=P, cu_seqlens=torch.tensor([0, 0]))
    assert torch.equal(final, torch.zeros(1, H, P, N))


@needs_host_op
def test_cuda_code_on_cpu_without_state():
    """N = 0: no state, no chunk-state or state-passing blocks; y is D x gated."""
    a = scan_inputs(1, 6, H, P, G, 0, seed=28)
    kw = dict(D=a["D2"], z=a["z"], dt_softplus=True)
    y, final = host_scan(a["x"], a["dt"], a["A"], a["B"], a["C"], chunk_size=4, k=H // G, p=P, **kw)
    want_y, _ = sequential_scan(a["x"], a["dt"], a["A"], a["B"], a["C"], **kw)
    assert final.shape == (1, H, P, 0)
    torch.testing.assert_close(y.double(), want_y, atol=2e-5, rtol=2e-5)


@needs_host_op
def test_cuda_code_on_cpu_several_tiles():
    """Every tile loop runs more than once: chunks of 256 tokens (two tokens per thread in the
    cumsum, four 64-token output and source tiles), 70 channels and 70 state entries (two 64-wide
    tiles each); a chunk_size above 256 is split into 256-token chunks."""
    Hb, Gb, Pb, Nb, k, p = 4, 2, 70, 70, 1, 70
    a = scan_inputs(1, 300, Hb, Pb, Gb, Nb, seed=25)
    heads = parent_heads(Hb, Gb, k)
    x, dt, z = a["x"][:, :, heads], a["dt"][:, :, heads] * 0.2, a["z"][:, :, heads]
    init = a["init"][:, heads]
    kw = dict(D=a["D2"], z=z, dt_bias=a["dt_bias"], dt_softplus=True, initial_states=init)
    want_y, want_final = sek.ssd_scan(x, dt, a["A"], a["B"], a["C"], heads_per_group=k, head_dim=p,
                                      return_final_states=True, backend="torch", **kw)
    for chunk in (256, 1000):
        y, final = host_scan(x, dt, a["A"], a["B"], a["C"], chunk_size=chunk, k=k, p=p, **kw)
        torch.testing.assert_close(y, want_y, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(final, want_final, atol=1e-4, rtol=1e-4)


# fp16/bf16 run the tensor-core kernels (C.B^T per group, mma.sync chunk state and chunk scan),
# emulated on the CPU lane by lane through the PTX fragment maps. Their operands are rounded to 16
# bits (x dt decay, the decayed masked scores, the entering state, y itself), so they are held to a
# relative error against the float64 oracle on the same 16-bit inputs; a wrong fragment map, mask or
# tile offset gives O(1) relative errors.
TC_REL = {torch.float16: 4e-3, torch.bfloat16: 2e-2}


def assert_relative(got, want, rel, name):
    got, want = got.double(), want.double()
    scale = want.norm().clamp_min(1e-30)
    err = (got - want).norm() / scale
    assert err <= rel, f"{name}: relative error {err:.3g} > {rel}"
    worst = (got - want).abs().max() / want.abs().max().clamp_min(1e-30)
    assert worst <= 4 * rel, f"{name}: worst element error {worst:.3g} of the max > {4 * rel}"


@needs_host_op
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("chunk,Pp,p,Np,k", [
    (64, 64, 64, 64, 2),     # whole tiles, every head of the group, vector (cp.async) staging
    (128, 70, 70, 40, 1),    # partial channel/state tiles, k < heads per group, plain-load rows
    (256, 80, 48, 128, 1),   # sliced channels, two state steps, four 64-token output tiles
    (100, 16, 9, 17, 2),     # chunk not a multiple of 16, odd N (scalar staging)
    (37, 8, 5, 17, 1),       # odd chunk: C.B^T rows of a padded pitch
])
def test_tensor_core_code_on_cpu_matches_the_float64_oracle(dtype, chunk, Pp, p, Np, k):
    """D (H, P), z, dt_bias + softplus + limits, initial states, two batch rows, l = 300 not a
    multiple of the chunk (a short last chunk)."""
    Hb, Gb = 4, 2
    a = scan_inputs(2, 300, Hb, Pp, Gb, Np, seed=31, dtype=dtype)
    heads = parent_heads(Hb, Gb, k)
    x, z = a["x"][:, :, heads, :p].contiguous(), a["z"][:, :, heads, :p].contiguous()
    dt = a["dt"][:, :, heads] * 0.3
    init = a["init"][:, heads, :p].contiguous()
    kw = dict(D=a["D2"], z=z, dt_bias=a["dt_bias"], dt_softplus=True, dt_limit=(0.01, 1.5),
              initial_states=init)
    y, final = host_scan(x, dt, a["A"], a["B"], a["C"], chunk_size=chunk, k=k, p=p, **kw)
    want_y, want_final = sequential_scan(x, dt, a["A"], a["B"], a["C"], heads_per_group=k, **kw)
    assert y.dtype == dtype and y.shape == (2, 300, Gb * k, p)
    assert final.dtype == torch.float32 and final.shape == (2, Gb * k, p, Np)
    assert_relative(y, want_y, TC_REL[dtype], "y")
    assert_relative(final, want_final, TC_REL[dtype], "final states")


@needs_host_op
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_tensor_core_code_on_cpu_varlen_strided(dtype):
    """Packed sequences (one empty) crossing 64-token chunks, per-sequence initial and final states,
    x/z/dt and B/C as views into packed projections (rows not 16-byte multiples: plain loads)."""
    Hb, Gb, Pp, Np, k, p, L = 4, 2, 32, 24, 1, 32, 230
    a = scan_inputs(1, L, Hb, Pp, Gb, Np, seed=32, dtype=dtype)
    heads = parent_heads(Hb, Gb, k)
    xs, zs = a["x"][:, :, heads, :p], a["z"][:, :, heads, :p]
    dts = (a["dt"][:, :, heads] * 0.3).to(dtype)
    packed = torch.cat([zs.flatten(2), xs.flatten(2), dts], dim=-1)
    z = packed[..., : Gb * k * p].unflatten(-1, (Gb * k, p))
    x = packed[..., Gb * k * p : 2 * Gb * k * p].unflatten(-1, (Gb * k, p))
    dt = packed[..., 2 * Gb * k * p :]
    bc = torch.cat([a["B"].flatten(2), a["C"].flatten(2), a["B"][..., :1, :1].flatten(2)], dim=-1)
    B = bc[..., : Gb * Np].unflatten(-1, (Gb, Np))
    C = bc[..., Gb * Np : 2 * Gb * Np].unflatten(-1, (Gb, Np))
    assert x.stride(1) % 8 and B.stride(1) % 8
    cu = torch.tensor([0, 70, 70, 200, L])
    init = torch.randn(4, Gb * k, p, Np, generator=torch.Generator().manual_seed(3))
    kw = dict(D=a["D"], z=z, dt_bias=a["dt_bias"], dt_softplus=True, initial_states=init,
              cu_seqlens=cu)
    y, finals = host_scan(x, dt, a["A"], B, C, chunk_size=64, k=k, p=p, **kw)
    want_y, want_finals = sequential_scan(x, dt, a["A"], B, C, heads_per_group=k, **kw)
    assert_relative(y, want_y, TC_REL[dtype], "y")
    assert_relative(finals, want_finals, TC_REL[dtype], "final states")
    assert torch.equal(finals[1], init[1])


@needs_host_op
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("Np", [256, 300])
def test_tensor_core_code_on_cpu_state_larger_than_the_resident_c(dtype, Np):
    """The chunk scan keeps C of its tokens in shared memory for all heads of the group up to
    N = 256 (four 64-entry tiles) and restages it per head above; both, with two heads per group
    (the second head reads the C the first staged)."""
    Hb, Gb, Pp, k, p = 4, 2, 16, 2, 16
    a = scan_inputs(1, 90, Hb, Pp, Gb, Np, seed=33, dtype=dtype)
    x, z = a["x"].contiguous(), a["z"].contiguous()
    kw = dict(D=a["D2"], z=z, dt_bias=a["dt_bias"], dt_softplus=True, initial_states=a["init"])
    y, final = host_scan(x, a["dt"] * 0.3, a["A"], a["B"], a["C"], chunk_size=64, k=k, p=p, **kw)
    want_y, want_final = sequential_scan(x, a["dt"] * 0.3, a["A"], a["B"], a["C"],
                                         heads_per_group=k, **kw)
    if dtype == torch.float32:
        torch.testing.assert_close(y.double(), want_y, atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(final.double(), want_final, atol=2e-5, rtol=2e-5)
    else:
        assert_relative(y, want_y, TC_REL[dtype], "y")
        assert_relative(final, want_final, TC_REL[dtype], "final states")


@needs_host_op
def test_cuda_code_on_cpu_through_the_op_directly():
    """The private op's own argument checks (the raw-pointer contract)."""
    a = scan_inputs(1, 4, H, P, G, N, seed=26)
    y, final = torch.empty_like(a["x"]), torch.empty(1, H, P, N)
    tables = chunk_tables(1, 4, None, 4, torch.device("cpu"))
    workspace = torch.empty(scan_module.workspace_floats(1, H, G, P, N, 4))
    args = [a["x"], a["dt"], a["A"], a["B"], a["C"], None, None, None, None, *tables, y, final,
            workspace, torch.zeros(1, dtype=torch.int32), 4, H // G, False, 0.0, float("inf"),
            torch.float32]
    torch.ops.star_elastic._ssd_scan(*args)
    want = sek.ssd_scan(a["x"], a["dt"], a["A"], a["B"], a["C"], backend="torch")
    torch.testing.assert_close(y, want, atol=2e-5, rtol=2e-5)
    with pytest.raises(RuntimeError, match="workspace"):
        torch.ops.star_elastic._ssd_scan(*args[:13], workspace[:-1], *args[14:])
    with pytest.raises(RuntimeError, match="chunk_size"):
        torch.ops.star_elastic._ssd_scan(*args[:15], 300, *args[16:])
    with pytest.raises(RuntimeError, match="errors"):
        torch.ops.star_elastic._ssd_scan(*args[:14], torch.zeros(2, dtype=torch.int32), *args[15:])
    with pytest.raises(RuntimeError, match="chain_dtype must be float32 or x's 16-bit dtype"):
        torch.ops.star_elastic._ssd_scan(*args[:-1], torch.bfloat16)  # x is fp32



def chain_words(workspace, chunks, heads, tiles):
    """The state chain's int32 words at the end of the CUDA forward's workspace (ssd_scan.h): the
    ticket counter, the launch's stall word, then a flag per (chunk, head, state tile)."""
    return workspace[-(2 + chunks * heads * tiles):].view(torch.int32)


@needs_host_op
@pytest.mark.slow
def test_cuda_state_chain_reports_a_stall_instead_of_hanging():
    """A chain whose predecessor never hands on (here: a chunk table that puts a padding chunk,
    whose blocks leave at once, inside a sequence) sets the stall bit of the error word after the
    time limit (10 s on the host, 1 s on a GPU) and the launch ends; later waits of the same
    launch give up at once instead of each timing out."""
    a = scan_inputs(1, 16, H, P, G, N, seed=36)
    chunk_table = torch.tensor([[0, 0, 0], [0, 8, 8], [8, 0, 8]])  # chunk 1 is padding
    seq_table = torch.tensor([[0], [3]])  # ... yet the sequence has all three
    y, final = torch.empty_like(a["x"]), torch.empty(1, H, P, N)
    workspace = torch.zeros(scan_module.workspace_floats(3, H, G, P, N, 8))
    errors = torch.zeros(1, dtype=torch.int32)
    start = time.monotonic()
    torch.ops.star_elastic._ssd_scan(a["x"], a["dt"], a["A"], a["B"], a["C"], None, None, None,
                                     None, chunk_table, seq_table, y, final, workspace, errors,
                                     8, H // G, False, 0.0, float("inf"), torch.float32)
    assert errors.item() == SCAN_CHAIN_STALLED
    assert time.monotonic() - start < 60  # one time limit, not one per waiting block and head
    chunks, tiles = 3, 1
    assert chain_words(workspace, chunks, H, tiles)[1] == 1  # the stall word

@needs_host_op
def test_cuda_state_chain_over_many_chunks_with_concurrent_blocks():
    """The CPU impl runs the chunk-state blocks on several threads at once, so their waits are
    real: 100 chunks of packed sequences (one of a single token) hand their states on in whatever
    interleaving the threads take, and every output and final state is the oracle's (a block
    that read its entering state before it was handed on would be off by ~1e-3 here)."""
    k, p, Np, L, chunk = 2, 16, 16, 800, 8
    a = scan_inputs(1, L, 2, p, 1, Np, seed=35)
    cu = torch.tensor([0, 300, 301, L])
    init = torch.randn(3, 2, p, Np, generator=torch.Generator().manual_seed(4))
    kw = dict(D=a["D"], dt_bias=a["dt_bias"], dt_softplus=True, initial_states=init, cu_seqlens=cu)
    for _ in range(3):
        y, finals = host_scan(a["x"], a["dt"], a["A"], a["B"], a["C"], chunk_size=chunk, k=k, p=p,
                              **kw)
        want_y, want_finals = sequential_scan(a["x"], a["dt"], a["A"], a["B"], a["C"],
                                              heads_per_group=k, **kw)
        torch.testing.assert_close(y.double(), want_y, atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(finals.double(), want_finals, atol=2e-5, rtol=2e-5)
    check_device_errors("cpu")


@needs_host_op
def test_cuda_chunk_kernel_runs_batched_rows_side_by_side():
    """Batched rows are separate chains, their chunks taken position by position across the rows
    (section 5 of csrc/ssm/ssd_scan.cu): 3 rows of 12 chunks each, the chunk-state and chunk-scan
    blocks run by concurrent host threads, give the oracle's outputs and final states with no
    stall, every row from its own initial state. A row whose chunk waited on another row's, or a
    scan that did not wait for its entering state, would be off here (or stall)."""
    k, p, Np, L, chunk = 2, 16, 16, 90, 8
    a = scan_inputs(3, L, 2, p, 1, Np, seed=37)
    init = torch.randn(3, 2, p, Np, generator=torch.Generator().manual_seed(5))
    kw = dict(D=a["D"], dt_bias=a["dt_bias"], dt_softplus=True, initial_states=init)
    y, finals = host_scan(a["x"], a["dt"], a["A"], a["B"], a["C"], chunk_size=chunk, k=k, p=p, **kw)
    want_y, want_finals = sequential_scan(a["x"], a["dt"], a["A"], a["B"], a["C"],
                                          heads_per_group=k, **kw)
    torch.testing.assert_close(y.double(), want_y, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(finals.double(), want_finals, atol=2e-5, rtol=2e-5)
    check_device_errors("cpu")


@needs_host_op
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_state_chain_in_16_bits(dtype):
    """chunk_states_dtype = x's 16-bit dtype: the chain stores every state entering a chunk in
    that dtype (half the bytes of fp32: the second half of the fp32-sized region stays
    untouched), each the oracle's state at the chunk boundary rounded, and y and the final states
    (fp32) stay within the 16-bit tolerance over 12 chunks of 2 batched rows, though they are not
    the fp32 chain's bit for bit (its rounding is really in the chain)."""
    Hb, Gb, k, p, Np, L, chunk = 2, 1, 2, 16, 16, 96, 8
    a = scan_inputs(2, L, Hb, p, Gb, Np, seed=38, dtype=dtype)
    kw = dict(D=a["D"], dt_bias=a["dt_bias"], dt_softplus=True, initial_states=a["init"])
    y, final = host_scan(a["x"], a["dt"], a["A"], a["B"], a["C"], chunk_size=chunk, k=k, p=p,
                         states_dtype=dtype, **kw)
    want_y, want_final = sequential_scan(a["x"], a["dt"], a["A"], a["B"], a["C"],
                                         heads_per_group=k, **kw)
    assert y.dtype == dtype and final.dtype == torch.float32
    assert_relative(y, want_y, TC_REL[dtype], "y")
    assert_relative(final, want_final, TC_REL[dtype], "final states")
    y32, final32 = host_scan(a["x"], a["dt"], a["A"], a["B"], a["C"], chunk_size=chunk, k=k, p=p,
                             **kw)
    assert not torch.equal(final, final32)

    # the workspace itself, through the op: row 0 alone, 12 chunks
    x, dt, B, C = a["x"][:1], a["dt"][:1], a["B"][:1], a["C"][:1]
    chunk_table, seq_table = chunk_tables(1, L, None, chunk, torch.device("cpu"))
    chunks = chunk_table.shape[1]
    workspace = torch.full((scan_module.workspace_floats(chunks, Hb, Gb, p, Np, chunk),), 7.0)
    torch.ops.star_elastic._ssd_scan(x, dt, a["A"], B, C, None, None, None, None, chunk_table,
                                     seq_table, torch.empty_like(x), torch.empty(1, Hb, p, Np),
                                     workspace, torch.zeros(1, dtype=torch.int32), chunk, k,
                                     True, 0.0, float("inf"), dtype)
    state_at, values = 2 * chunks * Hb * chunk, chunks * Hb * p * Np
    region = workspace[state_at:state_at + values]
    assert torch.equal(region[values // 2:], torch.full((values // 2,), 7.0))
    entering = region[:values // 2].view(dtype).view(chunks, Hb, p, Np)
    assert not entering[0].any()  # no initial state: the first chunk enters at zero
    for c in range(1, chunks):
        _, want_state = sequential_scan(x[:, :c * chunk], dt[:, :c * chunk], a["A"],
                                        B[:, :c * chunk], C[:, :c * chunk], dt_softplus=True,
                                        heads_per_group=k)
        assert_relative(entering[c], want_state[0], TC_REL[dtype], f"entering state {c}")


# --- property test -------------------------------------------------------------------------------


@needs_host_op
def test_cuda_state_chain_takes_every_ticket_and_publishes_each_entering_state_once():
    """The fused chunk state + state passing + chunk scan (csrc/ssm/ssd_scan.cu, sections 3 and
    5): every chunk-state and chunk-scan block took one ticket, and the state entering (chunk,
    head, state tile) was published for every real chunk (by the chunk before it in its sequence,
    or by a sequence's first chunk itself, for its chunk scan) and for no padding chunk, with two
    p tiles and two N tiles; the entering states the chunk scan read are the oracle's states at
    the chunk boundaries."""
    Hb, Gb, k, p, Np, L, chunk = 2, 1, 2, 80, 70, 40, 16
    a = scan_inputs(1, L, Hb, p, Gb, Np, seed=33)
    cu = torch.tensor([0, 20, 20, L])  # 2 + 0 + 2 real chunks of at most 16 tokens
    bounds = packed_bounds(cu, L)
    chunk_table, seq_table = chunk_tables(1, L, bounds, chunk, torch.device("cpu"))
    chunks, seqs = chunk_table.shape[1], seq_table.shape[1]
    assert (chunk_table[2] == 0).any()  # padding chunks beyond the real ones
    y, final = torch.empty_like(a["x"]), torch.empty(seqs, Hb, p, Np)
    workspace = torch.full((scan_module.workspace_floats(chunks, Hb, Gb, p, Np, chunk),), 7.0)
    errors = torch.zeros(1, dtype=torch.int32)
    torch.ops.star_elastic._ssd_scan(a["x"], a["dt"], a["A"], a["B"], a["C"], None, None, None,
                                     None, chunk_table, seq_table, y, final, workspace, errors,
                                     chunk, k, False, 0.0, float("inf"), torch.float32)
    assert errors.item() == 0
    tiles = 2 * 2  # ceil(80 / 64) x ceil(70 / 64)
    scan_tiles = 2 * 1  # ceil(80 / 64) channel tiles x ceil(16 / 64) token tiles
    words = chain_words(workspace, chunks, Hb, tiles)
    # one ticket per block, taken from a zeroed counter
    assert words[0] == chunks * Gb * (tiles + scan_tiles)
    assert words[1] == 0  # no wait timed out
    real = chunk_table[2] > 0
    want = torch.tensor([[int(real[c])] * tiles for c in range(chunks) for _ in range(Hb)],
                        dtype=torch.int32).flatten()
    assert torch.equal(words[2:], want)
    # the entering state of every real chunk: the oracle's final state of the tokens before it
    state_at = 2 * chunks * Hb * chunk
    entering = workspace[state_at:state_at + chunks * Hb * p * Np].view(chunks, Hb, p, Np)
    for c in range(chunks):
        if not real[c]:
            continue
        seq = int(torch.searchsorted(cu[1:], chunk_table[1, c], right=True))
        start, token0 = int(cu[seq]), int(chunk_table[1, c])
        if token0 == start:
            want_state = torch.zeros(Hb, p, Np, dtype=torch.float64)
        else:
            _, want_state = sequential_scan(a["x"][:, start:token0], a["dt"][:, start:token0],
                                            a["A"], a["B"][:, start:token0], a["C"][:, start:token0],
                                            heads_per_group=k)
            want_state = want_state[0]
        torch.testing.assert_close(entering[c].double(), want_state, atol=2e-5, rtol=2e-5)

# Each Triton-interpreter example costs ~0.3-0.6 s on a CPU; CI runs 100 (the SSM property tests
# together run 700 in CI); SSM_HYPOTHESIS_EXAMPLES=1000 (say) runs more in each.
EXAMPLES = int(os.environ.get("SSM_HYPOTHESIS_EXAMPLES", "100"))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    groups=st.sampled_from([1, 2, 3]),
    parent_per_group=st.integers(1, 3),
    parent_p=st.integers(1, 9),
    state_size=st.integers(1, 17),
    batch=st.integers(1, 2),
    length=st.integers(0, 12),
    chunk_size=st.sampled_from([1, 2, 4, 5, 16]),
    data=st.data(),
    dtype=st.sampled_from([torch.float32, torch.float16]),
    options=st.fixed_dictionaries({"D": st.sampled_from([None, "h", "hp"]), "z": st.booleans(),
                                   "dt_bias": st.booleans(), "softplus": st.booleans(),
                                   "init": st.booleans()}),
    seed=st.integers(0, 2**16),
)
def test_property_triton_matches_reference(groups, parent_per_group, parent_p, state_size, batch, length,
                                           chunk_size, data, dtype, options, seed):
    if not _backends.triton_interpreter_enabled() and not torch.cuda.is_available():
        pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    k = data.draw(st.integers(1, parent_per_group), label="k")
    p = data.draw(st.integers(1, parent_p), label="p")
    Hp = groups * parent_per_group
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x = r(batch, length, groups * k, p).to(dtype)
    B, C = r(batch, length, groups, state_size).to(dtype), r(batch, length, groups, state_size).to(dtype)
    kw = dict(chunk_size=chunk_size, heads_per_group=k, head_dim=p, dt_softplus=options["softplus"],
              return_final_states=True,
              D={None: None, "h": r(Hp), "hp": r(Hp, parent_p)}[options["D"]],
              z=r(batch, length, groups * k, p).to(dtype) if options["z"] else None,
              dt_bias=r(Hp) * 0.3 if options["dt_bias"] else None,
              initial_states=r(batch, groups * k, p, state_size) if options["init"] else None)
    dt = r(batch, length, groups * k).abs() * 0.5
    A = -(torch.rand(Hp, generator=g) + 0.1)
    want = sek.ssd_scan(x, dt, A, B, C, backend="torch", **kw)
    to = lambda t: t.to(device) if torch.is_tensor(t) else t  # noqa: E731
    for backend in ("triton", "cuda") if device == "cuda" else ("triton",):
        got = sek.ssd_scan(to(x), to(dt), to(A), to(B), to(C), backend=backend,
                           **{n: to(v) for n, v in kw.items()})
        for ours, ref in zip(got, want):
            torch.testing.assert_close(ours.cpu(), ref, **TOL[dtype],
                                       msg=lambda m: f"{backend}: {m}")


def _self_allocated_bytes(fn):
    """Bytes torch allocated (self, summed over ops) while ``fn`` ran, on the CPU."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    return sum(max(e.self_cpu_memory_usage, 0) for e in prof.key_averages()), result


@pytest.mark.interpreter
def test_sliced_call_allocates_only_outputs_and_chunk_workspace():
    """A small slice of a large parent: what the Triton path allocates scales with the slice."""
    Hp, Pp, Gp, Np, L, k, p, chunk = 16, 32, 4, 16, 64, 1, 8, 16
    g = torch.Generator().manual_seed(19)
    parent_x = torch.randn(1, L, Hp, Pp, generator=g)
    x = slice_heads(parent_x, Hp, Gp, k, p)
    dt = torch.randn(1, L, Gp * k, generator=g)
    B, C = torch.randn(1, L, Gp, Np, generator=g), torch.randn(1, L, Gp, Np, generator=g)
    A, D = -torch.rand(Hp, generator=g), torch.randn(Hp, Pp, generator=g)
    run = lambda: sek.ssd_scan(x, dt, A, B, C, chunk_size=chunk, D=D, heads_per_group=k, head_dim=p,  # noqa: E731
                               return_final_states=True, backend="triton")
    run()
    allocated, (y, final) = _self_allocated_bytes(run)
    chunks = L // chunk
    state = Gp * k * p * Np * 4
    dt_cum = 2 * chunks * Gp * k * chunk * 4  # processed dt and cumulative decay per chunk token
    tables = 16 * (chunks + 1) * 8  # the chunk/sequence tables and their device-side temporaries
    workspace = chunks * state + chunks * Gp * k * 4 + dt_cum + tables + 2 * 8
    outputs = y.numel() * 4 + final.numel() * 4
    assert outputs <= allocated <= outputs + workspace + 1024, (allocated, outputs, workspace)
    assert allocated < parent_x.numel() * 4 / 4


# --- GPU: against mamba-ssm's Triton SSD, bf16, and no allocation proportional to the parent ---


@pytest.mark.gpu
@pytest.mark.parametrize("k,p", [(8, 64), (4, 32)])
def test_gpu_matches_mamba_chunk_scan_combined(k, p):
    import_mamba_oracles()
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    Hg, Pg, Gg, Ng = 64, 64, 8, 128
    a = scan_inputs(2, 300, Hg, Pg, Gg, Ng, seed=16, dtype=torch.bfloat16, device="cuda")
    heads = torch.tensor(parent_heads(Hg, Gg, k), device="cuda")
    x = a["x"][:, :, heads, :p].contiguous()
    dt = a["dt"][:, :, heads].contiguous()
    ours, ours_final = sek.ssd_scan(x, dt, a["A"], a["B"], a["C"], chunk_size=128, D=a["D"],
                                    dt_bias=a["dt_bias"], dt_softplus=True, heads_per_group=k,
                                    head_dim=p, return_final_states=True, backend="triton")
    theirs, their_final = mamba_chunk_scan_combined(
        x, dt, a["A"][heads].contiguous(), a["B"], a["C"], 128, D=a["D"][heads].contiguous(),
        dt_bias=a["dt_bias"][heads].contiguous(), dt_softplus=True, return_final_states=True)
    torch.testing.assert_close(ours.float(), theirs.float(), atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(ours_final, their_final.float(), atol=5e-2, rtol=5e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k,p", [(8, 64), (6, 48), (4, 80)])
def test_gpu_cuda_backend_at_nemotron_shapes(dtype, k, p):
    """The CUDA forward at Nemotron-like shapes (8 groups, N = 128, chunk 128; p = 80 spans two
    channel tiles) against the reference and the Triton forward: packed sequences crossing chunk
    boundaries, per-sequence initial and final states, D (H, P), z, dt_bias, softplus."""
    Hg, Pg, Gg, Ng = 64, 80, 8, 128
    a = scan_inputs(1, 700, Hg, Pg, Gg, Ng, seed=27, dtype=dtype, device="cuda")
    heads = torch.tensor(parent_heads(Hg, Gg, k), device="cuda")
    x = a["x"][:, :, heads, :p].contiguous()
    z = a["z"][:, :, heads, :p].contiguous()
    dt = a["dt"][:, :, heads].contiguous()
    cu = torch.tensor([0, 130, 131, 500, 700], device="cuda")
    init = torch.randn(4, Gg * k, p, Ng, generator=torch.Generator().manual_seed(2)).cuda()
    kw = dict(chunk_size=128, D=a["D2"], z=z, dt_bias=a["dt_bias"], dt_softplus=True,
              initial_states=init, cu_seqlens=cu, return_final_states=True, heads_per_group=k,
              head_dim=p)
    ours = sek.ssd_scan(x, dt, a["A"], a["B"], a["C"], backend="cuda", **kw)
    want = sek.ssd_scan(x, dt, a["A"], a["B"], a["C"], backend="torch", **kw)
    triton_out = sek.ssd_scan(x, dt, a["A"], a["B"], a["C"], backend="triton", **kw)
    tol = dict(atol=1e-3, rtol=1e-3) if dtype == torch.float32 else TOL[dtype]
    for got, ref, name in zip(ours, want, ("y", "final")):
        torch.testing.assert_close(got, ref, **tol, msg=lambda m: f"{name} vs reference: {m}")
    for got, ref, name in zip(ours, triton_out, ("y", "final")):
        torch.testing.assert_close(got, ref, **tol, msg=lambda m: f"{name} vs triton: {m}")
    check_device_errors("cuda")  # the chunk-state chain never stalled


@pytest.mark.gpu
@pytest.mark.parametrize("states_dtype", [torch.float32, torch.bfloat16])
def test_gpu_cuda_state_chain_over_many_chunks(states_dtype):
    """One 64K-token sequence at the Nano v3 shape: 512 chunks of 128 hand their states on from
    block to block (more blocks than fit on the GPU at once), against the Triton forward (with
    the same chunk-state storage), twice (the chain's flags are zeroed per launch), without a
    stall; an fp32 and a bf16 chain."""
    Hg, Pg, Gg, Ng, L = 64, 64, 8, 128, 65_536
    a = scan_inputs(1, L, Hg, Pg, Gg, Ng, seed=28, dtype=torch.bfloat16, device="cuda")
    kw = dict(chunk_size=128, D=a["D"], dt_bias=a["dt_bias"], dt_softplus=True,
              return_final_states=True, chunk_states_dtype=states_dtype)
    want = sek.ssd_scan(a["x"], a["dt"], a["A"], a["B"], a["C"], backend="triton", **kw)
    for _ in range(2):
        got = sek.ssd_scan(a["x"], a["dt"], a["A"], a["B"], a["C"], backend="cuda", **kw)
        for g, w, name in zip(got, want, ("y", "final")):
            torch.testing.assert_close(g.float(), w.float(), **TOL[torch.bfloat16],
                                       msg=lambda m: f"{name}: {m}")
    check_device_errors("cuda")


@pytest.mark.gpu
def test_gpu_cuda_backend_64bit_offsets():
    """x, z and dt as views into one packed projection whose offsets pass 2**31 elements."""
    k, p, Gg, Ng, Hg, L = 1, 64, 8, 16, 8, 140_000
    width = 16_384
    packed = torch.zeros(1, L, width, dtype=torch.bfloat16, device="cuda")
    assert packed.numel() > 2**31
    g = torch.Generator(device="cuda").manual_seed(3)
    tail = slice(L - 300, L)
    used = 2 * Gg * p + Gg
    packed[:, tail, :used] = torch.randn(1, 300, used, generator=g, device="cuda").bfloat16()
    z = packed[..., : Gg * p].unflatten(-1, (Gg, p))
    x = packed[..., Gg * p : 2 * Gg * p].unflatten(-1, (Gg, p))
    dt = packed[..., 2 * Gg * p : 2 * Gg * p + Gg]
    B = torch.randn(1, L, Gg, Ng, generator=g, device="cuda").bfloat16()
    C = torch.randn(1, L, Gg, Ng, generator=g, device="cuda").bfloat16()
    A = -torch.rand(Hg, generator=g, device="cuda") - 0.5
    kw = dict(chunk_size=128, z=z, dt_softplus=True, heads_per_group=k, return_final_states=True)
    y, final = sek.ssd_scan(x, dt, A, B, C, backend="cuda", **kw)
    # before the tail, x and dt are zero (softplus(0) = log 2 decays, no input): y = 0 there
    assert not y[:, : L - 300].any()
    cut = L - 300
    want_y, want_final = sek.ssd_scan(x[:, cut:], dt[:, cut:], A, B[:, cut:], C[:, cut:],
                                      backend="torch", **kw)
    torch.testing.assert_close(y[:, cut:], want_y, **TOL[torch.bfloat16])
    torch.testing.assert_close(final, want_final, **TOL[torch.bfloat16])


@pytest.mark.gpu
def test_gpu_sliced_call_allocates_only_its_outputs_and_workspace():
    Hg, Pg, Gg, Ng, L = 64, 64, 8, 128, 2048
    a = scan_inputs(1, L, Hg, Pg, Gg, Ng, seed=17, dtype=torch.bfloat16, device="cuda")
    k, p = 4, 32
    x = slice_heads(a["x"], Hg, Gg, k, p)
    dt = slice_heads(a["dt"], Hg, Gg, k)
    sek.ssd_scan(x, dt, a["A"], a["B"], a["C"], D=a["D"], heads_per_group=k, head_dim=p, backend="triton")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    y = sek.ssd_scan(x, dt, a["A"], a["B"], a["C"], D=a["D"], heads_per_group=k, head_dim=p,
                     backend="triton")
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    chunks = -(-L // 128)
    active_state = Gg * k * p * Ng * 4
    budget = y.numel() * 2 + (chunks + 1) * active_state + chunks * Gg * k * 4 + 64 * 1024
    parent_x = a["x"].numel() * 2
    assert peak <= budget < parent_x, (peak, budget, parent_x)
