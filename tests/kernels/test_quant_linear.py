"""nvfp4_linear (W4A16) and fp8_linear (W8A8 / W8A16) against dequantize-then-matmul in float64,
at the parent's width and at sliced widths read from the parent in place."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import star_elastic_kernels as sek
from star_elastic_kernels import _backends
from tests.helpers import backend_cases

E2M1_TABLE = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                           -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype=torch.float64)
# Relative tolerance against sum_k |x_k| |w_k| (the output's rounding plus fp32 accumulation).
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
PARENT = (40, 96)  # (N, K)
WIDTHS = [(40, 96), (17, 48), (8, 16), (0, 32), (40, 0)]


def nvfp4_decode(w: sek.NVFP4Weight, n: int, k: int) -> torch.Tensor:
    """Float64 weight of the (n, k) child, decoded independently of the library."""
    data = w.data.cpu()[:n, : k // 2]
    codes = torch.stack([data & 0xF, data >> 4], dim=-1).reshape(n, k)
    scales = w.scale.cpu()[:n, : k // 16].double().repeat_interleave(16, dim=1)
    return E2M1_TABLE[codes.long()] * scales * float(w.global_scale)


def random_activation(m, k, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, k, generator=g).to(dtype).to(device)


def parent_weight(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*PARENT, generator=g) * torch.logspace(-1, 1, PARENT[1])


def assert_close(out, expected, x, weight, dtype):
    underflow = 2.0**-25 if dtype == torch.float16 else 1e-30  # half the least fp16 subnormal
    bound = (x.cpu().double().abs() @ weight.abs().t()) * TOLERANCE[dtype] + underflow
    error = (out.cpu().double() - expected).abs()
    assert (error <= bound).all(), f"max excess {(error - bound).max().item()}"


def skip_unsupported(backend, device, dtype):
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter computes bf16 wrongly; bf16 Triton runs on the GPU")


# --- NVFP4 W4A16 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,k", WIDTHS)
@pytest.mark.parametrize("m", [1, 5, 70])
def test_nvfp4_linear_matches_dequantize_then_matmul(backend, device, dtype, n, k, m):
    skip_unsupported(backend, device, dtype)
    if backend == "cuda" and dtype == torch.float32:
        pytest.skip("the CUDA NVFP4 kernel takes 16-bit activations (refusal tested below)")
    w = sek.quantize_nvfp4(parent_weight().to(device))
    x = random_activation(m, k, dtype, device, seed=m)
    bias = torch.linspace(-1, 1, PARENT[0]).to(dtype).to(device)  # the parent's bias
    layer = w.prepack() if backend == "cuda" else w  # the CUDA kernel reads the prepacked layout
    out = sek.nvfp4_linear(x, layer, bias, out_features=n, in_features=k, backend=backend)
    assert out.shape == (m, n) and out.dtype == dtype and out.device == x.device
    weight = nvfp4_decode(w, n, k)
    expected = x.cpu().double() @ weight.t() + bias[:n].cpu().double()
    assert_close(out, expected, x, weight, dtype)


@pytest.mark.parametrize("backend,device", backend_cases())
def test_nvfp4_linear_strided_x_batch_dims_and_empty(backend, device):
    w = sek.quantize_nvfp4(parent_weight().to(device))
    layer = w.prepack() if backend == "cuda" else w
    wide = random_activation(6, 2 * 48, torch.float16, device, seed=3)
    x = wide[:, ::2]  # non-contiguous compact activation, in_features 48
    assert not x.is_contiguous()
    out = sek.nvfp4_linear(x, layer, out_features=24, backend=backend)
    weight = nvfp4_decode(w, 24, 48)
    assert_close(out, x.cpu().double() @ weight.t(), x, weight, torch.float16)
    batched = sek.nvfp4_linear(x.reshape(2, 3, 48), layer, out_features=24, backend=backend)
    assert batched.shape == (2, 3, 24) and torch.equal(batched.reshape(6, 24), out)
    empty = sek.nvfp4_linear(x[:0], layer, out_features=24, backend=backend)
    assert empty.shape == (0, 24)
    own_bias = torch.ones(24, dtype=torch.float16, device=device)  # (out_features,) bias
    biased = sek.nvfp4_linear(x, layer, own_bias, out_features=24, backend=backend)
    assert_close(biased, x.cpu().double() @ weight.t() + 1.0, x, weight, torch.float16)


@pytest.mark.interpreter
@pytest.mark.parametrize("split_k", [1, 3])
def test_nvfp4_linear_triton_split_k_and_large_tile(split_k):
    from star_elastic_kernels.triton import nvfp4_linear as triton_linear

    g = torch.Generator().manual_seed(5)
    w = sek.quantize_nvfp4(torch.randn(20, 768, generator=g))
    x = torch.randn(3, 768, generator=g)
    bias = torch.randn(20, generator=g)
    out = triton_linear.nvfp4_linear(x, w.data, w.scale, w.global_scale, bias, split_k=split_k)
    weight = nvfp4_decode(w, 20, 768)
    assert_close(out, x.double() @ weight.t() + bias.double(), x, weight, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m,n,k", [(1, 4096, 4096), (16, 1000, 2048), (300, 520, 1024)])
def test_nvfp4_linear_cuda_split_k_and_large_shapes(dtype, m, n, k):
    g = torch.Generator().manual_seed(6)
    w = sek.quantize_nvfp4(torch.randn(n + 24, k + 64, generator=g).cuda())  # a parent; slice it
    x = torch.randn(m, k, generator=g).to(dtype).cuda()
    bias = torch.randn(n + 24, generator=g).to(dtype).cuda()
    weight = nvfp4_decode(w, n, k)
    expected = x.cpu().double() @ weight.t() + bias[:n].cpu().double()
    for backend, layer in (("cuda", w.prepack()), ("triton", w)):
        out = sek.nvfp4_linear(x, layer, bias, out_features=n, backend=backend)
        assert_close(out, expected, x, weight, dtype)


@pytest.mark.gpu
def test_nvfp4_linear_cuda_refuses_float32_activations_and_the_standard_layout():
    w = sek.quantize_nvfp4(parent_weight().cuda())
    with pytest.raises(sek.BackendUnavailableError, match="float16 or bfloat16"):
        sek.nvfp4_linear(torch.randn(2, 96, device="cuda"), w.prepack(), backend="cuda")
    with pytest.raises(sek.BackendUnavailableError, match="prepacked layout"):
        sek.nvfp4_linear(torch.randn(2, 96, device="cuda").half(), w, backend="cuda")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    m=st.integers(0, 20),
    parent_n=st.integers(1, 40),
    parent_blocks=st.integers(1, 8),
    log2_magnitude=st.floats(-30, 30),
    dtype=st.sampled_from([torch.float32, torch.float16]),
    backend=st.sampled_from(["torch", "triton"]),
    data=st.data(),
)
def test_property_nvfp4_linear_random_widths(m, parent_n, parent_blocks, log2_magnitude, dtype,
                                             backend, data):
    if backend == "triton" and not _backends.triton_interpreter_enabled():
        backend = "torch"
    n = data.draw(st.integers(0, parent_n))
    k = 16 * data.draw(st.integers(0, parent_blocks))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    w = sek.quantize_nvfp4(torch.randn(parent_n, 16 * parent_blocks, generator=g)
                           * 2.0**log2_magnitude)
    x = torch.randn(m, k, generator=g).to(dtype)
    weight = nvfp4_decode(w, n, k)
    magnitude = x.double().abs() @ weight.abs().t()
    if dtype == torch.float16 and magnitude.numel() and magnitude.max() > 30000:
        return  # the float16 output would overflow
    out = sek.nvfp4_linear(x, w, out_features=n, in_features=k, backend=backend)
    assert out.shape == (m, n)
    assert_close(out, x.double() @ weight.t(), x, weight, dtype)


# --- FP8 W8A8 / W8A16 ----------------------------------------------------------------------------


def fp8_expected(x, w: sek.FP8Weight, n, k, bias, mode, input_scale):
    """Float64 result from PyTorch's own float8 cast of the activation (independent of the
    library's quantizer); returns (expected, effective float64 weight, float64 activation)."""
    x32 = x.cpu().float()
    if mode == "dynamic_per_token":
        amax = x32.abs().amax(dim=1, keepdim=True)
        x_scale = torch.where(amax > 0, amax / 448.0, torch.ones_like(amax))
    elif mode == "static":
        x_scale = input_scale.cpu().reshape(1, 1)
    if mode is None:
        a = x32.double()
    else:
        a = (x32 / x_scale).clamp(-448, 448).to(torch.float8_e4m3fn).double() * x_scale.double()
    scale = w.scale.cpu().double()
    scale = scale[:n, None] if scale.dim() else scale
    weight = w.data.cpu()[:n, :k].double() * scale
    expected = a @ weight.t()
    if bias is not None:
        expected = expected + bias[:n].cpu().double()
    return expected, weight, a


