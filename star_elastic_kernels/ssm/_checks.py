"""Argument checks shared by the SSM op wrappers. Every check raises before anything runs."""

from __future__ import annotations

import math

import torch

from star_elastic_kernels.ssm import _device_checks

# float64 is accepted for the reference (fp64 gradcheck); the kernels veto it through OpSpec.supports.
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def kernels_skip_float64(backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
    if dtype == torch.float64 and backend != "torch":
        return "float64 runs only on the torch reference (the kernels take fp32/fp16/bf16)"
    return None


def tensor(t, name: str, dims: int | tuple[int, ...], device: torch.device | None = None,
           dtypes=FLOAT_DTYPES, unit_inner_stride: bool = False) -> torch.Tensor:
    """Check type, rank, dtype, device and (optionally) a unit innermost stride of one argument."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    dims = (dims,) if isinstance(dims, int) else dims
    if t.dim() not in dims:
        wanted = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"{name} must be {wanted}, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must be {' / '.join(str(d) for d in dtypes)}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but x is on {device}")
    if unit_inner_stride and t.numel() > 0 and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name} must have a unit innermost stride (stride(-1) == 1), got strides "
                         f"{t.stride()}")
    return t


def optional(t, name: str, *args, **kwargs):
    return None if t is None else tensor(t, name, *args, **kwargs)


def shape(t: torch.Tensor | None, name: str, expected: tuple[int, ...], what: str = "") -> None:
    if t is not None and tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(expected)}{what}")


def head_slice(num_heads: int, num_groups: int, heads_per_group, head_dim, x_heads: int,
               x_channels: int, parent_head_dim: int | None, x_name: str = "x") -> tuple[int, int]:
    """Resolve and check (k, p) of a group-aware slice against the compact activation's
    (heads, channels) = (x_heads, x_channels) and the parent's H, G (and P where known)."""
    if num_groups < 1 or num_heads % num_groups:
        raise ValueError(f"H={num_heads} heads (A.shape[0]) is not divisible by G={num_groups} "
                         f"groups (B.shape[-2])")
    parent_per_group = num_heads // num_groups
    k = parent_per_group if heads_per_group is None else heads_per_group
    p = x_channels if head_dim is None else head_dim
    for value, name in ((k, "heads_per_group"), (p, "head_dim")):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 1 <= k <= parent_per_group:
        raise ValueError(f"heads_per_group={k} must be in [1, H/G={parent_per_group}]")
    if p < 1 or (parent_head_dim is not None and p > parent_head_dim):
        raise ValueError(f"head_dim={p} must be in [1, P={parent_head_dim}]")
    if (x_heads, x_channels) != (num_groups * k, p):
        raise ValueError(f"{x_name} has {x_heads} heads of {x_channels} channels, but the slice "
                         f"heads_per_group={k}, head_dim={p} with G={num_groups} needs "
                         f"{num_groups * k} heads of {p} channels")
    return k, p


def dt_limit(limit) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in limit)
    except (TypeError, ValueError):
        raise TypeError(f"dt_limit must be a pair of floats (min, max), got {limit!r}") from None
    if math.isnan(low) or math.isnan(high) or low > high:
        raise ValueError(f"dt_limit=({low}, {high}) must satisfy min <= max")
    return low, high


def values_readable(t: torch.Tensor) -> bool:
    """Whether reading ``t``'s values on the host is free: a real CPU tensor outside a
    torch.compile trace. GPU values are never read on the host (see ``_device_checks``)."""
    return (t.device.type == "cpu" and not torch.compiler.is_compiling()
            and not _device_checks.is_fake(t))


def seq_bounds(cu_seqlens, batch: int, length: int, device: torch.device) -> int:
    """Check packed-sequence boundaries and return the number of sequences S. Their values are
    checked here on CPU tensors, on the device (``_device_checks``) otherwise: no host read."""
    tensor(cu_seqlens, "cu_seqlens", 1, dtypes=(torch.int32, torch.int64))
    if cu_seqlens.device != device:
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device} but x is on {device}")
    if batch != 1:
        raise ValueError(f"cu_seqlens needs batch size 1 (packed sequences), got b={batch}")
    if cu_seqlens.shape[0] < 2:
        raise ValueError("cu_seqlens must hold at least one sequence (two boundaries), got "
                         f"shape {tuple(cu_seqlens.shape)}")
    if values_readable(cu_seqlens):
        bounds = [int(v) for v in cu_seqlens.tolist()]
        if bounds[0] != 0 or bounds[-1] != length or any(e < s for s, e in zip(bounds, bounds[1:])):
            raise ValueError(f"cu_seqlens must start at 0, never decrease and end at l={length}, "
                             f"got {bounds}")
    return cu_seqlens.shape[0] - 1


def slot_indices(state_indices, batch: int, num_slots: int, device: torch.device,
                 check_values: bool = False):
    """Check decode cache slots: (b,) ints, each in [0, slots) or negative (a padding row, skipped),
    no slot twice. The values are checked on the host for CPU tensors (free) and with
    ``check_values`` (one sync, opt-in); otherwise the kernels skip slots >= slots on the device
    and record them (``_device_checks``)."""
    if state_indices is None:
        if batch > num_slots:
            raise ValueError(f"batch {batch} exceeds the cache's {num_slots} slots; pass "
                             f"state_indices")
        return None
    tensor(state_indices, "state_indices", 1, dtypes=(torch.int32, torch.int64))
    if state_indices.device != device:
        raise ValueError(f"state_indices is on {state_indices.device} but x is on {device}")
    if state_indices.shape[0] != batch:
        raise ValueError(f"state_indices has shape {tuple(state_indices.shape)}, expected "
                         f"({batch},)")
    if batch and (check_values or values_readable(state_indices)):
        if state_indices.device.type != "cpu":
            _device_checks.check_device_errors(state_indices.device)  # this sync surfaces them too
        values = state_indices.tolist()
        used = [v for v in values if v >= 0]
        if used and max(used) >= num_slots:
            raise ValueError(f"state_indices must be slots in [0, {num_slots}) (or negative for a "
                             f"padding row), got {max(used)}")
        if len(set(used)) != len(used):
            raise ValueError("state_indices must not repeat a slot (two rows would write it)")
    return state_indices.contiguous()  # the kernels index it densely


def reference_on_used_slots(step, x: torch.Tensor, state_indices, num_slots: int) -> torch.Tensor:
    """Run a decode reference ``step(rows, slots) -> y_rows`` on the rows whose slot is in the
    cache, the kernels' rule: padding rows (slot < 0) and rows with a slot >= ``num_slots``
    (recorded on the device) are skipped and their output is zero. The reference picks the rows
    on the host (it is the specification, not a graph-safe path)."""
    if state_indices is None:
        return step(None, None).contiguous()
    used = (state_indices >= 0) & (state_indices < num_slots)
    _device_checks.record(state_indices, (state_indices >= num_slots).any(),
                          _device_checks.SLOT_OUT_OF_RANGE)
    rows = used.nonzero().flatten()
    y = x.new_zeros(x.shape)
    y[rows] = step(rows, state_indices[rows])
    return y
