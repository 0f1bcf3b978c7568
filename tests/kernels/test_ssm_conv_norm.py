"""causal_conv1d (+ update) and gated_rmsnorm: every backend against plain torch formulations on
explicitly sliced parent weights; varlen equals separate runs; decode continues the prefill and
writes only the active slice of the cache; bad inputs; opcheck; property tests.

The CUDA kernels' per-thread code also runs on the CPU: the private ops ``_causal_conv1d``,
``_causal_conv1d_update`` and ``_gated_rmsnorm`` have CPU impls that run it over the kernel's
grid sequentially (csrc/ssm/causal_conv1d.h). The "CUDA code on the CPU" tests below call them
through the ops' cuda launch path with CPU tensors: they check the kernels' index math, slicing,
varlen walk and reduction without a GPU, not the launch itself (the gpu-marked tests do that)."""

import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import star_elastic_kernels as sek
from star_elastic_kernels import _extension
from star_elastic_kernels.ssm import conv as conv_ops
from star_elastic_kernels.ssm import norm as norm_ops
from tests.helpers import backend_cases
from tests.kernels.ssm_cases import parent_heads, skip_unsupported

H, P, G, N = 8, 6, 2, 5
CONV_DIM = H * P + 2 * G * N
CASES = backend_cases()
# cheap examples (well under 0.1 s each): 200 per property test in CI; SSM_HYPOTHESIS_EXAMPLES overrides
EXAMPLES = int(os.environ.get("SSM_HYPOTHESIS_EXAMPLES", "200"))
HOST_CODE = _extension.unavailable_reason() is None and _extension.has_op("_gated_rmsnorm")
needs_host_code = pytest.mark.skipif(
    not HOST_CODE, reason=f"the CUDA code's CPU impls need the compiled extension with the conv/norm "
                          f"ops: {_extension.unavailable_reason() or 'built from older sources'}")


def property_runs():
    """(device, backends) for the property tests: the kernels on the GPU, else Triton in the
    interpreter; plus "cuda" on CPU tensors (the CUDA code's per-thread functions on the host)
    whenever the extension is loaded. Skips when nothing but the reference can run."""
    if torch.cuda.is_available():
        return [("cuda", "triton"), ("cuda", "cuda")] + ([("cpu", "cuda")] if HOST_CODE else [])
    runs = [("cpu", "triton")] if os.environ.get("TRITON_INTERPRET") == "1" else []
    runs += [("cpu", "cuda")] if HOST_CODE else []
    if not runs:
        pytest.skip("no kernel backend can run here")
    return runs


def conv_channels(k, p, device="cpu"):
    """Parent conv channels of the compact slice, written out: active x channels, then B and C."""
    x_part = [h * P + c for h in parent_heads(H, G, k) for c in range(p)]
    return torch.tensor(x_part + list(range(H * P, CONV_DIM)), device=device)


def plain_conv(x, weight, bias, history=None, silu=True):
    """F.conv1d on the explicitly sliced weight, with the history prepended (float64)."""
    b, l, c = x.shape
    w = weight.shape[1]
    if history is None:
        history = torch.zeros(b, c, w - 1, dtype=torch.float64)
    padded = torch.cat([history.double(), x.double().transpose(1, 2)], dim=-1)
    if l == 0:
        y = padded[:, :, :0]
    else:
        y = F.conv1d(padded, weight.double()[:, None, :], None if bias is None else bias.double(), groups=c)
    return (F.silu(y) if silu else y).transpose(1, 2), padded[:, :, -(w - 1):]


def slice_kw(k, p):
    return dict(num_heads=H, num_groups=G, heads_per_group=k, head_dim=p)


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("k,p", [(4, 6), (3, 4), (1, 1)])
@pytest.mark.parametrize("width", [2, 4])
def test_conv_slice_equals_plain_conv_on_sliced_weights(backend, device, k, p, width):
    g = torch.Generator().manual_seed(k * 10 + p)
    weight, bias = torch.randn(CONV_DIM, width, generator=g), torch.randn(CONV_DIM, generator=g)
    channels = conv_channels(k, p)
    x = torch.randn(2, 7, len(channels), generator=g)
    init = torch.randn(2, len(channels), width - 1, generator=g)
    y, final = sek.causal_conv1d(x.to(device), weight.to(device), bias.to(device), initial_states=init.to(device),
                                 return_final_states=True, backend=backend, **slice_kw(k, p))
    want, want_final = plain_conv(x, weight[channels], bias[channels], init)
    torch.testing.assert_close(y.cpu().double(), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final.cpu().double(), want_final, atol=0, rtol=0)


