"""No SSM op and no SSM launcher reads device data on the host (issue 13, item 4; DESIGN §8).

Every public SSM op and every launcher runs here on fake CUDA tensors (``FakeTensorMode``: shapes
and devices, no data, no GPU needed). Any ``.item()``, ``.tolist()``, ``nonzero``, ``unique`` or
``bool(tensor)`` on device data raises a data-dependent-output error under fake mode, so a pass
means the code can be captured in a CUDA graph and never stalls decode on a sync.

What runs for real under fake mode: the public wrappers' checks, the launchers' Python (chunk
tables, packed-boundary sanitising, workspaces, output allocation, the backward's reductions) and
the registered fake impls. What does not: the kernels themselves. Triton launches are intercepted
and recorded (their grid must be plain ints from shapes); the private ``_C`` ops dispatch to their
fake impls (``star_elastic_kernels/ssm/_fakes.py``). When ``_C`` is not built, the private ops are
defined from the schemas in ``csrc/ssm/bindings.cpp`` with only those fake impls, so the Python
launchers still run exactly as they would against the extension (and when it is built, a test
checks that the file's schemas are the extension's).

The second half checks, on CPU tensors, what the kernels do instead of host checks: padding slots
(< 0) and slots outside the cache are skipped inside the kernels (the latter recorded in the
device error word), and packed boundaries are made safe and tabled on the device.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

import star_elastic_kernels as sek
from star_elastic_kernels import _extension
from star_elastic_kernels.ssm import _chunks, _device_checks, _fakes
from star_elastic_kernels.ssm import conv as conv_module
from star_elastic_kernels.ssm import decode as decode_module
from star_elastic_kernels.ssm import norm as norm_module
from star_elastic_kernels.ssm import scan as scan_module

ROOT = Path(__file__).resolve().parents[2]
BINDINGS = ROOT / "csrc" / "ssm" / "bindings.cpp"

# Nemotron Nano v3's Mamba layer (64 heads of 64 in 8 groups, state 128), half the heads per group
H, P, G, N = 64, 64, 8, 128
K, PA = 4, 48  # active heads per group, active head channels


def bindings_schemas() -> dict[str, str]:
    """name -> schema of every op defined in csrc/ssm/bindings.cpp (C string pieces joined)."""
    text = BINDINGS.read_text()
    out = {}
    for call in re.findall(r'm\.def\(((?:\s*"[^"]*")+)\s*\)', text):
        schema = "".join(re.findall(r'"([^"]*)"', call))
        out[schema.split("(", 1)[0]] = schema
    return out


_standins: list[torch.library.Library] = []


@pytest.fixture(scope="module")
def private_ops():
    """The private SSM ops: the extension's, or stand-ins defined from the bindings file."""
    schemas = bindings_schemas()
    assert set(schemas) == set(_fakes.PRIVATE_OPS)
    missing = [name for name in schemas if not hasattr(torch.ops.star_elastic, name)]
    if missing:
        lib = torch.library.Library("star_elastic", "FRAGMENT")
        for name in missing:
            lib.define(schemas[name])
        _standins.append(lib)
    _fakes.register()
    return schemas


def test_bindings_file_schemas_are_the_extensions():
    if not _extension.has_op("_ssd_scan"):
        pytest.skip("the CUDA extension is not built here (the stand-ins use the file's schemas)")
    for name, schema in bindings_schemas().items():
        registered = getattr(torch.ops.star_elastic, name).default._schema
        assert str(registered) == str(torch._C.parse_schema("star_elastic::" + schema)), name


