"""FP8 E4M3 quantize / dequantize: every backend against PyTorch's own float8 cast and each other."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import star_elastic_kernels as sek
from star_elastic_kernels.quant import fp8 as fp8_ops
from tests.helpers import backend_cases

E4M3_MAX = 448.0
INTERPRETER_DTYPES = (torch.float32, torch.float16)


def expected_scales(x: torch.Tensor, per_row: bool) -> torch.Tensor:
    """amax / 448 with plain float64 bookkeeping, independent of the code under test."""
    x64 = x.double().abs()
    if per_row:
        amax = x64.amax(dim=1)
    else:
        amax = x64.max() if x64.numel() else torch.zeros((), dtype=torch.float64)
    scale = (amax.float() / torch.tensor(E4M3_MAX))
    return torch.where(amax > 0, scale, torch.ones_like(scale))


def expected_codes(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """PyTorch's own float8 cast of the scaled, saturated input, as raw bytes."""
    s = scale.reshape(-1, 1) if scale.dim() == 1 else scale
    return (x.float() / s).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).view(torch.uint8)


def random_weight(rows, cols, dtype, device, seed=0):
    """Values spread over ~9 decades (subnormal codes included), one all-zero row when possible."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * torch.logspace(-5, 4, max(cols, 1))[:cols]
    if rows > 2:
        x[1] = 0.0
    return x.to(dtype).to(device)


def skip_unsupported(backend, device, dtype):
    if backend == "triton" and device == "cpu" and dtype not in INTERPRETER_DTYPES:
        pytest.skip("the Triton interpreter computes bf16 wrongly; bf16 Triton runs on the GPU")


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("shape", [(1, 1), (7, 33), (64, 130), (3, 1024 + 5)])
def test_quantize_matches_torch_float8_cast(backend, device, dtype, granularity, shape):
    skip_unsupported(backend, device, dtype)
    x = random_weight(*shape, dtype, device)
    result = sek.quantize_fp8(x, granularity=granularity, backend=backend)
    scale = expected_scales(x.cpu(), granularity == "channel")
    assert result.data.dtype == torch.float8_e4m3fn and result.data.shape == x.shape
    assert result.scale.dtype == torch.float32 and result.scale.shape == scale.shape
    assert torch.equal(result.scale.cpu(), scale)
    assert torch.equal(result.data.cpu().view(torch.uint8), expected_codes(x.cpu(), scale))


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_backends_agree_bit_for_bit_with_reference(backend, device, granularity):
    x = random_weight(40, 72, torch.float32, device, seed=3)
    ours = sek.quantize_fp8(x, granularity=granularity, backend=backend)
    ref = sek.quantize_fp8(x.cpu(), granularity=granularity, backend="torch")
    assert torch.equal(ours.scale.cpu(), ref.scale)
    assert torch.equal(ours.data.cpu().view(torch.uint8), ref.data.view(torch.uint8))


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_strided_slice_is_read_in_place(backend, device, granularity):
    parent = random_weight(48, 96, torch.float32, device, seed=5)
    child = parent[:20, 16:80]  # non-contiguous prefix-style view
    assert not child.is_contiguous()
    ours = sek.quantize_fp8(child, granularity=granularity, backend=backend)
    copy = sek.quantize_fp8(child.contiguous(), granularity=granularity, backend="torch")
    assert torch.equal(ours.scale.cpu(), copy.scale.cpu())
    assert torch.equal(ours.data.cpu().view(torch.uint8), copy.data.cpu().view(torch.uint8))
    transposed = sek.quantize_fp8(parent.t(), backend=backend)  # column stride 96
    assert torch.equal(transposed.data.cpu().view(torch.uint8),
                       expected_codes(parent.t().cpu(), transposed.scale.cpu()))


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dequantize_every_code(backend, device, out_dtype):
    skip_unsupported(backend, device, out_dtype)
    codes = torch.arange(256, dtype=torch.uint8).reshape(16, 16)
    finite = (codes & 0x7F) != 0x7F
    q = codes.view(torch.float8_e4m3fn).to(device)
    scales = torch.linspace(0.01, 3.0, 16, dtype=torch.float32)
    out = sek.dequantize_fp8(q, scales.to(device), dtype=out_dtype, backend=backend).cpu()
    expected = (codes.view(torch.float8_e4m3fn).float() * scales[:, None]).to(out_dtype)
    assert out.dtype == out_dtype and out.shape == (16, 16)
    assert torch.equal(out[finite], expected[finite])
    assert torch.isnan(out[~finite]).all()


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_round_trip_error_is_within_half_an_e4m3_step(backend, device, granularity):
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(9)).to(device)
    q = sek.quantize_fp8(x, granularity=granularity, backend=backend)
    back = sek.dequantize_fp8(q.data, q.scale, dtype=torch.float32, backend=backend)
    scale = q.scale.reshape(-1, 1) if granularity == "channel" else q.scale
    # 3 mantissa bits: relative error <= 2^-4 for normals; absolute <= 2^-10 * scale below 2^-6.
    bound = torch.maximum(x.abs() * 2.0**-4, scale * 2.0**-10)
    assert ((back - x).abs() <= bound * (1 + 1e-6)).all()


@pytest.mark.parametrize("backend,device", backend_cases())
def test_given_scale_saturates_at_448(backend, device):
    x = torch.tensor([[-1000.0, -448.0, -3.0, 0.0, 3.0, 500.0, 1e6, 2.0]], device=device)
    q = sek.quantize_fp8(x, torch.tensor(1.0, device=device), backend=backend)
    values = q.data.float().cpu()
    assert torch.equal(values, torch.tensor([[-448.0, -448.0, -3.0, 0.0, 3.0, 448.0, 448.0, 2.0]]))
    assert torch.equal(q.scale.cpu(), torch.tensor(1.0))


@pytest.mark.parametrize("backend,device", backend_cases())
def test_any_shape_per_tensor_and_empty_inputs(backend, device):
    x = random_weight(6, 10, torch.float32, device).reshape(2, 3, 10)
    q = sek.quantize_fp8(x, backend=backend)
    assert q.data.shape == (2, 3, 10)
    assert torch.equal(q.data.cpu().view(torch.uint8),
                       expected_codes(x.cpu(), expected_scales(x.cpu().reshape(6, 10), False)))
    vector = sek.quantize_fp8(torch.full((5,), 2.0, device=device), backend=backend)
    assert torch.equal(vector.data.float().cpu(), torch.full((5,), 448.0))
    empty = sek.quantize_fp8(torch.empty(0, 8, device=device), backend=backend)
    assert empty.data.shape == (0, 8) and float(empty.scale) == 1.0
    empty_rows = sek.quantize_fp8(torch.empty(0, 8, device=device), granularity="channel",
                                  backend=backend)
    assert empty_rows.scale.shape == (0,)
    assert sek.dequantize_fp8(empty.data, empty.scale, dtype=torch.float32,
                              backend=backend).shape == (0, 8)


# --- argument checking --------------------------------------------------------------------------


@pytest.mark.parametrize("call,error,words", [
    (lambda: sek.quantize_fp8(torch.ones(4, dtype=torch.int32)), TypeError, "x must be float"),
    (lambda: sek.quantize_fp8([1.0, 2.0]), TypeError, "x must be a torch.Tensor"),
    (lambda: sek.quantize_fp8(torch.ones(4), granularity="row"), ValueError, "granularity"),
    (lambda: sek.quantize_fp8(torch.ones(2, 3, 4), granularity="channel"), ValueError, "2-D"),
    (lambda: sek.quantize_fp8(torch.ones(4, 4), torch.ones(3), granularity="channel"),
     ValueError, "shape (4,)"),
    (lambda: sek.quantize_fp8(torch.ones(4, 4), torch.ones(2)), ValueError, "one value"),
    (lambda: sek.quantize_fp8(torch.ones(4), torch.ones((), dtype=torch.float64)), TypeError,
     "scale must be float32"),
    (lambda: sek.quantize_fp8(torch.ones(4), torch.tensor(0.0)), ValueError, "scale must be > 0"),
    (lambda: sek.quantize_fp8(torch.ones(4), torch.tensor(-1.0)), ValueError, "scale must be > 0"),
    (lambda: sek.quantize_fp8(torch.ones(4), torch.tensor(float("inf"))), ValueError,
     "scale must be finite"),
    (lambda: sek.quantize_fp8(torch.tensor([1.0, float("nan")])), ValueError, "x contains NaN"),
    (lambda: sek.quantize_fp8(torch.tensor([1.0, float("inf")]), torch.tensor(1.0)), ValueError,
     "x contains NaN or Inf"),
    (lambda: sek.quantize_fp8(torch.ones(4), backend="fast"), ValueError, "unknown backend"),
    (lambda: sek.dequantize_fp8(torch.ones(4), torch.tensor(1.0)), TypeError,
     "q must be float8_e4m3fn"),
    (lambda: sek.dequantize_fp8(torch.ones(4).to(torch.float8_e4m3fn), torch.tensor(float("nan"))),
     ValueError, "scale must be finite"),
    (lambda: sek.dequantize_fp8(torch.ones(4).to(torch.float8_e4m3fn), torch.ones(4)), ValueError,
     "2-D q"),
    (lambda: sek.dequantize_fp8(torch.ones(2, 4).to(torch.float8_e4m3fn), torch.tensor(1.0),
                                dtype=torch.int8), TypeError, "dtype must be"),
])
def test_bad_inputs_raise_clear_errors(call, error, words):
    with pytest.raises(error, match=None) as info:
        call()
    assert words in str(info.value)


def test_cuda_backend_on_cpu_tensors_is_refused():
    with pytest.raises(sek.BackendUnavailableError, match="CUDA tensors|not built"):
        sek.quantize_fp8(torch.ones(4), backend="cuda")


# --- registration: opcheck and torch.compile -----------------------------------------------------


@pytest.mark.parametrize("backend,device", backend_cases())
def test_opcheck(backend, device):
    x = random_weight(8, 24, torch.float32, device, seed=2)
    scales = torch.ops.star_elastic.fp8_scales(x, True, backend)
    torch.library.opcheck(torch.ops.star_elastic.fp8_scales.default, (x, True, backend))
    torch.library.opcheck(torch.ops.star_elastic.fp8_scales.default, (x, False, backend))
    torch.library.opcheck(torch.ops.star_elastic.fp8_quantize.default,
                          (x, scales, True, backend))
    q = torch.ops.star_elastic.fp8_quantize(x, scales, False, backend)
    # test_schema is left out for dequantize only: its mutation check multiplies the float8 input,
    # which torch has no CPU kernel for.
    torch.library.opcheck(torch.ops.star_elastic.fp8_dequantize.default,
                          (q, scales, torch.float32, backend),
                          test_utils=("test_autograd_registration", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))


def test_torch_compile_fullgraph_matches_eager():
    def round_trip(x):
        q = sek.quantize_fp8(x, granularity="channel")
        return sek.dequantize_fp8(q.data, q.scale, dtype=torch.float32), q.scale

    x = random_weight(16, 32, torch.float32, "cpu", seed=4)
    compiled = torch.compile(round_trip, fullgraph=True)
    for got, want in zip(compiled(x), round_trip(x)):
        assert torch.equal(got, want)


# --- property test -------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.integers(0, 9),
    cols=st.integers(1, 70),
    log_magnitude=st.floats(-12, 12),
    dtype=st.sampled_from([torch.float32, torch.float16]),
    granularity=st.sampled_from(["tensor", "channel"]),
    backend=st.sampled_from(["torch", "triton"]),
    seed=st.integers(0, 2**16),
)
def test_property_random_shapes_and_magnitudes(rows, cols, log_magnitude, dtype, granularity,
                                               backend, seed):
    if backend == "triton" and not fp8_ops._backends.triton_interpreter_enabled():
        return
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, cols, generator=g) * 2.0**log_magnitude).to(dtype)
    if not torch.isfinite(x).all():  # float16 overflow at the top of the magnitude range
        x = torch.nan_to_num(x, posinf=60000.0, neginf=-60000.0)
    q = sek.quantize_fp8(x, granularity=granularity, backend=backend)
    scale = expected_scales(x, granularity == "channel")
    assert torch.equal(q.scale, scale)
    assert torch.equal(q.data.view(torch.uint8), expected_codes(x, scale))


@pytest.mark.skipif(not sek._extension.has_op("_fp8_quantize_per_row"),
                    reason="the built _C lacks _fp8_quantize_per_row (rebuild the extension)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1), (7, 33), (5, 1024 + 5), (4, 16), (3, 4096 + 64)])
@pytest.mark.parametrize("contiguous", [True, False])
def test_fused_per_token_quantize_kernel_code_matches_torch_float8_cast(dtype, shape, contiguous):
    # The CPU impl runs the CUDA kernel's per-block code (amax pass, scale, quantize pass); rows
    # with whole 16-byte chunks take its 16-byte path, the others the element-wise one.
    x = random_weight(*shape, dtype, "cpu")
    if not contiguous:
        x = torch.cat([x, x], dim=1)[:, ::2]  # a strided view
    scales = torch.full((x.shape[0],), float("nan"))
    codes = torch.empty(x.shape, dtype=torch.uint8)
    torch.ops.star_elastic._fp8_quantize_per_row(x, scales, codes)
    expected = expected_scales(x, per_row=True)
    assert torch.equal(scales, expected)
    assert torch.equal(codes, expected_codes(x, expected))
