"""Quantized linears for nested (elastic) weights: :func:`nvfp4_linear` and :func:`fp8_linear`.

Order of this file: launchers, the registered ops (``star_elastic::nvfp4_linear``,
``star_elastic::nvfp4_prepacked_linear``, ``star_elastic::fp8_linear``) with fake implementations,
then the public wrappers. Kernels:
``star_elastic_kernels/triton/nvfp4_linear.py`` and ``triton/fp8_linear.py``; specification:
``reference/nvfp4.py`` (``nvfp4_linear_ref``) and ``reference/fp8.py`` (``fp8_linear_ref``).

The CUDA NVFP4 kernel (``csrc/quant/nvfp4_marlin.cu``) reads the prepacked layout
(:class:`NVFP4Prepacked`, ``NVFP4Weight.prepack()``); the CUDA FP8 path is one per-token
quantization kernel and the CUTLASS GEMM (``csrc/quant/fp8_quant.cu``, ``fp8_gemm_sm90.cu``).

Elastic widths are arguments (DESIGN §3): ``x`` is compact, (M, in_features), and ``w`` is the
parent's container; the op reads the leading (out_features, in_features) sub-weight in place
through the parent's strides, never a sliced copy.
"""

from __future__ import annotations

import math

import torch

from star_elastic_kernels import _backends
from star_elastic_kernels.quant import fp8 as fp8_ops
from star_elastic_kernels.quant import nvfp4 as nvfp4_ops
from star_elastic_kernels.quant.fp8 import FP8Weight
from star_elastic_kernels.quant.nvfp4 import NVFP4Prepacked, NVFP4Weight
from star_elastic_kernels.reference import fp8 as fp8_reference
from star_elastic_kernels.reference import nvfp4 as nvfp4_reference

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ACTIVATION_QUANT = ("dynamic_per_token", "static", None)