@pytest.fixture
def triton_launches(monkeypatch):
    """Intercept every Triton launch: check that its tensors are fake and its grid plain ints,
    record (kernel name, grid), launch nothing."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    launches = []

    def record(self, *args, grid, warmup, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        assert tensors and all(isinstance(t, FakeTensor) for t in tensors)
        assert all(t.device.type == "cuda" for t in tensors)
        grid = grid(kwargs) if callable(grid) else grid
        assert all(type(g) is int for g in grid), grid
        launches.append((self.fn.__name__, tuple(grid)))

    for cls in (JITFunction, InterpretedFunction):
        monkeypatch.setattr(cls, "run", record)
    return launches


def cuda(*shape, dtype=torch.float32):
    return torch.randn(*shape, device="cuda").to(dtype)


def scan_args(b, l, dtype=torch.bfloat16):
    heads = G * K
    return dict(x=cuda(b, l, heads, PA, dtype=dtype), dt=cuda(b, l, heads),
                A=cuda(H), B=cuda(b, l, G, N, dtype=dtype), C=cuda(b, l, G, N, dtype=dtype),
                D=cuda(H, P), z=cuda(b, l, heads, PA, dtype=dtype), dt_bias=cuda(H))


def packed(num_seqs, l):
    return torch.zeros(num_seqs + 1, dtype=torch.int32, device="cuda")  # values never matter


# --- the public ops, forward and backward -------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "triton", "cuda"])
def test_ssd_scan_packed_runs_on_fake_cuda_tensors(private_ops, triton_launches, monkeypatch,
                                                   backend):
    if backend == "cuda":
        pretend_cuda_backend_available(monkeypatch)
    l, seqs = 8192, 5
    with FakeTensorMode():
        a = scan_args(1, l)
        init = cuda(seqs, G * K, PA, N)
        cu = packed(seqs, l)
        y, final = sek.ssd_scan(a["x"], a["dt"], a["A"], a["B"], a["C"], D=a["D"], z=a["z"],
                                dt_bias=a["dt_bias"], dt_softplus=True, initial_states=init,
                                cu_seqlens=cu, return_final_states=True,
                                heads_per_group=K, head_dim=PA, chunk_size=256, backend=backend)
        assert y.shape == (1, l, G * K, PA) and final.shape == (seqs, G * K, PA, N)
        if backend != "torch":  # the reference's autograd is the specification, not graph-safe
            # The registered backward, called as autograd would (the autograd engine itself needs
            # a CUDA context for CUDA tensors, fake or not).
            saved = (a["x"], a["dt"], a["A"], a["B"], a["C"], a["D"], a["z"], a["dt_bias"], init,
                     cu)
            ctx = SimpleNamespace(saved_tensors=saved, needs_input_grad=[True] * 9 + [False] * 9,
                                  options=(256, True, 0.0, float("inf"), K, PA), backend=backend)
            grads = scan_module._backward(ctx, torch.empty_like(y), torch.empty_like(final))
            assert [None if g is None else tuple(g.shape) for g in grads[:9]] == \
                [tuple(t.shape) for t in saved[:9]]
    if backend != "torch":
        names = {name for name, _ in triton_launches}
        # the forward ran its fake impl; the backward (Triton for both backends) launched these
        assert names == {"_chunk_cumsum_kernel", "_chunk_state_kernel", "_state_passing_kernel",
                         "_output_state_grad_kernel", "_state_passing_bwd_kernel",
                         "_chunk_bwd_local_kernel", "_chunk_bwd_shared_kernel",
                         "_decay_grad_kernel"}


def test_cuda_scan_takes_chunk_states_in_x_dtype_only(private_ops, monkeypatch):
    """The cuda backend stores the states entering the chunks in fp32 or in x's 16-bit dtype
    (the chain_dtype of its private op); any other chunk_states_dtype is refused, naming it,
    before anything runs."""
    pretend_cuda_backend_available(monkeypatch)
    with FakeTensorMode():
        a = scan_args(1, 1024)
        run = lambda states_dtype: sek.ssd_scan(  # noqa: E731
            a["x"], a["dt"], a["A"], a["B"], a["C"], D=a["D"], heads_per_group=K, head_dim=PA,
            chunk_size=128, chunk_states_dtype=states_dtype, backend="cuda")
        assert run(torch.bfloat16).shape == a["x"].shape
        with pytest.raises(ValueError, match="chunk_states_dtype=torch.float16 with x of torch.bfloat16"):
            run(torch.float16)


def pretend_cuda_backend_available(monkeypatch):
    """Let select_backend pick "cuda" on a machine without a GPU (only its device probe needs
    one); the private ops then run their fake impls."""
    if not all(hasattr(torch.ops.star_elastic, n) for n in _fakes.PRIVATE_OPS):
        pytest.skip("needs the private ops (fixture private_ops)")
    monkeypatch.setattr(_extension, "unavailable_reason", lambda: None)
    monkeypatch.setattr(_extension, "has_op", lambda name: hasattr(torch.ops.star_elastic, name))
    monkeypatch.setattr(_extension, "device_mismatch_reason", lambda device: None)


@pytest.mark.parametrize("backend", ["torch", "triton", "cuda"])
@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.bfloat16])
def test_decode_steps_run_on_fake_cuda_tensors(private_ops, triton_launches, monkeypatch, backend,
                                               cache_dtype):
    if backend == "cuda":
        pretend_cuda_backend_available(monkeypatch)
    b, slots = 256, 512
    conv_dim = H * P + 2 * G * N
    with FakeTensorMode():
        rows = torch.zeros(b, dtype=torch.int64, device="cuda")
        cache = cuda(slots, H, P, N, dtype=cache_dtype)
        y = sek.ssd_state_update(cache, cuda(b, G * K, PA, dtype=torch.bfloat16), cuda(b, G * K),
                                 cuda(H), cuda(b, G, N, dtype=torch.bfloat16),
                                 cuda(b, G, N, dtype=torch.bfloat16), D=cuda(H),
                                 z=cuda(b, G * K, PA, dtype=torch.bfloat16), dt_bias=cuda(H),
                                 dt_softplus=True, heads_per_group=K, head_dim=PA,
                                 state_indices=rows, backend=backend)
        assert y.shape == (b, G * K, PA)
        conv_state = cuda(slots, conv_dim, 3, dtype=torch.bfloat16)
        channels = G * K * PA + 2 * G * N
        out = sek.causal_conv1d_update(cuda(b, channels, dtype=torch.bfloat16), conv_state,
                                       cuda(conv_dim, 4), cuda(conv_dim), num_heads=H,
                                       num_groups=G, heads_per_group=K, head_dim=PA,
                                       state_indices=rows, backend=backend)
        assert out.shape == (b, channels)


@pytest.mark.parametrize("backend", ["torch", "triton", "cuda"])
def test_packed_conv_and_norm_run_on_fake_cuda_tensors(private_ops, triton_launches, monkeypatch,
                                                       backend):
    if backend == "cuda":
        pretend_cuda_backend_available(monkeypatch)
    l, seqs = 4096, 3
    conv_dim = H * P + 2 * G * N
    channels = G * K * PA + 2 * G * N
    with FakeTensorMode():
        x = cuda(1, l, channels, dtype=torch.bfloat16).requires_grad_()
        y, final = sek.causal_conv1d(x, cuda(conv_dim, 4), cuda(conv_dim),
                                     initial_states=cuda(seqs, channels, 3, dtype=torch.bfloat16),
                                     cu_seqlens=packed(seqs, l), return_final_states=True,
                                     num_heads=H, num_groups=G, heads_per_group=K, head_dim=PA,
                                     backend=backend)
        assert y.shape == x.shape and final.shape == (seqs, channels, 3)
        out = sek.gated_rmsnorm(cuda(l, G * K * PA, dtype=torch.bfloat16),
                                cuda(l, G * K * PA, dtype=torch.bfloat16), cuda(H * P), eps=1e-5,
                                group_size=H * P // G, heads_per_group=K, head_dim=PA,
                                num_heads=H, backend=backend)
        assert out.shape == (l, G * K * PA)


# --- every launcher, called directly ------------------------------------------------------------


def test_cuda_launchers_run_on_fake_cuda_tensors(private_ops):
    l, seqs = 4096, 4
    with FakeTensorMode():
        a = scan_args(1, l)
        bounds = _chunks.packed_bounds(packed(seqs, l), l)
        y, final = scan_module._cuda(a["x"], a["dt"], a["A"], a["B"], a["C"], a["D"], a["z"],
                                     a["dt_bias"], cuda(seqs, G * K, PA, N), bounds, 256, True,
                                     0.0, float("inf"), K)
        assert y.shape == a["x"].shape and final.shape == (seqs, G * K, PA, N)
        b = 64
        cache = cuda(b, H, P, N)
        y = decode_module._cuda(cache, cuda(b, G * K, PA), cuda(b, G * K), cuda(H),
                                cuda(b, G, N), cuda(b, G, N), cuda(H), None, cuda(H),
                                torch.zeros(b, dtype=torch.int32, device="cuda"), True, 0.0,
                                float("inf"), K)
        assert y.shape == (b, G * K, PA)
        conv_dim, channels = H * P + 2 * G * N, G * K * PA + 2 * G * N
        layout = [H, G, K, PA]
        x = cuda(1, l, channels)
        y = conv_module._cuda_conv1d(x, cuda(conv_dim, 4), None, None, bounds, True, layout)
        assert y.shape == x.shape
        y = conv_module._cuda_conv1d_update(cuda(b, channels), cuda(b, conv_dim, 3),
                                            cuda(conv_dim, 4), None, None, True, layout)
        assert y.shape == (b, channels)
        out = norm_module._cuda(cuda(l, G * K * PA), None, cuda(H * P), 1e-5, G, PA, H * P // G,
                                P, False)
        assert out.shape == (l, G * K * PA)


def test_triton_launchers_and_op_bodies_run_on_fake_cuda_tensors(triton_launches):
    from star_elastic_kernels.triton import ssd_scan, ssd_scan_bwd

    l, seqs = 4096, 4
    with FakeTensorMode():
        a = scan_args(1, l)
        bounds = _chunks.packed_bounds(packed(seqs, l), l)
        y, final = ssd_scan.ssd_scan_fwd(a["x"], a["dt"], a["A"], a["B"], a["C"], a["D"], a["z"],
                                         a["dt_bias"], None, bounds, 128, True, (0.0, 1e9), K, PA)
        grads = ssd_scan_bwd.ssd_scan_bwd(torch.empty_like(y), torch.empty_like(final), a["x"],
                                          a["dt"], a["A"], a["B"], a["C"], a["D"], a["z"],
                                          a["dt_bias"], None, bounds, 128, True, (0.0, 1e9), K)
        assert grads[0].shape == a["x"].shape and grads[2].shape == (H,)
        # the registered ops' bodies (what runs for real on a GPU), not their fake impls
        conv_dim, channels = H * P + 2 * G * N, G * K * PA + 2 * G * N
        y, final = conv_module._causal_conv1d_op._init_fn(
            cuda(1, l, channels), cuda(conv_dim, 4), None, cuda(seqs, channels, 3),
            packed(seqs, l), True, [H, G, K, PA], "triton")
        assert final.shape == (seqs, channels, 3)
        y, final = scan_module._ssd_scan_op._init_fn(
            a["x"], a["dt"], a["A"], a["B"], a["C"], None, None, None, None, packed(seqs, l),
            64, False, 0.0, float("inf"), K, PA, torch.bfloat16, "triton")
        assert final.shape == (seqs, G * K, PA, N)
    chunk_grids = [grid for name, grid in triton_launches if name == "_chunk_state_kernel"]
    # packed chunks: a static bound (l + S * (Q - 1)) // Q, never a count read from the device
    assert chunk_grids[0][0] == (l + seqs * 127) // 128


# --- what the kernels do instead of host checks (CPU tensors) -----------------------------------


def decode_case(b, slots, seed=0, state_dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    h, p, grp, n = 8, 4, 2, 16
    return dict(state=r(slots, h, p, n).to(state_dtype), x=r(b, grp * 2, p), dt=r(b, grp * 2),
                A=-(torch.rand(h, generator=g) + 0.2), B=r(b, grp, n), C=r(b, grp, n), D=r(h),
                z=r(b, grp * 2, p), dt_bias=r(h)), dict(heads_per_group=2, head_dim=p)


def kernel_decode_backends():
    out = [pytest.param("triton", marks=pytest.mark.interpreter)]
    out.append(pytest.param("cuda-host", marks=pytest.mark.skipif(
        not _extension.has_op("_ssd_state_update"), reason="the CUDA extension is not built")))
    return out


def run_decode_launcher(backend, a, kw, slots):
    """The kernel launcher itself, below the public wrapper (which rejects bad CPU slots)."""
    args = (a["state"], a["x"], a["dt"], a["A"], a["B"], a["C"], a["D"], a["z"], a["dt_bias"],
            slots, True, 0.0, float("inf"), kw["heads_per_group"])
    if backend == "triton":
        from star_elastic_kernels.triton import ssd_state_update as kernels

        return kernels.ssd_state_update(*args[:11], (0.0, float("inf")), args[13])
    return decode_module._cuda(*args)


@pytest.mark.parametrize("backend", kernel_decode_backends())
def test_decode_kernels_skip_padding_and_out_of_range_slots(backend):
    a, kw = decode_case(4, 5)
    before = a["state"].clone()
    slots = torch.tensor([3, -1, 7, 0])  # row 1: padding; row 2: outside the 5-slot cache
    _device_checks.check_device_errors("cpu")  # start clean
    got = run_decode_launcher(backend, a, kw, slots)
    want_state = before.clone()
    want = sek.ssd_state_update(want_state, a["x"][[0, 3]], a["dt"][[0, 3]], a["A"], a["B"][[0, 3]],
                                a["C"][[0, 3]], D=a["D"], z=a["z"][[0, 3]], dt_bias=a["dt_bias"],
                                dt_softplus=True, state_indices=torch.tensor([3, 0]),
                                backend="torch", **kw)
    torch.testing.assert_close(got[[0, 3]], want, atol=1e-5, rtol=1e-5)
    assert torch.equal(got[[1, 2]], torch.zeros_like(got[[1, 2]]))
    torch.testing.assert_close(a["state"], want_state, atol=1e-5, rtol=1e-5)
    assert torch.equal(a["state"][[1, 2, 4]], before[[1, 2, 4]])  # untouched slots, bit for bit
    with pytest.raises(ValueError, match="state_indices value was >= the cache's slot count"):
        sek.check_device_errors("cpu")
    sek.check_device_errors("cpu")  # the record was cleared


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.interpreter)])
def test_public_decode_treats_negative_slots_as_padding(backend):
    a, kw = decode_case(3, 4, seed=3)
    before = a["state"].clone()
    y = sek.ssd_state_update(a["state"], a["x"], a["dt"], a["A"], a["B"], a["C"], D=a["D"],
                             z=a["z"], dt_bias=a["dt_bias"], dt_softplus=True,
                             state_indices=torch.tensor([-1, 2, -5]), backend=backend, **kw)
    assert torch.equal(y[[0, 2]], torch.zeros_like(y[[0, 2]]))
    assert torch.equal(a["state"][[0, 1, 3]], before[[0, 1, 3]])
    assert not torch.equal(a["state"][2], before[2])


def conv_update_backends():
    return [pytest.param("triton", marks=pytest.mark.interpreter),
            pytest.param("cuda-host", marks=pytest.mark.skipif(
                not _extension.has_op("_causal_conv1d_update"),
                reason="the CUDA extension is not built"))]


@pytest.mark.parametrize("backend", conv_update_backends())
def test_conv_update_kernels_skip_padding_and_out_of_range_slots(backend):
    g = torch.Generator().manual_seed(4)
    state = torch.randn(3, 12, 3, generator=g)
    before = state.clone()
    x, w, bias = torch.randn(3, 12, generator=g), torch.randn(12, 4, generator=g), torch.randn(12)
    slots = torch.tensor([-1, 2, 3])  # padding, a slot, outside the 3-slot cache
    _device_checks.check_device_errors("cpu")
    if backend == "triton":
        y = conv_module._triton().causal_conv1d_update(x, state, w, bias, slots, None, True)
    else:
        y = conv_module._cuda_conv1d_update(x, state, w, bias, slots, True, [])
    want_state = before.clone()
    want = sek.causal_conv1d_update(x[1:2], want_state, w, bias, state_indices=torch.tensor([2]),
                                    backend="torch")
    torch.testing.assert_close(y[1:2], want)
    assert torch.equal(y[[0, 2]], torch.zeros_like(y[[0, 2]]))
    assert torch.equal(state, want_state)
    with pytest.raises(ValueError, match="state_indices value"):
        sek.check_device_errors("cpu")


def test_cpu_values_are_still_checked_before_anything_runs():
    a, kw = decode_case(2, 3)
    before = a["state"].clone()
    for slots, words in ((torch.tensor([0, 3]), "slots in [0, 3)"), (torch.tensor([1, 1]), "repeat")):
        with pytest.raises(ValueError, match=re.escape(words)):
            sek.ssd_state_update(a["state"], a["x"], a["dt"], a["A"], a["B"], a["C"],
                                 state_indices=slots, backend="torch", **kw)
    assert torch.equal(a["state"], before)
    x = torch.randn(1, 6, 4)
    with pytest.raises(ValueError, match="cu_seqlens must start at 0"):
        sek.causal_conv1d(x, torch.randn(4, 3), cu_seqlens=torch.tensor([0, 4, 2, 6]))


def test_invalid_packed_boundaries_are_clamped_and_recorded():
    _device_checks.check_device_errors("cpu")
    bounds = _chunks.packed_bounds(torch.tensor([1, 9, 4, 30, 20]), 12)
    assert bounds.tolist() == [0, 9, 9, 12, 12]
    with pytest.raises(ValueError, match="cu_seqlens did not start at 0"):
        sek.check_device_errors("cpu")
    ok = _chunks.packed_bounds(torch.tensor([0, 3, 3, 12], dtype=torch.int32), 12)
    assert ok.dtype == torch.int64 and ok.tolist() == [0, 3, 3, 12]
    sek.check_device_errors("cpu")


def host_chunks(lengths, q):
    """The chunking written out: per sequence, chunks of q tokens, the last one shorter."""
    chunks, seqs, token = [], [], 0
    for length in lengths:
        seqs.append((len(chunks), -(-length // q)))
        chunks += [(0, token + s, min(q, length - s)) for s in range(0, length, q)]
        token += length
    return chunks, seqs


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(0, 40), min_size=1, max_size=8), q=st.integers(1, 17))
def test_device_chunk_tables_match_the_written_out_chunking(lengths, q):
    l = sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    table, seq_table = _chunks.chunk_tables(1, l, _chunks.packed_bounds(cu, l), q,
                                            torch.device("cpu"))
    chunks, seqs = host_chunks(lengths, q)
    bound = _chunks.max_chunks(1, l, len(lengths), q)
    assert table.shape == (3, bound) and len(chunks) <= bound
    real = [tuple(c) for c in table.t().tolist() if c[2] > 0]
    assert real == chunks
    assert all(c[2] == 0 for c in table.t().tolist()[len(chunks):])  # padding at the end
    assert [tuple(s) for s in seq_table.t().tolist()] == seqs


@pytest.mark.parametrize("backend", [
    "torch", pytest.param("triton", marks=pytest.mark.interpreter),
    pytest.param("cuda-host", marks=pytest.mark.skipif(not _extension.has_op("_ssd_scan"),
                                                       reason="the CUDA extension is not built"))])
def test_packed_scan_with_padding_chunks_equals_separate_runs(backend):
    from tests.kernels.ssm_cases import scan_inputs, sequential_scan, slice_heads

    lengths, q = [0, 3, 0, 5, 1], 4  # 4 real chunks, a bound of 6: two padding chunks
    l = sum(lengths)
    t = scan_inputs(1, l, 8, 6, 2, 5, seed=21)
    k, p = 3, 4
    x, z = slice_heads(t["x"], 8, 2, k, p), slice_heads(t["z"], 8, 2, k, p)
    dt = slice_heads(t["dt"], 8, 2, k)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    init = torch.randn(len(lengths), 2 * k, p, 5, generator=torch.Generator().manual_seed(5))
    kw = dict(D=t["D2"], z=z, dt_bias=t["dt_bias"], dt_softplus=True, initial_states=init,
              heads_per_group=k)
    want_y, want_final = sequential_scan(x, dt, t["A"], t["B"], t["C"], cu_seqlens=cu, **kw)
    if backend == "cuda-host":
        y, final = scan_module._cuda(x, dt, t["A"], t["B"], t["C"], t["D2"], z, t["dt_bias"], init,
                                     _chunks.packed_bounds(cu, l), q, True, 0.0, float("inf"), k)
    else:
        y, final = sek.ssd_scan(x, dt, t["A"], t["B"], t["C"], chunk_size=q, cu_seqlens=cu,
                                return_final_states=True, head_dim=p, backend=backend, **kw)
    torch.testing.assert_close(y.double(), want_y, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(final.double(), want_final, atol=1e-4, rtol=1e-4)
