"""Fused fake-quantization (NVFP4, FP8) with straight-through gradients."""

import pytest
import torch

import star_elastic_kernels as sek
from tests.helpers import backend_cases


def skip_unsupported(backend, device, dtype):
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter computes bf16 wrongly; bf16 Triton runs on the GPU")


def weight(rows=12, cols=64, seed=0, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, cols, generator=g) * torch.logspace(-1, 1, cols)).to(dtype).to(device)


@pytest.mark.parametrize("backend,device", backend_cases(with_cuda_backend=False))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_nvfp4_fake_quant_equals_quantize_then_dequantize(backend, device, dtype):
    skip_unsupported(backend, device, dtype)
    w = weight(device=device, dtype=dtype)
    g = sek.quantize_nvfp4(w).global_scale / 3  # a frozen scale that makes some blocks clip
    out = sek.fake_quantize_nvfp4(w, g, backend=backend)
    expected = sek.quantize_nvfp4(w, g, backend="torch").dequantize(dtype, backend="torch")
    assert out.dtype == dtype and torch.equal(out, expected)
    # Activations: blocks along the last dim of any shape.
    act = w.reshape(3, 4, 64)
    assert torch.equal(sek.fake_quantize_nvfp4(act, g, backend=backend), expected.reshape(3, 4, 64))
    default = sek.fake_quantize_nvfp4(w, backend=backend)
    assert torch.equal(default, sek.quantize_nvfp4(w).dequantize(dtype))


@pytest.mark.parametrize("backend,device", backend_cases(with_cuda_backend=False))
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fp8_fake_quant_equals_quantize_then_dequantize(backend, device, granularity, dtype):
    skip_unsupported(backend, device, dtype)
    w = weight(device=device, dtype=dtype)
    out = sek.fake_quantize_fp8(w, granularity=granularity, backend=backend)
    q = sek.quantize_fp8(w, granularity=granularity, backend="torch")
    assert torch.equal(out, sek.dequantize_fp8(q.data, q.scale, dtype=dtype, backend="torch"))
    given = torch.tensor(0.002, device=device)
    out = sek.fake_quantize_fp8(w, given, backend=backend)
    q = sek.quantize_fp8(w, given, backend="torch")
    assert torch.equal(out, sek.dequantize_fp8(q.data, q.scale, dtype=dtype, backend="torch"))


@pytest.mark.parametrize("backend,device", backend_cases(with_cuda_backend=False))
def test_nvfp4_straight_through_gradient_is_zero_only_where_clipped(backend, device):
    w = weight(device=device).requires_grad_()
    g = (w.detach().abs().max() / 2688 / 4).to(torch.float32)  # global scale 4x too small
    out = sek.fake_quantize_nvfp4(w, g, backend=backend)
    upstream = torch.randn(w.shape, generator=torch.Generator().manual_seed(1)).to(device)
    (out * upstream).sum().backward()
    # Independent clip test: with the block scale saturated at 448, |x| > 6 * 448 * g clips.
    x = w.detach().cpu().double()
    q = sek.quantize_nvfp4(w.detach().cpu(), g.cpu())
    limit = 6 * q.scale.double().repeat_interleave(16, dim=1) * float(g)
    inside = x.abs() <= limit
    assert (~inside).any() and inside.any()
    assert torch.equal(w.grad.cpu(), torch.where(inside, upstream.cpu(), 0.0))


@pytest.mark.parametrize("backend,device", backend_cases(with_cuda_backend=False))
def test_fp8_straight_through_gradient_is_zero_only_where_clipped(backend, device):
    x = weight(device=device).requires_grad_()
    scale = torch.tensor(0.01, device=device)  # |x| > 4.48 clips
    out = sek.fake_quantize_fp8(x, scale, backend=backend)
    out.sum().backward()
    inside = x.detach().abs() <= 4.48
    assert (~inside).any() and inside.any()
    assert torch.equal(x.grad, inside.float())
    # Dynamic scales never clip: the gradient is all ones.
    y = weight(device=device).requires_grad_()
    sek.fake_quantize_fp8(y, granularity="channel", backend=backend).sum().backward()
    assert torch.equal(y.grad, torch.ones_like(y))


def test_nested_qad_parent_fake_quant_sliced_equals_served_child():
    """Fake-quantizing the parent once and slicing gives exactly the child the server runs."""
    w = weight(32, 128, seed=4)
    parent = sek.quantize_nvfp4(w)
    trained = sek.fake_quantize_nvfp4(w, parent.global_scale)
    for n, k in [(32, 128), (16, 64), (5, 48)]:
        assert torch.equal(trained[:n, :k], parent.slice(n, k).dequantize(torch.float32))


@pytest.mark.parametrize("call,error,words", [
    (lambda: sek.fake_quantize_nvfp4(torch.ones(2, 24)), ValueError, "multiple of 16"),
    (lambda: sek.fake_quantize_nvfp4(torch.ones(2, 16, dtype=torch.int32)), TypeError,
     "x must be float"),
    (lambda: sek.fake_quantize_nvfp4(torch.ones(2, 16), torch.ones(2)), ValueError, "one value"),
    (lambda: sek.fake_quantize_fp8(torch.ones(2, 16), granularity="block"), ValueError,
     "granularity"),
    (lambda: sek.fake_quantize_fp8(torch.ones(2, 16), torch.ones(3), granularity="channel"),
     ValueError, "shape (2,)"),
    (lambda: sek.fake_quantize_fp8("x"), TypeError, "x must be a torch.Tensor"),
])
def test_bad_inputs_raise_clear_errors(call, error, words):
    with pytest.raises(error) as info:
        call()
    assert words in str(info.value)


@pytest.mark.parametrize("backend,device", backend_cases(with_cuda_backend=False))
def test_opcheck(backend, device):
    x = weight(4, 32, device=device)
    g = torch.tensor(0.001, device=device)
    torch.library.opcheck(torch.ops.star_elastic.fake_quantize_nvfp4.default, (x, g, backend))
    torch.library.opcheck(torch.ops.star_elastic.fake_quantize_fp8.default,
                          (x, torch.full((4,), 0.01, device=device), backend))


def test_torch_compile_fullgraph_forward_and_backward():
    def loss(w):
        return (sek.fake_quantize_nvfp4(w) ** 2).sum() + sek.fake_quantize_fp8(w).sum()

    w = weight(8, 32).requires_grad_()
    loss(w).backward()
    eager_grad = w.grad.clone()
    w.grad = None
    torch.compile(loss, fullgraph=True)(w).backward()
    assert torch.equal(w.grad, eager_grad)
