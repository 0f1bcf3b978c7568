"""Argument checks shared by the MoE op wrappers. Every check raises before anything runs."""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensor

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


def boolean(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def on_host_now(t: torch.Tensor, validate: bool) -> bool:
    """Whether to check the values of ``t`` on the host before launching: always for CPU tensors
    (no device sync needed), for device tensors only with ``validate=True`` (one sync); never while
    tracing (the kernels check on the device instead, see moe/_errors.py)."""
    boolean(validate, "validate")
    if torch.compiler.is_compiling() or isinstance(t, FakeTensor):
        return False
    return validate or t.device.type == "cpu"


def ids_in_range(ids: torch.Tensor, num_experts: int, name: str = "ids") -> None:
    """Host check of expert ids (reads the values: call only when :func:`on_host_now`)."""
    if ids.numel() == 0:
        return
    low, high = torch.stack([ids.min(), ids.max()]).tolist()
    if low < 0 or high >= num_experts:
        raise ValueError(f"{name} must lie in [0, {num_experts}), got values in [{low}, {high}]")


def fake_expect(ok: bool, op: str, rule: str) -> None:
    """The shape rules of a private ``_C`` op, checked by its fake impl while tracing (the C++
    impl checks the same with TORCH_CHECK at run time)."""
    if not ok:
        raise RuntimeError(f"{op}: {rule}")
