"""moe_ffn: the reference against a token-by-token formulation, every backend against the
reference, the nesting invariant against sliced copies, masked experts poisoned with NaN, edge
shapes, gradients, registration, bad inputs, a hypothesis property test."""

import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import star_elastic_kernels as sek
from star_elastic_kernels.reference import moe as reference
from tests.helpers import backend_cases

TOL = {torch.float32: dict(rtol=2e-4, atol=2e-4), torch.float16: dict(rtol=3e-2, atol=3e-2),
       torch.bfloat16: dict(rtol=8e-2, atol=8e-2), torch.float64: dict(rtol=1e-9, atol=1e-9)}
# Hundreds of hypothesis examples per run: most on small shapes (each Triton-interpreter example
# costs ~0.1-0.2 s there), a tenth-and-a-half on the broad shapes (~1-2 s each).
PROPERTY_EXAMPLES = int(os.environ.get("MOE_PROPERTY_EXAMPLES", "200"))
BROAD_EXAMPLES = max(1, PROPERTY_EXAMPLES * 3 // 20)


def skip_unsupported(backend, device, dtype):
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter computes bf16 wrongly; bf16 Triton runs on the GPU")


def make_layer(t, e, k, d_parent, f_parent, *, activation="relu2", shared=0, seed=0,
               dtype=torch.float32, device="cpu", num_experts=None):
    """Parent weights, hidden (T, D), and a routing over the first ``num_experts`` experts."""
    g = torch.Generator().manual_seed(seed)
    glu = 2 if activation == "silu_glu" else 1
    scale = d_parent ** -0.5
    layer = dict(
        hidden=torch.randn(t, d_parent, generator=g),
        w_up=torch.randn(e, glu * f_parent, d_parent, generator=g) * scale,
        w_down=torch.randn(e, d_parent, f_parent, generator=g) * f_parent ** -0.5,
        shared_up=torch.randn(glu * shared, d_parent, generator=g) * scale if shared else None,
        shared_down=torch.randn(d_parent, shared, generator=g) * shared ** -0.5 if shared else None,
    )
    layer = {n: None if v is None else v.to(dtype).to(device) for n, v in layer.items()}
    logits = torch.randn(t, e, generator=g).to(device)
    layer["weights"], layer["ids"] = reference.moe_route(logits, top_k=k, num_experts=num_experts,
                                                         scaling=1.0)
    return layer


def ffn_by_hand(hidden, w_up, w_down, weights, ids, activation, r, d, shared_up=None,
                shared_down=None, s=None, scaling=1.0):
    """Each token times each of its k experts, one at a time, in float64."""
    out = torch.zeros(hidden.shape[0], d, dtype=torch.float64)
    half_up = w_up.shape[1] // 2
    half_s = None if shared_up is None else shared_up.shape[0] // 2

    def expert(x, up_gate, up_value, down):
        u = up_gate @ x
        h = torch.relu(u) ** 2 if activation == "relu2" else F.silu(u) * (up_value @ x)
        return down @ h

    for t in range(hidden.shape[0]):
        x = hidden[t].double()
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            value = w_up[e, half_up : half_up + r, :d].double() if activation == "silu_glu" else None
            out[t] += scaling * float(weights[t, j]) * expert(
                x, w_up[e, :r, :d].double(), value, w_down[e, :d, :r].double())
        if shared_up is not None:
            value = shared_up[half_s : half_s + s, :d].double() if activation == "silu_glu" else None
            out[t] += expert(x, shared_up[:s, :d].double(), value, shared_down[:d, :s].double())
    return out


def call(layer, backend, *, activation="relu2", r=None, d=None, s=None, scaling=1.0):
    hidden = layer["hidden"] if d is None else layer["hidden"][:, :d].contiguous()
    return sek.moe_ffn(hidden, layer["w_up"], layer["w_down"], layer["weights"], layer["ids"],
                       activation=activation, ffn_width=r, hidden_width=d,
                       shared_up=layer["shared_up"], shared_down=layer["shared_down"],
                       shared_width=s if layer["shared_up"] is not None else None, scaling=scaling,
                       backend=backend)


@pytest.mark.parametrize("activation", ["relu2", "silu_glu"])
def test_reference_matches_token_by_token(activation):
    layer = make_layer(9, 6, 2, 10, 12, activation=activation, shared=7, dtype=torch.float64)
    got = call(layer, "torch", activation=activation, r=8, d=7, s=5, scaling=2.5)
    want = ffn_by_hand(layer["hidden"][:, :7], layer["w_up"], layer["w_down"], layer["weights"],
                       layer["ids"], activation, 8, 7, layer["shared_up"], layer["shared_down"], 5, 2.5)
    torch.testing.assert_close(got, want.to(got.dtype), **TOL[torch.float64])


@pytest.mark.parametrize("backend,device", backend_cases(with_cuda_backend=False))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("activation", ["relu2", "silu_glu"])
@pytest.mark.parametrize("widths", [(None, None, None), (13, 24, 9)])
def test_backends_match_token_by_token(backend, device, dtype, activation, widths):
    skip_unsupported(backend, device, dtype)
    r, d, s = widths
    layer = make_layer(21, 8, 3, 32, 20, activation=activation, shared=12, dtype=dtype, device=device)
    got = call(layer, backend, activation=activation, r=r, d=d, s=s, scaling=2.5)
    dd = d or 32
    want = ffn_by_hand(layer["hidden"][:, :dd].cpu(), layer["w_up"].cpu(), layer["w_down"].cpu(),
                       layer["weights"].cpu(), layer["ids"].cpu(), activation, r or 20, dd,
                       layer["shared_up"].cpu(), layer["shared_down"].cpu(), s or 12, 2.5)
    assert got.shape == (21, dd) and got.dtype == dtype
    torch.testing.assert_close(got.cpu().double(), want, **TOL[dtype])


@pytest.mark.parametrize("backend,device", backend_cases(with_cuda_backend=False))
@pytest.mark.parametrize("activation", ["relu2", "silu_glu"])
def test_nesting_invariant_against_sliced_copies(backend, device, activation):
    """experts e, ffn_width r, hidden_width d, shared_width s on the parent == the reference on
    explicitly sliced dense copies (e experts, r neurons, d channels)."""
    e_parent, e, r, d, s = 10, 6, 11, 14, 5
    layer = make_layer(17, e_parent, 3, 20, 16, activation=activation, shared=8, device=device,
                       num_experts=e)
    got = call(layer, backend, activation=activation, r=r, d=d, s=s, scaling=2.5)
    glu = activation == "silu_glu"

    def rows(w, half, width):  # first `width` neurons of each GLU half, as a dense copy
        return torch.cat([w[..., :width, :d], w[..., half : half + width, :d]], dim=-2) if glu \
            else w[..., :width, :d]

    sliced = dict(
        hidden=layer["hidden"][:, :d].clone(),
        w_up=rows(layer["w_up"][:e], 16, r).clone(), w_down=layer["w_down"][:e, :d, :r].clone(),
        shared_up=rows(layer["shared_up"], 8, s).clone(), shared_down=layer["shared_down"][:d, :s].clone())
    want = reference.moe_ffn(sliced["hidden"], sliced["w_up"], sliced["w_down"], layer["weights"],
                             layer["ids"], activation=activation, shared_up=sliced["shared_up"],
                             shared_down=sliced["shared_down"], scaling=2.5)
    torch.testing.assert_close(got, want, **TOL[torch.float32])


@pytest.mark.parametrize("backend,device", backend_cases(with_cuda_backend=False))
@pytest.mark.parametrize("activation", ["relu2", "silu_glu"])
def test_masked_experts_are_never_read(backend, device, activation):
    """Poison every expert outside the mask (and every weight outside the active widths) with NaN:
    the output and all gradients stay finite and equal the clean run."""
    mask = torch.tensor([True, False, True, False, False, True, True, False], device=device)
    layer = make_layer(15, 8, 2, 16, 12, activation=activation, device=device)
    logits = torch.randn(15, 8, generator=torch.Generator().manual_seed(9)).to(device)
    layer["weights"], layer["ids"] = sek.moe_route(logits, top_k=2, expert_mask=mask)
    clean = call(layer, "torch", activation=activation, r=7, d=10)
    poisoned = dict(layer)
    for name in ("w_up", "w_down"):
        w = layer[name].clone()
        w[~mask] = float("nan")
        poisoned[name] = w
    half = 12
    poisoned["w_up"][:, 7:half] = float("nan")  # neurons beyond r
    poisoned["w_up"][:, :, 10:] = float("nan")  # channels beyond d
    poisoned["w_down"][:, 10:] = float("nan")
    poisoned["w_down"][:, :, 7:] = float("nan")
    if activation == "silu_glu":
        poisoned["w_up"][:, half + 7 :] = float("nan")
    leaves = {n: poisoned[n].clone().requires_grad_() for n in ("w_up", "w_down", "weights")}
    hidden = layer["hidden"][:, :10].clone().requires_grad_()
    out = sek.moe_ffn(hidden, leaves["w_up"], leaves["w_down"], leaves["weights"], layer["ids"],
                      activation=activation, ffn_width=7, hidden_width=10, backend=backend)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, clean, **TOL[torch.float32])
    out.square().sum().backward()
    for name, t in [("hidden", hidden), *leaves.items()]:
        assert torch.isfinite(t.grad).all(), name
    assert not leaves["w_up"].grad[~mask].any() and not leaves["w_down"].grad[~mask].any()