@pytest.mark.parametrize("backend,device", backend_cases(with_cuda_backend=False))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["dynamic_per_token", "static", None])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("n,k", [(40, 96), (17, 33), (0, 8)])
@pytest.mark.parametrize("m", [1, 70])
def test_fp8_linear_matches_dequantize_then_matmul(backend, device, dtype, mode, granularity,
                                                   n, k, m):
    skip_unsupported(backend, device, dtype)
    w = sek.quantize_fp8(parent_weight().to(device), granularity=granularity)
    x = random_activation(m, k, dtype, device, seed=m + k)
    if m > 1 and k:
        x[1] = 0.0  # an all-zero token gets scale 1
    bias = torch.linspace(-1, 1, PARENT[0]).to(dtype).to(device)
    input_scale = torch.tensor(0.011, device=device) if mode == "static" else None
    out = sek.fp8_linear(x, w, bias, out_features=n, in_features=k, activation_quant=mode,
                         input_scale=input_scale, backend=backend)
    assert out.shape == (m, n) and out.dtype == dtype
    expected, weight, a = fp8_expected(x, w, n, k, bias, mode, input_scale)
    assert_close(out, expected, a, weight, dtype)


@pytest.mark.parametrize("backend,device", backend_cases(with_cuda_backend=False))
def test_fp8_linear_strided_x_and_empty(backend, device):
    w = sek.quantize_fp8(parent_weight().to(device), granularity="channel")
    x = random_activation(48, 7, torch.float16, device, seed=2).t()  # (7, 48), column-major
    out = sek.fp8_linear(x, w, out_features=30, backend=backend)
    expected, weight, a = fp8_expected(x, w, 30, 48, None, "dynamic_per_token", None)
    assert_close(out, expected, a, weight, torch.float16)
    assert sek.fp8_linear(x[:0], w, out_features=30, backend=backend).shape == (0, 30)
    bias = torch.ones(40, dtype=torch.float16, device=device)
    no_k = sek.fp8_linear(x[:, :0], w, bias, in_features=0, backend=backend)
    assert torch.equal(no_k.cpu(), torch.ones(7, 40, dtype=torch.float16))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["dynamic_per_token", "static"])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("m,n,k", [(1, 4096, 4096), (70, 520, 1024), (300, 64, 2048)])
