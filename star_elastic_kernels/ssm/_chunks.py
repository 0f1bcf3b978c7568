"""The chunk layout of a chunked SSD scan, shared by the Triton and CUDA forwards and the Triton
backward: built on the device from shapes and (packed) boundaries, never read back to the host.

The number of chunks must be known on the host (it sizes grids and workspaces), so packed inputs
get a static upper bound (``max_chunks``); the chunks beyond the real count are padding, with
length 0, and every kernel skips them.
"""

from __future__ import annotations

import torch

from star_elastic_kernels.ssm import _device_checks


def max_chunks(batch: int, seqlen: int, num_seqs: int | None, chunk_size: int) -> int:
    """Chunks of the table: exact for batched rows; for ``num_seqs`` packed sequences of ``seqlen``
    tokens in all, the most any split can need (each sequence adds less than one partial chunk,
    and no chunk is empty)."""
    if num_seqs is None:
        return batch * -(-seqlen // chunk_size)
    return min(seqlen, (seqlen + num_seqs * (chunk_size - 1)) // chunk_size)


def packed_bounds(cu_seqlens: torch.Tensor, seqlen: int) -> torch.Tensor:
    """``cu_seqlens`` as int64 boundaries the kernels can trust (0 first, ``seqlen`` last,
    non-decreasing), made so on the device. Invalid boundaries set the device error flag
    (:func:`star_elastic_kernels.ssm.check_device_errors`) and then give a meaningless but
    in-bounds split instead of out-of-bounds reads and writes."""
    raw = cu_seqlens.long()
    broken = (raw[0] != 0) | (raw[-1] != seqlen) | (raw[1:] < raw[:-1]).any()
    _device_checks.record(raw, broken, _device_checks.BAD_CU_SEQLENS)
    inner = raw[1:-1].clamp(0, seqlen)
    ends = raw.new_full((1,), seqlen)
    bounds = torch.cat([raw.new_zeros(1), inner, ends])
    return bounds.cummax(0).values


def chunk_tables(batch: int, seqlen: int, bounds: torch.Tensor | None, chunk_size: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(chunk table (3, chunks) int64: batch row, first token, length (0 = padding); sequence
    table (2, S) int64: first chunk, chunk count) for ``batch`` rows of ``seqlen`` tokens, or for
    the packed sequences of ``bounds`` (from :func:`packed_bounds`; then batch is 1). Chunks never
    straddle a sequence; ``chunks == max_chunks(...)``."""
    q = chunk_size
    i64 = dict(dtype=torch.int64, device=device)
    if bounds is None:
        per_row = -(-seqlen // q)
        chunk = torch.arange(batch * per_row, **i64)
        rows = chunk // per_row if per_row else chunk
        token0 = (chunk % per_row) * q if per_row else chunk
        lengths = (seqlen - token0).clamp(max=q)
        seq_table = torch.stack([torch.arange(batch, **i64) * per_row,
                                 torch.full((batch,), per_row, **i64)])
        return torch.stack([rows, token0, lengths]), seq_table
    num_seqs = bounds.shape[0] - 1
    lengths = bounds[1:] - bounds[:-1]
    counts = (lengths + q - 1) // q
    ends = counts.cumsum(0)
    firsts = ends - counts
    chunk = torch.arange(max_chunks(1, seqlen, num_seqs, q), **i64)
    seq = torch.searchsorted(ends, chunk, right=True)  # == num_seqs for a padding chunk
    real = seq < num_seqs
    seq = seq.clamp(max=max(num_seqs - 1, 0))
    token0 = bounds[seq] + (chunk - firsts[seq]) * q
    chunk_lengths = torch.where(real, (bounds[seq + 1] - token0).clamp(0, q), 0)
    token0 = torch.where(real, token0, 0)
    return (torch.stack([torch.zeros_like(chunk), token0, chunk_lengths]),
            torch.stack([firsts, counts]))