@pytest.mark.parametrize("backend,device", backend_cases(with_cuda_backend=False))
@pytest.mark.parametrize("case", ["zero_tokens", "one_token", "all_on_one_expert", "odd_T",
                                  "E128_top6"])
def test_edge_shapes(backend, device, case):
    shapes = dict(zero_tokens=(0, 4, 2), one_token=(1, 4, 2), all_on_one_expert=(33, 6, 1),
                  odd_T=(37, 5, 3), E128_top6=(9, 128, 6))
    t, e, k = shapes[case]
    layer = make_layer(t, e, k, 16, 16, shared=8, device=device)
    if case == "all_on_one_expert":
        layer["ids"] = torch.full_like(layer["ids"], 4)
    got = call(layer, backend, r=12, scaling=2.5)
    want = ffn_by_hand(layer["hidden"].cpu(), layer["w_up"].cpu(), layer["w_down"].cpu(),
                       layer["weights"].cpu(), layer["ids"].cpu(), "relu2", 12, 16,
                       layer["shared_up"].cpu(), layer["shared_down"].cpu(), 8, 2.5)
    assert got.shape == (t, 16)
    torch.testing.assert_close(got.cpu().double(), want, **TOL[torch.float32])


# --- gradients ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["relu2", "silu_glu"])
def test_gradcheck_fp64_reference_backend(activation):
    layer = make_layer(4, 5, 2, 6, 5, activation=activation, shared=3, dtype=torch.float64)
    names = ("w_up", "w_down", "weights", "shared_up", "shared_down")
    leaves = [layer["hidden"][:, :4].clone()] + [layer[n].double().clone() for n in names]
    leaves = [t.requires_grad_() for t in leaves]

    def fn(hidden, w_up, w_down, weights, shared_up, shared_down):
        return sek.moe_ffn(hidden, w_up, w_down, weights, layer["ids"], activation=activation,
                           ffn_width=4, hidden_width=4, shared_up=shared_up, shared_down=shared_down,
                           shared_width=2, scaling=2.5, backend="torch")

    assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("backend,device", backend_cases(with_cuda_backend=False))
