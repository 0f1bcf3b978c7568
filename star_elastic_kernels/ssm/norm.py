"""Gated group RMSNorm (Mamba-2's ``RMSNormGated``) at an elastic slice: ``gated_rmsnorm``.

Order: the registered op ``star_elastic::gated_rmsnorm`` with its fake impl, the public wrapper.
Kernels: ``csrc/ssm/gated_rmsnorm.cu`` (cuda: private op ``_gated_rmsnorm``),
``star_elastic_kernels/triton/gated_rmsnorm.py`` (triton); the specification is
``star_elastic_kernels.reference.ssm.gated_rmsnorm`` (torch).

Differentiable (y, z, weight) on every backend through PyTorch autograd of the reference,
recomputed in the backward pass (no backward kernel yet).
"""

from __future__ import annotations

import torch

from star_elastic_kernels import _backends
from star_elastic_kernels.reference import ssm as reference
from star_elastic_kernels.ssm import _autograd, _checks

SPEC = _backends.register(_backends.OpSpec(
    "gated_rmsnorm", backends=("cuda", "triton", "torch"), cuda_ops=("_gated_rmsnorm",),
    supports=_checks.kernels_skip_float64))


def _cuda(y, z, weight, eps, num_groups, p, parent_group_width, parent_p, norm_before_gate):
    """y, z (rows, G*k*p) unit inner stride -> out (rows, G*k*p) contiguous in y's dtype."""
    out = torch.empty(y.shape, dtype=y.dtype, device=y.device)
    if out.numel():
        if weight.dtype == torch.float64:  # the kernel reads fp32/fp16/bf16 parameters
            weight = weight.float()
        torch.ops.star_elastic._gated_rmsnorm(y, z, weight, out, num_groups, p, parent_group_width,
                                              parent_p, eps, norm_before_gate)
    return out


@torch.library.custom_op("star_elastic::gated_rmsnorm", mutates_args=())
def _gated_rmsnorm_op(
    y: torch.Tensor, z: torch.Tensor | None, weight: torch.Tensor, eps: float, group_size: int,
    norm_before_gate: bool, heads_per_group: int, head_dim: int, num_heads: int, backend: str,
) -> torch.Tensor:
    """``num_heads == 0`` marks a dense call (no slice)."""
    if backend in ("cuda", "triton"):
        num_groups = weight.shape[0] // group_size
        rows_y = y.reshape(-1, y.shape[-1])
        rows_z = None if z is None else z.reshape(-1, z.shape[-1])
        if num_heads == 0:
            p, parent_p = group_size, group_size
        else:
            p, parent_p = head_dim, weight.shape[0] // num_heads
        if backend == "cuda":
            out = _cuda(rows_y, rows_z, weight, eps, num_groups, p, group_size, parent_p,
                        norm_before_gate)
        else:
            from star_elastic_kernels.triton import gated_rmsnorm as kernels

            out = kernels.gated_rmsnorm(rows_y, rows_z, weight, eps, num_groups, p, group_size,
                                        parent_p, norm_before_gate)
        return out.reshape(y.shape)
    return _norm_reference(y, z, weight, eps, group_size, norm_before_gate, heads_per_group,
                           head_dim, num_heads).contiguous()


def _norm_reference(y, z, weight, eps, group_size, norm_before_gate, heads_per_group, head_dim,
                    num_heads):
    slice_kwargs = {} if num_heads == 0 else dict(heads_per_group=heads_per_group,
                                                  head_dim=head_dim, num_heads=num_heads)
    return reference.gated_rmsnorm(y, z, weight, eps=eps, group_size=group_size,
                                   norm_before_gate=norm_before_gate, **slice_kwargs)


@_gated_rmsnorm_op.register_fake
def _(y, z, weight, eps, group_size, norm_before_gate, heads_per_group, head_dim, num_heads,
      backend):
    return y.new_empty(y.shape)


_autograd.register_reference_backward(_gated_rmsnorm_op, _norm_reference, num_tensors=3)


def gated_rmsnorm(
    y: torch.Tensor,
    z: torch.Tensor | None,
    weight: torch.Tensor,
    *,
    eps: float,
    group_size: int,
    norm_before_gate: bool = False,
    heads_per_group: int | None = None,
    head_dim: int | None = None,
    num_heads: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Mamba-2's gated group RMSNorm, optionally at an elastic slice.

    ``norm_before_gate=False`` (Nemotron-H): ``out = rmsnorm_groups(y * silu(z)) * w``;
    ``True``: ``out = rmsnorm_groups(y) * w * silu(z)``. Each of the G norm groups is normalised
    on its own; at a slice the groups keep their count and shrink to ``k*p`` values.

    Args:
        y: (..., G*k*p) float32/float16/bfloat16 compact activations (heads group-major, channels
            inside heads), unit innermost stride.
        z: optional gate, y's shape and dtype, unit innermost stride.
        weight: (H*P,) parent norm weight, unit stride, read at the active channels.
        eps: added to the mean square.
        group_size: the parent's group size (H/G)*P; G = H*P / group_size.
        norm_before_gate: see above.
        heads_per_group, head_dim: the slice k in [1, H/G], p in [1, P]; need ``num_heads`` (H).
            Omit all three for a dense call (y has H*P channels).
        backend: ``"auto" | "cuda" | "triton" | "torch"``.

    Returns:
        (..., G*k*p) in y's dtype, contiguous (fp32 arithmetic).
    """
    _checks.tensor(y, "y", tuple(range(1, 9)), unit_inner_stride=True)
    device = y.device
    _checks.optional(z, "z", y.dim(), device, dtypes=(y.dtype,), unit_inner_stride=True)
    _checks.shape(z, "z", tuple(y.shape), " (y's shape)")
    _checks.tensor(weight, "weight", 1, device, unit_inner_stride=True)
    width = weight.shape[0]
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 \
            or width % group_size:
        raise ValueError(f"group_size={group_size!r} must be a positive divisor of the weight's "
                         f"{width} channels")
    if not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a non-negative float, got {eps!r}")
    num_groups = width // group_size
    if heads_per_group is None and head_dim is None and num_heads is None:
        k = p = 0
        num_heads_arg = 0
        active = width
    else:
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"a sliced gated_rmsnorm needs num_heads (H), got {num_heads!r}")
        if num_heads % num_groups or width % num_heads:
            raise ValueError(f"num_heads={num_heads} must be a multiple of the {num_groups} norm "
                             f"groups and divide the weight's {width} channels")
        parent_p = width // num_heads
        k, p = _checks.head_slice(num_heads, num_groups, heads_per_group, head_dim,
                                  num_groups * (heads_per_group or num_heads // num_groups),
                                  head_dim or parent_p, parent_p)
        num_heads_arg = num_heads
        active = num_groups * k * p
    if y.shape[-1] != active:
        raise ValueError(f"y has {y.shape[-1]} channels, expected {active} for this slice")
    chosen = _backends.select_backend(SPEC, device, y.dtype, backend)
    return _gated_rmsnorm_op(y, z, weight, float(eps), group_size, bool(norm_before_gate), k, p,
                             num_heads_arg, chosen)
