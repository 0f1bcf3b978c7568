"""Every SSM Triton kernel compiles for sm_90 (H200) at the configs the launchers use at Nemotron
shapes, checked on any machine, GPU or not.

The CPU tests run these kernels in Triton's interpreter, which accepts code the GPU compiler
rejects and says nothing about shared memory. Here each kernel is compiled ahead of time for a
Hopper target, in a subprocess because the interpreter switch is read at import.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOPPER_SHARED_MEMORY = 227 * 1024


def _signature(kernel, pointers: dict, constexprs: dict, floats=("dt_min", "dt_max", "eps")) -> dict:
    """Pointers as given (default fp32), ``floats`` fp32, every other runtime argument i64."""
    out = {}
    for name in kernel.arg_names:
        if name in constexprs:
            out[name] = "constexpr"
        elif name.endswith("_ptr"):
            out[name] = pointers.get(name, "*fp32")
        else:
            out[name] = "fp32" if name in floats else "i64"
    return out


def cases():
    """(name, kernel, signature, constexprs, num_warps) per kernel and launcher config."""
    from star_elastic_kernels.triton import conv1d, gated_rmsnorm, ssd_scan, ssd_scan_bwd, ssd_state_update

    tables = {"chunk_table_ptr": "*i64", "seq_table_ptr": "*i64"}
    out = []
    flags = dict(HAS_DT_BIAS=True, DT_SOFTPLUS=True)
    for act in ("bf16", "fp32"):
        acts = {n: f"*{act}" for n in ("x_ptr", "B_ptr", "C_ptr", "z_ptr", "y_ptr")}
        for block_p in (64,):  # p = 64 (Nano v3) and 80 (Nano v2, two blocks) share the config
            consts = dict(IEEE_FP32=act == "fp32", BLOCK_Q=128, BLOCK_P=block_p, BLOCK_N=64, **flags)
            k = ssd_scan._chunk_state_kernel
            out.append((f"chunk_state-{act}", k, _signature(k, {**acts, **tables}, consts), consts, 8))
            consts = dict(consts, HAS_D=True, HAS_Z=True)
            k = ssd_scan._chunk_scan_kernel
            out.append((f"chunk_scan-{act}", k, _signature(k, {**acts, **tables}, consts), consts, 8))
        consts = dict(HAS_Z=True, BLOCK_Q=32, BLOCK_P=64, BLOCK_N=64, **flags)
        k = ssd_scan_bwd._output_state_grad_kernel
        out.append((f"output_state_grad-{act}", k, _signature(k, {**acts, **tables}, consts), consts, 4))
        consts = dict(HAS_D=True, HAS_Z=True, BLOCK_Q=32, BLOCK_P=32, BLOCK_N=128, **flags)
        k = ssd_scan_bwd._chunk_bwd_kernel
        out.append((f"chunk_bwd-{act}", k, _signature(k, {**acts, **tables}, consts), consts, 8))
        consts = dict(HAS_D=True, HAS_Z=True, HAS_SLOTS=True, BLOCK_P=32, BLOCK_N=128, **flags)
        k = ssd_state_update._state_update_kernel
        out.append((f"state_update-{act}", k, _signature(k, {**acts, "slots_ptr": "*i64", "error_ptr": "*i32"}, consts),
                    consts, 4))
        consts = dict(WIDTH=4, HAS_BIAS=True, HAS_INITIAL=True, VARLEN=True, SILU=True, BLOCK_L=16, BLOCK_C=128)
        k = conv1d._conv1d_kernel
        out.append((f"conv1d-{act}", k, _signature(k, {"x_ptr": f"*{act}", "y_ptr": f"*{act}", "init_ptr": f"*{act}",
                                                       "token_seq_ptr": "*i64", "cu_ptr": "*i64"}, consts), consts, 4))
        consts = dict(WIDTH=4, HAS_BIAS=True, HAS_SLOTS=True, SILU=True, BLOCK_C=256)
        k = conv1d._conv1d_update_kernel
        out.append((f"conv1d_update-{act}", k, _signature(k, {"x_ptr": f"*{act}", "y_ptr": f"*{act}",
                                                              "slots_ptr": "*i64", "error_ptr": "*i32"}, consts),
                    consts, 4))
        consts = dict(HAS_Z=True, NORM_BEFORE_GATE=False, BLOCK=512)
        k = gated_rmsnorm._gated_rmsnorm_kernel
        out.append((f"gated_rmsnorm-{act}", k, _signature(k, {"y_ptr": f"*{act}", "z_ptr": f"*{act}",
                                                              "out_ptr": f"*{act}"}, consts), consts, 4))
    for name, k, consts in (("state_passing", ssd_scan._state_passing_kernel, dict(HAS_INITIAL=True, BLOCK=1024)),
                            ("state_passing_bwd", ssd_scan_bwd._state_passing_bwd_kernel,
                             dict(HAS_DFINAL=True, BLOCK=1024))):
        out.append((name, k, _signature(k, tables, consts), consts, 4))
    return out


def main() -> int:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    failures = []
    for name, kernel, signature, constexprs, num_warps in cases():
        try:
            compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                                      target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
            if compiled.metadata.shared > HOPPER_SHARED_MEMORY:
                failures.append(f"{name}: needs {compiled.metadata.shared} B of shared memory")
        except Exception as error:  # noqa: BLE001 - report every failing kernel
            failures.append(f"{name}: {type(error).__name__}: {str(error)[:600]}")
    print("\n".join(failures) if failures else "all compiled")
    return 1 if failures else 0


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="Triton's CUDA backend compiles on Linux")
def test_ssm_triton_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", "import sys, tests.kernels.test_ssm_sm90_compile as m; sys.exit(m.main())"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