@pytest.mark.parametrize("activation", ["relu2", "silu_glu"])
@pytest.mark.parametrize("shared", [0, 9])
def test_gradients_match_reference(backend, device, activation, shared):
    layer = make_layer(19, 7, 3, 24, 18, activation=activation, shared=shared, device=device,
                       num_experts=5)
    names = ["w_up", "w_down", "weights"] + (["shared_up", "shared_down"] if shared else [])
    grads = {}
    for which in (backend, "torch"):
        leaves = {n: layer[n].clone().requires_grad_() for n in names}
        hidden = layer["hidden"][:, :20].clone().requires_grad_()
        out = sek.moe_ffn(hidden, leaves["w_up"], leaves["w_down"], leaves["weights"], layer["ids"],
                          activation=activation, ffn_width=13, hidden_width=20,
                          shared_up=leaves.get("shared_up"), shared_down=leaves.get("shared_down"),
                          shared_width=6 if shared else None, scaling=2.5, backend=which)
        out.backward(torch.sin(torch.arange(out.numel(), device=device, dtype=out.dtype)).view_as(out))
        grads[which] = [hidden.grad] + [leaves[n].grad for n in names]
    for name, ours, want in zip(["hidden"] + names, grads[backend], grads["torch"]):
        assert ours.shape == want.shape, name
        torch.testing.assert_close(ours, want, **TOL[torch.float32], msg=name)


