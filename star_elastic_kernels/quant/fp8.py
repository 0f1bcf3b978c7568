"""FP8 E4M3 quantize / dequantize with per-tensor or per-output-channel FP32 scales.

Order of this file: backend launchers, the registered ops (``star_elastic::fp8_*``) with their fake
implementations, then the public wrappers :func:`quantize_fp8` and :func:`dequantize_fp8`. The
kernels live in ``csrc/quant/fp8_quant.cu`` (cuda) and ``star_elastic_kernels/triton/fp8_quant.py``
(triton); the specification in ``star_elastic_kernels/reference/fp8.py`` (torch).

Format: ``q = e4m3(clamp(x / scale, -448, 448))`` rounded to nearest even, with
``scale = amax(|x|) / 448`` over the tensor (``granularity="tensor"``) or over each row of a 2-D
(out_features, in_features) weight (``granularity="channel"``) unless a scale is given; an all-zero
tensor or row gets scale 1. All backends produce bit-identical codes and scales.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from star_elastic_kernels import _backends
from star_elastic_kernels.reference import fp8 as reference

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_C_OPS = ("_fp8_compute_scales", "_fp8_quantize", "_fp8_dequantize")

QUANTIZE_SPEC = _backends.register(
    _backends.OpSpec("quantize_fp8", backends=("cuda", "triton", "torch"), cuda_ops=_C_OPS)
)
DEQUANTIZE_SPEC = _backends.register(
    _backends.OpSpec("dequantize_fp8", backends=("cuda", "triton", "torch"), cuda_ops=_C_OPS)
)


class FP8Weight(NamedTuple):
    """Result of :func:`quantize_fp8`, and an FP8 weight for :func:`fp8_linear`.

    Fields (``data, scale = quantize_fp8(...)`` unpacks them):
        data: float8_e4m3fn, the input's shape ((out_features, in_features) for a weight).
        scale: float32 decode scale, shape () per tensor or (out_features,) per output channel.

    :meth:`slice` returns the leading (out_features, in_features) sub-weight as views (no copy):
    the per-tensor scale is the parent's, a per-channel scale is sliced with the rows, so the slice
    equals ``quantize_fp8(w[:n, :k], scale=...)`` of the same scales bit for bit.
    """

    data: torch.Tensor
    scale: torch.Tensor

    @property
    def granularity(self) -> str:
        return "tensor" if self.scale.dim() == 0 else "channel"

    @property
    def out_features(self) -> int:
        return self.data.shape[0]

    @property
    def in_features(self) -> int:
        return self.data.shape[1]

    def slice(self, out_features: int | None = None, in_features: int | None = None
              ) -> "FP8Weight":
        """The leading (out_features, in_features) sub-weight of a 2-D weight, as views."""
        if self.data.dim() != 2:
            raise ValueError(f"only a 2-D (out_features, in_features) weight can be sliced, got "
                             f"shape {tuple(self.data.shape)}")
        n = self.out_features if out_features is None else out_features
        k = self.in_features if in_features is None else in_features
        for name, value, limit in (("out_features", n, self.out_features),
                                   ("in_features", k, self.in_features)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if not 0 <= value <= limit:
                raise ValueError(f"{name} must be in [0, {limit}] (the parent's width), got "
                                 f"{value}")
        scale = self.scale if self.scale.dim() == 0 else self.scale[:n]
        return FP8Weight(self.data[:n, :k], scale)

    def dequantize(self, dtype: torch.dtype = torch.bfloat16, *, backend: str | None = None
                   ) -> torch.Tensor:
        """Decode to a contiguous tensor of ``dtype`` (see :func:`dequantize_fp8`)."""
        return dequantize_fp8(self.data, self.scale, dtype=dtype, backend=backend)


# The foundation's name for the same (data, scale) pair.
FP8Quantized = FP8Weight


# --------------------------------------------------------------------------------------------------
# Launchers: one function per backend, all on 2-D (rows, cols) views.


def _scales_cuda(x: torch.Tensor, per_row: bool) -> torch.Tensor:
    scales = torch.empty(x.shape[0] if per_row else (), dtype=torch.float32, device=x.device)
    torch.ops.star_elastic._fp8_compute_scales(x, scales.view(-1), per_row)
    return scales


def _quantize_cuda(x: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    out = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
    torch.ops.star_elastic._fp8_quantize(x, scales.reshape(-1), out)
    return out


def _quantize_per_row_cuda(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token quantization in one kernel: (codes (rows, cols) e4m3, scales (rows,))."""
    out = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
    scales = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    torch.ops.star_elastic._fp8_quantize_per_row(x, scales, out.view(torch.uint8))
    return out, scales


