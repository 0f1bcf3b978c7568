"""The prepacked NVFP4 layout and the Marlin-class W4A16 kernel (csrc/quant/nvfp4_marlin.*).

Without a GPU, the kernel's own per-thread code runs here through the CPU impls of its private
ops: the prepack, the fragment reader + bit-level dequant (``_nvfp4_prepacked_operands``: the
exact 16-bit MMA operands every thread builds), and the whole kernel (``_nvfp4_marlin_linear``:
cp.async plan, shared-memory staging, fragment maps, MMA in FP32, cluster split-K reduction,
epilogue). They are checked against the reference dequantization of the *standard* layout, for
parents and nested children read as views of the packed parent.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import star_elastic_kernels as sek
from star_elastic_kernels import _extension
from star_elastic_kernels.quant import linear as linear_ops
from star_elastic_kernels.reference import nvfp4 as reference
from tests.kernels.test_quant_linear import assert_close, nvfp4_decode

needs_op = {name: pytest.mark.skipif(not _extension.has_op(name),
                                     reason=f"the built _C lacks {name} (rebuild the extension)")
            for name in ("_nvfp4_prepack", "_nvfp4_prepacked_operands", "_nvfp4_marlin_linear")}
OPERAND_SCALE = 2.0 ** -7  # the kernel's MMA operands are e2m1 * scale * 2^-7
# Children of a (150, 224) parent: on the 64 grid, off it, empty, one block.
CHILDREN = [(150, 224), (128, 192), (64, 64), (100, 112), (1, 16), (150, 16), (0, 32), (37, 0)]


def special_weight(n: int, k: int, seed: int = 0) -> sek.NVFP4Weight:
    """Random codes with every kind of block scale: normal, E4M3 subnormal, zero, negative (and
    negative zero), but no NaN."""
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, 256, (n, k // 2), generator=g, dtype=torch.uint8)
    scale = torch.randint(0, 256, (n, k // 16), generator=g, dtype=torch.uint8)
    scale = torch.where((scale & 0x7F) == 0x7F, scale ^ 0x01, scale)  # no NaN codes
    if n and k:
        scale[0, 0], scale[-1, -1] = 0x00, 0x80  # zero and negative zero
        scale[n // 2, 0] = 0x01  # the least subnormal, 2^-9
    return sek.NVFP4Weight(data, scale.view(torch.float8_e4m3fn), torch.tensor(0.37))


def prepack_host(w: sek.NVFP4Weight):
    tn, tk = -(-w.out_features // 64), -(-w.in_features // 64)
    codes = torch.empty(tn, tk, 2048, dtype=torch.uint8)
    scales = torch.empty(tn, tk, 256, dtype=torch.uint8)
    torch.ops.star_elastic._nvfp4_prepack(w.data, w.scale.view(torch.uint8), codes, scales)
    return codes, scales


def operands_host(p: sek.NVFP4Prepacked, dtype) -> torch.Tensor:
    out = torch.full((p.out_features, p.in_features), float("nan"), dtype=dtype)
    torch.ops.star_elastic._nvfp4_prepacked_operands(p.codes, p.scales, out)
    return out


# --- the layout (reference code) -----------------------------------------------------------------


@pytest.mark.parametrize("n,k", CHILDREN)
def test_reference_unprepack_of_a_child_view_gives_the_sliced_standard_weight(n, k):
    w = sek.quantize_nvfp4(torch.randn(150, 224, generator=torch.Generator().manual_seed(1)))
    packed = w.prepack(backend="torch")
    assert packed.codes.shape == (3, 4, 2048) and packed.scales.shape == (3, 4, 256)
    child = packed.slice(n, k)
    assert child.codes.untyped_storage().data_ptr() == packed.codes.untyped_storage().data_ptr()
    assert child.codes.shape[:2] == (-(-n // 64), -(-k // 64))
    unpacked = child.unpack()
    sliced = w.slice(n, k)
    assert torch.equal(unpacked.data, sliced.data)
    assert torch.equal(unpacked.scale.view(torch.uint8), sliced.scale.view(torch.uint8))


def test_scale_reencoding_covers_every_e4m3_value():
    raw = torch.arange(256, dtype=torch.uint8)
    raw = raw[(raw & 0x7F) != 0x7F]
    u = reference.encode_prepacked_scale(raw)
    value = raw.view(torch.float8_e4m3fn).double().abs()
    # The two decodes the kernel uses: u << 7 as fp16 bits, (u << 4) | 0x7000 as bf16 bits.
    fp16 = (u.to(torch.int32) << 7).to(torch.int16).view(torch.float16).double()
    bf16 = ((u.to(torch.int32) << 4) | 0x7000).to(torch.int16).view(torch.bfloat16).double()
    assert torch.equal(fp16, value * 2.0**7)
    nonzero = value > 0
    assert torch.equal(bf16[nonzero], value[nonzero] * 2.0**119)
    assert torch.equal(u[~nonzero], torch.zeros_like(u[~nonzero]))


# --- the CUDA code's prepack, fragment reader and dequant, run on the CPU ----------------------------


@needs_op["_nvfp4_prepack"]
@pytest.mark.parametrize("n,k", [(150, 224), (64, 64), (1, 16), (65, 80), (0, 16)])
def test_cuda_prepack_code_equals_the_reference_layout(n, k):
    w = special_weight(n, k, seed=n + k)
    codes, scales = prepack_host(w)
    ref_codes, ref_scales = reference.nvfp4_prepack_ref(w.data, w.scale)
    assert torch.equal(codes, ref_codes)
    assert torch.equal(scales, ref_scales)


@needs_op["_nvfp4_prepacked_operands"]
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,k", CHILDREN)
def test_every_threads_operands_are_bit_exact_for_parent_and_children(dtype, n, k):
    parent = special_weight(150, 224, seed=3)
    packed = sek.NVFP4Prepacked(*reference.nvfp4_prepack_ref(parent.data, parent.scale),
                                parent.global_scale, 150, 224)
    got = operands_host(packed.slice(n, k), dtype)
    child = parent.slice(n, k)
    want = reference.nvfp4_dequantize_ref(child.data, child.scale,
                                          torch.tensor(OPERAND_SCALE), dtype)
    assert torch.equal(got, want)  # every element written, every value exact (-0 == +0)


@needs_op["_nvfp4_prepacked_operands"]
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 130), blocks=st.integers(1, 12), dtype=st.sampled_from(
    [torch.float16, torch.bfloat16]), data=st.data())
def test_property_operands_of_random_children(n, blocks, dtype, data):
    parent = special_weight(n, 16 * blocks, seed=data.draw(st.integers(0, 2**16)))
    packed = sek.NVFP4Prepacked(*prepack_host(parent), parent.global_scale, n, 16 * blocks)
    child_n, child_k = data.draw(st.integers(0, n)), 16 * data.draw(st.integers(0, blocks))
    got = operands_host(packed.slice(child_n, child_k), dtype)
    child = parent.slice(child_n, child_k)
    want = reference.nvfp4_dequantize_ref(child.data, child.scale,
                                          torch.tensor(OPERAND_SCALE), dtype)
    assert torch.equal(got, want)


# --- the whole kernel on the CPU -------------------------------------------------------------------


def marlin_host(x, packed: sek.NVFP4Prepacked, bias, split):
    out = torch.full((x.shape[0], packed.out_features), float("nan"), dtype=x.dtype)
    torch.ops.star_elastic._nvfp4_marlin_linear(x, packed.codes, packed.scales,
                                                packed.global_scale, bias, out, split)
    return out


@needs_op["_nvfp4_marlin_linear"]
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 8, 9, 16, 17, 40, 70])
@pytest.mark.parametrize("n,k,split", [(150, 224, 1), (150, 224, 3), (128, 192, 8),
                                       (100, 112, 2), (1, 16, 1), (70, 224, 4)])
def test_kernel_emulation_matches_dequantize_then_matmul(dtype, m, n, k, split):
    g = torch.Generator().manual_seed(m * 7 + n)
    w = sek.quantize_nvfp4(torch.randn(150, 224, generator=g) * torch.logspace(-1, 1, 224))
    packed = w.prepack(backend="torch")
    x = torch.randn(m, k, generator=g).to(dtype)
    bias = torch.randn(n, generator=g).to(dtype)
    out = marlin_host(x, packed.slice(n, k), bias, split)
    weight = nvfp4_decode(w, n, k)
    assert_close(out, x.double() @ weight.t() + bias.double(), x, weight, dtype)


@needs_op["_nvfp4_marlin_linear"]
def test_kernel_split_k_is_deterministic_and_every_split_agrees():
    g = torch.Generator().manual_seed(11)
    w = sek.quantize_nvfp4(torch.randn(64, 512, generator=g))
    packed = w.prepack(backend="torch")
    x = torch.randn(3, 512, generator=g).half()
    runs = {split: marlin_host(x, packed, None, split) for split in (1, 2, 5, 8)}
    assert torch.equal(runs[5], marlin_host(x, packed, None, 5))  # same split, same bits
    weight = nvfp4_decode(w, 64, 512)
    for out in runs.values():
        assert_close(out, x.double() @ weight.t(), x, weight, torch.float16)


@needs_op["_nvfp4_marlin_linear"]
def test_kernel_zero_fills_activation_columns_past_an_off_grid_child():
    # The last k-tile of a child with k = 80 holds parent columns 80..127: they must meet zeros.
    g = torch.Generator().manual_seed(12)
    w = sek.quantize_nvfp4(torch.randn(64, 128, generator=g) * 100)
    x = torch.randn(2, 80, generator=g).half()
    out = marlin_host(x, w.prepack(backend="torch").slice(64, 80), None, 1)
    weight = nvfp4_decode(w, 64, 80)
    assert_close(out, x.double() @ weight.t(), x, weight, torch.float16)


# --- the public op -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.interpreter)])
def test_nvfp4_linear_takes_a_prepacked_weight(backend):
    g = torch.Generator().manual_seed(13)
    w = sek.quantize_nvfp4(torch.randn(96, 160, generator=g))
    packed = w.prepack()
    x = torch.randn(5, 80, generator=g).half()
    bias = torch.randn(96, generator=g).half()
    got = sek.nvfp4_linear(x, packed, bias, out_features=70, backend=backend)
    want = sek.nvfp4_linear(x, w, bias, out_features=70, backend=backend)
    assert torch.equal(got, want)


@pytest.mark.parametrize("call,error,words", [
    (lambda p: sek.nvfp4_linear(torch.randn(2, 40).half(), p), ValueError, "multiple of 16"),
    (lambda p: p.slice(65, 64), ValueError, "out_features must be in [0, 64]"),
    (lambda p: sek.nvfp4_linear(torch.randn(2, 64).half(), p._replace(codes=p.codes.int())),
     ValueError, "codes must be uint8"),
    (lambda p: sek.nvfp4_linear(torch.randn(2, 64).half(), p._replace(in_features=72)),
     ValueError, "must fit its"),
    (lambda p: sek.nvfp4_linear(torch.randn(2, 64).half(), p, backend="cuda"),
     sek.BackendUnavailableError, "backend 'cuda' is unavailable"),
    (lambda p: sek.prepack_nvfp4(p), TypeError, "NVFP4Weight"),
])
def test_bad_prepacked_inputs_raise_clear_errors(call, error, words):
    packed = sek.quantize_nvfp4(torch.randn(64, 64)).prepack()
    with pytest.raises(error) as info:
        call(packed)
    assert words in str(info.value)


def test_marlin_split_heuristic_stays_in_the_cluster_limit():
    assert linear_ops.marlin_split(1, 2688, 1856, 132) == 8  # 42 tiles; 29 k-tiles
    assert linear_ops.marlin_split(1, 5120, 20480, 132) == 7  # 80 tiles
    assert linear_ops.marlin_split(1, 64, 64, 132) == 1  # one k-tile
    assert linear_ops.marlin_split(4096, 20480, 5120, 132) == 1  # plenty of tiles
    assert all(1 <= linear_ops.marlin_split(m, n, 4096, 132) <= 8
               for m in (1, 16, 64, 1000) for n in (64, 1000, 8192))


def test_prepacked_op_registration_and_compile():
    w = sek.quantize_nvfp4(torch.randn(96, 160, generator=torch.Generator().manual_seed(14)))
    child = w.prepack().slice(70, 96)
    x = torch.randn(3, 96)
    torch.library.opcheck(torch.ops.star_elastic.nvfp4_prepacked_linear.default,
                          (x, child.codes, child.scales, child.global_scale, None, 70, "torch"),
                          test_utils=("test_autograd_registration", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))
    packed = w.prepack()
    layer = lambda x: sek.nvfp4_linear(x, packed, out_features=70)  # noqa: E731
    assert torch.equal(torch.compile(layer, fullgraph=True)(x), layer(x))


# --- on a GPU: the CUDA kernels against their own CPU runs ---------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("n,k", [(150, 224), (2688, 1856)])
def test_gpu_prepack_and_operands_equal_their_cpu_runs(n, k):
    w = special_weight(n, k, seed=5)
    packed = w._replace(data=w.data.cuda(), scale=w.scale.cuda(),
                        global_scale=w.global_scale.cuda()).prepack(backend="cuda")
    codes, scales = prepack_host(w)
    assert torch.equal(packed.codes.cpu(), codes) and torch.equal(packed.scales.cpu(), scales)
    for dtype in (torch.float16, torch.bfloat16):
        child = packed.slice(n // 2, 16 * (k // 32))
        out = torch.empty(child.shape, dtype=dtype, device="cuda")
        torch.ops.star_elastic._nvfp4_prepacked_operands(child.codes, child.scales, out)
        host = sek.NVFP4Prepacked(codes, scales, w.global_scale, n, k).slice(*child.shape)
        assert torch.equal(out.cpu(), operands_host(host, dtype))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 16, 64, 300])
def test_gpu_kernel_matches_its_cpu_run_and_is_deterministic(dtype, m):
    g = torch.Generator().manual_seed(m)
    w = sek.quantize_nvfp4(torch.randn(300, 640, generator=g))
    packed = w.prepack(backend="torch")
    child = packed.slice(200, 448)
    x = torch.randn(m, 448, generator=g).to(dtype)
    bias = torch.randn(200, generator=g).to(dtype)
    gpu = child._replace(codes=child.codes.cuda(), scales=child.scales.cuda(),
                         global_scale=child.global_scale.cuda())
    weight = nvfp4_decode(w, 200, 448)
    for split in (1, 3, 8):
        out = torch.empty(m, 200, dtype=dtype, device="cuda")
        torch.ops.star_elastic._nvfp4_marlin_linear(x.cuda(), gpu.codes, gpu.scales,
                                                    gpu.global_scale, bias.cuda(), out, split)
        again = torch.empty_like(out)
        torch.ops.star_elastic._nvfp4_marlin_linear(x.cuda(), gpu.codes, gpu.scales,
                                                    gpu.global_scale, bias.cuda(), again, split)
        assert torch.equal(out, again)  # deterministic split-K
        assert_close(out, x.double() @ weight.t() + bias.double(), x, weight, dtype)
        cpu = marlin_host(x, child, bias, split)
        assert_close(out, cpu.double(), x, weight, dtype)