# --- registration, compile, bad inputs --------------------------------------------------------------


@pytest.mark.parametrize("backend,device", backend_cases(with_cuda_backend=False))
def test_opcheck(backend, device):
    layer = make_layer(6, 4, 2, 8, 8, shared=4, device=device)
    args = (layer["hidden"][:, :6].contiguous(), layer["w_up"], layer["w_down"], layer["weights"],
            layer["ids"], layer["shared_up"], layer["shared_down"], "relu2", 5, 6, 3, 2.5, backend)
    torch.library.opcheck(torch.ops.star_elastic.moe_ffn.default, args)
    grad_args = tuple(a.clone().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point()
                      else a for a in args)
    torch.library.opcheck(torch.ops.star_elastic.moe_ffn.default, grad_args)
    grad = torch.randn(6, 6, device=device)
    torch.library.opcheck(torch.ops.star_elastic.moe_ffn_backward.default, (grad, *args))


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.interpreter)])
def test_torch_compile_fullgraph_matches_eager(backend):
    layer = make_layer(10, 6, 2, 12, 10, shared=6)
    router = torch.randn(6, 12, generator=torch.Generator().manual_seed(3))

    def moe_layer(hidden):
        weights, ids = sek.moe_route(hidden @ router.T, top_k=2, num_experts=5, scaling=2.5,
                                     backend=backend)
        return sek.moe_ffn(hidden, layer["w_up"], layer["w_down"], weights, ids, ffn_width=7,
                           shared_up=layer["shared_up"], shared_down=layer["shared_down"],
                           backend=backend)

    compiled = torch.compile(moe_layer, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(layer["hidden"]), moe_layer(layer["hidden"]))


def _bad_calls():
    layer = make_layer(4, 4, 2, 8, 6, shared=4)
    h, wu, wd, w, i = (layer[n] for n in ("hidden", "w_up", "w_down", "weights", "ids"))
    su, sd = layer["shared_up"], layer["shared_down"]
    bad_ids = i.clone()
    bad_ids[0, 0] = 4
    return [
        (lambda: sek.moe_ffn(h, wu, wd, w, bad_ids), ValueError, r"ids must lie in \[0, 4\)"),
        (lambda: sek.moe_ffn(h, wu, wd, w, -1 - i), ValueError, "ids must lie"),
        (lambda: sek.moe_ffn(h, wu, wd, w, i, activation="silu_glu"), ValueError, "w_up must be"),
        (lambda: sek.moe_ffn(h, wu, wd, w, i, activation="gelu"), ValueError, "activation"),
        (lambda: sek.moe_ffn(h, wu, wd, w, i, ffn_width=7), ValueError, "ffn_width=7"),
        (lambda: sek.moe_ffn(h, wu, wd, w, i, ffn_width=0), ValueError, "ffn_width=0"),
        (lambda: sek.moe_ffn(h, wu, wd, w, i, hidden_width=9), ValueError, "hidden_width=9"),
        (lambda: sek.moe_ffn(h, wu, wd, w, i, hidden_width=6), ValueError, "hidden has 8 channels"),
        (lambda: sek.moe_ffn(h, wu, wd, w, i, shared_up=su, shared_down=sd, shared_width=5),
         ValueError, "shared_width=5"),
        (lambda: sek.moe_ffn(h, wu, wd, w, i, shared_up=su), ValueError, "together"),
        (lambda: sek.moe_ffn(h, wu, wd, w, i, shared_width=2), ValueError, "no shared expert"),
        (lambda: sek.moe_ffn(h, wu.half(), wd, w, i), TypeError, "w_up must have hidden's dtype"),
        (lambda: sek.moe_ffn(h, wu, wd, w, i.float()), TypeError, "ids"),
        (lambda: sek.moe_ffn(h, wu, wd, w[:, :1], i), ValueError, "weights"),
        (lambda: sek.moe_ffn(h[:3], wu, wd, w, i), ValueError, "T=3"),
        (lambda: sek.moe_ffn(h, wu, wd.to("meta"), w, i), ValueError, "w_down is on meta"),
        (lambda: sek.moe_ffn(h, wu, wd, w, i, scaling="2"), TypeError, "scaling"),
        (lambda: sek.moe_ffn(h, wu, wd, w, i, backend="cuda"), sek.BackendUnavailableError, "cuda"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_calls())))
