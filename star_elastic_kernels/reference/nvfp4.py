"""Pure-PyTorch reference for NVFP4 (the specification of the kernels).

Format (DESIGN §3.3, quant-kernels.md §1): an (N, K) weight, K a multiple of 16, is stored as

* ``data``  uint8 (N, K/2): E2M1 codes, element 2i in the low nibble and 2i+1 in the high nibble;
* ``scale`` float8_e4m3fn (N, K/16): one positive block scale per 16 consecutive elements of a row;
* ``global_scale`` float32 (): the per-tensor decode scale, ``amax(|w|) / (6 * 448)`` by default.

Quantization, all in float32 with IEEE round-to-nearest-even (the same arithmetic as torchao 0.18's
``nvfp4_quantize`` two-level path, so codes and scales agree bit for bit):

1. ``block_scale = e4m3(clamp(block_amax / 6 / global_scale, 2^-6, 448))``;
2. ``reciprocal = (1 / global_scale) / float32(block_scale)``;
3. ``code = e2m1(clamp(x * reciprocal, -6, 6))``, round to nearest, ties to the even code; the sign
   bit of x is kept (a negative value that rounds to zero is code 8).

Dequantization: ``(e2m1_value * block_scale) * global_scale`` in float32 (the first product is
exact), then cast. Since every block scale depends only on its own 16 elements and the global scale,
``quantize(w, g)[:n, :k]`` equals ``quantize(w[:n, :k], g)`` for every k multiple of 16.
"""

from __future__ import annotations

import torch

E2M1_MAX = 6.0
E4M3_MAX = 448.0
E4M3_MIN_NORMAL = 2.0**-6  # torch.finfo(torch.float8_e4m3fn).tiny; smallest block scale
BLOCK = 16
GLOBAL_DIVISOR = E2M1_MAX * E4M3_MAX  # 2688

# E2M1 magnitudes in code order (codes 8..15 are the negatives).
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def global_scale_from_amax(amax: torch.Tensor) -> torch.Tensor:
    """Per-tensor decode scale ``amax / 2688`` (float32, shape ()); 1 for an all-zero tensor."""
    amax = amax.to(torch.float32).reshape(())
    return torch.where(amax > 0, amax / GLOBAL_DIVISOR, torch.ones_like(amax))


def e2m1_encode(y: torch.Tensor) -> torch.Tensor:
    """float32 y with |y| <= 6 -> uint8 E2M1 code (round to nearest, ties to the even code)."""
    magnitude = y.abs()
    # Decision points between neighbouring codes; at a tie the even code wins, hence < vs <=.
    code = torch.zeros_like(magnitude, dtype=torch.uint8)
    code = torch.where(magnitude > 0.25, 1, code)
    code = torch.where(magnitude >= 0.75, 2, code)
    code = torch.where(magnitude > 1.25, 3, code)
    code = torch.where(magnitude >= 1.75, 4, code)
    code = torch.where(magnitude > 2.5, 5, code)
    code = torch.where(magnitude >= 3.5, 6, code)
    code = torch.where(magnitude > 5.0, 7, code).to(torch.uint8)
    sign = torch.signbit(y).to(torch.uint8) << 3
    return code | sign


def e2m1_decode(code: torch.Tensor) -> torch.Tensor:
    """uint8 E2M1 code (low 4 bits) -> float32 value."""
    table = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=code.device)
    magnitude = table[(code & 0x7).long()]
    return torch.where((code & 0x8) != 0, -magnitude, magnitude)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """(..., K) uint8 codes -> (..., K/2) bytes, element 2i in the low nibble."""
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """(..., K/2) bytes -> (..., K) uint8 codes."""
    low = packed & 0xF
    high = packed >> 4
    return torch.stack([low, high], dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def nvfp4_quantize_ref(
    w: torch.Tensor, global_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """w (rows, K) float, K % 16 == 0; global_scale float32 () ->
    (data uint8 (rows, K/2), scale float8_e4m3fn (rows, K/16))."""
    rows, cols = w.shape
    g = global_scale.to(torch.float32).reshape(())
    blocks = w.to(torch.float32).reshape(rows, cols // BLOCK, BLOCK)
    block_amax = blocks.abs().amax(dim=-1) if cols else blocks.new_zeros(rows, 0)
    block_scale = (block_amax / E2M1_MAX / g).clamp(E4M3_MIN_NORMAL, E4M3_MAX)
    block_scale = block_scale.to(torch.float8_e4m3fn)
    reciprocal = (1.0 / g) / block_scale.to(torch.float32)
    scaled = (blocks * reciprocal.unsqueeze(-1)).clamp(-E2M1_MAX, E2M1_MAX)
    codes = e2m1_encode(scaled).reshape(rows, cols)
    return pack_nibbles(codes), block_scale


def nvfp4_dequantize_ref(
    data: torch.Tensor, scale: torch.Tensor, global_scale: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """data uint8 (rows, K/2), scale float8_e4m3fn (rows, K/16), global_scale float32 () ->
    (rows, K) ``dtype``."""
    rows, n_blocks = scale.shape
    values = e2m1_decode(unpack_nibbles(data)).reshape(rows, n_blocks, BLOCK)
    block_values = values * scale.to(torch.float32).unsqueeze(-1)  # exact: 2 x 4 significant bits
    return (block_values * global_scale.to(torch.float32)).reshape(rows, n_blocks * BLOCK).to(dtype)


def nvfp4_fake_quantize_ref(
    x: torch.Tensor, global_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (rows, K) -> (dequantize(quantize(x)) in x.dtype, mask bool (rows, K)).

    The mask marks the elements inside the clipping range ``|x * reciprocal| <= 6`` of their block;
    the straight-through gradient passes there and is zero elsewhere.
    """
    rows, cols = x.shape
    data, scale = nvfp4_quantize_ref(x, global_scale)
    g = global_scale.to(torch.float32).reshape(())
    reciprocal = (1.0 / g) / scale.to(torch.float32)
    scaled = x.to(torch.float32).reshape(rows, cols // BLOCK, BLOCK) * reciprocal.unsqueeze(-1)
    mask = (scaled.abs() <= E2M1_MAX).reshape(rows, cols)
    return nvfp4_dequantize_ref(data, scale, global_scale, x.dtype), mask


def nvfp4_linear_ref(
    x: torch.Tensor,
    data: torch.Tensor,
    scale: torch.Tensor,
    global_scale: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """Dequantize-then-matmul in float32: x (M, k) float, data (n, k/2), scale (n, k/16) ->
    (M, n) in x.dtype, ``x @ dequantize(w).T + bias``."""
    weight = nvfp4_dequantize_ref(data, scale, global_scale, torch.float32)
    out = x.to(torch.float32) @ weight.t()
    if bias is not None:
        out = out + bias.to(torch.float32)
    return out.to(x.dtype)
