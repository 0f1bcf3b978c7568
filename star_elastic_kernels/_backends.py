"""Backend selection for every op: which implementation runs a call, and why another cannot.

Each op has up to three backends:

* ``"torch"``  — the pure-PyTorch reference (any device; the definition of correctness);
* ``"triton"`` — Triton kernels (CUDA tensors; CPU tensors only under ``TRITON_INTERPRET=1``);
* ``"cuda"``   — hand-written CUDA/CUTLASS in the compiled extension ``star_elastic_kernels._C``.

The backend of a call is, in order of precedence: the op's ``backend=`` argument, the innermost
:func:`use_backend` context, the environment variable ``STAR_ELASTIC_BACKEND``, else ``"auto"``.
``"auto"`` picks, for CUDA tensors, the first backend available for the call in the op's
preference order (``OpSpec.backends``: cuda > triton > torch unless the op lists otherwise), and
torch for CPU tensors. An explicitly requested backend that cannot run the call raises
:class:`BackendUnavailableError` saying why and how to get it; it never falls back silently.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
from typing import Callable, Iterator

import torch

from star_elastic_kernels import _extension

BACKENDS = ("cuda", "triton", "torch")
CHOICES = ("auto", *BACKENDS)
ENV_VAR = "STAR_ELASTIC_BACKEND"

# Innermost-last stack of use_backend() choices. A plain list (not a ContextVar) so that
# torch.compile can trace the lookup without a graph break.
_override_stack: list[str] = []


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run this call (not built, no GPU, dtype, ...)."""


def _check_choice(name: str, source: str) -> str:
    if name not in CHOICES:
        raise ValueError(f"{source}: unknown backend {name!r}; choose one of {', '.join(CHOICES)}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run every op inside the ``with`` block on backend ``name`` (``auto|cuda|triton|torch``).

    A per-call ``backend=`` argument still wins. Contexts nest; the innermost one applies.
    """
    _override_stack.append(_check_choice(name, "use_backend"))
    try:
        yield
    finally:
        _override_stack.pop()


def requested_backend(explicit: str | None = None) -> str:
    """The backend asked for: per-call argument > use_backend() > $STAR_ELASTIC_BACKEND > auto."""
    if explicit is not None:
        return _check_choice(explicit, "backend")
    if _override_stack:
        return _override_stack[-1]
    env = os.environ.get(ENV_VAR)
    if env:
        return _check_choice(env.strip().lower(), ENV_VAR)
    return "auto"


def triton_interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """What one op implements, for backend selection and ``python -m star_elastic_kernels.info``.

    ``backends`` is also the order ``"auto"`` tries them in on CUDA tensors (fastest first).
    ``cuda_ops`` names the private ops of ``_C`` the cuda backend needs. ``triton_cpu_dtypes`` are
    the dtypes the Triton interpreter handles correctly (it mishandles bf16 and fp8 arithmetic).
    ``supports`` may veto a backend for a particular call: it returns a reason or None.
    """

    name: str
    backends: tuple[str, ...]
    cuda_ops: tuple[str, ...] = ()
    triton_cpu_dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float16)
    supports: Callable[[str, torch.device, torch.dtype], str | None] | None = None


_registry: dict[str, OpSpec] = {}


def register(spec: OpSpec) -> OpSpec:
    """Record an op's backends (called once per op, at import of its module)."""
    if spec.name in _registry:
        raise ValueError(f"op {spec.name!r} is registered twice")
    for backend in spec.backends:
        _check_choice(backend, f"OpSpec({spec.name!r})")
    _registry[spec.name] = spec
    return spec


def registered_ops() -> dict[str, OpSpec]:
    return dict(_registry)


def _triton_reason(spec: OpSpec, device: torch.device, dtype: torch.dtype | None) -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (`pip install triton`; it ships with CUDA builds of torch)"
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if not triton_interpreter_enabled():
            return ("Triton runs CPU tensors only in its interpreter: set TRITON_INTERPRET=1 "
                    "before importing star_elastic_kernels, or use CUDA tensors")
        if dtype is not None and dtype not in spec.triton_cpu_dtypes:
            return (f"the Triton interpreter computes {dtype} wrongly; use "
                    f"{' or '.join(str(d) for d in spec.triton_cpu_dtypes)} on the CPU, or a GPU")
        return None
    return f"Triton does not run on {device.type} tensors"


def _cuda_reason(spec: OpSpec, device: torch.device) -> str | None:
    problem = _extension.unavailable_reason()
    if problem:
        return problem
    missing = [op for op in spec.cuda_ops if not _extension.has_op(op)]
    if missing:
        return (f"the installed extension lacks {', '.join(missing)} (built from older sources); "
                f"rebuild: {_extension.BUILD_COMMAND}")
    if device.type != "cuda":
        return f"the CUDA backend needs CUDA tensors, got {device.type} tensors"
    return _extension.device_mismatch_reason(device)


def unavailable_reason(
    spec: OpSpec, backend: str, device: torch.device, dtype: torch.dtype | None = None
) -> str | None:
    """Why ``backend`` cannot run ``spec`` on this device/dtype, or None when it can."""
    if backend not in spec.backends:
        return f"{spec.name} has no {backend} implementation (it has: {', '.join(spec.backends)})"
    if backend == "triton":
        reason = _triton_reason(spec, device, dtype)
    elif backend == "cuda":
        reason = _cuda_reason(spec, device)
    else:
        reason = None
    if reason is None and spec.supports is not None and dtype is not None:
        reason = spec.supports(backend, device, dtype)
    return reason


def select_backend(
    spec: OpSpec, device: torch.device, dtype: torch.dtype | None, explicit: str | None = None
) -> str:
    """The backend that runs this call (see the module docstring for the rules)."""
    wanted = requested_backend(explicit)
    if wanted == "auto":
        if device.type != "cuda":
            return "torch"
        chosen = next((backend for backend in spec.backends
                       if unavailable_reason(spec, backend, device, dtype) is None), "torch")
        if "cuda" in spec.backends and chosen != "cuda":
            # The extension itself is missing, stale or built for another GPU (not a per-call
            # veto such as an unsupported dtype): the user may not know, so say so, once.
            problem = _cuda_reason(spec, device)
            if problem is not None:
                _extension.warn_cuda_backend_missing(spec.name, problem, chosen)
        return chosen
    reason = unavailable_reason(spec, wanted, device, dtype)
    if reason is not None:
        raise BackendUnavailableError(f"{spec.name}: backend {wanted!r} is unavailable: {reason}")
    return wanted
