"""ssd_state_update: every backend against a hand-written step and mamba-ssm's
``selective_state_update_ref``; decode after prefill equals the longer prefill; only the active
slice of the chosen slots is written; nesting; bad inputs leave the cache untouched; opcheck."""

import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import star_elastic_kernels as sek
from star_elastic_kernels import _extension
from tests.helpers import backend_cases
from tests.kernels.ssm_cases import import_mamba_oracles, parent_heads, scan_inputs, skip_unsupported, slice_heads

H, P, G, N = 8, 6, 2, 5
CASES = backend_cases()


def step_inputs(b, k, p, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(x=r(b, G * k, p).to(dtype).to(device), z=r(b, G * k, p).to(dtype).to(device),
                dt=(r(b, G * k) * 0.5).to(device), A=(-(torch.rand(H, generator=g) + 0.2)).to(device),
                B=r(b, G, N).to(dtype).to(device), C=r(b, G, N).to(dtype).to(device), D=r(H).to(device),
                D2=r(H, P).to(device), dt_bias=(r(H) * 0.3).to(device))


def hand_step(cache, a, k, p, slots, dt_softplus=True):
    """Expected (new cache, y) in float64, one element at a time over heads."""
    cache = cache.double().clone()
    b = a["x"].shape[0]
    y = torch.zeros(b, G * k, p, dtype=torch.float64)
    heads = parent_heads(H, G, k)
    for row in range(b):
        for hc in range(G * k):
            ph, grp = heads[hc], hc // k
            d = a["dt"][row, hc].double() + a["dt_bias"][ph].double()
            d = F.softplus(d) if dt_softplus else d
            x = a["x"][row, hc].double()
            h = torch.exp(d * a["A"][ph].double()) * cache[slots[row], ph, :p] \
                + d * torch.outer(x, a["B"][row, grp].double())
            cache[slots[row], ph, :p] = h
            out = h @ a["C"][row, grp].double() + a["D2"][ph, :p].double() * x
            y[row, hc] = out * F.silu(a["z"][row, hc].double())
    return cache, y


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("k,p", [(4, 6), (3, 4), (1, 1)])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_step_matches_hand_computation_and_touches_only_the_slice(backend, device, k, p, state_dtype):
    a = step_inputs(3, k, p, seed=1, device=device)
    cache = torch.randn(5, H, P, N, generator=torch.Generator().manual_seed(2)).to(state_dtype).to(device)
    before = cache.clone()
    slots = torch.tensor([4, 0, 2], device=device)
    y = sek.ssd_state_update(cache, a["x"], a["dt"], a["A"], a["B"], a["C"], D=a["D2"], z=a["z"],
                             dt_bias=a["dt_bias"], dt_softplus=True, heads_per_group=k, head_dim=p,
                             state_indices=slots, backend=backend)
    want_cache, want_y = hand_step(before.cpu(), {n: v.cpu() for n, v in a.items()}, k, p, slots.tolist())
    assert y.shape == (3, G * k, p) and y.dtype == torch.float32
    tol = dict(atol=1e-5, rtol=1e-5) if state_dtype == torch.float32 else dict(atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(cache.cpu().double(), want_cache.to(state_dtype).double(), **tol)
    torch.testing.assert_close(y.cpu().double(), want_y, **tol if state_dtype == torch.float32 else
                               dict(atol=1e-4, rtol=1e-4))
    touched = torch.zeros(cache.shape, dtype=torch.bool)
    touched[torch.tensor([4, 0, 2])[:, None], torch.tensor(parent_heads(H, G, k))[None, :], :p] = True
    assert torch.equal(cache.cpu()[~touched], before.cpu()[~touched])


@pytest.mark.parametrize("backend,device", CASES)
def test_matches_mamba_selective_state_update_ref(backend, device):
    _, ssu = import_mamba_oracles()
    a = step_inputs(2, H // G, P, seed=3, device=device)
    cache = torch.randn(2, H, P, N, generator=torch.Generator().manual_seed(4)).to(device)
    theirs_state = cache.clone()
    y = sek.ssd_state_update(cache, a["x"], a["dt"], a["A"], a["B"], a["C"], D=a["D"], z=a["z"],
                             dt_bias=a["dt_bias"], dt_softplus=True, backend=backend)
    expand = lambda t, *shape: t[(...,) + (None,) * len(shape)].expand(*t.shape, *shape)  # noqa: E731
    theirs = ssu.selective_state_update_ref(
        theirs_state, a["x"], expand(a["dt"], P), expand(a["A"], P, N), a["B"], a["C"],
        D=expand(a["D"], P), z=a["z"], dt_bias=expand(a["dt_bias"], P), dt_softplus=True)
    torch.testing.assert_close(y, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache, theirs_state, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("k,p", [(4, 6), (2, 3)])
def test_decode_after_prefill_equals_the_longer_prefill(backend, device, k, p):
    a = scan_inputs(2, 9, H, P, G, N, seed=5, device=device)
    x, z, dt = slice_heads(a["x"], H, G, k, p), slice_heads(a["z"], H, G, k, p), slice_heads(a["dt"], H, G, k)
    kw = dict(D=a["D"], dt_bias=a["dt_bias"], dt_softplus=True, heads_per_group=k, head_dim=p)
    full = sek.ssd_scan(x, dt, a["A"], a["B"], a["C"], z=z, backend="torch", **kw)
    prefill = 6
    _, state = sek.ssd_scan(x[:, :prefill], dt[:, :prefill], a["A"], a["B"][:, :prefill], a["C"][:, :prefill],
                            z=z[:, :prefill], return_final_states=True, backend="torch", **kw)
    cache = torch.full((4, H, P, N), 3.0, device=device)
    slots = torch.tensor([3, 1], device=device)
    cache[slots[:, None], torch.tensor(parent_heads(H, G, k), device=device)[None, :], :p] = state
    for t in range(prefill, 9):
        y = sek.ssd_state_update(cache, x[:, t], dt[:, t], a["A"], a["B"][:, t], a["C"][:, t], z=z[:, t],
                                 state_indices=slots, backend=backend, **kw)
        torch.testing.assert_close(y, full[:, t], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("k,p", [(3, 5), (1, 2)])
def test_nesting_parent_cache_equals_sliced_copy(backend, device, k, p):
    a = step_inputs(2, k, p, seed=6, device=device)
    cache = torch.randn(2, H, P, N, generator=torch.Generator().manual_seed(7)).to(device)
    heads = torch.tensor(parent_heads(H, G, k), device=device)
    dense_cache = cache[:, heads, :p].clone()
    y = sek.ssd_state_update(cache, a["x"], a["dt"], a["A"], a["B"], a["C"], D=a["D2"], z=a["z"],
                             dt_bias=a["dt_bias"], dt_softplus=True, heads_per_group=k, head_dim=p, backend=backend)
    dense_y = sek.ssd_state_update(dense_cache, a["x"], a["dt"], a["A"][heads].clone(), a["B"], a["C"],
                                   D=a["D2"][heads, :p].clone(), z=a["z"], dt_bias=a["dt_bias"][heads].clone(),
                                   dt_softplus=True, backend=backend)
    torch.testing.assert_close(y, dense_y, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(cache[:, heads, :p], dense_cache, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("backend,device", CASES)
def test_strided_cache_and_empty_batch(backend, device):
    a = step_inputs(2, 4, P, seed=8, device=device)
    storage = torch.randn(2, N, H, P + 2, generator=torch.Generator().manual_seed(9)).to(device)
    cache = storage.permute(0, 2, 3, 1)[:, :, :P]  # (2, H, P, N) with N outermost in memory
    reference_cache = cache.contiguous()
    kw = dict(D=a["D"], dt_bias=a["dt_bias"], dt_softplus=True)
    y = sek.ssd_state_update(cache, a["x"], a["dt"], a["A"], a["B"], a["C"], backend=backend, **kw)
    want = sek.ssd_state_update(reference_cache, a["x"], a["dt"], a["A"], a["B"], a["C"], backend="torch", **kw)
    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache, reference_cache, atol=1e-5, rtol=1e-5)
    empty = sek.ssd_state_update(cache, a["x"][:0], a["dt"][:0], a["A"], a["B"][:0], a["C"][:0], backend=backend)
    assert empty.shape == (0, H, P)


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_activations(backend, device, dtype):
    skip_unsupported(backend, device, dtype)
    a = step_inputs(3, 2, 4, seed=10, dtype=dtype, device=device)
    cache = torch.randn(3, H, P, N, generator=torch.Generator().manual_seed(11)).to(device)
    ref_cache = cache.clone().cpu()
    kw = dict(D=a["D"], z=a["z"], dt_bias=a["dt_bias"], dt_softplus=True, heads_per_group=2, head_dim=4)
    y = sek.ssd_state_update(cache, a["x"], a["dt"], a["A"], a["B"], a["C"], backend=backend, **kw)
    want = sek.ssd_state_update(ref_cache, *(a[n].cpu() for n in ("x", "dt", "A", "B", "C")), backend="torch",
                                **{n: v.cpu() if torch.is_tensor(v) else v for n, v in kw.items()})
    assert y.dtype == dtype
    torch.testing.assert_close(y.cpu(), want, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(cache.cpu(), ref_cache, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend,device", CASES)
def test_opcheck(backend, device):
    a = step_inputs(2, 3, 4, seed=12, device=device)
    cache = torch.randn(3, H, P, N, generator=torch.Generator().manual_seed(13)).to(device)
    slots = torch.tensor([2, 0], device=device)
    torch.library.opcheck(torch.ops.star_elastic.ssd_state_update.default,
                          (cache, a["x"], a["dt"], a["A"], a["B"], a["C"], a["D2"], a["z"], a["dt_bias"], slots,
                           True, 0.0, float("inf"), 3, 4, backend))


# --- argument checking: errors name the argument and leave the cache untouched ------------------


def _bad_calls(cache):
    a = step_inputs(2, 4, P, seed=14)
    x, dt, A, B, C = a["x"], a["dt"], a["A"], a["B"], a["C"]
    s = lambda **kw: (lambda: sek.ssd_state_update(**{**dict(state=cache, x=x, dt=dt, A=A, B=B, C=C), **kw}))  # noqa: E731
    return [
        (s(heads_per_group=5), ValueError, "heads_per_group=5 must be in [1, H/G=4]"),
        (s(x=x[:, :, :4].contiguous(), head_dim=7), ValueError, "head_dim=7 must be in [1, P=6]"),
        (s(x=x[:, :7], dt=dt[:, :7], A=A[:7], state=cache[:, :7]), ValueError, "not divisible"),
        (s(dt=dt[:1]), ValueError, "dt has shape"),
        (s(B=B[:1]), ValueError, "B has shape"),
        (s(C=C[..., :3]), ValueError, "C has shape"),
        (s(z=x[:1]), ValueError, "z has shape"),
        (s(x=x.half()), TypeError, "B must be torch.float16"),
        (s(state=cache.long()), TypeError, "state must be"),
        (s(dt=dt.int()), TypeError, "dt must be"),
        (s(x=x.transpose(1, 2).contiguous().transpose(1, 2)), ValueError, "unit innermost stride"),
        (s(state=cache[:, :, :, :4]), ValueError, "state has shape"),
        (s(state=cache[:, :4]), ValueError, "state has shape"),
        (s(D=torch.ones(H, P + 1)), ValueError, "D has shape"),
        (s(dt_bias=torch.ones(H + 1)), ValueError, "dt_bias has shape"),
        (s(state_indices=torch.tensor([0, 3])), ValueError, "state_indices must be slots in [0, 3)"),
        (s(state_indices=torch.tensor([1, 1])), ValueError, "must not repeat"),
        (s(state_indices=torch.tensor([1])), ValueError, "state_indices has shape"),
        (s(state_indices=torch.tensor([0.0, 1.0])), TypeError, "state_indices must be"),
        (s(state=cache[:1]), ValueError, "exceeds the cache's 1 slots"),
        (s(dt_limit=(2.0, 1.0)), ValueError, "dt_limit"),
    ]


@pytest.mark.parametrize("index", range(21))
def test_bad_inputs_raise_before_the_cache_is_written(index):
    cache = torch.randn(3, H, P, N, generator=torch.Generator().manual_seed(15))
    before = cache.clone()
    call, error, words = _bad_calls(cache)[index]
    with pytest.raises(error) as info:
        call()
    assert words in str(info.value)
    assert torch.equal(cache, before)


def test_bad_inputs_list_length():
    assert len(_bad_calls(torch.zeros(3, H, P, N))) == 21


def test_cuda_backend_on_cpu_tensors_is_refused():
    a = step_inputs(1, 4, P)
    with pytest.raises(sek.BackendUnavailableError, match="CUDA tensors|not built|lacks"):
        sek.ssd_state_update(torch.zeros(1, H, P, N), a["x"], a["dt"], a["A"], a["B"], a["C"], backend="cuda")


# --- property test -------------------------------------------------------------------------------

# cheap examples (well under 0.1 s each): 200 per property test in CI; SSM_HYPOTHESIS_EXAMPLES overrides
EXAMPLES = int(os.environ.get("SSM_HYPOTHESIS_EXAMPLES", "200"))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(groups=st.sampled_from([1, 2, 4]), parent_per_group=st.integers(1, 4), parent_p=st.integers(1, 10),
       state_size=st.integers(1, 40), batch=st.integers(0, 4), data=st.data(),
       state_dtype=st.sampled_from([torch.float32, torch.float16]), dtype=st.sampled_from([torch.float32, torch.float16]),
       use_slots=st.booleans(), use_D=st.sampled_from([None, "h", "hp"]), use_z=st.booleans(), seed=st.integers(0, 2**16))
def test_property_kernels_match_reference(groups, parent_per_group, parent_p, state_size, batch, data, state_dtype,
                                          dtype, use_slots, use_D, use_z, seed):
    if torch.cuda.is_available():
        device, backends = "cuda", ["triton", "cuda"]
    elif os.environ.get("TRITON_INTERPRET") == "1":
        device, backends = "cpu", ["triton"]
    else:
        pytest.skip("no kernel backend can run here")
    k = data.draw(st.integers(1, parent_per_group), label="k")
    p = data.draw(st.integers(1, parent_p), label="p")
    Hp = groups * parent_per_group
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    slots = torch.randperm(batch + 2, generator=g)[:batch] if use_slots else None
    cache = r(batch + 2, Hp, parent_p, state_size).to(state_dtype)
    args = [r(batch, groups * k, p).to(dtype), r(batch, groups * k), -(torch.rand(Hp, generator=g) + 0.1),
            r(batch, groups, state_size).to(dtype), r(batch, groups, state_size).to(dtype)]
    kw = dict(D={None: None, "h": r(Hp), "hp": r(Hp, parent_p)}[use_D],
              z=r(batch, groups * k, p).to(dtype) if use_z else None, dt_bias=r(Hp), dt_softplus=True,
              heads_per_group=k, head_dim=p, state_indices=slots)
    want_cache = cache.clone()
    want = sek.ssd_state_update(want_cache, *args, backend="torch", **kw)
    to = lambda t: t.to(device) if torch.is_tensor(t) else t  # noqa: E731
    for backend in backends:
        got_cache = cache.clone().to(device)
        got = sek.ssd_state_update(got_cache, *map(to, args), backend=backend, **{n: to(v) for n, v in kw.items()})
        tol = dict(atol=1e-5, rtol=1e-5) if dtype == state_dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
        torch.testing.assert_close(got.cpu(), want, **tol)
        torch.testing.assert_close(got_cache.cpu(), want_cache, **tol)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_matches_mamba_selective_state_update_at_nemotron_shape(backend):
    _, ssu = import_mamba_oracles()
    Hg, Pg, Gg, Ng, b = 64, 64, 8, 128, 16
    g = torch.Generator().manual_seed(16)
    r = lambda *s: torch.randn(*s, generator=g).cuda()  # noqa: E731
    cache = r(b, Hg, Pg, Ng)
    theirs_cache = cache.clone()
    x, z, dt = r(b, Hg, Pg).bfloat16(), r(b, Hg, Pg).bfloat16(), r(b, Hg)
    A, D, dt_bias = -(torch.rand(Hg, generator=g).cuda() + 0.1), r(Hg), r(Hg)
    B, C = r(b, Gg, Ng).bfloat16(), r(b, Gg, Ng).bfloat16()
    y = sek.ssd_state_update(cache, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=True, backend=backend)
    expand = lambda t, *shape: t[(...,) + (None,) * len(shape)].expand(*t.shape, *shape)  # noqa: E731
    theirs = ssu.selective_state_update(theirs_cache, x, expand(dt, Pg), expand(A, Pg, Ng), B, C, D=expand(D, Pg),
                                        z=z, dt_bias=expand(dt_bias, Pg), dt_softplus=True)
    torch.testing.assert_close(y.float(), theirs.float(), atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(cache, theirs_cache, atol=1e-3, rtol=1e-3)


def test_torch_compile_fullgraph_decode_loop_matches_eager():
    k, p = 2, 4
    a = step_inputs(2, k, p, seed=17)

    def step(cache, x, dt, B, C):
        return sek.ssd_state_update(cache, x, dt, a["A"], B, C, D=a["D"], dt_bias=a["dt_bias"], dt_softplus=True,
                                    heads_per_group=k, head_dim=p)

    cache = torch.randn(2, H, P, N, generator=torch.Generator().manual_seed(18))
    eager_cache = cache.clone()
    compiled = torch.compile(step, fullgraph=True)
    for _ in range(2):
        got = compiled(cache, a["x"], a["dt"], a["B"], a["C"])
        want = step(eager_cache, a["x"], a["dt"], a["B"], a["C"])
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(cache, eager_cache)


# --- the CUDA kernel's per-thread code on the CPU ------------------------------------------------
# csrc/ssm/ssd_state_update.cu registers a CPU impl of star_elastic::_ssd_state_update that runs the
# kernel's own per-thread code over its grid (block by block, lane by lane, the C-contraction's
# shuffle butterfly in the device's order). These tests call it on CPU tensors through the cuda
# backend's launcher: the 16-byte unit-stride path (N a multiple of 4 / 8, aligned rows) and the
# element-wise path (strided or misaligned caches), every state x activation dtype, head blocks of
# one head and of several (a large batch), padding slots. The launch and the timing are not tested.

needs_host_kernel = pytest.mark.skipif(not _extension.has_op("_ssd_state_update"),
                                       reason="the CUDA extension (with _ssd_state_update) is not built here")


def host_cache(slots, heads, p_parent, n, layout, dtype, g):
    """A (slots, H, P, N) cache: contiguous, transposed (N not innermost) or misaligned by one element."""
    if layout == "contiguous":
        return torch.randn(slots, heads, p_parent, n, generator=g).to(dtype)
    if layout == "transposed":
        return torch.randn(slots, heads, n, p_parent, generator=g).to(dtype).transpose(2, 3)
    flat = torch.randn(slots * heads * p_parent * n + 1, generator=g).to(dtype)
    return flat[1:].view(slots, heads, p_parent, n)


@needs_host_kernel
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout,n", [("contiguous", 16), ("contiguous", 24), ("contiguous", 5),
                                      ("transposed", 16), ("misaligned", 16)])
def test_cuda_code_on_cpu_matches_reference(state_dtype, dtype, layout, n):
    from star_elastic_kernels.ssm import decode as decode_module

    g = torch.Generator().manual_seed(30)
    heads, groups, parent_p, k, p, b = 8, 2, 6, 3, 5, 3
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    cache = host_cache(4, heads, parent_p, n, layout, state_dtype, g)
    x, z = r(b, groups * k, p).to(dtype), r(b, groups * k, p).to(dtype)
    dt, A = r(b, groups * k), -(torch.rand(heads, generator=g) + 0.2)
    B, C = r(b, groups, n).to(dtype), r(b, groups, n).to(dtype)
    D, dt_bias = r(heads, parent_p), r(heads)
    slots = torch.tensor([3, -1, 0])
    want_cache = cache.clone()
    want = sek.ssd_state_update(want_cache, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=True,
                                heads_per_group=k, head_dim=p, state_indices=slots, backend="torch")
    got = decode_module._cuda(cache, x, dt, A, B, C, D, z, dt_bias, slots, True, 0.0, float("inf"), k)
    half = torch.float32 not in (state_dtype, dtype) or state_dtype != torch.float32
    tol = dict(atol=2e-2, rtol=2e-2) if half or dtype != torch.float32 else dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.float(), want.float(), **tol)
    torch.testing.assert_close(cache.float(), want_cache.float(), **tol)
    assert torch.equal(got[1], torch.zeros_like(got[1]))  # the padding row


@needs_host_kernel
def test_cuda_code_on_cpu_large_batch_blocks_of_several_heads():
    """At batch * H' >= 2048 a block covers several heads of a group (B/C read once for them)."""
    from star_elastic_kernels.ssm import decode as decode_module

    g = torch.Generator().manual_seed(31)
    heads, groups, k, p, n, b = 32, 2, 16, 3, 8, 128
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    cache = r(b + 3, heads, p, n)
    args = [r(b, groups * k, p), r(b, groups * k), -(torch.rand(heads, generator=g) + 0.2),
            r(b, groups, n), r(b, groups, n)]
    slots = torch.randperm(b + 3, generator=g)[:b]
    want_cache = cache.clone()
    want = sek.ssd_state_update(want_cache, *args, D=None, dt_softplus=True, heads_per_group=k,
                                state_indices=slots, backend="torch")
    got = decode_module._cuda(cache, *args, None, None, None, slots, True, 0.0, float("inf"), k)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache, want_cache, atol=1e-5, rtol=1e-5)


@needs_host_kernel
def test_cuda_host_op_guards_the_raw_pointer_contract():
    a = step_inputs(2, 4, P, seed=32)
    cache, y = torch.zeros(3, H, P, N), torch.empty(2, G * 4, P)
    ops = torch.ops.star_elastic
    args = [cache, a["x"], a["dt"], a["A"], a["B"], a["C"], None, None, None, None, y]
    with pytest.raises(RuntimeError, match="errors must be a"):
        ops._ssd_state_update(*args, torch.zeros(2, dtype=torch.int32), 4, True, 0.0, float("inf"))
    with pytest.raises(RuntimeError, match="do not fit together"):
        ops._ssd_state_update(*args, torch.zeros(1, dtype=torch.int32), 3, True, 0.0, float("inf"))
