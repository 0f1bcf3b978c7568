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


# --------------------------------------------------------------------------------------------------
# The prepacked (Marlin-class) layout of csrc/quant/nvfp4_marlin.h, written out in plain torch: the
# specification the CUDA prepack and the kernel's fragment reader are tested against.

TILE_N = 64
TILE_K = 64
TILE_CODE_BYTES = TILE_N * TILE_K // 2  # 2048
TILE_SCALE_BYTES = TILE_N * TILE_K // BLOCK  # 256
# Bit positions, inside each 16-bit half of a code word, of slot p's magnitude (3 bits) and sign.
SLOT_MAGNITUDE_BIT = (0, 3, 6, 9)
SLOT_SIGN_BIT = (13, 12, 14, 15)


def _tile_element_places(device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every tile-local (row, col) of a 64 x 64 tile: (word index 0..511, magnitude bit, sign
    bit) of its code. Thread v = 32 * warp + 4 * g + c owns rows 16 * warp + 8 * t + g and the
    16-column block c; column 16c + 4s + 2r + half is word 2t + s // 2, slot 2 * (s % 2) + r."""
    row = torch.arange(TILE_N, device=device).view(-1, 1)
    col = torch.arange(TILE_K, device=device).view(1, -1)
    warp, t, g = row // 16, (row % 16) // 8, row % 8
    c, s, r, half = col // 16, (col % 16) // 4, (col % 4) // 2, col % 2
    thread = 32 * warp + 4 * g + c
    word = 4 * thread + 2 * t + s // 2
    slot = 2 * (s % 2) + r
    magnitude_bit = torch.tensor(SLOT_MAGNITUDE_BIT, device=device)[slot] + 16 * half
    sign_bit = torch.tensor(SLOT_SIGN_BIT, device=device)[slot] + 16 * half
    return word, magnitude_bit, sign_bit


def _tile_scale_places(device) -> torch.Tensor:
    """For every tile-local (row, block) of a tile: its scale byte index 2 * thread + t."""
    row = torch.arange(TILE_N, device=device).view(-1, 1)
    block = torch.arange(TILE_K // BLOCK, device=device).view(1, -1)
    warp, t, g = row // 16, (row % 16) // 8, row % 8
    return 2 * (32 * warp + 4 * g + block) + t


def encode_prepacked_scale(scale_bytes: torch.Tensor) -> torch.Tensor:
    """E4M3 bytes -> u = ((E + 22) << 3) | mmm for |scale| = 2^E (1 + mmm / 8); 0 for zero, 0xFF
    for NaN (uint8)."""
    magnitude = (scale_bytes & 0x7F).to(torch.int32)
    exponent, mantissa = magnitude >> 3, magnitude & 7
    # A subnormal (exponent 0) m * 2^-9 is normalised: its leading bit becomes the implicit one.
    lead = torch.where(mantissa >= 4, 2, torch.where(mantissa >= 2, 1, 0))
    sub_exponent, sub_mantissa = lead - 9, (mantissa << (3 - lead)) & 7
    e = torch.where(exponent > 0, exponent - 7, sub_exponent)
    m = torch.where(exponent > 0, mantissa, sub_mantissa)
    u = ((e + 22) << 3) | m
    u = torch.where(magnitude == 0, 0, u)
    return torch.where(magnitude == 0x7F, 0xFF, u).to(torch.uint8)


def decode_prepacked_scale(u: torch.Tensor) -> torch.Tensor:
    """The inverse of encode_prepacked_scale for non-negative scales: u -> E4M3 bytes (uint8)."""
    u = u.to(torch.int32)
    e, m = (u >> 3) - 22, u & 7
    normal = ((e + 7) << 3) | m
    subnormal = (8 + m) >> (-6 - e).clamp(min=0)  # (1.m) * 2^e = ((8 + m) >> (-6 - e)) * 2^-9
    byte = torch.where(e >= -6, normal, subnormal)
    byte = torch.where(u == 0, 0, byte)
    return torch.where(u == 0xFF, 0x7F, byte).to(torch.uint8)


def nvfp4_prepack_ref(data: torch.Tensor, scale: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard NVFP4 (data uint8 (N, K/2), scale float8_e4m3fn (N, K/16)) -> the prepacked tiles
    (codes uint8 (ceil(N/64), ceil(K/64), 2048), scales uint8 (ceil(N/64), ceil(K/64), 256)).

    A zero block scale zeroes its block's codes and a negative one moves its sign onto the codes,
    so the tiles hold the same values with non-negative scales."""
    n, blocks = scale.shape
    k = BLOCK * blocks
    tn, tk = -(-n // TILE_N), -(-k // TILE_K)
    raw_scale = scale.view(torch.uint8) if scale.dtype != torch.uint8 else scale
    codes = unpack_nibbles(data).to(torch.int64)  # (N, K)
    block_scale = raw_scale.to(torch.int64).repeat_interleave(BLOCK, dim=1)
    magnitude = block_scale & 0x7F
    flip = ((block_scale & 0x80) != 0) & (magnitude != 0x7F)
    codes = torch.where(flip, codes ^ 0x8, codes)
    codes = torch.where(magnitude == 0, 0, codes)  # +0 codes, whatever the zero's sign
    padded = codes.new_zeros(tn * TILE_N, tk * TILE_K)
    padded[:n, :k] = codes
    tiles = padded.view(tn, TILE_N, tk, TILE_K).permute(0, 2, 1, 3)  # (tn, tk, 64, 64)
    word, magnitude_bit, sign_bit = _tile_element_places(data.device)
    bits = ((tiles & 0x7) << magnitude_bit) | ((tiles >> 3) << sign_bit)
    words = torch.zeros(tn, tk, TILE_CODE_BYTES // 4, dtype=torch.int64, device=data.device)
    elements = TILE_N * TILE_K
    words.scatter_add_(2, word.reshape(1, 1, elements).expand(tn, tk, elements),
                       bits.reshape(tn, tk, elements))
    shifts = torch.tensor([0, 8, 16, 24], device=data.device)
    code_bytes = ((words.unsqueeze(-1) >> shifts) & 0xFF).reshape(tn, tk, TILE_CODE_BYTES)

    u = encode_prepacked_scale(raw_scale)
    padded_u = torch.zeros(tn * TILE_N, tk * (TILE_K // BLOCK), dtype=torch.uint8,
                           device=data.device)
    padded_u[:n, :blocks] = u
    u_tiles = padded_u.view(tn, TILE_N, tk, TILE_K // BLOCK).permute(0, 2, 1, 3)
    place = _tile_scale_places(data.device).reshape(1, 1, TILE_SCALE_BYTES)
    place = place.expand(tn, tk, TILE_SCALE_BYTES)
    scale_bytes = torch.zeros(tn, tk, TILE_SCALE_BYTES, dtype=torch.uint8, device=data.device)
    scale_bytes.scatter_(2, place, u_tiles.reshape(tn, tk, TILE_SCALE_BYTES))
    return code_bytes.to(torch.uint8), scale_bytes


def nvfp4_unprepack_ref(codes: torch.Tensor, scales: torch.Tensor, n: int, k: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Prepacked tiles (or a child view) -> the standard (data uint8 (n, k/2), scale
    float8_e4m3fn (n, k/16)) of the leading (n, k) weight, k % 16 == 0."""
    tn, tk = codes.shape[:2]
    shifts = torch.tensor([0, 8, 16, 24], device=codes.device)
    words = (codes.reshape(tn, tk, TILE_CODE_BYTES // 4, 4).to(torch.int64) << shifts).sum(-1)
    word, magnitude_bit, sign_bit = _tile_element_places(codes.device)
    elements = TILE_N * TILE_K
    picked = torch.gather(words, 2, word.reshape(1, 1, elements).expand(tn, tk, elements))
    picked = picked.reshape(tn, tk, TILE_N, TILE_K)
    element = ((picked >> magnitude_bit) & 0x7) | (((picked >> sign_bit) & 1) << 3)
    element = element.permute(0, 2, 1, 3).reshape(tn * TILE_N, tk * TILE_K)[:n, :k]
    place = _tile_scale_places(codes.device).reshape(1, 1, TILE_SCALE_BYTES)
    u = torch.gather(scales, 2, place.expand(tn, tk, TILE_SCALE_BYTES)).reshape(tn, tk, TILE_N, TILE_K // BLOCK)
    u = u.permute(0, 2, 1, 3).reshape(tn * TILE_N, tk * (TILE_K // BLOCK))[:n, : k // BLOCK]
    data = pack_nibbles(element.to(torch.uint8))
    return data, decode_prepacked_scale(u).view(torch.float8_e4m3fn)