def _dequantize_cuda(q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    out = torch.empty(q.shape, dtype=dtype, device=q.device)
    torch.ops.star_elastic._fp8_dequantize(q, scales.reshape(-1), out)
    return out


def _triton():
    from star_elastic_kernels.triton import fp8_quant

    return fp8_quant


def _check_values(x: torch.Tensor, scales: torch.Tensor, x_name: str) -> None:
    """Raise on NaN/Inf in ``x`` or a non-finite or non-positive scale (one device sync)."""
    x_finite = torch.isfinite(x).all() if x.numel() else torch.ones((), dtype=torch.bool)
    flags = torch.stack([
        x_finite.to(scales.device),
        torch.isfinite(scales).all(),
        (scales > 0).all(),
    ]).tolist()
    if not flags[0]:
        raise ValueError(f"{x_name} contains NaN or Inf; FP8 E4M3 cannot represent them")
    if not flags[1]:
        raise ValueError("scale must be finite, got NaN or Inf")
    if not flags[2]:
        raise ValueError("scale must be > 0 (a zero or negative scale cannot be inverted)")


# --------------------------------------------------------------------------------------------------
# Registered ops. Backend choice is an argument (resolved by the public wrapper) so a compiled graph
# records which implementation it runs.


@torch.library.custom_op("star_elastic::fp8_scales", mutates_args=())
def _fp8_scales_op(x: torch.Tensor, per_row: bool, backend: str) -> torch.Tensor:
    if backend == "cuda":
        return _scales_cuda(x, per_row)
    if backend == "triton":
        return _triton().fp8_compute_scales(x, per_row)
    return reference.fp8_scales_ref(x, per_row)


@_fp8_scales_op.register_fake
def _(x, per_row, backend):
    return x.new_empty(x.shape[0] if per_row else (), dtype=torch.float32)


@torch.library.custom_op("star_elastic::fp8_quantize", mutates_args=())
def _fp8_quantize_op(
    x: torch.Tensor, scales: torch.Tensor, check_finite: bool, backend: str
) -> torch.Tensor:
    if check_finite:
        _check_values(x, scales, "x")
    if backend == "cuda":
        return _quantize_cuda(x, scales)
    if backend == "triton":
        return _triton().fp8_quantize(x, scales)
    return reference.fp8_quantize_ref(x, scales).contiguous()


@_fp8_quantize_op.register_fake
def _(x, scales, check_finite, backend):
    return x.new_empty(x.shape, dtype=torch.float8_e4m3fn)


@torch.library.custom_op("star_elastic::fp8_dequantize", mutates_args=())
def _fp8_dequantize_op(
    q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype, backend: str
) -> torch.Tensor:
    _check_values(torch.empty(0), scales, "q")
    if backend == "cuda":
        return _dequantize_cuda(q, scales, dtype)
    if backend == "triton":
        return _triton().fp8_dequantize(q, scales, dtype)
    return reference.fp8_dequantize_ref(q, scales, dtype).contiguous()


@_fp8_dequantize_op.register_fake
def _(q, scales, dtype, backend):
    return q.new_empty(q.shape, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Public wrappers: all argument checks happen here, before any kernel runs.


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """View any tensor as 2-D (rows, cols) with the last dim as columns (a 0-d tensor is 1x1)."""
    if t.dim() == 0:
        return t.reshape(1, 1)
    return t.reshape(math.prod(t.shape[:-1]), t.shape[-1])  # -1 is ambiguous when a dim is 0


def _normalize_scale(scale: torch.Tensor, per_row: bool, rows: int, like: torch.Tensor,
                     name: str) -> torch.Tensor:
    if not isinstance(scale, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(scale).__name__}")
    if scale.dtype != torch.float32:
        raise TypeError(f"{name} must be float32, got {scale.dtype}")
    if scale.device != like.device:
        raise ValueError(f"{name} is on {scale.device} but the data is on {like.device}")
    if per_row:
        if scale.shape not in ((rows,), (rows, 1)):
            raise ValueError(f"{name} for per-channel scaling must have shape ({rows},) or "
                             f"({rows}, 1), got {tuple(scale.shape)}")
        return scale.reshape(rows)
    if scale.numel() != 1:
        raise ValueError(f"{name} for per-tensor scaling must hold one value (shape () or (1,)), "
                         f"got shape {tuple(scale.shape)}")
    return scale.reshape(())


def quantize_fp8(
    x: torch.Tensor,
    scale: torch.Tensor | None = None,
    *,
    granularity: str = "tensor",
    check_finite: bool = True,
    backend: str | None = None,
) -> FP8Weight:
    """Quantize ``x`` to FP8 E4M3 with FP32 scales (saturating at ±448, round to nearest even).

    Args:
        x: float32 / float16 / bfloat16 tensor of any shape for ``granularity="tensor"``; a 2-D
            (out_features, in_features) tensor for ``granularity="channel"``. Any strides (a
            prefix slice ``w[:n, :k]`` of a parent weight is read in place).
        scale: optional float32 decode scale: shape () or (1,) per tensor, (out_features,) or
            (out_features, 1) per channel. Default: ``amax(|x|) / 448`` over the tensor or each row
            (1 where that amax is 0). Must be finite and > 0.
        granularity: ``"tensor"`` (one scale) or ``"channel"`` (one scale per row of a 2-D x).
        check_finite: check that x has no NaN/Inf and the scale is finite and > 0 before
            quantizing (one extra read of x and a device sync); hot paths that know their inputs
            are finite pass False.
        backend: ``"auto" | "cuda" | "triton" | "torch"``; default from :func:`use_backend` or
            ``$STAR_ELASTIC_BACKEND``, else auto.

    Returns:
        :class:`FP8Weight` ``(data, scale)``: data float8_e4m3fn with x's shape (contiguous),
        scale float32 of shape () or (out_features,). ``data.float() * scale`` (broadcast per row)
        approximates x.

    Raises:
        TypeError / ValueError: bad dtype, shape, device or granularity; NaN/Inf in ``x``; a
            non-finite or non-positive ``scale``. Raised before any kernel runs.
        BackendUnavailableError: an explicitly requested backend cannot run this call.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x must be float32, float16 or bfloat16, got {x.dtype}")
    if granularity not in ("tensor", "channel"):
        raise ValueError(f"granularity must be 'tensor' or 'channel', got {granularity!r}")
    per_row = granularity == "channel"
    if per_row and x.dim() != 2:
        raise ValueError(f"x must be 2-D (out_features, in_features) for granularity='channel', "
                         f"got shape {tuple(x.shape)}")
    rows = _as_rows(x)
    if scale is not None:
        scale = _normalize_scale(scale, per_row, rows.shape[0], x, "scale")
    chosen = _backends.select_backend(QUANTIZE_SPEC, x.device, x.dtype, backend)
    if scale is None:
        scale = _fp8_scales_op(rows, per_row, chosen)
    data = _fp8_quantize_op(rows, scale, check_finite, chosen)
    return FP8Weight(data.reshape(x.shape), scale)


def dequantize_fp8(
    q: torch.Tensor,
    scale: torch.Tensor,
    *,
    dtype: torch.dtype = torch.bfloat16,
    backend: str | None = None,
) -> torch.Tensor:
    """Decode FP8 E4M3 codes: ``(float32(q) * scale).to(dtype)``.

    Args:
        q: float8_e4m3fn tensor: any shape with a per-tensor scale; 2-D (out_features, in_features)
            with a per-channel scale. Any strides.
        scale: float32, shape () or (1,) (per tensor), or (out_features,) / (out_features, 1)
            (per channel, q 2-D). Finite and > 0.
        dtype: output dtype: float32, float16 or bfloat16.
        backend: as in :func:`quantize_fp8`.

    Returns:
        Contiguous tensor of q's shape and ``dtype``.
    """
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a torch.Tensor, got {type(q).__name__}")
    if q.dtype != torch.float8_e4m3fn:
        raise TypeError(f"q must be float8_e4m3fn, got {q.dtype}")
    if dtype not in _FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    if not isinstance(scale, torch.Tensor):
        raise TypeError(f"scale must be a torch.Tensor, got {type(scale).__name__}")
    per_row = scale.numel() != 1  # a single value is a per-tensor scale, whatever q's rows
    if per_row and q.dim() != 2:
        raise ValueError(f"a per-channel scale needs a 2-D q (out_features, in_features), "
                         f"got shape {tuple(q.shape)}")
    rows = _as_rows(q)
    scale = _normalize_scale(scale, per_row, rows.shape[0], q, "scale")
    chosen = _backends.select_backend(DEQUANTIZE_SPEC, q.device, dtype, backend)
    return _fp8_dequantize_op(rows, scale, dtype, chosen).reshape(q.shape)
