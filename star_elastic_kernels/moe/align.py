"""Token alignment by expert for grouped GEMMs: ``moe_align`` and its result ``MoEAlignment``.

Order: the launcher, the registered op ``star_elastic::moe_align`` with its fake impl, the public
wrapper. Kernels: ``csrc/moe/align.cu`` (cuda; its CPU impl runs the four phases' per-thread
functions sequentially, for tests without a GPU), ``star_elastic_kernels/triton/moe_align.py``
(triton); the specification is ``star_elastic_kernels.reference.moe.moe_align`` (torch).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from star_elastic_kernels import _backends, _extension
from star_elastic_kernels.moe import _checks, _errors
from star_elastic_kernels.reference import moe as reference


SPEC = _backends.register(_backends.OpSpec(
    "moe_align", backends=("cuda", "triton", "torch"),
    cuda_ops=("_moe_align", "_moe_align_workspace_size"), triton_cpu_dtypes=_checks.ID_DTYPES))


class MoEAlignment(NamedTuple):
    """Result of :func:`moe_align` (all int32, on the ids' device).

    ``sorted_slots`` (T*k,): slot ids ``t*k + j`` grouped by expert, increasing within an expert;
    ``counts`` (E,): slots per expert; ``expert_offsets`` (E+1,): expert e owns
    ``sorted_slots[expert_offsets[e]:expert_offsets[e+1]]``; ``block_offsets`` (E+1,): cumulative
    ``ceil(counts / block_m)``, the row blocks a grouped GEMM launches for each expert (0 for an
    expert with no tokens).
    """

    sorted_slots: torch.Tensor
    counts: torch.Tensor
    expert_offsets: torch.Tensor
    block_offsets: torch.Tensor


def _align_cuda(ids: torch.Tensor, num_experts: int, block_m: int):
    """Backend "cuda" of moe_align (csrc/moe/align.cu: chunk histograms, per-expert scans,
    offsets, stable fill; no atomics; ids out of range are skipped and flagged on the device).
    Every output is sized from the shapes alone (no host read). On CPU tensors the private op
    runs the kernels' per-thread functions sequentially (its CPU impl; tests only)."""
    flat = ids.reshape(-1).contiguous()
    i32 = dict(dtype=torch.int32, device=ids.device)
    workspace = torch.empty(
        int(torch.ops.star_elastic._moe_align_workspace_size(flat.numel(), num_experts)), **i32)
    sorted_slots = torch.empty(flat.numel(), **i32)
    counts = torch.empty(num_experts, **i32)
    expert_offsets = torch.empty(num_experts + 1, **i32)
    block_offsets = torch.empty(num_experts + 1, **i32)
    torch.ops.star_elastic._moe_align(flat, workspace, sorted_slots, counts, expert_offsets,
                                      block_offsets, _errors.device_flag(ids), block_m)
    return sorted_slots, counts, expert_offsets, block_offsets


if _extension.has_op("_moe_align"):
    @torch.library.register_fake("star_elastic::_moe_align")
    def _(ids, workspace, sorted_slots, counts, expert_offsets, block_offsets, error_flag, block_m):
        experts = counts.numel()
        _checks.fake_expect(sorted_slots.numel() == ids.numel() and expert_offsets.numel() == experts + 1
                            and block_offsets.numel() == experts + 1, "_moe_align",
                            "sorted_slots (T*k,), counts (E,), expert_offsets and block_offsets (E+1,)")
        _checks.fake_expect(block_m >= 1, "_moe_align", "block_m >= 1")


def _triton_align():
    from star_elastic_kernels.triton import moe_align

    return moe_align


@torch.library.custom_op("star_elastic::moe_align", mutates_args=())
def _moe_align_op(
    ids: torch.Tensor, num_experts: int, block_m: int, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "cuda":
        return _align_cuda(ids, num_experts, block_m)
    if backend == "triton":
        return _triton_align().moe_align(ids.contiguous(), num_experts, block_m,
                                         _errors.device_flag(ids))
    return reference.moe_align(ids, num_experts, block_m)


@_moe_align_op.register_fake
def _(ids, num_experts, block_m, backend):
    i32 = dict(dtype=torch.int32)
    return (ids.new_empty(ids.numel(), **i32), ids.new_empty(num_experts, **i32),
            ids.new_empty(num_experts + 1, **i32), ids.new_empty(num_experts + 1, **i32))


def moe_align(ids: torch.Tensor, num_experts: int, block_m: int = 64, *, validate: bool = False,
              backend: str | None = None) -> MoEAlignment:
    """Group the (token, k) slots of a routing by expert, for grouped GEMMs.

    Args:
        ids: (T, k) int32/int64 expert ids in ``[0, num_experts)`` (from :func:`moe_route`). Slot
            ``t*k + j`` is token t's j-th expert.
        num_experts: E, the parent's expert count.
        block_m: rows per GEMM row block; an expert with c slots gets ``ceil(c / block_m)`` blocks,
            an expert with none (a masked one in particular) gets no block and so no work.
        validate: on device tensors, also check the ids' range on the host before launching (one
            sync). Without it the kernels check on the device: an id out of range is skipped (the
            tail of ``sorted_slots`` is then unspecified) and sets a flag that
            :func:`star_elastic_kernels.moe.raise_device_errors` reports. CPU tensors are always
            checked on the host.
        backend: as in :func:`moe_route`; ``"cuda"`` is csrc/moe/align.cu (deterministic, no
            atomics).

    Returns:
        :class:`MoEAlignment` ``(sorted_slots (T*k,), counts (E,), expert_offsets (E+1,),
        block_offsets (E+1,))``, int32; the slot order within an expert is increasing. Sizes
        depend on the shapes only (T*k slots: the unpadded layout, tighter than a per-expert
        padded one of T*k + E*(block_m - 1)), so the call needs no host read of device data.

    Raises:
        TypeError / ValueError: bad arguments; ids out of range (on a device: with ``validate``).
    """
    _checks.tensor(ids, "ids", 2, _checks.ID_DTYPES)
    _checks.integer(num_experts, "num_experts", 1)
    _checks.integer(block_m, "block_m", 1)
    if _checks.on_host_now(ids, validate):
        _checks.ids_in_range(ids, num_experts)
    chosen = _backends.select_backend(SPEC, ids.device, ids.dtype, backend)
    return MoEAlignment(*_moe_align_op(ids, num_experts, block_m, chosen))
