"""What is built and available here, and why the rest is not.

Run ``python -m star_elastic_kernels.info``: versions (torch, CUDA, Triton, CUTLASS), whether the
extension ``_C`` is built and for which archs, and a table of ops x backends. Each cell says
``ready`` (runs here), ``built`` (compiled in, but needs something this machine lacks, e.g. a GPU)
or ``no`` with the reason.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import sys

import torch

import star_elastic_kernels  # noqa: F401  (registers every op)
from star_elastic_kernels import _backends, _extension
from star_elastic_kernels._console import exit_status_of
from star_elastic_kernels.moe import _fallback as moe_fallback


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cell(spec: _backends.OpSpec, backend: str) -> tuple[str, str]:
    """(status, detail) for one op x backend on this machine."""
    has_gpu = torch.cuda.is_available()
    if backend not in spec.backends:
        return "no", "not implemented"
    if backend == "torch":
        return "ready", "CPU and GPU"
    device = torch.device("cuda") if has_gpu else torch.device("cpu")
    reason = _backends.unavailable_reason(spec, backend, device)
    if reason is None:
        where = "GPU" if has_gpu else "CPU, Triton interpreter"
        return "ready", where
    if backend == "triton" and not has_gpu and "TRITON_INTERPRET" in reason:
        return "built", "needs a CUDA GPU (or TRITON_INTERPRET=1 on the CPU)"
    if backend == "cuda" and not has_gpu and _extension.unavailable_reason() is None:
        if not spec.cuda_ops or all(_extension.has_op(op) for op in spec.cuda_ops):
            archs = ", ".join(f"sm_{a}" for a in _extension.built_archs())
            return "built", f"compiled for {archs}; needs a CUDA GPU to run"
    return "no", reason


def collect() -> dict:
    """Everything the report shows, as a JSON-serialisable dict."""
    status = _extension.build_status()
    extension_problem = _extension.unavailable_reason()
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _version("triton"),
        "nvidia_cutlass_package": _version("nvidia-cutlass"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "backend_env": _backends.requested_backend(),
        "extension": {
            "loaded": extension_problem is None,
            "problem": extension_problem,
            "build_status": status,
            **_extension.build_info(),
        },
        "ops": {},
        "moe_fallbacks": moe_fallback.report(),
    }
    for name, spec in sorted(_backends.registered_ops().items()):
        info["ops"][name] = {b: dict(zip(("status", "detail"), _cell(spec, b)))
                             for b in _backends.BACKENDS}
    return info


def render(info: dict) -> str:
    ext = info["extension"]
    lines = [
        f"star_elastic_kernels {star_elastic_kernels.__version__}",
        f"  python {info['python']}, torch {info['torch']} (CUDA {info['torch_cuda'] or 'none'}), "
        f"triton {info['triton'] or 'not installed'}",
        f"  GPU: {info['gpu'] or 'none visible'}",
        f"  backend requested: {info['backend_env']} (per call > use_backend() > $STAR_ELASTIC_BACKEND)",
    ]
    if ext["loaded"]:
        archs = ", ".join(f"sm_{a}" for a in ext["cuda_archs"].split(";"))
        lines.append(f"  _C: built for {archs}; CUTLASS {ext['cutlass_version']}, "
                     f"CUDA runtime {ext['cuda_runtime_version']}")
    else:
        lines.append(f"  _C: not available: {ext['problem']}")
    rows = [("op", *_backends.BACKENDS)]
    for name, cells in info["ops"].items():
        rows.append((name, *(f"{c['status']}: {c['detail']}" for c in cells.values())))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines.append("")
    for row in rows:
        lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    moe = info["moe_fallbacks"]
    lines += ["", "  MoE fallbacks (cuda -> triton):"]
    lines += [f"    {op}: {rule}" for op, rule in moe["rules"].items()]
    for op, reasons in moe["taken"].items():
        lines += [f"    taken in this process: {op} x{n}: {reason}" for reason, n in reasons.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m star_elastic_kernels.info",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    info = collect()
    print(json.dumps(info, indent=2) if args.json else render(info))


if __name__ == "__main__":
    sys.exit(exit_status_of(main))
