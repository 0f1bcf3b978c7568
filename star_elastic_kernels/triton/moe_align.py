"""Triton token alignment for grouped MoE GEMMs: count the slots of each expert, then write each
expert's slots in increasing order (stable, deterministic). One program per expert scans the ids,
so an expert with no tokens writes nothing; the downstream GEMMs get zero row blocks for it.
Ids outside [0, E) belong to no expert (skipped) and set bit 1 of the device error flag
(star_elastic_kernels/moe/_errors.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 1024


@triton.jit
def _count_kernel(ids_ptr, counts_ptr, error_ptr, num_slots, num_experts, BLOCK: tl.constexpr):
    expert = tl.program_id(0)
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    for start in range(0, num_slots, BLOCK):
        offsets = start + tl.arange(0, BLOCK).to(tl.int64)
        valid = offsets < num_slots
        values = tl.load(ids_ptr + offsets, mask=valid, other=-1)
        acc += (values == expert).to(tl.int32)
        if expert == 0:  # one program checks the range
            bad = valid & ((values < 0) | (values >= num_experts))
            tl.atomic_or(error_ptr + 0 * offsets, 1, mask=bad)
    tl.store(counts_ptr + expert, tl.sum(acc, axis=0))


@triton.jit
def _fill_kernel(ids_ptr, expert_offsets_ptr, sorted_ptr, num_slots, BLOCK: tl.constexpr):
    expert = tl.program_id(0)
    base = tl.load(expert_offsets_ptr + expert).to(tl.int64)
    end = tl.load(expert_offsets_ptr + expert + 1).to(tl.int64)
    if base < end:
        for start in range(0, num_slots, BLOCK):
            offsets = start + tl.arange(0, BLOCK).to(tl.int64)
            values = tl.load(ids_ptr + offsets, mask=offsets < num_slots, other=-1)
            hit = (values == expert).to(tl.int32)
            position = tl.cumsum(hit, axis=0) - 1
            tl.store(sorted_ptr + base + position, offsets.to(tl.int32), mask=hit != 0)
            base += tl.sum(hit, axis=0).to(tl.int64)


def block_offsets_from_counts(counts: torch.Tensor, block_m: int) -> torch.Tensor:
    """(E,) counts -> (E+1,) int32 cumulative row-block counts (no device sync)."""
    blocks = torch.div(counts + (block_m - 1), block_m, rounding_mode="floor")
    return torch.nn.functional.pad(blocks.cumsum(0), (1, 0)).to(torch.int32)


def moe_align(ids: torch.Tensor, num_experts: int, block_m: int, error_flag: torch.Tensor):
    """ids (any shape, contiguous int) -> (sorted_slots, counts, expert_offsets, block_offsets);
    error_flag: the (1,) int32 device flag."""
    flat = ids.reshape(-1)
    num_slots = flat.numel()
    counts = torch.zeros(num_experts, dtype=torch.int32, device=ids.device)
    sorted_slots = torch.empty(num_slots, dtype=torch.int32, device=ids.device)
    if num_slots:
        _count_kernel[(num_experts,)](flat, counts, error_flag, num_slots, num_experts,
                                      BLOCK=_BLOCK)
    expert_offsets = torch.nn.functional.pad(counts.cumsum(0), (1, 0)).to(torch.int32)
    if num_slots:
        _fill_kernel[(num_experts,)](flat, expert_offsets, sorted_slots, num_slots, BLOCK=_BLOCK)
    return sorted_slots, counts, expert_offsets, block_offsets_from_counts(counts, block_m)
