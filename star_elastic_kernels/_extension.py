"""Loading the compiled extension ``star_elastic_kernels._C``, which may legitimately be absent.

Import of the package never fails because of it, and stays silent: a machine without a GPU has
no use for the extension. A missing or broken extension is reported where it matters: once per
process (a :class:`StarElasticWarning`, see :func:`warn_cuda_backend_missing`) when a CUDA tensor
reaches an op whose cuda backend cannot run, always by ``python -m star_elastic_kernels.info``, and
in the error of an explicit ``backend="cuda"`` request. Nothing here initialises CUDA.
"""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path

import torch

BUILD_COMMAND = "pip install -e . --no-build-isolation  (in the repository, with nvcc on PATH)"
_STATUS_FILE = Path(__file__).with_name("_build_status.json")


class StarElasticWarning(UserWarning):
    """Something optional is missing (e.g. the CUDA extension); the library still works without it."""


def build_status() -> dict:
    """What setup.py decided at install time: {"built": bool, "reason" | "cuda_archs": ...}."""
    try:
        return json.loads(_STATUS_FILE.read_text())
    except (OSError, ValueError):
        return {"built": False, "reason": "unknown (no build status recorded; not installed with pip?)"}


@functools.cache
def _load() -> str | None:
    """Import ``_C`` once; returns None on success, else why it is unavailable."""
    try:
        from star_elastic_kernels import _C  # noqa: F401  (importing runs the op registrations)
    except ImportError as error:
        status = build_status()
        if status.get("built") is False:
            why = f"the CUDA extension was not built ({status.get('reason')})"
        else:
            why = f"the CUDA extension failed to load ({error})"
        return f"{why}; build it with: {BUILD_COMMAND}"
    return None


def unavailable_reason() -> str | None:
    """None when ``_C`` is loaded, else the reason and the fix."""
    return _load()


_warned_cuda_backend_missing = False


def warn_cuda_backend_missing(op: str, reason: str, fallback: str) -> None:
    """Say once per process that CUDA tensors reached ``op`` but its cuda backend cannot run."""
    global _warned_cuda_backend_missing
    if _warned_cuda_backend_missing or torch.compiler.is_compiling():
        return
    _warned_cuda_backend_missing = True
    warnings.warn(f"star_elastic_kernels: {op} got CUDA tensors but its cuda backend is unavailable "
                  f"({reason}); running the {fallback} backend instead. This is reported once per "
                  f"process; python -m star_elastic_kernels.info shows every op's backends.",
                  StarElasticWarning, stacklevel=4)


def has_op(name: str) -> bool:
    return _load() is None and hasattr(torch.ops.star_elastic, name)


@functools.cache
def build_info() -> dict:
    """What the loaded binary reports about itself (archs, CUTLASS and CUDA versions); {} if absent."""
    if _load() is not None:
        return {}
    return json.loads(torch.ops.star_elastic._build_info())


def built_archs() -> list[str]:
    archs = build_info().get("cuda_archs", "")
    return [a for a in archs.split(";") if a]


def device_mismatch_reason(device: torch.device) -> str | None:
    """Why the built kernels cannot run on ``device`` (e.g. built for sm_90a, device is sm_80)."""
    major, minor = torch.cuda.get_device_capability(device)
    device_arch = f"{major}{minor}"
    for arch in built_archs():
        base = arch.rstrip("a")
        if arch.endswith("a") and base == device_arch:
            return None
        # sm_XY SASS runs on the same major with minor >= Y; compute_XY PTX JIT-compiles upward.
        if not arch.endswith("a") and int(base) <= int(device_arch):
            return None
    return (f"the extension was built for sm_{', sm_'.join(built_archs())} but this GPU is "
            f"sm_{device_arch}; rebuild with STAR_ELASTIC_CUDA_ARCHS={device_arch} {BUILD_COMMAND}")
