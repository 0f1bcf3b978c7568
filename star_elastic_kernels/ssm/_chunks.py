"""The chunk layout of a chunked SSD scan, shared by the Triton and CUDA forwards."""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=64)
def chunk_tables(batch: int, seqlen: int, seq_bounds: tuple[int, ...] | None, chunk_size: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(chunk table (3, chunks) int64: batch row, first token, length; sequence table (2, S) int64:
    first chunk, chunk count) for batched rows or for packed sequences with boundaries
    ``seq_bounds``. Chunks never straddle a sequence. Cached: a decode/prefill loop reuses the same
    few shapes, and the tables are never written."""
    rows, starts, lengths, first_chunks, counts = [], [], [], [], []
    sequences = ([(i, 0, seqlen) for i in range(batch)] if seq_bounds is None else
                 [(0, s, e) for s, e in zip(seq_bounds[:-1], seq_bounds[1:])])
    for row, begin, end in sequences:
        first_chunks.append(len(rows))
        for token in range(begin, end, chunk_size):
            rows.append(row)
            starts.append(token)
            lengths.append(min(chunk_size, end - token))
        counts.append(len(rows) - first_chunks[-1])
    chunk_table = torch.tensor([rows, starts, lengths], dtype=torch.int64).reshape(3, -1)
    seq_table = torch.tensor([first_chunks, counts], dtype=torch.int64).reshape(2, -1)
    return chunk_table.to(device), seq_table.to(device)
