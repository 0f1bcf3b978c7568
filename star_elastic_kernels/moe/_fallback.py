"""When the MoE cuda backend hands a call to Triton, nobody is left guessing.

The CUTLASS kernels read rows with TMA, which needs 16-byte aligned row strides; the elastic
widths themselves need no granularity (the loads zero-fill past ``ffn_width`` / ``hidden_width`` /
``shared_width``, the stores clip), so no Budget rule is needed for them. A call the cuda backend
cannot take (a parent whose row strides are not multiples of 8 bf16 elements) runs on Triton when
the backend was chosen automatically — with one :class:`StarElasticWarning` per op and reason, and
a count that ``python -m star_elastic_kernels.info`` prints. An explicit ``backend="cuda"`` raises
instead (never a silent fallback from an explicit request).
"""

from __future__ import annotations

import warnings

import torch

from star_elastic_kernels._extension import StarElasticWarning

# The parent layout the CUTLASS path needs, in elements of bf16 (16 bytes).
ROW_STRIDE_MULTIPLE = 8

RULES = {
    "moe_ffn": "cuda -> triton (warns once) when the parent weights' row strides (D, F, Fs) or "
               "storage offsets are not multiples of 8 bf16 elements; every ffn_width, "
               "hidden_width and shared_width runs on cuda; the backward runs on triton",
    "grouped_gemm": "cuda -> triton (warns once) when N or the row strides of a and b are not "
                    "multiples of 8 bf16 elements, or trans_b=False; the backward runs on triton",
}

_taken: dict[tuple[str, str], int] = {}


def fallback(op: str, reason: str) -> None:
    """Record that ``op`` ran on Triton instead of cuda because of ``reason``; warn the first time
    (not while tracing for torch.compile: the traced call is recorded when it runs eagerly)."""
    if torch.compiler.is_compiling():
        return
    key = (op, reason)
    first = key not in _taken
    _taken[key] = _taken.get(key, 0) + 1
    if first:
        warnings.warn(f"{op}: the cuda backend cannot run this call ({reason}); running it on "
                      f"triton instead (slower). Shown once per reason; `python -m "
                      f"star_elastic_kernels.info` lists the fallbacks taken.", StarElasticWarning,
                      stacklevel=3)


def report() -> dict:
    """The fallback rules and, per op, how often each reason was hit in this process."""
    taken: dict[str, dict[str, int]] = {}
    for (op, reason), count in _taken.items():
        taken.setdefault(op, {})[reason] = count
    return {"rules": dict(RULES), "taken": taken}