def test_fp8_linear_cuda_cutlass_on_parent_slices(dtype, mode, granularity, m, n, k):
    g = torch.Generator().manual_seed(8)
    w = sek.quantize_fp8(torch.randn(n + 32, k + 64, generator=g).cuda(), granularity=granularity)
    x = torch.randn(m, k, generator=g).to(dtype).cuda()
    bias = torch.randn(n + 32, generator=g).to(dtype).cuda()
    input_scale = torch.tensor(0.011, device="cuda") if mode == "static" else None
    expected, weight, a = fp8_expected(x, w, n, k, bias, mode, input_scale)
    for backend in ("cuda", "triton"):
        out = sek.fp8_linear(x, w, bias, out_features=n, activation_quant=mode,
                             input_scale=input_scale, backend=backend)
        assert_close(out, expected, a, weight, dtype)


@pytest.mark.gpu
def test_fp8_linear_cuda_refuses_unaligned_shapes_and_w8a16():
    w = sek.quantize_fp8(torch.randn(64, 128, device="cuda"), granularity="channel")
    x = torch.randn(4, 128, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(sek.BackendUnavailableError, match="multiple of 8"):
        sek.fp8_linear(x, w, out_features=17, backend="cuda")
    with pytest.raises(sek.BackendUnavailableError, match="W8A8 only"):
        sek.fp8_linear(x, w, activation_quant=None, backend="cuda")
    auto = sek.fp8_linear(x, w, out_features=17)  # auto: another backend takes the call
    assert torch.equal(auto, sek.fp8_linear(x, w, out_features=17, backend="triton"))


# --- argument checking ---------------------------------------------------------------------------


def _nvfp4():
    return sek.quantize_nvfp4(torch.randn(8, 64))


def _fp8():
    return sek.quantize_fp8(torch.randn(8, 64), granularity="channel")


@pytest.mark.parametrize("call,error,words", [
    (lambda: sek.nvfp4_linear(torch.randn(2, 40), _nvfp4()), ValueError, "multiple of 16"),
    (lambda: sek.nvfp4_linear(torch.randn(2, 32), _nvfp4(), in_features=48), ValueError,
     "must equal in_features"),
    (lambda: sek.nvfp4_linear(torch.randn(2, 80), _nvfp4()), ValueError,
     "in_features must be in [0, 64]"),
    (lambda: sek.nvfp4_linear(torch.randn(2, 64), _nvfp4(), out_features=9), ValueError,
     "out_features must be in [0, 8]"),
    (lambda: sek.nvfp4_linear(torch.ones(2, 64, dtype=torch.int32), _nvfp4()), TypeError,
     "x must be float"),
    (lambda: sek.nvfp4_linear(torch.randn(2, 64), torch.randn(8, 64)), TypeError,
     "NVFP4Weight"),
    (lambda: sek.nvfp4_linear(torch.randn(2, 64), _nvfp4(), torch.randn(8).half()), TypeError,
     "bias dtype"),
    (lambda: sek.nvfp4_linear(torch.randn(2, 64), _nvfp4(), torch.randn(5)), ValueError,
     "bias must have shape"),
    (lambda: sek.nvfp4_linear(torch.randn(2, 64).half(), _nvfp4(), backend="cuda"),
     sek.BackendUnavailableError, "backend 'cuda' is unavailable"),
    (lambda: sek.fp8_linear(torch.randn(2, 64).half(), _fp8(), backend="cuda"),
     sek.BackendUnavailableError, "backend 'cuda' is unavailable"),
    (lambda: sek.fp8_linear(torch.randn(2, 64), _nvfp4()), TypeError, "FP8Weight"),
    (lambda: sek.fp8_linear(torch.randn(2, 64), _fp8(), activation_quant="per_tensor"),
     ValueError, "activation_quant"),
    (lambda: sek.fp8_linear(torch.randn(2, 64), _fp8(), activation_quant="static"), ValueError,
     "needs input_scale"),
    (lambda: sek.fp8_linear(torch.randn(2, 64), _fp8(), input_scale=torch.tensor(1.0)),
     ValueError, "only used with activation_quant='static'"),
    (lambda: sek.fp8_linear(torch.randn(2, 64), _fp8(), activation_quant="static",
                            input_scale=torch.tensor(0.0), check_finite=True), ValueError,
     "scale must be > 0"),
    (lambda: sek.fp8_linear(torch.randn(2, 64).half(), _fp8(), torch.randn(8)), TypeError,
     "bias dtype"),
    (lambda: sek.fp8_linear(torch.randn(2, 64), sek.FP8Weight(torch.randn(8, 64), torch.ones(8))),
     TypeError, "float8_e4m3fn"),
])
def test_bad_inputs_raise_clear_errors(call, error, words):
    with pytest.raises(error) as info:
        call()
    assert words in str(info.value)


# --- registration --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend,device", backend_cases(with_cuda_backend=False))
def test_opcheck(backend, device):
    w = sek.quantize_nvfp4(parent_weight().to(device)).slice(24, 48)
    x = random_activation(3, 48, torch.float32, device)
    bias = torch.randn(24, device=device)
    torch.library.opcheck(torch.ops.star_elastic.nvfp4_linear.default,
                          (x, w.data, w.scale, w.global_scale, bias, backend),
                          test_utils=("test_autograd_registration", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))
    f = sek.quantize_fp8(parent_weight().to(device), granularity="channel").slice(24, 48)
    for mode in ("dynamic_per_token", "none"):
        torch.library.opcheck(torch.ops.star_elastic.fp8_linear.default,
                              (x, f.data, f.scale, bias, None, mode, backend),
                              test_utils=("test_autograd_registration", "test_faketensor",
                                          "test_aot_dispatch_dynamic"))


@pytest.mark.gpu
def test_opcheck_cuda_backend():
    w = sek.quantize_nvfp4(parent_weight().cuda()).prepack().slice(24, 48)
    x = random_activation(3, 48, torch.float16, "cuda")
    bias = torch.randn(24, device="cuda").half()
    torch.library.opcheck(torch.ops.star_elastic.nvfp4_prepacked_linear.default,
                          (x, w.codes, w.scales, w.global_scale, bias, 24, "cuda"),
                          test_utils=("test_autograd_registration", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))
    f = sek.quantize_fp8(torch.randn(64, 128, device="cuda"), granularity="channel").slice(32, 64)
    x = random_activation(3, 64, torch.bfloat16, "cuda")
    torch.library.opcheck(torch.ops.star_elastic.fp8_linear.default,
                          (x, f.data, f.scale, None, None, "dynamic_per_token", "cuda"),
                          test_utils=("test_autograd_registration", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))


def test_torch_compile_fullgraph_matches_eager():
    w = sek.quantize_nvfp4(parent_weight())
    f = sek.quantize_fp8(parent_weight(), granularity="channel")

    def layer(x):
        h = sek.nvfp4_linear(x, w, out_features=32)
        return sek.fp8_linear(h, f, out_features=16, in_features=32)

    x = random_activation(4, 96, torch.float32, "cpu")
    assert torch.equal(torch.compile(layer, fullgraph=True)(x), layer(x))
