"""Value checks on the device: the MoE kernels never make the host wait for device data.

A bad value the host cannot see without a sync (an expert id out of range, an expert mask with
fewer experts than top_k, grouped-GEMM offsets that decrease) is caught by the kernel that reads
it: the kernel handles it harmlessly (skips the id, never writes out of bounds) and ORs a bit into
one int32 flag per device. The flag is read only when asked — :func:`raise_device_errors` (one
sync), or ``validate=True`` on an op, which checks the values on the host before launching. CPU
tensors are always checked on the host before anything runs (their values need no device sync).

The bits are those of ``csrc/moe/error_flags.h``; the Triton kernels and the grouped GEMM's
device-side offset check set the same ones.
"""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensor

IDS_OUT_OF_RANGE = 1
TOO_FEW_ACTIVE_EXPERTS = 2
BAD_GROUP_ENDS = 4

_MESSAGES = {
    IDS_OUT_OF_RANGE: "expert ids outside [0, num_experts) were passed to moe_align / moe_ffn "
                      "(those slots were skipped)",
    TOO_FEW_ACTIVE_EXPERTS: "moe_route got an expert_mask with fewer active experts than top_k "
                            "(the missing picks got expert 0 with weight 0)",
    BAD_GROUP_ENDS: "grouped_gemm got offsets that decrease, are negative or do not end at M "
                    "(they were clamped into [0, M])",
}

_flags: dict[torch.device, torch.Tensor] = {}


def device_flag(like: torch.Tensor) -> torch.Tensor:
    """The (1,) int32 error flag of ``like``'s device (allocated once per device, zeroed).

    While tracing with fake tensors a fresh fake flag is returned (uninitialised: a fake has no
    values, and the real flag costs no launch after its first use), so no fake tensor is ever kept
    for a later real call.
    """
    if isinstance(like, FakeTensor):
        return like.new_empty(1, dtype=torch.int32)
    flag = _flags.get(like.device)
    if flag is None:
        flag = _flags[like.device] = torch.zeros(1, dtype=torch.int32, device=like.device)
    return flag


def describe(bits: int) -> list[str]:
    """The messages of the error bits set in ``bits``."""
    return [message for bit, message in _MESSAGES.items() if bits & bit]


def raise_device_errors(device: torch.device | str | None = None) -> None:
    """Raise ``ValueError`` if an MoE kernel flagged a bad value since the last call, and reset.

    Args:
        device: the device whose flag to read (one host sync); default every device that has one.

    Raises:
        ValueError: naming each check that failed.
    """
    if device is None:
        devices = list(_flags)
    else:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        devices = [device]
    problems = []
    for dev in devices:
        flag = _flags.get(dev)
        if flag is None:
            continue
        bits = int(flag.item())
        if bits:
            flag.zero_()
            problems += [f"{dev}: {message}" for message in describe(bits)]
    if problems:
        raise ValueError("MoE device-side checks failed: " + "; ".join(problems))