@pytest.mark.parametrize("backend,device", CASES)
def test_conv_dense_short_sequences_and_views(backend, device):
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(CONV_DIM, 3, CONV_DIM, generator=g)[:, :, 0]  # strided parent weight
    packed = torch.randn(2, 5, CONV_DIM + 7, generator=g)
    x = packed[..., 3 : 3 + CONV_DIM]  # a view, unit channel stride
    init = torch.randn(2, CONV_DIM, 2, generator=g)
    for length in (0, 1, 5):
        y, final = sek.causal_conv1d(x[:, :length].to(device), weight.to(device), activation=None,
                                     initial_states=init.to(device), return_final_states=True, backend=backend)
        want, want_final = plain_conv(x[:, :length], weight, None, init, silu=False)
        assert y.shape == (2, length, CONV_DIM)
        torch.testing.assert_close(y.cpu().double(), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(final.cpu().double(), want_final, atol=0, rtol=0)


@pytest.mark.parametrize("backend,device", CASES)
def test_conv_varlen_equals_separate_runs(backend, device):
    k, p, width = 2, 3, 4
    g = torch.Generator().manual_seed(2)
    weight, bias = torch.randn(CONV_DIM, width, generator=g), torch.randn(CONV_DIM, generator=g)
    c = len(conv_channels(k, p))
    x = torch.randn(1, 12, c, generator=g).to(device)
    cu = torch.tensor([0, 2, 2, 9, 12], device=device)
    init = torch.randn(4, c, width - 1, generator=g).to(device)
    kw = dict(return_final_states=True, backend=backend, **slice_kw(k, p))
    y, finals = sek.causal_conv1d(x, weight.to(device), bias.to(device), initial_states=init, cu_seqlens=cu, **kw)
    bounds = cu.tolist()
    for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        part, final = sek.causal_conv1d(x[:, s:e], weight.to(device), bias.to(device),
                                        initial_states=init[i : i + 1], **kw)
        torch.testing.assert_close(y[:, s:e], part, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(finals[i : i + 1], final, atol=0, rtol=0)


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("k,p", [(4, 6), (2, 3)])
def test_conv_update_continues_the_prefill_and_touches_only_the_slice(backend, device, k, p):
    width = 4
    g = torch.Generator().manual_seed(3)
    weight, bias = torch.randn(CONV_DIM, width, generator=g).to(device), torch.randn(CONV_DIM, generator=g).to(device)
    channels = conv_channels(k, p, device)
    x = torch.randn(2, 8, len(channels), generator=g).to(device)
    full = sek.causal_conv1d(x, weight, bias, backend="torch", **slice_kw(k, p))
    _, state = sek.causal_conv1d(x[:, :5], weight, bias, return_final_states=True, backend="torch", **slice_kw(k, p))
    cache = torch.randn(3, CONV_DIM, width - 1, generator=g).to(device)
    slots = torch.tensor([2, 0], device=device)
    cache[slots[:, None], channels[None, :]] = state
    for t in range(5, 8):
        before = cache.clone()
        y = sek.causal_conv1d_update(x[:, t], cache, weight, bias, state_indices=slots, backend=backend,
                                     **slice_kw(k, p))
        torch.testing.assert_close(y, full[:, t], atol=1e-5, rtol=1e-5)
        touched = torch.zeros(cache.shape, dtype=torch.bool, device=device)
        touched[slots[:, None], channels[None, :]] = True
        assert torch.equal(cache[~touched], before[~touched])
        torch.testing.assert_close(cache[slots[:, None], channels[None, :]],
                                   torch.cat([before[slots[:, None], channels[None, :]][..., 1:], x[:, t, :, None]], -1))


@pytest.mark.parametrize("backend,device", CASES)
def test_conv_half_precision(backend, device):
    skip_unsupported(backend, device, torch.float16)
    g = torch.Generator().manual_seed(4)
    weight = torch.randn(CONV_DIM, 4, generator=g)
    x = torch.randn(2, 6, CONV_DIM, generator=g).half()
    y = sek.causal_conv1d(x.to(device), weight.to(device), backend=backend)
    want, _ = plain_conv(x.float(), weight, None)
    torch.testing.assert_close(y.cpu().double(), want, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("backend,device", CASES)
def test_conv_opcheck(backend, device):
    g = torch.Generator().manual_seed(5)
    weight, bias = torch.randn(CONV_DIM, 4, generator=g).to(device), torch.randn(CONV_DIM, generator=g).to(device)
    c = len(conv_channels(3, 4))
    x = torch.randn(1, 6, c, generator=g).to(device)
    layout = [H, G, 3, 4]
    torch.library.opcheck(torch.ops.star_elastic.causal_conv1d.default,
                          (x, weight, bias, None, None, True, layout, backend))
    cu = torch.tensor([0, 4, 6], device=device)
    init = torch.randn(2, c, 3, generator=g).to(device)
    torch.library.opcheck(torch.ops.star_elastic.causal_conv1d.default,
                          (x, weight, bias, init, cu, False, layout, backend))
    cache = torch.randn(2, CONV_DIM, 3, generator=g).to(device)
    torch.library.opcheck(torch.ops.star_elastic.causal_conv1d_update.default,
                          (x[:, 0].contiguous(), cache, weight, bias, torch.tensor([1], device=device), True,
                           layout, backend))


def _conv_bad_calls(cache):
    weight = torch.randn(CONV_DIM, 4)
    c = len(conv_channels(3, 4))
    x = torch.randn(1, 5, c)
    sliced = slice_kw(3, 4)
    s = lambda **kw: (lambda: sek.causal_conv1d(**{**dict(x=x, weight=weight, **sliced), **kw}))  # noqa: E731
    u = lambda **kw: (lambda: sek.causal_conv1d_update(**{**dict(x=x[:, 0], conv_state=cache, weight=weight,  # noqa: E731
                                                                  **sliced), **kw}))
    return [
        (s(num_heads=None), ValueError, "needs num_heads"),
        (s(heads_per_group=5), ValueError, "heads_per_group=5 must be in [1, H/G=4]"),
        (s(num_heads=7), ValueError, "not divisible"),
        (s(head_dim=7, x=torch.randn(1, 5, G * 3 * 7 + 2 * G * N)), ValueError, "head_dim=7 must be in [1, P=6]"),
        (s(x=torch.randn(1, 5, c + 1)), ValueError, "not G*k*p + 2*G*N"),
        (s(num_heads=None, num_groups=None, heads_per_group=None, head_dim=None), ValueError, "has 44 channels"),
        (s(weight=torch.randn(CONV_DIM, 5)), ValueError, "kernel width w in 2..4"),
        (s(bias=torch.randn(3)), ValueError, "bias has shape"),
        (s(x=x.long()), TypeError, "x must be"),
        (s(x=x.transpose(0, 2).contiguous().transpose(0, 2)), ValueError, "unit innermost stride"),
        (s(activation="relu"), ValueError, "activation"),
        (s(initial_states=torch.zeros(1, c, 2)), ValueError, "initial_states has shape"),
        (s(cu_seqlens=torch.tensor([0, 3, 2, 5])), ValueError, "never decrease"),
        (s(cu_seqlens=torch.tensor([0, 3])), ValueError, "end at l=5"),
        (u(state_indices=torch.tensor([3])), ValueError, "state_indices must be slots in [0, 2)"),
        (u(conv_state=torch.zeros(2, CONV_DIM, 2)), ValueError, "conv_state has shape"),
        (u(x=x[:, 0, :-1]), ValueError, "not G*k*p + 2*G*N"),
        (u(heads_per_group=5), ValueError, "heads_per_group=5"),
        (u(conv_state=cache.long()), TypeError, "conv_state must be"),
    ]


@pytest.mark.parametrize("index", range(19))
def test_conv_bad_inputs_raise_before_the_cache_is_written(index):
    cache = torch.randn(2, CONV_DIM, 3)
    before = cache.clone()
    calls = _conv_bad_calls(cache)
    assert len(calls) == 19
    call, error, words = calls[index]
    with pytest.raises(error) as info:
        call()
    assert words in str(info.value)
    assert torch.equal(cache, before)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(groups=st.sampled_from([1, 2]), parent_per_group=st.integers(1, 3), parent_p=st.integers(1, 5),
       state_size=st.integers(1, 4), width=st.integers(2, 4), length=st.integers(0, 9), data=st.data(),
       dtype=st.sampled_from([torch.float32, torch.float16]), varlen=st.booleans(), use_init=st.booleans(),
       use_bias=st.booleans(), seed=st.integers(0, 2**16))
def test_conv_property_kernels_match_reference(groups, parent_per_group, parent_p, state_size, width, length, data,
                                                dtype, varlen, use_init, use_bias, seed):
    runs = property_runs()
    k = data.draw(st.integers(1, parent_per_group), label="k")
    p = data.draw(st.integers(1, parent_p), label="p")
    Hp = groups * parent_per_group
    conv_dim = Hp * parent_p + 2 * groups * state_size
    c = groups * k * p + 2 * groups * state_size
    g = torch.Generator().manual_seed(seed)
    b = 1 if varlen else 2
    cu = None
    seqs = b
    if varlen:
        cuts = sorted(torch.randint(0, length + 1, (2,), generator=g).tolist())
        cu = torch.tensor([0, *cuts, length])
        seqs = 3
    x = torch.randn(b, length, c, generator=g).to(dtype)
    weight = torch.randn(conv_dim, width, generator=g)
    kw = dict(bias=torch.randn(conv_dim, generator=g) if use_bias else None, cu_seqlens=cu,
              initial_states=torch.randn(seqs, c, width - 1, generator=g).to(dtype) if use_init else None,
              return_final_states=True, num_heads=Hp, num_groups=groups, heads_per_group=k, head_dim=p)
    want = sek.causal_conv1d(x, weight, backend="torch", **kw)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
    for device, backend in runs:
        to = lambda t: t.to(device) if torch.is_tensor(t) else t  # noqa: E731
        if device == "cpu" and backend == "cuda":  # the CUDA code on the host (see module doc)
            layout = [Hp, groups, k, p]
            got = conv_ops._causal_conv1d_op(x, weight, kw["bias"], kw["initial_states"], cu, True,
                                             layout, "cuda")
        else:
            got = sek.causal_conv1d(to(x), to(weight), backend=backend, **{n: to(v) for n, v in kw.items()})
        for ours, ref in zip(got, want):
            torch.testing.assert_close(ours.cpu(), ref, **tol)


# --- gated RMSNorm -------------------------------------------------------------------------------


def plain_gated_norm(y, z, weight, groups, eps, norm_before_gate):
    y, z = y.double(), None if z is None else z.double()
    out = y if (z is None or norm_before_gate) else y * F.silu(z)
    chunks = out.unflatten(-1, (groups, -1))
    out = (chunks / torch.sqrt(chunks.square().mean(-1, keepdim=True) + eps)).flatten(-2) * weight.double()
    return out * F.silu(z) if (z is not None and norm_before_gate) else out


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("k,p", [(4, 6), (3, 2), (1, 1)])
@pytest.mark.parametrize("norm_before_gate", [False, True])
def test_gated_norm_slice_equals_plain_norm_on_sliced_weight(backend, device, k, p, norm_before_gate):
    g = torch.Generator().manual_seed(k + p)
    weight = torch.randn(H * P, generator=g)
    y, z = torch.randn(2, 3, G * k * p, generator=g), torch.randn(2, 3, G * k * p, generator=g)
    got = sek.gated_rmsnorm(y.to(device), z.to(device), weight.to(device), eps=1e-5, group_size=H * P // G,
                            norm_before_gate=norm_before_gate, heads_per_group=k, head_dim=p, num_heads=H,
                            backend=backend)
    sliced_weight = weight[[h * P + c for h in parent_heads(H, G, k) for c in range(p)]]
    want = plain_gated_norm(y, z, sliced_weight, G, 1e-5, norm_before_gate)
    torch.testing.assert_close(got.cpu().double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gated_norm_dense_without_gate(backend, device, dtype):
    g = torch.Generator().manual_seed(7)
    weight = torch.randn(48, generator=g)
    y = torch.randn(5, 48, generator=g).to(dtype)
    got = sek.gated_rmsnorm(y.to(device), None, weight.to(device), eps=1e-6, group_size=16, backend=backend)
    want = plain_gated_norm(y, None, weight, 3, 1e-6, False)
    assert got.dtype == dtype
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(got.cpu().double(), want, **tol)
    empty = sek.gated_rmsnorm(y[:0].to(device), None, weight.to(device), eps=1e-6, group_size=16, backend=backend)
    assert empty.shape == (0, 48)


@pytest.mark.parametrize("backend,device", CASES)
def test_gated_norm_opcheck(backend, device):
    g = torch.Generator().manual_seed(8)
    weight = torch.randn(H * P, generator=g).to(device)
    y, z = torch.randn(4, G * 3 * 4, generator=g).to(device), torch.randn(4, G * 3 * 4, generator=g).to(device)
    torch.library.opcheck(torch.ops.star_elastic.gated_rmsnorm.default,
                          (y, z, weight, 1e-5, H * P // G, False, 3, 4, H, backend))


@pytest.mark.parametrize("call,error,words", [
    (lambda: sek.gated_rmsnorm(torch.randn(2, 12), None, torch.randn(12), eps=1e-5, group_size=5), ValueError,
     "group_size=5"),
    (lambda: sek.gated_rmsnorm(torch.randn(2, 10), None, torch.randn(12), eps=1e-5, group_size=6), ValueError,
     "y has 10 channels, expected 12"),
    (lambda: sek.gated_rmsnorm(torch.randn(2, 12), torch.randn(2, 11), torch.randn(12), eps=1e-5, group_size=6),
     ValueError, "z has shape"),
    (lambda: sek.gated_rmsnorm(torch.randn(2, 12), None, torch.randn(12), eps=1e-5, group_size=6,
                               heads_per_group=1), ValueError, "needs num_heads"),
    (lambda: sek.gated_rmsnorm(torch.randn(2, 12), None, torch.randn(48), eps=1e-5, group_size=24,
                               heads_per_group=5, num_heads=8), ValueError, "heads_per_group=5 must be in [1, H/G=4]"),
    (lambda: sek.gated_rmsnorm(torch.randn(2, 12), None, torch.randn(48), eps=1e-5, group_size=24,
                               head_dim=7, num_heads=8), ValueError, "head_dim=7 must be in [1, P=6]"),
    (lambda: sek.gated_rmsnorm(torch.randn(2, 12), None, torch.randn(48), eps=1e-5, group_size=24,
                               heads_per_group=2, head_dim=2, num_heads=7), ValueError, "num_heads=7"),
    (lambda: sek.gated_rmsnorm(torch.randn(2, 12).long(), None, torch.randn(12), eps=1e-5, group_size=6),
     TypeError, "y must be"),
    (lambda: sek.gated_rmsnorm(torch.randn(2, 12), torch.randn(2, 12).half(), torch.randn(12), eps=1e-5,
                               group_size=6), TypeError, "z must be torch.float32"),
    (lambda: sek.gated_rmsnorm(torch.randn(12, 2).t(), None, torch.randn(12), eps=1e-5, group_size=6),
     ValueError, "unit innermost stride"),
    (lambda: sek.gated_rmsnorm(torch.randn(2, 12), None, torch.randn(12), eps=-1.0, group_size=6), ValueError,
     "eps"),
])
def test_gated_norm_bad_inputs(call, error, words):
    with pytest.raises(error) as info:
        call()
    assert words in str(info.value)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(groups=st.sampled_from([1, 2, 4]), parent_per_group=st.integers(1, 4), parent_p=st.integers(1, 12),
       rows=st.integers(0, 5), data=st.data(), dtype=st.sampled_from([torch.float32, torch.float16]),
       gate=st.sampled_from([None, False, True]), seed=st.integers(0, 2**16))
def test_gated_norm_property_kernels_match_reference(groups, parent_per_group, parent_p, rows, data, dtype, gate,
                                                      seed):
    runs = property_runs()
    k = data.draw(st.integers(1, parent_per_group), label="k")
    p = data.draw(st.integers(1, parent_p), label="p")
    Hp = groups * parent_per_group
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(Hp * parent_p, generator=g)
    y = torch.randn(rows, groups * k * p, generator=g).to(dtype)
    z = None if gate is None else torch.randn(rows, groups * k * p, generator=g).to(dtype)
    kw = dict(eps=1e-5, group_size=parent_per_group * parent_p, norm_before_gate=bool(gate), heads_per_group=k,
              head_dim=p, num_heads=Hp)
    want = sek.gated_rmsnorm(y, z, weight, backend="torch", **kw)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
    for device, backend in runs:
        if device == "cpu" and backend == "cuda":  # the CUDA code on the host (see module doc)
            got = norm_ops._gated_rmsnorm_op(y, z, weight, 1e-5, parent_per_group * parent_p, bool(gate), k, p,
                                             Hp, "cuda")
        else:
            got = sek.gated_rmsnorm(y.to(device), None if z is None else z.to(device), weight.to(device),
                                    backend=backend, **kw)
        torch.testing.assert_close(got.cpu(), want, **tol)


# --- gradients (autograd through the reference, every backend) -----------------------------------


@pytest.mark.parametrize("backend,device", CASES)
def test_conv_gradients_match_autograd_through_plain_conv(backend, device):
    k, p, width = 3, 4, 4
    g = torch.Generator().manual_seed(20)
    channels = conv_channels(k, p)
    t = dict(x=torch.randn(2, 6, len(channels), generator=g), weight=torch.randn(CONV_DIM, width, generator=g),
             bias=torch.randn(CONV_DIM, generator=g), init=torch.randn(2, len(channels), width - 1, generator=g))
    ours = {n: v.clone().to(device).requires_grad_() for n, v in t.items()}
    y, final = sek.causal_conv1d(ours["x"], ours["weight"], ours["bias"], initial_states=ours["init"],
                                 return_final_states=True, backend=backend, **slice_kw(k, p))
    seeds = torch.randn(y.shape, generator=g), torch.randn(final.shape, generator=g)
    ((y * seeds[0].to(device)).sum() + (final * seeds[1].to(device)).sum()).backward()
    plain = {n: v.double().requires_grad_() for n, v in t.items()}
    want, want_final = plain_conv(plain["x"], plain["weight"][channels], plain["bias"][channels], plain["init"])
    ((want * seeds[0].double()).sum() + (want_final * seeds[1].double()).sum()).backward()
    for name in t:
        torch.testing.assert_close(ours[name].grad.cpu().double(), plain[name].grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("norm_before_gate", [False, True])
def test_gated_norm_gradients_match_autograd_through_plain_norm(backend, device, norm_before_gate):
    k, p = 3, 4
    g = torch.Generator().manual_seed(21)
    t = dict(y=torch.randn(4, G * k * p, generator=g), z=torch.randn(4, G * k * p, generator=g),
             weight=torch.randn(H * P, generator=g))
    ours = {n: v.clone().to(device).requires_grad_() for n, v in t.items()}
    out = sek.gated_rmsnorm(ours["y"], ours["z"], ours["weight"], eps=1e-5, group_size=H * P // G,
                            norm_before_gate=norm_before_gate, heads_per_group=k, head_dim=p, num_heads=H,
                            backend=backend)
    seed = torch.randn(out.shape, generator=g)
    (out * seed.to(device)).sum().backward()
    plain = {n: v.double().requires_grad_() for n, v in t.items()}
    index = [h * P + c for h in parent_heads(H, G, k) for c in range(p)]
    want = plain_gated_norm(plain["y"], plain["z"], plain["weight"][index], G, 1e-5, norm_before_gate)
    (want * seed.double()).sum().backward()
    for name in t:
        torch.testing.assert_close(ours[name].grad.cpu().double(), plain[name].grad, atol=1e-4, rtol=1e-4)


# --- the CUDA code on the CPU (the private ops' CPU impls; see the module docstring) --------------

HOST_TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=1e-2, rtol=1e-2),
            torch.bfloat16: dict(atol=4e-2, rtol=4e-2)}


def host_conv(x, weight, bias, init, cu, silu, slice_args):
    """The cuda backend's launch path on CPU tensors: runs the kernel's per-thread code on the host."""
    layout = [] if slice_args is None else [slice_args["num_heads"], slice_args["num_groups"],
                                            slice_args["heads_per_group"], slice_args["head_dim"]]
    return conv_ops._causal_conv1d_op(x, weight, bias, init, cu, silu, layout, "cuda")


@needs_host_code
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("k,p", [(4, 6), (3, 4), (1, 1), (None, None)])
def test_host_conv_matches_reference(dtype, width, k, p):
    sliced = None if k is None else slice_kw(k, p)
    g = torch.Generator().manual_seed(width * 7 + (0 if sliced is None else sliced["heads_per_group"]))
    weight = torch.randn(width, CONV_DIM, generator=g).t()  # strided parent weight
    bias = torch.randn(CONV_DIM, generator=g)
    c = CONV_DIM if sliced is None else len(conv_channels(sliced["heads_per_group"], sliced["head_dim"]))
    packed = torch.randn(2, 75, c + 5, generator=g).to(dtype)
    x = packed[..., 2 : 2 + c]  # a view: row and token strides of the packed tensor
    init = torch.randn(2, c, width - 1, generator=g).to(dtype)
    for use_bias, use_init, silu in [(True, True, True), (False, False, False), (True, False, True)]:
        kw = dict(bias=bias if use_bias else None, initial_states=init if use_init else None,
                  activation="silu" if silu else None, return_final_states=True, **(sliced or {}))
        want, want_final = sek.causal_conv1d(x, weight, backend="torch", **kw)
        y, final = host_conv(x, weight, kw["bias"], kw["initial_states"], None, silu, sliced)
        torch.testing.assert_close(y, want, **HOST_TOL[dtype])
        torch.testing.assert_close(final, want_final, atol=0, rtol=0)


@needs_host_code
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("sliced", [True, False])
def test_host_conv_varlen_matches_reference(dtype, index_dtype, sliced):
    # boundaries inside and across the kernel's 32-token blocks, and empty sequences
    width = 4
    kw = slice_kw(2, 3) if sliced else {}
    c = len(conv_channels(2, 3)) if sliced else CONV_DIM
    g = torch.Generator().manual_seed(30 + sliced)
    weight, bias = torch.randn(CONV_DIM, width, generator=g), torch.randn(CONV_DIM, generator=g)
    x = torch.randn(1, 100, c, generator=g).to(dtype)
    cu = torch.tensor([0, 0, 2, 2, 31, 33, 64, 65, 100, 100], dtype=index_dtype)
    init = torch.randn(len(cu) - 1, c, width - 1, generator=g).to(dtype)
    for use_init in (True, False):
        history = init if use_init else None
        want, want_final = sek.causal_conv1d(x, weight, bias, initial_states=history, cu_seqlens=cu,
                                             return_final_states=True, backend="torch", **kw)
        y, final = host_conv(x, weight, bias, history, cu, True, kw or None)
        torch.testing.assert_close(y, want, **HOST_TOL[dtype])
        torch.testing.assert_close(final, want_final, atol=0, rtol=0)


@needs_host_code
def test_host_conv_many_channel_blocks_and_float64_parameters():
    # c > 128 (two channel blocks), float64 weight/bias/history narrowed by the launcher, l = 0
    g = torch.Generator().manual_seed(31)
    weight, bias = torch.randn(300, 3, generator=g).double(), torch.randn(300, generator=g).double()
    x = torch.randn(3, 40, 300, generator=g)
    init = torch.randn(3, 300, 2, generator=g).double()
    want = sek.causal_conv1d(x, weight, bias, initial_states=init, backend="torch")
    y, _ = host_conv(x, weight, bias, init, None, True, None)
    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)
    y, final = host_conv(x[:, :0], weight, bias, init, None, True, None)
    assert y.shape == (3, 0, 300) and torch.equal(final, init.float())


@needs_host_code
@pytest.mark.parametrize("dtype,state_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                               (torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16)])
@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("slots", [None, torch.int32, torch.int64])
@pytest.mark.parametrize("sliced", [True, False])
def test_host_conv_update_matches_reference_and_touches_only_the_slice(dtype, state_dtype, width, slots, sliced):
    k, p = 3, 4
    kw = slice_kw(k, p) if sliced else {}
    channels = conv_channels(k, p) if sliced else torch.arange(CONV_DIM)
    g = torch.Generator().manual_seed(width)
    weight, bias = torch.randn(CONV_DIM, width, generator=g), torch.randn(CONV_DIM, generator=g)
    cache = torch.randn(CONV_DIM, 4, width - 1, generator=g).permute(1, 0, 2).to(state_dtype)  # strided cache
    x = torch.randn(3, len(channels), generator=g).to(dtype)
    state_indices = None if slots is None else torch.tensor([3, 0, 2], dtype=slots)
    want_cache = cache.clone()
    want = sek.causal_conv1d_update(x, want_cache, weight, bias, state_indices=state_indices, backend="torch", **kw)
    layout = [H, G, k, p] if sliced else []
    got = conv_ops._causal_conv1d_update_op(x, cache, weight, bias, state_indices, True, layout, "cuda")
    torch.testing.assert_close(got, want, **HOST_TOL[dtype])
    assert torch.equal(cache, want_cache)  # bit-identical: the update only shifts and stores x


@needs_host_code
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gate", [None, False, True])
@pytest.mark.parametrize("k,p", [(4, 6), (3, 2), (1, 1), (None, None)])
def test_host_gated_norm_matches_reference(dtype, gate, k, p):
    g = torch.Generator().manual_seed(40)
    weight = torch.randn(H * P, generator=g)
    if k is None:
        c, args, kw = H * P, (0, 0, 0), {}
    else:
        c, args, kw = G * k * p, (k, p, H), dict(heads_per_group=k, head_dim=p, num_heads=H)
    packed = torch.randn(3, 5, c + 3, generator=g).to(dtype)
    y = packed[..., :c]  # rows strided
    z = None if gate is None else torch.randn(3, 5, c, generator=g).to(dtype)
    want = sek.gated_rmsnorm(y, z, weight, eps=1e-5, group_size=H * P // G, norm_before_gate=bool(gate),
                             backend="torch", **kw)
    got = norm_ops._gated_rmsnorm_op(y, z, weight, 1e-5, H * P // G, bool(gate), *args, "cuda")
    assert got.shape == want.shape and got.dtype == dtype
    torch.testing.assert_close(got, want, **HOST_TOL[dtype])


@needs_host_code
def test_host_gated_norm_wide_groups():
    # groups wider than a warp (each lane sums several columns), many rows, one group
    g = torch.Generator().manual_seed(41)
    for groups, width in ((1, 200), (4, 4 * 97)):
        weight = torch.randn(width, generator=g)
        y, z = torch.randn(33, width, generator=g), torch.randn(33, width, generator=g)
        want = sek.gated_rmsnorm(y, z, weight, eps=1e-6, group_size=width // groups, backend="torch")
        got = norm_ops._gated_rmsnorm_op(y, z, weight, 1e-6, width // groups, False, 0, 0, 0, "cuda")
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@needs_host_code
def test_host_ops_guard_the_raw_pointer_contract():
    x, weight = torch.randn(1, 4, CONV_DIM), torch.randn(CONV_DIM, 4)
    y = torch.empty_like(x)
    ops = torch.ops.star_elastic
    with pytest.raises(RuntimeError, match="layout does not describe a slice"):
        ops._causal_conv1d(x, weight, None, None, None, y, [10, 2, 3, 4, 6, 48], True)
    with pytest.raises(RuntimeError, match="unit channel stride"):
        ops._causal_conv1d(x.transpose(1, 2).contiguous().transpose(1, 2), weight, None, None, None, y, [], True)
    with pytest.raises(RuntimeError, match="w in 2..4"):
        ops._causal_conv1d(x, torch.randn(CONV_DIM, 5), None, None, None, y, [], True)
    with pytest.raises(RuntimeError, match="conv_state must be"):
        ops._causal_conv1d_update(x[:, 0], torch.zeros(2, CONV_DIM, 2), weight, None, None, y[:, 0],
                                  torch.zeros(1, dtype=torch.int32), [], True)
    with pytest.raises(RuntimeError, match="errors must be a"):
        ops._causal_conv1d_update(x[:, 0], torch.zeros(2, CONV_DIM, 3), weight, None, None, y[:, 0],
                                  torch.zeros(1), [], True)
    with pytest.raises(RuntimeError, match="do not describe a slice"):
        ops._gated_rmsnorm(torch.randn(2, 12), None, torch.randn(12), torch.empty(2, 12), 5, 1, 12, 12, 1e-5, False)


# --- the cuda backend on the GPU -------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_cuda_conv_at_nemotron_shape(dtype):
    # Nemotron-H-like layer: H=64, P=64, G=8, N=128, w=4; a slice and a packed batch
    Hn, Pn, Gn, Nn, width = 64, 64, 8, 128, 4
    conv_dim = Hn * Pn + 2 * Gn * Nn
    kw = dict(num_heads=Hn, num_groups=Gn, heads_per_group=5, head_dim=48)
    c = Gn * 5 * 48 + 2 * Gn * Nn
    g = torch.Generator().manual_seed(50)
    weight, bias = torch.randn(conv_dim, width, generator=g).cuda(), torch.randn(conv_dim, generator=g).cuda()
    x = torch.randn(1, 700, c, generator=g).to(dtype).cuda()
    cu = torch.tensor([0, 1, 100, 100, 433, 700], device="cuda")
    init = torch.randn(5, c, width - 1, generator=g).to(dtype).cuda()
    args = dict(initial_states=init, cu_seqlens=cu, return_final_states=True, **kw)
    y, final = sek.causal_conv1d(x, weight, bias, backend="cuda", **args)
    want, want_final = sek.causal_conv1d(x, weight, bias, backend="torch", **args)
    torch.testing.assert_close(y, want, **HOST_TOL[dtype])
    torch.testing.assert_close(final, want_final, atol=0, rtol=0)
    cache = torch.randn(8, conv_dim, width - 1, generator=g).to(dtype).cuda()
    slots = torch.tensor([5, 1, 7], device="cuda")
    want_cache = cache.clone()
    got = sek.causal_conv1d_update(x[0, :3], cache, weight, bias, state_indices=slots, backend="cuda", **kw)
    ref = sek.causal_conv1d_update(x[0, :3], want_cache, weight, bias, state_indices=slots, backend="torch", **kw)
    torch.testing.assert_close(got, ref, **HOST_TOL[dtype])
    assert torch.equal(cache, want_cache)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("norm_before_gate", [False, True])
def test_gpu_cuda_gated_norm_at_nemotron_shape(dtype, norm_before_gate):
    Hn, Pn, Gn = 64, 64, 8
    g = torch.Generator().manual_seed(51)
    weight = torch.randn(Hn * Pn, generator=g).cuda()
    kw = dict(eps=1e-5, group_size=Hn * Pn // Gn, norm_before_gate=norm_before_gate, heads_per_group=6,
              head_dim=40, num_heads=Hn)
    y = torch.randn(3, 257, Gn * 6 * 40, generator=g).to(dtype).cuda()
    z = torch.randn(3, 257, Gn * 6 * 40, generator=g).to(dtype).cuda()
    got = sek.gated_rmsnorm(y, z, weight, backend="cuda", **kw)
    want = sek.gated_rmsnorm(y, z, weight, backend="torch", **kw)
    torch.testing.assert_close(got, want, **HOST_TOL[dtype])