def _nvfp4_linear_supports(backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
    if backend == "cuda" and dtype not in (torch.float16, torch.bfloat16):
        return f"the CUDA NVFP4 kernel takes float16 or bfloat16 activations, got {dtype}"
    return None


# The CUDA kernel reads the prepacked layout (NVFP4Prepacked): standard-layout weights have no cuda
# backend, and asking for it says how to get one.
NVFP4_LINEAR_SPEC = _backends.register(
    _backends.OpSpec("nvfp4_linear", backends=("triton", "torch"))
)
_PREPACK_HINT = ("the CUDA NVFP4 kernel reads the prepacked layout: pass w.prepack() (an "
                 "NVFP4Prepacked, made once) instead of the NVFP4Weight")


def _fp8_linear_supports(backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
    if backend == "cuda" and dtype not in (torch.float16, torch.bfloat16):
        return f"the CUDA FP8 GEMM writes float16 or bfloat16 outputs, got {dtype} activations"
    return None


FP8_LINEAR_SPEC = _backends.register(
    _backends.OpSpec("fp8_linear", backends=("cuda", "triton", "torch"),
                     cuda_ops=("_fp8_gemm_sm90", "_fp8_quantize_per_row", "_fp8_quantize"),
                     supports=_fp8_linear_supports)
)
NVFP4_PREPACKED_LINEAR_SPEC = _backends.register(
    _backends.OpSpec("nvfp4_linear (prepacked)", backends=("cuda", "triton", "torch"),
                     cuda_ops=("_nvfp4_marlin_linear",), supports=_nvfp4_linear_supports)
)
_CUTLASS_WORKSPACE_BYTES = 1 << 20
_DEFAULT_SM_COUNT = 132  # H100 / H200, for launch heuristics where no GPU can be asked (fake mode)


def _sm_count(device: torch.device) -> int:
    """The device's SM count (a launch heuristic only: results never depend on it)."""
    if not torch.cuda.is_available():
        return _DEFAULT_SM_COUNT
    return torch.cuda.get_device_properties(device).multi_processor_count


def _marlin_token_groups(m: int) -> int:
    """Groups of 8 tokens per block, as csrc/quant/nvfp4_marlin.cu picks them."""
    return 1 if m <= 8 else 2 if m <= 16 else 4 if m <= 32 else 8


def marlin_split(m: int, n: int, k: int, sms: int) -> int:
    """Blocks (a thread-block cluster, <= 8) sharing each output tile's K loop: enough to keep
    about four blocks per SM streaming weights (a block's 4-6 stages hold 9-14 KB in flight),
    never more than the K tiles."""
    tiles = -(-n // 64) * -(-m // (8 * _marlin_token_groups(m)))
    return max(1, min(8, -(-k // 64), -(-4 * sms // max(tiles, 1))))


def _fp8_cuda_problem(activation_quant, w_active: FP8Weight, n: int, k: int) -> str | None:
    """Why the CUTLASS FP8 GEMM cannot run this call (its TMA alignment rules), or None."""
    if activation_quant is None:
        return "the CUDA FP8 GEMM is W8A8 only (activation_quant=None runs on triton or torch)"
    if k % 16 or w_active.data.stride(0) % 16:
        return (f"the CUDA FP8 GEMM needs in_features and the weight's row stride to be multiples "
                f"of 16, got {k} and {w_active.data.stride(0)}")
    if n % 8:
        return f"the CUDA FP8 GEMM needs out_features to be a multiple of 8, got {n}"
    return None


def _fp8_linear_cuda(x, w, w_scale, bias, input_scale, mode) -> torch.Tensor:
    M, K = x.shape
    N = w.shape[0]
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return out
    if K == 0:
        return out.zero_() if bias is None else out.copy_(bias.expand(M, N))
    if mode == "dynamic_per_token":
        a, a_scale = fp8_ops._quantize_per_row_cuda(x)  # one kernel: row amax + codes
    else:
        a_scale = input_scale.reshape(1).expand(M).contiguous()
        a = fp8_ops._quantize_cuda(x, a_scale)
    b_scale = w_scale.reshape(1).expand(N).contiguous() if w_scale.dim() == 0 else w_scale
    workspace = torch.empty(_CUTLASS_WORKSPACE_BYTES, dtype=torch.uint8, device=x.device)
    torch.ops.star_elastic._fp8_gemm_sm90(a.view(torch.uint8), w.view(torch.uint8), a_scale,
                                          b_scale.contiguous(),
                                          None if bias is None else bias.contiguous(), out,
                                          workspace)
    return out


def _nvfp4_marlin_cuda(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor,
                       global_scale: torch.Tensor, bias: torch.Tensor | None, n: int,
                       split: int | None = None) -> torch.Tensor:
    M, K = x.shape
    out = torch.empty((M, n), dtype=x.dtype, device=x.device)
    if M == 0 or n == 0:
        return out
    if K == 0:
        return out.zero_() if bias is None else out.copy_(bias.expand(M, n))
    # The kernel copies activation rows in 16-byte chunks (allocations are 256-byte aligned).
    if x.stride(1) != 1 or x.stride(0) % 8 or x.storage_offset() % 8:
        x = x.contiguous()
    if split is None:
        split = marlin_split(M, n, K, _sm_count(x.device))
    torch.ops.star_elastic._nvfp4_marlin_linear(x, codes, scales, global_scale,
                                                None if bias is None else bias.contiguous(), out,
                                                split)
    return out


def _triton_nvfp4():
    from star_elastic_kernels.triton import nvfp4_linear

    return nvfp4_linear


def _triton_fp8():
    from star_elastic_kernels.triton import fp8_linear, fp8_quant

    return fp8_linear, fp8_quant


# --------------------------------------------------------------------------------------------------
# Registered ops. Weights arrive as views of the parent (already narrowed to the active width).


@torch.library.custom_op("star_elastic::nvfp4_linear", mutates_args=())
def _nvfp4_linear_op(
    x: torch.Tensor, data: torch.Tensor, scale: torch.Tensor, global_scale: torch.Tensor,
    bias: torch.Tensor | None, backend: str
) -> torch.Tensor:
    if backend == "triton":
        return _triton_nvfp4().nvfp4_linear(x, data, scale, global_scale, bias)
    return nvfp4_reference.nvfp4_linear_ref(x, data, scale, global_scale, bias)


@_nvfp4_linear_op.register_fake
def _(x, data, scale, global_scale, bias, backend):
    return x.new_empty((x.shape[0], data.shape[0]))


@torch.library.custom_op("star_elastic::nvfp4_prepacked_linear", mutates_args=())
def _nvfp4_prepacked_linear_op(
    x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, global_scale: torch.Tensor,
    bias: torch.Tensor | None, out_features: int, backend: str
) -> torch.Tensor:
    if backend == "cuda":
        return _nvfp4_marlin_cuda(x, codes, scales, global_scale, bias, out_features)
    # The other backends read the standard layout (a copy of the active weight).
    data, scale = nvfp4_reference.nvfp4_unprepack_ref(codes, scales, out_features, x.shape[1])
    return _nvfp4_linear_op(x, data, scale, global_scale, bias, backend)


@_nvfp4_prepacked_linear_op.register_fake
def _(x, codes, scales, global_scale, bias, out_features, backend):
    return x.new_empty((x.shape[0], out_features))


@torch.library.custom_op("star_elastic::fp8_linear", mutates_args=())
def _fp8_linear_op(
    x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
    input_scale: torch.Tensor | None, activation_quant: str, backend: str,
    check_finite: bool = False
) -> torch.Tensor:
    mode = None if activation_quant == "none" else activation_quant
    if mode == "static" and check_finite:
        fp8_ops._check_values(torch.empty(0), input_scale, "x")
    if backend == "cuda":
        return _fp8_linear_cuda(x, w, w_scale, bias, input_scale, mode)
    if backend == "triton":
        linear, quant = _triton_fp8()
        if mode == "dynamic_per_token":
            a_scale = quant.fp8_compute_scales(x, True)
            a = quant.fp8_quantize(x, a_scale)
        elif mode == "static":
            a_scale = input_scale
            a = quant.fp8_quantize(x, a_scale)
        else:
            a, a_scale = x, None
        return linear.fp8_linear(a, a_scale, w, w_scale, bias, x.dtype)
    return fp8_reference.fp8_linear_ref(x, w, w_scale, bias, mode, input_scale)


@_fp8_linear_op.register_fake
def _(x, w, w_scale, bias, input_scale, activation_quant, backend, check_finite=False):
    return x.new_empty((x.shape[0], w.shape[0]))


# --------------------------------------------------------------------------------------------------
# Public wrappers.


def _check_activation(x, in_features, parent_in: int, weight_device: torch.device
                      ) -> tuple[torch.Tensor, int]:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x must be float32, float16 or bfloat16, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError("x must have at least one dimension (..., in_features)")
    k = x.shape[-1] if in_features is None else in_features
    if not isinstance(k, int) or isinstance(k, bool):
        raise TypeError(f"in_features must be an int, got {type(k).__name__}")
    if x.shape[-1] != k:
        raise ValueError(f"x is compact: its last dim ({x.shape[-1]}) must equal in_features "
                         f"({k})")
    if k > parent_in:
        raise ValueError(f"in_features must be in [0, {parent_in}] (the weight's width), got {k}")
    if x.device != weight_device:
        raise ValueError(f"x is on {x.device} but the weight is on {weight_device}")
    return x, k


def _check_out_features(out_features, parent_out: int) -> int:
    n = parent_out if out_features is None else out_features
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"out_features must be an int, got {type(n).__name__}")
    if not 0 <= n <= parent_out:
        raise ValueError(f"out_features must be in [0, {parent_out}] (the weight's width), "
                         f"got {n}")
    return n


def _check_bias(bias, x: torch.Tensor, n: int, parent_out: int) -> torch.Tensor | None:
    if bias is None:
        return None
    if not isinstance(bias, torch.Tensor):
        raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
    if bias.dtype != x.dtype:
        raise TypeError(f"bias dtype {bias.dtype} does not match x dtype {x.dtype}")
    if bias.dim() != 1 or bias.shape[0] not in (n, parent_out):
        raise ValueError(f"bias must have shape ({parent_out},) (the parent's) or ({n},) "
                         f"(out_features), got {tuple(bias.shape)}")
    if bias.device != x.device:
        raise ValueError(f"bias is on {bias.device} but x is on {x.device}")
    return bias[:n]


def nvfp4_linear(
    x: torch.Tensor,
    w: NVFP4Weight | NVFP4Prepacked,
    bias: torch.Tensor | None = None,
    *,
    out_features: int | None = None,
    in_features: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """W4A16 linear: ``x @ dequantize(w[:out_features, :in_features]).T + bias``.

    The weight is decoded inside the kernel (no FP4 tensor cores on Hopper) and multiplied on
    16-bit tensor cores with float32 accumulation; the per-tensor scale is applied in float32.
    Only the active rows and the leading in_features/16 blocks of the parent are read.

    Args:
        x: float16 / bfloat16 (or float32) activation, compact: (..., in_features). Any strides.
        w: the parent's :class:`NVFP4Weight` (N, K) from :func:`quantize_nvfp4` (a slice works
            too), or its :class:`NVFP4Prepacked` (``w.prepack()``), which the cuda backend runs
            on the Marlin-class kernel (16-byte cp.async pipeline, weight decoded in registers,
            deterministic split-K in one launch; compiled and CPU-emulated, not yet run on a
            GPU) and the other backends unpack first.
        bias: optional (N,) (the parent's, read up to out_features) or (out_features,), x's dtype.
        out_features: active output width, 0 <= out_features <= N (default N).
        in_features: active input width, a multiple of 16, <= K (default x.shape[-1]; must equal
            x.shape[-1]).
        backend: ``"auto" | "cuda" | "triton" | "torch"`` (cuda: a prepacked w and float16 /
            bfloat16 x; auto runs a standard-layout w on triton).

    Returns:
        (..., out_features) tensor in x's dtype.

    Raises:
        TypeError / ValueError: bad types, dtypes or widths (in_features not a multiple of 16),
            mismatched bias dtype or devices. Raised before any kernel runs.
    """
    prepacked = isinstance(w, NVFP4Prepacked)
    if prepacked:
        nvfp4_ops.check_nvfp4_prepacked(w)
        device = w.codes.device
    else:
        nvfp4_ops.check_nvfp4_weight(w)
        device = w.data.device
    x, k = _check_activation(x, in_features, w.in_features, device)
    n = _check_out_features(out_features, w.out_features)
    if k % nvfp4_ops.BLOCK:
        raise ValueError(f"in_features must be a multiple of {nvfp4_ops.BLOCK} for NVFP4, got {k}")
    bias = _check_bias(bias, x, n, w.out_features)
    active = w.slice(n, k)
    rows = x.reshape(math.prod(x.shape[:-1]), k)
    if prepacked:
        chosen = _backends.select_backend(NVFP4_PREPACKED_LINEAR_SPEC, x.device, x.dtype, backend)
        out = _nvfp4_prepacked_linear_op(rows, active.codes, active.scales,
                                         active.global_scale.reshape(()), bias, n, chosen)
    else:
        if _backends.requested_backend(backend) == "cuda":
            raise _backends.BackendUnavailableError(
                f"nvfp4_linear: backend 'cuda' is unavailable: {_PREPACK_HINT}")
        chosen = _backends.select_backend(NVFP4_LINEAR_SPEC, x.device, x.dtype, backend)
        out = _nvfp4_linear_op(rows, active.data, active.scale, active.global_scale.reshape(()),
                               bias, chosen)
    return out.reshape(*x.shape[:-1], n)


def fp8_linear(
    x: torch.Tensor,
    w: FP8Weight,
    bias: torch.Tensor | None = None,
    *,
    out_features: int | None = None,
    in_features: int | None = None,
    activation_quant: str | None = "dynamic_per_token",
    input_scale: torch.Tensor | None = None,
    check_finite: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Linear with an FP8 E4M3 weight: W8A8 (FP8 tensor cores) or W8A16.

    ``out = x_q @ w_q[:out_features, :in_features].T * x_scale * w_scale + bias``, float32
    accumulation, result in x's dtype.

    Args:
        x: float16 / bfloat16 (or float32) activation, compact: (..., in_features). Any strides.
        w: the parent's :class:`FP8Weight` (N, K) from :func:`quantize_fp8`, per-tensor scale ()
            or per-output-channel scale (N,) (sliced with the rows).
        bias: optional (N,) (the parent's) or (out_features,), x's dtype.
        out_features / in_features: active widths (defaults N and x.shape[-1]).
        activation_quant: ``"dynamic_per_token"`` (x quantized to E4M3 with one scale
            amax(|row|)/448 per row), ``"static"`` (one calibrated ``input_scale``) or None (W8A16:
            the weight is decoded in the kernel and x is used as is).
        input_scale: float32 () or (1,), > 0; required with ``"static"``, rejected otherwise.
        check_finite: with ``"static"``, check that input_scale is finite and > 0 before
            running (a device sync, so off by default: the op never reads device data on the
            host otherwise, and a CUDA graph can capture it).
        backend: ``"auto" | "cuda" | "triton" | "torch"``. cuda (CUTLASS sm90a: FP8 fast-accumulate
            warp-specialized persistent GEMM, 128x256x128 tiles in 2x1 clusters with a TMA
            multicast of the weight above 128 rows, 128x128x128 below) runs W8A8 with
            float16 / bfloat16 x, in_features and the weight's row stride multiples of 16 and
            out_features a multiple of 8; auto picks triton for other calls, an explicit "cuda"
            raises BackendUnavailableError.

    Returns:
        (..., out_features) tensor in x's dtype.
    """
    if not isinstance(w, FP8Weight):
        raise TypeError(f"w must be an FP8Weight (from quantize_fp8), got {type(w).__name__}")
    if w.data.dtype != torch.float8_e4m3fn:
        raise TypeError(f"w.data must be float8_e4m3fn, got {w.data.dtype}")
    if w.data.dim() != 2:
        raise ValueError(f"w must be a 2-D (out_features, in_features) weight, got shape "
                         f"{tuple(w.data.shape)}")
    if w.scale.dtype != torch.float32 or w.scale.shape not in ((), (w.out_features,)):
        raise ValueError(f"w.scale must be float32 of shape () or ({w.out_features},), got "
                         f"{w.scale.dtype} {tuple(w.scale.shape)}")
    if activation_quant not in ACTIVATION_QUANT:
        raise ValueError(f"activation_quant must be 'dynamic_per_token', 'static' or None, got "
                         f"{activation_quant!r}")
    x, k = _check_activation(x, in_features, w.in_features, w.data.device)
    n = _check_out_features(out_features, w.out_features)
    bias = _check_bias(bias, x, n, w.out_features)
    if activation_quant == "static":
        if input_scale is None:
            raise ValueError("activation_quant='static' needs input_scale")
        input_scale = fp8_ops._normalize_scale(input_scale, False, 1, x, "input_scale")
    elif input_scale is not None:
        raise ValueError(f"input_scale is only used with activation_quant='static', got "
                         f"activation_quant={activation_quant!r}")
    active = w.slice(n, k)
    rows = x.reshape(math.prod(x.shape[:-1]), k)
    chosen = _backends.select_backend(FP8_LINEAR_SPEC, x.device, x.dtype, backend)
    if chosen == "cuda":
        problem = _fp8_cuda_problem(activation_quant, active, n, k)
        if problem is not None:
            if _backends.requested_backend(backend) == "cuda":
                raise _backends.BackendUnavailableError(
                    f"fp8_linear: backend 'cuda' is unavailable: {problem}")
            chosen = _backends.select_backend(FP8_LINEAR_SPEC, x.device, x.dtype,
                                              "triton" if _backends.unavailable_reason(
                                                  FP8_LINEAR_SPEC, "triton", x.device,
                                                  x.dtype) is None else "torch")
    out = _fp8_linear_op(rows, active.data, active.scale, bias, input_scale,
                         activation_quant or "none", chosen, check_finite)
    return out.reshape(*x.shape[:-1], n)
