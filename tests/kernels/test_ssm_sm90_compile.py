"""Every SSM Triton kernel compiles for sm_90 (H200) at the configs the launchers use at Nemotron
shapes, checked on any machine, GPU or not.

The CPU tests run these kernels in Triton's interpreter, which accepts code the GPU compiler
rejects and says nothing about shared memory. Here each kernel is compiled ahead of time for a
Hopper target, in a subprocess because the interpreter switch is read at import.
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
NANO = dict(H=64, P=64, G=8, N=128)  # Nemotron Nano v3's Mamba layer


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


# Integer arguments that are multiples of 16 at Nano shapes (compact activations or views into the
# packed in_proj output); the JIT specialises such values (tt.divisibility = 16), as it does every
# 16-byte-aligned pointer, so the ahead-of-time compile below does too.
_MULTIPLES_OF_16 = ("head_dim", "state_size", "num_active", "state_numel", "channels",
                    "x_channels", "group_width")
_ACTIVATION_STRIDES = ("stride_x_", "stride_z_", "stride_y_", "stride_B_", "stride_C_",
                       "stride_do_", "stride_s_", "stride_i_")


def jit_attrs(kernel, constexprs: dict) -> dict:
    """The JIT's specialisation attributes at Nano shapes: divisibility 16 for every pointer and
    for the integer arguments that are multiples of 16 there (innermost strides, = 1, are not
    passed; ``stride_*_n`` / ``_p`` / ``_k`` of caches may be 1 and are left out)."""
    out = {}
    for i, name in enumerate(kernel.arg_names):
        if name in constexprs:
            continue
        divisible = name.endswith("_ptr") or name in _MULTIPLES_OF_16 or (
            name.startswith(_ACTIVATION_STRIDES) and not name.endswith(("_n", "_p", "_k")))
        if divisible:
            out[(i,)] = [["tt.divisibility", 16]]
    return out


def cases():
    """(name, kernel, signature, constexprs, num_warps) per kernel and launcher config."""
    from star_elastic_kernels.triton import conv1d, gated_rmsnorm, ssd_scan, ssd_scan_bwd, ssd_state_update

    tables = {"chunk_table_ptr": "*i64", "seq_table_ptr": "*i64"}
    out = []
    flags = dict(HAS_DT_BIAS=True, DT_SOFTPLUS=True)
    for act in ("bf16", "fp32"):
        acts = {n: f"*{act}" for n in ("x_ptr", "B_ptr", "C_ptr", "z_ptr", "y_ptr")}
        for chunk in (64, 128, 256):  # every chunk the forward runs (longer ones are split)
            for p in (64, 48):  # Nano v3's head dim and an elastic one
                blocks = ssd_scan.block_config(chunk, p, NANO["N"], act == "fp32")
                tag = f"{act}-Q{chunk}-p{p}"
                consts = dict(HAS_DT_BIAS=True, DT_SOFTPLUS=True, BLOCK_Q=blocks["BLOCK_Q"])
                k = ssd_scan._chunk_cumsum_kernel
                out.append((f"chunk_cumsum-{tag}", k, _signature(k, tables, consts), consts, 4))
                for states in ("fp32", "bf16"):
                    state_ptrs = {"states_ptr": f"*{states}"}
                    consts = dict(FP32=act == "fp32", **{n: blocks[n] for n in
                                                         ("BLOCK_Q", "BLOCK_K", "BLOCK_P", "BLOCK_N")})
                    k = ssd_scan._chunk_state_kernel
                    out.append((f"chunk_state-{tag}-states_{states}", k,
                                _signature(k, {**acts, **tables, **state_ptrs}, consts), consts,
                                ssd_scan.CHUNK_STATE_WARPS))
                    consts = dict(HAS_D=True, HAS_Z=True, FP32=act == "fp32", **blocks)
                    k = ssd_scan._chunk_scan_kernel
                    out.append((f"chunk_scan-{tag}-states_{states}", k,
                                _signature(k, {**acts, **tables, **state_ptrs}, consts), consts,
                                ssd_scan.CHUNK_SCAN_WARPS))
        for block_q in (ssd_scan_bwd.CHUNK,):  # the backward's own chunk
            tag = f"{act}-Q{block_q}"
            consts = dict(HAS_Z=True, BLOCK_Q=block_q, BLOCK_P=64, BLOCK_N=64, **flags)
            k = ssd_scan_bwd._output_state_grad_kernel
            out.append((f"output_state_grad-{tag}", k, _signature(k, {**acts, **tables}, consts), consts, 4))
            consts = dict(HAS_D=True, HAS_Z=True, BLOCK_Q=block_q, BLOCK_P=ssd_scan_bwd.LOCAL_BLOCK_P,
                          BLOCK_N=ssd_scan_bwd.STATE_BLOCK_N, **flags)
            k = ssd_scan_bwd._chunk_bwd_local_kernel
            out.append((f"chunk_bwd_local-{tag}", k, _signature(k, {**acts, **tables}, consts), consts,
                        ssd_scan_bwd.BWD_WARPS))
            consts = dict(HAS_Z=True, BLOCK_Q=block_q, BLOCK_P=ssd_scan_bwd.SHARED_BLOCK_P,
                          BLOCK_N=ssd_scan_bwd.STATE_BLOCK_N, **flags)
            k = ssd_scan_bwd._chunk_bwd_shared_kernel
            out.append((f"chunk_bwd_shared-{tag}", k, _signature(k, {**acts, **tables}, consts), consts,
                        ssd_scan_bwd.BWD_WARPS))
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
    for states in ("fp32", "bf16"):
        k, consts = ssd_scan._state_passing_kernel, dict(HAS_INITIAL=True, BLOCK=1024)
        out.append((f"state_passing-states_{states}", k,
                    _signature(k, {**tables, "states_ptr": f"*{states}"}, consts), consts, 4))
    k, consts = ssd_scan_bwd._state_passing_bwd_kernel, dict(HAS_DFINAL=True, BLOCK=1024)
    out.append(("state_passing_bwd", k, _signature(k, tables, consts), consts, 4))
    k, consts = ssd_scan_bwd._decay_grad_kernel, dict(BLOCK_Q=ssd_scan_bwd.CHUNK, **flags)
    out.append((f"decay_grad-Q{ssd_scan_bwd.CHUNK}", k, _signature(k, tables, consts), consts, 4))
    return out


def _cuobjdump() -> str:
    import triton

    return os.environ.get("CUOBJDUMP") or os.path.join(
        os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def sass_facts(cubin: bytes) -> dict:
    """Registers, stack (spills), local-memory traffic and wgmma count of a compiled kernel."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([_cuobjdump(), "-res-usage", f.name], capture_output=True,
                               text=True, check=True).stdout
        sass = subprocess.run([_cuobjdump(), "-sass", f.name], capture_output=True, text=True,
                              check=True).stdout
    ops = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", sass)
    return dict(registers=int(re.search(r"REG:(\d+)", usage).group(1)),
                stack=int(re.search(r"STACK:(\d+)", usage).group(1)),
                local_traffic=sum(o.startswith(("STL", "LDL")) for o in ops),
                wgmma=sum(o.startswith("HGMMA") for o in ops))


