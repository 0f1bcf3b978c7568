"""Validity checks of device data that the SSM ops make without reading it on the host.

A decode step or a packed prefill must not stall on a host read (nor break a CUDA graph), so
values on a GPU (cache slots, packed boundaries) are checked where they are: the kernels skip what
they cannot use (a cache slot outside the cache) and set a bit in a per-device int32 error word;
:func:`check_device_errors` reads the word (one sync, when the caller chooses), clears it and
raises. CPU tensors are checked on the host before anything runs (reading them costs nothing).
"""

from __future__ import annotations

import torch

# bits of the error word
SLOT_OUT_OF_RANGE = 1  # a state_indices value >= the cache's slot count (the row was skipped)
BAD_CU_SEQLENS = 2  # cu_seqlens did not start at 0, end at l and never decrease
SCAN_CHAIN_STALLED = 4  # the CUDA ssd_scan's state chain waited > 1 s (a bug, not an input)

_MESSAGES = {
    SLOT_OUT_OF_RANGE: "a state_indices value was >= the cache's slot count (those rows were "
                       "skipped: their state was not updated and their output is zero)",
    BAD_CU_SEQLENS: "cu_seqlens did not start at 0, end at the sequence length and never decrease "
                    "(the packed ops ran on a clamped, meaningless split)",
    SCAN_CHAIN_STALLED: "the CUDA ssd_scan's state chain waited over a second for the state "
                        "entering a chunk and went on without it (its outputs are wrong; this is "
                        "a bug in star-elastic-kernels, please report it)",
}

_words: dict[torch.device, torch.Tensor] = {}


def is_fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


def word_for(like: torch.Tensor) -> torch.Tensor:
    """The (1,) int32 error word of ``like``'s device, for a kernel to OR bits into. Under
    FakeTensorMode (shape propagation, no data) a fresh fake word stands in."""
    if is_fake(like):
        return like.new_zeros(1, dtype=torch.int32)
    word = _words.get(like.device)
    if word is None:
        word = _words[like.device] = torch.zeros(1, dtype=torch.int32, device=like.device)
    return word


def record(like: torch.Tensor, broken: torch.Tensor, bit: int) -> None:
    """OR ``bit`` into the error word where the 0-d bool tensor ``broken`` is true (on the
    device, no host read)."""
    word = word_for(like)
    word.bitwise_or_(broken.to(torch.int32) * bit)


def check_device_errors(device: torch.device | str | None = None) -> None:
    """Raise ``ValueError`` for every invalid value the SSM ops met on ``device`` (default: every
    device used so far) since the last check, and clear the record.

    The ops never read cache slots (``state_indices``) or packed boundaries (``cu_seqlens``) of
    GPU tensors on the host: a slot >= the cache's slot count is skipped by the kernels (the row's
    state is untouched, its output zero) and recorded; invalid boundaries are clamped and recorded.
    Call this where a sync is acceptable (after a generation step, in tests) to learn about them.
    Costs one device-to-host copy per device.
    """
    wanted = None if device is None else torch.device(device)
    problems = []
    for dev, word in _words.items():
        if wanted is not None and (dev.type != wanted.type or
                                   (wanted.index is not None and dev.index != wanted.index)):
            continue
        bits = int(word.item())
        word.zero_()
        problems += [f"{dev}: {message}" for bit, message in _MESSAGES.items() if bits & bit]
    if problems:
        raise ValueError("invalid SSM op inputs found on the device: " + "; ".join(problems))
