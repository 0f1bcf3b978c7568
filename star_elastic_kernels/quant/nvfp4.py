"""NVFP4 weights: the :class:`NVFP4Weight` container, its :class:`NVFP4Prepacked` inference
layout, quantize, prepack and dequantize.

Order of this file: the containers, backend launchers, the registered ops (``star_elastic::nvfp4_*``)
with their fake implementations, then the public wrappers :func:`quantize_nvfp4`,
:func:`prepack_nvfp4` and :func:`dequantize_nvfp4`. Kernels: ``star_elastic_kernels/triton/
nvfp4_quant.py`` (triton), ``csrc/quant/nvfp4_marlin.cu`` (the CUDA prepack); the specification:
``star_elastic_kernels/reference/nvfp4.py`` (torch, including the prepacked layout).

Format (DESIGN §3.3): data uint8 (N, K/2), element 2i in the low nibble; E4M3 block scales
(N, K/16) plainly row-major, one per 16 elements along K; an FP32 per-tensor decode scale
``amax / (6 * 448)`` shared by a parent weight and all its slices. Codes and block scales agree bit
for bit with torchao 0.18 ``NVFP4Tensor.to_nvfp4(w, per_tensor_scale=global_scale)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from star_elastic_kernels import _backends
from star_elastic_kernels.reference import nvfp4 as reference

BLOCK = reference.BLOCK
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

QUANTIZE_SPEC = _backends.register(
    _backends.OpSpec("quantize_nvfp4", backends=("triton", "torch"))
)
PREPACK_SPEC = _backends.register(
    _backends.OpSpec("prepack_nvfp4", backends=("cuda", "torch"), cuda_ops=("_nvfp4_prepack",))
)
DEQUANTIZE_SPEC = _backends.register(
    _backends.OpSpec("dequantize_nvfp4", backends=("triton", "torch"))
)


class NVFP4Weight(NamedTuple):
    """An NVFP4-quantized (out_features, in_features) weight, or a zero-copy slice of one.

    Fields:
        data: uint8 (out_features, in_features / 2); element 2i in the low nibble.
        scale: float8_e4m3fn (out_features, in_features / 16); one block scale per 16 elements.
        global_scale: float32 (); the per-tensor decode scale, shared with the parent.

    ``dequantize`` approximates the original weight as ``e2m1 * scale * global_scale``.
    """

    data: torch.Tensor
    scale: torch.Tensor
    global_scale: torch.Tensor

    @property
    def out_features(self) -> int:
        return self.data.shape[0]

    @property
    def in_features(self) -> int:
        return self.scale.shape[1] * BLOCK

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.out_features, self.in_features))

    def slice(self, out_features: int | None = None, in_features: int | None = None
              ) -> "NVFP4Weight":
        """The leading (out_features, in_features) sub-weight as views of this one (no copy).

        in_features must be a multiple of 16 (a block never straddles the slice boundary); the
        result equals ``quantize_nvfp4(w[:out_features, :in_features], global_scale)`` bit for bit.
        """
        n, k = _check_width(self, out_features, in_features)
        return NVFP4Weight(self.data[:n, : k // 2], self.scale[:n, : k // BLOCK],
                           self.global_scale)

    def dequantize(self, dtype: torch.dtype = torch.bfloat16, *, backend: str | None = None
                   ) -> torch.Tensor:
        """Decode to a contiguous (out_features, in_features) tensor of ``dtype``."""
        return dequantize_nvfp4(self, dtype=dtype, backend=backend)

    def prepack(self, *, backend: str | None = None) -> "NVFP4Prepacked":
        """This weight in the layout of the Marlin-class CUDA kernel (see :func:`prepack_nvfp4`)."""
        return prepack_nvfp4(self, backend=backend)


class NVFP4Prepacked(NamedTuple):
    """An NVFP4 weight prepacked for the Marlin-class W4A16 kernel, or a zero-copy child of one.

    The standard :class:`NVFP4Weight` stays the checkpoint format; this is an inference-time
    copy in the order in which the kernel's threads feed their MMA fragments
    (``csrc/quant/nvfp4_marlin.h``), cut into 64 x 64 tiles so that every nested child is a view.

    Fields:
        codes: uint8 (ceil(N/64), ceil(K/64), 2048): each tile's E2M1 codes.
        scales: uint8 (ceil(N/64), ceil(K/64), 256): each tile's block scales, re-encoded.
        global_scale: float32 (); the parent's per-tensor decode scale.
        out_features / in_features: the active (N, K); K % 16 == 0.

    ``dequantize`` gives the same values as the standard weight's.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    global_scale: torch.Tensor
    out_features: int
    in_features: int

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.out_features, self.in_features))

    def slice(self, out_features: int | None = None, in_features: int | None = None
              ) -> "NVFP4Prepacked":
        """The leading (out_features, in_features) child: views of the tiles it touches (no copy).

        in_features must be a multiple of 16; widths on the 64 grid touch only their own tiles,
        others also read the rest of their last tile (multiplied by zeros by the kernel)."""
        n, k = _check_width(self, out_features, in_features)
        tn, tk = -(-n // reference.TILE_N), -(-k // reference.TILE_K)
        return NVFP4Prepacked(self.codes[:tn, :tk], self.scales[:tn, :tk], self.global_scale, n, k)

    def unpack(self) -> NVFP4Weight:
        """The standard-layout :class:`NVFP4Weight` of the active weight (a copy)."""
        data, scale = reference.nvfp4_unprepack_ref(self.codes, self.scales, self.out_features,
                                                    self.in_features)
        return NVFP4Weight(data, scale, self.global_scale)

    def dequantize(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        """Decode to a contiguous (out_features, in_features) tensor of ``dtype``."""
        return self.unpack().dequantize(dtype)


def _check_width(w, out_features, in_features) -> tuple[int, int]:
    n = w.out_features if out_features is None else out_features
    k = w.in_features if in_features is None else in_features
    for name, value, limit in (("out_features", n, w.out_features),
                               ("in_features", k, w.in_features)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if not 0 <= value <= limit:
            raise ValueError(f"{name} must be in [0, {limit}] (the parent's width), got {value}")
    if k % BLOCK:
        raise ValueError(f"in_features must be a multiple of {BLOCK} for NVFP4 (a 16-element "
                         f"scale block may not straddle the slice), got {k}")
    return n, k


# --------------------------------------------------------------------------------------------------
# Launchers.


def _triton():
    from star_elastic_kernels.triton import nvfp4_quant

    return nvfp4_quant


def _check_values(w: torch.Tensor, global_scale: torch.Tensor) -> None:
    """Raise on NaN/Inf in ``w`` or an unusable global scale (one device sync)."""
    finite = torch.isfinite(w).all() if w.numel() else torch.ones((), dtype=torch.bool)
    g = global_scale.reshape(())
    flags = torch.stack([finite.to(g.device), torch.isfinite(g), g > 0,
                         torch.isfinite(1.0 / g)]).tolist()
    if not flags[0]:
        raise ValueError("w contains NaN or Inf; NVFP4 cannot represent them")
    if not flags[1]:
        raise ValueError("global_scale must be finite, got NaN or Inf")
    if not flags[2]:
        raise ValueError("global_scale must be > 0")
    if not flags[3]:
        raise ValueError("global_scale is too small: its reciprocal overflows float32 (a weight "
                         "whose amax is below ~1e-35 cannot be quantized to NVFP4)")


def _prepack_cuda(data: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n, blocks = scale.shape
    tn, tk = -(-n // reference.TILE_N), -(-(BLOCK * blocks) // reference.TILE_K)
    codes = torch.empty((tn, tk, reference.TILE_CODE_BYTES), dtype=torch.uint8, device=data.device)
    scales = torch.empty((tn, tk, reference.TILE_SCALE_BYTES), dtype=torch.uint8,
                         device=data.device)
    torch.ops.star_elastic._nvfp4_prepack(data, scale.view(torch.uint8), codes, scales)
    return codes, scales


# --------------------------------------------------------------------------------------------------
# Registered ops.


@torch.library.custom_op("star_elastic::nvfp4_prepack", mutates_args=())
def _nvfp4_prepack_op(data: torch.Tensor, scale: torch.Tensor, backend: str
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "cuda":
        return _prepack_cuda(data, scale)
    return reference.nvfp4_prepack_ref(data, scale)


@_nvfp4_prepack_op.register_fake
def _(data, scale, backend):
    n, blocks = scale.shape
    tn, tk = -(-n // reference.TILE_N), -(-(BLOCK * blocks) // reference.TILE_K)
    return (data.new_empty((tn, tk, reference.TILE_CODE_BYTES)),
            data.new_empty((tn, tk, reference.TILE_SCALE_BYTES)))


@torch.library.custom_op("star_elastic::nvfp4_quantize", mutates_args=())
def _nvfp4_quantize_op(
    w: torch.Tensor, global_scale: torch.Tensor, check_finite: bool, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if check_finite:
        _check_values(w, global_scale)
    if backend == "triton":
        return _triton().nvfp4_quantize(w, global_scale)
    data, scale = reference.nvfp4_quantize_ref(w, global_scale)
    return data.contiguous(), scale.contiguous()


@_nvfp4_quantize_op.register_fake
def _(w, global_scale, check_finite, backend):
    rows, cols = w.shape
    return (w.new_empty((rows, cols // 2), dtype=torch.uint8),
            w.new_empty((rows, cols // BLOCK), dtype=torch.float8_e4m3fn))


@torch.library.custom_op("star_elastic::nvfp4_dequantize", mutates_args=())
def _nvfp4_dequantize_op(
    data: torch.Tensor, scale: torch.Tensor, global_scale: torch.Tensor, dtype: torch.dtype,
    backend: str
) -> torch.Tensor:
    if backend == "triton":
        return _triton().nvfp4_dequantize(data, scale, global_scale, dtype)
    return reference.nvfp4_dequantize_ref(data, scale, global_scale, dtype).contiguous()


@_nvfp4_dequantize_op.register_fake
def _(data, scale, global_scale, dtype, backend):
    return data.new_empty((scale.shape[0], scale.shape[1] * BLOCK), dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Public wrappers: all argument checks happen here, before any kernel runs.


def normalize_global_scale(global_scale, like: torch.Tensor, name: str = "global_scale"
                           ) -> torch.Tensor:
    """Check a per-tensor float32 scale (shape () or (1,), on ``like``'s device); return it as ()."""
    if not isinstance(global_scale, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(global_scale).__name__}")
    if global_scale.dtype != torch.float32:
        raise TypeError(f"{name} must be float32, got {global_scale.dtype}")
    if global_scale.numel() != 1:
        raise ValueError(f"{name} must hold one value (shape () or (1,)), got shape "
                         f"{tuple(global_scale.shape)}")
    if global_scale.device != like.device:
        raise ValueError(f"{name} is on {global_scale.device} but the data is on {like.device}")
    return global_scale.reshape(())


def nvfp4_global_scale(w: torch.Tensor) -> torch.Tensor:
    """The default per-tensor decode scale of ``w``: ``amax(|w|) / 2688`` (1 if w is all zero)."""
    amax = w.detach().abs().amax() if w.numel() else w.new_zeros(())
    return reference.global_scale_from_amax(amax)


def check_nvfp4_weight(w, name: str = "w") -> None:
    """Check that ``w`` is a well-formed :class:`NVFP4Weight` (types, dtypes, shapes, devices)."""
    if not isinstance(w, NVFP4Weight):
        raise TypeError(f"{name} must be an NVFP4Weight (from quantize_nvfp4), got "
                        f"{type(w).__name__}")
    data, scale, g = w
    if data.dtype != torch.uint8:
        raise TypeError(f"{name}.data must be uint8, got {data.dtype}")
    if scale.dtype != torch.float8_e4m3fn:
        raise TypeError(f"{name}.scale must be float8_e4m3fn, got {scale.dtype}")
    if data.dim() != 2 or scale.dim() != 2 or data.shape[0] != scale.shape[0] \
            or data.shape[1] != scale.shape[1] * (BLOCK // 2):
        raise ValueError(f"{name}.data (N, K/2) and {name}.scale (N, K/16) disagree: "
                         f"{tuple(data.shape)} vs {tuple(scale.shape)}")
    if data.shape[1] and data.stride(1) != 1:
        raise ValueError(f"{name}.data must have unit stride along K")
    if scale.device != data.device:
        raise ValueError(f"{name}.scale is on {scale.device} but {name}.data is on {data.device}")
    normalize_global_scale(g, data, f"{name}.global_scale")


def check_nvfp4_prepacked(w, name: str = "w") -> None:
    """Check that ``w`` is a well-formed :class:`NVFP4Prepacked` (types, tile shapes, devices)."""
    if not isinstance(w, NVFP4Prepacked):
        raise TypeError(f"{name} must be an NVFP4Prepacked (from NVFP4Weight.prepack()), got "
                        f"{type(w).__name__}")
    for field, tile_bytes in (("codes", reference.TILE_CODE_BYTES),
                              ("scales", reference.TILE_SCALE_BYTES)):
        t = getattr(w, field)
        if t.dtype != torch.uint8 or t.dim() != 3 or t.shape[2] != tile_bytes or t.stride(2) != 1:
            raise ValueError(f"{name}.{field} must be uint8 (tiles_n, tiles_k, {tile_bytes}) with "
                             f"unit innermost stride, got {t.dtype} {tuple(t.shape)}")
    if w.codes.shape[:2] != w.scales.shape[:2] or w.scales.device != w.codes.device:
        raise ValueError(f"{name}.codes and {name}.scales must have the same tiles and device")
    n, k = w.out_features, w.in_features
    if k % BLOCK or not (0 <= n <= reference.TILE_N * w.codes.shape[0]) \
            or not (0 <= k <= reference.TILE_K * w.codes.shape[1]):
        raise ValueError(f"{name} ({n}, {k}) must fit its {tuple(w.codes.shape[:2])} tiles with "
                         f"in_features % {BLOCK} == 0")
    normalize_global_scale(w.global_scale, w.codes, f"{name}.global_scale")


def quantize_nvfp4(
    w: torch.Tensor,
    global_scale: torch.Tensor | None = None,
    *,
    check_finite: bool = True,
    backend: str | None = None,
) -> NVFP4Weight:
    """Quantize a weight to NVFP4 (E2M1 values, E4M3 scale per 16 elements, FP32 global scale).

    Args:
        w: float32 / float16 / bfloat16 (out_features, in_features), in_features % 16 == 0. Any
            strides (a slice ``parent[:n, :k]`` is read in place).
        global_scale: optional float32 per-tensor decode scale, shape () or (1,); default
            ``amax(|w|) / (6 * 448)`` (1 for an all-zero w). To quantize a child exactly like its
            parent, pass the parent's ``global_scale``. Finite, > 0, with a finite reciprocal.
        check_finite: check w for NaN/Inf and the global scale before quantizing (one extra read
            of w and a device sync).
        backend: ``"auto" | "triton" | "torch"`` (see :func:`use_backend`).

    Returns:
        :class:`NVFP4Weight` ``(data, scale, global_scale)``: data uint8 (out_features,
        in_features / 2), scale float8_e4m3fn (out_features, in_features / 16), global_scale
        float32 (). Bit-identical to torchao 0.18 ``NVFP4Tensor.to_nvfp4(w,
        per_tensor_scale=global_scale)`` (qdata and scale).

    Raises:
        TypeError / ValueError: bad dtype or shape, in_features not a multiple of 16, NaN/Inf in
            w, a bad global_scale. Raised before any kernel runs.
    """
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w must be a torch.Tensor, got {type(w).__name__}")
    if w.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"w must be float32, float16 or bfloat16, got {w.dtype}")
    if w.dim() != 2:
        raise ValueError(f"w must be 2-D (out_features, in_features), got shape {tuple(w.shape)}")
    if w.shape[1] % BLOCK:
        raise ValueError(f"w's in_features must be a multiple of {BLOCK} for NVFP4, got "
                         f"{w.shape[1]}")
    if global_scale is None:
        global_scale = nvfp4_global_scale(w)
    else:
        global_scale = normalize_global_scale(global_scale, w)
    chosen = _backends.select_backend(QUANTIZE_SPEC, w.device, w.dtype, backend)
    data, scale = _nvfp4_quantize_op(w, global_scale, check_finite, chosen)
    return NVFP4Weight(data, scale, global_scale)


def prepack_nvfp4(w: NVFP4Weight, *, backend: str | None = None) -> NVFP4Prepacked:
    """Repack an :class:`NVFP4Weight` (N, K) for the Marlin-class CUDA kernel (one-time, offline).

    Args:
        w: a standard-layout weight (or a slice of one); K % 16 == 0.
        backend: ``"auto" | "cuda" | "torch"`` (cuda: the CUDA prepack kernel on CUDA tensors;
            torch: the reference layout code, any device; both give the same bytes).

    Returns:
        :class:`NVFP4Prepacked` with codes uint8 (ceil(N/64), ceil(K/64), 2048) and scales uint8
        (ceil(N/64), ceil(K/64), 256), zero-padded; ``.slice(n, k)`` of it is the prepacked child
        ``w.slice(n, k).prepack()`` as a view.
    """
    check_nvfp4_weight(w)
    chosen = _backends.select_backend(PREPACK_SPEC, w.data.device, None, backend)
    codes, scales = _nvfp4_prepack_op(w.data, w.scale, chosen)
    return NVFP4Prepacked(codes, scales, w.global_scale.reshape(()), w.out_features,
                          w.in_features)


def dequantize_nvfp4(
    w: NVFP4Weight, *, dtype: torch.dtype = torch.bfloat16, backend: str | None = None
) -> torch.Tensor:
    """Decode an :class:`NVFP4Weight` (or a slice of one) to a contiguous (N, K) ``dtype`` tensor.

    Each element is ``(e2m1 * float32(scale)) * global_scale`` computed in float32, then cast.
    """
    check_nvfp4_weight(w)
    if dtype not in _FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    chosen = _backends.select_backend(DEQUANTIZE_SPEC, w.data.device, dtype, backend)
    return _nvfp4_dequantize_op(w.data, w.scale, w.global_scale.reshape(()), dtype, chosen)