# kernels whose tl.dot must lower to wgmma (HGMMA) on sm_90
TENSOR_CORE_KERNELS = ("chunk_state", "chunk_scan", "output_state_grad", "chunk_bwd")


def main(pattern: str = "") -> int:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    failures, report = [], []
    for name, kernel, signature, constexprs, num_warps in cases():
        if pattern not in name:
            continue
        try:
            compiled = triton.compile(
                ASTSource(fn=kernel, signature=signature, constexprs=constexprs,
                          attrs=jit_attrs(kernel, constexprs)),
                target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
        except Exception as error:  # noqa: BLE001 - report every failing kernel
            failures.append(f"{name}: {type(error).__name__}: {str(error)[:600]}")
            continue
        facts = dict(shared=compiled.metadata.shared, **sass_facts(compiled.asm["cubin"]))
        report.append(f"{name}: {facts}")
        if facts["shared"] > HOPPER_SHARED_MEMORY:
            failures.append(f"{name}: needs {facts['shared']} B of shared memory")
        if facts["stack"] or facts["local_traffic"]:
            failures.append(f"{name}: spills ({facts})")
        if name.startswith(TENSOR_CORE_KERNELS) and not facts["wgmma"]:
            failures.append(f"{name}: no wgmma (HGMMA) in its SASS")
    print("\n".join(report))
    print("\n".join(failures) if failures else "all compiled, within shared memory, no spills")
    return 1 if failures else 0


def _run_main(args: str):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run(
        [sys.executable, "-c", f"import sys, tests.kernels.test_ssm_sm90_compile as m; sys.exit(m.main({args}))"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=3000)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="Triton's CUDA backend compiles on Linux")
def test_ssm_triton_kernels_compile_for_sm90():
    """Every config: within shared memory, wgmma where there is a dot, no spills."""
    result = _run_main("")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="Triton's CUDA backend compiles on Linux")
def test_backward_kernels_do_not_spill():
    """The backward's chunk kernels, which hold whole-chunk (Q, Q) tiles at Q = 64 and spilled
    while they also held whole-N ones, keep every value in registers: no stack frame and no
    local-memory load or store in their SASS (the full sweep above checks them too; this one
    names the regression)."""
    result = _run_main("'chunk_bwd'")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-4000:]
    compiled = [line for line in result.stdout.splitlines() if line.startswith("chunk_bwd_")]
    assert len(compiled) == 4, result.stdout  # local and shared, bf16 and fp32 inputs
