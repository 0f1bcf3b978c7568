"""The static Hopper contract of the SSM CUDA kernels, read from the built extension's SASS (no GPU
needed; DESIGN §8, issue 13 item 5).

The SASS and the resource usage come from the ``cuobjdump`` that ships in the Triton wheel. A
kernel can be right on the CPU (the host impls run its per-thread code) and still be built far
below the roofline; these facts are what can be checked without a GPU:

* the decode step (bandwidth-bound) issues 16-byte loads in every unit-stride instantiation;
* no SSM kernel spills to local memory (no stack frame, no STL/LDL);
* the SSD scan's matmul kernels (C.B^T, chunk state, chunk scan) run on tensor cores for every
  activation dtype: HMMA.16816 for fp16/bf16, three HMMA.1688 TF32 per step for fp32 (3xTF32),
  read their fragments with ldmatrix (where no transpose of 32-bit values is needed) and stage
  tiles with cp.async; no scalar-FFMA matmul kernel is left.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from star_elastic_kernels import _extension

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_extension.unavailable_reason() is not None,
                       reason="the CUDA extension is not built here"),
]


def _cuobjdump() -> str:
    if os.environ.get("CUOBJDUMP"):
        return os.environ["CUOBJDUMP"]
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def _demangle(names: list[str]) -> dict[str, str]:
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True,
                             check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return {n: n for n in names}
    return dict(zip(names, out))


@pytest.fixture(scope="module")
def ssm_kernels() -> dict[str, dict]:
    """demangled name -> {"usage": resource line, "ops": [opcodes]} for every star_elastic::ssm
    kernel of the built extension."""
    from star_elastic_kernels import _C

    library = _C.__file__
    tool = _cuobjdump()
    sass = subprocess.run([tool, "-sass", library], capture_output=True, text=True,
                          check=True).stdout
    usage = subprocess.run([tool, "-res-usage", library], capture_output=True, text=True,
                           check=True).stdout
    usage = dict(re.findall(r"Function (\S+?):\s*\n\s*(REG:.*)", usage))
    parts = re.split(r"\n\s*Function : (\S+)\n", sass)
    mangled = [parts[i] for i in range(1, len(parts), 2) if "star_elastic3ssm" in parts[i]]
    names = _demangle(mangled)
    kernels = {}
    for i in range(1, len(parts), 2):
        if parts[i] not in names:
            continue
        ops = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", parts[i + 1])
        kernels[names[parts[i]]] = {"usage": usage.get(parts[i], ""), "ops": ops}
    assert kernels, "no star_elastic::ssm kernels found in the extension"
    return kernels


def _count(ops: list[str], prefix: str, part: str = "") -> int:
    return sum(1 for o in ops if o.startswith(prefix) and part in o)


def test_no_ssm_kernel_spills(ssm_kernels):
    spilling = {name: k["usage"] for name, k in ssm_kernels.items()
                if re.search(r"(STACK|LOCAL):[1-9]", k["usage"])
                or _count(k["ops"], "STL") + _count(k["ops"], "LDL")}
    assert not spilling, spilling


def test_decode_unit_stride_instantiations_issue_16_byte_loads_before_stores(ssm_kernels):
    unit = {n: k for n, k in ssm_kernels.items() if "state_update_kernel" in n and ", true>" in n}
    assert len(unit) == 9, sorted(unit)  # 3 state dtypes x 3 activation dtypes
    for name, kernel in unit.items():
        ops = kernel["ops"]
        loads = [i for i, o in enumerate(ops) if o.startswith("LDG") and "128" in o]
        stores = [i for i, o in enumerate(ops) if o.startswith("STG") and "128" in o]
        assert loads and stores, name
        # a lane's 16-byte state loads are all issued before its first 16-byte state store
        assert max(loads) < min(stores), name
        regs = int(re.search(r"REG:(\d+)", kernel["usage"]).group(1))
        assert regs <= 170, (name, regs)  # __launch_bounds__(128, 3): 3 blocks per SM


# Per staged 64-wide tile a warp issues 4 k16 steps x 8 n8 tiles of m16n8k16: 32 HMMA per GEMM
# body once unrolled. tc_chunk_kernel runs the chunk states (one GEMM) and the chunk scan (two:
# the inter- and the intra-chunk term). fp32: 8 k8 steps x 8 n8 tiles x 3 (3xTF32) = 192
# HMMA.1688 per GEMM body.
TENSOR_CORE_SCAN_KERNELS = {"chunk_cb_kernel": 32, "tc_chunk_kernel": 32 + 64}
TF32_PARTS = 3


def _found(ssm_kernels, kernel, dtype_part):
    return {n: k for n, k in ssm_kernels.items()
            if re.search(rf"::{kernel}<", n) and dtype_part(n)}


def _activations(name: str) -> str:
    """A scan kernel's first template argument: its activation type."""
    return re.search(r"<(\w+)", name).group(1)


