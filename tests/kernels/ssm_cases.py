"""Shared inputs and independent oracles for the SSM kernel tests (tests/kernels/test_ssm_*.py).

The oracles here are written separately from ``star_elastic_kernels.reference.ssm``: a float64
per-head loop of the recurrence that indexes the parent parameters itself, and mamba-ssm's own
pure-PyTorch references (imported with a stub for its missing CUDA extension).
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

INTERPRETER_DTYPES = (torch.float32, torch.float16)


def skip_unsupported(backend: str, device: str, dtype: torch.dtype) -> None:
    if backend == "triton" and device == "cpu" and dtype not in INTERPRETER_DTYPES:
        pytest.skip("the Triton interpreter computes bf16 wrongly; bf16 Triton runs on the GPU")


def parent_heads(num_heads: int, num_groups: int, k: int) -> list[int]:
    """Parent index of each active head in compact order, written out by hand."""
    per_group = num_heads // num_groups
    return [g * per_group + j for g in range(num_groups) for j in range(k)]


def scan_inputs(b, l, H, P, G, N, *, seed=0, dtype=torch.float32, device="cpu"):
    """Parent-width inputs of a scan (x, z, dt, initial states at full width; slice with
    ``slice_scan_inputs``). Decays moderate so fp16 stays well conditioned."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    t = dict(x=r(b, l, H, P), z=r(b, l, H, P), dt=r(b, l, H) * 0.5, A=-(torch.rand(H, generator=g) + 0.2),
             B=r(b, l, G, N), C=r(b, l, G, N), D=r(H), D2=r(H, P), dt_bias=r(H) * 0.3,
             init=r(b, H, P, N))
    out = {}
    for name, v in t.items():
        if name in ("x", "z", "B", "C"):
            v = v.to(dtype)
        out[name] = v.to(device)
    return out


def slice_heads(t: torch.Tensor, H: int, G: int, k: int, p: int | None = None, dim: int = 2):
    """Explicit (copied) group-aware slice along ``dim``; the first p channels of dim + 1."""
    index = torch.tensor(parent_heads(H, G, k), device=t.device)
    out = t.index_select(dim, index)
    return (out if p is None else out.narrow(dim + 1, 0, p)).contiguous()


def sequential_scan(x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False,
                    dt_limit=(0.0, float("inf")), initial_states=None, heads_per_group=None,
                    cu_seqlens=None):
    """float64 oracle: h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T, y_t = h_t C_t + D x_t,
    y_t *= silu(z_t), looping over batch rows, heads and tokens. Returns (y, final states)."""
    b, l, Hk, p = x.shape
    G, N = B.shape[2], B.shape[3]
    H = A.shape[0]
    k = heads_per_group or H // G
    heads = parent_heads(H, G, k)
    x64, B64, C64 = x.double(), B.double(), C.double()
    y = [[[None] * Hk for _ in range(l)] for _ in range(b)]
    bounds = [0, l] if cu_seqlens is None else [int(v) for v in cu_seqlens]
    finals = []
    for row in range(b):
        for s, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
            seq = row if cu_seqlens is None else s
            hs = []
            for hc in range(Hk):
                ph, grp = heads[hc], hc // k
                if initial_states is None:
                    h = torch.zeros(p, N, dtype=torch.float64)
                else:
                    h = initial_states[seq, hc].double().clone()
                for t in range(start, end):
                    d = dt[row, t, hc].double()
                    if dt_bias is not None:
                        d = d + dt_bias[ph].double()
                    if dt_softplus:
                        d = F.softplus(d)
                    d = d.clamp(dt_limit[0], dt_limit[1])
                    h = torch.exp(d * A[ph].double()) * h + d * torch.outer(x64[row, t, hc], B64[row, t, grp])
                    out = h @ C64[row, t, grp]
                    if D is not None:
                        out = out + (D[ph, :p] if D.dim() == 2 else D[ph]).double() * x64[row, t, hc]
                    if z is not None:
                        out = out * F.silu(z[row, t, hc].double())
                    y[row][t][hc] = out
                hs.append(h)
            finals.append(torch.stack(hs))
    y = torch.stack([torch.stack([torch.stack(heads_out) for heads_out in row]) if l else
                     torch.zeros(0, Hk, p, dtype=torch.float64) for row in y])
    return y, torch.stack(finals)


def import_mamba_oracles():
    """mamba-ssm 2.3.2.post1's pure-PyTorch references, with a stub for ``selective_scan_cuda``
    (its CUDA extension, which the CI install skips and these functions never call)."""
    sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    minimal = pytest.importorskip("mamba_ssm.modules.ssd_minimal",
                                  reason="mamba-ssm is not installed (see the Makefile)")
    ssu = pytest.importorskip("mamba_ssm.ops.triton.selective_state_update")
    return minimal, ssu
