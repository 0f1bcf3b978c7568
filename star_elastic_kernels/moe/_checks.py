"""Argument checks shared by the MoE op wrappers. Every check raises before anything runs."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
ID_DTYPES = (torch.int32, torch.int64)


def no_fp64_in_triton(backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
    if backend == "triton" and dtype == torch.float64:
        return "the Triton kernels compute in float32/float16/bfloat16; use backend='torch' for float64"
    return None


def tensor(t, name: str, dims: int | None = None, dtypes=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dims is not None and t.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must be one of {', '.join(map(str, dtypes))}, got {t.dtype}")


def integer(value, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name}={value} must be {bound}")
    return value


def same_device(t: torch.Tensor, name: str, like: torch.Tensor, like_name: str) -> None:
    if t.device != like.device:
        raise ValueError(f"{name} is on {t.device} but {like_name} is on {like.device}")


def ids_in_range(ids: torch.Tensor, num_experts: int, name: str = "ids") -> None:
    # Needs the values (one device sync); a compiled graph cannot branch on them, so it skips this.
    if torch.compiler.is_compiling() or ids.numel() == 0:
        return
    low, high = torch.stack([ids.min(), ids.max()]).tolist()
    if low < 0 or high >= num_experts:
        raise ValueError(f"{name} must lie in [0, {num_experts}), got values in [{low}, {high}]")