# 16-bit instantiations: fp16 and bf16, the chunk kernel each with an fp32 and a 16-bit state chain
SIXTEEN_BIT_INSTANTIATIONS = {"chunk_cb_kernel": 2, "tc_chunk_kernel": 4}


def _no_spills(name, k):
    assert not re.search(r"(STACK|LOCAL):[1-9]", k["usage"]), (name, k["usage"])
    assert not _count(k["ops"], "STL") + _count(k["ops"], "LDL"), name


@pytest.mark.parametrize("kernel", sorted(TENSOR_CORE_SCAN_KERNELS))
def test_ssd_scan_16_bit_matmul_kernels_use_tensor_cores(ssm_kernels, kernel):
    found = _found(ssm_kernels, kernel, lambda n: _activations(n) != "float")
    assert len(found) == SIXTEEN_BIT_INSTANTIATIONS[kernel], sorted(found)
    for name, k in found.items():
        ops = k["ops"]
        bf16 = "bfloat16" in name
        hmma = [o for o in ops if o.startswith("HMMA.16816.F32")]
        assert len(hmma) >= TENSOR_CORE_SCAN_KERNELS[kernel], (name, len(hmma))
        assert all(("BF16" in o) == bf16 for o in hmma), (name, sorted(set(hmma)))
        assert _count(ops, "LDSM"), name  # fragments through ldmatrix
        assert _count(ops, "LDGSTS"), name  # 16-byte cp.async staging
        _no_spills(name, k)


@pytest.mark.parametrize("kernel", sorted(TENSOR_CORE_SCAN_KERNELS))
def test_ssd_scan_fp32_matmul_kernels_use_tf32_tensor_cores(ssm_kernels, kernel):
    found = _found(ssm_kernels, kernel, lambda n: _activations(n) == "float")
    assert len(found) == 1, sorted(found)
    (name, k), = found.items()
    ops = k["ops"]
    tf32 = [o for o in ops if o.startswith("HMMA.1688.F32.TF32")]
    want = TENSOR_CORE_SCAN_KERNELS[kernel] * 2 * TF32_PARTS  # k8 steps: twice the k16 ones
    assert len(tf32) >= want, (name, len(tf32), want)
    assert not [o for o in ops if o.startswith("HMMA.16816")], name
    assert _count(ops, "LDGSTS"), name
    assert _count(ops, "LDSM"), name
    _no_spills(name, k)


def test_the_scalar_scan_kernels_are_gone(ssm_kernels):
    """Every SSD matmul runs on tensor cores: no scalar chunk_state/chunk_scan kernel is built."""
    scalar = [n for n in ssm_kernels if re.search(r"::(chunk_state|chunk_scan)_kernel<", n)]
    assert not scalar, scalar


def test_the_chunk_kernel_passes_the_states_itself(ssm_kernels):
    """Chunk states, state passing and chunk scan in one kernel: no state-passing, chunk-state or
    chunk-scan kernel of its own is built; every instantiation takes its ticket with a global
    atomic, waits with an acquire load at GPU scope (then drops its stale L1 lines) and
    publishes with a release store after a barrier. A 16-bit chain (chunk_states_dtype = x's
    dtype) reads its entering states from L2 in 16 bits, an fp32 chain in 32."""
    assert not [n for n in ssm_kernels if re.search(r"state_passing|tc_chunk_(state|scan)", n)]
    found = _found(ssm_kernels, "tc_chunk_kernel", lambda n: True)
    assert len(found) == 5, sorted(found)  # fp32; fp16 and bf16, each with both chains
    for name, k in found.items():
        ops = k["ops"]
        chain = re.search(r"<\w+, (\w+)>", name).group(1)
        assert bool(_count(ops, "LDG.E.U16.STRONG.GPU")) == (chain != "float"), name
        assert _count(ops, "ATOMG.E.ADD"), name  # the ticket
        assert _count(ops, "LDG.E.STRONG.GPU"), name  # ld.acquire.gpu (and the L2 reads)
        assert _count(ops, "CCTL.IVALL"), name  # the acquire invalidates L1
        assert _count(ops, "STG.E.STRONG.GPU"), name  # st.release.gpu
        assert _count(ops, "NANOSLEEP"), name  # the wait backs off
        # one fence per hand-off, the release's (not one per thread: __threadfence is MEMBAR.SC)
        assert _count(ops, "MEMBAR") == 1 and not _count(ops, "MEMBAR.SC"), name
        _no_spills(name, k)
