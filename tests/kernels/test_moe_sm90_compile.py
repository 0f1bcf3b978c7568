"""Every MoE Triton kernel compiles for sm_90 (H200) at the configs its launcher picks at the
Nemotron Nano v3 shapes (E=128, top-6, D=2688, F=1856), checked on any machine, GPU or not: shared
memory within 227 KB per block, no register spills (read from the cubin's resource usage), and
the 64-row bf16 tiles' tl.dot lowered to wgmma.

The CPU tests run these kernels in Triton's interpreter, which accepts code the GPU compiler
rejects and says nothing about resources. Here each kernel is compiled ahead of time for a Hopper
target, in a subprocess because the interpreter switch is read at import.
"""

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOPPER_SHARED_MEMORY = 227 * 1024
E, K, D, F = 128, 6, 2688, 1856


def _signature(kernel, pointers: dict, constexprs: dict, floats=("scaling",)) -> dict:
    """Pointers as given (default int32), ``floats`` fp32, every other runtime argument i64."""
    out = {}
    for name in kernel.arg_names:
        if name in constexprs:
            out[name] = "constexpr"
        elif name.endswith("_ptr"):
            out[name] = pointers.get(name, "*i32")
        else:
            out[name] = "fp32" if name in floats else "i64"
    return out


def cases():
    """(name, kernel, signature, constexprs, options, wants_wgmma) for every launcher config."""
    import triton

    from star_elastic_kernels.triton import moe_align, moe_gemm, moe_route

    out = []
    consts = dict(TOP_K=K, K_PAD=8, SOFTMAX=False, HAS_BIAS=True, HAS_MASK=True, RENORMALIZE=True,
                  BLOCK_T=max(1, min(64, 4096 // E)), BLOCK_E=E)
    out.append(("moe_route", moe_route._route_kernel, _signature(
        moe_route._route_kernel, {"logits_ptr": "*fp32", "bias_ptr": "*fp32", "mask_ptr": "*i8",
                                  "weights_ptr": "*fp32"}, consts), consts, {}, False))
    for name, kernel in (("moe_align_count", moe_align._count_kernel),
                         ("moe_align_fill", moe_align._fill_kernel)):
        consts = {"BLOCK": moe_align._BLOCK}
        out.append((name, kernel, _signature(kernel, {}, consts), consts, {}, False))
    for block_m in (16, 32, 64):
        for stage, n, k in (("up", F, D), ("down", D, F)):
            for activation in (("relu2", "silu_glu") if stage == "up" else (None,)):
                block_n = moe_gemm._tile(n, 128 if block_m >= 64 else 64)
                consts = dict(GATHER_A=stage == "up", SCATTER_C=stage == "down",
                              HAS_SCALE=stage == "down",
                              ACTIVATION=moe_gemm._ACTIVATIONS[activation], PRECISION="tf32",
                              BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=moe_gemm._tile(k, 64),
                              BLOCK_G=triton.next_power_of_2(E))
                pointers = {"a_ptr": "*bf16", "b_ptr": "*bf16",
                            "c_ptr": "*fp32" if stage == "down" else "*bf16", "scale_ptr": "*fp32"}
                options = {"num_warps": 8 if block_m * block_n >= 64 * 128 else 4, "num_stages": 3}
                out.append((f"moe_grouped_gemm-{stage}-{activation}-bm{block_m}",
                            moe_gemm._grouped_gemm_kernel,
                            _signature(moe_gemm._grouped_gemm_kernel, pointers, consts), consts,
                            options, block_m >= 64))
    consts = dict(PRECISION="tf32", BLOCK_X=64, BLOCK_Y=64, BLOCK_M=32)
    out.append(("moe_grouped_wgrad", moe_gemm._grouped_wgrad_kernel, _signature(
        moe_gemm._grouped_wgrad_kernel, {"x_ptr": "*bf16", "y_ptr": "*bf16", "out_ptr": "*bf16"},
        consts), consts, {}, False))
    return out


def cubin_usage(cubin: bytes) -> tuple[int, int]:
    """(registers, local-memory bytes) of the one kernel in a cubin, from cuobjdump -res-usage."""
    import triton

    tool = os.environ.get("CUOBJDUMP") or os.path.join(
        os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True,
                               check=True).stdout
    found = re.search(r"REG:(\d+) STACK:\d+ SHARED:\d+ LOCAL:(\d+)", usage)
    return int(found.group(1)), int(found.group(2))


def main() -> int:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    failures, rows = [], []
    for name, kernel, signature, constexprs, options, wants_wgmma in cases():
        try:
            compiled = triton.compile(ASTSource(fn=kernel, signature=signature,
                                                constexprs=constexprs),
                                      target=GPUTarget("cuda", 90, 32), options=options)
        except Exception as error:  # noqa: BLE001 - report every failing kernel
            failures.append(f"{name}: {type(error).__name__}: {str(error)[:600]}")
            continue
        registers, local = cubin_usage(compiled.asm["cubin"])
        shared = compiled.metadata.shared
        wgmma = "wgmma" in compiled.asm["ptx"]
        rows.append(f"{name}: {registers} registers, {local} B local, {shared} B shared, "
                    f"wgmma={wgmma}")
        if shared > HOPPER_SHARED_MEMORY:
            failures.append(f"{name}: needs {shared} B of shared memory")
        if local:
            failures.append(f"{name}: {local} B of local memory (spills)")
        if wants_wgmma and not wgmma:
            failures.append(f"{name}: tl.dot did not lower to wgmma")
    print("\n".join(rows))
    print("\n".join(failures) if failures else "all compiled")
    return 1 if failures else 0


@pytest.mark.skipif(sys.platform != "linux", reason="Triton's CUDA backend compiles on Linux")
def test_moe_triton_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c",
         "import sys, tests.kernels.test_moe_sm90_compile as m; sys.exit(m.main())"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