def test_bad_inputs_raise_clear_errors(case):
    fn, error, words = _bad_calls()[case]
    with pytest.raises(error, match=words):
        fn()


def _property_case(t, e, data, activation, dtype, shared, max_width):
    k = data.draw(st.integers(1, e))
    d_parent, f_parent = data.draw(st.integers(1, max_width)), data.draw(st.integers(1, max_width))
    num_experts = data.draw(st.integers(k, e))
    r, d = data.draw(st.integers(1, f_parent)), data.draw(st.integers(1, d_parent))
    s = data.draw(st.integers(1, shared)) if shared else None
    layer = make_layer(t, e, k, d_parent, f_parent, activation=activation, shared=shared,
                       seed=t * 7 + e, dtype=dtype, num_experts=num_experts)
    got = call(layer, "triton", activation=activation, r=r, d=d, s=s, scaling=2.5)
    want = call(layer, "torch", activation=activation, r=r, d=d, s=s, scaling=2.5)
    torch.testing.assert_close(got.double(), want.double(), **TOL[dtype])


@pytest.mark.interpreter
@settings(max_examples=BROAD_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(t=st.integers(0, 24), e=st.integers(1, 12), data=st.data(),
       activation=st.sampled_from(["relu2", "silu_glu"]),
       dtype=st.sampled_from([torch.float32, torch.float16]), shared=st.sampled_from([0, 6]))
def test_property_triton_matches_reference(t, e, data, activation, dtype, shared):
    _property_case(t, e, data, activation, dtype, shared, max_width=24)


@pytest.mark.interpreter
@settings(max_examples=PROPERTY_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(t=st.integers(0, 6), e=st.integers(1, 4), data=st.data(),
       activation=st.sampled_from(["relu2", "silu_glu"]),
       dtype=st.sampled_from([torch.float32, torch.float16]), shared=st.sampled_from([0, 3]))
def test_property_triton_matches_reference_small_shapes(t, e, data, activation, dtype, shared):
    _property_case(t, e, data, activation, dtype, shared, max_width=8)


# --- the cuda backend (CUTLASS sm_90a grouped GEMMs; GPU only) --------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("activation", ["relu2", "silu_glu"])
@pytest.mark.parametrize("widths", [(None, None, None), (24, 40, 16)])
def test_cuda_backend_matches_token_by_token(activation, widths):
    if not sek._extension.has_op("_moe_grouped_gemm"):
        pytest.fail("the CUDA extension lacks _moe_grouped_gemm: rebuild it")
    r, d, s = widths
    layer = make_layer(37, 16, 4, 64, 48, activation=activation, shared=32, dtype=torch.bfloat16,
                       device="cuda", num_experts=12)
    for name in ("w_up", "w_down"):
        layer[name][12:] = float("nan")  # experts outside the prefix are never read
    got = call(layer, "cuda", activation=activation, r=r, d=d, s=s, scaling=2.5)
    dd = d or 64
    want = ffn_by_hand(layer["hidden"][:, :dd].cpu(), layer["w_up"].cpu(), layer["w_down"].cpu(),
                       layer["weights"].cpu(), layer["ids"].cpu(), activation, r or 48, dd,
                       layer["shared_up"].cpu(), layer["shared_down"].cpu(), s or 32, 2.5)
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    torch.testing.assert_close(got.cpu().double(), want, **TOL[torch.bfloat16])


@pytest.mark.gpu
def test_cuda_backend_gradients_match_reference():
    if not sek._extension.has_op("_moe_grouped_gemm"):
        pytest.fail("the CUDA extension lacks _moe_grouped_gemm: rebuild it")
    layer = make_layer(21, 8, 2, 32, 32, device="cuda", dtype=torch.bfloat16)
    grads = {}
    for backend in ("cuda", "torch"):
        leaves = {n: layer[n].clone().requires_grad_() for n in ("hidden", "w_up", "w_down", "weights")}
        out = sek.moe_ffn(leaves["hidden"], leaves["w_up"], leaves["w_down"], leaves["weights"],
                          layer["ids"], ffn_width=16, backend=backend)
        out.float().sum().backward()
        grads[backend] = [out] + [leaves[n].grad for n in ("hidden", "w_up", "w_down", "weights")]
    for ours, want in zip(grads["cuda"], grads["torch"]):
        torch.testing.assert_close(ours.float(), want.float(), rtol=8e-2, atol=1e-1)


@pytest.mark.gpu
def test_cuda_backend_runs_any_width_and_refuses_a_misaligned_parent():
    """Widths off every multiple of 8 run on the CUTLASS path (TMA zero-fills past them); a parent
    whose row stride is not 16-byte aligned is refused when asked for explicitly, and auto falls
    back to Triton with a warning."""
    layer = make_layer(5, 4, 2, 16, 16, device="cuda", dtype=torch.bfloat16)
    torch.testing.assert_close(call(layer, "cuda", r=13, d=11), call(layer, "torch", r=13, d=11),
                               **TOL[torch.bfloat16])
    odd = make_layer(5, 4, 2, 18, 12, device="cuda", dtype=torch.bfloat16)  # rows of 18 values
    with pytest.raises(sek.BackendUnavailableError, match="multiples of 8"):
        call(odd, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [1, 300, 2000])  # 1-3, 75 and 500 rows per expert: swap-AB,
@pytest.mark.parametrize("activation", ["relu2", "silu_glu"])  # pingpong, cooperative
def test_cuda_backend_every_schedule_matches_reference(tokens, activation):
    from star_elastic_kernels.moe import gemm as gemm_ops

    layer = make_layer(tokens, 16, 4, 256, 192, activation=activation, shared=128,
                       dtype=torch.bfloat16, device="cuda")
    schedule = gemm_ops.schedule_for(tokens * 4, 16)
    assert schedule == {1: gemm_ops.SCHEDULE_SWAP_AB, 300: gemm_ops.SCHEDULE_PINGPONG,
                        2000: gemm_ops.SCHEDULE_COOPERATIVE}[tokens]
    got = call(layer, "cuda", activation=activation, r=136, d=200, s=72, scaling=2.5)
    want = call(layer, "torch", activation=activation, r=136, d=200, s=72, scaling=2.5)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), want.float(), rtol=5e-2, atol=5e-2)
    sek.moe.raise_device_errors()  # no device-side check failed


@pytest.mark.gpu
def test_cuda_backend_is_capturable_in_a_cuda_graph():
    """No host sync and no allocation-dependent host state: one captured replay equals eager."""
    layer = make_layer(4, 16, 4, 256, 192, shared=128, dtype=torch.bfloat16, device="cuda")
    eager = call(layer, "cuda", scaling=2.5)  # also warms the CUTLASS argument cache
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = call(layer, "cuda", scaling=2.5)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, eager, rtol=0, atol=0)
